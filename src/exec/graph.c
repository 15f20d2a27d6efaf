// The graph path: compiler (fusion passes, memory plan, schedule), executor and typed builder (graph.h).
//
// The executable captures the eager path rather than reimplementing it: every stage calls the same CPU
// kernels (fast matmul, reference rope arithmetic, ...) on the same node descriptors, only grouped so
// that a whole segment runs in one parallel region and intermediate values live in a planned arena.
#include "graph.h"

#include <math.h>
#include <stdatomic.h>
#include <stdlib.h>
#include <string.h>

#include "../backend/cpu/cpu-features.h"
#include "../backend/cpu/fused.h"
#include "../backend/cpu/matmul-fast.h"
#include "../core/metrics.h"

// From this many tokens a matmul stage runs in the kernels' prefill layout (see run_stage).
#define GRAPH_PREFILL_TOKENS 8
// Decode stages split weight rows between threads in groups of 16: the repacked one-token kernels work on
// 8 interleaved rows (16 for F16), and a slice starting inside a group would run its first rows on the
// unpacked kernel.
#define GRAPH_ROW_UNIT 16
// Tokens an owner takes from its own share per kernel call in a prefill matmul stage: the kernels' largest
// cache block, so a share is streamed in as many weight passes as one whole call would need.
#define GRAPH_OWN_CHUNK 64
#define GRAPH_OWN_CHUNK_F16 264 // the F16/BF16 GEMM's token block (MM_GF_TB in matmul-kernels.inc)

enum stage_kind { ST_NODE, ST_NORM, ST_MATMULS, ST_ROPE_KV, ST_SDPA };
static const char *stage_name[] = {"node", "norm", "matmuls", "rope_kv", "sdpa"};

#define STAGE_MAX_IDX 4

typedef struct stage {
    int kind;
    int idx[STAGE_MAX_IDX]; // node indices (see build_stages)
    int n_idx;
    int swiglu;         // ST_MATMULS: SwiGLU node applied as the epilogue, or -1
    const char *fusion; // name of the fusion applied, NULL for none
} stage;

struct mt_graph_exec {
    mt_pool *pool; // the pool of the run in progress (its barrier separates dependent stages)
    int n_nodes;
    int *ops;
    stage *st;
    int n_st, n_fusions;
    int32_t *remap; // [n_nodes * 4]: planned buffer of (node, slot 0..2 = src, 3 = dst), or -1
    int n_bufs;
    size_t *buf_off, *buf_size;
    uint8_t *arena;
    size_t arena_bytes;
    int n_threads;
    uint8_t *scratch; // per-thread matmul activation scratch
    size_t scratch_per_thread;
    // prefill matmul stages: per (stage, thread) the still unclaimed tokens [front, back) of the thread's
    // share, packed front << 32 | back; set before each run, claimed from the front by the owner and from
    // the back by threads that finished their own share
    _Atomic uint64_t *spans;
    bool steal; // METALLIC_GRAPH_STEAL=0 turns the claiming off (each thread does its static share)
    int rows_cap;
    // per-run working copies of the nodes with planned buffers substituted
    mt_node *w;
    mt_tensor *wt;
    mt_gext *wext;
    const mt_mask *mask;
    char *plan; // the plan dump text
    // builder executables
    mt_graph *g;
    mt_graph_binding *layout;
    int *layout_val;
    int n_layout;
};

// ---- helpers ----

static size_t extent(const mt_tensor *t) {
    if (mt_tensor_nelem(t) == 0) return 0;
    size_t span = (size_t)mt_dtype_get(t->dtype)->block_bytes *
                  (size_t)(t->ne[0] / mt_dtype_get(t->dtype)->block_elems);
    for (int i = 1; i < MT_MAX_DIMS; i++) span += (size_t)(t->ne[i] - 1) * t->nb[i];
    return span;
}

static bool ranges_overlap(uintptr_t a, size_t an, uintptr_t b, size_t bn) {
    return an && bn && a < b + bn && b < a + an;
}

static const mt_tensor *slot_tensor(const mt_node *n, int s) {
    return s < 3 ? n->src[s] : n->dst;
}

static const char *kind_name(int op) {
    return op == MT_GOP_SDPA ? "sdpa_masked" : mt_op_name((mt_op_kind)op);
}

static inline uint64_t mix(uint64_t h, uint64_t v) {
    h ^= v + 0x9e3779b97f4a7c15ull + (h << 6) + (h >> 2);
    return h * 0x100000001b3ull;
}

static uint64_t mixf(uint64_t h, float f) {
    uint32_t u;
    memcpy(&u, &f, sizeof u);
    return mix(h, u);
}

// Weights, caches and masks keep their full shape in the signature; activations drop their outermost
// (token) dimension.
static bool full_shape_slot(const mt_node *n, int s) {
    if ((n->op == MT_OP_MATMUL || n->op == MT_OP_EMBEDDING) && s == 0) return true;
    if (n->op == MT_OP_MATMUL && s == 2) return true;
    if (n->op == MT_OP_RMSNORM && s == 1) return true;
    if (n->op == MT_OP_KV_WRITE && s == 3) return true;
    if ((n->op == MT_OP_ATTENTION || (int)n->op == MT_GOP_SDPA) && (s == 1 || s == 2)) return true;
    return false;
}

uint64_t mt_graph_signature(const mt_node *nodes, const mt_gext *ext, int n) {
    uint64_t h = mix(0xcbf29ce484222325ull, (uint64_t)n);
    for (int i = 0; i < n; i++) {
        const mt_node *nd = &nodes[i];
        h = mix(h, (uint64_t)nd->op);
        h = mixf(mixf(mixf(h, nd->p.eps), nd->p.freq_base), nd->p.scale);
        h = mix(h, (uint64_t)(nd->p.pos != NULL) | (uint64_t)(nd->p.seq != NULL) << 1);
        for (int s = 0; s < 4; s++) {
            const mt_tensor *t = slot_tensor(nd, s);
            if (!t) {
                h = mix(h, 0x5a5a);
                continue;
            }
            h = mix(mix(mix(h, (uintptr_t)t->data), (uint64_t)t->dtype), (uint64_t)t->ndim);
            int last = full_shape_slot(nd, s) ? MT_MAX_DIMS : (t->ndim > 1 ? t->ndim - 1 : 1);
            for (int d = 0; d < last; d++) h = mix(mix(h, (uint64_t)t->ne[d]), t->nb[d]);
        }
        if (ext && (int)nd->op == MT_GOP_SDPA) {
            h = mix(mix(h, ext[i].causal), (uint64_t)ext[i].kv_len);
            h = mix(h, ext[i].mask ? (uintptr_t)ext[i].mask->data : 0);
        }
    }
    return h;
}

// ---- fusion passes ----

static bool same_data(const mt_tensor *a, const mt_tensor *b) {
    return a && b && a->data == b->data;
}

static bool is_2d_rows(const mt_tensor *t) {
    return t->ne[2] == 1 && t->ne[3] == 1;
}

// Matmuls i..: consecutive ones reading the same x whose outputs are not read by each other.
static int matmul_run(const mt_node *nd, int i, int n) {
    int j = i;
    while (j < n && j - i < STAGE_MAX_IDX && nd[j].op == MT_OP_MATMUL &&
           same_data(nd[j].src[1], nd[i].src[1])) {
        bool ok = true;
        for (int a = i; a < j; a++)
            if (same_data(nd[a].dst, nd[j].dst) || same_data(nd[a].dst, nd[j].src[1])) ok = false;
        if (!ok) break;
        j++;
    }
    return j - i;
}

static bool rope_kv_pattern(const mt_node *nd, int i, int n, int qmm, int kmm, int vmm) {
    if (i + 4 > n) return false;
    const mt_node *rq = &nd[i], *rk = &nd[i + 1], *wk = &nd[i + 2], *wv = &nd[i + 3];
    if (rq->op != MT_OP_ROPE || rk->op != MT_OP_ROPE || wk->op != MT_OP_KV_WRITE || wv->op != MT_OP_KV_WRITE)
        return false;
    if (!same_data(rq->src[0], nd[qmm].dst) || !same_data(rq->dst, rq->src[0])) return false;
    if (!same_data(rk->src[0], nd[kmm].dst) || !same_data(rk->dst, rk->src[0])) return false;
    if (!same_data(wk->src[0], rk->dst) || !same_data(wv->src[0], nd[vmm].dst)) return false;
    if (rq->p.pos != rk->p.pos || rq->p.pos != wk->p.pos || wk->p.pos != wv->p.pos) return false;
    if (wk->p.seq != wv->p.seq || rq->p.freq_base != rk->p.freq_base) return false;
    if (rq->src[0]->ne[2] != rk->src[0]->ne[2] || rq->src[0]->ne[0] != rk->src[0]->ne[0]) return false;
    return rq->src[0]->ne[3] == 1 && rk->src[0]->ne[3] == 1;
}

static int build_stages(const mt_node *nd, int n, stage *st, int *n_fusions) {
    int ns = 0, i = 0;
    *n_fusions = 0;
    while (i < n) {
        stage *s = &st[ns++];
        memset(s, 0, sizeof *s);
        s->swiglu = -1;
        const mt_node *a = &nd[i];
        // residual add into the next rmsnorm: x += t and xn = norm(x), one pass per row
        if (a->op == MT_OP_ADD && i + 1 < n && nd[i + 1].op == MT_OP_RMSNORM &&
            same_data(a->dst, a->src[0]) && same_data(nd[i + 1].src[0], a->dst) && is_2d_rows(a->dst) &&
            !same_data(a->src[1], a->dst)) {
            *s = (stage){ST_NORM, {i, i + 1}, 2, -1, "add+rmsnorm"};
            (*n_fusions)++;
            i += 2;
            continue;
        }
        if (a->op == MT_OP_RMSNORM && is_2d_rows(a->dst)) {
            *s = (stage){ST_NORM, {-1, i}, 2, -1, NULL};
            i++;
            continue;
        }
        if (a->op == MT_OP_MATMUL) {
            int k = matmul_run(nd, i, n);
            s->kind = ST_MATMULS;
            s->n_idx = k;
            for (int j = 0; j < k; j++) s->idx[j] = i + j;
            if (ns > 1 && st[ns - 2].kind == ST_NORM && same_data(nd[st[ns - 2].idx[1]].dst, a->src[1])) {
                s->fusion = "rmsnorm->matmul";
                (*n_fusions)++;
            }
            const mt_node *nx = i + k < n ? &nd[i + k] : NULL;
            if (k == 2 && nx && nx->op == MT_OP_SWIGLU && same_data(nx->src[0], nd[i].dst) &&
                same_data(nx->src[1], nd[i + 1].dst) && nd[i].dst->ne[0] == nd[i + 1].dst->ne[0] &&
                !same_data(nx->dst, a->src[1])) {
                s->swiglu = i + 2;
                s->fusion = "matmul(gate,up)+swiglu";
                (*n_fusions)++;
                i += 3;
                continue;
            }
            if (k == 3 && rope_kv_pattern(nd, i + 3, n, i, i + 1, i + 2)) {
                s->fusion = "matmul(q,k,v)+bias";
                stage *r = &st[ns++];
                *r = (stage){ST_ROPE_KV, {i + 3, i + 4, i + 5, i + 6}, 4, -1, "rope(q,k)+kv_write(k,v)"};
                *n_fusions += 2;
                i += 7;
                continue;
            }
            i += k;
            continue;
        }
        if (a->op == MT_OP_ATTENTION || (int)a->op == MT_GOP_SDPA) {
            *s = (stage){ST_SDPA, {i}, 1, -1, "sdpa(gqa in place)"};
            if (i + 1 < n && nd[i + 1].op == MT_OP_MATMUL && same_data(nd[i + 1].src[1], a->dst)) {
                stage *o = &st[ns++];
                *o = (stage){ST_MATMULS, {i + 1}, 1, -1, "sdpa->o_proj"};
                (*n_fusions)++;
                i += 2;
                continue;
            }
            i++;
            continue;
        }
        *s = (stage){ST_NODE, {i}, 1, -1, NULL};
        i++;
    }
    return ns;
}

// ---- memory plan ----

typedef struct region {
    uintptr_t base;
    size_t ext;
    bool pinned;
    int cur;
} region;

typedef struct life {
    int region, start, end, buf;
    size_t ext, wext;
} life;

static int find_region(region *r, int nr, const void *p) {
    for (int i = 0; i < nr; i++)
        if (r[i].base == (uintptr_t)p) return i;
    return -1;
}

typedef struct plan_ctx {
    const mt_node *nd;
    const mt_gext *ext;
    int n;
    const int *st_of;
    region *rg;
    int nr;
    life *lv;
    int nl;
    int32_t *life_of; // [n * 4]
} plan_ctx;

// One pass over the nodes: splits every unpinned region into lives. Returns true if it pinned something
// (the caller repeats until nothing changes).
static bool lives_pass(plan_ctx *c) {
    bool pinned = false;
    c->nl = 0;
    for (int r = 0; r < c->nr; r++) c->rg[r].cur = -1;
    for (int i = 0; i < c->n * 4; i++) c->life_of[i] = -1;
    for (int i = 0; i < c->n; i++) {
        const mt_node *nd = &c->nd[i];
        for (int s = 0; s < 3; s++) {
            const mt_tensor *t = nd->src[s];
            int r = t ? find_region(c->rg, c->nr, t->data) : -1;
            if (r < 0 || c->rg[r].pinned) continue;
            if (c->rg[r].cur < 0 || extent(t) > c->lv[c->rg[r].cur].wext) {
                c->rg[r].pinned = pinned =
                    true; // read before written here (live-in) or beyond what was written
                continue;
            }
            life *l = &c->lv[c->rg[r].cur];
            l->end = c->st_of[i];
            if (extent(t) > l->ext) l->ext = extent(t);
            c->life_of[i * 4 + s] = c->rg[r].cur;
        }
        if (nd->op == MT_OP_KV_WRITE) continue;
        int r = find_region(c->rg, c->nr, nd->dst->data);
        if (r < 0 || c->rg[r].pinned) continue;
        bool in_place = false;
        for (int s = 0; s < 3; s++) in_place |= nd->src[s] && nd->src[s]->data == nd->dst->data;
        size_t e = extent(nd->dst);
        if (!in_place || c->rg[r].cur < 0) {
            life *l = &c->lv[c->nl];
            *l = (life){r, c->st_of[i], c->st_of[i], -1, e, e};
            c->rg[r].cur = c->nl++;
        } else {
            life *l = &c->lv[c->rg[r].cur];
            l->end = c->st_of[i];
            if (e > l->ext) l->ext = e;
            if (e > l->wext) l->wext = e;
        }
        c->life_of[i * 4 + 3] = c->rg[r].cur;
    }
    return pinned;
}

static void pin_overlaps(region *rg, int nr, const mt_tensor *t) {
    if (!t) return;
    uintptr_t b = (uintptr_t)t->data;
    size_t e = extent(t);
    for (int r = 0; r < nr; r++)
        if (ranges_overlap(rg[r].base, rg[r].ext, b, e) && b != rg[r].base) rg[r].pinned = true;
}

static mt_status plan_memory(mt_graph_exec *ex, const mt_node *nd, const mt_gext *ext, int n,
                             const int *st_of, const mt_graph_compile_opts *o) {
    region *rg = mt_calloc((size_t)n + 1, sizeof *rg, "graph plan regions");
    life *lv = mt_calloc((size_t)n + 1, sizeof *lv, "graph plan lives");
    int32_t *life_of = mt_calloc((size_t)n * 4 + 1, sizeof *life_of, "graph plan");
    if (!rg || !lv || !life_of) {
        free(rg), free(lv), free(life_of);
        return MT_ERR_NOMEM;
    }
    int nr = 0;
    for (int i = 0; i < n; i++) {
        if (nd[i].op == MT_OP_KV_WRITE) continue; // persistent state stays in place
        if (find_region(rg, nr, nd[i].dst->data) < 0)
            rg[nr++] = (region){(uintptr_t)nd[i].dst->data, 0, false, -1};
    }
    for (int i = 0; i < n; i++)
        for (int s = 0; s < 4; s++) {
            const mt_tensor *t = slot_tensor(&nd[i], s);
            int r = t ? find_region(rg, nr, t->data) : -1;
            if (r >= 0 && extent(t) > rg[r].ext) rg[r].ext = extent(t);
        }
    for (int i = 0; i < n; i++) {
        for (int s = 0; s < 4; s++) pin_overlaps(rg, nr, slot_tensor(&nd[i], s));
        if (nd[i].op == MT_OP_KV_WRITE)
            for (int r = 0; r < nr; r++)
                if (ranges_overlap(rg[r].base, rg[r].ext, (uintptr_t)nd[i].dst->data, extent(nd[i].dst)))
                    rg[r].pinned = true;
        if (ext && ext[i].mask)
            for (int r = 0; r < nr; r++)
                if (ranges_overlap(rg[r].base, rg[r].ext, (uintptr_t)ext[i].mask->data, extent(ext[i].mask)))
                    rg[r].pinned = true;
    }
    for (int r = 0; r < nr; r++)
        for (int q = 0; q < nr; q++)
            if (r != q && ranges_overlap(rg[r].base, rg[r].ext, rg[q].base, rg[q].ext)) rg[r].pinned = true;
    for (int k = 0; k < o->n_keep; k++)
        for (int r = 0; r < nr; r++)
            if (o->keep[k] &&
                ranges_overlap(rg[r].base, rg[r].ext, (uintptr_t)o->keep[k]->data, extent(o->keep[k])))
                rg[r].pinned = true;
    plan_ctx c = {nd, ext, n, st_of, rg, nr, lv, 0, life_of};
    for (int it = 0; it < 64 && lives_pass(&c); it++) {
    }
    // lives of regions pinned late are dropped
    for (int i = 0; i < n * 4; i++)
        if (life_of[i] >= 0 && rg[lv[life_of[i]].region].pinned) life_of[i] = -1;

    // buffers by lifetime (stage time: a buffer is reused only by a life starting after the last stage
    // that touches it, since the nodes of a stage run concurrently)
    size_t *bsize = mt_calloc((size_t)c.nl + 1, sizeof *bsize, "graph plan");
    int *bend = mt_calloc((size_t)c.nl + 1, sizeof *bend, "graph plan");
    if (!bsize || !bend) {
        free(rg), free(lv), free(life_of), free(bsize), free(bend);
        return MT_ERR_NOMEM;
    }
    int nb = 0;
    for (int l = 0; l < c.nl; l++) {
        if (rg[lv[l].region].pinned) continue;
        size_t need = (lv[l].ext * (size_t)o->rows_cap + (size_t)o->n_tokens - 1) / (size_t)o->n_tokens;
        need = (need + 63) & ~(size_t)63;
        int best = -1;
        for (int b = 0; b < nb; b++) {
            if (bend[b] >= lv[l].start) continue;
            if (best < 0 || (bsize[b] >= need && (bsize[best] < need || bsize[b] < bsize[best])) ||
                (bsize[best] < need && bsize[b] > bsize[best]))
                best = b;
        }
        if (best < 0) best = nb++;
        if (bsize[best] < need) bsize[best] = need;
        bend[best] = lv[l].end;
        lv[l].buf = best;
    }
    ex->n_bufs = nb;
    ex->buf_off = mt_calloc((size_t)nb + 1, sizeof(size_t), "graph plan");
    ex->buf_size = mt_calloc((size_t)nb + 1, sizeof(size_t), "graph plan");
    if (!ex->buf_off || !ex->buf_size) {
        free(rg), free(lv), free(life_of), free(bsize), free(bend);
        return MT_ERR_NOMEM;
    }
    size_t off = 0;
    for (int b = 0; b < nb; b++) {
        ex->buf_off[b] = off;
        ex->buf_size[b] = bsize[b];
        off += bsize[b];
    }
    ex->arena_bytes = off;
    for (int i = 0; i < n * 4; i++) ex->remap[i] = life_of[i] >= 0 ? lv[life_of[i]].buf : -1;
    free(rg), free(lv), free(life_of), free(bsize), free(bend);
    return MT_OK;
}

// ---- compile ----

static void write_plan(mt_graph_exec *ex, const mt_node *nd, int n, const mt_graph_compile_opts *o) {
    size_t len = 0;
    FILE *f = open_memstream(&ex->plan, &len);
    if (!f) return;
    fprintf(f,
            "graph plan '%s': %d nodes -> %d stages, %d fusions, 1 parallel region, %d threads, rows <= %d\n",
            o->label ? o->label : "segment", n, ex->n_st, ex->n_fusions, ex->n_threads, ex->rows_cap);
    for (int s = 0; s < ex->n_st; s++) {
        const stage *st = &ex->st[s];
        fprintf(f, "  stage %d %s%s%s:", s, stage_name[st->kind], st->fusion ? " fused " : "",
                st->fusion ? st->fusion : "");
        for (int j = 0; j < st->n_idx; j++) {
            const mt_node *x = &nd[st->idx[j]];
            if (st->idx[j] >= 0)
                fprintf(f, " #%d %s(%s)", st->idx[j], kind_name(x->op), x->label ? x->label : "");
        }
        if (st->swiglu >= 0) fprintf(f, " #%d swiglu epilogue", st->swiglu);
        fprintf(f, "\n    dtypes:");
        for (int j = 0; j < st->n_idx; j++) {
            if (st->idx[j] < 0) continue;
            const mt_node *x = &nd[st->idx[j]];
            if (x->op == MT_OP_MATMUL) {
                mt_dtype wt = x->src[0]->dtype;
                bool fast = mt_op_cpu_impl(x) != mt_op_get(MT_OP_MATMUL)->cpu_ref;
                bool q = wt != MT_F32 && wt != MT_F16 && wt != MT_BF16;
                fprintf(f, " W %s x f32%s, acc %s -> f32;", mt_dtype_name(wt),
                        fast && q ? "->int8 blocks" : "", fast && q ? "int32/f32" : "f32");
            } else {
                fprintf(f, " %s f32 storage, f32 accumulate;", kind_name(x->op));
            }
        }
        fprintf(f, "\n");
    }
    fprintf(f, "  buffers: %d in one arena of %zu bytes (sized for %d rows)\n", ex->n_bufs, ex->arena_bytes,
            ex->rows_cap);
    for (int b = 0; b < ex->n_bufs; b++) {
        fprintf(f, "    buf %d: offset %zu, %zu bytes, holds:", b, ex->buf_off[b], ex->buf_size[b]);
        int shown = 0;
        for (int i = 0; i < n && shown < 8; i++)
            if (ex->remap[i * 4 + 3] == b) {
                fprintf(f, " %s", nd[i].label ? nd[i].label : kind_name(nd[i].op));
                shown++;
            }
        fprintf(f, shown == 8 ? " ...\n" : "\n");
    }
    int kept = 0;
    for (int i = 0; i < n; i++) kept += ex->remap[i * 4 + 3] < 0;
    fprintf(f, "  in place (inputs, outputs, KV cache, values read outside the segment): %d node outputs\n",
            kept);
    fprintf(f, "  matmul scratch: %zu bytes per thread\n", ex->scratch_per_thread);
    fclose(f);
}

mt_status mt_graph_compile_nodes(const mt_node *nodes, const mt_gext *ext, int n,
                                 const mt_graph_compile_opts *o, mt_graph_exec **out) {
    *out = NULL;
    const char *inj = getenv("METALLIC_GRAPH_INJECT_COMPILE_FAILURE");
    if (inj && strcmp(inj, "0") != 0 && *inj)
        return mt_fail(MT_ERR_INTERNAL,
                       "graph compile of '%s': injected failure (METALLIC_GRAPH_INJECT_COMPILE_FAILURE=%s)",
                       o->label ? o->label : "segment", inj);
    if (n < 1 || !nodes) return mt_fail(MT_ERR_INVALID, "graph compile: empty node list");
    if (o->n_tokens < 1 || o->rows_cap < o->n_tokens || o->n_threads < 1)
        return mt_fail(MT_ERR_INVALID, "graph compile: n_tokens %d, rows_cap %d, n_threads %d", o->n_tokens,
                       o->rows_cap, o->n_threads);
    for (int i = 0; i < n; i++)
        if ((int)nodes[i].op < 0 || (int)nodes[i].op >= MT_GOP_END || !nodes[i].dst)
            return mt_fail(MT_ERR_INVALID, "graph compile: node %d has op id %d or no dst", i,
                           (int)nodes[i].op);
    mt_graph_exec *ex = mt_calloc(1, sizeof *ex, "graph executable");
    if (!ex) return MT_ERR_NOMEM;
    ex->n_nodes = n;
    ex->rows_cap = o->rows_cap;
    ex->n_threads = o->n_threads;
    ex->ops = mt_calloc((size_t)n, sizeof(int), "graph executable");
    ex->st = mt_calloc((size_t)n * 2, sizeof(stage), "graph stages");
    ex->remap = mt_calloc((size_t)n * 4, sizeof(int32_t), "graph plan");
    ex->w = mt_calloc((size_t)n, sizeof(mt_node), "graph nodes");
    ex->wt = mt_calloc((size_t)n * 4, sizeof(mt_tensor), "graph tensors");
    ex->wext = mt_calloc((size_t)n, sizeof(mt_gext), "graph nodes");
    int *st_of = mt_calloc((size_t)n, sizeof(int), "graph plan");
    if (!ex->ops || !ex->st || !ex->remap || !ex->w || !ex->wt || !ex->wext || !st_of) {
        free(st_of);
        mt_graph_exec_free(ex);
        return MT_ERR_NOMEM;
    }
    for (int i = 0; i < n; i++) ex->ops[i] = nodes[i].op;
    ex->n_st = build_stages(nodes, n, ex->st, &ex->n_fusions);
    for (int s = 0; s < ex->n_st; s++) {
        for (int j = 0; j < ex->st[s].n_idx; j++)
            if (ex->st[s].idx[j] >= 0) st_of[ex->st[s].idx[j]] = s;
        if (ex->st[s].swiglu >= 0) st_of[ex->st[s].swiglu] = s;
    }
    mt_status stt = plan_memory(ex, nodes, ext, n, st_of, o);
    free(st_of);
    // per-thread quantized-activation scratch for the largest matmul at the bucket's capacity
    size_t scr = 0;
    for (int i = 0; i < n && stt == MT_OK; i++)
        if (nodes[i].op == MT_OP_MATMUL) {
            int64_t rows = (nodes[i].src[1]->ne[1] * o->rows_cap + o->n_tokens - 1) / o->n_tokens;
            size_t b = mt_cpu_matmul_fast_scratch_bytes(nodes[i].src[0]->dtype, nodes[i].src[0]->ne[0], rows);
            if (b > scr) scr = b;
        }
    ex->scratch_per_thread = (scr + 63) & ~(size_t)63;
    if (stt == MT_OK && ex->arena_bytes) {
        ex->arena = aligned_alloc(64, ex->arena_bytes);
        if (!ex->arena) stt = mt_fail(MT_ERR_NOMEM, "graph arena of %zu bytes", ex->arena_bytes);
    }
    const char *steal = getenv("METALLIC_GRAPH_STEAL");
    ex->steal = !(steal && strcmp(steal, "0") == 0);
    if (stt == MT_OK && o->n_threads > 1) {
        ex->spans =
            mt_calloc((size_t)ex->n_st * (size_t)o->n_threads, sizeof *ex->spans, "graph token spans");
        if (!ex->spans) stt = MT_ERR_NOMEM;
    }
    if (stt == MT_OK && ex->scratch_per_thread) {
        ex->scratch = aligned_alloc(64, ex->scratch_per_thread * (size_t)o->n_threads);
        if (!ex->scratch)
            stt = mt_fail(MT_ERR_NOMEM, "graph matmul scratch of %zu bytes",
                          ex->scratch_per_thread * (size_t)o->n_threads);
    }
    if (stt != MT_OK) {
        mt_graph_exec_free(ex);
        return stt;
    }
    write_plan(ex, nodes, n, o);
    const char *dump = getenv("METALLIC_DUMP_GRAPH_PLAN");
    if (dump && *dump && strcmp(dump, "0") != 0) mt_graph_exec_dump(ex, stderr);
    *out = ex;
    return MT_OK;
}

void mt_graph_exec_free(mt_graph_exec *ex) {
    if (!ex) return;
    free(ex->ops);
    free(ex->st);
    free(ex->remap);
    free(ex->buf_off);
    free(ex->buf_size);
    free(ex->arena);
    free(ex->scratch);
    free((void *)ex->spans);
    free(ex->w);
    free(ex->wt);
    free(ex->wext);
    free(ex->plan);
    free(ex->layout);
    free(ex->layout_val);
    free(ex);
}

size_t mt_graph_exec_bytes(const mt_graph_exec *ex) {
    return ex->arena_bytes + ex->scratch_per_thread * (size_t)ex->n_threads +
           (ex->spans ? (size_t)ex->n_st * (size_t)ex->n_threads * sizeof *ex->spans : 0) +
           (size_t)ex->n_nodes *
               (sizeof(mt_node) + 4 * sizeof(mt_tensor) + sizeof(mt_gext) + 5 * sizeof(int));
}
int mt_graph_exec_n_stages(const mt_graph_exec *ex) {
    return ex->n_st;
}
int mt_graph_exec_n_fusions(const mt_graph_exec *ex) {
    return ex->n_fusions;
}
void mt_graph_exec_dump(const mt_graph_exec *ex, FILE *f) {
    if (ex->plan) fputs(ex->plan, f);
}

// ---- executor ----

// Claims tokens of thread t's span in stage s: up to GRAPH_OWN_CHUNK from the front for the owner, half of
// what is left (a multiple of 4 tokens) from the back for another thread. False when nothing is left.
static bool claim_tokens(mt_graph_exec *ex, int s, int t, bool own, long chunk, long *c0, long *c1) {
    _Atomic uint64_t *sp = &ex->spans[(size_t)s * (size_t)ex->n_threads + (size_t)t];
    uint64_t v = atomic_load_explicit(sp, memory_order_relaxed);
    for (;;) {
        const long f = (long)(v >> 32), b = (long)(v & 0xffffffffu);
        if (f >= b) return false;
        long n = own ? chunk : ((b - f + 1) / 2 + 3) & ~3L;
        n = n < b - f ? n : b - f;
        *c0 = own ? f : b - n;
        *c1 = own ? f + n : b;
        const uint64_t nv =
            own ? (uint64_t)(f + n) << 32 | (uint64_t)b : (uint64_t)f << 32 | (uint64_t)(b - n);
        if (atomic_compare_exchange_weak_explicit(sp, &v, nv, memory_order_relaxed, memory_order_relaxed))
            return true;
    }
}

static void token_view(mt_tensor *v, const mt_tensor *t, long t0, long t1) {
    *v = *t;
    v->ne[1] = t1 - t0;
    v->data = (char *)t->data + (size_t)t0 * t->nb[1];
}

// Tokens [t0, t1) of every matmul of a prefill stage, then its SwiGLU epilogue on those tokens (gate and up
// of a token are complete once its own chunk is: no barrier).
static void matmul_chunk(mt_graph_exec *ex, const stage *s, long t0, long t1, void *scr) {
    const mt_node *w = ex->w;
    for (int j = 0; j < s->n_idx; j++) mt_cpu_matmul_tokens(&w[s->idx[j]], t0, t1, scr);
    if (s->swiglu >= 0) {
        const mt_node *sw = &w[s->swiglu];
        mt_tensor g, u, y;
        token_view(&g, sw->src[0], t0, t1);
        token_view(&u, sw->src[1], t0, t1);
        token_view(&y, sw->dst, t0, t1);
        mt_cpu_swiglu_rows(&g, &u, &y, 0, (long)y.ne[0]);
    }
}

static void run_stage(mt_graph_exec *ex, const stage *s, int ith, int nth) {
    mt_node *w = ex->w;
    switch (s->kind) {
    case ST_NODE: {
        const mt_node *x = &w[s->idx[0]];
        mt_op_cpu_impl(x)(x, ith, nth);
        return;
    }
    case ST_NORM: {
        const mt_node *nm = &w[s->idx[1]];
        mt_tensor *x = (mt_tensor *)nm->src[0];
        const mt_tensor *add = NULL;
        if (s->idx[0] >= 0) {
            const mt_node *a = &w[s->idx[0]];
            x = a->dst;
            add = a->src[1];
        }
        long b, e;
        mt_split((long)x->ne[1], ith, nth, &b, &e);
        mt_cpu_add_rmsnorm_rows(x, add, nm->src[1]->data, nm->p.eps, nm->dst, b, e);
        return;
    }
    case ST_MATMULS: {
        if (w[s->idx[0]].src[1]->ne[1] >= GRAPH_PREFILL_TOKENS && nth > 1 && ex->steal) {
            // Prefill-sized batches: tokens split between threads as the kernels split them (each thread
            // quantizes only its own tokens), claimed in chunks so that a thread that finishes early (the
            // other one descheduled, or slower) takes the rest of another's share instead of waiting at
            // the barrier.
            void *scr = ex->scratch ? ex->scratch + ex->scratch_per_thread * (size_t)ith : NULL;
            const int si = (int)(s - ex->st);
            // F16/BF16 weights are converted to F32 panels once per chunk: chunks of the GEMM's own token
            // block (192), not 64, so a 512-token prompt converts each weight 2-3 times instead of 8.
            const mt_dtype wt = w[s->idx[0]].src[0]->dtype;
            const long chunk = wt == MT_F16 || wt == MT_BF16 ? GRAPH_OWN_CHUNK_F16 : GRAPH_OWN_CHUNK;
            long c0, c1;
            while (claim_tokens(ex, si, ith, true, chunk, &c0, &c1)) matmul_chunk(ex, s, c0, c1, scr);
            for (int k = 1; k < nth; k++)
                while (claim_tokens(ex, si, (ith + k) % nth, false, chunk, &c0, &c1))
                    matmul_chunk(ex, s, c0, c1, scr);
            return;
        }
        if (w[s->idx[0]].src[1]->ne[1] >= GRAPH_PREFILL_TOKENS) {
            // Prefill-sized batches without claiming: each matmul runs whole, split the way its kernel
            // prefers (the fast kernel splits tokens and quantizes the activations once); splitting weight
            // rows here would make every thread quantize every token.
            for (int j = 0; j < s->n_idx; j++) {
                const mt_node *mm = &w[s->idx[j]];
                mt_op_cpu_impl(mm)(mm, ith, nth);
            }
            if (s->swiglu >= 0) {
                const mt_node *sw = &w[s->swiglu];
                long b, e;
                mt_pool_barrier(ex->pool, nth); // gate and up complete for every token
                mt_split((long)sw->dst->ne[0], ith, nth, &b, &e);
                mt_cpu_swiglu_rows(sw->src[0], sw->src[1], sw->dst, b, e);
            }
            return;
        }
        void *scr = ex->scratch ? ex->scratch + ex->scratch_per_thread * (size_t)ith : NULL;
        if (s->swiglu >= 0) {
            const mt_node *g = &w[s->idx[0]], *u = &w[s->idx[1]], *sw = &w[s->swiglu];
            long m = (long)g->dst->ne[0], b, e;
            mt_split((m + GRAPH_ROW_UNIT - 1) / GRAPH_ROW_UNIT, ith, nth, &b, &e);
            b = GRAPH_ROW_UNIT * b < m ? GRAPH_ROW_UNIT * b : m;
            e = GRAPH_ROW_UNIT * e < m ? GRAPH_ROW_UNIT * e : m;
            mt_cpu_matmul_rows(g, b, e, scr);
            mt_cpu_matmul_rows(u, b, e, scr);
            // the thread's own rows of gate and up are still in cache
            mt_cpu_swiglu_rows(sw->src[0], sw->src[1], sw->dst, b, e);
            return;
        }
        long units = 0;
        for (int j = 0; j < s->n_idx; j++)
            units += (w[s->idx[j]].dst->ne[0] + GRAPH_ROW_UNIT - 1) / GRAPH_ROW_UNIT;
        long b, e, base = 0;
        mt_split(units, ith, nth, &b, &e);
        for (int j = 0; j < s->n_idx; j++) {
            const mt_node *mm = &w[s->idx[j]];
            long m = (long)mm->dst->ne[0], u = (m + GRAPH_ROW_UNIT - 1) / GRAPH_ROW_UNIT;
            long lo = b > base ? b - base : 0, hi = e - base < u ? e - base : u;
            if (hi > lo)
                mt_cpu_matmul_rows(mm, GRAPH_ROW_UNIT * lo, GRAPH_ROW_UNIT * hi < m ? GRAPH_ROW_UNIT * hi : m,
                                   scr);
            base += u;
        }
        return;
    }
    case ST_ROPE_KV: {
        const mt_node *rq = &w[s->idx[0]], *rk = &w[s->idx[1]], *wk = &w[s->idx[2]], *wv = &w[s->idx[3]];
        long b, e;
        mt_split((long)rq->dst->ne[2], ith, nth, &b, &e);
        mt_cpu_rope_kv_rows(rq->dst, rk->dst, wv->src[0], wk->dst, wv->dst, rq->p.pos, wk->p.seq,
                            rq->p.freq_base, b, e);
        return;
    }
    case ST_SDPA: {
        const mt_node *x = &w[s->idx[0]];
        mt_sdpa_args a = {.q = x->src[0], .k = x->src[1], .v = x->src[2], .dst = x->dst, .scale = x->p.scale};
        if (x->op == MT_OP_ATTENTION) {
            a.pos = x->p.pos;
            a.seq = x->p.seq;
            if (ex->mask && ex->mask->rows == x->src[0]->ne[2]) {
                a.lo = ex->mask->lo;
                a.hi = ex->mask->hi;
            }
        } else {
            const mt_gext *g = &ex->wext[s->idx[0]];
            a.mask = g->mask;
            a.causal = g->causal;
            a.kv_len = g->kv_len;
        }
        mt_cpu_sdpa(&a, ith, nth);
        return;
    }
    }
}

static void run_region(void *ctx, int ith, int nth) {
    mt_graph_exec *ex = ctx;
    for (int s = 0; s < ex->n_st; s++) {
        run_stage(ex, &ex->st[s], ith, nth);
        if (s + 1 < ex->n_st) mt_pool_barrier(ex->pool, nth); // spins, then sleeps: fair on a busy core
    }
}

mt_status mt_graph_exec_run_nodes(mt_graph_exec *ex, const mt_node *nodes, const mt_gext *ext, int n,
                                  const mt_mask *mask, mt_pool *pool) {
    if (n != ex->n_nodes)
        return mt_fail(MT_ERR_INVALID, "graph run: %d nodes, the executable has %d", n, ex->n_nodes);
    if (mt_pool_size(pool) > ex->n_threads)
        return mt_fail(MT_ERR_RANGE, "graph run: pool of %d threads, compiled for %d", mt_pool_size(pool),
                       ex->n_threads);
    for (int i = 0; i < n; i++) {
        if ((int)nodes[i].op != ex->ops[i])
            return mt_fail(MT_ERR_INVALID, "graph run: node %d is %s, the executable has %s", i,
                           kind_name(nodes[i].op), kind_name(ex->ops[i]));
        ex->w[i] = nodes[i];
        ex->wext[i] = ext ? ext[i] : (mt_gext){0};
        for (int s = 0; s < 4; s++) {
            int b = ex->remap[i * 4 + s];
            const mt_tensor *t = slot_tensor(&nodes[i], s);
            if (b < 0 || !t) continue;
            mt_tensor *c = &ex->wt[i * 4 + s];
            *c = *t;
            if (extent(t) > ex->buf_size[b])
                return mt_fail(MT_ERR_RANGE,
                               "graph run: node %d slot %d needs %zu bytes, planned buffer %d has %zu", i, s,
                               extent(t), b, ex->buf_size[b]);
            c->data = ex->arena + ex->buf_off[b];
            if (s < 3)
                ex->w[i].src[s] = c;
            else
                ex->w[i].dst = c;
        }
    }
    ex->mask = mask;
    ex->pool = pool;
    const int nth = mt_pool_size(pool);
    if (ex->spans && nth > 1)
        for (int s = 0; s < ex->n_st; s++) {
            const stage *st = &ex->st[s];
            if (st->kind != ST_MATMULS || ex->w[st->idx[0]].src[1]->ne[1] < GRAPH_PREFILL_TOKENS) continue;
            const long n = (long)ex->w[st->idx[0]].src[1]->ne[1];
            for (int t = 0; t < nth; t++) {
                long b, e;
                mt_split(n, t, nth, &b, &e);
                atomic_store_explicit(&ex->spans[(size_t)s * (size_t)ex->n_threads + (size_t)t],
                                      (uint64_t)b << 32 | (uint64_t)e, memory_order_relaxed);
            }
        }
    mt_pool_run(pool, run_region, ex); // publishes the spans (the pool's start is sequentially consistent)
    return MT_OK;
}

// ---- typed builder ----

typedef struct gbind {
    const char *name;
    mt_gval val;
    bool output;
} gbind;

struct mt_graph {
    mt_tensor vals[MT_GRAPH_MAX_VALUES];
    bool input[MT_GRAPH_MAX_VALUES];
    int n_vals;
    mt_node nodes[MT_GRAPH_MAX_NODES];
    mt_gext ext[MT_GRAPH_MAX_NODES];
    int n_nodes;
    uintptr_t next_fake; // placeholder addresses of values the plan will place
    gbind binds[64];
    int n_binds;
    const mt_tensor *keep[64];
    int n_keep;
};

mt_status mt_graph_create(mt_graph **out) {
    *out = mt_calloc(1, sizeof(mt_graph), "graph builder");
    if (!*out) return MT_ERR_NOMEM;
    (*out)->next_fake = 1u << 20; // below every real mapping; never dereferenced
    return MT_OK;
}

void mt_graph_free(mt_graph *g) {
    free(g);
}

static mt_status check_val(const mt_graph *g, mt_gval v, const char *what) {
    if (v < 0 || v >= g->n_vals)
        return mt_fail(MT_ERR_INVALID, "graph: %s is value %d, the graph has %d values", what, v, g->n_vals);
    return MT_OK;
}

mt_status mt_graph_value(const mt_graph *g, mt_gval v, mt_tensor *out) {
    MT_TRY(check_val(g, v, "value"));
    *out = g->vals[v];
    return MT_OK;
}

mt_status mt_graph_input(mt_graph *g, const char *name, const mt_tensor *t, mt_gval *out) {
    if (!t || !name) return mt_fail(MT_ERR_INVALID, "graph input: NULL tensor or name");
    if (!mt_dtype_supported(t->dtype))
        return mt_fail(MT_ERR_INVALID, "graph input '%s': unsupported dtype id %d", name, (int)t->dtype);
    if (t->nb[0] != (size_t)mt_dtype_get(t->dtype)->block_bytes)
        return mt_fail(MT_ERR_INVALID,
                       "graph input '%s': rows are not contiguous (nb[0] = %zu), a binding never copies",
                       name, t->nb[0]);
    if (g->n_vals >= MT_GRAPH_MAX_VALUES || g->n_binds >= 64)
        return mt_fail(MT_ERR_NOMEM, "graph input '%s': more than %d values", name, MT_GRAPH_MAX_VALUES);
    g->vals[g->n_vals] = *t;
    g->input[g->n_vals] = true;
    g->binds[g->n_binds++] = (gbind){name, g->n_vals, false};
    *out = g->n_vals++;
    return MT_OK;
}

// A new F32 value of the given shape at a placeholder address.
static mt_status new_val(mt_graph *g, const int64_t ne[4], mt_gval *out) {
    if (g->n_vals >= MT_GRAPH_MAX_VALUES || g->n_nodes >= MT_GRAPH_MAX_NODES)
        return mt_fail(MT_ERR_NOMEM, "graph: more than %d values or %d nodes", MT_GRAPH_MAX_VALUES,
                       MT_GRAPH_MAX_NODES);
    mt_tensor *t = &g->vals[g->n_vals];
    MT_TRY(mt_tensor_init(t, MT_F32, 4, ne, (void *)g->next_fake));
    g->next_fake += (mt_tensor_nbytes(t) + 4095) & ~(uintptr_t)4095;
    *out = g->n_vals++;
    return MT_OK;
}

// Adds node (op, srcs -> new value of shape ne) if its check passes; else the value is dropped.
static mt_status add_node(mt_graph *g, int op, mt_gval a, mt_gval b, mt_gval c, const int64_t ne[4],
                          mt_op_params p, const mt_gext *ext, mt_gval *out) {
    mt_gval v = MT_GVAL_NONE;
    MT_TRY(new_val(g, ne, &v));
    mt_node *n = &g->nodes[g->n_nodes];
    memset(n, 0, sizeof *n);
    n->op = (mt_op_kind)op;
    n->src[0] = a >= 0 ? &g->vals[a] : NULL;
    n->src[1] = b >= 0 ? &g->vals[b] : NULL;
    n->src[2] = c >= 0 ? &g->vals[c] : NULL;
    n->dst = &g->vals[v];
    n->p = p;
    n->label = kind_name(op);
    g->ext[g->n_nodes] = ext ? *ext : (mt_gext){0};
    mt_status s;
    if (op == MT_GOP_SDPA) {
        mt_sdpa_args sa = {.q = n->src[0],
                           .k = n->src[1],
                           .v = n->src[2],
                           .dst = n->dst,
                           .mask = ext->mask,
                           .causal = ext->causal,
                           .kv_len = ext->kv_len,
                           .scale = p.scale};
        s = mt_cpu_sdpa_check(&sa);
    } else {
        s = mt_op_check(n);
    }
    if (s != MT_OK) {
        g->n_vals--;
        char why[400];
        snprintf(why, sizeof why, "%s", mt_last_error());
        return mt_fail(s, "graph node %d: %s", g->n_nodes, why);
    }
    g->n_nodes++;
    *out = v;
    return MT_OK;
}

mt_status mt_graph_rmsnorm(mt_graph *g, mt_gval x, mt_gval w, float eps, mt_gval *out) {
    MT_TRY(check_val(g, x, "rmsnorm x"));
    MT_TRY(check_val(g, w, "rmsnorm weight"));
    return add_node(g, MT_OP_RMSNORM, x, w, -1, g->vals[x].ne, (mt_op_params){.eps = eps}, NULL, out);
}

mt_status mt_graph_matmul(mt_graph *g, mt_gval w, mt_gval x, mt_gval bias, mt_gval *out) {
    MT_TRY(check_val(g, w, "matmul W"));
    MT_TRY(check_val(g, x, "matmul x"));
    if (bias != MT_GVAL_NONE) MT_TRY(check_val(g, bias, "matmul bias"));
    int64_t ne[4] = {g->vals[w].ne[1], g->vals[x].ne[1], 1, 1};
    return add_node(g, MT_OP_MATMUL, w, x, bias, ne, (mt_op_params){0}, NULL, out);
}

mt_status mt_graph_swiglu(mt_graph *g, mt_gval gate, mt_gval up, mt_gval *out) {
    MT_TRY(check_val(g, gate, "swiglu gate"));
    MT_TRY(check_val(g, up, "swiglu up"));
    return add_node(g, MT_OP_SWIGLU, gate, up, -1, g->vals[gate].ne, (mt_op_params){0}, NULL, out);
}

mt_status mt_graph_add(mt_graph *g, mt_gval a, mt_gval b, mt_gval *out) {
    MT_TRY(check_val(g, a, "add a"));
    MT_TRY(check_val(g, b, "add b"));
    return add_node(g, MT_OP_ADD, a, b, -1, g->vals[a].ne, (mt_op_params){0}, NULL, out);
}

mt_status mt_graph_sdpa(mt_graph *g, mt_gval q, mt_gval k, mt_gval v, mt_gval mask, bool causal,
                        int64_t kv_len, float scale, mt_gval *out) {
    MT_TRY(check_val(g, q, "sdpa q"));
    MT_TRY(check_val(g, k, "sdpa k"));
    MT_TRY(check_val(g, v, "sdpa v"));
    if (mask != MT_GVAL_NONE) MT_TRY(check_val(g, mask, "sdpa mask"));
    mt_gext e = {.mask = mask >= 0 ? &g->vals[mask] : NULL, .causal = causal, .kv_len = kv_len};
    return add_node(g, MT_GOP_SDPA, q, k, v, g->vals[q].ne, (mt_op_params){.scale = scale}, &e, out);
}

static mt_status same_layout(const char *what, const char *name, const mt_tensor *want, const mt_tensor *t) {
    if (t->dtype != want->dtype)
        return mt_fail(MT_ERR_INVALID, "graph %s '%s': dtype %s, the layout says %s", what, name,
                       mt_dtype_name(t->dtype), mt_dtype_name(want->dtype));
    for (int i = 0; i < MT_MAX_DIMS; i++)
        if (t->ne[i] != want->ne[i])
            return mt_fail(MT_ERR_INVALID, "graph %s '%s': ne[%d] = %lld, the layout says %lld", what, name,
                           i, (long long)t->ne[i], (long long)want->ne[i]);
    if (t->nb[0] != (size_t)mt_dtype_get(t->dtype)->block_bytes)
        return mt_fail(MT_ERR_INVALID, "graph %s '%s': rows are not contiguous (nb[0] = %zu)", what, name,
                       t->nb[0]);
    return MT_OK;
}

mt_status mt_graph_output(mt_graph *g, mt_gval v, const char *name, mt_tensor *dst) {
    MT_TRY(check_val(g, v, "output"));
    if (!dst || !name) return mt_fail(MT_ERR_INVALID, "graph output: NULL tensor or name");
    if (g->input[v]) return mt_fail(MT_ERR_INVALID, "graph output '%s': value %d is an input", name, v);
    MT_TRY(same_layout("output", name, &g->vals[v], dst));
    if (!mt_tensor_is_contiguous(dst))
        return mt_fail(MT_ERR_INVALID, "graph output '%s': the destination is not contiguous", name);
    if (g->n_binds >= 64) return mt_fail(MT_ERR_NOMEM, "graph output '%s': more than 64 bindings", name);
    g->vals[v].data = dst->data; // nodes hold &vals[v]: the producer now writes straight into dst
    g->binds[g->n_binds++] = (gbind){name, v, true};
    g->keep[g->n_keep++] = &g->vals[v];
    return MT_OK;
}

mt_status mt_graph_compile(mt_graph *g, mt_pool *pool, mt_graph_exec **out) {
    mt_graph_compile_opts o = {.n_tokens = 1,
                               .rows_cap = 1,
                               .n_threads = mt_pool_size(pool),
                               .label = "builder",
                               .keep = g->keep,
                               .n_keep = g->n_keep};
    MT_TRY(mt_graph_compile_nodes(g->nodes, g->ext, g->n_nodes, &o, out));
    mt_graph_exec *ex = *out;
    ex->g = g;
    ex->n_layout = g->n_binds;
    ex->layout = mt_calloc((size_t)g->n_binds + 1, sizeof *ex->layout, "graph layout");
    ex->layout_val = mt_calloc((size_t)g->n_binds + 1, sizeof(int), "graph layout");
    if (!ex->layout || !ex->layout_val) {
        mt_graph_exec_free(ex);
        *out = NULL;
        return MT_ERR_NOMEM;
    }
    for (int i = 0; i < g->n_binds; i++) {
        const mt_tensor *t = &g->vals[g->binds[i].val];
        ex->layout[i] = (mt_graph_binding){g->binds[i].name, g->binds[i].output, t->dtype, {0}};
        memcpy(ex->layout[i].ne, t->ne, sizeof t->ne);
        ex->layout_val[i] = g->binds[i].val;
    }
    return MT_OK;
}

int mt_graph_exec_layout(const mt_graph_exec *ex, const mt_graph_binding **out) {
    *out = ex->layout;
    return ex->n_layout;
}

mt_status mt_graph_exec_bind(mt_graph_exec *ex, const char *name, const mt_tensor *t) {
    if (!ex->g)
        return mt_fail(MT_ERR_INVALID, "graph bind: the executable was not built by mt_graph_compile");
    for (int i = 0; i < ex->n_layout; i++) {
        if (strcmp(ex->layout[i].name, name) != 0) continue;
        mt_tensor *v = &ex->g->vals[ex->layout_val[i]];
        MT_TRY(same_layout(ex->layout[i].output ? "output" : "input", name, v, t));
        if (ex->layout[i].output && !mt_tensor_is_contiguous(t))
            return mt_fail(MT_ERR_INVALID, "graph output '%s': the destination is not contiguous", name);
        v->data = t->data;
        memcpy(v->nb, t->nb, sizeof v->nb);
        return MT_OK;
    }
    return mt_fail(MT_ERR_INVALID, "graph bind: no input or output named '%s'", name);
}

mt_status mt_graph_exec_run(mt_graph_exec *ex, mt_pool *pool) {
    if (!ex->g) return mt_fail(MT_ERR_INVALID, "graph run: the executable was not built by mt_graph_compile");
    return mt_graph_exec_run_nodes(ex, ex->g->nodes, ex->g->ext, ex->g->n_nodes, NULL, pool);
}
