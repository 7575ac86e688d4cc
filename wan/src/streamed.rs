//! Layer streaming: the causal clip loop with the DiT's per-layer weights and each
//! layer's KV rings and sink kept in host memory (ENGINE.md §5.4), for cards that
//! cannot hold the 14B model and its 44 GB carry at once.
//!
//! # What lives where
//!
//! - **Device, all the time** ([`StreamedModel::resident`]): the model without its
//!   blocks: patch / cond / text / time embeddings, head, cond mask, audio encoder and
//!   injectors, frame packer. These are the "small" parts (4.5 GB in bf16 at 14B, most
//!   of it the 12 injectors; see [`crate::memory`]).
//! - **Host**: each block's weights ([`StreamedModel`], one [`TensorData`] per parameter,
//!   in the module's visiting order) and each layer's 4 rings and sink slice
//!   ([`HostDitCarry`], layer-major so one layer's state is one contiguous entry).
//! - **Device, per layer**: before layer `l` runs, its weights, the rings the running
//!   pairs need and its sink slice are uploaded; the upload of layer `l + 1` runs on a
//!   background thread while layer `l` computes (double buffer). After layer `l`, only
//!   the ring slots the pairs wrote are read back into the host rings; the rest of the
//!   ring is unchanged and is not copied back. On NdArray an "upload" is a copy in RAM;
//!   the structure is the same on a GPU backend.
//!
//! # The tick order (TPP) and why it computes what the sequential loop computes
//!
//! [`crate::causal_loop::run_clip`] runs, for each block `b` in order, the 4 Euler
//! steps `s = 0..4` in order; forward `(b, s)` reads and writes only ring `s` (and reads
//! the sink, which no forward writes). Here the forwards run in *ticks*: at tick `τ` the
//! pairs `(b, s)` with `b + s = τ` — (block τ, step 0), (τ−1, 1), (τ−2, 2), (τ−3, 3) —
//! pass through each layer together, each with its own ring, so a layer's weights cross
//! to the device once per tick instead of once per forward. The results are the same
//! because every input of a forward is the same in both orders:
//!
//! 1. **Its latent.** `(b, s)` needs the output of `(b, s − 1)`, which ran at tick
//!    `τ − 1`.
//! 2. **Its ring.** Ring `s` is read and written only by step `s`, so its history is the
//!    sequence of writes of `(0, s), (1, s), …`. In both orders `(b, s)` runs after
//!    `(b − 1, s)` (tick `τ − 1`) and before `(b + 1, s)` (tick `τ + 1`): ring `s` of
//!    block `b` is written by step `s` of block `b` before step `s` of block `b + 1`
//!    reads it, and ring `s` holds exactly blocks `0..b` of step `s` when `(b, s)` reads
//!    it. The pairs of one tick touch different rings, so their order inside a tick
//!    does not matter.
//! 3. **Everything else** (RoPE tables, sink offset, per-frame time, the block's audio
//!    window, the text context) depends only on `(clip, b, s)` and the clip's inputs.
//!
//! Each forward then runs the same operations on the same values (the uploaded
//! weights and rings are the same bits), so the streamed clip equals the resident one
//! bit for bit on a deterministic backend (tested on NdArray).
//!
//! # Clip boundaries: one pipeline fill and drain per clip
//!
//! A clip of `B` blocks and `S` steps takes `B + S − 1` ticks (7 in the release): ticks
//! 0–2 fill the pipeline (1, 2, 3 pairs), tick 3 is full, ticks 4–6 drain it. The
//! ticks could run on into the next clip (block 0 of clip `k + 1`, step 0, only needs
//! ring 0 after clip `k`'s block 3, step 0), which would make every tick full (4 ticks
//! per clip in steady state), but then a clip boundary would have blocks of the next
//! clip half denoised: the carry would have to hold their latents and the next clip's
//! inputs, and a job could no longer stop or switch mode after any clip. So streaming
//! runs per clip, the carry is exactly [`DitCarry`](crate::causal_loop::DitCarry) (convertible both ways, so a job can
//! change mode at resume), and the cost is 7 instead of 4 weight crossings per clip
//! (×1.75 weight traffic; rings cost the same either way: each forward needs its ring).
//! Sequential streaming without ticks would cross 16 times.
//!
//! The 4 pairs of a tick run one after another on the uploaded layer, each with the
//! same shapes as in the resident loop. Concatenating their tokens for the linear
//! layers would use the device better, but changes matmul shapes and so possibly the
//! kernels and rounding on a GPU; that is left for the GPU work.

use burn::module::{Module, ModuleMapper, ModuleVisitor, Param};
use burn::prelude::*;

use crate::block::S2vBlock;
use crate::causal::sink_rope_offset;
use crate::causal_loop::{
    begin_block, block_audio, finish_block, layer_forward, BlockAudio, BlockPass, CausalSettings,
    ClipInput, KvPair,
};
use crate::error::WanError;
use crate::model::WanS2v;
use crate::nn::seq_linear;

mod host_carry;
pub use host_carry::{HostDitCarry, HostKv, HostKvLayer};

fn err(message: impl Into<String>) -> WanError {
    WanError::Carry {
        message: message.into(),
    }
}

/// The sizes a block skeleton is built from.
#[derive(Debug, Clone, Copy)]
struct BlockShape {
    dim: usize,
    ffn_dim: usize,
    heads: usize,
    eps: f64,
}

/// The DiT split for layer streaming: resident parts on the device, block weights on
/// the host.
#[derive(Debug)]
pub struct StreamedModel<B: Backend> {
    /// The model with `blocks` empty: everything that stays on the device.
    pub resident: WanS2v<B>,
    /// Per layer, the block's parameters in visiting order.
    layers: Vec<Vec<TensorData>>,
    shape: BlockShape,
    device: B::Device,
}

/// Collects a module's float parameters as host data, in visiting order.
struct Download(Vec<TensorData>);

impl<B: Backend> ModuleVisitor<B> for Download {
    fn visit_float<const D: usize>(&mut self, param: &Param<Tensor<B, D>>) {
        self.0.push(param.val().into_data());
    }
}

/// Fills a module skeleton's float parameters from host data, in visiting order.
struct Upload<'a, B: Backend> {
    data: std::slice::Iter<'a, TensorData>,
    device: &'a B::Device,
    bytes: u64,
}

impl<B: Backend> ModuleMapper<B> for Upload<'_, B> {
    fn map_float<const D: usize>(&mut self, param: Param<Tensor<B, D>>) -> Param<Tensor<B, D>> {
        let data = self
            .data
            .next()
            .expect("host weights were taken from a block of the same structure");
        self.bytes += data.bytes.len() as u64;
        Param::initialized(param.id, Tensor::from_data(data.clone(), self.device))
    }
}

impl<B: Backend> StreamedModel<B> {
    /// Moves the blocks of a loaded model to host memory (block by block, so device
    /// memory is given back as it goes) and keeps the rest resident.
    pub fn from_model(mut model: WanS2v<B>) -> Self {
        let device = model.patch_embedding.weight.val().device();
        let blocks = std::mem::take(&mut model.blocks);
        let shape = BlockShape {
            dim: model.dim,
            ffn_dim: blocks
                .first()
                .map_or(0, |b| seq_linear(&b.ffn, 0).weight.val().dims()[0]),
            heads: model.num_heads,
            eps: blocks.first().map_or(1e-6, |b| b.eps),
        };
        let layers = blocks
            .into_iter()
            .map(|block| {
                let mut d = Download(Vec::new());
                block.visit(&mut d);
                d.0
            })
            .collect();
        Self {
            resident: model,
            layers,
            shape,
            device,
        }
    }

    /// Puts the blocks back on the device: the resident model again.
    pub fn into_model(self) -> WanS2v<B> {
        let mut model = self.resident;
        model.blocks = self
            .layers
            .iter()
            .map(|w| upload_block(self.shape, w, &self.device).0)
            .collect();
        model
    }

    pub fn layers(&self) -> usize {
        self.layers.len()
    }

    /// Host bytes of one layer's weights.
    pub fn layer_weight_bytes(&self, layer: usize) -> u64 {
        self.layers
            .get(layer)
            .map_or(0, |w| w.iter().map(|d| d.bytes.len() as u64).sum())
    }
}

/// A block on `device` from its host parameters; returns it and the bytes copied.
fn upload_block<B: Backend>(
    shape: BlockShape,
    weights: &[TensorData],
    device: &B::Device,
) -> (S2vBlock<B>, u64) {
    // Parameters of a fresh block are lazy: building it allocates nothing.
    let skeleton = S2vBlock::new(shape.dim, shape.ffn_dim, shape.heads, shape.eps, device);
    let mut up = Upload {
        data: weights.iter(),
        device,
        bytes: 0,
    };
    let block = skeleton.map(&mut up);
    (block, up.bytes)
}

/// Bytes that crossed between host and device while streaming.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Traffic {
    /// Ticks run (each streams every layer once).
    pub ticks: usize,
    /// Layer uploads (weights of one layer each).
    pub layer_uploads: usize,
    pub weight_bytes_up: u64,
    pub ring_bytes_up: u64,
    pub sink_bytes_up: u64,
    /// Written ring slots read back.
    pub ring_bytes_down: u64,
}

impl Traffic {
    pub fn bytes_up(&self) -> u64 {
        self.weight_bytes_up + self.ring_bytes_up + self.sink_bytes_up
    }
}

/// What a layer upload carries besides the weights.
struct Need {
    /// Rings by step.
    rings: Vec<bool>,
    sink: bool,
}

/// One layer on the device.
struct DeviceLayer<B: Backend> {
    block: S2vBlock<B>,
    /// By step; `None` where the tick does not use that step.
    rings: Vec<Option<KvPair<B>>>,
    sink: Option<KvPair<B>>,
    traffic: Traffic,
}

fn upload_layer<B: Backend>(
    model: &StreamedModel<B>,
    layer: usize,
    kv: &HostKvLayer,
    need: &Need,
) -> DeviceLayer<B> {
    let device = &model.device;
    let (block, weight_bytes) = upload_block(model.shape, &model.layers[layer], device);
    let mut traffic = Traffic {
        layer_uploads: 1,
        weight_bytes_up: weight_bytes,
        ..Traffic::default()
    };
    let rings = kv
        .rings
        .iter()
        .zip(&need.rings)
        .map(|(r, &n)| {
            n.then(|| {
                traffic.ring_bytes_up += r.bytes();
                r.to_device(device)
            })
        })
        .collect();
    let sink = need.sink.then(|| {
        traffic.sink_bytes_up += kv.sink.bytes();
        kv.sink.to_device(device)
    });
    DeviceLayer {
        block,
        rings,
        sink,
        traffic,
    }
}

/// Runs `compute(layer, device_layer, host_state)` for every layer in order, with the
/// upload of layer `l + 1` on a background thread while layer `l` computes. `compute`
/// returns the bytes it read back to the host. Returns the traffic.
fn stream_layers<B: Backend>(
    model: &StreamedModel<B>,
    kv: &mut [HostKvLayer],
    need: &Need,
    mut compute: impl FnMut(usize, &mut DeviceLayer<B>, &mut HostKvLayer) -> u64,
) -> Traffic {
    let mut traffic = Traffic::default();
    let mut current = kv.first().map(|first| upload_layer(model, 0, first, need));
    let mut layer = 0;
    while let Some(mut dev) = current.take() {
        traffic.layer_uploads += dev.traffic.layer_uploads;
        traffic.weight_bytes_up += dev.traffic.weight_bytes_up;
        traffic.ring_bytes_up += dev.traffic.ring_bytes_up;
        traffic.sink_bytes_up += dev.traffic.sink_bytes_up;
        let (done, rest) = kv.split_at_mut(layer + 1);
        let host = &mut done[layer];
        let next = std::thread::scope(|s| {
            let prefetch = rest
                .first()
                .map(|next_kv| s.spawn(move || upload_layer(model, layer + 1, next_kv, need)));
            traffic.ring_bytes_down += compute(layer, &mut dev, host);
            drop(dev);
            prefetch.map(|h| h.join())
        });
        current = match next {
            Some(Ok(d)) => Some(d),
            Some(Err(panic)) => std::panic::resume_unwind(panic),
            None => None,
        };
        layer += 1;
    }
    traffic
}

/// Copies rows `[at, at + rows)` (dimension 1) of a device tensor into the same rows of
/// a host tensor of the same layout. Returns the bytes copied.
fn write_rows<B: Backend>(
    host: &mut TensorData,
    device: &Tensor<B, 4>,
    at: usize,
    rows: usize,
) -> Result<u64, WanError> {
    let slice = device.clone().narrow(1, at, rows).into_data();
    if slice.dtype != host.dtype {
        return Err(err(format!(
            "host ring holds {:?}, the device computes in {:?}",
            host.dtype, slice.dtype
        )));
    }
    let dims = device.dims();
    if host.shape.to_vec() != dims.to_vec() {
        return Err(err(format!(
            "host ring has shape {:?}, the device ring {:?}",
            host.shape.to_vec(),
            dims
        )));
    }
    let row_bytes = dims[2] * dims[3] * host.dtype.size();
    let (from, len) = (at * row_bytes, rows * row_bytes);
    let src = slice.as_bytes();
    if src.len() != len {
        return Err(err("ring slice of unexpected size read back"));
    }
    host.bytes[from..from + len].copy_from_slice(src);
    Ok(len as u64)
}

/// One block's state across its ticks.
struct BlockState<B: Backend> {
    latent: Tensor<B, 5>,
    cond: Tensor<B, 5>,
    first: usize,
    offset: i64,
    audio: Option<BlockAudio<B>>,
}

/// A clip run by [`run_clip_streamed`].
#[derive(Debug)]
pub struct StreamedClip<B: Backend> {
    /// Clean latents `[1, out_dim, frames_per_clip, H, W]`.
    pub latents: Tensor<B, 5>,
    pub carry: HostDitCarry<B>,
    pub traffic: Traffic,
}

/// [`crate::causal_loop::run_clip`] with layer streaming and the 4 steps batched in the
/// tick order of the module docs: same latents, same carry.
///
/// # Errors
/// When the carry does not fit the model and settings (layers, steps, ring length) or
/// its rings hold another dtype than the device computes in.
///
/// # Panics
/// As `run_clip`, if `input.audio` has fewer than `4 · frames_per_clip` frames.
pub fn run_clip_streamed<B: Backend>(
    model: &StreamedModel<B>,
    settings: &CausalSettings,
    carry: HostDitCarry<B>,
    input: ClipInput<B>,
) -> Result<StreamedClip<B>, WanError> {
    let steps = settings.schedule.steps();
    let blocks = settings.blocks_per_clip;
    let fpb = settings.frames_per_block;
    if carry.layers.len() != model.layers() {
        return Err(err(format!(
            "carry has {} layers, the model {}",
            carry.layers.len(),
            model.layers()
        )));
    }
    if let Some(l) = carry.layers.iter().find(|l| l.rings.len() != steps) {
        return Err(err(format!(
            "carry has {} rings per layer, the schedule {steps} steps",
            l.rings.len()
        )));
    }
    let [h, w] = carry.grid_hw;
    let ring_tokens = carry.ring_tokens();
    if ring_tokens != settings.frames_per_clip() * h * w {
        return Err(err(format!(
            "carry rings hold {ring_tokens} tokens, a clip has {}",
            settings.frames_per_clip() * h * w
        )));
    }
    let resident = &model.resident;
    let (frames_done, clip) = (carry.frames_done, carry.clip);
    let mut carry = carry;
    let mut states: Vec<BlockState<B>> = (0..blocks)
        .map(|b| BlockState {
            latent: input.noise.clone().narrow(2, b * fpb, fpb),
            cond: input.cond.clone().narrow(2, b * fpb, fpb),
            first: frames_done + b * fpb,
            offset: sink_rope_offset(settings.seed, clip, b as u64),
            audio: None,
        })
        .collect();
    let mut traffic = Traffic::default();
    for tick in 0..blocks + steps - 1 {
        // The pairs (block, step) with block + step = tick, by step.
        let pairs: Vec<(usize, usize)> = (0..steps)
            .filter(|&s| tick >= s && tick - s < blocks)
            .map(|s| (tick - s, s))
            .collect();
        let mut running: Vec<(Tensor<B, 3>, BlockPass<B>)> = Vec::with_capacity(pairs.len());
        for &(b, s) in &pairs {
            if s == 0 {
                states[b].audio = input
                    .audio
                    .as_ref()
                    .map(|a| block_audio(resident, settings, a, b));
            }
            let st = &states[b];
            let t = vec![f64::from(settings.schedule.timesteps[s]); fpb];
            running.push(begin_block(
                resident,
                ring_tokens,
                &carry.sink_groups,
                st.latent.clone(),
                st.cond.clone(),
                &t,
                st.first,
                st.offset,
                settings.rope_fp16,
            ));
        }
        let mut need = Need {
            rings: vec![false; steps],
            sink: true,
        };
        for &(_, s) in &pairs {
            need.rings[s] = true;
        }
        let mut failure = None;
        let t = stream_layers(model, &mut carry.layers, &need, |layer, dev, host| {
            let mut down = 0;
            let Some(sink) = dev.sink.as_ref() else {
                return 0;
            };
            for (&(b, s), (x, pass)) in pairs.iter().zip(running.iter_mut()) {
                let Some(ring) = dev.rings[s].as_mut() else {
                    continue;
                };
                let y = std::mem::replace(x, Tensor::zeros([1, 1, 1], &sink.k.device()));
                *x = layer_forward(
                    resident,
                    &dev.block,
                    layer,
                    ring,
                    sink,
                    pass,
                    y,
                    input.context.clone(),
                    states[b].audio.as_ref(),
                );
                let host_ring = &mut host.rings[s];
                let (at, len) = (pass.write_at, pass.len);
                let written = write_rows(&mut host_ring.k, &ring.k, at, len)
                    .and_then(|a| Ok(a + write_rows(&mut host_ring.v, &ring.v, at, len)?));
                match written {
                    Ok(n) => down += n,
                    Err(e) => {
                        failure.get_or_insert(e);
                    }
                }
            }
            down
        });
        if let Some(e) = failure {
            return Err(e);
        }
        traffic.ticks += 1;
        traffic.layer_uploads += t.layer_uploads;
        traffic.weight_bytes_up += t.weight_bytes_up;
        traffic.ring_bytes_up += t.ring_bytes_up;
        traffic.sink_bytes_up += t.sink_bytes_up;
        traffic.ring_bytes_down += t.ring_bytes_down;
        for (&(b, s), (x, pass)) in pairs.iter().zip(running) {
            let v = finish_block(resident, &pass, x);
            let st = &mut states[b];
            st.latent = settings.schedule.step(s, st.latent.clone(), v);
        }
    }
    let latents = Tensor::cat(states.into_iter().map(|s| s.latent).collect(), 2);
    let keep = carry.motion.dims()[2];
    let joined = Tensor::cat(vec![carry.motion.clone(), latents.clone()], 2);
    let total = joined.dims()[2];
    carry.motion = joined.narrow(2, total - keep, keep);
    carry.frames_done += settings.frames_per_clip();
    carry.clip += 1;
    Ok(StreamedClip {
        latents,
        carry,
        traffic,
    })
}
