//! Small layers shared by the Wan modules, written so their parameter names and
//! layouts are the PyTorch ones (`weight` as `[out, in]`): the released tensors then
//! load as they are, with no transpose at load time and no renaming.

use burn::module::{Module, Param, ParamId};
use burn::nn::Initializer;
use burn::prelude::*;

use crate::fp8::Fp8Weight;

/// `torch.nn.Linear` with the weight kept in PyTorch layout `[out, in]`.
///
/// With fp8 storage ([`TorchLinear::to_fp8`]) the weight lives in `fp8` (E4M3 codes and
/// their table) and is dequantized right before each matmul; `weight` then keeps only its
/// shape (a lazy parameter that is never read).
#[derive(Module, Debug)]
pub struct TorchLinear<B: Backend> {
    pub weight: Param<Tensor<B, 2>>,
    pub bias: Option<Param<Tensor<B, 1>>>,
    pub fp8: Option<Fp8Weight<B>>,
}

/// A weight parameter of `shape` that holds nothing: its float values were replaced by fp8
/// storage, so reading it is a bug in this crate.
fn dropped_weight<B: Backend>(
    id: ParamId,
    shape: [usize; 2],
    device: &B::Device,
) -> Param<Tensor<B, 2>> {
    Param::uninitialized(
        id,
        |_: &B::Device, _| -> Tensor<B, 2> {
            panic!("the float weight of an fp8 linear layer was dropped; use TorchLinear::weight_value")
        },
        device.clone(),
        false,
        shape.into(),
    )
}

impl<B: Backend> TorchLinear<B> {
    /// A lazily initialised layer: nothing is allocated until the parameter is read
    /// or loaded, so the 14B module tree can be built to list its shapes.
    pub fn new(d_in: usize, d_out: usize, bias: bool, device: &B::Device) -> Self {
        let init = Initializer::Normal {
            mean: 0.0,
            std: 0.02,
        };
        Self {
            weight: init.init([d_out, d_in], device),
            bias: bias.then(|| Initializer::Zeros.init([d_out], device)),
            fp8: None,
        }
    }

    /// `[out, in]`, without reading the parameters.
    pub fn shape(&self) -> [usize; 2] {
        let s = self.weight.lazy_shape();
        [s[0], s[1]]
    }

    /// Whether the weight is stored as fp8.
    pub fn is_fp8(&self) -> bool {
        self.fp8.is_some()
    }

    /// The weight `[out, in]` in the float dtype (dequantized when stored as fp8).
    pub fn weight_value(&self) -> Tensor<B, 2> {
        match &self.fp8 {
            Some(q) => q.dequantize(),
            None => self.weight.val(),
        }
    }

    /// Replaces the float weight by E4M3 codes with a per-tensor scale (quantized on the
    /// host, codes put back on the weight's device); the float weight is freed. Idempotent.
    pub fn to_fp8(&mut self) {
        if self.fp8.is_some() {
            return;
        }
        let w = self.weight.val();
        let device = w.device();
        self.fp8 = Some(Fp8Weight::from_tensor(w));
        self.weight = dropped_weight(self.weight.id, self.shape(), &device);
    }

    /// The structure of an fp8 layer with nothing allocated: a skeleton that an upload of
    /// an fp8 layer's parameters fills.
    pub fn fp8_skeleton(&mut self) {
        let device = self.weight.lazy_device();
        let shape = self.shape();
        self.fp8 = Some(Fp8Weight::lazy(shape, &device));
        self.weight = dropped_weight(self.weight.id, shape, &device);
    }

    /// Applies the layer to the last dimension of `x`.
    pub fn forward<const D: usize>(&self, x: Tensor<B, D>) -> Tensor<B, D> {
        let dims = x.dims();
        let d_in = dims[D - 1];
        let rows: usize = dims[..D - 1].iter().product();
        let w = self.weight_value();
        let d_out = w.dims()[0];
        let mut y = x.reshape([rows, d_in]).matmul(w.transpose());
        if let Some(b) = &self.bias {
            y = y + b.val().unsqueeze::<2>();
        }
        let mut out = dims;
        out[D - 1] = d_out;
        y.reshape(out)
    }
}

/// `WanRMSNorm`: `x * rsqrt(mean(x²) + eps) * weight` over the last dimension.
#[derive(Module, Debug)]
pub struct RmsNorm<B: Backend> {
    pub weight: Param<Tensor<B, 1>>,
    pub eps: f64,
}

impl<B: Backend> RmsNorm<B> {
    pub fn new(dim: usize, eps: f64, device: &B::Device) -> Self {
        Self {
            weight: Initializer::Ones.init([dim], device),
            eps,
        }
    }

    pub fn forward<const D: usize>(&self, x: Tensor<B, D>) -> Tensor<B, D> {
        let ms = x.clone().powi_scalar(2).mean_dim(D - 1);
        let normed = x * (ms + self.eps).sqrt().recip();
        normed * self.weight.val().unsqueeze::<D>()
    }
}

/// `torch.nn.LayerNorm` over the last dimension, with or without the affine pair
/// (`WanLayerNorm`: norm1/norm2 have none, norm3 has `weight` and `bias`).
#[derive(Module, Debug)]
pub struct LayerNorm<B: Backend> {
    pub weight: Option<Param<Tensor<B, 1>>>,
    pub bias: Option<Param<Tensor<B, 1>>>,
    pub eps: f64,
}

impl<B: Backend> LayerNorm<B> {
    pub fn new(dim: usize, eps: f64, affine: bool, device: &B::Device) -> Self {
        Self {
            weight: affine.then(|| Initializer::Ones.init([dim], device)),
            bias: affine.then(|| Initializer::Zeros.init([dim], device)),
            eps,
        }
    }

    pub fn forward<const D: usize>(&self, x: Tensor<B, D>) -> Tensor<B, D> {
        let mut y = layer_norm(x, self.eps);
        if let Some(w) = &self.weight {
            y = y * w.val().unsqueeze::<D>();
        }
        if let Some(b) = &self.bias {
            y = y + b.val().unsqueeze::<D>();
        }
        y
    }
}

/// Layer norm without affine parameters over the last dimension (biased variance,
/// as PyTorch computes it).
pub fn layer_norm<B: Backend, const D: usize>(x: Tensor<B, D>, eps: f64) -> Tensor<B, D> {
    let mean = x.clone().mean_dim(D - 1);
    let centered = x - mean;
    let var = centered.clone().powi_scalar(2).mean_dim(D - 1);
    centered * (var + eps).sqrt().recip()
}

/// GELU with the tanh approximation (`nn.GELU(approximate='tanh')`).
pub fn gelu_tanh<B: Backend, const D: usize>(x: Tensor<B, D>) -> Tensor<B, D> {
    let c = (2.0f64 / std::f64::consts::PI).sqrt();
    let inner = (x.clone() + x.clone().powi_scalar(3) * 0.044715) * c;
    x * (inner.tanh() + 1.0) * 0.5
}

/// A PyTorch `nn.Sequential` entry list with gaps where parameter-free layers sit
/// (`text_embedding.0` / `.2` around a GELU, `time_projection.1` after a SiLU). Burn
/// names `Vec` entries by index and skips `None`, so the keys come out as the
/// original's without any remapping.
pub type SparseSequential<B> = Vec<Option<TorchLinear<B>>>;

/// Builds a [`SparseSequential`] with linear layers at the given indices.
pub fn sparse_sequential<B: Backend>(
    len: usize,
    layers: &[(usize, usize, usize)],
    device: &B::Device,
) -> SparseSequential<B> {
    (0..len)
        .map(|i| {
            layers
                .iter()
                .find(|(at, _, _)| *at == i)
                .map(|(_, d_in, d_out)| TorchLinear::new(*d_in, *d_out, true, device))
        })
        .collect()
}

/// The linear layer at index `i` of a [`SparseSequential`] (an invariant of the
/// constructors in this crate, so a missing one is a bug, not bad input).
pub fn seq_linear<B: Backend>(seq: &SparseSequential<B>, i: usize) -> &TorchLinear<B> {
    seq.get(i)
        .and_then(Option::as_ref)
        .expect("sparse sequential built with a linear layer at this index")
}
