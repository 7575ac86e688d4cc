//! Full disks: telling a worker that failed for want of space from other I/O failures, and
//! knowing when there is room again.
//!
//! A job whose worker stopped on a full file system is not failed and not counted as a stalled
//! attempt: it waits, queued, until the file systems it writes to (its job directory, where
//! the checkpoints live, and its output folder) have room again, then resumes from its last
//! checkpoint. Nothing it had finished is lost: checkpoints and state files are only ever
//! replaced by an atomic rename, so a write that ran out of space leaves the old version.

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

/// Free space a waiting job needs before it is tried again, at the least.
pub const MIN_FREE_BYTES: u64 = 4 << 20;
/// A waiting job is tried again after this long even if the free space never looks enough
/// (quotas, reserved blocks and the like are not visible in `statvfs`).
pub const RETRY_ANYWAY_AFTER: Duration = Duration::from_secs(600);

/// Whether a worker's error message is the operating system's "disk full" or "quota
/// exceeded" (as `strerror` words them, which is also what FFmpeg reports).
pub fn is_out_of_space(message: &str) -> bool {
    [libc::ENOSPC, libc::EDQUOT].iter().any(|&code| {
        let text = std::io::Error::from_raw_os_error(code).to_string();
        // "No space left on device (os error 28)": compare without the suffix.
        let text = text.split(" (os error").next().unwrap_or(&text);
        message.contains(text)
    })
}

/// Bytes an unprivileged writer can still use on the file system holding `path`, or on that
/// of its nearest existing ancestor (an output folder may not exist yet).
pub fn free_bytes(path: &Path) -> Option<u64> {
    use std::os::unix::ffi::OsStrExt;
    let existing = path.ancestors().find(|p| p.exists())?;
    let c_path = std::ffi::CString::new(existing.as_os_str().as_bytes()).ok()?;
    // SAFETY: statvfs fills the zeroed struct we pass; the path is a valid C string.
    let mut stat: libc::statvfs = unsafe { std::mem::zeroed() };
    let rc = unsafe { libc::statvfs(c_path.as_ptr(), &mut stat) };
    if rc != 0 {
        return None;
    }
    // The field types differ between targets (u32 on some 32-bit ones).
    #[allow(clippy::useless_conversion)]
    let (blocks, block_size) = (u64::from(stat.f_bavail), u64::from(stat.f_frsize));
    Some(blocks.saturating_mul(block_size))
}

/// A job waiting for space.
#[derive(Debug, Clone)]
pub struct SpaceWait {
    /// The folders the job writes to, each with the free bytes it needs to go on.
    pub needs: Vec<(PathBuf, u64)>,
    pub since: Instant,
}

impl SpaceWait {
    /// Waits until the fullest of `folders` (the one with the least free space when the worker
    /// stopped, most likely the one that ran out) has [`MIN_FREE_BYTES`] more than it had then.
    pub fn new(folders: &[PathBuf]) -> SpaceWait {
        let fullest = folders
            .iter()
            .map(|folder| (folder.clone(), free_bytes(folder).unwrap_or(0)))
            .min_by_key(|(_, free)| *free);
        SpaceWait {
            needs: fullest
                .map(|(folder, free)| (folder, free.saturating_add(MIN_FREE_BYTES)))
                .into_iter()
                .collect(),
            since: Instant::now(),
        }
    }

    /// The first folder still short of space, with its free and needed bytes.
    pub fn short(&self) -> Option<(&Path, u64, u64)> {
        self.needs.iter().find_map(|(folder, need)| {
            let free = free_bytes(folder).unwrap_or(0);
            (free < *need).then_some((folder.as_path(), free, *need))
        })
    }

    /// Whether the job may be tried again.
    pub fn over(&self) -> bool {
        self.short().is_none() || self.since.elapsed() >= RETRY_ANYWAY_AFTER
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_os_words_for_a_full_disk_are_recognised() {
        let enospc = std::io::Error::from_raw_os_error(libc::ENOSPC);
        assert!(is_out_of_space(&format!(
            "cannot write /x/work/carry-3.safetensors: {enospc}"
        )));
        let edquot = std::io::Error::from_raw_os_error(libc::EDQUOT);
        assert!(is_out_of_space(&format!("muxing failed: {edquot}")));
        let other = std::io::Error::from_raw_os_error(libc::EACCES);
        assert!(!is_out_of_space(&format!("cannot write /x: {other}")));
    }

    #[test]
    fn free_space_is_read_from_the_nearest_existing_folder() {
        let dir = tempfile::tempdir().expect("temp dir");
        let here = free_bytes(dir.path()).expect("statvfs of a temp dir");
        let below = free_bytes(&dir.path().join("not/yet/made")).expect("ancestor");
        // Same file system; other writers may change it a little in between.
        assert!(here.abs_diff(below) < 64 << 20, "{here} vs {below}");
    }

    #[test]
    fn a_wait_is_on_the_fullest_folder_and_needs_more_room_than_it_had() {
        let dir = tempfile::tempdir().expect("temp dir");
        let missing = dir.path().join("gone");
        // An unreadable folder counts as full: it is the one waited on.
        let wait = SpaceWait::new(&[dir.path().to_path_buf(), PathBuf::from("")]);
        assert_eq!(wait.needs, vec![(PathBuf::from(""), MIN_FREE_BYTES)]);
        let wait = SpaceWait::new(std::slice::from_ref(&missing));
        let (folder, need) = &wait.needs[0];
        assert_eq!(folder, &missing);
        let free = free_bytes(&missing).expect("statvfs");
        assert!(*need >= MIN_FREE_BYTES && need.abs_diff(free + MIN_FREE_BYTES) < 64 << 20);
    }
}
