//! What can go wrong with media, phrased for the person who has to fix it.
//!
//! Every variant names the file it is about and ends with what to do, because these messages
//! travel all the way to a job's `error` event and its failure notice: the reader is an
//! operator looking at a job, not someone stepping through this code.

use std::path::PathBuf;

/// An error reading, encoding or writing media.
#[derive(Debug, thiserror::Error)]
pub enum MediaError {
    /// FFmpeg's libraries could not be initialised at all.
    #[error(
        "cannot initialise FFmpeg: {reason}; check that the FFmpeg shared libraries are installed"
    )]
    Init { reason: String },

    /// FFmpeg takes file names as C strings: a name that is not UTF-8 or holds a NUL byte
    /// cannot be handed to it.
    #[error(
        "cannot use {path:?}: FFmpeg needs a UTF-8 file name without NUL bytes; rename the file"
    )]
    UnusablePath { path: PathBuf },

    /// The reference image is missing, empty, corrupt or of a kind FFmpeg cannot decode.
    #[error("cannot decode {} as an image: {reason}; convert it to PNG or JPEG", path.display())]
    ImageDecode { path: PathBuf, reason: String },

    /// The requested reference size is unusable (zero).
    #[error("cannot fit {} into {width}x{height}: the size must be at least 1x1; fix render.size", path.display())]
    ImageSize {
        path: PathBuf,
        width: u32,
        height: u32,
    },

    /// The file opened but holds no audio stream (a silent video, an image, ...).
    #[error("{} has no audio stream; give a speech recording (WAV, FLAC, MP3, M4A, OGG)", path.display())]
    NoAudioStream { path: PathBuf },

    /// The audio is missing, corrupt, or decodes to nothing.
    #[error("cannot decode {} as audio: {reason}; convert it to WAV or FLAC", path.display())]
    AudioDecode { path: PathBuf, reason: String },

    /// Encoder settings that no encoder run could satisfy.
    #[error("cannot encode {}: {reason}", path.display())]
    EncodeSettings { path: PathBuf, reason: String },

    /// This FFmpeg build lacks the encoder the job asks for.
    #[error("this FFmpeg has no {encoder} encoder (needed for {}); install an FFmpeg built with it or choose another codec", path.display())]
    EncoderMissing {
        path: PathBuf,
        encoder: &'static str,
    },

    /// A pushed frame does not have the size the encoder was created for.
    #[error("frame {index} for {} holds {got} bytes, expected {expected} (RGB24 at the encoder's width x height); this is a bug in the engine", path.display())]
    FrameSize {
        path: PathBuf,
        index: u64,
        expected: usize,
        got: usize,
    },

    /// Encoding or muxing a file failed part way (full disk, encoder failure, ...).
    #[error("cannot write {}: {reason}; check free space and permissions, then retry the job", path.display())]
    Write { path: PathBuf, reason: String },

    /// A clip segment cannot be read back, or does not fit with the others.
    #[error("segment {} is unusable: {reason}; delete it so its clip is rendered again", path.display())]
    Segment { path: PathBuf, reason: String },

    /// A finished video cannot be decoded back (used to verify outputs).
    #[error("cannot decode {} as video: {reason}; the file is damaged, render the job again", path.display())]
    VideoDecode { path: PathBuf, reason: String },

    /// The segments do not add up to the video the plan describes.
    #[error("cannot assemble {}: {reason}", path.display())]
    Plan { path: PathBuf, reason: String },

    /// A plain file-system operation failed.
    #[error("cannot {action} {}: {source}", path.display())]
    Io {
        action: &'static str,
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
}
