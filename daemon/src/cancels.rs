//! Cancel requests the scheduler can find without looking into every job folder.
//!
//! `reelspool cancel` writes the job's own `cancel` file (the request itself, which the
//! supervisor and the scheduler check for the job they run or are about to start) and then an
//! empty file named after the job in `state/cancel-requests/`. The scheduler lists that one
//! folder on each tick, so a cancel costs the same with 10 or 100,000 jobs in the queue, and
//! removes a marker once the request has been acted on.
//!
//! [`cancel`] is the one way a job is cancelled, whoever asks: `reelspool cancel` run by root or
//! the service user, and the control socket (which the CLI of members and the web server go
//! through). Without a running daemon it cancels the job on the spot instead.

use std::io;
use std::path::{Path, PathBuf};

use anyhow::Context;
use jobs::state::{self, fsync_dir, now_ms, JobDir, JobEvent, JobId, JobState, Phase};

use crate::config::ExecutorConfig;
use crate::executor::slurm;
use crate::spool::try_lock_state;

/// What [`cancel`] did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Cancel {
    /// The job had ended already; nothing was written.
    AlreadyEnded(Phase),
    /// No daemon runs, so the job was cancelled here, with the Slurm job it still had (its id).
    Done { slurm_job: Option<String> },
    /// The request is left for the running daemon's scheduler, which takes a waiting job out of
    /// the queue and asks a running one's worker to stop.
    Requested,
}

/// Cancels `job` (whose folder is `dir`): writes the job's `cancel` file, then either cancels
/// the job here when no daemon runs (this takes the daemon's lock, so none starts meanwhile;
/// under Slurm its batch job is cancelled too) or leaves the marker the scheduler looks for.
/// The caller has found the job and checked that the asker may cancel it.
pub fn cancel(
    state_dir: &Path,
    executor: &ExecutorConfig,
    dir: &JobDir,
    job: &JobState,
) -> anyhow::Result<Cancel> {
    if job.phase.is_terminal() {
        return Ok(Cancel::AlreadyEnded(job.phase));
    }
    state::write_atomic(&dir.cancel_request(), b"cancel\n")
        .with_context(|| format!("cannot write {}", dir.cancel_request().display()))?;
    // Without a daemon nobody else touches the job: cancel it here.
    if let Some(_lock) = try_lock_state(state_dir)? {
        let slurm_job = if executor.is_local() {
            None
        } else {
            // Its batch job runs on in Slurm without the daemon: cancel that too.
            slurm::cancel_recorded(dir.root())?
        };
        let cancelled = mark_cancelled(dir, "cancelled while the daemon was not running")?;
        jobs::index::append_standalone(&state_dir.join(jobs::index::INDEX_FILE), &cancelled)?;
        return Ok(Cancel::Done { slurm_job });
    }
    // The marker is how the scheduler finds the request without reading every job.
    request(state_dir, &job.id).with_context(|| {
        format!(
            "cannot leave the cancel request in {}",
            requests_dir(state_dir).display()
        )
    })?;
    Ok(Cancel::Requested)
}

/// Cancels a job that no worker is running; returns its state as saved.
fn mark_cancelled(dir: &JobDir, reason: &str) -> anyhow::Result<JobState> {
    let mut state = dir.load_state()?;
    if state.phase.is_terminal() {
        return Ok(state);
    }
    state.phase = Phase::Cancelled;
    state.finished_at_ms = Some(now_ms());
    state.eta_secs = None;
    dir.save_state(&state)?;
    let mut fields = serde_json::Map::new();
    fields.insert("reason".into(), reason.into());
    dir.append_event(&JobEvent {
        ts_ms: now_ms(),
        event: "cancelled".into(),
        fields,
    })?;
    Ok(state)
}

/// The folder of markers, under the state dir.
pub fn requests_dir(state_dir: &Path) -> PathBuf {
    state_dir.join("cancel-requests")
}

/// Leaves a marker for `id` (the job's `cancel` file must already exist).
pub fn request(state_dir: &Path, id: &JobId) -> io::Result<()> {
    let dir = requests_dir(state_dir);
    std::fs::create_dir_all(&dir)?;
    std::fs::write(dir.join(id.as_str()), b"")?;
    fsync_dir(&dir)
}

/// The jobs with a marker, oldest id first. A missing folder has none.
pub fn pending(state_dir: &Path) -> io::Result<Vec<JobId>> {
    ids_in(&requests_dir(state_dir))
}

/// The job ids named by the entries of a folder of per-job markers, oldest first; other names
/// (temp files) are skipped, and a missing folder has none.
pub fn ids_in(dir: &Path) -> io::Result<Vec<JobId>> {
    let entries = match std::fs::read_dir(dir) {
        Ok(entries) => entries,
        Err(err) if err.kind() == io::ErrorKind::NotFound => return Ok(Vec::new()),
        Err(err) => return Err(err),
    };
    let mut ids: Vec<JobId> = entries
        .flatten()
        .filter_map(|entry| entry.file_name().to_str()?.parse().ok())
        .collect();
    ids.sort();
    Ok(ids)
}

/// Removes the marker of a request that has been acted on (or can never be).
pub fn clear(state_dir: &Path, id: &JobId) {
    let path = requests_dir(state_dir).join(id.as_str());
    if let Err(err) = std::fs::remove_file(&path) {
        if err.kind() != io::ErrorKind::NotFound {
            tracing::warn!(path = %path.display(), error = %err, "cannot remove a cancel marker");
        }
    }
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;

    #[test]
    fn markers_are_listed_in_id_order_until_cleared() {
        let tmp = tempfile::tempdir().expect("temp dir");
        assert!(pending(tmp.path()).expect("no folder yet").is_empty());
        let late: JobId = "20261123-150102-123-0002".parse().expect("id");
        let early: JobId = "20261123-150102-123-0001".parse().expect("id");
        request(tmp.path(), &late).expect("request");
        request(tmp.path(), &early).expect("request");
        assert_eq!(
            pending(tmp.path()).expect("list"),
            vec![early.clone(), late.clone()]
        );
        clear(tmp.path(), &early);
        clear(tmp.path(), &early);
        assert_eq!(pending(tmp.path()).expect("list"), vec![late]);
    }

    /// A job folder under `state_dir/jobs` whose state is in `phase`, at priority 3.
    pub(crate) fn job_in(state_dir: &Path, phase: &str) -> (JobDir, JobState) {
        let text = format!(
            r#"{{"id":"20261123-150102-123-0007","name":"portrait","phase":"{phase}",
            "priority":3,"source_file":"a.yaml","submitted_at_ms":5}}"#
        );
        let job: JobState = serde_json::from_str(&text).expect("state parses");
        let dir = JobDir::new(state_dir.join("jobs").join(job.id.as_str()));
        std::fs::create_dir_all(dir.root()).expect("job folder");
        dir.save_state(&job).expect("state written");
        (dir, job)
    }

    #[test]
    fn without_a_daemon_the_job_is_cancelled_on_the_spot() {
        let tmp = tempfile::tempdir().expect("temp dir");
        let (dir, job) = job_in(tmp.path(), "queued");
        let done = cancel(tmp.path(), &ExecutorConfig::Local, &dir, &job).expect("cancel");
        assert_eq!(done, Cancel::Done { slurm_job: None });
        assert_eq!(dir.load_state().expect("state").phase, Phase::Cancelled);
        let events = dir.read_events().expect("events");
        assert_eq!(events.last().expect("an event").event, "cancelled");
        assert!(dir.cancel_request().exists());
        assert!(pending(tmp.path()).expect("list").is_empty());
    }

    #[test]
    fn with_a_daemon_the_request_is_left_for_its_scheduler() {
        let tmp = tempfile::tempdir().expect("temp dir");
        let (dir, job) = job_in(tmp.path(), "running");
        let _daemon = try_lock_state(tmp.path())
            .expect("lock")
            .expect("no other holder");
        let done = cancel(tmp.path(), &ExecutorConfig::Local, &dir, &job).expect("cancel");
        assert_eq!(done, Cancel::Requested);
        assert_eq!(dir.load_state().expect("state").phase, Phase::Running);
        assert!(dir.cancel_request().exists());
        assert_eq!(pending(tmp.path()).expect("list"), vec![job.id]);
    }

    #[test]
    fn an_ended_job_is_left_alone() {
        let tmp = tempfile::tempdir().expect("temp dir");
        let (dir, job) = job_in(tmp.path(), "done");
        let done = cancel(tmp.path(), &ExecutorConfig::Local, &dir, &job).expect("cancel");
        assert_eq!(done, Cancel::AlreadyEnded(Phase::Done));
        assert!(!dir.cancel_request().exists());
        assert!(!dir.events_jsonl().exists());
    }
}
