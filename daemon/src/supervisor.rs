//! One supervisor task per running job: it starts the worker process on its lease, reads the
//! worker's JSON lines, keeps the tail of its stderr, enforces the heartbeat, and reports how the
//! worker ended. A worker that crashes, hangs or is killed by the kernel's OOM killer is just an
//! exit status here: the daemon itself never goes down with it.

use std::collections::VecDeque;
use std::path::{Path, PathBuf};
use std::process::{ExitCode, Stdio};
use std::time::Duration;

use anyhow::Result;
use jobs::state::JobId;
use render::protocol::{self, FailureKind, WorkerMessage};
use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader};
use tokio::process::Command;
use tokio::sync::{mpsc, watch};
use tracing::{debug, info, warn};

/// How many stderr lines of a worker are kept for the job's events and failure notices.
pub const STDERR_TAIL_LINES: usize = 40;

/// Everything needed to start one worker.
#[derive(Debug, Clone)]
pub struct WorkerLaunch {
    pub job_id: JobId,
    pub job_dir: PathBuf,
    pub program: PathBuf,
    pub env: Vec<(String, String)>,
    pub model_cache_dir: PathBuf,
    pub heartbeat_timeout: Duration,
    pub stop_timeout: Duration,
}

/// Why the daemon wants a worker to stop.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum StopRequest {
    /// Keep running.
    None,
    /// The daemon is stopping: checkpoint and exit, the job resumes at the next start.
    Shutdown,
    /// The user cancelled the job.
    Cancel,
}

/// How a worker ended.
#[derive(Debug, Clone, PartialEq)]
pub enum WorkerEnd {
    Finished,
    Interrupted { next_clip: Option<u32> },
    Failed { kind: FailureKind, message: String },
    Crashed { status: String },
    HeartbeatLost,
}

/// What a supervisor tells the scheduler.
#[derive(Debug, Clone)]
pub enum WorkerReport {
    Message(WorkerMessage),
    Ended {
        end: WorkerEnd,
        stderr_tail: Vec<String>,
    },
}

/// Starts the worker and follows it to its end.
pub async fn supervise(
    launch: WorkerLaunch,
    reports: mpsc::UnboundedSender<(JobId, WorkerReport)>,
    mut stop: watch::Receiver<StopRequest>,
) {
    let job = launch.job_id.clone();
    let send = |report: WorkerReport| {
        let _ = reports.send((job.clone(), report));
    };
    let mut command = Command::new(&launch.program);
    command
        .arg("worker")
        .arg(&launch.job_dir)
        .env("REELSPOOL_MODEL_CACHE", &launch.model_cache_dir)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .kill_on_drop(true);
    for (key, value) in &launch.env {
        command.env(key, value);
    }
    // SAFETY: the closure runs in the child between fork and exec and only calls prctl, which
    // is async-signal-safe. If the daemon dies (even by SIGKILL) the worker gets SIGTERM, so it
    // checkpoints and exits instead of rendering on as an orphan next to a restarted daemon.
    unsafe {
        command.pre_exec(|| {
            if libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGTERM) != 0 {
                return Err(std::io::Error::last_os_error());
            }
            Ok(())
        });
    }
    let mut child = match command.spawn() {
        Ok(child) => child,
        Err(err) => {
            send(WorkerReport::Ended {
                end: WorkerEnd::Crashed {
                    status: format!("cannot start worker {}: {err}", launch.program.display()),
                },
                stderr_tail: Vec::new(),
            });
            return;
        }
    };
    info!(job = %job, pid = child.id(), "worker started");
    let oom_watch = child.id().map(crate::death::OomWatch::start);
    let (Some(stdout), Some(stderr)) = (child.stdout.take(), child.stderr.take()) else {
        let _ = child.start_kill();
        send(WorkerReport::Ended {
            end: WorkerEnd::Crashed {
                status: "worker pipes missing".into(),
            },
            stderr_tail: Vec::new(),
        });
        return;
    };
    let worker_log = launch.job_dir.join(crate::logs::WORKER_LOG);
    let stderr_task = tokio::spawn(collect_stderr(job.clone(), stderr, worker_log));
    let mut lines = BufReader::new(stdout).lines();
    let mut last_message: Option<WorkerMessage> = None;
    let mut stop_sent_at: Option<tokio::time::Instant> = None;
    let mut heartbeat_lost = false;
    let mut killed_after_stop = false;
    loop {
        let deadline = match stop_sent_at {
            Some(sent) => sent + launch.stop_timeout,
            None => tokio::time::Instant::now() + launch.heartbeat_timeout,
        };
        tokio::select! {
            line = lines.next_line() => match line {
                Ok(Some(line)) => match WorkerMessage::from_line(&line) {
                    Some(message) => {
                        last_message = Some(message.clone());
                        send(WorkerReport::Message(message));
                    }
                    None => debug!(job = %job, line = %line, "worker stdout"),
                },
                Ok(None) | Err(_) => break,
            },
            changed = stop.changed(), if stop_sent_at.is_none() => {
                if changed.is_err() || *stop.borrow() != StopRequest::None {
                    info!(job = %job, "asking worker to checkpoint and stop");
                    signal_child(&child, libc::SIGTERM);
                    stop_sent_at = Some(tokio::time::Instant::now());
                }
            }
            _ = tokio::time::sleep_until(deadline) => {
                if stop_sent_at.is_none() {
                    warn!(job = %job, "worker silent for {:?}; killing it", launch.heartbeat_timeout);
                    heartbeat_lost = true;
                } else {
                    warn!(job = %job, "worker did not stop within {:?}; killing it", launch.stop_timeout);
                    killed_after_stop = true;
                }
                let _ = child.start_kill();
                break;
            }
        }
    }
    let status = child.wait().await;
    let stderr_tail = stderr_task.await.unwrap_or_default();
    let killer = if killed_after_stop {
        Killer::DaemonAfterStop(launch.stop_timeout)
    } else {
        Killer::Unknown(oom_watch)
    };
    let end = classify_end(status, last_message, heartbeat_lost, killer);
    info!(job = %job, end = ?end, "worker ended");
    send(WorkerReport::Ended { end, stderr_tail });
}

fn signal_child(child: &tokio::process::Child, signal: i32) {
    if let Some(pid) = child.id() {
        // SAFETY: kill() with a pid we spawned and still own (not yet reaped).
        unsafe {
            libc::kill(pid as i32, signal);
        }
    }
}

/// Who is known to have sent a deadly signal.
enum Killer {
    /// The supervisor, because the worker outlived its stop timeout.
    DaemonAfterStop(Duration),
    /// Not the daemon; the kernel may say whether its OOM killer did.
    Unknown(Option<crate::death::OomWatch>),
}

fn classify_end(
    status: std::io::Result<std::process::ExitStatus>,
    last_message: Option<WorkerMessage>,
    heartbeat_lost: bool,
    killer: Killer,
) -> WorkerEnd {
    use std::os::unix::process::ExitStatusExt;
    if heartbeat_lost {
        return WorkerEnd::HeartbeatLost;
    }
    let status = match status {
        Ok(status) => status,
        Err(err) => {
            return WorkerEnd::Crashed {
                status: format!("cannot wait for worker: {err}"),
            }
        }
    };
    match (status.code(), last_message) {
        (Some(protocol::EXIT_OK), Some(WorkerMessage::Finished { .. })) => WorkerEnd::Finished,
        (Some(protocol::EXIT_OK), Some(WorkerMessage::Interrupted { next_clip })) => {
            WorkerEnd::Interrupted {
                next_clip: Some(next_clip),
            }
        }
        (Some(protocol::EXIT_OK), _) => WorkerEnd::Interrupted { next_clip: None },
        (Some(_), Some(WorkerMessage::Error { kind, message })) => {
            WorkerEnd::Failed { kind, message }
        }
        (Some(protocol::EXIT_OUT_OF_MEMORY), _) => WorkerEnd::Failed {
            kind: FailureKind::OutOfMemory,
            message: "worker ran out of memory".into(),
        },
        (Some(code), _) => WorkerEnd::Crashed {
            status: format!("exit status {code}"),
        },
        (None, _) => WorkerEnd::Crashed {
            status: match (status.signal(), killer) {
                (Some(signal), Killer::DaemonAfterStop(timeout)) => format!(
                    "killed by {} from the daemon: it did not stop within {timeout:?}",
                    crate::death::signal_name(signal)
                ),
                (Some(libc::SIGKILL), Killer::Unknown(watch)) => {
                    match watch.and_then(|watch| watch.evidence()) {
                        Some(evidence) => format!("killed by SIGKILL (9): {evidence}"),
                        None => "killed by SIGKILL (9), not sent by the daemon; \
                                 the kernel reports no OOM kill of it"
                            .to_string(),
                    }
                }
                (Some(signal), _) => format!("killed by {}", crate::death::signal_name(signal)),
                (None, _) => "ended without a status".to_string(),
            },
        },
    }
}

/// Keeps the last lines for the job's events and appends every line to `<job-dir>/worker.log`
/// (what `reelspool logs` shows). A log that cannot be written costs the log, never the job.
async fn collect_stderr(
    job: JobId,
    stderr: tokio::process::ChildStderr,
    log_path: PathBuf,
) -> Vec<String> {
    let mut tail = VecDeque::with_capacity(STDERR_TAIL_LINES);
    let mut lines = BufReader::new(stderr).lines();
    let mut log = match tokio::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(&log_path)
        .await
    {
        Ok(file) => Some(file),
        Err(err) => {
            warn!(job = %job, path = %log_path.display(), error = %err, "cannot open the worker log");
            None
        }
    };
    while let Ok(Some(line)) = lines.next_line().await {
        debug!(job = %job, "worker: {line}");
        if let Some(file) = log.as_mut() {
            if let Err(err) = file.write_all(format!("{line}\n").as_bytes()).await {
                warn!(job = %job, path = %log_path.display(), error = %err, "cannot write the worker log");
                log = None;
            }
        }
        if tail.len() == STDERR_TAIL_LINES {
            tail.pop_front();
        }
        tail.push_back(line);
    }
    if let Some(mut file) = log {
        let _ = file.flush().await;
    }
    tail.into_iter().collect()
}

/// `reelspool worker <job-dir>`: the worker process itself.
pub fn worker_main(job_dir: &Path) -> Result<ExitCode> {
    crate::logging::init_stderr();
    let model_cache = std::env::var_os("REELSPOOL_MODEL_CACHE")
        .map(PathBuf::from)
        .unwrap_or_else(|| job_dir.join("work").join("models"));
    let code = render::worker::run(job_dir, &model_cache);
    Ok(ExitCode::from(u8::try_from(code).unwrap_or(1)))
}
