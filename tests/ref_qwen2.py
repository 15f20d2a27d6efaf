#!/usr/bin/env python3
"""An independent NumPy (float64) Qwen2 forward pass over a GGUF file: the oracle for the engine's logits.

Reads the file with the `gguf` package only (quantized tensors dequantized with gguf.quants), so it
shares no code with the C engine. Weights are kept as float32 (the exact dequantized values) and every
product is computed in float64.

  m = Qwen2Ref("model.gguf")
  cache = m.new_cache()
  logits = m.forward(ids, pos0=0, cache=cache)   # [len(ids), n_vocab]: prefill, all positions
  logits = m.forward([tok], pos0=len(ids), cache=cache)   # one decode step

  ref_qwen2.py MODEL.gguf ids.txt OUT.f32 [--decode-steps K]  (same output as `test-model --logits`)
"""

import argparse
import sys

import numpy as np

import gguf


def _field(r, key, default=None):
    f = r.fields.get(key)
    if f is None:
        if default is None:
            raise KeyError(f"missing key {key}")
        return default
    return f.contents()


class Qwen2Ref:
    def __init__(self, path):
        r = gguf.GGUFReader(path)
        arch = _field(r, "general.architecture")
        if arch != "qwen2":
            raise ValueError(f"architecture {arch!r} is not qwen2")
        self.n_layer = int(_field(r, "qwen2.block_count"))
        self.n_embd = int(_field(r, "qwen2.embedding_length"))
        self.n_head = int(_field(r, "qwen2.attention.head_count"))
        self.n_kv = int(_field(r, "qwen2.attention.head_count_kv"))
        self.eps = float(_field(r, "qwen2.attention.layer_norm_rms_epsilon"))
        self.base = float(_field(r, "qwen2.rope.freq_base", 10000.0))
        self.hd = self.n_embd // self.n_head
        self.t = {}
        for t in r.tensors:
            self.t[t.name] = self._load(t)
        self.embd = self.t["token_embd.weight"]
        self.out = self.t.get("output.weight", self.embd)
        self.n_vocab = self.embd.shape[0]

    @staticmethod
    def _load(t):
        """A tensor as float32 in numpy order: [rows, cols] for a GGUF ne = {cols, rows}."""
        shape = tuple(int(x) for x in reversed(t.shape))
        if t.tensor_type in (gguf.GGMLQuantizationType.F32, gguf.GGMLQuantizationType.F16):
            a = np.asarray(t.data).astype(np.float32)
        else:
            a = gguf.quants.dequantize(np.asarray(t.data), t.tensor_type).astype(np.float32)
        return a.reshape(shape)

    def new_cache(self):
        return [{"k": np.zeros((0, self.n_kv, self.hd)), "v": np.zeros((0, self.n_kv, self.hd))} for _ in range(self.n_layer)]

    def _rms(self, x, w):
        return x / np.sqrt(np.mean(x * x, axis=-1, keepdims=True) + self.eps) * w.astype(np.float64)

    @staticmethod
    def _lin(x, w, b=None):
        y = x @ w.astype(np.float64).T
        return y if b is None else y + b.astype(np.float64)

    def _rope(self, x, pos):
        # NEOX layout: dimension i pairs with i + hd/2
        half = self.hd // 2
        inv = self.base ** (-np.arange(half, dtype=np.float64) * 2.0 / self.hd)
        ang = np.asarray(pos, dtype=np.float64)[:, None] * inv[None, :]
        c, s = np.cos(ang)[:, None, :], np.sin(ang)[:, None, :]
        x1, x2 = x[..., :half], x[..., half:]
        return np.concatenate([x1 * c - x2 * s, x2 * c + x1 * s], axis=-1)

    def forward(self, ids, pos0, cache):
        """Runs len(ids) tokens at positions pos0.. of one sequence; returns logits for every one."""
        n = len(ids)
        pos = np.arange(pos0, pos0 + n)
        x = self.embd[np.asarray(ids)].astype(np.float64)
        group = self.n_head // self.n_kv
        for i in range(self.n_layer):
            p = f"blk.{i}."
            g = self.t.get
            h = self._rms(x, g(p + "attn_norm.weight"))
            q = self._lin(h, g(p + "attn_q.weight"), g(p + "attn_q.bias")).reshape(n, self.n_head, self.hd)
            k = self._lin(h, g(p + "attn_k.weight"), g(p + "attn_k.bias")).reshape(n, self.n_kv, self.hd)
            v = self._lin(h, g(p + "attn_v.weight"), g(p + "attn_v.bias")).reshape(n, self.n_kv, self.hd)
            q, k = self._rope(q, pos), self._rope(k, pos)
            c = cache[i]
            assert c["k"].shape[0] == pos0, "cache length must equal pos0"
            c["k"] = np.concatenate([c["k"], k])
            c["v"] = np.concatenate([c["v"], v])
            kk = np.repeat(c["k"], group, axis=1)  # [T, n_head, hd]
            vv = np.repeat(c["v"], group, axis=1)
            s = np.einsum("nhd,thd->hnt", q, kk) / np.sqrt(self.hd)
            mask = np.arange(c["k"].shape[0])[None, :] > pos[:, None]
            s = np.where(mask[None], -np.inf, s)
            s = np.exp(s - s.max(axis=-1, keepdims=True))
            s /= s.sum(axis=-1, keepdims=True)
            a = np.einsum("hnt,thd->nhd", s, vv).reshape(n, self.n_embd)
            x = x + self._lin(a, g(p + "attn_output.weight"))
            h = self._rms(x, g(p + "ffn_norm.weight"))
            gate = self._lin(h, g(p + "ffn_gate.weight"))
            up = self._lin(h, g(p + "ffn_up.weight"))
            x = x + self._lin(gate / (1.0 + np.exp(-gate)) * up, g(p + "ffn_down.weight"))
        x = self._rms(x, self.t["output_norm.weight"])
        return self._lin(x, self.out)

    def run(self, ids, decode_steps, last_only=False):
        """Prefill then greedy decode; returns (logits rows [len(ids)+K, vocab], greedy tokens [K])."""
        cache = self.new_cache()
        rows = self.forward(ids, 0, cache)
        if last_only:
            rows = rows[-1:]
        out = [rows]
        toks = []
        nxt = int(np.argmax(rows[-1]))
        for k in range(decode_steps):
            toks.append(nxt)
            r = self.forward([nxt], len(ids) + k, cache)
            out.append(r)
            nxt = int(np.argmax(r[-1]))
        return np.concatenate(out), toks


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("model")
    ap.add_argument("ids")
    ap.add_argument("out")
    ap.add_argument("--decode-steps", type=int, default=0)
    a = ap.parse_args()
    ids = [int(x) for x in open(a.ids).read().split()]
    m = Qwen2Ref(a.model)
    rows, toks = m.run(ids, a.decode_steps)
    rows.astype(np.float32).tofile(a.out)
    print("greedy:", " ".join(str(t) for t in toks))
    return 0


if __name__ == "__main__":
    sys.exit(main())
