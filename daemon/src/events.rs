//! Job events (the lines of a job's `events.jsonl`) as the daemon builds them.

use jobs::state::{now_ms, JobEvent};

/// Builds an event with a few fields.
pub fn event(
    name: &str,
    fields: impl IntoIterator<Item = (&'static str, serde_json::Value)>,
) -> JobEvent {
    JobEvent {
        ts_ms: now_ms(),
        event: name.to_string(),
        fields: fields
            .into_iter()
            .map(|(key, value)| (key.to_string(), value))
            .collect(),
    }
}
