//! The umT5-XXL text encoder as Wan packages it (`models_t5_umt5-xxl-enc-bf16.pth`,
//! wan22 `wan/modules/t5.py::T5Encoder`): per-layer relative position bias
//! (`shared_pos=False`), gated-GELU feed-forward, RMS norms, no biases, unscaled
//! attention scores (T5 folds the scale into its weights).

use burn::module::Module;
use burn::nn::{Embedding, EmbeddingConfig};
use burn::prelude::*;
use burn::tensor::activation::softmax;

use crate::nn::{gelu_tanh, seq_linear, sparse_sequential, RmsNorm, SparseSequential, TorchLinear};

/// Sizes of a T5 encoder.
#[derive(Debug, Clone, PartialEq)]
pub struct T5Config {
    pub vocab: usize,
    pub dim: usize,
    pub dim_attn: usize,
    pub dim_ffn: usize,
    pub num_heads: usize,
    pub num_layers: usize,
    pub num_buckets: usize,
}

impl T5Config {
    /// umT5-XXL (wan22 `umt5_xxl`).
    pub fn umt5_xxl() -> Self {
        Self {
            vocab: 256384,
            dim: 4096,
            dim_attn: 4096,
            dim_ffn: 10240,
            num_heads: 64,
            num_layers: 24,
            num_buckets: 32,
        }
    }
}

/// Largest relative distance with its own buckets (`max_dist`).
const MAX_DIST: f32 = 128.0;
const EPS: f64 = 1e-6;

#[derive(Module, Debug)]
pub struct T5Attention<B: Backend> {
    pub q: TorchLinear<B>,
    pub k: TorchLinear<B>,
    pub v: TorchLinear<B>,
    pub o: TorchLinear<B>,
    pub num_heads: usize,
}

#[derive(Module, Debug)]
pub struct T5FeedForward<B: Backend> {
    /// `gate.0` (a tanh-GELU follows it at index 1).
    pub gate: SparseSequential<B>,
    pub fc1: TorchLinear<B>,
    pub fc2: TorchLinear<B>,
}

#[derive(Module, Debug)]
pub struct T5RelativeEmbedding<B: Backend> {
    pub embedding: Embedding<B>,
}

#[derive(Module, Debug)]
pub struct T5Block<B: Backend> {
    pub norm1: RmsNorm<B>,
    pub attn: T5Attention<B>,
    pub norm2: RmsNorm<B>,
    pub ffn: T5FeedForward<B>,
    pub pos_embedding: T5RelativeEmbedding<B>,
}

#[derive(Module, Debug)]
pub struct T5Encoder<B: Backend> {
    pub token_embedding: Embedding<B>,
    pub blocks: Vec<T5Block<B>>,
    pub norm: RmsNorm<B>,
    pub num_buckets: usize,
}

/// Bidirectional relative-position bucket of `key − query` (T5's scheme, computed in
/// f32 like the reference).
pub fn relative_bucket(rel: i64, num_buckets: usize) -> usize {
    let half = num_buckets / 2;
    let mut bucket = if rel > 0 { half } else { 0 };
    let rel = rel.unsigned_abs() as usize;
    let max_exact = half / 2;
    if rel < max_exact {
        bucket += rel;
    } else {
        let ratio = (rel as f32 / max_exact as f32).ln() / (MAX_DIST / max_exact as f32).ln();
        let large = max_exact + (ratio * (half - max_exact) as f32) as usize;
        bucket += large.min(half - 1);
    }
    bucket
}

impl<B: Backend> T5RelativeEmbedding<B> {
    /// Bias `[1, heads, len, len]` for a sequence of `len` tokens.
    pub fn forward(&self, len: usize, num_buckets: usize) -> Tensor<B, 4> {
        let weight = self.embedding.weight.val();
        let [_, heads] = weight.dims();
        let idx: Vec<i64> = (0..len)
            .flat_map(|q| {
                (0..len).map(move |k| relative_bucket(k as i64 - q as i64, num_buckets) as i64)
            })
            .collect();
        let idx =
            Tensor::<B, 1, Int>::from_data(TensorData::new(idx, [len * len]), &weight.device());
        weight
            .select(0, idx)
            .reshape([len, len, heads])
            .permute([2, 0, 1])
            .unsqueeze::<4>()
    }
}

impl<B: Backend> T5Encoder<B> {
    pub fn new(cfg: &T5Config, device: &B::Device) -> Self {
        let lin = |i, o| TorchLinear::new(i, o, false, device);
        Self {
            token_embedding: EmbeddingConfig::new(cfg.vocab, cfg.dim).init(device),
            blocks: (0..cfg.num_layers)
                .map(|_| T5Block {
                    norm1: RmsNorm::new(cfg.dim, EPS, device),
                    attn: T5Attention {
                        q: lin(cfg.dim, cfg.dim_attn),
                        k: lin(cfg.dim, cfg.dim_attn),
                        v: lin(cfg.dim, cfg.dim_attn),
                        o: lin(cfg.dim_attn, cfg.dim),
                        num_heads: cfg.num_heads,
                    },
                    norm2: RmsNorm::new(cfg.dim, EPS, device),
                    ffn: T5FeedForward {
                        gate: {
                            let mut g = sparse_sequential(1, &[], device);
                            g[0] = Some(lin(cfg.dim, cfg.dim_ffn));
                            g
                        },
                        fc1: lin(cfg.dim, cfg.dim_ffn),
                        fc2: lin(cfg.dim_ffn, cfg.dim),
                    },
                    pos_embedding: T5RelativeEmbedding {
                        embedding: EmbeddingConfig::new(cfg.num_buckets, cfg.num_heads)
                            .init(device),
                    },
                })
                .collect(),
            norm: RmsNorm::new(cfg.dim, EPS, device),
            num_buckets: cfg.num_buckets,
        }
    }

    /// Encodes token ids `[1, len]`; `valid` marks real tokens (padding keys are
    /// masked out). Returns `[1, len, dim]` for every position, padding included.
    pub fn forward(&self, ids: &[i64], valid: &[bool]) -> Tensor<B, 3> {
        let device = self.token_embedding.weight.lazy_device();
        let len = ids.len();
        let ids_t = Tensor::<B, 1, Int>::from_data(TensorData::new(ids.to_vec(), [len]), &device);
        let mut x = self
            .token_embedding
            .weight
            .val()
            .select(0, ids_t)
            .unsqueeze::<3>();
        // The reference fills masked scores with f32's lowest value, which the softmax
        // turns into an exact zero weight.
        let mask: Vec<f32> = valid
            .iter()
            .map(|&v| if v { 0.0 } else { f32::MIN })
            .collect();
        let mask = Tensor::<B, 1>::from_data(TensorData::new(mask, [len]), &device)
            .reshape([1, 1, 1, len]);
        for block in &self.blocks {
            let bias = block.pos_embedding.forward(len, self.num_buckets) + mask.clone();
            x = x.clone() + block.attn.forward(block.norm1.forward(x), bias);
            x = x.clone() + block.ffn.forward(block.norm2.forward(x));
        }
        self.norm.forward(x)
    }
}

impl<B: Backend> T5Attention<B> {
    /// `x` `[b, l, dim]`, `bias` `[1, heads, l, l]` (position bias plus mask).
    pub fn forward(&self, x: Tensor<B, 3>, bias: Tensor<B, 4>) -> Tensor<B, 3> {
        let [b, l, _] = x.dims();
        let heads = |t: Tensor<B, 3>| {
            let c = t.dims()[2] / self.num_heads;
            t.reshape([b, l, self.num_heads, c]).swap_dims(1, 2)
        };
        let q = heads(self.q.forward(x.clone()));
        let k = heads(self.k.forward(x.clone()));
        let v = heads(self.v.forward(x));
        let scores = q.matmul(k.swap_dims(2, 3)) + bias;
        let out = softmax(scores, 3).matmul(v); // b n l c
        let [_, n, _, c] = out.dims();
        self.o.forward(out.swap_dims(1, 2).reshape([b, l, n * c]))
    }
}

impl<B: Backend> T5FeedForward<B> {
    pub fn forward(&self, x: Tensor<B, 3>) -> Tensor<B, 3> {
        let gate = gelu_tanh(seq_linear(&self.gate, 0).forward(x.clone()));
        self.fc2.forward(self.fc1.forward(x) * gate)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn buckets_follow_t5_for_near_and_far_positions() {
        assert_eq!(relative_bucket(0, 32), 0);
        assert_eq!(relative_bucket(3, 32), 16 + 3);
        assert_eq!(relative_bucket(-3, 32), 3);
        assert_eq!(relative_bucket(8, 32), 16 + 8);
        assert_eq!(relative_bucket(-15, 32), 9);
        assert_eq!(relative_bucket(-1000, 32), 15);
    }
}
