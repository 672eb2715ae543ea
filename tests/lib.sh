# SPDX-License-Identifier: LGPL-2.1-or-later
# Helpers for the shell integration tests. Source it; tests run as root on the host.
# shellcheck shell=bash
set -euo pipefail

: "${top_builddir:=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)}"
: "${top_srcdir:=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)}"
CMEKD="$top_builddir/cmekd"
CMEKCTL_BIN="$top_builddir/cmekctl"

TEST_NAME=$(basename "$0" .sh)
TEST_TMP=$(mktemp -d "/tmp/cmek-$TEST_NAME.XXXXXX")

# python3 is Debian's (scripts/install-deps.sh installs it with python3-cryptography; the tests
# that run it as another user name /usr/bin/python3 already): a per-user interpreter shim found
# earlier in PATH (pyenv) costs 0.9 s of CPU per call (measured 2026-12-01), /usr/bin/python3 0.07 s.
# A link first in PATH, not a shell function: "python3 ... &" must leave the interpreter's pid in $!
if [ -x /usr/bin/python3 ]; then
    mkdir "$TEST_TMP/bin" && ln -s /usr/bin/python3 "$TEST_TMP/bin/python3" && PATH=$TEST_TMP/bin:$PATH
fi
CMEKD_PID=
CLEANUP_CMDS=()

log()  { printf '%s: %s\n' "$TEST_NAME" "$*" >&2; }
fail() { printf '%s: FAIL: %s\n' "$TEST_NAME" "$*" >&2; exit 1; }
skip() { printf '%s: SKIP: %s\n' "$TEST_NAME" "$*" >&2; exit 77; }
need_root() { [ "$(id -u)" -eq 0 ] || skip "needs root"; }
need_cmd() { for c; do command -v "$c" >/dev/null 2>&1 || skip "needs $c"; done; }
on_exit() { CLEANUP_CMDS+=("$*"); }

_cleanup() {
    local rc=$?
    set +e
    for ((i = ${#CLEANUP_CMDS[@]} - 1; i >= 0; i--)); do eval "${CLEANUP_CMDS[$i]}"; done
    stop_cmekd
    if [ $rc -ne 0 ] && [ $rc -ne 77 ] && [ -f "$TEST_TMP/cmekd.log" ]; then
        echo "--- cmekd log (tail) ---" >&2
        tail -30 "$TEST_TMP/cmekd.log" >&2
    fi
    rm -rf "$TEST_TMP"
    exit $rc
}
trap _cleanup EXIT

# start_cmekd [STATE_DIR] [extra cmekd args...]: standalone daemon on $SOCK with state in $STATE
start_cmekd() {
    STATE=${1:-$TEST_TMP/state}; shift || true
    SOCK=${SOCK:-$TEST_TMP/io.cmek.socket}
    mkdir -p "$STATE"
    # CMEK_VALGRIND=1: under memcheck; an error or a definite leak makes the exit 99 (stop_cmekd fails)
    local vg=()
    [ -z "${CMEK_VALGRIND:-}" ] || vg=(valgrind --quiet --leak-check=full --errors-for-leak-kinds=definite --num-callers=40
        --error-exitcode=99 --suppressions="$top_srcdir/tests/valgrind.supp" --log-file="$TEST_TMP/valgrind.%p.log")
    "${vg[@]}" "$CMEKD" --state-dir "$STATE" --socket "$SOCK" --test-hooks --log-level debug "$@" \
        >>"$TEST_TMP/cmekd.log" 2>&1 &
    CMEKD_PID=$!
    wait_for_socket "$SOCK" "$CMEKD_PID"
    export CMEKD_SOCKET=$SOCK
}

wait_for_socket() { # PATH [PID]
    local i
    for ((i = 0; i < 300; i++)); do
        if [ -S "$1" ] && cmekctl_raw '{"method":"org.varlink.service.GetInfo"}' "$1" >/dev/null 2>&1; then
            return 0
        fi
        if [ -n "${2:-}" ] && ! kill -0 "$2" 2>/dev/null; then
            cat "$TEST_TMP/cmekd.log" >&2 || true
            fail "cmekd exited before listening on $1"
        fi
        sleep 0.05
    done
    fail "cmekd did not listen on $1 within 15 s"
}

stop_cmekd() {
    if [ -n "$CMEKD_PID" ] && kill -0 "$CMEKD_PID" 2>/dev/null; then
        kill -TERM "$CMEKD_PID"
        local rc=0
        wait "$CMEKD_PID" || rc=$?
        CMEKD_PID=
        # under ASan a leak or error at exit makes the daemon exit non-zero
        [ $rc -eq 0 ] || { tail -n 60 "$TEST_TMP/cmekd.log" "$TEST_TMP"/valgrind.*.log >&2 2>/dev/null || true
            echo "cmekd exited with $rc" >&2; return 1; }
    fi
    CMEKD_PID=
    return 0
}

cmekctl() { "$CMEKCTL_BIN" "$@"; }

# cmekctl_raw JSON [SOCKET]: one raw Varlink call; prints the reply (NUL stripped)
cmekctl_raw() {
    printf '%s\0' "$1" | socat -t "${CMEK_RAW_TIMEOUT:-30}" - "UNIX-CONNECT:${2:-$SOCK}" | tr -d '\0'
}

# cmekctl's exit codes (cmekctl(8) EXIT STATUS, tools/cmekctl.h): expect_exit "$EXIT_NOT_FOUND" ...
EXIT_FAILURE=1        # failure not covered below
EXIT_USAGE=2          # bad command line
EXIT_NO_DAEMON=3      # cmekd not reachable
EXIT_PERMISSION=4     # io.cmek.PermissionDenied
EXIT_NOT_FOUND=5      # key, vault or volume not found
EXIT_KEY_UNUSABLE=6   # key disabled, pending deletion or deleted
EXIT_INVALID_STATE=7  # transition refused by the key state machine
EXIT_VERIFY_FAILED=8  # audit chain broken, unwrap check failed

# expect_exit CODE CMD...: the command must exit with CODE (one of the EXIT_* above for cmekctl);
# its stdout and stderr are left in $TEST_TMP/out and $TEST_TMP/err
expect_exit() {
    local want=$1; shift
    local rc=0
    "$@" >"$TEST_TMP/out" 2>"$TEST_TMP/err" || rc=$?
    if [ "$rc" -ne "$want" ]; then
        cat "$TEST_TMP/out" "$TEST_TMP/err" >&2
        fail "'$*' exited $rc, expected $want"
    fi
}

# wait_for CMD...: poll CMD every 0.05 s until it succeeds, for at most 10 s; false if it never did
wait_for() { local i; for ((i = 0; i < 200; i++)); do "$@" && return 0; sleep 0.05; done; return 1; }

assert_contains() { # HAYSTACK NEEDLE
    case "$1" in *"$2"*) ;; *) fail "expected to find '$2' in: $1" ;; esac
}
assert_not_contains() {
    case "$1" in *"$2"*) fail "did not expect '$2' in: $1" ;; *) ;; esac
}

json_get() { # JSON FIELD (top level, via python3)
    python3 -c 'import json,sys; v=json.loads(sys.argv[1]); 
for k in sys.argv[2].split("."): v=v[int(k)] if isinstance(v,list) else v.get(k)
print(v if not isinstance(v,(dict,list,bool)) else json.dumps(v))' "$1" "$2"
}

# key_id KEY: the key's id (KEY: id, NAME or COMPARTMENT/NAME); key_version KEY: its current version
key_id() { cmekctl key show "$1" --json | python3 -c 'import json,sys; d=json.load(sys.stdin); print(d.get("key", d)["id"])'; }
key_version() { cmekctl key show "$1" --json | python3 -c 'import json,sys; d=json.load(sys.stdin); print(d.get("key", d)["current_version"])'; }
# header_clean IMG VERSION: one cmek token, no pending keyslot, exactly the keyslot it names, wrapped
# under key version VERSION (what an interrupted operation and its re-run must leave)
header_clean() {
    cryptsetup luksDump --dump-json-metadata "$1" | python3 -c '
import json, sys
h = json.load(sys.stdin); cur = int(sys.argv[1])
toks = [t for t in h["tokens"].values() if t["type"] == "cmek"]
assert len(toks) == 1, ("tokens", h["tokens"])
assert "pending_keyslot" not in toks[0], toks[0]
assert list(h["keyslots"].keys()) == toks[0]["keyslots"], (h["keyslots"].keys(), toks[0]["keyslots"])
assert toks[0]["key_version"] == cur, (toks[0]["key_version"], cur)
' "$2"
}

# In the sanitizer build the token plugin carries ASan/UBSan: cryptsetup (not sanitized) can
# load it only with the runtimes preloaded. Leak checking stays on for our own programs only.
if [ "${CMEK_BUILD_FLAVOR:-}" = asan ]; then
    CMEK_SAN_PRELOAD="$(gcc -print-file-name=libasan.so):$(gcc -print-file-name=libubsan.so)"
    cryptsetup() {
        LD_PRELOAD="$CMEK_SAN_PRELOAD" ASAN_OPTIONS=detect_leaks=0:verify_asan_link_order=0 command cryptsetup "$@"
    }
    export -f cryptsetup
    export CMEK_SAN_PRELOAD
fi

# system_lock NAME: hold a machine-wide lock until the test exits, for what all build trees share
# (the token plugin directory, local accounts). Waits up to 15 minutes.
# The lock is held by a small holder process, not by a descriptor of this shell: a descriptor would
# be inherited by every cmekd the test starts (a daemon with a stray open file is not the daemon
# under test; test-faults-env's anchored audit chain broke on it). Taking it again in the same test
# is a no-op.
declare -A SYSTEM_LOCKS=()
system_lock() {
    local f ready pid i
    [ -z "${SYSTEM_LOCKS[$1]:-}" ] || return 0
    # the VM (tests/vm) boots without /run/lock
    [ -d /run/lock ] || mkdir -p /run/lock || fail "cannot create /run/lock for the lock $1"
    f="/run/lock/cmek-test-$1.lock" ready="$TEST_TMP/.lock-$1"
    rm -f "$ready"
    (
        exec 9>"$f" </dev/null >/dev/null 2>&1 || exit 1
        flock -w 900 9 || exit 1
        : >"$ready"
        exec sleep infinity
    ) &
    pid=$!
    SYSTEM_LOCKS[$1]=$pid
    on_exit "kill $pid 2>/dev/null; wait $pid 2>/dev/null"
    for ((i = 0; i < 9100; i++)); do
        [ -e "$ready" ] && return 0
        kill -0 "$pid" 2>/dev/null || fail "could not take the machine-wide lock '$1' ($f)"
        sleep 0.1
    done
    fail "waited 15 minutes for another test run holding '$1'"
}

# install_token_plugin: libcryptsetup loads token plugins only from its compiled-in directory, so
# put this build's plugin there for the test's duration (the previous file is put back at exit).
# Sets PLUGIN and TOKENDIR; skips when there is no plugin or no plugin support.
install_token_plugin() {
    PLUGIN="$top_builddir/tools/.libs/libcryptsetup-token-cmek.so"
    [ -f "$PLUGIN" ] || skip "plugin not built"
    # one directory for the whole machine: tests of other build trees wait until this one is done
    system_lock token-plugin
    TOKENDIR=$(command cryptsetup --help | sed -n 's/^LUKS2 external token plugin path: *\(.*\)\.$/\1/p')
    [ -n "$TOKENDIR" ] && [ -d "$TOKENDIR" ] || skip "this cryptsetup loads no external token plugins"
    if ! cmp -s "$PLUGIN" "$TOKENDIR/libcryptsetup-token-cmek.so"; then
        [ ! -e "$TOKENDIR/libcryptsetup-token-cmek.so" ] || cp "$TOKENDIR/libcryptsetup-token-cmek.so" "$TEST_TMP/plugin.saved"
        cp "$PLUGIN" "$TOKENDIR/libcryptsetup-token-cmek.so.tmp"
        mv "$TOKENDIR/libcryptsetup-token-cmek.so.tmp" "$TOKENDIR/libcryptsetup-token-cmek.so"
        on_exit "if [ -e '$TEST_TMP/plugin.saved' ]; then cp '$TEST_TMP/plugin.saved' '$TOKENDIR/libcryptsetup-token-cmek.so'; else rm -f '$TOKENDIR/libcryptsetup-token-cmek.so'; fi"
    fi
}

# add_test_user NAME: a real local account for replaying attacks (no home, no login shell), removed at
# exit. Names must be unique per test (tests run in parallel): use a per-test prefix.
add_test_user() {
    need_cmd useradd userdel setpriv
    # the same name in another build tree's run would kill this run's processes: wait for it
    system_lock "user-$1"
    # a previous run that died may have left the account, and processes of it (userdel refuses then)
    if id -u "$1" >/dev/null 2>&1; then
        pkill -KILL -u "$1" 2>/dev/null || true; sleep 0.2
        userdel "$1" >/dev/null 2>&1 || true; groupdel "$1" >/dev/null 2>&1 || true
    fi
    useradd --system --no-create-home --shell /usr/sbin/nologin --user-group "$1" || fail "useradd $1"
    on_exit "pkill -KILL -u '$1' 2>/dev/null; sleep 0.2; userdel '$1' >/dev/null 2>&1 || true; groupdel '$1' >/dev/null 2>&1 || true"
}
# as_user NAME CMD...: CMD with NAME's uid, primary group and supplementary groups, no capabilities
as_user() { local u=$1; shift; setpriv --reuid="$u" --regid="$u" --init-groups --inh-caps=-all --bounding-set=-all -- "$@"; }
# as_user_ctl NAME ARGS...: cmekctl on $SOCK as NAME
as_user_ctl() { local u=$1; shift; as_user "$u" "$CMEKCTL_BIN" --socket "$SOCK" "$@"; }

# --- fault points (cmek_fault() in the daemon): a daemon armed with CMEKD_TEST_FAULT=POINT[:N] kills itself
# (SIGKILL) when it reaches POINT (the Nth time) and logs "Test fault point 'POINT' reached" first.
# start_faulty POINT [ARGS...]: start_cmekd on $STATE armed to die at POINT
start_faulty() {
    local point=$1; shift
    export CMEKD_TEST_FAULT=$point
    start_cmekd "${STATE:-}" "$@"
    unset CMEKD_TEST_FAULT
}
# fault_reached POINT: the daemon's log says it reached POINT
fault_reached() { grep -q "Test fault point '${1%%:*}' reached" "$TEST_TMP/cmekd.log"; }
# await_death POINT [WHAT]: the armed daemon must have killed itself at POINT within 10 s (while
# doing WHAT); forgets it and its socket, so that start_cmekd can start the next one
await_death() {
    local i
    for ((i = 0; i < 100; i++)); do kill -0 "$CMEKD_PID" 2>/dev/null || break; sleep 0.1; done
    kill -0 "$CMEKD_PID" 2>/dev/null && fail "cmekd did not reach fault point $1${2:+ during $2}"
    wait "$CMEKD_PID" 2>/dev/null || true
    CMEKD_PID=
    rm -f "$SOCK"
    fault_reached "$1" || fail "cmekd died elsewhere than at $1"
}

# --- event subscribers, in the background until the test exits
# subscribe_events OUT [messages|events]: a raw Varlink client calls io.cmek.Events.Subscribe with
# "more": true on $SOCK and writes one line per reply to OUT: the whole reply (messages, the
# default) or its "event" parameter ("events"; the first reply, which carries none, is "null").
# Sets EVENTS_PID. Its stderr goes to OUT.err.
subscribe_events() {
    python3 - "$SOCK" "${2:-messages}" >"$1" 2>"$1.err" <<'EOP' &
import json, socket, sys
s = socket.socket(socket.AF_UNIX); s.connect(sys.argv[1])
s.sendall(json.dumps({"method": "io.cmek.Events.Subscribe", "more": True}).encode() + b"\0")
buf = b""
while True:
    d = s.recv(65536)
    if not d: break
    buf += d
    while b"\0" in buf:
        m, buf = buf.split(b"\0", 1)
        if sys.argv[2] == "events":
            print(json.dumps(json.loads(m).get("parameters", {}).get("event")), flush=True)
        else:
            print(m.decode(), flush=True)
EOP
    EVENTS_PID=$!
    on_exit "kill $EVENTS_PID 2>/dev/null"
}
# follow_events OUT: 'cmekctl --json events --follow' writing to OUT (stderr to OUT.err); sets FOLLOW_PID
follow_events() {
    cmekctl --json events --follow >"$1" 2>"$1.err" &
    FOLLOW_PID=$!
    on_exit "kill $FOLLOW_PID 2>/dev/null"
}

# --- real dm-crypt: tests that need device-mapper run in a qemu guest when the host has none
dm_works() { dmsetup targets >/dev/null 2>&1; }
# run_in_vm_unless_dm SECONDS [VAR...]: where device-mapper does not work (and not already in a
# guest), run this script in a guest booted by tests/vm/vm-run, with SECONDS as its limit and
# these variables passed on (besides the build paths and the sanitizer settings); the script's
# exit status is the guest's. Call it right after sourcing this file.
run_in_vm_unless_dm() {
    local limit=$1 v envs=(); shift
    [ -z "${VM_GUEST:-}" ] && [ -z "${CMEK_IN_VM:-}" ] && ! dm_works || return 0
    [ "$(id -u)" -eq 0 ] || skip "needs root"
    command -v qemu-system-x86_64 >/dev/null || skip "no device-mapper and no qemu"
    export CMEK_IN_VM=1 top_builddir top_srcdir
    for v in top_builddir top_srcdir CMEK_IN_VM "$@" CMEK_BUILD_FLAVOR ASAN_OPTIONS UBSAN_OPTIONS LSAN_OPTIONS; do
        envs+=(--env "$v")
    done
    # exec runs no EXIT trap: nothing of this test is left on the host
    trap - EXIT
    rm -rf "$TEST_TMP"
    exec "$top_srcdir/tests/vm/vm-run" --timeout "$limit" "${envs[@]}" "$(readlink -f "$0")"
}
