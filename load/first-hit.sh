#!/usr/bin/env bash
# The first-hit budget on a real model: latency of a miss (the preview), of hits during the
# background run, when the final arrives, and of hits afterwards. One server, one URL, measured
# once; prints one line per request and a summary.
#
#   load/first-hit.sh [path]     default path: /x4/model=realesrgan-x4plus/w=1200/shop/cat.png
#
# Needs models/ (scripts/fetch-models.sh) and samples/ (scripts/fetch-samples.sh).
# LOAD_BIN=path serves that binary instead of building target/debug/upres.
set -euo pipefail
cd "$(dirname "$0")/.."
URL_PATH=${1:-/x4/model=realesrgan-x4plus/w=1200/shop/cat.png}
PORT=${PORT:-18191}
scripts/fetch-samples.sh
if [ -z "${LOAD_BIN:-}" ]; then
  cargo build --locked --quiet --bin upres
  LOAD_BIN=${CARGO_TARGET_DIR:-target}/debug/upres
fi
work=$(mktemp -d)
mkdir -p "$work/origin/shop" "$work/models"
cp samples/shop/cat.png "$work/origin/shop/cat.png"
# Only the measured model: warming every model up takes minutes on two cores.
MODEL=${MODEL:-realesrgan-x4plus}
ln -s "$PWD/models/$MODEL.param" "$PWD/models/$MODEL.bin" "$work/models/"
RUST_LOG=warn "$LOAD_BIN" serve --listen "127.0.0.1:$PORT" --models "$work/models" \
  --origin "file://$work/origin" --store "file://$work/store" > "$work/server.log" 2>&1 &
server=$!
trap 'kill $server 2>/dev/null; wait $server 2>/dev/null; rm -rf "$work"' EXIT
# Warm-up runs every model once and times it (the speed the budget is judged by): minutes here.
for _ in $(seq 1800); do curl -sf "http://127.0.0.1:$PORT/readyz" >/dev/null && break; sleep 0.2; done
curl -sf "http://127.0.0.1:$PORT/readyz" >/dev/null || { echo "not ready"; cat "$work/server.log"; exit 1; }

url="http://127.0.0.1:$PORT$URL_PATH"
echo "# $(date -Is) $(lscpu | sed -n 's/^Model name: *//p'), $(nproc) cores, load $(cut -d' ' -f1-3 /proc/loadavg)"
echo "# GET $URL_PATH"
get() { curl -s -o /dev/null -w '%{http_code} %{time_total} %header{x-upres-result} %header{x-upres-cache} %header{x-upres-model}\n' "$url"; }
start=$(date +%s.%N)
since() { echo "$(date +%s.%N) - $start" | bc; }
first=$(get)
echo "first hit: $first"
final_at=""
n=0
while [ -z "$final_at" ]; do
  sleep 0.5
  line=$(get)
  n=$((n + 1))
  case "$line" in
    *" final "*) final_at=$(since); echo "final after ${final_at}s (request $n during the run): $line" ;;
    *) [ $((n % 10)) -eq 1 ] && echo "during the run, at $(since)s: $line" ;;
  esac
  [ "$n" -gt 1200 ] && { echo "no final within 10 min"; exit 1; }
done
for i in 1 2 3; do echo "later hit $i: $(get)"; done
curl -sf "http://127.0.0.1:$PORT/metrics" | grep -E '^upres_(previews_total|background_runs_total)'
