//! End to end: a finished job's notices reach a real SMTP server and a real HTTP receiver on
//! loopback, signed; a notice pending when the daemon is SIGKILLed is delivered after the
//! restart, exactly once; a permanent refusal is recorded and shown by `reelspool status`.

mod common;
mod loopback;

use std::io::{BufRead, BufReader, Write};
use std::net::{TcpListener, TcpStream};
use std::path::Path;
use std::process::{Child, Command};
use std::sync::mpsc;
use std::time::Duration;

use common::{wait_for, Farm};
use hmac::{Hmac, Mac};
use loopback::start_smtp;
use sha2::Sha256;

const WAIT: Duration = Duration::from_secs(60);
const SECRET: &str = "s3cret-for-tests";

fn notices_config(smtp_port: Option<u16>) -> String {
    let smtp = match smtp_port {
        Some(port) => format!(
            "  smtp: {{ host: 127.0.0.1, port: {port}, security: none, from: \"reelspool@localhost\" }}\n"
        ),
        None => String::new(),
    };
    format!(
        "gpu_pool: {{ kind: cpu, slots: 1 }}\nnotices:\n{smtp}  backoff_initial_ms: 100\n  backoff_max_ms: 300\n"
    )
}

fn job_with_notify(farm: &Farm, name: &str, notify: &str) -> String {
    format!(
        "{}notify:\n{notify}",
        farm.job_yaml(name, "  num_clip: 2\n")
    )
}

fn expected_signature(timestamp: &str, body: &[u8]) -> String {
    let mut mac = Hmac::<Sha256>::new_from_slice(SECRET.as_bytes()).expect("any key length");
    mac.update(timestamp.as_bytes());
    mac.update(b".");
    mac.update(body);
    let digest = mac.finalize().into_bytes();
    let hex: String = digest.iter().map(|b| format!("{b:02x}")).collect();
    format!("sha256={hex}")
}

#[test]
fn finished_job_sends_email_and_a_signed_webhook() {
    let smtp = start_smtp();
    let receiver = loopback::start_http_on(TcpListener::bind("127.0.0.1:0").expect("bind"), 200);
    let farm = Farm::new(&notices_config(Some(smtp.port)));
    let _daemon = farm.start_daemon_with_env(&[("HOOK_SECRET", SECRET)]);
    let notify = format!(
        "  email: [ops@example.com]\n  webhook: [{{ url: \"http://127.0.0.1:{}/render\", secret_env: HOOK_SECRET }}]\n",
        receiver.port
    );
    farm.drop_job("noticed.yaml", &job_with_notify(&farm, "noticed", &notify));

    let request = receiver
        .requests
        .recv_timeout(WAIT)
        .expect("webhook delivered");
    assert_eq!(request.path, "/render");
    let payload: serde_json::Value = serde_json::from_slice(&request.body).expect("JSON payload");
    assert_eq!(payload["event"], "done");
    assert_eq!(payload["name"], "noticed");
    assert_eq!(payload["version"], 1);
    let state = farm.job_by_source("noticed.yaml").expect("job exists");
    assert_eq!(payload["job_id"], state["id"]);
    let timestamp = request
        .headers
        .get("x-reelspool-timestamp")
        .expect("timestamp header");
    let signature = request
        .headers
        .get("x-reelspool-signature")
        .expect("signature header");
    assert_eq!(signature, &expected_signature(timestamp, &request.body));

    let message = smtp.messages.recv_timeout(WAIT).expect("email delivered");
    assert_eq!(message["rcpt_tos"], serde_json::json!(["ops@example.com"]));
    let subject = message["headers"]["subject"].as_str().expect("subject");
    assert!(
        subject.contains("noticed"),
        "subject names the job: {subject}"
    );
    let parts = message["parts"].as_array().expect("parts");
    let kinds: Vec<&str> = parts.iter().filter_map(|p| p["type"].as_str()).collect();
    assert!(
        kinds.contains(&"text/plain") && kinds.contains(&"text/html"),
        "{kinds:?}"
    );
    let plain = parts
        .iter()
        .find(|p| p["type"] == "text/plain")
        .and_then(|p| p["text"].as_str())
        .expect("plain text part");
    let output = farm.out.join("noticed.mp4");
    assert!(
        plain.contains(&output.display().to_string()),
        "body names the output:\n{plain}"
    );

    let delivered = wait_for("delivery recorded in the job's events", WAIT, || {
        let events = std::fs::read_to_string(
            farm.jobs_dir()
                .join(state["id"].as_str().expect("id"))
                .join("events.jsonl"),
        )
        .ok()?;
        (events.matches("notice_delivered").count() >= 2).then_some(events)
    });
    assert!(delivered.contains("\"channel\":\"email\""), "{delivered}");
}

#[test]
fn notice_pending_at_sigkill_is_delivered_once_after_restart() {
    // Reserve a port, then close it: deliveries are refused until the receiver starts.
    let port = TcpListener::bind("127.0.0.1:0")
        .expect("bind")
        .local_addr()
        .expect("addr")
        .port();
    let farm = Farm::new(&notices_config(None));
    let mut daemon = farm.start_daemon_with_env(&[("HOOK_SECRET", SECRET)]);
    let notify = format!(
        "  webhook: [{{ url: \"http://127.0.0.1:{port}/late\", secret_env: HOOK_SECRET }}]\n"
    );
    farm.drop_job("late.yaml", &job_with_notify(&farm, "late", &notify));
    let state = wait_for("job done", WAIT, || {
        farm.job_by_source("late.yaml")
            .filter(|s| s["phase"] == "done")
    });
    let id = state["id"].as_str().expect("id").to_string();
    let events_path = farm.jobs_dir().join(&id).join("events.jsonl");
    wait_for("a failed attempt while the receiver is down", WAIT, || {
        let events = std::fs::read_to_string(&events_path).ok()?;
        events.contains("notice_retrying").then_some(())
    });
    daemon.kill9();

    let receiver = loopback::start_http_on(
        TcpListener::bind(("127.0.0.1", port)).expect("rebind port"),
        200,
    );
    let _daemon = farm.start_daemon_with_env(&[("HOOK_SECRET", SECRET)]);
    let request = receiver
        .requests
        .recv_timeout(WAIT)
        .expect("delivered after restart");
    let payload: serde_json::Value = serde_json::from_slice(&request.body).expect("payload");
    assert_eq!(payload["job_id"], id.as_str());
    assert_eq!(payload["event"], "done");
    wait_for("delivery recorded", WAIT, || {
        let events = std::fs::read_to_string(&events_path).ok()?;
        events.contains("notice_delivered").then_some(())
    });
    // Exactly one accepted delivery: nothing else arrives once it is recorded.
    assert!(
        receiver.requests.try_recv().is_err(),
        "the notice was delivered twice"
    );
}

#[test]
fn permanent_refusal_is_recorded_and_shown_by_status() {
    let receiver = loopback::start_http_on(TcpListener::bind("127.0.0.1:0").expect("bind"), 410);
    let farm = Farm::new(&notices_config(None));
    let _daemon = farm.start_daemon();
    let notify = format!(
        "  webhook: [{{ url: \"http://127.0.0.1:{}/gone\" }}]\n",
        receiver.port
    );
    farm.drop_job("gone.yaml", &job_with_notify(&farm, "gone", &notify));
    receiver.requests.recv_timeout(WAIT).expect("one attempt");
    let state = wait_for("permanent failure counted", WAIT, || {
        farm.job_by_source("gone.yaml")
            .filter(|s| s["details"]["notice_failures"] == 1)
    });
    let id = state["id"].as_str().expect("id");
    let table = farm.cli(&["status"]);
    let table = String::from_utf8_lossy(&table.stdout);
    assert!(table.contains("done!"), "table flags the job:\n{table}");
    let details = farm.cli(&["status", id]);
    let details = String::from_utf8_lossy(&details.stdout);
    assert!(details.contains("FAILED PERMANENTLY"), "{details}");
    assert!(
        details.contains("410"),
        "the reason names the status code:\n{details}"
    );
    assert!(
        receiver.requests.try_recv().is_err(),
        "a permanent refusal must not be retried"
    );
}

/// A webhook receiver in Python that checks each request with the `standardwebhooks` library
/// only (tests/common/standard_webhooks_receiver.py) and prints one JSON line per request.
struct StandardReceiver {
    child: Child,
    port: u16,
    requests: mpsc::Receiver<serde_json::Value>,
}

impl Drop for StandardReceiver {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Starts the receiver with one `Webhook(secret)` per `(label, secret)`.
fn start_standard_receiver(secrets: &[(&str, &str)]) -> StandardReceiver {
    let script =
        Path::new(env!("CARGO_MANIFEST_DIR")).join("../tests/common/standard_webhooks_receiver.py");
    let mut command = Command::new("python3");
    command.arg(&script);
    for (label, secret) in secrets {
        command.arg("--secret").arg(format!("{label}={secret}"));
    }
    let (child, port, requests) = loopback::start_port_and_json_lines(
        command,
        "the receiver prints its port (is standardwebhooks installed? run scripts/install-deps.sh)",
    );
    StandardReceiver {
        child,
        port,
        requests,
    }
}

/// Sends `body` with `headers` to the receiver on `port` as one HTTP/1.1 POST and returns the
/// status code it answers.
fn post_to(port: u16, path: &str, headers: &[(&str, &str)], body: &[u8]) -> u16 {
    let mut stream = TcpStream::connect(("127.0.0.1", port)).expect("connect to the receiver");
    stream
        .set_read_timeout(Some(Duration::from_secs(30)))
        .expect("read timeout");
    let mut request = format!(
        "POST {path} HTTP/1.1\r\nhost: 127.0.0.1:{port}\r\ncontent-type: application/json\r\ncontent-length: {}\r\nconnection: close\r\n",
        body.len()
    );
    for (name, value) in headers {
        request.push_str(&format!("{name}: {value}\r\n"));
    }
    request.push_str("\r\n");
    stream
        .write_all(request.as_bytes())
        .and_then(|()| stream.write_all(body))
        .expect("send the request");
    let mut status_line = String::new();
    BufReader::new(stream)
        .read_line(&mut status_line)
        .expect("read the status line");
    status_line
        .split_whitespace()
        .nth(1)
        .and_then(|code| code.parse().ok())
        .unwrap_or_else(|| panic!("not an HTTP status line: {status_line:?}"))
}

/// `SECRET` as the standardwebhooks library takes a plain secret: `whsec_` and its base64
/// (`printf 's3cret-for-tests' | base64`).
const SECRET_AS_WHSEC: &str = "whsec_czNjcmV0LWZvci10ZXN0cw==";

/// The string header of a receiver's JSON record.
fn header<'a>(record: &'a serde_json::Value, name: &str) -> &'a str {
    record["headers"][name]
        .as_str()
        .unwrap_or_else(|| panic!("no {name} header in {record}"))
}

#[test]
fn standardwebhooks_library_accepts_a_delivery_and_rejects_an_altered_body() {
    let receiver = start_standard_receiver(&[("plain", SECRET_AS_WHSEC)]);
    let farm = Farm::new(&notices_config(None));
    let _daemon = farm.start_daemon_with_env(&[("HOOK_SECRET", SECRET)]);
    let notify = format!(
        "  webhook: [{{ url: \"http://127.0.0.1:{}/standard\", secret_env: HOOK_SECRET }}]\n",
        receiver.port
    );
    farm.drop_job(
        "standard.yaml",
        &job_with_notify(&farm, "standard", &notify),
    );

    let record = receiver
        .requests
        .recv_timeout(WAIT)
        .expect("webhook delivered");
    assert_eq!(record["path"], "/standard");
    assert_eq!(
        record["results"]["plain"], "accepted",
        "Webhook(secret).verify refused our delivery: {record}"
    );
    let payload: serde_json::Value =
        serde_json::from_str(record["body"].as_str().expect("body")).expect("JSON payload");
    assert_eq!(payload["event"], "done");
    assert_eq!(header(&record, "webhook-id"), payload["delivery_id"]);
    // Our own headers are still there.
    assert_eq!(
        header(&record, "x-reelspool-delivery"),
        header(&record, "webhook-id")
    );
    assert!(record["headers"]["x-reelspool-signature"].is_string());
    let state = farm.job_by_source("standard.yaml").expect("job exists");
    assert_eq!(payload["job_id"], state["id"]);
    let events_path = farm
        .jobs_dir()
        .join(state["id"].as_str().expect("id"))
        .join("events.jsonl");
    wait_for(
        "the daemon to record the delivery as accepted",
        WAIT,
        || {
            let events = std::fs::read_to_string(&events_path).ok()?;
            events.contains("notice_delivered").then_some(())
        },
    );

    // The same delivery with its body altered (the job "failed" instead of "done") and the
    // signed headers kept, as an attacker replaying it would send it.
    let body = record["body"].as_str().expect("body");
    let altered = body.replacen("\"event\":\"done\"", "\"event\":\"failed\"", 1);
    assert_ne!(altered, body, "the alteration changed the body");
    let headers: Vec<(&str, &str)> = ["webhook-id", "webhook-timestamp", "webhook-signature"]
        .into_iter()
        .map(|name| (name, header(&record, name)))
        .collect();
    assert_eq!(
        post_to(receiver.port, "/standard", &headers, altered.as_bytes()),
        401
    );
    let rejected = receiver
        .requests
        .recv_timeout(WAIT)
        .expect("the altered request is reported");
    let verdict = rejected["results"]["plain"].as_str().expect("a result");
    assert!(
        verdict.starts_with("rejected") && verdict.contains("No matching signature"),
        "{rejected}"
    );
    // The unaltered body with the same headers still passes: the rejection is the body's doing.
    assert_eq!(
        post_to(receiver.port, "/standard", &headers, body.as_bytes()),
        204
    );
}

#[test]
fn rotation_sends_two_signatures_that_each_old_and_new_secret_accept() {
    // The new secret in the spec's whsec_ form (a 24-byte key), the old one plain.
    const NEW_SECRET: &str = "whsec_q0yBcm9dJk2Kq3xF7VdYzS1oPbGt9e4H";
    const OLD_SECRET: &str = SECRET;
    let receiver = start_standard_receiver(&[("new", NEW_SECRET), ("old", SECRET_AS_WHSEC)]);
    let farm = Farm::new(&notices_config(None));
    let _daemon = farm.start_daemon_with_env(&[
        ("HOOK_SECRET", NEW_SECRET),
        ("HOOK_SECRET_PREVIOUS", OLD_SECRET),
    ]);
    let notify = format!(
        "  webhook: [{{ url: \"http://127.0.0.1:{}/rotating\", secret_env: HOOK_SECRET }}]\n",
        receiver.port
    );
    farm.drop_job(
        "rotating.yaml",
        &job_with_notify(&farm, "rotating", &notify),
    );

    let record = receiver
        .requests
        .recv_timeout(WAIT)
        .expect("webhook delivered");
    assert_eq!(record["results"]["new"], "accepted", "{record}");
    assert_eq!(record["results"]["old"], "accepted", "{record}");
    let signatures: Vec<&str> = header(&record, "webhook-signature").split(' ').collect();
    assert_eq!(signatures.len(), 2, "{signatures:?}");
    assert!(
        signatures.iter().all(|s| s.starts_with("v1,")),
        "{signatures:?}"
    );
    assert_ne!(signatures[0], signatures[1]);

    // Each signature on its own: the new secret accepts only the first, the old only the second.
    let id = header(&record, "webhook-id");
    let timestamp = header(&record, "webhook-timestamp");
    let body = record["body"].as_str().expect("body");
    let results_for = |signature: &str| {
        let headers = [
            ("webhook-id", id),
            ("webhook-timestamp", timestamp),
            ("webhook-signature", signature),
        ];
        post_to(receiver.port, "/rotating", &headers, body.as_bytes());
        let record = receiver
            .requests
            .recv_timeout(WAIT)
            .expect("the request is reported");
        (
            record["results"]["new"] == "accepted",
            record["results"]["old"] == "accepted",
        )
    };
    assert_eq!(results_for(signatures[0]), (true, false));
    assert_eq!(results_for(signatures[1]), (false, true));
}
