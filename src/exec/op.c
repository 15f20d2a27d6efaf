// The op table: names, per-op checks and the CPU reference implementation of every op.
//
// A check validates everything its kernel relies on (presence, dtypes, shapes, row contiguity, aliasing,
// the range of positions and sequence slots), so the kernels themselves carry no argument checks.
#include "op.h"

#include <math.h>
#include <string.h>

#include "../backend/cpu/cpu-features.h"
#include "../backend/cpu/matmul-fast.h"
#include "../backend/cpu/ops-fast.h"
#include "../backend/cpu/ops.h"
#ifdef MT_CUDA
#include "../backend/cuda/backend-cuda.h"
#define CUDA_OP(f) f
#else
#define CUDA_OP(f) NULL
#endif

// "role" or "role 'name'" for messages, formatted into a buffer the caller's expression owns.
static const char *who(char *buf, size_t n, const mt_tensor *t, const char *role) {
    if (t->name)
        snprintf(buf, n, "%s '%s'", role, t->name);
    else
        snprintf(buf, n, "%s", role);
    return buf;
}
#define WHO(t, role) who((char[96]){0}, 96, t, role)

static mt_status need(const char *op, const mt_tensor *t, const char *role) {
    if (!t) return mt_fail(MT_ERR_INVALID, "%s: missing %s", op, role);
    if (!t->data && mt_tensor_nelem(t) > 0) return mt_fail(MT_ERR_INVALID, "%s: %s has no data", op, role);
    if (!mt_dtype_supported(t->dtype))
        return mt_fail(MT_ERR_INVALID, "%s: %s has unsupported dtype id %d", op, role, (int)t->dtype);
    for (int i = 0; i < MT_MAX_DIMS; i++)
        if (t->ne[i] < 0)
            return mt_fail(MT_ERR_INVALID, "%s: %s has negative ne[%d] = %lld", op, WHO(t, role), i,
                           (long long)t->ne[i]);
    // Kernels index rows through nb[1..3] but read each row as a packed array.
    if (t->nb[0] != (size_t)mt_dtype_get(t->dtype)->block_bytes)
        return mt_fail(MT_ERR_INVALID, "%s: %s rows are not contiguous: nb[0] = %zu, %s element is %d bytes",
                       op, WHO(t, role), t->nb[0], mt_dtype_name(t->dtype),
                       mt_dtype_get(t->dtype)->block_bytes);
    return MT_OK;
}

static mt_status need_dtype(const char *op, const mt_tensor *t, const char *role, mt_dtype want) {
    MT_TRY(need(op, t, role));
    if (t->dtype != want)
        return mt_fail(MT_ERR_INVALID, "%s: %s must be %s, not %s", op, WHO(t, role), mt_dtype_name(want),
                       mt_dtype_name(t->dtype));
    return MT_OK;
}

// A weight: any supported storage dtype except I32, rows a whole number of blocks.
static mt_status need_weight(const char *op, const mt_tensor *t, const char *role) {
    MT_TRY(need(op, t, role));
    if (t->dtype == MT_I32)
        return mt_fail(MT_ERR_INVALID, "%s: %s must be a float or quantized dtype, not i32", op,
                       WHO(t, role));
    int be = mt_dtype_get(t->dtype)->block_elems;
    if (t->ne[0] % be != 0)
        return mt_fail(MT_ERR_INVALID, "%s: %s ne[0] = %lld is not a multiple of the %s block (%d)", op,
                       WHO(t, role), (long long)t->ne[0], mt_dtype_name(t->dtype), be);
    return MT_OK;
}

static mt_status need_dim(const char *op, const mt_tensor *t, const char *role, int dim, int64_t want,
                          const char *what) {
    if (t->ne[dim] != want)
        return mt_fail(MT_ERR_INVALID, "%s: %s ne[%d] = %lld, expected %lld (%s)", op, role, dim,
                       (long long)t->ne[dim], (long long)want, what);
    return MT_OK;
}

static mt_status need_same_shape(const char *op, const mt_tensor *a, const char *ra, const mt_tensor *b,
                                 const char *rb) {
    for (int i = 0; i < MT_MAX_DIMS; i++)
        if (a->ne[i] != b->ne[i])
            return mt_fail(
                MT_ERR_INVALID, "%s: shape mismatch: %s [%lld,%lld,%lld,%lld] vs %s [%lld,%lld,%lld,%lld]",
                op, ra, (long long)a->ne[0], (long long)a->ne[1], (long long)a->ne[2], (long long)a->ne[3],
                rb, (long long)b->ne[0], (long long)b->ne[1], (long long)b->ne[2], (long long)b->ne[3]);
    return MT_OK;
}

// Byte range [lo, hi) a tensor can touch; empty when any dimension is 0.
static void byte_range(const mt_tensor *t, uintptr_t *lo, uintptr_t *hi) {
    *lo = *hi = (uintptr_t)t->data;
    if (mt_tensor_nelem(t) == 0) return;
    size_t span = mt_dtype_row_bytes(t->dtype, t->ne[0]);
    for (int i = 1; i < MT_MAX_DIMS; i++) span += (size_t)(t->ne[i] - 1) * t->nb[i];
    *hi = *lo + span;
}

static bool overlaps(const mt_tensor *a, const mt_tensor *b) {
    uintptr_t alo, ahi, blo, bhi;
    byte_range(a, &alo, &ahi);
    byte_range(b, &blo, &bhi);
    return alo < bhi && blo < ahi;
}

static bool same_view(const mt_tensor *a, const mt_tensor *b) {
    if (a->data != b->data) return false;
    for (int i = 0; i < MT_MAX_DIMS; i++)
        if (a->ne[i] != b->ne[i] || a->nb[i] != b->nb[i]) return false;
    return true;
}

// dst must not share memory with src, except (when allowed) being exactly the same view for in-place ops.
static mt_status need_no_alias(const char *op, const mt_tensor *dst, const mt_tensor *src, const char *role,
                               bool in_place_ok) {
    if (!src || !overlaps(dst, src)) return MT_OK;
    if (in_place_ok && same_view(dst, src)) return MT_OK;
    return mt_fail(MT_ERR_INVALID, "%s: dst overlaps %s%s", op, role,
                   in_place_ok ? " without being the same view" : " (not allowed for this op)");
}

// Tokens of a batch: pos (and seq) arrays must be present and in range for every token. ctx < 0: positions
// only need to be non-negative, and no seq array is used (rope).
static mt_status need_positions(const char *op, const mt_op_params *p, int64_t n, int64_t ctx,
                                int64_t n_seq) {
    if (n > 0 && !p->pos)
        return mt_fail(MT_ERR_INVALID, "%s: p.pos is NULL for %lld tokens", op, (long long)n);
    if (n > 0 && ctx >= 0 && !p->seq)
        return mt_fail(MT_ERR_INVALID, "%s: p.seq is NULL for %lld tokens", op, (long long)n);
    for (int64_t i = 0; i < n; i++) {
        int64_t pos = p->pos[i];
        if (pos < 0 && ctx < 0)
            return mt_fail(MT_ERR_INVALID, "%s: pos[%lld] = %lld is negative", op, (long long)i,
                           (long long)pos);
        if (ctx >= 0 && (pos < 0 || pos >= ctx))
            return mt_fail(MT_ERR_INVALID, "%s: pos[%lld] = %lld outside [0, %lld)", op, (long long)i,
                           (long long)pos, (long long)ctx);
        if (ctx >= 0 && (p->seq[i] < 0 || p->seq[i] >= n_seq))
            return mt_fail(MT_ERR_INVALID, "%s: seq[%lld] = %d outside [0, %lld)", op, (long long)i,
                           (int)p->seq[i], (long long)n_seq);
    }
    return MT_OK;
}

static mt_status check_embedding(const mt_node *n) {
    const char *op = "embedding";
    const mt_tensor *tab = n->src[0], *ids = n->src[1], *dst = n->dst;
    MT_TRY(need_weight(op, tab, "table"));
    MT_TRY(need_dtype(op, ids, "ids", MT_I32));
    MT_TRY(need_dtype(op, dst, "dst", MT_F32));
    MT_TRY(need_dim(op, tab, "table", 2, 1, "2-D table"));
    MT_TRY(need_dim(op, tab, "table", 3, 1, "2-D table"));
    for (int i = 1; i < MT_MAX_DIMS; i++) MT_TRY(need_dim(op, ids, "ids", i, 1, "1-D ids"));
    MT_TRY(need_dim(op, dst, "dst", 0, tab->ne[0], "table ne[0]"));
    MT_TRY(need_dim(op, dst, "dst", 1, ids->ne[0], "ids ne[0]"));
    MT_TRY(need_dim(op, dst, "dst", 2, 1, "2-D dst"));
    MT_TRY(need_dim(op, dst, "dst", 3, 1, "2-D dst"));
    MT_TRY(need_no_alias(op, dst, tab, "table", false));
    MT_TRY(need_no_alias(op, dst, ids, "ids", false));
    const int32_t *id = ids->data;
    for (int64_t i = 0; i < ids->ne[0]; i++)
        if (id[i] < 0 || id[i] >= tab->ne[1])
            return mt_fail(MT_ERR_INVALID, "embedding: ids[%lld] = %d outside [0, %lld)", (long long)i,
                           (int)id[i], (long long)tab->ne[1]);
    return MT_OK;
}

static mt_status check_rmsnorm(const mt_node *n) {
    const char *op = "rmsnorm";
    const mt_tensor *x = n->src[0], *w = n->src[1], *dst = n->dst;
    MT_TRY(need_dtype(op, x, "x", MT_F32));
    MT_TRY(need_dtype(op, w, "weight", MT_F32));
    MT_TRY(need_dtype(op, dst, "dst", MT_F32));
    if (mt_tensor_nelem(w) != x->ne[0] || w->ne[0] != x->ne[0])
        return mt_fail(MT_ERR_INVALID, "rmsnorm: weight has %lld elements (ne[0] %lld), x ne[0] = %lld",
                       (long long)mt_tensor_nelem(w), (long long)w->ne[0], (long long)x->ne[0]);
    MT_TRY(need_same_shape(op, dst, "dst", x, "x"));
    if (!(n->p.eps >= 0 && isfinite(n->p.eps)))
        return mt_fail(MT_ERR_INVALID, "rmsnorm: eps = %g must be finite and >= 0", (double)n->p.eps);
    MT_TRY(need_no_alias(op, dst, x, "x", false));
    MT_TRY(need_no_alias(op, dst, w, "weight", false));
    return MT_OK;
}

static mt_status check_matmul(const mt_node *n) {
    const char *op = "matmul";
    const mt_tensor *w = n->src[0], *x = n->src[1], *b = n->src[2], *dst = n->dst;
    MT_TRY(need_weight(op, w, "W"));
    MT_TRY(need_dtype(op, x, "x", MT_F32));
    MT_TRY(need_dtype(op, dst, "dst", MT_F32));
    MT_TRY(need_dim(op, w, "W", 2, 1, "2-D weight"));
    MT_TRY(need_dim(op, w, "W", 3, 1, "2-D weight"));
    MT_TRY(need_dim(op, x, "x", 0, w->ne[0], "W ne[0]"));
    MT_TRY(need_dim(op, x, "x", 2, 1, "2-D x"));
    MT_TRY(need_dim(op, x, "x", 3, 1, "2-D x"));
    MT_TRY(need_dim(op, dst, "dst", 0, w->ne[1], "W ne[1]"));
    MT_TRY(need_dim(op, dst, "dst", 1, x->ne[1], "x ne[1]"));
    MT_TRY(need_dim(op, dst, "dst", 2, 1, "2-D dst"));
    MT_TRY(need_dim(op, dst, "dst", 3, 1, "2-D dst"));
    if (b) {
        MT_TRY(need_dtype(op, b, "bias", MT_F32));
        if (b->ne[0] != w->ne[1] || mt_tensor_nelem(b) != w->ne[1])
            return mt_fail(MT_ERR_INVALID, "matmul: bias has %lld elements (ne[0] %lld), W ne[1] = %lld",
                           (long long)mt_tensor_nelem(b), (long long)b->ne[0], (long long)w->ne[1]);
    }
    MT_TRY(need_no_alias(op, dst, w, "W", false));
    MT_TRY(need_no_alias(op, dst, x, "x", false));
    MT_TRY(need_no_alias(op, dst, b, "bias", false));
    return MT_OK;
}

static mt_status check_rope(const mt_node *n) {
    const char *op = "rope";
    const mt_tensor *x = n->src[0], *dst = n->dst;
    MT_TRY(need_dtype(op, x, "x", MT_F32));
    MT_TRY(need_dtype(op, dst, "dst", MT_F32));
    if (x->ne[0] % 2 != 0)
        return mt_fail(MT_ERR_INVALID, "rope: head_dim (x ne[0]) = %lld must be even", (long long)x->ne[0]);
    MT_TRY(need_dim(op, x, "x", 3, 1, "x is [hd, heads, n]"));
    MT_TRY(need_same_shape(op, dst, "dst", x, "x"));
    if (!(n->p.freq_base > 0 && isfinite(n->p.freq_base)))
        return mt_fail(MT_ERR_INVALID, "rope: freq_base = %g must be finite and > 0", (double)n->p.freq_base);
    MT_TRY(need_no_alias(op, dst, x, "x", true));
    return need_positions(op, &n->p, x->ne[2], -1, 0);
}

static mt_status check_kv_write(const mt_node *n) {
    const char *op = "kv_write";
    const mt_tensor *x = n->src[0], *c = n->dst;
    MT_TRY(need_dtype(op, x, "rows", MT_F32));
    MT_TRY(need_dtype(op, c, "cache", MT_F32));
    MT_TRY(need_dim(op, x, "rows", 3, 1, "rows are [hd, n_kv, n]"));
    MT_TRY(need_dim(op, c, "cache", 0, x->ne[0], "rows ne[0], head_dim"));
    MT_TRY(need_dim(op, c, "cache", 1, x->ne[1], "rows ne[1], n_kv"));
    MT_TRY(need_no_alias(op, c, x, "rows", false));
    return need_positions(op, &n->p, x->ne[2], c->ne[2], c->ne[3]);
}

static mt_status check_attention(const mt_node *n) {
    const char *op = "attention";
    const mt_tensor *q = n->src[0], *k = n->src[1], *v = n->src[2], *dst = n->dst;
    MT_TRY(need_dtype(op, q, "q", MT_F32));
    MT_TRY(need_dtype(op, k, "K cache", MT_F32));
    MT_TRY(need_dtype(op, v, "V cache", MT_F32));
    MT_TRY(need_dtype(op, dst, "dst", MT_F32));
    MT_TRY(need_dim(op, q, "q", 3, 1, "q is [hd, n_head, n]"));
    MT_TRY(need_dim(op, k, "K cache", 0, q->ne[0], "q ne[0], head_dim"));
    MT_TRY(need_same_shape(op, v, "V cache", k, "K cache"));
    if (q->ne[0] == 0) return mt_fail(MT_ERR_INVALID, "attention: head_dim is 0");
    if (k->ne[1] <= 0 || q->ne[1] % k->ne[1] != 0)
        return mt_fail(MT_ERR_INVALID, "attention: n_head = %lld is not a multiple of n_kv = %lld",
                       (long long)q->ne[1], (long long)k->ne[1]);
    MT_TRY(need_same_shape(op, dst, "dst", q, "q"));
    if (!(n->p.scale >= 0 && isfinite(n->p.scale)))
        return mt_fail(MT_ERR_INVALID, "attention: scale = %g must be finite and >= 0", (double)n->p.scale);
    MT_TRY(need_no_alias(op, dst, q, "q", false));
    MT_TRY(need_no_alias(op, dst, k, "K cache", false));
    MT_TRY(need_no_alias(op, dst, v, "V cache", false));
    return need_positions(op, &n->p, q->ne[2], k->ne[2], k->ne[3]);
}

static mt_status check_swiglu(const mt_node *n) {
    const char *op = "swiglu";
    const mt_tensor *g = n->src[0], *u = n->src[1], *dst = n->dst;
    MT_TRY(need_dtype(op, g, "gate", MT_F32));
    MT_TRY(need_dtype(op, u, "up", MT_F32));
    MT_TRY(need_dtype(op, dst, "dst", MT_F32));
    MT_TRY(need_same_shape(op, u, "up", g, "gate"));
    MT_TRY(need_same_shape(op, dst, "dst", g, "gate"));
    MT_TRY(need_no_alias(op, dst, g, "gate", false));
    MT_TRY(need_no_alias(op, dst, u, "up", false));
    return MT_OK;
}

static mt_status check_add(const mt_node *n) {
    const char *op = "add";
    const mt_tensor *a = n->src[0], *b = n->src[1], *dst = n->dst;
    MT_TRY(need_dtype(op, a, "a", MT_F32));
    MT_TRY(need_dtype(op, b, "b", MT_F32));
    MT_TRY(need_dtype(op, dst, "dst", MT_F32));
    MT_TRY(need_same_shape(op, b, "b", a, "a"));
    MT_TRY(need_same_shape(op, dst, "dst", a, "a"));
    MT_TRY(need_no_alias(op, dst, a, "a", true));
    MT_TRY(need_no_alias(op, dst, b, "b", true));
    return MT_OK;
}

static mt_status check_softmax(const mt_node *n) {
    const char *op = "softmax";
    const mt_tensor *x = n->src[0], *dst = n->dst;
    MT_TRY(need_dtype(op, x, "x", MT_F32));
    MT_TRY(need_dtype(op, dst, "dst", MT_F32));
    MT_TRY(need_same_shape(op, dst, "dst", x, "x"));
    MT_TRY(need_no_alias(op, dst, x, "x", false));
    return MT_OK;
}

static bool matmul_fast_supports(const mt_node *n) {
    return mt_cpu_matmul_fast_supports(n->src[0]->dtype);
}

static const mt_op_def op_table[MT_OP_COUNT] = {
    [MT_OP_EMBEDDING] = {"embedding", check_embedding, mt_cpu_op_embedding, NULL, NULL,
                         CUDA_OP(mt_cuda_op_embedding)},
    [MT_OP_RMSNORM] = {"rmsnorm", check_rmsnorm, mt_cpu_op_rmsnorm, mt_cpu_fast_rmsnorm,
                       mt_cpu_ops_fast_supports, CUDA_OP(mt_cuda_op_rmsnorm)},
    [MT_OP_MATMUL] = {"matmul", check_matmul, mt_cpu_op_matmul, mt_cpu_matmul_fast, matmul_fast_supports,
                      CUDA_OP(mt_cuda_op_matmul)},
    [MT_OP_ROPE] = {"rope", check_rope, mt_cpu_op_rope, mt_cpu_fast_rope, mt_cpu_ops_fast_supports,
                    CUDA_OP(mt_cuda_op_rope)},
    [MT_OP_KV_WRITE] = {"kv_write", check_kv_write, mt_cpu_op_kv_write, NULL, NULL,
                        CUDA_OP(mt_cuda_op_kv_write)},
    [MT_OP_ATTENTION] = {"attention", check_attention, mt_cpu_op_attention, mt_cpu_fast_attention,
                         mt_cpu_ops_fast_supports, CUDA_OP(mt_cuda_op_attention)},
    [MT_OP_SWIGLU] = {"swiglu", check_swiglu, mt_cpu_op_swiglu, mt_cpu_fast_swiglu, mt_cpu_ops_fast_supports,
                      CUDA_OP(mt_cuda_op_swiglu)},
    [MT_OP_ADD] = {"add", check_add, mt_cpu_op_add, mt_cpu_fast_add, mt_cpu_ops_fast_supports,
                   CUDA_OP(mt_cuda_op_add)},
    [MT_OP_SOFTMAX] = {"softmax", check_softmax, mt_cpu_op_softmax, mt_cpu_fast_softmax,
                       mt_cpu_ops_fast_supports, CUDA_OP(mt_cuda_op_softmax)},
};

const mt_op_def *mt_op_get(mt_op_kind op) {
    if ((int)op < 0 || op >= MT_OP_COUNT) return NULL;
    return &op_table[op];
}

const char *mt_op_name(mt_op_kind op) {
    const mt_op_def *d = mt_op_get(op);
    return d ? d->name : "unknown";
}

int mt_op_find(const char *name) {
    if (!name) return -1;
    if (strcmp(name, "sdpa") == 0) return MT_OP_ATTENTION;
    for (int i = 0; i < MT_OP_COUNT; i++)
        if (strcmp(name, op_table[i].name) == 0) return i;
    return -1;
}

mt_status mt_op_check(const mt_node *n) {
    if (!n) return mt_fail(MT_ERR_INVALID, "op check: node is NULL");
    const mt_op_def *d = mt_op_get(n->op);
    if (!d) return mt_fail(MT_ERR_INVALID, "op check: unknown op id %d", (int)n->op);
    if (!n->dst) return mt_fail(MT_ERR_INVALID, "%s: missing dst", d->name);
    return d->check(n);
}

mt_op_impl mt_op_cpu_impl(const mt_node *n) {
    const mt_op_def *d = mt_op_get(n->op);
    if (d->cpu_fast && mt_cpu_isa() != MT_ISA_SCALAR && d->cpu_fast_supports(n)) return d->cpu_fast;
    return d->cpu_ref;
}
