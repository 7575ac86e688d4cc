//! End to end: command engines. The real daemon runs jobs through a real Python engine process
//! (engines/python/example_engine.py, or tests/engines/chaos_engine.py: the same engine with
//! faults on order), kills workers and engines with SIGKILL, and checks the videos with the
//! real `ffprobe`/`ffmpeg` and the outcomes in the job's state and events.

mod common;
#[path = "render/support.rs"]
#[allow(dead_code)]
mod support;

use std::path::{Path, PathBuf};
use std::time::Duration;

use common::{wait_for, Farm};
use support::*;

fn repo() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("..")
        .canonicalize()
        .expect("repository root")
}

/// One `engines:` entry running `script` with `python3`.
fn engine_entry(name: &str, script: &Path, env: &[(&str, String)], timeout_secs: u64) -> String {
    let mut text = format!(
        "  {name}:\n    command: [python3, {}]\n    profile: example-engine\n    heartbeat_timeout_secs: {timeout_secs}\n",
        script.display()
    );
    if !env.is_empty() {
        text.push_str("    env:\n");
        for (key, value) in env {
            text.push_str(&format!("      {key}: \"{value}\"\n"));
        }
    }
    text
}

fn example_script() -> PathBuf {
    repo().join("engines/python/example_engine.py")
}

fn chaos_script() -> PathBuf {
    repo().join("tests/engines/chaos_engine.py")
}

/// A farm whose config declares `engines` (already formatted entries).
fn farm_with(engines: &[String]) -> Farm {
    let mut extra = format!("{POOL}engines:\n");
    for entry in engines {
        extra.push_str(entry);
    }
    Farm::new(&extra)
}

/// A 64x64 job of `clips` clips of 4 frames through engine `engine`.
fn engine_job(farm: &Farm, name: &str, engine: &str, clips: u32, attempts: u32) -> String {
    engine_job_with(farm, name, engine, clips, attempts, "")
}

/// [`engine_job`] with more `render:` keys (`render` holds whole indented lines).
fn engine_job_with(
    farm: &Farm,
    name: &str,
    engine: &str,
    clips: u32,
    attempts: u32,
    render: &str,
) -> String {
    format!(
        "name: {name}\ninputs:\n  image: {m}/portrait.png\n  audio: {m}/hello.wav\n  prompt: \"a test\"\n\
         render:\n  size: 64*64\n  infer_frames: 4\n  num_clip: {clips}\n  seed: 7\n{render}\
         engine:\n  kind: command\n  name: {engine}\n  model: demo\n\
         output:\n  path: {o}/{name}.mp4\nretry:\n  max_attempts: {attempts}\n",
        m = farm.media.display(),
        o = farm.out.display(),
    )
}

fn output(state: &serde_json::Value) -> PathBuf {
    PathBuf::from(
        state["output"]
            .as_str()
            .expect("a done job names its output"),
    )
}

fn error_of(state: &serde_json::Value) -> String {
    state["error"].as_str().unwrap_or_default().to_string()
}

/// The frames of an uninterrupted run of the example engine.
fn reference_frames(clips: u32) -> Vec<String> {
    let farm = farm_with(&[engine_entry("numpy-example", &example_script(), &[], 30)]);
    let _daemon = farm.start_daemon();
    farm.drop_job(
        "reference.yaml",
        &engine_job(&farm, "reference", "numpy-example", clips, 1),
    );
    let state = wait_finished(&farm, "reference.yaml");
    assert_eq!(state["phase"], "done", "reference run: {state}");
    assert_eq!(
        start_points(&events(&farm, &state)),
        vec![0],
        "reference ran in one go"
    );
    frame_digests(&output(&state))
}

#[test]
fn example_engine_renders_a_job() {
    let farm = farm_with(&[engine_entry("numpy-example", &example_script(), &[], 30)]);
    let _daemon = farm.start_daemon();
    farm.drop_job(
        "hello.yaml",
        &engine_job(&farm, "hello", "numpy-example", 3, 1),
    );
    let state = wait_finished(&farm, "hello.yaml");
    assert_eq!(state["phase"], "done", "{state}");
    let video = probe(&output(&state));
    assert_eq!(
        (video.video_codec.as_str(), video.audio_codec.as_str()),
        ("h264", "aac")
    );
    assert_eq!(
        (video.width, video.height, video.video_frames),
        (64, 64, 12)
    );
    // The engine's frames, not a still: loudness, grain and the carried band move them.
    let digests = frame_digests(&output(&state));
    let distinct: std::collections::BTreeSet<_> = digests.iter().collect();
    assert_eq!(
        distinct.len(),
        digests.len(),
        "every frame differs: {digests:?}"
    );
    // Intake stored the operator's declaration with the job; the job file never named it.
    let resolved = std::fs::read_to_string(job_dir(&farm, &state).join("engine.json"))
        .expect("engine.json in the job dir");
    assert!(resolved.contains("example_engine.py"), "{resolved}");
    assert_eq!(clips_done(&events(&farm, &state)), vec![0, 1, 2]);
}

#[test]
fn killed_worker_and_engine_resume_to_identical_frames() {
    const CLIPS: u32 = 5;
    let reference = reference_frames(CLIPS);
    assert_eq!(reference.len(), (CLIPS * 4) as usize);

    // The chaos engine remembers fired kills in its working directory, the job's engine
    // scratch dir, which outlives attempts.
    let farm = farm_with(&[engine_entry(
        "numpy-example",
        &chaos_script(),
        &[("CHAOS", "kill@load,kill@mid:1,kill@frames:2".to_string())],
        30,
    )]);
    // The worker SIGKILLs itself at exact points of the clip loop (render/src/worker/crash_point.rs).
    let _daemon = farm.start_daemon_with_env(&[(
        "REELSPOOL_TEST_CRASH_AT",
        "after_denoise@0,mid_encode@1,after_carry@3,mid_checkpoint@3,after_segment@4",
    )]);
    farm.drop_job(
        "chaos.yaml",
        &engine_job(&farm, "chaos", "numpy-example", CLIPS, 40),
    );
    let state = wait_finished(&farm, "chaos.yaml");
    assert_eq!(state["phase"], "done", "{state}");
    let evs = events(&farm, &state);
    let starts = start_points(&evs);
    // Three engine kills and five worker kills: nine attempts in all.
    assert_eq!(
        starts.len(),
        9,
        "every kill cost an attempt: starts {starts:?}"
    );
    assert!(
        starts.iter().any(|&k| k > 0),
        "some attempt resumed from a checkpoint: {starts:?}"
    );
    assert_eq!(
        frame_digests(&output(&state)),
        reference,
        "resumed video differs from an uninterrupted one"
    );
    // Every engine died with its worker or was shut down: none is left running in the farm.
    wait_for("no engine process left", Duration::from_secs(10), || {
        engine_processes_under(farm.root.path())
            .is_empty()
            .then_some(())
    });
}

/// `render.checkpoint_every` holds for command engines as for native ones: with 3, the
/// engine's carry is checkpointed after clips 2, 5 and 7 (the last) only, so a worker
/// SIGKILLed at each kind of point resumes at the clip after the newest complete carry (not
/// after the clip it was killed in), renders the clips since again, keeps their segments
/// because they come out the same, and the video is identical to an uninterrupted run.
#[test]
fn a_command_engine_checkpoints_every_n_clips_and_resumes_to_identical_frames() {
    const CLIPS: u32 = 8;
    let reference = reference_frames(CLIPS);
    // (point, clip the attempt after the kill starts at).
    let kills = [
        // Carry 2 written, checkpoint 2 not yet: nothing durable, from the start again.
        ("after_carry@2", 0),
        // Clip 4's segment is durable, its carry never is: back to the clip after 2.
        ("after_segment@4", 3),
        ("after_checkpoint@5", 6),
        // Clip 6 rendered and reported, its carry not checkpointed: back to 6.
        ("after_denoise@7", 6),
    ];
    let farm = farm_with(&[engine_entry("numpy-example", &example_script(), &[], 30)]);
    let points: Vec<&str> = kills.iter().map(|(point, _)| *point).collect();
    let _daemon = farm.start_daemon_with_env(&[("REELSPOOL_TEST_CRASH_AT", &points.join(","))]);
    farm.drop_job(
        "every3.yaml",
        &engine_job_with(
            &farm,
            "every3",
            "numpy-example",
            CLIPS,
            10,
            "  checkpoint_every: 3\n",
        ),
    );
    let state = wait_finished(&farm, "every3.yaml");
    assert_eq!(state["phase"], "done", "{state}");
    let evs = events(&farm, &state);
    let sigkills = sigkilled_workers(&evs);
    assert_eq!(sigkills, kills.len(), "every point fired once: {evs:?}");
    let mut expected = vec![0];
    expected.extend(kills.iter().map(|(_, resume_at)| *resume_at as u64));
    assert_eq!(start_points(&evs), expected, "{evs:?}");
    assert!(
        !evs.iter().any(|e| e["event"] == "segment_differs"),
        "clips rendered again came out the same: {evs:?}"
    );
    assert_eq!(
        frame_digests(&output(&state)),
        reference,
        "resumed video differs from an uninterrupted one"
    );
}

/// Pids of processes whose working directory lies under `root` (engines run in their job's
/// scratch directory).
fn engine_processes_under(root: &Path) -> Vec<i32> {
    let root = root.canonicalize().expect("canonical farm root");
    let Ok(entries) = std::fs::read_dir("/proc") else {
        return Vec::new();
    };
    entries
        .flatten()
        .filter_map(|entry| entry.file_name().to_str()?.parse::<i32>().ok())
        .filter(|pid| {
            std::fs::read_link(format!("/proc/{pid}/cwd")).is_ok_and(|cwd| cwd.starts_with(&root))
        })
        .collect()
}

#[test]
fn misbehaving_engines_get_their_documented_outcome_and_the_daemon_lives() {
    let chaos = |name: &str, fault: &str, timeout: u64| {
        engine_entry(
            name,
            &chaos_script(),
            &[("CHAOS", fault.to_string())],
            timeout,
        )
    };
    let farm = farm_with(&[
        chaos("crashes", "crash@1", 30),
        chaos("hangs", "hang@1", 3),
        chaos("garbage", "garbage@1", 30),
        chaos("short", "short@1", 30),
        chaos("badsize", "badsize@0", 30),
        chaos("oom", "oom", 30),
    ]);
    let mut daemon = farm.start_daemon();
    for name in ["crashes", "hangs", "garbage", "short", "badsize", "oom"] {
        farm.drop_job(
            &format!("{name}.yaml"),
            &engine_job(&farm, name, name, 2, 2),
        );
    }
    let crashed = wait_finished(&farm, "crashes.yaml");
    let hung = wait_finished(&farm, "hangs.yaml");
    let garbage = wait_finished(&farm, "garbage.yaml");
    let short = wait_finished(&farm, "short.yaml");
    let badsize = wait_finished(&farm, "badsize.yaml");
    let oom = wait_finished(&farm, "oom.yaml");

    // A crash may be transient: retried, then failed with the engine's exit status.
    assert_eq!(crashed["phase"], "failed", "{crashed}");
    assert!(
        error_of(&crashed).contains("engine `crashes` exited during render_clip 1 (exit status 3)"),
        "{crashed}"
    );
    assert!(
        events(&farm, &crashed)
            .iter()
            .any(|e| e["event"] == "retry"),
        "crash was retried"
    );
    // A hang is killed after the heartbeat timeout, then handled like a crash.
    assert_eq!(hung["phase"], "failed", "{hung}");
    assert!(
        error_of(&hung).contains("engine `hangs` sent nothing for 3 s during render_clip 1"),
        "{hung}"
    );
    // A line that is not a message is a broken engine: the job fails at once.
    assert_eq!(garbage["phase"], "failed", "{garbage}");
    assert!(
        error_of(&garbage).contains("engine `garbage` broke the protocol"),
        "{garbage}"
    );
    assert!(
        error_of(&garbage).contains("4/4 [00:01<00:00]"),
        "the bad line is quoted: {garbage}"
    );
    assert!(
        !events(&farm, &garbage)
            .iter()
            .any(|e| e["event"] == "retry"),
        "no retry for a protocol error"
    );
    // Too few frames: the job fails, saying how many came and how many were asked for.
    assert_eq!(short["phase"], "failed", "{short}");
    assert!(
        error_of(&short).contains(
            "engine `short`: clip 1: the engine says it wrote 3 frames; render_clip asked for 4"
        ),
        "{short}"
    );
    // A frames file of the wrong size: the same.
    assert_eq!(badsize["phase"], "failed", "{badsize}");
    assert!(
        error_of(&badsize).contains("engine `badsize`: clip 0:")
            && error_of(&badsize)
                .contains("holds 49153 bytes; 4 frames of 64x64 RGB24 are 49152 bytes"),
        "{badsize}"
    );
    // `oom` takes the out-of-memory path: requeued with offload, and then it renders.
    assert_eq!(oom["phase"], "done", "{oom}");
    let oom_events = events(&farm, &oom);
    assert!(
        oom_events
            .iter()
            .any(|e| e["event"] == "retry" && e["fallback"] == "offload"),
        "{oom_events:?}"
    );
    assert_eq!(probe(&output(&oom)).video_frames, 8);

    assert!(
        daemon.is_running(),
        "the daemon outlived every misbehaving engine"
    );
    // And it still takes work.
    farm.drop_job("after.yaml", &engine_job(&farm, "after", "oom", 1, 2));
    let after = wait_finished(&farm, "after.yaml");
    assert_eq!(after["phase"], "done", "{after}");
}

#[test]
fn a_job_naming_an_unconfigured_engine_is_rejected_at_intake() {
    let farm = farm_with(&[engine_entry("numpy-example", &example_script(), &[], 30)]);
    let mut daemon = farm.start_daemon();
    farm.drop_job(
        "torch.yaml",
        &engine_job(&farm, "torch", "liveavatar-torch", 1, 1),
    );
    let error = wait_for("torch.yaml to be rejected", Duration::from_secs(30), || {
        farm.rejection("torch.yaml")
    });
    assert!(
        error.contains("engine `liveavatar-torch` is not configured"),
        "{error}"
    );
    assert!(
        error.contains("configured engines: numpy-example"),
        "{error}"
    );
    assert!(
        farm.job_by_source("torch.yaml").is_none(),
        "no job was created"
    );
    assert!(daemon.is_running());
}

/// The `yaml` code blocks of README.md's "Bring your own model" section, in order.
fn readme_yaml_blocks() -> Vec<String> {
    let readme = std::fs::read_to_string(repo().join("README.md")).expect("read README.md");
    let start = readme
        .find("\n## Bring your own model\n")
        .expect("README has a \"Bring your own model\" section");
    let section = &readme[start + 1..];
    let section = &section[..section[3..].find("\n## ").map_or(section.len(), |n| n + 3)];
    section
        .split("```yaml\n")
        .skip(1)
        .map(|block| block.split("```").next().unwrap_or_default().to_string())
        .collect()
}

#[test]
fn readme_bring_your_own_model_example_works_as_written() {
    let blocks = readme_yaml_blocks();
    assert_eq!(
        blocks.len(),
        2,
        "a config block and a job block: {blocks:?}"
    );
    // Only the installed locations change: the engine from the source tree, the media and
    // the renders in this test's farm.
    let config = blocks[0].replace(
        "/usr/share/reelspool/engines/python/",
        &format!("{}/", repo().join("engines/python").display()),
    );
    let farm = Farm::new(&format!("{POOL}{config}"));
    let job = blocks[1]
        .replace("/srv/media/", &format!("{}/", farm.media.display()))
        .replace("/srv/renders/", &format!("{}/", farm.out.display()));
    let _daemon = farm.start_daemon();
    farm.drop_job("byo-hello.yaml", &job);
    let state = wait_finished(&farm, "byo-hello.yaml");
    assert_eq!(state["phase"], "done", "{state}");
    let video = probe(&output(&state));
    assert_eq!((video.width, video.height), (256, 256));
    let speech = input_secs(&farm.media.join("hello.wav"));
    assert!(
        (video.video_secs - speech).abs() <= 1.0 / 16.0,
        "{video:?} vs {speech} s of speech"
    );
}

/// SIGTERM to the worker: the clip in progress finishes and is checkpointed, then the engine
/// is asked to shut down and exits; the job resumes and comes out as if never stopped.
#[test]
fn sigterm_shuts_the_engine_down_after_the_clip_checkpoint() {
    const CLIPS: u32 = 16;
    let reference = reference_frames(CLIPS);
    let farm = farm_with(&[engine_entry(
        "numpy-example",
        &chaos_script(),
        &[("CHAOS", "slow".to_string())],
        30,
    )]);
    let _daemon = farm.start_daemon();
    farm.drop_job(
        "term.yaml",
        &engine_job(&farm, "term", "numpy-example", CLIPS, 3),
    );
    wait_event(&farm, "term.yaml", "clip 3 done", |e| {
        e["event"] == "clip_done" && e["index"].as_u64() >= Some(3)
    });
    let state = farm.job_by_source("term.yaml").expect("job");
    wait_gone(signal_worker(&job_dir(&farm, &state), libc::SIGTERM));
    let state = wait_finished(&farm, "term.yaml");
    assert_eq!(state["phase"], "done", "{state}");
    let evs = events(&farm, &state);
    let exit = evs
        .iter()
        .find(|e| e["event"] == "worker_exit")
        .expect("a worker exit");
    assert!(
        exit["end"]
            .as_str()
            .is_some_and(|s| s.starts_with("Interrupted")),
        "{exit}"
    );
    let starts = start_points(&evs);
    assert!(starts.len() == 2 && starts[1] >= 4, "{starts:?}");
    let log =
        std::fs::read_to_string(job_dir(&farm, &state).join("worker.log")).expect("worker log");
    assert!(
        log.matches("shutdown requested").count() == 2,
        "the engine was shut down after the interruption and at the end:\n{log}"
    );
    assert_eq!(frame_digests(&output(&state)), reference);
}

/// SIGKILL of the worker while its engine is busy: the engine dies with it. The killed
/// attempt had made clip 0 durable, so (retries count stalls, not crashes) the job is tried
/// again, and the second attempt, whose engine no longer hangs, finishes it.
#[test]
fn engine_dies_with_a_killed_worker() {
    let farm = farm_with(&[engine_entry(
        "numpy-example",
        &chaos_script(),
        &[("CHAOS", "hang-once@1".to_string())],
        600,
    )]);
    let _daemon = farm.start_daemon();
    farm.drop_job(
        "orphan.yaml",
        &engine_job(&farm, "orphan", "numpy-example", 3, 1),
    );
    wait_event(&farm, "orphan.yaml", "clip 0 done", |e| {
        e["event"] == "clip_done" && e["index"] == 0
    });
    let state = farm.job_by_source("orphan.yaml").expect("job");
    let engines = wait_for("the engine process", RUN, || {
        let pids = engine_processes_under(farm.root.path());
        (!pids.is_empty()).then_some(pids)
    });
    wait_gone(signal_worker(&job_dir(&farm, &state), libc::SIGKILL));
    for pid in engines {
        wait_gone(pid);
    }
    let state = wait_finished(&farm, "orphan.yaml");
    assert_eq!(state["phase"], "done", "progress earns a retry: {state}");
    assert_eq!(state["attempts"], 2, "{state}");
    assert!(engine_processes_under(farm.root.path()).is_empty());
}

/// An engine written from docs/engine-protocol.md alone (no helper, no numpy) renders a job,
/// and a worker killed at several points resumes it to the frames of an uninterrupted run.
#[test]
fn an_engine_written_from_the_protocol_document_survives_worker_kills() {
    let plain = repo().join("tests/engines/plain_engine.py");
    let run = |crash_at: &str| {
        let farm = farm_with(&[engine_entry("plain", &plain, &[], 30)]);
        let _daemon = farm.start_daemon_with_env(&[("REELSPOOL_TEST_CRASH_AT", crash_at)]);
        farm.drop_job("plain.yaml", &engine_job(&farm, "plain", "plain", 4, 10));
        let state = wait_finished(&farm, "plain.yaml");
        assert_eq!(state["phase"], "done", "{state}");
        (
            start_points(&events(&farm, &state)),
            frame_digests(&output(&state)),
        )
    };
    let (starts, reference) = run("");
    assert_eq!(starts, vec![0]);
    let (starts, resumed) = run("mid_encode@1,after_carry@2,after_checkpoint@2");
    assert_eq!(starts.len(), 4, "three kills: {starts:?}");
    assert_eq!(resumed, reference);
}

/// A stop inside a long clip does not wait for the clip: the engine's `progress` shows in
/// `status`, then `cancel` ends the job one stop grace (1 s here) after it reaches the worker,
/// the engine's process group getting SIGTERM, though the engine would sleep ten minutes.
#[test]
fn a_cancel_interrupts_an_engine_sleeping_inside_its_clip_after_the_grace() {
    let sleepy = repo().join("tests/engines/sleepy_engine.py");
    let mut entry = engine_entry("sleepy", &sleepy, &[], 900);
    entry.push_str("    stop_grace_secs: 1\n");
    let farm = farm_with(&[entry]);
    let _daemon = farm.start_daemon();
    farm.drop_job("sleepy.yaml", &engine_job(&farm, "sleepy", "sleepy", 3, 1));
    let state = wait_for("the engine's progress", RUN, || {
        farm.job_by_source("sleepy.yaml")
            .filter(|state| state["details"]["engine_progress"].is_object())
    });
    let id = state["id"].as_str().expect("job id").to_string();
    let status = farm.cli(&["status", &id]);
    let text = String::from_utf8_lossy(&status.stdout);
    assert!(
        text.contains("engine:    clip 0, step 1 of 4: denoising"),
        "{text}"
    );
    let asked = std::time::Instant::now();
    let cancel = farm.cli(&["cancel", &id, "--wait-secs", "60"]);
    let took = asked.elapsed();
    assert!(cancel.status.success(), "{cancel:?}");
    let state = farm.job_by_source("sleepy.yaml").expect("the job");
    assert_eq!(
        state["phase"],
        "cancelled",
        "{state}\n{}",
        farm.daemon_logs()
    );
    // 1 s of grace, then SIGTERM; the margin is for a loaded machine, far below the sleep.
    assert!(took < Duration::from_secs(15), "cancelled after {took:?}");
    wait_for("the engine to be gone", Duration::from_secs(10), || {
        engine_processes_under(farm.root.path())
            .is_empty()
            .then_some(())
    });
}
