#!/usr/bin/env python3
"""Writes a small valid qwen2-like GGUF file and a corpus of malformed variants of it.

Everything is encoded by hand with struct (no gguf package), so each variant can break exactly one field.
Outputs, in the folder given as argv[1] (default tests/fixtures/bad-gguf):
  valid.gguf      the reference file; tests/test-gguf.c hard-codes the same constants as VALID_* below
  <what>.gguf     one malformed file per defect, named after it
  expected.tsv    file<TAB>status<TAB>substring the error message must contain
"""
import os
import struct
import sys

# GGUF value types.
U8, I8, U16, I16, U32, I32, F32, BOOL, STRING, ARRAY, U64, I64, F64 = range(13)
SCALAR_FMT = {U8: "<B", I8: "<b", U16: "<H", I16: "<h", U32: "<I", I32: "<i", F32: "<f", BOOL: "<B",
              U64: "<Q", I64: "<q", F64: "<d"}
# ggml tensor types used here: (block elements, block bytes).
T_F32, T_F16, T_Q8_0, T_Q4_K = 0, 1, 8, 12
BLOCK = {T_F32: (1, 4), T_F16: (1, 2), T_Q8_0: (32, 34), T_Q4_K: (256, 144)}

ALIGN = 64


def enc_str(s):
    b = s.encode() if isinstance(s, str) else s
    return struct.pack("<Q", len(b)) + b


def enc_value(t, v):
    """Encodes a value of GGUF type t. Arrays are (elem_type, [values])."""
    if t == STRING:
        return enc_str(v)
    if t == ARRAY:
        et, items = v
        return struct.pack("<IQ", et, len(items)) + b"".join(enc_value(et, x) for x in items)
    return struct.pack(SCALAR_FMT[t], v)


def valid_kvs():
    # (key, type, value); tests/test-gguf.c checks every one of these.
    return [
        ("general.architecture", STRING, "qwen2"),
        ("general.name", STRING, "tiny-test"),
        ("general.alignment", U32, ALIGN),
        ("qwen2.block_count", U32, 2),
        ("qwen2.context_length", U32, 128),
        ("qwen2.embedding_length", U32, 64),
        ("qwen2.rope.freq_base", F32, 1000000.0),
        ("qwen2.attention.layer_norm_rms_epsilon", F32, 1e-6),
        ("test.u8", U8, 200),
        ("test.i8", I8, -100),
        ("test.u16", U16, 60000),
        ("test.i16", I16, -30000),
        ("test.i32", I32, -2000000000),
        ("test.bool", BOOL, 1),
        ("test.u64", U64, (1 << 40) + 5),
        ("test.i64", I64, -(1 << 40)),
        ("test.f64", F64, 3.25),
        ("test.empty_str", STRING, ""),
        ("tokenizer.ggml.model", STRING, "gpt2"),
        ("tokenizer.ggml.tokens", ARRAY, (STRING, ["a", "b", "hello", "<|im_end|>", "\u00e9t\u00e9"])),
        ("tokenizer.ggml.token_type", ARRAY, (I32, [1, 1, 1, 3, 1])),
        ("test.arr_f32", ARRAY, (F32, [0.5, -1.5, 2.0])),
        ("test.nested", ARRAY, (ARRAY, [(U8, [1, 2]), (U8, [3])])),
        ("test.empty_arr", ARRAY, (U32, [])),
    ]


def valid_tensors():
    # Listed in info order; data is placed in `place` order so offsets are not sorted like the infos.
    return [
        dict(name="token_embd.weight", dims=[8, 16], type=T_F32),
        dict(name="blk.0.attn_q.weight", dims=[16, 3], type=T_F16),
        dict(name="blk.0.ffn_down.weight", dims=[64, 2], type=T_Q8_0),
        dict(name="output.weight", dims=[256, 1], type=T_Q4_K),
    ]


PLACE_ORDER = [3, 0, 2, 1]


def nbytes(ttype, dims):
    be, bb = BLOCK[ttype]
    n = dims[0] // be * bb
    for d in dims[1:]:
        n *= d
    return n


def data_byte(ti, j):
    # Deterministic, non-zero tensor contents; test-gguf.c recomputes this.
    return (j * 31 + ti * 17 + 7) & 0xFF


def f32_value(j):
    return ((j * 7) % 13) - 6.0 + 0.25


def tensor_bytes(ti, t):
    n = nbytes(t["type"], t["dims"])
    if t["type"] == T_F32:
        return b"".join(struct.pack("<f", f32_value(j)) for j in range(n // 4))
    return bytes(data_byte(ti, j) for j in range(n))


def build(kvs=None, tensors=None, magic=b"GGUF", version=3, n_kv=None, n_tensors=None, align=ALIGN,
          kv_raw=None, extra_data=b""):
    """Returns (bytes, marks): marks maps section names to file offsets, for truncation points.

    kvs entries are (key, type, value) or ("raw", bytes) to splice bytes as-is. Tensors may carry
    'offset' (explicit, no data written for them), 'ndim' (written rank override) and 'name' as bytes.
    """
    kvs = valid_kvs() if kvs is None else kvs
    tensors = valid_tensors() if tensors is None else tensors
    marks = {}
    out = bytearray()
    out += magic
    out += struct.pack("<I", version)
    marks["n_tensors"] = len(out)
    out += struct.pack("<Q", len(tensors) if n_tensors is None else n_tensors)
    marks["n_kv"] = len(out)
    out += struct.pack("<Q", len(kvs) if n_kv is None else n_kv)
    marks["kvs"] = len(out)
    for kv in kvs:
        if kv[0] == "raw":
            out += kv[1]
            continue
        key, t, v = kv
        marks["key:" + key] = len(out)
        out += enc_str(key)
        marks["type:" + key] = len(out)
        out += struct.pack("<I", t)
        marks["value:" + key] = len(out)
        out += enc_value(t, v)
    # Assign data offsets to the tensors without an explicit one; the file ends right after the last tensor,
    # so every shorter prefix is malformed.
    offs, cur = {}, 0
    order = [i for i in PLACE_ORDER if i < len(tensors)] + [i for i in range(len(tensors)) if i not in PLACE_ORDER]
    for i in order:
        t = tensors[i]
        if "offset" in t:
            continue
        cur = (cur + align - 1) // align * align
        offs[i] = cur
        cur += nbytes(t["type"], t["dims"])
    marks["tensors"] = len(out)
    for i, t in enumerate(tensors):
        marks["tensor:%d" % i] = len(out)
        out += enc_str(t["name"])
        dims = t["dims"]
        marks["ndim:%d" % i] = len(out)
        out += struct.pack("<I", t.get("ndim", len(dims)))
        for d in dims:
            out += struct.pack("<Q", d)
        out += struct.pack("<I", t["type"])
        marks["offset:%d" % i] = len(out)
        out += struct.pack("<Q", t.get("offset", offs.get(i, 0)))
    marks["infos_end"] = len(out)
    out += bytes((-len(out)) % align)
    data_start = len(out)
    marks["data"] = data_start
    data = bytearray(cur)
    for i, off in offs.items():
        b = tensor_bytes(i, tensors[i])
        data[off:off + len(b)] = b
        marks["data:%d" % i] = data_start + off
    out += data + extra_data
    return bytes(out), marks


def replace_kv(key, t, v):
    return [(k, t, v) if k == key else (k, kt, kv) for k, kt, kv in valid_kvs()]


def with_tensor(i, **changes):
    ts = valid_tensors()
    ts[i] = dict(ts[i], **changes)
    return ts


def variants():
    """Yields (file name, bytes, expected status, message substring)."""
    valid, m = build()
    FMT, UNS = "MT_ERR_FORMAT", "MT_ERR_UNSUPPORTED"

    def trunc(name, n, sub):
        return (name, valid[:n], FMT, sub)

    tok = "tokenizer.ggml.tokens"
    yield trunc("trunc-empty.gguf", 0, "truncated magic")
    yield trunc("trunc-magic.gguf", 3, "truncated magic")
    yield trunc("trunc-version.gguf", 6, "truncated version")
    yield trunc("trunc-header.gguf", m["n_tensors"] + 5, "truncated tensor count")
    yield trunc("trunc-n-kv.gguf", m["n_kv"] + 7, "truncated key/value count")
    # Cuts inside the metadata: the counts no longer fit what is left, or a field runs off the end.
    yield trunc("trunc-first-key.gguf", m["kvs"] + 12, "key/value count")
    yield trunc("trunc-inside-key.gguf", m["key:test.u16"] + 10, "gguf:")
    yield trunc("trunc-value-type.gguf", m["type:test.i64"] + 2, "gguf:")
    yield trunc("trunc-inside-value.gguf", m["value:test.f64"] + 3, "gguf:")
    yield trunc("trunc-inside-string-value.gguf", m["value:tokenizer.ggml.model"] + 10, "gguf:")
    yield trunc("trunc-array-count.gguf", m["value:" + tok] + 6, "gguf:")
    yield trunc("trunc-inside-string-array.gguf", m["value:" + tok] + 30, "gguf:")
    yield trunc("trunc-tensor-name.gguf", m["tensor:1"] + 12, "gguf:")
    yield trunc("trunc-tensor-dims.gguf", m["ndim:2"] + 9, "gguf:")
    yield trunc("trunc-tensor-offset.gguf", m["offset:3"] + 4, "gguf:")
    yield trunc("trunc-before-data.gguf", m["infos_end"], "data section")
    yield trunc("trunc-inside-data.gguf", m["data:1"] + 10, "outside")
    yield trunc("trunc-last-byte.gguf", len(valid) - 1, "outside")

    yield ("bad-magic.gguf", build(magic=b"GGUX")[0], FMT, "bad magic at offset 0")
    yield ("bad-version-1.gguf", build(version=1)[0], UNS, "version at offset 4: 1")
    yield ("bad-version-4.gguf", build(version=4)[0], UNS, "version at offset 4: 4")
    yield ("bad-version-big-endian.gguf", build(version=0x03000000)[0], UNS, "big-endian")
    yield ("huge-n-kv.gguf", build(n_kv=1 << 60)[0], FMT, "key/value count at offset 16: 1152921504606846976")
    yield ("huge-n-tensors.gguf", build(n_tensors=1 << 60)[0], FMT, "tensor count at offset 8: 1152921504606846976")
    yield ("n-kv-too-large.gguf", build(n_kv=len(valid_kvs()) + 1)[0], FMT, "gguf:")
    yield ("n-tensors-too-large.gguf", build(n_tensors=5)[0], FMT, "gguf:")

    def raw_kv(key, t, body):
        kvs = valid_kvs() + [("raw", enc_str(key) + struct.pack("<I", t) + body)]
        return build(kvs=kvs)[0]

    yield ("huge-string-length.gguf", raw_kv("test.s", STRING, struct.pack("<Q", 1 << 62) + b"abc"), FMT,
           "string value length at offset")
    yield ("huge-key-length.gguf", build(kvs=valid_kvs() + [("raw", struct.pack("<Q", (1 << 64) - 1) + b"k")])[0],
           FMT, "key length at offset")
    yield ("huge-array-count.gguf", raw_kv("test.a", ARRAY, struct.pack("<IQ", U32, 1 << 40)), FMT,
           "array count at offset")
    yield ("array-count-times-size-overflow.gguf", raw_kv("test.a", ARRAY, struct.pack("<IQ", U64, (1 << 61) + 1)),
           FMT, "array count at offset")
    yield ("huge-string-in-array.gguf",
           raw_kv("test.a", ARRAY, struct.pack("<IQ", STRING, 2) + enc_str("x") + struct.pack("<Q", 1 << 50)), FMT,
           "array string length")
    yield ("bad-value-type.gguf", raw_kv("test.t", 13, struct.pack("<I", 0)), FMT, "value type of 'test.t'")
    yield ("bad-value-type-huge.gguf", raw_kv("test.t", 0xFFFFFFFF, b""), FMT, "value type of 'test.t'")
    yield ("bad-array-elem-type.gguf", raw_kv("test.a", ARRAY, struct.pack("<IQ", 99, 1) + b"\0" * 8), FMT,
           "array element type")
    yield ("bad-nested-array.gguf",
           raw_kv("test.a", ARRAY, struct.pack("<IQ", ARRAY, 2) + enc_value(ARRAY, (U8, [1]))
                  + struct.pack("<IQ", U16, 1 << 40)), FMT, "array count at offset")
    nest = struct.pack("<IQ", U8, 0)
    for _ in range(20):
        nest = struct.pack("<IQ", ARRAY, 1) + nest
    yield ("deep-nested-array.gguf", raw_kv("test.a", ARRAY, nest), FMT, "array nesting")
    yield ("bad-bool.gguf", build(kvs=replace_kv("test.bool", BOOL, 2))[0], FMT, "bool value of 'test.bool'")
    yield ("empty-key.gguf", build(kvs=valid_kvs() + [("", U8, 1)])[0], FMT, "key length at offset")
    yield ("duplicate-key.gguf", build(kvs=valid_kvs() + [("qwen2.block_count", U32, 3)])[0], FMT,
           "duplicate key at offset")
    yield ("alignment-zero.gguf", build(kvs=replace_kv("general.alignment", U32, 0))[0], FMT,
           "general.alignment at offset")
    yield ("alignment-three.gguf", build(kvs=replace_kv("general.alignment", U32, 3), align=3)[0], FMT,
           "power of two")
    yield ("alignment-wrong-type-string.gguf", build(kvs=replace_kv("general.alignment", STRING, "64"))[0], FMT,
           "general.alignment at offset")
    yield ("alignment-wrong-type-u64.gguf", build(kvs=replace_kv("general.alignment", U64, 64))[0], FMT,
           "type u64 (expected u32)")

    yield ("ndim-0.gguf", build(tensors=with_tensor(1, ndim=0, dims=[], offset=0))[0], FMT, "rank of tensor")
    yield ("ndim-5.gguf", build(tensors=with_tensor(1, dims=[16, 3, 1, 1, 1], offset=0))[0], FMT, "rank of tensor")
    yield ("zero-dim.gguf", build(tensors=with_tensor(0, dims=[8, 0], offset=0))[0], FMT, "dimension 1 of tensor")
    yield ("dim-above-int64.gguf", build(tensors=with_tensor(0, dims=[8, 1 << 63], offset=0))[0], FMT,
           "dimension 1 of tensor")
    yield ("dims-product-overflow.gguf", build(tensors=with_tensor(0, dims=[1 << 32, 1 << 32, 1 << 32], offset=0))[0],
           FMT, "size overflows")
    yield ("unsupported-dtype.gguf", build(tensors=with_tensor(1, type=10, offset=0))[0], UNS,
           "unsupported dtype id 10")
    yield ("bad-dtype-id.gguf", build(tensors=with_tensor(1, type=100000, offset=0))[0], UNS,
           "unsupported dtype id 100000")
    yield ("block-size-mismatch.gguf", build(tensors=with_tensor(2, dims=[48, 2], offset=0))[0], FMT,
           "not a multiple of the q8_0 block size")
    yield ("misaligned-offset.gguf", build(tensors=with_tensor(0, offset=ALIGN // 2))[0], FMT,
           "not a multiple of the alignment")
    yield ("tensor-outside-file.gguf", build(tensors=with_tensor(0, offset=1 << 20))[0], FMT, "outside")
    yield ("tensor-offset-wraps.gguf", build(tensors=with_tensor(0, offset=(1 << 64) - ALIGN))[0], FMT, "outside")
    # Tensor 1 (F16 16x3 = 96 bytes) placed where tensor 3 (Q4_K, 144 bytes at offset 0) still is.
    yield ("overlapping-tensors.gguf", build(tensors=with_tensor(1, offset=ALIGN))[0], FMT, "overlaps")
    yield ("duplicate-tensor-name.gguf", build(tensors=with_tensor(2, name="token_embd.weight"))[0], FMT,
           "duplicate tensor name")
    yield ("tensor-name-too-long.gguf", build(tensors=with_tensor(1, name="x" * 256))[0], FMT,
           "tensor name length")
    yield ("tensor-name-empty.gguf", build(tensors=with_tensor(1, name=""))[0], FMT, "tensor name length")
    yield ("tensor-name-with-nul.gguf", build(tensors=with_tensor(1, name=b"blk\0x"))[0], FMT, "NUL byte")


def main():
    out_dir = sys.argv[1] if len(sys.argv) > 1 else os.path.join(os.path.dirname(__file__), "fixtures", "bad-gguf")
    os.makedirs(out_dir, exist_ok=True)
    for f in os.listdir(out_dir):
        if f.endswith(".gguf") or f == "expected.tsv":
            os.remove(os.path.join(out_dir, f))
    valid, _ = build()
    with open(os.path.join(out_dir, "valid.gguf"), "wb") as f:
        f.write(valid)
    lines, names = [], set()
    for name, data, status, sub in variants():
        assert name not in names, name
        assert len(data) < 20000, name
        assert data != valid, name
        names.add(name)
        with open(os.path.join(out_dir, name), "wb") as f:
            f.write(data)
        lines.append("%s\t%s\t%s\n" % (name, status, sub))
    with open(os.path.join(out_dir, "expected.tsv"), "w") as f:
        f.writelines(lines)
    print("wrote valid.gguf (%d bytes) and %d malformed files to %s" % (len(valid), len(lines), out_dir))


if __name__ == "__main__":
    main()
