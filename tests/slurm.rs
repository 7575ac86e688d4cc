//! End to end on a real Slurm cluster: `tests/slurm/start-slurm.sh` brings up munged,
//! slurmctld and slurmd on this machine (one node, two fake GPUs), and the real daemon with
//! `executor: { kind: slurm }` submits its jobs there with `sbatch`. The tests then do to the
//! Slurm job what a cluster does: `scontrol requeue` it mid-render, `scancel` it from outside,
//! and kill the daemon while it runs.
//!
//! When Slurm cannot be started (no packages, not root) the tests say so loudly on stderr and
//! pass without running; with `CI=true` they fail instead, so CI always runs them.

mod common;
#[path = "render/support.rs"]
#[allow(dead_code)]
mod support;

use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::OnceLock;
use std::time::Duration;

use common::{wait_for, Farm};
use support::*;

/// The cluster's slurm.conf, or why there is none.
fn cluster() -> Option<PathBuf> {
    static CLUSTER: OnceLock<Result<PathBuf, String>> = OnceLock::new();
    let result = CLUSTER.get_or_init(|| {
        let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("../tests/slurm/start-slurm.sh");
        let output = Command::new("bash")
            .arg(&script)
            .output()
            .map_err(|err| format!("cannot run {}: {err}", script.display()))?;
        let stdout = String::from_utf8_lossy(&output.stdout);
        if !output.status.success() {
            return Err(format!(
                "{} failed ({}):\n{}{}",
                script.display(),
                output.status,
                stdout,
                String::from_utf8_lossy(&output.stderr)
            ));
        }
        stdout
            .lines()
            .last()
            .map(PathBuf::from)
            .filter(|conf| conf.is_file())
            .ok_or_else(|| format!("{} printed no slurm.conf: {stdout}", script.display()))
    });
    match result {
        Ok(conf) => Some(conf.clone()),
        Err(why) if std::env::var("CI").as_deref() == Ok("true") => {
            panic!("CI must run the Slurm tests, but Slurm did not start: {why}")
        }
        Err(why) => {
            eprintln!(
                "\n!!!!!!!!!! SLURM TEST SKIPPED: Slurm could not be started on this machine !!!!!!!!!!\n\
                 {why}\n\
                 !!!!!!!!!! install slurm-wlm and munge (scripts/install-deps.sh) and run as root !!!!!!!!!!\n"
            );
            None
        }
    }
}

/// Held for a test's whole run: shared by the tests that only use the cluster, exclusive for
/// the one that resets its controller (every job in the cluster is lost then).
struct ClusterLock(#[allow(dead_code)] std::fs::File);

fn lock_cluster(exclusive: bool) -> ClusterLock {
    use std::os::fd::AsRawFd;
    let file = std::fs::OpenOptions::new()
        .create(true)
        .truncate(false)
        .write(true)
        .open(std::env::temp_dir().join("reelspool-slurm-tests.lock"))
        .expect("open the cluster lock");
    let mode = if exclusive {
        libc::LOCK_EX
    } else {
        libc::LOCK_SH
    };
    // SAFETY: flock on a descriptor this struct owns until it is dropped.
    let rc = unsafe { libc::flock(file.as_raw_fd(), mode) };
    assert_eq!(rc, 0, "flock: {}", std::io::Error::last_os_error());
    ClusterLock(file)
}

/// The cluster, held shared for the caller's test.
fn shared_cluster() -> Option<(PathBuf, ClusterLock)> {
    let conf = cluster()?;
    Some((conf, lock_cluster(false)))
}

/// A farm whose daemon hands its jobs to the test cluster. `gpu_types` maps the job's memory
/// estimate onto the cluster's one GPU type, `fake`.
fn slurm_farm() -> Option<(Farm, PathBuf, ClusterLock)> {
    let (conf, lock) = shared_cluster()?;
    Some((new_slurm_farm(), conf, lock))
}

fn new_slurm_farm() -> Farm {
    Farm::new(
        "executor:\n  kind: slurm\n  partition: ci\n  gres: \"gpu:1\"\n  poll_secs: 1\n  \
         probe_timeout_secs: 60\n  gpu_types:\n    - { name: fake, memory_gb: 80 }\n",
    )
}

fn start(farm: &Farm, conf: &Path) -> common::Daemon {
    farm.start_daemon_with_env(&[("SLURM_CONF", conf.to_str().expect("utf-8 path"))])
}

/// Runs a Slurm client command against the test cluster.
fn slurm(conf: &Path, program: &str, args: &[&str]) -> String {
    let output = Command::new(program)
        .args(args)
        .env("SLURM_CONF", conf)
        .output()
        .unwrap_or_else(|err| panic!("run {program}: {err}"));
    assert!(
        output.status.success(),
        "{program} {args:?}: {}",
        String::from_utf8_lossy(&output.stderr)
    );
    String::from_utf8_lossy(&output.stdout).into_owned()
}

/// `scontrol show job -o` lines of every Slurm job of reelspool job `id` of `farm`: named
/// after it and run in its folder (job ids are only unique within one farm, and the tests run
/// farms side by side on one cluster).
fn slurm_jobs_of(conf: &Path, farm: &Farm, id: &str) -> Vec<String> {
    let work_dir = format!("WorkDir={} ", farm.jobs_dir().join(id).display());
    slurm(conf, "scontrol", &["show", "job", "-o"])
        .lines()
        .filter(|line| {
            line.contains(&format!("JobName=reelspool-{id} ")) && line.contains(&work_dir)
        })
        .map(str::to_string)
        .collect()
}

fn field<'a>(line: &'a str, key: &str) -> Option<&'a str> {
    line.split_whitespace()
        .find_map(|pair| pair.strip_prefix(key)?.strip_prefix('='))
}

/// A job of `clips` clips at 192*192, 8 frames a clip (about 0.1 s a clip on a 2-core
/// machine): enough that it is still rendering when the test acts on it.
fn clips_job(farm: &Farm, name: &str, clips: u32) -> String {
    job(
        farm,
        name,
        &format!(
            "render:\n  size: 192*192\n  infer_frames: 8\n  sample_steps: 1\n  num_clip: {clips}"
        ),
    )
}

/// The job the tests that stop, cancel or requeue it mid-render use.
fn long_job(farm: &Farm, name: &str) -> String {
    clips_job(farm, name, 60)
}

/// The running job's state once it has made `clips` clips durable, with its Slurm job id.
fn wait_rendering(farm: &Farm, file: &str, clips: u64) -> (serde_json::Value, String) {
    wait_for(
        &format!("{file} to render {clips} clips on Slurm"),
        Duration::from_secs(120),
        || {
            let state = farm.job_by_source(file)?;
            let slurm_id = state["details"]["slurm_job_id"].as_str()?.to_string();
            (state["phase"] == "running" && state["clips_done"].as_u64()? >= clips)
                .then_some((state, slurm_id))
        },
    )
}

fn count(evs: &[serde_json::Value], name: &str) -> usize {
    evs.iter().filter(|e| e["event"] == name).count()
}

#[test]
fn a_job_runs_through_the_spool_on_slurm_to_an_mp4() {
    let Some((farm, conf, _lock)) = slurm_farm() else {
        return;
    };
    let _daemon = start(&farm, &conf);
    farm.drop_job("one.yaml", &farm.job_yaml("one", "  num_clip: 2\n"));
    let state = wait_finished(&farm, "one.yaml");
    assert_eq!(state["phase"], "done", "{state}\n{}", farm.daemon_logs());
    let id = state["id"].as_str().expect("id");
    let slurm_id = state["details"]["slurm_job_id"]
        .as_str()
        .expect("the Slurm job id is in the state");
    assert_eq!(state["gpu"], format!("slurm:{slurm_id}"));

    // Slurm ran it, once, with the GPU type picked from the memory estimate.
    let jobs = slurm_jobs_of(&conf, &farm, id);
    assert_eq!(jobs.len(), 1, "{jobs:?}");
    assert_eq!(field(&jobs[0], "JobId"), Some(slurm_id), "{}", jobs[0]);
    assert_eq!(
        field(&jobs[0], "JobState"),
        Some("COMPLETED"),
        "{}",
        jobs[0]
    );
    assert!(jobs[0].contains("gres:gpu:fake:1"), "{}", jobs[0]);
    assert_eq!(field(&jobs[0], "Requeue"), Some("1"), "{}", jobs[0]);

    // The worker kept the device Slurm gave it (an index of the node's fake GPUs), not the
    // daemon's own slot name.
    let evs = events(&farm, &state);
    let started = evs
        .iter()
        .find(|e| e["event"] == "started")
        .expect("started event");
    let device = started["device"].as_str().unwrap_or("");
    assert!(
        ["0", "1", "2", "3"].contains(&device),
        "CUDA_VISIBLE_DEVICES from Slurm, got {started}"
    );
    assert_eq!(count(&evs, "slurm_submitted"), 1);

    let video = probe(Path::new(state["output"].as_str().expect("output")));
    assert_eq!(video.video_codec, "h264");
    assert_eq!((video.width, video.height), (64, 64));
    assert!(video.video_frames > 0);

    let status = farm.cli(&["status", id]);
    let text = String::from_utf8_lossy(&status.stdout);
    assert!(status.status.success(), "{text}");
    assert!(text.contains(&format!("slurm:{slurm_id}")), "{text}");
}

#[test]
fn a_job_requeued_by_slurm_mid_render_resumes_with_identical_frames() {
    let Some((farm, conf, _lock)) = slurm_farm() else {
        return;
    };
    let reference = reference_digests(|farm| long_job(farm, "ref"));
    let _daemon = start(&farm, &conf);
    farm.drop_job("requeued.yaml", &long_job(&farm, "requeued"));
    let (_, slurm_id) = wait_rendering(&farm, "requeued.yaml", 2);
    slurm(&conf, "scontrol", &["requeue", &slurm_id]);
    let state = wait_finished(&farm, "requeued.yaml");
    assert_eq!(state["phase"], "done", "{state}\n{}", farm.daemon_logs());
    let evs = events(&farm, &state);
    let points = start_points(&evs);
    assert!(
        points.len() >= 2 && points[0] == 0 && points[1] >= 2,
        "started at 0, resumed from the checkpoint after the requeue: {points:?}"
    );
    // The same Slurm job ran again: no second submission.
    assert_eq!(count(&evs, "slurm_submitted"), 1, "{evs:?}");
    let jobs = slurm_jobs_of(&conf, &farm, state["id"].as_str().expect("id"));
    assert_eq!(jobs.len(), 1, "{jobs:?}");
    assert_eq!(field(&jobs[0], "Restarts"), Some("1"), "{}", jobs[0]);
    assert_eq!(
        frame_digests(Path::new(state["output"].as_str().expect("output"))),
        reference
    );
}

#[test]
fn a_job_scancelled_outside_reelspool_is_cancelled() {
    let Some((farm, conf, _lock)) = slurm_farm() else {
        return;
    };
    let _daemon = start(&farm, &conf);
    farm.drop_job("outside.yaml", &long_job(&farm, "outside"));
    let (_, slurm_id) = wait_rendering(&farm, "outside.yaml", 1);
    slurm(&conf, "scancel", &[&slurm_id]);
    let state = wait_finished(&farm, "outside.yaml");
    assert_eq!(
        state["phase"],
        "cancelled",
        "{state}\n{}",
        farm.daemon_logs()
    );
    let evs = events(&farm, &state);
    assert_eq!(count(&evs, "slurm_submitted"), 1, "not retried: {evs:?}");
    assert_eq!(count(&evs, "retry"), 0, "not retried: {evs:?}");
}

#[test]
fn reelspool_cancel_scancels_the_slurm_job() {
    let Some((farm, conf, _lock)) = slurm_farm() else {
        return;
    };
    let _daemon = start(&farm, &conf);
    farm.drop_job("mine.yaml", &long_job(&farm, "mine"));
    let (state, slurm_id) = wait_rendering(&farm, "mine.yaml", 1);
    let id = state["id"].as_str().expect("id");
    let out = farm.cli(&["cancel", id]);
    assert!(out.status.success(), "{out:?}");
    let state = wait_finished(&farm, "mine.yaml");
    assert_eq!(state["phase"], "cancelled", "{state}");
    let jobs = slurm_jobs_of(&conf, &farm, id);
    assert_eq!(jobs.len(), 1, "{jobs:?}");
    assert_eq!(field(&jobs[0], "JobId"), Some(slurm_id.as_str()));
    assert_eq!(
        field(&jobs[0], "JobState"),
        Some("CANCELLED"),
        "{}",
        jobs[0]
    );
}

/// A hung worker under Slurm (stopped with SIGSTOP, so it writes no heartbeat to its output
/// in the job folder) is found within `worker.heartbeat_timeout_secs`, not at `--time` (ten
/// minutes at least): its Slurm job is cancelled, the attempt ends as a lost heartbeat and the
/// job is submitted again, then finishes.
#[test]
fn a_stopped_worker_on_slurm_is_found_by_its_heartbeat_and_the_job_requeued() {
    const HEARTBEAT_SECS: u64 = 15;
    let Some((conf, _lock)) = shared_cluster() else {
        return;
    };
    let farm = Farm::new(&format!(
        "executor:\n  kind: slurm\n  partition: ci\n  gres: \"gpu:1\"\n  poll_secs: 1\n  \
         probe_timeout_secs: 60\n  gpu_types:\n    - {{ name: fake, memory_gb: 80 }}\n\
         worker: {{ heartbeat_timeout_secs: {HEARTBEAT_SECS} }}\n"
    ));
    let _daemon = start(&farm, &conf);
    farm.drop_job("hung.yaml", &long_job(&farm, "hung"));
    let (state, slurm_id) = wait_rendering(&farm, "hung.yaml", 2);
    let dir = job_dir(&farm, &state);
    let pid = wait_for("the job's worker on the node", RUN, || {
        worker_pids(&dir).first().copied()
    });
    // SAFETY: kill() on the worker's pid, read from /proc.
    unsafe { libc::kill(pid, libc::SIGSTOP) };
    let stopped_at = std::time::Instant::now();
    let lost = wait_event(&farm, "hung.yaml", "the lost heartbeat", |e| {
        e["event"] == "worker_exit" && e["end"] == "HeartbeatLost"
    });
    let found_after = stopped_at.elapsed();
    eprintln!("hung worker found after {found_after:?}");
    // The heartbeat timeout, plus Slurm's poll and the time scancel takes to end the job on a
    // loaded machine; the job's --time is at least 10 minutes.
    assert!(
        found_after < Duration::from_secs(HEARTBEAT_SECS + 60),
        "found only after {found_after:?}: {lost}"
    );
    let state = wait_finished(&farm, "hung.yaml");
    assert_eq!(state["phase"], "done", "{state}\n{}", farm.daemon_logs());
    let evs = events(&farm, &state);
    let retry = evs
        .iter()
        .find(|e| e["event"] == "retry")
        .unwrap_or_else(|| panic!("no retry: {evs:?}"));
    assert!(
        retry["reason"]
            .as_str()
            .is_some_and(|r| r.contains("stopped responding")),
        "{retry}"
    );
    assert_eq!(
        count(&evs, "slurm_submitted"),
        2,
        "submitted again: {evs:?}"
    );
    assert_ne!(
        state["details"]["slurm_job_id"],
        slurm_id.as_str(),
        "{state}"
    );
    assert!(start_points(&evs).len() >= 2, "{evs:?}");
}

#[test]
fn a_daemon_killed_while_its_slurm_job_runs_adopts_it_after_a_restart() {
    let Some((farm, conf, _lock)) = slurm_farm() else {
        return;
    };
    let mut daemon = start(&farm, &conf);
    farm.drop_job("adopted.yaml", &clips_job(&farm, "adopted", 120));
    let (state, slurm_id) = wait_rendering(&farm, "adopted.yaml", 1);
    daemon.kill9();
    let id = state["id"].as_str().expect("id").to_string();
    // The Slurm job does not depend on the daemon: it goes on rendering.
    let jobs = slurm_jobs_of(&conf, &farm, &id);
    assert_eq!(field(&jobs[0], "JobState"), Some("RUNNING"), "{jobs:?}");
    let _daemon = start(&farm, &conf);
    let state = wait_finished(&farm, "adopted.yaml");
    assert_eq!(state["phase"], "done", "{state}\n{}", farm.daemon_logs());
    assert_eq!(state["details"]["slurm_job_id"], slurm_id.as_str());
    let evs = events(&farm, &state);
    assert_eq!(count(&evs, "slurm_submitted"), 1, "submitted once: {evs:?}");
    let adopted_at = evs
        .iter()
        .position(|e| e["event"] == "slurm_adopted")
        .unwrap_or_else(|| panic!("no slurm_adopted event: {evs:?}"));
    assert!(
        evs[adopted_at..].iter().any(|e| e["event"] == "clip_done"),
        "adopted while it still rendered: clips reported after the adoption: {evs:?}"
    );
    let jobs = slurm_jobs_of(&conf, &farm, &id);
    assert_eq!(
        jobs.len(),
        1,
        "one Slurm job for the reelspool job: {jobs:?}"
    );
    assert_eq!(start_points(&evs), vec![0], "it ran in one go: {evs:?}");
    assert!(
        Path::new(state["output"].as_str().expect("output")).is_file(),
        "{state}"
    );
}

#[test]
fn a_daemon_whose_slurm_partition_does_not_exist_refuses_to_start_and_says_why() {
    let Some((conf, _lock)) = shared_cluster() else {
        return;
    };
    let farm =
        Farm::new("executor:\n  kind: slurm\n  partition: nosuchpartition\n  poll_secs: 1\n");
    let output = Command::new(common::reelspool_bin())
        .arg("--config")
        .arg(&farm.config)
        .arg("daemon")
        .env("SLURM_CONF", &conf)
        .output()
        .expect("run daemon");
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(!output.status.success(), "{stderr}");
    assert!(
        stderr.contains("Slurm executor") && stderr.contains("nosuchpartition"),
        "{stderr}"
    );
}

/// A node that cannot see the state directory: the probe job runs as `nobody`, for whom the
/// farm's private temporary folder (mode 0700) does not exist. The daemon must not start.
#[test]
fn a_daemon_whose_directories_a_node_cannot_see_refuses_to_start_and_says_why() {
    let Some((conf, _lock)) = shared_cluster() else {
        return;
    };
    let farm = Farm::new(
        "executor:\n  kind: slurm\n  partition: ci\n  poll_secs: 1\n  extra_args: [\"--uid=nobody\"]\n",
    );
    let output = Command::new(common::reelspool_bin())
        .arg("--config")
        .arg(&farm.config)
        .arg("daemon")
        .env("SLURM_CONF", &conf)
        .output()
        .expect("run daemon");
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(!output.status.success(), "{stderr}");
    assert!(
        stderr.contains("cannot see this daemon's directories")
            && stderr.contains("every Slurm node mounts at the same path")
            && stderr.contains(&farm.state.display().to_string()),
        "{stderr}"
    );
}

/// A daemon stopped with SIGTERM does not wait for its Slurm jobs: they run on, and the next
/// start adopts them.
#[test]
fn a_daemon_stopped_while_its_slurm_job_runs_leaves_it_running_and_adopts_it() {
    let Some((farm, conf, _lock)) = slurm_farm() else {
        return;
    };
    let mut daemon = start(&farm, &conf);
    farm.drop_job("stopped.yaml", &clips_job(&farm, "stopped", 120));
    let (state, slurm_id) = wait_rendering(&farm, "stopped.yaml", 1);
    let status = daemon.terminate(Duration::from_secs(30));
    assert!(status.success(), "{status:?}\n{}", farm.daemon_logs());
    let id = state["id"].as_str().expect("id").to_string();
    let jobs = slurm_jobs_of(&conf, &farm, &id);
    assert_eq!(field(&jobs[0], "JobState"), Some("RUNNING"), "{jobs:?}");
    let _daemon = start(&farm, &conf);
    let state = wait_finished(&farm, "stopped.yaml");
    assert_eq!(state["phase"], "done", "{state}\n{}", farm.daemon_logs());
    assert_eq!(state["details"]["slurm_job_id"], slurm_id.as_str());
    let evs = events(&farm, &state);
    assert_eq!(count(&evs, "slurm_submitted"), 1, "submitted once: {evs:?}");
    assert_eq!(count(&evs, "slurm_adopted"), 1, "{evs:?}");
    assert_eq!(slurm_jobs_of(&conf, &farm, &id).len(), 1);
    assert_eq!(start_points(&evs), vec![0], "it ran in one go: {evs:?}");
}

/// Restarts slurmctld with its state cleared (`-c`), as after the loss of the controller's
/// state: Slurm forgets every job, and slurmd kills the ones it still runs as orphans.
fn reset_controller(conf: &Path) {
    let dir = conf.parent().expect("slurm.conf has a folder");
    let pid_text = std::fs::read_to_string(dir.join("slurmctld.pid")).expect("slurmctld.pid");
    let pid: i32 = pid_text.trim().parse().expect("a pid");
    // SAFETY: signalling the slurmctld this test cluster runs.
    unsafe { libc::kill(pid, libc::SIGTERM) };
    wait_for("slurmctld to stop", Duration::from_secs(30), || {
        // SAFETY: signal 0 only checks that the process exists.
        (unsafe { libc::kill(pid, 0) } != 0).then_some(())
    });
    let status = Command::new("slurmctld")
        .arg("-f")
        .arg(conf)
        .args(["-i", "-c"])
        .env("SLURM_CONF", conf)
        .stdin(std::process::Stdio::null())
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .status()
        .expect("start slurmctld");
    assert!(status.success(), "slurmctld -c: {status}");
    wait_for("the node back in service", Duration::from_secs(60), || {
        let output = Command::new("sinfo")
            .args(["-h", "-o", "%T"])
            .env("SLURM_CONF", conf)
            .output()
            .ok()?;
        let text = String::from_utf8_lossy(&output.stdout);
        text.lines()
            .any(|state| ["idle", "mixed", "allocated"].contains(&state.trim()))
            .then_some(())
    });
}

/// A job Slurm lost (its controller came back without state, and slurmd killed the orphan
/// worker) is submitted again and resumes from its checkpoint.
#[test]
fn a_job_slurm_lost_is_submitted_again_and_resumes() {
    let Some(conf) = cluster() else {
        return;
    };
    let _lock = lock_cluster(true);
    let farm = new_slurm_farm();
    let _daemon = start(&farm, &conf);
    // Long enough to outlast the controller's restart even on a fast machine.
    farm.drop_job("lost.yaml", &clips_job(&farm, "lost", 200));
    wait_rendering(&farm, "lost.yaml", 2);
    reset_controller(&conf);
    let state = wait_finished(&farm, "lost.yaml");
    assert_eq!(state["phase"], "done", "{state}\n{}", farm.daemon_logs());
    let evs = events(&farm, &state);
    // Submitted again at least once; more if the new worker met the orphan still holding the
    // job's lock before slurmd had killed it (it exits busy and the job is retried).
    assert!(count(&evs, "slurm_submitted") >= 2, "{evs:?}");
    let lost = evs
        .iter()
        .find(|e| e["event"] == "worker_exit")
        .expect("the lost attempt's end");
    assert!(
        lost["end"]
            .as_str()
            .is_some_and(|end| end.contains("no longer knows")),
        "{lost}"
    );
    let points = start_points(&evs);
    assert!(
        points.len() >= 2 && points[0] == 0 && *points.last().expect("points") >= 2,
        "resumed from its checkpoint: {points:?}"
    );
    let video = probe(Path::new(state["output"].as_str().expect("output")));
    assert_eq!((video.width, video.height), (192, 192));
}

/// `reelspool cancel` while the daemon is down cancels the batch job too: it would render on
/// in Slurm otherwise.
#[test]
fn a_job_cancelled_while_the_daemon_is_down_is_scancelled() {
    let Some((farm, conf, _lock)) = slurm_farm() else {
        return;
    };
    let mut daemon = start(&farm, &conf);
    farm.drop_job("down.yaml", &clips_job(&farm, "down", 120));
    let (state, slurm_id) = wait_rendering(&farm, "down.yaml", 1);
    daemon.kill9();
    let id = state["id"].as_str().expect("id");
    let out = Command::new(common::reelspool_bin())
        .arg("--config")
        .arg(&farm.config)
        .args(["cancel", id])
        .env("SLURM_CONF", &conf)
        .output()
        .expect("run reelspool cancel");
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{text}{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(
        text.contains(&format!("cancelled Slurm job {slurm_id}")),
        "{text}"
    );
    let job = wait_for("Slurm to cancel the job", Duration::from_secs(60), || {
        let jobs = slurm_jobs_of(&conf, &farm, id);
        jobs.into_iter()
            .find(|line| field(line, "JobState") == Some("CANCELLED"))
    });
    assert_eq!(field(&job, "JobId"), Some(slurm_id.as_str()), "{job}");
    let state = farm.job_by_source("down.yaml").expect("state");
    assert_eq!(state["phase"], "cancelled", "{state}");
}
