// Mask arena: buckets, mask contents against an independent definition (random batches: padding, left
// padding, causal and non-causal), reuse across a 4,200-step decode stream and across prefills, invalid
// requests, the tensor view, metrics and events.
#include <math.h>
#include <stdlib.h>
#include <string.h>

#include "core/metrics.h"
#include "exec/mask.h"
#include "harness.h"

static uint64_t rng = 0x9E3779B97F4A7C15ull;
static int rnd(int n) { // [0, n)
    rng ^= rng << 13;
    rng ^= rng >> 7;
    rng ^= rng << 17;
    return (int)(rng % (uint64_t)n);
}

static mt_mask_arena *make(const char *name) {
    mt_mask_arena *a = NULL;
    CHECK(mt_mask_arena_create(name, &a) == MT_OK && a, "create");
    return a;
}

static void test_buckets(void) {
    static const struct {
        int64_t len;
        int bucket;
        int64_t cap;
    } cases[] = {{1, 0, 32},      {32, 0, 32},     {33, 1, 128},     {128, 1, 128},
                 {129, 2, 512},   {512, 2, 512},   {513, 3, 1024},   {1024, 3, 1024},
                 {1025, 4, 2048}, {2048, 4, 2048}, {2049, 5, 4096},  {4096, 5, 4096},
                 {4097, 6, 8192}, {8192, 6, 8192}, {8193, 6, 12288}, {32768, 6, 32768}};
    for (size_t i = 0; i < sizeof cases / sizeof cases[0]; i++) {
        CHECK(mt_mask_bucket(cases[i].len) == cases[i].bucket, "len %lld bucket %d", (long long)cases[i].len,
              mt_mask_bucket(cases[i].len));
        CHECK(mt_mask_capacity(cases[i].len) == cases[i].cap, "len %lld capacity %lld",
              (long long)cases[i].len, (long long)mt_mask_capacity(cases[i].len));
    }
    CHECK(!strcmp(mt_mask_bucket_name(0), "le32") && !strcmp(mt_mask_bucket_name(6), "gt4096"), "names");
    CHECK(mt_mask_bucket_limit(5) == 4096 && mt_mask_bucket_limit(6) > 1000000000, "limits");
}

// The definition: key j is visible to row r of sequence q when kv_start <= j < kv_len and, if causal,
// j <= q_pos + r.
static bool visible(const mt_mask_seq *q, int r, int j) {
    return j >= q->kv_start && j < q->kv_len && (!q->causal || j <= q->q_pos + r);
}

static int check_mask(const mt_mask *m, const mt_mask_seq *seqs, int n_seq) {
    int bad = 0, row = 0, cols = 0;
    for (int s = 0; s < n_seq; s++)
        if (seqs[s].kv_len > cols) cols = seqs[s].kv_len;
    CHECK(m->cols == cols, "cols %d want %d", m->cols, cols);
    CHECK(m->ld >= m->cols && m->bucket == mt_mask_bucket(cols), "ld %lld bucket %d", (long long)m->ld,
          m->bucket);
    for (int s = 0; s < n_seq; s++)
        for (int r = 0; r < seqs[s].q_len; r++, row++) {
            const float *x = mt_mask_row(m, row);
            int lo = -1, hi = -1;
            for (int j = 0; j < cols; j++) {
                bool v = visible(&seqs[s], r, j);
                if (v && lo < 0) lo = j;
                if (v) hi = j + 1;
                if (v ? x[j] != 0.0f : !(isinf(x[j]) && x[j] < 0)) bad++;
            }
            if (lo < 0) lo = hi = m->lo[row]; // nothing visible: any empty interval
            if (m->lo[row] != lo || m->hi[row] != hi) bad++;
        }
    CHECK(row == m->rows, "rows %d want %d", m->rows, row);
    return bad;
}

static void test_contents_random(void) {
    mt_mask_arena *a = make("test_masks");
    for (int it = 0; it < 300; it++) {
        mt_mask_seq seqs[4];
        int n = 1 + rnd(4);
        for (int s = 0; s < n; s++) {
            mt_mask_seq *q = &seqs[s];
            q->causal = rnd(2);
            q->kv_len = 1 + rnd(it < 250 ? 300 : 5000);
            q->q_len = 1 + rnd(q->kv_len < 40 ? q->kv_len : 40);
            q->q_pos = q->causal ? rnd(q->kv_len - q->q_len + 1) : 0;
            q->kv_start = rnd(4) == 0 ? rnd(q->kv_len + 1) : 0;
        }
        mt_mask m;
        mt_status st = mt_mask_get(a, seqs, n, &m);
        CHECK(st == MT_OK, "get: %s", mt_last_error());
        if (st != MT_OK) break;
        int bad = check_mask(&m, seqs, n);
        CHECK(bad == 0, "iteration %d: %d wrong values", it, bad);
        if (bad) break;
    }
    mt_mask_arena_free(a);
}

// A decode stream: one causal row per step, KV length growing. Within a bucket the template is reused
// (a hit, nothing written); each bucket is built once.
static void test_decode_stream(void) {
    mt_mask_arena *a = make("test_masks");
    const float *base[MT_MASK_BUCKETS] = {0};
    int bad = 0, wrong_base = 0, not_template = 0;
    for (int t = 0; t < 4200; t++) {
        mt_mask_seq q = {.q_len = 1, .kv_len = t + 1, .q_pos = t, .causal = true};
        mt_mask m;
        if (mt_mask_get(a, &q, 1, &m) != MT_OK) {
            CHECK(0, "step %d: %s", t, mt_last_error());
            break;
        }
        not_template += !m.from_template;
        const float *row0 = m.data + q.q_pos; // the template start is data - (cap-1-pos): row 0 of the bucket
        if (!base[m.bucket]) base[m.bucket] = row0;
        wrong_base += base[m.bucket] != row0;
        if (t % 97 == 0 || t < 40)
            bad += check_mask(&m, &q, 1);
        else
            bad += m.lo[0] != 0 || m.hi[0] != t + 1 || m.data[t] != 0.0f || m.data[0] != 0.0f;
    }
    CHECK(bad == 0 && wrong_base == 0 && not_template == 0, "bad %d, moved %d, not template %d", bad,
          wrong_base, not_template);
    mt_cache_metrics m;
    mt_mask_arena_metrics(a, &m);
    CHECK(m.lookups == 4200 && m.misses == 7 && m.hits == 4193, "lookups %llu misses %llu",
          (unsigned long long)m.lookups, (unsigned long long)m.misses);
    CHECK(m.size == 7 && m.compiles == 7, "one template per bucket: size %d", m.size);
    // A row that does not see the newest keys (q_pos < kv_len - 1): -inf past its position.
    mt_mask_seq q = {.q_len = 1, .kv_len = 20, .q_pos = 9, .causal = true};
    mt_mask mk;
    CHECK(mt_mask_get(a, &q, 1, &mk) == MT_OK && mk.from_template && check_mask(&mk, &q, 1) == 0,
          "short row");
    mt_mask_arena_free(a);
}

static void test_scratch_reuse(void) {
    mt_mask_arena *a = make("test_masks");
    mt_mask_seq q = {.q_len = 100, .kv_len = 100, .causal = true};
    mt_mask m1, m2, m3;
    CHECK(mt_mask_get(a, &q, 1, &m1) == MT_OK && !m1.from_template, "prefill");
    q.q_len = q.kv_len = 90;
    CHECK(mt_mask_get(a, &q, 1, &m2) == MT_OK && m2.data == m1.data && check_mask(&m2, &q, 1) == 0,
          "reused buffer");
    mt_mask_seq b[2] = {{.q_len = 100, .kv_len = 120, .q_pos = 20, .causal = true},
                        {.q_len = 100, .kv_len = 50}};
    CHECK(mt_mask_get(a, b, 2, &m3) == MT_OK && check_mask(&m3, b, 2) == 0, "grown for 200 rows");
    mt_cache_metrics m;
    mt_mask_arena_metrics(a, &m);
    CHECK(m.hits == 1 && m.misses == 2 && m.size == 1 && m.compiles == 2, "hits %llu misses %llu size %d",
          (unsigned long long)m.hits, (unsigned long long)m.misses, m.size);
    CHECK(m.bytes == 200 * 128 * 4 + 2 * 200 * 4, "bytes %zu", m.bytes);
    mt_cache_entry_info e[4];
    CHECK(mt_mask_arena_entries(a, e, 4) == 1 && !strcmp(e[0].key, "scratch/le128") &&
              e[0].reuse_count == 1 && e[0].compile_count == 2,
          "entry %s", e[0].key);
    // The tensor view of a mask.
    mt_tensor t;
    CHECK(mt_mask_tensor(&m3, &t) == MT_OK, "%s", mt_last_error());
    CHECK(t.dtype == MT_F32 && t.ne[0] == 120 && t.ne[1] == 200 && t.nb[1] == 128 * 4, "tensor shape");
    CHECK(mt_tensor_row(&t, 150, 0, 0) == (const void *)mt_mask_row(&m3, 150), "tensor rows");
    mt_mask_arena_free(a);
}

static void expect_invalid(mt_mask_arena *a, const mt_mask_seq *q, int n, const char *needle) {
    mt_mask m;
    mt_status s = mt_mask_get(a, q, n, &m);
    CHECK(s == MT_ERR_INVALID, "accepted (%s)", needle);
    CHECK(strstr(mt_last_error(), needle), "message '%s' lacks '%s'", mt_last_error(), needle);
}

static void test_invalid(void) {
    mt_mask_arena *a = make("test_masks");
    expect_invalid(a, &(mt_mask_seq){.q_len = 0, .kv_len = 4}, 1, "q_len 0");
    expect_invalid(a, &(mt_mask_seq){.q_len = 1, .kv_len = 0}, 1, "kv_len 0");
    expect_invalid(a, &(mt_mask_seq){.q_len = 1, .kv_len = 4, .kv_start = 5}, 1, "kv_start 5");
    expect_invalid(a, &(mt_mask_seq){.q_len = 3, .kv_len = 4, .q_pos = 2, .causal = true}, 1,
                   "past kv_len 4");
    mt_mask_seq two[2] = {{.q_len = 1, .kv_len = 4}, {.q_len = 1, .kv_len = 4, .q_pos = -1, .causal = true}};
    expect_invalid(a, two, 2, "sequence 1");
    expect_invalid(a, two, 0, "0 sequences");
    mt_mask m;
    mt_mask_seq huge = {.q_len = 100000, .kv_len = 100000, .causal = true};
    CHECK(mt_mask_get(a, &huge, 1, &m) == MT_ERR_NOMEM && strstr(mt_last_error(), "exceeds"), "%s",
          mt_last_error());
    mt_cache_metrics mm;
    mt_mask_arena_metrics(a, &mm);
    CHECK(mm.size == 0 && mm.lookups == 0, "failed requests hold nothing");
    mt_mask_arena_free(a);
}

static void test_events_and_list(void) {
    char(*lines)[512] = malloc(1024 * 512);
    uint64_t cur = 0;
    while (mt_metrics_ring_read_since(&cur, &lines[0][0], 1024, 512, NULL) >
           0) { // skip earlier cases' events
    }
    void *caches[64];
    const mt_cache_ops *ops[64];
    int before = mt_cache_list(caches, ops, 64);
    mt_mask_arena *a = make("test_masks_ev");
    int n = mt_cache_list(caches, ops, 64);
    CHECK(n == before + 1 && caches[n - 1] == a && !strcmp(ops[n - 1]->kind, "mask"), "listed");
    for (int t = 0; t < 150; t++) {
        mt_mask_seq q = {.q_len = 1, .kv_len = t + 1, .q_pos = t, .causal = true};
        mt_mask m;
        mt_mask_get(a, &q, 1, &m);
    }
    int got = mt_metrics_ring_read_since(&cur, &lines[0][0], 1024, 512, NULL), access = 0, miss32 = 0,
        summaries = 0;
    const char *summary = "";
    for (int i = 0; i < got; i++) {
        if (!strstr(lines[i], "\"cache\":\"test_masks_ev\"")) continue;
        if (strstr(lines[i], "\"ResourceCacheAccess\"")) access++;
        if (strstr(lines[i], "\"cache_key\":\"causal_row/le32\",\"hit\":false")) miss32++;
        if (strstr(lines[i], "\"ResourceCacheSummary\"")) summaries++, summary = lines[i];
    }
    CHECK(access == 150 && miss32 == 1 && summaries == 1, "access %d miss32 %d summaries %d", access, miss32,
          summaries);
    CHECK(strstr(summary, "\"hits\":98,\"misses\":2"), "summary '%s'", summary);
    mt_cache_metrics m;
    ops[n - 1]->metrics(caches[n - 1], &m);
    CHECK(m.lookups == 150 && !strcmp(m.name, "test_masks_ev"), "metrics through the list");
    mt_mask_arena_free(a);
    CHECK(mt_cache_list(caches, ops, 64) == before, "removed");
    free(lines);
}

int main(void) {
    mt_metrics_ring_enable(4096);
    RUN(test_buckets);
    RUN(test_contents_random);
    RUN(test_decode_stream);
    RUN(test_scratch_reuse);
    RUN(test_invalid);
    RUN(test_events_and_list);
    return th_summary();
}
