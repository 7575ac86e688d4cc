//! Files inside a job's folder, reached without following symlinks.
//!
//! A job folder belongs to the service, but the worker and any command engine it runs write
//! into its `work/` folder; a symlink left there (`work/clips/3.mkv -> /etc/shadow`) must not
//! make the web server read or write something else. Every step below the configured jobs
//! directory is opened relative to its parent's descriptor with `O_NOFOLLOW`, so a symlink at
//! any step is refused, and only regular files are opened. FFmpeg, which wants a file name,
//! gets `/proc/self/fd/N`: the very file already opened and checked.

use std::ffi::CString;
use std::fs::File;
use std::io;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};

/// An open directory; names are looked up relative to it.
pub struct Dir {
    fd: OwnedFd,
}

/// A name with no `/`, not `.` or `..`, not empty and without NUL: one step, in this directory.
fn plain_name(name: &str) -> io::Result<CString> {
    if name.is_empty() || name == "." || name == ".." || name.contains('/') {
        return Err(io::Error::new(
            io::ErrorKind::InvalidInput,
            format!("`{name}` is not a plain file name"),
        ));
    }
    CString::new(name).map_err(|_| io::Error::new(io::ErrorKind::InvalidInput, "a NUL in a name"))
}

fn check(rc: libc::c_int) -> io::Result<libc::c_int> {
    if rc < 0 {
        Err(io::Error::last_os_error())
    } else {
        Ok(rc)
    }
}

impl Dir {
    /// Opens `path` as a directory, following symlinks on the way: for paths from the config
    /// (the jobs directory), which the operator chose.
    pub fn open_trusted(path: &Path) -> io::Result<Dir> {
        let dir = std::fs::OpenOptions::new()
            .read(true)
            .custom_flags(libc::O_DIRECTORY)
            .open(path)?;
        Ok(Dir {
            fd: OwnedFd::from(dir),
        })
    }

    /// `openat(name)` relative to this directory, never through a symlink at `name`.
    fn open_at(&self, name: &str, flags: libc::c_int, mode: libc::c_uint) -> io::Result<OwnedFd> {
        let c = plain_name(name)?;
        // SAFETY: a plain syscall on a NUL-terminated string we own, relative to a descriptor
        // we own.
        let fd = check(unsafe {
            libc::openat(
                self.fd.as_raw_fd(),
                c.as_ptr(),
                flags | libc::O_NOFOLLOW | libc::O_CLOEXEC,
                mode,
            )
        })?;
        // SAFETY: `fd` was just opened and is owned by nobody else.
        Ok(unsafe { OwnedFd::from_raw_fd(fd) })
    }

    /// The directory `name` in this one; `ErrorKind::NotFound` if absent, an error if it is a
    /// symlink or not a directory.
    pub fn subdir(&self, name: &str) -> io::Result<Dir> {
        let fd = self.open_at(name, libc::O_RDONLY | libc::O_DIRECTORY, 0)?;
        Ok(Dir { fd })
    }

    /// [`Dir::subdir`], creating it (mode 0700) when absent.
    pub fn subdir_or_create(&self, name: &str) -> io::Result<Dir> {
        match self.subdir(name) {
            Err(err) if err.kind() == io::ErrorKind::NotFound => {
                let c = plain_name(name)?;
                // SAFETY: a plain syscall relative to a descriptor we own.
                let made = check(unsafe { libc::mkdirat(self.fd.as_raw_fd(), c.as_ptr(), 0o700) });
                match made {
                    Ok(_) => {}
                    Err(err) if err.kind() == io::ErrorKind::AlreadyExists => {}
                    Err(err) => return Err(err),
                }
                self.subdir(name)
            }
            other => other,
        }
    }

    /// The regular file `name` for reading; an error if it is a symlink or anything else.
    pub fn open_file(&self, name: &str) -> io::Result<File> {
        // O_NONBLOCK keeps a planted FIFO from blocking the open; it is refused below anyway.
        let file = File::from(self.open_at(name, libc::O_RDONLY | libc::O_NONBLOCK, 0)?);
        if !file.metadata()?.file_type().is_file() {
            return Err(io::Error::new(
                io::ErrorKind::InvalidInput,
                format!("`{name}` is not a regular file"),
            ));
        }
        Ok(file)
    }

    /// Writes `bytes` as `name` through the `atomic-write` crate, relative to this
    /// directory's descriptor: a new file made with `O_EXCL` under a temporary name beside it
    /// (never an existing one, never through a symlink), fsynced, renamed over `name` (which
    /// replaces `name` itself, never what it may point to), the directory fsynced.
    pub fn write_atomic(&self, name: &str, bytes: &[u8]) -> io::Result<()> {
        plain_name(name)?;
        let fd = self.fd.try_clone()?;
        let path = PathBuf::from(format!("/proc/self/fd/{}", fd.as_raw_fd()));
        atomic_write::Dir::from_fd(fd, path)
            .replace(std::ffi::OsStr::new(name))
            .mode(0o600)
            .write(bytes)
    }

    /// The names in this directory (`.` and `..` left out), in no particular order.
    pub fn names(&self) -> io::Result<Vec<String>> {
        let path = PathBuf::from(format!("/proc/self/fd/{}", self.fd.as_raw_fd()));
        let mut names = Vec::new();
        for entry in std::fs::read_dir(path)? {
            if let Ok(name) = entry?.file_name().into_string() {
                names.push(name);
            }
        }
        Ok(names)
    }
}

/// The name under which another library (FFmpeg) opens exactly `file`.
pub fn fd_path(file: &File) -> PathBuf {
    PathBuf::from(format!("/proc/self/fd/{}", file.as_raw_fd()))
}

/// A job's folder: `<jobs_dir>/<id>`, the id a plain name.
pub fn job_dir(jobs_dir: &Path, id: &str) -> io::Result<Dir> {
    Dir::open_trusted(jobs_dir)?.subdir(id)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn symlinks_and_path_tricks_are_refused() {
        let root = tempfile::tempdir().expect("temp dir");
        let secret = root.path().join("secret");
        std::fs::write(&secret, "keep out").expect("write");
        let job = root.path().join("job");
        std::fs::create_dir_all(job.join("work/clips")).expect("dirs");
        std::fs::write(job.join("work/clips/0.mkv"), "clip").expect("write");
        std::os::unix::fs::symlink(&secret, job.join("work/clips/1.mkv")).expect("symlink");
        std::os::unix::fs::symlink(job.join("work"), job.join("linked")).expect("symlink");

        let dir = job_dir(root.path(), "job").expect("job dir");
        let clips = dir
            .subdir("work")
            .and_then(|w| w.subdir("clips"))
            .expect("clips");
        let mut text = String::new();
        use std::io::Read;
        clips
            .open_file("0.mkv")
            .expect("a plain file")
            .read_to_string(&mut text)
            .expect("read");
        assert_eq!(text, "clip");
        assert!(clips.open_file("1.mkv").is_err(), "a symlinked file");
        assert!(dir.subdir("linked").is_err(), "a symlinked directory");
        assert!(clips.open_file("../../../secret").is_err(), "a path");
        assert!(dir.subdir("..").is_err());
        assert!(dir.open_file("work").is_err(), "a directory is not a file");
        assert_eq!(
            clips.open_file("9.mkv").expect_err("absent").kind(),
            io::ErrorKind::NotFound
        );
    }

    #[test]
    fn writes_replace_a_planted_symlink_instead_of_following_it() {
        let root = tempfile::tempdir().expect("temp dir");
        let secret = root.path().join("secret");
        std::fs::write(&secret, "keep").expect("write");
        let dir = Dir::open_trusted(root.path()).expect("dir");
        let preview = dir.subdir_or_create("preview").expect("created");
        std::os::unix::fs::symlink(&secret, root.path().join("preview/0.ts")).expect("symlink");
        preview.write_atomic("0.ts", b"segment").expect("written");
        assert_eq!(std::fs::read_to_string(&secret).expect("secret"), "keep");
        assert_eq!(
            std::fs::read(root.path().join("preview/0.ts")).expect("file"),
            b"segment"
        );
        assert!(std::fs::symlink_metadata(root.path().join("preview/0.ts"))
            .expect("meta")
            .is_file());
        // Opened again, not created twice.
        dir.subdir_or_create("preview").expect("exists");
    }
}
