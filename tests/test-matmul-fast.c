// Fast CPU matmul vs the scalar reference: every fast dtype x every ISA level this CPU runs, odd sizes,
// 1/3/17 tokens, 1 and 2 threads, random inputs, guard bytes around the output.
#include <math.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include "backend/cpu/cpu-features.h"
#include "backend/cpu/matmul-fast.h"
#include "backend/cpu/ops.h"
#include "backend/cpu/repack.h"
#include "core/quant.h"
#include "core/threadpool.h"
#include "harness.h"

#define GUARD 64 // floats of guard on each side of the output

static uint64_t rng = 0x9e3779b97f4a7c15ull;
static uint32_t rnd32(void) {
    rng ^= rng << 13;
    rng ^= rng >> 7;
    rng ^= rng << 17;
    return (uint32_t)(rng >> 16);
}
static float rndf(void) { // uniform in [-1, 1)
    return (float)(rnd32() & 0xffffff) / (float)(1 << 23) - 1.0f;
}

static bool is_float(mt_dtype t) {
    return t == MT_F32 || t == MT_F16 || t == MT_BF16;
}

static void put16(uint8_t *p, uint16_t v) {
    memcpy(p, &v, 2);
}

// Random weights: float types from random floats; quantized types as random bytes (every bit pattern of
// the quants and scales, -128 included) with sane random f16 super-scales.
static void fill_weights(mt_dtype t, uint8_t *w, int64_t k, int64_t m) {
    const mt_dtype_info *di = mt_dtype_get(t);
    const size_t rb = mt_dtype_row_bytes(t, k);
    if (is_float(t)) {
        float *tmp = malloc((size_t)k * sizeof(float));
        for (int64_t r = 0; r < m; r++) {
            for (int64_t i = 0; i < k; i++) tmp[i] = rndf();
            mt_quantize_row(t, tmp, w + r * rb, k);
        }
        free(tmp);
        return;
    }
    const size_t total = rb * (size_t)m;
    for (size_t i = 0; i < total; i++) w[i] = (uint8_t)rnd32();
    for (size_t b = 0; b < total / (size_t)di->block_bytes; b++) {
        uint8_t *blk = w + b * (size_t)di->block_bytes;
        const uint16_t d = mt_f32_to_f16(0.001f + 0.01f * (rndf() + 1.0f));
        const uint16_t dm = mt_f32_to_f16(0.001f + 0.01f * (rndf() + 1.0f));
        if (t == MT_Q6_K) {
            put16(blk + 208, d);
        } else {
            put16(blk, d);
            if (t == MT_Q4_K || t == MT_Q5_K) put16(blk + 2, dm);
        }
    }
}

typedef struct {
    mt_node *node;
    void *scratch; // NULL: mt_cpu_matmul_fast; else per-thread slices of `stride` bytes
    size_t stride;
} job;

static void run_fast(void *ctx, int ith, int nth) {
    job *j = ctx;
    if (j->scratch)
        mt_cpu_matmul_fast_ex(j->node, ith, nth, (uint8_t *)j->scratch + (size_t)ith * j->stride);
    else
        mt_cpu_matmul_fast(j->node, ith, nth);
}
static void run_ref(void *ctx, int ith, int nth) {
    mt_cpu_op_matmul(((job *)ctx)->node, ith, nth);
}

// One case: fast vs reference at tolerance `tol`, outputs finite, guards intact.
// With `repack`, the weights are rows v0..v0+m-1 of a parent of v0+m rows whose 8-row groups are repacked
// for decode (repack.h), so views that start inside a group are covered.
static void check_case_v(mt_dtype t, int64_t k, int64_t m, int64_t n, mt_pool *pool, bool use_bias, bool ex,
                         double tol, bool repack, int64_t v0) {
    const size_t rb = mt_dtype_row_bytes(t, k);
    uint8_t *parent = malloc(rb * (size_t)(m + v0)), *wd = parent + rb * (size_t)v0;
    float *xd = malloc((size_t)(k * n) * sizeof(float));
    float *bd = malloc((size_t)m * sizeof(float));
    float *ref = malloc((size_t)(m * n) * sizeof(float));
    float *outg = malloc((size_t)(m * n + 2 * GUARD) * sizeof(float));
    fill_weights(t, parent, k, m + v0);
    for (int64_t i = 0; i < k * n; i++) xd[i] = rndf();
    for (int64_t i = 0; i < m; i++) bd[i] = rndf();
    memset(outg, 0xa5, (size_t)(m * n + 2 * GUARD) * sizeof(float));
    float *out = outg + GUARD;

    mt_tensor W, X, B, Dr, Df;
    mt_tensor P;
    MT_ASSERT(mt_tensor_init(&P, t, 2, (int64_t[]){k, m + v0}, parent) == MT_OK);
    MT_ASSERT(mt_tensor_view_rows(&P, v0, m, &W) == MT_OK);
    if (repack) {
        const size_t before = mt_cpu_repack_bytes();
        MT_ASSERT(mt_cpu_repack_tensor(&P, &P) == MT_OK);
        const int64_t gr = mt_cpu_repack_group_rows(t), groups = (m + v0) / gr;
        int64_t row0 = -1, rows = -1;
        const uint8_t *pk = mt_cpu_repack_find(&W, &row0, &rows);
        CHECK(mt_cpu_repack_bytes() - before == (size_t)groups * mt_cpu_repack_group_bytes(t, k),
              "%s: %zu packed bytes for %lld groups", mt_dtype_name(t), mt_cpu_repack_bytes() - before,
              (long long)groups);
        if (v0 < gr * groups) {
            CHECK(pk && row0 == v0 && rows == gr * groups,
                  "%s m=%lld v0=%lld: find gives row0 %lld rows %lld", mt_dtype_name(t), (long long)m,
                  (long long)v0, (long long)row0, (long long)rows);
        } else {
            CHECK(!pk, "%s: no packed copy for rows past the last whole group", mt_dtype_name(t));
        }
    }
    MT_ASSERT(mt_tensor_init(&X, MT_F32, 2, (int64_t[]){k, n}, xd) == MT_OK);
    MT_ASSERT(mt_tensor_init(&B, MT_F32, 1, (int64_t[]){m}, bd) == MT_OK);
    MT_ASSERT(mt_tensor_init(&Dr, MT_F32, 2, (int64_t[]){m, n}, ref) == MT_OK);
    MT_ASSERT(mt_tensor_init(&Df, MT_F32, 2, (int64_t[]){m, n}, out) == MT_OK);
    mt_node nr = {.op = MT_OP_MATMUL, .src = {&W, &X, use_bias ? &B : NULL}, .dst = &Dr};
    mt_node nf = nr;
    nf.dst = &Df;
    MT_ASSERT(mt_op_check(&nf) == MT_OK);
    job jr = {.node = &nr};
    mt_pool_run(NULL, run_ref, &jr);
    const int nth = pool ? mt_pool_size(pool) : 1;
    job jf = {.node = &nf};
    if (ex) {
        jf.stride = mt_cpu_matmul_fast_scratch_bytes(t, k, n) + 1; // odd: scratch must not need alignment
        jf.scratch = malloc(jf.stride * (size_t)nth + 1);
    }
    mt_pool_run(pool, run_fast, &jf);

    // Error normalized by sum_i sum_j (w_ij x_j)^2 rather than by sum_i ref_i^2: the error of 8-bit
    // activations grows with the terms, not with their (possibly cancelling) sum, so this stays a
    // stable measure even for a single output. Expected ~1.6e-5 for 8-bit activations of uniform x.
    double num = 0, den = 0;
    int bad = 0;
    float *wrow = malloc((size_t)k * sizeof(float));
    for (int64_t r = 0; r < m; r++) {
        mt_dequantize_row(t, wd + (size_t)r * rb, wrow, k);
        for (int64_t tok = 0; tok < n; tok++) {
            const float *xt = xd + tok * k;
            for (int64_t j = 0; j < k; j++) den += (double)wrow[j] * xt[j] * ((double)wrow[j] * xt[j]);
            const float o = out[tok * m + r], rf = ref[tok * m + r];
            if (!isfinite(o)) bad++;
            num += ((double)o - rf) * ((double)o - rf);
        }
    }
    free(wrow);
    int guard_bad = 0;
    const uint8_t *g0 = (const uint8_t *)outg, *g1 = (const uint8_t *)(out + m * n);
    for (size_t i = 0; i < GUARD * sizeof(float); i++) guard_bad += (g0[i] != 0xa5) + (g1[i] != 0xa5);
    const double nmse = den > 0 ? num / den : INFINITY;
    CHECK(bad == 0, "%s k=%lld m=%lld n=%lld: %d non-finite outputs", mt_dtype_name(t), (long long)k,
          (long long)m, (long long)n, bad);
    CHECK(guard_bad == 0, "%s k=%lld m=%lld n=%lld: %d guard bytes overwritten", mt_dtype_name(t),
          (long long)k, (long long)m, (long long)n, guard_bad);
    CHECK(nmse <= tol, "%s k=%lld m=%lld n=%lld threads=%d: normalized error %.3g > %.3g", mt_dtype_name(t),
          (long long)k, (long long)m, (long long)n, nth, nmse, tol);
    free(jf.scratch);
    if (repack) {
        mt_cpu_repack_release(&P);
        int64_t r0, rs;
        CHECK(!mt_cpu_repack_find(&W, &r0, &rs), "released copy still found");
    }
    free(parent), free(xd), free(bd), free(ref), free(outg);
}

static void check_case(mt_dtype t, int64_t k, int64_t m, int64_t n, mt_pool *pool, bool use_bias, bool ex,
                       double tol) {
    check_case_v(t, k, m, n, pool, use_bias, ex, tol, false, 0);
}

static const mt_dtype k_types[] = {MT_F32,  MT_F16,  MT_BF16, MT_Q8_0, MT_Q4_0,
                                   MT_Q5_0, MT_Q4_K, MT_Q5_K, MT_Q6_K};

static double tol_for(mt_dtype t) {
    return is_float(t) ? 1e-10 : 1e-4;
}

// Every size/token/thread combination for one dtype at the current level.
static void test_dtype(mt_dtype t, mt_pool *pool2) {
    const bool kq = t == MT_Q4_K || t == MT_Q5_K || t == MT_Q6_K;
    // k: one block, several (not a multiple of 256 for 32-blocks), and odd for float types.
    const int64_t ks[3] = {kq ? 256 : 32, kq ? 768 : 224, is_float(t) ? 203 : kq ? 1280 : 896};
    const int64_t ms[4] = {1, 5, 37, 130};
    const int64_t ns[3] = {1, 3, 17};
    int c = 0;
    for (int ki = 0; ki < 3; ki++)
        for (int mi = 0; mi < 4; mi++)
            for (int ni = 0; ni < 3; ni++, c++) {
                check_case(t, ks[ki], ms[mi], ns[ni], NULL, c & 1, false, tol_for(t));
                check_case(t, ks[ki], ms[mi], ns[ni], pool2, !(c & 1), c % 3 == 0, tol_for(t));
            }
}

// Many tokens: several token blocks per thread and a partial last tile.
static void test_prefill(mt_dtype t, mt_pool *pool2) {
    const bool kq = t == MT_Q4_K || t == MT_Q5_K || t == MT_Q6_K;
    check_case(t, kq ? 512 : 896, 67, 203, pool2, true, false, tol_for(t));
}

// F16/BF16 prefill GEMM (8+ tokens a thread): rows not a multiple of its 16-row panel, k not a multiple
// of 8 or of its 256-element k block, 8..600 tokens (partial 6-token tiles, several 192-token blocks),
// row views, with and without bias.
static void test_float_gemm(mt_dtype t, mt_pool *pool2) {
    const uint64_t saved = rng; // its own draws: the other cases keep their inputs
    const int64_t ks[5] = {1, 13, 256, 263, 903}, ms[5] = {1, 15, 16, 17, 45}, ns[5] = {8, 11, 17, 203, 600};
    int c = 0;
    for (int ki = 0; ki < 5; ki++)
        for (int mi = 0; mi < 5; mi++)
            for (int ni = 0; ni < 5; ni++, c++) {
                if (ns[ni] > 17 && (ki != 3 || mi == 2)) continue; // long token runs: a few shapes
                check_case_v(t, ks[ki], ms[mi], ns[ni], NULL, c & 1, false, tol_for(t), false, c % 3);
                check_case_v(t, ks[ki], ms[mi], ns[ni], pool2, !(c & 1), c % 2 == 0, tol_for(t), false, 0);
            }
    rng = saved;
}

// Decode on repacked weights: rows not a multiple of 8, views starting inside a group, 1 and 2 threads,
// and more than one token (which must ignore the packed copy).
static void test_repacked(mt_dtype t, mt_pool *pool2) {
    const uint64_t saved = rng; // its own draws: the other cases keep their inputs
    const bool kq = t == MT_Q4_K || t == MT_Q6_K;
    const int64_t ks[3] = {kq ? 256 : 32, kq ? 768 : 224, kq ? 1280 : 896}, ms[6] = {1, 5, 8, 37, 130, 203},
                  v0s[4] = {0, 3, 4, 8};
    int c = 0;
    for (int ki = 0; ki < 3; ki++)
        for (int mi = 0; mi < 6; mi++)
            for (int vi = 0; vi < 4; vi++, c++) {
                // one output's error is one draw of the 8-bit activation noise: allow its spread
                const double tol = ms[mi] < 8 ? 3 * tol_for(t) : tol_for(t);
                check_case_v(t, ks[ki], ms[mi], 1, NULL, c & 1, false, tol, true, v0s[vi]);
                check_case_v(t, ks[ki], ms[mi], 1, pool2, !(c & 1), c % 3 == 0, tol, true, v0s[vi]);
            }
    check_case_v(t, kq ? 512 : 896, 37, 3, pool2, true, false, tol_for(t), true, 4);
    check_case_v(t, kq ? 256 : 224, 45, 17, pool2, false, true, tol_for(t), true, 3);
    check_case_v(t, kq ? 256 : 224, 45, 17, NULL, true, false, tol_for(t), true, 5);
    check_case_v(t, kq ? 512 : 896, 67, 203, pool2, true, false, tol_for(t), true, 0);
    // one thread, 300 tokens: two token blocks of the packed F16 GEMM (264 tokens each)
    check_case_v(t, kq ? 256 : 224, 45, 300, NULL, true, true, tol_for(t), true, 0);
    rng = saved;
}

// The 151,936 x 896 output projection of Qwen2.5-0.5B (Q8_0 in its Q4_K_M file), decode and 3 tokens.
static void test_vocab(mt_pool *pool2) {
    check_case(MT_Q8_0, 896, 151936, 1, pool2, false, false, 1e-4);
    check_case(MT_Q8_0, 896, 151936, 3, pool2, false, true, 1e-4);
    check_case_v(MT_Q8_0, 896, 151936, 1, pool2, true, false, 1e-4, true, 0);
}

static void test_isa_api(void) {
    mt_cpu_isa_level l;
    CHECK(mt_cpu_isa_parse("AVX2", &l) == MT_OK && l == MT_ISA_AVX2, "parse avx2");
    CHECK(mt_cpu_isa_parse("scalar", &l) == MT_OK && l == MT_ISA_SCALAR, "parse scalar");
    CHECK(mt_cpu_isa_parse("sse9", &l) == MT_ERR_INVALID, "parse garbage");
    CHECK(strstr(mt_last_error(), "sse9") != NULL, "error names the value: %s", mt_last_error());
    const mt_cpu_isa_level best = mt_cpu_isa_best();
    setenv("METALLIC_CPU_ISA", "bogus", 1);
    CHECK(mt_cpu_isa_init() == MT_ERR_INVALID, "invalid env");
    CHECK(strstr(mt_last_error(), "bogus") != NULL, "env error names the value: %s", mt_last_error());
    setenv("METALLIC_CPU_ISA", "scalar", 1);
    CHECK(mt_cpu_isa_init() == MT_OK && mt_cpu_isa() == MT_ISA_SCALAR, "env scalar");
    unsetenv("METALLIC_CPU_ISA");
    CHECK(mt_cpu_isa_init() == MT_OK && mt_cpu_isa() == best, "unset env gives the best level");
    if (best < MT_ISA_AVX512) {
        CHECK(mt_cpu_isa_force(MT_ISA_AVX512) == MT_ERR_UNSUPPORTED, "forcing a missing level fails");
        CHECK(strstr(mt_last_error(), "avx512") != NULL, "error names the level: %s", mt_last_error());
        CHECK(mt_cpu_isa() == best, "a failed force leaves the level unchanged");
    }
    CHECK(mt_cpu_isa_force((mt_cpu_isa_level)7) == MT_ERR_INVALID, "out of range level");
    CHECK(mt_cpu_matmul_fast_supports(MT_Q6_K) && !mt_cpu_matmul_fast_supports(MT_Q4_1), "supports");
}

int main(void) {
    mt_pool *pool2;
    MT_ASSERT(mt_pool_create(2, &pool2) == MT_OK);
    RUN(test_isa_api);
    const mt_cpu_isa_level best = mt_cpu_isa_best();
    printf("cpu isa best: %s\n", mt_cpu_isa_name(best));
    for (int l = MT_ISA_SCALAR; l <= MT_ISA_AVX512; l++) {
        char name[64];
        if (l > (int)best) {
            snprintf(name, sizeof name, "isa %s", mt_cpu_isa_name((mt_cpu_isa_level)l));
            SKIP(name, "not supported by this CPU");
            continue;
        }
        MT_ASSERT(mt_cpu_isa_force((mt_cpu_isa_level)l) == MT_OK);
        for (size_t i = 0; i < sizeof k_types / sizeof k_types[0]; i++) {
            snprintf(name, sizeof name, "%s/%s", mt_cpu_isa_name((mt_cpu_isa_level)l),
                     mt_dtype_name(k_types[i]));
            RUN_NAMED(name, test_dtype(k_types[i], pool2));
            snprintf(name, sizeof name, "%s/%s/prefill", mt_cpu_isa_name((mt_cpu_isa_level)l),
                     mt_dtype_name(k_types[i]));
            RUN_NAMED(name, test_prefill(k_types[i], pool2));
            if (k_types[i] == MT_F16 || k_types[i] == MT_BF16) {
                snprintf(name, sizeof name, "%s/%s/gemm", mt_cpu_isa_name((mt_cpu_isa_level)l),
                         mt_dtype_name(k_types[i]));
                RUN_NAMED(name, test_float_gemm(k_types[i], pool2));
            }
            if (!mt_cpu_repack_supports(k_types[i])) continue;
            snprintf(name, sizeof name, "%s/%s/repacked", mt_cpu_isa_name((mt_cpu_isa_level)l),
                     mt_dtype_name(k_types[i]));
            RUN_NAMED(name, test_repacked(k_types[i], pool2));
        }
        if (l == (int)best) RUN_NAMED("vocab 151936x896 q8_0", test_vocab(pool2));
    }
    mt_pool_free(pool2);
    return th_summary();
}
