#!/usr/bin/env bash
# Runs every check and test of the project on a fresh machine (Rust toolchain present):
# formatting, lints, a single workspace build, then all tests.
set -euo pipefail
cd "$(dirname "$0")/.."
export CARGO_TERM_COLOR=never

echo "== system packages"
# rusqlite's SQLite session extension is bound with bindgen, which needs libclang.
if ! dpkg -s libclang-dev >/dev/null 2>&1; then
    apt-get update -qq
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq libclang-dev
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
