//! Device memory and host↔device traffic of the causal loop, computed from the model
//! config and the clip geometry: the resident mode ([`crate::causal_loop::run_clip`])
//! and the layer-streamed mode ([`crate::streamed`]).
//!
//! Parameter counts come from the module tree itself ([`crate::keys::list_params`] on
//! a lazily built model: nothing is allocated). DitCarry and traffic figures are exact
//! for the code in this crate (a test checks the traffic against a streamed run).
//! Activations and the VAE decode are **estimates**: they count the tensors alive at
//! the widest point of a layer forward and of a one-latent-frame decode, not what a
//! backend's allocator holds (pools, fragmentation, temporaries of fused kernels),
//! and assume an attention kernel that does not materialise the score matrix (flash);
//! [`Plan::attention_scores`] gives what the fallback kernel adds.

use burn::backend::NdArray;

use crate::config::S2vConfig;
use crate::keys::list_params;
use crate::model::WanS2v;
use crate::pipeline::LiveAvatarConfig;
use crate::streamed::Traffic;
use crate::vae::{VaeConfig, WanVae};
use crate::wav2vec2::Wav2Vec2Config;

/// The clip geometry of the causal loop.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Geometry {
    /// Noisy tokens per latent frame, `(H/16)·(W/16)`.
    pub tokens_per_frame: usize,
    pub frames_per_block: usize,
    pub blocks_per_clip: usize,
    /// Denoising steps (one ring each).
    pub steps: usize,
    /// Sink tokens: reference image plus frame-packed motion tokens.
    pub sink_tokens: usize,
}

/// Video frames of motion context Live Avatar keeps (19 latent frames).
const MOTION_VIDEO_FRAMES: usize = 73;

impl Geometry {
    /// Live Avatar's geometry for `width`×`height` video and `infer_frames` video frames
    /// per clip (3 latent frames per block, 4 steps). Width and height must be multiples
    /// of 64 (the frame packer's coarsest grid); the clip must be whole blocks.
    pub fn live_avatar(width: usize, height: usize, infer_frames: usize) -> Result<Self, String> {
        if width == 0 || height == 0 || !width.is_multiple_of(64) || !height.is_multiple_of(64) {
            return Err(format!(
                "{width}*{height}: width and height must be positive multiples of 64"
            ));
        }
        // Latent frames of a clip: the reference's
        // (infer + 3 + 73) / 4 − (73 + 3) / 4.
        let motion_latent = MOTION_VIDEO_FRAMES.div_ceil(4);
        let latent = (infer_frames + 3 + MOTION_VIDEO_FRAMES) / 4 - motion_latent;
        if latent == 0 || !latent.is_multiple_of(3) {
            return Err(format!(
                "{infer_frames} frames make {latent} latent frames, not whole blocks of 3"
            ));
        }
        let (lat_h, lat_w) = (height / 8, width / 8);
        let tokens_per_frame = (lat_h / 2) * (lat_w / 2);
        let packed: usize = crate::motion::rope_groups(lat_h, lat_w)
            .iter()
            .map(crate::rope::RopeGroup::len)
            .sum();
        Ok(Self {
            tokens_per_frame,
            frames_per_block: 3,
            blocks_per_clip: latent / 3,
            steps: 4,
            sink_tokens: tokens_per_frame + packed,
        })
    }

    pub fn frames_per_clip(&self) -> usize {
        self.frames_per_block * self.blocks_per_clip
    }

    /// Tokens one ring holds (one clip).
    pub fn ring_tokens(&self) -> usize {
        self.frames_per_clip() * self.tokens_per_frame
    }

    /// Noisy tokens of one block forward.
    pub fn block_tokens(&self) -> usize {
        self.frames_per_block * self.tokens_per_frame
    }

    /// Ticks of a streamed clip: pipeline fill, full ticks, drain.
    pub fn ticks(&self) -> usize {
        self.blocks_per_clip + self.steps - 1
    }
}

/// Parameter counts of the DiT, from its module tree.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ParamCounts {
    /// One block (`blocks.N.*`); every block has the same.
    pub per_block: u64,
    /// The audio injectors (resident in the streamed mode).
    pub injectors: u64,
    /// Everything outside `blocks` (injectors included).
    pub resident: u64,
    pub total: u64,
}

impl ParamCounts {
    pub fn of(cfg: &S2vConfig) -> Self {
        let model = WanS2v::<NdArray>::new(cfg, &Default::default());
        let mut c = Self {
            per_block: 0,
            injectors: 0,
            resident: 0,
            total: 0,
        };
        for e in list_params::<NdArray, _>(&model) {
            let n: u64 = e.shape.iter().map(|&d| d as u64).product();
            c.total += n;
            if e.key.starts_with("blocks.0.") {
                c.per_block += n;
            } else if !e.key.starts_with("blocks.") {
                c.resident += n;
                if e.key.starts_with("audio_injector.") {
                    c.injectors += n;
                }
            }
        }
        c
    }
}

/// One line of a memory plan.
#[derive(Debug, Clone, PartialEq)]
pub struct Item {
    pub what: &'static str,
    pub bytes: u64,
}

/// Peak device memory of one mode, item by item.
#[derive(Debug, Clone, PartialEq)]
pub struct Plan {
    pub items: Vec<Item>,
    /// Added by an attention kernel that materialises scores and softmax
    /// (Burn's fallback): `2 · heads · block_tokens · keys` values, one pair at a time.
    pub attention_scores: u64,
}

impl Plan {
    /// Everything at once: the DiT's peak plus the VAE decode as if both were alive.
    pub fn total(&self) -> u64 {
        self.items.iter().map(|i| i.bytes).sum()
    }

    /// The VAE decode runs after the clip's last tick; if the DiT's per-layer buffers
    /// and activations are freed by then, the peak is the larger of the two phases.
    pub fn phased(&self) -> u64 {
        let decode: u64 = self
            .items
            .iter()
            .filter(|i| i.what.starts_with("VAE"))
            .map(|i| i.bytes)
            .sum();
        let always: u64 = self
            .items
            .iter()
            .filter(|i| i.what.starts_with("resident") || i.what.starts_with("all"))
            .map(|i| i.bytes)
            .sum();
        let dit = self.total() - decode - always;
        always + dit.max(decode)
    }
}

fn kv_values(tokens: usize, dim: usize) -> u64 {
    2 * tokens as u64 * dim as u64
}

/// Values alive in one layer forward of one block (input, modulated input, q/k/v and
/// their rotations, the ring+sink keys and values, the re-rotated sink keys, attention
/// and projection outputs, the text keys/values of cross-attention, the FFN hidden and
/// its activation).
fn layer_working_values(cfg: &S2vConfig, g: &Geometry) -> u64 {
    let (len, dim, ffn) = (g.block_tokens() as u64, cfg.dim as u64, cfg.ffn_dim as u64);
    let keys = (g.ring_tokens() + g.sink_tokens) as u64;
    10 * len * dim
        + 2 * len * ffn
        + 2 * keys * dim
        + g.sink_tokens as u64 * dim
        + 2 * cfg.text_len as u64 * dim
}

/// The fallback attention's score and softmax matrices for one block forward.
fn score_values(cfg: &S2vConfig, g: &Geometry) -> u64 {
    let keys = (g.ring_tokens() + g.sink_tokens) as u64;
    2 * cfg.num_heads as u64 * g.block_tokens() as u64 * keys
}

/// Values in the VAE decoder's streaming cache at a `lat_h`×`lat_w` latent: exactly the
/// slots [`crate::vae::decode_cache_shapes`] lists, which the job carry saves too.
pub(crate) fn vae_cache_values(cfg: &VaeConfig, lat_h: usize, lat_w: usize) -> u64 {
    crate::vae::decode_cache_shapes(cfg, lat_h, lat_w)
        .iter()
        .map(|shape| shape.iter().map(|&d| d as u64).product::<u64>())
        .sum()
}

/// Values alive at the decoder's widest point for one latent frame at `width`×`height`:
/// the full-resolution stage (`dim · dim_mult[0]` channels, 4 video frames) holds its input,
/// the normed copy, the conv input with its 2 cached frames (×1.5) and the output, 4.5
/// copies in all. An estimate (see the module docs).
pub(crate) fn vae_working_values(cfg: &VaeConfig, width: usize, height: usize) -> u64 {
    let channels = (cfg.dim * cfg.dim_mult.first().copied().unwrap_or(1)) as u64;
    channels * 4 * (width * height) as u64 * 9 / 2
}

/// Estimated device bytes of decoding one latent frame with the Wan 2.1 VAE at
/// `width`×`height`: decoder weights, the per-conv feature cache
/// ([`vae_cache_values`]) and the widest stage's live tensors ([`vae_working_values`]).
/// Returns (weights, cache, working).
pub fn vae_decode_bytes(width: usize, height: usize, bytes_per_value: usize) -> (u64, u64, u64) {
    let cfg = VaeConfig::wan21();
    let vae = WanVae::<NdArray>::new(&cfg, &Default::default());
    let weights: u64 = list_params::<NdArray, _>(&vae)
        .iter()
        .filter(|e| e.key.starts_with("decoder.") || e.key.starts_with("conv2."))
        .map(|e| e.shape.iter().map(|&d| d as u64).product::<u64>())
        .sum();
    let cache = vae_cache_values(&cfg, height / 8, width / 8);
    let working = vae_working_values(&cfg, width, height);
    let b = bytes_per_value as u64;
    (weights * b, cache * b, working * b)
}

/// The three VAE decode lines of a plan ([`vae_decode_bytes`]).
fn vae_decode_items(width: usize, height: usize, bytes_per_value: usize) -> [Item; 3] {
    let (weights, cache, working) = vae_decode_bytes(width, height, bytes_per_value);
    [
        Item {
            what: "VAE decoder weights",
            bytes: weights,
        },
        Item {
            what: "VAE decode feature cache",
            bytes: cache,
        },
        Item {
            what: "VAE decode working tensors",
            bytes: working,
        },
    ]
}

/// Peak device bytes of the layer-streamed mode (the items of ENGINE.md §5.4).
pub fn streamed_peak(
    cfg: &S2vConfig,
    g: &Geometry,
    width: usize,
    height: usize,
    bytes_per_value: usize,
) -> Plan {
    let b = bytes_per_value as u64;
    let p = ParamCounts::of(cfg);
    let pairs = g.steps.min(g.blocks_per_clip) as u64;
    let rings = g.steps as u64 * kv_values(g.ring_tokens(), cfg.dim);
    let sink = kv_values(g.sink_tokens, cfg.dim);
    let len = g.block_tokens() as u64;
    let vae = vae_decode_items(width, height, bytes_per_value);
    Plan {
        items: [
            Item {
                what: "resident parts (embeddings, head, audio encoder and injectors, packer)",
                bytes: p.resident * b,
            },
            Item {
                what: "resident text context",
                bytes: cfg.text_len as u64 * cfg.dim as u64 * b,
            },
            Item {
                what: "2 layer weight buffers (current + prefetched)",
                bytes: 2 * p.per_block * b,
            },
            Item {
                what: "2 × one layer's rings (current + prefetched)",
                bytes: 2 * rings * b,
            },
            Item {
                what: "2 × one layer's sink slice",
                bytes: 2 * sink * b,
            },
            Item {
                what: "activations: hidden states of the tick's pairs",
                bytes: pairs * len * cfg.dim as u64 * b,
            },
            Item {
                what: "activations: one pair's layer forward",
                bytes: layer_working_values(cfg, g) * b,
            },
        ]
        .into_iter()
        .chain(vae)
        .collect(),
        attention_scores: score_values(cfg, g) * b,
    }
}

/// Peak device bytes of the resident mode, as the engine runs a release: every model's
/// weights (it keeps umT5, wav2vec2 and the VAE encoder for the whole job) and the whole
/// carry on the device, one block forward at a time. Weights, carry and VAE decode are the
/// same sums as [`crate::pipeline::memory_estimate`] (a test holds them equal); its
/// activations differ: it counts the attention scores in them and with a coarser formula,
/// where this plan lists them apart ([`Plan::attention_scores`]).
pub fn resident_peak(
    cfg: &LiveAvatarConfig,
    w2v: &Wav2Vec2Config,
    g: &Geometry,
    width: usize,
    height: usize,
    bytes_per_value: usize,
) -> Plan {
    let b = bytes_per_value as u64;
    let s2v = &cfg.s2v;
    let p = ParamCounts::of(s2v);
    let layers = s2v.num_layers as u64;
    let vae = vae_decode_items(width, height, bytes_per_value);
    let vw = vae[0].bytes;
    let others = crate::pipeline::parameter_count(cfg, w2v) * b - p.total * b - vw;
    let (lat_h, lat_w) = (height / 8, width / 8);
    let lat_motion = MOTION_VIDEO_FRAMES.div_ceil(4) as u64;
    Plan {
        items: [
            Item {
                what: "all DiT weights",
                bytes: p.total * b,
            },
            Item {
                what: "all umT5, wav2vec2 and VAE encoder weights",
                bytes: others,
            },
            Item {
                what: "all rings (carry)",
                bytes: layers * g.steps as u64 * kv_values(g.ring_tokens(), s2v.dim) * b,
            },
            Item {
                what: "all sink slices (carry)",
                bytes: layers * kv_values(g.sink_tokens, s2v.dim) * b,
            },
            Item {
                what: "all motion latents (carry)",
                bytes: cfg.vae.z_dim as u64 * lat_motion * (lat_h * lat_w) as u64 * b,
            },
            Item {
                what: "resident text context",
                bytes: s2v.text_len as u64 * s2v.dim as u64 * b,
            },
            Item {
                what: "activations: one block forward",
                bytes: (g.block_tokens() as u64 * s2v.dim as u64 + layer_working_values(s2v, g))
                    * b,
            },
        ]
        .into_iter()
        .chain(vae)
        .collect(),
        attention_scores: score_values(s2v, g) * b,
    }
}

/// Host↔device bytes of one streamed clip (what [`crate::streamed::run_clip_streamed`]
/// reports): weights once per layer per tick, each pair's ring once per layer, the
/// sink slice once per layer per tick, each pair's written ring slots read back.
pub fn clip_traffic(cfg: &S2vConfig, g: &Geometry, bytes_per_value: usize) -> Traffic {
    let b = bytes_per_value as u64;
    let p = ParamCounts::of(cfg);
    let layers = cfg.num_layers as u64;
    let ticks = g.ticks() as u64;
    let forwards = (g.blocks_per_clip * g.steps) as u64;
    Traffic {
        ticks: g.ticks(),
        layer_uploads: g.ticks() * cfg.num_layers,
        weight_bytes_up: ticks * layers * p.per_block * b,
        ring_bytes_up: forwards * layers * kv_values(g.ring_tokens(), cfg.dim) * b,
        sink_bytes_up: ticks * layers * kv_values(g.sink_tokens, cfg.dim) * b,
        ring_bytes_down: forwards * layers * kv_values(g.block_tokens(), cfg.dim) * b,
    }
}

/// Host↔device bytes of one full tick (all steps in flight): the steady-state cost.
pub fn full_tick_traffic(cfg: &S2vConfig, g: &Geometry, bytes_per_value: usize) -> Traffic {
    let b = bytes_per_value as u64;
    let p = ParamCounts::of(cfg);
    let layers = cfg.num_layers as u64;
    let pairs = g.steps as u64;
    Traffic {
        ticks: 1,
        layer_uploads: cfg.num_layers,
        weight_bytes_up: layers * p.per_block * b,
        ring_bytes_up: pairs * layers * kv_values(g.ring_tokens(), cfg.dim) * b,
        sink_bytes_up: layers * kv_values(g.sink_tokens, cfg.dim) * b,
        ring_bytes_down: pairs * layers * kv_values(g.block_tokens(), cfg.dim) * b,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn release_geometry_and_parameter_counts() {
        let g = Geometry::live_avatar(704, 384, 48).expect("release geometry");
        assert_eq!(g.tokens_per_frame, 44 * 24);
        assert_eq!((g.frames_per_block, g.blocks_per_clip), (3, 4));
        assert_eq!(g.sink_tokens, 2640);
        assert_eq!(g.ring_tokens(), 12672);
        assert_eq!(g.ticks(), 7);
        assert!(Geometry::live_avatar(704, 384, 32).is_err());
        assert!(Geometry::live_avatar(700, 384, 48).is_err());

        let p = ParamCounts::of(&S2vConfig::s2v_14b());
        // ENGINE.md §1.1: ≈351.4M per block, 12 injectors of ≈157M, ≈16.3B in all.
        assert!((351.0e6..352.0e6).contains(&(p.per_block as f64)), "{p:?}");
        assert!((1.8e9..1.95e9).contains(&(p.injectors as f64)), "{p:?}");
        assert!((16.2e9..16.4e9).contains(&(p.total as f64)), "{p:?}");
        assert_eq!(p.total, p.resident + 40 * p.per_block);
    }

    /// The resident plan and the placement profile's accounting
    /// (`pipeline::memory_estimate`) add up the same weights, carry and VAE decode.
    #[test]
    fn resident_plan_and_memory_estimate_count_the_same_parts() {
        use crate::pipeline::{memory_estimate, JobParams};
        let cfg = LiveAvatarConfig::release();
        let w2v = Wav2Vec2Config::large_xlsr53();
        for (width, height, frames) in [(704, 384, 48), (384, 256, 24), (1024, 576, 48)] {
            let g = Geometry::live_avatar(width, height, frames).expect("geometry");
            let plan = resident_peak(&cfg, &w2v, &g, width, height, 2);
            let sum = |words: &[&str]| -> u64 {
                plan.items
                    .iter()
                    .filter(|i| words.iter().any(|w| i.what.contains(w)))
                    .map(|i| i.bytes)
                    .sum()
            };
            let params = JobParams::release_defaults(width, height, frames);
            let e = memory_estimate(&cfg, &w2v, &params, 2).expect("estimate");
            assert_eq!(sum(&["weights"]), e.weights, "{width}*{height}");
            assert_eq!(sum(&["(carry)"]), e.kv, "{width}*{height}");
            assert_eq!(
                sum(&["VAE decode feature cache", "VAE decode working"]),
                e.vae_decode,
                "{width}*{height}"
            );
        }
    }

    #[test]
    fn one_layer_kv_matches_engine_md() {
        // ENGINE.md §5.4: one ring of one layer 259 MB, a sink slice ≈54 MB (bf16).
        let g = Geometry::live_avatar(704, 384, 48).expect("release geometry");
        let ring = kv_values(g.ring_tokens(), 5120) * 2;
        assert_eq!(ring, 2 * 12672 * 5120 * 2);
        assert!((259.0e6..260.0e6).contains(&(ring as f64)));
        let sink = kv_values(g.sink_tokens, 5120) * 2;
        assert!((54.0e6..54.1e6).contains(&(sink as f64)));
    }
}
