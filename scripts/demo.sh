#!/bin/bash
# SPDX-License-Identifier: LGPL-2.1-or-later
# The main job on the embedded default: build cmekd, start it on its own SoftHSM2 token in a
# scratch directory, create a master key, create a LUKS2 volume on a loop-backed image bound
# to that key, unlock it (for real where device-mapper exists, else a verified test unlock),
# and show the status. Everything lives under a scratch directory removed at the end
# (CMEK_DEMO_KEEP=1 keeps it).
set -euo pipefail
src=$(cd "$(dirname "$0")/.." && pwd)
build=${CMEK_BUILD_DIR:-$src/build-plain}

step() { printf '\n\033[1m==> %s\033[0m\n' "$*"; }
missing() { printf '\n\033[33m--> not available yet: %s\033[0m\n' "$*"; }

step "Installing missing Debian packages"
"$src/scripts/install-deps.sh" run
step "Building in $build"
"$src/scripts/build.sh" "$build"

scratch=$(mktemp -d /tmp/cmekd-demo.XXXXXX)
pid= loopdev= mapped=
cleanup() {
    set +e
    [ -n "$mapped" ] && "$build/cmekctl" volume lock "$loopdev" >/dev/null 2>&1
    [ -n "$loopdev" ] && losetup -d "$loopdev"
    [ -n "$pid" ] && kill "$pid" && wait "$pid" 2>/dev/null
    if [ "${CMEK_DEMO_KEEP:-0}" = 1 ]; then echo "kept $scratch"; else rm -rf "$scratch"; fi
}
trap cleanup EXIT
export CMEKD_SOCKET=$scratch/io.cmek.socket
ctl() { echo "# cmekctl $*"; "$build/cmekctl" "$@"; }

step "Starting cmekd (state in $scratch/state, socket $CMEKD_SOCKET)"
"$build/cmekd" --state-dir "$scratch/state" --socket "$CMEKD_SOCKET" >"$scratch/cmekd.log" 2>&1 &
pid=$!
for ((i = 0; i < 600; i++)); do
    "$build/cmekctl" status >/dev/null 2>&1 && break
    kill -0 "$pid" 2>/dev/null || { cat "$scratch/cmekd.log"; echo "cmekd failed to start"; exit 1; }
    sleep 0.05
done
ctl status

has_method() {
    local iface=${1%.*}
    "$build/cmekctl" --json status >/dev/null 2>&1 || return 1
    printf '{"method":"org.varlink.service.GetInterfaceDescription","parameters":{"interface":"%s"}}\0' "$iface" |
        python3 -c '
import socket,sys,json
s=socket.socket(socket.AF_UNIX); s.connect(sys.argv[1]); s.sendall(sys.stdin.buffer.read())
b=b""
while not b.endswith(b"\0"):
    d=s.recv(65536)
    if not d: break
    b+=d
r=json.loads(b[:-1]); d=r.get("parameters",{}).get("description","")
sys.exit(0 if ("method "+sys.argv[2]+"(") in d else 1)' "$CMEKD_SOCKET" "${1##*.}"
}

if ! has_method io.cmek.Key.Create; then
    missing "master keys (io.cmek.Key): the vault and key work has not landed in this build"
    step "Audit log so far"
    ctl audit show
    ctl audit verify
    exit 0
fi

step "The default vault: a SoftHSM2 token cmekd initialised itself"
ctl vault list
step "Creating a master key inside the token (AES-256, non-extractable)"
ctl key create demo-key --compartment demo
ctl key show demo-key

if ! has_method io.cmek.Volume.Create; then
    missing "volumes (io.cmek.Volume): the volume work has not landed in this build"
    ctl audit verify
    exit 0
fi

step "Creating a 64 MiB loop-backed LUKS2 volume bound to demo-key"
truncate -s 64M "$scratch/volume.img"
loopdev=$(losetup --find --show "$scratch/volume.img")
echo "loop device: $loopdev"
ctl volume create "$loopdev" --key demo-key
echo "# cryptsetup luksDump $loopdev (the cmek token)"
cryptsetup luksDump "$loopdev" | sed -n '/^Tokens:/,/^Digests:/p'

if [ -e /dev/mapper/control ] && dmsetup version >/dev/null 2>&1; then
    step "Unlocking through device-mapper"
    ctl volume unlock "$loopdev" --name cmek-demo
    mapped=1
    ls -l /dev/mapper/cmek-demo
else
    step "No device-mapper in this kernel: verifying the unlock without activating it"
    ctl volume unlock --test "$loopdev"
fi

step "Status"
ctl volume list
ctl volume show "$loopdev"
step "Disabling the key: the volume no longer unlocks"
ctl key disable demo-key
if "$build/cmekctl" volume unlock --test "$loopdev" 2>"$scratch/err"; then
    echo "unexpected: unlock worked with the key disabled"; exit 1
fi
cat "$scratch/err"
ctl key enable demo-key
ctl volume unlock --test "$loopdev"
step "Audit log"
ctl audit show
ctl audit verify
step "Done: every step above ran for real."
