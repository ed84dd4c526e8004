#!/usr/bin/env bash
# The C example's test (run by `make test`): the library as shipped (SONAME, exported symbols,
# `make install`), then a 3-member cluster of mcd processes on 127.0.0.1: bootstrap, tokens,
# joins, hooks, transactions written in C on every member read back on another, and a failing
# hook whose message reaches the caller. Ends with "N passed, M failed".
set -uo pipefail
cd "$(dirname "$0")"
ROOT=${ROOT:-$(cd ../.. && pwd)}
LIBDIR=${LIBDIR:?LIBDIR: the directory with libmicrocluster.so}
WAIT_S=${WAIT_S:-120}

work=$(mktemp -d)
pids=()
cleanup() {
    for pid in "${pids[@]}"; do kill -9 "$pid" 2>/dev/null; done
    rm -rf "$work"
}
trap cleanup EXIT

passed=0
failed=0
check() {
    local what=$1
    shift
    if "$@"; then
        passed=$((passed + 1))
        echo "ok: $what"
    else
        failed=$((failed + 1))
        echo "FAILED: $what"
    fi
}

# Waits until file $1 has a line matching $2, or the process $3 has exited, or WAIT_S passed.
wait_for_line() {
    local deadline=$((SECONDS + WAIT_S))
    until grep -q -- "$2" "$1" 2>/dev/null; do
        if ! kill -0 "$3" 2>/dev/null || ((SECONDS >= deadline)); then
            echo "--- $1:"
            cat "$1"
            return 1
        fi
        sleep 0.1
    done
}

# Waits until the process $1 has exited; its status in $exit_status.
wait_exit() {
    local deadline=$((SECONDS + WAIT_S))
    while kill -0 "$1" 2>/dev/null; do
        ((SECONDS < deadline)) || return 1
        sleep 0.1
    done
    wait "$1"
    exit_status=$?
}

# Starts `mcd <dir of member $1> <args…>` in the background, output to its log.
spawn() {
    local member=$1
    shift
    ./mcd "$work/$member" "$@" >"$work/$member.log" 2>&1 &
    pids+=($!)
    eval "pid_$member=$!"
}

address() { echo "127.0.0.1:$(./freeport)"; }

# --- The library as shipped.
so="$LIBDIR/libmicrocluster.so"
check "SONAME is libmicrocluster.so.0" \
    bash -c "readelf -d '$so' | grep -q 'SONAME.*\[libmicrocluster.so.0\]'"
check "only mc_* symbols are exported" \
    bash -c "! nm -D --defined-only '$so' | awk '{print \$3}' | grep -v '^mc_' | grep -q ."
prefix="$work/prefix"
check "make install lays out library, symlinks, header and .pc" bash -c "
    make -s -C '$ROOT/ffi' install-files PREFIX='$prefix' TARGET_DIR='$(dirname "$LIBDIR")' \
        PROFILE='$(basename "$LIBDIR")' >/dev/null &&
    test \"\$(readlink '$prefix/lib/libmicrocluster.so')\" = libmicrocluster.so.0 &&
    test -f \"$prefix/lib/\$(readlink '$prefix/lib/libmicrocluster.so.0')\" &&
    test -f '$prefix/lib/libmicrocluster.a' && test -f '$prefix/include/microcluster.h' &&
    PKG_CONFIG_PATH='$prefix/lib/pkgconfig' pkg-config --cflags --libs microcluster |
        grep -q -- '-I$prefix/include'"
check "mcd builds against the installed library (pkg-config)" bash -c "
    cc -std=c11 -D_POSIX_C_SOURCE=200809L -Wall -Wextra -Werror -o '$work/mcd-installed' mcd.c \
        \$(PKG_CONFIG_PATH='$prefix/lib/pkgconfig' pkg-config --cflags --libs microcluster) \
        -lpthread -Wl,-rpath,'$prefix/lib' &&
    readelf -d '$work/mcd-installed' | grep -q 'NEEDED.*\[libmicrocluster.so.0\]'"
rm -rf "$prefix"

# --- A cluster of three mcd processes.
spawn c1 bootstrap c1 "$(address)"
check "c1 bootstraps" wait_for_line "$work/c1.log" "^mcd: ready" "$pid_c1"
check "the library's logs reach mcd's log callback" \
    grep -q '^mcd: log info microcluster::daemon: Daemon is ready' "$work/c1.log"
check "c1 ran PreInit (bootstrap) and PostBootstrap" bash -c "
    grep -q 'hook PreInit member=.* args={\"bootstrap\":true' '$work/c1.log' &&
    grep -q 'hook PostBootstrap member=c1' '$work/c1.log'"

for member in c2 c3; do
    token=$(./mcd "$work/c1" token "$member")
    check "c1 issues a token for $member" test -n "$token"
    spawn "$member" join "$member" "$(address)" "$token"
    pid_var="pid_$member"
    check "$member joins" wait_for_line "$work/$member.log" "^mcd: ready" "${!pid_var}"
done

check "c2 ran PreInit, PreJoin and PostJoin in order" bash -c "
    grep -o 'hook \(PreInit\|PreJoin\|PostJoin\)' '$work/c2.log' | tr '\n' ' ' |
        grep -q '^hook PreInit hook PreJoin hook PostJoin $'"
check "c1 ran OnNewMember for c2 and c3" bash -c "
    test \$(grep -c 'hook OnNewMember member=c1' '$work/c1.log') = 2"
check "c3 lists three members" bash -c "
    test \$(./mcd '$work/c3' members | grep -o '\"name\":\"c[0-9]\"' | sort -u | wc -l) = 3"
greetings=$(./mcd "$work/c2" sql "SELECT member, seq FROM greetings ORDER BY seq")
check "C transactions of every member are read back on c2" \
    grep -qF '"rows":[["c1",1],["c2",2],["c3",3]]' <<<"$greetings"

# --- The extension endpoint, written in C: asked on c1's control socket, forwarded to c3 over
# mTLS (?target=), answered there from the database; handler errors reach the caller.
answer=$(./mcd "$work/c1" query GET '/1.0/greetings/c2?target=c3')
check "the greeting endpoint answers through c1 from c3" \
    grep -qF '{"member":"c2","seq":2,"served_by":"c3"}' <<<"$answer"
check "c3's handler saw c1 as a trusted member caller" bash -c "
    grep -q 'endpoint mcd.example.com/greeting member=c3 request=.*\"trusted\":true' '$work/c3.log' &&
    grep -q 'endpoint mcd.example.com/greeting member=c3 .*\"caller\":{\"kind\":\"member\",.*\"name\":\"c1\"' '$work/c3.log'"
check "a handler's 404 reaches the caller with its message" bash -c "
    ! ./mcd '$work/c1' query GET '/1.0/greetings/nobody?target=c2' 2>'$work/q404.err' &&
    grep -q 'query failed (4): .*no greeting from nobody' '$work/q404.err'"
check "a handler's 400 reaches the caller with its message" bash -c "
    ! ./mcd '$work/c2' query GET '/1.0/greetings/a.b' 2>'$work/q400.err' &&
    grep -q 'query failed (3): .*malformed member name' '$work/q400.err'"

# --- Memory: client calls (strings and errors out, freed by the caller) under valgrind memcheck.
memcheck() {
    valgrind -q --leak-check=full --errors-for-leak-kinds=definite --error-exitcode=99 \
        --log-file="$work/valgrind.log" ./mcd "$@" >/dev/null 2>&1
    local status=$?
    if ((status == 99)); then cat "$work/valgrind.log"; fi
    return "$status"
}
check "mcd members under valgrind: no invalid access, no leak" memcheck "$work/c1" members
check "a failing mcd sql under valgrind: no invalid access, no leak" \
    bash -c "$(declare -f memcheck); work='$work'; memcheck '$work/c1' sql 'SELEKT 1'; test \$? = 1"
check "mcd query of the endpoint under valgrind: no invalid access, no leak" \
    memcheck "$work/c1" query GET '/1.0/greetings/c1?target=c2'
check "a failing mcd query under valgrind: no invalid access, no leak" \
    bash -c "$(declare -f memcheck); work='$work'; memcheck '$work/c1' query GET /1.0/greetings/x; test \$? = 1"

# --- A failing hook's message reaches the caller.
token=$(./mcd "$work/c1" token c4)
MCD_FAIL_HOOK=PreJoin ./mcd "$work/c4" join c4 "$(address)" "$token" >"$work/c4.log" 2>&1
status=$?
check "a join whose PreJoin fails exits non-zero" test "$status" -ne 0
check "the PreJoin message reaches mc_app_join_cluster" \
    grep -q "mcd: join failed (3): .*PreJoin refused by mcd (MCD_FAIL_HOOK)" "$work/c4.log"

# --- Stop: by signal and through the control socket.
kill -TERM "$pid_c3"
check "c3 stops on SIGTERM" bash -c "
    for _ in \$(seq $((WAIT_S * 10))); do kill -0 $pid_c3 2>/dev/null || exit 0; sleep 0.1; done
    exit 1"
check "mcd stop stops c2" ./mcd "$work/c2" stop
for member in c2 c3; do
    pid_var="pid_$member"
    wait_exit "${!pid_var}"
    check "$member exits cleanly" test "${exit_status:-1}" = 0
    check "$member printed its stop" grep -q "^mcd: stopped" "$work/$member.log"
done
kill -TERM "$pid_c1"
wait_exit "$pid_c1"
check "c1 exits cleanly" test "${exit_status:-1}" = 0

if ((failed > 0)); then
    for log in "$work"/c*.log; do
        echo "--- $log:"
        cat "$log"
    done
fi
echo "$passed passed, $failed failed"
((failed == 0))
