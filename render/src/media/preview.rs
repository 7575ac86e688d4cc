//! Pieces of a job for watching it while it runs: one clip segment remuxed, without
//! re-encoding, into an MPEG-TS segment of an HLS playlist ([`remux_to_mpegts`]), and one
//! frame of a video as a small JPEG ([`frame_jpeg`]).
//!
//! Both return bytes rather than writing a file: the caller (the daemon's web server) decides
//! where they go and how they are written. Both work on a temporary directory of their own.
//!
//! Timestamps of the MPEG-TS segments continue from one clip to the next: segment *k* starts
//! at the frame where the clips before it ended (`first_frame`), so a player that joins them
//! sees one stream. Presentation times are shifted by [`REORDER_ALLOWANCE_FRAMES`] so that decode
//! times can simply count packets: decode time `first_frame + position` is then never after the
//! presentation time for any stream H.264 or HEVC allows (at most 16 frames reordered), and it
//! never goes backwards across segments.

use std::path::Path;

use ffmpeg_next as ffmpeg;
use ffmpeg_next::{codec, encoder, frame, media, Dictionary, Packet, Rational};

use super::image::to_rgb;
use super::{ensure_init, ffmpeg_url, write_thumbnail};
use crate::RenderError;

/// How far presentation times are placed after decode times, in frames: the most frames
/// H.264 and HEVC let an encoder reorder.
pub const REORDER_ALLOWANCE_FRAMES: u64 = 16;

/// What one remuxed segment holds.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct TsSegment {
    /// Video frames in the segment.
    pub frames: u64,
    /// The segment's constant frame rate, frames per second.
    pub fps: u32,
}

impl TsSegment {
    /// The segment's length in seconds.
    pub fn secs(&self) -> f64 {
        self.frames as f64 / f64::from(self.fps.max(1))
    }
}

/// Remuxes the video of the clip segment `segment` (a Matroska file as the worker writes it)
/// into MPEG-TS, its first frame numbered `first_frame`. The packets are copied, never
/// decoded; H.264 and HEVC get the start codes MPEG-TS needs on the way.
pub fn remux_to_mpegts(
    segment: &Path,
    first_frame: u64,
) -> Result<(Vec<u8>, TsSegment), RenderError> {
    ensure_init()?;
    let fail = |reason: String| RenderError::Segment {
        path: segment.to_path_buf(),
        reason,
    };
    let mut input =
        ffmpeg::format::input(&ffmpeg_url(segment)?).map_err(|e| fail(e.to_string()))?;
    let (index, parameters, time_base, fps) = {
        let stream = input
            .streams()
            .best(media::Type::Video)
            .ok_or_else(|| fail("it has no video stream".to_string()))?;
        let fps = whole_rate(stream.avg_frame_rate())
            .or_else(|| whole_rate(stream.rate()))
            .ok_or_else(|| {
                fail(format!(
                    "its frame rate {} is not a whole number of frames per second",
                    stream.avg_frame_rate()
                ))
            })?;
        (stream.index(), stream.parameters(), stream.time_base(), fps)
    };

    let scratch = scratch_dir(segment)?;
    let ts_path = scratch.path().join("segment.ts");
    let write_error = |e: ffmpeg::Error| RenderError::Write {
        path: ts_path.clone(),
        reason: e.to_string(),
    };
    let mut output =
        ffmpeg::format::output_as(&ffmpeg_url(&ts_path)?, "mpegts").map_err(write_error)?;
    {
        let mut stream = output
            .add_stream(encoder::find(codec::Id::None))
            .map_err(write_error)?;
        let mut parameters = parameters;
        // SAFETY: `parameters` is an owned copy; codec_tag is a plain integer field, and 0
        // lets the MPEG-TS muxer pick its own.
        unsafe { (*parameters.as_mut_ptr()).codec_tag = 0 };
        stream.set_parameters(parameters);
        stream.set_time_base(Rational::new(1, 90_000));
    }
    let mut options = Dictionary::new();
    options.set("fflags", "+bitexact");
    output.write_header_with(options).map_err(write_error)?;
    let out_time_base = output
        .stream(0)
        .map(|s| s.time_base())
        .ok_or_else(|| write_error(ffmpeg::Error::StreamNotFound))?;
    let frame_time_base = Rational::new(1, fps as i32);

    let mut position = 0u64;
    let mut packet = Packet::empty();
    loop {
        match packet.read(&mut input) {
            Ok(()) if packet.stream() != index => continue,
            Ok(()) => {}
            Err(ffmpeg::Error::Eof) => break,
            Err(e) => return Err(fail(e.to_string())),
        }
        let pts = packet
            .pts()
            .ok_or_else(|| fail("a packet has no timestamp".to_string()))?;
        let frame = frame_number(pts, time_base, fps)
            .ok_or_else(|| fail(format!("a packet has a negative timestamp ({pts})")))?;
        if position > frame + REORDER_ALLOWANCE_FRAMES {
            return Err(fail(format!(
                "its frames are reordered by more than {REORDER_ALLOWANCE_FRAMES}, which no H.264 or HEVC stream may"
            )));
        }
        packet.set_stream(0);
        packet.set_pts(Some(
            (first_frame + frame + REORDER_ALLOWANCE_FRAMES) as i64,
        ));
        packet.set_dts(Some((first_frame + position) as i64));
        packet.set_duration(1);
        packet.set_position(-1);
        packet.rescale_ts(frame_time_base, out_time_base);
        packet.write_interleaved(&mut output).map_err(write_error)?;
        position += 1;
    }
    if position == 0 {
        return Err(fail("it holds no video frames".to_string()));
    }
    output.write_trailer().map_err(write_error)?;
    drop(output);
    let bytes = read_back(&ts_path)?;
    Ok((
        bytes,
        TsSegment {
            frames: position,
            fps,
        },
    ))
}

/// A rate that is a whole number of frames per second, 1 to 1000.
fn whole_rate(rate: Rational) -> Option<u32> {
    let (num, den) = (rate.numerator(), rate.denominator());
    if num <= 0 || den <= 0 || num % den != 0 {
        return None;
    }
    u32::try_from(num / den)
        .ok()
        .filter(|fps| (1..=1000).contains(fps))
}

/// `pts * time_base * fps`, rounded to the nearest frame; `None` when negative.
fn frame_number(pts: i64, time_base: Rational, fps: u32) -> Option<u64> {
    let scaled = i128::from(pts) * i128::from(time_base.numerator()) * i128::from(fps);
    let den = i128::from(time_base.denominator());
    if den <= 0 {
        return None;
    }
    u64::try_from((2 * scaled + den).div_euclid(2 * den)).ok()
}

/// Frame `index` (in presentation order, 0 the first) of the video at `video` as a small
/// JPEG, the longer side at most [`super::THUMBNAIL_MAX_SIDE`]; the last frame when the video
/// is shorter.
pub fn frame_jpeg(video: &Path, index: u64) -> Result<Vec<u8>, RenderError> {
    ensure_init()?;
    let fail = |reason: String| RenderError::VideoDecode {
        path: video.to_path_buf(),
        reason,
    };
    let mut input = ffmpeg::format::input(&ffmpeg_url(video)?).map_err(|e| fail(e.to_string()))?;
    let (stream_index, parameters) = {
        let stream = input
            .streams()
            .best(media::Type::Video)
            .ok_or_else(|| fail("it has no video stream".to_string()))?;
        (stream.index(), stream.parameters())
    };
    let mut decoder = codec::Context::from_parameters(parameters)
        .and_then(|c| c.decoder().video())
        .map_err(|e| fail(e.to_string()))?;
    // `latest` holds the newest decoded frame; `spare` is the buffer the next one goes into.
    let mut latest: Option<frame::Video> = None;
    let mut spare = frame::Video::empty();
    let mut decoded = 0u64;
    let mut receive = |decoder: &mut ffmpeg::decoder::Video,
                       latest: &mut Option<frame::Video>,
                       spare: &mut frame::Video|
     -> bool {
        while decoded <= index && decoder.receive_frame(spare).is_ok() {
            decoded += 1;
            let previous = latest.replace(std::mem::replace(spare, frame::Video::empty()));
            if let Some(previous) = previous {
                *spare = previous;
            }
        }
        decoded > index
    };
    let mut packet = Packet::empty();
    let mut reached = false;
    while !reached {
        match packet.read(&mut input) {
            Ok(()) if packet.stream() != stream_index => continue,
            Ok(()) => {}
            Err(ffmpeg::Error::Eof) => break,
            Err(e) => return Err(fail(e.to_string())),
        }
        decoder
            .send_packet(&packet)
            .map_err(|e| fail(e.to_string()))?;
        reached = receive(&mut decoder, &mut latest, &mut spare);
    }
    if !reached {
        decoder.send_eof().map_err(|e| fail(e.to_string()))?;
        receive(&mut decoder, &mut latest, &mut spare);
    }
    let picture = latest.ok_or_else(|| fail("it holds no video frames".to_string()))?;
    let image =
        to_rgb(&picture).map_err(|e| fail(format!("cannot convert the frame to RGB: {e}")))?;
    let scratch = scratch_dir(video)?;
    let jpeg = scratch.path().join("frame.jpg");
    write_thumbnail(&jpeg, &image.pixels, image.width, image.height)?;
    read_back(&jpeg)
}

/// A temporary directory to write what is made from `source` into.
fn scratch_dir(source: &Path) -> Result<tempfile::TempDir, RenderError> {
    tempfile::tempdir().map_err(|error| RenderError::Io {
        action: "create a temporary directory for what is made from",
        path: source.to_path_buf(),
        source: error,
    })
}

fn read_back(path: &Path) -> Result<Vec<u8>, RenderError> {
    std::fs::read(path).map_err(|source| RenderError::Io {
        action: "read back",
        path: path.to_path_buf(),
        source,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::media::test_support::{ffprobe, number, stream};
    use crate::media::{ClipEncoder, EncodeSettings, VideoCodec};

    /// A segment of `frames` frames as the worker writes it, frame i a flat grey of 8 * i.
    fn segment(dir: &Path, name: &str, frames: u32, fps: u32) -> std::path::PathBuf {
        let path = dir.join(name);
        let settings = EncodeSettings::new(64, 48, fps, VideoCodec::H264, 23);
        let mut encoder = ClipEncoder::create(&path, &settings).expect("encoder");
        for i in 0..frames {
            encoder
                .push_frame(&vec![(8 * i) as u8; 64 * 48 * 3])
                .expect("frame");
        }
        encoder.finish().expect("segment");
        path
    }

    /// (pts, dts) in seconds of every video packet, from ffprobe.
    fn packet_times(path: &Path) -> Vec<(f64, f64)> {
        let out = std::process::Command::new("ffprobe")
            .args([
                "-v",
                "error",
                "-select_streams",
                "v:0",
                "-show_entries",
                "packet=pts_time,dts_time",
                "-of",
                "csv=p=0",
            ])
            .arg(path)
            .output()
            .expect("ffprobe");
        String::from_utf8_lossy(&out.stdout)
            .lines()
            .filter_map(|line| {
                let (pts, dts) = line.split_once(',')?;
                Some((pts.parse().ok()?, dts.parse().ok()?))
            })
            .collect()
    }

    #[test]
    fn segments_become_mpegts_that_continue_each_other() {
        let dir = tempfile::tempdir().expect("temp dir");
        let first = segment(dir.path(), "0.mkv", 20, 16);
        let second = segment(dir.path(), "1.mkv", 20, 16);
        let (bytes0, info0) = remux_to_mpegts(&first, 0).expect("remux 0");
        let (bytes1, info1) = remux_to_mpegts(&second, info0.frames).expect("remux 1");
        assert_eq!(
            info0,
            TsSegment {
                frames: 20,
                fps: 16
            }
        );
        assert_eq!(info1.frames, 20);
        assert!((info0.secs() - 1.25).abs() < 1e-9);
        assert_eq!(bytes0[0], 0x47, "an MPEG-TS sync byte");
        assert_eq!(bytes0.len() % 188, 0, "whole 188-byte TS packets");
        let ts0 = dir.path().join("0.ts");
        let ts1 = dir.path().join("1.ts");
        std::fs::write(&ts0, &bytes0).expect("write");
        std::fs::write(&ts1, &bytes1).expect("write");
        for ts in [&ts0, &ts1] {
            let probe = ffprobe(ts);
            let video = stream(&probe, "video");
            assert_eq!(video["codec_name"], "h264");
            assert_eq!(
                number(&video["nb_read_frames"]),
                20.0,
                "every frame decodes"
            );
        }
        // The second segment's frames follow the first one's: 20 frames = 1.25 s later.
        let times0 = packet_times(&ts0);
        let times1 = packet_times(&ts1);
        let min_pts = |times: &[(f64, f64)]| times.iter().map(|t| t.0).fold(f64::MAX, f64::min);
        assert!(
            (min_pts(&times1) - min_pts(&times0) - 1.25).abs() < 1e-3,
            "{times0:?} {times1:?}"
        );
        let last_dts0 = times0.last().expect("packets").1;
        assert!(
            times1[0].1 > last_dts0,
            "decode times keep rising across segments"
        );
        for (pts, dts) in times0.iter().chain(&times1) {
            assert!(dts <= pts, "decode before presentation: {pts} {dts}");
        }
    }

    #[test]
    fn a_file_that_is_not_video_is_refused_with_its_name() {
        let dir = tempfile::tempdir().expect("temp dir");
        let junk = dir.path().join("3.mkv");
        std::fs::write(&junk, b"not a video").expect("write");
        let err = remux_to_mpegts(&junk, 0).expect_err("junk");
        assert!(err.to_string().contains("3.mkv"), "{err}");
        assert!(frame_jpeg(&junk, 0).is_err());
    }

    #[test]
    fn a_frame_becomes_a_small_jpeg_of_that_frame() {
        let dir = tempfile::tempdir().expect("temp dir");
        let clip = segment(dir.path(), "0.mkv", 20, 16);
        let brightness = |jpeg: &[u8]| {
            let path = dir.path().join("t.jpg");
            std::fs::write(&path, jpeg).expect("write");
            let out = std::process::Command::new("ffmpeg")
                .args(["-v", "error", "-i"])
                .arg(&path)
                .args(["-f", "rawvideo", "-pix_fmt", "gray", "-"])
                .output()
                .expect("ffmpeg");
            let pixels = out.stdout;
            assert!(!pixels.is_empty());
            pixels.iter().map(|&p| f64::from(p)).sum::<f64>() / pixels.len() as f64
        };
        let first = frame_jpeg(&clip, 0).expect("frame 0");
        assert!(first.starts_with(&[0xFF, 0xD8]), "a JPEG");
        let tenth = frame_jpeg(&clip, 10).expect("frame 10");
        let beyond = frame_jpeg(&clip, 1000).expect("past the end: the last frame");
        let (b0, b10, b19) = (brightness(&first), brightness(&tenth), brightness(&beyond));
        // Frame i is grey 8 * i: 0, 80, 152 (limited-range YUV moves them a little).
        assert!(b0 < 20.0, "{b0}");
        assert!((b10 - 80.0).abs() < 12.0, "{b10}");
        assert!((b19 - 152.0).abs() < 12.0, "{b19}");
    }
}
