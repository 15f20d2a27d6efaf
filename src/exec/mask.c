// The mask arena: per bucket a causal decode-row template (built once) and a scratch buffer (kept and
// grown), with the same hit/miss metrics and events as the executable cache.
#include "mask.h"

#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "../core/metrics.h"

// No single mask buffer above this: a request that would need more is an error, not an allocation.
#define MAX_MASK_BYTES ((size_t)1 << 30)

static const int64_t bucket_limit[MT_MASK_BUCKETS] = {32, 128, 512, 1024, 2048, 4096, INT64_MAX};
static const char *const bucket_names[MT_MASK_BUCKETS] = {"le32",   "le128",  "le512", "le1024",
                                                          "le2048", "le4096", "gt4096"};

int mt_mask_bucket(int64_t len) {
    int b = 0;
    while (b < MT_MASK_BUCKETS - 1 && len > bucket_limit[b]) b++;
    return b;
}

int64_t mt_mask_bucket_limit(int b) {
    MT_ASSERT(b >= 0 && b < MT_MASK_BUCKETS);
    return bucket_limit[b];
}

const char *mt_mask_bucket_name(int b) {
    return b >= 0 && b < MT_MASK_BUCKETS ? bucket_names[b] : "?";
}

int64_t mt_mask_capacity(int64_t len) {
    int b = mt_mask_bucket(len);
    if (b < MT_MASK_BUCKETS - 1) return bucket_limit[b];
    return (len + 4095) / 4096 * 4096;
}

// One buffer of the arena with its statistics.
typedef struct slot {
    float *data;
    int32_t *lo, *hi;
    int64_t cap;      // columns (template: the staircase covers positions 0 .. cap-1)
    int64_t rows_cap; // scratch only
    size_t bytes;
    uint32_t builds; // allocations (first build and growths)
    uint64_t reuse;
    uint64_t t_insert, t_used;
} slot;

struct mt_mask_arena {
    char name[32];
    slot tmpl[MT_MASK_BUCKETS];    // staircase: 2*cap-1 floats, zeros then -inf
    slot scratch[MT_MASK_BUCKETS]; // rows_cap x cap floats, lo/hi per row
    int32_t tmpl_lo, tmpl_hi;      // the compact form of the last template view
    uint64_t lookups, hits, misses;
};

static void arena_metrics_cb(void *a, mt_cache_metrics *out) {
    mt_mask_arena_metrics((mt_mask_arena *)a, out);
}
static int arena_entries_cb(void *a, mt_cache_entry_info *out, int max) {
    return mt_mask_arena_entries((mt_mask_arena *)a, out, max);
}
static const mt_cache_ops arena_ops = {"mask", arena_metrics_cb, arena_entries_cb};

mt_status mt_mask_arena_create(const char *name, mt_mask_arena **out) {
    *out = NULL;
    mt_mask_arena *a = mt_calloc(1, sizeof *a, "mask arena");
    if (!a) return MT_ERR_NOMEM;
    snprintf(a->name, sizeof a->name, "%s", name ? name : "mask_arena");
    mt_cache_list_add(a, &arena_ops);
    *out = a;
    return MT_OK;
}

static void slot_free(slot *s) {
    free(s->data);
    free(s->lo);
    free(s->hi);
    memset(s, 0, sizeof *s);
}

void mt_mask_arena_free(mt_mask_arena *a) {
    if (!a) return;
    mt_cache_list_remove(a);
    for (int b = 0; b < MT_MASK_BUCKETS; b++) {
        slot_free(&a->tmpl[b]);
        slot_free(&a->scratch[b]);
    }
    free(a);
}

static void count_access(mt_mask_arena *a, const char *kind, int bucket, bool hit, size_t bytes) {
    a->lookups++;
    if (hit)
        a->hits++;
    else
        a->misses++;
    if (!mt_metrics_enabled()) return;
    mt_cache_metrics m;
    mt_mask_arena_metrics(a, &m);
    char key[48];
    snprintf(key, sizeof key, "%s/%s", kind, mt_mask_bucket_name(bucket));
    mt_cache_emit_access(a->name, key, hit, bytes, &m);
}

// The staircase for capacity cap: T[k] = 0 for k < cap, -inf after; row at position p is T + cap-1-p, so
// key j reads T[cap-1-p+j], which is 0 exactly when j <= p.
static mt_status template_get(mt_mask_arena *a, int b, int64_t cap, bool *hit) {
    slot *s = &a->tmpl[b];
    *hit = s->data && s->cap >= cap;
    if (*hit) return MT_OK;
    size_t n = (size_t)(2 * cap - 1);
    if (n * sizeof(float) > MAX_MASK_BYTES)
        return mt_fail(MT_ERR_NOMEM, "mask arena %s: a causal template of %lld keys exceeds %zu bytes",
                       a->name, (long long)cap, MAX_MASK_BYTES);
    float *d = malloc(n * sizeof(float));
    if (!d)
        return mt_fail(MT_ERR_NOMEM, "mask arena %s: out of memory for a %lld-key template", a->name,
                       (long long)cap);
    for (size_t k = 0; k < n; k++) d[k] = (int64_t)k < cap ? 0.0f : -INFINITY;
    uint32_t builds = s->builds;
    uint64_t reuse = s->reuse, t0 = s->t_insert;
    slot_free(s);
    s->data = d;
    s->cap = cap;
    s->bytes = n * sizeof(float);
    s->builds = builds + 1;
    s->reuse = reuse;
    s->t_insert = t0 ? t0 : mt_now_us();
    return MT_OK;
}

static mt_status scratch_get(mt_mask_arena *a, int b, int64_t cap, int64_t rows, bool *hit) {
    slot *s = &a->scratch[b];
    *hit = s->data && s->cap >= cap && s->rows_cap >= rows;
    if (*hit) return MT_OK;
    int64_t new_rows = rows > s->rows_cap ? rows : s->rows_cap;
    int64_t new_cap = cap > s->cap ? cap : s->cap;
    if (new_rows > (int64_t)(MAX_MASK_BYTES / sizeof(float)) / new_cap)
        return mt_fail(MT_ERR_NOMEM, "mask arena %s: a %lld x %lld mask exceeds %zu bytes", a->name,
                       (long long)new_rows, (long long)new_cap, MAX_MASK_BYTES);
    float *d = malloc((size_t)(new_rows * new_cap) * sizeof(float));
    int32_t *lo = malloc((size_t)new_rows * sizeof(int32_t)),
            *hi = malloc((size_t)new_rows * sizeof(int32_t));
    if (!d || !lo || !hi) {
        free(d);
        free(lo);
        free(hi);
        return mt_fail(MT_ERR_NOMEM, "mask arena %s: out of memory for a %lld x %lld mask", a->name,
                       (long long)new_rows, (long long)new_cap);
    }
    uint32_t builds = s->builds;
    uint64_t reuse = s->reuse, t0 = s->t_insert;
    slot_free(s);
    s->data = d;
    s->lo = lo;
    s->hi = hi;
    s->cap = new_cap;
    s->rows_cap = new_rows;
    s->bytes = (size_t)(new_rows * new_cap) * sizeof(float) + 2 * (size_t)new_rows * sizeof(int32_t);
    s->builds = builds + 1;
    s->reuse = reuse;
    s->t_insert = t0 ? t0 : mt_now_us();
    return MT_OK;
}

static mt_status check_seq(const mt_mask_seq *q, int i) {
    if (q->q_len < 1 || q->kv_len < 1)
        return mt_fail(MT_ERR_INVALID, "mask: sequence %d: q_len %d and kv_len %d must be >= 1", i,
                       (int)q->q_len, (int)q->kv_len);
    if (q->kv_start < 0 || q->kv_start > q->kv_len)
        return mt_fail(MT_ERR_INVALID, "mask: sequence %d: kv_start %d not in [0, kv_len %d]", i,
                       (int)q->kv_start, (int)q->kv_len);
    if (q->causal && (q->q_pos < 0 || (int64_t)q->q_pos + q->q_len > q->kv_len))
        return mt_fail(MT_ERR_INVALID, "mask: sequence %d: causal rows at positions %d..%lld past kv_len %d",
                       i, (int)q->q_pos, (long long)q->q_pos + q->q_len - 1, (int)q->kv_len);
    return MT_OK;
}

mt_status mt_mask_get(mt_mask_arena *a, const mt_mask_seq *seqs, int n_seq, mt_mask *out) {
    memset(out, 0, sizeof *out);
    if (!seqs || n_seq < 1) return mt_fail(MT_ERR_INVALID, "mask: %d sequences, need at least 1", n_seq);
    int64_t rows = 0, cols = 0;
    for (int i = 0; i < n_seq; i++) {
        MT_TRY(check_seq(&seqs[i], i));
        rows += seqs[i].q_len;
        if (seqs[i].kv_len > cols) cols = seqs[i].kv_len;
    }
    if (rows > INT32_MAX) return mt_fail(MT_ERR_INVALID, "mask: %lld rows in one batch", (long long)rows);
    int b = mt_mask_bucket(cols);
    int64_t cap = mt_mask_capacity(cols);
    bool hit;

    const mt_mask_seq *q = &seqs[0];
    if (n_seq == 1 && q->q_len == 1 && q->causal && q->kv_start == 0) {
        // A decode row: a view of the staircase, nothing written.
        MT_TRY(template_get(a, b, cap, &hit));
        slot *s = &a->tmpl[b];
        s->reuse += hit;
        s->t_used = mt_now_us();
        a->tmpl_lo = 0;
        a->tmpl_hi = q->q_pos + 1;
        *out = (mt_mask){.data = s->data + (s->cap - 1 - q->q_pos),
                         .lo = &a->tmpl_lo,
                         .hi = &a->tmpl_hi,
                         .rows = 1,
                         .cols = (int32_t)cols,
                         .ld = s->cap,
                         .bucket = b,
                         .from_template = true};
        count_access(a, "causal_row", b, hit, s->bytes);
        return MT_OK;
    }

    MT_TRY(scratch_get(a, b, cap, rows, &hit));
    slot *s = &a->scratch[b];
    s->reuse += hit;
    s->t_used = mt_now_us();
    int64_t r = 0;
    for (int i = 0; i < n_seq; i++) {
        q = &seqs[i];
        for (int32_t k = 0; k < q->q_len; k++, r++) {
            int32_t lo = q->kv_start, hi = q->kv_len;
            if (q->causal && q->q_pos + k + 1 < hi) hi = q->q_pos + k + 1;
            if (hi < lo) hi = lo;
            float *row = s->data + r * s->cap;
            for (int32_t j = 0; j < lo; j++) row[j] = -INFINITY;
            for (int32_t j = lo; j < hi; j++) row[j] = 0.0f;
            for (int64_t j = hi; j < cols; j++) row[j] = -INFINITY;
            s->lo[r] = lo;
            s->hi[r] = hi;
        }
    }
    *out = (mt_mask){.data = s->data,
                     .lo = s->lo,
                     .hi = s->hi,
                     .rows = (int32_t)rows,
                     .cols = (int32_t)cols,
                     .ld = s->cap,
                     .bucket = b,
                     .from_template = false};
    count_access(a, "scratch", b, hit, s->bytes);
    return MT_OK;
}

mt_status mt_mask_tensor(const mt_mask *m, mt_tensor *out) {
    int64_t ne[2] = {m->cols, m->rows};
    MT_TRY(mt_tensor_init(out, MT_F32, 2, ne, (void *)m->data));
    out->nb[1] = (size_t)m->ld * sizeof(float);
    for (int i = 2; i < MT_MAX_DIMS; i++) out->nb[i] = out->nb[1] * (size_t)m->rows;
    out->name = "mask";
    return MT_OK;
}

void mt_mask_arena_metrics(mt_mask_arena *a, mt_cache_metrics *m) {
    memset(m, 0, sizeof *m);
    snprintf(m->name, sizeof m->name, "%s", a->name);
    m->lookups = a->lookups;
    m->hits = a->hits;
    m->misses = a->misses;
    m->hit_rate = a->lookups ? (double)a->hits / (double)a->lookups : 0;
    m->capacity = 2 * MT_MASK_BUCKETS;
    uint64_t now = mt_now_us();
    bool first = true;
    const slot *lru = NULL, *mru = NULL;
    for (int i = 0; i < 2 * MT_MASK_BUCKETS; i++) {
        const slot *s = i < MT_MASK_BUCKETS ? &a->tmpl[i] : &a->scratch[i - MT_MASK_BUCKETS];
        if (!s->data) continue;
        m->size++;
        m->bytes += s->bytes;
        m->compiles += s->builds;
        double age = (double)(now - s->t_insert) / 1e3;
        if (first || age > m->oldest_age_ms) m->oldest_age_ms = age;
        if (first || age < m->newest_age_ms) m->newest_age_ms = age;
        if (s->reuse > m->max_reuse) m->max_reuse = s->reuse;
        if (!lru || s->t_used < lru->t_used) lru = s;
        if (!mru || s->t_used > mru->t_used) mru = s;
        first = false;
    }
    if (lru) m->lru_idle_ms = (double)(now - lru->t_used) / 1e3;
    if (mru) m->mru_idle_ms = (double)(now - mru->t_used) / 1e3;
}

int mt_mask_arena_entries(mt_mask_arena *a, mt_cache_entry_info *out, int max) {
    uint64_t now = mt_now_us();
    int n = 0;
    for (int i = 0; i < 2 * MT_MASK_BUCKETS; i++) {
        bool t = i < MT_MASK_BUCKETS;
        int b = t ? i : i - MT_MASK_BUCKETS;
        const slot *s = t ? &a->tmpl[b] : &a->scratch[b];
        if (!s->data) continue;
        if (n < max) {
            mt_cache_entry_info *o = &out[n];
            memset(o, 0, sizeof *o);
            snprintf(o->key, sizeof o->key, "%s/%s", t ? "causal_row" : "scratch", mt_mask_bucket_name(b));
            if (t)
                snprintf(o->label, sizeof o->label, "causal template, %lld keys", (long long)s->cap);
            else
                snprintf(o->label, sizeof o->label, "%lld rows x %lld keys", (long long)s->rows_cap,
                         (long long)s->cap);
            o->bytes = s->bytes;
            o->compile_count = s->builds;
            o->reuse_count = s->reuse;
            o->age_ms = (double)(now - s->t_insert) / 1e3;
            o->idle_ms = (double)(now - s->t_used) / 1e3;
        }
        n++;
    }
    return n;
}
