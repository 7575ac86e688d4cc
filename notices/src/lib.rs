//! Notices: telling people and systems that a render job started, made
//! progress, finished, failed or was cancelled.
//!
//! The daemon turns a job event into a [`JobSummary`], decides with the
//! job's [`NoticePolicy`] whether it is wanted, and calls
//! [`Outbox::enqueue`] with the job's [`Recipients`] (plus the config's
//! `default_email`, see [`Recipients::with_default_email`]) *before* it
//! records the job as finished. From then on the notice cannot be lost:
//! it is a file in the state directory until a receiver accepts it or it
//! fails for good. A [`Dispatcher`] task drains the outbox, retrying with
//! exponential backoff and jitter for `retry_for` (24 h by default), and
//! reports every outcome as a [`DeliveryReport`].
//!
//! Channels:
//! - email via SMTP (STARTTLS, implicit TLS or plain; optional login with
//!   the password from a file or a systemd credential) or a local sendmail
//!   program, as `multipart/alternative` plain text and HTML rendered from
//!   the templates in `templates/notices/` ([`NoticeTemplates`]);
//! - webhooks: a versioned JSON payload ([`webhook::WebhookPayload`]),
//!   HMAC-signed with a timestamp against replay, with an idempotency key,
//!   and carrying the Standard Webhooks headers too ([`webhook`] docs);
//!   or a Slack/Mattermost `{"text": ...}` body.
//!
//! Secrets never enter the outbox or the logs: records store the *name* of
//! a webhook secret (`secret_env`), resolved when an attempt is made.
//!
//! ```no_run
//! # async fn wire(state_dir: &std::path::Path) -> Result<(), notices::NoticeError> {
//! use notices::{Dispatcher, NoticeConfig, Outbox};
//!
//! let outbox = Outbox::open(state_dir.join("outbox"))?;
//! let dispatcher = Dispatcher::new(outbox.clone(), NoticeConfig::default())?;
//! let wake = dispatcher.handle();
//! let (stop, shutdown) = tokio::sync::watch::channel(false);
//! let (reports, mut report_rx) = tokio::sync::mpsc::channel(64);
//! let task = tokio::spawn(dispatcher.run(shutdown, reports));
//! // ... on a job event: outbox.enqueue(&summary, &recipients)?; wake.wake();
//! # let _ = (&mut report_rx, &wake);
//! stop.send(true).ok();
//! task.await.ok();
//! # Ok(()) }
//! ```

mod attempt;
mod backoff;
mod clock;
mod config;
mod dispatcher;
mod duration_text;
mod email;
mod error;
mod outbox;
mod secret;
mod summary;
mod template;
pub mod webhook;

#[cfg(test)]
mod testkit;

pub use config::{NoticeConfig, SendmailConfig, SmtpConfig, SmtpSecurity};
pub use dispatcher::{DeliveryOutcome, DeliveryReport, Dispatcher, DispatcherHandle};
pub use error::NoticeError;
pub use outbox::{
    ChannelKind, Delivery, DeliveryId, DeliveryState, DeliveryStatus, Destination, Outbox,
    RECORD_FORMAT,
};
pub use summary::{JobSummary, NoticeKind, NoticePolicy, Recipients, WebhookTarget};
pub use template::{NoticeTemplates, Template, FIELD_NAMES};
