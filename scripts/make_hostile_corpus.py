#!/usr/bin/env python3
"""Writes tests/fixtures/hostile/: small files that attack an image decoder, with Pillow and
hand-built headers (independent of upres). Run once; the outputs are committed.

tests/it/hostile.rs serves every file through a transform URL and checks the status listed in
tests/fixtures/hostile/EXPECTED (one `name status why` line per file), the time per file, the
server's health and its memory afterwards. Regenerating must keep every file under 64 KiB.
"""
import io
import os
import struct
import zlib

from PIL import Image

OUT = os.path.join(os.path.dirname(__file__), "..", "tests", "fixtures", "hostile")
os.makedirs(OUT, exist_ok=True)
expected = []


def put(name, data, status, why):
    assert len(data) <= 64 * 1024, f"{name} is {len(data)} bytes"
    with open(os.path.join(OUT, name), "wb") as f:
        f.write(data)
    expected.append(f"{name} {status} {why}")


def chunk(kind, body):
    return struct.pack(">I", len(body)) + kind + body + struct.pack(">I", zlib.crc32(kind + body) & 0xFFFFFFFF)


def png_raw(w, h, bit_depth, color_type, idat, ihdr_crc_ok=True):
    ihdr = struct.pack(">IIBBBBB", w, h, bit_depth, color_type, 0, 0, 0)
    c = chunk(b"IHDR", ihdr)
    if not ihdr_crc_ok:
        c = c[:-4] + b"\0\0\0\0"
    return b"\x89PNG\r\n\x1a\n" + c + chunk(b"IDAT", idat) + chunk(b"IEND", b"")


def saved(img, fmt, **kw):
    b = io.BytesIO()
    img.save(b, fmt, **kw)
    return b.getvalue()


def photo(w=64, h=48, mode="RGB"):
    img = Image.new("RGB", (w, h))
    img.putdata([((x * 4) % 256, (y * 5) % 256, (x * y) % 256) for y in range(h) for x in range(w)])
    return img.convert(mode)


# --- decompression bombs: the header claims far more pixels than the limit (16 MP) -------------
put("bomb-png-100k.png", png_raw(100_000, 100_000, 8, 2, zlib.compress(b"\0" * 1024)), 413,
    "PNG header claims 100000x100000")
# A real, complete 1-bit PNG of 8000x8000 blank pixels: 64 MP, a few KiB on disk.
row = b"\0" + b"\0" * (8000 // 8)
put("zipbomb-blank-8000.png", png_raw(8000, 8000, 1, 0, zlib.compress(row * 8000, 9)), 413,
    "complete blank 8000x8000 PNG, deflate ratio ~1000:1")
sof = b"\xff\xc0" + struct.pack(">HBHHB", 17, 8, 65000, 65000, 3) + b"\x01\x22\x00\x02\x11\x01\x03\x11\x01"
jpeg_head = saved(photo(8, 8), "JPEG", quality=80)
# Splice the huge SOF0 over the real one so the rest of the stream stays plausible.
i = jpeg_head.index(b"\xff\xc0")
seglen = struct.unpack(">H", jpeg_head[i + 2:i + 4])[0]
put("bomb-jpeg-65000.jpg", jpeg_head[:i] + sof + jpeg_head[i + 2 + seglen:], 413, "JPEG SOF0 claims 65000x65000")
vp8x = b"VP8X" + struct.pack("<I", 10) + b"\x00\x00\x00\x00" + (100_000 - 1).to_bytes(3, "little") * 2
webp_body = vp8x + saved(photo(8, 8), "WEBP", lossless=True)[12:]
put("bomb-webp-vp8x-100k.webp", b"RIFF" + struct.pack("<I", 4 + len(webp_body)) + b"WEBP" + webp_body, 422,
    "WebP VP8X canvas claims 100000x100000 over an 8x8 bitstream: inconsistent, refused from the header")
# A complete lossless WebP of a blank 4100x4100 image (16.8 MP, over the 16 MP limit), tiny on disk.
put("bomb-webp-blank-4100.webp", saved(Image.new("RGB", (4100, 4100)), "WEBP", lossless=True), 413,
    "complete blank 4100x4100 lossless WebP")
gif = bytearray(saved(photo(8, 8, "P"), "GIF"))
gif[6:10] = struct.pack("<HH", 65535, 65535)
d = gif.index(b"\x2c")  # first image descriptor
gif[d + 5:d + 9] = struct.pack("<HH", 65535, 65535)
put("bomb-gif-65535.gif", bytes(gif), 413, "GIF screen and frame claim 65535x65535")

# --- metadata bombs: a valid 8x8 PNG carrying a compressed chunk that inflates ~1000:1 ---------
# (the same construction at 3 GB is built in tests/it/hostile.rs, too big to commit)


def zlib_zeros(mib):
    """A zlib stream of `mib` MiB of zeros: one self-contained 1 MiB segment (a full flush resets
    the dictionary) repeated, an empty final block, and the Adler-32 of the zeros."""
    c = zlib.compressobj(9, zlib.DEFLATED, -15)
    seg = c.compress(b"\0" * (1 << 20)) + c.flush(zlib.Z_FULL_FLUSH)
    n = mib << 20
    return b"\x78\xda" + seg * mib + b"\x03\x00" + struct.pack(">I", ((n % 65521) << 16) | 1)


def with_chunk(png, kind, body):
    return png[:33] + chunk(kind, body) + png[33:]  # after the signature and IHDR


meta_base = png_raw(8, 8, 8, 2, zlib.compress((b"\0" + b"\x80\x40\x20" * 8) * 8))
bomb = zlib_zeros(60)
assert len(zlib.decompress(bomb)) == 60 << 20
put("bomb-png-iccp-60m.png", with_chunk(meta_base, b"iCCP", b"bomb\0\0" + bomb), 200,
    "8x8 PNG whose iCCP profile inflates to 60 MiB: metadata is dropped unread")
put("bomb-png-ztxt-60m.png", with_chunk(meta_base, b"zTXt", b"Comment\0\0" + bomb), 200,
    "8x8 PNG whose zTXt text inflates to 60 MiB")
put("bomb-png-itxt-60m.png", with_chunk(meta_base, b"iTXt", b"XML:com.adobe.xmp\0\x01\0\0\0" + bomb), 200,
    "8x8 PNG whose compressed iTXt (XMP) inflates to 60 MiB")

# --- truncations of valid files at several offsets -----------------------------------------------
for fmt, ext, kw in [("PNG", "png", {}), ("JPEG", "jpg", {"quality": 90}), ("WEBP", "webp", {"quality": 80}),
                     ("GIF", "gif", {})]:
    src = photo(64, 48, "P" if fmt == "GIF" else "RGB")
    full = saved(src, fmt, **kw)
    cuts = {"magic": 4, "header": 30 if fmt != "GIF" else 12, "half": len(full) // 2}
    for label, n in cuts.items():
        status, note = (415, "too short to sniff") if label == "magic" else (422, "corrupt")
        if label == "magic" and fmt == "JPEG":
            # JPEG's signature is 3 bytes: 4 bytes sniff as JPEG, then fail to decode.
            status, note = 422, "sniffed as JPEG, then corrupt"
        if label == "half" and fmt == "JPEG":
            # JPEG decoders render a truncated scan partially (as browsers do): a valid image.
            status, note = 200, "decoded partially, like a browser would"
        put(f"truncated-{label}.{ext}", full[:n], status, f"{fmt} cut at byte {n} of {len(full)}: {note}")

# --- polyglots and wrong names -------------------------------------------------------------------
small_gif = saved(photo(16, 16, "P"), "GIF")
js = b"*/=1;alert(document.domain);/*"
put("polyglot-gif-js.gif", small_gif + js, 200, "valid GIF with JavaScript after the trailer; re-encoded")
zip_tail = b"PK\x03\x04" + b"\x14\x00" + b"\0" * 24 + b"evil.sh" + b"#!/bin/sh\nrm -rf /\n" + b"PK\x05\x06" + b"\0" * 18
put("polyglot-png-zip.png", saved(photo(16, 16), "PNG") + zip_tail, 200, "valid PNG with a zip archive appended")
put("polyglot-jpeg-html.jpg", saved(photo(16, 16), "JPEG") + b"<script>alert(1)</script>", 200,
    "valid JPEG with HTML appended")
put("html-named.png", b"<!doctype html><img src=x onerror=alert(1)>", 415, "HTML named .png")
put("svg-named.png", b'<svg xmlns="http://www.w3.org/2000/svg" onload="alert(1)"/>', 415, "SVG named .png")
put("png-named.jpg", saved(photo(16, 16), "PNG"), 200, "PNG bytes named .jpg: sniffed, not trusted by name")
put("jpeg-named.gif", saved(photo(16, 16), "JPEG"), 200, "JPEG bytes named .gif")
put("bmp-named.png", saved(photo(16, 16), "BMP"), 415, "BMP bytes named .png: a format upres does not accept")
put("tiff-named.jpg", saved(photo(16, 16), "TIFF"), 415, "TIFF bytes named .jpg")

# --- degenerate and odd but valid files -----------------------------------------------------------
put("zero-bytes.png", b"", 415, "empty file")
put("one-by-one.png", saved(Image.new("RGB", (1, 1), (200, 10, 10)), "PNG"), 200, "1x1 PNG")
put("zero-width.png", png_raw(0, 16, 8, 2, zlib.compress(b"")), 422, "PNG header with width 0")
put("bad-crc.png", png_raw(16, 16, 8, 2, zlib.compress((b"\0" + b"\x80" * 48) * 16), ihdr_crc_ok=False), 422,
    "PNG whose IHDR CRC is wrong")
put("idat-garbage.png", png_raw(16, 16, 8, 2, b"\x78\x9c" + os.urandom(0) + b"\xff" * 40), 422,
    "PNG whose compressed data is not deflate")
put("cmyk.jpg", saved(Image.new("CMYK", (24, 16), (0, 255, 255, 0)), "JPEG", quality=90), 200, "CMYK JPEG")
g16 = Image.new("I;16", (20, 10))
g16.putdata([x * 3000 for y in range(10) for x in range(20)])
put("gray16.png", saved(g16, "PNG"), 200, "16-bit grayscale PNG")
put("rgba.png", saved(photo(16, 16, "RGBA"), "PNG"), 200, "RGBA PNG")
put("gray-alpha.png", saved(photo(16, 16, "LA"), "PNG"), 200, "grayscale + alpha PNG")
put("progressive.jpg", saved(photo(32, 32), "JPEG", progressive=True), 200, "progressive JPEG")

# An animated GIF with 2500 one-pixel frames: only the first frame is ever decoded.
frame = (b"\x21\xf9\x04\x00\x00\x00\x00\x00"  # graphic control extension
         b"\x2c\x00\x00\x00\x00\x01\x00\x01\x00\x00"  # 1x1 image descriptor, no local palette
         b"\x02\x02\x44\x01\x00")  # LZW min code 2, one sub-block, terminator
anim = (b"GIF89a" + struct.pack("<HHBBB", 1, 1, 0x80, 0, 0) + b"\0\0\0\xff\xff\xff"
        + b"\x21\xff\x0bNETSCAPE2.0\x03\x01\x00\x00\x00" + frame * 2500 + b"\x3b")
put("anim-2500-frames.gif", anim, 200, "animated GIF with 2500 frames; first frame only")

with open(os.path.join(OUT, "EXPECTED"), "w") as f:
    f.write("# name status why — generated by scripts/make_hostile_corpus.py; checked by tests/it/hostile.rs\n")
    f.write("\n".join(expected) + "\n")
print(f"wrote {len(expected)} files to {os.path.normpath(OUT)}")
