#!/usr/bin/env bash
# Builds the Python package into a venv and tests it: pytest, then mypy.stubtest.
# Needs Python >= 3.11 with pip and the Rust toolchain. Honours CARGO_TARGET_DIR (default: the
# workspace's target/), where the venv lives too, so the workspace build is reused.
set -euo pipefail
here="$(cd "$(dirname "$0")" && pwd)"
root="$(dirname "$here")"
target="${CARGO_TARGET_DIR:-$root/target}"
venv="$target/python-venv"
python="${PYTHON:-python3}"

if [ ! -x "$venv/bin/python" ]; then
    "$python" -m venv "$venv"
fi
"$venv/bin/pip" install --quiet --disable-pip-version-check 'maturin==1.16.0' pytest mypy

cd "$here"
# maturin develop needs an active virtualenv.
VIRTUAL_ENV="$venv" PATH="$venv/bin:$PATH" CARGO_TARGET_DIR="$target" \
    "$venv/bin/maturin" develop --locked --quiet
"$venv/bin/python" -m pytest -q tests
"$venv/bin/python" -m mypy.stubtest microcluster
# The example daemon: two mcd.py processes, the extension endpoint across them.
PYTHON="$venv/bin/python" "$root/examples/python/smoke.sh"
