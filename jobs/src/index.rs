//! The queue index: one compact JSON line per job state change, in `state/queue.index`, so a
//! start-up or a `status` reads one file instead of every job folder.
//!
//! The job folders stay the truth; the index is a cache of what the scheduler and `status`
//! need per job (phase, priority, submission time, the numbers placement plans with, and the
//! columns of the status table). It is kept crash-safe by construction rather than by an
//! fsync per line:
//!
//! - the daemon appends a line *after* the job's `state.json` is durable, so the index can only
//!   lag behind the folders, never run ahead of them;
//! - every reader reconciles it with the folder names ([`reconcile`]; listing 100,000 names
//!   costs milliseconds): a folder the index does not know is read and added, an entry whose
//!   folder is gone is dropped;
//! - a line cut short by a crash (the last one, without its line break) is ignored; a damaged
//!   line anywhere else, or a missing or foreign header, makes the whole index be rebuilt from
//!   the folders.
//!
//! The last line for a job wins. Lines of finished jobs are synced at once (they must not come
//! back as queued after a power cut); the rest is synced at a clean stop. What a crash can
//! still leave stale is one job's latest phase change, which the scheduler re-checks against
//! `state.json` before it starts the job.

use crate::error::{JobsError, StateError};
use crate::spec::Offload;
use crate::state::{write_atomic, JobDir, JobId, JobState, Phase};
use serde::{Deserialize, Serialize};
use std::collections::{BTreeMap, HashMap, HashSet};
use std::fs::{self, File, OpenOptions};
use std::io::{self, Write};
use std::path::{Path, PathBuf};

/// The index's file name in the state dir.
pub const INDEX_FILE: &str = "queue.index";

/// First line of every index; another version's index is rebuilt rather than misread.
const HEADER: &str = r#"{"reelspool_queue_index":1}"#;

/// What placement needs to plan a job without reading its `job.yaml` again.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct QueuePlan {
    pub profile: String,
    pub width: u32,
    pub height: u32,
    pub frames: u32,
    pub offload: Offload,
    /// Clips the job renders (probed once for `num_clip: auto`).
    pub clips: u32,
    /// For a Live Avatar release on the native engine: what placement needs to compute the
    /// job's memory plan itself (no profile).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub release: Option<ReleaseShape>,
}

/// A release job's inputs to its memory plan, beside the size and frames of [`QueuePlan`].
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ReleaseShape {
    /// The release directory.
    pub dir: std::path::PathBuf,
    pub sample_steps: u32,
    /// Seconds of speech `prepare` encodes (clips × frames / fps when not probed).
    pub audio_seconds: f64,
    pub memory_mode: crate::spec::MemoryModeSetting,
    pub precision: crate::spec::PrecisionSetting,
}

/// A job's own copy of its [`QueuePlan`], beside its `state.json`, so that rebuilding the queue
/// without an index does not probe every job's audio again (the clip count of a
/// `num_clip: auto` job takes an FFmpeg probe, about 10 ms). A cache only: written without
/// fsync, and a missing or unreadable file just means the plan is worked out again.
pub const PLAN_FILE: &str = "plan.json";

/// The plan kept in a job's folder, if there is a readable one.
pub fn read_plan(dir: &JobDir) -> Option<QueuePlan> {
    let bytes = fs::read(dir.root().join(PLAN_FILE)).ok()?;
    serde_json::from_slice(&bytes).ok()
}

/// Keeps `plan` in the job's folder (temp file and rename, so a reader never sees half).
pub fn write_plan(dir: &JobDir, plan: &QueuePlan) -> io::Result<()> {
    let path = dir.root().join(PLAN_FILE);
    let partial = dir.root().join(".plan.json.partial");
    let bytes = serde_json::to_vec(plan).map_err(io::Error::other)?;
    fs::write(&partial, bytes)?;
    fs::rename(&partial, &path)
}

/// One job, as the index holds it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct IndexEntry {
    pub id: JobId,
    pub name: String,
    pub phase: Phase,
    #[serde(default)]
    pub priority: i32,
    pub submitted_at_ms: u64,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub gpu: Option<String>,
    #[serde(default)]
    pub clips_done: u32,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub clips_total: Option<u32>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub eta_secs: Option<f64>,
    #[serde(default, skip_serializing_if = "is_zero")]
    pub notice_failures: u64,
    /// Known for jobs that were queued by a daemon; `None` for finished ones.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub plan: Option<QueuePlan>,
    /// When a job waiting out its retry backoff may run again (Unix ms).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub retry_at_ms: Option<u64>,
    /// Where the finished video goes (intake refuses a second unfinished job for it).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub output: Option<std::path::PathBuf>,
    /// Who submitted the job (shown by `status`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub owner: Option<crate::access::Person>,
}

fn is_zero(n: &u64) -> bool {
    *n == 0
}

impl IndexEntry {
    /// The entry for a job's state; `plan` is kept only while the job can still run.
    pub fn from_state(state: &JobState, plan: Option<QueuePlan>) -> IndexEntry {
        IndexEntry {
            id: state.id.clone(),
            name: state.name.clone(),
            phase: state.phase,
            priority: state.priority,
            submitted_at_ms: state.submitted_at_ms,
            gpu: state.gpu.clone(),
            clips_done: state.clips_done,
            clips_total: state.clips_total,
            eta_secs: state.eta_secs,
            notice_failures: state
                .details
                .get("notice_failures")
                .and_then(|v| v.as_u64())
                .unwrap_or(0),
            plan: if state.phase.is_terminal() {
                None
            } else {
                plan
            },
            retry_at_ms: state.retry_at_ms.filter(|_| !state.phase.is_terminal()),
            output: state.output.clone(),
            owner: state.owner.clone(),
        }
    }

    /// A [`JobState`] with what the index knows (for tables); fields it does not keep are
    /// left at their defaults.
    pub fn to_state(&self) -> JobState {
        let mut details = serde_json::Map::new();
        if self.notice_failures > 0 {
            details.insert("notice_failures".into(), self.notice_failures.into());
        }
        JobState {
            id: self.id.clone(),
            name: self.name.clone(),
            phase: self.phase,
            priority: self.priority,
            source_file: String::new(),
            submitted_at_ms: self.submitted_at_ms,
            started_at_ms: None,
            finished_at_ms: None,
            gpu: self.gpu.clone(),
            clips_done: self.clips_done,
            clips_total: self.clips_total,
            attempts: 0,
            output: self.output.clone(),
            error: None,
            eta_secs: self.eta_secs,
            vram_estimate_bytes: None,
            details,
            stalled_attempts: 0,
            stalled_evictions: 0,
            durable_at_attempt_start: None,
            retry_at_ms: self.retry_at_ms,
            owner: self.owner.clone(),
            batch: None,
            roots: None,
        }
    }
}

/// An index file as read, before reconciling.
#[derive(Debug, Default)]
pub struct IndexFile {
    /// The latest entry of every job, by id.
    pub entries: BTreeMap<JobId, IndexEntry>,
    /// Lines in the file (entries plus superseded ones), to decide when to compact.
    pub lines: usize,
}

/// Why an index was not used as it was.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum IndexProblem {
    Missing,
    Damaged(String),
}

/// Reads `path`. `Err(IndexProblem)` says the index must be rebuilt from the job folders;
/// an I/O error other than "not found" counts as damage (the folders can still be read).
pub fn read_index(path: &Path) -> Result<IndexFile, IndexProblem> {
    let bytes = match fs::read(path) {
        Ok(bytes) => bytes,
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Err(IndexProblem::Missing),
        Err(e) => return Err(IndexProblem::Damaged(format!("cannot read it: {e}"))),
    };
    let complete = bytes.ends_with(b"\n");
    let mut lines = bytes.split(|b| *b == b'\n').enumerate().peekable();
    match lines.next() {
        Some((_, first)) if first == HEADER.as_bytes() => {}
        _ => return Err(IndexProblem::Damaged("no index header".into())),
    }
    let mut file = IndexFile::default();
    while let Some((number, line)) = lines.next() {
        let last = lines.peek().is_none();
        if line.is_empty() {
            continue;
        }
        match serde_json::from_slice::<IndexEntry>(line) {
            Ok(entry) => {
                file.lines += 1;
                file.entries.insert(entry.id.clone(), entry);
            }
            // A write cut short by a crash: the job folder still has that change.
            Err(_) if last && !complete => {}
            Err(err) => {
                return Err(IndexProblem::Damaged(format!(
                    "line {} cannot be read: {err}",
                    number + 1
                )))
            }
        }
    }
    Ok(file)
}

/// The index after checking it against the job folders.
#[derive(Debug, Default)]
pub struct Reconciled {
    pub entries: BTreeMap<JobId, IndexEntry>,
    /// Lines the file holds now; `None` when it must be written anew (missing or damaged).
    pub file_lines: Option<usize>,
    /// Entries made from folders the index did not know (all of them after a rebuild).
    pub added: Vec<JobId>,
    /// Folders the index did not know, left unread ([`reconcile_names`]), oldest first.
    pub unread: Vec<JobId>,
    /// Entries dropped because their folder is gone.
    pub dropped: usize,
    /// Why the index was rebuilt, if it was.
    pub rebuilt: Option<IndexProblem>,
    /// Folders whose `state.json` could not be read (they are left out, as `list_jobs` does).
    pub unreadable: Vec<(PathBuf, StateError)>,
}

/// The job folder names under `jobs_dir` (names starting with `.` are work in progress).
pub fn job_folder_ids(jobs_dir: &Path) -> Result<HashSet<JobId>, StateError> {
    let entries = match fs::read_dir(jobs_dir) {
        Ok(entries) => entries,
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(HashSet::new()),
        Err(e) => return Err(JobsError::io("list", jobs_dir, e)),
    };
    let mut ids = HashSet::new();
    for entry in entries {
        let entry = entry.map_err(|e| JobsError::io("list", jobs_dir, e))?;
        let name = entry.file_name();
        let Some(name) = name.to_str() else { continue };
        if name.starts_with('.') || !entry.file_type().map(|t| t.is_dir()).unwrap_or(false) {
            continue;
        }
        if let Ok(id) = name.parse::<JobId>() {
            ids.insert(id);
        }
    }
    Ok(ids)
}

/// Reads the index at `index_path` and makes it agree with the folders under `jobs_dir`.
/// `plan_of` gives the plan of a job read from its folder (called for jobs that can still
/// run; the CLI passes one that returns `None`).
pub fn reconcile(
    index_path: &Path,
    jobs_dir: &Path,
    plan_of: impl FnMut(&JobDir, &JobState) -> Option<QueuePlan>,
) -> Result<Reconciled, StateError> {
    reconcile_with(index_path, jobs_dir, Some(plan_of))
}

/// Like [`reconcile`], but folders the index does not know are only listed in
/// [`Reconciled::unread`], for the caller to read at its own pace (the daemon hands them to
/// its scheduler after it is ready, so a rebuild does not hold up the start).
pub fn reconcile_names(index_path: &Path, jobs_dir: &Path) -> Result<Reconciled, StateError> {
    reconcile_with(
        index_path,
        jobs_dir,
        None::<fn(&JobDir, &JobState) -> Option<QueuePlan>>,
    )
}

fn reconcile_with(
    index_path: &Path,
    jobs_dir: &Path,
    mut plan_of: Option<impl FnMut(&JobDir, &JobState) -> Option<QueuePlan>>,
) -> Result<Reconciled, StateError> {
    let folders = job_folder_ids(jobs_dir)?;
    let mut out = Reconciled::default();
    let known = match read_index(index_path) {
        Ok(file) => {
            out.file_lines = Some(file.lines);
            file.entries
        }
        Err(problem) => {
            out.rebuilt = Some(problem);
            BTreeMap::new()
        }
    };
    for (id, entry) in known {
        if folders.contains(&id) {
            out.entries.insert(id, entry);
        } else {
            out.dropped += 1;
        }
    }
    let mut missing: Vec<JobId> = folders
        .into_iter()
        .filter(|id| !out.entries.contains_key(id))
        .collect();
    missing.sort();
    let Some(plan_of) = plan_of.as_mut() else {
        out.unread = missing;
        return Ok(out);
    };
    for id in missing {
        let dir = JobDir::new(jobs_dir.join(id.as_str()));
        match dir.load_state() {
            Ok(state) => {
                let plan = if state.phase.is_terminal() {
                    None
                } else {
                    plan_of(&dir, &state)
                };
                out.entries
                    .insert(id.clone(), IndexEntry::from_state(&state, plan));
                out.added.push(id);
            }
            // A folder intake has just made: its state.json follows at once.
            Err(JobsError::Io { source, .. }) if source.kind() == io::ErrorKind::NotFound => {}
            Err(err) => out.unreadable.push((dir.root().to_path_buf(), err)),
        }
    }
    Ok(out)
}

/// The daemon's handle on the index: appends a line per change and keeps the plans of jobs
/// that can still run, so a line written for a state change carries its job's plan along.
#[derive(Debug)]
pub struct IndexWriter {
    path: PathBuf,
    file: File,
    plans: HashMap<JobId, QueuePlan>,
    lines: usize,
}

impl IndexWriter {
    /// Opens the index for appending after [`reconcile`]: writes it anew (compact) when it was
    /// rebuilt, lost entries, or holds mostly superseded lines; otherwise appends the entries
    /// it was missing.
    pub fn open(path: &Path, reconciled: &Reconciled) -> Result<IndexWriter, StateError> {
        let plans: HashMap<JobId, QueuePlan> = reconciled
            .entries
            .values()
            .filter_map(|entry| Some((entry.id.clone(), entry.plan.clone()?)))
            .collect();
        let live = reconciled.entries.len();
        let rewrite = match reconciled.file_lines {
            None => true,
            Some(lines) => reconciled.dropped > 0 || lines > 2 * live + 1024,
        };
        let mut writer = if rewrite {
            let mut bytes = Vec::with_capacity(live * 200 + HEADER.len() + 1);
            bytes.extend_from_slice(HEADER.as_bytes());
            bytes.push(b'\n');
            for entry in reconciled.entries.values() {
                push_line(&mut bytes, entry, path)?;
            }
            write_atomic(path, &bytes).map_err(|e| JobsError::io("write", path, e))?;
            IndexWriter {
                path: path.to_path_buf(),
                file: open_append(path)?,
                plans,
                lines: live,
            }
        } else {
            let mut writer = IndexWriter {
                path: path.to_path_buf(),
                file: open_append(path)?,
                plans,
                lines: reconciled.file_lines.unwrap_or(0),
            };
            writer.cut_torn_tail()?;
            let mut bytes = Vec::new();
            for id in &reconciled.added {
                if let Some(entry) = reconciled.entries.get(id) {
                    push_line(&mut bytes, entry, path)?;
                }
            }
            writer.write(&bytes, !bytes.is_empty())?;
            writer.lines += reconciled.added.len();
            writer
        };
        writer.plans.shrink_to_fit();
        Ok(writer)
    }

    /// Remembers the plan of a job that was just queued; lines for it carry the plan from now.
    pub fn set_plan(&mut self, id: &JobId, plan: QueuePlan) {
        self.plans.insert(id.clone(), plan);
    }

    /// The plan kept for a job, if any.
    pub fn plan(&self, id: &JobId) -> Option<&QueuePlan> {
        self.plans.get(id)
    }

    /// Appends the job's current state. Called after its `state.json` is durable. A finished
    /// job's line is synced before this returns.
    pub fn record(&mut self, state: &JobState) -> Result<(), StateError> {
        let plan = if state.phase.is_terminal() {
            self.plans.remove(&state.id)
        } else {
            self.plans.get(&state.id).cloned()
        };
        let entry = IndexEntry::from_state(state, plan);
        let mut bytes = Vec::with_capacity(256);
        push_line(&mut bytes, &entry, &self.path)?;
        self.write(&bytes, state.phase.is_terminal())?;
        self.lines += 1;
        Ok(())
    }

    /// Gives up on the index after a failed write: removes the file, so the next start
    /// rebuilds it from the job folders instead of trusting an index with a gap.
    pub fn discard(self) {
        if let Err(err) = fs::remove_file(&self.path) {
            tracing::warn!(path = %self.path.display(), error = %err, "cannot remove the queue index");
        }
    }

    /// Makes every appended line durable (at a clean stop).
    pub fn sync(&self) -> Result<(), StateError> {
        self.file
            .sync_data()
            .map_err(|e| JobsError::io("sync", &self.path, e))
    }

    fn write(&mut self, bytes: &[u8], sync: bool) -> Result<(), StateError> {
        if bytes.is_empty() {
            return Ok(());
        }
        self.file
            .write_all(bytes)
            .map_err(|e| JobsError::io("append to", &self.path, e))?;
        if sync {
            self.sync()?;
        }
        Ok(())
    }

    /// A crash may have left half a line at the end; the next line must not glue onto it.
    fn cut_torn_tail(&mut self) -> Result<(), StateError> {
        use std::os::unix::fs::FileExt;
        let len = self
            .file
            .metadata()
            .map_err(|e| JobsError::io("read", &self.path, e))?
            .len();
        if len == 0 {
            return Ok(());
        }
        let mut last = [0u8; 1];
        self.file
            .read_exact_at(&mut last, len - 1)
            .map_err(|e| JobsError::io("read", &self.path, e))?;
        if last[0] != b'\n' {
            // Readers skip that line already; cut it off so the next one starts clean.
            let bytes = fs::read(&self.path).map_err(|e| JobsError::io("read", &self.path, e))?;
            let keep = bytes
                .iter()
                .rposition(|b| *b == b'\n')
                .map_or(0, |at| at + 1);
            self.file
                .set_len(keep as u64)
                .map_err(|e| JobsError::io("repair", &self.path, e))?;
        }
        Ok(())
    }
}

fn push_line(out: &mut Vec<u8>, entry: &IndexEntry, path: &Path) -> Result<(), StateError> {
    serde_json::to_writer(&mut *out, entry)
        .map_err(|e| JobsError::io("encode", path, io::Error::other(e)))?;
    out.push(b'\n');
    Ok(())
}

fn open_append(path: &Path) -> Result<File, StateError> {
    OpenOptions::new()
        .append(true)
        .read(true)
        .open(path)
        .map_err(|e| JobsError::io("open", path, e))
}

/// Appends one job's state to an existing index without a daemon (the CLI cancelling a job
/// while none runs). A missing index is left missing: the next start builds it.
pub fn append_standalone(index_path: &Path, state: &JobState) -> Result<(), StateError> {
    let mut file = match OpenOptions::new().append(true).open(index_path) {
        Ok(file) => file,
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(()),
        Err(e) => return Err(JobsError::io("open", index_path, e)),
    };
    let mut bytes = Vec::new();
    push_line(&mut bytes, &IndexEntry::from_state(state, None), index_path)?;
    file.write_all(&bytes)
        .and_then(|()| file.sync_data())
        .map_err(|e| JobsError::io("append to", index_path, e))
}

#[cfg(test)]
mod tests;
