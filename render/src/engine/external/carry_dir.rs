//! A command engine's carry: a directory the engine writes after each clip and reads before the
//! next. Its content is the engine's business; the worker only packs it into one file, so the
//! checkpoint can hash it and write it atomically next to the segment exactly like the native
//! carry, and unpacks it again for a resumed job.
//!
//! The packed form is a safetensors file: one `U8` tensor per regular file, named by its path
//! relative to the carry directory (`/`-separated), with the format, version and the clip it
//! continues into as metadata. Symlinks, devices and the like are refused rather than followed:
//! a carry must be plain bytes the worker can reproduce.

use crate::RenderError;
use std::collections::HashMap;
use std::path::{Component, Path};

use safetensors::tensor::{Dtype, SafeTensors, TensorView};

use crate::engine::ClipIndex;

const FORMAT: &str = "reelspool.engine-carry";
const VERSION: &str = "1";

fn format_err(detail: impl Into<String>) -> RenderError {
    RenderError::PackedCarryFormat {
        detail: detail.into(),
    }
}

/// The files of one carry directory, in memory, sorted by relative path.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CommandCarry {
    next_clip: u32,
    files: Vec<(String, Vec<u8>)>,
}

impl CommandCarry {
    /// Reads every file under `dir` (recursively); the carry continues into `next_clip`.
    pub fn read_dir(dir: &Path, next_clip: ClipIndex) -> Result<CommandCarry, RenderError> {
        let mut files = Vec::new();
        collect(dir, "", &mut files)?;
        files.sort_by(|a, b| a.0.cmp(&b.0));
        Ok(CommandCarry {
            next_clip: next_clip.0,
            files,
        })
    }

    /// The clip this carry continues into.
    pub fn next_clip(&self) -> ClipIndex {
        ClipIndex(self.next_clip)
    }

    /// Relative paths and sizes of the packed files.
    pub fn files(&self) -> impl Iterator<Item = (&str, usize)> {
        self.files
            .iter()
            .map(|(name, bytes)| (name.as_str(), bytes.len()))
    }

    /// Recreates the directory: `dir` is emptied (or created) and filled with the files.
    pub fn write_dir(&self, dir: &Path) -> Result<(), RenderError> {
        reset_dir(dir)?;
        for (name, bytes) in &self.files {
            let path = dir.join(name);
            if let Some(parent) = path.parent() {
                std::fs::create_dir_all(parent).map_err(RenderError::io("create", parent))?;
            }
            std::fs::write(&path, bytes).map_err(RenderError::io("write", &path))?;
        }
        Ok(())
    }

    /// Serialises to the packed form described in the module docs.
    pub fn to_bytes(&self) -> Result<Vec<u8>, RenderError> {
        let mut views = Vec::with_capacity(self.files.len());
        for (name, bytes) in &self.files {
            let view = TensorView::new(Dtype::U8, vec![bytes.len()], bytes)
                .map_err(|e| format_err(format!("cannot describe {name}: {e}")))?;
            views.push((name.as_str(), view));
        }
        let metadata = HashMap::from([
            ("format".to_string(), FORMAT.to_string()),
            ("version".to_string(), VERSION.to_string()),
            ("next_clip".to_string(), self.next_clip.to_string()),
        ]);
        safetensors::serialize(views, Some(metadata))
            .map_err(|e| format_err(format!("cannot serialise: {e}")))
    }

    /// Parses what [`CommandCarry::to_bytes`] wrote; anything else is an error.
    pub fn from_bytes(bytes: &[u8]) -> Result<CommandCarry, RenderError> {
        let file = SafeTensors::deserialize(bytes)
            .map_err(|e| format_err(format!("not a safetensors file: {e}")))?;
        let (_, header) = SafeTensors::read_metadata(bytes)
            .map_err(|e| format_err(format!("unreadable header: {e}")))?;
        let metadata = header.metadata().clone().unwrap_or_default();
        let field = |key: &str| {
            metadata
                .get(key)
                .cloned()
                .ok_or_else(|| format_err(format!("metadata `{key}` is missing")))
        };
        if field("format")? != FORMAT || field("version")? != VERSION {
            return Err(format_err(format!(
                "expected format {FORMAT} version {VERSION}"
            )));
        }
        let next_clip = field("next_clip")?
            .parse::<u32>()
            .map_err(|e| format_err(format!("next_clip: {e}")))?;
        let mut files = Vec::new();
        for (name, tensor) in file.tensors() {
            if !is_safe_relative(&name) {
                return Err(format_err(format!("file name `{name}` leaves the carry")));
            }
            if tensor.dtype() != Dtype::U8 {
                return Err(format_err(format!("`{name}` is not U8")));
            }
            files.push((name, tensor.data().to_vec()));
        }
        files.sort_by(|a, b| a.0.cmp(&b.0));
        Ok(CommandCarry { next_clip, files })
    }
}

fn is_safe_relative(name: &str) -> bool {
    let path = Path::new(name);
    !name.is_empty() && path.components().all(|c| matches!(c, Component::Normal(_)))
}

fn collect(dir: &Path, prefix: &str, out: &mut Vec<(String, Vec<u8>)>) -> Result<(), RenderError> {
    let entries = std::fs::read_dir(dir).map_err(RenderError::io("list", dir))?;
    for entry in entries {
        let entry = entry.map_err(RenderError::io("list", dir))?;
        let path = entry.path();
        let kind = entry
            .file_type()
            .map_err(RenderError::io("inspect", &path))?;
        let name = entry.file_name();
        let Some(name) = name.to_str() else {
            return Err(RenderError::NotPlain { path });
        };
        let relative = if prefix.is_empty() {
            name.to_string()
        } else {
            format!("{prefix}/{name}")
        };
        if kind.is_dir() {
            collect(&path, &relative, out)?;
        } else if kind.is_file() {
            let bytes = std::fs::read(&path).map_err(RenderError::io("read", &path))?;
            out.push((relative, bytes));
        } else {
            return Err(RenderError::NotPlain { path });
        }
    }
    Ok(())
}

/// Empties `dir`, creating it if needed.
pub(crate) fn reset_dir(dir: &Path) -> Result<(), RenderError> {
    match std::fs::remove_dir_all(dir) {
        Ok(()) => {}
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
        Err(e) => return Err(RenderError::io("remove", dir)(e)),
    }
    std::fs::create_dir_all(dir).map_err(RenderError::io("create", dir))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn nested_and_empty_files_survive_pack_and_unpack() {
        let temp = tempfile::tempdir().expect("temp dir");
        let src = temp.path().join("out");
        std::fs::create_dir_all(src.join("kv/step0")).expect("mkdir");
        std::fs::write(src.join("state.npy"), [1u8, 2, 3]).expect("write");
        std::fs::write(src.join("kv/step0/ring.bin"), vec![7u8; 1000]).expect("write");
        std::fs::write(src.join("empty"), b"").expect("write");
        let packed = CommandCarry::read_dir(&src, ClipIndex(3)).expect("pack");
        let bytes = packed.to_bytes().expect("serialise");
        let back = CommandCarry::from_bytes(&bytes).expect("parse");
        assert_eq!(back, packed);
        assert_eq!(back.next_clip(), ClipIndex(3));
        let dst = temp.path().join("in");
        std::fs::create_dir_all(&dst).expect("mkdir");
        std::fs::write(dst.join("stale"), b"old").expect("write");
        back.write_dir(&dst).expect("unpack");
        assert!(!dst.join("stale").exists());
        assert_eq!(
            std::fs::read(dst.join("kv/step0/ring.bin")).expect("read"),
            vec![7u8; 1000]
        );
        assert_eq!(std::fs::read(dst.join("empty")).expect("read"), b"");
    }

    #[test]
    fn symlink_in_a_carry_is_refused() {
        let temp = tempfile::tempdir().expect("temp dir");
        std::os::unix::fs::symlink("/etc/passwd", temp.path().join("link")).expect("symlink");
        assert!(matches!(
            CommandCarry::read_dir(temp.path(), ClipIndex(1)),
            Err(RenderError::NotPlain { .. })
        ));
    }

    #[test]
    fn packed_carry_naming_a_parent_directory_is_refused() {
        let bytes = vec![1u8];
        let view = TensorView::new(Dtype::U8, vec![1], &bytes).expect("view");
        let metadata = HashMap::from([
            ("format".to_string(), FORMAT.to_string()),
            ("version".to_string(), VERSION.to_string()),
            ("next_clip".to_string(), "1".to_string()),
        ]);
        let packed =
            safetensors::serialize([("../escape", view)], Some(metadata)).expect("serialise");
        assert!(CommandCarry::from_bytes(&packed).is_err());
    }

    #[test]
    fn native_carry_bytes_are_not_an_engine_carry() {
        assert!(CommandCarry::from_bytes(b"not safetensors").is_err());
    }
}
