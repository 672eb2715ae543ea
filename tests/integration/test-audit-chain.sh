#!/bin/bash
# SPDX-License-Identifier: LGPL-2.1-or-later
# Every audited action lands in a hash-chained log; editing, deleting or reordering one line
# makes `cmekctl audit verify` fail and name that line.
. "${top_srcdir:-$(dirname "$0")/../..}/tests/lib.sh"
need_root
need_cmd setpriv python3

chmod 755 "$TEST_TMP"
echo "allow group root to manage all-resources in tenancy" >"$TEST_TMP/policy"
start_cmekd "" --policy "$TEST_TMP/policy"
# some entries: denied calls are audited too
for i in 1 2 3 4 5; do
    setpriv --reuid=nobody --regid=nogroup --clear-groups "$CMEKCTL_BIN" --socket "$SOCK" status >/dev/null 2>&1 || true
done
stop_cmekd
start_cmekd "$STATE" --policy "$TEST_TMP/policy"

cmekctl audit verify >"$TEST_TMP/out" || fail "fresh log does not verify"
assert_contains "$(cat "$TEST_TMP/out")" "chain intact"
cmekctl --json audit show | python3 -c '
import json,sys
e=json.load(sys.stdin)
ev=[x["event"] for x in e]
assert ev.count("policy.denied")==5, ev
assert ev.count("daemon.started")==2 and "daemon.stopped" in ev, ev
d=[x for x in e if x["event"]=="policy.denied"][0]
assert d["uid"]==65534 and d["result"]=="io.cmek.PermissionDenied", d'
cmekctl audit show | grep -q "policy.denied" || fail "human audit show lacks events"
stop_cmekd

log_file=$STATE/audit.log
n=$(wc -l <"$log_file")
[ "$n" -ge 8 ] || fail "only $n audit lines"
cp "$log_file" "$TEST_TMP/orig"

check_broken() { # DESCRIPTION EXPECTED_LINE
    local rc=0
    "$CMEKCTL_BIN" audit verify --file "$TEST_TMP/t" >"$TEST_TMP/out" 2>"$TEST_TMP/err" || rc=$?
    [ $rc -eq "$EXIT_VERIFY_FAILED" ] || fail "$1: verify exited $rc, expected $EXIT_VERIFY_FAILED"
    grep -q "line $2\b" "$TEST_TMP/err" || { cat "$TEST_TMP/err"; fail "$1: does not name line $2"; }
}

# edit one field of line 4
sed '4s/"policy.denied"/"policy.allowed"/; 4s/"uid":65534/"uid":0/' "$TEST_TMP/orig" >"$TEST_TMP/t"
cmp -s "$TEST_TMP/orig" "$TEST_TMP/t" && fail "edit did not change anything"
check_broken "edited line" 4
# delete line 5
sed '5d' "$TEST_TMP/orig" >"$TEST_TMP/t"
check_broken "deleted line" 5
# swap lines 3 and 4
awk 'NR==3{a=$0; next} NR==4{print; print a; next} {print}' "$TEST_TMP/orig" >"$TEST_TMP/t"
check_broken "reordered lines" 3
# drop the head
tail -n +3 "$TEST_TMP/orig" >"$TEST_TMP/t"
check_broken "truncated head" 1
# the untouched copy verifies offline
cp "$TEST_TMP/orig" "$TEST_TMP/t"
"$CMEKCTL_BIN" audit verify --file "$TEST_TMP/t" >/dev/null || fail "copy does not verify"

# and through the daemon, on the tampered live log
sed '4s/"uid":65534/"uid":0/' "$TEST_TMP/orig" >"$log_file"
start_cmekd "$STATE" --policy "$TEST_TMP/policy" || true
expect_exit "$EXIT_VERIFY_FAILED" "$CMEKCTL_BIN" audit verify
grep -q "line 4" "$TEST_TMP/err" || fail "daemon verify does not name line 4"
# no secret-looking material: the log is JSON lines only
python3 -c 'import json,sys; [json.loads(l) for l in open(sys.argv[1])]' "$log_file"
log "ok"
