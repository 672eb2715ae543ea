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
ls "$d"
(cd "$d" && systemd-analyze verify --man=no ./*) 2>&1 | tee "$TEST_TMP/verify"
[ -s "$TEST_TMP/verify" ] && fail "systemd-analyze verify complained"

# exposure: keep the service at "OK" or better (systemd-analyze security scale: lower is better)
level=$(systemd-analyze security --offline=yes "$d/cmekd.service" 2>/dev/null | sed -n 's/.*Overall exposure level for cmekd.service: \([0-9.]*\).*/\1/p')
log "exposure level $level"
python3 -c "import sys; sys.exit(0 if float('$level') <= 3.0 else 1)" || fail "exposure level $level > 3.0"
log "ok"
