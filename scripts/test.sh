#!/usr/bin/env bash
# Runs every check and test of the project on a fresh machine (Rust toolchain present):
# formatting, lints, a single workspace build, then all tests.
set -euo pipefail
cd "$(dirname "$0")/.."
export CARGO_TERM_COLOR=never

echo "== formatting"
cargo fmt --all --check

echo "== lints"
cargo clippy --workspace --all-targets --locked -- -D warnings

echo "== build (once, reused by every test below)"
cargo build --workspace --all-targets --locked

echo "== tests"
cargo test --workspace --locked
