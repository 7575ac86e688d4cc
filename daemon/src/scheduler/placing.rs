//! The placement pass: every job the pool can place now gets a worker, on this machine (a warm
//! worker already holding its model on that card when there is one, else a new process) or as
//! a Slurm batch job; and placement is told which model each card's worker holds.

use std::path::PathBuf;
use std::time::Duration;

use jobs::state::{now_ms, Phase};
use tokio::sync::watch;
use tracing::{info, warn};

use super::reports::durable_clips;
use super::{RunningJob, Scheduler};
use crate::cancels;
use crate::config::{ExecutorConfig, SlurmConfig};
use crate::events::event;
use crate::executor;
use crate::placement::{PlacementDecision, RunEnd};
use crate::supervisor::{self, StopRequest, WorkerLaunch, WorkerReport};
use crate::warm::{self, WorkerKey};

impl Scheduler {
    /// Starts workers for every job the pool can place now.
    pub(super) fn place(&mut self) {
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
        if let Some(pid) = self.adopting.remove(&id) {
            self.adopt_worker(decision, state, pid);
            return;
        }
        if dir.cancel_request().exists() {
            self.placement.release(&id, RunEnd::NotTheCard);
            self.cancel_unstarted(&id);
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
        if let Some(memory) = &decision.memory {
            if let Ok(value) = serde_json::to_value(memory) {
                state
                    .details
                    .insert(crate::intake::MEMORY_PLAN_KEY.into(), value);
            }
        }
        let durable_at_start = durable_clips(&dir);
        // Kept with the job: a daemon restarted during the attempt credits its progress.
        state.durable_at_attempt_start = Some(durable_at_start);
        self.save(&dir, &state);
        let _ = dir.append_event(&event(
            "running",
            [
                ("gpu", decision.card_label.clone().into()),
                ("gpu_uuid", decision.card_uuid.clone().into()),
                ("attempt", state.attempts.into()),
                ("stalled_before", state.stalled_attempts.into()),
                ("evictions_before", state.stalled_evictions.into()),
                ("durable_clips", durable_at_start.into()),
                ("offload", decision.offload.into()),
                (
                    "memory_mode",
                    decision
                        .memory
                        .as_ref()
                        .map_or(serde_json::Value::Null, |m| m.mode_label().into()),
                ),
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
                let host_bytes = decision.memory.as_ref().map(|memory| memory.host_bytes);
                card = self.start_on_slurm(
                    slurm.clone(),
                    launch,
                    decision.offload,
                    host_bytes,
                    stop_rx,
                );
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

    /// Follows a worker that outlived the last daemon, on the slot placement gave its job back:
    /// the attempt goes on (no new attempt is counted) and a cancel or stop reaches it as
    /// signals. A worker gone meanwhile ends the attempt as a restart does.
    fn adopt_worker(
        &mut self,
        decision: PlacementDecision,
        mut state: jobs::state::JobState,
        pid: u32,
    ) {
        let id = decision.job_id.clone();
        let dir = self.job_dir(&id);
        let durable_at_start = state
            .durable_at_attempt_start
            .unwrap_or_else(|| durable_clips(&dir));
        state.gpu = Some(decision.card_label.clone());
        state.durable_at_attempt_start = Some(durable_at_start);
        self.save(&dir, &state);
        let _ = dir.append_event(&event(
            "adopted",
            [
                ("worker_pid", pid.into()),
                ("gpu", decision.card_label.clone().into()),
                ("attempt", state.attempts.into()),
                ("durable_clips", durable_clips(&dir).into()),
            ],
        ));
        let spec = dir.load_spec().ok();
        let key = WorkerKey {
            card_uuid: decision.card_uuid.clone(),
            env: decision.env.clone(),
            model: spec.as_ref().map(warm::model_key).unwrap_or_default(),
        };
        let launch = WorkerLaunch {
            job_id: id.clone(),
            job_dir: dir.root().to_path_buf(),
            program: PathBuf::new(),
            env: Vec::new(),
            model_cache_dir: self.config.model_cache_dir(),
            heartbeat_timeout: Duration::from_secs(self.config.worker.heartbeat_timeout_secs),
            stop_timeout: Duration::from_secs(self.config.worker.stop_timeout_secs),
            key: key.clone(),
            idle_unload: Duration::ZERO,
        };
        let (stop_tx, stop_rx) = watch::channel(StopRequest::None);
        self.supervisors.spawn(supervisor::supervise_adopted(
            launch,
            pid,
            state.clips_done,
            self.reports_tx.clone(),
            stop_rx,
        ));
        info!(job = %id, gpu = %decision.card_label, pid, "job running on its re-adopted worker");
        self.running.insert(
            id,
            RunningJob {
                stop: stop_tx,
                card: decision.card_label,
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
        host_bytes: Option<u64>,
        stop: watch::Receiver<StopRequest>,
    ) -> String {
        let id = launch.job_id.clone();
        let dir = self.job_dir(&id);
        let mut needs = executor::needs_of(&self.config, &dir, offload);
        // A release job's plan counts its host memory (streamed weights): Slurm's `--mem`.
        if let Some(bytes) = host_bytes {
            needs.host_bytes = needs.host_bytes.max(bytes);
        }
        let reports = self.reports_tx.clone();
        // sbatch (and scontrol, to adopt) run in the job's own task: a slow controller must
        // not hold up the scheduler's loop. The job's state learns its Slurm job through a
        // report (see `slurm_job_started`).
        self.supervisors.spawn(async move {
            let (record, adopted) =
                match executor::slurm::adopt_or_submit(&slurm, &launch, &needs).await {
                    Ok(started) => started,
                    Err(err) => {
                        warn!(job = %id, error = %err, "cannot submit the job to Slurm");
                        let _ = reports.send((
                            id,
                            WorkerReport::Ended {
                                end: executor::slurm::submit_failure(&err),
                                stderr_tail: Vec::new(),
                            },
                        ));
                        return;
                    }
                };
            let _ = reports.send((
                id,
                WorkerReport::SlurmJob {
                    slurm_job_id: record.slurm_job_id.clone(),
                    adopted,
                },
            ));
            executor::slurm::follow(std::sync::Arc::new(slurm), launch, record, reports, stop)
                .await;
        });
        "slurm".to_string()
    }

    /// Records the Slurm job that runs a job's attempt: where its state says it runs.
    pub(super) fn slurm_job_started(
        &mut self,
        id: &jobs::state::JobId,
        slurm_job_id: String,
        adopted: bool,
    ) {
        let dir = self.job_dir(id);
        let label = format!("slurm:{slurm_job_id}");
        if let Some(running) = self.running.get_mut(id) {
            running.card = label.clone();
        }
        if let Ok(mut state) = dir.load_state() {
            state.gpu = Some(label);
            state
                .details
                .insert("slurm_job_id".into(), slurm_job_id.clone().into());
            self.save(&dir, &state);
        }
        let _ = dir.append_event(&event(
            if adopted {
                "slurm_adopted"
            } else {
                "slurm_submitted"
            },
            [("slurm_job_id", slurm_job_id.into())],
        ));
    }

    /// Lets go of workers idle for `worker.idle_unload_secs`, and tells placement which model
    /// each card's worker holds (for its preference and for `reelspool gpus`).
    pub(super) fn tend_warm_workers(&mut self) {
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
}
