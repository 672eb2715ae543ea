#!/bin/bash
# SPDX-License-Identifier: LGPL-2.1-or-later
# The audit chain is anchored in the token (issue 13, finding 13). A real local user who may
# write the audit log (group-writable here: the "can write the state directory, cannot use the
# token" attacker) cuts its tail, and then rewrites a line and recomputes the whole chain as the
# format says: offline verification (no token) still calls both logs intact, `cmekctl audit
# verify` through the daemon reports "tail cut after checkpoint N" and "chain recomputed
# (checkpoint HMAC mismatch)"; the untouched log verifies; after a cut and a restart the daemon
# records the discontinuity instead of continuing the chain seamlessly.
. "${top_srcdir:-$(dirname "$0")/../..}/tests/lib.sh"
need_root
need_cmd python3 pkcs11-tool

U=ckaanchor
add_test_user "$U"
chmod 755 "$TEST_TMP"
GEN=$top_srcdir/tests/integration/cmek-audit-gen.py
cat >"$TEST_TMP/policy" <<P
allow group root to manage all-resources in tenancy
P
start_cmekd "" --policy "$TEST_TMP/policy"
LOG=$STATE/audit.log

log "activity, then a checkpoint (at most 1 s later)"
cmekctl key create ak --compartment prod >/dev/null
sleep 1.6
for i in 1 2 3; do as_user_ctl "$U" key list >/dev/null 2>&1 || true; as_user_ctl "$U" status >/dev/null 2>&1 || true; done
sleep 2.2
cmekctl audit verify >"$TEST_TMP/out" || fail "fresh log: $(cat "$TEST_TMP/out" "$TEST_TMP/err")"
assert_contains "$(cat "$TEST_TMP/out")" "anchored in the token"
tail -1 "$LOG" | grep -q '"event":"audit.checkpoint"' || fail "the last line is not a checkpoint: $(tail -1 "$LOG")"
grep -q '"event":"audit.checkpoint".*"mac":"[0-9a-f]\{64\}"' "$LOG" || fail "no checkpoint with a mac"

log "the HMAC key is in the token, sensitive and never extractable"
SOFTHSM=/usr/lib/softhsm/libsofthsm2.so
PIN=$(sed -n 's/^user-pin=//p' "$STATE/pins")
if [ -e "$SOFTHSM" ]; then
    SOFTHSM2_CONF=$STATE/softhsm2.conf pkcs11-tool --module "$SOFTHSM" --token-label cmekd-default --login \
        --pin "$PIN" --list-objects >"$TEST_TMP/objs" 2>/dev/null || fail "pkcs11-tool --list-objects failed"
    grep -A10 "label: *cmek:audit-hmac" "$TEST_TMP/objs" >"$TEST_TMP/hmac" || fail "no cmek:audit-hmac key in the token"
    grep -q "never extractable" "$TEST_TMP/hmac" || fail "the audit HMAC key is not never-extractable: $(cat "$TEST_TMP/hmac")"
    grep -q "Usage:.*verify" "$TEST_TMP/hmac" || fail "the audit HMAC key is not an HMAC key: $(cat "$TEST_TMP/hmac")"
    grep -q "cmek:audit-anchor" "$TEST_TMP/objs" || fail "no cmek:audit-anchor object in the token"
fi

cp "$LOG" "$TEST_TMP/orig"
# the attacker may write the log (not the token, not the PIN)
chgrp "$U" "$LOG"; chmod 660 "$LOG"; chmod 711 "$STATE"
restore() { cat "$TEST_TMP/orig" >"$LOG"; }
as_attacker() { as_user "$U" "$@"; }

log "attack 1: cut the tail (the last checkpoint and the line before it)"
n=$(wc -l <"$TEST_TMP/orig")
as_attacker /usr/bin/python3 -c '
import sys
p, keep = sys.argv[1], int(sys.argv[2])
lines = open(p).readlines()[:keep]
open(p, "w").writelines(lines)' "$LOG" $((n - 2)) || fail "the attacker could not cut the log"
[ "$(wc -l <"$LOG")" = $((n - 2)) ] || fail "cut did not happen"
cp "$LOG" "$TEST_TMP/cut"; chmod 644 "$TEST_TMP/cut"
"$CMEKCTL_BIN" audit verify --file "$TEST_TMP/cut" >"$TEST_TMP/out" || fail "the cut log should look intact offline"
assert_contains "$(cat "$TEST_TMP/out")" "only the hash chain"
expect_exit "$EXIT_VERIFY_FAILED" cmekctl audit verify
assert_contains "$(cat "$TEST_TMP/err")" "tail cut after checkpoint"
restore
cmekctl audit verify >/dev/null || fail "restored log does not verify"

log "attack 2: edit a denial (hide the attacker's uid) and recompute every prev/hash"
python3 - "$TEST_TMP/orig" "$TEST_TMP/edited" "$(id -u "$U")" <<'PY'
import sys
src, dst, uid = sys.argv[1], sys.argv[2], sys.argv[3]
out, done = [], False
for l in open(src):
    if not done and '"event":"policy.denied"' in l and '"uid":%s,' % uid in l:
        l = l.replace('"uid":%s,' % uid, '"uid":0,', 1); done = True
    out.append(l)
assert done, "no denial of the attacker to edit"
open(dst, "w").writelines(out)
PY
chmod 644 "$TEST_TMP/edited"; touch "$TEST_TMP/rechained"; chown "$U" "$TEST_TMP/rechained"
as_attacker /usr/bin/python3 "$GEN" rechain "$TEST_TMP/edited" "$TEST_TMP/rechained" || fail "rechain as the attacker failed"
cmp -s "$TEST_TMP/rechained" "$TEST_TMP/orig" && fail "the rewrite changed nothing"
"$CMEKCTL_BIN" audit verify --file "$TEST_TMP/rechained" >/dev/null || fail "the recomputed chain should verify offline (that is the attack)"
as_attacker sh -c "cat '$TEST_TMP/rechained' >'$LOG'" || fail "the attacker could not rewrite the log"
expect_exit "$EXIT_VERIFY_FAILED" cmekctl audit verify
assert_contains "$(cat "$TEST_TMP/err")" "chain recomputed (checkpoint HMAC mismatch"
restore
cmekctl audit verify >"$TEST_TMP/out" || fail "restored log does not verify"
assert_contains "$(cat "$TEST_TMP/out")" "chain intact"

log "attack 3: cut the tail while the daemon is down; the restarted daemon records the cut"
stop_cmekd
as_attacker sh -c "cat '$TEST_TMP/cut' >'$LOG'"
start_cmekd "$STATE" --policy "$TEST_TMP/policy"
grep -q '"event":"audit.discontinuity".*tail cut' "$LOG" || fail "no audit.discontinuity line after the cut: $(tail -3 "$LOG" | cut -c1-200)"
[ "$(sed -n "$((n - 1))p" "$LOG" | python3 -c 'import json,sys; print(json.loads(sys.stdin.read())["event"])')" = audit.discontinuity ] ||
    fail "the discontinuity is not recorded right after the cut"
expect_exit "$EXIT_VERIFY_FAILED" cmekctl audit verify
assert_contains "$(cat "$TEST_TMP/err")" "discontinuity"
assert_contains "$(cat "$TEST_TMP/err")" "tail cut"
log "ok"
