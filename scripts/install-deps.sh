#!/bin/bash
# SPDX-License-Identifier: LGPL-2.1-or-later
# Installs the Debian 12 packages cmekd needs to build, run and test, when they are missing.
# Usage: scripts/install-deps.sh [build|run|test]   (default: test = everything)
set -euo pipefail

build_pkgs=(autoconf automake libtool pkg-config make gcc libc6-dev
            libcryptsetup-dev libdevmapper-dev libssl-dev libsystemd-dev
            libp11-kit-dev libjson-c-dev libcmocka-dev)
run_pkgs=(softhsm2 p11-kit cryptsetup-bin systemd util-linux)
test_pkgs=(opensc socat python3 python3-cryptography e2fsprogs kmod procps psmisc
           qemu-system-x86 linux-image-amd64 busybox-static cpio xz-utils zstd
           varlink-go)   # varlink-go-interface-generator: the IDL check of test-varlink-idl.sh

case "${1:-test}" in
build) want=("${build_pkgs[@]}") ;;
run)   want=("${build_pkgs[@]}" "${run_pkgs[@]}") ;;
test)  want=("${build_pkgs[@]}" "${run_pkgs[@]}" "${test_pkgs[@]}") ;;
*) echo "usage: $0 [build|run|test]" >&2; exit 2 ;;
esac

missing=()
for p in "${want[@]}"; do
    if ! dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed"; then
        missing+=("$p")
    fi
done
[ ${#missing[@]} -eq 0 ] && exit 0

if [ "$(id -u)" -ne 0 ]; then
    echo "Missing Debian packages: ${missing[*]}" >&2
    echo "Run as root, or: sudo apt-get install ${missing[*]}" >&2
    exit 1
fi
echo "Installing: ${missing[*]}"
export DEBIAN_FRONTEND=noninteractive
apt-get update -qq
apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
