//! Durable file writes: temp file, fsync, rename, fsync the directory.
//!
//! A rename is atomic, so a reader sees the old record or the new one,
//! never half of one; the fsync of the file before the rename makes the new
//! contents reach the disk before the name does, and the fsync of the
//! directory makes the rename itself survive a power cut.

use std::fs::{self, File, OpenOptions};
use std::io::Write;
use std::path::Path;

use crate::NoticeError;

/// Writes `bytes` to `target` through a temp file in `tmp_dir` (same file
/// system). The caller fsyncs `target`'s directory once it has renamed
/// everything it meant to, so a batch costs one directory sync.
pub(crate) fn write_file_atomically(
    tmp_dir: &Path,
    target: &Path,
    bytes: &[u8],
) -> Result<(), NoticeError> {
    let file_name = target
        .file_name()
        .expect("invariant: outbox record paths end in a file name")
        .to_string_lossy();
    let tmp = tmp_dir.join(format!(
        "{file_name}.{}.{:016x}.tmp",
        std::process::id(),
        fastrand::u64(..)
    ));
    let result = write_and_sync(&tmp, bytes).and_then(|()| {
        fs::rename(&tmp, target).map_err(|source| NoticeError::Io {
            action: "rename into place",
            path: target.to_path_buf(),
            source,
        })
    });
    if result.is_err() {
        // Best effort: a leftover temp file is removed by the next
        // `Outbox::open` anyway, and the write error is what matters.
        let _ = fs::remove_file(&tmp);
    }
    result
}

fn write_and_sync(path: &Path, bytes: &[u8]) -> Result<(), NoticeError> {
    let io_error = |action| {
        move |source| NoticeError::Io {
            action,
            path: path.to_path_buf(),
            source,
        }
    };
    let mut options = OpenOptions::new();
    options.write(true).create_new(true);
    #[cfg(unix)]
    {
        use std::os::unix::fs::OpenOptionsExt;
        // Records hold recipients and webhook URLs (which may embed tokens).
        options.mode(0o600);
    }
    let mut file = options
        .open(path)
        .map_err(io_error("create the temp file"))?;
    file.write_all(bytes).map_err(io_error("write"))?;
    file.sync_all().map_err(io_error("fsync"))
}

/// Makes the renames and removals done in `dir` durable.
pub(crate) fn sync_dir(dir: &Path) -> Result<(), NoticeError> {
    File::open(dir)
        .and_then(|handle| handle.sync_all())
        .map_err(|source| NoticeError::Io {
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
