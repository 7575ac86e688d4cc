//! Files that appear complete or not at all.
//!
//! A segment `k.mkv` existing is how a resumed job knows clip *k* is done, so it must never
//! exist half-written. Each output is written as `.<name>.partial` in the same directory
//! (same file system, so the rename is atomic), fsynced, renamed, and the directory fsynced so
//! the rename itself survives a power cut. The partial name is fixed rather than random: a
//! worker killed mid-write leaves one stale file that the retry simply overwrites.

use std::fs::File;
use std::path::{Path, PathBuf};

use super::MediaError;

/// A file being written under its temporary name; removed again unless committed.
pub(crate) struct PartialFile {
    partial: PathBuf,
    target: PathBuf,
    committed: bool,
}

impl PartialFile {
    /// Plans a write of `target`; nothing is created yet (FFmpeg opens the partial file).
    pub(crate) fn beside(target: &Path) -> Result<PartialFile, MediaError> {
        let name = target.file_name().ok_or_else(|| MediaError::Write {
            path: target.to_path_buf(),
            reason: "the path names no file".to_string(),
        })?;
        let mut partial_name = std::ffi::OsString::from(".");
        partial_name.push(name);
        partial_name.push(".partial");
        Ok(PartialFile {
            partial: target.with_file_name(partial_name),
            target: target.to_path_buf(),
            committed: false,
        })
    }

    /// Where the data goes until [`PartialFile::commit`].
    pub(crate) fn partial_path(&self) -> &Path {
        &self.partial
    }

    /// Makes the written file durable and moves it into place; returns its size in bytes.
    ///
    /// The caller must have closed every handle FFmpeg held on the partial file.
    pub(crate) fn commit(mut self) -> Result<u64, MediaError> {
        let io = |action: &'static str, path: &Path| {
            let path = path.to_path_buf();
            move |source| MediaError::Io {
                action,
                path,
                source,
            }
        };
        let file = File::open(&self.partial).map_err(io("open", &self.partial))?;
        file.sync_all().map_err(io("fsync", &self.partial))?;
        let bytes = file.metadata().map_err(io("stat", &self.partial))?.len();
        drop(file);
        std::fs::rename(&self.partial, &self.target).map_err(io("rename into", &self.target))?;
        self.committed = true;
        let dir = match self.target.parent() {
            Some(dir) if !dir.as_os_str().is_empty() => dir,
            _ => Path::new("."),
        };
        File::open(dir)
            .and_then(|d| d.sync_all())
            .map_err(io("fsync directory", dir))?;
        Ok(bytes)
    }
}

impl Drop for PartialFile {
    fn drop(&mut self) {
        if !self.committed {
            // Best effort: an error path is already being reported, and a leftover partial
            // file is harmless because the next attempt overwrites it.
            let _ = std::fs::remove_file(&self.partial);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn commit_moves_the_partial_file_into_place() {
        let dir = tempfile::tempdir().unwrap();
        let target = dir.path().join("3.mkv");
        let partial = PartialFile::beside(&target).unwrap();
        assert_eq!(partial.partial_path(), dir.path().join(".3.mkv.partial"));
        std::fs::write(partial.partial_path(), b"12345").unwrap();
        let bytes = partial.commit().unwrap();
        assert_eq!(bytes, 5);
        assert_eq!(std::fs::read(&target).unwrap(), b"12345");
        assert!(!dir.path().join(".3.mkv.partial").exists());
    }

    #[test]
    fn dropping_without_commit_leaves_no_file_at_either_name() {
        let dir = tempfile::tempdir().unwrap();
        let target = dir.path().join("3.mkv");
        let partial = PartialFile::beside(&target).unwrap();
        std::fs::write(partial.partial_path(), b"half").unwrap();
        drop(partial);
        assert!(!target.exists());
        assert!(!dir.path().join(".3.mkv.partial").exists());
    }
}
