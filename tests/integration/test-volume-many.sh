#!/bin/bash
# SPDX-License-Identifier: LGPL-2.1-or-later
# Rotate a key bound to many volumes (200 sparse 16 MiB LUKS2 images): all are re-wrapped to the
# new version by the rotation hook and still open; a detached one is reported unreachable,
# marked pending, and re-wrapped when it is back.
. "${top_srcdir:-$(dirname "$0")/../..}/tests/lib.sh"
need_root
need_cmd cryptsetup socat python3
COUNT=${CMEK_TEST_VOLUMES:-200}

start_cmekd
I=$TEST_TMP/img
mkdir -p "$I"
cmekctl key create many --compartment prod >/dev/null
K=$(key_id prod/many)

log "creating $COUNT volumes"
for i in $(seq 1 "$COUNT"); do cmekctl volume create "$I/v$i.img" --key "$K" --size 16M --strict >/dev/null; done
mv "$I/v1.img" "$TEST_TMP/away.img"   # one volume is unplugged during the rotation

# a token wrapped under version 1, to show later that a disabled version unwraps nothing
cryptsetup token export --token-id 0 "$I/v3.img" >"$TEST_TMP/v3-v1.json"

log "rotating"
start=$(date +%s%N)
cmekctl key rotate "$K" >/dev/null
log "rotation with re-wrap of $COUNT volumes took $(( ($(date +%s%N) - start) / 1000000 )) ms"
versions=$(cmekctl volume list --json | python3 -c '
import json, sys, collections
vs = json.load(sys.stdin)["volumes"]
print(dict(collections.Counter((v["key_version"], v["pending_rewrap"]) for v in vs)))')
assert_contains "$versions" "(2, False): $((COUNT - 1))"
assert_contains "$versions" "(1, True): 1"
for i in $(seq 2 "$COUNT"); do
    cryptsetup luksDump --dump-json-metadata "$I/v$i.img" | grep -q '"key_version":2' || fail "v$i.img not re-wrapped"
done
log "all volumes open"
for i in $(seq 2 "$COUNT"); do cmekctl volume unlock --test "$I/v$i.img" >/dev/null || fail "v$i.img does not open"; done

log "the unplugged volume is unreachable, then re-wrapped when back"
out=$(cmekctl volume rewrap --key "$K" || true)
assert_contains "$out" "0 re-wrapped, $((COUNT - 1)) already current, 1 unreachable, 0 failed"
mv "$TEST_TMP/away.img" "$I/v1.img"
out=$(cmekctl volume rewrap --key "$K")
assert_contains "$out" "1 re-wrapped, $((COUNT - 1)) already current, 0 unreachable, 0 failed"
cmekctl volume unlock --test "$I/v1.img" >/dev/null

log "disable the old version afterwards: every volume still opens"
expect_exit "$EXIT_INVALID_STATE" "$CMEKCTL_BIN" key disable "$K" --version 2   # the current version: rotate first
cmekctl key disable "$K" --version 1 >/dev/null
cmekctl key show "$K" | grep -q "v1  (disabled)" || fail "version 1 not shown as disabled"
for i in $(seq 1 "$COUNT"); do cmekctl volume unlock --test "$I/v$i.img" >/dev/null || fail "v$i.img does not open with version 1 disabled"; done
# the token still wrapped under version 1 (put back by hand) is refused now ...
cryptsetup token import --token-id 0 --token-replace --json-file "$TEST_TMP/v3-v1.json" "$I/v3.img"
expect_exit "$EXIT_KEY_UNUSABLE" "$CMEKCTL_BIN" volume unlock --test "$I/v3.img"
# ... and opens again once version 1 is enabled; a re-wrap brings it to version 2
cmekctl key enable "$K" --version 1 >/dev/null
cmekctl key show "$K" | grep -q "v1  (disabled)" && fail "version 1 still disabled after enable"
cmekctl volume unlock --test "$I/v3.img" >/dev/null || fail "v3.img does not open with version 1 enabled"
cmekctl volume rewrap "$I/v3.img" >/dev/null
cryptsetup luksDump --dump-json-metadata "$I/v3.img" | grep -q '"key_version":2' || fail "v3.img not re-wrapped again"
log "ok"
