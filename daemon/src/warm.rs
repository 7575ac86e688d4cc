//! Warm workers: a worker process (`reelspool worker <job-dir> --serve`) that stays up after its
//! job and keeps its model loaded for the next job on the same card that uses the same model.
//!
//! A warm worker is owned by exactly one place at a time: by the supervisor of the job it runs,
//! or, between jobs, by the [`WarmPool`]. The scheduler takes an idle worker out of the pool
//! when it starts a job on that worker's card with the same lease environment and model; every
//! other idle worker on that card is let go first, so a card never holds a second model beside
//! the running job's (placement's memory fit counts one job per card). A worker idle for
//! `worker.idle_unload_secs` is let go on the scheduler's tick; it also exits by itself a little
//! later, should the daemon not get to it.
//!
//! The worker frames each job's stderr lines with [`render::protocol::LOG_JOB_BEGIN`] and
//! [`render::protocol::LOG_JOB_END`]; the router here appends them to that job's `worker.log`
//! only, and hands the job's last lines to its supervisor.

use std::collections::{HashMap, VecDeque};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use render::protocol::{LOG_JOB_BEGIN, LOG_JOB_END};
use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader, Lines};
use tokio::process::{Child, ChildStdin, ChildStdout};
use tokio::sync::mpsc;
use tracing::{debug, info, warn};

use crate::worker_log::STDERR_TAIL_LINES;

/// How much longer than the daemon's idle limit a worker waits before it exits by itself, so
/// the daemon, not the worker, decides (a worker exiting just as a job is sent would cost that
/// job an attempt).
pub const SELF_EXIT_GRACE: Duration = Duration::from_secs(30);

/// What a warm worker is fit for: the same card, lease environment and model.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct WorkerKey {
    pub card_uuid: String,
    pub env: Vec<(String, String)>,
    /// The job's engine and model (see [`model_key`]).
    pub model: String,
}

/// What a worker holds loaded, as a job names it: the native engine's `engine.model`, or the
/// command engine's name (its process is started per job, so holding it saves nothing, but it
/// keeps jobs of different engines from sharing a worker).
pub fn model_key(spec: &jobs::JobSpec) -> String {
    match &spec.engine.model_ref {
        jobs::spec::ModelRef::Command { model, .. } => format!("command:{model}"),
        native => native.to_string(),
    }
}

/// A job's stderr lines, as far as the router saw them when the job's lines ended.
pub type JobTail = Vec<String>;

/// A live worker process and its pipes.
pub struct WarmWorker {
    pub child: Child,
    pub stdin: Option<ChildStdin>,
    pub stdout: Lines<BufReader<ChildStdout>>,
    /// One tail per job, in order, from the stderr router.
    pub tails: mpsc::UnboundedReceiver<JobTail>,
    pub pid: u32,
    pub key: WorkerKey,
    pub oom_watch: Option<crate::death::OomWatch>,
    /// Jobs this process has served, the current one included.
    pub jobs_served: u32,
}

impl WarmWorker {
    /// Sends one command line; `false` when the worker's stdin is gone (it exited).
    pub async fn send(&mut self, command: &render::protocol::WorkerCommand) -> bool {
        let Some(stdin) = self.stdin.as_mut() else {
            return false;
        };
        let line = format!("{}\n", command.to_line());
        stdin.write_all(line.as_bytes()).await.is_ok() && stdin.flush().await.is_ok()
    }

    /// The tail of the job that just ended, once the router has seen its end (or `wait`).
    pub async fn job_tail(&mut self, wait: Duration) -> JobTail {
        match tokio::time::timeout(wait, self.tails.recv()).await {
            Ok(Some(tail)) => tail,
            _ => Vec::new(),
        }
    }

    /// Lets the worker go: closing stdin makes it exit; it is killed if it has not within a
    /// few seconds. Nothing is lost: it has no job.
    pub fn let_go(mut self, why: &str) {
        info!(pid = self.pid, gpu = %self.key.card_uuid, model = %self.key.model, why, "warm worker let go");
        self.stdin = None;
        tokio::spawn(async move {
            if tokio::time::timeout(Duration::from_secs(10), self.child.wait())
                .await
                .is_err()
            {
                let _ = self.child.start_kill();
                let _ = self.child.wait().await;
            }
        });
    }
}

/// Reads a worker's stderr until it closes: each job's lines go to that job's `worker.log`,
/// and when the job's lines end, their tail goes to `tails`. `first_job` is the job given on
/// the worker's command line, whose lines may start before its begin marker.
pub async fn route_stderr(
    stderr: tokio::process::ChildStderr,
    first_job: PathBuf,
    tails: mpsc::UnboundedSender<JobTail>,
) {
    let mut lines = BufReader::new(stderr).lines();
    let mut current = Some(JobLog::open(&first_job).await);
    while let Ok(Some(line)) = lines.next_line().await {
        if let Some(job_dir) = line.strip_prefix(LOG_JOB_BEGIN) {
            let job_dir = Path::new(job_dir);
            match current.take() {
                // The first job's marker: its log is open already, keep its early lines.
                Some(log) if log.job_dir == job_dir => current = Some(log),
                other => {
                    if let Some(log) = other {
                        let _ = tails.send(log.close().await);
                    }
                    current = Some(JobLog::open(job_dir).await);
                }
            }
            continue;
        }
        if line == LOG_JOB_END {
            if let Some(log) = current.take() {
                let _ = tails.send(log.close().await);
            }
            continue;
        }
        match current.as_mut() {
            Some(log) => log.push(line).await,
            None => debug!("warm worker between jobs: {line}"),
        }
    }
    // The worker is gone (or closed stderr): whatever job it was in gets the lines so far.
    if let Some(log) = current.take() {
        let _ = tails.send(log.close().await);
    }
}

/// One job's `worker.log`, open for appending, and its last lines.
struct JobLog {
    job_dir: PathBuf,
    file: Option<tokio::fs::File>,
    tail: VecDeque<String>,
}

impl JobLog {
    async fn open(job_dir: &Path) -> JobLog {
        let path = job_dir.join(crate::worker_log::WORKER_LOG);
        let file = match tokio::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&path)
            .await
        {
            Ok(file) => Some(file),
            Err(err) => {
                warn!(path = %path.display(), error = %err, "cannot open the worker log");
                None
            }
        };
        JobLog {
            job_dir: job_dir.to_path_buf(),
            file,
            tail: VecDeque::with_capacity(STDERR_TAIL_LINES),
        }
    }

    /// A log that cannot be written costs the log, never the job.
    async fn push(&mut self, line: String) {
        if let Some(file) = self.file.as_mut() {
            if let Err(err) = file.write_all(format!("{line}\n").as_bytes()).await {
                warn!(job_dir = %self.job_dir.display(), error = %err, "cannot write the worker log");
                self.file = None;
            }
        }
        if self.tail.len() == STDERR_TAIL_LINES {
            self.tail.pop_front();
        }
        self.tail.push_back(line);
    }

    async fn close(mut self) -> JobTail {
        if let Some(mut file) = self.file.take() {
            let _ = file.flush().await;
        }
        self.tail.into_iter().collect()
    }
}

struct Idle {
    worker: WarmWorker,
    since: Instant,
}

/// The idle warm workers, shared by the scheduler (which takes and lets go) and the
/// supervisors (which put a worker back after its job).
#[derive(Clone, Default)]
pub struct WarmPool {
    idle: Arc<Mutex<Vec<Idle>>>,
}

impl WarmPool {
    fn lock(&self) -> std::sync::MutexGuard<'_, Vec<Idle>> {
        self.idle
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    /// Keeps a worker that finished its job and waits for the next.
    pub fn put(&self, worker: WarmWorker) {
        debug!(pid = worker.pid, model = %worker.key.model, "warm worker idle");
        self.lock().push(Idle {
            worker,
            since: Instant::now(),
        });
    }

    /// Takes the idle worker fit for `key`, if one is alive.
    pub fn take(&self, key: &WorkerKey) -> Option<WarmWorker> {
        let mut idle = self.lock();
        let at = idle.iter_mut().position(|entry| {
            entry.worker.key == *key && matches!(entry.worker.child.try_wait(), Ok(None))
        })?;
        Some(idle.swap_remove(at).worker)
    }

    /// Lets go every idle worker on `card_uuid` (before another process starts there).
    pub fn let_go_card(&self, card_uuid: &str) {
        let gone: Vec<Idle> = {
            let mut idle = self.lock();
            let (gone, kept) = std::mem::take(&mut *idle)
                .into_iter()
                .partition(|entry| entry.worker.key.card_uuid == card_uuid);
            *idle = kept;
            gone
        };
        for entry in gone {
            entry
                .worker
                .let_go("a job with another model or lease starts on its card");
        }
    }

    /// Drops workers that exited and lets go those idle for longer than `limit`.
    pub fn reap(&self, limit: Duration) {
        let mut gone = Vec::new();
        {
            let mut idle = self.lock();
            let mut kept = Vec::with_capacity(idle.len());
            for mut entry in idle.drain(..) {
                let alive = matches!(entry.worker.child.try_wait(), Ok(None));
                if !alive {
                    info!(pid = entry.worker.pid, "idle warm worker exited");
                } else if entry.since.elapsed() >= limit {
                    gone.push(entry);
                } else {
                    kept.push(entry);
                }
            }
            *idle = kept;
        }
        for entry in gone {
            entry.worker.let_go("idle for worker.idle_unload_secs");
        }
    }

    /// Lets go every idle worker (the daemon is stopping).
    pub fn let_go_all(&self) {
        let gone = std::mem::take(&mut *self.lock());
        for entry in gone {
            entry.worker.let_go("the daemon is stopping");
        }
    }

    /// The model each idle worker holds, by card.
    pub fn models(&self) -> HashMap<String, String> {
        self.lock()
            .iter()
            .map(|entry| {
                (
                    entry.worker.key.card_uuid.clone(),
                    entry.worker.key.model.clone(),
                )
            })
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A real child process writes two jobs' lines between the markers, as a serving worker
    /// does: each job's log gets its own lines (the first job's early lines too), and the tails
    /// come out in job order.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn each_jobs_stderr_lines_go_to_that_jobs_log_only() {
        let root = tempfile::tempdir().expect("temp dir");
        let (first, second) = (root.path().join("first"), root.path().join("second"));
        for dir in [&first, &second] {
            std::fs::create_dir_all(dir).expect("job dir");
        }
        let script = format!(
            "echo 'early line of first' >&2\n\
             printf '%s%s\\n' \"$BEGIN\" '{first}' >&2\n\
             echo 'rendering first' >&2\n\
             printf '%s\\n' \"$END\" >&2\n\
             echo 'between jobs' >&2\n\
             printf '%s%s\\n' \"$BEGIN\" '{second}' >&2\n\
             echo 'rendering second' >&2\n\
             printf '%s\\n' \"$END\" >&2\n",
            first = first.display(),
            second = second.display(),
        );
        let mut child = tokio::process::Command::new("sh")
            .arg("-c")
            .arg(script)
            .env("BEGIN", LOG_JOB_BEGIN)
            .env("END", LOG_JOB_END)
            .stderr(std::process::Stdio::piped())
            .spawn()
            .expect("start sh");
        let stderr = child.stderr.take().expect("stderr pipe");
        let (tx, mut tails) = mpsc::unbounded_channel();
        route_stderr(stderr, first.clone(), tx).await;
        child.wait().await.expect("sh ends");
        assert_eq!(
            tails.recv().await,
            Some(vec![
                "early line of first".to_string(),
                "rendering first".to_string()
            ])
        );
        assert_eq!(
            tails.recv().await,
            Some(vec!["rendering second".to_string()])
        );
        let log = |dir: &Path| {
            std::fs::read_to_string(dir.join(crate::worker_log::WORKER_LOG)).expect("worker.log")
        };
        assert_eq!(log(&first), "early line of first\nrendering first\n");
        assert_eq!(log(&second), "rendering second\n");
    }

    /// A worker killed in the middle of a job: the lines so far are that job's tail.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_job_cut_short_still_gets_its_lines() {
        let root = tempfile::tempdir().expect("temp dir");
        let job = root.path().join("job");
        std::fs::create_dir_all(&job).expect("job dir");
        let mut child = tokio::process::Command::new("sh")
            .arg("-c")
            .arg("printf '%s%s\\n' \"$BEGIN\" \"$JOB\" >&2; echo 'clip 3' >&2; kill -9 $$")
            .env("BEGIN", LOG_JOB_BEGIN)
            .env("JOB", &job)
            .stderr(std::process::Stdio::piped())
            .spawn()
            .expect("start sh");
        let stderr = child.stderr.take().expect("stderr pipe");
        let (tx, mut tails) = mpsc::unbounded_channel();
        route_stderr(stderr, job.clone(), tx).await;
        let status = child.wait().await.expect("sh ends");
        assert!(!status.success());
        assert_eq!(tails.recv().await, Some(vec!["clip 3".to_string()]));
    }
}
