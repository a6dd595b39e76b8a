#!/usr/bin/env python3
"""How close the peers' reduced-precision configurations in `realesrgan-bench` stay to fp32 on the
bench's own image: 8-bit PSNR of PyTorch bf16 autocast against PyTorch fp32, of ncnn bf16 against
ncnn fp32, and of PyTorch fp32 against ncnn fp32 (the two fp32 runtimes should agree). The bench's
`dB` column is the same measure for upres (its default against its fp32 path), so the rows compare
like with like.

    .venv/bin/python scripts/peer_precision.py [--models models] [--sizes 64,128] [--only STEM,...]
"""
import argparse
import os
import sys

import numpy as np
import torch

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import realesrgan_torch as peer_torch  # noqa: E402
from realesrgan_reference import fp32_net, run  # noqa: E402


def bench_image(size):
    """realesrgan-bench's synthetic image (CHW, f32)."""
    y, x = np.mgrid[0:size, 0:size].astype(np.float32)
    return np.stack([0.5 + 0.4 * np.sin(x * np.float32(0.37) + np.float32(c)) * np.cos(y * np.float32(0.23)) for c in range(3)]).astype(np.float32)


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--models", default="models")
    ap.add_argument("--sizes", default="64,128")
    ap.add_argument("--only", default="realesrgan-x4plus,realesrgan-x4plus-anime,realesr-animevideov3-x4")
    ap.add_argument("--threads", type=int, default=os.cpu_count())
    a = ap.parse_args()
    torch.set_num_threads(a.threads)
    print("model size: torch bf16 vs torch fp32 | ncnn bf16 vs ncnn fp32 | torch fp32 vs ncnn fp32 (8-bit PSNR, dB)")
    for stem in a.only.split(","):
        net = peer_torch.load(a.models, stem)
        t32, t16 = peer_torch.prepare(net, "fp32"), peer_torch.prepare(net, "bf16")
        param, bin_ = os.path.join(a.models, stem + ".param"), os.path.join(a.models, stem + ".bin")
        n32, n16 = fp32_net(param, bin_, a.threads), fp32_net(param, bin_, a.threads, bf16=True)
        for size in [int(s) for s in a.sizes.split(",")]:
            img = bench_image(size)
            x = torch.from_numpy(img)[None]
            tf, tb = t32(x)[0].float().numpy(), t16(x)[0].float().numpy()
            nf, nb = run(n32, img), run(n16, img)
            db = lambda a_, b_: peer_torch.compare(a_, b_)[1]
            print(f"{stem} {size}: {db(tb, tf):.1f} | {db(nb, nf):.1f} | {db(tf, nf):.1f}", flush=True)


if __name__ == "__main__":
    main()
