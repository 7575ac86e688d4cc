//! The render worker's numbers from DESIGN.md §6, measured on the real worker code.
//!
//! ```text
//! cargo bench -p render --bench worker                # everything (several minutes on 2 cores)
//! cargo bench -p render --bench worker -- rss 10 200  # one section, with its own clip counts
//! ```
//! Sections (`rss`, `encode`, `phases`, `resume`; all when none is named):
//! - `rss`: peak resident memory of a worker process rendering a small and a large job
//!   (default 10 and 200 clips at 256*256, 16 frames, 2 steps), online decode on and off. The
//!   worker is this very binary re-started as `worker <job-dir>`, which calls
//!   `render::worker::run` exactly as `reelspool worker` does; the peak comes from the
//!   kernel's accounting of the child (`wait4` → `ru_maxrss`).
//! - `encode`: H.264 frames per second at 704x384 with one encoder thread, the process pinned
//!   to one CPU, on frames the tiny model rendered at that size.
//! - `phases`: per clip, time to denoise, decode, encode and checkpoint (carry +
//!   checkpoint.json, each fsynced), at 256*256 / 16 frames / 2 steps.
//! - `resume`: a worker is stopped with SIGTERM halfway through a job; the time from starting
//!   the next worker to its first new clip, against the same for a fresh start.
//! - `overlap`: the share of a clip's wall time the worker spends outside the engine, at
//!   704*384 × 48 frames, 25 fps, a checkpoint after every clip, with a command engine that
//!   sleeps [`DIT_SECS`] per clip (the DiT time of a 48-frame clip at PyTorch speed on one
//!   H100, ENGINE.md) and then writes its frames. The engine logs its own time per clip; the
//!   worker's share is 1 − engine time / wall time, over the whole job (from `started` to
//!   the last `clip_done`) and per clip once the job runs steadily (`clip_done` to
//!   `clip_done`, clips 2 and on).

use std::error::Error;
use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use jobs::spec::{
    CheckpointEvery, Codec, EngineKind, EngineSpec, Inputs, NotifySpec, NumClip, OutputSpec,
    RenderSettings, RetryPolicy, Size,
};
use jobs::state::JobDir;
use jobs::JobSpec;
use render::checkpoint::CheckpointStore;
use render::engine::external::{EngineDeclaration, ResolvedEngine, RESOLVED_ENGINE_FILE};
use render::engine::{self, ClipIndex, Conditioning, EngineCarry, EngineSettings};
use render::media::{self, ClipEncoder, EncodeSettings, VideoCodec};
use render::protocol::WorkerMessage;

type Result<T> = std::result::Result<T, Box<dyn Error>>;

/// The size, frames and steps the memory, phase and resume sections render at: realistic
/// shapes for a CPU, a few tenths of a second per clip.
const BENCH_SIZE: (u32, u32) = (256, 256);
const BENCH_FRAMES: u32 = 16;
const BENCH_STEPS: u32 = 2;
const FPS: u32 = 16;
/// The DiT time of one 704*384 × 48 clip the `overlap` section's engine sleeps for.
const DIT_SECS: f64 = 3.8;

/// The `overlap` section's engine: sleeps, then writes the reference image brightened a
/// little more each frame (`bytes.translate` keeps Python's own cost to milliseconds), and
/// appends `<clip> <seconds>` to the file `ENGINE_TIMES` names.
const SLEEPING_ENGINE: &str = r#"
import json, os, sys, time
sleep = float(os.environ["DIT_SECS"])
times = open(os.environ["ENGINE_TIMES"], "a")
def send(message):
    sys.stdout.write(json.dumps(message) + "\n")
    sys.stdout.flush()
send({"type": "hello", "protocol": 1, "engine": "sleeper", "capabilities": []})
tables = [bytes((b + k) % 256 for b in range(256)) for k in range(96)]
for line in sys.stdin:
    request = json.loads(line)
    kind = request["type"]
    if kind == "shutdown":
        break
    if kind == "load":
        with open(request["inputs"]["reference_rgb"], "rb") as f:
            reference = f.read()
        send({"type": "ok"})
    elif kind == "render_clip":
        started = time.monotonic()
        time.sleep(sleep)
        index = request["index"]
        with open(request["frames_path"], "wb") as f:
            for i in range(request["frames"]):
                f.write(reference.translate(tables[(index * 7 + i) % 96]))
        with open(os.path.join(request["carry_out"], "count.txt"), "w") as f:
            f.write(str(index))
        times.write("%d %.6f\n" % (index, time.monotonic() - started))
        times.flush()
        send({"type": "ok", "frames": request["frames"]})
"#;

fn main() -> Result<()> {
    // `cargo bench` passes `--bench`; everything else is ours.
    let args: Vec<String> = std::env::args()
        .skip(1)
        .filter(|a| a != "--bench")
        .collect();
    if args.first().map(String::as_str) == Some("worker") {
        let (Some(job_dir), Some(cache)) = (args.get(1), args.get(2)) else {
            return Err("usage: worker <job-dir> <model-cache>".into());
        };
        std::process::exit(render::worker::run(Path::new(job_dir), Path::new(cache)));
    }
    let section = args.first().cloned();
    let numbers: Vec<u32> = args.iter().skip(1).filter_map(|a| a.parse().ok()).collect();
    let root = tempfile::Builder::new()
        .prefix("reelspool-worker-bench-")
        .tempdir()?;
    let bench = Bench {
        root: root.path().to_path_buf(),
        cache: root.path().join("models"),
    };
    let wants = |name: &str| section.as_deref().is_none_or(|s| s == name);
    println!("# render worker benchmark ({} CPUs)", num_cpus());
    if wants("rss") {
        let small = numbers.first().copied().unwrap_or(10);
        let large = numbers.get(1).copied().unwrap_or(200);
        bench.peak_memory(small, large)?;
    }
    if wants("encode") {
        bench.encode_speed(numbers.first().copied().unwrap_or(6))?;
    }
    if wants("phases") {
        bench.clip_phases(numbers.first().copied().unwrap_or(40))?;
    }
    if wants("resume") {
        bench.resume_latency(numbers.first().copied().unwrap_or(40))?;
    }
    if wants("overlap") {
        bench.worker_overhead(numbers.first().copied().unwrap_or(12))?;
    }
    Ok(())
}

struct Bench {
    root: PathBuf,
    cache: PathBuf,
}

/// What one worker process did.
struct WorkerRun {
    peak_rss_kib: u64,
    wall: Duration,
    /// From spawn to the first `clip_done` line.
    first_clip: Option<Duration>,
    clips_done: u32,
    last_message: Option<WorkerMessage>,
    exit_code: Option<i32>,
}

impl Bench {
    fn examples() -> PathBuf {
        Path::new(env!("CARGO_MANIFEST_DIR")).join("../examples")
    }

    /// Writes a job directory for `clips` clips at the bench shape.
    fn job(&self, name: &str, clips: u32, online_decode: bool) -> Result<PathBuf> {
        let dir = self.root.join("jobs").join(name);
        std::fs::create_dir_all(&dir)?;
        let spec = JobSpec {
            name: name.to_string(),
            template: None,
            priority: 0,
            inputs: Inputs {
                image: Self::examples().join("portrait.png").canonicalize()?,
                audio: Self::examples().join("hello.wav").canonicalize()?,
                prompt: "A presenter looks into the camera".to_string(),
            },
            render: RenderSettings {
                size: Size {
                    width: BENCH_SIZE.0,
                    height: BENCH_SIZE.1,
                },
                num_clip: NumClip::Count(clips),
                infer_frames: BENCH_FRAMES,
                sample_steps: BENCH_STEPS,
                online_decode,
                fps: FPS,
                ..RenderSettings::default()
            },
            engine: EngineSpec::default(),
            output: OutputSpec {
                path: self.root.join("out").join(format!("{name}.mp4")),
                codec: Codec::H264,
                crf: 18,
                overwrite: false,
            },
            notify: NotifySpec::default(),
            retry: RetryPolicy::default(),
        };
        JobDir::new(&dir).save_spec(&spec)?;
        Ok(dir)
    }

    /// Starts a worker process on `job_dir`.
    fn spawn_worker(&self, job_dir: &Path) -> Result<Child> {
        Ok(Command::new(std::env::current_exe()?)
            .arg("worker")
            .arg(job_dir)
            .arg(&self.cache)
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .spawn()?)
    }

    /// Runs a worker to its end; with `stop_after`, sends it SIGTERM once that clip is done.
    fn run_worker(&self, job_dir: &Path, stop_after: Option<u32>) -> Result<WorkerRun> {
        let started = Instant::now();
        let mut child = self.spawn_worker(job_dir)?;
        let pid = child.id() as libc::pid_t;
        let stdout = child.stdout.take().ok_or("worker stdout is piped")?;
        let mut first_clip = None;
        let mut clips_done = 0;
        let mut last_message = None;
        for line in BufReader::new(stdout).lines() {
            let Some(message) = WorkerMessage::from_line(&line?) else {
                continue;
            };
            if let WorkerMessage::ClipDone { index, .. } = message {
                first_clip.get_or_insert(started.elapsed());
                clips_done += 1;
                if stop_after == Some(index) {
                    // SAFETY: kill() on our own child, not yet reaped.
                    unsafe { libc::kill(pid, libc::SIGTERM) };
                }
            }
            if !matches!(message, WorkerMessage::Heartbeat) {
                last_message = Some(message);
            }
        }
        let (exit_code, peak_rss_kib) = wait_with_peak_rss(pid)?;
        // The child is reaped; forget it without waiting a second time.
        std::mem::forget(child);
        Ok(WorkerRun {
            peak_rss_kib,
            wall: started.elapsed(),
            first_clip,
            clips_done,
            last_message,
            exit_code,
        })
    }

    fn peak_memory(&self, small: u32, large: u32) -> Result<()> {
        println!("\n## worker peak RSS, {}", shape());
        // One throwaway run so the tiny model's weights are in the cache for every measured run.
        self.run_worker(&self.job("warm-up", 1, true)?, None)?;
        println!("| online decode | {small} clips | {large} clips | ratio |\n|---|---|---|---|");
        for online in [true, false] {
            let mut peaks = Vec::new();
            for clips in [small, large] {
                let name = format!("rss-{clips}-{}", if online { "online" } else { "offline" });
                let run = self.run_worker(&self.job(&name, clips, online)?, None)?;
                check_finished(&run, &name)?;
                peaks.push(run.peak_rss_kib);
                eprintln!(
                    "{name}: {} KiB in {:.1} s",
                    run.peak_rss_kib,
                    run.wall.as_secs_f64()
                );
            }
            println!(
                "| {} | {:.1} MiB | {:.1} MiB | {:.3}x |",
                if online { "on" } else { "off" },
                peaks[0] as f64 / 1024.0,
                peaks[1] as f64 / 1024.0,
                peaks[1] as f64 / peaks[0] as f64
            );
        }
        Ok(())
    }

    fn encode_speed(&self, clips: u32) -> Result<()> {
        let (width, height, frames) = (704, 384, 16);
        println!("\n## H.264 encode at {width}x{height}, one thread, pinned to one CPU");
        let settings = engine_settings(width, height, frames, BENCH_STEPS);
        let mut engine = engine::load_engine(&settings, conditioning(width, height)?, &self.cache)?;
        let mut carry = EngineCarry::initial(&settings);
        let mut pictures = Vec::new();
        for k in 0..clips {
            let (latents, next) = engine.render_clip(ClipIndex(k), &carry)?;
            pictures.extend(engine.decode(&latents)?.rgb);
            carry = next;
        }
        drop(engine);
        let all_cpus = pin_to_one_cpu()?;
        let mut best = f64::MAX;
        for round in 0..3 {
            let path = self.root.join(format!("encode-{round}.mkv"));
            let start = Instant::now();
            let mut encoder = ClipEncoder::create(
                &path,
                &EncodeSettings::new(width, height, FPS, VideoCodec::H264, 18),
            )?;
            for frame in &pictures {
                encoder.push_frame(frame)?;
            }
            encoder.finish()?;
            best = best.min(start.elapsed().as_secs_f64());
        }
        set_affinity(&all_cpus)?;
        let fps = pictures.len() as f64 / best;
        println!(
            "{} rendered frames (tiny model, {clips} clips of {frames}), preset {}, crf 18: best of 3 {:.3} s = {fps:.0} fps = {:.1}x real time at {FPS} fps (target >= 10x)",
            pictures.len(),
            media::DEFAULT_PRESET,
            best,
            fps / f64::from(FPS)
        );
        Ok(())
    }

    fn clip_phases(&self, clips: u32) -> Result<()> {
        let (width, height) = BENCH_SIZE;
        println!(
            "\n## time per clip by phase, {} ({clips} clips, in process)",
            shape()
        );
        let settings = engine_settings(width, height, BENCH_FRAMES, BENCH_STEPS);
        let mut engine = engine::load_engine(&settings, conditioning(width, height)?, &self.cache)?;
        let work = self.root.join("phases");
        let store = CheckpointStore::new(&work);
        std::fs::create_dir_all(work.join("clips"))?;
        let encode = EncodeSettings::new(width, height, FPS, VideoCodec::H264, 18);
        let mut carry = EngineCarry::initial(&settings);
        let mut totals = [Duration::ZERO; 4];
        let mut checkpoint_ms = Vec::new();
        for k in 0..clips {
            let t0 = Instant::now();
            let (latents, next) = engine.render_clip(ClipIndex(k), &carry)?;
            let t1 = Instant::now();
            let frames = engine.decode(&latents)?;
            let t2 = Instant::now();
            let segment = store.segment_path(ClipIndex(k));
            let mut encoder = ClipEncoder::create(&segment, &encode)?;
            for frame in &frames.rgb {
                encoder.push_frame(frame)?;
            }
            encoder.finish()?;
            let t3 = Instant::now();
            store.save(ClipIndex(k), &next, "bench", &segment)?;
            let t4 = Instant::now();
            carry = next;
            for (total, span) in totals.iter_mut().zip([t1 - t0, t2 - t1, t3 - t2, t4 - t3]) {
                *total += span;
            }
            checkpoint_ms.push((t4 - t3).as_secs_f64() * 1e3);
        }
        let clip: Duration = totals.iter().sum();
        let per = |d: Duration| d.as_secs_f64() * 1e3 / f64::from(clips);
        println!("| phase | ms per clip | share of clip time |\n|---|---|---|");
        for (name, total) in [
            "denoise",
            "decode",
            "encode (segment, fsynced)",
            "checkpoint (carry + checkpoint.json, fsynced)",
        ]
        .iter()
        .zip(totals)
        {
            println!(
                "| {name} | {:.1} | {:.1}% |",
                per(total),
                100.0 * total.as_secs_f64() / clip.as_secs_f64()
            );
        }
        let head = mean(&checkpoint_ms[..checkpoint_ms.len().min(5)]);
        let tail = mean(&checkpoint_ms[checkpoint_ms.len().saturating_sub(5)..]);
        println!(
            "clip total {:.1} ms; checkpoint of the first 5 clips {head:.1} ms, of the last 5 {tail:.1} ms",
            per(clip)
        );
        Ok(())
    }

    fn resume_latency(&self, clips: u32) -> Result<()> {
        println!("\n## resume to first new clip, {} ({clips} clips)", shape());
        let dir = self.job("resume", clips, true)?;
        let half = clips / 2;
        let first = self.run_worker(&dir, Some(half))?;
        let Some(WorkerMessage::Interrupted { next_clip }) = first.last_message else {
            return Err(format!(
                "SIGTERM did not interrupt the worker: {:?}",
                first.last_message
            )
            .into());
        };
        let resumed = self.run_worker(&dir, None)?;
        check_finished(&resumed, "resume")?;
        let fresh = first.first_clip.ok_or("the first run finished no clip")?;
        let again = resumed
            .first_clip
            .ok_or("the resumed run finished no clip")?;
        println!(
            "fresh start to first clip: {:.0} ms; stopped after clip {half} (resumes at {next_clip}); resume to first new clip: {:.0} ms; resumed run rendered {} clips",
            fresh.as_secs_f64() * 1e3,
            again.as_secs_f64() * 1e3,
            resumed.clips_done
        );
        Ok(())
    }
}

impl Bench {
    /// A command-engine job of `clips` clips at 704*384 × 48 frames, 25 fps, a checkpoint
    /// after every clip, whose engine sleeps [`DIT_SECS`] per clip.
    fn sleeping_job(&self, name: &str, clips: u32) -> Result<(PathBuf, PathBuf)> {
        let dir = self.job(name, clips, true)?;
        let job = JobDir::new(&dir);
        let mut spec = job.load_spec()?;
        spec.render.size = Size {
            width: 704,
            height: 384,
        };
        spec.render.infer_frames = 48;
        spec.render.fps = 25;
        spec.render.checkpoint_every = CheckpointEvery::Every(1);
        spec.engine = EngineSpec::new(
            EngineKind::Command,
            Some("sleeper".to_string()),
            String::new(),
            None,
        );
        job.save_spec(&spec)?;
        let script = self.root.join("sleeping_engine.py");
        std::fs::write(&script, SLEEPING_ENGINE)?;
        let times = self.root.join(format!("{name}-engine-times.txt"));
        let declaration = EngineDeclaration {
            command: vec!["python3".to_string(), script.display().to_string()],
            env: [
                ("DIT_SECS".to_string(), DIT_SECS.to_string()),
                ("ENGINE_TIMES".to_string(), times.display().to_string()),
            ]
            .into_iter()
            .collect(),
            profile: None,
            working_dir: None,
            heartbeat_timeout_secs: 60,
            stop_grace_secs: 10,
        };
        let resolved = ResolvedEngine {
            name: "sleeper".to_string(),
            declaration,
        };
        std::fs::write(
            dir.join(RESOLVED_ENGINE_FILE),
            serde_json::to_vec_pretty(&resolved)?,
        )?;
        Ok((dir, times))
    }

    fn worker_overhead(&self, clips: u32) -> Result<()> {
        println!(
            "\n## worker time outside the engine, 704*384 x 48 frames, {clips} clips, engine {DIT_SECS} s per clip, checkpoint every clip"
        );
        let (dir, times) = self.sleeping_job("overlap", clips)?;
        let mut child = self.spawn_worker(&dir)?;
        let pid = child.id() as libc::pid_t;
        let stdout = child.stdout.take().ok_or("worker stdout is piped")?;
        let mut started = None;
        let mut done_at = Vec::new();
        let mut engine_calls = Vec::new();
        for line in BufReader::new(stdout).lines() {
            match WorkerMessage::from_line(&line?) {
                Some(WorkerMessage::Started { .. }) => started = Some(Instant::now()),
                Some(WorkerMessage::ClipDone { engine_secs, .. }) => {
                    done_at.push(Instant::now());
                    engine_calls.extend(engine_secs);
                }
                Some(WorkerMessage::Error { message, .. }) => return Err(message.into()),
                _ => {}
            }
        }
        let (exit_code, _) = wait_with_peak_rss(pid)?;
        std::mem::forget(child);
        if exit_code != Some(0) || done_at.len() != clips as usize {
            return Err(format!(
                "the worker exited with {exit_code:?} after {} of {clips} clips",
                done_at.len()
            )
            .into());
        }
        let engine: Vec<f64> = std::fs::read_to_string(&times)?
            .lines()
            .filter_map(|line| line.split_whitespace().nth(1)?.parse().ok())
            .collect();
        let started = started.ok_or("no `started` line")?;
        let last = *done_at.last().ok_or("no clip")?;
        let wall = last.duration_since(started).as_secs_f64();
        let engine_total: f64 = engine.iter().sum();
        let steady_wall = last.duration_since(done_at[1]).as_secs_f64();
        let steady_engine: f64 = engine.iter().skip(2).sum();
        println!(
            "| span | wall | in the engine (its own clock) | outside the engine |\n|---|---|---|---|"
        );
        println!(
            "| whole job ({clips} clips) | {wall:.2} s | {engine_total:.2} s | {:.2} % |",
            100.0 * (1.0 - engine_total / wall)
        );
        println!(
            "| clips 2..{} (steady) | {steady_wall:.2} s | {steady_engine:.2} s | {:.2} % |",
            clips - 1,
            100.0 * (1.0 - steady_engine / steady_wall)
        );
        // The worker's own view (`clip_done`'s `engine_secs`, from workers that report it):
        // the engine call includes the command protocol's round trip and reading the
        // frames file, which a native engine does not have.
        if engine_calls.len() == clips as usize {
            let steady_calls: f64 = engine_calls.iter().skip(2).sum();
            println!(
                "| clips 2..{} (steady), engine calls as the worker times them | {steady_wall:.2} s | {steady_calls:.2} s | {:.2} % |",
                clips - 1,
                100.0 * (1.0 - steady_calls / steady_wall)
            );
        }
        Ok(())
    }
}

fn shape() -> String {
    format!(
        "{}*{}, {BENCH_FRAMES} frames/clip, {BENCH_STEPS} steps, tiny model on the CPU",
        BENCH_SIZE.0, BENCH_SIZE.1
    )
}

fn check_finished(run: &WorkerRun, name: &str) -> Result<()> {
    match (&run.last_message, run.exit_code) {
        (Some(WorkerMessage::Finished { .. }), Some(0)) => Ok(()),
        (message, code) => {
            Err(format!("{name}: worker ended with {code:?} after {message:?}").into())
        }
    }
}

fn engine_settings(width: u32, height: u32, frames: u32, steps: u32) -> EngineSettings {
    EngineSettings {
        width,
        height,
        infer_frames: frames,
        sample_steps: steps,
        guide_scale: 0.0,
        seed: 42,
        fps: FPS,
        model: jobs::spec::ModelRef::resolve(
            jobs::spec::EngineKind::Native,
            None,
            engine::BUILTIN_TINY,
        ),
    }
}

fn conditioning(width: u32, height: u32) -> Result<Conditioning> {
    let examples = Bench::examples();
    Ok(Conditioning {
        reference_rgb: media::load_reference_image(&examples.join("portrait.png"), width, height)?,
        audio_16k_mono: media::load_audio(&examples.join("hello.wav"))?.samples_16k_mono,
        prompt: "A presenter looks into the camera".to_string(),
    })
}

fn mean(values: &[f64]) -> f64 {
    values.iter().sum::<f64>() / values.len().max(1) as f64
}

fn num_cpus() -> usize {
    std::thread::available_parallelism().map_or(1, |n| n.get())
}

/// Reaps `pid` and returns its exit code and peak resident set in KiB, from the kernel's
/// accounting of that one child.
fn wait_with_peak_rss(pid: libc::pid_t) -> Result<(Option<i32>, u64)> {
    let mut status = 0;
    // SAFETY: rusage is plain data; wait4 fills it for our own child `pid`.
    let mut usage: libc::rusage = unsafe { std::mem::zeroed() };
    // SAFETY: as above; `status` and `usage` outlive the call.
    let rc = unsafe { libc::wait4(pid, &mut status, 0, &mut usage) };
    if rc != pid {
        return Err(format!("wait4({pid}): {}", std::io::Error::last_os_error()).into());
    }
    let code = libc::WIFEXITED(status).then(|| libc::WEXITSTATUS(status));
    Ok((code, usage.ru_maxrss.max(0) as u64))
}

/// Restricts this process to the first CPU it may run on; returns the mask to restore.
fn pin_to_one_cpu() -> Result<libc::cpu_set_t> {
    let size = std::mem::size_of::<libc::cpu_set_t>();
    // SAFETY: cpu_set_t is plain data; the calls only read and write sets we own.
    unsafe {
        let mut previous: libc::cpu_set_t = std::mem::zeroed();
        if libc::sched_getaffinity(0, size, &mut previous) != 0 {
            return Err(std::io::Error::last_os_error().into());
        }
        let first = (0..libc::CPU_SETSIZE as usize)
            .find(|&cpu| libc::CPU_ISSET(cpu, &previous))
            .ok_or("no CPU in the affinity mask")?;
        let mut one: libc::cpu_set_t = std::mem::zeroed();
        libc::CPU_SET(first, &mut one);
        set_affinity(&one)?;
        Ok(previous)
    }
}

fn set_affinity(set: &libc::cpu_set_t) -> Result<()> {
    // SAFETY: sched_setaffinity only reads `set`.
    let rc = unsafe { libc::sched_setaffinity(0, std::mem::size_of::<libc::cpu_set_t>(), set) };
    if rc != 0 {
        return Err(std::io::Error::last_os_error().into());
    }
    Ok(())
}
