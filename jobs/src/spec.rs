//! The resolved job: what a job file means once its template is merged in, its defaults are
//! filled and every check has passed.
//!
//! A `JobSpec` is what the daemon writes to `state/jobs/<id>/job.yaml` and what the worker
//! renders from. Every field is present, so the file on disk says exactly what will run, with
//! no dependence on the template or the defaults of the version that accepted it. The defaults
//! live here, in the `Default` impls, and nowhere else.

mod model;
mod scalars;

use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};
use std::path::{Path, PathBuf};

pub use model::{ModelRef, BUILTIN_PREFIX};
pub use scalars::{
    CheckpointEvery, MemoryModeSetting, NumClip, Offload, PrecisionSetting, Size, SizeParseError,
};

/// One render job, fully resolved.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct JobSpec {
    pub name: String,
    /// The template the job file named, kept for the record; its values are already merged.
    #[serde(default)]
    pub template: Option<String>,
    /// Higher runs first.
    pub priority: i32,
    pub inputs: Inputs,
    pub render: RenderSettings,
    pub engine: EngineSpec,
    pub output: OutputSpec,
    pub notify: NotifySpec,
    pub retry: RetryPolicy,
}

/// What the video is made from. Paths are the canonical paths that were checked against the
/// allowed roots, so a symlink swapped after intake cannot redirect the job.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Inputs {
    /// The reference portrait.
    pub image: PathBuf,
    /// The speech track that drives the mouth and sets the length.
    pub audio: PathBuf,
    pub prompt: String,
}

/// The diffusion settings, named after the Live Avatar options they mirror.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RenderSettings {
    pub size: Size,
    pub num_clip: NumClip,
    /// Frames per clip; memory grows with it.
    pub infer_frames: u32,
    pub sample_steps: u32,
    pub guide_scale: f32,
    pub seed: u64,
    /// Decode and encode each clip as soon as it is denoised, keeping memory flat.
    pub online_decode: bool,
    pub offload: Offload,
    /// Frames per second of the output video.
    pub fps: u32,
    /// How often the carry is checkpointed; changes what a crash costs, never the pixels.
    /// Absent in job directories written before it existed, which checkpoint every clip.
    #[serde(default)]
    pub checkpoint_every: CheckpointEvery,
    /// Where a release job keeps its DiT blocks; never changes the pixels, so it is left out
    /// of the render fingerprint and a resume may run in another mode.
    #[serde(default)]
    pub memory_mode: MemoryModeSetting,
    /// The DiT's weight precision for a release job.
    #[serde(default)]
    pub precision: PrecisionSetting,
}

impl Default for RenderSettings {
    fn default() -> RenderSettings {
        RenderSettings {
            size: Size::new(720, 400),
            num_clip: NumClip::Auto,
            infer_frames: 48,
            sample_steps: 4,
            guide_scale: 0.0,
            seed: 42,
            online_decode: true,
            offload: Offload::Auto,
            fps: 16,
            checkpoint_every: CheckpointEvery::default(),
            memory_mode: MemoryModeSetting::Auto,
            precision: PrecisionSetting::Auto,
        }
    }
}

/// The frame rate a job for a Live Avatar release gets when it leaves `render.fps` out.
pub const LIVE_AVATAR_FPS: u32 = 25;

/// Which engine renders the clips, and with which weights.
///
/// `kind`, `name` and `model` are the job file's words (the render fingerprint and the
/// checkpoint's records use them); `model_ref` is what they were resolved to at intake, and
/// what every later decision reads. A `job.yaml` written before `model_ref` existed gets it
/// resolved when read.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(from = "EngineSpecFile")]
pub struct EngineSpec {
    pub kind: EngineKind,
    /// For `kind: command`: the name of an engine the operator declared in the daemon config
    /// (`engines:`). A job names an engine, never a program.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub name: Option<String>,
    /// `builtin:<name>` for the seeded demo models, or an absolute checkpoint directory. For a
    /// command engine, whatever that engine understands (a directory or a model id); empty
    /// means the engine's own default.
    pub model: String,
    /// A named engine profile (memory/speed trade-offs), when the operator defines some.
    #[serde(default)]
    pub profile: Option<String>,
    /// What `kind`, `name` and `model` refer to ([`ModelRef::resolve`]).
    pub model_ref: ModelRef,
}

impl EngineSpec {
    /// An engine spec from the job file's words, resolved.
    pub fn new(
        kind: EngineKind,
        name: Option<String>,
        model: String,
        profile: Option<String>,
    ) -> EngineSpec {
        let model_ref = ModelRef::resolve(kind, name.as_deref(), &model);
        EngineSpec {
            kind,
            name,
            model,
            profile,
            model_ref,
        }
    }
}

/// [`EngineSpec`] as `job.yaml` holds it, `model_ref` absent in files written before it
/// existed.
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct EngineSpecFile {
    kind: EngineKind,
    #[serde(default)]
    name: Option<String>,
    model: String,
    #[serde(default)]
    profile: Option<String>,
    #[serde(default)]
    model_ref: Option<ModelRef>,
}

impl From<EngineSpecFile> for EngineSpec {
    fn from(file: EngineSpecFile) -> EngineSpec {
        match file.model_ref {
            Some(model_ref) => EngineSpec {
                kind: file.kind,
                name: file.name,
                model: file.model,
                profile: file.profile,
                model_ref,
            },
            None => EngineSpec::new(file.kind, file.name, file.model, file.profile),
        }
    }
}

impl Default for EngineSpec {
    fn default() -> EngineSpec {
        EngineSpec::new(EngineKind::Native, None, "builtin:tiny".to_string(), None)
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum EngineKind {
    /// The Burn model inside the worker.
    Native,
    /// An external program driven by the worker.
    Command,
}

/// Where the finished video goes and how it is encoded.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct OutputSpec {
    pub path: PathBuf,
    pub codec: Codec,
    /// Constant rate factor: lower is better quality and larger files.
    pub crf: u8,
    /// Whether a file already at `path` may be replaced. Without it, intake refuses a job
    /// whose output exists, and a file that appears at `path` while the job renders is kept:
    /// the video then goes to `<name>.<job id>.<ext>` beside it.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub overwrite: bool,
}

/// Default encoding settings, for an output whose path the job file gives.
pub const DEFAULT_CODEC: Codec = Codec::H264;
/// 18 is visually lossless for most content with x264 and x265.
pub const DEFAULT_CRF: u8 = 18;

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Codec {
    H264,
    Hevc,
}

/// Who hears about the job, and when.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct NotifySpec {
    pub email: Vec<String>,
    pub webhook: Vec<WebhookSpec>,
    pub on: Vec<NoticeEvent>,
    /// Send a `progress` notice every this many clips (when `on` has `progress`).
    #[serde(default)]
    pub progress_every: Option<u32>,
}

impl Default for NotifySpec {
    fn default() -> NotifySpec {
        NotifySpec {
            email: Vec::new(),
            webhook: Vec::new(),
            on: vec![NoticeEvent::Done, NoticeEvent::Failed],
            progress_every: None,
        }
    }
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct WebhookSpec {
    pub url: String,
    /// The environment variable (of the daemon) that holds the signing secret; the secret
    /// itself never appears in a job file.
    #[serde(default)]
    pub secret_env: Option<String>,
    #[serde(default)]
    pub format: WebhookFormat,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum WebhookFormat {
    /// Our own JSON body.
    #[default]
    Json,
    /// A Slack incoming-webhook message.
    Slack,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum NoticeEvent {
    Started,
    Progress,
    Done,
    Failed,
    Cancelled,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RetryPolicy {
    /// Attempts in a row that end without making a new clip durable, the first one included;
    /// an attempt that checkpoints a new clip starts the count again.
    pub max_attempts: u32,
    /// Evictions in a row that end without making a new clip durable: attempts ended by a
    /// death the job did not cause (a SIGKILL or SIGTERM the daemon did not send, with no
    /// sign of an OOM kill, or the daemon's own restart). They do not count against
    /// `max_attempts`; an attempt that checkpoints a new clip starts this count again too.
    #[serde(default = "default_max_evictions")]
    pub max_evictions: u32,
}

fn default_max_evictions() -> u32 {
    RetryPolicy::default().max_evictions
}

impl Default for RetryPolicy {
    fn default() -> RetryPolicy {
        RetryPolicy {
            max_attempts: 3,
            max_evictions: 50,
        }
    }
}

impl JobSpec {
    /// The resolved job as YAML, in the form `serde_yaml::from_str::<JobSpec>` reads back.
    ///
    /// # Panics
    /// If a path is not valid UTF-8. Specs made by the parser never have such paths (it
    /// rejects them), so this only catches a spec built by hand with one.
    pub fn to_yaml(&self) -> String {
        serde_yaml::to_string(self)
            .expect("a JobSpec serializes to YAML when its paths are UTF-8, as parsed specs are")
    }

    /// A hex SHA-256 of everything that decides the rendered pixels: input paths and prompt,
    /// the render settings (all but `online_decode` and `checkpoint_every`, which change memory
    /// and what a crash costs, not pixels), the
    /// engine kind and model. Name, priority, notices, retries and the output encoding are left
    /// out, so editing them keeps a checkpoint usable; changing anything else invalidates it.
    ///
    /// Each field goes in as a name and a length-prefixed value, so no two different specs can
    /// produce the same byte stream. The leading version tag changes if the recipe ever does.
    pub fn render_fingerprint(&self) -> String {
        let mut hash = Sha256::new();
        let mut put = |name: &str, value: &[u8]| {
            hash.update(name.as_bytes());
            hash.update((value.len() as u64).to_le_bytes());
            hash.update(value);
        };
        let render = &self.render;
        put("fingerprint", b"reelspool-render-v1");
        put("inputs.image", path_bytes(&self.inputs.image));
        put("inputs.audio", path_bytes(&self.inputs.audio));
        put("inputs.prompt", self.inputs.prompt.as_bytes());
        put("render.size", render.size.to_string().as_bytes());
        let num_clip = match render.num_clip {
            NumClip::Auto => "auto".to_string(),
            NumClip::Count(n) => n.to_string(),
        };
        put("render.num_clip", num_clip.as_bytes());
        put("render.infer_frames", &render.infer_frames.to_le_bytes());
        put("render.sample_steps", &render.sample_steps.to_le_bytes());
        put(
            "render.guide_scale",
            &render.guide_scale.to_bits().to_le_bytes(),
        );
        put("render.seed", &render.seed.to_le_bytes());
        let offload: &[u8] = match render.offload {
            Offload::Auto => b"auto",
            Offload::On => b"on",
            Offload::Off => b"off",
        };
        put("render.offload", offload);
        put("render.fps", &render.fps.to_le_bytes());
        // fp8 weights change the pixels; left out when `auto`, so older fingerprints hold.
        if render.precision != PrecisionSetting::Auto {
            put("render.precision", render.precision.as_str().as_bytes());
        }
        let kind: &[u8] = match self.engine.kind {
            EngineKind::Native => b"native",
            EngineKind::Command => b"command",
        };
        put("engine.kind", kind);
        // Only present for command engines, so native fingerprints are unchanged.
        if let Some(name) = &self.engine.name {
            put("engine.name", name.as_bytes());
        }
        put("engine.model", self.engine.model.as_bytes());
        hex(&hash.finalize())
    }
}

fn path_bytes(path: &Path) -> &[u8] {
    use std::os::unix::ffi::OsStrExt;
    path.as_os_str().as_bytes()
}

fn hex(bytes: &[u8]) -> String {
    use std::fmt::Write;
    bytes
        .iter()
        .fold(String::with_capacity(bytes.len() * 2), |mut out, b| {
            // Writing into a String cannot fail.
            let _ = write!(out, "{b:02x}");
            out
        })
}

#[cfg(test)]
mod tests;
