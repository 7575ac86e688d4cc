//! How fast does a clip encode on the CPU? DESIGN.md asks for H.264 at 704x384 to run at
//! least 10x real time (160 fps for 16 fps output) on one encoder thread.
//!
//! ```text
//! cargo run -p render --example encode_bench -- [frames] [preset] [threads] [h264|hevc] [grain]
//! ```
//!
//! The frames imitate a render: a smooth background, a moving textured ellipse and random
//! grain of +-`grain` levels (default 2) on every pixel of every frame. Encoding speed depends
//! mostly on that grain: at CRF 18 the encoder keeps it, and fresh noise in every frame is the
//! costliest content there is. Real renders sit between `grain` 0 and 4. They are made before the clock starts;
//! the time covers RGB-to-YUV conversion, encoding and writing the segment.

use std::error::Error;
use std::time::Instant;

use render::media::{ClipEncoder, EncodeSettings, VideoCodec, DEFAULT_PRESET};

const WIDTH: u32 = 704;
const HEIGHT: u32 = 384;
const FPS: u32 = 16;
/// Distinct frames generated; the benchmark cycles through them.
const DISTINCT_FRAMES: u32 = 48;

fn main() -> Result<(), Box<dyn Error>> {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let frames: u32 = args.first().map_or(Ok(480), |a| a.parse())?;
    let preset = args
        .get(1)
        .cloned()
        .unwrap_or_else(|| DEFAULT_PRESET.to_string());
    let threads: usize = args.get(2).map_or(Ok(1), |a| a.parse())?;
    let codec = match args.get(3).map(String::as_str) {
        None | Some("h264") => VideoCodec::H264,
        Some("hevc") => VideoCodec::Hevc,
        Some(other) => return Err(format!("unknown codec {other:?}: use h264 or hevc").into()),
    };
    let grain: u32 = args.get(4).map_or(Ok(2), |a| a.parse())?;

    let pictures: Vec<Vec<u8>> = (0..DISTINCT_FRAMES)
        .map(|i| synthetic_frame(i, grain))
        .collect();
    let dir = tempfile::tempdir()?;
    let path = dir.path().join("0.mkv");
    let settings = EncodeSettings {
        preset: preset.clone(),
        threads,
        ..EncodeSettings::new(WIDTH, HEIGHT, FPS, codec, 18)
    };

    let start = Instant::now();
    let mut encoder = ClipEncoder::create(&path, &settings)?;
    for i in 0..frames {
        encoder.push_frame(&pictures[(i % DISTINCT_FRAMES) as usize])?;
    }
    let info = encoder.finish()?;
    let secs = start.elapsed().as_secs_f64();

    let fps = f64::from(frames) / secs;
    println!(
        "{codec:?} {WIDTH}x{HEIGHT} preset={preset} crf=18 threads={threads} grain={grain}: {frames} frames in {secs:.2} s = {fps:.0} fps ({:.1}x real time at {FPS} fps), {} bytes",
        fps / f64::from(FPS),
        info.bytes
    );
    Ok(())
}

/// Frame `index` of the synthetic clip, packed RGB24.
fn synthetic_frame(index: u32, grain: u32) -> Vec<u8> {
    let mut rgb = Vec::with_capacity((WIDTH * HEIGHT * 3) as usize);
    let t = index as f32 / FPS as f32;
    let (cx, cy) = (
        WIDTH as f32 / 2.0 + 40.0 * (t * 2.0).sin(),
        HEIGHT as f32 / 2.0 + 15.0 * (t * 3.0).cos(),
    );
    let mut seed = 0x9e37_79b9u32 ^ index.wrapping_mul(0x85eb_ca6b);
    for y in 0..HEIGHT {
        for x in 0..WIDTH {
            // xorshift: cheap, deterministic grain.
            seed ^= seed << 13;
            seed ^= seed >> 17;
            seed ^= seed << 5;
            let noise = (seed % (2 * grain + 1)) as i32 - grain as i32;
            let (dx, dy) = ((x as f32 - cx) / 140.0, (y as f32 - cy) / 170.0);
            let inside = dx * dx + dy * dy < 1.0;
            let base = if inside {
                let stripes = ((x as f32 * 0.3 + y as f32 * 0.2 + t * 20.0).sin() * 20.0) as i32;
                [200 + stripes, 160 + stripes, 140 + stripes]
            } else {
                [
                    40 + (x * 60 / WIDTH) as i32,
                    60 + (y * 80 / HEIGHT) as i32,
                    90,
                ]
            };
            for channel in base {
                rgb.push((channel + noise).clamp(0, 255) as u8);
            }
        }
    }
    rgb
}
