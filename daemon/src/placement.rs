//! The daemon's view of the GPU pool: it maps jobs into `gpu_pool`'s plain types, keeps the
//! pool's files in the state directory (leases, drained cards, observed peaks, `gpus.json`),
//! and gives intake a thread-safe admission check.
//!
//! One running job per card is `gpu_pool::Scheduler`'s rule; this module adds what needs the
//! daemon: a job interrupted by a stop keeps its lease on disk so it goes back to the same
//! card after the restart, a worker that ran out of memory raises its profile's estimate, and
//! cards change state on operator requests and NVML readings (see [`cards`]).

mod admission;
pub mod cards;
mod health;
pub mod pool_files;
pub mod release_plan;

use std::collections::{BTreeSet, HashMap, HashSet};
use std::path::PathBuf;
use std::sync::{Arc, Mutex, RwLock};
use std::time::{Duration, Instant};

use anyhow::{Context, Result};
use gpu_pool::{
    CardState, Demand, EstimateRequest, GpuInfo, GpuKind, GpuLease, LeaseTable, OffloadChoice,
    OomFallback, ProfileSet, QueuedJob, RunOutcome, SchedulerPolicy,
};
use jobs::index::QueuePlan;
use jobs::state::JobId;
use jobs::JobSpec;
use tracing::{info, warn};

use crate::config::DaemonConfig;
use crate::supervisor::WorkerEnd;
use admission::{clip_count, estimate_request, offload_choice, read_profiles};
pub use admission::{profile_name, PoolAdmission};
use health::{CardVerdict, PoolWatch};
use pool_files::{DrainedCards, PoolPaths};
use release_plan::{PlannedMemory, ReleasePlans};

/// Start this job on this card.
#[derive(Debug, Clone)]
pub struct PlacementDecision {
    pub job_id: JobId,
    /// What people see: the card's name and index, or "cpu-0".
    pub card_label: String,
    /// The card's UUID, as the worker's `CUDA_VISIBLE_DEVICES` names it.
    pub card_uuid: String,
    pub offload: bool,
    pub env: Vec<(String, String)>,
    /// The card's model name ("NVIDIA H200", "cpu"): what compiled kernels are kept by.
    pub gpu_model: String,
    /// For a release job: the memory plan it runs with (already in `env` for the worker).
    pub memory: Option<PlannedMemory>,
}

/// How a run ended, as far as its card and its lease are concerned.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RunEnd {
    /// The job is done: the card works, its failure count starts over.
    Finished,
    /// The worker crashed or hung: counts toward draining the card.
    CardFailure,
    /// Cancelled, bad input, disk trouble: says nothing about the card.
    NotTheCard,
    /// The daemon is stopping: the job resumes at the next start and keeps its lease, so it
    /// goes back to the same card when that card is free.
    DaemonStopping,
}

/// Reads a worker's end for the pool. Engine errors are not held against the card: a broken
/// model path fails every job on every card alike, and draining cards would not help.
pub fn run_end(end: &WorkerEnd, daemon_stopping: bool) -> RunEnd {
    match end {
        WorkerEnd::Finished => RunEnd::Finished,
        _ if daemon_stopping => RunEnd::DaemonStopping,
        WorkerEnd::Crashed { .. } | WorkerEnd::HeartbeatLost => RunEnd::CardFailure,
        // An out-of-memory exit never gets here: `record_oom` frees its card.
        // Nor is a kill by someone else (an eviction).
        WorkerEnd::Failed { .. } | WorkerEnd::Interrupted { .. } | WorkerEnd::Evicted { .. } => {
            RunEnd::NotTheCard
        }
    }
}

/// What an observed peak of a job is recorded against.
#[derive(Debug, Clone)]
struct JobPlan {
    profile: String,
    width: u32,
    height: u32,
    frames: u32,
}

impl JobPlan {
    /// The estimate request of the mode the job ran in.
    fn ran_as(&self, offload_used: bool) -> EstimateRequest {
        EstimateRequest {
            width: self.width,
            height: self.height,
            frames: self.frames,
            offload: if offload_used {
                OffloadChoice::On
            } else {
                OffloadChoice::Off
            },
        }
    }
}

/// A job on a card.
#[derive(Debug, Clone)]
struct RunRecord {
    card_uuid: String,
    offload_used: bool,
    /// The most GPU memory the job's processes held in any NVML reading.
    peak_vram_bytes: Option<u64>,
}

/// The pool, the queue and the leases.
pub struct Placement {
    scheduler: gpu_pool::Scheduler,
    devices: HashMap<String, GpuInfo>,
    profiles: Arc<RwLock<ProfileSet>>,
    leases: LeaseTable,
    paths: PoolPaths,
    drained: DrainedCards,
    verdicts: HashMap<String, CardVerdict>,
    threshold_bytes: Option<u64>,
    watch: Option<PoolWatch>,
    plans: HashMap<String, JobPlan>,
    running: HashMap<String, RunRecord>,
    queued: BTreeSet<JobId>,
    hold: bool,
    epoch: Instant,
    next_seq: u64,
    /// Leases of jobs that are neither queued nor running are dropped once, after start-up
    /// has re-queued every unfinished job.
    leases_pruned: bool,
    snapshot_dirty: bool,
    snapshot_written_at: Option<Instant>,
    /// The model each card's worker holds, running or idle (see `warm`).
    worker_models: HashMap<String, String>,
    /// The host memory jobs share (`gpu_pool.host_memory_gb` or the machine's).
    host_memory: Option<u64>,
    /// Memory plans of queued and running release jobs, by job id.
    release_plans: HashMap<String, ReleasePlans>,
    /// Release directories that passed intake's release check (see `PoolAdmission`).
    checked_releases: Arc<Mutex<HashSet<PathBuf>>>,
}

impl Placement {
    pub fn start(config: &DaemonConfig) -> Result<Placement> {
        let paths = PoolPaths::new(&config.state_dir);
        let devices = gpu_pool::discover(&config.gpu_pool)?;
        let profiles_dir = config.templates_dir().join("profiles");
        let mut profiles = gpu_pool::load_profiles(&profiles_dir).with_context(|| {
            format!(
                "cannot load memory profiles from {}",
                profiles_dir.display()
            )
        })?;
        if let Err(err) = profiles.load_observations(&paths.observations) {
            warn!(error = %err, "cannot read observed peaks; estimates start from the profiles alone");
        }
        let threshold_bytes = config.gpu_pool.external_use_threshold_bytes();
        let own_pids = health::own_pids();
        let mut verdicts = HashMap::new();
        let mut cards = Vec::with_capacity(devices.len());
        for device in &devices {
            let verdict = health::judge_card(device, &own_pids, threshold_bytes);
            info!(
                uuid = %device.uuid,
                name = %device.name,
                memory_gib = device.memory_total_bytes as f64 / gpu_pool::GIB as f64,
                usable = verdict.usable,
                note = verdict.note.as_deref().unwrap_or(""),
                "device in pool"
            );
            let mut card = CardState::from_device(device);
            card.healthy = verdict.usable;
            cards.push(card);
            verdicts.insert(device.uuid.clone(), verdict);
        }
        let policy = SchedulerPolicy {
            failure_drain_threshold: config.gpu_pool.failure_drain_threshold,
            ..SchedulerPolicy::default()
        };
        let mut scheduler = gpu_pool::Scheduler::new(cards, policy)?;
        let host_memory = config.gpu_pool.host_memory_bytes();
        scheduler.set_host_memory(host_memory);
        if let Some(bytes) = host_memory {
            info!(
                host_memory_gib = bytes as f64 / gpu_pool::GIB as f64,
                "host memory shared by jobs"
            );
        }
        let drained = DrainedCards::load(&paths.drained)?;
        for (uuid, record) in &drained.cards {
            match scheduler.drain(uuid) {
                Ok(()) => info!(gpu = %uuid, reason = %record.reason, "card stays drained"),
                Err(_) => {
                    info!(gpu = %uuid, "a drained card is not in the pool; it stays drained if it returns")
                }
            }
        }
        let leases = LeaseTable::load(&paths.leases).unwrap_or_else(|err| {
            warn!(error = %err, "cannot read the lease table; starting without it");
            LeaseTable::default()
        });
        let mut placement = Placement {
            scheduler,
            devices: devices.into_iter().map(|d| (d.uuid.clone(), d)).collect(),
            profiles: Arc::new(RwLock::new(profiles)),
            leases,
            paths,
            drained,
            verdicts,
            threshold_bytes,
            watch: PoolWatch::start(&config.gpu_pool),
            plans: HashMap::new(),
            running: HashMap::new(),
            queued: BTreeSet::new(),
            hold: config.hold_queue,
            epoch: Instant::now(),
            next_seq: 0,
            leases_pruned: false,
            snapshot_dirty: true,
            snapshot_written_at: None,
            worker_models: HashMap::new(),
            host_memory,
            release_plans: HashMap::new(),
            checked_releases: Arc::new(Mutex::new(HashSet::new())),
        };
        placement.write_snapshot();
        Ok(placement)
    }

    /// The admission check for intake. The largest card counts even when drained or
    /// unhealthy, as in `gpu_pool::Scheduler::admit`: such a card may come back, and a job
    /// refused now could never be submitted again without a change.
    pub fn admission(&self) -> PoolAdmission {
        PoolAdmission {
            profiles: Arc::clone(&self.profiles),
            largest_card_bytes: self.scheduler.largest_card_bytes(),
            host_memory: self.host_memory,
            checked_releases: Arc::clone(&self.checked_releases),
        }
    }

    fn now(&self) -> Duration {
        self.epoch.elapsed()
    }

    /// What placement needs of a job file, kept in the queue index so a restart does not read
    /// `job.yaml` again (and, for `num_clip: auto`, probe the audio again).
    pub fn plan_of(spec: &JobSpec) -> QueuePlan {
        let req = estimate_request(spec);
        let clips = clip_count(spec);
        QueuePlan {
            profile: profile_name(spec),
            width: req.width,
            height: req.height,
            frames: req.frames,
            offload: spec.render.offload,
            clips,
            // An explicit `engine.profile` wins over the engine's own accounting.
            release: spec
                .engine
                .profile
                .is_none()
                .then(|| release_plan::shape_of(spec, clips))
                .flatten(),
        }
    }

    /// Puts a job in line. Submission order is the job id's order (ids sort by time), so a job
    /// re-queued after a restart keeps its place.
    /// `model` is what the job's worker will hold (see `warm::model_key`), when known: a free
    /// card whose worker holds it already is taken first.
    pub fn enqueue(&mut self, id: &JobId, priority: i32, plan: &QueuePlan, model: Option<String>) {
        let req = EstimateRequest {
            width: plan.width,
            height: plan.height,
            frames: plan.frames,
            offload: offload_choice(plan.offload),
        };
        let key = id.to_string();
        self.next_seq += 1;
        let mut job = {
            let profiles = read_profiles(&self.profiles);
            let Ok(profile) = profiles.get(&plan.profile) else {
                warn!(job = %id, profile = %plan.profile, "unknown memory profile; the job cannot be placed");
                return;
            };
            QueuedJob::from_profile(&key, priority, self.next_seq, profile, &req, plan.clips)
        };
        if let Some(plans) = self.release_plans_of(id, plan) {
            release_demands(&mut job, &plans);
            self.release_plans.insert(key.clone(), plans);
        }
        job.preferred_card = self.leases.card_of(&key).map(str::to_string);
        job.model = model;
        match self.scheduler.enqueue(job, self.now()) {
            Ok(()) => {
                self.queued.insert(id.clone());
                // `gpus.json` is rewritten on the next tick, after this job's first placement
                // pass: its `updated_at_ms` tells a reader the pass has happened.
                self.snapshot_dirty = true;
                self.plans.insert(
                    key,
                    JobPlan {
                        profile: plan.profile.clone(),
                        width: req.width,
                        height: req.height,
                        frames: req.frames,
                    },
                );
            }
            Err(err) => warn!(job = %id, error = %err, "cannot queue job"),
        }
    }

    /// The memory plans of a release job on the pool's largest card, or `None` (with a
    /// warning) when the release cannot be planned; the job is then placed by its profile.
    fn release_plans_of(&self, id: &JobId, plan: &QueuePlan) -> Option<ReleasePlans> {
        let shape = plan.release.as_ref()?;
        match release_plan::plan(
            shape,
            plan.width,
            plan.height,
            plan.frames,
            self.scheduler.largest_card_bytes(),
            self.host_memory,
        ) {
            Ok(plans) => {
                info!(job = %id, plan = %plans.primary.summary(), "release job planned");
                Some(plans)
            }
            Err(release_plan::NoPlan::Unreadable(why)) => {
                warn!(job = %id, error = %why, "cannot plan the release job's memory; placing it by its profile");
                None
            }
            Err(release_plan::NoPlan::DoesNotFit(refusal)) => {
                warn!(job = %id, error = %refusal, "the release job fits no card of the pool now; placing it by its profile");
                None
            }
        }
    }

    /// The memory plan a queued or running release job runs (or will run) with.
    pub fn planned_memory(&self, id: &JobId, offload_used: bool) -> Option<PlannedMemory> {
        let plans = self.release_plans.get(&id.to_string())?;
        if offload_used {
            plans.fallback.clone()
        } else {
            Some(plans.primary.clone())
        }
    }

    /// Holds the queue (start nothing) or releases it; a config reload changes `hold_queue`.
    pub fn set_hold(&mut self, hold: bool) {
        self.hold = hold;
    }

    pub fn next_placements(&mut self) -> Vec<PlacementDecision> {
        if !self.leases_pruned {
            self.prune_leases();
        }
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
            self.running.insert(
                placement.job_id.clone(),
                RunRecord {
                    card_uuid: placement.card_uuid.clone(),
                    offload_used: placement.offload_used,
                    peak_vram_bytes: None,
                },
            );
            let memory = self.planned_memory(&id, placement.offload_used);
            let (label, mut env, gpu_model) = match self.devices.get(&placement.card_uuid) {
                Some(device) => (
                    format!("{}#{}", device.name, device.index),
                    GpuLease::for_device(device).worker_env(),
                    device.name.clone(),
                ),
                None => (placement.card_uuid.clone(), Vec::new(), String::new()),
            };
            if let Some(memory) = &memory {
                env.extend(memory.worker_env());
            }
            decisions.push(PlacementDecision {
                job_id: id,
                card_label: label,
                card_uuid: placement.card_uuid,
                offload: placement.offload_used,
                env,
                gpu_model,
                memory,
            });
        }
        if !decisions.is_empty() {
            self.persist_leases();
            self.snapshot_dirty = true;
        }
        decisions
    }

    /// Drops the leases of jobs that will not run again (finished or cancelled while the
    /// daemon was down), keeping those of re-queued jobs as their card preference.
    fn prune_leases(&mut self) {
        self.leases_pruned = true;
        let stale: Vec<String> = self
            .leases
            .iter()
            .map(|(job, _)| job.to_string())
            .filter(|job| !self.plans.contains_key(job) && !self.running.contains_key(job))
            .collect();
        for job in &stale {
            self.leases.remove(job);
        }
        if !stale.is_empty() {
            self.persist_leases();
        }
    }

    /// Frees a job's card. Returns the job's observed GPU memory peak, where NVML measured one.
    pub fn release(&mut self, id: &JobId, end: RunEnd) -> Option<u64> {
        let key = id.to_string();
        // A CPU slot is not hardware that can go bad: a crash there says nothing about the
        // slot, and draining the only slot of a CPU pool would stall its queue for good.
        let on_cpu_slot = self
            .running
            .get(&key)
            .and_then(|run| self.devices.get(&run.card_uuid))
            .is_some_and(|device| device.kind == gpu_pool::GpuKind::Cpu);
        let outcome = match end {
            RunEnd::Finished => RunOutcome::Finished,
            RunEnd::CardFailure if !on_cpu_slot => RunOutcome::Failed,
            RunEnd::CardFailure | RunEnd::NotTheCard | RunEnd::DaemonStopping => {
                RunOutcome::Interrupted
            }
        };
        match self.scheduler.release(&key, outcome) {
            Ok(released) if released.drained_now => self.note_failure_drain(&released),
            Ok(_) => {}
            Err(err) => warn!(job = %id, error = %err, "release of an unknown lease"),
        }
        let run = self.running.remove(&key);
        let peak = run.as_ref().and_then(|run| run.peak_vram_bytes);
        if let (Some(run), Some(peak)) = (&run, peak) {
            info!(job = %id, gpu = %run.card_uuid, peak_vram_bytes = peak, "observed GPU memory peak");
            self.record_observation(&key, run.offload_used, peak);
        }
        self.plans.remove(&key);
        self.release_plans.remove(&key);
        if end != RunEnd::DaemonStopping {
            self.leases.remove(&key);
        }
        self.persist_leases();
        self.snapshot_dirty = true;
        peak
    }

    /// After an out-of-memory exit: raises the profile's estimate for the mode that ran out
    /// (the job needed more than its card has), and says whether the job was re-queued with
    /// a fallback.
    pub fn record_oom(&mut self, id: &JobId) -> bool {
        let key = id.to_string();
        if let Some(run) = self.running.remove(&key) {
            // The card's size is a lower bound of what the job needed (other users are kept
            // under `external_use_threshold_mb`). CPU slots have no real size to learn from.
            let lower_bound = self
                .devices
                .get(&run.card_uuid)
                .filter(|device| device.kind != GpuKind::Cpu)
                .map(|device| device.memory_total_bytes);
            let observed = lower_bound.max(run.peak_vram_bytes);
            if let Some(observed) = observed {
                self.record_observation(&key, run.offload_used, observed);
            }
        }
        let requeued = match self.scheduler.record_oom(&key) {
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
        if !requeued {
            self.plans.remove(&key);
            self.release_plans.remove(&key);
        }
        self.leases.remove(&key);
        self.persist_leases();
        self.snapshot_dirty = true;
        requeued
    }

    /// Adds a measured peak to the job's profile and saves every observation.
    fn record_observation(&mut self, job: &str, offload_used: bool, peak_vram_bytes: u64) {
        let Some(plan) = self.plans.get(job) else {
            return;
        };
        let req = plan.ran_as(offload_used);
        let mut profiles = self
            .profiles
            .write()
            .unwrap_or_else(|poisoned| poisoned.into_inner());
        match profiles.record_observed_peak(&plan.profile, &req, peak_vram_bytes) {
            Ok(raised) => {
                if raised {
                    warn!(
                        job,
                        profile = %plan.profile,
                        observed_vram_bytes = peak_vram_bytes,
                        "the job needed more GPU memory than its profile estimated; estimates raised"
                    );
                }
                if let Err(err) = profiles.save_observations(&self.paths.observations) {
                    warn!(error = %err, "cannot save observed peaks");
                }
            }
            Err(err) => warn!(job, error = %err, "cannot record an observed peak"),
        }
    }

    /// Which model each card's worker holds now: placement prefers such a card for a job of
    /// that model, and `gpus.json` shows it.
    pub fn set_worker_models(&mut self, models: HashMap<String, String>) {
        if models == self.worker_models {
            return;
        }
        for uuid in self.devices.keys() {
            let model = models.get(uuid).cloned();
            if let Err(err) = self.scheduler.set_warm_model(uuid, model) {
                warn!(gpu = %uuid, error = %err, "cannot note the card's warm model");
            }
        }
        self.worker_models = models;
        self.snapshot_dirty = true;
    }

    pub fn queued_count(&self) -> usize {
        self.queued.len()
    }

    pub fn is_queued(&self, id: &JobId) -> bool {
        self.queued.contains(id)
    }

    pub fn remove_queued(&mut self, id: &JobId) {
        let key = id.to_string();
        self.scheduler.cancel(&key);
        self.queued.remove(id);
        self.plans.remove(&key);
        self.release_plans.remove(&key);
        if self.leases.remove(&key).is_some() {
            self.persist_leases();
        }
    }

    /// Saves what must outlive the daemon and refreshes `gpus.json` (called at stop).
    pub fn persist(&mut self) {
        self.persist_leases();
        self.snapshot_dirty = true;
        self.write_snapshot();
    }

    fn persist_leases(&self) {
        if let Err(err) = self.leases.save(&self.paths.leases) {
            warn!(path = %self.paths.leases.display(), error = %err, "cannot save the lease table");
        }
    }
}

/// A release job's needs from its plans: the primary plan as the plain mode, the streamed
/// fallback (when there is one) as the offload mode an out-of-memory retry moves to.
fn release_demands(job: &mut QueuedJob, plans: &ReleasePlans) {
    let est = job.no_offload.est;
    job.no_offload = Demand {
        vram_bytes: plans.primary.device_bytes,
        est,
        host_bytes: plans.primary.host_bytes,
    };
    job.with_offload = plans.fallback.as_ref().map(|fallback| Demand {
        vram_bytes: fallback.device_bytes,
        // Streaming moves every block over PCIe each tick: counted as twice as slow.
        est: est.saturating_mul(2),
        host_bytes: fallback.host_bytes,
    });
    job.offload = if job.with_offload.is_some() {
        OffloadChoice::Auto
    } else {
        OffloadChoice::Off
    };
}

#[cfg(test)]
mod tests {
    use super::*;
    use render::protocol::FailureKind;

    #[test]
    fn a_stop_keeps_the_lease_whatever_the_worker_said() {
        for end in [
            WorkerEnd::Interrupted { next_clip: Some(2) },
            WorkerEnd::Crashed {
                status: "killed by signal 15".into(),
            },
        ] {
            assert_eq!(run_end(&end, true), RunEnd::DaemonStopping, "{end:?}");
        }
    }

    #[test]
    fn crashes_and_hangs_count_against_the_card() {
        let crashed = WorkerEnd::Crashed {
            status: "exit status 139".into(),
        };
        assert_eq!(run_end(&crashed, false), RunEnd::CardFailure);
        assert_eq!(
            run_end(&WorkerEnd::HeartbeatLost, false),
            RunEnd::CardFailure
        );
    }

    #[test]
    fn bad_input_and_cancel_say_nothing_about_the_card() {
        let input = WorkerEnd::Failed {
            kind: FailureKind::Input,
            message: "cannot decode audio".into(),
        };
        assert_eq!(run_end(&input, false), RunEnd::NotTheCard);
        let cancelled = WorkerEnd::Interrupted { next_clip: None };
        assert_eq!(run_end(&cancelled, false), RunEnd::NotTheCard);
    }

    #[test]
    fn a_job_that_finishes_during_a_stop_is_finished() {
        assert_eq!(run_end(&WorkerEnd::Finished, true), RunEnd::Finished);
    }
}
