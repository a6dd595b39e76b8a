#!/usr/bin/env bash
# Proves that `--features cuda` compiles against a real CUDA toolkit, on a machine without a GPU
# or a system CUDA install: NVIDIA's toolkit wheels from PyPI go into a venv outside the repo,
# and cargo checks (or builds) the library with candle's CUDA backend against them. Nothing runs
# on a GPU. Heavy (every dependency is rebuilt with the feature, and candle-kernels' build script
# compiles 11 kernel files to PTX and 15 MoE/GGUF kernel files into libmoe.a with nvcc; on the
# shared 2-core machine at nice 10 the PTX took 16 minutes and the libmoe objects far longer),
# so it is NOT part of scripts/test.sh or CI.
#
#   scripts/check-cuda-build.sh            # cargo check --features cuda --lib
#   scripts/check-cuda-build.sh build      # cargo build --features cuda --lib (rlib: no link step)
#
# Why CUDA 13 and not 12: the cu12 wheels (`nvidia-cuda-nvcc-cu12`, every version 12.0–12.9)
# ship only `ptxas` and libnvvm, not the `nvcc` driver, `cicc` or the crt headers; candle-kernels'
# build script needs nvcc. From CUDA 13 on, `nvidia-cuda-nvcc` + `nvidia-nvvm` + `nvidia-cuda-crt`
# + `nvidia-cuda-runtime` lay out a complete toolkit under `site-packages/nvidia/cu13/` (bin/nvcc,
# nvvm/bin/cicc, include/cuda_fp16.h, …). 13.2 is pinned: cudarc 0.19 (candle 0.11) accepts
# toolkits up to 13.4, and every wheel exists at 13.2.86.
#
# Environment: CUDA_VENV (default /work/cuda-venv or ../cuda-venv), CARGO_TARGET_DIR (default
# target-cuda, kept apart from the CPU build), CUDA_COMPUTE_CAP (default 80; with no GPU nothing
# can be detected, and candle-kernels' build script then fails).
set -euo pipefail
cd "$(dirname "$0")/.."
mode=${1:-check}
case "$mode" in check | build) ;; *) echo "usage: $0 [check|build]" >&2; exit 2 ;; esac

CUDA_VERSION_PIN=13.2.86
venv=${CUDA_VENV:-$(cd .. && pwd)/cuda-venv}
if [ ! -x "$venv/bin/python" ]; then
  python3 -m venv "$venv"
fi
py="$venv/bin/python"
cuda_root() { "$py" -c 'import os, nvidia; print(os.path.join(list(nvidia.__path__)[0], "cu13"))' 2>/dev/null; }
root=$(cuda_root || true)
if [ -z "$root" ] || [ ! -x "$root/bin/nvcc" ] || [ ! -x "$root/nvvm/bin/cicc" ]; then
  "$venv/bin/pip" install --quiet \
    "nvidia-cuda-nvcc==$CUDA_VERSION_PIN" "nvidia-nvvm==$CUDA_VERSION_PIN" "nvidia-cuda-crt==$CUDA_VERSION_PIN" \
    "nvidia-cuda-runtime==$CUDA_VERSION_PIN" "nvidia-cuda-cccl==$CUDA_VERSION_PIN" "nvidia-cuda-nvrtc==$CUDA_VERSION_PIN"
  root=$(cuda_root)
fi
[ -x "$root/bin/nvcc" ] || { echo "no nvcc under $root" >&2; exit 1; }

# cudarc reads CUDA_ROOT/CUDA_PATH/CUDA_HOME (link search paths) and `nvcc --version` (toolkit
# version); candle-kernels' build script (cudaforge) finds nvcc on PATH or CUDA_HOME and reads
# CUDA_COMPUTE_CAP; nvcc itself finds cicc, headers and libs relative to its bin/ (nvcc.profile).
export CUDA_ROOT="$root" CUDA_PATH="$root" CUDA_HOME="$root"
export PATH="$root/bin:$PATH"
export LD_LIBRARY_PATH="$root/lib${LD_LIBRARY_PATH:+:$LD_LIBRARY_PATH}"
export CUDA_COMPUTE_CAP=${CUDA_COMPUTE_CAP:-80}
export CARGO_TARGET_DIR=${CARGO_TARGET_DIR:-target-cuda}
echo "toolkit: $root"
nvcc --version | tail -2
echo "cargo $mode --features cuda --lib (CUDA_COMPUTE_CAP=$CUDA_COMPUTE_CAP, target dir $CARGO_TARGET_DIR)"
nice -n 10 cargo "$mode" --locked --features cuda --lib
echo "OK: upres compiles with --features cuda against CUDA $("$root/bin/nvcc" --version | sed -n 's/.*release \([0-9.]*\),.*/\1/p') (not run on a GPU)"
