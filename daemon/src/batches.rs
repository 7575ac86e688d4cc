//! Batches: the jobs filed together from one batch file (one job per row), and what they add
//! up to.
//!
//! Intake writes a batch's record, `state/batches/<batch-id>.json`, after every row's job
//! folder is staged and synced and before any of them is published: the record is the commit
//! point. A crash before it leaves no job of the batch (the claim is filed again from
//! scratch); a crash after it is rolled forward at the next start ([`members_to_publish`]),
//! so a batch is filed whole or not at all. Each job names its batch (`JobState::batch`);
//! the batch's progress is read from its jobs' own state, never kept twice.

use std::path::{Path, PathBuf};

use anyhow::Context;
use jobs::state::{self, JobDir, JobId, JobState, Phase};
use serde::{Deserialize, Serialize};

/// The folder of batch records, under the state dir.
pub fn records_dir(state_dir: &Path) -> PathBuf {
    state_dir.join("batches")
}

fn record_path(state_dir: &Path, id: &str) -> PathBuf {
    records_dir(state_dir).join(format!("{id}.json"))
}

/// One batch as filed.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct BatchRecord {
    pub id: JobId,
    pub name: String,
    /// The batch file's name in the spool.
    pub source_file: String,
    pub submitted_at_ms: u64,
    /// Its jobs, in row order (row 1 first).
    pub jobs: Vec<JobId>,
    /// The CSV file the rows came from, if any.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub csv: Option<PathBuf>,
    /// Whether every job sends its own notices too (`batch.notify_each`).
    #[serde(default)]
    pub notify_each: bool,
    /// When the batch's one end notice was queued; set once.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ended_at_ms: Option<u64>,
}

/// Writes `record` atomically and durably.
pub fn save(state_dir: &Path, record: &BatchRecord) -> std::io::Result<()> {
    let dir = records_dir(state_dir);
    std::fs::create_dir_all(&dir)?;
    let bytes = serde_json::to_vec_pretty(record).map_err(std::io::Error::other)?;
    state::write_atomic(&record_path(state_dir, record.id.as_str()), &bytes)
}

/// The record of batch `id`, if there is one.
pub fn load(state_dir: &Path, id: &str) -> anyhow::Result<Option<BatchRecord>> {
    if id.parse::<JobId>().is_err() {
        anyhow::bail!(
            "`{}` is not a batch id\n  = help: batch ids look like job ids: 20261123-150102-123-0001 (`reelspool status` shows each job's batch)",
            jobs::escape_text(id)
        );
    }
    let path = record_path(state_dir, id);
    match std::fs::read(&path) {
        Ok(bytes) => serde_json::from_slice(&bytes)
            .map(Some)
            .with_context(|| format!("batch record {} is damaged", path.display())),
        Err(err) if err.kind() == std::io::ErrorKind::NotFound => Ok(None),
        Err(err) => Err(err).with_context(|| format!("cannot read {}", path.display())),
    }
}

/// [`load`], with "no such batch" as the error.
pub fn find(state_dir: &Path, id: &str) -> anyhow::Result<BatchRecord> {
    load(state_dir, id)?.ok_or_else(|| {
        anyhow::anyhow!(
            "no batch {}\n  = help: `reelspool status --json` shows each job's `batch`",
            jobs::escape_text(id)
        )
    })
}

/// Every batch, newest last.
pub fn list(state_dir: &Path) -> Vec<BatchRecord> {
    let Ok(entries) = std::fs::read_dir(records_dir(state_dir)) else {
        return Vec::new();
    };
    let mut all: Vec<BatchRecord> = entries
        .flatten()
        .filter_map(|entry| {
            let name = entry
                .file_name()
                .to_str()?
                .strip_suffix(".json")?
                .to_string();
            load(state_dir, &name).ok().flatten()
        })
        .collect();
    all.sort_by(|a, b| a.id.cmp(&b.id));
    all
}

/// A batch's members whose folders are still staged: a crash came between the record and the
/// publication. Intake renames them into place at the next start.
pub fn members_to_publish(state_dir: &Path, id: &str) -> Vec<JobId> {
    match load(state_dir, id) {
        Ok(Some(record)) => record.jobs,
        _ => Vec::new(),
    }
}

/// A batch and its jobs' states, added up.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct BatchView {
    #[serde(flatten)]
    pub record: BatchRecord,
    /// `queued`, `running`, or, once every job has ended, `done` (all done), `failed` (any
    /// failed) or `cancelled`.
    pub phase: String,
    pub total: usize,
    pub queued: usize,
    pub running: usize,
    pub done: usize,
    pub failed: usize,
    pub cancelled: usize,
    pub clips_done: u64,
    /// Known once every job knows its clips.
    pub clips_total: Option<u64>,
    /// The jobs' states, in row order (a job whose state cannot be read is left out).
    pub members: Vec<JobState>,
}

impl BatchView {
    /// Reads the states of `record`'s jobs from `jobs_dir`.
    pub fn read(jobs_dir: &Path, record: BatchRecord) -> BatchView {
        let members: Vec<JobState> = record
            .jobs
            .iter()
            .filter_map(|id| JobDir::new(jobs_dir.join(id.as_str())).load_state().ok())
            .collect();
        BatchView::of(record, members)
    }

    pub fn of(record: BatchRecord, members: Vec<JobState>) -> BatchView {
        let count = |phase: Phase| members.iter().filter(|job| job.phase == phase).count();
        let (queued, running, done, failed, cancelled) = (
            count(Phase::Queued),
            count(Phase::Running),
            count(Phase::Done),
            count(Phase::Failed),
            count(Phase::Cancelled),
        );
        let total = record.jobs.len();
        let phase = if running > 0 {
            "running"
        } else if queued > 0 || members.len() < total {
            if done + failed + cancelled > 0 {
                "running"
            } else {
                "queued"
            }
        } else if failed > 0 {
            "failed"
        } else if cancelled > 0 {
            "cancelled"
        } else {
            "done"
        };
        let clips_done = members.iter().map(|job| u64::from(job.clips_done)).sum();
        let clips_total = members
            .iter()
            .map(|job| job.clips_total.map(u64::from))
            .sum::<Option<u64>>()
            .filter(|_| members.len() == total);
        BatchView {
            record,
            phase: phase.to_string(),
            total,
            queued,
            running,
            done,
            failed,
            cancelled,
            clips_done,
            clips_total,
            members,
        }
    }

    /// Whether every job of the batch has ended.
    pub fn ended(&self) -> bool {
        self.done + self.failed + self.cancelled == self.total
    }

    /// One line: `batch ID NAME: 3/12 done, 1 failed, 2 running, 6 queued (40/120 clips)`.
    pub fn line(&self) -> String {
        let mut parts = vec![format!("{}/{} done", self.done, self.total)];
        for (n, what) in [
            (self.failed, "failed"),
            (self.cancelled, "cancelled"),
            (self.running, "running"),
            (self.queued, "queued"),
        ] {
            if n > 0 {
                parts.push(format!("{n} {what}"));
            }
        }
        let clips = match self.clips_total {
            Some(total) => format!("{}/{total} clips", self.clips_done),
            None => format!("{} clips", self.clips_done),
        };
        format!(
            "batch {} {} ({}): {} ({clips})",
            self.record.id,
            jobs::escape_text(&self.record.name),
            jobs::escape_text(&self.phase),
            parts.join(", ")
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn record(jobs: Vec<JobId>) -> BatchRecord {
        BatchRecord {
            id: "20261123-150102-123-0001".parse().expect("id"),
            name: "week".into(),
            source_file: "week.yaml".into(),
            submitted_at_ms: 1,
            jobs,
            csv: None,
            notify_each: false,
            ended_at_ms: None,
        }
    }

    fn job(id: &str, phase: &str, clips: u32) -> JobState {
        let text = format!(
            r#"{{"id":"{id}","name":"x","phase":"{phase}","submitted_at_ms":1,"clips_done":{clips},"clips_total":2}}"#
        );
        serde_json::from_str(&text).expect("state parses")
    }

    #[test]
    fn a_batch_ends_when_its_last_job_ends_and_a_failure_marks_it() {
        let ids: Vec<JobId> = ["20261123-150102-123-0002", "20261123-150102-123-0003"]
            .iter()
            .map(|id| id.parse().expect("id"))
            .collect();
        let running = BatchView::of(
            record(ids.clone()),
            vec![
                job(ids[0].as_str(), "done", 2),
                job(ids[1].as_str(), "queued", 0),
            ],
        );
        assert_eq!(running.phase, "running");
        assert!(!running.ended());
        assert_eq!(running.clips_total, Some(4));
        let ended = BatchView::of(
            record(ids.clone()),
            vec![
                job(ids[0].as_str(), "done", 2),
                job(ids[1].as_str(), "failed", 1),
            ],
        );
        assert!(ended.ended());
        assert_eq!(ended.phase, "failed");
        assert!(
            ended.line().contains("1/2 done, 1 failed"),
            "{}",
            ended.line()
        );
    }

    #[test]
    fn records_round_trip_and_ids_are_checked() {
        let tmp = tempfile::tempdir().expect("temp dir");
        let rec = record(vec!["20261123-150102-123-0002".parse().expect("id")]);
        save(tmp.path(), &rec).expect("save");
        assert_eq!(
            find(tmp.path(), rec.id.as_str()).expect("found"),
            rec.clone()
        );
        assert_eq!(list(tmp.path()), vec![rec]);
        assert!(load(tmp.path(), "../etc").is_err());
        assert!(find(tmp.path(), "20261123-150102-123-0009").is_err());
    }
}
