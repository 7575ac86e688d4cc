//! Where a job may read and write.
//!
//! The daemon runs with more rights than the people who drop job files, so a job file must not
//! be a way to read `/etc/shadow` into a video or to overwrite someone else's output. The rule
//! is simple to state: after every `..` and symlink is resolved, inputs lie under an allowed
//! input root and the output under an allowed output root. Roots are resolved the same way, so
//! `/data` → `/mnt/disk1/data` works on both sides of the comparison.
//!
//! The output usually does not exist yet. Its nearest existing ancestor is resolved and the
//! rest is appended; a `..` in that unresolved rest is refused, because it could climb out of
//! the root without any symlink for us to see. An existing file at the output path is allowed
//! (it is replaced when the job finishes); an existing folder is not.

use std::io;
use std::path::{Component, Path, PathBuf};

/// The roots a job may read from and write to, as the daemon's configuration lists them.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Roots {
    pub inputs: Vec<PathBuf>,
    pub outputs: Vec<PathBuf>,
}

/// The roots with symlinks resolved; roots that do not exist are left out (and logged), since
/// nothing can lie under them anyway.
#[derive(Debug, Clone, Default)]
pub(crate) struct CanonicalRoots {
    pub inputs: Vec<PathBuf>,
    pub outputs: Vec<PathBuf>,
}

impl CanonicalRoots {
    pub fn new(roots: &Roots) -> CanonicalRoots {
        let resolve = |list: &[PathBuf]| {
            list.iter()
                .filter_map(|root| match root.canonicalize() {
                    Ok(real) => Some(real),
                    Err(err) => {
                        tracing::warn!(root = %root.display(), error = %err, "allowed root cannot be resolved; ignoring it");
                        None
                    }
                })
                .collect()
        };
        CanonicalRoots {
            inputs: resolve(&roots.inputs),
            outputs: resolve(&roots.outputs),
        }
    }
}

/// Why a path was refused: a sentence and what to do about it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct PathProblem {
    pub message: String,
    pub hint: String,
}

impl PathProblem {
    fn new(message: String, hint: impl Into<String>) -> PathProblem {
        PathProblem {
            message,
            hint: hint.into(),
        }
    }
}

const ABSOLUTE_HINT: &str = "the file moves once accepted; write an absolute path";

/// Checks an input file and returns its resolved path, which is what the job will read.
pub(crate) fn check_input(
    key: &str,
    path: &Path,
    roots: &[PathBuf],
) -> Result<PathBuf, PathProblem> {
    let shown = path.display();
    if !path.is_absolute() {
        return Err(PathProblem::new(
            format!("`{key}` must be an absolute path, got `{shown}`"),
            ABSOLUTE_HINT,
        ));
    }
    let real = path.canonicalize().map_err(|err| match err.kind() {
        io::ErrorKind::NotFound => PathProblem::new(
            format!("`{key}` file `{shown}` does not exist"),
            "check the spelling; the daemon looks the file up when the job is submitted",
        ),
        _ => PathProblem::new(
            format!("`{key}` file `{shown}` cannot be opened: {err}"),
            "the daemon's user needs read access to the file and search access to its folders",
        ),
    })?;
    if real.to_str().is_none() {
        return Err(PathProblem::new(
            format!("`{key}` path `{shown}` resolves to a name that is not UTF-8"),
            "rename the file (or the link target) with a UTF-8 name",
        ));
    }
    if !real.is_file() {
        return Err(PathProblem::new(
            format!("`{key}` path `{shown}` is not a regular file"),
            "point at the file itself, not at a folder or a device",
        ));
    }
    if !under_any(&real, roots) {
        return Err(outside(key, path, &real, roots, "input"));
    }
    Ok(real)
}

/// Checks the output path and returns it with its existing part resolved.
pub(crate) fn check_output(
    key: &str,
    path: &Path,
    roots: &[PathBuf],
) -> Result<PathBuf, PathProblem> {
    let shown = path.display();
    if !path.is_absolute() {
        return Err(PathProblem::new(
            format!("`{key}` must be an absolute path, got `{shown}`"),
            ABSOLUTE_HINT,
        ));
    }
    let names_a_file = path.file_name().is_some()
        && !path.as_os_str().to_string_lossy().ends_with('/')
        && !matches!(
            path.components().next_back(),
            Some(Component::ParentDir | Component::CurDir)
        );
    if !names_a_file {
        return Err(PathProblem::new(
            format!("`{key}` `{shown}` names a folder, not a file"),
            "give the full file name, e.g. /data/out/interview-042.mp4",
        ));
    }
    let (existing, rest) = split_existing(path).map_err(|err| {
        PathProblem::new(
            format!("`{key}` `{shown}` cannot be checked: {err}"),
            "the daemon's user needs search access to the folders on the way",
        )
    })?;
    let base = existing.canonicalize().map_err(|err| {
        PathProblem::new(
            format!(
                "`{key}` `{shown}` goes through `{}`, which cannot be resolved: {err}",
                existing.display()
            ),
            "a link on the way may point at something that no longer exists",
        )
    })?;
    let mut real = base.clone();
    for component in rest.components() {
        match component {
            Component::Normal(name) => real.push(name),
            _ => {
                return Err(PathProblem::new(
                    format!(
                        "`{key}` `{shown}` uses `..` after `{}`, which does not exist yet",
                        existing.display()
                    ),
                    "write the path without `..`",
                ))
            }
        }
    }
    if real.to_str().is_none() {
        return Err(PathProblem::new(
            format!("`{key}` `{shown}` resolves to a name that is not UTF-8"),
            "use a UTF-8 file name",
        ));
    }
    if rest.as_os_str().is_empty() && base.is_dir() {
        return Err(PathProblem::new(
            format!("`{key}` `{shown}` is an existing folder"),
            "give the file name of the video inside it, e.g. <folder>/job.mp4",
        ));
    }
    if !rest.as_os_str().is_empty() && !base.is_dir() {
        return Err(PathProblem::new(
            format!(
                "`{key}` `{shown}` goes through `{}`, which is not a folder",
                existing.display()
            ),
            "check the path; a file is named where a folder should be",
        ));
    }
    if !under_any(&real, roots) {
        return Err(outside(key, path, &real, roots, "output"));
    }
    Ok(real)
}

/// Splits `path` into its longest existing prefix and the rest. A dangling symlink counts as
/// existing, so that it is resolved (and fails) rather than silently written through.
fn split_existing(path: &Path) -> io::Result<(PathBuf, PathBuf)> {
    for ancestor in path.ancestors() {
        match ancestor.symlink_metadata() {
            Ok(_) => {
                let rest = path
                    .strip_prefix(ancestor)
                    .map(Path::to_path_buf)
                    .unwrap_or_default();
                return Ok((ancestor.to_path_buf(), rest));
            }
            // "Not a directory": a file sits where a folder should; the walk up finds it.
            Err(err)
                if matches!(
                    err.kind(),
                    io::ErrorKind::NotFound | io::ErrorKind::NotADirectory
                ) =>
            {
                continue
            }
            Err(err) => return Err(err),
        }
    }
    // An absolute path always has `/` as an existing ancestor.
    Err(io::Error::new(
        io::ErrorKind::NotFound,
        "no part of the path exists",
    ))
}

fn under_any(real: &Path, roots: &[PathBuf]) -> bool {
    roots.iter().any(|root| real.starts_with(root))
}

fn outside(key: &str, path: &Path, real: &Path, roots: &[PathBuf], kind: &str) -> PathProblem {
    let resolved = if real == path {
        String::new()
    } else {
        format!(" (it resolves to `{}`)", real.display())
    };
    let hint = if roots.is_empty() {
        format!("no {kind} roots are configured; the operator sets allowed_roots.{kind}s in the daemon config")
    } else {
        let listed: Vec<String> = roots.iter().map(|r| r.display().to_string()).collect();
        format!(
            "allowed {kind} roots: {}; move the file there or ask the operator to add a root (allowed_roots.{kind}s)",
            listed.join(", ")
        )
    };
    PathProblem::new(
        format!(
            "`{key}` `{}` is outside the allowed {kind} roots{resolved}",
            path.display()
        ),
        hint,
    )
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::fs;

    fn setup() -> (tempfile::TempDir, PathBuf, PathBuf) {
        let dir = tempfile::tempdir().expect("temp dir");
        let inside = dir.path().join("in");
        let outside = dir.path().join("elsewhere");
        fs::create_dir_all(&inside).expect("mkdir in");
        fs::create_dir_all(&outside).expect("mkdir elsewhere");
        let root = inside.canonicalize().expect("resolve root");
        (dir, root, outside)
    }

    #[test]
    fn input_under_root_resolves_to_real_path() {
        let (_dir, root, _) = setup();
        let file = root.join("a.png");
        fs::write(&file, b"x").expect("write");
        let found = check_input(
            "inputs.image",
            &root.join("./a.png"),
            std::slice::from_ref(&root),
        );
        assert_eq!(found, Ok(file));
    }

    #[test]
    fn input_symlink_leaving_root_is_refused() {
        let (_dir, root, outside) = setup();
        fs::write(outside.join("secret"), b"x").expect("write");
        std::os::unix::fs::symlink(outside.join("secret"), root.join("link.png")).expect("symlink");
        let err = check_input(
            "inputs.image",
            &root.join("link.png"),
            std::slice::from_ref(&root),
        )
        .expect_err("symlink leaves the root");
        assert!(err.message.contains("outside"), "{err:?}");
        assert!(err.message.contains("resolves to"), "{err:?}");
    }

    #[test]
    fn input_folder_is_refused() {
        let (_dir, root, _) = setup();
        let err =
            check_input("inputs.image", &root, std::slice::from_ref(&root)).expect_err("a folder");
        assert!(err.message.contains("not a regular file"), "{err:?}");
    }

    #[test]
    fn output_in_missing_subfolder_is_allowed() {
        let (_dir, root, _) = setup();
        let wanted = root.join("new/sub/v.mp4");
        assert_eq!(
            check_output("output.path", &wanted, std::slice::from_ref(&root)),
            Ok(wanted)
        );
    }

    #[test]
    fn output_dotdot_after_missing_folder_is_refused() {
        let (_dir, root, _) = setup();
        let sneaky = root.join("missing/../../elsewhere/v.mp4");
        let err =
            check_output("output.path", &sneaky, std::slice::from_ref(&root)).expect_err("dotdot");
        assert!(err.message.contains(".."), "{err:?}");
    }

    #[test]
    fn output_dangling_symlink_is_refused() {
        let (_dir, root, outside) = setup();
        std::os::unix::fs::symlink(outside.join("nothing.mp4"), root.join("v.mp4"))
            .expect("symlink");
        let err = check_output(
            "output.path",
            &root.join("v.mp4"),
            std::slice::from_ref(&root),
        )
        .expect_err("dangling link");
        assert!(err.message.contains("cannot be resolved"), "{err:?}");
    }

    #[test]
    fn output_through_a_file_is_refused() {
        let (_dir, root, _) = setup();
        fs::write(root.join("file"), b"x").expect("write");
        let err = check_output(
            "output.path",
            &root.join("file/v.mp4"),
            std::slice::from_ref(&root),
        )
        .expect_err("through a file");
        assert!(err.message.contains("not a folder"), "{err:?}");
    }

    #[test]
    fn no_roots_means_nothing_is_allowed() {
        let (_dir, root, _) = setup();
        let err = check_output("output.path", &root.join("v.mp4"), &[]).expect_err("no roots");
        assert!(
            err.hint.contains("no output roots are configured"),
            "{err:?}"
        );
    }
}
