#!/bin/bash
# SPDX-License-Identifier: LGPL-2.1-or-later
# Configures and builds cmekd out of tree. Usage: scripts/build.sh BUILDDIR [configure args...]
set -euo pipefail
src=$(cd "$(dirname "$0")/.." && pwd)
build=$1; shift
if [ ! -x "$src/configure" ] || [ "$src/configure.ac" -nt "$src/configure" ]; then
    (cd "$src" && autoreconf -fi >/dev/null 2>&1) || (cd "$src" && autoreconf -fi)
fi
mkdir -p "$build"
cd "$build"
if [ ! -f Makefile ] || [ "$src/configure" -nt config.status ]; then
    "$src/configure" --enable-werror --enable-test-hooks "$@" >configure.out 2>&1 || { cat configure.out; exit 1; }
fi
make -j"$(nproc)" >make.out 2>&1 || { tail -50 make.out; exit 1; }
