//! The job-level Live Avatar pipeline: everything a render engine needs to turn a
//! reference image, a mono 16 kHz audio track and a tokenized prompt into video, clip by
//! clip, with an exact resume from any clip boundary.
//!
//! ```text
//! LiveAvatar::load(dir)            once per process: DiT (+ LoRA merged), VAE, umT5, wav2vec2
//! check_settings(&params)          size, frames, steps: errors say what to change
//! prepare(&params, rgb, audio, ids) once per job: ref latent, motion latents, text, audio features
//! start(&ctx) -> carry             clip 0 state: sink prefilled, empty rings, fresh decode cache
//! render_clip(&ctx, carry)         -> (frames, next carry); carry.to_bytes / from_bytes between
//! ```
//!
//! Frames per clip: the causal VAE turns the first latent frame of the stream into one
//! video frame and every later latent frame into four, so clip 0 returns
//! `infer_frames - 3` frames and every later clip `infer_frames`. The audio features of
//! clip `k` are video frames `k·infer_frames .. (k+1)·infer_frames` of the track (zero rows
//! past its end, as the original pads), so the video runs 3 frames ahead of the audio
//! grid; the render side cuts the video to the audio's length.

use std::path::Path;

use burn::prelude::*;

use crate::causal_loop::Carry;
use crate::config::S2vConfig;
use crate::error::WanError;
use crate::t5::{T5Config, T5Encoder};
use crate::vae::{VaeConfig, WanVae};
use crate::wav2vec2::Wav2Vec2Model;
use crate::WanS2v;

/// The settings of one job that shape the computation.
#[derive(Debug, Clone, PartialEq)]
pub struct JobParams {
    /// Video width and height in pixels (multiples of 64).
    pub width: usize,
    pub height: usize,
    /// Video frames per clip (a multiple of `4 · frames_per_block`; 48 in the release).
    pub infer_frames: usize,
    /// Euler steps per block (4 in the release); one KV ring each.
    pub sample_steps: usize,
    /// Job seed: the noise of every clip and the pinned sink RoPE offsets derive from it.
    pub seed: u64,
    /// Video frame rate the audio features are bucketed at (25 for the release).
    pub fps: u32,
}

/// Everything about a model directory that sizes the computation (no weights).
#[derive(Debug, Clone, PartialEq)]
pub struct LiveAvatarConfig {
    pub s2v: S2vConfig,
    pub vae: VaeConfig,
    pub t5: T5Config,
    /// Latent frames denoised together (3 in the release).
    pub frames_per_block: usize,
    /// Per-channel latent normalisation of the VAE.
    pub vae_mean: Vec<f32>,
    pub vae_std: Vec<f32>,
}

impl LiveAvatarConfig {
    /// Reads the configuration of a model directory (the S2V `config.json` and the
    /// optional `reelspool` section) without touching the weights.
    pub fn from_dir(dir: &Path) -> Result<Self, WanError> {
        let _ = dir;
        todo!()
    }
}

/// The loaded model family of one Live Avatar directory.
pub struct LiveAvatar<B: Backend> {
    pub config: LiveAvatarConfig,
    /// The S2V DiT with the Live Avatar LoRA merged in.
    pub dit: WanS2v<B>,
    pub vae: WanVae<B>,
    pub t5: T5Encoder<B>,
    pub wav2vec2: Wav2Vec2Model<B>,
    model_id: String,
    device: B::Device,
}

/// Identifies what a carry belongs to; [`LiveCarry::from_bytes`] refuses a carry whose
/// identity differs, naming the field.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CarryId {
    /// Digest of the model directory ([`LiveAvatar::model_id`]), 64 hex digits.
    pub model: String,
    pub width: usize,
    pub height: usize,
    pub infer_frames: usize,
    pub sample_steps: usize,
    pub seed: u64,
    pub fps: u32,
}

/// What [`LiveAvatar::prepare`] computes once per job.
pub struct JobContext<B: Backend> {
    pub params: JobParams,
    /// Reference latent `[1, 16, 1, H/8, W/8]`.
    pub ref_latent: Tensor<B, 5>,
    /// Initial motion latents `[1, 16, 19, H/8, W/8]`.
    pub motion: Tensor<B, 5>,
    /// Embedded text `[1, text_len, dim]`.
    pub context: Tensor<B, 3>,
    /// Audio features of the whole track `[1, layers, audio_dim, clips · infer_frames]`.
    pub audio: Tensor<B, 4>,
    clips: u64,
    audio_video_frames: usize,
    id: CarryId,
}

impl<B: Backend> JobContext<B> {
    /// Clips that cover the audio (the original's `num_repeat`).
    pub fn clips(&self) -> u64 {
        self.clips
    }

    /// Video frames the audio lasts: `ceil(samples · fps / 16000)`.
    pub fn audio_video_frames(&self) -> usize {
        self.audio_video_frames
    }

    /// The identity every carry of this job is saved and checked with.
    pub fn carry_id(&self) -> &CarryId {
        &self.id
    }
}

/// The state between two clips of a job (the DiT carry plus the VAE decoder's cache).
#[derive(Debug, Clone)]
pub struct LiveCarry<B: Backend> {
    pub inner: Carry<B>,
}

/// Decoded frames of one clip, RGB24 (row-major, `width · height · 3` bytes per frame).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ClipFrames {
    pub width: usize,
    pub height: usize,
    pub rgb: Vec<Vec<u8>>,
}

impl<B: Backend> LiveAvatar<B> {
    /// Loads a model directory in the release layout (see `wan/README.md`).
    pub fn load(dir: &Path, device: &B::Device) -> Result<Self, WanError> {
        let _ = (dir, device);
        todo!()
    }

    /// Digest of the model directory (config and weight files), 64 hex digits.
    pub fn model_id(&self) -> &str {
        &self.model_id
    }

    /// Checks a job's settings against the model; the error says what to change.
    pub fn check_settings(&self, s: &JobParams) -> Result<(), WanError> {
        let _ = s;
        todo!()
    }

    /// Once per job: reference and motion latents through the VAE encoder, prompt through
    /// umT5 and the DiT's text embedding, audio features for the whole track.
    /// `reference_rgb` is RGB24 at exactly `width × height`.
    pub fn prepare(
        &self,
        s: &JobParams,
        reference_rgb: &[u8],
        audio_16k_mono: &[f32],
        prompt_ids: &[u32],
    ) -> Result<JobContext<B>, WanError> {
        let _ = (s, reference_rgb, audio_16k_mono, prompt_ids, &self.device);
        todo!()
    }

    /// The state before clip 0.
    pub fn start(&self, ctx: &JobContext<B>) -> Result<LiveCarry<B>, WanError> {
        let _ = ctx;
        todo!()
    }

    /// Renders the clip `carry.clip()`; returns its frames and the next carry.
    pub fn render_clip(
        &self,
        ctx: &JobContext<B>,
        carry: LiveCarry<B>,
    ) -> Result<(ClipFrames, LiveCarry<B>), WanError> {
        let _ = (ctx, carry);
        todo!()
    }
}

impl<B: Backend> LiveCarry<B> {
    /// Index of the next clip this carry renders.
    pub fn clip(&self) -> u64 {
        self.inner.clip
    }

    /// The carry as a file, stamped with `id`.
    pub fn to_bytes(&self, id: &CarryId) -> Result<Vec<u8>, WanError> {
        let _ = id;
        todo!()
    }

    /// A carry saved by [`LiveCarry::to_bytes`]; refuses one stamped with another id.
    pub fn from_bytes(
        bytes: &[u8],
        expected: &CarryId,
        device: &B::Device,
    ) -> Result<Self, WanError> {
        let _ = (bytes, expected, device);
        todo!()
    }
}

/// Exact size in bytes of [`LiveCarry::to_bytes`] for any carry after clip 0 of a job
/// with settings `s` on a model with `cfg`.
pub fn carry_bytes(cfg: &LiveAvatarConfig, s: &JobParams) -> Result<u64, WanError> {
    let _ = (cfg, s);
    todo!()
}
