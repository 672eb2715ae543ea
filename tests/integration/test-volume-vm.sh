#!/bin/bash
# SPDX-License-Identifier: LGPL-2.1-or-later
# Real dm-crypt: create, unlock, write, lock, unlock, read back through /dev/mapper. A key disable
# suspends the mapping with its key wiped (on-disable=suspend, the default: I/O held, not failed,
# resumed by 'volume restore'), or closes it (a key created with --on-disable close); enabling
# the key again reopens nothing. Runs directly where device-mapper works, else boots itself in
# tests/vm/vm-run.
: "${top_srcdir:=$(cd "$(dirname "$0")/../.." && pwd)}"
. "$top_srcdir/tests/lib.sh"
run_in_vm_unless_dm 240
need_root
need_cmd cryptsetup dmsetup socat python3
modprobe dm-crypt 2>/dev/null || true
modprobe loop 2>/dev/null || true
dm_works || skip "no device-mapper"

start_cmekd
I=$TEST_TMP/img
mkdir -p "$I"
cmekctl key create vm --compartment prod >/dev/null
K=$(key_id prod/vm)
NAME=cmekvm$$
on_exit "dmsetup remove --force $NAME 2>/dev/null"

cmekctl volume create "$I/a.img" --key "$K" --size 64M --strict >/dev/null
cmekctl volume unlock "$I/a.img" --name "$NAME" >/dev/null
[ -b "/dev/mapper/$NAME" ] || fail "no /dev/mapper/$NAME after unlock"
[ "$(cmekctl volume show "$I/a.img" --json | json_get "$(cat)" volume.mapped)" = true ] || fail "not reported mapped"
head -c 1048576 /dev/urandom > "$TEST_TMP/pattern"
dd if="$TEST_TMP/pattern" of="/dev/mapper/$NAME" bs=1M count=1 oflag=direct status=none
cmekctl volume lock "$I/a.img" >/dev/null
[ ! -e "/dev/mapper/$NAME" ] || fail "mapping still there after lock"
if grep -qF -f <(head -c 64 "$TEST_TMP/pattern" | od -An -tx1 | tr -d ' \n') <(od -An -tx1 "$I/a.img" | tr -d ' \n') 2>/dev/null; then
    fail "the pattern is on the image in clear"
fi
cmekctl volume unlock "$I/a.img" --name "$NAME" >/dev/null
dd if="/dev/mapper/$NAME" of="$TEST_TMP/back" bs=1M count=1 iflag=direct status=none
cmp "$TEST_TMP/pattern" "$TEST_TMP/back" || fail "data read back differs"

is_suspended() { [ "$(dmsetup info -c --noheadings -o suspended "$1" 2>/dev/null)" = Suspended ]; }
key_field() { dmsetup table --showkeys "$1" | awk '{print $5}'; }
has_key_material() { # NAME: the table holds key hex digits or a keyring reference
    case "$(key_field "$1")" in *[1-9a-f]*|:*) return 0 ;; *) return 1 ;; esac
}
has_key_material "$NAME" || fail "no key in the table of the active mapping (the check below would prove nothing)"

log "on-disable=suspend (the default): key disable suspends the mapping and wipes its key; I/O is held"
cmekctl key disable "$K" >/dev/null
[ -b "/dev/mapper/$NAME" ] || fail "the mapping is gone: on-disable=suspend must keep it"
is_suspended "$NAME" || fail "mapping not suspended after key disable"
has_key_material "$NAME" && fail "key material still in the table of the suspended mapping"
show=$(cmekctl volume show "$I/a.img" --json)
[ "$(json_get "$show" volume.lock)" = suspended ] || fail "not reported suspended: $show"
[ "$(json_get "$show" volume.availability)" = UNAVAILABLE ] || fail "not reported UNAVAILABLE: $show"
# a reader blocks (held, not failed) until the restore
dd if="/dev/mapper/$NAME" of="$TEST_TMP/held" bs=1M count=1 iflag=direct status=none &
READER=$!
sleep 1
kill -0 $READER 2>/dev/null || fail "a read from the suspended mapping was not held"
expect_exit "$EXIT_KEY_UNUSABLE" cmekctl volume unlock "$I/a.img" --name "${NAME}x"
expect_exit "$EXIT_KEY_UNUSABLE" cmekctl volume restore "$I/a.img"
cmekctl key enable "$K" >/dev/null
sleep 1
is_suspended "$NAME" || fail "mapping resumed by itself after key enable"
kill -0 $READER 2>/dev/null || fail "the held read ended before the restore"
cmekctl volume restore "$I/a.img" >/dev/null
is_suspended "$NAME" && fail "mapping still suspended after restore"
has_key_material "$NAME" || fail "no key in the table after restore"
wait $READER || fail "the held read failed after restore"
cmp "$TEST_TMP/pattern" "$TEST_TMP/held" || fail "the held read returned wrong data"
dd if="/dev/mapper/$NAME" of="$TEST_TMP/back" bs=1M count=1 iflag=direct status=none
cmp "$TEST_TMP/pattern" "$TEST_TMP/back" || fail "data read back differs after restore"
cmekctl volume lock "$I/a.img" >/dev/null

log "on-disable=close (per key): key disable closes the idle mapping; enable does not reopen it"
cmekctl key create vmclose --compartment prod --on-disable close >/dev/null
KC=$(key_id prod/vmclose)
on_exit "dmsetup remove --force ${NAME}c 2>/dev/null"
cmekctl volume create "$I/c.img" --key "$KC" --size 64M --strict >/dev/null
cmekctl volume unlock "$I/c.img" --name "${NAME}c" >/dev/null
dd if="$TEST_TMP/pattern" of="/dev/mapper/${NAME}c" bs=1M count=1 oflag=direct status=none
cmekctl key disable "$KC" >/dev/null
[ ! -e "/dev/mapper/${NAME}c" ] || fail "mapping still open after key disable under on-disable=close"
[ "$(cmekctl volume show "$I/c.img" --json | json_get "$(cat)" volume.lock)" = closed ] || fail "not reported closed"
expect_exit "$EXIT_KEY_UNUSABLE" cmekctl volume unlock "$I/c.img" --name "${NAME}c"
cmekctl key enable "$KC" >/dev/null
sleep 1
[ ! -e "/dev/mapper/${NAME}c" ] || fail "mapping reopened by itself"
cmekctl volume restore "$I/c.img" >/dev/null
[ -b "/dev/mapper/${NAME}c" ] || fail "restore did not reopen the mapping under its name"
dd if="/dev/mapper/${NAME}c" of="$TEST_TMP/back" bs=1M count=1 iflag=direct status=none
cmp "$TEST_TMP/pattern" "$TEST_TMP/back" || fail "data read back differs after re-enable and restore"
cmekctl volume lock "$I/c.img" >/dev/null
log "ok"
