#!/bin/bash
# SPDX-License-Identifier: LGPL-2.1-or-later
# cmek-udev-helper: CMEK_* properties for a LUKS2 image with a cmek token; nothing (exit 0) for
# everything else; crypttab volumes are not marked for hotplug attach. Issue 13 finding 8b:
# CMEK_ATTACH=1 only for the device a real cmekd registered (the image, or a loop device over
# it); a local user's image carrying a registered UUID, a copy of a registered volume, or an
# unregistered device with a cmek token is refused (CMEK_ATTACH_REFUSED=, logged) unless a rule
# opts in with CMEK_AUTOATTACH=1; nothing changes in the registry, the images or the audit log.
. "${top_srcdir:-$(dirname "$0")/../..}/tests/lib.sh"
need_root
need_cmd cryptsetup base64 sha256sum
HELPER="$top_builddir/cmek-udev-helper"
[ -x "$HELPER" ] || fail "$HELPER not built"
cd "$TEST_TMP"
# the format checks below use made-up tokens: a hand-written registry lists their images
FAKE_STATE=$TEST_TMP/fake-state
mkdir -p "$FAKE_STATE"
register() { # IMAGE KEY_ID: adds IMAGE to the hand-written registry
    python3 - "$FAKE_STATE/volumes.json" "$(cryptsetup luksUUID "$1")" "$(readlink -f "$1")" "$2" <<'EOP'
import json, os, sys
f, uuid, path, key = sys.argv[1:]
reg = json.load(open(f)) if os.path.exists(f) else {"volumes": []}
reg["volumes"].append({"uuid": uuid, "path": path, "key_id": key, "state": "BOUND"})
json.dump(reg, open(f, "w"))
EOP
}

fmt() { # IMAGE TYPE
    truncate -s 20M "$1"
    printf pw | cryptsetup luksFormat -q --type "$2" --pbkdf pbkdf2 --pbkdf-force-iterations 1000 \
        --key-file - "$1" >/dev/null
}
b64() { head -c "$1" /dev/urandom | base64 -w0; }
token() { # KEYSLOTS KEY_ID [VERSION]
    printf '{"type":"cmek","keyslots":%s,"cmek_version":%s,"key_id":"%s","key_version":7,"vault":"default","alg":"AES-256-GCM","iv":"%s","ciphertext":"%s","tag":"%s","created":"2026-11-23T12:00:00Z"}' \
        "$1" "${3:-1}" "$2" "$(b64 12)" "$(b64 32)" "$(b64 16)"
}
import() { # IMAGE JSON [TOKEN_ID]: without plugins, so that malformed tokens can be written too
    printf '%s' "$2" >tok.json
    cryptsetup --disable-external-tokens token import ${3:+--token-id "$3"} --json-file tok.json "$1"
}
run() { # IMAGE -> $out, $rc
    rc=0
    out=$("$HELPER" --state-dir "$FAKE_STATE" "$1" 2>err) || rc=$?
}
expect_nothing() { # IMAGE WHY
    run "$1"
    [ "$rc" -eq 0 ] || fail "$2: exit status $rc"
    [ -z "$out" ] || fail "$2: printed properties: $out"
    log "ok: $2: nothing printed, exit 0"
}

fmt bound.img luks2
import bound.img "$(token '["0"]' cmek.key.Prod.abc123)"
register bound.img cmek.key.Prod.abc123
uuid=$(cryptsetup luksUUID bound.img)
t0=$(date +%s%N)
run bound.img
t1=$(date +%s%N)
[ "$rc" -eq 0 ] || fail "bound image: exit status $rc ($(cat err))"
printf '%s\n' "$out" | sed 's/^/    /' >&2
want="CMEK_BOUND=1
CMEK_UUID=$uuid
CMEK_NAME=cmek-$uuid
CMEK_KEY_ID=cmek.key.Prod.abc123
CMEK_KEY_VERSION=7
CMEK_VAULT=default
CMEK_TOKEN_ID=0
CMEK_KEYSLOT=0
CMEK_SYSTEMD_ALIAS=/dev/cmek/${uuid//-//}
CMEK_ATTACH=1"
[ "$out" = "$want" ] || fail "bound image: unexpected properties; expected:
$want"
log "ok: bound image: properties as expected ($(( (t1 - t0) / 1000000 )) ms)"

# the second cmek token is used when the first one is not understood (newer cmek_version)
fmt two.img luks2
import two.img "$(token '[]' cmek.key.Prod.gone 9)" 0
import two.img "$(token '["0"]' cmek.key.Prod.second)" 1
run two.img
assert_contains "$out" "CMEK_KEY_ID=cmek.key.Prod.second"
assert_contains "$out" "CMEK_TOKEN_ID=1"
log "ok: a token it does not understand is skipped for the next one"

# listed in crypttab (as UUID=): bound, but left to systemd-cryptsetup@.service
printf '# comment\nother /dev/sdz none\nvol UUID=%s none headless=true\n' "${uuid^^}" >crypttab
out=$(SYSTEMD_CRYPTTAB=$TEST_TMP/crypttab "$HELPER" --state-dir "$FAKE_STATE" bound.img)
assert_contains "$out" "CMEK_BOUND=1"
assert_contains "$out" "CMEK_CRYPTTAB=1"
assert_not_contains "$out" "CMEK_ATTACH"
assert_not_contains "$out" "CMEK_SYSTEMD_ALIAS"
log "ok: crypttab volume: CMEK_CRYPTTAB=1, no CMEK_ATTACH"

fmt plain.img luks2
expect_nothing plain.img "plain LUKS2 without a cmek token"
import plain.img '{"type":"other","keyslots":["0"]}'
expect_nothing plain.img "LUKS2 with another token type"
fmt bad.img luks2
import bad.img "$(token '["0"]' 'bad key id')"
expect_nothing bad.img "LUKS2 with a malformed cmek token"
grep -q 'token 0 ignored' err || fail "malformed token: no reason on stderr"
fmt removing.img luks2
import removing.img "$(token '[]' cmek.key.Prod.abc123)"
expect_nothing removing.img "cmek token without a keyslot (being removed)"
fmt luks1.img luks1
expect_nothing luks1.img "LUKS1"
head -c 4M /dev/urandom >garbage.img
expect_nothing garbage.img "random data"
: >empty.img
expect_nothing empty.img "empty file"
expect_nothing "$TEST_TMP/does-not-exist" "missing path"

rc=0; "$HELPER" >/dev/null 2>&1 || rc=$?
[ "$rc" -eq 2 ] || fail "no argument: exit status $rc, expected 2"

# --- hotplug attach only for what a real cmekd registered (issue 13, finding 8b)
need_cmd losetup python3
chmod 755 "$TEST_TMP"
printf 'allow group root to manage all-resources in tenancy\n' >policy
start_cmekd "" --policy "$TEST_TMP/policy"
cmekctl key create prod --compartment Prod >/dev/null
P=$(key_id Prod/prod)
cmekctl volume create "$TEST_TMP/reg.img" --key "$P" --size 32M --strict >/dev/null
RUUID=$(cryptsetup luksUUID reg.img)
attach_props() { # DEVICE [ENV...] -> $out, $err (helper against the real registry)
    local d=$1; shift
    rc=0
    out=$(env "$@" "$HELPER" --state-dir "$STATE" "$d" 2>err) || rc=$?
    [ "$rc" -eq 0 ] || fail "$d: exit status $rc ($(cat err))"
}
expect_attach() { # DEVICE WHAT [ENV...]
    local d=$1 what=$2; shift 2
    attach_props "$d" "$@"
    grep -qx CMEK_ATTACH=1 <<<"$out" || fail "$what: not marked for attach: $out"
    log "ok: $what: CMEK_ATTACH=1"
}
expect_refused() { # DEVICE WHY WHAT
    attach_props "$1"
    grep -qx "CMEK_BOUND=1" <<<"$out" || fail "$3: not even seen as bound: $out"
    if grep -q '^CMEK_ATTACH=\|^CMEK_SYSTEMD_ALIAS=' <<<"$out"; then fail "$3: marked for attach: $out"; fi
    grep -qx "CMEK_ATTACH_REFUSED=$2" <<<"$out" || fail "$3: no CMEK_ATTACH_REFUSED=$2: $out"
    grep -q "not attached: $2" err || fail "$3: the refusal is not logged: $(cat err)"
    log "ok: $3: refused ($2), logged"
}
expect_attach reg.img "the registered image"
# loop is called in $(...): the cleanup finds its devices by backing file, not in a variable
on_exit "losetup -a | grep -F '$TEST_TMP/' | cut -d: -f1 | while read -r l; do losetup -d \"\$l\"; done"
loop() { losetup --find --show --read-only "$1" || fail "losetup $1"; }
L=$(loop reg.img)
expect_attach "$L" "a loop device over the registered image"
attach_props "$L" CMEK_AUTOATTACH=0
grep -q '^CMEK_ATTACH=' <<<"$out" && fail "CMEK_AUTOATTACH=0 did not keep the registered device closed"
log "ok: CMEK_AUTOATTACH=0 keeps even the registered device closed"

# the attacker: a local user without any grant who can attach a device (udisks loop setup, a USB stick)
U=ckeudev
add_test_user "$U"
mkdir -p "$TEST_TMP/u"
chown "$U:$U" "$TEST_TMP/u"
printf '%s' "$(token '["0"]' "$P" 1)" >"$TEST_TMP/u/tok.json"
chmod 644 "$TEST_TMP/u/tok.json"
uimg() { # NAME [UUID]: the user formats his own image and imports a cmek token naming the Prod key
    as_user "$U" truncate -s 20M "$TEST_TMP/u/$1"
    printf pw | as_user "$U" cryptsetup luksFormat -q --disable-locks --type luks2 ${2:+--uuid "$2"} \
        --pbkdf pbkdf2 --pbkdf-force-iterations 1000 --key-file - "$TEST_TMP/u/$1" >/dev/null || fail "$U could not format $1"
    as_user "$U" cryptsetup --disable-locks --disable-external-tokens token import --json-file "$TEST_TMP/u/tok.json" \
        "$TEST_TMP/u/$1" || fail "$U could not import a token into $1"
}
uimg same-uuid.img "$RUUID"
uimg fresh.img
cp --sparse=always reg.img copy.img   # a snapshot or backup of the registered volume
sums() { sha256sum "$STATE/volumes.json" "$STATE/audit.log" reg.img copy.img "$TEST_TMP/u/same-uuid.img" "$TEST_TMP/u/fresh.img"; }
before=$(sums)
expect_refused "$TEST_TMP/u/same-uuid.img" other-device "a user's image carrying the registered UUID"
expect_refused copy.img other-device "a copy of the registered volume"
expect_refused "$TEST_TMP/u/fresh.img" unregistered "a user's image with a cmek token, UUID not registered"
expect_refused "$(loop "$TEST_TMP/u/same-uuid.img")" other-device "a loop device over the user's image with the registered UUID"
expect_refused "$(loop "$TEST_TMP/u/fresh.img")" unregistered "a loop device over the user's unregistered image"
expect_refused "$(loop copy.img)" other-device "a loop device over the copy"
# the opt-in of a local rule attaches it, and says so
expect_attach "$TEST_TMP/u/fresh.img" "CMEK_AUTOATTACH=1 (a rule's opt-in) on an unregistered device" CMEK_AUTOATTACH=1
grep -qx CMEK_ATTACH_OPTIN=unregistered <<<"$out" || fail "the opt-in is not recorded: $out"
grep -q "attached by opt-in" err || fail "the opt-in is not logged: $(cat err)"
# without cmekd's registry (not yet run, unreadable): nothing is attached
rc=0; out=$("$HELPER" --state-dir "$TEST_TMP/nonexistent" reg.img 2>err) || rc=$?
[ "$rc" -eq 0 ] && grep -qx CMEK_ATTACH_REFUSED=registry-unreadable <<<"$out" || fail "no registry: $out"
log "ok: without a readable registry nothing is attached"
[ "$(sums)" = "$before" ] || fail "the registry, the audit log or an image changed: $(diff <(echo "$before") <(sums))"
log "ok: registry, audit log and images byte-identical"
log "ok"
