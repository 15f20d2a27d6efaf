#!/usr/bin/env python3
"""Builds tests/test-gguf.c with the GGUF reader under AddressSanitizer + UBSan and runs it on the
malformed-file corpus (tests/fixtures/bad-gguf), so an out-of-bounds read or an overflow in the parser
aborts the run instead of passing silently. Reports the test's own summary line as its result.

    check_gguf_sanitized.py --build build
"""
import argparse
import os
import re
import shutil
import subprocess
import sys

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
SOURCES = ["tests/test-gguf.c", "src/core/gguf.c", "src/core/tensor.c", "src/core/status.c"]
FLAGS = ["-std=c11", "-D_GNU_SOURCE", "-O1", "-g", "-fno-omit-frame-pointer", "-fsanitize=address,undefined",
         "-fno-sanitize-recover=all", "-Wall", "-Wextra", "-Werror", "-Isrc", "-Iinclude"]
SUMMARY = re.compile(r"^(\d+) passed, (\d+) failed(?:, (\d+) skipped)?$")


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
    env = dict(os.environ)
    env["ASAN_OPTIONS"] = "detect_leaks=1:abort_on_error=0:exitcode=99"
    env["UBSAN_OPTIONS"] = "print_stacktrace=1:halt_on_error=1"
    r = subprocess.run([exe, args.fixtures], capture_output=True, text=True, env=env, timeout=600)
    out = r.stdout + r.stderr
    lines = out.strip().splitlines()
    summary = next((m for m in (SUMMARY.match(l) for l in reversed(lines)) if m), None)
    sanitizer = "ERROR: AddressSanitizer" in out or "runtime error:" in out or "LeakSanitizer" in out
    if summary is None or sanitizer or r.returncode != 0:
        # Show the report (the tail holds the sanitizer stack); count the crash as one failure.
        print("\n".join(lines[-60:]))
        passed = int(summary.group(1)) if summary else 0
        failed = int(summary.group(2)) if summary else 0
        print("FAIL sanitized test-gguf: exit %d%s" % (r.returncode, ", sanitizer report" if sanitizer else ""))
        print("%d passed, %d failed, 0 skipped" % (passed, max(failed, 1)))
        return 1
    for l in lines:
        if l.startswith(("FAIL", "skip")) or "check failed" in l:
            print(l)
    print("sanitized test-gguf (%s): %s" % (exe, summary.group(0)))
    print("%s passed, %s failed, %s skipped" % (summary.group(1), summary.group(2), summary.group(3) or "0"))
    return 0 if summary.group(2) == "0" else 1


if __name__ == "__main__":
    sys.exit(main())
