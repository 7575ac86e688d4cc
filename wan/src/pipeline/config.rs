//! What sizes a Live Avatar model directory: the S2V config, the VAE's and umT5's sizes,
//! the block length, read from `config.json` without loading weights, and the checks of a
//! job's settings against it.

use std::path::Path;

use serde_json::{json, Value};

use super::{input_err, JobParams, MAX_SIDE, SAMPLE_SHIFT, SIZE_MULTIPLE, VIDEO_FRAMES_PER_LATENT};
use crate::causal_loop::CausalSettings;
use crate::config::S2vConfig;
use crate::error::WanError;
use crate::lora::LIVE_AVATAR_ALPHA;
use crate::release::{CONFIG_FILE, S2V_DIR};
use crate::sampler::FlowSchedule;
use crate::t5::T5Config;
use crate::vae::VaeConfig;

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
        // The released config.json (a diffusers-style dump of the constructor arguments)
        // leaves out `patch_size`, `qk_norm`, `cross_attn_norm`, `text_dim` and
        // `window_size`; they take the code's defaults. When given, the flags this port
        // does not implement otherwise must have those values.
        for flag in ["qk_norm", "cross_attn_norm"] {
            match top.get(flag) {
                None | Some(Value::Bool(true)) => {}
                Some(_) => {
                    return Err(top.bad(flag, "true (the only setting this engine implements)"))
                }
            }
        }
        match top.get("window_size") {
            None => {}
            Some(v)
                if v.as_array()
                    .is_some_and(|a| a.len() == 2 && a.iter().all(|x| x.as_i64() == Some(-1))) => {}
            Some(_) => {
                return Err(top.bad(
                    "window_size",
                    "[-1, -1] (global attention, the only setting this engine implements)",
                ))
            }
        }
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
        if c.num_heads == 0
            || !c.dim.is_multiple_of(c.num_heads)
            || !(c.dim / c.num_heads).is_multiple_of(2)
        {
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
            if v > MAX_SIDE {
                return Err(input_err(format!(
                    "size {}x{}: the {name} is above the {MAX_SIDE} pixels this pipeline accepts",
                    s.width, s.height
                )));
            }
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
        if s.infer_frames < min || !s.infer_frames.is_multiple_of(per) {
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
