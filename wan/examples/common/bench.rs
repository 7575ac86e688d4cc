//! Backend-generic parts of the GPU check programs (`gpu-check` on burn-cuda, `tch-check` on
//! LibTorch): one causal DiT block from files both programs and `tools/gpu/torch_block.py`
//! read (so all three compute the same block on the same weights and inputs), a whole clip
//! of the 14B-shaped model, and the resume check across processes. Results are JSON lines.
#![allow(dead_code)]

use std::path::{Path, PathBuf};
use std::time::Instant;

use burn::prelude::*;
use burn::tensor::{bf16, TensorData};
use safetensors::tensor::{Dtype, TensorView};
use wan::block::{S2vBlock, Segment};
use wan::causal_loop::{run_clip, CausalSettings, ClipInput, DitCarry};
use wan::keys::list_params;
use wan::loader::{load_s2v_file, load_safetensors};
use wan::rope::RopeTensors;
use wan::{S2vConfig, WanS2v};

pub fn sync<B: Backend>(device: &B::Device) {
    B::sync(device).expect("device sync");
}

/// Milliseconds of the first call, then the median of `reps` timed calls after 2 warm-ups,
/// each followed by a device sync (synchronised wall clock).
pub fn time<B: Backend, T>(
    device: &B::Device,
    reps: usize,
    mut f: impl FnMut() -> T,
) -> (f64, f64) {
    let t0 = Instant::now();
    drop(f());
    sync::<B>(device);
    let cold = t0.elapsed().as_secs_f64() * 1e3;
    for _ in 0..2 {
        drop(f());
        sync::<B>(device);
    }
    let mut v: Vec<f64> = (0..reps.max(1))
        .map(|_| {
            let t = Instant::now();
            drop(f());
            sync::<B>(device);
            t.elapsed().as_secs_f64() * 1e3
        })
        .collect();
    v.sort_by(|a, b| a.total_cmp(b));
    (cold, v[v.len() / 2])
}

/// Deterministic normals from (seed, index) (splitmix64 + Box-Muller), host side.
pub fn normals(seed: u64, n: usize, scale: f32) -> Vec<f32> {
    let mut s = seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) ^ 0xD1B5_4A32_D192_ED03;
    let mut next = || {
        s = s.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = s;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        ((z ^ (z >> 31)) >> 11) as f64 / (1u64 << 53) as f64
    };
    (0..n)
        .map(|_| {
            let (u1, u2) = (next().max(1e-300), next());
            ((-2.0 * u1.ln()).sqrt() * (std::f64::consts::TAU * u2).cos()) as f32 * scale
        })
        .collect()
}

pub fn host<B: Backend, const D: usize>(
    seed: u64,
    shape: [usize; D],
    scale: f32,
    device: &B::Device,
) -> Tensor<B, D> {
    let n = shape.iter().product();
    Tensor::from_data(TensorData::new(normals(seed, n, scale), shape), device)
}

fn bf16_bytes(values: &[f32]) -> Vec<u8> {
    values
        .iter()
        .flat_map(|v| bf16::from_f32(*v).to_le_bytes())
        .collect()
}

/// Writes `(name, shape, values)` as a bf16 safetensors file.
fn write_bf16(file: &Path, tensors: &[(String, Vec<usize>, Vec<f32>)]) -> Result<(), String> {
    let bytes: Vec<(String, Vec<usize>, Vec<u8>)> = tensors
        .iter()
        .map(|(k, s, v)| (k.clone(), s.clone(), bf16_bytes(v)))
        .collect();
    let views: Vec<(String, TensorView)> = bytes
        .iter()
        .map(|(k, s, b)| {
            let view = TensorView::new(Dtype::BF16, s.clone(), b).map_err(|e| e.to_string())?;
            Ok((k.clone(), view))
        })
        .collect::<Result<_, String>>()?;
    let data = safetensors::serialize(views, None).map_err(|e| e.to_string())?;
    std::fs::write(file, data).map_err(|e| format!("{}: {e}", file.display()))
}

/// Reads tensor `key` of a safetensors file (bf16 or f32) as f32 values and its shape.
fn read_f32(bytes: &[u8], key: &str) -> Result<(Vec<usize>, Vec<f32>), String> {
    let st = safetensors::SafeTensors::deserialize(bytes).map_err(|e| e.to_string())?;
    let view = st.tensor(key).map_err(|e| format!("`{key}`: {e}"))?;
    let values = match view.dtype() {
        Dtype::BF16 => view
            .data()
            .chunks_exact(2)
            .map(|c| bf16::from_le_bytes([c[0], c[1]]).to_f32())
            .collect(),
        Dtype::F32 => view
            .data()
            .chunks_exact(4)
            .map(|c| f32::from_le_bytes([c[0], c[1], c[2], c[3]]))
            .collect(),
        other => return Err(format!("`{key}` is {other:?}, not bf16 or f32")),
    };
    Ok((view.shape().to_vec(), values))
}

/// The sizes of the block check. `full` is one causal block of the 14B model at 704*384:
/// 3 latent frames of 1056 tokens, a full ring of 12 frames, 2640 sink keys, 512 text rows.
#[derive(Debug, Clone, Copy)]
pub struct BlockDims {
    pub dim: usize,
    pub heads: usize,
    pub ffn: usize,
    pub tokens_per_frame: usize,
    pub frames: usize,
    pub ring: usize,
    pub sink: usize,
    pub text: usize,
}

impl BlockDims {
    pub fn full() -> Self {
        Self {
            dim: 5120,
            heads: 40,
            ffn: 13824,
            tokens_per_frame: 1056,
            frames: 3,
            ring: 12 * 1056,
            sink: 2640,
            text: 512,
        }
    }

    /// The same structure at a size a CPU runs in seconds (head_dim 128 as in the release).
    pub fn small() -> Self {
        Self {
            dim: 256,
            heads: 2,
            ffn: 512,
            tokens_per_frame: 64,
            frames: 3,
            ring: 12 * 64,
            sink: 160,
            text: 32,
        }
    }

    pub fn by_name(name: &str) -> Result<Self, String> {
        match name {
            "full" => Ok(Self::full()),
            "small" => Ok(Self::small()),
            other => Err(format!("block size `{other}`: full or small")),
        }
    }

    fn tokens(&self) -> usize {
        self.tokens_per_frame * self.frames
    }

    fn head_dim(&self) -> usize {
        self.dim / self.heads
    }
}

pub const WEIGHTS_FILE: &str = "block-weights.safetensors";
pub const INPUTS_FILE: &str = "block-inputs.safetensors";

/// Writes one block's weights (S2V key names, `[out, in]` linears) and its inputs into `dir`,
/// all bf16, from seeded host normals: the files every side of the block check reads.
pub fn write_block_files(dir: &Path, d: BlockDims) -> Result<(), String> {
    std::fs::create_dir_all(dir).map_err(|e| e.to_string())?;
    let t0 = Instant::now();
    let block = S2vBlock::<burn::backend::NdArray<f32>>::new(
        d.dim,
        d.ffn,
        d.heads,
        1e-6,
        &Default::default(),
    );
    let entries = list_params::<burn::backend::NdArray<f32>, _>(&block);
    let weights: Vec<(String, Vec<usize>, Vec<f32>)> = std::thread::scope(|scope| {
        let jobs: Vec<_> = entries
            .iter()
            .enumerate()
            .map(|(i, e)| {
                scope.spawn(move || {
                    let n: usize = e.shape.iter().product();
                    let fan_in = if e.shape.len() == 2 { e.shape[1] } else { 1 } as f32;
                    let scale = if e.key.contains("norm") && e.key.ends_with("weight") {
                        0.1
                    } else {
                        1.0 / fan_in.sqrt()
                    };
                    let mut v = normals(1000 + i as u64, n, scale);
                    if e.key.contains("norm") && e.key.ends_with("weight") {
                        v.iter_mut().for_each(|x| *x += 1.0);
                    }
                    (e.key.clone(), e.shape.clone(), v)
                })
            })
            .collect();
        jobs.into_iter()
            .map(|j| j.join().expect("generator thread"))
            .collect()
    });
    write_bf16(&dir.join(WEIGHTS_FILE), &weights)?;
    let (hd, pairs) = (d.head_dim(), d.head_dim() / 2);
    let angles = |seed: u64, n: usize| -> (Vec<f32>, Vec<f32>) {
        let a = normals(seed, n * pairs, 3.0);
        (
            a.iter().map(|x| x.cos()).collect(),
            a.iter().map(|x| x.sin()).collect(),
        )
    };
    let (cos, sin) = angles(20, d.tokens());
    let (sink_cos, sink_sin) = angles(21, d.sink);
    let inputs = vec![
        (
            "x".into(),
            vec![1, d.tokens(), d.dim],
            normals(10, d.tokens() * d.dim, 1.0),
        ),
        (
            "e".into(),
            vec![d.frames, 6, d.dim],
            normals(11, d.frames * 6 * d.dim, 0.1),
        ),
        (
            "context".into(),
            vec![1, d.text, d.dim],
            normals(12, d.text * d.dim, 1.0),
        ),
        (
            "ring.k".into(),
            vec![1, d.ring, d.heads, hd],
            normals(13, d.ring * d.dim, 1.0),
        ),
        (
            "ring.v".into(),
            vec![1, d.ring, d.heads, hd],
            normals(14, d.ring * d.dim, 1.0),
        ),
        (
            "sink.k".into(),
            vec![1, d.sink, d.heads, hd],
            normals(15, d.sink * d.dim, 1.0),
        ),
        (
            "sink.v".into(),
            vec![1, d.sink, d.heads, hd],
            normals(16, d.sink * d.dim, 1.0),
        ),
        ("rope.cos".into(), vec![1, d.tokens(), 1, pairs], cos),
        ("rope.sin".into(), vec![1, d.tokens(), 1, pairs], sin),
        ("sink_rope.cos".into(), vec![1, d.sink, 1, pairs], sink_cos),
        ("sink_rope.sin".into(), vec![1, d.sink, 1, pairs], sink_sin),
    ];
    write_bf16(&dir.join(INPUTS_FILE), &inputs)?;
    println!(
        "{{\"check\":\"block files written\",\"dim\":{},\"tokens\":{},\"ring\":{},\"sink\":{},\"seconds\":{:.1}}}",
        d.dim,
        d.tokens(),
        d.ring,
        d.sink,
        t0.elapsed().as_secs_f64()
    );
    Ok(())
}

struct BlockInputs<B: Backend> {
    x: Tensor<B, 3>,
    segments: Vec<Segment<B>>,
    context: Tensor<B, 3>,
    ring_k: Tensor<B, 4>,
    ring_v: Tensor<B, 4>,
    sink_k: Tensor<B, 4>,
    sink_v: Tensor<B, 4>,
    rope: RopeTensors<B>,
    sink_rope: RopeTensors<B>,
}

fn tensor<B: Backend, const D: usize>(
    bytes: &[u8],
    key: &str,
    device: &B::Device,
) -> Result<Tensor<B, D>, String> {
    let (shape, values) = read_f32(bytes, key)?;
    let data = TensorData::new(values, shape).convert::<B::FloatElem>();
    Ok(Tensor::from_data(data, device))
}

fn read_inputs<B: Backend>(dir: &Path, device: &B::Device) -> Result<BlockInputs<B>, String> {
    let path = dir.join(INPUTS_FILE);
    let bytes = std::fs::read(&path).map_err(|e| format!("{}: {e}", path.display()))?;
    let t = |k: &str| tensor::<B, 4>(&bytes, k, device);
    let e: Tensor<B, 3> = tensor(&bytes, "e", device)?;
    let x: Tensor<B, 3> = tensor(&bytes, "x", device)?;
    let frames = e.dims()[0];
    let per_frame = x.dims()[1] / frames;
    Ok(BlockInputs {
        segments: (0..frames)
            .map(|f| Segment {
                tokens: per_frame,
                e: e.clone().narrow(0, f, 1),
            })
            .collect(),
        x,
        context: tensor(&bytes, "context", device)?,
        ring_k: t("ring.k")?,
        ring_v: t("ring.v")?,
        sink_k: t("sink.k")?,
        sink_v: t("sink.v")?,
        rope: RopeTensors {
            cos: t("rope.cos")?,
            sin: t("rope.sin")?,
        },
        sink_rope: RopeTensors {
            cos: t("sink_rope.cos")?,
            sin: t("sink_rope.sin")?,
        },
    })
}

fn heads<B: Backend>(x: Tensor<B, 3>, n: usize) -> Tensor<B, 4> {
    let [b, l, c] = x.dims();
    x.reshape([b, l, n, c / n])
}

/// Attention as wan's `sdpa`, with the queries padded with zero rows to a multiple of
/// `pad_to` first when it is above 1 (a cheap try at burn-cuda's tile sizes).
fn sdpa_padded<B: Backend>(
    q: Tensor<B, 4>,
    k: Tensor<B, 4>,
    v: Tensor<B, 4>,
    pad_to: usize,
) -> Tensor<B, 3> {
    let [b, l, h, d] = q.dims();
    let padded = l.div_ceil(pad_to.max(1)) * pad_to.max(1);
    if padded == l {
        return wan::attention::sdpa(q, k, v);
    }
    let zeros = Tensor::<B, 4>::zeros([b, padded - l, h, d], &q.device());
    wan::attention::sdpa(Tensor::cat(vec![q, zeros], 1), k, v).narrow(1, 0, l)
}

/// One causal layer forward as wan's causal loop runs it (`causal_loop::layer_forward`
/// without an audio injector): modulated self-attention whose RoPE'd K/V are written into
/// the ring at slot 0, attending to the whole ring plus the re-rotated sink, then
/// cross-attention to the text and the FFN.
fn block_forward<B: Backend>(
    block: &S2vBlock<B>,
    inp: &BlockInputs<B>,
    ring_k: &mut Tensor<B, 4>,
    ring_v: &mut Tensor<B, 4>,
    pad_to: usize,
) -> Tensor<B, 3> {
    let a = &block.self_attn;
    block.forward_around(inp.x.clone(), &inp.segments, inp.context.clone(), |xin| {
        let q = inp.rope.apply(heads(
            a.norm_q.forward(a.q.forward(xin.clone())),
            a.num_heads,
        ));
        let k = inp.rope.apply(heads(
            a.norm_k.forward(a.k.forward(xin.clone())),
            a.num_heads,
        ));
        let v = heads(a.v.forward(xin), a.num_heads);
        let len = k.dims()[1];
        let take =
            |t: &mut Tensor<B, 4>| std::mem::replace(t, Tensor::zeros([1, 1, 1, 1], &t.device()));
        *ring_k = take(ring_k).slice_assign([0..1, 0..len], k);
        *ring_v = take(ring_v).slice_assign([0..1, 0..len], v);
        let keys = Tensor::cat(
            vec![ring_k.clone(), inp.sink_rope.apply(inp.sink_k.clone())],
            1,
        );
        let values = Tensor::cat(vec![ring_v.clone(), inp.sink_v.clone()], 1);
        a.o.forward(sdpa_padded(q, keys, values, pad_to))
    })
}

/// Loads the block files of `dir`, times the block (`reps` timed calls), writes its output
/// to `out` (f32 safetensors, key `out`) and prints one JSON line naming `label`.
pub fn run_block<B: Backend>(
    dir: &Path,
    out: &Path,
    label: &str,
    reps: usize,
    pad_to: usize,
    device: &B::Device,
) -> Result<(), String> {
    let t0 = Instant::now();
    let weights = dir.join(WEIGHTS_FILE);
    let bytes = std::fs::read(dir.join(INPUTS_FILE)).map_err(|e| e.to_string())?;
    let (xs, _) = read_f32(&bytes, "x")?;
    let (rs, _) = read_f32(&bytes, "ring.k")?;
    let (cs, _) = read_f32(&bytes, "context")?;
    drop(bytes);
    let (dim, heads_n) = (xs[2], rs[2]);
    let ffn = {
        let st_bytes = std::fs::read(&weights).map_err(|e| e.to_string())?;
        read_f32(&st_bytes, "ffn.0.bias")?.0[0]
    };
    let block = S2vBlock::<B>::new(dim, ffn, heads_n, 1e-6, device);
    let (block, _) =
        load_safetensors(block, dir, vec![weights], device).map_err(|e| e.to_string())?;
    let inp = read_inputs::<B>(dir, device)?;
    let (mut ring_k, mut ring_v) = (inp.ring_k.clone(), inp.ring_v.clone());
    sync::<B>(device);
    let setup = t0.elapsed().as_secs_f64();
    let result = block_forward(&block, &inp, &mut ring_k, &mut ring_v, pad_to);
    let values: Vec<f32> = result
        .into_data()
        .convert::<f32>()
        .into_vec()
        .map_err(|e| format!("{e:?}"))?;
    let bytes: Vec<u8> = values.iter().flat_map(|v| v.to_le_bytes()).collect();
    let view =
        TensorView::new(Dtype::F32, vec![1, xs[1], dim], &bytes).map_err(|e| e.to_string())?;
    let data =
        safetensors::serialize(vec![("out".to_string(), view)], None).map_err(|e| e.to_string())?;
    std::fs::write(out, data).map_err(|e| format!("{}: {e}", out.display()))?;
    let (cold, ms) = time::<B, _>(device, reps, || {
        block_forward(&block, &inp, &mut ring_k, &mut ring_v, pad_to)
    });
    println!(
        "{{\"check\":\"block\",\"backend\":{label:?},\"device\":{:?},\"dim\":{dim},\"queries\":{},\"keys\":{},\"text\":{},\"pad_q_to\":{pad_to},\"setup_s\":{setup:.1},\"cold_ms\":{cold:.1},\"ms\":{ms:.3},\"reps\":{reps}}}",
        B::name(device),
        xs[1],
        rs[1] + inp.sink_k.dims()[1],
        cs[1]
    );
    Ok(())
}

/// The 14B config with `layers` blocks (injectors at the release's positions below it), or
/// the tiny config for a CPU run.
pub fn clip_config(size: &str, layers: usize) -> Result<S2vConfig, String> {
    let mut c = match size {
        "full" => S2vConfig::s2v_14b(),
        "small" => S2vConfig::tiny(),
        other => return Err(format!("clip size `{other}`: full or small")),
    };
    if layers > 0 {
        c.num_layers = layers;
        c.audio_inject_layers.retain(|&l| l < layers);
    }
    Ok(c)
}

/// Two whole 4-step clips (48 video frames, 12 latent frames in 4 blocks) of a randomly
/// initialised model at `latent` `[h, w]` (704*384 is 48 x 88), audio injectors on; prints
/// seconds per clip (clip 0 fills the rings, clip 1 runs with them full).
pub fn run_clips<B: Backend>(
    cfg: &S2vConfig,
    latent: [usize; 2],
    device: &B::Device,
) -> Result<(), String> {
    let t0 = Instant::now();
    let model = WanS2v::<B>::new(cfg, device);
    let settings = CausalSettings::live_avatar(7);
    let [h, w] = latent;
    let f = settings.frames_per_clip();
    let context = model.embed_text(host::<B, 3>(
        3,
        [1, cfg.text_len, cfg.text_dim],
        0.5,
        device,
    ));
    let mut carry = DitCarry::start(
        &model,
        &settings,
        host::<B, 5>(1, [1, cfg.in_dim, 1, h, w], 1.0, device),
        host::<B, 5>(2, [1, cfg.in_dim, 19, h, w], 1.0, device),
        context.clone(),
    );
    sync::<B>(device);
    let setup = t0.elapsed().as_secs_f64();
    for clip in 0..2u64 {
        let input = ClipInput {
            noise: host::<B, 5>(100 + clip, [1, cfg.in_dim, f, h, w], 1.0, device),
            cond: Tensor::zeros([1, cfg.in_dim, f, h, w], device),
            context: context.clone(),
            audio: Some(host::<B, 4>(
                200 + clip,
                [1, cfg.audio_layers, cfg.audio_dim, 4 * f],
                1.0,
                device,
            )),
        };
        sync::<B>(device);
        let t = Instant::now();
        let (latents, next) = run_clip(&model, &settings, carry, input);
        carry = next;
        sync::<B>(device);
        let seconds = t.elapsed().as_secs_f64();
        let nan = latents.is_nan().any().into_scalar().elem::<bool>();
        println!(
            "{{\"check\":\"clip\",\"device\":{:?},\"clip\":{clip},\"layers\":{},\"dim\":{},\"latent\":[{h},{w}],\"video_frames\":{},\"steps\":{},\"setup_s\":{setup:.1},\"seconds\":{seconds:.3},\"nan\":{nan}}}",
            B::name(device),
            cfg.num_layers,
            cfg.dim,
            4 * f,
            settings.schedule.steps()
        );
    }
    Ok(())
}

// ---- resume determinism across processes ----

/// A small model with the real head width (128) so attention takes the real kernels' paths.
pub fn resume_config(size: &str) -> S2vConfig {
    let mut c = S2vConfig::tiny();
    if size != "small" {
        c.dim = 512;
        c.num_heads = 4;
        c.ffn_dim = 1024;
        c.num_layers = 2;
        c.text_dim = 64;
        c.text_len = 32;
        c.freq_dim = 256;
        c.audio_inject_layers = vec![0];
    }
    c
}

fn write_weights(cfg: &S2vConfig, file: &Path) -> Result<(), String> {
    type Nd = burn::backend::NdArray<f32>;
    let model = WanS2v::<Nd>::new(cfg, &Default::default());
    let entries = list_params::<Nd, _>(&model);
    let tensors: Vec<(String, Vec<usize>, Vec<f32>)> = entries
        .iter()
        .enumerate()
        .map(|(i, e)| {
            let n: usize = e.shape.iter().product();
            let fan_in = e.shape.get(1).copied().unwrap_or(1).max(1) as f32;
            (
                e.key.clone(),
                e.shape.clone(),
                normals(1000 + i as u64, n, 1.0 / fan_in.sqrt()),
            )
        })
        .collect();
    write_bf16(file, &tensors)
}

fn load_model<B: Backend>(
    cfg: &S2vConfig,
    file: &Path,
    device: &B::Device,
) -> Result<WanS2v<B>, String> {
    load_s2v_file(WanS2v::<B>::new(cfg, device), file)
        .map(|(m, _)| m)
        .map_err(|e| e.to_string())
}

struct Job<B: Backend> {
    settings: CausalSettings,
    context: Tensor<B, 3>,
    lat: [usize; 2],
}

impl<B: Backend> Job<B> {
    fn new(cfg: &S2vConfig, device: &B::Device) -> Self {
        Self {
            settings: CausalSettings::live_avatar(7),
            context: host::<B, 3>(3, [1, cfg.text_len, cfg.dim], 0.5, device),
            // 16 x 16 latents at the GPU size, 8 x 8 (the parity fixtures') for a CPU run.
            lat: if cfg.dim < 128 { [8, 8] } else { [16, 16] },
        }
    }

    fn input(&self, clip: u64, device: &B::Device) -> ClipInput<B> {
        let f = self.settings.frames_per_clip();
        let [h, w] = self.lat;
        ClipInput {
            noise: host::<B, 5>(100 + clip, [1, 16, f, h, w], 1.0, device),
            cond: Tensor::zeros([1, 16, f, h, w], device),
            context: self.context.clone(),
            audio: None,
        }
    }

    fn start(&self, model: &WanS2v<B>, device: &B::Device) -> DitCarry<B> {
        let [h, w] = self.lat;
        let r = host::<B, 5>(1, [1, 16, 1, h, w], 1.0, device);
        let m = host::<B, 5>(2, [1, 16, 19, h, w], 1.0, device);
        DitCarry::start(model, &self.settings, r, m, self.context.clone())
    }
}

fn latents_bytes<B: Backend>(t: Tensor<B, 5>) -> Result<Vec<u8>, String> {
    let v: Vec<f32> = t
        .into_data()
        .convert::<f32>()
        .into_vec()
        .map_err(|e| format!("{e:?}"))?;
    Ok(v.iter().flat_map(|x| x.to_le_bytes()).collect())
}

fn compare(label: &str, a: &[u8], b: &[u8]) {
    let f = |x: &[u8]| -> Vec<f32> {
        x.chunks_exact(4)
            .map(|c| f32::from_le_bytes([c[0], c[1], c[2], c[3]]))
            .collect()
    };
    let (a, b) = (f(a), f(b));
    let max = a
        .iter()
        .zip(&b)
        .map(|(x, y)| (x - y).abs())
        .fold(0f32, f32::max);
    let differing = a
        .iter()
        .zip(&b)
        .filter(|(x, y)| x.to_bits() != y.to_bits())
        .count();
    println!("{{\"check\":\"resume\",\"case\":{label:?},\"identical\":{},\"values\":{},\"differing\":{differing},\"max_abs_diff\":{max:e}}}", differing == 0 && a.len() == b.len(), a.len());
}

/// Renders clips `from..4` from `carry`, handing each clip's latents to `keep`; with
/// `sync_each`, the device is synchronised at every clip boundary.
fn render_from<B: Backend>(
    job: &Job<B>,
    model: &WanS2v<B>,
    mut carry: DitCarry<B>,
    from: u64,
    sync_each: bool,
    device: &B::Device,
    mut keep: impl FnMut(u64, Vec<u8>, &DitCarry<B>) -> Result<(), String>,
) -> Result<(), String> {
    for clip in from..4 {
        let (lat, next) = run_clip(model, &job.settings, carry, job.input(clip, device));
        carry = next;
        if sync_each {
            sync::<B>(device);
        }
        keep(clip, latents_bytes(lat)?, &carry)?;
    }
    Ok(())
}

/// `full`: renders clips 0..4 of a small random model (weights written to `dir` as bf16
/// safetensors and loaded back like a checkpoint), saves the carry after clip 1 and every
/// clip's latents, and resumes in-process with a fresh model and with the same one. `from`:
/// a new process resuming from `dir`'s carry, compared bit for bit with both. `sync_each`
/// synchronises the device at every clip boundary.
pub fn resume<B: Backend>(
    phase: &str,
    dir: &Path,
    size: &str,
    sync_each: bool,
    device: &B::Device,
) -> Result<(), String> {
    std::fs::create_dir_all(dir).map_err(|e| e.to_string())?;
    let cfg = resume_config(size);
    let weights = dir.join("model.safetensors");
    let path = |name: String| -> PathBuf { dir.join(name) };
    let read = |name: String| std::fs::read(path(name)).map_err(|e| e.to_string());
    match phase {
        "full" => {
            write_weights(&cfg, &weights)?;
            let t0 = Instant::now();
            let model = load_model::<B>(&cfg, &weights, device)?;
            let job = Job::new(&cfg, device);
            let carry = job.start(&model, device);
            render_from(
                &job,
                &model,
                carry,
                0,
                sync_each,
                device,
                |clip, lat, carry| {
                    std::fs::write(path(format!("full-{clip}.bin")), lat)
                        .map_err(|e| e.to_string())?;
                    if clip == 1 {
                        let bytes = carry.to_bytes().map_err(|e| e.to_string())?;
                        std::fs::write(path("carry-1.bin".into()), bytes)
                            .map_err(|e| e.to_string())?;
                    }
                    Ok(())
                },
            )?;
            println!(
                "{{\"check\":\"resume full run\",\"device\":{:?},\"seconds\":{:.1}}}",
                B::name(device),
                t0.elapsed().as_secs_f64()
            );
            let carry_bytes = read("carry-1.bin".into())?;
            let pass =
                |name: &str, model: &WanS2v<B>, carry: DitCarry<B>, from: u64, keep: bool| {
                    render_from(
                        &job,
                        model,
                        carry,
                        from,
                        sync_each,
                        device,
                        |clip, lat, _| {
                            let first = read(format!("full-{clip}.bin"))?;
                            compare(&format!("{name}, clip {clip}"), &first, &lat);
                            if keep {
                                std::fs::write(path(format!("inproc-{clip}.bin")), &lat)
                                    .map_err(|e| e.to_string())?;
                            }
                            Ok(())
                        },
                    )
                };
            let from_bytes =
                || DitCarry::<B>::from_bytes(&carry_bytes, device).map_err(|e| e.to_string());
            pass(
                "same model, carry from bytes",
                &model,
                from_bytes()?,
                2,
                true,
            )?;
            let fresh = load_model::<B>(&cfg, &weights, device)?;
            pass(
                "fresh model, carry from bytes",
                &fresh,
                from_bytes()?,
                2,
                false,
            )?;
            pass(
                "uninterrupted again",
                &model,
                job.start(&model, device),
                0,
                false,
            )
        }
        "from" => {
            let t0 = Instant::now();
            let model = load_model::<B>(&cfg, &weights, device)?;
            let job = Job::new(&cfg, device);
            let carry = DitCarry::<B>::from_bytes(&read("carry-1.bin".into())?, device)
                .map_err(|e| e.to_string())?;
            render_from(&job, &model, carry, 2, sync_each, device, |clip, lat, _| {
                compare(
                    &format!("new process vs uninterrupted, clip {clip}"),
                    &read(format!("full-{clip}.bin"))?,
                    &lat,
                );
                compare(
                    &format!("new process vs in-process resume, clip {clip}"),
                    &read(format!("inproc-{clip}.bin"))?,
                    &lat,
                );
                Ok(())
            })?;
            println!(
                "{{\"check\":\"resume new process\",\"device\":{:?},\"seconds\":{:.1}}}",
                B::name(device),
                t0.elapsed().as_secs_f64()
            );
            Ok(())
        }
        other => Err(format!("unknown resume phase `{other}`: full or from")),
    }
}
