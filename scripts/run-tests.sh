#!/bin/sh
# Runs every test: the C test binaries (build/tests/test-*), then the Python reference checks
# (tests/check_*.py, which drive our binaries against NumPy / gguf / tokenizers). Each prints a closing
# "N passed, N failed[, N skipped]" line; this script adds them up and prints the total last.
set -u
BUILD=${BUILD:-build}
sh scripts/setup-python.sh || { echo "python setup failed"; echo "0 passed, 1 failed"; exit 1; }
P=0; F=0; S=0
tally() { # $1 = name, $2 = log, $3 = exit code
    line=$(grep -E '^[0-9]+ passed, [0-9]+ failed' "$2" | tail -n 1)
    if [ -z "$line" ]; then
        echo "FAIL $1: no summary line (exit $3)"; F=$((F + 1)); return
    fi
    p=$(echo "$line" | sed -E 's/^([0-9]+) passed.*/\1/')
    f=$(echo "$line" | sed -E 's/.* ([0-9]+) failed.*/\1/')
    s=$(echo "$line" | grep -oE '[0-9]+ skipped' | grep -oE '[0-9]+' || echo 0)
    [ "$3" -ne 0 ] && [ "$f" -eq 0 ] && f=1
    P=$((P + p)); F=$((F + f)); S=$((S + ${s:-0}))
    echo "== $1: $line"
}
log=$(mktemp)
# the tiny random-weight models some C tests (test-graph) read; check_e2e.py compares them to NumPy
.venv/bin/python tests/check_e2e.py --build "$BUILD" --fixtures-only > "$log" 2>&1 || { cat "$log"; F=$((F + 1)); }
for t in "$BUILD"/tests/test-*; do
    [ -x "$t" ] || continue
    case "$t" in *.d|*.o) continue ;; esac
    echo "== running $t"
    "$t" > "$log" 2>&1; rc=$?
    grep -E '^(FAIL|skip)|check failed' "$log" | head -40
    tally "$(basename "$t")" "$log" $rc
done
for t in tests/check_*.py; do
    [ -f "$t" ] || continue
    echo "== running $t"
    PYTHONUNBUFFERED=1 .venv/bin/python "$t" --build "$BUILD" > "$log" 2>&1; rc=$?
    grep -E '^(FAIL|skip)|Error|error' "$log" | head -40
    tally "$(basename "$t")" "$log" $rc
done
rm -f "$log"
echo
echo "$P passed, $F failed, $S skipped"
[ "$F" -eq 0 ]
