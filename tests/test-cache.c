// Executable cache: hit/miss/eviction counting, LRU eviction by count and by bytes, pinned entries never
// evicted (over budget instead), replacement, per-entry statistics, the environment budgets, the events
// (ResourceCacheAccess per lookup, ResourceCacheSummary every 100) and the process-wide cache list.
#include <pthread.h>
#include <stdlib.h>
#include <string.h>

#include "core/metrics.h"
#include "exec/cache.h"
#include "harness.h"

// Fake executables record their destruction.
static int destroyed[256], n_destroyed;
static void destroy_exe(void *exe, void *ctx) {
    (void)ctx;
    destroyed[n_destroyed++ % 256] = *(int *)exe;
    free(exe);
}
static mt_exec_value value(int id, size_t bytes) {
    int *p = malloc(sizeof *p);
    *p = id;
    return (mt_exec_value){p, bytes, destroy_exe, NULL};
}
static mt_exec_key key(int i) {
    uint64_t h = mt_sig_add(mt_sig_init(), &i, sizeof i);
    return (mt_exec_key){
        .signature = h, .rows_bucket = i % 3, .kv_bucket = i % 2 ? -1 : 2, .dtype_policy = 1};
}
static mt_exec_cache *make(int cap, size_t bytes) {
    mt_exec_cache *c = NULL;
    mt_status s = mt_exec_cache_create(
        &(mt_exec_cache_opts){.name = "test_exec", .capacity = cap, .capacity_bytes = bytes}, &c);
    CHECK(s == MT_OK && c, "create: %s", mt_last_error());
    return c;
}
// Inserts and releases at once (a compile that ran and finished).
static void put(mt_exec_cache *c, int id, size_t bytes) {
    mt_exec_key k = key(id);
    mt_exec_handle *h = NULL;
    mt_exec_value v = value(id, bytes);
    CHECK(mt_exec_cache_insert(c, &k, &v, 1.5, &h) == MT_OK && h, "insert %d: %s", id, mt_last_error());
    if (h) mt_exec_cache_release(c, h);
}
static bool touch(mt_exec_cache *c, int id) {
    mt_exec_key k = key(id);
    mt_exec_handle *h = mt_exec_cache_acquire(c, &k);
    if (h) {
        CHECK(*(int *)mt_exec_handle_get(h) == id, "wrong executable for key %d", id);
        mt_exec_cache_release(c, h);
    }
    return h != NULL;
}

static void test_hits_misses(void) {
    mt_exec_cache *c = make(8, 1 << 20);
    CHECK(!touch(c, 1), "empty cache hit");
    put(c, 1, 100);
    CHECK(touch(c, 1) && touch(c, 1), "hit after insert");
    CHECK(!touch(c, 2), "other key");
    mt_exec_key k1 = key(1), k1b = k1;
    k1b.device = MT_EXEC_CUDA;
    CHECK(mt_exec_cache_acquire(c, &k1b) == NULL, "device is part of the key");
    k1b = k1;
    k1b.kv_bucket = 5;
    CHECK(mt_exec_cache_acquire(c, &k1b) == NULL, "kv bucket is part of the key");
    mt_cache_metrics m;
    mt_exec_cache_metrics(c, &m);
    CHECK(m.lookups == 6 && m.hits == 2 && m.misses == 4, "lookups %llu hits %llu misses %llu",
          (unsigned long long)m.lookups, (unsigned long long)m.hits, (unsigned long long)m.misses);
    CHECK(m.hit_rate > 0.333 && m.hit_rate < 0.334, "hit rate %f", m.hit_rate);
    CHECK(m.size == 1 && m.bytes == 100 && m.compiles == 1 && m.evictions == 0 && m.pinned == 0,
          "size %d bytes %zu", m.size, m.bytes);
    CHECK(!strcmp(m.name, "test_exec") && m.capacity == 8 && m.capacity_bytes == 1 << 20, "name/capacity");
    CHECK(m.max_reuse == 2 && m.compile_ms_total == 1.5, "reuse %llu", (unsigned long long)m.max_reuse);
    mt_exec_cache_free(c);
}

static void test_evict_by_count(void) {
    n_destroyed = 0;
    mt_exec_cache *c = make(3, 1 << 20);
    put(c, 10, 1);
    put(c, 11, 1);
    put(c, 12, 1);
    touch(c, 10); // 11 is now the least recently used
    put(c, 13, 1);
    CHECK(n_destroyed == 1 && destroyed[0] == 11, "evicted %d (%d destroyed), want 11", destroyed[0],
          n_destroyed);
    CHECK(!touch(c, 11) && touch(c, 10) && touch(c, 12) && touch(c, 13), "survivors");
    put(c, 14, 1); // LRU now 10
    CHECK(n_destroyed == 2 && destroyed[1] == 10, "second eviction %d", destroyed[1]);
    mt_cache_metrics m;
    mt_exec_cache_metrics(c, &m);
    CHECK(m.evictions == 2 && m.size == 3 && !m.over_budget, "evictions %llu size %d",
          (unsigned long long)m.evictions, m.size);
    mt_exec_cache_free(c);
    CHECK(n_destroyed == 5, "free destroys the rest (%d)", n_destroyed);
}

static void test_evict_by_bytes(void) {
    n_destroyed = 0;
    mt_exec_cache *c = make(100, 1000);
    put(c, 1, 400);
    put(c, 2, 400);
    put(c, 3, 400); // 1200 > 1000: the oldest goes
    mt_cache_metrics m;
    mt_exec_cache_metrics(c, &m);
    CHECK(n_destroyed == 1 && destroyed[0] == 1, "byte eviction destroyed %d", destroyed[0]);
    CHECK(m.bytes == 800 && m.size == 2 && m.evictions == 1, "bytes %zu", m.bytes);
    put(c, 4, 900); // needs both others gone
    mt_exec_cache_metrics(c, &m);
    CHECK(m.bytes == 900 && m.size == 1 && m.evictions == 3, "bytes %zu size %d", m.bytes, m.size);
    put(c, 5, 5000); // alone over the budget: kept while pinned, evicted on release
    mt_exec_cache_metrics(c, &m);
    CHECK(m.size == 0 && m.bytes == 0 && !m.over_budget && m.over_budget_hits == 1, "oversized: size %d",
          m.size);
    mt_exec_cache_free(c);
}

static void test_pinned_never_evicted(void) {
    n_destroyed = 0;
    mt_exec_cache *c = make(2, 1 << 20);
    mt_exec_handle *h[3];
    for (int i = 0; i < 3; i++) {
        mt_exec_key k = key(20 + i);
        mt_exec_value v = value(20 + i, 10);
        CHECK(mt_exec_cache_insert(c, &k, &v, 0, &h[i]) == MT_OK, "insert");
    }
    mt_cache_metrics m;
    mt_exec_cache_metrics(c, &m);
    CHECK(n_destroyed == 0, "a pinned executable was destroyed");
    CHECK(m.size == 3 && m.pinned == 3 && m.over_budget && m.over_budget_hits == 1,
          "size %d pinned %d over %d", m.size, m.pinned, m.over_budget);
    // A second acquisition of a pinned entry pins it twice.
    mt_exec_key k21 = key(21);
    mt_exec_handle *again = mt_exec_cache_acquire(c, &k21);
    CHECK(again == h[1], "same handle");
    mt_exec_cache_release(c, h[1]);
    CHECK(n_destroyed == 0, "still pinned once");
    mt_exec_cache_release(c, again); // 21 unpinned: the only candidate, evicted now
    CHECK(n_destroyed == 1 && destroyed[0] == 21, "evicted %d on release", destroyed[0]);
    mt_exec_cache_metrics(c, &m);
    CHECK(m.size == 2 && !m.over_budget && m.pinned == 2, "back within budget");
    // Replacing a pinned key is refused; an unpinned one is recompiled.
    mt_exec_key k20 = key(20);
    mt_exec_value v = value(99, 10);
    mt_exec_handle *hr = NULL;
    CHECK(mt_exec_cache_insert(c, &k20, &v, 0, &hr) == MT_ERR_INVALID && strstr(mt_last_error(), "in use"),
          "%s", mt_last_error());
    free(v.exe);
    mt_exec_cache_release(c, h[0]);
    mt_exec_cache_release(c, h[2]);
    v = value(100, 10);
    CHECK(mt_exec_cache_insert(c, &k20, &v, 2.0, &hr) == MT_OK, "recompile");
    mt_exec_handle_set_label(c, hr, "block_0: rmsnorm+matmul");
    mt_cache_entry_info e[4];
    int n = mt_exec_cache_entries(c, e, 4);
    CHECK(n == 2 && e[0].compile_count == 2 && e[0].pins == 1 && e[0].compile_ms == 2.0, "n %d count %u", n,
          e[0].compile_count);
    CHECK(!strcmp(e[0].label, "block_0: rmsnorm+matmul") && strstr(e[0].key, "sig=") && e[0].bytes == 10,
          "label %s", e[0].label);
    CHECK(*(int *)mt_exec_handle_get(hr) == 100 && destroyed[n_destroyed - 1] == 20,
          "old destroyed on replace");
    mt_exec_cache_release(c, hr);
    mt_exec_cache_clear(c);
    mt_exec_cache_metrics(c, &m);
    CHECK(m.size == 0 && m.bytes == 0, "clear");
    mt_exec_cache_free(c);
}

static void test_entry_stats(void) {
    mt_exec_cache *c = make(4, 1 << 20);
    put(c, 1, 64);
    put(c, 2, 32);
    for (int i = 0; i < 5; i++) touch(c, 1);
    mt_cache_entry_info e[4];
    CHECK(mt_exec_cache_entries(c, e, 4) == 2, "two entries");
    CHECK(e[0].reuse_count == 5 && e[1].reuse_count == 0, "reuse %llu %llu",
          (unsigned long long)e[0].reuse_count, (unsigned long long)e[1].reuse_count);
    CHECK(e[0].age_ms >= 0 && e[0].idle_ms <= e[0].age_ms + 1e-3 && e[0].compile_count == 1, "ages");
    CHECK(mt_exec_cache_entries(c, e, 1) == 2, "count beyond max");
    mt_cache_metrics m;
    mt_exec_cache_metrics(c, &m);
    CHECK(m.max_reuse == 5 && m.oldest_age_ms >= m.newest_age_ms && m.lru_idle_ms >= m.mru_idle_ms, "ages");
    char buf[128];
    mt_exec_key k = {
        .signature = 0xabcull, .rows_bucket = 3, .kv_bucket = -1, .dtype_policy = 2, .device = MT_EXEC_CUDA};
    mt_exec_key_format(&k, buf, sizeof buf);
    CHECK(!strcmp(buf, "sig=0000000000000abc rows=b3 kv=none dtype=2 dev=cuda"), "'%s'", buf);
    mt_exec_cache_free(c);
}

static void expect_env_error(const char *var, const char *val) {
    setenv(var, val, 1);
    mt_exec_cache *c = NULL;
    mt_status s = mt_exec_cache_create(NULL, &c);
    CHECK(s == MT_ERR_INVALID && !c, "%s=%s accepted", var, val);
    CHECK(strstr(mt_last_error(), var) && strstr(mt_last_error(), val), "message '%s'", mt_last_error());
    unsetenv(var);
}

static void test_env(void) {
    setenv("METALLIC_EXEC_CACHE_CAPACITY", "2", 1);
    setenv("METALLIC_EXEC_CACHE_BYTES", "3K", 1);
    mt_exec_cache *c = NULL;
    CHECK(mt_exec_cache_create(NULL, &c) == MT_OK, "%s", mt_last_error());
    mt_cache_metrics m;
    mt_exec_cache_metrics(c, &m);
    CHECK(m.capacity == 2 && m.capacity_bytes == 3072 && !strcmp(m.name, "graph_exec"), "cap %d bytes %zu",
          m.capacity, m.capacity_bytes);
    mt_exec_cache_free(c);
    // Options beat the environment.
    c = make(7, 7000);
    mt_exec_cache_metrics(c, &m);
    CHECK(m.capacity == 7 && m.capacity_bytes == 7000, "options");
    mt_exec_cache_free(c);
    unsetenv("METALLIC_EXEC_CACHE_CAPACITY");
    unsetenv("METALLIC_EXEC_CACHE_BYTES");
    CHECK(mt_exec_cache_create(NULL, &c) == MT_OK, "defaults");
    mt_exec_cache_metrics(c, &m);
    CHECK(m.capacity == 64 && m.capacity_bytes == (size_t)1 << 30, "defaults %d", m.capacity);
    mt_exec_cache_free(c);
    expect_env_error("METALLIC_EXEC_CACHE_CAPACITY", "abc");
    expect_env_error("METALLIC_EXEC_CACHE_CAPACITY", "0");
    expect_env_error("METALLIC_EXEC_CACHE_CAPACITY", "-4");
    expect_env_error("METALLIC_EXEC_CACHE_CAPACITY", "2M");
    expect_env_error("METALLIC_EXEC_CACHE_BYTES", "12Q");
    expect_env_error("METALLIC_EXEC_CACHE_BYTES", "99999999999999999999");
    expect_env_error("METALLIC_EXEC_CACHE_BYTES", "17179869184G");
}

static int count_lines(uint64_t *cur, const char *a, const char *b, char *last, size_t cap) {
    static char lines[1024][512];
    int n = mt_metrics_ring_read_since(cur, &lines[0][0], 1024, 512, NULL), hits = 0;
    for (int i = 0; i < n; i++)
        if (strstr(lines[i], a) && (!b || strstr(lines[i], b))) {
            hits++;
            if (last) {
                size_t l = strnlen(lines[i], cap - 1);
                memcpy(last, lines[i], l);
                last[l] = 0;
            }
        }
    return hits;
}

static void test_events(void) {
    uint64_t cur = 0;
    while (count_lines(&cur, "", NULL, NULL, 0) > 0) { // skip earlier cases' events
    }
    mt_exec_cache *c = make(4, 1 << 20);
    put(c, 1, 128);
    // 250 lookups: 1 in 5 misses.
    for (int i = 0; i < 250; i++) touch(c, i % 5 == 0 ? 1000 + i : 1);
    uint64_t c2 = cur, c3 = cur;
    CHECK(count_lines(&cur, "\"ResourceCacheAccess\"", "\"cache\":\"test_exec\"", NULL, 0) == 250,
          "access events");
    CHECK(count_lines(&c2, "\"ResourceCacheAccess\"", "\"hit\":true,\"bytes\":128", NULL, 0) == 200,
          "hit events");
    char last[512] = "";
    CHECK(count_lines(&c3, "\"ResourceCacheSummary\"", "\"cache\":\"test_exec\"", last, sizeof last) == 2,
          "a summary every 100 lookups");
    CHECK(strstr(last, "\"hits\":160,\"misses\":40,\"hit_rate\":0.8000,\"size\":1"), "summary '%s'", last);
    mt_exec_cache_free(c);
}

static void test_list_and_shared(void) {
    void *caches[64];
    const mt_cache_ops *ops[64];
    int before = mt_cache_list(caches, ops, 64);
    mt_exec_cache *c = make(4, 1 << 20);
    int n = mt_cache_list(caches, ops, 64);
    CHECK(n == before + 1 && caches[n - 1] == c && !strcmp(ops[n - 1]->kind, "exec"), "listed");
    put(c, 1, 50);
    mt_cache_metrics m;
    ops[n - 1]->metrics(caches[n - 1], &m);
    mt_cache_entry_info e[2];
    CHECK(m.size == 1 && ops[n - 1]->entries(caches[n - 1], e, 2) == 1 && e[0].bytes == 50,
          "through the ops");
    mt_exec_cache_free(c);
    CHECK(mt_cache_list(caches, ops, 64) == before, "removed on free");
    mt_exec_cache *s = mt_exec_cache_shared();
    CHECK(s && s == mt_exec_cache_shared(), "one shared cache");
    mt_exec_cache_metrics(s, &m);
    CHECK(!strcmp(m.name, "graph_exec"), "shared name %s", m.name);
    mt_caches_shutdown();
    CHECK(mt_cache_list(caches, ops, 64) == before, "shutdown frees the shared cache");
}

// Two threads hammering a small cache: counts add up and nothing pinned is destroyed under a user.
static mt_exec_cache *g_tc;
static void *worker(void *arg) {
    int base = *(int *)arg;
    for (int i = 0; i < 2000; i++) {
        int id = base + i % 7;
        mt_exec_key k = key(id);
        mt_exec_handle *h = mt_exec_cache_acquire(g_tc, &k);
        if (!h) {
            mt_exec_value v = value(id, 8);
            if (mt_exec_cache_insert(g_tc, &k, &v, 0, &h) !=
                MT_OK) { // the other thread holds it: retry later
                free(v.exe);
                continue;
            }
        }
        if (*(int *)mt_exec_handle_get(h) != id) return (void *)1;
        mt_exec_cache_release(g_tc, h);
    }
    return NULL;
}

static void test_threads(void) {
    g_tc = make(5, 1 << 20);
    int b0 = 0, b1 = 3; // overlapping ids
    pthread_t t0, t1;
    pthread_create(&t0, NULL, worker, &b0);
    pthread_create(&t1, NULL, worker, &b1);
    void *r0, *r1;
    pthread_join(t0, &r0);
    pthread_join(t1, &r1);
    CHECK(!r0 && !r1, "a handle pointed at the wrong executable");
    mt_cache_metrics m;
    mt_exec_cache_metrics(g_tc, &m);
    CHECK(m.lookups == 4000 && m.hits + m.misses == 4000 && m.size <= 5 && m.pinned == 0,
          "lookups %llu size %d", (unsigned long long)m.lookups, m.size);
    mt_exec_cache_free(g_tc);
}

int main(void) {
    unsetenv("METALLIC_EXEC_CACHE_CAPACITY");
    unsetenv("METALLIC_EXEC_CACHE_BYTES");
    mt_metrics_ring_enable(4096);
    RUN(test_hits_misses);
    RUN(test_evict_by_count);
    RUN(test_evict_by_bytes);
    RUN(test_pinned_never_evicted);
    RUN(test_entry_stats);
    RUN(test_env);
    RUN(test_events);
    RUN(test_list_and_shared);
    RUN(test_threads);
    return th_summary();
}
