#!/usr/bin/env python3
"""Reference outputs for upres's SPAN parity tests, computed with ncnn on the CPU in fp32.

Usage (from the repository root, after scripts/fetch-models.sh):
    python3 -m venv .venv && .venv/bin/pip install ncnn==1.0.20261020 numpy
    .venv/bin/python scripts/span_reference.py [--models models] [--out tests/fixtures/span]

Writes `in-<W>x<H>.npy` (f32, CHW, RGB in [0,1], values k/255: the synthetic test card of
realesrgan_reference.py) and, per model stem, `<stem>-<W>x<H>.u8`: ncnn's output clamped to
[0,1] and quantised to 8 bits (CHW, raw bytes; a few KB). The parity test compares upres's output,
quantised the same way, by PSNR.
"""
import argparse
import os

import numpy as np

from realesrgan_reference import fp32_net, run, synthetic

STEMS = [
    "ClearReality4x",
    "4xSPANkendata",
    "spanx4_ch48",
    "spanx4_ch52",
    "spanx2_ch48",
    "spanx2_ch52",
    "2xHFA2kSPAN_27k",
]
SIZES = [(12, 10), (19, 14)]  # (width, height): small, so each fixture stays a few KB


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--models", default="models")
    ap.add_argument("--out", default="tests/fixtures/span")
    ap.add_argument("--threads", type=int, default=2)
    a = ap.parse_args()
    os.makedirs(a.out, exist_ok=True)
    inputs = {}
    for i, (w, h) in enumerate(SIZES):
        inputs[(w, h)] = synthetic(w, h, seed=11 + i)
        np.save(os.path.join(a.out, f"in-{w}x{h}.npy"), inputs[(w, h)])
    for stem in STEMS:
        net = fp32_net(os.path.join(a.models, stem + ".param"), os.path.join(a.models, stem + ".bin"), a.threads)
        for (w, h), x in inputs.items():
            y = run(net, x)
            q = np.round(np.clip(y, 0, 1) * 255).astype(np.uint8)
            q.tofile(os.path.join(a.out, f"{stem}-{w}x{h}.u8"))
            print(f"{stem} {w}x{h} -> {y.shape} range [{y.min():.3f}, {y.max():.3f}]")


if __name__ == "__main__":
    main()
