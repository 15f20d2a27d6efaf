// Device sampling (src/backend/cuda/sample.cu) against the CPU sampler (src/model/sampler.c): the same
// parameters and seed on both sides, random logits rows (ties, NaN, -inf, one dominant logit, the
// 151,936-entry vocabulary), every combination of temperature, top-k, top-p, min-p and repetition
// penalty, many draws each; the ids must be equal and both random streams must stay in step. The stream
// helpers the device path uses are checked on the CPU (no GPU needed). `--bench` times one sampling call
// on the device against argmax and against downloading the row for the CPU sampler.
#include <math.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "backend/device.h"
#include "core/metrics.h"
#include "harness.h"
#include "model/sampler.h"

static uint64_t rng = 0x5eed5a3b1e;
static double rnd01(void) { // splitmix64
    uint64_t z = (rng += 0x9e3779b97f4a7c15ull);
    z = (z ^ (z >> 30)) * 0xbf58476d1ce4e5b9ull;
    z = (z ^ (z >> 27)) * 0x94d049bb133111ebull;
    return (double)((z ^ (z >> 31)) >> 11) * 0x1.0p-53;
}

enum row_kind { ROW_NORMAL, ROW_TIES, ROW_NONFINITE, ROW_DOMINANT, ROW_ALL_NEG_INF, ROW_ALL_NAN, ROW_KINDS };
static const char *row_name[ROW_KINDS] = {"normal", "ties", "nan/-inf", "dominant", "all -inf", "all nan"};

static void fill_row(float *x, int n, int kind) {
    for (int i = 0; i < n; i++) {
        double g = sqrt(-2.0 * log(rnd01() + 1e-300)) * cos(6.283185307179586 * rnd01()); // N(0, 1)
        float v = (float)(3.0 * g);
        switch (kind) {
        case ROW_TIES: // few distinct values: many equal logits, ordered by id on both sides
            v = roundf(v) * 0.5f;
            break;
        case ROW_NONFINITE: {
            double r = rnd01();
            if (r < 0.05)
                v = NAN;
            else if (r < 0.10)
                v = -INFINITY;
            break;
        }
        case ROW_DOMINANT:
            if (i == n / 3) v = 40.0f;
            break;
        case ROW_ALL_NEG_INF:
            v = -INFINITY;
            break;
        case ROW_ALL_NAN:
            v = NAN;
            break;
        }
        x[i] = v;
    }
}

// CPU-side: peek does not consume, consume advances exactly one draw, the penalty window is the tail.
static void test_stream_helpers(void) {
    mt_sampler_params p = mt_sampler_default_params();
    p.temperature = 0.9f, p.top_k = 0, p.top_p = 1.0f, p.min_p = 0.0f, p.repeat_penalty = 1.2f;
    p.repeat_last_n = 4, p.seed = 77;
    mt_sampler *a, *b;
    MT_ASSERT(mt_sampler_create(&p, 64, &a) == MT_OK && mt_sampler_create(&p, 64, &b) == MT_OK);
    float row[64];
    fill_row(row, 64, ROW_NORMAL);
    for (int it = 0; it < 50; it++) {
        const double u0 = mt_sampler_peek_uniform(b), u1 = mt_sampler_peek_uniform(b);
        CHECK(u0 == u1 && u0 >= 0.0 && u0 < 1.0, "peek %d: %.17g then %.17g", it, u0, u1);
        (void)mt_sampler_sample(a, row, NULL, 0); // one draw on a
        mt_sampler_consume_uniform(b);            // one draw on b
        CHECK(mt_sampler_peek_uniform(a) == mt_sampler_peek_uniform(b), "streams apart after %d draws",
              it + 1);
    }
    const int32_t hist[6] = {1, 2, 3, 4, 5, 6};
    const int32_t *win = NULL;
    CHECK(mt_sampler_penalty_window(a, hist, 6, &win) == 4 && win == hist + 2, "window: last 4 of 6");
    CHECK(mt_sampler_penalty_window(a, hist, 3, &win) == 3 && win == hist, "window: all 3");
    CHECK(mt_sampler_penalty_window(a, NULL, 0, &win) == 0 && !win, "window: no history");
    p.repeat_penalty = 1.0f;
    mt_sampler *c;
    MT_ASSERT(mt_sampler_create(&p, 64, &c) == MT_OK);
    CHECK(mt_sampler_penalty_window(c, hist, 6, &win) == 0, "window: penalty off");
    mt_sampler_free(a), mt_sampler_free(b), mt_sampler_free(c);
}

typedef struct {
    float temperature, top_p, min_p, penalty;
    int top_k;
} combo;

static int combos(int V, combo *out) {
    static const float ts[] = {0.3f, 0.8f, 1.5f}, ps[] = {1.0f, 0.9f, 0.5f}, mps[] = {0.0f, 0.05f},
                       pens[] = {1.0f, 1.3f};
    const int ks[] = {0, 1, 40, V + 5};
    int n = 0;
    for (int a = 0; a < 3; a++)
        for (int b = 0; b < 4; b++)
            for (int c = 0; c < 3; c++)
                for (int d = 0; d < 2; d++)
                    for (int e = 0; e < 2; e++) out[n++] = (combo){ts[a], ps[c], mps[d], pens[e], ks[b]};
    return n;
}

// One row on both sides for every combination, `draws` draws each, ids compared.
static void test_row(int V, int kind, int draws) {
    float *row = malloc((size_t)V * sizeof(float));
    void *drow = NULL;
    MT_ASSERT(row && mt_device_alloc(MT_DEVICE_CUDA, (size_t)V * sizeof(float), "logits", &drow) == MT_OK);
    fill_row(row, V, kind);
    MT_ASSERT(mt_device_upload(MT_DEVICE_CUDA, drow, row, (size_t)V * sizeof(float)) == MT_OK);
    // a history with repeats and ids outside the vocabulary (ignored on both sides)
    int32_t hist[80];
    for (int i = 0; i < 80; i++) hist[i] = i % 11 == 0 ? -1 : i % 13 == 0 ? V + 3 : (int32_t)(rnd01() * V);
    combo cs[160];
    const int nc = combos(V, cs);
    int mismatches = 0, failures = 0, checked = 0;
    for (int ci = 0; ci < nc; ci++) {
        mt_sampler_params p = mt_sampler_default_params();
        p.temperature = cs[ci].temperature, p.top_k = cs[ci].top_k, p.top_p = cs[ci].top_p;
        p.min_p = cs[ci].min_p, p.repeat_penalty = cs[ci].penalty, p.repeat_last_n = 64;
        p.seed = 1000 + (uint64_t)ci;
        mt_sampler *h, *d;
        MT_ASSERT(mt_sampler_create(&p, V, &h) == MT_OK && mt_sampler_create(&p, V, &d) == MT_OK);
        for (int k = 0; k < draws; k++) {
            const int nh = 20 + 7 * k % 61; // windows shorter and longer than repeat_last_n
            const int32_t a = mt_sampler_sample(h, row, hist, nh);
            int32_t b = -2;
            if (mt_device_sample(MT_DEVICE_CUDA, drow, V, d, hist, nh, &b) != MT_OK) {
                if (failures++ < 3) printf("    sample failed: %s\n", mt_last_error());
                continue;
            }
            checked++;
            if (a != b && mismatches++ < 5)
                printf("    V=%d %s T=%.2f k=%d p=%.2f minp=%.2f pen=%.1f draw %d: cpu %d, cuda %d\n", V,
                       row_name[kind], p.temperature, p.top_k, p.top_p, p.min_p, p.repeat_penalty, k, a, b);
        }
        CHECK(mt_sampler_peek_uniform(h) == mt_sampler_peek_uniform(d),
              "V=%d %s combo %d: random streams out of step", V, row_name[kind], ci);
        mt_sampler_free(h), mt_sampler_free(d);
    }
    CHECK(failures == 0, "V=%d %s: %d device calls failed", V, row_name[kind], failures);
    CHECK(mismatches == 0, "V=%d %s: %d of %d draws differ", V, row_name[kind], mismatches, checked);
    mt_device_free(MT_DEVICE_CUDA, drow);
    free(row);
}

// A vocabulary larger than the sampler's scratch bound is refused with an error naming it.
static void test_bad_size(void) {
    mt_sampler_params p = mt_sampler_default_params();
    p.temperature = 1.0f;
    const int V = 2000000;
    mt_sampler *s;
    void *drow = NULL;
    MT_ASSERT(mt_sampler_create(&p, V, &s) == MT_OK);
    MT_ASSERT(mt_device_calloc(MT_DEVICE_CUDA, (size_t)V * sizeof(float), "logits", &drow) == MT_OK);
    int32_t tok = -5;
    CHECK(mt_device_sample(MT_DEVICE_CUDA, drow, V, s, NULL, 0, &tok) == MT_ERR_INVALID, "oversized vocab");
    CHECK(strstr(mt_last_error(), "2000000") != NULL, "error names the size: %s", mt_last_error());
    mt_device_free(MT_DEVICE_CUDA, drow);
    mt_sampler_free(s);
}

static double now_ms(void) {
    return (double)mt_now_us() * 1e-3;
}

// Per-call latency of the three ways to turn a device logits row into a token.
static int bench(int reps) {
    const int V = 151936;
    float *row = malloc((size_t)V * sizeof(float));
    void *drow = NULL, *dtok = NULL;
    MT_ASSERT(mt_device_alloc(MT_DEVICE_CUDA, (size_t)V * sizeof(float), "logits", &drow) == MT_OK);
    MT_ASSERT(mt_device_alloc(MT_DEVICE_CUDA, sizeof(int32_t), "token", &dtok) == MT_OK);
    fill_row(row, V, ROW_NORMAL);
    MT_ASSERT(mt_device_upload(MT_DEVICE_CUDA, drow, row, (size_t)V * sizeof(float)) == MT_OK);
    int32_t hist[64];
    for (int i = 0; i < 64; i++) hist[i] = (int32_t)(rnd01() * V);
    printf("device: %s, vocabulary %d, %d calls each\n", mt_device_description(MT_DEVICE_CUDA), V, reps);
    printf("| method | params | us/call |\n|---|---|---:|\n");
    int32_t tok;
    double t0 = now_ms();
    for (int i = 0; i < reps; i++) {
        MT_ASSERT(mt_device_argmax(MT_DEVICE_CUDA, drow, V, 1, dtok) == MT_OK);
        MT_ASSERT(mt_device_download(MT_DEVICE_CUDA, &tok, dtok, sizeof tok) == MT_OK);
    }
    printf("| device argmax | greedy | %.1f |\n", (now_ms() - t0) * 1e3 / reps);
    static const struct {
        const char *name;
        float t, p, minp, pen;
        int k;
    } cfg[] = {{"T=0.8", 0.8f, 1.0f, 0.0f, 1.0f, 0},
               {"T=0.8 top-k 40", 0.8f, 1.0f, 0.0f, 1.0f, 40},
               {"T=0.8 top-p 0.9", 0.8f, 0.9f, 0.0f, 1.0f, 0},
               {"T=0.7 top-k 20 top-p 0.8 rep 1.05 (Qwen2.5 defaults)", 0.7f, 0.8f, 0.0f, 1.05f, 20},
               {"T=0.8 min-p 0.05", 0.8f, 1.0f, 0.05f, 1.0f, 0}};
    for (size_t c = 0; c < sizeof cfg / sizeof cfg[0]; c++) {
        mt_sampler_params p = mt_sampler_default_params();
        p.temperature = cfg[c].t, p.top_k = cfg[c].k, p.top_p = cfg[c].p, p.min_p = cfg[c].minp;
        p.repeat_penalty = cfg[c].pen, p.repeat_last_n = 64;
        mt_sampler *s;
        MT_ASSERT(mt_sampler_create(&p, V, &s) == MT_OK);
        MT_ASSERT(mt_device_sample(MT_DEVICE_CUDA, drow, V, s, hist, 64, &tok) == MT_OK); // warm-up
        t0 = now_ms();
        for (int i = 0; i < reps; i++)
            MT_ASSERT(mt_device_sample(MT_DEVICE_CUDA, drow, V, s, hist, 64, &tok) == MT_OK);
        printf("| device sample | %s | %.1f |\n", cfg[c].name, (now_ms() - t0) * 1e3 / reps);
        t0 = now_ms();
        for (int i = 0; i < reps; i++) {
            MT_ASSERT(mt_device_download(MT_DEVICE_CUDA, row, drow, (size_t)V * sizeof(float)) == MT_OK);
            tok = mt_sampler_sample(s, row, hist, 64);
        }
        printf("| download + CPU sampler | %s | %.1f |\n", cfg[c].name, (now_ms() - t0) * 1e3 / reps);
        mt_sampler_free(s);
    }
    mt_device_free(MT_DEVICE_CUDA, drow);
    mt_device_free(MT_DEVICE_CUDA, dtok);
    free(row);
    return 0;
}

int main(int argc, char **argv) {
    RUN(test_stream_helpers);
    if (!mt_device_available(MT_DEVICE_CUDA)) {
        SKIP("cuda sample", "no CUDA in this build or no GPU");
        return th_summary();
    }
    if (argc >= 2 && !strcmp(argv[1], "--bench")) return bench(argc > 2 ? atoi(argv[2]) : 200);
    printf("device: %s\n", mt_device_description(MT_DEVICE_CUDA));
    static const int vs[] = {1, 7, 1000, 1025, 32000, 151936};
    for (size_t v = 0; v < sizeof vs / sizeof vs[0]; v++)
        for (int kind = 0; kind < ROW_KINDS; kind++) {
            char name[64];
            snprintf(name, sizeof name, "sample V=%d %s", vs[v], row_name[kind]);
            RUN_NAMED(name, test_row(vs[v], kind, vs[v] >= 32000 ? 4 : 12));
        }
    RUN(test_bad_size);
    return th_summary();
}
