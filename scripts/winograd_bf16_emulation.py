#!/usr/bin/env python3
"""Would a larger Winograd tile than F(2x2, 3x3) hold the 45 dB bound in bf16? An emulation in
PyTorch of realesr-animevideov3's forward as upres runs it on AMX, with each body conv's
Winograd transforms rounded to bf16 (V = B^T d B and U = G g G^T rounded once, f32-exact sums,
the output transform in f32), printed as 8-bit PSNR against the fp32 network.

    .venv/bin/python scripts/winograd_bf16_emulation.py [--models models] [--size 128]
    .venv/bin/python scripts/winograd_bf16_emulation.py --avx512 [--stem realesrgan-x4plus-anime] [--size 64]

As in upres: the first conv (reads the image) fp32, the last conv plain bf16 (inputs and weights
rounded), every activation between body convs rounded to bf16 (the shadow). Tiles F(my x mx)
with interpolation points per axis (the transform matrices come from the points by solving the
Toom-Cook identity numerically and are checked exact). Images: realesrgan-bench's texture, the
parity fixtures' test card (scripts/realesrgan_reference.py) and uniform noise.

`--avx512` emulates the AVX-512 BF16 path of a CPU without AMX instead (wino_bf16.rs): the
activations stay fp32 (the transforms read f32 and only V and U are rounded), every trunk conv
(SRVGG: all but the first; RRDBNet: the dense blocks' convs) runs the Winograd tile or, for
"direct bf16", the direct conv on bf16-rounded inputs and weights; `--stem` picks the network.
"""
import argparse
import os
import sys

import numpy as np
import torch
import torch.nn.functional as F

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import realesrgan_torch as peer_torch  # noqa: E402
from peer_precision import bench_image  # noqa: E402
from realesrgan_reference import synthetic  # noqa: E402

# (name, (m_y, points_y), (m_x, points_x)); the point at infinity is implied. None: direct.
CONFIGS = [
    ("direct bf16", None, None),
    ("F(2x2), upres's", (2, [0, 1, -1]), (2, [0, 1, -1])),
    ("F(2x3)", (2, [0, 1, -1]), (3, [0, 1, -1, 0.5])),
    ("F(2x4)", (2, [0, 1, -1]), (4, [0, 1, -1, 2, -2])),
    ("F(3x3)", (3, [0, 1, -1, 0.5]), (3, [0, 1, -1, 0.5])),
    ("F(4x4)", (4, [0, 1, -1, 2, -2]), (4, [0, 1, -1, 2, -2])),
    ("F(4x4), points +-1/2", (4, [0, 1, -1, 0.5, -0.5]), (4, [0, 1, -1, 0.5, -0.5])),
]


def transforms(m, points, r=3):
    """A^T (m x n), G (n x r), B^T (n x n) of F(m, r) for the finite `points` and infinity."""
    n = m + r - 1
    assert len(points) == n - 1
    a, g = np.zeros((n, m)), np.zeros((n, r))
    for i, p in enumerate(points):
        a[i] = [p**k for k in range(m)]
        f = np.prod([p - q for j, q in enumerate(points) if j != i])
        g[i] = [p**k / f for k in range(r)]
    a[n - 1, m - 1] = g[n - 1, r - 1] = 1
    # B^T from y_i = sum_k d_{i+k} g_k for every d, g: sum_xi A[xi,i] G[xi,k] B^T[xi,j] = [j == i+k].
    rows, rhs = [], []
    for i in range(m):
        for k in range(r):
            for j in range(n):
                row = np.zeros((n, n))
                row[:, j] = a[:, i] * g[:, k]
                rows.append(row.ravel())
                rhs.append(float(j == i + k))
    bt = np.linalg.lstsq(np.array(rows), np.array(rhs), rcond=None)[0]
    assert np.abs(np.array(rows) @ bt - np.array(rhs)).max() < 1e-9, "points give no exact transform"
    return [torch.tensor(x, dtype=torch.float64) for x in (a.T, g, bt.reshape(n, n))]


def bf16(t):
    return t.float().to(torch.bfloat16).to(t.dtype)


def winograd_conv(x, w, b, ty, tx):
    """3x3 conv, padding 1, through F(ty) x F(tx) with V and U rounded to bf16."""
    (my, py), (mx, px) = ty, tx
    aty, gy, bty = transforms(my, py)
    atx, gx, btx = transforms(mx, px)
    n, _, h, wd = x.shape
    th, tw = -(-h // my), -(-wd // mx)
    xp = F.pad(x.double(), (1, tw * mx + 1 - wd, 1, th * my + 1 - h))
    d = xp.unfold(2, my + 2, my).unfold(3, mx + 2, mx)
    v = bf16(torch.einsum("ai,nctwij,bj->nctwab", bty, d, btx))
    u = bf16(torch.einsum("ai,ocij,bj->ocab", gy, w.double(), gx))
    mm = torch.einsum("nctwab,ocab->notwab", v, u)
    y = torch.einsum("ia,notwab,jb->notwij", aty, mm, atx)
    y = y.permute(0, 1, 2, 4, 3, 5).reshape(n, -1, th * my, tw * mx)[:, :, :h, :wd]
    return (y + b.double().view(1, -1, 1, 1)).float()


def forward(net, x, tiles):
    """SRVGGNetCompact x4: fp32 if `tiles` is None, else upres's AMX rounding with `tiles`."""
    convs = [m for m in net.body if isinstance(m, torch.nn.Conv2d)]
    acts = [m for m in net.body if not isinstance(m, torch.nn.Conv2d)]
    h = x
    for i, c in enumerate(convs):
        last = i == len(convs) - 1
        if tiles is None or i == 0:
            y = F.conv2d(h, c.weight, c.bias, padding=1)
        elif last or tiles[0] is None:
            y = F.conv2d(bf16(h), bf16(c.weight), c.bias, padding=1)
        else:
            y = winograd_conv(bf16(h), c.weight, c.bias, *tiles)
        h = y if last else acts[i](y)
    return F.pixel_shuffle(h, 4) + F.interpolate(x, scale_factor=4, mode="nearest")


def avx512_trunk(net, tiles):
    """A copy of `net` whose trunk convs run as on AVX-512 BF16 without AMX (see --avx512)."""
    import copy

    net = copy.deepcopy(net)
    if isinstance(net, peer_torch.RRDBNet):
        convs = [c for rrdb in net.blocks for db in rrdb for c in db.convs]
    else:
        convs = [m for m in net.body if isinstance(m, torch.nn.Conv2d)][1:]
    for c in convs:
        if tiles[0] is None:
            c.forward = lambda x, c=c: F.conv2d(bf16(x), bf16(c.weight), c.bias, padding=1)
        else:
            c.forward = lambda x, c=c: winograd_conv(x, c.weight, c.bias, *tiles)
    return net


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--models", default="models")
    ap.add_argument("--size", type=int, default=128)
    ap.add_argument("--threads", type=int, default=os.cpu_count())
    ap.add_argument("--avx512", action="store_true", help="fp32 activations, bf16 V and U only (no AMX)")
    ap.add_argument("--stem", default="realesr-animevideov3-x4")
    a = ap.parse_args()
    torch.set_num_threads(a.threads)
    if a.avx512:
        return main_avx512(a)
    net = peer_torch.load(a.models, "realesr-animevideov3-x4")
    s = a.size
    images = {
        "bench texture": bench_image(s),
        "test card": np.asarray(synthetic(s, s, 7), dtype=np.float32),
        "uniform noise": np.random.default_rng(1).random((3, s, s), dtype=np.float32),
    }
    print(f"realesr-animevideov3-x4 {s}x{s}: 8-bit PSNR against fp32 (dB): " + " | ".join(images))
    with torch.inference_mode():
        for name, ty, tx in CONFIGS:
            cols = []
            for img in images.values():
                x = torch.from_numpy(img)[None]
                cols.append(peer_torch.compare(forward(net, x, (ty, tx))[0].numpy(), forward(net, x, None)[0].numpy())[1])
            print(f"{name:>22}: " + " | ".join(f"{c:.1f}" for c in cols), flush=True)


def main_avx512(a):
    net = peer_torch.load(a.models, a.stem)
    s = a.size
    images = {
        "bench texture": bench_image(s),
        "test card": np.asarray(synthetic(s, s, 7), dtype=np.float32),
        "uniform noise": np.random.default_rng(1).random((3, s, s), dtype=np.float32),
    }
    print(f"{a.stem} {s}x{s}, AVX-512 BF16 rounding: 8-bit PSNR against fp32 (dB): " + " | ".join(images))
    with torch.inference_mode():
        want = [net(torch.from_numpy(img)[None])[0].numpy() for img in images.values()]
        for name, ty, tx in CONFIGS:
            emu = avx512_trunk(net, (ty, tx))
            cols = [peer_torch.compare(emu(torch.from_numpy(img)[None])[0].numpy(), w)[1] for img, w in zip(images.values(), want)]
            print(f"{name:>22}: " + " | ".join(f"{c:.1f}" for c in cols), flush=True)


if __name__ == "__main__":
    main()
