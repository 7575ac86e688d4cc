//! The scheduler task: the one writer of job state while the daemon runs.
//!
//! It owns the queue and the pool's placement state, starts a supervisor for every job it
//! places, and turns the supervisors' reports into state transitions, events and notices.
//! Keeping every state write in this one task means two updates of the same `state.json` can
//! never race.

use std::collections::HashMap;
use std::path::PathBuf;
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
use crate::cancels;
use crate::config::{DaemonConfig, ExecutorConfig, SlurmConfig};
use crate::events::event;
use crate::executor;
use crate::intake::Admission;
use crate::notify_glue::Notices;
use crate::placement::{Placement, PlacementDecision, RunEnd};
use crate::reload::Reconfigure;
use crate::space::SpaceWait;
use crate::spool::Layout;
use crate::supervisor::{self, StopRequest, WorkerLaunch, WorkerReport};
use crate::systemd::SchedulerVitals;
use crate::warm::{self, WarmPool, WorkerKey};

mod queue;
mod reports;
mod requests;

/// How often queued and running jobs are checked for cancel requests, and how often the loop
/// proves it is alive to the systemd watchdog (see `systemd::SchedulerVitals`).
const CONTROL_TICK: Duration = Duration::from_millis(250);

/// Accepted jobs queued per turn of the loop, so a burst never keeps a stop waiting.
const ENQUEUE_BATCH: usize = 16;

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
        };
        let backlog = backlog::load(&scheduler.config.state_dir, &scheduler.layout.jobs)?;
        scheduler.index = backlog.index;
        scheduler.unread = backlog.unread;
        let mut resumed = 0;
        for entry in backlog.unfinished {
            if entry.phase == Phase::Running {
                resumed += 1;
                let dir = scheduler.job_dir(&entry.id);
                let _ = dir.append_event(&event(
                    "requeued",
                    [(
                        "reason",
                        "daemon restarted while the job was running".into(),
                    )],
                ));
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

    /// Starts workers for every job the pool can place now.
    fn place(&mut self) {
        if self.stopping {
            return;
        }
        // Which model each card's worker holds, as of now: a worker that just exited (an out
        // of memory, a crash) must not draw its job's retry back to its card as if warm.
        self.note_worker_models();
        for decision in self.placement.next_placements() {
            self.start_worker(decision);
        }
    }

    fn start_worker(&mut self, decision: PlacementDecision) {
        let id = decision.job_id.clone();
        let dir = self.job_dir(&id);
        let mut state = match dir.load_state() {
            Ok(state) => state,
            Err(err) => {
                warn!(job = %id, error = %err, "cannot read state; not starting it");
                self.placement.release(&id, RunEnd::NotTheCard);
                return;
            }
        };
        // Queued jobs come from the queue index, which a crash can leave one change behind;
        // the job's own files have the last word.
        if state.phase.is_terminal() {
            self.placement.release(&id, RunEnd::NotTheCard);
            self.index_record(&state);
            return;
        }
        if dir.cancel_request().exists() {
            self.placement.release(&id, RunEnd::NotTheCard);
            self.cancel_on_slurm(&dir);
            self.finish(
                &id,
                Phase::Cancelled,
                Some("cancelled by request".into()),
                None,
            );
            cancels::clear(&self.config.state_dir, &id);
            return;
        }
        state.phase = Phase::Running;
        state.attempts += 1;
        state.gpu = Some(decision.card_label.clone());
        state.started_at_ms.get_or_insert(now_ms());
        state.error = None;
        state.retry_at_ms = None;
        state.details.remove("waiting_for_space");
        let durable_at_start = reports::durable_clips(&dir);
        self.save(&dir, &state);
        let _ = dir.append_event(&event(
            "running",
            [
                ("gpu", decision.card_label.clone().into()),
                ("gpu_uuid", decision.card_uuid.clone().into()),
                ("attempt", state.attempts.into()),
                ("stalled_before", state.stalled_attempts.into()),
                ("durable_clips", durable_at_start.into()),
                ("offload", decision.offload.into()),
            ],
        ));
        let program = self
            .config
            .worker
            .program
            .clone()
            .or_else(|| std::env::current_exe().ok())
            .unwrap_or_else(|| PathBuf::from("reelspool"));
        let spec = dir.load_spec().ok();
        let env = {
            let mut env = decision.env.clone();
            env.push((
                "REELSPOOL_OFFLOAD".into(),
                if decision.offload { "1" } else { "0" }.into(),
            ));
            env.push((
                render::engine::kernel_cache::KERNEL_CACHE_ENV.into(),
                render::engine::kernel_cache::keyed_dir(
                    &self.config.kernel_cache_dir(),
                    &decision.gpu_model,
                )
                .display()
                .to_string(),
            ));
            env
        };
        let key = WorkerKey {
            card_uuid: decision.card_uuid.clone(),
            env: env.clone(),
            model: spec.as_ref().map(warm::model_key).unwrap_or_default(),
        };
        let idle_unload = Duration::from_secs(self.config.worker.idle_unload_secs);
        // A warm worker already holding this job's model on this card takes the job; any other
        // idle worker there lets go of the card first.
        let warm_worker = if idle_unload.is_zero() || spec.is_none() {
            None
        } else {
            self.warm.take(&key)
        };
        self.warm.let_go_card(&decision.card_uuid);
        let launch = WorkerLaunch {
            job_id: id.clone(),
            job_dir: dir.root().to_path_buf(),
            program,
            env,
            model_cache_dir: self.config.model_cache_dir(),
            heartbeat_timeout: Duration::from_secs(self.config.worker.heartbeat_timeout_secs),
            stop_timeout: Duration::from_secs(self.config.worker.stop_timeout_secs),
            key: key.clone(),
            idle_unload,
        };
        let (stop_tx, stop_rx) = watch::channel(StopRequest::None);
        let mut card = decision.card_label.clone();
        match &self.config.executor {
            ExecutorConfig::Local => {
                self.supervisors.spawn(supervisor::supervise(
                    launch,
                    warm_worker,
                    self.warm.clone(),
                    self.reports_tx.clone(),
                    stop_rx,
                ));
            }
            ExecutorConfig::Slurm(slurm) => {
                // Slurm places every job in a batch job of its own: no warm worker there.
                card = self.start_on_slurm(slurm.clone(), launch, decision.offload, stop_rx);
            }
        }
        info!(job = %id, gpu = %card, "job running");
        self.running.insert(
            id,
            RunningJob {
                stop: stop_tx,
                card,
                card_uuid: decision.card_uuid,
                clip_secs: Vec::new(),
                clips_total: state.clips_total,
                spec,
                durable_at_start,
                attempt: state.attempts,
                model: Some(key.model),
            },
        );
    }

    /// Submits the job to Slurm (or adopts its Slurm job after a restart) and follows it;
    /// the label the job's state shows for where it runs (`slurm:<id>`).
    fn start_on_slurm(
        &mut self,
        slurm: SlurmConfig,
        launch: WorkerLaunch,
        offload: bool,
        stop: watch::Receiver<StopRequest>,
    ) -> String {
        let id = launch.job_id.clone();
        let dir = self.job_dir(&id);
        let needs = executor::needs_of(&self.config, &dir, offload);
        let started = match tokio::runtime::Handle::try_current() {
            // The scheduler's work runs in `block_in_place`, where blocking on a future is
            // allowed; sbatch answers in milliseconds.
            Ok(runtime) => {
                runtime.block_on(executor::slurm::adopt_or_submit(&slurm, &launch, &needs))
            }
            Err(_) => Err(executor::slurm::SlurmError::NoRuntime),
        };
        let (record, adopted) = match started {
            Ok(started) => started,
            Err(err) => {
                warn!(job = %id, error = %err, "cannot submit the job to Slurm");
                let _ = self.reports_tx.send((
                    id,
                    WorkerReport::Ended {
                        end: executor::slurm::submit_failure(&err),
                        stderr_tail: Vec::new(),
                    },
                ));
                return "slurm".to_string();
            }
        };
        let label = format!("slurm:{}", record.slurm_job_id);
        if let Ok(mut state) = dir.load_state() {
            state.gpu = Some(label.clone());
            state
                .details
                .insert("slurm_job_id".into(), record.slurm_job_id.clone().into());
            self.save(&dir, &state);
        }
        let _ = dir.append_event(&event(
            if adopted {
                "slurm_adopted"
            } else {
                "slurm_submitted"
            },
            [("slurm_job_id", record.slurm_job_id.clone().into())],
        ));
        self.supervisors.spawn(executor::slurm::follow(
            std::sync::Arc::new(slurm),
            launch,
            record,
            self.reports_tx.clone(),
            stop,
        ));
        label
    }

    /// Lets go of workers idle for `worker.idle_unload_secs`, and tells placement which model
    /// each card's worker holds (for its preference and for `reelspool gpus`).
    fn tend_warm_workers(&mut self) {
        self.warm
            .reap(Duration::from_secs(self.config.worker.idle_unload_secs));
        self.note_worker_models();
    }

    /// Tells placement which model each card's worker holds: the warm idle workers' and the
    /// running jobs'.
    fn note_worker_models(&mut self) {
        let mut models = self.warm.models();
        for job in self.running.values() {
            if let Some(model) = &job.model {
                models.insert(job.card_uuid.clone(), model.clone());
            }
        }
        self.placement.set_worker_models(models);
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
