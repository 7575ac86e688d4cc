//! The worker process: one job ([`run`]), or a warm worker that keeps its model loaded and
//! renders the jobs it is sent ([`serve`]); for each job, the lock that keeps a second worker
//! off it and the heartbeat the daemon watches.

use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use jobs::state::JobDir;
use tracing::{info, warn};

use super::job;
use super::report::Reporter;
use crate::engine;
#[cfg(doc)]
use crate::protocol::WorkerCommand;
use crate::protocol::{self, FailureKind, WorkerMessage};

/// How often a worker inside a long clip tells the daemon it is alive.
const HEARTBEAT_EVERY: Duration = Duration::from_secs(5);
/// How long a worker waits for a previous worker of the same job to let go of it.
const LOCK_WAIT: Duration = Duration::from_secs(120);

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
    let reporter = Reporter::stdout();
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
    let reporter = Reporter::stdout();
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
        if flags.terminate.load(Ordering::Relaxed) {
            flags.stop.store(true, Ordering::Relaxed);
        }
        // Not eprintln!: a stderr whose reader died with the daemon must not end the worker.
        log_line(&format!("{}{}", protocol::LOG_JOB_BEGIN, job_dir.display()));
        let code = run_job(
            &job_dir,
            model_cache_dir,
            &reporter,
            &flags.stop,
            &mut models,
        );
        log_line(protocol::LOG_JOB_END);
        // A stop is for the job it was sent during. It is cleared when that job ends, not
        // when the next one starts: a `stop` read while the first job was still being set up
        // would otherwise be lost, and the job cancelled right after its start would run on.
        flags
            .stop
            .store(flags.terminate.load(Ordering::Relaxed), Ordering::Relaxed);
        reporter.send(&WorkerMessage::JobEnded {
            code,
            model: models.model().map(ToString::to_string),
        });
        if flags.terminate.load(Ordering::Relaxed) {
            return protocol::EXIT_OK;
        }
    }
}

/// Writes one line to stderr, ignoring a reader that is gone.
fn log_line(line: &str) {
    use std::io::Write;
    let _ = writeln!(std::io::stderr(), "{line}");
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
    reporter.open_job_file(&dir.work_dir());
    let heartbeat_stop = Arc::new(AtomicBool::new(false));
    let heartbeat = spawn_heartbeat(reporter.clone(), Arc::clone(&heartbeat_stop));
    let result = job::render_job(&dir, model_cache_dir, reporter, stop, models);
    heartbeat_stop.store(true, Ordering::Relaxed);
    let _ = heartbeat.join();
    // The job's last message goes to its file before the lock is let go: whoever sees the
    // lock free finds how the job ended there.
    let code = report_end(reporter, result);
    reporter.close_job_file();
    code
}

/// Sends the job's last message; returns the exit status a worker of this one job ends with.
fn report_end(reporter: &Reporter, result: Result<WorkerMessage, super::report::Failure>) -> i32 {
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
    let path = work.join(protocol::LOCK_FILE);
    let mut file = std::fs::OpenOptions::new()
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
            // The holder's pid, for a restarted daemon that re-adopts this worker.
            use std::io::{Seek, Write};
            let _ = file.set_len(0);
            let _ = file.seek(std::io::SeekFrom::Start(0));
            let _ = write!(file, "{}", std::process::id());
            let _ = file.sync_data();
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
