#!/usr/bin/env sh
# Added latency of a Redis-backed rate-limit check on loopback: one EVALSHA of
# src/guard/gcra.lua (what each limited request costs with rate_limit.backend = "redis://…"),
# next to a bare PING (the round trip alone). One client, one request at a time.
#   sh load/redis-limit.sh            # starts its own redis-server on a free port
#   N=50000 sh load/redis-limit.sh
set -eu
cd "$(dirname "$0")/.."
N=${N:-20000}
PORT=$(python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])')
redis-server --bind 127.0.0.1 --port "$PORT" --save '' --appendonly no >/dev/null &
SERVER=$!
trap 'kill $SERVER' EXIT
until redis-cli -p "$PORT" ping >/dev/null 2>&1; do sleep 0.1; done
SHA=$(redis-cli -p "$PORT" -x script load < src/guard/gcra.lua)
lscpu | grep 'Model name'
echo "redis-server $(redis-server --version | sed 's/.*v=\([^ ]*\).*/\1/'), $N requests, 1 client"
summary() {
  # redis-benchmark's "latency summary (msec)": avg min p50 p95 p99 max
  redis-benchmark -p "$PORT" -c 1 -n "$N" "$@" | awk '/latency summary/ {getline; getline; print}'
}
echo "command            avg      min      p50      p95      p99      max   (ms)"
printf 'PING          '; summary PING
# 1000 tokens a second with a large burst: most calls take a token, the rest compute the wait.
printf 'GCRA check    '; summary EVALSHA "$SHA" 1 upres:rl:bench:127.0.0.1 1000 1000000000
