//! The job-level Live Avatar pipeline: everything a render engine needs to turn a
//! reference image, a mono 16 kHz audio track and a tokenized prompt into video, clip by
//! clip, with an exact resume from any clip boundary.
//!
//! ```text
//! LiveAvatar::load_with(dir, opts)  once per process: DiT (+ LoRA merged, fp8 if asked) placed
//!                                   by memory mode, VAE; umT5 and wav2vec2 are not kept
//! check_settings(&params)           size, frames, steps, fps: errors say what to change
//! prepare(&params, rgb, audio, ids) once per job: ref latent, motion latents, text, audio
//!                                   features (umT5 and wav2vec2 loaded for it, then dropped)
//! start(&ctx) -> carry              clip 0 state: sink prefilled, empty rings, fresh decode cache
//! render_clip(&ctx, carry)          -> (frames, next carry), in the model's memory mode
//! carry.to_bytes / write_to         PipelineCarry::from_bytes(bytes, id, device) refuses another job's
//! carry_bytes(&config, &params, dt) the carry file's exact size, before the job starts
//! ```
//!
//! Memory modes ([`MemoryMode`]): `Resident` runs the sequential loop with every block and the
//! carry on the device; `Hybrid { resident_blocks }` and `Streamed` run the tick loop of
//! [`crate::streamed`] with the other blocks' weights and carry in host memory. All three give
//! the same frames bit for bit on one backend, and the carry ([`PipelineCarry`]) moves its layers
//! to wherever the model's mode wants them at the start of each clip, so a job can change mode
//! at any resume (or inside one process, [`LiveAvatar::set_memory_mode`]). The memory each
//! mode needs is computed by [`crate::memory`].
//!
//! Frames per clip: the causal VAE turns the first latent frame of the stream into one
//! video frame and every later latent frame into four, so clip 0 returns
//! `infer_frames - 3` frames and every later clip `infer_frames`. The audio features of
//! clip `k` are rows `k·infer_frames .. (k+1)·infer_frames` of the track's per-video-frame
//! features (zero rows past its end, as the original pads). After `n` clips there are
//! `n·infer_frames - 3` frames; as in the original they play from time 0 against the audio,
//! and the render side cuts the video to the audio's length.

mod carry;
mod config;

pub use crate::fp8::Precision;
pub use crate::streamed::MemoryMode;
pub use carry::{carry_bytes, sink_rope_groups, CarryStamp, PipelineCarry, MODEL_ID_LEN};
pub use config::{LiveAvatarConfig, WAN21_MEAN, WAN21_STD};

use std::path::{Path, PathBuf};

use burn::prelude::*;
use sha2::{Digest, Sha256};

use crate::audio::MOTION_FRAMES;
use crate::causal_loop::{run_clip, ClipInput, DitCarry};
use crate::error::WanError;
use crate::loader::{load_pth, load_safetensors, S2vSource, S2V_INDEX};
use crate::lora::{lora_targets, LoraFile};
use crate::release::{
    find_lora, CONFIG_FILE, S2V_DIR, T5_PTH, T5_SAFETENSORS, VAE_PTH, VAE_SAFETENSORS, W2V_DIR,
};
use crate::streamed::{run_clip_streamed, BlockShape, HostBlock, HostDitCarry, StreamedModel};
use crate::t5::T5Encoder;
use crate::vae::{DecodeCache, WanVae};
use crate::wav2vec2::{
    audio_per_video_frame, load_wav2vec2_dir, Wav2Vec2Config, Wav2Vec2Model, W2V_BIN,
    W2V_SAFETENSORS,
};
use crate::WanS2v;

/// Audio sample rate the pipeline takes (wav2vec2's).
pub const AUDIO_RATE: u32 = 16_000;
/// Video frames per latent frame (the VAE's temporal stride).
pub const VIDEO_FRAMES_PER_LATENT: usize = 4;
/// Pixels per latent row/column times the DiT's 2×2 patch times the frame packer's
/// coarsest 4× grid: width and height must be multiples of this.
pub const SIZE_MULTIPLE: usize = 64;
/// Largest width or height accepted (4K UHD's width), so a typo cannot ask for
/// terabytes; Live Avatar renders 704×384.
pub const MAX_SIDE: usize = 4096;
/// Shift of the flow-matching schedule (Live Avatar's `shift=3`).
pub const SAMPLE_SHIFT: f64 = 3.0;
/// Video frames the original's first clip drops (the causal VAE makes one frame of the
/// first latent frame, four of every other).
pub const FIRST_CLIP_SHORTFALL: usize = 3;
fn input_err(message: impl Into<String>) -> WanError {
    WanError::Input {
        message: message.into(),
    }
}

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

impl JobParams {
    /// A job at `width`×`height` with `infer_frames` video frames per clip and the release's
    /// other settings (4 steps, 25 fps), seed 0: the sizes the memory and carry accounting
    /// are quoted at.
    pub fn release_defaults(width: usize, height: usize, infer_frames: usize) -> Self {
        Self {
            width,
            height,
            infer_frames,
            sample_steps: 4,
            seed: 0,
            fps: 25,
        }
    }

    /// Latent frames per clip.
    pub fn latent_frames(&self) -> usize {
        self.infer_frames / VIDEO_FRAMES_PER_LATENT
    }

    /// Latent rows and columns.
    pub fn latent_hw(&self) -> [usize; 2] {
        [self.height / 8, self.width / 8]
    }

    /// Video frames [`LiveAvatar::render_clip`] returns for clip `clip`:
    /// `infer_frames - 3` for clip 0, `infer_frames` after.
    pub fn clip_video_frames(&self, clip: u64) -> usize {
        if clip == 0 {
            self.infer_frames - FIRST_CLIP_SHORTFALL
        } else {
            self.infer_frames
        }
    }
}

/// How [`LiveAvatar::load_with`] places and stores the DiT.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct LoadOptions {
    /// Where the blocks and their carry live while clips render (default: resident).
    pub mode: MemoryMode,
    /// How the DiT's linear weights are stored (default: the backend's float dtype).
    pub precision: Precision,
}

/// The DiT as the memory mode keeps it.
enum Dit<B: Backend> {
    /// Every block on the device.
    Resident(WanS2v<B>),
    /// The first blocks on the device, the others' weights in host memory.
    Split(StreamedModel<B>),
}

/// The models on the device between clips, as [`LiveAvatar::device_modules`] lists them.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DeviceModule {
    /// The DiT's parts outside its blocks (embeddings, head, audio encoder and injectors,
    /// frame packer).
    DitResidentParts,
    /// This many of the DiT's blocks (all of them in the resident mode).
    DitBlocks(usize),
    /// The Wan 2.1 VAE (its decoder runs per clip).
    Vae,
}

/// The loaded model family of one Live Avatar directory. Holds the DiT (with the Live
/// Avatar LoRA merged in) and the VAE; the once-per-job encoders (umT5-XXL, wav2vec2) are
/// loaded by [`LiveAvatar::prepare`] for its own run and dropped before it returns, so they
/// are never on the device while clips render.
pub struct LiveAvatar<B: Backend> {
    pub config: LiveAvatarConfig,
    dit: Dit<B>,
    pub vae: WanVae<B>,
    /// wav2vec2's config (its weights are loaded per [`LiveAvatar::prepare`]).
    pub wav2vec2_config: Wav2Vec2Config,
    t5_file: PathBuf,
    w2v_dir: PathBuf,
    precision: Precision,
    model_id: String,
    device: B::Device,
}

/// The once-per-job encoders, loaded for one [`LiveAvatar::prepare`].
pub struct Encoders<B: Backend> {
    pub t5: T5Encoder<B>,
    pub wav2vec2: Wav2Vec2Model<B>,
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
    id: CarryStamp,
}

impl<B: Backend> JobContext<B> {
    /// Clips that cover the audio (the original's `num_repeat`): the features are cut in
    /// batches of `infer_frames` video frames, and like the original there is always one
    /// batch more than whole ones (`floor(frames / infer_frames) + 1`).
    pub fn clips(&self) -> u64 {
        self.clips
    }

    /// Video frames the audio lasts: `ceil(samples · fps / 16000)`.
    pub fn audio_video_frames(&self) -> usize {
        self.audio_video_frames
    }

    /// The identity every carry of this job is saved and checked with.
    pub fn carry_stamp(&self) -> &CarryStamp {
        &self.id
    }
}

/// Decoded frames of one clip, RGB24 (row-major, `width · height · 3` bytes per frame).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ClipFrames {
    pub width: usize,
    pub height: usize,
    pub rgb: Vec<Vec<u8>>,
}

/// Bytes hashed from each end of a weight file for the model id.
const ID_SAMPLE: u64 = 1 << 16;

/// SHA-256 over the config and, for each weight file, its name, size and first and last
/// 64 KiB: cheap at 14B, and different for two random checkpoints of the same shape.
fn model_digest(files: &[PathBuf], root: &Path) -> Result<String, WanError> {
    use std::io::{Read, Seek, SeekFrom};
    let mut h = Sha256::new();
    for path in files {
        let io = |source| WanError::Io {
            path: path.clone(),
            source,
        };
        let rel = path.strip_prefix(root).unwrap_or(path);
        h.update(rel.to_string_lossy().as_bytes());
        let mut f = std::fs::File::open(path).map_err(io)?;
        let len = f.metadata().map_err(io)?.len();
        h.update(len.to_le_bytes());
        let mut buf = vec![0u8; ID_SAMPLE.min(len) as usize];
        f.read_exact(&mut buf).map_err(io)?;
        h.update(&buf);
        if len > ID_SAMPLE {
            f.seek(SeekFrom::Start(len - ID_SAMPLE.min(len - ID_SAMPLE)))
                .map_err(io)?;
            let mut tail = Vec::new();
            f.read_to_end(&mut tail).map_err(io)?;
            h.update(&tail);
        }
    }
    Ok(h.finalize().iter().map(|b| format!("{b:02x}")).collect())
}

/// The file holding a component: the safetensors form when present, else the release's
/// pickle.
fn either(dir: &Path, safetensors: &str, pth: &str) -> PathBuf {
    let st = dir.join(safetensors);
    if st.exists() {
        st
    } else {
        dir.join(pth)
    }
}

fn load_component<B: Backend, M: burn_store::ModuleSnapshot<B>>(
    model: M,
    file: &Path,
    device: &B::Device,
) -> Result<M, WanError> {
    if file.extension().is_some_and(|e| e == "safetensors") {
        let dir = file.parent().unwrap_or(Path::new("."));
        load_safetensors(model, dir, vec![file.to_path_buf()], device).map(|(m, _)| m)
    } else {
        load_pth(model, file, device).map(|(m, _)| m)
    }
}

/// Smallest number of samples wav2vec2's conv stack makes a frame of.
fn min_audio_samples(w2v: &Wav2Vec2Config) -> usize {
    (1..=1_000_000)
        .find(|&n| w2v.output_frames(n) > 0)
        .unwrap_or(usize::MAX)
}

/// Standard normal noise for clip `clip` of a job seeded `seed`: element `i` depends only
/// on (seed, clip, i), so any clip's noise is the same after a resume. Box–Muller over a
/// SplitMix64 stream.
pub fn clip_noise(seed: u64, clip: u64, n: usize) -> Vec<f32> {
    fn mix(mut z: u64) -> u64 {
        z = z.wrapping_add(0x9E37_79B9_7F4A_7C15);
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }
    let base = mix(mix(seed ^ 0x6E6F_6973_6521) ^ clip);
    let unit = |x: u64| ((x >> 11) as f64 + 0.5) / (1u64 << 53) as f64;
    let mut out = Vec::with_capacity(n + 1);
    for pair in 0..n.div_ceil(2) as u64 {
        let a = mix(base ^ (2 * pair));
        let b = mix(base ^ (2 * pair + 1));
        let r = (-2.0 * unit(a).ln()).sqrt();
        let theta = std::f64::consts::TAU * unit(b);
        out.push((r * theta.cos()) as f32);
        out.push((r * theta.sin()) as f32);
    }
    out.truncate(n);
    out
}

/// Video `[1, 3, T, H, W]` in [-1, 1] to RGB24 frames.
fn to_rgb<B: Backend>(video: Tensor<B, 5>) -> Result<Vec<Vec<u8>>, WanError> {
    let [_, c, t, h, w] = video.dims();
    let values: Vec<f32> = video
        .clamp(-1.0, 1.0)
        .permute([0, 2, 3, 4, 1])
        .into_data()
        .convert::<f32>()
        .to_vec()
        .map_err(|e| input_err(format!("cannot read the decoded frames back: {e:?}")))?;
    let frame = h * w * c;
    Ok((0..t)
        .map(|i| {
            values[i * frame..(i + 1) * frame]
                .iter()
                .map(|v| ((v + 1.0) * 127.5).round().clamp(0.0, 255.0) as u8)
                .collect()
        })
        .collect())
}

impl<B: Backend> LiveAvatar<B> {
    /// Loads a model directory in the release layout (see `wan/README.md`) with the DiT
    /// resident in the float dtype ([`LoadOptions::default`]).
    pub fn load(dir: &Path, device: &B::Device) -> Result<Self, WanError> {
        Self::load_with(dir, device, LoadOptions::default())
    }

    /// Loads a model directory in the release layout: the DiT from `Wan2.2-S2V-14B/` block by
    /// block, each block with the Live Avatar LoRA ([`find_lora`]) merged, stored as fp8 when
    /// asked, and kept on the device or moved to host memory as `options.mode` places it (so
    /// the device never holds more than one block beyond what the mode keeps); the VAE. umT5
    /// and wav2vec2 are checked (files present, wav2vec2's config fits the DiT) but loaded
    /// only by [`LiveAvatar::prepare`]. Every header is checked before any weight is read;
    /// a LoRA that does not adapt exactly Live Avatar's layers is refused.
    pub fn load_with(
        dir: &Path,
        device: &B::Device,
        options: LoadOptions,
    ) -> Result<Self, WanError> {
        let config = LiveAvatarConfig::from_dir(dir)?;
        let s2v_dir = dir.join(S2V_DIR);
        let lora_path = find_lora(dir)?;
        let vae_file = either(&s2v_dir, VAE_SAFETENSORS, VAE_PTH);
        let t5_file = either(&s2v_dir, T5_SAFETENSORS, T5_PTH);
        let w2v_dir = s2v_dir.join(W2V_DIR);

        let source = S2vSource::open(&s2v_dir)?;
        source.check(&WanS2v::<B>::new(&config.s2v, device))?;
        let w2v_config = Wav2Vec2Config::from_json_file(&w2v_dir.join("config.json"))?;
        let states = w2v_config.num_hidden_layers + 1;
        let width = w2v_config.hidden_size;
        if states != config.s2v.audio_layers || width != config.s2v.audio_dim {
            return Err(WanError::BadConfig {
                path: w2v_dir.join("config.json"),
                message: format!(
                    "wav2vec2 gives {states} hidden states of width {width}; the DiT's audio encoder takes {} of width {}",
                    config.s2v.audio_layers, config.s2v.audio_dim
                ),
            });
        }
        let w2v_weights = either(&w2v_dir, W2V_SAFETENSORS, W2V_BIN);
        for file in [&t5_file, &w2v_weights] {
            if !file.exists() {
                return Err(WanError::Io {
                    path: file.clone(),
                    source: std::io::Error::new(
                        std::io::ErrorKind::NotFound,
                        "model file not found",
                    ),
                });
            }
        }
        let lora = LoraFile::open(&lora_path)?;
        lora.require_targets(&lora_targets(&config.s2v))?;

        let fp8 = options.precision == Precision::Fp8;
        let layers = config.s2v.num_layers;
        let keep = options.mode.resident_blocks(layers);
        let mut kept = Vec::with_capacity(keep);
        let mut host = Vec::with_capacity(layers - keep);
        let (mut dit, _) =
            source.load_each(WanS2v::new(&config.s2v, device), |layer, mut block| {
                lora.merge_block(layer, &mut block, config.lora_alpha)?;
                if fp8 {
                    block.to_fp8();
                }
                if layer < keep {
                    kept.push(block);
                } else {
                    host.push(HostBlock::from_block(block));
                }
                Ok(())
            })?;
        lora.merge_resident(&mut dit, config.lora_alpha)?;
        if fp8 {
            dit.to_fp8();
        }
        dit.blocks = kept;
        let dit = match options.mode {
            MemoryMode::Resident => Dit::Resident(dit),
            _ => Dit::Split(StreamedModel::from_parts(
                dit,
                host,
                BlockShape::of(&config.s2v),
                device,
            )),
        };
        tracing::debug!(mode = %options.mode, precision = %options.precision, "DiT loaded");
        let vae = load_component(WanVae::new(&config.vae, device), &vae_file, device)?;

        let mut files = vec![s2v_dir.join(CONFIG_FILE)];
        if s2v_dir.join(S2V_INDEX).exists() {
            files.push(s2v_dir.join(S2V_INDEX));
        }
        files.extend(source.shards().iter().cloned());
        files.extend([
            lora_path,
            vae_file,
            t5_file.clone(),
            w2v_dir.join("config.json"),
        ]);
        files.push(w2v_weights);
        let model_id = model_digest(&files, dir)?;
        Ok(Self {
            config,
            dit,
            vae,
            wav2vec2_config: w2v_config,
            t5_file,
            w2v_dir,
            precision: options.precision,
            model_id,
            device: device.clone(),
        })
    }

    /// Where the DiT's blocks are.
    pub fn memory_mode(&self) -> MemoryMode {
        match &self.dit {
            Dit::Resident(_) => MemoryMode::Resident,
            Dit::Split(m) if m.resident_blocks() == 0 => MemoryMode::Streamed,
            Dit::Split(m) => MemoryMode::Hybrid {
                resident_blocks: m.resident_blocks(),
            },
        }
    }

    /// How the DiT's linear weights are stored.
    pub fn precision(&self) -> Precision {
        self.precision
    }

    /// Moves the DiT's blocks to match `mode` (between device and host memory, block by
    /// block). Carries follow at the next clip ([`LiveAvatar::render_clip`] moves their layers).
    pub fn set_memory_mode(&mut self, mode: MemoryMode) {
        let layers = self.config.s2v.num_layers;
        let dit = std::mem::replace(
            &mut self.dit,
            Dit::Resident(WanS2v::new(&self.config.s2v, &self.device)),
        );
        self.dit = match (dit, mode) {
            (Dit::Resident(m), MemoryMode::Resident) => Dit::Resident(m),
            (Dit::Split(sm), MemoryMode::Resident) => Dit::Resident(sm.into_model()),
            (Dit::Resident(m), other) => Dit::Split(StreamedModel::from_model_hybrid(
                m,
                other.resident_blocks(layers),
            )),
            (Dit::Split(mut sm), other) => {
                sm.set_resident_blocks(other.resident_blocks(layers));
                Dit::Split(sm)
            }
        };
    }

    /// The DiT's parts on the device: in the resident mode the whole model; otherwise the
    /// parts outside `blocks` and the resident blocks.
    pub fn dit(&self) -> &WanS2v<B> {
        match &self.dit {
            Dit::Resident(m) => m,
            Dit::Split(sm) => &sm.resident,
        }
    }

    /// What stays on the device between clips: the DiT's resident parts and blocks and the
    /// VAE. umT5 and wav2vec2 never appear: [`LiveAvatar::prepare`] loads and drops them.
    pub fn device_modules(&self) -> Vec<DeviceModule> {
        vec![
            DeviceModule::DitResidentParts,
            DeviceModule::DitBlocks(self.dit().blocks.len()),
            DeviceModule::Vae,
        ]
    }

    /// Loads the once-per-job encoders (umT5 and wav2vec2) onto the device.
    pub fn load_encoders(&self) -> Result<Encoders<B>, WanError> {
        let t5 = load_component(
            T5Encoder::new(&self.config.t5, &self.device),
            &self.t5_file,
            &self.device,
        )?;
        let (wav2vec2, _) = load_wav2vec2_dir(&self.w2v_dir, &self.device)?;
        Ok(Encoders { t5, wav2vec2 })
    }

    /// Digest of the model directory (config and weight files), 64 hex digits.
    pub fn model_id(&self) -> &str {
        &self.model_id
    }

    /// Checks a job's settings against the model; the error says what to change.
    pub fn check_settings(&self, s: &JobParams) -> Result<(), WanError> {
        self.config.check_settings(s)
    }

    /// Once per job: the reference latent (the image repeated 5 times through the VAE
    /// encoder, latent 1 kept, as the original), the initial motion latents (the image
    /// repeated 73 times: 19 latents), the prompt through umT5 and the DiT's text
    /// embedding, and the audio features of the whole track at `s.fps`.
    ///
    /// `reference_rgb` is RGB24 at exactly `width × height` (resizing is the caller's).
    /// `prompt_ids` are umT5 token ids; trailing padding (id 0) is dropped and at most
    /// `text_len` ids are used (the original's tokenizer truncates there).
    /// `audio_16k_mono` must be at least as long as wav2vec2's receptive field (400
    /// samples, 25 ms, for the release).
    pub fn prepare(
        &self,
        s: &JobParams,
        reference_rgb: &[u8],
        audio_16k_mono: &[f32],
        prompt_ids: &[u32],
    ) -> Result<JobContext<B>, WanError> {
        self.check_settings(s)?;
        let device = &self.device;
        let (w, h) = (s.width, s.height);
        if reference_rgb.len() != w * h * 3 {
            return Err(input_err(format!(
                "the reference image has {} bytes; RGB24 at {w}x{h} has {}",
                reference_rgb.len(),
                w * h * 3
            )));
        }
        // Every input is checked before the first model runs.
        if let Some(i) = audio_16k_mono.iter().position(|v| !v.is_finite()) {
            return Err(input_err(format!(
                "audio sample {i} is {}; samples must be finite",
                audio_16k_mono[i]
            )));
        }
        if self.wav2vec2_config.output_frames(audio_16k_mono.len()) == 0 {
            return Err(input_err(format!(
                "the audio has {} samples; wav2vec2 needs at least {} (16 kHz)",
                audio_16k_mono.len(),
                min_audio_samples(&self.wav2vec2_config)
            )));
        }
        let ids = self.prompt_ids(prompt_ids)?;
        // The encoders live for this call only: dropped before the job's clips render.
        let encoders = self.load_encoders()?;

        let pixels: Vec<f32> = reference_rgb
            .iter()
            .map(|&v| f32::from(v) / 255.0 * 2.0 - 1.0)
            .collect();
        let image = Tensor::<B, 3>::from_data(TensorData::new(pixels, [h, w, 3]), device)
            .permute([2, 0, 1])
            .reshape([1, 3, 1, h, w]);
        let (mean, std) = (&self.config.vae_mean, &self.config.vae_std);
        let ref_latent = self
            .vae
            .encode(image.clone().repeat_dim(2, 5), mean, std)
            .narrow(2, 1, 1);
        let motion = self
            .vae
            .encode(image.repeat_dim(2, MOTION_FRAMES), mean, std);

        let context = self.embed_prompt(&encoders.t5, ids);

        let Some((flat, batches)) = audio_per_video_frame(
            &encoders.wav2vec2,
            audio_16k_mono,
            f64::from(s.fps),
            s.infer_frames,
            device,
        ) else {
            return Err(input_err(format!(
                "the audio has {} samples; wav2vec2 needs at least {} (16 kHz)",
                audio_16k_mono.len(),
                min_audio_samples(&self.wav2vec2_config)
            )));
        };
        drop(encoders);
        let (layers, dim) = (self.config.s2v.audio_layers, self.config.s2v.audio_dim);
        let frames = flat.len() / (layers * dim);
        let audio = Tensor::<B, 3>::from_data(TensorData::new(flat, [frames, layers, dim]), device)
            .permute([1, 2, 0])
            .unsqueeze::<4>();
        let audio_video_frames = (audio_16k_mono.len() as u64 * u64::from(s.fps))
            .div_ceil(u64::from(AUDIO_RATE)) as usize;
        Ok(JobContext {
            params: s.clone(),
            ref_latent,
            motion,
            context,
            audio,
            clips: batches as u64,
            audio_video_frames,
            id: CarryStamp::new(&self.model_id, s),
        })
    }

    /// The prompt ids the text encoder reads: trailing padding (id 0) dropped, at most
    /// `text_len`, each inside the vocabulary.
    fn prompt_ids<'a>(&self, prompt_ids: &'a [u32]) -> Result<&'a [u32], WanError> {
        let cfg = &self.config;
        let real = prompt_ids.len() - prompt_ids.iter().rev().take_while(|&&id| id == 0).count();
        let ids = &prompt_ids[..real.min(cfg.s2v.text_len)];
        if let Some(bad) = ids.iter().find(|&&id| id as usize >= cfg.t5.vocab) {
            return Err(input_err(format!(
                "prompt token id {bad} is outside the text encoder's vocabulary of {} (a tokenizer of another model?)",
                cfg.t5.vocab
            )));
        }
        Ok(ids)
    }

    /// Checked token ids to the DiT's embedded text `[1, text_len, dim]`.
    fn embed_prompt(&self, t5: &T5Encoder<B>, ids: &[u32]) -> Tensor<B, 3> {
        let cfg = &self.config;
        let text = if ids.is_empty() {
            Tensor::zeros([1, cfg.s2v.text_len, cfg.s2v.text_dim], &self.device)
        } else {
            let ids: Vec<i64> = ids.iter().map(|&v| i64::from(v)).collect();
            t5.forward(&ids, &vec![true; ids.len()])
        };
        self.dit().embed_text(text)
    }

    /// The state before clip 0: the sink prefilled from the reference and motion
    /// latents, empty KV rings, a fresh VAE decode cache.
    pub fn start(&self, ctx: &JobContext<B>) -> Result<PipelineCarry<B>, WanError> {
        self.check_settings(&ctx.params)?;
        let settings = self.config.causal_settings(&ctx.params);
        let (r, m, c) = (
            ctx.ref_latent.clone(),
            ctx.motion.clone(),
            ctx.context.clone(),
        );
        let mut inner = match &self.dit {
            Dit::Resident(model) => HostDitCarry::from_carry_split(
                DitCarry::start(model, &settings, r, m, c),
                usize::MAX,
            ),
            Dit::Split(sm) => HostDitCarry::start(sm, &settings, r, m, c),
        };
        inner.vae_decode = Some(DecodeCache::default());
        Ok(PipelineCarry { inner })
    }

    /// Renders clip `carry.clip()`: noise from (seed, clip), the clip's audio window,
    /// [`run_clip`], then the streaming VAE decode of its latents continuing the carried
    /// decode cache. Returns `infer_frames - 3` RGB frames for clip 0 and `infer_frames`
    /// for every later clip ([`JobParams::clip_video_frames`]), and the next carry.
    /// Clips past [`JobContext::clips`] get silent (zero) audio features.
    pub fn render_clip(
        &self,
        ctx: &JobContext<B>,
        carry: PipelineCarry<B>,
    ) -> Result<(ClipFrames, PipelineCarry<B>), WanError> {
        let s = &ctx.params;
        let settings = self.config.causal_settings(s);
        let [lh, lw] = s.latent_hw();
        let f = s.latent_frames();
        let ring = f * (lh / 2) * (lw / 2);
        if carry.inner.grid_hw != [lh / 2, lw / 2]
            || carry.inner.ring_tokens() != ring
            || carry.inner.steps() != s.sample_steps
        {
            return Err(input_err(format!(
                "the carry was made for another geometry (grid {:?}, {} ring tokens, {} steps) than this job's ({:?}, {ring}, {})",
                carry.inner.grid_hw,
                carry.inner.ring_tokens(),
                carry.inner.steps(),
                [lh / 2, lw / 2],
                s.sample_steps
            )));
        }
        let clip = carry.clip();
        let device = &self.device;
        let z = self.config.s2v.in_dim;
        let noise = Tensor::<B, 5>::from_data(
            TensorData::new(clip_noise(s.seed, clip, z * f * lh * lw), [1, z, f, lh, lw]),
            device,
        );
        let cond = Tensor::zeros([1, self.config.s2v.cond_dim, f, lh, lw], device);
        let audio = self.clip_audio(ctx, clip);
        let input = ClipInput {
            noise,
            cond,
            context: ctx.context.clone(),
            audio: Some(audio),
        };
        let (latents, mut next) = match &self.dit {
            Dit::Resident(model) => {
                // Host layers (a carry saved by a streamed run) come onto the device here.
                let (latents, next) =
                    run_clip(model, &settings, carry.inner.into_carry(device), input);
                (latents, HostDitCarry::from_carry_split(next, usize::MAX))
            }
            Dit::Split(sm) => {
                let mut inner = carry.inner;
                inner.set_resident_layers(sm.resident_blocks(), device);
                let clip = run_clip_streamed(sm, &settings, inner, input)?;
                tracing::debug!(
                    bytes_up = clip.traffic.bytes_up(),
                    bytes_down = clip.traffic.ring_bytes_down,
                    "streamed clip"
                );
                (clip.latents, clip.carry)
            }
        };
        let mut cache = next.vae_decode.take().unwrap_or_default();
        let video = self.vae.decode_stream(
            latents,
            &self.config.vae_mean,
            &self.config.vae_std,
            &mut cache,
        );
        next.vae_decode = Some(cache);
        let rgb = to_rgb(video)?;
        Ok((
            ClipFrames {
                width: s.width,
                height: s.height,
                rgb,
            },
            PipelineCarry { inner: next },
        ))
    }

    /// A carry saved by [`PipelineCarry::to_bytes`], with its layers placed where this model's
    /// memory mode keeps them (host memory for streamed layers: a streamed job's carry never
    /// has to fit on the device). The checks are [`PipelineCarry::from_bytes`]'s.
    pub fn carry_from_bytes(
        &self,
        bytes: &[u8],
        id: &CarryStamp,
    ) -> Result<PipelineCarry<B>, WanError> {
        let resident = self
            .memory_mode()
            .resident_blocks(self.config.s2v.num_layers);
        PipelineCarry::from_bytes_split(bytes, id, &self.device, resident)
    }

    /// Audio features of clip `clip` `[1, layers, dim, infer_frames]`, zero rows past the
    /// track's features.
    fn clip_audio(&self, ctx: &JobContext<B>, clip: u64) -> Tensor<B, 4> {
        let n = ctx.params.infer_frames;
        let [_, layers, dim, total] = ctx.audio.dims();
        let start = (clip as usize).saturating_mul(n);
        let have = total.saturating_sub(start).min(n);
        let zeros = |k| Tensor::zeros([1, layers, dim, k], &self.device);
        match have {
            0 => zeros(n),
            h if h == n => ctx.audio.clone().narrow(3, start, n),
            h => Tensor::cat(vec![ctx.audio.clone().narrow(3, start, h), zeros(n - h)], 3),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn clip_noise_is_standard_normal_and_keyed_by_seed_and_clip() {
        let a = clip_noise(1, 0, 20_001);
        assert_eq!(a.len(), 20_001);
        let mean = a.iter().map(|&v| f64::from(v)).sum::<f64>() / a.len() as f64;
        let var = a
            .iter()
            .map(|&v| (f64::from(v) - mean).powi(2))
            .sum::<f64>()
            / a.len() as f64;
        assert!(
            mean.abs() < 0.03 && (var - 1.0).abs() < 0.05,
            "{mean} {var}"
        );
        assert_eq!(a, clip_noise(1, 0, 20_001));
        assert_eq!(
            &a[..100],
            &clip_noise(1, 0, 100)[..],
            "a prefix does not depend on n"
        );
        assert_ne!(a[..100], clip_noise(1, 1, 100)[..]);
        assert_ne!(a[..100], clip_noise(2, 0, 100)[..]);
    }
}
