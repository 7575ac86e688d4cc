//! A Live Avatar directory with the real 14B configuration and real headers but no data
//! ([`write_sparse_release`]): every weight file has the released keys, shapes and dtypes in
//! its header, and its length set (`set_len`) so the data part is a hole of the right size.
//! The files read as the release does for everything that looks at headers and configs
//! (`wan::check`, the memory accounting, intake, placement) at full size, in seconds, on any
//! machine, using almost no disk. Their weights are all zero: never load or render them.
//!
//! ```text
//! DIR/Wan2.2-S2V-14B/config.json                        diffusers-style dump, without
//!                                                       patch_size, qk_norm, cross_attn_norm,
//!                                                       text_dim, window_size (as released)
//! DIR/Wan2.2-S2V-14B/configuration.json
//! DIR/Wan2.2-S2V-14B/diffusion_pytorch_model-0000{1..4}-of-00004.safetensors + index (bf16)
//! DIR/Wan2.2-S2V-14B/Wan2.1_VAE.safetensors             f32   (released as Wan2.1_VAE.pth)
//! DIR/Wan2.2-S2V-14B/models_t5_umt5-xxl-enc.safetensors bf16  (released as ..-bf16.pth)
//! DIR/Wan2.2-S2V-14B/wav2vec2-large-xlsr-53-english/{config.json, preprocessor_config.json,
//!                                                    model.safetensors (f32, CTC head too)}
//! DIR/Wan2.2-S2V-14B/google/umt5-xxl/                   a small tokenizer (the tiny one)
//! DIR/LiveAvatar/models--Quark-Vision--Live-Avatar/{refs/main,
//!                   snapshots/<rev>/liveavatar.safetensors}   rank 128, bf16, 896 tensors
//! ```
//!
//! The VAE and umT5 are written as safetensors, which the loader takes in place of the
//! released torch pickles (writing a pickle's zip layout with holes is possible but buys
//! nothing the header checks need); the wav2vec2 folder holds `model.safetensors` only (the
//! release also has `pytorch_model.bin`).

use std::collections::BTreeMap;
use std::io::Write;
use std::path::{Path, PathBuf};

use burn::backend::NdArray;
use burn::tensor::DType;

use crate::carry_io::header_bytes;
use crate::error::WanError;
use crate::keys::list_params;
use crate::loader::S2V_INDEX;
use crate::lora::lora_targets;
use crate::pipeline::LiveAvatarConfig;
use crate::release::{LORA_HF_CACHE, LORA_NAME, S2V_DIR, T5_SAFETENSORS, VAE_SAFETENSORS, W2V_DIR};
use crate::t5::T5Encoder;
use crate::vae::WanVae;
use crate::wav2vec2::{Wav2Vec2Config, Wav2Vec2Model, W2V_SAFETENSORS};
use crate::WanS2v;

/// The revision `refs/main` names in the sparse LoRA cache.
pub const SPARSE_LORA_REVISION: &str = "0123456789abcdef0123456789abcdef01234567";
/// LoRA rank of Live Avatar's adapter.
pub const LIVE_AVATAR_LORA_RANK: usize = 128;
/// Shards of the released DiT.
const DIT_SHARDS: usize = 4;
/// Entries of wav2vec2-large-xlsr-53-english's CTC vocabulary (its `lm_head`).
const CTC_VOCAB: usize = 33;

fn io_err(path: &Path) -> impl FnOnce(std::io::Error) -> WanError + '_ {
    move |source| WanError::Io {
        path: path.to_path_buf(),
        source,
    }
}

/// One file written: its path and its length (mostly a hole).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SparseFile {
    pub path: PathBuf,
    pub len: u64,
}

/// Writes a safetensors file of `tensors` (all `dtype`) whose data is a hole.
fn write_sparse(
    path: &Path,
    tensors: &[(String, Vec<usize>)],
    dtype: DType,
) -> Result<SparseFile, WanError> {
    let meta: BTreeMap<String, String> = [("format".to_string(), "pt".to_string())].into();
    let header = header_bytes(&meta, tensors, dtype)?;
    let data: u64 = tensors
        .iter()
        .map(|(_, s)| s.iter().map(|&d| d as u64).product::<u64>() * dtype.size() as u64)
        .sum();
    let mut f = std::fs::File::create(path).map_err(io_err(path))?;
    f.write_all(&header).map_err(io_err(path))?;
    let len = header.len() as u64 + data;
    f.set_len(len).map_err(io_err(path))?;
    Ok(SparseFile {
        path: path.to_path_buf(),
        len,
    })
}

fn write_json(path: &Path, value: &serde_json::Value) -> Result<SparseFile, WanError> {
    let text = serde_json::to_string_pretty(value).map_err(|e| WanError::Store {
        path: path.to_path_buf(),
        message: e.to_string(),
    })?;
    std::fs::write(path, &text).map_err(io_err(path))?;
    Ok(SparseFile {
        path: path.to_path_buf(),
        len: text.len() as u64,
    })
}

/// Keys and shapes of a lazily built module.
fn shapes<M: burn::module::Module<NdArray>>(m: &M) -> Vec<(String, Vec<usize>)> {
    list_params::<NdArray, _>(m)
        .into_iter()
        .map(|p| (p.key, p.shape))
        .collect()
}

/// The S2V `config.json` as the release has it: the constructor's keyword arguments as
/// diffusers dumps them, without `patch_size`, `qk_norm`, `cross_attn_norm`, `text_dim` and
/// `window_size`, with the S2V switches the engine fixes, and no `reelspool` section.
pub fn release_config_json() -> serde_json::Value {
    let c = LiveAvatarConfig::release().s2v;
    serde_json::json!({
        "_class_name": "WanModel_S2V",
        "_diffusers_version": "0.33.1",
        "add_last_motion": true,
        "adain_mode": "attn_norm",
        "audio_dim": c.audio_dim,
        "audio_inject_layers": c.audio_inject_layers,
        "cond_dim": c.cond_dim,
        "dim": c.dim,
        "enable_adain": true,
        "enable_framepack": true,
        "enable_motioner": false,
        "enable_tsm": false,
        "eps": c.eps,
        "ffn_dim": c.ffn_dim,
        "framepack_drop_mode": "padd",
        "freq_dim": c.freq_dim,
        "in_dim": c.in_dim,
        "model_type": "s2v",
        "motion_frames": 73,
        "motion_token_num": 1024,
        "num_audio_token": c.num_audio_token,
        "num_heads": c.num_heads,
        "num_layers": c.num_layers,
        "out_dim": c.out_dim,
        "text_len": c.text_len,
        "trainable_token_pos_emb": false,
        "zero_timestep": true
    })
}

/// wav2vec2-large-xlsr-53-english's `config.json`: the engine's fields with the release's
/// values, and the CTC head's vocabulary the release has.
fn w2v_config_json(cfg: &Wav2Vec2Config) -> serde_json::Value {
    let mut json = crate::release::w2v_config_json(cfg);
    json["vocab_size"] = CTC_VOCAB.into();
    json
}

/// Writes the sparse 14B release into `dir` (created if missing; see the module docs).
/// Returns every file written with its length (47 GB in all, nearly all of it holes; about
/// a second and under 1 MB of disk on this development machine).
pub fn write_sparse_release(dir: &Path) -> Result<Vec<SparseFile>, WanError> {
    let cfg = LiveAvatarConfig::release();
    let device = Default::default();
    let s2v = dir.join(S2V_DIR);
    let w2v_dir = s2v.join(W2V_DIR);
    let cache = dir.join(LORA_HF_CACHE);
    let snapshot = cache.join("snapshots").join(SPARSE_LORA_REVISION);
    for d in [&s2v, &w2v_dir, &snapshot, &cache.join("refs")] {
        std::fs::create_dir_all(d).map_err(io_err(d))?;
    }
    let mut files = Vec::new();
    files.push(write_json(
        &s2v.join("config.json"),
        &release_config_json(),
    )?);
    files.push(write_json(
        &s2v.join("configuration.json"),
        &serde_json::json!({"framework": "Pytorch", "task": "speech-to-video"}),
    )?);

    // The DiT in 4 bf16 shards, in the module's order, each about a quarter of the bytes.
    let dit = shapes(&WanS2v::<NdArray>::new(&cfg.s2v, &device));
    let bytes_of = |s: &[usize]| s.iter().map(|&d| d as u64).product::<u64>() * 2;
    let total: u64 = dit.iter().map(|(_, s)| bytes_of(s)).sum();
    let mut shards: Vec<Vec<(String, Vec<usize>)>> = vec![Vec::new(); DIT_SHARDS];
    let mut so_far = 0u64;
    for t in dit {
        let i = ((so_far * DIT_SHARDS as u64) / total.max(1)) as usize;
        so_far += bytes_of(&t.1);
        shards[i.min(DIT_SHARDS - 1)].push(t);
    }
    let mut weight_map = serde_json::Map::new();
    for (i, shard) in shards.iter().enumerate() {
        let name = format!(
            "diffusion_pytorch_model-{:05}-of-{:05}.safetensors",
            i + 1,
            DIT_SHARDS
        );
        for (k, _) in shard {
            weight_map.insert(k.clone(), name.clone().into());
        }
        files.push(write_sparse(&s2v.join(&name), shard, DType::BF16)?);
    }
    files.push(write_json(
        &s2v.join(S2V_INDEX),
        &serde_json::json!({"metadata": {"total_size": total}, "weight_map": weight_map}),
    )?);

    files.push(write_sparse(
        &s2v.join(VAE_SAFETENSORS),
        &shapes(&WanVae::<NdArray>::new(&cfg.vae, &device)),
        DType::F32,
    )?);
    files.push(write_sparse(
        &s2v.join(T5_SAFETENSORS),
        &shapes(&T5Encoder::<NdArray>::new(&cfg.t5, &device)),
        DType::BF16,
    )?);

    let w2v = Wav2Vec2Config::large_xlsr53();
    files.push(write_json(
        &w2v_dir.join("config.json"),
        &w2v_config_json(&w2v),
    )?);
    files.push(write_json(
        &w2v_dir.join("preprocessor_config.json"),
        &serde_json::json!({
            "do_normalize": true,
            "feature_extractor_type": "Wav2Vec2FeatureExtractor",
            "feature_size": 1,
            "padding_side": "right",
            "padding_value": 0.0,
            "return_attention_mask": true,
            "sampling_rate": 16000
        }),
    )?);
    let mut w2v_tensors: Vec<(String, Vec<usize>)> =
        shapes(&Wav2Vec2Model::<NdArray>::new(&w2v, &device))
            .into_iter()
            .map(|(k, s)| (format!("wav2vec2.{k}"), s))
            .collect();
    w2v_tensors.push(("lm_head.weight".into(), vec![CTC_VOCAB, w2v.hidden_size]));
    w2v_tensors.push(("lm_head.bias".into(), vec![CTC_VOCAB]));
    files.push(write_sparse(
        &w2v_dir.join(W2V_SAFETENSORS),
        &w2v_tensors,
        DType::F32,
    )?);

    // The LoRA as hf_hub_download leaves it: refs/main and the snapshot it names.
    let refs = cache.join("refs").join("main");
    std::fs::write(&refs, SPARSE_LORA_REVISION).map_err(io_err(&refs))?;
    files.push(SparseFile {
        path: refs,
        len: SPARSE_LORA_REVISION.len() as u64,
    });
    let mut model = WanS2v::<NdArray>::new(&cfg.s2v, &device);
    let mut linears: BTreeMap<String, [usize; 2]> = BTreeMap::new();
    for (p, l) in model.resident_linears_mut() {
        linears.insert(p, l.shape());
    }
    for (n, b) in model.blocks.iter_mut().enumerate() {
        for (p, l) in b.linears_mut() {
            linears.insert(format!("blocks.{n}.{p}"), l.shape());
        }
    }
    let r = LIVE_AVATAR_LORA_RANK;
    let mut lora = Vec::new();
    for module in lora_targets(&cfg.s2v) {
        let [out, fan_in] = linears[&module];
        lora.push((
            format!("base_model.model.{module}.lora_A.weight"),
            vec![r, fan_in],
        ));
        lora.push((
            format!("base_model.model.{module}.lora_B.weight"),
            vec![out, r],
        ));
    }
    files.push(write_sparse(&snapshot.join(LORA_NAME), &lora, DType::BF16)?);

    let tokenizer = crate::tokenizer::write_tiny_tokenizer(&s2v)?;
    files.push(SparseFile {
        len: std::fs::metadata(&tokenizer)
            .map_err(io_err(&tokenizer))?
            .len(),
        path: tokenizer,
    });
    Ok(files)
}
