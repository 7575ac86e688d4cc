//! The one error type of the render crate: engines, command engines, checkpoints and media.
//!
//! Every variant says what went wrong with which file, engine or setting, and what to change:
//! these messages travel to a job's `error` event and its failure notice, where the reader is
//! an operator looking at a job, not someone stepping through this code. The variants are
//! grouped by the part of the worker that raises them.

use std::path::{Path, PathBuf};

use crate::engine::external::protocol::{ErrorKind, PROTOCOL_VERSION};
use crate::engine::{ClipIndex, BUILTIN_TINY};

/// Everything that can go wrong on the worker side.
#[derive(Debug, thiserror::Error)]
pub enum RenderError {
    // --- native engines: loading a model and rendering clips -----------------------------
    #[error("unknown built-in model `{name}`: the only built-in model is `{BUILTIN_TINY}`")]
    UnknownBuiltin { name: String },
    #[error(
        "model `{model}` is neither `{BUILTIN_TINY}` nor a readable checkpoint directory \
         ({path}: {reason}); set `engine.model` to `{BUILTIN_TINY}`, to a directory holding \
         config.json and model.safetensors, or to a Live Avatar release directory (holding \
         Wan2.2-S2V-14B/config.json)"
    )]
    ModelNotFound {
        model: String,
        path: PathBuf,
        reason: String,
    },
    #[error("model file {path} is invalid: {detail}")]
    ModelFormat { path: PathBuf, detail: String },
    #[error("cannot write model cache file {path}: {source}; check that the model cache directory is writable")]
    CacheWrite {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("unsupported render settings: {detail}")]
    UnsupportedSettings { detail: String },
    #[error("bad conditioning input: {detail}")]
    BadConditioning { detail: String },
    #[error("carry is not a valid reelspool carry: {detail}")]
    CarryFormat { detail: String },
    #[error("carry does not fit this job: {detail}")]
    CarryMismatch { detail: String },
    #[error("cannot write the carry: {source}")]
    CarryWrite {
        #[source]
        source: std::io::Error,
    },
    #[error("latents do not fit this engine: {detail}")]
    LatentsMismatch { detail: String },
    #[error("compute backend failed: {detail}")]
    Backend { detail: String },

    // --- command engines: the program and its carry directory ----------------------------
    #[error("engine `{engine}`: cannot start {program}: {source}")]
    Spawn {
        engine: String,
        program: String,
        #[source]
        source: std::io::Error,
    },
    #[error(
        "engine `{engine}` exited during {during} ({status}); its log is in the job's worker log"
    )]
    Exited {
        engine: String,
        during: String,
        status: String,
    },
    #[error("engine `{engine}` sent nothing for {secs} s during {during} (heartbeat_timeout_secs); killed it")]
    Silent {
        engine: String,
        during: String,
        secs: u64,
    },
    #[error("engine `{engine}` broke the protocol during {during}: {detail}; line: {line:?} (logs belong on stderr)")]
    Malformed {
        engine: String,
        during: String,
        line: String,
        detail: String,
    },
    #[error("engine `{engine}` speaks protocol {got}; this worker speaks {PROTOCOL_VERSION}")]
    Version { engine: String, got: u32 },
    #[error("engine `{engine}` reported {kind} during {during}: {message}")]
    Reported {
        engine: String,
        during: String,
        kind: ErrorKind,
        message: String,
    },
    #[error("engine `{engine}`: clip {clip}: {detail}")]
    Frames {
        engine: String,
        clip: u32,
        detail: String,
    },
    #[error("engine `{engine}`: cannot write to it: {source}")]
    Pipe {
        engine: String,
        #[source]
        source: std::io::Error,
    },
    #[error("{path} in the engine's carry is not a regular file or directory; a carry holds plain files only")]
    NotPlain { path: PathBuf },
    #[error("packed engine carry is invalid: {detail}")]
    PackedCarryFormat { detail: String },

    // --- checkpoints ---------------------------------------------------------------------
    #[error("cannot serialise the carry for {clip}: {detail}")]
    CheckpointCarry { clip: ClipIndex, detail: String },
    #[error("cannot checkpoint {clip}: {detail}")]
    OutOfOrder { clip: ClipIndex, detail: String },
    #[error(
        "no space for the checkpoint of {clip}: its carry needs {needed} bytes in {dir}, which has \
         {free} free; the previous checkpoint is kept"
    )]
    NoSpace {
        clip: ClipIndex,
        dir: PathBuf,
        needed: u64,
        free: u64,
    },

    // --- media: decoding inputs, encoding segments, assembling the video -----------------
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

impl RenderError {
    /// An I/O error as [`RenderError::Io`], naming what was done to which path.
    pub(crate) fn io(action: &'static str, path: &Path) -> impl FnOnce(std::io::Error) -> Self {
        let path = path.to_path_buf();
        move |source| RenderError::Io {
            action,
            path,
            source,
        }
    }

    /// A command engine's own error kind, when it reported one.
    pub fn reported_kind(&self) -> Option<ErrorKind> {
        match self {
            RenderError::Reported { kind, .. } => Some(*kind),
            _ => None,
        }
    }

    /// Whether another attempt may succeed: a command engine's process died or hung (a
    /// crash, the kernel's OOM killer, a stuck driver), as opposed to one that answered
    /// wrongly.
    pub fn may_be_transient(&self) -> bool {
        matches!(
            self,
            RenderError::Exited { .. } | RenderError::Silent { .. } | RenderError::Pipe { .. }
        )
    }

    /// Whether the file system was full (checked beforehand, or ENOSPC/EDQUOT while
    /// writing).
    pub fn is_out_of_space(&self) -> bool {
        match self {
            RenderError::NoSpace { .. } => true,
            RenderError::Io { source, .. } => {
                matches!(source.raw_os_error(), Some(libc::ENOSPC | libc::EDQUOT))
            }
            _ => false,
        }
    }
}
