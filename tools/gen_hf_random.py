#!/usr/bin/env python3
"""Writes a random-weight Qwen2 model with Hugging Face transformers, at Qwen2.5-0.5B's widths, as a folder
that both transformers and our engine load (reference checks against transformers itself).

  gen_hf_random.py OUTDIR [--layers N] [--dtype float32|bfloat16] [--seed S] [--vocab-from V.gguf]

Config: hidden 896, intermediate 4864, 14 heads, 2 KV heads, vocab 151936, rope_theta 1e6, rms eps 1e-6,
tied embeddings, 24 layers unless --layers. transformers initialises biases to zero and norm weights to
one; both are re-drawn here (a zero bias would leave the bias path untested). tokenizer.json and
tokenizer_config.json come from the tokenizer of a GGUF (tools/gguf_to_hf.py's layout), since the engine
needs a tokenizer in the folder.
"""

import argparse
import json
import os
import sys

import torch
from transformers import Qwen2Config, Qwen2ForCausalLM

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

BOS, EOS = 151643, 151645  # <|endoftext|>, <|im_end|>


def write_tokenizer(vocab_gguf, outdir):
    import gguf
    import gguf_to_hf

    r = gguf.GGUFReader(vocab_gguf)
    tokens = gguf_to_hf.field(r, "tokenizer.ggml.tokens")
    types = gguf_to_hf.field(r, "tokenizer.ggml.token_type") or [gguf.TokenType.NORMAL] * len(tokens)
    merges = gguf_to_hf.field(r, "tokenizer.ggml.merges")
    if tokens is None or merges is None:
        raise SystemExit(f"error: {vocab_gguf} has no tokenizer.ggml.tokens/merges")
    with open(os.path.join(outdir, "tokenizer.json"), "w", encoding="utf-8") as f:
        json.dump(gguf_to_hf.tokenizer_json(tokens, types, merges), f, ensure_ascii=False)
    tcfg = {"add_bos_token": False, "bos_token": None, "eos_token": tokens[EOS], "pad_token": tokens[BOS],
            "model_max_length": 32768, "tokenizer_class": "Qwen2Tokenizer", "errors": "replace",
            "clean_up_tokenization_spaces": False, "split_special_tokens": False}
    tmpl = gguf_to_hf.field(r, "tokenizer.chat_template")
    if tmpl:
        tcfg["chat_template"] = str(tmpl)
    with open(os.path.join(outdir, "tokenizer_config.json"), "w", encoding="utf-8") as f:
        json.dump(tcfg, f, indent=2, ensure_ascii=False)
    return len(tokens)


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("outdir")
    ap.add_argument("--layers", type=int, default=24)
    ap.add_argument("--dtype", choices=["float32", "bfloat16"], default="float32")
    ap.add_argument("--seed", type=int, default=1234)
    ap.add_argument("--vocab-from", default=os.environ.get("VOCAB", "models/qwen2.5-coder-0.5b-instruct-q4_k_m.gguf"))
    a = ap.parse_args()

    torch.manual_seed(a.seed)
    cfg = Qwen2Config(vocab_size=151936, hidden_size=896, intermediate_size=4864, num_hidden_layers=a.layers,
                      num_attention_heads=14, num_key_value_heads=2, max_position_embeddings=32768,
                      rope_theta=1e6, rms_norm_eps=1e-6, tie_word_embeddings=True, hidden_act="silu",
                      use_sliding_window=False, bos_token_id=BOS, eos_token_id=EOS, initializer_range=0.02)
    model = Qwen2ForCausalLM(cfg).eval()
    with torch.no_grad():
        for name, p in model.named_parameters():
            if name.endswith(".bias"):
                p.normal_(0.0, 0.05)
            elif "norm" in name:
                p.copy_(1.0 + 0.1 * torch.randn_like(p))
    if a.dtype == "bfloat16":
        model = model.to(torch.bfloat16)
    os.makedirs(a.outdir, exist_ok=True)
    model.save_pretrained(a.outdir, safe_serialization=True)

    # The engine reads the classic keys (rope_theta at the top, rope_scaling null or absent); newer
    # transformers versions keep rope settings in rope_parameters, so the classic keys are added back.
    path = os.path.join(a.outdir, "config.json")
    with open(path) as f:
        c = json.load(f)
    c["rope_theta"] = 1e6
    c["rms_norm_eps"] = 1e-6
    c["max_position_embeddings"] = 32768
    c["tie_word_embeddings"] = True
    c["bos_token_id"], c["eos_token_id"] = BOS, EOS
    if isinstance(c.get("rope_scaling"), dict) and c["rope_scaling"].get("rope_type", "default") == "default":
        del c["rope_scaling"]
    with open(path, "w") as f:
        json.dump(c, f, indent=2)
    with open(os.path.join(a.outdir, "generation_config.json"), "w") as f:
        json.dump({"bos_token_id": BOS, "eos_token_id": [EOS, BOS], "do_sample": False}, f, indent=2)
    n_tok = write_tokenizer(a.vocab_from, a.outdir)
    n_par = sum(p.numel() for p in model.parameters())
    print(f"wrote {a.outdir}: {a.layers} layers, {n_par / 1e6:.1f} M parameters ({a.dtype}), {n_tok} tokens",
          file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
