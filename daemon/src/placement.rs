//! The daemon's view of the GPU pool: it maps jobs into `gpu_pool`'s plain types, keeps the
//! lease table on disk, and gives intake a thread-safe admission check.

use std::collections::{BTreeSet, HashMap};
use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{Context, Result};
use gpu_pool::{
    CardState, EstimateRequest, GpuInfo, GpuLease, LeaseTable, OffloadChoice, OomFallback,
    ProfileSet, QueuedJob, RunOutcome, SchedulerPolicy,
};
use jobs::spec::{NumClip, Offload};
use jobs::state::{JobId, JobState};
use jobs::JobSpec;
use tracing::{info, warn};

use crate::config::DaemonConfig;
use crate::intake::Admission;

/// The profile used for models that name none and are not built in.
const DEFAULT_PROFILE: &str = "liveavatar-14b";
/// Clips assumed for the running-time estimate when the audio cannot be probed.
const FALLBACK_CLIPS: u32 = 10;

/// Start this job on this card.
#[derive(Debug, Clone)]
pub struct PlacementDecision {
    pub job_id: JobId,
    /// What people see: the card's name and index, or "cpu-0".
    pub card_label: String,
    pub offload: bool,
    pub env: Vec<(String, String)>,
}

/// The memory profile a job is planned with.
pub fn profile_name(spec: &JobSpec) -> String {
    if let Some(profile) = &spec.engine.profile {
        return profile.clone();
    }
    match spec.engine.model.as_str() {
        "builtin:tiny" => "builtin-tiny".to_string(),
        _ => DEFAULT_PROFILE.to_string(),
    }
}

fn offload_choice(offload: Offload) -> OffloadChoice {
    match offload {
        Offload::Auto => OffloadChoice::Auto,
        Offload::On => OffloadChoice::On,
        Offload::Off => OffloadChoice::Off,
    }
}

fn estimate_request(spec: &JobSpec) -> EstimateRequest {
    EstimateRequest {
        width: spec.render.size.width,
        height: spec.render.size.height,
        frames: spec.render.infer_frames,
        offload: offload_choice(spec.render.offload),
    }
}

/// Clips of a job, probing the audio for `num_clip: auto`.
fn clip_count(spec: &JobSpec) -> u32 {
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

/// The intake-side check: does the job fit any card of the pool in some allowed mode?
pub struct PoolAdmission {
    profiles: Arc<ProfileSet>,
    largest_card_bytes: u64,
}

impl Admission for PoolAdmission {
    fn admit(&self, spec: &JobSpec) -> Result<Option<u64>, String> {
        let name = profile_name(spec);
        let profile = self.profiles.get(&name).map_err(|err| {
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

/// The pool, the queue and the leases.
pub struct Placement {
    scheduler: gpu_pool::Scheduler,
    devices: HashMap<String, GpuInfo>,
    profiles: Arc<ProfileSet>,
    leases: LeaseTable,
    lease_path: PathBuf,
    queued: BTreeSet<JobId>,
    hold: bool,
    epoch: Instant,
    next_seq: u64,
}

impl Placement {
    pub fn start(config: &DaemonConfig) -> Result<Placement> {
        let devices = gpu_pool::discover(&config.gpu_pool)?;
        let profiles_dir = config.templates_dir().join("profiles");
        let profiles = gpu_pool::load_profiles(&profiles_dir).with_context(|| {
            format!(
                "cannot load memory profiles from {}",
                profiles_dir.display()
            )
        })?;
        let cards: Vec<CardState> = devices.iter().map(CardState::from_device).collect();
        for device in &devices {
            info!(
                uuid = %device.uuid,
                name = %device.name,
                memory_gib = device.memory_total_bytes as f64 / gpu_pool::GIB as f64,
                healthy = device.healthy,
                "device in pool"
            );
        }
        let policy = SchedulerPolicy {
            failure_drain_threshold: config.gpu_pool.failure_drain_threshold,
            ..SchedulerPolicy::default()
        };
        let scheduler = gpu_pool::Scheduler::new(cards, policy)?;
        let lease_path = config.state_dir.join("leases.json");
        let leases = if lease_path.exists() {
            LeaseTable::load(&lease_path).unwrap_or_else(|err| {
                warn!(error = %err, "cannot read the lease table; starting without it");
                LeaseTable::default()
            })
        } else {
            LeaseTable::default()
        };
        Ok(Placement {
            scheduler,
            devices: devices.into_iter().map(|d| (d.uuid.clone(), d)).collect(),
            profiles: Arc::new(profiles),
            leases,
            lease_path,
            queued: BTreeSet::new(),
            hold: config.hold_queue,
            epoch: Instant::now(),
            next_seq: 0,
        })
    }

    pub fn admission(&self) -> PoolAdmission {
        PoolAdmission {
            profiles: Arc::clone(&self.profiles),
            largest_card_bytes: self
                .devices
                .values()
                .filter(|d| d.healthy)
                .map(|d| d.memory_total_bytes)
                .max()
                .unwrap_or(0),
        }
    }

    fn now(&self) -> Duration {
        self.epoch.elapsed()
    }

    /// Puts a job in line. Submission order is the job id's order (ids sort by time), so a job
    /// re-queued after a restart keeps its place.
    pub fn enqueue(&mut self, id: &JobId, state: &JobState, spec: &JobSpec) {
        let name = profile_name(spec);
        let Ok(profile) = self.profiles.get(&name) else {
            warn!(job = %id, profile = %name, "unknown memory profile; the job cannot be placed");
            return;
        };
        let req = estimate_request(spec);
        self.next_seq += 1;
        let mut job = QueuedJob::from_profile(
            &id.to_string(),
            state.priority,
            self.next_seq,
            profile,
            &req,
            clip_count(spec),
        );
        job.preferred_card = self.leases.card_of(&id.to_string()).map(str::to_string);
        match self.scheduler.enqueue(job, self.now()) {
            Ok(()) => {
                self.queued.insert(id.clone());
            }
            Err(err) => warn!(job = %id, error = %err, "cannot queue job"),
        }
    }

    pub fn next_placements(&mut self) -> Vec<PlacementDecision> {
        if self.hold {
            return Vec::new();
        }
        let now = self.now();
        let mut decisions = Vec::new();
        for placement in self.scheduler.next_placements(now) {
            let Ok(id) = placement.job_id.parse::<JobId>() else {
                continue;
            };
            self.queued.remove(&id);
            self.leases.insert(&placement.job_id, &placement.card_uuid);
            let (label, env) = match self.devices.get(&placement.card_uuid) {
                Some(device) => (
                    format!("{}#{}", device.name, device.index),
                    GpuLease::for_device(device).worker_env(),
                ),
                None => (placement.card_uuid.clone(), Vec::new()),
            };
            decisions.push(PlacementDecision {
                job_id: id,
                card_label: label,
                offload: placement.offload_used,
                env,
            });
        }
        if !decisions.is_empty() {
            self.persist();
        }
        decisions
    }

    /// Frees a job's card. `failed` counts toward draining the card.
    pub fn release(&mut self, id: &JobId, failed: bool) {
        let outcome = if failed {
            RunOutcome::Failed
        } else {
            RunOutcome::Finished
        };
        match self.scheduler.release(&id.to_string(), outcome) {
            Ok(released) if released.drained_now => warn!(
                gpu = %released.card_uuid,
                failures = released.consecutive_failures,
                "card drained after repeated failures; `reelspool gpus undrain` to use it again"
            ),
            Ok(_) => {}
            Err(err) => warn!(job = %id, error = %err, "release of an unknown lease"),
        }
        self.leases.remove(&id.to_string());
        self.persist();
    }

    /// After an out-of-memory exit: whether the job was re-queued with a fallback.
    pub fn record_oom(&mut self, id: &JobId) -> bool {
        let requeued = match self.scheduler.record_oom(&id.to_string()) {
            Ok(OomFallback::OffloadOn) => {
                self.queued.insert(id.clone());
                true
            }
            Ok(OomFallback::FewerFrames | OomFallback::GiveUp) => false,
            Err(err) => {
                warn!(job = %id, error = %err, "out-of-memory report for an unknown job");
                false
            }
        };
        self.leases.remove(&id.to_string());
        self.persist();
        requeued
    }

    pub fn queued_ids(&self) -> Vec<JobId> {
        self.queued.iter().cloned().collect()
    }

    pub fn remove_queued(&mut self, id: &JobId) {
        self.scheduler.cancel(&id.to_string());
        self.queued.remove(id);
    }

    pub fn persist(&self) {
        if let Err(err) = self.leases.save(&self.lease_path) {
            warn!(path = %self.lease_path.display(), error = %err, "cannot save the lease table");
        }
    }
}
