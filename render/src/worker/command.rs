//! Command engines behind the clip loop's seam (`engine.kind: command`): the model runs in
//! another process, driven over docs/engine-protocol.md.
//!
//! For clip *k* the engine reads its carry directory `carry-in/` (the carry into *k*) and
//! writes clip *k*'s frames and the carry into *k + 1* to `carry-out/`; `carry-out/` then
//! becomes `carry-in/`. The engine's carry is opaque: on checkpoint clips the worker packs the
//! directory into one file ([`CommandCarry`]) and stores its bytes, and a resumed job unpacks
//! them into `carry-in/`, so the engine gets exactly the carry an uninterrupted job would have
//! given it, and a deterministic engine renders the same frames.
//!
//! Layout under `work/engine/`: `reference.rgb` and `audio-16k.f32le` (the inputs, prepared),
//! `scratch/` (the engine's own, kept across restarts), `carry-in/`, `carry-out/` (emptied
//! before each clip), `frames.rgb` (the clip's frames).

use std::path::{Path, PathBuf};
use std::sync::atomic::AtomicBool;
use std::time::Instant;

use jobs::spec::JobSpec;
use jobs::state::JobDir;
use tracing::info;

use super::renderer::{ClipOutput, Renderer};
use super::report::{Failure, Reporter};
use crate::engine::external::carry_dir::reset_dir;
use crate::engine::external::protocol::{
    ErrorKind, LoadDevice, LoadInputs, LoadSettings, Request, PROTOCOL_VERSION,
};
use crate::engine::external::{CommandCarry, CommandEngine, ResolvedEngine};
use crate::engine::{ClipIndex, ClipLatents};
use crate::protocol::{FailureKind, WorkerMessage, ENGINE_PROGRESS_EVERY};
use crate::RenderError;

/// Where a job's engine files live.
struct EnginePaths {
    root: PathBuf,
}

impl EnginePaths {
    fn reference(&self) -> PathBuf {
        self.root.join("reference.rgb")
    }
    fn audio(&self) -> PathBuf {
        self.root.join("audio-16k.f32le")
    }
    fn scratch(&self) -> PathBuf {
        self.root.join("scratch")
    }
    fn carry_in(&self) -> PathBuf {
        self.root.join("carry-in")
    }
    fn carry_out(&self) -> PathBuf {
        self.root.join("carry-out")
    }
    fn frames(&self) -> PathBuf {
        self.root.join("frames.rgb")
    }
}

/// The failure a worker reports for an engine error: `oom` takes the out-of-memory path, a
/// process that died or hung may be retried, an engine that answered wrongly fails the job.
fn engine_failure(err: RenderError) -> Failure {
    let kind = match err.reported_kind() {
        Some(ErrorKind::Oom) => FailureKind::OutOfMemory,
        Some(ErrorKind::BadInput) => FailureKind::Input,
        Some(ErrorKind::Internal) => FailureKind::Engine,
        None if err.may_be_transient() => FailureKind::Io,
        None => FailureKind::Engine,
    };
    Failure::new(kind, err.to_string())
}

fn io_failure(what: &str, path: &Path, err: impl std::fmt::Display) -> Failure {
    Failure::new(
        FailureKind::Io,
        format!("cannot {what} {}: {err}", path.display()),
    )
}

/// One job's command engine: its declaration, its files, and its process once started.
pub(super) struct CommandRenderer<'a> {
    resolved: ResolvedEngine,
    paths: EnginePaths,
    spec: JobSpec,
    /// Clips in the job, for the engine's `load`.
    clips: u32,
    audio_samples: u64,
    /// The clip the carry in `carry-in/` continues into.
    next_clip: u32,
    engine: Option<CommandEngine>,
    /// The job's stop flag: a stop inside a clip interrupts the engine after its grace.
    stop: &'a AtomicBool,
    /// Where the engine's `progress` lines go on to the daemon.
    reporter: Reporter,
}

impl<'a> CommandRenderer<'a> {
    /// Reads the engine declaration intake stored with the job and writes the prepared
    /// inputs where the engine reads them; starts no process yet ([`Renderer::begin`]).
    pub(super) fn prepare(
        dir: &JobDir,
        spec: &JobSpec,
        clips: u32,
        reference_rgb: &[u8],
        audio_16k_mono: &[f32],
        stop: &'a AtomicBool,
        reporter: Reporter,
    ) -> Result<CommandRenderer<'a>, Failure> {
        let resolved = ResolvedEngine::load(dir.root()).map_err(|err| {
            Failure::new(
                FailureKind::Engine,
                format!(
                    "the job uses command engine `{}` but {err}; submit the job again so intake resolves its engine",
                    spec.engine.name.as_deref().unwrap_or("?")
                ),
            )
        })?;
        let paths = EnginePaths {
            root: dir.work_dir().join("engine"),
        };
        std::fs::create_dir_all(paths.scratch())
            .map_err(|err| io_failure("create", &paths.scratch(), err))?;
        let audio_bytes: Vec<u8> = audio_16k_mono
            .iter()
            .flat_map(|s| s.to_le_bytes())
            .collect();
        std::fs::write(paths.reference(), reference_rgb)
            .map_err(|err| io_failure("write", &paths.reference(), err))?;
        std::fs::write(paths.audio(), &audio_bytes)
            .map_err(|err| io_failure("write", &paths.audio(), err))?;
        info!(engine = %resolved.name, clips, "rendering with a command engine");
        Ok(CommandRenderer {
            resolved,
            paths,
            spec: spec.clone(),
            clips,
            audio_samples: audio_16k_mono.len() as u64,
            next_clip: 0,
            engine: None,
            stop,
            reporter,
        })
    }

    fn engine(&mut self) -> Result<&mut CommandEngine, Failure> {
        self.engine.as_mut().ok_or_else(|| {
            Failure::new(
                FailureKind::Engine,
                "the command engine was asked to render before it was started",
            )
        })
    }

    /// The carry written for clip `index` becomes the next clip's input.
    fn advance_carry(&mut self, index: u32) -> Result<(), Failure> {
        match std::fs::remove_dir_all(self.paths.carry_in()) {
            Err(err) if err.kind() != std::io::ErrorKind::NotFound => {
                return Err(io_failure("remove", &self.paths.carry_in(), err))
            }
            _ => {}
        }
        std::fs::rename(self.paths.carry_out(), self.paths.carry_in())
            .map_err(|err| io_failure("move the carry to", &self.paths.carry_in(), err))?;
        self.next_clip = index + 1;
        Ok(())
    }

    /// The carry in `carry-in/`, packed.
    fn packed_carry(&self) -> Result<CommandCarry, Failure> {
        CommandCarry::read_dir(&self.paths.carry_in(), ClipIndex(self.next_clip)).map_err(|err| {
            Failure::new(
                FailureKind::Engine,
                format!(
                    "engine `{}`: clip {}: {err}",
                    self.resolved.name,
                    self.next_clip.saturating_sub(1)
                ),
            )
        })
    }
}

impl Renderer for CommandRenderer<'_> {
    fn model_loaded(&self) -> Option<bool> {
        None
    }

    fn frames_per_clip(&self) -> u32 {
        self.spec.render.infer_frames
    }

    fn decodes_online(&self) -> bool {
        true
    }

    fn carry_bytes(&self) -> Option<u64> {
        None
    }

    fn start_fresh(&mut self) -> Result<(), Failure> {
        self.next_clip = 0;
        Ok(())
    }

    fn resume(&mut self, carry: &[u8], next_clip: u32) -> Result<Option<String>, Failure> {
        let carry = match CommandCarry::from_bytes(carry) {
            Ok(carry) => carry,
            Err(err) => return Ok(Some(err.to_string())),
        };
        carry
            .write_dir(&self.paths.carry_in())
            .map_err(Failure::of(FailureKind::Io))?;
        self.next_clip = next_clip;
        Ok(None)
    }

    fn begin(&mut self) -> Result<(), Failure> {
        let offload = std::env::var("REELSPOOL_OFFLOAD").is_ok_and(|value| value == "1");
        let device = std::env::var("CUDA_VISIBLE_DEVICES").ok();
        let mut engine = CommandEngine::start(&self.resolved, &self.paths.scratch(), &[])
            .map_err(engine_failure)?;
        let settings = &self.spec.render;
        engine
            .load(&Request::Load {
                protocol: PROTOCOL_VERSION,
                model: self.spec.engine.model.clone(),
                settings: LoadSettings {
                    width: settings.size.width,
                    height: settings.size.height,
                    infer_frames: settings.infer_frames,
                    sample_steps: settings.sample_steps,
                    guide_scale: settings.guide_scale,
                    seed: settings.seed,
                    fps: settings.fps,
                    clips: self.clips,
                },
                inputs: LoadInputs {
                    image: self.spec.inputs.image.clone(),
                    audio: self.spec.inputs.audio.clone(),
                    prompt: self.spec.inputs.prompt.clone(),
                    reference_rgb: self.paths.reference(),
                    audio_f32le_16k: self.paths.audio(),
                    audio_samples: self.audio_samples,
                },
                device: LoadDevice {
                    cuda_visible_devices: device,
                    offload,
                },
                scratch_dir: self.paths.scratch(),
                heartbeat_timeout_secs: engine.heartbeat_timeout().as_secs(),
            })
            .map_err(engine_failure)?;
        self.engine = Some(engine);
        Ok(())
    }

    fn render_clip(&mut self, index: u32) -> Result<ClipOutput, Failure> {
        reset_dir(&self.paths.carry_out()).map_err(Failure::of(FailureKind::Io))?;
        let frames_path = self.paths.frames();
        std::fs::write(&frames_path, b"").map_err(|err| io_failure("create", &frames_path, err))?;
        let request = Request::RenderClip {
            index,
            frames: self.spec.render.infer_frames,
            carry_in: (index > 0).then(|| self.paths.carry_in()),
            carry_out: self.paths.carry_out(),
            frames_path: frames_path.clone(),
        };
        let (stop, reporter) = (self.stop, self.reporter.clone());
        let engine = self.engine()?;
        let mut last_sent: Option<Instant> = None;
        let mut pass_on = |step: Option<u64>, total: Option<u64>, message: Option<String>| {
            // Engines may send progress per step: the daemon hears at most one every so often.
            if last_sent.is_some_and(|at| at.elapsed() < ENGINE_PROGRESS_EVERY) {
                return;
            }
            last_sent = Some(Instant::now());
            reporter.send(&WorkerMessage::EngineProgress {
                clip: index,
                step,
                total,
                message,
            });
        };
        let Some(claimed) = engine
            .render_clip_watched(&request, stop, &mut pass_on)
            .map_err(engine_failure)?
        else {
            // Stopped inside the clip: the engine is gone, the clip is rendered again later.
            self.engine = None;
            return Ok(ClipOutput::Abandoned);
        };
        let engine = self.engine()?;
        let name = engine.name().to_string();
        let (width, height, asked) = (
            self.spec.render.size.width,
            self.spec.render.size.height,
            self.spec.render.infer_frames,
        );
        let frames_failure = |detail: String| {
            Failure::new(
                FailureKind::Engine,
                RenderError::Frames {
                    engine: name.clone(),
                    clip: index,
                    detail,
                }
                .to_string(),
            )
        };
        if claimed != asked {
            return Err(frames_failure(format!(
                "the engine says it wrote {claimed} frames; render_clip asked for {asked}"
            )));
        }
        let rgb = std::fs::read(&frames_path)
            .map_err(|err| io_failure("read the frames in", &frames_path, err))?;
        let frame_bytes = width as usize * height as usize * 3;
        let expected = frame_bytes * claimed as usize;
        if rgb.len() != expected {
            return Err(frames_failure(format!(
                "{} holds {} bytes; {claimed} frames of {width}x{height} RGB24 are {expected} bytes",
                frames_path.display(),
                rgb.len(),
            )));
        }
        self.advance_carry(index)?;
        Ok(ClipOutput::Frames(
            rgb.chunks_exact(frame_bytes).map(<[u8]>::to_vec).collect(),
        ))
    }

    fn decode(&mut self, _latents: &ClipLatents) -> Result<Vec<Vec<u8>>, Failure> {
        Err(Failure::new(
            FailureKind::Engine,
            "a command engine hands over frames, never latents to decode",
        ))
    }

    fn carry_to_bytes(&mut self) -> Result<Vec<u8>, Failure> {
        self.packed_carry()?
            .to_bytes()
            .map_err(Failure::of(FailureKind::Io))
    }

    fn finish(&mut self) {
        if let Some(engine) = self.engine.take() {
            engine.shutdown();
        }
    }
}
