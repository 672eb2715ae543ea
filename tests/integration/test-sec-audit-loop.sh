#!/bin/bash
# SPDX-License-Identifier: LGPL-2.1-or-later
# audit show/verify never hold the event loop (issue 13, finding 5): while the daemon verifies a
# 200,000-line (~90 MB) log, and while it pages through it for audit show, a real unprivileged
# user's status (granted inspect vaults) and root's status answer within 1 s each; show pages
# (limit/next_cursor) without loss or repetition; verify still reports the whole chain.
. "${top_srcdir:-$(dirname "$0")/../..}/tests/lib.sh"
need_root
need_cmd python3 timeout

U=ckaloop
add_test_user "$U"
chmod 755 "$TEST_TMP"
cat >"$TEST_TMP/policy" <<P
allow group root to manage all-resources in tenancy
allow user $U to inspect vaults in tenancy
P
STATE=$TEST_TMP/state
mkdir -p "$STATE"
N=200000
python3 "$top_srcdir/tests/integration/cmek-audit-gen.py" gen "$STATE/audit.log" $N
chmod 600 "$STATE/audit.log"
start_cmekd "$STATE" --policy "$TEST_TMP/policy"
chmod 755 "$STATE"

# status_latency WHO: seconds one status call takes
status_latency() {
    local t0 t1
    t0=$(date +%s%N)
    if [ "$1" = root ]; then cmekctl status >/dev/null; else as_user_ctl "$1" status >/dev/null; fi || fail "status as $1 failed"
    t1=$(date +%s%N)
    echo $(((t1 - t0) / 1000000))
}

# during_background CMD...: runs CMD in the background and status as $U and root until it ends;
# fails if one status takes 1 s or more, or if none ran while CMD did
during_background() {
    "$@" >"$TEST_TMP/bg.out" 2>"$TEST_TMP/bg.err" &
    local bg=$! n=0 worst=0 ms
    while kill -0 $bg 2>/dev/null; do
        for who in "$U" root; do
            ms=$(status_latency "$who")
            [ "$ms" -lt 1000 ] || fail "status as $who took $ms ms while '$*' ran"
            [ "$ms" -le "$worst" ] || worst=$ms
            kill -0 $bg 2>/dev/null && n=$((n + 1))
        done
    done
    wait $bg || { cat "$TEST_TMP/bg.err"; fail "'$*' failed"; }
    [ $n -ge 2 ] || fail "'$*' ended before status could be measured during it (n=$n): make the log larger"
    log "'$*': $n status calls during it, slowest $worst ms"
}

log "verify of a $N-line log"
during_background timeout 120 "$CMEKCTL_BIN" --socket "$SOCK" audit verify
assert_contains "$(cat "$TEST_TMP/bg.out")" "chain intact"
lines=$(grep -o '[0-9]* entries' "$TEST_TMP/bg.out" | cut -d' ' -f1)
[ "$lines" -gt $N ] || fail "verify saw only $lines lines"

log "show of the same log (the daemon reads all of it for --since)"
during_background timeout 120 "$CMEKCTL_BIN" --socket "$SOCK" --json audit show --since 1d
python3 -c '
import json, sys
e = json.load(open(sys.argv[1]))
assert [x["event"] for x in e][:1] == ["daemon.started"], e[:3]' "$TEST_TMP/bg.out" || fail "audit show --since 1d: $(head -c 300 "$TEST_TMP/bg.out")"

log "pages: limit and next_cursor walk the log without loss or repetition"
cursor=0 seqs=
for i in 1 2 3; do
    r=$(cmekctl_raw "{\"method\":\"io.cmek.Service.AuditShow\",\"parameters\":{\"limit\":4,\"cursor\":$cursor}}")
    seqs="$seqs $(python3 -c 'import json,sys; print(" ".join(str(e["seq"]) for e in json.loads(sys.argv[1])["parameters"]["entries"]))' "$r")"
    cursor=$(json_get "$r" parameters.next_cursor)
    [ "$cursor" != None ] || fail "no next_cursor after page $i: $r"
done
[ "$seqs" = " 1 2 3 4 5 6 7 8 9 10 11 12" ] || fail "pages gave seqs$seqs"

log "a cursor that is not the start of a line is refused"
r=$(cmekctl_raw '{"method":"io.cmek.Service.AuditShow","parameters":{"cursor":5}}')
[ "$(json_get "$r" error)" = org.varlink.service.InvalidParameter ] || fail "bad cursor: $r"
log "ok"
