//! The job-level Live Avatar pipeline: everything a render engine needs to turn a
//! reference image, a mono 16 kHz audio track and a tokenized prompt into video, clip by
//! clip, with an exact resume from any clip boundary.
//!
//! ```text
//! LiveAvatar::load(dir)            once per process: DiT (+ LoRA merged), VAE, umT5, wav2vec2
//! check_settings(&params)          size, frames, steps: errors say what to change
//! prepare(&params, rgb, audio, ids) once per job: ref latent, motion latents, text, audio features
//! start(&ctx) -> carry             clip 0 state: sink prefilled, empty rings, fresh decode cache
//! render_clip(&ctx, carry)         -> (frames, next carry); carry.to_bytes / from_bytes between
//! ```
//!
//! Frames per clip: the causal VAE turns the first latent frame of the stream into one
//! video frame and every later latent frame into four, so clip 0 returns
//! `infer_frames - 3` frames and every later clip `infer_frames`. The audio features of
//! clip `k` are video frames `k·infer_frames .. (k+1)·infer_frames` of the track (zero rows
//! past its end, as the original pads), so the video runs 3 frames ahead of the audio
//! grid; the render side cuts the video to the audio's length.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use burn::prelude::*;
use serde_json::{json, Value};
use sha2::{Digest, Sha256};

use crate::audio::MOTION_FRAMES;
use crate::carry_io::{
    counter, file_bytes, sink_groups_json, CARRY_FORMAT, DIGEST_KEY, VAE_SLOTS_KEY,
};
use crate::causal_loop::{run_clip, Carry, CausalSettings, ClipInput};
use crate::config::S2vConfig;
use crate::error::WanError;
use crate::loader::{load_pth, load_s2v, load_safetensors, s2v_shards};
use crate::lora::{merge_lora_file, LIVE_AVATAR_ALPHA};
use crate::model::REF_FRAME_POSITION;
use crate::release::{
    CONFIG_FILE, LORA_FILE, S2V_DIR, T5_PTH, T5_SAFETENSORS, VAE_PTH, VAE_SAFETENSORS, W2V_DIR,
};
use crate::rope::RopeGroup;
use crate::sampler::FlowSchedule;
use crate::t5::{T5Config, T5Encoder};
use crate::vae::{decode_cache_shapes, DecodeCache, VaeConfig, WanVae};
use crate::wav2vec2::{
    audio_per_video_frame, load_wav2vec2_dir, Wav2Vec2Model, W2V_BIN, W2V_SAFETENSORS,
};
use crate::WanS2v;

/// Audio sample rate the pipeline takes (wav2vec2's).
pub const AUDIO_RATE: u32 = 16_000;
/// Video frames per latent frame (the VAE's temporal stride).
pub const VIDEO_FRAMES_PER_LATENT: usize = 4;
/// Pixels per latent row/column times the DiT's 2×2 patch times the frame packer's
/// coarsest 4× grid: width and height must be multiples of this.
pub const SIZE_MULTIPLE: usize = 64;
/// Shift of the flow-matching schedule (Live Avatar's `shift=3`).
pub const SAMPLE_SHIFT: f64 = 3.0;
/// Video frames the original's first clip drops (the causal VAE makes one frame of the
/// first latent frame, four of every other).
pub const FIRST_CLIP_SHORTFALL: usize = 3;
/// Length of [`CarryId::model`]: a SHA-256 in hex.
pub const MODEL_ID_LEN: usize = 64;

/// The Wan 2.1 VAE's per-channel latent mean (wan22 `vae2_1.py`).
pub const WAN21_MEAN: [f32; 16] = [
    -0.7571, -0.7089, -0.9113, 0.1075, -0.1745, 0.9653, -0.1517, 1.5508, 0.4134, -0.0715, 0.5517,
    -0.3632, -0.1922, -0.9497, 0.2503, -0.2921,
];
/// The Wan 2.1 VAE's per-channel latent standard deviation.
pub const WAN21_STD: [f32; 16] = [
    2.8184, 1.4541, 2.3275, 2.6558, 1.2196, 1.7708, 2.6052, 2.0743, 3.2687, 2.1526, 2.8652, 1.5579,
    1.6382, 1.1253, 2.8251, 1.9160,
];

fn input_err(message: impl Into<String>) -> WanError {
    WanError::Input {
        message: message.into(),
    }
}

/// The settings of one job that shape the computation.
#[derive(Debug, Clone, PartialEq)]
pub struct JobParams {
    /// Video width and height in pixels (multiples of 64).
    pub width: usize,
    pub height: usize,
    /// Video frames per clip (a multiple of `4 · frames_per_block`; 48 in the release).
    pub infer_frames: usize,
    /// Euler steps per block (4 in the release); one KV ring each.
    pub sample_steps: usize,
    /// Job seed: the noise of every clip and the pinned sink RoPE offsets derive from it.
    pub seed: u64,
    /// Video frame rate the audio features are bucketed at (25 for the release).
    pub fps: u32,
}

impl JobParams {
    /// Latent frames per clip.
    pub fn latent_frames(&self) -> usize {
        self.infer_frames / VIDEO_FRAMES_PER_LATENT
    }

    /// Latent rows and columns.
    pub fn latent_hw(&self) -> [usize; 2] {
        [self.height / 8, self.width / 8]
    }

    /// Video frames [`LiveAvatar::render_clip`] returns for clip `clip`:
    /// `infer_frames - 3` for clip 0, `infer_frames` after.
    pub fn clip_video_frames(&self, clip: u64) -> usize {
        if clip == 0 {
            self.infer_frames - FIRST_CLIP_SHORTFALL
        } else {
            self.infer_frames
        }
    }
}

/// Everything about a model directory that sizes the computation (no weights).
#[derive(Debug, Clone, PartialEq)]
pub struct LiveAvatarConfig {
    pub s2v: S2vConfig,
    pub vae: VaeConfig,
    pub t5: T5Config,
    /// Latent frames denoised together (3 in the release).
    pub frames_per_block: usize,
    /// Per-channel latent normalisation of the VAE.
    pub vae_mean: Vec<f32>,
    pub vae_std: Vec<f32>,
    /// LoRA alpha (scale `alpha / rank`): 64 for Live Avatar.
    pub lora_alpha: f64,
}

fn vae_json(v: &VaeConfig, mean: &[f32], std: &[f32]) -> Value {
    json!({
        "dim": v.dim, "z_dim": v.z_dim, "dim_mult": v.dim_mult,
        "num_res_blocks": v.num_res_blocks, "temporal_downsample": v.temporal_downsample,
        "mean": mean, "std": std,
    })
}

fn t5_json(t: &T5Config) -> Value {
    json!({
        "vocab": t.vocab, "dim": t.dim, "dim_attn": t.dim_attn, "dim_ffn": t.dim_ffn,
        "num_heads": t.num_heads, "num_layers": t.num_layers, "num_buckets": t.num_buckets,
    })
}

/// Reads fields of one JSON object with defaults, naming the file and field on errors.
struct Fields<'a> {
    obj: Option<&'a serde_json::Map<String, Value>>,
    path: &'a Path,
    prefix: &'a str,
}

impl Fields<'_> {
    fn bad(&self, name: &str, want: &str) -> WanError {
        WanError::BadConfig {
            path: self.path.to_path_buf(),
            message: format!("`{}{name}` must be {want}", self.prefix),
        }
    }

    fn get(&self, name: &str) -> Option<&Value> {
        self.obj.and_then(|o| o.get(name))
    }

    fn usize(&self, name: &str, default: usize) -> Result<usize, WanError> {
        match self.get(name) {
            None => Ok(default),
            Some(v) => v
                .as_u64()
                .map(|v| v as usize)
                .ok_or_else(|| self.bad(name, "a whole number")),
        }
    }

    fn f64(&self, name: &str, default: f64) -> Result<f64, WanError> {
        match self.get(name) {
            None => Ok(default),
            Some(v) => v.as_f64().ok_or_else(|| self.bad(name, "a number")),
        }
    }

    fn usizes(&self, name: &str, default: &[usize]) -> Result<Vec<usize>, WanError> {
        match self.get(name) {
            None => Ok(default.to_vec()),
            Some(v) => v
                .as_array()
                .and_then(|a| a.iter().map(|x| x.as_u64().map(|x| x as usize)).collect())
                .ok_or_else(|| self.bad(name, "a list of whole numbers")),
        }
    }

    fn f32s(&self, name: &str, default: &[f32]) -> Result<Vec<f32>, WanError> {
        match self.get(name) {
            None => Ok(default.to_vec()),
            Some(v) => v
                .as_array()
                .and_then(|a| a.iter().map(|x| x.as_f64().map(|x| x as f32)).collect())
                .ok_or_else(|| self.bad(name, "a list of numbers")),
        }
    }

    fn bools(&self, name: &str, default: &[bool]) -> Result<Vec<bool>, WanError> {
        match self.get(name) {
            None => Ok(default.to_vec()),
            Some(v) => v
                .as_array()
                .and_then(|a| a.iter().map(Value::as_bool).collect())
                .ok_or_else(|| self.bad(name, "a list of true/false")),
        }
    }
}

impl LiveAvatarConfig {
    /// Live Avatar as released: Wan2.2-S2V-14B, the Wan 2.1 VAE, umT5-XXL, 3 latent
    /// frames per block, LoRA alpha 64.
    pub fn release() -> Self {
        Self {
            s2v: S2vConfig::s2v_14b(),
            vae: VaeConfig::wan21(),
            t5: T5Config::umt5_xxl(),
            frames_per_block: 3,
            vae_mean: WAN21_MEAN.to_vec(),
            vae_std: WAN21_STD.to_vec(),
            lora_alpha: LIVE_AVATAR_ALPHA,
        }
    }

    /// The tiny configuration of [`crate::release::write_tiny_release`]: the parity
    /// fixtures' DiT (dim 64, 4 layers) reading 3 audio hidden states, a VAE of width 8
    /// with 16 latent channels, a 2-layer umT5 of width 32 over the full umT5 vocabulary
    /// (so real token ids fit), 1 latent frame per block (a 16-frame clip is 4 blocks).
    pub fn tiny() -> Self {
        let w2v = crate::release::tiny_wav2vec2();
        Self {
            s2v: S2vConfig {
                audio_layers: w2v.num_hidden_layers + 1,
                audio_dim: w2v.hidden_size,
                ..S2vConfig::tiny()
            },
            vae: VaeConfig {
                dim: 4,
                z_dim: 16,
                dim_mult: vec![1, 1, 1, 1],
                num_res_blocks: 1,
                temporal_downsample: vec![false, true, true],
            },
            t5: T5Config {
                vocab: T5Config::umt5_xxl().vocab,
                dim: 32,
                dim_attn: 32,
                dim_ffn: 64,
                num_heads: 4,
                num_layers: 2,
                num_buckets: 32,
            },
            frames_per_block: 1,
            vae_mean: WAN21_MEAN.to_vec(),
            vae_std: WAN21_STD.to_vec(),
            lora_alpha: 1.0,
        }
    }

    /// The `config.json` of the S2V folder: the `WanModel_S2V` keyword arguments as the
    /// release names them, plus a `reelspool` section for what the release hard-codes
    /// (absent in the release: its values are then [`LiveAvatarConfig::release`]'s).
    pub fn to_json(&self) -> Value {
        let c = &self.s2v;
        json!({
            "_class_name": "WanModel_S2V",
            "dim": c.dim, "ffn_dim": c.ffn_dim, "num_heads": c.num_heads,
            "num_layers": c.num_layers, "in_dim": c.in_dim, "out_dim": c.out_dim,
            "patch_size": c.patch_size, "text_dim": c.text_dim, "text_len": c.text_len,
            "freq_dim": c.freq_dim, "eps": c.eps, "audio_dim": c.audio_dim,
            "num_audio_token": c.num_audio_token, "audio_inject_layers": c.audio_inject_layers,
            "cond_dim": c.cond_dim,
            "reelspool": {
                "audio_layers": c.audio_layers,
                "frames_per_block": self.frames_per_block,
                "lora_alpha": self.lora_alpha,
                "vae": vae_json(&self.vae, &self.vae_mean, &self.vae_std),
                "t5": t5_json(&self.t5),
            }
        })
    }

    /// Reads `<dir>/Wan2.2-S2V-14B/config.json` (see [`LiveAvatarConfig::to_json`])
    /// without touching the weights. Missing fields take the release's values.
    pub fn from_dir(dir: &Path) -> Result<Self, WanError> {
        let path = dir.join(S2V_DIR).join(CONFIG_FILE);
        let text = std::fs::read_to_string(&path).map_err(|source| WanError::Io {
            path: path.clone(),
            source,
        })?;
        let json: Value = serde_json::from_str(&text).map_err(|e| WanError::BadConfig {
            path: path.clone(),
            message: e.to_string(),
        })?;
        let top = Fields {
            obj: json.as_object(),
            path: &path,
            prefix: "",
        };
        if top.obj.is_none() {
            return Err(WanError::BadConfig {
                path,
                message: "not a JSON object".into(),
            });
        }
        let ext = Fields {
            obj: top.get("reelspool").and_then(Value::as_object),
            path: &path,
            prefix: "reelspool.",
        };
        let vae_f = Fields {
            obj: ext.get("vae").and_then(Value::as_object),
            path: &path,
            prefix: "reelspool.vae.",
        };
        let t5_f = Fields {
            obj: ext.get("t5").and_then(Value::as_object),
            path: &path,
            prefix: "reelspool.t5.",
        };
        let r = Self::release();
        let d = &r.s2v;
        let patch = top.usizes("patch_size", &d.patch_size)?;
        let patch_size: [usize; 3] = patch
            .try_into()
            .map_err(|_| top.bad("patch_size", "three whole numbers"))?;
        let s2v = S2vConfig {
            dim: top.usize("dim", d.dim)?,
            ffn_dim: top.usize("ffn_dim", d.ffn_dim)?,
            num_heads: top.usize("num_heads", d.num_heads)?,
            num_layers: top.usize("num_layers", d.num_layers)?,
            in_dim: top.usize("in_dim", d.in_dim)?,
            out_dim: top.usize("out_dim", d.out_dim)?,
            patch_size,
            text_dim: top.usize("text_dim", d.text_dim)?,
            text_len: top.usize("text_len", d.text_len)?,
            freq_dim: top.usize("freq_dim", d.freq_dim)?,
            eps: top.f64("eps", d.eps)?,
            audio_dim: top.usize("audio_dim", d.audio_dim)?,
            audio_layers: ext.usize("audio_layers", d.audio_layers)?,
            num_audio_token: top.usize("num_audio_token", d.num_audio_token)?,
            audio_inject_layers: top.usizes("audio_inject_layers", &d.audio_inject_layers)?,
            cond_dim: top.usize("cond_dim", d.cond_dim)?,
        };
        let vae = VaeConfig {
            dim: vae_f.usize("dim", r.vae.dim)?,
            z_dim: vae_f.usize("z_dim", r.vae.z_dim)?,
            dim_mult: vae_f.usizes("dim_mult", &r.vae.dim_mult)?,
            num_res_blocks: vae_f.usize("num_res_blocks", r.vae.num_res_blocks)?,
            temporal_downsample: vae_f.bools("temporal_downsample", &r.vae.temporal_downsample)?,
        };
        let t5 = T5Config {
            vocab: t5_f.usize("vocab", r.t5.vocab)?,
            dim: t5_f.usize("dim", r.t5.dim)?,
            dim_attn: t5_f.usize("dim_attn", r.t5.dim_attn)?,
            dim_ffn: t5_f.usize("dim_ffn", r.t5.dim_ffn)?,
            num_heads: t5_f.usize("num_heads", r.t5.num_heads)?,
            num_layers: t5_f.usize("num_layers", r.t5.num_layers)?,
            num_buckets: t5_f.usize("num_buckets", r.t5.num_buckets)?,
        };
        let cfg = Self {
            s2v,
            vae,
            t5,
            frames_per_block: ext.usize("frames_per_block", r.frames_per_block)?,
            vae_mean: vae_f.f32s("mean", &r.vae_mean)?,
            vae_std: vae_f.f32s("std", &r.vae_std)?,
            lora_alpha: ext.f64("lora_alpha", r.lora_alpha)?,
        };
        cfg.validate(&path)?;
        Ok(cfg)
    }

    /// Consistency between the parts: what one produces, the next must take.
    fn validate(&self, path: &Path) -> Result<(), WanError> {
        let bad = |message: String| {
            Err(WanError::BadConfig {
                path: path.to_path_buf(),
                message,
            })
        };
        let c = &self.s2v;
        if c.num_heads == 0 || c.dim % c.num_heads != 0 || (c.dim / c.num_heads) % 2 != 0 {
            return bad(format!(
                "dim {} must split into num_heads {} heads of an even width",
                c.dim, c.num_heads
            ));
        }
        if self.vae.z_dim != c.in_dim || c.out_dim != c.in_dim || c.in_dim != 16 {
            return bad(format!(
                "the VAE's z_dim ({}), in_dim ({}) and out_dim ({}) must all be 16 (the frame packer's input)",
                self.vae.z_dim, c.in_dim, c.out_dim
            ));
        }
        if self.vae_mean.len() != self.vae.z_dim || self.vae_std.len() != self.vae.z_dim {
            return bad(format!(
                "the VAE mean and std need {} values each (found {} and {})",
                self.vae.z_dim,
                self.vae_mean.len(),
                self.vae_std.len()
            ));
        }
        if self.vae_std.iter().any(|s| *s == 0.0 || !s.is_finite()) {
            return bad("the VAE std values must be finite and non-zero".into());
        }
        if self.vae.dim_mult.len() != 4 || self.vae.temporal_downsample.len() != 3 {
            return bad("the VAE needs 4 stages (`dim_mult`) and 3 `temporal_downsample` flags (8× in space)".into());
        }
        if self.t5.dim != c.text_dim {
            return bad(format!(
                "the text encoder's width ({}) must be the DiT's text_dim ({})",
                self.t5.dim, c.text_dim
            ));
        }
        if c.patch_size != [1, 2, 2] {
            return bad(format!(
                "patch_size {:?}: only [1, 2, 2] is supported",
                c.patch_size
            ));
        }
        if self.frames_per_block == 0 {
            return bad("frames_per_block must be at least 1".into());
        }
        if c.audio_inject_layers.iter().any(|&l| l >= c.num_layers) {
            return bad(format!(
                "audio_inject_layers {:?} name a block past num_layers {}",
                c.audio_inject_layers, c.num_layers
            ));
        }
        Ok(())
    }

    /// Checks a job's settings against this model; the message says what to change.
    pub fn check_settings(&self, s: &JobParams) -> Result<(), WanError> {
        let m = SIZE_MULTIPLE;
        for (name, v) in [("width", s.width), ("height", s.height)] {
            if v == 0 || v % m != 0 {
                let lower = (v / m) * m;
                let upper = lower + m;
                let hint = if lower == 0 {
                    format!("{upper}")
                } else {
                    format!("{lower} or {upper}")
                };
                return Err(input_err(format!(
                    "size {}x{}: the {name} must be a positive multiple of {m} (the VAE's 8× times the patch's 2× times the frame packer's 4×); try {hint}",
                    s.width, s.height
                )));
            }
        }
        let per = VIDEO_FRAMES_PER_LATENT * self.frames_per_block;
        let min = (2 * VIDEO_FRAMES_PER_LATENT).div_ceil(per) * per;
        if s.infer_frames < min || s.infer_frames % per != 0 {
            let lower = (s.infer_frames / per) * per;
            let suggest = if lower >= min { lower } else { min };
            return Err(input_err(format!(
                "infer_frames {}: must be a multiple of {per} (4 video frames per latent frame × {} latent frames per block) and at least {min}; try {suggest}",
                s.infer_frames, self.frames_per_block
            )));
        }
        if !(1..=1000).contains(&s.sample_steps) {
            return Err(input_err(format!(
                "sample_steps {}: must be between 1 and 1000 (Live Avatar uses 4)",
                s.sample_steps
            )));
        }
        if !(1..=240).contains(&s.fps) {
            return Err(input_err(format!(
                "fps {}: must be between 1 and 240 (Live Avatar renders at 25)",
                s.fps
            )));
        }
        Ok(())
    }

    /// The clip loop's settings for a job.
    pub fn causal_settings(&self, s: &JobParams) -> CausalSettings {
        CausalSettings {
            frames_per_block: self.frames_per_block,
            blocks_per_clip: s.latent_frames() / self.frames_per_block,
            schedule: FlowSchedule::new(s.sample_steps, SAMPLE_SHIFT),
            seed: s.seed,
            rope_fp16: true,
        }
    }
}

/// The loaded model family of one Live Avatar directory.
pub struct LiveAvatar<B: Backend> {
    pub config: LiveAvatarConfig,
    /// The S2V DiT with the Live Avatar LoRA merged in.
    pub dit: WanS2v<B>,
    pub vae: WanVae<B>,
    pub t5: T5Encoder<B>,
    pub wav2vec2: Wav2Vec2Model<B>,
    model_id: String,
    device: B::Device,
}

/// Identifies what a carry belongs to; [`LiveCarry::from_bytes`] refuses a carry whose
/// identity differs, naming the field.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CarryId {
    /// Digest of the model directory ([`LiveAvatar::model_id`]), 64 hex digits.
    pub model: String,
    pub width: usize,
    pub height: usize,
    pub infer_frames: usize,
    pub sample_steps: usize,
    pub seed: u64,
    pub fps: u32,
}

impl CarryId {
    /// The identity of a job with settings `s` on the model `model_id`.
    pub fn new(model_id: &str, s: &JobParams) -> Self {
        Self {
            model: model_id.to_string(),
            width: s.width,
            height: s.height,
            infer_frames: s.infer_frames,
            sample_steps: s.sample_steps,
            seed: s.seed,
            fps: s.fps,
        }
    }

    /// The identity as metadata entries (`id.<field>`), numbers at a fixed width.
    fn entries(&self) -> Vec<(&'static str, String)> {
        vec![
            ("model", self.model.clone()),
            ("width", counter(self.width as u64)),
            ("height", counter(self.height as u64)),
            ("infer_frames", counter(self.infer_frames as u64)),
            ("sample_steps", counter(self.sample_steps as u64)),
            ("seed", counter(self.seed)),
            ("fps", counter(u64::from(self.fps))),
        ]
    }

    fn metadata(&self) -> BTreeMap<String, String> {
        self.entries()
            .into_iter()
            .map(|(k, v)| (format!("id.{k}"), v))
            .collect()
    }
}

/// What [`LiveAvatar::prepare`] computes once per job.
pub struct JobContext<B: Backend> {
    pub params: JobParams,
    /// Reference latent `[1, 16, 1, H/8, W/8]`.
    pub ref_latent: Tensor<B, 5>,
    /// Initial motion latents `[1, 16, 19, H/8, W/8]`.
    pub motion: Tensor<B, 5>,
    /// Embedded text `[1, text_len, dim]`.
    pub context: Tensor<B, 3>,
    /// Audio features of the whole track `[1, layers, audio_dim, clips · infer_frames]`.
    pub audio: Tensor<B, 4>,
    clips: u64,
    audio_video_frames: usize,
    id: CarryId,
}

impl<B: Backend> JobContext<B> {
    /// Clips that cover the audio (the original's `num_repeat`): the features are cut in
    /// batches of `infer_frames` video frames, and like the original there is always one
    /// batch more than whole ones (`floor(frames / infer_frames) + 1`).
    pub fn clips(&self) -> u64 {
        self.clips
    }

    /// Video frames the audio lasts: `ceil(samples · fps / 16000)`.
    pub fn audio_video_frames(&self) -> usize {
        self.audio_video_frames
    }

    /// The identity every carry of this job is saved and checked with.
    pub fn carry_id(&self) -> &CarryId {
        &self.id
    }
}

/// The state between two clips of a job: the DiT's [`Carry`] with the VAE decoder's
/// streaming cache in `inner.vae_decode`.
#[derive(Debug, Clone)]
pub struct LiveCarry<B: Backend> {
    pub inner: Carry<B>,
}

/// Decoded frames of one clip, RGB24 (row-major, `width · height · 3` bytes per frame).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ClipFrames {
    pub width: usize,
    pub height: usize,
    pub rgb: Vec<Vec<u8>>,
}

/// Bytes hashed from each end of a weight file for the model id.
const ID_SAMPLE: u64 = 1 << 16;

/// SHA-256 over the config and, for each weight file, its name, size and first and last
/// 64 KiB: cheap at 14B, and different for two random checkpoints of the same shape.
fn model_digest(files: &[PathBuf], root: &Path) -> Result<String, WanError> {
    use std::io::{Read, Seek, SeekFrom};
    let mut h = Sha256::new();
    for path in files {
        let io = |source| WanError::Io {
            path: path.clone(),
            source,
        };
        let rel = path.strip_prefix(root).unwrap_or(path);
        h.update(rel.to_string_lossy().as_bytes());
        let mut f = std::fs::File::open(path).map_err(io)?;
        let len = f.metadata().map_err(io)?.len();
        h.update(len.to_le_bytes());
        let mut buf = vec![0u8; ID_SAMPLE.min(len) as usize];
        f.read_exact(&mut buf).map_err(io)?;
        h.update(&buf);
        if len > ID_SAMPLE {
            f.seek(SeekFrom::Start(len - ID_SAMPLE.min(len - ID_SAMPLE)))
                .map_err(io)?;
            let mut tail = Vec::new();
            f.read_to_end(&mut tail).map_err(io)?;
            h.update(&tail);
        }
    }
    Ok(h.finalize().iter().map(|b| format!("{b:02x}")).collect())
}

/// The file holding a component: the safetensors form when present, else the release's
/// pickle.
fn either(dir: &Path, safetensors: &str, pth: &str) -> PathBuf {
    let st = dir.join(safetensors);
    if st.exists() {
        st
    } else {
        dir.join(pth)
    }
}

fn load_component<B: Backend, M: burn_store::ModuleSnapshot<B>>(
    model: M,
    file: &Path,
    device: &B::Device,
) -> Result<M, WanError> {
    if file.extension().is_some_and(|e| e == "safetensors") {
        let dir = file.parent().unwrap_or(Path::new("."));
        load_safetensors(model, dir, vec![file.to_path_buf()], device).map(|(m, _)| m)
    } else {
        load_pth(model, file, device).map(|(m, _)| m)
    }
}

/// Smallest number of samples wav2vec2's conv stack makes a frame of.
fn min_audio_samples<B: Backend>(w2v: &Wav2Vec2Model<B>) -> usize {
    (1..=1_000_000)
        .find(|&n| w2v.output_frames(n) > 0)
        .unwrap_or(usize::MAX)
}

/// Standard normal noise for clip `clip` of a job seeded `seed`: element `i` depends only
/// on (seed, clip, i), so any clip's noise is the same after a resume. Box–Muller over a
/// SplitMix64 stream.
pub fn clip_noise(seed: u64, clip: u64, n: usize) -> Vec<f32> {
    fn mix(mut z: u64) -> u64 {
        z = z.wrapping_add(0x9E37_79B9_7F4A_7C15);
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }
    let base = mix(mix(seed ^ 0x6E6F_6973_6521) ^ clip);
    let unit = |x: u64| ((x >> 11) as f64 + 0.5) / (1u64 << 53) as f64;
    let mut out = Vec::with_capacity(n + 1);
    for pair in 0..n.div_ceil(2) as u64 {
        let a = mix(base ^ (2 * pair));
        let b = mix(base ^ (2 * pair + 1));
        let r = (-2.0 * unit(a).ln()).sqrt();
        let theta = std::f64::consts::TAU * unit(b);
        out.push((r * theta.cos()) as f32);
        out.push((r * theta.sin()) as f32);
    }
    out.truncate(n);
    out
}

/// Video `[1, 3, T, H, W]` in [-1, 1] to RGB24 frames.
fn to_rgb<B: Backend>(video: Tensor<B, 5>) -> Result<Vec<Vec<u8>>, WanError> {
    let [_, c, t, h, w] = video.dims();
    let values: Vec<f32> = video
        .clamp(-1.0, 1.0)
        .permute([0, 2, 3, 4, 1])
        .into_data()
        .convert::<f32>()
        .to_vec()
        .map_err(|e| input_err(format!("cannot read the decoded frames back: {e:?}")))?;
    let frame = h * w * c;
    Ok((0..t)
        .map(|i| {
            values[i * frame..(i + 1) * frame]
                .iter()
                .map(|v| ((v + 1.0) * 127.5).round().clamp(0.0, 255.0) as u8)
                .collect()
        })
        .collect())
}

impl<B: Backend> LiveAvatar<B> {
    /// Loads a model directory in the release layout (see `wan/README.md`): the DiT from
    /// `Wan2.2-S2V-14B/` with the LoRA of `LiveAvatar/liveavatar.safetensors` merged, the
    /// VAE and umT5 (`.safetensors` when present, else the released `.pth`), wav2vec2.
    pub fn load(dir: &Path, device: &B::Device) -> Result<Self, WanError> {
        let config = LiveAvatarConfig::from_dir(dir)?;
        let s2v_dir = dir.join(S2V_DIR);
        let lora = dir.join(LORA_FILE);
        if !lora.exists() {
            return Err(WanError::Io {
                path: lora,
                source: std::io::Error::new(
                    std::io::ErrorKind::NotFound,
                    "the Live Avatar LoRA is not in the model directory",
                ),
            });
        }
        let vae_file = either(&s2v_dir, VAE_SAFETENSORS, VAE_PTH);
        let t5_file = either(&s2v_dir, T5_SAFETENSORS, T5_PTH);
        let w2v_dir = s2v_dir.join(W2V_DIR);

        let (dit, _) = load_s2v(WanS2v::new(&config.s2v, device), &s2v_dir)?;
        let (dit, merged) = merge_lora_file(dit, &lora, config.lora_alpha)?;
        tracing::debug!(merged, "LoRA merged");
        let vae = load_component(WanVae::new(&config.vae, device), &vae_file, device)?;
        let t5 = load_component(T5Encoder::new(&config.t5, device), &t5_file, device)?;
        let (wav2vec2, _) = load_wav2vec2_dir(&w2v_dir, device)?;
        let states = wav2vec2.encoder.layers.len() + 1;
        let width = wav2vec2.feature_projection.projection.weight.dims()[0];
        if states != config.s2v.audio_layers || width != config.s2v.audio_dim {
            return Err(WanError::BadConfig {
                path: w2v_dir.join("config.json"),
                message: format!(
                    "wav2vec2 gives {states} hidden states of width {width}; the DiT's audio encoder takes {} of width {}",
                    config.s2v.audio_layers, config.s2v.audio_dim
                ),
            });
        }

        let mut files = vec![s2v_dir.join(CONFIG_FILE)];
        if s2v_dir.join(crate::loader::S2V_INDEX).exists() {
            files.push(s2v_dir.join(crate::loader::S2V_INDEX));
        }
        files.extend(s2v_shards(&s2v_dir)?);
        files.extend([lora, vae_file, t5_file, w2v_dir.join("config.json")]);
        let w2v_weights = either(&w2v_dir, W2V_SAFETENSORS, W2V_BIN);
        files.push(w2v_weights);
        let model_id = model_digest(&files, dir)?;
        Ok(Self {
            config,
            dit,
            vae,
            t5,
            wav2vec2,
            model_id,
            device: device.clone(),
        })
    }

    /// Digest of the model directory (config and weight files), 64 hex digits.
    pub fn model_id(&self) -> &str {
        &self.model_id
    }

    /// Checks a job's settings against the model; the error says what to change.
    pub fn check_settings(&self, s: &JobParams) -> Result<(), WanError> {
        self.config.check_settings(s)
    }

    /// Once per job: the reference latent (the image repeated 5 times through the VAE
    /// encoder, latent 1 kept, as the original), the initial motion latents (the image
    /// repeated 73 times: 19 latents), the prompt through umT5 and the DiT's text
    /// embedding, and the audio features of the whole track at `s.fps`.
    ///
    /// `reference_rgb` is RGB24 at exactly `width × height` (resizing is the caller's).
    /// `prompt_ids` are umT5 token ids; trailing padding (id 0) is dropped and at most
    /// `text_len` ids are used (the original's tokenizer truncates there).
    /// `audio_16k_mono` must be at least as long as wav2vec2's receptive field (400
    /// samples, 25 ms, for the release).
    pub fn prepare(
        &self,
        s: &JobParams,
        reference_rgb: &[u8],
        audio_16k_mono: &[f32],
        prompt_ids: &[u32],
    ) -> Result<JobContext<B>, WanError> {
        self.check_settings(s)?;
        let device = &self.device;
        let (w, h) = (s.width, s.height);
        if reference_rgb.len() != w * h * 3 {
            return Err(input_err(format!(
                "the reference image has {} bytes; RGB24 at {w}x{h} has {}",
                reference_rgb.len(),
                w * h * 3
            )));
        }
        // Every input is checked before the first model runs.
        if let Some(i) = audio_16k_mono.iter().position(|v| !v.is_finite()) {
            return Err(input_err(format!(
                "audio sample {i} is {}; samples must be finite",
                audio_16k_mono[i]
            )));
        }
        if self.wav2vec2.output_frames(audio_16k_mono.len()) == 0 {
            return Err(input_err(format!(
                "the audio has {} samples; wav2vec2 needs at least {} (16 kHz)",
                audio_16k_mono.len(),
                min_audio_samples(&self.wav2vec2)
            )));
        }
        let ids = self.prompt_ids(prompt_ids)?;

        let pixels: Vec<f32> = reference_rgb
            .iter()
            .map(|&v| f32::from(v) / 255.0 * 2.0 - 1.0)
            .collect();
        let image = Tensor::<B, 3>::from_data(TensorData::new(pixels, [h, w, 3]), device)
            .permute([2, 0, 1])
            .reshape([1, 3, 1, h, w]);
        let (mean, std) = (&self.config.vae_mean, &self.config.vae_std);
        let ref_latent = self
            .vae
            .encode(image.clone().repeat_dim(2, 5), mean, std)
            .narrow(2, 1, 1);
        let motion = self
            .vae
            .encode(image.repeat_dim(2, MOTION_FRAMES), mean, std);

        let context = self.embed_prompt(ids);

        let Some((flat, batches)) = audio_per_video_frame(
            &self.wav2vec2,
            audio_16k_mono,
            f64::from(s.fps),
            s.infer_frames,
            device,
        ) else {
            return Err(input_err(format!(
                "the audio has {} samples; wav2vec2 needs at least {} (16 kHz)",
                audio_16k_mono.len(),
                min_audio_samples(&self.wav2vec2)
            )));
        };
        let (layers, dim) = (self.config.s2v.audio_layers, self.config.s2v.audio_dim);
        let frames = flat.len() / (layers * dim);
        let audio = Tensor::<B, 3>::from_data(TensorData::new(flat, [frames, layers, dim]), device)
            .permute([1, 2, 0])
            .unsqueeze::<4>();
        let audio_video_frames = (audio_16k_mono.len() as u64 * u64::from(s.fps))
            .div_ceil(u64::from(AUDIO_RATE)) as usize;
        Ok(JobContext {
            params: s.clone(),
            ref_latent,
            motion,
            context,
            audio,
            clips: batches as u64,
            audio_video_frames,
            id: CarryId::new(&self.model_id, s),
        })
    }

    /// The prompt ids the text encoder reads: trailing padding (id 0) dropped, at most
    /// `text_len`, each inside the vocabulary.
    fn prompt_ids<'a>(&self, prompt_ids: &'a [u32]) -> Result<&'a [u32], WanError> {
        let cfg = &self.config;
        let real = prompt_ids.len() - prompt_ids.iter().rev().take_while(|&&id| id == 0).count();
        let ids = &prompt_ids[..real.min(cfg.s2v.text_len)];
        if let Some(bad) = ids.iter().find(|&&id| id as usize >= cfg.t5.vocab) {
            return Err(input_err(format!(
                "prompt token id {bad} is outside the text encoder's vocabulary of {} (a tokenizer of another model?)",
                cfg.t5.vocab
            )));
        }
        Ok(ids)
    }

    /// Checked token ids to the DiT's embedded text `[1, text_len, dim]`.
    fn embed_prompt(&self, ids: &[u32]) -> Tensor<B, 3> {
        let cfg = &self.config;
        let text = if ids.is_empty() {
            Tensor::zeros([1, cfg.s2v.text_len, cfg.s2v.text_dim], &self.device)
        } else {
            let ids: Vec<i64> = ids.iter().map(|&v| i64::from(v)).collect();
            self.t5.forward(&ids, &vec![true; ids.len()])
        };
        self.dit.embed_text(text)
    }

    /// The state before clip 0: the sink prefilled from the reference and motion
    /// latents, empty KV rings, a fresh VAE decode cache.
    pub fn start(&self, ctx: &JobContext<B>) -> Result<LiveCarry<B>, WanError> {
        self.check_settings(&ctx.params)?;
        let settings = self.config.causal_settings(&ctx.params);
        let mut inner = Carry::start(
            &self.dit,
            &settings,
            ctx.ref_latent.clone(),
            ctx.motion.clone(),
            ctx.context.clone(),
        );
        inner.vae_decode = Some(DecodeCache::default());
        Ok(LiveCarry { inner })
    }

    /// Renders clip `carry.clip()`: noise from (seed, clip), the clip's audio window,
    /// [`run_clip`], then the streaming VAE decode of its latents continuing the carried
    /// decode cache. Returns `infer_frames - 3` RGB frames for clip 0 and `infer_frames`
    /// for every later clip ([`JobParams::clip_video_frames`]), and the next carry.
    /// Clips past [`JobContext::clips`] get silent (zero) audio features.
    pub fn render_clip(
        &self,
        ctx: &JobContext<B>,
        carry: LiveCarry<B>,
    ) -> Result<(ClipFrames, LiveCarry<B>), WanError> {
        let s = &ctx.params;
        let settings = self.config.causal_settings(s);
        let [lh, lw] = s.latent_hw();
        let f = s.latent_frames();
        let ring = f * (lh / 2) * (lw / 2);
        if carry.inner.grid_hw != [lh / 2, lw / 2]
            || carry.inner.ring_tokens() != ring
            || carry.inner.rings.len() != s.sample_steps
        {
            return Err(input_err(format!(
                "the carry was made for another geometry (grid {:?}, {} ring tokens, {} steps) than this job's ({:?}, {ring}, {})",
                carry.inner.grid_hw,
                carry.inner.ring_tokens(),
                carry.inner.rings.len(),
                [lh / 2, lw / 2],
                s.sample_steps
            )));
        }
        let clip = carry.clip();
        let device = &self.device;
        let z = self.config.s2v.in_dim;
        let noise = Tensor::<B, 5>::from_data(
            TensorData::new(clip_noise(s.seed, clip, z * f * lh * lw), [1, z, f, lh, lw]),
            device,
        );
        let cond = Tensor::zeros([1, self.config.s2v.cond_dim, f, lh, lw], device);
        let audio = self.clip_audio(ctx, clip);
        let input = ClipInput {
            noise,
            cond,
            context: ctx.context.clone(),
            audio: Some(audio),
        };
        let (latents, mut next) = run_clip(&self.dit, &settings, carry.inner, input);
        let mut cache = next.vae_decode.take().unwrap_or_default();
        let video = self.vae.decode_stream(
            latents,
            &self.config.vae_mean,
            &self.config.vae_std,
            &mut cache,
        );
        next.vae_decode = Some(cache);
        let rgb = to_rgb(video)?;
        Ok((
            ClipFrames {
                width: s.width,
                height: s.height,
                rgb,
            },
            LiveCarry { inner: next },
        ))
    }

    /// Audio features of clip `clip` `[1, layers, dim, infer_frames]`, zero rows past the
    /// track's features.
    fn clip_audio(&self, ctx: &JobContext<B>, clip: u64) -> Tensor<B, 4> {
        let n = ctx.params.infer_frames;
        let [_, layers, dim, total] = ctx.audio.dims();
        let start = (clip as usize).saturating_mul(n);
        let have = total.saturating_sub(start).min(n);
        let zeros = |k| Tensor::zeros([1, layers, dim, k], &self.device);
        match have {
            0 => zeros(n),
            h if h == n => ctx.audio.clone().narrow(3, start, n),
            h => Tensor::cat(vec![ctx.audio.clone().narrow(3, start, h), zeros(n - h)], 3),
        }
    }
}

impl<B: Backend> LiveCarry<B> {
    /// Index of the next clip this carry renders.
    pub fn clip(&self) -> u64 {
        self.inner.clip
    }

    /// The carry as a file (see [`crate::carry_io`]), stamped with `id`.
    pub fn to_bytes(&self, id: &CarryId) -> Result<Vec<u8>, WanError> {
        if id.model.len() != MODEL_ID_LEN {
            return Err(input_err(format!(
                "carry id: the model id must have {MODEL_ID_LEN} characters (LiveAvatar::model_id), found {}",
                id.model.len()
            )));
        }
        self.inner.to_bytes_with(&id.metadata())
    }

    /// [`LiveCarry::to_bytes`] streamed to `w` one tensor at a time (for carries of tens
    /// of GB); returns the bytes written, [`carry_bytes`] of the job.
    pub fn write_to<W: std::io::Write + std::io::Seek>(
        &self,
        w: &mut W,
        id: &CarryId,
    ) -> Result<u64, WanError> {
        if id.model.len() != MODEL_ID_LEN {
            return Err(input_err(format!(
                "carry id: the model id must have {MODEL_ID_LEN} characters (LiveAvatar::model_id), found {}",
                id.model.len()
            )));
        }
        self.inner.write_to(w, &id.metadata())
    }

    /// A carry saved by [`LiveCarry::to_bytes`] onto `device`. A carry stamped with another
    /// identity is refused with [`WanError::CarryMismatch`] naming the first field that
    /// differs (model, width, height, infer_frames, sample_steps, seed, fps); a damaged or
    /// truncated file with [`WanError::Carry`].
    pub fn from_bytes(
        bytes: &[u8],
        expected: &CarryId,
        device: &B::Device,
    ) -> Result<Self, WanError> {
        let meta = Carry::<B>::read_metadata(bytes)?;
        for (field, want) in expected.entries() {
            let key = format!("id.{field}");
            let found = meta.get(&key).ok_or_else(|| WanError::Carry {
                message: format!("metadata `{key}` is missing: not a Live Avatar job carry"),
            })?;
            if *found != want {
                let show = |v: &str| v.trim_start_matches('0').to_string();
                let (expected, found) = if field == "model" {
                    (want, found.clone())
                } else {
                    (show(&want), show(found))
                };
                return Err(WanError::CarryMismatch {
                    field: field.to_string(),
                    expected: if expected.is_empty() {
                        "0".into()
                    } else {
                        expected
                    },
                    found: if found.is_empty() { "0".into() } else { found },
                });
            }
        }
        let (inner, _) = Carry::from_bytes_with_meta(bytes, device)?;
        if inner.vae_decode.is_none() {
            return Err(WanError::Carry {
                message: "the carry has no VAE decode cache: not a Live Avatar job carry".into(),
            });
        }
        Ok(Self { inner })
    }
}

/// Exact size in bytes of [`LiveCarry::to_bytes`] for any carry after a clip of a job
/// with settings `s` on a model with `cfg` (the carry of [`LiveAvatar::start`], before
/// any decode, is smaller: its VAE cache is empty). A function of the geometry only:
/// KV rings, sink, motion latents, VAE cache slots, and the fixed-size header.
pub fn carry_bytes(cfg: &LiveAvatarConfig, s: &JobParams) -> Result<u64, WanError> {
    cfg.check_settings(s)?;
    let c = &cfg.s2v;
    let [lh, lw] = s.latent_hw();
    let [gh, gw] = [lh / 2, lw / 2];
    let heads = c.num_heads;
    let hd = c.dim / c.num_heads;
    let ring = vec![1, s.latent_frames() * gh * gw, heads, hd];
    let groups = sink_rope_groups([gh, gw], [lh, lw]);
    let sink_tokens: usize = groups.iter().map(RopeGroup::len).sum();
    let mut tensors: Vec<(String, Vec<usize>)> = Vec::new();
    for st in 0..s.sample_steps {
        for l in 0..c.num_layers {
            tensors.push((format!("ring.{st}.{l}.k"), ring.clone()));
            tensors.push((format!("ring.{st}.{l}.v"), ring.clone()));
        }
    }
    for l in 0..c.num_layers {
        tensors.push((format!("sink.{l}.k"), vec![1, sink_tokens, heads, hd]));
        tensors.push((format!("sink.{l}.v"), vec![1, sink_tokens, heads, hd]));
    }
    let lat_motion = MOTION_FRAMES.div_ceil(VIDEO_FRAMES_PER_LATENT);
    tensors.push(("motion".into(), vec![1, cfg.vae.z_dim, lat_motion, lh, lw]));
    let slots = decode_cache_shapes(&cfg.vae, lh, lw);
    for (i, shape) in slots.iter().enumerate() {
        tensors.push((format!("vae.{i}"), shape.to_vec()));
    }
    let mut meta: BTreeMap<String, String> = [
        ("format", CARRY_FORMAT.to_string()),
        ("frames_done", counter(0)),
        ("clip", counter(0)),
        ("steps", s.sample_steps.to_string()),
        ("layers", c.num_layers.to_string()),
        ("grid_hw", json!([gh, gw]).to_string()),
        ("sink_groups", sink_groups_json(&groups)),
        (DIGEST_KEY, "0".repeat(16)),
        (VAE_SLOTS_KEY, "F".repeat(slots.len())),
    ]
    .into_iter()
    .map(|(k, v)| (k.to_string(), v))
    .collect();
    meta.extend(CarryId::new(&"0".repeat(MODEL_ID_LEN), s).metadata());
    Ok(file_bytes(&meta, &tensors))
}

/// The sink's RoPE groups for a token grid `grid_hw` and latents of `lat_hw`: the
/// reference image at frame 30, then the frame packer's three groups
/// ([`crate::causal_loop::prefill_sink`] builds the same).
pub fn sink_rope_groups(grid_hw: [usize; 2], lat_hw: [usize; 2]) -> Vec<RopeGroup> {
    let (h, w) = (grid_hw[0] as i64, grid_hw[1] as i64);
    let mut groups = vec![RopeGroup::from_grid(
        [REF_FRAME_POSITION, 0, 0],
        [REF_FRAME_POSITION + 1, h, w],
        [1, h, w],
    )];
    groups.extend(crate::motion::rope_groups(lat_hw[0], lat_hw[1]));
    groups
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::causal_loop::{carry_tensor_bytes, CarryDims};

    #[test]
    fn carry_size_at_the_release_geometry_adds_the_vae_cache_to_the_dit_carry() {
        let cfg = LiveAvatarConfig::release();
        let s = JobParams {
            width: 704,
            height: 384,
            infer_frames: 48,
            sample_steps: 4,
            seed: 0,
            fps: 25,
        };
        let total = carry_bytes(&cfg, &s).expect("release settings are valid");
        // The DiT part from the causal loop's own formula, in f32.
        let dit = carry_tensor_bytes(
            &CarryDims {
                tokens_per_frame: 44 * 24,
                frames_per_clip: 12,
                sink_tokens: 2640,
                layers: 40,
                heads: 40,
                head_dim: 128,
                steps: 4,
                motion_elements: 16 * 19 * 88 * 48,
            },
            4,
        );
        let vae: u64 = decode_cache_shapes(&cfg.vae, 48, 88)
            .iter()
            .map(|s| 4 * s.iter().product::<usize>() as u64)
            .sum();
        let header = total - dit - vae;
        assert!(header > 0 && header < 1 << 20, "header {header} bytes");
        // The VAE decoder's cache: 2.56 GB in f32 at this size (32 slots of 2 frames).
        assert!((2.5e9..2.6e9).contains(&(vae as f64)), "{vae}");
        eprintln!("release carry: {total} bytes (DiT {dit}, VAE cache {vae}, header {header})");
    }

    #[test]
    fn clip_noise_is_standard_normal_and_keyed_by_seed_and_clip() {
        let a = clip_noise(1, 0, 20_001);
        assert_eq!(a.len(), 20_001);
        let mean = a.iter().map(|&v| f64::from(v)).sum::<f64>() / a.len() as f64;
        let var = a
            .iter()
            .map(|&v| (f64::from(v) - mean).powi(2))
            .sum::<f64>()
            / a.len() as f64;
        assert!(
            mean.abs() < 0.03 && (var - 1.0).abs() < 0.05,
            "{mean} {var}"
        );
        assert_eq!(a, clip_noise(1, 0, 20_001));
        assert_eq!(
            &a[..100],
            &clip_noise(1, 0, 100)[..],
            "a prefix does not depend on n"
        );
        assert_ne!(a[..100], clip_noise(1, 1, 100)[..]);
        assert_ne!(a[..100], clip_noise(2, 0, 100)[..]);
    }
}
