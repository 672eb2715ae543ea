#!/bin/bash
# systemd smoke test, meant for `vm-run --systemd`: the guest booted the
# host's systemd as PID 1.  Checks PID 1, overall state, udev.
#
# Exit: 0 pass, 77 skip (PID 1 is not systemd, e.g. run outside a VM on a
# machine without systemd), 1 fail.
set -euo pipefail

say()  { echo "systemd-smoke: $*"; }
fail() { echo "systemd-smoke: FAIL: $*" >&2; exit 1; }

pid1=$(cat /proc/1/comm)
if [ "$pid1" != systemd ]; then
  echo "systemd-smoke: SKIP: PID 1 is '$pid1', not systemd (use vm-run --systemd)"
  exit 77
fi
say "PID 1 is systemd ($(systemctl --version | head -n 1))"

# vm-run's runner already waited for the end of the boot; --wait makes the
# script correct on its own too.
state=$(systemctl is-system-running --wait || true)
say "system state: $state"
case $state in
  running) ;;
  degraded)
    echo "systemd-smoke: failed units:"
    systemctl --failed --no-pager --no-legend | sed 's/^/  /'
    fail "system is degraded (failed units above)" ;;
  *) fail "unexpected system state '$state'" ;;
esac

systemctl is-active --quiet systemd-udevd.service || fail "systemd-udevd is not active: $(systemctl is-active systemd-udevd.service || true)"
say "systemd-udevd is active"
systemctl is-active --quiet multi-user.target || fail "multi-user.target is not active"
say "multi-user.target is active"
say "PASS"
