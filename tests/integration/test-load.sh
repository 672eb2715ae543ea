#!/bin/bash
# SPDX-License-Identifier: LGPL-2.1-or-later
# Hostile clients and load (tests/integration/cmek-hostile.py): 10,000 requests from 384
# concurrent clients (256 as root, 128 as nobody whom the policy lets inspect but not read keys)
# mixing valid calls, permission-denied calls and garbage; requests just under and over 128 KiB;
# nesting up to 100,000 deep; a client that never reads its replies; connections until the
# descriptor limit (also with a daemon whose own limit is 128). Every valid call is answered
# correctly, the rest refused, memory and descriptors stay bounded, and the daemon neither spins
# nor stops serving. Under ASan the daemon's exit checks for leaks (stop_cmekd).
. "${top_srcdir:-$(dirname "$0")/../..}/tests/lib.sh"
need_root
need_cmd setpriv python3 prlimit

H="$top_srcdir/tests/integration/cmek-hostile.py"
PY=/usr/bin/python3
chmod 755 "$TEST_TMP"
printf 'allow any-user to inspect keys in tenancy\nallow any-user to inspect vaults in tenancy\n' >"$TEST_TMP/policy"
chmod 644 "$TEST_TMP/policy"
# this part checks answers under load: 128 nobody clients that reconnect all the time would
# trip the default per-uid connection limit (the hostile part below checks the limits)
printf '[limits]\nconnections-per-uid = 1024\nrequests-per-second = 0\n' >"$TEST_TMP/load.conf"
start_cmekd "$TEST_TMP/state" --policy "$TEST_TMP/policy" --config "$TEST_TMP/load.conf"
cmekctl key create load --compartment prod >/dev/null
K=$(cmekctl key show prod/load --json | python3 -c 'import json,sys; d=json.load(sys.stdin); print(d.get("key", d)["id"])')

rss_kb() { awk '/^VmRSS/{print $2}' "/proc/$1/status"; }
hwm_kb() { awk '/^VmHWM/{print $2}' "/proc/$1/status"; }
nfds() { ls "/proc/$1/fd" | wc -l; }
cpu_ticks() { awk '{print $14 + $15}' "/proc/$1/stat"; }
# a memory bound: an ASan build carries shadow memory and a quarantine
if [ "${CMEK_BUILD_FLAVOR:-}" = asan ] || grep -q __asan_init "$CMEKD" 2>/dev/null; then BOUND_MB=1024; else BOUND_MB=128; fi

cmekctl_raw '{"method":"io.cmek.Service.Status"}' >/dev/null
RSS0=$(rss_kb "$CMEKD_PID") FDS0=$(nfds "$CMEKD_PID")
log "baseline: RSS $((RSS0 / 1024)) MiB, $FDS0 fds; bound $BOUND_MB MiB"

log "huge and deeply nested requests"
out=$($PY "$H" "$SOCK" huge) || fail "huge: $out"
log "huge: $out"
out=$($PY "$H" "$SOCK" nested) || fail "nested: $out"
log "nested: $out"
assert_contains "$out" '"100000": "io.cmek.MalformedMessage"'
assert_contains "$out" '"32": "ok"'

log "10,000 requests: 7,000 from 256 root clients and 3,000 from 128 nobody clients, at once"
setpriv --reuid=nobody --regid=nogroup --clear-groups $PY "$H" "$SOCK" load 3000 128 "$K" >"$TEST_TMP/nobody.json" &
pid_nobody=$!
$PY "$H" "$SOCK" load 7000 256 "$K" >"$TEST_TMP/root.json" || { cat "$TEST_TMP/root.json" >&2; fail "wrong answers to root"; }
wait $pid_nobody || { cat "$TEST_TMP/nobody.json" >&2; fail "wrong answers to nobody"; }
log "root: $(cat "$TEST_TMP/root.json")"
log "nobody: $(cat "$TEST_TMP/nobody.json")"
grep -q '"denied": [1-9]' "$TEST_TMP/nobody.json" || fail "no call was denied to nobody"
kill -0 "$CMEKD_PID" || fail "cmekd died under load"

log "a client that never reads its replies"
RSSN=$(rss_kb "$CMEKD_PID")
out=$($PY "$H" "$SOCK" noread 5) || fail "noread: $out"
RSSN1=$(rss_kb "$CMEKD_PID")
log "noread: $out, RSS $((RSSN / 1024)) -> $((RSSN1 / 1024)) MiB"
# the daemon stops reading while 1 MiB of replies waits (CONNECTION_OUTPUT_PAUSE)
[ $((RSSN1 - RSSN)) -lt $((BOUND_MB * 1024 / 4)) ] || fail "a client that does not read grew cmekd by $(((RSSN1 - RSSN) / 1024)) MiB"

log "connections until the descriptor limit"
out=$($PY "$H" "$SOCK" fds 5000) || fail "fds: $out"
log "fds: $out"

sleep 1
RSS1=$(rss_kb "$CMEKD_PID") FDS1=$(nfds "$CMEKD_PID") HWM=$(hwm_kb "$CMEKD_PID")
log "after: RSS $((RSS1 / 1024)) MiB (peak $((HWM / 1024)) MiB), $FDS1 fds"
[ "$HWM" -lt $((RSS0 + BOUND_MB * 1024)) ] || fail "peak RSS $((HWM / 1024)) MiB over baseline + $BOUND_MB MiB"
[ "$FDS1" -le "$FDS0" ] || fail "descriptors leaked: $FDS0 before, $FDS1 after"
cmekctl key show "$K" >/dev/null || fail "cmekd does not serve after the load"
stop_cmekd || fail "cmekd did not stop cleanly (leak or error under ASan?)"

log "a daemon limited to 128 descriptors: at the limit it neither spins nor stops serving"
SOCK=$TEST_TMP/small.socket
prlimit --nofile=128:128 "$CMEKD" --state-dir "$TEST_TMP/state" --socket "$SOCK" --test-hooks >>"$TEST_TMP/cmekd.log" 2>&1 &
CMEKD_PID=$!
wait_for_socket "$SOCK" "$CMEKD_PID"
$PY - "$SOCK" "$CMEKD_PID" >"$TEST_TMP/emfile.json" <<'PY' || { cat "$TEST_TMP/emfile.json" >&2; fail "at the descriptor limit"; }
import json, os, socket, sys, time
path, pid = sys.argv[1], int(sys.argv[2])
def ticks():
    f = open(f"/proc/{pid}/stat").read().rsplit(")", 1)[1].split()
    return int(f[11]) + int(f[12])
socks = []
for _ in range(300):
    s = socket.socket(socket.AF_UNIX); s.settimeout(5)
    try:
        s.connect(path)
    except OSError:
        break
    socks.append(s)
time.sleep(0.5)
t0 = ticks(); time.sleep(3); spent = (ticks() - t0) / os.sysconf("SC_CLK_TCK")
for s in socks: s.close()
time.sleep(1.5)
s = socket.socket(socket.AF_UNIX); s.settimeout(10); s.connect(path)
s.sendall(b'{"method":"io.cmek.Service.Status"}\0')
r = s.recv(65536)
res = {"connections": len(socks), "cpu_seconds_in_3s_at_limit": spent, "serves_after": b'"version"' in r}
print(json.dumps(res))
sys.exit(0 if spent < 1.0 and res["serves_after"] else 1)
PY
log "at the limit: $(cat "$TEST_TMP/emfile.json")"
stop_cmekd || fail "cmekd did not stop cleanly"
log "ok"
