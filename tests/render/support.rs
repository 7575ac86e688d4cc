//! What the render tests look at: the finished MP4 through the real `ffprobe` and `ffmpeg`
//! (never through our own decoder), the job's events, and the worker processes in /proc.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use crate::common::{wait_for, Farm};

/// Every run in these tests is a few seconds to a minute of CPU work; this bound is far more
/// than any needs alone, and leaves room for the whole suite sharing 2 cores (a kill test
/// with eight kills and their retry backoffs once took 80 s of its 90 s there). Only a
/// failing test waits it out.
pub const RUN: Duration = Duration::from_secs(240);

/// A one-slot CPU pool that never drains its slot, however often a test kills the worker on it.
pub const POOL: &str = "gpu_pool: { kind: cpu, slots: 1, failure_drain_threshold: 1000 }\n";

/// A job of `farm` whose `render` lines replace the defaults of `Farm::job_yaml` (or are
/// added), with room for many retries.
pub fn job(farm: &Farm, name: &str, render: &str) -> String {
    let mut text = farm.job_yaml(name, "");
    for line in render.lines() {
        let key = line.split(':').next().unwrap_or(line);
        let start = text.find(&format!("\n{key}:")).map(|at| at + 1);
        match start {
            Some(start) => {
                let end = text[start..].find('\n').map_or(text.len(), |n| start + n);
                text.replace_range(start..end, line);
            }
            None => {
                let at = text
                    .find("\noutput:")
                    .expect("job_yaml has an output section")
                    + 1;
                text.insert_str(at, &format!("{line}\n"));
            }
        }
    }
    format!("{text}retry:\n  max_attempts: 40\n")
}

/// Waits until the job from `file` is done, failed or cancelled; returns its state.
pub fn wait_finished(farm: &Farm, file: &str) -> serde_json::Value {
    wait_for(&format!("{file} to finish"), RUN, || {
        if let Some(error) = farm.rejection(file) {
            panic!("{file} was rejected:\n{error}");
        }
        farm.job_by_source(file).filter(|state| {
            matches!(
                state["phase"].as_str(),
                Some("done" | "failed" | "cancelled")
            )
        })
    })
}

/// Waits until the job from `file` has an event matching `pred`.
pub fn wait_event(
    farm: &Farm,
    file: &str,
    what: &str,
    pred: impl Fn(&serde_json::Value) -> bool,
) -> serde_json::Value {
    wait_for(what, RUN, || {
        let state = farm.job_by_source(file)?;
        events(farm, &state).into_iter().find(&pred)
    })
}

pub fn job_dir(farm: &Farm, state: &serde_json::Value) -> PathBuf {
    farm.jobs_dir()
        .join(state["id"].as_str().expect("job id is a string"))
}

/// The job's events.jsonl, one value per line.
pub fn events(farm: &Farm, state: &serde_json::Value) -> Vec<serde_json::Value> {
    let text =
        std::fs::read_to_string(job_dir(farm, state).join("events.jsonl")).unwrap_or_default();
    text.lines()
        .filter_map(|line| serde_json::from_str(line).ok())
        .collect()
}

/// `next_clip` of every `started` / `resumed` event, in order.
pub fn start_points(events: &[serde_json::Value]) -> Vec<u64> {
    events
        .iter()
        .filter(|e| e["event"] == "started" || e["event"] == "resumed")
        .map(|e| e["next_clip"].as_u64().expect("next_clip is a number"))
        .collect()
}

/// How many of a job's workers ended killed by SIGKILL (`worker_exit` events).
pub fn sigkilled_workers(events: &[serde_json::Value]) -> usize {
    events
        .iter()
        .filter(|e| e["event"] == "worker_exit")
        .filter(|e| e["end"].as_str().is_some_and(|s| s.contains("SIGKILL")))
        .count()
}

/// Indices of every `clip_done` event, in order.
pub fn clips_done(events: &[serde_json::Value]) -> Vec<u64> {
    events
        .iter()
        .filter(|e| e["event"] == "clip_done")
        .map(|e| e["index"].as_u64().expect("index is a number"))
        .collect()
}

/// What `ffprobe` says about a finished video.
#[derive(Debug)]
pub struct Probe {
    pub video_codec: String,
    pub audio_codec: String,
    pub video_frames: u64,
    pub video_secs: f64,
    pub audio_secs: f64,
    pub audio_channels: u64,
    pub width: u64,
    pub height: u64,
}

fn number(value: &serde_json::Value) -> f64 {
    value
        .as_str()
        .and_then(|s| s.parse().ok())
        .or_else(|| value.as_f64())
        .unwrap_or_else(|| panic!("ffprobe gave {value} where a number belongs"))
}

/// Runs `ffprobe -show_streams -show_format` on `path`; panics unless it has exactly one
/// video and one audio stream.
pub fn probe(path: &Path) -> Probe {
    let output = Command::new("ffprobe")
        .args([
            "-v",
            "error",
            "-show_streams",
            "-show_format",
            "-of",
            "json",
        ])
        .arg(path)
        .output()
        .expect("run ffprobe");
    assert!(
        output.status.success(),
        "ffprobe {}: {}",
        path.display(),
        String::from_utf8_lossy(&output.stderr)
    );
    let json: serde_json::Value = serde_json::from_slice(&output.stdout).expect("ffprobe JSON");
    assert_eq!(
        json["format"]["format_name"]
            .as_str()
            .map(|f| f.contains("mp4")),
        Some(true),
        "{json}"
    );
    let streams = json["streams"].as_array().expect("streams");
    let of = |kind: &str| {
        let found: Vec<_> = streams.iter().filter(|s| s["codec_type"] == kind).collect();
        assert_eq!(found.len(), 1, "one {kind} stream in {json}");
        found[0].clone()
    };
    let (video, audio) = (of("video"), of("audio"));
    Probe {
        video_codec: video["codec_name"].as_str().unwrap_or_default().to_string(),
        audio_codec: audio["codec_name"].as_str().unwrap_or_default().to_string(),
        video_frames: number(&video["nb_frames"]) as u64,
        video_secs: number(&video["duration"]),
        audio_secs: number(&audio["duration"]),
        audio_channels: audio["channels"].as_u64().unwrap_or(0),
        width: video["width"].as_u64().unwrap_or(0),
        height: video["height"].as_u64().unwrap_or(0),
    }
}

/// Duration in seconds of an input file, as `ffprobe` reads it.
pub fn input_secs(path: &Path) -> f64 {
    let output = Command::new("ffprobe")
        .args([
            "-v",
            "error",
            "-show_entries",
            "format=duration",
            "-of",
            "csv=p=0",
        ])
        .arg(path)
        .output()
        .expect("run ffprobe");
    String::from_utf8_lossy(&output.stdout)
        .trim()
        .parse()
        .unwrap_or_else(|_| panic!("no duration for {}", path.display()))
}

/// MD5 of every decoded video frame, by `ffmpeg -f framemd5`: what "byte-identical" means
/// for the picture, independent of container details.
pub fn frame_digests(path: &Path) -> Vec<String> {
    let output = Command::new("ffmpeg")
        .args(["-v", "error", "-nostdin", "-i"])
        .arg(path)
        .args(["-map", "0:v", "-f", "framemd5", "-"])
        .output()
        .expect("run ffmpeg");
    assert!(
        output.status.success(),
        "ffmpeg framemd5 {}: {}",
        path.display(),
        String::from_utf8_lossy(&output.stderr)
    );
    String::from_utf8_lossy(&output.stdout)
        .lines()
        .filter(|line| !line.starts_with('#'))
        .filter_map(|line| line.rsplit(',').next().map(|md5| md5.trim().to_string()))
        .collect()
}

/// Peak absolute sample (0..=1) of the output's audio between `from` and `to` seconds.
pub fn audio_peak(path: &Path, from: f64, to: f64) -> f64 {
    let output = Command::new("ffmpeg")
        .args(["-v", "error", "-nostdin", "-i"])
        .arg(path)
        .args([
            "-map",
            "0:a",
            "-ss",
            &format!("{from}"),
            "-to",
            &format!("{to}"),
        ])
        .args(["-ac", "1", "-f", "s16le", "-acodec", "pcm_s16le", "-"])
        .output()
        .expect("run ffmpeg");
    assert!(output.status.success(), "ffmpeg audio decode failed");
    assert!(
        output.stdout.len() > 100,
        "no audio between {from} and {to} s"
    );
    output
        .stdout
        .chunks_exact(2)
        .map(|s| f64::from(i16::from_le_bytes([s[0], s[1]]).unsigned_abs()) / 32768.0)
        .fold(0.0, f64::max)
}

/// Pids of live `reelspool worker <job_dir>` processes.
pub fn worker_pids(job_dir: &Path) -> Vec<i32> {
    let target = job_dir.as_os_str().as_encoded_bytes();
    live_workers(|dir| dir == target)
}

/// Pids of live `reelspool worker DIR` processes whose DIR (as bytes) `wanted` accepts.
pub fn live_workers(wanted: impl Fn(&[u8]) -> bool) -> Vec<i32> {
    let Ok(entries) = std::fs::read_dir("/proc") else {
        return Vec::new();
    };
    entries
        .flatten()
        .filter_map(|entry| {
            let pid: i32 = entry.file_name().to_str()?.parse().ok()?;
            let cmdline = std::fs::read(entry.path().join("cmdline")).ok()?;
            let args: Vec<&[u8]> = cmdline.split(|b| *b == 0).collect();
            let is_worker = args.windows(2).any(|w| w[0] == b"worker" && wanted(w[1]));
            // A killed worker stays a zombie until the daemon reaps it; it is not live.
            let status = std::fs::read_to_string(entry.path().join("status")).ok()?;
            let zombie = status
                .lines()
                .any(|l| l.starts_with("State:") && l.contains('Z'));
            (is_worker && !zombie).then_some(pid)
        })
        .collect()
}

/// Sends `signal` to the job's one live worker; returns its pid.
pub fn signal_worker(job_dir: &Path, signal: i32) -> i32 {
    let pid = wait_for("the job's worker process", RUN, || {
        worker_pids(job_dir).first().copied()
    });
    // SAFETY: kill() on a pid read from /proc; at worst it has just exited.
    unsafe { libc::kill(pid, signal) };
    pid
}

/// Waits until `pid` is gone (reaped by its parent, or a zombie nobody will reap).
pub fn wait_gone(pid: i32) {
    wait_for(&format!("process {pid} to end"), RUN, || {
        let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok();
        match status {
            None => Some(()),
            Some(text) => text
                .lines()
                .any(|l| l.starts_with("State:") && l.contains('Z'))
                .then_some(()),
        }
    });
}

/// Waits for the job's worker, then SIGKILLs it the moment the partial file of a segment of
/// clip `from_clip` or later appears. Returns whether the partial file was still there after
/// the kill (the kill landed mid-encode), or `None` if the job finished first.
pub fn kill_when_segment_starts(job_dir: &Path, from_clip: u32) -> Option<bool> {
    let pid = wait_for("the job's worker process", RUN, || {
        worker_pids(job_dir).first().copied()
    });
    let clips = job_dir.join("work/clips");
    let deadline = std::time::Instant::now() + RUN;
    let partial = loop {
        let found = std::fs::read_dir(&clips).ok().and_then(|entries| {
            entries.flatten().map(|e| e.path()).find(|path| {
                let name = path.file_name().and_then(|n| n.to_str()).unwrap_or("");
                name.strip_prefix('.')
                    .and_then(|rest| rest.strip_suffix(".mkv.partial"))
                    .and_then(|k| k.parse::<u32>().ok())
                    .is_some_and(|k| k >= from_clip)
            })
        });
        if let Some(path) = found {
            break path;
        }
        if worker_pids(job_dir).is_empty() || std::time::Instant::now() > deadline {
            return None;
        }
        std::thread::sleep(Duration::from_micros(100));
    };
    // SAFETY: kill() on the worker's pid, read from /proc above.
    unsafe { libc::kill(pid, libc::SIGKILL) };
    wait_gone(pid);
    Some(partial.exists())
}

/// Runs `job_text` alone on a fresh farm without interruptions; returns its frame digests.
pub fn reference_digests(job_text: impl Fn(&Farm) -> String) -> Vec<String> {
    let farm = Farm::new(POOL);
    let _daemon = farm.start_daemon();
    farm.drop_job("reference.yaml", &job_text(&farm));
    let state = wait_finished(&farm, "reference.yaml");
    assert_eq!(state["phase"], "done", "reference run: {state}");
    let evs = events(&farm, &state);
    assert_eq!(start_points(&evs), vec![0], "reference ran in one go");
    frame_digests(Path::new(state["output"].as_str().expect("output path")))
}
