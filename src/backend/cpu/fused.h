// Fused CPU kernels of the graph path. Each one does a caller-chosen share of its work (a row range, a
// token range or thread ith of nth) so the graph executor can run a whole fused sequence inside one
// parallel region, with its own barrier between dependent stages.
//
// Attention (mt_cpu_sdpa) reads K and V in the cache layout [hd, n_kv, L, n_seq] in place: one work item
// is (query token, KV head) and all query heads of that KV head's group are scored while each K/V row is
// in L1, so grouped-query attention reads every K/V row once per token instead of once per query head.
// No head is ever repeated or copied.
#ifndef MT_CPU_FUSED_H
#define MT_CPU_FUSED_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "../../exec/op.h"

typedef struct mt_sdpa_args {
    const mt_tensor *q; // [hd, n_head, n_q, B] F32 (cache mode: [hd, n_head, n])
    const mt_tensor *k; // [hd, n_kv, L, n_seq] F32, rows read in place
    const mt_tensor *v; // same shape as k
    mt_tensor *dst;     // same shape as q
    // Cache mode (pos != NULL): token t sees keys 0..pos[t] of sequence seq[t] (causal, the op table's
    // ATTENTION). Batched mode (pos == NULL): query row i of batch b sees keys 0..kv_len-1 of slot b,
    // limited to i + kv_len - n_q when causal.
    const int32_t *pos, *seq;
    int64_t kv_len; // batched mode; 0 means k->ne[2]
    bool causal;
    // Optional additive F32 mask [>= keys, rows] (row = query row i; -inf hides a key). Cache mode: row t.
    const mt_tensor *mask;
    // Optional per-row visible interval [lo, hi) (the mask arena's compact form); keys outside are skipped.
    const int32_t *lo, *hi;
    float scale; // 0: 1/sqrt(hd)
} mt_sdpa_args;

// Graph-level checks of an attention call (dtypes, shapes, GQA divisibility, mask extent); a status
// naming the field and value, never an assert.
mt_status mt_cpu_sdpa_check(const mt_sdpa_args *a);
// Thread ith of nth takes every nth (token, KV head) item, starting at ith (causal rows differ in length:
// contiguous ranges would leave one thread most of the keys). Head dims that are a multiple of 8 without an
// additive mask take the AVX2 kernel (8 keys per step, vector exp, V accumulated in registers).
void mt_cpu_sdpa(const mt_sdpa_args *a, int ith, int nth);

// Rows [r0, r1) of a matmul node (all tokens) with the fast kernel where it takes the node (scratch: at
// least mt_cpu_matmul_fast_scratch_bytes(W dtype, k, n) bytes of this thread's own), else the reference.
void mt_cpu_matmul_rows(const mt_node *mm, long r0, long r1, void *scratch);
// Tokens [t0, t1) of a matmul node (all rows), as one call of the kernel on that slice of x and dst (the
// fast kernel quantizes only those tokens); scratch as for mt_cpu_matmul_rows, sized for t1 - t0 tokens.
void mt_cpu_matmul_tokens(const mt_node *mm, long t0, long t1, void *scratch);
// silu(gate) * up for feature rows [r0, r1) of every token (gate, up, dst [f, n]).
void mt_cpu_swiglu_rows(const mt_tensor *gate, const mt_tensor *up, mt_tensor *dst, long r0, long r1);
// Tokens [t0, t1): x += add (when add != NULL), then y = rmsnorm(x) * w, in one pass over each row.
void mt_cpu_add_rmsnorm_rows(mt_tensor *x, const mt_tensor *add, const float *w, float eps, mt_tensor *y,
                             long t0, long t1);
// Tokens [t0, t1): rotate q and k (NEOX halves, in place), then write k and v into their caches at
// (pos[t], seq[t]). kc/vc may be NULL (no write); k/v may be NULL (nothing for that side).
void mt_cpu_rope_kv_rows(mt_tensor *q, mt_tensor *k, const mt_tensor *v, mt_tensor *kc, mt_tensor *vc,
                         const int32_t *pos, const int32_t *seq, float freq_base, long t0, long t1);

#endif
