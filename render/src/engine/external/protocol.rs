//! The JSON-lines messages between the worker and a command engine (docs/engine-protocol.md).
//!
//! One JSON object per line, UTF-8, `\n`-terminated, tagged by `type`. The worker writes to the
//! engine's stdin, the engine answers on its stdout; the engine's stderr is its log.

use std::path::PathBuf;

use serde::{Deserialize, Serialize};

/// The protocol version this worker speaks. An engine's `hello` must name it.
pub const PROTOCOL_VERSION: u32 = 1;

/// Render settings as the engine sees them.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct LoadSettings {
    pub width: u32,
    pub height: u32,
    /// Frames every `render_clip` must produce.
    pub infer_frames: u32,
    pub sample_steps: u32,
    pub guide_scale: f32,
    pub seed: u64,
    pub fps: u32,
    /// Clips the job has in all.
    pub clips: u32,
}

/// The job's inputs: the files as the user named them, and ready-to-use forms the worker
/// prepared so an engine needs no image or audio decoder of its own.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct LoadInputs {
    pub image: PathBuf,
    pub audio: PathBuf,
    pub prompt: String,
    /// The reference image scaled and cropped to `width`×`height`, raw RGB24.
    pub reference_rgb: PathBuf,
    /// The whole speech track, mono, 16 kHz, little-endian `f32` samples.
    pub audio_f32le_16k: PathBuf,
    /// Samples in `audio_f32le_16k`.
    pub audio_samples: u64,
}

/// Where the engine runs.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct LoadDevice {
    /// `CUDA_VISIBLE_DEVICES` as the worker got it (a GPU UUID), `None` on a CPU slot.
    pub cuda_visible_devices: Option<String>,
    /// The lease asks the engine to offload weights to host memory (a retry after `oom`).
    pub offload: bool,
}

/// A message from the worker to the engine.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "type", rename_all = "snake_case")]
pub enum Request {
    Load {
        protocol: u32,
        /// The job's `engine.model`, as written (empty: the engine's default).
        model: String,
        settings: LoadSettings,
        inputs: LoadInputs,
        device: LoadDevice,
        /// The engine's scratch directory inside the job; it survives restarts of the job.
        scratch_dir: PathBuf,
        /// The engine is killed after this long without a line from it (§5 of the protocol).
        heartbeat_timeout_secs: u64,
    },
    RenderClip {
        index: u32,
        /// Frames to write (always `infer_frames`; the worker trims the last clip).
        frames: u32,
        /// The previous clip's carry; `None` for clip 0.
        carry_in: Option<PathBuf>,
        /// An empty directory for this clip's carry.
        carry_out: PathBuf,
        /// Where to write the frames: `frames` × `width` × `height` × 3 bytes of RGB24.
        frames_path: PathBuf,
    },
    Shutdown,
}

impl Request {
    pub fn to_line(&self) -> String {
        let mut line = serde_json::to_string(self)
            .unwrap_or_else(|e| panic!("a Request always serialises to JSON: {e}"));
        line.push('\n');
        line
    }

    /// The message type, for error messages.
    pub fn name(&self) -> &'static str {
        match self {
            Request::Load { .. } => "load",
            Request::RenderClip { .. } => "render_clip",
            Request::Shutdown => "shutdown",
        }
    }
}

/// The error kinds an engine may report.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ErrorKind {
    /// Out of (GPU) memory: the daemon retries with offload.
    Oom,
    /// The job's inputs or settings cannot work with this engine: no retry.
    BadInput,
    /// Anything else the engine gives up on.
    Internal,
}

impl std::fmt::Display for ErrorKind {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            ErrorKind::Oom => "oom",
            ErrorKind::BadInput => "bad_input",
            ErrorKind::Internal => "internal",
        })
    }
}

/// A message from the engine to the worker.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "type", rename_all = "snake_case", deny_unknown_fields)]
pub enum Reply {
    Hello {
        protocol: u32,
        #[serde(default)]
        engine: Option<String>,
        #[serde(default)]
        capabilities: Vec<String>,
    },
    /// The request succeeded. `frames` answers `render_clip`.
    Ok {
        #[serde(default)]
        frames: Option<u32>,
    },
    Error {
        kind: ErrorKind,
        message: String,
    },
    /// Alive, nothing to report.
    Heartbeat,
    /// Alive, and this far through the current request.
    Progress {
        #[serde(default)]
        step: Option<u64>,
        #[serde(default)]
        total: Option<u64>,
        #[serde(default)]
        message: Option<String>,
    },
}

impl Reply {
    /// Parses one line; the error says what is wrong with it.
    pub fn from_line(line: &str) -> Result<Reply, String> {
        serde_json::from_str(line.trim_end_matches(['\n', '\r'])).map_err(|e| e.to_string())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn render_clip_for_clip_zero_has_a_null_carry_in() {
        let line = Request::RenderClip {
            index: 0,
            frames: 8,
            carry_in: None,
            carry_out: "/w/out".into(),
            frames_path: "/w/f.rgb".into(),
        }
        .to_line();
        let value: serde_json::Value = serde_json::from_str(&line).expect("JSON");
        assert_eq!(value["type"], "render_clip");
        assert!(value["carry_in"].is_null());
        assert!(line.ends_with('\n') && !line.trim_end().contains('\n'));
    }

    #[test]
    fn replies_parse_with_and_without_optional_fields() {
        assert_eq!(
            Reply::from_line(r#"{"type":"ok"}"#),
            Ok(Reply::Ok { frames: None })
        );
        assert_eq!(
            Reply::from_line(r#"{"type":"ok","frames":8}"#),
            Ok(Reply::Ok { frames: Some(8) })
        );
        assert_eq!(
            Reply::from_line(r#"{"type":"error","kind":"oom","message":"CUDA out of memory"}"#),
            Ok(Reply::Error {
                kind: ErrorKind::Oom,
                message: "CUDA out of memory".into()
            })
        );
        assert_eq!(
            Reply::from_line(r#"{"type":"heartbeat"}"#),
            Ok(Reply::Heartbeat)
        );
    }

    #[test]
    fn garbage_and_unknown_types_are_errors() {
        assert!(Reply::from_line("Loading checkpoint shards: 100%").is_err());
        assert!(Reply::from_line(r#"{"type":"done"}"#).is_err());
        assert!(Reply::from_line(r#"{"type":"error","kind":"segfault","message":"x"}"#).is_err());
        assert!(Reply::from_line(r#"{"type":"ok","frames":4,"extra":1}"#).is_err());
    }
}
