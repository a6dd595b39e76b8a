#!/usr/bin/env sh
# Installs moto's S3 server (a real HTTP S3 endpoint, PyPI `moto[server]`) for the fleet tests,
# which start it on 127.0.0.1 themselves (tests/it/support.rs `S3Server`). Idempotent and quiet:
# does nothing when one of the interpreters the tests try already imports it
# ($TEST_S3_PYTHON, .venv/bin/python, python3, in that order); else installs into .venv.
set -eu
cd "$(dirname "$0")/.."
SPEC="moto[server]==5.2.1"
for py in ${TEST_S3_PYTHON:-} .venv/bin/python python3; do
    if command -v "$py" >/dev/null 2>&1 && "$py" -c 'import moto.server, yaml' 2>/dev/null; then
        exit 0
    fi
done
[ -x .venv/bin/python ] || python3 -m venv .venv
.venv/bin/python -m pip install --quiet --disable-pip-version-check "$SPEC"
echo "install-moto: installed $SPEC into .venv"
