//! Merging a LoRA into the DiT at load time: `W ← W + (alpha / rank) · B · A` for every
//! adapted linear layer (Live Avatar: rank 128, alpha 64, on q/k/v/o/ffn.0/ffn.2 of the
//! blocks and of the audio injectors).
//!
//! The merge happens in f32 and the result is cast back to the weight's dtype, so a
//! bf16 checkpoint stays bf16 after the merge. The LoRA file's key format is read as
//! peft writes it: `[base_model.model.]<module path>.lora_A[.default].weight` and the
//! matching `lora_B` (the released file's exact format is unverified, see README).

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use burn::module::Param;
use burn::prelude::*;
use burn::tensor::DType;
use burn_store::{ModuleStore, SafetensorsStore, TensorSnapshot};

use crate::block::S2vBlock;
use crate::config::S2vConfig;
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
    if linear.is_fp8() {
        return Err(WanError::Lora {
            message: "the layer is already stored as fp8: merge the LoRA before the fp8 conversion"
                .into(),
        });
    }
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
pub(crate) fn parse_key(key: &str) -> Option<(String, bool)> {
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

/// One adapted layer of a LoRA file: the module path and its `lora_A` / `lora_B` entries.
struct LoraPair {
    a_key: String,
    b_key: String,
    a: TensorSnapshot,
    b: TensorSnapshot,
}

/// A LoRA file known from its header: every `lora_A` / `lora_B` pair by the module path it
/// adapts. Nothing is read until a pair is merged.
pub struct LoraFile {
    path: PathBuf,
    pairs: BTreeMap<String, LoraPair>,
    /// The open store (memory map) the snapshots read from.
    _store: SafetensorsStore,
}

/// The linear layers Live Avatar's LoRA adapts in a DiT of `cfg`, by module path: peft's
/// targets `q, k, v, o, ffn.0, ffn.2` match each block's self- and cross-attention
/// projections and feed-forward matrices and the audio injectors' attention projections
/// (40 × 10 + 12 × 4 = 448 layers, 896 tensors, in the 14B release).
pub fn lora_targets(cfg: &S2vConfig) -> Vec<String> {
    let mut out = Vec::new();
    for n in 0..cfg.num_layers {
        for attn in ["self_attn", "cross_attn"] {
            for p in ["q", "k", "v", "o"] {
                out.push(format!("blocks.{n}.{attn}.{p}"));
            }
        }
        out.push(format!("blocks.{n}.ffn.0"));
        out.push(format!("blocks.{n}.ffn.2"));
    }
    for n in 0..cfg.audio_inject_layers.len() {
        for p in ["q", "k", "v", "o"] {
            out.push(format!("audio_injector.injector.{n}.{p}"));
        }
    }
    out
}

impl LoraFile {
    /// Reads the header of the LoRA at `path`. Fails naming the file and key when a tensor is
    /// not a LoRA matrix or a pair is incomplete.
    pub fn open(path: &Path) -> Result<Self, WanError> {
        let store_err = |e: &dyn std::fmt::Display| WanError::Store {
            path: path.to_path_buf(),
            message: e.to_string(),
        };
        if !path.exists() {
            return Err(WanError::Io {
                path: path.to_path_buf(),
                source: std::io::Error::new(std::io::ErrorKind::NotFound, "LoRA file not found"),
            });
        }
        let mut store = SafetensorsStore::from_file(path);
        let snapshots = store.get_all_snapshots().map_err(|e| store_err(&e))?;
        let mut halves: BTreeMap<String, [Option<String>; 2]> = BTreeMap::new();
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
            halves.entry(module).or_default()[usize::from(!is_a)] = Some(key.clone());
        }
        let mut pairs = BTreeMap::new();
        for (module, [a_key, b_key]) in halves {
            let (Some(a_key), Some(b_key)) = (a_key.clone(), b_key.clone()) else {
                let present = a_key.or(b_key).unwrap_or_default();
                return Err(WanError::BadTensor {
                    path: path.to_path_buf(),
                    key: present,
                    message: format!("the other LoRA matrix of `{module}` is missing"),
                });
            };
            for key in [&a_key, &b_key] {
                let shape = snapshots[key].shape.to_vec();
                if shape.len() != 2 {
                    return Err(WanError::BadTensor {
                        path: path.to_path_buf(),
                        key: key.clone(),
                        message: format!("expected a matrix, found shape {shape:?}"),
                    });
                }
            }
            let pair = LoraPair {
                a: snapshots[&a_key].clone(),
                b: snapshots[&b_key].clone(),
                a_key,
                b_key,
            };
            pairs.insert(module, pair);
        }
        Ok(Self {
            path: path.to_path_buf(),
            pairs,
            _store: store,
        })
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    /// The module paths the file adapts.
    pub fn targets(&self) -> impl Iterator<Item = &str> {
        self.pairs.keys().map(String::as_str)
    }

    /// Adapted layers (each one `lora_A` and one `lora_B` tensor).
    pub fn len(&self) -> usize {
        self.pairs.len()
    }

    pub fn is_empty(&self) -> bool {
        self.pairs.is_empty()
    }

    /// Requires the file to adapt exactly the layers in `expected` ([`lora_targets`]): a
    /// partial LoRA is refused with the counts and the first layers it lacks, never merged in
    /// part; a layer outside the list is refused by name.
    pub fn require_targets(&self, expected: &[String]) -> Result<(), WanError> {
        let missing: Vec<&String> = expected
            .iter()
            .filter(|t| !self.pairs.contains_key(*t))
            .collect();
        if !missing.is_empty() {
            let shown: Vec<&str> = missing.iter().take(5).map(|s| s.as_str()).collect();
            return Err(WanError::LoraIncomplete {
                path: self.path.clone(),
                found: self.pairs.len(),
                expected: expected.len(),
                missing: format!(
                    "{}{}",
                    shown.join(", "),
                    if missing.len() > shown.len() {
                        format!(" and {} more", missing.len() - shown.len())
                    } else {
                        String::new()
                    }
                ),
            });
        }
        if let Some((module, pair)) = self
            .pairs
            .iter()
            .find(|(m, _)| !expected.iter().any(|e| e == *m))
        {
            return Err(WanError::BadTensor {
                path: self.path.clone(),
                key: pair.a_key.clone(),
                message: format!("`{module}` is not a layer Live Avatar's LoRA adapts"),
            });
        }
        Ok(())
    }

    fn load<B: Backend>(
        &self,
        key: &str,
        snap: &TensorSnapshot,
        device: &B::Device,
    ) -> Result<Tensor<B, 2>, WanError> {
        let data = snap.to_data().map_err(|e| WanError::BadTensor {
            path: self.path.clone(),
            key: key.to_string(),
            message: e.to_string(),
        })?;
        Ok(Tensor::from_data(data, device))
    }

    /// Merges the pair of `module` into `target` with scale `alpha / rank`.
    fn merge_pair<B: Backend>(
        &self,
        module: &str,
        target: &mut TorchLinear<B>,
        alpha: f64,
    ) -> Result<(), WanError> {
        let pair = &self.pairs[module];
        let device = target.weight.lazy_device();
        let a = self.load::<B>(&pair.a_key, &pair.a, &device)?;
        let b = self.load::<B>(&pair.b_key, &pair.b, &device)?;
        let rank = a.dims()[0];
        merge_into(target, a, b, lora_scale(alpha, rank)).map_err(|e| WanError::BadTensor {
            path: self.path.clone(),
            key: pair.a_key.clone(),
            message: e.to_string(),
        })
    }

    fn not_adaptable(&self, module: &str) -> WanError {
        WanError::BadTensor {
            path: self.path.clone(),
            key: self.pairs[module].a_key.clone(),
            message: format!("`{module}` is not a LoRA-adaptable linear layer of the model"),
        }
    }

    /// Merges every pair outside `blocks` (the audio injectors) into `model`. Returns the
    /// layers merged.
    pub fn merge_resident<B: Backend>(
        &self,
        model: &mut WanS2v<B>,
        alpha: f64,
    ) -> Result<usize, WanError> {
        let mut merged = 0;
        for module in self.pairs.keys().filter(|m| !m.starts_with("blocks.")) {
            let target = model
                .lora_target_mut(module)
                .ok_or_else(|| self.not_adaptable(module))?;
            self.merge_pair(module, target, alpha)?;
            merged += 1;
        }
        Ok(merged)
    }

    /// Merges the pairs of block `layer` into `block`. Returns the layers merged.
    pub fn merge_block<B: Backend>(
        &self,
        layer: usize,
        block: &mut S2vBlock<B>,
        alpha: f64,
    ) -> Result<usize, WanError> {
        let prefix = format!("blocks.{layer}.");
        let mut merged = 0;
        let modules: Vec<&String> = self
            .pairs
            .keys()
            .filter(|m| m.starts_with(&prefix))
            .collect();
        let mut linears = block.linears_mut();
        for module in modules {
            let inner = &module[prefix.len()..];
            let target = linears
                .iter_mut()
                .find(|(name, _)| name == inner)
                .map(|(_, l)| &mut **l)
                .ok_or_else(|| self.not_adaptable(module))?;
            self.merge_pair(module, target, alpha)?;
            merged += 1;
        }
        Ok(merged)
    }
}

/// Merges every LoRA pair in the safetensors file at `path` into `model` with scale
/// `alpha / rank`. Returns the number of merged layers. Fails naming the file and key
/// when a pair is incomplete, targets a layer that is not adaptable, or does not fit.
/// Any subset of layers may be adapted here; the pipeline requires Live Avatar's full set
/// ([`LoraFile::require_targets`]).
pub fn merge_lora_file<B: Backend>(
    mut model: WanS2v<B>,
    path: &Path,
    alpha: f64,
) -> Result<(WanS2v<B>, usize), WanError> {
    let lora = LoraFile::open(path)?;
    let modules: Vec<String> = lora.pairs.keys().cloned().collect();
    for module in &modules {
        let target = model
            .lora_target_mut(module)
            .ok_or_else(|| lora.not_adaptable(module))?;
        lora.merge_pair(module, target, alpha)?;
    }
    Ok((model, modules.len()))
}
