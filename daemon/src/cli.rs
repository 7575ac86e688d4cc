//! The client commands: they read the config and the state directory and never talk to the
//! daemon's memory. A job's files on disk are the whole truth (see `jobs::state`).

use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};
use jobs::escape_text;
use jobs::index::IndexEntry;
use jobs::state::{self, JobDir, JobEvent, JobId, JobState, Phase};

use crate::cancels;
use crate::config::{self, DaemonConfig};
use crate::daemon;
use crate::spool;

/// Loads the config, or, when none was named and the default is absent, returns `None` so that
/// commands that can work without one (validate, submit --spool) still do.
fn optional_config(flag: Option<&Path>) -> Result<Option<DaemonConfig>> {
    let path = config::config_path(flag);
    if flag.is_none() && !path.exists() {
        return Ok(None);
    }
    Ok(Some(DaemonConfig::load(&path)?))
}

fn required_config(flag: Option<&Path>) -> Result<DaemonConfig> {
    let path = config::config_path(flag);
    Ok(DaemonConfig::load(&path)?)
}

/// Parses job files the way the daemon will; without a config, path roots are not enforced.
fn check_job_file(config: Option<&DaemonConfig>, file: &Path) -> Result<jobs::JobSpec, String> {
    let (templates_dir, roots) = match config {
        Some(config) => (config.templates_dir(), config.roots()),
        None => (
            config::default_templates_dir(),
            jobs::Roots {
                inputs: vec![PathBuf::from("/")],
                outputs: vec![PathBuf::from("/")],
            },
        ),
    };
    let context = jobs::ParseContext {
        templates_dir: Some(&templates_dir),
        roots: &roots,
    };
    jobs::load_job_file(file, &context).map_err(|err| err.to_string())
}

pub fn validate(config_flag: Option<&Path>, files: &[PathBuf]) -> Result<ExitCode> {
    let config = optional_config(config_flag)?;
    if config.is_none() {
        eprintln!(
            "note: no config at {}; checking without allowed_roots (pass --config FILE to check them)",
            config::DEFAULT_CONFIG_PATH
        );
    }
    let mut invalid = 0;
    for file in files {
        match check_job_file(config.as_ref(), file) {
            Ok(spec) => println!(
                "ok: {} (job `{}`)",
                escape_text(&file.display().to_string()),
                spec.name
            ),
            Err(report) => {
                invalid += 1;
                eprintln!("{}", jobs::escape_lines(report.trim_end()));
            }
        }
    }
    if invalid > 0 {
        eprintln!("{invalid} of {} job file(s) invalid", files.len());
        return Ok(ExitCode::from(1));
    }
    Ok(ExitCode::SUCCESS)
}

pub fn submit(config_flag: Option<&Path>, file: &Path, spool: Option<&Path>) -> Result<ExitCode> {
    let config = optional_config(config_flag)?;
    if let Err(report) = check_job_file(config.as_ref(), file) {
        eprintln!("{}", jobs::escape_lines(report.trim_end()));
        return Ok(ExitCode::from(1));
    }
    let spool_dir = match (spool, &config) {
        (Some(dir), _) => dir.to_path_buf(),
        (None, Some(config)) => config.spool_dir.clone(),
        (None, None) => bail!(
            "no spool to submit to: pass --spool DIR or --config FILE (no config at {})",
            config::DEFAULT_CONFIG_PATH
        ),
    };
    let bytes = std::fs::read(file).with_context(|| format!("cannot read {}", file.display()))?;
    let written = spool::deliver_to_spool(&spool_dir, file, &bytes)?;
    println!("{}", escape_text(&written.display().to_string()));
    Ok(ExitCode::SUCCESS)
}

pub fn check_config(config_flag: Option<&Path>) -> Result<ExitCode> {
    let path = config::config_path(config_flag);
    match DaemonConfig::load(&path) {
        Ok(config) => {
            println!("ok: {}", path.display());
            println!("  spool_dir: {}", config.spool_dir.display());
            println!("  state_dir: {}", config.state_dir.display());
            println!("  templates: {}", config.templates_dir().display());
            Ok(ExitCode::SUCCESS)
        }
        Err(err) => {
            eprintln!("{err}");
            Ok(ExitCode::from(1))
        }
    }
}

/// Finds a job by id or unique id prefix.
/// Finds one job by its id, a unique prefix of it, or its name. An id or a prefix costs a
/// listing of the folder names; only a name needs the queue index (or, without one, every
/// job's state).
pub(crate) fn find_job(jobs_dir: &Path, wanted: &str) -> Result<JobState> {
    if let Ok(id) = wanted.parse::<JobId>() {
        let dir = JobDir::new(jobs_dir.join(id.as_str()));
        if dir.state_json().is_file() {
            return Ok(dir.load_state()?);
        }
    }
    let by_prefix: Vec<JobId> = jobs::index::job_folder_ids(jobs_dir)?
        .into_iter()
        .filter(|id| id.as_str().starts_with(wanted))
        .collect();
    let matches: Vec<JobId> = if by_prefix.is_empty() {
        index_entries(jobs_dir)?
            .into_iter()
            .filter(|entry| entry.name == wanted)
            .map(|entry| entry.id)
            .collect()
    } else {
        by_prefix
    };
    match matches.as_slice() {
        [] => bail!("no job `{wanted}` in {}", jobs_dir.display()),
        [id] => Ok(JobDir::new(jobs_dir.join(id.as_str())).load_state()?),
        many => bail!(
            "`{wanted}` matches {} jobs; give more of the id",
            many.len()
        ),
    }
}

/// Every job as the queue index has it, checked against the job folders (read-only: the
/// daemon keeps the index; without one this reads every job's state).
pub(crate) fn index_entries(jobs_dir: &Path) -> Result<Vec<IndexEntry>> {
    let state_dir = jobs_dir.parent().unwrap_or(Path::new("."));
    let reconciled = jobs::index::reconcile(
        &state_dir.join(jobs::index::INDEX_FILE),
        jobs_dir,
        |_, _| None,
    )?;
    Ok(reconciled.entries.into_values().collect())
}

/// Which jobs `status` lists.
#[derive(Debug, Clone, Default)]
pub struct StatusFilter {
    /// Only jobs in these phases (all when empty).
    pub phases: Vec<Phase>,
    /// At most this many, oldest first.
    pub limit: Option<usize>,
}

/// Parses a `--state` value: a phase name.
pub fn parse_phase(text: &str) -> std::result::Result<Phase, String> {
    [
        Phase::Queued,
        Phase::Running,
        Phase::Done,
        Phase::Failed,
        Phase::Cancelled,
    ]
    .into_iter()
    .find(|phase| phase.as_str() == text)
    .ok_or_else(|| {
        format!("`{text}` is not a job state; use queued, running, done, failed or cancelled")
    })
}

pub fn status(
    config_flag: Option<&Path>,
    id: Option<&str>,
    json: bool,
    filter: &StatusFilter,
) -> Result<ExitCode> {
    let config = required_config(config_flag)?;
    if crate::control::must_ask_daemon(&config.state_dir) {
        crate::control::status(&config.spool_dir, id, json, filter)?;
        return Ok(ExitCode::SUCCESS);
    }
    let jobs_dir = config.state_dir.join("jobs");
    if let Some(wanted) = id {
        let job = find_job(&jobs_dir, wanted)?;
        let dir = JobDir::new(jobs_dir.join(job.id.to_string()));
        let events = dir.read_events().unwrap_or_default();
        let notices = notice_statuses(&config.state_dir, &job.id.to_string());
        if json {
            let value = serde_json::json!({ "job": job, "events": events, "notices": notices });
            println!("{}", serde_json::to_string_pretty(&value)?);
        } else {
            print_job_details(&job, &events);
            print_notices(&notices);
        }
        return Ok(ExitCode::SUCCESS);
    }
    let entries = index_entries(&jobs_dir)?;
    let selected = entries
        .iter()
        .filter(|entry| filter.phases.is_empty() || filter.phases.contains(&entry.phase))
        .take(filter.limit.unwrap_or(usize::MAX));
    if json {
        // The full state of each listed job: the index keeps only what the table shows.
        let all: Vec<JobState> = selected
            .filter_map(|entry| {
                JobDir::new(jobs_dir.join(entry.id.as_str()))
                    .load_state()
                    .ok()
            })
            .collect();
        println!("{}", serde_json::to_string_pretty(&all)?);
    } else {
        let all: Vec<JobState> = selected.map(IndexEntry::to_state).collect();
        print_table(&all);
    }
    Ok(ExitCode::SUCCESS)
}

/// The job's notice deliveries, read from the outbox without touching the daemon.
pub(crate) fn notice_statuses(state_dir: &Path, job_id: &str) -> Vec<notices::DeliveryStatus> {
    let outbox_dir = state_dir.join("outbox");
    if !outbox_dir.is_dir() {
        return Vec::new();
    }
    notices::Outbox::open(&outbox_dir)
        .and_then(|outbox| outbox.status_for_job(job_id))
        .unwrap_or_default()
}

pub(crate) fn print_notices(statuses: &[notices::DeliveryStatus]) {
    if statuses.is_empty() {
        return;
    }
    println!("notices:");
    for status in statuses {
        let state = match status.state {
            notices::DeliveryState::Pending => "pending",
            notices::DeliveryState::Delivered => "delivered",
            notices::DeliveryState::PermanentFailure => "FAILED PERMANENTLY",
        };
        let channel = format!("{:?}", status.channel).to_lowercase();
        print!(
            "  {:<9} {:<7} {:<40} {} (attempts: {})",
            status.event.as_str(),
            channel,
            escape_text(&status.target),
            state,
            status.attempts
        );
        match &status.last_error {
            Some(error) => println!(": {}", escape_text(error)),
            None => println!(),
        }
    }
}

fn phase_name(phase: Phase) -> &'static str {
    match phase {
        Phase::Queued => "queued",
        Phase::Running => "running",
        Phase::Done => "done",
        Phase::Failed => "failed",
        Phase::Cancelled => "cancelled",
    }
}

/// The state column: the phase, flagged when a notice about the job failed for good.
fn state_label(job: &JobState) -> String {
    let notice_failures = job
        .details
        .get("notice_failures")
        .and_then(|v| v.as_u64())
        .unwrap_or(0);
    if notice_failures > 0 {
        format!("{}!", phase_name(job.phase))
    } else {
        phase_name(job.phase).to_string()
    }
}

fn clip_progress(job: &JobState) -> String {
    match job.clips_total {
        Some(total) => format!("{}/{}", job.clips_done, total),
        None if job.clips_done > 0 => format!("{}/?", job.clips_done),
        None => "-".to_string(),
    }
}

/// Seconds as "1h02m", "3m05s" or "42s".
pub fn human_secs(secs: f64) -> String {
    let total = secs.max(0.0).round() as u64;
    let (hours, minutes, seconds) = (total / 3600, (total / 60) % 60, total % 60);
    if hours > 0 {
        format!("{hours}h{minutes:02}m")
    } else if minutes > 0 {
        format!("{minutes}m{seconds:02}s")
    } else {
        format!("{seconds}s")
    }
}

pub(crate) fn print_table(all: &[JobState]) {
    if all.is_empty() {
        println!("no jobs");
        return;
    }
    let now = state::now_ms();
    println!(
        "{:<26} {:<24} {:<10} {:>5} {:<20} {:>9} {:>7} {:>7} OWNER",
        "ID", "NAME", "STATE", "PRIO", "GPU", "CLIP", "ETA", "AGE"
    );
    let flagged = all
        .iter()
        .filter(|job| state_label(job).ends_with('!'))
        .count();
    for job in all {
        let eta = match (job.phase, job.eta_secs) {
            (Phase::Running, Some(eta)) => human_secs(eta),
            _ => "-".to_string(),
        };
        let age = human_secs(now.saturating_sub(job.submitted_at_ms) as f64 / 1000.0);
        let mut name = escape_text(&job.name).into_owned();
        if name.chars().count() > 24 {
            name = name.chars().take(23).collect::<String>() + "…";
        }
        let owner = job
            .owner
            .as_ref()
            .map_or_else(|| "-".to_string(), |owner| owner.name.clone());
        println!(
            "{:<26} {:<24} {:<10} {:>5} {:<20} {:>9} {:>7} {:>7} {}",
            job.id.to_string(),
            name,
            state_label(job),
            job.priority,
            escape_text(job.gpu.as_deref().unwrap_or("-")),
            clip_progress(job),
            eta,
            age,
            owner
        );
    }
    if flagged > 0 {
        println!("! = a notice about the job failed permanently; `reelspool status ID` shows why");
    }
}

/// Everything printed here may hold user text (file names, paths, messages quoting them), so
/// it goes through [`escape_text`]; event fields are JSON, whose escaping misses DEL, C1 and
/// bidi controls, so the JSON text is escaped as well.
pub(crate) fn print_job_details(job: &JobState, events: &[JobEvent]) {
    println!("id:        {}", job.id);
    println!("name:      {}", escape_text(&job.name));
    println!("state:     {}", phase_name(job.phase));
    println!("priority:  {}", job.priority);
    if let Some(owner) = &job.owner {
        println!("owner:     {}", escape_text(&owner.to_string()));
    }
    println!("source:    {}", escape_text(&job.source_file));
    println!(
        "gpu:       {}",
        escape_text(job.gpu.as_deref().unwrap_or("-"))
    );
    println!("clips:     {}", clip_progress(job));
    if let Some(line) = resumed_from(events) {
        println!("resumed:   {}", escape_text(&line));
    }
    println!(
        "attempts:  {} ({} in a row without a new clip)",
        job.attempts, job.stalled_attempts
    );
    if let Some(at) = job.retry_at_ms.filter(|_| job.phase == Phase::Queued) {
        let wait = at.saturating_sub(state::now_ms()) as f64 / 1000.0;
        println!("retry in:  {}", human_secs(wait));
    }
    if let Some(eta) = job.eta_secs {
        println!("eta:       {}", human_secs(eta));
    }
    if let Some(bytes) = job.vram_estimate_bytes {
        println!("vram est.: {:.1} GB", bytes as f64 / 1e9);
    }
    if let Some(output) = &job.output {
        println!("output:    {}", escape_text(&output.display().to_string()));
    }
    if let Some(error) = &job.error {
        println!("error:     {}", escape_text(error));
    }
    if let Some(wait) = job
        .details
        .get("waiting_for_space")
        .and_then(|v| v.as_str())
        .filter(|_| job.phase == Phase::Queued)
    {
        println!("waiting:   disk full: {wait}");
    }
    print_attempt_ends(events);
    println!("events (last 20):");
    let skip = events.len().saturating_sub(20);
    for event in &events[skip..] {
        let fields = serde_json::Value::Object(event.fields.clone());
        println!(
            "  {} {:<16} {}",
            event.ts_ms,
            escape_text(&event.event),
            escape_text(&fields.to_string())
        );
    }
}

/// Where the latest attempt started, when it resumed: the clip after the newest checkpoint,
/// and why an older checkpoint was used if the newest one was not.
fn resumed_from(events: &[JobEvent]) -> Option<String> {
    let start = events
        .iter()
        .rposition(|event| event.event == "started" || event.event == "resumed")?;
    let event = &events[start];
    if event.event != "resumed" {
        return None;
    }
    let clip = event.fields.get("next_clip").and_then(|v| v.as_u64())?;
    let total = event.fields.get("clips_total").and_then(|v| v.as_u64());
    let mut line = match total {
        Some(total) => format!("clip {clip} of {total} (the clip after the newest checkpoint)"),
        None => format!("clip {clip} (the clip after the newest checkpoint)"),
    };
    let fallback = events[start..]
        .iter()
        .find(|event| event.event == "checkpoint_fallback")
        .and_then(|event| event.fields.get("detail"))
        .and_then(|v| v.as_str());
    if let Some(why) = fallback {
        line.push_str(&format!("; {why}"));
    }
    Some(line)
}

/// One line per finished attempt (the last 10), from the `worker_exit` events: how it ended
/// and whether it made a new clip durable.
fn print_attempt_ends(events: &[JobEvent]) {
    let ends: Vec<&JobEvent> = events
        .iter()
        .filter(|event| event.event == "worker_exit")
        .collect();
    if ends.is_empty() {
        return;
    }
    println!("attempt ends (last 10 of {}):", ends.len());
    for event in &ends[ends.len().saturating_sub(10)..] {
        let field = |key: &str| event.fields.get(key);
        let attempt = field("attempt").and_then(|v| v.as_u64()).unwrap_or(0);
        let progress = match field("progressed").and_then(|v| v.as_bool()) {
            Some(true) => "progressed",
            Some(false) => "no progress",
            None => "progress unknown",
        };
        let durable = field("durable_clips").and_then(|v| v.as_u64()).unwrap_or(0);
        let end = field("end").and_then(|v| v.as_str()).unwrap_or("?");
        println!("  #{attempt:<4} {progress:<16} {durable:>5} clips durable  {end}");
    }
}

pub fn cancel(config_flag: Option<&Path>, wanted: &str, wait_secs: u64) -> Result<ExitCode> {
    let config = required_config(config_flag)?;
    if crate::control::must_ask_daemon(&config.state_dir) {
        crate::control::cancel(&config.spool_dir, wanted, wait_secs)?;
        return Ok(ExitCode::SUCCESS);
    }
    let jobs_dir = config.state_dir.join("jobs");
    let job = find_job(&jobs_dir, wanted)?;
    if job.phase.is_terminal() {
        println!("job {} is already {}", job.id, phase_name(job.phase));
        return Ok(ExitCode::SUCCESS);
    }
    let dir = JobDir::new(jobs_dir.join(job.id.to_string()));
    state::write_atomic(&dir.cancel_request(), b"cancel\n")
        .with_context(|| format!("cannot write {}", dir.cancel_request().display()))?;
    // Without a daemon nobody else touches the job: cancel it here.
    if let Some(_lock) = spool::try_lock_state(&config.state_dir)? {
        if !config.executor.is_local() {
            // Its batch job runs on in Slurm without the daemon: cancel that too.
            if let Some(slurm_job) = crate::executor::slurm::cancel_recorded(dir.root())? {
                println!("cancelled Slurm job {slurm_job}");
            }
        }
        let cancelled = daemon::mark_cancelled(&dir, "cancelled while the daemon was not running")?;
        jobs::index::append_standalone(
            &config.state_dir.join(jobs::index::INDEX_FILE),
            &cancelled,
        )?;
        println!("job {} cancelled", job.id);
        return Ok(ExitCode::SUCCESS);
    }
    cancels::request(&config.state_dir, &job.id).with_context(|| {
        format!(
            "cannot leave the cancel request in {}",
            cancels::requests_dir(&config.state_dir).display()
        )
    })?;
    let deadline = Instant::now() + Duration::from_secs(wait_secs);
    loop {
        let current = dir.load_state()?;
        if current.phase.is_terminal() {
            println!("job {} {}", job.id, phase_name(current.phase));
            return Ok(ExitCode::SUCCESS);
        }
        if Instant::now() >= deadline {
            println!(
                "cancel of job {} requested; the daemon has not confirmed it yet",
                job.id
            );
            return Ok(ExitCode::SUCCESS);
        }
        std::thread::sleep(Duration::from_millis(100));
    }
}

/// `reelspool priority ID N`: like `cancel`, through the daemon for members, directly on the
/// job when no daemon runs, and otherwise by leaving a request for the daemon's scheduler and
/// waiting until the job's state shows the new number.
pub fn priority(
    config_flag: Option<&Path>,
    wanted: &str,
    priority: i64,
    wait_secs: u64,
) -> Result<ExitCode> {
    let config = required_config(config_flag)?;
    let new = crate::priorities::check_range(priority)?;
    if crate::control::must_ask_daemon(&config.state_dir) {
        crate::control::priority(&config.spool_dir, wanted, priority, wait_secs)?;
        return Ok(ExitCode::SUCCESS);
    }
    let jobs_dir = config.state_dir.join("jobs");
    let job = find_job(&jobs_dir, wanted)?;
    crate::priorities::check_not_finished(&job)?;
    let dir = JobDir::new(jobs_dir.join(job.id.to_string()));
    // SAFETY: geteuid cannot fail and touches no memory.
    let by = crate::owner::look_up(unsafe { libc::geteuid() }).to_string();
    if let Some(_lock) = spool::try_lock_state(&config.state_dir)? {
        // Without a daemon nobody else touches the job: change it here.
        let (saved, from) = crate::priorities::apply_offline(&dir, new, Some(&by))?;
        jobs::index::append_standalone(&config.state_dir.join(jobs::index::INDEX_FILE), &saved)?;
        println!("job {} priority {new} (was {from})", job.id);
        return Ok(ExitCode::SUCCESS);
    }
    crate::priorities::request(
        &config.state_dir,
        &job.id,
        &crate::priorities::PriorityRequest {
            priority: new,
            by: Some(by),
        },
    )?;
    let deadline = Instant::now() + Duration::from_secs(wait_secs);
    loop {
        let current = dir.load_state()?;
        if current.priority == new {
            println!("job {} priority {new} (was {})", job.id, job.priority);
            return Ok(ExitCode::SUCCESS);
        }
        if current.phase.is_terminal() {
            println!(
                "job {} {} before its priority changed (still {})",
                job.id,
                phase_name(current.phase),
                current.priority
            );
            return Ok(ExitCode::SUCCESS);
        }
        if Instant::now() >= deadline {
            println!(
                "priority {new} for job {} requested; the daemon has not applied it yet",
                job.id
            );
            return Ok(ExitCode::SUCCESS);
        }
        std::thread::sleep(Duration::from_millis(100));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn human_secs_picks_the_largest_useful_unit() {
        assert_eq!(human_secs(42.4), "42s");
        assert_eq!(human_secs(185.0), "3m05s");
        assert_eq!(human_secs(3720.0), "1h02m");
    }
}
