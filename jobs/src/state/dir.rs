//! A job's folder and the durable writes that keep it consistent through power cuts.
//!
//! The rule from the design: every change is written to a temporary file, fsynced, renamed
//! over the old one, and the folder fsynced, so after a crash a file is either the old
//! version or the new one, never a mix ([`write_atomic`]). The event log is the exception: it
//! only grows, one line per write followed by `fdatasync`, and a line cut short by a crash is
//! dropped when read and cut off before the next append.

use super::{JobEvent, JobState};
use crate::error::{JobsError, StateError};
use crate::spec::JobSpec;
use std::fs::{self, File, OpenOptions};
use std::io::{self, Write};
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};

/// Replaces `path` with `bytes` atomically and durably (temp file in the same folder, fsync,
/// rename, fsync the folder; see the `atomic-write` crate). Temp files start with `.` so
/// folder scans (intake, [`list_jobs`]) skip them.
pub use atomic_write::write_atomic;

/// Makes a folder's entries (new, renamed or removed files) durable.
pub use atomic_write::sync_dir as fsync_dir;

/// Renames `from` to `to` unless `to` exists (`EEXIST` then), atomically.
pub use atomic_write::rename_no_replace;

/// One job's folder under `state/jobs/`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct JobDir {
    root: PathBuf,
}

impl JobDir {
    pub fn new(root: impl Into<PathBuf>) -> JobDir {
        JobDir { root: root.into() }
    }

    pub fn root(&self) -> &Path {
        &self.root
    }

    /// The resolved job, as accepted.
    pub fn job_yaml(&self) -> PathBuf {
        self.root.join("job.yaml")
    }

    /// The current [`JobState`].
    pub fn state_json(&self) -> PathBuf {
        self.root.join("state.json")
    }

    /// The history, one [`JobEvent`] per line.
    pub fn events_jsonl(&self) -> PathBuf {
        self.root.join("events.jsonl")
    }

    /// The worker's files: clip segments, carries, the checkpoint.
    pub fn work_dir(&self) -> PathBuf {
        self.root.join("work")
    }

    /// Created (by `reelspool cancel`) to ask the daemon to cancel the job; its presence is
    /// the request, its content is ignored.
    pub fn cancel_request(&self) -> PathBuf {
        self.root.join("cancel")
    }

    /// Creates the folder and its `work/` folder, durably. The job folder must not exist yet:
    /// two jobs never share a folder, even if ids collided.
    pub fn create(&self) -> Result<(), StateError> {
        fs::create_dir(&self.root).map_err(|e| JobsError::io("create", &self.root, e))?;
        fs::create_dir(self.work_dir()).map_err(|e| JobsError::io("create", self.work_dir(), e))?;
        fsync_dir(&self.root).map_err(|e| JobsError::io("sync", &self.root, e))?;
        if let Some(parent) = self.root.parent().filter(|p| !p.as_os_str().is_empty()) {
            fsync_dir(parent).map_err(|e| JobsError::io("sync", parent, e))?;
        }
        Ok(())
    }

    pub fn load_state(&self) -> Result<JobState, StateError> {
        let path = self.state_json();
        let bytes = fs::read(&path).map_err(|e| JobsError::io("read", &path, e))?;
        serde_json::from_slice(&bytes).map_err(|source| JobsError::CorruptState { path, source })
    }

    pub fn save_state(&self, state: &JobState) -> Result<(), StateError> {
        let path = self.state_json();
        let mut bytes = serde_json::to_vec_pretty(state)
            .map_err(|e| JobsError::io("encode", &path, io::Error::other(e)))?;
        bytes.push(b'\n');
        write_atomic(&path, &bytes).map_err(|e| JobsError::io("write", &path, e))
    }

    /// Reads the resolved job written by [`JobDir::save_spec`].
    pub fn load_spec(&self) -> Result<JobSpec, StateError> {
        let path = self.job_yaml();
        let text = fs::read_to_string(&path).map_err(|e| JobsError::io("read", &path, e))?;
        serde_yaml::from_str(&text).map_err(|source| JobsError::CorruptSpec { path, source })
    }

    /// Writes the resolved job atomically.
    pub fn save_spec(&self, spec: &JobSpec) -> Result<(), StateError> {
        let path = self.job_yaml();
        write_atomic(&path, spec.to_yaml().as_bytes()).map_err(|e| JobsError::io("write", &path, e))
    }

    /// Appends one event as a JSON line and waits until it is on disk. Meant for one writer
    /// (the daemon); a line torn by an earlier crash is cut off first, so it cannot glue
    /// itself to this one.
    pub fn append_event(&self, event: &JobEvent) -> Result<(), StateError> {
        let path = self.events_jsonl();
        let mut line = serde_json::to_vec(event)
            .map_err(|e| JobsError::io("encode", &path, io::Error::other(e)))?;
        line.push(b'\n');
        let is_new = !path.exists();
        let mut file = OpenOptions::new()
            .read(true)
            .append(true)
            .create(true)
            .open(&path)
            .map_err(|e| JobsError::io("open", &path, e))?;
        cut_torn_tail(&file, &path).map_err(|e| JobsError::io("repair", &path, e))?;
        file.write_all(&line)
            .map_err(|e| JobsError::io("append to", &path, e))?;
        file.sync_data()
            .map_err(|e| JobsError::io("sync", &path, e))?;
        if is_new {
            fsync_dir(&self.root).map_err(|e| JobsError::io("sync", &self.root, e))?;
        }
        Ok(())
    }

    /// All events in order. A last line without its line break (a write cut short by a
    /// crash) is skipped; damage anywhere else is an error.
    pub fn read_events(&self) -> Result<Vec<JobEvent>, StateError> {
        let path = self.events_jsonl();
        let bytes = match fs::read(&path) {
            Ok(bytes) => bytes,
            Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(Vec::new()),
            Err(e) => return Err(JobsError::io("read", &path, e)),
        };
        let complete = bytes.ends_with(b"\n");
        let lines: Vec<&[u8]> = bytes.split(|b| *b == b'\n').collect();
        let mut events = Vec::with_capacity(lines.len());
        for (index, line) in lines.iter().enumerate() {
            if line.iter().all(u8::is_ascii_whitespace) {
                continue;
            }
            match serde_json::from_slice::<JobEvent>(line) {
                Ok(event) => events.push(event),
                Err(_) if !complete && index + 1 == lines.len() => {
                    tracing::warn!(path = %path.display(), "skipping a torn last event line");
                }
                Err(source) => {
                    return Err(JobsError::CorruptEvents {
                        path,
                        line: index + 1,
                        source,
                    })
                }
            }
        }
        Ok(events)
    }
}

/// If the file does not end in a line break, truncates it after its last one.
fn cut_torn_tail(file: &File, path: &Path) -> io::Result<()> {
    let len = file.metadata()?.len();
    if len == 0 {
        return Ok(());
    }
    let mut last = [0u8; 1];
    file.read_exact_at(&mut last, len - 1)?;
    if last[0] == b'\n' {
        return Ok(());
    }
    let mut end = len;
    let mut chunk = vec![0u8; 4096];
    let keep = loop {
        if end == 0 {
            break 0;
        }
        let start = end.saturating_sub(chunk.len() as u64);
        let window = &mut chunk[..(end - start) as usize];
        file.read_exact_at(window, start)?;
        if let Some(at) = window.iter().rposition(|b| *b == b'\n') {
            break start + at as u64 + 1;
        }
        end = start;
    };
    tracing::warn!(path = %path.display(), bytes = len - keep, "cutting off a torn event line");
    file.set_len(keep)
}

/// What [`scan_jobs`] found: the jobs it could read and the folders it could not.
#[derive(Debug, Default)]
pub struct JobListing {
    /// Sorted by id, that is by submission time.
    pub jobs: Vec<JobState>,
    pub unreadable: Vec<(PathBuf, StateError)>,
}

/// Reads every job folder under `jobs_dir` (skipping names that start with `.`, which are
/// work in progress). A missing `jobs_dir` has no jobs. Folders without `state.json` yet are
/// skipped silently: the daemon writes it right after creating the folder.
pub fn scan_jobs(jobs_dir: &Path) -> Result<JobListing, StateError> {
    let entries = match fs::read_dir(jobs_dir) {
        Ok(entries) => entries,
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(JobListing::default()),
        Err(e) => return Err(JobsError::io("list", jobs_dir, e)),
    };
    let mut listing = JobListing::default();
    for entry in entries {
        let entry = entry.map_err(|e| JobsError::io("list", jobs_dir, e))?;
        if entry.file_name().to_string_lossy().starts_with('.') {
            continue;
        }
        let is_dir = entry.file_type().map(|t| t.is_dir()).unwrap_or(false);
        if !is_dir {
            continue;
        }
        let dir = JobDir::new(entry.path());
        match dir.load_state() {
            Ok(state) => listing.jobs.push(state),
            Err(JobsError::Io { source, .. }) if source.kind() == io::ErrorKind::NotFound => {}
            Err(err) => listing.unreadable.push((entry.path(), err)),
        }
    }
    listing.jobs.sort_by(|a, b| a.id.cmp(&b.id));
    Ok(listing)
}

/// The readable jobs under `jobs_dir`, sorted by id; unreadable ones are logged and left out.
pub fn list_jobs(jobs_dir: &Path) -> Result<Vec<JobState>, StateError> {
    let listing = scan_jobs(jobs_dir)?;
    for (path, err) in &listing.unreadable {
        tracing::warn!(job = %path.display(), error = %err, "skipping unreadable job");
    }
    Ok(listing.jobs)
}

#[cfg(test)]
mod tests;
