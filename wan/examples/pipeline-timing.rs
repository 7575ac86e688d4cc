//! `cargo run -p wan --example pipeline-timing -- DIR`: times each stage of the job
//! pipeline on a model directory (the tiny release by default size 64×64, 16 frames).

use std::path::PathBuf;
use std::time::Instant;

use burn::backend::NdArray;
use wan::pipeline::{carry_bytes, JobParams, LiveAvatar};

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let dir = PathBuf::from(
        std::env::args()
            .nth(1)
            .ok_or("usage: pipeline-timing DIR")?,
    );
    let device = Default::default();
    let t = Instant::now();
    let m = LiveAvatar::<NdArray>::load(&dir, &device)?;
    println!("load            {:>8.3} s", t.elapsed().as_secs_f64());
    let s = JobParams {
        width: 64,
        height: 64,
        infer_frames: 16,
        sample_steps: 4,
        seed: 1,
        fps: 16,
    };
    let rgb: Vec<u8> = (0..64 * 64 * 3).map(|i| (i * 7 % 251) as u8).collect();
    let audio: Vec<f32> = (0..40_000)
        .map(|i| ((i as f32) * 0.05).sin() * 0.3)
        .collect();
    let t = Instant::now();
    let ctx = m.prepare(&s, &rgb, &audio, &[259, 1001, 52, 1])?;
    println!("prepare         {:>8.3} s", t.elapsed().as_secs_f64());
    let t = Instant::now();
    let mut carry = m.start(&ctx)?;
    println!("start           {:>8.3} s", t.elapsed().as_secs_f64());
    for k in 0..3 {
        let t = Instant::now();
        let (frames, next) = m.render_clip(&ctx, carry)?;
        println!(
            "clip {k} ({:>2} fr) {:>8.3} s",
            frames.rgb.len(),
            t.elapsed().as_secs_f64()
        );
        carry = next;
    }
    let t = Instant::now();
    let bytes = carry.to_bytes(ctx.carry_stamp())?;
    println!(
        "to_bytes        {:>8.3} s  ({} bytes, formula {})",
        t.elapsed().as_secs_f64(),
        bytes.len(),
        carry_bytes(&m.config, &s, wan::carry_io::float_dtype::<NdArray>())?
    );
    Ok(())
}
