use std::time::Duration;

use hmac::{Hmac, Mac};
use sha2::Sha256;

use super::*;
use crate::testkit::http::{Reply, WebhookReceiver};
use crate::testkit::sample_delivery;
use crate::Destination;

fn target(url: String) -> WebhookTarget {
    WebhookTarget {
        url,
        secret_env: None,
        slack: false,
    }
}

async fn deliver_with(
    config: &NoticeConfig,
    target: &WebhookTarget,
    secrets: &SecretSource,
) -> AttemptOutcome {
    let sender = WebhookSender::new(config).expect("build the HTTP client");
    let delivery = sample_delivery(Destination::Webhook(target.clone()));
    sender
        .deliver(
            config,
            &delivery,
            target,
            &NoticeTemplates::builtin(),
            secrets,
        )
        .await
}

async fn deliver(target: &WebhookTarget) -> AttemptOutcome {
    deliver_with(&NoticeConfig::default(), target, &SecretSource::default()).await
}

#[tokio::test]
async fn posts_the_versioned_payload_with_idempotency_headers() {
    let receiver = WebhookReceiver::answering(204).await;
    let target = target(receiver.url("/hooks/render"));
    assert_eq!(deliver(&target).await, AttemptOutcome::Delivered);

    let request = receiver.wait_for(1).await.remove(0);
    let delivery = sample_delivery(Destination::Webhook(target.clone()));
    let id = delivery.delivery_id.as_str();
    assert_eq!(request.method, "POST");
    assert_eq!(request.path, "/hooks/render");
    assert_eq!(request.header("content-type"), Some("application/json"));
    assert_eq!(request.header("x-reelspool-delivery"), Some(id));
    assert_eq!(request.header("idempotency-key"), Some(id));
    assert_eq!(request.header("x-reelspool-event"), Some("done"));
    assert!(request.header("x-reelspool-timestamp").is_some());
    assert_eq!(
        request.header("x-reelspool-signature"),
        None,
        "no secret, no signature"
    );

    let body: serde_json::Value = serde_json::from_slice(&request.body).expect("body is JSON");
    assert_eq!(body["version"], 1);
    assert_eq!(body["event"], "done");
    assert_eq!(body["delivery_id"], id);
    assert_eq!(body["job_id"], "job-7");
    assert_eq!(body["name"], "interview-042");
    assert_eq!(body["state"], "done");
    assert_eq!(body["output"], "/data/out/interview-042.mp4");
    assert_eq!(body["error"], serde_json::Value::Null);
    assert_eq!(body["timings"]["submitted_at_ms"], 1_738_324_800_000u64);
    assert_eq!(body["timings"]["finished_at_ms"], 1_738_325_102_000u64);
    assert_eq!(body["timings"]["duration_secs"], 300.75);
}

#[tokio::test]
async fn signature_verifies_against_an_independent_hmac_of_timestamp_and_body() {
    let credentials = tempfile::tempdir().expect("temp dir");
    std::fs::write(credentials.path().join("render-hook"), "k3y-bytes\n")
        .expect("write credential");
    let secrets = SecretSource {
        credentials_dir: Some(credentials.path().to_path_buf()),
    };
    let receiver = WebhookReceiver::answering(200).await;
    let target = WebhookTarget {
        url: receiver.url("/signed"),
        secret_env: Some("render-hook".into()),
        slack: false,
    };
    let before_secs = crate::clock::now_ms() / 1000;
    assert_eq!(
        deliver_with(&NoticeConfig::default(), &target, &secrets).await,
        AttemptOutcome::Delivered
    );

    let request = receiver.wait_for(1).await.remove(0);
    let timestamp = request
        .header("x-reelspool-timestamp")
        .expect("timestamp header");
    let ts: u64 = timestamp.parse().expect("timestamp is Unix seconds");
    assert!(
        ts >= before_secs && ts <= before_secs + 60,
        "timestamp {ts} is now"
    );

    let mut mac = Hmac::<Sha256>::new_from_slice(b"k3y-bytes").expect("any key length");
    mac.update(format!("{timestamp}.").as_bytes());
    mac.update(&request.body);
    let expected: String = mac
        .finalize()
        .into_bytes()
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect();
    assert_eq!(
        request.header("x-reelspool-signature"),
        Some(format!("sha256={expected}").as_str())
    );
}

/// `v1,` and the base64 HMAC-SHA256 of `"<id>.<timestamp>.<body>"`, computed here with the
/// hmac and base64 crates directly.
fn independent_v1(key: &[u8], id: &str, timestamp: &str, body: &[u8]) -> String {
    use base64::Engine;
    let mut mac = Hmac::<Sha256>::new_from_slice(key).expect("any key length");
    mac.update(format!("{id}.{timestamp}.").as_bytes());
    mac.update(body);
    let digest = mac.finalize().into_bytes();
    format!(
        "v1,{}",
        base64::engine::general_purpose::STANDARD.encode(digest)
    )
}

#[tokio::test]
async fn standard_webhooks_headers_carry_the_delivery_id_and_time_without_a_secret() {
    let receiver = WebhookReceiver::answering(200).await;
    let target = target(receiver.url("/plain"));
    assert_eq!(deliver(&target).await, AttemptOutcome::Delivered);
    assert_eq!(deliver(&target).await, AttemptOutcome::Delivered);
    let requests = receiver.wait_for(2).await;
    let delivery = sample_delivery(Destination::Webhook(target.clone()));
    for request in &requests {
        // The same id on every attempt of the same delivery.
        assert_eq!(
            request.header("webhook-id"),
            Some(delivery.delivery_id.as_str())
        );
        assert_eq!(
            request.header("webhook-timestamp"),
            request.header("x-reelspool-timestamp")
        );
        assert_eq!(request.header("webhook-signature"), None, "no secret");
    }
}

#[tokio::test]
async fn rotation_signs_with_the_whsec_key_and_the_previous_plain_one() {
    let credentials = tempfile::tempdir().expect("temp dir");
    // whsec_ form: the key is the decoded bytes 0..=23.
    let key: Vec<u8> = (0u8..24).collect();
    std::fs::write(
        credentials.path().join("rot-hook"),
        "whsec_AAECAwQFBgcICQoLDA0ODxAREhMUFRYX\n",
    )
    .expect("write credential");
    std::fs::write(credentials.path().join("rot-hook_PREVIOUS"), "old-plain\n")
        .expect("write credential");
    let secrets = SecretSource {
        credentials_dir: Some(credentials.path().to_path_buf()),
    };
    let receiver = WebhookReceiver::answering(200).await;
    let target = WebhookTarget {
        url: receiver.url("/rotating"),
        secret_env: Some("rot-hook".into()),
        slack: false,
    };
    assert_eq!(
        deliver_with(&NoticeConfig::default(), &target, &secrets).await,
        AttemptOutcome::Delivered
    );
    let request = receiver.wait_for(1).await.remove(0);
    let id = request.header("webhook-id").expect("id header");
    let timestamp = request.header("webhook-timestamp").expect("timestamp");
    let signatures: Vec<&str> = request
        .header("webhook-signature")
        .expect("signature header")
        .split(' ')
        .collect();
    assert_eq!(
        signatures,
        vec![
            independent_v1(&key, id, timestamp, &request.body),
            independent_v1(b"old-plain", id, timestamp, &request.body),
        ]
    );
    // Our own header keeps its scheme: the current secret as written, one signature.
    let mut mac = Hmac::<Sha256>::new_from_slice(b"whsec_AAECAwQFBgcICQoLDA0ODxAREhMUFRYX")
        .expect("any key length");
    mac.update(format!("{timestamp}.").as_bytes());
    mac.update(&request.body);
    let hex: String = mac
        .finalize()
        .into_bytes()
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect();
    assert_eq!(
        request.header("x-reelspool-signature"),
        Some(format!("sha256={hex}").as_str())
    );
}

#[tokio::test]
async fn malformed_whsec_secret_sends_nothing_and_retries_later() {
    let credentials = tempfile::tempdir().expect("temp dir");
    std::fs::write(credentials.path().join("bad-hook"), "whsec_%%%\n").expect("write");
    let secrets = SecretSource {
        credentials_dir: Some(credentials.path().to_path_buf()),
    };
    let receiver = WebhookReceiver::answering(200).await;
    let target = WebhookTarget {
        url: receiver.url("/signed"),
        secret_env: Some("bad-hook".into()),
        slack: false,
    };
    let outcome = deliver_with(&NoticeConfig::default(), &target, &secrets).await;
    let AttemptOutcome::Transient { reason, .. } = outcome else {
        panic!("a broken secret is for the operator to fix, got {outcome:?}");
    };
    assert!(reason.contains("not base64"), "{reason}");
    assert!(receiver.requests().is_empty());
}

#[tokio::test]
async fn missing_secret_sends_nothing_and_retries_later() {
    let receiver = WebhookReceiver::answering(200).await;
    let target = WebhookTarget {
        url: receiver.url("/signed"),
        secret_env: Some("REELSPOOL_TEST_NO_SUCH_SECRET".into()),
        slack: false,
    };
    let outcome = deliver(&target).await;
    assert!(
        matches!(outcome, AttemptOutcome::Transient { .. }),
        "{outcome:?}"
    );
    assert!(receiver.requests().is_empty());
}

#[tokio::test]
async fn slack_webhooks_get_a_text_body() {
    let receiver = WebhookReceiver::answering(200).await;
    let target = WebhookTarget {
        url: receiver.url("/services/T000/B000/XXXX"),
        secret_env: None,
        slack: true,
    };
    assert_eq!(deliver(&target).await, AttemptOutcome::Delivered);
    let request = receiver.wait_for(1).await.remove(0);
    let body: serde_json::Map<String, serde_json::Value> =
        serde_json::from_slice(&request.body).expect("body is a JSON object");
    assert_eq!(body.keys().collect::<Vec<_>>(), vec!["text"]);
    let text = body["text"].as_str().expect("text is a string");
    assert!(text.starts_with("*interview-042* is done (done)"), "{text}");
    assert!(text.contains("/data/out/interview-042.mp4"), "{text}");
}

#[tokio::test]
async fn client_errors_are_permanent_with_a_body_excerpt() {
    let receiver =
        WebhookReceiver::start(|_, _| Some(Reply::status(404).with_body("no such hook"))).await;
    let outcome = deliver(&target(receiver.url("/gone"))).await;
    assert_eq!(
        outcome,
        AttemptOutcome::permanent("HTTP 404 Not Found: no such hook".to_string())
    );
}

#[tokio::test]
async fn timeout_and_rate_limit_statuses_are_transient() {
    for status in [408, 429, 500, 503] {
        let receiver = WebhookReceiver::answering(status).await;
        let outcome = deliver(&target(receiver.url("/busy"))).await;
        assert!(
            matches!(outcome, AttemptOutcome::Transient { .. }),
            "HTTP {status} should be retried: {outcome:?}"
        );
    }
}

#[tokio::test]
async fn retry_after_seconds_are_passed_on() {
    let receiver =
        WebhookReceiver::start(|_, _| Some(Reply::status(429).with_header("Retry-After", "7")))
            .await;
    let outcome = deliver(&target(receiver.url("/slow-down"))).await;
    match outcome {
        AttemptOutcome::Transient { retry_after, .. } => {
            assert_eq!(retry_after, Some(Duration::from_secs(7)))
        }
        other => panic!("expected a transient failure, got {other:?}"),
    }
}

#[tokio::test]
async fn response_excerpt_is_cut_to_200_characters() {
    let receiver =
        WebhookReceiver::start(|_, _| Some(Reply::status(400).with_body(&"é".repeat(5_000)))).await;
    let AttemptOutcome::Permanent { reason } = deliver(&target(receiver.url("/big"))).await else {
        panic!("a 400 is permanent");
    };
    assert_eq!(reason.matches('é').count(), 200, "{reason}");
    assert!(reason.ends_with("..."), "{reason}");
}

#[tokio::test]
async fn redirect_to_another_origin_is_not_followed() {
    let elsewhere = WebhookReceiver::answering(200).await;
    let location = elsewhere.url("/stolen");
    let receiver = WebhookReceiver::start(move |_, _| {
        Some(Reply::status(307).with_header("Location", &location))
    })
    .await;
    let outcome = deliver(&target(receiver.url("/hook"))).await;
    let AttemptOutcome::Permanent { reason } = outcome else {
        panic!("a cross-origin redirect must fail permanently, got {outcome:?}");
    };
    assert!(reason.contains("not followed"), "{reason}");
    assert!(
        reason.contains(&format!("127.0.0.1:{}", elsewhere.port())),
        "{reason}"
    );
    assert!(!reason.contains("/stolen"), "paths are redacted: {reason}");
    assert_eq!(receiver.requests().len(), 1);
    assert!(
        elsewhere.requests().is_empty(),
        "the other origin was never called"
    );
}

#[tokio::test]
async fn redirect_within_the_same_origin_is_followed_with_the_body() {
    let receiver = WebhookReceiver::start(|index, _| {
        Some(match index {
            0 => Reply::status(308).with_header("Location", "/moved"),
            _ => Reply::status(200),
        })
    })
    .await;
    assert_eq!(
        deliver(&target(receiver.url("/hook"))).await,
        AttemptOutcome::Delivered
    );
    let requests = receiver.wait_for(2).await;
    assert_eq!(requests[1].path, "/moved");
    assert_eq!(requests[1].method, "POST");
    assert_eq!(requests[1].body, requests[0].body);
}

#[tokio::test]
async fn host_outside_the_allowlist_is_never_called() {
    let receiver = WebhookReceiver::answering(200).await;
    let config = NoticeConfig {
        webhook_allowed_hosts: Some(vec!["hooks.example.com".into()]),
        ..NoticeConfig::default()
    };
    let outcome = deliver_with(
        &config,
        &target(receiver.url("/hook")),
        &SecretSource::default(),
    )
    .await;
    let AttemptOutcome::Permanent { reason } = outcome else {
        panic!("a host outside the allowlist must fail permanently, got {outcome:?}");
    };
    assert!(reason.contains("webhook_allowed_hosts"), "{reason}");
    assert!(receiver.requests().is_empty());
}

#[tokio::test]
async fn receiver_that_never_answers_hits_the_request_timeout() {
    let receiver = WebhookReceiver::start(|_, _| None).await;
    let config = NoticeConfig {
        request_timeout_ms: 300,
        ..NoticeConfig::default()
    };
    let outcome = deliver_with(
        &config,
        &target(receiver.url("/hang")),
        &SecretSource::default(),
    )
    .await;
    let AttemptOutcome::Transient { reason, .. } = outcome else {
        panic!("a timeout is transient, got {outcome:?}");
    };
    assert!(reason.contains("timed out"), "{reason}");
}

#[tokio::test]
async fn refused_connection_is_transient_and_does_not_leak_the_path() {
    let listener = std::net::TcpListener::bind("127.0.0.1:0").expect("bind a loopback port");
    let port = listener.local_addr().expect("bound address").port();
    drop(listener);
    let outcome = deliver(&target(format!("http://127.0.0.1:{port}/secret-token"))).await;
    let AttemptOutcome::Transient { reason, .. } = outcome else {
        panic!("a refused connection is transient, got {outcome:?}");
    };
    assert!(!reason.contains("secret-token"), "{reason}");
}

#[test]
fn non_http_schemes_are_refused() {
    for url in [
        "ftp://example.com/x",
        "file:///etc/passwd",
        "gopher://example.com",
        "not a url",
    ] {
        assert!(parse_webhook_url(url).is_err(), "{url} must be refused");
    }
    assert!(parse_webhook_url("https://hooks.example.com/x").is_ok());
}

#[test]
fn redaction_keeps_scheme_host_and_port_only() {
    let url =
        Url::parse("https://user:pw@hooks.example.com:8443/T0KEN?sig=abc").expect("valid URL");
    assert_eq!(redact_url(&url), "https://hooks.example.com:8443/...");
}
