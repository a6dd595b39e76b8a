#!/usr/bin/env bash
# Renders the README's before/after picture, docs/img/before-after.webp: a 112×75 crop of the
# cat sample enlarged 4× with nearest-neighbour pixels (left) beside the same crop through
# upres's `model=photo` (ClearReality4x, right), made by `upres upscale` exactly as a URL would.
#
#   scripts/make-readme-picture.sh            # needs models/ (scripts/fetch-models.sh)
#
# Pillow (pinned) goes into target/picture-venv for the crop and the composition.
set -euo pipefail
cd "$(dirname "$0")/.."
target="${CARGO_TARGET_DIR:-target}"
scripts/fetch-models.sh >/dev/null
scripts/fetch-samples.sh >/dev/null
cargo build --locked --bin upres
venv="$target/picture-venv"
[ -x "$venv/bin/python" ] || python3 -m venv "$venv"
"$venv/bin/pip" install --quiet pillow==11.3.0
work="$(mktemp -d)"
trap 'rm -rf "$work"' EXIT
"$venv/bin/python" - "$work" <<'PY'
import sys
from PIL import Image
work = sys.argv[1]
Image.open("samples/shop/cat.png").convert("RGB").crop((120, 70, 232, 145)).save(f"{work}/crop.png")
PY
"$target/debug/upres" upscale "$work/crop.png" -o "$work/model.png" x4/model=photo
mkdir -p docs/img
"$venv/bin/python" - "$work" docs/img/before-after.webp <<'PY'
import sys
from PIL import Image
work, out = sys.argv[1], sys.argv[2]
crop = Image.open(f"{work}/crop.png")
model = Image.open(f"{work}/model.png").convert("RGB")
nearest = crop.resize(model.size, Image.Resampling.NEAREST)
gap = 8
canvas = Image.new("RGB", (model.width * 2 + gap, model.height), "white")
canvas.paste(nearest, (0, 0))
canvas.paste(model, (model.width + gap, 0))
canvas.save(out, "WEBP", quality=88, method=6)
print(f"{out}: {canvas.width}x{canvas.height}")
PY
