//! Checkpoints (DESIGN.md §5), so a killed worker loses at most the clips since the newest
//! carry and a resumed job renders exactly what an uninterrupted one would.
//!
//! Segments (`work/clips/k.mkv`) are durable after every clip. The carry is checkpointed after
//! every clip or every *N* clips (`render.checkpoint_every`): [`CheckpointStore::save_prepared`]
//! writes `work/carry-k.safetensors` and then `work/checkpoint.json` naming *k*, each
//! atomically, in that order: a checkpoint never names a file that is not yet durable. The
//! checkpoint it replaces is kept as `checkpoint.prev.json` (with its carry) until the new one
//! is on disk, so a torn or damaged latest checkpoint costs one cadence step, not the whole
//! job. Segments of clips after the newest checkpoint are kept on resume: the worker renders
//! those clips again and keeps a segment whose bytes come out the same (see
//! `worker/clip_loop.rs`).

mod files;

use crate::RenderError;
use std::io::ErrorKind;
use std::path::{Path, PathBuf};
use std::time::{SystemTime, UNIX_EPOCH};

use serde::{Deserialize, Serialize};

use crate::engine::{ClipIndex, EngineCarry};
pub(crate) use files::write_atomic;
pub use files::MappedFile;
use files::{
    file_size_and_sha256, sha256_hex, size_and_sha256, sync_dir, write_atomic_with, TEMP_SUFFIX,
};

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
    /// What the carry was rendered with; a job with other values refuses it, saying which.
    /// Absent in checkpoints written before it existed (their fingerprint still applies).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub carry_written_for: Option<CarrySettings>,
}

/// The settings a carry depends on: a carry from another model, size or seed would continue a
/// different video, so it is refused with the difference named.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CarrySettings {
    pub model: String,
    pub width: u32,
    pub height: u32,
    pub seed: u64,
    pub infer_frames: u32,
}

impl CarrySettings {
    /// What differs between the carry's settings (`self`) and the job's, in words; `None`
    /// when they agree.
    pub fn mismatch(&self, job: &CarrySettings) -> Option<String> {
        let mut differences = Vec::new();
        if self.model != job.model {
            differences.push(format!(
                "model `{}` (this job: `{}`)",
                self.model, job.model
            ));
        }
        if (self.width, self.height) != (job.width, job.height) {
            differences.push(format!(
                "size {}*{} (this job: {}*{})",
                self.width, self.height, job.width, job.height
            ));
        }
        if self.seed != job.seed {
            differences.push(format!("seed {} (this job: {})", self.seed, job.seed));
        }
        if self.infer_frames != job.infer_frames {
            differences.push(format!(
                "infer_frames {} (this job: {})",
                self.infer_frames, job.infer_frames
            ));
        }
        (!differences.is_empty()).then(|| differences.join(", "))
    }
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

/// What a checkpoint can carry from one clip to the next: the worker writes and reads every
/// engine's carry as a [`CarryFile`] (bytes), and the tests and benches the tiny engine's
/// [`EngineCarry`] itself. The store only needs its bytes and the clip it continues into.
pub trait CheckpointCarry: Sized {
    /// The clip this carry continues into.
    fn continues_into(&self) -> ClipIndex;
    /// The bytes written as `carry-<k>.safetensors`.
    fn to_checkpoint_bytes(&self) -> Result<Vec<u8>, String>;
    /// Parses what [`CheckpointCarry::to_checkpoint_bytes`] wrote.
    fn from_checkpoint_bytes(bytes: &[u8]) -> Result<Self, String>;
    /// [`CheckpointCarry::from_checkpoint_bytes`] of a carry file mapped into memory; a
    /// carry that keeps its bytes keeps the mapping instead of copying them.
    fn from_checkpoint_file(file: MappedFile) -> Result<Self, String> {
        Self::from_checkpoint_bytes(&file)
    }
}

impl CheckpointCarry for EngineCarry {
    fn continues_into(&self) -> ClipIndex {
        self.next_clip()
    }
    fn to_checkpoint_bytes(&self) -> Result<Vec<u8>, String> {
        self.to_safetensors_bytes().map_err(|e| e.to_string())
    }
    fn from_checkpoint_bytes(bytes: &[u8]) -> Result<Self, String> {
        EngineCarry::from_safetensors_bytes(bytes).map_err(|e| e.to_string())
    }
}

/// A carry file as the checkpoint store reads it back, whatever engine wrote it: its bytes,
/// and the clip it continues into read from its header (`next_clip` for the tiny model and a
/// command engine's packed carry, `clip` for Live Avatar). The engine parses the rest
/// ([`crate::engine::Engine::carry_from_bytes`] for the native ones), so a carry that lives on
/// the device is read straight onto it.
#[derive(Debug)]
pub struct CarryFile {
    pub bytes: CarryBytes,
    next_clip: u32,
}

/// A stored carry's bytes: in memory, or the carry file mapped (read from disk as the engine
/// parses it, never copied whole into host memory).
#[derive(Debug)]
pub enum CarryBytes {
    Owned(Vec<u8>),
    Mapped(MappedFile),
}

impl std::ops::Deref for CarryBytes {
    type Target = [u8];
    fn deref(&self) -> &[u8] {
        match self {
            CarryBytes::Owned(bytes) => bytes,
            CarryBytes::Mapped(file) => file,
        }
    }
}

impl CheckpointCarry for CarryFile {
    fn continues_into(&self) -> ClipIndex {
        ClipIndex(self.next_clip)
    }
    fn to_checkpoint_bytes(&self) -> Result<Vec<u8>, String> {
        Ok(self.bytes.to_vec())
    }
    fn from_checkpoint_bytes(bytes: &[u8]) -> Result<Self, String> {
        Ok(CarryFile {
            next_clip: Self::next_clip_of(bytes)?,
            bytes: CarryBytes::Owned(bytes.to_vec()),
        })
    }
    fn from_checkpoint_file(file: MappedFile) -> Result<Self, String> {
        Ok(CarryFile {
            next_clip: Self::next_clip_of(&file)?,
            bytes: CarryBytes::Mapped(file),
        })
    }
}

impl CarryFile {
    /// The clip a carry file continues into, from its safetensors metadata.
    fn next_clip_of(bytes: &[u8]) -> Result<u32, String> {
        let (_, header) = safetensors::SafeTensors::read_metadata(bytes)
            .map_err(|e| format!("not a safetensors carry: {e}"))?;
        let metadata = header.metadata().clone().unwrap_or_default();
        let next_clip = ["next_clip", "clip"]
            .iter()
            .find_map(|key| metadata.get(*key))
            .ok_or_else(|| "the carry's header names no clip".to_string())?
            .parse::<u32>()
            .map_err(|e| format!("the carry's clip: {e}"))?;
        Ok(next_clip)
    }
}

/// Where the carry a checkpoint writes comes from.
pub enum CarrySource<'a> {
    /// Serialised in memory.
    Bytes(&'a [u8]),
    /// Written into the file by `write` (an engine writes one tensor at a time), which
    /// returns the bytes it wrote.
    Stream {
        expected_bytes: u64,
        write: &'a mut dyn FnMut(&mut std::fs::File) -> std::io::Result<u64>,
    },
}

impl CarrySource<'_> {
    fn expected_bytes(&self) -> u64 {
        match self {
            CarrySource::Bytes(bytes) => bytes.len() as u64,
            CarrySource::Stream { expected_bytes, .. } => *expected_bytes,
        }
    }
}

/// Where a job starts.
#[derive(Debug, Clone, PartialEq)]
pub enum ResumePoint<C = EngineCarry> {
    /// From clip 0. `reason` says why an existing checkpoint was not used (`None`: there was
    /// none). Everything the old checkpoints named has been removed.
    Fresh { reason: Option<String> },
    /// Clips `0..=last_clip` are done; continue with `carry` (its `next_clip()` is
    /// `last_clip + 1`). `fell_back` says why the newest checkpoint was passed over for the
    /// previous one, if it was.
    After {
        last_clip: ClipIndex,
        carry: C,
        fell_back: Option<String>,
    },
}

/// Room left in a checkpoint beyond the carry itself: `checkpoint.json` (a segment record per
/// clip) and file system metadata.
pub const CHECKPOINT_SLACK_BYTES: u64 = 1 << 20;

/// Bytes an unprivileged writer can still use on the file system holding `dir` (statvfs).
pub fn free_bytes(dir: &Path) -> std::io::Result<u64> {
    use std::os::unix::ffi::OsStrExt;
    let c_path = std::ffi::CString::new(dir.as_os_str().as_bytes())
        .map_err(|e| std::io::Error::new(ErrorKind::InvalidInput, e))?;
    // SAFETY: statvfs fills the zeroed struct we pass; the path is a valid C string.
    let mut stat: libc::statvfs = unsafe { std::mem::zeroed() };
    let rc = unsafe { libc::statvfs(c_path.as_ptr(), &mut stat) };
    if rc != 0 {
        return Err(std::io::Error::last_os_error());
    }
    // The field types differ between targets (u32 on some 32-bit ones).
    #[allow(clippy::useless_conversion)]
    let (blocks, block_size) = (u64::from(stat.f_bavail), u64::from(stat.f_frsize));
    Ok(blocks.saturating_mul(block_size))
}

/// The checkpoints of one job's work directory.
#[derive(Debug, Clone)]
pub struct CheckpointStore {
    work_dir: PathBuf,
}

/// Why a stored checkpoint cannot be used.
enum Unusable {
    JobChanged,
    /// The carry was rendered with other settings; the words say which.
    Refused(String),
    Damaged(String),
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
        carry: &EngineCarry,
        fingerprint: &str,
        segment: &Path,
    ) -> Result<(), RenderError> {
        self.save_carry(clip, carry, fingerprint, segment)
    }

    /// [`CheckpointStore::save`] for any kind of carry: the checkpoint that names `clip - 1`
    /// must exist, as after a checkpoint per clip.
    pub fn save_carry<C: CheckpointCarry>(
        &self,
        clip: ClipIndex,
        carry: &C,
        fingerprint: &str,
        segment: &Path,
    ) -> Result<(), RenderError> {
        if carry.continues_into().0 != clip.0 + 1 {
            return Err(RenderError::OutOfOrder {
                clip,
                detail: format!(
                    "the carry continues into {}, not clip {}",
                    carry.continues_into(),
                    clip.0 + 1
                ),
            });
        }
        let (_, mut segments) = self.base_for(clip, fingerprint)?;
        segments.push(self.segment_record(clip, segment)?);
        let carry_bytes = carry
            .to_checkpoint_bytes()
            .map_err(|detail| RenderError::CheckpointCarry { clip, detail })?;
        self.save_prepared(clip, &carry_bytes, fingerprint, None, segments)
    }

    /// The record of clip `clip`'s durable segment at `segment`: its size and SHA-256.
    pub fn segment_record(
        &self,
        clip: ClipIndex,
        segment: &Path,
    ) -> Result<SegmentRecord, RenderError> {
        let (size_bytes, sha256) =
            size_and_sha256(segment).map_err(RenderError::io("read segment", segment))?;
        Ok(SegmentRecord {
            clip: clip.0,
            file: FileRecord {
                file: self.relative(segment),
                size_bytes,
                sha256,
            },
        })
    }

    /// Writes the checkpoint of `clip` from a carry already serialised (`carry_bytes`, so a
    /// background thread can write it from host memory while the next clips render) and the
    /// records of segments `0..=clip`. Checks free space first: without room for the carry it
    /// fails with [`RenderError::NoSpace`] and leaves the checkpoints as they were.
    pub fn save_prepared(
        &self,
        clip: ClipIndex,
        carry_bytes: &[u8],
        fingerprint: &str,
        identity: Option<&CarrySettings>,
        segments: Vec<SegmentRecord>,
    ) -> Result<(), RenderError> {
        self.save_from(
            clip,
            CarrySource::Bytes(carry_bytes),
            fingerprint,
            identity,
            segments,
        )
    }

    /// [`CheckpointStore::save_prepared`] from either kind of [`CarrySource`]: a carry
    /// streamed into its file (for carries too big to copy to the host whole) has its
    /// expected size checked against free space first and is hashed by reading it back.
    pub fn save_from(
        &self,
        clip: ClipIndex,
        source: CarrySource<'_>,
        fingerprint: &str,
        identity: Option<&CarrySettings>,
        segments: Vec<SegmentRecord>,
    ) -> Result<(), RenderError> {
        let in_order = segments.len() as u64 == u64::from(clip.0) + 1
            && segments
                .iter()
                .enumerate()
                .all(|(i, s)| s.clip as usize == i);
        if !in_order {
            return Err(RenderError::OutOfOrder {
                clip,
                detail: "the segment records do not cover every clip up to it in order".to_string(),
            });
        }
        let needed = source.expected_bytes() + CHECKPOINT_SLACK_BYTES;
        let free =
            free_bytes(&self.work_dir).map_err(RenderError::io("statvfs", &self.work_dir))?;
        if free < needed {
            return Err(RenderError::NoSpace {
                clip,
                dir: self.work_dir.clone(),
                needed,
                free,
            });
        }
        // The checkpoint on disk that this one follows: it becomes the previous one.
        let base = self
            .read(CHECKPOINT_FILE)
            .ok()
            .flatten()
            .filter(|cp| cp.last_clip < clip.0 && cp.job_fingerprint == fingerprint);
        let carry_name = Self::carry_name(clip.0);
        let carry_path = self.work_dir.join(&carry_name);
        crate::crash_point::reached("before_carry", clip.0);
        let (carry_size, carry_sha256) = match source {
            CarrySource::Bytes(bytes) => {
                write_atomic(&carry_path, bytes)
                    .map_err(RenderError::io("write carry", &carry_path))?;
                (bytes.len() as u64, sha256_hex(bytes))
            }
            CarrySource::Stream { write, .. } => write_atomic_with(&carry_path, |file| {
                let written = write(file)?;
                // Read back through the page cache; the file is synced before its rename.
                let (size, sha256) = file_size_and_sha256(file)?;
                if size != written {
                    return Err(std::io::Error::other(format!(
                        "the engine wrote {written} bytes but the file holds {size}"
                    )));
                }
                Ok((size, sha256))
            })
            .map_err(RenderError::io("write carry", &carry_path))?,
        };
        crate::crash_point::reached("after_carry", clip.0);

        let checkpoint = Checkpoint {
            format_version: FORMAT_VERSION,
            last_clip: clip.0,
            job_fingerprint: fingerprint.to_string(),
            carry: FileRecord {
                file: carry_name.clone(),
                size_bytes: carry_size,
                sha256: carry_sha256,
            },
            segments,
            written_at_unix_ms: SystemTime::now()
                .duration_since(UNIX_EPOCH)
                .map(|d| d.as_millis() as u64)
                .unwrap_or(0),
            carry_written_for: identity.cloned(),
        };
        let json = serde_json::to_vec_pretty(&checkpoint)
            .unwrap_or_else(|e| panic!("a Checkpoint always serialises to JSON: {e}"));
        let current = self.work_dir.join(CHECKPOINT_FILE);
        if base.is_some() {
            let previous = self.work_dir.join(PREVIOUS_CHECKPOINT_FILE);
            std::fs::rename(&current, &previous)
                .map_err(RenderError::io("keep previous checkpoint", &previous))?;
            crate::crash_point::reached("mid_checkpoint", clip.0);
        }
        write_atomic(&current, &json).map_err(RenderError::io("write checkpoint", &current))?;
        // Only the carries of the two checkpoints on disk are still reachable.
        let keep_previous = base.map(|cp| cp.carry.file);
        self.remove_carries(|name, _| {
            name != carry_name && Some(name) != keep_previous.as_deref()
        })?;
        tracing::debug!(clip = clip.0, "checkpoint written");
        Ok(())
    }

    /// The checkpoint clip `clip` extends (the one naming `clip - 1`), and its segment list.
    fn base_for(
        &self,
        clip: ClipIndex,
        fingerprint: &str,
    ) -> Result<(Option<&'static str>, Vec<SegmentRecord>), RenderError> {
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
        Err(RenderError::OutOfOrder {
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
        identity: Option<&CarrySettings>,
    ) -> Result<C, Unusable> {
        if let (Some(written), Some(job)) = (&cp.carry_written_for, identity) {
            if let Some(difference) = written.mismatch(job) {
                return Err(Unusable::Refused(format!(
                    "the carry of clip {} was written for {difference}",
                    cp.last_clip
                )));
            }
        }
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
        let bytes = MappedFile::open(&carry_path)
            .map_err(|e| damaged(format!("carry {}: {e}", carry_path.display())))?;
        if bytes.len() as u64 != cp.carry.size_bytes || sha256_hex(&bytes) != cp.carry.sha256 {
            return Err(damaged(format!(
                "carry {} does not match its recorded sha256",
                carry_path.display()
            )));
        }
        let carry = C::from_checkpoint_file(bytes).map_err(damaged)?;
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
    pub fn resume(&self, fingerprint: &str) -> Result<ResumePoint, RenderError> {
        self.resume_carry(fingerprint, None)
    }

    /// [`CheckpointStore::resume`] for any kind of carry.
    /// With `identity`, a checkpoint whose carry was written for other settings is refused
    /// and the job starts fresh, the reason naming what differs.
    pub fn resume_carry<C: CheckpointCarry>(
        &self,
        fingerprint: &str,
        identity: Option<&CarrySettings>,
    ) -> Result<ResumePoint<C>, RenderError> {
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
            match self.verify(&cp, fingerprint, identity) {
                Ok(carry) => {
                    let mut fell_back = None;
                    if name != CHECKPOINT_FILE {
                        let why = if reasons.is_empty() {
                            format!("{CHECKPOINT_FILE} is missing")
                        } else {
                            reasons.join("; ")
                        };
                        tracing::warn!(reason = %why, clip = cp.last_clip, "falling back to the previous checkpoint");
                        fell_back = Some(format!(
                            "newest checkpoint unusable ({why}); resumed from the previous one, after clip {}",
                            cp.last_clip
                        ));
                        let json = serde_json::to_vec_pretty(&cp).unwrap_or_else(|e| {
                            panic!("a Checkpoint always serialises to JSON: {e}")
                        });
                        let current = self.work_dir.join(CHECKPOINT_FILE);
                        write_atomic(&current, &json)
                            .map_err(RenderError::io("restore checkpoint", &current))?;
                    }
                    self.remove_beyond(Some(cp.last_clip))?;
                    return Ok(ResumePoint::After {
                        last_clip: ClipIndex(cp.last_clip),
                        carry,
                        fell_back,
                    });
                }
                Err(Unusable::JobChanged) => {
                    self.remove_beyond(None)?;
                    return Ok(ResumePoint::Fresh {
                        reason: Some("job changed since checkpoint".to_string()),
                    });
                }
                Err(Unusable::Refused(why)) => {
                    tracing::warn!(reason = %why, "checkpoint refused");
                    self.remove_beyond(None)?;
                    return Ok(ResumePoint::Fresh {
                        reason: Some(format!("checkpoint refused: {why}; starting from clip 0")),
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

    /// Forgets every checkpoint, carry and segment: the job starts from clip 0 (for a
    /// checkpoint that passed its own checks but whose carry the engine refuses).
    pub fn start_over(&self) -> Result<(), RenderError> {
        self.remove_beyond(None)
    }

    /// The segment records of `checkpoint.json` (after [`CheckpointStore::resume_carry`]
    /// chose it): clips `0..=last_clip`.
    pub fn current_segments(&self) -> Result<Vec<SegmentRecord>, RenderError> {
        let path = self.work_dir.join(CHECKPOINT_FILE);
        let bytes = std::fs::read(&path).map_err(RenderError::io("read checkpoint", &path))?;
        let cp: Checkpoint = serde_json::from_slice(&bytes).map_err(|e| {
            RenderError::io("parse checkpoint", &path)(std::io::Error::new(
                ErrorKind::InvalidData,
                e,
            ))
        })?;
        Ok(cp.segments)
    }

    /// Prepares the work directory for a start after clip `last` (`None`: a fresh start).
    /// Fresh: removes everything the old checkpoints named, and the checkpoints. After a
    /// clip: removes carries beyond it and those no checkpoint names; segments of later clips
    /// stay, for the worker to compare with what it renders again. Either way, crash leftovers
    /// of atomic writes and re-rendered segments go.
    fn remove_beyond(&self, last: Option<u32>) -> Result<(), RenderError> {
        match last {
            None => self.remove_carries(|_, _| true)?,
            Some(last) => {
                let named: Vec<String> = [CHECKPOINT_FILE, PREVIOUS_CHECKPOINT_FILE]
                    .iter()
                    .filter_map(|name| self.read(name).ok().flatten())
                    .filter(|cp| cp.last_clip <= last)
                    .map(|cp| cp.carry.file)
                    .collect();
                self.remove_carries(|name, k| k > last || !named.iter().any(|n| n == name))?;
            }
        }
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
            // `.<k>.mkv.partial`: a segment whose encoder was killed; it never became `k.mkv`.
            let torn_segment = entry.starts_with('.') && entry.ends_with(".partial");
            let rerendered = entry.contains(RERENDER_INFIX);
            if torn_segment || rerendered || (last.is_none() && !entry.starts_with('.')) {
                remove_if_present(&clips.join(&entry))?;
            }
        }
        sync_dir(&self.work_dir)
            .or_else(ignore_missing)
            .map_err(RenderError::io("sync", &self.work_dir))
    }

    /// Removes every `carry-<k>.safetensors` for which `doomed(name, k)` holds.
    fn remove_carries(&self, doomed: impl Fn(&str, u32) -> bool) -> Result<(), RenderError> {
        for entry in list_dir(&self.work_dir)? {
            let clip = entry
                .strip_prefix(CARRY_PREFIX)
                .and_then(|rest| rest.strip_suffix(CARRY_SUFFIX))
                .and_then(|k| k.parse::<u32>().ok());
            if clip.is_some_and(|k| doomed(&entry, k)) {
                remove_if_present(&self.work_dir.join(entry))?;
            }
        }
        Ok(())
    }
}

/// Lowercase hex SHA-256 of a file.
pub fn file_sha256(path: &Path) -> std::io::Result<String> {
    size_and_sha256(path).map(|(_, sha)| sha)
}

/// Renames `from` over `to` (a file of the same directory) and makes the rename durable.
pub fn replace_durably(from: &Path, to: &Path) -> std::io::Result<()> {
    atomic_write::publish(from, to).map(drop)
}

/// Part of the name of a segment rendered again after a resume, before it is compared with
/// the segment already there: `clips/<k>.again.mkv`.
pub const RERENDER_INFIX: &str = ".again.";

fn ignore_missing(e: std::io::Error) -> std::io::Result<()> {
    if e.kind() == ErrorKind::NotFound {
        Ok(())
    } else {
        Err(e)
    }
}

fn remove_if_present(path: &Path) -> Result<(), RenderError> {
    std::fs::remove_file(path)
        .or_else(ignore_missing)
        .map_err(RenderError::io("remove", path))
}

/// File names in `dir`; empty when the directory does not exist yet.
fn list_dir(dir: &Path) -> Result<Vec<String>, RenderError> {
    let entries = match std::fs::read_dir(dir) {
        Ok(entries) => entries,
        Err(e) if e.kind() == ErrorKind::NotFound => return Ok(Vec::new()),
        Err(e) => return Err(RenderError::io("list", dir)(e)),
    };
    let mut names = Vec::new();
    for entry in entries {
        let entry = entry.map_err(RenderError::io("list", dir))?;
        names.push(entry.file_name().to_string_lossy().into_owned());
    }
    Ok(names)
}

#[cfg(test)]
mod tests;
