//! Model files: the loader that reads a checkpoint directory (`config.json` +
//! `model.safetensors`) and the model cache that `builtin:tiny` is generated into.
//!
//! `builtin:tiny` is not special past this module: its weights are generated once, written to
//! the model cache like any downloaded checkpoint, and read back by [`load_checkpoint_dir`]. So
//! the loading path the demo exercises is the one a real checkpoint takes.

use std::collections::HashMap;
use std::io::ErrorKind;
use std::path::{Path, PathBuf};

use safetensors::tensor::{Dtype, SafeTensors, TensorView};

use super::architecture::{
    generate, weight_specs, HostTensor, TinyConfig, ARCHITECTURE, BUILTIN_WEIGHTS_SEED,
};
use super::carry::f32s_from_le_bytes;
use crate::RenderError;
use atomic_write::write_atomic;
use jobs::spec::ModelRef;

/// The model string that selects the generated tiny model.
pub const BUILTIN_TINY: &str = "builtin:tiny";
/// Its name after `builtin:` ([`ModelRef::Builtin`]).
const TINY_NAME: &str = "tiny";

pub(crate) const CONFIG_FILE: &str = "config.json";
pub(crate) const WEIGHTS_FILE: &str = "model.safetensors";
const CACHE_SUBDIR: &str = "builtin-tiny";

fn weights_to_safetensors(weights: &[(String, HostTensor)]) -> Result<Vec<u8>, String> {
    let bytes: Vec<Vec<u8>> = weights
        .iter()
        .map(|(_, t)| t.data.iter().flat_map(|v| v.to_le_bytes()).collect())
        .collect();
    let views = weights
        .iter()
        .zip(&bytes)
        .map(|((name, t), b)| {
            TensorView::new(Dtype::F32, t.shape.clone(), b)
                .map(|view| (name.as_str(), view))
                .map_err(|e| format!("{name}: {e}"))
        })
        .collect::<Result<Vec<_>, _>>()?;
    safetensors::serialize(views, None).map_err(|e| e.to_string())
}

/// Weights read from a checkpoint, checked against the architecture's list.
#[derive(Debug)]
pub(crate) struct WeightSet {
    tensors: HashMap<String, HostTensor>,
}

impl WeightSet {
    /// Takes out one weight. Shapes were checked at load, so a missing name is a bug.
    pub(crate) fn take(&mut self, name: &str) -> HostTensor {
        self.tensors
            .remove(name)
            .unwrap_or_else(|| panic!("weight `{name}` was verified present at load"))
    }
}

/// Reads and verifies a tiny-architecture checkpoint directory.
pub(crate) fn load_checkpoint_dir(dir: &Path) -> Result<(TinyConfig, WeightSet), RenderError> {
    let config_path = dir.join(CONFIG_FILE);
    let weights_path = dir.join(WEIGHTS_FILE);
    let format_err = |path: &Path, detail: String| RenderError::ModelFormat {
        path: path.to_path_buf(),
        detail,
    };
    let config_text = std::fs::read_to_string(&config_path)
        .map_err(|e| format_err(&config_path, format!("cannot read: {e}")))?;
    let cfg: TinyConfig =
        serde_json::from_str(&config_text).map_err(|e| format_err(&config_path, e.to_string()))?;
    cfg.validate().map_err(|e| format_err(&config_path, e))?;
    let bytes = std::fs::read(&weights_path)
        .map_err(|e| format_err(&weights_path, format!("cannot read: {e}")))?;
    let file = SafeTensors::deserialize(&bytes)
        .map_err(|e| format_err(&weights_path, format!("not a safetensors file: {e}")))?;
    let specs = weight_specs(&cfg);
    let mut tensors = HashMap::with_capacity(specs.len());
    for spec in &specs {
        let view = file
            .tensor(&spec.name)
            .map_err(|_| format_err(&weights_path, format!("tensor `{}` is missing", spec.name)))?;
        if view.dtype() != Dtype::F32 || view.shape() != spec.shape.as_slice() {
            return Err(format_err(
                &weights_path,
                format!(
                    "tensor `{}` is {:?} {:?}, expected F32 {:?}",
                    spec.name,
                    view.dtype(),
                    view.shape(),
                    spec.shape
                ),
            ));
        }
        let data = f32s_from_le_bytes(view.data());
        tensors.insert(
            spec.name.clone(),
            HostTensor {
                shape: spec.shape.clone(),
                data,
            },
        );
    }
    if let Some(extra) = file.names().into_iter().find(|n| !tensors.contains_key(*n)) {
        return Err(format_err(
            &weights_path,
            format!("unexpected tensor `{extra}`: this is not a {ARCHITECTURE} checkpoint"),
        ));
    }
    Ok((cfg, WeightSet { tensors }))
}

/// Writes generated `builtin:tiny` weights into `dir`: weights first, config last, each
/// atomically, so a directory with a config always has complete weights.
fn write_builtin(dir: &Path) -> Result<(), RenderError> {
    let cache_err = |path: PathBuf| move |source| RenderError::CacheWrite { path, source };
    std::fs::create_dir_all(dir).map_err(cache_err(dir.to_path_buf()))?;
    let cfg = TinyConfig::builtin();
    let weights = generate(&cfg, BUILTIN_WEIGHTS_SEED);
    let bytes = weights_to_safetensors(&weights).map_err(|detail| RenderError::ModelFormat {
        path: dir.join(WEIGHTS_FILE),
        detail,
    })?;
    let weights_path = dir.join(WEIGHTS_FILE);
    write_atomic(&weights_path, &bytes).map_err(cache_err(weights_path.clone()))?;
    let config = serde_json::to_vec_pretty(&cfg).map_err(|e| RenderError::ModelFormat {
        path: dir.join(CONFIG_FILE),
        detail: e.to_string(),
    })?;
    let config_path = dir.join(CONFIG_FILE);
    write_atomic(&config_path, &config).map_err(cache_err(config_path.clone()))?;
    tracing::info!(dir = %dir.display(), "generated builtin:tiny weights");
    Ok(())
}

/// Loads the checkpoint a model refers to. `builtin:tiny` is generated into `cache_dir` on
/// first use (and regenerated if the cached copy fails to load: it is reproducible, so a
/// damaged cache must not stop a job).
pub(crate) fn load_model(
    model: &ModelRef,
    cache_dir: &Path,
) -> Result<(TinyConfig, WeightSet), RenderError> {
    let path = match model {
        ModelRef::Builtin { name } if name == TINY_NAME => return load_builtin_tiny(cache_dir),
        ModelRef::Builtin { name } => {
            return Err(RenderError::UnknownBuiltin { name: name.clone() })
        }
        ModelRef::Checkpoint { dir } | ModelRef::Release { dir } => dir.clone(),
        // Never sent here (the worker drives command engines itself); read as a directory,
        // it fails with the message that says what `engine.model` may be.
        ModelRef::Command { model, .. } => PathBuf::from(model),
    };
    let not_found = |reason: String| RenderError::ModelNotFound {
        model: model.to_string(),
        path: path.clone(),
        reason,
    };
    match std::fs::metadata(&path) {
        Ok(meta) if meta.is_dir() => {}
        Ok(_) => return Err(not_found("not a directory".to_string())),
        Err(e) if e.kind() == ErrorKind::NotFound => {
            return Err(not_found("does not exist".to_string()))
        }
        Err(e) => return Err(not_found(e.to_string())),
    }
    for file in [CONFIG_FILE, WEIGHTS_FILE] {
        if !path.join(file).is_file() {
            return Err(not_found(format!("no {file} in it")));
        }
    }
    load_checkpoint_dir(&path)
}

/// `builtin:tiny` from the model cache, generated into it when missing or damaged.
fn load_builtin_tiny(cache_dir: &Path) -> Result<(TinyConfig, WeightSet), RenderError> {
    let dir = cache_dir.join(CACHE_SUBDIR);
    if !dir.join(CONFIG_FILE).is_file() {
        write_builtin(&dir)?;
    }
    match load_checkpoint_dir(&dir) {
        Ok(loaded) => Ok(loaded),
        Err(err) => {
            tracing::warn!(error = %err, "cached builtin:tiny weights unusable, regenerating");
            write_builtin(&dir)?;
            load_checkpoint_dir(&dir)
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The model a job naming `words` gets.
    fn model(words: &str) -> ModelRef {
        ModelRef::resolve(jobs::spec::EngineKind::Native, None, words)
    }

    #[test]
    fn builtin_weights_are_written_then_loaded_back_unchanged() {
        let cache = tempfile::tempdir().expect("temp dir");
        let (cfg, mut loaded) = load_model(&model(BUILTIN_TINY), cache.path()).expect("loads");
        assert_eq!(cfg, TinyConfig::builtin());
        assert!(cache
            .path()
            .join("builtin-tiny")
            .join(WEIGHTS_FILE)
            .is_file());
        for (name, tensor) in generate(&cfg, BUILTIN_WEIGHTS_SEED) {
            assert_eq!(loaded.take(&name), tensor, "{name}");
        }
    }

    #[test]
    fn damaged_builtin_cache_is_regenerated() {
        let cache = tempfile::tempdir().expect("temp dir");
        load_model(&model(BUILTIN_TINY), cache.path()).expect("first load");
        let weights = cache.path().join("builtin-tiny").join(WEIGHTS_FILE);
        std::fs::write(&weights, b"garbage").expect("damage the cache");
        load_model(&model(BUILTIN_TINY), cache.path()).expect("regenerates");
        assert!(std::fs::metadata(&weights).expect("exists").len() > 100_000);
    }

    #[test]
    fn missing_directory_is_a_clear_error() {
        let err =
            load_model(&model("/nonexistent/reelspool-model"), Path::new("/tmp")).unwrap_err();
        assert!(matches!(err, RenderError::ModelNotFound { .. }), "{err}");
        assert!(err.to_string().contains("does not exist"), "{err}");
        assert!(err.to_string().contains(BUILTIN_TINY), "{err}");
    }

    #[test]
    fn directory_without_weights_is_a_clear_error() {
        let dir = tempfile::tempdir().expect("temp dir");
        std::fs::write(dir.path().join(CONFIG_FILE), b"{}").expect("write config");
        let model = dir.path().to_string_lossy().to_string();
        let err = load_model(&self::model(&model), dir.path()).unwrap_err();
        assert!(err.to_string().contains("no model.safetensors"), "{err}");
    }

    #[test]
    fn unknown_builtin_is_rejected() {
        let err = load_model(&model("builtin:huge"), Path::new("/tmp")).unwrap_err();
        assert!(matches!(err, RenderError::UnknownBuiltin { .. }), "{err}");
    }

    #[test]
    fn checkpoint_with_a_wrongly_shaped_tensor_is_rejected() {
        let dir = tempfile::tempdir().expect("temp dir");
        let cfg = TinyConfig::builtin();
        let mut weights = generate(&cfg, 3);
        weights[0].1 = HostTensor {
            shape: vec![2],
            data: vec![0.0, 0.0],
        };
        let bytes = weights_to_safetensors(&weights).expect("serialises");
        std::fs::write(dir.path().join(WEIGHTS_FILE), bytes).expect("write weights");
        let config = serde_json::to_vec(&cfg).expect("serialises");
        std::fs::write(dir.path().join(CONFIG_FILE), config).expect("write config");
        let err = load_checkpoint_dir(dir.path()).unwrap_err();
        assert!(err.to_string().contains("vae.encoder.weight"), "{err}");
    }
}
