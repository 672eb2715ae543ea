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
# Only the shipped units: cmekd is socket-activated by the first crypttab volume's token (its
# first start took 7-8 s under TCG; the plugin waits 30 s for a reply).
ln -sf ../cmekd.socket $sysd/sockets.target.wants/cmekd.socket
# The unit runs cmekd without --state-dir: it takes $STATE_DIRECTORY (/var/lib/cmekd) from
# StateDirectory=, whatever prefix the build was configured with.

# the broker's state (keys in its SoftHSM2 token, volume registry) made on the host
rm -rf /var/lib/cmekd
cp -a "$CMEK_VM_DIR/state" /var/lib/cmekd
chmod 0700 /var/lib/cmekd

# crypt.img and off.img are the VM's virtio disks (vm-run --drive): present at boot like real
# disks. hot.img and plain.img are for the hotplug test, which puts them on loop devices.
mkdir -p /var/lib/cmek-vmtest /mnt/cmek
cp --sparse=always "$CMEK_VM_DIR"/img/hot.img "$CMEK_VM_DIR"/img/plain.img /var/lib/cmek-vmtest/
# hotplug attaches only the device cmekd registered: hot.img is registered where the guest has it
sed -i "s|\"$CMEK_VM_DIR/img/hot.img\"|\"/var/lib/cmek-vmtest/hot.img\"|" /var/lib/cmekd/volumes.json
grep -q '"/var/lib/cmek-vmtest/hot.img"' /var/lib/cmekd/volumes.json || { echo "hot.img is not in the registry" >&2; exit 1; }

# crypttab: no key file, so systemd-cryptsetup tries the LUKS2 tokens (our plugin); headless:
# never prompt; nofail: a volume that stays closed does not hold up the boot
cat >/etc/crypttab <<TAB
cmekvol UUID=$CRYPT_UUID none headless=true,nofail
cmekoff UUID=$OFF_UUID none headless=true,nofail
TAB
# no nofail: local-fs.target waits for it, and cmekd must still be able to unlock it
echo "/dev/mapper/cmekvol /mnt/cmek ext4 defaults 0 2" >>/etc/fstab
# CMEK_VM_DEBUG=1: PID 1 logs at debug level (device unit state changes, job reasons)
if [ "${CMEK_VM_DEBUG:-0}" = 1 ]; then
    mkdir -p /etc/systemd/system.conf.d
    printf '[Manager]\nLogLevel=debug\n' >/etc/systemd/system.conf.d/cmek-vm-debug.conf
fi
say "crypttab:"; sed 's/^/    /' /etc/crypttab
say "PASS"
