//! Burn tensors are values: an op on a view of `x` (a transpose, a permutation, a reshape, a
//! slice) never changes `x`, whatever the backend does in place underneath. The model code
//! relies on it everywhere (`x.clone().permute(..)` and then arithmetic). burn-tch 0.21.0
//! broke it for `swap_dims` and `permute` (the view got a storage reference of its own, so a
//! later in-place op wrote into `x`); the workspace's copy of burn-tch fixes that
//! (third_party/burn-tch/README.reelspool.md), and this test holds it on both backends.

mod common;

use burn::prelude::*;
use burn::tensor::TensorData;

fn input<B: Backend>() -> (Tensor<B, 3>, Vec<f32>) {
    let values: Vec<f32> = (0..24).map(|i| 1.0 + i as f32 * 0.25).collect();
    let x = Tensor::from_data(
        TensorData::new(values.clone(), [2, 3, 4]),
        &Default::default(),
    );
    (x, values)
}

fn host<B: Backend, const D: usize>(t: Tensor<B, D>) -> Vec<f32> {
    t.into_data().convert::<f32>().to_vec().expect("f32 values")
}

/// Applies `view` to a clone of `x`, then element-wise ops (which a backend may run in place
/// on a tensor it believes it owns alone), and checks `x` kept its values.
fn check<B: Backend, const D: usize>(what: &str, view: impl Fn(Tensor<B, 3>) -> Tensor<B, D>) {
    let (x, values) = input::<B>();
    let y = view(x.clone());
    let y = (y.sqrt() * 3.0 + 1.0).exp();
    let z = view(x.clone()) + y.clone();
    drop((y, z));
    assert_eq!(
        host(x),
        values,
        "`{what}` of a clone changed the original on {}",
        B::name(&Default::default())
    );
}

fn ops_on_views_leave_the_original_unchanged<B: Backend>() {
    check::<B, 3>("swap_dims", |x| x.swap_dims(0, 2));
    check::<B, 3>("permute", |x| x.permute([2, 0, 1]));
    check::<B, 3>("permute then reshape", |x| {
        x.permute([1, 0, 2]).reshape([3, 2, 4])
    });
    check::<B, 2>("reshape", |x| x.reshape([6, 4]));
    check::<B, 3>("narrow", |x| x.narrow(2, 1, 2));
    check::<B, 4>("unsqueeze", |x| x.unsqueeze_dim::<4>(1));
    check::<B, 3>("transpose of a narrow", |x| {
        x.narrow(1, 1, 2).swap_dims(1, 2)
    });
}

common::backend_tests!(ops_on_views_leave_the_original_unchanged,);
