//! Long-queue benchmark (issue 19): time to READY and time to stop with N queued jobs, and
//! intake latency while they wait.
//!
//! Run: `cargo bench -p reelspool --bench queue` (sizes 1,000, 10,000 and 100,000; pass sizes
//! to pick others, e.g. `-- 1000 10000`; `--no-rebuild` skips step 3). Results are recorded in
//! BENCHMARKS.md.
//!
//! For each size: one job goes through the real spool, so its folder and its queue-index line
//! are exactly what the daemon writes; the bench then copies that folder N-1 times under fresh
//! ids (state.json rewritten with the new id, nothing else changed) and writes the index a
//! daemon would have after filing them all, which is how a state dir looks after a long burst,
//! without spending minutes submitting. Then, with `hold_queue: true`:
//!
//! 1. start: time to READY=1 as heard on a notify socket the bench binds; 200 single drops into
//!    `incoming/` with the latency from the rename to the job folder being renamed into place
//!    (heard through inotify); a burst of 2,000 files, and the
//!    stop time from a SIGTERM sent the moment the last of them is filed (the scheduler may
//!    still be queueing them);
//! 2. restart: READY time; once the index lists every job again, the time of
//!    `status --state queued --limit 20`, of a full `status`, and of `cancel ID` until the
//!    daemon confirms it; then the time of an idle stop;
//! 3. up to 10,000 jobs, a start without the index (the first start after an upgrade, or after
//!    the file was lost): READY time, and the time until every job is read back into the queue.
//!
//! Everything lives in a temporary folder that is removed at the end of each size.

#[path = "../../tests/common/mod.rs"]
mod common;
mod support;

use std::os::unix::net::UnixDatagram;
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use common::{wait_for, Farm};
use jobs::index::{job_folder_ids, read_index, IndexWriter, Reconciled, INDEX_FILE};
use support::{count_jobs, percentile};

const DROPS: usize = 200;
const BURST: usize = 2_000;
/// Queue sizes up to this also time a start without an index (every job folder read again).
const REBUILD_UP_TO: usize = 100_000;

fn ms(d: Duration) -> f64 {
    d.as_secs_f64() * 1e3
}

/// An id in the format the daemon generates (`YYYYMMDD-HHMMSS-mmm-CCCC`), unique per `n` and
/// sorting before any id generated today.
fn bench_id(n: usize) -> String {
    let counter = n % 9000 + 1;
    let tick = n / 9000;
    format!(
        "20260101-00{:02}{:02}-{:03}-{counter:04}",
        tick / 60_000 % 60,
        tick / 1000 % 60,
        tick % 1000
    )
}

/// Copies the one real job folder under `jobs_dir` to `count` more under fresh ids.
fn clone_jobs(jobs_dir: &Path, count: usize) {
    let template = std::fs::read_dir(jobs_dir)
        .expect("jobs dir")
        .flatten()
        .map(|e| e.path())
        .find(|p| p.join("state.json").is_file())
        .expect("one job folder to copy");
    let job_yaml = std::fs::read(template.join("job.yaml")).expect("job.yaml");
    let events = std::fs::read(template.join("events.jsonl")).unwrap_or_default();
    // The plan the scheduler keeps in a job's folder once it has queued the job.
    let plan = std::fs::read(template.join(jobs::index::PLAN_FILE)).ok();
    let mut state: serde_json::Value =
        serde_json::from_slice(&std::fs::read(template.join("state.json")).expect("state.json"))
            .expect("state.json parses");
    for n in 0..count {
        let id = bench_id(n);
        let dir = jobs_dir.join(&id);
        std::fs::create_dir_all(dir.join("work")).expect("job folder");
        state["id"] = id.clone().into();
        let mut bytes = serde_json::to_vec_pretty(&state).expect("state encodes");
        bytes.push(b'\n');
        std::fs::write(dir.join("state.json"), bytes).expect("write state.json");
        std::fs::write(dir.join("job.yaml"), &job_yaml).expect("write job.yaml");
        std::fs::write(dir.join("events.jsonl"), &events).expect("write events.jsonl");
        if let Some(plan) = &plan {
            std::fs::write(dir.join(jobs::index::PLAN_FILE), plan).expect("write plan.json");
        }
    }
    // SAFETY: sync(2) takes no arguments and cannot fail.
    unsafe { libc::sync() };
}

struct Service {
    child: Child,
    socket: UnixDatagram,
    started: Instant,
}

impl Service {
    /// Starts the daemon with a notify socket and returns once READY=1 arrives, with the time
    /// it took.
    fn start(farm: &Farm, tag: &str) -> (Service, Duration) {
        let path = farm.root.path().join(format!("notify-{tag}.sock"));
        let socket = UnixDatagram::bind(&path).expect("bind notify socket");
        socket
            .set_read_timeout(Some(Duration::from_millis(200)))
            .expect("socket timeout");
        let log = std::fs::File::create(farm.root.path().join(format!("daemon-{tag}.log")))
            .expect("daemon log");
        let started = Instant::now();
        let child = Command::new(common::reelspool_bin())
            .arg("--config")
            .arg(&farm.config)
            .arg("daemon")
            .env("NOTIFY_SOCKET", &path)
            .env("REELSPOOL_LOG", "info")
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .expect("start daemon");
        let mut service = Service {
            child,
            socket,
            started,
        };
        let mut buffer = vec![0u8; 4096];
        loop {
            if let Ok(len) = service.socket.recv(&mut buffer) {
                let text = String::from_utf8_lossy(&buffer[..len]);
                if text.lines().any(|line| line == "READY=1") {
                    break;
                }
            }
            if started.elapsed() > Duration::from_secs(600) {
                panic!("no READY=1 within 600 s");
            }
            if let Ok(Some(status)) = service.child.try_wait() {
                panic!("daemon exited before READY: {status}");
            }
        }
        let ready = service.started.elapsed();
        (service, ready)
    }

    /// SIGTERM, then the time until the process has exited.
    fn stop(mut self) -> Duration {
        let start = Instant::now();
        // SAFETY: signalling our own child.
        unsafe { libc::kill(self.child.id() as i32, libc::SIGTERM) };
        let status = self.child.wait().expect("wait for daemon");
        let took = start.elapsed();
        assert!(status.success(), "daemon exited with {status}");
        took
    }
}

/// Hears job folders being renamed into place under `state/jobs/` (intake's last step), so
/// a drop's latency is measured without listing a folder of 100,000 entries on every poll.
struct FolderWatch {
    fd: i32,
}

impl FolderWatch {
    fn new(jobs_dir: &Path) -> FolderWatch {
        use std::os::unix::ffi::OsStrExt;
        // SAFETY: plain syscalls on a descriptor this struct owns; the path is NUL-terminated.
        unsafe {
            let fd = libc::inotify_init1(libc::IN_CLOEXEC);
            assert!(fd >= 0, "inotify_init1 failed");
            let path = std::ffi::CString::new(jobs_dir.as_os_str().as_bytes()).expect("path");
            let wd = libc::inotify_add_watch(fd, path.as_ptr(), libc::IN_MOVED_TO);
            assert!(wd >= 0, "inotify_add_watch failed");
            FolderWatch { fd }
        }
    }

    /// Waits until a job folder (a name not starting with `.`) is moved in; panics after
    /// `timeout`.
    fn wait_filed(&self, timeout: Duration) {
        let deadline = Instant::now() + timeout;
        let mut buffer = [0u8; 4096];
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            assert!(!left.is_zero(), "no job filed within {timeout:?}");
            let mut poll = libc::pollfd {
                fd: self.fd,
                events: libc::POLLIN,
                revents: 0,
            };
            // SAFETY: one valid pollfd; the buffer outlives the read.
            let len = unsafe {
                if libc::poll(&mut poll, 1, left.as_millis().min(1000) as i32) <= 0 {
                    continue;
                }
                libc::read(self.fd, buffer.as_mut_ptr().cast(), buffer.len())
            };
            let mut at = 0usize;
            let len = usize::try_from(len).unwrap_or(0);
            let header = std::mem::size_of::<libc::inotify_event>();
            let mut filed = false;
            while at + header <= len {
                // SAFETY: the kernel wrote a whole event header at `at`.
                let event: libc::inotify_event =
                    unsafe { std::ptr::read_unaligned(buffer.as_ptr().add(at).cast()) };
                let name = &buffer[at + header..at + header + event.len as usize];
                if name.first().is_some_and(|b| *b != b'.' && *b != 0) {
                    filed = true;
                }
                at += header + event.len as usize;
            }
            if filed {
                return;
            }
        }
    }
}

impl Drop for FolderWatch {
    fn drop(&mut self) {
        // SAFETY: closing the descriptor this struct owns.
        unsafe { libc::close(self.fd) };
    }
}

/// Writes the queue index a daemon would have after filing all the copies: the template
/// job's own entry (with the plan the daemon computed for it) under every copy's id.
fn write_index(state: &Path, jobs_dir: &Path) {
    let path = state.join(INDEX_FILE);
    let template = read_index(&path)
        .expect("the template run left an index")
        .entries
        .into_values()
        .next()
        .expect("the template job is in the index");
    assert!(template.plan.is_some(), "the template entry has its plan");
    let mut reconciled = Reconciled::default();
    for id in job_folder_ids(jobs_dir).expect("list job folders") {
        let mut entry = template.clone();
        entry.id = id.clone();
        reconciled.entries.insert(id, entry);
    }
    IndexWriter::open(&path, &reconciled).expect("write the index");
}

fn index_entries(state: &Path) -> usize {
    read_index(&state.join(INDEX_FILE)).map_or(0, |file| file.entries.len())
}

fn run_size(size: usize, rebuild: bool) {
    let farm = Farm::new("hold_queue: true\ngpu_pool: { kind: cpu, slots: 1 }\n");
    let jobs_dir = farm.jobs_dir();
    let text = farm.job_yaml("bench", "");
    {
        let mut daemon = farm.start_daemon();
        farm.drop_job("template.yaml", &text);
        wait_for("the template job", Duration::from_secs(30), || {
            (index_entries(&farm.state) == 1).then_some(())
        });
        daemon.terminate(Duration::from_secs(60));
    }
    let made = Instant::now();
    clone_jobs(&jobs_dir, size - 1);
    write_index(&farm.state, &jobs_dir);
    println!(
        "\n== {size} queued jobs (folders and index written in {:.1} s)",
        made.elapsed().as_secs_f64()
    );

    let (service, ready) = Service::start(&farm, "first");
    println!("start: READY after {:.0} ms", ms(ready));
    let tmp = farm.spool.join("tmp");
    std::fs::create_dir_all(&tmp).expect("spool tmp");
    let mut latencies = Vec::with_capacity(DROPS);
    let watch = FolderWatch::new(&jobs_dir);
    for n in 0..DROPS {
        // Every drop its own output path: intake refuses a second unfinished job for one.
        let file = format!("single-{n:05}.yaml");
        std::fs::write(
            tmp.join(&file),
            farm.job_yaml(&format!("single-{n:05}"), ""),
        )
        .expect("write job");
        let start = Instant::now();
        std::fs::rename(tmp.join(&file), farm.incoming().join(&file)).expect("rename");
        watch.wait_filed(Duration::from_secs(30));
        latencies.push(start.elapsed());
    }
    drop(watch);
    let known = count_jobs(&jobs_dir);
    latencies.sort();
    println!(
        "intake while {size} queued: n={DROPS} p50={:.2} ms p99={:.2} ms max={:.2} ms",
        ms(percentile(&latencies, 0.50)),
        ms(percentile(&latencies, 0.99)),
        ms(latencies[latencies.len() - 1]),
    );
    for n in 0..BURST {
        let name = format!("burst-{n:05}");
        std::fs::write(tmp.join(format!("{name}.yaml")), farm.job_yaml(&name, ""))
            .expect("write burst");
    }
    let start = Instant::now();
    for n in 0..BURST {
        let file = format!("burst-{n:05}.yaml");
        std::fs::rename(tmp.join(&file), farm.incoming().join(&file)).expect("rename burst");
    }
    wait_for("the burst to be queued", Duration::from_secs(300), || {
        (count_jobs(&jobs_dir) >= known + BURST).then_some(())
    });
    let filed = start.elapsed();
    let stop = service.stop();
    println!(
        "burst of {BURST} filed after {:.0} ms; stop right after it took {:.0} ms",
        ms(filed),
        ms(stop)
    );

    let total = count_jobs(&jobs_dir);
    let (service, ready) = Service::start(&farm, "second");
    wait_for(
        "the index to list every job",
        Duration::from_secs(600),
        || (index_entries(&farm.state) == total).then_some(()),
    );
    let timed = |args: &[&str]| {
        let start = Instant::now();
        let out = farm.cli(args);
        let took = start.elapsed();
        assert!(out.status.success(), "{args:?}: {out:?}");
        (took, out.stdout.len())
    };
    let (filtered, _) = timed(&["status", "--state", "queued", "--limit", "20"]);
    let (full, bytes) = timed(&["status"]);
    let last = job_folder_ids(&jobs_dir)
        .expect("list job folders")
        .into_iter()
        .max()
        .expect("a job");
    let (cancel, _) = timed(&["cancel", last.as_str()]);
    println!(
        "with {total} jobs: `status --state queued --limit 20` {:.0} ms, full `status` {:.0} ms ({:.1} MB), `cancel ID` confirmed by the daemon {:.0} ms",
        ms(filtered),
        ms(full),
        bytes as f64 / 1e6,
        ms(cancel)
    );
    let stop = service.stop();
    println!(
        "restart with {total} jobs: READY after {:.0} ms, idle stop took {:.0} ms",
        ms(ready),
        ms(stop)
    );
    let bytes = std::fs::metadata(farm.state.join(INDEX_FILE)).map_or(0, |m| m.len());
    println!("queue index: {:.1} MB", bytes as f64 / 1e6);

    if rebuild {
        std::fs::remove_file(farm.state.join(INDEX_FILE)).expect("remove the index");
        let (service, ready) = Service::start(&farm, "rebuild");
        let start = Instant::now();
        wait_for("the rebuilt index", Duration::from_secs(3600), || {
            (index_entries(&farm.state) == total).then_some(())
        });
        let rebuilt = start.elapsed() + ready;
        let stop = service.stop();
        println!(
            "without an index: READY after {:.0} ms, every job read back into the queue after {:.1} s, stop took {:.0} ms",
            ms(ready),
            rebuilt.as_secs_f64(),
            ms(stop)
        );
    }
}

fn main() {
    let rebuild = !std::env::args().any(|arg| arg == "--no-rebuild");
    let sizes: Vec<usize> = std::env::args()
        .skip(1)
        .filter_map(|arg| arg.parse().ok())
        .collect();
    let sizes = if sizes.is_empty() {
        vec![1_000, 10_000, 100_000]
    } else {
        sizes
    };
    for size in sizes {
        run_size(size.max(1), rebuild && size <= REBUILD_UP_TO);
    }
}
