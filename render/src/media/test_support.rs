//! Helpers for tests: make real media with the `ffmpeg` CLI and inspect it with `ffprobe`.
//!
//! The tests check this module against FFmpeg's own command-line tools rather than against
//! itself, so a wrong assumption in the library code cannot hide in the test's expectations.

use std::path::Path;
use std::process::Command;

/// Runs `ffmpeg -y -v error <args>` and fails the test with its stderr if it fails.
pub(crate) fn ffmpeg(args: &[&str]) {
    let out = Command::new("ffmpeg")
        .args(["-hide_banner", "-nostdin", "-y", "-v", "error"])
        .args(args)
        .output()
        .expect("the ffmpeg CLI must be installed to run these tests");
    assert!(
        out.status.success(),
        "ffmpeg {args:?} failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}

/// `ffprobe`'s JSON description of `path`'s streams and format, frames counted by decoding.
pub(crate) fn ffprobe(path: &Path) -> serde_json::Value {
    let out = Command::new("ffprobe")
        .args([
            "-v",
            "error",
            "-count_frames",
            "-show_streams",
            "-show_format",
            "-of",
            "json",
        ])
        .arg(path)
        .output()
        .expect("the ffprobe CLI must be installed to run these tests");
    assert!(
        out.status.success(),
        "ffprobe {} failed: {}",
        path.display(),
        String::from_utf8_lossy(&out.stderr)
    );
    serde_json::from_slice(&out.stdout).expect("ffprobe -of json prints JSON")
}

/// The first stream of `kind` ("video" or "audio") in an ffprobe description.
pub(crate) fn stream<'a>(probe: &'a serde_json::Value, kind: &str) -> &'a serde_json::Value {
    probe["streams"]
        .as_array()
        .and_then(|s| s.iter().find(|s| s["codec_type"] == kind))
        .unwrap_or_else(|| panic!("no {kind} stream in {probe}"))
}

/// A string-valued ffprobe field parsed as a number (ffprobe prints durations as strings).
pub(crate) fn number(value: &serde_json::Value) -> f64 {
    value
        .as_str()
        .and_then(|s| s.parse().ok())
        .or_else(|| value.as_f64())
        .unwrap_or_else(|| panic!("{value} is not a number"))
}

/// Writes a binary PPM, which the ffmpeg CLI turns into any image format we want to test.
pub(crate) fn write_ppm(path: &Path, width: u32, height: u32, pixel: impl Fn(u32, u32) -> [u8; 3]) {
    let mut bytes = format!("P6\n{width} {height}\n255\n").into_bytes();
    for y in 0..height {
        for x in 0..width {
            bytes.extend_from_slice(&pixel(x, y));
        }
    }
    std::fs::write(path, bytes).unwrap();
}

/// Asserts that an RGB pixel is within `tolerance` of `expected` in every channel.
pub(crate) fn assert_close(got: &[u8], expected: [u8; 3], tolerance: u8, what: &str) {
    let close = got
        .iter()
        .zip(expected)
        .all(|(&g, e)| g.abs_diff(e) <= tolerance);
    assert!(close, "{what}: got {got:?}, expected about {expected:?}");
}

/// A moving diagonal gradient, different in every frame, so the encoder has real work.
pub(crate) fn gradient_frame(width: u32, height: u32, index: u32) -> Vec<u8> {
    let mut rgb = Vec::with_capacity((width * height * 3) as usize);
    for y in 0..height {
        for x in 0..width {
            let t = x + y + index * 3;
            rgb.extend_from_slice(&[
                (t % 256) as u8,
                ((x * 2) % 256) as u8,
                ((y * 2) % 256) as u8,
            ]);
        }
    }
    rgb
}
