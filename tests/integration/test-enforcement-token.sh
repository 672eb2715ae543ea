#!/bin/bash
# SPDX-License-Identifier: LGPL-2.1-or-later
# Enforcement on the host (no device-mapper needed): the Prometheus file parses strictly and its
# values flip on disable and back on enable; a key turned off directly in the token (usage flags
# through PKCS#11, or its metadata object rewritten with pkcs11-tool) is noticed within the watch
# interval and reported like a disable through cmekd.
. "${top_srcdir:-$(dirname "$0")/../..}/tests/lib.sh"
need_root
need_cmd socat python3 pkcs11-tool
[ -e /usr/lib/softhsm/libsofthsm2.so ] || skip "needs SoftHSM2"
SETUSAGE=$top_builddir/tests/integration/p11-set-usage
[ -x "$SETUSAGE" ] || skip "needs $SETUSAGE (make check builds it)"
PROM="python3 $top_srcdir/tests/integration/prom-check.py"

cat >"$TEST_TMP/cmekd.conf" <<EOC
[enforcement]
on-disable = suspend
watch-interval = 1
EOC
METRICS=$TEST_TMP/metrics/cmekd.prom
mkdir -p "$TEST_TMP/metrics" "$TEST_TMP/hooks"
start_cmekd "" --config "$TEST_TMP/cmekd.conf" --metrics-file "$METRICS" --hooks-dir "$TEST_TMP/hooks"
grep -q "on-disable=suspend, watching the keys of bound volumes every 1.0 s" "$TEST_TMP/cmekd.log" ||
    fail "the [enforcement] settings were not read"

# events, to see what the watch reports
subscribe_events "$TEST_TMP/events.jsonl"
for ((i = 0; i < 100; i++)); do grep -q subscribed "$TEST_TMP/events.jsonl" 2>/dev/null && break; sleep 0.05; done

cmekctl key create a --compartment prod >/dev/null
cmekctl key create b --compartment prod --on-disable close >/dev/null
A=$(key_id prod/a); B=$(key_id prod/b)
[ "$(cmekctl key show "$B" --json | json_get "$(cat)" key.on_disable)" = close ] || fail "--on-disable not stored"
expect_exit "$EXIT_USAGE" cmekctl key create c --compartment prod --on-disable sometimes
I=$TEST_TMP/img; mkdir -p "$I"
cmekctl volume create "$I/a.img" --key "$A" --size 16M --strict >/dev/null
cmekctl volume create "$I/b.img" --key "$B" --size 16M --strict >/dev/null

log "metrics: strict parse, EncryptionKeyStatus flips on disable and back on enable"
[ -s "$METRICS" ] || fail "no metrics file"
$PROM "$METRICS" >/dev/null || fail "the metrics file does not parse"
if command -v promtool >/dev/null; then
    promtool check metrics <"$METRICS" || fail "promtool check metrics complains"
fi
status() { $PROM "$METRICS" --get cmek_encryption_key_status key_id="$1"; }
[ "$(status "$A")" = 1 ] || fail "EncryptionKeyStatus of a volume on enabled A is not 1"
[ "$($PROM "$METRICS" --get cmek_encryption_key_type key_id="$A")" = 1 ] || fail "EncryptionKeyType is not 1 (CMEK)"
[ "$($PROM "$METRICS" --get cmek_key_enabled key_id="$A")" = 1 ] || fail "cmek_key_enabled of A is not 1"
cmekctl key disable "$A" >/dev/null
$PROM "$METRICS" >/dev/null || fail "the metrics file does not parse after disable"
[ "$(status "$A")" = 0 ] || fail "EncryptionKeyStatus did not flip to 0 on disable"
[ "$(status "$B")" = 1 ] || fail "EncryptionKeyStatus of B's volume changed"
[ "$($PROM "$METRICS" --get cmek_key_enabled key_id="$A")" = 0 ] || fail "cmek_key_enabled of A did not flip"
show=$(cmekctl volume show "$I/a.img" --json)
[ "$(json_get "$show" volume.availability)" = UNAVAILABLE ] || fail "volume on disabled A not UNAVAILABLE: $show"
assert_contains "$(json_get "$show" volume.unavailable_reason)" "is DISABLED"
cmekctl key enable "$A" >/dev/null
[ "$(status "$A")" = 1 ] || fail "EncryptionKeyStatus did not flip back to 1 on enable"
$PROM "$METRICS" >/dev/null || fail "the metrics file does not parse after enable"
# a provider-managed volume reports 1 (status) and 0 (type)
cmekctl volume unbind "$I/b.img" >/dev/null
U=$(cmekctl volume show "$I/b.img" --json | json_get "$(cat)" volume.uuid)
[ "$($PROM "$METRICS" --get cmek_encryption_key_type volume="$U")" = 0 ] || fail "provider-managed volume: type is not 0"
[ "$($PROM "$METRICS" --get cmek_encryption_key_status volume="$U")" = 1 ] || fail "provider-managed volume: status is not 1"

export SOFTHSM2_CONF=$STATE/softhsm2.conf
PIN=$(sed -n 's/^user-pin=//p' "$STATE/pins")
MOD=/usr/lib/softhsm/libsofthsm2.so

log "token side: CKA_DECRYPT/CKA_ENCRYPT turned off with a PKCS#11 client is noticed within the watch interval"
n_before=$(grep -c "\"key.disabled\".*$A" "$TEST_TMP/events.jsonl")
before=$(date +%s%N)
"$SETUSAGE" "$MOD" cmekd-default "$PIN" "cmek:$A:v1" off >/dev/null
# the very next unwrap is refused by the token itself (C_DecryptInit), watch or no watch
expect_exit "$EXIT_KEY_UNUSABLE" cmekctl volume unlock "$I/a.img" --test
for ((i = 0; i < 60; i++)); do
    [ "$(grep -c "\"key.disabled\".*$A" "$TEST_TMP/events.jsonl")" -gt "$n_before" ] && break
    sleep 0.05
done
[ "$(grep -c "\"key.disabled\".*$A" "$TEST_TMP/events.jsonl")" -gt "$n_before" ] || fail "no key.disabled event after the token-side change"
log "noticed after $(( ($(date +%s%N) - before) / 1000000 )) ms (watch interval 1 s)"
[ "$(cmekctl key show "$A" --json | json_get "$(cat)" key.state)" = DISABLED ] || fail "key not DISABLED after the token-side change"
[ "$(status "$A")" = 0 ] || fail "EncryptionKeyStatus did not flip on the token-side disable"
expect_exit "$EXIT_KEY_UNUSABLE" cmekctl volume unlock "$I/a.img" --test
cmekctl audit show --json >"$TEST_TMP/audit.json"
grep -q '"operation": *"token"' "$TEST_TMP/audit.json" || fail "the token-side disable is not in the audit log"
cmekctl key enable "$A" >/dev/null
cmekctl volume unlock "$I/a.img" --test >/dev/null || fail "key enable did not turn the usage flags on again"

log "token side: the metadata object rewritten with pkcs11-tool (state DISABLED) is noticed"
P11=(pkcs11-tool --module "$MOD" --token-label cmekd-default --login --pin "$PIN")
"${P11[@]}" --read-object --type data --label "$A" --application-label cmekd -o "$TEST_TMP/meta.json" 2>/dev/null ||
    "${P11[@]}" --read-object --type data --label "$A" -o "$TEST_TMP/meta.json" 2>/dev/null || fail "pkcs11-tool cannot read the metadata object"
python3 - "$TEST_TMP/meta.json" <<'EOP'
import json, sys
m = json.load(open(sys.argv[1]))
m["state"] = "DISABLED"; m["generation"] = m.get("generation", 1) + 100
open(sys.argv[1], "w").write(json.dumps(m, separators=(",", ":")))
EOP
n_before=$(grep -c "\"key.disabled\".*$A" "$TEST_TMP/events.jsonl")
"${P11[@]}" --write-object "$TEST_TMP/meta.json" --type data --label "$A" --application-label cmekd --private >/dev/null 2>&1 ||
    fail "pkcs11-tool cannot write the metadata object"
for ((i = 0; i < 60; i++)); do
    [ "$(grep -c "\"key.disabled\".*$A" "$TEST_TMP/events.jsonl")" -gt "$n_before" ] && break
    sleep 0.1
done
[ "$(grep -c "\"key.disabled\".*$A" "$TEST_TMP/events.jsonl")" -gt "$n_before" ] || fail "no key.disabled event after the metadata rewrite"
[ "$(cmekctl key show "$A" --json | json_get "$(cat)" key.state)" = DISABLED ] || fail "key not DISABLED after the metadata rewrite"
expect_exit "$EXIT_KEY_UNUSABLE" cmekctl volume unlock "$I/a.img" --test
log "ok"
