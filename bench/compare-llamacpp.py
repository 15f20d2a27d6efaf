#!/usr/bin/env python3
"""Side-by-side CPU throughput: llama.cpp (through llama-cpp-python's low-level API) and `metallic bench`,
on the same GGUF files, sizes, thread count and token ids, in one run.

For each file: llama.cpp pp<P> (one llama_decode of P prompt tokens from an empty cache) and tg<N> (N
single-token llama_decode calls after the same 8-token prompt `metallic bench` uses), one warm-up run then
-r timed runs, n_ctx 1024, n_threads = n_threads_batch = --threads; then `metallic bench FILE -p P -n N -r R
-t T -o json`. The token ids are the ones `metallic bench` draws (same xorshift generator and seed). Also
runs the STREAM benchmark (bench/stream.c) and reports the bandwidth share of each decode: bytes read per
token (weights + KV, from metallic's JSON) x tok/s / the measured 2-thread read bandwidth.

  bench/compare-llamacpp.py [FILE.gguf ...] [--threads 2] [-r 3] [--rounds R] [--quick] [--json OUT.json]

Default files: the real default model, its Q8_0 and F16 re-encodings, and random-weight 0.5B Q8_0 and F16
files (generated into build/bench-models/ when missing). llama-cpp-python is installed with pip when it
is missing: that compiles llama.cpp from source for this CPU and takes many minutes on 2 cores.
Prints a markdown table on stdout and writes all numbers as JSON.
"""

import argparse
import ctypes
import json
import os
import statistics
import subprocess
import sys
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
DEFAULT_MODEL = "models/qwen2.5-coder-0.5b-instruct-q4_k_m.gguf"
MODELS_DIR = "build/bench-models"
TG_PROMPT = 8  # must match TG_PROMPT in cli/bench.c


def log(msg):
    print(msg, file=sys.stderr, flush=True)


def bench_tokens(n, n_vocab):
    """The ids `metallic bench` uses: xorshift64 (13, 7, 17) from its seed, (x >> 11) % n_vocab."""
    x, m, out = 0x9E3779B97F4A7C15, (1 << 64) - 1, []
    for _ in range(n):
        x ^= (x << 13) & m
        x ^= x >> 7
        x ^= (x << 17) & m
        out.append((x >> 11) % n_vocab)
    return out


def ensure_llama_cpp():
    try:
        import llama_cpp  # noqa: F401

        return True
    except ImportError:
        pass
    log("llama-cpp-python is not installed: installing it with pip. This compiles llama.cpp from source for")
    log("this CPU and takes many minutes on a 2-core machine (progress: pip's output below).")
    rc = subprocess.call([sys.executable, "-m", "pip", "install", "llama-cpp-python"])
    if rc:
        log(f"pip install llama-cpp-python failed (exit {rc}); llama.cpp columns will be empty")
        return False
    import importlib

    importlib.invalidate_caches()
    try:
        import llama_cpp  # noqa: F401

        return True
    except ImportError as e:
        log(f"llama_cpp import failed after install: {e}")
        return False


def first_attr(mod, *names):
    for n in names:
        f = getattr(mod, n, None)
        if f is not None:
            return f
    raise AttributeError(f"llama_cpp has none of {names}")


class LlamaCpp:
    """One model + context through the C API (names differ between llama-cpp-python versions)."""

    def __init__(self, path, threads, n_ctx, n_batch):
        import llama_cpp as L

        self.L = L
        L.llama_backend_init()
        try:  # silence llama.cpp's load log (the callback type's name varies between versions)
            self._log_cb = L.llama_log_callback(lambda level, text, user: None)
            L.llama_log_set(self._log_cb, ctypes.c_void_p(0))
        except (AttributeError, TypeError):
            pass
        mp = L.llama_model_default_params()
        self.model = first_attr(L, "llama_model_load_from_file", "llama_load_model_from_file")(path.encode(), mp)
        if not self.model:
            raise RuntimeError(f"llama.cpp cannot load {path}")
        cp = L.llama_context_default_params()
        cp.n_ctx = n_ctx
        cp.n_batch = n_batch
        cp.n_ubatch = n_batch
        cp.n_threads = threads
        cp.n_threads_batch = threads
        self.ctx = first_attr(L, "llama_init_from_model", "llama_new_context_with_model")(self.model, cp)
        if not self.ctx:
            raise RuntimeError(f"llama.cpp cannot create a context for {path}")
        if hasattr(L, "llama_model_get_vocab") and hasattr(L, "llama_vocab_n_tokens"):
            self.n_vocab = L.llama_vocab_n_tokens(L.llama_model_get_vocab(self.model))
        else:
            self.n_vocab = L.llama_n_vocab(self.model)
        self.batch = L.llama_batch_init(n_batch, 0, 1)

    def clear(self):
        L = self.L
        if hasattr(L, "llama_get_memory") and hasattr(L, "llama_memory_clear"):
            L.llama_memory_clear(L.llama_get_memory(self.ctx), True)
        elif hasattr(L, "llama_kv_self_clear"):
            L.llama_kv_self_clear(self.ctx)
        else:
            L.llama_kv_cache_clear(self.ctx)

    def decode(self, toks, pos0):
        b = self.batch
        b.n_tokens = len(toks)
        for i, t in enumerate(toks):
            b.token[i] = t
            b.pos[i] = pos0 + i
            b.n_seq_id[i] = 1
            b.seq_id[i][0] = 0
            b.logits[i] = 1 if i == len(toks) - 1 else 0
        rc = self.L.llama_decode(self.ctx, b)
        if rc != 0:
            raise RuntimeError(f"llama_decode returned {rc}")
        self.L.llama_synchronize(self.ctx)

    def run(self, toks, n_prompt, n_gen):
        """Nanoseconds of one pp (n_prompt > 0) or tg run."""
        self.clear()
        if n_prompt:
            t0 = time.perf_counter_ns()
            self.decode(toks[:n_prompt], 0)
            return time.perf_counter_ns() - t0
        self.decode(toks[:TG_PROMPT], 0)
        t0 = time.perf_counter_ns()
        for i in range(n_gen):
            self.decode([toks[TG_PROMPT + i]], TG_PROMPT + i)
        return time.perf_counter_ns() - t0

    def close(self):
        L = self.L
        L.llama_batch_free(self.batch)
        L.llama_free(self.ctx)
        first_attr(L, "llama_model_free", "llama_free_model")(self.model)


def llama_bench(path, tests, threads, reps):
    """{test: (mean t/s, sd t/s)} for llama.cpp, or an error string."""
    try:
        m = LlamaCpp(path, threads, 1024, 512)
    except Exception as e:  # noqa: BLE001 - report any loader failure in the table
        return str(e)
    out = {}
    try:
        toks = bench_tokens(max(max(p for p, _ in tests), TG_PROMPT + max(n for _, n in tests)), m.n_vocab)
        for p, n in tests:
            name = f"pp{p}" if p else f"tg{n}"
            log(f"  llama.cpp {name}: warm-up + {reps} runs")
            m.run(toks, p, n)
            ts = [(p + n) * 1e9 / m.run(toks, p, n) for _ in range(reps)]
            out[name] = (statistics.mean(ts), statistics.stdev(ts) if len(ts) > 1 else 0.0)
    except Exception as e:  # noqa: BLE001
        out = str(e)
    m.close()
    return out


def link_flags():
    """The libraries the Makefile links build/libmetallic.a with (it may hold CUDA objects)."""
    r = subprocess.run(["make", "-s", "--no-print-directory", "--eval=mt-print-link: ; @echo $(LDLIBS) $(CU_LIBS)",
                        "mt-print-link"], capture_output=True, text=True)
    return r.stdout.split() if r.returncode == 0 and r.stdout.strip() else ["-lm", "-pthread", "-lcjson"]


def metallic_cmd(build):
    """`build/metallic bench` once the CLI dispatches it, else the stand-alone driver (built here)."""
    exe = os.path.join(build, "metallic")
    if os.path.exists(exe):
        r = subprocess.run([exe, "bench", "--help"], capture_output=True, text=True)
        if r.returncode == 0 and "--n-prompt" in r.stdout:  # the generic help does not count
            return [exe, "bench"]
    drv = os.path.join(build, "bench-main")
    lib = os.path.join(build, "libmetallic.a")
    srcs = ["cli/bench.c", "bench/bench-main.c"]
    # always relinked, so the rows carry the commit being measured
    commit = subprocess.run(["git", "rev-parse", "--short", "HEAD"], capture_output=True, text=True).stdout.strip()
    cmd = ["cc", "-O2", "-march=native", "-std=c11", "-D_GNU_SOURCE", "-Iinclude", "-Isrc", "-Icli", "-pthread",
           f'-DMT_BUILD_COMMIT="{commit or "unknown"}"', *srcs, lib, *link_flags(), "-o", drv]
    subprocess.check_call(cmd)
    return [drv]


def metallic_bench(cmd, path, p, n, threads, reps):
    r = subprocess.run(cmd + [path, "-p", str(p), "-n", str(n), "-r", str(reps), "-t", str(threads), "-o", "json"],
                       capture_output=True, text=True)
    if r.returncode:
        return (r.stderr.strip().splitlines() or ["failed"])[-1]
    rows = json.loads(r.stdout)
    return {(f"pp{x['n_prompt']}" if x["n_prompt"] else f"tg{x['n_gen']}"): x for x in rows}


def stream(build):
    exe = os.path.join(build, "stream")
    if not os.path.exists(exe) or os.path.getmtime("bench/stream.c") > os.path.getmtime(exe):
        subprocess.check_call(["cc", "-O3", "-march=native", "-std=c11", "-D_GNU_SOURCE", "-pthread", "bench/stream.c",
                               "-o", exe])
    return json.loads(subprocess.check_output([exe, "--json"], text=True))


def default_files(build):
    os.makedirs(MODELS_DIR, exist_ok=True)
    gen = [sys.executable, "tools/gen_random_model.py"]
    files = []
    if os.path.exists(DEFAULT_MODEL):
        files.append(DEFAULT_MODEL)
        for dt in ("q8_0", "f16"):
            out = f"{MODELS_DIR}/qwen2.5-coder-0.5b-instruct-{dt}.gguf"
            if not os.path.exists(out):
                log(f"re-encoding {DEFAULT_MODEL} as {dt} -> {out}")
                subprocess.check_call(gen + [out, "--requant", DEFAULT_MODEL, "--dtype", dt])
            files.append(out)
    else:
        log(f"{DEFAULT_MODEL} is absent (make model): random files only")
    for dt in ("q8_0", "f16"):
        out = f"{MODELS_DIR}/random-0.5b-{dt}.gguf"
        if not os.path.exists(out):
            if not os.path.exists(DEFAULT_MODEL):
                log(f"{out}: needs {DEFAULT_MODEL} for the tokenizer; skipped")
                continue
            log(f"generating {out}")
            subprocess.check_call(gen + [out, "--shape", "0.5b", "--dtype", dt])
        files.append(out)
    return files


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("files", nargs="*")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("-r", "--reps", type=int, default=3)
    ap.add_argument("--quick", action="store_true", help="pp64 and tg16 instead of pp512 and tg128")
    ap.add_argument("--build", default="build")
    ap.add_argument("--json", default="build/bench-compare.json", help="where the JSON results go")
    ap.add_argument("--no-llama", action="store_true", help="metallic only (no llama-cpp-python)")
    ap.add_argument("--rounds", type=int, default=1,
                    help="repeat each file's llama.cpp / metallic pair (and STREAM) this many times, alternating; "
                         "the ratio column is then the median of the rounds' ratios [min, max] (for a host whose "
                         "memory bandwidth drifts)")
    a = ap.parse_args()
    os.chdir(ROOT)
    if a.threads < 1 or a.reps < 1 or a.rounds < 1:
        ap.error("--threads, -r and --rounds must be >= 1")
    p, n = (64, 16) if a.quick else (512, 128)
    tests = [(p, 0), (0, n)]

    have_llama = not a.no_llama and ensure_llama_cpp()
    files = a.files or default_files(a.build)
    cmd = metallic_cmd(a.build)
    log("STREAM (1 GiB, best of 5)")
    st = stream(a.build)
    read2 = max((r["best_gbs"] for r in st["results"] if r["test"] == "read" and r["threads"] == 2), default=None)
    with open("/proc/cpuinfo") as f:
        cpu = next((ln.split(":", 1)[1].strip() for ln in f if ln.startswith("model name")), "unknown")

    def one_round(path, read2):
        out = []
        llama = llama_bench(path, tests, a.threads, a.reps) if have_llama else "not run"
        log(f"  metallic: pp{p} tg{n}, warm-up + {a.reps} runs each")
        ours = metallic_bench(cmd, path, p, n, a.threads, a.reps)
        for name in (f"pp{p}", f"tg{n}"):
            row = {"file": path, "test": name, "threads": a.threads}
            if isinstance(llama, dict) and name in llama:
                row["llama_ts"], row["llama_sd"] = llama[name]
            elif isinstance(llama, str):
                row["llama_error"] = llama
            if isinstance(ours, dict) and name in ours:
                o = ours[name]
                row["metallic_ts"], row["metallic_sd"] = o["avg_ts"], o["stddev_ts"]
                row["metallic_build"] = o.get("build_commit")
                if o.get("bytes_per_token"):
                    row["bytes_per_token"] = o["bytes_per_token"]
                    row["metallic_gbs"] = o["bytes_per_token"] * o["avg_ts"] / 1e9
                    if "llama_ts" in row:
                        row["llama_gbs"] = o["bytes_per_token"] * row["llama_ts"] / 1e9
                    if read2:
                        row["stream_read_2t"] = read2
                        row["metallic_bw_share"] = row["metallic_gbs"] / read2
                        if "llama_gbs" in row:
                            row["llama_bw_share"] = row["llama_gbs"] / read2
            elif isinstance(ours, str):
                row["metallic_error"] = ours
            if "llama_ts" in row and "metallic_ts" in row:
                row["ratio"] = row["metallic_ts"] / row["llama_ts"]
            out.append(row)
        return out

    def combine(rows):
        """One row from the rounds of one (file, test): means of the rounds' means, medians of the ratios."""
        if len(rows) == 1:
            return rows[0]
        r = dict(rows[0])
        r["rounds"] = rows
        for k in ("llama_ts", "metallic_ts", "llama_gbs", "metallic_gbs"):
            v = [x[k] for x in rows if k in x]
            if len(v) == len(rows):
                r[k] = statistics.mean(v)
        for k, sd in (("llama_ts", "llama_sd"), ("metallic_ts", "metallic_sd")):
            v = [x[k] for x in rows if k in x]
            if len(v) == len(rows):
                r[sd] = statistics.stdev(v)
        for k in ("ratio", "llama_bw_share", "metallic_bw_share"):
            v = [x[k] for x in rows if k in x]
            if len(v) == len(rows):
                r[k] = statistics.median(v)
                r[k + "_min"], r[k + "_max"] = min(v), max(v)
        return r

    results = []
    for path in files:
        log(f"{path}")
        per_round = []
        for rnd in range(a.rounds):
            if a.rounds > 1:
                log(f" round {rnd + 1} of {a.rounds}")
                st_r = stream(a.build)
                read2_r = max((x["best_gbs"] for x in st_r["results"] if x["test"] == "read" and x["threads"] == 2),
                              default=None)
            else:
                read2_r = read2
            per_round.append(one_round(path, read2_r))
        for i in range(len(per_round[0])):
            results.append(combine([rr[i] for rr in per_round]))

    def f(x, d=2):
        return "-" if x is None else f"{x:.{d}f}"

    rounds = f", {a.rounds} alternating rounds per file (t/s: mean of the rounds; ratio: median of the rounds' " \
             f"ratios [min, max]; bandwidth share: median, each round against a STREAM run just before it)" \
        if a.rounds > 1 else ""
    print(f"CPU: {cpu}, threads {a.threads}, {a.reps} runs after a warm-up{rounds}, {time.strftime('%Y-%m-%d')}\n")
    print("| file | test | llama.cpp t/s | metallic t/s | metallic / llama.cpp | decode GB/s (llama.cpp / metallic) "
          "| share of 2-thread read BW (llama.cpp / metallic) |")
    print("|---|---|---:|---:|---:|---:|---:|")
    for r in results:
        lt = f"{r['llama_ts']:.2f} ± {r['llama_sd']:.2f}" if "llama_ts" in r else "-"
        mt = f"{r['metallic_ts']:.2f} ± {r['metallic_sd']:.2f}" if "metallic_ts" in r else "-"
        gbs = share = ""
        if "metallic_gbs" in r:
            gbs = f"{f(r.get('llama_gbs'))} / {f(r['metallic_gbs'])}"
        if "metallic_bw_share" in r:
            share = f"{f(100 * r['llama_bw_share'], 0) if 'llama_bw_share' in r else '-'}% / {100 * r['metallic_bw_share']:.0f}%"
        ratio = f"{f(r.get('ratio'))}x"
        if "ratio_min" in r:
            ratio += f" [{r['ratio_min']:.2f}, {r['ratio_max']:.2f}]"
        print(f"| {os.path.basename(r['file'])} | {r['test']} | {lt} | {mt} | {ratio} | {gbs} | {share} |")
    errs = {(r["file"], k): r[k] for r in results for k in ("llama_error", "metallic_error") if k in r}
    for (fname, k), e in errs.items():
        print(f"\n{os.path.basename(fname)}: {k.split('_')[0]}: {e}")
    print("\nSTREAM (GB/s, best of 5): " + ", ".join(f"{r['test']} {r['threads']}t {r['best_gbs']:.2f}" for r in st["results"]))
    os.makedirs(os.path.dirname(os.path.abspath(a.json)), exist_ok=True)
    with open(a.json, "w") as fo:
        json.dump({"cpu": cpu, "threads": a.threads, "reps": a.reps, "rounds": a.rounds, "date": time.strftime("%Y-%m-%dT%H:%M:%S"),
                   "tests": [f"pp{p}", f"tg{n}"], "stream": st, "results": results}, fo, indent=1)
    log(f"wrote {a.json}")


if __name__ == "__main__":
    main()
