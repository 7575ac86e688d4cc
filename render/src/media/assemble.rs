//! The finished video: clip segments joined without re-encoding, plus the job's audio.
//!
//! Segments are remuxed packet by packet with a running frame offset, so the picture the
//! model made is never re-encoded (no quality loss, and fast). Matroska stores timestamps in
//! milliseconds, which cannot represent 1/16 s exactly, so each packet's frame number is
//! recovered by rounding and the output timestamps are rebuilt from frame numbers: the MP4
//! has an exact constant frame rate whatever the segment container rounded.

use std::path::{Path, PathBuf};
use std::time::Duration;

use ffmpeg_next as ffmpeg;
use ffmpeg_next::{codec, encoder, media, Dictionary, Packet, Rational};

use super::aac::{AacTrack, AAC_RATE_HZ};
use super::atomic::{KeepExisting, PartialFile};
use super::audio::samples_to_duration;
use super::{ensure_init, ffmpeg_url};
use crate::RenderError;

/// What the final video must add up to.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct AssemblePlan {
    /// Frames across all segments; the audio is cut or padded to match.
    pub total_frames: u64,
    /// The frame rate the segments were encoded at.
    pub fps: u32,
}

/// What the finished MP4 holds.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct OutputInfo {
    pub duration: Duration,
    pub frames: u64,
    pub bytes: u64,
}

/// Joins `segments` (in order) with `audio` into the MP4 `output`, atomically.
///
/// The audio is re-encoded to AAC at 48 kHz (mono stays mono, more channels become stereo)
/// and trimmed or padded with silence to exactly `plan.total_frames / plan.fps` seconds.
/// The MP4 is written with its index first (`faststart`) so players can start before the
/// whole file has arrived.
pub fn assemble_output(
    segments: &[PathBuf],
    audio: &Path,
    plan: &AssemblePlan,
    output: &Path,
) -> Result<OutputInfo, RenderError> {
    assemble_output_keeping(segments, audio, plan, output, None).map(|(info, _)| info)
}

/// [`assemble_output`] that, given `keep`, never replaces a file someone else put at
/// `output` meanwhile (see [`KeepExisting`]). Returns where the video went.
pub fn assemble_output_keeping(
    segments: &[PathBuf],
    audio: &Path,
    plan: &AssemblePlan,
    output: &Path,
    keep: Option<&KeepExisting>,
) -> Result<(OutputInfo, PathBuf), RenderError> {
    let partial = PartialFile::beside(output)?;
    write_mp4(segments, audio, plan, output, partial, keep, &|_| Ok(()))
}

/// Where [`assemble_output_into`] puts the video: a folder already open (reached safely from
/// an allowed root), the file's name in it, and how messages name it.
pub struct OutputTarget<'a> {
    pub dir: atomic_write::Dir,
    pub name: &'a std::ffi::OsStr,
    pub shown: &'a Path,
    pub keep: Option<&'a KeepExisting>,
    /// Run on the finished file before it takes its name (its mode and ACL, set through the
    /// descriptor).
    pub finish: &'a dyn Fn(&std::fs::File) -> std::io::Result<()>,
}

/// [`assemble_output_keeping`] into an open folder: the partial file is created there with
/// `O_EXCL`, FFmpeg writes it through `/proc/self/fd/N`, `finish` runs on it, and it is renamed
/// within the folder's descriptor. Nothing is looked up by the output's path.
pub fn assemble_output_into(
    segments: &[PathBuf],
    audio: &Path,
    plan: &AssemblePlan,
    target: OutputTarget<'_>,
) -> Result<(OutputInfo, PathBuf), RenderError> {
    let partial = PartialFile::create_in(target.dir, target.name, target.shown)?;
    write_mp4(
        segments,
        audio,
        plan,
        target.shown,
        partial,
        target.keep,
        target.finish,
    )
}

fn write_mp4(
    segments: &[PathBuf],
    audio: &Path,
    plan: &AssemblePlan,
    output: &Path,
    partial: PartialFile,
    keep: Option<&KeepExisting>,
    finish: &dyn Fn(&std::fs::File) -> std::io::Result<()>,
) -> Result<(OutputInfo, PathBuf), RenderError> {
    ensure_init()?;
    let plan_error = |reason: String| RenderError::Plan {
        path: output.to_path_buf(),
        reason,
    };
    if plan.fps == 0 || plan.fps > 1_000 {
        return Err(plan_error(format!("{} fps is outside 1..=1000", plan.fps)));
    }
    let Some(first) = segments.first() else {
        return Err(plan_error("no segments to join".to_string()));
    };

    // Pass 1: read every segment's timestamps (no decoding) to check they fit together and
    // to find the deepest frame reordering, which sets the decode-time offset below.
    let first_layout = scan_segment(first, plan.fps)?;
    let mut total_frames = 0;
    let mut reorder_depth = 0;
    for path in segments {
        let layout = if path == first {
            first_layout.clone()
        } else {
            scan_segment(path, plan.fps)?
        };
        if let Some(reason) = first_layout.stream.mismatch(&layout.stream) {
            return Err(RenderError::Segment {
                path: path.clone(),
                reason: format!("{reason} than the first segment {}", first.display()),
            });
        }
        total_frames += layout.frames;
        reorder_depth = reorder_depth.max(layout.reorder_depth);
    }
    if total_frames != plan.total_frames {
        return Err(plan_error(format!(
            "the {} segments hold {total_frames} frames but the plan expects {}; a segment is missing or was cut short, delete the last segments so their clips are rendered again",
            segments.len(),
            plan.total_frames
        )));
    }

    let write_error = |e: ffmpeg::Error| RenderError::Write {
        path: output.to_path_buf(),
        reason: e.to_string(),
    };
    let mut mp4 = ffmpeg::format::output_as(&ffmpeg_url(&partial.partial_path())?, "mp4")
        .map_err(write_error)?;
    let frame_time_base = Rational::new(1, plan.fps as i32);
    {
        let mut video = mp4
            .add_stream(encoder::find(codec::Id::None))
            .map_err(write_error)?;
        video.set_parameters(first_layout.stream.for_mp4());
        video.set_time_base(frame_time_base);
        video.set_avg_frame_rate(Rational::new(plan.fps as i32, 1));
    }
    let mut aac = AacTrack::add_to(&mut mp4, output, audio)?;
    let mut options = Dictionary::new();
    options.set("movflags", "+faststart");
    options.set("fflags", "+bitexact");
    mp4.write_header_with(options).map_err(write_error)?;
    let video_time_base = stream_time_base(&mp4, 0).map_err(write_error)?;
    aac.set_stream_time_base(stream_time_base(&mp4, 1).map_err(write_error)?);

    // Pass 2: copy packets, with frame numbers offset by the frames before each segment.
    // Decode timestamps are `decode position - reorder depth`: strictly increasing across
    // segment joins, and never after the matching presentation time.
    let samples_at = |frame: u64| frame * u64::from(AAC_RATE_HZ) / u64::from(plan.fps);
    let mut offset = 0u64;
    for path in segments {
        let copied = copy_segment(path, plan.fps, |packet, frame, position| {
            let pts = (offset + frame) as i64;
            let dts = (offset + position) as i64 - reorder_depth as i64;
            packet.set_stream(0);
            packet.set_pts(Some(pts));
            packet.set_dts(Some(dts));
            packet.set_duration(1);
            packet.set_position(-1);
            packet.rescale_ts(frame_time_base, video_time_base);
            packet.write_interleaved(&mut mp4).map_err(write_error)
        })?;
        offset += copied;
        aac.encode_until(&mut mp4, samples_at(offset))?;
    }
    aac.finish(&mut mp4, samples_at(offset))?;
    mp4.write_trailer().map_err(write_error)?;
    drop(aac);
    drop(mp4);
    if let Some(file) = partial.file() {
        finish(file).map_err(RenderError::io("set the rights of", output))?;
    }
    let (bytes, placed) = match keep {
        Some(keep) => partial.commit_keeping(keep)?,
        None => (partial.commit()?, output.to_path_buf()),
    };
    let info = OutputInfo {
        duration: samples_to_duration(total_frames, plan.fps),
        frames: total_frames,
        bytes,
    };
    Ok((info, placed))
}

fn stream_time_base(
    output: &ffmpeg::format::context::Output,
    index: usize,
) -> Result<Rational, ffmpeg::Error> {
    output
        .stream(index)
        .map(|s| s.time_base())
        .ok_or(ffmpeg::Error::StreamNotFound)
}

/// What pass 1 learns about a segment.
#[derive(Clone)]
struct SegmentLayout {
    stream: StreamShape,
    frames: u64,
    /// How many places the encoder moved a frame ahead of its display position, at most.
    reorder_depth: u64,
}

fn scan_segment(path: &Path, fps: u32) -> Result<SegmentLayout, RenderError> {
    let (mut input, index) = open_segment(path)?;
    let shape = StreamShape::of(&input, index, path)?;
    let mut frames_in_decode_order = Vec::new();
    read_frame_numbers(&mut input, index, fps, path, |_, frame| {
        frames_in_decode_order.push(frame);
        Ok(())
    })?;
    let mut sorted = frames_in_decode_order.clone();
    sorted.sort_unstable();
    if sorted.iter().copied().ne(0..sorted.len() as u64) {
        return Err(RenderError::Segment {
            path: path.to_path_buf(),
            reason: format!(
                "its {} frames are not numbered 0.. at {fps} fps; it was encoded at another rate or is damaged",
                sorted.len()
            ),
        });
    }
    let reorder_depth = frames_in_decode_order
        .iter()
        .enumerate()
        .map(|(position, &frame)| (position as u64).saturating_sub(frame))
        .max()
        .unwrap_or(0);
    Ok(SegmentLayout {
        stream: shape,
        frames: sorted.len() as u64,
        reorder_depth,
    })
}

/// Feeds each video packet of the segment at `path` to `write` with its frame number and
/// decode position; returns how many there were.
fn copy_segment(
    path: &Path,
    fps: u32,
    mut write: impl FnMut(&mut Packet, u64, u64) -> Result<(), RenderError>,
) -> Result<u64, RenderError> {
    let (mut input, index) = open_segment(path)?;
    let mut position = 0;
    read_frame_numbers(&mut input, index, fps, path, |packet, frame| {
        write(packet, frame, position)?;
        position += 1;
        Ok(())
    })?;
    Ok(position)
}

fn open_segment(path: &Path) -> Result<(ffmpeg::format::context::Input, usize), RenderError> {
    let fail = |reason: String| RenderError::Segment {
        path: path.to_path_buf(),
        reason,
    };
    let input = ffmpeg::format::input(&ffmpeg_url(path)?).map_err(|e| fail(e.to_string()))?;
    let index = input
        .streams()
        .best(media::Type::Video)
        .map(|s| s.index())
        .ok_or_else(|| fail("it has no video stream".to_string()))?;
    Ok((input, index))
}

/// Reads the video packets of `input` in decode order, passing each with its frame number.
fn read_frame_numbers(
    input: &mut ffmpeg::format::context::Input,
    index: usize,
    fps: u32,
    path: &Path,
    mut each: impl FnMut(&mut Packet, u64) -> Result<(), RenderError>,
) -> Result<(), RenderError> {
    let fail = |reason: String| RenderError::Segment {
        path: path.to_path_buf(),
        reason,
    };
    let time_base = input
        .stream(index)
        .map(|s| s.time_base())
        .ok_or_else(|| fail("its video stream vanished".to_string()))?;
    let mut packet = Packet::empty();
    loop {
        match packet.read(input) {
            Ok(()) if packet.stream() != index => continue,
            Ok(()) => {}
            Err(ffmpeg::Error::Eof) => return Ok(()),
            Err(e) => return Err(fail(e.to_string())),
        }
        let pts = packet
            .pts()
            .ok_or_else(|| fail("a packet has no timestamp".to_string()))?;
        // pts * tb * fps, rounded to the nearest frame.
        let scaled = i128::from(pts) * i128::from(time_base.numerator()) * i128::from(fps);
        let den = i128::from(time_base.denominator());
        let frame = (2 * scaled + den).div_euclid(2 * den);
        let frame = u64::try_from(frame)
            .map_err(|_| fail(format!("a packet has a negative timestamp ({pts})")))?;
        each(&mut packet, frame)?;
    }
}

/// The parts of a video stream that must be identical for segments to be joined.
#[derive(Clone)]
struct StreamShape {
    parameters: codec::Parameters,
    id: codec::Id,
    width: i32,
    height: i32,
    format: i32,
    /// The codec's global headers (SPS/PPS): the MP4 stores one copy for all segments.
    extradata: Vec<u8>,
}

impl StreamShape {
    fn of(
        input: &ffmpeg::format::context::Input,
        index: usize,
        path: &Path,
    ) -> Result<StreamShape, RenderError> {
        let parameters =
            input
                .stream(index)
                .map(|s| s.parameters())
                .ok_or_else(|| RenderError::Segment {
                    path: path.to_path_buf(),
                    reason: "its video stream vanished".to_string(),
                })?;
        // SAFETY: `parameters` points at the live stream's codec parameters; extradata is
        // `extradata_size` bytes long whenever it is non-null.
        let (width, height, format, extradata) = unsafe {
            let raw = &*parameters.as_ptr();
            let extradata = match (raw.extradata.is_null(), usize::try_from(raw.extradata_size)) {
                (false, Ok(len)) => std::slice::from_raw_parts(raw.extradata, len).to_vec(),
                _ => Vec::new(),
            };
            (raw.width, raw.height, raw.format, extradata)
        };
        Ok(StreamShape {
            id: parameters.id(),
            parameters: parameters.clone(),
            width,
            height,
            format,
            extradata,
        })
    }

    /// Why `other` cannot follow this stream, if it cannot.
    fn mismatch(&self, other: &StreamShape) -> Option<String> {
        if self.id != other.id {
            return Some(format!("it is {:?}, another codec", other.id));
        }
        if (self.width, self.height) != (other.width, other.height) {
            return Some(format!(
                "it is {}x{}, another size",
                other.width, other.height
            ));
        }
        if self.format != other.format {
            return Some("it has another pixel format".to_string());
        }
        if self.extradata != other.extradata {
            return Some("it was encoded with other settings".to_string());
        }
        None
    }

    /// The parameters for the MP4 stream: MP4 picks its own codec tag, except that HEVC is
    /// tagged `hvc1` (headers out of band), which Apple players require.
    fn for_mp4(&self) -> codec::Parameters {
        let mut parameters = self.parameters.clone();
        let tag = match self.id {
            codec::Id::HEVC => u32::from_le_bytes(*b"hvc1"),
            _ => 0,
        };
        // SAFETY: `parameters` is an owned copy; codec_tag is a plain integer field.
        unsafe { (*parameters.as_mut_ptr()).codec_tag = tag };
        parameters
    }
}

#[cfg(test)]
#[path = "assemble_tests.rs"]
mod tests;
