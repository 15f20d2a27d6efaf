#!/usr/bin/env python3
"""Checks `metallic bench` on a generated tiny model: every output format parses back with the expected
rows and llama-bench's field names and types (md table columns, JSON array, CSV header, JSON lines),
the numbers are consistent (t/s = tokens / time per sample, mean and sd of the samples, -r samples), the
token counts and threads are the ones asked for, and bad flags are exit 2 with one line naming the flag.

Uses `build/metallic bench` when the CLI dispatches it, else builds build/bench-main (cli/bench.c with a
stand-alone main) against build/libmetallic.a.
"""
import argparse
import csv
import io
import json
import math
import os
import statistics
import subprocess
import sys
import tempfile
from checklib import Tally  # noqa: E402

ap = argparse.ArgumentParser()
ap.add_argument("--build", default="build")
args = ap.parse_args()
ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
os.chdir(ROOT)

_t = Tally()
report = _t.report
skip = _t.skip




def finish():
    _t.summary()
    sys.exit(1 if _t.failed else 0)


def link_flags():
    """The libraries the Makefile links build/libmetallic.a with (it may hold CUDA objects)."""
    r = subprocess.run(["make", "-s", "--no-print-directory", "--eval=mt-print-link: ; @echo $(LDLIBS) $(CU_LIBS)",
                        "mt-print-link"], capture_output=True, text=True)
    return r.stdout.split() if r.returncode == 0 and r.stdout.strip() else ["-lm", "-pthread", "-lcjson"]


def bench_cmd():
    exe = os.path.join(args.build, "metallic")
    if os.path.exists(exe):
        r = subprocess.run([exe, "bench", "--help"], capture_output=True, text=True)
        if r.returncode == 0 and "--n-prompt" in r.stdout:
            return [exe, "bench"]
    lib = os.path.join(args.build, "libmetallic.a")
    if not os.path.exists(lib):
        return None
    drv = os.path.join(args.build, "bench-main-check")  # not build/bench-main: that one carries the real commit
    cc = ["cc", "-O2", "-std=c11", "-D_GNU_SOURCE", "-Iinclude", "-Isrc", "-Icli", "-pthread",
          '-DMT_BUILD_COMMIT="testcommit"', "cli/bench.c", "bench/bench-main.c", lib, *link_flags(), "-o", drv]
    r = subprocess.run(cc, capture_output=True, text=True)
    if r.returncode:
        report("build bench-main", False, r.stderr[-500:])
        return None
    return [drv]


cmd = bench_cmd()
if cmd is None:
    report("bench binary", False, f"neither {args.build}/metallic bench nor {args.build}/libmetallic.a")
    finish()

tmp = tempfile.mkdtemp()
model = os.path.join(tmp, "tiny.gguf")
r = subprocess.run([sys.executable, "tools/gen_tiny_model.py", model, "--dtype", "q8_0", "--seed", "7"],
                   capture_output=True, text=True)
if r.returncode:
    report("gen tiny model", False, r.stderr[-500:])
    finish()

P, N, R = 16, 4, 2
BASE = [model, "-p", str(P), "-n", str(N), "-r", str(R), "-t", "2"]


def run(extra, timeout=300):
    return subprocess.run(cmd + extra, capture_output=True, text=True, timeout=timeout)


def check_stats(name, row, samples_ns, samples_ts, avg_ns, sd_ns, avg_ts, sd_ts, n_tok):
    """Recomputes the statistics from the samples (any format)."""
    ok = len(samples_ns) == R and len(samples_ts) == R
    ok = ok and all(s > 0 for s in samples_ns)
    ok = ok and all(math.isclose(t, n_tok * 1e9 / s, rel_tol=1e-4) for s, t in zip(samples_ns, samples_ts))
    ok = ok and math.isclose(avg_ns, statistics.mean(samples_ns), rel_tol=1e-6, abs_tol=1)
    ok = ok and math.isclose(sd_ns, statistics.stdev(samples_ns), rel_tol=1e-4, abs_tol=1)
    ok = ok and math.isclose(avg_ts, statistics.mean(samples_ts), rel_tol=1e-4)
    ok = ok and math.isclose(sd_ts, statistics.stdev(samples_ts), rel_tol=1e-3, abs_tol=1e-6)
    report(name, ok, f"row {row}")


LLAMA_FIELDS = {
    "build_commit": str, "build_number": int, "cpu_info": str, "gpu_info": str, "backends": str,
    "model_filename": str, "model_type": str, "model_size": int, "model_n_params": int, "n_batch": int,
    "n_threads": int, "n_prompt": int, "n_gen": int, "test_time": str, "avg_ns": int, "stddev_ns": int,
    "avg_ts": float, "stddev_ts": float, "samples_ns": list, "samples_ts": list,
}


def check_json_rows(fmt, rows):
    report(f"{fmt}: two rows (pp then tg)", len(rows) == 2 and rows[0]["n_prompt"] == P and rows[0]["n_gen"] == 0
           and rows[1]["n_prompt"] == 0 and rows[1]["n_gen"] == N, str(rows)[:300])
    for row in rows:
        bad = [k for k, t in LLAMA_FIELDS.items()
               if k not in row or not (isinstance(row[k], t) or (t is float and isinstance(row[k], (int, float))))
               or (t is int and isinstance(row[k], bool))]
        report(f"{fmt}: llama-bench fields and types", not bad, f"missing or mistyped: {bad}")
        report(f"{fmt}: threads, file, commit", row.get("n_threads") == 2 and row.get("model_filename") == model
               and row.get("build_commit") not in (None, "") and row.get("cpu_info") not in (None, ""), str(row)[:300])
        report(f"{fmt}: model size and params > 0", row.get("model_size", 0) > 0 and row.get("model_n_params", 0) > 0)
        if not bad:
            check_stats(f"{fmt}: statistics from samples", row, row["samples_ns"], row["samples_ts"], row["avg_ns"],
                        row["stddev_ns"], row["avg_ts"], row["stddev_ts"], row["n_prompt"] + row["n_gen"])
    tg = rows[-1] if rows else {}
    report(f"{fmt}: tg bytes per token >= model size", tg.get("bytes_per_token", 0) >= tg.get("model_size", 1) * 0.5
           and tg.get("avg_gbs", 0) > 0, str(tg)[:300])


# markdown
r = run(BASE)
lines = [ln for ln in r.stdout.splitlines() if ln.startswith("|")]
report("md: exit 0", r.returncode == 0, r.stderr[-300:])
hdr = [c.strip() for c in lines[0].strip("|").split("|")] if lines else []
report("md: llama-bench columns", hdr == ["model", "size", "params", "backend", "threads", "test", "t/s"], str(hdr))
body = [[c.strip() for c in ln.strip("|").split("|")] for ln in lines[2:]]
report("md: one row per test", [b[5] for b in body] == [f"pp{P}", f"tg{N}"] if all(len(b) == 7 for b in body) else False,
       str(body))
for b in body:
    if len(b) != 7:
        continue
    parts = b[6].split("±")
    ok = len(parts) == 2 and float(parts[0]) > 0 and float(parts[1]) >= 0 and b[4] == "2"
    report(f"md: {b[5]} t/s is 'mean ± sd' and threads 2", ok, str(b))
    report(f"md: {b[5]} size in MiB, params in M/K", b[1].endswith("MiB") and b[2].endswith(("M", "B")), str(b))
rv = run(BASE + ["-v"])
vl = [ln for ln in rv.stdout.splitlines() if ln.startswith("|")]
report("md -v: GB/s column on tg", rv.returncode == 0 and "GB/s" in vl[0] and float(vl[-1].strip("|").split("|")[-1]) > 0,
       rv.stdout[-400:])

# json
r = run(BASE + ["-o", "json"])
try:
    rows = json.loads(r.stdout)
    report("json: an array", r.returncode == 0 and isinstance(rows, list))
    check_json_rows("json", rows)
except ValueError as e:
    report("json: parses", False, f"{e}: {r.stdout[:300]}")

# jsonl
r = run(BASE + ["-o", "jsonl"])
try:
    rows = [json.loads(ln) for ln in r.stdout.splitlines() if ln.strip()]
    report("jsonl: one object per line", r.returncode == 0 and len(rows) == 2
           and all(isinstance(x, dict) for x in rows) and len(r.stdout.strip().splitlines()) == 2)
    check_json_rows("jsonl", rows)
except ValueError as e:
    report("jsonl: parses", False, f"{e}: {r.stdout[:300]}")

# csv
r = run(BASE + ["-o", "csv"])
rows = list(csv.DictReader(io.StringIO(r.stdout)))
report("csv: header has the llama-bench fields", r.returncode == 0 and rows and all(k in rows[0] for k in LLAMA_FIELDS),
       r.stdout[:300])
report("csv: two rows", len(rows) == 2 and rows[0]["n_prompt"] == str(P) and rows[1]["n_gen"] == str(N))
for row in rows:
    try:
        sn = [float(x) for x in row["samples_ns"].split()]
        st = [float(x) for x in row["samples_ts"].split()]
        check_stats("csv: statistics from samples", row, sn, st, float(row["avg_ns"]), float(row["stddev_ns"]),
                    float(row["avg_ts"]), float(row["stddev_ts"]), int(row["n_prompt"]) + int(row["n_gen"]))
    except (KeyError, ValueError) as e:
        report("csv: numeric fields", False, str(e))

# several sizes and thread counts: one row each, in order
r = run([model, "-p", "8,12", "-n", "0", "-r", "1", "-t", "1,2", "-o", "jsonl"])
rows = [json.loads(ln) for ln in r.stdout.splitlines() if ln.strip()] if r.returncode == 0 else []
report("lists: -p 8,12 -n 0 -t 1,2 -> 4 pp rows", [(x["n_threads"], x["n_prompt"], x["n_gen"]) for x in rows]
       == [(1, 8, 0), (1, 12, 0), (2, 8, 0), (2, 12, 0)], r.stdout[:300] + r.stderr[-300:])

# context depth: rows per depth, llama-bench's n_depth field and "@ dN" test names
r = run([model, "-p", "8", "-n", "2", "-d", "0,40", "-r", "1", "-t", "1", "-o", "jsonl"])
rows = [json.loads(ln) for ln in r.stdout.splitlines() if ln.strip()] if r.returncode == 0 else []
report("depth: -d 0,40 -> pp/tg rows at each depth", [(x["n_depth"], x["n_prompt"], x["n_gen"]) for x in rows]
       == [(0, 8, 0), (0, 0, 2), (40, 8, 0), (40, 0, 2)], r.stdout[:300] + r.stderr[-300:])
r = run([model, "-p", "8", "-n", "0", "-d", "40", "-r", "1", "-t", "1"])
report("depth: md names the test pp8 @ d40", r.returncode == 0 and "pp8 @ d40" in r.stdout, r.stdout[-300:])

# help
r = run(["--help"])
report("--help: exit 0, usage on stdout", r.returncode == 0 and "--n-prompt" in r.stdout)

# bad flags: exit 2, one line naming the flag
BAD = [
    (["-p", "x"], "-p"), (["-p", "16,"], "-p"), (["-n", "-3"], "-n"), (["-r", "0"], "-r"), (["-r", "2,3"], "-r"),
    (["-t", "0"], "-t"), (["-o", "xml"], "-o"), (["--backend", "fast"], "--backend"), (["--device", "tpu"], "--device"),
    (["--frobnicate"], "--frobnicate"), (["-d", "x"], "-d"), (["-p"], "-p"), (["-p", "0", "-n", "0"], "-p/-n"),
    (["-p", "99999999"], "-p"), (["-p", "40000"], "-p/-n"), (["--backend", "graph,graph"], "--backend"),
    (["--backend", "legacy,fast"], "--backend"), (["--backend", "legacy," + "x" * 40], "--backend"),
]
for extra, flag in BAD:
    r = run([model] + extra)
    err = r.stderr.strip().splitlines()
    report(f"bad flag {' '.join(extra)}: exit 2 naming {flag}", r.returncode == 2 and len(err) == 1 and flag in err[0]
           and not r.stdout, f"rc {r.returncode}, stderr {r.stderr.strip()!r}")
r = run(["-p", "16"])
report("missing MODEL: exit 2", r.returncode == 2 and "MODEL" in r.stderr, r.stderr)
r = run([model, "other.gguf"])
report("two models: exit 2", r.returncode == 2, r.stderr)
r = run([os.path.join(tmp, "absent.gguf"), "-p", "8", "-n", "0"])
report("absent model: exit 1 naming the path", r.returncode == 1 and "absent.gguf" in r.stderr, r.stderr)
for path in ("legacy", "graph"):
    r = run([model, "-p", "8", "-n", "0", "-r", "1", "--backend", path])
    report(f"--backend {path}: runs and the backend column says so", r.returncode == 0 and f"CPU/{path} " in r.stdout,
           r.stdout[-300:] + r.stderr[-300:])

# paired comparison: both paths per repetition, rows for each and the ratio of each pair
r = run([model, "-p", "8", "-n", "2", "-r", "3", "--backend", "legacy,graph", "-o", "json"])
try:
    rows = json.loads(r.stdout) if r.returncode == 0 else []
except ValueError:
    rows = []
ok = len(rows) == 4 and [x["backend_path"] for x in rows] == ["legacy", "graph", "legacy", "graph"]
for a, b in zip(rows[0::2], rows[1::2]):
    q = sorted(ta / tb for ta, tb in zip(b["samples_ts"], a["samples_ts"]))
    ok = ok and "pair_ratio" not in a and b.get("pair_base") == "legacy" and len(q) == 3 \
        and abs(b["pair_ratio"] - q[1]) < 1e-9 * q[1] and abs(b["pair_ratio_min"] - q[0]) < 1e-9 * q[0] \
        and abs(b["pair_ratio_max"] - q[2]) < 1e-9 * q[2]
report("--backend legacy,graph: both rows per test, pair ratios = median/min/max of the per-run t/s ratios", ok,
       r.stdout[-400:] + r.stderr[-300:])
r = run([model, "-p", "8", "-n", "0", "-r", "2", "--backend", "graph,legacy"])
report("--backend graph,legacy (md): a ratio row legacy/graph", r.returncode == 0 and "| legacy/graph |" in r.stdout
       and "CPU/graph" in r.stdout and "CPU/legacy" in r.stdout, r.stdout[-400:] + r.stderr[-300:])

finish()
