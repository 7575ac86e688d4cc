//! One supervisor task per running job: it starts the worker process on its lease (or hands the
//! job to a warm worker already on that card, see `warm`), reads the worker's JSON lines, keeps
//! the tail of the job's stderr, enforces the heartbeat, and reports how the job ended. A worker that crashes, hangs or is killed by the kernel's OOM killer is just an
//! exit status here: the daemon itself never goes down with it.

use std::path::{Path, PathBuf};
use std::process::{ExitCode, Stdio};
use std::time::Duration;

use anyhow::Result;
use jobs::state::JobId;
use render::protocol::{self, FailureKind, WorkerCommand, WorkerMessage};
use tokio::io::{AsyncBufReadExt, BufReader};
use tokio::process::Command;
use tokio::sync::{mpsc, watch};
use tracing::{debug, info, warn};

use crate::warm::{WarmPool, WarmWorker, WorkerKey};

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
    /// The card, lease environment and model: what a warm worker must match to be reused.
    pub key: WorkerKey,
    /// How long a worker may wait for its next job; zero: one process per job.
    pub idle_unload: Duration,
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
    Interrupted {
        next_clip: Option<u32>,
    },
    Failed {
        kind: FailureKind,
        message: String,
    },
    Crashed {
        status: String,
    },
    /// Killed by someone else than the daemon (a SIGKILL or SIGTERM it did not send, with no
    /// sign of an OOM kill): the job did not cause it, so it is retried as an eviction.
    Evicted {
        status: String,
    },
    HeartbeatLost,
}

/// What a supervisor tells the scheduler.
#[derive(Debug, Clone)]
pub enum WorkerReport {
    Message(WorkerMessage),
    /// Under Slurm: the batch job that runs this attempt, submitted or adopted (`sbatch` runs
    /// in the job's own task, not in the scheduler's loop).
    SlurmJob {
        slurm_job_id: String,
        adopted: bool,
    },
    Ended {
        end: WorkerEnd,
        stderr_tail: Vec<String>,
    },
}

/// Starts the job on `warm` (an idle worker fit for it) or on a fresh worker, follows it to
/// the job's end, and puts a worker that is still fine back into `pool`.
pub async fn supervise(
    launch: WorkerLaunch,
    warm: Option<WarmWorker>,
    pool: WarmPool,
    reports: mpsc::UnboundedSender<(JobId, WorkerReport)>,
    mut stop: watch::Receiver<StopRequest>,
) {
    let job = launch.job_id.clone();
    let send = |report: WorkerReport| {
        let _ = reports.send((job.clone(), report));
    };
    let mut worker = match warm {
        Some(mut worker) => {
            worker.jobs_served += 1;
            let run = WorkerCommand::Run {
                job_dir: launch.job_dir.clone(),
            };
            if worker.send(&run).await {
                info!(job = %job, pid = worker.pid, jobs_served = worker.jobs_served, "job sent to a warm worker");
                Some(worker)
            } else {
                // It died while idle: nothing of this job reached it, start a fresh one.
                worker.let_go("its stdin is closed");
                None
            }
        }
        None => None,
    };
    if worker.is_none() {
        match spawn_worker(&launch) {
            Ok(fresh) => worker = Some(fresh),
            Err(status) => {
                send(WorkerReport::Ended {
                    end: WorkerEnd::Crashed { status },
                    stderr_tail: Vec::new(),
                });
                return;
            }
        }
    }
    let Some(mut worker) = worker else { return };
    let mut last_message: Option<WorkerMessage> = None;
    let mut stop_sent_at: Option<tokio::time::Instant> = None;
    let mut heartbeat_lost = false;
    let mut killed_after_stop = false;
    let mut job_ended: Option<i32> = None;
    loop {
        let deadline = match stop_sent_at {
            Some(sent) => sent + launch.stop_timeout,
            None => tokio::time::Instant::now() + launch.heartbeat_timeout,
        };
        tokio::select! {
            line = worker.stdout.next_line() => match line {
                Ok(Some(line)) => match WorkerMessage::from_line(&line) {
                    Some(WorkerMessage::JobEnded { code, .. }) => {
                        job_ended = Some(code);
                        break;
                    }
                    Some(message) => {
                        last_message = Some(message.clone());
                        send(WorkerReport::Message(message));
                    }
                    None => debug!(job = %job, line = %line, "worker stdout"),
                },
                Ok(None) | Err(_) => break,
            },
            changed = stop.changed(), if stop_sent_at.is_none() => {
                let request = if changed.is_err() { StopRequest::Shutdown } else { *stop.borrow() };
                match request {
                    StopRequest::None => {}
                    StopRequest::Cancel => {
                        info!(job = %job, "asking worker to checkpoint and stop the job");
                        if !worker.send(&WorkerCommand::Stop).await {
                            signal_pid(worker.pid, libc::SIGTERM);
                        }
                        stop_sent_at = Some(tokio::time::Instant::now());
                    }
                    StopRequest::Shutdown => {
                        info!(job = %job, "asking worker to checkpoint and stop");
                        signal_pid(worker.pid, libc::SIGTERM);
                        stop_sent_at = Some(tokio::time::Instant::now());
                    }
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
                let _ = worker.child.start_kill();
                break;
            }
        }
    }
    if let Some(code) = job_ended {
        // The job is over and the worker lives on: its exit status is the one it reported.
        use std::os::unix::process::ExitStatusExt;
        let stderr_tail = worker.job_tail(TAIL_WAIT).await;
        let status = std::process::ExitStatus::from_raw((code & 0xff) << 8);
        let end = classify_end(Ok(status), last_message, false, Killer::Unknown(None));
        info!(job = %job, end = ?end, pid = worker.pid, "job ended on its worker");
        let shutting_down = *stop.borrow() == StopRequest::Shutdown;
        let keep = !launch.idle_unload.is_zero() && !shutting_down && worker_stays_fit(&end);
        // Back in the pool before the scheduler hears of the end: the report makes it place
        // the next job, which should find this worker idle.
        if keep {
            pool.put(worker);
            send(WorkerReport::Ended { end, stderr_tail });
        } else {
            let why = if launch.idle_unload.is_zero() {
                "warm workers are off (worker.idle_unload_secs: 0)"
            } else if shutting_down {
                "its job ended while the daemon stops"
            } else {
                "its job failed in a way that may have left it unfit; the retry gets a fresh one"
            };
            send(WorkerReport::Ended { end, stderr_tail });
            worker.let_go(why);
        }
        return;
    }
    let status = worker.child.wait().await;
    let stderr_tail = worker.job_tail(TAIL_WAIT).await;
    let killer = if killed_after_stop {
        Killer::DaemonAfterStop(launch.stop_timeout)
    } else if stop_sent_at.is_some() {
        Killer::DaemonStop
    } else {
        Killer::Unknown(worker.oom_watch.take())
    };
    let end = classify_end(status, last_message, heartbeat_lost, killer);
    info!(job = %job, end = ?end, "worker ended");
    send(WorkerReport::Ended { end, stderr_tail });
}

/// The pid of a live worker that holds the job's lock (`work/worker.lock`), if one does: a
/// worker started by an earlier daemon that is still rendering the job.
pub fn live_worker(job_dir: &Path) -> Option<u32> {
    use std::os::fd::AsRawFd;
    let path = job_dir.join("work").join(protocol::LOCK_FILE);
    let file = std::fs::File::open(&path).ok()?;
    // SAFETY: flock only reads the descriptor, which `file` keeps open.
    let rc = unsafe { libc::flock(file.as_raw_fd(), libc::LOCK_SH | libc::LOCK_NB) };
    if rc == 0 {
        // Nobody holds it: no worker renders the job. (Closing the file lets go of ours.)
        return None;
    }
    let pid: u32 = std::fs::read_to_string(&path).ok()?.trim().parse().ok()?;
    // SAFETY: kill with signal 0 only checks that the process exists.
    (pid > 1 && unsafe { libc::kill(pid as i32, 0) } == 0).then_some(pid)
}

/// How often an adopted worker's messages and lock are looked at.
const ADOPTED_POLL: Duration = Duration::from_millis(250);

/// Follows a worker that an earlier daemon started and that outlived it: its messages come
/// from the job's copy of them ([`protocol::MESSAGES_FILE`]), its heartbeat is that file
/// growing, and its end is its lock let go (it is not this daemon's child, so there is no exit
/// status to wait for: the end is read from its last message). Stops are signals to its pid.
/// `clips_done` is what the job's state already counts: clip reports up to there were handled
/// by the earlier daemon and are not reported again.
pub async fn supervise_adopted(
    launch: WorkerLaunch,
    pid: u32,
    clips_done: u32,
    reports: mpsc::UnboundedSender<(JobId, WorkerReport)>,
    mut stop: watch::Receiver<StopRequest>,
) {
    let job = launch.job_id.clone();
    let send = |report: WorkerReport| {
        let _ = reports.send((job.clone(), report));
    };
    let path = launch.job_dir.join("work").join(protocol::MESSAGES_FILE);
    let mut read_upto = 0usize;
    let mut last_message: Option<WorkerMessage> = None;
    let mut last_sign = tokio::time::Instant::now();
    let mut stop_sent_at: Option<tokio::time::Instant> = None;
    let mut killed = false;
    let mut heartbeat_lost = false;
    info!(job = %job, pid, "re-adopted a worker that outlived the last daemon");
    loop {
        // New whole lines of the job's messages.
        if let Ok(bytes) = tokio::fs::read(&path).await {
            if bytes.len() < read_upto {
                read_upto = 0;
            }
            let fresh = &bytes[read_upto..];
            if let Some(end) = fresh.iter().rposition(|b| *b == b'\n') {
                for line in String::from_utf8_lossy(&fresh[..end]).lines() {
                    let Some(message) = WorkerMessage::from_line(line) else {
                        continue;
                    };
                    last_sign = tokio::time::Instant::now();
                    let report = match &message {
                        WorkerMessage::ClipDone { index, .. } => *index >= clips_done,
                        WorkerMessage::Finished { .. }
                        | WorkerMessage::Interrupted { .. }
                        | WorkerMessage::Error { .. } => true,
                        // Reported when the attempt began, to the daemon that started it.
                        _ => false,
                    };
                    if !matches!(
                        message,
                        WorkerMessage::Heartbeat | WorkerMessage::JobEnded { .. }
                    ) {
                        last_message = Some(message.clone());
                    }
                    if report {
                        send(WorkerReport::Message(message));
                    }
                }
                read_upto += end + 1;
            }
        }
        if live_worker(&launch.job_dir) != Some(pid) {
            break;
        }
        let now = tokio::time::Instant::now();
        match stop_sent_at {
            Some(sent) if !killed && now >= sent + launch.stop_timeout => {
                warn!(job = %job, pid, "adopted worker did not stop within {:?}; killing it", launch.stop_timeout);
                signal_pid(pid, libc::SIGKILL);
                killed = true;
            }
            None if !heartbeat_lost && now >= last_sign + launch.heartbeat_timeout => {
                warn!(job = %job, pid, "adopted worker silent for {:?}; killing it", launch.heartbeat_timeout);
                signal_pid(pid, libc::SIGKILL);
                heartbeat_lost = true;
            }
            _ => {}
        }
        tokio::select! {
            changed = stop.changed(), if stop_sent_at.is_none() => {
                let request = if changed.is_err() { StopRequest::Shutdown } else { *stop.borrow() };
                if request != StopRequest::None {
                    info!(job = %job, pid, "asking the adopted worker to checkpoint and stop");
                    signal_pid(pid, libc::SIGTERM);
                    stop_sent_at = Some(tokio::time::Instant::now());
                }
            }
            _ = tokio::time::sleep(ADOPTED_POLL) => {}
        }
    }
    let end = if heartbeat_lost {
        WorkerEnd::HeartbeatLost
    } else {
        match last_message {
            Some(WorkerMessage::Finished { .. }) => WorkerEnd::Finished,
            Some(WorkerMessage::Interrupted { next_clip }) => WorkerEnd::Interrupted {
                next_clip: Some(next_clip),
            },
            Some(WorkerMessage::Error { kind, message }) => WorkerEnd::Failed { kind, message },
            _ if killed => WorkerEnd::Crashed {
                status: format!(
                    "killed by SIGKILL (9) from the daemon: it did not stop within {:?}",
                    launch.stop_timeout
                ),
            },
            // Not our child: how it died is not known. It did not say it failed, so it is
            // not held against the job.
            _ => WorkerEnd::Evicted {
                status: format!(
                    "the re-adopted worker (pid {pid}) ended without a last message; its exit \
                     status went to the daemon that started it"
                ),
            },
        }
    };
    info!(job = %job, end = ?end, pid, "adopted worker ended");
    send(WorkerReport::Ended {
        end,
        stderr_tail: Vec::new(),
    });
}

/// Whether a worker whose job ended this way may serve the next job. A job that finished, was
/// stopped, or failed on its own input leaves the worker as it was; after an engine error, an
/// out-of-memory (a CUDA context may not recover from one), an I/O failure (a full disk: the
/// job waits for space) or a busy job lock, the next attempt gets a fresh process.
fn worker_stays_fit(end: &WorkerEnd) -> bool {
    matches!(
        end,
        WorkerEnd::Finished
            | WorkerEnd::Interrupted { .. }
            | WorkerEnd::Failed {
                kind: FailureKind::Input,
                ..
            }
    )
}

/// How long the end of a job waits for the stderr router to finish that job's lines.
const TAIL_WAIT: Duration = Duration::from_secs(5);

/// Starts `reelspool worker <job-dir> --serve` for the launch's job; the error is the status
/// to report.
fn spawn_worker(launch: &WorkerLaunch) -> Result<WarmWorker, String> {
    let mut command = Command::new(&launch.program);
    // A worker outlives its job only while the daemon wants it; it exits by itself a little
    // after the daemon would have let it go (see `warm::SELF_EXIT_GRACE`).
    let idle_exit = launch.idle_unload + crate::warm::SELF_EXIT_GRACE;
    command
        .arg("worker")
        .arg(&launch.job_dir)
        .arg("--serve")
        .arg("--idle-exit-secs")
        .arg(idle_exit.as_secs().to_string())
        .env("REELSPOOL_MODEL_CACHE", &launch.model_cache_dir)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        // A process group of its own, and no parent-death signal: a worker outlives a daemon
        // that crashes or is killed, renders on, and the next daemon re-adopts it (see
        // `supervise_adopted`). Its pipes to the dead daemon then only fail its writes (Rust
        // ignores SIGPIPE); its messages also go to the job folder.
        .process_group(0)
        .kill_on_drop(true);
    for (key, value) in &launch.env {
        command.env(key, value);
    }
    let mut child = command
        .spawn()
        .map_err(|err| format!("cannot start worker {}: {err}", launch.program.display()))?;
    let (Some(stdin), Some(stdout), Some(stderr), Some(pid)) = (
        child.stdin.take(),
        child.stdout.take(),
        child.stderr.take(),
        child.id(),
    ) else {
        let _ = child.start_kill();
        return Err("worker pipes missing".into());
    };
    info!(job = %launch.job_id, pid, "worker started");
    let (tails_tx, tails) = mpsc::unbounded_channel();
    tokio::spawn(crate::warm::route_stderr(
        stderr,
        launch.job_dir.clone(),
        tails_tx,
    ));
    Ok(WarmWorker {
        child,
        stdin: Some(stdin),
        stdout: BufReader::new(stdout).lines(),
        tails,
        pid,
        key: launch.key.clone(),
        oom_watch: Some(crate::death::OomWatch::start(pid)),
        jobs_served: 1,
    })
}

fn signal_pid(pid: u32, signal: i32) {
    // SAFETY: kill() with the pid of a child we spawned and have not reaped yet (its supervisor
    // holds the `Child` until it has waited for it).
    unsafe {
        libc::kill(pid as i32, signal);
    }
}

/// Who is known to have sent a deadly signal.
enum Killer {
    /// The supervisor, because the worker outlived its stop timeout.
    DaemonAfterStop(Duration),
    /// The supervisor asked the worker to stop (SIGTERM), so a death by SIGTERM is its own.
    DaemonStop,
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
        (None, _) => match (status.signal(), killer) {
            (Some(signal), Killer::DaemonAfterStop(timeout)) => WorkerEnd::Crashed {
                status: format!(
                    "killed by {} from the daemon: it did not stop within {timeout:?}",
                    crate::death::signal_name(signal)
                ),
            },
            (Some(libc::SIGKILL), Killer::Unknown(watch)) => {
                match watch.and_then(|watch| watch.evidence()) {
                    Some(evidence) => WorkerEnd::Crashed {
                        status: format!("killed by SIGKILL (9): {evidence}"),
                    },
                    None => WorkerEnd::Evicted {
                        status: "killed by SIGKILL (9), not sent by the daemon; \
                                 the kernel reports no OOM kill of it"
                            .to_string(),
                    },
                }
            }
            (Some(libc::SIGTERM), Killer::Unknown(_)) => WorkerEnd::Evicted {
                status: "killed by SIGTERM (15), not sent by the daemon".to_string(),
            },
            (Some(signal), _) => WorkerEnd::Crashed {
                status: format!("killed by {}", crate::death::signal_name(signal)),
            },
            (None, _) => WorkerEnd::Crashed {
                status: "ended without a status".to_string(),
            },
        },
    }
}

/// `reelspool worker <job-dir> [--serve]`: the worker process itself; with `serve` (the idle
/// limit in seconds) a warm worker that takes further jobs from stdin.
pub fn worker_main(job_dir: &Path, serve: Option<u64>) -> Result<ExitCode> {
    crate::logging::init_stderr();
    let model_cache = std::env::var_os("REELSPOOL_MODEL_CACHE")
        .map(PathBuf::from)
        .unwrap_or_else(|| job_dir.join("work").join("models"));
    render::engine::kernel_cache::configure_from_env();
    let code = match serve {
        Some(idle_secs) => {
            render::worker::serve(job_dir, &model_cache, Duration::from_secs(idle_secs.max(1)))
        }
        None => render::worker::run(job_dir, &model_cache),
    };
    Ok(ExitCode::from(u8::try_from(code).unwrap_or(1)))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_worker_is_reused_only_after_ends_that_leave_it_as_it_was() {
        let failed = |kind| WorkerEnd::Failed {
            kind,
            message: "m".into(),
        };
        assert!(worker_stays_fit(&WorkerEnd::Finished));
        assert!(worker_stays_fit(&WorkerEnd::Interrupted {
            next_clip: Some(1)
        }));
        assert!(worker_stays_fit(&failed(FailureKind::Input)));
        for unfit in [
            failed(FailureKind::Engine),
            failed(FailureKind::OutOfMemory),
            failed(FailureKind::Io),
            WorkerEnd::HeartbeatLost,
        ] {
            assert!(!worker_stays_fit(&unfit), "{unfit:?}");
        }
    }

    #[test]
    fn a_kill_the_daemon_did_not_send_is_an_eviction_and_a_crash_signal_is_not() {
        use std::os::unix::process::ExitStatusExt;
        let killed = |signal: i32| Ok(std::process::ExitStatus::from_raw(signal));
        for signal in [libc::SIGKILL, libc::SIGTERM] {
            let end = classify_end(killed(signal), None, false, Killer::Unknown(None));
            assert!(matches!(end, WorkerEnd::Evicted { .. }), "{end:?}");
        }
        for signal in [libc::SIGSEGV, libc::SIGABRT, libc::SIGBUS] {
            let end = classify_end(killed(signal), None, false, Killer::Unknown(None));
            assert!(matches!(end, WorkerEnd::Crashed { .. }), "{end:?}");
        }
        // The daemon's own SIGTERM, or its SIGKILL after the stop timeout, is no eviction.
        let end = classify_end(killed(libc::SIGTERM), None, false, Killer::DaemonStop);
        assert!(matches!(end, WorkerEnd::Crashed { .. }), "{end:?}");
        let end = classify_end(
            killed(libc::SIGKILL),
            None,
            false,
            Killer::DaemonAfterStop(Duration::from_secs(1)),
        );
        assert!(matches!(end, WorkerEnd::Crashed { .. }), "{end:?}");
        // A hang is the worker's own failure.
        let end = classify_end(killed(libc::SIGKILL), None, true, Killer::Unknown(None));
        assert_eq!(end, WorkerEnd::HeartbeatLost);
    }

    #[test]
    fn a_reported_job_end_reads_like_the_exit_of_a_worker_of_one_job() {
        use std::os::unix::process::ExitStatusExt;
        let status = |code: i32| Ok(std::process::ExitStatus::from_raw((code & 0xff) << 8));
        let finished = WorkerMessage::Finished {
            output: "/out/a.mp4".into(),
            duration_secs: 1.0,
            frames: 16,
            clips: 1,
            kept_existing: None,
        };
        assert_eq!(
            classify_end(
                status(protocol::EXIT_OK),
                Some(finished),
                false,
                Killer::Unknown(None)
            ),
            WorkerEnd::Finished
        );
        let error = WorkerMessage::Error {
            kind: FailureKind::Input,
            message: "cannot decode audio".into(),
        };
        assert_eq!(
            classify_end(
                status(protocol::EXIT_JOB_FAILED),
                Some(error),
                false,
                Killer::Unknown(None)
            ),
            WorkerEnd::Failed {
                kind: FailureKind::Input,
                message: "cannot decode audio".into()
            }
        );
    }
}
