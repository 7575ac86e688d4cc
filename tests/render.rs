//! End to end: the real daemon renders jobs with real worker processes, and the videos that
//! come out are checked with the real `ffprobe` and `ffmpeg`. The worker is killed at chosen
//! and at observed moments, the daemon is killed and stopped, checkpoints are damaged: the
//! video must still come out frame for frame identical to an uninterrupted run.

mod common;
#[path = "render/support.rs"]
mod support;

use std::path::Path;
use std::time::Duration;

use common::{wait_for, Farm};
use support::*;

/// 64x64, 12 frames a clip: the 5.03 s speech needs 80 frames, so `auto` makes 7 clips and
/// trims the last to 8 frames.
const AUTO_CLIPS: &str = "  infer_frames: 12\n  sample_steps: 2\n";
/// Slow enough (~60 ms a clip on one core) to be caught mid-job by a test polling the disk.
const SLOW: &str = "  size: 128*128\n  infer_frames: 8\n  sample_steps: 2\n  num_clip: 24\n";

fn slow_job(farm: &Farm, name: &str) -> String {
    job(farm, name, SLOW)
}

fn output_of(state: &serde_json::Value) -> &Path {
    Path::new(
        state["output"]
            .as_str()
            .expect("a done job names its output"),
    )
}

#[test]
fn auto_clip_count_ends_the_video_with_the_speech() {
    let farm = Farm::new(POOL);
    let _daemon = farm.start_daemon();
    farm.drop_job("auto.yaml", &job(&farm, "auto", AUTO_CLIPS));
    let state = wait_finished(&farm, "auto.yaml");
    assert_eq!(state["phase"], "done", "{state}");

    let speech_secs = input_secs(&farm.media.join("hello.wav"));
    let frame_secs = 1.0 / 16.0;
    let video = probe(output_of(&state));
    assert_eq!(
        (video.video_codec.as_str(), video.audio_codec.as_str()),
        ("h264", "aac")
    );
    assert_eq!((video.width, video.height), (64, 64));
    assert_eq!(video.audio_channels, 1, "mono speech stays mono");
    assert!(
        (video.video_secs - speech_secs).abs() <= frame_secs,
        "video {} s vs speech {speech_secs} s",
        video.video_secs
    );
    assert!(
        (video.audio_secs - video.video_secs).abs() < 1e-3,
        "{video:?}"
    );
    assert_eq!(video.video_frames as f64 * frame_secs, video.video_secs);
    // The last clip was cut short: fewer frames than 7 full clips.
    let evs = events(&farm, &state);
    let frames: Vec<u64> = evs
        .iter()
        .filter(|e| e["event"] == "clip_done")
        .map(|e| e["frames"].as_u64().expect("frames"))
        .collect();
    assert_eq!(
        frames.len(),
        speech_secs.div_euclid(12.0 * frame_secs) as usize + 1
    );
    assert!(*frames.last().expect("clips") < 12, "{frames:?}");
    assert_eq!(frames.iter().sum::<u64>(), video.video_frames);
    assert_eq!(
        frame_digests(output_of(&state)).len() as u64,
        video.video_frames
    );
}

#[test]
fn explicit_clip_count_pads_the_audio_with_silence() {
    let farm = Farm::new(POOL);
    let _daemon = farm.start_daemon();
    // 8 clips x 12 frames = 96 frames = 6 s of video for 5.03 s of speech.
    farm.drop_job(
        "long.yaml",
        &job(&farm, "long", &format!("{AUTO_CLIPS}  num_clip: 8\n")),
    );
    let state = wait_finished(&farm, "long.yaml");
    assert_eq!(state["phase"], "done", "{state}");
    let video = probe(output_of(&state));
    assert_eq!(
        (video.video_codec.as_str(), video.audio_codec.as_str()),
        ("h264", "aac")
    );
    assert_eq!(video.video_frames, 8 * 12);
    assert_eq!(video.video_secs, 6.0);
    assert!((video.audio_secs - 6.0).abs() < 1e-3, "{video:?}");
    let speech = audio_peak(output_of(&state), 0.5, 4.5);
    let padding = audio_peak(output_of(&state), 5.25, 5.95);
    assert!(speech > 0.05, "speech peak {speech}");
    assert!(padding < 0.002, "padding must be silent, peak {padding}");
}

#[test]
fn explicit_clip_count_cuts_the_audio() {
    let farm = Farm::new(POOL);
    let _daemon = farm.start_daemon();
    // 2 clips x 12 frames = 1.5 s of the 5.03 s speech.
    farm.drop_job(
        "short.yaml",
        &job(&farm, "short", &format!("{AUTO_CLIPS}  num_clip: 2\n")),
    );
    let state = wait_finished(&farm, "short.yaml");
    assert_eq!(state["phase"], "done", "{state}");
    let video = probe(output_of(&state));
    assert_eq!(
        (video.video_codec.as_str(), video.audio_codec.as_str()),
        ("h264", "aac")
    );
    assert_eq!(video.video_frames, 24);
    assert_eq!(video.video_secs, 1.5);
    assert!((video.audio_secs - 1.5).abs() < 1e-3, "{video:?}");
}

/// Eleven SIGKILLs at exact points of the clip loop, one after another in the same job; each
/// time the daemon retries and the worker resumes from the checkpoint.
#[test]
fn worker_killed_at_every_kind_of_point_resumes_to_identical_frames() {
    let kills = [
        ("after_denoise@0", 0),
        ("mid_encode@1", 1),
        ("after_segment@1", 1),
        ("after_carry@2", 2),
        ("mid_checkpoint@3", 3),
        ("after_checkpoint@3", 4),
        ("mid_encode@4", 4),
        ("after_segment@5", 5),
        ("after_carry@5", 5),
        ("mid_checkpoint@6", 6),
        ("before_assemble@7", 7),
    ];
    let reference = reference_digests(|farm| job(farm, "k", AUTO_CLIPS));
    let farm = Farm::new(POOL);
    let points: Vec<&str> = kills.iter().map(|(point, _)| *point).collect();
    let _daemon = farm.start_daemon_with_env(&[("REELSPOOL_TEST_CRASH_AT", &points.join(","))]);
    farm.drop_job("killed.yaml", &job(&farm, "k", AUTO_CLIPS));
    let state = wait_finished(&farm, "killed.yaml");
    assert_eq!(state["phase"], "done", "{state}");

    let evs = events(&farm, &state);
    let crashes = sigkilled_workers(&evs);
    assert_eq!(crashes, kills.len(), "every point fired once: {evs:?}");
    // Where each attempt started: the first from 0, then after each kill exactly where the
    // last durable checkpoint left off, never earlier.
    let mut expected = vec![0];
    expected.extend(kills.iter().map(|(_, resume_at)| *resume_at as u64));
    assert_eq!(start_points(&evs), expected);
    // Clip 3 was killed after its checkpoint but before it could say so, and was not rendered
    // again. A clip whose carry write was killed on the writer thread (`after_carry`,
    // `mid_checkpoint`) may have said `clip_done` (its segment was durable) before the kill,
    // and says it again when rendered again: at most twice.
    let done = clips_done(&evs);
    let distinct: std::collections::BTreeSet<u64> = done.iter().copied().collect();
    assert_eq!(
        distinct.into_iter().collect::<Vec<_>>(),
        vec![0, 1, 2, 4, 5, 6]
    );
    for clip in [0, 1, 4] {
        let times = done.iter().filter(|&&c| c == clip).count();
        assert_eq!(times, 1, "clip {clip} in {done:?}");
    }
    assert!(
        done.iter()
            .all(|c| done.iter().filter(|&d| d == c).count() <= 2),
        "{done:?}"
    );

    let video = probe(output_of(&state));
    assert_eq!(
        (video.video_codec.as_str(), video.audio_codec.as_str()),
        ("h264", "aac")
    );
    assert_eq!(frame_digests(output_of(&state)), reference);
}

/// The same without online decode: latents go to disk and are decoded at the end, and a kill
/// during that final decode costs nothing already rendered.
#[test]
fn worker_killed_without_online_decode_resumes_to_identical_frames() {
    let offline = format!("{AUTO_CLIPS}  online_decode: false\n");
    let reference = reference_digests(|farm| job(farm, "k", &offline));
    let farm = Farm::new(POOL);
    let _daemon = farm.start_daemon_with_env(&[(
        "REELSPOOL_TEST_CRASH_AT",
        "after_denoise@2,after_carry@4,mid_encode@1,after_segment@5",
    )]);
    farm.drop_job("offline.yaml", &job(&farm, "k", &offline));
    let state = wait_finished(&farm, "offline.yaml");
    assert_eq!(state["phase"], "done", "{state}");
    let evs = events(&farm, &state);
    // The two encode kills come in the final decode pass, after all 7 clips.
    assert_eq!(start_points(&evs), vec![0, 2, 4, 7, 7]);
    let video = probe(output_of(&state));
    assert_eq!(
        (video.video_codec.as_str(), video.audio_codec.as_str()),
        ("h264", "aac")
    );
    assert_eq!(frame_digests(output_of(&state)), reference);
}

/// Kills from outside, at moments read off the job's progress: after a clip is reported done
/// (the kill lands somewhere in the next clip, mostly in the denoiser) and as soon as a
/// segment's partial file appears (mid-encode).
#[test]
fn worker_killed_at_observed_moments_resumes_to_identical_frames() {
    let reference = reference_digests(|farm| slow_job(farm, "s"));
    let farm = Farm::new(POOL);
    let _daemon = farm.start_daemon();
    farm.drop_job("observed.yaml", &slow_job(&farm, "s"));
    let state = wait_for("job dir", RUN, || farm.job_by_source("observed.yaml"));
    let dir = job_dir(&farm, &state);
    for after_clip in [2u64, 6, 11] {
        wait_event(&farm, "observed.yaml", "clip_done", |e| {
            e["event"] == "clip_done" && e["index"].as_u64() >= Some(after_clip)
        });
        wait_gone(signal_worker(&dir, libc::SIGKILL));
    }
    // The encode window is a few milliseconds; try clip after clip until a kill lands in it.
    let mut kills = 3;
    let mut landed_mid_encode = false;
    for clip in 12..20 {
        // A kill can leave the partial file of the clip in progress behind; only a clip after
        // the one this worker resumed at proves a fresh encode.
        let resumed_at = wait_for("the worker to resume", RUN, || {
            let starts = start_points(&events(&farm, &state));
            (starts.len() == 1 + kills).then(|| starts[kills])
        });
        let from = clip.max(resumed_at as u32 + 1);
        let Some(left_partial) = kill_when_segment_starts(&dir, from) else {
            break;
        };
        kills += 1;
        if left_partial {
            landed_mid_encode = true;
            break;
        }
    }
    assert!(
        landed_mid_encode,
        "no kill landed while a segment was being encoded"
    );

    let state = wait_finished(&farm, "observed.yaml");
    assert_eq!(state["phase"], "done", "{state}");
    let evs = events(&farm, &state);
    let starts = start_points(&evs);
    assert_eq!(starts.len(), 1 + kills, "{starts:?}");
    assert!(
        starts[1..].iter().all(|&k| k > 0),
        "every retry resumed: {starts:?}"
    );
    assert!(starts.windows(2).all(|w| w[0] <= w[1]), "{starts:?}");
    let video = probe(output_of(&state));
    assert_eq!(video.video_frames, 24 * 8);
    assert_eq!(frame_digests(output_of(&state)), reference);
}

/// SIGTERM to the worker alone: it checkpoints, says `interrupted`, and the daemon runs it on.
#[test]
fn sigterm_to_the_worker_interrupts_it_resumably() {
    let reference = reference_digests(|farm| slow_job(farm, "t"));
    let farm = Farm::new(POOL);
    let _daemon = farm.start_daemon();
    farm.drop_job("term.yaml", &slow_job(&farm, "t"));
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
    assert_eq!(frame_digests(output_of(&state)), reference);
}

/// SIGTERM to the daemon: the worker checkpoints, the job goes back to `queued`, and the
/// next daemon resumes it.
#[test]
fn daemon_sigterm_leaves_the_job_queued_and_the_next_start_resumes_it() {
    let reference = reference_digests(|farm| slow_job(farm, "d"));
    let farm = Farm::new(POOL);
    let mut daemon = farm.start_daemon();
    farm.drop_job("stop.yaml", &slow_job(&farm, "d"));
    wait_event(&farm, "stop.yaml", "clip 3 done", |e| {
        e["event"] == "clip_done" && e["index"].as_u64() >= Some(3)
    });
    let status = daemon.terminate(Duration::from_secs(60));
    assert!(status.success(), "daemon exit: {status:?}");
    let state = farm.job_by_source("stop.yaml").expect("job");
    assert_eq!(state["phase"], "queued", "{state}");
    let done_before = state["clips_done"].as_u64().expect("clips_done");
    assert!((4..24).contains(&done_before), "{state}");
    assert!(events(&farm, &state)
        .iter()
        .any(|e| e["event"] == "interrupted"));
    assert!(worker_pids(&job_dir(&farm, &state)).is_empty());

    let _daemon = farm.start_daemon();
    let state = wait_finished(&farm, "stop.yaml");
    assert_eq!(state["phase"], "done", "{state}");
    assert_eq!(start_points(&events(&farm, &state)), vec![0, done_before]);
    assert_eq!(frame_digests(output_of(&state)), reference);
}

/// SIGKILL of the daemon mid-job: its worker is in no process relationship that ends it with
/// the daemon, so it renders on (a new clip becomes durable with no daemon at all); the next
/// daemon re-adopts that same process, and the job ends in its first attempt, never resumed
/// (no clip rendered twice, none lost), with the frames of an uninterrupted run.
#[test]
fn daemon_sigkill_mid_job_leaves_the_worker_rendering_and_the_next_start_adopts_it() {
    let reference = reference_digests(|farm| slow_job(farm, "x"));
    let farm = Farm::new(POOL);
    let mut daemon = farm.start_daemon();
    farm.drop_job("crash.yaml", &slow_job(&farm, "x"));
    wait_event(&farm, "crash.yaml", "clip 3 done", |e| {
        e["event"] == "clip_done" && e["index"].as_u64() >= Some(3)
    });
    let state = farm.job_by_source("crash.yaml").expect("job");
    let dir = job_dir(&farm, &state);
    let pid = wait_for("the job's worker", RUN, || {
        worker_pids(&dir).first().copied()
    });
    daemon.kill9();
    let state = farm.job_by_source("crash.yaml").expect("job");
    assert_eq!(state["phase"], "running", "{state}");
    // The worker goes on alone: a later clip becomes durable while no daemon runs.
    let last_clip = |dir: &Path| -> Option<u64> {
        let bytes = std::fs::read(dir.join("work/checkpoint.json")).ok()?;
        serde_json::from_slice::<serde_json::Value>(&bytes).ok()?["last_clip"].as_u64()
    };
    let before = last_clip(&dir).unwrap_or(0);
    wait_for("a clip made durable with the daemon down", RUN, || {
        (last_clip(&dir)? > before).then_some(())
    });
    assert_eq!(worker_pids(&dir), vec![pid], "the same worker renders on");

    let _daemon = farm.start_daemon();
    let state = wait_finished(&farm, "crash.yaml");
    assert_eq!(state["phase"], "done", "{state}");
    assert_eq!(state["attempts"], 1, "no attempt counted: {state}");
    let evs = events(&farm, &state);
    let adopted: Vec<_> = evs.iter().filter(|e| e["event"] == "adopted").collect();
    assert_eq!(adopted.len(), 1, "{evs:?}");
    assert_eq!(adopted[0]["worker_pid"], pid, "{evs:?}");
    assert!(!evs.iter().any(|e| e["event"] == "requeued"), "{evs:?}");
    assert_eq!(start_points(&evs), vec![0], "never resumed: {evs:?}");
    let exits: Vec<_> = evs.iter().filter(|e| e["event"] == "worker_exit").collect();
    assert_eq!(exits.len(), 1, "{exits:?}");
    assert_eq!(exits[0]["end"], "Finished", "{exits:?}");
    assert_eq!(frame_digests(output_of(&state)), reference);
}

/// Stops a slow job after a few clips with the daemon down, damages its work directory with
/// `damage`, and restarts; returns the finished state and the checkpoint's last clip.
fn resume_after_damage(
    name: &str,
    damage: impl FnOnce(&Path, u64),
) -> (Farm, serde_json::Value, u64, Vec<String>) {
    let reference = reference_digests(|farm| slow_job(farm, name));
    let farm = Farm::new(POOL);
    let mut daemon = farm.start_daemon();
    let file = format!("{name}.yaml");
    farm.drop_job(&file, &slow_job(&farm, name));
    wait_event(&farm, &file, "clip 3 done", |e| {
        e["event"] == "clip_done" && e["index"].as_u64() >= Some(3)
    });
    daemon.terminate(Duration::from_secs(60));
    let state = farm.job_by_source(&file).expect("job");
    let work = job_dir(&farm, &state).join("work");
    let checkpoint: serde_json::Value = serde_json::from_slice(
        &std::fs::read(work.join("checkpoint.json")).expect("checkpoint.json"),
    )
    .expect("checkpoint JSON");
    let last = checkpoint["last_clip"].as_u64().expect("last_clip");
    damage(&work, last);
    let _daemon = farm.start_daemon();
    let state = wait_finished(&farm, &file);
    assert_eq!(state["phase"], "done", "{state}");
    (farm, state, last, reference)
}

#[test]
fn garbage_checkpoint_falls_back_to_the_previous_one() {
    let (farm, state, last, reference) = resume_after_damage("garbage", |work, _| {
        std::fs::write(
            work.join("checkpoint.json"),
            b"{\"format_version\": 1, \"last_cl",
        )
        .expect("damage");
    });
    let starts = start_points(&events(&farm, &state));
    assert_eq!(
        starts,
        vec![0, last],
        "resumed after the previous checkpoint"
    );
    assert_eq!(frame_digests(output_of(&state)), reference);
}

#[test]
fn truncated_last_segment_falls_back_to_the_previous_checkpoint() {
    let (farm, state, last, reference) = resume_after_damage("truncated", |work, last| {
        let segment = work.join(format!("clips/{last}.mkv"));
        let bytes = std::fs::read(&segment).expect("segment");
        std::fs::write(&segment, &bytes[..bytes.len() / 2]).expect("damage");
    });
    assert_eq!(start_points(&events(&farm, &state)), vec![0, last]);
    assert_eq!(frame_digests(output_of(&state)), reference);
}

#[test]
fn unusable_checkpoints_restart_the_job_from_the_first_clip() {
    let (farm, state, _, reference) = resume_after_damage("hopeless", |work, last| {
        std::fs::write(work.join("checkpoint.json"), b"not json").expect("damage");
        std::fs::write(work.join(format!("carry-{}.safetensors", last - 1)), b"zz")
            .expect("damage previous carry");
    });
    let evs = events(&farm, &state);
    assert_eq!(start_points(&evs), vec![0, 0]);
    let fresh = evs
        .iter()
        .filter(|e| e["event"] == "started")
        .nth(1)
        .expect("second start");
    let reason = fresh["fresh_reason"].as_str().unwrap_or_default();
    assert!(reason.contains("checkpoint"), "{fresh}");
    assert_eq!(frame_digests(output_of(&state)), reference);
}

/// A file that is not media is refused at intake (issue 25: not after the job waited in the
/// queue), with the file named and what to do; no job, no output.
fn fails_on_bad_input(file_name: &str, needle: &str) {
    let farm = Farm::new(POOL);
    std::fs::write(farm.media.join(file_name), b"this is not a media file\n").expect("write");
    let _daemon = farm.start_daemon();
    let text = job(&farm, "bad", "").replace(
        &format!("{}/{}", farm.media.display(), needle),
        &format!("{}/{file_name}", farm.media.display()),
    );
    farm.drop_job("bad.yaml", &text);
    let error = wait_for("bad.yaml to be refused", Duration::from_secs(60), || {
        farm.rejection("bad.yaml")
    });
    assert!(
        farm.job_by_source("bad.yaml").is_none(),
        "an unreadable input never becomes a job"
    );
    assert!(
        error.contains(file_name),
        "error must name the file: {error}"
    );
    assert!(
        error.contains("convert it"),
        "error must say what to do: {error}"
    );
    assert!(!farm.out.join("bad.mp4").exists());
}

#[test]
fn unreadable_audio_fails_the_job_naming_the_file() {
    fails_on_bad_input("broken.wav", "hello.wav");
}

#[test]
fn unreadable_image_fails_the_job_naming_the_file() {
    fails_on_bad_input("broken.png", "portrait.png");
}
