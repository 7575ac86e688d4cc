//! The release layout of a Live Avatar model directory, and a random-weight tiny
//! checkpoint written in it for tests and demos.

use std::path::Path;

use burn::backend::NdArray;
use burn::module::Module;
use safetensors::tensor::TensorView;
use safetensors::Dtype;

use crate::error::WanError;
use crate::keys::list_params;
use crate::loader::S2V_INDEX;
use crate::pipeline::LiveAvatarConfig;
use crate::t5::T5Encoder;
use crate::vae::WanVae;
use crate::wav2vec2::{Wav2Vec2Config, Wav2Vec2Model, W2V_SAFETENSORS};
use crate::WanS2v;

/// The names of a release directory's files live in the `release-layout` crate, which `jobs`
/// shares to tell a release at intake; they are re-exported here for the model's own code.
pub use release_layout::{
    CONFIG_FILE, LORA_FILE, LORA_HF_CACHE, LORA_NAME, S2V_DIR, T5_PTH, T5_SAFETENSORS,
    TOKENIZER_DIR, VAE_PTH, VAE_SAFETENSORS, W2V_DIR,
};

/// The Live Avatar LoRA of the model directory `dir`, in either layout users have:
/// `LiveAvatar/liveavatar.safetensors`, or the Hugging Face cache
/// `LiveAvatar/models--Quark-Vision--Live-Avatar/snapshots/<rev>/liveavatar.safetensors`,
/// where `<rev>` is the revision `refs/main` names, else the only snapshot holding the file.
/// Several snapshots and no `refs/main` is an error naming them; so is a `refs/main` naming a
/// snapshot that is not there.
pub fn find_lora(dir: &Path) -> Result<std::path::PathBuf, WanError> {
    let plain = dir.join(LORA_FILE);
    if plain.exists() {
        return Ok(plain);
    }
    let cache = dir.join(LORA_HF_CACHE);
    let not_found = |path: std::path::PathBuf, why: String| WanError::Io {
        path,
        source: std::io::Error::new(std::io::ErrorKind::NotFound, why),
    };
    let main = cache.join("refs").join("main");
    if main.exists() {
        let rev = std::fs::read_to_string(&main).map_err(io_err(&main))?;
        let rev = rev.trim();
        if rev.is_empty() || rev.contains('/') || rev.contains("..") {
            return Err(not_found(
                main.clone(),
                format!("`{rev}` is not a revision"),
            ));
        }
        let file = cache.join("snapshots").join(rev).join(LORA_NAME);
        if file.exists() {
            return Ok(file);
        }
        return Err(not_found(
            file,
            format!("refs/main names revision {rev}, whose snapshot has no {LORA_NAME}"),
        ));
    }
    let snapshots = cache.join("snapshots");
    let mut found: Vec<std::path::PathBuf> = match std::fs::read_dir(&snapshots) {
        Ok(entries) => entries
            .filter_map(Result::ok)
            .map(|e| e.path().join(LORA_NAME))
            .filter(|p| p.exists())
            .collect(),
        Err(_) => Vec::new(),
    };
    found.sort();
    match found.len() {
        1 => Ok(found.remove(0)),
        0 => Err(not_found(
            plain,
            format!(
                "the Live Avatar LoRA is not in the model directory (looked for {LORA_FILE} and {LORA_HF_CACHE}/snapshots/*/{LORA_NAME})"
            ),
        )),
        _ => Err(WanError::Io {
            path: snapshots,
            source: std::io::Error::other(format!(
                "{} snapshots hold {LORA_NAME} and there is no refs/main to choose: {}; remove the stale ones or write the revision to {LORA_HF_CACHE}/refs/main",
                found.len(),
                found
                    .iter()
                    .filter_map(|p| p.parent()?.file_name())
                    .map(|n| n.to_string_lossy().into_owned())
                    .collect::<Vec<_>>()
                    .join(", ")
            )),
        }),
    }
}

/// LoRA rank of the tiny checkpoint's adapter.
pub const TINY_LORA_RANK: usize = 4;

/// SplitMix64 step: a fixed, well-mixed 64-bit sequence.
fn splitmix(state: &mut u64) -> u64 {
    *state = state.wrapping_add(0x9E37_79B9_7F4A_7C15);
    let mut z = *state;
    z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
    z ^ (z >> 31)
}

/// FNV-1a of a key, to give every tensor its own stream.
fn key_hash(key: &str) -> u64 {
    key.bytes().fold(0xCBF2_9CE4_8422_2325, |h, b| {
        (h ^ u64::from(b)).wrapping_mul(0x0100_0000_01B3)
    })
}

/// Seeded values for the tensor `key` of `shape`: norm gains near 1, matrices and
/// kernels uniform in ±1/√fan_in, vectors small.
pub fn random_values(seed: u64, key: &str, shape: &[usize]) -> Vec<f32> {
    let mut state = seed ^ key_hash(key);
    let n: usize = shape.iter().product();
    let last = key.rsplit('.').nth(1).unwrap_or("");
    let gain = key.ends_with("gamma")
        || key.ends_with("weight_g")
        || (shape.len() == 1 && key.ends_with(".weight") && last.contains("norm"));
    let (center, scale) = if gain {
        (1.0, 0.1)
    } else if shape.len() >= 2 {
        let fan_in: usize = shape[1..].iter().product();
        (0.0, 1.0 / (fan_in.max(1) as f64).sqrt())
    } else {
        (0.0, 0.02)
    };
    (0..n)
        .map(|_| {
            // 53 random bits to a float in [-1, 1).
            let u = (splitmix(&mut state) >> 11) as f64 / (1u64 << 53) as f64 * 2.0 - 1.0;
            (center + scale * u) as f32
        })
        .collect()
}

fn io_err(path: &Path) -> impl FnOnce(std::io::Error) -> WanError + '_ {
    move |source| WanError::Io {
        path: path.to_path_buf(),
        source,
    }
}

fn store_err(path: &Path, message: impl ToString) -> WanError {
    WanError::Store {
        path: path.to_path_buf(),
        message: message.to_string(),
    }
}

/// Tensors to write: checkpoint key, shape, little-endian f32 bytes.
pub type Named = Vec<(String, Vec<usize>, Vec<u8>)>;

/// Seeded f32 tensors for every parameter of `module`, by checkpoint key.
fn random_tensors<M: Module<NdArray>>(module: &M, seed: u64) -> Named {
    list_params::<NdArray, _>(module)
        .into_iter()
        .map(|p| {
            let bytes = random_values(seed, &p.key, &p.shape)
                .iter()
                .flat_map(|v| v.to_le_bytes())
                .collect();
            (p.key, p.shape, bytes)
        })
        .collect()
}

/// Writes `tensors` as one f32 safetensors file.
pub fn write_safetensors(path: &Path, tensors: &Named) -> Result<(), WanError> {
    let views = tensors
        .iter()
        .map(|(k, shape, data)| {
            TensorView::new(Dtype::F32, shape.clone(), data)
                .map(|v| (k.clone(), v))
                .map_err(|e| store_err(path, format!("{k}: {e}")))
        })
        .collect::<Result<Vec<_>, _>>()?;
    let bytes = safetensors::serialize(views, None).map_err(|e| store_err(path, e))?;
    std::fs::write(path, bytes).map_err(io_err(path))
}

/// Writes `tensors` as two shards named like the release plus the index file
/// (tensors alternate between the shards).
pub fn write_sharded(dir: &Path, tensors: &Named) -> Result<(), WanError> {
    let names = [
        "diffusion_pytorch_model-00001-of-00002.safetensors",
        "diffusion_pytorch_model-00002-of-00002.safetensors",
    ];
    let mut shards: [Named; 2] = [Vec::new(), Vec::new()];
    let mut weight_map = serde_json::Map::new();
    for (i, t) in tensors.iter().enumerate() {
        weight_map.insert(t.0.clone(), names[i % 2].into());
        shards[i % 2].push(t.clone());
    }
    for (name, shard) in names.iter().zip(&shards) {
        write_safetensors(&dir.join(name), shard)?;
    }
    let total: usize = tensors.iter().map(|t| t.2.len()).sum();
    let index = serde_json::json!({"metadata": {"total_size": total}, "weight_map": weight_map});
    let path = dir.join(S2V_INDEX);
    std::fs::write(&path, index.to_string()).map_err(io_err(&path))
}

/// A wav2vec2 `config.json` with transformers' field names: the fields the engine reads, and
/// the ones transformers writes beside them.
pub(crate) fn w2v_config_json(cfg: &Wav2Vec2Config) -> serde_json::Value {
    serde_json::json!({
        "architectures": ["Wav2Vec2ForCTC"],
        "model_type": "wav2vec2",
        "conv_bias": true,
        "conv_dim": cfg.conv_dim,
        "conv_kernel": cfg.conv_kernel,
        "conv_stride": cfg.conv_stride,
        "do_stable_layer_norm": true,
        "feat_extract_activation": "gelu",
        "feat_extract_norm": "layer",
        "hidden_act": "gelu",
        "hidden_size": cfg.hidden_size,
        "intermediate_size": cfg.intermediate_size,
        "layer_norm_eps": cfg.layer_norm_eps,
        "mask_time_prob": if cfg.masked_spec_embed { 0.05 } else { 0.0 },
        "num_attention_heads": cfg.num_attention_heads,
        "num_conv_pos_embedding_groups": cfg.num_conv_pos_embedding_groups,
        "num_conv_pos_embeddings": cfg.num_conv_pos_embeddings,
        "num_hidden_layers": cfg.num_hidden_layers,
    })
}

/// Writes a random-weight checkpoint at the tiny config ([`LiveAvatarConfig::tiny`]) in
/// the release layout into `dir` (created if missing):
///
/// ```text
/// dir/Wan2.2-S2V-14B/config.json                       S2V config + `reelspool` section
/// dir/Wan2.2-S2V-14B/diffusion_pytorch_model-0000{1,2}-of-00002.safetensors + index
/// dir/Wan2.2-S2V-14B/Wan2.1_VAE.safetensors
/// dir/Wan2.2-S2V-14B/models_t5_umt5-xxl-enc.safetensors
/// dir/Wan2.2-S2V-14B/wav2vec2-large-xlsr-53-english/{config.json, model.safetensors}
/// dir/LiveAvatar/liveavatar.safetensors                 peft LoRA, rank 4, on the layers
///                                                       Live Avatar's adapts
/// ```
///
/// The same `seed` writes the same bytes. The tokenizer is a small Unigram vocabulary in
/// [`TOKENIZER_DIR`] ([`crate::tokenizer::write_tiny_tokenizer`]). The model makes
/// noise-like frames: it exists to run the pipeline end to end, not to look like anything.
pub fn write_tiny_release(dir: &Path, seed: u64) -> Result<(), WanError> {
    let cfg = LiveAvatarConfig::tiny();
    let device = Default::default();
    let s2v = dir.join(S2V_DIR);
    let w2v = s2v.join(W2V_DIR);
    let lora_path = dir.join(LORA_FILE);
    for d in [&s2v, &w2v] {
        std::fs::create_dir_all(d).map_err(io_err(d))?;
    }
    if let Some(parent) = lora_path.parent() {
        std::fs::create_dir_all(parent).map_err(io_err(parent))?;
    }
    crate::tokenizer::write_tiny_tokenizer(&s2v)?;
    let config_path = s2v.join(CONFIG_FILE);
    let config =
        serde_json::to_string_pretty(&cfg.to_json()).map_err(|e| store_err(&config_path, e))?;
    std::fs::write(&config_path, config).map_err(io_err(&config_path))?;

    let dit = WanS2v::<NdArray>::new(&cfg.s2v, &device);
    write_sharded(&s2v, &random_tensors(&dit, seed))?;
    let vae = WanVae::<NdArray>::new(&cfg.vae, &device);
    write_safetensors(&s2v.join(VAE_SAFETENSORS), &random_tensors(&vae, seed ^ 1))?;
    let t5 = T5Encoder::<NdArray>::new(&cfg.t5, &device);
    write_safetensors(&s2v.join(T5_SAFETENSORS), &random_tensors(&t5, seed ^ 2))?;

    let w2v_cfg = tiny_wav2vec2();
    let w2v_json = w2v.join("config.json");
    std::fs::write(&w2v_json, w2v_config_json(&w2v_cfg).to_string()).map_err(io_err(&w2v_json))?;
    let w2v_model = Wav2Vec2Model::<NdArray>::new(&w2v_cfg, &device);
    write_safetensors(
        &w2v.join(W2V_SAFETENSORS),
        &random_tensors(&w2v_model, seed ^ 3),
    )?;

    // The LoRA adapts the layers Live Avatar's does (`lora::lora_targets`): every block's
    // attention projections and feed-forward matrices and the injectors' attention.
    let mut lora: Named = Vec::new();
    let mut shapes = dit;
    let mut linears: Vec<(String, [usize; 2])> = Vec::new();
    for (path, l) in shapes.resident_linears_mut() {
        linears.push((path, l.shape()));
    }
    for (n, block) in shapes.blocks.iter_mut().enumerate() {
        for (path, l) in block.linears_mut() {
            linears.push((format!("blocks.{n}.{path}"), l.shape()));
        }
    }
    for module in crate::lora::lora_targets(&cfg.s2v) {
        let [fan_out, fan_in] = linears
            .iter()
            .find(|(p, _)| *p == module)
            .map(|(_, s)| *s)
            .expect("every LoRA target is a linear layer of the model");
        for (name, shape) in [
            ("lora_A", vec![TINY_LORA_RANK, fan_in]),
            ("lora_B", vec![fan_out, TINY_LORA_RANK]),
        ] {
            let key = format!("base_model.model.{module}.{name}.weight");
            let bytes = random_values(seed ^ 4, &key, &shape)
                .iter()
                .flat_map(|v| v.to_le_bytes())
                .collect();
            lora.push((key, shape, bytes));
        }
    }
    write_safetensors(&lora_path, &lora)
}

/// The tiny checkpoint's wav2vec2: the parity fixtures' size, without the training-time
/// masking vector.
pub fn tiny_wav2vec2() -> Wav2Vec2Config {
    Wav2Vec2Config {
        masked_spec_embed: false,
        ..Wav2Vec2Config::tiny()
    }
}
