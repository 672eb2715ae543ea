#!/bin/bash
# SPDX-License-Identifier: LGPL-2.1-or-later
# bench/run --quick keeps working: it sets up every method it can, runs each a few times and writes
# results.json and RESULTS.md with sane numbers. No timing assertions: the committed results
# (bench/results/) prove the targets, this only proves the benchmark still runs.
. "${top_srcdir:-$(dirname "$0")/../..}/tests/lib.sh"
need_root
need_cmd cryptsetup python3 cc
[ -f "$top_builddir/tools/.libs/libcryptsetup-token-cmek.so" ] || skip "plugin not built"

OUT=$TEST_TMP/out
"$top_srcdir/bench/run" --quick --build "$top_builddir" --out "$OUT" >"$TEST_TMP/run.log" 2>&1 || {
    rc=$?; tail -30 "$TEST_TMP/run.log" >&2
    [ $rc -eq 77 ] && skip "bench/run skipped"
    fail "bench/run --quick exited $rc"
}
[ -s "$OUT/RESULTS.md" ] || fail "no RESULTS.md"
assert_contains "$(cat "$OUT/RESULTS.md")" "## Targets"
python3 - "$OUT/results.json" <<'PY' || fail "results.json is not sane"
import json, sys
d = json.load(open(sys.argv[1]))
u = d["unlock"]
for m in ("floor", "cmek_create", "keyfile_default", "cmek_bind"):
    assert 0.1 < u[m]["median_ms"] < 60000, (m, u[m])
    assert u[m]["min_ms"] <= u[m]["median_ms"] <= u[m]["max_ms"], (m, u[m])
for r in d["unwrap_load"]:
    assert r["ops"] > 0 and r["errors"] == 0, r
    assert 0 < r["p50_us"] <= r["p99_us"] <= r["max_us"], r
    assert 0 < r["daemon_peak_rss_kib"] < 4 * 1024 * 1024, r
assert 0 < d["token_cost"]["decrypt_us"] < 100000, d.get("token_cost")
assert any(r.get("rate") for r in d["unwrap_load"]), "no open-loop level"
assert len(d["rewrap"]) >= 2 and all(e["seconds"] > 0 for e in d["rewrap"]), d["rewrap"]
assert d["idle"]["rss_kib"] > 0, d["idle"]
assert d["targets"], "no targets evaluated"
PY
log "ok"
