#!/usr/bin/env bash
# The test command: fetch the model weights the parity tests need, then run every test.
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/fetch-models.sh
cargo test --locked "$@"
