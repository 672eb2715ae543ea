#!/bin/bash
# SPDX-License-Identifier: LGPL-2.1-or-later
# Volumes on image files (no device-mapper needed): create, bind, unlock --test, key disable/enable,
# a token copied to another header, LUKS1 refused, bind --key OTHER, unbind, rotation, --new-secret,
# remove-slot, and crypto-shredding on key deletion.
. "${top_srcdir:-$(dirname "$0")/../..}/tests/lib.sh"
need_root
need_cmd cryptsetup socat python3

start_cmekd
I=$TEST_TMP/img
mkdir -p "$I"

cmekctl key create k1 --compartment prod >/dev/null
cmekctl key create k2 --compartment prod >/dev/null
K1=$(key_id prod/k1)
K2=$(key_id prod/k2)
tokens_json() { cryptsetup luksDump --dump-json-metadata "$1" | python3 -c 'import json,sys; print(json.dumps(json.load(sys.stdin)["tokens"]))'; }
nslots() { cryptsetup luksDump --dump-json-metadata "$1" | python3 -c 'import json,sys; print(len(json.load(sys.stdin)["keyslots"]))'; }
vshow() { cmekctl volume show "$1" --json | python3 -c 'import json,sys; v=json.load(sys.stdin)["volume"]; print(v.get(sys.argv[1]))' "$2"; }

log "create: LUKS2 with a cmek token linked to its keyslot, minimal PBKDF"
cmekctl volume create "$I/a.img" --key "$K1" --size 16M --strict >/dev/null
[ "$(nslots "$I/a.img")" = 1 ] || fail "strict volume has more than one keyslot"
t=$(tokens_json "$I/a.img")
assert_contains "$t" '"type": "cmek"'
assert_contains "$t" '"keyslots": ["0"]'
assert_contains "$t" "\"key_id\": \"$K1\""
assert_contains "$t" '"key_version": 1'
dump=$(cryptsetup luksDump --dump-json-metadata "$I/a.img")
assert_contains "$dump" '"iterations":1000'
assert_not_contains "$dump" argon2

log "unlock --test; disabled key refused with KeyDisabled; enabled again opens"
cmekctl volume unlock --test "$I/a.img" >/dev/null
cmekctl key disable "$K1" >/dev/null
expect_exit "$EXIT_KEY_UNUSABLE" cmekctl volume unlock --test "$I/a.img"
assert_contains "$(cat "$TEST_TMP/err")" "io.cmek.KeyDisabled"
assert_contains "$(cat "$TEST_TMP/err")" "DISABLED"
[ "$(vshow "$I/a.img" EncryptionKeyStatus)" = 0 ] || fail "EncryptionKeyStatus should be 0 while disabled"
cmekctl key enable "$K1" >/dev/null
cmekctl volume unlock --test "$I/a.img" >/dev/null
[ "$(vshow "$I/a.img" EncryptionKeyStatus)" = 1 ] || fail "EncryptionKeyStatus should be 1"
[ "$(vshow "$I/a.img" EncryptionKeyType)" = 1 ] || fail "EncryptionKeyType should be 1 (CMEK)"

log "a cmek token copied into another volume's header does not open it"
truncate -s 20M "$I/b.img"
printf pw | cryptsetup luksFormat -q --type luks2 --pbkdf pbkdf2 --pbkdf-force-iterations 1000 --key-file - "$I/b.img"
cryptsetup token export --token-id 0 "$I/a.img" > "$TEST_TMP/tok.json"
cryptsetup token import --disable-external-tokens --json-file "$TEST_TMP/tok.json" "$I/b.img"
expect_exit "$EXIT_VERIFY_FAILED" cmekctl volume unlock --test "$I/b.img"
assert_contains "$(cat "$TEST_TMP/err")" "io.cmek.UnwrapFailed"
cryptsetup token remove --token-id 0 "$I/b.img"

log "bind an existing LUKS2 volume: wrong passphrase and disabled key leave it untouched"
expect_exit "$EXIT_USAGE" sh -c "printf nope | '$CMEKCTL_BIN' volume bind '$I/b.img' --key '$K1' --unlock-passphrase-stdin"
cmekctl key disable "$K1" >/dev/null
expect_exit "$EXIT_KEY_UNUSABLE" sh -c "printf pw | '$CMEKCTL_BIN' volume bind '$I/b.img' --key '$K1' --unlock-passphrase-stdin"
cmekctl key enable "$K1" >/dev/null
[ "$(nslots "$I/b.img")" = 1 ] || fail "a failed bind left a keyslot behind"
[ "$(tokens_json "$I/b.img")" = "{}" ] || fail "a failed bind left a token behind"
printf pw > "$TEST_TMP/keyfile"
cmekctl volume bind "$I/b.img" --key "$K1" --unlock-key-file "$TEST_TMP/keyfile" >/dev/null
[ "$(nslots "$I/b.img")" = 2 ] || fail "bind did not add a keyslot"
cmekctl volume unlock --test "$I/b.img" >/dev/null
assert_contains "$(tokens_json "$I/b.img")" '"keyslots": ["1"]'
assert_contains "$(vshow "$I/b.img" shred_status)" "recoverable"

log "LUKS1 and non-LUKS devices are refused with NotLUKS2"
truncate -s 8M "$I/l1.img" "$I/plain.img"
printf pw | cryptsetup luksFormat -q --type luks1 --pbkdf-force-iterations 1000 --key-file - "$I/l1.img"
expect_exit "$EXIT_FAILURE" sh -c "printf pw | '$CMEKCTL_BIN' volume bind '$I/l1.img' --key '$K1' --unlock-passphrase-stdin"
assert_contains "$(cat "$TEST_TMP/err")" "io.cmek.NotLUKS2"
expect_exit "$EXIT_FAILURE" sh -c "printf pw | '$CMEKCTL_BIN' volume bind '$I/plain.img' --key '$K1' --unlock-passphrase-stdin"
assert_contains "$(cat "$TEST_TMP/err")" "io.cmek.NotLUKS2"
expect_exit "$EXIT_FAILURE" cmekctl volume create "$I/b.img" --key "$K1"
assert_contains "$(cat "$TEST_TMP/err")" "io.cmek.AlreadyExists"

log "bind --key OTHER moves a bound volume; unbind reverts to the provider-managed key"
cmekctl volume bind "$I/b.img" --key "$K2" >/dev/null
assert_contains "$(tokens_json "$I/b.img")" "\"key_id\": \"$K2\""
cmekctl volume unlock --test "$I/b.img" >/dev/null
cmekctl volume unbind "$I/b.img" >/dev/null
[ "$(vshow "$I/b.img" EncryptionKeyType)" = 0 ] || fail "EncryptionKeyType should be 0 after unbind"
assert_not_contains "$(tokens_json "$I/b.img")" "$K2"
cmekctl volume unlock --test "$I/b.img" >/dev/null

log "rotation re-wraps bound volumes; --new-secret replaces the keyslot"
cmekctl volume create "$I/c.img" --key "$K1" --size 16M >/dev/null
cmekctl key rotate "$K1" >/dev/null
assert_contains "$(tokens_json "$I/a.img")" '"key_version": 2'
assert_contains "$(tokens_json "$I/c.img")" '"key_version": 2'
cmekctl volume unlock --test "$I/a.img" >/dev/null
out=$(cmekctl volume rewrap --key "$K1")
assert_contains "$out" "0 re-wrapped, 2 already current"
out=$(cmekctl volume rewrap --new-secret "$I/c.img")
assert_contains "$out" "1 re-wrapped"
[ "$(nslots "$I/c.img")" = 1 ] || fail "--new-secret left the old keyslot"
assert_contains "$(tokens_json "$I/c.img")" '"keyslots": ["1"]'
cmekctl volume unlock --test "$I/c.img" >/dev/null

log "remove-slot: refused when it would leave no keyslot"
expect_exit "$EXIT_INVALID_STATE" cmekctl volume unbind --remove-slot "$I/c.img"
cmekctl volume unlock --test "$I/c.img" >/dev/null

log "key deletion shreds strict volumes; a volume with a recovery passphrase survives"
cmekctl key create k3 --compartment prod >/dev/null
K3=$(key_id prod/k3)
cmekctl volume create "$I/s.img" --key "$K3" --size 16M --strict >/dev/null
printf recover | cmekctl volume create "$I/r.img" --key "$K3" --size 16M --recovery-passphrase-stdin >/dev/null
[ "$(nslots "$I/r.img")" = 2 ] || fail "recovery passphrase slot missing"
assert_contains "$(vshow "$I/s.img" shred_status)" "CMEK only"
cmekctl key schedule-deletion "$K3" --days 7 >/dev/null
expect_exit "$EXIT_KEY_UNUSABLE" cmekctl volume unlock --test "$I/s.img"
assert_contains "$(cat "$TEST_TMP/err")" "PENDING_DELETION"
now=$(date +%s)
cmekctl_raw "{\"method\":\"io.cmek.Key.RunScheduled\",\"parameters\":{\"now\":$((now + 8 * 86400))}}" >/dev/null
[ "$(vshow "$I/s.img" state)" = UNRECOVERABLE ] || fail "strict volume not marked UNRECOVERABLE"
[ "$(nslots "$I/s.img")" = 0 ] || fail "strict volume still has a keyslot"
assert_contains "$(vshow "$I/s.img" shred_status)" "shredded"
[ "$(vshow "$I/r.img" state)" = KEY_DELETED ] || fail "volume with recovery passphrase not KEY_DELETED"
assert_contains "$(vshow "$I/r.img" shred_status)" "not shredded: has other keyslots"
printf recover | cryptsetup open --test-passphrase --key-file - "$I/r.img" || fail "recovery passphrase no longer opens"
expect_exit "$EXIT_INVALID_STATE" cmekctl volume unlock --test "$I/s.img"

log "the registry survives a restart; list shows the metrics"
stop_cmekd
start_cmekd "$STATE"
out=$(cmekctl volume list)
assert_contains "$out" UNRECOVERABLE
assert_contains "$out" "$K1"
cmekctl volume unlock --test "$I/a.img" >/dev/null
cmekctl volume list --json | python3 -c 'import json,sys; vs=json.load(sys.stdin)["volumes"]; assert all("EncryptionKeyStatus" in v and "EncryptionKeyType" in v for v in vs), vs'

log "relative paths are the caller's, not the daemon's (its working directory is / under systemd)"
mkdir -p "$I/rel"
(cd "$I/rel" && cmekctl volume create rel.img --key "$K1" --size 16M >/dev/null) || fail "volume create with a relative path failed"
[ "$(vshow "$I/rel/rel.img" path)" = "$(readlink -f "$I/rel/rel.img")" ] || fail "the registry does not hold the absolute path: $(vshow "$I/rel/rel.img" path)"
(cd "$I" && cmekctl volume unlock --test rel/rel.img >/dev/null) || fail "unlock with a relative path failed"

log "audit: key.used and volume events recorded"
grep -q '"key.used"' "$STATE"/audit* 2>/dev/null || grep -rq 'key.used' "$STATE" || fail "no key.used audit entry"
log "ok"
