#!/bin/bash
# SPDX-License-Identifier: LGPL-2.1-or-later
# cmek-udev-helper: CMEK_* properties for a LUKS2 image with a cmek token; nothing (exit 0) for
# everything else; crypttab volumes are not marked for hotplug attach.
. "${top_srcdir:-$(dirname "$0")/../..}/tests/lib.sh"
need_root
need_cmd cryptsetup base64
HELPER="$top_builddir/cmek-udev-helper"
[ -x "$HELPER" ] || fail "$HELPER not built"
cd "$TEST_TMP"

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
    out=$("$HELPER" "$1" 2>err) || rc=$?
}
expect_nothing() { # IMAGE WHY
    run "$1"
    [ "$rc" -eq 0 ] || fail "$2: exit status $rc"
    [ -z "$out" ] || fail "$2: printed properties: $out"
    log "ok: $2: nothing printed, exit 0"
}

fmt bound.img luks2
import bound.img "$(token '["0"]' cmek.key.Prod.abc123)"
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
out=$(SYSTEMD_CRYPTTAB=$TEST_TMP/crypttab "$HELPER" bound.img)
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
log "ok"
