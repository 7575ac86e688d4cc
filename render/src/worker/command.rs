//! The clip loop for a command engine (`engine.kind: command`).
//!
//! Same order of work as the native loop, with the model in another process: `render_clip` →
//! the engine writes clip *k*'s frames and its carry directory → the worker encodes
//! `work/clips/k.mkv` (atomic) → packs the carry into `work/carry-k.safetensors` →
//! `work/checkpoint.json`. The engine's carry is opaque: the worker hashes and stores its bytes
//! and hands them back unchanged, so a resumed job gives the engine exactly the carry an
//! uninterrupted one would have, and a deterministic engine renders the same frames.
//!
//! Layout under `work/engine/`: `reference.rgb` and `audio-16k.f32le` (the inputs, prepared),
//! `scratch/` (the engine's own, kept across restarts), `carry-in/` (the carry clip *k* reads),
//! `carry-out/` (emptied before each clip), `frames.rgb` (the clip's frames).

use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Instant;

use jobs::spec::JobSpec;
use jobs::state::JobDir;
use tracing::info;

use super::{
    crash_point, encode_settings, segment_path, write_segment, ClipPlan, Failure, Reporter,
};
use crate::checkpoint::{CheckpointStore, ResumePoint};
use crate::engine::external::carry_dir::reset_dir;
use crate::engine::external::protocol::{
    ErrorKind, LoadDevice, LoadInputs, LoadSettings, Request, PROTOCOL_VERSION,
};
use crate::engine::external::{CommandEngine, PackedCarry, ResolvedEngine};
use crate::engine::ClipIndex;
use crate::protocol::{FailureKind, WorkerMessage};
use crate::RenderError;

/// The inputs as the worker decoded them.
pub(super) struct PreparedInputs {
    pub(super) reference_rgb: Vec<u8>,
    pub(super) audio_16k_mono: Vec<f32>,
}

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

/// Renders every clip not yet checkpointed. `Ok(None)`: all clips are done and the video can
/// be assembled; `Ok(Some(interrupted))`: stopped on request after a checkpoint.
pub(super) fn render_clips(
    dir: &JobDir,
    spec: &JobSpec,
    plan: &ClipPlan,
    fingerprint: &str,
    inputs: PreparedInputs,
    reporter: &Reporter,
    stop: &AtomicBool,
) -> Result<Option<WorkerMessage>, Failure> {
    let resolved = ResolvedEngine::load(dir.root()).map_err(|err| {
        Failure::new(
            FailureKind::Engine,
            format!(
                "the job uses command engine `{}` but {err}; submit the job again so intake resolves its engine",
                spec.engine.name.as_deref().unwrap_or("?")
            ),
        )
    })?;
    let work = dir.work_dir();
    let paths = EnginePaths {
        root: work.join("engine"),
    };
    std::fs::create_dir_all(paths.scratch())
        .map_err(|err| io_failure("create", &paths.scratch(), err))?;
    let audio_bytes: Vec<u8> = inputs
        .audio_16k_mono
        .iter()
        .flat_map(|s| s.to_le_bytes())
        .collect();
    std::fs::write(paths.reference(), &inputs.reference_rgb)
        .map_err(|err| io_failure("write", &paths.reference(), err))?;
    std::fs::write(paths.audio(), &audio_bytes)
        .map_err(|err| io_failure("write", &paths.audio(), err))?;

    crash_point::arm(&work);
    let store = CheckpointStore::new(work.clone());
    let resume = store
        .resume_carry::<PackedCarry>(fingerprint, None)
        .map_err(|err| Failure::new(FailureKind::Io, err.to_string()))?;
    let (mut next_clip, fresh_reason) = match resume {
        ResumePoint::Fresh { reason } => (0, reason),
        ResumePoint::After {
            last_clip, carry, ..
        } => {
            carry
                .write_dir(&paths.carry_in())
                .map_err(|err| Failure::new(FailureKind::Io, err.to_string()))?;
            (last_clip.0 + 1, None)
        }
    };
    let offload = std::env::var("REELSPOOL_OFFLOAD").is_ok_and(|value| value == "1");
    let device = std::env::var("CUDA_VISIBLE_DEVICES").ok();
    info!(engine = %resolved.name, clips = plan.clips, next_clip, "rendering with a command engine");
    reporter.send(&WorkerMessage::Started {
        clips_total: plan.clips,
        next_clip,
        fresh_reason,
        device: device.clone(),
        offload,
        pid: Some(std::process::id()),
        model_loaded: None,
    });
    if next_clip >= plan.clips {
        return Ok(None);
    }

    let mut engine =
        CommandEngine::start(&resolved, &paths.scratch(), &[]).map_err(engine_failure)?;
    let settings = &spec.render;
    engine
        .load(&Request::Load {
            protocol: PROTOCOL_VERSION,
            model: spec.engine.model.clone(),
            settings: LoadSettings {
                width: settings.size.width,
                height: settings.size.height,
                infer_frames: settings.infer_frames,
                sample_steps: settings.sample_steps,
                guide_scale: settings.guide_scale,
                seed: settings.seed,
                fps: settings.fps,
                clips: plan.clips,
            },
            inputs: LoadInputs {
                image: spec.inputs.image.clone(),
                audio: spec.inputs.audio.clone(),
                prompt: spec.inputs.prompt.clone(),
                reference_rgb: paths.reference(),
                audio_f32le_16k: paths.audio(),
                audio_samples: inputs.audio_16k_mono.len() as u64,
            },
            device: LoadDevice {
                cuda_visible_devices: device,
                offload,
            },
            scratch_dir: paths.scratch(),
            heartbeat_timeout_secs: engine.heartbeat_timeout().as_secs(),
        })
        .map_err(engine_failure)?;

    let encode = encode_settings(spec);
    let frame_bytes = settings.size.width as usize * settings.size.height as usize * 3;
    while next_clip < plan.clips {
        let index = next_clip;
        if stop.load(Ordering::Relaxed) {
            engine.shutdown();
            return Ok(Some(WorkerMessage::Interrupted { next_clip: index }));
        }
        let started = Instant::now();
        reset_dir(&paths.carry_out())
            .map_err(|err| Failure::new(FailureKind::Io, err.to_string()))?;
        let frames_path = paths.frames();
        std::fs::write(&frames_path, b"").map_err(|err| io_failure("create", &frames_path, err))?;
        let claimed = engine
            .render_clip(&Request::RenderClip {
                index,
                frames: settings.infer_frames,
                carry_in: (index > 0).then(|| paths.carry_in()),
                carry_out: paths.carry_out(),
                frames_path: frames_path.clone(),
            })
            .map_err(engine_failure)?;
        let frames_failure = |detail: String| {
            Failure::new(
                FailureKind::Engine,
                RenderError::Frames {
                    engine: engine.name().to_string(),
                    clip: index,
                    detail,
                }
                .to_string(),
            )
        };
        if claimed != settings.infer_frames {
            return Err(frames_failure(format!(
                "the engine says it wrote {claimed} frames; render_clip asked for {}",
                settings.infer_frames
            )));
        }
        let rgb = std::fs::read(&frames_path)
            .map_err(|err| io_failure("read the frames in", &frames_path, err))?;
        let expected = frame_bytes * claimed as usize;
        if rgb.len() != expected {
            return Err(frames_failure(format!(
                "{} holds {} bytes; {claimed} frames of {}x{} RGB24 are {expected} bytes",
                frames_path.display(),
                rgb.len(),
                settings.size.width,
                settings.size.height
            )));
        }
        crash_point::reached("after_denoise", index);
        let frames: Vec<Vec<u8>> = rgb.chunks_exact(frame_bytes).map(<[u8]>::to_vec).collect();
        drop(rgb);
        let segment = segment_path(&work, index);
        write_segment(
            index,
            &segment,
            &encode,
            &frames,
            plan.frames_in_clip(index),
        )?;
        crash_point::reached("after_segment", index);
        let carry =
            PackedCarry::read_dir(&paths.carry_out(), ClipIndex(index + 1)).map_err(|err| {
                Failure::new(
                    FailureKind::Engine,
                    format!("engine `{}`: clip {index}: {err}", engine.name()),
                )
            })?;
        store
            .save_carry(ClipIndex(index), &carry, fingerprint, &segment)
            .map_err(|err| Failure::new(FailureKind::Io, err.to_string()))?;
        crash_point::reached("after_checkpoint", index);
        // The checkpointed carry becomes the next clip's input.
        match std::fs::remove_dir_all(paths.carry_in()) {
            Err(err) if err.kind() != std::io::ErrorKind::NotFound => {
                return Err(io_failure("remove", &paths.carry_in(), err))
            }
            _ => {}
        }
        std::fs::rename(paths.carry_out(), paths.carry_in())
            .map_err(|err| io_failure("move the carry to", &paths.carry_in(), err))?;
        reporter.send(&WorkerMessage::ClipDone {
            index,
            frames: plan.frames_in_clip(index),
            secs: started.elapsed().as_secs_f64(),
        });
        next_clip += 1;
    }
    engine.shutdown();
    Ok(None)
}
