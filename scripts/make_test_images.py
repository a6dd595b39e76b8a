#!/usr/bin/env python3
"""Writes the small decoder fixtures in tests/fixtures/images with Pillow (independent of upres).

Run once; the outputs are committed. Each file exercises one decoding case:
  cmyk.jpg          CMYK JPEG (Adobe APP14), 24x16
  exif-rotate90.jpg JPEG whose pixels are 24x16 but EXIF orientation 6 says "rotate 90° CW"
  gray16.png        16-bit grayscale PNG, 20x10
  alpha.png         RGBA PNG with a transparent left half, 16x16
  anim.gif          2-frame GIF, 12x8 (first frame red, second blue)
  palette.png       8-bit palette PNG, 10x10
"""
import os
from PIL import Image

out = os.path.join(os.path.dirname(__file__), "..", "tests", "fixtures", "images")
os.makedirs(out, exist_ok=True)

img = Image.new("CMYK", (24, 16), (0, 255, 255, 0))  # pure red in CMYK
img.save(os.path.join(out, "cmyk.jpg"), quality=95)

rgb = Image.new("RGB", (24, 16), (0, 0, 255))
for x in range(12):
    for y in range(16):
        rgb.putpixel((x, y), (255, 0, 0))  # left half red, right half blue
exif = Image.Exif()
exif[0x0112] = 6
rgb.save(os.path.join(out, "exif-rotate90.jpg"), quality=95, exif=exif.tobytes())

g = Image.new("I;16", (20, 10))
for x in range(20):
    for y in range(10):
        g.putpixel((x, y), x * 3000)
g.save(os.path.join(out, "gray16.png"))

a = Image.new("RGBA", (16, 16), (0, 200, 0, 255))
for x in range(8):
    for y in range(16):
        a.putpixel((x, y), (0, 200, 0, 0))
a.save(os.path.join(out, "alpha.png"))

f1 = Image.new("RGB", (12, 8), (255, 0, 0))
f2 = Image.new("RGB", (12, 8), (0, 0, 255))
f1.save(os.path.join(out, "anim.gif"), save_all=True, append_images=[f2], duration=100, loop=0)

p = Image.new("RGB", (10, 10), (10, 20, 30)).convert("P", palette=Image.ADAPTIVE, colors=4)
p.save(os.path.join(out, "palette.png"))
print("wrote fixtures to", os.path.abspath(out))
