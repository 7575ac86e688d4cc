//! Writing a small state file so that a crash leaves either the old or the new contents.

use std::path::Path;

use crate::PoolError;

/// Writes `bytes` to `path` through a temp file in the same directory: write, fsync, rename,
/// fsync the directory (the `atomic-write` crate). A power cut at any point leaves the previous
/// file or the new one, never a torn mix, which matters because leases and observations are
/// read back at start. The file is the daemon's own (mode 0600, as it always was).
pub(crate) fn write_file(path: &Path, bytes: &[u8]) -> Result<(), PoolError> {
    let (dir, name) = atomic_write::open_parent(path).map_err(|source| PoolError::Io {
        action: "opening the directory of",
        path: path.to_path_buf(),
        source,
    })?;
    dir.replace(name)
        .mode(0o600)
        .write(bytes)
        .map_err(|source| PoolError::Io {
            action: "writing",
            path: path.to_path_buf(),
            source,
        })
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
