//! End to end, warm workers (README "Warm workers"): jobs of one model on one card run in one
//! worker process that loads the model once; a SIGKILL of that process costs only its current
//! job an attempt; a job of another model gets a fresh process. Real daemon, real workers, real
//! signals; the pids come from the workers' own `started` messages and are checked in /proc.

mod common;
#[path = "render/support.rs"]
#[allow(dead_code)]
mod support;

use common::{wait_for, Farm};
use support::*;

/// The `started`/`resumed` events of a job, in order.
fn starts(evs: &[serde_json::Value]) -> Vec<&serde_json::Value> {
    evs.iter()
        .filter(|e| e["event"] == "started" || e["event"] == "resumed")
        .collect()
}

fn pid_of(start: &serde_json::Value) -> u64 {
    start["worker_pid"]
        .as_u64()
        .unwrap_or_else(|| panic!("the start names its worker's pid: {start}"))
}

fn worker_log(farm: &Farm, state: &serde_json::Value) -> String {
    std::fs::read_to_string(job_dir(farm, state).join("worker.log")).unwrap_or_default()
}

/// Three queued jobs of `builtin:tiny` on one slot: one worker process serves all three, only
/// the first loads the model, each job's log holds its own lines only, and `reelspool gpus`
/// shows the idle worker's model on the slot afterwards.
#[test]
fn three_jobs_of_one_model_share_one_worker_that_loads_the_model_once() {
    let farm = Farm::new(POOL);
    let _daemon = farm.start_daemon();
    for name in ["first", "second", "third"] {
        farm.drop_job(&format!("{name}.yaml"), &job(&farm, name, "  num_clip: 2"));
    }
    let states: Vec<serde_json::Value> = ["first", "second", "third"]
        .iter()
        .map(|name| wait_finished(&farm, &format!("{name}.yaml")))
        .collect();
    let mut runs = Vec::new();
    for state in &states {
        assert_eq!(state["phase"], "done", "{state}");
        assert_eq!(state["attempts"], 1, "{state}");
        let evs = events(&farm, state);
        let starts = starts(&evs);
        assert_eq!(starts.len(), 1, "{evs:?}");
        runs.push((
            starts[0]["ts_ms"].as_u64().expect("timestamp"),
            pid_of(starts[0]),
            starts[0]["model_loaded"].as_bool(),
            worker_log(&farm, state),
        ));
    }
    runs.sort_by_key(|run| run.0);
    let pid = runs[0].1;
    assert!(
        runs.iter().all(|run| run.1 == pid),
        "one worker for all three: {:?}",
        runs.iter().map(|run| run.1).collect::<Vec<_>>()
    );
    let loaded: Vec<Option<bool>> = runs.iter().map(|run| run.2).collect();
    assert_eq!(loaded, [Some(true), Some(false), Some(false)]);
    // Each log has its own job's lines: the load in the first, the reuse in the others.
    for (n, run) in runs.iter().enumerate() {
        let log = &run.3;
        let loads = log.matches("model loaded").count();
        let reuses = log.matches("nothing to load").count();
        let renders = log.matches("rendering").count();
        assert_eq!(
            (loads, reuses, renders),
            if n == 0 { (1, 0, 1) } else { (0, 1, 1) },
            "job {n}'s log:\n{log}"
        );
    }
    // The worker stays up between jobs, holding the model, and the pool says so.
    assert!(
        std::path::Path::new(&format!("/proc/{pid}")).exists(),
        "the warm worker {pid} waits for the next job"
    );
    wait_for("gpus to show the idle worker's model", RUN, || {
        let out = farm.cli(&["gpus", "--json"]);
        let report: serde_json::Value = serde_json::from_slice(&out.stdout).ok()?;
        (report["cards"][0]["worker_model"] == "builtin:tiny").then_some(())
    });
    // Workers were pointed at the kernel cache under the state dir, keyed by the library
    // versions and the card model (a CPU build compiles nothing into it).
    let keyed = farm
        .state
        .join("kernel-cache")
        .join("burn-0.21.0-cubecl-0.10.0");
    let cards: Vec<String> = std::fs::read_dir(&keyed)
        .unwrap_or_else(|err| panic!("{}: {err}", keyed.display()))
        .flatten()
        .map(|entry| entry.file_name().to_string_lossy().into_owned())
        .collect();
    assert_eq!(cards.len(), 1, "one folder for the one slot: {cards:?}");
    let table = String::from_utf8_lossy(&farm.cli(&["gpus"]).stdout).into_owned();
    assert!(
        table.contains("WORKER MODEL") && table.contains("builtin:tiny"),
        "{table}"
    );
}

/// The warm worker is SIGKILLed in the middle of the second of three jobs: that job loses one
/// attempt and resumes from its checkpoint on a fresh worker; the first and third jobs are
/// untouched, and the third runs on the fresh worker without loading the model again.
#[test]
fn a_killed_warm_worker_costs_only_its_current_job_an_attempt() {
    let farm = Farm::new(POOL);
    let _daemon = farm.start_daemon();
    // One after another: intake does not keep the order of files dropped together.
    farm.drop_job("before.yaml", &job(&farm, "before", "  num_clip: 2"));
    wait_finished(&farm, "before.yaml");
    // Long enough (hundreds of clips of tens of milliseconds) to be killed in the middle.
    farm.drop_job("victim.yaml", &job(&farm, "victim", "  num_clip: 200"));
    let clip_done = wait_event(&farm, "victim.yaml", "victim's third clip", |e| {
        e["event"] == "clip_done" && e["index"] == 2
    });
    assert_eq!(clip_done["index"], 2);
    farm.drop_job("after.yaml", &job(&farm, "after", "  num_clip: 2"));
    wait_for("the third job to be queued", RUN, || {
        farm.job_by_source("after.yaml")
            .filter(|state| state["phase"] == "queued")
    });
    let victim = farm.job_by_source("victim.yaml").expect("victim is known");
    let evs = events(&farm, &victim);
    let killed = pid_of(starts(&evs)[0]);
    // SAFETY: kill() on the pid the worker reported for itself; it runs the victim's job.
    unsafe { libc::kill(killed as i32, libc::SIGKILL) };

    let before = wait_finished(&farm, "before.yaml");
    let victim = wait_finished(&farm, "victim.yaml");
    let after = wait_finished(&farm, "after.yaml");
    for state in [&before, &victim, &after] {
        assert_eq!(state["phase"], "done", "{state}");
    }
    assert_eq!(before["attempts"], 1, "{before}");
    assert_eq!(after["attempts"], 1, "{after}");
    assert_eq!(victim["attempts"], 2, "{victim}");

    let before_evs = events(&farm, &before);
    assert_eq!(
        pid_of(starts(&before_evs)[0]),
        killed,
        "the first job ran on the same warm worker"
    );
    let victim_evs = events(&farm, &victim);
    let exits: Vec<&serde_json::Value> = victim_evs
        .iter()
        .filter(|e| e["event"] == "worker_exit")
        .collect();
    assert_eq!(exits.len(), 2, "{victim_evs:?}");
    let first_end = exits[0]["end"].as_str().unwrap_or_default();
    assert!(first_end.contains("SIGKILL (9)"), "{first_end}");
    assert_eq!(exits[0]["progressed"], true, "{}", exits[0]);
    let victim_starts = starts(&victim_evs);
    assert_eq!(victim_starts.len(), 2, "{victim_evs:?}");
    assert_eq!(victim_starts[1]["event"], "resumed", "{}", victim_starts[1]);
    assert!(
        victim_starts[1]["next_clip"].as_u64() >= Some(3),
        "resumed from its checkpoint: {}",
        victim_starts[1]
    );
    let fresh = pid_of(victim_starts[1]);
    assert_ne!(fresh, killed, "a fresh worker replaced the killed one");
    // The re-queued victim and the third job both run on the fresh worker, in either order
    // (the victim goes back in line behind jobs queued before its retry); the model is loaded
    // for the first of them only.
    let after_evs = events(&farm, &after);
    let after_start = starts(&after_evs)[0];
    assert_eq!(
        pid_of(after_start),
        fresh,
        "{after_start}\n{}",
        farm.daemon_logs()
    );
    let mut on_fresh = [victim_starts[1], after_start];
    on_fresh.sort_by_key(|start| start["ts_ms"].as_u64());
    assert_eq!(
        on_fresh.map(|start| start["model_loaded"].clone()),
        [serde_json::json!(true), serde_json::json!(false)],
        "{on_fresh:?}"
    );
    assert_eq!(
        std::fs::read_dir(&farm.out)
            .expect("output dir")
            .flatten()
            .count(),
        3,
        "one video per job"
    );
}

/// A job of another model on the same slot does not reuse the worker that holds
/// `builtin:tiny`: a fresh worker loads its model.
#[test]
fn a_job_of_another_model_gets_a_fresh_worker() {
    let farm = Farm::new(POOL);
    let _daemon = farm.start_daemon();
    farm.drop_job("tiny.yaml", &job(&farm, "tiny", "  num_clip: 2"));
    let tiny = wait_finished(&farm, "tiny.yaml");
    assert_eq!(tiny["phase"], "done", "{tiny}");
    // A second model of the same architecture: the built-in weights, copied into a checkpoint
    // folder of their own.
    let cached = farm.state.join("models").join("builtin-tiny");
    let other = farm.media.join("other-model");
    std::fs::create_dir_all(&other).expect("model folder");
    for entry in std::fs::read_dir(&cached).expect("cached built-in weights") {
        let entry = entry.expect("entry");
        std::fs::copy(entry.path(), other.join(entry.file_name())).expect("copy weights");
    }
    let text = job(&farm, "other", "  num_clip: 2").replace(
        "output:",
        &format!("engine:\n  model: {}\noutput:", other.display()),
    );
    farm.drop_job("other.yaml", &text);
    let other_state = wait_finished(&farm, "other.yaml");
    assert_eq!(other_state["phase"], "done", "{other_state}");

    let tiny_pid = pid_of(starts(&events(&farm, &tiny))[0]);
    let other_evs = events(&farm, &other_state);
    let other_start = starts(&other_evs)[0];
    assert_ne!(pid_of(other_start), tiny_pid, "{other_start}");
    assert_eq!(other_start["model_loaded"], true, "{other_start}");
    // The worker holding the other model was let go before the new one started.
    wait_for("the builtin:tiny worker to exit", RUN, || {
        (!std::path::Path::new(&format!("/proc/{tiny_pid}")).exists()
            || std::fs::read_to_string(format!("/proc/{tiny_pid}/status"))
                .is_ok_and(|status| status.contains("State:\tZ")))
        .then_some(())
    });
}

/// With `worker.idle_unload_secs: 1` the worker exits a second after its job and the slot shows
/// no worker any more.
#[test]
fn an_idle_worker_exits_after_the_idle_limit() {
    let farm = Farm::new(&format!("{POOL}worker: {{ idle_unload_secs: 1 }}\n"));
    let _daemon = farm.start_daemon();
    farm.drop_job("one.yaml", &job(&farm, "one", "  num_clip: 2"));
    let state = wait_finished(&farm, "one.yaml");
    assert_eq!(state["phase"], "done", "{state}");
    let pid = pid_of(starts(&events(&farm, &state))[0]);
    wait_for("the idle worker to exit", RUN, || {
        std::fs::read_to_string(format!("/proc/{pid}/status"))
            .map_or(true, |status| status.contains("State:\tZ"))
            .then_some(())
    });
    wait_for("gpus to show no worker on the slot", RUN, || {
        let out = farm.cli(&["gpus", "--json"]);
        let report: serde_json::Value = serde_json::from_slice(&out.stdout).ok()?;
        let card = &report["cards"][0];
        (card.is_object() && card.get("worker_model").is_none()).then_some(())
    });
}
