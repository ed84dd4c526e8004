#!/usr/bin/env bash
# Runs microcluster-bench with 1, 16 and 64 writers (SECONDS each, default 10), each followed
# in the same run by the dqlite and etcd peers of shared/peers/ with the same workload.
# Needs: apt-get install -y go-dqlite gawk etcd-server etcd-client protobuf-compiler
set -euo pipefail
cd "$(dirname "$0")/.."
seconds=${1:-10}
cargo build --release --locked --bin microd --bin microcluster-bench
for writers in 1 16 64; do
  target/release/microcluster-bench --members 3 --writers "$writers" --seconds "$seconds"
done
