#!/bin/bash
# SPDX-License-Identifier: LGPL-2.1-or-later
# The whole test suite, as CI runs it: installs what is missing, builds twice (plain with
# -Werror, and with AddressSanitizer + UndefinedBehaviorSanitizer), runs `make check` in
# both (unit, fuzz and host integration tests two at a time, then the load test alone, then the
# VM tests one at a time), then `make distcheck`, and ends with "N passed, N failed[, N skipped]".
# It prints the time of each phase as it ends and a table of them before the total (HACKING.md
# "CI time").
# Environment: CMEK_TEST_BUILDS="plain asan" (default both), CMEK_SKIP_VM=1 skips VM tests,
# CMEK_SKIP_DISTCHECK=1 skips distcheck, CMEK_CHECK_JOBS=N host tests at a time (default 2).
set -uo pipefail
src=$(cd "$(dirname "$0")/.." && pwd)
cd "$src"
start=$(date +%s)

# phase_end NAME: print how long the phase that began at $phase_t0 took, start the next one
phases=()
phase_t0=$start
phase_end() {
    local now; now=$(date +%s)
    phases+=("$(printf '%-22s %5d s' "$1" $((now - phase_t0)))")
    echo "=== $1: $((now - phase_t0)) s ==="
    phase_t0=$now
}

"$src/scripts/install-deps.sh" test || { echo "Installing the Debian packages failed."; echo "0 passed, 1 failed"; exit 1; }
phase_end "deps"

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
        phase_end "build $b"
        continue
    fi
    phase_end "build $b"
    # host tests (unit, fuzz, integration: each has its own state directory and socket; what the
    # machine shares is locked by tests/lib.sh system_lock) two at a time, then the load test
    # alone, then the VM tests one at a time: a guest under TCG keeps both cores busy
    all=$(make -s --no-print-directory -C "$dir" list-tests)
    alone=$(make -s --no-print-directory -C "$dir" list-alone-tests)
    vm=$(make -s --no-print-directory -C "$dir" list-vm-tests)
    host=$(for t in $all; do case " $vm $alone " in *" $t "*) ;; *) echo "$t" ;; esac; done | tr '\n' ' ')
    [ "${CMEK_SKIP_VM:-0}" != 1 ] || vm=
    for part in host alone vm; do
        case $part in
        host)  tests=$host jobs=${CMEK_CHECK_JOBS:-2} ;;
        alone) tests=$alone jobs=1 ;;
        vm)    tests=$vm jobs=1 ;;
        esac
        [ -n "${tests// /}" ] || continue
        echo "=== make check ($b, $part tests, $jobs at a time) ==="
        log="$dir/test-suite-$part.log"
        rm -f "$log"
        # ASan: report leaks in the daemon and tools; UBSan: abort on the first error
        ASAN_OPTIONS=${ASAN_OPTIONS:-detect_leaks=1:abort_on_error=0} \
        UBSAN_OPTIONS=${UBSAN_OPTIONS:-print_stacktrace=1:halt_on_error=1} \
        CMEK_BUILD_FLAVOR=$b \
            make -C "$dir" check -j"$jobs" TESTS="$tests" TEST_SUITE_LOG="${log##*/}" 2>&1 |
            grep --line-buffered -v '^make\[' | tee "$dir/check-$part.out"
        [ "${PIPESTATUS[0]}" -eq 0 ] || rc=1
        if [ -f "$log" ]; then
            p=$(count PASS "$log"); f=$(count FAIL "$log"); e=$(count ERROR "$log")
            s=$(count SKIP "$log"); xp=$(count XPASS "$log")
            total_pass=$((total_pass + ${p:-0}))
            total_fail=$((total_fail + ${f:-0} + ${e:-0} + ${xp:-0}))
            total_skip=$((total_skip + ${s:-0}))
            if [ "${f:-0}${e:-0}" != "00" ]; then
                echo "=== failed tests ($b, $part) ==="
                sed -n '/^FAIL\|^ERROR/p' "$dir/check-$part.out"
                # the failing tests' own logs
                for t in $(sed -n 's/^\(FAIL\|ERROR\): \([^ ]*\).*$/\2/p' "$dir/check-$part.out" | sort -u); do
                    l="$dir/${t%.*}.log"; [ -f "$l" ] || l="$dir/$t.log"
                    [ -f "$l" ] && { echo "--- $l (tail) ---"; tail -40 "$l"; }
                done
            fi
        else
            echo "=== $b: no ${log##*/}: make check did not run ==="
            total_fail=$((total_fail + 1)); rc=1
        fi
        phase_end "check $b $part"
    done
done

# make distcheck: the release tarball builds, installs, uninstalls and passes the unit tests
# out of tree (the host and VM suites above already ran against the same sources).
if [ "${CMEK_SKIP_DISTCHECK:-0}" != 1 ] && [ -f "$src/build-plain/Makefile" ]; then
    echo "=== make distcheck (unit tests inside) ==="
    units=$(cd "$src/build-plain" && ls tests/unit/test-* 2>/dev/null | grep -v '\.[a-z]*$' | tr '\n' ' ')
    if make -C "$src/build-plain" -j2 distcheck TESTS="$units" >"$src/build-plain/distcheck.out" 2>&1; then
        echo "PASS: make distcheck"
        total_pass=$((total_pass + 1))
    else
        tail -30 "$src/build-plain/distcheck.out"
        echo "FAIL: make distcheck"
        total_fail=$((total_fail + 1)); rc=1
    fi
    phase_end "distcheck"
fi

end=$(date +%s)
echo "=== time per phase ==="
printf '%s\n' "${phases[@]}"
echo "=== suite took $((end - start)) s ==="
if [ "$total_skip" -gt 0 ]; then
    echo "$total_pass passed, $total_fail failed, $total_skip skipped"
else
    echo "$total_pass passed, $total_fail failed"
fi
[ "$total_fail" -eq 0 ] && [ "$total_pass" -gt 0 ] || rc=1
exit $rc
