// Helpers shared by the GGUF and Hugging Face loaders: ownership of what a source allocates, F32 copies
// of the small tensors, weight shape checks and the config sanity check.
#include "loader.h"

#include <math.h>
#include <string.h>

#include "../core/quant.h"

mt_status mt_source_own(mt_model_source *s, void *p) {
    if (!p) return MT_OK;
    if (s->n_owned == s->cap_owned) {
        int cap = s->cap_owned ? s->cap_owned * 2 : 64;
        void **n = realloc(s->owned, (size_t)cap * sizeof *n);
        if (!n) {
            free(p); // the caller handed p over: never leak it
            return mt_fail(MT_ERR_NOMEM, "cannot grow the list of model allocations to %d", cap);
        }
        s->owned = n;
        s->cap_owned = cap;
    }
    s->owned[s->n_owned++] = p;
    return MT_OK;
}

static bool source_owns(const mt_model_source *s, const void *p) {
    for (int i = 0; i < s->n_owned; i++)
        if (s->owned[i] == p) return true;
    return false;
}

void mt_model_source_free(mt_model_source *s) {
    if (!s) return;
    // chat_template and the layer table belong to the source; a loader may also have registered them
    // with mt_source_own, so free them here only when it did not
    if (s->chat_template && !source_owns(s, s->chat_template)) free(s->chat_template);
    if (s->weights.layers && !source_owns(s, s->weights.layers)) free(s->weights.layers);
    for (int i = 0; i < s->n_owned; i++) free(s->owned[i]);
    free(s->owned);
    if (s->tokenizer) mt_tokenizer_free(s->tokenizer);
    if (s->unmap)
        for (int i = 0; i < s->n_mappings; i++)
            if (s->mappings[i]) s->unmap(s->mappings[i]);
    memset(s, 0, sizeof *s);
}

mt_status mt_source_f32_copy(mt_model_source *s, const mt_tensor *src, mt_tensor *dst) {
    int64_t n = mt_tensor_nelem(src);
    const char *name = src->name ? src->name : "tensor";
    if (n <= 0 || n > (1 << 26))
        return mt_fail(MT_ERR_FORMAT, "%s: %lld elements is not a small vector", name, (long long)n);
    if (!mt_dtype_supported(src->dtype) || src->dtype == MT_I32)
        return mt_fail(MT_ERR_UNSUPPORTED, "%s: dtype %s cannot be converted to f32", name,
                       mt_dtype_name(src->dtype));
    float *out = mt_malloc((size_t)n * sizeof(float), name);
    if (!out) return MT_ERR_NOMEM;
    mt_status st = mt_source_own(s, out);
    if (st != MT_OK) return st;
    // row by row so a strided source works too
    int64_t ne0 = src->ne[0];
    float *o = out;
    for (int64_t i3 = 0; i3 < src->ne[3]; i3++)
        for (int64_t i2 = 0; i2 < src->ne[2]; i2++)
            for (int64_t i1 = 0; i1 < src->ne[1]; i1++, o += ne0) {
                const void *row = mt_tensor_row(src, i1, i2, i3);
                if (src->dtype == MT_F32) {
                    memcpy(o, row, (size_t)ne0 * sizeof(float));
                } else if (src->dtype == MT_F16 || src->dtype == MT_BF16) {
                    const uint8_t *b = row;
                    for (int64_t i = 0; i < ne0; i++) {
                        uint16_t h;
                        memcpy(&h, b + 2 * i, 2);
                        o[i] = src->dtype == MT_F16 ? mt_f16_to_f32(h) : mt_bf16_to_f32(h);
                    }
                } else {
                    mt_dequantize_row(src->dtype, row, o, ne0);
                }
            }
    st = mt_tensor_init(dst, MT_F32, src->ndim, src->ne, out);
    if (st != MT_OK) return st;
    dst->name = src->name;
    return MT_OK;
}

mt_status mt_source_check_shape(const mt_tensor *t, const char *name, int64_t ne0, int64_t ne1) {
    if (!mt_dtype_supported(t->dtype) || t->dtype == MT_I32)
        return mt_fail(MT_ERR_UNSUPPORTED, "tensor %s: dtype %s is not a weight type", name,
                       mt_dtype_name(t->dtype));
    bool ok =
        t->ne[0] == ne0 && t->ne[2] == 1 && t->ne[3] == 1 && (ne1 == 0 ? t->ne[1] == 1 : t->ne[1] == ne1);
    if (!ok) {
        if (ne1 == 0)
            return mt_fail(MT_ERR_FORMAT, "tensor %s: shape [%lld, %lld, %lld, %lld], expected [%lld]", name,
                           (long long)t->ne[0], (long long)t->ne[1], (long long)t->ne[2], (long long)t->ne[3],
                           (long long)ne0);
        return mt_fail(MT_ERR_FORMAT, "tensor %s: shape [%lld, %lld, %lld, %lld], expected [%lld, %lld]",
                       name, (long long)t->ne[0], (long long)t->ne[1], (long long)t->ne[2],
                       (long long)t->ne[3], (long long)ne0, (long long)ne1);
    }
    if (t->data == NULL) return mt_fail(MT_ERR_FORMAT, "tensor %s has no data", name);
    return MT_OK;
}

// Upper bounds far above any Qwen2.5 model, low enough that products of them cannot overflow.
static mt_status check_range(const char *what, long v, long lo, long hi) {
    if (v < lo || v > hi) return mt_fail(MT_ERR_FORMAT, "%s = %ld is outside [%ld, %ld]", what, v, lo, hi);
    return MT_OK;
}

mt_status mt_qwen2_config_check(const mt_qwen2_config *c) {
    MT_TRY(check_range("n_vocab", c->n_vocab, 1, 1L << 22));
    MT_TRY(check_range("n_embd", c->n_embd, 2, 1L << 16));
    MT_TRY(check_range("n_layer", c->n_layer, 1, 1024));
    MT_TRY(check_range("n_head", c->n_head, 1, 1024));
    MT_TRY(check_range("n_head_kv", c->n_head_kv, 1, c->n_head));
    MT_TRY(check_range("n_ff", c->n_ff, 1, 1L << 20));
    MT_TRY(check_range("n_ctx_train", c->n_ctx_train, 1, 1L << 24));
    if (c->n_head % c->n_head_kv != 0)
        return mt_fail(MT_ERR_FORMAT, "head_count %d is not a multiple of head_count_kv %d", c->n_head,
                       c->n_head_kv);
    if (c->n_embd % c->n_head != 0)
        return mt_fail(MT_ERR_FORMAT, "embedding_length %d is not a multiple of head_count %d", c->n_embd,
                       c->n_head);
    if (c->head_dim != c->n_embd / c->n_head)
        return mt_fail(MT_ERR_FORMAT, "head_dim %d != embedding_length %d / head_count %d", c->head_dim,
                       c->n_embd, c->n_head);
    if (c->head_dim % 2 != 0)
        return mt_fail(MT_ERR_FORMAT, "head_dim %d is odd (rope needs pairs)", c->head_dim);
    if (!(c->rms_eps > 0.0f && c->rms_eps < 1.0f))
        return mt_fail(MT_ERR_FORMAT, "layer_norm_rms_epsilon %g is not in (0, 1)", (double)c->rms_eps);
    if (!(c->rope_base > 1.0f && isfinite(c->rope_base)))
        return mt_fail(MT_ERR_FORMAT, "rope.freq_base %g is not a finite value > 1", (double)c->rope_base);
    if (c->n_eos < 0 || c->n_eos > MT_MAX_EOS) return mt_fail(MT_ERR_FORMAT, "%d eos ids", c->n_eos);
    for (int i = 0; i < c->n_eos; i++)
        if (c->eos_ids[i] < 0 || c->eos_ids[i] >= c->n_vocab)
            return mt_fail(MT_ERR_FORMAT, "eos id %d is outside the vocabulary of %d", c->eos_ids[i],
                           c->n_vocab);
    if (c->bos_id >= c->n_vocab)
        return mt_fail(MT_ERR_FORMAT, "bos id %d is outside the vocabulary of %d", c->bos_id, c->n_vocab);
    return MT_OK;
}
