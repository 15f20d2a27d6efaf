#!/usr/bin/env python3
"""Writes the malformed safetensors corpus to tests/fixtures/bad-safetensors/.

Each file breaks one rule of the format. MANIFEST lists, per file, the status the reader must return
and a piece of the error message it must contain (so a file rejected for the wrong reason fails the
test). Regenerate with:  python3 tests/gen_bad_safetensors.py
"""
import os
import struct
import sys

OUT = os.path.join(os.path.dirname(os.path.abspath(__file__)), "fixtures", "bad-safetensors")


def st(header, data=b"", hlen=None):
    """A file: 8-byte little-endian header length, header text, data bytes."""
    h = header.encode() if isinstance(header, str) else header
    return struct.pack("<Q", len(h) if hlen is None else hlen) + h + data


D24 = bytes(range(24))  # 24 data bytes: one F32 [2, 3] tensor
ONE = '{"w": {"dtype": "F32", "shape": [2, 3], "data_offsets": [0, 24]}}'

CASES = [
    # name, status, message piece, bytes
    ("empty", "format", "shorter than the 8-byte", b""),
    ("truncated-length", "format", "shorter than the 8-byte", b"\x10\x00\x00\x00\x00"),
    ("length-beyond-file", "format", "beyond the end of the file", st(ONE, D24, hlen=4096)),
    ("length-over-limit", "format", "exceeds the", st(ONE, D24, hlen=1 << 40)),
    ("bad-json", "format", "not valid JSON", st('{"w": {"dtype": "F32", "shape": [2, 3', D24)),
    ("not-object", "format", "JSON object", st("[1, 2, 3]", D24)),
    ("garbage-after-header", "format", "after the header object", st(ONE + "xyz", D24)),
    ("entry-not-object", "format", "not an object", st('{"w": 5}')),
    ("missing-dtype", "format", 'missing "dtype"', st('{"w": {"shape": [2, 3], "data_offsets": [0, 24]}}', D24)),
    ("missing-shape", "format", 'missing "shape"', st('{"w": {"dtype": "F32", "data_offsets": [0, 24]}}', D24)),
    ("missing-offsets", "format", 'missing "data_offsets"', st('{"w": {"dtype": "F32", "shape": [2, 3]}}', D24)),
    ("dtype-not-string", "format", "dtype is 5", st('{"w": {"dtype": 5, "shape": [2, 3], "data_offsets": [0, 24]}}', D24)),
    ("unsupported-dtype", "unsupported", '"I64"',
     st('{"w": {"dtype": "I64", "shape": [3], "data_offsets": [0, 24]}}', D24)),
    ("rank-5", "unsupported", "rank 5",
     st('{"w": {"dtype": "F32", "shape": [1, 1, 2, 1, 3], "data_offsets": [0, 24]}}', D24)),
    ("negative-dim", "format", "shape[0] is -2",
     st('{"w": {"dtype": "F32", "shape": [-2, 3], "data_offsets": [0, 24]}}', D24)),
    ("fractional-dim", "format", "shape[1] is 2.5",
     st('{"w": {"dtype": "F32", "shape": [2, 2.5], "data_offsets": [0, 24]}}', D24)),
    ("huge-dims-overflow", "format", "overflows",
     st('{"w": {"dtype": "F32", "shape": [4294967296, 4294967296, 16], "data_offsets": [0, 24]}}', D24)),
    ("shape-size-mismatch", "format", "needs 24 bytes",
     st('{"w": {"dtype": "F32", "shape": [2, 3], "data_offsets": [0, 20]}}', D24)),
    ("offsets-not-pair", "format", "not [begin, end]",
     st('{"w": {"dtype": "F32", "shape": [2, 3], "data_offsets": [0]}}', D24)),
    ("offsets-reversed", "format", "end before",
     st('{"w": {"dtype": "F32", "shape": [0], "data_offsets": [24, 0]}}', D24)),
    ("offsets-outside-data", "format", "beyond the data section",
     st('{"w": {"dtype": "F32", "shape": [2, 3], "data_offsets": [8, 32]}}', D24)),
    ("overlap", "format", "overlap",
     st('{"a": {"dtype": "F32", "shape": [4], "data_offsets": [0, 16]},'
        ' "b": {"dtype": "F32", "shape": [4], "data_offsets": [8, 24]}}', D24)),
    ("gap", "format", "belong to no tensor",
     st('{"a": {"dtype": "F32", "shape": [2], "data_offsets": [0, 8]},'
        ' "b": {"dtype": "F32", "shape": [2], "data_offsets": [16, 24]}}', D24)),
    ("uncovered-tail", "format", "data section has 24 bytes",
     st('{"w": {"dtype": "F32", "shape": [4], "data_offsets": [0, 16]}}', D24)),
    ("duplicate-name", "format", "appears twice",
     st('{"w": {"dtype": "F32", "shape": [3], "data_offsets": [0, 12]},'
        ' "w": {"dtype": "F32", "shape": [3], "data_offsets": [12, 24]}}', D24)),
    ("metadata-not-string", "format", "__metadata__ value 'n'",
     st('{"__metadata__": {"n": 1}, "w": {"dtype": "F32", "shape": [2, 3], "data_offsets": [0, 24]}}', D24)),
]


def main():
    os.makedirs(OUT, exist_ok=True)
    for f in os.listdir(OUT):
        os.remove(os.path.join(OUT, f))
    with open(os.path.join(OUT, "MANIFEST"), "w") as m:
        m.write("# file\tstatus\tmessage piece (written by tests/gen_bad_safetensors.py)\n")
        for name, status, piece, blob in CASES:
            with open(os.path.join(OUT, name + ".safetensors"), "wb") as f:
                f.write(blob)
            m.write(f"{name}.safetensors\t{status}\t{piece}\n")
    print(f"wrote {len(CASES)} files to {OUT}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
