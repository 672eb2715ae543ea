#!/bin/bash
# SPDX-License-Identifier: LGPL-2.1-or-later
# systemd accepts every unit we ship, and the service stays well sandboxed.
. "${top_srcdir:-$(dirname "$0")/../..}/tests/lib.sh"
need_cmd systemd-analyze

d=$TEST_TMP/units
mkdir -p "$d"
for u in "$top_srcdir"/systemd/*.socket "$top_srcdir"/systemd/*.service "$top_srcdir"/systemd/*.service.in \
         "$top_srcdir"/systemd/*.timer "$top_srcdir"/systemd/*.target; do
    [ -f "$u" ] || continue
    n=$(basename "$u" .in)
    sed -e "s|@sbindir@|$top_builddir|g" -e "s|@libexecdir@|$top_builddir|g" -e "s|@bindir@|$top_builddir|g" "$u" >"$d/$n"
done
# the crypttab drop-in, on the unit systemd-cryptsetup-generator writes for a crypttab line
gen=/lib/systemd/system-generators/systemd-cryptsetup-generator
if [ -x "$gen" ]; then
    mkdir -p "$d/systemd-cryptsetup@.service.d" "$TEST_TMP/gen"
    cp "$top_srcdir/systemd/cmekd-cryptsetup.conf" "$d/systemd-cryptsetup@.service.d/cmekd.conf"
    echo "vol UUID=11111111-2222-3333-4444-555555555555 none headless=true" >"$TEST_TMP/crypttab"
    SYSTEMD_CRYPTTAB="$TEST_TMP/crypttab" "$gen" "$TEST_TMP/gen" "$TEST_TMP/gen" "$TEST_TMP/gen"
    cp "$TEST_TMP/gen/systemd-cryptsetup@vol.service" "$d/"
fi
ls "$d"
(cd "$d" && find . -maxdepth 1 -type f -print0 | xargs -0 systemd-analyze verify --man=no) 2>&1 | tee "$TEST_TMP/verify"
[ -s "$TEST_TMP/verify" ] && fail "systemd-analyze verify complained"
if [ -x "$gen" ]; then
    (cd "$d" && SYSTEMD_LOG_LEVEL=debug systemd-analyze verify --man=no ./systemd-cryptsetup@vol.service) >"$TEST_TMP/dropin" 2>&1 || true
    grep -q 'DropIn Path: .*systemd-cryptsetup@.service.d/cmekd.conf' "$TEST_TMP/dropin" || fail "crypttab drop-in not loaded"
    grep -q 'After: cmekd.socket' "$TEST_TMP/dropin" || fail "crypttab units are not ordered after cmekd.socket"
fi

# exposure: keep the service at 2.5 or better (systemd-analyze security scale: lower is better)
systemd-analyze security --offline=yes "$d/cmekd.service" >"$TEST_TMP/security" 2>&1 || true
level=$(sed -n 's/.*Overall exposure level for cmekd.service: \([0-9.]*\).*/\1/p' "$TEST_TMP/security")
log "exposure level $level"
python3 -c "import sys; sys.exit(0 if float('$level') <= 2.5 else 1)" || { cat "$TEST_TMP/security" >&2; fail "exposure level $level > 2.5"; }
# issue 13: no device but block devices and the two control nodes, no module loading, bounded
# memory and tasks (systemd-analyze security does not score the last two)
grep -q '✓ DevicePolicy=\|✓ DeviceAllow=\|✗ DeviceAllow=.*device ACL with some special devices' "$TEST_TMP/security" ||
    fail "the service has no device ACL"
grep -q '✓ ProtectKernelModules=' "$TEST_TMP/security" || fail "the service may load kernel modules"
for k in 'DevicePolicy=closed' 'MemoryMax=' 'TasksMax='; do
    grep -q "^$k" "$d/cmekd.service" || fail "cmekd.service has no $k"
done
log "ok"
