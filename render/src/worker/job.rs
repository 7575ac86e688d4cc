//! One job, start to end: the resolved job and its inputs, the renderer for its engine, the
//! clip loop, then the finished video. Also what intake asks of the worker side before a job
//! is accepted ([`carry_bytes`], [`check_native_model`]).

use std::path::Path;
use std::sync::atomic::{AtomicBool, Ordering};

use jobs::spec::{Codec, EngineKind, JobSpec, ModelRef};
use jobs::state::JobDir;

use super::assemble::assemble;
use super::clip_loop::{self, ClipJob, Ended};
use super::command::CommandRenderer;
use super::inputs::Reach;
use super::native::NativeRenderer;
use super::plan::ClipPlan;
use super::report::{Failure, Reporter};
use crate::checkpoint::CarrySettings;
use crate::engine::{self, Conditioning, EngineSettings, ModelCache};
use crate::media;
use crate::protocol::{FailureKind, WorkerMessage};
use crate::RenderError;

/// Renders the job in `dir`: its clips not yet checkpointed, then the video.
pub(super) fn render_job(
    dir: &JobDir,
    model_cache_dir: &Path,
    reporter: &Reporter,
    stop: &AtomicBool,
    models: &mut ModelCache,
) -> Result<WorkerMessage, Failure> {
    let spec = dir
        .load_spec()
        .map_err(|err| Failure::new(FailureKind::Input, format!("cannot read job.yaml: {err}")))?;
    let work = dir.work_dir();
    for sub in ["clips", "latents"] {
        std::fs::create_dir_all(work.join(sub)).map_err(|err| {
            Failure::new(
                FailureKind::Io,
                format!("cannot create {}: {err}", work.display()),
            )
        })?;
    }

    // The job acts with its owner's rights: its files are opened again from their allowed
    // roots, without following links, and their rights checked on what was opened; the
    // files may have changed since intake.
    let state = dir.load_state().ok();
    let reach = Reach {
        owner: state.as_ref().and_then(|state| state.owner.clone()),
        roots: state.and_then(|state| state.roots).unwrap_or_default(),
    };
    let inputs = reach.open_inputs(&spec)?;
    // The output folder too, before any work: one that now leads elsewhere fails at once.
    drop(reach.open_output_dir(&spec)?);

    // Inputs first: a bad file must fail before the model is loaded.
    let image_bytes = inputs.image.bytes()?;
    let audio_bytes = inputs.audio.bytes()?;
    let (width, height) = (spec.render.size.width, spec.render.size.height);
    let reference_rgb = media::load_reference_image(&inputs.image.fd_path(), width, height)
        .map_err(|err| Failure::new(FailureKind::Input, inputs.image.name_in(err.to_string())))?;
    let audio = media::load_audio(&inputs.audio.fd_path())
        .map_err(|err| Failure::new(FailureKind::Input, inputs.audio.name_in(err.to_string())))?;
    let plan = ClipPlan::new(
        spec.render.num_clip,
        spec.render.infer_frames,
        spec.render.fps,
        audio.duration,
    );
    let fingerprint = job_fingerprint(&spec, &image_bytes, &audio_bytes);
    drop((image_bytes, audio_bytes));

    let native = !matches!(spec.engine.model_ref, ModelRef::Command { .. });
    let job = ClipJob {
        work: work.clone(),
        plan,
        num_clip: spec.render.num_clip,
        fingerprint,
        // A command engine's carry is opaque: the fingerprint alone ties it to the job.
        carry_settings: native.then(|| carry_settings(&spec)),
        checkpoint_every: spec.render.checkpoint_every,
        online_decode: spec.render.online_decode,
        encode: encode_settings(&spec),
    };
    let ended = if native {
        let conditioning = Conditioning {
            reference_rgb,
            audio_16k_mono: audio.samples_16k_mono,
            prompt: spec.inputs.prompt.clone(),
        };
        let mut renderer = NativeRenderer::load(
            models,
            &engine_settings(&spec),
            conditioning,
            model_cache_dir,
        )?;
        clip_loop::render_clips(&job, &mut renderer, reporter, stop)?
    } else {
        let mut renderer = CommandRenderer::prepare(
            dir,
            &spec,
            plan.clips,
            &reference_rgb,
            &audio.samples_16k_mono,
            stop,
            reporter.clone(),
        )?;
        clip_loop::render_clips(&job, &mut renderer, reporter, stop)?
    };
    let plan = match ended {
        Ended::Stopped { next_clip } => return Ok(WorkerMessage::Interrupted { next_clip }),
        Ended::Rendered(plan) => plan,
    };
    if stop.load(Ordering::Relaxed) {
        return Ok(WorkerMessage::Interrupted {
            next_clip: plan.clips,
        });
    }
    reach.recheck_inputs(&spec)?;
    assemble(dir, &spec, &work, &plan, &reach, &inputs.audio)
}

fn engine_settings(spec: &JobSpec) -> EngineSettings {
    EngineSettings {
        width: spec.render.size.width,
        height: spec.render.size.height,
        infer_frames: spec.render.infer_frames,
        sample_steps: spec.render.sample_steps,
        guide_scale: spec.render.guide_scale,
        seed: spec.render.seed,
        fps: spec.render.fps,
        model: spec.engine.model_ref.clone(),
    }
}

fn encode_settings(spec: &JobSpec) -> media::EncodeSettings {
    let codec = match spec.output.codec {
        Codec::H264 => media::VideoCodec::H264,
        Codec::Hevc => media::VideoCodec::Hevc,
    };
    media::EncodeSettings::new(
        spec.render.size.width,
        spec.render.size.height,
        spec.render.fps,
        codec,
        spec.output.crf,
    )
}

/// The fingerprint that ties a checkpoint to its job: the render-relevant settings plus the
/// bytes of the inputs, so replacing the audio file restarts the render instead of splicing
/// two different speeches together.
fn job_fingerprint(spec: &JobSpec, image: &[u8], audio: &[u8]) -> String {
    use sha2::{Digest, Sha256};
    let mut hasher = Sha256::new();
    hasher.update(spec.render_fingerprint().as_bytes());
    hasher.update(Sha256::digest(image));
    hasher.update(Sha256::digest(audio));
    format!("{:x}", hasher.finalize())
}

/// What the job's carry depends on, for refusing a carry written with other settings.
fn carry_settings(spec: &JobSpec) -> CarrySettings {
    CarrySettings {
        model: spec.engine.model.clone(),
        width: spec.render.size.width,
        height: spec.render.size.height,
        seed: spec.render.seed,
        infer_frames: spec.render.infer_frames,
    }
}

/// Bytes one checkpoint's carry of `spec` takes on disk, known before the job starts; `None`
/// for command engines, whose carry is whatever the program leaves. An error when the model's
/// config cannot be read or does not take the job's settings (see [`check_native_model`]).
pub fn carry_bytes(spec: &JobSpec) -> Result<Option<u64>, String> {
    if spec.engine.model_ref.engine_kind() != EngineKind::Native {
        return Ok(None);
    }
    engine::carry_bytes(&engine_settings(spec))
        .map(Some)
        .map_err(|err| err.to_string())
}

/// What intake can check of a native job's model without loading weights: a Live Avatar
/// release's config, and the job's settings against it. The message says what to change.
pub fn check_native_model(spec: &JobSpec) -> Result<(), String> {
    if spec.engine.model_ref.engine_kind() != EngineKind::Native {
        return Ok(());
    }
    engine::check_model(&engine_settings(spec)).map_err(|err| match err {
        RenderError::UnsupportedSettings { detail } => format!(
            "render: the Live Avatar release at engine.model `{}` cannot render these settings: {detail}",
            spec.engine.model
        ),
        other => format!(
            "engine.model `{}` is a Live Avatar release whose config cannot be used: {other}",
            spec.engine.model
        ),
    })
}
