// Matmul benchmark: scalar reference vs the fast kernels at Qwen2.5-0.5B shapes, per dtype, n = 1 and 512
// tokens, 1 and 2 threads. Prints a markdown table: weight GB/s, GFLOP/s and the speedup over the reference.
//
// Build and run (from the repository root, after `make`):
//   cc -O2 -march=native -std=c11 -D_GNU_SOURCE -Iinclude -Isrc -pthread bench/bench-matmul.c
//   build/libmetallic.a -lm -pthread -lcjson -o build/bench-matmul && build/bench-matmul
// Options: -t DTYPE (one dtype), -n N (one token count, any), -j THREADS (one thread count), -s KxM (one
// shape), -r (skip the reference), -b (fastest call instead of the mean), -p (repack Q8_0/Q5_0 weights for
// decode, as a CPU session does), -c (cold: rotate over copies of the weights, >= 256 MB in all, so every
// call streams them from DRAM as decode of a whole model does)
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "backend/cpu/cpu-features.h"
#include "backend/cpu/matmul-fast.h"
#include "backend/cpu/repack.h"
#include "backend/cpu/ops.h"
#include "core/quant.h"
#include "core/threadpool.h"

static uint64_t rng = 0x2545f4914f6cdd1dull;
static uint32_t rnd32(void) {
    rng ^= rng << 13;
    rng ^= rng >> 7;
    rng ^= rng << 17;
    return (uint32_t)(rng >> 16);
}
static float rndf(void) {
    return (float)(rnd32() & 0xffffff) / (float)(1 << 23) - 1.0f;
}

static double now(void) {
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (double)ts.tv_sec + 1e-9 * (double)ts.tv_nsec;
}

// Random weights in the dtype's stored form (random quants, sane f16 scales).
static void fill(mt_dtype t, uint8_t *w, int64_t k, int64_t m) {
    const size_t rb = mt_dtype_row_bytes(t, k), total = rb * (size_t)m;
    if (t == MT_F16 || t == MT_BF16 || t == MT_F32) {
        float *tmp = malloc((size_t)k * sizeof(float));
        for (int64_t r = 0; r < m; r++) {
            for (int64_t i = 0; i < k; i++) tmp[i] = rndf();
            mt_quantize_row(t, tmp, w + r * rb, k);
        }
        free(tmp);
        return;
    }
    const int bb = mt_dtype_get(t)->block_bytes;
    for (size_t i = 0; i < total; i++) w[i] = (uint8_t)rnd32();
    for (size_t b = 0; b < total / (size_t)bb; b++) {
        uint16_t d = mt_f32_to_f16(0.01f);
        memcpy(w + b * bb + (t == MT_Q6_K ? 208 : 0), &d, 2);
        if (t == MT_Q4_K || t == MT_Q5_K) memcpy(w + b * bb + 2, &d, 2);
    }
}

static void run_fast(void *ctx, int ith, int nth) {
    mt_cpu_matmul_fast(ctx, ith, nth);
}
static void run_ref(void *ctx, int ith, int nth) {
    mt_cpu_op_matmul(ctx, ith, nth);
}

static int best_of; // -b: report the fastest call instead of the mean (robust on a busy machine)
// -c: weight copies the timed calls rotate over (the node's W points at the next one before each call)
static uint8_t **copies;
static int n_copies;

static void next_copy(mt_node *node) {
    static int i;
    if (n_copies > 1) ((mt_tensor *)node->src[0])->data = copies[i++ % n_copies];
}

// Seconds per call: at least `min_reps` calls and `min_s` seconds after one warm-up call.
static double time_it(mt_pool *pool, mt_pool_fn fn, mt_node *node, int min_reps, double min_s) {
    mt_pool_run(pool, fn, node);
    int reps = 0;
    double t0 = now(), el, best = 1e30;
    do {
        next_copy(node);
        const double t1 = now();
        mt_pool_run(pool, fn, node);
        const double t2 = now();
        best = t2 - t1 < best ? t2 - t1 : best;
        reps++;
        el = t2 - t0;
    } while (reps < min_reps || el < min_s);
    return best_of ? best : el / reps;
}

int main(int argc, char **argv) {
    const char *only_t = NULL;
    int only_n = 0, only_j = 0, no_ref = 0, repack = 0, cold = 0;
    int64_t only_k = 0, only_m = 0;
    for (int i = 1; i < argc; i++) {
        if (!strcmp(argv[i], "-t") && i + 1 < argc)
            only_t = argv[++i];
        else if (!strcmp(argv[i], "-n") && i + 1 < argc)
            only_n = atoi(argv[++i]);
        else if (!strcmp(argv[i], "-j") && i + 1 < argc)
            only_j = atoi(argv[++i]);
        else if (!strcmp(argv[i], "-r"))
            no_ref = 1;
        else if (!strcmp(argv[i], "-b"))
            best_of = 1;
        else if (!strcmp(argv[i], "-p"))
            repack = 1;
        else if (!strcmp(argv[i], "-c"))
            cold = 1;
        else if (!strcmp(argv[i], "-s") && i + 1 < argc &&
                 sscanf(argv[++i], "%lldx%lld", (long long *)&only_k, (long long *)&only_m) == 2) {
        } else {
            fprintf(stderr, "usage: %s [-t dtype] [-n tokens] [-j threads] [-s KxM] [-r] [-b] [-p] [-c]\n",
                    argv[0]);
            return 2;
        }
    }
    if (mt_cpu_isa_init() != MT_OK) {
        fprintf(stderr, "%s\n", mt_last_error());
        return 1;
    }
    const struct {
        int64_t k, m;
    } shapes[] = {{896, 896}, {896, 128}, {896, 4864}, {4864, 896}, {896, 151936}, {0, 0}};
    const mt_dtype types[] = {MT_F16, MT_BF16, MT_Q8_0, MT_Q4_0, MT_Q5_0, MT_Q4_K, MT_Q5_K, MT_Q6_K};
    int ns[] = {1, 512}, js[] = {1, 2};
    if (only_n) ns[0] = ns[1] = only_n; // any token count (e.g. a graph prefill chunk of 64)
    mt_pool *pools[3] = {NULL};
    for (int j = 1; j <= 2; j++)
        if (mt_pool_create(j, &pools[j]) != MT_OK) return 1;
    printf("isa: %s\n\n", mt_cpu_isa_name(mt_cpu_isa()));
    printf("| k -> m | dtype | n | threads | ref ms | fast ms | fast GB/s | fast GFLOP/s | speedup |\n");
    printf("|---|---|---|---|---|---|---|---|---|\n");
    for (size_t ti = 0; ti < sizeof types / sizeof types[0]; ti++) {
        const mt_dtype t = types[ti];
        if (only_t && strcmp(only_t, mt_dtype_name(t))) continue;
        for (size_t si = 0; si < sizeof shapes / sizeof shapes[0]; si++) {
            const int64_t k = only_k ? only_k : shapes[si].k, m = only_k ? only_m : shapes[si].m;
            if (k == 0 || (only_k && si > 0)) continue;
            if (k % mt_dtype_get(t)->block_elems) continue; // K-quants need k % 256 == 0
            const size_t rb = mt_dtype_row_bytes(t, k), wbytes = rb * (size_t)m;
            n_copies = cold ? (int)((256u << 20) / wbytes) + 1 : 1;
            copies = malloc((size_t)n_copies * sizeof *copies);
            for (int c = 0; c < n_copies; c++) {
                copies[c] = malloc(wbytes);
                fill(t, copies[c], k, m);
            }
            uint8_t *w = copies[0];
            for (int ni = 0; ni < 2; ni++) {
                const int64_t n = ns[ni];
                if (only_n && ni > 0) continue;
                if (n > 1 && m > 100000) continue; // prefill computes logits for the last token only
                float *x = malloc((size_t)(k * n) * sizeof(float)),
                      *y = malloc((size_t)(m * n) * sizeof(float));
                for (int64_t i = 0; i < k * n; i++) x[i] = rndf();
                mt_tensor W, X, Y;
                mt_tensor_init(&W, t, 2, (int64_t[]){k, m}, w);
                mt_tensor_init(&X, MT_F32, 2, (int64_t[]){k, n}, x);
                mt_tensor_init(&Y, MT_F32, 2, (int64_t[]){m, n}, y);
                mt_node node = {.op = MT_OP_MATMUL, .src = {&W, &X, NULL}, .dst = &Y};
                for (int c = 0; repack && c < n_copies; c++) {
                    mt_tensor Wc = W;
                    Wc.data = copies[c];
                    if (mt_cpu_repack_tensor(&Wc, copies) != MT_OK) return 1;
                }
                for (int ji = 0; ji < 2; ji++) {
                    if (only_j && js[ji] != only_j) continue;
                    mt_pool *p = pools[js[ji]];
                    const double tf = time_it(p, run_fast, &node, 3, n > 1 ? 0.5 : 0.3);
                    const double tr = no_ref ? 0 : time_it(p, run_ref, &node, 1, n > 1 ? 0.1 : 0.3);
                    char rs[32] = "-", sp[32] = "-";
                    if (!no_ref) {
                        snprintf(rs, sizeof rs, "%.3f", tr * 1e3);
                        snprintf(sp, sizeof sp, "%.1fx", tr / tf);
                    }
                    printf("| %lld -> %lld | %s | %lld | %d | %s | %.3f | %.1f | %.1f | %s |\n", (long long)k,
                           (long long)m, mt_dtype_name(t), (long long)n, js[ji], rs, tf * 1e3,
                           wbytes / tf / 1e9, 2.0 * k * m * n / tf / 1e9, sp);
                    fflush(stdout);
                }
                free(x), free(y);
                mt_cpu_repack_release(copies);
            }
            for (int c = 0; c < n_copies; c++) free(copies[c]);
            free(copies);
        }
    }
    for (int j = 1; j <= 2; j++) mt_pool_free(pools[j]);
    return 0;
}
