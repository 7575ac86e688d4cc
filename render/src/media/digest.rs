//! Per-frame digests of a decoded video, for comparing two renders frame by frame.
//!
//! Comparing files byte for byte says *whether* two outputs differ; comparing decoded frames
//! says *where* (which clip went wrong after a resume), and still holds when only the
//! container bytes differ. Like `ffmpeg -f framemd5`, but SHA-256 and callable from tests.

use std::path::Path;

use ffmpeg_next as ffmpeg;
use ffmpeg_next::ffi;
use ffmpeg_next::{codec, frame, media};
use sha2::{Digest, Sha256};

use super::{ensure_init, ffmpeg_url};
use crate::RenderError;

/// Decodes the first video stream of `path` and returns one lowercase hex SHA-256 per frame,
/// in presentation order, over the visible pixels of every plane (line padding excluded).
pub fn decode_video_frame_digests(path: &Path) -> Result<Vec<String>, RenderError> {
    ensure_init()?;
    let fail = |e: ffmpeg::Error| RenderError::VideoDecode {
        path: path.to_path_buf(),
        reason: e.to_string(),
    };
    let mut input = ffmpeg::format::input(&ffmpeg_url(path)?).map_err(fail)?;
    let stream =
        input
            .streams()
            .best(media::Type::Video)
            .ok_or_else(|| RenderError::VideoDecode {
                path: path.to_path_buf(),
                reason: "it has no video stream".to_string(),
            })?;
    let index = stream.index();
    let mut decoder = codec::Context::from_parameters(stream.parameters())
        .and_then(|c| c.decoder().video())
        .map_err(fail)?;
    let mut digests = Vec::new();
    let mut picture = frame::Video::empty();
    for (stream, packet) in input.packets() {
        if stream.index() == index {
            decoder.send_packet(&packet).map_err(fail)?;
            while decoder.receive_frame(&mut picture).is_ok() {
                digests.push(frame_digest(&picture).map_err(fail)?);
            }
        }
    }
    decoder.send_eof().map_err(fail)?;
    while decoder.receive_frame(&mut picture).is_ok() {
        digests.push(frame_digest(&picture).map_err(fail)?);
    }
    Ok(digests)
}

fn frame_digest(picture: &frame::Video) -> Result<String, ffmpeg::Error> {
    let mut hasher = Sha256::new();
    hasher.update(format!(
        "{:?} {}x{}",
        picture.format(),
        picture.width(),
        picture.height()
    ));
    for plane in 0..picture.planes() {
        // SAFETY: a pure function of the pixel format and width.
        let row_bytes = unsafe {
            ffi::av_image_get_linesize(
                picture.format().into(),
                picture.width() as i32,
                plane as i32,
            )
        };
        let row_bytes = usize::try_from(row_bytes).map_err(|_| ffmpeg::Error::InvalidData)?;
        let stride = picture.stride(plane);
        let data = picture.data(plane);
        for row in 0..picture.plane_height(plane) as usize {
            hasher.update(&data[row * stride..row * stride + row_bytes]);
        }
    }
    Ok(hasher
        .finalize()
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::media::test_support::ffmpeg;

    #[test]
    fn digests_match_per_frame_and_differ_between_frames() {
        let dir = tempfile::tempdir().unwrap();
        let a = dir.path().join("a.mkv");
        let b = dir.path().join("b.mkv");
        // The same lossless frames in two containers decode to the same pictures.
        ffmpeg(&[
            "-f",
            "lavfi",
            "-i",
            "testsrc=size=64x48:rate=10:duration=1",
            "-c:v",
            "ffv1",
            a.to_str().unwrap(),
        ]);
        ffmpeg(&[
            "-i",
            a.to_str().unwrap(),
            "-c",
            "copy",
            "-f",
            "nut",
            b.to_str().unwrap(),
        ]);
        let da = decode_video_frame_digests(&a).unwrap();
        let db = decode_video_frame_digests(&b).unwrap();
        assert_eq!(da.len(), 10);
        assert_eq!(da, db);
        assert_ne!(da[0], da[1], "testsrc moves between frames");
        assert_eq!(da[0].len(), 64);
    }

    #[test]
    fn digests_of_a_non_video_are_an_error() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("x.mp4");
        std::fs::write(&path, b"not a video").unwrap();
        let err = decode_video_frame_digests(&path).unwrap_err();
        assert!(err.to_string().contains(path.to_str().unwrap()), "{err}");
    }
}
