#!/bin/bash
# SPDX-License-Identifier: LGPL-2.1-or-later
# bench/run item 4, revocation latency: runs where device-mapper works (inside tests/vm/vm-run's
# VM, or directly on such a host). A standalone cmekd on its own state dir; for each on-disable
# mode (restart with [enforcement] on-disable = MODE) and each N: N mappings of one key opened by
# cmekd (volume unlock), then R rounds of: t0 just before `cmekctl key disable` starts; an
# observer already running polls device-mapper every ~1 ms until the last of the N mappings is
# suspended with an all-zero key field (suspend) or gone (close); the time cmekctl returned; the
# daemon's own figures from its log; then key enable and `volume restore --key` (timed too) for
# the next round. Method: bench/METHOD.md.
#
# One line per measurement on stdout: "BENCH-REVOKE {json}" (also appended to $BENCH_REVOKE_OUT
# if set; the daemon's log is copied next to it). Environment:
#   BENCH_CMEKD, BENCH_CMEKCTL   the binaries (required)
#   BENCH_ROUNDS (5), BENCH_NS ("1 10 50"), BENCH_MODES ("suspend close"), BENCH_REVOKE_OUT,
#   BENCH_POLL_MS (1: the observer's pause between two polls)
# Exit 77 without device-mapper, 1 when a round fails (the lines before it stand).
set -uo pipefail
PREFIX=BENCH-REVOKE
: "${BENCH_ROUNDS:=5}" "${BENCH_NS:=1 10 50}" "${BENCH_MODES:=suspend close}" "${BENCH_REVOKE_OUT:=}" "${BENCH_POLL_MS:=1}"
CMEKD=${BENCH_CMEKD:?BENCH_CMEKD not set} CMEKCTL=${BENCH_CMEKCTL:?BENCH_CMEKCTL not set}
LIMIT_MS=60000   # a round that has not locked everything by then failed

say() { printf '[revoke %s] %s\n' "$(date +%T)" "$*" >&2; }
die() { say "FAILED: $*"; emit "{\"error\":$(jstr "$*")}"; exit 1; }
jstr() { python3 -c 'import json,sys; print(json.dumps(sys.argv[1]))' "$1"; }
emit() {
    printf '%s %s\n' "$PREFIX" "$1"
    [ -z "$BENCH_REVOKE_OUT" ] || printf '%s %s\n' "$PREFIX" "$1" >>"$BENCH_REVOKE_OUT"
}
skip() { echo "SKIP: $*"; emit "{\"skip\":\"$*\"}"; exit 77; }
[ "$(id -u)" -eq 0 ] || skip "needs root"
modprobe dm-crypt 2>/dev/null || true
modprobe loop 2>/dev/null || true
for c in cryptsetup dmsetup python3; do command -v $c >/dev/null || skip "needs $c"; done
dmsetup targets >/dev/null 2>&1 || skip "no device-mapper"
NS=($BENCH_NS)
MAXN=0; for n in "${NS[@]}"; do [ "$n" -gt $MAXN ] && MAXN=$n; done

W=$(mktemp -d "${VM_SCRATCH:-/tmp}/cmek-revoke.XXXXXX")
ST=$W/state SOCK=$W/cmekd.socket LOG=$W/cmekd.log I=$W/img
mkdir -p "$ST" "$I"
export CMEKD_SOCKET=$SOCK
NAME=cmekrev$$
CMEKD_PID=
cleanup() {
    set +e
    for ((j = 1; j <= MAXN; j++)); do
        n=$NAME-$j
        dmsetup info "$n" >/dev/null 2>&1 || continue
        dmsetup resume "$n" 2>/dev/null; cryptsetup close "$n" 2>/dev/null || dmsetup remove --force "$n" 2>/dev/null
    done
    [ -z "$CMEKD_PID" ] || { kill "$CMEKD_PID" 2>/dev/null; wait "$CMEKD_PID" 2>/dev/null; }
    [ -z "$BENCH_REVOKE_OUT" ] || cp "$LOG" "$(dirname "$BENCH_REVOKE_OUT")/cmekd-revoke.log" 2>/dev/null
    rm -rf "$W"
}
trap cleanup EXIT
# private copies: a rebuild of the tree during the run rewrites the binaries under the processes
# running them (seen: cmekd and cmekctl dying of SIGSEGV in the guest, which reads them over 9p)
cp "$CMEKD" "$W/cmekd" && cp "$CMEKCTL" "$W/cmekctl" || die "cannot copy $CMEKD and $CMEKCTL"
CMEKD=$W/cmekd CMEKCTL=$W/cmekctl

# a sleep without a process: read with a timeout on a FIFO nobody writes to (no /dev/fd in the guest)
mkfifo "$W/nap"
exec {NAP}<>"$W/nap"
nap() { read -r -t "$1" -u "$NAP" _ || true; }
now_us() { local t=${EPOCHREALTIME/./}; echo "${t}"; }
ms_since() { # T0_US [T1_US]: milliseconds with 0.1 ms
    local d=$(( ${2:-${EPOCHREALTIME/./}} - $1 ))
    printf '%d.%d' $((d / 1000)) $(((d % 1000) / 100))
}

start_cmekd() { # MODE
    printf '[enforcement]\non-disable = %s\n' "$1" >"$W/cmekd.conf"
    echo "--- cmekd start, on-disable = $1" >>"$LOG"
    "$CMEKD" --state-dir "$ST" --socket "$SOCK" --config "$W/cmekd.conf" --log-level info >>"$LOG" 2>&1 &
    CMEKD_PID=$!
    for _ in $(seq 600); do
        [ -S "$SOCK" ] && "$CMEKCTL" status >/dev/null 2>&1 && return 0
        kill -0 "$CMEKD_PID" 2>/dev/null || { tail -20 "$LOG" >&2; die "cmekd exited at start"; }
        nap 0.05
    done
    die "cmekd did not start within 30 s"
}
stop_cmekd() { kill "$CMEKD_PID"; wait "$CMEKD_PID" 2>/dev/null; CMEKD_PID=; }

# The observer: one process, started before the clock runs, that asks device-mapper directly
# (DM_TABLE_STATUS ioctl: the suspended flag and the live table in one call per mapping, no
# process per poll) every ~1 ms until every mapping is locked: suspended with an all-zero key
# field (suspend) or gone (close). Prints "ready" when it has checked that all are live,
# unsuspended and keyed, then "FIRST_NS SUSPENDED_NS LOCKED_NS POLLS" (CLOCK_REALTIME, the
# clock of $EPOCHREALTIME). Keys are only compared with zero, never kept or printed.
cat >"$W/observe.py" <<'PY'
import errno, fcntl, os, struct, sys, time
mode, limit_ms, pause, names = sys.argv[1], int(sys.argv[2]), float(sys.argv[3]) / 1000, sys.argv[4:]
DM_TABLE_STATUS = 0xc138fd0c                    # _IOWR(0xfd, 12, struct dm_ioctl), 312 bytes
SUSPEND, STATUS_TABLE, BUFFER_FULL, SECURE = 1 << 1, 1 << 4, 1 << 8, 1 << 15
fd = os.open("/dev/mapper/control", os.O_RDWR)
buf = bytearray(16384)
def state(name):  # None: gone; else (suspended, key wiped)
    buf[:] = bytes(len(buf))
    struct.pack_into("=3IIIIiII", buf, 0, 4, 0, 0, len(buf), 312, 0, 0, STATUS_TABLE | SECURE, 0)
    struct.pack_into("128s", buf, 48, name.encode())
    try:
        fcntl.ioctl(fd, DM_TABLE_STATUS, buf, True)
    except OSError as e:
        if e.errno == errno.ENXIO:
            return None
        raise
    flags, = struct.unpack_from("=I", buf, 28)
    count, = struct.unpack_from("=I", buf, 20)
    if flags & BUFFER_FULL or count != 1:
        sys.exit(f"{name}: unexpected table ({count} targets, flags {flags:#x})")
    start, = struct.unpack_from("=I", buf, 16)
    ttype = bytes(buf[start + 24:start + 40]).split(b"\0")[0]
    params = bytes(buf[start + 40:buf.index(0, start + 40)]).split()
    if ttype != b"crypt" or len(params) < 2:
        sys.exit(f"{name}: not a crypt target ({ttype})")
    wiped = params[1].strip(b"0") == b""
    params = None
    return bool(flags & SUSPEND), wiped
for n in names:
    s = state(n)
    if s is None or s[0] or s[1]:
        sys.exit(f"{n}: not a live keyed mapping before the disable: {s}")
print("ready", flush=True)
t_end = time.time_ns() + limit_ms * 1000000
# locked: the key is out of the kernel (suspended with an all-zero key field, or gone); in close
# mode the observer goes on until every mapping is gone
left, first, suspended, polls, gone_at, locked_at = set(names), None, None, 0, 0, None
unsusp, present = set(names), set(names)
while left or (mode == "close" and present):
    polls += 1
    for n in list(present):
        s = state(n)
        if s is not None and s[0]:
            unsusp.discard(n)
        if s is None or (s[0] and s[1]):
            left.discard(n)
            unsusp.discard(n)
        if s is None:
            present.discard(n)
    now = time.time_ns()
    if first is None and len(left) < len(names):
        first = now
    if suspended is None and not unsusp:
        suspended = now
    if not left and locked_at is None:
        locked_at = now
    if not present:
        gone_at = now
    if not left and (mode != "close" or not present):
        break
    if now > t_end:
        sys.exit(f"{len(left)} of {len(names)} mapping(s) not locked after {limit_ms} ms ({len(unsusp)} not even suspended)")
    time.sleep(pause)
print(first // 1000, suspended // 1000, locked_at // 1000, polls, gone_at // 1000, flush=True)
PY
daemon_figures() { # KEY N MODE: sets D_LOAD D_REQ D_PASS D_LOCKED from the latest lines
    local l
    l=$(grep "Key $1: disable request: key loaded" "$LOG" | tail -1)
    D_LOAD=$(sed -n 's/.*authorized in \([0-9]*\) ms.*/\1/p' <<<"$l")
    D_REQ=$(sed -n 's/.*handled in \([0-9]*\) ms.*/\1/p' <<<"$l")
    l=$(grep "Key $1 is DISABLED: .* mapping(s) locked ($3)" "$LOG" | tail -1)
    D_PASS=$(sed -n 's/.*locked ([a-z]*) in \([0-9]*\) ms.*/\1/p' <<<"$l")
    D_LOCKED=$(sed -n 's/.*DISABLED: \([0-9]*\) mapping(s).*/\1/p' <<<"$l")
    [ -n "$D_LOAD" ] && [ -n "$D_REQ" ] && [ -n "$D_PASS" ] || die "no disable figures for $1 in the daemon's log"
    [ "$D_LOCKED" = "$2" ] || die "the daemon locked $D_LOCKED mapping(s), not $2: $l"
}

say "cmekd: $CMEKD; modes: $BENCH_MODES; N: $BENCH_NS; rounds: $BENCH_ROUNDS; scratch $W"
emit "{\"info\":\"start\",\"kernel\":$(jstr "$(uname -r)"),\"cpus\":$(nproc),\"vm\":$([ -n "${VM_GUEST:-}" ] && echo true || echo false),\"rounds\":$BENCH_ROUNDS,\"poll_ms\":$BENCH_POLL_MS}"
read -r -a MODES <<<"$BENCH_MODES"
start_cmekd "${MODES[0]}"
"$CMEKCTL" key create revoke --compartment bench >/dev/null || die "key create failed"
KEY=$("$CMEKCTL" key show bench/revoke --json | python3 -c 'import json,sys; d=json.load(sys.stdin); print(d.get("key", d)["id"])')
# MAXN volumes on the one key, created once (closed); the first N are opened for a level
t0=$(now_us)
for ((j = 1; j <= MAXN; j++)); do
    "$CMEKCTL" volume create "$I/v$j.img" --key "$KEY" --size 16M --strict >/dev/null || die "volume create v$j failed"
done
emit "{\"info\":\"setup\",\"volumes\":$MAXN,\"create_ms_per_volume\":$(python3 -c "print(round($(ms_since "$t0")/$MAXN,1))")}"
say "created $MAXN volumes in $(ms_since "$t0") ms"

OPEN=0   # volumes 1..OPEN are open (mapped by cmekd, not locked)
for mode in "${MODES[@]}"; do
    if [ "$mode" != "${MODES[0]}" ]; then
        # a new mode starts from nothing open: the daemon closes its mappings, then restarts
        for ((j = 1; j <= OPEN; j++)); do "$CMEKCTL" volume lock "$I/v$j.img" >/dev/null || die "volume lock v$j failed"; done
        OPEN=0
        stop_cmekd
        start_cmekd "$mode"
    fi
    for N in "${NS[@]}"; do
        t0=$(now_us)
        for ((j = 1; j <= OPEN; j++)); do
            [ $j -le "$N" ] || "$CMEKCTL" volume lock "$I/v$j.img" >/dev/null || die "volume lock v$j failed"
        done
        for ((j = OPEN + 1; j <= N; j++)); do
            "$CMEKCTL" volume unlock "$I/v$j.img" --name "$NAME-$j" >/dev/null || die "volume unlock v$j failed"
        done
        [ "$OPEN" -lt "$N" ] && say "$mode N=$N: opened $((N - OPEN)) mapping(s) in $(ms_since "$t0") ms"
        OPEN=$N
        names=(); for ((j = 1; j <= N; j++)); do names+=("$NAME-$j"); done
        for ((r = 0; r < BENCH_ROUNDS; r++)); do
            rm -f "$W/ret"
            sync   # nothing of the set-up left to write back during the timing
            coproc OBS { exec python3 "$W/observe.py" "$mode" "$LIMIT_MS" "$BENCH_POLL_MS" "${names[@]}" 2>"$W/obs.err"; }
            obs_pid=$OBS_PID; exec {OBSFD}<&"${OBS[0]}"   # bash drops both when it reaps the coproc
            read -r ready <&$OBSFD && [ "$ready" = ready ] || die "$mode N=$N round $r: observer: $(cat "$W/obs.err")"
            t0=$(now_us)
            ( "$CMEKCTL" key disable "$KEY" >/dev/null 2>"$W/ctl.err"; echo "$? ${EPOCHREALTIME/./}" >"$W/ret" ) &
            CTL=$!
            read -r first t_susp t_locked polls t_gone <&$OBSFD || { wait "$CTL"; die "$mode N=$N round $r: $(cat "$W/obs.err")"; }
            wait "$CTL"
            wait "$obs_pid" 2>/dev/null
            exec {OBSFD}<&-
            read -r ctl_rc t_ret <"$W/ret" || die "no cmekctl result"
            [ "$ctl_rc" = 0 ] || die "$mode N=$N round $r: cmekctl key disable exited $ctl_rc: $(cat "$W/ctl.err")"
            daemon_figures "$KEY" "$N" "$mode"
            # back for the next round (not timed as revocation): enable, restore
            "$CMEKCTL" key enable "$KEY" >/dev/null || die "key enable failed"
            t1=$(now_us)
            out=$("$CMEKCTL" volume restore --key "$KEY" 2>&1) || die "restore failed: $out"
            restore_ms=$(ms_since "$t1")
            grep -q "$N restored, 0 failed" <<<"$out" || die "restore: $out"
            line="{\"mode\":\"$mode\",\"n\":$N,\"round\":$r,\"locked_ms\":$(ms_since "$t0" "$t_locked")"
            line+=",\"first_ms\":$(ms_since "$t0" "$first")"
            line+=",\"all_suspended_ms\":$(ms_since "$t0" "$t_susp")"
            [ "$mode" != close ] || line+=",\"closed_ms\":$(ms_since "$t0" "$t_gone")"
            line+=",\"cmekctl_ms\":$(ms_since "$t0" "$t_ret"),\"daemon_load_ms\":$D_LOAD,\"daemon_pass_ms\":$D_PASS"
            line+=",\"daemon_request_ms\":$D_REQ,\"polls\":$polls,\"restore_ms\":$restore_ms}"
            emit "$line"
            say "$mode N=$N round $r: locked $(ms_since "$t0" "$t_locked") ms (first $(ms_since "$t0" "$first")), cmekctl $(ms_since "$t0" "$t_ret") ms, daemon load $D_LOAD + pass $D_PASS ms (request $D_REQ); restore $restore_ms ms"
        done
    done
done
emit "{\"info\":\"done\"}"
