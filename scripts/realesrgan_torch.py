#!/usr/bin/env python3
"""PyTorch side of `realesrgan-bench`: the Real-ESRGAN networks in plain torch, with the weights
read from the same ncnn `.param`/`.bin` files upres uses (no other weight source).

    .venv/bin/pip install torch numpy
    .venv/bin/python scripts/realesrgan_torch.py check     # parity with tests/fixtures/realesrgan
    .venv/bin/python scripts/realesrgan_torch.py bench --sizes 64,128 --runs 2 --threads 2

`check` prints, per model, input and mode, the max abs error and the PSNR (8-bit, clamped) of the
torch output against the committed ncnn fp32 reference tensors, and exits 1 if fp32 is off
(PSNR < 45 dB or max abs error >= 1e-4), the bound upres's own parity tests use.

`bench` prints `<stem> <size> <mode> <ms per image>` lines (one untiled forward pass of a
size x size image, batch 1, under inference_mode; one warm-up pass per model, size and mode is not
timed). Modes: `fp32` (NCHW), `fp32-cl` (channels_last, which makes oneDNN run the convolutions in
NHWC) and `bf16` (channels_last under `torch.autocast('cpu', dtype=torch.bfloat16)`).

`serve` is `realesrgan-bench --interleave`'s peer: it reads `<stem> <size> <mode>` lines on stdin
and answers each with the ms of one timed forward pass on its own line (the first request for a
model, size and mode also runs the untimed warm-up pass), so that the bench can alternate upres
and PyTorch forward by forward.
"""
import argparse
import os
import struct
import sys
import time

import numpy as np
import torch
import torch.nn.functional as F

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from realesrgan_reference import STEMS  # noqa: E402
MODES = ["fp32", "fp32-cl", "bf16"]
TAG_FP16 = 0x01306B47
WEIGHTLESS = {"Input", "Split", "Concat", "Eltwise", "BinaryOp", "Interp", "PixelShuffle", "ReLU", "Sigmoid", "Noop"}


# --- ncnn files (same format rules as src/ml/ncnn.rs) ---------------------------------------------


def parse_param(path):
    """The layer lines of an ncnn `.param` as (type, name, {key: value}) in file order."""
    with open(path) as f:
        lines = [l.split() for l in f if l.strip()]
    if lines[0] != ["7767517"]:
        sys.exit(f"{path}: not an ncnn .param file")
    n_layers = int(lines[1][0])
    layers = []
    for tok in lines[2:]:
        kind, name, n_in, n_out = tok[0], tok[1], int(tok[2]), int(tok[3])
        params = {}
        for kv in tok[4 + n_in + n_out:]:
            k, v = kv.split("=")
            k = int(k)
            if k <= -23300:  # array: `<len>,<v0>,…`
                params[-k - 23300] = [float(x) for x in v.split(",")[1:]]
            else:
                params[k] = float(v) if any(c in v for c in ".eE") else int(v)
        layers.append((kind, name, params))
    if len(layers) != n_layers:
        sys.exit(f"{path}: header says {n_layers} layers, file has {len(layers)}")
    return layers


def read_weights(layers, bin_path):
    """Per weighted layer in graph order: ('conv', weight OIHW, bias, leaky slope or None) or
    ('prelu', slopes). Weight blobs carry a 4-byte tag (fp16 or fp32); bias and PReLU are raw fp32."""
    data = open(bin_path, "rb").read()
    pos = 0

    def take(n):
        nonlocal pos
        if pos + n > len(data):
            sys.exit(f"{bin_path}: truncated at layer {name}")
        b = data[pos:pos + n]
        pos += n
        return b

    out = []
    for kind, name, p in layers:
        if kind == "Convolution":
            cout, k, size = p[0], p.get(1, 1), p[6]
            (tag,) = struct.unpack("<I", take(4))
            if tag == TAG_FP16:
                w = np.frombuffer(take((2 * size + 3) // 4 * 4)[:2 * size], dtype="<f2").astype(np.float32)
            elif tag == 0:
                w = np.frombuffer(take(4 * size), dtype="<f4").copy()
            else:
                sys.exit(f"{bin_path}: layer {name}: weight tag {tag:#010x} is not fp16 or fp32")
            bias = np.frombuffer(take(4 * cout), dtype="<f4").copy() if p.get(5, 0) else None
            leaky = p[10][0] if p.get(9, 0) == 2 else None  # 9=2: fused LeakyReLU, slope in array 10
            if p.get(9, 0) not in (0, 2):
                sys.exit(f"{bin_path}: layer {name}: unsupported fused activation {p[9]}")
            out.append(("conv", w.reshape(cout, size // (cout * k * k), k, k), bias, leaky))
        elif kind == "PReLU":
            out.append(("prelu", np.frombuffer(take(4 * p[0]), dtype="<f4").copy()))
        elif kind not in WEIGHTLESS:
            sys.exit(f"{bin_path}: layer {name}: type {kind} not supported")
    if pos != len(data):
        sys.exit(f"{bin_path}: {len(data) - pos} bytes left over: .bin does not match .param")
    return out


class Weights:
    """Hands out the weighted layers in file order, checking each against what the network expects."""

    def __init__(self, items, stem):
        self.items, self.i, self.stem = items, 0, stem

    def conv(self, cin, cout, leaky=None):
        item = self.items[self.i]
        self.i += 1
        if item[0] != "conv":
            sys.exit(f"{self.stem}: layer {self.i}: expected a convolution, found {item[0]}")
        _, w, b, slope = item
        if w.shape != (cout, cin, 3, 3) or (slope is None) != (leaky is None) or (leaky and abs(slope - leaky) > 1e-6):
            sys.exit(f"{self.stem}: layer {self.i}: expected conv {cin}->{cout} 3x3 leaky={leaky}, found {w.shape} leaky={slope}")
        conv = torch.nn.Conv2d(cin, cout, 3, padding=1)
        conv.weight.data = torch.from_numpy(w.copy())
        conv.bias.data = torch.from_numpy(b)
        return conv

    def prelu(self, n):
        item = self.items[self.i]
        self.i += 1
        if item[0] != "prelu" or item[1].shape != (n,):
            sys.exit(f"{self.stem}: layer {self.i}: expected PReLU({n})")
        act = torch.nn.PReLU(n)
        act.weight.data = torch.from_numpy(item[1])
        return act

    def done(self):
        if self.i != len(self.items):
            sys.exit(f"{self.stem}: {len(self.items) - self.i} weighted layers left over")


# --- networks -------------------------------------------------------------------------------------


class DenseBlock(torch.nn.Module):
    def __init__(self, w, f, g):
        super().__init__()
        self.convs = torch.nn.ModuleList(w.conv(f + i * g, g, 0.2) if i < 4 else w.conv(f + i * g, f) for i in range(5))

    def forward(self, x):
        feats = [x]
        for i, c in enumerate(self.convs):
            y = c(torch.cat(feats, 1) if i else x)
            feats.append(F.leaky_relu(y, 0.2) if i < 4 else y)
        return feats[-1] * 0.2 + x


class RRDBNet(torch.nn.Module):
    """ESRGAN's generator: conv_first, blocks x (3 dense blocks, residual 0.2), conv_body + skip,
    two (nearest x2, conv, leaky) stages, conv_hr (leaky), conv_last."""

    def __init__(self, w, num_block, f=64, g=32):
        super().__init__()
        self.conv_first = w.conv(3, f)
        self.blocks = torch.nn.ModuleList(
            torch.nn.ModuleList(DenseBlock(w, f, g) for _ in range(3)) for _ in range(num_block))
        self.conv_body = w.conv(f, f)
        self.conv_up1 = w.conv(f, f, 0.2)
        self.conv_up2 = w.conv(f, f, 0.2)
        self.conv_hr = w.conv(f, f, 0.2)
        self.conv_last = w.conv(f, 3)

    def forward(self, x):
        feat = self.conv_first(x)
        h = feat
        for rrdb in self.blocks:
            r = h
            for db in rrdb:
                h = db(h)
            h = h * 0.2 + r
        h = feat + self.conv_body(h)
        h = F.leaky_relu(self.conv_up1(F.interpolate(h, scale_factor=2, mode="nearest")), 0.2)
        h = F.leaky_relu(self.conv_up2(F.interpolate(h, scale_factor=2, mode="nearest")), 0.2)
        return self.conv_last(F.leaky_relu(self.conv_hr(h), 0.2))


class SRVGGNetCompact(torch.nn.Module):
    """realesr-animevideov3: conv+PReLU, num_conv x (conv+PReLU), conv to 3*4^2, pixel shuffle x4,
    plus the nearest-upsampled input; the x2/x3 files add ncnn's bicubic resize by 0.5 / 0.75."""

    def __init__(self, w, scale, f=64, num_conv=16, upscale=4):
        super().__init__()
        layers = []
        for i in range(num_conv + 1):
            layers += [w.conv(3 if i == 0 else f, f), w.prelu(f)]
        layers.append(w.conv(f, 3 * upscale * upscale))
        self.body = torch.nn.Sequential(*layers)
        self.upscale, self.scale = upscale, scale

    def forward(self, x):
        out = F.pixel_shuffle(self.body(x), self.upscale) + F.interpolate(x, scale_factor=self.upscale, mode="nearest")
        if self.scale == self.upscale:
            return out
        # ncnn's bicubic: Keys A=-0.75, half-pixel centres, edges replicated, size floor(s*factor)
        # (torch's bicubic with align_corners=False is the same kernel).
        f = self.scale / self.upscale
        size = (int(out.shape[2] * f), int(out.shape[3] * f))
        return F.interpolate(out, size=size, mode="bicubic", align_corners=False)


def load(models, stem):
    layers = parse_param(os.path.join(models, stem + ".param"))
    w = Weights(read_weights(layers, os.path.join(models, stem + ".bin")), stem)
    if stem == "realesrgan-x4plus":
        net = RRDBNet(w, 23)
    elif stem == "realesrgan-x4plus-anime":
        net = RRDBNet(w, 6)
    elif stem.startswith("realesr-animevideov3-x"):
        net = SRVGGNetCompact(w, int(stem[-1]))
    else:
        sys.exit(f"unknown model {stem}")
    w.done()
    return net.eval()


def prepare(net, mode):
    """The network and a function running it on an NCHW fp32 tensor in `mode`."""
    fmt = torch.contiguous_format if mode == "fp32" else torch.channels_last
    net = net.to(memory_format=fmt)

    def run(x):
        with torch.inference_mode():
            x = x.contiguous(memory_format=fmt)
            if mode == "bf16":
                with torch.autocast("cpu", dtype=torch.bfloat16):
                    return net(x).float()
            return net(x)

    return run


# --- commands -------------------------------------------------------------------------------------


def compare(a, b):
    """(max abs error, PSNR in dB on 8-bit quantised, clamped output), as upres's parity tests."""
    q = lambda v: np.round(np.clip(v, 0, 1) * 255).astype(np.float64)
    mse = np.mean((q(a) - q(b)) ** 2)
    return float(np.abs(a - b).max()), (float("inf") if mse == 0 else 10 * np.log10(255 ** 2 / mse))


def check(a):
    bad = []
    for stem in a.only.split(","):
        net = load(a.models, stem)
        for mode in a.modes.split(","):
            run = prepare(net, mode)
            for wh in ["16x16", "24x20"]:
                x = np.load(os.path.join(a.fixtures, f"in-{wh}.npy"))
                want = np.load(os.path.join(a.fixtures, f"{stem}-{wh}.npy"))
                got = run(torch.from_numpy(x)[None])[0].float().contiguous().numpy()
                if got.shape != want.shape:
                    sys.exit(f"{stem} {wh}: output shape {got.shape}, reference {want.shape}")
                err, psnr = compare(got, want)
                print(f"parity {stem} {wh} torch {mode}: max abs err {err:.2e}, PSNR {psnr:.1f} dB (8-bit)", flush=True)
                if mode != "bf16" and (psnr < 45 or err >= 1e-4):
                    bad.append(f"{stem} {wh} {mode}")
    if bad:
        sys.exit("torch fp32 does not match the ncnn reference: " + ", ".join(bad))


def bench_input(size):
    """The bench's synthetic image (the same as realesrgan-bench and the ncnn helper), NCHW."""
    y, x = np.mgrid[0:size, 0:size].astype(np.float32)
    img = np.stack([0.5 + 0.4 * np.sin(x * 0.37 + c) * np.cos(y * 0.23) for c in range(3)]).astype(np.float32)
    return torch.from_numpy(img)[None]


def bench(a):
    for stem in a.only.split(","):
        net = load(a.models, stem)
        for size in [int(s) for s in a.sizes.split(",")]:
            inp = bench_input(size)
            for mode in a.modes.split(","):
                run = prepare(net, mode)
                run(inp)
                # Best of the timed runs (as realesrgan-bench does for upres): on a shared
                # machine the fastest run is the one least disturbed by other processes.
                ms = float("inf")
                for _ in range(max(1, a.runs)):
                    t = time.perf_counter()
                    run(inp)
                    ms = min(ms, (time.perf_counter() - t) * 1000)
                print(f"{stem} {size} {mode} {ms:.2f}", flush=True)
                print(f"torch {stem} {size} {mode}: {ms:.1f} ms", file=sys.stderr, flush=True)


def serve(a):
    nets, runs = {}, {}
    for line in sys.stdin:
        try:
            stem, size, mode = line.split()
            size = int(size)
        except ValueError:
            sys.exit(f"serve: bad request {line.strip()!r} (want: <stem> <size> <mode>)")
        if mode not in MODES or stem not in STEMS:
            sys.exit(f"serve: unknown model or mode in {line.strip()!r}")
        key = (stem, size, mode)
        if key not in runs:
            if stem not in nets:
                nets[stem] = load(a.models, stem)
            run, inp = prepare(nets[stem], mode), bench_input(size)
            run(inp)  # warm-up, untimed
            runs[key] = (run, inp)
        run, inp = runs[key]
        t = time.perf_counter()
        run(inp)
        print(f"{(time.perf_counter() - t) * 1000:.3f}", flush=True)


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("command", choices=["check", "bench", "serve"])
    ap.add_argument("--models", default="models")
    ap.add_argument("--fixtures", default="tests/fixtures/realesrgan")
    ap.add_argument("--sizes", default="64,128,256")
    ap.add_argument("--runs", type=int, default=3)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--only", default=",".join(STEMS))
    ap.add_argument("--modes", default=",".join(MODES))
    a = ap.parse_args()
    for m in a.modes.split(","):
        if m not in MODES:
            sys.exit(f"unknown mode {m} (known: {', '.join(MODES)})")
    torch.set_num_threads(a.threads)
    {"check": check, "bench": bench, "serve": serve}[a.command](a)


if __name__ == "__main__":
    main()
