//! The Wan 2.1 video VAE (`Wan2.1_VAE.pth`, wan22 `vae2_1.py::WanVAE_`): module tree
//! only in this session, named after the original keys (`encoder.downsamples.3.
//! residual.2.weight`, ...). The forward passes (causal time padding, per-layer
//! feature cache for chunked decoding) are not ported yet.
//!
//! The original's `nn.Sequential`s mix layer kinds; here they are `Vec`s of enums.
//! Burn names enum variants in module paths, so loading must skip them
//! (`skip_enum_variants`), and [`crate::keys::list_params`] leaves them out.

use burn::module::{Module, Param};
use burn::nn::conv::{Conv2d, Conv2dConfig, Conv3d, Conv3dConfig};
use burn::nn::{Initializer, PaddingConfig2d, PaddingConfig3d};
use burn::prelude::*;

/// Shape settings of the VAE.
#[derive(Debug, Clone, PartialEq)]
pub struct VaeConfig {
    pub dim: usize,
    pub z_dim: usize,
    pub dim_mult: Vec<usize>,
    pub num_res_blocks: usize,
    /// Which of the downsampling stages also halve time (reversed for the decoder).
    pub temporal_downsample: Vec<bool>,
}

impl VaeConfig {
    /// The released Wan 2.1 VAE.
    pub fn wan21() -> Self {
        Self {
            dim: 96,
            z_dim: 16,
            dim_mult: vec![1, 2, 4, 4],
            num_res_blocks: 2,
            temporal_downsample: vec![false, true, true],
        }
    }
}

/// `RMS_norm(images=False)`: gain `[dim, 1, 1, 1]` over channels of a video.
#[derive(Module, Debug)]
pub struct VideoRmsNorm<B: Backend> {
    pub gamma: Param<Tensor<B, 4>>,
}

/// `RMS_norm(images=True)`: gain `[dim, 1, 1]` over channels of an image.
#[derive(Module, Debug)]
pub struct ImageRmsNorm<B: Backend> {
    pub gamma: Param<Tensor<B, 3>>,
}

/// One entry of a residual or head `nn.Sequential` that has weights.
// Module trees are built once per model and hold tensor handles; the enum's size in
// memory does not matter, and boxing would change nothing in the key paths.
#[allow(clippy::large_enum_variant)]
#[derive(Module, Debug)]
pub enum NormOrConv<B: Backend> {
    Norm(VideoRmsNorm<B>),
    Conv(Conv3d<B>),
}

#[derive(Module, Debug)]
pub struct ResidualBlock<B: Backend> {
    /// norm (0), SiLU, conv (2), norm (3), SiLU, dropout, conv (6).
    pub residual: Vec<Option<NormOrConv<B>>>,
    /// 1×1×1 conv when the width changes.
    pub shortcut: Option<Conv3d<B>>,
}

#[derive(Module, Debug)]
pub struct AttentionBlock<B: Backend> {
    pub norm: ImageRmsNorm<B>,
    pub to_qkv: Conv2d<B>,
    pub proj: Conv2d<B>,
}

#[derive(Module, Debug)]
pub struct Resample<B: Backend> {
    /// The spatial conv sits at index 1 (after the upsampling or zero padding).
    pub resample: Vec<Option<Conv2d<B>>>,
    /// Temporal conv of the 3-D modes.
    pub time_conv: Option<Conv3d<B>>,
}

#[allow(clippy::large_enum_variant)]
#[derive(Module, Debug)]
pub enum VaeLayer<B: Backend> {
    Residual(ResidualBlock<B>),
    Attention(AttentionBlock<B>),
    Resample(Resample<B>),
}

#[derive(Module, Debug)]
pub struct Encoder3d<B: Backend> {
    pub conv1: Conv3d<B>,
    pub downsamples: Vec<VaeLayer<B>>,
    pub middle: Vec<VaeLayer<B>>,
    pub head: Vec<Option<NormOrConv<B>>>,
}

#[derive(Module, Debug)]
pub struct Decoder3d<B: Backend> {
    pub conv1: Conv3d<B>,
    pub middle: Vec<VaeLayer<B>>,
    pub upsamples: Vec<VaeLayer<B>>,
    pub head: Vec<Option<NormOrConv<B>>>,
}

/// `WanVAE_`: encoder, the two 1×1×1 latent convs, decoder.
#[derive(Module, Debug)]
pub struct WanVae<B: Backend> {
    pub encoder: Encoder3d<B>,
    pub conv1: Conv3d<B>,
    pub conv2: Conv3d<B>,
    pub decoder: Decoder3d<B>,
}

fn causal3d<B: Backend>(c_in: usize, c_out: usize, k: usize, device: &B::Device) -> Conv3d<B> {
    // Causal padding is applied by the forward pass (2·p frames in front, none after);
    // the conv itself pads only in space.
    let p = k / 2;
    Conv3dConfig::new([c_in, c_out], [k, k, k])
        .with_padding(PaddingConfig3d::Explicit(0, p, p))
        .init(device)
}

fn video_norm<B: Backend>(dim: usize, device: &B::Device) -> NormOrConv<B> {
    NormOrConv::Norm(VideoRmsNorm {
        gamma: Initializer::Ones.init([dim, 1, 1, 1], device),
    })
}

fn residual<B: Backend>(c_in: usize, c_out: usize, device: &B::Device) -> VaeLayer<B> {
    let mut seq: Vec<Option<NormOrConv<B>>> = (0..7).map(|_| None).collect();
    seq[0] = Some(video_norm(c_in, device));
    seq[2] = Some(NormOrConv::Conv(causal3d(c_in, c_out, 3, device)));
    seq[3] = Some(video_norm(c_out, device));
    seq[6] = Some(NormOrConv::Conv(causal3d(c_out, c_out, 3, device)));
    VaeLayer::Residual(ResidualBlock {
        residual: seq,
        shortcut: (c_in != c_out).then(|| causal3d(c_in, c_out, 1, device)),
    })
}

fn attention<B: Backend>(dim: usize, device: &B::Device) -> VaeLayer<B> {
    VaeLayer::Attention(AttentionBlock {
        norm: ImageRmsNorm {
            gamma: Initializer::Ones.init([dim, 1, 1], device),
        },
        to_qkv: Conv2dConfig::new([dim, dim * 3], [1, 1]).init(device),
        proj: Conv2dConfig::new([dim, dim], [1, 1]).init(device),
    })
}

fn head<B: Backend>(c_in: usize, c_out: usize, device: &B::Device) -> Vec<Option<NormOrConv<B>>> {
    vec![
        Some(video_norm(c_in, device)),
        None,
        Some(NormOrConv::Conv(causal3d(c_in, c_out, 3, device))),
    ]
}

enum Mode {
    Up { temporal: bool },
    Down { temporal: bool },
}

fn resample<B: Backend>(dim: usize, mode: Mode, device: &B::Device) -> VaeLayer<B> {
    let (conv, time_conv) = match mode {
        Mode::Up { temporal } => (
            Conv2dConfig::new([dim, dim / 2], [3, 3])
                .with_padding(PaddingConfig2d::Explicit(1, 1, 1, 1))
                .init(device),
            temporal.then(|| {
                Conv3dConfig::new([dim, dim * 2], [3, 1, 1])
                    .with_padding(PaddingConfig3d::Explicit(0, 0, 0))
                    .init(device)
            }),
        ),
        Mode::Down { temporal } => (
            Conv2dConfig::new([dim, dim], [3, 3])
                .with_stride([2, 2])
                .init(device),
            temporal.then(|| {
                Conv3dConfig::new([dim, dim], [3, 1, 1])
                    .with_stride([2, 1, 1])
                    .init(device)
            }),
        ),
    };
    VaeLayer::Resample(Resample {
        resample: vec![None, Some(conv)],
        time_conv,
    })
}

impl<B: Backend> WanVae<B> {
    /// Builds the module tree with lazily initialised parameters (attention only in the
    /// middle blocks: the release has no `attn_scales`).
    pub fn new(cfg: &VaeConfig, device: &B::Device) -> Self {
        let d = cfg.dim;
        let stages = cfg.dim_mult.len();

        // Encoder: widths dim·[1, mult...], two residual blocks per stage, a
        // downsampling resample after every stage but the last.
        let dims: Vec<usize> = std::iter::once(1)
            .chain(cfg.dim_mult.iter().copied())
            .map(|m| d * m)
            .collect();
        let mut downsamples = Vec::new();
        for i in 0..stages {
            let (mut c_in, c_out) = (dims[i], dims[i + 1]);
            for _ in 0..cfg.num_res_blocks {
                downsamples.push(residual(c_in, c_out, device));
                c_in = c_out;
            }
            if i != stages - 1 {
                let temporal = cfg.temporal_downsample.get(i).copied().unwrap_or(false);
                downsamples.push(resample(c_out, Mode::Down { temporal }, device));
            }
        }
        let top = dims[stages];
        let encoder = Encoder3d {
            conv1: causal3d(3, dims[0], 3, device),
            downsamples,
            middle: vec![
                residual(top, top, device),
                attention(top, device),
                residual(top, top, device),
            ],
            head: head(top, cfg.z_dim * 2, device),
        };

        // Decoder: widths dim·[mult_last, reversed mult...]; stages after the first take
        // half the width in (the upsampling conv halves it), three residual blocks each.
        let dims: Vec<usize> = std::iter::once(*cfg.dim_mult.last().unwrap_or(&1))
            .chain(cfg.dim_mult.iter().rev().copied())
            .map(|m| d * m)
            .collect();
        let temporal_up: Vec<bool> = cfg.temporal_downsample.iter().rev().copied().collect();
        let mut upsamples = Vec::new();
        for i in 0..stages {
            let (mut c_in, c_out) = (dims[i], dims[i + 1]);
            if (1..=3).contains(&i) {
                c_in /= 2;
            }
            for _ in 0..cfg.num_res_blocks + 1 {
                upsamples.push(residual(c_in, c_out, device));
                c_in = c_out;
            }
            if i != stages - 1 {
                let temporal = temporal_up.get(i).copied().unwrap_or(false);
                upsamples.push(resample(c_out, Mode::Up { temporal }, device));
            }
        }
        let z2 = cfg.z_dim * 2;
        let decoder = Decoder3d {
            conv1: causal3d(cfg.z_dim, dims[0], 3, device),
            middle: vec![
                residual(dims[0], dims[0], device),
                attention(dims[0], device),
                residual(dims[0], dims[0], device),
            ],
            upsamples,
            head: head(dims[stages], 3, device),
        };
        Self {
            encoder,
            conv1: causal3d(z2, z2, 1, device),
            conv2: causal3d(cfg.z_dim, cfg.z_dim, 1, device),
            decoder,
        }
    }
}

/// `F.normalize`'s floor on the norm.
const NORMALIZE_EPS: f64 = 1e-12;

impl<B: Backend> VideoRmsNorm<B> {
    /// `x / max(‖x‖_channels, 1e-12) · sqrt(C) · gamma` on `[b, c, t, h, w]`.
    pub fn forward(&self, x: Tensor<B, 5>) -> Tensor<B, 5> {
        let c = x.dims()[1];
        let norm = x
            .clone()
            .powi_scalar(2)
            .sum_dim(1)
            .sqrt()
            .clamp_min(NORMALIZE_EPS);
        x / norm * (c as f64).sqrt() * self.gamma.val().unsqueeze::<5>()
    }
}

impl<B: Backend> ImageRmsNorm<B> {
    /// As [`VideoRmsNorm::forward`] on images `[n, c, h, w]`.
    pub fn forward(&self, x: Tensor<B, 4>) -> Tensor<B, 4> {
        let c = x.dims()[1];
        let norm = x
            .clone()
            .powi_scalar(2)
            .sum_dim(1)
            .sqrt()
            .clamp_min(NORMALIZE_EPS);
        x / norm * (c as f64).sqrt() * self.gamma.val().unsqueeze::<4>()
    }
}

/// `CausalConv3d.forward`: `kernel_t - 1` frames of left context in time — the cached
/// frames of the previous chunk when given, zeros for the rest — and none after.
pub fn causal_conv3d<B: Backend>(
    conv: &Conv3d<B>,
    x: Tensor<B, 5>,
    cache: Option<Tensor<B, 5>>,
) -> Tensor<B, 5> {
    let mut pad = conv.weight.dims()[2].saturating_sub(1);
    let mut x = x;
    if let (Some(cache), true) = (cache, pad > 0) {
        pad -= cache.dims()[2].min(pad);
        x = Tensor::cat(vec![cache, x], 2);
    }
    if pad > 0 {
        let [b, c, _, h, w] = x.dims();
        let zeros = Tensor::zeros([b, c, pad, h, w], &x.device());
        x = Tensor::cat(vec![zeros, x], 2);
    }
    conv.forward(x)
}

impl<B: Backend> NormOrConv<B> {
    fn forward(&self, x: Tensor<B, 5>) -> Tensor<B, 5> {
        match self {
            NormOrConv::Norm(n) => n.forward(x),
            NormOrConv::Conv(c) => causal_conv3d(c, x, None),
        }
    }
}

impl<B: Backend> ResidualBlock<B> {
    /// The block on a whole chunk without a feature cache (the reference's
    /// `feat_cache=None` path): norm, SiLU, conv, norm, SiLU, conv, plus the shortcut.
    pub fn forward(&self, x: Tensor<B, 5>) -> Tensor<B, 5> {
        let h = match &self.shortcut {
            Some(conv) => causal_conv3d(conv, x.clone(), None),
            None => x.clone(),
        };
        let mut y = x;
        for (i, layer) in self.residual.iter().enumerate() {
            y = match layer {
                Some(l) => l.forward(y),
                // Indices 1 and 4 are SiLU, 5 is dropout (identity at inference).
                None if i == 1 || i == 4 => burn::tensor::activation::silu(y),
                None => y,
            };
        }
        y + h
    }
}

impl<B: Backend> AttentionBlock<B> {
    /// Single-head self-attention over each frame's pixels, plus the input.
    pub fn forward(&self, x: Tensor<B, 5>) -> Tensor<B, 5> {
        let [b, c, t, h, w] = x.dims();
        let frames = x.clone().permute([0, 2, 1, 3, 4]).reshape([b * t, c, h, w]);
        let qkv = self.to_qkv.forward(self.norm.forward(frames)); // bt 3c h w
        let qkv = qkv.reshape([b * t, 1, 3 * c, h * w]).swap_dims(2, 3); // bt 1 hw 3c
        let q = qkv.clone().narrow(3, 0, c);
        let k = qkv.clone().narrow(3, c, c);
        let v = qkv.narrow(3, 2 * c, c);
        let out = burn::tensor::module::attention(
            q,
            k,
            v,
            None,
            None,
            burn::tensor::ops::AttentionModuleOptions {
                scale: None,
                softcap: None,
                is_causal: false,
            },
        ); // bt 1 hw c
        let out = out
            .reshape([b * t, h * w, c])
            .swap_dims(1, 2)
            .reshape([b * t, c, h, w]);
        let out = self.proj.forward(out);
        out.reshape([b, t, c, h, w]).permute([0, 2, 1, 3, 4]) + x
    }
}

/// Frames of context a cached causal conv keeps from the previous chunk (`CACHE_T`).
const CACHE_T: usize = 2;

/// One slot of the decoder's per-layer feature cache (`feat_cache` in the original).
#[derive(Debug, Clone)]
pub enum CacheSlot<B: Backend> {
    /// Nothing seen yet.
    Empty,
    /// An upsampling layer has seen its first chunk (the original's `'Rep'` marker):
    /// the first chunk is not doubled in time, later ones are.
    Repeat,
    /// The last input frames of the layer.
    Frames(Tensor<B, 5>),
}

/// The decoder's feature cache: one slot per cached layer, in forward order. Decoding
/// one latent frame at a time with this cache gives the same result as the original's
/// chunked decode; carrying it between clips is what lets a stream decode clip by clip.
#[derive(Debug, Clone)]
pub struct DecodeCache<B: Backend> {
    slots: Vec<CacheSlot<B>>,
    next: usize,
}

impl<B: Backend> Default for DecodeCache<B> {
    fn default() -> Self {
        Self {
            slots: Vec::new(),
            next: 0,
        }
    }
}

impl<B: Backend> DecodeCache<B> {
    /// Takes the next slot (creating it on the first chunk).
    fn take(&mut self) -> (usize, CacheSlot<B>) {
        let i = self.next;
        self.next += 1;
        if self.slots.len() <= i {
            self.slots.push(CacheSlot::Empty);
        }
        (i, std::mem::replace(&mut self.slots[i], CacheSlot::Empty))
    }

    fn put(&mut self, i: usize, slot: CacheSlot<B>) {
        self.slots[i] = slot;
    }

    fn start_chunk(&mut self) {
        self.next = 0;
    }

    /// The slots in forward order (for saving a streaming decoder's state).
    pub fn slots(&self) -> &[CacheSlot<B>] {
        &self.slots
    }

    /// A cache holding `slots` (as [`DecodeCache::slots`] returned them), ready for the
    /// next chunk.
    pub fn from_slots(slots: Vec<CacheSlot<B>>) -> Self {
        Self { slots, next: 0 }
    }
}

/// Shapes `[1, channels, CACHE_T, h, w]` of the decoder's cache slots, in forward order,
/// once at least two latent frames went through it, for latents of `lat_h × lat_w`.
/// Mirrors [`WanVae::new`]'s decoder and the slots its forward pass takes.
pub fn decode_cache_shapes(cfg: &VaeConfig, lat_h: usize, lat_w: usize) -> Vec<[usize; 5]> {
    let d = cfg.dim;
    let stages = cfg.dim_mult.len();
    let dims: Vec<usize> = std::iter::once(*cfg.dim_mult.last().unwrap_or(&1))
        .chain(cfg.dim_mult.iter().rev().copied())
        .map(|m| d * m)
        .collect();
    let temporal_up: Vec<bool> = cfg.temporal_downsample.iter().rev().copied().collect();
    let (mut h, mut w) = (lat_h, lat_w);
    let mut out = vec![[1, cfg.z_dim, CACHE_T, h, w]];
    // Middle: two residual blocks (two cached convs each) around the attention block.
    for _ in 0..2 {
        out.push([1, dims[0], CACHE_T, h, w]);
        out.push([1, dims[0], CACHE_T, h, w]);
    }
    for i in 0..stages {
        let (mut c_in, c_out) = (dims[i], dims[i + 1]);
        if (1..=3).contains(&i) {
            c_in /= 2;
        }
        for _ in 0..cfg.num_res_blocks + 1 {
            out.push([1, c_in, CACHE_T, h, w]);
            out.push([1, c_out, CACHE_T, h, w]);
            c_in = c_out;
        }
        if i != stages - 1 {
            if temporal_up.get(i).copied().unwrap_or(false) {
                out.push([1, c_out, CACHE_T, h, w]);
            }
            h *= 2;
            w *= 2;
        }
    }
    out.push([1, dims[stages], CACHE_T, h, w]);
    out
}

/// The last `CACHE_T` frames of `x`, topped up with the last cached frame when the
/// chunk is a single frame (the original's "cache last frame of last two chunks").
fn frames_to_cache<B: Backend>(x: &Tensor<B, 5>, old: &CacheSlot<B>) -> Tensor<B, 5> {
    let t = x.dims()[2];
    let keep = t.min(CACHE_T);
    let last = x.clone().narrow(2, t - keep, keep);
    match old {
        CacheSlot::Frames(prev) if keep < CACHE_T => {
            let n = prev.dims()[2];
            Tensor::cat(vec![prev.clone().narrow(2, n - 1, 1), last], 2)
        }
        _ => last,
    }
}

/// A causal conv that reads and refreshes its cache slot.
fn cached_conv<B: Backend>(
    conv: &Conv3d<B>,
    x: Tensor<B, 5>,
    cache: &mut DecodeCache<B>,
) -> Tensor<B, 5> {
    let (i, old) = cache.take();
    let new = frames_to_cache(&x, &old);
    let context = match old {
        CacheSlot::Frames(f) => Some(f),
        _ => None,
    };
    let y = causal_conv3d(conv, x, context);
    cache.put(i, CacheSlot::Frames(new));
    y
}

fn norm_or_conv_cached<B: Backend>(
    seq: &[Option<NormOrConv<B>>],
    x: Tensor<B, 5>,
    cache: &mut DecodeCache<B>,
) -> Tensor<B, 5> {
    let mut y = x;
    for (i, layer) in seq.iter().enumerate() {
        y = match layer {
            Some(NormOrConv::Norm(n)) => n.forward(y),
            Some(NormOrConv::Conv(c)) => cached_conv(c, y, cache),
            // SiLU sits right after each norm (indices 1 and 4); index 5 is dropout.
            None if i == 1 || i == 4 => burn::tensor::activation::silu(y),
            None => y,
        };
    }
    y
}

/// Nearest 2× spatial upsampling of `[n, c, h, w]` (`nearest-exact` at scale 2).
fn upsample2x<B: Backend>(x: Tensor<B, 4>) -> Tensor<B, 4> {
    let [n, c, h, w] = x.dims();
    let x: Tensor<B, 6> = x.reshape([n, c, h, 1, w, 1]);
    x.repeat_dim(3, 2)
        .repeat_dim(5, 2)
        .reshape([n, c, 2 * h, 2 * w])
}

impl<B: Backend> Resample<B> {
    /// The decoder's upsampling step on one chunk: from the second chunk on, the
    /// temporal conv doubles the frames; then each frame is upsampled 2× and convolved.
    fn forward_up(&self, x: Tensor<B, 5>, cache: &mut DecodeCache<B>) -> Tensor<B, 5> {
        let mut x = x;
        if let Some(time_conv) = &self.time_conv {
            let (i, old) = cache.take();
            match old {
                CacheSlot::Empty => cache.put(i, CacheSlot::Repeat),
                old => {
                    let [b, c, t, h, w] = x.dims();
                    let keep = t.min(CACHE_T);
                    let last = x.clone().narrow(2, t - keep, keep);
                    let new = match (&old, keep < CACHE_T) {
                        (CacheSlot::Frames(prev), true) => {
                            let n = prev.dims()[2];
                            Tensor::cat(vec![prev.clone().narrow(2, n - 1, 1), last], 2)
                        }
                        (CacheSlot::Repeat, true) => {
                            Tensor::cat(vec![last.clone().zeros_like(), last], 2)
                        }
                        _ => last,
                    };
                    let context = match old {
                        CacheSlot::Frames(f) => Some(f),
                        _ => None,
                    };
                    let y = causal_conv3d(time_conv, x, context); // b 2c t h w
                    cache.put(i, CacheSlot::Frames(new));
                    // Channels (2, c) become two consecutive frames per input frame.
                    let y: Tensor<B, 6> = y.reshape([b, 2, c, t, h, w]);
                    x = y.permute([0, 2, 3, 1, 4, 5]).reshape([b, c, 2 * t, h, w]);
                }
            }
        }
        let [b, c, t, h, w] = x.dims();
        let frames = x.permute([0, 2, 1, 3, 4]).reshape([b * t, c, h, w]);
        let conv = self
            .resample
            .get(1)
            .and_then(Option::as_ref)
            .expect("resample layers are built with their conv at index 1");
        let y = conv.forward(upsample2x(frames));
        let [_, c2, h2, w2] = y.dims();
        y.reshape([b, t, c2, h2, w2]).permute([0, 2, 1, 3, 4])
    }
}

impl<B: Backend> Resample<B> {
    /// The encoder's downsampling step on one chunk: each frame zero-padded on the
    /// right and bottom and convolved with stride 2; in the 3-D mode, from the second
    /// chunk on, the temporal conv halves the frames using the previous chunk's last one.
    fn forward_down(&self, x: Tensor<B, 5>, cache: &mut DecodeCache<B>) -> Tensor<B, 5> {
        let [b, c, t, h, w] = x.dims();
        let frames = x.permute([0, 2, 1, 3, 4]).reshape([b * t, c, h, w]);
        let device = frames.device();
        let frames = Tensor::cat(vec![frames, Tensor::zeros([b * t, c, h, 1], &device)], 3);
        let frames = Tensor::cat(
            vec![frames, Tensor::zeros([b * t, c, 1, w + 1], &device)],
            2,
        );
        let conv = self
            .resample
            .get(1)
            .and_then(Option::as_ref)
            .expect("resample layers are built with their conv at index 1");
        let y = conv.forward(frames);
        let [_, c2, h2, w2] = y.dims();
        let x = y.reshape([b, t, c2, h2, w2]).permute([0, 2, 1, 3, 4]);
        let Some(time_conv) = &self.time_conv else {
            return x;
        };
        let (i, old) = cache.take();
        match old {
            CacheSlot::Frames(prev) => {
                let t = x.dims()[2];
                let last = x.clone().narrow(2, t - 1, 1);
                let n = prev.dims()[2];
                let y = time_conv.forward(Tensor::cat(vec![prev.narrow(2, n - 1, 1), x], 2));
                cache.put(i, CacheSlot::Frames(last));
                y
            }
            _ => {
                cache.put(i, CacheSlot::Frames(x.clone()));
                x
            }
        }
    }
}

impl<B: Backend> VaeLayer<B> {
    /// One layer on a chunk; resamples go up in the decoder, down in the encoder.
    fn forward_cached(
        &self,
        x: Tensor<B, 5>,
        cache: &mut DecodeCache<B>,
        upsampling: bool,
    ) -> Tensor<B, 5> {
        match self {
            VaeLayer::Residual(r) => {
                let h = match &r.shortcut {
                    Some(conv) => causal_conv3d(conv, x.clone(), None),
                    None => x.clone(),
                };
                norm_or_conv_cached(&r.residual, x, cache) + h
            }
            VaeLayer::Attention(a) => a.forward(x),
            VaeLayer::Resample(r) if upsampling => r.forward_up(x, cache),
            VaeLayer::Resample(r) => r.forward_down(x, cache),
        }
    }
}

impl<B: Backend> Encoder3d<B> {
    /// Encodes one chunk of video frames `[b, 3, t, h, w]`, reading and refreshing
    /// `cache`; returns `[b, 2·z, t', h/8, w/8]`.
    pub fn forward(&self, x: Tensor<B, 5>, cache: &mut DecodeCache<B>) -> Tensor<B, 5> {
        cache.start_chunk();
        let mut x = cached_conv(&self.conv1, x, cache);
        for layer in self.downsamples.iter().chain(&self.middle) {
            x = layer.forward_cached(x, cache, false);
        }
        norm_or_conv_cached(&self.head, x, cache)
    }
}

impl<B: Backend> Decoder3d<B> {
    /// Decodes one chunk of latent frames `[b, z, t, h, w]` after `conv2`, reading and
    /// refreshing `cache`.
    pub fn forward(&self, x: Tensor<B, 5>, cache: &mut DecodeCache<B>) -> Tensor<B, 5> {
        cache.start_chunk();
        let mut x = cached_conv(&self.conv1, x, cache);
        for layer in self.middle.iter().chain(&self.upsamples) {
            x = layer.forward_cached(x, cache, true);
        }
        norm_or_conv_cached(&self.head, x, cache)
    }
}

impl<B: Backend> WanVae<B> {
    /// `WanVAE_.encode`: the encoder on the first frame, then on chunks of 4 frames,
    /// with its feature cache; `conv1`; the mean half normalised per channel,
    /// `(mu − mean) · (1/std)`. Video `[b, 3, 1 + 4k, h, w]` → latents `[b, z, 1 + k, h/8, w/8]`.
    pub fn encode(&self, video: Tensor<B, 5>, mean: &[f32], std: &[f32]) -> Tensor<B, 5> {
        let device = video.device();
        let channel = |v: Vec<f32>| {
            let n = v.len();
            Tensor::<B, 1>::from_data(TensorData::new(v, [n]), &device).reshape([1, n, 1, 1, 1])
        };
        let t = video.dims()[2];
        let mut cache = DecodeCache::default();
        let mut chunks = vec![self
            .encoder
            .forward(video.clone().narrow(2, 0, 1), &mut cache)];
        let mut start = 1;
        while start < t {
            let len = (t - start).min(4);
            chunks.push(
                self.encoder
                    .forward(video.clone().narrow(2, start, len), &mut cache),
            );
            start += len;
        }
        let out = causal_conv3d(&self.conv1, Tensor::cat(chunks, 2), None);
        let z = mean.len();
        let mu = out.narrow(1, 0, z);
        let inv_std: Vec<f32> = std.iter().map(|s| 1.0 / s).collect();
        (mu - channel(mean.to_vec())) * channel(inv_std)
    }

    /// `WanVAE_.decode`: un-normalise the latents (`z · std + mean` per channel),
    /// `conv2`, then the decoder one latent frame at a time with its feature cache.
    /// Returns video `[b, 3, 1 + 4·(t − 1), 8·h, 8·w]` (not clamped).
    pub fn decode(&self, z: Tensor<B, 5>, mean: &[f32], std: &[f32]) -> Tensor<B, 5> {
        self.decode_stream(z, mean, std, &mut DecodeCache::default())
    }

    /// Streaming decode: [`WanVae::decode`] of the next latents `[b, z, t, h, w]` of a
    /// longer sequence, continuing from `cache` (fresh for the first piece). Decoding a
    /// sequence piece by piece this way gives the frames of decoding it at once: the
    /// first latent frame of the sequence makes 1 video frame, every later one 4.
    pub fn decode_stream(
        &self,
        z: Tensor<B, 5>,
        mean: &[f32],
        std: &[f32],
        cache: &mut DecodeCache<B>,
    ) -> Tensor<B, 5> {
        let device = z.device();
        let channel =
            |v: &[f32]| {
                Tensor::<B, 1>::from_data(TensorData::new(v.to_vec(), [v.len()]), &device)
                    .reshape([1, v.len(), 1, 1, 1])
            };
        let z = z * channel(std) + channel(mean);
        let x = causal_conv3d(&self.conv2, z, None);
        let t = x.dims()[2];
        let chunks: Vec<Tensor<B, 5>> = (0..t)
            .map(|i| self.decoder.forward(x.clone().narrow(2, i, 1), cache))
            .collect();
        Tensor::cat(chunks, 2)
    }
}
