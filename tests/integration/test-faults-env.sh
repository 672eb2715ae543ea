#!/bin/bash
# SPDX-License-Identifier: LGPL-2.1-or-later
# Faults from the environment, each during a re-wrap of many volumes: (1) the disk full (state
# directory and images on a small tmpfs filled up), (2) SIGTERM (the daemon finishes the request in
# hand and stops cleanly), (3) the PKCS#11 token disappearing (p11-kit server stopped under a
# p11-kit-client.so vault). After each: nothing lost (every volume opens by its cmek token once the
# cause is gone; on a full disk the unwrap is refused, since its audit record cannot be written, the audit chain verifies), the error is clear, and a re-run completes the job.
. "${top_srcdir:-$(dirname "$0")/../..}/tests/lib.sh"
need_root
need_cmd cryptsetup python3
install_token_plugin

# all_open DIR: every image opens through its cmek token (cryptsetup + plugin + cmekd)
all_open() {
    local f
    for f in "$1"/*.img; do
        cryptsetup open --test-passphrase --token-only "$f" 2>"$TEST_TMP/err" ||
            { cat "$TEST_TMP/err" >&2; fail "$2: $(basename "$f") does not open by its token"; }
    done
}
# all_clean DIR KEY WHEN: every image clean (header_clean) under the key's newest version
all_clean() {
    local f cur
    cur=$(key_version "$2")
    for f in "$1"/*.img; do
        header_clean "$f" "$cur" || fail "$3: $(basename "$f") is not clean after the re-run"
    done
}
# key_and_volumes STATE NAME: cmekd on STATE, key prod/NAME (its id in K), $N strict volumes in $I
key_and_volumes() {
    local i
    mkdir -p "$I"
    start_cmekd "$1"
    cmekctl key create "$2" --compartment prod >/dev/null
    K=$(key_id "prod/$2")
    for i in $(seq 1 $N); do cmekctl volume create "$I/v$i.img" --key "$K" --size 16M --strict >/dev/null; done
}
n_registered() { cmekctl volume list --json | python3 -c 'import json,sys; d=json.load(sys.stdin); print(len(d.get("volumes", d)))'; }

# ---- 1. disk full: state directory and images on an 80 MiB tmpfs (a header takes 4 MiB), filled up ----
SMALL=$TEST_TMP/small
mkdir -p "$SMALL"
mount -t tmpfs -o size=80m,mode=0700 tmpfs "$SMALL" || skip "cannot mount a tmpfs"
on_exit "umount -l '$SMALL' 2>/dev/null"
N=12
I=$SMALL/img
key_and_volumes "$SMALL/state" full
fill() { local b; for b in 64k 4k 64; do dd if=/dev/zero of="$SMALL/fill-$b" bs=$b 2>/dev/null || true; done; }
fill
log "disk full: $(df -k --output=avail "$SMALL" | tail -1) KiB left"
rc=0
cmekctl key rotate "$K" >/dev/null 2>"$TEST_TMP/rotate.err" || rc=$?
log "key rotate on a full disk: exit $rc: $(head -c 300 "$TEST_TMP/rotate.err")"
fill   # what the failed rotation gave back
rc=0
cmekctl volume rewrap --new-secret "$I"/*.img >"$TEST_TMP/rewrap.out" 2>"$TEST_TMP/rewrap.err" || rc=$?
log "rewrap --new-secret of $N volumes on a full disk: exit $rc: $(head -c 300 "$TEST_TMP/rewrap.err")"
kill -0 "$CMEKD_PID" || fail "cmekd died on a full disk"
log "daemon log on the full disk: $(grep -ciE 'no space|ENOSPC' "$TEST_TMP/cmekd.log") lines name it: $(grep -iE 'no space' "$TEST_TMP/cmekd.log" | sort | uniq -c | head -5 | tr '\n' ';')"
# the headers are re-wrapped (the truth), the registry cannot be saved: an error that says why
[ $rc -ne 0 ] || fail "rewrap on a full disk reported success (its registry could not be written)"
grep -qi 'space' "$TEST_TMP/rewrap.err" || fail "the rewrap error on a full disk does not say so"
grep -qi 'space' "$TEST_TMP/rotate.err" || fail "the rotation error on a full disk does not say so"
# the audit log cannot record an unwrap: cmekd refuses it (fails closed) and says why
for f in "$I"/*.img; do
    ! cryptsetup open --test-passphrase --token-only "$f" 2>"$TEST_TMP/err" || fail "on a full disk: $(basename "$f") opened without an audit record"
    grep -q AuditUnavailable "$TEST_TMP/err" || { cat "$TEST_TMP/err" >&2; fail "on a full disk: the refusal does not name io.cmek.AuditUnavailable"; }
done
rm -f "$SMALL"/fill*
all_open "$I" "once the disk has room again"
cmekctl audit verify >/dev/null || fail "the audit chain does not verify after the disk was full"
cmekctl key rotate "$K" >/dev/null || fail "key rotate after freeing space failed"
cmekctl volume rewrap --new-secret "$I"/*.img >/dev/null || fail "re-run of rewrap --new-secret after freeing space failed"
all_clean "$I" "$K" "disk full"
[ "$(n_registered)" = $N ] || fail "the registry lost volumes: $(n_registered) of $N"
stop_cmekd || fail "cmekd did not stop cleanly after the disk was full"
start_cmekd "$SMALL/state"
[ "$(n_registered)" = $N ] || fail "the registry lost volumes across a restart: $(n_registered) of $N"
all_open "$I" "after the disk was full and a restart"
stop_cmekd
log "disk full: survived, nothing lost, re-run completed"

# ---- 2. SIGTERM while a re-wrap of many volumes runs ----
N=24
I=$TEST_TMP/term
key_and_volumes "$TEST_TMP/state-term" term
cmekctl volume rewrap --new-secret "$I"/*.img >"$TEST_TMP/term.out" 2>"$TEST_TMP/term.err" &
CLIENT=$!
# SIGTERM once the batch is under way: the first volume's header changed
for ((i = 0; i < 200; i++)); do
    [ "$(cryptsetup luksDump --dump-json-metadata "$I/v1.img" | python3 -c 'import json,sys; print(sorted(json.load(sys.stdin)["keyslots"]))')" != "['0']" ] && break
    sleep 0.01
done
kill -TERM "$CMEKD_PID"
rc=0
wait "$CMEKD_PID" || rc=$?
CMEKD_PID=
[ $rc -eq 0 ] || { tail -20 "$TEST_TMP/cmekd.log" >&2; fail "cmekd exited with $rc on SIGTERM during a re-wrap"; }
rc=0
wait $CLIENT || rc=$?
log "SIGTERM during rewrap --new-secret of $N volumes: cmekd exit 0, client exit $rc $(head -c 200 "$TEST_TMP/term.err")"
rm -f "$SOCK"
start_cmekd "$TEST_TMP/state-term"
all_open "$I" "after SIGTERM"
cmekctl audit verify >/dev/null || fail "the audit chain does not verify after SIGTERM"
cmekctl volume rewrap --new-secret "$I"/*.img >/dev/null || fail "re-run after SIGTERM failed"
all_clean "$I" "$K" "SIGTERM"
stop_cmekd
log "SIGTERM: stopped cleanly, nothing lost, re-run completed"

# ---- 3. the PKCS#11 token disappears (p11-kit server stopped under a p11-kit-client vault) ----
P11CLIENT=/usr/lib/x86_64-linux-gnu/pkcs11/p11-kit-client.so
[ -e "$P11CLIENT" ] || P11CLIENT=$(find /usr/lib* -name p11-kit-client.so 2>/dev/null | head -1)
if [ ! -e "$P11CLIENT" ] || [ ! -e /usr/lib/softhsm/libsofthsm2.so ] || ! command -v p11-kit >/dev/null || ! command -v softhsm2-util >/dev/null; then
    log "SKIP part 3: needs p11-kit, p11-kit-client.so and SoftHSM2"
    log "ok"
    exit 0
fi
mkdir -p "$TEST_TMP/remote/tokens"
cat >"$TEST_TMP/remote/softhsm2.conf" <<EOF
directories.tokendir = $TEST_TMP/remote/tokens
objectstore.backend = file
log.level = ERROR
EOF
SOFTHSM2_CONF=$TEST_TMP/remote/softhsm2.conf softhsm2-util --init-token --free --label remote --so-pin 87654321 --pin 12345678 >/dev/null
echo 12345678 >"$TEST_TMP/remote/pin"
chmod 600 "$TEST_TMP/remote/pin"
P11SOCK=$TEST_TMP/p11kit.sock
P11PID=
start_p11() {
    rm -f "$P11SOCK"
    SOFTHSM2_CONF=$TEST_TMP/remote/softhsm2.conf p11-kit server -f -n "$P11SOCK" \
        --provider /usr/lib/softhsm/libsofthsm2.so "pkcs11:token=remote" >>"$TEST_TMP/p11kit.log" 2>&1 &
    P11PID=$!
    for ((i = 0; i < 100; i++)); do [ -S "$P11SOCK" ] && return 0; sleep 0.05; done
    cat "$TEST_TMP/p11kit.log" >&2; fail "p11-kit server did not start"
}
# the server serves each connection in a child ('p11-kit remote'): the token is gone for cmekd
# only when that child is gone too
stop_p11() {
    [ -n "$P11PID" ] || return 0
    local kids
    kids=$(pgrep -P "$P11PID" || true)
    kill $kids "$P11PID" 2>/dev/null; wait "$P11PID" 2>/dev/null || true; P11PID=
    # the per-connection 'p11-kit remote' children are not ours to wait for: the token is gone
    # only once they are (a still-running child served a request after the stop, seen under ASan)
    local k i
    for k in $kids; do
        for ((i = 0; i < 100; i++)); do kill -0 "$k" 2>/dev/null || break; sleep 0.05; done
        kill -KILL "$k" 2>/dev/null || true
    done
}
on_exit 'stop_p11'
start_p11
export P11_KIT_SERVER_ADDRESS=unix:path=$P11SOCK
cat >"$TEST_TMP/remote.conf" <<EOF
[vault remote]
module = $P11CLIENT
token = pkcs11:token=remote
pin-file = $TEST_TMP/remote/pin
EOF
start_cmekd "$TEST_TMP/state-remote" --config "$TEST_TMP/remote.conf"
NK=8
for k in $(seq 1 $NK); do cmekctl key create "remote$k" --compartment prod --vault remote >/dev/null; done
K=$(key_id prod/remote1)
# volumes need AES-GCM through the token: p11-kit < 0.25 does not carry its parameters over RPC
I=$TEST_TMP/remote-img
mkdir -p "$I"
VOLS=0
if cmekctl volume create "$I/v1.img" --key "$K" --size 16M --strict >/dev/null 2>"$TEST_TMP/err"; then
    VOLS=6
    for i in $(seq 2 $VOLS); do cmekctl volume create "$I/v$i.img" --key "$K" --size 16M --strict >/dev/null; done
    all_open "$I" "through the p11-kit server"
else
    log "volumes on a p11-kit-client vault: refused: $(cat "$TEST_TMP/err") (AES-GCM over p11-kit RPC needs p11-kit >= 0.25): key operations only"
    rm -f "$I"/*.img
fi
rotate_all() { local k; for k in $(seq 1 $NK); do cmekctl key rotate "prod/remote$k" >/dev/null || return 1; done; }
versions() { local k; for k in $(seq 1 $NK); do key_version "prod/remote$k"; done | sort -n | tr '\n' ' '; }
# the token disappears while the rotation of all keys (and the re-wrap of the volumes) runs
( rotate_all; [ $VOLS = 0 ] || cmekctl volume rewrap --new-secret "$I"/*.img ) >"$TEST_TMP/gone.out" 2>"$TEST_TMP/gone.err" &
CLIENT=$!
for ((i = 0; i < 400; i++)); do
    cmekctl key show prod/remote1 --json 2>/dev/null | grep -q '"current_version":2' && break
    sleep 0.01
done
stop_p11
rc=0
wait $CLIENT || rc=$?
log "token gone during the rotation of $NK keys${VOLS:+ and the re-wrap of $VOLS volumes}: exit $rc: $(tail -c 300 "$TEST_TMP/gone.err")"
kill -0 "$CMEKD_PID" || fail "cmekd died when the token disappeared"
# requests while it is gone: refused with a clear error, the daemon keeps serving
rc=0
cmekctl key rotate "$K" >/dev/null 2>"$TEST_TMP/gone2.err" || rc=$?
[ $rc -ne 0 ] || fail "key rotate succeeded without the token"
log "key rotate without the token: exit $rc: $(head -c 300 "$TEST_TMP/gone2.err")"
grep -qiE 'vault|token|unavailable|device' "$TEST_TMP/gone2.err" || fail "the error does not name the vault/token"
cmekctl_raw '{"method":"org.varlink.service.GetInfo"}' >/dev/null || fail "cmekd stopped serving without the token"
cmekctl key show prod/base >/dev/null 2>&1 || true
# headers intact: every volume has a cmek token naming an active keyslot (no repair by cmekd yet)
for f in "$I"/*.img; do
    [ -e "$f" ] || continue
    cryptsetup luksDump --dump-json-metadata "$f" | python3 -c '
import json, sys
h = json.load(sys.stdin)
toks = [t for t in h["tokens"].values() if t["type"] == "cmek" and t["keyslots"]]
assert toks and all(s in h["keyslots"] for t in toks for s in t["keyslots"]), h
' || fail "$(basename "$f"): header lost its cmek binding when the token disappeared"
done
# the token comes back: the same daemon (no restart) serves again; re-running completes
start_p11
for ((i = 0; i < 50; i++)); do cmekctl key show "$K" >/dev/null 2>&1 && break; sleep 0.2; done
cmekctl key show "$K" >/dev/null || fail "the daemon does not use the token again once it is back"
log "versions after the interruption: $(versions)"
for k in $(seq 1 $NK); do
    v=$(key_version "prod/remote$k")
    [ "$v" -ge 2 ] || cmekctl key rotate "prod/remote$k" >/dev/null || fail "re-run of the rotation of remote$k failed"
done
[ "$(versions)" = "$(printf '2 %.0s' $(seq 1 $NK))" ] || [ "$(versions | tr ' ' '\n' | sort -u | head -1)" -ge 2 ] ||
    fail "rotation not complete: $(versions)"
if [ $VOLS != 0 ]; then
    all_open "$I" "after the token came back"
    cmekctl volume rewrap --new-secret "$I"/*.img >/dev/null 2>"$TEST_TMP/err" || { cat "$TEST_TMP/err" >&2; fail "re-run after the token came back failed"; }
    all_clean "$I" "$K" "token gone"
fi
cmekctl audit verify >/dev/null || fail "the audit chain does not verify after the token disappeared"
stop_cmekd || fail "cmekd did not stop cleanly"
# no orphaned secret objects in the token: each cmek:ID:vN is a version some key names
start_cmekd "$TEST_TMP/state-remote" --config "$TEST_TMP/remote.conf"
cmekctl key list --json >"$TEST_TMP/keys.json"
stop_cmekd
stop_p11
SOFTHSM2_CONF=$TEST_TMP/remote/softhsm2.conf pkcs11-tool --module /usr/lib/softhsm/libsofthsm2.so --token-label remote \
    --login --pin 12345678 --list-objects >"$TEST_TMP/objs" 2>/dev/null || fail "pkcs11-tool failed"
python3 - "$TEST_TMP/objs" "$TEST_TMP/keys.json" <<'PY' || fail "orphaned objects in the token after it disappeared"
import json, re, sys
objs = open(sys.argv[1]).read()
keys = json.load(open(sys.argv[2]))["keys"]
named = {v["label"] for k in keys for v in k.get("versions", [])}
secrets = re.findall(r"^Secret Key Object.*\n\s+label:\s+(cmek:\S+)", objs, re.M)
bad = [l for l in secrets if l != "cmek:seal-key" and l not in named]
if bad:
    print("orphans:", bad)
    sys.exit(1)
PY
log "token gone: nothing lost, no orphans, clear errors, re-run completed without a restart"
log "ok"
