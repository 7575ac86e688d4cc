//! End to end: a finished job's notices reach a real SMTP server and a real HTTP receiver on
//! loopback, signed; a notice pending when the daemon is SIGKILLed is delivered after the
//! restart, exactly once; a permanent refusal is recorded and shown by `reelspool status`.

mod common;

use std::collections::HashMap;
use std::io::{BufRead, BufReader, Read, Write};
use std::net::{TcpListener, TcpStream};
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::sync::mpsc;
use std::time::Duration;

use common::{wait_for, Farm};
use hmac::{Hmac, Mac};
use sha2::Sha256;

const WAIT: Duration = Duration::from_secs(60);
const SECRET: &str = "s3cret-for-tests";

/// One request as the receiver saw it.
#[derive(Debug, Clone)]
struct Received {
    path: String,
    headers: HashMap<String, String>,
    body: Vec<u8>,
}

/// A tiny HTTP/1.1 receiver: answers every request with `status`, reports each one.
struct Receiver {
    port: u16,
    requests: mpsc::Receiver<Received>,
}

fn read_request(stream: &mut TcpStream) -> Option<Received> {
    let mut reader = BufReader::new(stream.try_clone().ok()?);
    let mut request_line = String::new();
    reader.read_line(&mut request_line).ok()?;
    let path = request_line.split_whitespace().nth(1)?.to_string();
    let mut headers = HashMap::new();
    loop {
        let mut line = String::new();
        reader.read_line(&mut line).ok()?;
        let line = line.trim_end();
        if line.is_empty() {
            break;
        }
        let (name, value) = line.split_once(':')?;
        headers.insert(name.trim().to_lowercase(), value.trim().to_string());
    }
    let length: usize = headers.get("content-length")?.parse().ok()?;
    let mut body = vec![0; length];
    reader.read_exact(&mut body).ok()?;
    Some(Received {
        path,
        headers,
        body,
    })
}

fn start_receiver(listener: TcpListener, status: u16) -> Receiver {
    let port = listener.local_addr().expect("local addr").port();
    let (tx, rx) = mpsc::channel();
    std::thread::spawn(move || {
        for stream in listener.incoming() {
            let Ok(mut stream) = stream else { continue };
            let _ = stream.set_read_timeout(Some(Duration::from_secs(10)));
            if let Some(request) = read_request(&mut stream) {
                let reason = if status == 200 { "OK" } else { "Gone" };
                let _ = write!(
                    stream,
                    "HTTP/1.1 {status} {reason}\r\ncontent-length: 0\r\nconnection: close\r\n\r\n"
                );
                if tx.send(request).is_err() {
                    return;
                }
            }
        }
    });
    Receiver { port, requests: rx }
}

/// A real SMTP server (aiosmtpd) that prints one JSON line per message.
struct SmtpServer {
    child: Child,
    port: u16,
    messages: mpsc::Receiver<serde_json::Value>,
}

impl Drop for SmtpServer {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn start_smtp() -> SmtpServer {
    let script =
        Path::new(env!("CARGO_MANIFEST_DIR")).join("../notices/src/testkit/smtp_capture.py");
    let mut child = Command::new("python3")
        .arg(&script)
        .args(["--mode", "plain"])
        // The server lives as long as its stdin stays open.
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit())
        .spawn()
        .expect("python3 with aiosmtpd is needed: run scripts/install-deps.sh");
    let stdout = child.stdout.take().expect("piped stdout");
    let mut lines = BufReader::new(stdout).lines();
    let first = lines
        .next()
        .and_then(Result::ok)
        .expect("smtp_capture.py prints its port (is aiosmtpd installed? pip install aiosmtpd)");
    let port: u16 = first
        .strip_prefix("PORT ")
        .and_then(|p| p.trim().parse().ok())
        .expect("PORT line");
    let (tx, rx) = mpsc::channel();
    std::thread::spawn(move || {
        for line in lines.map_while(Result::ok) {
            if let Ok(value) = serde_json::from_str(&line) {
                if tx.send(value).is_err() {
                    return;
                }
            }
        }
    });
    SmtpServer {
        child,
        port,
        messages: rx,
    }
}

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
    let receiver = start_receiver(TcpListener::bind("127.0.0.1:0").expect("bind"), 200);
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

    let receiver = start_receiver(
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
    let receiver = start_receiver(TcpListener::bind("127.0.0.1:0").expect("bind"), 410);
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
