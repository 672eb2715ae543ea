#!/bin/bash
# SPDX-License-Identifier: LGPL-2.1-or-later
# Fault-injection walk. Part 1 (static): every call that changes persistent state (LUKS2 token
# writes, keyslot add/destroy, PKCS#11 object create/generate/destroy, atomic file writes, audit
# appends) sits in a file with cmek_fault() points, and no file gained a write site since the
# points were last reviewed (the table below: update it together with a new fault point).
# Part 2 (walk): cmekd kills itself (SIGKILL) at each point during each operation that reaches
# it (key create, volume create, bind, unbind, registry and audit writes, key rotation); after
# each crash: the audit chain verifies, every volume opens by a documented path (its cmek token,
# or the passphrase it had before an interrupted bind), and re-running the operation completes it.
# (re-wrap and --new-secret points: test-volume-crash.sh.)
. "${top_srcdir:-$(dirname "$0")/../..}/tests/lib.sh"

log "static check: write sites vs fault points"
WRITES='crypt_token_json_set|crypt_keyslot_add_by_[a-z_]*\(|crypt_keyslot_destroy|C_CreateObject|C_DestroyObject|C_GenerateKey\(|C_UnwrapKey|cmek_write_file_atomic\(|write\(a->fd'
# FILE WRITE_SITES: reviewed; each of these files has fault points on its write paths
reviewed="daemon/volume.c:16 daemon/vault.c:12 daemon/key.c:1 lib/cmek-audit.c:1 lib/cmek-util.c:1 daemon/metrics.c:1"
bad=0
for f in $(cd "$top_srcdir" && grep -lE "$WRITES" daemon/*.c lib/*.c); do
    sites=$(grep -cE "$WRITES" "$top_srcdir/$f" || true)
    points=$(grep -c 'cmek_fault("' "$top_srcdir/$f" || true)
    want=
    for e in $reviewed; do [ "${e%%:*}" = "$f" ] && want=${e#*:}; done
    if [ -z "$want" ]; then
        log "$f: $sites write sites, $points fault points: not reviewed (add fault points, then add it to the table)"; bad=1
    elif [ "$sites" -gt "$want" ]; then
        log "$f: $sites write sites, $want reviewed: a new write site needs a cmek_fault() point"; bad=1
    elif [ "$points" -eq 0 ] && [ "$f" != daemon/metrics.c ] && [ "$f" != lib/cmek-util.c ]; then
        log "$f: no fault point"; bad=1
    fi
done
# the shared chokepoints: every atomic file write and every audit append
# (lib/cmek-util.c is linked by the tools too, so its point is a hook that lib/cmek-fault.c sets)
grep -q 'before_rename_hook();' "$top_srcdir/lib/cmek-util.c" || { log "cmek_write_file_atomic() lost its fault point hook"; bad=1; }
grep -q 'cmek_fault("write-file-before-rename")' "$top_srcdir/lib/cmek-fault.c" || { log "cmek_write_file_atomic() lost its fault point"; bad=1; }
grep -q 'cmek_write_file_set_before_rename_hook(fault_enabled' "$top_srcdir/lib/cmek-fault.c" || { log "cmek_fault_enable() no longer sets the atomic-write fault point"; bad=1; }
grep -q 'cmek_fault("audit-before-append")' "$top_srcdir/lib/cmek-audit.c" || { log "cmek_audit_append() lost its fault point"; bad=1; }
[ $bad -eq 0 ] || fail "write sites without fault points"
POINTS=$(cd "$top_srcdir" && grep -ho 'cmek_fault("[^"]*")' daemon/*.c lib/*.c | sed 's/cmek_fault("\(.*\)")/\1/' | sort -u)
log "$(echo "$POINTS" | wc -l) fault points: $(echo $POINTS)"

need_root
need_cmd cryptsetup python3
install_token_plugin

I=$TEST_TMP/img
STATE=$TEST_TMP/state
SOFTHSM=/usr/lib/softhsm/libsofthsm2.so
mkdir -p "$I"
# FAULTS_FULL=1 (make check-faults): every point of every operation; otherwise (make check) a
# representative walk: every operation, its riskiest points
FULL=${FAULTS_FULL:-0}
start_cmekd "$STATE"
cmekctl key create base --compartment prod >/dev/null
K=$(key_id prod/base)
cmekctl key create other --compartment prod >/dev/null
K2=$(key_id prod/other)
PIN=$(sed -n 's/^user-pin=//p' "$STATE/pins")
if [ -e "$SOFTHSM" ] && command -v pkcs11-tool >/dev/null; then
    cmekctl key wrapping-key --out "$TEST_TMP/wrap.pem"
    head -c 32 /dev/urandom >"$TEST_TMP/raw.key"
    cmekctl key wrap-for-import --key-file "$TEST_TMP/raw.key" --public-key "$TEST_TMP/wrap.pem" \
        --wrapping-algorithm RSA_OAEP_AES_SHA256 --out "$TEST_TMP/blob" >/dev/null
fi
stop_cmekd

start_faulty() { export CMEKD_TEST_FAULT=$1; start_cmekd "$STATE"; unset CMEKD_TEST_FAULT; }
await_death() {
    local i
    for ((i = 0; i < 100; i++)); do kill -0 "$CMEKD_PID" 2>/dev/null || break; sleep 0.1; done
    kill -0 "$CMEKD_PID" 2>/dev/null && fail "cmekd did not reach fault point $1 during $2"
    wait "$CMEKD_PID" 2>/dev/null || true
    CMEKD_PID=
    rm -f "$SOCK"
    grep -q "Test fault point '${1%%:*}' reached" "$TEST_TMP/cmekd.log" || fail "cmekd died elsewhere than at $1"
}
# every image opens: through its cmek token, or with the passphrase it was made with
all_open() {
    local f
    for f in "$I"/*.img; do
        [ -e "$f" ] || continue
        cryptsetup isLuks "$f" 2>/dev/null || continue   # a create killed before the format
        cryptsetup open --test-passphrase --token-only "$f" 2>/dev/null && continue
        [ -e "$f.pw" ] && cryptsetup open --test-passphrase --key-file "$f.pw" "$f" 2>/dev/null && continue
        # a create killed before its token: never handed out, no way in; its intent is kept and
        # the re-run formats it anew
        [ ! -e "$f.pw" ] && grep -q "$(cryptsetup luksUUID "$f")" "$STATE/volumes.json" &&
            [ "$(cryptsetup luksDump --dump-json-metadata "$f" | python3 -c 'import json,sys; print(len(json.load(sys.stdin)["tokens"]))')" = 0 ] && continue
        fail "after $1 during $2: $(basename "$f") opens by no documented path"
    done
}
# no PKCS#11 object that no key's metadata names (secret objects), no metadata object twice
no_orphans() {
    [ -e "$SOFTHSM" ] && command -v pkcs11-tool >/dev/null || return 0
    SOFTHSM2_CONF=$STATE/softhsm2.conf pkcs11-tool --module "$SOFTHSM" --token-label cmekd-default --login \
        --pin "$PIN" --list-objects >"$TEST_TMP/objs" 2>/dev/null || fail "pkcs11-tool --list-objects failed"
    cmekctl key list --json >"$TEST_TMP/keys.json"
    python3 - "$TEST_TMP/objs" "$TEST_TMP/keys.json" <<'PY' || fail "after $1 during $2: orphaned token objects"
import json, re, sys
objs = open(sys.argv[1]).read()
keys = json.load(open(sys.argv[2]))["keys"]
named = {v["label"] for k in keys if k["state"] != "DELETED" for v in k.get("versions", [])}
ids = {k["id"] for k in keys}
secrets = re.findall(r"^Secret Key Object.*\n\s+label:\s+(cmek:\S+)", objs, re.M)
data = re.findall(r"^Data object.*\n\s+label:\s+'(cmek\.key\.[^']*)'", objs, re.M)
# the daemon's own keys: the seal key and the audit log's checkpoint HMAC key (docs/audit.md)
bad = [l for l in secrets if l not in ("cmek:seal-key", "cmek:audit-hmac") and l not in named]
bad += ["twice: " + l for l in set(secrets) if secrets.count(l) > 1]
bad += ["metadata: " + d for d in set(data) if d not in ids or data.count(d) > 1]
if bad:
    print("orphans:", bad)
    sys.exit(1)
PY
}
checks() { # POINT OP
    cmekctl audit verify >/dev/null || fail "after $1 during $2: the audit chain does not verify"
    all_open "$1" "$2"
    no_orphans "$1" "$2"
}

n=0
# walk POINT OP CMD...: kill at POINT during CMD, restart, check, re-run CMD (or $RERUN: the command
# that finishes the job, e.g. rewrap after an interrupted rotation) which must succeed, check
walk() {
    local point=$1 op=$2
    shift 2
    start_faulty "$point"
    "$@" >/dev/null 2>&1 || true
    await_death "$point" "$op"
    start_cmekd "$STATE"
    checks "$point" "$op"
    ${RERUN:-"$@"} >/dev/null 2>"$TEST_TMP/err" || { cat "$TEST_TMP/err" >&2; fail "re-run of $op after $point failed"; }
    checks "$point" "$op (re-run)"
    # a temporary file a crash left is replaced by the next write of its target and renamed
    [ -z "$(find "$STATE" -name '*.cmek-tmp' -o -name '*.tmp.*')" ] ||
        fail "after $point during $op and a re-run: left behind $(find "$STATE" -name '*.cmek-tmp' -o -name '*.tmp.*')"
    stop_cmekd
    n=$((n + 1))
    log "$point during $op: survived, re-run completed"
}
full() { [ "$FULL" = 1 ]; }
# the re-run of a create must create it or find it there, complete
create_key() { cmekctl key create "$1" --compartment prod >/dev/null 2>&1 || true; cmekctl key show "prod/$1" >/dev/null; }
import_key() { cmekctl key import "$1" --compartment prod --wrapped-file "$TEST_TMP/blob" \
    --wrapping-algorithm RSA_OAEP_AES_SHA256 >/dev/null 2>&1 || true; cmekctl key show "prod/$1" >/dev/null; }
# the re-run of a volume create: a create killed before the volume had its token is formatted
# anew (its intent is in the registry); one killed after its header was complete was registered
# by the restarted daemon (no 'volume scan'): the re-run says AlreadyExists, the volume is bound to K
create_vol() { cmekctl volume create "$I/$1.img" --key "$K" --size 16M --strict 2>"$TEST_TMP/create.err" ||
    { grep -qi 'exists' "$TEST_TMP/create.err" && cmekctl volume show "$I/$1.img" | grep -q "$K"; }; }
new_plain() { truncate -s 32M "$I/$1.img"; printf pw >"$I/$1.img.pw"
    cryptsetup luksFormat -q --type luks2 --pbkdf pbkdf2 --pbkdf-force-iterations 1000 --key-file "$I/$1.img.pw" "$I/$1.img"; }
# bound to KEY: the re-run of a bind on a bound volume moves it to KEY (a no-op when it is there)
bind_vol() { cmekctl volume bind "$I/$1.img" --key "${2:-$K}" --unlock-key-file "$I/$1.img.pw" >/dev/null &&
    cmekctl volume show "$I/$1.img" | grep -q "${2:-$K}"; }
# a bind must leave no keyslot behind: the plain volume's passphrase slot + the CMEK one
two_slots() { [ "$(cryptsetup luksDump --dump-json-metadata "$I/$1.img" | python3 -c 'import json,sys; print(len(json.load(sys.stdin)["keyslots"]))')" = 2 ] ||
    fail "$1.img: not 2 keyslots after an interrupted bind and its re-run"; }
unbind_slot() { cmekctl volume unbind "$I/$1.img" --remove-slot >/dev/null 2>"$TEST_TMP/unbind.err" ||
    grep -qi 'not found\|unknown\|no such' "$TEST_TMP/unbind.err"; cmekctl volume show "$I/$1.img" >/dev/null 2>&1 && return 1
    cryptsetup open --test-passphrase --key-file "$I/$1.img.pw" "$I/$1.img"; }
rotate_once() { # the rotation completed once: current version > $1
    local cur
    cur=$(key_version "$K")
    [ "$cur" -gt "$1" ] || cmekctl key rotate "$K" >/dev/null; }
rewrap_all() { cmekctl volume rewrap --key "$K" >/dev/null; }
newsecret() { cmekctl volume rewrap --new-secret "$I/c1.img" "$I/c3.img" >/dev/null; }
# the key DELETED and its volume's CMEK keyslot gone, registered as KEY_DELETED (it keeps its passphrase)
delete_due() { cmekctl_raw "{\"method\":\"io.cmek.Key.RunScheduled\",\"parameters\":{\"now\":$(( $(date +%s) + 8 * 86400 ))}}" >/dev/null
    cmekctl key show "$KD" --json | grep -q '"DELETED"' &&
    cmekctl volume show "$I/$DN.img" --json | grep -q '"KEY_DELETED"' &&
    [ "$(cryptsetup luksDump --dump-json-metadata "$I/$DN.img" | python3 -c 'import json,sys; print(len(json.load(sys.stdin)["keyslots"]))')" = 1 ]; }

# --- key create / import ---
walk vault-after-generate-key "key create" create_key k1
walk vault-after-create-object "key create" create_key k2
full && walk key-after-intent "key create" create_key k3
full && walk audit-before-append:2 "key create" create_key k4
if [ -e "$TEST_TMP/blob" ]; then
    walk vault-after-import-object "key import" import_key i1
    full && walk vault-after-create-object "key import" import_key i2
fi
# --- volume create (intent, format, keyslot, token, registry) ---
walk write-file-before-rename "volume create (intent)" create_vol c1
walk create-after-format "volume create" create_vol c2
walk bind-after-keyslot-add "volume create" create_vol c3
walk write-file-before-rename:2 "volume create (registry after the header)" create_vol c4
full && walk audit-before-append:2 "volume create" create_vol c5
# --- bind ---
new_plain b1; new_plain b2; new_plain b3; new_plain b4
walk bind-after-keyslot-add "volume bind" bind_vol b1; two_slots b1
walk write-file-before-rename:2 "volume bind (registry after the header)" bind_vol b2; two_slots b2
full && walk write-file-before-rename "volume bind (intent)" bind_vol b3
full && walk audit-before-append:2 "volume bind" bind_vol b4
# the start-up repair itself killed: an interrupted bind's keyslot removed, the daemon killed
# right after; the next start finds nothing left to do
if full; then
    new_plain b5
    start_faulty bind-after-keyslot-add; bind_vol b5 2>/dev/null || true; await_death bind-after-keyslot-add "volume bind"
    export CMEKD_TEST_FAULT=intent-after-keyslot-destroy
    "$CMEKD" --state-dir "$STATE" --socket "$SOCK" --test-hooks >>"$TEST_TMP/cmekd.log" 2>&1 || true
    unset CMEKD_TEST_FAULT
    grep -q "Test fault point 'intent-after-keyslot-destroy' reached" "$TEST_TMP/cmekd.log" || fail "start-up did not reach intent-after-keyslot-destroy"
    rm -f "$SOCK"
    start_cmekd "$STATE"; checks intent-after-keyslot-destroy "start-up"
    bind_vol b5 || fail "re-run of the bind after intent-after-keyslot-destroy failed"; stop_cmekd; two_slots b5
    n=$((n + 1)); log "intent-after-keyslot-destroy during start-up: survived, re-run completed"
fi
# --- change key (bind --key OTHER on a bound volume: a re-wrap under another key) ---
walk rewrap-after-token-write "change key" bind_vol b1 "$K2"
full && walk rewrap-after-unwrap "change key" bind_vol b2 "$K2"
full && walk write-file-before-rename "change key (registry)" bind_vol b3 "$K2"
# --- rotation, then re-wrap ---
start_cmekd "$STATE"; v0=$(key_version "$K"); stop_cmekd
walk vault-after-generate-key "key rotate" rotate_once "$v0"
start_cmekd "$STATE"; v0=$(key_version "$K"); stop_cmekd
full && walk key-after-intent "key rotate" rotate_once "$v0"
RERUN=rewrap_all walk rewrap-after-token-write:2 "key rotate (re-wrap of its volumes)" cmekctl key rotate "$K"
full && RERUN=rewrap_all walk rewrap-after-unwrap "key rotate (re-wrap of its volumes)" cmekctl key rotate "$K"
full && RERUN=rewrap_all walk write-file-before-rename:2 "key rotate (registry after the re-wrap)" cmekctl key rotate "$K"
# --- --new-secret (every point over 3 volumes: test-volume-crash.sh) ---
walk newsecret-after-keyslot-add "rewrap --new-secret" newsecret
full && walk newsecret-after-token-add "rewrap --new-secret" newsecret
full && walk repair-after-keyslot-destroy "rewrap --new-secret" newsecret
# --- unbind: to the provider-managed default key (created on first use), or --remove-slot ---
walk vault-after-generate-key "volume unbind (default key create)" cmekctl volume unbind "$I/c1.img"
full && walk rewrap-after-token-write "volume unbind" cmekctl volume unbind "$I/c3.img"
walk remove-after-keyslot-destroy "volume unbind --remove-slot" unbind_slot b1
full && walk write-file-before-rename "volume unbind --remove-slot (registry)" unbind_slot b2
# --- key deletion: the key's objects destroyed, its volumes shredded or left with their passphrase ---
doomed() { # NAME: a key bound to a plain volume (with its passphrase), deletion due in 7 days
    start_cmekd "$STATE"
    cmekctl key create "$1" --compartment prod >/dev/null
    KD=$(key_id "prod/$1") DN=$1
    new_plain "$1"; cmekctl volume bind "$I/$1.img" --key "$KD" --unlock-key-file "$I/$1.img.pw" >/dev/null
    cmekctl key schedule-deletion "$KD" --days 7 >/dev/null
    stop_cmekd
}
doomed d1; walk vault-before-destroy-object "key deletion" delete_due
if full; then
    doomed d2; walk shred-after-keyslot-destroy "key deletion" delete_due
    doomed d3; walk write-file-before-rename "key deletion (registry)" delete_due
fi
log "ok: $n crashes survived ($([ "$FULL" = 1 ] && echo full || echo CI) walk)"
