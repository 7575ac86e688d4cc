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

use std::path::Path;
use std::time::Instant;

use burn::prelude::*;
use burn::tensor::module::attention;
use burn::tensor::ops::AttentionModuleOptions;
use burn::tensor::{bf16, f16};
use burn_cuda::Cuda;
use wan::causal_loop::{forward_block, DitCarry, KvPair};
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
        ("resume", phase) => bench::resume::<Bf>(
            phase,
            Path::new(arg(3)),
            "full",
            std::env::var_os("GPU_CHECK_SYNC").is_some(),
            &Default::default(),
        ),
        _ => Err(format!("usage: see the doc comment of {}", file!())),
    };
    if let Err(e) = result {
        println!("{{\"error\":{:?}}}", e);
        std::process::exit(1);
    }
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
    let (cold, ms) = bench::time::<B, _>(&device, 10, || a.clone().matmul(b.clone()));
    let tflops = 2.0 * 3168.0 * 5120.0 * 13824.0 / (ms * 1e-3) / 1e12;
    println!("{{\"check\":\"matmul 3168x5120x13824\",\"dtype\":\"{dt}\",\"cold_ms\":{cold:.1},\"ms\":{ms:.3},\"tflops\":{tflops:.0}}}");

    let (lq, lk) = (3168, 15312);
    let flops = 4.0 * 40.0 * lq as f64 * lk as f64 * 128.0;
    // [B, H, L, D] contiguous, as burn's attention takes it.
    let q = Tensor::<B, 4>::random([1, 40, lq, 128], normal, &device);
    let k = Tensor::<B, 4>::random([1, 40, lk, 128], normal, &device);
    let v = Tensor::<B, 4>::random([1, 40, lk, 128], normal, &device);
    let (cold, ms) = bench::time::<B, _>(&device, 10, || {
        attention(q.clone(), k.clone(), v.clone(), None, None, opts())
    });
    println!("{{\"check\":\"attention q3168 k15312 BHLD contiguous\",\"dtype\":\"{dt}\",\"cold_ms\":{cold:.1},\"ms\":{ms:.3},\"tflops\":{:.0}}}", flops / (ms * 1e-3) / 1e12);
    // [B, L, H, D] buffers seen through swap_dims, as wan's sdpa passes them.
    let qs = Tensor::<B, 4>::random([1, lq, 40, 128], normal, &device);
    let ks = Tensor::<B, 4>::random([1, lk, 40, 128], normal, &device);
    let vs = Tensor::<B, 4>::random([1, lk, 40, 128], normal, &device);
    let (cold, ms) = bench::time::<B, _>(&device, 10, || {
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
    let (cold, ms) = bench::time::<B, _>(&device, 10, || {
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
        bench::sync::<B>(&device);
        let setup = t0.elapsed().as_secs_f64();
        let noisy = Tensor::<B, 5>::random([1, 16, 3, lh, lw], normal, &device);
        let cond = Tensor::<B, 5>::zeros([1, 16, 3, lh, lw], &device);
        let t = [857.69; 3];
        // Frame 24: the ring (12 frames) is full, as in every clip after the first.
        let (cold, ms) = bench::time::<B, _>(&device, 10, || {
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
