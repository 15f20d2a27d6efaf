// The Qwen2 model behind include/metallic.h: loading, sessions with a multi-sequence KV cache, and the
// forward pass emitted as a node list that the legacy (eager) executor runs.
//
// A session allocates everything at creation: the KV cache (per layer, F32 [head_dim, n_kv, n_ctx, n_seq],
// so grouped-query attention reads the n_kv heads in place), scratch activations for n_batch tokens and
// the node array. A decode call only fills tensor descriptors and nodes; the one allocation it may make
// is growing the logits buffer the first time a batch asks for more logit rows than any before.
#include <math.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include "../backend/cpu/cpu-features.h"
#include "../backend/cpu/repack.h"
#include "../core/metrics.h"
#include "../core/telemetry.h"
#include "../exec/eager.h"
#include "../exec/exec.h"
#include "loader.h"
#include "metallic.h"

struct mt_model {
    mt_model_source src;
};

enum { NODES_PER_LAYER = 17 };

struct mt_session {
    const mt_model *m;
    const mt_qwen2_config *c;
    int n_ctx, n_seq, n_batch, n_threads;
    mt_pool *pool;
    mt_exec *exec;  // dispatcher: legacy or graph path per op (registry), executables cached
    int *seq_len;   // [n_seq] highest position written + 1
    int *seq_count; // [n_seq] tokens of each sequence in the current batch

    float *kv;          // one allocation: K then V of every layer
    mt_tensor *k_cache; // [n_layer] each [hd, n_kv, n_ctx, n_seq]
    mt_tensor *v_cache;

    // scratch for up to n_batch tokens (one allocation, carved below)
    float *scratch;
    int32_t *ids, *pos, *seq; // copies of the batch arrays (tensors point at them)
    int32_t *out_rows;        // batch indices of the rows that want logits
    float *x, *xn, *q, *k, *v, *att, *tmp, *gate, *up, *hid, *xo, *xon;

    float *logits;
    int logits_cap, n_logits;

    // descriptors over the scratch, re-initialized for each batch size
    mt_tensor t_ids, t_x, t_xn, t_q2, t_q3, t_k2, t_k3, t_v2, t_v3, t_att2, t_att3, t_tmp, t_gate, t_up,
        t_hid, t_xo, t_xon, t_logits;
    mt_node *nodes;
    int n_nodes_cap;
    int checked_n, checked_out; // batch shape whose node list passed the op checks

    uint64_t kv_bytes_copied;      // attention reads the cache in place, so this stays 0
    uint64_t kv_bytes_copied_seen; // value at the last ForwardStep event (per-step deltas)

    // Device sessions keep kv, scratch and the weights on the device. The nodes read r_* (the batch
    // arrays: host copies on the CPU, one packed device upload on CUDA), s->w and r_logits.
    mt_device_kind dev;
    const mt_qwen2_weights *w;
    int32_t *r_ids, *r_pos, *r_seq, *r_rows;
    float *r_logits;
    mt_qwen2_weights dw; // device copies of the weights
    void *dw_blob;
    int32_t *d_batch, *h_stage; // [4 * n_batch] packed ids|pos|seq|rows on the device / staged on the host
    float *d_logits;
    int32_t *d_argmax;
    int d_logits_cap;
    bool logits_fresh; // host logits hold the last decode's rows
    bool use_graphs;
    mt_device_graphs *graphs;
};

static bool is_dir(const char *path) {
    struct stat st;
    return stat(path, &st) == 0 && S_ISDIR(st.st_mode);
}

// Checks that hold whatever the file format: vocabulary sizes agree.
static mt_status check_source(const mt_model_source *s) {
    const mt_qwen2_config *c = &s->config;
    MT_TRY(mt_qwen2_config_check(c));
    if (s->weights.tok_embd.ne[1] != c->n_vocab)
        return mt_fail(MT_ERR_FORMAT, "token embedding has %lld rows, config vocabulary is %d",
                       (long long)s->weights.tok_embd.ne[1], c->n_vocab);
    if (s->weights.output.ne[1] != c->n_vocab)
        return mt_fail(MT_ERR_FORMAT, "output matrix has %lld rows, config vocabulary is %d",
                       (long long)s->weights.output.ne[1], c->n_vocab);
    if (s->tokenizer && mt_tokenizer_n_vocab(s->tokenizer) > c->n_vocab)
        return mt_fail(MT_ERR_FORMAT, "tokenizer has %d tokens, more than the %d embedding rows",
                       mt_tokenizer_n_vocab(s->tokenizer), c->n_vocab);
    return MT_OK;
}

// The memory picture of a loaded model: file bytes, weights by kind, dtype and block. Feeds the
// dashboard always (a few hundred tensors, once) and emits GgufFileMmap and ModelWeights when a sink is on.
static void model_telemetry(const mt_model *m, const char *path) {
    static const char *const kinds[] = {"token_embd",  "output",      "output_norm", "attn_norm",
                                        "attn_q",      "attn_k",      "attn_v",      "attn_q_bias",
                                        "attn_k_bias", "attn_v_bias", "attn_output", "ffn_norm",
                                        "ffn_gate",    "ffn_up",      "ffn_down"};
    enum { N_KINDS = sizeof kinds / sizeof kinds[0] };
    const mt_qwen2_weights *w = &m->src.weights;
    const mt_qwen2_config *c = &m->src.config;
    uint64_t by_kind[N_KINDS] = {0}, by_dtype[MT_DTYPE_END] = {0}, total = 0;
    uint64_t blocks[MT_TEL_MAX_BLOCKS] = {0};
    const mt_tensor *top[3] = {&w->tok_embd, c->tied_output ? NULL : &w->output, &w->out_norm};
    for (int k = 0; k < 3; k++)
        if (top[k]) {
            uint64_t b = mt_tensor_nbytes(top[k]);
            by_kind[k] += b, total += b;
            if ((unsigned)top[k]->dtype < MT_DTYPE_END) by_dtype[top[k]->dtype] += b;
        }
    for (int l = 0; l < c->n_layer; l++) {
        const mt_qwen2_layer *L = &w->layers[l];
        const mt_tensor *t[12] = {&L->attn_norm, &L->wq, &L->wk,       &L->wv,     &L->bq,   &L->bk,
                                  &L->bv,        &L->wo, &L->ffn_norm, &L->w_gate, &L->w_up, &L->w_down};
        for (int k = 0; k < 12; k++) {
            uint64_t b = mt_tensor_nbytes(t[k]);
            by_kind[3 + k] += b, total += b;
            if ((unsigned)t[k]->dtype < MT_DTYPE_END) by_dtype[t[k]->dtype] += b;
            if (l < MT_TEL_MAX_BLOCKS) blocks[l] += b;
        }
    }
    mt_tel_mem_set_model(path, m->src.file_bytes, total, c->n_layer, blocks, by_kind[0], by_kind[1]);
    if (!mt_metrics_enabled()) return;
    char esc[1024], fields[3800];
    mt_metrics_escape(path, esc, sizeof esc);
    mt_metrics_emitf("GgufFileMmap", "\"path\":\"%s\",\"bytes\":%llu", esc,
                     (unsigned long long)m->src.file_bytes);
    int o =
        snprintf(fields, sizeof fields, "\"total_bytes\":%llu,\"breakdown\":{", (unsigned long long)total);
    for (int k = 0; k < N_KINDS && o < (int)sizeof fields; k++)
        o += snprintf(fields + o, sizeof fields - (size_t)o, "%s\"%s\":%llu", k ? "," : "", kinds[k],
                      (unsigned long long)by_kind[k]);
    if (o < (int)sizeof fields) o += snprintf(fields + o, sizeof fields - (size_t)o, "},\"by_dtype\":{");
    for (int d = 0, first = 1; d < MT_DTYPE_END && o < (int)sizeof fields; d++)
        if (by_dtype[d]) {
            o += snprintf(fields + o, sizeof fields - (size_t)o, "%s\"%s\":%llu", first ? "" : ",",
                          mt_dtype_name((mt_dtype)d), (unsigned long long)by_dtype[d]);
            first = 0;
        }
    if (o < (int)sizeof fields) o += snprintf(fields + o, sizeof fields - (size_t)o, "},\"blocks\":[");
    for (int l = 0; l < c->n_layer && l < MT_TEL_MAX_BLOCKS && o < (int)sizeof fields; l++)
        o += snprintf(fields + o, sizeof fields - (size_t)o, "%s%llu", l ? "," : "",
                      (unsigned long long)blocks[l]);
    if (o < (int)sizeof fields - 1) {
        fields[o++] = ']';
        fields[o] = 0;
        mt_metrics_emitf("ModelWeights", "%s", fields);
    } else {
        mt_metrics_emitf("ModelWeights", "\"total_bytes\":%llu", (unsigned long long)total);
    }
}

mt_status mt_model_load(const char *path, mt_model **out) {
    *out = NULL;
    if (!path) return mt_fail(MT_ERR_INVALID, "model path is NULL");
    mt_model *m = mt_calloc(1, sizeof *m, "model");
    if (!m) return MT_ERR_NOMEM;
    mt_status st = is_dir(path) ? mt_load_hf(path, &m->src) : mt_load_gguf(path, &m->src);
    if (st == MT_OK) st = check_source(&m->src);
    if (st != MT_OK) {
        mt_model_source_free(&m->src);
        free(m);
        return st;
    }
    model_telemetry(m, path);
    *out = m;
    return MT_OK;
}

void mt_model_free(mt_model *m) {
    if (!m) return;
    mt_cpu_repack_release(m);
    mt_model_source_free(&m->src);
    free(m);
}

const mt_qwen2_config *mt_model_config(const mt_model *m) {
    return &m->src.config;
}
const mt_qwen2_weights *mt_model_weights(const mt_model *m) {
    return &m->src.weights;
}
const mt_tokenizer *mt_model_tokenizer(const mt_model *m) {
    return m->src.tokenizer;
}
const mt_sampler_params *mt_model_gen_params(const mt_model *m) {
    return &m->src.gen;
}

const char *mt_model_chat_template(const mt_model *m) {
    return m->src.chat_template;
}
size_t mt_model_weight_bytes(const mt_model *m) {
    return m->src.weight_bytes;
}

mt_session_opts mt_session_default_opts(void) {
    mt_session_opts o = {
        .n_ctx = 0, .n_seq = 1, .n_threads = 0, .n_batch = 0, .device = MT_DEVICE_CPU, .cuda_graphs = true};
    return o;
}

// Context length when the caller gives none: the trained length, capped so the KV cache takes at most
// about a quarter of physical memory.
static int default_ctx(const mt_qwen2_config *c, int n_seq) {
    long pages = sysconf(_SC_PHYS_PAGES), page = sysconf(_SC_PAGESIZE);
    uint64_t mem = pages > 0 && page > 0 ? (uint64_t)pages * (uint64_t)page : (uint64_t)8 << 30;
    uint64_t per_pos = 2ull * (uint64_t)c->n_layer * (uint64_t)c->n_head_kv * (uint64_t)c->head_dim *
                       sizeof(float) * (uint64_t)n_seq;
    uint64_t cap = mem / 4 / per_pos;
    int n = c->n_ctx_train;
    if ((uint64_t)n > cap) n = (int)cap;
    return n;
}

static void device_free(mt_session *s) {
    mt_device_graphs_free(s->graphs);
    mt_device_free(s->dev, s->kv);
    mt_device_free(s->dev, s->scratch);
    mt_device_free(s->dev, s->d_batch);
    mt_device_free(s->dev, s->d_logits);
    mt_device_free(s->dev, s->d_argmax);
    mt_device_weights_free(s->dev, &s->dw, s->dw_blob);
    free(s->h_stage);
    s->kv = NULL;
    s->scratch = NULL;
}

void mt_session_free(mt_session *s) {
    if (!s) return;
    if (s->dev != MT_DEVICE_CPU) device_free(s);
    mt_exec_free(s->exec);
    mt_pool_free(s->pool);
    free(s->kv);
    free(s->k_cache);
    free(s->v_cache);
    free(s->scratch);
    free(s->ids);
    free(s->logits);
    free(s->nodes);
    free(s->seq_len);
    free(s);
}

static mt_status session_alloc(mt_session *s) {
    const mt_qwen2_config *c = s->c;
    size_t nb = (size_t)s->n_batch;
    size_t per_layer = (size_t)c->head_dim * (size_t)c->n_head_kv * (size_t)s->n_ctx * (size_t)s->n_seq;
    if (per_layer > SIZE_MAX / sizeof(float) / 2 / (size_t)c->n_layer)
        return mt_fail(MT_ERR_NOMEM, "KV cache of %d positions x %d sequences overflows", s->n_ctx, s->n_seq);
    // calloc: untouched cache pages cost no physical memory until written
    if (s->dev == MT_DEVICE_CPU)
        s->kv = mt_calloc(2 * (size_t)c->n_layer * per_layer, sizeof(float), "KV cache");
    else
        MT_TRY(mt_device_calloc(s->dev, 2 * (size_t)c->n_layer * per_layer * sizeof(float), "KV cache",
                                (void **)&s->kv));
    s->k_cache = mt_calloc((size_t)c->n_layer, sizeof(mt_tensor), "K cache tensors");
    s->v_cache = mt_calloc((size_t)c->n_layer, sizeof(mt_tensor), "V cache tensors");
    if (!s->kv || !s->k_cache || !s->v_cache) return MT_ERR_NOMEM;
    int64_t ne[4] = {c->head_dim, c->n_head_kv, s->n_ctx, s->n_seq};
    for (int l = 0; l < c->n_layer; l++) {
        MT_TRY(mt_tensor_init(&s->k_cache[l], MT_F32, 4, ne, s->kv + (size_t)(2 * l) * per_layer));
        MT_TRY(mt_tensor_init(&s->v_cache[l], MT_F32, 4, ne, s->kv + (size_t)(2 * l + 1) * per_layer));
        s->k_cache[l].name = "k_cache";
        s->v_cache[l].name = "v_cache";
    }

    size_t d = (size_t)c->n_embd, q = (size_t)c->n_head * c->head_dim,
           kv = (size_t)c->n_head_kv * c->head_dim, ff = (size_t)c->n_ff;
    size_t widths[12] = {d, d, q, kv, kv, q, d, ff, ff, ff, d, d}; // x xn q k v att tmp gate up hid xo xon
    float **bufs[12] = {&s->x,   &s->xn,   &s->q,  &s->k,   &s->v,  &s->att,
                        &s->tmp, &s->gate, &s->up, &s->hid, &s->xo, &s->xon};
    // Every buffer starts on a 64-byte boundary: the vector kernels' loads are aligned (an unaligned
    // base made every 32-byte load straddle two cache lines).
    size_t total = 0;
    for (int i = 0; i < 12; i++) {
        if (widths[i] > SIZE_MAX / sizeof(float) / nb / 16)
            return mt_fail(MT_ERR_NOMEM, "scratch for a batch of %d tokens overflows", s->n_batch);
        widths[i] = (widths[i] * nb + 15) & ~(size_t)15; // floats per buffer, a multiple of 16
        total += widths[i];
    }
    // malloc, not calloc: every scratch value is written before it is read
    if (s->dev == MT_DEVICE_CPU)
        s->scratch = mt_malloc_aligned(total * sizeof(float), "activation scratch");
    else
        MT_TRY(mt_device_alloc(s->dev, total * sizeof(float), "activation scratch", (void **)&s->scratch));
    s->ids = mt_malloc(4 * nb * sizeof(int32_t), "batch arrays");
    if (!s->scratch || !s->ids) return MT_ERR_NOMEM;
    float *p = s->scratch;
    for (int i = 0; i < 12; i++) {
        *bufs[i] = p;
        p += widths[i];
    }
    s->pos = s->ids + nb;
    s->seq = s->pos + nb;
    s->out_rows = s->seq + nb;

    s->logits_cap = 1;
    s->logits = mt_malloc((size_t)c->n_vocab * sizeof(float), "logits");
    if (!s->logits) return MT_ERR_NOMEM;

    s->seq_len = mt_calloc(2 * (size_t)s->n_seq, sizeof(int), "sequence lengths");
    if (!s->seq_len) return MT_ERR_NOMEM;
    s->seq_count = s->seq_len + s->n_seq;
    s->n_nodes_cap = 1 + c->n_layer * NODES_PER_LAYER;
    s->nodes = mt_calloc((size_t)s->n_nodes_cap + 2, sizeof(mt_node), "node list");
    if (!s->nodes) return MT_ERR_NOMEM;
    MT_TRY(mt_cpu_isa_init()); // METALLIC_CPU_ISA: a bad value is an error here, not a silent fallback
    MT_TRY(mt_pool_create(s->n_threads, &s->pool));
    mt_exec_opts eo = {.pool = s->pool};
    return mt_exec_create(&eo, &s->exec);
}

// KV cache and scratch sizes for the dashboard's memory view and the HostMemory event.
static void session_telemetry(const mt_session *s) {
    const mt_qwen2_config *c = s->c;
    uint64_t per_pos =
        2ull * (uint64_t)c->n_layer * (uint64_t)c->n_head_kv * (uint64_t)c->head_dim * sizeof(float);
    uint64_t rows = 0;
    for (int i = 0; i < s->n_seq; i++) rows += (uint64_t)s->seq_len[i];
    uint64_t d = (uint64_t)c->n_embd, q = (uint64_t)c->n_head * (uint64_t)c->head_dim,
             kv = (uint64_t)c->n_head_kv * (uint64_t)c->head_dim, ff = (uint64_t)c->n_ff;
    uint64_t scratch = (5 * d + 2 * q + 2 * kv + 3 * ff + 4) * (uint64_t)s->n_batch * sizeof(float) +
                       (uint64_t)s->logits_cap * (uint64_t)c->n_vocab * sizeof(float) +
                       (uint64_t)(s->n_nodes_cap + 2) * sizeof(mt_node);
    mt_tel_mem_set_session(per_pos * (uint64_t)s->n_ctx * (uint64_t)s->n_seq, per_pos * rows, scratch);
}

static mt_status device_setup(mt_session *s);

// Packed copies of the matrices in the kernels' layouts (backend/cpu/repack.h: 8-row groups of the
// quantized types for decode; 16-row k-major F16 for decode and prefill, which replaces the stored rows'
// mapped pages), once per model (later sessions find them registered); METALLIC_REPACK=0 keeps every
// matmul on the mmap alone. The packed set is the output matrix and the seven matrices of every layer:
// matrix i of packed_matrix.
static bool repack_enabled(void) {
    const char *env = getenv("METALLIC_REPACK");
    return !(env && !strcmp(env, "0")) && mt_cpu_isa() != MT_ISA_SCALAR;
}

static int n_packed_matrices(const mt_model *m) {
    return 1 + 7 * m->src.config.n_layer;
}

static const mt_tensor *packed_matrix(const mt_model *m, int i) {
    const mt_qwen2_weights *w = &m->src.weights;
    if (i == 0) return &w->output;
    const mt_qwen2_layer *L = &w->layers[(i - 1) / 7];
    const mt_tensor *t[7] = {&L->wq, &L->wk, &L->wv, &L->wo, &L->w_gate, &L->w_up, &L->w_down};
    return t[(i - 1) % 7];
}

size_t mt_model_cpu_repack_bytes(const mt_model *m, size_t *replaced) {
    size_t bytes = 0, rep = 0;
    for (int i = 0; repack_enabled() && i < n_packed_matrices(m); i++) {
        bytes += mt_cpu_repack_tensor_bytes(packed_matrix(m, i));
        rep += mt_cpu_repack_source_bytes(packed_matrix(m, i));
    }
    if (replaced) *replaced = rep;
    return bytes;
}

static mt_status cpu_repack(const mt_model *m) {
    if (!repack_enabled()) return MT_OK;
    const size_t before = mt_cpu_repack_bytes(), rel0 = mt_cpu_repack_released_bytes();
    for (int i = 0; i < n_packed_matrices(m); i++) MT_TRY(mt_cpu_repack_tensor(packed_matrix(m, i), m));
    if (mt_metrics_enabled() && mt_cpu_repack_bytes() != before)
        mt_metrics_emitf("WeightRepack", "\"bytes\":%llu,\"total_bytes\":%llu,\"released_bytes\":%llu",
                         (unsigned long long)(mt_cpu_repack_bytes() - before),
                         (unsigned long long)mt_cpu_repack_bytes(),
                         (unsigned long long)(mt_cpu_repack_released_bytes() - rel0));
    return MT_OK;
}

mt_status mt_session_create(mt_model *m, const mt_session_opts *o, mt_session **out) {
    *out = NULL;
    mt_session_opts d = mt_session_default_opts();
    if (!o) o = &d;
    const mt_qwen2_config *c = &m->src.config;
    if (o->n_seq < 1 || o->n_seq > 4096)
        return mt_fail(MT_ERR_INVALID, "n_seq = %d is outside [1, 4096]", o->n_seq);
    if (o->n_ctx < 0 || o->n_ctx > c->n_ctx_train)
        return mt_fail(MT_ERR_INVALID, "n_ctx = %d is outside [0, %d] (the model's context length)", o->n_ctx,
                       c->n_ctx_train);
    if (o->n_batch < 0) return mt_fail(MT_ERR_INVALID, "n_batch = %d is negative", o->n_batch);
    if (o->n_threads < 0 || o->n_threads > 1024)
        return mt_fail(MT_ERR_INVALID, "n_threads = %d is outside [0, 1024]", o->n_threads);
    mt_session *s = mt_calloc(1, sizeof *s, "session");
    if (!s) return MT_ERR_NOMEM;
    s->m = m;
    s->c = c;
    s->n_seq = o->n_seq;
    s->n_threads = o->n_threads;
    s->n_ctx = o->n_ctx ? o->n_ctx : default_ctx(c, o->n_seq);
    if (s->n_ctx < 1) {
        mt_session_free(s);
        return mt_fail(MT_ERR_NOMEM, "no KV cache of even one position fits in a quarter of memory");
    }
    // more tokens than every sequence's whole context can never be decoded at once
    int64_t most = (int64_t)s->n_ctx * s->n_seq;
    s->n_batch = o->n_batch == 0 ? s->n_ctx : (int)(o->n_batch < most ? o->n_batch : most);
    s->dev = o->device;
    s->w = &m->src.weights;
    s->use_graphs = o->cuda_graphs;
    if (s->dev != MT_DEVICE_CPU && !mt_device_available(s->dev)) {
        free(s);
        return mt_fail(MT_ERR_UNSUPPORTED, "device %s: %s", mt_device_kind_name(o->device),
                       o->device == MT_DEVICE_CUDA ? "no CUDA support in this build or no usable GPU"
                                                   : "unknown device");
    }
    mt_status st = session_alloc(s);
    if (st == MT_OK && s->dev != MT_DEVICE_CPU) st = device_setup(s);
    if (st == MT_OK && s->dev == MT_DEVICE_CPU) st = cpu_repack(m);
    if (st != MT_OK) {
        mt_session_free(s);
        return st;
    }
    session_telemetry(s);
    mt_tel_emit_host_memory();
    *out = s;
    return MT_OK;
}

int mt_session_n_ctx(const mt_session *s) {
    return s->n_ctx;
}
uint64_t mt_session_kv_bytes_copied(const mt_session *s) {
    return s->kv_bytes_copied;
}

void mt_session_seq_clear(mt_session *s, int seq) {
    // attention reads positions 0..pos of the token's own sequence only, so stale rows are never read
    // once the sequence is refilled from position 0: nothing to erase
    if (seq >= 0 && seq < s->n_seq) s->seq_len[seq] = 0;
}

const float *mt_session_logits(const mt_session *s, int i) {
    if (i < 0 || i >= s->n_logits) return NULL;
    if (s->dev != MT_DEVICE_CPU && !s->logits_fresh) {
        // the copy happens on the first read after a decode (the host buffer is the session's own)
        mt_session *w = (mt_session *)s;
        size_t bytes = (size_t)s->n_logits * (size_t)s->c->n_vocab * sizeof(float);
        if (mt_device_download(s->dev, w->logits, s->d_logits, bytes) != MT_OK) return NULL;
        w->logits_fresh = true;
    }
    return s->logits + (size_t)i * (size_t)s->c->n_vocab;
}

static mt_status validate(mt_session *s, const mt_batch *b) {
    if (!b || b->n < 1 || !b->tokens || !b->pos || !b->seq)
        return mt_fail(MT_ERR_INVALID, "batch is empty or lacks tokens/pos/seq");
    if (b->n > s->n_batch)
        return mt_fail(MT_ERR_RANGE, "batch of %d tokens exceeds the session's n_batch of %d", b->n,
                       s->n_batch);
    for (int i = 0; i < b->n; i++) {
        if (b->tokens[i] < 0 || b->tokens[i] >= s->c->n_vocab)
            return mt_fail(MT_ERR_INVALID, "token %d (batch index %d) is outside the vocabulary of %d",
                           b->tokens[i], i, s->c->n_vocab);
        if (b->seq[i] < 0 || b->seq[i] >= s->n_seq)
            return mt_fail(MT_ERR_INVALID, "sequence %d (batch index %d) is outside [0, %d)", b->seq[i], i,
                           s->n_seq);
        if (b->pos[i] < 0 || b->pos[i] >= s->n_ctx)
            return mt_fail(MT_ERR_RANGE, "position %d does not fit the context of %d tokens", b->pos[i],
                           s->n_ctx);
    }
    // a token may not skip ahead of its sequence: attention would read cache rows never written
    for (int i = 0; i < b->n; i++) s->seq_count[b->seq[i]] = 0;
    for (int i = 0; i < b->n; i++) s->seq_count[b->seq[i]]++;
    for (int i = 0; i < b->n; i++) {
        int have = s->seq_len[b->seq[i]], n_new = s->seq_count[b->seq[i]];
        if (b->pos[i] >= have + n_new)
            return mt_fail(
                MT_ERR_RANGE,
                "position %d of sequence %d leaves a gap: it holds %d positions and the batch adds %d",
                b->pos[i], b->seq[i], have, n_new);
    }
    return MT_OK;
}

static void tensor2(mt_tensor *t, float *data, int64_t ne0, int64_t ne1) {
    int64_t ne[2] = {ne0, ne1};
    MT_ASSERT(mt_tensor_init(t, MT_F32, 2, ne, data) == MT_OK);
}

static void tensor3(mt_tensor *t, float *data, int64_t ne0, int64_t ne1, int64_t ne2) {
    int64_t ne[3] = {ne0, ne1, ne2};
    MT_ASSERT(mt_tensor_init(t, MT_F32, 3, ne, data) == MT_OK);
}

static mt_node *emit(mt_node *nd, mt_op_kind op, const mt_tensor *a, const mt_tensor *b, const mt_tensor *c,
                     mt_tensor *dst, const char *label) {
    memset(nd, 0, sizeof *nd);
    nd->op = op;
    nd->src[0] = a;
    nd->src[1] = b;
    nd->src[2] = c;
    nd->dst = dst;
    nd->label = label;
    return nd;
}

// Fills the descriptors and the body nodes (embedding and all blocks) for a batch of n tokens.
static int build_body(mt_session *s, int n) {
    const mt_qwen2_config *c = s->c;
    const mt_qwen2_weights *w = s->w;
    int64_t d = c->n_embd, hd = c->head_dim, H = c->n_head, KV = c->n_head_kv, ff = c->n_ff;
    int64_t ne1 = n;
    MT_ASSERT(mt_tensor_init(&s->t_ids, MT_I32, 1, &ne1, s->r_ids) == MT_OK);
    tensor2(&s->t_x, s->x, d, n);
    tensor2(&s->t_xn, s->xn, d, n);
    tensor2(&s->t_q2, s->q, H * hd, n);
    tensor3(&s->t_q3, s->q, hd, H, n);
    tensor2(&s->t_k2, s->k, KV * hd, n);
    tensor3(&s->t_k3, s->k, hd, KV, n);
    tensor2(&s->t_v2, s->v, KV * hd, n);
    tensor3(&s->t_v3, s->v, hd, KV, n);
    tensor3(&s->t_att3, s->att, hd, H, n);
    tensor2(&s->t_att2, s->att, H * hd, n);
    tensor2(&s->t_tmp, s->tmp, d, n);
    tensor2(&s->t_gate, s->gate, ff, n);
    tensor2(&s->t_up, s->up, ff, n);
    tensor2(&s->t_hid, s->hid, ff, n);

    mt_node *nd = s->nodes;
    emit(nd++, MT_OP_EMBEDDING, &w->tok_embd, &s->t_ids, NULL, &s->t_x, "embedding");
    for (int l = 0; l < c->n_layer; l++) {
        const mt_qwen2_layer *L = &w->layers[l];
        mt_node *first = nd;
        emit(nd++, MT_OP_RMSNORM, &s->t_x, &L->attn_norm, NULL, &s->t_xn, "attn_norm")->p.eps = c->rms_eps;
        emit(nd++, MT_OP_MATMUL, &L->wq, &s->t_xn, &L->bq, &s->t_q2, "attn_q");
        emit(nd++, MT_OP_MATMUL, &L->wk, &s->t_xn, &L->bk, &s->t_k2, "attn_k");
        emit(nd++, MT_OP_MATMUL, &L->wv, &s->t_xn, &L->bv, &s->t_v2, "attn_v");
        emit(nd++, MT_OP_ROPE, &s->t_q3, NULL, NULL, &s->t_q3, "rope_q");
        emit(nd++, MT_OP_ROPE, &s->t_k3, NULL, NULL, &s->t_k3, "rope_k");
        emit(nd++, MT_OP_KV_WRITE, &s->t_k3, NULL, NULL, &s->k_cache[l], "kv_write_k");
        emit(nd++, MT_OP_KV_WRITE, &s->t_v3, NULL, NULL, &s->v_cache[l], "kv_write_v");
        emit(nd++, MT_OP_ATTENTION, &s->t_q3, &s->k_cache[l], &s->v_cache[l], &s->t_att3, "sdpa");
        emit(nd++, MT_OP_MATMUL, &L->wo, &s->t_att2, NULL, &s->t_tmp, "attn_output");
        emit(nd++, MT_OP_ADD, &s->t_x, &s->t_tmp, NULL, &s->t_x, "attn_residual");
        emit(nd++, MT_OP_RMSNORM, &s->t_x, &L->ffn_norm, NULL, &s->t_xn, "ffn_norm")->p.eps = c->rms_eps;
        emit(nd++, MT_OP_MATMUL, &L->w_gate, &s->t_xn, NULL, &s->t_gate, "ffn_gate");
        emit(nd++, MT_OP_MATMUL, &L->w_up, &s->t_xn, NULL, &s->t_up, "ffn_up");
        emit(nd++, MT_OP_SWIGLU, &s->t_gate, &s->t_up, NULL, &s->t_hid, "ffn_swiglu");
        emit(nd++, MT_OP_MATMUL, &L->w_down, &s->t_hid, NULL, &s->t_tmp, "ffn_down");
        emit(nd++, MT_OP_ADD, &s->t_x, &s->t_tmp, NULL, &s->t_x, "ffn_residual");
        MT_ASSERT(nd - first == NODES_PER_LAYER);
        for (mt_node *p = first; p < nd; p++) {
            // every position-dependent op gets the batch's positions and sequence slots
            p->p.pos = s->r_pos;
            p->p.seq = s->r_seq;
            if (p->op == MT_OP_ROPE) p->p.freq_base = c->rope_base;
        }
    }
    return (int)(nd - s->nodes);
}

// The head: final norm and output matrix over the gathered rows that want logits.
static int build_head(mt_session *s, int n_out, mt_node *nd) {
    const mt_qwen2_config *c = s->c;
    const mt_qwen2_weights *w = s->w;
    tensor2(&s->t_xo, s->xo, c->n_embd, n_out);
    tensor2(&s->t_xon, s->xon, c->n_embd, n_out);
    tensor2(&s->t_logits, s->r_logits, c->n_vocab, n_out);
    emit(nd, MT_OP_RMSNORM, &s->t_xo, &w->out_norm, NULL, &s->t_xon, "output_norm")->p.eps = c->rms_eps;
    emit(nd + 1, MT_OP_MATMUL, &w->output, &s->t_xon, NULL, &s->t_logits, "output");
    return 2;
}

static mt_status check_nodes(const mt_node *nodes, int n) {
    for (int i = 0; i < n; i++) {
        mt_status st = mt_op_check(&nodes[i]);
        if (st != MT_OK) {
            char why[400];
            snprintf(why, sizeof why, "%s", mt_last_error());
            return mt_fail(MT_ERR_INTERNAL, "model graph node %d (%s): %s", i, nodes[i].label, why);
        }
    }
    return MT_OK;
}

// Latency mode: the embedding and each block go through the dispatcher as their own step under a scope,
// so legacy nodes are timed at forward_step/block_N/<op> and each block has its total on either path.
static mt_status run_body_profiled(mt_session *s, int n_body, int n) {
    MT_ASSERT(n_body == 1 + s->c->n_layer * NODES_PER_LAYER);
    const mt_tensor *out[] = {&s->t_x};
    uint64_t t0 = mt_tel_now_ns();
    MT_TRY(mt_exec_run(s->exec, &(mt_exec_step){s->nodes, 1, n, out, 1, "embedding"}));
    mt_tel_emit_internal("embedding", (double)(mt_tel_now_ns() - t0) / 1e3);
    for (int l = 0; l < s->c->n_layer; l++) {
        char name[32], ev[40];
        snprintf(name, sizeof name, "block_%d", l);
        snprintf(ev, sizeof ev, "block_%d_total", l);
        mt_tel_begin(name);
        mt_status st = mt_exec_run(
            s->exec, &(mt_exec_step){s->nodes + 1 + l * NODES_PER_LAYER, NODES_PER_LAYER, n, out, 1, name});
        mt_tel_end(ev);
        MT_TRY(st);
    }
    return MT_OK;
}

// One ForwardStep event per decode call (only with a sink or latency mode on).
static void forward_step_event(mt_session *s, const mt_batch *b, int n_out, double us) {
    int lo = b->pos[0], hi = b->pos[0];
    for (int i = 1; i < b->n; i++) {
        if (b->pos[i] < lo) lo = b->pos[i];
        if (b->pos[i] > hi) hi = b->pos[i];
    }
    session_telemetry(s);
    if (!mt_metrics_enabled()) return;
    mt_tel_mem mem;
    mt_tel_mem_get(&mem);
    // the logits are read by the host once per step that produced any (a device-to-host copy on a GPU)
    uint64_t copied = s->kv_bytes_copied - s->kv_bytes_copied_seen;
    s->kv_bytes_copied_seen = s->kv_bytes_copied;
    mt_metrics_emitf("ForwardStep",
                     "\"tokens\":%d,\"pos_first\":%d,\"pos_last\":%d,\"n_logits\":%d,\"logits_syncs\":%d,"
                     "\"kv_bytes_copied\":%llu,\"kv_bytes_copied_total\":%llu,\"kv_cache_used_bytes\":%llu,"
                     "\"duration_us\":%.3f",
                     b->n, lo, hi, n_out, n_out > 0 ? 1 : 0, (unsigned long long)copied,
                     (unsigned long long)s->kv_bytes_copied, (unsigned long long)mem.kv_used_bytes, us);
}

// ---- device sessions --------------------------------------------------------------------------------

// After session_alloc: weights uploaded once in their stored dtype, batch arrays, logits, GEMM staging,
// graph cache.
static mt_status device_setup(mt_session *s) {
    const mt_qwen2_config *c = s->c;
    size_t bytes;
    MT_TRY(mt_device_weights_upload(s->dev, &s->m->src.weights, c->n_layer, &s->dw, &s->dw_blob, &bytes));
    s->w = &s->dw;
    size_t nb = (size_t)s->n_batch;
    MT_TRY(mt_device_alloc(s->dev, 4 * nb * sizeof(int32_t), "batch arrays", (void **)&s->d_batch));
    s->h_stage = mt_malloc(4 * nb * sizeof(int32_t), "batch staging");
    if (!s->h_stage) return MT_ERR_NOMEM;
    s->d_logits_cap = 1;
    MT_TRY(mt_device_alloc(s->dev, (size_t)c->n_vocab * sizeof(float), "logits", (void **)&s->d_logits));
    MT_TRY(mt_device_alloc(s->dev, nb * sizeof(int32_t), "argmax", (void **)&s->d_argmax));
    int64_t k = c->n_ff;
    if (c->n_embd > k) k = c->n_embd;
    if ((int64_t)c->n_head * c->head_dim > k) k = (int64_t)c->n_head * c->head_dim;
    MT_TRY(mt_device_reserve(s->dev, s->n_batch, k));
    if (s->use_graphs) MT_TRY(mt_device_graphs_create(s->dev, 0, &s->graphs));
    return mt_device_sync(s->dev);
}

// The launches of one step: body, gather of the rows that want logits, head.
// The graph path runs the fused launch sequence; legacy keeps one kernel per op.
static mt_status device_launch(mt_session *s, int n_body, int n_head, int n_out) {
    mt_status (*run)(mt_device_kind, const mt_node *, int) = s->graphs ? mt_device_run_fused : mt_device_run;
    MT_TRY(run(s->dev, s->nodes, n_body));
    if (!n_head) return MT_OK;
    MT_TRY(mt_device_gather_rows(s->dev, s->xo, s->x, s->r_rows, n_out, s->c->n_embd));
    return run(s->dev, s->nodes + n_body, n_head);
}

static mt_status decode_device(mt_session *s, const mt_batch *b, int n, int n_out) {
    if (n_out > s->d_logits_cap) {
        // the captured graphs hold the old logits pointer: drop them with it
        MT_TRY(mt_device_sync(s->dev));
        mt_device_free(s->dev, s->d_logits);
        s->d_logits = NULL;
        MT_TRY(mt_device_alloc(s->dev, (size_t)n_out * (size_t)s->c->n_vocab * sizeof(float), "logits",
                               (void **)&s->d_logits));
        s->d_logits_cap = n_out;
        if (s->graphs) {
            mt_device_graphs_free(s->graphs);
            s->graphs = NULL;
            MT_TRY(mt_device_graphs_create(s->dev, 0, &s->graphs));
        }
    }
    int n_body, n_head;
    if (n != s->checked_n || n_out != s->checked_out) {
        // the op checks read ids and positions, so they run on a twin list over the host arrays
        s->r_ids = s->ids, s->r_pos = s->pos, s->r_seq = s->seq, s->r_logits = s->logits;
        s->w = &s->m->src.weights;
        n_body = build_body(s, n);
        n_head = n_out ? build_head(s, n_out, s->nodes + n_body) : 0;
        s->w = &s->dw;
        MT_TRY(check_nodes(s->nodes, n_body));
        if (n_head) MT_TRY(check_nodes(s->nodes + n_body, n_head));
        s->checked_n = n;
        s->checked_out = n_out;
    }
    // one upload per step: ids | pos | seq | rows, packed at offsets fixed by the batch shape
    int32_t *h = s->h_stage;
    memcpy(h, s->ids, (size_t)n * sizeof(int32_t));
    memcpy(h + n, s->pos, (size_t)n * sizeof(int32_t));
    memcpy(h + 2 * n, s->seq, (size_t)n * sizeof(int32_t));
    memcpy(h + 3 * n, s->out_rows, (size_t)n_out * sizeof(int32_t));
    MT_TRY(mt_device_upload(s->dev, s->d_batch, h, (size_t)(3 * n + n_out) * sizeof(int32_t)));
    s->r_ids = s->d_batch, s->r_pos = s->d_batch + n, s->r_seq = s->d_batch + 2 * n;
    s->r_rows = s->d_batch + 3 * n, s->r_logits = s->d_logits;
    n_body = build_body(s, n);
    n_head = n_out ? build_head(s, n_out, s->nodes + n_body) : 0;
    const bool act = mt_metrics_enabled();
    if (act) mt_tel_begin("forward_step");
    uint64_t key = (uint64_t)(uint32_t)n | (uint64_t)(uint32_t)n_out << 32;
    if (s->graphs && !mt_device_graphs_launch(s->graphs, key)) {
        MT_TRY(mt_device_graphs_begin(s->graphs));
        mt_status st = device_launch(s, n_body, n_head, n_out);
        if (st != MT_OK) {
            mt_device_graphs_abort(s->graphs);
            return st;
        }
        MT_TRY(mt_device_graphs_end(s->graphs, key));
    } else if (!s->graphs) {
        MT_TRY(device_launch(s, n_body, n_head, n_out));
    }
    MT_TRY(mt_device_sync(s->dev));
    for (int i = 0; i < n; i++)
        if (s->pos[i] + 1 > s->seq_len[s->seq[i]]) s->seq_len[s->seq[i]] = s->pos[i] + 1;
    s->n_logits = n_out;
    s->logits_fresh = false;
    if (act) forward_step_event(s, b, n_out, mt_tel_end("forward_step_total"));
    return MT_OK;
}

mt_status mt_session_argmax(mt_session *s, int i, int32_t *token) {
    if (i < 0 || i >= s->n_logits)
        return mt_fail(MT_ERR_RANGE, "argmax: logits row %d of %d", i, s->n_logits);
    int V = s->c->n_vocab;
    if (s->dev == MT_DEVICE_CPU) {
        const float *l = s->logits + (size_t)i * (size_t)V;
        int best = 0;
        for (int j = 1; j < V; j++)
            if (l[j] > l[best]) best = j;
        *token = best;
        return MT_OK;
    }
    MT_TRY(mt_device_argmax(s->dev, s->d_logits + (size_t)i * (size_t)V, V, 1, s->d_argmax));
    return mt_device_download(s->dev, token, s->d_argmax, sizeof *token);
}

mt_status mt_session_sample(mt_session *s, int i, mt_sampler *smp, const int32_t *history, int n_history,
                            int32_t *token) {
    if (i < 0 || i >= s->n_logits)
        return mt_fail(MT_ERR_RANGE, "sample: logits row %d of %d", i, s->n_logits);
    int V = s->c->n_vocab;
    if (s->dev == MT_DEVICE_CPU || mt_sampler_is_greedy(smp)) {
        const float *l = mt_session_logits(s, i);
        if (!l) return mt_fail(MT_ERR_INTERNAL, "sample: logits row %d could not be read", i);
        *token = mt_sampler_sample(smp, l, history, n_history);
        return MT_OK;
    }
    return mt_device_sample(s->dev, s->d_logits + (size_t)i * (size_t)V, V, smp, history, n_history, token);
}

mt_status mt_session_decode(mt_session *s, const mt_batch *b) {
    MT_TRY(validate(s, b));
    int n = b->n, n_out = 0;
    memcpy(s->ids, b->tokens, (size_t)n * sizeof(int32_t));
    memcpy(s->pos, b->pos, (size_t)n * sizeof(int32_t));
    memcpy(s->seq, b->seq, (size_t)n * sizeof(int32_t));
    for (int i = 0; i < n; i++)
        if (b->logits ? b->logits[i] != 0 : i == n - 1) s->out_rows[n_out++] = i;
    if (n_out > s->logits_cap) {
        // grows once to the largest request seen, never per token
        float *l = realloc(s->logits, (size_t)n_out * (size_t)s->c->n_vocab * sizeof(float));
        if (!l) return mt_fail(MT_ERR_NOMEM, "cannot allocate logits for %d tokens", n_out);
        s->logits = l;
        s->logits_cap = n_out;
    }
    s->n_logits = 0;
    if (s->dev != MT_DEVICE_CPU) return decode_device(s, b, n, n_out);
    s->r_ids = s->ids, s->r_pos = s->pos, s->r_seq = s->seq, s->r_logits = s->logits;

    int n_body = build_body(s, n);
    mt_node *head = s->nodes + n_body;
    int n_head = n_out ? build_head(s, n_out, head) : 0;
    if (n != s->checked_n || n_out != s->checked_out) {
        // shapes changed: run the op checks once for this batch shape (positions are validated above)
        MT_TRY(check_nodes(s->nodes, n_body));
        if (n_head) MT_TRY(check_nodes(head, n_head));
        s->checked_n = n;
        s->checked_out = n_out;
    }
    // latency mode: the embedding and each block run as their own segment under a scope, so every
    // node's time lands at forward_step/block_N/<op>; throughput mode runs the body as one list
    const bool prof = mt_tel_profiling(), act = prof || mt_metrics_enabled();
    if (act) mt_tel_begin("forward_step");
    mt_status st = prof ? run_body_profiled(s, n_body, n)
                        : mt_exec_run(s->exec, &(mt_exec_step){s->nodes, n_body, n,
                                                               (const mt_tensor *[]){&s->t_x}, 1, "body"});
    if (st == MT_OK) {
        for (int i = 0; i < n; i++)
            if (s->pos[i] + 1 > s->seq_len[s->seq[i]]) s->seq_len[s->seq[i]] = s->pos[i] + 1;
    }
    if (st == MT_OK && n_head) {
        size_t d = (size_t)s->c->n_embd;
        for (int j = 0; j < n_out; j++)
            memcpy(s->xo + (size_t)j * d, s->x + (size_t)s->out_rows[j] * d, d * sizeof(float));
        if (prof) mt_tel_begin("lm_head");
        st = mt_exec_run(
            s->exec, &(mt_exec_step){head, n_head, n_out, (const mt_tensor *[]){&s->t_logits}, 1, "head"});
        if (prof) mt_tel_end("lm_head_total");
    }
    if (st == MT_OK) s->n_logits = n_out;
    if (act) { // the scope closes on failure too, so the caller's scopes stay balanced
        double us = mt_tel_end("forward_step_total");
        if (st == MT_OK) forward_step_event(s, b, n_out, us);
    }
    return st;
}
