//! End to end: the real daemon places jobs on a simulated pool of one 24 GB and one 80 GB
//! card by their memory estimates, one job per card, and the worker sees only its card.
//!
//! Most tests run the worker through a wrapper script (`worker: { program: ... }`) that
//! appends what the worker process really got in its environment to `runs.log`, may act a
//! failure (out of memory, a crash, waiting on a gate file), and otherwise `exec`s the real
//! `reelspool worker` with the same arguments.

mod common;

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use common::{reelspool_bin, wait_for, Farm};
use serde_json::Value;

const WAIT: Duration = Duration::from_secs(120);
const POOL: &str = "gpu_pool: { kind: simulated, gpus: [{name: \"RTX 4090\", memory_gb: 24}, \
                    {name: \"A100 80GB\", memory_gb: 80}] }\n";
/// 80 GiB, the A100's memory as the simulated pool declares it.
const A100_BYTES: u64 = 80 << 30;

/// One start of the worker, as the wrapper script recorded it.
#[derive(Debug, Clone, PartialEq)]
struct Run {
    job_id: String,
    cuda_visible_devices: String,
    cuda_device_order: String,
    nvidia_visible_devices: String,
    offload: String,
}

struct Pool {
    farm: Farm,
    /// Holds the wrapper script and its files; `$SCRIPTS` in the script.
    scripts: tempfile::TempDir,
    runs_log: PathBuf,
}

impl Pool {
    /// A farm on `pool` whose worker is the wrapper script; `act` is shell run before the
    /// `exec` (it may `exit` to act a failure). In `act`, `$SCRIPTS` is a directory the test
    /// can put files in (a gate, the card to fail on).
    fn new(pool: &str, act: &str) -> Pool {
        let scripts = tempfile::Builder::new()
            .prefix("reelspool-worker-")
            .tempdir()
            .expect("temp dir");
        let dir = scripts.path().canonicalize().expect("canonical dir");
        let script = dir.join("worker.sh");
        let runs_log = dir.join("runs.log");
        let text = format!(
            "#!/bin/sh\n\
             # $1 is `worker`, $2 the job directory, named after the job id.\n\
             SCRIPTS='{dir}'\n\
             printf '%s|%s|%s|%s|%s\\n' \"$(basename \"$2\")\" \"${{CUDA_VISIBLE_DEVICES-unset}}\" \
             \"${{CUDA_DEVICE_ORDER-unset}}\" \"${{NVIDIA_VISIBLE_DEVICES-unset}}\" \
             \"${{REELSPOOL_OFFLOAD-unset}}\" >> \"$SCRIPTS/runs.log\"\n\
             {act}\n\
             exec '{bin}' \"$@\"\n",
            dir = dir.display(),
            bin = reelspool_bin().display(),
        );
        std::fs::write(&script, text).expect("write worker script");
        make_executable(&script);
        let farm = Farm::new(&format!(
            // One process per job: these tests count worker starts in runs.log.
            "{pool}worker: {{ program: {}, idle_unload_secs: 0 }}\n",
            script.display()
        ));
        Pool {
            farm,
            scripts,
            runs_log,
        }
    }

    /// A file in the script's directory (`$SCRIPTS/<name>` in `act`).
    fn script_file(&self, name: &str) -> PathBuf {
        self.scripts.path().join(name)
    }

    fn runs(&self) -> Vec<Run> {
        let text = std::fs::read_to_string(&self.runs_log).unwrap_or_default();
        text.lines()
            .map(|line| {
                let fields: Vec<&str> = line.split('|').collect();
                assert_eq!(fields.len(), 5, "runs.log line: {line}");
                Run {
                    job_id: fields[0].into(),
                    cuda_visible_devices: fields[1].into(),
                    cuda_device_order: fields[2].into(),
                    nvidia_visible_devices: fields[3].into(),
                    offload: fields[4].into(),
                }
            })
            .collect()
    }

    /// The UUID of the card called `name`, from `reelspool gpus --json`.
    fn uuid_of(&self, name: &str) -> String {
        let report = self.gpus_json();
        let cards = report["cards"].as_array().expect("cards array");
        cards
            .iter()
            .find(|card| card["name"] == name)
            .and_then(|card| card["uuid"].as_str())
            .unwrap_or_else(|| panic!("no card named {name} in {report}"))
            .to_string()
    }

    fn gpus_json(&self) -> Value {
        let out = self.farm.cli(&["gpus", "--json"]);
        assert!(out.status.success(), "gpus --json failed: {out:?}");
        serde_json::from_slice(&out.stdout).expect("gpus --json prints JSON")
    }

    fn card(&self, uuid: &str) -> Value {
        let report = self.gpus_json();
        report["cards"]
            .as_array()
            .and_then(|cards| cards.iter().find(|card| card["uuid"] == uuid).cloned())
            .unwrap_or_else(|| panic!("card {uuid} not in {report}"))
    }

    fn gpus(&self, args: &[&str]) {
        let mut all = vec!["gpus"];
        all.extend_from_slice(args);
        let out = self.farm.cli(&all);
        assert!(
            out.status.success(),
            "reelspool {all:?} failed: {}",
            String::from_utf8_lossy(&out.stderr)
        );
    }

    /// A job file. `render` lines go under `render:`; `profile` names the memory profile.
    fn job(&self, name: &str, render: &str, profile: Option<&str>) -> String {
        let profile = profile
            .map(|p| format!("  profile: {p}\n"))
            .unwrap_or_default();
        format!(
            "name: {name}\ninputs:\n  image: {m}/portrait.png\n  audio: {m}/hello.wav\n  prompt: \"a test\"\n\
             render:\n  num_clip: 1\n  sample_steps: 1\n{render}\
             engine:\n  kind: native\n  model: builtin:tiny\n{profile}\
             output:\n  path: {o}/{name}.mp4\n",
            m = self.farm.media.display(),
            o = self.farm.out.display(),
        )
    }

    /// Drops a job and waits until it is done; returns its state.
    fn run_job(&self, file: &str, text: &str) -> Value {
        self.farm.drop_job(file, text);
        self.wait_phase(file, "done")
    }

    fn wait_phase(&self, file: &str, phase: &str) -> Value {
        wait_for(&format!("{file} to be {phase}"), WAIT, || {
            let state = self.farm.job_by_source(file)?;
            let now = state["phase"].as_str().unwrap_or("");
            if now != phase && matches!(now, "done" | "failed" | "cancelled") {
                panic!(
                    "{file} ended {now}, not {phase}: {state}\n{}",
                    self.farm.daemon_logs()
                );
            }
            (now == phase).then_some(state)
        })
    }

    fn events(&self, state: &Value) -> Vec<Value> {
        let id = state["id"].as_str().expect("job id");
        let text = std::fs::read_to_string(self.farm.jobs_dir().join(id).join("events.jsonl"))
            .expect("events.jsonl");
        text.lines()
            .map(|line| serde_json::from_str(line).expect("event line is JSON"))
            .collect()
    }
}

fn make_executable(path: &Path) {
    use std::os::unix::fs::PermissionsExt;
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o755)).expect("chmod");
}

fn event_ts(events: &[Value], name: &str) -> u64 {
    events
        .iter()
        .find(|e| e["event"] == name)
        .and_then(|e| e["ts_ms"].as_u64())
        .unwrap_or_else(|| panic!("no {name} event in {events:?}"))
}

fn video_size(path: &Path) -> String {
    let out = Command::new("ffprobe")
        .args(["-v", "error", "-select_streams", "v:0"])
        .args(["-show_entries", "stream=width,height", "-of", "csv=p=0"])
        .arg(path)
        .output()
        .expect("run ffprobe");
    assert!(out.status.success(), "ffprobe {}: {out:?}", path.display());
    String::from_utf8_lossy(&out.stdout).trim().to_string()
}

/// 704*384 × 48 frames of Live Avatar without offload is estimated at 79 GiB: it fits only
/// the 80 GB card, although the 24 GB card is free and best fit would pick it first.
#[test]
fn job_that_fits_only_the_80gb_card_runs_there_and_sees_only_that_card() {
    let pool = Pool::new(POOL, "");
    let _daemon = pool.farm.start_daemon();
    let a100 = pool.uuid_of("A100 80GB");
    let text = pool.job(
        "big",
        "  size: 704*384\n  infer_frames: 48\n  offload: false\n",
        Some("liveavatar-14b"),
    );
    let state = pool.run_job("big.yaml", &text);
    assert_eq!(state["gpu"], "A100 80GB#1", "{state}");
    let runs = pool.runs();
    assert_eq!(runs.len(), 1, "{runs:?}");
    assert_eq!(runs[0].job_id, state["id"].as_str().expect("id"));
    assert_eq!(runs[0].cuda_visible_devices, a100);
    assert_eq!(runs[0].nvidia_visible_devices, a100);
    assert_eq!(runs[0].cuda_device_order, "PCI_BUS_ID");
    assert_eq!(runs[0].offload, "0");
    let running = pool
        .events(&state)
        .into_iter()
        .find(|e| e["event"] == "running")
        .expect("running event");
    assert_eq!(running["gpu_uuid"], a100.as_str());
    assert_eq!(video_size(&pool.farm.out.join("big.mp4")), "704,384");
}

#[test]
fn job_too_big_for_every_card_is_refused_with_estimate_largest_card_and_suggestion() {
    let pool = Pool::new(POOL, "");
    let _daemon = pool.farm.start_daemon();
    // 64.78 + 1.0189 × (704·384·80 / 1e6) + 1.0 margin = 87.8 GiB without offload.
    let text = pool.job(
        "huge",
        "  size: 704*384\n  infer_frames: 80\n  offload: false\n",
        Some("liveavatar-14b"),
    );
    pool.farm.drop_job("huge.yaml", &text);
    let error = wait_for("huge.yaml to be rejected", WAIT, || {
        pool.farm.rejection("huge.yaml")
    });
    assert!(error.contains("87.8 GiB"), "{error}");
    assert!(error.contains("largest GPU has 80.0 GiB"), "{error}");
    assert!(error.contains("help: set `offload: true`"), "{error}");
    assert!(pool.farm.job_by_source("huge.yaml").is_none());
    assert!(pool.runs().is_empty());
}

/// A Live Avatar release on the native engine that names `engine.profile:
/// liveavatar-14b-native` is planned with that profile, fitted to the engine's accounting
/// (46 + 3.364 × (704·384·48 / 1e6) + 1 margin = 90.7 GiB, no offload mode), not with the
/// PyTorch original's (79.0 GiB, which would fit the 80 GB card). Without a profile, a release
/// job is planned by `wan::memory` itself (tests/memory_modes.rs).
#[test]
fn a_native_release_job_is_planned_with_the_native_engines_profile() {
    let pool = Pool::new(POOL, "");
    let _daemon = pool.farm.start_daemon();
    let release = pool.farm.root.path().join("liveavatar");
    wan::release::write_tiny_release(&release, 7).expect("write the tiny release");
    let release = release.canonicalize().expect("canonical release dir");
    let text = pool
        .job(
            "release",
            "  size: 704*384
  infer_frames: 48
",
            Some("liveavatar-14b-native"),
        )
        .replace(
            "model: builtin:tiny",
            &format!("model: {}", release.display()),
        );
    pool.farm.drop_job("release.yaml", &text);
    let error = wait_for("release.yaml to be rejected", WAIT, || {
        pool.farm.rejection("release.yaml")
    });
    assert!(error.contains("profile `liveavatar-14b-native`"), "{error}");
    assert!(error.contains("90.7 GiB"), "{error}");
    assert!(error.contains("largest GPU has 80.0 GiB"), "{error}");
    assert!(pool.runs().is_empty());
}

#[test]
fn out_of_memory_exit_is_retried_with_offload_and_raises_the_estimate() {
    // The failing worker first waits (up to 20 s) until gpus.json shows its card holding the
    // job's model, as it does while a job runs: the retry must still go to the best-fitting
    // card, not back to the one whose worker just died as if it were warm there.
    let act = "if [ \"$REELSPOOL_OFFLOAD\" != 1 ]; then\n\
               i=0; while [ $i -lt 400 ] && ! grep -q '\"worker_model\": \"builtin:tiny\"' \"$(cat \"$SCRIPTS/state\")/gpus.json\" 2>/dev/null; do sleep 0.05; i=$((i+1)); done\n\
               echo '{\"event\":\"error\",\"kind\":\"out_of_memory\",\"message\":\"CUDA out of memory (test worker)\"}'\n\
               exit 4\nfi";
    let pool = Pool::new(POOL, act);
    std::fs::write(
        pool.script_file("state"),
        pool.farm.state.display().to_string(),
    )
    .expect("state path for the worker script");
    let _daemon = pool.farm.start_daemon();
    let (rtx, a100) = (pool.uuid_of("RTX 4090"), pool.uuid_of("A100 80GB"));
    // 64*64 × 4 frames: about 66 GiB without offload (only the A100), 6 GiB with it.
    let text = pool.job(
        "oom",
        "  size: 64*64\n  infer_frames: 4\n",
        Some("liveavatar-14b"),
    );
    let state = pool.run_job("oom.yaml", &text);
    let runs = pool.runs();
    let places: Vec<(&str, &str)> = runs
        .iter()
        .map(|r| (r.cuda_visible_devices.as_str(), r.offload.as_str()))
        .collect();
    assert_eq!(places, [(a100.as_str(), "0"), (rtx.as_str(), "1")]);
    assert_eq!(state["attempts"], 2);
    let events = pool.events(&state);
    let retry = events
        .iter()
        .find(|e| e["event"] == "retry")
        .expect("retry event");
    assert_eq!(retry["fallback"], "offload", "{retry}");
    assert!(retry["reason"]
        .as_str()
        .is_some_and(|r| r.contains("out of memory")));
    // The OOM is an observation: the job needed more than the A100's 80 GiB without offload.
    let peaks: Value = serde_json::from_str(
        &std::fs::read_to_string(pool.farm.state.join("observed-peaks.json"))
            .expect("observed-peaks.json"),
    )
    .expect("JSON");
    let observation = &peaks["observations"][0];
    assert_eq!(observation["profile"], "liveavatar-14b");
    assert_eq!(observation["offload_used"], false);
    assert_eq!(observation["peak_vram_bytes"], A100_BYTES);
    // So a job that was accepted before (79 GiB without offload) is now refused at intake.
    let big = pool.job(
        "big",
        "  size: 704*384\n  infer_frames: 48\n  offload: false\n",
        Some("liveavatar-14b"),
    );
    pool.farm.drop_job("big.yaml", &big);
    let error = wait_for("big.yaml to be rejected", WAIT, || {
        pool.farm.rejection("big.yaml")
    });
    assert!(error.contains("largest GPU has 80.0 GiB"), "{error}");
}

#[test]
fn drain_and_undrain_from_the_cli_move_placement_and_survive_a_restart() {
    let pool = Pool::new(POOL, "");
    let mut daemon = pool.farm.start_daemon();
    let (rtx, a100) = (pool.uuid_of("RTX 4090"), pool.uuid_of("A100 80GB"));
    assert_eq!(pool.gpus_json()["daemon_running"], true);

    pool.gpus(&["drain", &rtx]);
    let card = pool.card(&rtx);
    assert_eq!(card["drained"], true, "{card}");
    assert_eq!(card["drain_reason"], "drained by the operator");
    // A small job would take the smallest card; with it drained, it goes to the A100.
    let first = pool.run_job(
        "first.yaml",
        &pool.job("first", "  size: 64*64\n  infer_frames: 4\n", None),
    );
    assert_eq!(first["gpu"], "A100 80GB#1");

    pool.gpus(&["undrain", &rtx]);
    assert_eq!(pool.card(&rtx)["drained"], false);
    let second = pool.run_job(
        "second.yaml",
        &pool.job("second", "  size: 64*64\n  infer_frames: 4\n", None),
    );
    assert_eq!(second["gpu"], "RTX 4090#0");
    let cards: Vec<String> = pool
        .runs()
        .into_iter()
        .map(|r| r.cuda_visible_devices)
        .collect();
    assert_eq!(cards, [a100.clone(), rtx.clone()]);

    pool.gpus(&["drain", &rtx]);
    daemon.terminate(Duration::from_secs(60));
    let offline = pool.gpus_json();
    assert_eq!(offline["daemon_running"], false, "{offline}");
    let listed = pool.farm.cli(&["gpus"]);
    assert!(String::from_utf8_lossy(&listed.stdout).contains("daemon is not running"));
    let _daemon = pool.farm.start_daemon();
    let card = pool.card(&rtx);
    assert_eq!(card["drained"], true, "a drain survives a restart: {card}");
}

/// One card, two jobs: the second waits in the queue until the first has left the card.
#[test]
fn two_jobs_never_share_a_card() {
    let one_card = "gpu_pool: { kind: simulated, gpus: [{name: \"RTX 4090\", memory_gb: 24}] }\n";
    let pool = Pool::new(
        one_card,
        "while [ -e \"$SCRIPTS/gate\" ]; do sleep 0.05; done",
    );
    let gate = pool.script_file("gate");
    std::fs::write(&gate, "").expect("close the gate");
    let _daemon = pool.farm.start_daemon();
    let tiny = |name: &str| pool.job(name, "  size: 64*64\n  infer_frames: 4\n", None);
    pool.farm.drop_job("one.yaml", &tiny("one"));
    pool.wait_phase("one.yaml", "running");
    pool.farm.drop_job("two.yaml", &tiny("two"));
    let two = wait_for("two.yaml to be accepted", WAIT, || {
        pool.farm.job_by_source("two.yaml")
    });
    let queued_at = event_ts(&pool.events(&two), "queued");
    // gpus.json is rewritten after each new job's first placement pass.
    let snapshot = pool.farm.state.join("gpus.json");
    wait_for("a placement pass after two.yaml was queued", WAIT, || {
        let text = std::fs::read_to_string(&snapshot).ok()?;
        let value: Value = serde_json::from_str(&text).ok()?;
        (value["updated_at_ms"].as_u64()? > queued_at).then_some(())
    });
    let two = pool.farm.job_by_source("two.yaml").expect("two");
    assert_eq!(
        two["phase"], "queued",
        "two must wait while one holds the card: {two}"
    );
    assert_eq!(pool.runs().len(), 1, "only the first job started");
    std::fs::remove_file(&gate).expect("open the gate");

    let one = pool.wait_phase("one.yaml", "done");
    let two = pool.wait_phase("two.yaml", "done");
    let one_left = event_ts(&pool.events(&one), "worker_exit");
    let two_started = event_ts(&pool.events(&two), "running");
    assert!(
        queued_at < one_left,
        "two was queued while one held the card"
    );
    assert!(
        two_started >= one_left,
        "two started ({two_started}) before one left ({one_left})"
    );
    let order: Vec<String> = pool.runs().into_iter().map(|r| r.job_id).collect();
    assert_eq!(
        order,
        [
            one["id"].as_str().expect("id"),
            two["id"].as_str().expect("id")
        ]
    );
}

#[test]
fn a_card_whose_jobs_keep_crashing_is_drained_and_the_job_moves_on() {
    let pool_text = "gpu_pool: { kind: simulated, failure_drain_threshold: 2, gpus: \
                     [{name: \"RTX 4090\", memory_gb: 24}, {name: \"A100 80GB\", memory_gb: 80}] }\n";
    // Crash (exit 1, no message, like a worker killed by a driver fault) on the card named in
    // $SCRIPTS/bad-card, written once the UUID is known.
    let act = "if [ \"$CUDA_VISIBLE_DEVICES\" = \"$(cat \"$SCRIPTS/bad-card\")\" ]; then \
               echo 'Xid 79: GPU has fallen off the bus (test worker)' >&2; exit 1; fi";
    let pool = Pool::new(pool_text, act);
    let rtx = pool.uuid_of("RTX 4090");
    std::fs::write(pool.script_file("bad-card"), &rtx).expect("write bad card");
    let _daemon = pool.farm.start_daemon();
    let text = pool.job("crashy", "  size: 64*64\n  infer_frames: 4\n", None);
    let state = pool.run_job("crashy.yaml", &text);
    assert_eq!(state["gpu"], "A100 80GB#1");
    assert_eq!(state["attempts"], 3);
    let cards: Vec<String> = pool
        .runs()
        .into_iter()
        .map(|r| r.cuda_visible_devices)
        .collect();
    assert_eq!(cards[..2], [rtx.clone(), rtx.clone()]);
    let card = pool.card(&rtx);
    assert_eq!(card["drained"], true, "{card}");
    assert!(
        card["drain_reason"]
            .as_str()
            .is_some_and(|r| r.contains("2 failed runs in a row")),
        "{card}"
    );
    let drained =
        std::fs::read_to_string(pool.farm.state.join("drained.json")).expect("drained.json");
    assert!(drained.contains(&rtx), "{drained}");
}

/// A job interrupted by a daemon stop goes back to its card after the restart, although best
/// fit alone would now put it on the smaller free card.
#[test]
fn resumed_job_goes_back_to_its_card_after_a_restart() {
    let pool = Pool::new(POOL, "while [ -e \"$SCRIPTS/gate\" ]; do sleep 0.05; done");
    let gate = pool.script_file("gate");
    let mut daemon = pool.farm.start_daemon();
    let (rtx, a100) = (pool.uuid_of("RTX 4090"), pool.uuid_of("A100 80GB"));
    pool.gpus(&["drain", &rtx]);
    std::fs::write(&gate, "").expect("close the gate");
    let text = pool.job("long", "  size: 64*64\n  infer_frames: 4\n", None);
    pool.farm.drop_job("long.yaml", &text);
    let running = pool.wait_phase("long.yaml", "running");
    let id = running["id"].as_str().expect("id").to_string();
    wait_for("the worker to start", WAIT, || {
        (!pool.runs().is_empty()).then_some(())
    });
    pool.gpus(&["undrain", &rtx]);
    daemon.terminate(Duration::from_secs(60));
    let leases = std::fs::read_to_string(pool.farm.state.join("leases.json")).expect("leases");
    let leases: Value = serde_json::from_str(&leases).expect("JSON");
    assert_eq!(
        leases["leases"][&id],
        a100.as_str(),
        "the stop kept the lease"
    );

    std::fs::remove_file(&gate).expect("open the gate");
    let _daemon = pool.farm.start_daemon();
    let state = pool.wait_phase("long.yaml", "done");
    assert_eq!(state["gpu"], "A100 80GB#1");
    let cards: Vec<String> = pool
        .runs()
        .into_iter()
        .map(|r| r.cuda_visible_devices)
        .collect();
    assert_eq!(cards, [a100.clone(), a100.clone()]);
    assert_eq!(
        pool.card(&rtx)["drained"],
        false,
        "the smaller card was free all along"
    );
    let events = pool.events(&state);
    assert!(
        events.iter().any(|e| e["event"] == "requeued"),
        "{events:?}"
    );
}
