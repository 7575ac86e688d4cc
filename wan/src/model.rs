//! `WanModel_S2V`: the speech-to-video DiT with the module tree of the released
//! checkpoint. Field names are the checkpoint's key segments, so
//! `blocks.3.self_attn.q.weight` in the file is `self.blocks[3].self_attn.q.weight`.

use burn::module::Module;
use burn::nn::conv::{Conv3d, Conv3dConfig};
use burn::nn::{Embedding, EmbeddingConfig};
use burn::prelude::*;
use burn::tensor::activation::silu;

use crate::audio::{AudioInjector, CausalAudioEncoder};
use crate::block::{S2vBlock, S2vHead, Segment};
use crate::config::S2vConfig;
use crate::motion::FramePacker;
use crate::nn::{gelu_tanh, seq_linear, sparse_sequential, SparseSequential, TorchLinear};
use crate::rope::{RopeGroup, RopeTable};

/// Frame position the reference image takes in the non-causal model
/// (`ref_grid_sizes` start index 30 in `WanModel_S2V.forward`).
pub const REF_FRAME_POSITION: i64 = 30;

#[derive(Module, Debug)]
pub struct WanS2v<B: Backend> {
    pub patch_embedding: Conv3d<B>,
    /// `text_embedding.0`, tanh-GELU, `text_embedding.2`.
    pub text_embedding: SparseSequential<B>,
    /// `time_embedding.0`, SiLU, `time_embedding.2`.
    pub time_embedding: SparseSequential<B>,
    /// SiLU, `time_projection.1` (to 6 × dim).
    pub time_projection: SparseSequential<B>,
    pub blocks: Vec<S2vBlock<B>>,
    pub head: S2vHead<B>,
    pub cond_encoder: Conv3d<B>,
    pub casual_audio_encoder: CausalAudioEncoder<B>,
    pub audio_injector: AudioInjector<B>,
    /// Rows 0/1/2 are added to noisy / reference / motion tokens.
    pub trainable_cond_mask: Embedding<B>,
    pub frame_packer: FramePacker<B>,
    pub dim: usize,
    pub num_heads: usize,
    pub freq_dim: usize,
    pub text_len: usize,
    pub out_dim: usize,
    pub patch_size: [usize; 3],
    /// Blocks after which `audio_injector.injector[i]` runs, in injector order.
    pub audio_inject_layers: Vec<usize>,
}

/// Inputs of [`WanS2v::forward_trunk`], batch 1, latents as `[1, C, F, H, W]`.
#[derive(Debug, Clone)]
pub struct TrunkInput<B: Backend> {
    pub noisy: Tensor<B, 5>,
    /// Diffusion time of the noisy latents (0..1000).
    pub t: f64,
    /// Text encoder rows `[1, rows, text_dim]` (rows ≤ text_len; zero-padded here).
    pub context: Tensor<B, 3>,
    /// Reference image latent `[1, C, 1, H, W]`.
    pub ref_latent: Tensor<B, 5>,
    /// Pose condition `[1, cond_dim, F, H, W]` (Live Avatar feeds zeros).
    pub cond: Tensor<B, 5>,
    /// Audio features `[1, layers, audio_dim, 4 * F]` (wav2vec2 hidden states per video
    /// frame); `None` leaves the audio injectors out.
    pub audio: Option<Tensor<B, 4>>,
    /// Motion latents `[1, 16, T, H, W]` (19 in the release), packed by the frame
    /// packer and appended after the reference tokens; `None` leaves them out.
    pub motion: Option<Tensor<B, 5>>,
}

impl<B: Backend> WanS2v<B> {
    /// Builds the module tree. Parameters are initialised lazily: nothing is allocated
    /// until a parameter is read or loaded, so this is cheap even at 14B.
    pub fn new(cfg: &S2vConfig, device: &B::Device) -> Self {
        let [pf, ph, pw] = cfg.patch_size;
        let d = cfg.dim;
        Self {
            patch_embedding: Conv3dConfig::new([cfg.in_dim, d], cfg.patch_size)
                .with_stride(cfg.patch_size)
                .init(device),
            text_embedding: sparse_sequential(3, &[(0, cfg.text_dim, d), (2, d, d)], device),
            time_embedding: sparse_sequential(3, &[(0, cfg.freq_dim, d), (2, d, d)], device),
            time_projection: sparse_sequential(2, &[(1, d, 6 * d)], device),
            blocks: (0..cfg.num_layers)
                .map(|_| S2vBlock::new(d, cfg.ffn_dim, cfg.num_heads, cfg.eps, device))
                .collect(),
            head: S2vHead::new(d, pf * ph * pw * cfg.out_dim, cfg.eps, device),
            cond_encoder: Conv3dConfig::new([cfg.cond_dim, d], cfg.patch_size)
                .with_stride(cfg.patch_size)
                .init(device),
            casual_audio_encoder: CausalAudioEncoder::new(
                cfg.audio_dim,
                cfg.audio_layers,
                d,
                cfg.num_audio_token,
                device,
            ),
            audio_injector: AudioInjector::new(
                d,
                cfg.num_heads,
                cfg.audio_inject_layers.len(),
                cfg.eps,
                device,
            ),
            trainable_cond_mask: EmbeddingConfig::new(3, d).init(device),
            frame_packer: FramePacker::new(d, device),
            dim: d,
            num_heads: cfg.num_heads,
            freq_dim: cfg.freq_dim,
            text_len: cfg.text_len,
            out_dim: cfg.out_dim,
            patch_size: cfg.patch_size,
            audio_inject_layers: cfg.audio_inject_layers.clone(),
        }
    }

    /// The linear layers outside `blocks`, with their checkpoint module paths: the text,
    /// time and projection embeddings, the head, the audio encoder's final linear and the
    /// audio injectors' attention and AdaLN layers.
    pub fn resident_linears_mut(&mut self) -> Vec<(String, &mut TorchLinear<B>)> {
        let mut out = Vec::new();
        for (name, seq) in [
            ("text_embedding", &mut self.text_embedding),
            ("time_embedding", &mut self.time_embedding),
            ("time_projection", &mut self.time_projection),
        ] {
            for (i, l) in seq.iter_mut().enumerate() {
                if let Some(l) = l.as_mut() {
                    out.push((format!("{name}.{i}"), l));
                }
            }
        }
        out.push(("head.head".into(), &mut self.head.head));
        out.push((
            "casual_audio_encoder.encoder.final_linear".into(),
            &mut self.casual_audio_encoder.encoder.final_linear,
        ));
        let inj = &mut self.audio_injector;
        for (i, a) in inj.injector.iter_mut().enumerate() {
            out.push((format!("audio_injector.injector.{i}.q"), &mut a.q));
            out.push((format!("audio_injector.injector.{i}.k"), &mut a.k));
            out.push((format!("audio_injector.injector.{i}.v"), &mut a.v));
            out.push((format!("audio_injector.injector.{i}.o"), &mut a.o));
        }
        for (i, a) in inj.injector_adain_layers.iter_mut().enumerate() {
            out.push((
                format!("audio_injector.injector_adain_layers.{i}.linear"),
                &mut a.linear,
            ));
        }
        out
    }

    /// Stores the DiT's linear weights as fp8, except the layers the original keeps in full
    /// precision ([`crate::fp8::FULL_PRECISION`]): the parts outside `blocks` and every block
    /// present (a model whose blocks were moved elsewhere quantizes what it holds).
    pub fn to_fp8(&mut self) {
        for (path, l) in self.resident_linears_mut() {
            if crate::fp8::is_fp8_target(&path) {
                l.to_fp8();
            }
        }
        for block in &mut self.blocks {
            block.to_fp8();
        }
    }

    /// Time embedding `e` `[n, dim]` and time projection `e0` `[n, 6, dim]` of each `t`.
    pub fn embed_time(&self, t: &[f64], device: &B::Device) -> (Tensor<B, 2>, Tensor<B, 3>) {
        let sin = sinusoidal_embedding(self.freq_dim, t);
        let sin =
            Tensor::<B, 1>::from_data(TensorData::new(sin, [t.len() * self.freq_dim]), device)
                .reshape([t.len(), self.freq_dim]);
        let e = seq_linear(&self.time_embedding, 0).forward(sin);
        let e = seq_linear(&self.time_embedding, 2).forward(silu(e));
        let e0 = seq_linear(&self.time_projection, 1)
            .forward(silu(e.clone()))
            .reshape([t.len(), 6, self.dim]);
        (e, e0)
    }

    /// Pads the text rows with zeros to `text_len`, then embeds them (the padding rows
    /// get the embedding's bias path, as in the original).
    pub fn embed_text(&self, context: Tensor<B, 3>) -> Tensor<B, 3> {
        let [b, rows, c] = context.dims();
        let context = if rows < self.text_len {
            let pad = Tensor::zeros([b, self.text_len - rows, c], &context.device());
            Tensor::cat(vec![context, pad], 1)
        } else {
            context
        };
        let x = seq_linear(&self.text_embedding, 0).forward(context);
        seq_linear(&self.text_embedding, 2).forward(gelu_tanh(x))
    }

    /// Patchifies `[1, C, F, H, W]` with `conv` into tokens `[1, F*h*w, dim]`.
    pub(crate) fn tokens(conv: &Conv3d<B>, latent: Tensor<B, 5>) -> Tensor<B, 3> {
        let y = conv.forward(latent);
        let [b, c, f, h, w] = y.dims();
        y.reshape([b, c, f * h * w]).swap_dims(1, 2)
    }

    /// Token grid (frames, rows, cols) of a latent of shape `[_, _, F, H, W]`.
    pub fn grid(&self, dims: [usize; 5]) -> [usize; 3] {
        let [pf, ph, pw] = self.patch_size;
        [dims[2] / pf, dims[3] / ph, dims[4] / pw]
    }

    /// Rows of `trainable_cond_mask` as `[1, 1, dim]`.
    pub(crate) fn mask_row(&self, i: usize) -> Tensor<B, 3> {
        self.trainable_cond_mask
            .weight
            .val()
            .narrow(0, i, 1)
            .reshape([1, 1, self.dim])
    }

    /// `[1, tokens, out_dim * prod(patch)]` back to a latent `[1, out_dim, F, H, W]`
    /// (the reference's `einsum('fhwpqrc->cfphqwr')`).
    pub fn unpatchify(&self, x: Tensor<B, 3>, grid: [usize; 3]) -> Tensor<B, 5> {
        let [f, h, w] = grid;
        let [p, q, r] = self.patch_size;
        let c = self.out_dim;
        // NdArray tensors have at most 6 dimensions, so the time-patch axis is
        // handled one index at a time (it is 1 for every released model).
        let x: Tensor<B, 5> = x.reshape([f, h, w, p, q * r * c]);
        let per_time: Vec<Tensor<B, 4>> = (0..p)
            .map(|pi| {
                let y: Tensor<B, 6> = x.clone().narrow(3, pi, 1).reshape([f, h, w, q, r, c]);
                y.permute([5, 0, 1, 3, 2, 4]).reshape([c, f, h * q, w * r])
            })
            .collect();
        Tensor::stack::<5>(per_time, 2).reshape([1, c, f * p, h * q, w * r])
    }

    /// The full-sequence (non-causal) `WanModel_S2V.forward`: patch/cond embedding,
    /// reference tokens, frame-packed motion tokens when `motion` is given, cond mask,
    /// 3-axis RoPE, zero-timestep split, all blocks, the audio injectors when `audio`
    /// is given, head, unpatchify. Returns the predicted velocity `[1, out_dim, F, H, W]`.
    /// (Live Avatar's causal, cached variant drives the same blocks block by block:
    /// see [`crate::causal_loop`].)
    pub fn forward_trunk(&self, input: TrunkInput<B>) -> Tensor<B, 5> {
        let device = input.noisy.device();
        let grid = self.grid(input.noisy.dims());
        let [f, h, w] = grid;
        let noisy = Self::tokens(&self.patch_embedding, input.noisy)
            + Self::tokens(&self.cond_encoder, input.cond);
        let noisy_len = f * h * w;
        let reference = Self::tokens(&self.patch_embedding, input.ref_latent);
        let mut cond_len = reference.dims()[1];
        let mut parts = vec![noisy + self.mask_row(0), reference + self.mask_row(1)];

        let (h_i, w_i) = (h as i64, w as i64);
        let mut groups = vec![
            RopeGroup::from_grid([0, 0, 0], [f as i64, h_i, w_i], [f as i64, h_i, w_i]),
            RopeGroup::from_grid(
                [REF_FRAME_POSITION, 0, 0],
                [REF_FRAME_POSITION + 1, h_i, w_i],
                [1, h_i, w_i],
            ),
        ];
        if let Some(motion) = input.motion {
            let (packed, packed_groups) = self.frame_packer.forward(motion);
            cond_len += packed.dims()[1];
            parts.push(packed + self.mask_row(2));
            groups.extend(packed_groups);
        }
        let x = Tensor::cat(parts, 1);
        let rope = RopeTable::new(self.dim / self.num_heads, &groups).to_device::<B>(&device);

        let (e, e0) = self.embed_time(&[input.t, 0.0], &device);
        let segments = [
            Segment {
                tokens: noisy_len,
                e: e0.clone().narrow(0, 0, 1),
            },
            Segment {
                tokens: cond_len,
                e: e0.narrow(0, 1, 1),
            },
        ];
        let context = self.embed_text(input.context);

        let audio = input
            .audio
            .map(|a| self.casual_audio_encoder.encode_clip(a));

        let mut x = x;
        for (idx, block) in self.blocks.iter().enumerate() {
            x = block.forward(x, &segments, &rope, context.clone());
            if let (Some((global, local)), Some(id)) = (
                &audio,
                self.audio_inject_layers.iter().position(|&l| l == idx),
            ) {
                x = self.audio_injector.inject(id, x, noisy_len, global, local);
            }
        }
        let x = x.narrow(1, 0, noisy_len);
        let head_seg = [Segment {
            tokens: noisy_len,
            e: e.narrow(0, 0, 1).reshape([1, 1, self.dim]),
        }];
        let x = self.head.forward(x, &head_seg);
        self.unpatchify(x, grid)
    }
}

/// Sinusoidal timestep embedding computed in f64 (`sinusoidal_embedding_1d`):
/// `[cos(t·ω_j) for j] ++ [sin(t·ω_j) for j]`, `ω_j = 10000^(-j/half)`; rounded to f32.
pub fn sinusoidal_embedding(dim: usize, t: &[f64]) -> Vec<f32> {
    let half = dim / 2;
    let omega: Vec<f64> = (0..half)
        .map(|j| 10000f64.powf(-(j as f64) / half as f64))
        .collect();
    let mut out = Vec::with_capacity(t.len() * dim);
    for &ti in t {
        out.extend(omega.iter().map(|w| (ti * w).cos() as f32));
        out.extend(omega.iter().map(|w| (ti * w).sin() as f32));
    }
    out
}
