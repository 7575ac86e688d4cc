//! Placement benchmark: `cargo bench -p gpu-pool --bench schedule`.
//!
//! (a) Makespan. 500 Live Avatar jobs (a mix of sizes, frames per clip and clip counts, all
//!     submitted at once) run in a discrete-event simulation on 6 × 24 GB + 2 × 80 GB
//!     simulated cards. Job times come from the `liveavatar-14b` profile's speed model; the
//!     scheduler sees those estimates while the simulated runs take 0.9–1.1× as long, as real
//!     runs would. The makespan is compared with
//!       - a lower bound no schedule can beat: the larger of (total work measured in
//!         80 GB-card seconds) / (pool capacity, where an 80 GB card counts 1 and a 24 GB card
//!         1/slowdown because Live Avatar only runs there with offload) and the longest single
//!         job on an 80 GB card. The first term is what perfectly divisible work on the pool
//!         would take; the second is what the longest job alone takes at best.
//!       - the shell-loop practice: jobs dealt round-robin to cards in submission order, each
//!         card running its list one after another. On a 24 GB card a job runs with offload
//!         when it fits that way; a job that fits neither way (`offload: false` or too big)
//!         fails and takes no time, which flatters the baseline.
//! (b) Decision time with 100,000 queued jobs and 256 cards (192 × 24 GB, 64 × 80 GB): the
//!     time of one `next_placements` after a release, median and p99.
//! (c) Model loads. The same 500-job mix, now with two models of the same size (70% the base
//!     model, 30% a fine-tune with its own weights), where a run that starts in a process that
//!     does not hold the job's model first pays a load: the weights read from disk (and copied
//!     to the card when they fit there) plus the kernel compilation and autotuning of a fresh
//!     process (see [`LoadCost`]). Compared: the ideal (no load ever), a process per job (every
//!     run loads; with a cold kernel cache, and with a warm one that saves all compiling),
//!     warm workers without and with placement's preference for a card whose worker holds the
//!     job's model. Throughput is given as the ideal makespan over each makespan.

use std::cmp::Reverse;
use std::collections::{BinaryHeap, HashMap, HashSet};
use std::path::Path;
use std::time::{Duration, Instant};

use gpu_pool::{
    load_profiles, CardState, EstimateRequest, MemoryProfile, OffloadChoice, Placement, QueuedJob,
    RunOutcome, Scheduler, SchedulerPolicy, GIB,
};

/// splitmix64: a tiny seeded generator, so every run simulates the same jobs.
struct Rng(u64);

impl Rng {
    fn next_u64(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }

    /// Uniform in [0, 1).
    fn unit(&mut self) -> f64 {
        (self.next_u64() >> 11) as f64 / (1u64 << 53) as f64
    }

    fn pick<T: Copy>(&mut self, weighted: &[(T, f64)]) -> T {
        let total: f64 = weighted.iter().map(|(_, w)| w).sum();
        let mut x = self.unit() * total;
        for &(value, weight) in weighted {
            if x < weight {
                return value;
            }
            x -= weight;
        }
        weighted[weighted.len() - 1].0
    }
}

/// Which share of jobs say `offload: true` and `offload: false` in their file; the rest
/// leave the default, `auto`.
#[derive(Debug, Clone, Copy)]
struct Mix {
    forced_on: f64,
    forced_off: f64,
}

/// Most users keep `auto`; a few pin offload off (they want full speed and will wait for a big
/// card).
const REALISTIC: Mix = Mix {
    forced_on: 0.0,
    forced_off: 0.05,
};

/// The same with 5% of jobs forcing offload, which makes them 4× slower on every card.
const FORCED_OFFLOAD: Mix = Mix {
    forced_on: 0.05,
    forced_off: 0.05,
};

/// One job: the sizes people use (720*400 is the upstream default, 688*368 and 384*256 the
/// low-memory choices), 48 or 32 frames per clip, 5 to 160 clips (10 s to 5 min of video,
/// log-uniform), 10% urgent jobs.
fn random_job(rng: &mut Rng, profile: &MemoryProfile, seq: u64, mix: Mix) -> QueuedJob {
    let (width, height) = rng.pick(&[
        ((704, 384), 0.4),
        ((688, 368), 0.25),
        ((720, 400), 0.15),
        ((384, 256), 0.2),
    ]);
    let frames = rng.pick(&[(48, 0.6), (32, 0.4)]);
    let clips = (5.0 * 32f64.powf(rng.unit())).round() as u32;
    let priority = rng.pick(&[(0, 0.9), (5, 0.1)]);
    let offload = rng.pick(&[
        (OffloadChoice::On, mix.forced_on),
        (OffloadChoice::Off, mix.forced_off),
        (OffloadChoice::Auto, 1.0 - mix.forced_on - mix.forced_off),
    ]);
    let req = EstimateRequest {
        width,
        height,
        frames,
        offload,
    };
    QueuedJob::from_profile(&format!("job-{seq}"), priority, seq, profile, &req, clips)
}

fn cards(count_24: usize, count_80: usize) -> Vec<CardState> {
    let card = |uuid: String, gib: u64| CardState {
        uuid,
        memory_total_bytes: gib * GIB,
        leased_by: None,
        drained: false,
        healthy: true,
    };
    (0..count_24)
        .map(|i| card(format!("GPU-sim-24-{i}"), 24))
        .chain((0..count_80).map(|i| card(format!("GPU-sim-80-{i}"), 80)))
        .collect()
}

fn hours(secs: f64) -> String {
    format!("{:.2} h", secs / 3600.0)
}

/// Simulated running time: the estimate of the mode, times the job's noise.
fn actual(job: &QueuedJob, noise: f64, offload: bool) -> f64 {
    let demand = if offload {
        job.with_offload.unwrap_or(job.no_offload)
    } else {
        job.no_offload
    };
    demand.est.as_secs_f64() * noise
}

struct Outcome {
    work: f64,
    longest: f64,
    capacity: f64,
    bound: f64,
    ours: f64,
    baseline: f64,
    offloaded: usize,
    refused: usize,
    failed: usize,
}

impl Outcome {
    fn over_bound(&self) -> f64 {
        100.0 * (self.ours / self.bound - 1.0)
    }
}

fn simulate(profile: &MemoryProfile, seed: u64, mix: Mix) -> Outcome {
    let slowdown = profile.offload.as_ref().map_or(1.0, |m| m.slowdown);
    let mut rng = Rng(seed);
    let jobs: Vec<(QueuedJob, f64)> = (0..500)
        .map(|seq| {
            (
                random_job(&mut rng, profile, seq, mix),
                0.9 + 0.2 * rng.unit(),
            )
        })
        .collect();
    let pool = cards(6, 2);

    // The bound. Work counts every job at its 80 GB-card speed without offload; a job forced
    // to offload still uses at least that much capacity (4× the time on a 24 GB card, which
    // counts 1/4), so the bound stays a bound. The longest job counts in its fastest allowed
    // mode.
    let work: f64 = jobs.iter().map(|(j, n)| actual(j, *n, false)).sum();
    let longest = jobs
        .iter()
        .map(|(j, n)| actual(j, *n, j.offload == OffloadChoice::On))
        .fold(0.0, f64::max);
    let capacity = 2.0 + 6.0 / slowdown;
    let bound = (work / capacity).max(longest);

    // The scheduler, event by event.
    let mut scheduler =
        Scheduler::new(pool.clone(), SchedulerPolicy::default()).expect("distinct uuids");
    let by_id: HashMap<String, (QueuedJob, f64)> = jobs
        .iter()
        .map(|(job, noise)| (job.id.clone(), (job.clone(), *noise)))
        .collect();
    let mut refused = 0;
    for (job, _) in &jobs {
        if scheduler.enqueue(job.clone(), Duration::ZERO).is_err() {
            refused += 1;
        }
    }
    let mut events: BinaryHeap<Reverse<(Duration, String)>> = BinaryHeap::new();
    let mut now = Duration::ZERO;
    let mut offloaded = 0;
    loop {
        for placement in scheduler.next_placements(now) {
            let (job, noise) = &by_id[&placement.job_id];
            offloaded += usize::from(placement.offload_used);
            let secs = actual(job, *noise, placement.offload_used);
            events.push(Reverse((
                now + Duration::from_secs_f64(secs),
                placement.job_id,
            )));
        }
        let Some(Reverse((at, job))) = events.pop() else {
            break;
        };
        now = at;
        scheduler
            .release(&job, RunOutcome::Finished)
            .expect("simulated job is running");
    }

    // The shell loops.
    let mut per_card = vec![0.0; pool.len()];
    let mut failed = 0;
    for (i, (job, noise)) in jobs.iter().enumerate() {
        let card = i % pool.len();
        let fits = |bytes: u64| bytes <= pool[card].memory_total_bytes;
        if job.offload != OffloadChoice::On && fits(job.no_offload.vram_bytes) {
            per_card[card] += actual(job, *noise, false);
        } else if job.offload != OffloadChoice::Off
            && job.with_offload.is_some_and(|d| fits(d.vram_bytes))
        {
            per_card[card] += actual(job, *noise, true);
        } else {
            failed += 1;
        }
    }
    Outcome {
        work,
        longest,
        capacity,
        bound,
        ours: now.as_secs_f64(),
        baseline: per_card.iter().copied().fold(0.0, f64::max),
        offloaded,
        refused,
        failed,
    }
}

fn summary(profile: &MemoryProfile, name: &str, mix: Mix) {
    let runs: Vec<Outcome> = (1..=20).map(|seed| simulate(profile, seed, mix)).collect();
    let mut over: Vec<f64> = runs.iter().map(Outcome::over_bound).collect();
    over.sort_by(f64::total_cmp);
    let within = over.iter().filter(|&&o| o <= 3.0).count();
    let speedup = runs
        .iter()
        .map(|r| r.baseline / r.ours)
        .fold(f64::INFINITY, f64::min);
    println!(
        "    {name:<24} over the bound: median {:+.2}%, worst {:+.2}%, {within}/{} within 3%; speed-up over the loops at least {speedup:.2}x",
        over[over.len() / 2],
        over[over.len() - 1],
        over.len(),
    );
}

fn makespan(profile: &MemoryProfile) {
    let run = simulate(profile, 42, REALISTIC);
    println!("(a) makespan, 500 jobs on 6 x 24 GB + 2 x 80 GB (simulated), seed 42");
    println!(
        "    total work          {} on an 80 GB card",
        hours(run.work)
    );
    println!(
        "    lower bound         {}  (work / {:.2} card-equivalents; longest job {})",
        hours(run.bound),
        run.capacity,
        hours(run.longest)
    );
    println!(
        "    reelspool           {}  = {:+.2}% over the bound ({} offloaded runs, {} refused)",
        hours(run.ours),
        run.over_bound(),
        run.offloaded,
        run.refused
    );
    println!(
        "    per-card FIFO loops {}  = {:+.2}% over the bound ({} jobs failed)",
        hours(run.baseline),
        100.0 * (run.baseline / run.bound - 1.0),
        run.failed
    );
    println!(
        "    speed-up over the loops: {:.2}x",
        run.baseline / run.ours
    );
    println!("  20 seeds each:");
    summary(profile, "auto 95%, off 5%", REALISTIC);
    summary(profile, "auto 90%, off 5%, on 5%", FORCED_OFFLOAD);
}

fn percentile(sorted: &[Duration], p: f64) -> Duration {
    let index = ((sorted.len() as f64 - 1.0) * p).round() as usize;
    sorted[index]
}

/// Feeds the decision-time benchmark with jobs and remembers how long each would run.
struct Feed<'a> {
    rng: Rng,
    profile: &'a MemoryProfile,
    seq: u64,
    /// Expected running time of each queued or running job: (plain, offload).
    est: HashMap<String, (Duration, Duration)>,
}

impl Feed<'_> {
    fn enqueue(&mut self, scheduler: &mut Scheduler, now: Duration) {
        let mut job = random_job(&mut self.rng, self.profile, self.seq, REALISTIC);
        job.priority = (self.rng.next_u64() % 11) as i32 - 5;
        self.seq += 1;
        let plain = job.no_offload.est;
        let offload = job.with_offload.map_or(plain, |d| d.est);
        let id = job.id.clone();
        // A refused job (too big even with offload) is simply not queued.
        if scheduler.enqueue(job, now).is_ok() {
            self.est.insert(id, (plain, offload));
        }
    }

    fn run_time(&self, placement: &Placement) -> Duration {
        let (plain, offload) = self.est[&placement.job_id];
        if placement.offload_used {
            offload
        } else {
            plain
        }
    }
}

fn decision_time(profile: &MemoryProfile) {
    const QUEUED: u64 = 100_000;
    const ROUNDS: usize = 5_000;
    let mut scheduler =
        Scheduler::new(cards(192, 64), SchedulerPolicy::default()).expect("distinct uuids");
    let mut feed = Feed {
        rng: Rng(7),
        profile,
        seq: 0,
        est: HashMap::new(),
    };
    let started = Instant::now();
    for _ in 0..QUEUED {
        feed.enqueue(&mut scheduler, Duration::ZERO);
    }
    let enqueue_time = started.elapsed();
    let mut running: BinaryHeap<Reverse<(Duration, String)>> = BinaryHeap::new();
    let started = Instant::now();
    let first = scheduler.next_placements(Duration::ZERO);
    let fill_time = started.elapsed();
    for placement in first {
        running.push(Reverse((feed.run_time(&placement), placement.job_id)));
    }
    let mut times = Vec::with_capacity(ROUNDS);
    let mut now = Duration::ZERO;
    for _ in 0..ROUNDS {
        let Some(Reverse((at, job))) = running.pop() else {
            break;
        };
        now = now.max(at);
        scheduler
            .release(&job, RunOutcome::Finished)
            .expect("benchmark job is running");
        feed.enqueue(&mut scheduler, now);
        let started = Instant::now();
        let placements = scheduler.next_placements(now);
        times.push(started.elapsed());
        for placement in placements {
            let at = now + feed.run_time(&placement);
            running.push(Reverse((at, placement.job_id)));
        }
    }
    times.sort();
    println!(
        "(b) decision time, {} queued jobs, 256 cards (192 x 24 GB, 64 x 80 GB)",
        scheduler.queued_len()
    );
    println!("    enqueue 100,000 jobs: {enqueue_time:.2?}; first pass filling 256 cards: {fill_time:.2?}");
    println!(
        "    next_placements after a release ({} rounds): median {:.2?}, p99 {:.2?}, p99.9 {:.2?}, max {:.2?}",
        times.len(),
        percentile(&times, 0.5),
        percentile(&times, 0.99),
        percentile(&times, 0.999),
        times.last().copied().unwrap_or_default()
    );
}

/// What a run pays before its first clip when its process does not hold its model yet.
struct LoadCost {
    /// Bytes of weights to read (Live Avatar 14B: ~33 GB).
    weights_bytes: f64,
    /// Read speed of the model store (a local NVMe, cold page cache).
    disk_bytes_per_sec: f64,
    /// Host-to-card copy (PCIe 4 x16 in practice), for cards the weights fit on.
    pcie_bytes_per_sec: f64,
    /// JIT compile + autotune of a fresh process: ENGINE.md §6 measured 140.7 s + 48.1 s for the
    /// first clip of the tiny model on an H200; the 14B shapes compile at least as much.
    compile_secs: f64,
}

const LOADS: LoadCost = LoadCost {
    weights_bytes: 33e9,
    disk_bytes_per_sec: 2e9,
    pcie_bytes_per_sec: 25e9,
    compile_secs: 188.8,
};

impl LoadCost {
    /// Seconds to load a model on a card of `card_gib`: on a 24 GB card Live Avatar runs with
    /// offload and its weights stay in host memory.
    fn secs(&self, card_gib: u64, compile: bool) -> f64 {
        let read = self.weights_bytes / self.disk_bytes_per_sec;
        let copy = if card_gib >= 80 {
            self.weights_bytes / self.pcie_bytes_per_sec
        } else {
            0.0
        };
        read + copy + if compile { self.compile_secs } else { 0.0 }
    }
}

/// How processes and models meet in the model-load simulation. With `cache` the kernel cache
/// on disk (`<state_dir>/kernel-cache/`) is on: a load compiles only the first time its model
/// meets its card size and job shape (compiled kernels depend on all three; the shape is told
/// apart by the job's memory estimate), after that it only reads the weights.
#[derive(Debug, Clone, Copy, PartialEq)]
enum Workers {
    /// Loads cost nothing: the best any farm can do.
    Ideal,
    /// A process per job: every run loads.
    PerJob { cache: bool },
    /// A worker per card keeps its model; a run loads only when the card's worker holds
    /// another model. `prefer` turns on placement's preference for a warm card.
    Warm { prefer: bool, cache: bool },
}

fn simulate_loads(profile: &MemoryProfile, seed: u64, workers: Workers) -> (f64, usize) {
    let mut rng = Rng(seed);
    let jobs: Vec<(QueuedJob, f64)> = (0..500)
        .map(|seq| {
            let mut job = random_job(&mut rng, profile, seq, REALISTIC);
            job.model = Some(
                rng.pick(&[("liveavatar-14b", 0.7), ("fine-tune", 0.3)])
                    .into(),
            );
            (job, 0.9 + 0.2 * rng.unit())
        })
        .collect();
    let pool = cards(6, 2);
    let gib_of: HashMap<String, u64> = pool
        .iter()
        .map(|card| (card.uuid.clone(), card.memory_total_bytes / GIB))
        .collect();
    let mut scheduler =
        Scheduler::new(pool.clone(), SchedulerPolicy::default()).expect("distinct uuids");
    let by_id: HashMap<String, (QueuedJob, f64)> = jobs
        .iter()
        .map(|(job, noise)| (job.id.clone(), (job.clone(), *noise)))
        .collect();
    for (job, _) in &jobs {
        let _ = scheduler.enqueue(job.clone(), Duration::ZERO);
    }
    // The model each card's worker holds (for `Warm`).
    let mut held: HashMap<String, String> = HashMap::new();
    // (model, card size, shape) whose kernels are in the disk cache.
    let mut compiled: HashSet<(String, u64, u64)> = HashSet::new();
    let mut events: BinaryHeap<Reverse<(Duration, String, String)>> = BinaryHeap::new();
    let mut now = Duration::ZERO;
    let mut loads = 0;
    loop {
        for placement in scheduler.next_placements(now) {
            let (job, noise) = &by_id[&placement.job_id];
            let model = job.model.clone().unwrap_or_default();
            let gib = gib_of[&placement.card_uuid];
            let shape = (model.clone(), gib, job.no_offload.vram_bytes);
            let (loads_now, cache) = match workers {
                Workers::Ideal => (false, false),
                Workers::PerJob { cache } => (true, cache),
                Workers::Warm { cache, .. } => {
                    (held.get(&placement.card_uuid) != Some(&model), cache)
                }
            };
            let load = if loads_now {
                let compile = !cache || compiled.insert(shape);
                LOADS.secs(gib, compile)
            } else {
                0.0
            };
            loads += usize::from(load > 0.0);
            held.insert(placement.card_uuid.clone(), model);
            let secs = load + actual(job, *noise, placement.offload_used);
            events.push(Reverse((
                now + Duration::from_secs_f64(secs),
                placement.job_id,
                placement.card_uuid,
            )));
        }
        let Some(Reverse((at, job, card))) = events.pop() else {
            break;
        };
        now = at;
        scheduler
            .release(&job, RunOutcome::Finished)
            .expect("simulated job is running");
        if matches!(workers, Workers::Warm { prefer: true, .. }) {
            scheduler
                .set_warm_model(&card, held.get(&card).cloned())
                .expect("known card");
        }
    }
    (now.as_secs_f64(), loads)
}

fn model_loads(profile: &MemoryProfile) {
    println!("(c) model loads, 500 jobs (70% base model, 30% fine-tune) on 6 x 24 GB + 2 x 80 GB");
    println!(
        "    load per (model, card): 80 GB {:.0} s ({:.0} s without compiling), 24 GB with offload {:.0} s ({:.0} s)",
        LOADS.secs(80, true),
        LOADS.secs(80, false),
        LOADS.secs(24, true),
        LOADS.secs(24, false),
    );
    let variants = [
        ("ideal (no loads)", Workers::Ideal),
        ("process per job", Workers::PerJob { cache: false }),
        ("per job + kernel cache", Workers::PerJob { cache: true }),
        (
            "warm, no preference",
            Workers::Warm {
                prefer: false,
                cache: false,
            },
        ),
        (
            "warm workers",
            Workers::Warm {
                prefer: true,
                cache: false,
            },
        ),
        (
            "warm + kernel cache",
            Workers::Warm {
                prefer: true,
                cache: true,
            },
        ),
    ];
    for seed in [42] {
        let ideal = simulate_loads(profile, seed, Workers::Ideal).0;
        println!("    seed {seed}:");
        for (name, workers) in variants {
            let (makespan, loads) = simulate_loads(profile, seed, workers);
            println!(
                "      {name:<24} {}  {loads:>3} loads  throughput {:.1}% of the ideal",
                hours(makespan),
                100.0 * ideal / makespan
            );
        }
    }
    println!("  20 seeds, throughput as a share of the ideal (median, worst):");
    for (name, workers) in &variants[1..] {
        let mut shares: Vec<f64> = (1..=20)
            .map(|seed| {
                simulate_loads(profile, seed, Workers::Ideal).0
                    / simulate_loads(profile, seed, *workers).0
            })
            .collect();
        shares.sort_by(f64::total_cmp);
        println!(
            "      {name:<24} median {:.1}%, worst {:.1}%",
            100.0 * shares[shares.len() / 2],
            100.0 * shares[0]
        );
    }
}

fn main() {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("../templates/profiles");
    let profiles = load_profiles(&dir).expect("the shipped profiles load");
    let profile = profiles
        .get("liveavatar-14b")
        .expect("liveavatar-14b is shipped");
    makespan(profile);
    model_loads(profile);
    decision_time(profile);
}
