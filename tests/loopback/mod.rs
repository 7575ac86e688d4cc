//! Real notice receivers on loopback for the end-to-end tests: an HTTP receiver that records
//! every request, and the project's aiosmtpd capture server.

#![allow(dead_code)]

use std::collections::HashMap;
use std::io::{BufRead, BufReader, Read, Write};
use std::net::{TcpListener, TcpStream};
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::sync::mpsc;
use std::time::Duration;

/// One request as the receiver saw it.
#[derive(Debug, Clone)]
pub struct Received {
    pub path: String,
    pub headers: HashMap<String, String>,
    pub body: Vec<u8>,
}

/// An HTTP/1.1 receiver on 127.0.0.1 (see [`start_http`] and [`start_http_on`]).
pub struct HttpReceiver {
    pub port: u16,
    pub requests: mpsc::Receiver<Received>,
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

/// An HTTP/1.1 receiver on a fresh loopback port that answers 200 to everything.
pub fn start_http() -> HttpReceiver {
    start_http_on(
        TcpListener::bind("127.0.0.1:0").expect("bind loopback"),
        200,
    )
}

/// An HTTP/1.1 receiver on `listener` that answers every request with `status` and reports
/// each one.
pub fn start_http_on(listener: TcpListener, status: u16) -> HttpReceiver {
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
    HttpReceiver { port, requests: rx }
}

/// The real SMTP server (aiosmtpd, `notices/src/testkit/smtp_capture.py`): one JSON line per
/// message, as Python's email package parsed it.
pub struct SmtpServer {
    child: Child,
    pub port: u16,
    pub messages: mpsc::Receiver<serde_json::Value>,
}

impl Drop for SmtpServer {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

pub fn start_smtp() -> SmtpServer {
    let script =
        Path::new(env!("CARGO_MANIFEST_DIR")).join("../notices/src/testkit/smtp_capture.py");
    let mut command = Command::new("python3");
    command.arg(&script).args(["--mode", "plain"]);
    let (child, port, messages) = start_port_and_json_lines(
        command,
        "smtp_capture.py prints its port (pip install aiosmtpd)",
    );
    SmtpServer {
        child,
        port,
        messages,
    }
}

/// Starts a helper program that prints `PORT <n>` first and then one JSON value per line, and
/// lives as long as its stdin stays open; returns it, the port and its values as they come.
/// `hint` says what to install when it prints no port.
pub fn start_port_and_json_lines(
    mut command: Command,
    hint: &str,
) -> (Child, u16, mpsc::Receiver<serde_json::Value>) {
    let mut child = command
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit())
        .spawn()
        .expect("python3 is needed: run scripts/install-deps.sh");
    let stdout = child.stdout.take().expect("piped stdout");
    let mut lines = BufReader::new(stdout).lines();
    let first = lines.next().and_then(Result::ok).expect(hint);
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
    (child, port, rx)
}

/// The `notices:` config section for an SMTP server on `port`, with short retry delays.
pub fn notices_config(smtp_port: u16) -> String {
    format!(
        "notices:\n  smtp: {{ host: 127.0.0.1, port: {smtp_port}, security: none, from: \"reelspool@localhost\" }}\n  backoff_initial_ms: 100\n  backoff_max_ms: 300\n"
    )
}
