//! End to end, `render.checkpoint_every`: the carry is checkpointed every N clips on a
//! background thread while segments stay durable after every clip. A worker SIGKILLed at each
//! of its kill points resumes at the clip after the newest complete carry and renders frames
//! identical to an uninterrupted run; a damaged newest carry falls back to the previous one;
//! a carry written for another seed is refused with the reason. Real daemon, real workers,
//! real signals, real ffmpeg.

mod common;
#[path = "render/support.rs"]
#[allow(dead_code)]
mod support;

use std::path::Path;
use std::time::Duration;

use common::Farm;
use support::*;

/// 64x64, 4 frames of 1 step a clip, 12 clips: checkpoints after clips 2, 5, 8 and 11.
const EVERY_THIRD: &str = "  num_clip: 12\n  checkpoint_every: 3\n";
/// Slow enough to be stopped mid-job: 24 clips of 128*128, a checkpoint every 3.
const SLOW_EVERY_THIRD: &str =
    "  size: 128*128\n  infer_frames: 8\n  sample_steps: 2\n  num_clip: 24\n  checkpoint_every: 3\n";

fn output_of(state: &serde_json::Value) -> &Path {
    Path::new(state["output"].as_str().expect("a done job names its output"))
}

fn events_named<'a>(evs: &'a [serde_json::Value], name: &str) -> Vec<&'a serde_json::Value> {
    evs.iter().filter(|e| e["event"] == name).collect()
}

/// Every kind of kill point, with a checkpoint every third clip. Main-thread points land with
/// the writer settled; the writer's own points (`after_carry`, `mid_checkpoint`) land while
/// the main thread renders the next clip. Each attempt resumes after the newest complete
/// carry, so up to three clips are rendered again, and their segments already on disk are
/// kept because they come out the same.
#[test]
fn every_third_clip_checkpointed_and_killed_at_every_kind_of_point_gives_identical_frames() {
    // (point, clip the attempt after the kill starts at). An attempt that makes no new
    // carry durable waits out a retry backoff (2 s), so each kill that costs a carry comes
    // right after one that did not.
    let kills = [
        ("after_carry@2", 0),
        ("mid_encode@3", 3),
        ("after_segment@4", 3),
        ("after_checkpoint@5", 6),
        ("mid_checkpoint@8", 6),
        ("after_denoise@9", 9),
        ("before_assemble@12", 12),
    ];
    let reference = reference_digests(|farm| job(farm, "k3", EVERY_THIRD));
    let farm = Farm::new(POOL);
    let points: Vec<&str> = kills.iter().map(|(point, _)| *point).collect();
    let _daemon = farm.start_daemon_with_env(&[("REELSPOOL_TEST_CRASH_AT", &points.join(","))]);
    farm.drop_job("k3.yaml", &job(&farm, "k3", EVERY_THIRD));
    let state = wait_finished(&farm, "k3.yaml");
    assert_eq!(state["phase"], "done", "{state}");

    let evs = events(&farm, &state);
    let crashes = events_named(&evs, "worker_exit")
        .iter()
        .filter(|e| e["end"].as_str().is_some_and(|s| s.contains("SIGKILL")))
        .count();
    assert_eq!(crashes, kills.len(), "every point fired once: {evs:?}");
    let mut expected = vec![0];
    expected.extend(kills.iter().map(|(_, resume_at)| *resume_at as u64));
    assert_eq!(start_points(&evs), expected);
    // Clips after the newest carry were rendered again (0 and 1 by the first two attempts,
    // 3 by the third and fourth; 4 was killed before it could report), and none came out
    // different. Clip 5 was killed after its checkpoint, before its report, and not
    // rendered again.
    let done = clips_done(&evs);
    for (clip, times) in [(0, 2), (1, 2), (3, 2), (4, 1), (5, 0)] {
        let seen = done.iter().filter(|&&c| c == clip).count();
        assert_eq!(seen, times, "clip {clip} in {done:?}");
    }
    assert!(
        events_named(&evs, "segment_differs").is_empty(),
        "{:?}",
        events_named(&evs, "segment_differs")
    );
    // The kill between moving the old checkpoint aside and writing the new one: the next
    // attempt says it fell back.
    let fallbacks = events_named(&evs, "checkpoint_fallback");
    assert_eq!(fallbacks.len(), 1, "{evs:?}");
    let detail = fallbacks[0]["detail"].as_str().unwrap_or_default();
    assert!(detail.contains("checkpoint.json is missing"), "{detail}");
    assert!(detail.contains("after clip 5"), "{detail}");

    let video = probe(output_of(&state));
    assert_eq!(
        (video.video_codec.as_str(), video.audio_codec.as_str()),
        ("h264", "aac")
    );
    assert_eq!(frame_digests(output_of(&state)), reference);

    let id = state["id"].as_str().expect("id");
    let status = farm.cli(&["status", id]);
    let text = String::from_utf8_lossy(&status.stdout);
    assert!(status.status.success(), "{text}");
    assert!(
        text.contains("resumed:   clip 12 of 12 (the clip after the newest checkpoint)"),
        "{text}"
    );
}

/// Stops a slow every-third-clip job with the daemon down after a few clips, lets `change`
/// edit its job directory, and starts the daemon again; returns the farm, the finished state
/// and the `last_clip` of the checkpoint and of the previous one before the change.
fn restart_after(
    name: &str,
    change: impl FnOnce(&Path, &serde_json::Value),
) -> (Farm, serde_json::Value, u64, u64) {
    let farm = Farm::new(POOL);
    let mut daemon = farm.start_daemon();
    let file = format!("{name}.yaml");
    farm.drop_job(&file, &job(&farm, name, SLOW_EVERY_THIRD));
    wait_event(&farm, &file, "clip 7 done", |e| {
        e["event"] == "clip_done" && e["index"].as_u64() >= Some(7)
    });
    daemon.terminate(Duration::from_secs(60));
    let state = farm.job_by_source(&file).expect("job");
    let dir = job_dir(&farm, &state);
    let read = |file: &str| -> serde_json::Value {
        serde_json::from_slice(&std::fs::read(dir.join("work").join(file)).expect(file))
            .expect("checkpoint JSON")
    };
    let (newest, previous) = (read("checkpoint.json"), read("checkpoint.prev.json"));
    change(&dir, &newest);
    let _daemon = farm.start_daemon();
    let state = wait_finished(&farm, &file);
    assert_eq!(state["phase"], "done", "{state}");
    (
        farm,
        state,
        newest["last_clip"].as_u64().expect("last_clip"),
        previous["last_clip"].as_u64().expect("last_clip"),
    )
}

/// One flipped byte in the newest carry: its checksum fails, the job resumes after the
/// previous checkpoint, says so in an event and in `reelspool status`, and its frames are
/// those of an uninterrupted run.
#[test]
fn a_damaged_newest_carry_falls_back_to_the_previous_one() {
    let reference = reference_digests(|farm| job(farm, "bitrot", SLOW_EVERY_THIRD));
    let (farm, state, newest, previous) = restart_after("bitrot", |dir, checkpoint| {
        let carry = dir
            .join("work")
            .join(checkpoint["carry"]["file"].as_str().expect("carry file"));
        let mut bytes = std::fs::read(&carry).expect("carry");
        let middle = bytes.len() / 2;
        bytes[middle] ^= 0x01;
        std::fs::write(&carry, &bytes).expect("damage the carry");
    });
    assert!(previous < newest, "{previous} {newest}");
    let evs = events(&farm, &state);
    assert_eq!(start_points(&evs), vec![0, previous + 1]);
    let fallbacks = events_named(&evs, "checkpoint_fallback");
    assert_eq!(fallbacks.len(), 1, "{evs:?}");
    let detail = fallbacks[0]["detail"].as_str().unwrap_or_default();
    assert!(detail.contains("does not match its recorded sha256"), "{detail}");
    assert!(detail.contains(&format!("after clip {previous}")), "{detail}");
    assert!(events_named(&evs, "segment_differs").is_empty(), "{evs:?}");
    assert_eq!(frame_digests(output_of(&state)), reference);

    let id = state["id"].as_str().expect("id");
    let status = farm.cli(&["status", id]);
    let text = String::from_utf8_lossy(&status.stdout);
    assert!(
        text.contains(&format!("resumed:   clip {} of 24", previous + 1)),
        "{text}"
    );
    assert!(text.contains("resumed from the previous one"), "{text}");
}

/// The job directory's settings changed to another seed while its checkpoints were written
/// with the old one: the carry is refused with the reason, the job starts again from clip 0,
/// and renders what a job with the new seed renders.
#[test]
fn a_carry_written_for_another_seed_is_refused_with_the_reason() {
    let reseeded = format!("{SLOW_EVERY_THIRD}  seed: 7\n");
    let reference = reference_digests(|farm| job(farm, "seed", &reseeded));
    let (farm, state, _, _) = restart_after("seed", |dir, _| {
        let path = dir.join("job.yaml");
        let yaml = std::fs::read_to_string(&path).expect("job.yaml");
        assert!(yaml.contains("seed: 42"), "{yaml}");
        std::fs::write(&path, yaml.replace("seed: 42", "seed: 7")).expect("edit job.yaml");
    });
    let evs = events(&farm, &state);
    assert_eq!(start_points(&evs), vec![0, 0]);
    let restart = events_named(&evs, "started")[1];
    let reason = restart["fresh_reason"].as_str().unwrap_or_default();
    assert!(reason.contains("checkpoint refused"), "{restart}");
    assert!(reason.contains("seed 42 (this job: 7)"), "{restart}");
    assert_eq!(frame_digests(output_of(&state)), reference);
}
