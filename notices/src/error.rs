//! The one error type of the crate.
//!
//! Failures to *deliver* a notice are not errors of this type: they are
//! outcomes, recorded in the outbox and reported through
//! [`crate::DeliveryReport`]. `NoticeError` is for what the caller must act
//! on: a state directory that cannot be written, a bad configuration, a
//! broken template, a webhook URL refused at enqueue time.

use std::path::PathBuf;

/// What went wrong, with the path or setting involved and what to do.
#[derive(Debug, thiserror::Error)]
pub enum NoticeError {
    /// A file or directory of the outbox (or a template, or a credential)
    /// could not be read or written.
    #[error("cannot {action} {path}: {source}; check that the path exists and is writable by the daemon's user")]
    Io {
        /// What we were doing, as a verb phrase ("create the outbox directory").
        action: &'static str,
        /// The file or directory involved.
        path: PathBuf,
        /// The OS error.
        #[source]
        source: std::io::Error,
    },

    /// An outbox record exists but is not a record we can read. Records are
    /// written atomically, so this means someone edited or truncated it.
    #[error("outbox record {path} is unreadable ({source}); move it out of the outbox and deliver the notice by hand if it matters")]
    CorruptRecord {
        /// The record file.
        path: PathBuf,
        /// Why it does not parse.
        #[source]
        source: serde_json::Error,
    },

    /// A webhook URL that we refuse to call. The URL in the message is
    /// redacted to scheme, host and port: paths of incoming-webhook URLs are
    /// often secret tokens.
    #[error("webhook URL {url}: {reason}")]
    WebhookUrl {
        /// The redacted URL.
        url: String,
        /// Why it is refused and what to use instead.
        reason: String,
    },

    /// A notice template does not parse.
    #[error("notice template {path}:{line}: {message}")]
    Template {
        /// The template file (`<built-in>/name` for the shipped defaults).
        path: PathBuf,
        /// The 1-based line of the problem.
        line: usize,
        /// What is wrong and how to fix it.
        message: String,
    },

    /// A setting of the notice configuration is invalid.
    #[error("notices config `{field}`: {message}")]
    Config {
        /// The setting, as spelled in the config file.
        field: &'static str,
        /// What is wrong and what is expected.
        message: String,
    },

    /// The HTTP client for webhooks could not be built (TLS backend setup).
    #[error("cannot build the webhook HTTP client: {0}")]
    HttpClient(#[source] reqwest::Error),
}
