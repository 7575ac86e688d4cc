//! The daemon: starts the tasks, passes a shutdown signal down, and stops them in order.
//!
//! ```text
//! inotify ─► intake ──(job ids)──► scheduler ──► supervisor per job ──► worker process
//!                                      ▲                 │
//!                                      └──(reports)──────┘
//! ```
//! SIGTERM/SIGINT: intake stops first (nothing new is accepted), then the scheduler tells every
//! supervisor to stop its worker (the worker checkpoints; a worker that takes longer than
//! `worker.stop_timeout_secs` is killed and loses only its current clip), waits for them, flushes
//! notices, and the process exits 0. The next start resumes every interrupted job at its next
//! clip. SIGHUP re-reads the config file (see `reload`). systemd hears about all of it through
//! the notify socket (see `systemd`).

use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::sync::{Arc, PoisonError, RwLock};
use std::time::Duration;

use anyhow::{Context, Result};
use jobs::state::now_ms;
use notices::{DeliveryReport, Dispatcher, Outbox};
use sd_notify::NotifyState;
use tokio::signal::unix::{signal, Signal, SignalKind};
use tokio::sync::{mpsc, watch};
use tokio::task::JoinHandle;
use tracing::{error, info, warn};

use crate::config::{self, DaemonConfig};
use crate::intake::{self, IntakeContext};
use crate::logging;
use crate::notify_glue::Notices;
use crate::reload::{self, Reconfigure};
use crate::scheduler::{self, Scheduler};
use crate::spool::{try_lock_state, Layout};
use crate::systemd::{self, SchedulerVitals, ServiceManager};

/// How long a stopping daemon waits for due notices to go out.
const NOTICE_FLUSH: Duration = Duration::from_secs(5);

/// The notice outbox, under the state dir.
const OUTBOX_DIR: &str = "outbox";

pub fn run_from_cli(config_flag: Option<&Path>) -> Result<ExitCode> {
    // First, while this is the only thread: it edits the environment.
    let manager = Arc::new(ServiceManager::from_environment());
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
        // stops the daemon cleanly instead of killing it, and an early SIGHUP (whose default
        // action ends the process) is only a reload.
        let stop = stop_signal().context("cannot install signal handlers")?;
        let hangup = signal(SignalKind::hangup()).context("cannot install the SIGHUP handler")?;
        let reloads = Reloads {
            config_path: path,
            hangup,
        };
        serve(config, manager, stop, Some(reloads)).await
    })?;
    Ok(ExitCode::SUCCESS)
}

/// Runs the daemon until `stop` completes, without systemd and without reloads (the demo).
pub async fn run(config: DaemonConfig, stop: impl std::future::Future<Output = ()>) -> Result<()> {
    serve(config, Arc::new(ServiceManager::absent()), stop, None).await
}

/// Where a SIGHUP re-reads the configuration from.
struct Reloads {
    config_path: PathBuf,
    hangup: Signal,
}

/// The notice dispatcher task. It is restarted when a reload changes `notices:`.
struct NoticeService {
    stop: watch::Sender<bool>,
    task: JoinHandle<()>,
}

impl NoticeService {
    /// Checks the notice settings and builds a dispatcher for them, without starting it yet, so
    /// a reload can refuse bad settings before it changes anything.
    fn prepare(config: &DaemonConfig) -> Result<Dispatcher> {
        let outbox = Outbox::open(config.state_dir.join(OUTBOX_DIR))
            .context("cannot open the notice outbox")?;
        let mut dispatcher = Dispatcher::new(outbox, config.notices.clone())
            .context("invalid `notices:` configuration")?;
        if let Some(credentials) = std::env::var_os("CREDENTIALS_DIRECTORY") {
            dispatcher = dispatcher.with_credentials_dir(credentials);
        }
        Ok(dispatcher)
    }

    fn start(dispatcher: Dispatcher, reports: mpsc::Sender<DeliveryReport>) -> NoticeService {
        let (stop, stop_rx) = watch::channel(false);
        let task = tokio::spawn(dispatcher.run(stop_rx, reports));
        NoticeService { stop, task }
    }

    /// Stops the dispatcher. Attempts in flight are abandoned; their deliveries stay pending
    /// in the outbox and the next dispatcher sends them.
    async fn stop(self) {
        let _ = self.stop.send(true);
        if let Err(err) = self.task.await {
            error!(error = %err, "notice dispatcher failed");
        }
    }
}

/// Everything a reload may need to touch while the daemon runs.
struct LiveParts {
    config: Arc<DaemonConfig>,
    intake: Arc<IntakeContext>,
    notices: Option<NoticeService>,
    delivery_tx: mpsc::Sender<DeliveryReport>,
    reconfigure_tx: mpsc::UnboundedSender<Reconfigure>,
}

async fn serve(
    config: DaemonConfig,
    manager: Arc<ServiceManager>,
    stop: impl std::future::Future<Output = ()>,
    mut reloads: Option<Reloads>,
) -> Result<()> {
    let layout = Layout::new(&config.spool_dir, &config.state_dir);
    layout.create().with_context(|| {
        format!(
            "cannot create spool/state directories under {} and {}",
            config.spool_dir.display(),
            config.state_dir.display()
        )
    })?;
    // Watch before anything slow (the notice client, the GPU pool) and before the first scan,
    // so a file dropped from now on is seen by one or the other. Events wait in the channel
    // until intake runs. Watching comes before the lock too: whoever sees the lock taken may
    // start writing a file in place, and its creation event must not be missed (the first
    // scan would take the half-written file for a complete one). Watching changes nothing, so
    // a daemon refused by the lock below has done no harm.
    let (signal_tx, signal_rx) = mpsc::unbounded_channel();
    let _watcher = intake::start_watcher(&layout.incoming, signal_tx)
        .with_context(|| format!("cannot watch {}", layout.incoming.display()))?;
    let Some(_lock) = try_lock_state(&config.state_dir)? else {
        anyhow::bail!(
            "another reelspool daemon is already using {}; stop it first",
            config.state_dir.display()
        );
    };
    // Checked and bound before anything starts, so a bad `http:` refuses the start.
    let http = crate::http::prepare(&config).context("cannot start the web server")?;
    manager.notify(&[NotifyState::Status(
        "starting: recovering the spool and job state",
    )]);
    let config = Arc::new(config);
    let outbox_dir = config.state_dir.join(OUTBOX_DIR);
    let dispatcher = NoticeService::prepare(&config)?;
    let notices = Notices {
        outbox: Outbox::open(&outbox_dir).context("cannot open the notice outbox")?,
        handle: dispatcher.handle(),
        default_email: config.notices.default_email.clone(),
    };
    crate::executor::check_at_start(&config)
        .await
        .context("the Slurm executor cannot run jobs")?;
    let mut scheduler = Scheduler::start_up(Arc::clone(&config), layout.clone(), notices)?;
    // Jobs the queue index did not know: the scheduler reads them after READY, between new
    // jobs and worker reports, so a rebuilt index does not hold up the start.
    let unread = scheduler.take_unread();
    let context = Arc::new(IntakeContext {
        layout: layout.clone(),
        templates_dir: config.templates_dir(),
        roots: RwLock::new(config.roots()),
        admission: scheduler.admission(),
        engines: RwLock::new(config.engines.clone()),
        owners: crate::owner::Policy::new(&config.submit_group),
        outputs: std::sync::Mutex::new(None),
    });

    let (shutdown_tx, shutdown_rx) = watch::channel(false);
    let (accepted_tx, accepted_rx) = mpsc::unbounded_channel();
    let recover_context = Arc::clone(&context);
    let recovered = tokio::task::spawn_blocking(move || intake::recover(&recover_context))
        .await
        .context("recovery task failed")?
        .context("cannot recover the spool after a crash")?;
    for id in unread.into_iter().chain(recovered.accepted) {
        let _ = accepted_tx.send(id);
    }

    let intake_task = tokio::spawn(intake::run(
        Arc::clone(&context),
        signal_rx,
        accepted_tx,
        shutdown_rx.clone(),
    ));
    let (delivery_tx, delivery_rx) = mpsc::channel(1024);
    // The dispatcher outlives the scheduler: it has its own stop signal, sent last.
    let notice_service = NoticeService::start(dispatcher, delivery_tx.clone());
    let (vitals_tx, vitals_rx) = watch::channel(SchedulerVitals::starting());
    let (reconfigure_tx, reconfigure_rx) = mpsc::unbounded_channel();
    let scheduler_task = tokio::spawn(scheduler::run(
        scheduler,
        accepted_rx,
        delivery_rx,
        shutdown_rx.clone(),
        vitals_tx,
        reconfigure_rx,
    ));
    // After intake and the scheduler are running: nothing here delays taking in jobs.
    let jobs_dir = layout.jobs.clone();
    tokio::task::spawn_blocking(move || crate::control::close_job_dirs(&jobs_dir));
    // Without the socket, members cannot follow their jobs, but root and the service user still
    // can and every job still runs: a warning, not a failed start.
    let control_task = match crate::control::listen(&config.spool_dir) {
        Ok(listener) => Some(tokio::spawn(crate::control::serve(
            listener,
            Arc::new(crate::control::ControlContext {
                jobs_dir: layout.jobs.clone(),
                state_dir: config.state_dir.clone(),
                policy: crate::owner::Policy::new(&config.submit_group),
                executor: config.executor.clone(),
                intake: Some(Arc::clone(&context)),
            }),
            shutdown_rx.clone(),
        ))),
        Err(err) => {
            warn!(error = %format!("{err:#}"), "no control socket: members cannot see or cancel their jobs");
            None
        }
    };
    let http_tasks = crate::http::start(
        http,
        Arc::clone(&config),
        layout.clone(),
        shutdown_rx.clone(),
    )
    .context("cannot start the web server")?;
    let (notifier_stop_tx, notifier_stop_rx) = watch::channel(false);
    let notifier_task = tokio::spawn(systemd::run_notifier(
        Arc::clone(&manager),
        vitals_rx.clone(),
        notifier_stop_rx,
    ));
    info!(
        spool = %config.spool_dir.display(),
        state = %config.state_dir.display(),
        watchdog = ?manager.watchdog_interval(),
        "reelspool daemon ready"
    );
    manager.notify(&[NotifyState::Ready]);

    let mut live = LiveParts {
        config,
        intake: context,
        notices: Some(notice_service),
        delivery_tx,
        reconfigure_tx,
    };
    tokio::pin!(stop);
    loop {
        tokio::select! {
            _ = &mut stop => break,
            Some(()) = next_hangup(&mut reloads) => {
                let Some(reloads) = &reloads else { continue };
                manager.reloading();
                reload(&reloads.config_path, &mut live).await;
                manager.notify(&[NotifyState::Ready]);
            }
        }
    }

    let running = vitals_rx.borrow().running;
    info!(running, "stopping: intake first, then workers");
    let status = format!("stopping: {running} running job(s) checkpoint their current clip");
    manager.notify(&[NotifyState::Stopping, NotifyState::Status(&status)]);
    let _ = shutdown_tx.send(true);
    if let Some(task) = control_task {
        let _ = task.await;
    }
    for task in http_tasks {
        let _ = task.await;
    }
    if let Err(err) = intake_task.await {
        error!(error = %err, "intake task failed");
    }
    match scheduler_task.await {
        Ok(Ok(())) => {}
        Ok(Err(err)) => warn!(error = %err, "scheduler stopped with an error"),
        Err(err) => error!(error = %err, "scheduler task failed"),
    }
    manager.notify(&[NotifyState::Status("stopping: sending due notices")]);
    flush_notices(&outbox_dir).await;
    if let Some(notices) = live.notices.take() {
        notices.stop().await;
    }
    let _ = notifier_stop_tx.send(true);
    let _ = notifier_task.await;
    info!("reelspool daemon stopped");
    Ok(())
}

/// The next SIGHUP; never completes for a daemon without reloads.
async fn next_hangup(reloads: &mut Option<Reloads>) -> Option<()> {
    match reloads {
        Some(reloads) => reloads.hangup.recv().await,
        None => std::future::pending().await,
    }
}

/// Re-reads the config file and applies what can change while jobs run (see `reload`). An
/// invalid file changes nothing: its diagnostic is logged and the running config stays.
async fn reload(path: &Path, live: &mut LiveParts) {
    let new = match DaemonConfig::load(path) {
        Ok(new) => new,
        Err(err) => {
            error!("reload refused, the running configuration stays:\n{err}");
            return;
        }
    };
    let plan = reload::plan(&live.config, new);
    let dispatcher = if plan.notices_changed {
        match NoticeService::prepare(&plan.effective) {
            Ok(dispatcher) => Some(dispatcher),
            Err(err) => {
                error!("reload refused, the running configuration stays: {err:#}");
                return;
            }
        }
    } else {
        None
    };
    if !plan.restart_needed.is_empty() {
        warn!(
            keys = ?plan.restart_needed,
            "restart needed: these settings changed in {} but keep their old value until the daemon restarts",
            path.display()
        );
    }
    let config = Arc::new(plan.effective);
    *live
        .intake
        .roots
        .write()
        .unwrap_or_else(PoisonError::into_inner) = config.roots();
    *live
        .intake
        .engines
        .write()
        .unwrap_or_else(PoisonError::into_inner) = config.engines.clone();
    let handle = match dispatcher {
        Some(dispatcher) => {
            if let Some(old) = live.notices.take() {
                old.stop().await;
            }
            let handle = dispatcher.handle();
            live.notices = Some(NoticeService::start(dispatcher, live.delivery_tx.clone()));
            Some(handle)
        }
        None => None,
    };
    let _ = live.reconfigure_tx.send(Reconfigure {
        config: Arc::clone(&config),
        dispatcher: handle,
    });
    live.config = config;
    info!(applied = ?plan.applied, "configuration reloaded from {}", path.display());
}

/// Gives deliveries that are due a short while to go out before the daemon exits. Whatever is
/// still pending stays in the outbox and is sent after the next start.
async fn flush_notices(outbox_dir: &Path) {
    let deadline = tokio::time::Instant::now() + NOTICE_FLUSH;
    let Ok(outbox) = Outbox::open(outbox_dir) else {
        return;
    };
    while tokio::time::Instant::now() < deadline {
        // Only deliveries due before the deadline are worth waiting for; one whose next
        // retry is hours away would only make every stop slower.
        let flush_until_ms = now_ms() + NOTICE_FLUSH.as_millis() as u64;
        match outbox.pending() {
            Ok(pending)
                if pending
                    .iter()
                    .all(|delivery| delivery.next_attempt_at_ms > flush_until_ms) =>
            {
                return
            }
            Ok(_) => tokio::time::sleep(Duration::from_millis(50)).await,
            Err(_) => return,
        }
    }
    info!("notices still pending at stop stay in the outbox for the next start");
}

/// Installs the SIGTERM and SIGINT handlers now; the returned future completes on either.
pub fn stop_signal() -> std::io::Result<impl std::future::Future<Output = ()>> {
    let mut terminate = signal(SignalKind::terminate())?;
    let mut interrupt = signal(SignalKind::interrupt())?;
    Ok(async move {
        tokio::select! {
            _ = terminate.recv() => {}
            _ = interrupt.recv() => {}
        }
    })
}
