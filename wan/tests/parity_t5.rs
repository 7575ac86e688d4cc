//! The T5 encoder (Wan's umT5 packaging) against the reference at a tiny config.

mod common;

use burn::prelude::*;
use common::{assert_close, fixture_path, Fixture};
use wan::loader::load_safetensors;
use wan::t5::{T5Config, T5Encoder};

fn tiny_t5_encoder_with_padding_mask_matches<B: Backend>() {
    let cfg = T5Config {
        vocab: 64,
        dim: 32,
        dim_attn: 32,
        dim_ffn: 64,
        num_heads: 4,
        num_layers: 2,
        num_buckets: 32,
    };
    let file = fixture_path("t5_tiny_weights.safetensors");
    let dir = file.parent().expect("fixture dir").to_path_buf();
    let device = Default::default();
    let (t5, _) = load_safetensors(
        T5Encoder::<B>::new(&cfg, &device),
        &dir,
        vec![file],
        &device,
    )
    .expect("tiny T5 weights load");
    let fx = Fixture::<B>::read("t5_tiny_io.safetensors");
    let ids: Vec<i64> = fx.raw("ids").1.iter().map(|&v| v as i64).collect();
    let valid: Vec<bool> = fx.raw("mask").1.iter().map(|&v| v > 0.5).collect();
    assert!(valid.iter().any(|v| !v), "the fixture has padding to mask");
    let out = t5.forward(&ids, &valid);
    assert_close(out, fx.tensor("out"), 1e-5, 1e-4, "T5 encoder");
}

fn t5_pth_checkpoint_loads_and_matches<B: Backend>() {
    let cfg = T5Config {
        vocab: 64,
        dim: 32,
        dim_attn: 32,
        dim_ffn: 64,
        num_heads: 4,
        num_layers: 2,
        num_buckets: 32,
    };
    let device = Default::default();
    let (t5, _) = wan::loader::load_pth(
        T5Encoder::<B>::new(&cfg, &device),
        &fixture_path("t5_tiny.pth"),
        &device,
    )
    .expect("a torch pickle in the release's format loads");
    let fx = Fixture::<B>::read("t5_tiny_io.safetensors");
    let ids: Vec<i64> = fx.raw("ids").1.iter().map(|&v| v as i64).collect();
    let valid: Vec<bool> = fx.raw("mask").1.iter().map(|&v| v > 0.5).collect();
    assert_close(
        t5.forward(&ids, &valid),
        fx.tensor("out"),
        1e-5,
        1e-4,
        "T5 from .pth",
    );
}

common::backend_tests!(
    tiny_t5_encoder_with_padding_mask_matches,
    t5_pth_checkpoint_loads_and_matches,
);
