#!/bin/bash
# SPDX-License-Identifier: LGPL-2.1-or-later
# Secret hygiene: after unwraps (io.cmek.Volume.Unwrap, as the token plugin calls it, and
# volume unlock --test), a --new-secret re-wrap, a create with a recovery passphrase and a bind
# with an existing passphrase, none of the DEKs handed out and none of the passphrases sent is
# left anywhere in the daemon's memory (read as root through /proc/PID/mem), in its log, in the
# audit log or in the journal. The daemon is not dumpable.
. "${top_srcdir:-$(dirname "$0")/../..}/tests/lib.sh"
need_root
need_cmd cryptsetup socat python3

I=$TEST_TMP/img
STATE=$TEST_TMP/state
NEEDLES=$TEST_TMP/needles
mkdir -p "$I"
: >"$NEEDLES"

# add_needle LABEL BYTES_HEX: the raw bytes, their base64 and their hex as the daemon might hold them
add_needle() {
    python3 - "$1" "$2" >>"$NEEDLES" <<'PY'
import base64, sys
label, raw = sys.argv[1], bytes.fromhex(sys.argv[2])
print(label + ".raw", raw.hex())
print(label + ".b64", base64.b64encode(raw).hex())
if len(raw) >= 16:
    print(label + ".hex", raw.hex().encode().hex())
PY
}

# unwrap IMG: io.cmek.Volume.Unwrap with the volume's cmek token, as the plugin does; prints the
# DEK in hex
unwrap() {
    local uuid tok
    uuid=$(cryptsetup luksUUID "$1")
    tok=$(cryptsetup luksDump --dump-json-metadata "$1" | python3 -c '
import json, sys
h = json.load(sys.stdin)
print(json.dumps([t for t in h["tokens"].values() if t["type"] == "cmek"][0]))')
    cmekctl_raw "{\"method\":\"io.cmek.Volume.Unwrap\",\"parameters\":{\"uuid\":\"$uuid\",\"token\":$tok}}" |
        python3 -c 'import base64, json, sys; print(base64.b64decode(json.load(sys.stdin)["parameters"]["secret"]).hex())'
}

start_cmekd "$STATE"
dumpable=$(cmekctl_raw '{"method":"io.cmek.Service.Status"}' | python3 -c 'import json,sys; print(json.load(sys.stdin)["parameters"]["dumpable"])')
[ "$dumpable" = False ] || fail "cmekd is dumpable (PR_GET_DUMPABLE != 0)"

cmekctl key create hygiene --compartment prod >/dev/null
K=$(key_id prod/hygiene)
# the daemon holds the key id: the scan must find it (it sees the heap)
echo "control.key-id $(printf %s "$K" | od -An -tx1 | tr -d ' \n')" >>"$NEEDLES"

# scan STEP: nothing in $NEEDLES may be in the daemon's memory now
scans=0
scan() {
    python3 "$top_srcdir/tests/integration/cmek-memscan.py" "$CMEKD_PID" "$NEEDLES" >"$TEST_TMP/hits" 2>"$TEST_TMP/scan" || {
        cat "$TEST_TMP/hits" "$TEST_TMP/scan" >&2
        fail "after $1: secrets left in cmekd's memory (or the scan failed)"
    }
    scans=$((scans + 1))
}

log "volumes: strict, with a recovery passphrase, an existing one bound with its passphrase"
cmekctl volume create "$I/v1.img" --key "$K" --size 16M --strict >/dev/null
RECOVERY=recovery-Passphrase-4f1c9b2e77d0
printf %s "$RECOVERY" | cmekctl volume create "$I/v2.img" --key "$K" --size 16M --recovery-passphrase-stdin >/dev/null
add_needle recovery "$(printf %s "$RECOVERY" | od -An -tx1 | tr -d ' \n')"
scan "create with a recovery passphrase"
EXISTING=existing-Passphrase-93ab0c61d5e2
truncate -s 32M "$I/v3.img"
printf %s "$EXISTING" | cryptsetup luksFormat -q --type luks2 --pbkdf pbkdf2 --pbkdf-force-iterations 1000 --key-file - "$I/v3.img"
printf %s "$EXISTING" | cmekctl volume bind "$I/v3.img" --key "$K" --unlock-passphrase-stdin >/dev/null
add_needle existing "$(printf %s "$EXISTING" | od -An -tx1 | tr -d ' \n')"
scan "bind with an existing passphrase"

log "unwrap every volume twice, unlock --test, re-wrap --new-secret, unwrap again"
n=0
for round in 1 2; do
    for v in v1 v2 v3; do
        dek=$(unwrap "$I/$v.img")
        [ ${#dek} -eq 64 ] || fail "Unwrap of $v returned no 32-byte secret"
        add_needle "dek-$v-$round" "$dek"
        n=$((n + 1))
        [ $round = 1 ] && scan "Unwrap of $v"
        cmekctl volume unlock --test "$I/$v.img" >/dev/null || fail "$v does not unlock"
    done
    scan "unwrap round $round"
done
cmekctl volume rewrap --new-secret "$I/v1.img" >/dev/null
dek=$(unwrap "$I/v1.img")
add_needle dek-v1-new "$dek"
scan "re-wrap --new-secret and Unwrap"
cmekctl key rotate "$K" >/dev/null
for v in v1 v2 v3; do add_needle "dek-$v-rotated" "$(unwrap "$I/$v.img")"; done
scan "rotation and Unwrap"
ndek=$(grep '^dek-.*raw' "$NEEDLES" | cut -d' ' -f2 | sort -u | wc -l)
log "$scans scans, last: $(cat "$TEST_TMP/scan") ($ndek distinct DEKs, 2 passphrases)"

# no secret in any file the daemon wrote, in its log, or in the journal
search_files() {
    python3 - "$NEEDLES" "$@" <<'PY'
import sys
needles = [(l.split()[0], bytes.fromhex(l.split()[1])) for l in open(sys.argv[1]) if l.strip()]
bad = 0
for path in sys.argv[2:]:
    data = open(path, "rb").read()
    for label, nd in needles:
        if label.startswith("control"):
            continue
        if nd in data:
            print(f"{label} in {path}"); bad += 1
sys.exit(1 if bad else 0)
PY
}
mapfile -t files < <(find "$STATE" -type f ! -name '*.db' ! -name '*.object' ! -name '*.lock' -size -16M; echo "$TEST_TMP/cmekd.log")
search_files "${files[@]}" || fail "a secret was written to the state directory or the log"
if journalctl --quiet -n 1 >/dev/null 2>&1; then
    journalctl -o export --since "-10min" >"$TEST_TMP/journal" 2>/dev/null || true
    search_files "$TEST_TMP/journal" || fail "a secret reached the journal"
fi
stop_cmekd
log "ok: $n unwraps + 4, $ndek distinct DEKs and 2 passphrases, none left behind"
