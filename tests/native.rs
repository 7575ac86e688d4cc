//! End to end, the `native` engine on a Live Avatar release directory: a job whose
//! `engine.model` is a tiny release written here by `wan::release::write_tiny_release` goes
//! through the spool, the real daemon and a real worker on the CPU, and becomes an MP4 whose
//! streams and duration `ffprobe` checks against the speech; a worker SIGKILLed mid-job
//! resumes from its checkpointed device carry to frames identical to an uninterrupted run.

mod common;
#[path = "render/support.rs"]
#[allow(dead_code)]
mod support;

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use common::Farm;
use support::*;

/// Seconds of speech the tests render: at 25 fps, 40 frames, so 3 clips of 16 (13 + 16 + 16,
/// the last one cut).
const SPEECH_SECS: &str = "1.6";

/// Writes the tiny release under the farm's root and a 1.6 s cut of the shipped speech into
/// its media; returns the release directory.
fn setup(farm: &Farm) -> PathBuf {
    let release = farm.root.path().join("liveavatar");
    wan::release::write_tiny_release(&release, 7).expect("write the tiny release");
    cut_speech(farm);
    release.canonicalize().expect("canonical release dir")
}

/// Writes `short.wav`, the first [`SPEECH_SECS`] of the shipped speech, into the farm's media.
fn cut_speech(farm: &Farm) {
    let status = Command::new("ffmpeg")
        .args(["-v", "error", "-nostdin", "-y", "-i"])
        .arg(farm.media.join("hello.wav"))
        .args(["-t", SPEECH_SECS])
        .arg(farm.media.join("short.wav"))
        .status()
        .expect("run ffmpeg");
    assert!(status.success(), "ffmpeg could not cut the speech");
}

/// A 64*64, 16-frame, 1-step job on `release`, fps left out; `render` lines are added.
fn native_job(farm: &Farm, name: &str, release: &Path, render: &str) -> String {
    let text = job(
        farm,
        name,
        &format!(
            "  infer_frames: 16\n{render}engine:\n  kind: native\n  model: {}\n",
            release.display()
        ),
    );
    text.replace("/hello.wav", "/short.wav")
}

fn output_of(state: &serde_json::Value) -> PathBuf {
    PathBuf::from(
        state["output"]
            .as_str()
            .expect("a done job names its output"),
    )
}

/// `examples/tiny-release.yaml` with its paths pointed into `farm`, the speech cut short.
fn example_job(farm: &Farm, release: &Path) -> String {
    let example = Path::new(env!("CARGO_MANIFEST_DIR")).join("../examples/tiny-release.yaml");
    let text = std::fs::read_to_string(&example).expect("read the example job");
    let media = format!("{}/", farm.media.display());
    let out = format!("{}/", farm.out.display());
    text.replace("/srv/media/hello/", &media)
        .replace("hello.wav", "short.wav")
        .replace("/srv/renders/", &out)
        .replace(
            "/srv/models/liveavatar-tiny",
            &release.display().to_string(),
        )
}

#[test]
fn the_example_release_job_becomes_an_mp4_as_long_as_its_speech() {
    let farm = Farm::new(POOL);
    let release = setup(&farm);
    let _daemon = farm.start_daemon();
    farm.drop_job("live.yaml", &example_job(&farm, &release));
    let state = wait_finished(&farm, "live.yaml");
    assert_eq!(state["phase"], "done", "{state}\n{}", farm.daemon_logs());

    let speech = input_secs(&farm.media.join("short.wav"));
    let video = probe(&output_of(&state));
    assert_eq!(
        (video.video_codec.as_str(), video.audio_codec.as_str()),
        ("h264", "aac")
    );
    assert_eq!((video.width, video.height), (64, 64));
    // fps left out: the release's 25, so the speech lasts ceil(1.6 * 25) = 40 frames.
    let frames = (speech * 25.0).ceil() as u64;
    assert_eq!(video.video_frames, frames, "{video:?}");
    assert!(
        (video.video_secs - frames as f64 / 25.0).abs() < 1e-3,
        "{video:?}"
    );
    assert!(
        (video.video_secs - speech).abs() <= 0.04,
        "{video:?} vs {speech} s of speech"
    );
    assert!(
        (video.audio_secs - speech).abs() <= 0.05,
        "{video:?} vs {speech} s of speech"
    );

    // Clip 0 makes 13 frames, the others 16: 40 frames take 3 clips, the last cut to 11.
    let evs = events(&farm, &state);
    let frames_per_clip: Vec<u64> = evs
        .iter()
        .filter(|e| e["event"] == "clip_done")
        .map(|e| e["frames"].as_u64().expect("clip_done frames"))
        .collect();
    assert_eq!(frames_per_clip, vec![13, 16, 11], "{evs:?}");
}

/// A test kill point (`point@clip`) and the clip the attempt after it starts at.
type Kill = (&'static str, u64);

/// Seven clips of the tiny release (13 + 6 × 16 frames, the speech padded with silence).
const SEVEN_CLIPS: &str = "  num_clip: 7\n";

/// Every kind of kill point, once with a checkpoint after every clip (the carry copied to
/// host memory and written on the writer thread) and once every third clip with the carry
/// streamed from the engine into its file on the render thread (a host limit of 1 byte).
/// Each attempt resumes at the clip after the newest complete carry, and the frames equal an
/// uninterrupted run's. (point, clip the attempt after the kill starts at); kills that make
/// no new carry durable cost a retry backoff and come at most twice in a row.
#[test]
fn a_release_job_killed_at_every_kind_of_point_resumes_to_identical_frames() {
    let every_clip = [
        ("after_denoise@0", 0),
        ("after_carry@1", 1),
        ("mid_encode@2", 2),
        ("after_segment@3", 3),
        ("before_carry@4", 4),
        ("mid_checkpoint@5", 5),
        ("after_checkpoint@6", 7),
        ("before_assemble@7", 7),
    ];
    let every_third = [
        ("after_carry@2", 0),
        ("mid_encode@3", 3),
        ("after_segment@4", 3),
        ("before_carry@5", 3),
        ("after_checkpoint@5", 6),
        ("after_denoise@6", 6),
        ("mid_checkpoint@6", 6),
        ("before_assemble@7", 7),
    ];
    let reference = reference_digests(|farm| {
        let release = setup(farm);
        native_job(farm, "reference", &release, SEVEN_CLIPS)
    });
    assert_eq!(reference.len(), 13 + 6 * 16);

    let runs: [(&str, &[Kill], Option<&str>); 2] = [
        ("  checkpoint_every: 1\n", &every_clip, None),
        ("  checkpoint_every: 3\n", &every_third, Some("1")),
    ];
    for (cadence, kills, host_limit) in runs {
        let farm = Farm::new(POOL);
        let release = setup(&farm);
        let points: Vec<&str> = kills.iter().map(|(point, _)| *point).collect();
        let points = points.join(",");
        let mut env = vec![("REELSPOOL_TEST_CRASH_AT", points.as_str())];
        env.extend(host_limit.map(|limit| ("REELSPOOL_CARRY_HOST_LIMIT", limit)));
        let _daemon = farm.start_daemon_with_env(&env);
        let render = format!("{SEVEN_CLIPS}{cadence}");
        farm.drop_job(
            "killed.yaml",
            &native_job(&farm, "killed", &release, &render),
        );
        let state = wait_finished(&farm, "killed.yaml");
        assert_eq!(
            state["phase"],
            "done",
            "{cadence}: {state}\n{}",
            farm.daemon_logs()
        );
        let evs = events(&farm, &state);
        let sigkills = sigkilled_workers(&evs);
        assert_eq!(
            sigkills,
            kills.len(),
            "{cadence}: every point fired once: {evs:?}"
        );
        let mut expected = vec![0];
        expected.extend(kills.iter().map(|(_, resume_at)| *resume_at));
        assert_eq!(start_points(&evs), expected, "{cadence}: {evs:?}");
        let differs: Vec<_> = evs
            .iter()
            .filter(|e| e["event"] == "segment_differs")
            .collect();
        assert!(differs.is_empty(), "{cadence}: {differs:?}");
        assert_eq!(frame_digests(&output_of(&state)), reference, "{cadence}");

        // The worker says how it writes the carry, once per attempt.
        let id = state["id"].as_str().expect("job id");
        let logs = farm.cli(&["logs", id]);
        let text = String::from_utf8_lossy(&logs.stdout);
        let streamed = text.matches("streams it from the engine").count();
        let attempts_rendering = text.matches("rendering clips=").count();
        let expected = if host_limit.is_some() {
            attempts_rendering
        } else {
            0
        };
        assert!(attempts_rendering > 0, "{text}");
        assert_eq!(streamed, expected, "{cadence}:\n{text}");
    }
}

/// The LibTorch build (`--features tch`: releases on `LibTorch<bf16>`, here on the CPU device
/// with PyTorch's deterministic mode on): a job killed mid-render, at a clip boundary and
/// mid-encode, resumes in new worker processes to frames identical to an uninterrupted run.
#[cfg(feature = "tch")]
#[test]
fn on_libtorch_a_release_job_killed_mid_render_resumes_to_identical_frames() {
    const FOUR_CLIPS: &str = "  num_clip: 4\n  checkpoint_every: 1\n";
    let kills: [Kill; 2] = [("after_denoise@1", 1), ("mid_encode@2", 2)];
    let reference = reference_digests(|farm| {
        let release = setup(farm);
        native_job(farm, "reference", &release, FOUR_CLIPS)
    });
    assert_eq!(reference.len(), 13 + 3 * 16);

    let farm = Farm::new(POOL);
    let release = setup(&farm);
    let points: Vec<&str> = kills.iter().map(|(point, _)| *point).collect();
    let points = points.join(",");
    let _daemon = farm.start_daemon_with_env(&[("REELSPOOL_TEST_CRASH_AT", points.as_str())]);
    farm.drop_job(
        "killed.yaml",
        &native_job(&farm, "killed", &release, FOUR_CLIPS),
    );
    let state = wait_finished(&farm, "killed.yaml");
    assert_eq!(state["phase"], "done", "{state}\n{}", farm.daemon_logs());
    let evs = events(&farm, &state);
    let sigkills = evs
        .iter()
        .filter(|e| e["event"] == "worker_exit")
        .filter(|e| e["end"].as_str().is_some_and(|s| s.contains("SIGKILL")))
        .count();
    assert_eq!(sigkills, kills.len(), "every point fired once: {evs:?}");
    let mut expected = vec![0];
    expected.extend(kills.iter().map(|(_, resume_at)| *resume_at));
    assert_eq!(start_points(&evs), expected, "{evs:?}");
    let differs: Vec<_> = evs
        .iter()
        .filter(|e| e["event"] == "segment_differs")
        .collect();
    assert!(differs.is_empty(), "{differs:?}");
    assert_eq!(frame_digests(&output_of(&state)), reference);

    // Every attempt's worker rendered on LibTorch.
    let id = state["id"].as_str().expect("job id");
    let logs = farm.cli(&["logs", id]);
    let text = String::from_utf8_lossy(&logs.stdout);
    let on_libtorch = text.matches("releases run on LibTorch").count();
    assert_eq!(on_libtorch, kills.len() + 1, "{text}");
}

/// One flipped byte in the newest carry of a release job stopped with the daemon: its
/// checksum fails, the job resumes after the previous checkpoint, says so, and its frames
/// are those of an uninterrupted run.
#[test]
fn a_release_jobs_damaged_newest_carry_falls_back_to_the_previous_one() {
    const TWELVE_EVERY_THIRD: &str = "  num_clip: 12\n  checkpoint_every: 3\n";
    let reference = reference_digests(|farm| {
        let release = setup(farm);
        native_job(farm, "reference", &release, TWELVE_EVERY_THIRD)
    });
    let farm = Farm::new(POOL);
    let release = setup(&farm);
    let mut daemon = farm.start_daemon();
    farm.drop_job(
        "bitrot.yaml",
        &native_job(&farm, "bitrot", &release, TWELVE_EVERY_THIRD),
    );
    wait_event(&farm, "bitrot.yaml", "clip 5 done", |e| {
        e["event"] == "clip_done" && e["index"].as_u64() >= Some(5)
    });
    assert!(daemon.terminate(Duration::from_secs(60)).success());
    let state = farm.job_by_source("bitrot.yaml").expect("job");
    assert_eq!(state["phase"], "queued", "stopped mid-job: {state}");
    let work = job_dir(&farm, &state).join("work");
    let read = |file: &str| -> serde_json::Value {
        serde_json::from_slice(&std::fs::read(work.join(file)).expect(file)).expect("JSON")
    };
    let (newest, previous) = (read("checkpoint.json"), read("checkpoint.prev.json"));
    let previous = previous["last_clip"].as_u64().expect("last_clip");
    let carry = work.join(newest["carry"]["file"].as_str().expect("carry file"));
    let mut bytes = std::fs::read(&carry).expect("carry");
    let middle = bytes.len() / 2;
    bytes[middle] ^= 0x01;
    std::fs::write(&carry, &bytes).expect("damage the carry");

    let _daemon = farm.start_daemon();
    let state = wait_finished(&farm, "bitrot.yaml");
    assert_eq!(state["phase"], "done", "{state}");
    let evs = events(&farm, &state);
    assert_eq!(start_points(&evs), vec![0, previous + 1], "{evs:?}");
    let fallback = evs
        .iter()
        .find(|e| e["event"] == "checkpoint_fallback")
        .expect("a fallback event");
    let detail = fallback["detail"].as_str().unwrap_or_default();
    assert!(
        detail.contains("does not match its recorded sha256"),
        "{detail}"
    );
    assert_eq!(frame_digests(&output_of(&state)), reference);
}

/// A checkpoint whose carry the engine refuses (other weights put at the same path while the
/// job was stopped: the job's records agree, the release's digest does not) starts the job
/// over with the reason recorded; it does not fail the job.
#[test]
fn a_carry_made_with_other_weights_at_the_same_path_starts_the_job_over() {
    let farm = Farm::new(POOL);
    let release = setup(&farm);
    let mut daemon = farm.start_daemon();
    farm.drop_job(
        "swapped.yaml",
        &native_job(
            &farm,
            "swapped",
            &release,
            "  num_clip: 12
  checkpoint_every: 1
",
        ),
    );
    let state = common::wait_for("clip 0 done", Duration::from_secs(120), || {
        farm.job_by_source("swapped.yaml")
            .filter(|state| state["clips_done"].as_u64() >= Some(1))
    });
    assert!(daemon.terminate(Duration::from_secs(60)).success());
    let stopped = farm.job_by_source("swapped.yaml").expect("job");
    assert_eq!(stopped["phase"], "queued", "stopped mid-job: {stopped}");
    assert!(
        job_dir(&farm, &state).join("work/checkpoint.json").exists(),
        "a checkpoint to resume from"
    );

    wan::release::write_tiny_release(&release, 8).expect("other weights, same place");
    let _daemon = farm.start_daemon();
    let state = wait_finished(&farm, "swapped.yaml");
    assert_eq!(state["phase"], "done", "{state}\n{}", farm.daemon_logs());
    let evs = events(&farm, &state);
    let starts = start_points(&evs);
    assert_eq!(starts, vec![0, 0], "{evs:?}");
    let reason = evs
        .iter()
        .filter_map(|e| e["fresh_reason"].as_str())
        .next_back()
        .unwrap_or_default();
    assert!(
        reason.contains("refused by the engine") && reason.contains("model"),
        "{evs:?}"
    );
    assert_eq!(probe(&output_of(&state)).video_frames, 13 + 11 * 16);
}

fn config_only_release(farm: &Farm, config: &str) -> PathBuf {
    let dir = farm.root.path().join("config-only");
    let s2v = dir.join(wan::release::S2V_DIR);
    std::fs::create_dir_all(&s2v).expect("mkdir");
    std::fs::write(s2v.join(wan::release::CONFIG_FILE), config).expect("write config");
    dir.canonicalize().expect("canonical dir")
}

#[test]
fn intake_refuses_settings_the_release_cannot_render_and_an_unreadable_config() {
    let farm = Farm::new(POOL);
    cut_speech(&farm);
    let _daemon = farm.start_daemon();
    let tiny = wan::pipeline::LiveAvatarConfig::tiny()
        .to_json()
        .to_string();
    let release = config_only_release(&farm, &tiny);
    // 80*80 passes the job file's rules (multiples of 16) but not the release's (of 64).
    farm.drop_job(
        "size.yaml",
        &native_job(&farm, "size", &release, "  size: 80*80\n"),
    );
    farm.drop_job(
        "guide.yaml",
        &native_job(&farm, "guide", &release, "  guide_scale: 2\n"),
    );
    let broken = farm.root.path().join("broken");
    std::fs::create_dir_all(broken.join(wan::release::S2V_DIR)).expect("mkdir");
    std::fs::write(
        broken
            .join(wan::release::S2V_DIR)
            .join(wan::release::CONFIG_FILE),
        "{ not json",
    )
    .expect("write config");
    farm.drop_job(
        "broken.yaml",
        &native_job(&farm, "broken", &broken.canonicalize().expect("dir"), ""),
    );
    for (file, expected) in [
        ("size.yaml", "the width must be a positive multiple of 64"),
        ("guide.yaml", "set render.guide_scale to 0"),
        ("broken.yaml", "config cannot be used"),
    ] {
        let error = common::wait_for(&format!("{file} rejected"), RUN, || farm.rejection(file));
        assert!(error.contains(expected), "{file}: {error}");
        assert!(error.contains("= help:"), "{file}: {error}");
    }
    assert!(farm.job_by_source("size.yaml").is_none());
}
