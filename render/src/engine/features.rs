//! Conditioning features computed in plain Rust before anything reaches the model: the audio
//! window of every output frame, the hashed prompt embedding and the pooled reference image.
//!
//! These are the fixed front ends of the tiny model (what a mel filterbank or tokenizer is to the
//! real one). They are indexed by *absolute* output frame, never by position within a clip, so a
//! clip's features do not depend on where a previous process stopped.

use super::rng::{SeededRng, Stream};

/// Sample rate the worker hands us (`Conditioning::audio_16k_mono`).
pub const AUDIO_SAMPLE_RATE_HZ: u32 = 16_000;

/// Features per output frame, see [`AudioTrack::frame_features`].
pub(crate) const AUDIO_FEATURES_PER_FRAME: usize = 8;

/// Width of the hashed prompt embedding (the T5 stand-in's input).
pub(crate) const TEXT_EMBED_DIM: usize = 64;

/// Values per latent cell in the pooled reference: 2×2 sub-blocks × RGB.
pub(crate) const REFERENCE_CELL_FEATURES: usize = 12;

/// Loudness range mapped onto `0..=1`: a frame this many dB below the loudest frame of the track
/// counts as silence. Relative to the track's own peak so quiet recordings still animate.
const LEVEL_RANGE_DB: f32 = 36.0;

/// Below this the whole track is treated as silence (avoids amplifying hiss to full motion).
const SILENCE_FLOOR_DB: f32 = -60.0;

/// The job's speech track, cut into one analysis window per output video frame.
#[derive(Debug, Clone)]
pub(crate) struct AudioTrack {
    samples: Vec<f32>,
    fps: u32,
    peak_db: f32,
}

impl AudioTrack {
    pub(crate) fn new(samples: Vec<f32>, fps: u32) -> Self {
        let mut track = AudioTrack {
            samples,
            fps: fps.max(1),
            peak_db: SILENCE_FLOOR_DB,
        };
        let frames = track.frame_count();
        let peak = (0..frames)
            .map(|frame| rms_db(track.window(frame)))
            .fold(SILENCE_FLOOR_DB, f32::max);
        track.peak_db = peak;
        track
    }

    /// Output frames the audio spans (the last partial frame included).
    pub(crate) fn frame_count(&self) -> u64 {
        let samples = self.samples.len() as u64;
        (samples * u64::from(self.fps)).div_ceil(u64::from(AUDIO_SAMPLE_RATE_HZ))
    }

    /// Samples `[frame/fps, (frame+1)/fps)`; empty past the end of the track (silence).
    fn window(&self, frame: u64) -> &[f32] {
        let rate = u64::from(AUDIO_SAMPLE_RATE_HZ);
        let fps = u64::from(self.fps);
        let len = self.samples.len();
        let start = usize::try_from(frame.saturating_mul(rate) / fps).unwrap_or(len);
        let end =
            usize::try_from((frame.saturating_add(1)).saturating_mul(rate) / fps).unwrap_or(len);
        &self.samples[start.min(len)..end.min(len)]
    }

    /// Loudness of a window mapped to `0..=1` against the track's peak.
    fn level(&self, window: &[f32]) -> f32 {
        if self.peak_db <= SILENCE_FLOOR_DB {
            return 0.0;
        }
        ((rms_db(window) - (self.peak_db - LEVEL_RANGE_DB)) / LEVEL_RANGE_DB).clamp(0.0, 1.0)
    }

    /// The features of one output frame:
    /// 0 loudness, 1–4 loudness of four sub-windows (syllable onsets), 5 zero-crossing rate
    /// (voiced vs fricative), 6 loudness of the first difference (brightness), 7 change in
    /// loudness since the previous frame (opening vs closing).
    pub(crate) fn frame_features(&self, frame: u64) -> [f32; AUDIO_FEATURES_PER_FRAME] {
        let window = self.window(frame);
        let mut out = [0.0f32; AUDIO_FEATURES_PER_FRAME];
        out[0] = self.level(window);
        if !window.is_empty() {
            let quarter = window.len().div_ceil(4);
            for (i, part) in window.chunks(quarter.max(1)).take(4).enumerate() {
                out[1 + i] = self.level(part);
            }
            let crossings = window
                .windows(2)
                .filter(|pair| (pair[0] >= 0.0) != (pair[1] >= 0.0))
                .count();
            out[5] = (4.0 * crossings as f32 / window.len() as f32).min(1.0);
            let diff: Vec<f32> = window.windows(2).map(|p| p[1] - p[0]).collect();
            out[6] = self.level(&diff);
        }
        let previous = match frame.checked_sub(1) {
            Some(prev) => self.level(self.window(prev)),
            None => 0.0,
        };
        out[7] = out[0] - previous;
        out
    }

    /// Features of frames `[first, first + count)`, frame-major.
    pub(crate) fn features(&self, first: u64, count: u32) -> Vec<f32> {
        (0..u64::from(count))
            .flat_map(|i| self.frame_features(first + i))
            .collect()
    }
}

fn rms_db(window: &[f32]) -> f32 {
    if window.is_empty() {
        return SILENCE_FLOOR_DB - 40.0;
    }
    let energy = window
        .iter()
        .map(|&s| f64::from(s) * f64::from(s))
        .sum::<f64>();
    let rms = (energy / window.len() as f64).sqrt();
    (20.0 * (rms + 1e-9).log10()) as f32
}

/// A deterministic prompt embedding: every lower-cased word seeds its own Gaussian vector, and
/// the prompt is their mean scaled to unit RMS. It stands in for T5: equal prompts embed
/// equally, different prompts differently, with no vocabulary file to ship.
pub(crate) fn prompt_embedding(prompt: &str) -> Vec<f32> {
    let mut sum = vec![0.0f32; TEXT_EMBED_DIM];
    let mut words = 0usize;
    for word in prompt
        .split(|c: char| !c.is_alphanumeric())
        .filter(|w| !w.is_empty())
    {
        let mut rng = SeededRng::for_stream(Stream::TextToken, 0, fnv1a(&word.to_lowercase()));
        for (acc, v) in sum.iter_mut().zip(rng.normals(TEXT_EMBED_DIM)) {
            *acc += v;
        }
        words += 1;
    }
    let rms = (sum.iter().map(|v| v * v).sum::<f32>() / TEXT_EMBED_DIM as f32).sqrt();
    if words == 0 || rms == 0.0 {
        return sum;
    }
    sum.iter().map(|v| v / rms).collect()
}

fn fnv1a(text: &str) -> u64 {
    text.bytes().fold(0xcbf2_9ce4_8422_2325, |hash, byte| {
        (hash ^ u64::from(byte)).wrapping_mul(0x0000_0100_0000_01b3)
    })
}

/// Pools the reference image into one feature vector per latent cell (`cell_px` × `cell_px`
/// pixels): the mean colour of its four quadrants, in `-1..=1`. Row-major cells.
pub(crate) fn pool_reference(rgb: &[u8], width: usize, height: usize, cell_px: usize) -> Vec<f32> {
    let cells_x = width / cell_px;
    let cells_y = height / cell_px;
    let half = cell_px / 2;
    let mut out = Vec::with_capacity(cells_x * cells_y * REFERENCE_CELL_FEATURES);
    for cy in 0..cells_y {
        for cx in 0..cells_x {
            for (qy, qx) in [(0, 0), (0, 1), (1, 0), (1, 1)] {
                let mut acc = [0u32; 3];
                for y in 0..half {
                    let row = cy * cell_px + qy * half + y;
                    for x in 0..half {
                        let col = cx * cell_px + qx * half + x;
                        let p = (row * width + col) * 3;
                        for (c, a) in acc.iter_mut().enumerate() {
                            *a += u32::from(rgb[p + c]);
                        }
                    }
                }
                let n = (half * half) as f32;
                out.extend(acc.iter().map(|&a| a as f32 / n / 127.5 - 1.0));
            }
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn tone(seconds: f32, amplitude: f32) -> Vec<f32> {
        let n = (seconds * AUDIO_SAMPLE_RATE_HZ as f32) as usize;
        (0..n)
            .map(|i| amplitude * (i as f32 * 0.07).sin())
            .collect()
    }

    #[test]
    fn loud_frames_have_higher_level_than_quiet_frames() {
        let mut samples = tone(0.5, 0.5);
        samples.extend(tone(0.5, 0.01));
        let track = AudioTrack::new(samples, 25);
        let loud = track.frame_features(3)[0];
        let quiet = track.frame_features(20)[0];
        assert!(loud > 0.9, "loud level {loud}");
        assert!(quiet < loud - 0.5, "quiet level {quiet} vs loud {loud}");
    }

    #[test]
    fn frames_past_the_end_of_the_audio_are_silent() {
        let track = AudioTrack::new(tone(0.2, 0.5), 25);
        assert_eq!(track.frame_count(), 5);
        assert_eq!(track.frame_features(100)[..7], [0.0; 7]);
    }

    #[test]
    fn silent_track_gives_zero_levels() {
        let track = AudioTrack::new(vec![0.0; 16_000], 25);
        assert!(track.features(0, 25).iter().all(|&v| v == 0.0));
    }

    #[test]
    fn clip_features_are_the_concatenated_frame_features() {
        let track = AudioTrack::new(tone(1.0, 0.3), 25);
        let clip = track.features(8, 4);
        assert_eq!(clip.len(), 4 * AUDIO_FEATURES_PER_FRAME);
        assert_eq!(clip[..AUDIO_FEATURES_PER_FRAME], track.frame_features(8));
        assert_eq!(
            clip[3 * AUDIO_FEATURES_PER_FRAME..],
            track.frame_features(11)
        );
    }

    #[test]
    fn equal_prompts_embed_equally_and_case_does_not_matter() {
        assert_eq!(
            prompt_embedding("A presenter, smiling"),
            prompt_embedding("a PRESENTER smiling")
        );
    }

    #[test]
    fn different_prompts_embed_differently() {
        assert_ne!(
            prompt_embedding("a presenter in a studio"),
            prompt_embedding("a singer on a stage")
        );
    }

    #[test]
    fn empty_prompt_embeds_as_zeros() {
        assert!(prompt_embedding("  ,, ").iter().all(|&v| v == 0.0));
    }

    #[test]
    fn pooled_reference_reports_quadrant_colours() {
        // 16×16 image: top-left quadrant white, the rest black.
        let mut rgb = vec![0u8; 16 * 16 * 3];
        for y in 0..8 {
            for x in 0..8 {
                rgb[(y * 16 + x) * 3..(y * 16 + x) * 3 + 3].copy_from_slice(&[255, 255, 255]);
            }
        }
        let pooled = pool_reference(&rgb, 16, 16, 16);
        assert_eq!(pooled.len(), REFERENCE_CELL_FEATURES);
        assert_eq!(pooled[..3], [1.0, 1.0, 1.0]);
        assert_eq!(pooled[3..], [-1.0; 9]);
    }
}
