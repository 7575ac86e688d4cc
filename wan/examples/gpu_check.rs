//! GPU checks of the native Live Avatar engine (issue 12), built with `--features cuda` and run
//! on a machine with an NVIDIA GPU. Every result is one JSON line on stdout.
//!
//! ```text
//! gpu-check ops    bf16|f16|f32        matmul and attention at Live Avatar's sizes
//! gpu-check block  bf16|f16|f32 L...   one causal streaming forward (704*384, 3 latent frames,
//!                                      12672 ring + 2640 sink keys) of the 14B widths with L
//!                                      blocks, random weights; per-block time = difference
//! gpu-check block-file DIR OUT [PAD]   the block check of `tch-check` (issue 24) on burn-cuda
//!                                      bf16: the same block files, queries padded to a
//!                                      multiple of PAD (1: none), output written to OUT
//! gpu-check resume full|from DIR       resume determinism: `full` renders clips 0..4 of a small
//!                                      random model (weights written to DIR as bf16 safetensors,
//!                                      loaded back like a checkpoint), saves the carry after clip
//!                                      1 and every clip's latents; it also resumes in-process with
//!                                      a fresh model and with the same one. `from` is a new
//!                                      process resuming from DIR's carry.
//! ```
//!
//! Kernel and autotune caches follow cubecl's own configuration (`cubecl.toml` in the working
//! directory), so the calling script decides whether two processes share tuning results.

#[path = "common/bench.rs"]
mod bench;

use std::path::{Path, PathBuf};
use std::time::Instant;

use burn::prelude::*;
use burn::tensor::module::attention;
use burn::tensor::ops::AttentionModuleOptions;
use burn::tensor::{bf16, f16, TensorData};
use burn_cuda::Cuda;
use safetensors::tensor::{Dtype, TensorView};
use wan::causal_loop::{forward_block, run_clip, CausalSettings, ClipInput, DitCarry, KvPair};
use wan::keys::list_params;
use wan::loader::load_s2v_file;
use wan::rope::RopeGroup;
use wan::{S2vConfig, WanS2v};

type Bf = Cuda<bf16, i32>;
type Hf = Cuda<f16, i32>;
type Fp = Cuda<f32, i32>;

fn main() {
    let args: Vec<String> = std::env::args().collect();
    let arg = |i: usize| args.get(i).map(String::as_str).unwrap_or("");
    let result = match (arg(1), arg(2)) {
        ("ops", "bf16") => ops::<Bf>("bf16"),
        ("ops", "f16") => ops::<Hf>("f16"),
        ("ops", "f32") => ops::<Fp>("f32"),
        ("block", dt) => {
            let layers: Vec<usize> = args[3..].iter().filter_map(|s| s.parse().ok()).collect();
            match dt {
                "bf16" => block::<Bf>("bf16", &layers),
                "f16" => block::<Hf>("f16", &layers),
                _ => block::<Fp>("f32", &layers),
            }
        }
        ("block-file", dir) => bench::run_block::<Bf>(
            Path::new(dir),
            Path::new(arg(3)),
            if cfg!(feature = "cuda-ptx-wmma") {
                "burn-cuda bf16 ptx-wmma"
            } else {
                "burn-cuda bf16"
            },
            10,
            arg(4).parse().unwrap_or(1),
            &Default::default(),
        ),
        ("resume", phase) => resume::<Bf>(phase, Path::new(arg(3))),
        _ => Err(format!("usage: see the doc comment of {}", file!())),
    };
    if let Err(e) = result {
        println!("{{\"error\":{:?}}}", e);
        std::process::exit(1);
    }
}

fn sync<B: Backend>(device: &B::Device) {
    B::sync(device).expect("device sync");
}

/// Milliseconds of the first call (compile + autotune + run), then the median of 10 timed
/// calls after 2 warm-ups, each followed by a device sync.
fn time<B: Backend, T>(device: &B::Device, mut f: impl FnMut() -> T) -> (f64, f64) {
    let t0 = Instant::now();
    drop(f());
    sync::<B>(device);
    let cold = t0.elapsed().as_secs_f64() * 1e3;
    for _ in 0..2 {
        drop(f());
        sync::<B>(device);
    }
    let mut v: Vec<f64> = (0..10)
        .map(|_| {
            let t = Instant::now();
            drop(f());
            sync::<B>(device);
            t.elapsed().as_secs_f64() * 1e3
        })
        .collect();
    v.sort_by(|a, b| a.total_cmp(b));
    (cold, v[5])
}

fn opts() -> AttentionModuleOptions {
    AttentionModuleOptions {
        scale: None,
        softcap: None,
        is_causal: false,
    }
}

fn ops<B: Backend>(dt: &str) -> Result<(), String> {
    let device = B::Device::default();
    let normal = burn::tensor::Distribution::Normal(0.0, 1.0);
    let a = Tensor::<B, 2>::random([3168, 5120], normal, &device);
    let b = Tensor::<B, 2>::random([5120, 13824], normal, &device);
    let (cold, ms) = time::<B, _>(&device, || a.clone().matmul(b.clone()));
    let tflops = 2.0 * 3168.0 * 5120.0 * 13824.0 / (ms * 1e-3) / 1e12;
    println!("{{\"check\":\"matmul 3168x5120x13824\",\"dtype\":\"{dt}\",\"cold_ms\":{cold:.1},\"ms\":{ms:.3},\"tflops\":{tflops:.0}}}");

    let (lq, lk) = (3168, 15312);
    let flops = 4.0 * 40.0 * lq as f64 * lk as f64 * 128.0;
    // [B, H, L, D] contiguous, as burn's attention takes it.
    let q = Tensor::<B, 4>::random([1, 40, lq, 128], normal, &device);
    let k = Tensor::<B, 4>::random([1, 40, lk, 128], normal, &device);
    let v = Tensor::<B, 4>::random([1, 40, lk, 128], normal, &device);
    let (cold, ms) = time::<B, _>(&device, || {
        attention(q.clone(), k.clone(), v.clone(), None, None, opts())
    });
    println!("{{\"check\":\"attention q3168 k15312 BHLD contiguous\",\"dtype\":\"{dt}\",\"cold_ms\":{cold:.1},\"ms\":{ms:.3},\"tflops\":{:.0}}}", flops / (ms * 1e-3) / 1e12);
    // [B, L, H, D] buffers seen through swap_dims, as wan's sdpa passes them.
    let qs = Tensor::<B, 4>::random([1, lq, 40, 128], normal, &device);
    let ks = Tensor::<B, 4>::random([1, lk, 40, 128], normal, &device);
    let vs = Tensor::<B, 4>::random([1, lk, 40, 128], normal, &device);
    let (cold, ms) = time::<B, _>(&device, || {
        attention(
            qs.clone().swap_dims(1, 2),
            ks.clone().swap_dims(1, 2),
            vs.clone().swap_dims(1, 2),
            None,
            None,
            opts(),
        )
    });
    println!("{{\"check\":\"attention q3168 k15312 BLHD swapped view (wan sdpa)\",\"dtype\":\"{dt}\",\"cold_ms\":{cold:.1},\"ms\":{ms:.3},\"tflops\":{:.0}}}", flops / (ms * 1e-3) / 1e12);
    // Scores materialised: matmul, softmax, matmul.
    let scale = 1.0 / (128f64).sqrt();
    let (cold, ms) = time::<B, _>(&device, || {
        let s = q.clone().matmul(k.clone().swap_dims(2, 3)) * scale;
        burn::tensor::activation::softmax(s, 3).matmul(v.clone())
    });
    println!("{{\"check\":\"attention q3168 k15312 matmul-softmax-matmul\",\"dtype\":\"{dt}\",\"cold_ms\":{cold:.1},\"ms\":{ms:.3},\"tflops\":{:.0}}}", flops / (ms * 1e-3) / 1e12);
    Ok(())
}

/// One causal streaming forward at 704*384 with the 14B widths and `layers` blocks.
fn block<B: Backend>(dt: &str, layer_counts: &[usize]) -> Result<(), String> {
    let device = B::Device::default();
    let normal = burn::tensor::Distribution::Normal(0.0, 1.0);
    for &layers in layer_counts {
        let t0 = Instant::now();
        let mut cfg = S2vConfig::s2v_14b();
        cfg.num_layers = layers;
        cfg.audio_inject_layers = vec![0];
        let model = WanS2v::<B>::new(&cfg, &device);
        // 704*384 video: latent 88 x 48, 1056 tokens per latent frame (24 x 44 after
        // patching). The carry is built directly (a full ring of 12 frames, 2640 sink keys in
        // groups shaped like the reference + frame-packed motion ones) instead of by the sink
        // prefill, so no frame-packer convolution has to compile at this size.
        let (lh, lw) = (48, 88);
        let (rows, cols) = (24, 44);
        let hd = cfg.head_dim();
        let context = Tensor::<B, 3>::random([1, 512, cfg.dim], normal, &device) * 0.1;
        let kv = |tokens: usize| KvPair {
            k: Tensor::<B, 4>::random([1, tokens, cfg.num_heads, hd], normal, &device),
            v: Tensor::<B, 4>::random([1, tokens, cfg.num_heads, hd], normal, &device),
        };
        let sink_groups = vec![
            RopeGroup::grid(30, 1, rows, cols),
            RopeGroup::grid(-1, 1, rows, cols),
            RopeGroup::grid(-3, 1, rows / 2, cols / 2),
            RopeGroup::grid(-19, 1, rows / 2, cols / 2),
        ];
        let sink_tokens: usize = sink_groups.iter().map(RopeGroup::len).sum();
        let mut carry = DitCarry {
            rings: vec![(0..layers).map(|_| kv(12 * rows * cols)).collect()],
            sink: (0..layers).map(|_| kv(sink_tokens)).collect(),
            sink_groups,
            frames_done: 24,
            clip: 2,
            motion: Tensor::zeros([1, 16, 19, lh, lw], &device),
            grid_hw: [rows, cols],
            vae_decode: None,
        };
        sync::<B>(&device);
        let setup = t0.elapsed().as_secs_f64();
        let noisy = Tensor::<B, 5>::random([1, 16, 3, lh, lw], normal, &device);
        let cond = Tensor::<B, 5>::zeros([1, 16, 3, lh, lw], &device);
        let t = [857.69; 3];
        // Frame 24: the ring (12 frames) is full, as in every clip after the first.
        let (cold, ms) = time::<B, _>(&device, || {
            forward_block(
                &model,
                &mut carry,
                0,
                noisy.clone(),
                cond.clone(),
                &t,
                context.clone(),
                24,
                10,
                true,
                None,
            )
        });
        let keys = carry.ring_tokens() + carry.sink[0].k.dims()[1];
        println!("{{\"check\":\"causal forward 704*384 3 frames\",\"dtype\":\"{dt}\",\"layers\":{layers},\"keys\":{keys},\"setup_s\":{setup:.1},\"cold_ms\":{cold:.1},\"ms\":{ms:.3}}}");
    }
    Ok(())
}

// ---- resume determinism ----

/// A small model with the real head width (128) so attention takes the real kernels' paths.
fn resume_config() -> S2vConfig {
    let mut c = S2vConfig::tiny();
    c.dim = 512;
    c.num_heads = 4;
    c.ffn_dim = 1024;
    c.num_layers = 2;
    c.text_dim = 64;
    c.text_len = 32;
    c.freq_dim = 256;
    c.audio_inject_layers = vec![0];
    c
}

/// Deterministic normals from (seed, index) (splitmix64 + Box-Muller), host side.
fn normals(seed: u64, n: usize, scale: f32) -> Vec<f32> {
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

fn host<B: Backend, const D: usize>(
    seed: u64,
    shape: [usize; D],
    scale: f32,
    device: &B::Device,
) -> Tensor<B, D> {
    let n = shape.iter().product();
    Tensor::from_data(TensorData::new(normals(seed, n, scale), shape), device)
}

fn write_weights(cfg: &S2vConfig, file: &Path) -> Result<(), String> {
    let model = WanS2v::<Fp>::new(cfg, &Default::default());
    let entries = list_params::<Fp, _>(&model);
    let data: Vec<(String, Vec<usize>, Vec<u8>)> = entries
        .iter()
        .enumerate()
        .map(|(i, e)| {
            let n: usize = e.shape.iter().product();
            let fan_in = e.shape.get(1).copied().unwrap_or(1).max(1) as f32;
            let vals = normals(1000 + i as u64, n, 1.0 / fan_in.sqrt());
            let bytes = vals
                .iter()
                .flat_map(|v| bf16::from_f32(*v).to_le_bytes())
                .collect();
            (e.key.clone(), e.shape.clone(), bytes)
        })
        .collect();
    let views: Vec<(String, TensorView)> = data
        .iter()
        .map(|(k, s, b)| {
            (
                k.clone(),
                TensorView::new(Dtype::BF16, s.clone(), b).expect("view"),
            )
        })
        .collect();
    let bytes = safetensors::serialize(views, None).map_err(|e| e.to_string())?;
    std::fs::write(file, bytes).map_err(|e| e.to_string())
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
        let settings = CausalSettings::live_avatar(7);
        let context = host::<B, 3>(3, [1, cfg.text_len, cfg.dim], 0.5, device);
        Self {
            settings,
            context,
            lat: [16, 16],
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

/// Renders clips `from..4` from `carry`, syncing at clip boundaries when `sync_each`.
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

fn resume<B: Backend>(phase: &str, dir: &Path) -> Result<(), String> {
    let device = B::Device::default();
    std::fs::create_dir_all(dir).map_err(|e| e.to_string())?;
    let cfg = resume_config();
    let weights = dir.join("model.safetensors");
    let sync_each = std::env::var_os("GPU_CHECK_SYNC").is_some();
    let path = |name: String| -> PathBuf { dir.join(name) };
    let read = |name: String| std::fs::read(path(name)).map_err(|e| e.to_string());
    match phase {
        "full" => {
            write_weights(&cfg, &weights)?;
            let t0 = Instant::now();
            let model = load_model::<B>(&cfg, &weights, &device)?;
            let job = Job::new(&cfg, &device);
            let carry = job.start(&model, &device);
            render_from(
                &job,
                &model,
                carry,
                0,
                sync_each,
                &device,
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
                "{{\"check\":\"resume full run\",\"seconds\":{:.1}}}",
                t0.elapsed().as_secs_f64()
            );
            let carry_bytes = read("carry-1.bin".into())?;
            // Clips `from..4` of `model` from `carry`, each compared with the first run's.
            let pass =
                |name: &str, model: &WanS2v<B>, carry: DitCarry<B>, from: u64, keep: bool| {
                    render_from(
                        &job,
                        model,
                        carry,
                        from,
                        sync_each,
                        &device,
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
                || DitCarry::<B>::from_bytes(&carry_bytes, &device).map_err(|e| e.to_string());
            pass(
                "same model, carry from bytes",
                &model,
                from_bytes()?,
                2,
                true,
            )?;
            let fresh = load_model::<B>(&cfg, &weights, &device)?;
            pass(
                "fresh model, carry from bytes",
                &fresh,
                from_bytes()?,
                2,
                false,
            )?;
            // The uninterrupted run again in the same process: is the loop itself repeatable?
            pass(
                "uninterrupted again",
                &model,
                job.start(&model, &device),
                0,
                false,
            )?;
            Ok(())
        }
        "from" => {
            let t0 = Instant::now();
            let model = load_model::<B>(&cfg, &weights, &device)?;
            let job = Job::new(&cfg, &device);
            let carry = DitCarry::<B>::from_bytes(&read("carry-1.bin".into())?, &device)
                .map_err(|e| e.to_string())?;
            render_from(
                &job,
                &model,
                carry,
                2,
                sync_each,
                &device,
                |clip, lat, _| {
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
                },
            )?;
            println!(
                "{{\"check\":\"resume new process\",\"seconds\":{:.1}}}",
                t0.elapsed().as_secs_f64()
            );
            Ok(())
        }
        other => Err(format!("unknown resume phase `{other}`: full or from")),
    }
}
