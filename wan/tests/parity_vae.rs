//! Wan 2.1 VAE layers against the reference (wan22 2.2.11, CPU f32) at a tiny config,
//! weights loaded through the same safetensors loader as the DiT.

mod common;

use burn::prelude::*;
use common::{assert_close, fixture_path, Fixture, B};
use wan::loader::load_safetensors;
use wan::vae::{NormOrConv, VaeConfig, VaeLayer, WanVae};

const ATOL: f32 = 1e-5;
const RTOL: f32 = 1e-4;

fn tiny_vae<B: Backend>() -> WanVae<B> {
    let cfg = VaeConfig {
        dim: 8,
        z_dim: 4,
        dim_mult: vec![1, 2, 2, 2],
        num_res_blocks: 2,
        temporal_downsample: vec![false, true, true],
    };
    let file = fixture_path("vae_tiny_weights.safetensors");
    let dir = file.parent().expect("fixture dir").to_path_buf();
    let (vae, report) = load_safetensors(
        WanVae::<B>::new(&cfg, &Default::default()),
        &dir,
        vec![file],
        &Default::default(),
    )
    .expect("tiny VAE weights load");
    assert!(report.tensors > 100);
    vae
}

fn residual_block_with_shortcut_matches<B: Backend>() {
    let fx = Fixture::<B>::read("vae_tiny_blocks_io.safetensors");
    let vae = tiny_vae::<B>();
    let VaeLayer::Residual(block) = &vae.encoder.downsamples[3] else {
        panic!("encoder.downsamples.3 is a residual block");
    };
    assert!(block.shortcut.is_some());
    let out = block.forward(fx.tensor("in"));
    assert_close(
        out,
        fx.tensor("residual.out"),
        ATOL,
        RTOL,
        "encoder.downsamples.3",
    );
}

fn attention_block_matches<B: Backend>() {
    let fx = Fixture::<B>::read("vae_tiny_blocks_io.safetensors");
    let vae = tiny_vae::<B>();
    let VaeLayer::Attention(block) = &vae.encoder.middle[1] else {
        panic!("encoder.middle.1 is the attention block");
    };
    let out = block.forward(fx.tensor("residual.out"));
    assert_close(
        out,
        fx.tensor("attention.out"),
        ATOL,
        RTOL,
        "encoder.middle.1",
    );
}

fn channel_rms_norm_matches<B: Backend>() {
    let fx = Fixture::<B>::read("vae_tiny_blocks_io.safetensors");
    let vae = tiny_vae::<B>();
    let Some(NormOrConv::Norm(norm)) = &vae.encoder.head[0] else {
        panic!("encoder.head.0 is an RMS norm");
    };
    let out = norm.forward(fx.tensor("residual.out"));
    assert_close(out, fx.tensor("norm.out"), ATOL, RTOL, "encoder.head.0");
}

fn chunked_decode_with_feature_cache_matches_within_1e_4_relative<B: Backend>() {
    let fx = Fixture::<B>::read("vae_tiny_decode_io.safetensors");
    let vae = tiny_vae::<B>();
    let (_, mean) = fx.raw("mean");
    let (_, std) = fx.raw("std");
    let video = vae.decode(fx.tensor("z"), &mean, &std);
    let expected: burn::tensor::Tensor<B, 5> = fx.tensor("video");
    assert_eq!(video.dims(), [1, 3, 9, 32, 32]);
    let rel = common::rel_l2(video.clone(), expected.clone());
    eprintln!("VAE decode relative L2: {rel:e}");
    assert!(rel <= 1e-4, "relative L2 {rel:e} > 1e-4");
    assert_close(video, expected, 1e-4, 1e-4, "VAE decode");
}

fn chunked_encode_with_feature_cache_matches_within_1e_4_relative<B: Backend>() {
    let fx = Fixture::<B>::read("vae_tiny_encode_io.safetensors");
    let vae = tiny_vae::<B>();
    let (_, mean) = fx.raw("mean");
    let (_, std) = fx.raw("std");
    let latents = vae.encode(fx.tensor("video"), &mean, &std);
    let expected: burn::tensor::Tensor<B, 5> = fx.tensor("latents");
    assert_eq!(latents.dims(), [1, 4, 3, 4, 4]);
    let rel = common::rel_l2(latents.clone(), expected.clone());
    eprintln!("VAE encode relative L2: {rel:e}");
    assert!(rel <= 1e-4, "relative L2 {rel:e} > 1e-4");
    assert_close(latents, expected, 1e-4, 1e-4, "VAE encode");
}

#[test]
fn pth_checkpoint_loads_like_the_release_and_decodes_the_same() {
    let cfg = VaeConfig {
        dim: 8,
        z_dim: 4,
        dim_mult: vec![1, 2, 2, 2],
        num_res_blocks: 2,
        temporal_downsample: vec![false, true, true],
    };
    let device = Default::default();
    let (vae, report) = wan::loader::load_pth(
        WanVae::<B>::new(&cfg, &device),
        &fixture_path("vae_tiny.pth"),
        &device,
    )
    .expect("a torch pickle in the release's format loads");
    assert!(report.tensors > 100);
    let fx = Fixture::<B>::read("vae_tiny_decode_io.safetensors");
    let (_, mean) = fx.raw("mean");
    let (_, std) = fx.raw("std");
    let video = vae.decode(fx.tensor("z"), &mean, &std);
    assert_close(
        video,
        fx.tensor("video"),
        1e-4,
        1e-4,
        "VAE decode from .pth",
    );
}

#[test]
fn pth_of_another_model_is_refused_naming_a_key() {
    let device = Default::default();
    let err = wan::loader::load_pth(
        WanVae::<B>::new(&VaeConfig::wan21(), &device),
        &fixture_path("t5_tiny.pth"),
        &device,
    )
    .expect_err("a T5 checkpoint is not a VAE");
    let msg = err.to_string();
    assert!(msg.contains("t5_tiny.pth"), "{msg}");
    assert!(
        msg.contains("blocks.") || msg.contains("token_embedding"),
        "{msg}"
    );
}

common::backend_tests!(
    residual_block_with_shortcut_matches,
    attention_block_matches,
    channel_rms_norm_matches,
    chunked_decode_with_feature_cache_matches_within_1e_4_relative,
    chunked_encode_with_feature_cache_matches_within_1e_4_relative,
);
