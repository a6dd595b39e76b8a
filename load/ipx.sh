#!/usr/bin/env bash
# upres's resize-only path against ipx (sharp/libvips), side by side in one run, on 127.0.0.1:
# a miss that turns a 2048x1536 JPEG into a 256 px wide WebP (quality 80), at each concurrency,
# alternating upres and ipx for ROUNDS rounds of DURATION seconds each. Installs ipx (pinned in
# load/ipx/package-lock.json) with npm; needs wrk (Debian's `wrk`).
#
#   load/ipx.sh [duration_s] [concurrencies] [rounds]      default: 10 "4 16" 2
#
# Misses on both sides: the origin folder holds FILES hard links of one JPEG and every request
# names the next one, so no URL repeats within a run (each side gets its own run of names). ipx
# keeps no result cache; upres runs with its result store off, and its memory tier never sees a
# URL twice. Both read the file, decode, resize (Lanczos-3) and encode WebP q80 per request.
# LOAD_BIN=path serves that binary instead of building target/debug/upres (opt-level 3).
set -euo pipefail
cd "$(dirname "$0")/.."
DURATION=${1:-10}
CONCS=${2:-"4 16"}
ROUNDS=${3:-2}
FILES=${FILES:-60000}  # ext4 allows 65000 hard links per file
UPRES_PORT=${UPRES_PORT:-18281}
IPX_PORT=${IPX_PORT:-18282}
command -v wrk >/dev/null || { echo "install wrk (apt-get install wrk)"; exit 1; }
scripts/fetch-samples.sh
if ! cmp -s load/ipx/package-lock.json load/ipx/node_modules/.installed-lock.json; then
  (cd load/ipx && npm ci --no-audit --no-fund --loglevel=error >/dev/null && cp package-lock.json node_modules/.installed-lock.json)
fi
if [ -z "${LOAD_BIN:-}" ]; then
  cargo build --locked --quiet --bin upres
  LOAD_BIN=${CARGO_TARGET_DIR:-target}/debug/upres
fi

work=$(mktemp -d)
pids=()
trap 'for p in "${pids[@]}"; do kill "$p" 2>/dev/null; wait "$p" 2>/dev/null; done; rm -rf "$work"' EXIT
mkdir -p "$work/origin/p"
node load/ipx/make-photo.mjs samples/shop/coffee.png "$work/photo.jpg"
python3 -c "import os,sys; [os.link(sys.argv[1], f'{sys.argv[2]}/p-{i:06d}.jpg') for i in range(int(sys.argv[3]))]" \
  "$work/photo.jpg" "$work/origin/p" "$FILES"

RUST_LOG=warn "$LOAD_BIN" serve --listen "127.0.0.1:$UPRES_PORT" --origin "file://$work/origin" --store "" \
  > "$work/upres.log" 2>&1 &
pids+=($!)
node load/ipx/server.mjs "$work/origin" "$IPX_PORT" > "$work/ipx.log" 2>&1 &
pids+=($!)
for url in "http://127.0.0.1:$UPRES_PORT/readyz" "http://127.0.0.1:$IPX_PORT/w_8/p/p-000000.jpg"; do
  for _ in $(seq 150); do curl -sf -o /dev/null "$url" && break; sleep 0.2; done
  curl -sf -o /dev/null "$url" || { echo "not ready: $url"; cat "$work"/*.log; exit 1; }
done
# Both answer the same image: a 256x192 WebP.
for u in "http://127.0.0.1:$UPRES_PORT/w=256/format=webp/q=80/p/p-000001.jpg" "http://127.0.0.1:$IPX_PORT/w_256,f_webp,q_80/p/p-000001.jpg"; do
  curl -sf "$u" -o "$work/check.webp"
  python3 -c "import sys,struct; d=open(sys.argv[1],'rb').read(); assert d[:4]==b'RIFF' and d[8:12]==b'WEBP', 'not webp'; print(sys.argv[2], 'answers WebP,', len(d), 'bytes')" "$work/check.webp" "$u"
done

cpu=$(lscpu | sed -n 's/^Model name: *//p')
out="load/runs/$(date +%F)-$(hostname)"
mkdir -p "$out"
report="$out/ipx.txt"
{
  echo "# load/ipx.sh $DURATION \"$CONCS\" $ROUNDS — $(date -u +%FT%TZ), $cpu, $(nproc) cores"
  echo "# 2048x1536 JPEG -> 256 px wide WebP q80, every request a miss; requests/s per run"
} | tee "$report"
nconc=$(wc -w <<< "$CONCS")
SPAN=$(( FILES / (ROUNDS * nconc) ))
block=0
run() { # NAME PREFIX CONC -> prints requests/s; each run of a side gets its own block of names
  local name=$1 prefix=$2 conc=$3 port=$IPX_PORT
  [ "$name" = upres ] && port=$UPRES_PORT
  PREFIX=$prefix START=$(( block * SPAN )) SPAN=$SPAN wrk -t2 -c"$conc" -d"${DURATION}s" --latency \
    -s load/resize.lua "http://127.0.0.1:$port" > "$work/wrk.txt"
  if grep -q "Non-2xx" "$work/wrk.txt"; then echo "$name answered errors:" >&2; cat "$work/wrk.txt" >&2; exit 1; fi
  local n; n=$(awk '/requests in/ {print $1}' "$work/wrk.txt")
  [ "$n" -lt $(( SPAN / 2 )) ] || { echo "$name: $n requests wrapped the block of $SPAN names; raise FILES" >&2; exit 1; }
  awk '/Requests\/sec/ {print $2}' "$work/wrk.txt"
}
for conc in $CONCS; do
  best_u=0; best_i=0
  for r in $(seq "$ROUNDS"); do
    u=$(run upres "/w=256/format=webp/q=80/p/" "$conc")
    i=$(run ipx "/w_256,f_webp,q_80/p/" "$conc")
    block=$(( block + 1 ))
    echo "c=$conc round $r: upres $u req/s, ipx $i req/s, upres/ipx $(python3 -c "print(f'{$u/$i:.2f}')")" | tee -a "$report"
    best_u=$(python3 -c "print(max($best_u,$u))"); best_i=$(python3 -c "print(max($best_i,$i))")
  done
  echo "c=$conc best: upres $best_u req/s, ipx $best_i req/s, upres/ipx $(python3 -c "print(f'{$best_u/$best_i:.2f}')")" | tee -a "$report"
done
echo "report: $report"
