// The executable cache (LRU under a count and a byte budget, pinned entries never evicted), the
// process-wide list of caches, and the cache events shared with the mask arena.
#include "cache.h"

#include <errno.h>
#include <inttypes.h>
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "../core/metrics.h"

#define DEFAULT_CAPACITY 64
#define DEFAULT_BYTES ((size_t)1 << 30)

bool mt_exec_key_eq(const mt_exec_key *a, const mt_exec_key *b) {
    return a->signature == b->signature && a->rows_bucket == b->rows_bucket && a->kv_bucket == b->kv_bucket &&
           a->dtype_policy == b->dtype_policy && a->device == b->device;
}

void mt_exec_key_format(const mt_exec_key *k, char *buf, size_t cap) {
    char kv[16] = "none";
    if (k->kv_bucket >= 0) snprintf(kv, sizeof kv, "b%d", (int)k->kv_bucket);
    snprintf(buf, cap, "sig=%016" PRIx64 " rows=b%d kv=%s dtype=%u dev=%s", k->signature, (int)k->rows_bucket,
             kv, (unsigned)k->dtype_policy, k->device == MT_EXEC_CUDA ? "cuda" : "cpu");
}

// ---- events ----

void mt_cache_emit_access(const char *cache, const char *key, bool hit, size_t bytes,
                          const mt_cache_metrics *now) {
    if (!mt_metrics_enabled()) return;
    char k[256];
    mt_metrics_escape(key, k, sizeof k);
    mt_metrics_emitf("ResourceCacheAccess", "\"cache\":\"%s\",\"cache_key\":\"%s\",\"hit\":%s,\"bytes\":%zu",
                     cache, k, hit ? "true" : "false", bytes);
    if (now->lookups > 0 && now->lookups % 100 == 0)
        mt_metrics_emitf("ResourceCacheSummary",
                         "\"cache\":\"%s\",\"hits\":%" PRIu64 ",\"misses\":%" PRIu64
                         ",\"hit_rate\":%.4f,\"size\":%d,\"evictions\":%" PRIu64 ",\"bytes\":%zu",
                         cache, now->hits, now->misses, now->hit_rate, now->size, now->evictions, now->bytes);
}

// ---- the list of caches ----

#define MAX_CACHES 64
static pthread_mutex_t g_list_mu = PTHREAD_MUTEX_INITIALIZER;
static void *g_list[MAX_CACHES];
static const mt_cache_ops *g_list_ops[MAX_CACHES];
static int g_list_n;

void mt_cache_list_add(void *cache, const mt_cache_ops *ops) {
    pthread_mutex_lock(&g_list_mu);
    if (g_list_n < MAX_CACHES) { // past that a cache still works, it is only missing from dumps
        g_list[g_list_n] = cache;
        g_list_ops[g_list_n++] = ops;
    }
    pthread_mutex_unlock(&g_list_mu);
}

void mt_cache_list_remove(void *cache) {
    pthread_mutex_lock(&g_list_mu);
    for (int i = 0; i < g_list_n; i++)
        if (g_list[i] == cache) {
            memmove(&g_list[i], &g_list[i + 1], (size_t)(g_list_n - i - 1) * sizeof g_list[0]);
            memmove(&g_list_ops[i], &g_list_ops[i + 1], (size_t)(g_list_n - i - 1) * sizeof g_list_ops[0]);
            g_list_n--;
            break;
        }
    pthread_mutex_unlock(&g_list_mu);
}

int mt_cache_list(void **caches, const mt_cache_ops **ops, int max) {
    pthread_mutex_lock(&g_list_mu);
    int n = g_list_n;
    for (int i = 0; i < n && i < max; i++) {
        caches[i] = g_list[i];
        ops[i] = g_list_ops[i];
    }
    pthread_mutex_unlock(&g_list_mu);
    return n;
}

// ---- the executable cache ----

// An entry is also the handle given out while it is pinned.
struct mt_exec_handle {
    mt_exec_key key;
    mt_exec_value v;
    char label[64];
    uint32_t compile_count;
    double compile_ms;
    uint64_t reuse;
    uint64_t t_insert, t_used; // mt_now_us
    int pins;
    struct mt_exec_handle *prev, *next; // LRU order: head is the most recently used
};
typedef struct mt_exec_handle entry;

struct mt_exec_cache {
    char name[32];
    pthread_mutex_t mu;
    int capacity;
    size_t capacity_bytes;
    entry *head, *tail;
    int n, pinned;
    size_t bytes;
    uint64_t lookups, hits, misses, evictions, compiles, over_budget_hits;
    double compile_ms_total;
};

static void exec_metrics_cb(void *c, mt_cache_metrics *out) {
    mt_exec_cache_metrics((mt_exec_cache *)c, out);
}
static int exec_entries_cb(void *c, mt_cache_entry_info *out, int max) {
    return mt_exec_cache_entries((mt_exec_cache *)c, out, max);
}
static const mt_cache_ops exec_ops = {"exec", exec_metrics_cb, exec_entries_cb};

// A positive integer from the environment, with an optional K/M/G suffix (powers of 1024) when `sized`.
static mt_status env_size(const char *var, bool sized, uint64_t *out) {
    const char *s = getenv(var);
    *out = 0;
    if (!s || !*s) return MT_OK;
    char *end;
    errno = 0;
    if (*s == '-' || *s == '+') return mt_fail(MT_ERR_INVALID, "%s=%s: expected a positive integer", var, s);
    unsigned long long v = strtoull(s, &end, 10);
    unsigned shift = 0;
    if (sized && *end && !end[1]) {
        const char *suf = "KMG", *p = strchr(suf, *end == 'k' ? 'K' : *end);
        if (p && *p) shift = 10u * (unsigned)(p - suf + 1), end++;
    }
    if (end == s || *end || errno == ERANGE || v == 0 || (shift && v > (UINT64_MAX >> shift)) ||
        (!sized && v > 1000000))
        return mt_fail(MT_ERR_INVALID, "%s=%s: expected a positive integer%s", var, s,
                       sized ? " of bytes (suffix K, M or G allowed)" : " up to 1000000");
    *out = (uint64_t)v << shift;
    return MT_OK;
}

mt_status mt_exec_cache_check_env(void) {
    uint64_t v;
    MT_TRY(env_size("METALLIC_EXEC_CACHE_CAPACITY", false, &v));
    return env_size("METALLIC_EXEC_CACHE_BYTES", true, &v);
}

mt_status mt_exec_cache_create(const mt_exec_cache_opts *opts, mt_exec_cache **out) {
    *out = NULL;
    uint64_t cap = opts ? (uint64_t)(opts->capacity > 0 ? opts->capacity : 0) : 0;
    uint64_t cap_bytes = opts ? opts->capacity_bytes : 0;
    if (!cap) {
        MT_TRY(env_size("METALLIC_EXEC_CACHE_CAPACITY", false, &cap));
        if (!cap) cap = DEFAULT_CAPACITY;
    }
    if (!cap_bytes) {
        MT_TRY(env_size("METALLIC_EXEC_CACHE_BYTES", true, &cap_bytes));
        if (!cap_bytes) cap_bytes = DEFAULT_BYTES;
    }
    mt_exec_cache *c = mt_calloc(1, sizeof *c, "executable cache");
    if (!c) return MT_ERR_NOMEM;
    snprintf(c->name, sizeof c->name, "%s", opts && opts->name ? opts->name : "graph_exec");
    pthread_mutex_init(&c->mu, NULL);
    c->capacity = (int)cap;
    c->capacity_bytes = (size_t)cap_bytes;
    mt_cache_list_add(c, &exec_ops);
    *out = c;
    return MT_OK;
}

static void unlink_entry(mt_exec_cache *c, entry *e) {
    if (e->prev)
        e->prev->next = e->next;
    else
        c->head = e->next;
    if (e->next)
        e->next->prev = e->prev;
    else
        c->tail = e->prev;
    e->prev = e->next = NULL;
}

static void push_front(mt_exec_cache *c, entry *e) {
    e->prev = NULL;
    e->next = c->head;
    if (c->head) c->head->prev = e;
    c->head = e;
    if (!c->tail) c->tail = e;
}

static void destroy_entry(mt_exec_cache *c, entry *e) {
    unlink_entry(c, e);
    c->n--;
    c->bytes -= e->v.bytes;
    if (e->v.destroy) e->v.destroy(e->v.exe, e->v.destroy_ctx);
    free(e);
}

static bool over(const mt_exec_cache *c) {
    return c->n > c->capacity || c->bytes > c->capacity_bytes;
}

// Evicts least recently used unpinned entries until within both budgets (or only pinned ones are left).
static void evict(mt_exec_cache *c) {
    entry *e = c->tail;
    while (over(c) && e) {
        entry *prev = e->prev;
        if (!e->pins) {
            destroy_entry(c, e);
            c->evictions++;
        }
        e = prev;
    }
}

void mt_exec_cache_free(mt_exec_cache *c) {
    if (!c) return;
    mt_cache_list_remove(c);
    MT_ASSERT(c->pinned == 0);
    while (c->head) destroy_entry(c, c->head);
    pthread_mutex_destroy(&c->mu);
    free(c);
}

static entry *find(mt_exec_cache *c, const mt_exec_key *k) {
    for (entry *e = c->head; e; e = e->next)
        if (mt_exec_key_eq(&e->key, k)) return e;
    return NULL;
}

// Counters for the event, read under the lock.
static void light_metrics(const mt_exec_cache *c, mt_cache_metrics *m) {
    memset(m, 0, sizeof *m);
    m->lookups = c->lookups;
    m->hits = c->hits;
    m->misses = c->misses;
    m->evictions = c->evictions;
    m->hit_rate = c->lookups ? (double)c->hits / (double)c->lookups : 0;
    m->size = c->n;
    m->bytes = c->bytes;
}

mt_exec_handle *mt_exec_cache_acquire(mt_exec_cache *c, const mt_exec_key *k) {
    pthread_mutex_lock(&c->mu);
    entry *e = find(c, k);
    c->lookups++;
    if (e) {
        c->hits++;
        e->reuse++;
        if (!e->pins++) c->pinned++;
        e->t_used = mt_now_us();
        unlink_entry(c, e);
        push_front(c, e);
    } else {
        c->misses++;
    }
    if (mt_metrics_enabled()) {
        mt_cache_metrics m;
        light_metrics(c, &m);
        char key[128];
        mt_exec_key_format(k, key, sizeof key);
        mt_cache_emit_access(c->name, key, e != NULL, e ? e->v.bytes : 0, &m);
    }
    pthread_mutex_unlock(&c->mu);
    return e;
}

mt_status mt_exec_cache_insert(mt_exec_cache *c, const mt_exec_key *k, const mt_exec_value *v,
                               double compile_ms, mt_exec_handle **out) {
    *out = NULL;
    pthread_mutex_lock(&c->mu);
    entry *old = find(c, k);
    uint32_t compiles = 0;
    if (old) {
        if (old->pins) {
            pthread_mutex_unlock(&c->mu);
            char key[128];
            mt_exec_key_format(k, key, sizeof key);
            return mt_fail(MT_ERR_INVALID, "exec cache %s: replacing %s while it is in use", c->name, key);
        }
        compiles = old->compile_count;
        destroy_entry(c, old);
    }
    entry *e = calloc(1, sizeof *e);
    if (!e) {
        pthread_mutex_unlock(&c->mu);
        return mt_fail(MT_ERR_NOMEM, "exec cache %s: out of memory for an entry", c->name);
    }
    e->key = *k;
    e->v = *v;
    e->compile_count = compiles + 1;
    e->compile_ms = compile_ms;
    e->t_insert = e->t_used = mt_now_us();
    e->pins = 1;
    c->pinned++;
    push_front(c, e);
    c->n++;
    c->bytes += v->bytes;
    c->compiles++;
    c->compile_ms_total += compile_ms;
    evict(c);
    if (over(c)) c->over_budget_hits++;
    pthread_mutex_unlock(&c->mu);
    *out = e;
    return MT_OK;
}

void mt_exec_handle_set_label(mt_exec_cache *c, mt_exec_handle *h, const char *label) {
    pthread_mutex_lock(&c->mu);
    snprintf(h->label, sizeof h->label, "%s", label ? label : "");
    pthread_mutex_unlock(&c->mu);
}

void *mt_exec_handle_get(const mt_exec_handle *h) {
    return h->v.exe;
}

void mt_exec_cache_release(mt_exec_cache *c, mt_exec_handle *h) {
    pthread_mutex_lock(&c->mu);
    MT_ASSERT(h->pins > 0);
    if (!--h->pins) c->pinned--;
    if (over(c)) evict(c);
    pthread_mutex_unlock(&c->mu);
}

void mt_exec_cache_clear(mt_exec_cache *c) {
    pthread_mutex_lock(&c->mu);
    for (entry *e = c->head, *next; e; e = next) {
        next = e->next;
        if (!e->pins) {
            destroy_entry(c, e);
            c->evictions++;
        }
    }
    pthread_mutex_unlock(&c->mu);
}

void mt_exec_cache_metrics(mt_exec_cache *c, mt_cache_metrics *m) {
    pthread_mutex_lock(&c->mu);
    light_metrics(c, m);
    snprintf(m->name, sizeof m->name, "%s", c->name);
    m->compiles = c->compiles;
    m->pinned = c->pinned;
    m->capacity = c->capacity;
    m->capacity_bytes = c->capacity_bytes;
    m->over_budget = over(c);
    m->over_budget_hits = c->over_budget_hits;
    m->compile_ms_total = c->compile_ms_total;
    uint64_t now = mt_now_us();
    bool first = true;
    for (entry *e = c->head; e; e = e->next) {
        double age = (double)(now - e->t_insert) / 1e3;
        if (first || age > m->oldest_age_ms) m->oldest_age_ms = age;
        if (first || age < m->newest_age_ms) m->newest_age_ms = age;
        if (e->reuse > m->max_reuse) m->max_reuse = e->reuse;
        first = false;
    }
    if (c->head) m->mru_idle_ms = (double)(now - c->head->t_used) / 1e3;
    if (c->tail) m->lru_idle_ms = (double)(now - c->tail->t_used) / 1e3;
    pthread_mutex_unlock(&c->mu);
}

int mt_exec_cache_entries(mt_exec_cache *c, mt_cache_entry_info *out, int max) {
    pthread_mutex_lock(&c->mu);
    uint64_t now = mt_now_us();
    int i = 0;
    for (entry *e = c->head; e && i < max; e = e->next, i++) {
        mt_cache_entry_info *o = &out[i];
        memset(o, 0, sizeof *o);
        mt_exec_key_format(&e->key, o->key, sizeof o->key);
        snprintf(o->label, sizeof o->label, "%s", e->label);
        o->bytes = e->v.bytes;
        o->compile_count = e->compile_count;
        o->compile_ms = e->compile_ms;
        o->reuse_count = e->reuse;
        o->age_ms = (double)(now - e->t_insert) / 1e3;
        o->idle_ms = (double)(now - e->t_used) / 1e3;
        o->pins = e->pins;
    }
    int n = c->n;
    pthread_mutex_unlock(&c->mu);
    return n;
}

// ---- the shared cache ----

static pthread_mutex_t g_shared_mu = PTHREAD_MUTEX_INITIALIZER;
static mt_exec_cache *g_shared;

mt_exec_cache *mt_exec_cache_shared(void) {
    pthread_mutex_lock(&g_shared_mu);
    if (!g_shared) {
        mt_exec_cache_opts o = {.name = "graph_exec"};
        if (mt_exec_cache_create(&o, &g_shared) != MT_OK) g_shared = NULL;
    }
    mt_exec_cache *c = g_shared;
    pthread_mutex_unlock(&g_shared_mu);
    return c;
}

void mt_caches_shutdown(void) {
    pthread_mutex_lock(&g_shared_mu);
    mt_exec_cache_free(g_shared);
    g_shared = NULL;
    pthread_mutex_unlock(&g_shared_mu);
}
