#!/usr/bin/env bash
# A walk-through of upres with curl: health, model-info, an upload, its stored result, a
# transform URL, and a signed URL. Narration goes to stderr; stdout is one JSON summary line
# (what tests/it/examples.rs checks).
#
#   UPRES_URL=http://127.0.0.1:8080 IMAGE=samples/shop/cat.png SOURCE=shop/cat.png examples/curl.sh
#
# Environment: UPRES_URL (default http://127.0.0.1:8080), IMAGE (a local file to upload; default
# samples/shop/cat.png), SOURCE (a key in the server's default origin; default shop/cat.png),
# UPRES_KEY and UPRES_SALT (hex; set them when the server signs URLs), UPRES_MODEL (default auto).
# Needs curl and, for signing, openssl.
set -euo pipefail
base=${UPRES_URL:-${1:-http://127.0.0.1:8080}}
image=${IMAGE:-samples/shop/cat.png}
source_key=${SOURCE:-shop/cat.png}
model=${UPRES_MODEL:-auto}
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
say() { printf '\n# %s\n' "$*" >&2; }

say "1. Liveness and the API's health (queue depth, readiness)"
health=$(curl -sS -o "$work/health.json" -w '%{http_code}' "$base/api/v1/health")
cat "$work/health.json" >&2

say "2. Which models are loaded, their weights digests, devices and limits"
model_info=$(curl -sS -o "$work/models.json" -w '%{http_code}' "$base/api/v1/model-info")
head -c 400 "$work/models.json" >&2; echo >&2

say "3. Upscale a local file: multipart field 'image' plus optional parameters"
upload=$(curl -sS -o "$work/upscaled.webp" -D "$work/upload.headers" -w '%{http_code}' \
  -F "image=@$image" -F "scale=4" -F "format=webp" -F "model=$model" \
  "$base/api/v1/upscale")
grep -iE '^(etag|location|x-upres-[a-z]+|server-timing):' "$work/upload.headers" >&2 || true
location=$(grep -i '^location:' "$work/upload.headers" | tr -d '\r' | cut -d' ' -f2)
upload_bytes=$(wc -c < "$work/upscaled.webp" | tr -d ' ')

say "4. The Location header names the stored result: fetch it again by its hash"
stored=$(curl -sS -o "$work/stored.webp" -w '%{http_code}' "$base$location")
same=false
cmp -s "$work/upscaled.webp" "$work/stored.webp" && same=true
echo "identical to the upload's answer: $same" >&2

# imgproxy-style signature: base64url(HMAC-SHA256(key, salt || path)), no padding.
sign() {
  local path=$1
  { printf "$(printf '%s' "$UPRES_SALT" | sed 's/../\\x&/g')"; printf '%s' "$path"; } \
    | openssl dgst -sha256 -mac HMAC -macopt "hexkey:$UPRES_KEY" -binary \
    | openssl base64 -A | tr '+/' '-_' | tr -d '='
}

path="/x2/w=100/format=png/$source_key"
signed=null
unsigned=null
if [ -n "${UPRES_KEY:-}" ] && [ -n "${UPRES_SALT:-}" ]; then
  say "5. A transform URL, signed (the server has signing on): /<signature>$path"
  url="/$(sign "$path")$path"
  echo "$url" >&2
  transform=$(curl -sS -o "$work/t.png" -w '%{http_code}' "$base$url")
  say "6. The same URL unsigned is refused with 403 before any work"
  unsigned=$(curl -sS -o /dev/null -w '%{http_code}' "$base$path")
  signed="\"$url\""
else
  say "5. A transform URL: $path (set UPRES_KEY/UPRES_SALT for a server that signs URLs)"
  transform=$(curl -sS -o "$work/t.png" -w '%{http_code}' "$base$path")
fi
transform_bytes=$(wc -c < "$work/t.png" | tr -d ' ')

printf '{"health":%s,"model_info":%s,"upload":{"status":%s,"bytes":%s,"location":"%s"},"stored":{"status":%s,"same":%s},"transform":{"status":%s,"bytes":%s,"signed_path":%s},"unsigned_status":%s}\n' \
  "$health" "$model_info" "$upload" "$upload_bytes" "$location" "$stored" "$same" "$transform" "$transform_bytes" "$signed" "$unsigned"
