//! The task that drains the outbox.
//!
//! One loop owns every change to outbox records after they are queued, so
//! there is no locking: attempts run as tasks (at most `max_in_flight` at a
//! time), their results come back to the loop, and the loop writes the
//! record (retry time, or the move to `delivered/` or `failed/`) before it
//! reports. The loop sleeps until the next retry is due, or until
//! [`DispatcherHandle::wake`] says something new was queued, or until
//! shutdown.
//!
//! On shutdown the loop returns at once: attempts in flight are abandoned
//! and their records stay pending, so the next dispatcher makes them again
//! (with the same idempotency key).

use std::collections::{HashMap, HashSet};
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use tokio::sync::{mpsc, watch, Notify};
use tokio::task::JoinSet;

use crate::attempt::AttemptOutcome;
use crate::backoff::RetrySchedule;
use crate::clock::now_ms;
use crate::secret::SecretSource;
use crate::template::NoticeTemplates;
use crate::webhook::WebhookSender;
use crate::{
    duration_text, ChannelKind, Delivery, DeliveryId, DeliveryState, Destination, NoticeConfig,
    NoticeError, NoticeKind, Outbox,
};

/// What happened to one delivery attempt, sent to the caller of
/// [`Dispatcher::run`]. Targets are redacted; no secret is ever in here.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DeliveryReport {
    /// The job the notice is about.
    pub job_id: String,
    /// The delivery.
    pub delivery_id: DeliveryId,
    /// The event it announces.
    pub event: NoticeKind,
    /// Email or webhook.
    pub channel: ChannelKind,
    /// The recipient, redacted.
    pub target: String,
    /// How the attempt ended.
    pub outcome: DeliveryOutcome,
}

/// How one attempt ended.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum DeliveryOutcome {
    /// Accepted by the receiver, after this many attempts in all.
    Delivered {
        /// Attempts made, this one included.
        attempts: u32,
    },
    /// Failed for now; another attempt is scheduled.
    Retrying {
        /// The attempt that failed (1 for the first).
        attempt: u32,
        /// When the next one is due.
        next_in: Duration,
        /// Why this one failed.
        reason: String,
    },
    /// Refused for good, or retried for the whole `retry_for` window.
    PermanentFailure {
        /// Attempts made.
        attempts: u32,
        /// Why.
        reason: String,
    },
}

/// How often the dispatcher looks at the outbox even when nobody wakes it:
/// a safety net for an enqueue whose wake was forgotten, or records put
/// there by hand.
const RESCAN_EVERY: Duration = Duration::from_secs(60);

/// Wakes a running dispatcher after [`Outbox::enqueue`], so new notices go
/// out at once instead of at the next scheduled retry.
#[derive(Debug, Clone)]
pub struct DispatcherHandle {
    wake: Arc<Notify>,
}

impl DispatcherHandle {
    /// Tells the dispatcher to look at the outbox again. A wake before the
    /// dispatcher starts waiting is kept, not lost.
    pub fn wake(&self) {
        self.wake.notify_one();
    }
}

/// Delivers the outbox's pending notices, retrying with backoff.
#[derive(Debug)]
pub struct Dispatcher {
    outbox: Outbox,
    context: Arc<AttemptContext>,
    schedule: RetrySchedule,
    max_in_flight: usize,
    wake: Arc<Notify>,
}

/// What an attempt task needs, shared by all of them.
#[derive(Debug)]
struct AttemptContext {
    config: NoticeConfig,
    templates: NoticeTemplates,
    webhooks: WebhookSender,
    secrets: SecretSource,
}

impl AttemptContext {
    async fn attempt(&self, delivery: &Delivery) -> AttemptOutcome {
        match &delivery.destination {
            Destination::Email { to } => {
                crate::email::deliver(&self.config, delivery, to, &self.templates, &self.secrets)
                    .await
            }
            Destination::Webhook(target) => {
                self.webhooks
                    .deliver(
                        &self.config,
                        delivery,
                        target,
                        &self.templates,
                        &self.secrets,
                    )
                    .await
            }
        }
    }
}

impl Dispatcher {
    /// Checks `config`, loads the templates and builds the HTTP client.
    /// Secrets are looked up in the environment and in
    /// `$CREDENTIALS_DIRECTORY` as read now.
    pub fn new(outbox: Outbox, config: NoticeConfig) -> Result<Dispatcher, NoticeError> {
        config.validate()?;
        let templates = NoticeTemplates::load(config.templates_dir.as_deref())?;
        let webhooks = WebhookSender::new(&config)?;
        Ok(Dispatcher {
            outbox,
            schedule: RetrySchedule::from_config(&config),
            max_in_flight: config.max_in_flight,
            wake: Arc::new(Notify::new()),
            context: Arc::new(AttemptContext {
                config,
                templates,
                webhooks,
                secrets: SecretSource::from_environment(),
            }),
        })
    }

    /// Looks up systemd credentials (SMTP `password_credential`, webhook
    /// secrets) in `dir` instead of `$CREDENTIALS_DIRECTORY`.
    pub fn with_credentials_dir(mut self, dir: impl Into<PathBuf>) -> Dispatcher {
        let context = Arc::get_mut(&mut self.context).expect(
            "invariant: the context is shared only once run() starts, and run() consumes self",
        );
        context.secrets.credentials_dir = Some(dir.into());
        self
    }

    /// A handle for waking the dispatcher after enqueuing.
    pub fn handle(&self) -> DispatcherHandle {
        DispatcherHandle {
            wake: Arc::clone(&self.wake),
        }
    }

    /// Delivers until `shutdown` becomes true (or its sender is dropped).
    /// Reports every attempt's outcome on `reports`; a full channel slows
    /// the dispatcher down, a closed one is ignored (the outbox keeps the
    /// state either way).
    pub async fn run(
        self,
        mut shutdown: watch::Receiver<bool>,
        reports: mpsc::Sender<DeliveryReport>,
    ) {
        let mut waiting: HashMap<DeliveryId, Delivery> = HashMap::new();
        let mut in_flight: JoinSet<(Delivery, AttemptOutcome)> = JoinSet::new();
        let mut in_flight_ids: HashMap<tokio::task::Id, DeliveryId> = HashMap::new();
        let mut rescan = true;
        let mut rescan_timer = tokio::time::interval(RESCAN_EVERY);
        rescan_timer.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            if *shutdown.borrow_and_update() {
                break;
            }
            if rescan {
                rescan = false;
                let busy: HashSet<&DeliveryId> = in_flight_ids.values().collect();
                for delivery in self.load_pending().await {
                    if !busy.contains(&delivery.delivery_id) {
                        waiting
                            .entry(delivery.delivery_id.clone())
                            .or_insert(delivery);
                    }
                }
            }
            let now = now_ms();
            while in_flight.len() < self.max_in_flight {
                let Some(delivery) = take_most_overdue(&mut waiting, now) else {
                    break;
                };
                let id = delivery.delivery_id.clone();
                let context = Arc::clone(&self.context);
                let task = in_flight.spawn(async move {
                    let outcome = context.attempt(&delivery).await;
                    (delivery, outcome)
                });
                in_flight_ids.insert(task.id(), id);
            }
            let next_due = (in_flight.len() < self.max_in_flight)
                .then(|| waiting.values().map(|d| d.next_attempt_at_ms).min())
                .flatten()
                .map(|at| Duration::from_millis(at.saturating_sub(now)));

            tokio::select! {
                changed = shutdown.changed() => {
                    if changed.is_err() {
                        break;
                    }
                }
                Some(joined) = in_flight.join_next_with_id(), if !in_flight.is_empty() => {
                    match joined {
                        Ok((task, (delivery, outcome))) => {
                            in_flight_ids.remove(&task);
                            if let Some(again) = self.record(delivery, outcome, &reports, &mut shutdown).await {
                                waiting.insert(again.delivery_id.clone(), again);
                            }
                        }
                        Err(err) => {
                            let lost = in_flight_ids.remove(&err.id());
                            tracing::error!(delivery_id = ?lost, error = %err, "notice attempt task ended abnormally; will reload it from the outbox");
                            rescan = true;
                        }
                    }
                }
                _ = self.wake.notified() => rescan = true,
                _ = rescan_timer.tick() => rescan = true,
                _ = tokio::time::sleep(next_due.unwrap_or_default()), if next_due.is_some() => {}
            }
        }
        in_flight.abort_all();
        while in_flight.join_next().await.is_some() {}
        tracing::debug!(waiting = waiting.len(), "notice dispatcher stopped");
    }

    async fn load_pending(&self) -> Vec<Delivery> {
        let outbox = self.outbox.clone();
        match tokio::task::spawn_blocking(move || outbox.pending()).await {
            Ok(Ok(pending)) => pending,
            Ok(Err(err)) => {
                tracing::error!(error = %err, "cannot read the notice outbox; will try again on the next wake");
                Vec::new()
            }
            Err(err) => {
                tracing::error!(error = %err, "outbox scan task failed");
                Vec::new()
            }
        }
    }

    /// Writes the outcome of an attempt to the outbox and reports it.
    /// Returns the delivery when it is to be tried again.
    async fn record(
        &self,
        mut delivery: Delivery,
        outcome: AttemptOutcome,
        reports: &mpsc::Sender<DeliveryReport>,
        shutdown: &mut watch::Receiver<bool>,
    ) -> Option<Delivery> {
        delivery.attempts += 1;
        let now = now_ms();
        let attempts = delivery.attempts;
        let outcome = match outcome {
            AttemptOutcome::Delivered => DeliveryOutcome::Delivered { attempts },
            AttemptOutcome::Permanent { reason } => {
                DeliveryOutcome::PermanentFailure { attempts, reason }
            }
            AttemptOutcome::Transient {
                reason,
                retry_after,
            } => {
                let next = self.schedule.next_attempt_at_ms(
                    delivery.created_at_ms,
                    now,
                    attempts,
                    retry_after,
                    |bound| fastrand::u64(0..=bound),
                );
                match next {
                    Some(at) => {
                        delivery.next_attempt_at_ms = at;
                        DeliveryOutcome::Retrying {
                            attempt: attempts,
                            next_in: Duration::from_millis(at.saturating_sub(now)),
                            reason,
                        }
                    }
                    None => DeliveryOutcome::PermanentFailure {
                        attempts,
                        reason: format!(
                            "gave up after {attempts} attempts over {}: {reason}",
                            duration_text::format(self.schedule.retry_for)
                        ),
                    },
                }
            }
        };
        match &outcome {
            DeliveryOutcome::Delivered { .. } => {
                delivery.state = DeliveryState::Delivered;
                delivery.last_error = None;
                delivery.settled_at_ms = Some(now);
            }
            DeliveryOutcome::Retrying { reason, .. } => delivery.last_error = Some(reason.clone()),
            DeliveryOutcome::PermanentFailure { reason, .. } => {
                delivery.state = DeliveryState::PermanentFailure;
                delivery.last_error = Some(reason.clone());
                delivery.settled_at_ms = Some(now);
            }
        }
        self.persist(&delivery).await;

        let report = DeliveryReport {
            job_id: delivery.summary.job_id.clone(),
            delivery_id: delivery.delivery_id.clone(),
            event: delivery.summary.event,
            channel: delivery.destination.channel(),
            target: delivery.destination.redacted(),
            outcome,
        };
        log_report(&report);
        let retry = matches!(report.outcome, DeliveryOutcome::Retrying { .. });
        tokio::select! {
            _ = reports.send(report) => {}
            _ = shutdown.changed() => {}
        }
        retry.then_some(delivery)
    }

    /// Saves the record. A failure is logged, not fatal: a retry still
    /// happens from memory, and a settled notice whose file could not be
    /// moved is sent again after a restart, under the same idempotency key.
    async fn persist(&self, delivery: &Delivery) {
        let outbox = self.outbox.clone();
        let record = delivery.clone();
        let written = tokio::task::spawn_blocking(move || match record.state {
            DeliveryState::Pending => outbox.save_pending(&record),
            DeliveryState::Delivered | DeliveryState::PermanentFailure => outbox.settle(&record),
        })
        .await;
        match written {
            Ok(Ok(())) => {}
            Ok(Err(err)) => {
                tracing::error!(delivery_id = %delivery.delivery_id, error = %err, "cannot update the outbox record")
            }
            Err(err) => {
                tracing::error!(delivery_id = %delivery.delivery_id, error = %err, "outbox write task failed")
            }
        }
    }
}

/// Removes and returns the due delivery that has waited longest.
fn take_most_overdue(waiting: &mut HashMap<DeliveryId, Delivery>, now_ms: u64) -> Option<Delivery> {
    let id = waiting
        .values()
        .filter(|d| d.next_attempt_at_ms <= now_ms)
        .min_by_key(|d| (d.next_attempt_at_ms, d.created_at_ms))
        .map(|d| d.delivery_id.clone())?;
    waiting.remove(&id)
}

fn log_report(report: &DeliveryReport) {
    let (job, id, target, event) = (
        &report.job_id,
        &report.delivery_id,
        &report.target,
        report.event,
    );
    match &report.outcome {
        DeliveryOutcome::Delivered { attempts } => {
            tracing::info!(job_id = %job, delivery_id = %id, %target, %event, attempts, "notice delivered")
        }
        DeliveryOutcome::Retrying {
            attempt,
            next_in,
            reason,
        } => tracing::warn!(
            job_id = %job, delivery_id = %id, %target, %event, attempt,
            next_in_ms = u64::try_from(next_in.as_millis()).unwrap_or(u64::MAX),
            %reason, "notice not delivered; will retry"
        ),
        DeliveryOutcome::PermanentFailure { attempts, reason } => tracing::error!(
            job_id = %job, delivery_id = %id, %target, %event, attempts, %reason,
            "notice failed permanently"
        ),
    }
}

#[cfg(test)]
mod tests;
