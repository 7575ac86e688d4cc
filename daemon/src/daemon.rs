//! The daemon: starts the tasks, passes a shutdown signal down, and stops them in order.
//!
//! ```text
//! inotify ─► intake ──(job ids)──► scheduler ──► supervisor per job ──► worker process
//!                                      ▲                 │
//!                                      └──(reports)──────┘
//! ```
//! SIGTERM/SIGINT: intake stops first (nothing new is accepted), then the scheduler tells every
//! supervisor to stop its worker (the worker checkpoints), waits for them, flushes notices, and
//! the process exits 0. The next start resumes every interrupted job at its next clip.

use std::fs::File;
use std::os::fd::AsRawFd;
use std::path::Path;
use std::process::ExitCode;
use std::sync::Arc;
use std::time::Duration;

use anyhow::{Context, Result};
use jobs::state::{now_ms, JobDir, JobEvent, Phase};
use notices::{Dispatcher, Outbox};
use tokio::sync::{mpsc, watch};
use tracing::{error, info, warn};

use crate::config::{self, DaemonConfig};
use crate::intake::{self, IntakeContext};
use crate::logging;
use crate::notify_glue::Notices;
use crate::scheduler::{self, Scheduler};
use crate::spool::Layout;

/// How long a stopping daemon waits for due notices to go out.
const NOTICE_FLUSH: Duration = Duration::from_secs(5);

/// Name of the lock file that marks a running daemon in the state dir.
const LOCK_FILE: &str = "daemon.lock";

/// Takes the daemon lock without waiting; `None` when another process holds it.
pub fn try_lock_state(state_dir: &Path) -> Result<Option<File>> {
    std::fs::create_dir_all(state_dir)
        .with_context(|| format!("cannot create state dir {}", state_dir.display()))?;
    let path = state_dir.join(LOCK_FILE);
    let file = std::fs::OpenOptions::new()
        .create(true)
        .truncate(false)
        .write(true)
        .open(&path)
        .with_context(|| format!("cannot open {}", path.display()))?;
    // SAFETY: flock only reads the descriptor, which lives as long as `file`.
    let rc = unsafe { libc::flock(file.as_raw_fd(), libc::LOCK_EX | libc::LOCK_NB) };
    if rc == 0 {
        Ok(Some(file))
    } else {
        let err = std::io::Error::last_os_error();
        if err.raw_os_error() == Some(libc::EWOULDBLOCK) {
            Ok(None)
        } else {
            Err(err).with_context(|| format!("cannot lock {}", path.display()))
        }
    }
}

/// Cancels a job that no worker is running.
pub fn mark_cancelled(dir: &JobDir, reason: &str) -> Result<()> {
    let mut state = dir.load_state()?;
    if state.phase.is_terminal() {
        return Ok(());
    }
    state.phase = Phase::Cancelled;
    state.finished_at_ms = Some(now_ms());
    state.eta_secs = None;
    dir.save_state(&state)?;
    let mut fields = serde_json::Map::new();
    fields.insert("reason".into(), reason.into());
    dir.append_event(&JobEvent {
        ts_ms: now_ms(),
        event: "cancelled".into(),
        fields,
    })?;
    Ok(())
}

pub fn run_from_cli(config_flag: Option<&Path>) -> Result<ExitCode> {
    let path = config::config_path(config_flag);
    let config = match DaemonConfig::load(&path) {
        Ok(config) => config,
        Err(err) => {
            eprintln!("{err}");
            return Ok(ExitCode::from(1));
        }
    };
    let _log_guard = logging::init_daemon(&config.log_dir);
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .thread_name("reelspool")
        .build()
        .context("cannot start the async runtime")?;
    runtime.block_on(async {
        // Handlers go in before anything else, so a SIGTERM that arrives during start-up
        // stops the daemon cleanly instead of killing it.
        let stop = stop_signal().context("cannot install signal handlers")?;
        run(config, stop).await
    })?;
    Ok(ExitCode::SUCCESS)
}

/// Runs the daemon until `stop` completes (SIGTERM or SIGINT for the real daemon).
pub async fn run(config: DaemonConfig, stop: impl std::future::Future<Output = ()>) -> Result<()> {
    let layout = Layout::new(&config.spool_dir, &config.state_dir);
    layout.create().with_context(|| {
        format!(
            "cannot create spool/state directories under {} and {}",
            config.spool_dir.display(),
            config.state_dir.display()
        )
    })?;
    let Some(_lock) = try_lock_state(&config.state_dir)? else {
        anyhow::bail!(
            "another reelspool daemon is already using {}; stop it first",
            config.state_dir.display()
        );
    };
    let config = Arc::new(config);
    let outbox_dir = config.state_dir.join("outbox");
    let mut dispatcher = Dispatcher::new(
        Outbox::open(&outbox_dir).context("cannot open the notice outbox")?,
        config.notices.clone(),
    )
    .context("invalid `notices:` configuration")?;
    if let Some(credentials) = std::env::var_os("CREDENTIALS_DIRECTORY") {
        dispatcher = dispatcher.with_credentials_dir(credentials);
    }
    let notices = Notices {
        outbox: Outbox::open(&outbox_dir).context("cannot open the notice outbox")?,
        handle: dispatcher.handle(),
        default_email: config.notices.default_email.clone(),
    };
    let scheduler = Scheduler::start_up(Arc::clone(&config), layout.clone(), notices)?;
    let context = Arc::new(IntakeContext {
        layout: layout.clone(),
        templates_dir: config.templates_dir(),
        roots: config.roots(),
        admission: scheduler.admission(),
    });

    let (shutdown_tx, shutdown_rx) = watch::channel(false);
    let (signal_tx, signal_rx) = mpsc::unbounded_channel();
    let (accepted_tx, accepted_rx) = mpsc::unbounded_channel();

    // Watch before the first scan, so a file dropped in between is seen by one or the other.
    let _watcher = intake::start_watcher(&layout.incoming, signal_tx)
        .with_context(|| format!("cannot watch {}", layout.incoming.display()))?;
    let recover_context = Arc::clone(&context);
    let recovered = tokio::task::spawn_blocking(move || intake::recover(&recover_context))
        .await
        .context("recovery task failed")?
        .context("cannot recover the spool after a crash")?;
    for id in recovered.accepted {
        let _ = accepted_tx.send(id);
    }

    let intake_task = tokio::spawn(intake::run(
        Arc::clone(&context),
        signal_rx,
        accepted_tx,
        shutdown_rx.clone(),
    ));
    let (delivery_tx, delivery_rx) = mpsc::channel(1024);
    // The dispatcher outlives the scheduler: it gets its own stop signal, sent last.
    let (notices_stop_tx, notices_stop_rx) = watch::channel(false);
    let dispatcher_task = tokio::spawn(dispatcher.run(notices_stop_rx, delivery_tx));
    let scheduler_task = tokio::spawn(scheduler::run(
        scheduler,
        accepted_rx,
        delivery_rx,
        shutdown_rx.clone(),
    ));
    info!(
        spool = %config.spool_dir.display(),
        state = %config.state_dir.display(),
        "reelspool daemon ready"
    );
    let _ = sd_notify::notify(false, &[sd_notify::NotifyState::Ready]);

    stop.await;
    info!("stopping: intake first, then workers");
    let _ = sd_notify::notify(false, &[sd_notify::NotifyState::Stopping]);
    let _ = shutdown_tx.send(true);
    if let Err(err) = intake_task.await {
        error!(error = %err, "intake task failed");
    }
    match scheduler_task.await {
        Ok(Ok(())) => {}
        Ok(Err(err)) => warn!(error = %err, "scheduler stopped with an error"),
        Err(err) => error!(error = %err, "scheduler task failed"),
    }
    flush_notices(&outbox_dir).await;
    let _ = notices_stop_tx.send(true);
    if let Err(err) = dispatcher_task.await {
        error!(error = %err, "notice dispatcher failed");
    }
    info!("reelspool daemon stopped");
    Ok(())
}

/// Gives deliveries that are due a short while to go out before the daemon exits. Whatever is
/// still pending stays in the outbox and is sent after the next start.
async fn flush_notices(outbox_dir: &Path) {
    let deadline = tokio::time::Instant::now() + NOTICE_FLUSH;
    let Ok(outbox) = Outbox::open(outbox_dir) else {
        return;
    };
    while tokio::time::Instant::now() < deadline {
        match outbox.pending() {
            Ok(pending) if pending.is_empty() => return,
            Ok(_) => tokio::time::sleep(Duration::from_millis(50)).await,
            Err(_) => return,
        }
    }
    info!("notices still pending at stop stay in the outbox for the next start");
}

/// Installs the SIGTERM and SIGINT handlers now; the returned future completes on either.
pub fn stop_signal() -> std::io::Result<impl std::future::Future<Output = ()>> {
    use tokio::signal::unix::{signal, SignalKind};
    let mut terminate = signal(SignalKind::terminate())?;
    let mut interrupt = signal(SignalKind::interrupt())?;
    Ok(async move {
        tokio::select! {
            _ = terminate.recv() => {}
            _ = interrupt.recv() => {}
        }
    })
}
