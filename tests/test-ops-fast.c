// Fast CPU kernels of rmsnorm, rope, attention, swiglu, add and softmax against the scalar references, on
// random inputs (fixed seeds) at odd sizes, 1-3 threads, with guard floats around every buffer, at every
// instruction-set level this CPU runs. At the scalar level the op table must pick the references. Also the
// row kernels of the graph path's fused nodes and mt_pool_barrier, which that path's region uses.
#include <math.h>
#include <stdint.h>
#include <stdlib.h>
#include <time.h>

#include "backend/cpu/cpu-features.h"
#include "backend/cpu/ops-fast.h"
#include "backend/cpu/ops.h"
#include "core/threadpool.h"
#include "exec/op.h"
#include "harness.h"

enum { GUARD = 16, MAX_TOK = 64 };
static const float guard_val = -12345.5f;

static uint64_t rng;
static float rndf(void) { // uniform in [-1, 1)
    rng ^= rng << 13;
    rng ^= rng >> 7;
    rng ^= rng << 17;
    return (float)((rng >> 40) & 0xffffff) / (float)(1 << 23) - 1.0f;
}

// One case's buffers: up to four tensors, each with guard floats on both sides.
typedef struct {
    float *mem[4];
    size_t len[4];
    mt_tensor t[4];
    mt_node node;
    int32_t pos[MAX_TOK], seq[MAX_TOK];
} bufs;

static float *buf_new(bufs *b, int i, int ndim, const int64_t *ne, float amp) {
    size_t n = 1;
    for (int d = 0; d < ndim; d++) n *= (size_t)ne[d];
    b->len[i] = n;
    b->mem[i] = malloc((n + 2 * GUARD) * sizeof(float));
    MT_ASSERT(b->mem[i]);
    for (size_t j = 0; j < n + 2 * GUARD; j++) b->mem[i][j] = guard_val;
    float *data = b->mem[i] + GUARD;
    for (size_t j = 0; j < n; j++) data[j] = amp * rndf();
    MT_ASSERT(mt_tensor_init(&b->t[i], MT_F32, ndim, ne, data) == MT_OK);
    return data;
}

static void bufs_free(bufs *b) {
    for (int i = 0; i < 4; i++) free(b->mem[i]);
}

static bool guards_ok(const bufs *b) {
    for (int i = 0; i < 4; i++)
        if (b->mem[i])
            for (int j = 0; j < GUARD; j++)
                if (b->mem[i][j] != guard_val || b->mem[i][GUARD + b->len[i] + (size_t)j] != guard_val)
                    return false;
    return true;
}

typedef struct {
    const mt_node *n;
    mt_op_impl f;
} job;

static void run_job(void *ctx, int ith, int nth) {
    const job *j = ctx;
    j->f(j->n, ith, nth);
}

// Builds a case into b from `seed`; returns the index of the output buffer.
typedef int (*setup_fn)(bufs *b, uint64_t seed, const int *dims);

// Runs the reference (1 thread) and the op table's choice (on `pool`) on two copies of the case and
// compares the outputs: max |fast - ref| / max |ref| <= tol.
static void compare(const char *what, setup_fn setup, const int *dims, mt_pool *pool, double tol) {
    bufs r = {0}, f = {0};
    const uint64_t seed = 0x9e3779b97f4a7c15ull ^ (uint64_t)dims[0] * 1000003u ^ (uint64_t)dims[1] * 7919u;
    const int out = setup(&r, seed, dims);
    setup(&f, seed, dims);
    CHECK(mt_op_check(&r.node) == MT_OK, "%s: node check: %s", what, mt_last_error());
    const mt_op_def *d = mt_op_get(r.node.op);
    const mt_op_impl chosen = mt_op_cpu_impl(&f.node);
    if (mt_cpu_isa() == MT_ISA_SCALAR)
        CHECK(chosen == d->cpu_ref, "%s: scalar level must run the reference", what);
    else
        CHECK(chosen == d->cpu_fast, "%s: level %s must run the fast kernel", what,
              mt_cpu_isa_name(mt_cpu_isa()));
    job jr = {&r.node, d->cpu_ref}, jf = {&f.node, chosen};
    mt_pool_run(NULL, run_job, &jr);
    mt_pool_run(pool, run_job, &jf);
    CHECK(guards_ok(&f), "%s: guard floats overwritten", what);
    double err = 0, mag = 0;
    const float *ro = r.t[out].data, *fo = f.t[out].data;
    for (size_t i = 0; i < r.len[out]; i++) {
        const double e = fabs((double)fo[i] - (double)ro[i]);
        err = e > err || isnan(e) ? e : err;
        mag = fabs(ro[i]) > mag ? fabs(ro[i]) : mag;
    }
    CHECK(mag > 0, "%s: reference output is all zero", what);
    CHECK(err <= tol * mag, "%s: max error %.3g vs max |ref| %.3g (tol %.1g)", what, err, mag, tol);
    bufs_free(&r);
    bufs_free(&f);
}

// dims: d, rows
static int setup_rmsnorm(bufs *b, uint64_t seed, const int *dims) {
    rng = seed;
    buf_new(b, 0, 2, (int64_t[]){dims[0], dims[1]}, 3.0f);
    buf_new(b, 1, 1, (int64_t[]){dims[0]}, 1.0f);
    buf_new(b, 2, 2, (int64_t[]){dims[0], dims[1]}, 1.0f);
    b->node = (mt_node){.op = MT_OP_RMSNORM, .src = {&b->t[0], &b->t[1]}, .dst = &b->t[2], .p.eps = 1e-6f};
    return 2;
}

// dims: head_dim, heads, tokens, in place
static int setup_rope(bufs *b, uint64_t seed, const int *dims) {
    rng = seed;
    const int64_t ne[3] = {dims[0], dims[1], dims[2]};
    buf_new(b, 0, 3, ne, 2.0f);
    if (!dims[3]) buf_new(b, 1, 3, ne, 1.0f);
    for (int t = 0; t < dims[2]; t++) b->pos[t] = (int32_t)((rndf() + 1.0f) * 16000.0f);
    b->pos[0] = 0;
    mt_tensor *dst = dims[3] ? &b->t[0] : &b->t[1];
    b->node =
        (mt_node){.op = MT_OP_ROPE, .src = {&b->t[0]}, .dst = dst, .p = {.freq_base = 1e6f, .pos = b->pos}};
    return dims[3] ? 0 : 1;
}

// dims: head_dim, n_head, n_kv, tokens, ctx, n_seq; q scaled by dims[6] (sharper softmax)
static int setup_attention(bufs *b, uint64_t seed, const int *dims) {
    rng = seed;
    const int64_t hd = dims[0], H = dims[1], KV = dims[2], n = dims[3], ctx = dims[4], ns = dims[5];
    buf_new(b, 0, 3, (int64_t[]){hd, H, n}, (float)dims[6]);
    buf_new(b, 1, 4, (int64_t[]){hd, KV, ctx, ns}, 1.0f);
    buf_new(b, 2, 4, (int64_t[]){hd, KV, ctx, ns}, 1.0f);
    buf_new(b, 3, 3, (int64_t[]){hd, H, n}, 1.0f);
    for (int t = 0; t < n; t++) {
        b->seq[t] = (int32_t)(t % ns);
        b->pos[t] = t == 0 ? (int32_t)ctx - 1 : (int32_t)((rndf() + 1.0f) * 0.5f * (float)(ctx - 1));
    }
    if (n > 1) b->pos[1] = 0; // a one-position row
    b->node = (mt_node){.op = MT_OP_ATTENTION,
                        .src = {&b->t[0], &b->t[1], &b->t[2]},
                        .dst = &b->t[3],
                        .p = {.pos = b->pos, .seq = b->seq}};
    return 3;
}

// dims: f, rows (gate values up to +-30 to reach the flat ends of silu)
static int setup_swiglu(bufs *b, uint64_t seed, const int *dims) {
    rng = seed;
    buf_new(b, 0, 2, (int64_t[]){dims[0], dims[1]}, 30.0f);
    buf_new(b, 1, 2, (int64_t[]){dims[0], dims[1]}, 2.0f);
    buf_new(b, 2, 2, (int64_t[]){dims[0], dims[1]}, 1.0f);
    b->node = (mt_node){.op = MT_OP_SWIGLU, .src = {&b->t[0], &b->t[1]}, .dst = &b->t[2]};
    return 2;
}

// dims: d, rows, in place
static int setup_add(bufs *b, uint64_t seed, const int *dims) {
    rng = seed;
    buf_new(b, 0, 2, (int64_t[]){dims[0], dims[1]}, 5.0f);
    buf_new(b, 1, 2, (int64_t[]){dims[0], dims[1]}, 5.0f);
    if (!dims[2]) buf_new(b, 2, 2, (int64_t[]){dims[0], dims[1]}, 1.0f);
    mt_tensor *dst = dims[2] ? &b->t[0] : &b->t[2];
    b->node = (mt_node){.op = MT_OP_ADD, .src = {&b->t[0], &b->t[1]}, .dst = dst};
    return dims[2] ? 0 : 2;
}

// dims: d, rows (logits up to +-40)
static int setup_softmax(bufs *b, uint64_t seed, const int *dims) {
    rng = seed;
    buf_new(b, 0, 2, (int64_t[]){dims[0], dims[1]}, 40.0f);
    buf_new(b, 1, 2, (int64_t[]){dims[0], dims[1]}, 1.0f);
    b->node = (mt_node){.op = MT_OP_SOFTMAX, .src = {&b->t[0]}, .dst = &b->t[1]};
    return 1;
}

static void test_level(mt_pool *const pools[3]) {
    char name[96];
    for (int p = 0; p < 3; p++) {
        mt_pool *pool = pools[p];
        const int nth = mt_pool_size(pool);
        static const int rms[][2] = {{896, 1}, {896, 5}, {37, 3}, {1, 2}, {8, 1}};
        for (size_t i = 0; i < sizeof rms / sizeof rms[0]; i++) {
            snprintf(name, sizeof name, "rmsnorm d=%d rows=%d t=%d", rms[i][0], rms[i][1], nth);
            compare(name, setup_rmsnorm, rms[i], pool, 1e-5);
        }
        static const int rope[][4] = {
            {64, 14, 1, 1}, {64, 2, 7, 0}, {128, 3, 4, 1}, {6, 5, 3, 0}, {130, 2, 2, 1}};
        for (size_t i = 0; i < sizeof rope / sizeof rope[0]; i++) {
            snprintf(name, sizeof name, "rope hd=%d heads=%d n=%d%s t=%d", rope[i][0], rope[i][1], rope[i][2],
                     rope[i][3] ? " in place" : "", nth);
            compare(name, setup_rope, rope[i], pool, 1e-5);
        }
        static const int att[][7] = {
            {64, 14, 2, 1, 150, 1, 1}, // decode, Qwen2.5-0.5B heads
            {64, 14, 2, 9, 150, 2, 1}, // prefill-like, two sequences
            {128, 4, 4, 5, 70, 1, 1},  // no grouping, head_dim 128
            {64, 6, 3, 3, 200, 1, 40}, // sharp scores: the running max changes between chunks
            {24, 3, 1, 4, 67, 3, 1},   // run-time head_dim, odd context
            {8, 2, 1, 2, 9, 1, 1},     // smallest head_dim
            {64, 2, 1, 1, 1, 1, 1},    // one cached position
        };
        for (size_t i = 0; i < sizeof att / sizeof att[0]; i++) {
            snprintf(name, sizeof name, "attention hd=%d heads=%d/%d n=%d ctx=%d seqs=%d q*%d t=%d",
                     att[i][0], att[i][1], att[i][2], att[i][3], att[i][4], att[i][5], att[i][6], nth);
            compare(name, setup_attention, att[i], pool, 2e-5);
        }
        static const int sw[][2] = {{4864, 1}, {4864, 3}, {37, 2}, {3, 1}};
        for (size_t i = 0; i < sizeof sw / sizeof sw[0]; i++) {
            snprintf(name, sizeof name, "swiglu f=%d rows=%d t=%d", sw[i][0], sw[i][1], nth);
            compare(name, setup_swiglu, sw[i], pool, 1e-5);
        }
        static const int add[][3] = {{896, 1, 1}, {896, 4, 0}, {13, 3, 1}};
        for (size_t i = 0; i < sizeof add / sizeof add[0]; i++) {
            snprintf(name, sizeof name, "add d=%d rows=%d%s t=%d", add[i][0], add[i][1],
                     add[i][2] ? " in place" : "", nth);
            compare(name, setup_add, add[i], pool, 1e-7);
        }
        static const int sm[][2] = {{151936, 1}, {37, 3}, {1, 2}, {64, 5}};
        for (size_t i = 0; i < sizeof sm / sizeof sm[0]; i++) {
            snprintf(name, sizeof name, "softmax d=%d rows=%d t=%d", sm[i][0], sm[i][1], nth);
            compare(name, setup_softmax, sm[i], pool, 1e-5);
        }
    }
}

// Nodes the fast kernels do not take fall back to the reference at every level.
static void test_unsupported(void) {
    bufs b = {0};
    setup_attention(&b, 1, (const int[]){6, 2, 1, 1, 4, 1, 1});
    CHECK(!mt_cpu_ops_fast_supports(&b.node), "attention with head_dim 6 has no fast kernel");
    CHECK(mt_op_cpu_impl(&b.node) == mt_op_get(MT_OP_ATTENTION)->cpu_ref, "head_dim 6 runs the reference");
    bufs_free(&b);
}

// The row kernels of the graph path's fused nodes (fused.c) against double-precision references, at odd
// lengths and unaligned starts, with guard floats after each row.
static void test_rows(void) {
    static const int lens[] = {896, 37, 3, 1, 4864};
    for (size_t c = 0; c < sizeof lens / sizeof lens[0]; c++) {
        const int d = lens[c], off = (int)c % 3; // unaligned starts
        float *x = malloc((size_t)(d + off + GUARD) * sizeof(float)), *x0 = malloc((size_t)d * sizeof(float));
        float *a = malloc((size_t)(d + off) * sizeof(float)), *w = malloc((size_t)d * sizeof(float));
        float *y = malloc((size_t)(d + off + GUARD) * sizeof(float));
        MT_ASSERT(x && x0 && a && w && y);
        rng = 0x9e3779b97f4a7c15ull + (uint64_t)c;
        for (int i = 0; i < d; i++) {
            x0[i] = x[off + i] = 3.0f * rndf();
            a[off + i] = rndf();
            w[i] = 1.0f + rndf();
        }
        for (int g = 0; g < GUARD; g++) x[off + d + g] = y[off + d + g] = guard_val;
        // x += a, y = rmsnorm(x) * w
        mt_cpu_fast_add_rmsnorm_row(x + off, a + off, w, 1e-6f, y + off, d);
        double ss = 0, err = 0, mag = 0;
        for (int i = 0; i < d; i++) ss += ((double)x0[i] + a[off + i]) * ((double)x0[i] + a[off + i]);
        const double inv = 1.0 / sqrt(ss / d + 1e-6);
        for (int i = 0; i < d; i++) {
            const double xs = (double)x0[i] + a[off + i], ref = xs * inv * w[i];
            CHECK(fabs(x[off + i] - xs) <= 1e-6 * (1 + fabs(xs)), "add_rmsnorm d=%d: x[%d] = %g, want %g", d,
                  i, (double)x[off + i], xs);
            err = fmax(err, fabs(y[off + i] - ref));
            mag = fmax(mag, fabs(ref));
        }
        CHECK(mag > 0 && err <= 1e-5 * mag, "add_rmsnorm d=%d: max error %.3g vs max |ref| %.3g", d, err,
              mag);
        // swiglu over a span that starts off floats into the row
        mt_cpu_fast_swiglu_span(x + off, a + off, y + off, d);
        err = mag = 0;
        for (int i = 0; i < d; i++) {
            const double g = x[off + i], ref = g / (1 + exp(-g)) * a[off + i];
            err = fmax(err, fabs(y[off + i] - ref));
            mag = fmax(mag, fabs(ref));
        }
        CHECK(mag > 0 && err <= 1e-5 * mag, "swiglu span n=%d: max error %.3g vs max |ref| %.3g", d, err,
              mag);
        for (int g = 0; g < GUARD; g++)
            CHECK(x[off + d + g] == guard_val && y[off + d + g] == guard_val,
                  "row kernels d=%d wrote past the row", d);
        free(x), free(x0), free(a), free(w), free(y);
    }
}

// mt_pool_barrier (used inside one parallel region): no thread passes step s before all reached it, with
// uneven work between barriers so both the spin and the sleep paths run.
typedef struct {
    mt_pool *p;
    _Atomic long steps[3 * 16];
    _Atomic int bad;
} bar_job;

static void bar_run(void *ctx, int ith, int nth) {
    bar_job *j = ctx;
    for (long s = 1; s <= 300; s++) {
        if (ith == (int)(s % nth) && s % 50 == 0) { // now and then one thread is late by ~1 ms
            struct timespec ts = {0, 1000000};
            nanosleep(&ts, NULL);
        }
        j->steps[16 * ith] = s;
        mt_pool_barrier(j->p, nth);
        for (int t = 0; t < nth; t++)
            if (j->steps[16 * t] < s) j->bad = 1;
        mt_pool_barrier(j->p, nth);
    }
}

static void test_barrier(mt_pool *const pools[3]) {
    for (int p = 1; p < 3; p++) {
        static bar_job j;
        j.p = pools[p];
        j.bad = 0;
        for (int t = 0; t < 3 * 16; t++) j.steps[t] = 0;
        mt_pool_run(pools[p], bar_run, &j);
        CHECK(!j.bad, "%d threads: a thread passed a barrier early", p + 1);
        for (int t = 0; t <= p; t++)
            CHECK(j.steps[16 * t] == 300, "%d threads: thread %d stopped at step %ld", p + 1, t,
                  (long)j.steps[16 * t]);
    }
}

int main(void) {
    mt_pool *pools[3] = {NULL};
    for (int p = 1; p < 3; p++) MT_ASSERT(mt_pool_create(p + 1, &pools[p]) == MT_OK);
    const mt_cpu_isa_level best = mt_cpu_isa_best();
    for (int l = MT_ISA_SCALAR; l <= MT_ISA_AVX512; l++) {
        char name[64];
        snprintf(name, sizeof name, "isa %s", mt_cpu_isa_name((mt_cpu_isa_level)l));
        if (mt_cpu_isa_force((mt_cpu_isa_level)l) != MT_OK) {
            SKIP(name, "not supported by this CPU");
            continue;
        }
        RUN_NAMED(name, test_level(pools));
        RUN_NAMED(name, test_unsupported());
    }
    MT_ASSERT(mt_cpu_isa_force(best) == MT_OK);
    if (mt_cpu_fast_rows_ok())
        RUN_NAMED("fused-node row kernels", test_rows());
    else
        SKIP("fused-node row kernels", "no AVX2 at the best level");
    RUN_NAMED("pool barrier", test_barrier(pools));
    for (int p = 1; p < 3; p++) mt_pool_free(pools[p]);
    return th_summary();
}
