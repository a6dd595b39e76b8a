#!/usr/bin/env bash
# Prepares samples/, the default origin folder: a few real photos from the scikit-image wheel
# (its bundled public-domain test images), fetched with pip from the package registry.
set -euo pipefail
cd "$(dirname "$0")/.."
dest=samples
if [ -f "$dest/.complete" ]; then
  exit 0
fi
tmp=$(mktemp -d)
trap 'rm -rf "$tmp"' EXIT
python3 -m pip download --quiet --no-deps --only-binary=:all: scikit-image==0.26.0 -d "$tmp"
mkdir -p "$dest/shop" "$dest/photos"
python3 - "$tmp"/scikit_image-*.whl "$dest" <<'PY'
import sys, zipfile
wheel, dest = sys.argv[1], sys.argv[2]
pick = {
    "skimage/data/chelsea.png": "shop/cat.png",        # 451x300 RGB photo of a cat
    "skimage/data/coffee.png": "shop/coffee.png",      # 600x400 RGB
    "skimage/data/astronaut.png": "photos/astronaut.png",  # 512x512 RGB
    "skimage/data/rocket.jpg": "photos/rocket.jpg",    # 427x640 JPEG
    "skimage/data/camera.png": "photos/camera.png",    # 512x512 grayscale
    "skimage/data/logo.png": "shop/logo.png",          # RGBA with transparency
}
with zipfile.ZipFile(wheel) as z:
    for src, dst in pick.items():
        with open(f"{dest}/{dst}", "wb") as f:
            f.write(z.read(src))
print(f"samples: {len(pick)} images in {dest}/")
PY
touch "$dest/.complete"
