//! From wav2vec2 hidden states to per-video-frame audio features, as wan22's
//! `s2v/audio_encoder.py` does it: linear interpolation from the model's 50 Hz to
//! 30 fps (`align_corners=True`), then one 30 fps row picked per video frame at the
//! video rate (`get_audio_embed_bucket_fps` with `m = 0`), zero rows past the end.
//! The wav2vec2 model itself is not ported yet.

/// wav2vec2 output rate (16 kHz audio, stride 320).
pub const WAV2VEC_FPS: f64 = 50.0;
/// The intermediate rate the features are resampled to.
pub const AUDIO_FPS: f64 = 30.0;

/// Hidden states as `[layers][frames][dim]`, flattened row-major.
#[derive(Debug, Clone, PartialEq)]
pub struct AudioStates {
    pub layers: usize,
    pub frames: usize,
    pub dim: usize,
    pub values: Vec<f32>,
}

impl AudioStates {
    fn at(&self, layer: usize, frame: usize) -> &[f32] {
        let start = (layer * self.frames + frame) * self.dim;
        &self.values[start..start + self.dim]
    }
}

/// `linear_interpolation(features, 50, 30)`: `int(frames / 50 * 30)` output frames,
/// linear with aligned corners, per layer.
pub fn interpolate_to_30fps(states: &AudioStates) -> AudioStates {
    let t_in = states.frames;
    let t_out = (t_in as f64 / WAV2VEC_FPS * AUDIO_FPS) as usize;
    let scale = if t_out > 1 {
        (t_in as f32 - 1.0) / (t_out as f32 - 1.0)
    } else {
        0.0
    };
    let mut values = Vec::with_capacity(states.layers * t_out * states.dim);
    for layer in 0..states.layers {
        for i in 0..t_out {
            let src = scale * i as f32;
            let i0 = (src.floor() as usize).min(t_in.saturating_sub(1));
            let i1 = (i0 + 1).min(t_in.saturating_sub(1));
            let lambda = src - i0 as f32;
            let (a, b) = (states.at(layer, i0), states.at(layer, i1));
            values.extend(
                a.iter()
                    .zip(b)
                    .map(|(x, y)| (1.0 - lambda) * x + lambda * y),
            );
        }
    }
    AudioStates {
        layers: states.layers,
        frames: t_out,
        dim: states.dim,
        values,
    }
}

/// `get_audio_embed_bucket_fps(states, fps, batch_frames, m=0)` on 30 fps features:
/// returns `[frames_out][layers][dim]` flattened, with `frames_out` a multiple of
/// `batch_frames` covering the audio, and the number of batches.
pub fn bucket_per_video_frame(
    states: &AudioStates,
    fps: f64,
    batch_frames: usize,
) -> (Vec<f32>, usize) {
    let n = states.frames;
    let scale = AUDIO_FPS / fps;
    let batches = (n as f64 / (batch_frames as f64 * scale)) as usize + 1;
    let count = batches * batch_frames;
    let padded = (count as f64 / fps * AUDIO_FPS).ceil() as usize;
    // get_sample_indices(30, padded, fps, count, fixed_start=0): time points
    // linspace(0, count/fps, count, endpoint=False), rounded half-to-even at 30 fps.
    let duration = count as f64 / fps;
    let step = duration / count as f64;
    let mut out = Vec::with_capacity(count * states.layers * states.dim);
    for i in 0..count {
        let t = i as f64 * step;
        let idx = ((t * AUDIO_FPS).round_ties_even() as usize).min(padded.saturating_sub(1));
        for layer in 0..states.layers {
            if idx < n {
                out.extend_from_slice(states.at(layer, idx));
            } else {
                out.extend(std::iter::repeat_n(0.0, states.dim));
            }
        }
    }
    (out, batches)
}
