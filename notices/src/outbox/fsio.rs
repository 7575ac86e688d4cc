//! Durable file writes: temp file, fsync, rename, fsync the directory.
//!
//! A rename is atomic, so a reader sees the old record or the new one,
//! never half of one; the fsync of the file before the rename makes the new
//! contents reach the disk before the name does, and the fsync of the
//! directory makes the rename itself survive a power cut.

use std::fs;
use std::path::Path;

use atomic_write::Dir;

use crate::NoticeError;

/// Writes `bytes` to `target` through a temp file in `tmp_dir` (same file
/// system), mode 0600: records hold recipients and webhook URLs (which may
/// embed tokens). The caller fsyncs `target`'s directory once it has renamed
/// everything it meant to, so a batch costs one directory sync.
pub(crate) fn write_file_atomically(
    tmp_dir: &Path,
    target: &Path,
    bytes: &[u8],
) -> Result<(), NoticeError> {
    let io_error = |action: &'static str, path: &Path| {
        let path = path.to_path_buf();
        move |source| NoticeError::Io {
            action,
            path,
            source,
        }
    };
    let staging = Dir::open(tmp_dir).map_err(io_error("open the temp directory", tmp_dir))?;
    let (dir, name) =
        atomic_write::open_parent(target).map_err(io_error("open the directory of", target))?;
    dir.replace(name)
        .staged_in(&staging)
        .mode(0o600)
        .without_dir_sync()
        .write(bytes)
        .map_err(io_error("write and rename into place", target))
}

/// Makes the renames and removals done in `dir` durable.
pub(crate) fn sync_dir(dir: &Path) -> Result<(), NoticeError> {
    atomic_write::sync_dir(dir).map_err(|source| NoticeError::Io {
        action: "fsync the directory",
        path: dir.to_path_buf(),
        source,
    })
}

/// Creates `dir` (and parents) readable by the daemon's user only.
pub(crate) fn create_private_dir(dir: &Path) -> Result<(), NoticeError> {
    let mut builder = fs::DirBuilder::new();
    builder.recursive(true);
    #[cfg(unix)]
    {
        use std::os::unix::fs::DirBuilderExt;
        builder.mode(0o700);
    }
    builder.create(dir).map_err(|source| NoticeError::Io {
        action: "create the outbox directory",
        path: dir.to_path_buf(),
        source,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn atomic_write_replaces_the_target_and_leaves_no_temp_file() {
        let dir = tempfile::tempdir().expect("temp dir");
        let tmp = dir.path().join("tmp");
        fs::create_dir(&tmp).expect("create tmp dir");
        let target = dir.path().join("record.json");
        fs::write(&target, b"old").expect("write old record");

        write_file_atomically(&tmp, &target, b"new").expect("atomic write succeeds");
        sync_dir(dir.path()).expect("directory sync succeeds");

        assert_eq!(fs::read(&target).expect("read target"), b"new");
        let leftovers = fs::read_dir(&tmp).expect("list tmp dir").count();
        assert_eq!(leftovers, 0);
    }

    #[test]
    fn failed_write_names_the_path() {
        let dir = tempfile::tempdir().expect("temp dir");
        let missing_tmp = dir.path().join("no-such-dir");
        let err = write_file_atomically(&missing_tmp, &dir.path().join("r.json"), b"x")
            .expect_err("temp dir does not exist");
        assert!(err.to_string().contains("no-such-dir"), "{err}");
    }
}
