//! The queue as a start-up finds it: the queue index (see `jobs::index`), checked against the
//! job folders, instead of reading every job's files.
//!
//! With an index that matches the folders, this reads one file and lists one folder, whatever
//! the queue's length. Folders the index does not know (a crash during a burst, a job filed
//! while the index was not being written) are read one by one, and a missing or damaged index
//! is rebuilt from all of them: slower, and logged.

use std::path::Path;
use std::time::Instant;

use anyhow::{Context, Result};
use jobs::index::{self, IndexEntry, IndexWriter, QueuePlan, INDEX_FILE};
use jobs::state::{JobDir, JobState};
use tracing::{info, warn};

use crate::placement::Placement;

/// What the scheduler starts from.
pub struct Backlog {
    /// Every job that is queued or was running, in id (submission) order.
    pub unfinished: Vec<IndexEntry>,
    /// `None` when the index cannot be written; the daemon then runs without it and the next
    /// start rebuilds it.
    pub index: Option<IndexWriter>,
}

/// The plan of a job read from its folder; `None` if its `job.yaml` cannot be read (the
/// scheduler then fails the job with that error when it queues it).
fn plan_from_folder(dir: &JobDir, _state: &JobState) -> Option<QueuePlan> {
    dir.load_spec().ok().map(|spec| Placement::plan_of(&spec))
}

pub fn load(state_dir: &Path, jobs_dir: &Path) -> Result<Backlog> {
    let started = Instant::now();
    let path = state_dir.join(INDEX_FILE);
    let reconciled = index::reconcile(&path, jobs_dir, plan_from_folder)
        .context("cannot read the jobs directory")?;
    for (folder, err) in &reconciled.unreadable {
        warn!(job = %folder.display(), error = %err, "skipping unreadable job");
    }
    match &reconciled.rebuilt {
        Some(index::IndexProblem::Missing) => info!(
            jobs = reconciled.entries.len(),
            "no queue index yet; built it from the job folders"
        ),
        Some(index::IndexProblem::Damaged(why)) => warn!(
            jobs = reconciled.entries.len(),
            problem = %why,
            "the queue index was damaged; rebuilt it from the job folders"
        ),
        None if !reconciled.added.is_empty() || reconciled.dropped > 0 => info!(
            added = reconciled.added.len(),
            dropped = reconciled.dropped,
            "queue index brought up to date with the job folders"
        ),
        None => {}
    }
    let index = match IndexWriter::open(&path, &reconciled) {
        Ok(index) => Some(index),
        Err(err) => {
            warn!(error = %err, "cannot write the queue index; running without it");
            None
        }
    };
    let unfinished: Vec<IndexEntry> = reconciled
        .entries
        .into_values()
        .filter(|entry| !entry.phase.is_terminal())
        .collect();
    info!(
        unfinished = unfinished.len(),
        ms = started.elapsed().as_millis() as u64,
        "queue loaded"
    );
    Ok(Backlog { unfinished, index })
}
