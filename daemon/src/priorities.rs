//! Priority changes the scheduler can find without looking into every job folder.
//!
//! `reelspool priority ID N` (and the control socket and the HTTP API, which share its logic)
//! writes a small JSON file named after the job in `state/priority-requests/`, durably (temp
//! file, fsync, rename, fsync of the folder), so a request made while the scheduler is busy or
//! the daemon is down is still there for it. The scheduler lists that one folder on each tick,
//! applies the newest number it finds to the job's `state.json`, the queue index and, for a
//! queued job, its place in line, and removes the marker. A second request for the same job
//! before the first is applied replaces it: the last word counts.
//!
//! [`change`] is the one way a priority is changed, whoever asks; without a running daemon it
//! changes the job on the spot instead.

use std::io;
use std::path::{Path, PathBuf};

use jobs::state::{self, now_ms, JobDir, JobEvent, JobId, JobState};
use serde::{Deserialize, Serialize};

use crate::spool::try_lock_state;

/// The range a job file's `priority:` accepts (see `jobs::validate`); a change must stay in it.
pub const MIN: i64 = -1000;
pub const MAX: i64 = 1000;

/// Why a priority change cannot be made.
#[derive(Debug, thiserror::Error)]
pub enum PriorityError {
    #[error("priority {0} is out of range; use a whole number from -1000 to 1000 (higher runs first, 0 is normal)")]
    OutOfRange(i64),
    #[error("job {id} is already {phase}; the priority of a finished job cannot change")]
    Finished { id: JobId, phase: String },
    #[error("cannot leave the priority request in {path}: {source}")]
    Write {
        path: PathBuf,
        #[source]
        source: io::Error,
    },
}

/// Checks `priority` is in the job file's range.
pub fn check_range(priority: i64) -> Result<i32, PriorityError> {
    if (MIN..=MAX).contains(&priority) {
        i32::try_from(priority).map_err(|_| PriorityError::OutOfRange(priority))
    } else {
        Err(PriorityError::OutOfRange(priority))
    }
}

/// Refuses a change to a job that has ended.
pub fn check_not_finished(job: &JobState) -> Result<(), PriorityError> {
    if job.phase.is_terminal() {
        return Err(PriorityError::Finished {
            id: job.id.clone(),
            phase: job.phase.as_str().to_string(),
        });
    }
    Ok(())
}

/// What a marker holds.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct PriorityRequest {
    pub priority: i32,
    /// Who asked, as `name (uid N)`, when known.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub by: Option<String>,
}

/// A marker found in the folder: the job, and what it asks for (or why it cannot be read).
#[derive(Debug)]
pub struct Pending {
    pub id: JobId,
    pub request: Result<PriorityRequest, String>,
    /// The marker's bytes as read, so that [`clear_if_unchanged`] leaves a newer request alone.
    pub bytes: Vec<u8>,
}

/// The folder of markers, under the state dir.
pub fn requests_dir(state_dir: &Path) -> PathBuf {
    state_dir.join("priority-requests")
}

/// Leaves (or replaces) the marker for `id`, durably.
pub fn request(
    state_dir: &Path,
    id: &JobId,
    wanted: &PriorityRequest,
) -> Result<(), PriorityError> {
    let dir = requests_dir(state_dir);
    let write = || -> io::Result<()> {
        std::fs::create_dir_all(&dir)?;
        let mut bytes = serde_json::to_vec(wanted).map_err(io::Error::other)?;
        bytes.push(b'\n');
        state::write_atomic(&dir.join(id.as_str()), &bytes)
    };
    write().map_err(|source| PriorityError::Write { path: dir, source })
}

/// The markers, oldest job id first. A missing folder has none; temp files are skipped.
pub fn pending(state_dir: &Path) -> io::Result<Vec<Pending>> {
    let dir = requests_dir(state_dir);
    Ok(crate::cancels::ids_in(&dir)?
        .into_iter()
        .filter_map(|id| {
            let bytes = std::fs::read(dir.join(id.as_str())).ok()?;
            let request = serde_json::from_slice::<PriorityRequest>(&bytes)
                .map_err(|err| err.to_string())
                .and_then(|request| {
                    check_range(i64::from(request.priority))
                        .map(|_| request)
                        .map_err(|err| err.to_string())
                });
            Some(Pending { id, request, bytes })
        })
        .collect())
}

/// Removes the marker of a request that has been acted on (or can never be), unless a newer
/// request replaced it meanwhile.
pub fn clear_if_unchanged(state_dir: &Path, pending: &Pending) {
    let path = requests_dir(state_dir).join(pending.id.as_str());
    match std::fs::read(&path) {
        Ok(now) if now != pending.bytes => return,
        Err(err) if err.kind() == io::ErrorKind::NotFound => return,
        _ => {}
    }
    if let Err(err) = std::fs::remove_file(&path) {
        if err.kind() != io::ErrorKind::NotFound {
            tracing::warn!(path = %path.display(), error = %err, "cannot remove a priority marker");
        }
    }
}

/// The `priority_changed` event.
pub fn changed_event(from: i32, to: i32, by: Option<&str>) -> JobEvent {
    let mut fields = serde_json::Map::new();
    fields.insert("from".into(), from.into());
    fields.insert("to".into(), to.into());
    if let Some(by) = by {
        fields.insert("by".into(), by.into());
    }
    JobEvent {
        ts_ms: now_ms(),
        event: "priority_changed".into(),
        fields,
    }
}

/// What [`change`] did.
#[derive(Debug)]
pub enum Change {
    /// No daemon runs, so the job was changed here, from this priority.
    Applied { from: i32 },
    /// The request is left for the running daemon's scheduler.
    Requested,
}

/// Changes the priority of `job` (whose folder is `dir`) to `priority` (checked with
/// [`check_range`]) for `by`: refused for a job that has ended; changed here when no daemon
/// runs (under its lock, with the queue index told); otherwise left as a request for the
/// scheduler. The caller has found the job and checked that the asker may change it.
pub fn change(
    state_dir: &Path,
    dir: &JobDir,
    job: &JobState,
    priority: i32,
    by: String,
) -> anyhow::Result<Change> {
    check_not_finished(job)?;
    if let Some(_lock) = try_lock_state(state_dir)? {
        // Without a daemon nobody else touches the job: change it here.
        let (saved, from) = apply_offline(dir, priority, Some(&by))?;
        jobs::index::append_standalone(&state_dir.join(jobs::index::INDEX_FILE), &saved)?;
        return Ok(Change::Applied { from });
    }
    request(
        state_dir,
        &job.id,
        &PriorityRequest {
            priority,
            by: Some(by),
        },
    )?;
    Ok(Change::Requested)
}

/// Changes the job's priority on disk (state.json, then the event) when no daemon runs: the
/// caller holds the state lock. Returns the state as saved and the old priority.
fn apply_offline(
    dir: &JobDir,
    priority: i32,
    by: Option<&str>,
) -> Result<(JobState, i32), jobs::StateError> {
    let mut job = dir.load_state()?;
    let from = job.priority;
    if from != priority {
        job.priority = priority;
        dir.save_state(&job)?;
        dir.append_event(&changed_event(from, priority, by))?;
    }
    Ok((job, from))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::cancels::tests::job_in;

    fn id(text: &str) -> JobId {
        text.parse().expect("id")
    }

    #[test]
    fn the_range_is_the_job_files() {
        assert_eq!(check_range(-1000).expect("low end"), -1000);
        assert_eq!(check_range(1000).expect("high end"), 1000);
        for bad in [1001, -1001, i64::MAX, i64::MIN] {
            let err = check_range(bad).expect_err("out of range").to_string();
            assert!(err.contains(&bad.to_string()), "{err}");
            assert!(err.contains("-1000 to 1000"), "{err}");
        }
    }

    #[test]
    fn a_newer_request_survives_the_clearing_of_an_older_one() {
        let tmp = tempfile::tempdir().expect("temp dir");
        assert!(pending(tmp.path()).expect("no folder yet").is_empty());
        let late = id("20261123-150102-123-0002");
        let early = id("20261123-150102-123-0001");
        let ask = |n: i32| PriorityRequest {
            priority: n,
            by: Some("ben (uid 1002)".into()),
        };
        request(tmp.path(), &late, &ask(5)).expect("request");
        request(tmp.path(), &early, &ask(-7)).expect("request");
        let first = pending(tmp.path()).expect("list");
        let order: Vec<&JobId> = first.iter().map(|p| &p.id).collect();
        assert_eq!(order, vec![&early, &late]);
        assert_eq!(first[0].request.as_ref().expect("readable"), &ask(-7));
        // While the scheduler works on the first list, `late` is asked again.
        request(tmp.path(), &late, &ask(9)).expect("request");
        for seen in &first {
            clear_if_unchanged(tmp.path(), seen);
        }
        let left = pending(tmp.path()).expect("list");
        assert_eq!(left.len(), 1);
        assert_eq!(left[0].id, late);
        assert_eq!(left[0].request.as_ref().expect("readable"), &ask(9));
        clear_if_unchanged(tmp.path(), &left[0]);
        assert!(pending(tmp.path()).expect("list").is_empty());
    }

    #[test]
    fn a_damaged_marker_is_listed_with_its_problem() {
        let tmp = tempfile::tempdir().expect("temp dir");
        let dir = requests_dir(tmp.path());
        std::fs::create_dir_all(&dir).expect("folder");
        std::fs::write(
            dir.join("20261123-150102-123-0003"),
            b"{\"priority\": 5000}",
        )
        .expect("w");
        // A write in progress (write_atomic's temp file) is not a request yet.
        std::fs::write(dir.join(".20261123-150102-123-0004.tmp-1-0"), b"{").expect("w");
        let found = pending(tmp.path()).expect("list");
        assert_eq!(found.len(), 1, "{found:?}");
        let problem = found[0].request.as_ref().expect_err("out of range");
        assert!(problem.contains("5000"), "{problem}");
    }

    #[test]
    fn without_a_daemon_the_priority_changes_on_the_spot() {
        let tmp = tempfile::tempdir().expect("temp dir");
        let (dir, job) = job_in(tmp.path(), "queued");
        let done = change(tmp.path(), &dir, &job, -7, "ben (uid 1002)".into()).expect("change");
        assert!(matches!(done, Change::Applied { from: 3 }), "{done:?}");
        assert_eq!(dir.load_state().expect("state").priority, -7);
        let events = dir.read_events().expect("events");
        let last = events.last().expect("an event");
        assert_eq!(last.event, "priority_changed");
        assert_eq!(last.fields["by"], "ben (uid 1002)");
        assert!(pending(tmp.path()).expect("list").is_empty());
    }

    #[test]
    fn with_a_daemon_the_change_is_left_for_its_scheduler() {
        let tmp = tempfile::tempdir().expect("temp dir");
        let (dir, job) = job_in(tmp.path(), "running");
        let _daemon = try_lock_state(tmp.path())
            .expect("lock")
            .expect("no other holder");
        let done = change(tmp.path(), &dir, &job, 9, "root (uid 0)".into()).expect("change");
        assert!(matches!(done, Change::Requested), "{done:?}");
        assert_eq!(dir.load_state().expect("state").priority, 3);
        let left = pending(tmp.path()).expect("list");
        assert_eq!(left.len(), 1);
        assert_eq!(left[0].request.as_ref().expect("readable").priority, 9);
    }

    #[test]
    fn an_ended_job_keeps_its_priority() {
        let tmp = tempfile::tempdir().expect("temp dir");
        let (dir, job) = job_in(tmp.path(), "failed");
        let err = change(tmp.path(), &dir, &job, 9, "root (uid 0)".into())
            .expect_err("refused")
            .to_string();
        assert!(err.contains("cannot change"), "{err}");
        assert_eq!(dir.load_state().expect("state").priority, 3);
        assert!(pending(tmp.path()).expect("list").is_empty());
    }
}
