// Token sampler: greedy argmax, or repetition penalty -> temperature -> top-k -> top-p -> min-p -> a draw
// from a seeded xoshiro256** generator.
//
// The vocabulary is large (151,936 for Qwen2.5), so nothing here sorts the whole of it: top-k is a
// partial selection, top-p grows a sorted prefix in chunks until it holds the requested mass, and min-p
// is a linear filter. All buffers are allocated once in mt_sampler_create.
#include "sampler.h"

#include <math.h>
#include <stdbool.h>
#include <stdlib.h>
#include <string.h>

typedef struct mt_cand {
    float logit;
    int32_t id;
} mt_cand;

struct mt_sampler {
    mt_sampler_params p;
    int n_vocab;
    mt_cand *cand;   // [n_vocab] working candidates
    uint32_t *stamp; // [n_vocab] last call that penalized the id (each id is penalized once per call)
    uint32_t call;
    uint64_t rng[4]; // xoshiro256** state
};

mt_sampler_params mt_sampler_default_params(void) {
    // Qwen2.5 instruct generation_config values; the CLI replaces them with the model's own when known.
    mt_sampler_params p = {
        .temperature = 0.7f,
        .top_k = 20,
        .top_p = 0.8f,
        .min_p = 0.0f,
        .repeat_penalty = 1.05f,
        .repeat_last_n = 64,
        .seed = 0xC0FFEE,
    };
    return p;
}

mt_status mt_sampler_params_check(const mt_sampler_params *p) {
    if (!(p->temperature >= 0.0f) || !isfinite(p->temperature))
        return mt_fail(MT_ERR_INVALID, "sampler: temperature = %g must be a finite number >= 0",
                       (double)p->temperature);
    if (p->top_k < 0) return mt_fail(MT_ERR_INVALID, "sampler: top_k = %d must be >= 0 (0 = off)", p->top_k);
    if (!(p->top_p > 0.0f && p->top_p <= 1.0f))
        return mt_fail(MT_ERR_INVALID, "sampler: top_p = %g is out of range (0, 1]", (double)p->top_p);
    if (!(p->min_p >= 0.0f && p->min_p <= 1.0f))
        return mt_fail(MT_ERR_INVALID, "sampler: min_p = %g is out of range [0, 1]", (double)p->min_p);
    if (!(p->repeat_penalty > 0.0f) || !isfinite(p->repeat_penalty))
        return mt_fail(MT_ERR_INVALID, "sampler: repeat_penalty = %g must be a finite number > 0",
                       (double)p->repeat_penalty);
    if (p->repeat_last_n < 0)
        return mt_fail(MT_ERR_INVALID, "sampler: repeat_last_n = %d must be >= 0", p->repeat_last_n);
    return MT_OK;
}

static uint64_t splitmix64(uint64_t *x) {
    uint64_t z = (*x += 0x9E3779B97F4A7C15ull);
    z = (z ^ (z >> 30)) * 0xBF58476D1CE4E5B9ull;
    z = (z ^ (z >> 27)) * 0x94D049BB133111EBull;
    return z ^ (z >> 31);
}

static inline uint64_t rotl(uint64_t x, int k) {
    return (x << k) | (x >> (64 - k));
}

static uint64_t xoshiro_next(uint64_t *s) {
    uint64_t r = rotl(s[1] * 5, 7) * 9, t = s[1] << 17;
    s[2] ^= s[0];
    s[3] ^= s[1];
    s[1] ^= s[2];
    s[0] ^= s[3];
    s[2] ^= t;
    s[3] = rotl(s[3], 45);
    return r;
}

// Uniform in [0, 1) with 53 random bits.
static double rng_uniform(uint64_t *s) {
    return (double)(xoshiro_next(s) >> 11) * 0x1.0p-53;
}

mt_status mt_sampler_create(const mt_sampler_params *p, int n_vocab, mt_sampler **out) {
    *out = NULL;
    MT_TRY(mt_sampler_params_check(p));
    if (n_vocab <= 0) return mt_fail(MT_ERR_INVALID, "sampler: n_vocab = %d must be > 0", n_vocab);
    mt_sampler *s = mt_calloc(1, sizeof *s, "sampler");
    if (!s) return MT_ERR_NOMEM;
    s->p = *p;
    s->n_vocab = n_vocab;
    s->cand = mt_malloc((size_t)n_vocab * sizeof *s->cand, "sampler candidates");
    s->stamp = mt_calloc((size_t)n_vocab, sizeof *s->stamp, "sampler penalty stamps");
    if (!s->cand || !s->stamp) {
        mt_sampler_free(s);
        return MT_ERR_NOMEM;
    }
    uint64_t x = p->seed;
    for (int i = 0; i < 4; i++) s->rng[i] = splitmix64(&x);
    *out = s;
    return MT_OK;
}

void mt_sampler_free(mt_sampler *s) {
    if (!s) return;
    free(s->cand);
    free(s->stamp);
    free(s);
}

// Ranking order: higher logit first, ties to the lower id, so every selection is deterministic.
static inline int before(const mt_cand *a, const mt_cand *b) {
    return a->logit > b->logit || (a->logit == b->logit && a->id < b->id);
}

static int cand_cmp(const void *pa, const void *pb) {
    const mt_cand *a = pa, *b = pb;
    return before(a, b) ? -1 : before(b, a) ? 1 : 0;
}

static inline void swap_cand(mt_cand *a, mt_cand *b) {
    mt_cand t = *a;
    *a = *b;
    *b = t;
}

// Rearranges c[0..n) so that c[0..k) are the k best (in any order). Quickselect, expected O(n).
static void select_top(mt_cand *c, int n, int k) {
    if (k <= 0 || k >= n) return;
    int lo = 0, hi = n - 1;
    while (lo < hi) {
        int mid = lo + (hi - lo) / 2;
        // Median of three as the pivot, moved to hi.
        if (before(&c[mid], &c[lo])) swap_cand(&c[mid], &c[lo]);
        if (before(&c[hi], &c[lo])) swap_cand(&c[hi], &c[lo]);
        if (before(&c[mid], &c[hi])) swap_cand(&c[mid], &c[hi]);
        mt_cand pivot = c[hi];
        int store = lo;
        for (int i = lo; i < hi; i++)
            if (before(&c[i], &pivot)) swap_cand(&c[i], &c[store++]);
        swap_cand(&c[store], &c[hi]);
        if (store == k || store == k - 1) return;
        if (store < k)
            lo = store + 1;
        else
            hi = store - 1;
    }
}

static int32_t argmax(const float *logits, int n) {
    int32_t best = 0;
    float bv = logits[0];
    for (int i = 1; i < n; i++)
        if (logits[i] > bv || (bv != bv && logits[i] == logits[i])) bv = logits[i], best = i;
    return best;
}

// The logit of id i as the sampler sees it: NaN as -inf (it must never win or poison the comparisons),
// the repetition penalty applied to stamped ids.
static inline float penalized(const mt_sampler *s, const float *logits, int i, bool pen) {
    float l = logits[i];
    if (l != l) return -INFINITY;
    if (pen && s->stamp[i] == s->call) l = l > 0.0f ? l / s->p.repeat_penalty : l * s->p.repeat_penalty;
    return l;
}

bool mt_sampler_is_greedy(const mt_sampler *s) {
    return s->p.temperature <= 0.0f;
}

const mt_sampler_params *mt_sampler_params_of(const mt_sampler *s) {
    return &s->p;
}

double mt_sampler_peek_uniform(const mt_sampler *s) {
    uint64_t r[4];
    memcpy(r, s->rng, sizeof r);
    return rng_uniform(r);
}

void mt_sampler_consume_uniform(mt_sampler *s) {
    (void)rng_uniform(s->rng);
}

int mt_sampler_penalty_window(const mt_sampler *s, const int32_t *history, int n_history,
                              const int32_t **win) {
    *win = NULL;
    if (!(s->p.repeat_penalty != 1.0f && s->p.repeat_last_n > 0 && history && n_history > 0)) return 0;
    int from = n_history > s->p.repeat_last_n ? n_history - s->p.repeat_last_n : 0;
    *win = history + from;
    return n_history - from;
}

int32_t mt_sampler_sample(mt_sampler *s, const float *logits, const int32_t *history, int n_history) {
    const mt_sampler_params *p = &s->p;
    const int n = s->n_vocab;
    if (p->temperature <= 0.0f) return argmax(logits, n);

    // Repetition penalty over the distinct ids of the recent history (llama.cpp semantics): the ids are
    // stamped here and the penalty applied as their logits are read below.
    const int32_t *win;
    const int n_win = mt_sampler_penalty_window(s, history, n_history, &win);
    const bool pen = n_win > 0;
    if (pen) {
        if (++s->call == 0) { // stamp counter wrapped: clear so old stamps cannot match
            memset(s->stamp, 0, (size_t)n * sizeof *s->stamp);
            s->call = 1;
        }
        for (int i = 0; i < n_win; i++)
            if (win[i] >= 0 && win[i] < n) s->stamp[win[i]] = s->call;
    }

    mt_cand *c = s->cand;
    const float inv_t = 1.0f / p->temperature;
    int m;          // live candidates are c[0..m)
    int sorted = 0; // c[0..sorted) is sorted best first and holds the best `sorted` candidates
    if (p->top_k > 0 && p->top_k < n) {
        // One pass with a k-entry heap whose root is the worst kept candidate: most logits are rejected
        // by a single comparison, so the full vocabulary is never copied. Temperature is a positive scale
        // and does not change the ranking, so it is applied to the k survivors only.
        const int k = p->top_k;
        int have = 0;
        for (int i = 0; i < n; i++) {
            mt_cand x = {penalized(s, logits, i, pen), i};
            if (have == k && !before(&x, &c[0])) continue;
            int j;
            if (have < k) { // sift up
                j = have++;
                while (j > 0 && before(&c[(j - 1) / 2], &x)) {
                    c[j] = c[(j - 1) / 2];
                    j = (j - 1) / 2;
                }
            } else { // replace the root, sift down
                j = 0;
                for (;;) {
                    int a = 2 * j + 1, b = a + 1, w = j;
                    const mt_cand *wc = &x;
                    if (a < k && before(wc, &c[a])) w = a, wc = &c[a];
                    if (b < k && before(wc, &c[b])) w = b;
                    if (w == j) break;
                    c[j] = c[w];
                    j = w;
                }
            }
            c[j] = x;
        }
        m = k;
        for (int i = 0; i < m; i++) c[i].logit *= inv_t;
        qsort(c, (size_t)m, sizeof *c, cand_cmp);
        sorted = m;
    } else {
        for (int i = 0; i < n; i++) c[i] = (mt_cand){penalized(s, logits, i, pen) * inv_t, i};
        m = n;
    }

    // Largest logit among the live candidates.
    float lmax;
    if (sorted)
        lmax = c[0].logit;
    else {
        lmax = -INFINITY;
        for (int i = 0; i < m; i++)
            if (c[i].logit > lmax) lmax = c[i].logit;
    }
    if (lmax == -INFINITY) return argmax(logits, n); // nothing has any probability: fall back

    if (p->top_p < 1.0f) {
        double z = 0.0;
        for (int i = 0; i < m; i++) z += exp((double)(c[i].logit - lmax));
        const double target = (double)p->top_p * z;
        double cum = 0.0;
        int keep = 0, chunk = 64;
        // Grow the sorted prefix chunk by chunk until it holds the requested mass.
        while (keep == 0) {
            if (sorted < m) {
                int want = sorted + chunk < m ? sorted + chunk : m;
                select_top(c + sorted, m - sorted, want - sorted);
                qsort(c + sorted, (size_t)(want - sorted), sizeof *c, cand_cmp);
                for (int i = sorted; i < want; i++) {
                    cum += exp((double)(c[i].logit - lmax));
                    if (cum >= target) {
                        keep = i + 1;
                        break;
                    }
                }
                sorted = want;
                chunk *= 4;
            } else {
                keep = m; // rounding: the whole set is needed
            }
        }
        m = keep;
    }

    if (p->min_p > 0.0f) {
        const float thr = lmax + logf(p->min_p); // p_i >= min_p * p_max  <=>  l_i >= l_max + ln(min_p)
        int w = 0;
        for (int i = 0; i < m; i++)
            if (c[i].logit >= thr) c[w++] = c[i]; // keeps order, and the best candidate always passes
        m = w;
    }
    MT_ASSERT(m >= 1);

    double z = 0.0;
    for (int i = 0; i < m; i++) z += exp((double)(c[i].logit - lmax));
    double u = rng_uniform(s->rng) * z, acc = 0.0;
    for (int i = 0; i < m; i++) {
        acc += exp((double)(c[i].logit - lmax));
        if (u < acc) return c[i].id;
    }
    // Only rounding can get here: return the last candidate with nonzero weight.
    for (int i = m - 1; i > 0; i--)
        if (c[i].logit > -INFINITY) return c[i].id;
    return c[0].id;
}
