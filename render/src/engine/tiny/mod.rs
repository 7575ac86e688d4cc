//! The native engine for the tiny-architecture model (`builtin:tiny` or a checkpoint directory
//! of the same architecture): reference encoder, audio and prompt conditioning, causal DiT
//! denoiser with Euler flow-matching sampling, and the causal decoder.

mod dit;
mod layers;
mod paint;
mod vae;

use std::path::Path;
use std::sync::Arc;

use burn::tensor::backend::Backend;
use burn::tensor::{Tensor, TensorData};
use jobs::spec::ModelRef;

use super::architecture::{HostTensor, AUDIO_FEATURES_PER_LATENT};
use super::carry::{
    LatentBlock, LatentShape, MOTION_LATENT_FRAMES, SPATIAL_DOWNSCALE, TEMPORAL_DOWNSCALE,
};
use super::features::{pool_reference, prompt_embedding, AudioTrack, REFERENCE_CELL_FEATURES};
use super::rng::{SeededRng, Stream};
use super::weights::load_model;
use super::{
    validate_settings, ClipIndex, ClipLatents, Conditioning, Engine, EngineCarry, EngineSettings,
    Frames,
};
use crate::RenderError;
use dit::Denoiser;
use layers::to_tensor;
use paint::Painter;
use vae::{DecodedFields, Vae};

/// The loaded weights of one model on one device: what a warm worker keeps between jobs.
pub(crate) struct TinyModel<B: Backend> {
    /// The model it was loaded for.
    model: ModelRef,
    device: B::Device,
    denoiser: Denoiser<B>,
    vae: Vae<B>,
    mouth: [f32; 4],
}

impl<B: Backend> TinyModel<B> {
    /// Reads (or for `builtin:tiny`, generates once) the weights and puts them on `device`.
    pub(crate) fn load(
        model: &ModelRef,
        model_cache_dir: &Path,
        device: &B::Device,
    ) -> Result<Self, RenderError> {
        let (cfg, mut weights) = load_model(model, model_cache_dir)?;
        let denoiser = Denoiser::load(&cfg, &mut weights, device);
        let vae = Vae::load(&mut weights, device);
        let mouth = weights.take("vae.decoder.mouth").data;
        let mouth: [f32; 4] = mouth
            .try_into()
            .unwrap_or_else(|_| panic!("mouth shape was verified as [4] at load"));
        tracing::debug!(model = %model, d_model = cfg.d_model, layers = cfg.layers, "tiny model loaded");
        Ok(TinyModel {
            model: model.clone(),
            device: device.clone(),
            denoiser,
            vae,
            mouth,
        })
    }

    /// The model it was loaded for.
    pub(crate) fn model(&self) -> &ModelRef {
        &self.model
    }
}

pub(crate) struct TinyEngine<B: Backend> {
    settings: EngineSettings,
    /// The latent grid of one clip.
    shape: LatentShape,
    device: B::Device,
    model: Arc<TinyModel<B>>,
    audio: AudioTrack,
    prompt: Vec<f32>,
    reference_latent: Tensor<B, 2>,
    painter: Painter,
}

impl<B: Backend> TinyEngine<B> {
    /// Loads the model and binds it to one job: the path of a process per job.
    #[cfg(test)]
    pub(crate) fn load(
        settings: &EngineSettings,
        cond: Conditioning,
        model_cache_dir: &Path,
        device: &B::Device,
    ) -> Result<Self, RenderError> {
        validate_settings(settings)?;
        let model = Arc::new(TinyModel::load(&settings.model, model_cache_dir, device)?);
        Self::bind(model, settings, cond)
    }

    /// Binds a loaded model to one job's settings and conditioning; loads nothing.
    pub(crate) fn bind(
        model: Arc<TinyModel<B>>,
        settings: &EngineSettings,
        cond: Conditioning,
    ) -> Result<Self, RenderError> {
        validate_settings(settings)?;
        let (width, height) = (settings.width as usize, settings.height as usize);
        if cond.reference_rgb.len() != width * height * 3 {
            return Err(RenderError::BadConditioning {
                detail: format!(
                    "reference image has {} bytes, expected {width}*{height}*3 = {} (RGB24 at the output size)",
                    cond.reference_rgb.len(),
                    width * height * 3
                ),
            });
        }
        let device = model.device.clone();
        let cell = SPATIAL_DOWNSCALE as usize;
        let shape = LatentShape::for_settings(
            settings,
            (settings.infer_frames / TEMPORAL_DOWNSCALE) as usize,
        );
        let pooled = pool_reference(&cond.reference_rgb, width, height, cell);
        let pooled = Tensor::from_data(
            TensorData::new(pooled, [shape.cells(), REFERENCE_CELL_FEATURES]),
            &device,
        );
        let reference_latent = model.vae.encode_reference(pooled);
        Ok(TinyEngine {
            settings: settings.clone(),
            shape,
            device,
            audio: AudioTrack::new(cond.audio_16k_mono, settings.fps),
            prompt: prompt_embedding(&cond.prompt),
            reference_latent,
            painter: Painter::new(&cond.reference_rgb, width, height, cell, model.mouth),
            model,
        })
    }

    fn upload(&self, block: &LatentBlock) -> Tensor<B, 3> {
        let s = block.shape;
        to_tensor(
            HostTensor {
                shape: vec![s.frames, s.cells(), s.channels],
                data: block.data.clone(),
            },
            &self.device,
        )
    }

    fn motion_shape(&self) -> LatentShape {
        LatentShape {
            frames: MOTION_LATENT_FRAMES,
            ..self.shape
        }
    }

    /// Audio features of clip `index`, grouped per latent frame: `[latent frames, 32]`.
    fn clip_audio(&self, index: ClipIndex) -> Tensor<B, 2> {
        let frames = self.settings.infer_frames;
        let first = u64::from(index.0) * u64::from(frames);
        let features = self.audio.features(first, frames);
        Tensor::from_data(
            TensorData::new(features, [self.shape.frames, AUDIO_FEATURES_PER_LATENT]),
            &self.device,
        )
    }
}

fn download<B: Backend, const D: usize>(tensor: Tensor<B, D>) -> Result<Vec<f32>, RenderError> {
    let backend = |detail: String| RenderError::Backend { detail };
    tensor
        .try_into_data()
        .map_err(|e| backend(format!("reading a tensor back failed: {e:?}")))?
        .into_vec::<f32>()
        .map_err(|e| backend(format!("unexpected tensor data: {e:?}")))
}

impl<B: Backend> Engine for TinyEngine<B> {
    fn initial_carry(&self) -> Result<EngineCarry, RenderError> {
        Ok(EngineCarry::initial(&self.settings))
    }

    fn render_clip(
        &mut self,
        index: ClipIndex,
        carry: &EngineCarry,
    ) -> Result<(ClipLatents, EngineCarry), RenderError> {
        if carry.next_clip() != index {
            return Err(RenderError::CarryMismatch {
                detail: format!(
                    "asked for {index} but the carry continues into {}",
                    carry.next_clip()
                ),
            });
        }
        if carry.motion.shape != self.motion_shape() {
            return Err(RenderError::CarryMismatch {
                detail: format!(
                    "motion latents {:?}, this job needs {:?}",
                    carry.motion.shape,
                    self.motion_shape()
                ),
            });
        }
        let shape = self.shape;
        let grid = (shape.height, shape.width);
        let motion = self.upload(&carry.motion);
        let ctx = self.model.denoiser.context(
            self.reference_latent.clone(),
            motion,
            self.clip_audio(index),
            &self.prompt,
            grid,
        );
        let noise = SeededRng::for_stream(Stream::ClipNoise, carry.noise_seed, u64::from(index.0))
            .normals(shape.len());
        let mut x: Tensor<B, 3> = Tensor::from_data(
            TensorData::new(noise, [shape.frames, shape.cells(), shape.channels]),
            &self.device,
        );
        let steps = self.settings.sample_steps;
        let guide = self.settings.guide_scale;
        for step in 0..steps {
            let t = 1.0 - step as f32 / steps as f32;
            let t_next = 1.0 - (step + 1) as f32 / steps as f32;
            let mut clean = self.model.denoiser.predict_clean(x.clone(), t, &ctx, true);
            if guide > 0.0 {
                let unguided = self.model.denoiser.predict_clean(x.clone(), t, &ctx, false);
                clean = unguided.clone() + (clean - unguided).mul_scalar(guide);
            }
            // Euler step of the flow ODE dx/dt = v, with v = (x - x0) / t for the straight path
            // x_t = (1 - t)·x0 + t·noise. The last step lands exactly on the predicted x0.
            x = x.clone() + (x - clean).mul_scalar((t_next - t) / t);
        }
        let latents = LatentBlock {
            shape,
            data: download(x)?,
        };
        let next = EngineCarry {
            next_clip: index.0 + 1,
            noise_seed: carry.noise_seed,
            motion: carry.motion.tail_after(&latents, MOTION_LATENT_FRAMES),
        };
        Ok((
            ClipLatents {
                clip: index,
                latents,
                motion: carry.motion.clone(),
            },
            next,
        ))
    }

    fn decode(&mut self, latents: &ClipLatents) -> Result<Frames, RenderError> {
        if latents.latents.shape != self.shape || latents.motion.shape != self.motion_shape() {
            return Err(RenderError::LatentsMismatch {
                detail: format!(
                    "latents {:?} after motion {:?}; this engine decodes {:?} after {:?}",
                    latents.latents.shape,
                    latents.motion.shape,
                    self.shape,
                    self.motion_shape()
                ),
            });
        }
        let (fields, jaw) = self
            .model
            .vae
            .decode(self.upload(&latents.motion), self.upload(&latents.latents));
        let decoded = DecodedFields {
            fields: download(fields)?,
            jaw: download(jaw)?,
        };
        Ok(Frames {
            width: self.settings.width,
            height: self.settings.height,
            rgb: self.painter.paint_clip(&decoded, self.shape.frames),
        })
    }

    fn frames_per_clip(&self) -> u32 {
        self.settings.infer_frames
    }
}

#[cfg(test)]
mod tests;
