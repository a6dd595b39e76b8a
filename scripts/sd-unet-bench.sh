#!/usr/bin/env bash
# One denoising step of the sd-x4 UNet, upres against diffusers, side by side in one run:
#
#   scripts/sd-unet-bench.sh [--sizes 64,128] [--runs 2] [--threads 2]
#
# Creates a venv outside the repository (../sd-bench-venv, or $SD_BENCH_VENV) with pinned torch
# and diffusers from PyPI unless its python already imports both, builds sd-bench (the dev
# profile, optimised like release: see Cargo.toml) and runs `sd-bench unet --torch <venv python>`,
# which prints the CPU, the kernels, and a table of seconds per step and the ratio
# upres / diffusers. Both sides get the same thread count (default 2).
set -euo pipefail
cd "$(dirname "$0")/.."
VENV="${SD_BENCH_VENV:-../sd-bench-venv}"
TORCH_VERSION=2.15.0
DIFFUSERS_VERSION=0.42.1
if ! "$VENV/bin/python" -c "import torch, diffusers" 2>/dev/null; then
    python3 -m venv "$VENV"
    "$VENV/bin/pip" install --quiet "torch==$TORCH_VERSION" "diffusers==$DIFFUSERS_VERSION" numpy
fi
args=("$@")
if [[ " ${args[*]} " != *" --threads "* ]]; then
    args+=(--threads 2)
fi
cargo build --quiet --bin sd-bench
target="${CARGO_TARGET_DIR:-target}"
exec "$target/debug/sd-bench" unet --torch "$VENV/bin/python" "${args[@]}"
