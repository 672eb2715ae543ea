#!/bin/bash
# SPDX-License-Identifier: LGPL-2.1-or-later
# What the token plugin (loaded as root by systemd-cryptsetup at boot) and the udev helper carry:
# only the client library (lib/libcmek-client.la): no audit writer, no fault points, no libsystemd.
# Reads the built files; needs no root and no daemon.
. "${top_srcdir:-$(dirname "$0")/../..}/tests/lib.sh"
need_cmd nm readelf ldd

PLUGIN="$top_builddir/tools/.libs/libcryptsetup-token-cmek.so"
HELPER="$top_builddir/cmek-udev-helper"
[ -f "$PLUGIN" ] || skip "plugin not built"
[ -f "$HELPER" ] || fail "$HELPER not built"
# daemon-only code, by the names it has in lib/cmek-audit.c and lib/cmek-fault.c
DAEMON_ONLY='cmek_audit_|cmek_fault|fault_point|fault_enabled|fault_hits|sd_journal|sd_event|sd_bus'

log "the plugin exports the token interface and nothing else"
exported=$(nm -D --defined-only "$PLUGIN" | awk '$2 ~ /^[TDBRVW]$/ {print $3}' | sed 's/@.*//' | sort)
want=$(printf '%s\n' cryptsetup_token_buffer_free cryptsetup_token_dump cryptsetup_token_open \
       cryptsetup_token_validate cryptsetup_token_version | sort)
[ "$exported" = "$want" ] || fail "plugin exports: $(echo $exported) (want: $(echo $want))"

for f in "$PLUGIN" "$HELPER"; do
    n=${f##*/}
    log "$n: no audit or fault-point symbols"
    nm "$f" >/dev/null 2>&1 || fail "$n: nm cannot read its symbol table (stripped?)"
    hits=$(nm "$f" | grep -E "$DAEMON_ONLY" || true)
    [ -z "$hits" ] || fail "$n carries daemon-only code: $(echo $hits)"
    hits=$(nm -D "$f" | grep -E "$DAEMON_ONLY" || true)
    [ -z "$hits" ] || fail "$n has dynamic daemon-only symbols: $(echo $hits)"

    log "$n: no libsystemd, neither needed directly nor loaded through another library"
    needed=$(readelf -d "$f" | sed -n 's/.*(NEEDED).*\[\(.*\)\]/\1/p')
    [ -n "$needed" ] || fail "$n: readelf shows no NEEDED entries"
    case " $(echo $needed) " in *" libsystemd.so"*) fail "$n needs libsystemd: $(echo $needed)";; esac
    ! ldd "$f" | grep -q 'libsystemd\.so' || fail "$n loads libsystemd: $(ldd "$f" | grep libsystemd)"
done
log "ok"
