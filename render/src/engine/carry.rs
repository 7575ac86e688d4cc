//! What crosses a clip boundary: the latents a clip produced ([`ClipLatents`], for decoding) and
//! the state the next clip needs ([`EngineCarry`], for denoising and for checkpoints).

use std::collections::HashMap;

use safetensors::tensor::{Dtype, SafeTensors, TensorView};

use super::{ClipIndex, EngineSettings};
use crate::RenderError;

/// Latent channels of the tiny model, as in the Wan VAE it stands in for.
pub(crate) const LATENT_CHANNELS: usize = 16;
/// Pixels per latent cell along each side.
pub(crate) const SPATIAL_DOWNSCALE: u32 = 16;
/// Output frames per latent frame (Wan's VAE compresses time 4×).
pub(crate) const TEMPORAL_DOWNSCALE: u32 = 4;
/// Latent frames of the previous clip that condition the next one ("motion frames").
pub(crate) const MOTION_LATENT_FRAMES: usize = 2;

const CARRY_FORMAT: &str = "reelspool.carry";
const CARRY_VERSION: &str = "1";
const MOTION_TENSOR: &str = "motion_latents";

/// Shape of a block of latents, stored frame-major then row-major cells, channels last.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct LatentShape {
    pub(crate) frames: usize,
    pub(crate) height: usize,
    pub(crate) width: usize,
    pub(crate) channels: usize,
}

impl LatentShape {
    /// The latent grid one clip of `settings` occupies, with `frames` latent frames.
    pub(crate) fn for_settings(settings: &EngineSettings, frames: usize) -> Self {
        LatentShape {
            frames,
            height: (settings.height / SPATIAL_DOWNSCALE) as usize,
            width: (settings.width / SPATIAL_DOWNSCALE) as usize,
            channels: LATENT_CHANNELS,
        }
    }

    pub(crate) fn cells(&self) -> usize {
        self.height * self.width
    }

    pub(crate) fn len(&self) -> usize {
        self.frames * self.cells() * self.channels
    }

    fn dims(&self) -> Vec<usize> {
        vec![self.frames, self.height, self.width, self.channels]
    }
}

/// A host-side block of latents. Host memory keeps [`ClipLatents`] and [`EngineCarry`] independent of
/// the backend, so a worker can hold them across clips whatever device denoised them.
#[derive(Debug, Clone, PartialEq)]
pub(crate) struct LatentBlock {
    pub(crate) shape: LatentShape,
    pub(crate) data: Vec<f32>,
}

impl LatentBlock {
    pub(crate) fn zeros(shape: LatentShape) -> Self {
        LatentBlock {
            shape,
            data: vec![0.0; shape.len()],
        }
    }

    /// The last `frames` latent frames of `self` followed by `next` (which may be shorter).
    pub(crate) fn tail_after(&self, next: &LatentBlock, frames: usize) -> LatentBlock {
        let per_frame = self.shape.cells() * self.shape.channels;
        let mut joined = Vec::with_capacity(self.data.len() + next.data.len());
        joined.extend_from_slice(&self.data);
        joined.extend_from_slice(&next.data);
        let total = joined.len() / per_frame.max(1);
        let keep = frames.min(total);
        let data = joined.split_off((total - keep) * per_frame);
        LatentBlock {
            shape: LatentShape {
                frames: keep,
                ..self.shape
            },
            data,
        }
    }
}

/// One clip's denoised latents, ready to decode. Opaque to the worker: it only keeps it (when
/// online decode is off), measures it, and hands it back to [`super::Engine::decode`].
#[derive(Debug, Clone, PartialEq)]
pub struct ClipLatents {
    pub(crate) clip: ClipIndex,
    pub(crate) latents: LatentBlock,
    /// The motion frames this clip was conditioned on: the decoder blends from them, so frame 0
    /// of a clip continues the last frame of the previous one without needing that clip.
    pub(crate) motion: LatentBlock,
}

impl ClipLatents {
    /// The clip these latents belong to.
    pub fn clip(&self) -> ClipIndex {
        self.clip
    }

    /// Host memory held by these latents: what a job without online decode accumulates per clip.
    pub fn size_bytes(&self) -> usize {
        (self.latents.data.len() + self.motion.data.len()) * std::mem::size_of::<f32>()
    }
}

/// Everything clip *k+1* needs from clip *k*: the tail latents (motion frames), the noise seed
/// (per-clip noise streams are derived from it and the clip index, so this *is* the RNG state),
/// and the index of the next clip. Saved after every clip as safetensors.
#[derive(Debug, Clone, PartialEq)]
pub struct EngineCarry {
    pub(crate) next_clip: u32,
    pub(crate) noise_seed: u64,
    pub(crate) motion: LatentBlock,
}

impl EngineCarry {
    /// The carry before clip 0: the rest pose (all-zero motion latents) and the job's seed.
    pub fn initial(settings: &EngineSettings) -> EngineCarry {
        EngineCarry {
            next_clip: 0,
            noise_seed: settings.seed,
            motion: LatentBlock::zeros(LatentShape::for_settings(settings, MOTION_LATENT_FRAMES)),
        }
    }

    /// The clip this carry continues into.
    pub fn next_clip(&self) -> ClipIndex {
        ClipIndex(self.next_clip)
    }

    /// Serialises to a safetensors file: one `F32` tensor `motion_latents`
    /// `[frames, height, width, channels]`, the scalars as metadata strings (exact for `u64`).
    pub fn to_safetensors_bytes(&self) -> Result<Vec<u8>, RenderError> {
        let bytes: Vec<u8> = self
            .motion
            .data
            .iter()
            .flat_map(|v| v.to_le_bytes())
            .collect();
        let view = TensorView::new(Dtype::F32, self.motion.shape.dims(), &bytes)
            .map_err(|e| carry_format(format!("cannot describe motion latents: {e}")))?;
        let metadata = HashMap::from([
            ("format".to_string(), CARRY_FORMAT.to_string()),
            ("version".to_string(), CARRY_VERSION.to_string()),
            ("next_clip".to_string(), self.next_clip.to_string()),
            ("noise_seed".to_string(), self.noise_seed.to_string()),
        ]);
        safetensors::serialize([(MOTION_TENSOR, view)], Some(metadata))
            .map_err(|e| carry_format(format!("cannot serialise: {e}")))
    }

    /// Parses what [`EngineCarry::to_safetensors_bytes`] wrote; anything else is a
    /// [`RenderError::CarryFormat`] (a torn or foreign file must never be half-trusted).
    pub fn from_safetensors_bytes(bytes: &[u8]) -> Result<EngineCarry, RenderError> {
        let file = SafeTensors::deserialize(bytes)
            .map_err(|e| carry_format(format!("not a safetensors file: {e}")))?;
        let (_, header) = SafeTensors::read_metadata(bytes)
            .map_err(|e| carry_format(format!("unreadable header: {e}")))?;
        let metadata = header.metadata().clone().unwrap_or_default();
        let field = |key: &str| {
            metadata
                .get(key)
                .cloned()
                .ok_or_else(|| carry_format(format!("metadata `{key}` is missing")))
        };
        if field("format")? != CARRY_FORMAT || field("version")? != CARRY_VERSION {
            return Err(carry_format(format!(
                "expected format {CARRY_FORMAT} version {CARRY_VERSION}"
            )));
        }
        let next_clip = field("next_clip")?
            .parse::<u32>()
            .map_err(|e| carry_format(format!("next_clip: {e}")))?;
        let noise_seed = field("noise_seed")?
            .parse::<u64>()
            .map_err(|e| carry_format(format!("noise_seed: {e}")))?;
        let tensor = file
            .tensor(MOTION_TENSOR)
            .map_err(|e| carry_format(format!("tensor `{MOTION_TENSOR}`: {e}")))?;
        let [frames, height, width, channels] = <[usize; 4]>::try_from(tensor.shape())
            .map_err(|_| carry_format(format!("`{MOTION_TENSOR}` must have 4 dimensions")))?;
        if tensor.dtype() != Dtype::F32 {
            return Err(carry_format(format!("`{MOTION_TENSOR}` must be F32")));
        }
        let data = f32s_from_le_bytes(tensor.data());
        Ok(EngineCarry {
            next_clip,
            noise_seed,
            motion: LatentBlock {
                shape: LatentShape {
                    frames,
                    height,
                    width,
                    channels,
                },
                data,
            },
        })
    }
}

const LATENTS_FORMAT: &str = "reelspool.latents";
const LATENTS_TENSOR: &str = "latents";

fn le_bytes(block: &LatentBlock) -> Vec<u8> {
    block.data.iter().flat_map(|v| v.to_le_bytes()).collect()
}

/// Reads one F32 `[frames, height, width, channels]` tensor back into a block.
fn block_from(file: &SafeTensors, name: &str) -> Result<LatentBlock, RenderError> {
    let tensor = file
        .tensor(name)
        .map_err(|e| carry_format(format!("tensor `{name}`: {e}")))?;
    let [frames, height, width, channels] = <[usize; 4]>::try_from(tensor.shape())
        .map_err(|_| carry_format(format!("`{name}` must have 4 dimensions")))?;
    if tensor.dtype() != Dtype::F32 {
        return Err(carry_format(format!("`{name}` must be F32")));
    }
    Ok(LatentBlock {
        shape: LatentShape {
            frames,
            height,
            width,
            channels,
        },
        data: f32s_from_le_bytes(tensor.data()),
    })
}

impl ClipLatents {
    /// Serialises to safetensors (tensors `latents` and `motion_latents`, the clip index as
    /// metadata), so a worker without online decode can keep finished clips on disk and still
    /// resume after a crash.
    pub fn to_safetensors_bytes(&self) -> Result<Vec<u8>, RenderError> {
        let latents = le_bytes(&self.latents);
        let motion = le_bytes(&self.motion);
        let views = [
            (
                LATENTS_TENSOR,
                TensorView::new(Dtype::F32, self.latents.shape.dims(), &latents)
                    .map_err(|e| carry_format(format!("cannot describe latents: {e}")))?,
            ),
            (
                MOTION_TENSOR,
                TensorView::new(Dtype::F32, self.motion.shape.dims(), &motion)
                    .map_err(|e| carry_format(format!("cannot describe motion latents: {e}")))?,
            ),
        ];
        let metadata = HashMap::from([
            ("format".to_string(), LATENTS_FORMAT.to_string()),
            ("version".to_string(), CARRY_VERSION.to_string()),
            ("clip".to_string(), self.clip.0.to_string()),
        ]);
        safetensors::serialize(views, Some(metadata))
            .map_err(|e| carry_format(format!("cannot serialise latents: {e}")))
    }

    /// Parses what [`ClipLatents::to_safetensors_bytes`] wrote.
    pub fn from_safetensors_bytes(bytes: &[u8]) -> Result<ClipLatents, RenderError> {
        let file = SafeTensors::deserialize(bytes)
            .map_err(|e| carry_format(format!("not a safetensors file: {e}")))?;
        let (_, header) = SafeTensors::read_metadata(bytes)
            .map_err(|e| carry_format(format!("unreadable header: {e}")))?;
        let metadata = header.metadata().clone().unwrap_or_default();
        if metadata.get("format").map(String::as_str) != Some(LATENTS_FORMAT) {
            return Err(carry_format(format!("expected format {LATENTS_FORMAT}")));
        }
        let clip = metadata
            .get("clip")
            .and_then(|v| v.parse::<u32>().ok())
            .ok_or_else(|| carry_format("metadata `clip` is missing".to_string()))?;
        Ok(ClipLatents {
            clip: ClipIndex(clip),
            latents: block_from(&file, LATENTS_TENSOR)?,
            motion: block_from(&file, MOTION_TENSOR)?,
        })
    }
}

pub(crate) fn f32s_from_le_bytes(bytes: &[u8]) -> Vec<f32> {
    bytes
        .chunks_exact(4)
        .map(|c| f32::from_le_bytes([c[0], c[1], c[2], c[3]]))
        .collect()
}

fn carry_format(detail: String) -> RenderError {
    RenderError::CarryFormat { detail }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::engine::test_support::small_settings;

    fn sample_carry() -> EngineCarry {
        let mut carry = EngineCarry::initial(&small_settings(7));
        carry.next_clip = 5;
        carry.noise_seed = u64::MAX - 3;
        for (i, v) in carry.motion.data.iter_mut().enumerate() {
            *v = (i as f32 * 0.37).sin();
        }
        carry
    }

    #[test]
    fn carry_round_trips_through_safetensors_bytes() {
        let carry = sample_carry();
        let bytes = carry.to_safetensors_bytes().expect("serialises");
        let back = EngineCarry::from_safetensors_bytes(&bytes).expect("parses");
        assert_eq!(back, carry);
    }

    #[test]
    fn initial_carry_starts_at_clip_zero_with_the_job_seed() {
        let carry = EngineCarry::initial(&small_settings(99));
        assert_eq!(carry.next_clip(), ClipIndex(0));
        assert_eq!(carry.noise_seed, 99);
        assert_eq!(carry.motion.shape.frames, MOTION_LATENT_FRAMES);
        assert!(carry.motion.data.iter().all(|&v| v == 0.0));
    }

    #[test]
    fn truncated_carry_bytes_are_rejected() {
        let bytes = sample_carry().to_safetensors_bytes().expect("serialises");
        let err = EngineCarry::from_safetensors_bytes(&bytes[..bytes.len() - 9]).unwrap_err();
        assert!(matches!(err, RenderError::CarryFormat { .. }), "{err}");
    }

    #[test]
    fn foreign_safetensors_file_is_not_taken_for_a_carry() {
        let data = [0u8; 8];
        let view = TensorView::new(Dtype::F32, vec![2], &data).expect("valid view");
        let bytes = safetensors::serialize([("weights", view)], None).expect("serialises");
        let err = EngineCarry::from_safetensors_bytes(&bytes).unwrap_err();
        assert!(err.to_string().contains("format"), "{err}");
    }

    #[test]
    fn clip_latents_round_trip_through_safetensors_bytes() {
        let carry = sample_carry();
        let latents = ClipLatents {
            clip: ClipIndex(4),
            latents: LatentBlock {
                shape: LatentShape {
                    frames: 3,
                    ..carry.motion.shape
                },
                data: (0..3 * carry.motion.shape.cells() * carry.motion.shape.channels)
                    .map(|i| i as f32 * 0.5)
                    .collect(),
            },
            motion: carry.motion.clone(),
        };
        let bytes = latents.to_safetensors_bytes().expect("serialises");
        assert_eq!(
            ClipLatents::from_safetensors_bytes(&bytes).expect("parses"),
            latents
        );
        assert!(
            ClipLatents::from_safetensors_bytes(&carry.to_safetensors_bytes().expect("carry"))
                .is_err()
        );
    }

    #[test]
    fn tail_after_keeps_the_last_frames_across_both_blocks() {
        let shape = LatentShape {
            frames: 2,
            height: 1,
            width: 1,
            channels: 1,
        };
        let old = LatentBlock {
            shape,
            data: vec![1.0, 2.0],
        };
        let new = LatentBlock {
            shape: LatentShape { frames: 1, ..shape },
            data: vec![3.0],
        };
        assert_eq!(old.tail_after(&new, 2).data, vec![2.0, 3.0]);
        assert_eq!(old.tail_after(&new, 5).data, vec![1.0, 2.0, 3.0]);
    }
}
