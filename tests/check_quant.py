"""Block codecs against the gguf Python package (the format's reference implementation in Python).

For every dtype: random raw blocks (random bits, f16 scale fields set to sane finite values) decoded by
`test-quant --dequant` must equal gguf.quants.dequantize within 1e-6 relative. Where gguf has a
quantizer, our `test-quant --quant` output (decoded by gguf, which also checks our block layout) must
have a round-trip RMS error at most 1.5x gguf's own, and identical bytes for f32, f16, bf16 and q8_0.
K-quant encodings (no gguf quantizer) are decoded by gguf and must meet the per-type error bound. If the default model is present, the first rows of one
tensor of each dtype in it are decoded by both and compared too.

Usage: check_quant.py --build build
"""

import argparse
import os
import subprocess
import sys
import tempfile

import numpy as np
from gguf import GGMLQuantizationType as T
from gguf import quants
from checklib import Tally  # noqa: E402

MODEL = "models/qwen2.5-coder-0.5b-instruct-q4_k_m.gguf"

# name, gguf type, elements per block, bytes per block, byte offsets of the f16 scale fields
TYPES = [
    ("f32", T.F32, 1, 4, []),
    ("f16", T.F16, 1, 2, []),
    ("bf16", T.BF16, 1, 2, []),
    ("q8_0", T.Q8_0, 32, 34, [0]),
    ("q4_0", T.Q4_0, 32, 18, [0]),
    ("q4_1", T.Q4_1, 32, 20, [0, 2]),
    ("q5_0", T.Q5_0, 32, 22, [0]),
    ("q5_1", T.Q5_1, 32, 24, [0, 2]),
    ("q4_k", T.Q4_K, 256, 144, [0, 2]),
    ("q5_k", T.Q5_K, 256, 176, [0, 2]),
    ("q6_k", T.Q6_K, 256, 210, [208]),
]
HAS_GGUF_QUANTIZER = {"f32", "f16", "bf16", "q8_0", "q4_0", "q4_1", "q5_0", "q5_1"}
# Encoders that follow the reference rounding exactly (the others search scales, so only error is compared).
BYTE_IDENTICAL = {"f32", "f16", "bf16", "q8_0"}
# Relative RMS round-trip bounds (same as tests/test-quant.c).
ROUNDTRIP_TOL = {"q4_k": 0.10, "q5_k": 0.05, "q6_k": 0.03}

_t = Tally()
def report(ok, name, detail=""):
    _t.report(name, ok, detail)


skip = _t.skip




def run_tool(binary, mode, tname, data, tmp):
    src = os.path.join(tmp, "in.bin")
    dst = os.path.join(tmp, "out.bin")
    with open(src, "wb") as f:
        f.write(data.tobytes())
    r = subprocess.run([binary, mode, tname, src, dst], capture_output=True, text=True)
    if r.returncode != 0:
        raise RuntimeError(f"{binary} {mode} {tname} failed ({r.returncode}): {r.stderr.strip()}")
    with open(dst, "rb") as f:
        return f.read()


def random_blocks(rng, gtype, be, bb, offsets, nblocks):
    """Raw block bytes: random bits, with finite f16 scales of magnitude in [1e-3, 1]."""
    if be == 1:  # plain types: random finite values of varied magnitude
        vals = (rng.standard_normal(nblocks) * 10.0 ** rng.uniform(-3, 3, nblocks)).astype(np.float32)
        return np.frombuffer(quants.quantize(vals, gtype).tobytes(), np.uint8)
    raw = rng.integers(0, 256, size=(nblocks, bb), dtype=np.uint8)
    for off in offsets:
        mag = 10.0 ** rng.uniform(-3, 0, nblocks)
        sign = rng.choice([-1.0, 1.0], nblocks)
        raw[:, off : off + 2] = (mag * sign).astype(np.float16).view(np.uint8).reshape(nblocks, 2)
    return raw.reshape(-1)


def compare_dequant(binary, tname, gtype, be, bb, raw, tmp, label):
    nblocks = raw.size // bb
    ours = np.frombuffer(run_tool(binary, "--dequant", tname, raw, tmp), np.float32)
    ref = quants.dequantize(raw.reshape(nblocks, bb), gtype).astype(np.float32).reshape(-1)
    if ours.size != ref.size:
        report(False, label, f"{ours.size} values vs {ref.size}")
        return
    finite = np.isfinite(ref)
    if not np.array_equal(np.isfinite(ours), finite):
        report(False, label, "non-finite values differ")
        return
    o, r = ours[finite].astype(np.float64), ref[finite].astype(np.float64)
    # Relative to each value, floored at 1e-3 of the data's RMS (values that cancel to ~0 inside a block).
    floor = 1e-3 * np.sqrt(np.mean(r * r)) if r.size else 0.0
    rel = np.abs(o - r) / np.maximum(np.abs(r), max(floor, 1e-30))
    worst = float(rel.max()) if rel.size else 0.0
    exact = int(np.sum(o == r))
    report(worst <= 1e-6, label, f"{ours.size} values, {exact} bit-exact, max rel diff {worst:.2e}")


def weights(rng, n):
    """Gaussian values whose magnitude and mean change every 32 elements (as in test-quant.c)."""
    blocks = n // 32
    mag = 10.0 ** rng.uniform(-1.5, 1.0, (blocks, 1))
    mean = rng.uniform(-0.1, 0.1, (blocks, 1)) * mag
    return (mean + mag * rng.standard_normal((blocks, 32))).astype(np.float32).reshape(-1)


def rel_rms(a, ref):
    a, ref = a.astype(np.float64), ref.astype(np.float64)
    return float(np.sqrt(np.sum((a - ref) ** 2) / np.sum(ref * ref)))


def check_quant(binary, tname, gtype, be, bb, rng, tmp):
    n = 256 * 64
    x = weights(rng, n)
    q = np.frombuffer(run_tool(binary, "--quant", tname, x, tmp), np.uint8)
    if q.size != n // be * bb:
        report(False, f"quant {tname}", f"{q.size} bytes, expected {n // be * bb}")
        return
    ours = quants.dequantize(q.reshape(n // be, bb) if be > 1 else q, gtype).astype(np.float32).reshape(-1)
    e_ours = rel_rms(ours, x)
    if tname in HAS_GGUF_QUANTIZER:
        ref_q = quants.quantize(x.reshape(1, n), gtype)
        ref = quants.dequantize(ref_q, gtype).astype(np.float32).reshape(-1)
        e_ref = rel_rms(ref, x)
        ok = e_ours <= 1.5 * e_ref + 1e-12
        report(ok, f"quant {tname}", f"rel rms ours {e_ours:.6f}, gguf {e_ref:.6f}")
        if tname in BYTE_IDENTICAL:
            same = np.array_equal(q, np.frombuffer(ref_q.tobytes(), np.uint8))
            report(same, f"quant {tname} bytes", "identical to gguf" if same else "bytes differ from gguf")
    else:
        tol = ROUNDTRIP_TOL[tname]
        report(e_ours <= tol, f"quant {tname}", f"rel rms ours {e_ours:.6f} (bound {tol}), decoded by gguf")


def check_model(binary, tmp):
    if not os.path.exists(MODEL):
        skip("model tensors", f"{MODEL} not present")
        return
    from gguf import GGUFReader

    reader = GGUFReader(MODEL)
    by_type = {t[1]: t for t in TYPES}
    seen = set()
    for tensor in reader.tensors:
        gtype = tensor.tensor_type
        if gtype in seen or gtype not in by_type:
            continue
        seen.add(gtype)
        tname, _, be, bb, _ = by_type[gtype]
        raw = np.asarray(tensor.data).view(np.uint8).reshape(-1)
        row_bytes = int(tensor.shape[0]) // be * bb  # shape[0] is the innermost dimension
        raw = np.ascontiguousarray(raw[: row_bytes * min(8, raw.size // row_bytes)])
        compare_dequant(binary, tname, gtype, be, bb, raw, tmp, f"model {tensor.name} ({tname})")


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--build", default="build")
    args = ap.parse_args()
    binary = os.path.join(args.build, "tests", "test-quant")
    if not os.access(binary, os.X_OK):
        print(f"FAIL {binary} not built")
        print("0 passed, 1 failed, 0 skipped")
        return 1
    rng = np.random.default_rng(1234)
    with tempfile.TemporaryDirectory() as tmp:
        for tname, gtype, be, bb, offsets in TYPES:
            for nblocks in (1, 7, 300):
                raw = random_blocks(rng, gtype, be, bb, offsets, nblocks)
                compare_dequant(binary, tname, gtype, be, bb, raw, tmp, f"dequant {tname} x{nblocks}")
        for tname, gtype, be, bb, _ in TYPES:
            check_quant(binary, tname, gtype, be, bb, rng, tmp)
        check_model(binary, tmp)
    _t.summary()
    return 1 if _t.failed else 0


if __name__ == "__main__":
    sys.exit(main())
