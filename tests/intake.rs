//! End to end: the real daemon takes job files from its spool, queues the good ones and rejects
//! the bad ones with compiler-style errors, without losing or doubling a file.

mod common;

use std::io::Write;
use std::time::Duration;

use common::{wait_for, Farm};

/// Jobs stay queued so these tests look at intake alone.
const HOLD: &str = "hold_queue: true\ngpu_pool: { kind: cpu, slots: 1 }\n";
const WAIT: Duration = Duration::from_secs(30);

#[test]
fn good_job_is_queued_with_resolved_job_file() {
    let farm = Farm::new(HOLD);
    let _daemon = farm.start_daemon();
    farm.drop_job("first.yaml", &farm.job_yaml("first", ""));
    let state = wait_for("first.yaml to be queued", WAIT, || {
        farm.job_by_source("first.yaml")
    });
    assert_eq!(state["phase"], "queued");
    assert_eq!(state["name"], "first");
    let id = state["id"].as_str().expect("id is a string");
    let job_dir = farm.jobs_dir().join(id);
    let resolved = std::fs::read_to_string(job_dir.join("job.yaml")).expect("job.yaml");
    // The resolved file carries the defaults the user did not write.
    assert!(resolved.contains("sample_steps: 1"), "{resolved}");
    assert!(resolved.contains("online_decode: true"), "{resolved}");
    let events = std::fs::read_to_string(job_dir.join("events.jsonl")).expect("events");
    assert!(events.contains("\"event\":\"queued\""), "{events}");
    assert!(!farm.incoming().join("first.yaml").exists());
}

/// Each class of bad input, the line the error must point at, and a word the message must hold.
fn bad_inputs(farm: &Farm) -> Vec<(&'static str, String, Option<usize>, &'static str)> {
    let good = farm.job_yaml("x", "");
    vec![
        (
            "unknown-key.yaml",
            good.replace("  sample_steps: 1\n", "  sample_steps: 1\n  sampel_shift: 3\n"),
            Some(10),
            "sampel_shift",
        ),
        (
            "bad-size.yaml",
            good.replace("size: 64*64", "size: 700*300"),
            Some(7),
            "16",
        ),
        (
            "frames-range.yaml",
            good.replace("infer_frames: 4", "infer_frames: 300"),
            Some(8),
            "infer_frames",
        ),
        (
            "outside-root.yaml",
            good.replace(&format!("{}/portrait.png", farm.media.display()), "/etc/passwd"),
            Some(3),
            "allowed",
        ),
        (
            "relative.yaml",
            good.replace(&format!("{}/hello.wav", farm.media.display()), "hello.wav"),
            Some(4),
            "absolute",
        ),
        (
            "syntax.yaml",
            good.replace("render:\n", "render:\n  size: [\n"),
            None,
            "error",
        ),
        (
            "duplicate.yaml",
            good.replace("  sample_steps: 1\n", "  sample_steps: 1\n  sample_steps: 2\n"),
            Some(10),
            "duplicate",
        ),
        (
            "alias-bomb.yaml",
            "a: &a [x, x, x, x, x, x, x, x, x]\nb: &b [*a, *a, *a, *a, *a, *a, *a, *a, *a]\nc: &c [*b, *b, *b, *b, *b, *b, *b, *b, *b]\nd: &d [*c, *c, *c, *c, *c, *c, *c, *c, *c]\ne: [*d, *d, *d, *d, *d, *d, *d, *d, *d]\n".to_string(),
            None,
            "alias",
        ),
        ("empty.yaml", String::new(), None, "empty"),
        (
            "dotdot.yaml",
            good.replace(
                &format!("{}/portrait.png", farm.media.display()),
                &format!("{}/../../../../etc/hostname", farm.media.display()),
            ),
            Some(3),
            "allowed",
        ),
        (
            "unknown-template.yaml",
            format!("{good}template: no-such-preset\n"),
            Some(12),
            "lowmem-24g",
        ),
        (
            "bad-email.yaml",
            format!("{good}notify:\n  email: [not-an-address]\n"),
            Some(13),
            "not-an-address",
        ),
        (
            "bad-webhook.yaml",
            format!("{good}notify:\n  webhook: [{{ url: \"ftp://example.com/x\" }}]\n"),
            Some(13),
            "http",
        ),
    ]
}

#[test]
fn each_class_of_bad_input_is_rejected_with_its_line_and_the_daemon_keeps_running() {
    let farm = Farm::new(HOLD);
    let mut daemon = farm.start_daemon();
    let cases = bad_inputs(&farm);
    for (file, text, _, _) in &cases {
        farm.drop_job(file, text);
    }
    // A non-UTF-8 byte on line 1, column 7 ("name: x").
    let mut bytes = farm.job_yaml("x", "").into_bytes();
    assert_eq!(bytes[6], b'x');
    bytes[6] = 0xff;
    let tmp = farm.spool.join("tmp").join("binary.partial");
    std::fs::write(&tmp, &bytes).expect("write");
    std::fs::rename(&tmp, farm.incoming().join("binary.yaml")).expect("rename");
    // Larger than 1 MiB.
    let mut huge = farm.job_yaml("x", "");
    huge.push_str(&format!("# {}\n", "x".repeat(1 << 20)));
    farm.drop_job("huge.yaml", &huge);

    for (file, _, line, needle) in &cases {
        // The `.error` is written first (so a crash cannot leave a rejected file without
        // one), the file is moved beside it just after: wait for both.
        let report = wait_for(&format!("{file} to be rejected"), WAIT, || {
            let report = farm.rejection(file)?;
            farm.spool
                .join("rejected")
                .join(file)
                .exists()
                .then_some(report)
        });
        let incoming_path = farm.incoming().join(file);
        assert!(
            report.contains(&incoming_path.display().to_string()),
            "{file}: error must name the file:\n{report}"
        );
        if let Some(line) = line {
            let at = format!("{}:{line}:", incoming_path.display());
            assert!(
                report.contains(&at),
                "{file}: expected `{at}` in:\n{report}"
            );
            assert!(
                report.contains('^'),
                "{file}: expected a caret under the line:\n{report}"
            );
        }
        assert!(
            report.to_lowercase().contains(&needle.to_lowercase()),
            "{file}: expected `{needle}` in:\n{report}"
        );
        assert!(
            farm.spool.join("rejected").join(file).exists(),
            "{file} moved aside"
        );
    }
    let report = wait_for("binary.yaml rejection", WAIT, || {
        farm.rejection("binary.yaml")
    });
    assert!(report.contains(":1:7"), "non-UTF-8 position:\n{report}");
    let report = wait_for("huge.yaml rejection", WAIT, || farm.rejection("huge.yaml"));
    assert!(report.contains("bytes"), "{report}");

    // None of them became a job, and the daemon still takes good work.
    assert!(farm.job_states().is_empty(), "no bad file may become a job");
    assert!(daemon.is_running());
    farm.drop_job("after.yaml", &farm.job_yaml("after", ""));
    wait_for("a good job after the bad ones", WAIT, || {
        farm.job_by_source("after.yaml")
    });
}

#[test]
fn file_written_slowly_in_place_is_read_only_once_complete() {
    let farm = Farm::new(HOLD);
    let _daemon = farm.start_daemon();
    let text = farm.job_yaml("slow", "");
    let (head, tail) = text.split_at(text.len() / 2);
    let path = farm.incoming().join("slow.yaml");
    let mut file = std::fs::File::create(&path).expect("create in incoming");
    file.write_all(head.as_bytes()).expect("first chunk");
    file.flush().expect("flush");
    // A marker job dropped after the first chunk: once it is queued, intake has seen every
    // event before it, including the half-written file.
    farm.drop_job("marker.yaml", &farm.job_yaml("marker", ""));
    wait_for("marker job", WAIT, || farm.job_by_source("marker.yaml"));
    assert!(path.exists(), "a half-written file must stay in incoming/");
    assert!(
        farm.rejection("slow.yaml").is_none(),
        "a half-written file must not be judged"
    );
    file.write_all(tail.as_bytes()).expect("second chunk");
    drop(file);
    let state = wait_for("slow job after close", WAIT, || {
        farm.job_by_source("slow.yaml")
    });
    assert_eq!(state["name"], "slow");
}

#[test]
fn files_dropped_while_the_daemon_is_down_are_picked_up_at_start() {
    let farm = Farm::new(HOLD);
    let mut daemon = farm.start_daemon();
    let status = daemon.terminate(WAIT);
    assert!(
        status.success(),
        "daemon must exit 0 on SIGTERM, got {status}"
    );
    for n in 0..5 {
        farm.drop_job(
            &format!("offline-{n}.yaml"),
            &farm.job_yaml(&format!("offline-{n}"), ""),
        );
    }
    let _daemon = farm.start_daemon();
    wait_for("all five offline drops queued", WAIT, || {
        (farm.job_states().len() == 5).then_some(())
    });
}

#[test]
fn kill_9_during_a_burst_loses_and_duplicates_nothing() {
    const BURST: usize = 2000;
    let farm = Farm::new(HOLD);
    let mut daemon = farm.start_daemon();
    let tmp = farm.spool.join("tmp");
    let texts: Vec<(String, String)> = (0..BURST)
        .map(|n| {
            let name = format!("burst-{n:05}");
            // Every tenth file is invalid, so rejections are part of the accounting.
            let text = if n % 10 == 0 {
                farm.job_yaml(&name, "")
                    .replace("size: 64*64", "size: 65*64")
            } else {
                farm.job_yaml(&name, "")
            };
            (format!("{name}.yaml"), text)
        })
        .collect();
    for (file, text) in &texts {
        std::fs::write(tmp.join(file), text).expect("write burst file");
    }
    for (file, _) in &texts {
        std::fs::rename(tmp.join(file), farm.incoming().join(file)).expect("rename burst file");
    }
    // Kill it mid-burst: once some, but not all, are filed.
    wait_for("some of the burst to be filed", WAIT, || {
        (farm.job_states().len() >= 50).then_some(())
    });
    daemon.kill9();
    let filed_at_kill = farm.job_states().len();
    let _daemon = farm.start_daemon();
    let expected_jobs = BURST - BURST / 10;
    wait_for(
        "the whole burst to be accounted for",
        Duration::from_secs(120),
        || {
            let rejected = std::fs::read_dir(farm.spool.join("rejected"))
                .map(|entries| {
                    entries
                        .flatten()
                        .filter(|e| e.path().extension().is_some_and(|x| x == "error"))
                        .count()
                })
                .unwrap_or(0);
            (farm.job_states().len() >= expected_jobs && rejected >= BURST / 10).then_some(())
        },
    );
    let states = farm.job_states();
    let mut sources: Vec<String> = states
        .iter()
        .map(|s| s["source_file"].as_str().expect("source_file").to_string())
        .collect();
    sources.sort();
    let before = sources.len();
    sources.dedup();
    assert_eq!(before, sources.len(), "a file became two jobs");
    assert_eq!(
        sources.len(),
        expected_jobs,
        "jobs lost (filed before kill: {filed_at_kill})"
    );
    for (file, _) in texts.iter().step_by(10) {
        assert!(farm.rejection(file).is_some(), "{file} should be rejected");
        assert!(
            farm.job_by_source(file).is_none(),
            "{file} must not be a job"
        );
    }
    // The running daemon's listing marker (`.reelspool-barrier-N`) lives for the few
    // milliseconds of a rescan, which a late queue overflow can start: it is not a job file.
    let leftovers: Vec<_> = std::fs::read_dir(farm.incoming())
        .expect("incoming")
        .chain(std::fs::read_dir(farm.spool.join("processing")).expect("processing"))
        .flatten()
        .map(|e| e.file_name())
        .filter(|name| !name.to_string_lossy().starts_with(".reelspool-barrier-"))
        .collect();
    assert!(leftovers.is_empty(), "files left behind: {leftovers:?}");
}

#[test]
fn cli_submit_status_and_cancel_work_against_the_daemon() {
    let farm = Farm::new(HOLD);
    let _daemon = farm.start_daemon();
    let job_file = farm.root.path().join("cli-job.yaml");
    std::fs::write(&job_file, farm.job_yaml("cli-job", "")).expect("write job");
    let submit = farm.cli(&["submit", job_file.to_str().expect("utf-8 path")]);
    assert!(
        submit.status.success(),
        "submit: {}",
        String::from_utf8_lossy(&submit.stderr)
    );
    let written = String::from_utf8_lossy(&submit.stdout).trim().to_string();
    assert!(
        written.ends_with("incoming/cli-job.yaml"),
        "submit prints the file: {written}"
    );
    let state = wait_for("submitted job queued", WAIT, || {
        farm.job_by_source("cli-job.yaml")
    });
    let id = state["id"].as_str().expect("id").to_string();

    let status = farm.cli(&["status", "--json"]);
    assert!(status.status.success());
    let listed: serde_json::Value = serde_json::from_slice(&status.stdout).expect("status --json");
    assert_eq!(listed[0]["id"], id.as_str());
    let table = farm.cli(&["status"]);
    let table = String::from_utf8_lossy(&table.stdout);
    assert!(table.contains(&id) && table.contains("queued"), "{table}");

    let cancel = farm.cli(&["cancel", &id]);
    assert!(
        cancel.status.success(),
        "cancel: {}",
        String::from_utf8_lossy(&cancel.stderr)
    );
    let state = wait_for("job cancelled", WAIT, || {
        farm.job_by_source("cli-job.yaml")
            .filter(|s| s["phase"] == "cancelled")
    });
    assert_eq!(state["id"], id.as_str());

    let invalid = farm.root.path().join("invalid.yaml");
    std::fs::write(&invalid, "name: [\n").expect("write invalid");
    let validate = farm.cli(&["validate", invalid.to_str().expect("utf-8 path")]);
    assert_eq!(
        validate.status.code(),
        Some(1),
        "validate exits 1 on invalid files"
    );
    let usage = farm.cli(&["status", "--no-such-flag"]);
    assert_eq!(usage.status.code(), Some(2), "usage errors exit 2");
}
