//! Media in and out through FFmpeg's libraries (via `ffmpeg-next`).
//!
//! What comes in: the job's reference image ([`load_reference_image`]) and speech track
//! ([`load_audio`], [`probe_audio_duration`]). What goes out: one Matroska segment per clip,
//! written while the engine works ([`ClipEncoder`]), and at the end one MP4 made of those
//! segments plus the original audio ([`assemble_output`]).
//!
//! Two properties shape this module:
//! - **Crash safety.** Every file is written under a temporary name beside its final one and
//!   renamed into place after an fsync, so a worker killed mid-clip never leaves a half
//!   `k.mkv` that a resumed job would mistake for a finished clip.
//! - **Determinism.** A resumed job must produce the same video as an uninterrupted one, so
//!   the same frames must always encode to the same bytes: fixed encoder thread counts and
//!   FFmpeg's bit-exact mode, which leaves out random UIDs, dates and version strings.
//!
//! All of it is blocking work; it runs in the worker process, never on an async runtime.

mod aac;
mod assemble;
mod atomic;
mod audio;
mod audio_source;
mod digest;
mod encode;
mod image;
mod orientation;
mod preview;
mod scale;
#[cfg(test)]
mod test_support;
mod thumbnail;

use std::path::Path;
use std::sync::OnceLock;

pub use assemble::{
    assemble_output, assemble_output_into, assemble_output_keeping, AssemblePlan, OutputInfo,
    OutputTarget,
};
pub use atomic::KeepExisting;
pub use audio::{load_audio, probe_audio_duration, AudioTrack, AUDIO_SAMPLE_RATE_HZ};
pub use digest::decode_video_frame_digests;
pub use encode::{ClipEncoder, EncodeSettings, SegmentInfo, VideoCodec, DEFAULT_PRESET};
pub use image::{check_image, load_reference_image};
pub use preview::{frame_jpeg, remux_to_mpegts, TsSegment, REORDER_ALLOWANCE_FRAMES};
pub use thumbnail::{thumbnail_size, write_thumbnail, THUMBNAIL_MAX_SIDE};

use ffmpeg_next as ffmpeg;

use crate::RenderError;

/// Initialises FFmpeg once per process and lowers its log level to warnings.
///
/// FFmpeg logs straight to stderr, which in a worker is the daemon's log; at its default
/// level it prints stream details for every file opened, drowning the lines that matter.
fn ensure_init() -> Result<(), RenderError> {
    static INIT: OnceLock<Result<(), String>> = OnceLock::new();
    INIT.get_or_init(|| {
        ffmpeg::init().map_err(|e| e.to_string())?;
        ffmpeg::util::log::set_level(ffmpeg::util::log::Level::Warning);
        Ok(())
    })
    .clone()
    .map_err(|reason| RenderError::Init { reason })
}

/// Encoder flags for a stream of `output`: bit-exact always (a resumed job must write the same
/// bytes), plus global headers where the container wants them (MP4, Matroska).
fn encoder_flags(output: &ffmpeg::format::context::Output) -> ffmpeg::codec::Flags {
    let mut flags = ffmpeg::codec::Flags::BITEXACT;
    if output
        .format()
        .flags()
        .contains(ffmpeg::format::Flags::GLOBAL_HEADER)
    {
        flags |= ffmpeg::codec::Flags::GLOBAL_HEADER;
    }
    flags
}

/// Takes the next packet the encoder has ready: `Ok(true)` when `packet` holds one, `Ok(false)`
/// when the encoder needs more input (EAGAIN) or is drained (EOF).
fn receive_ready_packet(
    encoder: &mut ffmpeg::encoder::Encoder,
    packet: &mut ffmpeg::Packet,
) -> Result<bool, ffmpeg::Error> {
    match encoder.receive_packet(packet) {
        Ok(()) => Ok(true),
        Err(ffmpeg::Error::Eof) => Ok(false),
        Err(ffmpeg::Error::Other { errno }) if errno == ffmpeg::util::error::EAGAIN => Ok(false),
        Err(e) => Err(e),
    }
}

/// Opens an audio file for reading, refusing an empty file with a message that says so.
fn open_audio_input(path: &Path) -> Result<ffmpeg::format::context::Input, RenderError> {
    ensure_init()?;
    let fail = |reason: String| RenderError::AudioDecode {
        path: path.to_path_buf(),
        reason,
    };
    if let Ok(meta) = std::fs::metadata(path) {
        if meta.len() == 0 {
            return Err(fail("the file is empty".to_string()));
        }
    }
    ffmpeg::format::input(&ffmpeg_url(path)?).map_err(|e| fail(e.to_string()))
}

/// The name under which FFmpeg should open `path`.
///
/// FFmpeg reads a name's prefix up to a colon as a protocol (`http:`, `concat:`, `pipe:`),
/// so a relative file called `a:b.wav` would not be read as a file at all; the explicit
/// `file:` protocol rules that out. `ffmpeg-next` panics on names that are not UTF-8 or hold
/// NUL bytes, so those are refused here with an error instead.
fn ffmpeg_url(path: &Path) -> Result<String, RenderError> {
    match path.to_str() {
        Some(name) if !name.contains('\0') => Ok(format!("file:{name}")),
        _ => Err(RenderError::UnusablePath {
            path: path.to_path_buf(),
        }),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::path::PathBuf;

    #[test]
    fn ffmpeg_url_forces_the_file_protocol_for_names_with_colons() {
        let url = ffmpeg_url(Path::new("concat:a.wav|b.wav")).unwrap();
        assert_eq!(url, "file:concat:a.wav|b.wav");
    }

    #[test]
    fn ffmpeg_url_refuses_non_utf8_names() {
        use std::os::unix::ffi::OsStrExt;
        let path = PathBuf::from(std::ffi::OsStr::from_bytes(b"/tmp/\xff.wav"));
        let err = ffmpeg_url(&path).unwrap_err();
        assert!(matches!(err, RenderError::UnusablePath { .. }), "{err}");
    }
}
