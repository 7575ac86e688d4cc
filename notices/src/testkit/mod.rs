//! Test fixtures: sample jobs and real servers on loopback.

pub(crate) mod http;
pub(crate) mod smtp;

use std::future::Future;
use std::path::PathBuf;
use std::time::Duration;

use crate::{JobSummary, NoticeKind};

/// How long a test waits for something that should happen in milliseconds
/// before it declares failure. Generous, because CI machines are shared.
pub(crate) const PATIENCE: Duration = Duration::from_secs(30);

/// Awaits `future`, failing the test if it takes longer than [`PATIENCE`].
pub(crate) async fn within<T>(what: &str, future: impl Future<Output = T>) -> T {
    match tokio::time::timeout(PATIENCE, future).await {
        Ok(value) => value,
        Err(_) => panic!("timed out after {PATIENCE:?} waiting for {what}"),
    }
}

/// A finished job's summary, announcing `event`.
pub(crate) fn sample_summary(job_id: &str, event: NoticeKind) -> JobSummary {
    let submitted = 1_738_324_800_000;
    JobSummary {
        job_id: job_id.to_string(),
        name: "interview-042".to_string(),
        state: event.as_str().to_string(),
        event,
        output: Some(PathBuf::from("/data/out/interview-042.mp4")),
        duration_secs: Some(300.75),
        clips_done: 40,
        clips_total: Some(40),
        gpu: Some("NVIDIA L4".to_string()),
        error: None,
        log_tail: Vec::new(),
        submitted_at_ms: submitted,
        started_at_ms: Some(submitted + 1_250),
        finished_at_ms: Some(submitted + 302_000),
    }
}

/// A fresh delivery of a "done" notice for job-7 to `destination`.
pub(crate) fn sample_delivery(destination: crate::Destination) -> crate::Delivery {
    let summary = sample_summary("job-7", NoticeKind::Done);
    crate::Delivery {
        format: crate::RECORD_FORMAT,
        delivery_id: crate::DeliveryId::derive(&summary, &destination),
        destination,
        summary,
        created_at_ms: 0,
        attempts: 0,
        next_attempt_at_ms: 0,
        last_error: None,
        state: crate::DeliveryState::Pending,
        settled_at_ms: None,
    }
}
