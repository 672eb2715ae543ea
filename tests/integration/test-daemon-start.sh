#!/bin/bash
# SPDX-License-Identifier: LGPL-2.1-or-later
# cmekd starts standalone and under systemd-socket-activate, and speaks Varlink to a raw client.
. "${top_srcdir:-$(dirname "$0")/../..}/tests/lib.sh"
need_root
need_cmd socat systemd-socket-activate python3

start_cmekd

info=$(cmekctl_raw '{"method":"org.varlink.service.GetInfo"}')
log "GetInfo: $info"
for i in org.varlink.service io.cmek.Service io.cmek.Events; do
    assert_contains "$(json_get "$info" parameters.interfaces)" "\"$i\""
done
[ "$(json_get "$info" parameters.product)" = cmekd ] || fail "product is not cmekd"

desc=$(cmekctl_raw '{"method":"org.varlink.service.GetInterfaceDescription","parameters":{"interface":"io.cmek.Service"}}')
assert_contains "$(json_get "$desc" parameters.description)" "interface io.cmek.Service"
assert_contains "$(json_get "$desc" parameters.description)" "method Status()"

# every interface GetInfo lists has a description that names itself
for i in $(json_get "$info" parameters.interfaces | python3 -c 'import json,sys; print(" ".join(json.load(sys.stdin)))'); do
    d=$(cmekctl_raw "{\"method\":\"org.varlink.service.GetInterfaceDescription\",\"parameters\":{\"interface\":\"$i\"}}")
    assert_contains "$(json_get "$d" parameters.description)" "interface $i"
done

nf=$(cmekctl_raw '{"method":"io.cmek.Service.NoSuchMethod"}')
[ "$(json_get "$nf" error)" = org.varlink.service.MethodNotFound ] || fail "unknown method: $nf"
ni=$(cmekctl_raw '{"method":"io.nowhere.Foo"}')
[ "$(json_get "$ni" error)" = org.varlink.service.InterfaceNotFound ] || fail "unknown interface: $ni"

out=$(cmekctl status)
assert_contains "$out" "standalone"
cmekctl --json status | python3 -c 'import json,sys; d=json.load(sys.stdin); assert d["socket_activated"] is False'

# the state directory is private, and the daemon cannot dump core
[ "$(stat -c %a "$STATE")" = 700 ] || fail "state dir mode is $(stat -c %a "$STATE")"
limit=$(sed -n 's/^Max core file size *\([0-9a-z]*\).*/\1/p' /proc/$CMEKD_PID/limits)
[ "$limit" = 0 ] || fail "core file size limit of cmekd is $limit, expected 0"
cmekctl --json status | python3 -c 'import json,sys; d=json.load(sys.stdin); assert d["dumpable"] is False, d'
stop_cmekd

# socket activation: systemd-socket-activate passes the listening socket (LISTEN_FDS)
SOCK2=$TEST_TMP/activated.socket
systemd-socket-activate -l "$SOCK2" "$CMEKD" --state-dir "$TEST_TMP/state2" --log-level debug \
    >>"$TEST_TMP/cmekd.log" 2>&1 &
act_pid=$!
on_exit "kill $act_pid 2>/dev/null; wait $act_pid 2>/dev/null"
for ((i = 0; i < 100; i++)); do [ -S "$SOCK2" ] && break; sleep 0.05; done
info=$(cmekctl_raw '{"method":"org.varlink.service.GetInfo"}' "$SOCK2")
assert_contains "$info" io.cmek.Service
"$CMEKCTL_BIN" --socket "$SOCK2" --json status | python3 -c 'import json,sys; d=json.load(sys.stdin); assert d["socket_activated"] is True, d'
[ -f "$TEST_TMP/state2/audit.log" ] || fail "socket-activated daemon did not use its state dir"

# under systemd, StateDirectory= passes $STATE_DIRECTORY: used when --state-dir is not given
SOCK3=$TEST_TMP/sd.socket
STATE_DIRECTORY=$TEST_TMP/statedir "$CMEKD" --socket "$SOCK3" >>"$TEST_TMP/cmekd.log" 2>&1 &
sd_pid=$!
on_exit "kill $sd_pid 2>/dev/null; wait $sd_pid 2>/dev/null"
wait_for_socket "$SOCK3" "$sd_pid"
"$CMEKCTL_BIN" --socket "$SOCK3" --json status | python3 -c 'import json,sys; d=json.load(sys.stdin); assert d["state_dir"].endswith("/statedir"), d'
[ -f "$TEST_TMP/statedir/audit.log" ] || fail "\$STATE_DIRECTORY not used"
kill "$sd_pid"; wait "$sd_pid" || true

# a daemon without a socket says how to start it
rc=0; "$CMEKD" --state-dir "$TEST_TMP/state3" >"$TEST_TMP/err" 2>&1 || rc=$?
[ $rc -ne 0 ] || fail "cmekd without socket should fail"
assert_contains "$(cat "$TEST_TMP/err")" "cmekd.socket"

# cmekctl without a daemon: exit code 3 and a hint
expect_exit "$EXIT_NO_DAEMON" "$CMEKCTL_BIN" --socket "$TEST_TMP/none.sock" status
assert_contains "$(cat "$TEST_TMP/err")" "not running"
log "ok"
