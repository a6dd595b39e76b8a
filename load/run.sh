#!/usr/bin/env bash
# Load runs against upres on 127.0.0.1 with wrk (Debian's `wrk`): cache-hit throughput, miss
# throughput, a mixed storefront profile, and an overload run. Bounded: each scenario runs
# $DURATION seconds. Results go to load/runs/<date>-<host>/results.txt (results-<scenarios>.txt
# for a subset).
#
#   load/run.sh [duration_s] [connections] [scenarios]     scenarios: "hit miss mixed overload"
#
# LOAD_BIN=path serves that binary instead of building target/debug/upres.
set -euo pipefail
cd "$(dirname "$0")/.."
DURATION=${1:-15}
CONNS=${2:-32}
SCENARIOS=${3:-"hit miss mixed overload"}
PORT=${PORT:-18181}
command -v wrk >/dev/null || { echo "install wrk (apt-get install wrk)"; exit 1; }
scripts/fetch-samples.sh
if [ -z "${LOAD_BIN:-}" ]; then
  cargo build --locked --quiet --bin upres
  LOAD_BIN="${CARGO_TARGET_DIR:-target}/debug/upres"
fi

work=$(mktemp -d)
mkdir -p "$work/origin/shop"
cp samples/shop/cat.png "$work/origin/shop/cat.png"
out="load/runs/$(date +%F)-$(hostname)"
mkdir -p "$out"
report="$out/results.txt"
[ "$SCENARIOS" = "hit miss mixed overload" ] || report="$out/results-${SCENARIOS// /-}.txt"
pids=()
trap 'for p in "${pids[@]}"; do kill "$p" 2>/dev/null; wait "$p" 2>/dev/null; done; rm -rf "$work"' EXIT

# start_server NAME PORT [ENV=VALUE…]: serves the work origin with its own store; sets $server.
start_server() {
  local name=$1 port=$2
  shift 2
  env RUST_LOG=warn "$@" "$LOAD_BIN" serve --listen "127.0.0.1:$port" \
    --origin "file://$work/origin" --store "file://$work/store-$name" > "$work/server-$name.log" 2>&1 &
  server=$!
  pids+=("$server")
  for _ in $(seq 100); do curl -sf "http://127.0.0.1:$port/readyz" >/dev/null && return; sleep 0.2; done
  echo "server $name did not become ready"; cat "$work/server-$name.log"; exit 1
}

# sample_rss PID FILE: the process's RSS in kB every 100 ms until it exits or FILE.stop exists.
sample_rss() {
  while [ ! -e "$2.stop" ] && [ -r "/proc/$1/status" ]; do
    awk '/VmRSS/ {print $2}' "/proc/$1/status" >> "$2"
    sleep 0.1
  done
}

has() { [[ " $SCENARIOS " == *" $1 "* ]]; }

start_server main "$PORT"
base="http://127.0.0.1:$PORT"
{
  echo "# upres load run $(date -Is) on $(hostname): $(nproc) cores, wrk -t2 -c$CONNS -d${DURATION}s, load average $(cut -d" " -f1-3 /proc/loadavg)"
  echo "# source: samples/shop/cat.png (451x300 PNG), engine lanczos x2 → 902x600 WebP; binary $LOAD_BIN"
  if has hit; then
    echo
    echo "## hit: one URL, served from the memory tier"
    curl -sf -o /dev/null "$base/x2/model=lanczos/format=webp/shop/cat.png"
    wrk -t2 -c"$CONNS" -d"${DURATION}s" --latency "$base/x2/model=lanczos/format=webp/shop/cat.png"
  fi
  if has miss; then
    echo
    echo "## miss: every request a new width (fetch + decode + upscale + resize + encode + store)"
    wrk -t2 -c"$CONNS" -d"${DURATION}s" --latency -s load/miss.lua "$base"
  fi
  if has mixed; then
    echo
    echo "## mixed storefront: 80% of requests over 50 warm URLs (zipf), 20% new URLs"
    for w in $(seq 200 249); do curl -sf -o /dev/null "$base/x2/model=lanczos/w=$w/format=webp/shop/cat.png"; done
    wrk -t2 -c"$CONNS" -d"${DURATION}s" --latency -s load/mixed.lua "$base"
  fi
  echo
  echo "## server metrics after the runs"
  curl -sf "$base/metrics" | grep -E '^upres_(engine_runs_total|requests_total|engine_queue_depth)' || true
  echo "peak RSS of the server (kB): $(grep VmHWM /proc/$server/status | awk '{print $2}')"

  if has overload; then
    # Twice the miss run's connections against a server whose inference queue admits a quarter
    # of them: past the queue, requests must get 503 + Retry-After at once, memory must stay flat.
    queue=$((CONNS / 4))
    oport=$((PORT + 1))
    start_server overload "$oport" UPRES_ENGINE__QUEUE_CAPACITY="$queue"
    echo
    echo "## overload: misses from $((CONNS * 2)) connections, engine.queue_capacity=$queue"
    idle=$(awk '/VmRSS/ {print $2}' "/proc/$server/status")
    sample_rss "$server" "$work/rss" &
    sampler=$!
    wrk -t2 -c$((CONNS * 2)) -d"${DURATION}s" --latency -s load/overload.lua "http://127.0.0.1:$oport"
    touch "$work/rss.stop"
    wait "$sampler" 2>/dev/null || true
    echo "server RSS (kB): idle $idle, max during the run $(sort -n "$work/rss" | tail -1) ($(wc -l < "$work/rss") samples, every 100 ms)"
    curl -sf "http://127.0.0.1:$oport/healthz" >/dev/null && echo "healthz after the run: ok"
    curl -sf "http://127.0.0.1:$oport/metrics" | grep -E '^upres_(requests_total|engine_queue_depth)' || true
    # This block runs in a subshell (| tee): stop its server here, the EXIT trap cannot see it.
    kill "$server" 2>/dev/null; wait "$server" 2>/dev/null || true
  fi
} 2>&1 | tee "$report"
