#!/bin/bash
# dm-crypt / LUKS2 smoke test.
#
# Runs inside a vm-run guest (VM_GUEST=1) or directly on any root machine
# with a working device-mapper.  Creates a 64 MiB image in scratch space,
# LUKS2-formats it through a loop device, writes a known 1 MiB pattern
# through /dev/mapper/NAME, closes, reopens, reads it back and compares,
# then checks that the pattern never reached the raw image in clear.
#
# Exit: 0 pass, 77 skip (not root / no device-mapper), 1 fail.
set -euo pipefail

say()  { echo "dmcrypt-smoke: $*"; }
fail() { echo "dmcrypt-smoke: FAIL: $*" >&2; exit 1; }
skip() { echo "dmcrypt-smoke: SKIP: $*"; exit 77; }

[ "$(id -u)" -eq 0 ] || skip "needs root"
for t in cryptsetup losetup sha256sum grep dd; do
  command -v "$t" >/dev/null || fail "required tool '$t' not found (Debian: cryptsetup-bin, util-linux, coreutils)"
done
modprobe loop 2>/dev/null || true     # built in, already loaded or modprobe absent: losetup reports it
modprobe dm-crypt 2>/dev/null || true   # same; /dev/mapper/control is checked below
[ -e /dev/mapper/control ] || skip "no /dev/mapper/control (device-mapper unavailable; run it through tests/vm/vm-run)"

base=${VM_SCRATCH:-${TMPDIR:-/tmp}}
dir=$(mktemp -d "$base/dmcrypt-smoke.XXXXXX")
name=cmekd-smoke-$$
img=$dir/disk.img key=$dir/key pat=$dir/pattern loopdev=""

cleanup() {
  local rc=$?
  set +e
  [ -e "/dev/mapper/$name" ] && cryptsetup close "$name"
  [ -n "$loopdev" ] && losetup -d "$loopdev"
  rm -rf -- "$dir"
  exit "$rc"
}
trap cleanup EXIT

say "kernel $(uname -r), cryptsetup $(cryptsetup --version | awk '{print $2}'), scratch $dir"

truncate -s 64M "$img"
head -c 64 /dev/urandom >"$key"
chmod 600 "$key"
# 1 MiB of a recognisable, grep-able repeating string (16 bytes * 65536).
marker=CMEKD-PLAINTEXT!
printf -v kib '%64s' ''
kib=${kib// /$marker}                       # 64 * 16 = 1 KiB
for _ in $(seq 1024); do printf '%s' "$kib"; done >"$pat"
[ "$(stat -c %s "$pat")" = 1048576 ] || fail "could not build the 1 MiB pattern"
# Sanity check of the final plaintext probe: it must see the marker here.
[ "$(grep -c -a -F "$marker" "$pat" || true)" -ge 1 ] || fail "grep cannot find the marker in the clear pattern"
want=$(sha256sum <"$pat" | cut -d' ' -f1)

loopdev=$(losetup --find --show "$img") || fail "losetup could not attach $img"
say "loop device $loopdev"

cryptsetup luksFormat --batch-mode --type luks2 --pbkdf pbkdf2 --pbkdf-force-iterations 1000 \
  --key-file "$key" "$loopdev" || fail "luksFormat failed"
cryptsetup isLuks --type luks2 "$loopdev" || fail "$loopdev is not LUKS2 after luksFormat"

cryptsetup open --key-file "$key" "$loopdev" "$name" || fail "cryptsetup open failed"
[ -b "/dev/mapper/$name" ] || fail "/dev/mapper/$name did not appear"
dd if="$pat" of="/dev/mapper/$name" bs=1M count=1 oflag=direct conv=fsync status=none \
  || fail "write through /dev/mapper/$name failed"
cryptsetup close "$name" || fail "cryptsetup close failed"
say "wrote 1 MiB pattern (sha256 $want), closed"

cryptsetup open --key-file "$key" "$loopdev" "$name" || fail "cryptsetup reopen failed"
got=$(dd if="/dev/mapper/$name" bs=1M count=1 iflag=direct status=none | sha256sum | cut -d' ' -f1)
cryptsetup close "$name" || fail "cryptsetup close (2) failed"
[ "$got" = "$want" ] || fail "read-back mismatch after reopen: got $got, want $want"
say "reopened and read back identical data"

# A wrong key must not open the volume.
head -c 64 /dev/urandom >"$dir/wrong"
if cryptsetup open --test-passphrase --key-file "$dir/wrong" "$loopdev" 2>/dev/null; then
  fail "a wrong key opened the volume"
fi

losetup -d "$loopdev" || fail "losetup -d failed"
loopdev=""
sync
hits=$(grep -c -a -F "$marker" "$img" || true)
[ "$hits" = 0 ] || fail "plaintext marker found in the raw image ($hits matching lines): not encrypted?"
say "raw image contains no plaintext marker"
say "PASS"
