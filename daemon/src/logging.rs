//! Logging: human-readable lines on stderr, daily rolling files in the log dir, and the
//! systemd journal when the daemon runs under systemd.

use std::path::Path;

use tracing_appender::non_blocking::WorkerGuard;
use tracing_subscriber::layer::SubscriberExt;
use tracing_subscriber::util::SubscriberInitExt;
use tracing_subscriber::{EnvFilter, Layer};

/// How many daily log files are kept in the log dir.
pub const LOG_FILES_KEPT: usize = 14;

/// Keeps the background log writer alive; drop it last so buffered lines are flushed.
pub struct LogGuard {
    _file: Option<WorkerGuard>,
}

fn filter() -> EnvFilter {
    EnvFilter::try_from_env("REELSPOOL_LOG").unwrap_or_else(|_| EnvFilter::new("info"))
}

/// Logging for short commands and workers: stderr only.
pub fn init_stderr() {
    let _ = tracing_subscriber::registry()
        .with(
            tracing_subscriber::fmt::layer()
                .with_writer(std::io::stderr)
                .with_filter(filter()),
        )
        .try_init();
}

/// Logging for the daemon: stderr (or the journal under systemd) plus daily files in `log_dir`.
/// A log dir that cannot be written is reported and skipped; logging never stops the daemon.
pub fn init_daemon(log_dir: &Path) -> LogGuard {
    let file_layer = match std::fs::create_dir_all(log_dir).and_then(|()| {
        tracing_appender::rolling::Builder::new()
            .rotation(tracing_appender::rolling::Rotation::DAILY)
            .filename_prefix("reelspool")
            .filename_suffix("log")
            .max_log_files(LOG_FILES_KEPT)
            .build(log_dir)
            .map_err(std::io::Error::other)
    }) {
        Ok(appender) => Some(tracing_appender::non_blocking(appender)),
        Err(err) => {
            eprintln!(
                "reelspool: cannot write logs to {}: {err}; logging to stderr only",
                log_dir.display()
            );
            None
        }
    };
    let (file_writer, guard) = match file_layer {
        Some((writer, guard)) => (Some(writer), Some(guard)),
        None => (None, None),
    };
    let under_systemd = std::env::var_os("JOURNAL_STREAM").is_some();
    let journald = if under_systemd {
        tracing_journald::layer().ok()
    } else {
        None
    };
    let stderr_layer = if journald.is_none() {
        Some(
            tracing_subscriber::fmt::layer()
                .with_writer(std::io::stderr)
                .with_filter(filter()),
        )
    } else {
        None
    };
    let _ = tracing_subscriber::registry()
        .with(stderr_layer)
        .with(journald.map(|layer| layer.with_filter(filter())))
        .with(file_writer.map(|writer| {
            tracing_subscriber::fmt::layer()
                .with_ansi(false)
                .with_writer(writer)
                .with_filter(filter())
        }))
        .try_init();
    LogGuard { _file: guard }
}
