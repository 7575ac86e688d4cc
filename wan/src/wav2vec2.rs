//! wav2vec2 (the xlsr-53 "large" layout Live Avatar uses for audio) in Burn.
//!
//! The module tree is named after the keys of transformers' `Wav2Vec2Model`
//! (`feature_extractor.conv_layers.N.conv.weight`, `encoder.layers.N.attention.q_proj.weight`,
//! ...), so the released folder loads without renaming beyond dropping the
//! `wav2vec2.` prefix of the `Wav2Vec2ForCTC` file. Only the variant the release uses is
//! built: a layer-normed conv feature stack (`feat_extract_norm = "layer"`, conv biases),
//! the "stable layer norm" encoder (pre-norm layers, a final layer norm), exact GELU.
//!
//! [`Wav2Vec2Model::hidden_states`] returns `num_hidden_layers + 1` states the way
//! transformers 4.x returns them with `output_hidden_states=True`: the input of every
//! layer (the first one is the projected features plus the positional conv), then the
//! output of the last layer after the encoder's final layer norm. wan22's
//! `AudioEncoder.extract_audio_feat` stacks those 25 states; [`audio_per_video_frame`]
//! runs that function's whole path from raw 16 kHz samples.

use std::collections::{BTreeMap, BTreeSet};
use std::path::Path;

use burn::module::{Module, Param};
use burn::nn::Initializer;
use burn::prelude::*;
use burn::tensor::activation::{gelu, softmax};
use burn::tensor::ops::ConvOptions;
use burn_store::{ModuleStore, PytorchStore, SafetensorsStore};

use crate::audio_features::{bucket_per_video_frame, interpolate_to_30fps, AudioStates};
use crate::error::WanError;
use crate::keys::list_params;
use crate::loader::LoadReport;
use crate::nn::{LayerNorm, TorchLinear};

/// Shape config of the model (the fields of the folder's `config.json` that matter).
#[derive(Debug, Clone, PartialEq)]
pub struct Wav2Vec2Config {
    pub hidden_size: usize,
    pub num_hidden_layers: usize,
    pub num_attention_heads: usize,
    pub intermediate_size: usize,
    pub conv_dim: Vec<usize>,
    pub conv_kernel: Vec<usize>,
    pub conv_stride: Vec<usize>,
    pub num_conv_pos_embeddings: usize,
    pub num_conv_pos_embedding_groups: usize,
    pub layer_norm_eps: f64,
    /// The checkpoint carries `masked_spec_embed` (training-time masking vector,
    /// unused at inference) when `mask_time_prob` or `mask_feature_prob` is positive.
    pub masked_spec_embed: bool,
}

impl Wav2Vec2Config {
    /// wav2vec2-large-xlsr-53-english, the folder shipped with Wan2.2-S2V-14B.
    pub fn large_xlsr53() -> Self {
        Self {
            hidden_size: 1024,
            num_hidden_layers: 24,
            num_attention_heads: 16,
            intermediate_size: 4096,
            conv_dim: vec![512; 7],
            conv_kernel: vec![10, 3, 3, 3, 3, 2, 2],
            conv_stride: vec![5, 2, 2, 2, 2, 2, 2],
            num_conv_pos_embeddings: 128,
            num_conv_pos_embedding_groups: 16,
            layer_norm_eps: 1e-5,
            masked_spec_embed: true,
        }
    }

    /// The parity fixtures' size (`TINY` in `tools/wan_fixtures/w2v_fixtures.py`): the
    /// real kernels and strides, width 32, 2 layers, a 16-tap positional conv.
    pub fn tiny() -> Self {
        Self {
            hidden_size: 32,
            num_hidden_layers: 2,
            num_attention_heads: 4,
            intermediate_size: 64,
            conv_dim: vec![32; 7],
            num_conv_pos_embeddings: 16,
            num_conv_pos_embedding_groups: 4,
            ..Self::large_xlsr53()
        }
    }

    /// Reads a transformers `config.json`, refusing the variants not ported here
    /// (post-norm encoder, group-normed feature stack, conv without bias, another
    /// activation) with the field and its value.
    pub fn from_json_file(path: &Path) -> Result<Self, WanError> {
        let text = std::fs::read_to_string(path).map_err(|source| WanError::Io {
            path: path.to_path_buf(),
            source,
        })?;
        let bad = |message: String| WanError::BadConfig {
            path: path.to_path_buf(),
            message,
        };
        let json: serde_json::Value =
            serde_json::from_str(&text).map_err(|e| bad(e.to_string()))?;
        let usize_field = |name: &str| -> Result<usize, WanError> {
            json.get(name)
                .and_then(serde_json::Value::as_u64)
                .map(|v| v as usize)
                .ok_or_else(|| bad(format!("`{name}` is missing or not a whole number")))
        };
        let list_field = |name: &str| -> Result<Vec<usize>, WanError> {
            json.get(name)
                .and_then(serde_json::Value::as_array)
                .and_then(|a| {
                    a.iter()
                        .map(|v| v.as_u64().map(|v| v as usize))
                        .collect::<Option<Vec<_>>>()
                })
                .ok_or_else(|| bad(format!("`{name}` is missing or not a list of numbers")))
        };
        // Fields whose transformers default differs from the ported variant must be
        // present with the ported value.
        let require = |name: &str, want: serde_json::Value| -> Result<(), WanError> {
            match json.get(name) {
                Some(v) if *v == want => Ok(()),
                Some(v) => Err(bad(format!(
                    "`{name}` is {v}; only {want} is supported (the xlsr-53 layout)"
                ))),
                None => Err(bad(format!(
                    "`{name}` is missing; only {want} is supported (the xlsr-53 layout)"
                ))),
            }
        };
        require("do_stable_layer_norm", true.into())?;
        require("feat_extract_norm", "layer".into())?;
        require("conv_bias", true.into())?;
        for act in ["hidden_act", "feat_extract_activation"] {
            if let Some(v) = json.get(act) {
                if v != "gelu" {
                    return Err(bad(format!("`{act}` is {v}; only \"gelu\" is supported")));
                }
            }
        }
        let prob = |name: &str| json.get(name).and_then(serde_json::Value::as_f64);
        let config = Self {
            hidden_size: usize_field("hidden_size")?,
            num_hidden_layers: usize_field("num_hidden_layers")?,
            num_attention_heads: usize_field("num_attention_heads")?,
            intermediate_size: usize_field("intermediate_size")?,
            conv_dim: list_field("conv_dim")?,
            conv_kernel: list_field("conv_kernel")?,
            conv_stride: list_field("conv_stride")?,
            num_conv_pos_embeddings: usize_field("num_conv_pos_embeddings")?,
            num_conv_pos_embedding_groups: usize_field("num_conv_pos_embedding_groups")?,
            layer_norm_eps: json
                .get("layer_norm_eps")
                .and_then(serde_json::Value::as_f64)
                .unwrap_or(1e-5),
            // transformers' defaults: mask_time_prob 0.05, mask_feature_prob 0.
            masked_spec_embed: prob("mask_time_prob").unwrap_or(0.05) > 0.0
                || prob("mask_feature_prob").unwrap_or(0.0) > 0.0,
        };
        let n = config.conv_dim.len();
        if n == 0 || config.conv_kernel.len() != n || config.conv_stride.len() != n {
            return Err(bad(format!(
                "conv_dim, conv_kernel and conv_stride must have the same non-zero length (found {}, {}, {})",
                n,
                config.conv_kernel.len(),
                config.conv_stride.len()
            )));
        }
        if config.num_attention_heads == 0
            || !config
                .hidden_size
                .is_multiple_of(config.num_attention_heads)
        {
            return Err(bad(format!(
                "hidden_size {} is not a multiple of num_attention_heads {}",
                config.hidden_size, config.num_attention_heads
            )));
        }
        if config.num_conv_pos_embedding_groups == 0
            || !config
                .hidden_size
                .is_multiple_of(config.num_conv_pos_embedding_groups)
        {
            return Err(bad(format!(
                "hidden_size {} is not a multiple of num_conv_pos_embedding_groups {}",
                config.hidden_size, config.num_conv_pos_embedding_groups
            )));
        }
        Ok(config)
    }

    /// Number of output frames for `samples` input samples (no padding, so each conv
    /// keeps `(len - kernel) / stride + 1`); 0 when the input is shorter than the
    /// receptive field.
    pub fn output_frames(&self, samples: usize) -> usize {
        let mut len = samples;
        for (k, s) in self.conv_kernel.iter().zip(&self.conv_stride) {
            if len < *k {
                return 0;
            }
            len = (len - k) / s + 1;
        }
        len
    }
}

fn lazy<B: Backend, const D: usize>(shape: [usize; D], device: &B::Device) -> Param<Tensor<B, D>> {
    Initializer::Normal {
        mean: 0.0,
        std: 0.02,
    }
    .init(shape, device)
}

/// `nn.Conv1d` with PyTorch's weight layout `[out, in / groups, kernel]`.
#[derive(Module, Debug)]
pub struct Conv1dTorch<B: Backend> {
    pub weight: Param<Tensor<B, 3>>,
    pub bias: Param<Tensor<B, 1>>,
    pub stride: usize,
}

/// `Wav2Vec2LayerNormConvLayer`: conv, layer norm over channels, GELU.
#[derive(Module, Debug)]
pub struct ConvLayer<B: Backend> {
    pub conv: Conv1dTorch<B>,
    pub layer_norm: LayerNorm<B>,
}

impl<B: Backend> ConvLayer<B> {
    /// `[batch, channels, time]` in and out.
    pub fn forward(&self, x: Tensor<B, 3>) -> Tensor<B, 3> {
        let options = ConvOptions::new([self.conv.stride], [0], [1], 1);
        let y = burn::tensor::module::conv1d(
            x,
            self.conv.weight.val(),
            Some(self.conv.bias.val()),
            options,
        );
        let y = self.layer_norm.forward(y.swap_dims(1, 2)).swap_dims(1, 2);
        gelu(y)
    }
}

/// `Wav2Vec2FeatureEncoder`.
#[derive(Module, Debug)]
pub struct FeatureExtractor<B: Backend> {
    pub conv_layers: Vec<ConvLayer<B>>,
}

/// `Wav2Vec2FeatureProjection`: layer norm then a linear map to the model width.
#[derive(Module, Debug)]
pub struct FeatureProjection<B: Backend> {
    pub layer_norm: LayerNorm<B>,
    pub projection: TorchLinear<B>,
}

/// The weight-normed grouped conv of the positional embedding, stored as the released
/// checkpoint stores it: `weight_g` (`[1, 1, kernel]`, one gain per tap, weight norm over
/// dim 2) and `weight_v` (`[out, in / groups, kernel]`). Newer files name them
/// `parametrizations.weight.original0` / `original1`; the loader maps those here.
#[derive(Module, Debug)]
pub struct WeightNormConv<B: Backend> {
    pub weight_g: Param<Tensor<B, 3>>,
    pub weight_v: Param<Tensor<B, 3>>,
    pub bias: Param<Tensor<B, 1>>,
    pub groups: usize,
}

impl<B: Backend> WeightNormConv<B> {
    /// `g · v / ‖v‖`, the norm taken per kernel tap over the other two dimensions.
    pub fn weight(&self) -> Tensor<B, 3> {
        let v = self.weight_v.val();
        let norm = v.clone().powi_scalar(2).sum_dim(0).sum_dim(1).sqrt();
        v * (self.weight_g.val() / norm)
    }
}

/// `Wav2Vec2PositionalConvEmbedding`: same-length grouped conv (the extra output step
/// of an even kernel dropped), then GELU.
#[derive(Module, Debug)]
pub struct PosConvEmbed<B: Backend> {
    pub conv: WeightNormConv<B>,
}

impl<B: Backend> PosConvEmbed<B> {
    /// `[batch, time, width]` in and out.
    pub fn forward(&self, x: Tensor<B, 3>) -> Tensor<B, 3> {
        let [_, t, _] = x.dims();
        let weight = self.conv.weight();
        let k = weight.dims()[2];
        let options = ConvOptions::new([1], [k / 2], [1], self.conv.groups);
        let y = burn::tensor::module::conv1d(
            x.swap_dims(1, 2),
            weight,
            Some(self.conv.bias.val()),
            options,
        );
        gelu(y.narrow(2, 0, t)).swap_dims(1, 2)
    }
}

/// `Wav2Vec2Attention` without mask: biased q/k/v/out projections, softmax over keys.
#[derive(Module, Debug)]
pub struct SelfAttention<B: Backend> {
    pub q_proj: TorchLinear<B>,
    pub k_proj: TorchLinear<B>,
    pub v_proj: TorchLinear<B>,
    pub out_proj: TorchLinear<B>,
    pub num_heads: usize,
}

impl<B: Backend> SelfAttention<B> {
    pub fn forward(&self, x: Tensor<B, 3>) -> Tensor<B, 3> {
        let [b, t, c] = x.dims();
        let h = self.num_heads;
        let d = c / h;
        let heads = |y: Tensor<B, 3>| y.reshape([b, t, h, d]).swap_dims(1, 2);
        let q = heads(self.q_proj.forward(x.clone())) * (d as f64).powf(-0.5);
        let k = heads(self.k_proj.forward(x.clone()));
        let v = heads(self.v_proj.forward(x));
        let weights = softmax(q.matmul(k.swap_dims(2, 3)), 3);
        let out = weights.matmul(v).swap_dims(1, 2).reshape([b, t, c]);
        self.out_proj.forward(out)
    }
}

/// `Wav2Vec2FeedForward`: linear, exact GELU, linear.
#[derive(Module, Debug)]
pub struct FeedForward<B: Backend> {
    pub intermediate_dense: TorchLinear<B>,
    pub output_dense: TorchLinear<B>,
}

/// `Wav2Vec2EncoderLayerStableLayerNorm`: pre-norm attention and feed-forward.
#[derive(Module, Debug)]
pub struct EncoderLayer<B: Backend> {
    pub attention: SelfAttention<B>,
    pub layer_norm: LayerNorm<B>,
    pub feed_forward: FeedForward<B>,
    pub final_layer_norm: LayerNorm<B>,
}

impl<B: Backend> EncoderLayer<B> {
    pub fn forward(&self, x: Tensor<B, 3>) -> Tensor<B, 3> {
        let x = x.clone() + self.attention.forward(self.layer_norm.forward(x));
        let ff = &self.feed_forward;
        let y = ff
            .intermediate_dense
            .forward(self.final_layer_norm.forward(x.clone()));
        x + ff.output_dense.forward(gelu(y))
    }
}

/// `Wav2Vec2EncoderStableLayerNorm`.
#[derive(Module, Debug)]
pub struct Encoder<B: Backend> {
    pub pos_conv_embed: PosConvEmbed<B>,
    pub layer_norm: LayerNorm<B>,
    pub layers: Vec<EncoderLayer<B>>,
}

/// `Wav2Vec2Model` (xlsr-53 layout).
#[derive(Module, Debug)]
pub struct Wav2Vec2Model<B: Backend> {
    pub masked_spec_embed: Option<Param<Tensor<B, 1>>>,
    pub feature_extractor: FeatureExtractor<B>,
    pub feature_projection: FeatureProjection<B>,
    pub encoder: Encoder<B>,
}

impl<B: Backend> Wav2Vec2Model<B> {
    /// Builds the tree with lazy parameters (nothing allocated until loaded or read).
    pub fn new(cfg: &Wav2Vec2Config, device: &B::Device) -> Self {
        let eps = cfg.layer_norm_eps;
        let c = cfg.hidden_size;
        let mut in_ch = 1;
        let conv_layers = cfg
            .conv_dim
            .iter()
            .zip(&cfg.conv_kernel)
            .zip(&cfg.conv_stride)
            .map(|((&out, &k), &s)| {
                let layer = ConvLayer {
                    conv: Conv1dTorch {
                        weight: lazy([out, in_ch, k], device),
                        bias: Initializer::Zeros.init([out], device),
                        stride: s,
                    },
                    layer_norm: LayerNorm::new(out, eps, true, device),
                };
                in_ch = out;
                layer
            })
            .collect();
        let feat = in_ch;
        let groups = cfg.num_conv_pos_embedding_groups;
        let k = cfg.num_conv_pos_embeddings;
        let linear = |i, o| TorchLinear::new(i, o, true, device);
        Self {
            masked_spec_embed: cfg
                .masked_spec_embed
                .then(|| Initializer::Zeros.init([c], device)),
            feature_extractor: FeatureExtractor { conv_layers },
            feature_projection: FeatureProjection {
                layer_norm: LayerNorm::new(feat, eps, true, device),
                projection: linear(feat, c),
            },
            encoder: Encoder {
                pos_conv_embed: PosConvEmbed {
                    conv: WeightNormConv {
                        weight_g: Initializer::Ones.init([1, 1, k], device),
                        weight_v: lazy([c, c / groups, k], device),
                        bias: Initializer::Zeros.init([c], device),
                        groups,
                    },
                },
                layer_norm: LayerNorm::new(c, eps, true, device),
                layers: (0..cfg.num_hidden_layers)
                    .map(|_| EncoderLayer {
                        attention: SelfAttention {
                            q_proj: linear(c, c),
                            k_proj: linear(c, c),
                            v_proj: linear(c, c),
                            out_proj: linear(c, c),
                            num_heads: cfg.num_attention_heads,
                        },
                        layer_norm: LayerNorm::new(c, eps, true, device),
                        feed_forward: FeedForward {
                            intermediate_dense: linear(c, cfg.intermediate_size),
                            output_dense: linear(cfg.intermediate_size, c),
                        },
                        final_layer_norm: LayerNorm::new(c, eps, true, device),
                    })
                    .collect(),
            },
        }
    }

    /// Frames the conv stack makes of `samples` input samples (0 when the input is
    /// shorter than its receptive field), as [`Wav2Vec2Config::output_frames`].
    pub fn output_frames(&self, samples: usize) -> usize {
        let mut len = samples;
        for layer in &self.feature_extractor.conv_layers {
            let k = layer.conv.weight.dims()[2];
            if len < k {
                return 0;
            }
            len = (len - k) / layer.conv.stride + 1;
        }
        len
    }

    /// The conv feature stack: `[batch, samples]` → `[batch, channels, frames]`.
    pub fn features(&self, input_values: Tensor<B, 2>) -> Tensor<B, 3> {
        let mut x = input_values.unsqueeze_dim::<3>(1);
        for layer in &self.feature_extractor.conv_layers {
            x = layer.forward(x);
        }
        x
    }

    /// Projected features `[batch, frames, width]` (the encoder's input).
    pub fn project(&self, features: Tensor<B, 3>) -> Tensor<B, 3> {
        let p = &self.feature_projection;
        p.projection
            .forward(p.layer_norm.forward(features.swap_dims(1, 2)))
    }

    /// All `num_hidden_layers + 1` hidden states, `[batch, frames, width]` each, as
    /// transformers 4.x returns them (module docs).
    pub fn hidden_states(&self, input_values: Tensor<B, 2>) -> Vec<Tensor<B, 3>> {
        let x = self.project(self.features(input_values));
        let enc = &self.encoder;
        let mut x = x.clone() + enc.pos_conv_embed.forward(x);
        let mut states = Vec::with_capacity(enc.layers.len() + 1);
        for layer in &enc.layers {
            states.push(x.clone());
            x = layer.forward(x);
        }
        states.push(enc.layer_norm.forward(x));
        states
    }
}

/// The processor's `do_normalize`: zero mean, unit variance over the clip
/// (`(x - mean) / sqrt(var + 1e-7)`, biased variance), computed in f64.
pub fn normalize_waveform(samples: &[f32]) -> Vec<f32> {
    let n = samples.len().max(1) as f64;
    let mean = samples.iter().map(|&x| x as f64).sum::<f64>() / n;
    let var = samples
        .iter()
        .map(|&x| (x as f64 - mean).powi(2))
        .sum::<f64>()
        / n;
    let inv = 1.0 / (var + 1e-7).sqrt();
    samples
        .iter()
        .map(|&x| ((x as f64 - mean) * inv) as f32)
        .collect()
}

/// Per-video-frame audio features from raw mono 16 kHz samples, as wan22's S2V pipeline
/// computes them (`extract_audio_feat(return_all_layers=True)` then
/// `get_audio_embed_bucket_fps(fps, batch_frames, m=0)`): normalise, all hidden states,
/// 50 → 30 fps, one row per video frame. Returns `[frames][layers][width]` flattened with
/// `frames = batches · batch_frames`, and `batches`; `None` when the audio is shorter
/// than the model's receptive field (400 samples at the real config).
pub fn audio_per_video_frame<B: Backend>(
    model: &Wav2Vec2Model<B>,
    samples: &[f32],
    fps: f64,
    batch_frames: usize,
    device: &B::Device,
) -> Option<(Vec<f32>, usize)> {
    if model.output_frames(samples.len()) == 0 {
        return None;
    }
    let values = normalize_waveform(samples);
    let n = values.len();
    let x = Tensor::<B, 2>::from_data(TensorData::new(values, [1, n]), device);
    let states = model.hidden_states(x);
    let layers = states.len();
    let stacked = Tensor::cat(states, 0);
    let [_, frames, dim] = stacked.dims();
    let values: Vec<f32> = stacked.into_data().convert::<f32>().to_vec().ok()?;
    let at30 = interpolate_to_30fps(&AudioStates {
        layers,
        frames,
        dim,
        values,
    });
    Some(bucket_per_video_frame(&at30, fps, batch_frames))
}

/// Weights file of a released wav2vec2 folder, preferring safetensors.
pub const W2V_SAFETENSORS: &str = "model.safetensors";
/// The pickle transformers wrote before safetensors.
pub const W2V_BIN: &str = "pytorch_model.bin";

/// Loads a wav2vec2 folder as released (`config.json` plus `model.safetensors` or
/// `pytorch_model.bin`, `Wav2Vec2ForCTC` or `Wav2Vec2Model` keys): builds the model
/// from the config and fills every parameter, with the same checks as the DiT loader.
pub fn load_wav2vec2_dir<B: Backend>(
    dir: &Path,
    device: &B::Device,
) -> Result<(Wav2Vec2Model<B>, LoadReport), WanError> {
    let config = Wav2Vec2Config::from_json_file(&dir.join("config.json"))?;
    let model = Wav2Vec2Model::new(&config, device);
    let st = dir.join(W2V_SAFETENSORS);
    let file = if st.exists() {
        st
    } else if dir.join(W2V_BIN).exists() {
        dir.join(W2V_BIN)
    } else {
        return Err(WanError::Io {
            path: dir.to_path_buf(),
            source: std::io::Error::new(
                std::io::ErrorKind::NotFound,
                format!("neither {W2V_SAFETENSORS} nor {W2V_BIN} is in the wav2vec2 folder"),
            ),
        });
    };
    load_wav2vec2_file(model, &file, device)
}

/// Source key renames: the `Wav2Vec2ForCTC` prefix, and the parametrization names of
/// newer weight-normed files.
const REMAP: [(&str, &str); 3] = [
    (r"^wav2vec2\.", ""),
    (r"\.parametrizations\.weight\.original0$", ".weight_g"),
    (r"\.parametrizations\.weight\.original1$", ".weight_v"),
];

/// The model key a released wav2vec2 file's `key` loads into ([`REMAP`]: the
/// `Wav2Vec2ForCTC` prefix dropped, newer weight-norm names mapped to `weight_g`/`weight_v`),
/// or `None` for the CTC head the engine leaves out.
pub(crate) fn model_key(key: &str) -> Option<String> {
    if key.starts_with("lm_head.") {
        return None;
    }
    let key = key.strip_prefix("wav2vec2.").unwrap_or(key);
    let key = if let Some(stem) = key.strip_suffix(".parametrizations.weight.original0") {
        format!("{stem}.weight_g")
    } else if let Some(stem) = key.strip_suffix(".parametrizations.weight.original1") {
        format!("{stem}.weight_v")
    } else {
        key.to_string()
    };
    Some(key)
}

/// Loads `model`'s parameters from one weights file (`.safetensors`, or a torch pickle
/// otherwise). Tensors of the CTC head (`lm_head.*`) are skipped; any other tensor the
/// model lacks, a missing one or a wrong shape fails naming the file and the key.
pub fn load_wav2vec2_file<B: Backend>(
    model: Wav2Vec2Model<B>,
    file: &Path,
    device: &B::Device,
) -> Result<(Wav2Vec2Model<B>, LoadReport), WanError> {
    if !file.exists() {
        return Err(WanError::Io {
            path: file.to_path_buf(),
            source: std::io::Error::new(std::io::ErrorKind::NotFound, "weights file not found"),
        });
    }
    let expected: BTreeMap<String, Vec<usize>> = list_params::<B, _>(&model)
        .into_iter()
        .map(|p| (p.key, p.shape))
        .collect();
    let mut model = model;
    let is_safetensors = file.extension().is_some_and(|e| e == "safetensors");
    let applied: BTreeSet<String> = if is_safetensors {
        let mut store = SafetensorsStore::from_file(file)
            .allow_partial(true)
            .validate(false)
            .skip_enum_variants(true);
        for (from, to) in REMAP {
            store = store.with_key_remapping(from, to);
        }
        apply(&mut model, store, None, file, &expected, device)?
    } else {
        let mut store = PytorchStore::from_file(file)
            .allow_partial(true)
            .validate(false)
            .skip_enum_variants(true)
            .map_indices_contiguous(false);
        for (from, to) in REMAP {
            store = store.with_key_remapping(from, to);
        }
        let adapter: Box<dyn burn_store::ModuleAdapter> =
            Box::new(burn_store::PyTorchToBurnAdapter);
        apply(&mut model, store, Some(adapter), file, &expected, device)?
    };
    let applied: BTreeSet<&String> = applied.iter().collect();
    let report = crate::loader::single_file_report(file, &expected, &applied)?;
    Ok((model, report))
}

/// Applies one file's tensors to `model`, as the DiT loader does, except that tensors
/// of the CTC head are left out instead of refused.
fn apply<B: Backend, S: ModuleStore>(
    model: &mut Wav2Vec2Model<B>,
    store: S,
    adapter: Option<Box<dyn burn_store::ModuleAdapter>>,
    file: &Path,
    expected: &BTreeMap<String, Vec<usize>>,
    device: &B::Device,
) -> Result<BTreeSet<String>, WanError>
where
    S::Error: std::fmt::Display,
{
    let result =
        crate::loader::apply_store(model, store, adapter, &["lm_head."], file, expected, device)?;
    Ok(result.applied.into_iter().collect())
}
