#!/usr/bin/env bash
# The test command: fetch the model weights the parity tests need, then run every test.
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/fetch-models.sh
# curl, openssl, python3, node/npm, chromium + playwright-core, moto: installed when missing.
source scripts/install-test-tools.sh
cargo test --locked "$@"
