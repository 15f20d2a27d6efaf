#!/bin/sh
# Reproduces the CPU table of docs/PERF.md: builds metallic and the STREAM benchmark, generates the
# benchmark models into build/bench-models/ (the default model's Q8_0 and F16 re-encodings, random-weight
# 0.5B Q8_0 and F16), then runs bench/compare-llamacpp.py (llama.cpp vs metallic, same files, sizes,
# threads and token ids). Extra arguments go to compare-llamacpp.py (e.g. --quick, -r 5, --threads 1).
#   sh bench/run-cpu-bench.sh [--threads 2] [-r 3] [--quick]
set -e
cd "$(dirname "$0")/.."
PY=${PYTHON:-.venv/bin/python}
MODEL=models/qwen2.5-coder-0.5b-instruct-q4_k_m.gguf
[ -x "$PY" ] || sh scripts/setup-python.sh
make build/metallic build/libmetallic.a
[ -f "$MODEL" ] || make model
mkdir -p build/bench-models
cc -O3 -march=native -std=c11 -D_GNU_SOURCE -pthread bench/stream.c -o build/stream
for dt in q8_0 f16; do
    out=build/bench-models/qwen2.5-coder-0.5b-instruct-$dt.gguf
    [ -f "$out" ] || "$PY" tools/gen_random_model.py "$out" --requant "$MODEL" --dtype $dt
    out=build/bench-models/random-0.5b-$dt.gguf
    [ -f "$out" ] || "$PY" tools/gen_random_model.py "$out" --shape 0.5b --dtype $dt --vocab-from "$MODEL"
done
echo "STREAM:"
build/stream
exec "$PY" bench/compare-llamacpp.py --threads 2 -r 3 --json build/bench-compare.json "$@"
