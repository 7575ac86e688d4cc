//! Jobs as Slurm batch jobs, through Slurm's own command-line tools (`sbatch`, `scontrol`,
//! `scancel`), which every Slurm site has and whose text output has been stable for years.
//!
//! One reelspool job is one batch job: a small script in the job folder that `exec`s
//! `reelspool worker <job-dir>` (so Slurm's signals reach the worker itself), with the worker's
//! stdout (its JSON lines) appended to `slurm-worker.out` and its stderr to `worker.log`. The
//! daemon follows the job by reading that file and asking `scontrol show job -o` every
//! `poll_secs`. `slurm.json` in the job folder names the Slurm job of the current attempt, so a
//! restarted daemon adopts it instead of submitting the job a second time.
//!
//! Slurm 22.05 (Debian 12) is the oldest version in mind: `squeue --json` there ignores its
//! filters and `sacct` needs slurmdbd, so one `scontrol show job -o ID` (key=value) per job
//! and poll is what works everywhere.

use std::collections::BTreeMap;
use std::io::{Read, Seek, SeekFrom};
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::sync::Arc;
use std::time::Duration;

use jobs::state::{JobDir, JobId};
use render::protocol::{self, FailureKind, WorkerMessage};
use serde::{Deserialize, Serialize};
use tokio::sync::{mpsc, watch};
use tracing::{info, warn};

use crate::config::SlurmConfig;
use crate::supervisor::{StopRequest, WorkerEnd, WorkerLaunch, WorkerReport};
use crate::worker_log::{STDERR_TAIL_LINES, WORKER_LOG};

/// The batch script, in the job folder.
pub const SCRIPT_FILE: &str = "slurm-job.sh";
/// The worker's stdout (JSON lines), appended to by every run of the batch job.
pub const OUTPUT_FILE: &str = "slurm-worker.out";
/// Which Slurm job runs the current attempt, and how far its output has been read.
pub const RECORD_FILE: &str = "slurm.json";

/// How often the worker's output file is read for new lines (Slurm itself is asked every
/// `poll_secs`).
const OUTPUT_POLL: Duration = Duration::from_millis(250);
/// The longest any Slurm command may take before it counts as failed.
const COMMAND_TIMEOUT: Duration = Duration::from_secs(60);
/// Added to every time limit: start-up, model load and the final mux.
const TIME_FLOOR_MINUTES: u64 = 10;

/// What went wrong talking to Slurm.
#[derive(Debug, thiserror::Error)]
pub enum SlurmError {
    #[error("cannot run `{command}`: {error} (are the Slurm client tools installed and on PATH?)")]
    Spawn {
        command: String,
        error: std::io::Error,
    },
    #[error("`{command}` did not answer within {}s", COMMAND_TIMEOUT.as_secs())]
    Timeout { command: String },
    #[error("`{command}` failed ({status}): {stderr}")]
    Failed {
        command: String,
        status: String,
        stderr: String,
    },
    #[error("cannot write {path}: {error}")]
    Write {
        path: PathBuf,
        error: std::io::Error,
    },
    #[error("the job fits no GPU type of the cluster: it needs about {need_gib:.1} GiB of GPU memory, the largest type in `executor.gpu_types` has {largest_gib:.1} GiB")]
    NoGpuType { need_gib: f64, largest_gib: f64 },
    #[error("{0}")]
    Probe(String),
}

/// `slurm.json`: the Slurm job of the current attempt.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct SlurmRecord {
    pub slurm_job_id: String,
    /// Bytes of `slurm-worker.out` already passed on to the scheduler.
    pub output_offset: u64,
    /// Set once the attempt's end was reported: the next attempt submits anew.
    #[serde(default)]
    pub ended: bool,
}

impl SlurmRecord {
    pub fn load(job_dir: &Path) -> Option<SlurmRecord> {
        let bytes = std::fs::read(job_dir.join(RECORD_FILE)).ok()?;
        serde_json::from_slice(&bytes).ok()
    }

    /// Written whole through a temporary file, so a crash leaves the old or the new record.
    pub fn save(&self, job_dir: &Path) -> Result<(), SlurmError> {
        let path = job_dir.join(RECORD_FILE);
        let tmp = job_dir.join(format!("{RECORD_FILE}.tmp"));
        let write = || -> std::io::Result<()> {
            let text = serde_json::to_vec(self).map_err(std::io::Error::other)?;
            std::fs::write(&tmp, text)?;
            std::fs::rename(&tmp, &path)
        };
        write().map_err(|error| SlurmError::Write { path, error })
    }
}

/// The Slurm job name of a reelspool job; adoption checks it, so a Slurm job id reused after
/// a cluster reset is never taken for ours.
pub fn job_name(id: &JobId) -> String {
    format!("reelspool-{id}")
}

/// What the submission needs to know about the job's size.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct JobNeeds {
    pub vram_bytes: u64,
    pub host_bytes: u64,
    /// Estimated seconds of rendering, all clips.
    pub render_secs: f64,
}

/// The `sbatch` arguments for one job (the script path comes last).
pub fn sbatch_args(
    config: &SlurmConfig,
    id: &JobId,
    job_dir: &Path,
    needs: &JobNeeds,
) -> Result<Vec<String>, SlurmError> {
    let mut args = vec![
        "--parsable".to_string(),
        format!("--job-name={}", job_name(id)),
        format!("--chdir={}", job_dir.display()),
        format!("--output={}", job_dir.join(OUTPUT_FILE).display()),
        format!("--error={}", job_dir.join(WORKER_LOG).display()),
        "--open-mode=append".to_string(),
        "--requeue".to_string(),
        // The worker itself is the batch shell (the script execs it): TERM makes it
        // checkpoint and exit before the time limit or a preemption.
        "--signal=B:TERM@120".to_string(),
        format!(
            "--time={}",
            time_limit(needs.render_secs, config.time_margin)
        ),
        format!("--mem={}M", needs.host_bytes.div_ceil(1 << 20).max(256)),
    ];
    if let Some(partition) = &config.partition {
        args.push(format!("--partition={partition}"));
    }
    if let Some(account) = &config.account {
        args.push(format!("--account={account}"));
    }
    let (gres, constraint) = gpu_request(config, needs.vram_bytes)?;
    match config.gpus {
        None => args.push(format!("--gres={gres}")),
        // `gpu:a100:2` as a gres is `a100:2` for --gpus.
        Some(_) => args.push(format!(
            "--gpus={}",
            gres.strip_prefix("gpu:").unwrap_or(&gres)
        )),
    }
    if let Some(constraint) = constraint {
        args.push(format!("--constraint={constraint}"));
    }
    args.extend(config.extra_args.iter().cloned());
    Ok(args)
}

/// `--time` as `D-HH:MM:00`: the estimate times the margin, plus a floor for start-up and mux.
pub fn time_limit(render_secs: f64, margin: f64) -> String {
    let secs = if render_secs.is_finite() && render_secs > 0.0 {
        render_secs * margin
    } else {
        0.0
    };
    let minutes = (secs / 60.0).ceil() as u64 + TIME_FLOOR_MINUTES;
    format!(
        "{}-{:02}:{:02}:00",
        minutes / (24 * 60),
        (minutes / 60) % 24,
        minutes % 60
    )
}

/// The `--gres` value and an optional `--constraint` for a job needing `vram_bytes`.
///
/// Without `gpu_types` the configured gres goes as it is. With them, the fitting types are
/// those with at least the estimate; if each of them names a node feature, any of them will
/// do (`--constraint=a|b`), else the smallest fitting type goes into the gres.
pub fn gpu_request(
    config: &SlurmConfig,
    vram_bytes: u64,
) -> Result<(String, Option<String>), SlurmError> {
    if config.gpu_types.is_empty() {
        return Ok(match config.gpus {
            Some(count) => (format!("gpu:{count}"), None),
            None => (config.gres.clone(), None),
        });
    }
    let gib = gpu_pool::GIB as f64;
    let need_gib = vram_bytes as f64 / gib;
    let mut fitting: Vec<_> = config
        .gpu_types
        .iter()
        .filter(|kind| kind.memory_gb >= need_gib)
        .collect();
    fitting.sort_by(|a, b| a.memory_gb.total_cmp(&b.memory_gb));
    let Some(smallest) = fitting.first() else {
        let largest_gib = config
            .gpu_types
            .iter()
            .map(|kind| kind.memory_gb)
            .fold(0.0, f64::max);
        return Err(SlurmError::NoGpuType {
            need_gib,
            largest_gib,
        });
    };
    // `gpu:1` or `gpu:TYPE:1`: keep the name and the count, set the type.
    let parts: Vec<&str> = config.gres.split(':').collect();
    let (name, count) = match parts.as_slice() {
        [name] => (*name, "1"),
        [name, count] => (*name, *count),
        [name, _, count, ..] => (*name, *count),
        [] => ("gpu", "1"),
    };
    let count = config
        .gpus
        .map_or_else(|| count.to_string(), |gpus| gpus.to_string());
    let features: Option<Vec<&str>> = fitting.iter().map(|kind| kind.feature.as_deref()).collect();
    match features {
        Some(features) if !features.is_empty() => {
            Ok((format!("{name}:{count}"), Some(features.join("|"))))
        }
        _ => Ok((format!("{name}:{}:{count}", smallest.name), None)),
    }
}

/// The batch script: the environment the worker needs, then the worker in place of the shell.
/// `CUDA_VISIBLE_DEVICES` is left to Slurm, which sets it to the GPUs it allocated.
pub fn batch_script(program: &Path, job_dir: &Path, env: &[(String, String)]) -> String {
    let mut script =
        String::from("#!/bin/sh\n# Written by the reelspool daemon: one job, run by Slurm.\n");
    for (key, value) in env {
        if is_device_variable(key) {
            continue;
        }
        script.push_str(&format!("export {key}={}\n", shell_quote(value)));
    }
    script.push_str(&format!(
        "exec {} worker {}\n",
        shell_quote(&program.display().to_string()),
        shell_quote(&job_dir.display().to_string())
    ));
    script
}

/// Variables that pick the device: the local pool sets them, under Slurm they are Slurm's.
fn is_device_variable(key: &str) -> bool {
    matches!(
        key,
        "CUDA_VISIBLE_DEVICES" | "NVIDIA_VISIBLE_DEVICES" | "CUDA_DEVICE_ORDER"
    )
}

fn shell_quote(value: &str) -> String {
    format!("'{}'", value.replace('\'', r"'\''"))
}

/// One job as `scontrol show job -o` describes it.
#[derive(Debug, Clone, PartialEq)]
pub struct SlurmJob {
    pub state: String,
    pub name: String,
    pub exit_code: Option<i32>,
    pub restarts: u32,
    pub node: Option<String>,
    pub reason: Option<String>,
    /// `WorkDir=`: the job folder for reelspool's jobs (cut at the first space, if it has one).
    pub work_dir: Option<String>,
}

impl SlurmJob {
    /// Parses the one-line `key=value` form. Values never hold spaces except `Command=` and
    /// the like at the end, which are not read.
    pub fn parse(line: &str) -> Option<SlurmJob> {
        let fields: BTreeMap<&str, &str> = line
            .split_whitespace()
            .filter_map(|field| field.split_once('='))
            .collect();
        let state = fields.get("JobState")?.to_string();
        let exit_code = fields
            .get("ExitCode")
            .and_then(|code| code.split(':').next())
            .and_then(|code| code.parse().ok());
        let known = |key: &str| {
            fields
                .get(key)
                .filter(|value| !value.is_empty() && **value != "(null)" && **value != "None")
                .map(|value| value.to_string())
        };
        Some(SlurmJob {
            state,
            name: fields.get("JobName").unwrap_or(&"").to_string(),
            exit_code,
            restarts: fields
                .get("Restarts")
                .and_then(|n| n.parse().ok())
                .unwrap_or(0),
            node: known("BatchHost"),
            reason: known("Reason"),
            work_dir: known("WorkDir"),
        })
    }

    /// Whether Slurm is done with this job for good (a requeue makes it PENDING again).
    pub fn is_final(&self) -> bool {
        matches!(
            self.state.as_str(),
            "COMPLETED"
                | "FAILED"
                | "CANCELLED"
                | "TIMEOUT"
                | "NODE_FAIL"
                | "PREEMPTED"
                | "BOOT_FAIL"
                | "DEADLINE"
                | "OUT_OF_MEMORY"
        )
    }
}

/// Runs a Slurm command with a timeout; its stdout on success.
async fn slurm_command(program: &str, args: &[String]) -> Result<String, SlurmError> {
    let command = format!("{program} {}", args.join(" "));
    let child = tokio::process::Command::new(program)
        .args(args)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .map_err(|error| SlurmError::Spawn {
            command: command.clone(),
            error,
        })?;
    let output = match tokio::time::timeout(COMMAND_TIMEOUT, child.wait_with_output()).await {
        Ok(Ok(output)) => output,
        Ok(Err(error)) => return Err(SlurmError::Spawn { command, error }),
        Err(_) => return Err(SlurmError::Timeout { command }),
    };
    if !output.status.success() {
        return Err(SlurmError::Failed {
            command,
            status: output.status.to_string(),
            stderr: String::from_utf8_lossy(&output.stderr).trim().to_string(),
        });
    }
    Ok(String::from_utf8_lossy(&output.stdout).into_owned())
}

/// The job as Slurm knows it; `None` when Slurm no longer knows the id.
pub async fn query(slurm_id: &str) -> Result<Option<SlurmJob>, SlurmError> {
    match slurm_command(
        "scontrol",
        &["show".into(), "job".into(), "-o".into(), slurm_id.into()],
    )
    .await
    {
        Ok(text) => Ok(text.lines().find_map(SlurmJob::parse)),
        Err(SlurmError::Failed { stderr, .. }) if stderr.contains("Invalid job id") => Ok(None),
        Err(err) => Err(err),
    }
}

/// Submits the job's batch script; the Slurm job id.
pub async fn submit(
    config: &SlurmConfig,
    launch: &WorkerLaunch,
    needs: &JobNeeds,
) -> Result<String, SlurmError> {
    let mut env = launch.env.clone();
    env.push((
        "REELSPOOL_MODEL_CACHE".into(),
        launch.model_cache_dir.display().to_string(),
    ));
    let script = launch.job_dir.join(SCRIPT_FILE);
    let text = batch_script(&launch.program, &launch.job_dir, &env);
    std::fs::write(&script, text).map_err(|error| SlurmError::Write {
        path: script.clone(),
        error,
    })?;
    let mut args = sbatch_args(config, &launch.job_id, &launch.job_dir, needs)?;
    args.push(script.display().to_string());
    let out = slurm_command("sbatch", &args).await?;
    // `--parsable` prints `jobid` or `jobid;cluster`.
    let id = out
        .trim()
        .split(';')
        .next()
        .unwrap_or("")
        .trim()
        .to_string();
    if id.is_empty() || !id.chars().all(|c| c.is_ascii_digit() || c == '_') {
        return Err(SlurmError::Failed {
            command: "sbatch --parsable".into(),
            status: "unexpected output".into(),
            stderr: out.trim().to_string(),
        });
    }
    Ok(id)
}

/// Cancels the Slurm job of an attempt that has not ended (a job cancelled while the daemon
/// was away, or while it waited to be adopted), so no batch job renders on for a cancelled
/// job. The Slurm job id it cancelled, if any. Blocking: for the CLI and the scheduler's
/// `block_in_place` work.
pub fn cancel_recorded(job_dir: &Path) -> Result<Option<String>, SlurmError> {
    let Some(mut record) = SlurmRecord::load(job_dir).filter(|record| !record.ended) else {
        return Ok(None);
    };
    let command = format!("scancel {}", record.slurm_job_id);
    let output = std::process::Command::new("scancel")
        .arg(&record.slurm_job_id)
        .stdin(Stdio::null())
        .output()
        .map_err(|error| SlurmError::Spawn {
            command: command.clone(),
            error,
        })?;
    let stderr = String::from_utf8_lossy(&output.stderr).trim().to_string();
    // A job Slurm no longer knows, or one already over, needs no cancel.
    if !output.status.success()
        && !stderr.contains("Invalid job id")
        && !stderr.contains("already completing or completed")
    {
        return Err(SlurmError::Failed {
            command,
            status: output.status.to_string(),
            stderr,
        });
    }
    record.ended = true;
    record.save(job_dir)?;
    Ok(Some(record.slurm_job_id))
}

/// What to tell the scheduler when the job could not be submitted.
pub fn submit_failure(err: &SlurmError) -> WorkerEnd {
    match err {
        SlurmError::NoGpuType { .. } => WorkerEnd::Failed {
            kind: FailureKind::Input,
            message: err.to_string(),
        },
        other => WorkerEnd::Crashed {
            status: format!("cannot submit to Slurm: {other}"),
        },
    }
}

/// Adopts the Slurm job of this job's attempt if one is still known (a daemon restart), else
/// submits a new one. The record, and whether it was adopted.
pub async fn adopt_or_submit(
    config: &SlurmConfig,
    launch: &WorkerLaunch,
    needs: &JobNeeds,
) -> Result<(SlurmRecord, bool), SlurmError> {
    if let Some(record) = SlurmRecord::load(&launch.job_dir).filter(|record| !record.ended) {
        match query(&record.slurm_job_id).await {
            Ok(Some(known)) if is_ours(&known, launch) => {
                info!(job = %launch.job_id, slurm_job = %record.slurm_job_id, state = %known.state, "adopting the job's Slurm job");
                return Ok((record, true));
            }
            // Gone from Slurm while the daemon was away: whatever it wrote is still read.
            Ok(None) if output_len(&launch.job_dir) > record.output_offset => {
                return Ok((record, true));
            }
            Ok(_) => {}
            Err(err) => return Err(err),
        }
    }
    let slurm_job_id = submit(config, launch, needs).await?;
    let record = SlurmRecord {
        slurm_job_id,
        output_offset: output_len(&launch.job_dir),
        ended: false,
    };
    record.save(&launch.job_dir)?;
    info!(job = %launch.job_id, slurm_job = %record.slurm_job_id, "submitted to Slurm");
    Ok((record, false))
}

/// Whether a Slurm job is this reelspool job's: its name, and its folder (job ids are unique
/// only within one state directory, and a cluster may serve more than one daemon).
fn is_ours(known: &SlurmJob, launch: &WorkerLaunch) -> bool {
    let folder = launch.job_dir.display().to_string();
    known.name == job_name(&launch.job_id)
        && known
            .work_dir
            .as_deref()
            .is_none_or(|work_dir| folder.starts_with(work_dir))
}

fn output_len(job_dir: &Path) -> u64 {
    std::fs::metadata(job_dir.join(OUTPUT_FILE)).map_or(0, |meta| meta.len())
}

/// New complete lines of the output file from `offset`; the offset after them.
fn read_lines(path: &Path, offset: u64) -> (Vec<String>, u64) {
    let Ok(mut file) = std::fs::File::open(path) else {
        return (Vec::new(), offset);
    };
    let mut bytes = Vec::new();
    if file.seek(SeekFrom::Start(offset)).is_err() || file.read_to_end(&mut bytes).is_err() {
        return (Vec::new(), offset);
    }
    let Some(last_newline) = bytes.iter().rposition(|b| *b == b'\n') else {
        return (Vec::new(), offset);
    };
    let text = String::from_utf8_lossy(&bytes[..=last_newline]);
    let lines = text.lines().map(str::to_string).collect();
    (lines, offset + last_newline as u64 + 1)
}

/// The last lines of the worker's stderr log.
fn stderr_tail(job_dir: &Path) -> Vec<String> {
    let text = std::fs::read_to_string(job_dir.join(WORKER_LOG)).unwrap_or_default();
    let lines: Vec<&str> = text.lines().collect();
    let start = lines.len().saturating_sub(STDERR_TAIL_LINES);
    lines[start..].iter().map(|line| line.to_string()).collect()
}

/// Follows one Slurm job: passes the worker's messages on, asks Slurm for its state every
/// `poll_secs`, cancels it on request and reports its end.
pub async fn follow(
    config: Arc<SlurmConfig>,
    launch: WorkerLaunch,
    mut record: SlurmRecord,
    reports: mpsc::UnboundedSender<(JobId, WorkerReport)>,
    mut stop: watch::Receiver<StopRequest>,
) {
    let job = launch.job_id.clone();
    let dir = JobDir::new(&launch.job_dir);
    let output = launch.job_dir.join(OUTPUT_FILE);
    let slurm_id = record.slurm_job_id.clone();
    let mut last_message: Option<WorkerMessage> = None;
    let mut cancel_sent = false;
    let mut restarts_seen: Option<u32> = None;
    let mut output_tick = tokio::time::interval(OUTPUT_POLL);
    let mut slurm_tick = tokio::time::interval(Duration::from_secs(config.poll_secs.max(1)));
    output_tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    slurm_tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    // The heartbeat: the worker writes a line at least every few seconds while it renders
    // (its heartbeat thread), so a running Slurm job whose output stays silent for
    // `worker.heartbeat_timeout_secs` is hung (stopped, deadlocked, its node frozen): it is
    // cancelled and retried long before its `--time` runs out.
    let mut last_sign = tokio::time::Instant::now();
    let mut running_since: Option<tokio::time::Instant> = None;
    let mut heartbeat_lost = false;
    // Whether any new line came.
    let pass_on = |record: &mut SlurmRecord, last: &mut Option<WorkerMessage>| -> bool {
        let (lines, next) = read_lines(&output, record.output_offset);
        let heard = !lines.is_empty();
        for line in lines {
            if let Some(message) = WorkerMessage::from_line(&line) {
                *last = Some(message.clone());
                let _ = reports.send((job.clone(), WorkerReport::Message(message)));
            }
        }
        if next != record.output_offset {
            record.output_offset = next;
            if let Err(err) = record.save(&launch.job_dir) {
                warn!(job = %job, error = %err, "cannot keep the Slurm output offset");
            }
        }
        heard
    };
    let end = loop {
        tokio::select! {
            _ = output_tick.tick() => {
                if pass_on(&mut record, &mut last_message) {
                    last_sign = tokio::time::Instant::now();
                }
                continue;
            }
            changed = stop.changed(), if !cancel_sent => {
                let request = if changed.is_err() { StopRequest::Shutdown } else { *stop.borrow() };
                match request {
                    StopRequest::None => continue,
                    StopRequest::Cancel => {
                        info!(job = %job, slurm_job = %slurm_id, "cancelling the Slurm job");
                        if let Err(err) = slurm_command("scancel", std::slice::from_ref(&slurm_id)).await {
                            warn!(job = %job, error = %err, "scancel failed; asking again at the next poll");
                        } else {
                            cancel_sent = true;
                        }
                        continue;
                    }
                    StopRequest::Shutdown => {
                        // The Slurm job runs on without the daemon; the next start adopts it.
                        pass_on(&mut record, &mut last_message);
                        info!(job = %job, slurm_job = %slurm_id, "daemon stopping; the Slurm job runs on and is adopted at the next start");
                        let _ = reports.send((job.clone(), WorkerReport::Ended {
                            end: WorkerEnd::Interrupted { next_clip: None },
                            stderr_tail: Vec::new(),
                        }));
                        return;
                    }
                }
            }
            _ = slurm_tick.tick() => {}
        }
        let known = match query(&slurm_id).await {
            Ok(known) => known,
            Err(err) => {
                warn!(job = %job, slurm_job = %slurm_id, error = %err, "cannot ask Slurm about the job; asking again");
                continue;
            }
        };
        let still_on = known.as_ref().is_some_and(|job| !job.is_final());
        let cancel_wanted = cancel_sent || *stop.borrow() == StopRequest::Cancel;
        if still_on && cancel_wanted {
            // Asked again each poll until Slurm has it: a lost scancel must not leave it running.
            if slurm_command("scancel", std::slice::from_ref(&slurm_id))
                .await
                .is_ok()
            {
                cancel_sent = true;
            }
        }
        let Some(known) = known else {
            pass_on(&mut record, &mut last_message);
            break match &last_message {
                Some(WorkerMessage::Finished { .. }) => WorkerEnd::Finished,
                _ => WorkerEnd::Crashed {
                    status: format!(
                        "Slurm no longer knows job {slurm_id} (node failure or controller reset); it is submitted again"
                    ),
                },
            };
        };
        if let Some(before) = restarts_seen {
            if known.restarts > before {
                info!(job = %job, slurm_job = %slurm_id, restarts = known.restarts, "Slurm requeued the job; it resumes from its checkpoint");
            }
        }
        restarts_seen = Some(known.restarts);
        if known.is_final() {
            pass_on(&mut record, &mut last_message);
            let end = classify(&slurm_id, &known, last_message.clone(), cancel_sent, &dir);
            break if heartbeat_lost && end != WorkerEnd::Finished {
                WorkerEnd::HeartbeatLost
            } else {
                end
            };
        }
        if known.state != "RUNNING" {
            // Waiting in Slurm's queue (again, after a requeue): nothing to hear yet.
            running_since = None;
            continue;
        }
        let now = tokio::time::Instant::now();
        let since = *running_since.get_or_insert(now);
        let silent_since = last_sign.max(since);
        if !heartbeat_lost && now.duration_since(silent_since) >= launch.heartbeat_timeout {
            warn!(job = %job, slurm_job = %slurm_id, "worker silent for {:?}; cancelling its Slurm job", launch.heartbeat_timeout);
            heartbeat_lost = true;
            if slurm_command("scancel", std::slice::from_ref(&slurm_id))
                .await
                .is_ok()
            {
                cancel_sent = true;
            }
        }
    };
    record.ended = true;
    if let Err(err) = record.save(&launch.job_dir) {
        warn!(job = %job, error = %err, "cannot mark the Slurm attempt ended");
    }
    info!(job = %job, slurm_job = %slurm_id, end = ?end, "Slurm job ended");
    let _ = reports.send((
        job.clone(),
        WorkerReport::Ended {
            end,
            stderr_tail: stderr_tail(&launch.job_dir),
        },
    ));
}

/// A final Slurm state and the worker's last message, as a worker end.
fn classify(
    slurm_id: &str,
    known: &SlurmJob,
    last: Option<WorkerMessage>,
    cancel_sent: bool,
    dir: &JobDir,
) -> WorkerEnd {
    let on_node = known
        .node
        .as_deref()
        .map(|node| format!(" on {node}"))
        .unwrap_or_default();
    match (known.state.as_str(), last) {
        (_, Some(WorkerMessage::Finished { .. })) => WorkerEnd::Finished,
        ("CANCELLED", _) => {
            if !cancel_sent && !dir.cancel_request().exists() {
                // Cancelled from outside reelspool (`scancel`, an admin): the user's job is
                // cancelled, not retried. The request file is what `reelspool cancel` writes.
                warn!(slurm_job = %slurm_id, "the Slurm job was cancelled outside reelspool; the job is cancelled");
                if let Err(err) = std::fs::write(
                    dir.cancel_request(),
                    format!("Slurm job {slurm_id} cancelled outside reelspool\n"),
                ) {
                    warn!(error = %err, "cannot record the outside cancel");
                }
            }
            WorkerEnd::Crashed {
                status: format!("Slurm job {slurm_id} cancelled{on_node}"),
            }
        }
        ("COMPLETED", Some(WorkerMessage::Interrupted { next_clip })) => WorkerEnd::Interrupted {
            next_clip: Some(next_clip),
        },
        ("COMPLETED", _) => WorkerEnd::Interrupted { next_clip: None },
        (_, Some(WorkerMessage::Error { kind, message })) => WorkerEnd::Failed { kind, message },
        ("OUT_OF_MEMORY", _) => WorkerEnd::Failed {
            kind: FailureKind::OutOfMemory,
            message: format!("Slurm job {slurm_id} ran out of memory{on_node}"),
        },
        ("FAILED", _) if known.exit_code == Some(protocol::EXIT_OUT_OF_MEMORY) => {
            WorkerEnd::Failed {
                kind: FailureKind::OutOfMemory,
                message: "worker ran out of memory".into(),
            }
        }
        (state, _) => WorkerEnd::Crashed {
            status: format!(
                "Slurm job {slurm_id} ended {state}{on_node}{}{}",
                known
                    .exit_code
                    .map(|code| format!(", exit status {code}"))
                    .unwrap_or_default(),
                known
                    .reason
                    .as_deref()
                    .map(|reason| format!(" ({reason})"))
                    .unwrap_or_default()
            ),
        },
    }
}

/// The start-up check that a Slurm node sees the spool and state directories: a short batch
/// job that looks for both and leaves a file in the state directory. `Ok(false)` when the
/// probe got no node within the timeout (the daemon starts anyway and says so).
pub async fn probe(
    config: &SlurmConfig,
    spool_dir: &Path,
    state_dir: &Path,
) -> Result<bool, SlurmError> {
    let token = format!("{}-{}", std::process::id(), jobs::state::now_ms());
    let answer = state_dir.join(format!(".slurm-probe-{token}"));
    let check = format!(
        "test -d {spool} && test -d {state} && echo ok > {answer}",
        spool = shell_quote(&spool_dir.display().to_string()),
        state = shell_quote(&state_dir.display().to_string()),
        answer = shell_quote(&answer.display().to_string()),
    );
    let mut args = vec![
        "--parsable".to_string(),
        "--job-name=reelspool-probe".to_string(),
        "--output=/dev/null".to_string(),
        "--time=5".to_string(),
        "--mem=64M".to_string(),
    ];
    if let Some(partition) = &config.partition {
        args.push(format!("--partition={partition}"));
    }
    if let Some(account) = &config.account {
        args.push(format!("--account={account}"));
    }
    args.extend(config.extra_args.iter().cloned());
    args.push(format!("--wrap={check}"));
    let out = slurm_command("sbatch", &args).await?;
    let id = out
        .trim()
        .split(';')
        .next()
        .unwrap_or("")
        .trim()
        .to_string();
    let deadline = tokio::time::Instant::now() + Duration::from_secs(config.probe_timeout_secs);
    let shared_help = format!(
        "the spool ({}) and state ({}) directories must be on a file system that every Slurm node mounts at the same path",
        spool_dir.display(),
        state_dir.display()
    );
    loop {
        if answer.exists() {
            let _ = std::fs::remove_file(&answer);
            return Ok(true);
        }
        let known = query(&id).await?;
        let done = known.as_ref().is_none_or(SlurmJob::is_final);
        if done {
            // The file may show up a moment after the job ends on a network file system.
            tokio::time::sleep(Duration::from_secs(2)).await;
            if answer.exists() {
                let _ = std::fs::remove_file(&answer);
                return Ok(true);
            }
            let detail = known
                .map(|job| {
                    format!(
                        "probe job {id} ended {}{}",
                        job.state,
                        job.node
                            .map(|node| format!(" on node {node}"))
                            .unwrap_or_default()
                    )
                })
                .unwrap_or_else(|| format!("probe job {id} ended"));
            return Err(SlurmError::Probe(format!(
                "a Slurm node cannot see this daemon's directories: {detail} without finding them\n  = help: {shared_help}"
            )));
        }
        if tokio::time::Instant::now() >= deadline {
            let _ = slurm_command("scancel", std::slice::from_ref(&id)).await;
            return Ok(false);
        }
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::executor::SlurmGpuType;

    fn config(gpu_types: Vec<SlurmGpuType>) -> SlurmConfig {
        SlurmConfig {
            partition: Some("gpu".into()),
            account: None,
            gres: "gpu:1".into(),
            gpus: None,
            gpu_types,
            extra_args: vec!["--qos=video".into()],
            poll_secs: 10,
            max_jobs: 4,
            time_margin: 2.0,
            probe_timeout_secs: 60,
        }
    }

    fn kind(name: &str, memory_gb: f64, feature: Option<&str>) -> SlurmGpuType {
        SlurmGpuType {
            name: name.into(),
            memory_gb,
            feature: feature.map(str::to_string),
        }
    }

    const GIB: u64 = gpu_pool::GIB;

    #[test]
    fn a_job_goes_to_the_smallest_gpu_type_its_estimate_fits() {
        let config = config(vec![kind("a100", 80.0, None), kind("l4", 24.0, None)]);
        assert_eq!(
            gpu_request(&config, 20 * GIB).expect("fits"),
            ("gpu:l4:1".to_string(), None)
        );
        // 30 GiB does not fit a 24 GB card: it must not land on an L4 node.
        assert_eq!(
            gpu_request(&config, 30 * GIB).expect("fits"),
            ("gpu:a100:1".to_string(), None)
        );
        let err = gpu_request(&config, 100 * GIB).expect_err("fits no type");
        assert!(err.to_string().contains("80.0 GiB"), "{err}");
    }

    #[test]
    fn types_with_features_become_a_constraint_of_every_fitting_type() {
        let config = config(vec![
            kind("l4", 24.0, Some("gpu24g")),
            kind("a100", 80.0, Some("gpu80g")),
            kind("h100", 80.0, Some("gpu80h")),
        ]);
        assert_eq!(
            gpu_request(&config, 30 * GIB).expect("fits"),
            ("gpu:1".to_string(), Some("gpu80g|gpu80h".to_string()))
        );
    }

    #[test]
    fn without_types_the_configured_gres_goes_as_it_is() {
        let mut plain = config(Vec::new());
        plain.gres = "gpu:fake:2".into();
        assert_eq!(
            gpu_request(&plain, 500 * GIB).expect("no check"),
            ("gpu:fake:2".to_string(), None)
        );
    }

    #[test]
    fn gpus_asks_with_dash_dash_gpus_and_its_count() {
        let mut typed = config(vec![kind("l4", 24.0, None), kind("a100", 80.0, None)]);
        typed.gpus = Some(2);
        let id: JobId = "20260101-000000-abcdef".parse().expect("id");
        let needs = JobNeeds {
            vram_bytes: 30 * GIB,
            host_bytes: 0,
            render_secs: 0.0,
        };
        let args = sbatch_args(&typed, &id, Path::new("/j"), &needs).expect("args");
        assert!(args.contains(&"--gpus=a100:2".to_string()), "{args:?}");
        assert!(
            !args.iter().any(|arg| arg.starts_with("--gres")),
            "{args:?}"
        );
        let mut plain = config(Vec::new());
        plain.gpus = Some(1);
        let args = sbatch_args(&plain, &id, Path::new("/j"), &needs).expect("args");
        assert!(args.contains(&"--gpus=1".to_string()), "{args:?}");
    }

    #[test]
    fn time_limit_has_the_margin_and_a_floor() {
        assert_eq!(time_limit(0.0, 2.0), "0-00:10:00");
        // 50 minutes of rendering, doubled, plus 10.
        assert_eq!(time_limit(3000.0, 2.0), "0-01:50:00");
        assert_eq!(time_limit(86_400.0, 1.0), "1-00:10:00");
        assert_eq!(time_limit(f64::NAN, 2.0), "0-00:10:00");
    }

    #[test]
    fn sbatch_gets_requeue_the_signal_the_memory_and_the_site_settings() {
        let config = config(vec![kind("l4", 24.0, None)]);
        let id: JobId = "20260101-000000-abcdef".parse().expect("id");
        let needs = JobNeeds {
            vram_bytes: 10 * GIB,
            host_bytes: 3 * GIB + 1,
            render_secs: 60.0,
        };
        let args = sbatch_args(&config, &id, Path::new("/shared/jobs/x"), &needs).expect("args");
        for wanted in [
            "--parsable",
            "--requeue",
            "--signal=B:TERM@120",
            "--gres=gpu:l4:1",
            "--partition=gpu",
            "--qos=video",
            "--mem=3073M",
            "--time=0-00:12:00",
            "--output=/shared/jobs/x/slurm-worker.out",
            "--open-mode=append",
        ] {
            assert!(args.iter().any(|arg| arg == wanted), "{wanted} in {args:?}");
        }
        assert!(args.contains(&format!("--job-name=reelspool-{id}")));
    }

    #[test]
    fn the_script_leaves_the_device_to_slurm_and_quotes_everything() {
        let env = vec![
            ("CUDA_VISIBLE_DEVICES".to_string(), "cpu-0".to_string()),
            ("REELSPOOL_OFFLOAD".to_string(), "0".to_string()),
            ("REELSPOOL_MODEL_CACHE".to_string(), "/a b/it's".to_string()),
        ];
        let script = batch_script(Path::new("/usr/bin/reelspool"), Path::new("/j/1"), &env);
        assert!(!script.contains("CUDA_VISIBLE_DEVICES"), "{script}");
        assert!(
            script.contains("export REELSPOOL_OFFLOAD='0'\n"),
            "{script}"
        );
        assert!(
            script.contains(r"export REELSPOOL_MODEL_CACHE='/a b/it'\''s'"),
            "{script}"
        );
        assert!(
            script.ends_with("exec '/usr/bin/reelspool' worker '/j/1'\n"),
            "{script}"
        );
    }

    #[test]
    fn scontrol_one_line_output_is_read() {
        let line = "JobId=42 JobName=reelspool-x UserId=root(0) GroupId=root(0) Priority=1 \
                    JobState=PENDING Reason=BeginTime Dependency=(null) Requeue=1 Restarts=2 \
                    BatchFlag=1 ExitCode=0:0 BatchHost=node7 Command=/j/slurm-job.sh";
        let with_dir = SlurmJob::parse(&format!("{line} WorkDir=/shared/jobs/x StdIn=/dev/null"))
            .expect("parsed");
        assert_eq!(with_dir.work_dir.as_deref(), Some("/shared/jobs/x"));
        let job = SlurmJob::parse(line).expect("parsed");
        assert_eq!(job.state, "PENDING");
        assert_eq!(job.name, "reelspool-x");
        assert_eq!(job.restarts, 2);
        assert_eq!(job.exit_code, Some(0));
        assert_eq!(job.node.as_deref(), Some("node7"));
        assert_eq!(job.reason.as_deref(), Some("BeginTime"));
        assert_eq!(job.work_dir, None, "no WorkDir= in this line");
        assert!(!job.is_final());
        let failed =
            SlurmJob::parse("JobId=1 JobState=NODE_FAIL ExitCode=1:9 Reason=None").expect("parsed");
        assert!(failed.is_final());
        assert_eq!(failed.exit_code, Some(1));
        assert_eq!(failed.reason, None);
        assert_eq!(
            SlurmJob::parse("slurm_load_jobs error: Invalid job id"),
            None
        );
    }

    #[test]
    fn slurm_ends_become_worker_ends_the_scheduler_retries_or_not() {
        let dir = tempfile::tempdir().expect("tmp");
        let job_dir = JobDir::new(dir.path());
        let job = |line: &str| SlurmJob::parse(line).expect("parsed");
        // Lost with its node: a crash, so the scheduler submits it again and it resumes.
        let end = classify(
            "7",
            &job("JobState=NODE_FAIL ExitCode=0:0 BatchHost=n3"),
            None,
            false,
            &job_dir,
        );
        assert!(
            matches!(&end, WorkerEnd::Crashed { status } if status.contains("NODE_FAIL on n3")),
            "{end:?}"
        );
        // The worker's own report wins over Slurm's exit code.
        let end = classify(
            "7",
            &job("JobState=FAILED ExitCode=3:0"),
            Some(WorkerMessage::Error {
                kind: FailureKind::Input,
                message: "bad image".into(),
            }),
            false,
            &job_dir,
        );
        assert_eq!(
            end,
            WorkerEnd::Failed {
                kind: FailureKind::Input,
                message: "bad image".into()
            }
        );
        assert!(!job_dir.cancel_request().exists());
        // Cancelled outside reelspool: recorded as a cancel request, so the job is cancelled.
        classify(
            "7",
            &job("JobState=CANCELLED ExitCode=0:15"),
            None,
            false,
            &job_dir,
        );
        assert!(job_dir.cancel_request().exists());
    }

    #[test]
    fn output_lines_are_read_whole_only() {
        let dir = tempfile::tempdir().expect("tmp");
        let path = dir.path().join("out");
        std::fs::write(&path, "{\"a\":1}\n{\"b\"").expect("write");
        let (lines, next) = read_lines(&path, 0);
        assert_eq!(lines, vec!["{\"a\":1}".to_string()]);
        assert_eq!(next, 8);
        let (none, same) = read_lines(&path, next);
        assert!(none.is_empty());
        assert_eq!(same, 8);
    }
}
