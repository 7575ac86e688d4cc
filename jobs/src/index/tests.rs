use super::*;
use crate::spec::{Codec, EngineSpec, Inputs, NotifySpec, OutputSpec, RenderSettings, RetryPolicy};
use crate::JobSpec;

fn spec(name: &str) -> JobSpec {
    JobSpec {
        name: name.to_string(),
        template: None,
        priority: 1,
        inputs: Inputs {
            image: PathBuf::from("/data/a.png"),
            audio: PathBuf::from("/data/a.wav"),
            prompt: "hello".to_string(),
        },
        render: RenderSettings::default(),
        engine: EngineSpec::default(),
        output: OutputSpec {
            path: PathBuf::from("/out/a.mp4"),
            codec: Codec::Hevc,
            crf: 20,
            overwrite: false,
        },
        notify: NotifySpec::default(),
        retry: RetryPolicy::default(),
    }
}

fn plan(clips: u32) -> QueuePlan {
    QueuePlan {
        profile: "builtin-tiny".into(),
        width: 64,
        height: 48,
        frames: 4,
        offload: Offload::Auto,
        clips,
        release: None,
    }
}

/// Job folders as the daemon leaves them, numbered `n` in submission order.
fn make_jobs(jobs: &Path, count: usize) -> Vec<JobState> {
    fs::create_dir_all(jobs).expect("jobs dir");
    (0..count)
        .map(|n| {
            let id: JobId = format!("20261123-150102-{:03}-0001", n)
                .parse()
                .expect("valid id");
            let dir = JobDir::new(jobs.join(id.as_str()));
            dir.create().expect("create job dir");
            let state = JobState::queued(id, &spec(&format!("job-{n}")), "a.yaml", n as u64);
            dir.save_state(&state).expect("save state");
            state
        })
        .collect()
}

fn plan_from_folder(_: &JobDir, state: &JobState) -> Option<QueuePlan> {
    Some(plan(state.submitted_at_ms as u32 + 1))
}

/// The phases the folders hold, by id.
fn folder_phases(jobs: &Path) -> BTreeMap<JobId, Phase> {
    crate::state::list_jobs(jobs)
        .expect("list jobs")
        .into_iter()
        .map(|state| (state.id, state.phase))
        .collect()
}

fn index_phases(path: &Path) -> BTreeMap<JobId, Phase> {
    read_index(path)
        .expect("index readable")
        .entries
        .into_values()
        .map(|entry| (entry.id, entry.phase))
        .collect()
}

#[test]
fn a_missing_index_is_built_from_the_folders_with_plans() {
    let tmp = tempfile::tempdir().expect("temp dir");
    let jobs = tmp.path().join("jobs");
    let index = tmp.path().join(INDEX_FILE);
    make_jobs(&jobs, 5);
    let reconciled = reconcile(&index, &jobs, plan_from_folder).expect("reconcile");
    assert_eq!(reconciled.rebuilt, Some(IndexProblem::Missing));
    assert_eq!(reconciled.added.len(), 5);
    IndexWriter::open(&index, &reconciled).expect("write index");
    let file = read_index(&index).expect("index readable");
    assert_eq!(file.entries.len(), 5);
    let third = file.entries.values().nth(2).expect("third entry");
    assert_eq!(third.name, "job-2");
    assert_eq!(third.plan.as_ref().map(|p| p.clips), Some(3));
}

#[test]
fn appended_changes_win_and_finished_jobs_lose_their_plan() {
    let tmp = tempfile::tempdir().expect("temp dir");
    let jobs = tmp.path().join("jobs");
    let index = tmp.path().join(INDEX_FILE);
    let states = make_jobs(&jobs, 3);
    let reconciled = reconcile(&index, &jobs, plan_from_folder).expect("reconcile");
    let mut writer = IndexWriter::open(&index, &reconciled).expect("open index");
    let mut running = states[0].clone();
    running.phase = Phase::Running;
    running.gpu = Some("cpu-0".into());
    writer.record(&running).expect("record running");
    let mut done = states[1].clone();
    done.phase = Phase::Done;
    writer.record(&done).expect("record done");
    let file = read_index(&index).expect("index readable");
    let first = &file.entries[&states[0].id];
    assert_eq!(first.phase, Phase::Running);
    assert_eq!(first.gpu.as_deref(), Some("cpu-0"));
    assert!(first.plan.is_some(), "a running job keeps its plan");
    let second = &file.entries[&states[1].id];
    assert_eq!(second.phase, Phase::Done);
    assert_eq!(second.plan, None);
    assert_eq!(file.lines, 5);
}

#[test]
fn a_damaged_index_is_rebuilt_and_loses_no_job() {
    let tmp = tempfile::tempdir().expect("temp dir");
    let jobs = tmp.path().join("jobs");
    let index = tmp.path().join(INDEX_FILE);
    make_jobs(&jobs, 4);
    let reconciled = reconcile(&index, &jobs, plan_from_folder).expect("reconcile");
    IndexWriter::open(&index, &reconciled).expect("write index");
    // Garbage in the middle of the file.
    let text = fs::read_to_string(&index).expect("read index");
    let mut lines: Vec<&str> = text.lines().collect();
    lines[2] = "{\"id\": \"20261123-15";
    fs::write(&index, lines.join("\n") + "\n").expect("damage index");

    let reconciled = reconcile(&index, &jobs, plan_from_folder).expect("reconcile");
    assert!(
        matches!(reconciled.rebuilt, Some(IndexProblem::Damaged(ref why)) if why.contains("line 3")),
        "{:?}",
        reconciled.rebuilt
    );
    IndexWriter::open(&index, &reconciled).expect("rewrite index");
    assert_eq!(index_phases(&index), folder_phases(&jobs));
}

#[test]
fn a_stale_index_learns_new_folders_and_forgets_removed_ones() {
    let tmp = tempfile::tempdir().expect("temp dir");
    let jobs = tmp.path().join("jobs");
    let index = tmp.path().join(INDEX_FILE);
    let states = make_jobs(&jobs, 3);
    let reconciled = reconcile(&index, &jobs, plan_from_folder).expect("reconcile");
    IndexWriter::open(&index, &reconciled).expect("write index");
    // Two more jobs arrive without the index hearing of them (a crash), one folder goes.
    let more = tmp.path().join("more");
    let extra = make_jobs(&more, 5);
    for state in &extra[3..] {
        fs::rename(more.join(state.id.as_str()), jobs.join(state.id.as_str())).expect("move");
    }
    fs::remove_dir_all(jobs.join(states[1].id.as_str())).expect("remove a job");

    let reconciled = reconcile(&index, &jobs, plan_from_folder).expect("reconcile");
    assert_eq!(reconciled.rebuilt, None);
    assert_eq!(
        reconciled.added,
        vec![extra[3].id.clone(), extra[4].id.clone()]
    );
    assert_eq!(reconciled.dropped, 1);
    IndexWriter::open(&index, &reconciled).expect("update index");
    assert_eq!(index_phases(&index), folder_phases(&jobs));
    assert_eq!(index_phases(&index).len(), 4);
}

#[test]
fn a_torn_last_line_is_skipped_and_cut_before_the_next_append() {
    let tmp = tempfile::tempdir().expect("temp dir");
    let jobs = tmp.path().join("jobs");
    let index = tmp.path().join(INDEX_FILE);
    let states = make_jobs(&jobs, 2);
    let reconciled = reconcile(&index, &jobs, plan_from_folder).expect("reconcile");
    IndexWriter::open(&index, &reconciled).expect("write index");
    let mut file = OpenOptions::new().append(true).open(&index).expect("open");
    file.write_all(b"{\"id\":\"20261123-150102-000-0001\",\"na")
        .expect("torn write");
    drop(file);

    let reconciled = reconcile(&index, &jobs, plan_from_folder).expect("reconcile");
    assert_eq!(reconciled.rebuilt, None, "a torn tail is not damage");
    let mut writer = IndexWriter::open(&index, &reconciled).expect("open index");
    let mut cancelled = states[0].clone();
    cancelled.phase = Phase::Cancelled;
    writer.record(&cancelled).expect("record");
    let file = read_index(&index).expect("index readable after the append");
    assert_eq!(file.entries[&states[0].id].phase, Phase::Cancelled);
}

#[test]
fn an_index_full_of_superseded_lines_is_compacted() {
    let tmp = tempfile::tempdir().expect("temp dir");
    let jobs = tmp.path().join("jobs");
    let index = tmp.path().join(INDEX_FILE);
    let states = make_jobs(&jobs, 1);
    let reconciled = reconcile(&index, &jobs, plan_from_folder).expect("reconcile");
    let mut writer = IndexWriter::open(&index, &reconciled).expect("open index");
    let mut state = states[0].clone();
    state.phase = Phase::Running;
    for clip in 0..1100 {
        state.clips_done = clip;
        writer.record(&state).expect("record");
    }
    drop(writer);
    let reconciled = reconcile(&index, &jobs, plan_from_folder).expect("reconcile");
    IndexWriter::open(&index, &reconciled).expect("compact");
    let file = read_index(&index).expect("index readable");
    assert_eq!(file.lines, 1);
    assert_eq!(file.entries[&states[0].id].clips_done, 1099);
}

#[test]
fn a_standalone_append_needs_an_existing_index() {
    let tmp = tempfile::tempdir().expect("temp dir");
    let jobs = tmp.path().join("jobs");
    let index = tmp.path().join(INDEX_FILE);
    let states = make_jobs(&jobs, 1);
    append_standalone(&index, &states[0]).expect("no index is fine");
    assert!(!index.exists(), "the CLI must not create a partial index");
    let reconciled = reconcile(&index, &jobs, plan_from_folder).expect("reconcile");
    IndexWriter::open(&index, &reconciled).expect("write index");
    let mut cancelled = states[0].clone();
    cancelled.phase = Phase::Cancelled;
    append_standalone(&index, &cancelled).expect("append");
    assert_eq!(index_phases(&index)[&states[0].id], Phase::Cancelled);
}

#[test]
fn names_only_reconciling_lists_unknown_folders_without_reading_them() {
    let tmp = tempfile::tempdir().expect("temp dir");
    let jobs = tmp.path().join("jobs");
    let index = tmp.path().join(INDEX_FILE);
    let states = make_jobs(&jobs, 3);
    // A folder whose state cannot be read would fail a reading reconcile's entry, not this.
    fs::write(jobs.join(states[2].id.as_str()).join("state.json"), b"{").expect("damage");
    let reconciled = reconcile_names(&index, &jobs).expect("reconcile");
    assert_eq!(reconciled.rebuilt, Some(IndexProblem::Missing));
    assert!(reconciled.entries.is_empty());
    assert!(reconciled.added.is_empty());
    let expected: Vec<JobId> = states.iter().map(|s| s.id.clone()).collect();
    assert_eq!(reconciled.unread, expected);
    IndexWriter::open(&index, &reconciled).expect("write an empty index");
    assert_eq!(read_index(&index).expect("valid index").entries.len(), 0);
}

#[test]
fn a_jobs_own_plan_is_read_back_and_a_torn_one_is_ignored() {
    let root = tempfile::tempdir().expect("temp dir");
    let dir = JobDir::new(root.path().to_path_buf());
    assert_eq!(read_plan(&dir), None, "no plan kept yet");
    write_plan(&dir, &plan(7)).expect("write plan");
    assert_eq!(read_plan(&dir), Some(plan(7)));
    let text = fs::read_to_string(root.path().join(PLAN_FILE)).expect("plan file");
    fs::write(root.path().join(PLAN_FILE), &text[..text.len() / 2]).expect("tear it");
    assert_eq!(read_plan(&dir), None, "a torn plan is worked out again");
}
