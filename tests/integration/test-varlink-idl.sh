#!/bin/bash
# SPDX-License-Identifier: LGPL-2.1-or-later
# The Varlink interfaces as declared (daemon/varlink-idl.c): every description GetInterfaceDescription
# returns parses with a standard Varlink IDL parser (varlink-go-interface-generator); "parameters"
# null, {} or omitted are accepted; unknown, mistyped and missing parameters get InvalidParameter
# naming the parameter; every error that reaches the wire is declared, with the parameters it
# carries, by the interface of its prefix (also for a real user without any grant); test-only
# methods are not advertised nor served without --test-hooks.
. "${top_srcdir:-$(dirname "$0")/../..}/tests/lib.sh"
need_root
need_cmd python3 varlink-go-interface-generator
IDL=$top_srcdir/tests/integration/varlink-idl.py

add_test_user cmkidlnone
chmod 755 "$TEST_TMP"
start_cmekd
chmod 666 "$SOCK"

log "1: every interface description parses"
mkdir -p "$TEST_TMP/go"
python3 "$IDL" describe "$SOCK" "$TEST_TMP/go" >"$TEST_TMP/parsed" || fail "an interface description does not parse"
n=$(grep -c ^parsed "$TEST_TMP/parsed")
[ "$n" -ge 8 ] || fail "only $n interfaces described: $(cat "$TEST_TMP/parsed")"

log "2: null/{}/omitted parameters, InvalidParameter for unknown/mistyped/missing fields, declared errors"
cmekctl key create idl-key --compartment Dev >/dev/null || fail "key create"
truncate -s 16M "$TEST_TMP/plain.img"
seen=$(python3 "$IDL" errors "$SOCK" Dev/idl-key "$TEST_TMP/plain.img") || fail "error replies"
log "errors seen and declared: $seen"

log "3: a real user without a grant learns nothing and gets declared errors only"
# the system's python3 and a copy of the script the account can read
install -m 644 "$IDL" "$TEST_TMP/varlink-idl.py"
seen=$(as_user cmkidlnone /usr/bin/python3 "$TEST_TMP/varlink-idl.py" nogrant "$SOCK" Dev/idl-key) ||
    fail "no-grant error replies"
log "errors seen and declared: $seen"

if grep -n "BUG:" "$TEST_TMP/cmekd.log"; then
    fail "the daemon sent an error its interface does not declare (above)"
fi

log "4: without --test-hooks the test-only methods are neither advertised nor served"
python3 "$IDL" advertised "$SOCK" >"$TEST_TMP/with-hooks"
grep -qx 'io.cmek.Key.TestEncrypt' "$TEST_TMP/with-hooks" || fail "TestEncrypt not described with --test-hooks"
stop_cmekd
"$CMEKD" --state-dir "$STATE" --socket "$SOCK" --log-level debug >>"$TEST_TMP/cmekd.log" 2>&1 &
CMEKD_PID=$!
wait_for_socket "$SOCK" "$CMEKD_PID"
python3 "$IDL" advertised "$SOCK" >"$TEST_TMP/without-hooks"
if grep -E '\.(Test[A-Za-z]*|RunScheduled)$' "$TEST_TMP/without-hooks"; then
    fail "test-only methods advertised without --test-hooks"
fi
grep -qx 'io.cmek.Key.Create' "$TEST_TMP/without-hooks" || fail "Create not described"
r=$(cmekctl_raw '{"method":"io.cmek.Key.TestEncrypt","parameters":{"key":"Dev/idl-key","plaintext":"AAAA"}}')
[ "$(json_get "$r" error)" = org.varlink.service.MethodNotFound ] || fail "TestEncrypt served without --test-hooks: $r"
log "PASS"
