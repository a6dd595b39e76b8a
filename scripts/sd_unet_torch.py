#!/usr/bin/env python3
"""diffusers side of `sd-bench unet --torch PYTHON`: the x4 upscaler's UNet2DConditionModel built
from the same config upres uses (tests/fixtures/sd-x4-configs/unet/config.json), random weights,
fp32 on the CPU, under torch.inference_mode.

    scripts/sd-unet-bench.sh                  # creates the venv (pinned torch + diffusers), runs both
    .venv/bin/python scripts/sd_unet_torch.py serve --threads 2

`serve` reads `<size> <runs>` lines on stdin and answers each with the best wall time in seconds
of `runs` forward passes of one denoising step (batch 2: the two classifier-free-guidance halves
of one image; latents of 7 channels at size x size, a 77-token context of 1024, noise level 20),
so that the bench can alternate upres and diffusers size by size in one run.
"""
import argparse
import json
import os
import sys
import time

import torch
from diffusers import UNet2DConditionModel

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
CONFIG = os.path.join(ROOT, "tests/fixtures/sd-x4-configs/unet/config.json")


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("mode", choices=["serve"])
    ap.add_argument("--threads", type=int, default=2)
    a = ap.parse_args()
    torch.set_num_threads(a.threads)
    torch.manual_seed(0)
    with open(CONFIG) as f:
        cfg = json.load(f)
    cfg.pop("_class_name", None)
    unet = UNet2DConditionModel.from_config(cfg).eval()
    import diffusers
    print(f"diffusers {diffusers.__version__}, torch {torch.__version__}, {torch.get_num_threads()} threads", file=sys.stderr)
    ctx = torch.randn(2, 77, cfg["cross_attention_dim"])
    labels = torch.tensor([20, 20])
    for line in sys.stdin:
        size, runs = (int(v) for v in line.split())
        x = torch.randn(2, cfg["in_channels"], size, size)
        best = float("inf")
        with torch.inference_mode():
            for _ in range(max(runs, 1)):
                t = time.perf_counter()
                unet(x, 500, encoder_hidden_states=ctx, class_labels=labels)
                best = min(best, time.perf_counter() - t)
        print(f"{best:.4f}", flush=True)


if __name__ == "__main__":
    main()
