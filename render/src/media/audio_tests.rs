use std::path::{Path, PathBuf};

use super::*;
use crate::media::test_support::ffmpeg;

/// Writes a sine tone made by ffmpeg's `sine` source, encoded with `codec_args`.
fn tone(dir: &Path, name: &str, hz: u32, seconds: f64, rate: u32, codec_args: &[&str]) -> PathBuf {
    let out = dir.join(name);
    let source = format!("sine=frequency={hz}:duration={seconds}:sample_rate={rate}");
    let mut args = vec!["-f", "lavfi", "-i", &source];
    args.extend_from_slice(codec_args);
    args.push(out.to_str().unwrap());
    ffmpeg(&args);
    out
}

/// The tone's frequency, from upward zero crossings over the middle of the track (the
/// edges may hold codec priming and fades).
fn measured_hz(samples: &[f32]) -> f64 {
    let quarter = samples.len() / 4;
    let middle = &samples[quarter..samples.len() - quarter];
    let crossings = middle
        .windows(2)
        .filter(|w| w[0] < 0.0 && w[1] >= 0.0)
        .count();
    crossings as f64 * f64::from(AUDIO_SAMPLE_RATE_HZ) / middle.len() as f64
}

/// Loads `path` and checks it is a 440 Hz tone lasting `seconds` at 16 kHz, its peak at the
/// `sine` source's default amplitude of 1/8.
fn assert_tone_decodes(path: &Path, seconds: f64, length_tolerance_s: f64) {
    let track = load_audio(path).unwrap();
    let expected = seconds * f64::from(AUDIO_SAMPLE_RATE_HZ);
    let got = track.samples_16k_mono.len() as f64;
    assert!(
        (got - expected).abs() <= length_tolerance_s * f64::from(AUDIO_SAMPLE_RATE_HZ),
        "{}: {got} samples, expected about {expected}",
        path.display()
    );
    assert!(
        (track.duration.as_secs_f64() - got / 16_000.0).abs() < 1e-6,
        "duration {:?} must match the sample count {got}",
        track.duration
    );
    let hz = measured_hz(&track.samples_16k_mono);
    assert!(
        (hz - 440.0).abs() < 5.0,
        "{}: measured {hz} Hz",
        path.display()
    );
    let peak = track
        .samples_16k_mono
        .iter()
        .fold(0.0f32, |m, s| m.max(s.abs()));
    assert!(
        (0.10..0.16).contains(&peak),
        "{}: peak {peak}",
        path.display()
    );
}

#[test]
fn wav_decodes_to_16k_mono_with_its_length_and_pitch() {
    let dir = tempfile::tempdir().unwrap();
    let wav = tone(dir.path(), "a.wav", 440, 2.0, 44_100, &[]);
    assert_tone_decodes(&wav, 2.0, 0.001);
}

#[test]
fn stereo_48k_wav_is_downmixed_to_mono() {
    let dir = tempfile::tempdir().unwrap();
    let wav = tone(dir.path(), "s.wav", 440, 1.5, 48_000, &["-ac", "2"]);
    assert_tone_decodes(&wav, 1.5, 0.001);
}

#[test]
fn narrowband_8k_wav_is_upsampled() {
    let dir = tempfile::tempdir().unwrap();
    let wav = tone(dir.path(), "n.wav", 440, 2.0, 8_000, &[]);
    assert_tone_decodes(&wav, 2.0, 0.001);
}

#[test]
fn mp3_decodes_to_its_length_and_pitch() {
    let dir = tempfile::tempdir().unwrap();
    let mp3 = tone(
        dir.path(),
        "a.mp3",
        440,
        2.0,
        44_100,
        &["-c:a", "libmp3lame"],
    );
    assert_tone_decodes(&mp3, 2.0, 0.03);
}

#[test]
fn flac_decodes_to_its_length_and_pitch() {
    let dir = tempfile::tempdir().unwrap();
    let flac = tone(dir.path(), "a.flac", 440, 2.0, 44_100, &[]);
    assert_tone_decodes(&flac, 2.0, 0.001);
}

#[test]
fn m4a_aac_decodes_to_its_length_and_pitch() {
    let dir = tempfile::tempdir().unwrap();
    let m4a = tone(dir.path(), "a.m4a", 440, 2.0, 44_100, &["-c:a", "aac"]);
    assert_tone_decodes(&m4a, 2.0, 0.03);
}

#[test]
fn ogg_vorbis_decodes_to_its_length_and_pitch() {
    let dir = tempfile::tempdir().unwrap();
    let ogg = tone(
        dir.path(),
        "a.ogg",
        440,
        2.0,
        44_100,
        &["-c:a", "libvorbis"],
    );
    assert_tone_decodes(&ogg, 2.0, 0.03);
}

#[test]
fn ogg_opus_decodes_to_its_length_and_pitch() {
    let dir = tempfile::tempdir().unwrap();
    let opus = tone(dir.path(), "a.opus", 440, 2.0, 48_000, &["-c:a", "libopus"]);
    assert_tone_decodes(&opus, 2.0, 0.03);
}

#[test]
fn corrupt_audio_is_an_error_naming_the_file() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("speech.wav");
    std::fs::write(&path, vec![0x5a; 4096]).unwrap();
    let err = load_audio(&path).unwrap_err();
    assert!(matches!(err, RenderError::AudioDecode { .. }), "{err}");
    assert!(err.to_string().contains(path.to_str().unwrap()), "{err}");
}

#[test]
fn empty_audio_file_is_an_error_saying_so() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("speech.mp3");
    std::fs::write(&path, b"").unwrap();
    let message = load_audio(&path).unwrap_err().to_string();
    assert!(message.contains("empty"), "{message}");
}

#[test]
fn video_without_audio_is_a_no_audio_stream_error() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("silent.mkv");
    ffmpeg(&[
        "-f",
        "lavfi",
        "-i",
        "testsrc=size=64x64:rate=8:duration=1",
        path.to_str().unwrap(),
    ]);
    let err = load_audio(&path).unwrap_err();
    assert!(matches!(err, RenderError::NoAudioStream { .. }), "{err}");
    let err = probe_audio_duration(&path).unwrap_err();
    assert!(matches!(err, RenderError::NoAudioStream { .. }), "{err}");
}

#[test]
fn probe_reads_the_declared_duration_of_a_wav() {
    let dir = tempfile::tempdir().unwrap();
    let wav = tone(dir.path(), "a.wav", 440, 3.25, 22_050, &[]);
    let d = probe_audio_duration(&wav).unwrap();
    assert!((d.as_secs_f64() - 3.25).abs() < 0.001, "{d:?}");
}

#[test]
fn probe_measures_compressed_formats_close_to_their_length() {
    let dir = tempfile::tempdir().unwrap();
    for (name, codec) in [
        ("a.mp3", "libmp3lame"),
        ("a.m4a", "aac"),
        ("a.ogg", "libvorbis"),
        ("a.opus", "libopus"),
        ("a.aac", "aac"),
    ] {
        let path = tone(dir.path(), name, 440, 2.5, 48_000, &["-c:a", codec]);
        let d = probe_audio_duration(&path).unwrap();
        assert!((d.as_secs_f64() - 2.5).abs() < 0.06, "{name}: {d:?}");
    }
}

#[test]
fn probe_of_garbage_is_an_error_naming_the_file() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("speech.m4a");
    std::fs::write(&path, vec![0x17; 2048]).unwrap();
    let err = probe_audio_duration(&path).unwrap_err();
    assert!(err.to_string().contains(path.to_str().unwrap()), "{err}");
}
