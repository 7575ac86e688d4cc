use std::path::Path;
use std::process::Command;

use super::*;
use crate::media::test_support::{ffprobe, gradient_frame, number, stream};

/// Encodes `frames` gradient frames into `path`.
fn encode_gradient(path: &Path, frames: u32, settings: &EncodeSettings) -> SegmentInfo {
    let mut encoder = ClipEncoder::create(path, settings).unwrap();
    for i in 0..frames {
        encoder
            .push_frame(&gradient_frame(settings.width, settings.height, i))
            .unwrap();
    }
    encoder.finish().unwrap()
}

fn small(codec: VideoCodec) -> EncodeSettings {
    EncodeSettings::new(64, 48, 16, codec, 23)
}

#[test]
fn segment_is_h264_yuv420p_with_the_right_size_count_and_rate() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("0.mkv");
    let info = encode_gradient(&path, 20, &small(VideoCodec::H264));
    assert_eq!(info.frames, 20);
    assert_eq!(info.bytes, std::fs::metadata(&path).unwrap().len());

    let probe = ffprobe(&path);
    assert!(probe["format"]["format_name"]
        .as_str()
        .unwrap()
        .contains("matroska"));
    let video = stream(&probe, "video");
    assert_eq!(video["codec_name"], "h264");
    assert_eq!(video["pix_fmt"], "yuv420p");
    assert_eq!(
        (video["width"].as_u64(), video["height"].as_u64()),
        (Some(64), Some(48))
    );
    assert_eq!(video["nb_read_frames"], "20");
    assert_eq!(video["r_frame_rate"], "16/1");
    assert_eq!(video["avg_frame_rate"], "16/1");
    assert_eq!(number(&video["start_time"]), 0.0);
}

#[test]
fn same_frames_encode_to_identical_bytes() {
    // Several encodes in a row in one process: an encoder that reads memory it never wrote
    // (x264's AVX-512 code does) differs from run to run only once freed memory is reused.
    let dir = tempfile::tempdir().unwrap();
    for (width, height) in [(64, 48), (704, 384)] {
        for threads in [1, 2] {
            let settings = EncodeSettings {
                threads,
                ..EncodeSettings::new(width, height, 16, VideoCodec::H264, 23)
            };
            let name = |run: u32| dir.path().join(format!("{width}-{threads}-{run}.mkv"));
            encode_gradient(&name(0), 24, &settings);
            let first = std::fs::read(name(0)).unwrap();
            for run in 1..4 {
                encode_gradient(&name(run), 24, &settings);
                assert!(
                    std::fs::read(name(run)).unwrap() == first,
                    "{width}x{height}, {threads} thread(s), run {run}: the same frames encoded differently"
                );
            }
        }
    }
}

#[test]
fn hevc_segment_is_readable_as_hevc() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("0.mkv");
    let info = encode_gradient(&path, 12, &small(VideoCodec::Hevc));
    assert_eq!(info.frames, 12);
    let probe = ffprobe(&path);
    let video = stream(&probe, "video");
    assert_eq!(video["codec_name"], "hevc");
    assert_eq!(video["pix_fmt"], "yuv420p");
    assert_eq!(video["nb_read_frames"], "12");
}

#[test]
fn hevc_encodes_deterministically() {
    let dir = tempfile::tempdir().unwrap();
    let settings = EncodeSettings {
        threads: 2,
        ..small(VideoCodec::Hevc)
    };
    let first = dir.path().join("0.mkv");
    encode_gradient(&first, 16, &settings);
    let first = std::fs::read(first).unwrap();
    for run in 1..4 {
        let path = dir.path().join(format!("{run}.mkv"));
        encode_gradient(&path, 16, &settings);
        assert!(std::fs::read(&path).unwrap() == first, "run {run} differs");
    }
}

#[test]
fn flat_colour_survives_the_round_trip() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("0.mkv");
    let settings = EncodeSettings::new(32, 32, 8, VideoCodec::H264, 10);
    let mut encoder = ClipEncoder::create(&path, &settings).unwrap();
    let orange: Vec<u8> = [230u8, 120, 30].repeat(32 * 32);
    encoder.push_frame(&orange).unwrap();
    encoder.finish().unwrap();
    let out = Command::new("ffmpeg")
        .args(["-v", "error", "-i"])
        .arg(&path)
        .args(["-f", "rawvideo", "-pix_fmt", "rgb24", "-"])
        .output()
        .unwrap();
    assert!(out.status.success());
    assert_eq!(out.stdout.len(), 32 * 32 * 3);
    let centre = &out.stdout[(16 * 32 + 16) * 3..(16 * 32 + 16) * 3 + 3];
    for (got, want) in centre.iter().zip([230u8, 120, 30]) {
        assert!(got.abs_diff(want) <= 6, "centre pixel {centre:?}");
    }
}

#[test]
fn nothing_appears_until_finish() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("4.mkv");
    let settings = small(VideoCodec::H264);
    let mut encoder = ClipEncoder::create(&path, &settings).unwrap();
    encoder.push_frame(&gradient_frame(64, 48, 0)).unwrap();
    assert!(!path.exists());
    assert!(dir.path().join(".4.mkv.partial").exists());
    encoder.finish().unwrap();
    assert!(path.exists());
    assert!(!dir.path().join(".4.mkv.partial").exists());
}

#[test]
fn abandoned_encoder_leaves_no_file() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("4.mkv");
    let mut encoder = ClipEncoder::create(&path, &small(VideoCodec::H264)).unwrap();
    for i in 0..3 {
        encoder.push_frame(&gradient_frame(64, 48, i)).unwrap();
    }
    drop(encoder);
    let left: Vec<_> = std::fs::read_dir(dir.path()).unwrap().collect();
    assert!(left.is_empty(), "left behind: {left:?}");
}

#[test]
fn frame_of_the_wrong_size_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    let mut encoder =
        ClipEncoder::create(&dir.path().join("0.mkv"), &small(VideoCodec::H264)).unwrap();
    let err = encoder.push_frame(&[0u8; 64 * 47 * 3]).unwrap_err();
    assert!(
        matches!(err, RenderError::FrameSize { expected, got, .. } if expected == 64 * 48 * 3 && got == 64 * 47 * 3),
        "{err}"
    );
}

#[test]
fn odd_frame_size_is_refused_before_encoding() {
    let dir = tempfile::tempdir().unwrap();
    let settings = EncodeSettings::new(65, 48, 16, VideoCodec::H264, 18);
    let err = ClipEncoder::create(&dir.path().join("0.mkv"), &settings)
        .err()
        .unwrap();
    assert!(matches!(err, RenderError::EncodeSettings { .. }), "{err}");
    assert!(err.to_string().contains("65x48"), "{err}");
}

#[test]
fn unknown_preset_is_an_error_naming_it() {
    let dir = tempfile::tempdir().unwrap();
    let settings = EncodeSettings {
        preset: "warpspeed".to_string(),
        ..small(VideoCodec::H264)
    };
    let err = ClipEncoder::create(&dir.path().join("0.mkv"), &settings)
        .err()
        .unwrap();
    assert!(err.to_string().contains("warpspeed"), "{err}");
}

#[test]
fn finishing_an_empty_segment_is_an_error() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("0.mkv");
    let encoder = ClipEncoder::create(&path, &small(VideoCodec::H264)).unwrap();
    assert!(encoder.finish().is_err());
    assert!(!path.exists());
}

#[test]
fn encoder_can_be_finished_on_another_thread() {
    // The worker may hand a clip's encoder to an encoding thread while the engine moves on.
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("0.mkv");
    let mut encoder = ClipEncoder::create(&path, &small(VideoCodec::H264)).unwrap();
    encoder.push_frame(&gradient_frame(64, 48, 0)).unwrap();
    let info = std::thread::spawn(move || {
        encoder.push_frame(&gradient_frame(64, 48, 1)).unwrap();
        encoder.finish().unwrap()
    })
    .join()
    .unwrap();
    assert_eq!(info.frames, 2);
    assert_eq!(stream(&ffprobe(&path), "video")["nb_read_frames"], "2");
}
