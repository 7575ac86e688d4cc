//! End to end: batch job files. One file with `batch:` becomes one job per row, all or none;
//! the batch is shown by `status --batch`, the JSON API and the dashboard, and cancelled as a
//! whole. The real daemon renders every row to an MP4 checked with the real `ffprobe`.

mod common;
#[path = "render/support.rs"]
#[allow(dead_code)]
mod support;

use std::time::Duration;

use common::{wait_for, Farm};
use serde_json::Value;

/// Two CPU slots, so the rows render two at a time.
const POOL: &str = "gpu_pool: { kind: cpu, slots: 2, failure_drain_threshold: 1000 }\n";
/// The cheapest render the tests use: one clip of 4 frames at 64x64, one sampling step.
const TINY: &str = "render:\n  size: 64*64\n  infer_frames: 4\n  sample_steps: 1\n  num_clip: 1\n";

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|listener| listener.local_addr())
        .expect("a free port")
        .port()
}

fn get(url: &str) -> String {
    ureq::get(url)
        .timeout(Duration::from_secs(30))
        .call()
        .unwrap_or_else(|err| panic!("GET {url}: {err}"))
        .into_string()
        .expect("a text body")
}

fn get_json(url: &str) -> Value {
    let body = get(url);
    serde_json::from_str(&body).unwrap_or_else(|err| panic!("GET {url}: {err}: {body}"))
}

/// The jobs on disk that belong to a batch, by their batch id.
fn batch_jobs(farm: &Farm) -> Vec<Value> {
    farm.job_states()
        .into_iter()
        .filter(|state| state["batch"].is_string())
        .collect()
}

#[test]
fn a_csv_batch_through_the_spool_becomes_one_video_per_row() {
    let port = free_port();
    let farm = Farm::new(&format!("{POOL}http: {{ listen: \"127.0.0.1:{port}\" }}\n"));
    let base = format!("http://127.0.0.1:{port}");
    let media = farm.media.display().to_string();
    let mut csv = String::from("image,audio,prompt,output\n");
    for row in 1..=12 {
        csv.push_str(&format!(
            "{media}/portrait.png,{media}/hello.wav,\"row {row}, a presenter\",{}/row-{row}.mp4\n",
            farm.out.display()
        ));
    }
    let csv_path = farm.media.join("rows.csv");
    std::fs::write(&csv_path, csv).expect("write the CSV");
    let _daemon = farm.start_daemon();
    farm.drop_job(
        "course.yaml",
        &format!(
            "name: course\n{TINY}batch:\n  csv: {}\n",
            csv_path.display()
        ),
    );
    let done = wait_for("12 rows rendered", Duration::from_secs(600), || {
        let jobs = batch_jobs(&farm);
        if let Some(failed) = jobs.iter().find(|j| j["phase"] == "failed") {
            panic!("a row failed: {failed}\n{}", farm.daemon_logs());
        }
        (jobs.len() == 12 && jobs.iter().all(|j| j["phase"] == "done")).then_some(jobs)
    });
    let batch = done[0]["batch"].as_str().expect("a batch id").to_string();
    assert!(done.iter().all(|job| job["batch"] == batch.as_str()));
    for row in 1..=12 {
        let video = support::probe(&farm.out.join(format!("row-{row}.mp4")));
        assert_eq!(video.video_codec, "h264", "row {row}: {video:?}");
        assert_eq!((video.width, video.height), (64, 64));
    }
    let mut names: Vec<&str> = done.iter().filter_map(|j| j["name"].as_str()).collect();
    names.sort_unstable();
    assert_eq!(names.first(), Some(&"course-001"));
    assert_eq!(names.last(), Some(&"course-012"));

    // The command line.
    let status = farm.cli(&["status", "--batch", &batch]);
    let text = String::from_utf8_lossy(&status.stdout);
    assert!(status.status.success(), "{status:?}");
    assert!(text.contains("12/12 done"), "{text}");
    assert!(text.contains("course-012"), "{text}");
    // The batch's one end notice is recorded once every row has ended.
    let record = wait_for("the batch's end", Duration::from_secs(30), || {
        let text =
            std::fs::read_to_string(farm.state.join("batches").join(format!("{batch}.json")))
                .ok()?;
        let record: Value = serde_json::from_str(&text).ok()?;
        record["ended_at_ms"].is_u64().then_some(record)
    });
    assert_eq!(record["jobs"].as_array().map(Vec::len), Some(12));

    // The API: the batch with its jobs, and each job naming its batch.
    let view = get_json(&format!("{base}/api/v1/batches/{batch}"));
    assert_eq!(
        (view["total"].as_u64(), view["done"].as_u64()),
        (Some(12), Some(12))
    );
    assert_eq!(view["phase"], "done");
    assert_eq!(view["members"].as_array().map(Vec::len), Some(12));
    let job_id = view["members"][0]["id"].as_str().expect("a member id");
    let job = get_json(&format!("{base}/api/v1/jobs/{job_id}"));
    assert_eq!(job["job"]["batch"], batch.as_str());
    let list = get_json(&format!("{base}/api/v1/batches"));
    assert_eq!(list["batches"][0]["id"], batch.as_str());
    // The dashboard's live part lists the batch with its progress.
    let live = get(&format!("{base}/live"));
    assert!(live.contains("id=batches"), "{live}");
    assert!(live.contains(&format!("data-batch=\"{batch}\"")), "{live}");
    assert!(live.contains("12 of 12 done"), "{live}");
}

#[test]
fn a_batch_with_one_bad_row_is_refused_whole_and_a_good_one_cancels_as_one() {
    let farm = Farm::new(POOL);
    let _daemon = farm.start_daemon();
    let (m, o) = (farm.media.display(), farm.out.display());
    let row = |n: u32, audio: &str| {
        format!("    - {{ image: {m}/portrait.png, audio: {m}/{audio}, prompt: \"row {n}\", output: {o}/bad-{n}.mp4 }}\n")
    };
    let text = format!(
        "{TINY}batch:\n  items:\n{}{}{}",
        row(1, "hello.wav"),
        row(2, "missing.wav"),
        row(3, "hello.wav")
    );
    farm.drop_job("bad.yaml", &text);
    let report = wait_for("the rejection", Duration::from_secs(30), || {
        farm.rejection("bad.yaml")
    });
    assert!(report.contains("row 2, column `audio`"), "{report}");
    assert!(report.contains("missing.wav"), "{report}");
    assert!(farm.job_states().is_empty(), "no row was filed");
    let records = std::fs::read_dir(farm.state.join("batches")).map_or(0, |dir| dir.count());
    assert_eq!(records, 0, "no batch record for a refused batch");

    // A good batch of long jobs, cancelled as one.
    let long = "render:\n  size: 64*64\n  infer_frames: 4\n  sample_steps: 1\n  num_clip: 2000\n";
    let text = format!(
        "{long}batch:\n  items:\n    - {{ image: {m}/portrait.png, audio: {m}/hello.wav, prompt: one, output: {o}/long-1.mp4 }}\n    - {{ image: {m}/portrait.png, audio: {m}/hello.wav, prompt: two, output: {o}/long-2.mp4 }}\n"
    );
    farm.drop_job("long.yaml", &text);
    let batch = wait_for("the batch's jobs", Duration::from_secs(30), || {
        let jobs = batch_jobs(&farm);
        (jobs.len() == 2 && jobs.iter().any(|j| j["phase"] == "running"))
            .then(|| jobs[0]["batch"].as_str().map(str::to_string))
            .flatten()
    });
    let cancel = farm.cli(&["cancel", "--batch", &batch, "--wait-secs", "60"]);
    let text = String::from_utf8_lossy(&cancel.stdout);
    assert!(cancel.status.success(), "{cancel:?}");
    assert!(
        text.contains("(cancelled): 0/2 done, 2 cancelled"),
        "{text}"
    );
    assert!(batch_jobs(&farm).iter().all(|j| j["phase"] == "cancelled"));
}

/// `validate` and `submit` ask the running daemon about what only it knows (its engines, cards
/// and queue); without one they pass what they could check and say what they could not.
#[test]
fn validate_and_submit_ask_the_running_daemon_about_its_engines() {
    let farm = Farm::new(POOL);
    let unknown = farm.root.path().join("unknown-engine.yaml");
    let text = farm.job_yaml("unknown-engine", "").replace(
        "output:",
        "engine:\n  kind: command\n  name: no-such-engine\n  model: demo\noutput:",
    );
    std::fs::write(&unknown, text).expect("write the job file");
    let path = unknown.to_str().expect("utf-8 path");

    let alone = farm.cli(&["validate", path]);
    let stderr = String::from_utf8_lossy(&alone.stderr);
    assert!(alone.status.success(), "{alone:?}");
    assert!(
        stderr.contains("not checked against a running daemon"),
        "{stderr}"
    );

    let _daemon = farm.start_daemon();
    let checked = farm.cli(&["validate", path]);
    let stderr = String::from_utf8_lossy(&checked.stderr);
    assert_eq!(checked.status.code(), Some(1), "{checked:?}");
    assert!(stderr.contains("no-such-engine"), "{stderr}");
    let submit = farm.cli(&["submit", path]);
    assert_eq!(submit.status.code(), Some(1), "{submit:?}");
    assert!(
        String::from_utf8_lossy(&submit.stderr).contains("not submitted"),
        "{submit:?}"
    );
    let waiting = std::fs::read_dir(farm.incoming()).map_or(0, |dir| {
        dir.flatten()
            .filter(|e| !e.file_name().to_string_lossy().starts_with('.'))
            .count()
    });
    assert_eq!(waiting, 0, "nothing was filed");

    // A good batch passes the daemon's check, row by row.
    let (m, o) = (farm.media.display(), farm.out.display());
    let batch = farm.root.path().join("pair.yaml");
    std::fs::write(
        &batch,
        format!("{TINY}batch:\n  items:\n    - {{ image: {m}/portrait.png, audio: {m}/hello.wav, prompt: a, output: {o}/p1.mp4 }}\n    - {{ image: {m}/portrait.png, audio: {m}/hello.wav, prompt: b, output: {o}/p2.mp4 }}\n"),
    )
    .expect("write the batch file");
    let good = farm.cli(&["validate", batch.to_str().expect("utf-8 path")]);
    let stdout = String::from_utf8_lossy(&good.stdout);
    assert!(good.status.success(), "{good:?}");
    assert!(
        stdout.contains("batch `pair` of 2 jobs; checked by the running daemon"),
        "{stdout}"
    );
}
