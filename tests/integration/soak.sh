#!/bin/bash
# SPDX-License-Identifier: LGPL-2.1-or-later
# Soak, run by hand (not in make check): a daemon under steady mixed load for SECONDS (default
# 3600); RSS and descriptors sampled every 30 s into $SOAK_OUT (default ./soak.csv).
#   top_srcdir=... top_builddir=... tests/integration/soak.sh [SECONDS]
. "${top_srcdir:-$(dirname "$0")/../..}/tests/lib.sh"
need_root
DURATION=${1:-3600}
OUT=${SOAK_OUT:-$PWD/soak.csv}
H="$top_srcdir/tests/integration/cmek-hostile.py"
chmod 755 "$TEST_TMP"
printf 'allow any-user to inspect keys in tenancy\nallow any-user to inspect vaults in tenancy\n' >"$TEST_TMP/policy"
chmod 644 "$TEST_TMP/policy"
start_cmekd "$TEST_TMP/state" --policy "$TEST_TMP/policy" --log-level info
cmekctl key create soak --compartment prod >/dev/null
K=$(cmekctl key show prod/soak --json | python3 -c 'import json,sys; d=json.load(sys.stdin); print(d.get("key", d)["id"])')
echo "elapsed_s,rss_kb,hwm_kb,fds,requests" >"$OUT"
t0=$(date +%s) n=0 next=0
while :; do
    now=$(($(date +%s) - t0))
    [ "$now" -lt "$DURATION" ] || break
    if [ "$now" -ge "$next" ]; then
        echo "$now,$(awk '/^VmRSS/{print $2}' /proc/$CMEKD_PID/status),$(awk '/^VmHWM/{print $2}' /proc/$CMEKD_PID/status),$(ls /proc/$CMEKD_PID/fd | wc -l),$n" >>"$OUT"
        next=$((next + 30))
    fi
    /usr/bin/python3 "$H" "$SOCK" load 500 32 "$K" >"$TEST_TMP/round.json" || { cat "$TEST_TMP/round.json"; fail "wrong answers"; }
    setpriv --reuid=nobody --regid=nogroup --clear-groups /usr/bin/python3 "$H" "$SOCK" load 200 16 "$K" >"$TEST_TMP/round.json" || { cat "$TEST_TMP/round.json"; fail "wrong answers (nobody)"; }
    n=$((n + 700))
    sleep 1
done
stop_cmekd || fail "cmekd did not stop cleanly"
log "ok: $n requests in $DURATION s; samples in $OUT"
