#!/bin/bash
# SPDX-License-Identifier: LGPL-2.1-or-later
# Pre-boot script for vm-boot-hotplug.test (vm-run --systemd --pre-boot): runs chrooted in the
# guest's overlay root before systemd starts and installs what `make install` would, from the
# build tree, plus the test's state: cmekd's state dir and images prepared on the host,
# /etc/crypttab and /etc/fstab entries for the two virtio disks.
# Needs CMEK_VM_DIR (the host's preparation dir, with vm.env) in the environment.
set -euo pipefail
say() { echo "boot-preboot: $*"; }
fail() { echo "boot-preboot: FAIL: $*" >&2; exit 1; }
[ "${VM_RUN_MODE:-}" = preboot ] || fail "meant for vm-run --pre-boot (VM_RUN_MODE=${VM_RUN_MODE:-unset})"
# shellcheck source=/dev/null
. "${CMEK_VM_DIR:?}/vm.env"
B=$CMEK_VM_BUILDDIR S=$CMEK_VM_SRCDIR
sysd=/etc/systemd/system

# binaries where a default `make install` puts them; the token plugin where libcryptsetup looks
install -D -m 0755 "$B/cmekd" /usr/local/sbin/cmekd
install -D -m 0755 "$B/cmekctl" /usr/local/sbin/cmekctl
tokendir=$(cryptsetup --help | sed -n 's/^LUKS2 external token plugin path: *\(.*\)\.$/\1/p')
[ -n "$tokendir" ] || fail "cannot find libcryptsetup's token plugin directory"
install -D -m 0644 "$B/tools/.libs/libcryptsetup-token-cmek.so" "$tokendir/libcryptsetup-token-cmek.so"
# the generated rule names the helper by its installed path: install it there, rule unchanged
helper=$(sed -n 's/^IMPORT{program}="\([^ ]*\) .*/\1/p' "$B/udev/90-cmek.rules")
[ -n "$helper" ] || fail "no IMPORT{program} in $B/udev/90-cmek.rules"
install -D -m 0755 "$B/cmek-udev-helper" "$helper"
install -D -m 0644 "$B/udev/90-cmek.rules" /etc/udev/rules.d/90-cmek.rules
say "installed cmekd, cmekctl, $tokendir/libcryptsetup-token-cmek.so, $helper, 90-cmek.rules"

# units (/etc rather than /usr/local/lib: the same search path systemd uses for both)
sed -e 's|@sbindir[@]|/usr/local/sbin|g' "$S/systemd/cmekd.service.in" >$sysd/cmekd.service
cp "$S/systemd/cmekd.socket" "$S/systemd/cmek-attach@.service" $sysd/
mkdir -p "$sysd/systemd-cryptsetup@.service.d" $sysd/sockets.target.wants $sysd/sysinit.target.wants
cp "$S/systemd/cmekd-cryptsetup.conf" "$sysd/systemd-cryptsetup@.service.d/cmekd.conf"
install -D -m 0644 "$S/systemd/cmekd-tmpfiles.conf" /etc/tmpfiles.d/cmekd.conf
# Test-only: under TCG on a loaded host, socket-activating cmekd (PID 1 latency + its start)
# took 7-8 s, longer than the token plugin waits for a reply (5 s), and the boot volumes failed
# with "cmekd ... did not answer". Have cmekd up before the crypttab volumes try their tokens
# so that this test checks the units, not the emulator's speed. The shipped drop-in
# (cmekd-cryptsetup.conf, installed above and loaded too) orders them after cmekd.socket only.
printf '[Unit]\nWants=cmekd.service\nAfter=cmekd.service\n' >"$sysd/systemd-cryptsetup@.service.d/zz-vmtest.conf"
ln -sf ../cmekd.socket $sysd/sockets.target.wants/cmekd.socket
# The unit runs cmekd without --state-dir; a build configured with a prefix other than /usr
# looks under $prefix/var, which ProtectSystem=strict keeps read-only. Point it at the
# StateDirectory= the unit declares.
def=$(/usr/local/sbin/cmekd --help | sed -n 's/.*--state-dir DIR .*(default \(.*\))$/\1/p')
if [ "$def" != /var/lib/cmekd ]; then
    mkdir -p $sysd/cmekd.service.d
    printf '[Service]\nExecStart=\nExecStart=/usr/local/sbin/cmekd --state-dir /var/lib/cmekd\n' \
        >$sysd/cmekd.service.d/state-dir.conf
    say "NOTE: this cmekd's default state dir is '$def'; a drop-in passes --state-dir /var/lib/cmekd"
fi

# the broker's state (keys in its SoftHSM2 token, volume registry) made on the host
rm -rf /var/lib/cmekd
cp -a "$CMEK_VM_DIR/state" /var/lib/cmekd
chmod 0700 /var/lib/cmekd

# crypt.img and off.img are the VM's virtio disks (vm-run --drive): present at boot like real
# disks. hot.img and plain.img are for the hotplug test, which puts them on loop devices.
mkdir -p /var/lib/cmek-vmtest /mnt/cmek
cp --sparse=always "$CMEK_VM_DIR"/img/hot.img "$CMEK_VM_DIR"/img/plain.img /var/lib/cmek-vmtest/

# crypttab: no key file, so systemd-cryptsetup tries the LUKS2 tokens (our plugin); headless:
# never prompt; nofail: a volume that stays closed does not hold up the boot
cat >/etc/crypttab <<TAB
cmekvol UUID=$CRYPT_UUID none headless=true,nofail
cmekoff UUID=$OFF_UUID none headless=true,nofail
TAB
echo "/dev/mapper/cmekvol /mnt/cmek ext4 defaults,nofail 0 2" >>/etc/fstab
# CMEK_VM_DEBUG=1: PID 1 logs at debug level (device unit state changes, job reasons)
if [ "${CMEK_VM_DEBUG:-0}" = 1 ]; then
    mkdir -p /etc/systemd/system.conf.d
    printf '[Manager]\nLogLevel=debug\n' >/etc/systemd/system.conf.d/cmek-vm-debug.conf
fi
say "crypttab:"; sed 's/^/    /' /etc/crypttab
say "PASS"
