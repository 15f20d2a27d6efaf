#!/bin/bash
# GPU check: CUDA op tests against the CPU references, whole-model checks (tiny models and a random model
# at the exact Qwen2.5-0.5B shapes) and legacy-vs-graph timings, on a machine with an NVIDIA GPU.
#
#   scripts/gpu-check.sh [BIN_DIR] [STAGES]     BIN_DIR holds metallic and test-cuda-ops (default build)
#   STAGES: any of ops tiny r05 bench05 hf bench7b (default: ops tiny r05 bench05)
#     hf       transformers vs the engine (CPU and CUDA) on a random Qwen2 folder (tools/gen_hf_random.py;
#              HF_LAYERS layers, default 24); needs torch and transformers
#     bench7b  random GGUFs at the exact Qwen2.5-7B shapes (tools/gen_random_gguf.c; DTYPES7B, default
#              "f16 q8_0 q4_k_m"), `metallic bench --device cuda -p 512 -n 128 -r 3`, legacy and graph;
#              each file is deleted after its rows
#   VOCAB=path.gguf supplies the tokenizer for the generators (default: the real model).
# Models are generated under $MODELS (default /tmp/metallic-gpu-models); the last line is the summary.
# Stages are independent: one that fails is counted and the next still runs.
set -u
set -o pipefail
BIN=${1:-build}
STAGES=${2:-"ops tiny r05 bench05"}
PY=${PYTHON:-python3}
MODELS=${MODELS:-/tmp/metallic-gpu-models}
VOCAB=${VOCAB:-models/qwen2.5-coder-0.5b-instruct-q4_k_m.gguf}
mkdir -p "$MODELS"
fail=0
pass=0
note() { printf '== %s\n' "$*"; }
run() { # counts the test binary's own summary
    "$@"
    rc=$?
    if [ $rc -eq 0 ]; then pass=$((pass + 1)); else fail=$((fail + 1)); echo "FAILED: $*"; fi
}
nvidia-smi --query-gpu=name,memory.total,driver_version,clocks.max.sm,clocks.max.mem --format=csv 2>/dev/null
for s in $STAGES; do
    case $s in
    ops)
        note "CUDA ops vs CPU references"
        run "$BIN/test-cuda-ops"
        note "device sampling vs the CPU sampler"
        run "$BIN/test-cuda-sample"
        ;;
    tiny)
        note "tiny models: CUDA sessions (legacy and graph) vs the CPU engine"
        $PY tools/gen_tiny_model.py "$MODELS/tiny-f32.gguf" --dtype f32 --layers 3 --seed 12 &&
            $PY tools/gen_tiny_model.py "$MODELS/tiny-f16.gguf" --dtype f16 --layers 2 --seed 13 &&
            $PY tools/gen_tiny_model.py "$MODELS/tiny-q8.gguf" --dtype q8_0 --layers 2 --seed 14 --tied
        run "$BIN/test-cuda-ops" "$MODELS/tiny-f32.gguf" "$MODELS/tiny-f16.gguf" "$MODELS/tiny-q8.gguf"
        note "tiny q8_0 model on the int8-activation decode kernels"
        MT_CUDA_DP4A=1 run "$BIN/test-cuda-ops" "$MODELS/tiny-q8.gguf"
        ;;
    r05)
        note "random Qwen2.5-0.5B shapes (f16, q8_0): CUDA vs CPU logits and greedy tokens, int8 vs float decode (teacher-forced)"
        for d in f16 q8_0; do
            [ -f "$MODELS/r05-$d.gguf" ] ||
                $PY tools/gen_random_model.py "$MODELS/r05-$d.gguf" --shape 0.5b --dtype $d --vocab-from "$VOCAB"
        done
        run "$BIN/test-cuda-ops" "$MODELS/r05-f16.gguf" "$MODELS/r05-q8_0.gguf"
        # Q4_K_M needs widths that are multiples of 256 (0.5B's 896 is not): small models of the 7B mix
        # (Q4_K matrices, Q6_K output, Q6_K attn_v/ffn_down in some layers: the mixed q/k/v stage)
        note "random Q4_K_M mix at widths 1024 and 1536: CUDA vs CPU, float and int8 decode paths"
        GEN=$BIN/gen_random_gguf
        [ -x "$GEN" ] || { GEN=$MODELS/gen_random_gguf && cc -O2 -o "$GEN" tools/gen_random_gguf.c -lm; }
        "$GEN" "$MODELS/s-q4km.gguf" --shape 1024,3,8,2,2816,151936,0 --dtype q4_k_m --vocab-from "$VOCAB" &&
            "$GEN" "$MODELS/s5-q4km.gguf" --shape 1536,5,12,2,4096,151936,1 --dtype q4_k_m --vocab-from "$VOCAB"
        run "$BIN/test-cuda-ops" "$MODELS/s-q4km.gguf" "$MODELS/s5-q4km.gguf"
        MT_CUDA_DP4A=1 run "$BIN/test-cuda-ops" "$MODELS/s-q4km.gguf" "$MODELS/s5-q4km.gguf"
        ;;
    bench05)
        note "benchmarks, Qwen2.5-0.5B shapes: pp512 / tg128, legacy launches vs CUDA graphs"
        for d in f16 q8_0; do
            [ -f "$MODELS/r05-$d.gguf" ] ||
                $PY tools/gen_random_model.py "$MODELS/r05-$d.gguf" --shape 0.5b --dtype $d --vocab-from "$VOCAB"
            run "$BIN/test-cuda-ops" --bench "$MODELS/r05-$d.gguf" 512
        done
        note "one sampling call: on the device vs downloading the logits for the CPU sampler"
        run "$BIN/test-cuda-sample" --bench 300
        ;;
    hf)
        note "Hugging Face transformers vs the engine: random Qwen2 at 0.5B widths, ${HF_LAYERS:-24} layers"
        if [ -d "$MODELS/hf-random" ] || $PY tools/gen_hf_random.py "$MODELS/hf-random" --layers "${HF_LAYERS:-24}" \
            --vocab-from "$VOCAB"; then
            run $PY tests/check_hf_transformers.py --build "$BIN" --model "$MODELS/hf-random"
        else
            fail=$((fail + 1)) && echo "FAILED: gen_hf_random.py"
        fi
        ;;
    bench7b)
        note "benchmarks, Qwen2.5-7B shapes: pp512 / tg128, legacy launches vs CUDA graphs"
        GEN=$BIN/gen_random_gguf
        [ -x "$GEN" ] || { GEN=$MODELS/gen_random_gguf && cc -O2 -o "$GEN" tools/gen_random_gguf.c -lm; }
        for d in ${DTYPES7B:-f16 q8_0 q4_k_m}; do
            f=$MODELS/r7-$d.gguf
            t0=$(date +%s)
            if ! "$GEN" "$f" --shape 7b --dtype $d --vocab-from "$VOCAB"; then
                fail=$((fail + 1)) && echo "FAILED: gen_random_gguf $d" && continue
            fi
            echo "generated $f in $(($(date +%s) - t0)) s"
            for be in legacy graph; do
                run "$BIN/metallic" bench "$f" --device cuda --backend $be -p 512 -n 128 -r 3 -o md
            done
            rm -f "$f"
        done
        ;;
    *) echo "unknown stage $s" && fail=$((fail + 1)) ;;
    esac
done
echo "$pass passed, $fail failed, 0 skipped"
[ $fail -eq 0 ]
