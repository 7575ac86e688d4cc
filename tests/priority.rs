//! End to end: changing a queued job's priority with `reelspool priority` and over the HTTP
//! API. The one-slot CPU pool is held (`hold_queue: true`) while three jobs wait, so the order
//! they start in once the hold is lifted (SIGHUP after a config change) shows the queue order.
//! A request left while the daemon is stopped (SIGSTOP, then SIGKILL) is applied after the
//! restart, and a change made with no daemon running is what the next start queues by.

mod common;

use std::time::Duration;

use common::{wait_for, Daemon, Farm};
use serde_json::Value;

const HOLD: &str = "hold_queue: true\ngpu_pool: { kind: cpu, slots: 1 }\n";
const WAIT: Duration = Duration::from_secs(60);
const TOKEN: &str = "prio-token-8c2d41";

/// Drops one job per name and returns their ids in the same order, once all are queued.
fn queue_jobs(farm: &Farm, names: &[&str]) -> Vec<String> {
    for name in names {
        farm.drop_job(&format!("{name}.yaml"), &farm.job_yaml(name, ""));
    }
    names
        .iter()
        .map(|name| {
            wait_for("the job to be queued", WAIT, || {
                let state = farm.job_by_source(&format!("{name}.yaml"))?;
                (state["phase"] == "queued").then(|| state["id"].as_str().map(str::to_string))?
            })
        })
        .collect()
}

fn state_of(farm: &Farm, id: &str) -> Value {
    let text =
        std::fs::read_to_string(farm.jobs_dir().join(id).join("state.json")).expect("state.json");
    serde_json::from_str(&text).expect("state JSON")
}

fn events_of(farm: &Farm, id: &str, name: &str) -> Vec<Value> {
    std::fs::read_to_string(farm.jobs_dir().join(id).join("events.jsonl"))
        .unwrap_or_default()
        .lines()
        .filter_map(|line| serde_json::from_str::<Value>(line).ok())
        .filter(|event| event["event"] == name)
        .collect()
}

/// Lifts the hold: rewrites the config and sends SIGHUP.
fn release_hold(farm: &Farm, daemon: &Daemon) {
    let config = std::fs::read_to_string(&farm.config).expect("config");
    std::fs::write(
        &farm.config,
        config.replace("hold_queue: true", "hold_queue: false"),
    )
    .expect("open config");
    // SAFETY: signalling our own child.
    unsafe { libc::kill(daemon.pid(), libc::SIGHUP) };
}

/// The ids ordered by when they started, once every one of them is done.
fn start_order(farm: &Farm, ids: &[String]) -> Vec<String> {
    let mut started: Vec<(u64, String)> = wait_for("every job to be done", WAIT, || {
        ids.iter()
            .map(|id| {
                let state = state_of(farm, id);
                (state["phase"] == "done")
                    .then(|| state["started_at_ms"].as_u64().map(|at| (at, id.clone())))?
            })
            .collect::<Option<Vec<_>>>()
    });
    started.sort();
    started.into_iter().map(|(_, id)| id).collect()
}

fn text(bytes: &[u8]) -> String {
    String::from_utf8_lossy(bytes).to_string()
}

#[test]
fn a_raised_priority_runs_next_and_bad_requests_get_clear_errors() {
    let farm = Farm::new(HOLD);
    let daemon = farm.start_daemon();
    let ids = queue_jobs(&farm, &["first", "second", "third", "dropped"]);
    let (first, second, third, dropped) = (&ids[0], &ids[1], &ids[2], &ids[3]);

    let out = farm.cli(&["priority", third, "50"]);
    assert!(out.status.success(), "{out:?}");
    assert!(text(&out.stdout).contains("priority 50"), "{out:?}");
    assert_eq!(state_of(&farm, third)["priority"], 50);
    // The event follows the state file: wait for it rather than read it once.
    let changes = wait_for("the priority_changed event", WAIT, || {
        let changes = events_of(&farm, third, "priority_changed");
        (!changes.is_empty()).then_some(changes)
    });
    assert_eq!(changes.len(), 1, "{changes:?}");
    assert_eq!(
        (&changes[0]["from"], &changes[0]["to"]),
        (&0.into(), &50.into())
    );
    assert!(changes[0]["by"].is_string(), "{changes:?}");

    // Out of range, unknown, finished: an error each, and nothing changes.
    let out = farm.cli(&["priority", first, "1001"]);
    assert!(!out.status.success(), "{out:?}");
    assert!(text(&out.stderr).contains("-1000 to 1000"), "{out:?}");
    let out = farm.cli(&["priority", "20200101-000000-000-0009", "5"]);
    assert!(!out.status.success(), "{out:?}");
    assert!(text(&out.stderr).contains("no job"), "{out:?}");
    let out = farm.cli(&["cancel", dropped, "--wait-secs", "20"]);
    assert!(text(&out.stdout).contains("cancelled"), "{out:?}");
    let out = farm.cli(&["priority", dropped, "5"]);
    assert!(!out.status.success(), "{out:?}");
    assert!(text(&out.stderr).contains("already cancelled"), "{out:?}");
    assert_eq!(state_of(&farm, first)["priority"], 0);
    assert_eq!(state_of(&farm, dropped)["priority"], 0);

    release_hold(&farm, &daemon);
    let order = start_order(&farm, &ids[..3]);
    assert_eq!(
        order,
        vec![third.clone(), first.clone(), second.clone()],
        "{}",
        farm.daemon_logs()
    );
}

#[test]
fn a_request_survives_a_killed_daemon_and_an_offline_change_counts_at_the_next_start() {
    let farm = Farm::new(HOLD);
    let mut daemon = farm.start_daemon();
    let ids = queue_jobs(&farm, &["one", "two", "three"]);
    let (one, two, three) = (&ids[0], &ids[1], &ids[2]);

    // The daemon cannot act (stopped), takes the request's marker to its grave (SIGKILL)...
    // SAFETY: signalling our own child.
    unsafe { libc::kill(daemon.pid(), libc::SIGSTOP) };
    let out = farm.cli(&["priority", three, "50", "--wait-secs", "1"]);
    assert!(out.status.success(), "{out:?}");
    assert!(text(&out.stdout).contains("not applied it yet"), "{out:?}");
    daemon.kill9();
    assert_eq!(state_of(&farm, three)["priority"], 0);

    // ...and with no daemon, the command changes the job itself.
    let out = farm.cli(&["priority", two, "20"]);
    assert!(out.status.success(), "{out:?}");
    assert!(text(&out.stdout).contains("priority 20 (was 0)"), "{out:?}");
    assert_eq!(state_of(&farm, two)["priority"], 20);
    assert_eq!(events_of(&farm, two, "priority_changed").len(), 1);

    // The next daemon finds the request and applies it while still held.
    let daemon = farm.start_daemon();
    wait_for("the left request to be applied", WAIT, || {
        (state_of(&farm, three)["priority"] == 50).then_some(())
    });
    let changes = wait_for("the priority_changed event", WAIT, || {
        let changes = events_of(&farm, three, "priority_changed");
        (!changes.is_empty()).then_some(changes)
    });
    assert_eq!(changes.len(), 1, "{changes:?}");
    assert_eq!(changes[0]["to"], 50);

    release_hold(&farm, &daemon);
    assert_eq!(
        start_order(&farm, &ids),
        vec![three.clone(), two.clone(), one.clone()],
        "{}",
        farm.daemon_logs()
    );
}

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|listener| listener.local_addr())
        .expect("a free port")
        .port()
}

/// (status, parsed JSON body) of a POST with `body`.
fn post(url: &str, token: Option<&str>, body: &str) -> (u16, Value) {
    let mut req = ureq::post(url)
        .timeout(Duration::from_secs(10))
        .set("Content-Type", "application/json");
    if let Some(token) = token {
        req = req.set("Authorization", &format!("Bearer {token}"));
    }
    let (status, text) = match req.send_string(body) {
        Ok(response) => (response.status(), response.into_string().expect("body")),
        Err(ureq::Error::Status(status, response)) => {
            (status, response.into_string().unwrap_or_default())
        }
        Err(err) => panic!("POST {url}: {err}"),
    };
    let value = serde_json::from_str(&text)
        .unwrap_or_else(|err| panic!("POST {url}: not JSON ({err}): {text}"));
    (status, value)
}

#[test]
fn the_http_endpoint_needs_the_token_and_answers_errors_in_json() {
    let scratch = tempfile::tempdir().expect("temp dir");
    let token_file = scratch.path().join("http-token");
    std::fs::write(&token_file, format!("{TOKEN}\n")).expect("token");
    let port = free_port();
    let farm = Farm::new(&format!(
        "{HOLD}http: {{ listen: \"127.0.0.1:{port}\", token_file: {} }}\n",
        token_file.display()
    ));
    let base = format!("http://127.0.0.1:{port}");
    let _daemon = farm.start_daemon();
    wait_for("the web server", Duration::from_secs(20), || {
        ureq::get(&format!("{base}/healthz"))
            .timeout(Duration::from_secs(2))
            .call()
            .ok()
            .map(|_| ())
    });
    let ids = queue_jobs(&farm, &["web", "gone"]);
    let url = |id: &str| format!("{base}/api/v1/jobs/{id}/priority");

    let (status, body) = post(&url(&ids[0]), None, r#"{"priority": 7}"#);
    assert_eq!(status, 401, "{body}");
    assert!(body["error"].is_string(), "{body}");
    let (status, body) = post(&url(&ids[0]), Some("not-the-token"), r#"{"priority": 7}"#);
    assert_eq!(status, 401, "{body}");
    assert_eq!(
        state_of(&farm, &ids[0])["priority"],
        0,
        "refused: unchanged"
    );

    let (status, body) = post(&url(&ids[0]), Some(TOKEN), r#"{"priority": -7}"#);
    assert_eq!(status, 200, "{body}");
    assert_eq!(body["requested_priority"], -7, "{body}");
    wait_for("the change to be applied", WAIT, || {
        (state_of(&farm, &ids[0])["priority"] == -7).then_some(())
    });

    for bad in [
        r#"{"priority": 1001}"#,
        r#"{"priority": "high"}"#,
        "not json",
    ] {
        let (status, body) = post(&url(&ids[0]), Some(TOKEN), bad);
        assert_eq!(status, 400, "{bad}: {body}");
        assert!(body["error"].is_string(), "{bad}: {body}");
    }
    let (status, body) = post(
        &url("20200101-000000-000-0009"),
        Some(TOKEN),
        r#"{"priority": 1}"#,
    );
    assert_eq!(status, 404, "{body}");

    let out = farm.cli(&["cancel", &ids[1], "--wait-secs", "20"]);
    assert!(text(&out.stdout).contains("cancelled"), "{out:?}");
    let (status, body) = post(&url(&ids[1]), Some(TOKEN), r#"{"priority": 1}"#);
    assert_eq!(status, 409, "{body}");
    assert!(
        body["error"]
            .as_str()
            .is_some_and(|e| e.contains("cancelled")),
        "{body}"
    );
    assert_eq!(state_of(&farm, &ids[0])["priority"], -7);
}
