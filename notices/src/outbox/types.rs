//! The records the outbox stores and the views it gives out.

use std::fmt;

use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

use crate::{JobSummary, NoticeKind, WebhookTarget};

/// Identifies one delivery of one notice to one recipient. It is also the
/// idempotency key sent to receivers (`X-Reelspool-Delivery`,
/// `Idempotency-Key`, and the email's `Message-ID`).
///
/// Derived, not random: a hash of the job id, the event (with the clip
/// count for progress events), the job's start time and the recipient. The
/// same event queued twice gets the same id, while a retried job that fails
/// again (new start time) gets a new notice.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(transparent)]
pub struct DeliveryId(String);

impl DeliveryId {
    pub(crate) fn derive(summary: &JobSummary, destination: &Destination) -> DeliveryId {
        let mut hash = Sha256::new();
        let mut field = |bytes: &[u8]| {
            hash.update(bytes);
            hash.update([0u8]);
        };
        field(b"reelspool-notice-v1");
        field(summary.job_id.as_bytes());
        field(summary.event.as_str().as_bytes());
        field(&summary.submitted_at_ms.to_le_bytes());
        field(&summary.started_at_ms.unwrap_or(0).to_le_bytes());
        if summary.event == NoticeKind::Progress {
            field(&summary.clips_done.to_le_bytes());
        }
        match destination {
            Destination::Email { to } => {
                field(b"email");
                field(to.trim().to_ascii_lowercase().as_bytes());
            }
            Destination::Webhook(target) => {
                field(b"webhook");
                field(target.url.as_bytes());
                field(target.secret_env.as_deref().unwrap_or("").as_bytes());
                field(&[u8::from(target.slack)]);
            }
        }
        let digest = hash.finalize();
        DeliveryId(crate::webhook::hex(&digest[..16]))
    }

    /// The id as text (32 lowercase hex digits).
    pub fn as_str(&self) -> &str {
        &self.0
    }

    pub(crate) fn file_name(&self) -> String {
        format!("{}.json", self.0)
    }
}

impl fmt::Display for DeliveryId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

/// Email or webhook.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum ChannelKind {
    /// An email message.
    Email,
    /// An HTTP POST.
    Webhook,
}

/// Where one delivery goes.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "lowercase")]
pub enum Destination {
    /// One email address.
    Email {
        /// The address, as the job or config wrote it.
        to: String,
    },
    /// One webhook.
    Webhook(WebhookTarget),
}

impl Destination {
    /// Email or webhook.
    pub fn channel(&self) -> ChannelKind {
        match self {
            Destination::Email { .. } => ChannelKind::Email,
            Destination::Webhook(_) => ChannelKind::Webhook,
        }
    }

    /// A description safe for logs and reports: the address for email,
    /// scheme, host and port for webhooks (paths and queries of
    /// incoming-webhook URLs are often the secret).
    pub fn redacted(&self) -> String {
        match self {
            Destination::Email { to } => to.clone(),
            Destination::Webhook(target) => {
                let url = reqwest::Url::parse(&target.url)
                    .map(|url| crate::webhook::redact_url(&url))
                    .unwrap_or_else(|_| "<unparsable webhook URL>".to_string());
                if target.slack {
                    format!("{url} (slack)")
                } else {
                    url
                }
            }
        }
    }
}

/// Where a delivery stands.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum DeliveryState {
    /// Not yet accepted; will be attempted (again).
    Pending,
    /// The receiver accepted it.
    Delivered,
    /// Refused for good, or retried for the whole `retry_for` window.
    PermanentFailure,
}

/// One outbox record: a notice for one recipient and its delivery history.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Delivery {
    /// [`super::RECORD_FORMAT`] at the time of writing.
    pub format: u32,
    /// The id, also the idempotency key.
    pub delivery_id: DeliveryId,
    /// The recipient.
    pub destination: Destination,
    /// The job as it was when the notice was queued.
    pub summary: JobSummary,
    /// When the notice was queued (ms since the Unix epoch); the retry
    /// window counts from here.
    pub created_at_ms: u64,
    /// Attempts made so far.
    pub attempts: u32,
    /// Not to be attempted before this time (ms since the Unix epoch).
    pub next_attempt_at_ms: u64,
    /// Why the last attempt failed.
    pub last_error: Option<String>,
    /// Pending, delivered or failed.
    pub state: DeliveryState,
    /// When it was delivered or given up (ms since the Unix epoch).
    pub settled_at_ms: Option<u64>,
}

impl Delivery {
    /// The record as a caller sees it, with the target redacted.
    pub fn status(&self) -> DeliveryStatus {
        DeliveryStatus {
            delivery_id: self.delivery_id.clone(),
            job_id: self.summary.job_id.clone(),
            event: self.summary.event,
            channel: self.destination.channel(),
            target: self.destination.redacted(),
            state: self.state,
            attempts: self.attempts,
            last_error: self.last_error.clone(),
        }
    }
}

/// What [`super::Outbox::status_for_job`] says about one delivery.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct DeliveryStatus {
    /// The delivery.
    pub delivery_id: DeliveryId,
    /// Its job.
    pub job_id: String,
    /// The event it announces.
    pub event: NoticeKind,
    /// Email or webhook.
    pub channel: ChannelKind,
    /// The recipient, redacted as in [`Destination::redacted`].
    pub target: String,
    /// Pending, delivered or failed.
    pub state: DeliveryState,
    /// Attempts made.
    pub attempts: u32,
    /// The last failure, if any.
    pub last_error: Option<String>,
}
