//! Logging: human-readable lines on stderr, daily rolling files in the log dir, and the
//! systemd journal when the daemon's stderr is the journal.
//!
//! Events carry structured fields (`job`, `gpu`, `clip`, ...): the journal keeps them as
//! searchable fields (`journalctl -u reelspool JOB=<id>`), the files and stderr print them as
//! `key=value`. Workers log to their stderr only; their supervisor copies it into the job's
//! `worker.log` (see `logs`).

use std::io::IsTerminal;
use std::path::Path;

use tracing_appender::non_blocking::WorkerGuard;
use tracing_appender::rolling::{RollingFileAppender, Rotation};
use tracing_subscriber::layer::SubscriberExt;
use tracing_subscriber::util::SubscriberInitExt;
use tracing_subscriber::{EnvFilter, Layer};

/// How many daily log files are kept in the log dir (today's included).
pub const LOG_FILES_KEPT: usize = 14;

/// Daily files are named `reelspool.YYYY-MM-DD.log`.
const LOG_FILE_PREFIX: &str = "reelspool";
const LOG_FILE_SUFFIX: &str = "log";

/// Keeps the background log writer alive; drop it last so buffered lines are flushed.
pub struct LogGuard {
    _file: Option<WorkerGuard>,
}

fn filter() -> EnvFilter {
    EnvFilter::try_from_env("REELSPOOL_LOG").unwrap_or_else(|_| EnvFilter::new("info"))
}

/// Colours only for a person at a terminal: a worker's stderr is a pipe into `worker.log`, and
/// escape codes there would garble `reelspool logs`.
fn stderr_wants_colour() -> bool {
    std::io::stderr().is_terminal()
}

/// Logging for short commands and workers: stderr only.
pub fn init_stderr() {
    let _ = tracing_subscriber::registry()
        .with(
            tracing_subscriber::fmt::layer()
                .with_writer(std::io::stderr)
                .with_ansi(stderr_wants_colour())
                .with_filter(filter()),
        )
        .try_init();
}

/// The daily rolling files in `log_dir`; creating it also deletes files beyond the retention.
fn daily_files(log_dir: &Path) -> std::io::Result<RollingFileAppender> {
    std::fs::create_dir_all(log_dir)?;
    RollingFileAppender::builder()
        .rotation(Rotation::DAILY)
        .filename_prefix(LOG_FILE_PREFIX)
        .filename_suffix(LOG_FILE_SUFFIX)
        .max_log_files(LOG_FILES_KEPT)
        .build(log_dir)
        .map_err(std::io::Error::other)
}

/// Whether stderr is the journal stream systemd set up for this service.
///
/// `JOURNAL_STREAM` alone is not enough: it is inherited by everything a service starts, also
/// when that process's stderr was redirected elsewhere (a shell script run from a unit, a test
/// harness running inside one). systemd's advice is to compare the device and inode it names
/// with those of stderr itself.
fn stderr_is_journal() -> bool {
    let Some(stream) = std::env::var_os("JOURNAL_STREAM") else {
        return false;
    };
    let Some((device, inode)) = parse_journal_stream(&stream.to_string_lossy()) else {
        return false;
    };
    stderr_identity().is_some_and(|identity| identity == (device, inode))
}

/// Parses `JOURNAL_STREAM`'s `<device>:<inode>`.
fn parse_journal_stream(text: &str) -> Option<(u64, u64)> {
    let (device, inode) = text.split_once(':')?;
    Some((device.trim().parse().ok()?, inode.trim().parse().ok()?))
}

/// Device and inode of whatever file descriptor 2 is.
fn stderr_identity() -> Option<(u64, u64)> {
    use std::os::fd::AsFd;
    identity_of(std::io::stderr().as_fd())
}

/// Device and inode of the file, pipe or socket behind a descriptor.
fn identity_of(fd: std::os::fd::BorrowedFd<'_>) -> Option<(u64, u64)> {
    use std::os::unix::fs::MetadataExt;
    let owned = fd.try_clone_to_owned().ok()?;
    let metadata = std::fs::File::from(owned).metadata().ok()?;
    Some((metadata.dev(), metadata.ino()))
}

/// Logging for the daemon: the journal when stderr is the journal, stderr otherwise, plus daily
/// files in `log_dir`. A log dir that cannot be written is reported and skipped; logging never
/// stops the daemon.
pub fn init_daemon(log_dir: &Path) -> LogGuard {
    let (file_writer, guard) = match daily_files(log_dir) {
        Ok(appender) => {
            let (writer, guard) = tracing_appender::non_blocking(appender);
            (Some(writer), Some(guard))
        }
        Err(err) => {
            eprintln!(
                "reelspool: cannot write logs to {}: {err}; logging to stderr only",
                log_dir.display()
            );
            (None, None)
        }
    };
    let journald = if stderr_is_journal() {
        match tracing_journald::layer() {
            // No `F_` prefix: `journalctl -u reelspool JOB=<id>` finds a job's lines.
            Ok(layer) => Some(layer.with_field_prefix(None)),
            Err(err) => {
                eprintln!("reelspool: cannot reach the journal ({err}); logging to stderr");
                None
            }
        }
    } else {
        None
    };
    let stderr_layer = journald.is_none().then(|| {
        tracing_subscriber::fmt::layer()
            .with_writer(std::io::stderr)
            .with_ansi(stderr_wants_colour())
            .with_filter(filter())
    });
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn journal_stream_names_device_and_inode() {
        assert_eq!(parse_journal_stream("8:12345"), Some((8, 12345)));
        assert_eq!(parse_journal_stream("garbage"), None);
        assert_eq!(parse_journal_stream("8:"), None);
    }

    #[test]
    fn descriptor_identity_is_that_of_the_file_behind_it() {
        use std::os::fd::AsFd;
        use std::os::unix::fs::MetadataExt;
        let dir = tempfile::tempdir().expect("temp dir");
        let path = dir.path().join("stream");
        let file = std::fs::File::create(&path).expect("file");
        let other = std::fs::File::create(dir.path().join("other")).expect("file");
        let by_path = std::fs::metadata(&path).expect("metadata");
        assert_eq!(
            identity_of(file.as_fd()),
            Some((by_path.dev(), by_path.ino()))
        );
        assert_ne!(identity_of(file.as_fd()), identity_of(other.as_fd()));
    }

    #[test]
    fn log_dir_keeps_only_the_newest_files() {
        let dir = tempfile::tempdir().expect("temp dir");
        for day in 1..=20 {
            let name = format!("{LOG_FILE_PREFIX}.2020-01-{day:02}.{LOG_FILE_SUFFIX}");
            std::fs::write(dir.path().join(name), "old\n").expect("old log file");
        }
        std::fs::write(dir.path().join("notes.txt"), "not a log").expect("other file");
        let _appender = daily_files(dir.path()).expect("appender");
        let logs = std::fs::read_dir(dir.path())
            .expect("log dir")
            .filter_map(|entry| entry.ok())
            .filter(|entry| entry.file_name().to_string_lossy().ends_with(".log"))
            .count();
        assert_eq!(logs, LOG_FILES_KEPT);
        assert!(
            dir.path().join("notes.txt").exists(),
            "other files are kept"
        );
    }
}
