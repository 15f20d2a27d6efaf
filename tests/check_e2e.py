#!/usr/bin/env python3
"""End-to-end check: the engine's logits and greedy tokens against the NumPy Qwen2 reference.

Writes the tiny random-weight models (tools/gen_tiny_model.py) into BUILD/fixtures, runs the model API
tests on one of them, then for each model and prompt length (1, 2, 7, 64, 300 random ids, fixed seed)
prefills in one batch and greedy-decodes 8 steps with `test-model --logits`, and compares every logits row
with tests/ref_qwen2.py (max abs diff relative to max |logit|) and the greedy tokens (identical). On the
real model, when present: a 16-token prompt's last-position logits and 4 greedy steps.

  check_e2e.py --build build [--model MODEL.gguf] [--no-real]
"""

import argparse
import json
import os
import subprocess
import sys
import tempfile

import numpy as np

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(HERE)
sys.path.insert(0, HERE)
from ref_qwen2 import Qwen2Ref  # noqa: E402
from checklib import Tally  # noqa: E402

# name, generator flags, tolerance (relative to max |logit|)
TINY = [
    ("tiny-f32-tied", ["--dtype", "f32", "--tied", "--layers", "2", "--rope-base", "10000", "--seed", "11"], 1e-4),
    ("tiny-f32-untied", ["--dtype", "f32", "--layers", "3", "--rope-base", "1000000", "--seed", "12"], 1e-4),
    ("tiny-f16-untied", ["--dtype", "f16", "--layers", "2", "--rope-base", "1000000", "--seed", "13"], 2e-3),
    # Q8_0 weights are dequantized exactly by the reference; the looser bound leaves room for kernels that
    # quantize activations too
    ("tiny-q8_0-untied", ["--dtype", "q8_0", "--layers", "2", "--rope-base", "10000", "--seed", "14"], 5e-3),
]
PROMPT_LENS = [1, 2, 7, 64, 300]
DECODE_STEPS = 8
REAL_MODEL = os.path.join(ROOT, "models", "qwen2.5-coder-0.5b-instruct-q4_k_m.gguf")

_t = Tally()
def report(ok, name, detail=""):
    _t.report(name, ok, detail)


skip = _t.skip






def run_engine(binary, model, ids, steps, tmp, isa=None):
    """Returns (rows [len(ids)+steps, vocab], greedy tokens) or raises with the engine's error.
    isa: METALLIC_CPU_ISA for the run ("scalar" = the reference kernels; None = the fastest level)."""
    ids_path = os.path.join(tmp, "ids.txt")
    out_path = os.path.join(tmp, "logits.f32")
    with open(ids_path, "w") as f:
        f.write(" ".join(str(i) for i in ids))
    env = dict(os.environ)
    env.pop("METALLIC_CPU_ISA", None)
    if isa:
        env["METALLIC_CPU_ISA"] = isa
    p = subprocess.run([binary, "--logits", model, ids_path, out_path, "--decode-steps", str(steps)],
                       capture_output=True, text=True, timeout=900, env=env)
    if p.returncode != 0:
        raise RuntimeError(f"engine exit {p.returncode}: {p.stderr.strip()[-400:]}")
    toks, kv_copied = None, None
    for line in p.stdout.splitlines():
        if line.startswith("greedy:"):
            toks = [int(t) for t in line.split()[1:]]
        if line.startswith("kv_bytes_copied:"):
            kv_copied = int(line.split()[1])
    rows = np.fromfile(out_path, dtype=np.float32)
    return rows, toks, kv_copied


def compare(name, eng_rows, eng_toks, ref_rows, ref_toks, tol, kv_copied):
    if eng_rows.size != ref_rows.size:
        report(False, name, f"engine wrote {eng_rows.size} logits, reference has {ref_rows.size}")
        return
    eng = eng_rows.reshape(ref_rows.shape).astype(np.float64)
    if not np.all(np.isfinite(eng)):
        report(False, name, "engine logits are not finite")
        return
    rel = np.abs(eng - ref_rows).max() / np.abs(ref_rows).max()
    ok = rel < tol and eng_toks == ref_toks and kv_copied == 0
    detail = f"rel diff {rel:.2e} < {tol:g}, greedy {eng_toks}"
    if eng_toks != ref_toks:
        detail = f"greedy tokens differ: engine {eng_toks}, reference {ref_toks}; rel diff {rel:.2e}"
    elif rel >= tol:
        detail = f"rel diff {rel:.2e} >= {tol:g}"
    elif kv_copied != 0:
        detail = f"{kv_copied} KV bytes copied"
    report(ok, name, detail)


def compare_fast(name, eng_rows, ref_rows, tol):
    """The fast kernels quantize activations to 8 bits for quantized weights, so their logits follow the
    reference closely but not exactly: a looser bound, and the same top token wherever the reference's
    top two are more than 0.5 apart."""
    eng = eng_rows.reshape(ref_rows.shape).astype(np.float64)
    rel = np.abs(eng - ref_rows).max() / np.abs(ref_rows).max()
    top2 = np.sort(ref_rows, axis=1)[:, -2:]
    clear = (top2[:, 1] - top2[:, 0]) > 0.5
    agree = np.argmax(eng, axis=1) == np.argmax(ref_rows, axis=1)
    bad = int(np.sum(clear & ~agree))
    ok = np.all(np.isfinite(eng)) and rel < tol and bad == 0
    report(ok, name, f"rel diff {rel:.2e} (bound {tol:g}), top-1 differs at {bad} of {int(clear.sum())} clear rows")


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--build", default="build")
    ap.add_argument("--model", default=REAL_MODEL)
    ap.add_argument("--no-real", action="store_true", help="skip the real-model case")
    ap.add_argument("--fixtures-only", action="store_true",
                    help="only write the tiny models into BUILD/fixtures (the C tests read them)")
    a = ap.parse_args()
    binary = os.path.join(a.build, "tests", "test-model")
    fixtures = os.path.join(a.build, "fixtures")
    os.makedirs(fixtures, exist_ok=True)

    models = []
    for name, flags, tol in TINY:
        path = os.path.join(fixtures, name + ".gguf")
        p = subprocess.run([sys.executable, os.path.join(ROOT, "tools", "gen_tiny_model.py"), path] + flags,
                           capture_output=True, text=True)
        report(p.returncode == 0, f"generate {name}", p.stderr.strip()[-300:] or "written")
        if p.returncode == 0:
            models.append((name, path, tol))
    if a.fixtures_only:
        return _t.summary()

    if not os.access(binary, os.X_OK):
        report(False, "engine", f"{binary} is not built")
        _t.summary()
        return 1

    # the C API tests on a fixture they know the shape of
    p = subprocess.run([binary, os.path.join(fixtures, "tiny-f32-untied.gguf")], capture_output=True, text=True,
                       timeout=600)
    last = p.stdout.strip().splitlines()[-1] if p.stdout.strip() else ""
    report(p.returncode == 0 and " 0 failed" in last and " 0 skipped" in last, "test-model API cases",
           last if p.returncode == 0 else p.stdout[-800:] + p.stderr[-400:])

    # broken files: the load fails naming the tensor; a file without QKV biases loads and matches
    broken = [
        ("bad shape", ["--bad-shape", "blk.1.attn_k.weight"], "blk.1.attn_k.weight"),
        ("missing tensor", ["--drop", "blk.0.ffn_up.weight"], "missing tensor blk.0.ffn_up.weight"),
        ("bad bias shape", ["--bad-shape", "blk.0.attn_v.bias"], "blk.0.attn_v.bias"),
    ]
    with tempfile.TemporaryDirectory() as tmp:
        for what, flags, needle in broken:
            path = os.path.join(tmp, "broken.gguf")
            subprocess.run([sys.executable, os.path.join(ROOT, "tools", "gen_tiny_model.py"), path] + flags,
                           capture_output=True, check=True)
            try:
                run_engine(binary, path, [1, 2, 3], 0, tmp)
                report(False, f"load error: {what}", "the broken file loaded")
            except RuntimeError as e:
                report(needle in str(e), f"load error: {what}", str(e)[-200:])
        path = os.path.join(tmp, "nobias.gguf")
        drop = sum((["--drop", f"blk.{i}.attn_{x}.bias"] for i in range(2) for x in "qkv"), [])
        subprocess.run([sys.executable, os.path.join(ROOT, "tools", "gen_tiny_model.py"), path] + drop,
                       capture_output=True, check=True)
        ids = [5, 17, 200, 3, 9]
        try:
            rows, toks, kvc = run_engine(binary, path, ids, 4, tmp)
            ref_rows, ref_toks = Qwen2Ref(path).run(ids, 4)
            compare("no QKV biases (zero bias)", rows, toks, ref_rows, ref_toks, 1e-4, kvc)
        except RuntimeError as e:
            report(False, "no QKV biases (zero bias)", str(e))

    rng = np.random.default_rng(20240601)
    with tempfile.TemporaryDirectory() as tmp:
        for name, path, tol in models:
            ref = Qwen2Ref(path)
            for n in PROMPT_LENS:
                case = f"{name} prompt {n} + {DECODE_STEPS} steps"
                ids = [int(x) for x in rng.integers(0, ref.n_vocab, n)]
                try:
                    rows, toks, kvc = run_engine(binary, path, ids, DECODE_STEPS, tmp, isa="scalar")
                    fast_rows, fast_toks, fast_kvc = run_engine(binary, path, ids, DECODE_STEPS, tmp)
                except Exception as e:  # noqa: BLE001 - any engine failure is this case's failure
                    report(False, case, str(e))
                    continue
                ref_rows, ref_toks = ref.run(ids, DECODE_STEPS)
                compare(case + " [reference kernels]", rows, toks, ref_rows, ref_toks, tol, kvc)
                if "q8_0" in name:  # prompt rows only: greedy decode may take another path on a near tie
                    compare_fast(case + " [fast kernels]", fast_rows[: n * ref.n_vocab], ref_rows[:n], 0.1)
                else:  # float weights: the fast kernels compute in F32 like the references
                    compare(case + " [fast kernels]", fast_rows, fast_toks, ref_rows, ref_toks, tol, fast_kvc)

        if a.no_real or not os.path.exists(a.model):
            skip("real model", f"{a.model} absent" if not a.no_real else "--no-real")
        else:
            case = "real model 16-token prompt + 4 steps"
            ref = Qwen2Ref(a.model)
            ids = [int(x) for x in np.random.default_rng(7).integers(0, 151000, 16)]
            try:
                rows, toks, kvc = run_engine(binary, a.model, ids, 4, tmp, isa="scalar")
                rows = rows.reshape(-1, ref.n_vocab)[len(ids) - 1 :]  # last prompt position + decode steps
                ref_rows, ref_toks = ref.run(ids, 4, last_only=True)
                compare(case + " [reference kernels]", rows, toks, ref_rows, ref_toks, 1e-3, kvc)
                # Random ids give flat logits (no top-2 gap), so the fast kernels' top-1 check runs on a
                # natural prompt, whose next tokens are clear.
                case = "real model natural prompt + 6 steps [fast kernels]"
                text = ("<|im_start|>user\nWrite a C function that returns the larger of two ints."
                        "<|im_end|>\n<|im_start|>assistant\n")
                p = subprocess.run([os.path.join(a.build, "metallic"), "tokenize", a.model, text],
                                   capture_output=True, text=True, timeout=120, check=True)
                ids = json.loads(p.stdout)
                ref_rows, ref_toks = ref.run(ids, 6, last_only=True)
                fast_rows, fast_toks, _ = run_engine(binary, a.model, ids, 6, tmp)
                fast_rows = fast_rows.reshape(-1, ref.n_vocab)[len(ids) - 1 :]
                # Rows after the first differing greedy token condition on other tokens: compare up to it.
                same = next((i for i, (x, y) in enumerate(zip(fast_toks, ref_toks)) if x != y), len(ref_toks))
                n_rows = min(same + 1, len(ref_rows))
                compare_fast(case, fast_rows[:n_rows], ref_rows[:n_rows], 0.1)
                clear = int(np.sum(np.diff(np.sort(ref_rows[:n_rows], axis=1)[:, -2:], axis=1) > 0.5))
                report(clear >= n_rows // 2 and n_rows >= 4, case + ": rows with a clear top-1",
                       f"{clear} of {n_rows} compared rows, greedy fast {fast_toks} ref {ref_toks}")
            except Exception as e:  # noqa: BLE001
                report(False, case, str(e))

    _t.summary()
    return 1 if _t.failed else 0


if __name__ == "__main__":
    sys.exit(main())
