//! The layout of a Live Avatar release directory: where its files are, and how to tell that a
//! directory is one.
//!
//! Two crates need it and must not depend on each other: `jobs` tells at intake whether a
//! job's `engine.model` is a release (it decides the engine, the memory profile and the
//! default frame rate), and `wan` loads the files. Both read the names from here, so they can
//! never disagree about what a release is.
//!
//! A release directory, as the original's download scripts lay it out:
//! ```text
//! <dir>/Wan2.2-S2V-14B/config.json              the S2V config (its presence makes a release)
//! <dir>/Wan2.2-S2V-14B/diffusion_pytorch_model*  the DiT shards
//! <dir>/Wan2.2-S2V-14B/Wan2.1_VAE.pth            the VAE
//! <dir>/Wan2.2-S2V-14B/models_t5_umt5-xxl-enc-bf16.pth
//! <dir>/Wan2.2-S2V-14B/google/umt5-xxl/          the tokenizer
//! <dir>/Wan2.2-S2V-14B/wav2vec2-large-xlsr-53-english/
//! <dir>/LiveAvatar/liveavatar.safetensors        the Live Avatar LoRA, or in a Hugging Face
//!                                               cache: LiveAvatar/models--Quark-Vision--
//!                                               Live-Avatar/snapshots/<rev>/liveavatar.safetensors
//! ```
//! The functions that find a file ([`config_file`], [`tokenizer_dir`]) take the release
//! directory and return the path of that file in it. The LoRA may sit in either of two places;
//! `wan::release::find_lora` (the one that loads it) searches them, with these names.

use std::path::{Path, PathBuf};

/// The Wan2.2-S2V-14B folder inside a release directory (`ckpt/` in the original).
pub const S2V_DIR: &str = "Wan2.2-S2V-14B";
/// The S2V config, inside [`S2V_DIR`].
pub const CONFIG_FILE: &str = "config.json";
/// The Live Avatar LoRA, relative to the release directory.
pub const LORA_FILE: &str = "LiveAvatar/liveavatar.safetensors";
/// Where `hf_hub_download(repo_id="Quark-Vision/Live-Avatar", cache_dir="ckpt/LiveAvatar")`
/// (Live Avatar's README) leaves the LoRA: a Hugging Face cache holding `refs/main` (the
/// revision) and `snapshots/<revision>/liveavatar.safetensors`, relative to the release
/// directory. `wan::release::find_lora` looks in both places.
pub const LORA_HF_CACHE: &str = "LiveAvatar/models--Quark-Vision--Live-Avatar";
/// The LoRA's file name, in either layout.
pub const LORA_NAME: &str = "liveavatar.safetensors";
/// The VAE as released (torch pickle), in [`S2V_DIR`].
pub const VAE_PTH: &str = "Wan2.1_VAE.pth";
/// The VAE as safetensors (how the tiny test release writes it), in [`S2V_DIR`].
pub const VAE_SAFETENSORS: &str = "Wan2.1_VAE.safetensors";
/// The umT5 encoder as released, in [`S2V_DIR`].
pub const T5_PTH: &str = "models_t5_umt5-xxl-enc-bf16.pth";
/// The umT5 encoder as safetensors (the tiny test release), in [`S2V_DIR`].
pub const T5_SAFETENSORS: &str = "models_t5_umt5-xxl-enc.safetensors";
/// The wav2vec2 folder, in [`S2V_DIR`].
pub const W2V_DIR: &str = "wav2vec2-large-xlsr-53-english";
/// The umT5 tokenizer folder, relative to the release directory.
pub const TOKENIZER_DIR: &str = "Wan2.2-S2V-14B/google/umt5-xxl";

/// The file whose presence makes a directory a release, relative to it.
pub fn marker() -> PathBuf {
    Path::new(S2V_DIR).join(CONFIG_FILE)
}

/// Whether `dir` is a release directory: an absolute path holding [`marker`]. A relative path
/// never is, since it would mean another directory once the job file has moved.
pub fn is_live_avatar_release(dir: &Path) -> bool {
    dir.is_absolute() && dir.join(marker()).is_file()
}

/// The S2V folder of the release at `dir`.
pub fn s2v_dir(dir: &Path) -> PathBuf {
    dir.join(S2V_DIR)
}

/// The S2V config of the release at `dir`.
pub fn config_file(dir: &Path) -> PathBuf {
    dir.join(marker())
}

/// The umT5 tokenizer folder of the release at `dir`.
pub fn tokenizer_dir(dir: &Path) -> PathBuf {
    dir.join(TOKENIZER_DIR)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_directory_is_a_release_once_it_holds_the_s2v_config() {
        let tmp = tempfile::tempdir().expect("temp dir");
        assert!(!is_live_avatar_release(tmp.path()));
        std::fs::create_dir_all(s2v_dir(tmp.path())).expect("mkdir");
        assert!(
            !is_live_avatar_release(tmp.path()),
            "the folder alone is not"
        );
        std::fs::write(config_file(tmp.path()), "{}").expect("config");
        assert!(is_live_avatar_release(tmp.path()));
    }

    #[test]
    fn a_relative_path_is_never_a_release() {
        assert!(!is_live_avatar_release(Path::new("Wan2.2-S2V-14B")));
        assert!(!is_live_avatar_release(Path::new("")));
    }

    #[test]
    fn the_tokenizer_sits_inside_the_s2v_folder() {
        assert!(Path::new(TOKENIZER_DIR).starts_with(S2V_DIR));
        assert_eq!(
            config_file(Path::new("/r")),
            PathBuf::from("/r/Wan2.2-S2V-14B/config.json")
        );
    }
}
