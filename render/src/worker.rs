//! The worker process: renders one job directory clip by clip.
//!
//! Order of work for clip *k* (DESIGN.md §5): denoise → decode → encode `work/clips/k.mkv`
//! (atomic); then, if *k* is a checkpoint clip (every `render.checkpoint_every` clips, and the
//! last), the carry is serialised into host memory and handed to a background thread
//! ([`cadence::CarryWriter`]) that writes `work/carry-k.safetensors` and `work/checkpoint.json`
//! while the next clips render. A SIGKILL at any point loses at most the clips since the newest
//! durable carry: on restart the checkpoint names the last clip whose carry is durable, and
//! rendering continues from that carry; segments already on disk for the clips rendered again
//! are kept when they come out byte-identical. Because every random draw is derived from the
//! job's seed and the clip index, the resumed video is identical to an uninterrupted one.
//!
//! The tests prove the "at any moment" part by making the worker SIGKILL itself at exact points
//! of this order ([`crash_point`], armed only by a test environment variable).
//!
//! Inputs are decoded before the model is loaded, so a corrupt image or audio file fails the job
//! before any GPU time is spent.

use std::io::Write;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use jobs::spec::{Codec, EngineKind, JobSpec, NumClip};
use jobs::state::JobDir;
use tracing::{info, warn};

use crate::checkpoint::{
    CarryIdentity, CarrySource, CheckpointStore, ResumePoint, SegmentRecord, StoredCarry,
};
use crate::engine::{self, Carry, ClipIndex, ClipLatents, Conditioning, EngineSettings};
use crate::media;
#[cfg(doc)]
use crate::protocol::WorkerCommand;
use crate::protocol::{self, CheckpointNote, FailureKind, WorkerMessage};
use cadence::{Cadence, CarryWriter, WriteOrder, WriteOutcome};

pub mod cadence;
mod command;
pub mod crash_point;

/// Checkpoints in a row that may fail for want of space before the worker stops: past this,
/// the job could not make its progress durable, so it waits for space instead (README
/// "Reliability").
const MAX_SKIPPED_CHECKPOINTS: u32 = 3;

/// How often a worker inside a long clip tells the daemon it is alive.
const HEARTBEAT_EVERY: Duration = Duration::from_secs(5);
/// How long a worker waits for a previous worker of the same job to let go of it.
const LOCK_WAIT: Duration = Duration::from_secs(120);

/// Why a job failed, with what the daemon needs to decide about retries.
#[derive(Debug)]
struct Failure {
    kind: FailureKind,
    message: String,
}

impl Failure {
    fn new(kind: FailureKind, message: impl Into<String>) -> Failure {
        Failure {
            kind,
            message: message.into(),
        }
    }
}

/// Writes protocol lines to stdout; shared with the heartbeat thread, so one line is never
/// interleaved with another.
#[derive(Clone)]
struct Reporter {
    out: Arc<Mutex<std::io::Stdout>>,
}

impl Reporter {
    fn send(&self, message: &WorkerMessage) {
        if let Ok(mut out) = self.out.lock() {
            let _ = writeln!(out, "{}", message.to_line());
            let _ = out.flush();
        }
    }
}

/// The stop flags of a worker process, with its signal handlers installed.
struct Flags {
    /// Ends the current job at its next checkpoint: SIGTERM, SIGINT or a `stop` command.
    stop: Arc<AtomicBool>,
    /// SIGTERM or SIGINT: the process itself is to end after the current job.
    terminate: Arc<AtomicBool>,
}

impl Flags {
    fn install() -> Flags {
        let flags = Flags {
            stop: Arc::new(AtomicBool::new(false)),
            terminate: Arc::new(AtomicBool::new(false)),
        };
        for signal in [libc_sigterm(), libc_sigint()] {
            for flag in [&flags.stop, &flags.terminate] {
                if let Err(err) = signal_hook::flag::register(signal, Arc::clone(flag)) {
                    warn!(error = %err, "cannot install the stop signal handler");
                }
            }
        }
        flags
    }
}

/// Runs the worker for `job_dir`; returns the process exit status (see [`protocol`]).
pub fn run(job_dir: &Path, model_cache_dir: &Path) -> i32 {
    engine::prepare_worker_process();
    let reporter = Reporter {
        out: Arc::new(Mutex::new(std::io::stdout())),
    };
    let flags = Flags::install();
    run_job(
        job_dir,
        model_cache_dir,
        &reporter,
        &flags.stop,
        &mut engine::ModelCache::default(),
    )
}

/// `reelspool worker <first-job-dir> --serve`: a warm worker. It renders its first job, then
/// reads [`WorkerCommand`]s from stdin and renders each job it is sent, keeping the model (and,
/// on a GPU, its compiled kernels) loaded between jobs. After each job it sends
/// [`WorkerMessage::JobEnded`] with the exit status a worker of one job would have had. It
/// exits when stdin closes, after SIGTERM (once the current job is checkpointed), or after
/// `idle_exit` without a job, which frees the card.
///
/// Each job's stderr lines are framed by [`protocol::LOG_JOB_BEGIN`] and
/// [`protocol::LOG_JOB_END`], so the daemon copies them into that job's log only.
pub fn serve(first_job: &Path, model_cache_dir: &Path, idle_exit: Duration) -> i32 {
    engine::prepare_worker_process();
    let reporter = Reporter {
        out: Arc::new(Mutex::new(std::io::stdout())),
    };
    let flags = Flags::install();
    let (jobs_tx, jobs_rx) = std::sync::mpsc::channel::<PathBuf>();
    let stop = Arc::clone(&flags.stop);
    std::thread::spawn(move || {
        use std::io::BufRead;
        for line in std::io::stdin().lock().lines() {
            let Ok(line) = line else { break };
            match protocol::WorkerCommand::from_line(&line) {
                Some(protocol::WorkerCommand::Run { job_dir }) => {
                    if jobs_tx.send(job_dir).is_err() {
                        break;
                    }
                }
                Some(protocol::WorkerCommand::Stop) => stop.store(true, Ordering::Relaxed),
                None => warn!(line = %line, "not a worker command; ignored"),
            }
        }
        // Dropping the sender ends the loop below once the current job is done.
    });
    let mut models = engine::ModelCache::default();
    let mut next = Some(first_job.to_path_buf());
    loop {
        let job_dir = match next.take() {
            Some(job_dir) => job_dir,
            None => match next_job(&jobs_rx, idle_exit, &flags.terminate) {
                Some(job_dir) => job_dir,
                None => return protocol::EXIT_OK,
            },
        };
        flags
            .stop
            .store(flags.terminate.load(Ordering::Relaxed), Ordering::Relaxed);
        eprintln!("{}{}", protocol::LOG_JOB_BEGIN, job_dir.display());
        let code = run_job(
            &job_dir,
            model_cache_dir,
            &reporter,
            &flags.stop,
            &mut models,
        );
        eprintln!("{}", protocol::LOG_JOB_END);
        reporter.send(&WorkerMessage::JobEnded {
            code,
            model: models.model().map(str::to_string),
        });
        if flags.terminate.load(Ordering::Relaxed) {
            return protocol::EXIT_OK;
        }
    }
}

/// Waits for the next job; `None` when the worker is to exit: stdin closed, SIGTERM, or no job
/// for `idle_exit`.
fn next_job(
    jobs: &std::sync::mpsc::Receiver<PathBuf>,
    idle_exit: Duration,
    terminate: &AtomicBool,
) -> Option<PathBuf> {
    use std::sync::mpsc::RecvTimeoutError;
    let deadline = Instant::now() + idle_exit;
    loop {
        if terminate.load(Ordering::Relaxed) {
            info!("asked to stop while idle; exiting");
            return None;
        }
        let left = deadline.saturating_duration_since(Instant::now());
        if left.is_zero() {
            info!(
                idle_secs = idle_exit.as_secs(),
                "no job for the idle limit; unloading and exiting"
            );
            return None;
        }
        // Short waits, so a SIGTERM while idle is seen at once.
        match jobs.recv_timeout(left.min(Duration::from_millis(200))) {
            Ok(job_dir) => return Some(job_dir),
            Err(RecvTimeoutError::Timeout) => {}
            Err(RecvTimeoutError::Disconnected) => return None,
        }
    }
}

/// Renders one job; returns the exit status a worker of this one job ends with.
fn run_job(
    job_dir: &Path,
    model_cache_dir: &Path,
    reporter: &Reporter,
    stop: &AtomicBool,
    models: &mut engine::ModelCache,
) -> i32 {
    let dir = JobDir::new(job_dir.to_path_buf());
    let _lock = match lock_job(&dir, stop) {
        Ok(lock) => lock,
        Err(message) => {
            reporter.send(&WorkerMessage::Error {
                kind: FailureKind::Io,
                message: message.clone(),
            });
            return protocol::EXIT_BUSY;
        }
    };
    let heartbeat_stop = Arc::new(AtomicBool::new(false));
    let heartbeat = spawn_heartbeat(reporter.clone(), Arc::clone(&heartbeat_stop));
    let result = render_job(&dir, model_cache_dir, reporter, stop, models);
    heartbeat_stop.store(true, Ordering::Relaxed);
    let _ = heartbeat.join();
    match result {
        Ok(message) => {
            reporter.send(&message);
            protocol::EXIT_OK
        }
        Err(failure) => {
            warn!(kind = ?failure.kind, "{}", failure.message);
            reporter.send(&WorkerMessage::Error {
                kind: failure.kind,
                message: failure.message,
            });
            match failure.kind {
                FailureKind::OutOfMemory => protocol::EXIT_OUT_OF_MEMORY,
                FailureKind::Input | FailureKind::Engine => protocol::EXIT_JOB_FAILED,
                FailureKind::Io => 1,
            }
        }
    }
}

fn libc_sigterm() -> i32 {
    signal_hook::consts::SIGTERM
}

fn libc_sigint() -> i32 {
    signal_hook::consts::SIGINT
}

/// Takes `work/worker.lock` so two workers never render the same job (for example an orphan of
/// a killed daemon next to the worker its successor starts).
fn lock_job(dir: &JobDir, stop: &AtomicBool) -> Result<std::fs::File, String> {
    use std::os::fd::AsRawFd;
    let work = dir.work_dir();
    std::fs::create_dir_all(&work)
        .map_err(|err| format!("cannot create {}: {err}", work.display()))?;
    let path = work.join("worker.lock");
    let file = std::fs::OpenOptions::new()
        .create(true)
        .truncate(false)
        .write(true)
        .open(&path)
        .map_err(|err| format!("cannot open {}: {err}", path.display()))?;
    let deadline = Instant::now() + LOCK_WAIT;
    loop {
        // SAFETY: flock only reads the descriptor, which `file` keeps open.
        let rc = unsafe { libc::flock(file.as_raw_fd(), libc::LOCK_EX | libc::LOCK_NB) };
        if rc == 0 {
            return Ok(file);
        }
        if Instant::now() >= deadline || stop.load(Ordering::Relaxed) {
            return Err(format!(
                "another worker still holds {}; not starting a second one",
                path.display()
            ));
        }
        std::thread::sleep(Duration::from_millis(50));
    }
}

fn spawn_heartbeat(reporter: Reporter, done: Arc<AtomicBool>) -> std::thread::JoinHandle<()> {
    std::thread::spawn(move || {
        let mut last = Instant::now();
        while !done.load(Ordering::Relaxed) {
            std::thread::sleep(Duration::from_millis(100));
            if last.elapsed() >= HEARTBEAT_EVERY {
                reporter.send(&WorkerMessage::Heartbeat);
                last = Instant::now();
            }
        }
    })
}

/// The clip plan of a job: how many clips, and how many frames the video has in all.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ClipPlan {
    pub clips: u32,
    pub frames_per_clip: u32,
    /// Frames clip 0 has fewer than the others (Live Avatar: 3, the tiny model: 0).
    pub first_clip_shortfall: u32,
    pub total_frames: u64,
}

impl ClipPlan {
    /// `auto`: enough clips to cover the audio at the output rate, the last one trimmed so the
    /// video ends with the speech. A count: exactly that many full clips.
    pub fn new(num_clip: NumClip, frames_per_clip: u32, fps: u32, audio: Duration) -> ClipPlan {
        let frames = (audio.as_secs_f64() * f64::from(fps)).round().max(1.0) as u64;
        ClipPlan::with_first_clip_shortfall(num_clip, frames_per_clip, 0, frames)
    }

    /// [`ClipPlan::new`] for an engine whose clip 0 has `shortfall` frames fewer than
    /// `frames_per_clip`, with the audio lasting `audio_frames` video frames.
    pub fn with_first_clip_shortfall(
        num_clip: NumClip,
        frames_per_clip: u32,
        shortfall: u32,
        audio_frames: u64,
    ) -> ClipPlan {
        let shortfall = shortfall.min(frames_per_clip.saturating_sub(1));
        let per_clip = u64::from(frames_per_clip.max(1));
        let (clips, total_frames) = match num_clip {
            NumClip::Count(clips) => (
                clips,
                (u64::from(clips) * per_clip).saturating_sub(u64::from(shortfall)),
            ),
            NumClip::Auto => {
                let frames = audio_frames.max(1);
                let clips = (frames + u64::from(shortfall)).div_ceil(per_clip);
                (u32::try_from(clips).unwrap_or(u32::MAX), frames)
            }
        };
        ClipPlan {
            clips,
            frames_per_clip,
            first_clip_shortfall: shortfall,
            total_frames,
        }
    }

    /// Frames the engine makes for clip `index`.
    fn clip_len(&self, index: u32) -> u64 {
        let full = u64::from(self.frames_per_clip);
        if index == 0 {
            full - u64::from(self.first_clip_shortfall)
        } else {
            full
        }
    }

    /// Frames of clip `index` that belong in the video.
    pub fn frames_in_clip(&self, index: u32) -> u32 {
        let start =
            (u64::from(index) * u64::from(self.frames_per_clip)).saturating_sub(if index == 0 {
                0
            } else {
                u64::from(self.first_clip_shortfall)
            });
        self.total_frames
            .saturating_sub(start)
            .min(self.clip_len(index)) as u32
    }
}

fn engine_settings(spec: &JobSpec) -> EngineSettings {
    EngineSettings {
        width: spec.render.size.width,
        height: spec.render.size.height,
        infer_frames: spec.render.infer_frames,
        sample_steps: spec.render.sample_steps,
        guide_scale: spec.render.guide_scale,
        seed: spec.render.seed,
        fps: spec.render.fps,
        model: spec.engine.model.clone(),
    }
}

fn encode_settings(spec: &JobSpec) -> media::EncodeSettings {
    let codec = match spec.output.codec {
        Codec::H264 => media::VideoCodec::H264,
        Codec::Hevc => media::VideoCodec::Hevc,
    };
    media::EncodeSettings::new(
        spec.render.size.width,
        spec.render.size.height,
        spec.render.fps,
        codec,
        spec.output.crf,
    )
}

/// The fingerprint that ties a checkpoint to its job: the render-relevant settings plus the
/// bytes of the inputs, so replacing the audio file restarts the render instead of splicing
/// two different speeches together.
fn job_fingerprint(spec: &JobSpec, image: &[u8], audio: &[u8]) -> String {
    use sha2::{Digest, Sha256};
    let mut hasher = Sha256::new();
    hasher.update(spec.render_fingerprint().as_bytes());
    hasher.update(Sha256::digest(image));
    hasher.update(Sha256::digest(audio));
    format!("{:x}", hasher.finalize())
}

/// What the job's carry depends on, for refusing a carry written with other settings.
fn carry_identity(spec: &JobSpec) -> CarryIdentity {
    CarryIdentity {
        model: spec.engine.model.clone(),
        width: spec.render.size.width,
        height: spec.render.size.height,
        seed: spec.render.seed,
        infer_frames: spec.render.infer_frames,
    }
}

/// Bytes one checkpoint's carry of `spec` takes on disk, known before the job starts; `None`
/// for command engines, whose carry is whatever the program leaves. An error when the model's
/// config cannot be read or does not take the job's settings (see [`check_native_model`]).
pub fn carry_bytes(spec: &JobSpec) -> Result<Option<u64>, String> {
    if spec.engine.kind != EngineKind::Native {
        return Ok(None);
    }
    engine::carry_bytes(&engine_settings(spec))
        .map(Some)
        .map_err(|err| err.to_string())
}

/// What intake can check of a native job's model without loading weights: a Live Avatar
/// release's config, and the job's settings against it. The message says what to change.
pub fn check_native_model(spec: &JobSpec) -> Result<(), String> {
    if spec.engine.kind != EngineKind::Native {
        return Ok(());
    }
    engine::check_model(&engine_settings(spec)).map_err(|err| match err {
        engine::EngineError::UnsupportedSettings { detail } => format!(
            "render: the Live Avatar release at engine.model `{}` cannot render these settings: {detail}",
            spec.engine.model
        ),
        other => format!(
            "engine.model `{}` is a Live Avatar release whose config cannot be used: {other}",
            spec.engine.model
        ),
    })
}

/// The checkpoint side of the clip loop: when to checkpoint, the writer thread, and what the
/// writes achieved.
struct Checkpoints {
    writer: CarryWriter,
    cadence: Cadence,
    /// The clip after the newest durable carry: where a crash now would resume.
    durable_next: u32,
    /// The clip after the newest carry handed to the writer (or durable).
    since: u32,
    /// Checkpoints in a row that failed for want of space.
    skipped_in_row: u32,
    /// The interval `auto` last reported.
    every_reported: Option<u32>,
    reporter: Reporter,
    /// Set when the carry is too big to copy into host memory: each checkpoint then streams
    /// it from the engine into its file on this thread (see [`cadence::carry_host_limit`]).
    direct: Option<DirectWrites>,
}

/// What a checkpoint written on the render thread needs (the writer thread holds the same).
struct DirectWrites {
    store: CheckpointStore,
    fingerprint: String,
    identity: Option<CarryIdentity>,
}

impl Checkpoints {
    /// A test kill point on the main thread: the writer finishes first, so the state on disk
    /// at the kill is the one the point names (see [`crash_point`]).
    fn kill_point(&mut self, point: &str, clip: u32) {
        if crash_point::is_armed(point, clip) {
            let _ = self.writer.wait();
        }
        crash_point::reached(point, clip);
    }

    /// Whether clip `index`, just rendered, is a checkpoint clip.
    fn due(&mut self, index: u32, last: bool) -> bool {
        let every = self.cadence.every();
        // Reported the first time and when it moves by more than a quarter, not on every
        // wobble of the measurements.
        let moved = self.every_reported.is_none_or(|reported| {
            f64::from(every.abs_diff(reported)) > 0.25 * f64::from(reported)
        });
        if self.cadence.is_auto() && moved {
            let speed = match self.cadence.write_bytes_per_sec() {
                Some(speed) => format!("{:.1} MB/s measured", speed / 1e6),
                None => format!(
                    "{:.1} MB/s assumed",
                    cadence::ASSUMED_WRITE_BYTES_PER_SEC / 1e6
                ),
            };
            let detail = format!(
                "checkpoint every {every} clips: carry of {} bytes, clips take {:.3} s, writes at {speed}",
                self.cadence.carry_bytes(),
                self.cadence.clip_secs().unwrap_or(0.0),
            );
            info!(clip = index, every, "{detail}");
            self.reporter.send(&WorkerMessage::Checkpoint {
                note: CheckpointNote::Cadence,
                clip: index,
                detail,
            });
            self.every_reported = Some(every);
        }
        last || index + 1 >= self.since.saturating_add(every)
    }

    /// Serialises `carry` (which continues into `index + 1`) and hands it to the writer.
    fn checkpoint(
        &mut self,
        index: u32,
        engine: &mut dyn engine::Engine,
        carry: &Carry,
        segments: &[SegmentRecord],
    ) -> Result<(), Failure> {
        if self.direct.is_some() {
            // One write at a time: the one in flight (none, unless the mode changed) first.
            if let Some(outcome) = self.writer.wait() {
                self.settle(outcome)?;
            }
        }
        if let Some(direct) = &self.direct {
            let started = Instant::now();
            let expected = self.cadence.carry_bytes();
            let mut write = |file: &mut std::fs::File| {
                engine.write_carry(carry, file).map_err(|err| match err {
                    engine::EngineError::CarryWrite { source } => source,
                    other => std::io::Error::other(other.to_string()),
                })
            };
            let result = direct.store.save_from(
                ClipIndex(index),
                CarrySource::Stream {
                    expected_bytes: expected,
                    write: &mut write,
                },
                &direct.fingerprint,
                direct.identity.as_ref(),
                segments[..=index as usize].to_vec(),
            );
            self.since = index + 1;
            return self.settle(WriteOutcome {
                clip: ClipIndex(index),
                bytes: expected,
                secs: started.elapsed().as_secs_f64(),
                result,
            });
        }
        let started = Instant::now();
        let carry_bytes = engine
            .carry_to_bytes(carry)
            .map_err(|err| Failure::new(FailureKind::Engine, err.to_string()))?;
        let order = WriteOrder {
            clip: ClipIndex(index),
            carry_bytes,
            segments: segments[..=index as usize].to_vec(),
            serialise_secs: started.elapsed().as_secs_f64(),
        };
        self.since = index + 1;
        if let Some(outcome) = self.writer.submit(order) {
            self.settle(outcome)?;
        }
        Ok(())
    }

    /// Takes in how a write ended. A full disk skips that checkpoint (the previous one stays,
    /// the next clip tries again) until [`MAX_SKIPPED_CHECKPOINTS`] in a row stop the job;
    /// any other failure fails the attempt, as a failed checkpoint always did.
    fn settle(&mut self, outcome: WriteOutcome) -> Result<(), Failure> {
        let clip = outcome.clip.0;
        match outcome.result {
            Ok(()) => {
                self.durable_next = self.durable_next.max(clip + 1);
                self.skipped_in_row = 0;
                self.cadence.carry_written(outcome.bytes, outcome.secs);
                Ok(())
            }
            Err(err) if err.is_out_of_space() => {
                self.skipped_in_row += 1;
                // Try again with the next clip's carry.
                self.since = self.durable_next;
                let detail = format!(
                    "{err} ({} in a row; a crash now resumes at clip {})",
                    self.skipped_in_row, self.durable_next
                );
                warn!(clip, "{detail}");
                self.reporter.send(&WorkerMessage::Checkpoint {
                    note: CheckpointNote::Skipped,
                    clip,
                    detail,
                });
                if self.skipped_in_row >= MAX_SKIPPED_CHECKPOINTS {
                    let enospc = std::io::Error::from_raw_os_error(libc::ENOSPC);
                    return Err(Failure::new(
                        FailureKind::Io,
                        format!(
                            "{enospc}: {} checkpoints in a row could not be written, so the job \
                             stops where its progress is durable (clip {}): {err}",
                            self.skipped_in_row, self.durable_next
                        ),
                    ));
                }
                Ok(())
            }
            Err(err) => Err(Failure::new(FailureKind::Io, err.to_string())),
        }
    }

    /// A stop before clip `index`: waits for the write in flight, then checkpoints the carry
    /// in memory if it is newer than the newest durable one, so nothing rendered is lost.
    /// Returns the clip a resume starts at.
    fn stop_at(
        &mut self,
        index: u32,
        engine: &mut dyn engine::Engine,
        carry: &Carry,
        segments: &[SegmentRecord],
    ) -> Result<u32, Failure> {
        if let Some(outcome) = self.writer.wait() {
            self.settle(outcome)?;
        }
        if index > self.durable_next {
            self.checkpoint(index - 1, engine, carry, segments)?;
            if let Some(outcome) = self.writer.wait() {
                self.settle(outcome)?;
            }
        }
        Ok(self.durable_next)
    }
}

fn segment_path(work: &Path, index: u32) -> PathBuf {
    work.join("clips").join(format!("{index}.mkv"))
}

fn latents_path(work: &Path, index: u32) -> PathBuf {
    work.join("latents").join(format!("{index}.safetensors"))
}

fn render_job(
    dir: &JobDir,
    model_cache_dir: &Path,
    reporter: &Reporter,
    stop: &AtomicBool,
    models: &mut engine::ModelCache,
) -> Result<WorkerMessage, Failure> {
    let spec = dir
        .load_spec()
        .map_err(|err| Failure::new(FailureKind::Input, format!("cannot read job.yaml: {err}")))?;
    let work = dir.work_dir();
    for sub in ["clips", "latents"] {
        std::fs::create_dir_all(work.join(sub)).map_err(|err| {
            Failure::new(
                FailureKind::Io,
                format!("cannot create {}: {err}", work.display()),
            )
        })?;
    }

    // The job acts with its owner's rights: check again, the files may have changed since
    // intake.
    let owner = dir.load_state().ok().and_then(|state| state.owner);
    if let Some(owner) = &owner {
        for path in [&spec.inputs.image, &spec.inputs.audio] {
            jobs::access::check_read(owner, path)
                .map_err(|err| Failure::new(FailureKind::Input, err.to_string()))?;
        }
    }

    // Inputs first: a bad file must fail before the model is loaded.
    let read = |path: &Path| {
        std::fs::read(path).map_err(|err| {
            Failure::new(
                FailureKind::Input,
                format!("cannot read {}: {err}", path.display()),
            )
        })
    };
    let image_bytes = read(&spec.inputs.image)?;
    let audio_bytes = read(&spec.inputs.audio)?;
    let (width, height) = (spec.render.size.width, spec.render.size.height);
    let reference_rgb = media::load_reference_image(&spec.inputs.image, width, height)
        .map_err(|err| Failure::new(FailureKind::Input, err.to_string()))?;
    let audio = media::load_audio(&spec.inputs.audio)
        .map_err(|err| Failure::new(FailureKind::Input, err.to_string()))?;
    let plan = ClipPlan::new(
        spec.render.num_clip,
        spec.render.infer_frames,
        spec.render.fps,
        audio.duration,
    );
    let fingerprint = job_fingerprint(&spec, &image_bytes, &audio_bytes);
    drop((image_bytes, audio_bytes));

    if spec.engine.kind == EngineKind::Command {
        let inputs = command::PreparedInputs {
            reference_rgb,
            audio_16k_mono: audio.samples_16k_mono,
        };
        if let Some(interrupted) =
            command::render_clips(dir, &spec, &plan, &fingerprint, inputs, reporter, stop)?
        {
            return Ok(interrupted);
        }
        if stop.load(Ordering::Relaxed) {
            return Ok(WorkerMessage::Interrupted {
                next_clip: plan.clips,
            });
        }
        return assemble(dir, &spec, &work, &plan, owner.as_ref());
    }

    let settings = engine_settings(&spec);
    let conditioning = Conditioning {
        reference_rgb,
        audio_16k_mono: audio.samples_16k_mono,
        prompt: spec.inputs.prompt.clone(),
    };
    let load_started = Instant::now();
    let (mut engine, model_loaded) = models
        .engine(&settings, conditioning, model_cache_dir)
        .map_err(|err| Failure::new(FailureKind::Engine, err.to_string()))?;
    if model_loaded {
        info!(model = %settings.model, secs = load_started.elapsed().as_secs_f64(), "model loaded");
    } else {
        info!(model = %settings.model, "model kept loaded from the previous job; nothing to load");
    }

    crash_point::arm(&work);
    let store = CheckpointStore::new(work.clone());
    let identity = carry_identity(&spec);
    let engine_failure =
        |err: engine::EngineError| Failure::new(FailureKind::Engine, err.to_string());
    let (mut carry, next_clip, fresh_reason, fell_back) = match store
        .resume_carry::<StoredCarry>(&fingerprint, Some(&identity))
        .map_err(|err| Failure::new(FailureKind::Io, err.to_string()))?
    {
        ResumePoint::Fresh { reason } => (
            engine.initial_carry().map_err(engine_failure)?,
            0,
            reason,
            None,
        ),
        ResumePoint::After {
            last_clip,
            carry,
            fell_back,
        } => match engine.carry_from_bytes(&carry.bytes) {
            Ok(carry) => (carry, last_clip.0 + 1, None, fell_back),
            // The checkpoint's own records agree with the job but the engine's do not (other
            // weights at the same path, a carry format of another version): retrying would
            // refuse it again, so the job starts over and says why.
            Err(
                refused @ (engine::EngineError::CarryMismatch { .. }
                | engine::EngineError::CarryFormat { .. }),
            ) => {
                warn!(reason = %refused, "the engine refused the stored carry; starting over");
                store
                    .start_over()
                    .map_err(|err| Failure::new(FailureKind::Io, err.to_string()))?;
                (
                    engine.initial_carry().map_err(engine_failure)?,
                    0,
                    Some(format!(
                        "checkpoint after clip {} refused by the engine: {refused}; starting from clip 0",
                        last_clip.0
                    )),
                    None,
                )
            }
            Err(other) => return Err(engine_failure(other)),
        },
    };
    // The engine knows best how long the video is and what its first clip holds.
    let plan = match engine.audio_video_frames() {
        Some(audio_frames) => ClipPlan::with_first_clip_shortfall(
            spec.render.num_clip,
            engine.frames_per_clip(),
            engine.first_clip_shortfall(),
            audio_frames,
        ),
        None => plan,
    };
    let online_decode = spec.render.online_decode || engine.decodes_online();
    let mut segments = if next_clip > 0 {
        store
            .current_segments()
            .map_err(|err| Failure::new(FailureKind::Io, err.to_string()))?
    } else {
        Vec::new()
    };
    info!(clips = plan.clips, next_clip, checkpoint_every = %spec.render.checkpoint_every, "rendering");
    let offload = std::env::var("REELSPOOL_OFFLOAD").is_ok_and(|value| value == "1");
    if offload {
        // The built-in model is small enough to stay resident; offload only changes where
        // a real model's weights live.
        info!("lease asks for weight offload; the native engine keeps its weights resident");
    }
    reporter.send(&WorkerMessage::Started {
        clips_total: plan.clips,
        next_clip,
        fresh_reason,
        device: std::env::var("CUDA_VISIBLE_DEVICES").ok(),
        offload,
        pid: Some(std::process::id()),
        model_loaded: Some(model_loaded),
    });
    if let Some(detail) = fell_back {
        reporter.send(&WorkerMessage::Checkpoint {
            note: CheckpointNote::Fallback,
            clip: next_clip.saturating_sub(1),
            detail,
        });
    }

    let encode = encode_settings(&spec);
    let mut kept_latents: Vec<(u32, ClipLatents)> = Vec::new();
    if !online_decode {
        for index in 0..next_clip {
            let path = latents_path(&work, index);
            let latents = std::fs::read(&path)
                .map_err(|err| err.to_string())
                .and_then(|bytes| {
                    ClipLatents::from_safetensors_bytes(&bytes).map_err(|err| err.to_string())
                })
                .map_err(|err| {
                    Failure::new(
                        FailureKind::Io,
                        format!("cannot reload {}: {err}", path.display()),
                    )
                })?;
            kept_latents.push((index, latents));
        }
    }
    let carry_size = engine::carry_bytes(&settings).map_err(engine_failure)?;
    let host_limit = cadence::carry_host_limit();
    let direct = (carry_size > host_limit).then(|| {
        info!(
            carry_bytes = carry_size,
            host_limit,
            "the carry is bigger than the host memory a checkpoint may take: each checkpoint \
             streams it from the engine into its file while rendering waits"
        );
        DirectWrites {
            store: store.clone(),
            fingerprint: fingerprint.clone(),
            identity: Some(identity.clone()),
        }
    });
    let mut checkpoints = Checkpoints {
        writer: CarryWriter::spawn(store.clone(), fingerprint.clone(), Some(identity)),
        cadence: Cadence::new(spec.render.checkpoint_every, carry_size),
        durable_next: next_clip,
        since: next_clip,
        skipped_in_row: 0,
        every_reported: None,
        reporter: reporter.clone(),
        direct,
    };
    for index in next_clip..plan.clips {
        if stop.load(Ordering::Relaxed) {
            let next_clip = checkpoints.stop_at(index, engine.as_mut(), &carry, &segments)?;
            return Ok(WorkerMessage::Interrupted { next_clip });
        }
        if let Some(outcome) = checkpoints.writer.poll() {
            checkpoints.settle(outcome)?;
        }
        let started = Instant::now();
        let (latents, next_carry) = engine
            .render_clip(ClipIndex(index), &carry)
            .map_err(|err| Failure::new(FailureKind::Engine, err.to_string()))?;
        checkpoints.kill_point("after_denoise", index);
        let durable = if online_decode {
            let frames = engine
                .decode(&latents)
                .map_err(|err| Failure::new(FailureKind::Engine, err.to_string()))?;
            drop(latents);
            let segment = segment_path(&work, index);
            // `mid_encode` fires inside the encoder: settle the writer first, as
            // `kill_point` does for the other points.
            if crash_point::is_armed("mid_encode", index) {
                let _ = checkpoints.writer.wait();
            }
            // A segment already there was written before a crash that lost its carry: this
            // clip is being rendered again, and must come out the same.
            if segment.exists() {
                write_segment_again(
                    index,
                    &segment,
                    &encode,
                    &frames.rgb,
                    plan.frames_in_clip(index),
                    reporter,
                )?;
            } else {
                write_segment(
                    index,
                    &segment,
                    &encode,
                    &frames.rgb,
                    plan.frames_in_clip(index),
                )?;
            }
            checkpoints.kill_point("after_segment", index);
            segment
        } else {
            // The original's behaviour: latents pile up in memory and are decoded at the end.
            // They also go to disk, so that a crash still costs one clip, not the job.
            let path = latents_path(&work, index);
            let bytes = latents
                .to_safetensors_bytes()
                .map_err(|err| Failure::new(FailureKind::Engine, err.to_string()))?;
            jobs::state::write_atomic(&path, &bytes).map_err(|err| {
                Failure::new(
                    FailureKind::Io,
                    format!("cannot write {}: {err}", path.display()),
                )
            })?;
            kept_latents.push((index, latents));
            path
        };
        segments.truncate(index as usize);
        segments.push(
            store
                .segment_record(ClipIndex(index), &durable)
                .map_err(|err| Failure::new(FailureKind::Io, err.to_string()))?,
        );
        carry = next_carry;
        let secs = started.elapsed().as_secs_f64();
        checkpoints.cadence.clip_rendered(secs);
        let last = index + 1 == plan.clips;
        if checkpoints.due(index, last) {
            checkpoints.checkpoint(index, engine.as_mut(), &carry, &segments)?;
        }
        checkpoints.kill_point("after_checkpoint", index);
        reporter.send(&WorkerMessage::ClipDone {
            index,
            frames: plan.frames_in_clip(index),
            secs,
        });
    }
    // The last clip's checkpoint: assembling needs no carry, but a crash from here on should
    // not render anything again.
    if let Some(outcome) = checkpoints.writer.wait() {
        checkpoints.settle(outcome)?;
    }
    drop(checkpoints);
    for (index, latents) in kept_latents {
        // Decoding a long job's latents can take far longer than the daemon waits after
        // SIGTERM; stop between clips, and the next start decodes them all again.
        if stop.load(Ordering::Relaxed) {
            return Ok(WorkerMessage::Interrupted {
                next_clip: plan.clips,
            });
        }
        let frames = engine
            .decode(&latents)
            .map_err(|err| Failure::new(FailureKind::Engine, err.to_string()))?;
        write_segment(
            index,
            &segment_path(&work, index),
            &encode,
            &frames.rgb,
            plan.frames_in_clip(index),
        )?;
        crash_point::reached("after_segment", index);
    }
    if stop.load(Ordering::Relaxed) {
        return Ok(WorkerMessage::Interrupted {
            next_clip: plan.clips,
        });
    }

    assemble(dir, &spec, &work, &plan, owner.as_ref())
}

/// Concatenates the segments, muxes the audio in and moves the video into place.
fn assemble(
    dir: &JobDir,
    spec: &JobSpec,
    work: &Path,
    plan: &ClipPlan,
    owner: Option<&jobs::access::Person>,
) -> Result<WorkerMessage, Failure> {
    crash_point::reached("before_assemble", plan.clips);
    let segments: Vec<PathBuf> = (0..plan.clips).map(|k| segment_path(work, k)).collect();
    if let Some(parent) = spec.output.path.parent() {
        std::fs::create_dir_all(parent).map_err(|err| {
            Failure::new(
                FailureKind::Io,
                format!("cannot create {}: {err}", parent.display()),
            )
        })?;
    }
    let assembly = media::AssemblePlan {
        total_frames: plan.total_frames,
        fps: spec.render.fps,
    };
    let keep = (!spec.output.overwrite).then(|| media::KeepExisting {
        fallback: fallback_output(&spec.output.path, dir.root()),
        record: work.join("placed-outputs"),
    });
    let (output, placed) = media::assemble_output_keeping(
        &segments,
        &spec.inputs.audio,
        &assembly,
        &spec.output.path,
        keep.as_ref(),
    )
    .map_err(|err| Failure::new(FailureKind::Io, err.to_string()))?;
    let kept_existing = (placed != spec.output.path).then(|| {
        warn!(
            wanted = %jobs::escape_text(&spec.output.path.display().to_string()),
            written = %jobs::escape_text(&placed.display().to_string()),
            "a file appeared at output.path while the job rendered; it was kept and the video written beside it"
        );
        spec.output.path.display().to_string()
    });
    if let Some(owner) = owner {
        // The service wrote the video; its owner must be able to read it (mode 0640 and an
        // ACL entry for them; see README "Several users").
        if let Err(err) = jobs::access::leave_readable_by(&placed, owner) {
            warn!(path = %jobs::escape_text(&placed.display().to_string()), error = %err, "cannot make the video readable by its owner");
        }
    }
    Ok(WorkerMessage::Finished {
        output: placed.display().to_string(),
        duration_secs: output.duration.as_secs_f64(),
        frames: output.frames,
        clips: plan.clips,
        kept_existing,
    })
}

/// Where the video goes when a file appeared at `output` meanwhile: `<name>.<job id>.<ext>`
/// in the same directory (the job id is the name of the job's directory).
fn fallback_output(output: &Path, job_dir: &Path) -> PathBuf {
    let id = job_dir
        .file_name()
        .map(|name| name.to_string_lossy().into_owned())
        .unwrap_or_else(|| "job".to_string());
    let stem = output
        .file_stem()
        .map(|stem| stem.to_string_lossy().into_owned())
        .unwrap_or_default();
    let ext = output
        .extension()
        .map(|ext| ext.to_string_lossy().into_owned())
        .unwrap_or_else(|| "mp4".to_string());
    output.with_file_name(format!("{stem}.{id}.{ext}"))
}

fn write_segment(
    clip: u32,
    path: &Path,
    settings: &media::EncodeSettings,
    frames: &[Vec<u8>],
    keep: u32,
) -> Result<(), Failure> {
    write_segment_as(
        clip,
        path,
        &path.with_extension("jpg"),
        settings,
        frames,
        keep,
    )
}

/// Writes clip `clip`, rendered again after a resume, where a segment of it already is: the
/// new encoding goes beside it and replaces it only if the bytes differ. They never should
/// (the render is deterministic and the encoder bit-exact); if they do, the job gets a
/// `segment_differs` event and the new segment is kept, so the video matches this render.
fn write_segment_again(
    clip: u32,
    path: &Path,
    settings: &media::EncodeSettings,
    frames: &[Vec<u8>],
    keep: u32,
    reporter: &Reporter,
) -> Result<(), Failure> {
    let again = path.with_file_name(format!("{clip}{}mkv", crate::checkpoint::RERENDER_INFIX));
    write_segment_as(
        clip,
        &again,
        &path.with_extension("jpg"),
        settings,
        frames,
        keep,
    )?;
    let digest = |file: &Path| {
        crate::checkpoint::file_sha256(file).map_err(|err| {
            Failure::new(
                FailureKind::Io,
                format!("cannot read {}: {err}", file.display()),
            )
        })
    };
    let (old, new) = (digest(path)?, digest(&again)?);
    if old == new {
        std::fs::remove_file(&again).map_err(|err| {
            Failure::new(
                FailureKind::Io,
                format!("cannot remove {}: {err}", again.display()),
            )
        })?;
        tracing::debug!(
            clip,
            "segment rendered again came out the same; kept the one on disk"
        );
        return Ok(());
    }
    let detail = format!(
        "clip {clip} rendered again differs from its segment on disk (sha256 {old} before, \
         {new} now); replaced it"
    );
    warn!(clip, "{detail}");
    reporter.send(&WorkerMessage::Checkpoint {
        note: CheckpointNote::SegmentDiffers,
        clip,
        detail,
    });
    crate::checkpoint::replace_durably(&again, path).map_err(|err| {
        Failure::new(
            FailureKind::Io,
            format!(
                "cannot move {} to {}: {err}",
                again.display(),
                path.display()
            ),
        )
    })
}

fn write_segment_as(
    clip: u32,
    path: &Path,
    thumbnail: &Path,
    settings: &media::EncodeSettings,
    frames: &[Vec<u8>],
    keep: u32,
) -> Result<(), Failure> {
    let mut encoder = media::ClipEncoder::create(path, settings)
        .map_err(|err| Failure::new(FailureKind::Io, err.to_string()))?;
    for (pushed, frame) in frames.iter().take(keep as usize).enumerate() {
        encoder
            .push_frame(frame)
            .map_err(|err| Failure::new(FailureKind::Io, err.to_string()))?;
        if pushed + 1 == (keep as usize).div_ceil(2) {
            crash_point::reached("mid_encode", clip);
        }
    }
    encoder
        .finish()
        .map_err(|err| Failure::new(FailureKind::Io, err.to_string()))?;
    // The dashboard's picture of the job: the clip's last frame, beside the segment. Only a
    // view, so a failure costs a warning, never the clip.
    if let Some(last) = frames.iter().take(keep as usize).next_back() {
        if let Err(err) = media::write_thumbnail(thumbnail, last, settings.width, settings.height) {
            tracing::warn!(clip, error = %err, "cannot write the clip's thumbnail");
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn auto_plan_covers_the_audio_and_trims_the_last_clip() {
        let plan = ClipPlan::new(NumClip::Auto, 16, 16, Duration::from_millis(5030));
        assert_eq!(plan.total_frames, 80);
        assert_eq!(plan.clips, 5);
        assert_eq!(plan.frames_in_clip(4), 16);
        let plan = ClipPlan::new(NumClip::Auto, 16, 16, Duration::from_millis(4500));
        assert_eq!(plan.total_frames, 72);
        assert_eq!(plan.clips, 5);
        assert_eq!(plan.frames_in_clip(4), 8);
    }

    #[test]
    fn fallback_output_carries_the_job_id_beside_the_wanted_file() {
        assert_eq!(
            fallback_output(
                Path::new("/out/talk.mp4"),
                Path::new("/state/jobs/20261126-7")
            ),
            PathBuf::from("/out/talk.20261126-7.mp4")
        );
    }

    fn frames(shade: u8) -> Vec<Vec<u8>> {
        (0..4u8)
            .map(|k| vec![shade.wrapping_add(k * 16); 64 * 64 * 3])
            .collect()
    }

    fn reporter() -> Reporter {
        Reporter {
            out: Arc::new(Mutex::new(std::io::stdout())),
        }
    }

    #[test]
    fn a_segment_rendered_again_the_same_is_kept_as_it_was() {
        let dir = tempfile::tempdir().expect("temp dir");
        let path = dir.path().join("3.mkv");
        let settings = media::EncodeSettings::new(64, 64, 16, media::VideoCodec::H264, 18);
        write_segment(3, &path, &settings, &frames(40), 4).expect("first encode");
        let before = std::fs::metadata(&path).expect("segment");
        let bytes = std::fs::read(&path).expect("segment");
        write_segment_again(3, &path, &settings, &frames(40), 4, &reporter()).expect("again");
        let after = std::fs::metadata(&path).expect("segment");
        use std::os::unix::fs::MetadataExt;
        assert_eq!(
            before.ino(),
            after.ino(),
            "the file on disk was not replaced"
        );
        assert_eq!(std::fs::read(&path).expect("segment"), bytes);
        let names: Vec<String> = std::fs::read_dir(dir.path())
            .expect("list")
            .map(|e| e.expect("entry").file_name().to_string_lossy().into_owned())
            .collect();
        assert!(
            names
                .iter()
                .all(|n| !n.contains(crate::checkpoint::RERENDER_INFIX)),
            "{names:?}"
        );
    }

    #[test]
    fn a_segment_rendered_again_differently_replaces_the_old_one() {
        let dir = tempfile::tempdir().expect("temp dir");
        let path = dir.path().join("3.mkv");
        let settings = media::EncodeSettings::new(64, 64, 16, media::VideoCodec::H264, 18);
        write_segment(3, &path, &settings, &frames(40), 4).expect("first encode");
        let old = std::fs::read(&path).expect("segment");
        write_segment(3, &dir.path().join("ref.mkv"), &settings, &frames(200), 4)
            .expect("reference encode");
        write_segment_again(3, &path, &settings, &frames(200), 4, &reporter()).expect("again");
        let new = std::fs::read(&path).expect("segment");
        assert_ne!(new, old);
        assert_eq!(
            new,
            std::fs::read(dir.path().join("ref.mkv")).expect("reference")
        );
    }

    #[test]
    fn a_short_first_clip_is_counted_and_the_video_cut_at_the_audio() {
        // 40 frames of speech, 16-frame clips whose first makes 13: 13 + 16 + 11.
        let plan = ClipPlan::with_first_clip_shortfall(NumClip::Auto, 16, 3, 40);
        assert_eq!((plan.clips, plan.total_frames), (3, 40));
        let frames: Vec<u32> = (0..plan.clips).map(|k| plan.frames_in_clip(k)).collect();
        assert_eq!(frames, vec![13, 16, 11]);
        // 45 frames fill three clips exactly; 46 need a fourth with one frame.
        let plan = ClipPlan::with_first_clip_shortfall(NumClip::Auto, 16, 3, 45);
        assert_eq!((plan.clips, plan.frames_in_clip(2)), (3, 16));
        let plan = ClipPlan::with_first_clip_shortfall(NumClip::Auto, 16, 3, 46);
        assert_eq!((plan.clips, plan.frames_in_clip(3)), (4, 1));
        // A count renders whole clips: the first still makes 3 frames fewer.
        let plan = ClipPlan::with_first_clip_shortfall(NumClip::Count(2), 48, 3, 1000);
        assert_eq!((plan.total_frames, plan.frames_in_clip(0)), (93, 45));
    }

    #[test]
    fn counted_plan_renders_full_clips_whatever_the_audio() {
        let plan = ClipPlan::new(NumClip::Count(3), 32, 16, Duration::from_secs(60));
        assert_eq!(plan.total_frames, 96);
        assert_eq!(plan.frames_in_clip(2), 32);
    }
}
