#!/usr/bin/env bash
# Installs what the tests need beyond cargo, each step skipped when already present; sourced by
# scripts/test.sh (the README's test command), so a fresh machine needs nothing else.
# tests/it/examples.rs runs examples/ against a live server: curl and openssl (curl.sh),
# python3 (client.py, standard library only), node >= 18 (client.mjs).
# tests/it/browser.rs drives the playground in Debian's chromium with playwright-core (npm);
# tests/it/imgproxy.rs signs URLs with @imgproxy/imgproxy-node (npm).
# nasm: the mozjpeg crate builds libjpeg-turbo's SIMD code with it (JPEG shrink-on-load), and
# rav1e (AVIF output) its x86 assembly.
# avifdec (libavif-bin): an independent AVIF decoder, for the AVIF tests and encode-bench.
missing=()
command -v nasm >/dev/null || missing+=(nasm)
command -v avifdec >/dev/null || missing+=(libavif-bin)
command -v curl >/dev/null || missing+=(curl)
command -v openssl >/dev/null || missing+=(openssl)
command -v python3 >/dev/null || missing+=(python3)
command -v node >/dev/null || missing+=(nodejs)
command -v npm >/dev/null || missing+=(npm)
[ -x /usr/bin/chromium ] || missing+=(chromium)
# tests/it/shared_limits.rs starts its own redis-server on 127.0.0.1 (shared rate limits, purges).
command -v redis-server >/dev/null || missing+=(redis-server)
if [ ${#missing[@]} -gt 0 ]; then
  sudo=""
  [ "$(id -u)" -ne 0 ] && command -v sudo >/dev/null && sudo=sudo
  $sudo apt-get update -qq
  DEBIAN_FRONTEND=noninteractive $sudo apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
fi
# tests/it/slo.rs runs `promtool test rules` on deploy/prometheus/: promtool alone, taken out of
# Debian's prometheus package (no Prometheus server installed or started, none of its web deps).
if ! command -v promtool >/dev/null; then
  sudo=""
  [ "$(id -u)" -ne 0 ] && command -v sudo >/dev/null && sudo=sudo
  [ ${#missing[@]} -gt 0 ] || $sudo apt-get update -qq
  tmp=$(mktemp -d)
  (cd "$tmp" && apt-get download -qq prometheus 2>/dev/null && dpkg-deb -x prometheus_*.deb x) \
    && $sudo install -m 0755 "$tmp/x/usr/bin/promtool" /usr/local/bin/promtool
  rm -rf "$tmp"
fi
# playwright-core at the version pinned in tests/browser/package-lock.json; reinstalled only
# when the lock file changes.
if ! cmp -s tests/browser/package-lock.json tests/browser/node_modules/.installed-lock.json; then
  (cd tests/browser && npm ci --no-audit --no-fund --loglevel=error >/dev/null \
    && cp package-lock.json node_modules/.installed-lock.json)
fi

# tests/it/imgproxy.rs builds URLs with imgproxy's official Node SDK, pinned the same way;
# so does examples/imgproxy-srcset/, the srcset page that the same test renders, and
# examples/nuxt-image/ (Nuxt Image's imgproxy provider), whose URLs it fetches too.
for dir in tests/imgproxy examples/imgproxy-srcset examples/nuxt-image; do
  if ! cmp -s "$dir/package-lock.json" "$dir/node_modules/.installed-lock.json"; then
    (cd "$dir" && npm ci --no-audit --no-fund --loglevel=error >/dev/null \
      && cp package-lock.json node_modules/.installed-lock.json)
  fi
done

# The fleet tests start a real S3 server (moto) on 127.0.0.1; the deploy test reads YAML with it.
sh scripts/install-moto.sh
