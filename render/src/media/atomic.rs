//! Files that appear complete or not at all.
//!
//! A segment `k.mkv` existing is how a resumed job knows clip *k* is done, so it must never
//! exist half-written. Each output is written as `.<name>.partial` in the same directory
//! (same file system, so the rename is atomic), then fsynced, renamed, and the directory
//! fsynced so the rename itself survives a power cut (`atomic_write::Dir::publish`: FFmpeg
//! writes by path, so the file is synced after it closes, not through the write itself). The partial name is fixed rather than random: a
//! worker killed mid-write leaves one stale file that the retry simply overwrites.

use std::ffi::{OsStr, OsString};
use std::fs::File;
use std::os::fd::AsRawFd;
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};

use atomic_write::Dir;

use crate::RenderError;

/// How a finished video takes its place when the job did not ask to overwrite: a file already
/// at the target (one that appeared while the job rendered) is kept, and the video goes to
/// `fallback` instead.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct KeepExisting {
    /// Where the video goes when the target is taken (`<name>.<job id>.mp4` beside it).
    pub fallback: PathBuf,
    /// A small file in the job's work directory listing the files this job has moved into
    /// place (device, inode, size). A worker killed right after its rename is retried; the
    /// retry finds the video at the target and must know it is its own, not someone else's.
    pub record: PathBuf,
}

/// One file's identity: device, inode and size.
type Identity = (u64, u64, u64);

fn identity(meta: &std::fs::Metadata) -> Identity {
    (meta.dev(), meta.ino(), meta.len())
}

fn read_identities(record: &Path) -> Vec<Identity> {
    let Ok(text) = std::fs::read_to_string(record) else {
        return Vec::new();
    };
    text.lines()
        .filter_map(|line| {
            let mut parts = line.split_whitespace().map(str::parse::<u64>);
            match (parts.next(), parts.next(), parts.next()) {
                (Some(Ok(dev)), Some(Ok(ino)), Some(Ok(len))) => Some((dev, ino, len)),
                _ => None,
            }
        })
        .collect()
}

/// A file being written under its temporary name; removed again unless committed.
///
/// Every step after the folder is open works on its descriptor ([`Dir`]): the partial file is
/// created, synced, renamed and removed relative to it, so a folder swapped on the way
/// afterwards changes nothing.
pub(crate) struct PartialFile {
    dir: Dir,
    partial_name: OsString,
    target_name: OsString,
    /// For messages, and the name FFmpeg writes by when the file was not created here.
    partial: PathBuf,
    target: PathBuf,
    /// The partial file, when it was created through the descriptor ([`PartialFile::create_in`]);
    /// FFmpeg then writes it as `/proc/self/fd/N`.
    file: Option<File>,
    committed: bool,
}

fn partial_name_of(name: &OsStr) -> OsString {
    let mut partial_name = OsString::from(".");
    partial_name.push(name);
    partial_name.push(".partial");
    partial_name
}

impl PartialFile {
    /// Plans a write of `target`; nothing is created yet (FFmpeg opens the partial file). For
    /// the service's own folders (the job's work folder).
    pub(crate) fn beside(target: &Path) -> Result<PartialFile, RenderError> {
        let name = target.file_name().ok_or_else(|| RenderError::Write {
            path: target.to_path_buf(),
            reason: "the path names no file".to_string(),
        })?;
        let (dir, _) = atomic_write::open_parent(target)
            .map_err(RenderError::io("open the directory of", target))?;
        let partial_name = partial_name_of(name);
        Ok(PartialFile {
            dir,
            partial: target.with_file_name(&partial_name),
            partial_name,
            target_name: name.to_os_string(),
            target: target.to_path_buf(),
            file: None,
            committed: false,
        })
    }

    /// Creates the partial file of `name` in the open folder `dir` (`O_EXCL`, no symlink
    /// followed, mode 0600 until [`PartialFile::file`] gets its final rights). `target` is how
    /// messages name the file. A partial file an earlier attempt left is removed first.
    pub(crate) fn create_in(
        dir: Dir,
        name: &OsStr,
        target: &Path,
    ) -> Result<PartialFile, RenderError> {
        let partial_name = partial_name_of(name);
        let partial = target.with_file_name(&partial_name);
        match dir.remove_file(&partial_name) {
            Ok(()) => {}
            Err(err) if err.kind() == std::io::ErrorKind::NotFound => {}
            Err(err) => return Err(RenderError::io("remove the stale", &partial)(err)),
        }
        let file = dir
            .create_new(&partial_name, 0o600)
            .map_err(RenderError::io("create", &partial))?;
        Ok(PartialFile {
            dir,
            partial,
            partial_name,
            target_name: name.to_os_string(),
            target: target.to_path_buf(),
            file: Some(file),
            committed: false,
        })
    }

    /// Where the data goes until [`PartialFile::commit`]: the partial file's path, or
    /// `/proc/self/fd/N` for one created through a descriptor.
    pub(crate) fn partial_path(&self) -> PathBuf {
        match &self.file {
            Some(file) => PathBuf::from(format!("/proc/self/fd/{}", file.as_raw_fd())),
            None => self.partial.clone(),
        }
    }

    /// The open partial file, where it was created through a descriptor.
    pub(crate) fn file(&self) -> Option<&File> {
        self.file.as_ref()
    }

    /// Makes the written file durable and moves it into place; returns its size in bytes.
    ///
    /// The caller must have closed every handle FFmpeg held on the partial file.
    pub(crate) fn commit(mut self) -> Result<u64, RenderError> {
        let meta = self
            .dir
            .publish(&self.partial_name, &self.target_name)
            .map_err(RenderError::io("move into place", &self.target))?;
        self.committed = true;
        Ok(meta.len())
    }

    /// The path a name in the target's folder has, for messages and the caller.
    fn in_dir(&self, name: &OsStr) -> PathBuf {
        self.target.with_file_name(name)
    }
}

impl PartialFile {
    /// [`PartialFile::commit`] that never replaces a file it did not put there itself: the
    /// target if it is free (or holds this job's own earlier video), else `keep.fallback`
    /// (a name in the same folder). Returns the size and the path the file now has.
    pub(crate) fn commit_keeping(
        mut self,
        keep: &KeepExisting,
    ) -> Result<(u64, PathBuf), RenderError> {
        let meta = self
            .dir
            .sync_file(&self.partial_name)
            .map_err(RenderError::io("fsync", &self.partial))?;
        let bytes = meta.len();
        // Remember this file before it moves, so a retry recognises it whatever happens next.
        let mut ours = read_identities(&keep.record);
        let mut text: String = ours
            .iter()
            .map(|(dev, ino, len)| format!("{dev} {ino} {len}\n"))
            .collect();
        let (dev, ino, len) = identity(&meta);
        text.push_str(&format!("{dev} {ino} {len}\n"));
        atomic_write::write_atomic(&keep.record, text.as_bytes())
            .map_err(RenderError::io("record", &keep.record))?;
        ours.retain(|known| *known != identity(&meta));
        let fallback_name = keep
            .fallback
            .file_name()
            .ok_or_else(|| RenderError::Write {
                path: keep.fallback.clone(),
                reason: "the path names no file".to_string(),
            })?
            .to_os_string();
        let mut placed = None;
        for candidate in [self.target_name.clone(), fallback_name] {
            let path = self.in_dir(&candidate);
            match self
                .dir
                .rename_no_replace(&self.partial_name, &self.dir, &candidate)
            {
                Ok(()) => {
                    placed = Some(path);
                    break;
                }
                Err(err) if err.kind() == std::io::ErrorKind::AlreadyExists => {
                    let own = self
                        .dir
                        .entry_metadata(&candidate)
                        .is_ok_and(|there| ours.contains(&identity(&there)));
                    if own {
                        self.dir
                            .rename(&self.partial_name, &self.dir, &candidate)
                            .map_err(RenderError::io("rename into", &path))?;
                        placed = Some(path);
                        break;
                    }
                }
                Err(err) => return Err(RenderError::io("rename into", &path)(err)),
            }
        }
        let Some(placed) = placed else {
            return Err(RenderError::Io {
                action: "rename into",
                path: keep.fallback.clone(),
                source: std::io::Error::new(
                    std::io::ErrorKind::AlreadyExists,
                    format!(
                        "both {} and {} are taken by files this job did not write",
                        self.target.display(),
                        keep.fallback.display()
                    ),
                ),
            });
        };
        self.committed = true;
        self.dir
            .sync()
            .map_err(RenderError::io("fsync directory", &placed))?;
        Ok((bytes, placed))
    }
}

impl Drop for PartialFile {
    fn drop(&mut self) {
        if !self.committed {
            // Best effort: an error path is already being reported, and a leftover partial
            // file is harmless because the next attempt overwrites it.
            let _ = self.dir.remove_file(&self.partial_name);
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

    fn keep(dir: &Path) -> KeepExisting {
        KeepExisting {
            fallback: dir.join("out.job-1.mp4"),
            record: dir.join("placed"),
        }
    }

    #[test]
    fn a_free_target_is_taken() {
        let dir = tempfile::tempdir().unwrap();
        let target = dir.path().join("out.mp4");
        let partial = PartialFile::beside(&target).unwrap();
        std::fs::write(partial.partial_path(), b"video").unwrap();
        let (bytes, placed) = partial.commit_keeping(&keep(dir.path())).unwrap();
        assert_eq!((bytes, placed), (5, target.clone()));
        assert_eq!(std::fs::read(&target).unwrap(), b"video");
        assert!(!dir.path().join("out.job-1.mp4").exists());
    }

    #[test]
    fn a_foreign_file_at_the_target_is_kept_and_the_video_goes_beside_it() {
        let dir = tempfile::tempdir().unwrap();
        let target = dir.path().join("out.mp4");
        std::fs::write(&target, b"someone else's").unwrap();
        let partial = PartialFile::beside(&target).unwrap();
        std::fs::write(partial.partial_path(), b"video").unwrap();
        let (_, placed) = partial.commit_keeping(&keep(dir.path())).unwrap();
        assert_eq!(placed, dir.path().join("out.job-1.mp4"));
        assert_eq!(std::fs::read(&target).unwrap(), b"someone else's");
        assert_eq!(std::fs::read(&placed).unwrap(), b"video");
    }

    #[test]
    fn a_retry_replaces_its_own_earlier_video_and_nothing_else() {
        let dir = tempfile::tempdir().unwrap();
        let target = dir.path().join("out.mp4");
        let first = PartialFile::beside(&target).unwrap();
        std::fs::write(first.partial_path(), b"first").unwrap();
        first.commit_keeping(&keep(dir.path())).unwrap();
        // The worker died before reporting; the retry renders again.
        let second = PartialFile::beside(&target).unwrap();
        std::fs::write(second.partial_path(), b"second").unwrap();
        let (_, placed) = second.commit_keeping(&keep(dir.path())).unwrap();
        assert_eq!(placed, target);
        assert_eq!(std::fs::read(&target).unwrap(), b"second");
        assert!(
            !dir.path().join("out.job-1.mp4").exists(),
            "one output only"
        );
        // A file that is not the job's own is never replaced, at either name.
        std::fs::remove_file(&target).unwrap();
        std::fs::write(&target, b"foreign").unwrap();
        std::fs::write(dir.path().join("out.job-1.mp4"), b"foreign too").unwrap();
        let third = PartialFile::beside(&target).unwrap();
        std::fs::write(third.partial_path(), b"third").unwrap();
        let err = third.commit_keeping(&keep(dir.path())).unwrap_err();
        assert!(err.to_string().contains("did not write"), "{err}");
        assert_eq!(std::fs::read(&target).unwrap(), b"foreign");
        assert_eq!(
            std::fs::read(dir.path().join("out.job-1.mp4")).unwrap(),
            b"foreign too"
        );
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
