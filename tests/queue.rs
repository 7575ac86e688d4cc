//! End to end: the queue index (`state/queue.index`) that lets the daemon start with a long
//! queue without reading every job. A damaged or stale index is rebuilt from the job folders
//! and loses no job; a SIGKILL in the middle of a burst leaves an index that the next start
//! brings back in line with the folders; `status` filters, and `cancel` reaches a queued job.

mod common;

use std::collections::BTreeMap;
use std::path::Path;
use std::time::Duration;

use common::{wait_for, Farm};
use jobs::index::{read_index, INDEX_FILE};

const HOLD: &str = "hold_queue: true\ngpu_pool: { kind: cpu, slots: 1 }\n";
const WAIT: Duration = Duration::from_secs(60);

/// Job id → phase, as the job folders say.
fn folder_phases(farm: &Farm) -> BTreeMap<String, String> {
    farm.job_states()
        .into_iter()
        .map(|state| {
            (
                state["id"].as_str().unwrap_or_default().to_string(),
                state["phase"].as_str().unwrap_or_default().to_string(),
            )
        })
        .collect()
}

/// Job id → phase, as the index says; `None` while it cannot be read.
fn index_phases(state_dir: &Path) -> Option<BTreeMap<String, String>> {
    let file = read_index(&state_dir.join(INDEX_FILE)).ok()?;
    Some(
        file.entries
            .into_values()
            .map(|entry| (entry.id.to_string(), entry.phase.as_str().to_string()))
            .collect(),
    )
}

/// Drops `count` jobs and waits until all are queued.
fn queue_jobs(farm: &Farm, prefix: &str, count: usize) {
    let before = farm.job_states().len();
    for n in 0..count {
        let name = format!("{prefix}-{n:03}");
        farm.drop_job(&format!("{name}.yaml"), &farm.job_yaml(&name, ""));
    }
    wait_for("the jobs to be queued", WAIT, || {
        (farm.job_states().len() == before + count).then_some(())
    });
    // The scheduler records them in the index right after intake hands them over.
    wait_for("the index to list the jobs", WAIT, || {
        (index_phases(&farm.state)? == folder_phases(farm)).then_some(())
    });
}

/// The daemon logged its `times`th line about loading the queue, and it says `wanted`.
fn wait_queue_loaded(farm: &Farm, times: usize, wanted: &str) {
    let line = wait_for("the daemon to load its queue", WAIT, || {
        let logs = farm.daemon_logs();
        let loaded: Vec<&str> = logs
            .lines()
            .filter(|line| line.contains("queue loaded"))
            .collect();
        (loaded.len() >= times).then(|| loaded[times - 1].to_string())
    });
    assert!(line.contains(wanted), "expected {wanted}: {line}");
}

#[test]
fn a_damaged_or_stale_index_is_rebuilt_and_loses_no_job() {
    let farm = Farm::new(HOLD);
    let mut daemon = farm.start_daemon();
    queue_jobs(&farm, "first", 12);
    daemon.terminate(WAIT);
    let folders = folder_phases(&farm);
    assert_eq!(folders.len(), 12);
    assert_eq!(index_phases(&farm.state).as_ref(), Some(&folders));

    // Damage in the middle of the file: the next start rebuilds it.
    let index = farm.state.join(INDEX_FILE);
    let text = std::fs::read_to_string(&index).expect("read index");
    let mut lines: Vec<String> = text.lines().map(str::to_string).collect();
    lines[5] = "{\"id\":\"2026".to_string();
    std::fs::write(&index, lines.join("\n") + "\n").expect("damage the index");
    assert!(
        index_phases(&farm.state).is_none(),
        "the index must read as damaged"
    );
    let mut daemon = farm.start_daemon();
    // Nothing is taken from the damaged file: all twelve are read from their folders.
    wait_queue_loaded(&farm, 2, "unfinished=0 unread=12");
    assert!(
        farm.daemon_logs()
            .contains("rebuilding it from the job folders"),
        "{}",
        farm.daemon_logs()
    );
    wait_for("the rebuilt index", WAIT, || {
        (index_phases(&farm.state)? == folders).then_some(())
    });
    daemon.terminate(WAIT);
    assert_eq!(index_phases(&farm.state).as_ref(), Some(&folders));

    // Stale: the index forgot four jobs and knows one that does not exist.
    let text = std::fs::read_to_string(&index).expect("read index");
    let mut lines: Vec<String> = text.lines().take(9).map(str::to_string).collect();
    let ghost = lines[1].replacen(&lines[1][7..31], "20200101-000000-000-0001", 1);
    assert!(ghost.contains("20200101-000000-000-0001"), "{ghost}");
    lines.push(ghost);
    std::fs::write(&index, lines.join("\n") + "\n").expect("make the index stale");
    assert_eq!(index_phases(&farm.state).map(|p| p.len()), Some(9));
    let daemon = farm.start_daemon();
    wait_queue_loaded(&farm, 3, "unfinished=8 unread=4");
    // The last job, which the stale index had forgotten, is in the daemon's queue: a cancel
    // reaches it.
    let last = folders.keys().last().expect("a job").clone();
    let cancel = farm.cli(&["cancel", &last, "--wait-secs", "20"]);
    let said = String::from_utf8_lossy(&cancel.stdout).to_string();
    assert!(said.contains("cancelled"), "cancel: {said} {cancel:?}");
    wait_for("the index to hold the cancel", WAIT, || {
        let phases = index_phases(&farm.state)?;
        (phases == folder_phases(&farm)).then_some(())
    });
    let phases = folder_phases(&farm);
    assert_eq!(phases.len(), 12, "no job lost");
    assert_eq!(phases[&last], "cancelled");
    drop(daemon);
}

#[test]
fn a_crash_during_a_burst_leaves_the_index_consistent_with_the_job_folders() {
    const BURST: usize = 600;
    let farm = Farm::new(HOLD);
    let mut daemon = farm.start_daemon();
    let tmp = farm.spool.join("tmp");
    std::fs::create_dir_all(&tmp).expect("spool tmp");
    for n in 0..BURST {
        // Each its own output path: intake refuses a second unfinished job for one.
        let name = format!("burst-{n:03}");
        std::fs::write(tmp.join(format!("{name}.yaml")), farm.job_yaml(&name, ""))
            .expect("write job");
    }
    for n in 0..BURST {
        let file = format!("burst-{n:03}.yaml");
        std::fs::rename(tmp.join(&file), farm.incoming().join(&file)).expect("rename");
    }
    wait_for("part of the burst to be filed", WAIT, || {
        (!farm.job_states().is_empty()).then_some(())
    });
    daemon.kill9();
    let filed = farm.job_states().len();

    let mut daemon = farm.start_daemon();
    wait_for("the whole burst to be filed", WAIT, || {
        (farm.job_states().len() == BURST).then_some(())
    });
    wait_for("the index to agree with the job folders", WAIT, || {
        let phases = index_phases(&farm.state)?;
        (phases == folder_phases(&farm)).then_some(())
    });
    // And again after a second SIGKILL, with no clean stop at all.
    daemon.kill9();
    assert_eq!(index_phases(&farm.state), Some(folder_phases(&farm)));
    assert!(
        filed < BURST,
        "all {BURST} jobs were filed before the kill; the test did not crash mid-burst"
    );
}

#[test]
fn status_filters_by_state_and_limits_the_list() {
    let farm = Farm::new(HOLD);
    let _daemon = farm.start_daemon();
    queue_jobs(&farm, "listed", 6);
    let ids: Vec<String> = folder_phases(&farm).into_keys().collect();
    let cancel = farm.cli(&["cancel", &ids[1], "--wait-secs", "20"]);
    assert!(
        String::from_utf8_lossy(&cancel.stdout).contains("cancelled"),
        "{cancel:?}"
    );

    let rows = |args: &[&str]| -> Vec<String> {
        let out = farm.cli(args);
        assert!(out.status.success(), "{args:?}: {out:?}");
        String::from_utf8_lossy(&out.stdout)
            .lines()
            .skip(1)
            .filter_map(|line| line.split_whitespace().next().map(str::to_string))
            .collect()
    };
    assert_eq!(
        rows(&["status", "--state", "cancelled"]),
        vec![ids[1].clone()]
    );
    assert_eq!(
        rows(&["status", "--state", "queued", "--limit", "3"]),
        vec![ids[0].clone(), ids[2].clone(), ids[3].clone()]
    );
    assert_eq!(rows(&["status"]).len(), 6);
    let json = farm.cli(&["status", "--json", "--state", "queued", "--limit", "2"]);
    let listed: serde_json::Value = serde_json::from_slice(&json.stdout).expect("status --json");
    let listed = listed.as_array().expect("a list");
    assert_eq!(listed.len(), 2);
    assert_eq!(
        listed[0]["source_file"], "listed-000.yaml",
        "full states in JSON"
    );
    let bad = farm.cli(&["status", "--state", "sleeping"]);
    assert_eq!(bad.status.code(), Some(2), "{bad:?}");
    assert!(String::from_utf8_lossy(&bad.stderr).contains("not a job state"));
}
