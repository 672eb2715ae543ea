#!/bin/bash
# SPDX-License-Identifier: LGPL-2.1-or-later
# The volume trust boundary (issue 13, findings 1, 2, 3, 4, 9, 8c, 14), replayed with real local
# users against a real daemon, SoftHSM2 token and LUKS2 images: a Dev-only operator (ckvdev: manage
# volumes + use keys in compartment Dev) and a user with no grant (ckvnone). Every attack must fail
# AND leave the registry, the images and the audit log's "ok" lines as they were.
. "${top_srcdir:-$(dirname "$0")/../..}/tests/lib.sh"
need_root
need_cmd cryptsetup socat python3 mkfifo sha256sum

add_test_user ckvdev
add_test_user ckvnone
chmod 755 "$TEST_TMP"
POLICY=$TEST_TMP/policy
cat >"$POLICY" <<'P'
allow user ckvdev to manage volumes in compartment Dev
allow user ckvdev to use keys in compartment Dev
P
printf 'backupvol UUID=0a0b0c0d-0000-4000-8000-000000000001 none luks\n' >"$TEST_TMP/crypttab"
CMEKD_TEST_CRYPTTAB=$TEST_TMP/crypttab start_cmekd "" --policy "$POLICY"
REG=$STATE/volumes.json
AUDIT=$STATE/audit.log

cmekctl key create prodkey --compartment Prod >/dev/null
cmekctl key create devkey --compartment Dev >/dev/null
PK=$(key_id Prod/prodkey)
DK=$(key_id Dev/devkey)

R=$TEST_TMP/root        # root's images: the operator can read, not write
P=$TEST_TMP/pub         # a directory everyone may write (like /tmp)
mkdir -p "$R" "$P"
chmod 755 "$R"
chmod 1777 "$P"

cmekctl volume create "$R/prod.img" --key "$PK" --size 16M >/dev/null
chmod 644 "$R/prod.img"
PROD_UUID=$(cryptsetup luksUUID "$R/prod.img")
[ -n "$PROD_UUID" ] || fail "no UUID"

grep -q '"result":"ok"' "$AUDIT" || fail "no \"ok\" line in $AUDIT: the audit checks below would be blind"
# snapshot: registry bytes, the sums of the given files, the count of "ok" audit lines
# (audit.* lines are the log's own bookkeeping, e.g. the once-a-second checkpoint: not counted)
snap() { { sha256sum "$REG"; for f; do sha256sum "$f"; done; grep '"result":"ok"' "$AUDIT" | grep -vc '"event":"audit\.' || true; } 2>&1; }
assert_unchanged() { # BEFORE WHAT FILES...
    local before=$1 what=$2; shift 2
    local after; after=$(snap "$@")
    [ "$before" = "$after" ] || { diff <(echo "$before") <(echo "$after") >&2 || true; fail "$what changed something"; }
}
# as USER: the reply of one raw Varlink call
raw_as() { local u=$1; shift; printf '%s\0' "$1" | as_user "$u" socat -t 5 - "UNIX-CONNECT:$SOCK" | tr -d '\0'; }

log "finding 1: a Dev operator binding his copy of a Prod volume to a Dev key is refused"
as_user ckvdev cp "$R/prod.img" "$P/copy.img"
before=$(snap "$R/prod.img" "$P/copy.img")
rc=0; as_user_ctl ckvdev volume bind "$P/copy.img" --key Dev/devkey >"$TEST_TMP/out" 2>&1 || rc=$?
[ $rc -ne 0 ] || fail "finding 1: the bind of a Prod copy to a Dev key succeeded"
assert_contains "$(cat "$TEST_TMP/out")" "PermissionDenied"
assert_unchanged "$before" "the refused bind" "$R/prod.img" "$P/copy.img"
# the registry still has the real path, and the Prod volume is still wrapped by the Prod key
[ "$(cmekctl volume show "$PROD_UUID" --json | python3 -c 'import json,sys; v=json.load(sys.stdin)["volume"]; print(v["path"], v["key_id"])')" = "$R/prod.img $PK" ] ||
    fail "finding 1: the Prod registry entry moved"
# and no DEK comes out through Unwrap for the operator
tok=$(cryptsetup token export --token-id 0 "$P/copy.img")
reply=$(raw_as ckvdev "{\"method\":\"io.cmek.Volume.Unwrap\",\"parameters\":{\"uuid\":\"$PROD_UUID\",\"token\":$tok}}")
assert_contains "$reply" "io.cmek.PermissionDenied"
assert_not_contains "$reply" '"secret"'
assert_unchanged "$before" "the refused unwrap" "$R/prod.img" "$P/copy.img"
# root, on the copy: refused too, naming where the volume is registered (never repointed)
rc=0; cmekctl volume bind "$P/copy.img" --key "$DK" >"$TEST_TMP/out" 2>&1 || rc=$?
[ $rc -ne 0 ] || fail "finding 1: root's bind of a copy repointed the registered volume"
assert_contains "$(cat "$TEST_TMP/out")" "$R/prod.img"
assert_unchanged "$before" "root's refused bind of a copy" "$R/prod.img" "$P/copy.img"

log "finding 2: a user with no grant planting the victim's UUID and a cmek token changes nothing"
as_user ckvnone truncate -s 20M "$P/evil.img"
printf pw | as_user ckvnone cryptsetup luksFormat -q --type luks2 --pbkdf pbkdf2 --pbkdf-force-iterations 1000 \
    --key-file - "$P/evil.img"
as_user ckvnone cryptsetup luksUUID -q --uuid "$PROD_UUID" "$P/evil.img"
printf '%s' "$tok" >"$TEST_TMP/tok.json"
chmod 644 "$TEST_TMP/tok.json"
as_user ckvnone cryptsetup token import --disable-external-tokens --json-file "$TEST_TMP/tok.json" "$P/evil.img"
[ "$(cryptsetup luksUUID "$P/evil.img")" = "$PROD_UUID" ] || fail "the planted UUID did not take"
before=$(snap "$R/prod.img" "$P/evil.img")
for verb in show "unlock --test" lock restore unbind rewrap; do
    rc=0
    # shellcheck disable=SC2086
    as_user_ctl ckvnone volume $verb "$P/evil.img" >"$TEST_TMP/out" 2>&1 || rc=$?
    [ $rc -ne 0 ] || fail "finding 2: 'volume $verb' of the planted image succeeded"
    assert_not_contains "$(cat "$TEST_TMP/out")" "$PROD_UUID"
    assert_not_contains "$(cat "$TEST_TMP/out")" "$PK"
done
# the same answer as for a path that does not exist (no oracle)
as_user_ctl ckvnone volume show "$P/evil.img" >"$TEST_TMP/a" 2>&1 || true
as_user_ctl ckvnone volume show "$P/nothing.img" >"$TEST_TMP/b" 2>&1 || true
[ "$(sed 's/evil/X/' "$TEST_TMP/a")" = "$(sed 's/nothing/X/' "$TEST_TMP/b")" ] ||
    fail "finding 2: 'exists' and 'does not exist' answer differently: $(cat "$TEST_TMP/a") / $(cat "$TEST_TMP/b")"
# the Dev operator (a grant elsewhere) gets nowhere with it either
rc=0; as_user_ctl ckvdev volume show "$P/evil.img" >"$TEST_TMP/out" 2>&1 || rc=$?
[ $rc -ne 0 ] || fail "finding 2: the Dev operator was shown the planted image"
assert_unchanged "$before" "the planted image" "$R/prod.img" "$P/evil.img"
# root asking about it is told where the volume really is, and nothing moves
rc=0; cmekctl volume show "$P/evil.img" >"$TEST_TMP/out" 2>&1 || rc=$?
[ $rc -ne 0 ] || fail "finding 2: root's show of the planted image repointed the registry"
assert_contains "$(cat "$TEST_TMP/out")" "$R/prod.img"
assert_unchanged "$before" "root's show of the planted image" "$R/prod.img" "$P/evil.img"
# unlock by UUID still opens the real image
cmekctl volume unlock --test "$PROD_UUID" --json >"$TEST_TMP/out"
[ "$(json_get "$(cat "$TEST_TMP/out")" volume.path)" = "$R/prod.img" ] || fail "finding 2: unlock by UUID went elsewhere"

log "a registered volume that really moved is taken at its new path (audited), by an authorized caller"
cmekctl volume create "$R/mv.img" --key "$PK" --size 16M >/dev/null
MV_UUID=$(cryptsetup luksUUID "$R/mv.img")
mv "$R/mv.img" "$R/moved.img"
as_user_ctl ckvdev volume show "$R/moved.img" >/dev/null 2>&1 && fail "the Dev operator took a Prod volume's rename"
cmekctl volume show "$R/moved.img" >/dev/null
[ "$(cmekctl volume show "$MV_UUID" --json | python3 -c 'import json,sys; print(json.load(sys.stdin)["volume"]["path"])')" = "$R/moved.img" ] ||
    fail "the renamed volume was not taken at its new path"
grep '"volume.moved"' "$AUDIT" | grep -q "$MV_UUID" || fail "the rename was not audited"

log "finding 3: create --force/--size reach only what the caller could write; never the state dir"
head -c 65536 /dev/urandom >"$R/victim.dat"
chmod 600 "$R/victim.dat"
mkdir -p "$TEST_TMP/rootonly"
chmod 755 "$TEST_TMP/rootonly"
before=$(snap "$R/victim.dat" "$R/prod.img")
expect_exit "$EXIT_PERMISSION" as_user_ctl ckvdev volume create "$R/victim.dat" --key Dev/devkey --force
assert_contains "$(cat "$TEST_TMP/err")" "you cannot write"
expect_exit "$EXIT_PERMISSION" as_user_ctl ckvdev volume create "$TEST_TMP/rootonly/new.img" --key Dev/devkey --size 16M
assert_contains "$(cat "$TEST_TMP/err")" "you cannot create"
[ ! -e "$TEST_TMP/rootonly/new.img" ] || fail "finding 3: a file was created in a root-only directory"
# a symbolic link in a public directory pointing at a root file changes nothing either
as_user ckvdev ln -s "$R/victim.dat" "$P/link.img"
expect_exit "$EXIT_PERMISSION" as_user_ctl ckvdev volume create "$P/link.img" --key Dev/devkey --force
# the state directory: not even root may put (or format) a volume there, by any name
tokfile=$(find "$STATE/softhsm" -type f -name '*.object' | head -1)
[ -n "$tokfile" ] || tokfile=$(find "$STATE/softhsm" -type f | head -1)
before_state=$(snap "$R/victim.dat" "$tokfile")
for target in "$tokfile" "$STATE/new.img"; do
    rc=0; cmekctl volume create "$target" --key Dev/devkey --force --size 16M >"$TEST_TMP/out" 2>&1 || rc=$?
    [ $rc -ne 0 ] || fail "finding 3: root formatted '$target' inside the state directory"
    assert_contains "$(cat "$TEST_TMP/out")" "inside cmekd's own directory"
    rc=0; as_user_ctl ckvdev volume create "$target" --key Dev/devkey --force --size 16M >/dev/null 2>&1 || rc=$?
    [ $rc -ne 0 ] || fail "finding 3: the operator formatted '$target'"
done
ln -s "$STATE" "$P/state-alias"
rc=0; cmekctl volume create "$P/state-alias/alias.img" --key Dev/devkey --size 16M >"$TEST_TMP/out" 2>&1 || rc=$?
[ $rc -ne 0 ] || fail "finding 3: root created an image in the state directory through a symbolic link"
[ ! -e "$STATE/new.img" ] && [ ! -e "$STATE/alias.img" ] || fail "finding 3: an image was left in the state directory"
assert_unchanged "$before_state" "creates into the state directory" "$R/victim.dat" "$tokfile"
assert_unchanged "$before" "the refused creates" "$R/victim.dat" "$R/prod.img"
# what the operator may write, he may format: the image is his
as_user ckvdev mkdir "$P/dev"
as_user_ctl ckvdev volume create "$P/dev/dev.img" --key Dev/devkey --size 16M >/dev/null
[ "$(stat -c %U "$P/dev/dev.img")" = ckvdev ] || fail "finding 3: the operator's new image is not his"
DEV_UUID=$(cryptsetup luksUUID "$P/dev/dev.img")

# a block device that is held (as a mount holds it) is not formatted over, even by root
if command -v losetup >/dev/null && truncate -s 16M "$R/loop.img" && LOOP=$(losetup -f --show "$R/loop.img" 2>/dev/null); then
    on_exit "losetup -d '$LOOP' 2>/dev/null"
    head -c 65536 /dev/urandom | dd of="$LOOP" conv=notrunc status=none
    python3 -c 'import os, sys, time; os.open(sys.argv[1], os.O_RDONLY | os.O_EXCL); print("held", flush=True); time.sleep(60)' "$LOOP" \
        >"$TEST_TMP/held" &
    HOLDER=$!
    on_exit "kill $HOLDER 2>/dev/null"
    for ((i = 0; i < 100; i++)); do grep -q held "$TEST_TMP/held" && break; sleep 0.05; done
    before=$(snap "$R/loop.img")
    rc=0; cmekctl volume create "$LOOP" --key Dev/devkey --force >"$TEST_TMP/out" 2>&1 || rc=$?
    [ $rc -ne 0 ] || fail "finding 3: create --force formatted a held block device"
    assert_contains "$(cat "$TEST_TMP/out")" "mounted or in use"
    expect_exit "$EXIT_PERMISSION" as_user_ctl ckvdev volume create "$LOOP" --key Dev/devkey --force
    assert_unchanged "$before" "create --force on a held block device" "$R/loop.img"
    kill "$HOLDER"; wait "$HOLDER" 2>/dev/null || true
    cmekctl volume create "$LOOP" --key Dev/devkey --force >/dev/null || fail "create --force on a free block device failed"
else
    log "(no loop device: the held block device case is not replayed)"
fi

log "finding 4: a FIFO is refused at once, and the daemon keeps answering"
as_user ckvnone mkfifo "$P/fifo"
for args in "volume show $P/fifo" "volume unlock --test $P/fifo" "volume bind $P/fifo --key Dev/devkey" \
            "volume create $P/fifo --key Dev/devkey --force"; do
    start=$(date +%s%N)
    # shellcheck disable=SC2086
    rc=0; timeout 5 "$CMEKCTL_BIN" --socket "$SOCK" $args >"$TEST_TMP/out" 2>&1 || rc=$?
    ms=$(( ($(date +%s%N) - start) / 1000000 ))
    [ $rc -ne 0 ] && [ $rc -ne 124 ] || fail "finding 4: '$args' (root) did not fail at once (exit $rc)"
    [ $ms -lt 1000 ] || fail "finding 4: '$args' took $ms ms"
    assert_contains "$(cat "$TEST_TMP/out")" "is a FIFO: give a block device or an image file"
    rc=0; timeout 5 as_user_ctl ckvnone $args >/dev/null 2>&1 || rc=$?
    [ $rc -ne 0 ] && [ $rc -ne 124 ] || fail "finding 4: '$args' (no grant) did not fail at once (exit $rc)"
    rc=0; timeout 5 as_user_ctl ckvdev $args >/dev/null 2>&1 || rc=$?
    [ $rc -ne 0 ] && [ $rc -ne 124 ] || fail "finding 4: '$args' (operator) did not fail at once (exit $rc)"
done
# a FIFO planted at a registered path (the operator's own image, replaced) does not block either
as_user_ctl ckvdev volume create "$P/dev/f.img" --key Dev/devkey --size 16M >/dev/null
F_UUID=$(cryptsetup luksUUID "$P/dev/f.img")
as_user ckvdev rm "$P/dev/f.img"
as_user ckvdev mkfifo "$P/dev/f.img"
for args in "volume unlock --test $F_UUID" "volume rewrap $F_UUID" "volume unbind $F_UUID"; do
    start=$(date +%s%N)
    # shellcheck disable=SC2086
    rc=0; timeout 5 "$CMEKCTL_BIN" --socket "$SOCK" $args >"$TEST_TMP/out" 2>&1 || rc=$?
    # (rewrap reports it unreachable and succeeds; the others fail)
    [ $rc -ne 124 ] || fail "finding 4: '$args' on a registered path now a FIFO timed out"
    # (a blocked loop never answers: timeout 5 above; these also save the registry, so allow for a
    # loaded machine's fsync)
    ms=$(( ($(date +%s%N) - start) / 1000000 ))
    [ $ms -lt 3000 ] || fail "finding 4: '$args' took $ms ms on a FIFO"
done
start=$(date +%s%N)
timeout 1 "$CMEKCTL_BIN" --socket "$SOCK" status >/dev/null || fail "finding 4: status does not answer after the FIFOs"
[ $(( ($(date +%s%N) - start) / 1000000 )) -lt 1000 ] || fail "finding 4: status slow"

log "finding 9: a header with a huge Argon2 cost is refused before anything is derived"
as_user ckvdev truncate -s 20M "$P/dev/kdf.img"
printf pw | as_user ckvdev cryptsetup luksFormat -q --type luks2 --pbkdf pbkdf2 --pbkdf-force-iterations 1000 \
    --key-file - "$P/dev/kdf.img"
# rewrite keyslot 0's KDF as Argon2id, 4 GiB, 4 threads, 1000 passes (both header copies, checksums fixed)
python3 - "$P/dev/kdf.img" <<'PY'
import hashlib, json, struct, sys
path = sys.argv[1]
with open(path, "r+b") as f:
    hdr_size = struct.unpack(">Q", f.read(16)[8:16])[0]
    for off in (0, hdr_size):
        f.seek(off); h = bytearray(f.read(hdr_size))
        js = json.loads(bytes(h[4096:]).rstrip(b"\0"))
        js["keyslots"]["0"]["kdf"] = {"type": "argon2id", "time": 1000, "memory": 4194304, "cpus": 4,
                                      "salt": js["keyslots"]["0"]["kdf"]["salt"]}
        body = json.dumps(js).encode()
        h[4096:] = body + b"\0" * (hdr_size - 4096 - len(body))
        h[448:512] = b"\0" * 64
        h[448:480] = hashlib.sha256(bytes(h)).digest()
        f.seek(off); f.write(h)
PY
cryptsetup luksDump "$P/dev/kdf.img" | grep -q "argon2id" || fail "the crafted header does not load"
before=$(snap "$P/dev/kdf.img")
start=$(date +%s%N)
rc=0; printf pw | as_user_ctl ckvdev volume bind "$P/dev/kdf.img" --key Dev/devkey --unlock-passphrase-stdin \
    >"$TEST_TMP/out" 2>&1 || rc=$?
ms=$(( ($(date +%s%N) - start) / 1000000 ))
[ $rc -ne 0 ] || fail "finding 9: bind derived from a 4 GiB Argon2 keyslot"
assert_contains "$(cat "$TEST_TMP/out")" "PBKDF costlier than cmekd runs"
[ $ms -lt 1000 ] || fail "finding 9: the refusal took $ms ms"
assert_unchanged "$before" "the refused bind of a costly header" "$P/dev/kdf.img"
# a keyslot that is not there, or the CMEK one, is refused too; a sane keyslot still binds
printf pw | expect_exit "$EXIT_USAGE" as_user_ctl ckvdev volume bind "$P/dev/kdf.img" --key Dev/devkey --unlock-passphrase-stdin --unlock-keyslot 7
as_user ckvdev truncate -s 20M "$P/dev/ok.img"
printf pw | as_user ckvdev cryptsetup luksFormat -q --type luks2 --pbkdf pbkdf2 --pbkdf-force-iterations 1000 \
    --key-file - "$P/dev/ok.img"
printf pw >"$TEST_TMP/pw.key"
chmod 644 "$TEST_TMP/pw.key"
printf pw2 | as_user ckvdev cryptsetup luksAddKey -q --pbkdf pbkdf2 --pbkdf-force-iterations 1000 \
    --key-file "$TEST_TMP/pw.key" "$P/dev/ok.img" -
printf pw2 | expect_exit "$EXIT_USAGE" as_user_ctl ckvdev volume bind "$P/dev/ok.img" --key Dev/devkey --unlock-passphrase-stdin
printf pw2 | as_user_ctl ckvdev volume bind "$P/dev/ok.img" --key Dev/devkey --unlock-passphrase-stdin --unlock-keyslot 1 >/dev/null

log "8c/14: mapping names"
expect_exit "$EXIT_PERMISSION" as_user_ctl ckvdev volume unlock --test "$DEV_UUID" --name mything
assert_contains "$(cat "$TEST_TMP/err")" "manage volumes in tenancy"
as_user_ctl ckvdev volume unlock --test "$DEV_UUID" --name "cmek-$DEV_UUID" >/dev/null
expect_exit "$EXIT_FAILURE" cmekctl volume unlock --test "$DEV_UUID" --name backupvol
assert_contains "$(cat "$TEST_TMP/err")" "/etc/crypttab"
cmekctl volume unlock --test "$DEV_UUID" --name freename >/dev/null
# identifiers: a mapping named like another volume's UUID never shadows it
stop_cmekd
OK_UUID=$(cryptsetup luksUUID "$P/dev/ok.img")
python3 - "$REG" "$PROD_UUID" "$DEV_UUID" "$OK_UUID" <<'PY'
import json, sys
reg, prod, dev, ok = sys.argv[1:]
d = json.load(open(reg))
d["volumes"] = [v for v in d["volumes"] if v["uuid"] != ok]   # a lost registry entry
vols = d["volumes"]
vols.sort(key=lambda v: v["uuid"] != dev)      # the Dev volume first
for v in vols:
    if v["uuid"] == dev:
        v["mapping"] = prod                   # named like the Prod volume's UUID
json.dump(d, open(reg, "w"))
PY
CMEKD_TEST_CRYPTTAB=$TEST_TMP/crypttab start_cmekd "$STATE" --policy "$POLICY"
[ "$(cmekctl volume show "$PROD_UUID" --json | python3 -c 'import json,sys; print(json.load(sys.stdin)["volume"]["uuid"])')" = "$PROD_UUID" ] ||
    fail "14: a mapping named like the Prod UUID shadows the Prod volume"

log "adoption into the registry: only by a caller allowed to manage the volume, audited"
before=$(snap "$P/dev/ok.img")
rc=0; as_user_ctl ckvnone volume show "$P/dev/ok.img" >/dev/null 2>&1 || rc=$?
[ $rc -ne 0 ] || fail "a user with no grant was shown an unregistered volume"
assert_unchanged "$before" "the refused show of an unregistered volume" "$P/dev/ok.img"
grep '"volume.adopted"' "$AUDIT" | grep -q "$OK_UUID" && fail "adopted for a user with no grant"
as_user_ctl ckvdev volume show "$P/dev/ok.img" >/dev/null
grep '"volume.adopted"' "$AUDIT" | grep "$OK_UUID" | grep -q '"result":"ok"' || fail "the adoption was not audited"
cmekctl volume show "$OK_UUID" >/dev/null || fail "the adopted volume is not registered"
log "ok"
