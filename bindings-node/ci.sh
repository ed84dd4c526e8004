#!/usr/bin/env bash
# CI for the Node binding: from a machine with Node 20 + npm and the Rust toolchain.
# A debug build; honours CARGO_TARGET_DIR, so a preceding `cargo build --workspace` is reused.
set -euo pipefail
cd "$(dirname "$0")"
npm ci --no-audit --no-fund
npm run build
npm test
# The example daemon: two mcd.mjs processes, the extension endpoint across them.
../examples/node/smoke.sh
