#!/usr/bin/env python3
"""Builds the library and the C tests under AddressSanitizer + UBSan (`make asan`, into build/asan) and
runs the tests that drive the CPU kernels, the graph path and whole models through them, so an
out-of-bounds access, a misaligned access, undefined behaviour or a leak aborts the test instead of
passing silently. Each test's summary line is added up; a sanitizer report counts as a failure.

    check_kernels_sanitized.py [--build build]

`make asan` always builds into build/asan, and the model tests read build/fixtures (run-tests.sh writes
them); --build is accepted as every check takes it, and otherwise unused.
"""
import argparse
import os
import subprocess
import sys

from checklib import run_sanitized  # noqa: E402

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
TESTS = ["test-matmul-fast", "test-ops-fast", "test-graph", "test-model", "test-sampler"]


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--build", default="build")
    args = ap.parse_args()
    os.chdir(ROOT)
    r = subprocess.run(["make", "-j2", "asan"], capture_output=True, text=True)
    if r.returncode != 0:
        print((r.stdout + r.stderr)[-4000:])
        print("FAIL make asan")
        print("0 passed, 1 failed, 0 skipped")
        return 1
    passed = failed = skipped = 0
    for t in TESTS:
        p, f, s = run_sanitized(t, [os.path.join("build", "asan", "tests", t)])
        passed, failed, skipped = passed + p, failed + f, skipped + s
    print("%d passed, %d failed, %d skipped" % (passed, failed, skipped))
    return 0 if failed == 0 else 1


if __name__ == "__main__":
    sys.exit(main())
