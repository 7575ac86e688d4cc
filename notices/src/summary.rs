//! What a notice is about and who receives it.
//!
//! These types are this crate's own view of a job: the daemon maps its job
//! state into them, so that `notices` depends on no sibling crate and an
//! outbox record stays readable even if the job format changes.

use std::fmt;
use std::path::PathBuf;

use serde::{Deserialize, Serialize};

/// The moment in a job's life that a notice announces.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum NoticeKind {
    /// The job got a GPU and its worker started.
    Started,
    /// Another `progress_every` clips are finished.
    Progress,
    /// The video is in place.
    Done,
    /// The job failed for good (after its own retries).
    Failed,
    /// Someone cancelled the job.
    Cancelled,
}

impl NoticeKind {
    /// The events a job is notified about when its `notify.on` is not given.
    pub const DEFAULT_ON: [NoticeKind; 2] = [NoticeKind::Done, NoticeKind::Failed];

    /// The lowercase name used in job files, payloads and templates.
    pub fn as_str(self) -> &'static str {
        match self {
            NoticeKind::Started => "started",
            NoticeKind::Progress => "progress",
            NoticeKind::Done => "done",
            NoticeKind::Failed => "failed",
            NoticeKind::Cancelled => "cancelled",
        }
    }
}

impl fmt::Display for NoticeKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// Which events of one job produce notices: the job's `notify.on` list and
/// its optional `progress_every`.
///
/// Progress notices are driven by `progress_every` alone (listing
/// `progress` in `on` without a count would not say how often), so a job
/// that wants them sets `progress_every: N` and gets one every N clips.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct NoticePolicy {
    /// Events that produce a notice; defaults to done and failed.
    #[serde(default = "default_on")]
    pub on: Vec<NoticeKind>,
    /// Send a progress notice after every this many finished clips.
    #[serde(default)]
    pub progress_every: Option<u32>,
}

fn default_on() -> Vec<NoticeKind> {
    NoticeKind::DEFAULT_ON.to_vec()
}

impl Default for NoticePolicy {
    fn default() -> Self {
        NoticePolicy {
            on: default_on(),
            progress_every: None,
        }
    }
}

impl NoticePolicy {
    /// Whether `event`, seen with `clips_done` finished clips, should be
    /// announced.
    pub fn wants(&self, event: NoticeKind, clips_done: u32) -> bool {
        match event {
            NoticeKind::Progress => match self.progress_every {
                Some(every) if every > 0 => clips_done > 0 && clips_done % every == 0,
                _ => false,
            },
            other => self.on.contains(&other),
        }
    }
}

/// A snapshot of a job at the moment of a notice; everything the templates
/// and the webhook payload can show.
///
/// It is copied into every outbox record, so a notice delivered a day later
/// says what was true when it was queued.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct JobSummary {
    /// The job's id in the state directory.
    pub job_id: String,
    /// The job's name (from its file, or the file stem).
    pub name: String,
    /// The job's state as the daemon names it ("running", "done", ...).
    pub state: String,
    /// What this notice announces.
    pub event: NoticeKind,
    /// Where the finished video is (or will be).
    pub output: Option<PathBuf>,
    /// How long the job ran, in seconds, when known.
    pub duration_secs: Option<f64>,
    /// Clips finished so far.
    pub clips_done: u32,
    /// Clips the job will render, when known.
    pub clips_total: Option<u32>,
    /// The GPU the job ran on (name or UUID).
    pub gpu: Option<String>,
    /// The error that ended the job, for failed jobs.
    pub error: Option<String>,
    /// The last lines of the worker's log, for failed jobs.
    pub log_tail: Vec<String>,
    /// When the job was accepted, in milliseconds since the Unix epoch.
    pub submitted_at_ms: u64,
    /// When its worker started, in milliseconds since the Unix epoch.
    pub started_at_ms: Option<u64>,
    /// When it ended, in milliseconds since the Unix epoch.
    pub finished_at_ms: Option<u64>,
}

/// One webhook to call.
///
/// The secret itself never appears here: `secret_env` *names* it, and it is
/// looked up only when a delivery is attempted, first as an environment
/// variable of that name, then as a systemd credential of that name
/// (`$CREDENTIALS_DIRECTORY/<name>`). That keeps secrets out of the outbox
/// files, which outlive the process and may be read by backup tools.
#[derive(Debug, Clone, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct WebhookTarget {
    /// An `http://` or `https://` URL.
    pub url: String,
    /// Name of the environment variable or systemd credential holding the
    /// HMAC secret (as it is, or `whsec_<base64>`); no signature headers
    /// when absent. During a rotation, `<name>_PREVIOUS` holds the old
    /// secret, which signs too.
    #[serde(default)]
    pub secret_env: Option<String>,
    /// Send a Slack/Mattermost incoming-webhook body (`{"text": ...}`)
    /// instead of the versioned JSON payload.
    #[serde(default)]
    pub slack: bool,
}

/// Everyone a job's notices go to.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Recipients {
    /// Email addresses, one delivery each.
    #[serde(default)]
    pub email: Vec<String>,
    /// Webhooks, one delivery each.
    #[serde(default)]
    pub webhooks: Vec<WebhookTarget>,
}

impl Recipients {
    /// Adds the config's `default_email` addresses to the job's own,
    /// skipping any address already present (compared case-insensitively),
    /// so nobody gets the same notice twice.
    pub fn with_default_email(mut self, defaults: &[String]) -> Self {
        for address in defaults {
            let known = self
                .email
                .iter()
                .any(|have| have.trim().eq_ignore_ascii_case(address.trim()));
            if !known {
                self.email.push(address.clone());
            }
        }
        self
    }

    /// True when there is nobody to notify.
    pub fn is_empty(&self) -> bool {
        self.email.is_empty() && self.webhooks.is_empty()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn default_policy_announces_done_and_failed_only() {
        let policy = NoticePolicy::default();
        assert!(policy.wants(NoticeKind::Done, 0));
        assert!(policy.wants(NoticeKind::Failed, 0));
        assert!(!policy.wants(NoticeKind::Cancelled, 0));
        assert!(!policy.wants(NoticeKind::Started, 0));
        assert!(!policy.wants(NoticeKind::Progress, 10));
    }

    #[test]
    fn progress_is_announced_every_n_clips() {
        let policy = NoticePolicy {
            on: vec![],
            progress_every: Some(5),
        };
        let announced: Vec<u32> = (0..=12)
            .filter(|&clips| policy.wants(NoticeKind::Progress, clips))
            .collect();
        assert_eq!(announced, vec![5, 10]);
    }

    #[test]
    fn policy_from_yaml_like_json_defaults_on() {
        let policy: NoticePolicy =
            serde_json::from_str(r#"{"progress_every": 3}"#).expect("a literal policy parses");
        assert_eq!(policy.on, vec![NoticeKind::Done, NoticeKind::Failed]);
    }

    #[test]
    fn default_email_is_added_without_duplicates() {
        let recipients = Recipients {
            email: vec!["Ops@Example.com".into()],
            webhooks: vec![],
        }
        .with_default_email(&["ops@example.com".into(), "lead@example.com".into()]);
        assert_eq!(
            recipients.email,
            vec!["Ops@Example.com", "lead@example.com"]
        );
    }
}
