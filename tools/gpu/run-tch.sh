#!/bin/bash
# One GPU session of issue 24's checks, LibTorch backend first. Usage, from the repository root:
#
#   tools/gpu/run-tch.sh [--cpu-smoke] [SECONDS]
#
# On the GPU machine (CUDA, Python with torch 2.11.0, no Rust): the binaries are built and
# stripped on a machine with Rust and carried in target/gpu/ (see BENCHMARKS.md, "GPU";
# build-gpu-binaries.sh makes them): tch-check (required), gpu-check and gpu-check-wmma
# (optional: burn-cuda, for the "how far is burn-cuda" line). --cpu-smoke runs every part at
# the small size on the CPU (the plumbing test; no GPU needed, the torch of
# scripts/install-libtorch.sh). SECONDS caps the whole run (default 540).
#
# Parts, in order, each with its own time limit (never more than what is left):
#   write-block     the block's weights and inputs, bf16 files both sides read
#   tch-block       one causal DiT block on LibTorch<bf16>, timed; and LibTorch<f32>
#   torch-block     the same block in plain PyTorch (tools/gpu/torch_block.py), timed, and
#                   the relative L2 of each Rust output against it (and against f32)
#   tch-clip        two whole 4-step clips of the 14B-shaped model, random bf16 weights
#   tch-resume      a small model's clips 0-3, then clips 2-3 again in a new process from the
#                   carry saved after clip 1: bit-identical or not
#   cuda-block      the block on burn-cuda (as is, queries padded to 128, ptx-wmma build)
#   torch-compare   the burn-cuda outputs against the PyTorch block
# Output: one JSON line per figure on stdout, each naming the card; also $OUT/*.jsonl, *.err.
set -u
SMOKE=0
if [ "${1:-}" = "--cpu-smoke" ]; then SMOKE=1; shift; fi
BUDGET=${1:-540}
O=${OUT:-/tmp/tch-check-out}
mkdir -p "$O"
ROOT=$(pwd)
BIN=${BIN_DIR:-$ROOT/target/gpu}
PY=${PYTHON:-python3}
END=$(( $(date +%s) + BUDGET ))
W=$(mktemp -d)
left() { echo $(( END - $(date +%s) )); }

if [ "$SMOKE" = 1 ]; then
  SIZE=small; DEV=cpu; CARD=cpu; MEM_GIB=0
else
  SIZE=full; DEV=cuda
  CARD=$(nvidia-smi --query-gpu=name --format=csv,noheader 2>/dev/null | head -n 1)
  MEM_GIB=$(( $(nvidia-smi --query-gpu=memory.total --format=csv,noheader,nounits 2>/dev/null | head -n 1) / 1024 ))
  # The binaries link torch dynamically: use this machine's own torch (the same 2.11.0).
  TORCH_LIB=$("$PY" -c 'import os, torch; print(os.path.join(os.path.dirname(torch.__file__), "lib"))')
  export LD_LIBRARY_PATH="$TORCH_LIB${LD_LIBRARY_PATH:+:$LD_LIBRARY_PATH}"
fi
CARD=${CARD:-unknown}
# The 14B-shaped clip needs weights (32.6 GB) + 4 KV rings (41.5 GB) at 40 layers: more than
# an 80 GB card holds, so a smaller card runs 20 layers (the line says how many).
if [ "$SMOKE" = 1 ]; then LAYERS=0
elif [ "${CLIP_LAYERS:-auto}" != auto ]; then LAYERS=$CLIP_LAYERS
elif [ "$MEM_GIB" -ge 120 ]; then LAYERS=40
else LAYERS=20
fi

# part NAME MAX_SECONDS CMD...: runs CMD with the smaller of MAX and what is left; every JSON
# line it prints gets the card's name and goes to stdout and $OUT/NAME.jsonl.
part() {
  local name=$1 max=$2; shift 2
  local t; t=$(left); [ "$t" -gt "$max" ] && t=$max
  if [ "$t" -lt 10 ]; then
    echo "{\"card\":\"$CARD\",\"skipped\":\"$name\"}" | tee -a "$O/skipped.jsonl"
    return
  fi
  local s; s=$(date +%s)
  timeout "$t" "$@" 2> "$O/$name.err" | sed -u "s/^{/{\"card\":\"$CARD\",\"part\":\"$name\",/" | tee -a "$O/$name.jsonl"
  local rc=${PIPESTATUS[0]}
  echo "{\"card\":\"$CARD\",\"part\":\"$name\",\"rc\":$rc,\"seconds\":$(( $(date +%s) - s )),\"limit\":$t}" | tee -a "$O/parts.jsonl"
}

T="$BIN/tch-check"
part write-block 60 "$T" write-block "$W/block" "$SIZE"
part tch-block 60 "$T" block "$W/block" "$W/out-tch-bf16.safetensors" 10
part tch-block-f32 40 "$T" block-f32 "$W/block" "$W/out-tch-f32.safetensors" 3
part torch-block 90 "$PY" -W ignore tools/gpu/torch_block.py --dir "$W/block" --device "$DEV" --reps 10 \
  --compare "libtorch bf16=$W/out-tch-bf16.safetensors" --compare "libtorch f32=$W/out-tch-f32.safetensors"
part tch-clip 120 "$T" clip "$SIZE" "$LAYERS"
RESUME_SIZE=$([ "$SMOKE" = 1 ] && echo small || echo gpu)
part tch-resume 60 "$T" resume full "$W/resume" "$RESUME_SIZE"
part tch-resume-new-process 40 "$T" resume from "$W/resume" "$RESUME_SIZE"
if [ "$SMOKE" = 0 ] && [ -x "$BIN/gpu-check" ]; then
  # burn-cuda compiles and autotunes its kernels on first use: minutes from a cold cache.
  part cuda-block 150 "$BIN/gpu-check" block-file "$W/block" "$W/out-cuda.safetensors" 1
  part cuda-block-pad128 60 "$BIN/gpu-check" block-file "$W/block" "$W/out-cuda-pad.safetensors" 128
  if [ -x "$BIN/gpu-check-wmma" ]; then
    part cuda-block-wmma 100 "$BIN/gpu-check-wmma" block-file "$W/block" "$W/out-cuda-wmma.safetensors" 1
  fi
  part torch-compare 60 "$PY" -W ignore tools/gpu/torch_block.py --dir "$W/block" --device "$DEV" --reps 3 \
    --compare "burn-cuda bf16=$W/out-cuda.safetensors" \
    --compare "burn-cuda bf16 pad128=$W/out-cuda-pad.safetensors" \
    --compare "burn-cuda bf16 ptx-wmma=$W/out-cuda-wmma.safetensors"
fi
rm -rf "$W"
