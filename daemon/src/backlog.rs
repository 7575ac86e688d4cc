//! The queue as a start-up finds it: the queue index (see `jobs::index`), checked against the
//! job folders, instead of reading every job's files.
//!
//! With an index that matches the folders, this reads one file and lists one folder, whatever
//! the queue's length. Folders the index does not know (a crash during a burst, a job filed
//! while the index was not being written, or all of them when the index is missing or
//! damaged) are not read here: their ids go to the scheduler after the daemon is ready, which
//! reads and queues them in small batches between its other work, as it does for new jobs,
//! and adds each to the index.

use std::path::Path;
use std::time::Instant;

use anyhow::{Context, Result};
use jobs::index::{self, IndexEntry, IndexWriter, INDEX_FILE};
use jobs::state::JobId;
use tracing::{info, warn};

/// What the scheduler starts from.
pub struct Backlog {
    /// Every job that is queued or was running, in id (submission) order.
    pub unfinished: Vec<IndexEntry>,
    /// `None` when the index cannot be written; the daemon then runs without it and the next
    /// start rebuilds it.
    pub index: Option<IndexWriter>,
    /// Job folders the index did not know, oldest first, for the scheduler to read.
    pub unread: Vec<JobId>,
}

pub fn load(state_dir: &Path, jobs_dir: &Path) -> Result<Backlog> {
    let started = Instant::now();
    let path = state_dir.join(INDEX_FILE);
    let mut reconciled =
        index::reconcile_names(&path, jobs_dir).context("cannot read the jobs directory")?;
    match &reconciled.rebuilt {
        Some(index::IndexProblem::Missing) => info!(
            jobs = reconciled.unread.len(),
            "no queue index yet; rebuilding it from the job folders while the daemon runs"
        ),
        Some(index::IndexProblem::Damaged(why)) => warn!(
            jobs = reconciled.unread.len(),
            problem = %why,
            "the queue index was damaged; rebuilding it from the job folders while the daemon runs"
        ),
        None if !reconciled.unread.is_empty() || reconciled.dropped > 0 => info!(
            unread = reconciled.unread.len(),
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
    let unread = std::mem::take(&mut reconciled.unread);
    let unfinished: Vec<IndexEntry> = reconciled
        .entries
        .into_values()
        .filter(|entry| !entry.phase.is_terminal())
        .collect();
    info!(
        unfinished = unfinished.len(),
        unread = unread.len(),
        ms = started.elapsed().as_millis() as u64,
        "queue loaded"
    );
    Ok(Backlog {
        unfinished,
        index,
        unread,
    })
}
