//! What one job holds on the device, by part, from the model's own shapes: the numbers the
//! `liveavatar-14b` placement profile needs before a job is placed.

use burn::backend::NdArray;
use burn::module::Module;

use super::{sink_rope_groups, JobParams, LiveAvatarConfig};
use crate::causal_loop::{carry_tensor_bytes, CarryDims};
use crate::error::WanError;
use crate::keys::list_params;
use crate::rope::RopeGroup;
use crate::t5::T5Encoder;
use crate::vae::WanVae;
use crate::wav2vec2::{Wav2Vec2Config, Wav2Vec2Model};
use crate::WanS2v;

/// Device bytes of one job, by part (see [`memory_estimate`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct MemoryEstimate {
    /// Every parameter of the DiT (LoRA merged: same shapes), VAE, umT5 and wav2vec2.
    pub weights: u64,
    /// The carry's DiT part: per-step KV rings, sink, motion latents.
    pub kv: u64,
    /// The VAE decoder's streaming cache plus its largest layer's working set.
    pub vae_decode: u64,
    /// The DiT's working set for one block forward, attention scores materialised.
    pub activations: u64,
}

impl MemoryEstimate {
    pub fn total(&self) -> u64 {
        self.weights + self.kv + self.vae_decode + self.activations
    }
}

/// Parameter count of a module built with lazy parameters (nothing is allocated).
fn params<M: Module<NdArray>>(m: &M) -> u64 {
    list_params::<NdArray, _>(m)
        .iter()
        .map(|p| p.shape.iter().product::<usize>() as u64)
        .sum()
}

/// Parameters of the DiT, VAE, umT5 and wav2vec2 of `cfg` (wav2vec2 sized by `w2v`).
pub fn parameter_count(cfg: &LiveAvatarConfig, w2v: &Wav2Vec2Config) -> u64 {
    let device = Default::default();
    params(&WanS2v::<NdArray>::new(&cfg.s2v, &device))
        + params(&WanVae::<NdArray>::new(&cfg.vae, &device))
        + params(&T5Encoder::<NdArray>::new(&cfg.t5, &device))
        + params(&Wav2Vec2Model::<NdArray>::new(w2v, &device))
}

/// Device bytes of one job at `bytes_per_value` (2 for bf16):
///
/// - `weights` = parameters · b (all four models resident);
/// - `kv` = `S·L·2·(F·P)·N·D + L·2·T_s·N·D + M` values (the carry's DiT part);
/// - `vae_decode` = (`V` + 4.5 · 4 · C_full · H · W) values: the cache and the widest
///   full-resolution stage's live tensors (`crate::memory::vae_working_values`);
/// - `activations` = (N · q · k + 2 · k · d + 8 · q · d + q · ffn) values for one block
///   forward: the attention scores of `q = frames_per_block · P` queries over
///   `k = F·P + T_s` keys (an upper bound: flash attention does not materialise them), the
///   key/value concatenation, the block's hidden states and its feed-forward.
///
/// An estimate from shapes, not a measurement: the allocator's slack and the backend's
/// temporaries come on top (the placement profile keeps its safety margin).
pub fn memory_estimate(
    cfg: &LiveAvatarConfig,
    w2v: &Wav2Vec2Config,
    s: &JobParams,
    bytes_per_value: u64,
) -> Result<MemoryEstimate, WanError> {
    cfg.check_settings(s)?;
    let b = bytes_per_value;
    let c = &cfg.s2v;
    let [lh, lw] = s.latent_hw();
    let p = (lh / 2) * (lw / 2);
    let groups = sink_rope_groups([lh / 2, lw / 2], [lh, lw]);
    let sink_tokens: usize = groups.iter().map(RopeGroup::len).sum();
    let lat_motion = crate::audio::MOTION_FRAMES.div_ceil(super::VIDEO_FRAMES_PER_LATENT);
    let kv = carry_tensor_bytes(
        &CarryDims {
            tokens_per_frame: p,
            frames_per_clip: s.latent_frames(),
            sink_tokens,
            layers: c.num_layers,
            heads: c.num_heads,
            head_dim: c.dim / c.num_heads,
            steps: s.sample_steps,
            motion_elements: cfg.vae.z_dim * lat_motion * lh * lw,
        },
        b as usize,
    );
    let cache = crate::memory::vae_cache_values(&cfg.vae, lh, lw);
    let working = crate::memory::vae_working_values(&cfg.vae, s.width, s.height);
    let q = (cfg.frames_per_block * p) as u64;
    let k = (s.latent_frames() * p + sink_tokens) as u64;
    let d = c.dim as u64;
    let activations = c.num_heads as u64 * q * k + 2 * k * d + 8 * q * d + q * c.ffn_dim as u64;
    Ok(MemoryEstimate {
        weights: parameter_count(cfg, w2v) * b,
        kv,
        vae_decode: (cache + working) * b,
        activations: activations * b,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn release_estimate_matches_the_published_sizes() {
        let cfg = LiveAvatarConfig::release();
        let device = Default::default();
        // ENGINE.md §1.1: ≈16.3B DiT parameters (32.6 GB of bf16 shards).
        let dit = params(&WanS2v::<NdArray>::new(&cfg.s2v, &device));
        assert!((16.0e9..16.6e9).contains(&(dit as f64)), "{dit}");
        // models_t5_umt5-xxl-enc-bf16.pth is 11.4 GB: ≈5.7B parameters.
        let t5 = params(&T5Encoder::<NdArray>::new(&cfg.t5, &device));
        assert!((5.5e9..5.9e9).contains(&(t5 as f64)), "{t5}");
        let s = JobParams::release_defaults(704, 384, 48);
        let e = memory_estimate(&cfg, &Wav2Vec2Config::large_xlsr53(), &s, 2).expect("valid");
        // The carry's DiT part in bf16, as in the README: 43.69 GB.
        assert!((43.6e9..43.8e9).contains(&(e.kv as f64)), "{e:?}");
        assert!(e.weights > 2 * (dit + t5));
        assert!(e.vae_decode > 1_278_000_000 && e.activations > 0);
        eprintln!("release, bf16: {e:?}, total {}", e.total());
    }
}
