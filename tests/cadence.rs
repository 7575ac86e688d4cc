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
    Path::new(
        state["output"]
            .as_str()
            .expect("a done job names its output"),
    )
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
    let crashes = sigkilled_workers(&evs);
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
    assert!(
        detail.contains("does not match its recorded sha256"),
        "{detail}"
    );
    assert!(
        detail.contains(&format!("after clip {previous}")),
        "{detail}"
    );
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

/// A tmpfs of `size` mounted on `path` for one test, unmounted (lazily) when dropped.
struct SmallDisk {
    path: std::path::PathBuf,
}

impl SmallDisk {
    fn mount(path: &Path, size: &str) -> Result<SmallDisk, String> {
        use std::os::unix::ffi::OsStrExt;
        std::fs::create_dir_all(path).map_err(|e| format!("mkdir {}: {e}", path.display()))?;
        let target =
            std::ffi::CString::new(path.as_os_str().as_bytes()).map_err(|e| e.to_string())?;
        let options =
            std::ffi::CString::new(format!("size={size},mode=0755")).map_err(|e| e.to_string())?;
        // SAFETY: mount(2) with valid C strings on a folder this test owns.
        let rc = unsafe {
            libc::mount(
                c"tmpfs".as_ptr(),
                target.as_ptr(),
                c"tmpfs".as_ptr(),
                0,
                options.as_ptr().cast(),
            )
        };
        if rc != 0 {
            return Err(std::io::Error::last_os_error().to_string());
        }
        Ok(SmallDisk {
            path: path.to_path_buf(),
        })
    }

    /// Fills the file system until only about `leave` bytes are free; returns the filler.
    fn fill_leaving(&self, leave: u64) -> std::path::PathBuf {
        use std::io::Write;
        let filler = self.path.join("filler");
        let mut file = std::fs::File::create(&filler).expect("create filler");
        let chunk = vec![0x5a_u8; 64 << 10];
        while matches!(file.write(&chunk), Ok(n) if n > 0) {}
        while matches!(file.write(&[0x5a_u8; 512]), Ok(n) if n > 0) {}
        let full = file.metadata().expect("filler size").len();
        file.set_len(full.saturating_sub(leave))
            .expect("give some space back");
        file.sync_all().expect("sync filler");
        filler
    }
}

impl Drop for SmallDisk {
    fn drop(&mut self) {
        use std::os::unix::ffi::OsStrExt;
        if let Ok(target) = std::ffi::CString::new(self.path.as_os_str().as_bytes()) {
            // SAFETY: umount2 of the tmpfs this guard mounted.
            unsafe { libc::umount2(target.as_ptr(), libc::MNT_DETACH) };
        }
    }
}

/// Room for segments but not for a carry: each checkpoint is skipped with an event and the
/// previous one kept while the job renders on; after three in a row the worker stops where
/// its progress is durable, the job waits for space (it does not fail), and once space is
/// freed it resumes after the last checkpoint that was written and renders identical frames.
#[test]
fn checkpoints_without_room_are_skipped_then_the_job_waits_for_space() {
    let render = "  size: 128*128\n  infer_frames: 8\n  sample_steps: 2\n  num_clip: 24\n";
    let reference = reference_digests(|farm| job(farm, "room", render));
    let farm = Farm::new(POOL);
    let disk = match SmallDisk::mount(&farm.state, "16m") {
        Ok(disk) => disk,
        Err(why) => {
            eprintln!("SKIPPED: this test needs root to mount a tmpfs (CI runs it as root): {why}");
            return;
        }
    };
    let _daemon = farm.start_daemon();
    farm.drop_job("room.yaml", &job(&farm, "room", render));
    wait_event(&farm, "room.yaml", "clip 2 done", |e| {
        e["event"] == "clip_done" && e["index"].as_u64() >= Some(2)
    });
    // Far less than a checkpoint's 1 MiB of slack, plenty for a few 128*128 segments.
    let filler = disk.fill_leaving(600 << 10);
    let skipped = wait_event(&farm, "room.yaml", "a skipped checkpoint", |e| {
        e["event"] == "checkpoint_skipped"
    });
    let detail = skipped["detail"].as_str().unwrap_or_default();
    assert!(detail.contains("no space for the checkpoint"), "{detail}");
    assert!(
        detail.contains("the previous checkpoint is kept"),
        "{detail}"
    );
    common::wait_for("the daemon to report the full disk", RUN, || {
        farm.daemon_logs()
            .contains("disk full: the job waits for disk space")
            .then_some(())
    });
    let state = farm.job_by_source("room.yaml").expect("job");
    assert!(
        matches!(state["phase"].as_str(), Some("queued" | "running")),
        "a full disk must not end the job: {state}"
    );
    let evs = events(&farm, &state);
    let skips: Vec<u64> = evs
        .iter()
        .filter(|e| e["event"] == "checkpoint_skipped")
        .filter_map(|e| e["clip"].as_u64())
        .collect();
    assert_eq!(skips.len(), 3, "{evs:?}");
    assert!(skips.windows(2).all(|w| w[1] == w[0] + 1), "{skips:?}");
    // Segments went on after the first skip: the clips after it were reported done.
    let done_after_skip = clips_done(&evs)
        .into_iter()
        .filter(|&c| c >= skips[0])
        .count();
    assert!(done_after_skip >= 2, "{evs:?}");

    std::fs::remove_file(&filler).expect("free the space");
    let state = wait_finished(&farm, "room.yaml");
    assert_eq!(state["phase"], "done", "{state}");
    let evs = events(&farm, &state);
    // Resumed right after the last checkpoint that was written, before the first skip.
    assert_eq!(start_points(&evs), vec![0, skips[0]]);
    assert_eq!(frame_digests(output_of(&state)), reference);
    drop(_daemon);
}

/// `checkpoint_every: auto` on the tiny model: the job reports the interval it picked from its
/// measurements, ends with a checkpoint of its last clip, and renders the frames a job that
/// checkpoints every clip renders.
#[test]
fn auto_cadence_reports_its_interval_and_changes_no_frame() {
    let reference = reference_digests(|farm| job(farm, "auto", "  num_clip: 12\n"));
    let farm = Farm::new(POOL);
    let _daemon = farm.start_daemon();
    let text = job(&farm, "auto", "  num_clip: 12\n  checkpoint_every: auto\n");
    farm.drop_job("auto.yaml", &text);
    let state = wait_finished(&farm, "auto.yaml");
    assert_eq!(state["phase"], "done", "{state}");
    let evs = events(&farm, &state);
    let cadence = events_named(&evs, "checkpoint_cadence");
    let first = cadence.first().expect("auto reports its interval");
    let detail = first["detail"].as_str().unwrap_or_default();
    let every: u32 = detail
        .strip_prefix("checkpoint every ")
        .and_then(|rest| rest.split(' ').next())
        .and_then(|n| n.parse().ok())
        .unwrap_or_else(|| panic!("no interval in {detail:?}"));
    for event in &cadence {
        eprintln!("auto on the tiny model: {}", event["detail"]);
    }
    assert!(every >= 1, "{detail}");
    assert!(detail.contains("MB/s"), "{detail}");
    let checkpoint: serde_json::Value = serde_json::from_slice(
        &std::fs::read(job_dir(&farm, &state).join("work/checkpoint.json")).expect("checkpoint"),
    )
    .expect("checkpoint JSON");
    assert_eq!(checkpoint["last_clip"], 11, "{checkpoint}");
    assert_eq!(frame_digests(output_of(&state)), reference);
}
