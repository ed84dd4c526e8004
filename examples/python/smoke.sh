#!/usr/bin/env bash
# Smoke test of mcd.py (run by bindings-python/ci.sh): two members in two processes, the
# extension endpoint called on c1 and forwarded to c2, a handler's 404, and clean stops.
# PYTHON is an interpreter with the microcluster package installed.
set -uo pipefail
cd "$(dirname "$0")"
PYTHON=${PYTHON:-python3}
WAIT_S=${WAIT_S:-120}
work=$(mktemp -d)
pids=()
trap 'for pid in "${pids[@]}"; do kill -9 "$pid" 2>/dev/null; done; rm -rf "$work"' EXIT
fail() { echo "FAILED: $*"; for log in "$work"/*.log; do echo "--- $log"; cat "$log"; done; exit 1; }
port() { "$PYTHON" -c 'import socket; s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])'; }
wait_line() { # file pattern pid
    local deadline=$((SECONDS + WAIT_S))
    until grep -q -- "$2" "$1" 2>/dev/null; do
        kill -0 "$3" 2>/dev/null && ((SECONDS < deadline)) || fail "waiting for '$2' in $1"
        sleep 0.1
    done
}
mcd() { "$PYTHON" mcd.py "$@"; }

"$PYTHON" mcd.py "$work/c1" bootstrap c1 "127.0.0.1:$(port)" >"$work/c1.log" 2>&1 &
pids+=($!); c1=$!
wait_line "$work/c1.log" "^mcd: ready" "$c1"
grep -q "^mcd: hook post_bootstrap member=c1" "$work/c1.log" || fail "c1 logged post_bootstrap"
token=$(mcd "$work/c1" token c2) || fail "token"
"$PYTHON" mcd.py "$work/c2" join c2 "127.0.0.1:$(port)" "$token" >"$work/c2.log" 2>&1 &
pids+=($!); c2=$!
wait_line "$work/c2.log" "^mcd: ready" "$c2"

answer=$(mcd "$work/c1" query GET '/1.0/greetings/c1?target=c2') || fail "query"
[ "$answer" = '{"member": "c1", "seq": 1, "served_by": "c2"}' ] || fail "endpoint answer: $answer"
grep -q "endpoint greeting member=c1 caller=member" "$work/c2.log" || fail "c2 served c1's request"
mcd "$work/c1" query GET /1.0/greetings/nobody 2>"$work/q.err" && fail "nobody found"
grep -q "query failed (NOT_FOUND): no greeting from nobody" "$work/q.err" || fail "404: $(cat "$work/q.err")"

mcd "$work/c2" stop || fail "stop c2"
kill -TERM "$c1"
for pid in "$c1" "$c2"; do wait "$pid" || fail "a member exited with $?"; done
grep -q "^mcd: stopped" "$work/c1.log" && grep -q "^mcd: stopped" "$work/c2.log" || fail "stopped"
echo "mcd.py smoke test: ok"
