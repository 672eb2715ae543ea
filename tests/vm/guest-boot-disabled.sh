#!/bin/bash
# SPDX-License-Identifier: LGPL-2.1-or-later
# vm-boot-hotplug.test, boot (b): the /etc/crypttab volume whose key was DISABLED before boot
# stays closed, the boot completed anyway (nofail), and the journal names the key and its state.
. "$(dirname "$0")/guest-boot-lib.sh"
unit=systemd-cryptsetup@cmekoff.service

say "system state after boot: $(systemctl is-system-running || true)"
[ ! -e /dev/mapper/cmekoff ] || fail "/dev/mapper/cmekoff exists: a volume with a DISABLED key was opened"
st=$(systemctl show -p ActiveState --value "$unit")
[ "$st" = failed ] || { show_unit "$unit"; fail "$unit is '$st', expected failed"; }
say "$unit failed after $(unit_span "$unit") ms; /dev/mapper/cmekoff absent"
systemctl is-active --quiet multi-user.target || fail "multi-user.target not reached"

j=$(journalctl -b --no-pager -u "$unit")
printf '%s\n' "$j" | sed 's/^/    journal: /'
grep -q -- "$KEY_B" <<<"$j" || fail "the journal of $unit does not name the key $KEY_B"
grep -q 'DISABLED' <<<"$j" || fail "the journal of $unit does not say the key is DISABLED"
state=$(cmekctl --json key show "$KEY_B" | sed -n 's/.*"state": *"\([A-Z_]*\)".*/\1/p' | head -n 1)
[ "$state" = DISABLED ] || fail "cmekctl key show $KEY_B: state '$state'"
say "journal names $KEY_B and DISABLED; cmekctl agrees"
say "PASS"
