//! Live Avatar's causal, clip-by-clip DiT loop (ENGINE.md §2.1–2.3).
//!
//! A clip is `blocks × frames_per_block` latent frames (4 × 3 in the release). Each
//! block is denoised on its own by the Euler sampler; at step `i` the block attends to
//!
//! - ring `i` of the per-step KV caches: the RoPE'd keys and values that step `i` wrote
//!   for the blocks before it (one clip long, written modulo its length, so after the
//!   first clip a block sees itself plus the previous `blocks - 1` blocks), and
//! - the sink: keys (before RoPE) and values of the reference image and frame-packed
//!   motion tokens, prefilled once at t = 0 and re-rotated on every call with the
//!   reference image moved to `max(30, frame + offset)`, where `offset` is the pinned
//!   [`sink_rope_offset`] of (seed, clip, block).
//!
//! Noisy tokens take the absolute frame position `frames_done + f`, so positions grow
//! without bound across blocks and clips. Everything clip `k + 1` needs from clip `k`
//! is in [`DitCarry`]; [`run_clip`] takes a carry and returns the clip's latents and the
//! next carry. With audio (`ClipInput::audio`) each block encodes its own window of
//! the clip's audio features and runs the audio injectors after the blocks that have
//! one (ENGINE.md §2 item 6); no audio state carries between blocks.

use burn::prelude::*;
use burn::tensor::f16;

use crate::block::{S2vBlock, Segment};
use crate::causal::{frame_segments, sink_rope_offset};
use crate::model::{WanS2v, REF_FRAME_POSITION};
use crate::rope::{RopeGroup, RopeTable, RopeTensors};
use crate::sampler::FlowSchedule;
use crate::vae::DecodeCache;

/// How clips are cut and sampled. [`CausalSettings::live_avatar`] gives the release's.
#[derive(Debug, Clone)]
pub struct CausalSettings {
    /// Latent frames denoised together (3 in the release).
    pub frames_per_block: usize,
    /// Blocks per clip (4 in the release: 12 latent frames, 48 video frames).
    pub blocks_per_clip: usize,
    /// The Euler schedule; one KV ring per step.
    pub schedule: FlowSchedule,
    /// Job seed: pins the sink RoPE offsets.
    pub seed: u64,
    /// Round the RoPE cos/sin tables to fp16, as Live Avatar's `rope_precompute`
    /// stores them (complex32). `false` keeps the f64 tables rounded to f32.
    pub rope_fp16: bool,
}

impl CausalSettings {
    /// 3 frames per block, 4 blocks, 4 Euler steps with shift 3, fp16 RoPE tables.
    pub fn live_avatar(seed: u64) -> Self {
        Self {
            frames_per_block: 3,
            blocks_per_clip: 4,
            schedule: FlowSchedule::new(4, 3.0),
            seed,
            rope_fp16: true,
        }
    }

    pub fn frames_per_clip(&self) -> usize {
        self.frames_per_block * self.blocks_per_clip
    }
}

/// Keys and values of one layer, `[1, tokens, heads, head_dim]` each.
#[derive(Debug, Clone)]
pub struct KvPair<B: Backend> {
    pub k: Tensor<B, 4>,
    pub v: Tensor<B, 4>,
}

/// Everything clip `k + 1` needs from clip `k` at the DiT's level: the exact resume state
/// (the pipeline's [`crate::pipeline::PipelineCarry`] wraps it with the job's stamp; the
/// streamed loop's [`crate::streamed::HostDitCarry`] is the same state in host memory).
#[derive(Debug, Clone)]
pub struct DitCarry<B: Backend> {
    /// `rings[step][layer]`: RoPE'd keys and values, `[1, ring_tokens, heads, head_dim]`,
    /// `ring_tokens = frames_per_clip · tokens_per_frame`, written modulo that length.
    pub rings: Vec<Vec<KvPair<B>>>,
    /// `sink[layer]`: reference + motion keys **before** RoPE and values. Live Avatar
    /// keeps one copy per step cache; prefilled at t = 0 with no noisy tokens, the
    /// copies are identical, so one is kept.
    pub sink: Vec<KvPair<B>>,
    /// RoPE groups of the sink tokens at prefill: the reference image (first, its
    /// frame position is moved per call) then the frame-packed motion groups.
    pub sink_groups: Vec<RopeGroup>,
    /// Latent frames generated so far (Live Avatar's `current_start / frame_seqlen`).
    pub frames_done: usize,
    /// Clips generated so far (the next clip's index).
    pub clip: u64,
    /// The latest motion latents `[1, 16, T, H, W]` (T = 19 in the release): the
    /// previous ones followed by each clip's latents, keeping the last T.
    pub motion: Tensor<B, 5>,
    /// Noisy-token grid per latent frame (rows, cols).
    pub grid_hw: [usize; 2],
    /// The VAE decoder's streaming cache carried across clips (filled by the job
    /// pipeline, [`crate::pipeline`]; this loop leaves it as it is). Saved with the carry.
    pub vae_decode: Option<DecodeCache<B>>,
}

/// The per-call inputs of one clip, batch 1.
#[derive(Debug, Clone)]
pub struct ClipInput<B: Backend> {
    /// Initial noise `[1, in_dim, frames_per_clip, H, W]`.
    pub noise: Tensor<B, 5>,
    /// Pose condition, same frames (Live Avatar feeds zeros).
    pub cond: Tensor<B, 5>,
    /// Embedded text (`WanS2v::embed_text`), `[1, text_len, dim]`.
    pub context: Tensor<B, 3>,
    /// The clip's wav2vec2 features per video frame, `[1, layers, audio_dim,
    /// 4 · frames_per_clip]`; each block encodes its own window ([`block_audio`]) and runs
    /// the injectors. `None` leaves the injectors out.
    pub audio: Option<Tensor<B, 4>>,
}

/// The RoPE tables of `groups` on `device`, rounded to fp16 first when `fp16`.
pub fn rope_tensors<B: Backend>(
    head_dim: usize,
    groups: &[RopeGroup],
    fp16: bool,
    device: &B::Device,
) -> RopeTensors<B> {
    let mut t = RopeTable::new(head_dim, groups);
    if fp16 {
        for v in t.cos.iter_mut().chain(t.sin.iter_mut()) {
            *v = f16::from_f64(*v).to_f64();
        }
    }
    t.to_device(device)
}

/// Frame position of the reference image for a block whose first noisy frame is at
/// `frame`: Live Avatar rolls the sink grid out by `max(0, frame - (30 - offset))`.
pub fn sink_ref_position(frame: i64, offset: i64) -> i64 {
    REF_FRAME_POSITION + (frame - (REF_FRAME_POSITION - offset)).max(0)
}

/// Sink groups with the reference image (group 0) moved to frame `ref_frame`.
fn moved_sink_groups(groups: &[RopeGroup], ref_frame: i64) -> Vec<RopeGroup> {
    let mut g = groups.to_vec();
    if let Some(r) = g.first_mut() {
        r.frames = vec![ref_frame];
    }
    g
}

fn heads<B: Backend>(x: Tensor<B, 3>, n: usize) -> Tensor<B, 4> {
    let [b, l, c] = x.dims();
    x.reshape([b, l, n, c / n])
}

/// Fills the sink: runs the reference-image tokens and the frame-packed `motion`
/// tokens through every block at t = 0 (no noisy tokens) and keeps each layer's keys
/// (before RoPE) and values. Returns the per-layer caches and the sink RoPE groups.
pub fn prefill_sink<B: Backend>(
    model: &WanS2v<B>,
    ref_latent: Tensor<B, 5>,
    motion: Tensor<B, 5>,
    context: Tensor<B, 3>,
    rope_fp16: bool,
) -> (Vec<KvPair<B>>, Vec<RopeGroup>) {
    let (mut x, segments, rope, groups) = prefill_tokens(model, ref_latent, motion, rope_fp16);
    let mut sink = Vec::with_capacity(model.blocks.len());
    for block in &model.blocks {
        let (y, kept) = prefill_layer(block, x, &segments, &rope, context.clone());
        x = y;
        sink.push(kept);
    }
    (sink, groups)
}

/// The sink prefill's start: the reference-image and frame-packed motion tokens with
/// their cond-mask rows, the t = 0 segment, the sink RoPE table and groups.
pub(crate) fn prefill_tokens<B: Backend>(
    model: &WanS2v<B>,
    ref_latent: Tensor<B, 5>,
    motion: Tensor<B, 5>,
    rope_fp16: bool,
) -> (
    Tensor<B, 3>,
    Vec<Segment<B>>,
    RopeTensors<B>,
    Vec<RopeGroup>,
) {
    let device = ref_latent.device();
    let [_, h, w] = model.grid(ref_latent.dims());
    let reference = WanS2v::tokens(&model.patch_embedding, ref_latent) + model.mask_row(1);
    let (packed, packed_groups) = model.frame_packer.forward(motion);
    let packed = packed + model.mask_row(2);
    let (h, w) = (h as i64, w as i64);
    let mut groups = vec![RopeGroup::from_grid(
        [REF_FRAME_POSITION, 0, 0],
        [REF_FRAME_POSITION + 1, h, w],
        [1, h, w],
    )];
    groups.extend(packed_groups);
    let head_dim = model.dim / model.num_heads;
    let rope = rope_tensors::<B>(head_dim, &groups, rope_fp16, &device);
    let x = Tensor::cat(vec![reference, packed], 1);
    let tokens = x.dims()[1];
    let (_, e0) = model.embed_time(&[0.0], &device);
    (x, vec![Segment { tokens, e: e0 }], rope, groups)
}

/// One layer of the sink prefill: the sink tokens through `block`, keeping the layer's
/// keys (before RoPE) and values.
pub(crate) fn prefill_layer<B: Backend>(
    block: &S2vBlock<B>,
    x: Tensor<B, 3>,
    segments: &[Segment<B>],
    rope: &RopeTensors<B>,
    context: Tensor<B, 3>,
) -> (Tensor<B, 3>, KvPair<B>) {
    let a = &block.self_attn;
    let mut kept = None;
    let x = block.forward_around(x, segments, context, |xin| {
        let q = rope.apply(heads(
            a.norm_q.forward(a.q.forward(xin.clone())),
            a.num_heads,
        ));
        let k = heads(a.norm_k.forward(a.k.forward(xin.clone())), a.num_heads);
        let v = heads(a.v.forward(xin), a.num_heads);
        let out = crate::attention::sdpa(q, rope.apply(k.clone()), v.clone());
        kept = Some(KvPair { k, v });
        a.o.forward(out)
    });
    (x, kept.expect("the attention closure ran"))
}

impl<B: Backend> DitCarry<B> {
    /// The state before the first clip: empty rings, the sink prefilled from the
    /// reference latent `[1, 16, 1, H, W]` and the initial motion latents
    /// `[1, 16, T, H, W]` (Live Avatar: the reference image repeated, VAE-encoded).
    pub fn start(
        model: &WanS2v<B>,
        settings: &CausalSettings,
        ref_latent: Tensor<B, 5>,
        motion: Tensor<B, 5>,
        context: Tensor<B, 3>,
    ) -> Self {
        let device = ref_latent.device();
        let [_, h, w] = model.grid(ref_latent.dims());
        let (sink, sink_groups) = prefill_sink(
            model,
            ref_latent,
            motion.clone(),
            context,
            settings.rope_fp16,
        );
        let ring_tokens = settings.frames_per_clip() * h * w;
        let head_dim = model.dim / model.num_heads;
        let zeros = || Tensor::<B, 4>::zeros([1, ring_tokens, model.num_heads, head_dim], &device);
        let rings = (0..settings.schedule.steps())
            .map(|_| {
                (0..model.blocks.len())
                    .map(|_| KvPair {
                        k: zeros(),
                        v: zeros(),
                    })
                    .collect()
            })
            .collect();
        Self {
            rings,
            sink,
            sink_groups,
            frames_done: 0,
            clip: 0,
            motion,
            grid_hw: [h, w],
            vae_decode: None,
        }
    }

    /// Tokens one ring holds.
    pub fn ring_tokens(&self) -> usize {
        self.rings
            .first()
            .and_then(|r| r.first())
            .map_or(0, |p| p.k.dims()[1])
    }
}

/// One DiT forward of a block of noisy latents `[1, C, F, H, W]` at per-frame times `t`
/// against step cache `step`: writes the block's RoPE'd K/V into that ring and returns
/// the predicted velocity. `audio` is the block's encoded audio ([`block_audio`]: global
/// `[1, F, 1, dim]`, local `[1, F, tokens, dim]` for the block's `F` latent frames); after
/// each block that has an injector, its noisy tokens get the per-frame AdaLN + audio
/// cross-attention residual, as in the non-causal forward. `None` leaves the injectors out.
#[allow(clippy::too_many_arguments)]
pub fn forward_block<B: Backend>(
    model: &WanS2v<B>,
    carry: &mut DitCarry<B>,
    step: usize,
    noisy: Tensor<B, 5>,
    cond: Tensor<B, 5>,
    t: &[f64],
    context: Tensor<B, 3>,
    first_frame: usize,
    sink_offset: i64,
    rope_fp16: bool,
    audio: Option<&BlockAudio<B>>,
) -> Tensor<B, 5> {
    let (mut x, pass) = begin_block(
        model,
        carry.ring_tokens(),
        &carry.sink_groups,
        noisy,
        cond,
        t,
        first_frame,
        sink_offset,
        rope_fp16,
    );
    for (layer, block) in model.blocks.iter().enumerate() {
        x = layer_forward(
            model,
            block,
            layer,
            &mut carry.rings[step][layer],
            &carry.sink[layer],
            &pass,
            x,
            context.clone(),
            audio,
        );
    }
    finish_block(model, &pass, x)
}

/// What one DiT forward of a block shares across its layers: RoPE tables of the
/// noisy and sink tokens, the per-frame modulation, the time embedding for the head,
/// and where the block's keys go in the ring. Built by [`begin_block`]; the layers run
/// through [`layer_forward`] and the head through [`finish_block`] (the resident loop
/// and the layer-streamed one share these three).
pub(crate) struct BlockPass<B: Backend> {
    rope: RopeTensors<B>,
    sink_rope: RopeTensors<B>,
    segments: Vec<Segment<B>>,
    e: Tensor<B, 2>,
    grid: [usize; 3],
    /// Noisy tokens of the block.
    pub(crate) len: usize,
    /// First ring slot the block writes.
    pub(crate) write_at: usize,
    /// Ring slots visible to the block (written so far, up to the whole ring).
    visible: usize,
}

/// Embeds a block's noisy latents and builds its [`BlockPass`] (resident parts only).
#[allow(clippy::too_many_arguments)]
pub(crate) fn begin_block<B: Backend>(
    model: &WanS2v<B>,
    ring_tokens: usize,
    sink_groups: &[RopeGroup],
    noisy: Tensor<B, 5>,
    cond: Tensor<B, 5>,
    t: &[f64],
    first_frame: usize,
    sink_offset: i64,
    rope_fp16: bool,
) -> (Tensor<B, 3>, BlockPass<B>) {
    let device = noisy.device();
    let grid = model.grid(noisy.dims());
    let [f, h, w] = grid;
    let tokens_per_frame = h * w;
    let len = f * tokens_per_frame;
    let x = WanS2v::tokens(&model.patch_embedding, noisy)
        + WanS2v::tokens(&model.cond_encoder, cond)
        + model.mask_row(0);
    let head_dim = model.dim / model.num_heads;
    let frame = first_frame as i64;
    let rope = rope_tensors::<B>(
        head_dim,
        &[RopeGroup::grid(frame, f, h, w)],
        rope_fp16,
        &device,
    );
    let sink_groups = moved_sink_groups(sink_groups, sink_ref_position(frame, sink_offset));
    let sink_rope = rope_tensors::<B>(head_dim, &sink_groups, rope_fp16, &device);

    let (e, e0) = model.embed_time(t, &device);
    let segments = frame_segments(e0, tokens_per_frame);
    let start = first_frame * tokens_per_frame;
    // Keys visible in the ring: everything written so far, up to the whole ring.
    let (write_at, visible) = if start >= ring_tokens {
        (start % ring_tokens, ring_tokens)
    } else {
        (start, start + len)
    };
    let pass = BlockPass {
        rope,
        sink_rope,
        segments,
        e,
        grid,
        len,
        write_at,
        visible,
    };
    (x, pass)
}

/// Layer `layer` (`block`) of a block forward: writes the block's RoPE'd K/V into
/// `ring` at the pass's slots, attends to the visible ring and the re-rotated `sink`,
/// then runs the layer's audio injector when it has one and `audio` is given.
#[allow(clippy::too_many_arguments)]
pub(crate) fn layer_forward<B: Backend>(
    model: &WanS2v<B>,
    block: &S2vBlock<B>,
    layer: usize,
    ring: &mut KvPair<B>,
    sink: &KvPair<B>,
    pass: &BlockPass<B>,
    x: Tensor<B, 3>,
    context: Tensor<B, 3>,
    audio: Option<&BlockAudio<B>>,
) -> Tensor<B, 3> {
    let (rope, sink_rope) = (&pass.rope, &pass.sink_rope);
    let (write_at, visible, len) = (pass.write_at, pass.visible, pass.len);
    let a = &block.self_attn;
    let x = block.forward_around(x, &pass.segments, context, |xin| {
        let q = rope.apply(heads(
            a.norm_q.forward(a.q.forward(xin.clone())),
            a.num_heads,
        ));
        let k = rope.apply(heads(
            a.norm_k.forward(a.k.forward(xin.clone())),
            a.num_heads,
        ));
        let v = heads(a.v.forward(xin), a.num_heads);
        // The ring is taken out of the carry before the write so that no other
        // handle shares its buffer and the backend can update it in place instead
        // of copying the whole ring.
        let end = write_at + len;
        let take =
            |t: &mut Tensor<B, 4>| std::mem::replace(t, Tensor::zeros([1, 1, 1, 1], &t.device()));
        ring.k = take(&mut ring.k).slice_assign([0..1, write_at..end], k);
        ring.v = take(&mut ring.v).slice_assign([0..1, write_at..end], v);
        let keys = Tensor::cat(
            vec![
                ring.k.clone().narrow(1, 0, visible),
                sink_rope.apply(sink.k.clone()),
            ],
            1,
        );
        let values = Tensor::cat(
            vec![ring.v.clone().narrow(1, 0, visible), sink.v.clone()],
            1,
        );
        a.o.forward(crate::attention::sdpa(q, keys, values))
    });
    match (
        audio,
        model.audio_inject_layers.iter().position(|&l| l == layer),
    ) {
        (Some(audio), Some(id)) => {
            model
                .audio_injector
                .inject(id, x, len, &audio.global, &audio.local)
        }
        _ => x,
    }
}

/// The head and unpatchify after the last layer: the predicted velocity
/// `[1, out_dim, F, H, W]`.
pub(crate) fn finish_block<B: Backend>(
    model: &WanS2v<B>,
    pass: &BlockPass<B>,
    x: Tensor<B, 3>,
) -> Tensor<B, 5> {
    let [f, h, w] = pass.grid;
    let head_segments: Vec<Segment<B>> = (0..f)
        .map(|i| Segment {
            tokens: h * w,
            e: pass.e.clone().narrow(0, i, 1).reshape([1, 1, model.dim]),
        })
        .collect();
    let x = model.head.forward(x, &head_segments);
    model.unpatchify(x, pass.grid)
}

/// A block's audio after the causal audio encoder: one global token
/// (`[1, F, 1, dim]`) and the local tokens (`[1, F, tokens, dim]`) per latent frame.
#[derive(Debug, Clone)]
pub struct BlockAudio<B: Backend> {
    pub global: Tensor<B, 4>,
    pub local: Tensor<B, 4>,
}

/// Video frames per latent frame (the VAE's temporal stride).
const VIDEO_FRAMES_PER_LATENT: usize = 4;

/// Encodes block `block`'s audio from the clip's features `[1, layers, audio_dim,
/// 4 · frames_per_clip]` (one row per video frame): the block's own
/// `4 · frames_per_block` video frames go through the causal audio encoder on their
/// own, prefixed with copies of their first frame and cut to the block's latent
/// frames (`CausalAudioEncoder::encode_clip`). Nothing carries between blocks.
pub fn block_audio<B: Backend>(
    model: &WanS2v<B>,
    settings: &CausalSettings,
    features: &Tensor<B, 4>,
    block: usize,
) -> BlockAudio<B> {
    let per_block = VIDEO_FRAMES_PER_LATENT * settings.frames_per_block;
    let window = features.clone().narrow(3, block * per_block, per_block);
    let (global, local) = model.casual_audio_encoder.encode_clip(window);
    BlockAudio { global, local }
}

/// Runs one clip from `carry`: each block through every Euler step (step `i` uses and
/// writes ring `i`), blocks in order. Returns the clean latents
/// `[1, out_dim, frames_per_clip, H, W]` and the carry for the next clip. The carry is
/// taken by value and updated in place (at the release size it is tens of GB; keep a
/// clone or its bytes only where a second copy is really wanted).
/// With `input.audio`, each block encodes its own window ([`block_audio`], once per block,
/// shared by its Euler steps) and runs the injectors.
///
/// # Panics
/// If `input.audio` has fewer than `4 · frames_per_clip` frames.
pub fn run_clip<B: Backend>(
    model: &WanS2v<B>,
    settings: &CausalSettings,
    carry: DitCarry<B>,
    input: ClipInput<B>,
) -> (Tensor<B, 5>, DitCarry<B>) {
    let (frames_done, clip) = (carry.frames_done, carry.clip);
    let mut next = carry;
    let fpb = settings.frames_per_block;
    let schedule = &settings.schedule;
    let mut out = Vec::with_capacity(settings.blocks_per_clip);
    for b in 0..settings.blocks_per_clip {
        let first = frames_done + b * fpb;
        let offset = sink_rope_offset(settings.seed, clip, b as u64);
        let mut x = input.noise.clone().narrow(2, b * fpb, fpb);
        let cond = input.cond.clone().narrow(2, b * fpb, fpb);
        let encoded = input
            .audio
            .as_ref()
            .map(|a| block_audio(model, settings, a, b));
        for step in 0..schedule.steps() {
            let t = vec![f64::from(schedule.timesteps[step]); fpb];
            let v = forward_block(
                model,
                &mut next,
                step,
                x.clone(),
                cond.clone(),
                &t,
                input.context.clone(),
                first,
                offset,
                settings.rope_fp16,
                encoded.as_ref(),
            );
            x = schedule.step(step, x, v);
        }
        out.push(x);
    }
    let latents = Tensor::cat(out, 2);
    let keep = next.motion.dims()[2];
    let joined = Tensor::cat(vec![next.motion.clone(), latents.clone()], 2);
    let total = joined.dims()[2];
    next.motion = joined.narrow(2, total - keep, keep);
    next.frames_done += settings.frames_per_clip();
    next.clip += 1;
    (latents, next)
}

/// The shape numbers that size a [`DitCarry`].
#[derive(Debug, Clone, Copy)]
pub struct CarryDims {
    /// Noisy tokens per latent frame: `(H/8/2)·(W/8/2)` for an H×W video.
    pub tokens_per_frame: usize,
    /// Latent frames per clip (ring length in frames).
    pub frames_per_clip: usize,
    /// Sink tokens: reference image plus frame-packed motion tokens.
    pub sink_tokens: usize,
    pub layers: usize,
    pub heads: usize,
    pub head_dim: usize,
    /// Denoising steps (one ring each).
    pub steps: usize,
    /// Motion latent elements (`16 · T · H/8 · W/8`).
    pub motion_elements: usize,
}

/// Bytes of a carry's tensors at `bytes_per_value` (2 for bf16, 4 for f32):
/// `steps·layers·2·(frames_per_clip·tokens_per_frame)·heads·head_dim` for the rings,
/// `layers·2·sink_tokens·heads·head_dim` for the sink, plus the motion latents.
pub fn carry_tensor_bytes(d: &CarryDims, bytes_per_value: usize) -> u64 {
    let kv = (d.heads * d.head_dim) as u64 * 2;
    let rings = (d.steps * d.layers) as u64 * (d.frames_per_clip * d.tokens_per_frame) as u64 * kv;
    let sink = d.layers as u64 * d.sink_tokens as u64 * kv;
    (rings + sink + d.motion_elements as u64) * bytes_per_value as u64
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sink_reference_position_follows_the_rollout() {
        // Early frames keep the reference at 30; later it leads the block by `offset`.
        assert_eq!(sink_ref_position(0, 4), 30);
        assert_eq!(sink_ref_position(25, 4), 30);
        assert_eq!(sink_ref_position(27, 4), 31);
        assert_eq!(sink_ref_position(100, 17), 117);
    }

    #[test]
    fn carry_size_at_the_release_geometry() {
        // 704×384, 48 video frames (12 latent frames), 14B: 40 layers, 40 heads of 128,
        // 4 steps, 2640 sink tokens, 19 motion latents of 88×48.
        let d = CarryDims {
            tokens_per_frame: 44 * 24,
            frames_per_clip: 12,
            sink_tokens: 2640,
            layers: 40,
            heads: 40,
            head_dim: 128,
            steps: 4,
            motion_elements: 16 * 19 * 88 * 48,
        };
        let bf16 = carry_tensor_bytes(&d, 2);
        // ENGINE.md §2.3: ≈41.5 GB of rings plus ≈2.2 GB of sink.
        assert!((43.5e9..44.0e9).contains(&(bf16 as f64)), "{bf16}");
        assert_eq!(carry_tensor_bytes(&d, 4), 2 * bf16);
    }
}
