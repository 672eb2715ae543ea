#!/usr/bin/env python3
# SPDX-License-Identifier: LGPL-2.1-or-later
# Tools for the audit tests, in the format of docs/audit.md (hash = SHA-256 of the line's bytes
# before ,"hash":"; prev = the previous line's hash):
#   gen PATH N        write a valid N-line chain (what a long-lived daemon leaves)
#   rechain IN OUT    recompute prev/hash of every line, as an attacker with write access to the
#                     state directory but no token would, after editing IN
import hashlib, json, sys

MARK = ',"hash":"'
ZERO = "0" * 64


def seal(body, prev):
    """body: the line's JSON without prev/hash and without the closing brace"""
    head = body + ',"prev":"' + prev + '"'
    h = hashlib.sha256(head.encode()).hexdigest()
    return head + MARK + h + '"}\n', h


def gen(path, n):
    prev = ZERO
    t0 = 1790000000000000
    with open(path, "w") as f:
        for i in range(1, n + 1):
            t = t0 + i * 1000
            body = ('{"seq":%d,"time":"2026-09-21T12:00:00.000000Z","time_usec":%d,"event":"policy.denied",'
                    '"operation":"io.cmek.Service.Status","result":"io.cmek.PermissionDenied","uid":65534,'
                    '"gid":65534,"pid":%d,"detail":"No policy statement allows uid 65534 to inspect vaults in tenancy"'
                    % (i, t, 1000 + i % 30000))
            line, prev = seal(body, prev)
            f.write(line)


def rechain(src, dst):
    prev = ZERO
    out = []
    for raw in open(src).read().splitlines():
        head = raw[: raw.rindex(MARK)]
        body = head[: head.rindex(',"prev":"')]
        o = json.loads(body + "}")  # still one JSON object
        seq = o["seq"]
        line, prev = seal(body, prev)
        out.append(line)
    open(dst, "w").write("".join(out))


if __name__ == "__main__":
    if sys.argv[1] == "gen":
        gen(sys.argv[2], int(sys.argv[3]))
    elif sys.argv[1] == "rechain":
        rechain(sys.argv[2], sys.argv[3])
    else:
        sys.exit("usage: gen PATH N | rechain IN OUT")
