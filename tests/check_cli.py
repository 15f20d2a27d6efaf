#!/usr/bin/env python3
"""Drives build/metallic: every bad flag or environment value is exit 2 with a one-line message naming it,
load errors are exit 1 naming the path, tokenize prints only a JSON array, and with the real model
(skipped when absent) greedy JSON runs are repeatable with sorted, normalized logprobs, seeds reproduce,
token limits hold, inspect shows the metadata and an over-long prompt fails naming both sizes."""
import argparse
import json
import math
import os
import shutil
import subprocess
import sys
import tempfile
from checklib import Tally  # noqa: E402

MODEL = "models/qwen2.5-coder-0.5b-instruct-q4_k_m.gguf"
ap = argparse.ArgumentParser()
ap.add_argument("--build", default="build")
ap.add_argument("--model", default=MODEL)
args = ap.parse_args()
BIN = os.path.join(args.build, "metallic")

_t = Tally()
report = _t.report
skip = _t.skip






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
    _t.summary()
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
                     (["run", M, "a", "b"], "'b'"), (["serve", M], "serve")]:
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

# --- generation, on a tiny generated model (always) and on the real one (when present) -----------------


def load_json(out):
    try:
        return json.loads(out)
    except ValueError:
        return None


def tokenize(model, text):
    rc, out, err = run(["tokenize", model, text])
    return load_json(out) if rc == 0 else None


def check_generation(tag, M, PROMPT, special_ids, n_ctx_max, check_text=True):
    """The model-agnostic checks; special_ids = (text with a special token, its id)."""
    COMMON = ["--raw", "--ctx", "128", "--threads", "2"]
    text, sid = special_ids
    rc, out, err = run(["tokenize", M, text])
    ids = load_json(out)
    report(f"{tag}: tokenize prints a JSON array only, special token parsed",
           rc == 0 and isinstance(ids, list) and ids and ids[-1] == sid and out.count("\n") == 1,
           f"rc={rc} out={out!r} err={err!r}")
    rc, out, err = run(["tokenize", M, PROMPT, "--threads", "1"], env={"METALLIC_THREADS": "abc"})
    report(f"{tag}: a flag beats its environment variable", rc == 0, f"rc={rc} err={err!r}")
    tok_prompt = load_json(out) if rc == 0 else None

    def greedy(extra=()):
        rc, out, err = run(["run", M, PROMPT, "--temperature", "0", "--max-tokens", "5", "--logprobs", "4",
                            "--output-format", "json"] + COMMON + list(extra))
        return rc, load_json(out), err

    rc1, j1, err1 = greedy()
    rc2, j2, err2 = greedy()
    ok = rc1 == 0 and rc2 == 0 and j1 is not None and j2 is not None
    report(f"{tag}: greedy json runs", ok, f"rc={rc1},{rc2} {err1!r} {err2!r}")
    if not ok:
        return None
    report(f"{tag}: greedy repeatable", j1["tokens"] == j2["tokens"] and j1["text"] == j2["text"],
           f"{j1['tokens']} vs {j2['tokens']}")
    report(f"{tag}: json prompt_tokens == tokenize", j1["prompt_tokens"] == tok_prompt,
           f"{j1['prompt_tokens']} vs {tok_prompt}")
    report(f"{tag}: --max-tokens 5 respected", 1 <= len(j1["tokens"]) <= 5 and
           (len(j1["tokens"]) == 5) == (j1["stop_reason"] == "length"),
           f"{len(j1['tokens'])} tokens, stop {j1['stop_reason']}")
    keys_ok = set(j1) >= {"prompt_tokens", "tokens", "text", "logprobs", "timings", "stop_reason"} and \
        set(j1["timings"]) == {"prompt_ms", "prompt_tok_s", "gen_ms", "gen_tok_s"} and \
        all(v > 0 for v in j1["timings"].values()) and j1["stop_reason"] in ("eos", "length", "cancelled")
    report(f"{tag}: json schema", keys_ok, json.dumps(j1)[:300])
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
    report(f"{tag}: logprobs sorted, <= 0, sum <= 1, first == greedy token", not why, why)

    # A context with room for only 2 more positions: the 3rd token is sampled from the last position's
    # logits, then generation stops as "length" with the same tokens greedy gave before.
    if j1["stop_reason"] == "length":
        rc, out, err = run(["run", M, PROMPT, "--temperature", "0", "--max-tokens", "10", "--output-format",
                            "json", "--raw", "--ctx", str(len(tok_prompt) + 2)])
        jc = load_json(out)
        ok = rc == 0 and jc is not None and jc["stop_reason"] == "length" and jc["tokens"] == j1["tokens"][:3]
        report(f"{tag}: generation stops at the end of the context", ok, f"rc={rc} {jc} vs {j1['tokens']} {err!r}")

    # Text output of the same greedy run: the same text on stdout, the timing line on stderr.
    rc, out, err = run(["run", M, PROMPT, "--temperature", "0", "--max-tokens", "5"] + COMMON)
    if check_text:
        report(f"{tag}: text output streams the same text", rc == 0 and out.rstrip("\n") == j1["text"].rstrip("\n"),
               f"rc={rc} {out!r} vs {j1['text']!r}")
    report(f"{tag}: text output timing line",
           rc == 0 and "prompt: %d tok" % len(tok_prompt) in err and "tok/s | gen: " in err, f"stderr={err!r}")

    sample = ["run", M, PROMPT, "--temperature", "0.8", "--top-k", "0", "--top-p", "1", "--max-tokens", "8",
              "--output-format", "json"] + COMMON
    outs = [run(sample + seed) for seed in (["--seed", "1234"], ["--seed=1234"], ["--seed", "99"])]
    toks = [(load_json(o) or {}).get("tokens") for _, o, _ in outs]
    report(f"{tag}: --seed reproducible at temperature 0.8", all(r == 0 for r, _, _ in outs) and toks[0] and
           toks[0] == toks[1], f"{toks}")

    rc, out, err = run(["inspect", M])
    report(f"{tag}: inspect lists general.architecture",
           rc == 0 and 'general.architecture = "qwen2"' in out and "tensors: " in out, f"rc={rc} {out[:200]!r} {err!r}")
    rc, outv, err = run(["inspect", M, "-v"])
    report(f"{tag}: inspect -v lists tensors", rc == 0 and "token_embd.weight" in outv and
           "blk.0.attn_q.weight" in outv, f"rc={rc}")

    words = " ".join(["one two three four five six seven eight nine ten"] * 3)
    n_long = len(tokenize(M, words) or [])
    rc, out, err = run(["run", M, words, "--raw", "--ctx", "16", "--max-tokens", "2"])
    report(f"{tag}: prompt longer than --ctx 16 fails naming both sizes",
           rc == 1 and n_long > 16 and str(n_long) in err and "16" in err and out == "", f"rc={rc} n={n_long} {err!r}")
    rc, out, err = run(["run", M, "hi", "--ctx", str(n_ctx_max + 1)])
    report(f"{tag}: --ctx past the model's context is an error", rc == 1 and str(n_ctx_max + 1) in err,
           f"rc={rc} {err!r}")
    return toks


# The tiny model: random weights, so the text is arbitrary bytes (U+FFFD in JSON) and seeds differ.
tmp = tempfile.mkdtemp(prefix="check_cli_")
try:
    tiny = os.path.join(tmp, "tiny.gguf")
    PY = sys.executable
    r = subprocess.run([PY, "tools/gen_tiny_model.py", tiny, "--dtype", "f32"], capture_output=True, text=True)
    if r.returncode != 0:
        report("tiny model generated", False, r.stderr.strip()[-300:])
    else:
        # The synthetic vocabulary's <|im_end|> id, as the tokenizer of the file reports it.
        import gguf
        reader = gguf.GGUFReader(tiny)
        f = reader.fields["tokenizer.ggml.tokens"]
        vocab = [bytes(f.parts[i]).decode("utf-8", "replace") for i in f.data]
        im_end = vocab.index("<|im_end|>")
        seeds = check_generation("tiny", tiny, "hello there", ("ab<|im_end|>", im_end), 1024, check_text=False)
        if seeds:
            report("tiny: different seeds give different tokens", seeds[0] != seeds[2], f"{seeds}")
        # chat over a pipe: two turns, the second prefilling only what is new; a turn past the context is
        # an error that leaves the session usable; end of input exits 0.
        rc, out, err = run(["chat", tiny, "--max-tokens", "3", "-v"], stdin=b"hello\nok\n")
        counts = [int(x.split()[1]) for x in err.splitlines() if x.startswith("prompt: ")]
        report("chat: two turns, the second reuses the cached conversation",
               rc == 0 and len(counts) == 2 and counts[1] < counts[0], f"rc={rc} prompts={counts} {err!r}")
        long_line = ("word " * 300).encode()
        rc, out, err = run(["chat", tiny, "--max-tokens", "2", "--ctx", "200", "-v"],
                           stdin=b"hi\n" + long_line + b"\nhi again\n")
        counts = [x for x in err.splitlines() if x.startswith("prompt: ")]
        report("chat: a turn past the context is reported and the chat goes on",
               rc == 0 and "does not fit the context of 200" in err and len(counts) == 2, f"rc={rc} {err!r}")
        rc, j_gguf, _ = run(["run", tiny, "hello there", "--raw", "--temperature", "0", "--max-tokens", "8",
                             "--output-format", "json"])
        # Hugging Face folders: generation_config.json supplies the defaults, flags beat them.
        hf_greedy, hf_hot = os.path.join(tmp, "hf-greedy"), os.path.join(tmp, "hf-hot")
        r1 = subprocess.run([PY, "tools/gguf_to_hf.py", tiny, hf_greedy, "--greedy"], capture_output=True, text=True)
        r2 = subprocess.run([PY, "tools/gguf_to_hf.py", tiny, hf_hot, "--temperature", "1.5", "--top-k", "7",
                             "--top-p", "0.9", "--repetition-penalty", "1.2"], capture_output=True, text=True)
        if r1.returncode or r2.returncode:
            report("hf folders converted", False, (r1.stderr + r2.stderr).strip()[-300:])
        else:
            rc, out, err = run(["run", hf_greedy, "hello there", "--raw", "--max-tokens", "8", "--output-format",
                                "json"])
            j = load_json(out)
            report("hf: do_sample false in generation_config means greedy",
                   rc == 0 and j and j["tokens"] == load_json(j_gguf)["tokens"], f"rc={rc} {out!r} {err!r}")
            rc, out, err = run(["run", hf_hot, "hello there", "--raw", "--max-tokens", "1", "-v"])
            report("hf: generation_config values become the defaults",
                   rc == 0 and "temperature 1.5 top_k 7 top_p 0.9" in err and "repeat_penalty 1.2" in err, err)
            rc, out, err = run(["run", hf_hot, "hello there", "--raw", "--max-tokens", "8", "--temperature", "0",
                                "--top-k", "3", "-v", "--output-format", "json"])
            j = load_json(out)
            report("hf: flags beat generation_config",
                   rc == 0 and "temperature 0 top_k 3 top_p 0.9" in err and j and
                   j["tokens"] == load_json(j_gguf)["tokens"], f"rc={rc} {err!r}")
            rc, out, err = run(["inspect", hf_hot])
            report("hf: inspect prints config.json and generation_config.json",
                   rc == 0 and '"model_type"' in out and "generation_config.json" in out, f"rc={rc} {err!r}")
            rc1, out1, _ = run(["tokenize", hf_hot, "hello there"])
            rc2, out2, _ = run(["tokenize", tiny, "hello there"])
            report("hf: tokenize from tokenizer.json == from the GGUF", rc1 == 0 and out1 == out2, f"{out1!r} {out2!r}")
finally:
    shutil.rmtree(tmp, ignore_errors=True)

if have_model:
    check_generation("qwen", M, "def fibonacci(n):", ("Hello world<|im_end|>", 151645), 32768)
else:
    skip("real model generation checks", f"{args.model} absent")

_t.summary()
sys.exit(1 if _t.failed else 0)
