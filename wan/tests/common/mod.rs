//! Shared helpers of the wan parity tests: reading fixture tensors and comparing.
#![allow(dead_code)]

use std::path::PathBuf;

use burn::backend::NdArray;
use burn::prelude::*;
use safetensors::SafeTensors;

pub type B = NdArray<f32>;

/// Runs generic test functions `fn name<B: Backend>()` once per backend the build has, as
/// `ndarray::name` (the reference CPU backend) and, with the `tch` feature, `libtorch::name`
/// (LibTorch<f32> on the CPU device), so the model code is checked on two backends.
#[allow(unused_macros)]
macro_rules! backend_tests {
    ($($name:ident),* $(,)?) => {
        mod ndarray {
            $(
                #[test]
                fn $name() {
                    super::$name::<burn::backend::NdArray<f32>>()
                }
            )*
        }
        #[cfg(feature = "tch")]
        mod libtorch {
            $(
                #[test]
                fn $name() {
                    super::$name::<wan::libtorch::LibTorch<f32>>()
                }
            )*
        }
    };
}
#[allow(unused_imports)]
pub(crate) use backend_tests;

pub fn fixture_path(name: &str) -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("tests")
        .join("fixtures")
        .join(name)
}

/// The tensors of one fixture file, read into memory; `tensor` makes them on backend `T`'s
/// default device.
pub struct Fixture<T: Backend = B> {
    bytes: Vec<u8>,
    name: String,
    backend: std::marker::PhantomData<T>,
}

impl Fixture<B> {
    /// The fixture on the reference backend ([`B`]).
    pub fn open(name: &str) -> Self {
        Fixture::read(name)
    }
}

impl<T: Backend> Fixture<T> {
    /// The fixture on backend `T` (`Fixture::<T>::read`; [`Fixture::open`] for NdArray).
    pub fn read(name: &str) -> Self {
        let path = fixture_path(name);
        let bytes = std::fs::read(&path)
            .unwrap_or_else(|e| panic!("fixture {} must be readable: {e}", path.display()));
        Self {
            bytes,
            name: name.to_string(),
            backend: std::marker::PhantomData,
        }
    }

    /// Shape and f32 values of tensor `key`.
    pub fn raw(&self, key: &str) -> (Vec<usize>, Vec<f32>) {
        let st = SafeTensors::deserialize(&self.bytes)
            .unwrap_or_else(|e| panic!("fixture {} is not safetensors: {e}", self.name));
        let view = st
            .tensor(key)
            .unwrap_or_else(|e| panic!("fixture {} has no `{key}`: {e}", self.name));
        assert_eq!(view.dtype(), safetensors::Dtype::F32, "fixtures are f32");
        let values = view
            .data()
            .chunks_exact(4)
            .map(|c| f32::from_le_bytes([c[0], c[1], c[2], c[3]]))
            .collect();
        (view.shape().to_vec(), values)
    }

    pub fn tensor<const D: usize>(&self, key: &str) -> Tensor<T, D> {
        let (shape, values) = self.raw(key);
        assert_eq!(shape.len(), D, "`{key}` has rank {}", shape.len());
        Tensor::from_data(TensorData::new(values, shape), &Default::default())
    }
}

/// Largest |a - e| and whether every element is within `atol + rtol * |e|`.
pub fn assert_close<T: Backend, const D: usize>(
    actual: Tensor<T, D>,
    expected: Tensor<T, D>,
    atol: f32,
    rtol: f32,
    what: &str,
) {
    assert_eq!(actual.dims(), expected.dims(), "{what}: shapes differ");
    let a: Vec<f32> = actual.into_data().to_vec().expect("f32 data");
    let e: Vec<f32> = expected.into_data().to_vec().expect("f32 data");
    let mut worst = (0.0f32, 0usize);
    for (i, (x, y)) in a.iter().zip(&e).enumerate() {
        assert!(x.is_finite(), "{what}: element {i} is {x}");
        let d = (x - y).abs();
        let allowed = atol + rtol * y.abs();
        if d - allowed > worst.0 - (atol + rtol * e[worst.1].abs()) {
            worst = (d, i);
        }
        assert!(
            d <= allowed,
            "{what}: element {i} is {x}, reference {y} (|Δ| {d:e} > {allowed:e})"
        );
    }
    let scale = e.iter().fold(0.0f32, |m, v| m.max(v.abs()));
    assert!(
        scale > 1e-3,
        "{what}: reference is all near zero, the check would be empty"
    );
    eprintln!(
        "{what}: worst |Δ| {:e} at {} (max |ref| {scale})",
        worst.0, worst.1
    );
}

/// Relative L2 distance `‖a − e‖ / ‖e‖`.
pub fn rel_l2<T: Backend, const D: usize>(actual: Tensor<T, D>, expected: Tensor<T, D>) -> f64 {
    let a: Vec<f32> = actual.into_data().to_vec().expect("f32 data");
    let e: Vec<f32> = expected.into_data().to_vec().expect("f32 data");
    let num: f64 = a
        .iter()
        .zip(&e)
        .map(|(x, y)| f64::from(x - y).powi(2))
        .sum();
    let den: f64 = e.iter().map(|y| f64::from(*y).powi(2)).sum();
    (num / den).sqrt()
}

/// The tiny S2V DiT with the reference's fixture weights.
pub fn tiny_model() -> wan::WanS2v<B> {
    tiny_model_on::<B>()
}

/// [`tiny_model`] on backend `T`.
pub fn tiny_model_on<T: Backend>() -> wan::WanS2v<T> {
    let m = wan::WanS2v::<T>::new(&wan::S2vConfig::tiny(), &Default::default());
    wan::loader::load_s2v_file(m, &fixture_path("s2v_tiny_weights.safetensors"))
        .expect("tiny reference weights load")
        .0
}

/// Deterministic pseudo-random values in [-1, 1) (64-bit LCG), independent of any
/// backend RNG.
pub fn noise<const D: usize>(seed: u64, shape: [usize; D]) -> Tensor<B, D> {
    noise_on::<B, D>(seed, shape)
}

/// [`noise`] on backend `T`.
pub fn noise_on<T: Backend, const D: usize>(seed: u64, shape: [usize; D]) -> Tensor<T, D> {
    let n: usize = shape.iter().product();
    let mut s = seed
        .wrapping_mul(6364136223846793005)
        .wrapping_add(1442695040888963407);
    let values: Vec<f32> = (0..n)
        .map(|_| {
            s = s
                .wrapping_mul(6364136223846793005)
                .wrapping_add(1442695040888963407);
            ((s >> 40) as f32 / (1u64 << 23) as f32) - 1.0
        })
        .collect();
    Tensor::from_data(TensorData::new(values, shape), &Default::default())
}

/// The bits of every value of a 5-D f32 tensor, in order: equal only if bit-identical.
pub fn bits<T: Backend>(t: Tensor<T, 5>) -> Vec<u32> {
    t.into_data()
        .to_vec::<f32>()
        .expect("f32 tensor")
        .iter()
        .map(|v| v.to_bits())
        .collect()
}

/// Two saved carries hold the same tensors (bit for bit) and metadata. (The header's
/// metadata order is not fixed by the safetensors crate, so bytes are not compared.)
pub fn same_carry_bytes(a: &[u8], b: &[u8]) -> bool {
    let (_, ma) = SafeTensors::read_metadata(a).expect("carry a");
    let (_, mb) = SafeTensors::read_metadata(b).expect("carry b");
    let (sa, sb) = (
        SafeTensors::deserialize(a).expect("carry a"),
        SafeTensors::deserialize(b).expect("carry b"),
    );
    let mut na = sa.names();
    let mut nb = sb.names();
    na.sort();
    nb.sort();
    ma.metadata() == mb.metadata()
        && na == nb
        && na.iter().all(|n| {
            let (x, y) = (sa.tensor(n).expect("a"), sb.tensor(n).expect("b"));
            x.shape() == y.shape() && x.data() == y.data()
        })
}
