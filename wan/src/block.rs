//! `WanS2VAttentionBlock` and `Head_S2V`, with modulation given per token segment.
//!
//! The reference modulates noisy tokens with e(t) and reference/motion tokens with
//! e(0) (`zero_timestep`); Live Avatar's causal model gives each latent frame its
//! own t. Both are "consecutive runs of tokens sharing one modulation vector", which
//! is what [`Segment`] describes: the block never materialises a per-token
//! modulation tensor (that would be tokens × 6 × 5120 floats at full size).

use burn::module::{Module, Param};
use burn::nn::Initializer;
use burn::prelude::*;

use crate::attention::WanAttention;
use crate::nn::{
    gelu_tanh, layer_norm, seq_linear, sparse_sequential, LayerNorm, SparseSequential, TorchLinear,
};
use crate::rope::RopeTensors;

/// A run of `tokens` consecutive tokens that share one modulation input `e`.
/// For a block, `e` is the time projection `[batch, 6, dim]`; for the head it is the
/// time embedding `[batch, 1, dim]`.
#[derive(Debug, Clone)]
pub struct Segment<B: Backend> {
    pub tokens: usize,
    pub e: Tensor<B, 3>,
}

/// Applies `f(x_part, e_part)` to each token segment and concatenates the results.
fn per_segment<B: Backend>(
    x: Tensor<B, 3>,
    segments: &[Segment<B>],
    f: impl Fn(Tensor<B, 3>, &Tensor<B, 3>) -> Tensor<B, 3>,
) -> Tensor<B, 3> {
    let mut start = 0;
    let mut parts = Vec::with_capacity(segments.len());
    for s in segments {
        if s.tokens == 0 {
            continue;
        }
        parts.push(f(x.clone().narrow(1, start, s.tokens), &s.e));
        start += s.tokens;
    }
    Tensor::cat(parts, 1)
}

/// Row `i` of a `[batch, n, dim]` modulation tensor, as `[batch, 1, dim]`.
fn row<B: Backend>(e: &Tensor<B, 3>, i: usize) -> Tensor<B, 3> {
    e.clone().narrow(1, i, 1)
}

/// One DiT block (`blocks.N`).
#[derive(Module, Debug)]
pub struct S2vBlock<B: Backend> {
    pub self_attn: WanAttention<B>,
    pub norm3: LayerNorm<B>,
    pub cross_attn: WanAttention<B>,
    /// `ffn.0` and `ffn.2` (a tanh-GELU sits at index 1).
    pub ffn: SparseSequential<B>,
    /// `[1, 6, dim]`: shift/scale/gate for attention, shift/scale/gate for the FFN.
    pub modulation: Param<Tensor<B, 3>>,
    pub eps: f64,
}

impl<B: Backend> S2vBlock<B> {
    pub fn new(dim: usize, ffn_dim: usize, num_heads: usize, eps: f64, device: &B::Device) -> Self {
        Self {
            self_attn: WanAttention::new(dim, num_heads, eps, device),
            norm3: LayerNorm::new(dim, eps, true, device),
            cross_attn: WanAttention::new(dim, num_heads, eps, device),
            ffn: sparse_sequential(3, &[(0, dim, ffn_dim), (2, ffn_dim, dim)], device),
            modulation: Initializer::Normal {
                mean: 0.0,
                std: 1.0 / (dim as f64).sqrt(),
            }
            .init([1, 6, dim], device),
            eps,
        }
    }

    /// The block's linear layers with their paths inside the block (`self_attn.q`, ...,
    /// `cross_attn.o`, `ffn.0`, `ffn.2`), in that order.
    pub fn linears_mut(&mut self) -> Vec<(String, &mut TorchLinear<B>)> {
        let mut out = Vec::with_capacity(10);
        for (name, a) in [
            ("self_attn", &mut self.self_attn),
            ("cross_attn", &mut self.cross_attn),
        ] {
            out.push((format!("{name}.q"), &mut a.q));
            out.push((format!("{name}.k"), &mut a.k));
            out.push((format!("{name}.v"), &mut a.v));
            out.push((format!("{name}.o"), &mut a.o));
        }
        for (i, l) in self.ffn.iter_mut().enumerate() {
            if let Some(l) = l.as_mut() {
                out.push((format!("ffn.{i}"), l));
            }
        }
        out
    }

    /// Stores every linear weight of the block as fp8 (all of them are fp8 targets).
    pub fn to_fp8(&mut self) {
        for (_, l) in self.linears_mut() {
            l.to_fp8();
        }
    }

    /// Gives a fresh (unallocated) block the structure of an fp8 block.
    pub fn fp8_skeleton(&mut self) {
        for (_, l) in self.linears_mut() {
            l.fp8_skeleton();
        }
    }

    /// `x`: `[batch, tokens, dim]`; `segments` cover all tokens in order, each with its
    /// time projection `[batch, 6, dim]`; `context`: the embedded text `[batch, keys, dim]`.
    pub fn forward(
        &self,
        x: Tensor<B, 3>,
        segments: &[Segment<B>],
        rope: &RopeTensors<B>,
        context: Tensor<B, 3>,
    ) -> Tensor<B, 3> {
        self.forward_around(x, segments, context, |attn_in| {
            self.self_attn.forward_self(attn_in, rope)
        })
    }

    /// The block's modulated self-attention, cross-attention and FFN around a self-attention
    /// given as `attn` (normed, modulated input → attention output before the residual gate):
    /// [`Self::forward`] passes plain self-attention, the causal loop one over its caches.
    pub fn forward_around(
        &self,
        x: Tensor<B, 3>,
        segments: &[Segment<B>],
        context: Tensor<B, 3>,
        attn: impl FnOnce(Tensor<B, 3>) -> Tensor<B, 3>,
    ) -> Tensor<B, 3> {
        let m = self.modulation.val();
        let segs: Vec<Segment<B>> = segments
            .iter()
            .map(|s| Segment {
                tokens: s.tokens,
                e: s.e.clone() + m.clone(),
            })
            .collect();

        let normed = layer_norm(x.clone(), self.eps);
        let attn_in = per_segment(normed, &segs, |p, e| p * (row(e, 1) + 1.0) + row(e, 0));
        let x = x + per_segment(attn(attn_in), &segs, |p, e| p * row(e, 2));

        let x = x.clone()
            + self
                .cross_attn
                .forward_cross(self.norm3.forward(x), context);

        let normed = layer_norm(x.clone(), self.eps);
        let ffn_in = per_segment(normed, &segs, |p, e| p * (row(e, 4) + 1.0) + row(e, 3));
        let y =
            seq_linear(&self.ffn, 2).forward(gelu_tanh(seq_linear(&self.ffn, 0).forward(ffn_in)));
        x + per_segment(y, &segs, |p, e| p * row(e, 5))
    }
}

/// The output head (`head`): modulated layer norm and a linear to patch pixels.
#[derive(Module, Debug)]
pub struct S2vHead<B: Backend> {
    pub head: TorchLinear<B>,
    /// `[1, 2, dim]`: shift and scale.
    pub modulation: Param<Tensor<B, 3>>,
    pub eps: f64,
}

impl<B: Backend> S2vHead<B> {
    pub fn new(dim: usize, out_features: usize, eps: f64, device: &B::Device) -> Self {
        Self {
            head: TorchLinear::new(dim, out_features, true, device),
            modulation: Initializer::Normal {
                mean: 0.0,
                std: 1.0 / (dim as f64).sqrt(),
            }
            .init([1, 2, dim], device),
            eps,
        }
    }

    /// `segments` carry the time embedding `[batch, 1, dim]` of each token run.
    pub fn forward(&self, x: Tensor<B, 3>, segments: &[Segment<B>]) -> Tensor<B, 3> {
        let m = self.modulation.val();
        let normed = layer_norm(x, self.eps);
        let y = per_segment(normed, segments, |p, e| {
            let e = e.clone().repeat_dim(1, 2) + m.clone();
            p * (row(&e, 1) + 1.0) + row(&e, 0)
        });
        self.head.forward(y)
    }
}
