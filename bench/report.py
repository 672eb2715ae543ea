#!/usr/bin/env python3
# SPDX-License-Identifier: LGPL-2.1-or-later
# Turns bench/run's raw measurements into results.json and RESULTS.md (tables, targets, ratios).
import argparse, datetime, json, os, platform, statistics, subprocess

p = argparse.ArgumentParser()
p.add_argument("--raw", required=True)
p.add_argument("--load")
p.add_argument("--out", required=True)
p.add_argument("--quick", default="0")
p.add_argument("--rounds", default="0")
p.add_argument("--dumps")
p.add_argument("--cmekd-log")
a = p.parse_args()
here = os.path.dirname(os.path.abspath(__file__))


def pct(xs, q):
    xs = sorted(xs)
    if not xs:
        return None
    k = (len(xs) - 1) * q
    lo, hi = int(k), min(int(k) + 1, len(xs) - 1)
    return xs[lo] + (xs[hi] - xs[lo]) * (k - lo)


def sh(cmd):
    try:
        return subprocess.run(cmd, shell=True, capture_output=True, text=True, timeout=10).stdout.strip()
    except Exception:
        return ""


def pkg(name):
    return sh(f"dpkg-query -W -f '${{Version}}' {name} 2>/dev/null") or "not installed"


raw = {}
for line in open(a.raw):
    sec, name, rnd, val = line.rstrip("\n").split("\t")
    raw.setdefault(sec, {}).setdefault(name, []).append((rnd, float(val)))

machine = {
    "date": datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%d %H:%M UTC"),
    "cpus": os.cpu_count(),
    "cpu": sh("sed -n 's/^model name\\s*: //p' /proc/cpuinfo | head -1"),
    "mem_mib": int(sh("awk '/MemTotal/ {print int($2/1024)}' /proc/meminfo") or 0),
    "kernel": platform.release(),
    "os": sh(". /etc/os-release; echo $PRETTY_NAME"),
    "fs_tmp": sh("df -T /tmp | awk 'NR==2 {print $2}'"),
    "cryptsetup": pkg("cryptsetup-bin"), "softhsm2": pkg("softhsm2"), "systemd": pkg("systemd"),
    "clevis": pkg("clevis"), "tang": pkg("tang"), "openssl": pkg("libssl3"),
    "commit": sh(f"git -C '{here}' describe --always --dirty 2>/dev/null"),
}
res = {"machine": machine, "quick": a.quick == "1", "rounds": int(a.rounds)}
md = []
title = "cmekd benchmark results" + (" (--quick smoke run: not representative)" if a.quick == "1" else "")
md += [f"# {title}", "",
       f"Run {machine['date']} on {machine['cpus']} vCPU ({machine['cpu']}), {machine['mem_mib']} MiB, "
       f"{machine['os']}, kernel {machine['kernel']}, /tmp on {machine['fs_tmp']}; cryptsetup {machine['cryptsetup']}, "
       f"softhsm2 {machine['softhsm2']}, systemd {machine['systemd']}, clevis {machine['clevis']}, tang {machine['tang']}"
       + (f"; cmekd at commit {machine['commit']}" if machine.get("commit") else "") + ". "
       "Method: [METHOD.md](../METHOD.md). Produced by `bench/run`; edit nothing here by hand "
       "(the analysis section comes from `bench/analysis.md`).", ""]
targets = []

# ---- unlock ----
LABELS = {
    "floor": "key-file slot, volume formatted with PBKDF2 1000 it (the floor)",
    "cmek_create": "**cmek token, `cmekctl volume create` volume**",
    "keyfile_default": "key-file slot (PBKDF2 1000 it) on a default-formatted volume",
    "cmek_bind": "**cmek token, `cmekctl volume bind` on that default-formatted volume**",
    "systemd_pkcs11": "systemd-cryptenroll PKCS#11 token (SoftHSM2 RSA-2048), same default volume",
    "clevis_unlock": "Clevis + Tang on 127.0.0.1, what `clevis luks unlock` runs (its dm step as `--test-passphrase`), same volume",
    "clevis_tang": "Clevis + Tang on 127.0.0.1, `clevis luks pass -s SLOT` piped to `cryptsetup open --key-slot SLOT`, same volume",
    "clevis_decrypt": "Clevis + Tang on 127.0.0.1, the key source alone (`clevis decrypt` of the slot's JWE, slot named), same volume",
    "argon2_passphrase": "passphrase slot, Debian default Argon2id (calibrated), same volume",
    "process_startup": "(reference: starting /bin/true from the shell)",
}
if "unlock" in raw:
    u = {}
    for name, vals in raw["unlock"].items():
        xs = [v for _, v in vals]
        u[name] = {"n": len(xs), "median_ms": round(statistics.median(xs), 2), "p10_ms": round(pct(xs, .1), 2),
                   "p90_ms": round(pct(xs, .9), 2), "min_ms": round(min(xs), 2), "max_ms": round(max(xs), 2)}
    res["unlock"] = u
    order = [k for k in LABELS if k in u]
    comps = [k for k in ("floor", "keyfile_default", "systemd_pkcs11", "clevis_unlock", "clevis_tang", "clevis_decrypt",
                         "argon2_passphrase") if k in u]
    md += ["## 1. Unlock cost (`cryptsetup open --test-passphrase`, one 64 MiB sparse LUKS2 image file)", "",
           f"Median of {a.rounds} rounds, every method once per round in rotating order; spread p10-p90 and min-max. "
           "Ratios: how many times slower than the cmek token (`volume create` row: vs the create volume; other "
           "rows: vs the bind volume, which has the same digest cost).", "",
           "| method | median ms | p10-p90 ms | min-max ms | x floor | x cmek-create | x cmek-bind |",
           "|---|---:|---:|---:|---:|---:|---:|"]
    for k in order:
        s = u[k]
        fl = u.get("floor", {}).get("median_ms")
        rc = s["median_ms"] / u["cmek_create"]["median_ms"] if "cmek_create" in u else None
        rb = s["median_ms"] / u["cmek_bind"]["median_ms"] if "cmek_bind" in u else None
        f = lambda x: f"{x:.2f}x" if x is not None else "-"
        md.append(f"| {LABELS[k]} | {s['median_ms']:.1f} | {s['p10_ms']:.1f}-{s['p90_ms']:.1f} | "
                  f"{s['min_ms']:.1f}-{s['max_ms']:.1f} | {f(s['median_ms'] / fl) if fl else '-'} | "
                  f"{f(rc) if k not in ('process_startup', 'cmek_create') else ''} | "
                  f"{f(rb) if k not in ('process_startup', 'cmek_bind', 'cmek_create', 'floor') else ''} |")
    md.append("")
    if "cmek_create" in u and "floor" in u:
        r = u["cmek_create"]["median_ms"] / u["floor"]["median_ms"]
        targets.append(("cmek token on a `volume create` volume within 1.5x of the key-file floor",
                        f"{r:.2f}x ({u['cmek_create']['median_ms']:.1f} vs {u['floor']['median_ms']:.1f} ms)", r <= 1.5))
    if "cmek_bind" in u and "keyfile_default" in u:
        r = u["cmek_bind"]["median_ms"] / u["keyfile_default"]["median_ms"]
        targets.append(("`volume bind`-ed default volume within 1.15x of a key-file slot on it",
                        f"{r:.2f}x ({u['cmek_bind']['median_ms']:.1f} vs {u['keyfile_default']['median_ms']:.1f} ms)", r <= 1.15))
    for k in ("systemd_pkcs11", "clevis_unlock", "clevis_tang", "clevis_decrypt"):
        if k in u and "cmek_create" in u:
            res["unlock"][k]["ratio_to_cmek_create"] = round(u[k]["median_ms"] / u["cmek_create"]["median_ms"], 2)
    if "unlock_failed" in raw:
        left = sorted(k for k, v in raw["unlock_failed"].items() if any(x[0] == "0" and x[1] == 0 for x in v))
        dropped = {k: sum(1 for x in v if x[1] == 1) for k, v in raw["unlock_failed"].items()}
        res["unlock_left_out"] = left
        if left:
            md += [f"Left out (failed their first unlock twice in this run): {', '.join(left)}.", ""]
        if any(dropped.values()):
            md += ["Samples dropped after a failed unlock: " + ", ".join(f"{k} {n}" for k, n in dropped.items() if n) + ".", ""]
    if a.dumps:
        md += ["What each volume makes cryptsetup compute:", ""]
        for v in ("floor", "create", "default"):
            fn = os.path.join(a.dumps, f"dump-{v}.json")
            if not os.path.exists(fn):
                continue
            d = json.load(open(fn))
            ks = ", ".join(f"slot {i}: {s['kdf']['type']}" + (f" {s['kdf'].get('iterations')} it" if 'iterations' in s['kdf'] else
                           f" t={s['kdf'].get('time')} m={s['kdf'].get('memory')} KiB p={s['kdf'].get('cpus')}")
                           for i, s in d["keyslots"].items())
            dg = ", ".join(f"{x['type']} {x.get('iterations')} it" for x in d["digests"].values())
            tk = ", ".join(f"{t['type']}->slot {','.join(t['keyslots'])}" for t in d["tokens"].values()) or "none"
            md.append(f"- `{v}.img`: keyslots {ks}; digest {dg}; tokens {tk}")
        md.append("")

# ---- load ----
if a.load and os.path.exists(a.load):
    rows = [json.loads(l) for l in open(a.load) if l.strip()]
    res["unwrap_load"] = rows
    closed = [r for r in rows if not r.get("rate")]
    opened = [r for r in rows if r.get("rate")]
    md += ["## 2. Unwrap under load (io.cmek.Volume.Unwrap)", "",
           "Each client is one Varlink connection with one call in flight (bench/unwrap-load.c, one epoll thread); "
           "the daemon and the generator share the machine's CPUs.", "",
           "**Closed loop**: every reply sends the client's next call at once, so the daemon is saturated and, "
           "by Little's law, the mean latency is clients / throughput.", "",
           "| clients | unwraps/s | p50 ms | p99 ms | p99.9 ms | max ms | errors | daemon CPU % | daemon RSS MiB | peak RSS MiB |",
           "|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|"]
    def load_row(r, first):
        return (f"| {first} | {r['ops_per_s']:.0f} | {r['p50_us']/1000:.2f} | {r['p99_us']/1000:.2f} | "
                f"{r['p999_us']/1000:.2f} | {r['max_us']/1000:.1f} | {r['errors']} | {r['daemon_cpu_pct']} | "
                f"{r['daemon_rss_kib']/1024:.1f} | {r['daemon_peak_rss_kib']/1024:.1f} |")
    md += [load_row(r, r["clients"]) for r in closed]
    md.append("")
    if opened:
        md += ["**Open loop**: the clients call at a fixed rate in all (each connection on its own schedule); "
               "latency counts from when a call was due, so a call that had to wait for the previous one on "
               "its connection includes that wait.", "",
               "| clients @ calls/s | unwraps/s | p50 ms | p99 ms | p99.9 ms | max ms | errors | daemon CPU % | daemon RSS MiB | peak RSS MiB |",
               "|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|"]
        md += [load_row(r, f"{r['clients']} @ {r['rate']:.0f}") for r in opened]
        md.append("")
    tc = os.path.join(a.dumps or "", "token-cost.json")
    if a.dumps and os.path.exists(tc):
        t = json.load(open(tc))
        res["token_cost"] = t
        md += [f"**The token alone** (bench/token-cost.c: SoftHSM2 through its PKCS#11 interface, one thread, "
               f"{t['rounds']} rounds each, no cmekd): AES-256-GCM decrypt of a 32-byte DEK (C_DecryptInit + "
               f"C_Decrypt, what every unwrap asks of the token) {t['decrypt_us']:.1f} us, i.e. at most "
               f"{1e6 / t['decrypt_us']:,.0f}/s on one core; C_FindObjects for the key's label {t['find_us']:.1f} us; "
               f"C_GetAttributeValue(CKA_DECRYPT) {t['flags_us']:.1f} us (cmekd no longer calls these two per unwrap).", ""]
    best = max(r["ops_per_s"] for r in closed)
    targets.append(("at least 5,000 unwraps/s on 2 cores", f"{best:.0f}/s (best closed-loop level)", best >= 5000))
    for r in opened:
        if r["clients"] == 64 and r["rate"] == 5000:
            targets.append(("p99 under 2 ms at 64 clients calling 5,000 unwraps/s in all (open loop)",
                            f"{r['p99_us']/1000:.2f} ms", r["p99_us"] < 2000))
    for r in closed:
        if r["clients"] == 64:
            bound = 64 / r["ops_per_s"] * 1000
            targets.append(("p99 under 2 ms at 64 clients, closed loop (needs 32,000 unwraps/s by Little's law)",
                            f"{r['p99_us']/1000:.2f} ms (mean {bound:.2f} ms = 64 / {r['ops_per_s']:.0f}/s)",
                            r["p99_us"] < 2000))
    peak = max((r["daemon_peak_rss_kib"] for r in rows if r["clients"] == 256), default=None)
    if peak is not None:
        targets.append(("daemon RSS under 16 MiB at 256 clients", f"{peak/1024:.1f} MiB peak", peak < 16 * 1024))

# ---- rewrap ----
if "rewrap" in raw:
    rw = sorted(((int(n), v) for n, v in raw["rewrap"]["seconds"]), key=lambda x: x[0])
    rot = {int(n): v for n, v in raw["rewrap"].get("rotate_seconds", [])}
    chk = {int(n): v for n, v in raw["rewrap"].get("check_seconds", [])}
    setup = {int(n): v for n, v in raw.get("setup", {}).get("bind_ms_per_volume", [])}
    res["rewrap"] = [{"volumes": n, "seconds": s, "volumes_per_s": round(n / s, 1) if s else None,
                      "ms_per_volume": round(1000 * s / n, 2), "rotate_seconds": rot.get(n), "rewrap_check_seconds": chk.get(n),
                      "bind_ms_per_volume_setup": setup.get(n)} for n, s in rw]
    md += ["## 3. Re-wrap at scale (`cmekctl key rotate`, then `cmekctl volume rewrap --key K`)", "",
           "Sparse 8 MiB image files with a small header (16 KiB metadata, 512 KiB keyslot area), each bound with "
           "`volume bind`. Timed: `key rotate` (cmekd re-wraps every bound volume's DEK under the new version, one "
           "token write per header) plus a `volume rewrap --key K` that checks every header is current; the sets are "
           "cumulative (the 1,000 include the 100).", "",
           "| volumes | total s | volumes/s | ms per volume | of which rotate s | rewrap check s | (setup: bind ms/volume) |",
           "|---:|---:|---:|---:|---:|---:|---:|"]
    for e in res["rewrap"]:
        md.append(f"| {e['volumes']} | {e['seconds']:.2f} | {e['volumes_per_s']} | {e['ms_per_volume']} | "
                  f"{e['rotate_seconds']} | {e['rewrap_check_seconds']} | {e['bind_ms_per_volume_setup'] or '-'} |")
    md.append("")
    if len(rw) >= 2:
        (n0, s0), (n1, s1) = rw[0], rw[-1]
        growth = (s1 / n1) / (s0 / n0) if s0 else 0
        res["rewrap_per_volume_growth"] = round(growth, 2)
        targets.append((f"re-wrap linear in N (ms/volume at {n1} vs at {n0})", f"{growth:.2f}x", growth <= 1.5))
    for n, s in rw:
        if n == 10000:
            targets.append(("10,000-volume re-wrap under 60 s", f"{s:.1f} s", s < 60))

# ---- revocation latency ----
revoke_note = None
if "revoke" in raw or "revoke_skipped" in raw or "revoke_failed" in raw:
    in_vm = raw.get("revoke_setup", {}).get("vm", [("0", 1.0)])[0][1] == 1.0
    where = "in the qemu TCG VM of tests/vm (2 vCPUs)" if in_vm else "directly on this host (device-mapper works here)"
    rv = {}
    for name, vals in raw.get("revoke", {}).items():
        mode, n, field = name.split(":")
        rv.setdefault((mode, int(n)), {})[field] = [v for _, v in sorted(vals, key=lambda x: int(x[0]))]
    rows = []
    for (mode, n) in sorted(rv, key=lambda k: (k[0] != "suspend", k[1])):
        f = rv[(mode, n)]
        med = lambda k: round(statistics.median(f[k]), 1) if f.get(k) else None
        lk = f["locked_ms"]
        rows.append({"mode": mode, "mappings": n, "rounds": len(lk), "locked_median_ms": med("locked_ms"),
                     "locked_min_ms": min(lk), "locked_max_ms": max(lk), "first_locked_median_ms": med("first_ms"),
                     "cmekctl_returned_median_ms": med("cmekctl_ms"), "daemon_key_load_median_ms": med("daemon_load_ms"),
                     "daemon_locking_pass_median_ms": med("daemon_pass_ms"),
                     "daemon_request_median_ms": med("daemon_request_ms"), "restore_median_ms": med("restore_ms"), "closed_median_ms": med("closed_ms"),
                     "per_round": f})
    res["revoke"] = {"where": where, "rows": rows,
                     "create_ms_per_volume": raw.get("revoke_setup", {}).get("create_ms_per_volume", [(0, None)])[0][1],
                     "skipped": [k for k in raw.get("revoke_skipped", {})], "failed": [k for k in raw.get("revoke_failed", {})]}
    md += ["## 4. Revocation latency (`cmekctl key disable` with N active dm-crypt mappings of the key)", ""]
    if rows:
        md += [f"Measured {where}: N volumes (16 MiB sparse image files on loop devices, opened by cmekd) on one key, "
               "cmekd restarted with `[enforcement] on-disable = suspend` or `close`. Timed from just before `cmekctl key "
               "disable` starts to when an observer polling device-mapper (1 ms pause between polls) sees the last mapping locked: "
               "suspended with an all-zero key field, or gone. With `close` cmekd first suspends every mapping and wipes its key "
               "(the same pass as `suspend`), then removes the idle ones (tens of ms each in the kernel under TCG): the "
               "\"all closed\" column is when the last one is gone. Between rounds the key is enabled and the mappings "
               "put back with `cmekctl volume restore --key` (timed too). The daemon's own figures are from its log: "
               "key load and authorization before the locking pass, the pass itself, the whole request (which also "
               "writes the token).", "",
               "| mode | N | rounds | disable -> last locked: median ms | min-max ms | first locked ms | cmekctl returned ms "
               "| daemon: key load ms | daemon: locking pass ms | daemon: whole request ms | all closed ms | restore ms |",
               "|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|"]
        g = lambda x: "-" if x is None else f"{x:.1f}"
        for r in rows:
            md.append(f"| {r['mode']} | {r['mappings']} | {r['rounds']} | {g(r['locked_median_ms'])} | "
                      f"{r['locked_min_ms']:.1f}-{r['locked_max_ms']:.1f} | {g(r['first_locked_median_ms'])} | "
                      f"{g(r['cmekctl_returned_median_ms'])} | {g(r['daemon_key_load_median_ms'])} | "
                      f"{g(r['daemon_locking_pass_median_ms'])} | {g(r['daemon_request_median_ms'])} | {g(r['closed_median_ms'])} | "
                      f"{g(r['restore_median_ms'])} |")
        md.append("")
        at50 = [r for r in rows if r["mappings"] == 50]
        if at50:
            ok = all(r["locked_median_ms"] < 1000 for r in at50)
            targets.append(("revocation: 50 mappings locked (keys out of the kernel) under 1 s in the VM" + ("" if in_vm else " (run without a VM here)"),
                            ", ".join(f"{r['mode']} {r['locked_median_ms'] / 1000:.2f} s" for r in at50) + " (median)", ok))
    for k in raw.get("revoke_failed", {}):
        md += [f"**Failed:** {k}" + (" (the rows above are the rounds before it)." if rows else "."), ""]
    for k in raw.get("revoke_skipped", {}):
        md += [f"Not measured: {k}.", ""]
    why = "; ".join(list(raw.get("revoke_failed", {})) + list(raw.get("revoke_skipped", {})))
    if not rows:
        revoke_note = "not measured: " + why
    elif not any(r["mappings"] == 50 for r in rows):
        revoke_note = f"N = 50 not measured (largest N: {max(r['mappings'] for r in rows)})" + (f"; {why}" if why else "")

# ---- idle ----
if "idle" in raw:
    i = {k: v[0][1] for k, v in raw["idle"].items()}
    res["idle"] = i
    md += ["## 5. Idle cost", "",
           "Nothing calls the daemon; context switches (voluntary + involuntary, each one a wakeup) and CPU time "
           "from /proc/PID over the idle period, after the load runs; RSS then and of a freshly started daemon.", "",
           "| wakeups/min | CPU ms/min | RSS after load MiB | RSS fresh MiB |", "|---:|---:|---:|---:|",
           f"| {i.get('wakeups_per_min', 0):.1f} | {i.get('cpu_ms_per_min', 0):.2f} | {i.get('rss_kib', 0)/1024:.1f} | "
           f"{i.get('fresh_rss_kib', 0)/1024:.1f} |", ""]
    targets.append(("idle: a trace of CPU (under 10 ms CPU and 120 wakeups per minute)",
                    f"{i.get('cpu_ms_per_min', 0):.1f} ms/min, {i.get('wakeups_per_min', 0):.0f} wakeups/min",
                    i.get("cpu_ms_per_min", 0) < 10 and i.get("wakeups_per_min", 0) < 120))

md[4:4] = []
tmd = ["## Targets", "", "| target | measured | met |", "|---|---|---|"]
tmd += [f"| {t} | {m} | {'yes' if ok else '**no**'} |" for t, m, ok in targets]
if not any(t.startswith("revocation:") for t, _, _ in targets):
    tmd += [f"| revocation latency in the VM (item 4) | {revoke_note or 'not measured by this run (bench/run --only revoke)'} | - |"]
tmd += [""]
md[4:4] = tmd
res["targets"] = [{"target": t, "measured": m, "met": ok} for t, m, ok in targets]

if a.quick != "1" and os.path.exists(os.path.join(here, "analysis.md")):
    md += [open(os.path.join(here, "analysis.md")).read().rstrip(), ""]

os.makedirs(a.out, exist_ok=True)
with open(os.path.join(a.out, "results.json"), "w") as f:
    json.dump(res, f, indent=2)
    f.write("\n")
with open(os.path.join(a.out, "RESULTS.md"), "w") as f:
    f.write("\n".join(md) + "\n")
