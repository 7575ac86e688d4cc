//! End to end, memory modes of Live Avatar release jobs (issue 23): placement plans a release
//! job with the engine's own accounting (`wan::memory`), on the pool's cards and the host's
//! memory, and shows the plan while the job waits; the worker runs the planned mode, every
//! mode makes the same frames, and an out-of-memory exit moves the job to a mode down.
//!
//! The 14B-shaped release is sparse (headers real, data holes): no worker ever starts on it,
//! the queue is held (`hold_queue: true`) or the worker is a script that never loads it.

mod common;
#[path = "render/support.rs"]
#[allow(dead_code)]
mod support;

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use common::{wait_for, Farm};
use serde_json::Value;
use support::*;

const WAIT: Duration = Duration::from_secs(120);
const GIB: u64 = 1 << 30;
/// Intake checks that two checkpoints fit the state directory; a 704*384×48 carry of the
/// 14B model is about 90 GB, more than a test machine has. These jobs never run.
const ROOMY: [(&str, &str); 1] = [("REELSPOOL_TEST_ASSUME_FREE_BYTES", "1000000000000")];

/// The sparse 14B release under the farm's root.
fn sparse_release(farm: &Farm) -> PathBuf {
    let dir = farm.root.path().join("liveavatar-14b");
    wan::sparse_release::write_sparse_release(&dir).expect("write the sparse release");
    dir.canonicalize().expect("canonical release dir")
}

/// A 704*384, 48-frames-per-clip, 10-clip job on `release`.
fn big_job(farm: &Farm, name: &str, release: &Path) -> String {
    farm.job_yaml(name, "")
        .replace("size: 64*64", "size: 704*384")
        .replace("infer_frames: 4", "infer_frames: 48\n  num_clip: 10")
        .replace("sample_steps: 1", "sample_steps: 4")
        .replace(
            "output:",
            &format!(
                "engine:\n  kind: native\n  model: {}\noutput:",
                release.display()
            ),
        )
}

/// The job from `file`, once intake accepted it.
fn accepted(farm: &Farm, file: &str) -> Value {
    wait_for(&format!("{file} to be accepted"), WAIT, || {
        if let Some(error) = farm.rejection(file) {
            panic!("{file} was refused: {error}");
        }
        farm.job_by_source(file)
    })
}

fn plan_of(state: &Value) -> &Value {
    &state["details"]["memory_plan"]
}

/// What the job's workers wrote, every attempt (`reelspool logs ID`).
fn worker_logs(farm: &Farm, state: &Value) -> String {
    let id = state["id"].as_str().expect("job id");
    stdout(&farm.cli(&["logs", id]))
}

fn stdout(output: &std::process::Output) -> String {
    String::from_utf8_lossy(&output.stdout).into_owned()
}

#[test]
fn a_14b_job_on_24gb_cards_streams_blocks_and_status_shows_the_plan_while_held() {
    let farm = Farm::new(
        "hold_queue: true\ngpu_pool:\n  kind: simulated\n  host_memory_gb: 128\n  gpus:\n    \
         - { name: RTX 4090, memory_gb: 24 }\n    - { name: RTX 4090, memory_gb: 24 }\n",
    );
    let release = sparse_release(&farm);
    let _daemon = farm.start_daemon_with_env(&ROOMY);
    farm.drop_job("big.yaml", &big_job(&farm, "big", &release));
    let state = accepted(&farm, "big.yaml");
    assert_eq!(state["phase"], "queued", "{state}");
    let plan = plan_of(&state);
    assert_ne!(plan["mode"], "resident", "{plan}");
    let blocks = plan["blocks"].as_u64().expect("blocks");
    assert_eq!(blocks, 40, "{plan}");
    assert!(
        plan["resident_blocks"].as_u64().expect("resident") < blocks,
        "{plan}"
    );
    let device = plan["device_bytes"].as_u64().expect("device bytes");
    assert!(device <= 24 * GIB, "{plan}");
    assert!(
        plan["host_bytes"].as_u64().expect("host bytes") > 24 * GIB,
        "{plan}"
    );
    assert_eq!(plan["precision"], "bf16", "{plan}");

    let id = state["id"].as_str().expect("id");
    let details = stdout(&farm.cli(&["status", id]));
    let label = if plan["mode"] == "hybrid" {
        format!("hybrid ({}/40 blocks resident)", plan["resident_blocks"])
    } else {
        "streamed".to_string()
    };
    assert!(
        details.contains(&format!("memory:    {label} bf16")),
        "{details}"
    );
    assert!(
        details.contains("GiB on the GPU") && details.contains("GiB of host memory"),
        "{details}"
    );
    let listed: Value =
        serde_json::from_str(&stdout(&farm.cli(&["status", "--json"]))).expect("status JSON");
    assert_eq!(plan_of(&listed[0]), plan, "{listed}");
    let one: Value =
        serde_json::from_str(&stdout(&farm.cli(&["status", "--json", id]))).expect("status JSON");
    assert_eq!(plan_of(&one["job"]), plan, "{one}");
}

#[test]
fn a_14b_job_on_an_80gb_card_is_planned_resident_or_hybrid_and_one_on_8gb_is_refused() {
    let farm = Farm::new(
        "hold_queue: true\ngpu_pool:\n  kind: simulated\n  host_memory_gb: 128\n  gpus:\n    \
         - { name: A100 80GB, memory_gb: 80 }\n",
    );
    let release = sparse_release(&farm);
    let _daemon = farm.start_daemon_with_env(&ROOMY);
    farm.drop_job("big.yaml", &big_job(&farm, "big", &release));
    let state = accepted(&farm, "big.yaml");
    let plan = plan_of(&state);
    assert!(
        plan["mode"] == "resident" || plan["mode"] == "hybrid",
        "{plan}"
    );
    assert!(
        plan["device_bytes"].as_u64().expect("bytes") <= 80 * GIB,
        "{plan}"
    );

    let small = Farm::new(
        "hold_queue: true\ngpu_pool:\n  kind: simulated\n  host_memory_gb: 16\n  gpus:\n    \
         - { name: small, memory_gb: 8 }\n",
    );
    let release = sparse_release(&small);
    let _daemon = small.start_daemon_with_env(&ROOMY);
    small.drop_job("big.yaml", &big_job(&small, "big", &release));
    let error = wait_for("big.yaml to be refused", WAIT, || {
        small.rejection("big.yaml")
    });
    assert!(
        error.contains("fits no GPU of the pool in any memory mode"),
        "{error}"
    );
    assert!(
        error.contains("GB on the device") && error.contains("host RAM"),
        "{error}"
    );
    assert!(error.contains("try:"), "{error}");
}

/// Two streaming jobs whose host memory together exceeds the host's: the second waits
/// although a card is free. The worker is a script that records its start and waits, so
/// nothing loads the sparse release.
#[test]
fn a_job_whose_host_memory_is_taken_waits_in_the_queue() {
    let scripts = tempfile::tempdir().expect("temp dir");
    let script = scripts.path().join("worker.sh");
    let log = scripts.path().join("runs.log");
    std::fs::write(
        &script,
        format!(
            "#!/bin/sh\necho \"$2\" >> '{}'\nexec sleep 120\n",
            log.display()
        ),
    )
    .expect("write worker script");
    Command::new("chmod")
        .arg("+x")
        .arg(&script)
        .status()
        .expect("chmod");
    // 100 GiB of host memory: one hybrid job (about 60 GB of host memory) fits, two do not.
    let farm = Farm::new(&format!(
        "gpu_pool:\n  kind: simulated\n  host_memory_gb: 100\n  gpus:\n    \
         - {{ name: RTX 4090, memory_gb: 24 }}\n    - {{ name: RTX 4090, memory_gb: 24 }}\n\
         worker: {{ program: {}, idle_unload_secs: 0 }}\n",
        script.display()
    ));
    let release = sparse_release(&farm);
    let _daemon = farm.start_daemon_with_env(&ROOMY);
    farm.drop_job("first.yaml", &big_job(&farm, "first", &release));
    let first = accepted(&farm, "first.yaml");
    let host = plan_of(&first)["host_bytes"].as_u64().expect("host bytes");
    assert!(host <= 100 * GIB && 2 * host > 100 * GIB, "{first}");
    wait_for("first to run", WAIT, || {
        (farm.job_by_source("first.yaml")?["phase"] == "running").then_some(())
    });
    farm.drop_job("second.yaml", &big_job(&farm, "second", &release));
    let second = accepted(&farm, "second.yaml");
    let submitted = second["submitted_at_ms"].as_u64().expect("submitted_at_ms");
    // gpus.json is rewritten on the tick after a placement pass that saw the new job.
    wait_for(
        "a placement pass after the second job came in",
        WAIT,
        || {
            let text = std::fs::read_to_string(farm.state.join("gpus.json")).ok()?;
            let snapshot: Value = serde_json::from_str(&text).ok()?;
            (snapshot["updated_at_ms"].as_u64()? > submitted).then_some(())
        },
    );
    let second = farm.job_by_source("second.yaml").expect("second job");
    assert_eq!(second["phase"], "queued", "{second}");
    let starts = std::fs::read_to_string(&log).unwrap_or_default();
    assert_eq!(starts.lines().count(), 1, "{starts}");
}

/// The tiny release: a streamed job's frames equal a resident job's, and a job planned
/// resident (auto, on the CPU) that runs out of memory at clip 1 resumes streamed from its
/// checkpoint and still makes the same frames.
#[test]
fn streamed_frames_equal_resident_ones_and_an_oom_resumes_streamed_to_the_same_frames() {
    let tiny = |farm: &Farm| {
        let release = farm.root.path().join("liveavatar");
        wan::release::write_tiny_release(&release, 7).expect("write the tiny release");
        release.canonicalize().expect("canonical release dir")
    };
    let job_on = |farm: &Farm, name: &str, release: &Path, render: &str| {
        job(
            farm,
            name,
            &format!(
                "  infer_frames: 16\n  num_clip: 3\n{render}engine:\n  kind: native\n  model: {}\n",
                release.display()
            ),
        )
    };
    let reference = reference_digests(|farm| {
        let release = tiny(farm);
        job_on(farm, "reference", &release, "  memory_mode: resident\n")
    });

    let farm = Farm::new(POOL);
    let release = tiny(&farm);
    let _daemon = farm.start_daemon_with_env(&[("REELSPOOL_TEST_CRASH_AT", "oom_resident@1")]);
    farm.drop_job(
        "streamed.yaml",
        &job_on(&farm, "streamed", &release, "  memory_mode: streamed\n"),
    );
    let state = wait_finished(&farm, "streamed.yaml");
    assert_eq!(state["phase"], "done", "{state}\n{}", farm.daemon_logs());
    assert_eq!(plan_of(&state)["mode"], "streamed", "{state}");
    assert_eq!(
        frame_digests(Path::new(state["output"].as_str().expect("output"))),
        reference
    );

    farm.drop_job("oom.yaml", &job_on(&farm, "oom", &release, ""));
    let state = wait_finished(&farm, "oom.yaml");
    assert_eq!(state["phase"], "done", "{state}\n{}", farm.daemon_logs());
    let evs = events(&farm, &state);
    let modes: Vec<&Value> = evs
        .iter()
        .filter(|e| e["event"] == "running")
        .map(|e| &e["memory_mode"])
        .collect();
    assert_eq!(modes, ["resident", "streamed"], "{evs:?}");
    let retry = evs
        .iter()
        .find(|e| e["event"] == "retry")
        .expect("a retry event");
    assert_eq!(retry["fallback"], "streamed", "{retry}");
    assert_eq!(start_points(&evs), [0, 1], "{evs:?}");
    let logs = worker_logs(&farm, &state);
    let loads: Vec<&str> = logs
        .lines()
        .filter(|line| line.contains("Live Avatar release loading"))
        .map(|line| {
            if line.contains("mode=streamed") {
                "streamed"
            } else if line.contains("mode=resident") {
                "resident"
            } else {
                "other"
            }
        })
        .collect();
    assert_eq!(loads, ["resident", "streamed"], "{logs}");
    assert_eq!(plan_of(&state)["mode"], "streamed", "{state}");
    assert_eq!(
        frame_digests(Path::new(state["output"].as_str().expect("output"))),
        reference
    );
}

/// Rewrites the JSON header of the safetensors file at `path` through `edit`, keeping the data.
fn edit_header(path: &Path, edit: impl Fn(&mut serde_json::Map<String, Value>)) {
    let bytes = std::fs::read(path).expect("read shard");
    let len = u64::from_le_bytes(bytes[..8].try_into().expect("8 bytes")) as usize;
    let mut header: serde_json::Map<String, Value> =
        serde_json::from_slice(&bytes[8..8 + len]).expect("header JSON");
    edit(&mut header);
    let mut text = serde_json::to_vec(&header).expect("encode header");
    while !text.len().is_multiple_of(8) {
        text.push(b' ');
    }
    let mut out = (text.len() as u64).to_le_bytes().to_vec();
    out.extend_from_slice(&text);
    out.extend_from_slice(&bytes[8 + len..]);
    std::fs::write(path, out).expect("write shard");
}

/// `reelspool model check` on the tiny release: clean, it prints a plan and exits 0; a renamed
/// tensor, a mis-shaped one, a truncated shard and a partial LoRA each make it exit 1 naming
/// the file and the key.
#[test]
fn model_check_names_file_and_key_of_each_broken_release() {
    let farm = Farm::new(POOL);
    let shard = "Wan2.2-S2V-14B/diffusion_pytorch_model-00001-of-00002.safetensors";
    let check = |dir: &Path| {
        let out = farm.cli(&["model", "check", &dir.display().to_string()]);
        (out.status.code(), stdout(&out))
    };
    let fresh = |name: &str| {
        let dir = farm.root.path().join(name);
        wan::release::write_tiny_release(&dir, 5).expect("tiny release");
        dir.canonicalize().expect("canonical")
    };
    let clean = fresh("clean");
    let (code, text) = check(&clean);
    assert_eq!(code, Some(0), "{text}");
    assert!(text.contains("a job could run"), "{text}");
    assert!(text.contains("384*256×48: resident bf16"), "{text}");

    let keys_of = |path: &Path| -> Vec<String> {
        let bytes = std::fs::read(path).expect("read");
        let len = u64::from_le_bytes(bytes[..8].try_into().expect("8 bytes")) as usize;
        let header: serde_json::Map<String, Value> =
            serde_json::from_slice(&bytes[8..8 + len]).expect("header");
        header
            .keys()
            .filter(|k| *k != "__metadata__")
            .cloned()
            .collect()
    };

    let renamed_dir = fresh("renamed");
    let path = renamed_dir.join(shard);
    let renamed = keys_of(&path)
        .into_iter()
        .find(|k| k.ends_with("norm_q.weight"))
        .expect("a norm in shard 1");
    let new_name = renamed.replace("norm_q", "q_norm");
    edit_header(&path, |h| {
        let value = h.remove(&renamed).expect("present");
        h.insert(new_name.clone(), value);
    });
    let (code, text) = check(&renamed_dir);
    assert_eq!(code, Some(1), "{text}");
    assert!(
        text.contains(&new_name) && text.contains(&renamed),
        "{text}"
    );
    assert!(text.contains(&path.display().to_string()), "{text}");

    let shaped_dir = fresh("misshaped");
    let path = shaped_dir.join(shard);
    let misshaped = keys_of(&path)
        .into_iter()
        .find(|k| k.starts_with("blocks.") && k.ends_with(".q.weight"))
        .expect("a q projection in shard 1");
    edit_header(&path, |h| {
        h[&misshaped]["shape"] = serde_json::json!([32, 128]);
    });
    let (code, text) = check(&shaped_dir);
    assert_eq!(code, Some(1), "{text}");
    assert!(
        text.contains(&misshaped) && text.contains(&path.display().to_string()),
        "{text}"
    );

    let cut_dir = fresh("truncated");
    let path = cut_dir.join(shard);
    let bytes = std::fs::read(&path).expect("read");
    std::fs::write(&path, &bytes[..bytes.len() - 1000]).expect("truncate");
    let (code, text) = check(&cut_dir);
    assert_eq!(code, Some(1), "{text}");
    assert!(text.contains(&path.display().to_string()), "{text}");

    let lora_dir = fresh("partial-lora");
    let path = lora_dir.join(wan::release::LORA_FILE);
    let dropped = "base_model.model.blocks.2.cross_attn.v.lora_B.weight";
    edit_header(&path, |h| {
        h.retain(|k, _| !k.contains("blocks.2.cross_attn.v."))
    });
    let (code, text) = check(&lora_dir);
    assert_eq!(code, Some(1), "{text}");
    assert!(
        text.contains(dropped) && text.contains(&path.display().to_string()),
        "{text}"
    );
}
