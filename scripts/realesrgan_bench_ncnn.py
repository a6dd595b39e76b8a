#!/usr/bin/env python3
"""ncnn side of `realesrgan-bench`: runs the same model files on the CPU in fp32 and prints
`<stem> <size> <ms per image>` lines (one forward pass per image, untiled, first pass not timed).

    .venv/bin/python scripts/realesrgan_bench_ncnn.py --sizes 64,128,256 --runs 3 --threads 2
"""
import argparse
import os
import sys
import time

import numpy as np

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from realesrgan_reference import STEMS, fp32_net, run  # noqa: E402


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--models", default="models")
    ap.add_argument("--sizes", default="64,128,256")
    ap.add_argument("--runs", type=int, default=3)
    ap.add_argument("--threads", type=int, default=os.cpu_count())
    ap.add_argument("--only", default=",".join(STEMS))
    a = ap.parse_args()
    for stem in a.only.split(","):
        net = fp32_net(os.path.join(a.models, stem + ".param"), os.path.join(a.models, stem + ".bin"), a.threads)
        for size in [int(s) for s in a.sizes.split(",")]:
            y, x = np.mgrid[0:size, 0:size].astype(np.float32)
            img = np.stack([0.5 + 0.4 * np.sin(x * 0.37 + c) * np.cos(y * 0.23) for c in range(3)]).astype(np.float32)
            run(net, img)
            t = time.perf_counter()
            for _ in range(max(1, a.runs)):
                run(net, img)
            ms = (time.perf_counter() - t) * 1000 / max(1, a.runs)
            print(f"{stem} {size} {ms:.2f}", flush=True)
            print(f"ncnn {stem} {size}: {ms:.1f} ms", file=sys.stderr, flush=True)


if __name__ == "__main__":
    main()
