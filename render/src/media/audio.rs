//! The speech track: its length at intake, its samples for the audio encoder.
//!
//! The model's audio encoder (wav2vec2-style) takes 16 kHz mono float samples, so every
//! supported container and codec is decoded and resampled to exactly that here, once.

use std::path::Path;
use std::time::Duration;

use ffmpeg_next as ffmpeg;
use ffmpeg_next::{media, Packet, Rational};

use super::audio_source::AudioSource;
use crate::RenderError;

/// The sample rate the model's audio encoder expects.
pub const AUDIO_SAMPLE_RATE_HZ: u32 = 16_000;

/// A whole speech track, ready for the model.
#[derive(Debug, Clone, PartialEq)]
pub struct AudioTrack {
    /// Mono samples at [`AUDIO_SAMPLE_RATE_HZ`], nominally in -1.0..=1.0.
    pub samples_16k_mono: Vec<f32>,
    /// `samples_16k_mono.len()` samples at 16 kHz, as a duration.
    pub duration: Duration,
}

/// Decodes the best audio stream of `path` (WAV, MP3, FLAC, M4A/AAC, Ogg Vorbis or Opus, or
/// anything else FFmpeg reads) to 16 kHz mono f32.
pub fn load_audio(path: &Path) -> Result<AudioTrack, RenderError> {
    let mut source = AudioSource::open(path, AUDIO_SAMPLE_RATE_HZ, 1)?;
    let mut samples = Vec::new();
    while source.read_chunk(&mut samples)? {}
    let duration = samples_to_duration(samples.len() as u64, AUDIO_SAMPLE_RATE_HZ);
    Ok(AudioTrack {
        samples_16k_mono: samples,
        duration,
    })
}

/// The length of the best audio stream of `path`, for sizing a job (`num_clip: auto`) at
/// intake without decoding it.
///
/// Uses the duration the container declares; where it declares none (raw ADTS, some Ogg
/// files) the packets are read, not decoded, and their timestamps give the end.
pub fn probe_audio_duration(path: &Path) -> Result<Duration, RenderError> {
    let fail = |reason: String| RenderError::AudioDecode {
        path: path.to_path_buf(),
        reason,
    };
    let mut input = super::open_audio_input(path)?;
    let stream =
        input
            .streams()
            .best(media::Type::Audio)
            .ok_or_else(|| RenderError::NoAudioStream {
                path: path.to_path_buf(),
            })?;
    let (index, time_base) = (stream.index(), stream.time_base());
    if let Some(d) = timestamp_to_duration(stream.duration(), time_base) {
        return Ok(d);
    }
    let container_time_base = Rational::new(1, ffmpeg::ffi::AV_TIME_BASE);
    if let Some(d) = timestamp_to_duration(input.duration(), container_time_base) {
        return Ok(d);
    }
    let start = Some(stream.start_time()).filter(|&t| t != ffmpeg::ffi::AV_NOPTS_VALUE);
    let mut end = None;
    let mut packet = Packet::empty();
    loop {
        match packet.read(&mut input) {
            Ok(()) if packet.stream() == index => {
                if let Some(pts) = packet.pts() {
                    let packet_end = pts + packet.duration();
                    end = Some(end.map_or(packet_end, |e: i64| e.max(packet_end)));
                }
            }
            Ok(()) => {}
            Err(ffmpeg::Error::Eof) => break,
            Err(e) => return Err(fail(e.to_string())),
        }
    }
    end.and_then(|end| timestamp_to_duration(end - start.unwrap_or(0), time_base))
        .ok_or_else(|| fail("it declares no duration and its packets carry no timestamps".into()))
}

/// `ticks` of `time_base` as a duration; `None` for unknown (negative or "no value") ticks.
fn timestamp_to_duration(ticks: i64, time_base: Rational) -> Option<Duration> {
    if ticks <= 0 || time_base.numerator() <= 0 || time_base.denominator() <= 0 {
        return None;
    }
    let nanos = i128::from(ticks) * i128::from(time_base.numerator()) * 1_000_000_000
        / i128::from(time_base.denominator());
    u64::try_from(nanos).ok().map(Duration::from_nanos)
}

/// `samples` at `rate_hz` as a duration, exact to the nanosecond (rounded down).
pub(crate) fn samples_to_duration(samples: u64, rate_hz: u32) -> Duration {
    let nanos = u128::from(samples) * 1_000_000_000 / u128::from(rate_hz);
    Duration::from_nanos(u64::try_from(nanos).unwrap_or(u64::MAX))
}

#[cfg(test)]
#[path = "audio_tests.rs"]
mod tests;
