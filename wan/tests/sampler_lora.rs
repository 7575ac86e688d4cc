//! The flow-matching schedule against diffusers' scheduler, and the LoRA merge
//! against the unmerged LoRA forward it must equal.

mod common;

use burn::prelude::*;
use burn::tensor::Distribution;
use common::{assert_close, Fixture, B};
use wan::lora::{lora_scale, merge_into};
use wan::nn::TorchLinear;
use wan::sampler::FlowSchedule;

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

    let merged = merge_into(linear, a, b, scale).expect("shapes fit");
    assert_close(merged.forward(x), expected, 1e-5, 1e-5, "merged LoRA");
}

#[test]
fn lora_with_wrong_shapes_is_refused() {
    let device = Default::default();
    let linear = TorchLinear::<B>::new(8, 8, true, &device);
    let a = Tensor::<B, 2>::zeros([2, 7], &device);
    let b = Tensor::<B, 2>::zeros([8, 2], &device);
    let err = merge_into(linear, a, b, 0.5).expect_err("lora_A has the wrong input width");
    assert!(err.to_string().contains("lora_A [2, 7]"), "{err}");
}
