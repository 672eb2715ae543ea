#!/bin/bash
# SPDX-License-Identifier: LGPL-2.1-or-later
# Two brokers with separate state directories share one SoftHSM2 token through p11-kit server
# and p11-kit-client.so: key state lives in the token, so a key disabled through one broker is
# DISABLED for the other, and a deletion carried out by one is seen by the other.
. "${top_srcdir:-$(dirname "$0")/../..}/tests/lib.sh"
need_root
need_cmd socat python3 p11-kit softhsm2-util
CLIENT=/usr/lib/x86_64-linux-gnu/pkcs11/p11-kit-client.so
[ -e "$CLIENT" ] || CLIENT=$(find /usr/lib* -name p11-kit-client.so 2>/dev/null | head -1)
[ -e "$CLIENT" ] || skip "needs p11-kit-client.so"
[ -e /usr/lib/softhsm/libsofthsm2.so ] || skip "needs SoftHSM2"

# the shared token, outside both state directories
mkdir -p "$TEST_TMP/shared/tokens"
cat >"$TEST_TMP/shared/softhsm2.conf" <<EOF
directories.tokendir = $TEST_TMP/shared/tokens
objectstore.backend = file
log.level = ERROR
EOF
export SOFTHSM2_CONF=$TEST_TMP/shared/softhsm2.conf
softhsm2-util --init-token --free --label shared --so-pin 87654321 --pin 12345678 >/dev/null
echo 12345678 >"$TEST_TMP/shared/pin"
chmod 600 "$TEST_TMP/shared/pin"

P11SOCK=$TEST_TMP/p11kit.sock
p11-kit server -f -n "$P11SOCK" --provider /usr/lib/softhsm/libsofthsm2.so "pkcs11:token=shared" \
    >"$TEST_TMP/p11kit.log" 2>&1 &
P11PID=$!
on_exit "kill $P11PID 2>/dev/null; wait $P11PID 2>/dev/null"
for ((i = 0; i < 100; i++)); do [ -S "$P11SOCK" ] && break; sleep 0.05; done
[ -S "$P11SOCK" ] || { cat "$TEST_TMP/p11kit.log" >&2; fail "p11-kit server did not start"; }
export P11_KIT_SERVER_ADDRESS=unix:path=$P11SOCK
unset SOFTHSM2_CONF

cat >"$TEST_TMP/cmekd.conf" <<EOF
[vault shared]
module = $CLIENT
token = pkcs11:token=shared
pin-file = $TEST_TMP/shared/pin
EOF

# broker A (through lib.sh) and broker B (by hand)
start_cmekd "$TEST_TMP/stateA" --config "$TEST_TMP/cmekd.conf"
SOCK_A=$SOCK
SOCK_B=$TEST_TMP/b.socket
mkdir -p "$TEST_TMP/stateB"
"$CMEKD" --state-dir "$TEST_TMP/stateB" --socket "$SOCK_B" --config "$TEST_TMP/cmekd.conf" --test-hooks \
    --log-level debug >>"$TEST_TMP/cmekd-b.log" 2>&1 &
PID_B=$!
on_exit "kill $PID_B 2>/dev/null; wait $PID_B 2>/dev/null"
wait_for_socket "$SOCK_B" "$PID_B"
A() { cmekctl --socket "$SOCK_A" "$@"; }
B() { cmekctl --socket "$SOCK_B" "$@"; }
state_of() { # BROKER KEY
    "$1" --json key show "$2" | python3 -c 'import json,sys; print(json.load(sys.stdin)["key"]["state"])'
}

for X in A B; do
    $X --json vault show shared | python3 -c 'import json,sys; v=json.load(sys.stdin)["vault"]; assert v["available"], v'
done

id=$(A --json key create shared-key --compartment prod --vault shared | python3 -c 'import json,sys; print(json.load(sys.stdin)["key"]["id"])')
log "created $id through A"
[ "$(state_of B "$id")" = ENABLED ] || fail "B does not see the new key"
B key show prod/shared-key >/dev/null || fail "B does not find the key by name"
A key disable "$id" >/dev/null
[ "$(state_of B "$id")" = DISABLED ] || fail "B does not see DISABLED"
B key enable "$id" >/dev/null
[ "$(state_of A "$id")" = ENABLED ] || fail "A does not see ENABLED"
# names are unique per compartment across brokers too
expect_exit "$EXIT_FAILURE" B key create shared-key --compartment prod --vault shared
# a deletion carried out by B is seen by A
B key schedule-deletion "$id" --days 7 >/dev/null
[ "$(state_of A "$id")" = PENDING_DELETION ] || fail "A does not see PENDING_DELETION"
r=$(cmekctl_raw "{\"method\":\"io.cmek.Key.RunScheduled\",\"parameters\":{\"now\":$(( $(date +%s) + 8 * 86400 ))}}" "$SOCK_B")
assert_contains "$r" "$id"
[ "$(state_of A "$id")" = DELETED ] || fail "A does not see DELETED"
# each broker's own default vault stays its own
A key create only-a --compartment prod >/dev/null
expect_exit "$EXIT_NOT_FOUND" B key show prod/only-a
log "ok"
