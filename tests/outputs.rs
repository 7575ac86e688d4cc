//! End to end: a job's output never replaces a file by surprise. Intake refuses a job whose
//! `output.path` another queued or running job writes, and one whose output already exists
//! unless it says `output.overwrite: true`; a file that appears while the job renders is kept
//! and the video goes beside it, under the name the events, the state and the notice give.

mod common;
#[path = "loopback/mod.rs"]
mod loopback;
#[path = "render/support.rs"]
#[allow(dead_code)]
mod support;

use std::time::Duration;

use common::{wait_for, Farm};

const HOLD: &str = "hold_queue: true\ngpu_pool: { kind: cpu, slots: 1 }\n";
const WAIT: Duration = Duration::from_secs(30);

/// A held job of `farm` named `name` that writes `output` (a file name in the output root).
fn job_to(farm: &Farm, name: &str, output: &str, extra_output_lines: &str) -> String {
    let text = farm.job_yaml(name, "").replace(
        &format!("  path: {}/{name}.mp4\n", farm.out.display()),
        &format!(
            "  path: {}/{output}\n{extra_output_lines}",
            farm.out.display()
        ),
    );
    assert!(
        text.contains(output),
        "the output line was replaced: {text}"
    );
    text
}

fn wait_rejected(farm: &Farm, file: &str) -> String {
    wait_for(&format!("{file} to be rejected"), WAIT, || {
        if farm.job_by_source(file).is_some() {
            panic!("{file} was accepted");
        }
        farm.rejection(file)
    })
}

#[test]
fn intake_refuses_a_second_job_for_an_output_and_an_existing_file_unless_told_to_overwrite() {
    let farm = Farm::new(HOLD);
    let _daemon = farm.start_daemon();

    farm.drop_job("first.yaml", &job_to(&farm, "first", "shared.mp4", ""));
    let first = wait_for("first job queued", WAIT, || {
        farm.job_by_source("first.yaml")
    });
    let first_id = first["id"].as_str().expect("id").to_string();
    farm.drop_job("second.yaml", &job_to(&farm, "second", "shared.mp4", ""));
    let error = wait_rejected(&farm, "second.yaml");
    assert!(
        error.contains(&first_id) && error.contains("shared.mp4"),
        "the error names the other job and the path:\n{error}"
    );

    let existing = farm.out.join("existing.mp4");
    std::fs::write(&existing, b"someone's video").expect("write existing output");
    farm.drop_job("exists.yaml", &job_to(&farm, "exists", "existing.mp4", ""));
    let error = wait_rejected(&farm, "exists.yaml");
    assert!(
        error.contains("already exists") && error.contains("overwrite: true"),
        "{error}"
    );
    assert_eq!(std::fs::read(&existing).expect("kept"), b"someone's video");
    farm.drop_job(
        "replace.yaml",
        &job_to(&farm, "replace", "existing.mp4", "  overwrite: true\n"),
    );
    let replace = wait_for("overwrite job queued", WAIT, || {
        farm.job_by_source("replace.yaml")
    });
    let id = replace["id"].as_str().expect("id");
    let resolved =
        std::fs::read_to_string(farm.jobs_dir().join(id).join("job.yaml")).expect("job.yaml");
    assert!(resolved.contains("overwrite: true"), "{resolved}");

    // Once the first job is cancelled, its output path is free again.
    let cancel = farm.cli(&["cancel", &first_id]);
    assert!(cancel.status.success(), "{cancel:?}");
    wait_for("first job cancelled", WAIT, || {
        farm.job_by_source("first.yaml")
            .filter(|state| state["phase"] == "cancelled")
    });
    farm.drop_job("third.yaml", &job_to(&farm, "third", "shared.mp4", ""));
    wait_for("a job for the freed output", WAIT, || {
        farm.job_by_source("third.yaml")
    });
}

#[test]
fn a_file_that_appears_during_the_render_is_kept_and_the_video_goes_beside_it() {
    let hook = loopback::start_http();
    let farm = Farm::new(support::POOL);
    let _daemon = farm.start_daemon();
    let slow = "  size: 128*128\n  infer_frames: 8\n  sample_steps: 2\n  num_clip: 24\n";
    let text = format!(
        "{}notify:\n  on: [done]\n  webhook: [{{ url: \"http://127.0.0.1:{}/hook\" }}]\n",
        support::job(&farm, "taken", slow),
        hook.port
    );
    farm.drop_job("taken.yaml", &text);
    support::wait_event(&farm, "taken.yaml", "the first clip", |event| {
        event["event"] == "clip_done"
    });
    let wanted = farm.out.join("taken.mp4");
    std::fs::write(&wanted, b"placed by hand mid-render").expect("write the surprise file");

    let state = support::wait_finished(&farm, "taken.yaml");
    assert_eq!(state["phase"], "done", "{state}");
    let id = state["id"].as_str().expect("id");
    assert_eq!(
        std::fs::read(&wanted).expect("kept"),
        b"placed by hand mid-render",
        "the file that appeared must be kept"
    );
    let beside = farm.out.join(format!("taken.{id}.mp4"));
    let probe = support::probe(&beside);
    assert_eq!(probe.video_frames, 24 * 8, "{probe:?}");
    assert_eq!(state["output"], beside.display().to_string());

    let events = support::events(&farm, &state);
    let renamed = events
        .iter()
        .find(|event| event["event"] == "output_renamed")
        .unwrap_or_else(|| panic!("a warning event: {events:?}"));
    assert_eq!(renamed["wanted"], wanted.display().to_string());
    assert_eq!(renamed["written"], beside.display().to_string());

    let request = hook
        .requests
        .recv_timeout(Duration::from_secs(60))
        .expect("the done notice");
    let payload: serde_json::Value = serde_json::from_slice(&request.body).expect("JSON");
    assert_eq!(payload["event"], "done");
    assert_eq!(payload["output"], beside.display().to_string());
    let outputs: Vec<_> = std::fs::read_dir(&farm.out)
        .expect("out dir")
        .flatten()
        .map(|entry| entry.file_name())
        .collect();
    assert_eq!(
        outputs.len(),
        2,
        "the kept file and the video only: {outputs:?}"
    );
}
