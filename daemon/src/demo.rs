//! `reelspool demo`: the whole product in one command.
//!
//! It lays out a private spool and state dir, writes a config with a one-slot CPU pool, points
//! `examples/hello.yaml` at the portrait and speech shipped beside it, submits it through the
//! spool exactly as a user would, runs the real daemon (which starts a real worker process)
//! until the job ends, and prints where the video is.

use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};
use jobs::state::{self, Phase};

use crate::config::DaemonConfig;

/// The longest the demo waits for its job before giving up.
const DEMO_TIMEOUT: Duration = Duration::from_secs(900);

/// Where the example job and its media live: the source tree during development, or
/// /usr/share/reelspool/examples when installed.
fn examples_dir() -> Result<PathBuf> {
    let source_tree = Path::new(env!("CARGO_MANIFEST_DIR")).join("../examples");
    let installed = PathBuf::from("/usr/share/reelspool/examples");
    let installed_binary = std::env::current_exe()
        .map(|exe| exe.starts_with("/usr/"))
        .unwrap_or(false);
    let order = if installed_binary {
        [installed, source_tree]
    } else {
        [source_tree, installed]
    };
    for dir in order {
        if dir.join("hello.yaml").is_file() {
            return dir
                .canonicalize()
                .with_context(|| format!("cannot resolve {}", dir.display()));
        }
    }
    bail!("cannot find examples/hello.yaml (looked in the source tree and /usr/share/reelspool/examples)")
}

/// Writes the demo's config and job file; returns (config, job file).
fn prepare(root: &Path) -> Result<(DaemonConfig, PathBuf)> {
    let examples = examples_dir()?;
    let out_dir = root.join("out");
    for dir in ["spool", "state", "logs", "out"] {
        std::fs::create_dir_all(root.join(dir))
            .with_context(|| format!("cannot create {}", root.join(dir).display()))?;
    }
    let config_text = format!(
        "spool_dir: {root}/spool\nstate_dir: {root}/state\nlog_dir: {root}/logs\n\
         allowed_roots:\n  inputs: [{examples}]\n  outputs: [{out}]\n\
         gpu_pool: {{ kind: cpu, slots: 1 }}\n",
        root = root.display(),
        examples = examples.display(),
        out = out_dir.display(),
    );
    let config_path = root.join("reelspool.yaml");
    std::fs::write(&config_path, &config_text)
        .with_context(|| format!("cannot write {}", config_path.display()))?;
    let config = DaemonConfig::parse(&config_path.display().to_string(), &config_text)?;
    crate::spool::Layout::new(&config.spool_dir, &config.state_dir)
        .create()
        .context("cannot create the demo's spool")?;

    let job_text = std::fs::read_to_string(examples.join("hello.yaml"))
        .context("cannot read examples/hello.yaml")?;
    let mut job: serde_yaml::Value =
        serde_yaml::from_str(&job_text).context("examples/hello.yaml is not valid YAML")?;
    let set = |value: &mut serde_yaml::Value, section: &str, key: &str, path: PathBuf| {
        if let Some(map) = value.get_mut(section).and_then(|v| v.as_mapping_mut()) {
            map.insert(key.into(), path.display().to_string().into());
        }
    };
    set(&mut job, "inputs", "image", examples.join("portrait.png"));
    set(&mut job, "inputs", "audio", examples.join("hello.wav"));
    set(&mut job, "output", "path", out_dir.join("hello.mp4"));
    // Running the demo again in the same `--dir` replaces the video it made last time.
    if let Some(output) = job.get_mut("output").and_then(|v| v.as_mapping_mut()) {
        output.insert("overwrite".into(), true.into());
    }
    let job_path = root.join("hello.yaml");
    std::fs::write(&job_path, serde_yaml::to_string(&job)?)
        .with_context(|| format!("cannot write {}", job_path.display()))?;
    Ok((config, job_path))
}

pub fn run(dir: Option<&Path>) -> Result<ExitCode> {
    crate::logging::init_stderr();
    let temp;
    let root = match dir {
        Some(dir) => {
            std::fs::create_dir_all(dir)?;
            dir.canonicalize()?
        }
        None => {
            temp = tempfile::Builder::new()
                .prefix("reelspool-demo-")
                .tempdir()
                .context("cannot create a temporary directory")?;
            // Keep the directory: the video is the point of the demo.
            temp.keep()
        }
    };
    println!("reelspool demo in {}", root.display());
    let (config, job_path) = prepare(&root)?;
    let submitted =
        crate::spool::deliver_to_spool(&config.spool_dir, &job_path, &std::fs::read(&job_path)?)?;
    println!("submitted {}", submitted.display());

    let jobs_dir = config.state_dir.join("jobs");
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .context("cannot start the async runtime")?;
    let started = Instant::now();
    let outcome = runtime.block_on(async {
        let (done_tx, done_rx) = tokio::sync::oneshot::channel::<()>();
        let daemon = tokio::spawn(crate::daemon::run(config.clone(), async move {
            let _ = done_rx.await;
        }));
        let watched = watch_job(&jobs_dir, &config.spool_dir.join("rejected"), started).await;
        let _ = done_tx.send(());
        let stopped = daemon.await;
        match stopped {
            Ok(Ok(())) => {}
            Ok(Err(err)) => eprintln!("daemon error: {err:#}"),
            Err(err) => eprintln!("daemon task failed: {err}"),
        }
        watched
    })?;
    let dir = jobs::state::JobDir::new(jobs_dir.join(outcome.id.to_string()));
    match outcome.phase {
        Phase::Done => {
            let output = outcome
                .output
                .clone()
                .unwrap_or_else(|| root.join("out/hello.mp4"));
            println!();
            println!("done in {:.1} s", started.elapsed().as_secs_f64());
            println!("  video:    {}", output.display());
            if let Some(duration) = outcome
                .details
                .get("duration_secs")
                .and_then(|v| v.as_f64())
            {
                println!("  duration: {duration:.2} s");
            }
            if let Some(frames) = outcome.details.get("frames") {
                println!("  frames:   {frames}");
            }
            println!("  clips:    {}", outcome.clips_done);
            println!("  job dir:  {}", dir.root().display());
            println!("play it with: ffplay {}", output.display());
            Ok(ExitCode::SUCCESS)
        }
        phase => {
            eprintln!(
                "demo job ended {phase:?}: {}",
                outcome.error.as_deref().unwrap_or("no error recorded")
            );
            eprintln!("events: {}", dir.events_jsonl().display());
            Ok(ExitCode::from(1))
        }
    }
}

/// Waits for the demo's single job to end, drawing a progress bar of its clips.
async fn watch_job(
    jobs_dir: &Path,
    rejected_dir: &Path,
    started: Instant,
) -> Result<state::JobState> {
    let bar = indicatif::ProgressBar::new(1);
    bar.set_style(
        indicatif::ProgressStyle::with_template(
            "{spinner} {msg} [{bar:30}] clip {pos}/{len} {elapsed}",
        )
        .unwrap_or_else(|_| indicatif::ProgressStyle::default_bar()),
    );
    bar.set_message("queued");
    loop {
        if started.elapsed() > DEMO_TIMEOUT {
            bar.abandon();
            bail!("the demo job did not finish within {DEMO_TIMEOUT:?}");
        }
        if let Some(report) = first_error_file(rejected_dir) {
            bar.abandon();
            bail!("the demo job was rejected:\n{report}");
        }
        let jobs = if jobs_dir.is_dir() {
            state::list_jobs(jobs_dir).unwrap_or_default()
        } else {
            Vec::new()
        };
        if let Some(job) = jobs.into_iter().next() {
            if let Some(total) = job.clips_total {
                bar.set_length(u64::from(total));
            }
            bar.set_position(u64::from(job.clips_done));
            bar.set_message(format!("{:?}", job.phase).to_lowercase());
            if job.phase.is_terminal() {
                bar.finish();
                return Ok(job);
            }
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

fn first_error_file(rejected_dir: &Path) -> Option<String> {
    let entries = std::fs::read_dir(rejected_dir).ok()?;
    for entry in entries.flatten() {
        if entry.path().extension().is_some_and(|ext| ext == "error") {
            return std::fs::read_to_string(entry.path()).ok();
        }
    }
    None
}
