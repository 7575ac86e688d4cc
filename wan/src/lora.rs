//! Merging a LoRA into the DiT at load time: `W ← W + (alpha / rank) · B · A` for every
//! adapted linear layer (Live Avatar: rank 128, alpha 64, on q/k/v/o/ffn.0/ffn.2).
//!
//! The merge happens in f32 and the result is cast back to the weight's dtype, so a
//! bf16 checkpoint stays bf16 after the merge.

use burn::module::Param;
use burn::prelude::*;

use crate::error::WanError;
use crate::nn::TorchLinear;

/// Scale of a LoRA update: `alpha / rank` (0.5 for Live Avatar).
pub fn lora_scale(alpha: f64, rank: usize) -> f64 {
    alpha / rank as f64
}

/// Merges `B · A · scale` into `linear.weight`. `a` is `lora_A` `[rank, in]`,
/// `b` is `lora_B` `[out, rank]` (PyTorch/peft layouts).
pub fn merge_into<B: Backend>(
    linear: TorchLinear<B>,
    a: Tensor<B, 2>,
    b: Tensor<B, 2>,
    scale: f64,
) -> Result<TorchLinear<B>, WanError> {
    let w = linear.weight.val();
    let [out, d_in] = w.dims();
    let [rank_a, a_in] = a.dims();
    let [b_out, rank_b] = b.dims();
    if a_in != d_in || b_out != out || rank_a != rank_b {
        return Err(WanError::Lora {
            message: format!(
                "shapes do not fit: weight [{out}, {d_in}], lora_A [{rank_a}, {a_in}], lora_B [{b_out}, {rank_b}]"
            ),
        });
    }
    let dtype = w.dtype();
    let delta = b
        .cast(burn::tensor::DType::F32)
        .matmul(a.cast(burn::tensor::DType::F32))
        * scale;
    let merged = (w.cast(burn::tensor::DType::F32) + delta).cast(dtype);
    Ok(TorchLinear {
        weight: Param::initialized(linear.weight.id, merged),
        bias: linear.bias,
    })
}
