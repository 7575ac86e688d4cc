//! The GPU side of reelspool: which devices exist, how much a job needs, and where it runs.
//!
//! This crate knows nothing of job files or the daemon: it takes plain numbers and structs,
//! so each part can be tested alone and the daemon wires them together:
//!
//! 1. [`config::PoolConfig`] (the daemon config's `gpu_pool:` section) says where devices
//!    come from; [`discover()`] lists them as [`GpuInfo`]: NVML cards, simulated cards or
//!    CPU slots.
//! 2. [`profile`] turns a model's memory profile (`templates/profiles/*.yaml`) and a job's
//!    size, frames and offload choice into an [`Estimate`] of GPU bytes, host bytes and
//!    seconds per frame, and learns from measured peaks.
//! 3. [`Scheduler`] holds the queue and the cards and decides placements: priority, best fit,
//!    offload only when needed, backfill, aging against starvation, draining failing cards.
//! 4. A [`GpuLease`] is what a worker gets: the environment that shows it exactly its card;
//!    the [`LeaseTable`] persists leases across a daemon restart.
//!
//! Everything here is synchronous and, apart from discovery and the state files, pure: the
//! daemon calls it from its scheduler task.

mod atomic;
pub mod config;
mod discover;
mod error;
mod lease;
pub mod profile;
mod schedule;

pub use discover::{discover, simulated_uuid, GpuInfo, GpuKind, CPU_SLOT_NOMINAL_BYTES, GIB};
pub use error::PoolError;
pub use lease::{GpuLease, LeaseTable};
pub use profile::{
    estimate, load_profiles, Estimate, EstimateRequest, MemoryProfile, OffloadChoice, ProfileSet,
};
pub use schedule::{
    CardState, Demand, OomFallback, Placement, QueuedJob, Refusal, Released, RunOutcome, Scheduler,
    SchedulerPolicy,
};
