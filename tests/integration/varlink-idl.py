#!/usr/bin/python3
# SPDX-License-Identifier: LGPL-2.1-or-later
# Raw Varlink calls for test-varlink-idl.sh, and the check that an error reply is declared, with
# the parameters it carries, by the interface GetInterfaceDescription returns for its prefix.
import json, os, re, socket, subprocess, sys

class Conn:
    def __init__(self, path):
        self.s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        self.s.settimeout(30)
        self.s.connect(path)
        self.buf = b""

    def send_raw(self, data):
        self.s.sendall(data)
        while b"\0" not in self.buf:
            d = self.s.recv(65536)
            if not d:
                raise EOFError("connection closed")
            self.buf += d
        msg, self.buf = self.buf.split(b"\0", 1)
        return json.loads(msg)

    def call(self, method, params=None, omit=False, **extra):
        m = {"method": method}
        if not omit:
            m["parameters"] = params
        m.update(extra)
        return self.send_raw(json.dumps(m).encode() + b"\0")

def strip_comments(text):
    return "\n".join(l.split("#", 1)[0] for l in text.splitlines())

def error_fields(description, name):
    """The field names of 'error NAME (...)' in an IDL text, or None when it is not declared."""
    text = strip_comments(description)
    m = re.search(r"(?m)^\s*error\s+" + re.escape(name) + r"\s*\(", text)
    if not m:
        return None
    depth, i = 1, m.end()
    while depth:
        depth += {"(": 1, ")": -1}.get(text[i], 0)
        i += 1
    body = text[m.end():i - 1]
    fields, depth, cur = {}, 0, ""
    for ch in body + ",":
        if ch == "," and depth == 0:
            if cur.strip():
                k, t = cur.split(":", 1)
                fields[k.strip()] = t.strip()
            cur = ""
            continue
        depth += {"(": 1, ")": -1}.get(ch, 0)
        cur += ch
    return fields

class Checker:
    def __init__(self, path):
        self.path = path
        self.c = Conn(path)
        info = self.c.call("org.varlink.service.GetInfo", None)
        assert "error" not in info, info
        self.interfaces = info["parameters"]["interfaces"]
        self.descriptions = {}
        for i in self.interfaces:
            r = self.c.call("org.varlink.service.GetInterfaceDescription", {"interface": i})
            assert "error" not in r, (i, r)
            self.descriptions[i] = r["parameters"]["description"]
        self.seen = set()

    def declared(self, reply, what):
        """Asserts the error of reply is declared with the parameters it carries."""
        name = reply["error"]
        iface, member = name.rsplit(".", 1)
        assert iface in self.descriptions, "%s: error %s: interface %s is not served (GetInfo: %s)" % (
            what, name, iface, self.interfaces)
        fields = error_fields(self.descriptions[iface], member)
        assert fields is not None, "%s: error %s is not declared by %s:\n%s" % (what, name, iface, self.descriptions[iface])
        params = reply.get("parameters") or {}
        for k in params:
            assert k in fields, "%s: error %s carries %r, which its declaration (%s) lacks" % (what, name, k, fields)
        for k, t in fields.items():
            assert t.startswith("?") or k in params, "%s: error %s lacks the required %r: %s" % (what, name, k, params)
        self.seen.add(name)

    def expect_error(self, name, method, params, what, conn=None, **match):
        r = (conn or self.c).call(method, params)
        assert r.get("error") == name, "%s: expected %s, got %s" % (what, name, r)
        for k, v in match.items():
            got = r["parameters"].get(k)
            assert (v(got) if callable(v) else got == v), "%s: %s=%r in %s" % (what, k, got, r)
        self.declared(r, what)
        return r

def main():
    mode, path = sys.argv[1], sys.argv[2]
    ck = Checker(path)
    if mode == "describe":
        # every description through the standard parser (it writes Go code; a parse error fails)
        out = sys.argv[3]
        for i, d in ck.descriptions.items():
            f = os.path.join(out, i + ".varlink")
            with open(f, "w") as fp:
                # INTERIM, until the wire rename lands (lowercase interface names, field names that
                # start with a lowercase letter): the parser reads a copy renamed the same way
                d = re.sub(r"(?m)^interface (\S+)$", lambda m: "interface " + m.group(1).lower(), d)
                fp.write(d.replace("EncryptionKeyStatus", "encryption_key_status").replace("EncryptionKeyType", "encryption_key_type"))
            r = subprocess.run(["varlink-go-interface-generator", f], cwd=out, capture_output=True, text=True)
            assert r.returncode == 0, "%s does not parse: %s%s\n%s" % (i, r.stdout, r.stderr, d)
            print("parsed", i)
        return
    if mode == "advertised":
        # prints the methods the descriptions declare, one per line
        for i, d in ck.descriptions.items():
            for m in re.findall(r"(?m)^method\s+(\w+)", strip_comments(d)):
                print(i + "." + m)
        return
    if mode == "errors":
        # argv: KEY (a key of compartment Dev), PLAIN (a file without a LUKS header)
        key, plain = sys.argv[3], sys.argv[4]
        c = ck.c
        for how in ("null", "{}", "omitted"):
            for m in ("org.varlink.service.GetInfo", "io.cmek.Service.Status", "io.cmek.Vault.List"):
                r = c.call(m, None if how == "null" else {}, omit=how == "omitted")
                assert "error" not in r, "%s with parameters %s: %s" % (m, how, r)
        ck.expect_error("org.varlink.service.InvalidParameter", "io.cmek.Key.Show", {"key": key, "bogus": 1},
                        "unknown field", parameter="bogus")
        ck.expect_error("org.varlink.service.InvalidParameter", "io.cmek.Key.Show", {"key": 5},
                        "mistyped field", parameter="key", message=lambda s: "must be a string" in s)
        ck.expect_error("org.varlink.service.InvalidParameter", "io.cmek.Key.Show", {},
                        "missing field", parameter="key", message=lambda s: "must be a string" in s)
        ck.expect_error("org.varlink.service.InvalidParameter", "io.cmek.Key.Show", {"key": None},
                        "null for a required field", parameter="key")
        ck.expect_error("org.varlink.service.InvalidParameter", "io.cmek.Key.Create",
                        {"name": "x", "compartment": "Dev", "protection_mode": "paper"},
                        "value outside an enum", parameter="protection_mode")
        ck.expect_error("org.varlink.service.InvalidParameter", "io.cmek.Volume.Rewrap", {"devices": ["a", 1]},
                        "mistyped array element", parameter="devices")
        ck.expect_error("org.varlink.service.InvalidParameter", "io.cmek.Key.Import",
                        {"name": "imp", "compartment": "Dev", "wrapped": "not base64!"}, "bad base64", parameter="wrapped")
        ck.expect_error("org.varlink.service.InvalidParameter", "io.cmek.Volume.Create",
                        {"path": plain, "key": key, "recovery_passphrase": "%%%%"}, "bad base64 secret",
                        parameter="recovery_passphrase")
        ck.expect_error("org.varlink.service.InvalidParameter", "io.cmek.Volume.Unwrap",
                        {"uuid": "0", "token": {"type": "nonsense"}}, "malformed token", parameter="token")
        ck.expect_error("org.varlink.service.InvalidParameter", "io.cmek.Key.ScheduleDeletion",
                        {"key": key, "days": 2}, "days out of range", parameter="days")
        ck.expect_error("org.varlink.service.MethodNotFound", "io.cmek.Key.Frobnicate", {}, "unknown method")
        ck.expect_error("org.varlink.service.InterfaceNotFound", "io.cmek.Nothing.Frobnicate", {}, "unknown interface")
        ck.expect_error("org.varlink.service.InterfaceNotFound", "org.varlink.service.GetInterfaceDescription",
                        {"interface": "io.cmek.Nothing"}, "unknown interface described")
        ck.expect_error("io.cmek.KeyNotFound", "io.cmek.Key.Show", {"key": "Dev/no-such-key"}, "unknown key")
        ck.expect_error("io.cmek.KeyNotFound", "io.cmek.Key.DisableVersion", {"key": key, "version": 77}, "unknown version")
        ck.expect_error("io.cmek.AlreadyExists", "io.cmek.Key.Create", {"name": key.split("/")[1], "compartment": "Dev"},
                        "duplicate key")
        ck.expect_error("io.cmek.InvalidStateTransition", "io.cmek.Key.CancelDeletion", {"key": key}, "bad transition")
        ck.expect_error("io.cmek.VaultNotFound", "io.cmek.Vault.Show", {"vault": "no-such-vault"}, "unknown vault")
        ck.expect_error("io.cmek.VaultNotFound", "io.cmek.Key.Create", {"name": "v", "compartment": "Dev", "vault": "nope"},
                        "unknown vault on create")
        ck.expect_error("io.cmek.VolumeNotFound", "io.cmek.Volume.Show", {"device": "/nonexistent/volume"}, "unknown volume")
        ck.expect_error("io.cmek.NotLUKS2", "io.cmek.Volume.Show", {"device": plain}, "file without a header")
        ck.expect_error("io.cmek.NotLUKS2", "io.cmek.Volume.Bind", {"device": plain, "key": key}, "no LUKS2 header")
        ck.expect_error("io.cmek.ImportFailed", "io.cmek.Key.Import",
                        {"name": "imp", "compartment": "Dev", "wrapped": "AAAA"}, "blob that does not unwrap")
        r = c.call("io.cmek.ListErrors", None)
        assert "error" not in r, r
        listed = {e["name"] for e in r["parameters"]["errors"]}
        assert "io.cmek.KeyNotFound" in listed and "io.cmek.PermissionDenied" in listed, listed
        # a request that is no JSON: the connection is answered, then closed
        r = Conn(path).send_raw(b"{nonsense\0")
        assert r["error"] == "io.cmek.MalformedMessage", r
        ck.declared(r, "malformed message")
        print(" ".join(sorted(ck.seen)))
        return
    if mode == "nogrant":
        # run as a real user the policy does not name: he learns nothing, every error is declared
        key = sys.argv[3]
        ck.expect_error("io.cmek.KeyNotFound", "io.cmek.Key.Show", {"key": key}, "no grant: existing key",
                        key=key)
        ck.expect_error("io.cmek.KeyNotFound", "io.cmek.Key.Show", {"key": "Dev/no-such-key"}, "no grant: unknown key")
        ck.expect_error("io.cmek.PermissionDenied", "io.cmek.Key.Create", {"name": "n", "compartment": "Dev"},
                        "no grant: create")
        ck.expect_error("io.cmek.PermissionDenied", "io.cmek.Metrics.Get", None, "no grant: metrics")
        ck.expect_error("io.cmek.PermissionDenied", "io.cmek.Service.Status", None, "no grant: status")
        print(" ".join(sorted(ck.seen)))
        return
    raise SystemExit("unknown mode " + mode)

main()
