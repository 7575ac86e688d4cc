//! What the worker tells the daemon: protocol lines on stdout ([`Reporter`]) and, when a job
//! cannot go on, why ([`Failure`]).

use std::io::Write;
use std::sync::{Arc, Mutex};

use crate::protocol::{FailureKind, WorkerMessage};

/// Why a job failed, with what the daemon needs to decide about retries.
#[derive(Debug)]
pub(super) struct Failure {
    pub(super) kind: FailureKind,
    pub(super) message: String,
}

impl Failure {
    pub(super) fn new(kind: FailureKind, message: impl Into<String>) -> Failure {
        Failure {
            kind,
            message: message.into(),
        }
    }

    /// A failure of `kind` whose message is `err`'s.
    pub(super) fn of(kind: FailureKind) -> impl FnOnce(crate::RenderError) -> Failure {
        move |err| Failure::new(kind, err.to_string())
    }
}

/// Writes protocol lines to stdout, and while a job runs also to its
/// [`crate::protocol::MESSAGES_FILE`]; shared with the heartbeat thread, so one line is never
/// interleaved with another. A stdout whose reader is gone (the daemon died) is no error: the
/// job goes on, and the daemon that re-adopts it reads the file.
#[derive(Clone)]
pub(super) struct Reporter {
    out: Arc<Mutex<Outputs>>,
}

struct Outputs {
    stdout: std::io::Stdout,
    job_file: Option<std::fs::File>,
}

impl Reporter {
    pub(super) fn stdout() -> Reporter {
        Reporter {
            out: Arc::new(Mutex::new(Outputs {
                stdout: std::io::stdout(),
                job_file: None,
            })),
        }
    }

    /// Starts the job's copy of the messages (emptied: it holds the current attempt only).
    pub(super) fn open_job_file(&self, work_dir: &std::path::Path) {
        let path = work_dir.join(crate::protocol::MESSAGES_FILE);
        let file = std::fs::OpenOptions::new()
            .create(true)
            .write(true)
            .truncate(true)
            .open(&path);
        match file {
            Ok(file) => {
                if let Ok(mut out) = self.out.lock() {
                    out.job_file = Some(file);
                }
            }
            Err(err) => tracing::warn!(
                path = %path.display(),
                error = %err,
                "cannot keep the job's copy of the worker messages; a restarted daemon cannot re-adopt this worker"
            ),
        }
    }

    /// Ends the job's copy of the messages.
    pub(super) fn close_job_file(&self) {
        if let Ok(mut out) = self.out.lock() {
            out.job_file = None;
        }
    }

    pub(super) fn send(&self, message: &WorkerMessage) {
        if let Ok(mut out) = self.out.lock() {
            let line = format!("{}\n", message.to_line());
            let _ = out.stdout.write_all(line.as_bytes());
            let _ = out.stdout.flush();
            if let Some(file) = out.job_file.as_mut() {
                // One write of the whole line, so a reader never sees half of one but the
                // last (which it skips until it is whole).
                let _ = file.write_all(line.as_bytes());
            }
        }
    }
}
