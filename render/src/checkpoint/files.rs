//! Durable file writes and content hashes for checkpoints (and the model cache).
//!
//! A checkpoint is only worth something if a power cut at any instant leaves either the old
//! file or the new one, never a torn mix: write a temporary file in the same directory, fsync
//! it, rename it over the target, fsync the directory so the rename itself is on disk.

use std::fs::File;
use std::io::{self, Read, Seek, SeekFrom, Write};
use std::path::Path;

use sha2::{Digest, Sha256};

/// Suffix of the temporary files [`write_atomic`] creates; [`super::CheckpointStore::resume`]
/// removes leftovers of a crash.
pub(crate) use atomic_write::TEMP_SUFFIX;

/// Permission bits of checkpoint files: the worker's own (as the temporary files they start as
/// always were).
const MODE: u32 = 0o600;

/// Replaces `path` with `bytes` atomically and durably (see the module docs).
pub(crate) fn write_atomic(path: &Path, bytes: &[u8]) -> io::Result<()> {
    write_atomic_with(path, |file| file.write_all(bytes))
}

/// [`write_atomic`] with the contents written by `write` into the temporary file (opened
/// for reading and writing), which is then synced and renamed over `path`.
pub(crate) fn write_atomic_with<T>(
    path: &Path,
    write: impl FnOnce(&mut File) -> io::Result<T>,
) -> io::Result<T> {
    let (dir, name) = atomic_write::open_parent(path)?;
    dir.replace(name).mode(MODE).write_with(write)
}

/// Size in bytes and SHA-256 of what `file` holds, read from its start in chunks.
pub(crate) fn file_size_and_sha256(file: &mut File) -> io::Result<(u64, String)> {
    file.seek(SeekFrom::Start(0))?;
    hash_reader(file)
}

/// A carry file mapped into memory read-only: its bytes without a host copy of them (a Live
/// Avatar carry is tens of GB).
pub struct MappedFile(memmap2::Mmap);

impl MappedFile {
    pub(crate) fn open(path: &Path) -> io::Result<MappedFile> {
        let file = File::open(path)?;
        // SAFETY: carry files are never changed in place: a checkpoint writes a new file and
        // renames it over the old one, and a mapping of a replaced or deleted file keeps
        // the old contents. Only this worker writes its job's work directory.
        let map = unsafe { memmap2::Mmap::map(&file)? };
        Ok(MappedFile(map))
    }
}

impl std::ops::Deref for MappedFile {
    type Target = [u8];
    fn deref(&self) -> &[u8] {
        &self.0
    }
}

impl std::fmt::Debug for MappedFile {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "MappedFile({} bytes)", self.0.len())
    }
}

/// Makes renames and deletions in `dir` durable.
pub(crate) use atomic_write::sync_dir;

/// Size in bytes and lowercase hex SHA-256 of a file, read in chunks.
pub(crate) fn size_and_sha256(path: &Path) -> io::Result<(u64, String)> {
    hash_reader(&mut File::open(path)?)
}

fn hash_reader(file: &mut File) -> io::Result<(u64, String)> {
    let mut hasher = Sha256::new();
    let mut buffer = vec![0u8; 1 << 20];
    let mut size = 0u64;
    loop {
        let read = file.read(&mut buffer)?;
        if read == 0 {
            break;
        }
        hasher.update(&buffer[..read]);
        size += read as u64;
    }
    Ok((size, hex(&hasher.finalize())))
}

/// Lowercase hex SHA-256 of bytes in memory.
pub(crate) fn sha256_hex(bytes: &[u8]) -> String {
    hex(&Sha256::digest(bytes))
}

fn hex(digest: &[u8]) -> String {
    digest.iter().map(|b| format!("{b:02x}")).collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn write_atomic_replaces_the_file_and_leaves_no_temporary_behind() {
        let dir = tempfile::tempdir().expect("temp dir");
        let path = dir.path().join("state.json");
        write_atomic(&path, b"old").expect("first write");
        write_atomic(&path, b"new").expect("second write");
        assert_eq!(std::fs::read(&path).expect("readable"), b"new");
        let entries = std::fs::read_dir(dir.path()).expect("listable").count();
        assert_eq!(entries, 1);
    }

    #[test]
    fn sha256_of_a_file_matches_the_known_digest_of_abc() {
        let dir = tempfile::tempdir().expect("temp dir");
        let path = dir.path().join("abc");
        std::fs::write(&path, b"abc").expect("write");
        let (size, digest) = size_and_sha256(&path).expect("hashes");
        assert_eq!(size, 3);
        // FIPS 180-2 test vector for "abc".
        assert_eq!(
            digest,
            "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad"
        );
        assert_eq!(sha256_hex(b"abc"), digest);
    }
}
