//! From a job file to the numbers placement works with, and the check intake makes with them.

use std::collections::HashSet;
use std::path::PathBuf;
use std::sync::{Arc, Mutex, RwLock};

use gpu_pool::{EstimateRequest, OffloadChoice, ProfileSet, QueuedJob};
use jobs::spec::{ModelRef, NumClip, Offload};
use jobs::JobSpec;

use crate::intake::{Admission, Admitted};

/// The profile used for models that name none and are not built in.
const DEFAULT_PROFILE: &str = "liveavatar-14b";
/// The profile of a Live Avatar release rendered by the native engine (its own accounting).
const NATIVE_RELEASE_PROFILE: &str = "liveavatar-14b-native";
/// Clips assumed for the running-time estimate when the audio cannot be probed.
const FALLBACK_CLIPS: u32 = 10;

/// The memory profile a job is planned with.
pub fn profile_name(spec: &JobSpec) -> String {
    if let Some(profile) = &spec.engine.profile {
        return profile.clone();
    }
    match &spec.engine.model_ref {
        model if model.is_builtin("tiny") => "builtin-tiny".to_string(),
        // Kept from when the profile was picked by the model string alone: a command engine
        // without a profile of its own whose model is the string `builtin:tiny`.
        ModelRef::Command { model, .. } if model == "builtin:tiny" => "builtin-tiny".to_string(),
        ModelRef::Release { .. } => NATIVE_RELEASE_PROFILE.to_string(),
        _ => DEFAULT_PROFILE.to_string(),
    }
}

pub(super) fn offload_choice(offload: Offload) -> OffloadChoice {
    match offload {
        Offload::Auto => OffloadChoice::Auto,
        Offload::On => OffloadChoice::On,
        Offload::Off => OffloadChoice::Off,
    }
}

pub(super) fn estimate_request(spec: &JobSpec) -> EstimateRequest {
    EstimateRequest {
        width: spec.render.size.width,
        height: spec.render.size.height,
        frames: spec.render.infer_frames,
        offload: offload_choice(spec.render.offload),
    }
}

/// Clips of a job, probing the audio for `num_clip: auto`.
pub(super) fn clip_count(spec: &JobSpec) -> u32 {
    match spec.render.num_clip {
        NumClip::Count(clips) => clips,
        NumClip::Auto => match render::media::probe_audio_duration(&spec.inputs.audio) {
            Ok(duration) => {
                let frames = (duration.as_secs_f64() * f64::from(spec.render.fps)).ceil();
                (frames / f64::from(spec.render.infer_frames.max(1)))
                    .ceil()
                    .max(1.0) as u32
            }
            Err(_) => FALLBACK_CLIPS,
        },
    }
}

/// Reads the profiles even if a thread panicked while holding the lock: the set is only ever
/// replaced whole by `record_observed_peak`, so it is never left half-changed.
pub(super) fn read_profiles(
    profiles: &RwLock<ProfileSet>,
) -> std::sync::RwLockReadGuard<'_, ProfileSet> {
    profiles
        .read()
        .unwrap_or_else(|poisoned| poisoned.into_inner())
}

/// The intake-side check: does the job fit any card of the pool in some allowed mode?
///
/// It shares the profiles with the scheduler, so an estimate raised by an observed peak or
/// an out-of-memory exit applies to the next job that comes in.
pub struct PoolAdmission {
    pub(super) profiles: Arc<RwLock<ProfileSet>>,
    pub(super) largest_card_bytes: u64,
    pub(super) host_memory: Option<u64>,
    /// Release directories that passed the release check: each is checked once.
    pub(super) checked_releases: Arc<Mutex<HashSet<PathBuf>>>,
}

impl Admission for PoolAdmission {
    fn admit_with_plan(&self, spec: &JobSpec) -> Result<Admitted, String> {
        let plan = crate::placement::Placement::plan_of(spec);
        if let Some(shape) = &plan.release {
            match super::release_plan::plan(
                shape,
                plan.width,
                plan.height,
                plan.frames,
                self.largest_card_bytes,
                self.host_memory,
            ) {
                Ok(plans) => {
                    return Ok(Admitted {
                        vram_bytes: Some(plans.primary.device_bytes),
                        memory: Some(plans.primary),
                    })
                }
                Err(super::release_plan::NoPlan::DoesNotFit(refusal)) => {
                    return Err(format!(
                        "this job fits no GPU of the pool in any memory mode (largest GPU {:.1} GiB less {:.1} GiB for the CUDA context, host memory {}): {refusal}",
                        self.largest_card_bytes as f64 / gpu_pool::GIB as f64,
                        super::release_plan::CONTEXT_RESERVE_BYTES as f64 / gpu_pool::GIB as f64,
                        self.host_memory.map_or_else(
                            || "not counted".to_string(),
                            |bytes| format!("{:.1} GiB", bytes as f64 / gpu_pool::GIB as f64)
                        ),
                    ))
                }
                // Unreadable configs and settings the release cannot render are named by
                // the settings and release checks that follow.
                Err(super::release_plan::NoPlan::Unreadable(_)) => {}
            }
        }
        self.admit(spec).map(|vram_bytes| Admitted {
            vram_bytes,
            memory: None,
        })
    }

    fn check_model(&self, spec: &JobSpec) -> Result<(), String> {
        let ModelRef::Release { dir } = &spec.engine.model_ref else {
            return Ok(());
        };
        let checked = |cache: &Mutex<HashSet<PathBuf>>| {
            cache
                .lock()
                .unwrap_or_else(|poisoned| poisoned.into_inner())
                .contains(dir)
        };
        if checked(&self.checked_releases) {
            return Ok(());
        }
        super::release_plan::check_release(dir).map_err(|report| {
            format!(
                "engine.model `{}` is a Live Avatar release that cannot be loaded:\n{report}\n  = help: `reelspool model check {}` shows the same report; fix or re-download the files it names",
                spec.engine.model,
                dir.display()
            )
        })?;
        // Only a passing release is remembered: a fixed one is checked again at the next job.
        self.checked_releases
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
            .insert(dir.clone());
        Ok(())
    }

    fn admit(&self, spec: &JobSpec) -> Result<Option<u64>, String> {
        let name = profile_name(spec);
        let profiles = read_profiles(&self.profiles);
        let profile = profiles.get(&name).map_err(|err| {
            format!("{err}\n  = help: set `engine.profile:` to one of the profiles in templates/profiles/")
        })?;
        let req = estimate_request(spec);
        let job = QueuedJob::from_profile("admission", spec.priority, 0, profile, &req, 1);
        let modes = [
            (req.offload != OffloadChoice::On || job.with_offload.is_none())
                .then_some(job.no_offload.vram_bytes),
            (req.offload != OffloadChoice::Off)
                .then_some(job.with_offload.map(|d| d.vram_bytes))
                .flatten(),
        ];
        let least = modes
            .into_iter()
            .flatten()
            .min()
            .unwrap_or(job.no_offload.vram_bytes);
        if least <= self.largest_card_bytes {
            return Ok(Some(least));
        }
        let refusal = gpu_pool::Refusal {
            estimate_bytes: least,
            largest_card_bytes: self.largest_card_bytes,
            suggestion: String::new(),
        }
        .with_profile_hint(profile, &req);
        Err(format!(
            "this job fits no GPU of the pool (profile `{name}`, size {}, {} frames per clip): {refusal}",
            spec.render.size, spec.render.infer_frames
        ))
    }
}
