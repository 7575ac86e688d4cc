//! Webhook delivery: a signed JSON `POST` (or a Slack-style `{"text"}`).
//!
//! Each request carries our `X-Reelspool-*` headers and the Standard
//! Webhooks ones ([`HEADER_WEBHOOK_ID`], [`HEADER_WEBHOOK_TIMESTAMP`],
//! [`HEADER_WEBHOOK_SIGNATURE`]), so stock `standardwebhooks` libraries
//! verify it. A secret may be given as `whsec_<base64>` ([`SECRET_PREFIX`]);
//! during a rotation the secret named `<secret_env>_PREVIOUS` signs as well,
//! and `webhook-signature` holds both signatures.
//!
//! Safety rules, because the URL comes from a job file that anyone with
//! spool access can write:
//! - only `http` and `https` URLs;
//! - only hosts in `webhook_allowed_hosts`, when that list is set;
//! - redirects are followed only within the same origin (scheme, host,
//!   port), at most five; a redirect elsewhere is a permanent failure, so a
//!   receiver cannot bounce our signed request to a third party;
//! - connect and whole-request timeouts;
//! - at most 200 characters of a response body reach a report or a log,
//!   and URLs in messages are cut to scheme, host and port.

mod payload;
mod standard;

use std::time::Duration;

use reqwest::header::{HeaderMap, HeaderValue, CONTENT_TYPE, LOCATION, RETRY_AFTER};
use reqwest::{redirect, StatusCode, Url};

pub(crate) use payload::hex;
pub use payload::{
    signature, PayloadTimings, WebhookPayload, HEADER_DELIVERY, HEADER_EVENT,
    HEADER_IDEMPOTENCY_KEY, HEADER_SIGNATURE, HEADER_TIMESTAMP, PAYLOAD_VERSION,
};
pub use standard::{
    standard_signature, HEADER_WEBHOOK_ID, HEADER_WEBHOOK_SIGNATURE, HEADER_WEBHOOK_TIMESTAMP,
    SECRET_PREFIX,
};

use crate::attempt::{error_chain, AttemptOutcome};
use crate::secret::SecretSource;
use crate::template::{NoticeFields, NoticeTemplates};
use crate::{Delivery, NoticeConfig, NoticeError, WebhookTarget};

/// Longest response-body excerpt kept in reports and logs, in characters.
pub const RESPONSE_EXCERPT_CHARS: usize = 200;

/// Most redirects followed (all within the same origin).
const MAX_REDIRECTS: usize = 5;

/// Parses a webhook URL and refuses anything but http(s) with a host.
pub(crate) fn parse_webhook_url(url: &str) -> Result<Url, NoticeError> {
    let parsed = Url::parse(url).map_err(|err| NoticeError::WebhookUrl {
        url: "<unparsable>".into(),
        reason: format!("not a URL ({err}); write e.g. https://hooks.example.com/render"),
    })?;
    if !matches!(parsed.scheme(), "http" | "https") {
        return Err(NoticeError::WebhookUrl {
            url: redact_url(&parsed),
            reason: format!(
                "scheme {:?} is not allowed; use https:// (or http://)",
                parsed.scheme()
            ),
        });
    }
    if parsed.host_str().is_none_or(str::is_empty) {
        return Err(NoticeError::WebhookUrl {
            url: redact_url(&parsed),
            reason: "has no host".into(),
        });
    }
    Ok(parsed)
}

/// `https://hooks.example.com:8443/...`: enough to tell which receiver,
/// without the path, query or user info that may hold a token.
pub(crate) fn redact_url(url: &Url) -> String {
    let host = url.host_str().unwrap_or("");
    match url.port() {
        Some(port) => format!("{}://{host}:{port}/...", url.scheme()),
        None => format!("{}://{host}/...", url.scheme()),
    }
}

fn same_origin(a: &Url, b: &Url) -> bool {
    a.scheme() == b.scheme()
        && a.host_str() == b.host_str()
        && a.port_or_known_default() == b.port_or_known_default()
}

/// The HTTP side of the dispatcher: one client, reused for every webhook.
#[derive(Debug, Clone)]
pub(crate) struct WebhookSender {
    client: reqwest::Client,
}

impl WebhookSender {
    pub(crate) fn new(config: &NoticeConfig) -> Result<WebhookSender, NoticeError> {
        let policy = redirect::Policy::custom(|attempt| {
            let same = attempt
                .previous()
                .first()
                .is_some_and(|first| same_origin(first, attempt.url()));
            if attempt.previous().len() > MAX_REDIRECTS {
                attempt.error("too many redirects")
            } else if same {
                attempt.follow()
            } else {
                // Hand the 3xx back to `deliver`, which reports it.
                attempt.stop()
            }
        });
        let client = reqwest::Client::builder()
            .connect_timeout(config.connect_timeout())
            .timeout(config.request_timeout())
            .redirect(policy)
            .user_agent(concat!("reelspool/", env!("CARGO_PKG_VERSION")))
            .build()
            .map_err(NoticeError::HttpClient)?;
        Ok(WebhookSender { client })
    }

    /// Makes one attempt to deliver `delivery` to `target`.
    pub(crate) async fn deliver(
        &self,
        config: &NoticeConfig,
        delivery: &Delivery,
        target: &WebhookTarget,
        templates: &NoticeTemplates,
        secrets: &SecretSource,
    ) -> AttemptOutcome {
        let url = match parse_webhook_url(&target.url) {
            Ok(url) => url,
            Err(err) => return AttemptOutcome::permanent(err.to_string()),
        };
        let host = url.host_str().unwrap_or_default();
        if !config.host_allowed(host) {
            return AttemptOutcome::permanent(format!(
                "host {host} is not in webhook_allowed_hosts; nothing was sent"
            ));
        }
        let id = delivery.delivery_id.as_str();
        let body = if target.slack {
            let text = templates.render_slack(&NoticeFields::new(&delivery.summary, id));
            serde_json::to_vec(&serde_json::json!({ "text": text }))
        } else {
            serde_json::to_vec(&WebhookPayload::new(id, &delivery.summary))
        }
        .expect("invariant: the payload has only string keys and serialises");

        let mut headers = HeaderMap::new();
        headers.insert(CONTENT_TYPE, HeaderValue::from_static("application/json"));
        let mut put = |name: &'static str, value: &str| {
            if let Ok(value) = HeaderValue::from_str(value) {
                headers.insert(name, value);
            }
        };
        put(HEADER_EVENT, delivery.summary.event.as_str());
        put(HEADER_DELIVERY, id);
        put(HEADER_IDEMPOTENCY_KEY, id);
        let timestamp_secs = crate::clock::now_ms() / 1000;
        put(HEADER_TIMESTAMP, &timestamp_secs.to_string());
        // Standard Webhooks: the same id and time under the spec's names.
        put(HEADER_WEBHOOK_ID, id);
        put(HEADER_WEBHOOK_TIMESTAMP, &timestamp_secs.to_string());
        if let Some(name) = &target.secret_env {
            // Never send unsigned what the receiver expects signed; wait
            // for the operator to provide (or repair) the secret (a restart
            // keeps the notice pending).
            let signatures = match signatures(secrets, name, id, timestamp_secs, &body).await {
                Ok(signatures) => signatures,
                Err(reason) => return AttemptOutcome::transient(reason),
            };
            put(HEADER_SIGNATURE, &signatures.reelspool);
            put(HEADER_WEBHOOK_SIGNATURE, &signatures.standard);
        }

        let sent = self
            .client
            .post(url.clone())
            .headers(headers)
            .body(body)
            .send()
            .await;
        let response = match sent {
            Ok(response) => response,
            Err(err) => return classify_send_error(err, config),
        };
        let status = response.status();
        if status.is_success() {
            return AttemptOutcome::Delivered;
        }
        if status.is_redirection() {
            let location = response
                .headers()
                .get(LOCATION)
                .and_then(|v| v.to_str().ok())
                .and_then(|v| response.url().join(v).ok())
                .map(|to| redact_url(&to))
                .unwrap_or_else(|| "an unreadable location".into());
            return AttemptOutcome::permanent(format!(
                "HTTP {status}: redirect to {location} not followed (only same-origin redirects are)"
            ));
        }
        let retry_after = retry_after(response.headers());
        let excerpt = body_excerpt(response).await;
        let reason = format!("HTTP {status}: {excerpt}");
        if is_permanent_status(status) {
            AttemptOutcome::permanent(reason)
        } else {
            AttemptOutcome::Transient {
                reason,
                retry_after,
            }
        }
    }
}

/// The two signature header values of one attempt.
struct Signatures {
    /// `X-Reelspool-Signature`: keyed with the current secret exactly as
    /// configured (a `whsec_` secret included), as before Standard Webhooks.
    reelspool: String,
    /// `webhook-signature`: one `v1,` entry per secret (current, then the
    /// previous one during a rotation), keyed as [`standard`] describes.
    standard: String,
}

async fn signatures(
    secrets: &SecretSource,
    name: &str,
    id: &str,
    timestamp_secs: u64,
    body: &[u8],
) -> Result<Signatures, String> {
    let resolved = secrets.webhook_secrets(name).await?;
    let mut keys = vec![standard::signing_key(&resolved.current, name)?];
    if let Some(previous) = &resolved.previous {
        let previous_name = format!("{name}{}", crate::secret::PREVIOUS_SUFFIX);
        keys.push(standard::signing_key(previous, &previous_name)?);
    }
    Ok(Signatures {
        reelspool: signature(resolved.current.expose(), timestamp_secs, body),
        standard: standard::signature_header(&keys, id, timestamp_secs, body),
    })
}

/// 4xx means "this request will never work", except 408 (timeout) and 429
/// (slow down), which invite a retry. Everything else (5xx, odd codes)
/// is treated as transient.
fn is_permanent_status(status: StatusCode) -> bool {
    status.is_client_error()
        && status != StatusCode::REQUEST_TIMEOUT
        && status != StatusCode::TOO_MANY_REQUESTS
}

fn classify_send_error(err: reqwest::Error, config: &NoticeConfig) -> AttemptOutcome {
    let err = err.without_url();
    if err.is_timeout() {
        return AttemptOutcome::transient(format!(
            "timed out (connect limit {} ms, request limit {} ms)",
            config.connect_timeout_ms, config.request_timeout_ms
        ));
    }
    let reason = error_chain(&err);
    if err.is_builder() || err.is_redirect() {
        AttemptOutcome::permanent(reason)
    } else {
        AttemptOutcome::transient(reason)
    }
}

/// `Retry-After` in its seconds form; the HTTP-date form is rare for
/// webhooks and falls back to our own backoff.
fn retry_after(headers: &HeaderMap) -> Option<Duration> {
    let secs: u64 = headers
        .get(RETRY_AFTER)?
        .to_str()
        .ok()?
        .trim()
        .parse()
        .ok()?;
    Some(Duration::from_secs(secs))
}

/// The start of the response body, one line, at most
/// [`RESPONSE_EXCERPT_CHARS`] characters. Reads only a few KiB, so a huge
/// error page costs nothing.
async fn body_excerpt(mut response: reqwest::Response) -> String {
    let mut bytes = Vec::new();
    while bytes.len() < RESPONSE_EXCERPT_CHARS * 4 {
        match response.chunk().await {
            Ok(Some(chunk)) => bytes.extend_from_slice(&chunk),
            Ok(None) | Err(_) => break,
        }
    }
    excerpt(&String::from_utf8_lossy(&bytes))
}

pub(crate) fn excerpt(text: &str) -> String {
    let one_line: String = text
        .chars()
        .map(|c| if c.is_control() { ' ' } else { c })
        .collect();
    let trimmed = one_line.trim();
    if trimmed.chars().count() > RESPONSE_EXCERPT_CHARS {
        let cut: String = trimmed.chars().take(RESPONSE_EXCERPT_CHARS).collect();
        format!("{cut}...")
    } else if trimmed.is_empty() {
        "(empty body)".into()
    } else {
        trimmed.to_string()
    }
}

#[cfg(test)]
mod tests;
