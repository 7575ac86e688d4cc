//! From job state to notices: which events a job wants announced, to whom, and what the
//! announcement says. The `notices` crate does the durable part (outbox, retries, delivery);
//! this module only maps the daemon's job records into its types.

use jobs::spec::{NoticeEvent, WebhookFormat};
use jobs::state::{JobDir, JobState, Phase};
use jobs::JobSpec;
use notices::{
    DispatcherHandle, JobSummary, NoticeKind, NoticePolicy, Outbox, Recipients, WebhookTarget,
};
use tracing::warn;

use crate::events::event;

/// How many lines of the worker's stderr go into a failure notice.
const LOG_TAIL_IN_NOTICE: usize = 20;

/// The outbox and the dispatcher's doorbell, owned by the scheduler.
pub struct Notices {
    pub outbox: Outbox,
    pub handle: DispatcherHandle,
    pub default_email: Vec<String>,
}

fn kind_of(event: NoticeEvent) -> NoticeKind {
    match event {
        NoticeEvent::Started => NoticeKind::Started,
        NoticeEvent::Progress => NoticeKind::Progress,
        NoticeEvent::Done => NoticeKind::Done,
        NoticeEvent::Failed => NoticeKind::Failed,
        NoticeEvent::Cancelled => NoticeKind::Cancelled,
    }
}

/// The notice kind for a terminal phase.
pub fn terminal_kind(phase: Phase) -> Option<NoticeKind> {
    match phase {
        Phase::Done => Some(NoticeKind::Done),
        Phase::Failed => Some(NoticeKind::Failed),
        Phase::Cancelled => Some(NoticeKind::Cancelled),
        Phase::Queued | Phase::Running => None,
    }
}

fn policy(spec: &JobSpec) -> NoticePolicy {
    NoticePolicy {
        on: spec.notify.on.iter().copied().map(kind_of).collect(),
        progress_every: spec.notify.progress_every,
    }
}

fn recipients(spec: &JobSpec, default_email: &[String]) -> Recipients {
    Recipients {
        email: spec.notify.email.clone(),
        webhooks: spec
            .notify
            .webhook
            .iter()
            .map(|hook| WebhookTarget {
                url: hook.url.clone(),
                secret_env: hook.secret_env.clone(),
                slack: hook.format == WebhookFormat::Slack,
            })
            .collect(),
    }
    .with_default_email(default_email)
}

/// The stderr tail a failed worker left in the job's events.
fn log_tail(dir: &JobDir) -> Vec<String> {
    let Ok(events) = dir.read_events() else {
        return Vec::new();
    };
    let Some(lines) = events.iter().rev().find_map(|event| {
        event
            .fields
            .get("stderr_tail")
            .and_then(|v| v.as_array())
            .cloned()
    }) else {
        return Vec::new();
    };
    let skip = lines.len().saturating_sub(LOG_TAIL_IN_NOTICE);
    lines
        .into_iter()
        .skip(skip)
        .filter_map(|line| line.as_str().map(str::to_string))
        .collect()
}

fn summary(dir: &JobDir, state: &JobState, kind: NoticeKind) -> JobSummary {
    JobSummary {
        job_id: state.id.to_string(),
        name: state.name.clone(),
        state: state.phase.as_str().to_string(),
        event: kind,
        output: state.output.clone(),
        duration_secs: state.details.get("duration_secs").and_then(|v| v.as_f64()),
        clips_done: state.clips_done,
        clips_total: state.clips_total,
        gpu: state.gpu.clone(),
        error: state.error.clone(),
        log_tail: if kind == NoticeKind::Failed {
            log_tail(dir)
        } else {
            Vec::new()
        },
        submitted_at_ms: state.submitted_at_ms,
        started_at_ms: state.started_at_ms,
        finished_at_ms: state.finished_at_ms,
    }
}

impl Notices {
    /// Queues the notices a job wants for `kind`, durably, before the caller records the state
    /// change: a crash in between repeats the notice (same idempotency key per event) rather
    /// than losing it.
    pub fn announce(
        &self,
        dir: &JobDir,
        state: &JobState,
        spec: Option<&JobSpec>,
        kind: NoticeKind,
    ) {
        let Some(spec) = spec else {
            return;
        };
        if !policy(spec).wants(kind, state.clips_done) {
            return;
        }
        let recipients = recipients(spec, &self.default_email);
        if recipients.is_empty() {
            return;
        }
        match self.outbox.enqueue(&summary(dir, state, kind), &recipients) {
            Ok(ids) => {
                let _ = dir.append_event(&event(
                    "notice_queued",
                    [
                        ("kind", kind.as_str().into()),
                        ("deliveries", ids.len().into()),
                    ],
                ));
                self.handle.wake();
            }
            Err(err) => {
                warn!(job = %state.id, error = %err, "cannot queue notice");
                let _ = dir.append_event(&event(
                    "notice_error",
                    [
                        ("kind", kind.as_str().into()),
                        ("error", err.to_string().into()),
                    ],
                ));
            }
        }
    }
}
