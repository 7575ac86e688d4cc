//! The `liveavatar-14b` placement profile against the native engine's own accounting
//! (`wan::memory::memory_estimate`: weights, KV carry, VAE decode and one block's
//! activations, from the release's module shapes in bf16).
//!
//! They cannot agree closely: the profile is fitted to what operators report for the PyTorch
//! original, which keeps its weights in bf16 but runs the KV cache in fp8 and offloads part of
//! it, while the engine's accounting keeps everything resident in bf16 and materialises the
//! attention scores (an upper bound). What this test holds is that the two stay within a
//! factor of 1.5 of each other at the sizes the release renders, so neither can drift far (a
//! unit slip, a profile refitted to other reports, a changed carry) without someone looking.
//!
//! At the time of writing (profile without offload, margin included / engine total, bf16, 4
//! steps): 704*384x48 84.8 / 95.3 GB (0.89), 384*256x48 75.8 / 62.3 GB (1.22), 512*512x24
//! 77.5 / 71.9 GB (1.08). The profile's resident part is larger and its growth with the size
//! smaller than the engine's, whose KV carry grows with the tokens of a clip.

use std::path::Path;

use gpu_pool::{load_profiles, EstimateRequest, OffloadChoice};
use wan::memory::memory_estimate;
use wan::pipeline::{JobParams, LiveAvatarConfig};
use wan::wav2vec2::Wav2Vec2Config;

/// How far apart the two totals may be, either way.
const FACTOR: f64 = 1.5;

/// `profile`'s estimate without offload (margin included) and the engine's accounting, in
/// bytes, at each of `sizes` (width, height, frames).
fn profile_and_engine(profile: &str, sizes: &[(u32, u32, u32)]) -> Vec<(String, f64, f64)> {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("../templates/profiles");
    let profiles = load_profiles(&dir).expect("the shipped profiles load");
    let cfg = LiveAvatarConfig::release();
    let w2v = Wav2Vec2Config::large_xlsr53();
    sizes
        .iter()
        .map(|&(width, height, frames)| {
            let planned = profiles
                .estimate(
                    profile,
                    &EstimateRequest {
                        width,
                        height,
                        frames,
                        offload: OffloadChoice::Off,
                    },
                )
                .expect("the profile exists")
                .vram_bytes as f64;
            let params =
                JobParams::release_defaults(width as usize, height as usize, frames as usize);
            let engine = memory_estimate(&cfg, &w2v, &params, 2)
                .expect("release settings")
                .total() as f64;
            (format!("{width}*{height}x{frames}"), planned, engine)
        })
        .collect()
}

/// Asserts `profile / engine` lies in `range` at every size; prints them all.
fn check_ratios(rows: &[(String, f64, f64)], range: std::ops::RangeInclusive<f64>) {
    let gib = f64::from(1u32 << 30);
    let seen: Vec<String> = rows
        .iter()
        .map(|(size, profile, engine)| {
            format!(
                "{size}: profile {:.1} GiB, engine {:.1} GiB, ratio {:.3}",
                profile / gib,
                engine / gib,
                profile / engine
            )
        })
        .collect();
    for (_, profile, engine) in rows {
        assert!(range.contains(&(profile / engine)), "{}", seen.join("\n"));
    }
    eprintln!("{}", seen.join("\n"));
}

#[test]
fn the_liveavatar_profile_is_within_a_factor_of_the_engines_accounting() {
    let rows = profile_and_engine(
        "liveavatar-14b",
        &[(704, 384, 48), (384, 256, 48), (512, 512, 24)],
    );
    check_ratios(&rows, 1.0 / FACTOR..=FACTOR);
}

/// The native engine's profile is fitted to that same accounting (see its yaml): at the sizes
/// the release renders it must not plan less memory than the engine says it uses, nor more
/// than 12 % above it.
#[test]
fn the_native_profile_covers_the_engines_accounting_closely() {
    let rows = profile_and_engine(
        "liveavatar-14b-native",
        &[
            (384, 256, 24),
            (384, 256, 48),
            (512, 512, 24),
            (512, 512, 48),
            (704, 384, 24),
            (704, 384, 48),
            (704, 384, 96),
        ],
    );
    check_ratios(&rows, 1.0..=1.12);
}
