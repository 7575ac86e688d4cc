//! The VAE stand-in: an encoder from the pooled reference to one latent per 16×16 cell, and a
//! causal decoder from latents to per-cell motion fields.
//!
//! Wan's VAE decodes 4 output frames per latent frame with causal 3-D convolutions. Ours is
//! causal the same way: a latent frame is decoded together with the one before it (the last
//! motion frame for the first latent frame of a clip), so decoding clip *k* needs nothing but
//! its own [`crate::engine::ClipLatents`], and fields are continuous across clip boundaries.
//! Latents at 1/16 resolution cannot carry a portrait's detail, so the decoder outputs *how to
//! move and shade* the reference image, and [`super::paint`] applies that to the pixels.

use burn::tensor::activation::gelu;
use burn::tensor::backend::Backend;
use burn::tensor::Tensor;

use super::layers::Dense;
use crate::engine::weights::WeightSet;

pub(crate) struct Vae<B: Backend> {
    encoder: Dense<B>,
    fields_in: Dense<B>,
    fields_out: Dense<B>,
    jaw: Dense<B>,
}

/// Decoded motion of one clip, on the host.
pub(crate) struct DecodedFields {
    /// `[frames + 1, cells, DECODER_FIELDS]`: index 0 belongs to the last frame of the previous
    /// clip, index `j + 1` to latent frame `j`.
    pub(crate) fields: Vec<f32>,
    /// `[frames, cells, 4]`: jaw opening for each of the four output frames of a latent frame.
    pub(crate) jaw: Vec<f32>,
}

impl<B: Backend> Vae<B> {
    pub(crate) fn load(w: &mut WeightSet, device: &B::Device) -> Self {
        Vae {
            encoder: Dense::load(w, "vae.encoder", device),
            fields_in: Dense::load(w, "vae.decoder.fc1", device),
            fields_out: Dense::load(w, "vae.decoder.fc2", device),
            jaw: Dense::load(w, "vae.decoder.jaw", device),
        }
    }

    /// `[cells, REFERENCE_CELL_FEATURES]` pooled reference → `[cells, channels]` latent.
    pub(crate) fn encode_reference(&self, pooled: Tensor<B, 2>) -> Tensor<B, 2> {
        self.encoder.forward(pooled)
    }

    /// Decodes `latents` `[frames, cells, channels]` that followed `motion`
    /// `[motion frames ≥ 2, cells, channels]` into fields on the device.
    pub(crate) fn decode(
        &self,
        motion: Tensor<B, 3>,
        latents: Tensor<B, 3>,
    ) -> (Tensor<B, 3>, Tensor<B, 3>) {
        let motion_frames = motion.dims()[0];
        let frames = latents.dims()[0];
        let all = Tensor::cat(vec![motion, latents.clone()], 0);
        let current = all.clone().narrow(0, motion_frames - 1, frames + 1);
        let previous = all.narrow(0, motion_frames - 2, frames + 1);
        let pairs = Tensor::cat(vec![current, previous], 2);
        let fields = self.fields_out.forward(gelu(self.fields_in.forward(pairs)));
        (fields, self.jaw.forward(latents))
    }
}
