//! The spool directory and the state directory, as the daemon lays them out.
//!
//! ```text
//! spool/tmp/         writers create files here ...
//! spool/incoming/    ... and rename them in (or write in place and close)
//! spool/processing/  <id>--<name>: claimed by intake, not yet a job nor rejected
//! spool/rejected/    <name> and <name>.error
//! state/jobs/<id>/   job.yaml, state.json, events.jsonl, source.yaml, work/
//! state/jobs/.tmp-<id>/  a job being assembled; renamed to <id> once durable
//! ```
//!
//! `processing/` is what makes intake crash-safe. A file is first renamed out of `incoming/`
//! (atomic, same directory tree), so a restart cannot pick it up twice; it is removed from
//! `processing/` only after its job directory has been renamed into place and synced. After a
//! crash, a claim whose job directory exists is finished business and is dropped; any other claim
//! is processed again under the id it already has. Nothing is lost and nothing is doubled.
//!
//! Two things every front end shares live here too: delivering a job file into a spool the way
//! `reelspool submit` does, and `state/daemon.lock`, which a running daemon holds (a command
//! that takes it knows no daemon runs and may change job files itself).

use std::io::{self, Write};
use std::path::{Path, PathBuf};

use anyhow::{bail, Context};
use jobs::state;

/// Every directory the daemon writes to.
#[derive(Debug, Clone)]
pub struct Layout {
    pub spool_tmp: PathBuf,
    pub incoming: PathBuf,
    pub processing: PathBuf,
    pub rejected: PathBuf,
    pub jobs: PathBuf,
    pub state_dir: PathBuf,
}

/// The separator between the job id and the original file name in `processing/`.
pub const CLAIM_SEPARATOR: &str = "--";

impl Layout {
    pub fn new(spool_dir: &Path, state_dir: &Path) -> Layout {
        Layout {
            spool_tmp: spool_dir.join("tmp"),
            incoming: spool_dir.join("incoming"),
            processing: spool_dir.join("processing"),
            rejected: spool_dir.join("rejected"),
            jobs: state_dir.join("jobs"),
            state_dir: state_dir.to_path_buf(),
        }
    }

    /// Creates every directory that is missing.
    pub fn create(&self) -> io::Result<()> {
        for dir in [
            &self.spool_tmp,
            &self.incoming,
            &self.processing,
            &self.rejected,
            &self.jobs,
        ] {
            std::fs::create_dir_all(dir)?;
        }
        Ok(())
    }

    pub fn job_dir(&self, id: &str) -> PathBuf {
        self.jobs.join(id)
    }

    /// Where a job is assembled before it becomes visible.
    pub fn staging_dir(&self, id: &str) -> PathBuf {
        self.jobs.join(format!(".tmp-{id}"))
    }

    pub fn claim_path(&self, id: &str, original_name: &str) -> PathBuf {
        self.processing
            .join(format!("{id}{CLAIM_SEPARATOR}{original_name}"))
    }
}

/// Splits a claim file name into (job id, original name).
pub fn parse_claim_name(file_name: &str) -> Option<(&str, &str)> {
    let (id, original) = file_name.split_once(CLAIM_SEPARATOR)?;
    if id.is_empty() || original.is_empty() {
        return None;
    }
    Some((id, original))
}

/// Whether a file in `incoming/` is one intake should ever look at: dot-files (editors' swap
/// files, rsync's temporaries) and `*.tmp` are a writer's business, not ours.
pub fn is_candidate_name(file_name: &str) -> bool {
    !file_name.starts_with('.') && !file_name.ends_with(".tmp") && !file_name.is_empty()
}

/// Flushes everything written on the file system that holds `dir`.
///
/// Intake writes hundreds of small files per batch; one `syncfs` makes them all durable at the
/// cost of a single flush, where an `fsync` per file would cost a disk round trip each (about
/// 1.5 ms here, so 10,000 jobs would need most of a minute).
pub fn sync_filesystem(dir: &Path) -> io::Result<()> {
    use std::os::fd::AsRawFd;
    let handle = std::fs::File::open(dir)?;
    // SAFETY: `syncfs` only reads the descriptor, which stays open for the whole call.
    let rc = unsafe { libc::syncfs(handle.as_raw_fd()) };
    if rc == 0 {
        Ok(())
    } else {
        Err(io::Error::last_os_error())
    }
}

/// Writes into `tmp/`, then renames into `incoming/` without replacing a file already waiting
/// there under the same name (a `-2`, `-3`, ... suffix is added instead).
pub fn deliver_to_spool(spool_dir: &Path, file: &Path, bytes: &[u8]) -> anyhow::Result<PathBuf> {
    let tmp_dir = spool_dir.join("tmp");
    let incoming = spool_dir.join("incoming");
    if !incoming.is_dir() {
        bail!(
            "{} is not a spool (no incoming/ directory); is the daemon configured with this spool_dir?",
            spool_dir.display()
        );
    }
    std::fs::create_dir_all(&tmp_dir)
        .with_context(|| format!("cannot create {}", tmp_dir.display()))?;
    let stem = file
        .file_stem()
        .and_then(|stem| stem.to_str())
        .filter(|stem| !stem.is_empty() && !stem.starts_with('.'))
        .unwrap_or("job");
    let tmp_path = tmp_dir.join(format!("{stem}.{}.tmp", std::process::id()));
    let written = std::fs::File::create(&tmp_path).and_then(|mut out| {
        out.write_all(bytes)?;
        out.sync_all()
    });
    if let Err(err) = written {
        // Nothing half-written stays in the spool (a full disk is the usual reason).
        let _ = std::fs::remove_file(&tmp_path);
        return Err(err).with_context(|| {
            format!(
                "cannot write the job into the spool at {}; nothing was submitted",
                tmp_path.display()
            )
        });
    }
    for attempt in 1..1000u32 {
        let name = if attempt == 1 {
            format!("{stem}.yaml")
        } else {
            format!("{stem}-{attempt}.yaml")
        };
        let target = incoming.join(&name);
        match state::rename_no_replace(&tmp_path, &target) {
            Ok(()) => {
                state::fsync_dir(&incoming)?;
                return Ok(target);
            }
            Err(err) if err.kind() == std::io::ErrorKind::AlreadyExists => continue,
            Err(err) => {
                let _ = std::fs::remove_file(&tmp_path);
                return Err(err)
                    .with_context(|| format!("cannot move job into {}", incoming.display()));
            }
        }
    }
    let _ = std::fs::remove_file(&tmp_path);
    bail!(
        "too many files named {stem}*.yaml waiting in {}",
        incoming.display()
    )
}

/// Name of the lock file that marks a running daemon in the state dir.
const LOCK_FILE: &str = "daemon.lock";

/// Takes the daemon lock without waiting; `None` when another process holds it.
pub fn try_lock_state(state_dir: &Path) -> anyhow::Result<Option<std::fs::File>> {
    use std::os::fd::AsRawFd;
    std::fs::create_dir_all(state_dir)
        .with_context(|| format!("cannot create state dir {}", state_dir.display()))?;
    let path = state_dir.join(LOCK_FILE);
    let file = std::fs::OpenOptions::new()
        .create(true)
        .truncate(false)
        .write(true)
        .open(&path)
        .with_context(|| format!("cannot open {}", path.display()))?;
    // SAFETY: flock only reads the descriptor, which lives as long as `file`.
    let rc = unsafe { libc::flock(file.as_raw_fd(), libc::LOCK_EX | libc::LOCK_NB) };
    if rc == 0 {
        Ok(Some(file))
    } else {
        let err = std::io::Error::last_os_error();
        if err.raw_os_error() == Some(libc::EWOULDBLOCK) {
            Ok(None)
        } else {
            Err(err).with_context(|| format!("cannot lock {}", path.display()))
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn claim_name_splits_at_first_separator() {
        assert_eq!(
            parse_claim_name("20261123-1--my--job.yaml"),
            Some(("20261123-1", "my--job.yaml"))
        );
        assert_eq!(parse_claim_name("no-separator.yaml"), None);
    }

    #[test]
    fn dot_files_and_tmp_files_are_not_candidates() {
        assert!(!is_candidate_name(".job.yaml.swp"));
        assert!(!is_candidate_name("job.yaml.tmp"));
        assert!(is_candidate_name("job.yaml"));
    }

    #[test]
    fn delivery_never_replaces_a_waiting_file() {
        let spool = tempfile::tempdir().expect("temp dir");
        std::fs::create_dir_all(spool.path().join("incoming")).expect("incoming");
        let first = deliver_to_spool(spool.path(), Path::new("/x/job.yaml"), b"a: 1\n")
            .expect("first delivery");
        let second = deliver_to_spool(spool.path(), Path::new("/x/job.yaml"), b"a: 2\n")
            .expect("second delivery");
        assert_ne!(first, second);
        assert_eq!(std::fs::read(&first).expect("first file"), b"a: 1\n");
        assert_eq!(std::fs::read(&second).expect("second file"), b"a: 2\n");
        let leftovers = std::fs::read_dir(spool.path().join("tmp"))
            .expect("tmp dir")
            .count();
        assert_eq!(leftovers, 0, "tmp/ must be empty after delivery");
    }
}
