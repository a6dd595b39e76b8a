#!/usr/bin/env python3
"""Renders docs/img/models.webp: one crop of a sample photo enlarged 4x by each loaded model,
side by side (left to right: the input by nearest neighbour, Lanczos, then each model found in
the models folder), each panel labelled with its model name.

    cargo build --release && python3 scripts/make-comparison.py
    python3 scripts/make-comparison.py --upres target/debug/upres --crop 190,50,64,64  # fur instead of the eye

Needs only Python's standard library and the built `upres` binary (`upres upscale` runs every
model; the PNGs are read and written here; the final WebP is encoded by `upres` too).
"""
import argparse
import os
import struct
import subprocess
import sys
import tempfile
import zlib

# Panels after the input: (label, URL model name, file stem that must exist in the models folder).
MODELS = [
    ("lanczos", "lanczos", None),
    ("animevideov3", "realesr-animevideov3", "realesr-animevideov3-x4"),
    ("span", "spanx4_ch48", "spanx4_ch48"),
    ("clearreality", "clearreality4x", "ClearReality4x"),
    ("spankendata", "4xspankendata", "4xSPANkendata"),
    ("x4plus", "realesrgan-x4plus", "realesrgan-x4plus"),
]
SCALE = 4
GAP = 6
LABEL_H = 14


def read_png(path):
    """(width, height, rows of RGB bytes) of an 8-bit RGB/RGBA/grey PNG, not interlaced."""
    data = open(path, "rb").read()
    assert data[:8] == b"\x89PNG\r\n\x1a\n", f"{path}: not a PNG"
    pos, idat, ihdr = 8, b"", None
    while pos < len(data):
        (length,) = struct.unpack(">I", data[pos:pos + 4])
        kind, body = data[pos + 4:pos + 8], data[pos + 8:pos + 8 + length]
        if kind == b"IHDR":
            ihdr = struct.unpack(">IIBBBBB", body)
        elif kind == b"IDAT":
            idat += body
        pos += 12 + length
    w, h, depth, ctype, _, _, interlace = ihdr
    channels = {0: 1, 2: 3, 4: 2, 6: 4}[ctype]
    assert depth == 8 and interlace == 0, f"{path}: only 8-bit, non-interlaced PNGs"
    raw, stride, rows, prev = zlib.decompress(idat), w * channels, [], bytearray(w * channels)
    for y in range(h):
        f, line = raw[y * (stride + 1)], bytearray(raw[y * (stride + 1) + 1:(y + 1) * (stride + 1)])
        for i in range(stride):
            a = line[i - channels] if i >= channels else 0
            b, c = prev[i], prev[i - channels] if i >= channels else 0
            if f == 1:
                line[i] = (line[i] + a) & 255
            elif f == 2:
                line[i] = (line[i] + b) & 255
            elif f == 3:
                line[i] = (line[i] + (a + b) // 2) & 255
            elif f == 4:
                p = a + b - c
                pa, pb, pc = abs(p - a), abs(p - b), abs(p - c)
                line[i] = (line[i] + (a if pa <= pb and pa <= pc else b if pb <= pc else c)) & 255
        prev = line
        if channels == 3:
            rows.append(bytes(line))
        else:
            px = [line[i:i + channels] for i in range(0, stride, channels)]
            rows.append(b"".join(bytes((p[0], p[0], p[0])) if channels < 3 else bytes(p[:3]) for p in px))
    return w, h, rows


def write_png(path, w, h, rows):
    def chunk(kind, body):
        return struct.pack(">I", len(body)) + kind + body + struct.pack(">I", zlib.crc32(kind + body) & 0xFFFFFFFF)
    raw = b"".join(b"\x00" + r for r in rows)
    with open(path, "wb") as f:
        f.write(b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", struct.pack(">IIBBBBB", w, h, 8, 2, 0, 0, 0))
                + chunk(b"IDAT", zlib.compress(raw, 9)) + chunk(b"IEND", b""))


# A 3x5 pixel font for the labels (lowercase letters and digits drawn as capitals).
FONT = {
    "a": "010101111101101", "b": "110101110101110", "c": "011100100100011", "d": "110101101101110",
    "e": "111100110100111", "f": "111100110100100", "g": "011100101101011", "h": "101101111101101",
    "i": "111010010010111", "j": "001001001101010", "k": "101101110101101", "l": "100100100100111",
    "m": "101111111101101", "n": "110101101101101", "o": "010101101101010", "p": "110101110100100",
    "q": "010101101110011", "r": "110101110101101", "s": "011100010001110", "t": "111010010010010",
    "u": "101101101101111", "v": "101101101101010", "w": "101101111111101", "x": "101101010101101",
    "y": "101101010010010", "z": "111001010100111", "0": "111101101101111", "1": "010110010010111",
    "2": "110001010100111", "3": "110001010001110", "4": "101101111001001", "5": "111100110001110",
    "6": "011100111101111", "7": "111001010010010", "8": "111101111101111", "9": "111101111001110",
    "-": "000000111000000", " ": "000000000000000",
}


def label(text, width):
    """`LABEL_H` rows of `width` white pixels with `text` in dark grey, 2x size, centred."""
    rows = [bytearray(b"\xff" * (width * 3)) for _ in range(LABEL_H)]
    text = text[: max(1, width // 8)]
    x0, y0 = max(0, (width - len(text) * 8) // 2), 2
    for n, ch in enumerate(text):
        glyph = FONT.get(ch, FONT[" "])
        for gy in range(5):
            for gx in range(3):
                if glyph[gy * 3 + gx] == "1":
                    for dy in range(2):
                        for dx in range(2):
                            x, y = x0 + n * 8 + gx * 2 + dx, y0 + gy * 2 + dy
                            if x < width:
                                rows[y][x * 3:x * 3 + 3] = b"\x30\x30\x30"
    return [bytes(r) for r in rows]


def main():
    root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    target = os.environ.get("CARGO_TARGET_DIR", os.path.join(root, "target"))
    default_upres = next((p for p in (os.path.join(target, "release", "upres"), os.path.join(target, "debug", "upres")) if os.path.exists(p)), "upres")
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--upres", default=default_upres)
    ap.add_argument("--models", default=os.path.join(root, "models"))
    ap.add_argument("--sample", default=os.path.join(root, "samples", "shop", "cat.png"))
    ap.add_argument("--crop", default="150,95,64,64", help="x,y,w,h of the crop in the sample")
    ap.add_argument("--out", default=os.path.join(root, "docs", "img", "models.webp"))
    ap.add_argument("--quality", default="82")
    args = ap.parse_args()
    if not os.path.exists(args.sample):
        sys.exit(f"{args.sample} is missing: run scripts/fetch-samples.sh")
    cx, cy, cw, ch = (int(v) for v in args.crop.split(","))
    w, h, rows = read_png(args.sample)
    assert cx + cw <= w and cy + ch <= h, f"the crop leaves the {w}x{h} sample"
    crop = [r[cx * 3:(cx + cw) * 3] for r in rows[cy:cy + ch]]
    pw, ph = cw * SCALE, ch * SCALE
    with tempfile.TemporaryDirectory() as tmp:
        src = os.path.join(tmp, "crop.png")
        write_png(src, cw, ch, crop)
        nearest = [b"".join(r[x * 3:x * 3 + 3] * SCALE for x in range(cw)) for r in crop for _ in range(SCALE)]
        panels = [("input", nearest)]
        for name, model, stem in MODELS:
            if stem and not os.path.exists(os.path.join(args.models, stem + ".param")):
                print(f"skipped {name}: {stem}.param is not in {args.models}", file=sys.stderr)
                continue
            out = os.path.join(tmp, f"{name}.png")
            cmd = [args.upres, "upscale", "--models", args.models, src, f"x{SCALE}/model={model}/format=png", "-o", out]
            subprocess.run(cmd, check=True, stdout=subprocess.DEVNULL)
            ow, oh, orows = read_png(out)
            assert (ow, oh) == (pw, ph), f"{name}: {ow}x{oh}, expected {pw}x{ph}"
            panels.append((name, orows))
            print(f"rendered {name}", file=sys.stderr)
        total_w = len(panels) * pw + (len(panels) - 1) * GAP
        gap = b"\xff" * (GAP * 3)
        labels = [label(n, pw) for n, _ in panels]
        out_rows = [gap.join(l[y] for l in labels) for y in range(LABEL_H)]
        out_rows += [gap.join(p[y] for _, p in panels) for y in range(ph)]
        sheet = os.path.join(tmp, "sheet.png")
        write_png(sheet, total_w, len(out_rows), out_rows)
        os.makedirs(os.path.dirname(args.out), exist_ok=True)
        # x1 with no box: no model runs, the sheet is only encoded.
        subprocess.run([args.upres, "upscale", "--models", args.models, sheet, f"x1/format=webp/q={args.quality}", "-o", args.out],
                       check=True, stdout=subprocess.DEVNULL)
    print(f"{args.out}: {len(panels)} panels, {os.path.getsize(args.out)} bytes", file=sys.stderr)


if __name__ == "__main__":
    main()
