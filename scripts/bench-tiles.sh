#!/usr/bin/env bash
# Whole-image passes, measured end to end against the bare forward pass, in one run on this
# machine (a benchmark, not a test):
#   - realesrgan-x4plus: a miss of /x4/model=realesrgan on samples/shop/cat.png (451x300, one
#     pass within ml.activation_budget), total Server-Timing, against realesrgan-bench's one
#     forward pass at 368² (135424 px, the photo's 135300 within 0.1 %; the bench takes squares).
#   - realesr-animevideov3-x4 on a 128² PNG: Server-Timing `infer` against the bench's best
#     forward at 128².
#   scripts/bench-tiles.sh [x4plus_runs] [animevideo_runs]      default: 1 5
# Builds and uses ${CARGO_TARGET_DIR:-target}/debug/{upres,realesrgan-bench} (opt-level 3);
# BIN_DIR=dir uses the binaries there instead, without building.
set -euo pipefail
cd "$(dirname "$0")/.."
X4_RUNS=${1:-1}
AV_RUNS=${2:-5}
PORT=${PORT:-18381}
scripts/fetch-models.sh >/dev/null
scripts/fetch-samples.sh >/dev/null
if [ -z "${BIN_DIR:-}" ]; then
  cargo build --locked --quiet --bin upres --bin realesrgan-bench
fi
bin=${BIN_DIR:-${CARGO_TARGET_DIR:-target}/debug}
work=$(mktemp -d)
pid=""
trap '[ -n "$pid" ] && kill "$pid" 2>/dev/null; rm -rf "$work"' EXIT
mkdir -p "$work/origin"
cp samples/shop/cat.png "$work/origin/cat.png"
python3 - "$work/origin" <<'PY'
import sys, zlib, struct, random
# A 128x128 RGB PNG of noise-textured gradients (standard library only).
w = h = 128
random.seed(7)
rows = b"".join(b"\0" + bytes(v for x in range(w) for v in ((x * 2) % 256, (y * 2) % 256, random.randrange(256))) for y in range(h))
def chunk(t, d): return struct.pack(">I", len(d)) + t + d + struct.pack(">I", zlib.crc32(t + d))
png = b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", struct.pack(">IIBBBBB", w, h, 8, 2, 0, 0, 0)) + chunk(b"IDAT", zlib.compress(rows)) + chunk(b"IEND", b"")
open(sys.argv[1] + "/sq128.png", "wb").write(png)
PY
# x4plus on a whole photo takes minutes on two busy cores: a deadline that lets it finish, and
# no first-hit budget (the miss must wait for the model, not answer a preview).
printf '[server]\nrequest_deadline = "15m"\n[serve]\nfirst_hit_budget = "0s"\n[cache.claims]\nttl = "15m"\n' > "$work/upres.toml"
RUST_LOG=warn "$bin/upres" serve --config "$work/upres.toml" --listen "127.0.0.1:$PORT" --origin "file://$work/origin" \
  --store "" --models models > "$work/upres.log" 2>&1 &
pid=$!
for _ in $(seq 600); do curl -sf -o /dev/null "http://127.0.0.1:$PORT/readyz" && break; sleep 0.5; done
timing() { # URL -> the Server-Timing header of a miss
  curl -sf --max-time 900 -o /dev/null -D - "http://127.0.0.1:$PORT$1" | tr -d '\r' | sed -n 's/^server-timing: //Ip'
}
dur() { sed -n "s/.*$1;dur=\([0-9.]*\).*/\1/p" <<< "$2"; }
total() { tr ',' '\n' <<< "$1" | sed -n 's/.*dur=\([0-9.]*\).*/\1/p' | paste -sd+ | bc -l; }
echo "# scripts/bench-tiles.sh $X4_RUNS $AV_RUNS — $(date -u +%FT%TZ), $(lscpu | sed -n 's/^Model name: *//p'), $(nproc) cores"
best_av=""
for i in $(seq "$AV_RUNS"); do
  t=$(timing "/x4/model=animevideo/q=$((80 + i))/sq128.png")
  inf=$(dur infer "$t"); echo "animevideov3 128² miss $i: $t"
  best_av=$(python3 -c "print(min(float('$inf'), float('${best_av:-inf}')))")
done
best_x4=""
for i in $(seq "$X4_RUNS"); do
  t=$(timing "/x4/model=realesrgan/q=$((80 + i))/cat.png")
  tot=$(total "$t"); echo "x4plus 451x300 miss $i: $t (total $tot ms)"
  best_x4=$(python3 -c "print(min(float('$tot'), float('${best_x4:-inf}')))")
done
kill "$pid"; wait "$pid" 2>/dev/null || true; pid=""
"$bin/realesrgan-bench" --models models --only realesr-animevideov3-x4 --sizes 128 --runs "$AV_RUNS" --no-fp32 | tee "$work/av.txt"
"$bin/realesrgan-bench" --models models --only realesrgan-x4plus --sizes 368 --runs "$X4_RUNS" --no-fp32 | tee "$work/x4.txt"
bench() { awk -v m="$1" '$1 == m {print $3; exit}' "$2"; }
av=$(bench realesr-animevideov3-x4 "$work/av.txt"); x4=$(bench realesrgan-x4plus "$work/x4.txt")
echo "animevideov3 128²: server infer $best_av ms / bench forward $av ms = $(python3 -c "print(f'{$best_av/$av:.2f}')")"
echo "x4plus 451x300: end-to-end miss $best_x4 ms / bench forward (368²) $x4 ms = $(python3 -c "print(f'{$best_x4/$x4:.2f}')")"
