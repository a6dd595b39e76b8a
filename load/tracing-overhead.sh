#!/usr/bin/env bash
# What the request span and OTLP span export cost: the same memory-hit URL under wrk, against
# one server with `telemetry.otlp_endpoint` empty and one exporting to a local sink (a Python
# HTTP server answering every POST 200), side by side in one run. Prints both wrk summaries and
# how many OTLP posts the sink got.
#
#   load/tracing-overhead.sh            (DURATION=10s CONNECTIONS=16 by default)
#   TRACEPARENT= SAMPLE_RATIO=0.1 load/tracing-overhead.sh   no caller trace, 10% of traces exported
#
# LOAD_BIN=path serves that binary instead of building target/debug/upres.
set -euo pipefail
cd "$(dirname "$0")/.."
DURATION=${DURATION:-10s}
# Every request carries this (sampled) caller trace unless TRACEPARENT is set empty.
TRACEPARENT=${TRACEPARENT-00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01}
SAMPLE_RATIO=${SAMPLE_RATIO:-1}
CONNECTIONS=${CONNECTIONS:-16}
if [ -z "${LOAD_BIN:-}" ]; then
  cargo build --locked --quiet --bin upres
  LOAD_BIN=${CARGO_TARGET_DIR:-target}/debug/upres
fi
work=$(mktemp -d)
mkdir -p "$work/origin" "$work/models"
python3 - "$work/origin/a.png" <<'EOF'
import sys, zlib, struct
w = h = 64
raw = b"".join(b"\0" + bytes(v for x in range(w) for v in (x * 4 % 256, y * 4 % 256, 128)) for y in range(h))
def chunk(t, d): return struct.pack(">I", len(d)) + t + d + struct.pack(">I", zlib.crc32(t + d))
open(sys.argv[1], "wb").write(b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", struct.pack(">IIBBBBB", w, h, 8, 2, 0, 0, 0)) + chunk(b"IDAT", zlib.compress(raw)) + chunk(b"IEND", b""))
EOF
cat > "$work/sink.py" <<'EOF'
import http.server, sys
class Sink(http.server.BaseHTTPRequestHandler):
    posts = 0
    def do_POST(self):
        self.rfile.read(int(self.headers.get("content-length", 0)))
        Sink.posts += 1
        open(sys.argv[2], "w").write(str(Sink.posts))
        self.send_response(200); self.send_header("content-length", "0"); self.end_headers()
    def log_message(self, *a): pass
http.server.ThreadingHTTPServer(("127.0.0.1", int(sys.argv[1])), Sink).serve_forever()
EOF
pids=()
trap 'for p in "${pids[@]}"; do kill "$p" 2>/dev/null; wait "$p" 2>/dev/null; done; rm -rf "$work"' EXIT
python3 "$work/sink.py" 18197 "$work/posts" & pids+=($!)
serve() { # port, otlp endpoint
  UPRES_TELEMETRY__OTLP_ENDPOINT="$2" UPRES_TELEMETRY__OTLP_SAMPLE_RATIO="$SAMPLE_RATIO" "$LOAD_BIN" serve --listen "127.0.0.1:$1" \
    --models "$work/models" --origin "file://$work/origin" --store "" > "$work/server-$1.log" 2>&1 &
  pids+=($!)
  for _ in $(seq 300); do curl -sf "http://127.0.0.1:$1/readyz" >/dev/null && return; sleep 0.1; done
  echo "server on $1 not ready"; cat "$work/server-$1.log"; exit 1
}
serve 18195 ""
serve 18196 "http://127.0.0.1:18197"
echo "# $(date -Is) $(lscpu | sed -n 's/^Model name: *//p'), $(nproc) cores, load $(cut -d' ' -f1-3 /proc/loadavg)"
for port in 18195 18196; do
  url="http://127.0.0.1:$port/x2/format=png/a.png"
  curl -sf -o /dev/null "$url" # the miss; wrk then measures memory hits
  # Both log at `info` (one line per request, to a file): the difference is the export alone.
  [ $port = 18195 ] && echo "## otlp_endpoint = \"\"" || echo "## otlp_endpoint = local sink, otlp_sample_ratio = $SAMPLE_RATIO"
  header=()
  [ -n "$TRACEPARENT" ] && header=(-H "traceparent: $TRACEPARENT")
  wrk -t2 -c"$CONNECTIONS" -d"$DURATION" --latency "${header[@]}" "$url" \
    | grep -E "Requests/sec|Latency|50%|99%"
done
kill "${pids[2]}"; wait "${pids[2]}" 2>/dev/null || true # the exporting server: flush on SIGTERM
echo "OTLP posts received: $(cat "$work/posts" 2>/dev/null || echo 0)"
