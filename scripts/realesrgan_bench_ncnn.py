#!/usr/bin/env python3
"""ncnn side of `realesrgan-bench`: runs the same model files on the CPU and prints
`<stem> <size> <mode> <ms per image>` lines (one forward pass per image, untiled, first pass per
model, size and mode not timed). Real-CUGAN files (`realcugan-*`) run as their runtime's
whole-image path does (`realcugan_reference.upscale`: reflect padding, network, crop, the 4×
residual), the work upres's forward does.

Modes: `fp32` (fp16/bf16 storage and int8 off, the configuration of the parity fixtures) and `bf16`
(`use_bf16_storage` and `use_bf16_packed` on: weights and activations stored in bf16, arithmetic in
fp32; ncnn's fastest CPU configuration on this machine).

    .venv/bin/python scripts/realesrgan_bench_ncnn.py --sizes 64,128,256 --runs 3 --threads 2 --modes fp32,bf16
"""
import argparse
import os
import sys
import time

import numpy as np

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from realesrgan_reference import STEMS, fp32_net, run  # noqa: E402
from realcugan_reference import scale_of, upscale  # noqa: E402

MODES = ["fp32", "bf16"]


def net_for(models, stem, threads, mode):
    param, bin_ = os.path.join(models, stem + ".param"), os.path.join(models, stem + ".bin")
    return fp32_net(param, bin_, threads, bf16=(mode == "bf16"))


def forward(net, stem, img):
    if stem.startswith("realcugan-"):
        return upscale(net, img, scale_of(stem))
    return run(net, img)


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--models", default="models")
    ap.add_argument("--sizes", default="64,128,256")
    ap.add_argument("--runs", type=int, default=3)
    ap.add_argument("--threads", type=int, default=os.cpu_count())
    ap.add_argument("--only", default=",".join(STEMS))
    ap.add_argument("--modes", default=",".join(MODES))
    a = ap.parse_args()
    modes = a.modes.split(",")
    if any(m not in MODES for m in modes):
        sys.exit(f"unknown mode in {a.modes} (known: {', '.join(MODES)})")
    for stem in a.only.split(","):
        nets = {m: net_for(a.models, stem, a.threads, m) for m in modes}
        for size in [int(s) for s in a.sizes.split(",")]:
            y, x = np.mgrid[0:size, 0:size].astype(np.float32)
            img = np.stack([0.5 + 0.4 * np.sin(x * 0.37 + c) * np.cos(y * 0.23) for c in range(3)]).astype(np.float32)
            for mode, net in nets.items():
                forward(net, stem, img)
                # Best of the timed runs (as realesrgan-bench does for upres): on a shared
                # machine the fastest run is the one least disturbed by other processes.
                ms = float("inf")
                for _ in range(max(1, a.runs)):
                    t = time.perf_counter()
                    forward(net, stem, img)
                    ms = min(ms, (time.perf_counter() - t) * 1000)
                print(f"{stem} {size} {mode} {ms:.2f}", flush=True)
                print(f"ncnn {stem} {size} {mode}: {ms:.1f} ms", file=sys.stderr, flush=True)


if __name__ == "__main__":
    main()
