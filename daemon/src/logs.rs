//! `reelspool logs ID [--follow]`: what a job's worker wrote to stderr.
//!
//! The supervisor appends every stderr line of every attempt to `<job-dir>/worker.log`, so the
//! log of a job is a plain file beside its state, readable without a daemon. `--follow` polls
//! it until the job reaches a terminal state: a CLI that checks five times a second costs
//! nothing, and it needs neither inotify nor a connection to the daemon.

use std::fs::File;
use std::io::{ErrorKind, Read, Seek, SeekFrom, Write};
use std::path::Path;
use std::process::ExitCode;
use std::time::Duration;

use anyhow::{Context, Result};
use jobs::state::JobDir;

use crate::config::{self, DaemonConfig};
use crate::jobview;
use crate::worker_log::WORKER_LOG;

/// How often `--follow` looks for new lines and for the job's end.
const FOLLOW_POLL: Duration = Duration::from_millis(200);

pub fn run(config_flag: Option<&Path>, wanted: &str, follow: bool) -> Result<ExitCode> {
    let config = DaemonConfig::load(&config::config_path(config_flag))?;
    if crate::control::must_ask_daemon(&config.state_dir) {
        let mut out = std::io::stdout().lock();
        return match crate::control::logs(&config.spool_dir, wanted, follow, &mut out) {
            Ok(()) => Ok(ExitCode::SUCCESS),
            Err(err) if is_broken_pipe(&err) => Ok(ExitCode::SUCCESS),
            Err(err) => Err(err),
        };
    }
    let jobs_dir = config.state_dir.join("jobs");
    let job = jobview::find_job(&jobs_dir, wanted)?;
    let dir = JobDir::new(jobs_dir.join(job.id.to_string()));
    let log = dir.root().join(WORKER_LOG);
    let mut out = std::io::stdout().lock();
    match print_log(&dir, &log, follow, &mut out) {
        Ok(()) => Ok(ExitCode::SUCCESS),
        // `reelspool logs ID | head` closes the pipe early; that is not an error.
        Err(err) if is_broken_pipe(&err) => Ok(ExitCode::SUCCESS),
        Err(err) => Err(err),
    }
}

fn print_log(dir: &JobDir, log: &Path, follow: bool, out: &mut impl Write) -> Result<()> {
    let mut offset = copy_from(log, 0, out)?;
    if !follow {
        if offset == 0 {
            let state = dir.load_state()?;
            eprintln!(
                "job {} ({}) has no worker output yet",
                state.id,
                state.phase.as_str()
            );
        }
        return Ok(());
    }
    loop {
        // The state is read before the log: lines a worker wrote before its job turned
        // terminal are then always printed before we stop.
        let state = dir.load_state()?;
        offset = copy_from(log, offset, out)?;
        if state.phase.is_terminal() {
            eprintln!("job {} {}", state.id, state.phase.as_str());
            return Ok(());
        }
        std::thread::sleep(FOLLOW_POLL);
    }
}

/// Copies whatever `path` holds past `offset` to `out` and returns the new offset. A missing
/// file copies nothing; a file shorter than `offset` (replaced by hand) is copied from its start.
fn copy_from(path: &Path, offset: u64, out: &mut impl Write) -> Result<u64> {
    let mut file = match File::open(path) {
        Ok(file) => file,
        Err(err) if err.kind() == ErrorKind::NotFound => return Ok(offset),
        Err(err) => return Err(err).with_context(|| format!("cannot read {}", path.display())),
    };
    let len = file
        .metadata()
        .with_context(|| format!("cannot read {}", path.display()))?
        .len();
    let start = if len < offset { 0 } else { offset };
    file.seek(SeekFrom::Start(start))
        .with_context(|| format!("cannot read {}", path.display()))?;
    let mut bytes = Vec::new();
    (&mut file)
        .take(len - start)
        .read_to_end(&mut bytes)
        .with_context(|| format!("cannot read {}", path.display()))?;
    // A character cut in half by the writer is left for the next call.
    let complete = match std::str::from_utf8(&bytes) {
        Ok(_) => bytes.len(),
        Err(err) if err.error_len().is_none() => err.valid_up_to(),
        Err(_) => bytes.len(),
    };
    // The log holds whatever the worker printed, user text included: shown escaped.
    let text = String::from_utf8_lossy(&bytes[..complete]);
    out.write_all(jobs::escape_lines(&text).as_bytes())?;
    out.flush()?;
    Ok(start + complete as u64)
}

fn is_broken_pipe(err: &anyhow::Error) -> bool {
    err.chain().any(|cause| {
        cause
            .downcast_ref::<std::io::Error>()
            .is_some_and(|io| io.kind() == ErrorKind::BrokenPipe)
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn copy_continues_where_the_last_copy_stopped() {
        let dir = tempfile::tempdir().expect("temp dir");
        let log = dir.path().join(WORKER_LOG);
        std::fs::write(&log, "first\n").expect("write log");
        let mut out = Vec::new();
        let offset = copy_from(&log, 0, &mut out).expect("first copy");
        let mut file = std::fs::OpenOptions::new()
            .append(true)
            .open(&log)
            .expect("open log");
        file.write_all(b"second\n").expect("append");
        let offset = copy_from(&log, offset, &mut out).expect("second copy");
        assert_eq!(String::from_utf8(out).expect("utf-8"), "first\nsecond\n");
        assert_eq!(offset, 13);
    }

    #[test]
    fn control_characters_in_the_log_are_shown_as_escapes() {
        let dir = tempfile::tempdir().expect("temp dir");
        let log = dir.path().join(WORKER_LOG);
        let mut raw = "path /out/\u{1b}[2J\u{202e}x\r\nnext\n".as_bytes().to_vec();
        // Half of a two-byte character: held back until the rest is written.
        raw.push(0xc3);
        std::fs::write(&log, &raw).expect("write log");
        let mut out = Vec::new();
        let offset = copy_from(&log, 0, &mut out).expect("copy");
        assert_eq!(offset, raw.len() as u64 - 1);
        assert_eq!(
            String::from_utf8(out).expect("utf-8"),
            "path /out/\\x1b[2J\\u{202e}x\\r\nnext\n"
        );
    }

    #[test]
    fn missing_log_copies_nothing() {
        let dir = tempfile::tempdir().expect("temp dir");
        let mut out = Vec::new();
        let offset = copy_from(&dir.path().join(WORKER_LOG), 0, &mut out).expect("copy");
        assert_eq!(offset, 0);
        assert!(out.is_empty());
    }

    #[test]
    fn shortened_log_is_read_again_from_its_start() {
        let dir = tempfile::tempdir().expect("temp dir");
        let log = dir.path().join(WORKER_LOG);
        std::fs::write(&log, "new\n").expect("write log");
        let mut out = Vec::new();
        let offset = copy_from(&log, 100, &mut out).expect("copy");
        assert_eq!(out, b"new\n");
        assert_eq!(offset, 4);
    }
}
