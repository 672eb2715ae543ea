#!/bin/bash
# SPDX-License-Identifier: LGPL-2.1-or-later
# Who may do what: a caller without any grant is refused and told only what he was refused
# (no statement, no compartment); once he holds a grant there he is told the statement he lacks;
# adding it and reloading (SIGHUP) lets the same call through; a broken policy names
# file:line:column and a reload with it keeps the old policy.
. "${top_srcdir:-$(dirname "$0")/../..}/tests/lib.sh"
need_root
need_cmd setpriv socat python3

chmod 755 "$TEST_TMP"
POLICY=$TEST_TMP/policy
cat >"$POLICY" <<'P'
# only admins for now
allow group root to manage all-resources in tenancy
P
start_cmekd "" --policy "$POLICY"
chmod 755 "$STATE" 2>/dev/null || true

as_nobody() { setpriv --reuid=nobody --regid=nogroup --clear-groups "$@"; }

# nobody holds no grant: refused, told what was refused and whom to ask, but not the statement
rc=0
as_nobody "$CMEKCTL_BIN" --socket "$SOCK" status >"$TEST_TMP/out" 2>"$TEST_TMP/err" || rc=$?
[ $rc -eq "$EXIT_PERMISSION" ] || { cat "$TEST_TMP/err"; fail "nobody: exit $rc, expected $EXIT_PERMISSION (permission denied)"; }
err=$(cat "$TEST_TMP/err")
assert_contains "$err" "io.cmek.PermissionDenied"
assert_contains "$err" "inspect vaults"
assert_contains "$err" "cmekd-policy(5)"
assert_not_contains "$err" "allow user"

# the raw Varlink error carries the verb and resource, no statement
raw=$(printf '%s\0' '{"method":"io.cmek.Service.Status"}' | setpriv --reuid=nobody --regid=nogroup --clear-groups socat -t 5 - "UNIX-CONNECT:$SOCK" | tr -d '\0')
[ "$(json_get "$raw" error)" = io.cmek.PermissionDenied ] || fail "raw: $raw"
[ "$(json_get "$raw" parameters.verb)" = inspect ] || fail "verb missing: $raw"
[ "$(json_get "$raw" parameters.resource)" = vaults ] || fail "resource missing: $raw"
[ "$(json_get "$raw" parameters.statement)" = None ] || fail "a caller without a grant got the statement: $raw"

# root may ask what nobody may do, from the same engine
expect_exit "$EXIT_PERMISSION" "$CMEKCTL_BIN" policy check --user nobody inspect vaults
assert_contains "$(cat "$TEST_TMP/out")" "allow user nobody to inspect vaults in tenancy"
cmekctl policy check --user root manage keys --compartment Prod | grep -qx allowed || fail "root should be allowed"

# add the statement, reload, and the same call succeeds
echo "allow user nobody to inspect vaults in tenancy" >>"$POLICY"
kill -HUP "$CMEKD_PID"
for ((i = 0; i < 100; i++)); do
    as_nobody "$CMEKCTL_BIN" --socket "$SOCK" status >/dev/null 2>&1 && break
    sleep 0.05
done
as_nobody "$CMEKCTL_BIN" --socket "$SOCK" status >"$TEST_TMP/out" 2>&1 || { cat "$TEST_TMP/out"; fail "nobody still refused after reload"; }
# but inspect does not imply read of the audit log; now that nobody holds a grant in the
# tenancy, he is told the statement he lacks, in the message and in the raw error
expect_exit "$EXIT_PERMISSION" as_nobody "$CMEKCTL_BIN" --socket "$SOCK" audit show
assert_contains "$(cat "$TEST_TMP/err")" "allow user nobody to read audit in tenancy"
raw=$(printf '%s\0' '{"method":"io.cmek.Service.AuditShow"}' | setpriv --reuid=nobody --regid=nogroup --clear-groups socat -t 5 - "UNIX-CONNECT:$SOCK" | tr -d '\0')
[ "$(json_get "$raw" parameters.statement)" = "allow user nobody to read audit in tenancy" ] || fail "statement missing: $raw"

# a broken policy: SIGHUP keeps the old one
echo "allow user nobody to fly keys in tenancy" >>"$POLICY"
kill -HUP "$CMEKD_PID"
for ((i = 0; i < 100; i++)); do grep -q "keeping the old policy" "$TEST_TMP/cmekd.log" && break; sleep 0.05; done
grep -q "keeping the old policy" "$TEST_TMP/cmekd.log" || fail "no reload error logged"
grep "keeping the old policy" "$TEST_TMP/cmekd.log" | grep -q "$POLICY:4:" || fail "reload error does not name $POLICY:4:col"
as_nobody "$CMEKCTL_BIN" --socket "$SOCK" status >/dev/null || fail "old policy lost after a bad reload"
cmekctl status >/dev/null
stop_cmekd

# a broken policy at start: refused with file:line:column and what was expected
printf 'allow group root to manage keys\n' >"$TEST_TMP/bad"
rc=0; "$CMEKD" --state-dir "$TEST_TMP/s2" --socket "$TEST_TMP/s2.sock" --policy "$TEST_TMP/bad" >"$TEST_TMP/err" 2>&1 || rc=$?
[ $rc -ne 0 ] || fail "cmekd started with a broken policy"
grep -q "$TEST_TMP/bad:1:[0-9]*: expected" "$TEST_TMP/err" || { cat "$TEST_TMP/err"; fail "no file:line:column in the error"; }
log "ok"
