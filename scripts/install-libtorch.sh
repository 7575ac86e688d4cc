#!/usr/bin/env bash
# Installs the pinned PyTorch from PyPI into a virtual environment for the `tch` build (the
# LibTorch backend), then prints the environment the build and the binaries need, as `export`
# lines for the shell to evaluate:
#
#   eval "$(scripts/install-libtorch.sh)" && cargo build --release -p reelspool --features tch
#
# The virtual environment is REELSPOOL_TORCH_VENV, default target/libtorch-venv of this checkout
# (about 6-7 GB: PyPI's Linux torch is the CUDA build with its nvidia-* libraries). Running it
# again with the pinned version in place installs nothing and takes well under a second. All
# progress goes to stderr; stdout carries only the export lines.
#
# The pin: torch 2.11.0 is what tch 0.24 (the workspace's [patch] of burn-tch, see Cargo.toml)
# is written against, and the version of the GPU machines' image (2.11.0+cu130), so a binary
# built here runs there against that machine's own torch libraries.
set -euo pipefail
TORCH_VERSION=2.11.0
here="$(cd "$(dirname "$0")/.." && pwd)"
venv="${REELSPOOL_TORCH_VENV:-$here/target/libtorch-venv}"
marker="$venv/.reelspool-torch-$TORCH_VERSION"
if [ ! -f "$marker" ]; then
  echo "install-libtorch: installing torch==$TORCH_VERSION into $venv" >&2
  python="${PYTHON:-python3}"
  if [ ! -x "$venv/bin/python" ]; then
    "$python" -m venv "$venv" >&2
  fi
  "$venv/bin/python" -m pip install --quiet --disable-pip-version-check \
    "torch==$TORCH_VERSION" >&2
  # Checks the install imports before marking it done.
  "$venv/bin/python" -W ignore -c "import torch; assert torch.__version__.split('+')[0] == '$TORCH_VERSION', torch.__version__" >&2
  touch "$marker"
fi
# torch/lib of the venv, found without importing torch (which takes seconds).
lib="$(ls -d "$venv"/lib/python3*/site-packages/torch/lib 2>/dev/null | head -n 1)"
if [ -z "$lib" ] || [ ! -f "$lib/libtorch_cpu.so" ]; then
  echo "install-libtorch: no torch/lib/libtorch_cpu.so under $venv; remove $marker and run again" >&2
  exit 1
fi
# torch-sys and burn-tch's build scripts ask `python` (when VIRTUAL_ENV is set) for torch's
# include and library folders (LIBTORCH_USE_PYTORCH); the binaries find the libraries through
# LD_LIBRARY_PATH (the build writes no rpath).
printf "export LIBTORCH_USE_PYTORCH=1\n"
printf "export VIRTUAL_ENV='%s'\n" "$venv"
printf "export PATH='%s/bin':\"\$PATH\"\n" "$venv"
printf "export LD_LIBRARY_PATH='%s'\"\${LD_LIBRARY_PATH:+:\$LD_LIBRARY_PATH}\"\n" "$lib"
