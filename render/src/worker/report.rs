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

/// Writes protocol lines to stdout; shared with the heartbeat thread, so one line is never
/// interleaved with another.
#[derive(Clone)]
pub(super) struct Reporter {
    out: Arc<Mutex<std::io::Stdout>>,
}

impl Reporter {
    pub(super) fn stdout() -> Reporter {
        Reporter {
            out: Arc::new(Mutex::new(std::io::stdout())),
        }
    }

    pub(super) fn send(&self, message: &WorkerMessage) {
        if let Ok(mut out) = self.out.lock() {
            let _ = writeln!(out, "{}", message.to_line());
            let _ = out.flush();
        }
    }
}
