// The mask arena: attention masks by size bucket, built once per bucket and reused across steps.
//
// A mask is F32 and additive: 0 where a query may attend a key, -INFINITY where it may not. Layout in
// the tensor convention [kv, rows]: row r (one query token) holds `cols` floats, key j at
// mt_mask_row(m, r)[j]; the row stride `ld` is the bucket's capacity, so a mask keeps its buffer while
// its length grows inside a bucket. Every row also carries its compact form, the visible interval of keys
// [lo[r], hi[r]) (every mask here is an interval: causal, padding, left padding, non-causal), so a kernel
// can loop over the visible keys only and skip the dense row entirely.
//
// A request is a batch of sequences, their query rows stacked in order (sequence 0's rows first); each
// sequence has its own KV length (shorter ones are padded out to the widest: -inf past their end), start
// (left padding), and causal or not. Causal: row r of a sequence sits at position q_pos + r and sees keys
// kv_start .. q_pos + r.
//
// Reuse: a single causal decode row (one sequence, one query, kv_start 0) is a view into a per-bucket
// template built once, so a decode stream writes nothing while its length stays inside a bucket; every
// other mask is written into a per-bucket scratch buffer that is kept and grown, never freed per step.
// A mask stays valid until the next mt_mask_get on the same arena for the same bucket.
//
// Buckets (by columns, i.e. KV length): <=32, <=128, <=512, <=1024, <=2048, <=4096, >4096 (capacity
// rounded up to a multiple of 4096). The same buckets give the KV-length bucket of executables.
//
// Telemetry as the executable cache (cache.h): ResourceCacheAccess per request (cache "mask_arena", key
// "causal_row/le128" or "scratch/le512"), a ResourceCacheSummary every 100. Not thread-safe: one arena per
// session (executor).
#ifndef MT_MASK_H
#define MT_MASK_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "../core/status.h"
#include "../core/tensor.h"
#include "cache.h"

#define MT_MASK_BUCKETS 7

// Bucket index of a length (>= 0): 0 for <= 32 ... 6 for > 4096.
int mt_mask_bucket(int64_t len);
// Largest length of bucket b (INT32_MAX-ish for the last one) and its name ("le32" ... "gt4096").
int64_t mt_mask_bucket_limit(int b);
const char *mt_mask_bucket_name(int b);
// Buffer capacity for a length: its bucket's limit, or for > 4096 the length rounded up to 4096s.
int64_t mt_mask_capacity(int64_t len);

typedef struct mt_mask_seq {
    int32_t q_len;    // query rows (>= 1)
    int32_t kv_len;   // keys 0 .. kv_len-1 exist (>= 1)
    int32_t q_pos;    // causal: position of the first row (row r sees keys <= q_pos + r)
    int32_t kv_start; // keys before this are masked (left padding), 0 usually
    bool causal;
} mt_mask_seq;

typedef struct mt_mask {
    const float *data;  // row r at data + r * ld
    const int32_t *lo;  // [rows] first visible key
    const int32_t *hi;  // [rows] one past the last visible key (lo == hi: the row sees nothing)
    int32_t rows, cols; // cols = the widest kv_len of the batch
    int64_t ld;         // row stride in floats (the bucket capacity, >= cols)
    int bucket;         // mt_mask_bucket(cols)
    bool from_template; // a view of the causal template (nothing written for this request)
} mt_mask;

static inline const float *mt_mask_row(const mt_mask *m, int64_t r) {
    return m->data + r * m->ld;
}

typedef struct mt_mask_arena mt_mask_arena;

// name: for events and dumps (copied; NULL = "mask_arena"). Adds the arena to the process-wide cache list.
mt_status mt_mask_arena_create(const char *name, mt_mask_arena **out);
void mt_mask_arena_free(mt_mask_arena *a);

// Builds (or views) the mask of a batch. Invalid requests (lengths < 1, kv_start > kv_len, a causal row
// past the keys: q_pos + q_len > kv_len) are MT_ERR_INVALID naming the sequence and values; buffer growth
// that fails is MT_ERR_NOMEM.
mt_status mt_mask_get(mt_mask_arena *a, const mt_mask_seq *seqs, int n_seq, mt_mask *out);

// An F32 tensor view [cols, rows] of the mask (nb[1] = ld * 4): for graph nodes that take a mask input.
mt_status mt_mask_tensor(const mt_mask *m, mt_tensor *out);

void mt_mask_arena_metrics(mt_mask_arena *a, mt_cache_metrics *out);
int mt_mask_arena_entries(mt_mask_arena *a, mt_cache_entry_info *out, int max);

#endif
