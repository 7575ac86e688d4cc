//! Prints the memory plans of Live Avatar 14B jobs (`wan::memory`): the mode and precision
//! chosen on 24, 48 and 80 GB cards, device peak, host RAM, bytes over PCIe per clip and their
//! transfer time, for 384*256×48 and 704*384×48 in bf16 and fp8.
//!
//! ```text
//! cargo run -p wan --example memory-plan                      the table (and the anchors)
//! cargo run -p wan --example memory-plan -- 704*384 48 streamed fp8   one plan, line by line
//! ```
//! (modes: resident, hybrid:N, streamed; precisions: bf16, fp8). Cards are taken as their
//! nominal size in GiB less 1 GiB for the CUDA context and allocator slack; the host has
//! 128 GiB free; the audio track is 60 s.

use wan::memory::{
    choose, memory_estimate, plan, Budget, JobShape, MemoryMode, MemoryPlan, ModeChoice,
    ModelSizes, Precision, PrecisionChoice,
};
use wan::pipeline::{JobParams, LiveAvatarConfig};
use wan::wav2vec2::Wav2Vec2Config;

const GIB: u64 = 1 << 30;
const HOST_FREE: u64 = 128 * GIB;

fn gb(b: u64) -> String {
    format!("{:.2} GB", b as f64 / 1e9)
}

fn print_plan(p: &MemoryPlan) {
    println!(
        "\n{}*{} x {}, {} {}",
        p.job.width, p.job.height, p.job.infer_frames, p.mode, p.precision
    );
    for (title, items) in [
        ("device, per clip", &p.device),
        ("device, prepare", &p.prepare),
        ("host", &p.host),
    ] {
        println!("  {title}");
        for i in items.iter() {
            println!("    {:<84} {:>12}", i.what, gb(i.bytes));
        }
    }
    println!(
        "  device peak {} per clip, {} in prepare; host {}",
        gb(p.device_peak()),
        gb(p.prepare_peak()),
        gb(p.host_bytes())
    );
    let t = &p.traffic;
    println!(
        "  per clip over PCIe: weights up {}, rings up {}, sink up {}, ring slots down {}, inputs and frames {}: {} ({:.2} s at 25 GB/s, {:.2} s at 50 GB/s)",
        gb(t.weight_bytes_up),
        gb(t.ring_bytes_up),
        gb(t.sink_bytes_up),
        gb(t.ring_bytes_down),
        gb(p.clip_io),
        gb(p.pcie_bytes_per_clip()),
        p.transfer_seconds(25e9),
        p.transfer_seconds(50e9)
    );
}

fn parse_mode(s: &str) -> Option<MemoryMode> {
    match s {
        "resident" => Some(MemoryMode::Resident),
        "streamed" => Some(MemoryMode::Streamed),
        other => other
            .strip_prefix("hybrid:")
            .and_then(|n| n.parse().ok())
            .map(|resident_blocks| MemoryMode::Hybrid { resident_blocks }),
    }
}

fn one(args: &[String]) -> Result<(), String> {
    let usage = "usage: memory-plan [WIDTH*HEIGHT FRAMES [resident|hybrid:N|streamed] [bf16|fp8]]";
    let (size, frames) = args.first().zip(args.get(1)).ok_or(usage)?;
    let (w, h) = size
        .split_once('*')
        .and_then(|(w, h)| Some((w.parse::<usize>().ok()?, h.parse::<usize>().ok()?)))
        .ok_or(usage)?;
    let frames: usize = frames.parse().map_err(|_| usage)?;
    let mode = match args.get(2) {
        None => MemoryMode::Resident,
        Some(m) => parse_mode(m).ok_or(usage)?,
    };
    let precision = match args.get(3).map(String::as_str) {
        None | Some("bf16") => Precision::Bf16,
        Some("fp8") => Precision::Fp8,
        Some(_) => return Err(usage.into()),
    };
    let sizes = ModelSizes::release();
    let p = plan(&sizes, &JobShape::release(w, h, frames), mode, precision)
        .map_err(|e| e.to_string())?;
    print_plan(&p);
    Ok(())
}

fn table() {
    let sizes = ModelSizes::release();
    let d = &sizes.dit;
    println!(
        "Live Avatar 14B: DiT {:.3}B parameters ({:.1}M per block, {:.3}B outside the blocks), umT5 {:.2}B, wav2vec2 {:.0}M, VAE {:.0}M",
        d.total as f64 / 1e9,
        d.per_block as f64 / 1e6,
        d.resident as f64 / 1e9,
        sizes.t5 as f64 / 1e9,
        sizes.wav2vec2_params as f64 / 1e6,
        sizes.vae as f64 / 1e6
    );
    println!(
        "Cards: nominal GiB less 1 GiB; host RAM free {} GiB; 60 s of audio; 4 steps.\n",
        HOST_FREE / GIB
    );
    println!(
        "{:<12} {:<9} {:<6} {:<28} {:>12} {:>12} {:>11} {:>14} {:>9} {:>9}",
        "job",
        "precision",
        "card",
        "chosen",
        "device peak",
        "prepare",
        "host RAM",
        "PCIe per clip",
        "@25 GB/s",
        "@50 GB/s"
    );
    for (w, h) in [(384, 256), (704, 384)] {
        let job = JobShape::release(w, h, 48);
        for (name, pin) in [
            ("bf16", PrecisionChoice::Bf16),
            ("fp8", PrecisionChoice::Fp8),
            ("auto", PrecisionChoice::Auto),
        ] {
            for card in [24u64, 48, 80] {
                let budget = Budget {
                    device_free: card * GIB - GIB,
                    host_free: HOST_FREE,
                };
                let label = format!("{w}*{h}x48");
                match choose(&sizes, &job, budget, ModeChoice::Auto, pin) {
                    Ok(p) => println!(
                        "{:<12} {:<9} {:<6} {:<28} {:>12} {:>12} {:>11} {:>14} {:>8.2}s {:>8.2}s",
                        label,
                        format!("{name}→{}", p.precision),
                        format!("{card} GB"),
                        p.mode.to_string(),
                        gb(p.device_peak()),
                        gb(p.prepare_peak()),
                        gb(p.host_bytes()),
                        gb(p.pcie_bytes_per_clip()),
                        p.transfer_seconds(25e9),
                        p.transfer_seconds(50e9)
                    ),
                    Err(r) => println!(
                        "{:<12} {:<9} {:<6} refused: {}",
                        label,
                        name,
                        format!("{card} GB"),
                        r
                    ),
                }
            }
        }
    }

    println!("\nAnchors (704*384 x 48, bf16):");
    let cfg = LiveAvatarConfig::release();
    let e = memory_estimate(
        &cfg,
        &Wav2Vec2Config::large_xlsr53(),
        &JobParams::release_defaults(704, 384, 48),
        2,
    )
    .expect("release settings");
    println!(
        "  resident with umT5 and wav2vec2 kept (the engine before this accounting): {}",
        gb(e.total())
    );
    let job = JobShape::release(704, 384, 48);
    for (mode, precision) in [
        (MemoryMode::Resident, Precision::Bf16),
        (MemoryMode::Streamed, Precision::Bf16),
        (MemoryMode::Streamed, Precision::Fp8),
    ] {
        let p = plan(&sizes, &job, mode, precision).expect("release settings");
        println!(
            "  {mode} {precision}: device {} per clip, host {}, PCIe {} per clip",
            gb(p.device_peak()),
            gb(p.host_bytes()),
            gb(p.pcie_bytes_per_clip())
        );
    }
    for (mode, precision) in [
        (MemoryMode::Resident, Precision::Bf16),
        (MemoryMode::Streamed, Precision::Bf16),
    ] {
        print_plan(&plan(&sizes, &job, mode, precision).expect("release settings"));
    }
}

fn main() {
    let args: Vec<String> = std::env::args().skip(1).collect();
    if args.is_empty() {
        table();
    } else if let Err(e) = one(&args) {
        eprintln!("{e}");
        std::process::exit(2);
    }
}
