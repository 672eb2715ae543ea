#!/bin/bash
# SPDX-License-Identifier: LGPL-2.1-or-later
# Master keys: token attributes seen by pkcs11-tool, every lifecycle transition (allowed and
# forbidden), scheduled deletion after moving the test clock (also across a restart),
# rotation, the provider key, a broken vault next to a working one, and the IDL.
. "${top_srcdir:-$(dirname "$0")/../..}/tests/lib.sh"
need_root
need_cmd socat python3 pkcs11-tool
[ -e /usr/lib/softhsm/libsofthsm2.so ] || skip "needs SoftHSM2"

STATE=$TEST_TMP/state
mkdir -p "$STATE"
cat >"$TEST_TMP/cmekd.conf" <<EOF
# a vault whose module does not exist: listed as unavailable, the default keeps working
[vault broken]
module = /nonexistent/libpkcs11-missing.so
token = pkcs11:token=nothing
pin-file = /nonexistent/pin
EOF
start_cmekd "$STATE" --config "$TEST_TMP/cmekd.conf"

# --- vaults ---
out=$(cmekctl vault list)
log "$out"
assert_contains "$out" "libpkcs11-missing.so"
vl=$(cmekctl --json vault list)
python3 - "$vl" <<'EOF'
import json, sys
v = {x["name"]: x for x in json.loads(sys.argv[1])["vaults"]}
assert v["default"]["available"] is True, v
assert v["default"]["token"]["label"] == "cmekd-default", v
assert v["broken"]["available"] is False and "libpkcs11-missing.so" in v["broken"]["reason"], v
EOF
expect_exit "$EXIT_NOT_FOUND" cmekctl vault show nosuchvault
expect_exit "$EXIT_FAILURE" cmekctl key create k --compartment prod --vault broken
assert_contains "$(cat "$TEST_TMP/err")" "VaultUnavailable"

# --- create, show, list ---
id=$(cmekctl --json key create k1 --compartment prod | python3 -c 'import json,sys; print(json.load(sys.stdin)["key"]["id"])')
log "created $id"
[[ "$id" =~ ^cmek\.key\.prod\.[a-z2-7]{26}$ ]] || fail "bad key id $id"
expect_exit "$EXIT_FAILURE" cmekctl key create k1 --compartment prod
assert_contains "$(cat "$TEST_TMP/err")" "AlreadyExists"
cmekctl key create k1 --compartment dev >/dev/null     # same name, other compartment: fine
expect_exit "$EXIT_NOT_FOUND" cmekctl key show k1                        # ambiguous name
cmekctl key show prod/k1 | grep -q "state: ENABLED" || fail "prod/k1 not ENABLED"
expect_exit "$EXIT_USAGE" cmekctl key create bad --compartment prod --length 100
cmekctl key list | grep -q "$id" || fail "key list lacks $id"
cmekctl key create k128 --compartment prod --length 128 >/dev/null
cmekctl --json key show prod/k128 | python3 -c 'import json,sys; assert json.load(sys.stdin)["key"]["length"] == 128'

# --- the key in the token, seen by pkcs11-tool ---
export SOFTHSM2_CONF=$STATE/softhsm2.conf
PIN=$(sed -n 's/^user-pin=//p' "$STATE/pins")
[ "$(stat -c %a "$STATE/pins")" = 600 ] || fail "pins file mode $(stat -c %a "$STATE/pins")"
P11=(pkcs11-tool --module /usr/lib/softhsm/libsofthsm2.so --token-label cmekd-default --login --pin "$PIN")
objs=$("${P11[@]}" --list-objects 2>/dev/null)
label="cmek:$id:v1"
key_block() { # LABEL: the pkcs11-tool listing of that secret key
    "${P11[@]}" --list-objects 2>/dev/null | awk -v l="label:      $1" '/^Secret Key Object/ {b=$0; keep=0; next} {b=b"\n"$0} index($0, l) {keep=1} keep && /^ *Access:/ {print b; exit}'
}
block=$(key_block "$label")
log "$block"
assert_contains "$block" "AES"
assert_contains "$block" "sensitive"
assert_contains "$block" "never extractable"
assert_not_contains "$block" "  extractable"
if "${P11[@]}" --read-object --type secrkey --label "$label" -o "$TEST_TMP/leak" 2>/dev/null; then
    fail "pkcs11-tool read the key value"
fi
[ ! -s "$TEST_TMP/leak" ] || fail "key value leaked"
# metadata is in the token: a CKO_DATA object labelled with the key id
printf '%s\n' "$objs" | grep -q "label: *'$id'" || fail "no metadata object for $id in the token"

# --- encrypt/decrypt through the test hook ---
enc() { cmekctl_raw "{\"method\":\"io.cmek.Key.TestEncrypt\",\"parameters\":{\"key\":\"$1\",\"plaintext\":\"aGVsbG8gd29ybGQh\",\"aad\":\"YWFk\"}}"; }
dec() { # KEY ENC_REPLY
    local iv ct tag
    iv=$(json_get "$2" parameters.iv); ct=$(json_get "$2" parameters.ciphertext); tag=$(json_get "$2" parameters.tag)
    cmekctl_raw "{\"method\":\"io.cmek.Key.TestDecrypt\",\"parameters\":{\"key\":\"$1\",\"iv\":\"$iv\",\"ciphertext\":\"$ct\",\"tag\":\"$tag\",\"aad\":\"YWFk\",\"version\":${3:-0}}}"
}
e1=$(enc "$id")
[ "$(json_get "$(dec "$id" "$e1")" parameters.plaintext)" = aGVsbG8gd29ybGQh ] || fail "round trip failed"

# --- every transition ---
transition() { # VERB EXPECTED_EXIT [STATE] [extra args]
    local verb=$1 want=$2 st=${3:-}; shift 3 || shift $#
    expect_exit "$want" cmekctl key "$verb" "$id" "$@"
    if [ -n "$st" ]; then
        s=$(cmekctl --json key show "$id" | python3 -c 'import json,sys; print(json.load(sys.stdin)["key"]["state"])')
        [ "$s" = "$st" ] || fail "after $verb: state $s, expected $st"
    fi
}
# ENABLED: enable and cancel-deletion are refused, with the allowed steps
transition enable 7 ENABLED
assert_contains "$(cat "$TEST_TMP/err")" "allowed: disable, schedule-deletion, rotate"
transition cancel-deletion 7 ENABLED
r=$(cmekctl_raw "{\"method\":\"io.cmek.Key.Enable\",\"parameters\":{\"key\":\"$id\"}}")
[ "$(json_get "$r" error)" = io.cmek.InvalidStateTransition ] || fail "$r"
[ "$(json_get "$r" parameters.current_state)" = ENABLED ] || fail "$r"
[ "$(json_get "$r" parameters.allowed)" = '["disable", "schedule-deletion", "rotate"]' ] || fail "$r"
# ENABLED -> DISABLED: the token refuses the key too
transition disable 0 DISABLED
r=$(dec "$id" "$e1"); [ "$(json_get "$r" error)" = io.cmek.KeyDisabled ] || fail "disabled key decrypted: $r"
key_block "$label" | grep -q "Usage:.*decrypt" && fail "CKA_DECRYPT still true: $(key_block "$label")"
transition disable 7 DISABLED
transition rotate 7 DISABLED
transition cancel-deletion 7 DISABLED
# DISABLED -> ENABLED
transition enable 0 ENABLED
[ "$(json_get "$(dec "$id" "$e1")" parameters.plaintext)" = aGVsbG8gd29ybGQh ] || fail "re-enabled key does not decrypt"
# ENABLED -> PENDING_DELETION; waiting period bounds
transition schedule-deletion 2 ENABLED --days 6
transition schedule-deletion 2 ENABLED --days 31
transition schedule-deletion 0 PENDING_DELETION --days 7
r=$(dec "$id" "$e1"); [ "$(json_get "$r" error)" = io.cmek.KeyPendingDeletion ] || fail "pending key decrypted: $r"
for v in enable disable rotate schedule-deletion; do transition "$v" 7 PENDING_DELETION; done
# PENDING_DELETION -> DISABLED
transition cancel-deletion 0 DISABLED
# DISABLED -> PENDING_DELETION (default 30 days)
transition schedule-deletion 0 PENDING_DELETION
cmekctl --json key show "$id" | python3 -c 'import json,sys; k=json.load(sys.stdin)["key"]; assert k["deletion_time"], k'

id2=$(cmekctl --json key create k2 --compartment prod | python3 -c 'import json,sys; print(json.load(sys.stdin)["key"]["id"])')
e2=$(enc "$id2")

# --- scheduled deletion after moving the test clock ---
r=$(cmekctl_raw '{"method":"io.cmek.Key.RunScheduled","parameters":{}}')
[ "$(json_get "$r" parameters.deleted)" = "[]" ] || fail "deleted too early: $r"
r=$(cmekctl_raw "{\"method\":\"io.cmek.Key.RunScheduled\",\"parameters\":{\"now\":$(( $(date +%s) + 29 * 86400 ))}}")
[ "$(json_get "$r" parameters.deleted)" = "[]" ] || fail "deleted before the 30 days: $r"
r=$(cmekctl_raw "{\"method\":\"io.cmek.Key.RunScheduled\",\"parameters\":{\"now\":$(( $(date +%s) + 31 * 86400 ))}}")
assert_contains "$r" "$id"
transition show 0 DELETED
grep -q '"event":"key.deleted"' "$STATE/audit.log" || fail "deletion not audited"
for v in enable disable rotate schedule-deletion cancel-deletion; do transition "$v" 7 DELETED; done
r=$(dec "$id" "$e1"); [ "$(json_get "$r" error)" = io.cmek.KeyDeleted ] || fail "deleted key decrypted: $r"
"${P11[@]}" --list-objects --type secrkey 2>/dev/null | grep -q "cmek:$id:" && fail "key objects of $id still in the token"
rm -f "$STATE/test-clock"

# --- across a restart: the date passes while the daemon is down ---
id3=$(cmekctl --json key create k3 --compartment prod | python3 -c 'import json,sys; print(json.load(sys.stdin)["key"]["id"])')
cmekctl key schedule-deletion "$id3" --days 7 >/dev/null
stop_cmekd
echo "+$((8 * 86400))" >"$STATE/test-clock"
start_cmekd "$STATE" --config "$TEST_TMP/cmekd.conf"
s=$(cmekctl --json key show "$id3" | python3 -c 'import json,sys; print(json.load(sys.stdin)["key"]["state"])')
[ "$s" = DELETED ] || fail "after restart past the date: $s"
rm -f "$STATE/test-clock"

# --- rotation: the new version wraps, the old one still unwraps ---
[ "$(json_get "$(enc "$id2")" parameters.version)" = 1 ] || fail "version 1 expected"
out=$(cmekctl key rotate "$id2")
assert_contains "$out" "Rotated to version 2"
e2b=$(enc "$id2")
[ "$(json_get "$e2b" parameters.version)" = 2 ] || fail "version 2 expected: $e2b"
[ "$(json_get "$(dec "$id2" "$e2" 1)" parameters.plaintext)" = aGVsbG8gd29ybGQh ] || fail "v1 no longer unwraps"
[ "$(json_get "$(dec "$id2" "$e2b" 2)" parameters.plaintext)" = aGVsbG8gd29ybGQh ] || fail "v2 does not unwrap"
# automatic rotation on the interval
id4=$(cmekctl --json key create k4 --compartment prod --rotation-interval 60 | python3 -c 'import json,sys; print(json.load(sys.stdin)["key"]["id"])')
r=$(cmekctl_raw "{\"method\":\"io.cmek.Key.RunScheduled\",\"parameters\":{\"now\":$(( $(date +%s) + 61 * 86400 ))}}")
assert_contains "$(json_get "$r" parameters.rotated)" "$id4"
cmekctl --json key show "$id4" | python3 -c 'import json,sys; assert json.load(sys.stdin)["key"]["current_version"] == 2'

# --- a key disabled behind cmekd's back (CKA_DECRYPT false in the token) is refused ---
id5=$(cmekctl --json key create k5 --compartment prod | python3 -c 'import json,sys; print(json.load(sys.stdin)["key"]["id"])')
e5=$(enc "$id5")
if python3 -c 'import PyKCS11' 2>/dev/null; then
    python3 - "$PIN" "cmek:$id5:v1" <<'EOF'
import sys, PyKCS11
lib = PyKCS11.PyKCS11Lib(); lib.load("/usr/lib/softhsm/libsofthsm2.so")
slot = [s for s in lib.getSlotList(tokenPresent=True) if lib.getTokenInfo(s).label.strip() == "cmekd-default"][0]
s = lib.openSession(slot, PyKCS11.CKF_RW_SESSION | PyKCS11.CKF_SERIAL_SESSION); s.login(sys.argv[1])
o = s.findObjects([(PyKCS11.CKA_LABEL, sys.argv[2])])[0]
s.setAttributeValue(o, [(PyKCS11.CKA_DECRYPT, False), (PyKCS11.CKA_ENCRYPT, False)])
EOF
    r=$(dec "$id5" "$e5"); [ "$(json_get "$r" error)" = io.cmek.KeyDisabled ] || fail "token-disabled key decrypted: $r"
    cmekctl --json key show "$id5" | python3 -c 'import json,sys; assert json.load(sys.stdin)["key"]["token_usage_disabled"] is True'
else
    log "PyKCS11 not installed: skipping the direct token change"
fi

# --- software protection mode ---
id6=$(cmekctl --json key create soft --compartment prod --protection-mode software | python3 -c 'import json,sys; print(json.load(sys.stdin)["key"]["id"])')
e6=$(enc "$id6")
[ "$(json_get "$(dec "$id6" "$e6")" parameters.plaintext)" = aGVsbG8gd29ybGQh ] || fail "software key round trip"
cmekctl key disable "$id6" >/dev/null
r=$(dec "$id6" "$e6"); [ "$(json_get "$r" error)" = io.cmek.KeyDisabled ] || fail "disabled software key decrypted: $r"

# --- the IDL ---
for i in io.cmek.Key io.cmek.Vault; do
    d=$(cmekctl_raw "{\"method\":\"org.varlink.service.GetInterfaceDescription\",\"parameters\":{\"interface\":\"$i\"}}")
    assert_contains "$(json_get "$d" parameters.description)" "interface $i"
done

# --- audit: transitions are there with old and new state ---
grep -q '"event":"key.disabled"' "$STATE/audit.log" || fail "no key.disabled in the audit log"
grep -q '"old_state":"PENDING_DELETION","new_state":"DELETED"' "$STATE/audit.log" || fail "no deletion in the audit log"
log "ok"
