#!/usr/bin/env python3
"""Builds the library and the C tests under AddressSanitizer + UBSan (`make asan`, into build/asan) and
runs the tests that drive the CPU kernels, the graph path and whole models through them, so an
out-of-bounds access, a misaligned access, undefined behaviour or a leak aborts the test instead of
passing silently. Each test's summary line is added up; a sanitizer report counts as a failure.

    check_kernels_sanitized.py [--build build]   (the tests read BUILD/fixtures, which run-tests.sh writes)
"""
import argparse
import os
import re
import subprocess
import sys

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
TESTS = ["test-matmul-fast", "test-ops-fast", "test-graph", "test-model", "test-sampler"]
SUMMARY = re.compile(r"^(\d+) passed, (\d+) failed(?:, (\d+) skipped)?$")


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
    env = dict(os.environ)
    env["ASAN_OPTIONS"] = "detect_leaks=1:abort_on_error=0:exitcode=99"
    env["UBSAN_OPTIONS"] = "print_stacktrace=1:halt_on_error=1"
    passed = failed = skipped = 0
    for t in TESTS:
        exe = os.path.join("build", "asan", "tests", t)
        r = subprocess.run([exe], capture_output=True, text=True, env=env, timeout=1200)
        out = r.stdout + r.stderr
        lines = out.strip().splitlines()
        m = next((m for m in (SUMMARY.match(ln) for ln in reversed(lines)) if m), None)
        sanitizer = "ERROR: AddressSanitizer" in out or "runtime error:" in out or "LeakSanitizer" in out
        if m is None or sanitizer or r.returncode != 0:
            print("\n".join(lines[-60:]))
            print("FAIL sanitized %s: exit %d%s" % (t, r.returncode, ", sanitizer report" if sanitizer else ""))
            passed += int(m.group(1)) if m else 0
            failed += max(int(m.group(2)) if m else 0, 1)
            continue
        for ln in lines:
            if ln.startswith("FAIL") or "check failed" in ln:
                print(ln)
        print("sanitized %s: %s" % (t, m.group(0)))
        passed += int(m.group(1))
        failed += int(m.group(2))
        skipped += int(m.group(3) or 0)
    print("%d passed, %d failed, %d skipped" % (passed, failed, skipped))
    return 0 if failed == 0 else 1


if __name__ == "__main__":
    sys.exit(main())
