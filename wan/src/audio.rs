//! Audio conditioning modules of `WanModel_S2V`: the causal audio encoder
//! (`casual_audio_encoder`, spelled as in the original) and the audio injectors.
//!
//! In the non-causal model and in Live Avatar alike, the audio features of a stretch
//! of video frames are prefixed with [`MOTION_FRAMES`] copies of their first frame,
//! encoded, and the first [`LAT_MOTION_FRAMES`] encoded frames are dropped, leaving one
//! set of audio tokens per latent frame.

use burn::module::{Module, Param};
use burn::nn::conv::{Conv1d, Conv1dConfig};
use burn::nn::Initializer;
use burn::prelude::*;

use crate::attention::WanAttention;
use crate::nn::{layer_norm, TorchLinear};
use burn::tensor::activation::silu;

/// Video frames of motion context the audio is padded with (`motion_frames[0]`).
pub const MOTION_FRAMES: usize = 73;
/// Latent frames those motion frames encode to (`motion_frames[1]`).
pub const LAT_MOTION_FRAMES: usize = 19;
/// Epsilon of the audio encoder's layer norms.
const ENCODER_EPS: f64 = 1e-6;
/// Epsilon of diffusers' `AdaLayerNorm` (its default; the injectors do not set it).
const ADAIN_EPS: f64 = 1e-5;

/// `CausalConv1d`: a `conv` with left replicate padding applied by the caller.
#[derive(Module, Debug)]
pub struct CausalConv1d<B: Backend> {
    pub conv: Conv1d<B>,
}

impl<B: Backend> CausalConv1d<B> {
    pub fn new(
        c_in: usize,
        c_out: usize,
        kernel: usize,
        stride: usize,
        device: &B::Device,
    ) -> Self {
        Self {
            conv: Conv1dConfig::new(c_in, c_out, kernel)
                .with_stride(stride)
                .init(device),
        }
    }

    /// `x`: `[batch, channels, time]`; pads `kernel - 1` copies of the first frame on
    /// the left (replicate padding), then convolves without padding.
    pub fn forward(&self, x: Tensor<B, 3>) -> Tensor<B, 3> {
        let k = self.conv.weight.dims()[2];
        if k <= 1 {
            return self.conv.forward(x);
        }
        let first = x.clone().narrow(2, 0, 1).repeat_dim(2, k - 1);
        self.conv.forward(Tensor::cat(vec![first, x], 2))
    }
}

/// `MotionEncoder_tc`: causal conv stack from audio features to audio tokens.
#[derive(Module, Debug)]
pub struct MotionEncoderTc<B: Backend> {
    pub conv1_local: CausalConv1d<B>,
    pub conv1_global: CausalConv1d<B>,
    pub conv2: CausalConv1d<B>,
    pub conv3: CausalConv1d<B>,
    pub final_linear: TorchLinear<B>,
    /// `[1, 1, 1, hidden]`: the learned token appended to each frame's audio tokens.
    pub padding_tokens: Param<Tensor<B, 4>>,
    /// Audio tokens per frame made by the local path (`num_heads` in the original).
    pub num_token: usize,
}

/// `[b, t, c]` → LayerNorm (no affine) → SiLU, the step between the encoder's convs.
fn norm_act<B: Backend>(x: Tensor<B, 3>) -> Tensor<B, 3> {
    silu(layer_norm(x, ENCODER_EPS))
}

impl<B: Backend> MotionEncoderTc<B> {
    /// `x`: `[b, t, audio_dim]` → (global `[b, t', 1, hidden]`, local
    /// `[b, t', num_token + 1, hidden]`), `t' ≈ t / 4`.
    pub fn forward(&self, x: Tensor<B, 3>) -> (Tensor<B, 4>, Tensor<B, 4>) {
        let [b, t, _] = x.dims();
        let x = x.swap_dims(1, 2); // b c t
        let n = self.num_token;

        // Local path: n token streams of width hidden/4, folded into the batch.
        let y = self.conv1_local.forward(x.clone()); // b (n c) t
        let c4 = y.dims()[1] / n;
        let y = y
            .reshape([b, n, c4, t])
            .reshape([b * n, c4, t])
            .swap_dims(1, 2);
        let y = self.tail(norm_act(y));
        let [_, t3, hidden] = y.dims();
        let y = y.reshape([b, n, t3, hidden]).swap_dims(1, 2); // b t n c
        let pad = self.padding_tokens.val().repeat_dim(0, b).repeat_dim(1, t3);
        let local = Tensor::cat(vec![y, pad], 2);

        // Global path: one stream, then the final linear.
        let g = self.conv1_global.forward(x).swap_dims(1, 2);
        let g = self.final_linear.forward(self.tail(norm_act(g)));
        let global = g.reshape([b, t3, 1, hidden]);
        (global, local)
    }

    /// conv2 → norm → SiLU → conv3 → norm → SiLU on `[b, t, c]` (shared by both paths).
    fn tail(&self, x: Tensor<B, 3>) -> Tensor<B, 3> {
        let x = norm_act(self.conv2.forward(x.swap_dims(1, 2)).swap_dims(1, 2));
        norm_act(self.conv3.forward(x.swap_dims(1, 2)).swap_dims(1, 2))
    }
}

/// `CausalAudioEncoder`: learned mix of the wav2vec2 hidden states, then the encoder.
#[derive(Module, Debug)]
pub struct CausalAudioEncoder<B: Backend> {
    /// `[1, layers, 1, 1]`: mixing weights (SiLU-normalised at use).
    pub weights: Param<Tensor<B, 4>>,
    pub encoder: MotionEncoderTc<B>,
}

impl<B: Backend> CausalAudioEncoder<B> {
    /// `audio_dim` in, `hidden` (the DiT width) out, `num_token` tokens per frame.
    pub fn new(
        audio_dim: usize,
        layers: usize,
        hidden: usize,
        num_token: usize,
        device: &B::Device,
    ) -> Self {
        Self {
            weights: Initializer::Constant { value: 0.01 }.init([1, layers, 1, 1], device),
            encoder: MotionEncoderTc {
                conv1_local: CausalConv1d::new(audio_dim, hidden / 4 * num_token, 3, 1, device),
                conv1_global: CausalConv1d::new(audio_dim, hidden / 4, 3, 1, device),
                conv2: CausalConv1d::new(hidden / 4, hidden / 2, 3, 2, device),
                conv3: CausalConv1d::new(hidden / 2, hidden, 3, 2, device),
                final_linear: TorchLinear::new(hidden, hidden, true, device),
                padding_tokens: Initializer::Zeros.init([1, 1, 1, hidden], device),
                num_token,
            },
        }
    }

    /// `features`: `[b, layers, audio_dim, frames]` (the wav2vec2 hidden states per
    /// video frame) → (global, local) tokens as [`MotionEncoderTc::forward`].
    pub fn forward(&self, features: Tensor<B, 4>) -> (Tensor<B, 4>, Tensor<B, 4>) {
        let w = silu(self.weights.val());
        let total = w.clone().sum_dim(1);
        let mixed = (features * w / total).sum_dim(1); // b 1 a t
        let [b, _, a, t] = mixed.dims();
        self.encoder
            .forward(mixed.reshape([b, a, t]).swap_dims(1, 2))
    }

    /// The non-causal model's audio step: prefix [`MOTION_FRAMES`] copies of the first
    /// frame, encode, drop the first [`LAT_MOTION_FRAMES`] encoded frames. Returns
    /// (global `[b, f, 1, c]`, local `[b, f, tokens, c]`) for `f` latent frames.
    pub fn encode_clip(&self, features: Tensor<B, 4>) -> (Tensor<B, 4>, Tensor<B, 4>) {
        let first = features
            .clone()
            .narrow(3, 0, 1)
            .repeat_dim(3, MOTION_FRAMES);
        let (global, local) = self.forward(Tensor::cat(vec![first, features], 3));
        let keep = global.dims()[1] - LAT_MOTION_FRAMES;
        (
            global.narrow(1, LAT_MOTION_FRAMES, keep),
            local.narrow(1, LAT_MOTION_FRAMES, keep),
        )
    }
}

/// diffusers `AdaLayerNorm` as the injectors use it (`chunk_dim=1`): only its
/// `linear` has weights.
#[derive(Module, Debug)]
pub struct AdaLayerNorm<B: Backend> {
    pub linear: TorchLinear<B>,
}

impl<B: Backend> AdaLayerNorm<B> {
    /// `x`: `[n, tokens, c]`, `temb`: `[n, c]` → `LN(x) * (1 + scale) + shift` with
    /// `(shift, scale) = linear(SiLU(temb))` (shift first, as diffusers' chunk_dim=1).
    pub fn forward(&self, x: Tensor<B, 3>, temb: Tensor<B, 2>) -> Tensor<B, 3> {
        let [n, _, c] = x.dims();
        let t = self.linear.forward(silu(temb));
        let shift = t.clone().narrow(1, 0, c).reshape([n, 1, c]);
        let scale = t.narrow(1, c, c).reshape([n, 1, c]);
        layer_norm(x, ADAIN_EPS) * (scale + 1.0) + shift
    }
}

/// `AudioInjector_WAN`: one cross-attention and one AdaLN per injected block.
#[derive(Module, Debug)]
pub struct AudioInjector<B: Backend> {
    pub injector: Vec<WanAttention<B>>,
    pub injector_adain_layers: Vec<AdaLayerNorm<B>>,
}

impl<B: Backend> AudioInjector<B> {
    pub fn new(dim: usize, num_heads: usize, count: usize, eps: f64, device: &B::Device) -> Self {
        Self {
            injector: (0..count)
                .map(|_| WanAttention::new(dim, num_heads, eps, device))
                .collect(),
            injector_adain_layers: (0..count)
                .map(|_| AdaLayerNorm {
                    linear: TorchLinear::new(dim, 2 * dim, true, device),
                })
                .collect(),
        }
    }

    /// Runs injector `id` on the first `noisy_len` tokens of `hidden` `[1, tokens, c]`
    /// (the noisy latent frames, `noisy_len / frames` tokens each): per latent frame,
    /// AdaLN driven by the frame's global audio token, then cross-attention to the
    /// frame's audio tokens. The result is added to those tokens only; reference and
    /// motion tokens pass unchanged.
    pub fn inject(
        &self,
        id: usize,
        hidden: Tensor<B, 3>,
        noisy_len: usize,
        global: &Tensor<B, 4>,
        local: &Tensor<B, 4>,
    ) -> Tensor<B, 3> {
        let [_, total, c] = hidden.dims();
        let [_, frames, tokens, _] = local.dims();
        let per_frame = noisy_len / frames;
        let x = hidden
            .clone()
            .narrow(1, 0, noisy_len)
            .reshape([frames, per_frame, c]);
        let temb = global.clone().reshape([frames, c]);
        let normed = self.injector_adain_layers[id].forward(x, temb);
        let audio = local.clone().reshape([frames, tokens, c]);
        let residual = self.injector[id]
            .forward_cross(normed, audio)
            .reshape([1, noisy_len, c]);
        let noisy = hidden.clone().narrow(1, 0, noisy_len) + residual;
        if total == noisy_len {
            noisy
        } else {
            Tensor::cat(
                vec![noisy, hidden.narrow(1, noisy_len, total - noisy_len)],
                1,
            )
        }
    }
}
