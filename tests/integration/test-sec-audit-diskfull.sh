#!/bin/bash
# SPDX-License-Identifier: LGPL-2.1-or-later
# The audit log fails closed (issue 13, finding 5): with the state directory's file system full,
# a real unprivileged operator (use keys + volumes + key-delegate in dev) and root get
# io.cmek.AuditUnavailable for unlock --test and for io.cmek.Volume.Unwrap, no DEK is in any
# reply, the log is byte-identical, and status/metrics say why. Once space is back, the same
# calls work without a restart, the gap is recorded (audit.resumed) and the chain verifies.
. "${top_srcdir:-$(dirname "$0")/../..}/tests/lib.sh"
need_root
need_cmd cryptsetup socat python3 mount umount

U=ckadiskfull
add_test_user "$U"
chmod 755 "$TEST_TMP"
STATE=$TEST_TMP/state
mkdir -p "$STATE"
mount -t tmpfs -o size=24M,mode=0700 tmpfs "$STATE" || skip "cannot mount a tmpfs"
on_exit "umount -l '$STATE'"
chmod 755 "$STATE"
cat >"$TEST_TMP/policy" <<P
allow group root to manage all-resources in tenancy
allow user $U to use keys in compartment dev
allow user $U to use key-delegate in compartment dev
allow user $U to use volumes in compartment dev
P
start_cmekd "$STATE" --policy "$TEST_TMP/policy" --metrics-file "$TEST_TMP/metrics.prom"

cmekctl key create fullk --compartment dev >/dev/null
K=$(key_id dev/fullk)
IMG=$TEST_TMP/v.img
cmekctl volume create "$IMG" --key "$K" --size 16M >/dev/null
chmod 644 "$IMG"
UUID=$(cryptsetup luksUUID "$IMG")
TOK=$(cryptsetup luksDump --dump-json-metadata "$IMG" | python3 -c '
import json, sys
h = json.load(sys.stdin)
print(json.dumps([t for t in h["tokens"].values() if t["type"] == "cmek"][0]))')
UNWRAP="{\"method\":\"io.cmek.Volume.Unwrap\",\"parameters\":{\"uuid\":\"$UUID\",\"token\":$TOK}}"
unwrap_as() { # USER: the raw reply of Unwrap as USER
    printf '%s\0' "$UNWRAP" | as_user "$1" socat -t 10 - "UNIX-CONNECT:$SOCK" | tr -d '\0'
}

log "baseline: both calls work for the operator"
as_user_ctl "$U" volume unlock --test "$IMG" >/dev/null || fail "operator cannot unlock --test before the disk is full"
r=$(unwrap_as "$U")
[ -n "$(json_get "$r" parameters.secret)" ] && [ "$(json_get "$r" parameters.secret)" != None ] || fail "no DEK before the disk is full: $r"

log "fill the state directory's file system"
dd if=/dev/zero of="$STATE/fill" bs=64k >/dev/null 2>&1 || true
avail=$(df --output=avail -B1 "$STATE" | tail -1)
[ "$avail" -lt 65536 ] || fail "tmpfs not full: $avail bytes free"
# the checkpoint of the baseline's records (a timer, at most once a second) may still land in
# the little room left: let it, then take the snapshot
sleep 1.5
sha_before=$(sha256sum <"$STATE/audit.log")
ok_before=$(grep -c '"result":"ok"' "$STATE/audit.log")

log "unlock --test (operator and root) refused with AuditUnavailable"
expect_exit "$EXIT_FAILURE" as_user_ctl "$U" volume unlock --test "$IMG"
assert_contains "$(cat "$TEST_TMP/err")" "io.cmek.AuditUnavailable"
assert_contains "$(cat "$TEST_TMP/err")" "$STATE/audit.log"
assert_contains "$(cat "$TEST_TMP/err")" "Free space"
expect_exit "$EXIT_FAILURE" cmekctl volume unlock --test "$IMG"
assert_contains "$(cat "$TEST_TMP/err")" "io.cmek.AuditUnavailable"

log "Unwrap (operator and root) refused, no secret in the reply"
for who in "$U" root; do
    r=$(unwrap_as "$who")
    [ "$(json_get "$r" error)" = io.cmek.AuditUnavailable ] || fail "Unwrap as $who with the disk full: $r"
    assert_not_contains "$r" '"secret"'
done
[ "$(sha256sum <"$STATE/audit.log")" = "$sha_before" ] || fail "the audit log changed while full"

log "status and metrics show the condition"
st=$(cmekctl status)
assert_contains "$st" "unavailable (No space left on device)"
m=$(cmekctl_raw '{"method":"io.cmek.Metrics.Prometheus"}')
assert_contains "$m" "cmek_audit_writable 0"
PROM="python3 $top_srcdir/tests/integration/prom-check.py"
[ "$($PROM "$TEST_TMP/metrics.prom" --get cmek_audit_writable)" = 0 ] || fail "metrics file: cmek_audit_writable is not 0"
# read-only calls keep working
cmekctl key list >/dev/null || fail "key list refused while the audit log is full"
# the journal still got the refused unwraps' records if journald runs (not required here)

log "free space: service resumes by itself, no restart"
rm -f "$STATE/fill"
as_user_ctl "$U" volume unlock --test "$IMG" >/dev/null || { cat "$TEST_TMP/cmekd.log" | tail -5; fail "operator still refused after space came back"; }
r=$(unwrap_as "$U")
[ "$(json_get "$r" error)" = None ] && [ -n "$(json_get "$r" parameters.secret)" ] || fail "Unwrap after recovery: $r"
st=$(cmekctl status)
assert_contains "$st" "audit"
assert_not_contains "$st" "unavailable"
m=$(cmekctl_raw '{"method":"io.cmek.Metrics.Prometheus"}')
assert_contains "$m" "cmek_audit_writable 1"
[ "$($PROM "$TEST_TMP/metrics.prom" --get cmek_audit_writable)" = 1 ] || fail "metrics file: cmek_audit_writable is not 1 after recovery"
cmekctl audit verify >"$TEST_TMP/out" || fail "audit verify after recovery: $(cat "$TEST_TMP/out" "$TEST_TMP/err")"
assert_contains "$(cat "$TEST_TMP/out")" "chain intact"
grep -q '"event":"audit.resumed"' "$STATE/audit.log" || fail "no audit.resumed line recording the gap"
grep '"event":"audit.resumed"' "$STATE/audit.log" | grep -q "journal only" || fail "audit.resumed does not say where the records went"
[ "$(grep -c '"result":"ok"' "$STATE/audit.log")" -gt "$ok_before" ] || fail "nothing recorded after recovery"
log "ok"
