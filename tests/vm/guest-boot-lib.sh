# SPDX-License-Identifier: LGPL-2.1-or-later
# Sourced by the guest-boot-*.sh / guest-hotplug.sh scripts of vm-boot-hotplug.test.
# shellcheck shell=bash
set -euo pipefail
NAME=$(basename "$0" .sh)
say()  { echo "$NAME: $*"; }
fail() { echo "$NAME: FAIL: $*" >&2; exit 1; }
skip() { echo "$NAME: SKIP: $*"; exit 77; }
[ "$(cat /proc/1/comm)" = systemd ] || skip "PID 1 is not systemd (use vm-run --systemd)"
# shellcheck source=/dev/null
. "${CMEK_VM_DIR:?CMEK_VM_DIR not set}/vm.env"
export PATH=/usr/local/sbin:$PATH
ms() { echo $(( $(date +%s%N) / 1000000 )); }
# wait_for SECONDS CMD...: poll CMD every 0.1 s until it succeeds, for at most SECONDS
wait_for() {
    local end=$(( $(date +%s) + $1 )); shift
    until "$@"; do
        [ "$(date +%s)" -lt "$end" ] || return 1
        sleep 0.1
    done
}
# unit_span UNIT: ms from "activating" to "active" (or to its failure)
unit_span() {
    local a b
    a=$(systemctl show -p InactiveExitTimestampMonotonic --value "$1")
    b=$(systemctl show -p ActiveEnterTimestampMonotonic --value "$1")
    [ "$b" = 0 ] && b=$(systemctl show -p InactiveEnterTimestampMonotonic --value "$1")
    echo $(( (b - a) / 1000 ))
}
show_unit() { systemctl status --no-pager "$1" 2>&1 | sed 's/^/    /' || true; journalctl -b --no-pager -u "$1" | tail -n 30 | sed 's/^/    /'; }
