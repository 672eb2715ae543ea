#!/bin/bash
# SPDX-License-Identifier: LGPL-2.1-or-later
# Real dm-crypt: create, unlock, write, lock, unlock, read back through /dev/mapper; a key disable
# closes the mapping. Runs directly where device-mapper works, else boots itself in tests/vm/vm-run.
: "${top_srcdir:=$(cd "$(dirname "$0")/../.." && pwd)}"
dm_works() { dmsetup targets >/dev/null 2>&1; }
if [ -z "${VM_GUEST:-}" ] && [ -z "${CMEK_IN_VM:-}" ] && ! dm_works; then
    [ "$(id -u)" -eq 0 ] || { echo "SKIP: needs root"; exit 77; }
    command -v qemu-system-x86_64 >/dev/null || { echo "SKIP: no device-mapper and no qemu"; exit 77; }
    export CMEK_IN_VM=1 top_builddir top_srcdir
    exec "$top_srcdir/tests/vm/vm-run" --timeout 240 --env top_builddir --env top_srcdir --env CMEK_IN_VM "$(readlink -f "$0")"
fi
. "$top_srcdir/tests/lib.sh"
need_root
need_cmd cryptsetup socat python3
modprobe dm-crypt 2>/dev/null || true
modprobe loop 2>/dev/null || true
dm_works || skip "no device-mapper"

start_cmekd
I=$TEST_TMP/img
mkdir -p "$I"
key_id() { cmekctl key show "$1" --json | python3 -c 'import json,sys; d=json.load(sys.stdin); print(d.get("key", d)["id"])'; }
cmekctl key create vm --compartment prod >/dev/null
K=$(key_id prod/vm)
NAME=cmekvm$$
on_exit "cryptsetup close $NAME 2>/dev/null"

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

log "key disable closes the mapping; enable does not reopen it"
cmekctl key disable "$K" >/dev/null
[ ! -e "/dev/mapper/$NAME" ] || fail "mapping still open after key disable"
expect_exit 6 cmekctl volume unlock "$I/a.img" --name "$NAME"
cmekctl key enable "$K" >/dev/null
[ ! -e "/dev/mapper/$NAME" ] || fail "mapping reopened by itself"
cmekctl volume unlock "$I/a.img" --name "$NAME" >/dev/null
dd if="/dev/mapper/$NAME" of="$TEST_TMP/back" bs=1M count=1 iflag=direct status=none
cmp "$TEST_TMP/pattern" "$TEST_TMP/back" || fail "data read back differs after re-enable"
cmekctl volume lock "$I/a.img" >/dev/null
log "ok"
