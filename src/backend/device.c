// Device abstraction: host memory for the CPU, the CUDA backend behind MT_CUDA.
#include "device.h"

#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>

#include "../core/telemetry.h"
#include "../core/metrics.h"
#include "../exec/cache.h"
#include "../exec/eager.h"
#ifdef MT_CUDA
#include "cuda/backend-cuda.h"
#endif

static mt_status no_cuda(const char *what) {
#ifdef MT_CUDA
    return mt_fail(MT_ERR_UNSUPPORTED, "%s: no usable CUDA device on this machine", what);
#else
    return mt_fail(MT_ERR_UNSUPPORTED, "%s: this build has no CUDA support (only cpu)", what);
#endif
}

bool mt_device_available(mt_device_kind d) {
    if (d == MT_DEVICE_CPU) return true;
#ifdef MT_CUDA
    if (d == MT_DEVICE_CUDA) return mt_cuda_available();
#endif
    return false;
}

const char *mt_device_kind_name(mt_device_kind d) {
    return d == MT_DEVICE_CUDA ? "cuda" : "cpu";
}

const char *mt_device_description(mt_device_kind d) {
#ifdef MT_CUDA
    if (d == MT_DEVICE_CUDA) return mt_cuda_device_name();
#endif
    return d == MT_DEVICE_CPU ? "host CPU" : "";
}

mt_status mt_device_parse(const char *s, mt_device_kind *out) {
    if (s && !strcasecmp(s, "cpu")) {
        *out = MT_DEVICE_CPU;
        return MT_OK;
    }
    if (s && !strcasecmp(s, "cuda")) {
        *out = MT_DEVICE_CUDA;
        return MT_OK;
    }
    return mt_fail(MT_ERR_INVALID, "device '%s': expected cpu or cuda", s ? s : "(null)");
}

mt_status mt_device_alloc(mt_device_kind d, size_t bytes, const char *what, void **out) {
    *out = NULL;
    if (d == MT_DEVICE_CPU) {
        *out = mt_malloc(bytes ? bytes : 1, what);
        return *out ? MT_OK : MT_ERR_NOMEM;
    }
#ifdef MT_CUDA
    return mt_cuda_malloc(out, bytes, what);
#else
    return no_cuda(what);
#endif
}

mt_status mt_device_calloc(mt_device_kind d, size_t bytes, const char *what, void **out) {
    *out = NULL;
    if (d == MT_DEVICE_CPU) {
        *out = mt_calloc(1, bytes ? bytes : 1, what);
        return *out ? MT_OK : MT_ERR_NOMEM;
    }
#ifdef MT_CUDA
    MT_TRY(mt_cuda_malloc(out, bytes, what));
    mt_status st = mt_cuda_memset(*out, 0, bytes);
    if (st != MT_OK) {
        mt_cuda_free(*out);
        *out = NULL;
    }
    return st;
#else
    return no_cuda(what);
#endif
}

void mt_device_free(mt_device_kind d, void *p) {
    if (!p) return;
    if (d == MT_DEVICE_CPU) {
        free(p);
        return;
    }
#ifdef MT_CUDA
    mt_cuda_free(p);
#endif
}

mt_status mt_device_upload(mt_device_kind d, void *dst, const void *src, size_t bytes) {
    if (d == MT_DEVICE_CPU) {
        if (bytes) memmove(dst, src, bytes);
        return MT_OK;
    }
#ifdef MT_CUDA
    return mt_cuda_upload(dst, src, bytes);
#else
    return no_cuda("upload");
#endif
}

mt_status mt_device_download(mt_device_kind d, void *dst, const void *src, size_t bytes) {
    if (d == MT_DEVICE_CPU) {
        if (bytes) memmove(dst, src, bytes);
        return MT_OK;
    }
#ifdef MT_CUDA
    return mt_cuda_download(dst, src, bytes);
#else
    return no_cuda("download");
#endif
}

mt_status mt_device_sync(mt_device_kind d) {
    if (d == MT_DEVICE_CPU) return MT_OK;
#ifdef MT_CUDA
    return mt_cuda_sync();
#else
    return no_cuda("sync");
#endif
}

static size_t align256(size_t n) {
    return (n + 255) & ~(size_t)255;
}

// Visits every weight tensor of the model (input and output views in the same order).
// clang-format off
#define FOR_EACH_WEIGHT(w, L, X)                                                                             \
    X(tok_embd) X(out_norm)                                                                                  \
    for (int l_ = 0; l_ < n_layer; l_++) {                                                                   \
        X(layers[l_].attn_norm) X(layers[l_].wq) X(layers[l_].wk) X(layers[l_].wv)                          \
        X(layers[l_].bq) X(layers[l_].bk) X(layers[l_].bv) X(layers[l_].wo) X(layers[l_].ffn_norm)           \
        X(layers[l_].w_gate) X(layers[l_].w_up) X(layers[l_].w_down)                                         \
    }
// clang-format on

mt_status mt_device_weights_upload(mt_device_kind d, const mt_qwen2_weights *w, int n_layer,
                                   mt_qwen2_weights *out, void **blob, size_t *bytes) {
    memset(out, 0, sizeof *out);
    *blob = NULL;
    *bytes = 0;
    bool tied = w->output.data == w->tok_embd.data;
    size_t total = 0;
#define SIZE(f) total += align256(mt_tensor_nbytes(&w->f));
    FOR_EACH_WEIGHT(w, l, SIZE)
#undef SIZE
    if (!tied) total += align256(mt_tensor_nbytes(&w->output));
    *out = *w;
    out->layers = mt_calloc((size_t)n_layer, sizeof(mt_qwen2_layer), "device layer table");
    if (!out->layers) return MT_ERR_NOMEM;
    memcpy(out->layers, w->layers, (size_t)n_layer * sizeof(mt_qwen2_layer));
    void *base;
    mt_status st = mt_device_alloc(d, total, "model weights", &base);
    if (st != MT_OK) {
        free(out->layers);
        out->layers = NULL;
        return st;
    }
    size_t off = 0;
    // Each view keeps its shape and strides; only the data pointer moves to the copy.
#define COPY(f)                                                                                              \
    if (st == MT_OK) {                                                                                       \
        size_t nb_ = mt_tensor_nbytes(&w->f);                                                                \
        out->f.data = (char *)base + off;                                                                    \
        st = mt_device_upload(d, out->f.data, w->f.data, nb_);                                               \
        off += align256(nb_);                                                                                \
    }
    FOR_EACH_WEIGHT(w, l, COPY)
    if (!tied) COPY(output)
#undef COPY
    if (tied) out->output.data = out->tok_embd.data;
    if (st == MT_OK) st = mt_device_sync(d);
    if (st != MT_OK) {
        mt_device_free(d, base);
        free(out->layers);
        out->layers = NULL;
        return st;
    }
    *blob = base;
    *bytes = total;
#ifdef MT_CUDA
    size_t used = 0, all = 0;
    if (d == MT_DEVICE_CUDA && mt_cuda_mem_info(&used, &all) == MT_OK)
        mt_tel_device_memory("cuda", used, all);
#endif
    return MT_OK;
}

void mt_device_weights_free(mt_device_kind d, mt_qwen2_weights *w, void *blob) {
    mt_device_free(d, blob);
    if (w) {
        free(w->layers);
        w->layers = NULL;
    }
}

mt_status mt_device_run(mt_device_kind d, const mt_node *nodes, int n_nodes) {
    if (d != MT_DEVICE_CUDA)
        return mt_fail(MT_ERR_INVALID, "device run: the cpu runs nodes through the pool");
    return mt_eager_run_cuda(nodes, n_nodes);
}

mt_status mt_device_run_fused(mt_device_kind d, const mt_node *nodes, int n_nodes) {
#ifdef MT_CUDA
    if (d == MT_DEVICE_CUDA) return mt_cuda_run_fused(nodes, n_nodes);
#endif
    (void)d, (void)nodes, (void)n_nodes;
    return no_cuda("fused run");
}

mt_status mt_device_gather_rows(mt_device_kind d, float *dst, const float *src, const int32_t *rows, int n,
                                int width) {
#ifdef MT_CUDA
    if (d == MT_DEVICE_CUDA) return mt_cuda_gather_rows(dst, src, rows, n, width);
#endif
    (void)d, (void)dst, (void)src, (void)rows, (void)n, (void)width;
    return no_cuda("gather rows");
}

mt_status mt_device_argmax(mt_device_kind d, const float *x, int width, int n, int32_t *out) {
#ifdef MT_CUDA
    if (d == MT_DEVICE_CUDA) return mt_cuda_argmax_rows(x, width, n, out);
#endif
    (void)d, (void)x, (void)width, (void)n, (void)out;
    return no_cuda("argmax");
}

mt_status mt_device_sample(mt_device_kind d, const float *row, int n_vocab, mt_sampler *smp,
                           const int32_t *history, int n_history, int32_t *token) {
    MT_ASSERT(!mt_sampler_is_greedy(smp));
#ifdef MT_CUDA
    if (d == MT_DEVICE_CUDA) {
        // the floats the CPU sampler derives from its parameters, computed here the same way
        const mt_sampler_params *p = mt_sampler_params_of(smp);
        mt_cuda_sample_req r = {0};
        r.n_vocab = n_vocab;
        r.inv_t = 1.0f / p->temperature;
        r.top_k = p->top_k;
        r.top_p = p->top_p;
        r.min_p = p->min_p;
        r.log_min_p = p->min_p > 0.0f ? logf(p->min_p) : 0.0f;
        r.repeat_penalty = p->repeat_penalty;
        r.n_win = mt_sampler_penalty_window(smp, history, n_history, &r.win);
        r.u = mt_sampler_peek_uniform(smp);
        bool drew = false;
        MT_TRY(mt_cuda_sample_row(row, &r, token, &drew));
        if (drew) mt_sampler_consume_uniform(smp);
        return MT_OK;
    }
#endif
    (void)d, (void)row, (void)n_vocab, (void)history, (void)n_history, (void)token;
    return no_cuda("sample");
}

mt_status mt_device_reserve(mt_device_kind d, int n_tok, int64_t k) {
    if (d == MT_DEVICE_CPU) return MT_OK;
#ifdef MT_CUDA
    return mt_cuda_reserve(n_tok, k);
#else
    (void)n_tok, (void)k;
    return no_cuda("reserve");
#endif
}

// The CUDA graphs of a session live in an executable cache of their own ("cuda_graphs": the same
// metrics, events and dumps as the CPU plans): key = the step's batch shape, value = a graph executable.
// An executable the cache evicts is not destroyed at once but kept as the spare, and the next capture
// becomes an update of it (cudaGraphExecUpdate) when the launch sequence has the same shape.
struct mt_device_graphs {
    mt_device_kind d;
#ifdef MT_CUDA
    mt_exec_cache *cache;
    void *spare;  // one evicted executable, reused by the next capture
    bool closing; // evictions during free destroy instead of keeping a spare
    uint64_t t0;  // start of the capture in progress (mt_now_us)
#endif
};

#ifdef MT_CUDA
static void graph_retire(void *exe, void *ctx) {
    mt_device_graphs *g = ctx;
    if (!g->closing && !g->spare) {
        g->spare = exe;
        return;
    }
    mt_cuda_exec_destroy(exe);
}

// Every step of a session has the same segment (the whole forward pass), so the key is the shape: token
// rows and logits rows (the KV length is read from device memory at replay: no bucket).
static mt_exec_key graph_key(uint64_t key) {
    const char tag[] = "cuda_step";
    uint32_t n_out = (uint32_t)(key >> 32);
    uint64_t sig = mt_sig_add(mt_sig_add(mt_sig_init(), tag, sizeof tag), &n_out, sizeof n_out);
    return (mt_exec_key){.signature = sig,
                         .rows_bucket = (int32_t)(uint32_t)key,
                         .kv_bucket = -1,
                         .dtype_policy = 0,
                         .device = MT_EXEC_CUDA};
}
#endif

mt_status mt_device_graphs_create(mt_device_kind d, int capacity, mt_device_graphs **out) {
    *out = NULL;
    if (d != MT_DEVICE_CUDA)
        return mt_fail(MT_ERR_UNSUPPORTED, "graphs: only the cuda device captures graphs");
#ifdef MT_CUDA
    mt_device_graphs *g = mt_calloc(1, sizeof *g, "graph cache");
    if (!g) return MT_ERR_NOMEM;
    g->d = d;
    mt_exec_cache_opts o = {.name = "cuda_graphs", .capacity = capacity};
    mt_status st = mt_exec_cache_create(&o, &g->cache);
    if (st != MT_OK) {
        free(g);
        return st;
    }
    *out = g;
    return MT_OK;
#else
    (void)capacity;
    return no_cuda("graphs");
#endif
}

void mt_device_graphs_free(mt_device_graphs *g) {
    if (!g) return;
#ifdef MT_CUDA
    g->closing = true;
    mt_exec_cache_free(g->cache);
    mt_cuda_exec_destroy(g->spare);
#endif
    free(g);
}

bool mt_device_graphs_launch(mt_device_graphs *g, uint64_t key) {
#ifdef MT_CUDA
    if (!g) return false;
    mt_exec_key k = graph_key(key);
    mt_exec_handle *h = mt_exec_cache_acquire(g->cache, &k);
    if (!h) return false;
    mt_status st = mt_cuda_exec_launch(mt_exec_handle_get(h));
    mt_exec_cache_release(g->cache, h);
    return st == MT_OK;
#else
    (void)g, (void)key;
    return false;
#endif
}

mt_status mt_device_graphs_begin(mt_device_graphs *g) {
#ifdef MT_CUDA
    g->t0 = mt_now_us();
    return mt_cuda_capture_begin();
#else
    (void)g;
    return no_cuda("graphs");
#endif
}

mt_status mt_device_graphs_end(mt_device_graphs *g, uint64_t key) {
#ifdef MT_CUDA
    void *exe = NULL;
    bool updated = false;
    size_t nodes = 0;
    MT_TRY(mt_cuda_capture_end(g->spare, &exe, &updated, &nodes));
    if (updated) g->spare = NULL;
    mt_exec_key k = graph_key(key);
    // bytes 0: what an executable holds on the device is not observable; the count budget bounds them
    mt_exec_value v = {.exe = exe, .bytes = 0, .destroy = graph_retire, .destroy_ctx = g};
    mt_exec_handle *h = NULL;
    mt_status st = mt_exec_cache_insert(g->cache, &k, &v, (double)(mt_now_us() - g->t0) * 1e-3, &h);
    if (st != MT_OK) {
        mt_cuda_exec_destroy(exe);
        return st;
    }
    char label[64];
    snprintf(label, sizeof label, "step: %d tokens, %d logits, %zu nodes, %s", (int)(uint32_t)key,
             (int)(uint32_t)(key >> 32), nodes, updated ? "updated" : "instantiated");
    mt_exec_handle_set_label(g->cache, h, label);
    st = mt_cuda_exec_launch(exe);
    mt_exec_cache_release(g->cache, h);
    return st;
#else
    (void)g, (void)key;
    return no_cuda("graphs");
#endif
}

void mt_device_graphs_abort(mt_device_graphs *g) {
#ifdef MT_CUDA
    if (g) mt_cuda_capture_abort();
#else
    (void)g;
#endif
}
