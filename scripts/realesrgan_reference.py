#!/usr/bin/env python3
"""Reference outputs for upres's Real-ESRGAN parity tests, computed with ncnn (an independent
implementation of the same graphs) on CPU in fp32.

Usage (from the repository root, after scripts/fetch-models.sh):
    python3 -m venv .venv && .venv/bin/pip install ncnn numpy
    .venv/bin/python scripts/realesrgan_reference.py [--models models] [--out tests/fixtures/realesrgan]

Writes, for each input `in-<W>x<H>.npy` (f32, CHW, RGB in [0,1], values k/255) and each model stem
`<stem>`, `<stem>-<W>x<H>.npy` (f32, CHW, the raw network output, not clamped). The inputs are
synthetic (gradients, edges, texture, fixed seed) so the fixtures are reproducible without any
image file.
"""
import argparse
import os
import sys

import numpy as np

try:  # the torch peer (realesrgan_torch.py) imports STEMS without needing ncnn
    import ncnn
except ImportError:
    ncnn = None

STEMS = [
    "realesrgan-x4plus",
    "realesrgan-x4plus-anime",
    "realesr-animevideov3-x2",
    "realesr-animevideov3-x3",
    "realesr-animevideov3-x4",
]
SIZES = [(16, 16), (24, 20)]  # (width, height)


def synthetic(w, h, seed):
    """An 8-bit-like RGB test card: a diagonal gradient, a disc with a hard edge, stripes and noise."""
    rng = np.random.default_rng(seed)
    y, x = np.mgrid[0:h, 0:w].astype(np.float32)
    r = (x + y) / (w + h)
    g = ((x - w / 2) ** 2 + (y - h / 2) ** 2 < (min(w, h) / 3) ** 2).astype(np.float32) * 0.7 + 0.15
    b = 0.5 + 0.4 * np.sin(x * 1.3) * np.cos(y * 0.7)
    img = np.stack([r, g, b]) + rng.normal(0, 0.04, (3, h, w)).astype(np.float32)
    return np.round(np.clip(img, 0, 1) * 255).astype(np.float32) / 255.0


def fp32_net(param, bin_, threads, bf16=False):
    """The net on the CPU in fp32 (fp16 and int8 off); `bf16=True` stores and packs in bf16."""
    net = ncnn.Net()
    o = net.opt
    o.use_vulkan_compute = False
    o.use_fp16_packed = False
    o.use_fp16_storage = False
    o.use_fp16_arithmetic = False
    o.use_bf16_storage = bf16
    o.use_bf16_packed = bf16
    o.use_int8_inference = False
    o.use_packing_layout = True
    o.num_threads = threads
    if net.load_param(param) != 0 or net.load_model(bin_) != 0:
        sys.exit(f"ncnn could not load {param}")
    return net


def run(net, chw):
    ex = net.create_extractor()
    ex.input("data", ncnn.Mat(np.ascontiguousarray(chw, dtype=np.float32)))
    ret, out = ex.extract("output")
    if ret != 0:
        sys.exit("ncnn extract failed")
    return np.array(out, dtype=np.float32).copy()


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--models", default="models")
    ap.add_argument("--out", default="tests/fixtures/realesrgan")
    ap.add_argument("--threads", type=int, default=2)
    a = ap.parse_args()
    os.makedirs(a.out, exist_ok=True)
    inputs = {}
    for i, (w, h) in enumerate(SIZES):
        inputs[(w, h)] = synthetic(w, h, seed=7 + i)
        np.save(os.path.join(a.out, f"in-{w}x{h}.npy"), inputs[(w, h)])
    for stem in STEMS:
        net = fp32_net(os.path.join(a.models, stem + ".param"), os.path.join(a.models, stem + ".bin"), a.threads)
        for (w, h), x in inputs.items():
            y = run(net, x)
            np.save(os.path.join(a.out, f"{stem}-{w}x{h}.npy"), y)
            print(f"{stem} {w}x{h} -> {y.shape} range [{y.min():.3f}, {y.max():.3f}]")


if __name__ == "__main__":
    main()
