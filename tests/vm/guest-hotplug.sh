#!/bin/bash
# SPDX-License-Identifier: LGPL-2.1-or-later
# vm-boot-hotplug.test, hotplug (c): in the running system, a loop device over a bound image makes
# udev pull in cmek-attach@<UUID>.service and /dev/mapper/cmek-<UUID> appears without a command;
# a plain LUKS2 image is left alone; the mapping itself triggers nothing; when the device goes
# away the unit stops and the mapping is closed. A copy of the registered image on another loop
# device is not attached (only the device cmekd registered is).
. "$(dirname "$0")/guest-boot-lib.sh"
map=/dev/mapper/cmek-$HOT_UUID
unit=cmek-attach@$HOT_UUID.service
n_attach() { systemctl list-units --all --plain --no-legend 'cmek-attach@*' | grep -c . || true; }

# --- a bound volume appears
t0=$(ms)
dev=$(losetup --find --show /var/lib/cmek-vmtest/hot.img)
udevadm settle --timeout=60
wait_for 60 test -b "$map" || { show_unit "$unit"; fail "$map did not appear within 60 s of losetup $dev"; }
t1=$(ms)
say "losetup $dev -> $map in $((t1 - t0)) ms, no command run"
systemctl is-active --quiet "$unit" || { show_unit "$unit"; fail "$unit is not active"; }
say "$unit active (its unlock took $(unit_span "$unit") ms)"
props=$(udevadm info -q property -n "$dev")
for p in CMEK_BOUND=1 "CMEK_UUID=$HOT_UUID" "CMEK_NAME=cmek-$HOT_UUID" "CMEK_KEY_ID=$KEY_A" CMEK_ATTACH=1; do
    grep -qx -- "$p" <<<"$props" || fail "$dev: no $p in udev properties"
done
say "$dev udev properties: $(grep '^CMEK_' <<<"$props" | tr '\n' ' ')"
cryptsetup status "cmek-$HOT_UUID" | grep -q "device:  *$dev" || fail "$map is not on $dev"

# --- no loop: the mapping's own block device is not treated as a volume
dmdev=$(readlink -f "$map")
if udevadm info -q property -n "$dmdev" | grep -q '^CMEK_'; then fail "$dmdev ($map) got CMEK_ properties"; fi
[ "$(n_attach)" = 1 ] || { systemctl list-units --all --no-pager 'cmek-attach@*'; fail "expected exactly one cmek-attach@ unit"; }
say "$dmdev has no CMEK_ properties; one cmek-attach@ unit"

# --- a plain LUKS2 image (no cmek token) is left alone
maps_before=$(ls /dev/mapper | sort)
pdev=$(losetup --find --show /var/lib/cmek-vmtest/plain.img)
udevadm settle --timeout=60
# PID 1 has seen the device once its unit is plugged: any SYSTEMD_WANTS would be queued by then
pdevunit=$(systemd-escape --path --suffix=device "$pdev")
wait_for 30 systemctl is-active --quiet "$pdevunit" || fail "$pdevunit did not become active"
pprops=$(udevadm info -q property -n "$pdev")
grep -qx ID_FS_TYPE=crypto_LUKS <<<"$pprops" || fail "$pdev: udev did not see LUKS (blkid)"
if grep -q '^CMEK_' <<<"$pprops"; then fail "$pdev (plain LUKS2) got CMEK_ properties"; fi
systemctl list-jobs --no-legend | grep -q 'cmek-attach@' && fail "a cmek-attach@ job is queued for the plain image"
[ "$(n_attach)" = 1 ] || fail "a cmek-attach@ unit appeared for the plain image"
[ "$(ls /dev/mapper | sort)" = "$maps_before" ] || fail "a mapping appeared for the plain image: $(ls /dev/mapper)"
say "$pdev (plain LUKS2 $PLAIN_UUID): no CMEK_ properties, no attach unit, no mapping"
losetup -d "$pdev"

# --- the device goes away: BindsTo= stops the unit, ExecStop= closes the mapping.
# (A busy loop device cannot really vanish; the kernel's "remove" uevent for it is what a real
# unplug sends to udev and systemd.)
t0=$(ms)
udevadm trigger --action=remove "$dev"
udevadm settle --timeout=60
wait_for 60 test ! -e "$map" || { show_unit "$unit"; fail "$map still exists 60 s after the device was removed"; }
t1=$(ms)
unit_inactive() { [ "$(systemctl is-active "$unit")" = inactive ]; }
wait_for 30 unit_inactive || { show_unit "$unit"; fail "$unit is '$(systemctl is-active "$unit")' 30 s after removal"; }
say "remove uevent for $dev -> $unit stopped, $map closed in $((t1 - t0)) ms"
losetup -d "$dev"

# --- a copy of the registered volume (same UUID, same token: a snapshot, a stick made to look
# like it) on another device is not attached: cmekd registered hot.img, not the copy (issue 13, 8b)
cp --sparse=always /var/lib/cmek-vmtest/hot.img /var/lib/cmek-vmtest/hot-copy.img
cdev=$(losetup --find --show /var/lib/cmek-vmtest/hot-copy.img)
udevadm settle --timeout=60
cdevunit=$(systemd-escape --path --suffix=device "$cdev")
wait_for 30 systemctl is-active --quiet "$cdevunit" || fail "$cdevunit did not become active"
cprops=$(udevadm info -q property -n "$cdev")
grep -qx CMEK_BOUND=1 <<<"$cprops" || fail "$cdev (copy of hot.img): not seen as bound: $(grep '^CMEK_' <<<"$cprops" | tr '\n' ' ')"
grep -qx CMEK_ATTACH_REFUSED=other-device <<<"$cprops" || fail "$cdev (copy of hot.img): no CMEK_ATTACH_REFUSED=other-device"
if grep -q '^CMEK_ATTACH=' <<<"$cprops"; then fail "$cdev (copy of hot.img) is marked for attach"; fi
sleep 2
systemctl list-jobs --no-legend | grep -q 'cmek-attach@' && fail "a cmek-attach@ job is queued for the copy"
[ "$(systemctl is-active "$unit")" != active ] || fail "$unit was started for the copy"
[ ! -e "$map" ] || fail "$map appeared for the copy"
journalctl -b --no-pager -t cmek-udev-helper | grep -q "not attached: other-device" || fail "the refusal is not in the journal"
say "$cdev (a copy of hot.img, same UUID and token): CMEK_ATTACH_REFUSED=other-device, logged, no attach unit, no mapping"
losetup -d "$cdev"
say "PASS"
