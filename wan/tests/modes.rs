//! Memory modes and fp8 weights through the job pipeline on the tiny release: resident,
//! hybrid and streamed render the same frames bit for bit, a job changes mode between clips
//! (through the carry file or in one process) without changing a frame, fp8 stays within its
//! stated tolerance of the float weights and is itself the same in every mode, and the
//! once-per-job encoders are not among the models kept on the device.

mod common;

use std::path::PathBuf;
use std::sync::OnceLock;

use common::B;
use wan::memory::{plan_in, ItemKind, JobShape, ModelSizes};
use wan::pipeline::{
    ClipFrames, DeviceModule, JobContext, JobParams, LiveAvatar, LoadOptions, MemoryMode,
    PipelineCarry, Precision,
};
use wan::release::write_tiny_release;
use wan::wav2vec2::Wav2Vec2Config;

fn release_dir() -> PathBuf {
    static DIR: OnceLock<tempfile::TempDir> = OnceLock::new();
    let dir = DIR.get_or_init(|| {
        let dir = tempfile::tempdir().expect("tempdir");
        write_tiny_release(dir.path(), 7).expect("tiny release writes");
        dir
    });
    dir.path().to_path_buf()
}

fn load(mode: MemoryMode, precision: Precision) -> LiveAvatar<B> {
    LiveAvatar::<B>::load_with(
        &release_dir(),
        &Default::default(),
        LoadOptions { mode, precision },
    )
    .expect("tiny release loads")
}

fn params() -> JobParams {
    JobParams {
        width: 64,
        height: 64,
        infer_frames: 16,
        sample_steps: 4,
        seed: 5,
        fps: 16,
    }
}

/// 2 s of a tone and a still image with some structure.
fn prepare(m: &LiveAvatar<B>) -> JobContext<B> {
    let rgb: Vec<u8> = (0..64 * 64)
        .flat_map(|i| {
            [
                (i % 64 * 4) as u8,
                (i / 64 * 4) as u8,
                if i % 7 == 0 { 250 } else { 30 },
            ]
        })
        .collect();
    let audio: Vec<f32> = (0..32_000)
        .map(|i| (i as f32 * 0.05).sin() * (0.3 + 0.2 * (i as f32 * 0.0003).sin()))
        .collect();
    m.prepare(&params(), &rgb, &audio, &[259, 1001, 52, 1])
        .expect("prepare")
}

/// Clip latents `[1, 16, F, 8, 8]` of the clip that made `carry` (the last frames of its
/// motion latents).
fn latents_of(carry: &PipelineCarry<B>) -> Vec<f32> {
    let m = carry.inner.motion.clone();
    let t = m.dims()[2];
    let f = params().infer_frames / 4;
    m.narrow(2, t - f, f).into_data().to_vec().expect("f32")
}

/// `n` clips from the start; the frames and the carry after each.
fn clips(m: &LiveAvatar<B>, ctx: &JobContext<B>, n: usize) -> Vec<(ClipFrames, PipelineCarry<B>)> {
    let mut carry = m.start(ctx).expect("start");
    let mut out = Vec::new();
    for _ in 0..n {
        let (frames, next) = m.render_clip(ctx, carry).expect("clip");
        carry = next.clone();
        out.push((frames, next));
    }
    out
}

#[test]
fn every_memory_mode_renders_the_same_frames() {
    let resident = load(MemoryMode::Resident, Precision::Bf16);
    let ctx = prepare(&resident);
    let id = ctx.carry_stamp().clone();
    let want = clips(&resident, &ctx, 2);
    assert_eq!(
        resident.device_modules(),
        vec![
            DeviceModule::DitResidentParts,
            DeviceModule::DitBlocks(4),
            DeviceModule::Vae
        ]
    );
    for (mode, blocks) in [
        (MemoryMode::Hybrid { resident_blocks: 2 }, 2),
        (MemoryMode::Streamed, 0),
    ] {
        let m = load(mode, Precision::Bf16);
        assert_eq!(m.memory_mode(), mode);
        assert_eq!(m.device_modules()[1], DeviceModule::DitBlocks(blocks));
        // A job's context does not depend on the mode (the same release: the same model id).
        let got = clips(&m, &ctx, 2);
        assert_eq!(
            got[1].1.inner.resident_layers(),
            blocks,
            "{mode}: the carry keeps the mode's layers on the device"
        );
        for (k, (a, b)) in want.iter().zip(&got).enumerate() {
            assert!(a.0 == b.0, "{mode}: clip {k} frames differ from resident");
            assert_eq!(
                a.1.to_bytes(&id).expect("saves"),
                b.1.to_bytes(&id).expect("saves"),
                "{mode}: carry after clip {k} differs"
            );
        }
    }
}

#[test]
fn a_job_switches_mode_between_clips_without_changing_a_frame() {
    let resident = load(MemoryMode::Resident, Precision::Bf16);
    let ctx = prepare(&resident);
    let id = ctx.carry_stamp().clone();
    let want = clips(&resident, &ctx, 3);

    // Clip 0 resident, clip 1 streamed, clip 2 hybrid, each resumed from the saved carry by
    // a model loaded in the next mode (as a restarted worker would).
    let streamed = load(MemoryMode::Streamed, Precision::Bf16);
    let hybrid = load(MemoryMode::Hybrid { resident_blocks: 3 }, Precision::Bf16);
    let saved = want[0].1.to_bytes(&id).expect("saves");
    let carry = streamed.carry_from_bytes(&saved, &id).expect("loads");
    assert_eq!(
        carry.inner.resident_layers(),
        0,
        "a streamed resume loads to host memory"
    );
    let (one, carry) = streamed.render_clip(&ctx, carry).expect("clip 1 streamed");
    assert!(one == want[1].0, "clip 1 streamed after resident differs");
    let saved = carry.to_bytes(&id).expect("saves");
    let carry = hybrid.carry_from_bytes(&saved, &id).expect("loads");
    assert_eq!(carry.inner.resident_layers(), 3);
    let (two, _) = hybrid.render_clip(&ctx, carry).expect("clip 2 hybrid");
    assert!(two == want[2].0, "clip 2 hybrid after streamed differs");

    // In one process: the same model moves its blocks, the live carry follows.
    let mut m = load(MemoryMode::Resident, Precision::Bf16);
    let (_, carry) = m
        .render_clip(&ctx, m.start(&ctx).expect("start"))
        .expect("clip 0");
    m.set_memory_mode(MemoryMode::Streamed);
    assert_eq!(m.device_modules()[1], DeviceModule::DitBlocks(0));
    let (one, carry) = m.render_clip(&ctx, carry).expect("clip 1 streamed");
    assert!(
        one == want[1].0,
        "clip 1 after an in-process switch differs"
    );
    m.set_memory_mode(MemoryMode::Hybrid { resident_blocks: 1 });
    let (two, carry) = m.render_clip(&ctx, carry).expect("clip 2 hybrid");
    assert!(two == want[2].0);
    m.set_memory_mode(MemoryMode::Resident);
    assert_eq!(m.device_modules()[1], DeviceModule::DitBlocks(4));
    assert_eq!(
        carry.to_bytes(&id).expect("saves"),
        want[2].1.to_bytes(&id).expect("saves")
    );
}

/// Relative L2 distance `|a - b| / |b|`.
fn rel_l2(a: &[f32], b: &[f32]) -> f64 {
    let num: f64 = a.iter().zip(b).map(|(x, y)| f64::from(x - y).powi(2)).sum();
    let den: f64 = b.iter().map(|y| f64::from(*y).powi(2)).sum();
    (num / den).sqrt()
}

/// The tolerance of fp8 against the float weights, relative L2 of a clip's latents.
///
/// Why this number: a per-tensor E4M3 weight carries a rounding error of at most 2⁻⁴ of its
/// magnitude (3 mantissa bits, round to nearest), about 2.6 % RMS over a binade; a linear
/// layer's output moves by about as much (the errors add in quadrature, as the signal does),
/// and the velocity after the 4 layers by a few times that. The clip latents are the noise
/// draw moved by `Σ Δσ · v` over the 4 Euler steps, so they move by less than the velocity:
/// measured 0.0067 (clips 0 and 1, NdArray f32, the tiny release). 0.03 is 4.5 times that;
/// a 25 % error of the scale (the table multiplied by 1.25, tried) gives 0.085 and fails,
/// and the float weights (no quantization at all) fail the lower bound. The per-layer
/// bound is tested in `wan::fp8` (one layer's output within 5 %).
const FP8_TOLERANCE: f64 = 0.03;

#[test]
fn fp8_stays_within_tolerance_of_the_float_weights_and_is_the_same_in_every_mode() {
    let float = load(MemoryMode::Resident, Precision::Bf16);
    let fp8 = load(MemoryMode::Resident, Precision::Fp8);
    assert_eq!(fp8.precision(), Precision::Fp8);
    let dit = fp8.dit();
    assert!(
        dit.blocks[0].self_attn.q.is_fp8()
            && dit.blocks[3].ffn[2].as_ref().is_some_and(|l| l.is_fp8())
    );
    assert!(dit.audio_injector.injector_adain_layers[0].linear.is_fp8());
    assert!(
        !dit.head.head.is_fp8()
            && !dit.casual_audio_encoder.encoder.final_linear.is_fp8()
            && dit.text_embedding[0].as_ref().is_some_and(|l| !l.is_fp8()),
        "the layers the original keeps in full precision stay float"
    );
    // The job context does not depend on the precision (umT5 and wav2vec2 are not fp8, and
    // the DiT's text embedding stays in full precision).
    let ctx = prepare(&float);
    let a = clips(&float, &ctx, 2);
    let b = clips(&fp8, &ctx, 2);
    for k in 0..2 {
        let d = rel_l2(&latents_of(&b[k].1), &latents_of(&a[k].1));
        eprintln!("clip {k}: fp8 vs float weights, relative L2 of the latents {d:.4}");
        assert!(d < FP8_TOLERANCE, "clip {k}: {d}");
        assert!(d > 1e-4, "clip {k}: fp8 changed nothing ({d})");
    }

    // fp8 streamed and hybrid equal fp8 resident bit for bit (same codes, same dequantization).
    let id = ctx.carry_stamp().clone();
    for mode in [
        MemoryMode::Streamed,
        MemoryMode::Hybrid { resident_blocks: 2 },
    ] {
        let m = load(mode, Precision::Fp8);
        let got = clips(&m, &ctx, 2);
        for k in 0..2 {
            assert!(
                got[k].0 == b[k].0,
                "{mode} fp8 clip {k} differs from resident fp8"
            );
            assert_eq!(
                got[k].1.to_bytes(&id).expect("saves"),
                b[k].1.to_bytes(&id).expect("saves")
            );
        }
    }
}

#[test]
fn the_encoders_are_not_kept_and_the_plan_leaves_them_out_of_the_clip_peak() {
    let m = load(MemoryMode::Streamed, Precision::Bf16);
    let before = m.device_modules();
    // prepare loads umT5 and wav2vec2 for itself and drops them: twice works, and the models
    // kept on the device are the same before and after.
    let a = prepare(&m);
    let b = prepare(&m);
    assert_eq!(m.device_modules(), before);
    assert!(!before.is_empty());
    let ctx: Vec<f32> = a.context.clone().into_data().to_vec().expect("f32");
    let ctx2: Vec<f32> = b.context.clone().into_data().to_vec().expect("f32");
    assert_eq!(ctx, ctx2);

    let sizes = ModelSizes::of(
        &m.config,
        &Wav2Vec2Config::from_json_file(
            &release_dir().join("Wan2.2-S2V-14B/wav2vec2-large-xlsr-53-english/config.json"),
        )
        .expect("w2v config"),
    );
    let job = JobShape::new(&params(), 2.0);
    for mode in [MemoryMode::Resident, MemoryMode::Streamed] {
        let p = plan_in(&sizes, &job, mode, Precision::Bf16, 4).expect("plan");
        assert_eq!(p.device_bytes(ItemKind::Encoders), 0, "{mode}");
        let enc: u64 = p
            .prepare
            .iter()
            .filter(|i| i.kind == ItemKind::Encoders)
            .map(|i| i.bytes)
            .sum();
        assert_eq!(enc, (sizes.t5 + sizes.wav2vec2_params) * 4, "{mode}");
    }
}
