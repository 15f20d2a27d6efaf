#!/usr/bin/env python3
"""Drives build/metallic: every bad flag or environment value is exit 2 with a one-line message naming it,
load errors are exit 1 naming the path, tokenize prints only a JSON array, and with the real model
(skipped when absent) greedy JSON runs are repeatable with sorted, normalized logprobs, seeds reproduce,
token limits hold, inspect shows the metadata and an over-long prompt fails naming both sizes."""
import argparse
import json
import math
import os
import subprocess
import sys

MODEL = "models/qwen2.5-coder-0.5b-instruct-q4_k_m.gguf"
ap = argparse.ArgumentParser()
ap.add_argument("--build", default="build")
ap.add_argument("--model", default=MODEL)
args = ap.parse_args()
BIN = os.path.join(args.build, "metallic")

passed = failed = skipped = 0


def report(name, ok, why=""):
    global passed, failed
    if ok:
        passed += 1
        print(f"ok   {name}")
    else:
        failed += 1
        print(f"FAIL {name}: {why}")
    sys.stdout.flush()


def skip(name, why):
    global skipped
    skipped += 1
    print(f"skip {name}: {why}")


def run(argv, env=None, timeout=600, stdin=None):
    e = dict(os.environ)
    for k in list(e):
        if k.startswith("METALLIC_"):
            del e[k]  # the caller's environment must not change the cases
    e.update(env or {})
    p = subprocess.run([BIN] + argv, capture_output=True, env=e, timeout=timeout, input=stdin)
    return p.returncode, p.stdout.decode("utf-8", "replace"), p.stderr.decode("utf-8", "replace")


if not os.access(BIN, os.X_OK):
    report("binary exists", False, f"{BIN} not built")
    print(f"{passed} passed, {failed} failed, {skipped} skipped")
    sys.exit(1)

have_model = os.path.isfile(args.model)
M = args.model if have_model else "missing-model.gguf"  # flag errors come before the model is opened

# --- usage errors: exit 2, one line on stderr that names the flag and the value -------------------------
BAD = [
    (["--frobnicate"], ["--frobnicate"]),
    (["--top-k"], ["--top-k"]),  # missing value
    (["--temperature", "abc"], ["--temperature", "abc"]),
    (["--temperature", "-0.5"], ["--temperature", "-0.5"]),
    (["--temperature", "nan"], ["--temperature", "nan"]),
    (["--top-p", "1.5"], ["--top-p", "1.5"]),
    (["--top-p=0"], ["--top-p", "0"]),
    (["--min-p", "2"], ["--min-p", "2"]),
    (["--top-k", "1.5"], ["--top-k", "1.5"]),
    (["--top-k", "-3"], ["--top-k", "-3"]),
    (["--repeat-penalty", "0"], ["--repeat-penalty", "0"]),
    (["--threads", "0"], ["--threads", "0"]),
    (["--threads", "-2"], ["--threads", "-2"]),
    (["--threads", "4x"], ["--threads", "4x"]),
    (["--max-tokens", "-1"], ["--max-tokens", "-1"]),
    (["--max-tokens", "0"], ["--max-tokens", "0"]),
    (["--max-tokens", "99999999999999999999"], ["--max-tokens"]),
    (["--seed", "-5"], ["--seed", "-5"]),
    (["--seed", "12abc"], ["--seed", "12abc"]),
    (["--ctx", "-1"], ["--ctx", "-1"]),
    (["--logprobs", "101"], ["--logprobs", "101"]),
    (["--output-format", "xml"], ["--output-format", "xml"]),
    (["--output-format", "tui"], ["--output-format", "tui", "not available"]),
    (["--device", "cuda"], ["--device", "cuda", "CUDA"]),
    (["--device", "tpu"], ["--device", "tpu"]),
    (["--backend", "fast"], ["--backend", "fast"]),
    (["--sdpa-backend", "mps"], ["--sdpa-backend", "mps"]),
    (["--raw=yes"], ["--raw"]),
]
for extra, needles in BAD:
    for where in ("after", "before"):  # flags are accepted anywhere on the line
        argv = ["run", M, "hi"] + extra if where == "after" else extra + ["run", M, "hi"]
        if extra == ["--top-k"] and where == "before":
            continue  # "--top-k run" would take "run" as the value
        rc, out, err = run(argv)
        msg = err.strip()
        ok = rc == 2 and all(n in msg for n in needles) and "\n" not in msg and out == ""
        report(f"bad flag {' '.join(extra)} ({where})", ok, f"rc={rc} stderr={msg!r}")

ENV_BAD = [
    ({"METALLIC_THREADS": "abc"}, ["METALLIC_THREADS", "abc"]),
    ({"METALLIC_THREADS": "0"}, ["METALLIC_THREADS", "0"]),
    ({"METALLIC_CTX": "-4"}, ["METALLIC_CTX", "-4"]),
    ({"METALLIC_DEVICE": "cuda"}, ["METALLIC_DEVICE", "cuda"]),
    ({"METALLIC_BACKEND": "turbo"}, ["METALLIC_BACKEND", "turbo"]),
]
for env, needles in ENV_BAD:
    rc, out, err = run(["tokenize", M, "hi"], env=env)
    msg = err.strip()
    report(f"bad env {env}", rc == 2 and all(n in msg for n in needles) and "\n" not in msg,
           f"rc={rc} stderr={msg!r}")

for argv, needle in [([], "no model"), (["run", M], "missing"), (["tokenize", M], "missing"),
                     (["run", M, "a", "b"], "'b'"), (["bench", M], "bench")]:
    rc, out, err = run(argv)
    report(f"usage {' '.join(argv) or '(none)'}", rc == 2 and needle in err, f"rc={rc} stderr={err!r}")

rc, out, err = run(["--help"])
report("--help", rc == 0 and "--max-tokens" in out and "--output-format" in out and "tokenize" in out,
       f"rc={rc}")
rc, out, err = run(["--version"])
report("--version", rc == 0 and out.startswith("metallic "), f"rc={rc} out={out!r}")

# --- load errors: exit 1 naming the path ----------------------------------------------------------------
missing = "/nonexistent/dir/model-xyz.gguf"
for sub in (["run", missing, "hi"], [missing, "hi"], ["inspect", missing], ["tokenize", missing, "hi"]):
    rc, out, err = run(sub)
    report(f"missing model: {sub[0]}", rc == 1 and missing in err and "\n" not in err.strip(),
           f"rc={rc} stderr={err!r}")

bad_dir = "tests/fixtures/bad-gguf"
if os.path.isdir(bad_dir):
    files = sorted(f for f in os.listdir(bad_dir) if f.endswith(".gguf"))
    bad_run = []
    bad_inspect = []
    for f in files:
        path = os.path.join(bad_dir, f)
        rc, out, err = run(["run", path, "hi", "--max-tokens", "1"], timeout=60)
        if rc != 1 or not err.strip():
            bad_run.append(f"{f}: rc={rc} {err.strip()[:120]!r}")
        rc, out, err = run(["inspect", path], timeout=60)
        if rc not in (0, 1) or (rc == 1 and not err.strip()):
            bad_inspect.append(f"{f}: rc={rc}")
    report(f"malformed GGUF run -> exit 1 ({len(files)} files)", not bad_run, "; ".join(bad_run[:5]))
    report(f"malformed GGUF inspect -> no crash ({len(files)} files)", not bad_inspect, "; ".join(bad_inspect[:5]))
else:
    skip("malformed GGUF", f"{bad_dir} absent")

# --- with the real model ----------------------------------------------------------------------------------
if not have_model:
    for name in ("tokenize", "greedy json", "seed", "text output", "inspect", "context overflow"):
        skip(name, f"{args.model} absent")
    print(f"{passed} passed, {failed} failed, {skipped} skipped")
    sys.exit(1 if failed else 0)

PROMPT = "def fibonacci(n):"
COMMON = ["--raw", "--ctx", "128", "--threads", "2"]

rc, out, err = run(["tokenize", M, "Hello world<|im_end|>"])
try:
    tok_special = json.loads(out)
except ValueError:
    tok_special = None
report("tokenize: JSON array only, special token parsed",
       rc == 0 and isinstance(tok_special, list) and tok_special[-1] == 151645 and len(tok_special) == 3
       and out.strip().startswith("[") and out.count("\n") == 1, f"rc={rc} out={out!r} err={err!r}")
rc, out, err = run(["tokenize", M, PROMPT, "--threads", "1"], env={"METALLIC_THREADS": "abc"})
report("flag beats environment", rc == 0, f"rc={rc} err={err!r}")
tok_prompt = json.loads(out) if rc == 0 else None


def greedy(extra=()):
    rc, out, err = run(["run", M, PROMPT, "--temperature", "0", "--max-tokens", "5", "--logprobs", "4",
                        "--output-format", "json"] + COMMON + list(extra))
    try:
        return rc, json.loads(out), err
    except ValueError:
        return rc, None, f"not JSON: {out!r} {err!r}"


rc1, j1, err1 = greedy()
rc2, j2, err2 = greedy()
ok = rc1 == 0 and rc2 == 0 and j1 is not None and j2 is not None
report("greedy json runs", ok, f"rc={rc1},{rc2} {err1!r} {err2!r}")
if ok:
    report("greedy repeatable", j1["tokens"] == j2["tokens"] and j1["text"] == j2["text"],
           f"{j1['tokens']} vs {j2['tokens']}")
    report("json prompt_tokens == tokenize", j1["prompt_tokens"] == tok_prompt,
           f"{j1['prompt_tokens']} vs {tok_prompt}")
    report("--max-tokens 5 respected", 1 <= len(j1["tokens"]) <= 5 and
           (len(j1["tokens"]) == 5) == (j1["stop_reason"] == "length"),
           f"{len(j1['tokens'])} tokens, stop {j1['stop_reason']}")
    keys_ok = set(j1) >= {"prompt_tokens", "tokens", "text", "logprobs", "timings", "stop_reason"} and \
        set(j1["timings"]) == {"prompt_ms", "prompt_tok_s", "gen_ms", "gen_tok_s"} and \
        all(v > 0 for v in j1["timings"].values()) and j1["stop_reason"] in ("eos", "length", "cancelled")
    report("json schema", keys_ok, json.dumps(j1)[:300])
    lp = j1["logprobs"]
    why = ""
    if len(lp) != len(j1["tokens"]):
        why = f"{len(lp)} logprob rows for {len(j1['tokens'])} tokens"
    for i, row in enumerate(lp):
        vals = [e["logprob"] for e in row]
        if len(row) != 4:
            why = f"row {i} has {len(row)} entries"
        elif any(v > 0 for v in vals) or vals != sorted(vals, reverse=True):
            why = f"row {i} not sorted / positive: {vals}"
        elif sum(math.exp(v) for v in vals) > 1 + 1e-4:
            why = f"row {i} probabilities sum past 1: {vals}"
        elif row[0]["id"] != j1["tokens"][i]:
            why = f"row {i}: most likely {row[0]['id']} but greedy chose {j1['tokens'][i]}"
        elif len({e["id"] for e in row}) != 4:
            why = f"row {i} repeats ids"
    report("logprobs sorted, <= 0, sum <= 1, first == greedy token", not why, why)

    # A context with room for only 2 more positions: the 3rd token is sampled from the last position's
    # logits, then generation stops as "length" with the same tokens greedy gave before.
    rc, out, err = run(["run", M, PROMPT, "--temperature", "0", "--max-tokens", "10", "--output-format", "json",
                        "--raw", "--ctx", str(len(tok_prompt) + 2)])
    try:
        jc = json.loads(out)
        ok = rc == 0 and jc["stop_reason"] == "length" and jc["tokens"] == j1["tokens"][:3]
    except (ValueError, KeyError):
        ok, jc = False, out
    report("generation stops at the end of the context", ok, f"rc={rc} {jc} vs {j1['tokens']} {err!r}")

    # Text output of the same greedy run: the same text on stdout, the timing line on stderr.
    rc, out, err = run(["run", M, PROMPT, "--temperature", "0", "--max-tokens", "5"] + COMMON)
    report("text output streams the same text", rc == 0 and out.rstrip("\n") == j1["text"].rstrip("\n"),
           f"rc={rc} {out!r} vs {j1['text']!r}")
    report("text output timing line", "prompt: %d tok" % len(tok_prompt) in err and "tok/s | gen: " in err,
           f"stderr={err!r}")

sample = ["run", M, PROMPT, "--temperature", "0.8", "--top-k", "0", "--top-p", "1", "--max-tokens", "4",
          "--output-format", "json"] + COMMON
rc1, out1, _ = run(sample + ["--seed", "1234"])
rc2, out2, _ = run(sample + ["--seed=1234"])
try:
    s1, s2 = json.loads(out1)["tokens"], json.loads(out2)["tokens"]
    report("--seed reproducible at temperature 0.8", rc1 == 0 and rc2 == 0 and s1 == s2 and len(s1) >= 1,
           f"{s1} vs {s2}")
except (ValueError, KeyError) as e:
    report("--seed reproducible at temperature 0.8", False, f"rc={rc1},{rc2} {e}")

rc, out, err = run(["inspect", M])
report("inspect lists general.architecture", rc == 0 and "general.architecture = \"qwen2\"" in out and
       "tensors: " in out, f"rc={rc} {out[:200]!r} {err!r}")
rc, outv, err = run(["inspect", M, "-v"])
report("inspect -v lists tensors", rc == 0 and "token_embd.weight" in outv and "blk.0.attn_q.weight" in outv,
       f"rc={rc}")

long_prompt = "one two three four five six seven eight nine ten eleven twelve thirteen fourteen fifteen sixteen seventeen eighteen"
rc, out, err = run(["tokenize", M, long_prompt])
n_long = len(json.loads(out)) if rc == 0 else -1
rc, out, err = run(["run", M, long_prompt, "--raw", "--ctx", "16", "--max-tokens", "2"])
report("prompt longer than --ctx 16 fails naming both sizes",
       rc == 1 and n_long > 16 and str(n_long) in err and "16" in err and out == "", f"rc={rc} n={n_long} {err!r}")

print(f"{passed} passed, {failed} failed, {skipped} skipped")
sys.exit(1 if failed else 0)
