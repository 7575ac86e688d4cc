//! `WanSelfAttention` / `WanCrossAttention`: q/k/v/o projections with RMS norm over
//! the full width on q and k (`qk_norm`), plain softmax attention without mask.
//!
//! Every attention of the crate goes through [`sdpa`] (no mask) or [`sdpa_masked`], both with
//! `scale: None` (the default `1/sqrt(head_dim)`): an explicit scale, an additive bias or a
//! softcap sends burn-cubecl (and burn-tch, for a bias) to the fallback that materialises the
//! score matrix, so only the unmasked call reaches the flash / SDPA kernels.

use burn::module::Module;
use burn::prelude::*;
use burn::tensor::module::attention;
use burn::tensor::ops::AttentionModuleOptions;

use crate::nn::{RmsNorm, TorchLinear};
use crate::rope::RopeTensors;

/// The attention layer of a block (`self_attn`, `cross_attn`) and of an audio
/// injector (`audio_injector.injector.N`): same parameters, same names.
#[derive(Module, Debug)]
pub struct WanAttention<B: Backend> {
    pub q: TorchLinear<B>,
    pub k: TorchLinear<B>,
    pub v: TorchLinear<B>,
    pub o: TorchLinear<B>,
    pub norm_q: RmsNorm<B>,
    pub norm_k: RmsNorm<B>,
    pub num_heads: usize,
}

impl<B: Backend> WanAttention<B> {
    pub fn new(dim: usize, num_heads: usize, eps: f64, device: &B::Device) -> Self {
        Self {
            q: TorchLinear::new(dim, dim, true, device),
            k: TorchLinear::new(dim, dim, true, device),
            v: TorchLinear::new(dim, dim, true, device),
            o: TorchLinear::new(dim, dim, true, device),
            norm_q: RmsNorm::new(dim, eps, device),
            norm_k: RmsNorm::new(dim, eps, device),
            num_heads,
        }
    }

    fn heads(&self, x: Tensor<B, 3>) -> Tensor<B, 4> {
        let [b, l, c] = x.dims();
        x.reshape([b, l, self.num_heads, c / self.num_heads])
    }

    /// Self-attention over `x` `[batch, tokens, dim]`, with q and k rotated by `rope`.
    pub fn forward_self(&self, x: Tensor<B, 3>, rope: &RopeTensors<B>) -> Tensor<B, 3> {
        let q = rope.apply(self.heads(self.norm_q.forward(self.q.forward(x.clone()))));
        let k = rope.apply(self.heads(self.norm_k.forward(self.k.forward(x.clone()))));
        let v = self.heads(self.v.forward(x));
        self.o.forward(sdpa(q, k, v))
    }

    /// Cross-attention from `x` `[batch, tokens, dim]` to `context` `[batch, keys, dim]`.
    pub fn forward_cross(&self, x: Tensor<B, 3>, context: Tensor<B, 3>) -> Tensor<B, 3> {
        let q = self.heads(self.norm_q.forward(self.q.forward(x)));
        let k = self.heads(self.norm_k.forward(self.k.forward(context.clone())));
        let v = self.heads(self.v.forward(context));
        self.o.forward(sdpa(q, k, v))
    }
}

/// Scaled dot-product attention with keys hidden per query: `mask` `[batch or 1, heads or 1,
/// q_tokens, k_tokens]` is `true` where the key is hidden from the query (Burn's convention).
/// Inputs and output as [`sdpa`]. A query row with every key hidden gives zeros.
///
/// The same on every backend: the mask becomes an additive bias (`-inf` where hidden) instead
/// of going to the backend's boolean-mask path, because backends disagree on what `true` means
/// there. burn-tch 0.21 hands Burn's mask to PyTorch's SDPA unchanged, and PyTorch's `true`
/// means "attend", so a boolean mask on LibTorch attends exactly to the hidden keys. With a
/// bias, burn-cubecl and burn-tch both take Burn's reference attention (scores materialised),
/// which adds the bias as given: correct everywhere, at the fallback's speed. (The Live Avatar
/// inference path needs no mask; this is for the code that does.)
pub fn sdpa_masked<B: Backend>(
    q: Tensor<B, 4>,
    k: Tensor<B, 4>,
    v: Tensor<B, 4>,
    mask: Tensor<B, 4, Bool>,
) -> Tensor<B, 3> {
    let [b, lq, h, d] = q.dims();
    let lk = k.dims()[1];
    let mask = mask.expand([b, h, lq, lk]);
    let bias =
        Tensor::<B, 4>::zeros([b, h, lq, lk], &q.device()).mask_fill(mask, f32::NEG_INFINITY);
    let out = attention(
        q.swap_dims(1, 2),
        k.swap_dims(1, 2),
        v.swap_dims(1, 2),
        None,
        Some(bias),
        AttentionModuleOptions {
            scale: None,
            softcap: None,
            is_causal: false,
        },
    );
    out.swap_dims(1, 2).reshape([b, lq, h * d])
}

/// Scaled dot-product attention on `[batch, tokens, heads, head_dim]` inputs, scale
/// `1/sqrt(head_dim)`, all keys visible; returns `[batch, tokens, heads * head_dim]`.
pub fn sdpa<B: Backend>(q: Tensor<B, 4>, k: Tensor<B, 4>, v: Tensor<B, 4>) -> Tensor<B, 3> {
    let [b, l, h, d] = q.dims();
    let out = attention(
        q.swap_dims(1, 2),
        k.swap_dims(1, 2),
        v.swap_dims(1, 2),
        None,
        None,
        AttentionModuleOptions {
            scale: None,
            softcap: None,
            is_causal: false,
        },
    );
    out.swap_dims(1, 2).reshape([b, l, h * d])
}
