//! A worker's stderr, as the daemon keeps it.
//!
//! Every line a worker writes to stderr, in every attempt, is appended to `<job-dir>/worker.log`
//! (by the warm worker's stderr reader locally, by Slurm's `--error` under Slurm), so a job's
//! log is a plain file beside its state; `reelspool logs` and the control socket read it from
//! there. The last lines also travel with the worker's end into the job's events and notices.

/// The worker's stderr, in the job directory.
pub const WORKER_LOG: &str = "worker.log";

/// How many stderr lines of a worker are kept for the job's events and failure notices.
pub const STDERR_TAIL_LINES: usize = 40;
