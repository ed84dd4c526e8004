#!/usr/bin/env bash
# Runs every check and test of the project on a fresh machine (Rust toolchain present):
# formatting, lints, a single workspace build, all Rust tests (including the check that
# include/microcluster.h is fresh), then the C example against the library just built, then
# the Python package (built into a venv, tested with pytest and mypy.stubtest), then the Node
# module (npm ci, napi build, node --test).
set -euo pipefail
cd "$(dirname "$0")/.."
export CARGO_TERM_COLOR=never

echo "== system packages"
# libclang: rusqlite's session extension (bindgen). pkg-config, valgrind: the C example's test.
# bsdutils: `script`, which gives the recovery test a terminal.
missing=$(for p in libclang-dev pkg-config valgrind bsdutils; do dpkg -s "$p" >/dev/null 2>&1 || echo "$p"; done)
if [ -n "$missing" ]; then
    apt-get update -qq
    # shellcheck disable=SC2086 # one word per package
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq $missing
fi

echo "== formatting"
cargo fmt --all --check

echo "== lints"
cargo clippy --workspace --all-targets --locked -- -D warnings

echo "== build (once, reused by every test below)"
cargo build --workspace --all-targets --locked

echo "== tests"
log=$(mktemp)
trap 'rm -f "$log"' EXIT
cargo test --workspace --locked 2>&1 | tee "$log"
# One closing line for the whole run (cargo prints one per test binary, the last often empty).
awk '/^test result:/ { passed += $4; failed += $6 } END { printf "cargo: %d passed, %d failed\n", passed, failed }' "$log"

echo "== C example (mcd) and C tests (mctest): the library as shipped, a 3-process cluster, a 3-member cluster in one process, bad input under valgrind"
make -C examples/c
make -C examples/c test

echo "== Python package: maturin develop into a venv under target/, pytest, mypy.stubtest"
bindings-python/ci.sh

echo "== Node module: npm ci, napi build (debug, reusing target/), node --test"
bindings-node/ci.sh
