#!/bin/bash
# SPDX-License-Identifier: LGPL-2.1-or-later
# Bad clients never crash or stall cmekd: truncated JSON, oversized messages, binary garbage,
# 1,000 silent connections, a client that disconnects mid-reply. A well-behaved client is
# served throughout and the daemon's memory stays bounded.
. "${top_srcdir:-$(dirname "$0")/../..}/tests/lib.sh"
need_root
need_cmd python3

start_cmekd
rss0=$(awk '/^VmRSS/ {print $2}' /proc/$CMEKD_PID/status)

python3 - "$SOCK" "$CMEKD_PID" <<'PY'
import json, os, socket, sys, time
path, pid = sys.argv[1], int(sys.argv[2])

def conn():
    s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    s.settimeout(10)
    s.connect(path)
    return s

pending = {}
def recv_msg(s):
    # one NUL-terminated message; keeps what follows it for the next call
    buf = pending.pop(s.fileno(), b"")
    while b"\0" not in buf:
        d = s.recv(65536)
        if not d:
            return buf or None
        buf += d
    msg, rest = buf.split(b"\0", 1)
    if rest:
        pending[s.fileno()] = rest
    return msg

def call(s, method, params=None):
    m = {"method": method}
    if params is not None:
        m["parameters"] = params
    s.sendall(json.dumps(m).encode() + b"\0")
    r = recv_msg(s)
    return json.loads(r) if r else None

def healthy():
    s = conn()
    r = call(s, "org.varlink.service.GetInfo")
    s.close()
    assert r and "io.cmek.Service" in r["parameters"]["interfaces"], r

def expect_error_then_close(payload, error):
    s = conn()
    s.sendall(payload)
    r = recv_msg(s)
    assert r is not None, "no reply to bad input %r" % payload[:40]
    r = json.loads(r)
    assert r.get("error") == error, (r, error)
    assert s.recv(10) == b"", "connection should be closed after %s" % error
    s.close()

# 1. truncated JSON, NUL-terminated
expect_error_then_close(b'{"method": "org.varlink.service.GetInfo"\0', "io.cmek.MalformedMessage")
healthy()
# 2. binary garbage
expect_error_then_close(bytes(range(1, 256)) * 4 + b"\0", "io.cmek.MalformedMessage")
healthy()
# 3. a message over the size limit (128 KiB) without a NUL
s = conn()
try:
    s.sendall(b"{" + b" " * (200 * 1024))
except (BrokenPipeError, ConnectionResetError):
    pass
r = recv_msg(s)
assert r and json.loads(r)["error"] == "io.cmek.MessageTooLarge", r
s.close()
healthy()
# 4. valid JSON but not an object / no method
expect_error_then_close(b'[1,2,3]\0', "io.cmek.MalformedMessage")
expect_error_then_close(b'{"parameters":{}}\0', "io.cmek.MalformedMessage")
# 5. parameters of the wrong type get InvalidParameter and the connection lives on
s = conn()
r = call(s, "io.cmek.Service.PolicyCheck", {"verb": 5})
assert r["error"] == "org.varlink.service.InvalidParameter", r
r = call(s, "org.varlink.service.GetInfo")
assert "parameters" in r
s.close()
# 6. 1,000 connections that never send; the good client is still served
silent = []
for i in range(1000):
    silent.append(conn())
t = time.time()
healthy()
assert time.time() - t < 2, "good client stalled behind silent ones"
# 7. pipelined calls on one connection are answered in order
s = conn()
s.sendall(b''.join(json.dumps({"method": "org.varlink.service.GetInterfaceDescription",
                               "parameters": {"interface": i}}).encode() + b"\0"
                   for i in ["io.cmek.Service", "org.varlink.service", "io.cmek.Events"] * 50))
for i in ["io.cmek.Service", "org.varlink.service", "io.cmek.Events"] * 50:
    r = json.loads(recv_msg(s))
    assert ("interface " + i) in r["parameters"]["description"], r
s.close()
# 8. clients that disconnect mid-reply: ask for a large reply, read nothing, close
for i in range(200):
    c = conn()
    c.sendall(b''.join(json.dumps({"method": "org.varlink.service.GetInterfaceDescription",
                                   "parameters": {"interface": "org.varlink.service"}}).encode() + b"\0"
                       for _ in range(100)))
    c.close()
healthy()
for c in silent:
    c.close()
healthy()
# 9. many concurrent well-behaved clients, each with several calls
socks = [conn() for _ in range(200)]
for s in socks:
    s.sendall(json.dumps({"method": "io.cmek.Service.Status"}).encode() + b"\0")
for s in socks:
    r = json.loads(recv_msg(s))
    assert r["parameters"]["version"], r
    s.close()
print("bad-input checks passed")
PY

sleep 0.5
rss1=$(awk '/^VmRSS/ {print $2}' /proc/$CMEKD_PID/status)
fds=$(ls /proc/$CMEKD_PID/fd | wc -l)
log "RSS before ${rss0} kB, after ${rss1} kB; open fds after: $fds"
kill -0 "$CMEKD_PID" || fail "cmekd died"
[ "$fds" -lt 64 ] || fail "cmekd still holds $fds descriptors after all clients left"
# bound: mlockall makes RSS honest; allow 64 MiB of growth (ASan's shadow memory is larger)
limit=$((64 * 1024)); [ "${CMEK_BUILD_FLAVOR:-}" = asan ] && limit=$((512 * 1024))
[ $((rss1 - rss0)) -lt $limit ] || fail "RSS grew by $((rss1 - rss0)) kB"
log "ok"
