use std::path::{Path, PathBuf};

use super::*;
use crate::media::test_support::{ffmpeg, ffprobe, gradient_frame, number, stream};
use crate::media::{decode_video_frame_digests, ClipEncoder, EncodeSettings, VideoCodec};

const FPS: u32 = 16;

/// Encodes consecutive gradient frames into one segment per entry of `lengths`.
fn segments(dir: &Path, lengths: &[u32], codec: VideoCodec) -> Vec<PathBuf> {
    let settings = EncodeSettings::new(64, 48, FPS, codec, 23);
    let mut next_frame = 0;
    lengths
        .iter()
        .enumerate()
        .map(|(k, &frames)| {
            let path = dir.join(format!("{k}.mkv"));
            let mut encoder = ClipEncoder::create(&path, &settings).unwrap();
            for _ in 0..frames {
                encoder
                    .push_frame(&gradient_frame(64, 48, next_frame))
                    .unwrap();
                next_frame += 1;
            }
            encoder.finish().unwrap();
            path
        })
        .collect()
}

fn tone(dir: &Path, seconds: f64, channels: u32) -> PathBuf {
    let path = dir.join(format!("speech-{seconds}-{channels}.wav"));
    ffmpeg(&[
        "-f",
        "lavfi",
        "-i",
        &format!("sine=frequency=300:duration={seconds}:sample_rate=44100"),
        "-ac",
        &channels.to_string(),
        path.to_str().unwrap(),
    ]);
    path
}

/// The four-letter types of the file's top-level MP4 boxes, in order.
fn top_level_boxes(path: &Path) -> Vec<String> {
    let bytes = std::fs::read(path).unwrap();
    let mut boxes = Vec::new();
    let mut at = 0usize;
    while at + 8 <= bytes.len() {
        let size32 = u32::from_be_bytes(bytes[at..at + 4].try_into().unwrap()) as usize;
        boxes.push(String::from_utf8_lossy(&bytes[at + 4..at + 8]).into_owned());
        let size = match size32 {
            0 => bytes.len() - at,
            1 => u64::from_be_bytes(bytes[at + 8..at + 16].try_into().unwrap()) as usize,
            n => n,
        };
        assert!(
            size >= 8,
            "box {} at {at} has size {size}",
            boxes.last().unwrap()
        );
        at += size;
    }
    boxes
}

fn plan(total_frames: u64) -> AssemblePlan {
    AssemblePlan {
        total_frames,
        fps: FPS,
    }
}

/// Checks the common promises of an assembled MP4 of `frames` frames.
fn assert_output_is_sound(path: &Path, frames: u64, audio_channels: u64) {
    let probe = ffprobe(path);
    assert!(probe["format"]["format_name"]
        .as_str()
        .unwrap()
        .contains("mp4"));
    let expected_s = frames as f64 / f64::from(FPS);
    let frame_s = 1.0 / f64::from(FPS);
    let format_s = number(&probe["format"]["duration"]);
    assert!(
        (format_s - expected_s).abs() <= frame_s,
        "format lasts {format_s}s, want {expected_s}s"
    );

    let video = stream(&probe, "video");
    assert_eq!(video["codec_name"], "h264");
    assert_eq!(video["nb_read_frames"], frames.to_string().as_str());
    assert_eq!(video["avg_frame_rate"], "16/1");
    let video_s = number(&video["duration"]);
    assert!(
        (video_s - expected_s).abs() <= frame_s,
        "video lasts {video_s}s"
    );

    let audio = stream(&probe, "audio");
    assert_eq!(audio["codec_name"], "aac");
    assert_eq!(audio["sample_rate"], "48000");
    assert_eq!(audio["channels"].as_u64(), Some(audio_channels));
    let audio_s = number(&audio["duration"]);
    assert!(
        (audio_s - expected_s).abs() <= frame_s,
        "audio lasts {audio_s}s, want {expected_s}s"
    );

    let boxes = top_level_boxes(path);
    let moov = boxes.iter().position(|b| b == "moov").expect("a moov box");
    let mdat = boxes.iter().position(|b| b == "mdat").expect("an mdat box");
    assert!(moov < mdat, "faststart puts moov before mdat: {boxes:?}");
}

#[test]
fn joins_three_segments_with_longer_audio_cut_to_the_video() {
    let dir = tempfile::tempdir().unwrap();
    let parts = segments(dir.path(), &[8, 8, 5], VideoCodec::H264);
    let audio = tone(dir.path(), 3.0, 1);
    let out = dir.path().join("out.mp4");
    let info = assemble_output(&parts, &audio, &plan(21), &out).unwrap();
    assert_eq!(info.frames, 21);
    assert_eq!(info.duration, Duration::from_micros(1_312_500));
    assert_eq!(info.bytes, std::fs::metadata(&out).unwrap().len());
    assert_output_is_sound(&out, 21, 1);
}

#[test]
fn shorter_audio_is_padded_to_the_video() {
    let dir = tempfile::tempdir().unwrap();
    let parts = segments(dir.path(), &[8, 8, 8], VideoCodec::H264);
    let audio = tone(dir.path(), 0.5, 2);
    let out = dir.path().join("out.mp4");
    assemble_output(&parts, &audio, &plan(24), &out).unwrap();
    assert_output_is_sound(&out, 24, 2);
}

#[test]
fn joined_frames_are_the_segments_frames_unchanged() {
    let dir = tempfile::tempdir().unwrap();
    let parts = segments(dir.path(), &[12, 7, 12], VideoCodec::H264);
    let out = dir.path().join("out.mp4");
    assemble_output(&parts, &tone(dir.path(), 2.0, 1), &plan(31), &out).unwrap();
    let mut expected = Vec::new();
    for part in &parts {
        expected.extend(decode_video_frame_digests(part).unwrap());
    }
    assert_eq!(expected.len(), 31);
    assert_eq!(decode_video_frame_digests(&out).unwrap(), expected);
}

#[test]
fn assembling_twice_gives_identical_files() {
    let dir = tempfile::tempdir().unwrap();
    let parts = segments(dir.path(), &[8, 8], VideoCodec::H264);
    let audio = tone(dir.path(), 1.0, 1);
    let (a, b) = (dir.path().join("a.mp4"), dir.path().join("b.mp4"));
    assemble_output(&parts, &audio, &plan(16), &a).unwrap();
    assemble_output(&parts, &audio, &plan(16), &b).unwrap();
    assert!(std::fs::read(a).unwrap() == std::fs::read(b).unwrap());
}

#[test]
fn hevc_segments_join_into_an_hvc1_mp4() {
    let dir = tempfile::tempdir().unwrap();
    let parts = segments(dir.path(), &[6, 6], VideoCodec::Hevc);
    let out = dir.path().join("out.mp4");
    assemble_output(&parts, &tone(dir.path(), 1.0, 1), &plan(12), &out).unwrap();
    let probe = ffprobe(&out);
    let video = stream(&probe, "video");
    assert_eq!(video["codec_name"], "hevc");
    assert_eq!(video["codec_tag_string"], "hvc1");
    assert_eq!(video["nb_read_frames"], "12");
}

#[test]
fn frame_count_other_than_the_plan_is_refused_without_output() {
    let dir = tempfile::tempdir().unwrap();
    let parts = segments(dir.path(), &[8, 8], VideoCodec::H264);
    let out = dir.path().join("out.mp4");
    let err = assemble_output(&parts, &tone(dir.path(), 1.0, 1), &plan(24), &out).unwrap_err();
    assert!(matches!(err, RenderError::Plan { .. }), "{err}");
    assert!(err.to_string().contains("16 frames"), "{err}");
    assert!(!out.exists());
}

#[test]
fn segment_of_another_size_is_named_in_the_error() {
    let dir = tempfile::tempdir().unwrap();
    let mut parts = segments(dir.path(), &[4], VideoCodec::H264);
    let odd = dir.path().join("1.mkv");
    let settings = EncodeSettings::new(32, 32, FPS, VideoCodec::H264, 23);
    let mut encoder = ClipEncoder::create(&odd, &settings).unwrap();
    for i in 0..4 {
        encoder.push_frame(&gradient_frame(32, 32, i)).unwrap();
    }
    encoder.finish().unwrap();
    parts.push(odd.clone());
    let err = assemble_output(
        &parts,
        &tone(dir.path(), 1.0, 1),
        &plan(8),
        &dir.path().join("o.mp4"),
    )
    .unwrap_err();
    assert!(matches!(err, RenderError::Segment { .. }), "{err}");
    assert!(err.to_string().contains(odd.to_str().unwrap()), "{err}");
}

#[test]
fn damaged_segment_is_named_in_the_error() {
    let dir = tempfile::tempdir().unwrap();
    let mut parts = segments(dir.path(), &[4], VideoCodec::H264);
    let broken = dir.path().join("1.mkv");
    std::fs::write(&broken, b"definitely not matroska").unwrap();
    parts.push(broken.clone());
    let err = assemble_output(
        &parts,
        &tone(dir.path(), 1.0, 1),
        &plan(8),
        &dir.path().join("o.mp4"),
    )
    .unwrap_err();
    assert!(err.to_string().contains(broken.to_str().unwrap()), "{err}");
}

#[test]
fn missing_audio_is_an_error_and_leaves_no_output() {
    let dir = tempfile::tempdir().unwrap();
    let parts = segments(dir.path(), &[4], VideoCodec::H264);
    let out = dir.path().join("out.mp4");
    let err = assemble_output(&parts, &dir.path().join("nope.wav"), &plan(4), &out).unwrap_err();
    assert!(err.to_string().contains("nope.wav"), "{err}");
    let left: Vec<_> = std::fs::read_dir(dir.path())
        .unwrap()
        .map(|e| e.unwrap().file_name())
        .filter(|n| n.to_string_lossy().contains("out.mp4"))
        .collect();
    assert!(left.is_empty(), "{left:?}");
}
