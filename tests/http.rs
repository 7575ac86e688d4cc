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

    // The card gauges appear once the scheduler has written the pool's state, which can come
    // just after the web server answers.
    let before = wait_for(
        "the idle farm's card gauges",
        Duration::from_secs(30),
        || {
            let samples = scrape(&base);
            samples
                .iter()
                .any(|s| s.name == "reelspool_gpu_memory_total_bytes")
                .then_some(samples)
        },
    );
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
    check_ranges(&format!("{base}/jobs/{id}/video"), &output);

    // The preview of the finished job: its 3 clips, closed; only names the daemon makes.
    let job_dir = farm.jobs_dir().join(&id);
    let (status, playlist) = request("GET", &format!("{base}/jobs/{id}/live.m3u8"), None);
    assert_eq!(status, 200, "{playlist}");
    assert_eq!(playlist.matches("#EXTINF:").count(), 3, "{playlist}");
    assert!(playlist.ends_with("#EXT-X-ENDLIST\n"), "{playlist}");
    let segment = fetch_bytes(&format!("{base}/jobs/{id}/live/0.ts"));
    assert_eq!(segment[0], 0x47, "MPEG-TS");
    let ts = job_dir.join("preview/0.ts");
    let codec = Command::new("ffprobe")
        .args([
            "-v",
            "error",
            "-show_entries",
            "stream=codec_name",
            "-of",
            "csv=p=0",
        ])
        .arg(&ts)
        .output()
        .expect("ffprobe");
    let codecs = String::from_utf8_lossy(&codec.stdout).into_owned();
    assert!(
        codecs.lines().any(|line| line.trim() == "h264")
            && codecs
                .lines()
                .all(|line| line.trim().is_empty() || line.trim() == "h264"),
        "{codecs}"
    );
    // A symlink planted where a clip would be, and one in the preview folder: never followed.
    std::os::unix::fs::symlink(job_dir.join("state.json"), job_dir.join("work/clips/3.mkv"))
        .expect("plant a symlink");
    std::os::unix::fs::symlink(job_dir.join("state.json"), job_dir.join("preview/7.ts"))
        .expect("plant a symlink");
    let state_text = std::fs::read_to_string(job_dir.join("state.json")).expect("state");
    let (_, again) = request("GET", &format!("{base}/jobs/{id}/live.m3u8"), None);
    assert_eq!(again.matches("#EXTINF:").count(), 3, "{again}");
    for path in [
        "live/7.ts",
        "live/00.ts",
        "live/..%2Fstate.json",
        "live/..%2F..%2Fstate.json",
        "live/index.json",
        "live/0.mkv",
        "clips/3.jpg",
        "clips/9.jpg",
        "clips/..%2F0.jpg",
    ] {
        let (status, body) = request("GET", &format!("{base}/jobs/{id}/{path}"), None);
        assert!(matches!(status, 403 | 404), "{path}: {status} {body}");
        assert!(!body.contains(&state_text), "{path} leaked the state");
    }
    for path in ["clips/0.jpg", "clips/2.jpg", "poster.jpg", "thumbnail.jpg"] {
        let jpeg = fetch_bytes(&format!("{base}/jobs/{id}/{path}"));
        assert!(jpeg.starts_with(&[0xFF, 0xD8]), "{path} is a JPEG");
    }
    // The poster shows in the job list, the thumbnails and the seconds per clip on the job page.
    let (_, front) = request("GET", &format!("{base}/"), None);
    assert!(front.contains(&format!("/jobs/{id}/poster.jpg")), "{front}");
    assert!(page.contains(&format!("/jobs/{id}/clips/2.jpg")), "{page}");
    assert!(page.contains("id=\"clip-seconds\""), "{page}");
}

/// The whole body of a GET that must succeed.
fn fetch_bytes(url: &str) -> Vec<u8> {
    let response = ureq::get(url)
        .timeout(Duration::from_secs(30))
        .call()
        .unwrap_or_else(|err| panic!("GET {url}: {err}"));
    let mut bytes = Vec::new();
    response
        .into_reader()
        .read_to_end(&mut bytes)
        .expect("body");
    bytes
}

/// (status, Content-Range, body) of a GET with `Range: range`.
fn get_range(url: &str, range: &str) -> (u16, Option<String>, Vec<u8>) {
    let response = match ureq::get(url)
        .set("Range", range)
        .timeout(Duration::from_secs(30))
        .call()
    {
        Ok(response) | Err(ureq::Error::Status(_, response)) => response,
        Err(err) => panic!("GET {url} ({range}): {err}"),
    };
    let status = response.status();
    let content_range = response.header("Content-Range").map(str::to_string);
    let mut body = Vec::new();
    response.into_reader().read_to_end(&mut body).expect("body");
    (status, content_range, body)
}

/// Single ranges of `file` served at `url` come back as 206 with the right bytes, ranges past
/// the end as 416, several ranges as the whole file.
fn check_ranges(url: &str, file: &[u8]) {
    let len = file.len();
    assert!(len > 200, "a video of {len} bytes");
    let whole = ureq::get(url).call().expect("GET");
    assert_eq!(whole.header("Accept-Ranges"), Some("bytes"));
    let cases: [(String, usize, usize); 4] = [
        ("bytes=0-99".into(), 0, 100),
        ("bytes=100-".into(), 100, len),
        ("bytes=-64".into(), len - 64, len),
        (format!("bytes={}-{}", len - 10, len + 1000), len - 10, len),
    ];
    for (range, from, to) in cases {
        let (status, content_range, body) = get_range(url, &range);
        assert_eq!(status, 206, "{range}");
        assert_eq!(
            content_range.as_deref(),
            Some(format!("bytes {from}-{}/{len}", to - 1).as_str()),
            "{range}"
        );
        assert!(body == file[from..to], "{range}: other bytes");
    }
    let (status, content_range, _) = get_range(url, &format!("bytes={len}-"));
    assert_eq!(status, 416);
    assert_eq!(content_range, Some(format!("bytes */{len}")));
    let (status, _, body) = get_range(url, "bytes=0-1,10-20");
    assert_eq!(status, 200, "several ranges: the whole file");
    assert!(body == file, "the whole file");
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

/// A headless Chromium session of the given window size (`"W,H"`).
fn open_browser<'a>(driver: &'a Driver, window: &str) -> Browser<'a> {
    let session = webdriver(
        "POST",
        &format!("{}/session", driver.base),
        json!({ "capabilities": { "alwaysMatch": { "goog:chromeOptions": {
            "binary": "/usr/bin/chromium",
            "args": ["--headless=new", "--no-sandbox", "--disable-dev-shm-usage",
                     "--disable-gpu", format!("--window-size={window}"),
                     "--autoplay-policy=no-user-gesture-required"]
        }}}}),
    );
    Browser {
        session: session["sessionId"]
            .as_str()
            .expect("session id")
            .to_string(),
        driver,
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
    let browser = open_browser(&driver, "1100,800");
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

/// A farm serving HTTP whose `slow` engine is tests/engines/chaos_engine.py sleeping 0.15 s
/// per clip: a job of many clips runs long enough to be watched.
fn slow_engine_farm() -> (Farm, String) {
    let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("../tests/engines/chaos_engine.py");
    web_farm(&format!(
        "engines:\n  slow:\n    command: [python3, {}]\n    profile: example-engine\n    \
         heartbeat_timeout_secs: 60\n    env:\n      CHAOS: slow\n",
        script.display()
    ))
}

/// A 64x64 job of `clips` clips of 4 frames (a quarter second each) through the slow engine.
fn slow_job(farm: &Farm, name: &str, clips: u32) -> String {
    format!(
        "name: {name}\ninputs:\n  image: {m}/portrait.png\n  audio: {m}/hello.wav\n  prompt: \"a test\"\n\
         render:\n  size: 64*64\n  infer_frames: 4\n  num_clip: {clips}\n  seed: 7\n\
         engine:\n  kind: command\n  name: slow\n  model: demo\n\
         output:\n  path: {o}/{name}.mp4\n",
        m = farm.media.display(),
        o = farm.out.display(),
    )
}

/// Segments in the job's live playlist, and whether it is closed.
fn playlist_segments(base: &str, id: &str) -> (usize, bool) {
    let (status, text) = request("GET", &format!("{base}/jobs/{id}/live.m3u8"), None);
    assert_eq!(status, 200, "{text}");
    assert!(text.starts_with("#EXTM3U\n"), "{text}");
    (
        text.matches("#EXTINF:").count(),
        text.contains("#EXT-X-ENDLIST"),
    )
}

#[test]
fn the_live_preview_plays_while_the_job_runs_and_the_finished_video_seeks() {
    let (farm, base) = slow_engine_farm();
    let _daemon = farm.start_daemon();
    wait_http(&base);
    farm.drop_job("watched.yaml", &slow_job(&farm, "watched", 400));
    let id = wait_running(&farm, "watched.yaml");
    wait_for("three clips", Duration::from_secs(60), || {
        (job_state(&farm, "watched.yaml")?["clips_done"].as_u64()? >= 3).then_some(())
    });

    let driver = start_driver();
    let browser = open_browser(&driver, "1100,900");
    webdriver(
        "POST",
        &browser.url("/url"),
        json!({ "url": format!("{base}/jobs/{id}") }),
    );
    // The job page plays the clips there are so far (HLS, played by Chromium itself).
    let ready = wait_for(
        "the live preview to have a picture",
        Duration::from_secs(60),
        || {
            let state = browser.script(
                "const v = document.getElementById('livevideo');\
                 return v ? [v.readyState, v.error ? v.error.code : 0, v.currentSrc] : null;",
            );
            (state[0].as_u64()? >= 2).then_some(state)
        },
    );
    assert_eq!(ready[1], 0, "no media error: {ready}");
    assert!(
        ready[2]
            .as_str()
            .is_some_and(|src| src.ends_with("live.m3u8")),
        "{ready}"
    );
    assert_eq!(
        job_state(&farm, "watched.yaml").expect("state")["phase"],
        "running",
        "the preview played while the job ran"
    );
    assert_eq!(
        browser.script(
            "const v = document.getElementById('livevideo');\
             return v.canPlayType('application/vnd.apple.mpegurl') !== '' \
                    && document.getElementById('livenote').hidden;"
        ),
        json!(true),
        "this Chromium plays HLS itself; no note shown"
    );
    // It follows new clips: the playlist grows, the player's buffer with it.
    let (before, closed) = playlist_segments(&base, &id);
    assert!(before >= 3 && !closed, "{before} {closed}");
    let buffered = "const v = document.getElementById('livevideo');\
                    return v.buffered.length ? v.buffered.end(v.buffered.length - 1) : 0;";
    let first_end = browser.script(buffered).as_f64().unwrap_or(0.0);
    wait_for("the playlist to grow", Duration::from_secs(60), || {
        (playlist_segments(&base, &id).0 > before + 2).then_some(())
    });
    wait_for(
        "the player to buffer the new clips",
        Duration::from_secs(60),
        || (browser.script(buffered).as_f64()? > first_end).then_some(()),
    );
    // A thumbnail per finished clip, made by the daemon.
    wait_for("a clip thumbnail", Duration::from_secs(30), || {
        let shown = browser.script(
            "const img = document.querySelector('#strip img');\
             return !!img && img.complete && img.naturalWidth > 0;",
        );
        (shown == json!(true)).then_some(())
    });
    let shot = webdriver("GET", &browser.url("/screenshot"), json!({}));
    save_png(
        shot.as_str().expect("base64 PNG"),
        &artifacts_dir().join("live-preview.png"),
    );
    // Cancelled, the playlist is closed with what was rendered.
    let out = farm.cli(&["cancel", &id]);
    assert!(out.status.success(), "{out:?}");
    wait_cancelled(&farm, "watched.yaml");
    let (count, closed) = playlist_segments(&base, &id);
    assert!(closed && count > before, "{count} {closed}");

    // A finished video seeks in the browser (range requests).
    farm.drop_job(
        "short.yaml",
        &job(&farm, "short", "  infer_frames: 8\n  num_clip: 8\n"),
    );
    let done = wait_for("the short job", Duration::from_secs(120), || {
        job_state(&farm, "short.yaml").filter(|s| s["phase"] == "done")
    });
    let short = done["id"].as_str().expect("id").to_string();
    webdriver(
        "POST",
        &browser.url("/url"),
        json!({ "url": format!("{base}/jobs/{short}") }),
    );
    let duration = wait_for("the video's metadata", Duration::from_secs(30), || {
        let duration = browser
            .script("const v = document.getElementById('video'); return v && v.readyState >= 1 ? v.duration : null;")
            .as_f64()?;
        (duration > 1.0).then_some(duration)
    });
    browser.script(&format!(
        "const v = document.getElementById('video'); window.seekedTo = null;\
         v.addEventListener('seeked', () => window.seekedTo = v.currentTime, {{ once: true }});\
         v.currentTime = {};",
        duration * 0.75
    ));
    let landed = wait_for("the seek", Duration::from_secs(30), || {
        let state = browser.script(
            "const v = document.getElementById('video'); return [window.seekedTo, v.readyState];",
        );
        let to = state[0].as_f64()?;
        (state[1].as_u64()? >= 2).then_some(to)
    });
    assert!(
        (landed - duration * 0.75).abs() < 0.5,
        "seeked to {landed} of {duration}"
    );
}

#[test]
fn the_dashboard_plots_the_cards_the_farm_and_a_jobs_clips() {
    let (farm, base) = web_farm("");
    let _daemon = farm.start_daemon();
    wait_http(&base);
    farm.drop_job(
        "plotted.yaml",
        &job(&farm, "plotted", "  infer_frames: 8\n  num_clip: 24\n"),
    );
    let state = wait_for("the job to finish", Duration::from_secs(120), || {
        job_state(&farm, "plotted.yaml").filter(|s| s["phase"] == "done")
    });
    let id = state["id"].as_str().expect("id").to_string();
    // The history: the farm's minutes hold the 24 clips, the host has two samples or more
    // (a CPU pool: one series for the host, not one per slot).
    let history = wait_for("the history", Duration::from_secs(60), || {
        let history = get_json(&format!("{base}/api/v1/history"));
        let clips: u64 = history["farm"]
            .as_array()?
            .iter()
            .filter_map(|p| p["clips"].as_u64())
            .sum();
        let host = history["cards"]
            .as_array()?
            .iter()
            .find(|card| card["uuid"] == "host")?
            .clone();
        (clips == 24 && host["points"].as_array()?.len() >= 2).then_some(history)
    });
    assert_eq!(
        history["cards"].as_array().map(Vec::len),
        Some(1),
        "{history}"
    );
    let frames: u64 = history["farm"]
        .as_array()
        .expect("farm")
        .iter()
        .filter_map(|p| p["frames"].as_u64())
        .sum();
    assert_eq!(frames, 24 * 8, "{history}");
    // A CPU slot shows the host's RAM, not a nominal 1024 GiB.
    let gpus = get_json(&format!("{base}/api/v1/gpus"));
    assert_eq!(gpus["cards"][0]["kind"], "cpu", "{gpus}");
    assert!(
        gpus["cards"][0]["host"]["memory_total_bytes"].as_u64() > Some(0),
        "{gpus}"
    );
    let (_, front) = request("GET", &format!("{base}/"), None);
    assert!(
        !front.contains("1024.0 GiB"),
        "a CPU slot's nominal memory shown"
    );
    assert!(front.contains("host RAM"), "{front}");

    let driver = start_driver();
    let browser = open_browser(&driver, "1200,1500");
    webdriver(
        "POST",
        &browser.url("/url"),
        json!({ "url": format!("{base}/") }),
    );
    // Lines in the host's chart and the farm's, and the finished job's poster in the list.
    wait_for("the plots and the poster", Duration::from_secs(30), || {
        let drawn = browser.script(&format!(
            "const poster = document.querySelector('tr.job[data-job=\"{id}\"] img.poster');\
             return !!document.querySelector('#card-host path')\
                 && !!document.querySelector('#farm-clips path, #farm-clips circle')\
                 && !!document.querySelector('#farm-queue path, #farm-queue circle')\
                 && !!poster && poster.complete && poster.naturalWidth > 0;"
        ));
        (drawn == json!(true)).then_some(())
    });
    let shot = webdriver("GET", &browser.url("/screenshot"), json!({}));
    save_png(
        shot.as_str().expect("base64 PNG"),
        &artifacts_dir().join("dashboard-plots.png"),
    );
    // The job's page: seconds per clip, one bar per clip, and a thumbnail per clip.
    webdriver(
        "POST",
        &browser.url("/url"),
        json!({ "url": format!("{base}/jobs/{id}") }),
    );
    wait_for("the job's chart and clips", Duration::from_secs(30), || {
        let shown = browser.script(
            "const imgs = [...document.querySelectorAll('#strip img')];\
             return [document.querySelectorAll('#clip-seconds rect.clipbar').length, imgs.length,\
                     imgs.every(i => i.complete && i.naturalWidth > 0)];",
        );
        (shown == json!([24, 24, true])).then_some(())
    });
    // Every bar stands on the chart's zero line, however tall it is.
    let standing = browser.script(
        "const zero = document.querySelector('#clip-seconds line.grid').getBBox().y;\
         const bars = [...document.querySelectorAll('#clip-seconds rect.clipbar')].map(r => r.getBBox());\
         return bars.every(b => Math.abs(b.y + b.height - zero) < 0.5 && b.height > 1);",
    );
    assert_eq!(standing, json!(true), "bars float above the axis");
    let shot = webdriver("GET", &browser.url("/screenshot"), json!({}));
    save_png(
        shot.as_str().expect("base64 PNG"),
        &artifacts_dir().join("job-page.png"),
    );
}

#[test]
fn the_preview_and_the_video_follow_the_owner_rules_on_the_socket() {
    // `nobody` (group `nogroup`) is a member of the submit group here, but owns no job.
    let scratch = tempfile::tempdir().expect("temp dir");
    std::fs::set_permissions(
        scratch.path(),
        std::os::unix::fs::PermissionsExt::from_mode(0o755),
    )
    .expect("chmod");
    let socket = scratch.path().join("http.sock");
    let port = free_port();
    let base = format!("http://127.0.0.1:{port}");
    let farm = Farm::new(&format!(
        "{POOL}submit_group: nogroup\nhttp: {{ listen: \"127.0.0.1:{port}\", socket: {} }}\n",
        socket.display()
    ));
    let _daemon = farm.start_daemon();
    wait_http(&base);
    farm.drop_job(
        "mine.yaml",
        &job(&farm, "mine", "  infer_frames: 4\n  num_clip: 3\n"),
    );
    let state = wait_for("the job", Duration::from_secs(120), || {
        job_state(&farm, "mine.yaml").filter(|s| s["phase"] == "done")
    });
    let id = state["id"].as_str().expect("id").to_string();
    let paths = [
        format!("/jobs/{id}/live.m3u8"),
        format!("/jobs/{id}/live/0.ts"),
        format!("/jobs/{id}/clips/0.jpg"),
        format!("/jobs/{id}/poster.jpg"),
        format!("/jobs/{id}/thumbnail.jpg"),
        format!("/jobs/{id}/video"),
    ];
    // curl over the socket as `user` (group `group`), with `Range: bytes=0-9`; (status, body).
    let curl = |user: &str, group: &str, path: &str| -> (u16, String) {
        let out = Command::new("setpriv")
            .args(["--reuid", user, "--regid", group, "--init-groups", "--"])
            .args([
                "curl",
                "-s",
                "-H",
                "Range: bytes=0-9",
                "-w",
                "\n%{http_code}",
            ])
            .arg("--unix-socket")
            .arg(&socket)
            .arg(format!("http://localhost{path}"))
            .output()
            .expect("setpriv and curl");
        let text = String::from_utf8_lossy(&out.stdout).into_owned();
        let (body, status) = text.rsplit_once('\n').unwrap_or(("", "0"));
        (status.trim().parse().unwrap_or(0), body.to_string())
    };
    // The owner (root made the job) sees everything; the playlist is made on the way.
    for path in &paths {
        let (status, body) = curl("root", "root", path);
        assert!(matches!(status, 200 | 206), "root {path}: {status} {body}");
    }
    for path in &paths {
        let (status, body) = curl("nobody", "nogroup", path);
        assert_eq!(status, 403, "nobody {path}: {body}");
        assert!(body.contains("refused"), "nobody {path}: {body}");
    }
}
