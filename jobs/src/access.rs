//! May this person read or write that path? The answer the kernel would give if the job's
//! owner opened the file themselves, computed from their uid and groups.
//!
//! The daemon and its workers run as the service user, which may read much that the person who
//! dropped a job may not. Every input and output of a job is therefore checked against its
//! owner's rights before the service touches it: the permission bits, the file's owner and
//! group, a POSIX access ACL (`system.posix_acl_access`) where one is set, and search (`x`)
//! permission on every directory on the way. Paths are checked after symlinks are resolved, so
//! a link cannot lend its reader rights the target does not give.
//!
//! Root (uid 0) may read and write everything and search every directory, as the kernel lets it.

use std::ffi::CString;
use std::fmt;
use std::fs::File;
use std::io;
use std::os::fd::{AsFd, AsRawFd, BorrowedFd};
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::{MetadataExt, OpenOptionsExt};
use std::path::Path;

use serde::{Deserialize, Serialize};

use crate::JobsError;

/// Someone whose rights are checked: a uid, a name for messages, and every group they are in.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Person {
    pub uid: u32,
    /// The login name, or the uid in digits when it has none.
    #[serde(default)]
    pub name: String,
    /// The primary group and every supplementary group.
    #[serde(default)]
    pub gids: Vec<u32>,
}

impl Person {
    pub fn is_root(&self) -> bool {
        self.uid == 0
    }

    fn in_group(&self, gid: u32) -> bool {
        self.gids.contains(&gid)
    }
}

impl fmt::Display for Person {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{} (uid {})", self.name, self.uid)
    }
}

/// One kind of access.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Right {
    Read,
    Write,
    /// `x` on a directory: passing through it.
    Search,
}

impl Right {
    fn bit(self) -> u32 {
        match self {
            Right::Read => 4,
            Right::Write => 2,
            Right::Search => 1,
        }
    }
}

impl fmt::Display for Right {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Right::Read => "read (r)",
            Right::Write => "write (w)",
            Right::Search => "search (x)",
        })
    }
}

/// Why a path may not be used on someone's behalf: [`JobsError::AccessDenied`], or
/// [`JobsError::Io`] when the path cannot be looked at.
pub type AccessError = JobsError;

fn io_error(path: &Path, source: io::Error) -> JobsError {
    JobsError::Io {
        action: "check",
        path: path.to_path_buf(),
        source,
    }
}

/// Whether `person` may read the file `path` (and pass through every directory above it).
pub fn check_read(person: &Person, path: &Path) -> Result<(), JobsError> {
    let real = path.canonicalize().map_err(|err| io_error(path, err))?;
    check_dirs_above(person, &real)?;
    require(person, &real, Right::Read)
}

/// Whether `person` may create (or replace) the file `path`: write and search on the nearest
/// directory that exists and search on every one above it. A file already there may be
/// replaced as the kernel would let them rename over it: in a sticky directory only when they
/// own the file or the directory.
pub fn check_write(person: &Person, path: &Path) -> Result<(), JobsError> {
    if let Ok(real) = path.canonicalize() {
        check_dirs_above(person, &real)?;
        let parent = real.parent().unwrap_or(Path::new("/"));
        require(person, parent, Right::Write)?;
        let dir = std::fs::metadata(parent).map_err(|err| io_error(parent, err))?;
        let file = std::fs::metadata(&real).map_err(|err| io_error(&real, err))?;
        let sticky = dir.mode() & 0o1000 != 0;
        if sticky && !person.is_root() && person.uid != dir.uid() && person.uid != file.uid() {
            return Err(JobsError::AccessDenied {
                who: person.to_string(),
                right: Right::Write,
                path: real,
            });
        }
        return Ok(());
    }
    let mut existing = path.parent();
    while let Some(dir) = existing {
        if let Ok(real) = dir.canonicalize() {
            check_dirs_above(person, &real)?;
            require(person, &real, Right::Search)?;
            return require(person, &real, Right::Write);
        }
        existing = dir.parent();
    }
    Err(io_error(
        path,
        io::Error::new(io::ErrorKind::NotFound, "no directory of it exists"),
    ))
}

/// Search permission on every directory above `real` (an absolute, resolved path).
pub(crate) fn check_dirs_above(person: &Person, real: &Path) -> Result<(), JobsError> {
    let mut dirs: Vec<&Path> = real.ancestors().skip(1).collect();
    dirs.reverse();
    for dir in dirs {
        require(person, dir, Right::Search)?;
    }
    Ok(())
}

fn require(person: &Person, path: &Path, right: Right) -> Result<(), JobsError> {
    if person.is_root() {
        return Ok(());
    }
    let meta = std::fs::metadata(path).map_err(|err| io_error(path, err))?;
    let acl = read_acl(path).map_err(|err| io_error(path, err))?;
    decide(person, &meta, acl.as_deref(), right, path)
}

/// Whether `meta` and `acl` give `person` `right`, as a refusal naming `path` when not.
fn decide(
    person: &Person,
    meta: &std::fs::Metadata,
    acl: Option<&[AclEntry]>,
    right: Right,
    path: &Path,
) -> Result<(), JobsError> {
    if allows(person, meta.uid(), meta.gid(), meta.mode(), acl, right) {
        Ok(())
    } else {
        Err(JobsError::AccessDenied {
            who: person.to_string(),
            right,
            path: path.to_path_buf(),
        })
    }
}

/// [`require`] on an open file or folder: its owner, group, mode and ACL as the descriptor
/// shows them, so a name swapped meanwhile cannot change the answer. `path` names it in the
/// refusal.
pub fn require_fd(
    person: &Person,
    fd: BorrowedFd<'_>,
    path: &Path,
    right: Right,
) -> Result<(), JobsError> {
    if person.is_root() {
        return Ok(());
    }
    let meta = File::from(fd.try_clone_to_owned().map_err(|err| io_error(path, err))?)
        .metadata()
        .map_err(|err| io_error(path, err))?;
    let acl = read_acl(&fd_path(fd)).map_err(|err| io_error(path, err))?;
    decide(person, &meta, acl.as_deref(), right, path)
}

/// `/proc/self/fd/N`: a name for exactly the file behind `fd` (also for `O_PATH` descriptors,
/// which the `f*xattr` calls do not take).
fn fd_path(fd: BorrowedFd<'_>) -> std::path::PathBuf {
    std::path::PathBuf::from(format!("/proc/self/fd/{}", fd.as_raw_fd()))
}

/// The POSIX access check (acl(5), "ACCESS CHECK ALGORITHM") for a non-root person.
pub fn allows(
    person: &Person,
    file_uid: u32,
    file_gid: u32,
    mode: u32,
    acl: Option<&[AclEntry]>,
    right: Right,
) -> bool {
    let bit = right.bit();
    if person.uid == file_uid {
        return (mode >> 6) & bit != 0;
    }
    let Some(acl) = acl.filter(|acl| !acl.is_empty()) else {
        if person.in_group(file_gid) {
            return (mode >> 3) & bit != 0;
        }
        return mode & bit != 0;
    };
    let mask = acl
        .iter()
        .find(|entry| entry.tag == AclTag::Mask)
        .map_or(7, |entry| entry.perm);
    if let Some(entry) = acl
        .iter()
        .find(|entry| entry.tag == AclTag::User && entry.id == person.uid)
    {
        return entry.perm & mask & bit != 0;
    }
    let mut group_matched = false;
    for entry in acl {
        let matches = match entry.tag {
            AclTag::GroupObj => person.in_group(file_gid),
            AclTag::Group => person.in_group(entry.id),
            _ => false,
        };
        if matches {
            group_matched = true;
            if entry.perm & mask & bit != 0 {
                return true;
            }
        }
    }
    if group_matched {
        return false;
    }
    acl.iter()
        .find(|entry| entry.tag == AclTag::Other)
        .map_or(mode & bit != 0, |entry| entry.perm & bit != 0)
}

/// The kind of an ACL entry (the `ACL_*` tags of the xattr format).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum AclTag {
    UserObj,
    User,
    GroupObj,
    Group,
    Mask,
    Other,
}

impl AclTag {
    fn code(self) -> u16 {
        match self {
            AclTag::UserObj => 0x01,
            AclTag::User => 0x02,
            AclTag::GroupObj => 0x04,
            AclTag::Group => 0x08,
            AclTag::Mask => 0x10,
            AclTag::Other => 0x20,
        }
    }

    fn from_code(code: u16) -> Option<AclTag> {
        [
            AclTag::UserObj,
            AclTag::User,
            AclTag::GroupObj,
            AclTag::Group,
            AclTag::Mask,
            AclTag::Other,
        ]
        .into_iter()
        .find(|tag| tag.code() == code)
    }
}

/// One entry: a tag, `rwx` as the bits 4/2/1, and the uid or gid for named entries.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct AclEntry {
    pub tag: AclTag,
    pub perm: u32,
    pub id: u32,
}

const ACL_XATTR: &str = "system.posix_acl_access";
const ACL_VERSION: u32 = 2;
/// The id field of entries that name nobody.
const ACL_UNDEFINED_ID: u32 = u32::MAX;

/// Decodes the xattr: a little-endian u32 version (2), then 8-byte entries of u16 tag, u16
/// permissions, u32 id.
pub fn parse_acl(bytes: &[u8]) -> Result<Vec<AclEntry>, String> {
    if bytes.len() < 4 || (bytes.len() - 4) % 8 != 0 {
        return Err(format!("ACL of {} bytes is malformed", bytes.len()));
    }
    let version = u32::from_le_bytes([bytes[0], bytes[1], bytes[2], bytes[3]]);
    if version != ACL_VERSION {
        return Err(format!("ACL version {version} is unknown"));
    }
    bytes[4..]
        .chunks_exact(8)
        .map(|chunk| {
            let code = u16::from_le_bytes([chunk[0], chunk[1]]);
            let perm = u16::from_le_bytes([chunk[2], chunk[3]]);
            let id = u32::from_le_bytes([chunk[4], chunk[5], chunk[6], chunk[7]]);
            let tag = AclTag::from_code(code).ok_or(format!("ACL tag {code:#x} is unknown"))?;
            Ok(AclEntry {
                tag,
                perm: u32::from(perm & 7),
                id,
            })
        })
        .collect()
}

/// The xattr bytes for `entries`, sorted the way the kernel wants them (by tag, then id).
pub fn encode_acl(entries: &[AclEntry]) -> Vec<u8> {
    let mut sorted = entries.to_vec();
    sorted.sort_by_key(|entry| (entry.tag.code(), entry.id));
    let mut bytes = ACL_VERSION.to_le_bytes().to_vec();
    for entry in sorted {
        bytes.extend_from_slice(&entry.tag.code().to_le_bytes());
        bytes.extend_from_slice(&((entry.perm & 7) as u16).to_le_bytes());
        bytes.extend_from_slice(&entry.id.to_le_bytes());
    }
    bytes
}

fn c_path(path: &Path) -> io::Result<CString> {
    CString::new(path.as_os_str().as_bytes()).map_err(io::Error::other)
}

/// The access ACL of `path` (following symlinks), or `None` when it has none or the file
/// system keeps none.
pub fn read_acl(path: &Path) -> io::Result<Option<Vec<AclEntry>>> {
    let c_path = c_path(path)?;
    let name = CString::new(ACL_XATTR).map_err(io::Error::other)?;
    let mut buf = vec![0u8; 4 + 8 * 32];
    loop {
        // SAFETY: both names are NUL-terminated and `buf` is writable for `buf.len()` bytes.
        let len = unsafe {
            libc::getxattr(
                c_path.as_ptr(),
                name.as_ptr(),
                buf.as_mut_ptr().cast(),
                buf.len(),
            )
        };
        if len >= 0 {
            buf.truncate(len as usize);
            return parse_acl(&buf).map(Some).map_err(io::Error::other);
        }
        let err = io::Error::last_os_error();
        match err.raw_os_error() {
            Some(libc::ENODATA) | Some(libc::EOPNOTSUPP) => return Ok(None),
            Some(libc::ERANGE) if buf.len() < 1 << 20 => buf.resize(buf.len() * 4, 0),
            _ => return Err(err),
        }
    }
}

/// Leaves a finished file readable by `owner` though the service, not they, created it: the
/// ACL `user::rw-, user:<owner>:r--, group::---, mask::r--, other::---` (shown by `ls -l` as
/// 0640+), so the owner and the service may read it and nobody else. Where the file system
/// keeps no ACLs the mode becomes 0640: then the file's group (the directory's own group
/// when the directory is setgid) may read it too.
pub fn leave_readable_by(path: &Path, owner: &Person) -> io::Result<()> {
    let file = std::fs::OpenOptions::new()
        .read(true)
        .custom_flags(libc::O_NOFOLLOW | libc::O_CLOEXEC)
        .open(path)?;
    leave_readable_by_fd(&file, owner)
}

/// [`leave_readable_by`] through an open file: the mode and the ACL are set on exactly that
/// file (`fchmod`, `fsetxattr`), whatever its name leads to meanwhile.
pub fn leave_readable_by_fd(file: &File, owner: &Person) -> io::Result<()> {
    use std::os::unix::fs::PermissionsExt;
    let meta = file.metadata()?;
    if owner.is_root() || owner.uid == meta.uid() {
        return Ok(());
    }
    file.set_permissions(std::fs::Permissions::from_mode(0o640))?;
    let entries = [
        AclEntry {
            tag: AclTag::UserObj,
            perm: 6,
            id: ACL_UNDEFINED_ID,
        },
        AclEntry {
            tag: AclTag::User,
            perm: 4,
            id: owner.uid,
        },
        AclEntry {
            tag: AclTag::GroupObj,
            perm: 0,
            id: ACL_UNDEFINED_ID,
        },
        AclEntry {
            tag: AclTag::Mask,
            perm: 4,
            id: ACL_UNDEFINED_ID,
        },
        AclEntry {
            tag: AclTag::Other,
            perm: 0,
            id: ACL_UNDEFINED_ID,
        },
    ];
    let bytes = encode_acl(&entries);
    let name = CString::new(ACL_XATTR).map_err(io::Error::other)?;
    // SAFETY: the name is NUL-terminated, `bytes` is readable for its length and the
    // descriptor is open.
    let rc = unsafe {
        libc::fsetxattr(
            file.as_fd().as_raw_fd(),
            name.as_ptr(),
            bytes.as_ptr().cast(),
            bytes.len(),
            0,
        )
    };
    if rc == 0 {
        return Ok(());
    }
    let err = io::Error::last_os_error();
    if err.raw_os_error() == Some(libc::EOPNOTSUPP) {
        return Ok(());
    }
    Err(err)
}

#[cfg(test)]
mod tests;
