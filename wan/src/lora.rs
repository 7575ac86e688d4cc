//! Merging a LoRA into the DiT at load time: `W ← W + (alpha / rank) · B · A` for every
//! adapted linear layer (Live Avatar: rank 128, alpha 64, on q/k/v/o/ffn.0/ffn.2 of the
//! blocks and of the audio injectors).
//!
//! The merge happens in f32 and the result is cast back to the weight's dtype, so a
//! bf16 checkpoint stays bf16 after the merge. The LoRA file's key format is read as
//! peft writes it: `[base_model.model.]<module path>.lora_A[.default].weight` and the
//! matching `lora_B` (the released file's exact format is unverified, see README).

use std::collections::BTreeMap;
use std::path::Path;

use burn::module::Param;
use burn::prelude::*;
use burn::tensor::DType;
use burn_store::{ModuleStore, SafetensorsStore};

use crate::error::WanError;
use crate::model::WanS2v;
use crate::nn::TorchLinear;

/// Live Avatar's LoRA alpha (`liveavatar/configs/s2v_causal_sft.yaml`).
pub const LIVE_AVATAR_ALPHA: f64 = 64.0;

/// Scale of a LoRA update: `alpha / rank` (0.5 for Live Avatar).
pub fn lora_scale(alpha: f64, rank: usize) -> f64 {
    alpha / rank as f64
}

/// Merges `B · A · scale` into `linear.weight`. `a` is `lora_A` `[rank, in]`,
/// `b` is `lora_B` `[out, rank]` (PyTorch/peft layouts).
pub fn merge_into<B: Backend>(
    linear: &mut TorchLinear<B>,
    a: Tensor<B, 2>,
    b: Tensor<B, 2>,
    scale: f64,
) -> Result<(), WanError> {
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
    let delta = b.cast(DType::F32).matmul(a.cast(DType::F32)) * scale;
    let merged = (w.cast(DType::F32) + delta).cast(dtype);
    linear.weight = Param::initialized(linear.weight.id, merged);
    Ok(())
}

/// The module path a peft LoRA key adapts, and whether it is the A or the B matrix.
fn parse_key(key: &str) -> Option<(String, bool)> {
    let key = key.strip_prefix("base_model.model.").unwrap_or(key);
    for (suffix, is_a) in [
        (".lora_A.default.weight", true),
        (".lora_A.weight", true),
        (".lora_B.default.weight", false),
        (".lora_B.weight", false),
    ] {
        if let Some(path) = key.strip_suffix(suffix) {
            return Some((path.to_string(), is_a));
        }
    }
    None
}

impl<B: Backend> WanS2v<B> {
    /// The linear layer a LoRA may adapt at `path` (`blocks.N.self_attn.q`,
    /// `blocks.N.ffn.2`, `audio_injector.injector.N.o`, ...).
    pub fn lora_target_mut(&mut self, path: &str) -> Option<&mut TorchLinear<B>> {
        let parts: Vec<&str> = path.split('.').collect();
        match parts.as_slice() {
            ["blocks", n, "self_attn", p] => attention_linear(
                &mut self.blocks.get_mut(n.parse::<usize>().ok()?)?.self_attn,
                p,
            ),
            ["blocks", n, "cross_attn", p] => attention_linear(
                &mut self.blocks.get_mut(n.parse::<usize>().ok()?)?.cross_attn,
                p,
            ),
            ["blocks", n, "ffn", i] => {
                let block = self.blocks.get_mut(n.parse::<usize>().ok()?)?;
                block.ffn.get_mut(i.parse::<usize>().ok()?)?.as_mut()
            }
            ["audio_injector", "injector", n, p] => attention_linear(
                self.audio_injector
                    .injector
                    .get_mut(n.parse::<usize>().ok()?)?,
                p,
            ),
            _ => None,
        }
    }
}

fn attention_linear<'a, B: Backend>(
    a: &'a mut crate::attention::WanAttention<B>,
    p: &str,
) -> Option<&'a mut TorchLinear<B>> {
    match p {
        "q" => Some(&mut a.q),
        "k" => Some(&mut a.k),
        "v" => Some(&mut a.v),
        "o" => Some(&mut a.o),
        _ => None,
    }
}

/// Merges every LoRA pair in the safetensors file at `path` into `model` with scale
/// `alpha / rank`. Returns the number of merged layers. Fails naming the file and key
/// when a pair is incomplete, targets a layer that is not adaptable, or does not fit.
pub fn merge_lora_file<B: Backend>(
    mut model: WanS2v<B>,
    path: &Path,
    alpha: f64,
) -> Result<(WanS2v<B>, usize), WanError> {
    let store_err = |e: &dyn std::fmt::Display| WanError::Store {
        path: path.to_path_buf(),
        message: e.to_string(),
    };
    let mut store = SafetensorsStore::from_file(path);
    let snapshots = store.get_all_snapshots().map_err(|e| store_err(&e))?;
    let mut pairs: BTreeMap<String, [Option<String>; 2]> = BTreeMap::new();
    for key in snapshots.keys() {
        let Some((module, is_a)) = parse_key(key) else {
            return Err(WanError::BadTensor {
                path: path.to_path_buf(),
                key: key.clone(),
                message:
                    "not a LoRA matrix (expected `<module>.lora_A.weight` or `.lora_B.weight`)"
                        .into(),
            });
        };
        pairs.entry(module).or_default()[usize::from(!is_a)] = Some(key.clone());
    }
    let device = model.patch_embedding.weight.lazy_device();
    let mut merged = 0;
    for (module, [a_key, b_key]) in pairs {
        let (Some(a_key), Some(b_key)) = (a_key.clone(), b_key.clone()) else {
            let present = a_key.or(b_key).unwrap_or_default();
            return Err(WanError::BadTensor {
                path: path.to_path_buf(),
                key: present,
                message: format!("the other LoRA matrix of `{module}` is missing"),
            });
        };
        let load = |key: &str| -> Result<Tensor<B, 2>, WanError> {
            let snap = &snapshots[key];
            if snap.shape.len() != 2 {
                return Err(WanError::BadTensor {
                    path: path.to_path_buf(),
                    key: key.to_string(),
                    message: format!("expected a matrix, found shape {:?}", snap.shape.to_vec()),
                });
            }
            let data = snap.to_data().map_err(|e| WanError::BadTensor {
                path: path.to_path_buf(),
                key: key.to_string(),
                message: e.to_string(),
            })?;
            Ok(Tensor::from_data(data, &device))
        };
        let (a, b) = (load(&a_key)?, load(&b_key)?);
        let rank = a.dims()[0];
        let target = model
            .lora_target_mut(&module)
            .ok_or_else(|| WanError::BadTensor {
                path: path.to_path_buf(),
                key: a_key.clone(),
                message: format!("`{module}` is not a LoRA-adaptable linear layer of the model"),
            })?;
        merge_into(target, a, b, lora_scale(alpha, rank)).map_err(|e| WanError::BadTensor {
            path: path.to_path_buf(),
            key: a_key.clone(),
            message: e.to_string(),
        })?;
        merged += 1;
    }
    Ok((model, merged))
}
