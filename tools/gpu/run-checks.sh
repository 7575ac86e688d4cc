#!/bin/bash
# One GPU session of issue 12's checks: PyTorch reference, resume determinism across
# processes, Burn vs PyTorch per op and per causal block. Usage (on the GPU machine, from the
# repository root): tools/gpu/run-checks.sh PATH/TO/gpu-check SECONDS
# Results: $OUT/*.jsonl (one JSON object per line) and $OUT/*.err.
set -u
BIN=$(readlink -f "$1")
BUDGET=${2:-500}
O=${OUT:-/tmp/gpu-check-out}
mkdir -p "$O"
END=$(( $(date +%s) + BUDGET ))
W=$(mktemp -d)
left() { echo $(( END - $(date +%s) )); }
# part NAME MAX_SECONDS DIR CMD...: runs CMD in DIR with the smaller of MAX and what is left.
part() {
  local name=$1 max=$2 dir=$3; shift 3
  local t=$(left); [ "$t" -gt "$max" ] && t=$max
  if [ "$t" -lt 15 ]; then echo "{\"skipped\":\"$name\"}" >> "$O/skipped.jsonl"; return; fi
  local s=$(date +%s)
  (cd "$dir" && timeout "$t" "$@") > "$O/$name.jsonl" 2> "$O/$name.err"
  echo "{\"part\":\"$name\",\"rc\":$?,\"seconds\":$(( $(date +%s) - s )),\"limit\":$t}" >> "$O/parts.jsonl"
}
nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv > "$O/gpu.txt" 2>&1
mkdir -p "$W/a" "$W/b" "$W/c" "$W/kernels" "$W/tune-a" "$W/tune-c" "$W/resume"
# a and b share compiled kernels and autotune results (what the daemon's kernel cache gives
# two workers on one host); c shares the compiled kernels but tunes again.
printf '[compilation]\ncache = { file = "%s" }\n[autotune]\ncache = { file = "%s" }\n' "$W/kernels" "$W/tune-a" > "$W/a/cubecl.toml"
cp "$W/a/cubecl.toml" "$W/b/cubecl.toml"
printf '[compilation]\ncache = { file = "%s" }\n[autotune]\ncache = { file = "%s" }\n' "$W/kernels" "$W/tune-c" > "$W/c/cubecl.toml"

part torch 90 "$PWD" python3 tools/gpu/torch_block.py
part resume-full 200 "$W/a" "$BIN" resume full "$W/resume"
part resume-from-shared-tuning 60 "$W/b" "$BIN" resume from "$W/resume"
part block-bf16 150 "$W/a" "$BIN" block bf16 1 3
part ops-bf16 70 "$W/a" "$BIN" ops bf16
part resume-from-retuned 90 "$W/c" "$BIN" resume from "$W/resume"
part block-f16 90 "$W/a" "$BIN" block f16 1 3
ls -la "$W/kernels" "$W/tune-a" > "$O/cache-listing.txt" 2>&1
du -sh "$W/kernels" "$W/tune-a" "$W/tune-c" >> "$O/cache-listing.txt" 2>&1
cat "$O"/parts.jsonl
