#!/bin/sh
# SPDX-License-Identifier: LGPL-2.1-or-later
# Builds the fuzz targets with clang + libFuzzer + ASan + UBSan (outside automake: the check
# build uses gcc) and runs them.
#   fuzz.sh build                          -> $top_builddir/fuzz-clang/fuzz-<target>
#   fuzz.sh run SECONDS JOBS TARGET...     each target for SECONDS, JOBS at a time
#   fuzz.sh build-and-run SECONDS JOBS TARGET...
# New inputs go to fuzz-clang/corpus-<target>/ (the seeds in tests/fuzz/corpus/ are not
# touched); crashes to fuzz-clang/crash-<target>-*; a summary (time, executions, corpus size,
# crashes) to fuzz-clang/summary.txt. Copy a crash into tests/fuzz/corpus/<target>/ once fixed.
set -eu
: "${top_srcdir:?}" "${top_builddir:?}"
CC=${CC:-clang}
out=$top_builddir/fuzz-clang
pcs="json-c libcrypto libsystemd p11-kit-1 libcryptsetup devmapper"

build() {
        command -v "$CC" >/dev/null || { echo "fuzz.sh: $CC not found (apt-get install clang)" >&2; exit 77; }
        mkdir -p "$out"
        flags="-g -O1 -fno-omit-frame-pointer -fsanitize=fuzzer,address,undefined -fno-sanitize-recover=undefined"
        cflags="-include $top_builddir/config.h -I$top_srcdir/include -I$top_srcdir/lib -I$top_srcdir/daemon \
                -I$top_srcdir/tests/fuzz $(pkg-config --cflags $pcs)"
        # the daemon's directories (Makefile.am's AM_CPPFLAGS); no fuzzed code path opens them
        cflags="$cflags -DRUNSTATEDIR=\"/run\" -DLOCALSTATEDIR=\"/var\" -DSYSCONFDIR=\"/etc\" -DTOKENDIR=\"/nonexistent\""
        libs="$(pkg-config --libs $pcs)"
        # the real daemon code, as make check's fuzzers link it (libcmekd-core.la): lib/ and every
        # daemon file but main()'s
        srcs=$(ls "$top_srcdir"/lib/*.c "$top_srcdir"/daemon/*.c | grep -v '/daemon/cmekd\.c$')
        mkdir -p "$out/obj"
        objs=
        for f in $srcs; do
                o=$out/obj/$(basename "$f" .c).o
                # shellcheck disable=SC2086
                $CC $flags $cflags -c -o "$o" "$f"
                objs="$objs $o"
        done
        for t in varlink token policy import audit; do
                # shellcheck disable=SC2086
                $CC $flags $cflags -o "$out/fuzz-$t" "$top_srcdir/tests/fuzz/fuzz-$t.c" $objs $libs
                echo "built $out/fuzz-$t"
        done
}

run_one() {
        t=$1 secs=$2
        mkdir -p "$out/corpus-$t"
        ( cd "$out" && TMPDIR=${TMPDIR:-/tmp} ./fuzz-$t -max_total_time="$secs" -max_len=8192 -timeout=10 \
                -rss_limit_mb=2048 -print_final_stats=1 -artifact_prefix="$out/crash-$t-" \
                "corpus-$t" "$top_srcdir/tests/fuzz/corpus/$t" ) >"$out/$t.log" 2>&1 || true
        execs=$(sed -n 's/^stat::number_of_executed_units: *//p' "$out/$t.log" | tail -1)
        ncorp=$(ls "$out/corpus-$t" | wc -l)
        ncrash=$(ls "$out" | grep -c "^crash-$t-" || true)
        echo "$(date -u +%FT%TZ) $t seconds=$secs execs=${execs:-?} corpus=$ncorp crashes=$ncrash" | tee -a "$out/summary.txt"
}

run() {
        secs=$1 jobs=$2
        shift 2
        n=0
        for t in "$@"; do
                run_one "$t" "$secs" &
                n=$((n + 1))
                if [ "$n" -ge "$jobs" ]; then wait; n=0; fi
        done
        wait
        ! ls "$out" | grep -q '^crash-'
}

cmd=$1
shift
case $cmd in
build) build ;;
run) run "$@" ;;
build-and-run) build; run "$@" ;;
*) echo "usage: fuzz.sh build | run SECONDS JOBS TARGET... | build-and-run SECONDS JOBS TARGET..." >&2; exit 2 ;;
esac
