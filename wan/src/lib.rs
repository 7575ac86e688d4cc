//! The Wan / Live Avatar model family in Burn.
//!
//! Modules are generic over the Burn backend and named after the keys of the released
//! PyTorch checkpoints, so those files load without renaming. What is ported, what is
//! verified and how, and every deviation from the original are listed in
//! `wan/README.md`.

pub mod attention;
pub mod audio;
pub mod audio_features;
pub mod block;
pub mod carry_io;
pub mod causal;
pub mod causal_loop;
pub mod check;
pub mod config;
pub mod error;
pub mod fp8;
pub mod keys;
#[cfg(feature = "tch")]
pub mod libtorch;
pub mod loader;
pub mod lora;
pub mod memory;
pub mod model;
pub mod motion;
pub mod nn;
pub mod pipeline;
pub mod release;
pub mod rope;
pub mod sampler;
pub mod sparse_release;
pub mod streamed;
pub mod t5;
pub mod tokenizer;
pub mod vae;
pub mod wav2vec2;

pub use config::S2vConfig;
pub use error::WanError;
pub use model::WanS2v;
