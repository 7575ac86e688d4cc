//! The flow-matching schedule against diffusers' scheduler, and the LoRA merge
//! against the unmerged LoRA forward it must equal.

mod common;

use burn::prelude::*;
use burn::tensor::Distribution;
use common::{assert_close, Fixture, B};
use wan::lora::{lora_scale, merge_into, merge_lora_file, LIVE_AVATAR_ALPHA};
use wan::nn::TorchLinear;
use wan::sampler::FlowSchedule;
use wan::{S2vConfig, WanS2v};

#[test]
fn four_steps_shift_3_equal_diffusers_bit_for_bit() {
    let fx = Fixture::open("sampler_4steps_shift3.safetensors");
    let (_, timesteps) = fx.raw("timesteps");
    let (_, sigmas) = fx.raw("sigmas");
    let ours = FlowSchedule::new(4, 3.0);
    assert_eq!(ours.timesteps, timesteps);
    assert_eq!(ours.sigmas, sigmas);
}

#[test]
fn euler_step_moves_by_sigma_difference_times_velocity() {
    let s = FlowSchedule::new(4, 3.0);
    let device = Default::default();
    let x = Tensor::<B, 1>::from_floats([1.0, -2.0], &device);
    let v = Tensor::<B, 1>::from_floats([0.5, 4.0], &device);
    let out: Vec<f32> = s.step(0, x, v).into_data().to_vec().expect("f32");
    let dt = s.sigmas[1] - s.sigmas[0];
    assert_eq!(out, vec![1.0 + dt * 0.5, -2.0 + dt * 4.0]);
}

#[test]
fn merged_lora_equals_base_plus_scaled_low_rank_path() {
    let device = Default::default();
    let (d_in, d_out, rank) = (24, 16, 4);
    let linear = TorchLinear::<B>::new(d_in, d_out, true, &device);
    let a = Tensor::<B, 2>::random([rank, d_in], Distribution::Normal(0.0, 0.3), &device);
    let b = Tensor::<B, 2>::random([d_out, rank], Distribution::Normal(0.0, 0.3), &device);
    let x = Tensor::<B, 3>::random([2, 5, d_in], Distribution::Normal(0.0, 1.0), &device);
    let scale = lora_scale(64.0, 128);
    assert_eq!(scale, 0.5);

    // peft's unmerged forward: base(x) + scale * B(A(x)).
    let low_rank = x
        .clone()
        .reshape([10, d_in])
        .matmul(a.clone().transpose())
        .matmul(b.clone().transpose())
        .reshape([2, 5, d_out])
        * scale;
    let expected = linear.forward(x.clone()) + low_rank;

    let mut merged = linear;
    merge_into(&mut merged, a, b, scale).expect("shapes fit");
    assert_close(merged.forward(x), expected, 1e-5, 1e-5, "merged LoRA");
}

#[test]
fn lora_with_wrong_shapes_is_refused() {
    let device = Default::default();
    let mut linear = TorchLinear::<B>::new(8, 8, true, &device);
    let a = Tensor::<B, 2>::zeros([2, 7], &device);
    let b = Tensor::<B, 2>::zeros([8, 2], &device);
    let err = merge_into(&mut linear, a, b, 0.5).expect_err("lora_A has the wrong input width");
    assert!(err.to_string().contains("lora_A [2, 7]"), "{err}");
}

/// Writes a peft-style LoRA file with the given (key, shape) entries, seeded values.
fn write_lora(path: &std::path::Path, entries: &[(&str, [usize; 2])]) -> Vec<Vec<f32>> {
    let mut values = Vec::new();
    let mut bytes = Vec::new();
    for (i, (_, shape)) in entries.iter().enumerate() {
        let n = shape[0] * shape[1];
        let v: Vec<f32> = (0..n)
            .map(|j| (((i * 7919 + j * 104729) % 201) as f32 - 100.0) / 400.0)
            .collect();
        bytes.push(v.iter().flat_map(|x| x.to_le_bytes()).collect::<Vec<u8>>());
        values.push(v);
    }
    let views: Vec<(String, safetensors::tensor::TensorView<'_>)> = entries
        .iter()
        .zip(&bytes)
        .map(|((k, s), b)| {
            let view = safetensors::tensor::TensorView::new(safetensors::Dtype::F32, s.to_vec(), b)
                .expect("consistent tensor");
            (k.to_string(), view)
        })
        .collect();
    std::fs::write(
        path,
        safetensors::serialize(views, None).expect("serialize"),
    )
    .expect("write");
    values
}

#[test]
fn lora_file_merges_into_blocks_and_injectors_by_peft_key() {
    let dir = tempfile::tempdir().expect("tempdir");
    let path = dir.path().join("lora.safetensors");
    let rank = 2;
    let entries = [
        (
            "base_model.model.blocks.1.self_attn.q.lora_A.default.weight",
            [rank, 64],
        ),
        (
            "base_model.model.blocks.1.self_attn.q.lora_B.default.weight",
            [64, rank],
        ),
        ("blocks.3.ffn.2.lora_A.weight", [rank, 128]),
        ("blocks.3.ffn.2.lora_B.weight", [64, rank]),
        ("audio_injector.injector.2.o.lora_A.weight", [rank, 64]),
        ("audio_injector.injector.2.o.lora_B.weight", [64, rank]),
    ];
    let values = write_lora(&path, &entries);
    let device = Default::default();
    let base = WanS2v::<B>::new(&S2vConfig::tiny(), &device);
    let before = [
        base.blocks[1].self_attn.q.weight.val(),
        base.blocks[3].ffn[2].as_ref().expect("ffn.2").weight.val(),
        base.audio_injector.injector[2].o.weight.val(),
    ];
    let untouched = base.blocks[1].self_attn.k.weight.val();
    let (model, merged) = merge_lora_file(base, &path, LIVE_AVATAR_ALPHA).expect("merge");
    assert_eq!(merged, 3);
    let after = [
        model.blocks[1].self_attn.q.weight.val(),
        model.blocks[3].ffn[2].as_ref().expect("ffn.2").weight.val(),
        model.audio_injector.injector[2].o.weight.val(),
    ];
    let scale = (LIVE_AVATAR_ALPHA / rank as f64) as f32;
    for (i, (w0, w1)) in before.into_iter().zip(after).enumerate() {
        let [out, d_in] = w0.dims();
        let a = &values[2 * i];
        let b = &values[2 * i + 1];
        let w0: Vec<f32> = w0.into_data().to_vec().expect("f32");
        let w1: Vec<f32> = w1.into_data().to_vec().expect("f32");
        for r in 0..out {
            for c in 0..d_in {
                let delta: f32 = (0..rank).map(|k| b[r * rank + k] * a[k * d_in + c]).sum();
                let want = w0[r * d_in + c] + scale * delta;
                let got = w1[r * d_in + c];
                assert!(
                    (got - want).abs() <= 1e-6,
                    "{}: [{r},{c}] {got} vs {want}",
                    entries[2 * i].0
                );
            }
        }
    }
    let k: Vec<f32> = model.blocks[1]
        .self_attn
        .k
        .weight
        .val()
        .into_data()
        .to_vec()
        .expect("f32");
    assert_eq!(
        k,
        untouched.into_data().to_vec::<f32>().expect("f32"),
        "only adapted layers change"
    );
}

#[test]
fn lora_file_errors_name_the_key() {
    let dir = tempfile::tempdir().expect("tempdir");
    let device = Default::default();

    let path = dir.path().join("half.safetensors");
    write_lora(&path, &[("blocks.0.self_attn.v.lora_A.weight", [2, 64])]);
    let err = merge_lora_file(WanS2v::<B>::new(&S2vConfig::tiny(), &device), &path, 64.0)
        .expect_err("lora_B missing");
    assert!(
        err.to_string()
            .contains("blocks.0.self_attn.v.lora_A.weight"),
        "{err}"
    );
    assert!(err.to_string().contains("half.safetensors"), "{err}");

    let path = dir.path().join("norm.safetensors");
    write_lora(
        &path,
        &[
            ("blocks.0.norm3.lora_A.weight", [2, 64]),
            ("blocks.0.norm3.lora_B.weight", [64, 2]),
        ],
    );
    let err = merge_lora_file(WanS2v::<B>::new(&S2vConfig::tiny(), &device), &path, 64.0)
        .expect_err("norm3 is not adaptable");
    assert!(err.to_string().contains("blocks.0.norm3"), "{err}");
}
