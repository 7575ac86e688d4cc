//! Intake benchmark: latency from `rename()` into `incoming/` to a durable `state.json` in the
//! queued state, over 1,000 single drops into an idle daemon, and the time to file a burst of
//! 10,000 files dropped at once.
//!
//! Run: `cargo bench -p reelspool --bench intake` (add `-- --quick` for 100 drops and a
//! 1,000-file burst). Results are recorded in BENCHMARKS.md.

#[path = "../../tests/common/mod.rs"]
mod common;
mod support;

use std::time::{Duration, Instant};

use common::Farm;
use support::{count_jobs, percentile};

fn main() {
    let quick = std::env::args().any(|arg| arg == "--quick");
    let (drops, burst) = if quick { (100, 1_000) } else { (1_000, 10_000) };
    let farm = Farm::new("hold_queue: true\ngpu_pool: { kind: cpu, slots: 1 }\n");
    let _daemon = farm.start_daemon();
    let tmp = farm.spool.join("tmp");
    // Every job its own output path: intake refuses a second unfinished job for one.
    let job = |name: &str| farm.job_yaml(name, "");

    // 1. Single drops into an idle daemon.
    let mut latencies = Vec::with_capacity(drops);
    for n in 0..drops {
        let file = format!("single-{n:05}.yaml");
        std::fs::write(tmp.join(&file), job(&format!("single-{n:05}"))).expect("write job");
        let before = count_jobs(&farm.jobs_dir());
        let start = Instant::now();
        std::fs::rename(tmp.join(&file), farm.incoming().join(&file)).expect("rename");
        loop {
            if count_jobs(&farm.jobs_dir()) > before {
                break;
            }
            if start.elapsed() > Duration::from_secs(10) {
                panic!("drop {n} not filed within 10 s");
            }
            std::thread::sleep(Duration::from_micros(200));
        }
        latencies.push(start.elapsed());
    }
    latencies.sort();
    println!(
        "single drops: n={drops} p50={:.2} ms p99={:.2} ms max={:.2} ms",
        percentile(&latencies, 0.50).as_secs_f64() * 1e3,
        percentile(&latencies, 0.99).as_secs_f64() * 1e3,
        latencies[latencies.len() - 1].as_secs_f64() * 1e3,
    );

    // 2. A burst: all files written first, then renamed in as fast as possible.
    let base = count_jobs(&farm.jobs_dir());
    for n in 0..burst {
        let name = format!("burst-{n:05}");
        std::fs::write(tmp.join(format!("{name}.yaml")), job(&name)).expect("write burst");
    }
    let start = Instant::now();
    for n in 0..burst {
        let file = format!("burst-{n:05}.yaml");
        std::fs::rename(tmp.join(&file), farm.incoming().join(&file)).expect("rename burst");
    }
    let renamed = start.elapsed();
    loop {
        if count_jobs(&farm.jobs_dir()) >= base + burst {
            break;
        }
        if start.elapsed() > Duration::from_secs(120) {
            panic!(
                "burst not filed within 120 s ({} of {burst})",
                count_jobs(&farm.jobs_dir()) - base
            );
        }
        std::thread::sleep(Duration::from_millis(5));
    }
    println!(
        "burst: {burst} files renamed in {:.2} s, all queued after {:.2} s",
        renamed.as_secs_f64(),
        start.elapsed().as_secs_f64()
    );
}
