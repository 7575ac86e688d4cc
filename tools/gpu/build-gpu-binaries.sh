#!/bin/bash
# Builds and strips the programs tools/gpu/run-tch.sh runs on a GPU machine (which has no Rust
# toolchain), into target/gpu/, and checks they fit what a device run may carry (64 MiB).
# Usage, from the repository root: tools/gpu/build-gpu-binaries.sh [--no-cuda]
#   tch-check       wan's LibTorch check program (links the machine's torch at run time)
#   gpu-check       burn-cuda (default features: fusion + autotune)
#   gpu-check-wmma  the same with cubecl-cuda's ptx-wmma feature
# Carry target/gpu to the device run, e.g. `tools/gpu/run-tch.sh 540` with carry ["target/gpu"].
set -euo pipefail
cd "$(dirname "$0")/../.."
eval "$(scripts/install-libtorch.sh)"
mkdir -p target/gpu
cargo build --release -p wan --features tch --example tch-check
strip -o target/gpu/tch-check target/release/examples/tch-check
if [ "${1:-}" != "--no-cuda" ]; then
  cargo build --release -p wan --features cuda --example gpu-check
  strip -o target/gpu/gpu-check target/release/examples/gpu-check
  cargo build --release -p wan --features cuda-ptx-wmma --example gpu-check
  strip -o target/gpu/gpu-check-wmma target/release/examples/gpu-check
fi
ls -l target/gpu
total=$(du -cb target/gpu/* | tail -n 1 | cut -f 1)
echo "total $total bytes ($(( total / 1048576 )) MiB) of 64 MiB"
[ "$total" -le $(( 64 * 1048576 )) ] || { echo "too large to carry" >&2; exit 1; }
