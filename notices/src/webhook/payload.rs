//! The webhook payload, version 1, and how it is signed.
//!
//! # Payload
//!
//! Every webhook (unless `slack: true`) receives a `POST` with
//! `Content-Type: application/json` and this body:
//!
//! ```json
//! {
//!   "version": 1,
//!   "event": "done",
//!   "delivery_id": "5c1f0e3a9b7d4c2e8f6a1b3c5d7e9f01",
//!   "job_id": "20250131-120000-interview-042",
//!   "name": "interview-042",
//!   "state": "done",
//!   "output": "/data/out/interview-042.mp4",
//!   "clips_done": 40,
//!   "clips_total": 40,
//!   "gpu": "NVIDIA L4 (GPU-5f3c...)",
//!   "error": null,
//!   "log_tail": [],
//!   "timings": {
//!     "submitted_at_ms": 1738324800000,
//!     "started_at_ms": 1738324801250,
//!     "finished_at_ms": 1738325102000,
//!     "duration_secs": 300.75
//!   }
//! }
//! ```
//!
//! `event` is one of `started`, `progress`, `done`, `failed`, `cancelled`.
//! Fields may be added within version 1; receivers should ignore unknown
//! fields. A change that removes or changes the meaning of a field bumps
//! `version`.
//!
//! # Headers
//!
//! - `X-Reelspool-Event`: the event.
//! - `X-Reelspool-Delivery` and `Idempotency-Key`: the delivery id. It is
//!   the same on every retry of the same notice, so a receiver that stores
//!   the ids it has seen can drop duplicates (delivery is at least once).
//! - `X-Reelspool-Timestamp`: Unix time in seconds when the attempt was made.
//! - `X-Reelspool-Signature`: `sha256=<hex>`, present when the webhook has
//!   a secret: the lowercase hex HMAC-SHA256, keyed with the secret, of the
//!   timestamp, a `.`, and the raw body bytes (`"<timestamp>.<body>"`).
//!
//! Signing the timestamp with the body lets a receiver refuse replays: it
//! recomputes the HMAC over the header's timestamp and the body exactly as
//! received, compares in constant time, and rejects timestamps more than a
//! few minutes away from its clock.
//!
//! The same delivery id, time and (with a secret) an HMAC over
//! `"<id>.<timestamp>.<body>"` are also sent as the Standard Webhooks
//! headers `webhook-id`, `webhook-timestamp` and `webhook-signature`; see
//! the `standard` module beside this one.

use hmac::{Hmac, Mac};
use serde::{Deserialize, Serialize};
use sha2::Sha256;

use crate::{JobSummary, NoticeKind};

/// The payload `version` this crate sends.
pub const PAYLOAD_VERSION: u32 = 1;

/// Header carrying the event name.
pub const HEADER_EVENT: &str = "X-Reelspool-Event";
/// Header carrying the delivery id.
pub const HEADER_DELIVERY: &str = "X-Reelspool-Delivery";
/// Standard idempotency header, same value as [`HEADER_DELIVERY`].
pub const HEADER_IDEMPOTENCY_KEY: &str = "Idempotency-Key";
/// Header carrying the signing time, Unix seconds.
pub const HEADER_TIMESTAMP: &str = "X-Reelspool-Timestamp";
/// Header carrying `sha256=<hex HMAC>` of `"<timestamp>.<body>"`.
pub const HEADER_SIGNATURE: &str = "X-Reelspool-Signature";

/// The JSON body of a webhook notice, version 1 (see the module docs).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct WebhookPayload {
    /// Always [`PAYLOAD_VERSION`] when sent by this crate.
    pub version: u32,
    /// What happened.
    pub event: NoticeKind,
    /// The idempotency key, also in the headers.
    pub delivery_id: String,
    /// The job's id.
    pub job_id: String,
    /// The job's name.
    pub name: String,
    /// The job's state.
    pub state: String,
    /// The output video's path.
    pub output: Option<String>,
    /// Clips finished.
    pub clips_done: u32,
    /// Clips planned, when known.
    pub clips_total: Option<u32>,
    /// The GPU used.
    pub gpu: Option<String>,
    /// Why the job failed.
    pub error: Option<String>,
    /// The worker's last log lines, for failed jobs.
    pub log_tail: Vec<String>,
    /// When things happened.
    pub timings: PayloadTimings,
}

/// The `timings` object of the payload. Times are milliseconds since the
/// Unix epoch.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct PayloadTimings {
    /// When the job was accepted.
    pub submitted_at_ms: u64,
    /// When it started running.
    pub started_at_ms: Option<u64>,
    /// When it ended.
    pub finished_at_ms: Option<u64>,
    /// How long it ran.
    pub duration_secs: Option<f64>,
}

impl WebhookPayload {
    /// The payload announcing `summary` under `delivery_id`.
    pub fn new(delivery_id: &str, summary: &JobSummary) -> WebhookPayload {
        WebhookPayload {
            version: PAYLOAD_VERSION,
            event: summary.event,
            delivery_id: delivery_id.to_string(),
            job_id: summary.job_id.clone(),
            name: summary.name.clone(),
            state: summary.state.clone(),
            output: summary.output.as_ref().map(|p| p.display().to_string()),
            clips_done: summary.clips_done,
            clips_total: summary.clips_total,
            gpu: summary.gpu.clone(),
            error: summary.error.clone(),
            log_tail: summary.log_tail.clone(),
            timings: PayloadTimings {
                submitted_at_ms: summary.submitted_at_ms,
                started_at_ms: summary.started_at_ms,
                finished_at_ms: summary.finished_at_ms,
                duration_secs: summary.duration_secs,
            },
        }
    }
}

/// The `X-Reelspool-Signature` value for `body` sent at `timestamp_secs`:
/// `sha256=` and the hex HMAC-SHA256 of `"<timestamp_secs>.<body>"`.
pub fn signature(secret: &[u8], timestamp_secs: u64, body: &[u8]) -> String {
    let mut mac = <Hmac<Sha256> as Mac>::new_from_slice(secret)
        .expect("invariant: HMAC accepts keys of any length");
    mac.update(timestamp_secs.to_string().as_bytes());
    mac.update(b".");
    mac.update(body);
    format!("sha256={}", hex(&mac.finalize().into_bytes()))
}

/// Lowercase hex of `bytes`.
pub(crate) fn hex(bytes: &[u8]) -> String {
    const DIGITS: &[u8; 16] = b"0123456789abcdef";
    let mut out = String::with_capacity(bytes.len() * 2);
    for byte in bytes {
        out.push(char::from(DIGITS[usize::from(byte >> 4)]));
        out.push(char::from(DIGITS[usize::from(byte & 0x0f)]));
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::testkit::sample_summary;

    #[test]
    fn hex_is_lowercase_two_digits_per_byte() {
        assert_eq!(hex(&[0x00, 0x0f, 0xa5, 0xff]), "000fa5ff");
    }

    #[test]
    fn signature_matches_an_independent_hmac() {
        // Expected value from `printf '1700000000.what do ya want for
        // nothing?' | openssl dgst -sha256 -hmac Jefe`.
        assert_eq!(
            signature(b"Jefe", 1_700_000_000, b"what do ya want for nothing?"),
            "sha256=1cdd0650c8be1cb0974b1788d458b1e781206cfef59b85faafc582d2e182c57e"
        );
    }

    #[test]
    fn signature_covers_timestamp_and_body() {
        let body = br#"{"version":1}"#;
        let base = signature(b"k", 1_700_000_000, body);
        assert!(base.starts_with("sha256="));
        assert_eq!(base.len(), "sha256=".len() + 64);
        assert_ne!(base, signature(b"k", 1_700_000_001, body));
        assert_ne!(base, signature(b"k", 1_700_000_000, br#"{"version":2}"#));
        assert_ne!(base, signature(b"other", 1_700_000_000, body));
    }

    #[test]
    fn payload_carries_version_event_and_timings() {
        let summary = sample_summary("job-7", NoticeKind::Done);
        let json =
            serde_json::to_value(WebhookPayload::new("d-1", &summary)).expect("payload serialises");
        assert_eq!(json["version"], 1);
        assert_eq!(json["event"], "done");
        assert_eq!(json["job_id"], "job-7");
        assert_eq!(json["delivery_id"], "d-1");
        assert_eq!(json["timings"]["submitted_at_ms"], summary.submitted_at_ms);
        assert_eq!(json["output"], "/data/out/interview-042.mp4");
    }
}
