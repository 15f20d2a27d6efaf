// Every op of the table against a float64 computation written here (never by calling the reference
// kernels), on seeded random inputs with odd sizes, run through the eager executor on pools of 1 and 3
// threads. Output buffers carry guard bytes on both sides and start as NaN, so a missed or stray write
// shows up. Error is NMSE = sum((y - ref)^2) / sum(ref^2) with per-case tolerances. Also: the error paths
// of the checks and the op table lookups.
#include "harness.h"

#include <math.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include "backend/cpu/cpu-features.h"
#include "backend/cpu/ops.h"
#include "core/quant.h"
#include "core/threadpool.h"
#include "exec/eager.h"
#include "exec/op.h"

#define N_POOLS 2
static const int pool_threads[N_POOLS] = {1, 3};
static mt_pool *pools[N_POOLS];

// ---- random numbers (splitmix64) ----

static uint64_t rng_s;
static void rng_seed(uint64_t s) {
    rng_s = s * 0x9E3779B97F4A7C15ull + 0x1234567ull;
}
static uint64_t rng_u64(void) {
    uint64_t z = (rng_s += 0x9E3779B97F4A7C15ull);
    z = (z ^ (z >> 30)) * 0xBF58476D1CE4E5B9ull;
    z = (z ^ (z >> 27)) * 0x94D049BB133111EBull;
    return z ^ (z >> 31);
}
static float rng_f(void) {
    return (float)((double)(rng_u64() >> 11) / 9007199254740992.0 * 2.0 - 1.0);
}
static int rng_int(int n) {
    return (int)(rng_u64() % (uint64_t)n);
}
static void fill_rand(float *x, size_t n, float scale) {
    for (size_t i = 0; i < n; i++) x[i] = rng_f() * scale;
}

// ---- guarded buffers ----

#define GUARD 64
typedef struct gbuf {
    unsigned char *base;
    size_t n;
} gbuf;

static unsigned char guard_byte(size_t i) {
    return (unsigned char)(0xA5 ^ (i * 7));
}

// n bytes between two guard zones; the inside starts as 0xFF bytes (NaN as floats).
static void *gb_alloc(gbuf *g, size_t n) {
    g->n = n;
    g->base = malloc(n + 2 * GUARD);
    MT_ASSERT(g->base);
    for (size_t i = 0; i < GUARD; i++) g->base[i] = g->base[GUARD + n + i] = guard_byte(i);
    memset(g->base + GUARD, 0xFF, n);
    return g->base + GUARD;
}
static void *gb_data(const gbuf *g) {
    return g->base + GUARD;
}
static int gb_intact(const gbuf *g) {
    for (size_t i = 0; i < GUARD; i++)
        if (g->base[i] != guard_byte(i) || g->base[GUARD + g->n + i] != guard_byte(i)) return 0;
    return 1;
}
static void gb_free(gbuf *g) {
    free(g->base);
}

// ---- helpers ----

static mt_tensor mk(mt_dtype dt, int64_t n0, int64_t n1, int64_t n2, int64_t n3, void *data) {
    int64_t ne[4] = {n0, n1, n2, n3};
    mt_tensor t;
    mt_status s = mt_tensor_init(&t, dt, 4, ne, data);
    MT_ASSERT(s == MT_OK);
    return t;
}

static double nmse(const float *y, const double *ref, size_t n) {
    double num = 0, den = 0;
    for (size_t i = 0; i < n; i++) {
        double d = (double)y[i] - ref[i];
        num += d * d;
        den += ref[i] * ref[i];
    }
    return den > 0 ? num / den : num;
}

// Runs the node on every pool. Before each run the output is reset to `init` (in-place ops) or to NaN.
// Checks the status, the guards, NMSE against `ref` (<= tol), and that 1 and 3 threads agree bit for bit
// (the split never changes the arithmetic of one output element).
static void run_check(const mt_node *node, gbuf *out, const void *init, const double *ref, size_t n_out,
                      double tol) {
    float *first = malloc(n_out * sizeof(float) + 1);
    MT_ASSERT(first);
    for (int p = 0; p < N_POOLS; p++) {
        if (init)
            memcpy(gb_data(out), init, out->n);
        else
            memset(gb_data(out), 0xFF, out->n);
        mt_status s = mt_eager_run(node, 1, pools[p]);
        CHECK(s == MT_OK, "%d threads: status %s: %s", pool_threads[p], mt_status_name(s), mt_last_error());
        CHECK(gb_intact(out), "%d threads: guard bytes around the output were overwritten", pool_threads[p]);
        double e = nmse(gb_data(out), ref, n_out);
        CHECK(e <= tol, "%d threads: nmse %.3g > %.3g", pool_threads[p], e, tol);
        if (p == 0)
            memcpy(first, gb_data(out), n_out * sizeof(float));
        else
            CHECK(memcmp(first, gb_data(out), n_out * sizeof(float)) == 0, "%d threads differ from 1 thread",
                  pool_threads[p]);
    }
    free(first);
}

static int is_quant(mt_dtype t) {
    return t != MT_F32 && t != MT_F16 && t != MT_BF16;
}

// Encodes m rows of k floats into dtype t; the float types are converted here, the block types through
// mt_quantize_row. `dec` receives the stored values decoded (the values the kernel must compute with).
static void *encode_rows(mt_dtype t, const float *src, int64_t k, int64_t m, float *dec) {
    size_t rb = mt_dtype_row_bytes(t, k);
    unsigned char *w = malloc(rb * (size_t)m);
    MT_ASSERT(w);
    for (int64_t r = 0; r < m; r++) {
        const float *s = src + r * k;
        unsigned char *d = w + (size_t)r * rb;
        float *o = dec + r * k;
        if (t == MT_F32) {
            memcpy(d, s, rb);
            memcpy(o, s, rb);
        } else if (t == MT_F16 || t == MT_BF16) {
            uint16_t *h = (uint16_t *)d;
            for (int64_t i = 0; i < k; i++) {
                h[i] = t == MT_F16 ? mt_f32_to_f16(s[i]) : mt_f32_to_bf16(s[i]);
                o[i] = t == MT_F16 ? mt_f16_to_f32(h[i]) : mt_bf16_to_f32(h[i]);
            }
        } else {
            mt_quantize_row(t, s, d, k);
            mt_dequantize_row(t, d, o, k);
        }
    }
    return w;
}

// ---- MATMUL ----

static void case_matmul(mt_dtype t, int64_t k, int64_t m, int64_t n, int with_bias, uint64_t seed) {
    rng_seed(seed);
    float *wf = malloc(sizeof(float) * (size_t)(k * m)), *wd = malloc(sizeof(float) * (size_t)(k * m));
    float *x = malloc(sizeof(float) * (size_t)(k * n)), *bias = malloc(sizeof(float) * (size_t)m);
    double *ref = malloc(sizeof(double) * (size_t)(m * n)),
           *ref_orig = malloc(sizeof(double) * (size_t)(m * n));
    fill_rand(wf, (size_t)(k * m), 1.0f);
    fill_rand(x, (size_t)(k * n), 2.0f);
    fill_rand(bias, (size_t)m, 0.5f);
    void *wq = encode_rows(t, wf, k, m, wd);

    // The encoder must have produced real values (not zeros) close to the originals.
    size_t nw = (size_t)(k * m);
    double *wf64 = malloc(sizeof(double) * nw);
    for (size_t i = 0; i < nw; i++) wf64[i] = wf[i];
    double qerr = nmse(wd, wf64, nw);
    free(wf64);
    CHECK(qerr < 0.05, "%s weights decode to nmse %.3g from the originals", mt_dtype_name(t), qerr);

    for (int64_t j = 0; j < n; j++)
        for (int64_t i = 0; i < m; i++) {
            double s = 0, so = 0;
            for (int64_t c = 0; c < k; c++) {
                s += (double)wd[i * k + c] * x[j * k + c];
                so += (double)wf[i * k + c] * x[j * k + c];
            }
            double b = with_bias ? bias[i] : 0.0;
            ref[j * m + i] = s + b;
            ref_orig[j * m + i] = so + b;
        }

    gbuf out;
    gb_alloc(&out, sizeof(float) * (size_t)(m * n));
    mt_tensor W = mk(t, k, m, 1, 1, wq), X = mk(MT_F32, k, n, 1, 1, x), B = mk(MT_F32, m, 1, 1, 1, bias);
    mt_tensor D = mk(MT_F32, m, n, 1, 1, gb_data(&out));
    mt_node node = {.op = MT_OP_MATMUL, .src = {&W, &X, with_bias ? &B : NULL}, .dst = &D, .label = "test"};
    double tol = is_quant(t) ? 1e-8 : 1e-10;
    run_check(&node, &out, NULL, ref, (size_t)(m * n), tol);
    if (t == MT_F16 || t == MT_BF16) { // against the unrounded weights: the storage precision dominates
        double e = nmse(gb_data(&out), ref_orig, (size_t)(m * n));
        double tol_o = t == MT_F16 ? 1e-6 : 1e-4;
        CHECK(e <= tol_o, "nmse vs unrounded weights %.3g > %.3g", e, tol_o);
    }
    gb_free(&out);
    free(wq), free(wf), free(wd), free(x), free(bias), free(ref), free(ref_orig);
}

// A batch of tokens gives bit for bit the same rows as one token at a time (prefill == decode).
static void test_matmul_batch_consistency(void) {
    static const mt_dtype dts[] = {MT_F32, MT_F16, MT_Q8_0, MT_Q4_K};
    enum { KMAX = 259, M = 9, N = 7 };
    static float wf[KMAX * M], wd[KMAX * M], x[KMAX * N], bias[M], yb[M * N], y1[M];
    rng_seed(4242);
    fill_rand(wf, KMAX * M, 1), fill_rand(x, KMAX * N, 1), fill_rand(bias, M, 1);
    for (size_t di = 0; di < sizeof dts / sizeof dts[0]; di++) {
        int64_t k = mt_dtype_get(dts[di])->block_elems == 1 ? KMAX : 256; // a tail after the 8-wide loop
        void *wq = encode_rows(dts[di], wf, k, M, wd);
        mt_tensor W = mk(dts[di], k, M, 1, 1, wq), X = mk(MT_F32, k, N, 1, 1, x),
                  B = mk(MT_F32, M, 1, 1, 1, bias);
        mt_tensor Y = mk(MT_F32, M, N, 1, 1, yb);
        mt_node all = {.op = MT_OP_MATMUL, .src = {&W, &X, &B}, .dst = &Y};
        CHECK(mt_eager_run(&all, 1, pools[1]) == MT_OK, "%s", mt_last_error());
        for (int t = 0; t < N; t++) {
            mt_tensor Xt = mk(MT_F32, k, 1, 1, 1, x + t * k), Yt = mk(MT_F32, M, 1, 1, 1, y1);
            mt_node one = {.op = MT_OP_MATMUL, .src = {&W, &Xt, &B}, .dst = &Yt};
            CHECK(mt_eager_run(&one, 1, pools[0]) == MT_OK, "%s", mt_last_error());
            CHECK(memcmp(y1, yb + t * M, sizeof y1) == 0, "%s: token %d differs between batch and single",
                  mt_dtype_name(dts[di]), t);
        }
        free(wq);
    }
}

// ---- EMBEDDING ----

static void case_embedding(mt_dtype t, int64_t d, int64_t vocab, int64_t n, uint64_t seed) {
    rng_seed(seed);
    float *tf = malloc(sizeof(float) * (size_t)(d * vocab)),
          *td = malloc(sizeof(float) * (size_t)(d * vocab));
    fill_rand(tf, (size_t)(d * vocab), 1.0f);
    void *tq = encode_rows(t, tf, d, vocab, td);
    int32_t *ids = malloc(sizeof(int32_t) * (size_t)n);
    double *ref = malloc(sizeof(double) * (size_t)(d * n));
    for (int64_t i = 0; i < n; i++) ids[i] = i == 0 ? 0 : i == 1 ? (int32_t)vocab - 1 : rng_int((int)vocab);
    for (int64_t i = 0; i < n; i++)
        for (int64_t j = 0; j < d; j++) ref[i * d + j] = td[ids[i] * d + j];
    gbuf out;
    gb_alloc(&out, sizeof(float) * (size_t)(d * n));
    mt_tensor T = mk(t, d, vocab, 1, 1, tq), I = mk(MT_I32, n, 1, 1, 1, ids);
    mt_tensor D = mk(MT_F32, d, n, 1, 1, gb_data(&out));
    mt_node node = {.op = MT_OP_EMBEDDING, .src = {&T, &I}, .dst = &D};
    run_check(&node, &out, NULL, ref, (size_t)(d * n), 0.0); // a lookup is exact
    gb_free(&out);
    free(tf), free(td), free(tq), free(ids), free(ref);
}

// ---- RMSNORM ----

static void case_rmsnorm(int64_t d, int64_t n, uint64_t seed) {
    rng_seed(seed);
    float *x = malloc(sizeof(float) * (size_t)(d * n)), *w = malloc(sizeof(float) * (size_t)d);
    double *ref = malloc(sizeof(double) * (size_t)(d * n));
    fill_rand(x, (size_t)(d * n), 3.0f);
    fill_rand(w, (size_t)d, 1.5f);
    const float eps = 1e-6f;
    for (int64_t r = 0; r < n; r++) {
        double ss = 0;
        for (int64_t i = 0; i < d; i++) ss += (double)x[r * d + i] * x[r * d + i];
        double inv = 1.0 / sqrt(ss / (double)d + eps);
        for (int64_t i = 0; i < d; i++) ref[r * d + i] = x[r * d + i] * inv * w[i];
    }
    gbuf out;
    gb_alloc(&out, sizeof(float) * (size_t)(d * n));
    mt_tensor X = mk(MT_F32, d, n, 1, 1, x), Wt = mk(MT_F32, d, 1, 1, 1, w);
    mt_tensor D = mk(MT_F32, d, n, 1, 1, gb_data(&out));
    mt_node node = {.op = MT_OP_RMSNORM, .src = {&X, &Wt}, .dst = &D, .p.eps = eps};
    run_check(&node, &out, NULL, ref, (size_t)(d * n), 1e-10);
    gb_free(&out);
    free(x), free(w), free(ref);
}

// ---- ROPE ----

static void case_rope(int64_t hd, int64_t heads, int64_t n, float base, int in_place, uint64_t seed) {
    rng_seed(seed);
    size_t cnt = (size_t)(hd * heads * n);
    float *x = malloc(sizeof(float) * cnt);
    double *ref = malloc(sizeof(double) * cnt);
    int32_t *pos = malloc(sizeof(int32_t) * (size_t)n);
    fill_rand(x, cnt, 2.0f);
    for (int64_t t = 0; t < n; t++) pos[t] = t == 0 ? 0 : rng_int(5000);
    int64_t half = hd / 2;
    for (int64_t t = 0; t < n; t++)
        for (int64_t h = 0; h < heads; h++) {
            const float *xr = x + (t * heads + h) * hd;
            double *y = ref + (t * heads + h) * hd;
            for (int64_t i = 0; i < half; i++) {
                double th = pos[t] * pow((double)base, -2.0 * (double)i / (double)hd);
                y[i] = xr[i] * cos(th) - xr[i + half] * sin(th);
                y[i + half] = xr[i] * sin(th) + xr[i + half] * cos(th);
            }
        }
    gbuf out, in;
    gb_alloc(&out, sizeof(float) * cnt);
    float *xin = in_place ? gb_data(&out) : gb_alloc(&in, sizeof(float) * cnt);
    if (!in_place) memcpy(xin, x, sizeof(float) * cnt);
    mt_tensor X = mk(MT_F32, hd, heads, n, 1, xin), D = mk(MT_F32, hd, heads, n, 1, gb_data(&out));
    mt_node node = {
        .op = MT_OP_ROPE, .src = {&X}, .dst = in_place ? &X : &D, .p = {.freq_base = base, .pos = pos}};
    run_check(&node, &out, in_place ? x : NULL, ref, cnt, 1e-10);
    if (!in_place) {
        CHECK(gb_intact(&in) && memcmp(xin, x, sizeof(float) * cnt) == 0, "rope modified its input");
        gb_free(&in);
    }
    gb_free(&out);
    free(x), free(ref), free(pos);
}

// ---- KV_WRITE ----

// n distinct (pos, seq) slots out of ctx * n_seq, in random order.
static void random_slots(int64_t ctx, int64_t n_seq, int64_t n, int32_t *pos, int32_t *seq) {
    int64_t total = ctx * n_seq;
    int32_t *perm = malloc(sizeof(int32_t) * (size_t)total);
    for (int64_t i = 0; i < total; i++) perm[i] = (int32_t)i;
    for (int64_t i = total - 1; i > 0; i--) {
        int j = rng_int((int)(i + 1));
        int32_t tmp = perm[i];
        perm[i] = perm[j];
        perm[j] = tmp;
    }
    for (int64_t i = 0; i < n; i++) {
        pos[i] = (int32_t)(perm[i] % ctx);
        seq[i] = (int32_t)(perm[i] / ctx);
    }
    free(perm);
}

static void case_kv_write(int64_t hd, int64_t n_kv, int64_t ctx, int64_t n_seq, int64_t n, uint64_t seed) {
    rng_seed(seed);
    size_t cache_n = (size_t)(hd * n_kv * ctx * n_seq), rows_n = (size_t)(hd * n_kv * n);
    float *cache0 = malloc(sizeof(float) * cache_n), *rows = malloc(sizeof(float) * rows_n);
    double *ref = malloc(sizeof(double) * cache_n);
    int32_t *pos = malloc(sizeof(int32_t) * (size_t)n), *seq = malloc(sizeof(int32_t) * (size_t)n);
    fill_rand(cache0, cache_n, 1.0f);
    fill_rand(rows, rows_n, 1.0f);
    random_slots(ctx, n_seq, n, pos, seq);
    for (size_t i = 0; i < cache_n; i++) ref[i] = cache0[i];
    for (int64_t t = 0; t < n; t++)
        for (int64_t h = 0; h < n_kv; h++)
            for (int64_t i = 0; i < hd; i++)
                ref[((seq[t] * ctx + pos[t]) * n_kv + h) * hd + i] = rows[(t * n_kv + h) * hd + i];
    gbuf out;
    gb_alloc(&out, sizeof(float) * cache_n);
    mt_tensor R = mk(MT_F32, hd, n_kv, n, 1, rows), C = mk(MT_F32, hd, n_kv, ctx, n_seq, gb_data(&out));
    mt_node node = {.op = MT_OP_KV_WRITE, .src = {&R}, .dst = &C, .p = {.pos = pos, .seq = seq}};
    run_check(&node, &out, cache0, ref, cache_n, 0.0); // a copy is exact, and other slots stay as they were
    gb_free(&out);
    free(cache0), free(rows), free(ref), free(pos), free(seq);
}

// ---- ATTENTION ----

static void case_attention(int64_t n_head, int64_t n_kv, int64_t hd, int64_t ctx, int64_t n_seq, int64_t n,
                           float scale, float qmul, double tol, uint64_t seed) {
    rng_seed(seed);
    size_t cache_n = (size_t)(hd * n_kv * ctx * n_seq), qn = (size_t)(hd * n_head * n);
    float *kc = malloc(sizeof(float) * cache_n), *vc = malloc(sizeof(float) * cache_n);
    float *k0 = malloc(sizeof(float) * cache_n), *v0 = malloc(sizeof(float) * cache_n);
    float *q = malloc(sizeof(float) * qn);
    double *ref = malloc(sizeof(double) * qn), *sc = malloc(sizeof(double) * (size_t)ctx);
    int32_t *pos = malloc(sizeof(int32_t) * (size_t)n), *seq = malloc(sizeof(int32_t) * (size_t)n);
    // Positions past each token's own are filled too: reading them would change the result.
    fill_rand(kc, cache_n, 1.0f);
    fill_rand(vc, cache_n, 1.0f);
    fill_rand(q, qn, qmul);
    memcpy(k0, kc, sizeof(float) * cache_n);
    memcpy(v0, vc, sizeof(float) * cache_n);
    for (int64_t t = 0; t < n; t++) {
        seq[t] = (int32_t)rng_int((int)n_seq);
        pos[t] = t == 0 ? (int32_t)ctx - 1 : t == 1 ? 0 : (int32_t)rng_int((int)ctx);
    }
    double s_used = scale != 0 ? scale : 1.0 / sqrt((double)hd);
    int64_t group = n_head / n_kv;
    for (int64_t t = 0; t < n; t++)
        for (int64_t h = 0; h < n_head; h++) {
            const float *qr = q + (t * n_head + h) * hd;
            int64_t kvh = h / group;
            double mx = -INFINITY, sum = 0;
            for (int64_t j = 0; j <= pos[t]; j++) {
                const float *kr = kc + ((seq[t] * ctx + j) * n_kv + kvh) * hd;
                double s = 0;
                for (int64_t i = 0; i < hd; i++) s += (double)qr[i] * kr[i];
                sc[j] = s * s_used;
                if (sc[j] > mx) mx = sc[j];
            }
            for (int64_t j = 0; j <= pos[t]; j++) sum += (sc[j] = exp(sc[j] - mx));
            double *y = ref + (t * n_head + h) * hd;
            for (int64_t i = 0; i < hd; i++) y[i] = 0;
            for (int64_t j = 0; j <= pos[t]; j++) {
                const float *vr = vc + ((seq[t] * ctx + j) * n_kv + kvh) * hd;
                for (int64_t i = 0; i < hd; i++) y[i] += sc[j] / sum * vr[i];
            }
        }
    gbuf out;
    gb_alloc(&out, sizeof(float) * qn);
    mt_tensor Q = mk(MT_F32, hd, n_head, n, 1, q), K = mk(MT_F32, hd, n_kv, ctx, n_seq, kc);
    mt_tensor V = mk(MT_F32, hd, n_kv, ctx, n_seq, vc), D = mk(MT_F32, hd, n_head, n, 1, gb_data(&out));
    mt_node node = {.op = MT_OP_ATTENTION,
                    .src = {&Q, &K, &V},
                    .dst = &D,
                    .p = {.scale = scale, .pos = pos, .seq = seq},
                    .label = "test/sdpa"};
    run_check(&node, &out, NULL, ref, qn, tol);
    CHECK(memcmp(kc, k0, sizeof(float) * cache_n) == 0, "attention modified the K cache");
    CHECK(memcmp(vc, v0, sizeof(float) * cache_n) == 0, "attention modified the V cache");
    gb_free(&out);
    free(kc), free(vc), free(k0), free(v0), free(q), free(ref), free(sc), free(pos), free(seq);
}

// ---- SWIGLU, ADD, SOFTMAX ----

static void case_swiglu(int64_t f, int64_t n, uint64_t seed) {
    rng_seed(seed);
    size_t cnt = (size_t)(f * n);
    float *g = malloc(sizeof(float) * cnt), *u = malloc(sizeof(float) * cnt);
    double *ref = malloc(sizeof(double) * cnt);
    fill_rand(g, cnt, 6.0f);
    fill_rand(u, cnt, 2.0f);
    for (size_t i = 0; i < cnt; i++) ref[i] = (double)g[i] / (1.0 + exp(-(double)g[i])) * u[i];
    gbuf out;
    gb_alloc(&out, sizeof(float) * cnt);
    mt_tensor G = mk(MT_F32, f, n, 1, 1, g), U = mk(MT_F32, f, n, 1, 1, u);
    mt_tensor D = mk(MT_F32, f, n, 1, 1, gb_data(&out));
    mt_node node = {.op = MT_OP_SWIGLU, .src = {&G, &U}, .dst = &D};
    run_check(&node, &out, NULL, ref, cnt, 1e-10);
    gb_free(&out);
    free(g), free(u), free(ref);
}

// alias: 0 separate dst, 1 dst is a, 2 dst is b.
static void case_add(int64_t d, int64_t n, int alias, uint64_t seed) {
    rng_seed(seed);
    size_t cnt = (size_t)(d * n);
    float *a = malloc(sizeof(float) * cnt), *b = malloc(sizeof(float) * cnt);
    double *ref = malloc(sizeof(double) * cnt);
    fill_rand(a, cnt, 1.0f);
    fill_rand(b, cnt, 3.0f);
    for (size_t i = 0; i < cnt; i++) ref[i] = (double)a[i] + b[i];
    gbuf out;
    gb_alloc(&out, sizeof(float) * cnt);
    mt_tensor D = mk(MT_F32, d, n, 1, 1, gb_data(&out));
    mt_tensor A = mk(MT_F32, d, n, 1, 1, alias == 1 ? gb_data(&out) : a);
    mt_tensor B = mk(MT_F32, d, n, 1, 1, alias == 2 ? gb_data(&out) : b);
    mt_node node = {.op = MT_OP_ADD, .src = {&A, &B}, .dst = &D};
    run_check(&node, &out, alias == 1 ? a : alias == 2 ? b : NULL, ref, cnt, 1e-12);
    gb_free(&out);
    free(a), free(b), free(ref);
}

static void case_softmax(int64_t d, int64_t n, float mul, uint64_t seed) {
    rng_seed(seed);
    size_t cnt = (size_t)(d * n);
    float *x = malloc(sizeof(float) * cnt);
    double *ref = malloc(sizeof(double) * cnt);
    fill_rand(x, cnt, mul);
    for (int64_t r = 0; r < n; r++) {
        double mx = -INFINITY, sum = 0;
        for (int64_t i = 0; i < d; i++) mx = fmax(mx, x[r * d + i]);
        for (int64_t i = 0; i < d; i++) sum += (ref[r * d + i] = exp(x[r * d + i] - mx));
        for (int64_t i = 0; i < d; i++) ref[r * d + i] /= sum;
    }
    gbuf out;
    gb_alloc(&out, sizeof(float) * cnt);
    mt_tensor X = mk(MT_F32, d, n, 1, 1, x), D = mk(MT_F32, d, n, 1, 1, gb_data(&out));
    mt_node node = {.op = MT_OP_SOFTMAX, .src = {&X}, .dst = &D};
    run_check(&node, &out, NULL, ref, cnt, 1e-10);
    gb_free(&out);
    free(x), free(ref);
}

// ---- the table and the checks ----

static void test_table(void) {
    for (int i = 0; i < MT_OP_COUNT; i++) {
        const mt_op_def *d = mt_op_get((mt_op_kind)i);
        CHECK(d && d->name && d->check && d->cpu_ref, "op %d incomplete", i);
        if (!d) continue;
        CHECK(strcmp(mt_op_name((mt_op_kind)i), d->name) == 0, "op %d name", i);
        CHECK(mt_op_find(d->name) == i, "find(%s) = %d", d->name, mt_op_find(d->name));
        for (int j = 0; j < i; j++)
            CHECK(strcmp(d->name, mt_op_name((mt_op_kind)j)) != 0, "duplicate %s", d->name);
    }
    CHECK(mt_op_find("sdpa") == MT_OP_ATTENTION, "sdpa alias");
    CHECK(mt_op_find("attention") == MT_OP_ATTENTION, "attention");
    CHECK(mt_op_find("matmul") == MT_OP_MATMUL, "matmul");
    CHECK(mt_op_find("conv2d") == -1 && mt_op_find("") == -1 && mt_op_find(NULL) == -1, "unknown names");
    CHECK(mt_op_get(MT_OP_COUNT) == NULL && mt_op_get((mt_op_kind)-1) == NULL, "out of range get");
    CHECK(strcmp(mt_op_name(MT_OP_COUNT), "unknown") == 0, "out of range name");
}

// Expects the node to be rejected with MT_ERR_INVALID and a message containing `needle`.
#define REJECT(node, needle, ...)                                                                            \
    do {                                                                                                     \
        mt_fail(MT_OK, "%s", "");                                                                            \
        mt_status s_ = mt_op_check(node);                                                                    \
        CHECK(s_ == MT_ERR_INVALID && strstr(mt_last_error(), needle), __VA_ARGS__);                         \
        printf("    rejected (%s): %s\n", needle, mt_last_error());                                          \
    } while (0)
#define ACCEPT(node, what)                                                                                   \
    do {                                                                                                     \
        mt_status s_ = mt_op_check(node);                                                                    \
        CHECK(s_ == MT_OK, "%s: %s", what, mt_last_error());                                                 \
    } while (0)

static void test_check_matmul(void) {
    float w[64 * 64], x[64 * 3], y[64 * 3], b[64];
    unsigned char q8[34 * 2 * 64];
    rng_seed(7);
    fill_rand(w, 64 * 64, 1), fill_rand(x, 64 * 3, 1), fill_rand(b, 64, 1);
    mt_tensor W = mk(MT_F32, 64, 32, 1, 1, w), X = mk(MT_F32, 64, 3, 1, 1, x), Y = mk(MT_F32, 32, 3, 1, 1, y);
    mt_tensor B = mk(MT_F32, 32, 1, 1, 1, b);
    mt_node ok = {.op = MT_OP_MATMUL, .src = {&W, &X, &B}, .dst = &Y};
    ACCEPT(&ok, "valid matmul");
    mt_node n = ok;
    mt_tensor X2 = mk(MT_F32, 48, 3, 1, 1, x);
    n.src[1] = &X2;
    REJECT(&n, "x ne[0] = 48", "k mismatch");
    n = ok;
    mt_tensor Y2 = mk(MT_F32, 31, 3, 1, 1, y);
    n.dst = &Y2;
    REJECT(&n, "dst ne[0] = 31", "m mismatch");
    n = ok;
    mt_tensor Y3 = mk(MT_F32, 32, 2, 1, 1, y);
    n.dst = &Y3;
    REJECT(&n, "dst ne[1] = 2", "n mismatch");
    n = ok;
    mt_tensor B2 = mk(MT_F32, 33, 1, 1, 1, b);
    n.src[2] = &B2;
    REJECT(&n, "bias", "bias length");
    n = ok;
    n.src[1] = NULL;
    REJECT(&n, "missing x", "absent x");
    n = ok;
    mt_tensor Xh = mk(MT_F16, 64, 3, 1, 1, x);
    n.src[1] = &Xh;
    REJECT(&n, "must be f32", "f16 activations");
    n = ok;
    mt_tensor Xi = mk(MT_I32, 64, 3, 1, 1, x);
    n.src[1] = &Xi;
    REJECT(&n, "must be f32", "i32 activations");
    n = ok;
    mt_tensor Wi = mk(MT_I32, 64, 32, 1, 1, w);
    n.src[0] = &Wi;
    REJECT(&n, "i32", "i32 weight");
    n = ok;
    mt_tensor Wq = mk(MT_Q8_0, 64, 32, 1, 1, q8);
    n.src[0] = &Wq;
    ACCEPT(&n, "q8_0 weight");
    Wq.ne[0] = 48; // not a whole number of blocks
    n.src[1] = &X2;
    REJECT(&n, "block", "q8_0 partial block");
    n = ok;
    mt_tensor Xs = X;
    Xs.nb[0] = 8; // strided elements inside a row
    n.src[1] = &Xs;
    REJECT(&n, "not contiguous", "strided row");
    // dst aliasing x (square weight so the shapes match): never allowed for matmul
    mt_tensor Wsq = mk(MT_F32, 64, 64, 1, 1, w), Xa = mk(MT_F32, 64, 3, 1, 1, y);
    mt_tensor Ya = mk(MT_F32, 64, 3, 1, 1, y);
    mt_node al = {.op = MT_OP_MATMUL, .src = {&Wsq, &Xa, NULL}, .dst = &Ya};
    REJECT(&al, "overlaps", "dst aliases x");
    mt_tensor Yb = mk(MT_F32, 64, 3, 1, 1, y + 5);
    al.dst = &Yb;
    REJECT(&al, "overlaps", "dst partially overlaps x");
    mt_node nodst = ok;
    nodst.dst = NULL;
    REJECT(&nodst, "missing dst", "absent dst");
    mt_node bad = ok;
    bad.op = MT_OP_COUNT;
    REJECT(&bad, "unknown op", "unknown op id");
}

static void test_check_attention(void) {
    enum { HD = 16, NH = 8, NKV = 2, CTX = 10, NSEQ = 2, N = 3 };
    static float q[HD * NH * N], kc[HD * NKV * CTX * NSEQ], vc[HD * NKV * CTX * NSEQ], y[HD * NH * N];
    int32_t pos[N] = {9, 0, 4}, seq[N] = {1, 0, 1};
    mt_tensor Q = mk(MT_F32, HD, NH, N, 1, q), K = mk(MT_F32, HD, NKV, CTX, NSEQ, kc);
    mt_tensor V = mk(MT_F32, HD, NKV, CTX, NSEQ, vc), Y = mk(MT_F32, HD, NH, N, 1, y);
    mt_node ok = {.op = MT_OP_ATTENTION, .src = {&Q, &K, &V}, .dst = &Y, .p = {.pos = pos, .seq = seq}};
    ACCEPT(&ok, "valid attention");
    mt_node n = ok;
    int32_t pos_hi[N] = {9, 10, 0}, pos_neg[N] = {-1, 0, 0}, seq_hi[N] = {0, 2, 0};
    n.p.pos = pos_hi;
    REJECT(&n, "pos[1] = 10", "pos == ctx");
    n.p.pos = pos_neg;
    REJECT(&n, "pos[0] = -1", "negative pos");
    n = ok;
    n.p.seq = seq_hi;
    REJECT(&n, "seq[1] = 2", "seq == n_seq");
    n = ok;
    n.p.pos = NULL;
    REJECT(&n, "pos is NULL", "no pos");
    n = ok;
    n.p.seq = NULL;
    REJECT(&n, "seq is NULL", "no seq");
    n = ok;
    mt_tensor Q6 = mk(MT_F32, HD, 6, N, 1, q), Y6 = mk(MT_F32, HD, 6, N, 1, y);
    mt_tensor K4 = mk(MT_F32, HD, 4, CTX / 2, NSEQ, kc), V4 = mk(MT_F32, HD, 4, CTX / 2, NSEQ, vc);
    n.src[0] = &Q6, n.dst = &Y6, n.src[1] = &K4, n.src[2] = &V4;
    int32_t pos_small[N] = {4, 0, 1};
    n.p.pos = pos_small;
    REJECT(&n, "multiple of n_kv", "6 heads over 4 kv heads");
    n = ok;
    mt_tensor V2 = mk(MT_F32, HD, NKV, CTX - 1, NSEQ, vc);
    n.src[2] = &V2;
    REJECT(&n, "shape mismatch", "K/V shapes differ");
    n = ok;
    mt_tensor Qd = mk(MT_F32, 8, NH * 2, N, 1, q);
    n.src[0] = &Qd;
    REJECT(&n, "head_dim", "q head_dim != cache head_dim");
    n = ok;
    mt_tensor Ya = mk(MT_F32, HD, NH, N, 1, q);
    n.dst = &Ya;
    REJECT(&n, "overlaps", "dst aliases q");
    n = ok;
    n.p.scale = -1;
    REJECT(&n, "scale", "negative scale");
}

static void test_check_others(void) {
    enum { HD = 16, H = 4, N = 3 };
    static float x[HD * H * N], y[HD * H * N], w[HD], cache[HD * H * 8 * 2], tab[HD * 10];
    int32_t pos[N] = {1, 2, 3}, seq[N] = {0, 1, 1}, ids[N] = {0, 9, 4};
    // rope
    mt_tensor X = mk(MT_F32, HD, H, N, 1, x), Y = mk(MT_F32, HD, H, N, 1, y);
    mt_node rope = {.op = MT_OP_ROPE, .src = {&X}, .dst = &Y, .p = {.freq_base = 10000, .pos = pos}};
    ACCEPT(&rope, "valid rope");
    mt_node n = rope;
    n.dst = &X;
    ACCEPT(&n, "in-place rope");
    mt_tensor Xo = mk(MT_F32, HD, H, N, 1, x + HD);
    n.dst = &Xo;
    REJECT(&n, "overlaps", "rope dst shifted over x");
    n = rope;
    mt_tensor X15 = mk(MT_F32, 15, H, N, 1, x), Y15 = mk(MT_F32, 15, H, N, 1, y);
    n.src[0] = &X15, n.dst = &Y15;
    REJECT(&n, "even", "odd head_dim");
    n = rope;
    int32_t neg[N] = {0, -3, 1};
    n.p.pos = neg;
    REJECT(&n, "pos[1] = -3", "negative rope pos");
    n = rope;
    n.p.freq_base = 0;
    REJECT(&n, "freq_base", "zero base");
    // kv_write
    mt_tensor R = mk(MT_F32, HD, H, N, 1, x), C = mk(MT_F32, HD, H, 8, 2, cache);
    mt_node kv = {.op = MT_OP_KV_WRITE, .src = {&R}, .dst = &C, .p = {.pos = pos, .seq = seq}};
    ACCEPT(&kv, "valid kv_write");
    n = kv;
    int32_t pos8[N] = {0, 8, 1};
    n.p.pos = pos8;
    REJECT(&n, "pos[1] = 8", "kv pos == ctx");
    n = kv;
    mt_tensor C2 = mk(MT_F32, HD, H - 1, 8, 2, cache);
    n.dst = &C2;
    REJECT(&n, "n_kv", "kv head count");
    n = kv;
    mt_tensor C0 = mk(MT_F32, HD, H, 0, 2, cache);
    n.dst = &C0;
    REJECT(&n, "pos[0] = 1 outside [0, 0)", "empty cache");
    n = kv;
    int32_t seq_neg[N] = {0, -1, 0};
    n.p.seq = seq_neg;
    REJECT(&n, "seq[1] = -1", "negative seq");
    // embedding
    mt_tensor T = mk(MT_F32, HD, 10, 1, 1, tab), I = mk(MT_I32, N, 1, 1, 1, ids),
              E = mk(MT_F32, HD, N, 1, 1, y);
    mt_node emb = {.op = MT_OP_EMBEDDING, .src = {&T, &I}, .dst = &E};
    ACCEPT(&emb, "valid embedding");
    n = emb;
    int32_t ids_bad[N] = {0, 10, 1};
    mt_tensor Ib = mk(MT_I32, N, 1, 1, 1, ids_bad);
    n.src[1] = &Ib;
    REJECT(&n, "ids[1] = 10", "id == vocab");
    n = emb;
    mt_tensor If = mk(MT_F32, N, 1, 1, 1, ids);
    n.src[1] = &If;
    REJECT(&n, "must be i32", "float ids");
    // rmsnorm
    mt_tensor Wn = mk(MT_F32, HD, 1, 1, 1, w), Xn = mk(MT_F32, HD, H * N, 1, 1, x),
              Yn = mk(MT_F32, HD, H * N, 1, 1, y);
    mt_node rms = {.op = MT_OP_RMSNORM, .src = {&Xn, &Wn}, .dst = &Yn, .p.eps = 1e-6f};
    ACCEPT(&rms, "valid rmsnorm");
    n = rms;
    n.dst = &Xn;
    REJECT(&n, "overlaps", "rmsnorm in place");
    n = rms;
    mt_tensor W8 = mk(MT_F32, 8, 1, 1, 1, w);
    n.src[1] = &W8;
    REJECT(&n, "weight", "norm weight length");
    // add: either input may be the destination, a shape mismatch may not
    mt_tensor A = mk(MT_F32, HD, H * N, 1, 1, x), Bt = mk(MT_F32, HD, H * N, 1, 1, y);
    mt_tensor Dd = mk(MT_F32, HD, H * N, 1, 1, cache);
    mt_node add = {.op = MT_OP_ADD, .src = {&A, &Bt}, .dst = &Dd};
    ACCEPT(&add, "valid add");
    n = add;
    n.dst = &Bt;
    ACCEPT(&n, "add into b");
    n.dst = &A;
    ACCEPT(&n, "add into a");
    n = add;
    mt_tensor Bs = mk(MT_F32, HD, H * N - 1, 1, 1, y);
    n.src[1] = &Bs;
    REJECT(&n, "shape mismatch", "add shapes");
    // softmax / swiglu in place are not allowed
    mt_node sm = {.op = MT_OP_SOFTMAX, .src = {&A}, .dst = &A};
    REJECT(&sm, "overlaps", "softmax in place");
    mt_node sw = {.op = MT_OP_SWIGLU, .src = {&A, &Bt}, .dst = &Bt};
    REJECT(&sw, "overlaps", "swiglu into up");
    // eager: the first bad node is named by index, op and label
    mt_node list[2] = {add, rope};
    list[1].p.pos = neg;
    list[1].label = "block_2/rope_q";
    mt_status s = mt_eager_run(list, 2, pools[0]);
    CHECK(s == MT_ERR_INVALID && strstr(mt_last_error(), "node 1") && strstr(mt_last_error(), "rope") &&
              strstr(mt_last_error(), "block_2/rope_q") && strstr(mt_last_error(), "pos[1] = -3"),
          "eager error: %s", mt_last_error());
    printf("    eager rejected: %s\n", mt_last_error());
    CHECK(mt_eager_run(NULL, 0, pools[0]) == MT_OK, "empty list");
}

// ---- a short end-to-end chain through the eager executor ----

// rmsnorm -> matmul(+bias) -> add (residual, in place), as the model strings them.
static void test_chain(void) {
    enum { D = 64, M = 64, N = 5 };
    rng_seed(99);
    static float x[D * N], w[D], wm[M * D], b[M], h[D * N], y[M * N], res[M * N], res0[M * N];
    fill_rand(x, D * N, 2), fill_rand(w, D, 1), fill_rand(wm, M * D, 1), fill_rand(b, M, 1),
        fill_rand(res0, M * N, 1);
    double ref[M * N];
    for (int t = 0; t < N; t++) {
        double ss = 0, hn[D];
        for (int i = 0; i < D; i++) ss += (double)x[t * D + i] * x[t * D + i];
        for (int i = 0; i < D; i++) hn[i] = x[t * D + i] / sqrt(ss / D + 1e-5) * w[i];
        for (int m = 0; m < M; m++) {
            double s = b[m];
            for (int i = 0; i < D; i++) s += (double)wm[m * D + i] * hn[i];
            ref[t * M + m] = s + res0[t * M + m];
        }
    }
    mt_tensor X = mk(MT_F32, D, N, 1, 1, x), Wn = mk(MT_F32, D, 1, 1, 1, w), H = mk(MT_F32, D, N, 1, 1, h);
    mt_tensor Wm = mk(MT_F32, D, M, 1, 1, wm), B = mk(MT_F32, M, 1, 1, 1, b), Y = mk(MT_F32, M, N, 1, 1, y);
    mt_tensor R = mk(MT_F32, M, N, 1, 1, res);
    mt_node nodes[3] = {
        {.op = MT_OP_RMSNORM, .src = {&X, &Wn}, .dst = &H, .p.eps = 1e-5f},
        {.op = MT_OP_MATMUL, .src = {&Wm, &H, &B}, .dst = &Y},
        {.op = MT_OP_ADD, .src = {&R, &Y}, .dst = &R},
    };
    for (int p = 0; p < N_POOLS; p++) {
        memcpy(res, res0, sizeof res);
        CHECK(mt_eager_run(nodes, 3, pools[p]) == MT_OK, "%s", mt_last_error());
        double e = nmse(res, ref, M * N);
        CHECK(e < 1e-10, "%d threads: chain nmse %.3g", pool_threads[p], e);
        memcpy(res, res0, sizeof res);
        mt_eager_run_unchecked(nodes, 3, pools[p]);
        e = nmse(res, ref, M * N);
        CHECK(e < 1e-10, "%d threads: unchecked chain nmse %.3g", pool_threads[p], e);
    }
}

int main(void) {
    // These tests hold the scalar references to float64; the fast kernels are held to the references
    // in test-matmul-fast.c.
    if (mt_cpu_isa_force(MT_ISA_SCALAR) != MT_OK) return 1;
    for (int p = 0; p < N_POOLS; p++) {
        if (mt_pool_create(pool_threads[p], &pools[p]) != MT_OK) {
            printf("cannot create pool: %s\n0 passed, 1 failed, 0 skipped\n", mt_last_error());
            return 1;
        }
    }
    char name[160];
    uint64_t seed = 1000;

    RUN(test_table);
    RUN(test_check_matmul);
    RUN(test_check_attention);
    RUN(test_check_others);
    RUN(test_chain);
    RUN(test_matmul_batch_consistency);

    // MATMUL: every weight dtype; block-32 types with K not a multiple of 256; with and without bias.
    static const mt_dtype dts[] = {MT_F32,  MT_F16,  MT_BF16, MT_Q8_0, MT_Q4_0, MT_Q4_1,
                                   MT_Q5_0, MT_Q5_1, MT_Q4_K, MT_Q5_K, MT_Q6_K};
    for (size_t di = 0; di < sizeof dts / sizeof dts[0]; di++) {
        mt_dtype t = dts[di];
        int be = mt_dtype_get(t)->block_elems;
        int64_t shapes[3][3];
        if (be == 1) {
            int64_t s[3][3] = {{7, 5, 1}, {64, 17, 3}, {896, 37, 17}};
            memcpy(shapes, s, sizeof s);
        } else if (be == 32) {
            int64_t s[3][3] = {{32, 7, 1}, {96, 33, 3}, {896, 19, 17}};
            memcpy(shapes, s, sizeof s);
        } else {
            int64_t s[3][3] = {{256, 7, 1}, {512, 33, 3}, {768, 19, 17}};
            memcpy(shapes, s, sizeof s);
        }
        for (int si = 0; si < 3; si++)
            for (int bias = 0; bias < 2; bias++) {
                snprintf(name, sizeof name, "matmul %s k=%lld m=%lld n=%lld%s", mt_dtype_name(t),
                         (long long)shapes[si][0], (long long)shapes[si][1], (long long)shapes[si][2],
                         bias ? " +bias" : "");
                RUN_NAMED(name, case_matmul(t, shapes[si][0], shapes[si][1], shapes[si][2], bias, seed++));
            }
    }
    // Vocabulary-sized outputs (the lm head).
    RUN_NAMED("matmul f32 k=64 m=32000 n=3", case_matmul(MT_F32, 64, 32000, 3, 0, seed++));
    RUN_NAMED("matmul q8_0 k=64 m=32000 n=3", case_matmul(MT_Q8_0, 64, 32000, 3, 0, seed++));
    RUN_NAMED("matmul q6_k k=256 m=32000 n=2", case_matmul(MT_Q6_K, 256, 32000, 2, 1, seed++));

    for (size_t di = 0; di < sizeof dts / sizeof dts[0]; di++) {
        mt_dtype t = dts[di];
        int64_t d = mt_dtype_get(t)->block_elems == 256 ? 256 : mt_dtype_get(t)->block_elems == 32 ? 64 : 7;
        snprintf(name, sizeof name, "embedding %s d=%lld vocab=50 n=17", mt_dtype_name(t), (long long)d);
        RUN_NAMED(name, case_embedding(t, d, 50, 17, seed++));
    }

    static const int64_t ds[] = {7, 64, 896}, ns[] = {1, 3, 17};
    for (int i = 0; i < 3; i++)
        for (int j = 0; j < 3; j++) {
            snprintf(name, sizeof name, "rmsnorm d=%lld n=%lld", (long long)ds[i], (long long)ns[j]);
            RUN_NAMED(name, case_rmsnorm(ds[i], ns[j], seed++));
            snprintf(name, sizeof name, "swiglu f=%lld n=%lld", (long long)ds[i], (long long)ns[j]);
            RUN_NAMED(name, case_swiglu(ds[i], ns[j], seed++));
            snprintf(name, sizeof name, "softmax d=%lld n=%lld", (long long)ds[i], (long long)ns[j]);
            RUN_NAMED(name, case_softmax(ds[i], ns[j], 1.0f, seed++));
            for (int alias = 0; alias < 3; alias++) {
                snprintf(name, sizeof name, "add d=%lld n=%lld%s", (long long)ds[i], (long long)ns[j],
                         alias == 1   ? " into a"
                         : alias == 2 ? " into b"
                                      : "");
                RUN_NAMED(name, case_add(ds[i], ns[j], alias, seed++));
            }
        }
    // Scores far beyond float exp range: only a max-subtracted softmax survives.
    RUN_NAMED("softmax d=896 n=3 x*200", case_softmax(896, 3, 200.0f, seed++));

    static const int64_t hds[] = {64, 16};
    for (int i = 0; i < 2; i++)
        for (int j = 0; j < 3; j++)
            for (int ip = 0; ip < 2; ip++) {
                snprintf(name, sizeof name, "rope hd=%lld heads=14 n=%lld base=1e6%s", (long long)hds[i],
                         (long long)ns[j], ip ? " in place" : "");
                RUN_NAMED(name, case_rope(hds[i], 14, ns[j], 1e6f, ip, seed++));
            }
    RUN_NAMED("rope hd=128 heads=2 n=3 base=1e4", case_rope(128, 2, 3, 1e4f, 0, seed++));
    RUN_NAMED("rope hd=256 heads=3 n=5 base=1e4 in place", case_rope(256, 3, 5, 1e4f, 1, seed++));

    RUN_NAMED("kv_write hd=64 n_kv=2 ctx=40 n_seq=3 n=1", case_kv_write(64, 2, 40, 3, 1, seed++));
    RUN_NAMED("kv_write hd=64 n_kv=2 ctx=40 n_seq=3 n=17", case_kv_write(64, 2, 40, 3, 17, seed++));
    RUN_NAMED("kv_write hd=16 n_kv=4 ctx=9 n_seq=1 n=9", case_kv_write(16, 4, 9, 1, 9, seed++));

    // ATTENTION: GQA 14/2, 4/4, 8/2; head_dim 64 and 16; several seqs per batch; context longer than the
    // kernel's score block; a custom scale; large scores.
    static const int64_t gqa[][3] = {{14, 2, 64}, {4, 4, 16}, {8, 2, 64}, {8, 2, 16}};
    for (int g = 0; g < 4; g++)
        for (int j = 0; j < 3; j++) {
            snprintf(name, sizeof name, "attention heads=%lld/%lld hd=%lld ctx=40 seqs=3 n=%lld",
                     (long long)gqa[g][0], (long long)gqa[g][1], (long long)gqa[g][2], (long long)ns[j]);
            RUN_NAMED(name,
                      case_attention(gqa[g][0], gqa[g][1], gqa[g][2], 40, 3, ns[j], 0, 1.0f, 1e-10, seed++));
        }
    RUN_NAMED("attention heads=14/2 hd=64 ctx=300 seqs=2 n=5",
              case_attention(14, 2, 64, 300, 2, 5, 0, 1.0f, 1e-10, seed++));
    RUN_NAMED("attention heads=4/4 hd=16 ctx=200 seqs=1 n=3 scale=0.3",
              case_attention(4, 4, 16, 200, 1, 3, 0.3f, 1.0f, 1e-10, seed++));
    RUN_NAMED("attention heads=8/2 hd=64 ctx=150 seqs=2 n=4 q*40 (scores ~ +-300)",
              case_attention(8, 2, 64, 150, 2, 4, 0, 40.0f, 1e-8, seed++));

    for (int p = 0; p < N_POOLS; p++) mt_pool_free(pools[p]);
    return th_summary();
}
