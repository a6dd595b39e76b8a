#!/usr/bin/env python3
"""Times PyTorch's CPU conv2d (oneDNN) on the Real-ESRGAN shapes used by benches/fastconv.rs.

Writes JSON {"torch": version, "threads": n, "shapes": [{n,h,w,cin,cout,nhwc_gflops,nchw_gflops}]}
to the path given as argv[1] (default target/torch_conv.json). Setup:
    python3 -m venv .venv && .venv/bin/pip install torch numpy
"""
import json
import sys
import time

import torch

# Keep in sync with SHAPES in benches/fastconv.rs: (n, h, w, cin, cout)
SHAPES = [
    (1, 64, 64, 64, 64),
    (1, 128, 128, 64, 64),
    (1, 256, 256, 64, 64),
    (1, 128, 128, 64, 32),
    (1, 128, 128, 96, 32),
    (1, 128, 128, 160, 32),
    (1, 128, 128, 192, 64),
    (1, 128, 128, 3, 64),
    (1, 128, 128, 64, 48),
    (1, 256, 256, 64, 3),
    (4, 64, 64, 64, 64),
]


def bench(n, h, w, cin, cout, channels_last, min_time=0.6):
    conv = torch.nn.Conv2d(cin, cout, 3, 1, 1)
    x = torch.randn(n, cin, h, w)
    if channels_last:
        conv = conv.to(memory_format=torch.channels_last)
        x = x.to(memory_format=torch.channels_last)
    flops = 2.0 * 9 * cin * cout * n * h * w
    best = float("inf")
    with torch.inference_mode():
        for _ in range(3):
            conv(x)
        t_end = time.perf_counter() + min_time
        while time.perf_counter() < t_end:
            t0 = time.perf_counter()
            conv(x)
            best = min(best, time.perf_counter() - t0)
    return flops / best / 1e9


def main():
    out = sys.argv[1] if len(sys.argv) > 1 else "target/torch_conv.json"
    torch.set_num_threads(2)
    rows = []
    for (n, h, w, cin, cout) in SHAPES:
        nhwc = bench(n, h, w, cin, cout, True)
        nchw = bench(n, h, w, cin, cout, False)
        rows.append(dict(n=n, h=h, w=w, cin=cin, cout=cout, nhwc_gflops=nhwc, nchw_gflops=nchw))
        print(f"n{n} {h}x{w} {cin:>3}->{cout:<3} torch NHWC {nhwc:7.1f}  NCHW {nchw:7.1f} GFLOP/s", flush=True)
    with open(out, "w") as f:
        json.dump(dict(torch=torch.__version__, threads=torch.get_num_threads(), shapes=rows), f, indent=1)
    print("wrote", out)


if __name__ == "__main__":
    main()
