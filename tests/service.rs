//! End to end: the daemon as a systemd service. A test plays systemd's part: it binds the notify
//! socket, starts the real binary with `NOTIFY_SOCKET` and `WATCHDOG_USEC`, reads the datagrams,
//! sends SIGHUP and SIGTERM, and checks what comes out: the notify messages, the exit status,
//! the job's files after a stop and the resumed video (with the real `ffprobe`).

mod common;

use std::os::unix::net::UnixDatagram;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use common::{reelspool_bin, wait_for, Daemon, Farm};

const POOL: &str = "gpu_pool: { kind: cpu, slots: 1, failure_drain_threshold: 1000 }\n";
const WAIT: Duration = Duration::from_secs(60);
/// 200 clips of 4 frames at 64*64 and one step: each is quick, the job takes seconds, and a
/// stop lands in the middle of it.
const MANY_CLIPS: &str = "  num_clip: 200\n";
/// The watchdog interval the tests ask for (2 s); the daemon pings every quarter of it.
const WATCHDOG_USEC: &str = "2000000";

/// The service manager's end of the notify socket. A thread reads it all the time, like
/// systemd does, so the daemon never finds it full while the test looks elsewhere.
struct NotifySocket {
    path: PathBuf,
    /// Every message received so far, in order.
    seen: Arc<Mutex<Vec<String>>>,
    /// How many messages earlier waits have consumed.
    read: usize,
}

impl NotifySocket {
    fn bind(farm: &Farm) -> NotifySocket {
        let path = farm.root.path().join("notify.sock");
        let socket = UnixDatagram::bind(&path).expect("bind the notify socket");
        let seen = Arc::new(Mutex::new(Vec::new()));
        let sink = Arc::clone(&seen);
        std::thread::spawn(move || {
            let mut buffer = vec![0u8; 4096];
            // Blocks in recv until the test process exits (nextest runs every test in a
            // process of its own).
            while let Ok(len) = socket.recv(&mut buffer) {
                let message = String::from_utf8_lossy(&buffer[..len]).into_owned();
                sink.lock().expect("notify log lock").push(message);
            }
        });
        NotifySocket {
            path,
            seen,
            read: 0,
        }
    }

    fn all(&self) -> Vec<String> {
        self.seen.lock().expect("notify log lock").clone()
    }

    /// Waits for a message after the ones earlier waits returned that satisfies `wanted`.
    fn wait(&mut self, what: &str, wanted: impl Fn(&str) -> bool) -> String {
        self.wait_from(self.read, what, wanted)
    }

    /// Like `wait`, from the `start`th message on.
    fn wait_from(&mut self, start: usize, what: &str, wanted: impl Fn(&str) -> bool) -> String {
        let (index, message) = wait_for(what, WAIT, || {
            let seen = self.all();
            seen.iter()
                .enumerate()
                .skip(start)
                .find(|(_, message)| wanted(message))
                .map(|(index, message)| (index, message.clone()))
        });
        self.read = index + 1;
        message
    }

    fn count(&self, message: &str) -> usize {
        self.all().iter().filter(|seen| *seen == message).count()
    }
}

/// Starts the daemon the way systemd does for `Type=notify` with `WatchdogSec=`: the shell
/// exports `WATCHDOG_PID` as its own pid and then becomes the daemon, so the pid matches.
fn start_service(farm: &Farm, notify: &NotifySocket, log_name: &str) -> Daemon {
    let log = std::fs::File::create(farm.root.path().join(log_name)).expect("daemon log");
    let child = Command::new("sh")
        .arg("-c")
        .arg(r#"WATCHDOG_PID=$$ exec "$0" "$@""#)
        .arg(reelspool_bin())
        .arg("--config")
        .arg(&farm.config)
        .arg("daemon")
        .env("NOTIFY_SOCKET", &notify.path)
        .env("WATCHDOG_USEC", WATCHDOG_USEC)
        .env("REELSPOOL_LOG", "info")
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(log)
        .spawn()
        .expect("start reelspool daemon");
    Daemon { child }
}

fn signal(daemon: &Daemon, signal: i32) {
    // SAFETY: signalling our own child process.
    unsafe { libc::kill(daemon.pid(), signal) };
}

fn read_log(farm: &Farm, name: &str) -> String {
    std::fs::read_to_string(farm.root.path().join(name)).unwrap_or_default()
}

fn job_dir(farm: &Farm, state: &serde_json::Value) -> PathBuf {
    farm.jobs_dir()
        .join(state["id"].as_str().expect("a job id"))
}

fn events(dir: &Path) -> Vec<serde_json::Value> {
    std::fs::read_to_string(dir.join("events.jsonl"))
        .unwrap_or_default()
        .lines()
        .filter_map(|line| serde_json::from_str(line).ok())
        .collect()
}

fn wait_phase(farm: &Farm, file: &str, phases: &[&str]) -> serde_json::Value {
    wait_for(&format!("{file} to be {phases:?}"), WAIT, || {
        farm.job_by_source(file)
            .filter(|state| phases.iter().any(|phase| state["phase"] == *phase))
    })
}

#[test]
fn notify_socket_hears_ready_status_watchdog_reload_and_stopping() {
    let farm = Farm::new(POOL);
    let mut notify = NotifySocket::bind(&farm);
    let mut daemon = start_service(&farm, &notify, "service.log");

    notify.wait("READY=1", |m| m == "READY=1\n");
    let before_ready = notify.all();
    assert!(
        before_ready[0].starts_with("STATUS=starting"),
        "a starting status comes before READY=1: {before_ready:#?}"
    );
    // The first STATUS may come just before or just after READY=1.
    notify.wait_from(1, "the idle status", |m| {
        m == "STATUS=0 queued, 0 running; GPUs in use: none\n"
    });
    for _ in 0..3 {
        notify.wait("a watchdog ping", |m| m == "WATCHDOG=1\n");
    }

    farm.drop_job("long.yaml", &farm.job_yaml("long", MANY_CLIPS));
    let busy = notify.wait("a status with the job running", |m| {
        m.starts_with("STATUS=0 queued, 1 running; GPUs in use: ")
    });
    assert!(
        !busy.ends_with("none\n"),
        "a running job uses a card: {busy}"
    );

    // Reload with the queue held: a second job must stay queued behind the running one.
    let config = std::fs::read_to_string(&farm.config).expect("config");
    std::fs::write(&farm.config, format!("{config}hold_queue: true\n")).expect("new config");
    signal(&daemon, libc::SIGHUP);
    let reloading = notify.wait("RELOADING=1", |m| m.starts_with("RELOADING=1\n"));
    assert!(
        reloading.contains("\nMONOTONIC_USEC="),
        "systemd 253+ wants a timestamp with RELOADING=1: {reloading:?}"
    );
    notify.wait("READY=1 after the reload", |m| m == "READY=1\n");
    let long = wait_phase(&farm, "long.yaml", &["done", "failed", "cancelled"]);
    assert_eq!(
        long["phase"],
        "done",
        "{long}\n{}",
        read_log(&farm, "service.log")
    );
    farm.drop_job("held.yaml", &farm.job_yaml("held", ""));
    notify.wait("a status with the held job queued", |m| {
        m == "STATUS=1 queued, 0 running; GPUs in use: none\n"
    });
    assert_eq!(
        farm.job_by_source("held.yaml").expect("held job")["phase"],
        "queued"
    );

    let pings_before_stop = notify.count("WATCHDOG=1\n");
    signal(&daemon, libc::SIGTERM);
    let stopping = notify.wait("STOPPING=1", |m| m.starts_with("STOPPING=1\n"));
    assert!(stopping.contains("STATUS=stopping"), "{stopping:?}");
    let status = daemon.terminate(WAIT);
    assert!(status.success(), "daemon exit: {status:?}");
    assert!(pings_before_stop >= 3);
    let log = read_log(&farm, "service.log");
    assert!(
        log.contains("configuration reloaded") && log.contains("hold_queue"),
        "{log}"
    );
}

#[test]
fn bad_config_on_reload_keeps_the_running_one_and_says_why() {
    let farm = Farm::new(POOL);
    let mut notify = NotifySocket::bind(&farm);
    let mut daemon = start_service(&farm, &notify, "service.log");
    notify.wait("READY=1", |m| m == "READY=1\n");
    let good = std::fs::read_to_string(&farm.config).expect("config");

    std::fs::write(&farm.config, format!("{good}hold_queue: maybe\n")).expect("bad config");
    signal(&daemon, libc::SIGHUP);
    notify.wait("RELOADING=1", |m| m.starts_with("RELOADING=1\n"));
    notify.wait("READY=1 after the refused reload", |m| m == "READY=1\n");
    let log = read_log(&farm, "service.log");
    let line = good.lines().count() + 1;
    let at = format!("{}:{line}:", farm.config.display());
    assert!(
        log.contains("reload refused") && log.contains(&at),
        "want the diagnostic at {at}: {log}"
    );

    // A directory that cannot move under a running daemon: logged, and the old one stays.
    let moved = farm.root.path().join("other-spool");
    let spool = farm.spool.display().to_string();
    let text = good.replace(&spool, &moved.display().to_string());
    std::fs::write(&farm.config, text).expect("moved spool config");
    signal(&daemon, libc::SIGHUP);
    notify.wait("RELOADING=1", |m| m.starts_with("RELOADING=1\n"));
    notify.wait("READY=1 after the reload", |m| m == "READY=1\n");
    let log = read_log(&farm, "service.log");
    assert!(
        log.contains("restart needed") && log.contains("spool_dir"),
        "{log}"
    );

    // Neither reload held the queue or moved the spool: a job dropped now runs to the end.
    farm.drop_job("after.yaml", &farm.job_yaml("after", ""));
    let state = wait_phase(&farm, "after.yaml", &["done", "failed", "cancelled"]);
    assert_eq!(state["phase"], "done", "{state}");
    assert!(daemon.is_running());
    assert!(daemon.terminate(WAIT).success());
}

#[test]
fn sigterm_checkpoints_the_running_job_and_the_next_start_resumes_it_at_the_next_clip() {
    let farm = Farm::new(POOL);
    let mut daemon = farm.start_daemon();
    farm.drop_job("long.yaml", &farm.job_yaml("long", MANY_CLIPS));
    let state = wait_for("three clips done", WAIT, || {
        farm.job_by_source("long.yaml")
            .filter(|state| state["clips_done"].as_u64() >= Some(3))
    });
    let dir = job_dir(&farm, &state);

    let asked = Instant::now();
    let status = daemon.terminate(WAIT);
    assert!(status.success(), "daemon exit: {status:?}");
    let stop_secs = asked.elapsed().as_secs_f64();

    let state = farm.job_by_source("long.yaml").expect("job");
    assert_eq!(state["phase"], "queued", "{state}");
    let evs = events(&dir);
    let last = evs.last().expect("events");
    assert_eq!(last["event"], "interrupted", "{evs:#?}");
    let checkpoint: serde_json::Value = serde_json::from_str(
        &std::fs::read_to_string(dir.join("work/checkpoint.json")).expect("checkpoint.json"),
    )
    .expect("checkpoint JSON");
    let k = checkpoint["last_clip"].as_u64().expect("last_clip");
    assert!((2..199).contains(&k), "stopped mid-job, at clip {k}");
    assert!(stop_secs < 30.0, "stop took {stop_secs:.1} s");

    let _daemon = farm.start_daemon();
    let state = wait_phase(&farm, "long.yaml", &["done", "failed", "cancelled"]);
    assert_eq!(state["phase"], "done", "{state}");
    let evs = events(&dir);
    let resumed: Vec<_> = evs.iter().filter(|e| e["event"] == "resumed").collect();
    assert_eq!(resumed.len(), 1, "{evs:#?}");
    assert_eq!(resumed[0]["next_clip"].as_u64(), Some(k + 1), "{evs:#?}");

    let output = PathBuf::from(state["output"].as_str().expect("output path"));
    let (codec, frames) = probe_video(&output);
    assert_eq!(codec, "h264");
    assert_eq!(frames, 200 * 4, "every clip of 4 frames, none twice");

    // Both attempts' worker output is in the job's log.
    let id = state["id"].as_str().expect("id");
    let logs = farm.cli(&["logs", id]);
    assert!(logs.status.success(), "{logs:?}");
    let text = String::from_utf8_lossy(&logs.stdout);
    let starts: Vec<&str> = text.lines().filter(|l| l.contains("rendering")).collect();
    assert_eq!(starts.len(), 2, "{text}");
    assert!(starts[0].contains("next_clip=0"), "{text}");
    assert!(
        starts[1].contains(&format!("next_clip={}", k + 1)),
        "{text}"
    );
}

#[test]
fn logs_follow_prints_the_worker_output_until_the_job_ends() {
    let farm = Farm::new(POOL);
    let _daemon = farm.start_daemon();
    farm.drop_job("follow.yaml", &farm.job_yaml("follow", "  num_clip: 40\n"));
    let state = wait_phase(&farm, "follow.yaml", &["queued", "running"]);
    let id = state["id"].as_str().expect("id").to_string();
    let mut follower = Follower(Some(
        Command::new(reelspool_bin())
            .arg("--config")
            .arg(&farm.config)
            .args(["logs", &id, "--follow"])
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .expect("start reelspool logs --follow"),
    ));
    let output = wait_for("logs --follow to exit", WAIT, || follower.output_if_done());
    let state = farm.job_by_source("follow.yaml").expect("job");
    assert_eq!(state["phase"], "done", "follow ends only when the job does");
    assert!(output.status.success(), "{output:?}");
    let stdout = String::from_utf8_lossy(&output.stdout);
    assert!(stdout.contains("rendering"), "{stdout}");
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(stderr.contains(&format!("job {id} done")), "{stderr}");
}

/// A `reelspool logs --follow` process, killed if the test ends before it does (it would
/// otherwise wait forever for a job whose daemon is gone).
struct Follower(Option<std::process::Child>);

impl Follower {
    fn output_if_done(&mut self) -> Option<std::process::Output> {
        let child = self.0.as_mut()?;
        match child.try_wait() {
            Ok(Some(_)) => self
                .0
                .take()
                .map(|child| child.wait_with_output().expect("follower output")),
            _ => None,
        }
    }
}

impl Drop for Follower {
    fn drop(&mut self) {
        if let Some(child) = self.0.as_mut() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

/// Codec and frame count of the video stream, counted by decoding (`-count_frames`).
fn probe_video(path: &Path) -> (String, u64) {
    let output = Command::new("ffprobe")
        .args(["-v", "error", "-select_streams", "v:0", "-count_frames"])
        .args(["-show_entries", "stream=codec_name,nb_read_frames"])
        .args(["-of", "json"])
        .arg(path)
        .output()
        .expect("run ffprobe");
    assert!(
        output.status.success(),
        "ffprobe {}: {}",
        path.display(),
        String::from_utf8_lossy(&output.stderr)
    );
    let json: serde_json::Value = serde_json::from_slice(&output.stdout).expect("ffprobe JSON");
    let stream = &json["streams"][0];
    let frames = stream["nb_read_frames"]
        .as_str()
        .and_then(|n| n.parse().ok())
        .unwrap_or_else(|| panic!("no frame count in {json}"));
    (
        stream["codec_name"]
            .as_str()
            .unwrap_or_default()
            .to_string(),
        frames,
    )
}
