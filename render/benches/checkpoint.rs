//! Checkpoint cadence numbers for BENCHMARKS.md: what one carry costs to checkpoint, and the
//! interval `render.checkpoint_every: auto` picks from that.
//!
//! ```text
//! cargo bench -p render --bench checkpoint               # writes under target/tmp
//! cargo bench -p render --bench checkpoint -- /some/dir  # measures that file system instead
//! ```
//! 1. The tiny engine's carry at three sizes: its bytes and the median time of a whole
//!    checkpoint write (`CheckpointStore::save_prepared`: carry and checkpoint.json, each
//!    written to a temporary file, fsynced and renamed, then the directory fsynced).
//! 2. The disk's write speed through the same path, with a 1 GiB carry.
//! 3. The Live Avatar 14B carry at 704*384 from `wan::causal_loop::carry_tensor_bytes`
//!    (≈43.7 GB in bf16), its write time at the measured speed, and the N that `auto` picks
//!    for clips that take 4 s and 40 s to render.

use std::error::Error;
use std::path::PathBuf;
use std::time::Instant;

use render::checkpoint::{CheckpointStore, SegmentRecord};
use render::engine::{self, ClipIndex, EngineCarry, EngineSettings};
use render::worker::cadence::{auto_every, IO_SHARE};

type Result<T> = std::result::Result<T, Box<dyn Error>>;

const RUNS: usize = 20;

fn settings(width: u32, height: u32, frames: u32) -> EngineSettings {
    EngineSettings {
        width,
        height,
        infer_frames: frames,
        sample_steps: 4,
        guide_scale: 0.0,
        seed: 42,
        fps: 16,
        model: jobs::spec::ModelRef::resolve(
            jobs::spec::EngineKind::Native,
            None,
            engine::BUILTIN_TINY,
        ),
    }
}

/// A store in a fresh directory under `root`, with one segment for clip 0.
fn store_in(root: &std::path::Path, name: &str) -> Result<(CheckpointStore, Vec<SegmentRecord>)> {
    let work = root.join(name);
    let _ = std::fs::remove_dir_all(&work);
    std::fs::create_dir_all(work.join("clips"))?;
    let store = CheckpointStore::new(&work);
    let segment = store.segment_path(ClipIndex(0));
    std::fs::write(&segment, vec![7u8; 64 << 10])?;
    let record = store.segment_record(ClipIndex(0), &segment)?;
    Ok((store, vec![record]))
}

/// Median seconds of `RUNS` checkpoint writes of `bytes`.
fn median_write_secs(root: &std::path::Path, name: &str, bytes: &[u8]) -> Result<f64> {
    let (store, segments) = store_in(root, name)?;
    let mut secs = Vec::with_capacity(RUNS);
    for _ in 0..RUNS {
        let started = Instant::now();
        store.save_prepared(ClipIndex(0), bytes, "bench", None, segments.clone())?;
        secs.push(started.elapsed().as_secs_f64());
    }
    secs.sort_by(f64::total_cmp);
    std::fs::remove_dir_all(store.work_dir())?;
    Ok(secs[RUNS / 2])
}

fn main() -> Result<()> {
    let root = std::env::args()
        .skip(1)
        .find(|arg| !arg.starts_with('-'))
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from(env!("CARGO_TARGET_TMPDIR")).join("checkpoint-bench"));
    std::fs::create_dir_all(&root)?;
    println!("checkpoint writes under {}", root.display());

    println!("\n1. tiny engine carry (median of {RUNS} checkpoint writes)");
    println!(
        "{:>10} {:>7} {:>12} {:>12}",
        "size", "frames", "carry bytes", "write ms"
    );
    for (width, height, frames) in [(64, 64, 4), (256, 256, 16), (704, 384, 48)] {
        let s = settings(width, height, frames);
        let bytes = EngineCarry::initial(&s).to_safetensors_bytes()?;
        assert!(bytes.len() as u64 <= engine::carry_bytes(&s)?);
        let secs = median_write_secs(&root, "tiny", &bytes)?;
        println!(
            "{:>10} {:>7} {:>12} {:>12.3}",
            format!("{width}*{height}"),
            frames,
            bytes.len(),
            secs * 1e3
        );
    }

    println!("\n2. disk write speed through the checkpoint path (1 GiB carry, 3 runs, best)");
    let big = vec![0x5a_u8; 1 << 30];
    let (store, segments) = store_in(&root, "speed")?;
    let mut best = f64::INFINITY;
    for _ in 0..3 {
        let started = Instant::now();
        store.save_prepared(ClipIndex(0), &big, "bench", None, segments.clone())?;
        best = best.min(started.elapsed().as_secs_f64());
    }
    std::fs::remove_dir_all(store.work_dir())?;
    drop(big);
    let speed = (1u64 << 30) as f64 / best;
    println!("{:.2} s for 1 GiB: {:.0} MB/s", best, speed / 1e6);

    println!("\n3. Live Avatar 14B carry file at 704*384, 48 frames (wan::pipeline::carry_bytes)");
    let settings = wan::pipeline::JobParams::release_defaults(704, 384, 48);
    // Stored in the engine's float dtype: f32 in the CPU build, bf16 for a release under
    // `cuda` (render's ReleaseBackend).
    for (dtype, label) in [
        (burn::tensor::DType::F32, "f32 (CPU build)"),
        (burn::tensor::DType::BF16, "bf16 (cuda build)"),
    ] {
        let carry = wan::pipeline::carry_bytes(
            &wan::pipeline::LiveAvatarConfig::release(),
            &settings,
            dtype,
        )?;
        let write_secs = carry as f64 / speed;
        println!(
            "carry file in {label}: {:.1} GB (the VAE decoder cache included); at {:.0} MB/s \
             one checkpoint takes {:.0} s",
            carry as f64 / 1e9,
            speed / 1e6,
            write_secs
        );
        for clip_secs in [4.0, 40.0] {
            let every = auto_every(carry, speed, clip_secs);
            println!(
                "clip of {clip_secs:>4} s: auto checkpoints every {every} clips \
                 ({:.1} % of render time in checkpoint I/O; a crash re-renders up to {:.0} min)",
                100.0 * write_secs / (clip_secs * f64::from(every)),
                clip_secs * f64::from(every) / 60.0
            );
            assert!(write_secs <= IO_SHARE * clip_secs * f64::from(every) * (1.0 + 1e-9));
        }
    }

    Ok(())
}
