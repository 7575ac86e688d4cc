//! The job state the daemon keeps on disk and the CLI reads.
//!
//! Each accepted job has a folder `state/jobs/<id>/` ([`JobDir`]) with the resolved
//! `job.yaml`, a `state.json` that is rewritten whole on every change ([`JobState`], written
//! atomically), and an append-only `events.jsonl` ([`JobEvent`]) that keeps the history. Like
//! pueue's state, the snapshot is one plain struct: restoring after a crash is "read the
//! file", with no log replay needed. Unknown fields are ignored and missing optional ones take
//! defaults, so files written by an older or newer reelspool still load.

mod dir;
mod id;

use crate::spec::JobSpec;
use serde::{Deserialize, Serialize};
use serde_json::{Map, Value};
use std::fmt;
use std::path::PathBuf;
use std::time::{SystemTime, UNIX_EPOCH};

pub use dir::{
    fsync_dir, list_jobs, rename_no_replace, scan_jobs, write_atomic, JobDir, JobListing,
};
pub use id::{civil_date, JobId};

/// Milliseconds since the Unix epoch, the unit of every timestamp in job state (0 if the
/// clock reads before 1970).
pub fn now_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX))
        .unwrap_or(0)
}

/// Where a job is in its life.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Phase {
    Queued,
    Running,
    Done,
    Failed,
    Cancelled,
}

impl Phase {
    /// A terminal job never runs again (a retry is a new attempt of a `Running` job, decided
    /// before it would turn `Failed`).
    pub fn is_terminal(self) -> bool {
        matches!(self, Phase::Done | Phase::Failed | Phase::Cancelled)
    }

    pub fn as_str(self) -> &'static str {
        match self {
            Phase::Queued => "queued",
            Phase::Running => "running",
            Phase::Done => "done",
            Phase::Failed => "failed",
            Phase::Cancelled => "cancelled",
        }
    }
}

impl fmt::Display for Phase {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// The snapshot of one job, as `state.json` holds it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct JobState {
    pub id: JobId,
    pub name: String,
    pub phase: Phase,
    #[serde(default)]
    pub priority: i32,
    /// The file name it was submitted as, for messages and `status`.
    #[serde(default)]
    pub source_file: String,
    pub submitted_at_ms: u64,
    #[serde(default)]
    pub started_at_ms: Option<u64>,
    #[serde(default)]
    pub finished_at_ms: Option<u64>,
    /// The GPU (UUID) of the current or last attempt.
    #[serde(default)]
    pub gpu: Option<String>,
    #[serde(default)]
    pub clips_done: u32,
    /// Known once the audio length is known (for `num_clip: auto`).
    #[serde(default)]
    pub clips_total: Option<u32>,
    /// Attempts started so far, the first included.
    #[serde(default)]
    pub attempts: u32,
    /// How many attempts in a row ended without making a new clip durable: an attempt that
    /// checkpointed a new clip resets it to 0, and `retry.max_attempts` bounds it.
    #[serde(default)]
    pub stalled_attempts: u32,
    /// How many evictions in a row (attempts ended by a death the job did not cause: a kill
    /// the daemon did not send with no sign of an OOM kill, or the daemon's own restart) made
    /// no new clip durable; progress resets it, and `retry.max_evictions` bounds it.
    #[serde(default)]
    pub stalled_evictions: u32,
    /// Durable clips when the current attempt started, kept so that a daemon restarted during
    /// the attempt can still tell whether it made progress.
    #[serde(default)]
    pub durable_at_attempt_start: Option<u32>,
    /// A queued job waiting out its retry backoff starts no earlier than this (ms since the
    /// epoch); `None` when it may run at once.
    #[serde(default)]
    pub retry_at_ms: Option<u64>,
    /// The finished video.
    #[serde(default)]
    pub output: Option<PathBuf>,
    /// Why the job failed, for people.
    #[serde(default)]
    pub error: Option<String>,
    #[serde(default)]
    pub eta_secs: Option<f64>,
    #[serde(default)]
    pub vram_estimate_bytes: Option<u64>,
    /// Who dropped the job file (its owner at intake) and their groups then; the job reads
    /// and writes only what they may. Absent in state written before owners were recorded.
    #[serde(default)]
    pub owner: Option<crate::access::Person>,
    /// The batch the job was filed with (one job per row of a batch file), by the batch's id.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub batch: Option<JobId>,
    /// The allowed root each of the job's paths lay under at intake; the worker reaches the
    /// files from there without following symlinks ([`crate::reach`]). Absent in state
    /// written before roots were kept: the paths are then walked from `/`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub roots: Option<crate::reach::JobRoots>,
    /// Forward-compatible extras (per-clip timings, the video's duration, ...).
    #[serde(default)]
    pub details: Map<String, Value>,
}

impl JobState {
    /// The state of a job just accepted from `source_file`.
    pub fn queued(id: JobId, spec: &JobSpec, source_file: &str, submitted_at_ms: u64) -> JobState {
        JobState {
            id,
            name: spec.name.clone(),
            phase: Phase::Queued,
            priority: spec.priority,
            source_file: source_file.to_string(),
            submitted_at_ms,
            started_at_ms: None,
            finished_at_ms: None,
            gpu: None,
            clips_done: 0,
            clips_total: None,
            attempts: 0,
            stalled_attempts: 0,
            stalled_evictions: 0,
            durable_at_attempt_start: None,
            retry_at_ms: None,
            output: None,
            error: None,
            eta_secs: None,
            vram_estimate_bytes: None,
            owner: None,
            batch: None,
            roots: None,
            details: Map::new(),
        }
    }
}

/// One line of `events.jsonl`: when, what, and whatever fields that event carries.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct JobEvent {
    pub ts_ms: u64,
    pub event: String,
    /// The event's own fields, written beside `ts_ms` and `event` (which are therefore
    /// reserved names).
    #[serde(flatten)]
    pub fields: Map<String, Value>,
}

impl JobEvent {
    /// An event happening now, with no fields yet.
    pub fn new(event: impl Into<String>) -> JobEvent {
        JobEvent {
            ts_ms: now_ms(),
            event: event.into(),
            fields: Map::new(),
        }
    }

    /// Adds a field; `key` must not be `ts_ms` or `event`.
    pub fn with(mut self, key: &str, value: impl Into<Value>) -> JobEvent {
        debug_assert!(
            key != "ts_ms" && key != "event",
            "`{key}` is a reserved JobEvent field"
        );
        self.fields.insert(key.to_string(), value.into());
        self
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn terminal_phases_are_done_failed_cancelled() {
        let terminal: Vec<Phase> = [
            Phase::Queued,
            Phase::Running,
            Phase::Done,
            Phase::Failed,
            Phase::Cancelled,
        ]
        .into_iter()
        .filter(|p| p.is_terminal())
        .collect();
        assert_eq!(terminal, vec![Phase::Done, Phase::Failed, Phase::Cancelled]);
    }

    #[test]
    fn phase_serializes_lowercase() {
        assert_eq!(
            serde_json::to_string(&Phase::Cancelled).ok().as_deref(),
            Some("\"cancelled\"")
        );
    }

    #[test]
    fn state_loads_with_only_required_fields_and_unknown_extras() {
        let text = r#"{"id":"20261123-150102-123-0001","name":"a","phase":"queued",
            "submitted_at_ms":5,"from_the_future":true}"#;
        let state: JobState = serde_json::from_str(text).expect("older/newer state must load");
        assert_eq!(state.phase, Phase::Queued);
        assert_eq!(state.clips_done, 0);
        assert_eq!(state.gpu, None);
        assert_eq!(state.owner, None, "state from before owners were recorded");
    }

    #[test]
    fn event_fields_sit_beside_event_name() {
        let event = JobEvent {
            ts_ms: 7,
            event: "clip_done".to_string(),
            fields: Map::new(),
        }
        .with("index", 3);
        let line = serde_json::to_string(&event).expect("events serialize");
        assert_eq!(line, r#"{"ts_ms":7,"event":"clip_done","index":3}"#);
        let back: JobEvent = serde_json::from_str(&line).expect("and parse back");
        assert_eq!(back, event);
    }
}
