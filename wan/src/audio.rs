//! Audio conditioning modules of `WanModel_S2V`: the causal audio encoder
//! (`casual_audio_encoder`, spelled as in the original) and the audio injectors.
//!
//! This session builds their parameter trees (names and shapes match the release);
//! their forward passes are not written yet.

use burn::module::{Module, Param};
use burn::nn::conv::{Conv1d, Conv1dConfig};
use burn::nn::Initializer;
use burn::prelude::*;

use crate::attention::WanAttention;
use crate::nn::TorchLinear;

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
            },
        }
    }
}

/// diffusers `AdaLayerNorm` as the injectors use it: only its `linear` has weights.
#[derive(Module, Debug)]
pub struct AdaLayerNorm<B: Backend> {
    pub linear: TorchLinear<B>,
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
}
