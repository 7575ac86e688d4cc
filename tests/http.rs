//! End to end: the daemon's web server on loopback and on its unix socket. Metrics are parsed
//! with the reference Python parser (prometheus_client), actions are tried with and without the
//! token, and the dashboard is loaded in a real headless Chromium driven over WebDriver.

mod common;

use std::io::{Read, Write};
use std::os::unix::net::UnixStream;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::Duration;

use common::{wait_for, Farm};
use serde_json::{json, Value};

const POOL: &str = "gpu_pool: { kind: cpu, slots: 1, failure_drain_threshold: 1000 }\n";
const TOKEN: &str = "test-token-5b1f0e";
/// Long enough (hundreds of clips) to be watched and cancelled while it runs.
const LONG: &str = "  size: 128*128\n  infer_frames: 8\n  sample_steps: 2\n  num_clip: 400\n";

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|listener| listener.local_addr())
        .expect("a free port")
        .port()
}

/// A farm whose daemon serves HTTP on a free loopback port (and the returned base URL).
fn web_farm(extra: &str) -> (Farm, String) {
    let port = free_port();
    let farm = Farm::new(&format!(
        "{POOL}http: {{ listen: \"127.0.0.1:{port}\" }}\n{extra}"
    ));
    (farm, format!("http://127.0.0.1:{port}"))
}

/// `job_yaml` with `render` lines replacing the defaults.
fn job(farm: &Farm, name: &str, render: &str) -> String {
    let mut text = farm.job_yaml(name, "");
    for line in render.lines() {
        let key = line.split(':').next().unwrap_or(line);
        match text.find(&format!("\n{key}:")).map(|at| at + 1) {
            Some(start) => {
                let end = text[start..].find('\n').map_or(text.len(), |n| start + n);
                text.replace_range(start..end, line);
            }
            None => {
                let at = text.find("output:").expect("output section");
                text.insert_str(at, &format!("{line}\n"));
            }
        }
    }
    text
}

/// (status, body) of one request; no redirects, 10 s timeout.
fn request(method: &str, url: &str, token: Option<&str>) -> (u16, String) {
    let mut req = ureq::request(method, url).timeout(Duration::from_secs(10));
    if let Some(token) = token {
        req = req.set("Authorization", &format!("Bearer {token}"));
    }
    match req.call() {
        Ok(response) => {
            let status = response.status();
            (status, response.into_string().expect("body"))
        }
        Err(ureq::Error::Status(status, response)) => {
            (status, response.into_string().unwrap_or_default())
        }
        Err(err) => panic!("{method} {url}: {err}"),
    }
}

fn get_json(url: &str) -> Value {
    let (status, body) = request("GET", url, None);
    assert_eq!(status, 200, "GET {url}: {body}");
    serde_json::from_str(&body).unwrap_or_else(|err| panic!("GET {url}: {err}: {body}"))
}

/// One sample of the exposition, as the reference parser read it.
#[derive(Debug)]
struct Sample {
    name: String,
    labels: serde_json::Map<String, Value>,
    value: f64,
}

/// Parses Prometheus text with `prometheus_client.parser` (Python); panics if it cannot.
fn parse_metrics(text: &str) -> Vec<Sample> {
    let script = "import sys, json\n\
        from prometheus_client.parser import text_string_to_metric_families as parse\n\
        out = [[s.name, s.labels, s.value] for f in parse(sys.stdin.read()) for s in f.samples]\n\
        print(json.dumps(out))\n";
    let mut child = Command::new("python3")
        .args(["-c", script])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("python3 (scripts/install-deps.sh installs prometheus-client)");
    child
        .stdin
        .take()
        .expect("stdin")
        .write_all(text.as_bytes())
        .expect("write metrics");
    let out = child.wait_with_output().expect("parser output");
    assert!(
        out.status.success(),
        "the Prometheus parser refused the exposition: {}\n{text}",
        String::from_utf8_lossy(&out.stderr)
    );
    let rows: Vec<(String, serde_json::Map<String, Value>, f64)> =
        serde_json::from_slice(&out.stdout).expect("parser JSON");
    rows.into_iter()
        .map(|(name, labels, value)| Sample {
            name,
            labels,
            value,
        })
        .collect()
}

fn value(samples: &[Sample], name: &str, labels: &[(&str, &str)]) -> Option<f64> {
    samples
        .iter()
        .find(|s| {
            s.name == name
                && labels
                    .iter()
                    .all(|(k, v)| s.labels.get(*k).and_then(Value::as_str) == Some(*v))
        })
        .map(|s| s.value)
}

fn scrape(base: &str) -> Vec<Sample> {
    let (status, text) = request("GET", &format!("{base}/metrics"), None);
    assert_eq!(status, 200, "{text}");
    parse_metrics(&text)
}

/// Waits for the daemon's web server to answer.
fn wait_http(base: &str) {
    wait_for("the web server", Duration::from_secs(20), || {
        ureq::get(&format!("{base}/healthz"))
            .timeout(Duration::from_secs(2))
            .call()
            .ok()
            .map(|_| ())
    });
}

fn job_state(farm: &Farm, file: &str) -> Option<Value> {
    farm.job_by_source(file)
}

#[test]
fn metrics_and_api_follow_a_job_from_queue_to_done() {
    let (farm, base) = web_farm("");
    let _daemon = farm.start_daemon();
    wait_http(&base);

    let before = scrape(&base);
    for name in [
        "reelspool_build_info",
        "reelspool_jobs",
        "reelspool_job_queue_wait_seconds_count",
        "reelspool_clip_render_duration_seconds_count",
        "reelspool_gpu_memory_total_bytes",
        "reelspool_gpu_memory_used_bytes",
        "reelspool_gpu_assigned",
        "reelspool_notice_outbox_pending",
        "reelspool_last_job_finished_timestamp_seconds",
        "reelspool_checkpoint_resumes_total",
    ] {
        assert!(
            before.iter().any(|s| s.name == name),
            "{name} missing before any job: {before:?}"
        );
    }
    assert_eq!(
        value(&before, "reelspool_jobs", &[("state", "done")]),
        Some(0.0)
    );
    assert_eq!(
        value(
            &before,
            "reelspool_gpu_memory_total_bytes",
            &[("gpu", "0"), ("uuid", "cpu-0")]
        )
        .map(|v| v > 0.0),
        Some(true)
    );

    // Live updates: a client of the event stream sees the clips as they are done.
    let stream = ureq::get(&format!("{base}/api/v1/events"))
        .timeout(Duration::from_secs(30))
        .call()
        .expect("the event stream");
    assert!(stream.content_type().starts_with("text/event-stream"));
    let (seen_tx, seen_rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        use std::io::BufRead;
        for line in std::io::BufReader::new(stream.into_reader()).lines() {
            let Ok(line) = line else { break };
            if let Some(data) = line.strip_prefix("data:") {
                if let Ok(event) = serde_json::from_str::<Value>(data.trim()) {
                    if seen_tx.send(event).is_err() {
                        break;
                    }
                }
            }
        }
    });

    farm.drop_job("broken.yaml", "name: [unclosed\n");
    farm.drop_job(
        "short.yaml",
        &job(&farm, "short", "  infer_frames: 4\n  num_clip: 3\n"),
    );
    let state = wait_for("the job to finish", Duration::from_secs(60), || {
        job_state(&farm, "short.yaml").filter(|s| s["phase"] == "done")
    });
    let id = state["id"].as_str().expect("id").to_string();

    // The follower reads events once a second: wait for the counters to catch up.
    let after = wait_for(
        "the finished job in the metrics",
        Duration::from_secs(10),
        || {
            let samples = scrape(&base);
            (value(
                &samples,
                "reelspool_jobs_finished_total",
                &[("outcome", "done")],
            ) == Some(1.0))
            .then_some(samples)
        },
    );
    assert_eq!(
        value(
            &after,
            "reelspool_jobs_submitted_total",
            &[("source", "spool")]
        ),
        Some(1.0)
    );
    assert_eq!(
        value(&after, "reelspool_jobs", &[("state", "done")]),
        Some(1.0)
    );
    assert_eq!(
        value(
            &after,
            "reelspool_clips_rendered_total",
            &[("gpu", "0"), ("uuid", "cpu-0")]
        ),
        Some(3.0)
    );
    let frames = value(
        &after,
        "reelspool_frames_rendered_total",
        &[("uuid", "cpu-0")],
    )
    .expect("frames counter");
    assert!(frames >= 3.0, "{frames}");
    assert_eq!(
        value(&after, "reelspool_clip_render_duration_seconds_count", &[]),
        Some(3.0)
    );
    assert_eq!(
        value(&after, "reelspool_job_queue_wait_seconds_count", &[]),
        Some(1.0)
    );
    assert_eq!(
        value(
            &after,
            "reelspool_job_duration_seconds_count",
            &[("outcome", "done")]
        ),
        Some(1.0)
    );
    assert!(
        value(&after, "reelspool_last_job_finished_timestamp_seconds", &[])
            .is_some_and(|ts| ts > 1.6e9),
        "timestamp set"
    );
    let rejected: f64 = after
        .iter()
        .filter(|s| s.name == "reelspool_intake_rejections_total")
        .map(|s| s.value)
        .sum();
    assert_eq!(rejected, 1.0, "the broken file is counted once");
    let mut streamed = Vec::new();
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    while !streamed
        .iter()
        .any(|e: &Value| e["job"] == id.as_str() && e["event"] == "done")
    {
        let left = deadline.saturating_duration_since(std::time::Instant::now());
        match seen_rx.recv_timeout(left) {
            Ok(event) => streamed.push(event),
            Err(_) => panic!("no `done` on the event stream: {streamed:?}"),
        }
    }
    let clip_events = streamed
        .iter()
        .filter(|e| e["job"] == id.as_str() && e["event"] == "clip_done")
        .count();
    assert_eq!(clip_events, 3, "{streamed:?}");
    for sample in &after {
        for label in sample.labels.values() {
            let label = label.as_str().unwrap_or("");
            assert!(
                !label.contains(&id) && !label.contains("short"),
                "a job id or name as a label value: {sample:?}"
            );
        }
    }

    // The JSON API.
    let list = get_json(&format!("{base}/api/v1/jobs"));
    assert_eq!(list["total"], 1, "{list}");
    let listed = &list["jobs"][0];
    assert_eq!(listed["id"], id.as_str());
    assert_eq!(listed["phase"], "done");
    assert_eq!(listed["clips_done"], 3);
    assert_eq!(listed["clips_total"], 3);
    let running = get_json(&format!("{base}/api/v1/jobs?state=running,queued"));
    assert_eq!(running["total"], 0, "{running}");
    let paged = get_json(&format!("{base}/api/v1/jobs?offset=1"));
    assert_eq!(paged["jobs"], json!([]), "{paged}");

    let (status, body) = request("GET", &format!("{base}/api/v1/jobs?state=sleeping"), None);
    assert_eq!(status, 400, "{body}");
    let error: Value = serde_json::from_str(&body).expect("error as JSON");
    assert!(
        error["error"]
            .as_str()
            .is_some_and(|m| m.contains("sleeping")),
        "{error}"
    );

    let one = get_json(&format!("{base}/api/v1/jobs/{id}"));
    assert_eq!(one["job"]["id"], id.as_str());
    let events: Vec<&str> = one["events"]
        .as_array()
        .expect("events")
        .iter()
        .filter_map(|e| e["event"].as_str())
        .collect();
    assert_eq!(
        events.iter().filter(|e| **e == "clip_done").count(),
        3,
        "{events:?}"
    );
    assert!(events.contains(&"done"), "{events:?}");

    let (status, body) = request("GET", &format!("{base}/api/v1/jobs/no-such-job"), None);
    assert_eq!(status, 404, "{body}");
    assert!(serde_json::from_str::<Value>(&body).expect("JSON")["error"].is_string());

    let gpus = get_json(&format!("{base}/api/v1/gpus"));
    assert_eq!(gpus["cards"][0]["uuid"], "cpu-0", "{gpus}");
    assert_eq!(gpus["cards"][0]["job"], Value::Null, "{gpus}");

    // The job page and its video, byte for byte the file the job wrote.
    let (status, page) = request("GET", &format!("{base}/jobs/{id}"), None);
    assert_eq!(status, 200);
    assert!(page.contains("<video"), "a done job shows its video");
    let response = ureq::get(&format!("{base}/jobs/{id}/video"))
        .call()
        .expect("the video");
    assert_eq!(response.content_type(), "video/mp4");
    let mut served = Vec::new();
    response
        .into_reader()
        .read_to_end(&mut served)
        .expect("video bytes");
    let output = std::fs::read(state["output"].as_str().expect("output")).expect("output file");
    assert_eq!(served, output);
}

/// An HTTP request over the unix socket; returns (status, body).
fn socket_request(socket: &Path, method: &str, path: &str) -> (u16, String) {
    let mut stream = UnixStream::connect(socket).expect("connect to the web socket");
    stream
        .set_read_timeout(Some(Duration::from_secs(10)))
        .expect("timeout");
    write!(
        stream,
        "{method} {path} HTTP/1.1\r\nHost: reelspool\r\nContent-Length: 0\r\nConnection: close\r\n\r\n"
    )
    .expect("send");
    let mut reply = String::new();
    stream.read_to_string(&mut reply).expect("reply");
    let status = reply
        .split(' ')
        .nth(1)
        .and_then(|code| code.parse().ok())
        .unwrap_or_else(|| panic!("no status in {reply}"));
    let body = reply
        .split_once("\r\n\r\n")
        .map(|(_, body)| body.to_string())
        .unwrap_or_default();
    (status, body)
}

fn wait_running(farm: &Farm, file: &str) -> String {
    let state = wait_for("the job to run", Duration::from_secs(60), || {
        job_state(farm, file).filter(|s| s["phase"] == "running")
    });
    state["id"].as_str().expect("id").to_string()
}

fn wait_cancelled(farm: &Farm, file: &str) {
    wait_for("the job to be cancelled", Duration::from_secs(30), || {
        job_state(farm, file)
            .filter(|s| s["phase"] == "cancelled")
            .map(|_| ())
    });
}

#[test]
fn actions_need_the_token_or_the_socket_and_dcgm_files_follow_the_job() {
    let scratch = tempfile::tempdir().expect("temp dir");
    let token_file = scratch.path().join("http-token");
    std::fs::write(&token_file, format!("{TOKEN}\n")).expect("token");
    let dcgm = scratch.path().join("dcgm");
    let socket = scratch.path().join("run/http.sock");
    let (farm, base) = web_farm(&format!("dcgm_job_mapping_dir: {}\n", dcgm.display()));
    // The same `http:` with the socket and the token file added.
    let config = std::fs::read_to_string(&farm.config).expect("config");
    let config = config.replace(
        "http: {",
        &format!(
            "http: {{ socket: {}, token_file: {},",
            socket.display(),
            token_file.display()
        ),
    );
    std::fs::write(&farm.config, config).expect("config");
    let _daemon = farm.start_daemon();
    wait_http(&base);

    farm.drop_job("first.yaml", &job(&farm, "first", LONG));
    let id = wait_running(&farm, "first.yaml");
    // DCGM's job mapping: card 0's file names the job while it runs.
    let mapped = dcgm.join("0");
    wait_for("the DCGM mapping file", Duration::from_secs(10), || {
        (std::fs::read_to_string(&mapped).ok()?.trim() == id).then_some(())
    });

    let thumb = ureq::get(&format!("{base}/jobs/{id}/thumbnail.jpg"))
        .call()
        .expect("the running job's thumbnail");
    assert_eq!(thumb.content_type(), "image/jpeg");
    let mut jpeg = Vec::new();
    thumb.into_reader().read_to_end(&mut jpeg).expect("bytes");
    assert!(jpeg.starts_with(&[0xFF, 0xD8]), "a JPEG");

    let cancel = format!("{base}/api/v1/jobs/{id}/cancel");
    let (status, body) = request("POST", &cancel, None);
    assert_eq!(status, 401, "no token: {body}");
    assert!(serde_json::from_str::<Value>(&body).expect("JSON")["error"].is_string());
    let (status, body) = request("POST", &cancel, Some("not-the-token"));
    assert_eq!(status, 401, "wrong token: {body}");
    let (status, body) = request("POST", &format!("{base}/api/v1/gpus/cpu-0/drain"), None);
    assert_eq!(status, 401, "drain without a token: {body}");
    assert_eq!(
        job_state(&farm, "first.yaml").expect("state")["phase"],
        "running",
        "refused requests changed nothing"
    );

    let (status, body) = request("POST", &cancel, Some(TOKEN));
    assert_eq!(status, 200, "{body}");
    wait_cancelled(&farm, "first.yaml");

    // Drain and undrain with the token; an unknown card is a 404.
    let (status, body) = request(
        "POST",
        &format!("{base}/api/v1/gpus/GPU-nope/drain"),
        Some(TOKEN),
    );
    assert_eq!(status, 404, "{body}");
    let (status, body) = request(
        "POST",
        &format!("{base}/api/v1/gpus/cpu-0/drain"),
        Some(TOKEN),
    );
    assert_eq!(status, 200, "{body}");
    wait_for("the card to be drained", Duration::from_secs(10), || {
        (get_json(&format!("{base}/api/v1/gpus"))["cards"][0]["drained"] == true).then_some(())
    });
    let (status, body) = request(
        "POST",
        &format!("{base}/api/v1/gpus/cpu-0/undrain"),
        Some(TOKEN),
    );
    assert_eq!(status, 200, "{body}");
    wait_for("the card to be back", Duration::from_secs(10), || {
        (get_json(&format!("{base}/api/v1/gpus"))["cards"][0]["drained"] == false).then_some(())
    });
    wait_for("the DCGM file to go", Duration::from_secs(10), || {
        (!mapped.exists()).then_some(())
    });

    // Over the socket the kernel names the caller (root here): no token needed.
    farm.drop_job("second.yaml", &job(&farm, "second", LONG));
    let second = wait_running(&farm, "second.yaml");
    let (status, body) = socket_request(&socket, "GET", &format!("/api/v1/jobs/{second}"));
    assert_eq!(status, 200, "{body}");
    assert!(body.contains("clips_total"), "{body}");
    let (status, body) = socket_request(&socket, "POST", &format!("/api/v1/jobs/{second}/cancel"));
    assert_eq!(status, 200, "{body}");
    wait_cancelled(&farm, "second.yaml");
}

#[test]
fn a_listen_address_other_machines_reach_needs_a_token() {
    let port = free_port();
    let farm = Farm::new(&format!("{POOL}http: {{ listen: \"0.0.0.0:{port}\" }}\n"));
    let credentials = tempfile::tempdir().expect("empty credentials dir");
    let out = Command::new(common::reelspool_bin())
        .arg("--config")
        .arg(&farm.config)
        .arg("daemon")
        .env("CREDENTIALS_DIRECTORY", credentials.path())
        .stdin(Stdio::null())
        .output()
        .expect("run the daemon");
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{stderr}");
    assert!(stderr.contains("0.0.0.0"), "{stderr}");
    assert!(stderr.contains("no token"), "{stderr}");
    assert!(
        std::net::TcpStream::connect(("127.0.0.1", port)).is_err(),
        "nothing listens"
    );
}

// ---- the dashboard in a real browser -------------------------------------------------------

/// chromedriver on a free port, killed on drop.
struct Driver {
    child: std::process::Child,
    base: String,
}

impl Drop for Driver {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn start_driver() -> Driver {
    let port = free_port();
    let child = Command::new("chromedriver")
        .arg(format!("--port={port}"))
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("chromedriver (apt install chromium-driver; scripts/install-deps.sh does)");
    let base = format!("http://127.0.0.1:{port}");
    wait_for("chromedriver", Duration::from_secs(20), || {
        ureq::get(&format!("{base}/status"))
            .timeout(Duration::from_secs(2))
            .call()
            .ok()
            .map(|_| ())
    });
    Driver { child, base }
}

fn webdriver(method: &str, url: &str, body: Value) -> Value {
    let req = ureq::request(method, url).timeout(Duration::from_secs(30));
    let result = if method == "GET" {
        req.call()
    } else {
        req.send_json(body)
    };
    match result {
        Ok(response) => response.into_json::<Value>().expect("WebDriver JSON")["value"].take(),
        Err(ureq::Error::Status(status, response)) => panic!(
            "WebDriver {method} {url}: {status} {}",
            response.into_string().unwrap_or_default()
        ),
        Err(err) => panic!("WebDriver {method} {url}: {err}"),
    }
}

struct Browser<'a> {
    session: String,
    driver: &'a Driver,
}

impl Browser<'_> {
    fn url(&self, path: &str) -> String {
        format!("{}/session/{}{path}", self.driver.base, self.session)
    }

    fn script(&self, code: &str) -> Value {
        webdriver(
            "POST",
            &self.url("/execute/sync"),
            json!({ "script": code, "args": [] }),
        )
    }

    fn element(&self, css: &str) -> String {
        let found = webdriver(
            "POST",
            &self.url("/element"),
            json!({ "using": "css selector", "value": css }),
        );
        found
            .as_object()
            .and_then(|map| map.values().next())
            .and_then(Value::as_str)
            .expect("element id")
            .to_string()
    }

    /// Clicks the element in one script call: the live part of the page is replaced every
    /// few seconds, so an element found in one WebDriver call may be gone by the next.
    fn click(&self, css: &str) {
        let clicked = self.script(&format!(
            "const el = document.querySelector({}); if (!el) return false; el.click(); return true;",
            json!(css)
        ));
        assert_eq!(clicked, json!(true), "nothing to click at {css}");
    }
}

impl Drop for Browser<'_> {
    fn drop(&mut self) {
        let _ = ureq::delete(&self.url("")).call();
    }
}

fn save_png(base64: &str, path: &Path) {
    std::fs::create_dir_all(path.parent().expect("folder")).expect("artifact folder");
    let mut child = Command::new("python3")
        .args([
            "-c",
            "import sys, base64; open(sys.argv[1], 'wb').write(base64.b64decode(sys.stdin.read()))",
        ])
        .arg(path)
        .stdin(Stdio::piped())
        .spawn()
        .expect("python3");
    child
        .stdin
        .take()
        .expect("stdin")
        .write_all(base64.as_bytes())
        .expect("write");
    assert!(child.wait().expect("python3").success());
    let bytes = std::fs::read(path).expect("screenshot");
    assert!(bytes.starts_with(b"\x89PNG"), "a PNG");
}

fn artifacts_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../target/test-artifacts")
}

#[test]
fn the_dashboard_shows_a_running_job_live_and_cancels_it_with_the_token() {
    let scratch = tempfile::tempdir().expect("temp dir");
    let token_file = scratch.path().join("http-token");
    std::fs::write(&token_file, TOKEN).expect("token");
    let port = free_port();
    let farm = Farm::new(&format!(
        "{POOL}http: {{ listen: \"127.0.0.1:{port}\", token_file: {} }}\n",
        token_file.display()
    ));
    let base = format!("http://127.0.0.1:{port}");
    let _daemon = farm.start_daemon();
    wait_http(&base);
    farm.drop_job("watched.yaml", &job(&farm, "watched", LONG));
    let id = wait_running(&farm, "watched.yaml");

    let driver = start_driver();
    let session = webdriver(
        "POST",
        &format!("{}/session", driver.base),
        json!({ "capabilities": { "alwaysMatch": { "goog:chromeOptions": {
            "binary": "/usr/bin/chromium",
            "args": ["--headless=new", "--no-sandbox", "--disable-dev-shm-usage",
                     "--disable-gpu", "--window-size=1100,800"]
        }}}}),
    );
    let browser = Browser {
        session: session["sessionId"]
            .as_str()
            .expect("session id")
            .to_string(),
        driver: &driver,
    };
    webdriver(
        "POST",
        &browser.url("/url"),
        json!({ "url": format!("{base}/") }),
    );
    // A mark on the window: it survives only as long as the page is not reloaded.
    browser.script("window.notReloaded = true;");
    let clips_text = format!(
        "const row = document.querySelector('tr.job[data-job=\"{id}\"]');\
         return row ? row.querySelector('.clips').textContent : null;"
    );
    let first = wait_for("the job on the page", Duration::from_secs(10), || {
        browser
            .script(&clips_text)
            .as_str()
            .filter(|text| text.starts_with("clip "))
            .map(str::to_string)
    });
    wait_for(
        "the progress to move on the page",
        Duration::from_secs(15),
        || {
            let now = browser.script(&clips_text);
            (now.as_str().is_some_and(|text| text != first)).then_some(())
        },
    );
    // The thumbnail of the latest clip, written by the worker, shown as a real image.
    wait_for("the thumbnail to show", Duration::from_secs(10), || {
        let shown = browser.script(&format!(
            "const img = document.querySelector('tr.job[data-job=\"{id}\"] img.thumb');\
             return !!img && img.complete && img.naturalWidth > 0;"
        ));
        (shown == json!(true)).then_some(())
    });
    assert_eq!(
        browser.script("return window.notReloaded === true;"),
        json!(true),
        "the progress changed without a reload"
    );
    let shot = webdriver("GET", &browser.url("/screenshot"), json!({}));
    let png = artifacts_dir().join("dashboard.png");
    save_png(shot.as_str().expect("base64 PNG"), &png);

    // Cancel without the token: refused, the job runs on.
    let cancel_button = format!("tr.job[data-job=\"{id}\"] button.cancel");
    browser.click(&cancel_button);
    let status = wait_for("the refusal", Duration::from_secs(10), || {
        browser
            .script("return document.getElementById('msg').dataset.status || null;")
            .as_str()
            .map(str::to_string)
    });
    assert_eq!(status, "401");
    assert_eq!(
        job_state(&farm, "watched.yaml").expect("state")["phase"],
        "running"
    );
    // With the token typed in: cancelled.
    let input = browser.element("#token");
    webdriver(
        "POST",
        &browser.url(&format!("/element/{input}/value")),
        json!({ "text": TOKEN }),
    );
    browser.script("document.getElementById('token').dispatchEvent(new Event('change'));");
    // The job's page: a new priority for the running job, with the token kept from the list.
    webdriver(
        "POST",
        &browser.url("/url"),
        json!({ "url": format!("{base}/jobs/{id}") }),
    );
    let prio = browser.element("#prio");
    webdriver(
        "POST",
        &browser.url(&format!("/element/{prio}/clear")),
        json!({}),
    );
    webdriver(
        "POST",
        &browser.url(&format!("/element/{prio}/value")),
        json!({ "text": "42" }),
    );
    browser.click("button.priority");
    wait_for(
        "the priority change to be accepted",
        Duration::from_secs(10),
        || {
            (browser.script("return document.getElementById('msg').dataset.status;")
                == json!("200"))
            .then_some(())
        },
    );
    wait_for(
        "the new priority in the job state",
        Duration::from_secs(10),
        || {
            let state = job_state(&farm, "watched.yaml")?;
            (state["priority"] == 42 && state["phase"] == "running").then_some(())
        },
    );
    webdriver(
        "POST",
        &browser.url("/url"),
        json!({ "url": format!("{base}/") }),
    );
    browser.click(&cancel_button);
    wait_for("the cancel to be accepted", Duration::from_secs(10), || {
        (browser.script("return document.getElementById('msg').dataset.status;") == json!("200"))
            .then_some(())
    });
    wait_cancelled(&farm, "watched.yaml");
}
