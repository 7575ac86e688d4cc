//! A job's files, opened from their allowed root without following symlinks, with the
//! owner's rights checked on what was opened.
//!
//! Intake checks every path a job names ([`crate::paths`], [`crate::access`]), but by name:
//! the folders on the way belong to people, and a folder renamed away and replaced by a
//! symlink afterwards would lead the service somewhere else. So when the worker reads an
//! input or writes the video, it starts again from the allowed root the path was found under
//! at intake and opens each step relative to the one above, refusing a symlink at any step
//! (`atomic_write::beneath`). The owner's rights are checked on each opened folder and on the
//! opened file (owner, mode, ACL, as the descriptor shows them), and the caller reads or
//! writes through those descriptors only. A path that no longer leads where it did fails with
//! [`JobsError::PathChanged`], naming the path and what is there now.
//!
//! Paths in a job are resolved at intake (no symlink, no `..`), so a job recorded before roots
//! were kept is walked from `/`: any symlink on its path is then a change as well.

use std::ffi::{OsStr, OsString};
use std::fs::File;
use std::os::fd::{AsFd, OwnedFd};
use std::path::{Path, PathBuf};

use atomic_write::Dir;
use serde::{Deserialize, Serialize};

use crate::access::{self, Person, Right};
use crate::JobsError;

/// The allowed root each of a job's paths was found under at intake (resolved), kept in its
/// `state.json` so that the worker starts its walks there.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct JobRoots {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub image: Option<PathBuf>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub audio: Option<PathBuf>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub output: Option<PathBuf>,
}

/// The allowed root (resolved) that `path`, a resolved path, lies under: the deepest one.
pub fn root_of(path: &Path, roots: &[PathBuf]) -> Option<PathBuf> {
    roots
        .iter()
        .filter_map(|root| root.canonicalize().ok())
        .filter(|root| path.starts_with(root))
        .max_by_key(|root| root.components().count())
}

fn changed(key: &str, path: &Path, err: std::io::Error) -> JobsError {
    JobsError::PathChanged {
        key: key.to_string(),
        path: path.to_path_buf(),
        changed: err,
    }
}

/// `path` relative to `root` (`/` when the job kept no root).
fn relative<'p>(
    key: &str,
    root: Option<&Path>,
    path: &'p Path,
) -> Result<(PathBuf, &'p Path), JobsError> {
    let root = root.unwrap_or(Path::new("/")).to_path_buf();
    let rel = path.strip_prefix(&root).map_err(|_| {
        changed(
            key,
            path,
            std::io::Error::other(format!("is not under its allowed root {}", root.display())),
        )
    })?;
    Ok((root, rel))
}

/// `path` as its allowed root, the folders between them and the file's name, once `owner`
/// may search every folder down to the root.
fn split_beneath<'p>(
    key: &str,
    owner: Option<&Person>,
    root: Option<&Path>,
    path: &'p Path,
) -> Result<(PathBuf, &'p Path, &'p OsStr), JobsError> {
    let (root, rel) = relative(key, root, path)?;
    let (Some(folders), Some(name)) = (rel.parent(), rel.file_name()) else {
        return Err(changed(key, path, std::io::Error::other("names no file")));
    };
    if let Some(owner) = owner {
        access::check_dirs_above(owner, &root)?;
    }
    Ok((root, folders, name))
}

/// Opens the input file `path` (the job key `key` names it) from `root` for reading, after
/// checking that `owner` may search every folder on the way and read the file itself.
pub fn open_input(
    key: &str,
    owner: Option<&Person>,
    root: Option<&Path>,
    path: &Path,
) -> Result<File, JobsError> {
    let (root, folders, name) = split_beneath(key, owner, root, path)?;
    let mut denied = None;
    let dir = atomic_write::open_dir_beneath(&root, folders, false, |step| {
        if let Some(owner) = owner {
            if let Err(err) = access::require_fd(owner, step.fd.as_fd(), step.path, Right::Search) {
                denied = Some(err);
                return Err(std::io::Error::other("access denied"));
            }
        }
        Ok(())
    });
    if let Some(err) = denied {
        return Err(err);
    }
    let dir = dir.map_err(|err| changed(key, path, err))?;
    let file = atomic_write::open_file_in(&dir, name).map_err(|err| changed(key, path, err))?;
    if let Some(owner) = owner {
        access::require_fd(owner, file.as_fd(), path, Right::Read)?;
    }
    Ok(file)
}

/// Opens the folder the output file `path` goes into, from `root`, making the folders that
/// are missing; `owner` must be able to search every folder on the way and write into the
/// last one that existed. Returns the folder and the file's name in it.
pub fn open_output_dir(
    owner: Option<&Person>,
    root: Option<&Path>,
    path: &Path,
) -> Result<(Dir, OsString), JobsError> {
    let key = "output.path";
    let (root, folders, name) = split_beneath(key, owner, root, path)?;
    let mut denied = None;
    // The last folder that existed, until its write right has been checked.
    let mut unchecked: Option<(OwnedFd, PathBuf)> = None;
    let dir = atomic_write::open_dir_beneath(&root, folders, true, |step| {
        let Some(owner) = owner else {
            return Ok(());
        };
        let result = if step.created {
            match unchecked.take() {
                Some((fd, at)) => access::require_fd(owner, fd.as_fd(), &at, Right::Write),
                None => Ok(()),
            }
        } else {
            unchecked = Some((step.fd.try_clone()?, step.path.to_path_buf()));
            access::require_fd(owner, step.fd.as_fd(), step.path, Right::Search)
        };
        result.map_err(|err| {
            denied = Some(err);
            std::io::Error::other("access denied")
        })
    });
    if let Some(err) = denied {
        return Err(err);
    }
    let dir = dir.map_err(|err| changed(key, path, err))?;
    if let (Some(owner), Some((fd, at))) = (owner, unchecked) {
        access::require_fd(owner, fd.as_fd(), &at, Right::Write)?;
    }
    Ok((dir, name.to_os_string()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn inputs_and_outputs_are_refused_once_a_folder_on_the_way_is_a_link() {
        let tmp = tempfile::tempdir().expect("temp dir");
        let base = tmp.path().canonicalize().expect("canonical");
        let root = base.join("root");
        let elsewhere = base.join("elsewhere");
        std::fs::create_dir_all(root.join("sub")).expect("sub");
        std::fs::create_dir_all(elsewhere.join("sub")).expect("elsewhere");
        std::fs::write(root.join("sub/in.wav"), b"riff").expect("input");
        std::fs::write(elsewhere.join("in.wav"), b"secret").expect("secret");
        let input = root.join("sub/in.wav");
        let output = root.join("sub/deeper/out.mp4");
        assert_eq!(
            root_of(&input, std::slice::from_ref(&root)),
            Some(root.clone())
        );
        open_input("inputs.audio", None, Some(&root), &input).expect("input opens");
        let (dir, name) = open_output_dir(None, Some(&root), &output).expect("output dir");
        assert_eq!(name, "out.mp4");
        assert_eq!(dir.path(), root.join("sub/deeper"));

        std::fs::rename(root.join("sub"), root.join("sub-away")).expect("move");
        std::os::unix::fs::symlink(&elsewhere, root.join("sub")).expect("link");
        for root_given in [Some(root.as_path()), None] {
            let err = open_input("inputs.audio", None, root_given, &input).expect_err("refused");
            let text = err.to_string();
            assert!(text.contains("inputs.audio"), "{text}");
            assert!(text.contains(&input.display().to_string()), "{text}");
            assert!(text.contains("symbolic link"), "{text}");
            let err = open_output_dir(None, root_given, &output).expect_err("refused");
            assert!(err.to_string().contains("symbolic link"), "{err}");
        }
        assert!(!elsewhere.join("deeper").exists(), "nothing made outside");
        let err = open_input("inputs.image", None, Some(&root), Path::new("/etc/passwd"))
            .expect_err("outside the root");
        assert!(
            err.to_string().contains("not under its allowed root"),
            "{err}"
        );
    }
}
