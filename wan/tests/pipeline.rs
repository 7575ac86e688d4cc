//! The job-level Live Avatar pipeline on the tiny random-weight release
//! (`wan::release::write_tiny_release`), loaded through `LiveAvatar::load` like a real
//! model directory: clip frame counts, exact resume from saved carries, the carry's
//! identity checks and size, damaged files, and the settings checks.

mod common;

use std::path::{Path, PathBuf};
use std::sync::OnceLock;

use common::B;
use wan::carry_io::float_dtype;
use wan::pipeline::{
    carry_bytes, CarryStamp, ClipFrames, JobContext, JobParams, LiveAvatar, LiveAvatarConfig,
    PipelineCarry,
};
use wan::release::write_tiny_release;
use wan::WanError;

/// One tiny release per test binary (written once, read by every test).
fn release_dir(seed: u64) -> PathBuf {
    static DIRS: OnceLock<tempfile::TempDir> = OnceLock::new();
    let root = DIRS.get_or_init(|| tempfile::tempdir().expect("tempdir"));
    let dir = root.path().join(format!("seed{seed}"));
    static LOCK: std::sync::Mutex<()> = std::sync::Mutex::new(());
    let _guard = LOCK.lock().unwrap_or_else(|e| e.into_inner());
    if !dir.exists() {
        let tmp = root.path().join(format!("seed{seed}.partial"));
        write_tiny_release(&tmp, seed).expect("tiny release writes");
        std::fs::rename(&tmp, &dir).expect("rename");
    }
    dir
}

fn model(seed: u64) -> LiveAvatar<B> {
    LiveAvatar::<B>::load(&release_dir(seed), &Default::default()).expect("tiny release loads")
}

fn params(seed: u64) -> JobParams {
    JobParams {
        width: 64,
        height: 64,
        infer_frames: 16,
        sample_steps: 4,
        seed,
        fps: 16,
    }
}

/// A colour gradient with a bright square: not flat, so the VAE sees structure.
fn image(w: usize, h: usize) -> Vec<u8> {
    let mut rgb = Vec::with_capacity(w * h * 3);
    for y in 0..h {
        for x in 0..w {
            let square = (w / 4..w / 2).contains(&x) && (h / 4..h / 2).contains(&y);
            rgb.extend([
                (x * 255 / w) as u8,
                (y * 255 / h) as u8,
                if square { 250 } else { 40 },
            ]);
        }
    }
    rgb
}

/// `secs` of a rising tone with a slow amplitude wobble, 16 kHz.
fn audio(secs: f64) -> Vec<f32> {
    let n = (secs * 16_000.0) as usize;
    (0..n)
        .map(|i| {
            let t = i as f64 / 16_000.0;
            let f = 180.0 + 120.0 * t;
            ((std::f64::consts::TAU * f * t).sin() * (0.3 + 0.2 * (3.0 * t).sin())) as f32
        })
        .collect()
}

const PROMPT: [u32; 6] = [259, 1001, 52, 77777, 1, 0];

fn prepare(m: &LiveAvatar<B>, s: &JobParams) -> JobContext<B> {
    m.prepare(s, &image(s.width, s.height), &audio(2.5), &PROMPT)
        .expect("prepare")
}

/// Renders `n` clips from `carry`, returning each clip's frames and the carry after it.
fn render(
    m: &LiveAvatar<B>,
    ctx: &JobContext<B>,
    mut carry: PipelineCarry<B>,
    n: usize,
) -> Vec<(ClipFrames, PipelineCarry<B>)> {
    let mut out = Vec::new();
    for _ in 0..n {
        let (frames, next) = m.render_clip(ctx, carry).expect("clip renders");
        carry = next.clone();
        out.push((frames, next));
    }
    out
}

fn mean_abs_diff(a: &[u8], b: &[u8]) -> f64 {
    a.iter()
        .zip(b)
        .map(|(x, y)| f64::from(x.abs_diff(*y)))
        .sum::<f64>()
        / a.len() as f64
}

#[test]
fn three_clips_have_the_documented_frame_counts_and_move() {
    let m = model(7);
    let s = params(11);
    let ctx = prepare(&m, &s);
    assert_eq!(ctx.clips(), 3, "2.5 s at 16 fps in 16-frame clips");
    assert_eq!(ctx.audio_video_frames(), 40);
    let clips = render(&m, &ctx, m.start(&ctx).expect("start"), 3);
    let counts: Vec<usize> = clips.iter().map(|(f, _)| f.rgb.len()).collect();
    assert_eq!(counts, vec![13, 16, 16], "clip 0 is 3 frames short");
    for (k, (f, c)) in clips.iter().enumerate() {
        assert_eq!(f.rgb.len(), s.clip_video_frames(k as u64));
        assert_eq!(c.clip(), k as u64 + 1);
        assert_eq!((f.width, f.height), (64, 64));
        assert!(f.rgb.iter().all(|fr| fr.len() == 64 * 64 * 3));
        // Not a flat picture: the pixels spread.
        let px = &f.rgb[0];
        let (lo, hi) = (px.iter().min().copied(), px.iter().max().copied());
        assert!(
            hi.unwrap_or(0) - lo.unwrap_or(0) > 30,
            "clip {k} is flat: {lo:?}..{hi:?}"
        );
    }
    // Consecutive clips differ, and so do frames within a clip.
    for k in 0..2 {
        let d = mean_abs_diff(&clips[k].0.rgb[5], &clips[k + 1].0.rgb[5]);
        assert!(d > 1.0, "clips {k} and {} look the same ({d})", k + 1);
    }
    let d = mean_abs_diff(&clips[1].0.rgb[0], &clips[1].0.rgb[15]);
    assert!(d > 0.5, "frames within a clip are identical ({d})");
}

#[test]
fn resume_from_saved_carries_gives_identical_frames() {
    let m = model(7);
    let s = params(3);
    let ctx = prepare(&m, &s);
    let id = ctx.carry_stamp().clone();
    let full = render(&m, &ctx, m.start(&ctx).expect("start"), 3);
    let dev = Default::default();

    // Stop after clip 0: resume clips 1 and 2 from the saved carry.
    let saved = full[0].1.to_bytes(&id).expect("carry saves");
    let loaded = PipelineCarry::<B>::from_bytes(&saved, &id, &dev).expect("carry loads");
    assert_eq!(loaded.clip(), 1);
    let resumed = render(&m, &ctx, loaded, 2);
    for (k, (a, b)) in full[1..].iter().zip(&resumed).enumerate() {
        assert!(
            a.0 == b.0,
            "clip {} differs after resuming at clip 1",
            k + 1
        );
        assert_eq!(
            a.1.to_bytes(&id).expect("saves"),
            b.1.to_bytes(&id).expect("saves"),
            "carry after clip {} differs",
            k + 1
        );
    }

    // Stop after clip 1 (a prepared context of its own, as a restarted worker has).
    let ctx2 = prepare(&m, &s);
    let saved = full[1].1.to_bytes(&id).expect("carry saves");
    let loaded = PipelineCarry::<B>::from_bytes(&saved, ctx2.carry_stamp(), &dev).expect("loads");
    let resumed = render(&m, &ctx2, loaded, 1);
    assert!(
        full[2].0 == resumed[0].0,
        "clip 2 differs after resuming at clip 2"
    );

    // The check can fail: a carry from one clip earlier gives other frames.
    let stale = PipelineCarry::<B>::from_bytes(&full[0].1.to_bytes(&id).expect("saves"), &id, &dev)
        .expect("loads");
    let mut stale = stale;
    stale.inner.clip = 2;
    let (wrong, _) = m.render_clip(&ctx, stale).expect("renders");
    assert!(wrong != full[2].0, "a different carry gave the same frames");
}

#[test]
fn carry_size_is_known_before_the_job() {
    let m = model(7);
    let s = params(5);
    let ctx = prepare(&m, &s);
    let expected = carry_bytes(&m.config, &s, float_dtype::<B>()).expect("size");
    let cfg = LiveAvatarConfig::from_dir(&release_dir(7)).expect("config reads alone");
    assert_eq!(
        carry_bytes(&cfg, &s, float_dtype::<B>()).expect("size"),
        expected
    );
    let clips = render(&m, &ctx, m.start(&ctx).expect("start"), 2);
    for (k, (_, c)) in clips.iter().enumerate() {
        let bytes = c.to_bytes(ctx.carry_stamp()).expect("saves");
        assert_eq!(bytes.len() as u64, expected, "carry after clip {k}");
    }
    // The formula moves with the size: a 128×64 job needs more.
    let wider = JobParams {
        width: 128,
        ..s.clone()
    };
    assert!(carry_bytes(&cfg, &wider, float_dtype::<B>()).expect("size") > expected);
}

#[test]
fn carries_of_another_job_are_refused_naming_the_field() {
    let m = model(7);
    let s = params(9);
    let ctx = prepare(&m, &s);
    let (_, carry) = m
        .render_clip(&ctx, m.start(&ctx).expect("start"))
        .expect("clip 0");
    let bytes = carry.to_bytes(ctx.carry_stamp()).expect("saves");
    let dev = Default::default();
    let id = ctx.carry_stamp().clone();

    let cases: Vec<(&str, CarryStamp)> = vec![
        (
            "seed",
            CarryStamp {
                seed: 10,
                ..id.clone()
            },
        ),
        (
            "width",
            CarryStamp {
                width: 128,
                ..id.clone()
            },
        ),
        (
            "sample_steps",
            CarryStamp {
                sample_steps: 2,
                ..id.clone()
            },
        ),
        (
            "model",
            CarryStamp {
                model: model(8).model_id().to_string(),
                ..id.clone()
            },
        ),
    ];
    for (field, other) in cases {
        let err = PipelineCarry::<B>::from_bytes(&bytes, &other, &dev).expect_err(field);
        let msg = err.to_string();
        assert!(
            matches!(&err, WanError::CarryMismatch { field: f, .. } if f == field),
            "{field}: {msg}"
        );
        assert!(msg.contains(field), "{msg}");
    }
    // Two releases with other weights have other ids; the same one keeps its id.
    assert_ne!(model(8).model_id(), m.model_id());
    assert_eq!(model(7).model_id(), m.model_id());
    assert!(PipelineCarry::<B>::from_bytes(&bytes, &id, &dev).is_ok());
}

#[test]
fn truncated_or_damaged_carries_fail_cleanly() {
    let m = model(7);
    let s = params(1);
    let ctx = prepare(&m, &s);
    let (_, carry) = m
        .render_clip(&ctx, m.start(&ctx).expect("start"))
        .expect("clip 0");
    let id = ctx.carry_stamp();
    let bytes = carry.to_bytes(id).expect("saves");
    let dev = Default::default();
    for cut in [0, 7, 100, bytes.len() / 2, bytes.len() - 1] {
        let err = PipelineCarry::<B>::from_bytes(&bytes[..cut], id, &dev)
            .expect_err("a truncated carry loads");
        assert!(matches!(err, WanError::Carry { .. }), "cut at {cut}: {err}");
    }
    // One flipped bit in the tensor data.
    let mut flipped = bytes.clone();
    let at = bytes.len() - 1000;
    flipped[at] ^= 0x10;
    let msg = PipelineCarry::<B>::from_bytes(&flipped, id, &dev)
        .expect_err("a damaged carry loads")
        .to_string();
    assert!(msg.contains("damaged"), "{msg}");
    // A carry of the bare causal loop (no decode cache, no identity) is not a job carry.
    let bare = wan::causal_loop::DitCarry {
        vae_decode: None,
        ..carry.inner.clone().into_carry(&dev)
    };
    let msg = PipelineCarry::<B>::from_bytes(&bare.to_bytes().expect("saves"), id, &dev)
        .expect_err("bare carry")
        .to_string();
    assert!(msg.contains("id.model"), "{msg}");
}

#[test]
fn seeds_give_different_frames() {
    let m = model(7);
    let a = prepare(&m, &params(1));
    let b = prepare(&m, &params(2));
    let (fa, _) = m.render_clip(&a, m.start(&a).expect("start")).expect("a");
    let (fb, _) = m.render_clip(&b, m.start(&b).expect("start")).expect("b");
    let d = mean_abs_diff(&fa.rgb[6], &fb.rgb[6]);
    assert!(d > 1.0, "seeds 1 and 2 look the same ({d})");
    // And the same seed the same frames.
    let (fa2, _) = m
        .render_clip(&a, m.start(&a).expect("start"))
        .expect("a again");
    assert!(fa == fa2);
}

#[test]
fn settings_and_inputs_are_checked_with_what_to_change() {
    let m = model(7);
    let s = params(1);
    let msg = |p: JobParams| m.check_settings(&p).expect_err("bad settings").to_string();
    let e = msg(JobParams {
        width: 100,
        ..s.clone()
    });
    assert!(e.contains("width") && e.contains("64 or 128"), "{e}");
    let e = msg(JobParams {
        width: 1 << 20,
        ..s.clone()
    });
    assert!(e.contains("4096"), "{e}");
    let e = msg(JobParams {
        infer_frames: 6,
        ..s.clone()
    });
    assert!(e.contains("infer_frames") && e.contains("try 8"), "{e}");
    let e = msg(JobParams {
        sample_steps: 0,
        ..s.clone()
    });
    assert!(e.contains("sample_steps"), "{e}");
    let e = msg(JobParams {
        fps: 0,
        ..s.clone()
    });
    assert!(e.contains("fps"), "{e}");
    // The release's 3 frames per block: 16 frames do not split, 48 do.
    let release = LiveAvatarConfig::release();
    let e = release
        .check_settings(&JobParams {
            infer_frames: 16,
            ..s.clone()
        })
        .expect_err("16 frames on the release")
        .to_string();
    assert!(e.contains("multiple of 12"), "{e}");
    assert!(release
        .check_settings(&JobParams {
            infer_frames: 48,
            ..s.clone()
        })
        .is_ok());

    let img = image(64, 64);
    let e = m
        .prepare(&s, &img[..100], &audio(1.0), &PROMPT)
        .err()
        .expect("short image")
        .to_string();
    assert!(e.contains("RGB24 at 64x64"), "{e}");
    let e = m
        .prepare(&s, &img, &audio(0.01), &PROMPT)
        .err()
        .expect("short audio")
        .to_string();
    assert!(e.contains("at least 400"), "{e}");
    let e = m
        .prepare(&s, &img, &audio(1.0), &[3, 300_000])
        .err()
        .expect("id out of vocabulary")
        .to_string();
    assert!(e.contains("300000"), "{e}");
    let mut nan = audio(1.0);
    nan[10] = f32::NAN;
    assert!(m.prepare(&s, &img, &nan, &PROMPT).is_err());
    // An empty prompt is allowed (no text rows, the DiT's padding only).
    assert!(m.prepare(&s, &img, &audio(1.0), &[]).is_ok());
}

#[test]
fn streaming_decode_equals_decoding_at_once() {
    use burn::prelude::*;
    let m = model(7);
    let dev = Default::default();
    let z = Tensor::<B, 5>::random(
        [1, 16, 5, 8, 8],
        burn::tensor::Distribution::Normal(0.0, 1.0),
        &dev,
    );
    let (mean, std) = (&m.config.vae_mean, &m.config.vae_std);
    let whole = m.vae.decode(z.clone(), mean, std);
    let mut cache = wan::vae::DecodeCache::default();
    let a = m
        .vae
        .decode_stream(z.clone().narrow(2, 0, 2), mean, std, &mut cache);
    let b = m
        .vae
        .decode_stream(z.narrow(2, 2, 3), mean, std, &mut cache);
    assert_eq!(a.dims()[2], 5, "1 + 4 frames from the first two latents");
    assert_eq!(b.dims()[2], 12);
    let joined: Vec<f32> = Tensor::cat(vec![a, b], 2)
        .into_data()
        .to_vec()
        .expect("f32");
    let whole: Vec<f32> = whole.into_data().to_vec().expect("f32");
    assert_eq!(joined, whole);
    // The slots after two or more latents have the shapes the size formula assumes.
    let shapes: Vec<Vec<usize>> = cache
        .slots()
        .iter()
        .map(|s| match s {
            wan::vae::CacheSlot::Frames(t) => t.dims().to_vec(),
            _ => vec![],
        })
        .collect();
    let expected: Vec<Vec<usize>> = wan::vae::decode_cache_shapes(&m.config.vae, 8, 8)
        .iter()
        .map(|s| s.to_vec())
        .collect();
    assert_eq!(shapes, expected);
}

#[test]
fn the_tiny_release_is_reproducible_from_its_seed() {
    let a = tempfile::tempdir().expect("tempdir");
    write_tiny_release(a.path(), 7).expect("writes");
    let b = release_dir(7);
    for rel in [
        "Wan2.2-S2V-14B/diffusion_pytorch_model-00001-of-00002.safetensors",
        "Wan2.2-S2V-14B/Wan2.1_VAE.safetensors",
        "LiveAvatar/liveavatar.safetensors",
    ] {
        let read = |d: &Path| std::fs::read(d.join(rel)).expect("read");
        assert!(
            read(a.path()) == read(&b),
            "{rel} differs between two writes"
        );
    }
}

#[test]
fn a_broken_model_directory_is_refused_naming_the_file() {
    let dir = tempfile::tempdir().expect("tempdir");
    write_tiny_release(dir.path(), 3).expect("writes");
    let load = || LiveAvatar::<B>::load(dir.path(), &Default::default()).map(|_| ());
    assert!(load().is_ok());
    let config = dir.path().join("Wan2.2-S2V-14B/config.json");
    let original = std::fs::read_to_string(&config).expect("config");

    // A field of the wrong type.
    std::fs::write(
        &config,
        original.replace("\"dim\": 64", "\"dim\": \"wide\""),
    )
    .expect("w");
    let e = load().expect_err("bad dim").to_string();
    assert!(e.contains("config.json") && e.contains("`dim`"), "{e}");
    // Parts that do not fit together.
    std::fs::write(
        &config,
        original.replace("\"text_dim\": 32", "\"text_dim\": 48"),
    )
    .expect("w");
    let e = load().expect_err("text width").to_string();
    assert!(e.contains("text_dim"), "{e}");
    std::fs::write(
        &config,
        original.replace("\"audio_layers\": 3", "\"audio_layers\": 25"),
    )
    .expect("w");
    let e = load().expect_err("audio layers").to_string();
    assert!(
        e.contains("casual_audio_encoder.weights") && e.contains("[1, 25, 1, 1]"),
        "{e}"
    );
    std::fs::write(&config, &original).expect("w");

    // A missing LoRA.
    let lora = dir.path().join("LiveAvatar/liveavatar.safetensors");
    std::fs::rename(&lora, dir.path().join("moved")).expect("move");
    let e = load().expect_err("no LoRA").to_string();
    assert!(e.contains("liveavatar.safetensors"), "{e}");
    std::fs::rename(dir.path().join("moved"), &lora).expect("move back");

    // A missing VAE: the released name is the one asked for.
    std::fs::remove_file(dir.path().join("Wan2.2-S2V-14B/Wan2.1_VAE.safetensors")).expect("rm");
    let e = load().expect_err("no VAE").to_string();
    assert!(e.contains("Wan2.1_VAE.pth"), "{e}");
}
