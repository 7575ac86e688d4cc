//! The crate's one error type.
//!
//! Two families of failure share it: a job or template file that cannot be accepted (with
//! diagnostics that point into the file), and job state on disk that cannot be read or
//! written (with the path and what was being done). The names [`JobFileError`] and
//! [`StateError`] say which family a function can return; both are this enum.

use crate::diag::{render_all, Diagnostic};
use std::io;
use std::path::PathBuf;

#[derive(Debug, thiserror::Error)]
pub enum JobsError {
    /// The file's content is not an acceptable job; never empty.
    #[error("{}", render_all(.0))]
    Invalid(Vec<Diagnostic>),

    #[error("cannot read job file {}: {source}\n  = help: check that the file still exists and the daemon's user may read it", path.display())]
    ReadJobFile { path: PathBuf, source: io::Error },

    /// A job's owner may not use a path the job names (see [`crate::access`]).
    #[error("{who} lacks {right} permission on {}", path.display())]
    AccessDenied {
        who: String,
        right: crate::access::Right,
        path: PathBuf,
    },

    /// A path a job names no longer leads where intake checked it would (see
    /// [`crate::reach`]): a folder on the way became a symlink, or the file is gone.
    #[error("{key} {}: {changed}\n  = help: a job's files are reached from its allowed root without following symbolic links; put the real folder back and submit the job again", path.display())]
    PathChanged {
        key: String,
        path: PathBuf,
        changed: io::Error,
    },

    #[error("cannot {action} {}: {source}", path.display())]
    Io {
        /// What was being done, as a verb phrase: "write", "read", "list", "create".
        action: &'static str,
        path: PathBuf,
        source: io::Error,
    },

    #[error("job state {} is damaged: {source}\n  = help: restore it from the job's events.jsonl or remove the job folder", path.display())]
    CorruptState {
        path: PathBuf,
        source: serde_json::Error,
    },

    #[error("job events {} are damaged at line {line}: {source}", path.display())]
    CorruptEvents {
        path: PathBuf,
        line: usize,
        source: serde_json::Error,
    },

    #[error("`{text}` is not a job id\n  = help: job ids look like 20261123-150102-123-0001 (letters, digits and `-`)")]
    InvalidJobId { text: String },

    #[error("resolved job {} cannot be read: {source}\n  = help: this file is written by the daemon; it was changed by hand or by another version", path.display())]
    CorruptSpec {
        path: PathBuf,
        source: serde_yaml::Error,
    },
}

/// Errors from reading and checking a job file.
pub type JobFileError = JobsError;
/// Errors from the job state on disk.
pub type StateError = JobsError;

impl JobsError {
    /// The full report, as a compiler would print it; the same text as `Display`.
    pub fn report(&self) -> String {
        self.to_string()
    }

    /// The positioned problems when the file was rejected for its content; empty otherwise.
    pub fn diagnostics(&self) -> &[Diagnostic] {
        match self {
            JobsError::Invalid(diagnostics) => diagnostics,
            _ => &[],
        }
    }

    pub(crate) fn io(
        action: &'static str,
        path: impl Into<PathBuf>,
        source: io::Error,
    ) -> JobsError {
        JobsError::Io {
            action,
            path: path.into(),
            source,
        }
    }
}
