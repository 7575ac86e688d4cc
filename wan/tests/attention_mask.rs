//! Masked attention (`wan::attention::sdpa_masked`) means the same on every backend: a key
//! whose mask entry is `true` is hidden from that query. Checked against attention computed
//! on the host in f64, on NdArray and (feature `tch`) on LibTorch, where burn-tch 0.21 hands a
//! boolean mask to PyTorch's SDPA with the opposite meaning.

mod common;

use burn::prelude::*;
use burn::tensor::TensorData;
use wan::attention::{sdpa, sdpa_masked};

const B_: usize = 2;
const H: usize = 3;
const LQ: usize = 5;
const LK: usize = 7;
const D: usize = 8;

/// Deterministic values in [-1, 1) from `seed`.
fn values(seed: u64, n: usize) -> Vec<f32> {
    let mut s = seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1;
    (0..n)
        .map(|_| {
            s ^= s << 13;
            s ^= s >> 7;
            s ^= s << 17;
            ((s >> 40) as f32 / (1u64 << 23) as f32) - 1.0
        })
        .collect()
}

/// `hidden[b][h][i][j]`: key j hidden from query i, a fixed pattern in which every query
/// keeps at least one key and hides at least one.
fn hidden(b: usize, h: usize, i: usize, j: usize) -> bool {
    j != (i + b + h) % LK && (i * 3 + j * 5 + b + 2 * h).is_multiple_of(3) || j > i + 3
}

/// Attention on the host in f64, `[b, lq, h, d]` layout in and `[b, lq, h*d]` out, hidden keys
/// left out of the softmax.
fn reference(q: &[f32], k: &[f32], v: &[f32], masked: bool) -> Vec<f32> {
    let at = |x: &[f32], b: usize, l: usize, len: usize, h: usize, e: usize| {
        f64::from(x[((b * len + l) * H + h) * D + e])
    };
    let scale = 1.0 / (D as f64).sqrt();
    let mut out = vec![0f32; B_ * LQ * H * D];
    for b in 0..B_ {
        for h in 0..H {
            for i in 0..LQ {
                let keys: Vec<usize> = (0..LK)
                    .filter(|&j| !(masked && hidden(b, h, i, j)))
                    .collect();
                let scores: Vec<f64> = keys
                    .iter()
                    .map(|&j| {
                        (0..D)
                            .map(|e| at(q, b, i, LQ, h, e) * at(k, b, j, LK, h, e))
                            .sum::<f64>()
                            * scale
                    })
                    .collect();
                let max = scores.iter().cloned().fold(f64::MIN, f64::max);
                let weights: Vec<f64> = scores.iter().map(|s| (s - max).exp()).collect();
                let total: f64 = weights.iter().sum();
                for e in 0..D {
                    let mixed: f64 = keys
                        .iter()
                        .zip(&weights)
                        .map(|(&j, w)| w / total * at(v, b, j, LK, h, e))
                        .sum();
                    out[((b * LQ + i) * H + h) * D + e] = mixed as f32;
                }
            }
        }
    }
    out
}

fn max_abs_diff(a: &[f32], b: &[f32]) -> f32 {
    assert_eq!(a.len(), b.len());
    a.iter()
        .zip(b)
        .map(|(x, y)| (x - y).abs())
        .fold(0.0, f32::max)
}

struct Inputs {
    q: Vec<f32>,
    k: Vec<f32>,
    v: Vec<f32>,
}

impl Inputs {
    fn new() -> Self {
        Self {
            q: values(1, B_ * LQ * H * D),
            k: values(2, B_ * LK * H * D),
            v: values(3, B_ * LK * H * D),
        }
    }

    fn tensors<B: Backend>(&self) -> [Tensor<B, 4>; 3] {
        let device = Default::default();
        let t = |x: &Vec<f32>, l: usize| {
            Tensor::from_data(TensorData::new(x.clone(), [B_, l, H, D]), &device)
        };
        [t(&self.q, LQ), t(&self.k, LK), t(&self.v, LK)]
    }
}

fn mask<B: Backend>() -> Tensor<B, 4, Bool> {
    let mut cells = Vec::with_capacity(B_ * H * LQ * LK);
    for b in 0..B_ {
        for h in 0..H {
            for i in 0..LQ {
                for j in 0..LK {
                    cells.push(hidden(b, h, i, j));
                }
            }
        }
    }
    Tensor::from_data(TensorData::new(cells, [B_, H, LQ, LK]), &Default::default())
}

fn host(t: Tensor<impl Backend, 3>) -> Vec<f32> {
    t.into_data().convert::<f32>().to_vec().expect("f32 values")
}

fn masked_attention_hides_the_keys_marked_true<B: Backend>() {
    let inputs = Inputs::new();
    let [q, k, v] = inputs.tensors::<B>();
    let got = host(sdpa_masked(q, k, v, mask::<B>()));
    let masked = reference(&inputs.q, &inputs.k, &inputs.v, true);
    let unmasked = reference(&inputs.q, &inputs.k, &inputs.v, false);
    // The mask must matter at all for the check to mean anything.
    assert!(max_abs_diff(&masked, &unmasked) > 0.1);
    let diff = max_abs_diff(&got, &masked);
    assert!(
        diff < 1e-5,
        "masked attention on {} is off by {diff} (hidden keys attended?)",
        B::name(&Default::default())
    );
}

fn a_mask_broadcast_over_batch_and_heads_applies_to_each<B: Backend>() {
    let inputs = Inputs::new();
    let [q, k, v] = inputs.tensors::<B>();
    // Query i sees keys 0..=i only (a causal pattern), the same for every batch and head.
    let cells: Vec<bool> = (0..LQ).flat_map(|i| (0..LK).map(move |j| j > i)).collect();
    let causal = Tensor::<B, 4, Bool>::from_data(
        TensorData::new(cells, [1, 1, LQ, LK]),
        &Default::default(),
    );
    let got = host(sdpa_masked(q.clone(), k.clone(), v.clone(), causal));
    // Query 0 sees key 0 alone: its output is key 0's value, in every batch and head.
    for b in 0..B_ {
        for h in 0..H {
            for e in 0..D {
                let out = got[((b * LQ) * H + h) * D + e];
                let value = inputs.v[((b * LK) * H + h) * D + e];
                assert!(
                    (out - value).abs() < 1e-6,
                    "batch {b} head {h}: {out} vs {value}"
                );
            }
        }
    }
    // Nothing hidden: the same as unmasked attention.
    let none = Tensor::<B, 4, Bool>::from_data(
        TensorData::new(vec![false; LQ * LK], [1, 1, LQ, LK]),
        &Default::default(),
    );
    let open = host(sdpa_masked(q.clone(), k.clone(), v.clone(), none));
    assert!(max_abs_diff(&open, &host(sdpa(q, k, v))) < 1e-6);
}

fn unmasked_attention_matches_the_host_reference<B: Backend>() {
    let inputs = Inputs::new();
    let [q, k, v] = inputs.tensors::<B>();
    let got = host(sdpa(q, k, v));
    let expected = reference(&inputs.q, &inputs.k, &inputs.v, false);
    assert!(max_abs_diff(&got, &expected) < 1e-5);
}

common::backend_tests!(
    masked_attention_hides_the_keys_marked_true,
    a_mask_broadcast_over_batch_and_heads_applies_to_each,
    unmasked_attention_matches_the_host_reference,
);
