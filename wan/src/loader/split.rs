//! Loading the DiT one block at a time ([`S2vSource`]): every shard's header is read and
//! checked against the model first (names, shapes, dtypes: nothing is loaded before the
//! whole directory is known to fit), then the parts outside `blocks` and each block are
//! applied on their own. A caller that moves each block elsewhere as it arrives (host memory
//! for the streamed mode, fp8 storage) never has more than one block's float weights on the
//! device, which is what lets a 24 GB card load a 32.6 GB model.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use burn::prelude::*;
use burn_store::{ModuleSnapshot, ModuleStore, SafetensorsStore, TensorSnapshot};

use super::{apply_error, is_float, retarget, s2v_shards, LoadReport};
use crate::block::S2vBlock;
use crate::error::WanError;
use crate::keys::list_params;
use crate::model::WanS2v;

/// One tensor of the shards: where it is and its header entry.
struct Entry {
    shard: usize,
    snapshot: TensorSnapshot,
}

/// The DiT tensors of a release folder, known from the shard headers.
pub struct S2vSource {
    dir: PathBuf,
    shards: Vec<PathBuf>,
    tensors: BTreeMap<String, Entry>,
    /// The open stores (memory maps) the snapshots read from.
    _stores: Vec<SafetensorsStore>,
}

impl S2vSource {
    /// Reads the headers of every shard in `dir` (index or single file). A shard the index
    /// names but the directory lacks, an unreadable header or a key present in two shards is
    /// an error naming the file.
    pub fn open(dir: &Path) -> Result<Self, WanError> {
        let shards = s2v_shards(dir)?;
        let mut tensors: BTreeMap<String, Entry> = BTreeMap::new();
        let mut stores = Vec::with_capacity(shards.len());
        for (i, shard) in shards.iter().enumerate() {
            let mut store = super::open_shard(shard)?;
            let snapshots = store.get_all_snapshots().map_err(|e| WanError::Store {
                path: shard.clone(),
                message: e.to_string(),
            })?;
            for (key, snapshot) in snapshots {
                if let Some(first) = tensors.get(key) {
                    return Err(WanError::BadTensor {
                        path: shard.clone(),
                        key: key.clone(),
                        message: format!("also present in {}", shards[first.shard].display()),
                    });
                }
                tensors.insert(
                    key.clone(),
                    Entry {
                        shard: i,
                        snapshot: snapshot.clone(),
                    },
                );
            }
            stores.push(store);
        }
        Ok(Self {
            dir: dir.to_path_buf(),
            shards,
            tensors,
            _stores: stores,
        })
    }

    pub fn shards(&self) -> &[PathBuf] {
        &self.shards
    }

    fn shard_of(&self, key: &str) -> PathBuf {
        self.tensors
            .get(key)
            .map_or_else(|| self.dir.clone(), |e| self.shards[e.shard].clone())
    }

    /// Checks the headers against `model` (all its blocks present, lazily built): a tensor
    /// the model does not have, then a missing one, then a wrong shape or a dtype that is
    /// not a float, each named with its file.
    pub fn check<B: Backend>(&self, model: &WanS2v<B>) -> Result<(), WanError> {
        let expected: BTreeMap<String, Vec<usize>> = list_params::<B, _>(model)
            .into_iter()
            .map(|p| (p.key, p.shape))
            .collect();
        if let Some(key) = self.tensors.keys().find(|k| !expected.contains_key(*k)) {
            return Err(WanError::UnexpectedTensor {
                path: self.shard_of(key),
                key: key.clone(),
            });
        }
        if let Some(key) = expected.keys().find(|k| !self.tensors.contains_key(*k)) {
            return Err(WanError::MissingTensor {
                dir: self.dir.clone(),
                key: key.clone(),
                looked_in: self
                    .shards
                    .iter()
                    .filter_map(|s| s.file_name().map(|n| n.to_string_lossy().into_owned()))
                    .collect::<Vec<_>>()
                    .join(", "),
            });
        }
        for (key, shape) in &expected {
            let entry = &self.tensors[key];
            let found = entry.snapshot.shape.to_vec();
            if found != *shape {
                return Err(WanError::ShapeMismatch {
                    path: self.shards[entry.shard].clone(),
                    key: key.clone(),
                    expected: shape.clone(),
                    found,
                });
            }
            if !is_float(entry.snapshot.dtype) {
                return Err(WanError::BadTensor {
                    path: self.shards[entry.shard].clone(),
                    key: key.clone(),
                    message: format!(
                        "stored as {:?}; the model's parameters are floats (bf16, f16 or f32)",
                        entry.snapshot.dtype
                    ),
                });
            }
        }
        Ok(())
    }

    /// Snapshots of the keys under `prefix` (all keys for `""`), renamed without it and
    /// converted to `B`'s float dtype as they are read.
    fn snapshots<B: Backend>(
        &self,
        prefix: &str,
        keep: impl Fn(&str) -> bool,
    ) -> Vec<TensorSnapshot> {
        let strip = prefix.split('.').filter(|s| !s.is_empty()).count();
        self.tensors
            .iter()
            .filter(|(k, _)| k.starts_with(prefix) && keep(k))
            .map(|(_, e)| retarget::<B>(&e.snapshot, strip))
            .collect()
    }

    /// Applies `snapshots` to `module`; errors name the file and the full key
    /// (`prefix` + the key inside the module).
    fn apply<B: Backend, M: ModuleSnapshot<B>>(
        &self,
        module: &mut M,
        snapshots: Vec<TensorSnapshot>,
        prefix: &str,
    ) -> Result<usize, WanError> {
        let expected: BTreeMap<String, Vec<usize>> = list_params::<B, _>(module)
            .into_iter()
            .map(|p| (format!("{prefix}{}", p.key), p.shape))
            .collect();
        let result = module.apply(snapshots, None, None, true);
        if let Some(err) = result.errors.first() {
            let mut e = apply_error(&self.dir, err, &expected);
            if let WanError::ShapeMismatch { path, key, .. }
            | WanError::BadTensor { path, key, .. } = &mut e
            {
                *key = format!("{prefix}{key}");
                *path = self.shard_of(key);
            }
            return Err(e);
        }
        if let Some(key) = result.unused.first() {
            let key = format!("{prefix}{key}");
            return Err(WanError::UnexpectedTensor {
                path: self.shard_of(&key),
                key,
            });
        }
        if let Some(key) = expected
            .keys()
            .find(|k| !result.applied.iter().any(|a| format!("{prefix}{a}") == **k))
        {
            return Err(WanError::MissingTensor {
                dir: self.dir.clone(),
                key: key.clone(),
                looked_in: "the shards".into(),
            });
        }
        Ok(result.applied.len())
    }

    /// Loads the parts of `model` outside `blocks` (the model's `blocks` must be empty: take
    /// them out first and load each with [`S2vSource::load_block`]).
    pub fn load_resident<B: Backend>(
        &self,
        mut model: WanS2v<B>,
    ) -> Result<(WanS2v<B>, usize), WanError> {
        debug_assert!(model.blocks.is_empty(), "blocks are loaded one by one");
        let snapshots = self.snapshots::<B>("", |k| !k.starts_with("blocks."));
        let n = self.apply(&mut model, snapshots, "")?;
        Ok((model, n))
    }

    /// Loads block `layer` into `block` (a fresh, lazily built block of the model's shape).
    pub fn load_block<B: Backend>(
        &self,
        layer: usize,
        mut block: S2vBlock<B>,
    ) -> Result<(S2vBlock<B>, usize), WanError> {
        let prefix = format!("blocks.{layer}.");
        let snapshots = self.snapshots::<B>(&prefix, |_| true);
        let n = self.apply(&mut block, snapshots, &prefix)?;
        Ok((block, n))
    }

    /// Checks the headers against `model`, then loads it: the parts outside `blocks`, then each
    /// block in order, handed to `per_block(layer, block)` as it is loaded (which keeps it,
    /// stores it elsewhere, or converts it). Returns the model without its blocks.
    pub fn load_each<B: Backend>(
        &self,
        mut model: WanS2v<B>,
        mut per_block: impl FnMut(usize, S2vBlock<B>) -> Result<(), WanError>,
    ) -> Result<(WanS2v<B>, LoadReport), WanError> {
        self.check(&model)?;
        let blocks = std::mem::take(&mut model.blocks);
        let (model, mut tensors) = self.load_resident(model)?;
        for (layer, skeleton) in blocks.into_iter().enumerate() {
            let (block, n) = self.load_block(layer, skeleton)?;
            tensors += n;
            per_block(layer, block)?;
        }
        Ok((
            model,
            LoadReport {
                files: self.shards.clone(),
                tensors,
            },
        ))
    }
}
