//! End to end, the promises of README's "Reliability" section: retries count attempts that
//! make no progress rather than crashes, a full disk loses nothing, and a storm of SIGKILLs
//! to workers and daemon still ends with every job done, once, frame for frame identical to
//! an uninterrupted run. Real daemon, real workers, real signals, real tmpfs mounts.

mod common;
#[path = "render/support.rs"]
#[allow(dead_code)]
mod support;

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use common::Farm;
use support::*;

/// 64x64, 4 frames, 1 step: a few tens of milliseconds a clip.
fn tiny_job(farm: &Farm, name: &str, render: &str, retry: Option<u32>) -> String {
    let mut text = farm.job_yaml(name, render);
    if let Some(max) = retry {
        text.push_str(&format!("retry:\n  max_attempts: {max}\n"));
    }
    text
}

/// A storm job: larger frames than [`tiny_job`], so that an uninterrupted attempt lasts
/// longer than the storm's one second between kills even on an idle machine (at 64*64 a
/// whole job took 0.3 s here and most jobs finished before any kill reached them).
fn storm_job(farm: &Farm, name: &str, render: &str, retry: Option<u32>) -> String {
    tiny_job(farm, name, render, retry)
        .replace("size: 64*64", "size: 128*128")
        .replace("infer_frames: 4", "infer_frames: 8")
}

fn worker_exits(evs: &[serde_json::Value]) -> Vec<&serde_json::Value> {
    evs.iter().filter(|e| e["event"] == "worker_exit").collect()
}

/// Default retries (3 attempts in a row without progress), and a SIGKILL after every clip's
/// checkpoint, before the worker can report the clip: each attempt made one clip durable, so
/// the job finishes however many kills it takes, and says so attempt by attempt.
#[test]
fn a_job_killed_after_every_clip_finishes_under_default_retries() {
    const CLIPS: u32 = 101;
    let render = format!("  num_clip: {CLIPS}\n");
    let reference = reference_digests(|farm| tiny_job(farm, "many", &render, None));
    let farm = Farm::new(POOL);
    let points: Vec<String> = (0..CLIPS - 1)
        .map(|clip| format!("after_checkpoint@{clip}"))
        .collect();
    let _daemon = farm.start_daemon_with_env(&[("REELSPOOL_TEST_CRASH_AT", &points.join(","))]);
    farm.drop_job("many.yaml", &tiny_job(&farm, "many", &render, None));
    let state = wait_finished(&farm, "many.yaml");
    assert_eq!(state["phase"], "done", "{state}");
    let kills = points.len() as u64;
    assert_eq!(state["attempts"], kills + 1, "{state}");
    assert_eq!(state["stalled_attempts"], 0, "{state}");

    let evs = events(&farm, &state);
    let exits = worker_exits(&evs);
    assert_eq!(exits.len() as u64, kills + 1);
    for (n, exit) in exits.iter().enumerate() {
        assert_eq!(exit["attempt"], n as u64 + 1, "{exit}");
        assert_eq!(exit["progressed"], true, "{exit}");
    }
    for exit in &exits[..exits.len() - 1] {
        let end = exit["end"].as_str().unwrap_or_default();
        // Sent by the test, not by the daemon and not by the kernel's OOM killer.
        assert!(end.contains("SIGKILL (9)"), "{end}");
        assert!(end.contains("not sent by the daemon"), "{end}");
        assert!(!end.contains("out of memory"), "{end}");
    }
    // Every attempt after the first resumed one clip further than the one before.
    let expected: Vec<u64> = (0..u64::from(CLIPS)).collect();
    assert_eq!(start_points(&evs), expected);
    let retries: Vec<_> = evs.iter().filter(|e| e["event"] == "retry").collect();
    assert_eq!(retries.len() as u64, kills);
    assert!(
        retries
            .iter()
            .all(|r| r["progressed"] == true && r["backoff_secs"] == 0.0),
        "no backoff after progress: {retries:?}"
    );

    let id = state["id"].as_str().expect("id");
    let status = farm.cli(&["status", id]);
    let text = String::from_utf8_lossy(&status.stdout);
    assert!(status.status.success(), "{text}");
    assert!(
        text.contains(&format!("attempts:  {} (0 in a row", kills + 1)),
        "{text}"
    );
    assert!(
        text.contains(&format!("attempt ends (last 10 of {})", kills + 1)),
        "{text}"
    );
    assert!(text.contains("progressed"), "{text}");
    assert_eq!(
        frame_digests(Path::new(state["output"].as_str().expect("output"))),
        reference
    );
}

/// Attempts that make no clip durable are bounded by `retry.max_attempts`, with a backoff
/// before each further one; an attempt with progress in between starts the count again. The
/// worker crashes with SIGABRT, a crash the job itself may cause (a SIGKILL from outside would
/// be an eviction, bounded by `retry.max_evictions` instead).
#[test]
fn attempts_in_a_row_without_progress_fail_the_job_after_a_backoff() {
    let farm = Farm::new(POOL);
    // Attempt 1 checkpoints clip 0 and dies in clip 1 (progress); attempts 2 and 3 die in
    // clip 1 before its checkpoint (no progress).
    let _daemon = farm.start_daemon_with_env(&[
        (
            "REELSPOOL_TEST_CRASH_AT",
            "after_denoise@1,after_segment@1,mid_checkpoint@1",
        ),
        ("REELSPOOL_TEST_CRASH_SIGNAL", "SIGABRT"),
    ]);
    farm.drop_job(
        "stall.yaml",
        &tiny_job(&farm, "stall", "  num_clip: 4\n", Some(2)),
    );
    let state = wait_finished(&farm, "stall.yaml");
    assert_eq!(state["phase"], "failed", "{state}");
    assert_eq!(state["attempts"], 3, "{state}");
    assert_eq!(state["stalled_attempts"], 2, "{state}");
    let error = state["error"].as_str().unwrap_or_default();
    assert!(
        error.contains("2 attempts in a row made no new clip durable"),
        "{error}"
    );
    assert!(error.contains("SIGABRT (6)"), "{error}");
    assert!(!farm.out.join("stall.mp4").exists());

    let evs = events(&farm, &state);
    let progressed: Vec<_> = worker_exits(&evs)
        .iter()
        .map(|e| e["progressed"].clone())
        .collect();
    assert_eq!(progressed, [true, false, false]);
    let retries: Vec<_> = evs.iter().filter(|e| e["event"] == "retry").collect();
    assert_eq!(retries.len(), 2, "{retries:?}");
    assert_eq!(retries[0]["backoff_secs"], 0.0);
    assert_eq!(retries[1]["backoff_secs"], 2.0);
    // The third attempt started no sooner than the backoff allowed.
    let retried_at = retries[1]["ts_ms"].as_u64().expect("ts");
    let third = evs
        .iter()
        .filter(|e| e["event"] == "running")
        .nth(2)
        .expect("a third attempt");
    assert!(
        third["ts_ms"].as_u64().expect("ts") >= retried_at + 2000,
        "{third} came before the 2 s backoff after {}",
        retries[1]
    );
}

/// A job waiting out its backoff is still waiting after a daemon SIGKILL and restart (the
/// wait is kept with the job and in the queue index), and a cancel reaches it there.
#[test]
fn a_backoff_outlives_a_daemon_restart_and_can_be_cancelled() {
    let farm = Farm::new(POOL);
    // Three attempts in a row die in clip 0 before its checkpoint: backoffs of 2 s, 4 s, 8 s.
    let mut daemon = farm.start_daemon_with_env(&[(
        "REELSPOOL_TEST_CRASH_AT",
        "after_denoise@0,mid_encode@0,after_segment@0",
    )]);
    farm.drop_job(
        "waits.yaml",
        &tiny_job(&farm, "waits", "  num_clip: 4\n", Some(5)),
    );
    let long_wait = |farm: &Farm| {
        let state = farm.job_by_source("waits.yaml")?;
        let evs = events(farm, &state);
        evs.iter()
            .any(|e| e["event"] == "retry" && e["backoff_secs"] == 8.0)
            .then_some(state)
    };
    let state = common::wait_for("the 8 s backoff", Duration::from_secs(60), || {
        long_wait(&farm)
    });
    daemon.kill9();
    let _daemon = farm.start_daemon();
    let id = state["id"].as_str().expect("id").to_string();
    let cancel = farm.cli(&["cancel", &id, "--wait-secs", "30"]);
    assert!(cancel.status.success(), "{cancel:?}");
    let state = wait_finished(&farm, "waits.yaml");
    assert_eq!(state["phase"], "cancelled", "{state}");
    let attempts = events(&farm, &state)
        .iter()
        .filter(|e| e["event"] == "running")
        .count();
    assert_eq!(attempts, 3, "no attempt may start during the backoff");
}

/// Live `reelspool worker` processes of any job under `jobs_dir`.
fn storm_workers(jobs_dir: &Path) -> Vec<i32> {
    let prefix = jobs_dir.as_os_str().as_encoded_bytes();
    live_workers(|dir| dir.starts_with(prefix))
}

/// The names of the plain entries of a folder (dot files included).
fn entries(dir: &Path) -> BTreeSet<String> {
    std::fs::read_dir(dir)
        .map(|entries| {
            entries
                .flatten()
                .map(|e| e.file_name().to_string_lossy().into_owned())
                .collect()
        })
        .unwrap_or_default()
}

/// 30 jobs on 2 CPU slots under default retry settings; every second each live worker gets
/// SIGKILL, every 5 s the daemon gets SIGKILL and a new one starts. Every job must end done
/// with exactly one output whose frames match an uninterrupted run, and every job directory
/// must exist exactly once. The kills come from outside, so they are evictions: bounded by
/// `retry.max_evictions`, not by the 3 attempts of `retry.max_attempts`.
#[test]
fn kill_storm_loses_nothing_and_changes_no_frame() {
    const JOBS: usize = 30;
    const STORM_POOL: &str = "gpu_pool: { kind: cpu, slots: 2, failure_drain_threshold: 100000 }\n";
    let render = "  num_clip: 32\n";
    let reference = reference_digests(|farm| storm_job(farm, "ref", render, None));
    let farm = Farm::new(STORM_POOL);
    let mut daemon = farm.start_daemon();
    let names: Vec<String> = (0..JOBS).map(|n| format!("storm-{n:02}")).collect();
    for name in &names {
        farm.drop_job(
            &format!("{name}.yaml"),
            &storm_job(&farm, name, render, None),
        );
    }
    let finished = |farm: &Farm| {
        farm.job_states()
            .iter()
            .filter(|s| matches!(s["phase"].as_str(), Some("done" | "failed" | "cancelled")))
            .count()
    };
    let deadline = Instant::now() + Duration::from_secs(360);
    let mut last_daemon_kill = Instant::now();
    let (mut worker_kills, mut daemon_kills) = (0, 0);
    while finished(&farm) < JOBS {
        assert!(
            Instant::now() < deadline,
            "storm: {} of {JOBS} jobs finished after {worker_kills} worker and {daemon_kills} \
             daemon kills\n{}",
            finished(&farm),
            farm.daemon_logs()
        );
        // The storm's own pace, not a wait for a condition.
        std::thread::sleep(Duration::from_secs(1));
        for pid in storm_workers(&farm.jobs_dir()) {
            // SAFETY: kill() on a worker pid read from /proc.
            unsafe { libc::kill(pid, libc::SIGKILL) };
            worker_kills += 1;
        }
        if last_daemon_kill.elapsed() >= Duration::from_secs(5) {
            daemon.kill9();
            daemon_kills += 1;
            daemon = farm.start_daemon();
            last_daemon_kill = Instant::now();
        }
    }
    eprintln!("storm over: {worker_kills} worker kills, {daemon_kills} daemon kills");
    assert!(
        worker_kills >= 10 && daemon_kills >= 2,
        "too calm a storm to prove anything: {worker_kills} worker, {daemon_kills} daemon kills"
    );
    // The last daemon stops as a service does; one killed mid-listing would leave its hidden
    // marker in incoming/ until the next start removes it (intake's unit tests cover that).
    daemon.terminate(Duration::from_secs(60));

    let states = farm.job_states();
    assert_eq!(states.len(), JOBS, "one job per file");
    let sources: BTreeSet<String> = states
        .iter()
        .map(|s| s["source_file"].as_str().unwrap_or_default().to_string())
        .collect();
    let expected: BTreeSet<String> = names.iter().map(|n| format!("{n}.yaml")).collect();
    assert_eq!(sources, expected);
    let dirs: BTreeSet<String> = entries(&farm.jobs_dir())
        .into_iter()
        .filter(|name| !name.starts_with('.'))
        .collect();
    let ids: BTreeSet<String> = states
        .iter()
        .map(|s| s["id"].as_str().unwrap_or_default().to_string())
        .collect();
    assert_eq!(dirs, ids, "no job directory lost or duplicated");
    assert_eq!(entries(&farm.incoming()), BTreeSet::new());
    assert_eq!(entries(&farm.spool.join("rejected")), BTreeSet::new());
    let outputs: BTreeSet<String> = names.iter().map(|n| format!("{n}.mp4")).collect();
    let found = entries(&farm.out);
    let odd: Vec<String> = states
        .iter()
        .filter(|s| {
            let name = format!("{}.mp4", s["name"].as_str().unwrap_or_default());
            s["phase"] != "done" || !found.contains(&name)
        })
        .map(|s| {
            let log: Vec<String> = events(&farm, s).iter().map(|e| e.to_string()).collect();
            format!("{s}\n  {}", log.join("\n  "))
        })
        .collect();
    assert!(
        odd.is_empty(),
        "jobs not done or without output:\n{}\n{}",
        odd.join("\n"),
        farm.daemon_logs()
    );
    assert_eq!(found, outputs, "exactly one output each, nothing else");
    // The storm hit the jobs themselves: attempts killed mid-job and jobs re-queued by a
    // restarted daemon.
    let all_events: Vec<serde_json::Value> = states.iter().flat_map(|s| events(&farm, s)).collect();
    let killed = all_events
        .iter()
        .filter(|e| {
            e["event"] == "worker_exit" && e["end"].as_str().is_some_and(|s| s.contains("SIGKILL"))
        })
        .count();
    let requeued = all_events
        .iter()
        .filter(|e| e["event"] == "requeued")
        .count();
    let most_attempts = states.iter().filter_map(|s| s["attempts"].as_u64()).max();
    let longest_stall = all_events
        .iter()
        .filter_map(|e| e["stalled_attempts"].as_u64())
        .max();
    eprintln!("longest run of attempts without progress: {longest_stall:?}");
    eprintln!(
        "{killed} attempts ended by SIGKILL, {requeued} re-queued at a daemon start, \
         at most {most_attempts:?} attempts for one job"
    );
    assert!(
        killed >= 5 && requeued >= 2,
        "{killed} killed, {requeued} re-queued"
    );
    // Those kills were evictions, none of them counted as a stalled attempt.
    let evictions = all_events
        .iter()
        .filter(|e| e["event"] == "worker_exit" && e["evicted"] == true)
        .count();
    assert!(evictions >= 5, "{evictions} evictions");
    assert!(
        all_events
            .iter()
            .filter(|e| e["event"] == "worker_exit")
            .all(|e| e["stalled_attempts"] == 0),
        "a kill from outside counted against retry.max_attempts"
    );
    for state in &states {
        assert_eq!(state["phase"], "done", "{state}");
        let output = PathBuf::from(state["output"].as_str().expect("output"));
        assert_eq!(frame_digests(&output), reference, "{}", output.display());
    }
}

/// A small tmpfs mounted over a folder for one test; unmounted (lazily) when dropped.
struct Tmpfs {
    path: PathBuf,
}

impl Tmpfs {
    /// Mounts a tmpfs of `size` (as `mount -o size=` takes it) on `path`, or says why not.
    fn mount(path: &Path, size: &str) -> Result<Tmpfs, String> {
        use std::os::unix::ffi::OsStrExt;
        std::fs::create_dir_all(path).map_err(|e| format!("mkdir {}: {e}", path.display()))?;
        let target =
            std::ffi::CString::new(path.as_os_str().as_bytes()).map_err(|e| e.to_string())?;
        let options =
            std::ffi::CString::new(format!("size={size},mode=0755")).map_err(|e| e.to_string())?;
        // SAFETY: plain mount(2) with valid C strings; the folder belongs to this test.
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
            return Err(format!(
                "cannot mount a tmpfs on {}: {}",
                path.display(),
                std::io::Error::last_os_error()
            ));
        }
        Ok(Tmpfs {
            path: path.to_path_buf(),
        })
    }

    /// Fills the file system to the last byte with `filler`; returns its path.
    fn fill(&self) -> PathBuf {
        use std::io::Write;
        let filler = self.path.join("filler");
        let mut file = std::fs::File::create(&filler).expect("create filler");
        let chunk = vec![0x5a_u8; 64 << 10];
        loop {
            match file.write(&chunk) {
                Ok(0) => break,
                Ok(_) => {}
                Err(err) if err.raw_os_error() == Some(libc::ENOSPC) => break,
                Err(err) => panic!("filling {}: {err}", filler.display()),
            }
        }
        // The last bytes: whatever a smaller write still fits.
        while matches!(file.write(&[0x5a_u8; 512]), Ok(n) if n > 0) {}
        filler
    }
}

impl Drop for Tmpfs {
    fn drop(&mut self) {
        let Ok(target) = std::ffi::CString::new(std::os::unix::ffi::OsStrExt::as_bytes(
            self.path.as_os_str(),
        )) else {
            return;
        };
        // SAFETY: umount2 of the tmpfs this guard mounted.
        unsafe { libc::umount2(target.as_ptr(), libc::MNT_DETACH) };
    }
}

/// Mounts 16 MiB tmpfs on the farm's state, output and spool folders, or explains why the
/// test cannot run here (CI runs as root, where it always can).
fn small_disks(farm: &Farm) -> Option<[Tmpfs; 3]> {
    let mounts = [&farm.state, &farm.out, &farm.spool].map(|path| Tmpfs::mount(path, "16m"));
    match mounts {
        [Ok(state), Ok(out), Ok(spool)] => Some([state, out, spool]),
        [a, b, c] => {
            let why: Vec<String> = [a, b, c].into_iter().filter_map(Result::err).collect();
            eprintln!(
                "SKIPPED: this disk-full test needs root to mount tmpfs (CI runs it as root): {}",
                why.join("; ")
            );
            None
        }
    }
}

/// Every state and checkpoint file of the job parses, and every line of its event log.
fn assert_job_files_whole(dir: &Path) {
    for file in [
        "state.json",
        "work/checkpoint.json",
        "work/checkpoint.prev.json",
    ] {
        let path = dir.join(file);
        if let Ok(bytes) = std::fs::read(&path) {
            assert!(
                serde_json::from_slice::<serde_json::Value>(&bytes).is_ok(),
                "{} is not whole: {:?}",
                path.display(),
                String::from_utf8_lossy(&bytes)
            );
        }
    }
    let yaml = std::fs::read_to_string(dir.join("job.yaml")).expect("job.yaml");
    assert!(yaml.contains("output:"), "job.yaml is not whole: {yaml}");
}

const FULL_DISK_RENDER: &str = "  num_clip: 30\n";

/// Fills `which` folder of the farm once clip 2 is done; the job must wait (not fail), keep its
/// files whole, and finish by itself with the right frames once the filler is removed.
fn job_waits_out_a_full_disk(which: fn(&[Tmpfs; 3]) -> &Tmpfs, file: &str) -> Farm {
    let reference = reference_digests(|farm| tiny_job(farm, "full", FULL_DISK_RENDER, None));
    let farm = Farm::new(POOL);
    let Some(disks) = small_disks(&farm) else {
        return farm;
    };
    let _daemon = farm.start_daemon();
    farm.drop_job(file, &tiny_job(&farm, "full", FULL_DISK_RENDER, None));
    wait_event(&farm, file, "clip 2 done", |e| {
        e["event"] == "clip_done" && e["index"].as_u64() >= Some(2)
    });
    let state = farm.job_by_source(file).expect("job");
    let dir = job_dir(&farm, &state);
    let filler = which(&disks).fill();
    // The worker stops on the full disk and the daemon says the job waits.
    common::wait_for("the daemon to report the full disk", RUN, || {
        farm.daemon_logs()
            .contains("disk full: the job waits for disk space")
            .then_some(())
    });
    common::wait_for("the worker to stop", RUN, || {
        worker_pids(&dir).is_empty().then_some(())
    });
    let state = farm.job_by_source(file).expect("job");
    assert!(
        matches!(state["phase"].as_str(), Some("queued" | "running")),
        "a full disk must not end the job: {state}"
    );
    assert_job_files_whole(&dir);

    std::fs::remove_file(&filler).expect("free the space");
    let state = wait_finished(&farm, file);
    assert_eq!(state["phase"], "done", "{state}");
    assert_eq!(state["stalled_attempts"], 0, "{state}");
    assert_job_files_whole(&dir);
    // A line the full disk cut short was cut off before the next append.
    let log = std::fs::read_to_string(dir.join("events.jsonl")).expect("events.jsonl");
    for line in log.lines() {
        assert!(
            serde_json::from_str::<serde_json::Value>(line).is_ok(),
            "torn event line: {line:?}"
        );
    }
    let evs = events(&farm, &state);
    assert!(
        evs.iter().any(|e| e["event"] == "space_available"),
        "{evs:?}"
    );
    // Resumed where the checkpoints left off, not from the start.
    let starts = start_points(&evs);
    assert!(starts.len() >= 2 && starts[1] >= 3, "{starts:?}");
    let output = PathBuf::from(state["output"].as_str().expect("output"));
    assert_eq!(frame_digests(&output), reference);
    assert_eq!(
        entries(&farm.out),
        BTreeSet::from(["full.mp4".to_string()]),
        "no partial output left beside the video"
    );
    drop(_daemon);
    farm
}

#[test]
fn a_full_state_disk_makes_the_job_wait_and_it_resumes_when_space_is_freed() {
    job_waits_out_a_full_disk(|disks| &disks[0], "state-full.yaml");
}

#[test]
fn a_full_output_disk_makes_the_job_wait_and_it_resumes_when_space_is_freed() {
    job_waits_out_a_full_disk(|disks| &disks[1], "out-full.yaml");
}

/// New jobs while a disk is full: `submit` to a full spool fails saying why and leaves nothing
/// behind; a job file filed while the state disk is full gets a rejection that says so; the
/// daemon keeps running and takes jobs again, unaided, once there is room.
#[test]
fn new_jobs_on_full_disks_get_a_clear_answer_and_the_daemon_goes_on() {
    let farm = Farm::new(POOL);
    let Some(disks) = small_disks(&farm) else {
        return;
    };
    let mut daemon = farm.start_daemon();
    let source = farm.media.join("late.yaml");
    std::fs::write(&source, tiny_job(&farm, "late", "", None)).expect("write job file");
    let enospc = std::io::Error::from_raw_os_error(libc::ENOSPC).to_string();
    let enospc = enospc
        .split(" (os error")
        .next()
        .unwrap_or_default()
        .to_string();

    let filler = disks[2].fill();
    let submit = farm.cli(&["submit", source.to_str().expect("utf-8 path")]);
    let stderr = String::from_utf8_lossy(&submit.stderr);
    assert!(!submit.status.success(), "submit to a full spool: {stderr}");
    assert!(stderr.contains(&enospc), "{stderr}");
    assert!(stderr.contains("nothing was submitted"), "{stderr}");
    assert_eq!(entries(&farm.spool.join("tmp")), BTreeSet::new());
    assert_eq!(entries(&farm.incoming()), BTreeSet::new());
    assert!(source.exists(), "the user's file stays where it was");
    std::fs::remove_file(&filler).expect("free the spool");

    let filler = disks[0].fill();
    farm.drop_job("late.yaml", &tiny_job(&farm, "late", "", None));
    let error = common::wait_for("the rejection", RUN, || farm.rejection("late.yaml"));
    assert!(error.contains(&enospc), "{error}");
    assert!(error.contains("late.yaml"), "{error}");
    assert!(
        farm.spool.join("rejected/late.yaml").exists(),
        "the job file is kept beside its .error"
    );
    assert!(daemon.is_running(), "{}", farm.daemon_logs());
    std::fs::remove_file(&filler).expect("free the state disk");

    let again = farm.media.join("again.yaml");
    std::fs::copy(&source, &again).expect("copy job file");
    let submit = farm.cli(&["submit", again.to_str().expect("utf-8 path")]);
    assert!(
        submit.status.success(),
        "{}",
        String::from_utf8_lossy(&submit.stderr)
    );
    let state = wait_finished(&farm, "again.yaml");
    assert_eq!(state["phase"], "done", "{state}");
    assert!(daemon.is_running());
}

/// A memory cgroup with a tight limit, made for one test and removed when dropped.
struct MemoryCgroup {
    dir: PathBuf,
}

impl MemoryCgroup {
    /// Creates it (cgroup v2 where the unified tree is at /sys/fs/cgroup, v1 otherwise) with a
    /// limit of `bytes`, or says why not.
    fn create(name: &str, bytes: u64) -> Result<MemoryCgroup, String> {
        let root = Path::new("/sys/fs/cgroup");
        let (dir, limit) = if root.join("cgroup.controllers").is_file() {
            (root.join(name), "memory.max")
        } else {
            (root.join("memory").join(name), "memory.limit_in_bytes")
        };
        std::fs::create_dir(&dir).map_err(|e| format!("mkdir {}: {e}", dir.display()))?;
        let group = MemoryCgroup { dir };
        std::fs::write(group.dir.join(limit), bytes.to_string())
            .map_err(|e| format!("{limit} of {}: {e}", group.dir.display()))?;
        Ok(group)
    }

    fn adopt(&self, pid: i32) -> Result<(), String> {
        std::fs::write(self.dir.join("cgroup.procs"), pid.to_string())
            .map_err(|e| format!("moving {pid} into {}: {e}", self.dir.display()))
    }
}

impl Drop for MemoryCgroup {
    fn drop(&mut self) {
        // Whatever still lives in it goes back to the parent group first.
        if let (Ok(procs), Some(parent)) = (
            std::fs::read_to_string(self.dir.join("cgroup.procs")),
            self.dir.parent(),
        ) {
            for pid in procs.lines() {
                let _ = std::fs::write(parent.join("cgroup.procs"), pid);
            }
        }
        let _ = std::fs::remove_dir(&self.dir);
    }
}

/// The kernel's OOM killer kills a worker (the daemon runs in a memory cgroup too small for
/// its workers): the job's events say "out of memory" with the kernel's evidence. (The
/// SIGKILLs sent by the tests above are never called out of memory.)
#[test]
fn an_oom_kill_by_the_kernel_is_reported_as_out_of_memory() {
    let farm = Farm::new(POOL);
    let daemon = farm.start_daemon();
    let group =
        match MemoryCgroup::create(&format!("reelspool-test-oom-{}", daemon.pid()), 24 << 20) {
            Ok(group) => group,
            Err(why) => {
                eprintln!("SKIPPED: this test needs root and a writable memory cgroup: {why}");
                return;
            }
        };
    // The kernel is to pick the worker, not the daemon. Where lowering the score is not
    // allowed (some sandboxes), the worker is still by far the bigger process in the group.
    let _ = std::fs::write(format!("/proc/{}/oom_score_adj", daemon.pid()), "-1000");
    if let Err(why) = group.adopt(daemon.pid()) {
        eprintln!("SKIPPED: cannot move the daemon into a memory cgroup: {why}");
        return;
    }
    let big = "  size: 256*256\n  infer_frames: 16\n  sample_steps: 2\n  num_clip: 4\n";
    let text = job(&farm, "oom", big).replace("max_attempts: 40", "max_attempts: 2");
    farm.drop_job("oom.yaml", &text);
    let state = wait_finished(&farm, "oom.yaml");
    let evs = events(&farm, &state);
    let exits = worker_exits(&evs);
    let first = exits.first().expect("a worker exit");
    let end = first["end"].as_str().unwrap_or_default();
    eprintln!("first attempt: {end}");
    assert!(end.contains("SIGKILL (9)"), "{first}\n{state}");
    assert!(end.contains("out of memory"), "{first}");
    assert_eq!(state["phase"], "failed", "{state}");
    drop(daemon);
    drop(group);
}
