//! GPU checks of the native engine on the LibTorch backend (issue 24), built with
//! `--features tch` and run on a machine with the matching torch (2.11.0) on
//! `LD_LIBRARY_PATH`. Every result is one JSON line on stdout. The device is CUDA device 0
//! when CUDA is usable, else the CPU (so the same commands run here at a small size).
//!
//! ```text
//! tch-check write-block DIR full|small      the block check's weights and inputs (bf16 files)
//! tch-check block DIR OUT [REPS]            one causal DiT block on LibTorch<bf16>, timed;
//!                                           its output written to OUT for the comparison
//! tch-check block-f32 DIR OUT [REPS]        the same on LibTorch<f32> (the bf16 files
//!                                           widened): checks this block's math against the
//!                                           PyTorch script's f32 run
//! tch-check clip full|small [LAYERS [H W]]  two whole 4-step clips of a random model
//!                                           (704*384 is latent 48 x 88), seconds per clip
//! tch-check resume full|from DIR [small]    resume determinism across processes
//! ```
//!
//! Deterministic mode is on as in a worker: `CUBLAS_WORKSPACE_CONFIG` before CUDA starts,
//! `wan::libtorch::set_deterministic()`.

#[path = "common/bench.rs"]
mod bench;

use std::path::Path;

use burn::tensor::bf16;
use wan::libtorch::{LibTorch, LibTorchDevice};

type Bf = LibTorch<bf16>;
type Fp = LibTorch<f32>;

fn main() {
    let (key, value) = wan::libtorch::CUBLAS_WORKSPACE_CONFIG;
    if std::env::var_os(key).is_none() {
        std::env::set_var(key, value);
    }
    if let Err(e) = wan::libtorch::set_deterministic() {
        println!("{{\"error\":{:?}}}", e.to_string());
        std::process::exit(1);
    }
    let device: LibTorchDevice = wan::libtorch::worker_device();
    let args: Vec<String> = std::env::args().collect();
    let arg = |i: usize| args.get(i).map(String::as_str).unwrap_or("");
    let num = |i: usize, default: usize| arg(i).parse().unwrap_or(default);
    let result = match arg(1) {
        "write-block" => bench::BlockDims::by_name(arg(3))
            .and_then(|d| bench::write_block_files(Path::new(arg(2)), d)),
        "block" => bench::run_block::<Bf>(
            Path::new(arg(2)),
            Path::new(arg(3)),
            "libtorch bf16",
            num(4, 10),
            1,
            &device,
        ),
        "block-f32" => bench::run_block::<Fp>(
            Path::new(arg(2)),
            Path::new(arg(3)),
            "libtorch f32",
            num(4, 3),
            1,
            &device,
        ),
        "clip" => bench::clip_config(arg(2), num(3, 0)).and_then(|cfg| {
            let latent = if arg(2) == "full" { [48, 88] } else { [8, 8] };
            bench::run_clips::<Bf>(&cfg, [num(4, latent[0]), num(5, latent[1])], &device)
        }),
        "resume" => bench::resume::<Bf>(arg(2), Path::new(arg(3)), arg(4), true, &device),
        _ => Err(format!("usage: see the doc comment of {}", file!())),
    };
    if let Err(e) = result {
        println!("{{\"error\":{:?}}}", e);
        std::process::exit(1);
    }
}
