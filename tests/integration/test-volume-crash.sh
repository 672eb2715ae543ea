#!/bin/bash
# SPDX-License-Identifier: LGPL-2.1-or-later
# Crash safety of re-wrap: cmekd kills itself (SIGKILL) at every fault point of a re-wrap and of
# --new-secret; after each kill every volume still opens through its cmek token(s) with cryptsetup
# and the plugin (before any repair), and a re-run finishes the job: one token, one CMEK keyslot,
# newest key version.
. "${top_srcdir:-$(dirname "$0")/../..}/tests/lib.sh"
need_root
need_cmd cryptsetup socat python3

install_token_plugin

I=$TEST_TMP/img
mkdir -p "$I"
STATE=$TEST_TMP/state
N=3

start_cmekd "$STATE"
cmekctl key create crash --compartment prod >/dev/null
K=$(key_id prod/crash)
for i in $(seq 1 $N); do cmekctl volume create "$I/v$i.img" --key "$K" --size 16M --strict >/dev/null; done
stop_cmekd

# start_faulty POINT (a daemon that dies at POINT), await_death POINT: tests/lib.sh
# every volume opens through a cmek token, read by cryptsetup + plugin (no repair by cmekd)
all_open() {
    local i
    for i in $(seq 1 $N); do
        cryptsetup open --test-passphrase --token-only "$I/v$i.img" 2>"$TEST_TMP/err" ||
            { cat "$TEST_TMP/err" >&2; fail "after $1: v$i.img does not open"; }
    done
}
# the job is complete: one cmek token, one keyslot (the one it names), newest version, opens
all_clean() {
    local i cur
    cur=$(key_version "$K")
    for i in $(seq 1 $N); do
        header_clean "$I/v$i.img" "$cur" || fail "after $1 and a re-run: v$i.img is not clean"
        cmekctl volume unlock --test "$I/v$i.img" >/dev/null || fail "after $1: v$i.img does not unlock"
    done
}

for point in rewrap-after-unwrap rewrap-after-token-write rewrap-after-token-write:2; do
    log "kill at $point during the rotation hook"
    start_faulty "$point"
    cmekctl key rotate "$K" >/dev/null 2>&1 || true
    await_death "$point"
    start_cmekd "$STATE"   # does not touch headers until asked; Unwrap never repairs
    all_open "$point"
    cmekctl volume rewrap --key "$K" >/dev/null || fail "re-run after $point failed"
    all_clean "$point"
    stop_cmekd
done

for point in newsecret-after-pending-mark newsecret-after-keyslot-add newsecret-after-token-add \
             repair-after-keyslot-destroy newsecret-after-old-removed newsecret-after-token-add:3; do
    log "kill at $point during rewrap --new-secret"
    start_faulty "$point"
    cmekctl volume rewrap --new-secret "$I"/v*.img >/dev/null 2>&1 || true
    await_death "$point"
    start_cmekd "$STATE"   # does not touch headers until asked; Unwrap never repairs
    all_open "$point"
    cmekctl volume rewrap --new-secret "$I"/v*.img >/dev/null || fail "re-run after $point failed"
    all_clean "$point"
    stop_cmekd
done
log "ok"
