// The executable cache: compiled graph-path executables (CPU plans, CUDA graphs) kept by key and reused
// across steps, plus the process-wide list of caches that `metallic cache-dump` and the dashboard read.
//
// An executable is opaque to the cache: a pointer, its size in bytes and a destroy callback. The key is
// (segment signature, shape bucket, dtype policy, device). Entries are kept in LRU order under two
// budgets, a count and a byte total (env METALLIC_EXEC_CACHE_CAPACITY, METALLIC_EXEC_CACHE_BYTES, or the
// options). An acquired executable is pinned and never evicted until released. If everything is pinned
// an insertion still succeeds: the cache runs over budget (mt_cache_metrics.over_budget, and the
// over_budget counter) and evicts down to its budgets as soon as entries are released.
//
// Telemetry: each lookup emits ResourceCacheAccess {"cache","cache_key","hit","bytes"}; every 100
// lookups a ResourceCacheSummary {"cache","hits","misses","hit_rate","size","evictions","bytes"}.
//
//   mt_exec_handle *h = mt_exec_cache_acquire(c, &key);
//   if (!h) MT_TRY(mt_exec_cache_insert(c, &key, &(mt_exec_value){exe, bytes, destroy, ctx}, ms, &h));
//   run(mt_exec_handle_get(h));
//   mt_exec_cache_release(c, h);
//
// Thread-safe (one mutex per cache); the executable itself is the caller's to synchronize.
#ifndef MT_EXEC_CACHE_H
#define MT_EXEC_CACHE_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "../core/status.h"

// ---- keys ----

typedef struct mt_exec_key {
    uint64_t signature;    // hash of the segment: op sequence, dtypes, fusions (mt_sig_* below)
    int32_t rows_bucket;   // token-count bucket of the segment
    int32_t kv_bucket;     // KV-length bucket (mt_mask_bucket), -1 when the segment has no attention
    uint32_t dtype_policy; // storage/accumulator policy id, the compiler's own numbering
    int32_t device;        // 0 = CPU, 1 = CUDA (mt_exec_device)
} mt_exec_key;

enum mt_exec_device { MT_EXEC_CPU = 0, MT_EXEC_CUDA = 1 };

// FNV-1a 64 for building signatures: h = mt_sig_init(); h = mt_sig_add(h, &x, sizeof x); ...
static inline uint64_t mt_sig_init(void) {
    return 0xcbf29ce484222325ull;
}
static inline uint64_t mt_sig_add(uint64_t h, const void *p, size_t n) {
    const unsigned char *b = (const unsigned char *)p;
    for (size_t i = 0; i < n; i++) h = (h ^ b[i]) * 0x100000001b3ull;
    return h;
}
bool mt_exec_key_eq(const mt_exec_key *a, const mt_exec_key *b);
// "sig=0123456789abcdef rows=b32 kv=b128 dtype=1 dev=cpu" into buf (always NUL-terminated).
void mt_exec_key_format(const mt_exec_key *k, char *buf, size_t cap);

// ---- shared statistics types (executable cache and mask arena) ----

// CacheMetricsSnapshot: one cache's counters at a moment.
typedef struct mt_cache_metrics {
    char name[32];
    uint64_t lookups, hits, misses, evictions, compiles;
    double hit_rate; // hits / lookups, 0 when none
    int size;        // entries held
    int pinned;      // entries acquired now
    size_t bytes;    // bytes held
    int capacity;    // count budget
    size_t capacity_bytes;
    bool over_budget;          // holding more than a budget allows (everything over it pinned)
    uint64_t over_budget_hits; // insertions that left the cache over budget
    double compile_ms_total;
    double oldest_age_ms, newest_age_ms; // since insertion, over the entries held (0 when empty)
    double lru_idle_ms, mru_idle_ms;     // since last use of the least/most recently used entry
    uint64_t max_reuse;                  // largest reuse count of an entry held
} mt_cache_metrics;

// One entry, for dumps.
typedef struct mt_cache_entry_info {
    char key[128];  // printable key
    char label[64]; // what it is (segment description, mask kind), may be ""
    size_t bytes;
    uint32_t compile_count; // times this key was compiled/built (re-insertions included)
    double compile_ms;      // last compile
    uint64_t reuse_count;   // hits on this entry
    double age_ms;          // since insertion
    double idle_ms;         // since last use
    int pins;               // current acquisitions
} mt_cache_entry_info;

// ---- the executable cache ----

typedef struct mt_exec_cache mt_exec_cache;
typedef struct mt_exec_handle mt_exec_handle; // a pinned entry

typedef void (*mt_exec_destroy_fn)(void *exe, void *ctx);

typedef struct mt_exec_value {
    void *exe;
    size_t bytes;               // counted against the byte budget
    mt_exec_destroy_fn destroy; // may be NULL
    void *destroy_ctx;
} mt_exec_value;

typedef struct mt_exec_cache_opts {
    const char *name;      // for events and dumps, e.g. "graph_exec" (copied)
    int capacity;          // entries; 0 = METALLIC_EXEC_CACHE_CAPACITY or 64
    size_t capacity_bytes; // 0 = METALLIC_EXEC_CACHE_BYTES or 1 GiB
} mt_exec_cache_opts;

// Creates a cache and adds it to the process-wide list. A bad environment value is MT_ERR_INVALID naming
// the variable and value.
mt_status mt_exec_cache_create(const mt_exec_cache_opts *opts, mt_exec_cache **out);
// Checks METALLIC_EXEC_CACHE_CAPACITY and METALLIC_EXEC_CACHE_BYTES (MT_ERR_INVALID naming a bad one), so a
// command line can refuse them up front rather than when the first cache is created.
mt_status mt_exec_cache_check_env(void);
// Destroys every executable and removes the cache from the list. Nothing may be pinned (asserted).
void mt_exec_cache_free(mt_exec_cache *c);

// Looks the key up. Hit: the entry is pinned, its reuse count grows, the handle is returned. Miss: NULL.
mt_exec_handle *mt_exec_cache_acquire(mt_exec_cache *c, const mt_exec_key *k);
// Adds a freshly compiled executable (compile_ms: how long the compile took), pinned, and returns its
// handle. Replacing an existing unpinned key destroys the old executable and counts a recompile; a pinned
// one is MT_ERR_INVALID. Evicts least recently used unpinned entries to stay within the budgets.
mt_status mt_exec_cache_insert(mt_exec_cache *c, const mt_exec_key *k, const mt_exec_value *v,
                               double compile_ms, mt_exec_handle **out);
// Optional label shown by dumps ("block_3: rmsnorm+matmul(qkv)+rope+kv_write", copied, truncated).
void mt_exec_handle_set_label(mt_exec_cache *c, mt_exec_handle *h, const char *label);
void *mt_exec_handle_get(const mt_exec_handle *h);
// Unpins; then evicts if the cache was over budget.
void mt_exec_cache_release(mt_exec_cache *c, mt_exec_handle *h);
// Drops every unpinned entry (counted as evictions).
void mt_exec_cache_clear(mt_exec_cache *c);

void mt_exec_cache_metrics(mt_exec_cache *c, mt_cache_metrics *out);
// Copies up to max entries, most recently used first; returns the number held.
int mt_exec_cache_entries(mt_exec_cache *c, mt_cache_entry_info *out, int max);

// A process-wide cache named "graph_exec", created on first use from the environment (NULL and the
// status in mt_last_error() on a bad variable). Freed at exit by mt_caches_shutdown().
mt_exec_cache *mt_exec_cache_shared(void);

// ---- the process-wide list of caches ----

typedef struct mt_cache_ops {
    const char *kind; // "exec" | "mask"
    void (*metrics)(void *cache, mt_cache_metrics *out);
    int (*entries)(void *cache, mt_cache_entry_info *out, int max);
} mt_cache_ops;

// Registered caches (creation order). Each create/free call adds/removes itself; other cache kinds may too.
void mt_cache_list_add(void *cache, const mt_cache_ops *ops);
void mt_cache_list_remove(void *cache);
// Copies up to max (cache, ops) pairs; returns how many there are.
int mt_cache_list(void **caches, const mt_cache_ops **ops, int max);
// Frees the shared executable cache (call before exit, after every handle is released).
void mt_caches_shutdown(void);

// The counters helper both cache kinds use for their events: a lookup's ResourceCacheAccess, and a
// ResourceCacheSummary when lookups reaches a multiple of 100.
void mt_cache_emit_access(const char *cache, const char *key, bool hit, size_t bytes,
                          const mt_cache_metrics *now);

#endif
