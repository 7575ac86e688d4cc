//! The tiny architecture: its `config.json`, the list of its weights, and the seeded generator
//! that makes `builtin:tiny`.
//!
//! The generated weights are random except for a few pass-through paths (see [`Init`]): an
//! untrained model of this shape would move at random, and the demo must visibly speak.

use serde::{Deserialize, Serialize};

use super::carry::{LATENT_CHANNELS, MOTION_LATENT_FRAMES, SPATIAL_DOWNSCALE, TEMPORAL_DOWNSCALE};
use super::features::{AUDIO_FEATURES_PER_FRAME, REFERENCE_CELL_FEATURES, TEXT_EMBED_DIM};
use super::rng::{SeededRng, Stream};

pub(crate) const ARCHITECTURE: &str = "reelspool-tiny-avatar";
const FORMAT_VERSION: u32 = 1;
/// Seed of the generated weights. Changing it changes every builtin:tiny video.
pub(crate) const BUILTIN_WEIGHTS_SEED: u64 = 0x5EED_7A1C_0000_0001;

/// Audio features per latent frame: the features of its four output frames.
pub(crate) const AUDIO_FEATURES_PER_LATENT: usize =
    AUDIO_FEATURES_PER_FRAME * TEMPORAL_DOWNSCALE as usize;
/// Decoder output fields per latent cell: horizontal shift, vertical shift, shading.
pub(crate) const DECODER_FIELDS: usize = 3;

/// `config.json` of a tiny-architecture checkpoint. The fixed geometry is stored too, so a
/// checkpoint made for another geometry is refused instead of silently misread.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct TinyConfig {
    pub(crate) architecture: String,
    pub(crate) format_version: u32,
    pub(crate) d_model: usize,
    pub(crate) heads: usize,
    pub(crate) layers: usize,
    pub(crate) mlp_ratio: usize,
    pub(crate) decoder_hidden: usize,
    pub(crate) latent_channels: usize,
    pub(crate) spatial_downscale: u32,
    pub(crate) temporal_downscale: u32,
    pub(crate) motion_latent_frames: usize,
}

impl TinyConfig {
    /// The configuration `builtin:tiny` is generated with.
    pub(crate) fn builtin() -> Self {
        TinyConfig {
            architecture: ARCHITECTURE.to_string(),
            format_version: FORMAT_VERSION,
            d_model: 64,
            heads: 4,
            layers: 2,
            mlp_ratio: 4,
            decoder_hidden: 64,
            latent_channels: LATENT_CHANNELS,
            spatial_downscale: SPATIAL_DOWNSCALE,
            temporal_downscale: TEMPORAL_DOWNSCALE,
            motion_latent_frames: MOTION_LATENT_FRAMES,
        }
    }

    pub(crate) fn validate(&self) -> Result<(), String> {
        let fixed = TinyConfig::builtin();
        if self.architecture != fixed.architecture || self.format_version != fixed.format_version {
            return Err(format!(
                "architecture `{}` version {} is not supported (expected `{}` version {})",
                self.architecture, self.format_version, fixed.architecture, fixed.format_version
            ));
        }
        if (
            self.latent_channels,
            self.spatial_downscale,
            self.temporal_downscale,
        ) != (
            fixed.latent_channels,
            fixed.spatial_downscale,
            fixed.temporal_downscale,
        ) || self.motion_latent_frames != fixed.motion_latent_frames
        {
            return Err("latent geometry differs from the tiny architecture's".to_string());
        }
        let sizes_ok = (1..=4096).contains(&self.d_model)
            && (1..=64).contains(&self.heads)
            && self.d_model / self.heads * self.heads == self.d_model
            && (1..=64).contains(&self.layers)
            && (1..=16).contains(&self.mlp_ratio)
            && (1..=4096).contains(&self.decoder_hidden);
        if !sizes_ok {
            return Err(
                "d_model, heads, layers, mlp_ratio or decoder_hidden out of range \
                        (d_model must be a multiple of heads)"
                    .to_string(),
            );
        }
        Ok(())
    }
}

/// How a generated weight is initialised.
#[derive(Debug, Clone)]
enum Init {
    /// Gaussian with standard deviation `gain / sqrt(fan_in)`.
    Normal {
        gain: f32,
    },
    Zeros,
    Values(Vec<f32>),
    /// Small Gaussian noise plus ones at `(row, column)` pairs: a pass-through path from chosen
    /// inputs to chosen outputs. This is how the untrained tiny model already moves the mouth
    /// with the speech: audio loudness → "jaw" latent channels → jaw field in the decoder.
    PassThrough {
        ones: Vec<(usize, usize)>,
        noise_std: f32,
    },
    /// The denoiser head: the first `quiet_columns` outputs (the jaw channels) get `quiet_gain`
    /// so the network's free motion stays small next to the audio-driven path.
    Head {
        gain: f32,
        quiet_columns: usize,
        quiet_gain: f32,
    },
}

pub(crate) struct WeightSpec {
    pub(crate) name: String,
    pub(crate) shape: Vec<usize>,
    init: Init,
}

/// A weight on the host, before it is handed to a backend.
#[derive(Debug, Clone, PartialEq)]
pub(crate) struct HostTensor {
    pub(crate) shape: Vec<usize>,
    pub(crate) data: Vec<f32>,
}

fn linear(specs: &mut Vec<WeightSpec>, name: &str, fan_in: usize, fan_out: usize, init: Init) {
    specs.push(WeightSpec {
        name: format!("{name}.weight"),
        shape: vec![fan_in, fan_out],
        init,
    });
    specs.push(WeightSpec {
        name: format!("{name}.bias"),
        shape: vec![fan_out],
        init: Init::Zeros,
    });
}

/// Every weight of the tiny architecture, in a fixed order.
pub(crate) fn weight_specs(cfg: &TinyConfig) -> Vec<WeightSpec> {
    let (c, d) = (cfg.latent_channels, cfg.d_model);
    let normal = |gain| Init::Normal { gain };
    let mut s = Vec::new();
    // VAE stand-in: encoder for the reference, decoder to motion fields and jaw opening.
    linear(
        &mut s,
        "vae.encoder",
        REFERENCE_CELL_FEATURES,
        c,
        normal(1.0),
    );
    linear(
        &mut s,
        "vae.decoder.fc1",
        2 * c,
        cfg.decoder_hidden,
        normal(1.0),
    );
    linear(
        &mut s,
        "vae.decoder.fc2",
        cfg.decoder_hidden,
        DECODER_FIELDS,
        normal(1.0),
    );
    let jaw_ones = (0..TEMPORAL_DOWNSCALE as usize).map(|i| (i, i)).collect();
    linear(
        &mut s,
        "vae.decoder.jaw",
        c,
        TEMPORAL_DOWNSCALE as usize,
        Init::PassThrough {
            ones: jaw_ones,
            noise_std: 0.02,
        },
    );
    // Mouth centre and radii as fractions of the frame: where a centred portrait's mouth is.
    s.push(WeightSpec {
        name: "vae.decoder.mouth".to_string(),
        shape: vec![4],
        init: Init::Values(vec![0.5, 0.625, 0.11, 0.045]),
    });
    // Causal DiT denoiser.
    linear(&mut s, "dit.patch_in", c, d, normal(1.0));
    linear(&mut s, "dit.reference", c, d, normal(1.0));
    linear(&mut s, "dit.motion", c, d, normal(1.0));
    linear(&mut s, "dit.time.fc1", d, d, normal(1.0));
    linear(&mut s, "dit.time.fc2", d, d, normal(1.0));
    linear(&mut s, "dit.text", TEXT_EMBED_DIM, d, normal(1.0));
    linear(
        &mut s,
        "dit.audio.fc1",
        AUDIO_FEATURES_PER_LATENT,
        d,
        normal(1.0),
    );
    linear(&mut s, "dit.audio.fc2", d, d, normal(1.0));
    let loudness_to_jaw = (0..TEMPORAL_DOWNSCALE as usize)
        .map(|frame| (frame * AUDIO_FEATURES_PER_FRAME, frame))
        .collect();
    linear(
        &mut s,
        "dit.audio_skip",
        AUDIO_FEATURES_PER_LATENT,
        c,
        Init::PassThrough {
            ones: loudness_to_jaw,
            noise_std: 0.02,
        },
    );
    for layer in 0..cfg.layers {
        let block = format!("dit.blocks.{layer}");
        linear(
            &mut s,
            &format!("{block}.modulation"),
            d,
            9 * d,
            normal(0.5),
        );
        for attn in ["spatial", "temporal"] {
            for proj in ["q", "k", "v", "out"] {
                linear(&mut s, &format!("{block}.{attn}.{proj}"), d, d, normal(1.0));
            }
        }
        linear(
            &mut s,
            &format!("{block}.mlp.fc1"),
            d,
            cfg.mlp_ratio * d,
            normal(1.0),
        );
        linear(
            &mut s,
            &format!("{block}.mlp.fc2"),
            cfg.mlp_ratio * d,
            d,
            normal(1.0),
        );
    }
    linear(&mut s, "dit.final.modulation", d, 2 * d, normal(0.5));
    linear(
        &mut s,
        "dit.head",
        d,
        c,
        Init::Head {
            gain: 0.5,
            quiet_columns: TEMPORAL_DOWNSCALE as usize,
            quiet_gain: 0.05,
        },
    );
    s
}

fn name_hash(name: &str) -> u64 {
    name.bytes().fold(0xcbf2_9ce4_8422_2325, |h, b| {
        (h ^ u64::from(b)).wrapping_mul(0x0000_0100_0000_01b3)
    })
}

/// Generates every weight from `seed`. Each tensor has its own stream keyed by its name, so
/// adding a layer does not change the others.
pub(crate) fn generate(cfg: &TinyConfig, seed: u64) -> Vec<(String, HostTensor)> {
    weight_specs(cfg)
        .into_iter()
        .map(|spec| {
            let len: usize = spec.shape.iter().product();
            let fan_in = if spec.shape.len() == 2 {
                spec.shape[0]
            } else {
                1
            };
            let columns = *spec.shape.last().unwrap_or(&1);
            let mut rng = SeededRng::for_stream(Stream::Weights, seed, name_hash(&spec.name));
            let std_for = |gain: f32| gain / (fan_in as f32).sqrt();
            let data = match spec.init {
                Init::Zeros => vec![0.0; len],
                Init::Values(values) => values,
                Init::Normal { gain } => {
                    rng.normals(len).iter().map(|v| v * std_for(gain)).collect()
                }
                Init::PassThrough { ones, noise_std } => {
                    let mut data: Vec<f32> =
                        rng.normals(len).iter().map(|v| v * noise_std).collect();
                    for (row, col) in ones {
                        data[row * columns + col] += 1.0;
                    }
                    data
                }
                Init::Head {
                    gain,
                    quiet_columns,
                    quiet_gain,
                } => rng
                    .normals(len)
                    .iter()
                    .enumerate()
                    .map(|(i, v)| {
                        let g = if i % columns < quiet_columns {
                            quiet_gain
                        } else {
                            gain
                        };
                        v * std_for(g)
                    })
                    .collect(),
            };
            (
                spec.name,
                HostTensor {
                    shape: spec.shape,
                    data,
                },
            )
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn generated_weights_depend_on_the_seed() {
        let cfg = TinyConfig::builtin();
        let a = generate(&cfg, 1);
        let b = generate(&cfg, 2);
        assert_ne!(a[0].1, b[0].1);
        assert_eq!(a, generate(&cfg, 1));
    }

    #[test]
    fn every_weight_has_a_distinct_name() {
        let specs = weight_specs(&TinyConfig::builtin());
        let names: std::collections::HashSet<_> = specs.iter().map(|s| s.name.as_str()).collect();
        assert_eq!(names.len(), specs.len());
    }

    #[test]
    fn config_with_heads_not_dividing_d_model_is_invalid() {
        let mut cfg = TinyConfig::builtin();
        cfg.heads = 3;
        assert!(cfg.validate().is_err());
    }
}
