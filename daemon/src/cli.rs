//! The client commands: they read the config and the state directory and never talk to the
//! daemon's memory. A job's files on disk are the whole truth (see `jobs::state`).

use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};
use jobs::escape_text;
use jobs::index::IndexEntry;
use jobs::state::{JobDir, JobState};

use crate::cancels::{self, Cancel};
use crate::config::{self, DaemonConfig};
use crate::jobview::{
    find_job, index_entries, notice_statuses, phase_name, print_job_details, print_notices,
    print_table, StatusFilter,
};
use crate::priorities::{self, Change};
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

/// Parses a job (or batch) file the way the daemon will; without a config, path roots are
/// not enforced. `Ok` names the job, or the batch and its size.
fn check_job_file(config: Option<&DaemonConfig>, file: &Path) -> Result<String, String> {
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
    let text = std::fs::read(file).unwrap_or_default();
    if std::str::from_utf8(&text).is_ok_and(jobs::is_batch) {
        let default_name = file
            .file_stem()
            .map(|stem| stem.to_string_lossy().into_owned())
            .unwrap_or_default();
        return jobs::parse_batch_bytes(
            &file.display().to_string(),
            &text,
            &default_name,
            &context,
        )
        .map(|batch| format!("batch `{}` of {} jobs", batch.name, batch.rows.len()))
        .map_err(|err| err.to_string());
    }
    jobs::load_job_file(file, &context)
        .map(|spec| format!("job `{}`", spec.name))
        .map_err(|err| err.to_string())
}

/// What the running daemon said of a file.
enum FarmCheck {
    /// It would file it (the summary names the job or batch).
    Passed,
    /// It would refuse it: the report, as intake would write it.
    Refused(String),
    /// No daemon answered; the reason.
    Unchecked(String),
}

/// Asks the daemon behind `spool_dir`'s control socket to check `file` against its farm: the
/// engines, memory profiles, cards and roots it runs with now.
fn check_with_daemon(spool_dir: Option<&Path>, file: &Path) -> FarmCheck {
    let Some(spool_dir) = spool_dir else {
        return FarmCheck::Unchecked(format!(
            "no config at {} names the spool",
            config::DEFAULT_CONFIG_PATH
        ));
    };
    let text = match std::fs::read_to_string(file) {
        Ok(text) => text,
        Err(err) => return FarmCheck::Unchecked(format!("cannot read {}: {err}", file.display())),
    };
    let request = crate::control::Request::Check {
        file: file.display().to_string(),
        text,
    };
    match crate::control::ask(spool_dir, &request) {
        Ok(answer) => match answer.get("refused").and_then(|r| r.as_str()) {
            Some(report) => FarmCheck::Refused(report.to_string()),
            None => FarmCheck::Passed,
        },
        Err(err) => FarmCheck::Unchecked(format!("{err:#}")),
    }
}

/// The note printed when no daemon could check the engines, cards and profiles.
fn unchecked_note(why: &str) {
    eprintln!(
        "note: not checked against a running daemon ({}): engine names, memory profiles, whether the job fits a card, and the output paths of queued jobs; the daemon checks them when the job is filed",
        escape_text(why)
    );
}

pub fn validate(config_flag: Option<&Path>, files: &[PathBuf]) -> Result<ExitCode> {
    let config = optional_config(config_flag)?;
    if config.is_none() {
        eprintln!(
            "note: no config at {}; checking without allowed_roots (pass --config FILE to check them)",
            config::DEFAULT_CONFIG_PATH
        );
    }
    let spool_dir = config.as_ref().map(|config| config.spool_dir.clone());
    let mut invalid = 0;
    let mut unchecked = None;
    for file in files {
        let report = match check_job_file(config.as_ref(), file) {
            Ok(what) => match check_with_daemon(spool_dir.as_deref(), file) {
                FarmCheck::Passed => {
                    println!(
                        "ok: {} ({what}; checked by the running daemon)",
                        escape_text(&file.display().to_string())
                    );
                    continue;
                }
                FarmCheck::Unchecked(why) => {
                    println!("ok: {} ({what})", escape_text(&file.display().to_string()));
                    unchecked = Some(why);
                    continue;
                }
                FarmCheck::Refused(report) => report,
            },
            Err(report) => report,
        };
        invalid += 1;
        eprintln!("{}", jobs::escape_lines(report.trim_end()));
    }
    if let Some(why) = unchecked {
        unchecked_note(&why);
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
    match check_with_daemon(Some(&spool_dir), file) {
        FarmCheck::Passed => {}
        FarmCheck::Refused(report) => {
            eprintln!("{}", jobs::escape_lines(report.trim_end()));
            eprintln!("not submitted: the running daemon would refuse it");
            return Ok(ExitCode::from(1));
        }
        FarmCheck::Unchecked(why) => unchecked_note(&why),
    }
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

/// The shapes `model check` plans: the release's usual small and large job.
const CHECK_SHAPES: [(u32, u32, u32); 2] = [(384, 256, 48), (704, 384, 48)];

/// `reelspool model check DIR`: the release check, then the memory plan of each usual job
/// shape on each card size of this machine's pool (the config's, or the default CPU pool).
pub fn model_check(config_flag: Option<&Path>, dir: &Path) -> Result<ExitCode> {
    use crate::placement::release_plan::{self, NoPlan};
    let report = wan::check::check_release(dir);
    println!("{report}");
    let pool = optional_config(config_flag)?
        .map(|config| config.gpu_pool)
        .unwrap_or_default();
    let devices = gpu_pool::discover(&pool)?;
    let host = pool.host_memory_bytes();
    let mut sizes: Vec<(u64, String)> = devices
        .iter()
        .map(|device| (device.memory_total_bytes, device.name.clone()))
        .collect();
    sizes.sort();
    sizes.dedup_by_key(|(bytes, _)| *bytes);
    println!(
        "memory plans (host memory {}; {:.0} GiB of each card kept for the CUDA context):",
        host.map_or_else(
            || "not counted".to_string(),
            |bytes| format!("{:.1} GiB", bytes as f64 / gpu_pool::GIB as f64)
        ),
        release_plan::CONTEXT_RESERVE_BYTES as f64 / gpu_pool::GIB as f64
    );
    let mut runnable = false;
    for (card_bytes, name) in &sizes {
        for (width, height, frames) in CHECK_SHAPES {
            let shape = jobs::index::ReleaseShape {
                dir: dir.to_path_buf(),
                sample_steps: 4,
                audio_seconds: 60.0,
                memory_mode: jobs::spec::MemoryModeSetting::Auto,
                precision: jobs::spec::PrecisionSetting::Auto,
            };
            let line = match release_plan::plan(&shape, width, height, frames, *card_bytes, host) {
                Ok(plans) => {
                    runnable = true;
                    plans.primary.summary()
                }
                Err(NoPlan::DoesNotFit(refusal)) => format!("does not fit: {refusal}"),
                Err(NoPlan::Unreadable(why)) => format!("cannot plan: {why}"),
            };
            println!(
                "  {name} ({:.1} GiB), {width}*{height}×{frames}: {line}",
                *card_bytes as f64 / gpu_pool::GIB as f64
            );
        }
    }
    if report.is_ok() && runnable {
        println!("a job could run on this release");
        Ok(ExitCode::SUCCESS)
    } else {
        if !report.is_ok() {
            println!("the release cannot be loaded: fix or re-download the files named above");
        } else {
            println!("no usual job shape fits any card of this machine");
        }
        Ok(ExitCode::from(1))
    }
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

/// `reelspool status --batch ID`: the batch's progress line, then its jobs.
pub fn status_batch(config_flag: Option<&Path>, batch: &str, json: bool) -> Result<ExitCode> {
    let config = required_config(config_flag)?;
    let value = if crate::control::must_ask_daemon(&config.state_dir) {
        crate::control::ask(
            &config.spool_dir,
            &crate::control::Request::Batch {
                batch: batch.to_string(),
            },
        )?
    } else {
        let record = crate::batches::find(&config.state_dir, batch)?;
        serde_json::to_value(crate::batches::BatchView::read(
            &config.state_dir.join("jobs"),
            record,
        ))?
    };
    if json {
        println!("{}", serde_json::to_string_pretty(&value)?);
        return Ok(ExitCode::SUCCESS);
    }
    let view: crate::batches::BatchView = serde_json::from_value(value)?;
    println!("{}", view.line());
    print_table(&view.members);
    Ok(ExitCode::SUCCESS)
}

/// `reelspool cancel --batch ID`: every unfinished job of the batch, through the one cancel
/// path; waits (up to `wait_secs`) until they have all ended.
pub fn cancel_batch(config_flag: Option<&Path>, batch: &str, wait_secs: u64) -> Result<ExitCode> {
    let config = required_config(config_flag)?;
    if crate::control::must_ask_daemon(&config.state_dir) {
        let value = crate::control::ask(
            &config.spool_dir,
            &crate::control::Request::CancelBatch {
                batch: batch.to_string(),
            },
        )?;
        println!(
            "batch {}: cancel requested for {} job(s)",
            escape_text(batch),
            value["cancel_requested"]
        );
        return Ok(ExitCode::SUCCESS);
    }
    let record = crate::batches::find(&config.state_dir, batch)?;
    let jobs_dir = config.state_dir.join("jobs");
    for id in &record.jobs {
        let dir = JobDir::new(jobs_dir.join(id.as_str()));
        let Ok(job) = dir.load_state() else { continue };
        cancels::cancel(&config.state_dir, &config.executor, &dir, &job)?;
    }
    let deadline = Instant::now() + Duration::from_secs(wait_secs);
    loop {
        let view = crate::batches::BatchView::read(&jobs_dir, record.clone());
        if view.ended() || Instant::now() >= deadline {
            println!("{}", view.line());
            if !view.ended() {
                println!("cancel requested; the daemon has not confirmed it for every job yet");
            }
            return Ok(ExitCode::SUCCESS);
        }
        std::thread::sleep(Duration::from_millis(100));
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
    let dir = JobDir::new(jobs_dir.join(job.id.to_string()));
    match cancels::cancel(&config.state_dir, &config.executor, &dir, &job)? {
        Cancel::AlreadyEnded(phase) => {
            println!("job {} is already {}", job.id, phase_name(phase));
            return Ok(ExitCode::SUCCESS);
        }
        Cancel::Done { slurm_job } => {
            if let Some(slurm_job) = slurm_job {
                println!("cancelled Slurm job {slurm_job}");
            }
            println!("job {} cancelled", job.id);
            return Ok(ExitCode::SUCCESS);
        }
        Cancel::Requested => {}
    }
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
    let new = priorities::check_range(priority)?;
    if crate::control::must_ask_daemon(&config.state_dir) {
        crate::control::priority(&config.spool_dir, wanted, priority, wait_secs)?;
        return Ok(ExitCode::SUCCESS);
    }
    let jobs_dir = config.state_dir.join("jobs");
    let job = find_job(&jobs_dir, wanted)?;
    let dir = JobDir::new(jobs_dir.join(job.id.to_string()));
    // SAFETY: geteuid cannot fail and touches no memory.
    let by = crate::owner::look_up(unsafe { libc::geteuid() }).to_string();
    match priorities::change(&config.state_dir, &dir, &job, new, by)? {
        Change::Applied { from } => {
            println!("job {} priority {new} (was {from})", job.id);
            return Ok(ExitCode::SUCCESS);
        }
        Change::Requested => {}
    }
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
