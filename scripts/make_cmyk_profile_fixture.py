#!/usr/bin/env python3
"""Writes tests/fixtures/images/cmyk-profile.jpg and its reference sRGB values (littlecms).

Run once with Pillow (`pip install pillow`); the outputs are committed:
  cmyk-profile.jpg   24x16 CMYK JPEG (Adobe, as Photoshop and Pillow store it) with an embedded
                     CMYK ICC profile written here by hand: a v2 output profile whose A2B0 is a
                     9-point-grid lut16 from CMYK to Lab
                     (fine enough that colour engines' different interpolations agree). Its paper is tinted and its inks are not
                     the naive 255-C/255-M/255-Y, so pixels that went through the profile differ
                     clearly from a profile-less conversion.
  cmyk-profile.json  for each patch: its centre, its CMYK values and the sRGB that littlecms
                     (Pillow's ImageCms, relative colorimetric) makes of them through the profile.
"""
import io
import json
import os
import struct

from PIL import Image, ImageCms

out = os.path.join(os.path.dirname(__file__), "..", "tests", "fixtures", "images")


def s15(v):
    return struct.pack(">i", round(v * 65536))


def lab_of_corner(c, m, y, k):
    """Lab (D50) of one ink combination at full strength: a tinted paper, strong inks."""
    if k:
        return (12.0, 0.0, 2.0)
    inks = {
        (0, 0, 0): (93.0, 1.5, 8.0),     # warm, slightly yellow paper
        (1, 0, 0): (58.0, -32.0, -48.0),  # cyan
        (0, 1, 0): (50.0, 72.0, -4.0),    # magenta
        (0, 0, 1): (88.0, -4.0, 88.0),    # yellow
        (1, 1, 0): (26.0, 18.0, -48.0),   # blue
        (1, 0, 1): (50.0, -62.0, 28.0),   # green
        (0, 1, 1): (47.0, 66.0, 48.0),    # red
        (1, 1, 1): (22.0, 0.0, 0.0),      # three-ink black
    }
    return inks[(c, m, y)]


def lab_at(c, m, y, k):
    """Lab at ink amounts in 0..1: the corners blended multilinearly (a smooth table)."""
    out = [0.0, 0.0, 0.0]
    for cc in (0, 1):
        for mm in (0, 1):
            for yy in (0, 1):
                for kk in (0, 1):
                    w = (c if cc else 1 - c) * (m if mm else 1 - m) * (y if yy else 1 - y) * (k if kk else 1 - k)
                    lab = lab_of_corner(cc, mm, yy, kk)
                    out = [o + w * v for o, v in zip(out, lab)]
    return out


def lut16_lab():
    g = 9
    body = b"mft2" + b"\0" * 4 + bytes([4, 3, g, 0])
    for r in range(3):  # identity matrix (used only for XYZ input)
        for col in range(3):
            body += s15(1.0 if r == col else 0.0)
    body += struct.pack(">HH", 2, 2)
    body += struct.pack(">HH", 0, 65535) * 4  # input curves: identity
    for c in range(g):
        for m in range(g):
            for y in range(g):
                for k in range(g):
                    L, a, b = lab_at(c / (g - 1), m / (g - 1), y / (g - 1), k / (g - 1))
                    # v2 (legacy) 16-bit Lab: L * 652.8, (a + 128) * 256
                    body += struct.pack(">HHH", round(L * 652.8), round((a + 128) * 256), round((b + 128) * 256))
    body += struct.pack(">HH", 0, 65535) * 3  # output curves: identity
    return body


def desc(text):
    t = text.encode("ascii") + b"\0"
    return b"desc" + b"\0" * 4 + struct.pack(">I", len(t)) + t + struct.pack(">II", 0, 0) + struct.pack(">HB", 0, 0) + b"\0" * 67


def xyz(x, y, z):
    return b"XYZ " + b"\0" * 4 + s15(x) + s15(y) + s15(z)


def text(t):
    return b"text" + b"\0" * 4 + t.encode("ascii") + b"\0"


def pad4(b):
    return b + b"\0" * (-len(b) % 4)


def profile():
    tags = [
        (b"desc", desc("upres test CMYK")),
        (b"cprt", text("No copyright, test data")),
        (b"wtpt", xyz(0.9642, 1.0, 0.8249)),
        (b"A2B0", lut16_lab()),
    ]
    table_len = 4 + 12 * len(tags)
    offset = 128 + table_len
    table = struct.pack(">I", len(tags))
    data = b""
    for sig, body in tags:
        body = pad4(body)
        table += sig + struct.pack(">II", offset + len(data), len(body))
        data += body
    size = 128 + table_len + len(data)
    header = struct.pack(">I", size) + b"lcms" + struct.pack(">I", 0x02100000) + b"prtr" + b"CMYK" + b"Lab "
    header += struct.pack(">6H", 2026, 12, 7, 0, 0, 0) + b"acsp" + b"APPL" + struct.pack(">I", 0)
    header += b"\0" * 4 + b"\0" * 4 + b"\0" * 8 + struct.pack(">I", 0)  # manufacturer, model, attributes, intent
    header += s15(0.9642) + s15(1.0) + s15(0.8249) + b"\0" * 4  # D50 illuminant, creator
    header += b"\0" * (128 - len(header))
    return header + table + data


icc = profile()
patches = [
    {"x": 6, "y": 8, "cmyk": [0, 255, 255, 0]},     # the profile's red
    {"x": 18, "y": 8, "cmyk": [40, 200, 180, 30]},  # an in-between mix (the grid interpolates)
]
img = Image.new("CMYK", (24, 16), (0, 0, 0, 0))
for p in patches:
    x0 = 0 if p["x"] < 12 else 12
    for x in range(x0, x0 + 12):
        for y in range(16):
            img.putpixel((x, y), tuple(p["cmyk"]))
img.save(os.path.join(out, "cmyk-profile.jpg"), quality=95, icc_profile=icc)

cmyk_profile = ImageCms.ImageCmsProfile(io.BytesIO(icc))
srgb = ImageCms.createProfile("sRGB")
ref = ImageCms.profileToProfile(img, cmyk_profile, srgb, renderingIntent=ImageCms.Intent.RELATIVE_COLORIMETRIC, outputMode="RGB")
for p in patches:
    p["srgb"] = list(ref.getpixel((p["x"], p["y"])))
    # What a profile-less conversion (255 - C) * (255 - K) / 255 … gives, for the test's contrast.
    c, m, y, k = p["cmyk"]
    p["naive"] = [round((255 - v) * (255 - k) / 255) for v in (c, m, y)]
with open(os.path.join(out, "cmyk-profile.json"), "w") as f:
    json.dump({"generator": "scripts/make_cmyk_profile_fixture.py", "littlecms": ImageCms.core.littlecms_version, "patches": patches}, f, indent=2)
    f.write("\n")
print(json.dumps(patches))
