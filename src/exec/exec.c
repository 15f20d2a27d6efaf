// The dispatcher (exec.h): registry choice per op -> segments -> cached executables or eager runs.
#include "exec.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "../backend/cpu/cpu-features.h"
#include "../core/metrics.h"
#include "eager.h"
#include "graph.h"
#include "mask.h"

#define MAX_FAILED 32
#define DTYPE_POLICY_F32 1 // f32 activations and accumulation; weights in their stored dtype

struct mt_exec {
    mt_pool *pool;
    const mt_registry *registry;
    mt_exec_cache *cache;
    mt_mask_arena *masks;
    mt_exec_stats stats;
    mt_exec_key failed[MAX_FAILED]; // keys whose compile failed: run eagerly without retrying
    int n_failed;
    bool warned_range;
};

mt_status mt_exec_create(const mt_exec_opts *o, mt_exec **out) {
    *out = NULL;
    mt_exec *e = mt_calloc(1, sizeof *e, "dispatcher");
    if (!e) return MT_ERR_NOMEM;
    e->pool = o ? o->pool : NULL;
    e->registry = o ? o->registry : NULL;
    mt_exec_cache_opts co = {.name = o && o->name ? o->name : "graph_exec"};
    mt_status s = mt_exec_cache_create(&co, &e->cache);
    if (s == MT_OK) s = mt_mask_arena_create("mask_arena", &e->masks);
    if (s != MT_OK) {
        mt_exec_free(e);
        return s;
    }
    // every op of the table lowers on the CPU graph path (fused where a pattern matches, else as its own
    // stage inside the executable's single parallel region)
    for (int i = 0; i < MT_OP_COUNT; i++) mt_registry_set_graph_capable((mt_op_kind)i, true);
    *out = e;
    return MT_OK;
}

void mt_exec_free(mt_exec *e) {
    if (!e) return;
    if (e->cache) mt_exec_cache_free(e->cache);
    if (e->masks) mt_mask_arena_free(e->masks);
    free(e);
}

void mt_exec_get_stats(const mt_exec *e, mt_exec_stats *out) {
    *out = e->stats;
}
mt_exec_cache *mt_exec_get_cache(mt_exec *e) {
    return e->cache;
}
struct mt_mask_arena *mt_exec_get_masks(mt_exec *e) {
    return e->masks;
}

int mt_exec_rows_bucket(int n) {
    int b = 1;
    while (b < n && b < (1 << 30)) b <<= 1;
    return b;
}

static void destroy_exe(void *exe, void *ctx) {
    (void)ctx;
    mt_graph_exec_free(exe);
}

static bool failed_before(const mt_exec *e, const mt_exec_key *k) {
    for (int i = 0; i < e->n_failed; i++)
        if (mt_exec_key_eq(&e->failed[i], k)) return true;
    return false;
}

// Keys of one segment: its structure inside the whole list (what follows decides what must stay in
// place), the pool size and instruction-set level (scratch and kernels), and the two buckets.
static mt_exec_key segment_key(const mt_exec_step *st, uint64_t sig_all, int i, int j, int n_threads,
                               int64_t *kv_len) {
    uint64_t h = mt_sig_init();
    int32_t v[5] = {i, j, n_threads, (int32_t)mt_cpu_isa(), st->n_outputs};
    h = mt_sig_add(h, &sig_all, sizeof sig_all);
    h = mt_sig_add(h, v, sizeof v);
    for (int k = 0; k < st->n_outputs; k++) h = mt_sig_add(h, &st->outputs[k]->data, sizeof(void *));
    *kv_len = -1;
    for (int k = i; k < j && *kv_len < 0; k++)
        if (st->nodes[k].op == MT_OP_ATTENTION && st->nodes[k].p.pos) {
            const mt_node *a = &st->nodes[k];
            int64_t mx = 0;
            for (int64_t t = 0; t < a->src[0]->ne[2]; t++)
                if (a->p.pos[t] + 1 > mx) mx = a->p.pos[t] + 1;
            *kv_len = mx;
        }
    mt_exec_key key = {.signature = h,
                       .rows_bucket = mt_exec_rows_bucket(st->n_tokens),
                       .kv_bucket = *kv_len >= 0 ? mt_mask_bucket(*kv_len) : -1,
                       .dtype_policy = DTYPE_POLICY_F32,
                       .device = MT_EXEC_CPU};
    return key;
}

static mt_status compile_segment(mt_exec *e, const mt_exec_step *st, int i, int j, const mt_exec_key *key,
                                 mt_exec_handle **h) {
    // values read after the segment stay in place: the caller's outputs and every tensor of later nodes
    int n_keep = st->n_outputs + 4 * (st->n_nodes - j);
    const mt_tensor **keep = mt_calloc((size_t)n_keep + 1, sizeof *keep, "segment outputs");
    if (!keep) return MT_ERR_NOMEM;
    int nk = 0;
    for (int k = 0; k < st->n_outputs; k++) keep[nk++] = st->outputs[k];
    for (int k = j; k < st->n_nodes; k++) {
        for (int s = 0; s < 3; s++)
            if (st->nodes[k].src[s]) keep[nk++] = st->nodes[k].src[s];
        keep[nk++] = st->nodes[k].dst;
    }
    char label[96];
    snprintf(label, sizeof label, "%s[%d..%d)", st->label ? st->label : "segment", i, j);
    mt_graph_compile_opts o = {.n_tokens = st->n_tokens,
                               .rows_cap = key->rows_bucket,
                               .n_threads = mt_pool_size(e->pool),
                               .label = label,
                               .keep = keep,
                               .n_keep = nk};
    uint64_t t0 = mt_now_us();
    mt_graph_exec *exe = NULL;
    mt_status s = mt_graph_compile_nodes(st->nodes + i, NULL, j - i, &o, &exe);
    free(keep);
    if (s != MT_OK) return s;
    double ms = (double)(mt_now_us() - t0) / 1000.0;
    mt_exec_value v = {exe, mt_graph_exec_bytes(exe), destroy_exe, NULL};
    s = mt_exec_cache_insert(e->cache, key, &v, ms, h);
    if (s != MT_OK) {
        mt_graph_exec_free(exe);
        return s;
    }
    char desc[160];
    snprintf(desc, sizeof desc, "%s: %d stages, %d fusions", label, mt_graph_exec_n_stages(exe),
             mt_graph_exec_n_fusions(exe));
    mt_exec_handle_set_label(e->cache, *h, desc);
    e->stats.compiles++;
    return MT_OK;
}

static void run_segment(mt_exec *e, const mt_exec_step *st, uint64_t sig_all, int i, int j) {
    int64_t kv_len;
    mt_exec_key key = segment_key(st, sig_all, i, j, mt_pool_size(e->pool), &kv_len);
    if (failed_before(e, &key)) {
        mt_eager_run_unchecked(st->nodes + i, j - i, e->pool);
        e->stats.fallbacks++;
        return;
    }
    mt_exec_handle *h = mt_exec_cache_acquire(e->cache, &key);
    if (!h) {
        mt_status s = compile_segment(e, st, i, j, &key, &h);
        if (s != MT_OK) {
            char kb[128], why[400];
            snprintf(why, sizeof why, "%s", mt_last_error());
            mt_exec_key_format(&key, kb, sizeof kb);
            fprintf(stderr,
                    "metallic: graph compile failed for %s nodes %d..%d (%s): %s; running it on the legacy "
                    "path\n",
                    st->label ? st->label : "segment", i, j, kb, why);
            if (mt_metrics_enabled()) {
                char esc[420];
                mt_metrics_escape(why, esc, sizeof esc);
                mt_metrics_emitf("GraphCompileFailed",
                                 "\"segment\":\"%s\",\"key\":\"%s\",\"error\":\"%s\",\"fallback\":\"legacy\"",
                                 st->label ? st->label : "segment", kb, esc);
            }
            if (e->n_failed < MAX_FAILED) e->failed[e->n_failed++] = key;
            e->stats.compile_failures++;
            e->stats.fallbacks++;
            mt_eager_run_unchecked(st->nodes + i, j - i, e->pool);
            return;
        }
    }
    mt_mask m, *mp = NULL;
    if (kv_len > 0 && st->n_tokens == 1) {
        // a decode row: a view of the bucket's causal template, nothing written per step
        mt_mask_seq q = {.q_len = 1, .kv_len = (int32_t)kv_len, .q_pos = (int32_t)kv_len - 1, .causal = true};
        if (mt_mask_get(e->masks, &q, 1, &m) == MT_OK) mp = &m;
    }
    mt_status s = mt_graph_exec_run_nodes(mt_exec_handle_get(h), st->nodes + i, NULL, j - i, mp, e->pool);
    mt_exec_cache_release(e->cache, h);
    if (s != MT_OK) {
        if (!e->warned_range)
            fprintf(stderr, "metallic: graph run of %s fell back to the legacy path: %s\n",
                    st->label ? st->label : "segment", mt_last_error());
        e->warned_range = true;
        e->stats.fallbacks++;
        mt_eager_run_unchecked(st->nodes + i, j - i, e->pool);
        return;
    }
    e->stats.graph_segments++;
    if (mt_metrics_enabled())
        mt_metrics_emitf(
            "GraphSegmentRun",
            "\"segment\":\"%s\",\"nodes\":%d,\"rows_bucket\":%d,\"kv_bucket\":%d,\"kv_bytes_copied\":0",
            st->label ? st->label : "segment", j - i, key.rows_bucket, key.kv_bucket);
}

mt_status mt_exec_run(mt_exec *e, const mt_exec_step *st) {
    if (!st || st->n_nodes < 0 || (st->n_nodes > 0 && !st->nodes) || st->n_tokens < 1 ||
        (st->n_outputs > 0 && !st->outputs))
        return mt_fail(MT_ERR_INVALID, "dispatcher: bad step (%d nodes, %d tokens)", st ? st->n_nodes : -1,
                       st ? st->n_tokens : -1);
    const mt_registry *r = e->registry ? e->registry : mt_registry_global();
    e->stats.runs++;
    bool any = false;
    for (int k = 0; k < st->n_nodes && !any; k++) any = mt_registry_path(r, st->nodes[k].op) == MT_PATH_GRAPH;
    if (!any) { // all legacy: exactly the eager path
        mt_eager_run_unchecked(st->nodes, st->n_nodes, e->pool);
        e->stats.legacy_segments++;
        return MT_OK;
    }
    uint64_t sig_all = mt_graph_signature(st->nodes, NULL, st->n_nodes);
    for (int i = 0; i < st->n_nodes;) {
        bool graph = mt_registry_path(r, st->nodes[i].op) == MT_PATH_GRAPH;
        int j = i + 1;
        while (j < st->n_nodes && (mt_registry_path(r, st->nodes[j].op) == MT_PATH_GRAPH) == graph) j++;
        if (graph) {
            run_segment(e, st, sig_all, i, j);
        } else {
            mt_eager_run_unchecked(st->nodes + i, j - i, e->pool);
            e->stats.legacy_segments++;
        }
        i = j;
    }
    return MT_OK;
}
