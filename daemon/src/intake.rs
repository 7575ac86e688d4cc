//! Where a job file becomes a job.
//!
//! The watcher turns inotify events on `spool/incoming/` into [`IntakeSignal`]s; the intake task
//! collects them into batches and hands each batch to [`process_batch`] on a blocking thread.
//! A file is only looked at once it is complete: renamed in (`IN_MOVED_TO`), or closed after
//! writing (`IN_CLOSE_WRITE`). A file created in place is remembered as "being written" and
//! skipped by rescans until its writer closes it.

use std::collections::{BTreeSet, HashSet};
use std::io::Read;
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use jobs::state::{now_ms, JobDir, JobEvent, JobId, JobState};
use jobs::JobSpec;
use notify::event::{AccessKind, AccessMode, CreateKind, ModifyKind, RenameMode};
use notify::{EventKind, RecommendedWatcher, RecursiveMode, Watcher};
use tokio::sync::{mpsc, watch};
use tracing::{debug, info, warn};

use crate::spool::{self, Layout};

/// The largest number of files handled in one durable batch.
const BATCH_LIMIT: usize = 512;

/// What the watcher tells the intake task.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum IntakeSignal {
    /// A complete file with this name is in `incoming/`.
    Ready(String),
    /// A file with this name is being written in place; wait for its close.
    Writing(String),
    /// Events were lost (queue overflow): list the directory again.
    Rescan,
    /// The marker file of a listing (see [`BARRIER_PREFIX`]) has been seen: every event from
    /// before that listing has been delivered.
    Barrier(u64),
}

/// Name prefix of the hidden marker files a listing of `incoming/` creates after it reads the
/// directory. inotify reports events in order, so once the marker's creation comes through, the
/// creation event of every file that was in the listing has come through too: a file still being
/// written in place is then known as such, however far behind the watcher thread was.
pub const BARRIER_PREFIX: &str = ".reelspool-barrier-";

/// How long a listing waits for its marker before it trusts what it has (a watcher that has
/// stopped delivering events is logged, not waited on forever).
const BARRIER_WAIT: std::time::Duration = std::time::Duration::from_secs(10);

/// Decides whether a valid job can run on this daemon's pool at all (placement by memory).
pub trait Admission: Send + Sync {
    /// `Ok(vram estimate in bytes)` or the refusal to show the user.
    fn admit(&self, spec: &JobSpec) -> Result<Option<u64>, String>;

    /// [`Admission::admit`], with the memory plan of a job whose engine accounts its own
    /// memory (a Live Avatar release).
    fn admit_with_plan(&self, spec: &JobSpec) -> Result<Admitted, String> {
        self.admit(spec).map(|vram_bytes| Admitted {
            vram_bytes,
            memory: None,
        })
    }

    /// Checks the model files the job names (a release's headers), once per model.
    fn check_model(&self, _spec: &JobSpec) -> Result<(), String> {
        Ok(())
    }
}

/// The key of `state.json`'s `details` holding a release job's memory plan (mode, precision,
/// device and host bytes): intake writes the plan on the largest card, placement the one the
/// job runs with.
pub const MEMORY_PLAN_KEY: &str = "memory_plan";

/// What admission found for a job it accepts.
#[derive(Debug, Clone, Default)]
pub struct Admitted {
    pub vram_bytes: Option<u64>,
    pub memory: Option<crate::placement::release_plan::PlannedMemory>,
}

/// Everything intake needs to turn a file into a job.
pub struct IntakeContext {
    pub layout: Layout,
    pub templates_dir: PathBuf,
    /// Behind a lock because a config reload (SIGHUP) replaces them for files not yet read.
    pub roots: std::sync::RwLock<jobs::Roots>,
    pub admission: Box<dyn Admission>,
    /// The operator's command engines; replaced by a config reload like `roots`.
    pub engines: std::sync::RwLock<crate::engines::EngineTable>,
    /// Who may submit, and the user database behind job owners.
    pub owners: crate::owner::Policy,
    /// Output paths of queued and running jobs, read from the state directory at the first
    /// batch and kept up to date by intake itself (see [`ActiveOutputs`]).
    pub outputs: std::sync::Mutex<Option<ActiveOutputs>>,
}

/// What one batch produced.
#[derive(Debug, Default)]
pub struct BatchOutcome {
    pub accepted: Vec<JobId>,
    pub rejected: Vec<String>,
}

/// Starts inotify on `incoming/`. The returned watcher must be kept alive.
pub fn start_watcher(
    incoming: &Path,
    signals: mpsc::UnboundedSender<IntakeSignal>,
) -> notify::Result<RecommendedWatcher> {
    let mut watcher = notify::recommended_watcher(move |event: notify::Result<notify::Event>| {
        let event = match event {
            Ok(event) => event,
            Err(err) => {
                warn!(error = %err, "file watcher error; rescanning incoming/");
                let _ = signals.send(IntakeSignal::Rescan);
                return;
            }
        };
        for signal in signals_for(&event) {
            // The receiver only goes away at shutdown; losing signals then is harmless
            // because the next start rescans.
            let _ = signals.send(signal);
        }
    })?;
    watcher.watch(incoming, RecursiveMode::NonRecursive)?;
    Ok(watcher)
}

/// Maps one inotify event to intake signals.
fn signals_for(event: &notify::Event) -> Vec<IntakeSignal> {
    if event.need_rescan() {
        return vec![IntakeSignal::Rescan];
    }
    if let EventKind::Create(_) = event.kind {
        let barriers: Vec<IntakeSignal> = event
            .paths
            .iter()
            .filter_map(|path| barrier_number(path.file_name()?.to_str()?))
            .map(IntakeSignal::Barrier)
            .collect();
        if !barriers.is_empty() {
            return barriers;
        }
    }
    // A name that is not UTF-8 cannot travel as a signal; a rescan finds it and moves it
    // aside (see `list_incoming`).
    let completes = matches!(
        event.kind,
        EventKind::Create(_)
            | EventKind::Access(AccessKind::Close(AccessMode::Write))
            | EventKind::Modify(ModifyKind::Name(RenameMode::To))
    );
    if completes
        && event
            .paths
            .iter()
            .any(|path| path.file_name().is_some_and(|name| name.to_str().is_none()))
    {
        return vec![IntakeSignal::Rescan];
    }
    let name_of = |path: &PathBuf| {
        path.file_name()
            .and_then(|name| name.to_str())
            .filter(|name| spool::is_candidate_name(name))
            .map(str::to_string)
    };
    match event.kind {
        // A directory, symlink, FIFO, socket or device node is complete the moment it exists
        // (nobody will close it after writing), so it is judged at once: moved to rejected/
        // with a word on what it is. `lstat` never follows the entry nor opens it.
        EventKind::Create(CreateKind::Folder) => event
            .paths
            .iter()
            .filter_map(name_of)
            .map(IntakeSignal::Ready)
            .collect(),
        EventKind::Create(_) => event
            .paths
            .iter()
            .filter_map(|path| {
                let name = name_of(path)?;
                match std::fs::symlink_metadata(path) {
                    Ok(meta) if !meta.file_type().is_file() => Some(IntakeSignal::Ready(name)),
                    _ => Some(IntakeSignal::Writing(name)),
                }
            })
            .collect(),
        EventKind::Modify(ModifyKind::Data(_)) => event
            .paths
            .iter()
            .filter_map(name_of)
            .map(IntakeSignal::Writing)
            .collect(),
        EventKind::Access(AccessKind::Close(AccessMode::Write))
        | EventKind::Modify(ModifyKind::Name(RenameMode::To)) => event
            .paths
            .iter()
            .filter_map(name_of)
            .map(IntakeSignal::Ready)
            .collect(),
        _ => Vec::new(),
    }
}

/// The number in a barrier marker's name, if `name` is one.
fn barrier_number(name: &str) -> Option<u64> {
    name.strip_prefix(BARRIER_PREFIX)?.parse().ok()
}

/// Lists `incoming/` and then waits until the watcher has delivered every event from before the
/// listing, absorbing them. Returns the names to take: the listed ones not being written.
async fn rescan(
    layout: &Layout,
    signals: &mut mpsc::UnboundedReceiver<IntakeSignal>,
    barrier_seq: &mut u64,
    being_written: &mut HashSet<String>,
    pending: &mut BTreeSet<String>,
    rescan_again: &mut bool,
) -> Vec<String> {
    let listing_layout = layout.clone();
    let names = match tokio::task::spawn_blocking(move || list_incoming(&listing_layout)).await {
        Ok(Ok(names)) => names,
        Ok(Err(err)) => {
            warn!(error = %err, "cannot list incoming/");
            return Vec::new();
        }
        Err(err) => {
            warn!(error = %err, "rescan task failed");
            return Vec::new();
        }
    };
    *barrier_seq += 1;
    let number = *barrier_seq;
    let marker = layout.incoming.join(format!("{BARRIER_PREFIX}{number}"));
    let created = std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .open(&marker);
    match created {
        Ok(file) => {
            drop(file);
            // Removed however the wait ends, also when the daemon stops mid-listing and this
            // future is dropped: a graceful stop leaves nothing of ours in the user's folder.
            let _marker = MarkerFile(marker.clone());
            let deadline = tokio::time::Instant::now() + BARRIER_WAIT;
            loop {
                match tokio::time::timeout_at(deadline, signals.recv()).await {
                    Ok(Some(IntakeSignal::Barrier(seen))) if seen == number => break,
                    Ok(Some(IntakeSignal::Barrier(_))) => {}
                    Ok(Some(signal)) => absorb(signal, being_written, pending, rescan_again),
                    Ok(None) => break,
                    Err(_) => {
                        warn!(
                            marker = %marker.display(),
                            "the file watcher did not report the listing's marker in time; \
                             files being written in place may be read early"
                        );
                        break;
                    }
                }
            }
        }
        Err(err) => warn!(
            marker = %marker.display(),
            error = %err,
            "cannot create the listing marker; files being written in place may be read early"
        ),
    }
    names
        .into_iter()
        .filter(|name| !being_written.contains(name))
        .collect()
}

/// A listing's marker file, removed when dropped.
struct MarkerFile(PathBuf);

impl Drop for MarkerFile {
    fn drop(&mut self) {
        if let Err(err) = std::fs::remove_file(&self.0) {
            warn!(marker = %self.0.display(), error = %err, "cannot remove the listing marker");
        }
    }
}

/// Names of the complete-looking files now in `incoming/`, oldest name first.
pub fn list_incoming(layout: &Layout) -> std::io::Result<Vec<String>> {
    let mut names = Vec::new();
    for entry in std::fs::read_dir(&layout.incoming)? {
        let entry = entry?;
        let Ok(name) = entry.file_name().into_string() else {
            // A name that is not UTF-8 cannot be carried through intake (nor shown as it is);
            // move it aside under a readable name so it does not sit there forever.
            reject_unreadable_name(layout, &entry.file_name());
            continue;
        };
        // Directories, symlinks, FIFOs and the like are listed too: intake moves them to
        // rejected/ with an explanation instead of leaving them unanswered.
        if barrier_number(&name).is_some() {
            // A marker left by a daemon that died mid-listing.
            let _ = std::fs::remove_file(entry.path());
            continue;
        }
        if !spool::is_candidate_name(&name) {
            continue;
        }
        names.push(name);
    }
    names.sort();
    Ok(names)
}

/// The intake task: waits for signals, batches them and processes each batch off the runtime.
pub async fn run(
    context: Arc<IntakeContext>,
    mut signals: mpsc::UnboundedReceiver<IntakeSignal>,
    accepted: mpsc::UnboundedSender<JobId>,
    mut shutdown: watch::Receiver<bool>,
) {
    let mut being_written: HashSet<String> = HashSet::new();
    // Startup: everything already in incoming/ counts as dropped while we were down.
    let mut pending: BTreeSet<String> = BTreeSet::new();
    let mut rescan = true;
    let mut barrier_seq = 0u64;
    loop {
        if rescan {
            // Events already queued go first. A queued Rescan is the one about to happen.
            while let Ok(signal) = signals.try_recv() {
                absorb(signal, &mut being_written, &mut pending, &mut rescan);
            }
            rescan = false;
            // The listing then waits for the watcher to catch up with it, so a file announced
            // as being written (by a creation event still on its way, e.g. during start-up) is
            // not taken for complete.
            let names = self::rescan(
                &context.layout,
                &mut signals,
                &mut barrier_seq,
                &mut being_written,
                &mut pending,
                &mut rescan,
            )
            .await;
            pending.extend(names);
        }
        while !pending.is_empty() {
            let batch: Vec<String> = {
                let take: Vec<String> = pending.iter().take(BATCH_LIMIT).cloned().collect();
                for name in &take {
                    pending.remove(name);
                }
                take
            };
            let ctx = Arc::clone(&context);
            match tokio::task::spawn_blocking(move || process_batch(&ctx, batch)).await {
                Ok(outcome) => {
                    for id in outcome.accepted {
                        let _ = accepted.send(id);
                    }
                }
                Err(err) => {
                    warn!(error = %err, "intake batch panicked; its files stay claimed and are retried at restart")
                }
            }
            // Pick up whatever arrived meanwhile before the next batch, so `Writing` marks
            // are seen before a rescan could pick up a half-written file.
            while let Ok(signal) = signals.try_recv() {
                absorb(signal, &mut being_written, &mut pending, &mut rescan);
            }
            if rescan {
                break;
            }
        }
        if rescan {
            continue;
        }
        tokio::select! {
            _ = shutdown.changed() => break,
            signal = signals.recv() => {
                let Some(signal) = signal else { break };
                absorb(signal, &mut being_written, &mut pending, &mut rescan);
                while let Ok(signal) = signals.try_recv() {
                    absorb(signal, &mut being_written, &mut pending, &mut rescan);
                }
            }
        }
        if *shutdown.borrow() {
            break;
        }
    }
    debug!("intake stopped");
}

fn absorb(
    signal: IntakeSignal,
    being_written: &mut HashSet<String>,
    pending: &mut BTreeSet<String>,
    rescan: &mut bool,
) {
    match signal {
        IntakeSignal::Writing(name) => {
            pending.remove(&name);
            being_written.insert(name);
        }
        IntakeSignal::Ready(name) => {
            being_written.remove(&name);
            pending.insert(name);
        }
        IntakeSignal::Rescan => *rescan = true,
        // A late marker of an earlier listing: nothing is waiting for it.
        IntakeSignal::Barrier(_) => {}
    }
}

/// Claims, validates and files a batch of names from `incoming/`, durably.
pub fn process_batch(context: &IntakeContext, names: Vec<String>) -> BatchOutcome {
    let mut claims = Vec::with_capacity(names.len());
    for name in names {
        let id = JobId::generate();
        let from = context.layout.incoming.join(&name);
        let to = context.layout.claim_path(&id.to_string(), &name);
        match std::fs::rename(&from, &to) {
            Ok(()) => claims.push((id, name)),
            // Already taken by an earlier batch (a rescan and an event can both name a file).
            Err(err) if err.kind() == std::io::ErrorKind::NotFound => {}
            Err(err) => warn!(file = %shown(&from), error = %err, "cannot claim job file"),
        }
    }
    process_claims(context, claims)
}

/// Finishes claims already in `processing/` (new ones, or ones left by a crash).
pub fn process_claims(context: &IntakeContext, claims: Vec<(JobId, String)>) -> BatchOutcome {
    let layout = &context.layout;
    let mut outcome = BatchOutcome::default();
    let mut staged: Vec<(Staged, String, PathBuf)> = Vec::new();
    if claims.is_empty() {
        return outcome;
    }
    let mut outputs = context
        .outputs
        .lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner);
    let outputs = outputs.get_or_insert_with(|| ActiveOutputs::load(layout));
    for (id, name) in claims {
        let claim = layout.claim_path(&id.to_string(), &name);
        let shown_path = layout.incoming.join(&name);
        match accept_one(context, outputs, &id, &name, &claim, &shown_path) {
            Ok(filed) => staged.push((filed, name, claim)),
            Err(report) => {
                reject(layout, &id, &name, &claim, &report);
                outcome.rejected.push(name);
            }
        }
    }
    if staged.is_empty() {
        return outcome;
    }
    // One flush for the whole batch, then make the jobs visible, then sync the renames.
    for dir in [&layout.state_dir, &layout.processing] {
        if let Err(err) = spool::sync_filesystem(dir) {
            warn!(dir = %dir.display(), error = %err, "syncfs failed");
        }
    }
    let mut published_claims = Vec::with_capacity(staged.len());
    for (filed, name, claim) in staged {
        if let Some(mut record) = filed.batch {
            // The commit point of a batch: from here on its jobs are filed, even across a
            // crash (see `recover`).
            record.jobs = filed.ids.clone();
            if let Err(err) = crate::batches::save(&layout.state_dir, &record) {
                warn!(batch = %record.id, error = %err, "cannot write the batch record; refusing the batch");
                for id in &filed.ids {
                    let _ = std::fs::remove_dir_all(layout.staging_dir(id.as_str()));
                }
                let report = format!(
                    "error: cannot file batch {}: cannot write its record: {err}",
                    layout.incoming.join(&name).display()
                );
                reject(layout, &record.id, &name, &claim, &report);
                outcome.rejected.push(name);
                continue;
            }
            info!(batch = %record.id, jobs = record.jobs.len(), file = %jobs::escape_text(&name), "batch filed");
        }
        let mut published = true;
        for id in filed.ids {
            let id_text = id.to_string();
            let staging = layout.staging_dir(&id_text);
            let final_dir = layout.job_dir(&id_text);
            if let Err(err) = std::fs::rename(&staging, &final_dir) {
                warn!(job = %id_text, error = %err, "cannot publish job directory; it will be retried at restart");
                published = false;
                continue;
            }
            info!(job = %id_text, file = %jobs::escape_text(&name), "job queued");
            outcome.accepted.push(id);
        }
        if published {
            published_claims.push(claim);
        }
    }
    if let Err(err) = jobs::state::fsync_dir(&layout.jobs) {
        warn!(error = %err, "cannot sync the jobs directory");
    }
    // The jobs are durable; their claims are no longer needed. A crash before this loop leaves
    // claims whose jobs exist, which the next start drops.
    for claim in published_claims {
        if let Err(err) = std::fs::remove_file(&claim) {
            warn!(file = %shown(&claim), error = %err, "cannot remove finished claim");
        }
    }
    outcome
}

/// A path as it may appear in a log line: user-chosen file names escaped.
fn shown(path: &Path) -> String {
    jobs::escape_text(&path.display().to_string()).into_owned()
}

/// What a spool entry that is not a regular file is, in words, and what to do instead; `None`
/// for a regular file.
fn odd_entry_kind(file_type: &std::fs::FileType) -> Option<(&'static str, &'static str)> {
    use std::os::unix::fs::FileTypeExt;
    const COPY: &str =
        "copy the job file itself into the spool (or use `reelspool submit FILE`); intake reads regular files only";
    if file_type.is_file() {
        None
    } else if file_type.is_symlink() {
        Some((
            "a symbolic link",
            "copy the job file into the spool instead of linking it; links are never followed",
        ))
    } else if file_type.is_dir() {
        Some((
            "a directory",
            "drop the job files one by one; intake does not look inside directories",
        ))
    } else if file_type.is_fifo() {
        Some(("a named pipe (FIFO)", "write the job to a regular file in spool/tmp/ and rename it into incoming/; pipes are never opened"))
    } else if file_type.is_socket() {
        Some(("a socket", COPY))
    } else if file_type.is_block_device() {
        Some(("a block device", COPY))
    } else if file_type.is_char_device() {
        Some(("a character device", COPY))
    } else {
        Some(("not a regular file", COPY))
    }
}

/// The rejection text for an entry that is not a regular file.
fn odd_entry_report(claim: &Path, shown_path: &Path, kind: &str, help: &str) -> String {
    let mut text = format!("error: {} is {kind}, not a job file", shown_path.display());
    if kind == "a symbolic link" {
        if let Ok(target) = std::fs::read_link(claim) {
            text.push_str(&format!(" (it points to {})", target.display()));
        }
    }
    text.push_str(&format!(
        "\n  = note: it was moved here as it is, never opened nor followed\n  = help: {help}"
    ));
    text
}

/// Reads a claimed file without following symlinks and without blocking on FIFOs or devices:
/// the entry is looked at with `lstat` first, and only a regular file is opened (with
/// `O_NOFOLLOW | O_NONBLOCK`, in case it was swapped meanwhile).
fn read_claim(claim: &Path, shown_path: &Path) -> Result<Vec<u8>, String> {
    let entry = std::fs::symlink_metadata(claim)
        .map_err(|err| format!("error: cannot read {}: {err}", shown_path.display()))?;
    if let Some((kind, help)) = odd_entry_kind(&entry.file_type()) {
        return Err(odd_entry_report(claim, shown_path, kind, help));
    }
    let file = std::fs::OpenOptions::new()
        .read(true)
        .custom_flags(libc::O_NOFOLLOW | libc::O_NONBLOCK)
        .open(claim)
        .map_err(|err| {
            if err.raw_os_error() == Some(libc::ELOOP) {
                let (kind, help) = odd_entry_kind(&entry.file_type()).unwrap_or((
                    "a symbolic link",
                    "copy the job file into the spool instead of linking it",
                ));
                odd_entry_report(claim, shown_path, kind, help)
            } else {
                format!("error: cannot read {}: {err}", shown_path.display())
            }
        })?;
    let metadata = file
        .metadata()
        .map_err(|err| format!("error: cannot read {}: {err}", shown_path.display()))?;
    if let Some((kind, help)) = odd_entry_kind(&metadata.file_type()) {
        return Err(odd_entry_report(claim, shown_path, kind, help));
    }
    if metadata.len() > jobs::MAX_JOB_FILE_BYTES {
        return Err(format!(
            "error: {} is {} bytes; job files may be at most {} bytes\n  = help: a job file only names its inputs; keep media in separate files",
            shown_path.display(),
            metadata.len(),
            jobs::MAX_JOB_FILE_BYTES
        ));
    }
    let mut bytes = Vec::with_capacity(metadata.len() as usize);
    file.take(jobs::MAX_JOB_FILE_BYTES + 1)
        .read_to_end(&mut bytes)
        .map_err(|err| format!("error: cannot read {}: {err}", shown_path.display()))?;
    Ok(bytes)
}

/// The output paths of the jobs that are queued or running, so that a second job cannot be
/// accepted for the same file. Read from the state directory once; every job intake accepts
/// is added. A job only ever moves on to done, failed or cancelled, so an entry can only go
/// stale one way: a hit is checked against that job's state before it counts.
pub struct ActiveOutputs {
    layout: Layout,
    by_path: std::collections::HashMap<PathBuf, String>,
}

impl ActiveOutputs {
    /// The output paths of unfinished jobs: from the queue index where it knows the job, from
    /// the job's own state otherwise (all of them when there is no usable index), so a long
    /// queue costs one read of the index, not one file per job.
    fn load(layout: &Layout) -> ActiveOutputs {
        let mut by_path = std::collections::HashMap::new();
        let index = layout.state_dir.join(jobs::index::INDEX_FILE);
        match jobs::index::reconcile_names(&index, &layout.jobs) {
            Ok(reconciled) => {
                for entry in reconciled.entries.into_values() {
                    if entry.phase.is_terminal() {
                        continue;
                    }
                    if let Some(output) = entry.output {
                        by_path.insert(output, entry.id.to_string());
                    }
                }
                for id in reconciled.unread {
                    let dir = jobs::state::JobDir::new(layout.job_dir(id.as_str()));
                    let Ok(job) = dir.load_state() else { continue };
                    if job.phase.is_terminal() {
                        continue;
                    }
                    if let Some(output) = job.output {
                        by_path.insert(output, job.id.to_string());
                    }
                }
            }
            Err(err) => warn!(error = %err, "cannot list jobs to check output paths"),
        }
        ActiveOutputs {
            layout: layout.clone(),
            by_path,
        }
    }

    /// The queued or running job that writes `output`, if any.
    fn holder(&mut self, output: &Path) -> Option<String> {
        let id = self.by_path.get(output)?.clone();
        // A job accepted earlier in this batch is still in its staging directory.
        let active = [self.layout.job_dir(&id), self.layout.staging_dir(&id)]
            .into_iter()
            .find_map(|dir| JobDir::new(dir).load_state().ok())
            .is_some_and(|state| {
                !state.phase.is_terminal() && state.output.as_deref() == Some(output)
            });
        if active {
            Some(id)
        } else {
            self.by_path.remove(output);
            None
        }
    }

    /// Refuses `spec` if a queued or running job writes the same file, or if a file is already
    /// there and the job does not say `output.overwrite: true`.
    fn check(&mut self, spec: &JobSpec, shown_path: &Path) -> Result<(), String> {
        let output = &spec.output.path;
        if let Some(other) = self.holder(output) {
            return Err(format!(
                "error: output.path {} is already the output of job {other}, which is queued or running\n  --> {}\n  = help: give this job another output.path, or cancel job {other} first (`reelspool cancel {other}`)",
                output.display(),
                shown_path.display()
            ));
        }
        if spec.output.overwrite {
            return Ok(());
        }
        match std::fs::symlink_metadata(output) {
            Ok(meta) => Err(format!(
                "error: output.path {} already exists ({}) and would be replaced\n  --> {}\n  = help: move the existing file away, choose another output.path, or add `overwrite: true` under `output:` to replace it",
                output.display(),
                if meta.is_dir() { "a directory" } else { "a file" },
                shown_path.display()
            )),
            Err(err) if err.kind() == std::io::ErrorKind::NotFound => Ok(()),
            Err(err) => Err(format!(
                "error: cannot check output.path {}: {err}\n  --> {}",
                output.display(),
                shown_path.display()
            )),
        }
    }

    fn add(&mut self, spec: &JobSpec, id: &JobId) {
        self.by_path
            .insert(spec.output.path.clone(), id.to_string());
    }
}

/// What one claim became: the jobs staged for it (one, or one per row of a batch file) and,
/// for a batch, its record, written before the jobs are published.
struct Staged {
    ids: Vec<JobId>,
    batch: Option<crate::batches::BatchRecord>,
}

/// Validates one claimed file and assembles its job directories under staging names.
fn accept_one(
    context: &IntakeContext,
    outputs: &mut ActiveOutputs,
    id: &JobId,
    name: &str,
    claim: &Path,
    shown_path: &Path,
) -> Result<Staged, String> {
    let bytes = read_claim(claim, shown_path)?;
    // An outsider's file is refused whatever it holds.
    let owner = crate::owner::owner_of(&context.owners, claim, shown_path)?;
    let (default_name, roots) = parse_inputs(context, name);
    let parse_context = jobs::ParseContext {
        templates_dir: Some(&context.templates_dir),
        roots: &roots,
    };
    if std::str::from_utf8(&bytes).is_ok_and(jobs::is_batch) {
        return accept_batch(
            context,
            outputs,
            id,
            name,
            &bytes,
            &default_name,
            &parse_context,
            owner,
            shown_path,
        );
    }
    let spec = jobs::parse_job_bytes(
        &shown_path.display().to_string(),
        &bytes,
        &default_name,
        &parse_context,
    )
    .map_err(|err| err.to_string())?;
    let (spec, engine, admitted, job_roots) =
        check_spec(context, outputs, spec, &owner, shown_path)?;
    let id_text = id.to_string();
    let staging = context.layout.staging_dir(&id_text);
    stage_job(
        &staging, id, name, &bytes, &spec, &admitted, owner, None, job_roots,
    )
    .and_then(|()| crate::engines::write_resolved(&staging, engine.as_ref()))
    .map_err(|err| format!("error: cannot file job {}: {err}", shown_path.display()))?;
    outputs.add(&spec, id);
    Ok(Staged {
        ids: vec![id.clone()],
        batch: None,
    })
}

/// What parsing a job file named `name` needs beside its bytes: the job name its file name
/// gives, and the allowed roots as they are now.
fn parse_inputs(context: &IntakeContext, name: &str) -> (String, jobs::Roots) {
    let default_name = Path::new(name)
        .file_stem()
        .and_then(|stem| stem.to_str())
        .unwrap_or(name)
        .to_string();
    let roots = context
        .roots
        .read()
        .unwrap_or_else(std::sync::PoisonError::into_inner)
        .clone();
    (default_name, roots)
}

/// A batch file: every row checked and staged as a job of its own, or none. The claim's id
/// becomes the batch's id.
#[allow(clippy::too_many_arguments)]
fn accept_batch(
    context: &IntakeContext,
    outputs: &mut ActiveOutputs,
    id: &JobId,
    name: &str,
    bytes: &[u8],
    default_name: &str,
    parse_context: &jobs::ParseContext,
    owner: jobs::access::Person,
    shown_path: &Path,
) -> Result<Staged, String> {
    let batch = jobs::parse_batch_bytes(
        &shown_path.display().to_string(),
        bytes,
        default_name,
        parse_context,
    )
    .map_err(|err| err.to_string())?;
    if let Some(csv) = &batch.csv {
        jobs::access::check_read(&owner, csv)
            .map_err(|err| format!("error: {}: batch.csv: {err}", shown_path.display()))?;
    }
    let rows = batch.rows.len();
    let mut staged: Vec<JobId> = Vec::with_capacity(rows);
    let mut filed = || -> Result<(), String> {
        for (index, spec) in batch.rows.iter().enumerate() {
            let row_id = JobId::generate();
            let at = PathBuf::from(format!("{}, row {}", shown_path.display(), index + 1));
            let (spec, engine, admitted, job_roots) =
                check_spec(context, outputs, spec.clone(), &owner, &at)?;
            let staging = context.layout.staging_dir(row_id.as_str());
            staged.push(row_id.clone());
            stage_job(
                &staging,
                &row_id,
                name,
                bytes,
                &spec,
                &admitted,
                owner.clone(),
                Some(id),
                job_roots,
            )
            .and_then(|()| crate::engines::write_resolved(&staging, engine.as_ref()))
            .map_err(|err| format!("error: cannot file job {}: {err}", at.display()))?;
            outputs.add(&spec, &row_id);
        }
        Ok(())
    };
    if let Err(report) = filed() {
        for row_id in &staged {
            let _ = std::fs::remove_dir_all(context.layout.staging_dir(row_id.as_str()));
        }
        return Err(format!(
            "{report}\n  = note: the batch was refused whole: none of its {rows} rows was filed"
        ));
    }
    Ok(Staged {
        ids: staged,
        batch: Some(crate::batches::BatchRecord {
            id: id.clone(),
            name: batch.name,
            source_file: name.to_string(),
            submitted_at_ms: now_ms(),
            jobs: Vec::new(),
            csv: batch.csv,
            notify_each: batch.notify_each,
            ended_at_ms: None,
        }),
    })
}

/// Checks `bytes` (a job or batch file named `file`) as intake would for `owner`, against
/// this farm's roots, engines, cards and queue, and files nothing: `reelspool validate` and
/// `submit` ask this through the control socket. The summary names the job or the batch.
pub fn check_only(
    context: &IntakeContext,
    owner: &jobs::access::Person,
    file: &str,
    bytes: &[u8],
) -> Result<String, String> {
    let shown_path = Path::new(file);
    let (default_name, roots) = parse_inputs(context, file);
    let parse_context = jobs::ParseContext {
        templates_dir: Some(&context.templates_dir),
        roots: &roots,
    };
    let mut outputs = context
        .outputs
        .lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner);
    let outputs = outputs.get_or_insert_with(|| ActiveOutputs::load(&context.layout));
    if std::str::from_utf8(bytes).is_ok_and(jobs::is_batch) {
        let batch = jobs::parse_batch_bytes(file, bytes, &default_name, &parse_context)
            .map_err(|err| err.to_string())?;
        for (index, spec) in batch.rows.iter().enumerate() {
            let at = PathBuf::from(format!("{file}, row {}", index + 1));
            check_spec(context, outputs, spec.clone(), owner, &at)?;
        }
        return Ok(format!(
            "batch `{}` of {} jobs",
            batch.name,
            batch.rows.len()
        ));
    }
    let spec = jobs::parse_job_bytes(file, bytes, &default_name, &parse_context)
        .map_err(|err| err.to_string())?;
    let name = spec.name.clone();
    check_spec(context, outputs, spec, owner, shown_path)?;
    Ok(format!("job `{name}`"))
}

/// The checks a resolved job passes before it is filed: the owner's rights, its engine, a card
/// it fits, a free output path, its model, room for its checkpoints.
fn check_spec(
    context: &IntakeContext,
    outputs: &mut ActiveOutputs,
    spec: JobSpec,
    owner: &jobs::access::Person,
    shown_path: &Path,
) -> Result<
    (
        JobSpec,
        Option<render::engine::external::ResolvedEngine>,
        Admitted,
        jobs::reach::JobRoots,
    ),
    String,
> {
    crate::owner::check_paths(owner, &spec, shown_path)?;
    let job_roots = {
        let roots = context
            .roots
            .read()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        jobs::reach::JobRoots {
            image: jobs::reach::root_of(&spec.inputs.image, &roots.inputs),
            audio: jobs::reach::root_of(&spec.inputs.audio, &roots.inputs),
            output: jobs::reach::root_of(&spec.output.path, &roots.outputs),
        }
    };
    check_media(owner, &spec, &job_roots, shown_path)?;
    let (spec, engine) = crate::engines::resolve(
        &context
            .engines
            .read()
            .unwrap_or_else(std::sync::PoisonError::into_inner),
        spec,
    )
    .map_err(|refusal| format!("error: {}: {refusal}", shown_path.display()))?;
    let admitted = context
        .admission
        .admit_with_plan(&spec)
        .map_err(|refusal| format!("error: {}: {refusal}", shown_path.display()))?;
    outputs.check(&spec, shown_path)?;
    render::worker::check_native_model(&spec).map_err(|problem| {
        format!(
            "error: {}: {problem}\n  = help: change the render settings the message names, or \
             point engine.model at another model (README \"The native Live Avatar model\")",
            shown_path.display()
        )
    })?;
    context
        .admission
        .check_model(&spec)
        .map_err(|problem| format!("error: {}: {problem}", shown_path.display()))?;
    check_checkpoint_space(&spec, &context.layout.jobs, shown_path)?;
    Ok((spec, engine, admitted, job_roots))
}

/// Opens the image and the audio the way the worker will (from their allowed roots, without
/// following links, the owner's rights checked on the descriptors) and looks inside: the
/// image must decode (a truncated PNG is refused here, with where it ends) and the audio must
/// have a duration. A bad file is refused now, not after the job waited in the queue.
fn check_media(
    owner: &jobs::access::Person,
    spec: &JobSpec,
    roots: &jobs::reach::JobRoots,
    shown_path: &Path,
) -> Result<(), String> {
    let open = |key: &str, root: Option<&std::path::PathBuf>, path: &Path| {
        jobs::reach::open_input(key, Some(owner), root.map(|root| root.as_path()), path)
            .map_err(|err| format!("error: {}: {err}", shown_path.display()))
    };
    let fd_path = |file: &std::fs::File| {
        use std::os::fd::AsRawFd;
        std::path::PathBuf::from(format!("/proc/self/fd/{}", file.as_raw_fd()))
    };
    let named = |message: String, file: &std::fs::File, path: &Path| {
        message.replace(
            &fd_path(file).display().to_string(),
            &path.display().to_string(),
        )
    };
    let image = open("inputs.image", roots.image.as_ref(), &spec.inputs.image)?;
    render::media::check_image(&fd_path(&image)).map_err(|err| {
        format!(
            "error: {}: inputs.image: {}\n  = help: the image must be a whole picture file (PNG, JPEG, WebP, ...)",
            shown_path.display(),
            named(err.to_string(), &image, &spec.inputs.image)
        )
    })?;
    let audio = open("inputs.audio", roots.audio.as_ref(), &spec.inputs.audio)?;
    render::media::probe_audio_duration(&fd_path(&audio)).map_err(|err| {
        format!(
            "error: {}: inputs.audio: {}\n  = help: the audio must be a whole sound file (WAV, MP3, AAC, ...)",
            shown_path.display(),
            named(err.to_string(), &audio, &spec.inputs.audio)
        )
    })?;
    Ok(())
}

/// A native job's carry has a size known before it starts (`render::worker::carry_bytes`); the
/// job needs room for two (the newest checkpoint is kept until the next one is whole) where
/// its checkpoints go. Refused at intake rather than failing hours later. The words start like
/// the operating system's ENOSPC message, so the rejection reads as a full disk.
/// Set only by tests: the bytes intake's checkpoint space check takes as free.
pub const TEST_FREE_BYTES_ENV: &str = "REELSPOOL_TEST_ASSUME_FREE_BYTES";

fn check_checkpoint_space(
    spec: &JobSpec,
    jobs_dir: &Path,
    shown_path: &Path,
) -> Result<(), String> {
    let carry = match render::worker::carry_bytes(spec) {
        Ok(Some(carry)) => carry,
        Ok(None) => return Ok(()),
        Err(problem) => return Err(format!("error: {}: {problem}", shown_path.display())),
    };
    let needed = carry
        .saturating_mul(2)
        .saturating_add(render::checkpoint::CHECKPOINT_SLACK_BYTES);
    // A test hook: the free space intake assumes, so the tests of a 14B-shaped release (whose
    // checkpoints no test machine has room for, and which never runs) can submit its jobs.
    let assumed = std::env::var(TEST_FREE_BYTES_ENV)
        .ok()
        .and_then(|text| text.parse::<u64>().ok());
    let Some(free) = assumed.or_else(|| crate::space::free_bytes(jobs_dir)) else {
        return Ok(());
    };
    if free >= needed {
        return Ok(());
    }
    let enospc = std::io::Error::from_raw_os_error(libc::ENOSPC).to_string();
    let enospc = enospc.split(" (os error").next().unwrap_or_default();
    Err(format!(
        "error: {}: {enospc} for this job's checkpoints: two carries of {carry} bytes need \
         {needed} bytes in {}, which has {free} free\n  = help: free space there, or render a \
         smaller render.size or fewer render.infer_frames",
        shown_path.display(),
        jobs_dir.display()
    ))
}

#[allow(clippy::too_many_arguments)]
fn stage_job(
    staging: &Path,
    id: &JobId,
    name: &str,
    source: &[u8],
    spec: &JobSpec,
    admitted: &Admitted,
    owner: jobs::access::Person,
    batch: Option<&JobId>,
    roots: jobs::reach::JobRoots,
) -> std::io::Result<()> {
    if staging.exists() {
        std::fs::remove_dir_all(staging)?;
    }
    std::fs::create_dir_all(staging.join("work"))?;
    // Only the service (and root) may enter: owners read their job through the daemon.
    std::fs::set_permissions(staging, std::os::unix::fs::PermissionsExt::from_mode(0o700))?;
    std::fs::write(staging.join("source.yaml"), source)?;
    std::fs::write(staging.join("job.yaml"), spec.to_yaml())?;
    let submitted_at_ms = now_ms();
    let mut state = JobState::queued(id.clone(), spec, name, submitted_at_ms);
    state.output = Some(spec.output.path.clone());
    state.vram_estimate_bytes = admitted.vram_bytes;
    if let Some(memory) = &admitted.memory {
        state.details.insert(
            MEMORY_PLAN_KEY.into(),
            serde_json::to_value(memory).map_err(std::io::Error::other)?,
        );
    }
    state.owner = Some(owner);
    state.batch = batch.cloned();
    state.roots = Some(roots);
    let state_json = serde_json::to_vec_pretty(&state).map_err(std::io::Error::other)?;
    std::fs::write(staging.join("state.json"), state_json)?;
    let mut fields = serde_json::Map::new();
    fields.insert("source".into(), name.into());
    let event = JobEvent {
        ts_ms: submitted_at_ms,
        event: "queued".into(),
        fields,
    };
    let mut line = serde_json::to_vec(&event).map_err(std::io::Error::other)?;
    line.push(b'\n');
    std::fs::write(staging.join("events.jsonl"), line)?;
    // Keep JobDir's idea of the layout and ours in step.
    debug_assert_eq!(
        JobDir::new(staging.to_path_buf()).state_json(),
        staging.join("state.json")
    );
    Ok(())
}

/// Moves a claim to `rejected/` beside its `.error` file. The claim is renamed, whatever it
/// is (a symlink moves as the link, a directory with its contents), never opened. The report
/// may quote the user's file name and contents, so every line of it is escaped.
fn reject(layout: &Layout, id: &JobId, name: &str, claim: &Path, report: &str) {
    let mut target = layout.rejected.join(name);
    if std::fs::symlink_metadata(&target).is_ok() {
        target = layout.rejected.join(format!("{name}.{id}"));
    }
    let error_path = PathBuf::from(format!("{}.error", target.display()));
    let mut text = jobs::escape_lines(report.trim_end());
    text.push('\n');
    if let Err(err) = jobs::state::write_atomic(&error_path, text.as_bytes()) {
        warn!(file = %shown(&error_path), error = %err, "cannot write error file");
    }
    match std::fs::rename(claim, &target) {
        Ok(()) => info!(
            file = %jobs::escape_text(name),
            error_file = %shown(&error_path),
            "job file rejected"
        ),
        Err(err) => warn!(
            file = %shown(claim),
            error = %err,
            "cannot move rejected file"
        ),
    }
}

/// `name` with valid UTF-8 kept (control characters escaped) and every other byte as `\xNN`.
fn readable_name(name: &std::ffi::OsStr) -> String {
    use std::os::unix::ffi::OsStrExt;
    let mut out = String::new();
    for chunk in name.as_bytes().utf8_chunks() {
        out.push_str(&jobs::escape_text(chunk.valid()));
        for byte in chunk.invalid() {
            out.push_str(&format!("\\x{byte:02x}"));
        }
    }
    out
}

/// Moves an entry of `incoming/` whose name is not UTF-8 to `rejected/` under a readable name
/// (its odd bytes as `\xNN`), with an `.error` that says why.
fn reject_unreadable_name(layout: &Layout, name: &std::ffi::OsStr) {
    let readable = readable_name(name);
    if !spool::is_candidate_name(&readable) {
        return;
    }
    let mut target = layout.rejected.join(&readable);
    if std::fs::symlink_metadata(&target).is_ok() {
        target = layout
            .rejected
            .join(format!("{readable}.{}", JobId::generate()));
    }
    let error_path = PathBuf::from(format!("{}.error", target.display()));
    let text = format!(
        "error: the file name `{readable}` is not valid UTF-8 (its odd bytes are shown as \\xNN)\n  = note: it was moved here under that readable name, unopened\n  = help: give the job file a UTF-8 name and drop it into incoming/ again\n"
    );
    if let Err(err) = jobs::state::write_atomic(&error_path, text.as_bytes()) {
        warn!(file = %shown(&error_path), error = %err, "cannot write error file");
    }
    match std::fs::rename(layout.incoming.join(name), &target) {
        Ok(()) => info!(file = %readable, error_file = %shown(&error_path), "job file rejected"),
        Err(err) => {
            warn!(file = %readable, error = %err, "cannot move a file whose name is not UTF-8")
        }
    }
}

/// Cleans up after a crash: half-assembled job directories are removed, and claims are either
/// dropped (their job exists) or processed again under the id they already carry.
pub fn recover(context: &IntakeContext) -> std::io::Result<BatchOutcome> {
    let layout = &context.layout;
    // A batch whose record was written is filed: publish the jobs a crash left staged.
    for entry in std::fs::read_dir(&layout.processing)? {
        let file_name = entry?.file_name().to_string_lossy().into_owned();
        let Some((id_text, _)) = spool::parse_claim_name(&file_name) else {
            continue;
        };
        for member in crate::batches::members_to_publish(&layout.state_dir, id_text) {
            let staging = layout.staging_dir(member.as_str());
            if staging.is_dir() && !layout.job_dir(member.as_str()).exists() {
                std::fs::rename(&staging, layout.job_dir(member.as_str()))?;
                info!(job = %member, batch = id_text, "job of a filed batch published after a crash");
            }
        }
        if crate::batches::load(&layout.state_dir, id_text)
            .ok()
            .flatten()
            .is_some()
        {
            jobs::state::fsync_dir(&layout.jobs)?;
            std::fs::remove_file(layout.processing.join(&file_name))?;
        }
    }
    for entry in std::fs::read_dir(&layout.jobs)? {
        let entry = entry?;
        if entry.file_name().to_string_lossy().starts_with(".tmp-") {
            std::fs::remove_dir_all(entry.path())?;
        }
    }
    let mut unfinished = Vec::new();
    for entry in std::fs::read_dir(&layout.processing)? {
        let entry = entry?;
        let file_name = entry.file_name().to_string_lossy().into_owned();
        let Some((id_text, original)) = spool::parse_claim_name(&file_name) else {
            warn!(file = %jobs::escape_text(&file_name), "unexpected file in processing/; leaving it");
            continue;
        };
        if layout.job_dir(id_text).is_dir() {
            std::fs::remove_file(entry.path())?;
            continue;
        }
        match id_text.parse::<JobId>() {
            Ok(id) => unfinished.push((id, original.to_string())),
            Err(_) => {
                warn!(file = %jobs::escape_text(&file_name), "claim with a malformed id; leaving it")
            }
        }
    }
    if !unfinished.is_empty() {
        info!(
            count = unfinished.len(),
            "finishing job files claimed before a crash"
        );
    }
    Ok(process_claims(context, unfinished))
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Write;

    /// A file still open for writing must never be listed as complete, even when the listing
    /// runs right after its creation, before the watcher thread has passed the event on.
    #[test]
    fn a_listing_right_after_an_in_place_creation_leaves_the_file_alone() {
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_time()
            .build()
            .expect("runtime");
        let root = tempfile::tempdir().expect("tempdir");
        let layout = Layout::new(&root.path().join("spool"), &root.path().join("state"));
        layout.create().expect("layout");
        let (tx, mut rx) = mpsc::unbounded_channel();
        let _watcher = start_watcher(&layout.incoming, tx).expect("watcher");
        let mut seq = 0u64;
        let mut being_written = HashSet::new();
        let mut pending = BTreeSet::new();
        let mut again = false;
        for round in 0..50 {
            let name = format!("job-{round}.yaml");
            let mut file = std::fs::File::create(layout.incoming.join(&name)).expect("create");
            file.write_all(b"name: half").expect("write");
            let taken = runtime.block_on(rescan(
                &layout,
                &mut rx,
                &mut seq,
                &mut being_written,
                &mut pending,
                &mut again,
            ));
            assert!(
                !taken.contains(&name),
                "round {round}: {name} was taken while still open for writing"
            );
            assert!(being_written.contains(&name), "round {round}");
            drop(file);
            // Its close makes it complete; the next listing takes it.
            let taken = runtime.block_on(rescan(
                &layout,
                &mut rx,
                &mut seq,
                &mut being_written,
                &mut pending,
                &mut again,
            ));
            assert!(
                taken.contains(&name) || pending.contains(&name),
                "round {round}: {name} was not taken after its close"
            );
            std::fs::remove_file(layout.incoming.join(&name)).expect("remove");
            pending.clear();
        }
        // The markers are gone again.
        let left: Vec<_> = std::fs::read_dir(&layout.incoming)
            .expect("list")
            .filter_map(|entry| entry.ok())
            .map(|entry| entry.file_name())
            .collect();
        assert!(left.is_empty(), "left in incoming/: {left:?}");
    }

    #[tokio::test]
    async fn a_listing_stopped_while_it_waits_for_its_marker_removes_the_marker() {
        let root = tempfile::tempdir().expect("tempdir");
        let layout = Layout::new(&root.path().join("spool"), &root.path().join("state"));
        layout.create().expect("layout");
        std::fs::write(layout.incoming.join("a.yaml"), b"name: a").expect("job");
        // No watcher: the marker's event never comes, so the listing waits until it is dropped.
        let (_sender, mut signals) = mpsc::unbounded_channel();
        let (mut seq, mut being_written, mut pending, mut again) =
            (0u64, HashSet::new(), BTreeSet::new(), false);
        let marker = layout.incoming.join(format!("{BARRIER_PREFIX}1"));
        {
            let listing = rescan(
                &layout,
                &mut signals,
                &mut seq,
                &mut being_written,
                &mut pending,
                &mut again,
            );
            tokio::pin!(listing);
            let wait_for_marker = async {
                while !marker.exists() {
                    tokio::time::sleep(std::time::Duration::from_millis(5)).await;
                }
            };
            tokio::select! {
                names = &mut listing => panic!("the listing ended without its marker: {names:?}"),
                () = wait_for_marker => {}
            }
            assert!(marker.exists());
        }
        let left: Vec<_> = std::fs::read_dir(&layout.incoming)
            .expect("list")
            .filter_map(|entry| entry.ok())
            .map(|entry| entry.file_name())
            .collect();
        assert_eq!(left, vec![std::ffi::OsString::from("a.yaml")]);
    }

    #[test]
    fn a_marker_left_by_a_dead_daemon_is_removed_by_the_next_listing() {
        let root = tempfile::tempdir().expect("tempdir");
        let layout = Layout::new(&root.path().join("spool"), &root.path().join("state"));
        layout.create().expect("layout");
        let marker = layout.incoming.join(format!("{BARRIER_PREFIX}7"));
        std::fs::write(&marker, b"").expect("marker");
        std::fs::write(layout.incoming.join("a.yaml"), b"name: a").expect("job");
        let names = list_incoming(&layout).expect("list");
        assert_eq!(names, vec!["a.yaml".to_string()]);
        assert!(!marker.exists());
    }
}
