//! What a worker tells the daemon: one JSON object per line on stdout.
//!
//! stdout carries nothing else (logs go to stderr), so the daemon can parse every line. A line
//! that does not parse is kept as a log line, never treated as a message.

use serde::{Deserialize, Serialize};

/// Exit status of a worker that finished or was interrupted cleanly.
pub const EXIT_OK: i32 = 0;
/// Exit status of a worker whose job can never succeed as written (bad input, bad model).
pub const EXIT_JOB_FAILED: i32 = 3;
/// Exit status of a worker that ran out of (GPU) memory.
pub const EXIT_OUT_OF_MEMORY: i32 = 4;
/// Exit status of a worker that could not take the job's lock (another worker has the job).
pub const EXIT_BUSY: i32 = 5;

/// Why a job failed, so the daemon can decide whether a retry can help.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum FailureKind {
    /// An input file cannot be read or decoded: retrying will not help.
    Input,
    /// The model cannot be loaded or run.
    Engine,
    /// Out of memory: retry with offload or fewer frames.
    OutOfMemory,
    /// Disk full, permissions, encoder trouble: may be transient.
    Io,
}

/// The shortest time between two [`WorkerMessage::EngineProgress`] of one worker.
pub const ENGINE_PROGRESS_EVERY: std::time::Duration = std::time::Duration::from_millis(500);

/// One message from the worker.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "event", rename_all = "snake_case")]
pub enum WorkerMessage {
    /// The job is loaded; rendering starts at `next_clip` of `clips_total`.
    Started {
        clips_total: u32,
        next_clip: u32,
        /// Why an existing checkpoint was not used, if one was discarded.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        fresh_reason: Option<String>,
        /// The device the worker was given (`CUDA_VISIBLE_DEVICES`; empty for a CPU slot),
        /// as the worker itself sees it.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        device: Option<String>,
        /// Whether the lease asked for offload (`REELSPOOL_OFFLOAD=1`).
        #[serde(default)]
        offload: bool,
        /// The worker process; a warm worker names the same pid for every job it serves.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        pid: Option<u32>,
        /// Whether the model was loaded for this job (`false`: a warm worker already held it).
        /// `None` for engines that load no model in the worker (command engines).
        #[serde(default, skip_serializing_if = "Option::is_none")]
        model_loaded: Option<bool>,
    },
    /// Clip `index`'s segment is durable. Its carry is checkpointed with it, or with a later
    /// clip under `render.checkpoint_every` > 1 (a crash before then renders it again).
    ///
    /// `secs` is the wall time the clip took on the worker's main thread (render, hand-off
    /// to the encoder, waiting for the clip before it, a checkpoint's serialisation);
    /// `engine_secs` the part of it inside the engine (denoise and decode), so the rest is
    /// what the worker itself costs.
    ClipDone {
        index: u32,
        frames: u32,
        secs: f64,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        engine_secs: Option<f64>,
    },
    /// Something about the job's checkpoints that the daemon records as an event of its own
    /// ([`CheckpointNote::event_name`]).
    Checkpoint {
        note: CheckpointNote,
        clip: u32,
        detail: String,
    },
    /// Still alive, inside a long clip.
    Heartbeat,
    /// A command engine's latest `progress` line inside clip `clip` (the worker passes on
    /// at most one every [`ENGINE_PROGRESS_EVERY`]).
    EngineProgress {
        clip: u32,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        step: Option<u64>,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        total: Option<u64>,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        message: Option<String>,
    },
    /// The final video is in place, at `output`.
    Finished {
        output: String,
        duration_secs: f64,
        frames: u64,
        clips: u32,
        /// The job's `output.path`, when a file that appeared there while the job rendered
        /// was kept and `output` is the name beside it instead.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        kept_existing: Option<String>,
    },
    /// Stopped on request after a checkpoint; `next_clip` is where a resume starts.
    Interrupted { next_clip: u32 },
    /// The job failed; the exit status says the same.
    Error { kind: FailureKind, message: String },
    /// A serving worker (`reelspool worker --serve`) is done with its job: `code` is the exit
    /// status a worker of one job would have ended with, and the worker now waits for the next
    /// job, holding `model` (if any) loaded.
    JobEnded {
        code: i32,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        model: Option<String>,
    },
}

/// What a [`WorkerMessage::Checkpoint`] reports.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum CheckpointNote {
    /// The newest checkpoint was unusable (damaged carry, torn file); the job resumed after
    /// the previous one, `clip`.
    Fallback,
    /// The checkpoint of `clip` was not written (no space); the previous one is kept and the
    /// job goes on.
    Skipped,
    /// Clip `clip`, rendered again after a resume, did not come out as the segment already
    /// on disk; the segment was replaced. It never should: it means lost determinism.
    SegmentDiffers,
    /// `checkpoint_every: auto` now checkpoints every so many clips (`detail` says why).
    Cadence,
}

impl CheckpointNote {
    /// The name of the job event the daemon writes for it.
    pub fn event_name(self) -> &'static str {
        match self {
            CheckpointNote::Fallback => "checkpoint_fallback",
            CheckpointNote::Skipped => "checkpoint_skipped",
            CheckpointNote::SegmentDiffers => "segment_differs",
            CheckpointNote::Cadence => "checkpoint_cadence",
        }
    }
}

/// What the daemon tells a serving worker: one JSON object per line on its stdin. Closing
/// stdin tells it to exit.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "command", rename_all = "snake_case")]
pub enum WorkerCommand {
    /// Render this job directory, exactly as `reelspool worker <job-dir>` would.
    Run { job_dir: std::path::PathBuf },
    /// Checkpoint the current job and end it as interrupted, then wait for the next one
    /// (a cancel); SIGTERM instead also ends the worker (a daemon stop).
    Stop,
}

impl WorkerCommand {
    /// The command as one line (without the newline).
    pub fn to_line(&self) -> String {
        // Two plain variants of a path and a unit: encoding cannot fail.
        serde_json::to_string(self).unwrap_or_default()
    }

    /// Parses one line; `None` for anything that is not a command.
    pub fn from_line(line: &str) -> Option<WorkerCommand> {
        serde_json::from_str(line.trim()).ok()
    }
}

/// The stderr line a serving worker writes before the lines of a job, so the daemon can copy
/// each job's lines into that job's `worker.log` and nowhere else; followed by the job's
/// directory.
/// The job's copy of its worker's protocol lines, in `work/`: every message of the current
/// attempt, heartbeats included, so a restarted daemon can re-adopt a worker that outlived its
/// predecessor (its stdout went to the daemon that died) and still hear how the job goes.
pub const MESSAGES_FILE: &str = "worker-messages.jsonl";
/// The lock a worker holds on its job while it renders it (`work/`); it holds the worker's
/// pid, so whoever finds it locked knows which process to watch and signal.
pub const LOCK_FILE: &str = "worker.lock";

pub const LOG_JOB_BEGIN: &str = "\u{1e}reelspool-job-begin ";
/// The stderr line a serving worker writes after the lines of a job.
pub const LOG_JOB_END: &str = "\u{1e}reelspool-job-end";

impl WorkerMessage {
    /// The message as one line (without the newline).
    pub fn to_line(&self) -> String {
        serde_json::to_string(self).unwrap_or_else(|err| {
            format!(r#"{{"event":"error","kind":"io","message":"cannot encode message: {err}"}}"#)
        })
    }

    /// Parses one line; `None` for anything that is not a message.
    pub fn from_line(line: &str) -> Option<WorkerMessage> {
        serde_json::from_str(line.trim()).ok()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn clip_done_line_names_its_event() {
        let line = WorkerMessage::ClipDone {
            index: 3,
            frames: 32,
            secs: 1.5,
            engine_secs: Some(1.25),
        }
        .to_line();
        let value: serde_json::Value = serde_json::from_str(&line).expect("valid JSON");
        assert_eq!(value["event"], "clip_done");
        assert_eq!(value["index"], 3);
    }

    #[test]
    fn messages_survive_a_round_trip() {
        let messages = [
            WorkerMessage::Started {
                clips_total: 5,
                next_clip: 2,
                fresh_reason: None,
                device: Some("GPU-1".into()),
                offload: true,
                pid: Some(42),
                model_loaded: Some(false),
            },
            WorkerMessage::JobEnded {
                code: 3,
                model: Some("builtin:tiny".into()),
            },
            WorkerMessage::Heartbeat,
            WorkerMessage::Interrupted { next_clip: 4 },
            WorkerMessage::Checkpoint {
                note: CheckpointNote::Skipped,
                clip: 6,
                detail: "no space".into(),
            },
            WorkerMessage::Error {
                kind: FailureKind::OutOfMemory,
                message: "CUDA out of memory".into(),
            },
        ];
        for message in messages {
            assert_eq!(WorkerMessage::from_line(&message.to_line()), Some(message));
        }
    }

    #[test]
    fn commands_survive_a_round_trip() {
        for command in [
            WorkerCommand::Run {
                job_dir: "/state/jobs/20261126-1".into(),
            },
            WorkerCommand::Stop,
        ] {
            assert_eq!(WorkerCommand::from_line(&command.to_line()), Some(command));
        }
        assert_eq!(WorkerCommand::from_line("run please"), None);
    }

    #[test]
    fn log_noise_is_not_a_message() {
        assert_eq!(WorkerMessage::from_line("loading weights..."), None);
        assert_eq!(WorkerMessage::from_line(r#"{"event":"unknown"}"#), None);
    }
}
