//! fp8 weight storage for the DiT's linear layers: E4M3 codes with one scale per tensor,
//! dequantized on the device right before the matmul (weight-only: the matmul itself runs
//! in the float dtype).
//!
//! Burn 0.21's own quantization does not fit: its `QuantValue::E4M3` per-tensor scheme is
//! `unimplemented!` on NdArray (`quantize` and `from_data` both panic for it outside Burn's
//! own test feature), and on cubecl a quantized tensor goes through Burn's quantized-op
//! dispatch rather than the plain float matmul the rest of the model runs. So the codes are
//! stored here as a `u8` integer tensor, with a 256-entry table holding `decode(code) ·
//! scale` in the float dtype; dequantizing is one gather (`select`) of the table by the
//! codes, the same operation on every backend, so a layer gives the same bits whether its
//! block is resident or streamed.
//!
//! Which layers: every `nn.Linear` of the DiT except the ones Live Avatar's `--fp8` keeps in
//! full precision (`text_embedding`, `time_embedding`, `time_projection`, `head.head` and
//! the audio encoder's `casual_audio_encoder.encoder.final_linear`, [`FULL_PRECISION`]).
//! Biases, norms, modulation tables and convolutions stay in the float dtype. The original
//! also quantizes the activations and multiplies in fp8 (`torch._scaled_mm`); here only the
//! weights are fp8, so results differ from the original's fp8 run by that activation
//! rounding (see `wan/README.md`).

use burn::module::{Module, Param, ParamId};
use burn::prelude::*;
use burn::tensor::{DType, TensorCreationOptions};

/// Largest finite E4M3 value (`S.1111.110`).
pub const E4M3_MAX: f32 = 448.0;

/// Checkpoint module paths (prefixes) whose linear layers stay in full precision under fp8,
/// as in Live Avatar's `fp8_linear`.
pub const FULL_PRECISION: [&str; 5] = [
    "text_embedding",
    "time_embedding",
    "time_projection",
    "head.head",
    "casual_audio_encoder.encoder.final_linear",
];

/// How the DiT's linear weights are stored on the device and in host memory.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default)]
pub enum Precision {
    /// The backend's float dtype (bf16 for a release on a GPU; the name says what placement
    /// plans for).
    #[default]
    Bf16,
    /// E4M3 codes plus a per-tensor scale for the DiT's linear layers ([`FULL_PRECISION`]
    /// excepted): half the bytes of bf16.
    Fp8,
}

impl Precision {
    pub fn name(self) -> &'static str {
        match self {
            Precision::Bf16 => "bf16",
            Precision::Fp8 => "fp8",
        }
    }
}

impl std::fmt::Display for Precision {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.name())
    }
}

/// Whether the linear layer at checkpoint module path `path` (`blocks.3.self_attn.q`,
/// `audio_injector.injector_adain_layers.0.linear`, ...) is stored as fp8.
pub fn is_fp8_target(path: &str) -> bool {
    !FULL_PRECISION
        .iter()
        .any(|p| path == *p || path.starts_with(&format!("{p}.")))
}

/// E4M3 (the `float8_e4m3fn` variant: no infinities, NaN only at `S.1111.111`) of `x`,
/// rounded to nearest with ties to even; magnitudes above [`E4M3_MAX`] (and infinities)
/// saturate to ±448; NaN becomes `0x7F`.
pub fn e4m3_encode(x: f32) -> u8 {
    if x.is_nan() {
        return 0x7F;
    }
    let sign: u8 = if x.is_sign_negative() { 0x80 } else { 0 };
    let a = x.abs();
    if a >= E4M3_MAX {
        return sign | 0x7E;
    }
    // Below the smallest normal (2^-6): multiples of 2^-9 (exact scaling by a power of two).
    if a < 2f32.powi(-6) {
        let m = (a * 512.0).round_ties_even() as u8; // 0..=8; 8 is the smallest normal
        return sign | m;
    }
    let bits = a.to_bits();
    let mut exp = ((bits >> 23) & 0xFF) as i32 - 127; // -6..=8
    let frac = bits & 0x7F_FFFF;
    let mut mant = frac >> 20;
    let rest = frac & 0xF_FFFF;
    const HALF: u32 = 0x8_0000;
    if rest > HALF || (rest == HALF && mant & 1 == 1) {
        mant += 1;
        if mant == 8 {
            mant = 0;
            exp += 1;
        }
    }
    let code = (((exp + 7) as u32) << 3 | mant) as u8;
    // 448 < a rounds past the largest finite value only at a ≥ 464, caught above.
    sign | code.min(0x7E)
}

/// The value of an E4M3 code (`0x7F` and `0xFF` are NaN).
pub fn e4m3_decode(code: u8) -> f32 {
    let sign = if code & 0x80 != 0 { -1.0 } else { 1.0 };
    let exp = i32::from((code >> 3) & 0x0F);
    let mant = f32::from(code & 0x07);
    if exp == 0x0F && code & 0x07 == 0x07 {
        return f32::NAN;
    }
    let magnitude = if exp == 0 {
        mant * 2f32.powi(-9)
    } else {
        (8.0 + mant) * 2f32.powi(exp - 10)
    };
    sign * magnitude
}

/// Per-tensor quantization: `scale = max|v| / 448` (1 for an all-zero tensor), codes of
/// `v / scale`. Dequantized values are `decode(code) · scale`.
pub fn quantize_values(values: &[f32]) -> (Vec<u8>, f32) {
    let amax = values
        .iter()
        .filter(|v| v.is_finite())
        .fold(0f32, |m, v| m.max(v.abs()));
    let scale = if amax > 0.0 { amax / E4M3_MAX } else { 1.0 };
    let codes = values.iter().map(|v| e4m3_encode(v / scale)).collect();
    (codes, scale)
}

/// `decode(i) · scale` for every code (NaN codes, never written, map to 0).
pub fn scaled_table(scale: f32) -> Vec<f32> {
    (0..=255u8)
        .map(|c| {
            let v = e4m3_decode(c);
            if v.is_nan() {
                0.0
            } else {
                v * scale
            }
        })
        .collect()
}

/// An fp8 linear weight on the device: E4M3 codes and their dequantization table.
#[derive(Module, Debug)]
pub struct Fp8Weight<B: Backend> {
    /// E4M3 codes `[out, in]`, stored as `u8`.
    pub codes: Param<Tensor<B, 2, Int>>,
    /// `[256]`: `decode(code) · scale` in the float dtype.
    pub table: Param<Tensor<B, 1>>,
}

impl<B: Backend> Fp8Weight<B> {
    /// Quantizes `values` (`[out, in]`, row-major) and puts codes and table on `device`.
    pub fn from_values(values: &[f32], shape: [usize; 2], device: &B::Device) -> Self {
        let (codes, scale) = quantize_values(values);
        Self::from_codes(codes, scale, shape, device)
    }

    /// Codes of `shape` with their `scale` onto `device` (one byte per code crosses).
    pub fn from_codes(codes: Vec<u8>, scale: f32, shape: [usize; 2], device: &B::Device) -> Self {
        let data = TensorData::new(codes, shape);
        let codes = Tensor::<B, 2, Int>::from_data(
            data,
            TensorCreationOptions::new(device.clone()).with_dtype(DType::U8),
        );
        let table = Tensor::<B, 1>::from_data(TensorData::new(scaled_table(scale), [256]), device);
        Self {
            codes: Param::initialized(ParamId::new(), codes),
            table: Param::initialized(ParamId::new(), table),
        }
    }

    /// Quantizes a float weight (read back to the host, quantized there, codes uploaded).
    pub fn from_tensor(weight: Tensor<B, 2>) -> Self {
        let device = weight.device();
        let [o, i] = weight.dims();
        let values: Vec<f32> = weight
            .into_data()
            .convert::<f32>()
            .to_vec()
            .expect("a float tensor converted to f32 reads back as f32");
        Self::from_values(&values, [o, i], &device)
    }

    /// A skeleton of `[out, in]` whose parameters are not allocated (filled by a load or an
    /// upload of the same structure).
    pub fn lazy(shape: [usize; 2], device: &B::Device) -> Self {
        let codes = Param::uninitialized(
            ParamId::new(),
            move |d: &B::Device, _| {
                Tensor::<B, 2, Int>::zeros(
                    shape,
                    TensorCreationOptions::new(d.clone()).with_dtype(DType::U8),
                )
            },
            device.clone(),
            false,
            shape.into(),
        );
        let table = Param::uninitialized(
            ParamId::new(),
            |d: &B::Device, _| Tensor::<B, 1>::zeros([256], d),
            device.clone(),
            false,
            [256].into(),
        );
        Self { codes, table }
    }

    /// `[out, in]` without touching the parameters.
    pub fn shape(&self) -> [usize; 2] {
        let s = self.codes.lazy_shape();
        [s[0], s[1]]
    }

    /// The float weight `[out, in]`: the table gathered by the codes.
    pub fn dequantize(&self) -> Tensor<B, 2> {
        let codes = self.codes.val();
        let [o, i] = codes.dims();
        self.table
            .val()
            .select(0, codes.reshape([o * i]))
            .reshape([o, i])
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use burn::backend::NdArray;

    #[test]
    fn known_codes_decode_to_their_values() {
        let cases: [(u8, f32); 12] = [
            (0x00, 0.0),
            (0x01, 2f32.powi(-9)),
            (0x07, 7.0 * 2f32.powi(-9)),
            (0x08, 2f32.powi(-6)),
            (0x38, 1.0),
            (0x3C, 1.5),
            (0x40, 2.0),
            (0x7E, 448.0),
            (0x77, 240.0),
            (0xB8, -1.0),
            (0xFE, -448.0),
            (0x80, -0.0),
        ];
        for (code, value) in cases {
            assert_eq!(e4m3_decode(code), value, "code {code:#04x}");
            assert_eq!(e4m3_encode(value), code, "value {value}");
        }
        assert!(e4m3_decode(0x7F).is_nan() && e4m3_decode(0xFF).is_nan());
    }

    #[test]
    fn encoding_rounds_to_nearest_even_and_saturates() {
        // Halfway between 1.0 (mantissa 0) and 1.125 (1): to the even one, 1.0.
        assert_eq!(e4m3_encode(1.0625), 0x38);
        // Halfway between 1.125 (1) and 1.25 (2): to 1.25.
        assert_eq!(e4m3_encode(1.1875), 0x3A);
        // Just above halfway rounds up, just below rounds down.
        assert_eq!(e4m3_encode(1.0625 + 1e-6), 0x39);
        assert_eq!(e4m3_encode(1.0625 - 1e-6), 0x38);
        // Subnormals: 2^-10 is halfway between 0 and 2^-9 (even: 0); 3·2^-10 → 2·2^-9.
        assert_eq!(e4m3_encode(2f32.powi(-10)), 0x00);
        assert_eq!(e4m3_encode(3.0 * 2f32.powi(-10)), 0x02);
        // 15.5·2^-10 lies between 7·2^-9 and 2^-6 (code 8) and rounds up into the normals.
        assert_eq!(e4m3_encode(15.5 * 2f32.powi(-10)), 0x08);
        // A carry out of the mantissa moves to the next binade: 1.9375 → 2.0.
        assert_eq!(e4m3_encode(1.9375), 0x40);
        // Saturation at ±448 (no infinity in E4M3); NaN stays NaN.
        for (x, code) in [
            (449.0, 0x7E),
            (464.0, 0x7E),
            (1e9, 0x7E),
            (f32::INFINITY, 0x7E),
            (-1000.0, 0xFE),
            (f32::NEG_INFINITY, 0xFE),
        ] {
            assert_eq!(e4m3_encode(x), code, "{x}");
        }
        assert_eq!(e4m3_encode(f32::NAN), 0x7F);
        assert_eq!(e4m3_encode(-0.0), 0x80);
        assert_eq!(e4m3_encode(1e-30), 0x00);
    }

    #[test]
    fn encoding_picks_the_nearest_code_for_every_input_tried() {
        let finite: Vec<(u8, f32)> = (0..=255u8)
            .map(|c| (c, e4m3_decode(c)))
            .filter(|(_, v)| v.is_finite())
            .collect();
        // Every code round-trips.
        for &(c, v) in &finite {
            if v != 0.0 {
                assert_eq!(e4m3_encode(v), c);
            }
        }
        // Brute force: the encoder's value is at least as near as any other code's.
        let mut state = 0x1234_5678_9ABC_DEF0u64;
        for _ in 0..20_000 {
            state = state
                .wrapping_mul(6_364_136_223_846_793_005)
                .wrapping_add(1_442_695_040_888_963_407);
            let u = (state >> 40) as f32 / (1u64 << 24) as f32;
            let x = (u - 0.5) * 2.0 * 2f32.powf(((state >> 8) % 24) as f32 - 12.0);
            let got = e4m3_decode(e4m3_encode(x));
            let want_err = if x.abs() >= E4M3_MAX {
                0.0
            } else {
                finite
                    .iter()
                    .map(|&(_, v)| (v - x).abs())
                    .fold(f32::INFINITY, f32::min)
            };
            let err = if x.abs() >= E4M3_MAX {
                (got.abs() - E4M3_MAX).abs()
            } else {
                (got - x).abs()
            };
            assert!(
                err <= want_err,
                "{x}: got {got}, a code {want_err} away exists"
            );
        }
    }

    #[test]
    fn per_tensor_scale_maps_the_largest_magnitude_to_448() {
        let values = [0.5f32, -2.0, 0.001, 1.25, 0.0];
        let (codes, scale) = quantize_values(&values);
        assert_eq!(scale, 2.0 / 448.0);
        assert_eq!(codes[1], 0xFE);
        let back: Vec<f32> = codes.iter().map(|&c| e4m3_decode(c) * scale).collect();
        for (v, b) in values.iter().zip(&back) {
            // Relative error of a normal E4M3 value is at most 2^-4.
            assert!(
                (v - b).abs() <= v.abs() / 16.0 + scale * 2f32.powi(-10),
                "{v} {b}"
            );
        }
        assert_eq!(quantize_values(&[0.0, 0.0]).1, 1.0);
    }

    #[test]
    fn the_device_dequantizes_to_the_table_values() {
        type B = NdArray<f32>;
        let device = Default::default();
        let values: Vec<f32> = (0..24).map(|i| (i as f32 - 11.0) * 0.37).collect();
        let w = Fp8Weight::<B>::from_values(&values, [4, 6], &device);
        assert_eq!(w.shape(), [4, 6]);
        assert_eq!(w.codes.val().dtype(), DType::U8);
        let (codes, scale) = quantize_values(&values);
        let want: Vec<f32> = codes.iter().map(|&c| e4m3_decode(c) * scale).collect();
        let got: Vec<f32> = w.dequantize().into_data().to_vec().expect("f32");
        assert_eq!(got, want);
        let lazy = Fp8Weight::<B>::lazy([4, 6], &device);
        assert_eq!(lazy.shape(), [4, 6]);
        assert!(!lazy.codes.is_initialized());
    }

    #[test]
    fn an_fp8_layer_stays_within_five_percent_of_the_float_layer() {
        use crate::nn::TorchLinear;
        type B = NdArray<f32>;
        let device = Default::default();
        let mut state = 7u64;
        let mut next = || {
            state = state
                .wrapping_mul(6_364_136_223_846_793_005)
                .wrapping_add(1_442_695_040_888_963_407);
            (state >> 40) as f32 / (1u64 << 24) as f32 * 2.0 - 1.0
        };
        let w: Vec<f32> = (0..96 * 64).map(|_| next() * 0.1).collect();
        let x: Vec<f32> = (0..5 * 64).map(|_| next()).collect();
        let mut layer = TorchLinear::<B>::new(64, 96, true, &device);
        layer.weight = Param::initialized(
            layer.weight.id,
            Tensor::from_data(TensorData::new(w, [96, 64]), &device),
        );
        let x = Tensor::<B, 2>::from_data(TensorData::new(x, [5, 64]), &device);
        let float: Vec<f32> = layer.forward(x.clone()).into_data().to_vec().expect("f32");
        layer.to_fp8();
        assert!(layer.is_fp8() && !layer.weight.is_initialized());
        let fp8: Vec<f32> = layer.forward(x).into_data().to_vec().expect("f32");
        let num: f32 = float.iter().zip(&fp8).map(|(a, b)| (a - b).powi(2)).sum();
        let den: f32 = float.iter().map(|a| a.powi(2)).sum();
        let rel = (num / den).sqrt();
        assert!((0.002..0.05).contains(&rel), "relative L2 {rel}");
    }

    #[test]
    fn the_full_precision_layers_are_the_originals() {
        for kept in [
            "text_embedding.0",
            "text_embedding.2",
            "time_embedding.0",
            "time_projection.1",
            "head.head",
            "casual_audio_encoder.encoder.final_linear",
        ] {
            assert!(!is_fp8_target(kept), "{kept}");
        }
        for quantized in [
            "blocks.0.self_attn.q",
            "blocks.39.ffn.2",
            "blocks.1.cross_attn.o",
            "audio_injector.injector.3.k",
            "audio_injector.injector_adain_layers.0.linear",
            "head.headless",
        ] {
            assert!(is_fp8_target(quantized), "{quantized}");
        }
    }
}
