#!/bin/bash
# SPDX-License-Identifier: LGPL-2.1-or-later
# The cryptsetup token plugin through the real cryptsetup CLI on image files: open --test-passphrase
# --token-only via cmekd, clear failures when cmekd is stopped or the key disabled, fallback to a
# passphrase, luksDump output without secrets, malformed tokens refused by token import.
. "${top_srcdir:-$(dirname "$0")/../..}/tests/lib.sh"
need_root
need_cmd cryptsetup socat python3

install_token_plugin

start_cmekd
I=$TEST_TMP/img
mkdir -p "$I"
cmekctl key create pk --compartment prod >/dev/null
K=$(key_id prod/pk)
cmekctl volume create "$I/a.img" --key "$K" --size 16M --strict >/dev/null

log "cryptsetup open --token-only goes through the plugin and cmekd"
cryptsetup open --test-passphrase --token-only "$I/a.img" || fail "token unlock failed"
cryptsetup open --test-passphrase --token-type cmek "$I/a.img" </dev/null || fail "--token-type cmek failed"

log "luksDump shows key id, version and vault, never the wrapped DEK"
dump=$(cryptsetup luksDump "$I/a.img")
assert_contains "$dump" "cmek"
assert_contains "$dump" "Key:        $K (version 1)"
assert_contains "$dump" "Vault:      default"
ct=$(cryptsetup token export --token-id 0 "$I/a.img" | python3 -c 'import json,sys; print(json.load(sys.stdin)["ciphertext"])')
assert_not_contains "$dump" "$ct"

log "key disabled: the plugin says so and the open fails"
cmekctl key disable "$K" >/dev/null
rc=0; cryptsetup open --test-passphrase --token-only "$I/a.img" 2>"$TEST_TMP/err" || rc=$?
[ $rc -ne 0 ] || fail "opened with a disabled key"
assert_contains "$(cat "$TEST_TMP/err")" "cmek: key $K is DISABLED"
cmekctl key enable "$K" >/dev/null
cryptsetup open --test-passphrase --token-only "$I/a.img" || fail "token unlock failed after enable"

log "a token copied into another header does not open it"
truncate -s 20M "$I/b.img"
printf pw | cryptsetup luksFormat -q --type luks2 --pbkdf pbkdf2 --pbkdf-force-iterations 1000 --key-file - "$I/b.img"
cryptsetup token export --token-id 0 "$I/a.img" > "$TEST_TMP/tok.json"
cryptsetup token import --json-file "$TEST_TMP/tok.json" "$I/b.img"
rc=0; cryptsetup open --test-passphrase --token-only "$I/b.img" 2>"$TEST_TMP/err" || rc=$?
[ $rc -ne 0 ] || fail "the copied token opened another volume"
assert_contains "$(cat "$TEST_TMP/err")" "io.cmek.UnwrapFailed"

log "token import refuses malformed cmek tokens"
python3 - "$TEST_TMP/tok.json" "$TEST_TMP" <<'PY'
import json, sys
t = json.load(open(sys.argv[1]))
bad = {
    "missing-tag": {k: v for k, v in t.items() if k != "tag"},
    "bad-alg": dict(t, alg="AES-128-CBC"),
    "short-iv": dict(t, iv="AAAA"),
    "extra": dict(t, secret="x"),
    "version": dict(t, key_version=0),
    "two-slots": dict(t, keyslots=["0", "0"]),
}
for name, tok in bad.items():
    json.dump(tok, open(f"{sys.argv[2]}/bad-{name}.json", "w"))
PY
for f in "$TEST_TMP"/bad-*.json; do
    rc=0; cryptsetup token import --json-file "$f" "$I/b.img" 2>"$TEST_TMP/err" || rc=$?
    [ $rc -ne 0 ] || fail "token import accepted $(basename "$f")"
    assert_contains "$(cat "$TEST_TMP/err")" "cmek: invalid cmek token"
done

log "cmekd stopped: the plugin fails fast and says where it looked; a passphrase still works"
printf recover | cmekctl volume create "$I/r.img" --key "$K" --size 16M --recovery-passphrase-stdin >/dev/null
cryptsetup open --test-passphrase --token-only "$I/r.img" || fail "token unlock of r.img failed"
stop_cmekd
start=$(date +%s%N)
rc=0; cryptsetup open --test-passphrase --token-only "$I/a.img" 2>"$TEST_TMP/err" || rc=$?
[ $rc -ne 0 ] || fail "opened without cmekd"
assert_contains "$(cat "$TEST_TMP/err")" "cmek: cmekd is not reachable at $SOCK"
[ $(( ($(date +%s%N) - start) / 1000000 )) -lt 3000 ] || fail "the plugin did not fail fast"
# without --token-only cryptsetup falls back to the passphrase after our -EAGAIN
printf recover | cryptsetup open --test-passphrase "$I/r.img" 2>"$TEST_TMP/err" || { cat "$TEST_TMP/err" >&2; fail "no passphrase fallback"; }
log "ok"
