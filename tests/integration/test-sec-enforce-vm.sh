#!/bin/bash
# SPDX-License-Identifier: LGPL-2.1-or-later
# Issue 13, finding 2 (enforcement bypass), on real dm-crypt: root opens a Prod volume; a local
# user with no grant formats his own image with the Prod volume's UUID, imports a cmek token
# naming another key and asks 'volume show' for it (which used to repoint the Prod registry entry
# at his file and his key id). Whatever the registry says afterwards (the test also repoints it
# by hand when the daemon refused, so the kernel-side lookup is what is tested), disabling the
# Prod key suspends the Prod mapping with an all-zero key field, found from the kernel: the
# mapping's dm UUID -> its backing device -> that device's LUKS2 header -> the key its token
# names. A mapping of another key is left alone. Then the same through the watch: the key
# disabled in the token only (pkcs11 usage flags), with no registry entry naming it.
# Runs directly where device-mapper works, else boots itself in tests/vm/vm-run.
: "${top_srcdir:=$(cd "$(dirname "$0")/../.." && pwd)}"
. "$top_srcdir/tests/lib.sh"
run_in_vm_unless_dm 300
need_root
need_cmd cryptsetup dmsetup python3 sha256sum base64
modprobe dm-crypt 2>/dev/null || true
modprobe loop 2>/dev/null || true
dm_works || skip "no device-mapper"
SETUSAGE=$top_builddir/tests/integration/p11-set-usage

is_suspended() { [ "$(dmsetup info -c --noheadings -o suspended "$1" 2>/dev/null)" = Suspended ]; }
key_field() { dmsetup table --showkeys "$1" | awk '{print $5}'; }
has_key_material() { # NAME: the table holds key hex digits or a keyring reference
    case "$(key_field "$1")" in *[1-9a-f]*|:*) return 0 ;; *) return 1 ;; esac
}
reg_entry() { # UUID FIELD: a field of the registry entry of that UUID
    python3 - "$STATE/volumes.json" "$1" "$2" <<'EOP'
import json, sys
for v in json.load(open(sys.argv[1])).get("volumes", []):
    if v.get("uuid") == sys.argv[2]:
        print(v.get(sys.argv[3]) or "")
EOP
}

chmod 755 "$TEST_TMP"
POLICY=$TEST_TMP/policy
printf 'allow group root to manage all-resources in tenancy\n' >"$POLICY"
chmod 644 "$POLICY"
CONF=$TEST_TMP/cmekd.conf
printf '[enforcement]\non-disable = suspend\nwatch-interval = 1\n' >"$CONF"
start_cmekd "" --policy "$POLICY" --config "$CONF"

cmekctl key create prod --compartment Prod >/dev/null
cmekctl key create other --compartment Prod >/dev/null
cmekctl key create devkey --compartment Dev >/dev/null
P=$(key_id Prod/prod); O=$(key_id Prod/other); D=$(key_id Dev/devkey)
I=$TEST_TMP/img
mkdir -p "$I"
N=cmeksec$$
for v in prod other; do
    on_exit "cryptsetup close --deferred $N-$v 2>/dev/null; dmsetup resume $N-$v 2>/dev/null; cryptsetup close $N-$v 2>/dev/null; dmsetup remove --force $N-$v 2>/dev/null"
done
cmekctl volume create "$I/prod.img" --key "$P" --size 32M --strict --name "$N-prod" >/dev/null
cmekctl volume create "$I/other.img" --key "$O" --size 32M --strict --name "$N-other" >/dev/null
for v in prod other; do
    [ -b "/dev/mapper/$N-$v" ] || fail "no /dev/mapper/$N-$v after create --name"
    has_key_material "$N-$v" || fail "no key in the table of $N-$v (the checks below would prove nothing)"
done
PUUID=$(cryptsetup luksUUID "$I/prod.img")
head -c 1048576 /dev/urandom >"$TEST_TMP/pattern"
dd if="$TEST_TMP/pattern" of="/dev/mapper/$N-prod" bs=1M count=1 oflag=direct status=none

# --- the attacker: a local user without any grant, his own image with the Prod volume's UUID
ATK=ckeatk
add_test_user "$ATK"
A=$TEST_TMP/atk
mkdir -p "$A"
chown "$ATK:$ATK" "$A"
b64() { head -c "$1" /dev/urandom | base64 -w0; }
printf '{"type":"cmek","keyslots":["0"],"cmek_version":1,"key_id":"%s","key_version":1,"vault":"default","alg":"AES-256-GCM","iv":"%s","ciphertext":"%s","tag":"%s","created":"2026-11-23T12:00:00Z"}' \
    "$D" "$(b64 12)" "$(b64 32)" "$(b64 16)" >"$A/tok.json"
chmod 644 "$A/tok.json"
as_user "$ATK" truncate -s 32M "$A/hijack.img"
printf pw | as_user "$ATK" cryptsetup luksFormat -q --disable-locks --type luks2 --uuid "$PUUID" \
    --pbkdf pbkdf2 --pbkdf-force-iterations 1000 --key-file - "$A/hijack.img" ||
    fail "the unprivileged user could not format his own image"
as_user "$ATK" cryptsetup --disable-locks --disable-external-tokens token import --json-file "$A/tok.json" "$A/hijack.img" ||
    fail "the unprivileged user could not import a token into his own image"
[ "$(cryptsetup luksUUID "$A/hijack.img")" = "$PUUID" ] || fail "the attacker's image does not carry the Prod UUID"

prod_sum=$(sha256sum <"$I/prod.img")
log "attack: '$ATK' (no grant) asks 'volume show' for his image that carries Prod's UUID"
rc=0
as_user_ctl "$ATK" volume show "$A/hijack.img" --json >"$TEST_TMP/atk.out" 2>"$TEST_TMP/atk.err" || rc=$?
[ $rc -ne 0 ] || fail "a caller without any grant was shown a volume: $(cat "$TEST_TMP/atk.out")"
[ "$(sha256sum <"$I/prod.img")" = "$prod_sum" ] || fail "the Prod image changed after the attacker's request"
path_now=$(reg_entry "$PUUID" path)
key_now=$(reg_entry "$PUUID" key_id)
if [ "$path_now" = "$I/prod.img" ] && [ "$key_now" = "$P" ]; then
    log "the daemon did not repoint the registry; repointing it by hand (a stale or tampered registry) so that only the kernel can tell"
    stop_cmekd
    python3 - "$STATE/volumes.json" "$PUUID" "$A/hijack.img" "$D" <<'EOP'
import json, sys
f, uuid, path, key = sys.argv[1:]
reg = json.load(open(f))
for v in reg["volumes"]:
    if v.get("uuid") == uuid:
        v["path"], v["key_id"] = path, key
        v.pop("mapping", None)
json.dump(reg, open(f, "w"))
EOP
    start_cmekd "$STATE" --policy "$POLICY" --config "$CONF"
    [ "$(reg_entry "$PUUID" path)" = "$A/hijack.img" ] || fail "could not repoint the registry"
else
    log "the attacker's request repointed the registry: path '$path_now', key '$key_now'"
fi
is_suspended "$N-prod" && fail "the Prod mapping is suspended before the key is disabled"
has_key_material "$N-prod" || fail "the Prod mapping lost its key before the key was disabled"

log "root disables the Prod key: its mapping is found from the kernel and locked"
cmekctl key disable "$P" >/dev/null
[ -b "/dev/mapper/$N-prod" ] || fail "the Prod mapping is gone: on-disable=suspend keeps it"
is_suspended "$N-prod" || fail "the Prod mapping is NOT suspended after its key was disabled (registry bypass)"
has_key_material "$N-prod" && fail "key material still in the table of the Prod mapping after its key was disabled"
log "ok: $N-prod suspended, its key field all zero"
grep -q "found from the kernel only" "$TEST_TMP/cmekd.log" || fail "the daemon did not log the kernel-side lock"
grep -q "mapping '$N-prod' on /dev/loop[0-9]* is not registered under this key" "$TEST_TMP/cmekd.log" ||
    fail "the daemon did not name the mapping and its backing device"
cmekctl --json audit show | python3 -c '
import json, sys
d = json.load(sys.stdin)
recs = d.get("records", d) if isinstance(d, dict) else d
ok = [r for r in recs if r.get("event") == "volume.locked" and r.get("volume") == sys.argv[1] and r.get("result") == "ok"
      and sys.argv[2] in json.dumps(r)]
sys.exit(0 if ok else 1)' "$PUUID" "$N-prod" || fail "no volume.locked ok audit record for the Prod volume naming $N-prod"
# the other key's mapping is not touched
is_suspended "$N-other" && fail "the mapping of another key was suspended"
has_key_material "$N-other" || fail "the mapping of another key lost its key"
log "ok: $N-other (key Prod/other) still active with its key"

# --- the watch: a key disabled in the token only (usage flags off with a PKCS#11 client), and no
# registry entry names it any more: the watch reads the keys from the headers of live mappings
[ -x "$SETUSAGE" ] || skip "needs $SETUSAGE (make check builds it)"
OUUID=$(cryptsetup luksUUID "$I/other.img")
stop_cmekd
python3 - "$STATE/volumes.json" "$OUUID" "$D" <<'EOP'
import json, sys
f, uuid, key = sys.argv[1:]
reg = json.load(open(f))
for v in reg["volumes"]:
    if v.get("uuid") == uuid:
        v["key_id"] = key
        v.pop("mapping", None)
json.dump(reg, open(f, "w"))
EOP
start_cmekd "$STATE" --policy "$POLICY" --config "$CONF"
PIN=$(sed -n 's/^user-pin=//p' "$STATE/pins")
SOFTHSM2_CONF=$STATE/softhsm2.conf "$SETUSAGE" /usr/lib/softhsm/libsofthsm2.so cmekd-default "$PIN" "cmek:$O:v1" off >/dev/null ||
    fail "p11-set-usage could not turn the usage flags of $O off"
for _ in $(seq 1 150); do is_suspended "$N-other" && break; sleep 0.2; done
is_suspended "$N-other" || fail "a key disabled in the token did not lock the mapping whose header names it (watch)"
has_key_material "$N-other" && fail "key material still in $N-other after the watch locked it"
log "ok: the watch locked $N-other, whose registry entry names another key"
log "PASS"
