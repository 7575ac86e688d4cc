//! The release layout of a Live Avatar model directory, and a random-weight tiny
//! checkpoint written in it for tests and demos.

use std::path::Path;

use crate::error::WanError;

/// The Wan2.2-S2V-14B folder inside a Live Avatar directory (`ckpt/` in the original).
pub const S2V_DIR: &str = "Wan2.2-S2V-14B";
/// The S2V config, inside [`S2V_DIR`].
pub const CONFIG_FILE: &str = "config.json";
/// The Live Avatar LoRA, relative to the directory.
pub const LORA_FILE: &str = "LiveAvatar/liveavatar.safetensors";
/// The VAE as released (torch pickle) and as the tiny checkpoint writes it, in [`S2V_DIR`].
pub const VAE_PTH: &str = "Wan2.1_VAE.pth";
pub const VAE_SAFETENSORS: &str = "Wan2.1_VAE.safetensors";
/// The umT5 encoder as released and as the tiny checkpoint writes it, in [`S2V_DIR`].
pub const T5_PTH: &str = "models_t5_umt5-xxl-enc-bf16.pth";
pub const T5_SAFETENSORS: &str = "models_t5_umt5-xxl-enc.safetensors";
/// The wav2vec2 folder, in [`S2V_DIR`].
pub const W2V_DIR: &str = "wav2vec2-large-xlsr-53-english";
/// The umT5 tokenizer folder, relative to the directory (written by the tokenizer
/// module, not by [`write_tiny_release`]).
pub const TOKENIZER_DIR: &str = "Wan2.2-S2V-14B/google/umt5-xxl";

/// Writes a random-weight checkpoint at the tiny config in the release layout into
/// `dir` (created if missing). The same `seed` writes the same bytes. The tokenizer is
/// not written here (`wan::tokenizer::write_tiny_tokenizer`).
pub fn write_tiny_release(dir: &Path, seed: u64) -> Result<(), WanError> {
    let _ = (dir, seed);
    todo!()
}
