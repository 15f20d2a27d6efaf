#!/usr/bin/env python3
"""Our engine against Hugging Face transformers itself, on a random-weight Qwen2 folder (tools/gen_hf_random.py):
prompt logits (max |diff| / max |logit|) and 32 greedy tokens, on the CPU and, when there is a GPU, CUDA
(graph and legacy launches). transformers runs in float32 (TF32 off), on the GPU when torch sees one.

  check_hf_transformers.py --build build [--model DIR] [--layers N] [--vocab-from V.gguf]

Without --model a folder is generated in a temporary directory. Skips when torch or transformers is absent
(as on CI) or when no folder can be made. Greedy tokens may part at a near-tie: that counts as agreement
when transformers' own logits of the two tokens differ by less than TIE_TOL of max |logit|.
"""

import argparse
import json
import os
import subprocess
import sys
import tempfile

import numpy as np

from checklib import Tally

PROMPT = 'def fibonacci(n):\n    """Return the n-th Fibonacci number."""\n'
N_GEN = 32
LOGIT_TOL = 2e-3  # max |ours - HF| / max |HF logit|, float32 on both sides
TIE_TOL = 2e-3
EOS = (151643, 151645)


def sh(cmd, timeout=900):
    p = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout)
    return p.returncode, p.stdout, p.stderr


def hf_reference(model_dir, ids):
    """Prompt logits [n, V] and the greedy continuation with each step's logits, in float64."""
    import torch
    from transformers import AutoModelForCausalLM

    torch.backends.cuda.matmul.allow_tf32 = False
    torch.backends.cudnn.allow_tf32 = False
    dev = "cuda" if torch.cuda.is_available() else "cpu"
    try:
        m = AutoModelForCausalLM.from_pretrained(model_dir, dtype=torch.float32)
    except TypeError:
        m = AutoModelForCausalLM.from_pretrained(model_dir, torch_dtype=torch.float32)
    m = m.to(dev).eval()
    seq = list(ids)
    toks, steps = [], []
    with torch.no_grad():
        x = torch.tensor([seq], device=dev)
        prompt = m(x).logits[0].double().cpu().numpy()
        last = prompt[-1]
        for _ in range(N_GEN):
            t = int(np.argmax(last))
            steps.append(last)
            if t in EOS:
                break
            toks.append(t)
            seq.append(t)
            last = m(torch.tensor([seq], device=dev)).logits[0, -1].double().cpu().numpy()
    return prompt, toks, steps, dev


def compare_tokens(tally, name, ours, ref, steps):
    """Same greedy tokens, or a parting at a near-tie in the reference logits."""
    n = min(len(ours), len(ref))
    k = next((i for i in range(n) if ours[i] != ref[i]), n)
    if k == n and len(ours) == len(ref):
        tally.report(name, True, f"{len(ours)} tokens identical")
        return
    if k < n:
        l = steps[k]
        gap = (l[ref[k]] - l[ours[k]]) / np.abs(l).max()
        tally.report(name, gap < TIE_TOL,
                     f"part at token {k}: ours {ours[k]}, HF {ref[k]}, HF gap {gap:.2e} of max |logit|")
        return
    # one stopped earlier (an end-of-sequence token on one side only)
    tally.report(name, False, f"lengths differ after {n} equal tokens: ours {len(ours)}, HF {len(ref)}")


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--build", default="build")
    ap.add_argument("--model")
    ap.add_argument("--layers", type=int, default=4)
    ap.add_argument("--vocab-from", default=os.environ.get("VOCAB", "models/qwen2.5-coder-0.5b-instruct-q4_k_m.gguf"))
    a = ap.parse_args()
    t = Tally()
    try:
        import torch  # noqa: F401
        import transformers  # noqa: F401
    except ImportError as e:
        t.skip("transformers comparison", f"no torch/transformers ({e.name})")
        return t.summary()
    metallic = os.path.join(a.build, "metallic")
    test_model = os.path.join(a.build, "tests", "test-model")
    if not os.path.exists(test_model):  # a flat folder of carried binaries
        test_model = os.path.join(a.build, "test-model")
    tmp = tempfile.mkdtemp(prefix="mt-hf-")
    model = a.model
    if not model:
        if not os.path.exists(a.vocab_from):
            t.skip("transformers comparison", f"no tokenizer GGUF at {a.vocab_from}")
            return t.summary()
        model = os.path.join(tmp, "hf")
        rc, _, err = sh([sys.executable, os.path.join(os.path.dirname(__file__), "..", "tools", "gen_hf_random.py"),
                         model, "--layers", str(a.layers), "--vocab-from", a.vocab_from])
        if rc:
            t.report("generate random HF model", False, err.strip()[-400:])
            return t.summary()

    rc, out, err = sh([metallic, "tokenize", model, PROMPT])
    if rc:
        t.report("tokenize", False, err.strip())
        return t.summary()
    ids = json.loads(out)
    try:
        from tokenizers import Tokenizer

        hf_ids = Tokenizer.from_file(os.path.join(model, "tokenizer.json")).encode(PROMPT).ids
        t.report("prompt ids match the tokenizers package", hf_ids == ids, f"{len(ids)} ids")
    except ImportError:
        pass

    ref_logits, ref_toks, steps, hf_dev = hf_reference(model, ids)
    V = ref_logits.shape[1]
    scale = np.abs(ref_logits).max()
    print(f"transformers on {hf_dev}: prompt {len(ids)} tokens, vocab {V}, max |logit| {scale:.3f}, "
          f"greedy {ref_toks[:8]}...")

    # CPU prompt logits and greedy tokens through the tool mode of test-model
    ids_path, lg_path = os.path.join(tmp, "ids.txt"), os.path.join(tmp, "logits.f32")
    with open(ids_path, "w") as f:
        f.write(" ".join(map(str, ids)))
    rc, out, err = sh([test_model, "--logits", model, ids_path, lg_path, "--decode-steps", str(N_GEN)])
    if rc:
        t.report("cpu: test-model --logits", False, err.strip()[-400:])
    else:
        ours = np.fromfile(lg_path, dtype=np.float32)[: len(ids) * V].reshape(len(ids), V).astype(np.float64)
        rel = np.abs(ours - ref_logits).max() / scale
        t.report("cpu: prompt logits vs transformers", rel < LOGIT_TOL, f"max diff {rel:.2e} of max |logit|")
        greedy = [int(x) for x in out.split("greedy:")[1].split("\n")[0].split()]
        n = len(ref_toks)  # test-model does not stop at an end token
        compare_tokens(t, "cpu: greedy tokens (test-model) vs transformers", greedy[:n], ref_toks, steps)

    # the CLI, per device: greedy ids (argmax where the logits live) and top-5 logprobs of each step
    runs = [("cpu", [])]
    rc, _, _ = sh([metallic, "run", model, "x", "--raw", "--device", "cuda", "--max-tokens", "1", "--ctx", "64"])
    if rc == 0:
        runs += [("cuda graph", ["--backend", "graph"]), ("cuda legacy", ["--backend", "legacy"])]
    else:
        t.skip("cuda runs", "no CUDA device or build")
    for name, extra in runs:
        dev = ["--device", name.split()[0]] + extra
        base = [metallic, "run", model, PROMPT, "--raw", "--temperature", "0", "--max-tokens", str(N_GEN),
                "--ctx", "256", "--output-format", "json"] + dev
        rc, out, err = sh(base)
        if rc:
            t.report(f"{name}: run", False, err.strip()[-400:])
            continue
        j = json.loads(out)
        t.report(f"{name}: prompt ids", j["prompt_tokens"] == ids)
        compare_tokens(t, f"{name}: greedy tokens (no logprobs) vs transformers", j["tokens"], ref_toks, steps)
        rc, out, err = sh(base + ["--logprobs", "5"])
        if rc:
            t.report(f"{name}: run --logprobs", False, err.strip()[-400:])
            continue
        j = json.loads(out)
        # only up to the first parting: after it the two sides see different histories
        n_cmp = next((i + 1 for i, (x, y) in enumerate(zip(j["tokens"], ref_toks)) if x != y), len(steps))
        worst = 0.0
        for k, top in enumerate(j["logprobs"][:n_cmp]):
            l = steps[k]
            lse = l.max() + np.log(np.exp(l - l.max()).sum())
            for e in top:
                worst = max(worst, abs(e["logprob"] - (l[e["id"]] - lse)))
        t.report(f"{name}: top-5 logprobs vs transformers' log-softmax", worst < LOGIT_TOL * scale,
                 f"max diff {worst:.2e} over {min(n_cmp, len(j['logprobs']))} steps")
    return t.summary()


if __name__ == "__main__":
    sys.exit(main())
