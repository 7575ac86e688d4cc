//! Prints the computed device memory of the resident and the layer-streamed causal loop
//! and the host↔device traffic of streaming, for the 14B config.
//!
//! `cargo run -p wan --example memory-plan -- 704*384 48 [bytes_per_value]`
//! (bytes per value: 2 for bf16, the default; 1 for fp8 weights and KV; 4 for f32).

use wan::memory::{
    clip_traffic, full_tick_traffic, resident_peak, streamed_peak, Geometry, ParamCounts, Plan,
};
use wan::pipeline::LiveAvatarConfig;
use wan::wav2vec2::Wav2Vec2Config;
use wan::S2vConfig;

fn gb(b: u64) -> String {
    format!(
        "{:>8.2} GB {:>8.2} GiB",
        b as f64 / 1e9,
        b as f64 / (1u64 << 30) as f64
    )
}

fn print_plan(name: &str, p: &Plan) {
    println!("\n{name}");
    for i in &p.items {
        println!("  {:<74} {}", i.what, gb(i.bytes));
    }
    println!(
        "  {:<74} {}",
        "total (DiT peak and VAE decode alive together)",
        gb(p.total())
    );
    println!(
        "  {:<74} {}",
        "phased (VAE decode after the DiT buffers are freed)",
        gb(p.phased())
    );
    println!(
        "  {:<74} {}",
        "+ fallback attention scores (non-flash kernel), one pair",
        gb(p.attention_scores)
    );
}

fn main() {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let usage = "usage: memory-plan WIDTH*HEIGHT FRAMES [BYTES_PER_VALUE]";
    let Some((size, frames)) = args.first().zip(args.get(1)) else {
        eprintln!("{usage}");
        std::process::exit(2);
    };
    let parsed = size
        .split_once('*')
        .and_then(|(w, h)| Some((w.parse::<usize>().ok()?, h.parse::<usize>().ok()?)));
    let (Some((width, height)), Ok(frames)) = (parsed, frames.parse::<usize>()) else {
        eprintln!("{usage}");
        std::process::exit(2);
    };
    let bpv = match args.get(2).map(|s| s.parse::<usize>()) {
        None => 2,
        Some(Ok(b)) if [1, 2, 4].contains(&b) => b,
        Some(_) => {
            eprintln!("bytes per value must be 1, 2 or 4");
            std::process::exit(2);
        }
    };
    let g = match Geometry::live_avatar(width, height, frames) {
        Ok(g) => g,
        Err(e) => {
            eprintln!("{e}");
            std::process::exit(2);
        }
    };
    let cfg = S2vConfig::s2v_14b();
    let p = ParamCounts::of(&cfg);
    println!("Live Avatar 14B, {width}*{height}, {frames} frames per clip, {bpv} bytes per value");
    println!(
        "  {} tokens per latent frame, {} latent frames per clip ({} blocks of {}), ring {} tokens, sink {} tokens, {} ticks per streamed clip",
        g.tokens_per_frame,
        g.frames_per_clip(),
        g.blocks_per_clip,
        g.frames_per_block,
        g.ring_tokens(),
        g.sink_tokens,
        g.ticks()
    );
    println!(
        "  parameters: {:.3}B in all, {:.1}M per block, {:.3}B resident (injectors {:.3}B)",
        p.total as f64 / 1e9,
        p.per_block as f64 / 1e6,
        p.resident as f64 / 1e9,
        p.injectors as f64 / 1e9
    );
    print_plan(
        "Streamed mode, peak device memory",
        &streamed_peak(&cfg, &g, width, height, bpv),
    );
    print_plan(
        "Resident mode (as the engine runs a release), peak device memory",
        &resident_peak(
            &LiveAvatarConfig::release(),
            &Wav2Vec2Config::large_xlsr53(),
            &g,
            width,
            height,
            bpv,
        ),
    );

    let b = bpv as u64;
    let host = 40 * p.per_block * b
        + cfg.num_layers as u64
            * 2
            * cfg.dim as u64
            * (g.steps * g.ring_tokens() + g.sink_tokens) as u64
            * b;
    println!(
        "\nStreamed mode, host memory (block weights + rings + sink): {}",
        gb(host)
    );

    println!("\nHost <-> device traffic of the streamed mode");
    for (name, t) in [
        ("one full tick (4 pairs)", full_tick_traffic(&cfg, &g, bpv)),
        (
            "one clip (fill + full + drain ticks)",
            clip_traffic(&cfg, &g, bpv),
        ),
    ] {
        println!(
            "  {name}: {} ticks, {} layer uploads",
            t.ticks, t.layer_uploads
        );
        println!("    weights up   {}", gb(t.weight_bytes_up));
        println!("    rings up     {}", gb(t.ring_bytes_up));
        println!("    sink up      {}", gb(t.sink_bytes_up));
        println!("    ring slots down {}", gb(t.ring_bytes_down));
        let total = t.bytes_up() + t.ring_bytes_down;
        println!(
            "    total {}; at 25 GB/s (PCIe 4.0 x16) {:.2} s, at 50 GB/s (PCIe 5.0 x16) {:.2} s",
            gb(total),
            total as f64 / 25e9,
            total as f64 / 50e9
        );
    }
}
