//! The queue and its index: where a job waits (in line, out a retry backoff, or until its
//! disk has room again) and how it gets there, and every write of a job's state, which goes to
//! `state.json` and then to the queue index. A job that ends goes through
//! [`Scheduler::finish`], which makes its notices durable before its state says so.

use std::path::PathBuf;
use std::time::Duration;

use jobs::state::{now_ms, JobDir, JobId, JobState, Phase};
use jobs::JobSpec;
use tracing::{debug, info, warn};

use super::Scheduler;
use crate::events::event;
use crate::notify_glue;
use crate::placement::Placement;
use crate::space::SpaceWait;
use crate::supervisor::WorkerEnd;
use crate::warm;
use notices::NoticeKind;

/// When a job may run again after `backoff` (ms since the epoch): the backoff plus up to a
/// second of jitter, so the retries of jobs that something outside kills at a steady pace do
/// not fall into step with it (every retry landing just before the next kill).
fn retry_at(backoff: Duration) -> u64 {
    let jitter_ms = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |now| u64::from(now.subsec_nanos() / 7 % 1000));
    now_ms()
        .saturating_add(u64::try_from(backoff.as_millis()).unwrap_or(u64::MAX))
        .saturating_add(jitter_ms)
}

impl Scheduler {
    /// Puts a job in line with its plan, as intake, a retry or the end of a wait hand it over;
    /// a job still in its backoff waits it out first, and one that has ended only fixes the
    /// index.
    pub(super) fn enqueue(&mut self, id: JobId) {
        let dir = self.job_dir(&id);
        let (state, spec) = match (dir.load_state(), dir.load_spec()) {
            (Ok(state), Ok(spec)) => (state, spec),
            (Err(err), _) => {
                warn!(job = %id, error = %err, "cannot read job state; skipping it");
                return;
            }
            (_, Err(err)) => {
                warn!(job = %id, error = %err, "cannot read job.yaml; failing the job");
                self.finish(
                    &id,
                    Phase::Failed,
                    Some(format!("cannot read job.yaml: {err}")),
                    None,
                );
                return;
            }
        };
        if state.phase.is_terminal() {
            // The queue index was behind (a crash right after the job finished): fix it.
            self.index_record(&state);
            return;
        }
        let mut state = state;
        // An attempt whose end nobody handled (`durable_at_attempt_start` is cleared when one
        // is): the job was running when the last daemon ended. Its worker may render on
        // (re-adopted when placement gives the job its slot back, first of all queued jobs),
        // or the attempt ended with that daemon.
        // (Under Slurm the batch job goes on by itself and is adopted through `slurm.json`
        // when the job is placed again.)
        // A job whose end was handled while the daemon stopped but stayed `running` (a worker
        // killed after the stop timeout) is re-queued at the start too, not counted again.
        let local = matches!(self.config.executor, crate::config::ExecutorConfig::Local);
        let unhandled = state.durable_at_attempt_start.is_some();
        if state.phase == Phase::Running
            && !self.running.contains_key(&id)
            && (unhandled || self.starting_up)
        {
            let live = if local && unhandled {
                crate::supervisor::live_worker(dir.root())
            } else {
                None
            };
            if let Some(pid) = live {
                let plan = self
                    .index
                    .as_ref()
                    .and_then(|index| index.plan(&id).cloned())
                    .or_else(|| jobs::index::read_plan(&dir))
                    .unwrap_or_else(|| Placement::plan_of(&spec));
                info!(job = %id, pid, "its worker outlived the last daemon; re-adopting it");
                self.adopting.insert(id.clone(), pid);
                self.placement
                    .enqueue(&id, i32::MAX, &plan, Some(warm::model_key(&spec)));
                return;
            }
            let _ = dir.append_event(&event(
                "requeued",
                [(
                    "reason",
                    "daemon restarted while the job was running".into(),
                )],
            ));
            if local && unhandled && !self.end_attempt_by_restart(&id, &dir, &mut state, &spec) {
                return;
            }
        }
        if let Some(at) = state.retry_at_ms.filter(|at| *at > now_ms()) {
            // Still in its backoff after a stalled attempt (a job read after start-up).
            self.backing_off.insert(id, at);
            return;
        }
        let plan = match self.index.as_ref().and_then(|index| index.plan(&id)) {
            Some(plan) => plan.clone(),
            None => jobs::index::read_plan(&dir).unwrap_or_else(|| {
                let plan = Placement::plan_of(&spec);
                if let Err(err) = jobs::index::write_plan(&dir, &plan) {
                    debug!(job = %id, error = %err, "cannot keep the job's plan in its folder");
                }
                plan
            }),
        };
        if let Some(index) = &mut self.index {
            index.set_plan(&id, plan.clone());
        }
        if state.phase != Phase::Queued {
            state.phase = Phase::Queued;
            state.gpu = None;
            state.eta_secs = None;
            self.save(&dir, &state);
        } else {
            // A job from intake: its state.json is already durable.
            self.index_record(&state);
        }
        self.placement
            .enqueue(&id, state.priority, &plan, Some(warm::model_key(&spec)));
    }

    /// Settles an attempt that a daemon restart ended (its end was never handled): an
    /// eviction, with its progress credited. Returns whether the job goes in line now; it
    /// does not when it waits out a backoff or has been evicted too often.
    fn end_attempt_by_restart(
        &mut self,
        id: &JobId,
        dir: &JobDir,
        state: &mut JobState,
        spec: &JobSpec,
    ) -> bool {
        let durable = super::reports::durable_clips(dir);
        let progressed = state
            .durable_at_attempt_start
            .is_some_and(|before| durable > before);
        if progressed {
            state.stalled_attempts = 0;
            state.stalled_evictions = 0;
        } else {
            state.stalled_evictions = state.stalled_evictions.saturating_add(1);
        }
        state.durable_at_attempt_start = None;
        let max_evictions = spec.retry.max_evictions;
        let _ = dir.append_event(&event(
            "evicted",
            [
                (
                    "reason",
                    "the daemon restarted while the attempt ran".into(),
                ),
                ("progressed", progressed.into()),
                ("durable_clips", durable.into()),
                ("stalled_evictions", state.stalled_evictions.into()),
                ("max_evictions", max_evictions.into()),
            ],
        ));
        if state.stalled_evictions >= max_evictions {
            self.save(dir, state);
            let message = format!(
                "the daemon restarted while the attempt ran ({} evictions in a row made no \
                 new clip durable; retry.max_evictions is {max_evictions})",
                state.stalled_evictions
            );
            self.finish(id, Phase::Failed, Some(message), Some(spec));
            return false;
        }
        let backoff = super::reports::next_backoff(state.stalled_attempts, state.stalled_evictions);
        if backoff.is_zero() {
            self.save(dir, state);
            return true;
        }
        let at = retry_at(backoff);
        state.phase = Phase::Queued;
        state.gpu = None;
        state.eta_secs = None;
        state.retry_at_ms = Some(at);
        self.save(dir, state);
        self.backing_off.insert(id.clone(), at);
        false
    }

    pub(super) fn save(&mut self, dir: &JobDir, state: &JobState) {
        if let Err(err) = dir.save_state(state) {
            warn!(job = %state.id, error = %err, "cannot write state.json");
            return;
        }
        self.index_record(state);
    }

    /// Tells the queue index about a state that is on disk.
    pub(super) fn index_record(&mut self, state: &JobState) {
        if let Some(index) = &mut self.index {
            if let Err(err) = index.record(state) {
                warn!(job = %state.id, error = %err, "cannot update the queue index; the next start rebuilds it");
                if let Some(index) = self.index.take() {
                    index.discard();
                }
            }
        }
    }

    /// Puts a job back in line at once, or after `backoff` (kept in its state, so a restarted
    /// daemon waits it out too).
    pub(super) fn requeue_after(&mut self, id: &JobId, backoff: Duration) {
        if backoff.is_zero() {
            self.enqueue(id.clone());
            return;
        }
        let dir = self.job_dir(id);
        let Ok(mut state) = dir.load_state() else {
            return;
        };
        let at = retry_at(backoff);
        state.phase = Phase::Queued;
        state.gpu = None;
        state.eta_secs = None;
        state.retry_at_ms = Some(at);
        self.save(&dir, &state);
        self.backing_off.insert(id.clone(), at);
    }

    /// Parks a job whose worker stopped on a full disk until its folders have room again.
    pub(super) fn wait_for_space(&mut self, id: &JobId, folders: &[PathBuf], end: &WorkerEnd) {
        let dir = self.job_dir(id);
        let wait = SpaceWait::new(folders);
        let reason = match end {
            WorkerEnd::Failed { message, .. } => message.clone(),
            other => format!("{other:?}"),
        };
        let short: Vec<String> = wait
            .needs
            .iter()
            .map(|(folder, need)| format!("{} ({} bytes free wanted)", folder.display(), need))
            .collect();
        warn!(job = %id, reason = %reason, "disk full: the job waits for disk space before it goes on");
        if let Ok(mut state) = dir.load_state() {
            state.phase = Phase::Queued;
            state.gpu = None;
            state.eta_secs = None;
            state.details.insert(
                "waiting_for_space".into(),
                format!("{reason}; waiting for room in {}", short.join(", ")).into(),
            );
            self.save(&dir, &state);
        }
        let _ = dir.append_event(&event(
            "waiting_for_space",
            [("reason", reason.into()), ("folders", short.into())],
        ));
        self.waiting_for_space.insert(id.clone(), wait);
    }

    /// Queues the jobs that waited for disk space once their folders have room again.
    pub(super) fn release_space_waits(&mut self) {
        let ready: Vec<JobId> = self
            .waiting_for_space
            .iter()
            .filter(|(_, wait)| wait.over())
            .map(|(id, _)| id.clone())
            .collect();
        for id in ready {
            let Some(wait) = self.waiting_for_space.remove(&id) else {
                continue;
            };
            let dir = self.job_dir(&id);
            let waited = wait.since.elapsed().as_secs_f64();
            info!(job = %id, waited_secs = waited, "disk space is back; the job goes on");
            if let Ok(mut state) = dir.load_state() {
                state.details.remove("waiting_for_space");
                self.save(&dir, &state);
            }
            let _ = dir.append_event(&event(
                "space_available",
                [
                    ("waited_secs", waited.into()),
                    ("timed_out", wait.short().is_some().into()),
                ],
            ));
            self.enqueue(id);
        }
    }

    /// Queues the jobs whose retry backoff is over.
    pub(super) fn release_backoffs(&mut self) {
        let now = now_ms();
        let due: Vec<JobId> = self
            .backing_off
            .iter()
            .filter(|(_, at)| **at <= now)
            .map(|(id, _)| id.clone())
            .collect();
        for id in due {
            self.backing_off.remove(&id);
            self.enqueue(id);
        }
    }

    /// Moves a job to a terminal phase and queues its notices.
    pub(super) fn finish(
        &mut self,
        id: &JobId,
        phase: Phase,
        error: Option<String>,
        spec: Option<&JobSpec>,
    ) {
        let dir = self.job_dir(id);
        let Ok(mut state) = dir.load_state() else {
            return;
        };
        state.phase = phase;
        state.finished_at_ms = Some(now_ms());
        state.eta_secs = None;
        state.error = error.clone();
        let mut fields = Vec::new();
        if let Some(error) = &error {
            fields.push(("error", error.clone().into()));
        }
        // A batch's jobs announce their end only with `batch.notify_each`; the batch itself
        // announces once, when its last job ends.
        let batch = state.batch.as_ref().and_then(|batch| {
            crate::batches::load(&self.config.state_dir, batch.as_str())
                .ok()
                .flatten()
        });
        // The outbox is written before the state: a job never shows as finished without its
        // notices being durable.
        if let Some(kind) = notify_glue::terminal_kind(phase) {
            if batch.as_ref().is_none_or(|record| record.notify_each) {
                self.notices.announce(&dir, &state, spec, kind);
            }
        }
        self.save(&dir, &state);
        if let Some(record) = batch {
            self.batch_may_end(record, &dir, spec);
        }
        let name = match phase {
            Phase::Done => "done",
            Phase::Failed => "failed",
            Phase::Cancelled => "cancelled",
            Phase::Queued | Phase::Running => "state",
        };
        let _ = dir.append_event(&event(name, fields));
        info!(job = %id, state = name, "job finished");
    }

    /// Sends a batch's one notice and records its end once its last job has ended. `dir` is
    /// the job that just ended (the notice's events are written there) and `spec` its job,
    /// whose `notify:` every job of the batch shares.
    fn batch_may_end(
        &mut self,
        mut record: crate::batches::BatchRecord,
        dir: &JobDir,
        spec: Option<&JobSpec>,
    ) {
        if record.ended_at_ms.is_some() {
            return;
        }
        let view = crate::batches::BatchView::read(&self.layout.jobs, record.clone());
        if !view.ended() {
            return;
        }
        let (phase, kind) = match view.phase.as_str() {
            "done" => (Phase::Done, NoticeKind::Done),
            "failed" => (Phase::Failed, NoticeKind::Failed),
            _ => (Phase::Cancelled, NoticeKind::Cancelled),
        };
        if let Some(spec) = spec {
            let mut summary = JobState::queued(
                record.id.clone(),
                spec,
                &record.source_file,
                record.submitted_at_ms,
            );
            summary.name = record.name.clone();
            summary.phase = phase;
            summary.finished_at_ms = Some(now_ms());
            summary.clips_done = u32::try_from(view.clips_done).unwrap_or(u32::MAX);
            summary.clips_total = view
                .clips_total
                .map(|total| u32::try_from(total).unwrap_or(u32::MAX));
            summary.output = None;
            if view.failed + view.cancelled > 0 {
                summary.error = Some(format!(
                    "batch of {} jobs: {} done, {} failed, {} cancelled",
                    view.total, view.done, view.failed, view.cancelled
                ));
            }
            self.notices.announce(dir, &summary, Some(spec), kind);
        }
        record.ended_at_ms = Some(now_ms());
        if let Err(err) = crate::batches::save(&self.config.state_dir, &record) {
            warn!(batch = %record.id, error = %err, "cannot record the end of a batch");
        }
        info!(batch = %record.id, phase = %view.phase, jobs = view.total, "batch ended");
    }
}
