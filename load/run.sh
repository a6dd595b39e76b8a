#!/usr/bin/env bash
# Load runs against upres on 127.0.0.1 with wrk (Debian's `wrk`): cache-hit throughput, miss
# throughput and a mixed storefront profile. Bounded: each scenario runs $DURATION seconds.
# Results go to load/runs/<date>-<host>/. Usage: load/run.sh [duration_s] [connections]
set -euo pipefail
cd "$(dirname "$0")/.."
DURATION=${1:-15}
CONNS=${2:-32}
PORT=${PORT:-18181}
command -v wrk >/dev/null || { echo "install wrk (apt-get install wrk)"; exit 1; }
scripts/fetch-samples.sh
cargo build --locked --quiet --bin upres

work=$(mktemp -d)
mkdir -p "$work/origin/shop"
cp samples/shop/cat.png "$work/origin/shop/cat.png"
out="load/runs/$(date +%F)-$(hostname)"
mkdir -p "$out"

RUST_LOG=warn target/debug/upres serve --listen "127.0.0.1:$PORT" \
  --origin "file://$work/origin" --store "file://$work/store" > "$work/server.log" 2>&1 &
server=$!
trap 'kill $server 2>/dev/null; wait $server 2>/dev/null; rm -rf "$work"' EXIT
for _ in $(seq 50); do curl -sf "http://127.0.0.1:$PORT/readyz" >/dev/null && break; sleep 0.2; done

base="http://127.0.0.1:$PORT"
{
  echo "# upres load run $(date -Is) on $(hostname): $(nproc) cores, wrk -t2 -c$CONNS -d${DURATION}s"
  echo "# source: samples/shop/cat.png (451x300 PNG), engine lanczos x2 → 902x600 WebP"
  echo
  echo "## hit: one URL, served from the memory tier"
  curl -sf -o /dev/null "$base/x2/model=lanczos/format=webp/shop/cat.png"
  wrk -t2 -c"$CONNS" -d"${DURATION}s" --latency "$base/x2/model=lanczos/format=webp/shop/cat.png"
  echo
  echo "## miss: every request a new width (fetch + decode + upscale + resize + encode + store)"
  wrk -t2 -c"$CONNS" -d"${DURATION}s" --latency -s load/miss.lua "$base"
  echo
  echo "## mixed storefront: 80% of requests over 50 warm URLs (zipf), 20% new URLs"
  for w in $(seq 200 249); do curl -sf -o /dev/null "$base/x2/model=lanczos/w=$w/format=webp/shop/cat.png"; done
  wrk -t2 -c"$CONNS" -d"${DURATION}s" --latency -s load/mixed.lua "$base"
  echo
  echo "## server metrics after the runs"
  curl -sf "$base/metrics" | grep -E '^upres_(engine_runs_total|requests_total|engine_queue_depth)'
  echo "peak RSS of the server (kB): $(grep VmHWM /proc/$server/status | awk '{print $2}')"
} 2>&1 | tee "$out/results.txt"
