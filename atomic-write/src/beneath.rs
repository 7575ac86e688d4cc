//! Reaching a file from a trusted directory without following a symlink on the way.
//!
//! A job names its files by path, under an allowed root, and people other than the service
//! control the folders on that path. Checking a path and then opening it by name is two
//! steps: between them a folder can be renamed away and a symlink put in its place, and the
//! open would follow it. Here every step below the root is opened relative to the descriptor
//! of the step above, with `openat2(RESOLVE_BENEATH | RESOLVE_NO_SYMLINKS)` (or, on kernels
//! without `openat2`, `openat` with `O_NOFOLLOW`, one component at a time). A symlink, a `..`
//! or anything that is not a folder where a folder should be stops the walk with an error
//! that names the path and what is there now ([`Changed`]). The caller then works on the
//! descriptors it got, never on the path again.

use std::ffi::{CString, OsStr};
use std::fmt;
use std::fs::File;
use std::io;
use std::os::fd::{AsFd, AsRawFd, FromRawFd, OwnedFd};
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Component, Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};

use super::{check, Dir};

/// Set once `openat2` answered `ENOSYS`: every later step uses the `O_NOFOLLOW` walk.
static NO_OPENAT2: AtomicBool = AtomicBool::new(false);

/// What stopped a walk beneath a root: the path as far as the walk got, and what is there.
#[derive(Debug)]
pub struct Changed {
    /// The step that could not be taken (the root joined with the components so far).
    pub at: PathBuf,
    /// What is there instead, in words ("is a symbolic link to `/tmp/x`").
    pub what: String,
    /// The error the kernel gave, where there was one.
    pub source: Option<io::Error>,
}

impl fmt::Display for Changed {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "`{}` {}", self.at.display(), self.what)?;
        if let Some(source) = &self.source {
            write!(f, " ({source})")?;
        }
        Ok(())
    }
}

impl std::error::Error for Changed {}

impl From<Changed> for io::Error {
    fn from(changed: Changed) -> io::Error {
        let kind = changed
            .source
            .as_ref()
            .map_or(io::ErrorKind::InvalidData, io::Error::kind);
        io::Error::new(kind, changed)
    }
}

/// The plain names of `rel`, refusing anything that is not one (`..`, `/`, `.`).
fn components(root: &Path, rel: &Path) -> Result<Vec<CString>, Changed> {
    let mut names = Vec::new();
    for component in rel.components() {
        match component {
            Component::Normal(name) => {
                names.push(CString::new(name.as_bytes()).map_err(|_| Changed {
                    at: root.join(rel),
                    what: "holds a NUL byte".to_string(),
                    source: None,
                })?)
            }
            Component::CurDir => {}
            _ => {
                return Err(Changed {
                    at: root.join(rel),
                    what: "leaves its root (`..` or an absolute part)".to_string(),
                    source: None,
                })
            }
        }
    }
    Ok(names)
}

/// `openat2(dir, name, flags, RESOLVE_BENEATH | RESOLVE_NO_SYMLINKS | RESOLVE_NO_MAGICLINKS)`,
/// or `openat` with `O_NOFOLLOW` where the kernel has no `openat2`. `name` is one component.
fn open_step(dir: libc::c_int, name: &CString, flags: libc::c_int) -> io::Result<OwnedFd> {
    let flags = flags | libc::O_CLOEXEC | libc::O_NOFOLLOW;
    if !NO_OPENAT2.load(Ordering::Relaxed) {
        // SAFETY: an all-zero open_how is valid; the fields are set below.
        let mut how: libc::open_how = unsafe { std::mem::zeroed() };
        how.flags = flags as u64;
        how.resolve =
            libc::RESOLVE_BENEATH | libc::RESOLVE_NO_SYMLINKS | libc::RESOLVE_NO_MAGICLINKS;
        // SAFETY: `name` is NUL-terminated and `how` is a valid open_how of the size passed;
        // both outlive the call.
        let rc = unsafe {
            libc::syscall(
                libc::SYS_openat2,
                dir,
                name.as_ptr(),
                &how as *const libc::open_how,
                std::mem::size_of::<libc::open_how>(),
            )
        };
        if rc >= 0 {
            // SAFETY: the kernel just returned this descriptor and nothing else owns it.
            return Ok(unsafe { OwnedFd::from_raw_fd(rc as libc::c_int) });
        }
        let err = io::Error::last_os_error();
        if err.raw_os_error() != Some(libc::ENOSYS) {
            return Err(err);
        }
        NO_OPENAT2.store(true, Ordering::Relaxed);
    }
    // SAFETY: `name` is NUL-terminated and outlives the call; `dir` is an open descriptor.
    let fd = check(unsafe { libc::openat(dir, name.as_ptr(), flags, 0o666) })?;
    // SAFETY: `openat` just returned this descriptor and nothing else owns it.
    Ok(unsafe { OwnedFd::from_raw_fd(fd) })
}

/// Words for what sits at `name` in `dir` now, after a step there failed with `err`.
fn describe(dir: libc::c_int, name: &CString, err: &io::Error, want_dir: bool) -> String {
    // SAFETY: an all-zero stat is valid for fstatat to fill in.
    let mut st: libc::stat = unsafe { std::mem::zeroed() };
    // SAFETY: `name` is NUL-terminated; `st` is writable.
    let rc = unsafe { libc::fstatat(dir, name.as_ptr(), &mut st, libc::AT_SYMLINK_NOFOLLOW) };
    if rc != 0 {
        return match err.raw_os_error() {
            Some(libc::ENOENT) => "does not exist (any more)".to_string(),
            _ => "cannot be opened".to_string(),
        };
    }
    match st.st_mode & libc::S_IFMT {
        libc::S_IFLNK => {
            let mut buf = vec![0u8; 4096];
            // SAFETY: `buf` is writable for its length; `name` is NUL-terminated.
            let len =
                unsafe { libc::readlinkat(dir, name.as_ptr(), buf.as_mut_ptr().cast(), buf.len()) };
            let target = if len >= 0 {
                buf.truncate(len as usize);
                format!(" to `{}`", Path::new(OsStr::from_bytes(&buf)).display())
            } else {
                String::new()
            };
            format!("is now a symbolic link{target}; links are not followed on a job's paths")
        }
        libc::S_IFDIR if !want_dir => "is a folder, not a file".to_string(),
        libc::S_IFDIR => "cannot be opened".to_string(),
        _ if want_dir => "is no longer a folder".to_string(),
        _ => "is not a regular file".to_string(),
    }
}

/// One folder reached by a walk, for callers that check each one (rights of the job's owner).
pub struct Step<'a> {
    /// The folder's descriptor (opened `O_PATH`: good for `fstat` and as a `*at` base).
    pub fd: &'a OwnedFd,
    /// How messages name it.
    pub path: &'a Path,
    /// Whether the walk created it (`create` walks only).
    pub created: bool,
}

/// Walks from the directory `root` down the folders of `rel` and returns the last one, open
/// for reading. `root` itself is opened by path: it is the trusted part (an allowed root from
/// the daemon's configuration). With `create`, missing folders are made (`mkdirat`, mode 0777
/// before the umask). `each` sees every folder, the root first, and may refuse it.
pub fn open_dir_beneath(
    root: &Path,
    rel: &Path,
    create: bool,
    mut each: impl FnMut(Step<'_>) -> io::Result<()>,
) -> io::Result<Dir> {
    let names = components(root, rel)?;
    let root_file = std::fs::OpenOptions::new()
        .read(true)
        .custom_flags(libc::O_PATH | libc::O_DIRECTORY | libc::O_CLOEXEC)
        .open(root)?;
    let mut current = OwnedFd::from(root_file);
    let mut path = root.to_path_buf();
    each(Step {
        fd: &current,
        path: &path,
        created: false,
    })?;
    for name in &names {
        path.push(OsStr::from_bytes(name.as_bytes()));
        let flags = libc::O_PATH | libc::O_DIRECTORY;
        let mut created = false;
        let next = match open_step(current.as_raw_fd(), name, flags) {
            Ok(fd) => fd,
            Err(err) if create && err.raw_os_error() == Some(libc::ENOENT) => {
                // SAFETY: `name` is NUL-terminated; the descriptor is open.
                let rc = unsafe { libc::mkdirat(current.as_raw_fd(), name.as_ptr(), 0o777) };
                if rc != 0 {
                    let err = io::Error::last_os_error();
                    if err.raw_os_error() != Some(libc::EEXIST) {
                        return Err(err);
                    }
                }
                created = rc == 0;
                open_step(current.as_raw_fd(), name, flags).map_err(|err| Changed {
                    what: describe(current.as_raw_fd(), name, &err, true),
                    at: path.clone(),
                    source: Some(err),
                })?
            }
            Err(err) => {
                return Err(Changed {
                    what: describe(current.as_raw_fd(), name, &err, true),
                    at: path.clone(),
                    source: Some(err),
                }
                .into())
            }
        };
        each(Step {
            fd: &next,
            path: &path,
            created,
        })?;
        current = next;
    }
    // The O_PATH descriptor cannot be synced; the same folder is opened again through it.
    let reopened = reopen(&current, libc::O_RDONLY | libc::O_DIRECTORY)?;
    Ok(Dir::from_fd(reopened, path))
}

/// The file behind an `O_PATH` descriptor, opened again with `flags` (through
/// `/proc/self/fd`, which names that very file, not whatever has its name now).
fn reopen(fd: &OwnedFd, flags: libc::c_int) -> io::Result<OwnedFd> {
    let magic = CString::new(format!("/proc/self/fd/{}", fd.as_raw_fd()))
        .map_err(|_| io::Error::other("a descriptor path holds a NUL byte"))?;
    // SAFETY: `magic` is NUL-terminated and outlives the call.
    let raw = check(unsafe { libc::open(magic.as_ptr(), flags | libc::O_CLOEXEC) })?;
    // SAFETY: `open` just returned this descriptor and nothing else owns it.
    Ok(unsafe { OwnedFd::from_raw_fd(raw) })
}

/// Opens the regular file `name` in `dir` for reading, refusing a symlink, a folder, a FIFO
/// or a device. The error names `dir`'s path joined with `name` and what is there.
pub fn open_file_in(dir: &Dir, name: &OsStr) -> io::Result<File> {
    let at = dir.path().join(name);
    let c_name = CString::new(name.as_bytes()).map_err(|_| Changed {
        at: at.clone(),
        what: "holds a NUL byte".to_string(),
        source: None,
    })?;
    let fd = open_step(
        dir.as_fd().as_raw_fd(),
        &c_name,
        libc::O_RDONLY | libc::O_NONBLOCK,
    )
    .map_err(|err| Changed {
        what: describe(dir.as_fd().as_raw_fd(), &c_name, &err, false),
        at: at.clone(),
        source: Some(err),
    })?;
    let file = File::from(fd);
    if !file.metadata()?.is_file() {
        return Err(Changed {
            at,
            what: "is not a regular file".to_string(),
            source: None,
        }
        .into());
    }
    // Reads block again as usual (O_NONBLOCK was only against a FIFO put at the name).
    // SAFETY: plain fcntl calls on a descriptor this function owns.
    unsafe {
        let flags = libc::fcntl(file.as_raw_fd(), libc::F_GETFL);
        if flags >= 0 {
            libc::fcntl(file.as_raw_fd(), libc::F_SETFL, flags & !libc::O_NONBLOCK);
        }
    }
    Ok(file)
}

/// Whether the `openat2` fallback is in use (the kernel answered `ENOSYS`); for tests and logs.
pub fn openat2_missing() -> bool {
    NO_OPENAT2.load(Ordering::Relaxed)
}

/// Forces the `O_NOFOLLOW` walk, as on a kernel without `openat2`; for tests of the fallback.
#[doc(hidden)]
pub fn force_fallback_walk() {
    NO_OPENAT2.store(true, Ordering::Relaxed);
}
