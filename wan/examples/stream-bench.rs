//! Time per clip of the resident causal loop and of the layer-streamed one on NdArray
//! (CPU), same random weights, same inputs: shows the streaming overhead (host copies,
//! the prefetch thread, per-tick bookkeeping). On the CPU an "upload" is a copy in RAM,
//! so this says nothing about PCIe; it only shows what the structure costs.
//!
//! `cargo run --release -p wan --example stream-bench -- [tiny|small] [clips]`
//! (tiny: `S2vConfig::tiny()` at 8×8 latents; small: dim 256, 4 heads, 8 layers, ffn
//! 512 at 16×16 latents.) Clip 0 is a warm-up and is not timed.

use std::time::{Duration, Instant};

use burn::backend::NdArray;
use burn::prelude::*;
use burn::tensor::Distribution;
use wan::causal_loop::{run_clip, CausalSettings, ClipInput, DitCarry};
use wan::streamed::{run_clip_streamed, HostDitCarry, StreamedModel};
use wan::{S2vConfig, WanS2v};

type B = NdArray<f32>;

fn median(mut v: Vec<Duration>) -> Duration {
    v.sort();
    v[v.len() / 2]
}

fn main() {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let size = args.first().map_or("tiny", String::as_str);
    let clips: usize = args.get(1).and_then(|s| s.parse().ok()).unwrap_or(5).max(1);
    let (cfg, lat) = match size {
        "tiny" => (S2vConfig::tiny(), 8),
        "small" => (
            S2vConfig {
                dim: 256,
                ffn_dim: 512,
                num_heads: 4,
                num_layers: 8,
                audio_inject_layers: vec![0, 4, 7],
                ..S2vConfig::tiny()
            },
            16,
        ),
        other => {
            eprintln!("unknown size {other}: tiny or small");
            std::process::exit(2);
        }
    };
    let dev = Default::default();
    <B as Backend>::seed(&dev, 1);
    let model = WanS2v::<B>::new(&cfg, &dev);
    let s = CausalSettings::live_avatar(42);
    let rand =
        |shape: [usize; 5]| Tensor::<B, 5>::random(shape, Distribution::Uniform(-1.0, 1.0), &dev);
    let ctx = model.embed_text(Tensor::random(
        [1, 7, cfg.text_dim],
        Distribution::Uniform(-1.0, 1.0),
        &dev,
    ));
    let inputs: Vec<ClipInput<B>> = (0..=clips)
        .map(|_| ClipInput {
            noise: rand([1, 16, 12, lat, lat]),
            cond: rand([1, 16, 12, lat, lat]) * 0.1,
            context: ctx.clone(),
            audio: Some(Tensor::random(
                [1, 25, cfg.audio_dim, 48],
                Distribution::Uniform(-1.0, 1.0),
                &dev,
            )),
        })
        .collect();
    let c0 = DitCarry::start(
        &model,
        &s,
        rand([1, 16, 1, lat, lat]),
        rand([1, 16, 19, lat, lat]),
        ctx.clone(),
    );

    let mut resident = Vec::new();
    let mut carry = c0.clone();
    let mut resident_last = None;
    for (i, input) in inputs.iter().enumerate() {
        let t = Instant::now();
        let (latents, next) = run_clip(&model, &s, carry, input.clone());
        let _ = latents.clone().into_data();
        if i > 0 {
            resident.push(t.elapsed());
        }
        carry = next;
        resident_last = Some(latents);
    }

    let streamed_model = StreamedModel::from_model(model.clone());
    let mut streamed = Vec::new();
    let mut host = HostDitCarry::from_carry(c0);
    let mut streamed_last = None;
    for (i, input) in inputs.iter().enumerate() {
        let t = Instant::now();
        let out = match run_clip_streamed(&streamed_model, &s, host, input.clone()) {
            Ok(o) => o,
            Err(e) => {
                eprintln!("streamed clip failed: {e}");
                std::process::exit(1);
            }
        };
        let _ = out.latents.clone().into_data();
        if i > 0 {
            streamed.push(t.elapsed());
        }
        host = out.carry;
        streamed_last = Some(out.latents);
    }
    let same = match (resident_last, streamed_last) {
        (Some(a), Some(b)) => a.into_data() == b.into_data(),
        _ => false,
    };
    let (r, st) = (median(resident), median(streamed));
    println!(
        "{size}: dim {}, {} layers, {lat}x{lat} latents, {clips} timed clips (median): resident {:.1} ms/clip, streamed {:.1} ms/clip, ratio {:.2}, last clip identical: {same}",
        cfg.dim,
        cfg.num_layers,
        r.as_secs_f64() * 1e3,
        st.as_secs_f64() * 1e3,
        st.as_secs_f64() / r.as_secs_f64()
    );
}
