//! What workers and the notice dispatcher report, turned into state, events and notices: a
//! worker's messages (started, clip done, finished, checkpoint notes) and its end, which
//! decides between done, a retry (after a backoff when attempts stop making progress), a wait
//! for disk space, and failed; and the outcome of each notice delivery.

use std::path::PathBuf;
use std::time::Duration;

use jobs::state::{JobDir, JobId, Phase};
use notices::{DeliveryOutcome, DeliveryReport, NoticeKind};
use render::protocol::{FailureKind, WorkerMessage};
use tracing::{info, warn};

use super::Scheduler;
use crate::cancels;
use crate::events::event;
use crate::placement;
use crate::space;
use crate::supervisor::{WorkerEnd, WorkerReport};

/// The wait before the second attempt in a row that made no progress; each further stalled
/// attempt doubles it, up to [`RETRY_BACKOFF_MAX`].
const RETRY_BACKOFF_FIRST: Duration = Duration::from_secs(2);
const RETRY_BACKOFF_MAX: Duration = Duration::from_secs(60);

/// How long a job waits before its next attempt after `stalled` attempts in a row without
/// progress: nothing after an attempt that made progress, then 2 s, 4 s, 8 s ... up to 60 s.
pub fn retry_backoff(stalled: u32) -> Duration {
    if stalled == 0 {
        return Duration::ZERO;
    }
    let factor = 1u32 << (stalled - 1).min(16);
    RETRY_BACKOFF_FIRST
        .saturating_mul(factor)
        .min(RETRY_BACKOFF_MAX)
}

/// The longest wait after evictions: they say nothing about the job, so the wait only spaces
/// out attempts on a farm where something keeps killing workers.
const EVICTION_BACKOFF_MAX: Duration = Duration::from_secs(10);

/// The wait before a job's next attempt after `stalled` attempts and `evictions` evictions in a
/// row without progress: the attempts' backoff, or the evictions' (the same doubling, up to
/// [`EVICTION_BACKOFF_MAX`]), whichever is longer.
pub fn next_backoff(stalled: u32, evictions: u32) -> Duration {
    retry_backoff(stalled).max(retry_backoff(evictions).min(EVICTION_BACKOFF_MAX))
}

/// How many clips of the job are durable: one more than the last clip named by either of its
/// checkpoints (the worker falls back to the previous one when the latest is damaged).
pub(super) fn durable_clips(dir: &JobDir) -> u32 {
    use render::checkpoint::{Checkpoint, CHECKPOINT_FILE, PREVIOUS_CHECKPOINT_FILE};
    [CHECKPOINT_FILE, PREVIOUS_CHECKPOINT_FILE]
        .iter()
        .filter_map(|file| std::fs::read(dir.work_dir().join(file)).ok())
        .filter_map(|bytes| serde_json::from_slice::<Checkpoint>(&bytes).ok())
        .map(|checkpoint| checkpoint.last_clip.saturating_add(1))
        .max()
        .unwrap_or(0)
}

impl Scheduler {
    /// One report of a job's supervisor: a message of its worker, or the worker's end.
    pub(super) fn handle_report(&mut self, id: JobId, report: WorkerReport) {
        let dir = self.job_dir(&id);
        match report {
            WorkerReport::Message(message) => self.handle_message(&id, &dir, message),
            WorkerReport::SlurmJob {
                slurm_job_id,
                adopted,
            } => self.slurm_job_started(&id, slurm_job_id, adopted),
            WorkerReport::Ended { end, stderr_tail } => {
                self.handle_end(&id, &dir, end, stderr_tail)
            }
        }
    }

    /// Records a worker message in the job's state and events (and, for the first clip and
    /// each clip done, in its notices).
    fn handle_message(&mut self, id: &JobId, dir: &JobDir, message: WorkerMessage) {
        let Ok(mut state) = dir.load_state() else {
            return;
        };
        match &message {
            WorkerMessage::Started {
                clips_total,
                next_clip,
                fresh_reason,
                device,
                offload,
                pid,
                model_loaded,
            } => {
                state.clips_total = Some(*clips_total);
                state.clips_done = *next_clip;
                if let Some(running) = self.running.get_mut(id) {
                    running.clips_total = Some(*clips_total);
                }
                let mut fields = vec![
                    ("clips_total", (*clips_total).into()),
                    ("next_clip", (*next_clip).into()),
                ];
                if let Some(reason) = fresh_reason {
                    fields.push(("fresh_reason", reason.clone().into()));
                }
                if let Some(device) = device {
                    fields.push(("device", device.clone().into()));
                }
                fields.push(("offload", (*offload).into()));
                if let Some(pid) = pid {
                    fields.push(("worker_pid", (*pid).into()));
                }
                if let Some(loaded) = model_loaded {
                    fields.push(("model_loaded", (*loaded).into()));
                }
                let _ = dir.append_event(&event(
                    if *next_clip > 0 { "resumed" } else { "started" },
                    fields,
                ));
                if *next_clip == 0 {
                    let spec = self.running.get(id).and_then(|job| job.spec.as_ref());
                    self.notices
                        .announce(dir, &state, spec, NoticeKind::Started);
                }
            }
            WorkerMessage::ClipDone {
                index,
                frames,
                secs,
                ..
            } => {
                state.clips_done = index + 1;
                if let Some(running) = self.running.get_mut(id) {
                    info!(job = %id, gpu = %running.card, clip = index, secs, "clip done");
                    running.clip_secs.push(*secs);
                    if let Some(total) = running.clips_total {
                        let mean =
                            running.clip_secs.iter().sum::<f64>() / running.clip_secs.len() as f64;
                        state.eta_secs = Some(mean * f64::from(total.saturating_sub(index + 1)));
                    }
                }
                let _ = dir.append_event(&event(
                    "clip_done",
                    [
                        ("index", (*index).into()),
                        ("frames", (*frames).into()),
                        ("secs", (*secs).into()),
                    ],
                ));
                let spec = self.running.get(id).and_then(|job| job.spec.as_ref());
                self.notices
                    .announce(dir, &state, spec, NoticeKind::Progress);
            }
            WorkerMessage::Finished {
                output,
                duration_secs,
                frames,
                clips,
                kept_existing,
            } => {
                if let Some(wanted) = kept_existing {
                    // Someone put a file at output.path while the job rendered: it was kept,
                    // and the video is beside it. The event, the state and the notice carry
                    // the path the video really has.
                    warn!(
                        job = %id,
                        wanted = %jobs::escape_text(wanted),
                        written = %jobs::escape_text(output),
                        "output.path was taken meanwhile; the video was written beside it"
                    );
                    let _ = dir.append_event(&event(
                        "output_renamed",
                        [
                            ("wanted", wanted.clone().into()),
                            ("written", output.clone().into()),
                            (
                                "reason",
                                "a file appeared at output.path while the job rendered; it was kept"
                                    .into(),
                            ),
                        ],
                    ));
                }
                state
                    .details
                    .insert("duration_secs".into(), (*duration_secs).into());
                state.details.insert("frames".into(), (*frames).into());
                state.details.insert("clips".into(), (*clips).into());
                state.output = Some(PathBuf::from(output));
            }
            WorkerMessage::Checkpoint { note, clip, detail } => {
                if *note == render::protocol::CheckpointNote::Cadence {
                    info!(job = %id, clip, "{}: {}", note.event_name(), jobs::escape_text(detail));
                } else {
                    warn!(job = %id, clip, "{}: {}", note.event_name(), jobs::escape_text(detail));
                }
                let _ = dir.append_event(&event(
                    note.event_name(),
                    [("clip", (*clip).into()), ("detail", detail.clone().into())],
                ));
                return;
            }
            WorkerMessage::EngineProgress {
                clip,
                step,
                total,
                message,
            } => {
                // Only the latest line is kept, in the state (no event: engines may report
                // every step, and the worker already thins them out).
                state.details.insert(
                    "engine_progress".into(),
                    serde_json::json!({
                        "clip": clip,
                        "step": step,
                        "total": total,
                        "message": message,
                        "at_ms": jobs::state::now_ms(),
                    }),
                );
            }
            WorkerMessage::Interrupted { .. }
            | WorkerMessage::Heartbeat
            | WorkerMessage::Error { .. }
            | WorkerMessage::JobEnded { .. } => return,
        }
        self.save(dir, &state);
    }

    /// Frees the worker's card and decides what the job does next (see the module docs).
    fn handle_end(&mut self, id: &JobId, dir: &JobDir, end: WorkerEnd, stderr_tail: Vec<String>) {
        let cancel_requested = dir.cancel_request().exists();
        if cancel_requested {
            cancels::clear(&self.config.state_dir, id);
        }
        let running = self.running.remove(id);
        let card = running
            .as_ref()
            .map(|job| job.card.clone())
            .unwrap_or_default();
        let out_of_memory = matches!(
            end,
            WorkerEnd::Failed {
                kind: FailureKind::OutOfMemory,
                ..
            }
        );
        // An OOM frees the card through `record_oom`, which also picks the fallback.
        let peak_vram_bytes = if out_of_memory {
            None
        } else {
            self.placement
                .release(id, placement::run_end(&end, self.stopping))
        };
        let spec = running
            .as_ref()
            .and_then(|job| job.spec.clone())
            .or_else(|| dir.load_spec().ok());
        let max_attempts = spec
            .as_ref()
            .map(|spec| spec.retry.max_attempts)
            .unwrap_or(1);
        let max_evictions = spec
            .as_ref()
            .map(|spec| spec.retry.max_evictions)
            .unwrap_or(1);
        // Did this attempt make a new clip durable? Read off the checkpoints, so a clip
        // checkpointed just before a kill counts even if the worker could not report it.
        let durable_after = durable_clips(dir);
        let durable_before = running
            .as_ref()
            .map_or(durable_after, |job| job.durable_at_start);
        // A death the job did not cause: a kill from outside, or a stop nobody here asked for.
        let evicted = matches!(
            end,
            WorkerEnd::Evicted { .. } | WorkerEnd::Interrupted { .. }
        );
        let progressed = durable_after > durable_before;
        let attempt = running.as_ref().map_or(0, |job| job.attempt);
        let out_of_space = !cancel_requested
            && !self.stopping
            && matches!(&end, WorkerEnd::Failed { kind: FailureKind::Io, message }
                if space::is_out_of_space(message));
        // Ends that decide about a retry move the count of stalled attempts; a finished,
        // cancelled or daemon-stopped attempt leaves it alone, and so does a full disk.
        let decides_retry = !matches!(end, WorkerEnd::Finished)
            && !cancel_requested
            && !self.stopping
            && !out_of_space;
        let (mut stalled, mut stalled_evictions) = (0, 0);
        if let Ok(mut state) = dir.load_state() {
            // Progress is credited however the attempt ended: progress starts both counts
            // again. Without it, an eviction counts against `retry.max_evictions`, any other
            // end that decides a retry against `retry.max_attempts`.
            if progressed {
                state.stalled_attempts = 0;
                state.stalled_evictions = 0;
            } else if decides_retry && evicted {
                state.stalled_evictions = state.stalled_evictions.saturating_add(1);
            } else if decides_retry {
                state.stalled_attempts = state.stalled_attempts.saturating_add(1);
            }
            // The attempt's end is handled: a restart from here on ends no attempt.
            state.durable_at_attempt_start = None;
            self.save(dir, &state);
            stalled = state.stalled_attempts;
            stalled_evictions = state.stalled_evictions;
        }
        let mut fields = vec![
            ("end", format!("{end:?}").into()),
            ("gpu", card.into()),
            ("attempt", attempt.into()),
            ("progressed", progressed.into()),
            ("durable_clips", durable_after.into()),
            ("stalled_attempts", stalled.into()),
            ("evicted", evicted.into()),
            ("stalled_evictions", stalled_evictions.into()),
        ];
        if let Some(peak) = peak_vram_bytes {
            fields.push(("peak_vram_bytes", peak.into()));
        }
        if !stderr_tail.is_empty()
            && !matches!(end, WorkerEnd::Finished | WorkerEnd::Interrupted { .. })
        {
            fields.push(("stderr_tail", stderr_tail.clone().into()));
        }
        let _ = dir.append_event(&event("worker_exit", fields));
        if out_of_space {
            let mut folders = vec![dir.root().to_path_buf()];
            if let Some(parent) = spec.as_ref().and_then(|spec| spec.output.path.parent()) {
                folders.push(parent.to_path_buf());
            }
            self.wait_for_space(id, &folders, &end);
            return;
        }
        match end {
            WorkerEnd::Finished => self.finish(id, Phase::Done, None, spec.as_ref()),
            _ if cancel_requested => self.finish(
                id,
                Phase::Cancelled,
                Some("cancelled by request".into()),
                spec.as_ref(),
            ),
            WorkerEnd::Interrupted { .. } if self.stopping => {
                // Stays resumable: back to queued, picked up at the next start.
                if let Ok(mut state) = dir.load_state() {
                    state.phase = Phase::Queued;
                    state.gpu = None;
                    state.eta_secs = None;
                    self.save(dir, &state);
                }
                let _ = dir.append_event(&event(
                    "interrupted",
                    [("reason", "daemon stopping".into())],
                ));
            }
            WorkerEnd::Failed {
                kind: FailureKind::Input | FailureKind::Engine,
                message,
            } => self.finish(id, Phase::Failed, Some(message), spec.as_ref()),
            WorkerEnd::Failed {
                kind: FailureKind::OutOfMemory,
                message,
            } => {
                let requeued = self.placement.record_oom(id);
                // A release job moves to its next mode down; other jobs turn offload on.
                let fallback = self
                    .placement
                    .planned_memory(id, true)
                    .map_or_else(|| "offload".to_string(), |memory| memory.mode_label());
                if requeued && stalled < max_attempts && !self.stopping {
                    // Back in line at its old place, to run with offload this time.
                    if let Ok(mut state) = dir.load_state() {
                        state.phase = Phase::Queued;
                        state.gpu = None;
                        state.eta_secs = None;
                        self.save(dir, &state);
                    }
                    let _ = dir.append_event(&event(
                        "retry",
                        [
                            ("reason", format!("out of memory: {message}").into()),
                            ("fallback", fallback.into()),
                        ],
                    ));
                } else {
                    if requeued {
                        self.placement.remove_queued(id);
                    }
                    self.finish(
                        id,
                        Phase::Failed,
                        Some(format!("out of memory: {message}")),
                        spec.as_ref(),
                    );
                }
            }
            other => {
                let message = match &other {
                    WorkerEnd::Failed { message, .. } => message.clone(),
                    WorkerEnd::Crashed { status } => format!("worker crashed: {status}"),
                    WorkerEnd::Evicted { status } => format!("worker evicted: {status}"),
                    WorkerEnd::HeartbeatLost => "worker stopped responding".to_string(),
                    WorkerEnd::Interrupted { .. } => {
                        "worker stopped before the job was done".to_string()
                    }
                    WorkerEnd::Finished => unreachable!("handled above"),
                };
                let (count, bound, what, key) = if evicted {
                    (
                        stalled_evictions,
                        max_evictions,
                        "evictions",
                        "max_evictions",
                    )
                } else {
                    (stalled, max_attempts, "attempts", "max_attempts")
                };
                if count < bound && !self.stopping {
                    let backoff = next_backoff(stalled, stalled_evictions);
                    // The wait is in state.json before the event announces it: whoever reads
                    // the event (or a daemon restarted right after it) finds it durable.
                    self.requeue_after(id, backoff);
                    let _ = dir.append_event(&event(
                        "retry",
                        [
                            ("reason", message.into()),
                            ("attempt", attempt.into()),
                            ("progressed", progressed.into()),
                            ("stalled_attempts", stalled.into()),
                            ("max_attempts", max_attempts.into()),
                            ("evicted", evicted.into()),
                            ("stalled_evictions", stalled_evictions.into()),
                            ("max_evictions", max_evictions.into()),
                            ("backoff_secs", backoff.as_secs_f64().into()),
                        ],
                    ));
                } else if self.stopping {
                    let _ = dir.append_event(&event("interrupted", [("reason", message.into())]));
                } else {
                    let message = format!(
                        "{message} ({count} {what} in a row made no new clip durable; \
                         retry.{key} is {bound})"
                    );
                    self.finish(id, Phase::Failed, Some(message), spec.as_ref());
                }
            }
        }
    }

    /// Records what happened to a notice in its job's events (the scheduler is the only writer
    /// of job files, so the dispatcher's reports come through here).
    pub(super) fn handle_delivery(&mut self, report: DeliveryReport) {
        let Ok(id) = report.job_id.parse::<JobId>() else {
            return;
        };
        let dir = self.job_dir(&id);
        let base = [
            ("kind", report.event.as_str().into()),
            (
                "channel",
                format!("{:?}", report.channel).to_lowercase().into(),
            ),
            ("target", report.target.clone().into()),
            ("delivery", report.delivery_id.as_str().into()),
        ];
        let recorded = match report.outcome {
            DeliveryOutcome::Delivered { attempts } => {
                let mut fields = base.to_vec();
                fields.push(("attempts", attempts.into()));
                event("notice_delivered", fields)
            }
            DeliveryOutcome::PermanentFailure { reason, .. } => {
                let mut fields = base.to_vec();
                fields.push(("reason", reason.into()));
                warn!(job = %id, target = %report.target, "notice failed permanently");
                // Counted in the state too, so `reelspool status` can flag it in its table.
                if let Ok(mut state) = dir.load_state() {
                    let failures = state
                        .details
                        .get("notice_failures")
                        .and_then(|v| v.as_u64())
                        .unwrap_or(0);
                    state
                        .details
                        .insert("notice_failures".into(), (failures + 1).into());
                    self.save(&dir, &state);
                }
                event("notice_failed", fields)
            }
            other => {
                let mut fields = base.to_vec();
                fields.push(("outcome", format!("{other:?}").into()));
                event("notice_retrying", fields)
            }
        };
        let _ = dir.append_event(&recorded);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn backoff_is_none_after_progress_then_doubles_up_to_a_minute() {
        let secs: Vec<u64> = (0..9).map(|n| retry_backoff(n).as_secs()).collect();
        assert_eq!(secs, [0, 2, 4, 8, 16, 32, 60, 60, 60]);
        assert_eq!(retry_backoff(u32::MAX), RETRY_BACKOFF_MAX);
        // Evictions back off the same way, but never longer than 10 s.
        let evicted: Vec<u64> = (0..7).map(|n| next_backoff(0, n).as_secs()).collect();
        assert_eq!(evicted, [0, 2, 4, 8, 10, 10, 10]);
        assert_eq!(next_backoff(5, 2).as_secs(), 32);
        assert_eq!(next_backoff(1, 6).as_secs(), 10);
    }

    #[test]
    fn durable_clips_come_from_the_newer_of_the_two_checkpoints() {
        let root = tempfile::tempdir().expect("temp dir");
        let dir = JobDir::new(root.path());
        std::fs::create_dir_all(dir.work_dir()).expect("work dir");
        assert_eq!(durable_clips(&dir), 0, "no checkpoint yet");
        let checkpoint = |last_clip: u32| {
            serde_json::json!({
                "format_version": 1,
                "last_clip": last_clip,
                "job_fingerprint": "f",
                "carry": {"file": "carry", "size_bytes": 1, "sha256": "00"},
                "segments": [],
                "written_at_unix_ms": 1,
            })
            .to_string()
        };
        let work = dir.work_dir();
        std::fs::write(work.join("checkpoint.prev.json"), checkpoint(3)).expect("write");
        std::fs::write(work.join("checkpoint.json"), b"{\"torn").expect("write");
        assert_eq!(
            durable_clips(&dir),
            4,
            "a torn latest falls back to the previous"
        );
        std::fs::write(work.join("checkpoint.json"), checkpoint(4)).expect("write");
        assert_eq!(durable_clips(&dir), 5);
    }
}
