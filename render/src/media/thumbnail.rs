//! A small JPEG of one frame, for the dashboard: the last frame of each clip, written beside
//! the clip's segment (`work/clips/k.jpg`), through FFmpeg's own MJPEG encoder.

use std::path::Path;

use ffmpeg_next::format::Pixel;
use ffmpeg_next::software::scaling::Flags;
use ffmpeg_next::util::color;
use ffmpeg_next::{codec, encoder, frame, Dictionary, Packet, Rational};

use super::ensure_init;
use super::scale::{fill_rgb_frame, Layout, Scaler};
use crate::RenderError;

/// The longer side of a thumbnail, in pixels.
pub const THUMBNAIL_MAX_SIDE: u32 = 160;

/// The thumbnail size for a `width` x `height` frame: the longer side at most
/// [`THUMBNAIL_MAX_SIDE`], the aspect kept, both sides even and at least 2.
pub fn thumbnail_size(width: u32, height: u32) -> (u32, u32) {
    let longer = width.max(height).max(1);
    let scale = f64::from(THUMBNAIL_MAX_SIDE.min(longer)) / f64::from(longer);
    let even = |side: u32| (((f64::from(side) * scale / 2.0).round() as u32) * 2).max(2);
    (even(width), even(height))
}

/// Writes `rgb` (packed RGB24, `width` x `height`) as a small JPEG at `path`: a temporary name
/// beside it, then a rename, so a reader never sees half a file.
pub fn write_thumbnail(
    path: &Path,
    rgb: &[u8],
    width: u32,
    height: u32,
) -> Result<(), RenderError> {
    ensure_init()?;
    let fail = |reason: String| RenderError::Write {
        path: path.to_path_buf(),
        reason,
    };
    let expected = width as usize * height as usize * 3;
    if rgb.len() != expected || expected == 0 {
        return Err(RenderError::FrameSize {
            path: path.to_path_buf(),
            index: 0,
            expected,
            got: rgb.len(),
        });
    }
    let (tw, th) = thumbnail_size(width, height);
    let mut source = frame::Video::new(Pixel::RGB24, width, height);
    fill_rgb_frame(&mut source, rgb);
    let mut scaler = Scaler::new(
        Layout::new(Pixel::RGB24, width, height),
        false,
        Layout::new(Pixel::YUV420P, tw, th),
        Flags::AREA,
    )
    .map_err(|e| fail(format!("cannot set up the thumbnail scaler: {e}")))?;
    let mut yuv = frame::Video::empty();
    scaler
        .run(&source, &mut yuv)
        .map_err(|e| fail(e.to_string()))?;
    yuv.set_pts(Some(0));

    let mjpeg = encoder::find(codec::Id::MJPEG).ok_or_else(|| RenderError::EncoderMissing {
        path: path.to_path_buf(),
        encoder: "mjpeg",
    })?;
    let mut video = codec::Context::new_with_codec(mjpeg)
        .encoder()
        .video()
        .map_err(|e| fail(e.to_string()))?;
    video.set_width(tw);
    video.set_height(th);
    video.set_format(Pixel::YUV420P);
    video.set_time_base(Rational::new(1, 25));
    // swscale gives limited-range YUV; JPEG's own is full range, so say which it is (MJPEG
    // takes limited range only when told that the file may be "unofficial").
    video.set_color_range(color::Range::MPEG);
    let mut options = Dictionary::new();
    options.set("strict", "unofficial");
    options.set("qmin", "2");
    options.set("qmax", "8");
    let mut encoder = video
        .open_as_with(mjpeg, options)
        .map_err(|e| fail(format!("the mjpeg encoder refused: {e}")))?;
    encoder.send_frame(&yuv).map_err(|e| fail(e.to_string()))?;
    encoder.send_eof().map_err(|e| fail(e.to_string()))?;
    let mut packet = Packet::empty();
    encoder
        .receive_packet(&mut packet)
        .map_err(|e| fail(e.to_string()))?;
    let jpeg = packet
        .data()
        .ok_or_else(|| fail("the mjpeg encoder returned an empty packet".to_string()))?;
    // `.<k>.jpg.partial`, the pattern of a torn segment: checkpoint clean-up removes it.
    let name = path
        .file_name()
        .map(|name| name.to_string_lossy().into_owned())
        .unwrap_or_default();
    let partial = path.with_file_name(format!(".{name}.partial"));
    std::fs::write(&partial, jpeg)
        .and_then(|()| std::fs::rename(&partial, path))
        .map_err(|e| fail(e.to_string()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sizes_keep_the_aspect_and_stay_even() {
        assert_eq!(thumbnail_size(704, 384), (160, 88));
        assert_eq!(thumbnail_size(64, 64), (64, 64));
        assert_eq!(thumbnail_size(384, 704), (88, 160));
        assert_eq!(thumbnail_size(1, 1), (2, 2));
    }

    #[test]
    fn a_frame_becomes_a_jpeg_that_ffprobe_reads() {
        let dir = tempfile::tempdir().expect("temp dir");
        let path = dir.path().join("0.jpg");
        let (w, h) = (320u32, 180u32);
        let mut rgb = Vec::with_capacity((w * h * 3) as usize);
        for y in 0..h {
            for x in 0..w {
                rgb.extend_from_slice(&[(x % 256) as u8, (y % 256) as u8, 128]);
            }
        }
        write_thumbnail(&path, &rgb, w, h).expect("thumbnail");
        let bytes = std::fs::read(&path).expect("written");
        assert!(bytes.starts_with(&[0xFF, 0xD8]), "JPEG start of image");
        assert!(bytes.ends_with(&[0xFF, 0xD9]), "JPEG end of image");
        let probe = std::process::Command::new("ffprobe")
            .args([
                "-v",
                "error",
                "-select_streams",
                "v:0",
                "-show_entries",
                "stream=codec_name,width,height",
                "-of",
                "csv=p=0",
            ])
            .arg(&path)
            .output()
            .expect("ffprobe");
        assert_eq!(
            String::from_utf8_lossy(&probe.stdout).trim(),
            "mjpeg,160,90"
        );
    }

    #[test]
    fn a_frame_of_the_wrong_size_is_refused() {
        let dir = tempfile::tempdir().expect("temp dir");
        let err = write_thumbnail(&dir.path().join("x.jpg"), &[0; 10], 4, 4)
            .expect_err("10 bytes is not 4x4 RGB");
        assert!(matches!(err, RenderError::FrameSize { .. }), "{err}");
    }
}
