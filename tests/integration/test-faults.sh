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
reviewed="daemon/volume.c:15 daemon/vault.c:11 lib/cmek-audit.c:1 lib/cmek-util.c:1 daemon/metrics.c:1"
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
grep -q 'cmek_fault("write-file-before-rename")' "$top_srcdir/lib/cmek-util.c" || { log "cmek_write_file_atomic() lost its fault point"; bad=1; }
grep -q 'cmek_fault("audit-before-append")' "$top_srcdir/lib/cmek-audit.c" || { log "cmek_audit_append() lost its fault point"; bad=1; }
[ $bad -eq 0 ] || fail "write sites without fault points"
POINTS=$(cd "$top_srcdir" && grep -ho 'cmek_fault("[^"]*")' daemon/*.c lib/*.c | sed 's/cmek_fault("\(.*\)")/\1/' | sort -u)
log "$(echo "$POINTS" | wc -l) fault points: $(echo $POINTS)"

need_root
need_cmd cryptsetup python3
PLUGIN="$top_builddir/tools/.libs/libcryptsetup-token-cmek.so"
[ -f "$PLUGIN" ] || skip "plugin not built"
TOKENDIR=$(cryptsetup --help | sed -n 's/^LUKS2 external token plugin path: *\(.*\)\.$/\1/p')
[ -n "$TOKENDIR" ] && [ -d "$TOKENDIR" ] || skip "this cryptsetup loads no external token plugins"
if ! cmp -s "$PLUGIN" "$TOKENDIR/libcryptsetup-token-cmek.so"; then
    [ ! -e "$TOKENDIR/libcryptsetup-token-cmek.so" ] || cp "$TOKENDIR/libcryptsetup-token-cmek.so" "$TEST_TMP/plugin.saved"
    cp "$PLUGIN" "$TOKENDIR/libcryptsetup-token-cmek.so.tmp"
    mv "$TOKENDIR/libcryptsetup-token-cmek.so.tmp" "$TOKENDIR/libcryptsetup-token-cmek.so"
    on_exit "if [ -e '$TEST_TMP/plugin.saved' ]; then cp '$TEST_TMP/plugin.saved' '$TOKENDIR/libcryptsetup-token-cmek.so'; else rm -f '$TOKENDIR/libcryptsetup-token-cmek.so'; fi"
fi

I=$TEST_TMP/img
STATE=$TEST_TMP/state
mkdir -p "$I"
key_id() { cmekctl key show "$1" --json | python3 -c 'import json,sys; d=json.load(sys.stdin); print(d.get("key", d)["id"])'; }
start_cmekd "$STATE"
cmekctl key create base --compartment prod >/dev/null
K=$(key_id prod/base)
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
        # a create killed before its keyslot and token: an empty volume never handed out; the
        # re-run recreates it (volume create --force)
        [ ! -e "$f.pw" ] && [ "$(cryptsetup luksDump --dump-json-metadata "$f" | python3 -c 'import json,sys; print(len(json.load(sys.stdin)["tokens"]))')" = 0 ] && continue
        fail "after $1 during $2: $(basename "$f") opens by no documented path"
    done
}
checks() { # POINT OP
    cmekctl audit verify >/dev/null || fail "after $1 during $2: the audit chain does not verify"
    all_open "$1" "$2"
    local tmp
    tmp=$(find "$STATE" -name '*.tmp.*' | head -1)
    [ -z "$tmp" ] || log "after $1 during $2: left behind $tmp (overwritten by the next write)"
}

n=0
# walk POINT OP CMD...: kill at POINT during CMD, restart, check, re-run CMD (must succeed)
walk() {
    local point=$1 op=$2
    shift 2
    start_faulty "$point"
    "$@" >/dev/null 2>&1 || true
    await_death "$point" "$op"
    start_cmekd "$STATE"
    checks "$point" "$op"
    "$@" >/dev/null 2>"$TEST_TMP/err" || { cat "$TEST_TMP/err" >&2; fail "re-run of $op after $point failed"; }
    all_open "$point" "$op (re-run)"
    stop_cmekd
    n=$((n + 1))
    log "$point during $op: survived, re-run completed"
}
# the re-run of a create must create it or find it there, complete
create_key() { cmekctl key create "$1" --compartment prod >/dev/null 2>&1 || true; cmekctl key show "prod/$1" >/dev/null; }
# killed after the header but before the registry write: the volume opens by its token and
# 'volume scan' (the documented path for volumes cmekd does not know) registers it
create_vol() { cmekctl volume create "$I/$1.img" --key "$K" --size 16M --strict 2>/dev/null ||
    { cmekctl volume scan "$I/$1.img" >/dev/null && cmekctl volume show "$I/$1.img" | grep -q "$K"; } ||
    cmekctl volume create "$I/$1.img" --key "$K" --size 16M --strict --force; }
new_plain() { truncate -s 32M "$I/$1.img"; printf pw >"$I/$1.img.pw"
    cryptsetup luksFormat -q --type luks2 --pbkdf pbkdf2 --pbkdf-force-iterations 1000 --key-file "$I/$1.img.pw" "$I/$1.img"; }
bind_vol() { cmekctl volume bind "$I/$1.img" --key "$K" --unlock-key-file "$I/$1.img.pw" 2>&1 || cmekctl volume show "$I/$1.img" | grep -q "$K"; }

walk vault-after-generate-key "key create" create_key k1
walk vault-after-create-object "key create" create_key k2
walk audit-before-append:2 "key create" create_key k3
walk write-file-before-rename "volume create (registry)" create_vol c1
walk create-after-format "volume create" create_vol c2
new_plain b1
walk bind-after-keyslot-add "volume bind" bind_vol b1
new_plain b2
walk audit-before-append:2 "volume bind" bind_vol b2
walk remove-after-keyslot-destroy "volume unbind" cmekctl volume unbind "$I/b1.img"
walk vault-after-create-object "key rotate" cmekctl key rotate "$K"
walk rewrap-after-token-write "key rotate (re-wrap)" cmekctl volume rewrap --key "$K"
log "ok: $n crashes survived"
