#!/bin/sh
# Fuzzes the GGUF reader with libFuzzer (+ ASan/UBSan), seeded with the malformed-file corpus.
#   sh scripts/fuzz-gguf.sh [seconds]      (default 60)
# Crash reproducers land in build/fuzz/; copy one into tests/fixtures/bad-gguf/ (any name ending in
# .gguf) once fixed and test-gguf will require it to fail cleanly from then on.
set -eu
SECONDS_TO_RUN=${1:-60}
OUT=${BUILD:-build}/fuzz
if ! command -v clang >/dev/null 2>&1; then
    echo "clang not found; installing it"
    apt-get install -y clang
fi
mkdir -p "$OUT/corpus"
clang -std=c11 -D_GNU_SOURCE -g -O1 -fno-omit-frame-pointer -fsanitize=fuzzer,address,undefined \
    -fno-sanitize-recover=all -Isrc -Iinclude \
    tests/fuzz/fuzz-gguf.c src/core/gguf.c src/core/tensor.c src/core/status.c -o "$OUT/fuzz-gguf" -lm
# The working corpus grows in $OUT/corpus; the checked-in fixtures only seed it.
"$OUT/fuzz-gguf" -max_total_time="$SECONDS_TO_RUN" -max_len=65536 -timeout=10 -rss_limit_mb=2048 \
    -artifact_prefix="$OUT/" "$OUT/corpus" tests/fixtures/bad-gguf
