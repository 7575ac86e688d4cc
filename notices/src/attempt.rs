//! What one delivery attempt came to, whatever the channel.

use std::time::Duration;

/// The result of one attempt, classified for the retry logic.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum AttemptOutcome {
    /// The receiver accepted the notice.
    Delivered,
    /// Worth trying again: network errors, timeouts, 5xx, 408, 429, SMTP
    /// 4xx replies, a secret that is not (yet) available.
    Transient {
        reason: String,
        /// The receiver's `Retry-After`, when it sent one.
        retry_after: Option<Duration>,
    },
    /// Trying again cannot help: 4xx other than 408/429, a refused
    /// redirect, a malformed address, an SMTP 5xx reply.
    Permanent { reason: String },
}

impl AttemptOutcome {
    pub(crate) fn transient(reason: impl Into<String>) -> AttemptOutcome {
        AttemptOutcome::Transient {
            reason: reason.into(),
            retry_after: None,
        }
    }

    pub(crate) fn permanent(reason: impl Into<String>) -> AttemptOutcome {
        AttemptOutcome::Permanent {
            reason: reason.into(),
        }
    }
}

/// An error and its causes on one line ("error sending request: tcp
/// connect error: Connection refused"), the way an operator wants to read
/// it in a report.
pub(crate) fn error_chain(err: &dyn std::error::Error) -> String {
    let mut text = err.to_string();
    let mut source = err.source();
    while let Some(cause) = source {
        let cause_text = cause.to_string();
        if !text.contains(&cause_text) {
            text.push_str(": ");
            text.push_str(&cause_text);
        }
        source = cause.source();
    }
    text
}
