#!/usr/bin/env python3
"""Writes a tiny random-weight Qwen2 GGUF for tests.

The file has the real layout of a Qwen2 GGUF (same keys, tensor names, QKV biases, grouped-query
attention: 4 query heads over 2 KV heads) at toy sizes, so the engine and the NumPy reference
(tests/ref_qwen2.py) can be compared in seconds. The vocabulary is a small byte-level BPE learnt here
from a fixed text (256 byte tokens, some merges, the Qwen special tokens), or copied from a real model.

  gen_tiny_model.py OUT.gguf --dtype f32|f16|q8_0 [--tied] [--layers 2] [--rope-base 1e6]
                    [--vocab-from MODEL.gguf | --vocab-from synthetic] [--seed S]
                    [--drop TENSOR] [--bad-shape TENSOR]   (broken files for the load-error tests)
"""

import argparse
import sys

import numpy as np

import gguf

N_EMBD = 64
N_HEAD = 4
N_HEAD_KV = 2
HEAD_DIM = N_EMBD // N_HEAD
N_FF = 160
N_CTX = 1024

SPECIALS = ["<|endoftext|>", "<|im_start|>", "<|im_end|>"]

CHAT_TEMPLATE = (
    "{% for message in messages %}{{'<|im_start|>' + message['role'] + '\\n' + message['content'] + "
    "'<|im_end|>' + '\\n'}}{% endfor %}{% if add_generation_prompt %}{{ '<|im_start|>assistant\\n' }}{% endif %}"
)

# Text the synthetic merges are learnt from (any fixed text gives a valid, deterministic vocabulary).
CORPUS = (
    "the quick brown fox jumps over the lazy dog. int main(void) { return 0; } "
    "a tokenizer merges the most frequent pair of symbols, then the next, and so on; "
    "the model reads the tokens and predicts the next one. for (int i = 0; i < n; i++) sum += x[i]; "
    "hello world, hello there, the end of the text is here."
)


def bytes_to_unicode():
    """The GPT-2 byte-level alphabet: each byte maps to a printable character."""
    bs = list(range(ord("!"), ord("~") + 1)) + list(range(ord("¡"), ord("¬") + 1)) + list(range(ord("®"), ord("ÿ") + 1))
    cs = bs[:]
    n = 0
    for b in range(256):
        if b not in bs:
            bs.append(b)
            cs.append(256 + n)
            n += 1
    return {b: chr(c) for b, c in zip(bs, cs)}


def synthetic_vocab(n_merges):
    """Learns n_merges BPE merges from CORPUS; returns (tokens, types, merges, eos_id, bos_id)."""
    b2u = bytes_to_unicode()
    tokens = [b2u[b] for b in range(256)]
    words = []
    for i, w in enumerate(CORPUS.split(" ")):
        w = (" " if i else "") + w
        words.append([b2u[b] for b in w.encode("utf-8")])
    merges = []
    known = set(tokens)
    while len(merges) < n_merges:
        counts = {}
        for w in words:
            for a, b in zip(w, w[1:]):
                counts[(a, b)] = counts.get((a, b), 0) + 1
        if not counts:
            break
        # most frequent pair, ties broken by the pair itself so the result is deterministic
        pair = max(counts.items(), key=lambda kv: (kv[1], kv[0]))[0]
        merged = pair[0] + pair[1]
        merges.append(pair[0] + " " + pair[1])
        if merged not in known:
            tokens.append(merged)
            known.add(merged)
        for w in words:
            i = 0
            while i < len(w) - 1:
                if w[i] == pair[0] and w[i + 1] == pair[1]:
                    w[i : i + 2] = [merged]
                else:
                    i += 1
    types = [gguf.TokenType.NORMAL] * len(tokens)
    tokens += SPECIALS
    types += [gguf.TokenType.CONTROL] * len(SPECIALS)
    eos = tokens.index("<|im_end|>")
    bos = tokens.index("<|endoftext|>")
    return tokens, types, merges, eos, bos


def vocab_from(path):
    r = gguf.GGUFReader(path)

    def field(k):
        return r.fields[k].contents()

    tokens = field("tokenizer.ggml.tokens")
    types = field("tokenizer.ggml.token_type")
    merges = field("tokenizer.ggml.merges")
    eos = field("tokenizer.ggml.eos_token_id")
    bos = field("tokenizer.ggml.bos_token_id") if "tokenizer.ggml.bos_token_id" in r.fields else None
    return tokens, types, merges, eos, bos


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("out")
    ap.add_argument("--dtype", choices=["f32", "f16", "q8_0"], default="f32", help="dtype of the matrices")
    ap.add_argument("--tied", action="store_true", help="no output.weight: the head is the embedding")
    ap.add_argument("--layers", type=int, default=2)
    ap.add_argument("--rope-base", type=float, default=10000.0)
    ap.add_argument("--ctx", type=int, default=N_CTX)
    ap.add_argument("--vocab-from", default="synthetic", help="MODEL.gguf to copy the tokenizer from, or 'synthetic'")
    ap.add_argument("--merges", type=int, default=61, help="merges of the synthetic vocabulary")
    ap.add_argument("--seed", type=int, default=1)
    ap.add_argument("--arch", default="qwen2", help="architecture name written (tests use a wrong one)")
    ap.add_argument("--drop", action="append", default=[], help="leave this tensor out (load-error tests)")
    ap.add_argument("--bad-shape", action="append", default=[], help="write this tensor one row short")
    a = ap.parse_args()

    if a.vocab_from == "synthetic":
        tokens, types, merges, eos, bos = synthetic_vocab(a.merges)
    else:
        tokens, types, merges, eos, bos = vocab_from(a.vocab_from)
    n_vocab = len(tokens)
    rng = np.random.default_rng(a.seed)

    def mat(rows, cols, scale=1.0):
        # fan-in scaling keeps activations O(1) through the blocks, so logits are neither flat nor huge
        return (rng.standard_normal((rows, cols)) * scale / np.sqrt(cols)).astype(np.float32)

    def vec(n, mean, sd):
        return (mean + sd * rng.standard_normal(n)).astype(np.float32)

    qtype = {"f32": None, "f16": None, "q8_0": gguf.GGMLQuantizationType.Q8_0}[a.dtype]

    w = gguf.GGUFWriter(a.out, a.arch)
    arch = a.arch
    w.add_name(f"tiny-qwen2-{a.dtype}{'-tied' if a.tied else ''}")
    w.add_uint32(f"{arch}.block_count", a.layers)
    w.add_uint32(f"{arch}.context_length", a.ctx)
    w.add_uint32(f"{arch}.embedding_length", N_EMBD)
    w.add_uint32(f"{arch}.feed_forward_length", N_FF)
    w.add_uint32(f"{arch}.attention.head_count", N_HEAD)
    w.add_uint32(f"{arch}.attention.head_count_kv", N_HEAD_KV)
    w.add_float32(f"{arch}.rope.freq_base", a.rope_base)
    w.add_float32(f"{arch}.attention.layer_norm_rms_epsilon", 1e-6)
    w.add_tokenizer_model("gpt2")
    w.add_tokenizer_pre("qwen2")
    w.add_token_list(tokens)
    w.add_token_types(types)
    w.add_token_merges(merges)
    w.add_eos_token_id(int(eos))
    if bos is not None:
        w.add_bos_token_id(int(bos))
    w.add_chat_template(CHAT_TEMPLATE)

    def put(name, arr, matrix=True):
        if name in a.drop:
            return
        if name in a.bad_shape:
            arr = arr[:-1] if arr.ndim == 2 else arr[:-2]
        if not matrix or a.dtype == "f32":
            w.add_tensor(name, arr.astype(np.float32))
        elif a.dtype == "f16":
            w.add_tensor(name, arr.astype(np.float16))
        else:
            w.add_tensor(name, gguf.quants.quantize(arr, qtype), raw_dtype=qtype)

    kv = N_HEAD_KV * HEAD_DIM
    put("token_embd.weight", (rng.standard_normal((n_vocab, N_EMBD)) * 0.5).astype(np.float32))
    for i in range(a.layers):
        p = f"blk.{i}."
        put(p + "attn_norm.weight", vec(N_EMBD, 1.0, 0.2), matrix=False)
        put(p + "attn_q.weight", mat(N_EMBD, N_EMBD, 1.5))
        put(p + "attn_k.weight", mat(kv, N_EMBD, 1.5))
        put(p + "attn_v.weight", mat(kv, N_EMBD))
        put(p + "attn_q.bias", vec(N_EMBD, 0.0, 0.3), matrix=False)
        put(p + "attn_k.bias", vec(kv, 0.0, 0.3), matrix=False)
        put(p + "attn_v.bias", vec(kv, 0.0, 0.1), matrix=False)
        put(p + "attn_output.weight", mat(N_EMBD, N_EMBD))
        put(p + "ffn_norm.weight", vec(N_EMBD, 1.0, 0.2), matrix=False)
        put(p + "ffn_gate.weight", mat(N_FF, N_EMBD, 1.5))
        put(p + "ffn_up.weight", mat(N_FF, N_EMBD))
        put(p + "ffn_down.weight", mat(N_EMBD, N_FF))
    put("output_norm.weight", vec(N_EMBD, 1.0, 0.2), matrix=False)
    if not a.tied:
        put("output.weight", mat(n_vocab, N_EMBD, 3.0))

    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()
    print(f"wrote {a.out}: {a.layers} layers, vocab {n_vocab}, {a.dtype}{' tied' if a.tied else ''}", file=sys.stderr)


if __name__ == "__main__":
    main()
