#!/bin/bash
# SPDX-License-Identifier: LGPL-2.1-or-later
# Issue 13, findings 8a, 6 and 10, replayed by real local users (useradd) against a real daemon,
# SoftHSM2 token and LUKS2 images:
#  8a: "use volumes" + "use keys" unlocks through the daemon but does not export the keyslot secret
#      (io.cmek.Volume.Unwrap) until "use key-delegate" is granted; no secret, no "ok" audit record.
#   6: an empty Volume.Rewrap by a user without a grant is refused, and writes no "ok" audit record,
#      sends no event, runs no hook, changes no registry or header; root's empty rewrap is silent;
#      a flood of events fills the hook queue and the hook for key.disabled still runs, the drops
#      audited in a few aggregated records.
#  10: a user without a grant cannot tell an existing key from an unknown one (Key.Show, Unwrap),
#      and his PermissionDenied names no key, volume, compartment or statement; a user with a grant
#      in the compartment keeps the statement; PolicyCheck with a group needs read audit.
. "${top_srcdir:-$(dirname "$0")/../..}/tests/lib.sh"
need_root
need_cmd cryptsetup socat python3 sha256sum

add_test_user ckpdev    # use volumes + use keys in compartment Dev
add_test_user ckpnone   # no grant at all

chmod 755 "$TEST_TMP"
POLICY=$TEST_TMP/policy
cat >"$POLICY" <<'P'
allow user ckpdev to use volumes in compartment Dev
allow user ckpdev to use keys in compartment Dev
P
chmod 644 "$POLICY"

# a hook that records every event it is given, one JSON per line
HOOKS=$TEST_TMP/hooks
REC=$TEST_TMP/hook-record
mkdir -m 755 "$HOOKS"
: >"$REC"
cat >"$HOOKS/50-record" <<H
#!/bin/sh
/bin/cat >>'$REC'
echo >>'$REC'
H
chmod 755 "$HOOKS/50-record"

start_cmekd "" --policy "$POLICY" --hooks-dir "$HOOKS"
chmod 755 "$STATE" 2>/dev/null || true
AUDIT=$STATE/audit.log
I=$TEST_TMP/img
mkdir -m 755 "$I"

cmekctl key create devkey --compartment Dev >/dev/null
cmekctl key create prodkey --compartment Prod >/dev/null
cmekctl key create empty --compartment Prod >/dev/null
KD=$(key_id Dev/devkey)
KP=$(key_id Prod/prodkey)
cmekctl volume create "$I/dev.img" --key "$KD" --size 16M >/dev/null
cmekctl volume create "$I/prod.img" --key "$KP" --size 16M >/dev/null
chown ckpdev: "$I/dev.img"      # his volume: he can read it himself
UD=$(cryptsetup luksUUID "$I/dev.img")
UP=$(cryptsetup luksUUID "$I/prod.img")
cryptsetup token export --token-id 0 "$I/dev.img" >"$TEST_TMP/dev-token.json"

# raw_as USER JSON: one Varlink call as USER; prints the reply
raw_as() { printf '%s\0' "$2" | as_user "$1" socat -t 10 - "UNIX-CONNECT:$SOCK" | tr -d '\0'; }
unwrap_json() { # UUID TOKEN_FILE
    printf '{"method":"io.cmek.Volume.Unwrap","parameters":{"uuid":"%s","token":%s}}' "$1" "$(cat "$2")"
}
# echo_masked REPLY STRING: the reply with the caller's own string (echoed back) replaced by K
echo_masked() { python3 -c 'import sys; print(sys.argv[1].replace(sys.argv[2].replace("/", "\\/"), "K"))' "$1" "$2"; }
audit_lines() { wc -l <"$AUDIT"; }
# audit_new_ok SINCE: the "ok" records written after line SINCE
audit_new_ok() { tail -n +"$(($1 + 1))" "$AUDIT" | grep '"result":"ok"' | grep -v '"event":"audit\.' || true; }
snapshot() { sha256sum "$STATE/volumes.json" "$I/dev.img" "$I/prod.img"; }
# wait_for CMD...: up to 10 s
reload_policy() { # then wait until USER may do what the new statement allows
    kill -HUP "$CMEKD_PID"
    wait_for grep -q "Policy $POLICY loaded: $1 statements" "$TEST_TMP/cmekd.log" || fail "policy not reloaded"
}
grep -q '"result":"ok"' "$AUDIT" || fail "cannot read the audit log format ($AUDIT)"

log "8a: use volumes + use keys unlocks through the daemon ..."
as_user_ctl ckpdev volume unlock --test "$I/dev.img" >/dev/null || fail "ckpdev cannot unlock his Dev volume"

log "8a: ... but does not export the keyslot secret without use key-delegate"
n0=$(audit_lines)
r=$(raw_as ckpdev "$(unwrap_json "$UD" "$TEST_TMP/dev-token.json")")
[ "$(json_get "$r" error)" = io.cmek.PermissionDenied ] || fail "Unwrap by ckpdev not refused: $r"
assert_not_contains "$r" '"secret"'
[ "$(json_get "$r" parameters.resource)" = key-delegate ] || fail "the refusal does not name key-delegate: $r"
# he holds grants in Dev: he is told exactly what is missing
assert_contains "$(json_get "$r" parameters.statement)" "allow user ckpdev to use key-delegate in compartment Dev"
[ -z "$(audit_new_ok "$n0")" ] || fail "refused Unwrap wrote an ok audit record: $(audit_new_ok "$n0")"
tail -n +"$((n0 + 1))" "$AUDIT" | grep -q '"policy.denied"' || fail "the refused Unwrap is not audited"

log "8a: with use key-delegate in compartment Dev the secret leaves, and opens the keyslot"
echo "allow user ckpdev to use key-delegate in compartment Dev" >>"$POLICY"
reload_policy 3
n0=$(audit_lines)
r=$(raw_as ckpdev "$(unwrap_json "$UD" "$TEST_TMP/dev-token.json")")
[ -n "$(json_get "$r" parameters.secret)" ] && [ "$(json_get "$r" parameters.secret)" != None ] || fail "Unwrap with key-delegate failed: $r"
json_get "$r" parameters.secret | base64 -d >"$TEST_TMP/secret"
cryptsetup open --test-passphrase --key-slot "$(json_get "$r" parameters.keyslot)" --key-file "$TEST_TMP/secret" "$I/dev.img" ||
    fail "the exported secret does not open the keyslot"
audit_new_ok "$n0" | grep -q '"key.used"' || fail "no ok key.used record for the granted Unwrap"
# the test-only Key.TestDecrypt (test-hooks builds) hands out plaintext too: key-delegate as well
echo "allow user ckpdev to use keys in tenancy where target.key.id = '$KD'" >>"$POLICY"
reload_policy 4
e=$(cmekctl_raw "{\"method\":\"io.cmek.Key.TestEncrypt\",\"parameters\":{\"key\":\"$KD\",\"plaintext\":\"c2VjcmV0\"}}")
r=$(raw_as ckpdev "{\"method\":\"io.cmek.Key.TestDecrypt\",\"parameters\":{\"key\":\"$KD\",\"iv\":\"$(json_get "$e" parameters.iv)\",\"ciphertext\":\"$(json_get "$e" parameters.ciphertext)\",\"tag\":\"$(json_get "$e" parameters.tag)\"}}")
[ "$(json_get "$r" error)" = io.cmek.PermissionDenied ] && [ "$(json_get "$r" parameters.resource)" = key-delegate ] ||
    fail "TestDecrypt without key-delegate: $r"
assert_not_contains "$r" plaintext
r=$(cmekctl_raw "{\"method\":\"io.cmek.Key.TestDecrypt\",\"parameters\":{\"key\":\"$KD\",\"iv\":\"$(json_get "$e" parameters.iv)\",\"ciphertext\":\"$(json_get "$e" parameters.ciphertext)\",\"tag\":\"$(json_get "$e" parameters.tag)\"}}")
[ "$(json_get "$r" parameters.plaintext)" = c2VjcmV0 ] || fail "root's TestDecrypt failed: $r"
# key-delegate in Dev is no grant in Prod
cryptsetup token export --token-id 0 "$I/prod.img" >"$TEST_TMP/prod-token.json"
r=$(raw_as ckpdev "$(unwrap_json "$UP" "$TEST_TMP/prod-token.json")")
[ "$(json_get "$r" error)" = io.cmek.PermissionDenied ] || fail "Unwrap of a Prod volume by ckpdev not refused: $r"

log "10: a user without a grant gets one answer for an unknown key and for a Prod key"
for k in "$KP" Prod/prodkey prodkey; do
    a=$(raw_as ckpnone "{\"method\":\"io.cmek.Key.Show\",\"parameters\":{\"key\":\"$k\"}}")
    b=$(raw_as ckpnone "{\"method\":\"io.cmek.Key.Show\",\"parameters\":{\"key\":\"${k}x\"}}")
    [ "$(json_get "$a" error)" = io.cmek.KeyNotFound ] || fail "Key.Show $k by ckpnone: $a"
    [ "$(echo_masked "$a" "$k")" = "$(echo_masked "$b" "${k}x")" ] || fail "existing and unknown key answered differently:
  $a
  $b"
done
# the same through cmekctl, byte for byte (exit code and text)
rc1=0; as_user_ctl ckpnone key show Prod/prodkey >"$TEST_TMP/o1" 2>&1 || rc1=$?
rc2=0; as_user_ctl ckpnone key show Prod/nosuch >"$TEST_TMP/o2" 2>&1 || rc2=$?
[ $rc1 -eq $rc2 ] && [ $rc1 -ne 0 ] || fail "key show exit codes: existing $rc1, unknown $rc2"
cmp -s <(sed 's|Prod/prodkey|K|g' "$TEST_TMP/o1") <(sed 's|Prod/nosuch|K|g' "$TEST_TMP/o2") ||
    fail "key show texts differ: $(cat "$TEST_TMP/o1") / $(cat "$TEST_TMP/o2")"
# Volume.Create / Bind name a key too: one answer for an existing Prod key and an unknown one
# (ckpnone: no grant; ckpdev: no inspect on Prod), and nothing is created
for u in ckpnone ckpdev; do
    for meth in Create Bind; do
        # Bind has no size (an unknown parameter is refused before the key is looked at)
        f=path sz=',"size":16777216'; [ $meth = Create ] || f=device sz=
        a=$(raw_as $u "{\"method\":\"io.cmek.Volume.$meth\",\"parameters\":{\"$f\":\"/tmp/ckp-nonexistent.img\",\"key\":\"Prod/prodkey\"$sz}}")
        b=$(raw_as $u "{\"method\":\"io.cmek.Volume.$meth\",\"parameters\":{\"$f\":\"/tmp/ckp-nonexistent.img\",\"key\":\"Prod/prodkeyx\"$sz}}")
        [ "$(json_get "$a" error)" = io.cmek.KeyNotFound ] || fail "Volume.$meth with a Prod key by $u: $a"
        [ "$(echo_masked "$a" Prod/prodkey)" = "$(echo_masked "$b" Prod/prodkeyx)" ] || fail "Volume.$meth: existing and unknown key answered differently for $u:
  $a
  $b"
    done
done
[ ! -e /tmp/ckp-nonexistent.img ] || fail "a refused Volume.Create created its image"
# ckpdev may not inspect Prod either: same answer as for an unknown key
a=$(raw_as ckpdev '{"method":"io.cmek.Key.Show","parameters":{"key":"Prod/prodkey"}}')
[ "$(json_get "$a" error)" = io.cmek.KeyNotFound ] || fail "Key.Show of a Prod key by ckpdev: $a"
# a key ckpdev may inspect (use implies read) but not manage: told the statement he lacks
expect_exit "$EXIT_PERMISSION" as_user_ctl ckpdev key disable "$KD"
assert_contains "$(cat "$TEST_TMP/err")" "allow user ckpdev to manage keys in compartment Dev"
[ "$(cmekctl key show "$KD" --json | python3 -c 'import json,sys; print(json.load(sys.stdin)["key"]["state"])')" = ENABLED ] ||
    fail "the refused disable changed the key"

log "10: PermissionDenied for a user without a grant names no key, volume, compartment or statement"
n0=$(audit_lines)
a=$(raw_as ckpnone "$(unwrap_json "$UD" "$TEST_TMP/dev-token.json")")
[ "$(json_get "$a" error)" = io.cmek.PermissionDenied ] || fail "Unwrap by ckpnone: $a"
for s in "$KD" "$UD" Dev "allow user" '"statement"' key_id volume_id; do assert_not_contains "$a" "$s"; done
# ... and a token naming a key that does not exist gets the very same answer
sed "s/$KD/${KD}0/" "$TEST_TMP/dev-token.json" >"$TEST_TMP/nokey-token.json"
b=$(raw_as ckpnone "$(unwrap_json "$UD" "$TEST_TMP/nokey-token.json")")
[ "$a" = "$b" ] || fail "Unwrap: existing and unknown key answered differently:
  $a
  $b"
# the details are in the audit record, not lost
tail -n +"$((n0 + 1))" "$AUDIT" | grep '"policy.denied"' | grep -q "$KD" || fail "the denial's key id is not in the audit log"
[ -z "$(audit_new_ok "$n0")" ] || fail "refused calls wrote ok records"

log "10: PolicyCheck about oneself is open; with a group (even one's own) it needs read audit"
as_user_ctl ckpdev policy check --user ckpdev --compartment Dev use keys | grep -qx allowed || fail "self check failed"
for args in "--group ckpdev" "--user ckpdev --group ckpdev" "--user ckpnone"; do
    # shellcheck disable=SC2086
    expect_exit "$EXIT_PERMISSION" as_user_ctl ckpdev policy check $args --compartment Dev use keys
    assert_contains "$(cat "$TEST_TMP/err")" "io.cmek.PermissionDenied"
    assert_not_contains "$(cat "$TEST_TMP/out")" "allowed"
done
cmekctl policy check --group ckpdev --compartment Dev use keys >/dev/null 2>&1 || [ $? -eq 4 ] || fail "root's group check failed"
# nor does it tell which accounts exist
expect_exit "$EXIT_PERMISSION" as_user_ctl ckpnone policy check --user ckpnosuchuser use keys
assert_contains "$(cat "$TEST_TMP/err")" "io.cmek.PermissionDenied"
assert_not_contains "$(cat "$TEST_TMP/err")" "unknown user"
rc=0; cmekctl policy check --user ckpnosuchuser use keys >/dev/null 2>"$TEST_TMP/err" || rc=$?
[ $rc -ne 0 ] && grep -q "unknown user" "$TEST_TMP/err" || fail "root is not told the user is unknown"

log "6: an empty Volume.Rewrap by a user without a grant: refused, nothing audited ok, no event, no hook"
EV=$TEST_TMP/events
follow_events "$EV"
# prove the observers work: a real event reaches the subscriber and the hook
cmekctl key create probe --compartment Dev >/dev/null
cmekctl key disable Dev/probe >/dev/null
wait_for grep -q key.disabled "$EV" || fail "the events subscriber saw no key.disabled"
wait_for grep -q key.disabled "$REC" || fail "the hook did not record key.disabled"
sleep 0.5
before=$(snapshot)
rec0=$(wc -c <"$REC"); ev0=$(wc -c <"$EV"); n0=$(audit_lines)
mkfifo -m 666 "$TEST_TMP/fifo"
for params in "{\"devices\":[\"$TEST_TMP/fifo\"]}" "{\"devices\":[\"$I/prod.img\"]}" '{}' '{"devices":[]}' "{\"key\":\"$(key_id Prod/empty)\"}" '{"key":"Prod/empty"}' '{"key":"Prod/nosuch"}' \
    "{\"key\":\"$KP\"}" '{"key":"Prod/empty","new_secret":true}'; do
    r=$(raw_as ckpnone "{\"method\":\"io.cmek.Volume.Rewrap\",\"parameters\":$params}")
    [ "$(json_get "$r" error)" = io.cmek.PermissionDenied ] || fail "Rewrap $params by ckpnone: $r"
    for s in "$KP" "$UP" Prod "allow user" '"statement"'; do assert_not_contains "$r" "$s"; done
done
# the refusals came before any device was opened: the daemon did not block on the FIFO
CMEK_RAW_TIMEOUT=5 cmekctl_raw '{"method":"io.cmek.Service.Status"}' | grep -q '"version"' || fail "the daemon is stuck"
sleep 1.5  # hooks run from the event loop, after the reply: give them time
[ -z "$(audit_new_ok "$n0")" ] || fail "refused rewraps wrote ok records: $(audit_new_ok "$n0")"
[ "$(wc -c <"$EV")" = "$ev0" ] || fail "refused rewraps sent events: $(tail -c +"$((ev0 + 1))" "$EV")"
[ "$(wc -c <"$REC")" = "$rec0" ] || fail "refused rewraps ran hooks: $(tail -c +"$((rec0 + 1))" "$REC")"
[ "$(snapshot)" = "$before" ] || fail "refused rewraps changed the registry or a header"

log "6: root's empty rewrap does nothing, so says nothing; a real one is seen"
out=$(cmekctl volume rewrap --key Prod/empty)
assert_contains "$out" "0 re-wrapped"
sleep 1
[ -z "$(audit_new_ok "$n0")" ] || fail "an empty rewrap wrote ok records: $(audit_new_ok "$n0")"
[ "$(wc -c <"$EV")" = "$ev0" ] || fail "an empty rewrap sent events"
[ "$(wc -c <"$REC")" = "$rec0" ] || fail "an empty rewrap ran hooks"
cmekctl volume rewrap --key "$KP" >/dev/null
wait_for grep -q rewrap.completed "$EV" || fail "a real rewrap sent no event"
wait_for grep -q rewrap.completed "$REC" || fail "a real rewrap ran no hook"
audit_new_ok "$n0" | grep -q volume.rewrap_completed || fail "a real rewrap was not audited"
kill $FOLLOW_PID 2>/dev/null || true
stop_cmekd

log "6: a flood of events fills the hook queue; the hook for key.disabled still runs"
# four slow hooks take the 32 slots after 8 events; the queue holds 4 runs (test-hooks knob), so
# 20 rewraps (40 events, 160 runs) overflow it many times over
for h in 50-record 51-record 52-record 53-record; do
    cat >"$HOOKS/$h" <<H
#!/bin/sh
/bin/cat >>'$REC'
echo >>'$REC'
/bin/sleep 8
H
    chmod 755 "$HOOKS/$h"
done
: >"$REC"
CMEKD_TEST_HOOK_QUEUE_MAX=4 start_cmekd "$STATE" --policy "$POLICY" --hooks-dir "$HOOKS"
cmekctl key create victim --compartment Dev >/dev/null
sleep 8.5   # the hooks of key creation are done: every slot is free
n0=$(audit_lines)
for ((i = 0; i < 20; i++)); do cmekctl volume rewrap --key "$KP" >/dev/null; done
cmekctl key disable Dev/victim >/dev/null
wait_for grep -q '"hooks.dropped"' "$AUDIT" || fail "the dropped runs were not audited"
# hooks append concurrently: count occurrences, not lines
count() { grep -o "$1" "$REC" | wc -l; }
for ((i = 0; i < 300; i++)); do [ "$(count '"key.disabled"')" -ge 4 ] && break; sleep 0.1; done
[ "$(count '"key.disabled"')" -eq 4 ] || fail "key.disabled reached $(count '"key.disabled"') of 4 hooks"
nr=$(count '"rewrap\.')
[ "$nr" -lt 160 ] || fail "the queue never overflowed ($nr runs of 160): the test proves nothing"
nd=$(tail -n +"$((n0 + 1))" "$AUDIT" | grep -c '"hooks.dropped"')
[ "$nd" -ge 1 ] && [ "$nd" -le 20 ] || fail "$nd audit records for $((160 - nr)) dropped runs: they must be aggregated"
[ "$nd" -lt $((160 - nr)) ] || fail "one audit record per drop ($nd for $((160 - nr)))"
log "ok"
