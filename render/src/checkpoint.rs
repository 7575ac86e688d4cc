//! Checkpoints after every clip (DESIGN.md §5), so a killed worker loses at most the clip in
//! progress and a resumed job renders exactly what an uninterrupted one would.
//!
//! After clip *k* the worker has written its segment (`work/clips/k.mkv`). [`CheckpointStore::
//! save`] then writes `work/carry-k.safetensors` and finally `work/checkpoint.json` naming *k*,
//! each atomically, in that order: a checkpoint never names a file that is not yet durable.
//! The checkpoint it replaces is kept as `checkpoint.prev.json` (with its carry) until the new
//! one is on disk, so a torn or damaged latest checkpoint costs one clip, not the whole job.

mod files;

use std::io::ErrorKind;
use std::path::{Path, PathBuf};
use std::time::{SystemTime, UNIX_EPOCH};

use serde::{Deserialize, Serialize};

use crate::engine::{Carry, ClipIndex};
pub(crate) use files::write_atomic;
use files::{sha256_hex, size_and_sha256, sync_dir, TEMP_SUFFIX};

/// The latest checkpoint, in the job's work directory.
pub const CHECKPOINT_FILE: &str = "checkpoint.json";
/// The checkpoint before it, kept until the latest is durable.
pub const PREVIOUS_CHECKPOINT_FILE: &str = "checkpoint.prev.json";
/// Directory of per-clip segments, relative to the work directory.
pub const CLIPS_DIR: &str = "clips";
const FORMAT_VERSION: u32 = 1;
const CARRY_PREFIX: &str = "carry-";
const CARRY_SUFFIX: &str = ".safetensors";

/// `checkpoint.json`: the last finished clip and everything needed to trust it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Checkpoint {
    pub format_version: u32,
    /// The last clip whose segment and carry are durable.
    pub last_clip: u32,
    /// `JobSpec::render_fingerprint()` of the job that wrote it: a changed job never resumes.
    pub job_fingerprint: String,
    /// The carry for clip `last_clip + 1`.
    pub carry: FileRecord,
    /// One record per clip `0..=last_clip`, in order.
    pub segments: Vec<SegmentRecord>,
    pub written_at_unix_ms: u64,
}

/// A file a checkpoint depends on. `file` is relative to the work directory when it lies
/// inside it (so a moved job directory still resumes), absolute otherwise.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FileRecord {
    pub file: String,
    pub size_bytes: u64,
    pub sha256: String,
}

/// The encoded segment of one clip.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SegmentRecord {
    pub clip: u32,
    #[serde(flatten)]
    pub file: FileRecord,
}

/// What a checkpoint can carry from one clip to the next: the native engine's [`Carry`], or a
/// command engine's packed carry directory. The store only needs its bytes and the clip it
/// continues into.
pub trait CheckpointCarry: Sized {
    /// The clip this carry continues into.
    fn continues_into(&self) -> ClipIndex;
    /// The bytes written as `carry-<k>.safetensors`.
    fn to_checkpoint_bytes(&self) -> Result<Vec<u8>, String>;
    /// Parses what [`CheckpointCarry::to_checkpoint_bytes`] wrote.
    fn from_checkpoint_bytes(bytes: &[u8]) -> Result<Self, String>;
}

impl CheckpointCarry for Carry {
    fn continues_into(&self) -> ClipIndex {
        self.next_clip()
    }
    fn to_checkpoint_bytes(&self) -> Result<Vec<u8>, String> {
        self.to_safetensors_bytes().map_err(|e| e.to_string())
    }
    fn from_checkpoint_bytes(bytes: &[u8]) -> Result<Self, String> {
        Carry::from_safetensors_bytes(bytes).map_err(|e| e.to_string())
    }
}

impl CheckpointCarry for crate::engine::external::PackedCarry {
    fn continues_into(&self) -> ClipIndex {
        self.next_clip()
    }
    fn to_checkpoint_bytes(&self) -> Result<Vec<u8>, String> {
        self.to_bytes().map_err(|e| e.to_string())
    }
    fn from_checkpoint_bytes(bytes: &[u8]) -> Result<Self, String> {
        Self::from_bytes(bytes).map_err(|e| e.to_string())
    }
}

/// Where a job starts.
#[derive(Debug, Clone, PartialEq)]
pub enum ResumePoint<C = Carry> {
    /// From clip 0. `reason` says why an existing checkpoint was not used (`None`: there was
    /// none). Everything the old checkpoints named has been removed.
    Fresh { reason: Option<String> },
    /// Clips `0..=last_clip` are done; continue with `carry` (its `next_clip()` is
    /// `last_clip + 1`).
    After { last_clip: ClipIndex, carry: C },
}

/// Why a checkpoint could not be written or read.
#[derive(Debug, thiserror::Error)]
pub enum CheckpointError {
    #[error("cannot {action} {path}: {source}")]
    Io {
        action: &'static str,
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("cannot serialise the carry for {clip}: {detail}")]
    Carry { clip: ClipIndex, detail: String },
    #[error("cannot checkpoint {clip}: {detail}")]
    OutOfOrder { clip: ClipIndex, detail: String },
}

/// The checkpoints of one job's work directory.
#[derive(Debug, Clone)]
pub struct CheckpointStore {
    work_dir: PathBuf,
}

/// Why a stored checkpoint cannot be used.
enum Unusable {
    JobChanged,
    Damaged(String),
}

fn io_err(action: &'static str, path: &Path) -> impl FnOnce(std::io::Error) -> CheckpointError {
    let path = path.to_path_buf();
    move |source| CheckpointError::Io {
        action,
        path,
        source,
    }
}

impl CheckpointStore {
    pub fn new(work_dir: impl Into<PathBuf>) -> Self {
        CheckpointStore {
            work_dir: work_dir.into(),
        }
    }

    pub fn work_dir(&self) -> &Path {
        &self.work_dir
    }

    /// Where the worker writes the segment of `clip`: `work/clips/<k>.mkv`.
    pub fn segment_path(&self, clip: ClipIndex) -> PathBuf {
        self.work_dir
            .join(CLIPS_DIR)
            .join(format!("{}.mkv", clip.0))
    }

    fn carry_name(clip: u32) -> String {
        format!("{CARRY_PREFIX}{clip}{CARRY_SUFFIX}")
    }

    fn relative(&self, path: &Path) -> String {
        path.strip_prefix(&self.work_dir)
            .unwrap_or(path)
            .to_string_lossy()
            .into_owned()
    }

    fn absolute(&self, file: &str) -> PathBuf {
        self.work_dir.join(file)
    }

    /// Records that `clip` is finished: its segment is at `segment` and `carry` continues into
    /// the next clip. Call after the segment is durable; returns once the checkpoint is.
    pub fn save(
        &self,
        clip: ClipIndex,
        carry: &Carry,
        fingerprint: &str,
        segment: &Path,
    ) -> Result<(), CheckpointError> {
        self.save_carry(clip, carry, fingerprint, segment)
    }

    /// [`CheckpointStore::save`] for any kind of carry.
    pub fn save_carry<C: CheckpointCarry>(
        &self,
        clip: ClipIndex,
        carry: &C,
        fingerprint: &str,
        segment: &Path,
    ) -> Result<(), CheckpointError> {
        if carry.continues_into().0 != clip.0 + 1 {
            return Err(CheckpointError::OutOfOrder {
                clip,
                detail: format!(
                    "the carry continues into {}, not clip {}",
                    carry.continues_into(),
                    clip.0 + 1
                ),
            });
        }
        let (base_on_disk, mut segments) = self.base_for(clip, fingerprint)?;
        let (size_bytes, sha256) =
            size_and_sha256(segment).map_err(io_err("read segment", segment))?;
        segments.push(SegmentRecord {
            clip: clip.0,
            file: FileRecord {
                file: self.relative(segment),
                size_bytes,
                sha256,
            },
        });

        let carry_bytes = carry
            .to_checkpoint_bytes()
            .map_err(|detail| CheckpointError::Carry { clip, detail })?;
        let carry_name = Self::carry_name(clip.0);
        let carry_path = self.work_dir.join(&carry_name);
        write_atomic(&carry_path, &carry_bytes).map_err(io_err("write carry", &carry_path))?;
        crate::worker::crash_point::reached("after_carry", clip.0);

        let checkpoint = Checkpoint {
            format_version: FORMAT_VERSION,
            last_clip: clip.0,
            job_fingerprint: fingerprint.to_string(),
            carry: FileRecord {
                file: carry_name,
                size_bytes: carry_bytes.len() as u64,
                sha256: sha256_hex(&carry_bytes),
            },
            segments,
            written_at_unix_ms: SystemTime::now()
                .duration_since(UNIX_EPOCH)
                .map(|d| d.as_millis() as u64)
                .unwrap_or(0),
        };
        let json = serde_json::to_vec_pretty(&checkpoint)
            .unwrap_or_else(|e| panic!("a Checkpoint always serialises to JSON: {e}"));
        let current = self.work_dir.join(CHECKPOINT_FILE);
        if base_on_disk == Some(CHECKPOINT_FILE) {
            let previous = self.work_dir.join(PREVIOUS_CHECKPOINT_FILE);
            std::fs::rename(&current, &previous)
                .map_err(io_err("keep previous checkpoint", &previous))?;
            crate::worker::crash_point::reached("mid_checkpoint", clip.0);
        }
        write_atomic(&current, &json).map_err(io_err("write checkpoint", &current))?;
        // Carries older than the previous checkpoint's are no longer reachable.
        self.remove_carries(|k| k + 1 < clip.0)?;
        tracing::debug!(clip = clip.0, "checkpoint written");
        Ok(())
    }

    /// The checkpoint clip `clip` extends (the one naming `clip - 1`), and its segment list.
    fn base_for(
        &self,
        clip: ClipIndex,
        fingerprint: &str,
    ) -> Result<(Option<&'static str>, Vec<SegmentRecord>), CheckpointError> {
        if clip.0 == 0 {
            return Ok((None, Vec::new()));
        }
        for name in [CHECKPOINT_FILE, PREVIOUS_CHECKPOINT_FILE] {
            if let Ok(Some(cp)) = self.read(name) {
                if cp.last_clip + 1 == clip.0 && cp.job_fingerprint == fingerprint {
                    return Ok((Some(name), cp.segments));
                }
            }
        }
        Err(CheckpointError::OutOfOrder {
            clip,
            detail: format!(
                "no checkpoint of this job names clip {}; resume before saving",
                clip.0 - 1
            ),
        })
    }

    /// Reads a checkpoint file: `Ok(None)` when absent, `Err(reason)` when unreadable or torn.
    fn read(&self, name: &str) -> Result<Option<Checkpoint>, String> {
        let path = self.work_dir.join(name);
        match std::fs::read(&path) {
            Ok(bytes) => serde_json::from_slice(&bytes)
                .map(Some)
                .map_err(|e| format!("{name} is damaged: {e}")),
            Err(e) if e.kind() == ErrorKind::NotFound => Ok(None),
            Err(e) => Err(format!("{name} is unreadable: {e}")),
        }
    }

    /// Checks everything `cp` depends on and returns its carry.
    fn verify<C: CheckpointCarry>(
        &self,
        cp: &Checkpoint,
        fingerprint: &str,
    ) -> Result<C, Unusable> {
        if cp.job_fingerprint != fingerprint {
            return Err(Unusable::JobChanged);
        }
        let damaged = |detail: String| {
            Unusable::Damaged(format!("checkpoint of clip {}: {detail}", cp.last_clip))
        };
        if cp.format_version != FORMAT_VERSION {
            return Err(damaged(format!(
                "format version {} is not {FORMAT_VERSION}",
                cp.format_version
            )));
        }
        let carry_path = self.absolute(&cp.carry.file);
        let bytes = std::fs::read(&carry_path)
            .map_err(|e| damaged(format!("carry {}: {e}", carry_path.display())))?;
        if bytes.len() as u64 != cp.carry.size_bytes || sha256_hex(&bytes) != cp.carry.sha256 {
            return Err(damaged(format!(
                "carry {} does not match its recorded sha256",
                carry_path.display()
            )));
        }
        let carry = C::from_checkpoint_bytes(&bytes).map_err(damaged)?;
        if carry.continues_into().0 != cp.last_clip + 1 {
            return Err(damaged(format!(
                "carry continues into {}",
                carry.continues_into()
            )));
        }
        let in_order = cp.segments.len() as u64 == u64::from(cp.last_clip) + 1
            && cp
                .segments
                .iter()
                .enumerate()
                .all(|(i, s)| s.clip as usize == i);
        if !in_order {
            return Err(damaged(
                "segment list does not cover every clip in order".to_string(),
            ));
        }
        for seg in &cp.segments {
            let path = self.absolute(&seg.file.file);
            match std::fs::metadata(&path) {
                Ok(meta) if meta.len() == seg.file.size_bytes => {}
                Ok(meta) => {
                    return Err(damaged(format!(
                        "segment {} has {} bytes, {} recorded",
                        path.display(),
                        meta.len(),
                        seg.file.size_bytes
                    )))
                }
                Err(e) => return Err(damaged(format!("segment {}: {e}", path.display()))),
            }
        }
        // The newest segment is the one a crash could have caught; hash it in full.
        if let Some(last) = cp.segments.last() {
            let path = self.absolute(&last.file.file);
            let matches = size_and_sha256(&path)
                .map(|(_, sha)| sha == last.file.sha256)
                .unwrap_or(false);
            if !matches {
                return Err(damaged(format!(
                    "segment {} does not match its recorded sha256",
                    path.display()
                )));
            }
        }
        Ok(carry)
    }

    /// Decides where the job with `fingerprint` starts, repairing the work directory so that
    /// it holds exactly what that start point needs (see [`ResumePoint`]).
    pub fn resume(&self, fingerprint: &str) -> Result<ResumePoint, CheckpointError> {
        self.resume_carry(fingerprint)
    }

    /// [`CheckpointStore::resume`] for any kind of carry.
    pub fn resume_carry<C: CheckpointCarry>(
        &self,
        fingerprint: &str,
    ) -> Result<ResumePoint<C>, CheckpointError> {
        let mut reasons = Vec::new();
        for name in [CHECKPOINT_FILE, PREVIOUS_CHECKPOINT_FILE] {
            let cp = match self.read(name) {
                Ok(Some(cp)) => cp,
                Ok(None) => continue,
                Err(reason) => {
                    reasons.push(reason);
                    continue;
                }
            };
            match self.verify(&cp, fingerprint) {
                Ok(carry) => {
                    if name != CHECKPOINT_FILE {
                        tracing::warn!(reasons = ?reasons, clip = cp.last_clip, "falling back to the previous checkpoint");
                        let json = serde_json::to_vec_pretty(&cp).unwrap_or_else(|e| {
                            panic!("a Checkpoint always serialises to JSON: {e}")
                        });
                        let current = self.work_dir.join(CHECKPOINT_FILE);
                        write_atomic(&current, &json)
                            .map_err(io_err("restore checkpoint", &current))?;
                    }
                    self.remove_beyond(Some(cp.last_clip))?;
                    return Ok(ResumePoint::After {
                        last_clip: ClipIndex(cp.last_clip),
                        carry,
                    });
                }
                Err(Unusable::JobChanged) => {
                    self.remove_beyond(None)?;
                    return Ok(ResumePoint::Fresh {
                        reason: Some("job changed since checkpoint".to_string()),
                    });
                }
                Err(Unusable::Damaged(reason)) => reasons.push(reason),
            }
        }
        self.remove_beyond(None)?;
        let reason =
            (!reasons.is_empty()).then(|| format!("no usable checkpoint: {}", reasons.join("; ")));
        Ok(ResumePoint::Fresh { reason })
    }

    /// Removes segments and carries of clips after `last` (everything for `None`), crash
    /// leftovers of atomic writes, and for a fresh start the checkpoints themselves.
    fn remove_beyond(&self, last: Option<u32>) -> Result<(), CheckpointError> {
        let beyond = |k: u32| last.is_none_or(|last| k > last);
        self.remove_carries(|k| beyond(k) || last.is_some_and(|last| k + 1 < last))?;
        if last.is_none() {
            for name in [CHECKPOINT_FILE, PREVIOUS_CHECKPOINT_FILE] {
                remove_if_present(&self.work_dir.join(name))?;
            }
        }
        for entry in list_dir(&self.work_dir)? {
            let is_temp = entry.starts_with('.')
                && entry.ends_with(TEMP_SUFFIX)
                && (entry.contains("checkpoint") || entry.starts_with(&format!(".{CARRY_PREFIX}")));
            if is_temp {
                remove_if_present(&self.work_dir.join(entry))?;
            }
        }
        let clips = self.work_dir.join(CLIPS_DIR);
        for entry in list_dir(&clips)? {
            let stem = entry.split('.').next().unwrap_or_default();
            // `.<k>.mkv.partial`: a segment whose encoder was killed; it never became `k.mkv`.
            let torn_segment = entry.starts_with('.') && entry.ends_with(".partial");
            if torn_segment || stem.parse::<u32>().is_ok_and(beyond) {
                remove_if_present(&clips.join(&entry))?;
            }
        }
        sync_dir(&self.work_dir)
            .or_else(ignore_missing)
            .map_err(io_err("sync", &self.work_dir))
    }

    fn remove_carries(&self, doomed: impl Fn(u32) -> bool) -> Result<(), CheckpointError> {
        for entry in list_dir(&self.work_dir)? {
            let clip = entry
                .strip_prefix(CARRY_PREFIX)
                .and_then(|rest| rest.strip_suffix(CARRY_SUFFIX))
                .and_then(|k| k.parse::<u32>().ok());
            if clip.is_some_and(&doomed) {
                remove_if_present(&self.work_dir.join(entry))?;
            }
        }
        Ok(())
    }
}

fn ignore_missing(e: std::io::Error) -> std::io::Result<()> {
    if e.kind() == ErrorKind::NotFound {
        Ok(())
    } else {
        Err(e)
    }
}

fn remove_if_present(path: &Path) -> Result<(), CheckpointError> {
    std::fs::remove_file(path)
        .or_else(ignore_missing)
        .map_err(io_err("remove", path))
}

/// File names in `dir`; empty when the directory does not exist yet.
fn list_dir(dir: &Path) -> Result<Vec<String>, CheckpointError> {
    let entries = match std::fs::read_dir(dir) {
        Ok(entries) => entries,
        Err(e) if e.kind() == ErrorKind::NotFound => return Ok(Vec::new()),
        Err(e) => return Err(io_err("list", dir)(e)),
    };
    let mut names = Vec::new();
    for entry in entries {
        let entry = entry.map_err(io_err("list", dir))?;
        names.push(entry.file_name().to_string_lossy().into_owned());
    }
    Ok(names)
}

#[cfg(test)]
mod tests;
