//! Where a CUDA worker keeps the kernels it compiled and the autotune results it measured, so
//! that the next worker on the same kind of card skips both (ENGINE.md §6: a cold first clip
//! spends minutes compiling and autotuning).
//!
//! The daemon hands every worker [`KERNEL_CACHE_ENV`], pointing at
//! `<kernel cache>/burn-<burn>-cubecl-<cubecl>/<gpu model>/` (see [`keyed_dir`]): one folder per
//! library version pair and card model, because compiled PTX and tuning results are only valid
//! for the compiler that made them and the card they were measured on. The worker gives that
//! folder to cubecl (`compilation.cache` and `autotune.cache`) before any tensor exists; without
//! this cubecl writes under `$HOME/.cache` or a `target/` folder next to the working
//! directory, which the systemd unit's sandbox forbids.
//!
//! Concurrent writers are safe: cubecl's persistent caches are append-only `.json.log` files,
//! and every append (and every load) happens under a lock file that cubecl creates with
//! `create_new` (an atomic exclusive create) and treats as stale after 30 s; cubecl also puts
//! its own version and the device id into each file's path. Two workers compiling the same
//! kernel at once both append an entry with the same key, and a reader keeps either.
//!
//! The CPU backend (the default build) compiles nothing, so there the folder stays empty.

use std::path::{Path, PathBuf};

/// The environment variable naming a worker's kernel cache folder.
pub const KERNEL_CACHE_ENV: &str = "REELSPOOL_KERNEL_CACHE";

/// The Burn version this build pins (the workspace's `burn = "=…"`).
pub const BURN_VERSION: &str = "0.21.0";
/// The cubecl version Burn [`BURN_VERSION`] uses (and render's `cubecl-runtime` pin).
pub const CUBECL_VERSION: &str = "0.10.0";

/// `<root>/burn-<burn>-cubecl-<cubecl>/<gpu model>`: the folder of one version pair and one
/// card model. The model name keeps letters, digits, `-`, `_` and `.`; anything else becomes
/// `_` ("NVIDIA H200" → "NVIDIA_H200").
pub fn keyed_dir(root: &Path, gpu_model: &str) -> PathBuf {
    let model: String = gpu_model
        .trim()
        .chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.') {
                c
            } else {
                '_'
            }
        })
        .collect();
    let model = if model.is_empty() || model.chars().all(|c| c == '.') {
        "unknown-gpu".to_string()
    } else {
        model
    };
    root.join(format!("burn-{BURN_VERSION}-cubecl-{CUBECL_VERSION}"))
        .join(model)
}

/// Points this process's kernel and autotune caches at the folder named by
/// [`KERNEL_CACHE_ENV`], creating it. Call once, before the first engine is loaded. Returns the
/// folder, or `None` when the variable is unset. A folder that cannot be created costs the
/// cache, never the job: the worker then compiles in memory as before.
pub fn configure_from_env() -> Option<PathBuf> {
    let dir = PathBuf::from(std::env::var_os(KERNEL_CACHE_ENV)?);
    if let Err(err) = std::fs::create_dir_all(&dir) {
        tracing::warn!(path = %dir.display(), error = %err, "cannot create the kernel cache; kernels are compiled without it");
        return None;
    }
    set_cubecl_cache(&dir);
    Some(dir)
}

#[cfg(feature = "cuda")]
fn set_cubecl_cache(dir: &Path) {
    use cubecl_runtime::config::cache::CacheConfig;
    use cubecl_runtime::config::{CubeClRuntimeConfig, RuntimeConfig};
    let mut config = CubeClRuntimeConfig::default();
    config.compilation.cache = Some(CacheConfig::File(dir.to_path_buf()));
    config.autotune.cache = CacheConfig::File(dir.to_path_buf());
    // `set` panics when the configuration was already read (a tensor already exists): that
    // would be a bug in the worker's start-up order, so say so instead of aborting the job.
    let set = std::panic::catch_unwind(move || CubeClRuntimeConfig::set(config));
    if set.is_err() {
        tracing::warn!(
            "cubecl was configured before the kernel cache could be set; it is not used"
        );
    } else {
        tracing::info!(path = %dir.display(), "kernel and autotune cache");
    }
}

#[cfg(not(feature = "cuda"))]
fn set_cubecl_cache(dir: &Path) {
    tracing::debug!(path = %dir.display(), "CPU build: no kernels to cache");
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_folder_is_keyed_by_versions_and_a_path_safe_card_model() {
        let dir = keyed_dir(Path::new("/state/kernel-cache"), "NVIDIA H200 NVL/x");
        assert_eq!(
            dir,
            PathBuf::from("/state/kernel-cache/burn-0.21.0-cubecl-0.10.0/NVIDIA_H200_NVL_x")
        );
        assert_eq!(
            keyed_dir(Path::new("/k"), ".."),
            PathBuf::from("/k/burn-0.21.0-cubecl-0.10.0/unknown-gpu")
        );
    }

    /// The versions in the folder name must be the ones the build really uses, or a Burn
    /// upgrade would read kernels compiled by the old one.
    #[test]
    fn the_versions_match_the_lock_file() {
        let lock =
            std::fs::read_to_string(Path::new(env!("CARGO_MANIFEST_DIR")).join("../Cargo.lock"))
                .expect("read Cargo.lock");
        let version_of = |name: &str| {
            let header = format!("name = \"{name}\"\nversion = \"");
            let start = lock.find(&header).map(|at| at + header.len())?;
            lock[start..].split('"').next().map(str::to_string)
        };
        assert_eq!(version_of("burn").as_deref(), Some(BURN_VERSION));
        assert_eq!(
            version_of("cubecl-runtime").as_deref(),
            Some(CUBECL_VERSION)
        );
    }
}
