// Sampler tests: greedy argmax, seeding, the empirical distribution against softmax(logits / T), and the
// exact sets that top-k, top-p, min-p and the repetition penalty leave, on random and crafted logits.
#include <math.h>
#include <stdlib.h>
#include <string.h>

#include "harness.h"
#include "model/generate.h"
#include "model/sampler.h"

#define BIG_VOCAB 151936

static uint64_t lcg_state;
static float frand(void) { // uniform in [0, 1), fixed sequence per seed
    lcg_state = lcg_state * 6364136223846793005ull + 1442695040888963407ull;
    return (float)((lcg_state >> 40) * (1.0 / 16777216.0));
}
static void random_logits(float *l, int n, uint64_t seed, float scale) {
    lcg_state = seed;
    for (int i = 0; i < n; i++) l[i] = (frand() * 2.0f - 1.0f) * scale;
}

static mt_sampler_params plain(float t, uint64_t seed) {
    mt_sampler_params p = mt_sampler_default_params();
    p.temperature = t;
    p.top_k = 0;
    p.top_p = 1.0f;
    p.min_p = 0.0f;
    p.repeat_penalty = 1.0f;
    p.seed = seed;
    return p;
}

static mt_sampler *make(const mt_sampler_params *p, int n) {
    mt_sampler *s = NULL;
    mt_status st = mt_sampler_create(p, n, &s);
    CHECK(st == MT_OK, "create: %s", mt_last_error());
    return s;
}

static void test_greedy_is_argmax(void) {
    float *l = malloc(BIG_VOCAB * sizeof *l);
    mt_sampler_params p = plain(0.0f, 1);
    p.repeat_penalty = 1.3f; // greedy ignores every other setting
    p.top_k = 5;
    mt_sampler *s = make(&p, BIG_VOCAB);
    for (int trial = 0; trial < 5; trial++) {
        random_logits(l, BIG_VOCAB, 100 + trial, 8.0f);
        int best = 0;
        for (int i = 1; i < BIG_VOCAB; i++)
            if (l[i] > l[best]) best = i;
        int32_t hist[] = {best};
        int32_t got = mt_sampler_sample(s, l, hist, 1);
        CHECK(got == best, "trial %d: got %d want %d", trial, got, best);
    }
    // Ties go to the lowest id.
    random_logits(l, BIG_VOCAB, 7, 1.0f);
    l[90000] = 50.0f;
    l[1234] = 50.0f;
    l[150000] = 50.0f;
    CHECK(mt_sampler_sample(s, l, NULL, 0) == 1234, "tie not to lowest id");
    mt_sampler_free(s);
    free(l);
}

static void draw_seq(uint64_t seed, int32_t *out, int n) {
    float l[1000];
    random_logits(l, 1000, 42, 3.0f);
    mt_sampler_params p = plain(0.8f, seed);
    p.top_k = 40;
    p.top_p = 0.95f;
    mt_sampler *s = make(&p, 1000);
    for (int i = 0; i < n; i++) out[i] = mt_sampler_sample(s, l, out, i);
    mt_sampler_free(s);
}

static void test_seed_reproducible(void) {
    int32_t a[300], b[300], c[300];
    draw_seq(1234, a, 300);
    draw_seq(1234, b, 300);
    draw_seq(1235, c, 300);
    CHECK(memcmp(a, b, sizeof a) == 0, "same seed gave different sequences");
    int diff = 0;
    for (int i = 0; i < 300; i++) diff += a[i] != c[i];
    CHECK(diff > 30, "different seeds differ at only %d of 300 draws", diff);
}

// Pearson chi-square of counts against expected probabilities.
static double chi_square(const int *counts, const double *prob, int n, int draws) {
    double x2 = 0;
    for (int i = 0; i < n; i++) {
        double e = prob[i] * draws;
        x2 += (counts[i] - e) * (counts[i] - e) / e;
    }
    return x2;
}

static void test_distribution_matches_softmax(void) {
    enum { V = 8, DRAWS = 20000 };
    const float logits[V] = {1.0f, 0.5f, -0.3f, 2.0f, 0.0f, -1.0f, 1.5f, 0.2f};
    const float temps[] = {0.5f, 1.0f, 1.7f};
    for (int t = 0; t < 3; t++) {
        mt_sampler_params p = plain(temps[t], 99 + t);
        mt_sampler *s = make(&p, V);
        double prob[V], z = 0;
        for (int i = 0; i < V; i++) z += prob[i] = exp(logits[i] / temps[t]);
        for (int i = 0; i < V; i++) prob[i] /= z;
        int counts[V] = {0};
        for (int d = 0; d < DRAWS; d++) counts[mt_sampler_sample(s, logits, NULL, 0)]++;
        double x2 = chi_square(counts, prob, V, DRAWS);
        // 7 degrees of freedom: P(x2 > 29.9) < 1e-4 for a correct sampler.
        CHECK(x2 < 29.9, "T=%.1f: chi-square %.1f vs softmax", (double)temps[t], x2);
        // A wrong temperature must be detectable by the same statistic.
        double wrong[V], zw = 0;
        for (int i = 0; i < V; i++) zw += wrong[i] = exp(logits[i] / (temps[t] * 1.3));
        for (int i = 0; i < V; i++) wrong[i] /= zw;
        CHECK(chi_square(counts, wrong, V, DRAWS) > 60, "T=%.1f: test cannot tell T from 1.3 T",
              (double)temps[t]);
        mt_sampler_free(s);
    }
}

static void test_top_k(void) {
    float *l = malloc(BIG_VOCAB * sizeof *l);
    random_logits(l, BIG_VOCAB, 5, 2.0f);
    // The 5 best, by scanning.
    int top[5] = {0};
    for (int j = 0; j < 5; j++) {
        int b = -1;
        for (int i = 0; i < BIG_VOCAB; i++) {
            int taken = 0;
            for (int q = 0; q < j; q++) taken |= top[q] == i;
            if (!taken && (b < 0 || l[i] > l[b])) b = i;
        }
        top[j] = b;
    }
    mt_sampler_params p = plain(5.0f, 11); // hot: without top-k almost every draw would be elsewhere
    p.top_k = 5;
    mt_sampler *s = make(&p, BIG_VOCAB);
    int hits[5] = {0}, outside = 0;
    for (int d = 0; d < 2000; d++) {
        int32_t id = mt_sampler_sample(s, l, NULL, 0);
        int in = 0;
        for (int j = 0; j < 5; j++)
            if (id == top[j]) hits[j]++, in = 1;
        outside += !in;
    }
    CHECK(outside == 0, "%d draws outside the top 5", outside);
    for (int j = 0; j < 5; j++) CHECK(hits[j] > 200, "top-%d token drawn only %d times", j, hits[j]);
    mt_sampler_free(s);
    free(l);
}

// Draws `draws` times and records which ids appear.
static void appear(mt_sampler *s, const float *l, int n, int draws, int *counts) {
    memset(counts, 0, (size_t)n * sizeof *counts);
    for (int d = 0; d < draws; d++) counts[mt_sampler_sample(s, l, NULL, 0)]++;
}

static void test_top_p_exact(void) {
    const float l[4] = {logf(0.15f), logf(0.5f), logf(0.05f), logf(0.3f)}; // sorted: 1, 3, 0, 2
    int counts[4];
    mt_sampler_params p = plain(1.0f, 3);
    p.top_p = 0.75f; // 0.5 < 0.75 <= 0.8: keeps {1, 3}
    mt_sampler *s = make(&p, 4);
    appear(s, l, 4, 5000, counts);
    CHECK(counts[0] == 0 && counts[2] == 0, "top_p 0.75 kept %d/%d draws of ids 0/2", counts[0], counts[2]);
    CHECK(fabs(counts[1] / 5000.0 - 0.625) < 0.03, "id 1 share %.3f, want 0.625", counts[1] / 5000.0);
    mt_sampler_free(s);
    p.top_p = 0.85f; // keeps {1, 3, 0}
    s = make(&p, 4);
    appear(s, l, 4, 5000, counts);
    CHECK(counts[2] == 0 && counts[0] > 0, "top_p 0.85: id 2 %d, id 0 %d", counts[2], counts[0]);
    mt_sampler_free(s);
    p.top_p = 0.2f; // below the best token's mass: exactly one token remains
    s = make(&p, 4);
    appear(s, l, 4, 500, counts);
    CHECK(counts[1] == 500, "top_p 0.2 did not keep only the best token (%d)", counts[1]);
    mt_sampler_free(s);

    // A nucleus far wider than one selection chunk: equal logits, ties ranked by id, so top_p 0.5 keeps
    // exactly the ids below half the vocabulary.
    float *flat = malloc(BIG_VOCAB * sizeof *flat);
    for (int i = 0; i < BIG_VOCAB; i++) flat[i] = 0.25f;
    p.top_p = 0.5f;
    s = make(&p, BIG_VOCAB);
    int above = 0, low_half = 0;
    for (int d = 0; d < 150; d++) {
        int32_t id = mt_sampler_sample(s, flat, NULL, 0);
        above += id >= BIG_VOCAB / 2;
        low_half += id < BIG_VOCAB / 4;
    }
    CHECK(above == 0, "%d draws outside the nucleus", above);
    CHECK(low_half > 45 && low_half < 105, "nucleus not drawn uniformly (%d of 150 in lower half)", low_half);
    mt_sampler_free(s);
    free(flat);
}

static void test_min_p_exact(void) {
    const float l[4] = {logf(0.1f), logf(0.4f), logf(0.2f), logf(0.3f)};
    int counts[4];
    mt_sampler_params p = plain(1.0f, 8);
    p.min_p = 0.3f; // threshold 0.12: drops id 0 only
    mt_sampler *s = make(&p, 4);
    appear(s, l, 4, 5000, counts);
    CHECK(counts[0] == 0 && counts[2] > 0, "min_p 0.3: id 0 %d, id 2 %d", counts[0], counts[2]);
    CHECK(fabs(counts[2] / 5000.0 - 2.0 / 9.0) < 0.03, "id 2 share %.3f, want 0.222", counts[2] / 5000.0);
    mt_sampler_free(s);
    p.min_p = 0.6f; // threshold 0.24: keeps {1, 3}
    s = make(&p, 4);
    appear(s, l, 4, 5000, counts);
    CHECK(counts[0] == 0 && counts[2] == 0 && counts[3] > 0, "min_p 0.6: %d %d %d", counts[0], counts[2],
          counts[3]);
    mt_sampler_free(s);
}

static void test_repeat_penalty(void) {
    mt_sampler_params p = plain(1.0f, 4);
    p.top_k = 1; // deterministic: shows which token ranks first after the penalty
    p.repeat_penalty = 1.1f;
    p.repeat_last_n = 2;
    mt_sampler *s = make(&p, 3);
    const float pos[3] = {2.0f, 1.9f, 0.0f};
    const float neg[3] = {-1.0f, -1.05f, -3.0f};
    const int32_t h0[] = {0}, h_old[] = {0, 2, 2}, h_rep[] = {2, 0, 0};
    CHECK(mt_sampler_sample(s, pos, NULL, 0) == 0, "no history");
    CHECK(mt_sampler_sample(s, pos, h0, 1) == 1, "positive logit not divided");
    CHECK(mt_sampler_sample(s, neg, h0, 1) == 1, "negative logit not multiplied");
    CHECK(mt_sampler_sample(s, pos, h_old, 3) == 0, "token outside repeat_last_n was penalized");
    mt_sampler_free(s);
    // A repeated id is penalized once: 2.0/1.1 = 1.82 > 1.7, but 2.0/1.1^2 = 1.65 < 1.7.
    const float once[3] = {2.0f, 1.7f, 0.0f};
    p.repeat_last_n = 64;
    s = make(&p, 3);
    CHECK(mt_sampler_sample(s, once, h_rep, 3) == 0, "repeated id penalized more than once");
    mt_sampler_free(s);
    // The same through the path without top-k (a tiny top-p keeps only the best token).
    p.top_k = 0;
    p.top_p = 0.01f;
    p.repeat_last_n = 2;
    s = make(&p, 3);
    CHECK(mt_sampler_sample(s, pos, h0, 1) == 1, "positive logit not divided (no top-k)");
    CHECK(mt_sampler_sample(s, neg, h0, 1) == 1, "negative logit not multiplied (no top-k)");
    CHECK(mt_sampler_sample(s, pos, h_old, 3) == 0, "token outside repeat_last_n was penalized (no top-k)");
    mt_sampler_free(s);
    p.top_k = 1;
    p.top_p = 1.0f;
    p.repeat_penalty = 1.0f; // off
    s = make(&p, 3);
    CHECK(mt_sampler_sample(s, pos, h0, 1) == 0, "penalty 1 changed the ranking");
    mt_sampler_free(s);
}

static void expect_bad(mt_sampler_params p, const char *field) {
    CHECK(mt_sampler_params_check(&p) == MT_ERR_INVALID, "%s accepted", field);
    CHECK(strstr(mt_last_error(), field) != NULL, "message '%s' does not name %s", mt_last_error(), field);
    mt_sampler *s = (mt_sampler *)1;
    CHECK(mt_sampler_create(&p, 10, &s) != MT_OK && s == NULL, "create accepted bad %s", field);
}

static void test_param_check(void) {
    mt_sampler_params d = mt_sampler_default_params();
    CHECK(mt_sampler_params_check(&d) == MT_OK, "defaults rejected: %s", mt_last_error());
    mt_sampler_params p = d;
    p.temperature = -0.1f;
    expect_bad(p, "temperature");
    p = d, p.temperature = NAN;
    expect_bad(p, "temperature");
    p = d, p.top_p = 1.5f;
    expect_bad(p, "top_p");
    p = d, p.top_p = 0.0f;
    expect_bad(p, "top_p");
    p = d, p.min_p = -0.5f;
    expect_bad(p, "min_p");
    p = d, p.top_k = -1;
    expect_bad(p, "top_k");
    p = d, p.repeat_penalty = 0.0f;
    expect_bad(p, "repeat_penalty");
    p = d, p.repeat_last_n = -3;
    expect_bad(p, "repeat_last_n");
    mt_sampler *s = NULL;
    CHECK(mt_sampler_create(&d, 0, &s) == MT_ERR_INVALID && strstr(mt_last_error(), "n_vocab"),
          "n_vocab 0 accepted");
}

// Top-K logprobs against a brute-force log-softmax and ranking (ties to the lower id).
static void test_top_logprobs(void) {
    enum { K = 12 };
    float *l = malloc(BIG_VOCAB * sizeof *l);
    random_logits(l, BIG_VOCAB, 77, 6.0f);
    l[5000] = l[100] = 9.0f; // a tie at the top: id 100 ranks first
    double mx = -1e30, z = 0;
    for (int i = 0; i < BIG_VOCAB; i++) mx = l[i] > mx ? l[i] : mx;
    for (int i = 0; i < BIG_VOCAB; i++) z += exp(l[i] - mx);
    int want[K] = {0};
    for (int j = 0; j < K; j++) { // selection by scanning
        int b = -1;
        for (int i = 0; i < BIG_VOCAB; i++) {
            int taken = 0;
            for (int q = 0; q < j; q++) taken |= want[q] == i;
            if (!taken && (b < 0 || l[i] > l[b])) b = i;
        }
        want[j] = b;
    }
    mt_logprob got[K];
    mt_top_logprobs(l, BIG_VOCAB, K, got);
    CHECK(got[0].id == 100 && got[1].id == 5000, "tie order %d %d", got[0].id, got[1].id);
    for (int j = 0; j < K; j++) {
        double ref = l[want[j]] - mx - log(z);
        CHECK(got[j].id == want[j], "rank %d: id %d want %d", j, got[j].id, want[j]);
        CHECK(fabs(got[j].logprob - ref) < 1e-5, "rank %d: logprob %g want %g", j, (double)got[j].logprob,
              ref);
    }
    free(l);
}

int main(void) {
    RUN(test_greedy_is_argmax);
    RUN(test_seed_reproducible);
    RUN(test_distribution_matches_softmax);
    RUN(test_top_k);
    RUN(test_top_p_exact);
    RUN(test_min_p_exact);
    RUN(test_repeat_penalty);
    RUN(test_param_check);
    RUN(test_top_logprobs);
    return th_summary();
}
