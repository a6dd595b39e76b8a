#!/usr/bin/env python3
"""Reference outputs for upres's Real-CUGAN parity tests, computed with ncnn on the CPU in fp32.

Usage (from the repository root, after scripts/fetch-models.sh):
    python3 -m venv .venv && .venv/bin/pip install ncnn==1.0.20261020 numpy
    .venv/bin/python scripts/realcugan_reference.py [--models models] [--out tests/fixtures/realcugan]

Runs each network the way realcugan-ncnn-vulkan's whole-image path does (`process_cpu` with
one tile): the RGB input in [0,1] is reflect-padded by the scale's prepadding (2×: 18, 3×: 14,
4×: 19 pixels; reflect without repeating the edge, as ncnn's copy_make_border type 2 and
numpy's `reflect`) plus, on the bottom and right, up to a multiple of 2 (2×, 4×) or 4 (3×);
the network's top-left `scale·W × scale·H` is kept; the 4× files add the input, nearest-upscaled.
Sides shorter than the padding (the 12×10 card) reflect repeatedly, as numpy does.

Writes `in-<W>x<H>.npy` (f32, CHW, values k/255: the synthetic test card of
realesrgan_reference.py) and, per model stem, `<stem>-<W>x<H>.u8`: the output clamped to [0,1]
and quantised to 8 bits (CHW, raw bytes). The parity test compares upres's output by PSNR.
"""
import argparse
import os
import sys

import numpy as np

from realesrgan_reference import fp32_net, synthetic

import ncnn

SETS = {
    "se": ["up2x-conservative", "up2x-no-denoise", "up2x-denoise1x", "up2x-denoise2x", "up2x-denoise3x",
           "up3x-conservative", "up3x-no-denoise", "up3x-denoise3x",
           "up4x-conservative", "up4x-no-denoise", "up4x-denoise3x"],
    "pro": ["up2x-conservative", "up2x-no-denoise", "up2x-denoise3x",
            "up3x-conservative", "up3x-no-denoise", "up3x-denoise3x"],
    "nose": ["up2x-no-denoise"],
}
STEMS = [f"realcugan-{s}-{f}" for s, files in SETS.items() for f in files]
SIZES = [(12, 10), (23, 21)]  # (width, height): one below the padding, one odd above it
PREPADDING = {2: 18, 3: 14, 4: 19}


def scale_of(stem):
    return int(stem.split("-up")[1][0])


def upscale(net, x, scale):
    """The runtime's whole-image path on CHW `x` in [0,1]; returns CHW float output."""
    _, h, w = x.shape
    pre = PREPADDING[scale]
    align = 4 if scale == 3 else 2
    xp = np.pad(x, ((0, 0), (pre, pre + (-h) % align), (pre, pre + (-w) % align)), mode="reflect")
    ex = net.create_extractor()
    ex.input("in0", ncnn.Mat(np.ascontiguousarray(xp, dtype=np.float32)))
    ret, out = ex.extract("out0")
    if ret != 0:
        sys.exit("ncnn extract failed")
    y = np.array(out, dtype=np.float32)[:, : h * scale, : w * scale]
    if scale == 4:
        y = y + np.repeat(np.repeat(x, 4, axis=1), 4, axis=2)
    return y


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--models", default="models")
    ap.add_argument("--out", default="tests/fixtures/realcugan")
    ap.add_argument("--threads", type=int, default=2)
    a = ap.parse_args()
    os.makedirs(a.out, exist_ok=True)
    inputs = {}
    for i, (w, h) in enumerate(SIZES):
        inputs[(w, h)] = synthetic(w, h, seed=23 + i)
        np.save(os.path.join(a.out, f"in-{w}x{h}.npy"), inputs[(w, h)])
    for stem in STEMS:
        net = fp32_net(os.path.join(a.models, stem + ".param"), os.path.join(a.models, stem + ".bin"), a.threads)
        s = scale_of(stem)
        for (w, h), x in inputs.items():
            y = upscale(net, x, s)
            assert y.shape == (3, h * s, w * s), y.shape
            q = np.round(np.clip(y, 0, 1) * 255).astype(np.uint8)
            q.tofile(os.path.join(a.out, f"{stem}-{w}x{h}.u8"))
            print(f"{stem} {w}x{h} -> {y.shape} range [{y.min():.3f}, {y.max():.3f}]")


if __name__ == "__main__":
    main()
