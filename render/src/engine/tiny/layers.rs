//! The few layer kinds the tiny model is built from, written over plain Burn tensors so the same
//! code runs on every backend and loads weights from any safetensors file we verified.

use burn::tensor::activation::softmax;
use burn::tensor::backend::Backend;
use burn::tensor::{Tensor, TensorData};

use crate::engine::architecture::HostTensor;
use crate::engine::weights::WeightSet;

pub(crate) fn to_tensor<B: Backend, const D: usize>(
    host: HostTensor,
    device: &B::Device,
) -> Tensor<B, D> {
    Tensor::from_data(TensorData::new(host.data, host.shape), device)
}

/// A fully connected layer `y = x·W + b`, with `W` stored `[in, out]`.
#[derive(Debug, Clone)]
pub(crate) struct Dense<B: Backend> {
    weight: Tensor<B, 2>,
    bias: Tensor<B, 1>,
}

impl<B: Backend> Dense<B> {
    pub(crate) fn load(weights: &mut WeightSet, name: &str, device: &B::Device) -> Self {
        Dense {
            weight: to_tensor(weights.take(&format!("{name}.weight")), device),
            bias: to_tensor(weights.take(&format!("{name}.bias")), device),
        }
    }

    /// Applies the layer to the last dimension of `x`, whatever its rank.
    pub(crate) fn forward<const D: usize>(&self, x: Tensor<B, D>) -> Tensor<B, D> {
        let mut dims = x.dims();
        let [fan_in, fan_out] = self.weight.dims();
        let rows = dims[..D - 1].iter().product::<usize>();
        let flat: Tensor<B, 2> = x.reshape([rows, fan_in]);
        let y = flat.matmul(self.weight.clone()) + self.bias.clone().unsqueeze::<2>();
        dims[D - 1] = fan_out;
        y.reshape(dims)
    }
}

/// Layer normalisation over the last dimension without a learned affine: DiT blocks take their
/// scale and shift from the conditioning (adaLN) instead.
pub(crate) fn layer_norm<B: Backend, const D: usize>(x: Tensor<B, D>) -> Tensor<B, D> {
    let mean = x.clone().mean_dim(D - 1);
    let centred = x - mean;
    let var = centred.clone().powf_scalar(2.0).mean_dim(D - 1);
    centred / var.add_scalar(1e-5).sqrt()
}

/// adaLN modulation: `x * (1 + scale) + shift`.
pub(crate) fn modulate<B: Backend>(
    x: Tensor<B, 3>,
    shift: Tensor<B, 3>,
    scale: Tensor<B, 3>,
) -> Tensor<B, 3> {
    x * scale.add_scalar(1.0) + shift
}

/// Multi-head attention with separate query, key, value and output projections.
#[derive(Debug, Clone)]
pub(crate) struct Attention<B: Backend> {
    q: Dense<B>,
    k: Dense<B>,
    v: Dense<B>,
    out: Dense<B>,
    heads: usize,
}

impl<B: Backend> Attention<B> {
    pub(crate) fn load(
        weights: &mut WeightSet,
        name: &str,
        heads: usize,
        device: &B::Device,
    ) -> Self {
        Attention {
            q: Dense::load(weights, &format!("{name}.q"), device),
            k: Dense::load(weights, &format!("{name}.k"), device),
            v: Dense::load(weights, &format!("{name}.v"), device),
            out: Dense::load(weights, &format!("{name}.out"), device),
            heads,
        }
    }

    /// `queries` `[batch, q_len, d]` attend to `context` `[batch, k_len, d]`; `bias`
    /// `[q_len, k_len]` is added to the scores (use a large negative value to mask).
    pub(crate) fn forward(
        &self,
        queries: Tensor<B, 3>,
        context: Tensor<B, 3>,
        bias: Option<Tensor<B, 2>>,
    ) -> Tensor<B, 3> {
        let [batch, q_len, d] = queries.dims();
        let k_len = context.dims()[1];
        let head_dim = d / self.heads;
        let split = |x: Tensor<B, 3>, len: usize| -> Tensor<B, 4> {
            x.reshape([batch, len, self.heads, head_dim])
                .swap_dims(1, 2)
        };
        let q = split(self.q.forward(queries), q_len);
        let k = split(self.k.forward(context.clone()), k_len);
        let v = split(self.v.forward(context), k_len);
        let mut scores = q
            .matmul(k.swap_dims(2, 3))
            .mul_scalar(1.0 / (head_dim as f32).sqrt());
        if let Some(bias) = bias {
            scores = scores + bias.unsqueeze::<4>();
        }
        let mixed = softmax(scores, 3).matmul(v);
        self.out
            .forward(mixed.swap_dims(1, 2).reshape([batch, q_len, d]))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use burn::backend::NdArray;

    type B = NdArray<f32>;

    fn host(shape: Vec<usize>, data: Vec<f32>) -> HostTensor {
        HostTensor { shape, data }
    }

    #[test]
    fn dense_applies_weight_and_bias_to_the_last_dimension() {
        let device = Default::default();
        let dense = Dense::<B> {
            weight: to_tensor(host(vec![2, 1], vec![2.0, 3.0]), &device),
            bias: to_tensor(host(vec![1], vec![1.0]), &device),
        };
        let x: Tensor<B, 3> = to_tensor(host(vec![1, 2, 2], vec![1.0, 1.0, 0.0, 2.0]), &device);
        let y = dense
            .forward(x)
            .into_data()
            .to_vec::<f32>()
            .expect("f32 data");
        assert_eq!(y, vec![6.0, 7.0]);
    }

    #[test]
    fn layer_norm_gives_zero_mean_unit_variance() {
        let device = Default::default();
        let x: Tensor<B, 2> = to_tensor(host(vec![1, 4], vec![1.0, 2.0, 3.0, 6.0]), &device);
        let y = layer_norm(x).into_data().to_vec::<f32>().expect("f32 data");
        let mean = y.iter().sum::<f32>() / 4.0;
        let var = y.iter().map(|v| (v - mean).powi(2)).sum::<f32>() / 4.0;
        assert!(mean.abs() < 1e-5 && (var - 1.0).abs() < 1e-3, "{y:?}");
    }
}
