#!/usr/bin/env bash
# The demo: builds microd and microctl, starts a member on a temporary state directory, waits
# until it is ready, shows its status, and shuts it down.
set -euo pipefail
cd "$(dirname "$0")/.."
cargo build --locked --bin microd --bin microctl
bin=target/debug
state=$(mktemp -d -t microcluster-demo.XXXXXX)
trap 'kill $(jobs -p) 2>/dev/null || true; rm -rf "$state"' EXIT

echo "+ microd --state-dir $state/c1 &"
$bin/microd --state-dir "$state/c1" --heartbeat 2s &
echo "+ microctl --state-dir $state/c1 waitready --timeout 60"
$bin/microctl --state-dir "$state/c1" waitready --timeout 60
echo "+ microctl --state-dir $state/c1 status"
$bin/microctl --state-dir "$state/c1" status
echo "+ microctl --state-dir $state/c1 shutdown"
$bin/microctl --state-dir "$state/c1" shutdown
wait
echo "microd stopped; control socket removed: $([ -e "$state/c1/control.socket" ] && echo no || echo yes)"
