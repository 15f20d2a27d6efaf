"""What every tests/check_*.py shares: one ok/FAIL/skip line per case and the closing
"N passed, N failed, N skipped" line that scripts/run-tests.sh adds up."""

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
