//! The denoiser: a small causal video DiT in the shape of Live Avatar's Wan S2V transformer.
//!
//! Tokens are latent cells of every latent frame of the clip. Each block mixes them in space
//! (attention among the cells of one frame), in time (causal attention over the same cell in the
//! previous clip's motion frames and the earlier frames of this clip) and per token (MLP), with
//! adaLN modulation from the timestep, the prompt and the per-frame audio embedding. The head
//! predicts clean latents (x0), which the sampler turns into a flow-matching velocity.

use burn::tensor::activation::{gelu, silu};
use burn::tensor::backend::Backend;
use burn::tensor::{Tensor, TensorData};

use super::layers::{layer_norm, modulate, Attention, Dense};
use crate::engine::architecture::TinyConfig;
use crate::engine::features::TEXT_EMBED_DIM;
use crate::engine::weights::WeightSet;

/// Added to attention scores a query must not see (future frames).
const MASKED: f32 = -1.0e9;

struct Block<B: Backend> {
    modulation: Dense<B>,
    spatial: Attention<B>,
    temporal: Attention<B>,
    mlp_in: Dense<B>,
    mlp_out: Dense<B>,
}

/// Per-clip inputs that do not change between sampling steps, computed once per clip.
pub(crate) struct ClipContext<B: Backend> {
    /// Reference tokens plus positions, `[frames, cells, d]`.
    base_tokens: Tensor<B, 3>,
    /// Normalised motion-frame tokens, transposed for temporal attention: `[cells, motion, d]`.
    motion_tokens: Tensor<B, 3>,
    /// Prompt + audio conditioning per latent frame, `[frames, d]`.
    guidance: Tensor<B, 2>,
    /// Direct audio-to-latent path per latent frame, `[frames, 1, channels]`.
    audio_skip: Tensor<B, 3>,
    /// Causal mask for temporal attention, `[frames, motion + frames]`.
    temporal_bias: Tensor<B, 2>,
}

pub(crate) struct Denoiser<B: Backend> {
    patch_in: Dense<B>,
    reference: Dense<B>,
    motion: Dense<B>,
    time_in: Dense<B>,
    time_out: Dense<B>,
    text: Dense<B>,
    audio_in: Dense<B>,
    audio_out: Dense<B>,
    audio_skip: Dense<B>,
    blocks: Vec<Block<B>>,
    final_modulation: Dense<B>,
    head: Dense<B>,
    d_model: usize,
}

impl<B: Backend> Denoiser<B> {
    pub(crate) fn load(cfg: &TinyConfig, w: &mut WeightSet, device: &B::Device) -> Self {
        let blocks = (0..cfg.layers)
            .map(|layer| {
                let name = format!("dit.blocks.{layer}");
                Block {
                    modulation: Dense::load(w, &format!("{name}.modulation"), device),
                    spatial: Attention::load(w, &format!("{name}.spatial"), cfg.heads, device),
                    temporal: Attention::load(w, &format!("{name}.temporal"), cfg.heads, device),
                    mlp_in: Dense::load(w, &format!("{name}.mlp.fc1"), device),
                    mlp_out: Dense::load(w, &format!("{name}.mlp.fc2"), device),
                }
            })
            .collect();
        Denoiser {
            patch_in: Dense::load(w, "dit.patch_in", device),
            reference: Dense::load(w, "dit.reference", device),
            motion: Dense::load(w, "dit.motion", device),
            time_in: Dense::load(w, "dit.time.fc1", device),
            time_out: Dense::load(w, "dit.time.fc2", device),
            text: Dense::load(w, "dit.text", device),
            audio_in: Dense::load(w, "dit.audio.fc1", device),
            audio_out: Dense::load(w, "dit.audio.fc2", device),
            audio_skip: Dense::load(w, "dit.audio_skip", device),
            blocks,
            final_modulation: Dense::load(w, "dit.final.modulation", device),
            head: Dense::load(w, "dit.head", device),
            d_model: cfg.d_model,
        }
    }

    /// Prepares one clip: `reference_latent` `[cells, channels]`, `motion` `[motion, cells,
    /// channels]`, `audio` `[frames, audio features]`, `prompt` `[TEXT_EMBED_DIM]`, on a
    /// `grid` of `(rows, columns)` cells.
    pub(crate) fn context(
        &self,
        reference_latent: Tensor<B, 2>,
        motion: Tensor<B, 3>,
        audio: Tensor<B, 2>,
        prompt: &[f32],
        grid: (usize, usize),
    ) -> ClipContext<B> {
        let device = audio.device();
        let [frames, _] = audio.dims();
        let [motion_frames, cells, _] = motion.dims();
        let d = self.d_model;
        let spatial = spatial_positions::<B>(grid, d, &device).unsqueeze::<3>();
        let temporal = |first: usize, count: usize| -> Tensor<B, 3> {
            let positions: Vec<f32> = (first..first + count).map(|p| p as f32).collect();
            sinusoids::<B>(&positions, d, 1.0, &device).unsqueeze_dim::<3>(1)
        };
        let reference = self.reference.forward(reference_latent).unsqueeze::<3>();
        let base_tokens =
            (reference + spatial.clone()).repeat_dim(0, frames) + temporal(motion_frames, frames);
        let motion_tokens =
            layer_norm(self.motion.forward(motion) + spatial + temporal(0, motion_frames))
                .swap_dims(0, 1);
        debug_assert_eq!(motion_tokens.dims()[0], cells);
        let prompt = Tensor::<B, 2>::from_data(
            TensorData::new(prompt.to_vec(), [1, TEXT_EMBED_DIM]),
            &device,
        );
        let audio_embedding = self
            .audio_out
            .forward(gelu(self.audio_in.forward(audio.clone())));
        let guidance = audio_embedding + self.text.forward(prompt);
        let audio_skip = self.audio_skip.forward(audio).unsqueeze_dim::<3>(1);
        let mut bias = Vec::with_capacity(frames * (motion_frames + frames));
        for query in 0..frames {
            for key in 0..motion_frames + frames {
                bias.push(if key <= motion_frames + query {
                    0.0
                } else {
                    MASKED
                });
            }
        }
        let temporal_bias = Tensor::from_data(
            TensorData::new(bias, [frames, motion_frames + frames]),
            &device,
        );
        ClipContext {
            base_tokens,
            motion_tokens,
            guidance,
            audio_skip,
            temporal_bias,
        }
    }

    /// Predicts clean latents from `noisy` `[frames, cells, channels]` at flow time `t` (1 is
    /// pure noise). `guided: false` drops prompt and audio: the unconditional pass of
    /// classifier-free guidance.
    pub(crate) fn predict_clean(
        &self,
        noisy: Tensor<B, 3>,
        t: f32,
        ctx: &ClipContext<B>,
        guided: bool,
    ) -> Tensor<B, 3> {
        let device = noisy.device();
        let time = sinusoids::<B>(&[t * 1000.0], self.d_model, 1.0, &device);
        let time = self.time_out.forward(silu(self.time_in.forward(time)));
        let cond = if guided {
            ctx.guidance.clone() + time
        } else {
            time.repeat_dim(0, ctx.guidance.dims()[0])
        };
        let cond = silu(cond);
        let mut h = self.patch_in.forward(noisy) + ctx.base_tokens.clone();
        for block in &self.blocks {
            h = block.forward(h, cond.clone(), ctx);
        }
        let mods = self
            .final_modulation
            .forward(cond)
            .unsqueeze_dim::<3>(1)
            .chunk(2, 2);
        let out = self
            .head
            .forward(modulate(layer_norm(h), mods[0].clone(), mods[1].clone()));
        if guided {
            out + ctx.audio_skip.clone()
        } else {
            out
        }
    }
}

impl<B: Backend> Block<B> {
    fn forward(&self, h: Tensor<B, 3>, cond: Tensor<B, 2>, ctx: &ClipContext<B>) -> Tensor<B, 3> {
        let m = self
            .modulation
            .forward(cond)
            .unsqueeze_dim::<3>(1)
            .chunk(9, 2);
        let a = modulate(layer_norm(h.clone()), m[0].clone(), m[1].clone());
        let h = h + m[2].clone() * self.spatial.forward(a.clone(), a, None);
        let b = modulate(layer_norm(h.clone()), m[3].clone(), m[4].clone()).swap_dims(0, 1);
        let keys = Tensor::cat(vec![ctx.motion_tokens.clone(), b.clone()], 1);
        let mixed = self
            .temporal
            .forward(b, keys, Some(ctx.temporal_bias.clone()));
        let h = h + m[5].clone() * mixed.swap_dims(0, 1);
        let e = modulate(layer_norm(h.clone()), m[6].clone(), m[7].clone());
        h + m[8].clone() * self.mlp_out.forward(gelu(self.mlp_in.forward(e)))
    }
}

/// Sinusoidal embeddings `[positions, d]`: half sines, half cosines over geometric frequencies.
fn sinusoids<B: Backend>(
    positions: &[f32],
    d: usize,
    scale: f32,
    device: &B::Device,
) -> Tensor<B, 2> {
    let half = (d / 2).max(1);
    let mut data = Vec::with_capacity(positions.len() * d);
    for &p in positions {
        let mut row = vec![0.0f32; d];
        for i in 0..half {
            let freq = (-(i as f32) / half as f32 * 10_000f32.ln()).exp();
            let angle = p * scale * freq;
            row[i] = angle.sin();
            if half + i < d {
                row[half + i] = angle.cos();
            }
        }
        data.extend(row);
    }
    Tensor::from_data(TensorData::new(data, [positions.len(), d]), device)
}

/// 2-D positions of a `(rows, columns)` cell grid, `[cells, d]`: rows in the first half of the
/// channels, columns in the second. Positions are in cells, so larger frames see more of them.
fn spatial_positions<B: Backend>(
    grid: (usize, usize),
    d: usize,
    device: &B::Device,
) -> Tensor<B, 2> {
    let (rows, columns) = grid;
    let half = d / 2;
    let row_pos: Vec<f32> = (0..rows).map(|r| r as f32).collect();
    let col_pos: Vec<f32> = (0..columns).map(|c| c as f32).collect();
    let row_emb = sinusoids::<B>(&row_pos, half, 1.0, device)
        .unsqueeze_dim::<3>(1)
        .repeat_dim(1, columns);
    let col_emb = sinusoids::<B>(&col_pos, d - half, 1.0, device)
        .unsqueeze_dim::<3>(0)
        .repeat_dim(0, rows);
    Tensor::cat(vec![row_emb, col_emb], 2).reshape([rows * columns, d])
}
