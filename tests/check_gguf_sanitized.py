#!/usr/bin/env python3
"""Builds tests/test-gguf.c with the GGUF reader under AddressSanitizer + UBSan and runs it on the
malformed-file corpus (tests/fixtures/bad-gguf), so an out-of-bounds read or an overflow in the parser
aborts the run instead of passing silently. Reports the test's own summary line as its result.

    check_gguf_sanitized.py --build build
"""
import argparse
import os
import shutil
import subprocess
import sys

from checklib import run_sanitized  # noqa: E402

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
SOURCES = ["tests/test-gguf.c", "src/core/gguf.c", "src/core/tensor.c", "src/core/status.c"]
FLAGS = ["-std=c11", "-D_GNU_SOURCE", "-O1", "-g", "-fno-omit-frame-pointer", "-fsanitize=address,undefined",
         "-fno-sanitize-recover=all", "-Wall", "-Wextra", "-Werror", "-Isrc", "-Iinclude"]


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--build", default="build")
    ap.add_argument("--fixtures", default="tests/fixtures/bad-gguf")
    args = ap.parse_args()
    os.chdir(ROOT)
    cc = os.environ.get("CC") or shutil.which("cc") or "cc"
    out_dir = os.path.join(args.build, "asan")
    os.makedirs(out_dir, exist_ok=True)
    exe = os.path.join(out_dir, "test-gguf")
    cmd = [cc] + FLAGS + SOURCES + ["-o", exe, "-lm"]
    r = subprocess.run(cmd, capture_output=True, text=True)
    if r.returncode != 0:
        print(" ".join(cmd))
        print(r.stdout + r.stderr)
        print("FAIL sanitizer build")
        print("0 passed, 1 failed, 0 skipped")
        return 1
    passed, failed, skipped = run_sanitized("test-gguf", [exe, args.fixtures], timeout=600)
    print("%d passed, %d failed, %d skipped" % (passed, failed, skipped))
    return 0 if failed == 0 else 1

if __name__ == "__main__":
    sys.exit(main())
