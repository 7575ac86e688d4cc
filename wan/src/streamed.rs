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
//! - **Hybrid** ([`MemoryMode::Hybrid`]): the first `n` blocks stay on the device with their
//!   rings and sink slices ([`HostDitCarry::resident`]); only blocks `n..` are streamed. The
//!   first streamed layer's upload runs while the resident layers compute. `n = 0` is the
//!   streamed mode, `n = layers` runs the same tick loop with nothing streamed.
//!
//! # Uploads, pinned memory and streams, by backend
//!
//! Every upload (a block's parameters, a ring, a sink slice) goes through
//! `Backend::staging` first (`staged`): the host copy is duplicated into a staging buffer
//! that the upload then consumes. The long-lived host copies stay in ordinary memory: Burn's
//! uploads take their data by value, and a copy of a pinned buffer is an ordinary one, so
//! pinning them once would not make later uploads pinned (and 72 GB of page-locked memory
//! would exhaust the pool). What staging does, by backend, in Burn 0.21:
//!
//! - **cubecl (`Cuda`, and `Fusion<Cuda>`, which forwards to it)**: the bytes are copied into
//!   a page-locked (pinned) buffer from the device's pinned-memory pool (cubecl-cuda's
//!   `reserve_cpu(.., pinned = true)`; when the pool cannot grow, ordinary memory), so the
//!   upload is an asynchronous DMA copy of any size (without staging, cubecl copies tensors
//!   above 100 MB, such as a 259 MB ring, synchronously from pageable memory). cubecl gives each
//!   host thread its own stream (`StreamId::current()` is per thread), so the prefetch thread's
//!   uploads run on another CUDA stream than the compute; cubecl orders the two where a tensor
//!   crosses. The cost: one host memcpy into the staging buffer per upload, on the prefetch
//!   thread. Not measured on a GPU yet.
//! - **NdArray**: no-op; an "upload" is a copy in RAM.
//! - **LibTorch (`tch`)**: `staging` is Burn's default no-op, and `from_data` builds a CPU
//!   tensor from pageable memory and calls `.to(device)` on the current stream, which every
//!   thread shares: the prefetch thread prepares the copy but does not overlap it with the
//!   compute. A pinned, non-blocking path would need tch calls Burn 0.21 does not make.
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
use burn::tensor::TensorCreationOptions;

use crate::block::S2vBlock;
use crate::causal::sink_rope_offset;
use crate::causal_loop::{
    begin_block, block_audio, finish_block, layer_forward, BlockAudio, BlockPass, CausalSettings,
    ClipInput, KvPair,
};
use crate::config::S2vConfig;
use crate::error::WanError;
use crate::model::WanS2v;
use crate::nn::seq_linear;

mod host_carry;
pub use host_carry::{HostDitCarry, HostKv, HostKvLayer, KvLayer};

/// Where the DiT's blocks and their carry live while a clip renders. Every mode computes the
/// same clip bit for bit on one backend; the carry converts between them at any clip boundary.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default)]
pub enum MemoryMode {
    /// Every block and the whole carry on the device; the sequential loop
    /// ([`crate::causal_loop::run_clip`]).
    #[default]
    Resident,
    /// The first `resident_blocks` blocks and their rings and sink slices on the device, the
    /// rest streamed from host memory, in the tick order ([`run_clip_streamed`]).
    Hybrid { resident_blocks: usize },
    /// Every block's weights and carry in host memory, uploaded layer by layer per tick.
    Streamed,
}

impl MemoryMode {
    /// Blocks kept on the device in a model of `layers` blocks.
    pub fn resident_blocks(self, layers: usize) -> usize {
        match self {
            MemoryMode::Resident => layers,
            MemoryMode::Hybrid { resident_blocks } => resident_blocks.min(layers),
            MemoryMode::Streamed => 0,
        }
    }

    pub fn name(self) -> &'static str {
        match self {
            MemoryMode::Resident => "resident",
            MemoryMode::Hybrid { .. } => "hybrid",
            MemoryMode::Streamed => "streamed",
        }
    }
}

impl std::fmt::Display for MemoryMode {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            MemoryMode::Hybrid { resident_blocks } => {
                write!(f, "hybrid ({resident_blocks} blocks resident)")
            }
            other => f.write_str(other.name()),
        }
    }
}

fn err(message: impl Into<String>) -> WanError {
    WanError::Carry {
        message: message.into(),
    }
}

/// The sizes a block skeleton is built from.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct BlockShape {
    pub dim: usize,
    pub ffn_dim: usize,
    pub heads: usize,
    pub eps: f64,
}

impl BlockShape {
    pub fn of(cfg: &S2vConfig) -> Self {
        Self {
            dim: cfg.dim,
            ffn_dim: cfg.ffn_dim,
            heads: cfg.num_heads,
            eps: cfg.eps,
        }
    }
}

/// One parameter of a block in host memory.
#[derive(Debug, Clone)]
enum HostParam {
    Float(TensorData),
    Int(TensorData),
    /// The float weight of an fp8 layer (nothing stored; the layer's codes are).
    Dropped,
}

/// One block's parameters in host memory, in the module's visiting order: float tensors in
/// the float dtype, or for an fp8 block the E4M3 codes (one byte each) and their 256-entry
/// table in place of each linear weight.
#[derive(Debug, Clone)]
pub struct HostBlock {
    params: Vec<HostParam>,
    fp8: bool,
}

impl HostBlock {
    /// Moves a block's parameters to host memory (read back from the device).
    pub fn from_block<B: Backend>(block: S2vBlock<B>) -> Self {
        let mut d = Download(Vec::new());
        block.visit(&mut d);
        let fp8 = d.0.iter().any(|p| matches!(p, HostParam::Dropped));
        Self { params: d.0, fp8 }
    }

    /// Bytes held (and uploaded per layer visit).
    pub fn bytes(&self) -> u64 {
        self.params
            .iter()
            .map(|p| match p {
                HostParam::Float(d) | HostParam::Int(d) => d.bytes.len() as u64,
                HostParam::Dropped => 0,
            })
            .sum()
    }

    pub fn is_fp8(&self) -> bool {
        self.fp8
    }
}

/// A copy of `data` for an upload to `device`, in a staging buffer where the backend has
/// them (pinned memory on cubecl: see the module docs).
pub(crate) fn staged<B: Backend>(data: &TensorData, device: &B::Device) -> TensorData {
    let mut copy = data.clone();
    B::staging(std::iter::once(&mut copy), device);
    copy
}

/// Collects a module's parameters as host data, in visiting order.
struct Download(Vec<HostParam>);

impl<B: Backend> ModuleVisitor<B> for Download {
    fn visit_float<const D: usize>(&mut self, param: &Param<Tensor<B, D>>) {
        // Every loaded parameter is initialised; an uninitialised one is the dropped float
        // weight of an fp8 layer (reading it would be a bug).
        self.0.push(if param.is_initialized() {
            HostParam::Float(param.val().into_data())
        } else {
            HostParam::Dropped
        });
    }

    fn visit_int<const D: usize>(&mut self, param: &Param<Tensor<B, D, Int>>) {
        self.0.push(HostParam::Int(param.val().into_data()));
    }
}

/// Fills a module skeleton's parameters from host data, in visiting order.
struct Upload<'a, B: Backend> {
    data: std::slice::Iter<'a, HostParam>,
    device: &'a B::Device,
    bytes: u64,
}

impl<B: Backend> ModuleMapper<B> for Upload<'_, B> {
    fn map_float<const D: usize>(&mut self, param: Param<Tensor<B, D>>) -> Param<Tensor<B, D>> {
        match self
            .data
            .next()
            .expect("host weights were taken from a block of the same structure")
        {
            HostParam::Float(data) => {
                self.bytes += data.bytes.len() as u64;
                Param::initialized(
                    param.id,
                    Tensor::from_data(staged::<B>(data, self.device), self.device),
                )
            }
            HostParam::Dropped => param,
            HostParam::Int(_) => unreachable!("a float parameter's slot holds float data"),
        }
    }

    fn map_int<const D: usize>(
        &mut self,
        param: Param<Tensor<B, D, Int>>,
    ) -> Param<Tensor<B, D, Int>> {
        match self
            .data
            .next()
            .expect("host weights were taken from a block of the same structure")
        {
            HostParam::Int(data) => {
                self.bytes += data.bytes.len() as u64;
                let options =
                    TensorCreationOptions::new(self.device.clone()).with_dtype(data.dtype);
                Param::initialized(
                    param.id,
                    Tensor::from_data(staged::<B>(data, self.device), options),
                )
            }
            _ => unreachable!("an integer parameter's slot holds integer data"),
        }
    }
}

/// The DiT split for layer streaming: the resident parts and the first
/// [`StreamedModel::resident_blocks`] blocks on the device, the other blocks' weights on the
/// host.
#[derive(Debug)]
pub struct StreamedModel<B: Backend> {
    /// The model with only its resident blocks (none when streaming everything): everything
    /// that stays on the device.
    pub resident: WanS2v<B>,
    /// Blocks `resident_blocks()..`, in host memory.
    layers: Vec<HostBlock>,
    shape: BlockShape,
    device: B::Device,
}

impl<B: Backend> StreamedModel<B> {
    /// Moves the blocks of a loaded model to host memory (block by block, so device
    /// memory is given back as it goes) and keeps the rest resident.
    pub fn from_model(model: WanS2v<B>) -> Self {
        Self::from_model_hybrid(model, 0)
    }

    /// Keeps the first `resident_blocks` blocks of a loaded model on the device and moves
    /// the others to host memory.
    pub fn from_model_hybrid(mut model: WanS2v<B>, resident_blocks: usize) -> Self {
        let device = model.patch_embedding.weight.val().device();
        let shape = BlockShape {
            dim: model.dim,
            ffn_dim: model
                .blocks
                .first()
                .map_or(0, |b| seq_linear(&b.ffn, 0).shape()[0]),
            heads: model.num_heads,
            eps: model.blocks.first().map_or(1e-6, |b| b.eps),
        };
        let keep = resident_blocks.min(model.blocks.len());
        let moved = model.blocks.split_off(keep);
        let layers = moved.into_iter().map(HostBlock::from_block).collect();
        Self::from_parts(model, layers, shape, &device)
    }

    /// A split model from its parts: `resident` holds the resident parts and the first blocks,
    /// `host` the weights of the blocks after them (as [`HostBlock::from_block`] made them),
    /// uploaded to `device`.
    pub fn from_parts(
        resident: WanS2v<B>,
        host: Vec<HostBlock>,
        shape: BlockShape,
        device: &B::Device,
    ) -> Self {
        Self {
            resident,
            layers: host,
            shape,
            device: device.clone(),
        }
    }

    /// Puts the blocks back on the device: the resident model again.
    pub fn into_model(self) -> WanS2v<B> {
        let mut model = self.resident;
        for w in &self.layers {
            model
                .blocks
                .push(upload_block(self.shape, w, &self.device).0);
        }
        model
    }

    /// Keeps the first `n` blocks on the device and the rest on the host, moving blocks
    /// either way as needed (for a mode change inside one process).
    pub fn set_resident_blocks(&mut self, n: usize) {
        let n = n.min(self.layers());
        while self.resident.blocks.len() > n {
            let block = self
                .resident
                .blocks
                .pop()
                .expect("more resident blocks than wanted, so at least one");
            self.layers.insert(0, HostBlock::from_block(block));
        }
        while self.resident.blocks.len() < n {
            let host = self.layers.remove(0);
            self.resident
                .blocks
                .push(upload_block(self.shape, &host, &self.device).0);
        }
    }

    /// Blocks in all, resident and streamed.
    pub fn layers(&self) -> usize {
        self.resident.blocks.len() + self.layers.len()
    }

    /// Blocks kept on the device (the first ones).
    pub fn resident_blocks(&self) -> usize {
        self.resident.blocks.len()
    }

    /// Host bytes of layer `layer`'s weights (0 for a resident block).
    pub fn layer_weight_bytes(&self, layer: usize) -> u64 {
        layer
            .checked_sub(self.resident_blocks())
            .and_then(|i| self.layers.get(i))
            .map_or(0, HostBlock::bytes)
    }

    /// Host bytes of all streamed blocks' weights.
    pub fn host_weight_bytes(&self) -> u64 {
        self.layers.iter().map(HostBlock::bytes).sum()
    }

    pub fn device(&self) -> &B::Device {
        &self.device
    }
}

/// A block on `device` from its host parameters; returns it and the bytes copied.
fn upload_block<B: Backend>(
    shape: BlockShape,
    weights: &HostBlock,
    device: &B::Device,
) -> (S2vBlock<B>, u64) {
    // Parameters of a fresh block are lazy: building it allocates nothing.
    let mut skeleton = S2vBlock::new(shape.dim, shape.ffn_dim, shape.heads, shape.eps, device);
    if weights.fp8 {
        skeleton.fp8_skeleton();
    }
    let mut up = Upload {
        data: weights.params.iter(),
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

/// Uploads host layer `i` (model layer `resident_blocks() + i`).
fn upload_layer<B: Backend>(
    model: &StreamedModel<B>,
    i: usize,
    kv: &HostKvLayer,
    need: &Need,
) -> DeviceLayer<B> {
    let device = &model.device;
    let (block, weight_bytes) = upload_block(model.shape, &model.layers[i], device);
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

/// Runs one pass over all layers: `resident(state)` for the resident layers while the
/// first streamed layer uploads on a background thread, then
/// `compute(state, layer, device_layer, host_state)` for every streamed layer in order (model
/// layer index), with the upload of the next one on a background thread meanwhile.
/// `compute` returns the bytes it read back to the host. Returns the traffic.
fn stream_layers<B: Backend, S>(
    model: &StreamedModel<B>,
    kv: &mut [HostKvLayer],
    need: &Need,
    state: &mut S,
    resident: impl FnOnce(&mut S),
    mut compute: impl FnMut(&mut S, usize, &mut DeviceLayer<B>, &mut HostKvLayer) -> u64,
) -> Traffic {
    let offset = model.resident_blocks();
    let mut traffic = Traffic::default();
    let first = std::thread::scope(|s| {
        let upload = kv
            .first()
            .map(|first| s.spawn(move || upload_layer(model, 0, first, need)));
        resident(state);
        upload.map(|h| h.join())
    });
    let mut current = match first {
        Some(Ok(d)) => Some(d),
        Some(Err(panic)) => std::panic::resume_unwind(panic),
        None => None,
    };
    let mut i = 0;
    while let Some(mut dev) = current.take() {
        traffic.layer_uploads += dev.traffic.layer_uploads;
        traffic.weight_bytes_up += dev.traffic.weight_bytes_up;
        traffic.ring_bytes_up += dev.traffic.ring_bytes_up;
        traffic.sink_bytes_up += dev.traffic.sink_bytes_up;
        let (done, rest) = kv.split_at_mut(i + 1);
        let host = &mut done[i];
        let next = std::thread::scope(|s| {
            let prefetch = rest
                .first()
                .map(|next_kv| s.spawn(move || upload_layer(model, i + 1, next_kv, need)));
            traffic.ring_bytes_down += compute(state, offset + i, &mut dev, host);
            drop(dev);
            prefetch.map(|h| h.join())
        });
        current = match next {
            Some(Ok(d)) => Some(d),
            Some(Err(panic)) => std::panic::resume_unwind(panic),
            None => None,
        };
        i += 1;
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
    if carry.total_layers() != model.layers() {
        return Err(err(format!(
            "carry has {} layers, the model {}",
            carry.total_layers(),
            model.layers()
        )));
    }
    if carry.resident.len() != model.resident_blocks() {
        return Err(err(format!(
            "carry keeps {} layers on the device, the model {} blocks (HostDitCarry::set_resident_layers moves them)",
            carry.resident.len(),
            model.resident_blocks()
        )));
    }
    if let Some(rings) = carry
        .layers
        .iter()
        .map(|l| l.rings.len())
        .chain(carry.resident.iter().map(|l| l.rings.len()))
        .find(|&n| n != steps)
    {
        return Err(err(format!(
            "carry has {rings} rings per layer, the schedule {steps} steps"
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
        let context = &input.context;
        let states_ref = &states;
        let mut tick_state = (&mut running, &mut carry.resident, &mut failure);
        let t = stream_layers(
            model,
            &mut carry.layers,
            &need,
            &mut tick_state,
            |(running, resident_kv, _)| {
                for (layer, (block, kv)) in resident
                    .blocks
                    .iter()
                    .zip(resident_kv.iter_mut())
                    .enumerate()
                {
                    for (&(b, s), (x, pass)) in pairs.iter().zip(running.iter_mut()) {
                        let y = std::mem::replace(x, Tensor::zeros([1, 1, 1], &kv.sink.k.device()));
                        *x = layer_forward(
                            resident,
                            block,
                            layer,
                            &mut kv.rings[s],
                            &kv.sink,
                            pass,
                            y,
                            context.clone(),
                            states_ref[b].audio.as_ref(),
                        );
                    }
                }
            },
            |(running, _, failure), layer, dev, host| {
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
                        context.clone(),
                        states_ref[b].audio.as_ref(),
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
            },
        );
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
