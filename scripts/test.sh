#!/bin/bash
# SPDX-License-Identifier: LGPL-2.1-or-later
# The whole test suite, as CI runs it: installs what is missing, builds twice (plain with
# -Werror, and with AddressSanitizer + UndefinedBehaviorSanitizer), runs `make check` in
# both (unit, host integration, then VM tests), and ends with "N passed, N failed[, N skipped]".
# Environment: CMEK_TEST_BUILDS="plain asan" (default both), CMEK_SKIP_VM=1 skips VM tests.
set -uo pipefail
src=$(cd "$(dirname "$0")/.." && pwd)
cd "$src"
start=$(date +%s)

"$src/scripts/install-deps.sh" test || { echo "Installing the Debian packages failed."; echo "0 passed, 1 failed"; exit 1; }

builds=${CMEK_TEST_BUILDS:-plain asan}
total_pass=0 total_fail=0 total_skip=0 rc=0

count() { # FIELD LOGFILE
    sed -n "s/^# $1: *\([0-9]*\)$/\1/p" "$2" | tail -1
}

for b in $builds; do
    dir="$src/build-$b"
    case $b in
    plain) flags=() ;;
    asan)  flags=(CFLAGS="-O1 -g -fsanitize=address,undefined -fno-omit-frame-pointer -fno-sanitize-recover=undefined"
                  LDFLAGS="-fsanitize=address,undefined") ;;
    *) echo "unknown build '$b'"; exit 2 ;;
    esac
    echo "=== build: $b ==="
    if ! "$src/scripts/build.sh" "$dir" "${flags[@]}"; then
        echo "=== $b: build FAILED ==="
        total_fail=$((total_fail + 1)); rc=1
        continue
    fi
    echo "=== make check ($b) ==="
    # ASan: report leaks in the daemon and tools; UBSan: abort on the first error
    ASAN_OPTIONS=${ASAN_OPTIONS:-detect_leaks=1:abort_on_error=0} \
    UBSAN_OPTIONS=${UBSAN_OPTIONS:-print_stacktrace=1:halt_on_error=1} \
    CMEK_BUILD_FLAVOR=$b \
        make -C "$dir" check -j1 2>&1 | grep --line-buffered -v '^make\[' | tee "$dir/check.out"
    [ "${PIPESTATUS[0]}" -eq 0 ] || rc=1
    log="$dir/test-suite.log"
    if [ -f "$log" ]; then
        p=$(count PASS "$log"); f=$(count FAIL "$log"); e=$(count ERROR "$log")
        s=$(count SKIP "$log"); xp=$(count XPASS "$log")
        total_pass=$((total_pass + ${p:-0}))
        total_fail=$((total_fail + ${f:-0} + ${e:-0} + ${xp:-0}))
        total_skip=$((total_skip + ${s:-0}))
        if [ "${f:-0}${e:-0}" != "00" ]; then
            echo "=== failed tests ($b) ==="
            sed -n '/^FAIL\|^ERROR/p' "$dir/check.out"
            # the failing tests' own logs
            for t in $(sed -n 's/^\(FAIL\|ERROR\): \([^ ]*\).*$/\2/p' "$dir/check.out" | sort -u); do
                l="$dir/${t%.*}.log"; [ -f "$l" ] || l="$dir/$t.log"
                [ -f "$l" ] && { echo "--- $l (tail) ---"; tail -40 "$l"; }
            done
        fi
    else
        echo "=== $b: no test-suite.log: make check did not run ==="
        total_fail=$((total_fail + 1)); rc=1
    fi
done

# make distcheck: the release tarball builds, installs, uninstalls and passes the unit tests
# out of tree (the host and VM suites above already ran against the same sources).
if [ "${CMEK_SKIP_DISTCHECK:-0}" != 1 ] && [ -f "$src/build-plain/Makefile" ]; then
    echo "=== make distcheck (unit tests inside) ==="
    units=$(cd "$src/build-plain" && ls tests/unit/test-* 2>/dev/null | grep -v '\.[a-z]*$' | tr '\n' ' ')
    if make -C "$src/build-plain" distcheck TESTS="$units" >"$src/build-plain/distcheck.out" 2>&1; then
        echo "PASS: make distcheck"
        total_pass=$((total_pass + 1))
    else
        tail -30 "$src/build-plain/distcheck.out"
        echo "FAIL: make distcheck"
        total_fail=$((total_fail + 1)); rc=1
    fi
fi

end=$(date +%s)
echo "=== suite took $((end - start)) s ==="
if [ "$total_skip" -gt 0 ]; then
    echo "$total_pass passed, $total_fail failed, $total_skip skipped"
else
    echo "$total_pass passed, $total_fail failed"
fi
[ "$total_fail" -eq 0 ] && [ "$total_pass" -gt 0 ] || rc=1
exit $rc
