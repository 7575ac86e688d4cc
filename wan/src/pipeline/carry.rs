//! The carry of a job ([`PipelineCarry`]): the DiT's carry with the VAE decoder's streaming
//! cache, saved with the job's identity ([`CarryStamp`]), and its exact size before the job
//! starts ([`carry_bytes`]).

use std::collections::BTreeMap;

use burn::prelude::*;
use serde_json::json;

use super::{input_err, JobParams, LiveAvatarConfig, VIDEO_FRAMES_PER_LATENT};
use crate::audio::MOTION_FRAMES;
use crate::carry_io::{
    counter, file_bytes, sink_groups_json, CARRY_FORMAT, DIGEST_KEY, VAE_SLOTS_KEY,
};
use crate::causal_loop::DitCarry;
use crate::error::WanError;
use crate::model::REF_FRAME_POSITION;
use crate::rope::RopeGroup;
use crate::streamed::HostDitCarry;
use crate::vae::decode_cache_shapes;

/// Length of [`CarryStamp::model`]: a SHA-256 in hex.
pub const MODEL_ID_LEN: usize = 64;

/// What a carry file is stamped with (the model's digest and the job's settings):
/// [`PipelineCarry::from_bytes`] refuses a carry whose stamp differs, naming the field.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CarryStamp {
    /// Digest of the model directory ([`super::LiveAvatar::model_id`]), 64 hex digits.
    pub model: String,
    pub width: usize,
    pub height: usize,
    pub infer_frames: usize,
    pub sample_steps: usize,
    pub seed: u64,
    pub fps: u32,
}

impl CarryStamp {
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

/// The state between two clips of a job: the DiT's carry with the VAE decoder's streaming
/// cache in `inner.vae_decode`. Its layers (rings and sink slices) are on the device or in
/// host memory as the memory mode of the clip that made it wants them
/// ([`HostDitCarry::set_resident_layers`] moves them); the file is the same either way.
#[derive(Debug, Clone)]
pub struct PipelineCarry<B: Backend> {
    pub inner: HostDitCarry<B>,
}

impl<B: Backend> PipelineCarry<B> {
    /// Index of the next clip this carry renders.
    pub fn clip(&self) -> u64 {
        self.inner.clip
    }

    /// The carry as a file (see [`crate::carry_io`]), stamped with `id`.
    pub fn to_bytes(&self, id: &CarryStamp) -> Result<Vec<u8>, WanError> {
        if id.model.len() != MODEL_ID_LEN {
            return Err(input_err(format!(
                "carry id: the model id must have {MODEL_ID_LEN} characters (LiveAvatar::model_id), found {}",
                id.model.len()
            )));
        }
        self.inner.to_bytes_with(&id.metadata())
    }

    /// [`PipelineCarry::to_bytes`] streamed to `w` one tensor at a time (for carries of tens
    /// of GB); returns the bytes written, [`carry_bytes`] of the job.
    pub fn write_to<W: std::io::Write + std::io::Seek>(
        &self,
        w: &mut W,
        id: &CarryStamp,
    ) -> Result<u64, WanError> {
        if id.model.len() != MODEL_ID_LEN {
            return Err(input_err(format!(
                "carry id: the model id must have {MODEL_ID_LEN} characters (LiveAvatar::model_id), found {}",
                id.model.len()
            )));
        }
        self.inner.write_to(w, &id.metadata())
    }

    /// A carry saved by [`PipelineCarry::to_bytes`] onto `device`. A carry stamped with another
    /// identity is refused with [`WanError::CarryMismatch`] naming the first field that
    /// differs (model, width, height, infer_frames, sample_steps, seed, fps); a damaged or
    /// truncated file with [`WanError::Carry`].
    pub fn from_bytes(
        bytes: &[u8],
        expected: &CarryStamp,
        device: &B::Device,
    ) -> Result<Self, WanError> {
        Self::from_bytes_split(bytes, expected, device, usize::MAX)
    }

    /// [`PipelineCarry::from_bytes`] with the rings and sink of the first `resident_layers`
    /// layers on `device` and the others in host memory (0 for a streamed job, whose carry
    /// need not fit on the device).
    pub fn from_bytes_split(
        bytes: &[u8],
        expected: &CarryStamp,
        device: &B::Device,
        resident_layers: usize,
    ) -> Result<Self, WanError> {
        let meta = DitCarry::<B>::read_metadata(bytes)?;
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
        let (inner, _) = HostDitCarry::from_bytes_split(bytes, device, resident_layers)?;
        if inner.vae_decode.is_none() {
            return Err(WanError::Carry {
                message: "the carry has no VAE decode cache: not a Live Avatar job carry".into(),
            });
        }
        Ok(Self { inner })
    }
}

/// Exact size in bytes of [`PipelineCarry::to_bytes`] for any carry after a clip of a job
/// with settings `s` on a model with `cfg`, computed in `dtype` (the backend's float dtype,
/// [`crate::carry_io::float_dtype`]; the carry of [`super::LiveAvatar::start`], before any
/// decode, is smaller: its VAE cache is empty). A function of the geometry only: KV rings,
/// sink, motion latents, VAE cache slots, and the fixed-size header.
pub fn carry_bytes(
    cfg: &LiveAvatarConfig,
    s: &JobParams,
    dtype: burn::tensor::DType,
) -> Result<u64, WanError> {
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
    meta.extend(CarryStamp::new(&"0".repeat(MODEL_ID_LEN), s).metadata());
    file_bytes(&meta, &tensors, dtype)
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
        let s = JobParams::release_defaults(704, 384, 48);
        let total = carry_bytes(&cfg, &s, burn::tensor::DType::F32).expect("valid settings");
        let half = carry_bytes(&cfg, &s, burn::tensor::DType::BF16).expect("valid settings");
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
        // In bf16 every tensor takes half the bytes; the header differs only in the dtype
        // names ("BF16" for "F32", padded to 8 bytes).
        let half_header = half - (dit + vae) / 2;
        assert!(
            half_header.abs_diff(header) < 4096,
            "{half_header} vs {header}"
        );
        eprintln!("release carry in bf16: {half} bytes");
    }
}
