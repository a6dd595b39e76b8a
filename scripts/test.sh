#!/usr/bin/env bash
# The test command: fetch the model weights the parity tests need, then run every test.
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/fetch-models.sh
# curl, openssl, python3, node/npm, chromium + playwright-core, moto: installed when missing.
source scripts/install-test-tools.sh
cargo test --locked "$@"
# The kernel and model tests again with CPU features hidden from the kernel selector
# (kernels.hide_cpu_features, env alias UPRES_CPU_HIDE), so this machine also proves the paths
# of CPUs that lack them: without AMX (AMD EPYC, older Xeons) and without AVX-512 (AVX2-only
# x86). Only for the full run: arguments filter the first run alone.
if [ $# -eq 0 ]; then
  if grep -qw amx_tile /proc/cpuinfo 2>/dev/null; then
    UPRES_CPU_HIDE=amx cargo test --locked --lib ml::
  else
    echo "test.sh: this CPU has no AMX; the run above already is the run without it"
  fi
  UPRES_CPU_HIDE=avx512 cargo test --locked --lib ml::fastconv
fi
