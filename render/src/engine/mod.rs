//! Engines: load a model once, then turn one clip index plus the previous clip's [`EngineCarry`] into
//! that clip's latents, and latents into frames.
//!
//! Denoising ([`Engine::render_clip`]) and decoding ([`Engine::decode`]) are separate calls so
//! the worker decides when latents become frames. With online decode it decodes, encodes and
//! drops each clip at once and memory stays flat; without it, it keeps every clip's
//! [`ClipLatents`] and decodes at the end, which is what makes the original grow ~0.15 GB/clip.
//!
//! The native engine is the Burn one. Its backend is [`EngineBackend`]: the CPU `ndarray`
//! backend by default, `burn-cuda` under the crate feature `cuda` (a Live Avatar release runs
//! on [`ReleaseBackend`]: bf16 on a GPU, LibTorch under the crate feature `tch`). It runs the
//! built-in tiny model (`tiny`), or for a Live Avatar release directory the `wan` pipeline ([`live`]), whose
//! carry stays on the device and whose decode is part of `render_clip`: the [`EngineCarry`] the
//! worker holds is then a token, and the engine copies its state out only when the worker
//! checkpoints ([`Engine::carry_to_bytes`]). Command engines
//! ([`external`]) are other programs: they hand over decoded frames, not latents, so they do not
//! implement this trait; the worker's clip loop drives both kinds through its own seam
//! (`worker/renderer.rs`).
//!
//! Determinism: a resumed job must produce the frames an uninterrupted one would, so every
//! random draw comes from our own generator keyed by (seed, clip index), never from a stream
//! that depends on how many clips this process rendered before. On the CPU backend the
//! workspace builds `burn-ndarray` without its `multi-threads` feature, so every matmul is one
//! sequential sgemm and every reduction runs in a fixed order: same inputs, same bits.

mod architecture;
mod carry;
pub mod external;
mod features;
pub mod kernel_cache;
pub mod live;
mod rng;
mod tiny;
mod weights;

use crate::RenderError;
use std::fmt;
use std::path::Path;

use jobs::spec::ModelRef;

pub use carry::{ClipLatents, EngineCarry};
pub use features::AUDIO_SAMPLE_RATE_HZ;
pub use weights::BUILTIN_TINY;

/// The Burn backend engines run on in this build.
#[cfg(not(feature = "cuda"))]
pub type EngineBackend = burn::backend::NdArray<f32>;
/// The Burn backend engines run on in this build.
#[cfg(feature = "cuda")]
pub type EngineBackend = burn_cuda::Cuda<f32, i32>;

/// The backend a Live Avatar release runs on. On the CPU it is [`EngineBackend`] (f32: the
/// release's bf16 weights are widened as they load). Under `cuda` it is bf16, the dtype of
/// the release's DiT and umT5 weights, of the `liveavatar-14b-native` memory profile and of
/// the only GPU runs of these modules so far (`wan/examples/gpu_check.rs`); the f32 VAE
/// and wav2vec2 weights are rounded to bf16 as they load, so no module mixes dtypes.
/// Under `tch` (which wins over `cuda` here) it is LibTorch in bf16, on the leased card or,
/// without CUDA, on the CPU ([`release_device`]).
#[cfg(not(any(feature = "cuda", feature = "tch")))]
pub type ReleaseBackend = EngineBackend;
/// The backend a Live Avatar release runs on (see the CPU build's documentation).
#[cfg(all(feature = "cuda", not(feature = "tch")))]
pub type ReleaseBackend = burn_cuda::Cuda<burn::tensor::bf16, i32>;
/// The backend a Live Avatar release runs on (see the CPU build's documentation).
#[cfg(feature = "tch")]
pub type ReleaseBackend = wan::libtorch::LibTorch<burn::tensor::bf16>;

/// The device a release renders on: the backend's default (burn-cuda: the first visible
/// card; ndarray: the CPU).
#[cfg(not(feature = "tch"))]
pub fn release_device() -> burn::tensor::Device<ReleaseBackend> {
    Default::default()
}

/// The device a release renders on: CUDA device 0 when CUDA is usable (a worker sees only its
/// leased card), else the CPU.
#[cfg(feature = "tch")]
pub fn release_device() -> burn::tensor::Device<ReleaseBackend> {
    wan::libtorch::worker_device()
}

/// Process-wide backend settings a worker makes once, first thing, before any tensor exists.
/// Under `tch`: `CUBLAS_WORKSPACE_CONFIG=:4096:8` (unless the environment already sets it)
/// before CUDA starts, and PyTorch's deterministic mode, so a job resumed in a new worker
/// renders the frames an uninterrupted one would (same card model, same torch build). The
/// other backends have nothing to set (burn-cuda has no deterministic mode).
pub fn prepare_worker_process() {
    #[cfg(feature = "tch")]
    {
        let (key, value) = wan::libtorch::CUBLAS_WORKSPACE_CONFIG;
        if std::env::var_os(key).is_none() {
            // The worker calls this before it starts any thread of its own.
            std::env::set_var(key, value);
        }
        match wan::libtorch::set_deterministic() {
            Ok(()) => tracing::info!(
                device = ?release_device(),
                "releases run on LibTorch (bf16), deterministic algorithms on"
            ),
            Err(err) => {
                tracing::warn!(error = %err, "LibTorch deterministic mode is off: a resumed job may differ from an uninterrupted one")
            }
        }
    }
}

/// Index of a clip within a job, from 0. Clip *k* covers output frames `[k*F, (k+1)*F)` where
/// `F` is [`Engine::frames_per_clip`].
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct ClipIndex(pub u32);

impl fmt::Display for ClipIndex {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "clip {}", self.0)
    }
}

/// The render settings an engine needs; the worker maps the job's `JobSpec` into this so the
/// engine does not depend on the job file format.
#[derive(Debug, Clone, PartialEq)]
pub struct EngineSettings {
    /// Output width in pixels (a multiple of 16).
    pub width: u32,
    /// Output height in pixels (a multiple of 16).
    pub height: u32,
    /// Frames per clip (a multiple of 4: the latent video is 4× compressed in time).
    pub infer_frames: u32,
    /// Euler flow-matching steps per clip.
    pub sample_steps: u32,
    /// Classifier-free guidance scale; 0 turns guidance (and its second pass) off.
    pub guide_scale: f32,
    /// Seed of every random draw of the job.
    pub seed: u64,
    /// Output frame rate: it decides which audio samples belong to which frame.
    pub fps: u32,
    /// The model, as intake resolved it: `builtin:tiny`, a checkpoint directory holding
    /// `config.json` and `model.safetensors`, or a Live Avatar release directory.
    pub model: ModelRef,
}

/// What a job conditions on, already prepared by the media side.
#[derive(Debug, Clone)]
pub struct Conditioning {
    /// The reference portrait as RGB24, `width * height * 3` bytes, already scaled and cropped
    /// to the output size.
    pub reference_rgb: Vec<u8>,
    /// The whole speech track, mono, at [`AUDIO_SAMPLE_RATE_HZ`].
    pub audio_16k_mono: Vec<f32>,
    /// The text prompt.
    pub prompt: String,
}

/// Decoded video frames of one clip.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Frames {
    pub width: u32,
    pub height: u32,
    /// One RGB24 buffer of `width * height * 3` bytes per frame, in display order.
    pub rgb: Vec<Vec<u8>>,
}

/// A loaded model bound to one job's settings and conditioning.
pub trait Engine: Send {
    /// Denoises clip `index` from the state `carry` left by the previous clip; returns its
    /// latents and the carry for the next clip. `index` must equal `carry.next_clip()`.
    fn render_clip(
        &mut self,
        index: ClipIndex,
        carry: &EngineCarry,
    ) -> Result<(ClipLatents, EngineCarry), RenderError>;

    /// Decodes latents from [`Engine::render_clip`] into [`Engine::frames_per_clip`] frames.
    fn decode(&mut self, latents: &ClipLatents) -> Result<Frames, RenderError>;

    /// Output frames per clip (`infer_frames`).
    fn frames_per_clip(&self) -> u32;

    /// Frames clip 0 has fewer than the others (Live Avatar's causal VAE: 3).
    fn first_clip_shortfall(&self) -> u32 {
        0
    }

    /// Whether [`Engine::render_clip`] already decodes (the frames wait inside the engine for
    /// [`Engine::decode`]); the worker then decodes every clip at once whatever
    /// `render.online_decode` says.
    fn decodes_online(&self) -> bool {
        false
    }

    /// Video frames the speech lasts by the engine's own count, when it has one; the video
    /// is cut there.
    fn audio_video_frames(&self) -> Option<u64> {
        None
    }

    /// The carry before clip 0.
    fn initial_carry(&self) -> Result<EngineCarry, RenderError>;

    /// The bytes a checkpoint writes for `carry` (the carry that continues into
    /// `carry.next_clip()`). Called only on checkpoint clips: an engine whose state lives on
    /// the device copies it out here.
    fn carry_to_bytes(&mut self, carry: &EngineCarry) -> Result<Vec<u8>, RenderError> {
        carry.to_safetensors_bytes()
    }

    /// Writes the bytes of [`Engine::carry_to_bytes`] into `out` without first holding all
    /// of them in host memory, returning how many it wrote: for carries of tens of GB, an
    /// engine whose state lives on the device copies it out one tensor at a time. The
    /// default goes through [`Engine::carry_to_bytes`].
    fn write_carry(
        &mut self,
        carry: &EngineCarry,
        out: &mut std::fs::File,
    ) -> Result<u64, RenderError> {
        use std::io::Write;
        let bytes = self.carry_to_bytes(carry)?;
        out.write_all(&bytes)
            .map_err(|source| RenderError::CarryWrite { source })?;
        Ok(bytes.len() as u64)
    }

    /// Reads what [`Engine::carry_to_bytes`] wrote, on resume. A carry of another job is an
    /// [`RenderError::CarryMismatch`] naming what differs.
    fn carry_from_bytes(&mut self, bytes: &[u8]) -> Result<EngineCarry, RenderError> {
        EngineCarry::from_safetensors_bytes(bytes)
    }
}

/// Bytes of one serialised carry of a job with `settings` (an upper bound: the clip counter
/// and seed at their widest). Known before the job starts, so intake and every checkpoint can
/// check it against free disk space. For a Live Avatar release it comes from the release's
/// config (`wan::pipeline::carry_bytes`), so an unreadable config or settings the release
/// cannot render are an error here.
pub fn carry_bytes(settings: &EngineSettings) -> Result<u64, RenderError> {
    match &settings.model {
        ModelRef::Release { dir } => live::carry_bytes(dir, settings),
        _ => Ok(tiny_carry_bytes(settings)),
    }
}

/// Checks what can be checked of `settings.model` without loading weights: for a Live Avatar
/// release, its config and the job's settings against it. Other models are checked when the
/// worker loads them.
pub fn check_model(settings: &EngineSettings) -> Result<(), RenderError> {
    if let ModelRef::Release { dir } = &settings.model {
        live::check_release(dir, settings)?;
    }
    Ok(())
}

fn tiny_carry_bytes(settings: &EngineSettings) -> u64 {
    let mut carry = EngineCarry::initial(settings);
    carry.next_clip = u32::MAX;
    carry.noise_seed = u64::MAX;
    let tensor = carry.motion.data.len() as u64 * std::mem::size_of::<f32>() as u64;
    carry
        .to_safetensors_bytes()
        .map(|bytes| bytes.len() as u64)
        // A header of a few hundred bytes: 4 KiB covers it, should serialising ever fail.
        .unwrap_or(tensor + 4096)
}

/// Loads the model named by `settings.model` for one job on [`EngineBackend`]'s default device.
///
/// `builtin:tiny` weights are generated once into `model_cache_dir/builtin-tiny/` and then read
/// back through the same loader that reads a checkpoint directory.
pub fn load_engine(
    settings: &EngineSettings,
    cond: Conditioning,
    model_cache_dir: &Path,
) -> Result<Box<dyn Engine>, RenderError> {
    ModelCache::default()
        .engine(settings, cond, model_cache_dir)
        .map(|(engine, _)| engine)
}

/// The one model a worker keeps loaded between jobs (a warm worker serves one card and one
/// model; a job for another model gets a fresh worker, so there is never a second one here).
#[derive(Default)]
pub struct ModelCache {
    loaded: Option<Loaded>,
}

#[derive(Clone)]
enum Loaded {
    Tiny(std::sync::Arc<tiny::TinyModel<EngineBackend>>),
    Live(std::sync::Arc<live::LiveModel<ReleaseBackend>>),
}

impl Loaded {
    fn model(&self) -> &ModelRef {
        match self {
            Loaded::Tiny(model) => model.model(),
            Loaded::Live(model) => model.model(),
        }
    }
}

impl ModelCache {
    /// An engine for one job: the kept model when it is the one the job names, else the job's
    /// model loaded now (dropping the kept one first, so two never share the card). The flag
    /// says whether a model was loaded for this job.
    pub fn engine(
        &mut self,
        settings: &EngineSettings,
        cond: Conditioning,
        model_cache_dir: &Path,
    ) -> Result<(Box<dyn Engine>, bool), RenderError> {
        let release = match &settings.model {
            ModelRef::Release { dir } => Some(dir),
            _ => None,
        };
        if release.is_none() {
            validate_settings(settings)?;
        }
        let options = match release {
            Some(_) => Some(live::load_options_from_env()?),
            None => None,
        };
        // A release kept in another mode or precision than this job runs in is loaded again.
        let kept = self
            .loaded
            .as_ref()
            .filter(|model| *model.model() == settings.model)
            .filter(|model| match (model, options) {
                (Loaded::Live(live), Some(options)) => live.options() == options,
                _ => true,
            })
            .cloned();
        let (model, loaded_now) = match kept {
            Some(model) => (model, false),
            None => {
                self.loaded = None;
                let model = if let Some(dir) = release {
                    Loaded::Live(std::sync::Arc::new(live::LiveModel::load(
                        &settings.model,
                        dir,
                        &release_device(),
                        options.unwrap_or_default(),
                    )?))
                } else {
                    Loaded::Tiny(std::sync::Arc::new(tiny::TinyModel::load(
                        &settings.model,
                        model_cache_dir,
                        &Default::default(),
                    )?))
                };
                self.loaded = Some(model.clone());
                (model, true)
            }
        };
        let engine: Box<dyn Engine> = match model {
            Loaded::Tiny(model) => Box::new(tiny::TinyEngine::bind(model, settings, cond)?),
            Loaded::Live(model) => Box::new(live::LiveEngine::bind(model, settings, cond)?),
        };
        Ok((engine, loaded_now))
    }

    /// The model kept loaded, if any.
    pub fn model(&self) -> Option<&ModelRef> {
        self.loaded.as_ref().map(Loaded::model)
    }
}

fn divides(divisor: u32, n: u32) -> bool {
    n / divisor * divisor == n
}

/// Checks what the tiny architecture can represent; the messages name the setting to change.
fn validate_settings(settings: &EngineSettings) -> Result<(), RenderError> {
    let cell = carry::SPATIAL_DOWNSCALE;
    let unsupported = |detail: String| Err(RenderError::UnsupportedSettings { detail });
    if settings.width == 0
        || settings.height == 0
        || !divides(cell, settings.width)
        || !divides(cell, settings.height)
    {
        return unsupported(format!(
            "size {}*{} must be positive multiples of {cell} (try {}*{})",
            settings.width,
            settings.height,
            (settings.width / cell).max(1) * cell,
            (settings.height / cell).max(1) * cell
        ));
    }
    let step = carry::TEMPORAL_DOWNSCALE;
    if settings.infer_frames == 0 || !divides(step, settings.infer_frames) {
        return unsupported(format!(
            "infer_frames {} must be a positive multiple of {step}",
            settings.infer_frames
        ));
    }
    if settings.sample_steps == 0 {
        return unsupported("sample_steps must be at least 1".to_string());
    }
    if settings.fps == 0 {
        return unsupported("fps must be at least 1".to_string());
    }
    if !settings.guide_scale.is_finite() || settings.guide_scale < 0.0 {
        return unsupported(format!(
            "guide_scale {} must be a finite number >= 0",
            settings.guide_scale
        ));
    }
    Ok(())
}

#[cfg(test)]
pub(crate) mod test_support {
    //! Small inputs shared by the engine tests: fast enough to render many clips.

    use super::*;

    pub(crate) fn small_settings(seed: u64) -> EngineSettings {
        EngineSettings {
            width: 64,
            height: 48,
            infer_frames: 8,
            sample_steps: 2,
            guide_scale: 0.0,
            seed,
            fps: 25,
            model: ModelRef::resolve(jobs::spec::EngineKind::Native, None, BUILTIN_TINY),
        }
    }

    /// A portrait-like test card: a light oval "face" on a dark background, with a darker
    /// band where a mouth would be.
    pub(crate) fn portrait(width: u32, height: u32) -> Vec<u8> {
        let (w, h) = (width as f32, height as f32);
        let mut rgb = Vec::with_capacity((width * height * 3) as usize);
        for y in 0..height {
            for x in 0..width {
                let u = (x as f32 + 0.5) / w - 0.5;
                let v = (y as f32 + 0.5) / h - 0.45;
                let inside = (u / 0.28).powi(2) + (v / 0.38).powi(2) < 1.0;
                let mouth = (u / 0.08).powi(2) + ((v - 0.17) / 0.02).powi(2) < 1.0;
                let px = match (inside, mouth) {
                    (_, true) => [120, 40, 50],
                    (true, false) => [225, 180, 150],
                    (false, false) => [30 + (x % 7) as u8, 40, 70 + (y % 5) as u8],
                };
                rgb.extend_from_slice(&px);
            }
        }
        rgb
    }

    /// Speech-like audio: a voiced tone whose loudness pulses at ~4 syllables per second.
    pub(crate) fn speech(seconds: f32) -> Vec<f32> {
        let n = (seconds * AUDIO_SAMPLE_RATE_HZ as f32) as usize;
        (0..n)
            .map(|i| {
                let t = i as f32 / AUDIO_SAMPLE_RATE_HZ as f32;
                let envelope = (t * std::f32::consts::TAU * 4.0).sin().max(0.0);
                0.6 * envelope * (t * std::f32::consts::TAU * 180.0).sin()
            })
            .collect()
    }

    pub(crate) fn conditioning(settings: &EngineSettings) -> Conditioning {
        Conditioning {
            reference_rgb: portrait(settings.width, settings.height),
            audio_16k_mono: speech(3.0),
            prompt: "A presenter in a modern studio".to_string(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::test_support::small_settings;
    use super::*;

    #[test]
    fn size_that_is_not_a_multiple_of_sixteen_is_rejected_with_a_suggestion() {
        let mut settings = small_settings(1);
        settings.width = 100;
        let err = validate_settings(&settings).unwrap_err();
        assert!(err.to_string().contains("try 96*48"), "{err}");
    }

    #[test]
    fn frames_that_are_not_a_multiple_of_four_are_rejected() {
        let mut settings = small_settings(1);
        settings.infer_frames = 30;
        assert!(matches!(
            validate_settings(&settings),
            Err(RenderError::UnsupportedSettings { .. })
        ));
    }

    #[test]
    fn negative_guide_scale_is_rejected() {
        let mut settings = small_settings(1);
        settings.guide_scale = -1.0;
        assert!(validate_settings(&settings).is_err());
    }

    #[test]
    fn carry_bytes_bounds_every_carry_of_the_job() {
        let settings = small_settings(u64::MAX);
        let bound = carry_bytes(&settings).expect("tiny carries have a size");
        let mut carry = EngineCarry::initial(&settings);
        for next_clip in [0, 7, 123_456, u32::MAX] {
            carry.next_clip = next_clip;
            let written = carry.to_safetensors_bytes().expect("serialises").len() as u64;
            assert!(written <= bound, "{written} > {bound}");
        }
        // 2 motion frames of 4*3 cells with 16 channels in f32, and a small header.
        let tensor = 2 * 4 * 3 * 16 * 4;
        assert!((tensor..tensor + 1024).contains(&bound), "{bound}");
    }

    #[test]
    fn small_test_settings_are_valid() {
        assert!(validate_settings(&small_settings(1)).is_ok());
    }
}
