#!/bin/bash
# SPDX-License-Identifier: LGPL-2.1-or-later
# Issue 13, findings 11, 12 and 14, replayed by real unprivileged users against a real daemon,
# SoftHSM2 token and LUKS2 images: names and paths with escape sequences are refused and nothing is
# created; strings from outside reach the terminal escaped; the metrics file is 0640 with the
# configured group; hooks that are not root-owned, writable by others or symlinks are not run, and a
# good one runs with only CMEK_* + PATH, no capabilities, no_new_privs; the token plugin talks only
# to a root broker; GetWrappingKey creation needs manage vaults; vault compartments are enforced.
. "${top_srcdir:-$(dirname "$0")/../..}/tests/lib.sh"
need_root
need_cmd cryptsetup socat python3 sha256sum od groupadd usermod setpriv

chmod 755 "$TEST_TMP"
add_test_user ckhdev
add_test_user ckhnone
add_test_user ckhmet

POLICY=$TEST_TMP/policy
cat >"$POLICY" <<'P'
allow group root to manage all-resources in tenancy
allow user ckhdev to manage keys in compartment Dev
allow user ckhdev to manage volumes in compartment Dev
allow user ckhdev to use keys in compartment Dev
allow user ckhdev to read vaults in tenancy
allow user ckhdev to read audit in tenancy
P
CONF=$TEST_TMP/cmekd.conf
HOOKS=$TEST_TMP/hooks
mkdir -p "$HOOKS"
chmod 755 "$HOOKS"
METRICS=$TEST_TMP/metrics/cmekd.prom
mkdir -p "$TEST_TMP/metrics"
chmod 755 "$TEST_TMP/metrics"
groupadd -f ckhmetg
on_exit "groupdel ckhmetg >/dev/null 2>&1 || true"
usermod -aG ckhmetg ckhmet
cat >"$CONF" <<C
[metrics]
group = ckhmetg

# the embedded vault serves Dev and Ops only; the (absent) HSM serves Prod only
[vault default]
compartments = Dev Ops

[vault hsm]
compartments = Prod
C
# as under the shipped unit, the daemon has no CAP_SETPCAP (it cannot shrink a child's bounding set):
# a hook's capabilities must go through capset() + no_new_privs
printf '#!/bin/sh\nexec setpriv --bounding-set=-setpcap -- "%s" "$@"\n' "$CMEKD" >"$TEST_TMP/cmekd-no-setpcap"
chmod 755 "$TEST_TMP/cmekd-no-setpcap"
CMEKD=$TEST_TMP/cmekd-no-setpcap
start_cmekd "" --policy "$POLICY" --config "$CONF" --hooks-dir "$HOOKS" --metrics-file "$METRICS"
[ $(( 0x$(sed -n 's/^CapBnd:\t//p' "/proc/$CMEKD_PID/status") & (1 << 8) )) -eq 0 ] || fail "the daemon still has CAP_SETPCAP"
chmod 755 "$STATE"
I=$TEST_TMP/img
mkdir -p "$I"
chmod 777 "$I"

cmekctl key create devkey --compartment Dev >/dev/null
DEVKEY=$(key_id Dev/devkey)

# ---------------------------------------------------------------------------------------------
log "11: names and paths with control characters are refused with InvalidParameter, nothing is created"
ESC=$'\e'
reg_sum() { sha256sum "$STATE/volumes.json" 2>/dev/null || echo none; }
before_reg=$(reg_sum)
before_keys=$(cmekctl key list --json)
expect_exit "$EXIT_USAGE" as_user_ctl ckhdev key create "evil${ESC}[2J" --compartment Dev
assert_contains "$(cat "$TEST_TMP/err")" "org.varlink.service.InvalidParameter"
assert_contains "$(cat "$TEST_TMP/err")" '"name" contains control characters'
! grep -qP '\x1b' "$TEST_TMP/err" || fail "the refusal echoed the escape sequence raw"
expect_exit "$EXIT_USAGE" as_user_ctl ckhdev key create evil --compartment "Dev${ESC}]0;pwned${ESC}\\"
assert_contains "$(cat "$TEST_TMP/err")" '"compartment" contains control characters'
expect_exit "$EXIT_USAGE" as_user_ctl ckhdev key create evil2 --compartment Dev --vault "default"$'\n'"x"
assert_contains "$(cat "$TEST_TMP/err")" '"vault" contains control characters'
[ "$(cmekctl key list --json)" = "$before_keys" ] || fail "a key was created from a refused request"
badimg="$I/vol${ESC}[31mred.img"
expect_exit "$EXIT_USAGE" as_user_ctl ckhdev volume create "$badimg" --key "$DEVKEY" --size 16M
assert_contains "$(cat "$TEST_TMP/err")" '"path" contains control characters'
[ ! -e "$badimg" ] || fail "volume create made a file with an escape sequence in its name"
truncate -s 32M "$I/ok.img"
chmod 666 "$I/ok.img"
expect_exit "$EXIT_USAGE" as_user_ctl ckhdev volume unlock "$I/ok.img" --name "cmek${ESC}[8m"
assert_contains "$(cat "$TEST_TMP/err")" '"name" contains control characters'
printf 'pw' | cryptsetup luksFormat -q --type luks2 --pbkdf pbkdf2 --pbkdf-force-iterations 1000 --key-file - "$I/ok.img"
sum_ok=$(sha256sum <"$I/ok.img")
expect_exit "$EXIT_USAGE" as_user_ctl ckhdev volume bind "$I/ok.img"$'\t' --key "$DEVKEY" --unlock-passphrase-stdin < <(printf pw)
assert_contains "$(cat "$TEST_TMP/err")" '"device" contains control characters'
# raw Varlink: an array of paths, and a parameter whose *name* carries the escape
raw=$(printf '%s\0' '{"method":"io.cmek.Volume.Scan","parameters":{"paths":["/tmp/a\u001b[2Jb"]}}' | as_user ckhdev socat -t 5 - "UNIX-CONNECT:$SOCK" | tr -d '\0')
[ "$(json_get "$raw" error)" = org.varlink.service.InvalidParameter ] || fail "Scan with an escape in paths: $raw"
[ "$(json_get "$raw" parameters.parameter)" = paths ] || fail "Scan: parameter not named: $raw"
raw=$(printf '%s\0' '{"method":"io.cmek.Key.List","parameters":{"x\u001b[2J":"y\u0007"}}' | as_user ckhnone socat -t 5 - "UNIX-CONNECT:$SOCK" | tr -d '\0')
[ "$(json_get "$raw" error)" = org.varlink.service.InvalidParameter ] || fail "a key with an escape: $raw"
assert_not_contains "$raw" $'\e'
[ "$(reg_sum)" = "$before_reg" ] || fail "the registry changed"
[ "$(sha256sum <"$I/ok.img")" = "$sum_ok" ] || fail "the image changed"
! grep -q '"result":"ok".*\\u001b' "$STATE/audit.log" || fail "an ok audit line carries an escape"
! grep -qP '\x1b' "$TEST_TMP/cmekd.log" || fail "the daemon log carries a raw escape"

log "11: strings from outside (an old audit line) are shown escaped by cmekctl"
# a line as an older cmekd wrote it (before names were checked): JSON keeps the escape as \u001b
printf '%s\n' '{"seq":99999,"time":"2026-01-01T00:00:00.000000Z","time_usec":1767225600000000,"event":"volume.locked","operation":"io.cmek.Volume.Lock","result":"ok","uid":0,"gid":0,"pid":1,"volume":"/dev/evil\u001b[2J\u001b]0;owned\u0007\n","prev":"0000000000000000000000000000000000000000000000000000000000000000","hash":"0000000000000000000000000000000000000000000000000000000000000000"}' >>"$STATE/audit.log"
as_user_ctl ckhdev audit show >"$TEST_TMP/show" 2>&1 || { cat "$TEST_TMP/show"; fail "audit show failed"; }
grep -q '/dev/evil' "$TEST_TMP/show" || { cat "$TEST_TMP/show"; fail "the old line is not shown"; }
! grep -qP '[\x00-\x08\x0b-\x1f\x7f]' "$TEST_TMP/show" || { od -c "$TEST_TMP/show" | tail; fail "raw control characters reached the terminal"; }
grep -qF '/dev/evil\x1b[2J\x1b]0;owned\a\n' "$TEST_TMP/show" || { cat "$TEST_TMP/show"; fail "not escaped as \\x1b"; }
# the rest of that row is still one line
[ "$(grep -c '/dev/evil' "$TEST_TMP/show")" = 1 ] || fail "the row was split"
# --json keeps the exact value (JSON escapes it)
as_user_ctl ckhdev audit show --json | grep -qF '\u001b[2J' || fail "audit show --json lost the value"

# ---------------------------------------------------------------------------------------------
log "12: the metrics file is 0640 root:ckhmetg, unreadable by a user outside the group"
cmekctl key disable "$DEVKEY" >/dev/null   # an event: the file is rewritten
cmekctl key enable "$DEVKEY" >/dev/null
[ -s "$METRICS" ] || fail "no metrics file"
[ "$(stat -c '%a %U %G' "$METRICS")" = "640 root ckhmetg" ] || fail "metrics file is $(stat -c '%a %U %G' "$METRICS")"
grep -q "$DEVKEY" "$METRICS" || fail "the metrics file does not carry the key (wrong file?)"
! as_user ckhnone cat "$METRICS" >/dev/null 2>&1 || fail "a user without the group reads the metrics file"
! as_user ckhdev cat "$METRICS" >/dev/null 2>&1 || fail "a policy user outside the group reads the metrics file"
as_user ckhmet cat "$METRICS" | grep -q "$DEVKEY" || fail "a member of the configured group cannot read it"
# no temporary file left readable
[ -z "$(find "$TEST_TMP/metrics" -name '.*cmek-tmp' -perm -o=r)" ] || fail "a world-readable temporary file is left"

# ---------------------------------------------------------------------------------------------
log "14: hooks: symlink, group-writable, not root-owned are not run; a good one runs bare"
OUT=$TEST_TMP/hookout
mkdir -p "$OUT" "$TEST_TMP/elsewhere"
chmod 755 "$OUT"
mkhook() { # FILE NAME: a hook that leaves a marker
    printf '#!/bin/sh\ncat >/dev/null\n: >"%s/marker-%s"\n' "$OUT" "$2" >"$1"
    chmod 755 "$1"
}
cat >"$HOOKS/10-good" <<EOH
#!/bin/sh
cat >"$OUT/event.\$\$"
o=\$(readlink /proc/\$\$/fd/1); echo "\$o" >"$OUT/stdout"
tr '\\0' '\\n' </proc/\$\$/environ >"$OUT/env"
cat /proc/\$\$/status >"$OUT/status"
ls -l /proc/\$\$/fd >"$OUT/fds"
: >"$OUT/done-good"
EOH
chmod 755 "$HOOKS/10-good"
mkhook "$TEST_TMP/elsewhere/real" link
ln -s "$TEST_TMP/elsewhere/real" "$HOOKS/20-link"
mkhook "$HOOKS/30-gw" gw
chmod 775 "$HOOKS/30-gw"
mkhook "$HOOKS/40-user" user
chown ckhdev "$HOOKS/40-user"
mkhook "$HOOKS/50-ow" ow
chmod 757 "$HOOKS/50-ow"
# a file name with an escape sequence: the warning naming it reaches the log escaped
mkhook "$HOOKS/60-esc"$'\e[2J\e]0;x\a' esc
chmod 775 "$HOOKS/60-esc"$'\e[2J\e]0;x\a'
printf '#!/bin/sh\ncat >/dev/null\n: >"%s/done-last"\n' "$OUT" >"$HOOKS/99-last"
chmod 755 "$HOOKS/99-last"
wait_file() { for ((i = 0; i < 200; i++)); do [ -e "$1" ] && return 0; sleep 0.05; done; return 1; }
cmekctl key disable "$DEVKEY" >/dev/null
wait_file "$OUT/done-good" || fail "the good hook did not run"
wait_file "$OUT/done-last" || fail "the last good hook did not run"
sleep 0.5
for b in link gw user ow esc; do
    [ ! -e "$OUT/marker-$b" ] || fail "hook '$b' ran"
done
grep -q "Hook $HOOKS/20-link is a symbolic link" "$TEST_TMP/cmekd.log" || fail "no warning naming the symlink"
grep -q "Hook $HOOKS/30-gw is writable by group or others" "$TEST_TMP/cmekd.log" || fail "no warning for the group-writable hook"
grep -q "Hook $HOOKS/50-ow is writable by group or others" "$TEST_TMP/cmekd.log" || fail "no warning for the other-writable hook"
grep -q "Hook $HOOKS/40-user is not owned by root" "$TEST_TMP/cmekd.log" || fail "no warning for the hook owned by ckhdev"
grep -qF "Hook $HOOKS/60-esc\x1b[2J\x1b]0;x\a is writable by group or others" "$TEST_TMP/cmekd.log" ||
    fail "the warning for a hook with an escape in its name is missing or not escaped"
! grep -qP '[\x00-\x08\x0b-\x1f\x7f]' "$TEST_TMP/cmekd.log" || fail "raw control characters in the daemon log"
# environment: PATH and CMEK_* only
grep -qx 'CMEK_EVENT=key.disabled' "$OUT/env" || { cat "$OUT/env"; fail "CMEK_EVENT missing"; }
grep -q '^PATH=' "$OUT/env" || fail "no PATH"
! grep -v -E '^(PATH|CMEK_[A-Z0-9_]+)=' "$OUT/env" | grep -q . || { cat "$OUT/env"; fail "the hook inherited other variables"; }
# no capabilities, no_new_privs, no inherited descriptors beyond stdio (dash keeps its script open)
grep -qP '^CapEff:\t0+$' "$OUT/status" || { grep Cap "$OUT/status"; fail "the hook has effective capabilities"; }
grep -qP '^CapPrm:\t0+$' "$OUT/status" || fail "the hook has permitted capabilities"
grep -qP '^CapAmb:\t0+$' "$OUT/status" || fail "the hook has ambient capabilities"
grep -qP '^NoNewPrivs:\t1$' "$OUT/status" || fail "the hook runs without no_new_privs"
! grep -q 'socket:' "$OUT/fds" || { cat "$OUT/fds"; fail "the hook inherited a socket"; }
! grep -q "$STATE" "$OUT/fds" || { cat "$OUT/fds"; fail "the hook inherited a state file"; }
[ "$(cat "$OUT/stdout")" = /dev/null ] || fail "stdout is $(cat "$OUT/stdout"), not /dev/null"
grep -q ' 0 -> pipe:' "$OUT/fds" || { cat "$OUT/fds"; fail "stdin is not the event pipe"; }
grep -q '"type":"key.disabled"' "$OUT"/event.* || fail "the event was not on stdin"

log "14: a hooks directory writable by others runs nothing"
rm -f "$OUT"/done-* "$OUT"/env
chmod 777 "$HOOKS"
cmekctl key enable "$DEVKEY" >/dev/null
for ((i = 0; i < 100; i++)); do grep -q "Hooks directory $HOOKS is writable by group or others" "$TEST_TMP/cmekd.log" && break; sleep 0.05; done
grep -q "Hooks directory $HOOKS is writable by group or others" "$TEST_TMP/cmekd.log" || fail "no warning for the writable hooks directory"
sleep 0.5
[ ! -e "$OUT/done-good" ] || fail "a hook ran from a world-writable directory"
chmod 755 "$HOOKS"
rm -f "$HOOKS"/*

# ---------------------------------------------------------------------------------------------
log "14: the token plugin refuses a broker socket served by a non-root user (CMEKD_SOCKET)"
install_token_plugin
cmekctl volume create "$I/plug.img" --key "$DEVKEY" --size 32M --strict >/dev/null
cryptsetup open --test-passphrase --token-only "$I/plug.img" || fail "the plugin does not open through the real cmekd"
FAKE=$TEST_TMP/fake
mkdir -p "$FAKE"
chown ckhnone "$FAKE"
as_user ckhnone socat -u "UNIX-LISTEN:$FAKE/sock" "OPEN:$FAKE/received,creat,append" &
FAKE_PID=$!
on_exit "kill $FAKE_PID 2>/dev/null || true"
for ((i = 0; i < 100; i++)); do [ -S "$FAKE/sock" ] && break; sleep 0.05; done
[ -S "$FAKE/sock" ] || fail "the fake listener did not start"
sum_plug=$(sha256sum <"$I/plug.img")
# other tests running in parallel install their own build of the plugin: put ours back just before
install_token_plugin
rc=0
CMEKD_SOCKET=$FAKE/sock LD_PRELOAD="${CMEK_SAN_PRELOAD:-}" ASAN_OPTIONS=detect_leaks=0:verify_asan_link_order=0 timeout 20 cryptsetup open --test-passphrase --token-only "$I/plug.img" 2>"$TEST_TMP/err" || rc=$?
[ $rc -ne 0 ] || fail "opened through a socket served by a user"
[ $rc -ne 124 ] || fail "the plugin waited for the fake broker (it talked to it)$(cmp -s "$PLUGIN" "$TOKENDIR/libcryptsetup-token-cmek.so" || echo "; another test replaced the installed plugin meanwhile: re-run")"
assert_contains "$(cat "$TEST_TMP/err")" "is served by uid $(id -u ckhnone), not root: refusing"
sleep 0.2
[ ! -s "$FAKE/received" ] || { od -c "$FAKE/received" | head; fail "the fake broker received data"; }
[ "$(sha256sum <"$I/plug.img")" = "$sum_plug" ] || fail "the image changed"
kill "$FAKE_PID" 2>/dev/null || true
# the real broker still works with the variable pointing at it
CMEKD_SOCKET=$SOCK cryptsetup open --test-passphrase --token-only "$I/plug.img" || fail "the plugin no longer opens through cmekd"

log "14: in a setuid program the plugin ignores CMEKD_SOCKET (secure_getenv)"
TOKEN_OPEN=$top_builddir/tests/integration/token-open
[ -x "$TOKEN_OPEN" ] || fail "tests/integration/token-open not built"
CMEKD_SOCKET=$SOCK "$TOKEN_OPEN" "$I/plug.img" 2>"$TEST_TMP/err" || { cat "$TEST_TMP/err"; fail "token-open does not open through cmekd"; }
cp "$TOKEN_OPEN" "$FAKE/suid-open"
chown root:root "$FAKE/suid-open"
chmod 4755 "$FAKE/suid-open"
cp "$TOKEN_OPEN" "$FAKE/plain-open"
chmod 755 "$FAKE/plain-open"
cp "$I/plug.img" "$FAKE/plug-copy.img"
chmod 644 "$FAKE/plug-copy.img"
as_user ckhnone socat -u "UNIX-LISTEN:$FAKE/sock2" "OPEN:$FAKE/received2,creat,append" &
FAKE_PID=$!
on_exit "kill $FAKE_PID 2>/dev/null || true"
for ((i = 0; i < 100; i++)); do [ -S "$FAKE/sock2" ] && break; sleep 0.05; done
install_token_plugin
rc=0
as_user ckhnone env CMEKD_SOCKET="$FAKE/sock2" timeout 20 "$FAKE/suid-open" "$FAKE/plug-copy.img" 2>"$TEST_TMP/err" || rc=$?
[ $rc -ne 0 ] || fail "the setuid program opened the volume"
assert_not_contains "$(cat "$TEST_TMP/err")" "$FAKE/sock2"
assert_contains "$(cat "$TEST_TMP/err")" "/run/cmekd/io.cmek.socket"
sleep 0.2
kill -0 "$FAKE_PID" 2>/dev/null || fail "the setuid program connected to the socket named by CMEKD_SOCKET"
# the same program without setuid honours the variable (and the peer check refuses the user's socket)
rc=0
as_user ckhnone env CMEKD_SOCKET="$FAKE/sock2" timeout 20 "$FAKE/plain-open" "$FAKE/plug-copy.img" 2>"$TEST_TMP/err" || rc=$?
[ $rc -ne 0 ] || fail "opened through the user's socket"
assert_contains "$(cat "$TEST_TMP/err")" "$FAKE/sock2 is served by uid $(id -u ckhnone), not root"
[ ! -s "$FAKE/received2" ] || fail "the fake broker received data"
kill "$FAKE_PID" 2>/dev/null || true

# ---------------------------------------------------------------------------------------------
log "14: GetWrappingKey: read vaults cannot create the RSA pair, manage vaults can, read then reads it"
PIN=$(sed -n 's/^user-pin=//p' "$STATE/pins")
rsa_objects() {
    SOFTHSM2_CONF=$STATE/softhsm2.conf pkcs11-tool --module /usr/lib/softhsm/libsofthsm2.so --token-label cmekd-default \
        --login --pin "$PIN" --list-objects 2>/dev/null | grep -c 'Key Object; RSA' || true
}
have_p11=0
if command -v pkcs11-tool >/dev/null && [ -e /usr/lib/softhsm/libsofthsm2.so ]; then have_p11=1; fi
[ $have_p11 = 0 ] || [ "$(rsa_objects)" = 0 ] || fail "an RSA object exists before the test"
audit_lines=$(wc -l <"$STATE/audit.log")
expect_exit "$EXIT_PERMISSION" as_user_ctl ckhdev key wrapping-key
assert_contains "$(cat "$TEST_TMP/err")" "io.cmek.PermissionDenied"
assert_contains "$(cat "$TEST_TMP/err")" "has no wrapping key yet: an admin with manage vaults must create it"
[ ! -s "$TEST_TMP/out" ] || fail "a PEM was printed"
[ $have_p11 = 0 ] || [ "$(rsa_objects)" = 0 ] || fail "read vaults created an RSA key pair in the token"
! tail -n +"$((audit_lines + 1))" "$STATE/audit.log" | grep -q '"event":"vault.wrapping-key-created"' ||
    fail "a wrapping-key creation was audited"
tail -n +"$((audit_lines + 1))" "$STATE/audit.log" | grep '"event":"policy.denied"' | grep -q "\"uid\":$(id -u ckhdev)," ||
    fail "the refusal was not audited"
# root (manage vaults) creates it, audited; read vaults now reads the same key
cmekctl key wrapping-key --out "$TEST_TMP/wrap.pem"
grep -q '"event":"vault.wrapping-key-created".*"result":"ok"' "$STATE/audit.log" || fail "creation not audited"
[ $have_p11 = 0 ] || [ "$(rsa_objects)" = 2 ] || fail "expected the RSA pair in the token, found $(rsa_objects) objects"
as_user_ctl ckhdev key wrapping-key | cmp - "$TEST_TMP/wrap.pem" || fail "read vaults does not read the existing key"

# ---------------------------------------------------------------------------------------------
log "14: vault compartments: a key for a compartment outside the vault's list is refused"
before_keys=$(cmekctl key list --json)
expect_exit "$EXIT_USAGE" cmekctl key create prodkey --compartment Prod
assert_contains "$(cat "$TEST_TMP/err")" "org.varlink.service.InvalidParameter"
assert_contains "$(cat "$TEST_TMP/err")" "Vault 'default' holds keys of compartments Dev, Ops only"
assert_contains "$(cat "$TEST_TMP/err")" "not of 'Prod'"
expect_exit "$EXIT_USAGE" cmekctl key import prodimp --compartment Prod --wrapped-file "$TEST_TMP/wrap.pem"
assert_contains "$(cat "$TEST_TMP/err")" "Vault 'default' holds keys of compartments Dev, Ops only"
expect_exit "$EXIT_USAGE" as_user_ctl ckhdev key create devhsm --compartment Dev --vault hsm
assert_contains "$(cat "$TEST_TMP/err")" "Vault 'hsm' holds keys of compartment Prod only"
[ "$(cmekctl key list --json)" = "$before_keys" ] || fail "a key was created in a vault that does not serve its compartment"
! grep -q '"event":"key.created".*Prod' "$STATE/audit.log" || fail "a Prod key creation was audited"
# allowed compartments still work, and the list is visible
cmekctl key create opskey --compartment Ops >/dev/null
as_user_ctl ckhdev key create devkey2 --compartment Dev >/dev/null
cmekctl vault show default --json | grep -q '"compartments"' || fail "vault show does not list the compartments"
v=$(cmekctl vault show default --json)
[ "$(json_get "$v" vault.compartments)" = '["Dev", "Ops"]' ] || fail "compartments: $(json_get "$v" vault.compartments)"
cmekctl vault show default | grep -q 'compartments: Dev, Ops' || fail "vault show does not print the compartments"

log "ok"
