// SDPA on the graph path vs the legacy path, on the CPU: the seed's shape (batch 4, seq 256, head dim 16,
// causal), Qwen2.5-0.5B decode shapes (14 query heads over 2 KV heads, head dim 64, KV length 128..4096),
// and SDPA + output projection fused in one executable vs run node by node.
//
//   make && cc -O2 -march=native -std=c11 -D_GNU_SOURCE -Iinclude -Isrc bench/bench-sdpa.c
//       build/libmetallic.a -lm -pthread -lcjson -o build/bench-sdpa && build/bench-sdpa [threads]
//   (add the Makefile's LDLIBS when the library was built with CUDA)
//
// Each row is the median of 21 timed runs after 3 warm-ups, in microseconds per call.
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "core/metrics.h"
#include "exec/eager.h"
#include "exec/exec.h"
#include "exec/graph.h"
#include "exec/registry.h"

#define REPS 21

static uint64_t rng = 42;
static void fill(float *p, size_t n) {
    for (size_t i = 0; i < n; i++) {
        rng = rng * 6364136223846793005ull + 1442695040888963407ull;
        p[i] = (float)((rng >> 40) / (double)(1 << 24)) - 0.5f;
    }
}

static int cmp(const void *a, const void *b) {
    double x = *(const double *)a, y = *(const double *)b;
    return x < y ? -1 : x > y;
}

typedef void (*run_fn)(void *ctx);

static double median_us(run_fn f, void *ctx) {
    double t[REPS];
    for (int i = 0; i < 3; i++) f(ctx);
    for (int i = 0; i < REPS; i++) {
        uint64_t t0 = mt_now_us();
        f(ctx);
        t[i] = (double)(mt_now_us() - t0);
    }
    qsort(t, REPS, sizeof t[0], cmp);
    return t[REPS / 2];
}

static mt_tensor t4(float *d, int64_t a, int64_t b, int64_t c, int64_t e) {
    mt_tensor t;
    int64_t ne[4] = {a, b, c, e};
    MT_ASSERT(mt_tensor_init(&t, MT_F32, 4, ne, d) == MT_OK);
    return t;
}

typedef struct sdpa_case {
    mt_pool *pool;
    mt_node legacy;
    mt_graph_exec *exe;
    mt_exec *disp;
    mt_node pair[2];
    const mt_tensor *out;
} sdpa_case;

static void run_legacy(void *c_) {
    sdpa_case *c = c_;
    mt_eager_run_unchecked(&c->legacy, 1, c->pool);
}
static void run_graph(void *c_) {
    sdpa_case *c = c_;
    MT_ASSERT(mt_graph_exec_run(c->exe, c->pool) == MT_OK);
}
static void run_pair(void *c_) {
    sdpa_case *c = c_;
    mt_exec_step st = {c->pair, 2, 1, &c->out, 1, "sdpa+o_proj"};
    MT_ASSERT(mt_exec_run(c->disp, &st) == MT_OK);
}

// B sequences of S query rows each over S keys (causal), H query heads over KV heads.
static void bench_sdpa(mt_pool *pool, const char *name, int B, int S, int L, int H, int KV, int hd) {
    size_t nq = (size_t)hd * H * S * B, nk = (size_t)hd * KV * L * B;
    float *q = malloc(nq * 4), *k = malloc(nk * 4), *v = malloc(nk * 4), *o = malloc(nq * 4),
          *o2 = malloc(nq * 4);
    int32_t *pos = malloc(sizeof(int32_t) * (size_t)S * B), *seq = malloc(sizeof(int32_t) * (size_t)S * B);
    fill(q, nq), fill(k, nk), fill(v, nk);
    for (int b = 0; b < B; b++)
        for (int i = 0; i < S; i++) pos[b * S + i] = L - S + i, seq[b * S + i] = b;
    mt_tensor tq = t4(q, hd, H, S, B), tk = t4(k, hd, KV, L, B), tv = t4(v, hd, KV, L, B),
              to = t4(o, hd, H, S, B);
    mt_tensor lq = t4(q, hd, H, (int64_t)S * B, 1), lo = t4(o2, hd, H, (int64_t)S * B, 1);
    sdpa_case c = {.pool = pool};
    c.legacy =
        (mt_node){.op = MT_OP_ATTENTION, .src = {&lq, &tk, &tv}, .dst = &lo, .p = {.pos = pos, .seq = seq}};
    MT_ASSERT(mt_op_check(&c.legacy) == MT_OK);
    mt_graph *g;
    mt_gval a, b, cc, out;
    MT_ASSERT(mt_graph_create(&g) == MT_OK);
    MT_ASSERT(mt_graph_input(g, "q", &tq, &a) == MT_OK && mt_graph_input(g, "k", &tk, &b) == MT_OK);
    MT_ASSERT(mt_graph_input(g, "v", &tv, &cc) == MT_OK);
    MT_ASSERT(mt_graph_sdpa(g, a, b, cc, MT_GVAL_NONE, true, L, 0, &out) == MT_OK);
    MT_ASSERT(mt_graph_output(g, out, "out", &to) == MT_OK);
    MT_ASSERT(mt_graph_compile(g, pool, &c.exe) == MT_OK);
    double tl = median_us(run_legacy, &c), tg = median_us(run_graph, &c);
    float err = 0;
    for (size_t i = 0; i < nq; i++) err = fmaxf(err, fabsf(o[i] - o2[i]));
    printf("| %-36s | %10.1f | %10.1f | %5.2fx | %.1e |\n", name, tl, tg, tl / tg, (double)err);
    mt_graph_exec_free(c.exe);
    mt_graph_free(g);
    free(q), free(k), free(v), free(o), free(o2), free(pos), free(seq);
}

// Decode: attention over L cached positions then the output projection W_o [H*hd, d] (F32), as two
// legacy nodes vs one executable (one parallel region, no wake-up between them).
static void bench_pair(mt_pool *pool, int L) {
    const int H = 14, KV = 2, hd = 64, d = 896;
    float *q = malloc((size_t)hd * H * 4), *k = malloc((size_t)hd * KV * L * 4),
          *v = malloc((size_t)hd * KV * L * 4), *att = malloc((size_t)hd * H * 4),
          *w = malloc((size_t)hd * H * d * 4), *y = malloc((size_t)d * 4);
    fill(q, (size_t)hd * H), fill(k, (size_t)hd * KV * L), fill(v, (size_t)hd * KV * L),
        fill(w, (size_t)hd * H * d);
    int32_t pos = L - 1, seq = 0;
    mt_tensor tq = t4(q, hd, H, 1, 1), tk = t4(k, hd, KV, L, 1), tv = t4(v, hd, KV, L, 1),
              ta = t4(att, hd, H, 1, 1);
    mt_tensor ta2, tw, ty;
    int64_t e2[2] = {hd * H, 1}, ew[2] = {hd * H, d}, ey[2] = {d, 1};
    mt_tensor_init(&ta2, MT_F32, 2, e2, att), mt_tensor_init(&tw, MT_F32, 2, ew, w),
        mt_tensor_init(&ty, MT_F32, 2, ey, y);
    sdpa_case c = {.pool = pool, .out = &ty};
    c.pair[0] =
        (mt_node){.op = MT_OP_ATTENTION, .src = {&tq, &tk, &tv}, .dst = &ta, .p = {.pos = &pos, .seq = &seq}};
    c.pair[1] = (mt_node){.op = MT_OP_MATMUL, .src = {&tw, &ta2}, .dst = &ty};
    double t[2];
    for (int p = 0; p < 2; p++) {
        mt_registry r;
        mt_registry_opts ro = {.backend = p ? "graph" : "legacy", .quiet = true};
        MT_ASSERT(mt_registry_resolve(&r, &ro) == MT_OK);
        mt_exec_opts eo = {.pool = pool, .registry = &r};
        MT_ASSERT(mt_exec_create(&eo, &c.disp) == MT_OK);
        t[p] = median_us(run_pair, &c);
        mt_exec_free(c.disp);
    }
    char name[64];
    snprintf(name, sizeof name, "sdpa+o_proj decode L=%d", L);
    printf("| %-36s | %10.1f | %10.1f | %5.2fx | |\n", name, t[0], t[1], t[0] / t[1]);
    free(q), free(k), free(v), free(att), free(w), free(y);
}

int main(int argc, char **argv) {
    int nt = argc > 1 ? atoi(argv[1]) : 2;
    mt_pool *pool;
    MT_ASSERT(mt_pool_create(nt, &pool) == MT_OK);
    printf("threads: %d\n\n", mt_pool_size(pool));
    printf("| %-36s | %10s | %10s | %6s | %s |\n", "case", "legacy us", "graph us", "speedup", "max diff");
    printf("|--------------------------------------|------------|------------|--------|---------|\n");
    bench_sdpa(pool, "seed: B4 S256 hd16 causal (1 head)", 4, 256, 256, 1, 1, 16);
    bench_sdpa(pool, "seed: B4 S256 hd16 causal, 14/2 hd", 4, 256, 256, 14, 2, 16);
    const int Ls[6] = {128, 256, 512, 1024, 2048, 4096};
    char name[64];
    for (int i = 0; i < 6; i++) {
        snprintf(name, sizeof name, "qwen0.5b decode 14q/2kv hd64 L=%d", Ls[i]);
        bench_sdpa(pool, name, 1, 1, Ls[i], 14, 2, 64);
    }
    bench_sdpa(pool, "qwen0.5b prefill 14q/2kv hd64 S=256", 1, 256, 256, 14, 2, 64);
    for (int i = 0; i < 6; i += 2) bench_pair(pool, Ls[i]);
    bench_pair(pool, 4096);
    mt_pool_free(pool);
    return 0;
}
