//! Placement: which queued job runs on which card, and when.
//!
//! The scheduler is a plain, synchronous, deterministic state machine: the daemon tells it
//! about jobs (enqueue, cancel), cards (drain, health) and runs (release, OOM), and asks
//! [`Scheduler::next_placements`] what to start. Time is passed in as a `Duration` since any
//! fixed origin, so the same code runs under the daemon's clock, in tests and in the
//! discrete-event simulation of the benchmark.
//!
//! The rules, in order of precedence:
//! - **Order**: jobs that waited longer than [`SchedulerPolicy::max_wait`] first (oldest
//!   first), then higher `priority`, then earlier submission (`seq`).
//! - **Best fit**: a job takes the smallest free card it fits, so big cards stay free for
//!   jobs that need them. A resumed job takes its `preferred_card` instead when that is free
//!   and fits in the same mode; failing that, a free card it fits whose worker already holds
//!   the job's model (a warm worker), the smallest such card first.
//! - **Offload only when needed**: `offload: auto` runs without offload on any free card that
//!   fits; failing that, it may offload on a smaller free card, but only if that finishes
//!   sooner than waiting for a card that fits without offload. "Waiting" is projected from
//!   the running jobs' estimates and the turns of every job ahead in line that cannot start
//!   now. A job waiting this way keeps its place in line for the bigger card.
//! - **Backfill**: a later job may take a card the jobs ahead of it cannot use, or declined as
//!   slower than waiting.
//! - **No starvation**: an aged job goes ahead of everything not aged, so the next card it can
//!   use is offered to it first; no later job can take such a card ahead of it. It declines
//!   an offload card only to wait for a card whose running job is not overdue (has not run
//!   half again as long as its estimate), so it is placed at most one job duration (or 1.5
//!   estimates of a job already running) after aging.

mod pass;
mod projection;
mod queue;

use std::collections::{BTreeSet, HashMap};
use std::time::Duration;

use crate::discover::{GpuInfo, GIB};
use crate::profile::{estimate_modes, suggest_fit, EstimateRequest, MemoryProfile, OffloadChoice};
use queue::JobQueue;

/// What a job needs in one mode: GPU memory and running time.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Demand {
    /// Peak GPU memory (the profile's estimate, margin included).
    pub vram_bytes: u64,
    /// Expected running time of the whole job in this mode.
    pub est: Duration,
    /// Host memory the job holds in this mode (weights streamed from host RAM); 0 when the
    /// profile does not count it. Jobs running side by side share the host's memory.
    pub host_bytes: u64,
}

/// A job waiting for a card.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct QueuedJob {
    /// The job's id, unique among queued and running jobs.
    pub id: String,
    /// Higher runs first.
    pub priority: i32,
    /// Submission order, unique and increasing; a job re-queued after a restart or an OOM
    /// keeps its number so it keeps its place.
    pub seq: u64,
    /// What the job file asked for.
    pub offload: OffloadChoice,
    /// Needs without offload.
    pub no_offload: Demand,
    /// Needs with offload; `None` when the model has no offload mode.
    pub with_offload: Option<Demand>,
    /// Whether an OOM may be answered by re-planning with fewer frames per clip.
    pub may_reduce_frames: bool,
    /// The card the job held before a restart, taken again when free (see `LeaseTable`).
    pub preferred_card: Option<String>,
    /// The model the job runs: among the free cards it fits, one whose worker already holds
    /// this model is taken first (a warm worker: no model load, no kernel compile).
    pub model: Option<String>,
}

impl QueuedJob {
    /// A job of `clips` clips with the settings of `req`, its needs estimated by `profile`.
    pub fn from_profile(
        id: &str,
        priority: i32,
        seq: u64,
        profile: &MemoryProfile,
        req: &EstimateRequest,
        clips: u32,
    ) -> QueuedJob {
        let (plain, offload) = estimate_modes(profile, req.width, req.height, req.frames);
        let frames_total = f64::from(clips) * f64::from(req.frames);
        let demand = |e: &crate::profile::Estimate| Demand {
            vram_bytes: e.vram_bytes,
            est: Duration::from_secs_f64(frames_total * e.secs_per_frame),
            host_bytes: 0,
        };
        QueuedJob {
            id: id.to_string(),
            priority,
            seq,
            offload: req.offload,
            no_offload: demand(&plain),
            with_offload: offload.as_ref().map(demand),
            may_reduce_frames: false,
            preferred_card: None,
            model: None,
        }
    }

    /// The plain mode, if the job allows it.
    fn plain_mode(&self) -> Option<Demand> {
        match (self.offload, self.with_offload) {
            (OffloadChoice::On, Some(_)) => None,
            _ => Some(self.no_offload),
        }
    }

    /// The offload mode, if the job allows it and the model has one.
    fn offload_mode(&self) -> Option<Demand> {
        match self.offload {
            OffloadChoice::Off => None,
            OffloadChoice::On | OffloadChoice::Auto => self.with_offload,
        }
    }

    /// The least GPU memory the job can run with.
    fn min_vram_bytes(&self) -> u64 {
        [self.plain_mode(), self.offload_mode()]
            .into_iter()
            .flatten()
            .map(|d| d.vram_bytes)
            .min()
            .unwrap_or(self.no_offload.vram_bytes)
    }
}

/// A card as the scheduler sees it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CardState {
    pub uuid: String,
    pub memory_total_bytes: u64,
    /// The job running on it.
    pub leased_by: Option<String>,
    /// Taken out of placement by an operator or by repeated failures.
    pub drained: bool,
    /// From discovery; an unhealthy card gets no new jobs.
    pub healthy: bool,
}

impl CardState {
    /// A free card as discovery found it.
    pub fn from_device(device: &GpuInfo) -> CardState {
        CardState {
            uuid: device.uuid.clone(),
            memory_total_bytes: device.memory_total_bytes,
            leased_by: None,
            drained: false,
            healthy: device.healthy,
        }
    }

    fn usable(&self) -> bool {
        self.healthy && !self.drained
    }
}

/// The knobs of placement.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SchedulerPolicy {
    /// A job queued longer than this goes ahead of every job that is not (see the module doc).
    pub max_wait: Duration,
    /// Consecutive failed runs on a card before it is drained.
    pub failure_drain_threshold: u32,
    /// The most queued jobs one decision looks at. Jobs that cannot fit any free card are
    /// skipped without being looked at, so this only bounds runs of jobs that could use a
    /// free card but prefer to wait; it keeps a decision fast whatever the queue holds.
    pub backfill_depth: usize,
}

impl SchedulerPolicy {
    /// The defaults, with the failure threshold of the pool's config.
    pub fn for_pool(config: &crate::config::PoolConfig) -> SchedulerPolicy {
        SchedulerPolicy {
            failure_drain_threshold: config.failure_drain_threshold,
            ..SchedulerPolicy::default()
        }
    }
}

impl Default for SchedulerPolicy {
    fn default() -> Self {
        SchedulerPolicy {
            max_wait: Duration::from_secs(24 * 3600),
            failure_drain_threshold: crate::config::DEFAULT_FAILURE_DRAIN_THRESHOLD,
            backfill_depth: 1024,
        }
    }
}

/// Start this job on this card.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Placement {
    pub job_id: String,
    pub card_uuid: String,
    /// Run the model in offload mode.
    pub offload_used: bool,
    /// The estimate the placement relied on.
    pub vram_bytes: u64,
}

/// Why a job cannot run on this pool, in words a user can act on.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Refusal {
    /// The least GPU memory the job could run with.
    pub estimate_bytes: u64,
    /// The biggest card of the pool.
    pub largest_card_bytes: u64,
    /// What to change in the job file.
    pub suggestion: String,
}

impl Refusal {
    /// Replaces the generic suggestion with a concrete one from the job's profile: a frame
    /// count, a size or a template that fits (see [`suggest_fit`]).
    pub fn with_profile_hint(mut self, profile: &MemoryProfile, req: &EstimateRequest) -> Refusal {
        self.suggestion = suggest_fit(profile, req, self.largest_card_bytes);
        self
    }
}

impl std::fmt::Display for Refusal {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "it needs an estimated {:.1} GiB of GPU memory, but the largest GPU has {:.1} GiB\n  = help: {}",
            self.estimate_bytes as f64 / GIB as f64,
            self.largest_card_bytes as f64 / GIB as f64,
            self.suggestion
        )
    }
}

/// How a run ended, for failure counting.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RunOutcome {
    /// The job finished: the card works, its failure count restarts.
    Finished,
    /// The worker failed (crash, CUDA error): counts toward draining the card.
    Failed,
    /// Stopped on purpose (cancel, shutdown): says nothing about the card.
    Interrupted,
}

/// What [`Scheduler::release`] did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Released {
    pub card_uuid: String,
    /// The card's failed runs in a row, after this one.
    pub consecutive_failures: u32,
    /// This release drained the card (its failures reached the threshold).
    pub drained_now: bool,
}

/// The next thing to try after a job ran out of GPU memory.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum OomFallback {
    /// The job is back in the queue (same place in line) and will run with offload.
    OffloadOn,
    /// The job left the queue; re-estimate it with fewer frames per clip and enqueue it again
    /// with the same `seq`.
    FewerFrames,
    /// Nothing left to try: fail the job.
    GiveUp,
}

#[derive(Debug)]
struct Card {
    state: CardState,
    /// Start and expected end of the running job.
    busy_since: Duration,
    busy_until: Duration,
    consecutive_failures: u32,
    /// The model the card's worker holds loaded, if it has one.
    warm_model: Option<String>,
}

#[derive(Debug)]
struct Running {
    /// `None` for a lease the scheduler was built with (it knows only the id).
    job: Option<QueuedJob>,
    card: usize,
    offload_used: bool,
    enqueued_at: Duration,
}

/// Queued jobs, cards and running jobs; see the module doc for the rules.
#[derive(Debug)]
pub struct Scheduler {
    policy: SchedulerPolicy,
    cards: Vec<Card>,
    by_uuid: HashMap<String, usize>,
    /// Card indexes in ascending (memory, index) order.
    by_memory: Vec<usize>,
    /// `memory_of_position[p]` = memory of `by_memory[p]`, for binary search.
    memory_of_position: Vec<u64>,
    position_of: Vec<usize>,
    /// Distinct card sizes, ascending.
    tier_bytes: Vec<u64>,
    /// Usable cards without a job, as (memory, card index).
    free: BTreeSet<(u64, usize)>,
    queue: JobQueue,
    running: HashMap<String, Running>,
    /// The host's memory that jobs' `host_bytes` share; `None`: not a placement resource.
    host_memory_bytes: Option<u64>,
}

mod control;
#[cfg(test)]
mod proptests;
#[cfg(test)]
mod tests;
