#!/bin/bash
# SPDX-License-Identifier: LGPL-2.1-or-later
# cmekd.conf has one parser: cmekd --check-config reports every error with FILE:LINE and exits
# non-zero, the daemon refuses to start on the same errors (a misspelled [enforcment] used to be
# ignored: volumes were suspended instead of closed).
. "${top_srcdir:-$(dirname "$0")/../..}/tests/lib.sh"
need_root
need_cmd python3 socat

C=$TEST_TMP/conf
mkdir -p "$C"
chmod 755 "$TEST_TMP" "$C"

# check FILE LINE NEEDLE: --check-config on FILE exits non-zero and says FILE:LINE: ...NEEDLE...
check_reports() {
    local file=$1 line=$2 needle=$3 rc=0
    "$CMEKD" --check-config --config "$file" >"$TEST_TMP/out" 2>"$TEST_TMP/err" || rc=$?
    [ $rc -ne 0 ] || { cat "$TEST_TMP/out" "$TEST_TMP/err" >&2; fail "--check-config accepted $file"; }
    grep -qF -- "$file:$line: " "$TEST_TMP/err" || { cat "$TEST_TMP/err" >&2; fail "no error at $file:$line"; }
    grep -F -- "$file:$line: " "$TEST_TMP/err" | grep -qF -- "$needle" ||
        { cat "$TEST_TMP/err" >&2; fail "the error at $file:$line does not say '$needle'"; }
}

log "a misspelled section, an unknown key, a bad value, a token that is no pkcs11: URI"
cat >"$C/misspelled.conf" <<'EOF'
# the enforcement section, misspelled
[enforcment]
on-disable = close
EOF
check_reports "$C/misspelled.conf" 2 "unknown section [enforcment]"
assert_contains "$(cat "$TEST_TMP/err")" "[enforcement]"      # says what is allowed

cat >"$C/unknown-key.conf" <<'EOF'
[limits]
connections-per-uid = 64
request-per-second = 10
EOF
check_reports "$C/unknown-key.conf" 3 "unknown setting 'request-per-second' in [limits]"
assert_contains "$(cat "$TEST_TMP/err")" "requests-per-second"

cat >"$C/bad-value.conf" <<'EOF'
[enforcement]
watch-interval = 5

on-disable = shut
EOF
check_reports "$C/bad-value.conf" 4 "on-disable is 'suspend' or 'close', not 'shut'"

cat >"$C/bad-number.conf" <<'EOF'
[limits]
idle-timeout = 9000
EOF
check_reports "$C/bad-number.conf" 2 "idle-timeout is seconds between 1 and 3600, not '9000'"

cat >"$C/bad-uri.conf" <<'EOF'
[vault hsm]
module = /usr/lib/vendor/libvendorpkcs11.so
token = token=prod-hsm
EOF
check_reports "$C/bad-uri.conf" 3 "starting with 'pkcs11:'"

log "all errors of one file are reported, each with its line"
cat "$C/misspelled.conf" "$C/unknown-key.conf" "$C/bad-uri.conf" >"$C/all.conf"
expect_exit 1 "$CMEKD" --check-config --config "$C/all.conf"
for l in 2 6 9; do grep -qF "$C/all.conf:$l: " "$TEST_TMP/err" || { cat "$TEST_TMP/err" >&2; fail "line $l not reported"; }; done
assert_contains "$(cat "$TEST_TMP/err")" "3 errors"

log "a valid configuration, and the example of cmekd.conf(5), exit 0"
cat >"$C/valid.conf" <<'EOF'
; every section
[vault default]
compartments = Dev, Test

[vault hsm]
module = /usr/lib/vendor/libvendorpkcs11.so
token = pkcs11:token=prod-hsm
pin-credential = prod-hsm-pin
compartments = Prod

[enforcement]
on-disable = close
watch-interval = 0.5

[events]
hook-timeout = 30

[limits]
connections-max = 1K
output-per-uid = 8M
idle-timeout = 120

[metrics]
group = 0
EOF
expect_exit 0 "$CMEKD" --check-config --config "$C/valid.conf"
assert_contains "$(cat "$TEST_TMP/out")" "valid"
# the man page's example names the group node_exporter
if ! getent group node_exporter >/dev/null; then
    groupadd node_exporter
    on_exit "groupdel node_exporter >/dev/null 2>&1 || true"
fi
sed -n '/^\.SH EXAMPLE/,/^\.fi/p' "$top_srcdir/man/cmekd.conf.5" | sed '1,2d;$d' >"$C/example.conf"
grep -q '^\[vault' "$C/example.conf" || fail "no example found in cmekd.conf(5)"
expect_exit 0 "$CMEKD" --check-config --config "$C/example.conf"

log "a bad policy is reported with its line; a missing --config file is an error"
printf 'allow group wheel to manage keys in tenancy\nallow user root to frobnicate keys\n' >"$C/policy"
expect_exit 1 "$CMEKD" --check-config --config "$C/valid.conf" --policy "$C/policy"
assert_contains "$(cat "$TEST_TMP/err")" "$C/policy:2:"
printf 'allow group wheel to manage keys in tenancy\n' >"$C/policy"
expect_exit 0 "$CMEKD" --check-config --config "$C/valid.conf" --policy "$C/policy"
expect_exit 1 "$CMEKD" --check-config --config "$C/nonexistent.conf"
assert_contains "$(cat "$TEST_TMP/err")" "$C/nonexistent.conf"

log "--check-config needs no privilege, no token and no socket"
add_test_user ckcfguser
chmod 644 "$C"/*.conf "$C/policy"
out=$(as_user ckcfguser "$CMEKD" --check-config --config "$C/valid.conf" --policy "$C/policy" 2>&1) ||
    fail "--check-config as an unprivileged user: $out"
rc=0; out=$(as_user ckcfguser "$CMEKD" --check-config --config "$C/misspelled.conf" 2>&1) || rc=$?
[ $rc -ne 0 ] || fail "--check-config as an unprivileged user accepted a bad file"
assert_contains "$out" "$C/misspelled.conf:2: unknown section [enforcment]"

log "the daemon refuses to start with the misspelled section, with the same message, and creates nothing"
rc=0
timeout 30 "$CMEKD" --state-dir "$TEST_TMP/state-bad" --socket "$TEST_TMP/bad.socket" --config "$C/misspelled.conf" \
    >"$TEST_TMP/start.log" 2>&1 || rc=$?
[ $rc -ne 0 ] && [ $rc -ne 124 ] || { cat "$TEST_TMP/start.log" >&2; fail "cmekd started (or hung) with an invalid configuration: $rc"; }
assert_contains "$(cat "$TEST_TMP/start.log")" "$C/misspelled.conf:2: unknown section [enforcment]"
assert_contains "$(cat "$TEST_TMP/start.log")" "not starting"
[ ! -e "$TEST_TMP/state-bad" ] && [ ! -e "$TEST_TMP/bad.socket" ] || fail "cmekd created its state or socket before refusing"

log "with the section spelled right, it starts and closes instead of suspending"
RUN=$C/run.conf
cp "$C/valid.conf" "$RUN"
METRICS=$TEST_TMP/metrics.prom
start_cmekd "" --config "$RUN" --metrics-file "$METRICS"
grep -q "on-disable=close, watching the keys of bound volumes every 0.5 s" "$TEST_TMP/cmekd.log" ||
    fail "the [enforcement] settings were not applied"
cmekctl status >/dev/null || fail "status"
[ "$(stat -c %g "$METRICS")" = 0 ] || fail "the metrics file's group is not root's"

# wait_log N TEXT: the daemon log has more than N lines and a line after line N says TEXT
wait_log() {
    local i
    for ((i = 0; i < 100; i++)); do
        tail -n +"$(($1 + 1))" "$TEST_TMP/cmekd.log" | grep -qF -- "$2" && return 0
        sleep 0.1
    done
    tail -n +"$(($1 + 1))" "$TEST_TMP/cmekd.log" >&2
    fail "the log does not say '$2' after SIGHUP"
}

log "SIGHUP with a broken configuration keeps the one in use, logs and audits why"
n=$(wc -l <"$TEST_TMP/cmekd.log")
bad=$(($(wc -l <"$RUN") + 2))
cat "$C/misspelled.conf" >>"$RUN"
kill -HUP "$CMEKD_PID"
wait_log "$n" "keeping the configuration in use"
tail -n +"$((n + 1))" "$TEST_TMP/cmekd.log" | grep -qF "$RUN:$bad: unknown section [enforcment]" ||
    { tail -n +"$((n + 1))" "$TEST_TMP/cmekd.log" >&2; fail "the reload error does not name $RUN:$bad"; }
kill -0 "$CMEKD_PID" || fail "cmekd died on a bad configuration"
cmekctl status >/dev/null || fail "status after a failed reload"
grep '"config.reloaded"' "$STATE/audit.log" | grep -q 'io.cmek.InvalidConfig' || fail "the failed reload is not audited"

log "SIGHUP applies a run-time setting ([metrics] group) and says a new vault needs a restart"
groupadd -f ckcfgmet
on_exit "groupdel ckcfgmet >/dev/null 2>&1 || true"
cp "$C/valid.conf" "$RUN"
sed -i 's/^group = 0$/group = ckcfgmet/' "$RUN"
printf '[vault later]\nmodule = /nonexistent/libpkcs11-later.so\ntoken = pkcs11:token=later\n' >>"$RUN"
n=$(wc -l <"$TEST_TMP/cmekd.log")
kill -HUP "$CMEKD_PID"
wait_log "$n" "[metrics] group= changed: applied"
wait_log "$n" "[vault later] added: needs a restart"
cmekctl key create cfgk --compartment Test >/dev/null
cmekctl key disable "$(key_id Test/cfgk)" >/dev/null      # an event: the metrics file is rewritten
for ((i = 0; i < 50; i++)); do [ "$(stat -c %G "$METRICS")" = ckcfgmet ] && break; sleep 0.1; done
[ "$(stat -c %G "$METRICS")" = ckcfgmet ] || fail "the new [metrics] group was not applied: $(stat -c %G "$METRICS")"
assert_not_contains "$(cmekctl vault list)" "later"    # a vault needs a restart
grep '"config.reloaded"' "$STATE/audit.log" | tail -1 | grep -q '"ok"' || fail "the reload is not audited"
stop_cmekd || fail "cmekd did not stop cleanly"
start_cmekd "$STATE" --config "$RUN" --metrics-file "$METRICS"
assert_contains "$(cmekctl vault list)" "libpkcs11-later.so"
stop_cmekd || fail "cmekd did not stop cleanly"
log "ok"
