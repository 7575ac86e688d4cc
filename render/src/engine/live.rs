//! The Live Avatar engine: `wan::pipeline::LiveAvatar` behind the [`Engine`] trait.
//!
//! Its state between clips ([`wan::pipeline::PipelineCarry`]: KV rings, sink, motion latents and
//! the VAE decoder's cache) is large and stays on the device inside the engine. The [`EngineCarry`]
//! the worker holds is only a token naming the next clip; the engine turns its own state into
//! bytes when the worker checkpoints ([`Engine::carry_to_bytes`]) and back on resume
//! ([`Engine::carry_from_bytes`]). Decoding is online: [`Engine::render_clip`] denoises and
//! decodes, and [`Engine::decode`] hands out the frames it kept.

use std::path::Path;
use std::sync::Arc;

use burn::tensor::backend::Backend;
use jobs::spec::ModelRef;
use wan::pipeline::{
    JobContext, JobParams, LiveAvatar, LiveAvatarConfig, LoadOptions, MemoryMode, PipelineCarry,
    Precision,
};
use wan::tokenizer::UmT5Tokenizer;
use wan::WanError;

use super::carry::{LatentBlock, LatentShape};
use super::{ClipIndex, ClipLatents, Conditioning, Engine, EngineCarry, EngineSettings, Frames};
use crate::RenderError;

/// The pipeline's settings of a job.
pub(crate) fn job_params(settings: &EngineSettings) -> JobParams {
    JobParams {
        width: settings.width as usize,
        height: settings.height as usize,
        infer_frames: settings.infer_frames as usize,
        sample_steps: settings.sample_steps as usize,
        seed: settings.seed,
        fps: settings.fps,
    }
}

fn model_error(dir: &Path, err: WanError) -> RenderError {
    RenderError::ModelFormat {
        path: dir.to_path_buf(),
        detail: err.to_string(),
    }
}

/// Reads the config of the release at `dir` alone (no weights) and checks the job's settings
/// against it: what intake can afford to check.
pub fn check_release(
    dir: &Path,
    settings: &EngineSettings,
) -> Result<LiveAvatarConfig, RenderError> {
    let config = LiveAvatarConfig::from_dir(dir).map_err(|err| model_error(dir, err))?;
    check_job_settings(&config, settings)?;
    Ok(config)
}

fn check_job_settings(
    config: &LiveAvatarConfig,
    settings: &EngineSettings,
) -> Result<(), RenderError> {
    if settings.guide_scale != 0.0 {
        return Err(RenderError::UnsupportedSettings {
            detail: format!(
                "guide_scale {} is not supported by Live Avatar, which is distilled to run without guidance; set render.guide_scale to 0",
                settings.guide_scale
            ),
        });
    }
    config
        .check_settings(&job_params(settings))
        .map_err(|err| RenderError::UnsupportedSettings {
            detail: err.to_string(),
        })
}

/// Bytes of one checkpointed carry of a Live Avatar job, from the config of the release at
/// `dir`.
pub(crate) fn carry_bytes(dir: &Path, settings: &EngineSettings) -> Result<u64, RenderError> {
    let config = check_release(dir, settings)?;
    let dtype = wan::carry_io::float_dtype::<super::ReleaseBackend>();
    wan::pipeline::carry_bytes(&config, &job_params(settings), dtype).map_err(|err| {
        RenderError::UnsupportedSettings {
            detail: err.to_string(),
        }
    })
}

/// The environment variable the daemon sets to the mode a release job runs in (`resident`,
/// `hybrid:<blocks>`, `streamed`); absent, the release loads resident.
pub const MEMORY_MODE_ENV: &str = "REELSPOOL_MEMORY_MODE";
/// The environment variable the daemon sets to the DiT's weight precision (`bf16`, `fp8`);
/// absent, bf16.
pub const PRECISION_ENV: &str = "REELSPOOL_PRECISION";

/// Reads a memory mode as the daemon writes it.
pub fn parse_memory_mode(text: &str) -> Option<MemoryMode> {
    match text {
        "resident" => Some(MemoryMode::Resident),
        "streamed" => Some(MemoryMode::Streamed),
        other => {
            let blocks = other.strip_prefix("hybrid:")?.parse().ok()?;
            Some(MemoryMode::Hybrid {
                resident_blocks: blocks,
            })
        }
    }
}

/// The load options the daemon asked for in this worker's environment.
pub(crate) fn load_options_from_env() -> Result<LoadOptions, RenderError> {
    let mut options = LoadOptions::default();
    if let Ok(text) = std::env::var(MEMORY_MODE_ENV) {
        options.mode = parse_memory_mode(&text).ok_or_else(|| RenderError::UnsupportedSettings {
            detail: format!(
                "{MEMORY_MODE_ENV}=`{text}` is not a memory mode (resident, hybrid:<blocks> or streamed)"
            ),
        })?;
    }
    if let Ok(text) = std::env::var(PRECISION_ENV) {
        options.precision = match text.as_str() {
            "bf16" => Precision::Bf16,
            "fp8" => Precision::Fp8,
            _ => {
                return Err(RenderError::UnsupportedSettings {
                    detail: format!("{PRECISION_ENV}=`{text}` is not a precision (bf16 or fp8)"),
                })
            }
        };
    }
    Ok(options)
}

/// A loaded release with its tokenizer: what a warm worker keeps between jobs.
pub(crate) struct LiveModel<B: Backend> {
    model: ModelRef,
    live: LiveAvatar<B>,
    tokenizer: UmT5Tokenizer,
    options: LoadOptions,
}

impl<B: Backend> LiveModel<B> {
    /// Loads `model`, the release at `dir`, in the mode and precision of `options`.
    pub(crate) fn load(
        model: &ModelRef,
        dir: &Path,
        device: &B::Device,
        options: LoadOptions,
    ) -> Result<Self, RenderError> {
        let format = |err: WanError| RenderError::ModelFormat {
            path: dir.to_path_buf(),
            detail: err.to_string(),
        };
        let live = LiveAvatar::load_with(dir, device, options).map_err(format)?;
        tracing::info!(mode = %options.mode, precision = %options.precision, "Live Avatar release loading");
        let tokenizer =
            UmT5Tokenizer::from_dir(release_layout::tokenizer_dir(dir)).map_err(format)?;
        tracing::debug!(model = %model, id = live.model_id(), "Live Avatar release loaded");
        Ok(LiveModel {
            model: model.clone(),
            live,
            tokenizer,
            options,
        })
    }

    pub(crate) fn model(&self) -> &ModelRef {
        &self.model
    }

    /// The mode and precision the release was loaded in.
    pub(crate) fn options(&self) -> LoadOptions {
        self.options
    }
}

/// One job bound to a loaded release.
pub(crate) struct LiveEngine<B: Backend> {
    model: Arc<LiveModel<B>>,
    ctx: JobContext<B>,
    seed: u64,
    /// The device state that continues into clip `held.clip()`.
    held: Option<PipelineCarry<B>>,
    /// Frames of the clip rendered last, until [`Engine::decode`] takes them.
    frames: Option<(ClipIndex, Frames)>,
}

impl<B: Backend> LiveEngine<B> {
    /// Prepares the job (reference and motion latents, text, audio features): the expensive
    /// once-per-job part.
    pub(crate) fn bind(
        model: Arc<LiveModel<B>>,
        settings: &EngineSettings,
        cond: Conditioning,
    ) -> Result<Self, RenderError> {
        check_job_settings(&model.live.config, settings)?;
        let params = job_params(settings);
        let ids = model
            .tokenizer
            .encode(&cond.prompt, model.live.config.s2v.text_len);
        let ctx = model
            .live
            .prepare(&params, &cond.reference_rgb, &cond.audio_16k_mono, &ids)
            .map_err(|err| match err {
                WanError::Input { message } => RenderError::BadConditioning { detail: message },
                other => backend(other),
            })?;
        // The sink prefill of clip 0 waits for clip 0: a resumed job replaces it with the
        // stored carry and would throw the work away.
        Ok(LiveEngine {
            model,
            ctx,
            seed: settings.seed,
            held: None,
            frames: None,
        })
    }

    /// Video frames of the audio at the job's rate: where the video is cut.
    pub(crate) fn audio_video_frames(&self) -> u64 {
        self.ctx.audio_video_frames() as u64
    }

    fn token(&self, next_clip: u64) -> Result<EngineCarry, RenderError> {
        let next_clip = u32::try_from(next_clip).map_err(|_| RenderError::CarryFormat {
            detail: format!("clip {next_clip} is past the last clip a job can have"),
        })?;
        Ok(EngineCarry {
            next_clip,
            noise_seed: self.seed,
            motion: empty_block(),
        })
    }

    /// The device carry continuing into `carry.next_clip()`, checked against the token.
    fn held_for(&self, carry: &EngineCarry) -> Result<&PipelineCarry<B>, RenderError> {
        let held = self
            .held
            .as_ref()
            .ok_or_else(|| RenderError::CarryMismatch {
                detail: format!(
                    "the engine holds no carry for clip {} (none is made before clip 0 starts, \
                     and a failed clip drops it)",
                    carry.next_clip
                ),
            })?;
        if held.clip() != u64::from(carry.next_clip) {
            return Err(RenderError::CarryMismatch {
                detail: format!(
                    "the engine's carry continues into clip {}, the worker asked for {}",
                    held.clip(),
                    carry.next_clip
                ),
            });
        }
        Ok(held)
    }
}

fn empty_block() -> LatentBlock {
    LatentBlock {
        shape: LatentShape {
            frames: 0,
            height: 0,
            width: 0,
            channels: 0,
        },
        data: Vec::new(),
    }
}

fn backend(err: WanError) -> RenderError {
    RenderError::Backend {
        detail: err.to_string(),
    }
}

impl<B: Backend> Engine for LiveEngine<B> {
    fn render_clip(
        &mut self,
        index: ClipIndex,
        carry: &EngineCarry,
    ) -> Result<(ClipLatents, EngineCarry), RenderError> {
        if carry.next_clip != index.0 {
            return Err(RenderError::CarryMismatch {
                detail: format!(
                    "asked for {index} with a carry for clip {}",
                    carry.next_clip
                ),
            });
        }
        if index.0 == 0 && self.held.as_ref().is_none_or(|held| held.clip() != 0) {
            self.held = Some(self.model.live.start(&self.ctx).map_err(backend)?);
        }
        self.held_for(carry)?;
        let held = self.held.take().ok_or_else(|| RenderError::CarryMismatch {
            detail: "the engine holds no carry".to_string(),
        })?;
        let (frames, next) = self
            .model
            .live
            .render_clip(&self.ctx, held)
            .map_err(backend)?;
        let next_token = self.token(next.clip())?;
        self.held = Some(next);
        self.frames = Some((
            index,
            Frames {
                width: frames.width as u32,
                height: frames.height as u32,
                rgb: frames.rgb,
            },
        ));
        let latents = ClipLatents {
            clip: index,
            latents: empty_block(),
            motion: empty_block(),
        };
        Ok((latents, next_token))
    }

    fn decode(&mut self, latents: &ClipLatents) -> Result<Frames, RenderError> {
        match self.frames.take() {
            Some((clip, frames)) if clip == latents.clip => Ok(frames),
            Some((clip, frames)) => {
                self.frames = Some((clip, frames));
                Err(RenderError::LatentsMismatch {
                    detail: format!(
                        "Live Avatar decodes online: it holds the frames of {clip}, not of {}",
                        latents.clip
                    ),
                })
            }
            None => Err(RenderError::LatentsMismatch {
                detail: format!(
                    "Live Avatar decodes online: the frames of {} were already taken",
                    latents.clip
                ),
            }),
        }
    }

    fn frames_per_clip(&self) -> u32 {
        self.ctx.params.infer_frames as u32
    }

    fn first_clip_shortfall(&self) -> u32 {
        wan::pipeline::FIRST_CLIP_SHORTFALL as u32
    }

    fn decodes_online(&self) -> bool {
        true
    }

    fn audio_video_frames(&self) -> Option<u64> {
        Some(LiveEngine::audio_video_frames(self))
    }

    fn initial_carry(&self) -> Result<EngineCarry, RenderError> {
        self.token(0)
    }

    fn carry_to_bytes(&mut self, carry: &EngineCarry) -> Result<Vec<u8>, RenderError> {
        let held = self.held_for(carry)?;
        held.to_bytes(self.ctx.carry_stamp())
            .map_err(|err| RenderError::CarryFormat {
                detail: err.to_string(),
            })
    }

    fn write_carry(
        &mut self,
        carry: &EngineCarry,
        out: &mut std::fs::File,
    ) -> Result<u64, RenderError> {
        let id = self.ctx.carry_stamp();
        let held = self.held_for(carry)?;
        held.write_to(out, id).map_err(|err| match err {
            WanError::Io { source, .. } => RenderError::CarryWrite { source },
            other => RenderError::CarryFormat {
                detail: other.to_string(),
            },
        })
    }

    fn carry_from_bytes(&mut self, bytes: &[u8]) -> Result<EngineCarry, RenderError> {
        // Split as this worker's mode keeps the blocks: a job may resume in another mode.
        let live = self
            .model
            .live
            .carry_from_bytes(bytes, self.ctx.carry_stamp())
            .map_err(|err| match err {
                WanError::CarryMismatch { .. } => RenderError::CarryMismatch {
                    detail: err.to_string(),
                },
                other => RenderError::CarryFormat {
                    detail: other.to_string(),
                },
            })?;
        let token = self.token(live.clip())?;
        self.held = Some(live);
        Ok(token)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Whether a native job naming `model` renders a release.
    fn is_live_avatar(model: &str) -> bool {
        ModelRef::resolve(jobs::spec::EngineKind::Native, None, model).is_release()
    }

    #[test]
    fn the_job_parser_detects_releases_by_the_wan_layout() {
        let marker = Path::new(wan::release::S2V_DIR).join(wan::release::CONFIG_FILE);
        assert_eq!(release_layout::marker(), marker);
    }

    #[test]
    fn a_directory_without_the_release_config_is_not_a_release() {
        let dir = tempfile::tempdir().expect("temp dir");
        let model = dir.path().display().to_string();
        assert!(!is_live_avatar(&model));
        let s2v = dir.path().join(wan::release::S2V_DIR);
        std::fs::create_dir_all(&s2v).expect("mkdir");
        std::fs::write(s2v.join(wan::release::CONFIG_FILE), "{}").expect("config");
        assert!(is_live_avatar(&model));
        assert!(
            !is_live_avatar("Wan2.2-S2V-14B"),
            "relative paths never are"
        );
    }

    /// One tiny release, two jobs that differ only in their seed: each carry goes back into
    /// its own job, and the other refuses it naming the seed.
    #[test]
    fn a_carry_goes_back_into_its_job_and_no_other() {
        use super::super::test_support::{portrait, speech};
        use super::super::ReleaseBackend;
        let dir = tempfile::tempdir().expect("temp dir");
        wan::release::write_tiny_release(dir.path(), 3).expect("tiny release");
        let model_path = ModelRef::Release {
            dir: dir.path().to_path_buf(),
        };
        let model = Arc::new(
            LiveModel::<ReleaseBackend>::load(
                &model_path,
                dir.path(),
                &Default::default(),
                LoadOptions::default(),
            )
            .expect("load"),
        );
        let settings = |seed| EngineSettings {
            width: 64,
            height: 64,
            infer_frames: 16,
            sample_steps: 1,
            guide_scale: 0.0,
            seed,
            fps: 25,
            model: model_path.clone(),
        };
        let cond = Conditioning {
            reference_rgb: portrait(64, 64),
            audio_16k_mono: speech(0.5),
            prompt: "a test".to_string(),
        };
        let mut a = LiveEngine::bind(Arc::clone(&model), &settings(1), cond.clone()).expect("a");
        let start = a.initial_carry().expect("initial");
        let (latents, next) = a.render_clip(ClipIndex(0), &start).expect("clip 0");
        assert_eq!(a.decode(&latents).expect("frames").rgb.len(), 13);
        assert!(
            a.decode(&latents).is_err(),
            "the frames are handed out once"
        );
        assert!(
            a.carry_to_bytes(&start).is_err(),
            "the engine holds the carry after clip 0, not before it"
        );
        let bytes = a.carry_to_bytes(&next).expect("bytes");
        assert_eq!(
            bytes.len() as u64,
            carry_bytes(dir.path(), &settings(1)).expect("size"),
            "intake's size is the written size"
        );

        let mut b = LiveEngine::bind(Arc::clone(&model), &settings(2), cond.clone()).expect("b");
        assert!(b.held.is_none(), "binding a job runs no prefill");
        let err = b.carry_from_bytes(&bytes).expect_err("another seed");
        assert!(matches!(err, RenderError::CarryMismatch { .. }), "{err}");
        let text = err.to_string();
        assert!(text.starts_with("carry does not fit this job"), "{text}");
        assert!(text.contains("seed"), "{text}");

        let token = a.carry_from_bytes(&bytes).expect("its own carry");
        assert_eq!(token.next_clip(), ClipIndex(1));

        // A resumed engine that never made clip 0 renders clip 1 exactly as the first one did.
        let (one, _) = a.render_clip(ClipIndex(1), &token).expect("clip 1 in a");
        let expected = a.decode(&one).expect("frames of a");
        let mut c = LiveEngine::bind(model, &settings(1), cond).expect("c");
        let resumed = c.carry_from_bytes(&bytes).expect("carry into c");
        let (one, _) = c.render_clip(ClipIndex(1), &resumed).expect("clip 1 in c");
        assert_eq!(c.decode(&one).expect("frames of c").rgb, expected.rgb);
    }
}
