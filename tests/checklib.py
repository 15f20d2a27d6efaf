"""What every tests/check_*.py shares: one ok/FAIL/skip line per case and the closing
"N passed, N failed, N skipped" line that scripts/run-tests.sh adds up."""

import os
import re
import subprocess
import sys


class Tally:
    def __init__(self):
        self.passed = self.failed = self.skipped = 0

    def report(self, name, ok, why=""):
        """ok: "ok   NAME (why)"; else "FAIL NAME: why"."""
        if ok:
            self.passed += 1
            why = str(why)
            print(f"ok   {name}" + (f" ({why[:160]}{'...' if len(why) > 160 else ''})" if why else ""))
        else:
            self.failed += 1
            print(f"FAIL {name}: {why}")
        sys.stdout.flush()

    def skip(self, name, why):
        self.skipped += 1
        print(f"skip {name}: {why}")
        sys.stdout.flush()

    def summary(self):
        """Prints the closing line; returns the exit code."""
        print(f"{self.passed} passed, {self.failed} failed, {self.skipped} skipped")
        return 1 if self.failed else 0


SUMMARY = re.compile(r"^(\d+) passed, (\d+) failed(?:, (\d+) skipped)?$")
SANITIZER_ENV = {"ASAN_OPTIONS": "detect_leaks=1:abort_on_error=0:exitcode=99",
                 "UBSAN_OPTIONS": "print_stacktrace=1:halt_on_error=1"}


def run_sanitized(name, argv, timeout=1200):
    """Runs a C test built with ASan + UBSan. Returns (passed, failed, skipped) from its summary line; a
    sanitizer report, a crash or a missing summary prints the report's tail and counts as a failure."""
    env = dict(os.environ, **SANITIZER_ENV)
    r = subprocess.run(argv, capture_output=True, text=True, env=env, timeout=timeout)
    out = r.stdout + r.stderr
    lines = out.strip().splitlines()
    m = next((m for m in (SUMMARY.match(ln) for ln in reversed(lines)) if m), None)
    sanitizer = "ERROR: AddressSanitizer" in out or "runtime error:" in out or "LeakSanitizer" in out
    passed = int(m.group(1)) if m else 0
    if m is None or sanitizer or r.returncode != 0:
        print("\n".join(lines[-60:]))
        print("FAIL sanitized %s: exit %d%s" % (name, r.returncode, ", sanitizer report" if sanitizer else ""))
        return passed, max(int(m.group(2)) if m else 0, 1), 0
    for ln in lines:
        if ln.startswith(("FAIL", "skip")) or "check failed" in ln:
            print(ln)
    print("sanitized %s: %s" % (name, m.group(0)))
    return passed, int(m.group(2)), int(m.group(3) or 0)
