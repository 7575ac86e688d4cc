//! Layer streaming (`wan::streamed`) against the resident causal loop at the tiny
//! config: two clips with audio give the same latents and the same carry bit for bit,
//! a job can switch mode between clips, the carry matters (a dropped ring changes the
//! clip), and the bytes that cross per clip are what `wan::memory` computes.

mod common;

use burn::prelude::*;
use common::{bits, noise, same_carry_bytes, B};
use wan::causal_loop::{run_clip, CausalSettings, ClipInput, DitCarry};
use wan::memory::{clip_traffic, plan_in, Geometry, JobShape, MemoryMode, ModelSizes, Precision};
use wan::pipeline::LiveAvatarConfig;
use wan::streamed::{run_clip_streamed, HostDitCarry, StreamedModel};
use wan::wav2vec2::Wav2Vec2Config;
use wan::{S2vConfig, WanS2v};

fn model() -> WanS2v<B> {
    common::tiny_model()
}

/// Clip `clip`'s inputs, with audio features `[1, 25 states, 32, 4 · 12 frames]`.
fn clip_input(m: &WanS2v<B>, clip: u64) -> ClipInput<B> {
    ClipInput {
        noise: noise(100 + clip, [1, 16, 12, 8, 8]),
        cond: noise(200 + clip, [1, 16, 12, 8, 8]) * 0.1,
        context: m.embed_text(noise(7, [1, 7, 32])),
        audio: Some(noise(300 + clip, [1, 25, 32, 48])),
    }
}

fn start_args(m: &WanS2v<B>) -> (Tensor<B, 5>, Tensor<B, 5>, Tensor<B, 3>) {
    (
        noise(1, [1, 16, 1, 8, 8]),
        noise(2, [1, 16, 19, 8, 8]),
        m.embed_text(noise(7, [1, 7, 32])),
    )
}

/// Two saved carries hold the same tensors (bit for bit) and metadata.
fn same_carry(a: &DitCarry<B>, b: &DitCarry<B>) -> bool {
    same_carry_bytes(&a.to_bytes().expect("saves"), &b.to_bytes().expect("saves"))
}

#[test]
fn streamed_clips_equal_resident_clips_bit_for_bit() {
    let s = CausalSettings::live_avatar(42);
    let m = model();
    let (r, mo, ctx) = start_args(&m);
    let c0 = DitCarry::start(&m, &s, r.clone(), mo.clone(), ctx.clone());
    let (l1, c1) = run_clip(&m, &s, c0.clone(), clip_input(&m, 0));
    let (l2, c2) = run_clip(&m, &s, c1, clip_input(&m, 1));

    let sm = StreamedModel::from_model(model());
    assert!(sm.resident.blocks.is_empty(), "blocks left on the device");
    let h0 = HostDitCarry::start(&sm, &s, r, mo, ctx);
    assert!(
        same_carry(&h0.clone().into_carry(&Default::default()), &c0),
        "the streamed sink prefill differs"
    );
    let one = run_clip_streamed(&sm, &s, h0, clip_input(&sm.resident, 0)).expect("clip 0");
    assert!(
        bits(one.latents.clone()) == bits(l1.clone()),
        "clip 0 latents differ"
    );
    let two = run_clip_streamed(&sm, &s, one.carry, clip_input(&sm.resident, 1)).expect("clip 1");
    assert!(
        bits(two.latents.clone()) == bits(l2.clone()),
        "clip 1 latents differ"
    );
    assert!(
        same_carry(&two.carry.into_carry(&Default::default()), &c2),
        "the carry after two streamed clips differs"
    );

    // Per clip: 7 ticks, so each layer's weights crossed 7 times; 16 ring uploads and
    // 16 written slices per layer; the sink slice once per tick. The same numbers as
    // the accounting computes from the config and geometry.
    // 64×64 video → 8×8 latents → 4×4 tokens per frame, as the tiny clips here.
    let g = Geometry::live_avatar(64, 64, 48).expect("tiny geometry");
    assert_eq!((g.tokens_per_frame, g.sink_tokens), (16, 16 + 16 + 4 + 4));
    let want = clip_traffic(&S2vConfig::tiny(), &g, 4);
    let t = two.traffic;
    assert_eq!(t.ticks, 7);
    assert_eq!(t.layer_uploads, 7 * 4);
    assert_eq!(
        t.weight_bytes_up,
        7 * (0..4).map(|l| sm.layer_weight_bytes(l)).sum::<u64>()
    );
    assert_eq!(t.weight_bytes_up, want.weight_bytes_up);
    assert_eq!(t.ring_bytes_up, want.ring_bytes_up);
    assert_eq!(t.sink_bytes_up, want.sink_bytes_up);
    assert_eq!(t.ring_bytes_down, want.ring_bytes_down);

    // The blocks go back on the device unchanged.
    let back = sm.into_model();
    let (l1_back, _) = run_clip(&back, &s, c0, clip_input(&back, 0));
    assert!(bits(l1_back) == bits(l1), "blocks changed on the way back");
}

#[test]
fn a_job_switches_mode_between_clips() {
    let s = CausalSettings::live_avatar(7);
    let m = model();
    let sm = StreamedModel::from_model(model());
    let dev = Default::default();
    let (r, mo, ctx) = start_args(&m);
    let c0 = DitCarry::start(&m, &s, r, mo, ctx);
    let (_, c1) = run_clip(&m, &s, c0.clone(), clip_input(&m, 0));
    let (l2, c2) = run_clip(&m, &s, c1.clone(), clip_input(&m, 1));

    // Resident clip 0, streamed clip 1.
    let h1 = HostDitCarry::from_carry(c1.clone());
    let two = run_clip_streamed(&sm, &s, h1, clip_input(&sm.resident, 1)).expect("clip 1");
    assert!(
        bits(two.latents) == bits(l2.clone()),
        "resident → streamed differs"
    );
    assert!(same_carry(&two.carry.into_carry(&dev), &c2));

    // Streamed clip 0, resident clip 1 (from the carry's bytes, as a resumed job would).
    let one = run_clip_streamed(
        &sm,
        &s,
        HostDitCarry::from_carry(c0),
        clip_input(&sm.resident, 0),
    )
    .expect("clip 0");
    let saved = one.carry.into_carry(&dev).to_bytes().expect("carry saves");
    let loaded = DitCarry::<B>::from_bytes(&saved, &dev).expect("carry loads");
    let (l2_resumed, _) = run_clip(&m, &s, loaded, clip_input(&m, 1));
    assert!(bits(l2_resumed) == bits(l2), "streamed → resident differs");
}

#[test]
fn the_streamed_clip_depends_on_every_ring_and_refuses_a_foreign_carry() {
    let s = CausalSettings::live_avatar(3);
    let m = model();
    let sm = StreamedModel::from_model(model());
    let (r, mo, ctx) = start_args(&m);
    let c0 = DitCarry::start(&m, &s, r, mo, ctx);
    let (_, c1) = run_clip(&m, &s, c0, clip_input(&m, 0));
    let (l2, _) = run_clip(&m, &s, c1.clone(), clip_input(&m, 1));

    // Ring 2 of layer 1 dropped (zeroed) in the host carry: clip 1 changes.
    let mut h1 = HostDitCarry::from_carry(c1.clone());
    let ring = &mut h1.layers[1].rings[2];
    for t in [&mut ring.k, &mut ring.v] {
        *t = TensorData::full_dtype(t.shape.clone(), 0.0, t.dtype);
    }
    let dropped = run_clip_streamed(&sm, &s, h1, clip_input(&sm.resident, 1)).expect("runs");
    let diff = (dropped.latents - l2.clone()).abs().max().into_scalar();
    assert!(
        diff > 1e-4,
        "a dropped ring left the clip unchanged ({diff})"
    );

    // A carry with a layer missing, or of another clip length, is refused with the reason.
    let mut short = HostDitCarry::from_carry(c1.clone());
    short.layers.pop();
    let msg = run_clip_streamed(&sm, &s, short, clip_input(&sm.resident, 1))
        .expect_err("a 3-layer carry runs on a 4-layer model")
        .to_string();
    assert!(msg.contains("3 layers") && msg.contains("4"), "{msg}");
    let longer = CausalSettings {
        blocks_per_clip: 5,
        ..s.clone()
    };
    let msg = run_clip_streamed(
        &sm,
        &longer,
        HostDitCarry::from_carry(c1),
        clip_input(&sm.resident, 1),
    )
    .expect_err("a carry of 12-frame clips runs 15-frame clips")
    .to_string();
    assert!(msg.contains("192 tokens"), "{msg}");
}

/// The streamed tests' DiT (the parity fixtures' tiny config, 3 latent frames per block) as a
/// release config for the accounting.
fn tiny_sizes() -> ModelSizes {
    let cfg = LiveAvatarConfig {
        s2v: S2vConfig::tiny(),
        frames_per_block: 3,
        ..LiveAvatarConfig::tiny()
    };
    ModelSizes::of(&cfg, &Wav2Vec2Config::tiny())
}

#[test]
fn hybrid_fp8_clips_equal_resident_fp8_and_move_what_the_accounting_says() {
    let s = CausalSettings::live_avatar(11);
    let mut q = model();
    q.to_fp8();
    let (r, mo, ctx) = start_args(&q);
    let c0 = DitCarry::start(&q, &s, r, mo, ctx);
    let (l1, c1) = run_clip(&q, &s, c0.clone(), clip_input(&q, 0));
    let (l2, c2) = run_clip(&q, &s, c1, clip_input(&q, 1));

    let mut q2 = model();
    q2.to_fp8();
    let sm = StreamedModel::from_model_hybrid(q2, 2);
    assert_eq!((sm.resident_blocks(), sm.layers()), (2, 4));
    let h0 = HostDitCarry::from_carry_split(c0, 2);
    let one = run_clip_streamed(&sm, &s, h0, clip_input(&sm.resident, 0)).expect("clip 0");
    assert!(bits(one.latents) == bits(l1), "hybrid fp8 clip 0 differs");
    let two = run_clip_streamed(&sm, &s, one.carry, clip_input(&sm.resident, 1)).expect("clip 1");
    assert!(bits(two.latents) == bits(l2), "hybrid fp8 clip 1 differs");
    let host_kv = two.carry.host_bytes();
    assert!(same_carry(&two.carry.into_carry(&Default::default()), &c2));

    // What crossed, and what the host holds, are the plan's figures (f32 here: 4 bytes).
    let sizes = tiny_sizes();
    let job = JobShape {
        width: 64,
        height: 64,
        infer_frames: 48,
        sample_steps: 4,
        audio_seconds: 1.0,
    };
    let p = plan_in(
        &sizes,
        &job,
        MemoryMode::Hybrid { resident_blocks: 2 },
        Precision::Fp8,
        4,
    )
    .expect("plan");
    let t = two.traffic;
    assert_eq!(t.weight_bytes_up, p.traffic.weight_bytes_up);
    assert_eq!(t.ring_bytes_up, p.traffic.ring_bytes_up);
    assert_eq!(t.sink_bytes_up, p.traffic.sink_bytes_up);
    assert_eq!(t.ring_bytes_down, p.traffic.ring_bytes_down);
    assert_eq!(t.layer_uploads, 7 * 2);
    assert_eq!(
        sm.layer_weight_bytes(3),
        sizes.dit.block_bytes(Precision::Fp8, 4),
        "an fp8 block's host copy: codes, tables and the float parameters"
    );
    let planned_host: u64 = p.host[..3].iter().map(|i| i.bytes).sum();
    assert_eq!(sm.host_weight_bytes() + host_kv, planned_host);
    // fp8 blocks hold about a quarter of their f32 bytes here (a half of bf16's).
    let float = StreamedModel::from_model(model());
    let ratio = sm.layer_weight_bytes(3) as f64 / float.layer_weight_bytes(3) as f64;
    assert!((0.25..0.45).contains(&ratio), "{ratio}");
}
