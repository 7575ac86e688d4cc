//! The `notices` section of the daemon's configuration.
//!
//! Every field has a default, and the defaults work on a machine with no
//! mail server: webhooks need nothing configured, and email notices fail
//! permanently with a message naming the setting to add.

use std::path::PathBuf;
use std::time::Duration;

use serde::{Deserialize, Serialize};

use crate::duration_text;
use crate::NoticeError;

/// How notices are sent and retried.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct NoticeConfig {
    /// Send email through this SMTP server (preferred over `sendmail`).
    pub smtp: Option<SmtpConfig>,
    /// Send email by piping it to a local sendmail-compatible program.
    pub sendmail: Option<SendmailConfig>,
    /// Addresses that get every job's notices, on top of the job's own.
    pub default_email: Vec<String>,
    /// When set, webhooks may only call these hosts: exact names or IP
    /// addresses, or `*.example.com` for any subdomain of example.com.
    pub webhook_allowed_hosts: Option<Vec<String>>,
    /// How long a notice is retried before it is recorded as a permanent
    /// failure: "24h", "90m", "1d 12h", or a number of seconds.
    #[serde(with = "duration_text")]
    pub retry_for: Duration,
    /// The first retry waits about this long; each later one twice as long.
    pub backoff_initial_ms: u64,
    /// No retry waits longer than this.
    pub backoff_max_ms: u64,
    /// Limit on opening a connection to a webhook or SMTP server.
    pub connect_timeout_ms: u64,
    /// Limit on a whole webhook request or SMTP conversation.
    pub request_timeout_ms: u64,
    /// At most this many deliveries are attempted at the same time.
    pub max_in_flight: usize,
    /// Directory with `subject.txt`, `body.txt`, `body.html` and
    /// `slack.txt`; a file missing there falls back to the built-in one.
    pub templates_dir: Option<PathBuf>,
}

impl Default for NoticeConfig {
    fn default() -> Self {
        NoticeConfig {
            smtp: None,
            sendmail: None,
            default_email: Vec::new(),
            webhook_allowed_hosts: None,
            retry_for: Duration::from_secs(24 * 60 * 60),
            backoff_initial_ms: 2_000,
            backoff_max_ms: 10 * 60 * 1_000,
            connect_timeout_ms: 10_000,
            request_timeout_ms: 30_000,
            max_in_flight: 8,
            templates_dir: None,
        }
    }
}

/// How the SMTP connection is protected.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum SmtpSecurity {
    /// Plain connection upgraded with STARTTLS, which must succeed (port 587).
    #[default]
    Starttls,
    /// TLS from the first byte, "SMTPS" (port 465).
    Tls,
    /// No encryption: only for a relay on the same host or a trusted LAN.
    None,
}

impl SmtpSecurity {
    /// The port that goes with this kind of connection.
    pub fn default_port(self) -> u16 {
        match self {
            SmtpSecurity::Starttls => 587,
            SmtpSecurity::Tls => 465,
            SmtpSecurity::None => 25,
        }
    }
}

/// An SMTP server to send email through.
///
/// The password is never in this struct: it is read from `password_file` or
/// from the systemd credential `password_credential` each time a message is
/// sent, so rotating it needs no restart and it never reaches a log.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SmtpConfig {
    /// Server host name (also the name its certificate must carry).
    pub host: String,
    /// Server port; defaults to 587, 465 or 25 depending on `security`.
    #[serde(default)]
    pub port: Option<u16>,
    /// STARTTLS, implicit TLS or none.
    #[serde(default)]
    pub security: SmtpSecurity,
    /// Login name; requires one of the password settings.
    #[serde(default)]
    pub username: Option<String>,
    /// File holding the password (a trailing newline is ignored).
    #[serde(default)]
    pub password_file: Option<PathBuf>,
    /// Name of a systemd credential holding the password
    /// (`LoadCredential=` in the unit, read from `$CREDENTIALS_DIRECTORY`).
    #[serde(default)]
    pub password_credential: Option<String>,
    /// Extra CA certificate (PEM) to trust, for a relay with a private CA.
    #[serde(default)]
    pub tls_root_certificate: Option<PathBuf>,
    /// The From address, e.g. `reelspool <render@example.com>`.
    pub from: String,
}

impl SmtpConfig {
    /// The configured port, or the usual one for the security mode.
    pub fn effective_port(&self) -> u16 {
        self.port.unwrap_or_else(|| self.security.default_port())
    }
}

/// A local sendmail-compatible program (sendmail, msmtp, postfix's).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SendmailConfig {
    /// The program; it is called as `<command> -i -f <from> -- <to>`.
    #[serde(default = "default_sendmail_command")]
    pub command: PathBuf,
    /// The From address.
    pub from: String,
}

fn default_sendmail_command() -> PathBuf {
    PathBuf::from("/usr/sbin/sendmail")
}

impl NoticeConfig {
    /// The first retry delay.
    pub fn backoff_initial(&self) -> Duration {
        Duration::from_millis(self.backoff_initial_ms)
    }

    /// The longest retry delay.
    pub fn backoff_max(&self) -> Duration {
        Duration::from_millis(self.backoff_max_ms)
    }

    /// The connect timeout.
    pub fn connect_timeout(&self) -> Duration {
        Duration::from_millis(self.connect_timeout_ms)
    }

    /// The whole-request timeout.
    pub fn request_timeout(&self) -> Duration {
        Duration::from_millis(self.request_timeout_ms)
    }

    /// Checks what can be checked without sending anything, so that a bad
    /// setting stops the daemon at start instead of failing every notice.
    pub fn validate(&self) -> Result<(), NoticeError> {
        let positive = [
            ("backoff_initial_ms", self.backoff_initial_ms),
            ("backoff_max_ms", self.backoff_max_ms),
            ("connect_timeout_ms", self.connect_timeout_ms),
            ("request_timeout_ms", self.request_timeout_ms),
        ];
        for (field, value) in positive {
            if value == 0 {
                return Err(config_error(field, "must be greater than 0"));
            }
        }
        if self.backoff_initial_ms > self.backoff_max_ms {
            return Err(config_error(
                "backoff_initial_ms",
                format!(
                    "{} is larger than backoff_max_ms ({}); raise backoff_max_ms",
                    self.backoff_initial_ms, self.backoff_max_ms
                ),
            ));
        }
        if self.max_in_flight == 0 {
            return Err(config_error("max_in_flight", "must be at least 1"));
        }
        for address in &self.default_email {
            check_address("default_email", address)?;
        }
        if let Some(hosts) = &self.webhook_allowed_hosts {
            if let Some(bad) = hosts
                .iter()
                .find(|h| h.trim().is_empty() || h.contains('/'))
            {
                return Err(config_error(
                    "webhook_allowed_hosts",
                    format!(
                        "{bad:?} is not a host name; write `hooks.example.com` or `*.example.com`"
                    ),
                ));
            }
        }
        if let Some(smtp) = &self.smtp {
            check_address("smtp.from", &smtp.from)?;
            if smtp.host.trim().is_empty() {
                return Err(config_error("smtp.host", "is empty"));
            }
            let has_password = smtp.password_file.is_some() || smtp.password_credential.is_some();
            if smtp.password_file.is_some() && smtp.password_credential.is_some() {
                return Err(config_error(
                    "smtp.password_file",
                    "set either password_file or password_credential, not both",
                ));
            }
            if smtp.username.is_some() != has_password {
                return Err(config_error(
                    "smtp.username",
                    "username and a password setting (password_file or password_credential) go together",
                ));
            }
        }
        if let Some(sendmail) = &self.sendmail {
            check_address("sendmail.from", &sendmail.from)?;
        }
        Ok(())
    }

    /// Whether a webhook may call `host` under `webhook_allowed_hosts`.
    pub fn host_allowed(&self, host: &str) -> bool {
        let Some(allowed) = &self.webhook_allowed_hosts else {
            return true;
        };
        let host = host.trim_end_matches('.').to_ascii_lowercase();
        allowed.iter().any(|entry| {
            let entry = entry.trim().trim_end_matches('.').to_ascii_lowercase();
            match entry.strip_prefix("*.") {
                Some(domain) => host
                    .strip_suffix(domain)
                    .is_some_and(|sub| sub.len() > 1 && sub.ends_with('.')),
                None => host == entry,
            }
        })
    }

    /// Checks a webhook URL the way a delivery will: http(s) only, and a
    /// host the allowlist accepts. The daemon can call this at intake to
    /// refuse a job whose webhook would never be called.
    pub fn check_webhook_url(&self, url: &str) -> Result<reqwest::Url, NoticeError> {
        let parsed = crate::webhook::parse_webhook_url(url)?;
        let host = parsed.host_str().unwrap_or_default();
        if !self.host_allowed(host) {
            return Err(NoticeError::WebhookUrl {
                url: crate::webhook::redact_url(&parsed),
                reason: format!(
                    "host {host} is not in webhook_allowed_hosts; add it there or use an allowed host"
                ),
            });
        }
        Ok(parsed)
    }
}

fn config_error(field: &'static str, message: impl Into<String>) -> NoticeError {
    NoticeError::Config {
        field,
        message: message.into(),
    }
}

fn check_address(field: &'static str, address: &str) -> Result<(), NoticeError> {
    address
        .parse::<lettre::message::Mailbox>()
        .map(|_| ())
        .map_err(|err| {
            config_error(
                field,
                format!("{address:?} is not an email address ({err}); write `name@example.com` or `Name <name@example.com>`"),
            )
        })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn allowing(hosts: &[&str]) -> NoticeConfig {
        NoticeConfig {
            webhook_allowed_hosts: Some(hosts.iter().map(|h| h.to_string()).collect()),
            ..NoticeConfig::default()
        }
    }

    #[test]
    fn defaults_validate_without_a_mail_server() {
        NoticeConfig::default()
            .validate()
            .expect("the defaults must be a valid config");
    }

    #[test]
    fn empty_document_gives_the_defaults() {
        let parsed: NoticeConfig = serde_json::from_str("{}").expect("empty config parses");
        assert_eq!(parsed, NoticeConfig::default());
        assert_eq!(parsed.retry_for, Duration::from_secs(86_400));
    }

    #[test]
    fn unknown_keys_are_rejected() {
        let err = serde_json::from_str::<NoticeConfig>(r#"{"retry_four": "1h"}"#)
            .expect_err("a misspelt key must not be ignored");
        assert!(err.to_string().contains("retry_four"), "{err}");
    }

    #[test]
    fn retry_for_accepts_text_and_seconds() {
        let text: NoticeConfig =
            serde_json::from_str(r#"{"retry_for": "1d 12h"}"#).expect("text duration parses");
        assert_eq!(text.retry_for, Duration::from_secs(36 * 3600));
        let secs: NoticeConfig =
            serde_json::from_str(r#"{"retry_for": 90}"#).expect("number of seconds parses");
        assert_eq!(secs.retry_for, Duration::from_secs(90));
    }

    #[test]
    fn smtp_section_parses_with_security_and_credential() {
        let parsed: NoticeConfig = serde_json::from_str(
            r#"{"smtp": {"host": "mail.example.com", "security": "tls", "username": "render",
                "password_credential": "smtp-password", "from": "reelspool <r@example.com>"}}"#,
        )
        .expect("smtp section parses");
        parsed.validate().expect("the smtp section is valid");
        let smtp = parsed.smtp.expect("smtp was given");
        assert_eq!(smtp.effective_port(), 465);
    }

    #[test]
    fn username_without_password_is_refused() {
        let config = NoticeConfig {
            smtp: Some(SmtpConfig {
                host: "mail.example.com".into(),
                port: None,
                security: SmtpSecurity::Starttls,
                username: Some("render".into()),
                password_file: None,
                password_credential: None,
                tls_root_certificate: None,
                from: "r@example.com".into(),
            }),
            ..NoticeConfig::default()
        };
        let err = config.validate().expect_err("a login needs a password");
        assert!(err.to_string().contains("smtp.username"), "{err}");
    }

    #[test]
    fn bad_default_email_names_the_setting() {
        let config = NoticeConfig {
            default_email: vec!["not an address".into()],
            ..NoticeConfig::default()
        };
        let err = config
            .validate()
            .expect_err("a bad address must be refused");
        assert!(err.to_string().contains("default_email"), "{err}");
    }

    #[test]
    fn allowlist_matches_exact_hosts_and_subdomain_wildcards() {
        let config = allowing(&["hooks.example.com", "*.corp.example"]);
        assert!(config.host_allowed("HOOKS.example.com"));
        assert!(config.host_allowed("ci.corp.example"));
        assert!(!config.host_allowed("corp.example"));
        assert!(!config.host_allowed("evilcorp.example"));
        assert!(!config.host_allowed("example.com"));
    }

    #[test]
    fn no_allowlist_allows_every_host() {
        assert!(NoticeConfig::default().host_allowed("anything.example"));
    }

    #[test]
    fn webhook_url_outside_the_allowlist_is_refused() {
        let err = allowing(&["hooks.example.com"])
            .check_webhook_url("https://other.example.com/secret-token")
            .expect_err("host is not allowed");
        let text = err.to_string();
        assert!(text.contains("webhook_allowed_hosts"), "{text}");
        assert!(
            !text.contains("secret-token"),
            "the path must be redacted: {text}"
        );
    }
}
