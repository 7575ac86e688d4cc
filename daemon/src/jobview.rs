//! How a job is found and shown: the read-and-print helpers every front end shares (the
//! commands, the control socket on both of its sides, the web server).
//!
//! Everything here reads a job's files (its state and events, the queue index, the notice
//! outbox) and writes nothing; what a job looks like in a table or in `reelspool status ID` is
//! decided here once, whoever asks and however the answer travels.

use std::path::Path;

use anyhow::{bail, Result};
use jobs::escape_text;
use jobs::index::IndexEntry;
use jobs::state::{self, JobDir, JobEvent, JobId, JobState, Phase};

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

pub(crate) fn phase_name(phase: Phase) -> &'static str {
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
/// A command engine's latest `progress`: `clip 3, step 2 of 8: denoising`.
pub(crate) fn engine_progress_line(progress: &serde_json::Value) -> String {
    let mut line = match progress["clip"].as_u64() {
        Some(clip) => format!("clip {clip}"),
        None => "clip ?".to_string(),
    };
    match (progress["step"].as_u64(), progress["total"].as_u64()) {
        (Some(step), Some(total)) => line.push_str(&format!(", step {step} of {total}")),
        (Some(step), None) => line.push_str(&format!(", step {step}")),
        _ => {}
    }
    if let Some(message) = progress["message"].as_str() {
        line.push_str(&format!(": {}", escape_text(message)));
    }
    line
}

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
    if let Some(batch) = &job.batch {
        println!("batch:     {batch} (`reelspool status --batch {batch}`)");
    }
    if let Some(progress) = job
        .details
        .get("engine_progress")
        .filter(|_| job.phase == Phase::Running)
    {
        println!("engine:    {}", engine_progress_line(progress));
    }
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
    if let Some(line) = job.details.get("memory_plan").and_then(memory_line) {
        println!("memory:    {line}");
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

/// A release job's memory plan (`details.memory_plan`, written by intake and placement) in
/// one line: `hybrid (5/40 blocks resident) bf16, 23.5 GiB on the GPU, 59.3 GiB of host memory`.
fn memory_line(plan: &serde_json::Value) -> Option<String> {
    let gib = |key: &str| {
        plan[key]
            .as_u64()
            .map(|bytes| bytes as f64 / (1u64 << 30) as f64)
    };
    let mode = plan["mode"].as_str()?;
    let mode = if mode == "hybrid" {
        format!(
            "hybrid ({}/{} blocks resident)",
            plan["resident_blocks"].as_u64()?,
            plan["blocks"].as_u64()?
        )
    } else {
        mode.to_string()
    };
    Some(format!(
        "{mode} {}, {:.1} GiB on the GPU, {:.1} GiB of host memory",
        plan["precision"].as_str()?,
        gib("device_bytes")?,
        gib("host_bytes")?
    ))
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
