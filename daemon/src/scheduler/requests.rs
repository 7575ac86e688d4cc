//! Operator requests, picked up on every tick: cancels and priority changes (left by
//! `cancels::cancel` and `priorities::change` as marker files, so a request costs the same
//! with 10 or 100,000 jobs queued), and the Slurm side of a cancel. Card drains are placement's
//! (see `placement::pool_files`).

use jobs::state::{JobDir, JobId, Phase};
use tracing::{info, warn};

use super::Scheduler;
use crate::cancels;
use crate::executor;
use crate::priorities;
use crate::supervisor::StopRequest;
use crate::warm;

impl Scheduler {
    /// Acts on cancel requests (see `cancels`): queued jobs are cancelled here, running ones
    /// are asked to stop. Only the marker folder and the running jobs are looked at, never
    /// every queued job.
    pub(super) fn check_cancel_requests(&mut self) {
        let state_dir = self.config.state_dir.clone();
        let requested = match cancels::pending(&state_dir) {
            Ok(requested) => requested,
            Err(err) => {
                warn!(error = %err, "cannot list cancel requests");
                Vec::new()
            }
        };
        for id in requested {
            if self.running.contains_key(&id) {
                // The loop below asks the worker to stop; `handle_end` clears the marker.
                continue;
            }
            // Waiting in line, out a backoff, or for disk space: cancel it here.
            let waiting = self.placement.is_queued(&id)
                || self.backing_off.contains_key(&id)
                || self.waiting_for_space.contains_key(&id);
            if waiting {
                if self.job_dir(&id).cancel_request().exists() {
                    if self.placement.is_queued(&id) {
                        self.placement.remove_queued(&id);
                    }
                    self.backing_off.remove(&id);
                    self.waiting_for_space.remove(&id);
                    self.cancel_unstarted(&id);
                }
                cancels::clear(&state_dir, &id);
                continue;
            }
            match self.job_dir(&id).load_state() {
                // Filed but not in the queue yet (its id is still on its way from intake):
                // look again on the next tick.
                Ok(state) if !state.phase.is_terminal() => {}
                _ => cancels::clear(&state_dir, &id),
            }
        }
        for (id, running) in &self.running {
            if *running.stop.borrow() == StopRequest::None
                && self.job_dir(id).cancel_request().exists()
            {
                let _ = running.stop.send(StopRequest::Cancel);
            }
        }
    }

    /// Cancels, as requested, a job no worker runs (one waiting, or one about to start): its
    /// Slurm job first, then the job itself.
    pub(super) fn cancel_unstarted(&mut self, id: &JobId) {
        let dir = self.job_dir(id);
        self.cancel_on_slurm(&dir);
        self.finish(
            id,
            Phase::Cancelled,
            Some("cancelled by request".into()),
            None,
        );
    }

    /// Under Slurm, cancels the batch job a job cancelled before it ran (again) may still
    /// have there, e.g. one cancelled while the daemon was stopped.
    fn cancel_on_slurm(&self, dir: &JobDir) {
        if self.config.executor.is_local() {
            return;
        }
        match executor::slurm::cancel_recorded(dir.root()) {
            Ok(Some(slurm_job)) => {
                info!(job = %dir.root().display(), slurm_job = %slurm_job, "cancelled the job's Slurm job")
            }
            Ok(None) => {}
            Err(err) => {
                warn!(job = %dir.root().display(), error = %err, "cannot cancel the job's Slurm job; cancel it with scancel")
            }
        }
    }

    /// Applies priority changes (see `priorities`): the job's `state.json` and the queue index
    /// get the new number, and a queued job is put back in line with it. A running job keeps
    /// running; its new priority counts if it is queued again. Only the marker folder is read.
    pub(super) fn check_priority_requests(&mut self) {
        let state_dir = self.config.state_dir.clone();
        let requested = match priorities::pending(&state_dir) {
            Ok(requested) => requested,
            Err(err) => {
                warn!(error = %err, "cannot list priority requests");
                Vec::new()
            }
        };
        for pending in requested {
            let id = pending.id.clone();
            let wanted = match &pending.request {
                Ok(wanted) => wanted.clone(),
                Err(problem) => {
                    warn!(job = %id, problem = %problem, "ignoring an unreadable priority request");
                    priorities::clear_if_unchanged(&state_dir, &pending);
                    continue;
                }
            };
            let dir = self.job_dir(&id);
            let Ok(mut state) = dir.load_state() else {
                // No such job (any more): nothing to change.
                priorities::clear_if_unchanged(&state_dir, &pending);
                continue;
            };
            if state.phase.is_terminal() {
                priorities::clear_if_unchanged(&state_dir, &pending);
                continue;
            }
            let queued = self.placement.is_queued(&id);
            let known = queued
                || self.running.contains_key(&id)
                || self.backing_off.contains_key(&id)
                || self.waiting_for_space.contains_key(&id);
            if !known {
                // Filed but not handed over by intake yet: look again on the next tick.
                continue;
            }
            let from = state.priority;
            if from != wanted.priority {
                state.priority = wanted.priority;
                self.save(&dir, &state);
                let _ = dir.append_event(&priorities::changed_event(
                    from,
                    wanted.priority,
                    wanted.by.as_deref(),
                ));
                if queued {
                    let plan = self
                        .index
                        .as_ref()
                        .and_then(|index| index.plan(&id).cloned())
                        .or_else(|| jobs::index::read_plan(&dir));
                    match plan {
                        Some(plan) => {
                            let model = dir.load_spec().ok().map(|spec| warm::model_key(&spec));
                            self.placement.remove_queued(&id);
                            self.placement.enqueue(&id, wanted.priority, &plan, model);
                        }
                        None => {
                            warn!(job = %id, "no queue plan; the new priority counts from the next start")
                        }
                    }
                }
                info!(job = %id, from, to = wanted.priority, "priority changed");
            }
            priorities::clear_if_unchanged(&state_dir, &pending);
        }
    }
}
