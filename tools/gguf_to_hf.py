#!/usr/bin/env python3
"""Converts a qwen2 GGUF into a Hugging Face folder (the layout transformers saves for Qwen2ForCausalLM).

  gguf_to_hf.py IN.gguf OUTDIR [--dtype auto|f32|f16|bf16] [--shards N]
                [--temperature T --top-k K --top-p P --repetition-penalty R | --greedy]

Writes config.json, model.safetensors (or N shards plus model.safetensors.index.json),
tokenizer.json, tokenizer_config.json and generation_config.json.

- Tensors: GGUF names map to HF names (blk.N.attn_q.weight -> model.layers.N.self_attn.q_proj.weight,
  ...). A GGUF tensor with ne = {in, out} is the HF [out, in] matrix with the same bytes, and qwen2 GGUF
  files do not permute Q/K rows (unlike llama), so the data is copied as is. --dtype auto keeps F32/F16/
  BF16 as stored (quantized tensors are dequantized to F32); f32/f16/bf16 convert every tensor, norms
  and biases included, as HF checkpoints store them. No output.weight means tie_word_embeddings.
- safetensors is written by hand (8-byte little-endian header length, JSON header padded with spaces to
  a multiple of 8, data), so only numpy is needed.
- tokenizer.json is the Qwen2 layout: byte-level BPE over model.vocab/model.merges, the qwen2 split
  regex, NFC normalizer, and the GGUF's control / user-defined tokens as added_tokens with their GGUF
  ids (control ones special). It is loaded back with the `tokenizers` package as a check.
"""

import argparse
import json
import os
import struct
import sys

import numpy as np

import gguf

QWEN2_SPLIT = (
    r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+"
)

LAYER_NAMES = {
    "attn_norm.weight": "input_layernorm.weight",
    "attn_q.weight": "self_attn.q_proj.weight",
    "attn_k.weight": "self_attn.k_proj.weight",
    "attn_v.weight": "self_attn.v_proj.weight",
    "attn_q.bias": "self_attn.q_proj.bias",
    "attn_k.bias": "self_attn.k_proj.bias",
    "attn_v.bias": "self_attn.v_proj.bias",
    "attn_output.weight": "self_attn.o_proj.weight",
    "ffn_norm.weight": "post_attention_layernorm.weight",
    "ffn_gate.weight": "mlp.gate_proj.weight",
    "ffn_up.weight": "mlp.up_proj.weight",
    "ffn_down.weight": "mlp.down_proj.weight",
}
TOP_NAMES = {
    "token_embd.weight": "model.embed_tokens.weight",
    "output_norm.weight": "model.norm.weight",
    "output.weight": "lm_head.weight",
}

TT = gguf.GGMLQuantizationType


def hf_name(name):
    if name in TOP_NAMES:
        return TOP_NAMES[name]
    parts = name.split(".", 2)
    if len(parts) == 3 and parts[0] == "blk" and parts[2] in LAYER_NAMES:
        return f"model.layers.{int(parts[1])}.{LAYER_NAMES[parts[2]]}"
    raise SystemExit(f"error: tensor {name} has no Hugging Face Qwen2 equivalent")


def f32_to_bf16_bits(a):
    """Round-to-nearest-even float32 -> bfloat16 bit patterns (NaN kept NaN)."""
    u = np.ascontiguousarray(a, dtype=np.float32).view(np.uint32).astype(np.uint64)
    r = (u + 0x7FFF + ((u >> 16) & 1)) >> 16
    r = np.where(np.isnan(a), 0x7FC0, r)
    return r.astype(np.uint16)


def tensor_values(t):
    """(array outermost-first, stored dtype name) of a GGUF tensor; float32 unless F16/BF16 kept."""
    shape = tuple(int(x) for x in reversed(list(t.shape)))  # GGUF ne is innermost first
    if t.tensor_type == TT.F32:
        return np.asarray(t.data, dtype=np.float32).reshape(shape), "F32"
    if t.tensor_type == TT.F16:
        return np.asarray(t.data, dtype=np.float16).reshape(shape), "F16"
    if t.tensor_type == TT.BF16:
        bits = np.asarray(t.data).view(np.uint16).reshape(shape)
        return bits, "BF16"
    return gguf.quants.dequantize(t.data, t.tensor_type).astype(np.float32).reshape(shape), "F32"


def convert(arr, stored, want):
    """Returns (bytes, safetensors dtype) for the array in the requested dtype."""
    if want == "auto":
        want = {"F32": "f32", "F16": "f16", "BF16": "bf16"}[stored]
    if stored == "BF16":
        if want == "bf16":
            return np.ascontiguousarray(arr, dtype=np.uint16).tobytes(), "BF16"
        arr = (arr.astype(np.uint32) << 16).view(np.float32)
    if want == "f32":
        return np.ascontiguousarray(arr, dtype="<f4").tobytes(), "F32"
    if want == "f16":
        return np.ascontiguousarray(arr, dtype="<f2").tobytes(), "F16"
    return f32_to_bf16_bits(arr.astype(np.float32)).astype("<u2").tobytes(), "BF16"


def write_safetensors(path, tensors, metadata):
    """tensors: list of (name, dtype, shape, bytes) in data order."""
    header = {"__metadata__": metadata}
    pos = 0
    for name, dt, shape, blob in tensors:
        header[name] = {"dtype": dt, "shape": list(shape), "data_offsets": [pos, pos + len(blob)]}
        pos += len(blob)
    h = json.dumps(header, separators=(",", ":")).encode()
    h += b" " * (-len(h) % 8)  # data section starts 8-byte aligned
    with open(path, "wb") as f:
        f.write(struct.pack("<Q", len(h)))
        f.write(h)
        for _, _, _, blob in tensors:
            f.write(blob)


def field(r, key, default=None):
    f = r.fields.get(key)
    if f is None:
        return default
    v = f.contents()
    return v


def tokenizer_json(tokens, types, merges):
    vocab, added = {}, []
    for i, (tok, ty) in enumerate(zip(tokens, types)):
        if ty in (gguf.TokenType.CONTROL, gguf.TokenType.USER_DEFINED):
            added.append({"id": i, "content": tok, "single_word": False, "lstrip": False, "rstrip": False,
                          "normalized": False, "special": ty == gguf.TokenType.CONTROL})
        elif ty != gguf.TokenType.UNUSED:
            vocab[tok] = i
    byte_level = {"type": "ByteLevel", "add_prefix_space": False, "trim_offsets": False, "use_regex": False}
    return {
        "version": "1.0",
        "truncation": None,
        "padding": None,
        "added_tokens": added,
        "normalizer": {"type": "NFC"},
        "pre_tokenizer": {"type": "Sequence", "pretokenizers": [
            {"type": "Split", "pattern": {"Regex": QWEN2_SPLIT}, "behavior": "Isolated", "invert": False},
            byte_level]},
        "post_processor": byte_level,
        "decoder": byte_level,
        "model": {"type": "BPE", "dropout": None, "unk_token": None, "continuing_subword_prefix": "",
                  "end_of_word_suffix": "", "fuse_unk": False, "byte_fallback": False, "ignore_merges": False,
                  "vocab": vocab, "merges": list(merges)},
    }


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("gguf")
    ap.add_argument("outdir")
    ap.add_argument("--dtype", choices=["auto", "f32", "f16", "bf16"], default="auto")
    ap.add_argument("--shards", type=int, default=1, help="split the weights over N files with an index")
    ap.add_argument("--temperature", type=float)
    ap.add_argument("--top-k", type=int)
    ap.add_argument("--top-p", type=float)
    ap.add_argument("--repetition-penalty", type=float)
    ap.add_argument("--greedy", action="store_true", help="do_sample = false")
    a = ap.parse_args()

    r = gguf.GGUFReader(a.gguf)
    arch = field(r, "general.architecture")
    if arch != "qwen2":
        raise SystemExit(f"error: {a.gguf}: architecture {arch!r} is not qwen2")

    def need(key):
        v = field(r, key)
        if v is None:
            raise SystemExit(f"error: {a.gguf}: missing key {key}")
        return v

    by_name = {t.name: t for t in r.tensors}
    emb = by_name.get("token_embd.weight")
    if emb is None:
        raise SystemExit(f"error: {a.gguf}: missing tensor token_embd.weight")
    n_vocab = int(emb.shape[1])
    tied = "output.weight" not in by_name
    tokens = need("tokenizer.ggml.tokens")
    types = field(r, "tokenizer.ggml.token_type") or [gguf.TokenType.NORMAL] * len(tokens)
    merges = need("tokenizer.ggml.merges")
    eos = int(need("tokenizer.ggml.eos_token_id"))
    bos = field(r, "tokenizer.ggml.bos_token_id")
    bos = None if bos is None else int(bos)
    ctx = int(need("qwen2.context_length"))
    n_embd = int(need("qwen2.embedding_length"))
    n_head = int(need("qwen2.attention.head_count"))
    n_layer = int(need("qwen2.block_count"))

    config = {
        "architectures": ["Qwen2ForCausalLM"],
        "model_type": "qwen2",
        "hidden_act": "silu",
        "hidden_size": n_embd,
        "intermediate_size": int(need("qwen2.feed_forward_length")),
        "num_hidden_layers": n_layer,
        "num_attention_heads": n_head,
        "num_key_value_heads": int(field(r, "qwen2.attention.head_count_kv", n_head)),
        "max_position_embeddings": ctx,
        "rms_norm_eps": float(need("qwen2.attention.layer_norm_rms_epsilon")),
        "rope_theta": float(field(r, "qwen2.rope.freq_base", 10000.0)),
        "rope_scaling": None,
        "vocab_size": n_vocab,
        "tie_word_embeddings": tied,
        "bos_token_id": bos,
        "eos_token_id": eos,
        "attention_dropout": 0.0,
        "initializer_range": 0.02,
        "use_cache": True,
        "use_sliding_window": False,
        "sliding_window": ctx,
        "max_window_layers": n_layer,
        "torch_dtype": {"auto": "float32", "f32": "float32", "f16": "float16", "bf16": "bfloat16"}[a.dtype],
    }
    name = field(r, "general.name")
    if name:
        config["_name_or_path"] = str(name)

    os.makedirs(a.outdir, exist_ok=True)
    # remove weights a previous conversion left, so the folder holds exactly this model
    for f in os.listdir(a.outdir):
        if f.endswith(".safetensors") or f == "model.safetensors.index.json":
            os.remove(os.path.join(a.outdir, f))

    out = []
    for t in r.tensors:
        arr, stored = tensor_values(t)
        blob, dt = convert(arr, stored, a.dtype)
        out.append((hf_name(t.name), dt, arr.shape, blob))
    total = sum(len(b) for _, _, _, b in out)
    meta = {"format": "pt"}
    if a.shards <= 1:
        write_safetensors(os.path.join(a.outdir, "model.safetensors"), out, meta)
    else:
        n = a.shards
        files = [f"model-{i + 1:05d}-of-{n:05d}.safetensors" for i in range(n)]
        parts = [out[i::n] for i in range(n)]
        weight_map = {}
        for f, p in zip(files, parts):
            write_safetensors(os.path.join(a.outdir, f), p, meta)
            weight_map.update({name: f for name, _, _, _ in p})
        with open(os.path.join(a.outdir, "model.safetensors.index.json"), "w") as f:
            json.dump({"metadata": {"total_size": total}, "weight_map": dict(sorted(weight_map.items()))}, f,
                      indent=2)

    with open(os.path.join(a.outdir, "config.json"), "w") as f:
        json.dump(config, f, indent=2)

    tj = tokenizer_json(tokens, types, merges)
    with open(os.path.join(a.outdir, "tokenizer.json"), "w", encoding="utf-8") as f:
        json.dump(tj, f, ensure_ascii=False)

    tcfg = {
        "add_bos_token": False,
        "add_prefix_space": False,
        "bos_token": None,
        "eos_token": tokens[eos],
        "pad_token": tokens[bos] if bos is not None else None,
        "model_max_length": ctx,
        "tokenizer_class": "Qwen2Tokenizer",
        "clean_up_tokenization_spaces": False,
        "split_special_tokens": False,
        "errors": "replace",
    }
    tmpl = field(r, "tokenizer.chat_template")
    if tmpl:
        tcfg["chat_template"] = str(tmpl)
    with open(os.path.join(a.outdir, "tokenizer_config.json"), "w", encoding="utf-8") as f:
        json.dump(tcfg, f, indent=2, ensure_ascii=False)

    gen = {"bos_token_id": bos, "eos_token_id": [eos]}
    if a.greedy:
        gen["do_sample"] = False
    for key, v in (("temperature", a.temperature), ("top_k", a.top_k), ("top_p", a.top_p),
                   ("repetition_penalty", a.repetition_penalty)):
        if v is not None:
            gen[key] = v
            gen.setdefault("do_sample", True)
    with open(os.path.join(a.outdir, "generation_config.json"), "w") as f:
        json.dump(gen, f, indent=2)

    # check: the tokenizers package accepts the file and agrees on the vocabulary
    from tokenizers import Tokenizer

    tok = Tokenizer.from_file(os.path.join(a.outdir, "tokenizer.json"))
    n_used = sum(1 for ty in types if ty != gguf.TokenType.UNUSED)
    if tok.get_vocab_size(with_added_tokens=True) != n_used:
        raise SystemExit(f"error: tokenizer.json has {tok.get_vocab_size(True)} tokens, GGUF has {n_used}")
    print(f"wrote {a.outdir}: {len(out)} tensors ({total} bytes, {a.dtype}), vocab {n_vocab}, "
          f"{len(merges)} merges{', tied' if tied else ''}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
