#!/usr/bin/python3
# SPDX-License-Identifier: LGPL-2.1-or-later
# Hostile clients and load against a running cmekd (tests/integration/test-load.sh).
#   cmek-hostile.py SOCKET load N CLIENTS KEY_ID    N requests from CLIENTS concurrent connections:
#       valid calls (answered correctly), calls the policy denies (when run as a non-root user),
#       and garbage (answered with an error and/or closed); prints counts as JSON, exits 1 on a
#       wrong answer
#   cmek-hostile.py SOCKET fds N             opens up to N connections, holds them, checks the
#       daemon still answers on one more once they are closed; prints how many it got
#   cmek-hostile.py SOCKET huge              a valid request just under 128 KiB, one just over
#   cmek-hostile.py SOCKET nested            deeply nested JSON (depth 63 .. 100000)
#   cmek-hostile.py SOCKET noread SECONDS    pipelines requests without reading the replies
#   cmek-hostile.py SOCKET siege SECONDS MAXCONN KEY_ID    what one unprivileged user can do to
#       starve others: FLOODERS connections send requests as fast as they are answered (Key.Show
#       of KEY_ID, refused and audited, and Status), then connections are opened until the
#       daemon refuses them (at most MAXCONN) and each one pipelines requests with large replies
#       and never reads; all held for SECONDS; prints counts as JSON
#   cmek-hostile.py SOCKET trickle SECONDS   sends a request one byte every 0.5 s, never
#       completing it; prints after how many seconds the daemon closed the connection
import json
import os
import random
import resource
import socket
import sys
import threading
import time

MAX_REQUEST = 128 * 1024


def connect(path, timeout=30):
    s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    s.settimeout(timeout)
    s.connect(path)
    return s


def recv_msg(s, buf):
    while b"\0" not in buf[0]:
        d = s.recv(65536)
        if not d:
            return None
        buf[0] += d
    msg, _, buf[0] = buf[0].partition(b"\0")
    return json.loads(msg)


def call(s, buf, method, params=None):
    m = {"method": method}
    if params is not None:
        m["parameters"] = params
    s.sendall(json.dumps(m).encode() + b"\0")
    return recv_msg(s, buf)


GARBAGE = [
    b"\xff\xfe\x00",
    b"not json\0",
    b"[1,2,3]\0",
    b'{"parameters":{}}\0',
    b'{"method":42}\0',
    b'{"method":"io.cmek.Service.Status","parameters":[]}\0',
    b'{"method":"io.cmek.NoSuch.Method"}\0',
    b'{"method":"io.cmek.Key.NoSuchMethod"}\0',
    b'{"method":"io.cmek.Key.Show","parameters":{"key":17}}\0',
    b'{"method":"io.cmek.Volume.Unwrap","parameters":{"uuid":"x","token":{"type":"cmek"}}}\0',
    b'{"method":"io.cmek.Key.Import","parameters":{"name":"x","compartment":"p","wrapped":"===="}}\0',
    b'{"method":"io.cmek.Service.Status"',  # then EOF: never completed
]


def load(path, n, clients, key_id):
    lock = threading.Lock()
    stats = {"valid": 0, "denied": 0, "garbage": 0, "wrong": 0, "errors": []}
    root = os.getuid() == 0
    todo = [n]

    def take():
        with lock:
            if todo[0] <= 0:
                return False
            todo[0] -= 1
            return True

    def bump(k, err=None):
        with lock:
            stats[k] += 1
            if err and len(stats["errors"]) < 10:
                stats["errors"].append(err)

    def worker(seed):
        rnd = random.Random(seed)
        s, buf = None, [b""]
        while take():
            try:
                if s is None:
                    s, buf = connect(path), [b""]
                kind = rnd.random()
                if kind < 0.15:
                    g = rnd.choice(GARBAGE)
                    if rnd.random() < 0.3:
                        g = bytes(rnd.getrandbits(8) for _ in range(rnd.randint(1, 300))) + b"\0"
                    s.sendall(g)
                    if not g.endswith(b"\0"):
                        s.shutdown(socket.SHUT_WR)
                    try:
                        r = recv_msg(s, buf)
                    except (ConnectionError, socket.timeout, ValueError):
                        r = None
                    # garbage gets an error (or the connection closed), never parameters of success
                    if r is not None and "error" not in r:
                        bump("wrong", f"garbage {g[:60]!r} got {str(r)[:200]}")
                    else:
                        bump("garbage")
                    s.close()
                    s = None
                    continue
                if kind < 0.5:
                    r = call(s, buf, "io.cmek.Service.Status")
                    ok = r and "error" not in r and "version" in r["parameters"]
                elif kind < 0.7:
                    r = call(s, buf, "org.varlink.service.GetInfo")
                    ok = r and "error" not in r and "io.cmek.Key" in r["parameters"].get("interfaces", [])
                else:
                    r = call(s, buf, "io.cmek.Key.Show", {"key": key_id})
                    if root:
                        ok = r and "error" not in r and r["parameters"]["key"]["id"] == key_id
                    else:
                        # the policy lets others inspect, not read: refused, with the statement to add
                        if r and r.get("error") == "io.cmek.PermissionDenied":
                            bump("denied")
                            continue
                        ok = False
                if ok:
                    bump("valid")
                else:
                    bump("wrong", f"{str(r)[:300]}")
                if rnd.random() < 0.1:
                    s.close()
                    s = None
            except Exception as e:  # noqa: BLE001
                bump("wrong", f"{type(e).__name__}: {e}")
                if s:
                    s.close()
                s = None
        if s:
            s.close()

    t0 = time.monotonic()
    threads = [threading.Thread(target=worker, args=(i,)) for i in range(clients)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    stats["seconds"] = round(time.monotonic() - t0, 2)
    stats["clients"] = clients
    stats["requests"] = n
    print(json.dumps(stats))
    return 1 if stats["wrong"] else 0


def fds(path, n):
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    resource.setrlimit(resource.RLIMIT_NOFILE, (min(hard, n + 64), hard))
    socks = []
    refused = 0
    for _ in range(n):
        try:
            socks.append(connect(path, 5))
        except OSError:
            refused += 1
            break
    # which of them does the daemon serve? (beyond its limits it closes them)
    served = 0
    for s in socks[-50:] + socks[:50]:
        try:
            if call(s, [b""], "io.cmek.Service.Status"):
                served += 1
        except OSError:
            pass
    held = len(socks)
    for s in socks:
        s.close()
    time.sleep(0.5)
    s = connect(path, 10)
    r = call(s, [b""], "io.cmek.Service.Status")
    s.close()
    print(json.dumps({"opened": held, "refused": refused, "served_of_100": served, "after": bool(r and "error" not in r)}))
    return 0 if r and "error" not in r else 1


def huge(path):
    out = {}
    s, buf = connect(path), [b""]
    # valid JSON, unknown parameter: refused with InvalidParameter or ignored, but answered
    head = b'{"method":"io.cmek.Service.Status","parameters":{"pad":"'
    tail = b'"}}'
    pad = MAX_REQUEST - len(head) - len(tail) - 1
    s.sendall(head + b"a" * pad + tail + b"\0")
    r = recv_msg(s, buf)
    out["just_under"] = r.get("error", "ok") if r else None
    s.close()
    s, buf = connect(path), [b""]
    s.sendall(head + b"a" * (pad + 2) + tail + b"\0")
    try:
        r = recv_msg(s, buf)
    except ConnectionError:
        r = None
    out["just_over"] = r.get("error") if r else None
    s.close()
    print(json.dumps(out))
    return 0 if out["just_under"] and out["just_over"] == "io.cmek.MessageTooLarge" else 1


def nested(path):
    out = {}
    for depth in (32, 63, 65, 1000, 100000):
        s, buf = connect(path), [b""]
        params = b'{"x":' + b"[" * depth + b"]" * depth + b"}"
        msg = b'{"method":"io.cmek.Service.Status","parameters":' + params + b"}\0"
        if len(msg) > MAX_REQUEST:
            msg = b'{"method":"io.cmek.Service.Status","parameters":' + b"[" * (MAX_REQUEST - 100) + b"\0"
        try:
            s.sendall(msg)
            r = recv_msg(s, buf)
        except ConnectionError:
            r = None
        out[str(depth)] = (r.get("error") or "ok") if r else "closed"
        s.close()
    print(json.dumps(out))
    return 0


def noread(path, secs):
    s = connect(path)
    s.setblocking(False)
    req = b'{"method":"org.varlink.service.GetInfo"}\0' * 100
    sent = 0
    t_end = time.monotonic() + secs
    while time.monotonic() < t_end:
        try:
            sent += s.send(req)
        except BlockingIOError:
            time.sleep(0.01)
        except OSError:
            break  # the daemon dropped us
    s.close()
    print(json.dumps({"bytes_sent": sent}))
    return 0


FLOODERS = 8


def refused_or_closed(s):
    """Whether the daemon refused (io.cmek.Busy) or closed this connection, without consuming."""
    try:
        d = s.recv(65536, socket.MSG_PEEK | socket.MSG_DONTWAIT)
    except BlockingIOError:
        return None
    except OSError:
        return "closed"
    if not d:
        return "closed"
    if d.startswith(b'{"error":"io.cmek.Busy"'):
        return "busy"
    return None


def siege(path, secs, maxconn, key_id):
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    resource.setrlimit(resource.RLIMIT_NOFILE, (min(hard, maxconn + 256), hard))
    t_end = time.monotonic() + secs
    lock = threading.Lock()
    stats = {"flood_requests": 0, "flood_denied": 0, "flood_busy": 0, "flood_errors": 0}

    def flood(i):
        s, buf = None, [b""]
        while time.monotonic() < t_end:
            try:
                if s is None:
                    s, buf = connect(path, 5), [b""]
                if i % 2:
                    r = call(s, buf, "io.cmek.Key.Show", {"key": key_id})
                else:
                    r = call(s, buf, "io.cmek.Service.Status")
                with lock:
                    stats["flood_requests"] += 1
                    if r and r.get("error") == "io.cmek.PermissionDenied":
                        stats["flood_denied"] += 1
                    elif r and r.get("error") == "io.cmek.Busy":
                        stats["flood_busy"] += 1
                if r is None or r.get("error") == "io.cmek.Busy":
                    s.close()
                    s = None
                    time.sleep(0.05)
            except (OSError, ValueError):
                with lock:
                    stats["flood_errors"] += 1
                if s:
                    s.close()
                s = None
                time.sleep(0.05)
        if s:
            s.close()

    threads = [threading.Thread(target=flood, args=(i,)) for i in range(FLOODERS)]
    for t in threads:
        t.start()
    time.sleep(0.5)
    # hold every connection we may, each with replies queued that we never read
    req = b'{"method":"org.varlink.service.GetInterfaceDescription","parameters":{"interface":"io.cmek.Volume"}}\0' * 64
    socks, refused = [], 0
    while len(socks) + refused < maxconn and time.monotonic() < t_end:
        try:
            s = connect(path, 5)
        except OSError:
            refused += 1
            break
        s.setblocking(False)
        try:
            s.send(req)
        except OSError:
            pass
        socks.append(s)
        if len(socks) % 32 == 0:
            time.sleep(0.2)
            gone = [x for x in socks if refused_or_closed(x)]
            if gone:
                refused += len(gone)
                for x in gone:
                    socks.remove(x)
                    x.close()
                break  # at the limit
    time.sleep(1)
    gone = [x for x in socks if refused_or_closed(x)]
    for x in gone:
        socks.remove(x)
        x.close()
    refused += len(gone)
    stats["held"] = len(socks)
    stats["refused"] = refused
    # keep the pipes full while holding
    while time.monotonic() < t_end:
        for x in socks:
            try:
                x.send(req)
            except OSError:
                pass
        time.sleep(0.5)
    for t in threads:
        t.join()
    stats["held_at_end"] = sum(1 for x in socks if not refused_or_closed(x))
    for x in socks:
        x.close()
    print(json.dumps(stats))
    return 0


def trickle(path, secs):
    s = connect(path)
    msg = b'{"method":"io.cmek.Service.Status"}'
    t0 = time.monotonic()
    i = 0
    while time.monotonic() - t0 < secs:
        try:
            s.send(msg[i % len(msg):i % len(msg) + 1])
        except OSError:
            break
        i += 1
        if refused_or_closed(s):
            break
        time.sleep(0.5)
    closed = refused_or_closed(s) == "closed"
    print(json.dumps({"closed": closed, "after_seconds": round(time.monotonic() - t0, 1), "bytes_sent": i}))
    return 0


def main():
    path, mode = sys.argv[1], sys.argv[2]
    if mode == "load":
        return load(path, int(sys.argv[3]), int(sys.argv[4]), sys.argv[5])
    if mode == "fds":
        return fds(path, int(sys.argv[3]))
    if mode == "huge":
        return huge(path)
    if mode == "nested":
        return nested(path)
    if mode == "siege":
        return siege(path, float(sys.argv[3]), int(sys.argv[4]), sys.argv[5])
    if mode == "trickle":
        return trickle(path, float(sys.argv[3]))
    if mode == "noread":
        return noread(path, float(sys.argv[3]))
    return 2


if __name__ == "__main__":
    sys.exit(main())
