use super::*;
use crate::spec::{Codec, EngineSpec, Inputs, NotifySpec, OutputSpec, RenderSettings, RetryPolicy};
use crate::state::{JobId, Phase};
use serde_json::json;

fn spec() -> JobSpec {
    JobSpec {
        name: "interview-042".to_string(),
        template: None,
        priority: 3,
        inputs: Inputs {
            image: PathBuf::from("/data/a.png"),
            audio: PathBuf::from("/data/a.wav"),
            prompt: "A presenter: \"hello\" # not a comment".to_string(),
        },
        render: RenderSettings::default(),
        engine: EngineSpec::default(),
        output: OutputSpec {
            path: PathBuf::from("/out/a.mp4"),
            codec: Codec::Hevc,
            crf: 20,
            overwrite: true,
        },
        notify: NotifySpec::default(),
        retry: RetryPolicy::default(),
    }
}

fn new_job(jobs: &Path, id: &str) -> (JobDir, JobState) {
    let id: JobId = id.parse().expect("test ids are valid");
    let dir = JobDir::new(jobs.join(id.as_str()));
    dir.create().expect("create job dir");
    let state = JobState::queued(id, &spec(), "a.yaml", 1_000);
    dir.save_state(&state).expect("save state");
    (dir, state)
}

#[test]
fn state_round_trips_through_disk() {
    let tmp = tempfile::tempdir().expect("temp dir");
    let (dir, mut state) = new_job(tmp.path(), "20261123-150102-123-0001");
    state.phase = Phase::Running;
    state.gpu = Some("GPU-1234".to_string());
    state.clips_total = Some(12);
    state.eta_secs = Some(42.5);
    state
        .details
        .insert("clip_secs".to_string(), json!([1.5, 2.0]));
    dir.save_state(&state).expect("save");
    assert_eq!(dir.load_state().expect("load"), state);
}

#[test]
fn spec_round_trips_through_job_yaml() {
    let tmp = tempfile::tempdir().expect("temp dir");
    let (dir, _) = new_job(tmp.path(), "j1");
    dir.save_spec(&spec()).expect("save spec");
    assert_eq!(dir.load_spec().expect("load spec"), spec());
}

#[test]
fn damaged_state_names_its_file() {
    let tmp = tempfile::tempdir().expect("temp dir");
    let (dir, _) = new_job(tmp.path(), "j1");
    fs::write(dir.state_json(), b"{\"id\": ").expect("write");
    match dir.load_state() {
        Err(JobsError::CorruptState { path, .. }) => assert_eq!(path, dir.state_json()),
        other => panic!("expected CorruptState, got {other:?}"),
    }
}

#[test]
fn creating_an_existing_job_dir_fails() {
    let tmp = tempfile::tempdir().expect("temp dir");
    let (dir, _) = new_job(tmp.path(), "j1");
    assert!(dir.create().is_err());
}

#[test]
fn events_append_in_order() {
    let tmp = tempfile::tempdir().expect("temp dir");
    let (dir, _) = new_job(tmp.path(), "j1");
    assert!(dir.read_events().expect("no file yet").is_empty());
    let first = JobEvent::new("started").with("gpu", "GPU-1");
    let second = JobEvent::new("clip_done")
        .with("index", 0)
        .with("secs", 1.25);
    dir.append_event(&first).expect("append");
    dir.append_event(&second).expect("append");
    assert_eq!(dir.read_events().expect("read"), vec![first, second]);
}

#[test]
fn torn_last_line_is_skipped_then_cut_before_next_append() {
    let tmp = tempfile::tempdir().expect("temp dir");
    let (dir, _) = new_job(tmp.path(), "j1");
    let first = JobEvent::new("started");
    dir.append_event(&first).expect("append");
    let mut file = OpenOptions::new()
        .append(true)
        .open(dir.events_jsonl())
        .expect("open events");
    file.write_all(b"{\"ts_ms\":5,\"event\":\"clip_d")
        .expect("simulate a torn write");
    drop(file);
    assert_eq!(
        dir.read_events().expect("torn tail tolerated"),
        vec![first.clone()]
    );

    let next = JobEvent::new("finished");
    dir.append_event(&next).expect("append after tear");
    assert_eq!(dir.read_events().expect("read"), vec![first, next]);
    let text = fs::read_to_string(dir.events_jsonl()).expect("read raw");
    assert!(
        !text.contains("clip_d"),
        "torn fragment must be gone: {text}"
    );
}

#[test]
fn torn_line_in_a_file_without_any_line_break_is_cut_whole() {
    let tmp = tempfile::tempdir().expect("temp dir");
    let (dir, _) = new_job(tmp.path(), "j1");
    fs::write(dir.events_jsonl(), b"{\"ts_ms\":1,\"ev").expect("write");
    let event = JobEvent::new("queued");
    dir.append_event(&event).expect("append");
    assert_eq!(dir.read_events().expect("read"), vec![event]);
}

#[test]
fn damaged_line_before_the_end_is_an_error() {
    let tmp = tempfile::tempdir().expect("temp dir");
    let (dir, _) = new_job(tmp.path(), "j1");
    fs::write(
        dir.events_jsonl(),
        b"{\"ts_ms\":1,\"event\":\"a\"}\nnot json\n{\"ts_ms\":2,\"event\":\"b\"}\n",
    )
    .expect("write");
    match dir.read_events() {
        Err(JobsError::CorruptEvents { line, .. }) => assert_eq!(line, 2),
        other => panic!("expected CorruptEvents, got {other:?}"),
    }
}

#[test]
fn list_jobs_sorts_by_id_and_skips_hidden_and_unfinished() {
    let tmp = tempfile::tempdir().expect("temp dir");
    let jobs = tmp.path();
    new_job(jobs, "20261123-150102-123-0002");
    new_job(jobs, "20261123-150102-123-0001");
    new_job(jobs, "20261122-000000-000-0009");
    fs::create_dir(jobs.join(".incoming-tmp")).expect("hidden dir");
    fs::write(jobs.join(".incoming-tmp/state.json"), b"garbage").expect("write");
    fs::create_dir(jobs.join("20261124-000000-000-0001")).expect("no state yet");
    let ids: Vec<String> = list_jobs(jobs)
        .expect("list")
        .into_iter()
        .map(|s| s.id.to_string())
        .collect();
    assert_eq!(
        ids,
        vec![
            "20261122-000000-000-0009",
            "20261123-150102-123-0001",
            "20261123-150102-123-0002"
        ]
    );
}

#[test]
fn scan_jobs_reports_unreadable_state() {
    let tmp = tempfile::tempdir().expect("temp dir");
    let (good, _) = new_job(tmp.path(), "a1");
    let (bad, _) = new_job(tmp.path(), "a2");
    fs::write(bad.state_json(), b"[]").expect("write");
    let listing = scan_jobs(tmp.path()).expect("scan");
    assert_eq!(listing.jobs.len(), 1);
    assert_eq!(listing.jobs[0].id.as_str(), "a1");
    assert_eq!(listing.unreadable.len(), 1);
    assert_eq!(listing.unreadable[0].0, bad.root());
    assert!(good.root().exists());
}

#[test]
fn missing_jobs_dir_lists_nothing() {
    let tmp = tempfile::tempdir().expect("temp dir");
    assert!(list_jobs(&tmp.path().join("none"))
        .expect("missing is empty")
        .is_empty());
}

#[test]
fn rename_no_replace_moves_to_a_free_name_and_never_replaces_a_file() {
    let tmp = tempfile::tempdir().expect("temp dir");
    let (a, b, c) = (
        tmp.path().join("a"),
        tmp.path().join("b"),
        tmp.path().join("c"),
    );
    std::fs::write(&a, "first").expect("write a");
    std::fs::write(&b, "someone else's").expect("write b");
    let err = rename_no_replace(&a, &b).expect_err("b exists");
    assert_eq!(err.kind(), io::ErrorKind::AlreadyExists);
    assert_eq!(std::fs::read_to_string(&b).expect("b"), "someone else's");
    assert_eq!(std::fs::read_to_string(&a).expect("a"), "first");
    rename_no_replace(&a, &c).expect("c is free");
    assert!(!a.exists());
    assert_eq!(std::fs::read_to_string(&c).expect("c"), "first");
}
