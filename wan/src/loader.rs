//! Loading the S2V DiT from a model directory laid out as the public release
//! (`Wan2.2-S2V-14B/`): `diffusion_pytorch_model-0000N-of-0000M.safetensors` shards
//! plus `diffusion_pytorch_model.safetensors.index.json` (`weight_map`: key → shard),
//! or a single `diffusion_pytorch_model.safetensors`.
//!
//! Shards are memory-mapped by burn-store. Every float tensor takes the backend's float
//! dtype as it is read (`for_backend`): the release's bf16 stays bf16 on a bf16 backend
//! and is widened (exactly) to f32 on an f32 one, and the VAE's f32 becomes the backend's
//! dtype too, so a module never mixes dtypes. Keys need no remapping: the module tree is
//! named after them. Every tensor the model expects must be found exactly once with its
//! exact shape, and every tensor in the files must belong to the model; otherwise loading
//! fails naming the file, the key and both shapes.

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};

use burn::prelude::*;
use burn::tensor::{DType, Element};
use burn_store::{
    ApplyError, ModuleAdapter, ModuleSnapshot, ModuleStore, PyTorchToBurnAdapter, PytorchStore,
    SafetensorsStore, TensorSnapshot,
};

use crate::error::WanError;
use crate::keys::list_params;
use crate::model::WanS2v;

mod split;
pub use split::S2vSource;

/// Index file of the sharded DiT.
pub const S2V_INDEX: &str = "diffusion_pytorch_model.safetensors.index.json";
/// Single-file DiT (small or converted checkpoints).
pub const S2V_SINGLE: &str = "diffusion_pytorch_model.safetensors";

/// What a successful load touched.
#[derive(Debug, Clone, PartialEq)]
pub struct LoadReport {
    pub files: Vec<PathBuf>,
    pub tensors: usize,
}

/// The shard files of the DiT in `dir`, from the index when there is one.
pub fn s2v_shards(dir: &Path) -> Result<Vec<PathBuf>, WanError> {
    let index = dir.join(S2V_INDEX);
    if !index.exists() {
        let single = dir.join(S2V_SINGLE);
        if single.exists() {
            return Ok(vec![single]);
        }
        return Err(WanError::Io {
            path: index,
            source: std::io::Error::new(
                std::io::ErrorKind::NotFound,
                format!("neither {S2V_INDEX} nor {S2V_SINGLE} is in the model directory"),
            ),
        });
    }
    let text = std::fs::read_to_string(&index).map_err(|source| WanError::Io {
        path: index.clone(),
        source,
    })?;
    let json: serde_json::Value = serde_json::from_str(&text).map_err(|e| WanError::BadIndex {
        path: index.clone(),
        message: e.to_string(),
    })?;
    let map = json
        .get("weight_map")
        .and_then(serde_json::Value::as_object)
        .ok_or_else(|| WanError::BadIndex {
            path: index.clone(),
            message: "no `weight_map` object".into(),
        })?;
    let mut files = BTreeSet::new();
    for (key, file) in map {
        let file = file.as_str().ok_or_else(|| WanError::BadIndex {
            path: index.clone(),
            message: format!("`weight_map.{key}` is not a file name"),
        })?;
        if file.contains('/') || file.contains("..") {
            return Err(WanError::BadIndex {
                path: index.clone(),
                message: format!("`weight_map.{key}` points outside the directory: {file}"),
            });
        }
        files.insert(file.to_string());
    }
    Ok(files.into_iter().map(|f| dir.join(f)).collect())
}

/// Loads every DiT tensor from `dir` into `model` (built with the matching config): the
/// headers are checked first ([`S2vSource::check`]), then the tensors are loaded block by
/// block.
pub fn load_s2v<B: Backend>(
    model: WanS2v<B>,
    dir: &Path,
) -> Result<(WanS2v<B>, LoadReport), WanError> {
    let source = S2vSource::open(dir)?;
    let mut blocks = Vec::with_capacity(model.blocks.len());
    let (mut model, report) = source.load_each(model, |_, block| {
        blocks.push(block);
        Ok(())
    })?;
    model.blocks = blocks;
    Ok((model, report))
}

/// Loads every DiT tensor from one safetensors file (converted or test checkpoints).
pub fn load_s2v_file<B: Backend>(
    model: WanS2v<B>,
    file: &Path,
) -> Result<(WanS2v<B>, LoadReport), WanError> {
    let dir = file.parent().unwrap_or(Path::new("."));
    let device = model.patch_embedding.weight.lazy_device();
    load_safetensors(model, dir, vec![file.to_path_buf()], &device)
}

/// The store of one shard of a checkpoint: keys matched as PyTorch writes them (no enum
/// variant names), partial (a shard holds some of the model), read without validation. A
/// shard the index names but the directory lacks is an error naming it.
fn open_shard(shard: &Path) -> Result<SafetensorsStore, WanError> {
    if !shard.exists() {
        return Err(WanError::Io {
            path: shard.to_path_buf(),
            source: std::io::Error::new(
                std::io::ErrorKind::NotFound,
                "shard named in the index is not in the model directory",
            ),
        });
    }
    Ok(SafetensorsStore::from_file(shard)
        .allow_partial(true)
        .validate(false)
        .skip_enum_variants(true))
}

/// Loads every parameter of `model` from the safetensors `shards` (each tensor in exactly
/// one shard, no tensor the model lacks). Module paths are matched to keys with Burn's
/// enum variant names left out, as PyTorch keys have none.
pub fn load_safetensors<B: Backend, M: ModuleSnapshot<B>>(
    model: M,
    dir: &Path,
    shards: Vec<PathBuf>,
    device: &B::Device,
) -> Result<(M, LoadReport), WanError> {
    let expected: BTreeMap<String, Vec<usize>> = list_params::<B, _>(&model)
        .into_iter()
        .map(|p| (p.key, p.shape))
        .collect();
    let mut model = model;
    let mut found_in: BTreeMap<String, PathBuf> = BTreeMap::new();
    for shard in &shards {
        let store = open_shard(shard)?;
        let result = apply_store(&mut model, store, None, &[], shard, &expected, device)?;
        for key in result.applied {
            if let Some(first) = found_in.insert(key.clone(), shard.clone()) {
                return Err(WanError::BadTensor {
                    path: shard.clone(),
                    key,
                    message: format!("also present in {}", first.display()),
                });
            }
        }
    }
    if let Some(key) = expected.keys().find(|k| !found_in.contains_key(*k)) {
        return Err(WanError::MissingTensor {
            dir: dir.to_path_buf(),
            key: key.clone(),
            looked_in: shards
                .iter()
                .filter_map(|s| s.file_name().map(|n| n.to_string_lossy().into_owned()))
                .collect::<Vec<_>>()
                .join(", "),
        });
    }
    Ok((
        model,
        LoadReport {
            files: shards,
            tensors: found_in.len(),
        },
    ))
}

/// `snap` as `B` will hold it, renamed without its first `strip` path segments: a float
/// tensor stored in another float dtype is converted to the backend's as it is read (see
/// [`for_backend`]). Nothing is read here.
pub(crate) fn retarget<B: Backend>(snap: &TensorSnapshot, strip: usize) -> TensorSnapshot {
    let target = <B::FloatElem as Element>::dtype();
    let convert = is_float(snap.dtype) && snap.dtype != target;
    let path: Vec<String> = snap
        .path_stack
        .clone()
        .unwrap_or_default()
        .into_iter()
        .skip(strip)
        .collect();
    let containers: Vec<String> = snap
        .container_stack
        .clone()
        .unwrap_or_default()
        .into_iter()
        .skip(strip)
        .collect();
    let read = snap.clone_data_fn();
    TensorSnapshot::from_closure(
        std::rc::Rc::new(move || {
            let data = read()?;
            Ok(if convert {
                data.convert_dtype(target)
            } else {
                data
            })
        }),
        if convert { target } else { snap.dtype },
        snap.shape.clone(),
        path,
        containers,
        snap.tensor_id.unwrap_or_default(),
    )
}

/// Whether `dtype` is a floating point one.
pub(crate) fn is_float(dtype: DType) -> bool {
    matches!(dtype, DType::F64 | DType::F32 | DType::F16 | DType::BF16)
}

/// The snapshots of one file as `B` will hold them: each float tensor stored in another
/// float dtype is converted to the backend's as it is read (bf16 to f32 is exact; f32 to
/// bf16 rounds to nearest even, as PyTorch's `.to(torch.bfloat16)` does). Other tensors
/// are kept as they are. Nothing is read here: the conversion runs when the tensor is.
pub(crate) fn for_backend<B: Backend>(
    snapshots: &BTreeMap<String, TensorSnapshot>,
) -> Vec<TensorSnapshot> {
    let target = <B::FloatElem as Element>::dtype();
    snapshots
        .values()
        .map(|snap| {
            if !is_float(snap.dtype) || snap.dtype == target {
                return snap.clone();
            }
            let read = snap.clone_data_fn();
            TensorSnapshot::from_closure(
                std::rc::Rc::new(move || Ok(read()?.convert_dtype(target))),
                target,
                snap.shape.clone(),
                snap.path_stack.clone().unwrap_or_default(),
                snap.container_stack.clone().unwrap_or_default(),
                snap.tensor_id.unwrap_or_default(),
            )
        })
        .collect()
}

/// Applies one file's tensors to `model` and turns every problem into a [`WanError`]
/// naming `file`: a dtype the backend cannot hold, a shape mismatch, a tensor the model
/// does not have. Float tensors take the backend's dtype ([`for_backend`]); `adapter` is
/// the file format's own (PyTorch's layout for `.pth` files). Tensors whose key starts with
/// one of `left_out` may be in the file and are left unused.
pub(crate) fn apply_store<B: Backend, M: ModuleSnapshot<B>, S: ModuleStore>(
    model: &mut M,
    mut store: S,
    adapter: Option<Box<dyn ModuleAdapter>>,
    left_out: &[&str],
    file: &Path,
    expected: &BTreeMap<String, Vec<usize>>,
    device: &B::Device,
) -> Result<burn_store::ApplyResult, WanError>
where
    S::Error: std::fmt::Display,
{
    let snapshots = store.get_all_snapshots().map_err(|e| WanError::Store {
        path: file.to_path_buf(),
        message: e.to_string(),
    })?;
    // A dtype the backend cannot hold (an integer kind it lacks) would otherwise abort
    // inside Burn; say which tensor.
    if let Some((key, snap)) = snapshots
        .iter()
        .filter(|(key, _)| !left_out.iter().any(|prefix| key.starts_with(prefix)))
        .find(|(_, s)| !is_float(s.dtype) && !B::supports_dtype(device, s.dtype))
    {
        return Err(WanError::BadTensor {
            path: file.to_path_buf(),
            key: key.clone(),
            message: format!(
                "stored as {:?}, which this backend cannot hold; convert the checkpoint",
                snap.dtype
            ),
        });
    }
    let result = model.apply(for_backend::<B>(snapshots), None, adapter, true);
    if let Some(err) = result.errors.first() {
        return Err(apply_error(file, err, expected));
    }
    let unexpected = result
        .unused
        .iter()
        .find(|key| !left_out.iter().any(|prefix| key.starts_with(prefix)));
    if let Some(key) = unexpected {
        return Err(WanError::UnexpectedTensor {
            path: file.to_path_buf(),
            key: key.clone(),
        });
    }
    Ok(result)
}

/// Loads every parameter of `model` from a PyTorch `.pth` file (a pickled state dict,
/// as `Wan2.1_VAE.pth` and `models_t5_umt5-xxl-enc-bf16.pth` are), with the same
/// checks as [`load_safetensors`]: every tensor present with its exact shape, none
/// the model lacks. Sequential indices are kept as they are (`residual.6` stays 6).
pub fn load_pth<B: Backend, M: ModuleSnapshot<B>>(
    model: M,
    file: &Path,
    device: &B::Device,
) -> Result<(M, LoadReport), WanError> {
    if !file.exists() {
        return Err(WanError::Io {
            path: file.to_path_buf(),
            source: std::io::Error::new(std::io::ErrorKind::NotFound, "model file not found"),
        });
    }
    let expected: BTreeMap<String, Vec<usize>> = list_params::<B, _>(&model)
        .into_iter()
        .map(|p| (p.key, p.shape))
        .collect();
    let mut model = model;
    let store = PytorchStore::from_file(file)
        .allow_partial(true)
        .validate(false)
        .skip_enum_variants(true)
        .map_indices_contiguous(false);
    let adapter: Box<dyn ModuleAdapter> = Box::new(PyTorchToBurnAdapter);
    let result = apply_store(
        &mut model,
        store,
        Some(adapter),
        &[],
        file,
        &expected,
        device,
    )?;
    let applied: std::collections::BTreeSet<&String> = result.applied.iter().collect();
    let report = single_file_report(file, &expected, &applied)?;
    Ok((model, report))
}

/// What loading one file gave: an error naming the first expected tensor it did not hold, or
/// the report.
pub(crate) fn single_file_report(
    file: &Path,
    expected: &BTreeMap<String, Vec<usize>>,
    applied: &std::collections::BTreeSet<&String>,
) -> Result<LoadReport, WanError> {
    if let Some(key) = expected.keys().find(|k| !applied.contains(k)) {
        return Err(WanError::MissingTensor {
            dir: file.to_path_buf(),
            key: key.clone(),
            looked_in: file
                .file_name()
                .map(|n| n.to_string_lossy().into_owned())
                .unwrap_or_default(),
        });
    }
    Ok(LoadReport {
        files: vec![file.to_path_buf()],
        tensors: applied.len(),
    })
}

pub(crate) fn apply_error(
    shard: &Path,
    err: &ApplyError,
    expected: &BTreeMap<String, Vec<usize>>,
) -> WanError {
    match err {
        ApplyError::ShapeMismatch {
            path,
            expected: e,
            found,
        } => WanError::ShapeMismatch {
            path: shard.to_path_buf(),
            key: path.clone(),
            expected: expected.get(path).cloned().unwrap_or_else(|| e.to_vec()),
            found: found.to_vec(),
        },
        other => WanError::BadTensor {
            path: shard.to_path_buf(),
            key: match other {
                ApplyError::DTypeMismatch { path, .. }
                | ApplyError::AdapterError { path, .. }
                | ApplyError::LoadError { path, .. }
                | ApplyError::ShapeMismatch { path, .. } => path.clone(),
            },
            message: other.to_string(),
        },
    }
}
