// GGUF model loader: maps a qwen2 GGUF file and fills an mt_model_source with zero-copy weight views.
//
// The mt_gguf handle stays open as the source's mapping (the weights point into it); every tensor is
// checked for dtype and shape against the hyperparameters, naming the tensor when it does not fit.
#include <stdio.h>
#include <string.h>

#include "../core/gguf.h"
#include "loader.h"

static void unmap_gguf(void *mapping) {
    mt_gguf_close(mapping);
}

static mt_status req_u32(const mt_gguf *g, const char *key, int *out) {
    int64_t k = mt_gguf_find(g, key);
    if (k < 0) return mt_fail(MT_ERR_FORMAT, "missing key %s", key);
    uint32_t v;
    MT_TRY(mt_gguf_get_u32(g, k, &v));
    if (v > (1u << 30)) return mt_fail(MT_ERR_FORMAT, "%s = %u is too large", key, v);
    *out = (int)v;
    return MT_OK;
}

static mt_status req_f32(const mt_gguf *g, const char *key, float *out) {
    int64_t k = mt_gguf_find(g, key);
    if (k < 0) return mt_fail(MT_ERR_FORMAT, "missing key %s", key);
    return mt_gguf_get_f32(g, k, out);
}

static bool str_eq(mt_str s, const char *c) {
    return s.len == strlen(c) && memcmp(s.ptr, c, s.len) == 0;
}

static void add_eos(mt_qwen2_config *c, int32_t id) {
    if (id < 0) return;
    for (int i = 0; i < c->n_eos; i++)
        if (c->eos_ids[i] == id) return;
    if (c->n_eos < MT_MAX_EOS) c->eos_ids[c->n_eos++] = id;
}

// Looks a tensor up and checks it; `t` gets a view into the mapping.
static mt_status map_tensor(const mt_gguf *g, const char *name, int64_t ne0, int64_t ne1, mt_tensor *t,
                            size_t *bytes) {
    const mt_gguf_tensor *gt = mt_gguf_tensor_by_name(g, name);
    if (!gt) return mt_fail(MT_ERR_FORMAT, "missing tensor %s", name);
    MT_TRY(mt_source_check_shape(&gt->t, name, ne0, ne1));
    *t = gt->t;
    t->name = gt->name;
    if (bytes) *bytes += gt->nbytes;
    return MT_OK;
}

// A small vector (norm weight, bias) as an owned F32 copy.
static mt_status map_vector(mt_model_source *s, const mt_gguf *g, const char *name, int64_t n, mt_tensor *t) {
    mt_tensor view;
    MT_TRY(map_tensor(g, name, n, 0, &view, &s->weight_bytes));
    return mt_source_f32_copy(s, &view, t);
}

// A zero bias for files written without one (owned F32).
static mt_status zero_vector(mt_model_source *s, int64_t n, const char *name, mt_tensor *t) {
    float *z = mt_calloc((size_t)n, sizeof(float), name);
    if (!z) return MT_ERR_NOMEM;
    MT_TRY(mt_source_own(s, z));
    return mt_tensor_init(t, MT_F32, 1, &n, z);
}

static mt_status read_config(const mt_gguf *g, mt_qwen2_config *c) {
    memset(c, 0, sizeof *c);
    MT_TRY(req_u32(g, "qwen2.block_count", &c->n_layer));
    MT_TRY(req_u32(g, "qwen2.context_length", &c->n_ctx_train));
    MT_TRY(req_u32(g, "qwen2.embedding_length", &c->n_embd));
    MT_TRY(req_u32(g, "qwen2.feed_forward_length", &c->n_ff));
    MT_TRY(req_u32(g, "qwen2.attention.head_count", &c->n_head));
    MT_TRY(req_u32(g, "qwen2.attention.head_count_kv", &c->n_head_kv));
    MT_TRY(mt_gguf_f32_or(g, "qwen2.rope.freq_base", 10000.0f, &c->rope_base));
    MT_TRY(req_f32(g, "qwen2.attention.layer_norm_rms_epsilon", &c->rms_eps));
    c->head_dim = c->n_head > 0 ? c->n_embd / c->n_head : 0;
    c->bos_id = -1;
    int64_t k = mt_gguf_find(g, "tokenizer.ggml.bos_token_id");
    if (k >= 0) {
        uint32_t v;
        MT_TRY(mt_gguf_get_u32(g, k, &v));
        c->bos_id = v > INT32_MAX ? -1 : (int32_t)v;
    }
    k = mt_gguf_find(g, "tokenizer.ggml.eos_token_id");
    if (k >= 0) {
        uint32_t v;
        MT_TRY(mt_gguf_get_u32(g, k, &v));
        if (v > INT32_MAX)
            return mt_fail(MT_ERR_FORMAT, "tokenizer.ggml.eos_token_id = %u is out of range", v);
        add_eos(c, (int32_t)v);
    }
    k = mt_gguf_find(g, "general.name");
    if (k >= 0) {
        mt_str s;
        if (mt_gguf_get_str(g, k, &s) == MT_OK) {
            size_t n = s.len < sizeof c->name - 1 ? (size_t)s.len : sizeof c->name - 1;
            memcpy(c->name, s.ptr, n);
            c->name[n] = 0;
        }
    }
    return MT_OK;
}

static mt_status load_layers(mt_model_source *s, const mt_gguf *g) {
    const mt_qwen2_config *c = &s->config;
    int64_t d = c->n_embd, q = (int64_t)c->n_head * c->head_dim, kv = (int64_t)c->n_head_kv * c->head_dim;
    s->weights.layers = mt_calloc((size_t)c->n_layer, sizeof(mt_qwen2_layer), "layer table");
    if (!s->weights.layers) return MT_ERR_NOMEM;
    char name[96];
#define NAME(suffix) (snprintf(name, sizeof name, "blk.%d.%s", i, suffix), name)
    for (int i = 0; i < c->n_layer; i++) {
        mt_qwen2_layer *L = &s->weights.layers[i];
        size_t *wb = &s->weight_bytes;
        MT_TRY(map_vector(s, g, NAME("attn_norm.weight"), d, &L->attn_norm));
        MT_TRY(map_tensor(g, NAME("attn_q.weight"), d, q, &L->wq, wb));
        MT_TRY(map_tensor(g, NAME("attn_k.weight"), d, kv, &L->wk, wb));
        MT_TRY(map_tensor(g, NAME("attn_v.weight"), d, kv, &L->wv, wb));
        const char *bias[3] = {"attn_q.bias", "attn_k.bias", "attn_v.bias"};
        mt_tensor *bt[3] = {&L->bq, &L->bk, &L->bv};
        int64_t bn[3] = {q, kv, kv};
        for (int j = 0; j < 3; j++) {
            if (mt_gguf_tensor_by_name(g, NAME(bias[j])))
                MT_TRY(map_vector(s, g, name, bn[j], bt[j]));
            else
                MT_TRY(zero_vector(s, bn[j], name, bt[j]));
        }
        MT_TRY(map_tensor(g, NAME("attn_output.weight"), q, d, &L->wo, wb));
        MT_TRY(map_vector(s, g, NAME("ffn_norm.weight"), d, &L->ffn_norm));
        MT_TRY(map_tensor(g, NAME("ffn_gate.weight"), d, c->n_ff, &L->w_gate, wb));
        MT_TRY(map_tensor(g, NAME("ffn_up.weight"), d, c->n_ff, &L->w_up, wb));
        MT_TRY(map_tensor(g, NAME("ffn_down.weight"), c->n_ff, d, &L->w_down, wb));
    }
#undef NAME
    return MT_OK;
}

static mt_status load(const char *path, mt_model_source *s) {
    mt_gguf *g;
    mt_status st = mt_gguf_open(path, &g);
    if (st != MT_OK) {
        if (strstr(mt_last_error(), path)) return st;
        char msg[400];
        snprintf(msg, sizeof msg, "%s", mt_last_error());
        return mt_fail(st, "%s: %s", path, msg);
    }
    s->unmap = unmap_gguf;
    s->mappings[s->n_mappings++] = g;
    s->file_bytes = mt_gguf_file_size(g);

    int64_t k = mt_gguf_find(g, "general.architecture");
    if (k < 0) return mt_fail(MT_ERR_FORMAT, "%s: missing key general.architecture", path);
    mt_str arch;
    MT_TRY(mt_gguf_get_str(g, k, &arch));
    if (!str_eq(arch, "qwen2"))
        return mt_fail(MT_ERR_UNSUPPORTED, "%s: architecture '%.*s' is not supported (only qwen2)", path,
                       (int)(arch.len > 64 ? 64 : arch.len), arch.ptr);

    mt_qwen2_config *c = &s->config;
    MT_TRY(read_config(g, c));
    // vocabulary size from the embedding, so the config can be checked before anything is sized by it
    const mt_gguf_tensor *emb = mt_gguf_tensor_by_name(g, "token_embd.weight");
    if (!emb) return mt_fail(MT_ERR_FORMAT, "missing tensor token_embd.weight");
    if (emb->t.ne[1] > INT32_MAX) return mt_fail(MT_ERR_FORMAT, "token_embd.weight has too many rows");
    c->n_vocab = (int)emb->t.ne[1];
    c->tied_output = mt_gguf_tensor_by_name(g, "output.weight") == NULL;
    MT_TRY(mt_qwen2_config_check(c));

    mt_qwen2_weights *w = &s->weights;
    MT_TRY(map_tensor(g, "token_embd.weight", c->n_embd, c->n_vocab, &w->tok_embd, &s->weight_bytes));
    MT_TRY(map_vector(s, g, "output_norm.weight", c->n_embd, &w->out_norm));
    if (c->tied_output)
        w->output = w->tok_embd;
    else
        MT_TRY(map_tensor(g, "output.weight", c->n_embd, c->n_vocab, &w->output, &s->weight_bytes));
    MT_TRY(load_layers(s, g));

    MT_TRY(mt_tokenizer_from_gguf((const struct mt_gguf *)g, &s->tokenizer));
    const char *stops[] = {"<|im_end|>", "<|endoftext|>"};
    for (int i = 0; i < 2; i++) add_eos(c, mt_tokenizer_find(s->tokenizer, stops[i]));

    k = mt_gguf_find(g, "tokenizer.chat_template");
    if (k >= 0) {
        mt_str t;
        MT_TRY(mt_gguf_get_str(g, k, &t));
        if (t.len > (1u << 24))
            return mt_fail(MT_ERR_FORMAT, "tokenizer.chat_template is %llu bytes", (unsigned long long)t.len);
        s->chat_template = mt_malloc((size_t)t.len + 1, "chat template");
        if (!s->chat_template) return MT_ERR_NOMEM;
        memcpy(s->chat_template, t.ptr, (size_t)t.len);
        s->chat_template[t.len] = 0;
    }
    s->gen = mt_sampler_default_params();
    return MT_OK;
}

mt_status mt_load_gguf(const char *path, mt_model_source *out) {
    memset(out, 0, sizeof *out);
    mt_status st = load(path, out);
    if (st != MT_OK) mt_model_source_free(out); // keeps the message: freeing records no error
    return st;
}
