#!/bin/bash
# SPDX-License-Identifier: LGPL-2.1-or-later
# vm-boot-hotplug.test, boot (a): the /etc/crypttab volume bound to an ENABLED key was attached
# during boot by systemd-cryptsetup through the cmek token plugin (no key file, headless), its
# ext4 mounted through /etc/fstab; udev marked it bound but left it to crypttab; key disable locks
# that mapping (cmekd did not open it) and volume restore brings it back.
. "$(dirname "$0")/guest-boot-lib.sh"
unit=systemd-cryptsetup@cmekvol.service

systemctl is-active --quiet cmekd.socket || fail "cmekd.socket is $(systemctl is-active cmekd.socket)"
cmekctl status >/dev/null || fail "cmekctl status does not answer"
say "cmekd.socket active, cmekctl status answers; cmekd.service: $(systemctl is-active cmekd.service)"

systemctl is-active --quiet "$unit" || { show_unit "$unit"; journalctl -b -o short-monotonic --no-pager |
    grep -E 'cmekvol|vda|by.x2duuid|udev' | tail -n 60 | sed 's/^/    boot: /'; fail "$unit is $(systemctl is-active "$unit")"; }
[ -b /dev/mapper/cmekvol ] || fail "/dev/mapper/cmekvol is missing"
say "$unit active: unlock took $(unit_span "$unit") ms (systemd-cryptsetup start to active)"
cryptsetup status cmekvol | sed 's/^/    /'
journalctl -b --no-pager -u "$unit" | grep -i 'token' | sed 's/^/    journal: /' || true

src=$(findmnt -n -o SOURCE,FSTYPE /mnt/cmek || true)
[ "$src" = "/dev/mapper/cmekvol ext4" ] || { show_unit mnt-cmek.mount; fail "/mnt/cmek: '$src', expected /dev/mapper/cmekvol ext4"; }
got=$(cat /mnt/cmek/hello.txt)
[ "$got" = "$HELLO" ] || fail "/mnt/cmek/hello.txt: '$got', expected '$HELLO'"
say "/mnt/cmek mounted from /dev/mapper/cmekvol (fstab), hello.txt reads back"

# the unlock went through cmekd: its audit log has the token plugin's unwrap for this volume
cmekctl --json audit show >/tmp/audit.json || fail "cmekctl audit show failed"
python3 - "$CRYPT_UUID" /tmp/audit.json <<'PY' || fail "no successful unwrap of $CRYPT_UUID in cmekd's audit log"
import json, sys
doc = json.load(open(sys.argv[2]))
recs = doc if isinstance(doc, list) else next((v for v in doc.values() if isinstance(v, list)), [])
hits = [r for r in recs if r.get("volume") == sys.argv[1] and r.get("event") == "key.used" and r.get("result") == "ok"]
for r in hits:
    print("    audit: %s %s %s %s" % (r.get("time"), r.get("event"), r.get("key_id"), r.get("detail")))
sys.exit(0 if hits else 1)
PY

# udev: bound, but owned by crypttab, so no cmek-attach@ for it
dev=$(readlink -f "/dev/disk/by-uuid/$CRYPT_UUID")
props=$(udevadm info -q property -n "$dev")
grep -qx CMEK_BOUND=1 <<<"$props" || fail "$dev: no CMEK_BOUND=1 in: $props"
grep -qx CMEK_CRYPTTAB=1 <<<"$props" || fail "$dev: no CMEK_CRYPTTAB=1"
grep -q '^CMEK_ATTACH=' <<<"$props" && fail "$dev: CMEK_ATTACH set for a crypttab volume"
st=$(systemctl is-active "cmek-attach@$CRYPT_UUID.service" || true)
[ "$st" = inactive ] || fail "cmek-attach@$CRYPT_UUID.service is '$st' for a crypttab volume"
say "$dev: CMEK_BOUND=1 CMEK_CRYPTTAB=1, no cmek-attach@ unit"

# cmekd did not open this mapping (systemd-cryptsetup did, through the plugin): key disable locks
# it all the same (found by device-mapper UUID), and volume restore brings it back
key=$(cmekctl --json volume show "$CRYPT_UUID" | python3 -c 'import json,sys; print(json.load(sys.stdin)["volume"]["key_id"])') ||
    fail "cmekctl volume show $CRYPT_UUID failed"
cmekctl key disable "$key" >/dev/null || fail "cmekctl key disable $key failed"
state=$(dmsetup info -c --noheadings -o suspended cmekvol)
kf=$(dmsetup table --showkeys cmekvol | awk '{print $5}')
# back first, so that a failure here does not leave the mounts of the guest hanging on held I/O
cmekctl key enable "$key" >/dev/null || fail "cmekctl key enable failed"
cmekctl volume restore "$CRYPT_UUID" >/dev/null || fail "cmekctl volume restore $CRYPT_UUID failed"
[ "$state" = Suspended ] || fail "cmekvol was not suspended after key disable (state: $state)"
case "$kf" in *[1-9a-f]*|:*) fail "cmekvol: key material still in the table after key disable" ;; esac
say "key disable: cmekvol (opened at boot by systemd-cryptsetup) was suspended, key field all zero"
[ "$(dmsetup info -c --noheadings -o suspended cmekvol)" != Suspended ] || fail "cmekvol still suspended after restore"
got=$(cat /mnt/cmek/hello.txt)
[ "$got" = "$HELLO" ] || fail "/mnt/cmek/hello.txt after restore: '$got'"
say "key enable + volume restore: cmekvol resumed, hello.txt reads back"
say "PASS"
