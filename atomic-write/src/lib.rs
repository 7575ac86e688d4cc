//! Files a power cut leaves whole: after a crash a file holds its old contents or its new
//! ones, never a mix.
//!
//! The recipe, written here once for the whole workspace: create a temporary file beside the
//! target with `O_CREAT | O_EXCL` (two writers never share one), write it, `fsync` it, rename
//! it over the target, and `fsync` the directory so that the rename itself is on disk. The
//! file is synced before the rename, so the new name never points at data that is still only
//! in the page cache.
//!
//! # Directories, not paths
//! The core works on an open directory, [`Dir`]: the temporary file is created with `openat`,
//! renamed with `renameat`, removed with `unlinkat`, all relative to the directory's
//! descriptor. Nothing is looked up by path again between the steps, so a caller that reached
//! the directory safely (with `openat2` and `RESOLVE_BENEATH` from an allowed root, then
//! [`Dir::from_fd`]) keeps that guarantee for the whole write. The path functions
//! ([`write_atomic`], [`sync_dir`], [`publish`], [`rename_no_replace`]) open the parent
//! directory by path and call the same core: they are for callers whose paths are their own.
//!
//! # Temporary names
//! `.<name>.<pid>-<n>.tmp`: a dot-file, so directory scans skip it; ending in `.tmp`, so the
//! cleaners of crash leftovers recognise it ([`is_temp_name`]); unique across processes by
//! the pid and within one by a counter. A failed write removes its temporary file; a writer
//! killed mid-write leaves it behind for the directory's owner to clean up.
//!
//! # Layers
//! [`Dir`] (a directory descriptor and the primitives on it) → [`Replace`] (one atomic
//! replacement and its options) → the path functions. [`beneath`] (a directory or file
//! reached from a trusted root without following symlinks) sits beside the path functions and
//! uses only [`Dir`].

use std::ffi::{CStr, CString, OsStr, OsString};
use std::fs::{File, Metadata};
use std::io::{self, Write};
use std::os::fd::{AsFd, AsRawFd, BorrowedFd, FromRawFd, OwnedFd};
use std::os::unix::ffi::{OsStrExt, OsStringExt};
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};

pub mod beneath;
pub use beneath::{open_dir_beneath, open_file_in, Changed};

/// Suffix of every temporary file this crate creates.
pub const TEMP_SUFFIX: &str = ".tmp";

/// Distinguishes the temporary files of concurrent writers within one process.
static TEMP_COUNTER: AtomicU64 = AtomicU64::new(0);

/// Whether `name` is a temporary file of an atomic write (a crash leftover when no write is
/// in progress): a dot-file ending in [`TEMP_SUFFIX`].
pub fn is_temp_name(name: &str) -> bool {
    name.starts_with('.') && name.ends_with(TEMP_SUFFIX)
}

/// `name` as a C string, refused unless it names an entry directly inside a directory.
fn entry_name(name: &OsStr) -> io::Result<CString> {
    let bytes = name.as_bytes();
    if bytes.is_empty() || bytes.contains(&b'/') || bytes == b"." || bytes == b".." {
        return Err(io::Error::new(
            io::ErrorKind::InvalidInput,
            format!(
                "`{}` is not the name of a file inside a directory",
                name.to_string_lossy()
            ),
        ));
    }
    CString::new(bytes)
        .map_err(|_| io::Error::new(io::ErrorKind::InvalidInput, "a file name holds a NUL byte"))
}

fn temp_name(name: &OsStr) -> io::Result<CString> {
    let mut bytes = b".".to_vec();
    bytes.extend_from_slice(name.as_bytes());
    bytes.extend_from_slice(
        format!(
            ".{}-{}{TEMP_SUFFIX}",
            std::process::id(),
            TEMP_COUNTER.fetch_add(1, Ordering::Relaxed)
        )
        .as_bytes(),
    );
    entry_name(&OsString::from_vec(bytes))
}

/// The result of a libc call that returns -1 and sets `errno` on failure.
fn check(rc: libc::c_int) -> io::Result<libc::c_int> {
    if rc == -1 {
        Err(io::Error::last_os_error())
    } else {
        Ok(rc)
    }
}

/// An open directory: every file operation of this crate is relative to its descriptor.
#[derive(Debug)]
pub struct Dir {
    handle: File,
    /// For messages only; never used to reach a file.
    path: PathBuf,
}

impl Dir {
    /// Opens the directory at `path` (`O_DIRECTORY`: anything else is an error).
    pub fn open(path: impl AsRef<Path>) -> io::Result<Dir> {
        let path = path.as_ref();
        let handle = std::fs::OpenOptions::new()
            .read(true)
            .custom_flags(libc::O_DIRECTORY | libc::O_CLOEXEC)
            .open(path)?;
        Ok(Dir {
            handle,
            path: path.to_path_buf(),
        })
    }

    /// Takes a directory descriptor opened elsewhere (for example with `openat2` beneath an
    /// allowed root); `path` is how messages name it.
    pub fn from_fd(fd: OwnedFd, path: impl Into<PathBuf>) -> Dir {
        Dir {
            handle: File::from(fd),
            path: path.into(),
        }
    }

    /// How this directory is named in messages.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Makes the directory's entries (files created, renamed or removed in it) durable.
    pub fn sync(&self) -> io::Result<()> {
        self.handle.sync_all()
    }

    /// Replaces the file `name` with `bytes` atomically and durably (the module recipe).
    pub fn write(&self, name: impl AsRef<OsStr>, bytes: &[u8]) -> io::Result<()> {
        self.replace(name.as_ref()).write(bytes)
    }

    /// One atomic replacement of the file `name`, with options: see [`Replace`].
    pub fn replace<'a>(&'a self, name: &'a OsStr) -> Replace<'a> {
        Replace {
            dir: self,
            name,
            staging: None,
            mode: 0o666,
            sync_dir: true,
        }
    }

    /// Makes the bytes of the file `name` durable (a file someone else wrote by path, such as
    /// an encoder) and returns its metadata.
    pub fn sync_file(&self, name: impl AsRef<OsStr>) -> io::Result<Metadata> {
        let file = self.open_at(
            &entry_name(name.as_ref())?,
            libc::O_RDONLY | libc::O_CLOEXEC,
            0,
        )?;
        file.sync_all()?;
        file.metadata()
    }

    /// Moves a finished file into place durably: syncs `from`, renames it over `to` (both in
    /// this directory) and syncs the directory. Returns the file's metadata. For files
    /// written under a temporary name by something that only takes a path.
    pub fn publish(&self, from: impl AsRef<OsStr>, to: impl AsRef<OsStr>) -> io::Result<Metadata> {
        let meta = self.sync_file(from.as_ref())?;
        self.rename(from.as_ref(), self, to.as_ref())?;
        self.sync()?;
        Ok(meta)
    }

    /// Renames `from` in this directory to `to` in `to_dir`, replacing what is there. Not
    /// durable until the directories are synced.
    pub fn rename(
        &self,
        from: impl AsRef<OsStr>,
        to_dir: &Dir,
        to: impl AsRef<OsStr>,
    ) -> io::Result<()> {
        self.rename_at(
            &entry_name(from.as_ref())?,
            to_dir,
            &entry_name(to.as_ref())?,
        )
    }

    /// Renames `from` in this directory to `to` in `to_dir` unless `to` exists (then
    /// `AlreadyExists`), atomically: `renameat2` with `RENAME_NOREPLACE`, or a hard link and
    /// an unlink on file systems without it. Not durable until the directories are synced.
    pub fn rename_no_replace(
        &self,
        from: impl AsRef<OsStr>,
        to_dir: &Dir,
        to: impl AsRef<OsStr>,
    ) -> io::Result<()> {
        let (from, to) = (entry_name(from.as_ref())?, entry_name(to.as_ref())?);
        // SAFETY: both names are NUL-terminated strings that outlive the call; both
        // descriptors are open directories owned by `self` and `to_dir`.
        let rc = unsafe {
            libc::renameat2(
                self.raw(),
                from.as_ptr(),
                to_dir.raw(),
                to.as_ptr(),
                libc::RENAME_NOREPLACE,
            )
        };
        match check(rc) {
            Ok(_) => Ok(()),
            Err(err) if matches!(err.raw_os_error(), Some(libc::EINVAL | libc::ENOSYS)) => {
                // SAFETY: as above.
                check(unsafe {
                    libc::linkat(self.raw(), from.as_ptr(), to_dir.raw(), to.as_ptr(), 0)
                })?;
                self.unlink_at(&from)
            }
            Err(err) => Err(err),
        }
    }

    /// Creates the file `name`, which must not exist (`O_CREAT | O_EXCL | O_NOFOLLOW`: not
    /// even as a symlink), open for reading and writing, with permission bits `mode`.
    pub fn create_new(&self, name: impl AsRef<OsStr>, mode: u32) -> io::Result<File> {
        self.open_at(
            &entry_name(name.as_ref())?,
            libc::O_RDWR | libc::O_CREAT | libc::O_EXCL | libc::O_NOFOLLOW | libc::O_CLOEXEC,
            mode as libc::mode_t,
        )
    }

    /// The metadata of the entry `name` itself (a symlink is not followed).
    pub fn entry_metadata(&self, name: impl AsRef<OsStr>) -> io::Result<Metadata> {
        self.open_at(
            &entry_name(name.as_ref())?,
            libc::O_PATH | libc::O_NOFOLLOW | libc::O_CLOEXEC,
            0,
        )?
        .metadata()
    }

    /// Removes the file `name`.
    pub fn remove_file(&self, name: impl AsRef<OsStr>) -> io::Result<()> {
        self.unlink_at(&entry_name(name.as_ref())?)
    }

    fn raw(&self) -> libc::c_int {
        self.handle.as_raw_fd()
    }

    fn open_at(&self, name: &CStr, flags: libc::c_int, mode: libc::mode_t) -> io::Result<File> {
        // SAFETY: `name` is NUL-terminated and outlives the call; the descriptor is open.
        let fd = check(unsafe { libc::openat(self.raw(), name.as_ptr(), flags, mode) })?;
        // SAFETY: `openat` just returned this descriptor and nothing else owns it.
        Ok(File::from(unsafe { OwnedFd::from_raw_fd(fd) }))
    }

    fn rename_at(&self, from: &CStr, to_dir: &Dir, to: &CStr) -> io::Result<()> {
        // SAFETY: both names are NUL-terminated and outlive the call; both descriptors are open.
        check(unsafe { libc::renameat(self.raw(), from.as_ptr(), to_dir.raw(), to.as_ptr()) })
            .map(drop)
    }

    fn unlink_at(&self, name: &CStr) -> io::Result<()> {
        // SAFETY: `name` is NUL-terminated and outlives the call; the descriptor is open.
        check(unsafe { libc::unlinkat(self.raw(), name.as_ptr(), 0) }).map(drop)
    }
}

impl AsFd for Dir {
    fn as_fd(&self) -> BorrowedFd<'_> {
        self.handle.as_fd()
    }
}

/// One atomic replacement of a file, built by [`Dir::replace`].
#[must_use = "nothing is written until `write` or `write_with`"]
pub struct Replace<'a> {
    dir: &'a Dir,
    name: &'a OsStr,
    staging: Option<&'a Dir>,
    mode: libc::mode_t,
    sync_dir: bool,
}

impl<'a> Replace<'a> {
    /// Creates the temporary file in `staging`, a directory on the same file system, instead
    /// of beside the target: for a directory whose every entry is read as a record, so that
    /// it never holds a half-written one. Leftovers of a crash are then all in `staging`.
    pub fn staged_in(mut self, staging: &'a Dir) -> Replace<'a> {
        self.staging = Some(staging);
        self
    }

    /// Permission bits of the new file, before the umask (default `0o666`).
    pub fn mode(mut self, mode: u32) -> Replace<'a> {
        self.mode = mode as libc::mode_t;
        self
    }

    /// Leaves the directory's fsync to the caller, who renames several files and then syncs
    /// once ([`Dir::sync`]). Until then a power cut may undo the rename, never tear the file.
    pub fn without_dir_sync(mut self) -> Replace<'a> {
        self.sync_dir = false;
        self
    }

    /// Writes `bytes` as the file's new contents.
    pub fn write(self, bytes: &[u8]) -> io::Result<()> {
        self.write_with(|file| file.write_all(bytes))
    }

    /// Lets `write` fill the temporary file (open for reading and writing, so it can read
    /// back what it wrote), then syncs it and renames it over the target. What `write`
    /// returns is returned once the file is in place.
    pub fn write_with<T>(self, write: impl FnOnce(&mut File) -> io::Result<T>) -> io::Result<T> {
        let target = entry_name(self.name)?;
        let temp_dir = self.staging.unwrap_or(self.dir);
        let temp = temp_name(self.name)?;
        let mut file = temp_dir.open_at(
            &temp,
            libc::O_RDWR | libc::O_CREAT | libc::O_EXCL | libc::O_CLOEXEC,
            self.mode,
        )?;
        let written = write(&mut file).and_then(|value| file.sync_all().map(|()| value));
        drop(file);
        let placed =
            written.and_then(|value| temp_dir.rename_at(&temp, self.dir, &target).map(|()| value));
        if placed.is_err() {
            // Best effort: the write error is what the caller needs to hear about.
            let _ = temp_dir.unlink_at(&temp);
            return placed;
        }
        if self.sync_dir {
            self.dir.sync()?;
        }
        placed
    }
}

/// The directory holding `path` (`.` for a bare file name), open, and the file's name in it.
pub fn open_parent(path: &Path) -> io::Result<(Dir, &OsStr)> {
    let name = path.file_name().ok_or_else(|| {
        io::Error::new(
            io::ErrorKind::InvalidInput,
            format!("{} names no file", path.display()),
        )
    })?;
    let dir = match path.parent() {
        Some(parent) if !parent.as_os_str().is_empty() => parent,
        _ => Path::new("."),
    };
    Ok((Dir::open(dir)?, name))
}

/// Replaces the file at `path` with `bytes` atomically and durably ([`Dir::write`] in its
/// parent directory).
pub fn write_atomic(path: &Path, bytes: &[u8]) -> io::Result<()> {
    let (dir, name) = open_parent(path)?;
    dir.write(name, bytes)
}

/// Makes the entries of the directory at `path` durable ([`Dir::sync`]).
pub fn sync_dir(path: &Path) -> io::Result<()> {
    Dir::open(path)?.sync()
}

/// Moves the finished file `from` over `to` durably ([`Dir::publish`]); both must be in the
/// same directory.
pub fn publish(from: &Path, to: &Path) -> io::Result<Metadata> {
    let (dir, to_name) = open_parent(to)?;
    let from_name = same_dir_name(from, to)?;
    dir.publish(from_name, to_name)
}

/// Renames `from` to `to` unless `to` exists ([`Dir::rename_no_replace`]); not durable until
/// `to`'s directory is synced.
pub fn rename_no_replace(from: &Path, to: &Path) -> io::Result<()> {
    let (from_dir, from_name) = open_parent(from)?;
    let (to_dir, to_name) = open_parent(to)?;
    from_dir.rename_no_replace(from_name, &to_dir, to_name)
}

/// `from`'s file name, when it lies in the same directory as `to`.
fn same_dir_name<'p>(from: &'p Path, to: &Path) -> io::Result<&'p OsStr> {
    let parent = |path: &Path| path.parent().map(Path::to_path_buf).unwrap_or_default();
    match from.file_name() {
        Some(name) if parent(from) == parent(to) => Ok(name),
        _ => Err(io::Error::new(
            io::ErrorKind::InvalidInput,
            format!(
                "{} and {} are not files of one directory",
                from.display(),
                to.display()
            ),
        )),
    }
}

#[cfg(test)]
mod tests;
