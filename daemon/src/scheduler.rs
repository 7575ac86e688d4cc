//! The scheduler task: the one writer of job state while the daemon runs.
//!
//! It owns the queue and the pool's placement state, starts a supervisor for every job it
//! places, and turns the supervisors' reports into state transitions, events and notices.
//! Keeping every state write in this one task means two updates of the same `state.json` can
//! never race.
//!
//! This file holds the scheduler's state, its start-up and the loop that drives it; the work
//! itself is split by concern, each file one `impl Scheduler` that reads on its own:
//! - `queue`: where jobs wait and every write of their state (enqueue, retry backoffs, waits
//!   for disk space, `finish`);
//! - `placing`: the placement pass (a worker for every job the pool can place now, warm
//!   workers, Slurm submission);
//! - `reports`: what workers and the notice dispatcher report (messages, worker ends and the
//!   retry decision, deliveries);
//! - `requests`: operator requests picked up on every tick (cancel, priority).

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use anyhow::{Context, Result};
use jobs::index::IndexWriter;
use jobs::state::{now_ms, JobDir, JobId, Phase};
use jobs::JobSpec;
use notices::DeliveryReport;
use tokio::sync::{mpsc, watch};
use tokio::task::JoinSet;
use tracing::{info, warn};

use crate::backlog;
use crate::config::DaemonConfig;
use crate::executor;
use crate::intake::Admission;
use crate::notify_glue::Notices;
use crate::placement::Placement;
use crate::reload::Reconfigure;
use crate::space::SpaceWait;
use crate::spool::Layout;
use crate::supervisor::{StopRequest, WorkerReport};
use crate::systemd::SchedulerVitals;
use crate::warm::WarmPool;

mod placing;
mod queue;
mod reports;
mod requests;

/// How often queued and running jobs are checked for cancel requests, and how often the loop
/// proves it is alive to the systemd watchdog (see `systemd::SchedulerVitals`).
const CONTROL_TICK: Duration = Duration::from_millis(250);

/// Accepted jobs queued per turn of the loop, so a burst never keeps a stop waiting.
const ENQUEUE_BATCH: usize = 16;

/// A job whose worker (or Slurm job) runs now.
struct RunningJob {
    stop: watch::Sender<StopRequest>,
    card: String,
    card_uuid: String,
    clip_secs: Vec<f64>,
    clips_total: Option<u32>,
    /// The resolved job, read once at start rather than on every worker message.
    spec: Option<JobSpec>,
    /// Durable clips when this attempt started: it made progress if it ends with more.
    durable_at_start: u32,
    attempt: u32,
    /// What its worker holds loaded (see `warm::model_key`).
    model: Option<String>,
}

/// The scheduler's state; see the module docs.
pub struct Scheduler {
    config: Arc<DaemonConfig>,
    layout: Layout,
    placement: Placement,
    running: HashMap<JobId, RunningJob>,
    /// Queued jobs waiting out a retry backoff, with the time (ms) they may run again.
    backing_off: HashMap<JobId, u64>,
    /// Queued jobs whose worker stopped on a full disk, until there is room again.
    waiting_for_space: HashMap<JobId, SpaceWait>,
    supervisors: JoinSet<()>,
    reports_tx: mpsc::UnboundedSender<(JobId, WorkerReport)>,
    reports_rx: mpsc::UnboundedReceiver<(JobId, WorkerReport)>,
    notices: Notices,
    stopping: bool,
    /// The queue index (see `jobs::index`); `None` if it could not be opened, in which case
    /// the next start rebuilds it from the job folders.
    index: Option<IndexWriter>,
    /// Job folders the index did not know at start-up; the daemon hands them back through the
    /// accepted channel once it is ready (see `backlog`).
    unread: Vec<JobId>,
    /// Idle warm workers (see `warm`).
    warm: WarmPool,
    /// Jobs found running at start-up whose worker outlived the last daemon: the pid to
    /// re-adopt once placement gives the job its slot back (see `placing`).
    adopting: HashMap<JobId, u32>,
    /// True while `start_up` queues the jobs the last daemon left.
    starting_up: bool,
}

impl Scheduler {
    /// Builds the pool and re-queues every job that was queued or running when the daemon
    /// last stopped.
    pub fn start_up(
        config: Arc<DaemonConfig>,
        layout: Layout,
        notices: Notices,
    ) -> Result<Scheduler> {
        let placement =
            Placement::start(&executor::pool_for(&config)).context("cannot set up the GPU pool")?;
        let (reports_tx, reports_rx) = mpsc::unbounded_channel();
        let mut scheduler = Scheduler {
            config,
            layout,
            placement,
            running: HashMap::new(),
            backing_off: HashMap::new(),
            waiting_for_space: HashMap::new(),
            supervisors: JoinSet::new(),
            reports_tx,
            reports_rx,
            notices,
            stopping: false,
            index: None,
            unread: Vec::new(),
            warm: WarmPool::default(),
            adopting: HashMap::new(),
            starting_up: true,
        };
        let backlog = backlog::load(&scheduler.config.state_dir, &scheduler.layout.jobs)?;
        scheduler.index = backlog.index;
        scheduler.unread = backlog.unread;
        let mut resumed = 0;
        for entry in backlog.unfinished {
            if entry.phase == Phase::Running {
                resumed += 1;
            }
            match (entry.retry_at_ms, &entry.plan, entry.phase) {
                // Still waiting out the backoff after a stalled attempt.
                (Some(at), _, _) if at > now_ms() => {
                    scheduler.backing_off.insert(entry.id, at);
                }
                (_, Some(plan), Phase::Queued) => {
                    scheduler
                        .placement
                        .enqueue(&entry.id, entry.priority, plan, None)
                }
                _ => scheduler.enqueue(entry.id),
            }
        }
        scheduler.starting_up = false;
        if resumed > 0 {
            info!(
                count = resumed,
                "jobs interrupted by the last stop will resume"
            );
        }
        Ok(scheduler)
    }

    /// Job folders to read and queue after start-up, oldest first (see `backlog`).
    pub fn take_unread(&mut self) -> Vec<JobId> {
        std::mem::take(&mut self.unread)
    }

    /// The intake-side check that a job can run on this pool at all.
    pub fn admission(&self) -> Box<dyn Admission> {
        Box::new(self.placement.admission())
    }

    fn job_dir(&self, id: &JobId) -> JobDir {
        JobDir::new(self.layout.job_dir(&id.to_string()))
    }

    /// Counts for systemd's status line, stamped with this tick.
    fn vitals(&self) -> SchedulerVitals {
        let gpus: std::collections::BTreeSet<&str> =
            self.running.values().map(|job| job.card.as_str()).collect();
        SchedulerVitals {
            queued: self.placement.queued_count()
                + self.backing_off.len()
                + self.waiting_for_space.len(),
            running: self.running.len(),
            gpus_in_use: gpus.into_iter().map(str::to_string).collect(),
            ticked_at: std::time::Instant::now(),
        }
    }

    /// Takes a reloaded config (SIGHUP): `hold_queue` applies at once, worker settings to
    /// workers started from now on, notices go to the restarted dispatcher.
    fn reconfigure(&mut self, update: Reconfigure) {
        self.placement.set_hold(update.config.hold_queue);
        self.notices.default_email = update.config.notices.default_email.clone();
        if let Some(handle) = update.dispatcher {
            self.notices.handle = handle;
        }
        self.config = update.config;
    }
}

/// Runs the scheduler until shutdown, then stops every worker and waits for it.
pub async fn run(
    mut scheduler: Scheduler,
    mut accepted: mpsc::UnboundedReceiver<JobId>,
    mut deliveries: mpsc::Receiver<DeliveryReport>,
    mut shutdown: watch::Receiver<bool>,
    vitals: watch::Sender<SchedulerVitals>,
    mut reconfigure: mpsc::UnboundedReceiver<Reconfigure>,
) -> Result<()> {
    blocking(|| scheduler.place());
    let mut tick = tokio::time::interval(CONTROL_TICK);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            _ = shutdown.changed() => break,
            id = accepted.recv() => match id {
                Some(id) => blocking(|| {
                    scheduler.enqueue(id);
                    for _ in 1..ENQUEUE_BATCH {
                        let Ok(id) = accepted.try_recv() else { break };
                        scheduler.enqueue(id);
                    }
                    scheduler.place();
                }),
                None => break,
            },
            Some((id, report)) = scheduler.reports_rx.recv() => blocking(|| {
                scheduler.handle_report(id, report);
                scheduler.place();
            }),
            Some(report) = deliveries.recv() => blocking(|| scheduler.handle_delivery(report)),
            _ = tick.tick() => {
                blocking(|| {
                    scheduler.check_cancel_requests();
                    scheduler.check_priority_requests();
                    scheduler.release_backoffs();
                    scheduler.release_space_waits();
                    scheduler.placement.on_tick();
                    scheduler.tend_warm_workers();
                    scheduler.place();
                });
                vitals.send_replace(scheduler.vitals());
            }
            Some(update) = reconfigure.recv() => blocking(|| {
                scheduler.reconfigure(update);
                scheduler.place();
            }),
            Some(_) = scheduler.supervisors.join_next(), if !scheduler.supervisors.is_empty() => {}
        }
    }
    scheduler.stopping = true;
    for running in scheduler.running.values() {
        let _ = running.stop.send(StopRequest::Shutdown);
    }
    // Still ticking while workers checkpoint: systemd keeps hearing the watchdog and sees the
    // running count go down.
    while !scheduler.running.is_empty() {
        tokio::select! {
            report = scheduler.reports_rx.recv() => match report {
                Some((id, report)) => blocking(|| scheduler.handle_report(id, report)),
                None => break,
            },
            _ = tick.tick() => {
                vitals.send_replace(scheduler.vitals());
            }
        }
    }
    while scheduler.supervisors.join_next().await.is_some() {}
    scheduler.warm.let_go_all();
    // Jobs still waiting in `accepted` are on disk; the next start finds them.
    blocking(|| {
        scheduler.placement.persist();
        if let Some(index) = &scheduler.index {
            if let Err(err) = index.sync() {
                warn!(error = %err, "cannot sync the queue index");
            }
        }
    });
    Ok(())
}

/// Runs state writes (each one fsyncs) without stalling the runtime's other tasks: tokio moves
/// them to another thread while this one blocks.
fn blocking<T>(work: impl FnOnce() -> T) -> T {
    tokio::task::block_in_place(work)
}
