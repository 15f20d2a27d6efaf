#!/usr/bin/env python3
"""Writes a random-weight Qwen2.5 GGUF at the real shapes, or re-encodes a real GGUF, for benchmarks.

Speed depends on shapes and dtypes, not on the weight values, so a random model of the exact Qwen2.5
shapes measures what the real one would (0.5B: 896 wide, 24 layers, 14 query / 2 KV heads, FFN 4864, vocab
151936, tied; 1.5B: 1536/28/12/2/8960/151936 tied; 7B: 3584/28/28/4/18944/152064 untied), all with QKV
biases, rope base 1e6, RMS eps 1e-6 and context 32768. The tokenizer (and every other tokenizer.* key) is
copied from a real model so llama.cpp loads the file too; a vocabulary shorter than the shape's is padded
with [PAD<i>] tokens, as the real 7B files are.

  gen_random_model.py OUT.gguf --shape 0.5b|1.5b|7b --dtype f16|q8_0|f32 [--vocab-from MODEL.gguf] [--seed S]
  gen_random_model.py OUT.gguf --requant IN.gguf --dtype f16|q8_0|f32

--requant dequantizes every matrix of IN.gguf and re-encodes it in --dtype (norm weights and biases stay
F32); all metadata is copied. Tensors are written one at a time, in row chunks, so a 15 GB 7B F16 file
needs only a few hundred MB of memory.
"""

import argparse
import os
import sys
import time

import numpy as np

import gguf
from gguf.gguf_writer import WriterState

DEFAULT_MODEL = "models/qwen2.5-coder-0.5b-instruct-q4_k_m.gguf"

# name: (n_embd, n_layer, n_head, n_head_kv, n_ff, n_vocab, tied)
SHAPES = {
    "0.5b": (896, 24, 14, 2, 4864, 151936, True),
    "1.5b": (1536, 28, 12, 2, 8960, 151936, True),
    "7b": (3584, 28, 28, 4, 18944, 152064, False),
}

QT = gguf.GGMLQuantizationType
DTYPES = {"f32": QT.F32, "f16": QT.F16, "q8_0": QT.Q8_0}
FILE_TYPE = {"f32": 0, "f16": 1, "q8_0": 7}  # general.file_type (llama_ftype) values
CHUNK_ELEMS = 1 << 24  # elements encoded per write: bounds memory for the big matrices


def encode(rows, dtype):
    """f32 rows -> the bytes (as an array) of those rows in dtype."""
    if dtype == "f32":
        return np.ascontiguousarray(rows, dtype=np.float32)
    if dtype == "f16":
        return rows.astype(np.float16)
    return gguf.quants.quantize(rows, QT.Q8_0)


def encoded_row_bytes(cols, dtype):
    return {"f32": 4 * cols, "f16": 2 * cols, "q8_0": cols // 32 * 34}[dtype]


class Streamer:
    """GGUFWriter used in two passes: every tensor's info first, then each tensor's data in chunks.

    GGUFWriter.write_tensor_data takes a whole tensor; writing chunks of one tensor needs its padding
    rules, reproduced here (pad to the alignment before the data, and after it)."""

    def __init__(self, path, arch):
        self.w = gguf.GGUFWriter(path, arch)
        self.plan = []  # (name, rows, cols, dtype, producer)

    def add(self, name, rows, cols, dtype, producer, vector=False):
        """producer(r0, r1) -> f32 array [r1 - r0, cols]; a vector is written 1-D (rows = 1)."""
        if dtype == "q8_0" and cols % 32:
            raise SystemExit(f"{name}: {cols} columns is not a multiple of 32 (q8_0)")
        self.plan.append((name, rows, cols, dtype, producer))
        nbytes = rows * encoded_row_bytes(cols, dtype)
        shape = (cols,) if vector else (rows, cols)
        if dtype == "q8_0":
            byte_shape = shape[:-1] + (encoded_row_bytes(cols, dtype),)
            self.w.add_tensor_info(name, byte_shape, np.dtype(np.uint8), nbytes, raw_dtype=QT.Q8_0)
        else:
            self.w.add_tensor_info(name, shape, np.dtype(np.float32 if dtype == "f32" else np.float16), nbytes)

    def write(self, verbose=True):
        w = self.w
        w.write_header_to_file()
        w.write_kv_data_to_file()
        w.write_ti_data_to_file()
        fout = w.fout[0]
        t0 = time.time()
        for i, (name, rows, cols, dtype, producer) in enumerate(self.plan):
            first = next(iter(w.tensors[0]))
            assert first == name, (first, name)
            ti = w.tensors[0].pop(name)
            w.write_padding(fout, fout.tell())
            step = max(1, CHUNK_ELEMS // cols)
            written = 0
            for r0 in range(0, rows, step):
                r1 = min(rows, r0 + step)
                data = encode(producer(r0, r1), dtype)
                data.tofile(fout)
                written += data.nbytes
            assert written == ti.nbytes, (name, written, ti.nbytes)
            w.write_padding(fout, written)
            w.state = WriterState.WEIGHTS
            if verbose and (rows * cols >= 1 << 24 or i == len(self.plan) - 1):
                print(f"  {i + 1}/{len(self.plan)} {name} [{rows}x{cols}] {dtype}  {time.time() - t0:.0f}s", file=sys.stderr)
        w.close()


def copy_field(w, key, field):
    """Copies one metadata key (any type) from a GGUFReader field to a writer."""
    vtype = field.types[0]
    if vtype == gguf.GGUFValueType.ARRAY:
        w.add_key_value(key, field.contents(), vtype, sub_type=field.types[1])
    else:
        w.add_key_value(key, field.contents(), vtype)


def random_model(a):
    n_embd, n_layer, n_head, n_kv, n_ff, n_vocab, tied = SHAPES[a.shape]
    hd = n_embd // n_head
    src = gguf.GGUFReader(a.vocab_from)
    s = Streamer(a.out, "qwen2")
    w = s.w
    w.add_name(f"Random Qwen2.5 {a.shape.upper()} {a.dtype.upper()}")
    w.add_uint32("qwen2.block_count", n_layer)
    w.add_uint32("qwen2.context_length", 32768)
    w.add_uint32("qwen2.embedding_length", n_embd)
    w.add_uint32("qwen2.feed_forward_length", n_ff)
    w.add_uint32("qwen2.attention.head_count", n_head)
    w.add_uint32("qwen2.attention.head_count_kv", n_kv)
    w.add_float32("qwen2.rope.freq_base", 1e6)
    w.add_float32("qwen2.attention.layer_norm_rms_epsilon", 1e-6)
    w.add_uint32("general.file_type", FILE_TYPE[a.dtype])
    w.add_uint32("general.quantization_version", 2)
    tokens = None
    for key, field in src.fields.items():
        if not key.startswith("tokenizer."):
            continue
        if key in ("tokenizer.ggml.tokens", "tokenizer.ggml.token_type", "tokenizer.ggml.scores"):
            continue
        copy_field(w, key, field)
    tokens = list(src.fields["tokenizer.ggml.tokens"].contents())
    types = list(src.fields["tokenizer.ggml.token_type"].contents())
    if len(tokens) > n_vocab:
        raise SystemExit(f"--vocab-from {a.vocab_from}: {len(tokens)} tokens > the {a.shape} vocabulary {n_vocab}")
    for i in range(len(tokens), n_vocab):  # pad like the real 7B files
        tokens.append(f"[PAD{i}]")
        types.append(gguf.TokenType.UNUSED)
    w.add_token_list(tokens)
    w.add_token_types(types)

    # Each tensor gets its own generator (seed, tensor index) so chunking does not change the values.
    def mat(idx, cols, scale=1.0):
        def produce(r0, r1):
            rng = np.random.default_rng([a.seed, idx, r0])
            x = rng.standard_normal((r1 - r0, cols), dtype=np.float32)
            x *= np.float32(scale / np.sqrt(cols))
            return x

        return produce

    def vec(idx, n, mean, sd):
        return lambda r0, r1: (mean + sd * np.random.default_rng([a.seed, idx]).standard_normal((1, n))).astype(np.float32)

    idx = iter(range(1 << 20))
    kv = n_kv * hd
    s.add("token_embd.weight", n_vocab, n_embd, a.dtype, mat(next(idx), n_embd, 0.5 * np.sqrt(n_embd)))
    for i in range(n_layer):
        p = f"blk.{i}."
        s.add(p + "attn_norm.weight", 1, n_embd, "f32", vec(next(idx), n_embd, 1.0, 0.1), vector=True)
        s.add(p + "attn_q.weight", n_embd, n_embd, a.dtype, mat(next(idx), n_embd))
        s.add(p + "attn_q.bias", 1, n_embd, "f32", vec(next(idx), n_embd, 0.0, 0.1), vector=True)
        s.add(p + "attn_k.weight", kv, n_embd, a.dtype, mat(next(idx), n_embd))
        s.add(p + "attn_k.bias", 1, kv, "f32", vec(next(idx), kv, 0.0, 0.1), vector=True)
        s.add(p + "attn_v.weight", kv, n_embd, a.dtype, mat(next(idx), n_embd))
        s.add(p + "attn_v.bias", 1, kv, "f32", vec(next(idx), kv, 0.0, 0.1), vector=True)
        s.add(p + "attn_output.weight", n_embd, n_embd, a.dtype, mat(next(idx), n_embd))
        s.add(p + "ffn_norm.weight", 1, n_embd, "f32", vec(next(idx), n_embd, 1.0, 0.1), vector=True)
        s.add(p + "ffn_gate.weight", n_ff, n_embd, a.dtype, mat(next(idx), n_embd))
        s.add(p + "ffn_up.weight", n_ff, n_embd, a.dtype, mat(next(idx), n_embd))
        s.add(p + "ffn_down.weight", n_embd, n_ff, a.dtype, mat(next(idx), n_ff))
    s.add("output_norm.weight", 1, n_embd, "f32", vec(next(idx), n_embd, 1.0, 0.1), vector=True)
    if not tied:
        s.add("output.weight", n_vocab, n_embd, a.dtype, mat(next(idx), n_embd))
    s.write()


def requant(a):
    src = gguf.GGUFReader(a.requant)
    arch = src.fields["general.architecture"].contents()
    s = Streamer(a.out, arch)
    for key, field in src.fields.items():
        if key.startswith("GGUF.") or key in ("general.architecture", "general.file_type", "general.alignment"):
            continue
        copy_field(s.w, key, field)
    s.w.add_uint32("general.file_type", FILE_TYPE[a.dtype])
    for t in src.tensors:
        shape = [int(x) for x in t.shape]  # ggml order: ne[0] (columns) first
        cols = shape[0]
        rows = int(np.prod(shape[1:])) if len(shape) > 1 else 1
        is_matrix = len(shape) >= 2
        if len(shape) > 2:
            raise SystemExit(f"{a.requant}: tensor {t.name} has {len(shape)} dimensions (expected 1 or 2)")
        data = t.data.reshape(rows, -1) if is_matrix else t.data.reshape(1, -1)

        def produce(r0, r1, data=data, tt=t.tensor_type, cols=cols):
            x = gguf.quants.dequantize(np.asarray(data[r0:r1]), tt)
            return np.asarray(x, dtype=np.float32).reshape(r1 - r0, cols)

        dtype = a.dtype if is_matrix else "f32"
        s.add(t.name, rows, cols, dtype, produce, vector=not is_matrix)
    s.write()


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("out")
    ap.add_argument("--shape", choices=sorted(SHAPES), default="0.5b")
    ap.add_argument("--dtype", choices=sorted(DTYPES), default="f16", help="dtype of the matrices")
    ap.add_argument("--vocab-from", default=DEFAULT_MODEL, help="GGUF whose tokenizer is copied")
    ap.add_argument("--requant", metavar="IN.gguf", help="re-encode this model instead of writing random weights")
    ap.add_argument("--seed", type=int, default=1)
    a = ap.parse_args()
    src = a.requant or a.vocab_from
    if not os.path.isfile(src):
        raise SystemExit(f"{'--requant' if a.requant else '--vocab-from'} {src}: no such file")
    os.makedirs(os.path.dirname(os.path.abspath(a.out)), exist_ok=True)
    tmp = a.out + ".part"  # a run that dies leaves no truncated file under the real name
    final, a.out = a.out, tmp
    t0 = time.time()
    if a.requant:
        requant(a)
    else:
        random_model(a)
    os.replace(tmp, final)
    what = f"{a.requant} re-encoded" if a.requant else f"random {a.shape}"
    print(f"wrote {final}: {what}, {a.dtype}, {os.path.getsize(final) / 2**20:.0f} MiB in {time.time() - t0:.0f}s", file=sys.stderr)


if __name__ == "__main__":
    main()
