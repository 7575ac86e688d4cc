//! The S2V DiT against the reference (wan22 2.2.11, CPU f32) at the tiny config.
//! Fixtures come from `tools/wan_fixtures/gen_fixtures.py`; weights load through the
//! same loader as the released files.

mod common;

use burn::prelude::*;
use common::{assert_close, fixture_path, rel_l2, Fixture};
use wan::block::Segment;
use wan::loader::load_s2v_file;
use wan::model::{TrunkInput, REF_FRAME_POSITION};
use wan::rope::{RopeGroup, RopeTable};
use wan::{S2vConfig, WanS2v};

// Single layers: |Δ| ≤ 1e-5 + 1e-4·|ref| (ENGINE.md §5.3).
const ATOL: f32 = 1e-5;
const RTOL: f32 = 1e-4;

fn model<B: Backend>() -> WanS2v<B> {
    let m = WanS2v::<B>::new(&S2vConfig::tiny(), &Default::default());
    let (m, report) = load_s2v_file(m, &fixture_path("s2v_tiny_weights.safetensors"))
        .expect("tiny reference weights load");
    // 27 tensors per block × 4, 12 per audio injector × 3, 36 outside blocks and injectors.
    assert_eq!(report.tensors, 27 * 4 + 12 * 3 + 36, "all tiny tensors");
    m
}

/// The token grid of the fixture: 3 latent frames of 8×8 → 3×4×4 noisy tokens, then
/// the reference image's 1×4×4 tokens at frame position 30.
fn rope() -> RopeTable {
    RopeTable::new(
        16,
        &[
            RopeGroup::grid(0, 3, 4, 4),
            RopeGroup::from_grid(
                [REF_FRAME_POSITION, 0, 0],
                [REF_FRAME_POSITION + 1, 4, 4],
                [1, 4, 4],
            ),
        ],
    )
}

/// Block modulation segments from the reference's `e0` `[1, 6, 2, dim]`.
fn block_segments<B: Backend>(fx: &Fixture<B>) -> Vec<Segment<B>> {
    let e0: Tensor<B, 4> = fx.tensor("block0.e0");
    let (_, seg) = fx.raw("block0.noisy_tokens");
    let noisy = seg[0] as usize;
    let total = fx.tensor::<3>("block0.in").dims()[1];
    vec![
        Segment {
            tokens: noisy,
            e: e0.clone().narrow(2, 0, 1).reshape([1, 6, 64]),
        },
        Segment {
            tokens: total - noisy,
            e: e0.narrow(2, 1, 1).reshape([1, 6, 64]),
        },
    ]
}

fn time_embedding_and_projection_match<B: Backend>() {
    let fx = Fixture::<B>::read("s2v_tiny_io.safetensors");
    let m = model::<B>();
    let (_, t) = fx.raw("in.t");
    let (e, e0) = m.embed_time(&[f64::from(t[0]), 0.0], &Default::default());
    assert_close(e, fx.tensor("time.e"), ATOL, RTOL, "time_embedding");
    assert_close(e0, fx.tensor("time.e0"), ATOL, RTOL, "time_projection");
}

fn text_embedding_pads_and_matches<B: Backend>() {
    let fx = Fixture::<B>::read("s2v_tiny_io.safetensors");
    let m = model::<B>();
    let context: Tensor<B, 2> = fx.tensor("in.context");
    let out = m.embed_text(context.unsqueeze::<3>());
    assert_close(out, fx.tensor("text.out"), ATOL, RTOL, "text_embedding");
}

fn self_attention_with_3_axis_rope_matches<B: Backend>() {
    let fx = Fixture::<B>::read("s2v_tiny_io.safetensors");
    let m = model::<B>();
    let rope = rope().to_device::<B>(&Default::default());
    let out = m.blocks[0]
        .self_attn
        .forward_self(fx.tensor("self_attn0.in"), &rope);
    assert_close(
        out,
        fx.tensor("self_attn0.out"),
        ATOL,
        RTOL,
        "blocks.0.self_attn",
    );
}

fn block_with_zero_timestep_split_matches<B: Backend>() {
    let fx = Fixture::<B>::read("s2v_tiny_io.safetensors");
    let m = model::<B>();
    let rope = rope().to_device::<B>(&Default::default());
    let out = m.blocks[0].forward(
        fx.tensor("block0.in"),
        &block_segments(&fx),
        &rope,
        fx.tensor("block0.context"),
    );
    assert_close(out, fx.tensor("block0.out"), ATOL, RTOL, "blocks.0");
}

fn head_matches<B: Backend>() {
    let fx = Fixture::<B>::read("s2v_tiny_io.safetensors");
    let m = model::<B>();
    let x: Tensor<B, 3> = fx.tensor("head.in");
    let e: Tensor<B, 2> = fx.tensor("head.e");
    let seg = [Segment {
        tokens: x.dims()[1],
        e: e.unsqueeze_dim::<3>(1),
    }];
    let out = m.head.forward(x, &seg);
    assert_close(out, fx.tensor("head.out"), ATOL, RTOL, "head");
}

fn whole_trunk_forward_matches_within_1e_4_relative<B: Backend>() {
    let fx = Fixture::<B>::read("s2v_tiny_io.safetensors");
    let m = model::<B>();
    let (_, t) = fx.raw("in.t");
    let input = TrunkInput {
        noisy: fx.tensor::<4>("in.noisy").unsqueeze::<5>(),
        t: f64::from(t[0]),
        context: fx.tensor::<2>("in.context").unsqueeze::<3>(),
        ref_latent: fx.tensor::<4>("in.ref").unsqueeze::<5>(),
        cond: fx.tensor::<4>("in.cond").unsqueeze::<5>(),
        audio: None,
        motion: None,
    };
    let out = m.forward_trunk(input);
    let expected: Tensor<B, 5> = fx.tensor::<4>("trunk.velocity").unsqueeze::<5>();
    let rel = rel_l2(out.clone(), expected.clone());
    eprintln!("trunk relative L2: {rel:e}");
    assert!(rel <= 1e-4, "trunk relative L2 {rel:e} > 1e-4");
    assert_close(out, expected, 1e-4, 1e-4, "trunk velocity");
}

fn audio_encoder_matches_on_a_clip<B: Backend>() {
    let fx = Fixture::<B>::read("s2v_tiny_audio_io.safetensors");
    let m = model::<B>();
    let (global, local) = m.casual_audio_encoder.encode_clip(fx.tensor("in.audio"));
    assert_close(
        global,
        fx.tensor("audio.global"),
        ATOL,
        RTOL,
        "audio encoder global",
    );
    assert_close(
        local,
        fx.tensor("audio.local"),
        ATOL,
        RTOL,
        "audio encoder local",
    );
}

fn audio_adain_and_cross_attention_match<B: Backend>() {
    let fx = Fixture::<B>::read("s2v_tiny_audio_io.safetensors");
    let m = model::<B>();
    let out = m.audio_injector.injector_adain_layers[0]
        .forward(fx.tensor("adain0.in"), fx.tensor("adain0.temb"));
    assert_close(
        out,
        fx.tensor("adain0.out"),
        ATOL,
        RTOL,
        "injector_adain_layers.0",
    );
    let out = m.audio_injector.injector[0]
        .forward_cross(fx.tensor("injector0.in"), fx.tensor("injector0.context"));
    assert_close(out, fx.tensor("injector0.out"), ATOL, RTOL, "injector.0");
}

fn whole_forward_with_audio_injection_matches_within_1e_4_relative<B: Backend>() {
    let io = Fixture::<B>::read("s2v_tiny_io.safetensors");
    let fx = Fixture::<B>::read("s2v_tiny_audio_io.safetensors");
    let m = model::<B>();
    let (_, t) = io.raw("in.t");
    let input = TrunkInput {
        noisy: io.tensor::<4>("in.noisy").unsqueeze::<5>(),
        t: f64::from(t[0]),
        context: io.tensor::<2>("in.context").unsqueeze::<3>(),
        ref_latent: io.tensor::<4>("in.ref").unsqueeze::<5>(),
        cond: io.tensor::<4>("in.cond").unsqueeze::<5>(),
        audio: Some(fx.tensor("in.audio")),
        motion: None,
    };
    let out = m.forward_trunk(input);
    let expected: Tensor<B, 5> = fx.tensor::<4>("velocity").unsqueeze::<5>();
    let without_audio: Tensor<B, 5> = io.tensor::<4>("trunk.velocity").unsqueeze::<5>();
    assert!(
        rel_l2(without_audio, expected.clone()) > 1e-2,
        "the audio must change the output, or this test proves nothing"
    );
    let rel = rel_l2(out.clone(), expected.clone());
    eprintln!("forward with audio relative L2: {rel:e}");
    assert!(rel <= 1e-4, "relative L2 {rel:e} > 1e-4");
    assert_close(out, expected, 1e-4, 1e-4, "velocity with audio");
}

fn frame_packer_matches<B: Backend>() {
    let fx = Fixture::<B>::read("s2v_tiny_full_io.safetensors");
    let m = model::<B>();
    let (tokens, _) = m
        .frame_packer
        .forward(fx.tensor::<4>("in.motion").unsqueeze::<5>());
    assert_close(
        tokens,
        fx.tensor("packed.tokens"),
        ATOL,
        RTOL,
        "frame_packer",
    );
}

fn whole_forward_with_audio_and_motion_matches_within_1e_4_relative<B: Backend>() {
    let io = Fixture::<B>::read("s2v_tiny_io.safetensors");
    let audio = Fixture::<B>::read("s2v_tiny_audio_io.safetensors");
    let fx = Fixture::<B>::read("s2v_tiny_full_io.safetensors");
    let m = model::<B>();
    let (_, t) = io.raw("in.t");
    let input = TrunkInput {
        noisy: io.tensor::<4>("in.noisy").unsqueeze::<5>(),
        t: f64::from(t[0]),
        context: io.tensor::<2>("in.context").unsqueeze::<3>(),
        ref_latent: io.tensor::<4>("in.ref").unsqueeze::<5>(),
        cond: io.tensor::<4>("in.cond").unsqueeze::<5>(),
        audio: Some(audio.tensor("in.audio")),
        motion: Some(fx.tensor::<4>("in.motion").unsqueeze::<5>()),
    };
    let out = m.forward_trunk(input);
    let expected: Tensor<B, 5> = fx.tensor::<4>("velocity").unsqueeze::<5>();
    let without_motion: Tensor<B, 5> = audio.tensor::<4>("velocity").unsqueeze::<5>();
    assert!(
        rel_l2(without_motion, expected.clone()) > 1e-2,
        "the motion tokens must change the output, or this test proves nothing"
    );
    let rel = rel_l2(out.clone(), expected.clone());
    eprintln!("full forward relative L2: {rel:e}");
    assert!(rel <= 1e-4, "relative L2 {rel:e} > 1e-4");
    assert_close(out, expected, 1e-4, 1e-4, "velocity with audio and motion");
}

fn per_frame_segments_with_equal_timesteps_equal_the_two_way_split<B: Backend>() {
    let fx = Fixture::<B>::read("s2v_tiny_io.safetensors");
    let m = model::<B>();
    let rope = rope().to_device::<B>(&Default::default());
    let two_way = block_segments(&fx);
    // The same modulation given frame by frame (3 frames of 16 tokens), then the
    // reference tokens: what Live Avatar's per-frame timesteps reduce to when equal.
    let noisy_e = two_way[0].e.clone().repeat_dim(0, 3);
    let mut per_frame = wan::causal::frame_segments(noisy_e, 16);
    per_frame.push(two_way[1].clone());
    let x: Tensor<B, 3> = fx.tensor("block0.in");
    let context: Tensor<B, 3> = fx.tensor("block0.context");
    let a = m.blocks[0].forward(x.clone(), &per_frame, &rope, context.clone());
    assert_close(a, fx.tensor("block0.out"), ATOL, RTOL, "blocks.0 per-frame");
}

common::backend_tests!(
    time_embedding_and_projection_match,
    text_embedding_pads_and_matches,
    self_attention_with_3_axis_rope_matches,
    block_with_zero_timestep_split_matches,
    head_matches,
    whole_trunk_forward_matches_within_1e_4_relative,
    audio_encoder_matches_on_a_clip,
    audio_adain_and_cross_attention_match,
    whole_forward_with_audio_injection_matches_within_1e_4_relative,
    frame_packer_matches,
    whole_forward_with_audio_and_motion_matches_within_1e_4_relative,
    per_frame_segments_with_equal_timesteps_equal_the_two_way_split,
);
