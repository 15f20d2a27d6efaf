#!/usr/bin/env python3
"""Hugging Face folders: the engine gives the same logits from a converted folder as from its GGUF.

Writes tiny random-weight Qwen2 GGUFs (tools/gen_tiny_model.py), converts each to a folder
(tools/gguf_to_hf.py) and runs `test-model --logits` on both, for random prompts (fixed seed) with
logits at every position plus 8 greedy steps:
- F32/F16 kept as stored (untied, tied, sharded over 3 files with an index): logits within 1e-5 of
  max |logit| and identical greedy tokens;
- converted to BF16 or F16: against the NumPy reference (tests/ref_qwen2.py) run on the same rounded
  weights, within 1e-4 (1e-2 is the bound asked of BF16), and against the F32 GGUF within 5e-2 (the
  rounding's own effect; a transposed or misplaced tensor gives O(1));
- what the loader read (`test-safetensors --hf-source`): config, EOS ids, generation_config, dtypes;
- the folder's tokenizer.json: the engine's ids equal the `tokenizers` package's and the GGUF's;
- broken folders (missing config key, wrong architecture, missing files, shape mismatch, untied head
  absent, unsupported rope_scaling, bad generation_config, truncated weights) fail with a message that
  names the problem.

With --real (off by default: the conversion takes a minute and 1.2 GB), the default Q4_K_M model is
also converted to an F16 folder (dequantized) and a chat prompt's logits and 6 greedy steps are compared
with the GGUF's (within 2e-3: the F16 rounding of the dequantized weights; greedy tokens identical).

  check_hf.py --build build [--real]
"""

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile

import numpy as np
from checklib import Tally  # noqa: E402

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(HERE)
sys.path.insert(0, HERE)
PY = sys.executable
REAL_MODEL = os.path.join(ROOT, "models", "qwen2.5-coder-0.5b-instruct-q4_k_m.gguf")
DECODE_STEPS = 8

_t = Tally()
def report(ok, name, detail=""):
    _t.report(name, ok, detail)


skip = _t.skip






def run(cmd):
    return subprocess.run(cmd, capture_output=True, text=True, timeout=600)


def gen_model(path, *flags):
    r = run([PY, os.path.join(ROOT, "tools", "gen_tiny_model.py"), path, *flags])
    if r.returncode != 0:
        raise RuntimeError(f"gen_tiny_model failed: {r.stderr.strip()}")


def to_hf(gguf_path, out, *flags):
    r = run([PY, os.path.join(ROOT, "tools", "gguf_to_hf.py"), gguf_path, out, *flags])
    if r.returncode != 0:
        raise RuntimeError(f"gguf_to_hf failed: {r.stderr.strip()}")


def engine_logits(binary, model, ids, tmp):
    """(rows [len(ids)+steps, vocab], greedy tokens) from test-model --logits; raises with its error."""
    idf, outf = os.path.join(tmp, "ids.txt"), os.path.join(tmp, "out.f32")
    with open(idf, "w") as f:
        f.write(" ".join(str(int(i)) for i in ids))
    r = run([binary, "--logits", model, idf, outf, "--decode-steps", str(DECODE_STEPS)])
    if r.returncode != 0:
        raise RuntimeError((r.stderr + r.stdout).strip())
    toks = []
    for line in r.stdout.splitlines():
        if line.startswith("greedy:"):
            toks = [int(x) for x in line.split()[1:]]
    rows = np.fromfile(outf, dtype=np.float32)
    return rows.reshape(len(ids) + DECODE_STEPS, -1), toks


def rel_err(a, ref):
    return float(np.max(np.abs(a.astype(np.float64) - ref)) / max(np.max(np.abs(ref)), 1e-30))


def hf_source(tool, folder):
    r = run([tool, "--hf-source", folder])
    out = r.stdout.strip()
    if r.returncode != 0:
        return None, out
    return json.loads(out), out


def round_bf16(a):
    u = np.ascontiguousarray(a, dtype=np.float32).view(np.uint32).astype(np.uint64)
    u = ((u + 0x7FFF + ((u >> 16) & 1)) >> 16) << 16
    return u.astype(np.uint32).view(np.float32)


def same_weights_case(tm, name, gguf_path, folder, prompts, tmp, tol=1e-5):
    try:
        worst, tok_ok = 0.0, True
        for ids in prompts:
            a, ta = engine_logits(tm, gguf_path, ids, tmp)
            b, tb = engine_logits(tm, folder, ids, tmp)
            worst = max(worst, rel_err(b, a))
            tok_ok &= ta == tb and len(ta) == DECODE_STEPS
        report(worst <= tol and tok_ok, name,
               f"max rel diff {worst:.2e} (tol {tol:g}), greedy tokens {'equal' if tok_ok else 'DIFFER'}")
    except Exception as e:  # noqa: BLE001 -- any failure of the engine is a failed case
        report(False, name, str(e))


def rounded_case(tm, name, gguf_path, folder, rounder, prompts, tmp):
    """Folder holds rounded weights: compare with the reference on the same rounding, and with the GGUF."""
    try:
        from ref_qwen2 import Qwen2Ref

        ref = Qwen2Ref(gguf_path)
        ref.t = {k: rounder(v) for k, v in ref.t.items()}
        ref.embd = ref.t["token_embd.weight"]
        ref.out = ref.t.get("output.weight", ref.embd)
        worst_ref = worst_gguf = 0.0
        tok_ok = True
        for ids in prompts:
            b, tb = engine_logits(tm, folder, ids, tmp)
            rows, toks = ref.run(list(ids), DECODE_STEPS)
            worst_ref = max(worst_ref, rel_err(b, rows))
            tok_ok &= tb == toks
            a, _ = engine_logits(tm, gguf_path, ids, tmp)
            worst_gguf = max(worst_gguf, rel_err(b, a))
        ok = worst_ref <= 1e-4 and tok_ok and worst_gguf <= 5e-2
        report(ok, name, f"vs reference on rounded weights {worst_ref:.2e} (tol 1e-4), greedy tokens "
                         f"{'equal' if tok_ok else 'DIFFER'}; vs f32 GGUF {worst_gguf:.2e} (tol 5e-2)")
    except Exception as e:  # noqa: BLE001
        report(False, name, str(e))


def error_cases(tool, tm, base, tied_base, tmp):
    """Each breaks a copy of a good folder; the loader must fail naming the problem."""

    def edit_json(d, file, fn):
        p = os.path.join(d, file)
        with open(p) as f:
            j = json.load(f)
        fn(j)
        with open(p, "w") as f:
            json.dump(j, f)

    def truncate(d):
        p = os.path.join(d, "model.safetensors")
        with open(p, "r+b") as f:
            f.truncate(os.path.getsize(p) - 100)

    cases = [
        ("missing config key", lambda d: edit_json(d, "config.json", lambda j: j.pop("num_key_value_heads")),
         'missing key "num_key_value_heads"'),
        ("wrong architecture",
         lambda d: edit_json(d, "config.json", lambda j: j.update(architectures=["LlamaForCausalLM"])),
         "LlamaForCausalLM"),
        ("no config.json", lambda d: os.remove(os.path.join(d, "config.json")), "config.json"),
        ("no tokenizer.json", lambda d: os.remove(os.path.join(d, "tokenizer.json")), "tokenizer.json"),
        ("no weights", lambda d: os.remove(os.path.join(d, "model.safetensors")), "no *.safetensors"),
        ("shape mismatch", lambda d: edit_json(d, "config.json", lambda j: j.update(intermediate_size=128)),
         "mlp.gate_proj.weight"),
        ("untied head missing",
         lambda d: edit_json(d, "config.json", lambda j: j.update(tie_word_embeddings=False)), "lm_head.weight",
         tied_base),
        ("rope_scaling", lambda d: edit_json(d, "config.json",
                                             lambda j: j.update(rope_scaling={"type": "yarn", "factor": 4.0})),
         "rope_scaling"),
        ("bad generation_config", lambda d: edit_json(d, "generation_config.json", lambda j: j.update(top_p=2.0)),
         "generation_config.json"),
        ("config not JSON", lambda d: open(os.path.join(d, "config.json"), "w").write("{\"hidden_size\": "),
         "config.json: not valid JSON"),
        ("truncated weights", truncate, "model.safetensors"),
    ]
    for name, breaker, piece, *src in cases:
        d = os.path.join(tmp, "broken")
        shutil.rmtree(d, ignore_errors=True)
        shutil.copytree(src[0] if src else base, d)
        breaker(d)
        src, out = hf_source(tool, d)
        ok = src is None and piece in out
        # the whole engine (mt_model_load) reports the same
        r = run([tm, "--logits", d, os.path.join(tmp, "ids-err.txt"), os.path.join(tmp, "x.f32")])
        ok2 = r.returncode != 0 and piece in (r.stderr + r.stdout)
        report(ok and ok2, f"error: {name}", out if ok else f"expected a message with {piece!r}, got {out!r}")


def tokenizer_case(metallic, folder, gguf_path, texts, name):
    from tokenizers import Tokenizer

    tok = Tokenizer.from_file(os.path.join(folder, "tokenizer.json"))
    bad = []
    for t in texts:
        want = tok.encode(t, add_special_tokens=False).ids
        got = []
        for model in (folder, gguf_path):
            r = run([metallic, "tokenize", model, t])
            got.append(json.loads(r.stdout) if r.returncode == 0 else r.stderr.strip())
        if got[0] != want or got[1] != want:
            bad.append(f"{t!r}: tokenizers {want[:12]}, folder {str(got[0])[:60]}, gguf {str(got[1])[:60]}")
    report(not bad, name, f"{len(texts)} texts" if not bad else "; ".join(bad[:3]))


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--build", default="build")
    ap.add_argument("--real", action="store_true", help="also convert and compare the default real model")
    a = ap.parse_args()
    tm = os.path.join(a.build, "tests", "test-model")
    tool = os.path.join(a.build, "tests", "test-safetensors")
    metallic = os.path.join(a.build, "metallic")
    for b in (tm, tool):
        if not os.access(b, os.X_OK):
            report(False, "build", f"{b} is not built")
            return _t.summary()

    rng = np.random.default_rng(7)
    tmp = tempfile.mkdtemp(prefix="mt-hf-")
    try:
        g_untied = os.path.join(tmp, "untied.gguf")
        g_tied = os.path.join(tmp, "tied.gguf")
        g_f16 = os.path.join(tmp, "f16.gguf")
        gen_model(g_untied, "--dtype", "f32", "--layers", "3", "--rope-base", "1000000", "--seed", "21")
        gen_model(g_tied, "--dtype", "f32", "--tied", "--layers", "2", "--seed", "22")
        gen_model(g_f16, "--dtype", "f16", "--layers", "2", "--seed", "23")
        n_vocab = 320
        prompts = [rng.integers(0, n_vocab, n).tolist() for n in (1, 7, 64)]

        folders = {}
        for key, src, flags in [
            ("untied-f32", g_untied, []),
            ("tied-f32", g_tied, []),
            ("f16-kept", g_f16, []),
            ("untied-sharded", g_untied, ["--shards", "3"]),
            ("untied-bf16", g_untied, ["--dtype", "bf16"]),
            ("tied-bf16", g_tied, ["--dtype", "bf16"]),
            ("untied-f16", g_untied, ["--dtype", "f16"]),
            ("gen", g_untied, ["--greedy", "--top-k", "5", "--top-p", "0.9", "--repetition-penalty", "1.1"]),
        ]:
            folders[key] = os.path.join(tmp, key)
            to_hf(src, folders[key], *flags)
        with open(os.path.join(tmp, "ids-err.txt"), "w") as f:
            f.write("1 2 3")

        same_weights_case(tm, "f32 untied: folder == gguf", g_untied, folders["untied-f32"], prompts, tmp)
        same_weights_case(tm, "f32 tied: folder == gguf", g_tied, folders["tied-f32"], prompts, tmp)
        same_weights_case(tm, "f16 kept: folder == gguf", g_f16, folders["f16-kept"], prompts, tmp)
        same_weights_case(tm, "f32 in 3 shards + index: folder == gguf", g_untied, folders["untied-sharded"],
                          prompts, tmp)
        rounded_case(tm, "bf16 untied", g_untied, folders["untied-bf16"], round_bf16, prompts, tmp)
        rounded_case(tm, "bf16 tied", g_tied, folders["tied-bf16"], round_bf16, prompts, tmp)
        rounded_case(tm, "f16 from f32", g_untied, folders["untied-f16"],
                     lambda v: v.astype(np.float16).astype(np.float32), prompts, tmp)

        # what the loader read
        s, out = hf_source(tool, folders["untied-f32"])
        ok = s is not None and (s["n_layer"], s["n_embd"], s["n_head"], s["n_head_kv"], s["n_ff"], s["n_vocab"],
                                s["n_ctx_train"], s["rope_base"], s["tied_output"], s["dtype_wq"]) == (
            3, 64, 4, 2, 160, 320, 1024, 1e6, False, "f32") and abs(s["rms_eps"] - 1e-6) < 1e-12
        ok = ok and s["eos_ids"][0] == 319 and s["bos_id"] == 317 and s["chat_template"]
        report(ok, "config read from untied folder", out[:160])
        s, out = hf_source(tool, folders["tied-bf16"])
        ok = s is not None and s["tied_output"] and s["output_is_embd"] and s["dtype_wq"] == "bf16" \
            and s["dtype_attn_norm"] == "f32" and s["n_mappings"] == 1
        report(ok, "tied bf16 folder: head is the embedding, norms copied to f32", out[:160])
        s, out = hf_source(tool, folders["untied-sharded"])
        report(s is not None and s["n_mappings"] == 3, "sharded folder maps 3 files", out[:100])
        s, out = hf_source(tool, folders["gen"])
        ok = s is not None and s["temperature"] == 0 and s["top_k"] == 5 and abs(s["top_p"] - 0.9) < 1e-6 \
            and abs(s["repeat_penalty"] - 1.1) < 1e-6
        report(ok, "generation_config: do_sample=false -> greedy, top_k/top_p/penalty", out[-260:])
        d = os.path.join(tmp, "eos-list")
        shutil.copytree(folders["untied-f32"], d)
        with open(os.path.join(d, "config.json")) as f:
            cfg = json.load(f)
        cfg["eos_token_id"], cfg["bos_token_id"] = [5, 319], None
        with open(os.path.join(d, "config.json"), "w") as f:
            json.dump(cfg, f)
        with open(os.path.join(d, "generation_config.json"), "w") as f:
            json.dump({"eos_token_id": [7, 5], "temperature": 0.3}, f)
        s, out = hf_source(tool, d)
        # config's list first, then the stop tokens the GGUF loader also adds, then generation_config's
        ok = s is not None and s["eos_ids"][:2] == [5, 319] and {5, 319, 7} <= set(s["eos_ids"]) and \
            s["bos_id"] == -1 and \
            abs(s["temperature"] - 0.3) < 1e-6 and s["top_k"] == 20
        report(ok, "eos_token_id lists from config and generation_config, null bos", out[-320:])

        error_cases(tool, tm, folders["untied-f32"], folders["tied-f32"], tmp)

        if os.access(metallic, os.X_OK):
            texts = ["hello world", "the quick brown fox jumps over the lazy dog.", "int main(void) { return 0; }",
                     "<|im_start|>user\nhi there<|im_end|>\n", "  spaces   and\ttabs\n\nnewlines 12345",
                     "caf\u00e9 na\u00efve \u65e5\u672c\u8a9e"]
            tokenizer_case(metallic, folders["untied-f32"], g_untied, texts, "tiny tokenizer.json == tokenizers == gguf")
            if os.path.exists(REAL_MODEL):
                sys.path.insert(0, os.path.join(ROOT, "tools"))
                import gguf
                from gguf_to_hf import tokenizer_json

                r = gguf.GGUFReader(REAL_MODEL)
                fld = lambda k: r.fields[k].contents()  # noqa: E731
                d = os.path.join(tmp, "real-tok")
                os.makedirs(d)
                with open(os.path.join(d, "tokenizer.json"), "w", encoding="utf-8") as f:
                    json.dump(tokenizer_json(fld("tokenizer.ggml.tokens"), fld("tokenizer.ggml.token_type"),
                                             fld("tokenizer.ggml.merges")), f, ensure_ascii=False)
                texts += ["def reverse(s: str) -> str:\n    return s[::-1]\n", "\u00a1Hola! \u00bfQu\u00e9 tal? 3.14159",
                          "<|fim_prefix|>x<|fim_suffix|>y<|fim_middle|>", "I'm sure they've done it, we'll see"]
                tokenizer_case(metallic, d, REAL_MODEL, texts, "real vocabulary: tokenizer.json == tokenizers == gguf")
            else:
                skip("real vocabulary tokenizer.json", f"{REAL_MODEL} not present")
        else:
            skip("tokenizer.json vs tokenizers", f"{metallic} is not built")
        if a.real and os.path.exists(REAL_MODEL):
            d = os.path.join(tmp, "real-f16")
            to_hf(REAL_MODEL, d, "--dtype", "f16")
            # <|im_start|>user\nWrite a C function that reverses a string.<|im_end|>\n<|im_start|>assistant\n
            ids = [151644, 872, 198, 7985, 264, 356, 729, 429, 17431, 264, 914, 13, 151645, 198, 151644, 77091, 198]
            global DECODE_STEPS
            DECODE_STEPS = 6
            try:
                ga, ta = engine_logits(tm, REAL_MODEL, ids, tmp)
                gb, tb = engine_logits(tm, d, ids, tmp)
                e = rel_err(gb, ga)
                report(e <= 2e-3 and ta == tb, "real model: f16 folder vs q4_k_m gguf",
                       f"max rel diff {e:.2e} (tol 2e-3), greedy {ta} vs {tb}")
            except Exception as ex:  # noqa: BLE001
                report(False, "real model: f16 folder vs q4_k_m gguf", str(ex))
        elif a.real:
            skip("real model folder", f"{REAL_MODEL} not present")
    except Exception as e:  # noqa: BLE001 -- setup failures count as one failure, with the reason
        report(False, "setup", str(e))
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    _t.summary()
    return 1 if _t.failed else 0


if __name__ == "__main__":
    sys.exit(main())
