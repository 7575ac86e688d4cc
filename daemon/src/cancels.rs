//! Cancel requests the scheduler can find without looking into every job folder.
//!
//! `reelspool cancel` writes the job's own `cancel` file (the request itself, which the
//! supervisor and the scheduler check for the job they run or are about to start) and then an
//! empty file named after the job in `state/cancel-requests/`. The scheduler lists that one
//! folder on each tick, so a cancel costs the same with 10 or 100,000 jobs in the queue, and
//! removes a marker once the request has been acted on.

use std::io;
use std::path::{Path, PathBuf};

use jobs::state::{fsync_dir, JobId};

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
mod tests {
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
}
