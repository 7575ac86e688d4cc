//! Writing a small state file so that a crash leaves either the old or the new contents.

use std::io::Write;
use std::path::Path;

use crate::PoolError;

/// Writes `bytes` to `path` through a temp file in the same directory: write, fsync, rename,
/// fsync the directory. A power cut at any point leaves the previous file or the new one,
/// never a torn mix, which matters because leases and observations are read back at start.
pub(crate) fn write_file(path: &Path, bytes: &[u8]) -> Result<(), PoolError> {
    let io = |action: &'static str, at: &Path| {
        let at = at.to_path_buf();
        move |source| PoolError::Io {
            action,
            path: at,
            source,
        }
    };
    let dir = match path.parent() {
        Some(dir) if !dir.as_os_str().is_empty() => dir,
        _ => Path::new("."),
    };
    let mut tmp =
        tempfile::NamedTempFile::new_in(dir).map_err(io("creating a temp file in", dir))?;
    tmp.write_all(bytes).map_err(io("writing", tmp.path()))?;
    tmp.as_file().sync_all().map_err(io("syncing", path))?;
    tmp.persist(path)
        .map_err(|err| io("renaming a temp file onto", path)(err.error))?;
    std::fs::File::open(dir)
        .and_then(|d| d.sync_all())
        .map_err(io("syncing directory", dir))?;
    Ok(())
}

/// Reads a state file; `Ok(None)` when it does not exist yet (first start).
pub(crate) fn read_optional(path: &Path) -> Result<Option<Vec<u8>>, PoolError> {
    match std::fs::read(path) {
        Ok(bytes) => Ok(Some(bytes)),
        Err(err) if err.kind() == std::io::ErrorKind::NotFound => Ok(None),
        Err(source) => Err(PoolError::Io {
            action: "reading",
            path: path.to_path_buf(),
            source,
        }),
    }
}
