// Hugging Face folder loader: config.json, *.safetensors, tokenizer.json, and the optional
// generation_config.json and tokenizer_config.json (chat template), into an mt_model_source.
//
// Weights stay in the mapped safetensors files in their stored dtype (F32, F16, BF16); HF Linear weights
// are [out, in], which the reader turns into ne = {in, out}, the same layout as GGUF, so the model code
// sees no difference. Qwen2 GGUF Q/K weights are not permuted, so no un-permutation is needed either.
#include <errno.h>
#include <math.h>
#include <stdio.h>
#include <string.h>
#include <sys/stat.h>

#include <cjson/cJSON.h>

#include "../core/safetensors.h"
#include "loader.h"

#define MAX_JSON_BYTES ((size_t)16 << 20)

static void unmap_st(void *mapping) {
    mt_safetensors_close(mapping);
}

typedef struct hf_ctx {
    const char *dir;
    mt_safetensors *files[64];
    int n_files;
    char path[4096]; // scratch for file paths
} hf_ctx;

static mt_status join(hf_ctx *h, const char *file) {
    if (snprintf(h->path, sizeof h->path, "%s/%s", h->dir, file) >= (int)sizeof h->path)
        return mt_fail(MT_ERR_INVALID, "model folder path is too long (%zu bytes)", strlen(h->dir));
    return MT_OK;
}

// Parses dir/file as JSON into *out; a missing optional file gives *out = NULL and MT_OK.
static mt_status read_json(hf_ctx *h, const char *file, bool optional, cJSON **out) {
    *out = NULL;
    MT_TRY(join(h, file));
    FILE *f = fopen(h->path, "rb");
    if (!f) {
        if (optional && errno == ENOENT) return MT_OK;
        return mt_fail(MT_ERR_IO, "cannot open %s: %s", h->path, strerror(errno));
    }
    char *buf = NULL;
    size_t n = 0, cap = 0;
    mt_status st = MT_OK;
    for (;;) {
        if (n == cap) {
            if (cap >= MAX_JSON_BYTES) {
                st = mt_fail(MT_ERR_NOMEM, "%s is larger than %zu bytes", h->path, MAX_JSON_BYTES);
                break;
            }
            cap = cap ? cap * 2 : 16384;
            char *nb = realloc(buf, cap);
            if (!nb) {
                st = mt_fail(MT_ERR_NOMEM, "cannot allocate %zu bytes to read %s", cap, h->path);
                break;
            }
            buf = nb;
        }
        size_t r = fread(buf + n, 1, cap - n, f);
        n += r;
        if (r == 0) {
            if (ferror(f)) st = mt_fail(MT_ERR_IO, "error reading %s", h->path);
            break;
        }
    }
    fclose(f);
    if (st == MT_OK) {
        *out = cJSON_ParseWithLength(buf, n);
        if (!*out)
            st = mt_fail(MT_ERR_FORMAT, "%s: not valid JSON", h->path);
        else if (!cJSON_IsObject(*out))
            st = mt_fail(MT_ERR_FORMAT, "%s: not a JSON object", h->path);
    }
    free(buf);
    if (st != MT_OK) {
        cJSON_Delete(*out);
        *out = NULL;
    }
    return st;
}

// ---- config.json ----

static mt_status cfg_item(const cJSON *j, const char *file, const char *key, const cJSON **v) {
    *v = cJSON_GetObjectItemCaseSensitive(j, key);
    if (!*v) return mt_fail(MT_ERR_FORMAT, "%s: missing key \"%s\"", file, key);
    return MT_OK;
}

static mt_status cfg_int(const cJSON *j, const char *file, const char *key, long lo, long hi, int *out) {
    const cJSON *v;
    MT_TRY(cfg_item(j, file, key, &v));
    double d = cJSON_IsNumber(v) ? v->valuedouble : -1e300;
    if (!cJSON_IsNumber(v) || !(d >= (double)lo && d <= (double)hi) || d != floor(d))
        return mt_fail(MT_ERR_FORMAT, "%s: \"%s\" must be an integer in [%ld, %ld]", file, key, lo, hi);
    *out = (int)d;
    return MT_OK;
}

static mt_status cfg_float(const cJSON *j, const char *file, const char *key, float *out) {
    const cJSON *v;
    MT_TRY(cfg_item(j, file, key, &v));
    if (!cJSON_IsNumber(v)) return mt_fail(MT_ERR_FORMAT, "%s: \"%s\" is not a number", file, key);
    *out = (float)v->valuedouble;
    return MT_OK;
}

static void add_eos(mt_qwen2_config *c, int32_t id) {
    if (id < 0) return;
    for (int i = 0; i < c->n_eos; i++)
        if (c->eos_ids[i] == id) return;
    if (c->n_eos < MT_MAX_EOS) c->eos_ids[c->n_eos++] = id;
}

// eos_token_id: an integer, a list of integers, or null.
static mt_status parse_eos(const cJSON *v, const char *file, mt_qwen2_config *c) {
    if (cJSON_IsNull(v)) return MT_OK;
    const cJSON *one = v;
    int n = cJSON_IsArray(v) ? cJSON_GetArraySize(v) : 1;
    for (int i = 0; i < n; i++) {
        if (cJSON_IsArray(v)) one = cJSON_GetArrayItem(v, i);
        double d = cJSON_IsNumber(one) ? one->valuedouble : -1;
        if (!cJSON_IsNumber(one) || !(d >= 0 && d <= INT32_MAX) || d != floor(d))
            return mt_fail(MT_ERR_FORMAT, "%s: eos_token_id must be a token id or a list of them", file);
        add_eos(c, (int32_t)d);
    }
    return MT_OK;
}

static mt_status read_config(hf_ctx *h, mt_qwen2_config *c) {
    cJSON *j;
    MT_TRY(read_json(h, "config.json", false, &j));
    const char *f = h->path; // read_json left the file's path here
    mt_status st = MT_OK;
    memset(c, 0, sizeof *c);
    const cJSON *v;

#define TRY(expr)                                                                                            \
    do {                                                                                                     \
        if ((st = (expr)) != MT_OK) goto done;                                                               \
    } while (0)
    TRY(cfg_item(j, f, "architectures", &v));
    bool qwen2 = false;
    if (cJSON_IsArray(v)) {
        const cJSON *a;
        cJSON_ArrayForEach(a, v) qwen2 |= cJSON_IsString(a) && !strcmp(a->valuestring, "Qwen2ForCausalLM");
    }
    if (!qwen2) {
        char *txt = cJSON_PrintUnformatted(v);
        st = mt_fail(MT_ERR_UNSUPPORTED, "%s: architectures %.120s is not supported (need Qwen2ForCausalLM)",
                     f, txt ? txt : "?");
        free(txt);
        goto done;
    }
    TRY(cfg_int(j, f, "hidden_size", 1, 1 << 20, &c->n_embd));
    TRY(cfg_int(j, f, "intermediate_size", 1, 1 << 24, &c->n_ff));
    TRY(cfg_int(j, f, "num_hidden_layers", 1, 1 << 16, &c->n_layer));
    TRY(cfg_int(j, f, "num_attention_heads", 1, 1 << 16, &c->n_head));
    TRY(cfg_int(j, f, "num_key_value_heads", 1, 1 << 16, &c->n_head_kv));
    TRY(cfg_int(j, f, "max_position_embeddings", 1, 1 << 30, &c->n_ctx_train));
    TRY(cfg_int(j, f, "vocab_size", 1, 1 << 30, &c->n_vocab));
    TRY(cfg_float(j, f, "rms_norm_eps", &c->rms_eps));
    TRY(cfg_float(j, f, "rope_theta", &c->rope_base));
    c->head_dim = c->n_embd / c->n_head;

    TRY(cfg_item(j, f, "tie_word_embeddings", &v));
    if (!cJSON_IsBool(v)) {
        st = mt_fail(MT_ERR_FORMAT, "%s: \"tie_word_embeddings\" is not true or false", f);
        goto done;
    }
    c->tied_output = cJSON_IsTrue(v);

    TRY(cfg_item(j, f, "bos_token_id", &v));
    c->bos_id = -1;
    if (!cJSON_IsNull(v)) {
        if (!cJSON_IsNumber(v) || !(v->valuedouble >= 0 && v->valuedouble <= INT32_MAX)) {
            st = mt_fail(MT_ERR_FORMAT, "%s: \"bos_token_id\" is not a token id", f);
            goto done;
        }
        c->bos_id = (int32_t)v->valuedouble;
    }
    TRY(cfg_item(j, f, "eos_token_id", &v));
    TRY(parse_eos(v, f, c));

    // Options this engine does not implement: refuse rather than compute something else.
    v = cJSON_GetObjectItemCaseSensitive(j, "head_dim");
    if (v && !cJSON_IsNull(v) && (!cJSON_IsNumber(v) || (int)v->valuedouble != c->head_dim)) {
        st = mt_fail(MT_ERR_UNSUPPORTED, "%s: head_dim must be hidden_size / num_attention_heads = %d", f,
                     c->head_dim);
        goto done;
    }
    v = cJSON_GetObjectItemCaseSensitive(j, "hidden_act");
    if (v && !(cJSON_IsString(v) && !strcmp(v->valuestring, "silu"))) {
        st = mt_fail(MT_ERR_UNSUPPORTED, "%s: hidden_act %.40s is not supported (only silu)", f,
                     cJSON_IsString(v) ? v->valuestring : "(not a string)");
        goto done;
    }
    v = cJSON_GetObjectItemCaseSensitive(j, "rope_scaling");
    if (v && !cJSON_IsNull(v)) {
        st = mt_fail(MT_ERR_UNSUPPORTED, "%s: rope_scaling is not supported (only null)", f);
        goto done;
    }
    v = cJSON_GetObjectItemCaseSensitive(j, "use_sliding_window");
    if (cJSON_IsTrue(v)) {
        st = mt_fail(MT_ERR_UNSUPPORTED, "%s: use_sliding_window = true is not supported", f);
        goto done;
    }

    // display name: the original model id if recorded, else the folder's name
    v = cJSON_GetObjectItemCaseSensitive(j, "_name_or_path");
    const char *name = cJSON_IsString(v) && v->valuestring[0] ? v->valuestring : NULL;
    if (!name) {
        size_t l = strlen(h->dir);
        while (l > 1 && h->dir[l - 1] == '/') l--;
        size_t b = l;
        while (b > 0 && h->dir[b - 1] != '/') b--;
        snprintf(c->name, sizeof c->name, "%.*s", (int)(l - b), h->dir + b);
    } else {
        snprintf(c->name, sizeof c->name, "%s", name);
    }
#undef TRY
done:
    cJSON_Delete(j);
    return st;
}

// ---- generation_config.json ----

static mt_status read_generation(hf_ctx *h, mt_model_source *s) {
    s->gen = mt_sampler_default_params();
    cJSON *j;
    MT_TRY(read_json(h, "generation_config.json", true, &j));
    if (!j) return MT_OK;
    const char *f = h->path;
    mt_sampler_params p = s->gen;
    mt_status st = MT_OK;
    static const char *const keys[] = {"temperature", "top_k", "top_p", "min_p", "repetition_penalty"};
    for (int i = 0; i < 5 && st == MT_OK; i++) {
        const cJSON *v = cJSON_GetObjectItemCaseSensitive(j, keys[i]);
        if (!v || cJSON_IsNull(v)) continue;
        if (!cJSON_IsNumber(v)) {
            st = mt_fail(MT_ERR_FORMAT, "%s: \"%s\" is not a number", f, keys[i]);
            break;
        }
        double d = v->valuedouble;
        if (i == 0) p.temperature = (float)d;
        if (i == 1) p.top_k = d >= 0 && d <= 1e9 && d == (double)(int)d ? (int)d : -1;
        if (i == 2) p.top_p = (float)d;
        if (i == 3) p.min_p = (float)d;
        if (i == 4) p.repeat_penalty = (float)d;
    }
    const cJSON *ds = cJSON_GetObjectItemCaseSensitive(j, "do_sample");
    if (cJSON_IsFalse(ds)) p.temperature = 0.0f; // transformers: no sampling means greedy
    const cJSON *eos = cJSON_GetObjectItemCaseSensitive(j, "eos_token_id");
    if (st == MT_OK && eos) st = parse_eos(eos, f, &s->config);
    if (st == MT_OK && mt_sampler_params_check(&p) != MT_OK) {
        char why[256]; // copied: mt_fail overwrites the message it would format from
        snprintf(why, sizeof why, "%s", mt_last_error());
        st = mt_fail(MT_ERR_FORMAT, "%s: %s", f, why);
    }
    if (st == MT_OK) s->gen = p;
    cJSON_Delete(j);
    return st;
}

// ---- chat template ----

static mt_status set_template(mt_model_source *s, const char *text, size_t len) {
    s->chat_template = mt_malloc(len + 1, "chat template");
    if (!s->chat_template) return MT_ERR_NOMEM;
    memcpy(s->chat_template, text, len);
    s->chat_template[len] = 0;
    return MT_OK;
}

// tokenizer_config.json "chat_template" (a string, or a list of {name, template} where "default" is
// the one used), else chat_template.jinja (where recent transformers save it).
static mt_status read_template(hf_ctx *h, mt_model_source *s) {
    cJSON *j;
    MT_TRY(read_json(h, "tokenizer_config.json", true, &j));
    const cJSON *v = j ? cJSON_GetObjectItemCaseSensitive(j, "chat_template") : NULL;
    mt_status st = MT_OK;
    if (cJSON_IsString(v)) {
        st = set_template(s, v->valuestring, strlen(v->valuestring));
    } else if (cJSON_IsArray(v)) {
        const cJSON *e;
        cJSON_ArrayForEach(e, v) {
            const cJSON *n = cJSON_GetObjectItemCaseSensitive(e, "name");
            const cJSON *t = cJSON_GetObjectItemCaseSensitive(e, "template");
            if (cJSON_IsString(n) && !strcmp(n->valuestring, "default") && cJSON_IsString(t)) {
                st = set_template(s, t->valuestring, strlen(t->valuestring));
                break;
            }
        }
    } else if (v && !cJSON_IsNull(v)) {
        st = mt_fail(MT_ERR_FORMAT, "tokenizer_config.json: chat_template is neither a string nor a list");
    }
    cJSON_Delete(j);
    if (st != MT_OK || s->chat_template) return st;

    MT_TRY(join(h, "chat_template.jinja"));
    FILE *f = fopen(h->path, "rb");
    if (!f) return MT_OK;
    char *buf = mt_malloc(MAX_JSON_BYTES, "chat template");
    if (!buf) {
        fclose(f);
        return MT_ERR_NOMEM;
    }
    size_t n = fread(buf, 1, MAX_JSON_BYTES, f);
    bool err = ferror(f) || n == MAX_JSON_BYTES;
    fclose(f);
    st = err ? mt_fail(MT_ERR_FORMAT, "cannot read %s (error or over %zu bytes)", h->path, MAX_JSON_BYTES)
             : set_template(s, buf, n);
    free(buf);
    return st;
}

// ---- weights ----

// Finds and checks a weight; `t` gets a view into the mapping (or an aligned owned copy when the file
// places the data at an offset the element type cannot be read from).
static mt_status map_tensor(hf_ctx *h, mt_model_source *s, const char *name, int64_t ne0, int64_t ne1,
                            mt_tensor *t) {
    const mt_st_tensor *st = mt_safetensors_find(h->files, h->n_files, name);
    if (!st) return mt_fail(MT_ERR_FORMAT, "%s: missing tensor %s", h->dir, name);
    MT_TRY(mt_source_check_shape(&st->t, name, ne0, ne1));
    *t = st->t;
    if ((uintptr_t)t->data % t->nb[0] != 0) {
        void *copy = mt_malloc(st->nbytes, name);
        if (!copy) return MT_ERR_NOMEM;
        memcpy(copy, st->t.data, st->nbytes);
        MT_TRY(mt_source_own(s, copy));
        t->data = copy;
    }
    s->weight_bytes += st->nbytes;
    return MT_OK;
}

static mt_status map_vector(hf_ctx *h, mt_model_source *s, const char *name, int64_t n, mt_tensor *t) {
    mt_tensor view;
    MT_TRY(map_tensor(h, s, name, n, 0, &view));
    return mt_source_f32_copy(s, &view, t);
}

static mt_status load_weights(hf_ctx *h, mt_model_source *s) {
    mt_qwen2_config *c = &s->config;
    mt_qwen2_weights *w = &s->weights;
    int64_t d = c->n_embd, q = (int64_t)c->n_head * c->head_dim, kv = (int64_t)c->n_head_kv * c->head_dim;
    MT_TRY(map_tensor(h, s, "model.embed_tokens.weight", d, c->n_vocab, &w->tok_embd));
    MT_TRY(map_vector(h, s, "model.norm.weight", d, &w->out_norm));
    // transformers ties the head to the embedding when the config says so, whatever the file holds
    bool has_head = mt_safetensors_find(h->files, h->n_files, "lm_head.weight") != NULL;
    if (!c->tied_output && !has_head)
        return mt_fail(MT_ERR_FORMAT, "%s: lm_head.weight is missing and tie_word_embeddings is false",
                       h->dir);
    if (c->tied_output)
        w->output = w->tok_embd;
    else
        MT_TRY(map_tensor(h, s, "lm_head.weight", d, c->n_vocab, &w->output));

    w->layers = mt_calloc((size_t)c->n_layer, sizeof *w->layers, "layer table");
    if (!w->layers) return MT_ERR_NOMEM;
    char name[128];
#define NAME(suffix) (snprintf(name, sizeof name, "model.layers.%d.%s", i, suffix), name)
    for (int i = 0; i < c->n_layer; i++) {
        mt_qwen2_layer *L = &w->layers[i];
        MT_TRY(map_vector(h, s, NAME("input_layernorm.weight"), d, &L->attn_norm));
        MT_TRY(map_tensor(h, s, NAME("self_attn.q_proj.weight"), d, q, &L->wq));
        MT_TRY(map_tensor(h, s, NAME("self_attn.k_proj.weight"), d, kv, &L->wk));
        MT_TRY(map_tensor(h, s, NAME("self_attn.v_proj.weight"), d, kv, &L->wv));
        MT_TRY(map_vector(h, s, NAME("self_attn.q_proj.bias"), q, &L->bq));
        MT_TRY(map_vector(h, s, NAME("self_attn.k_proj.bias"), kv, &L->bk));
        MT_TRY(map_vector(h, s, NAME("self_attn.v_proj.bias"), kv, &L->bv));
        MT_TRY(map_tensor(h, s, NAME("self_attn.o_proj.weight"), q, d, &L->wo));
        MT_TRY(map_vector(h, s, NAME("post_attention_layernorm.weight"), d, &L->ffn_norm));
        MT_TRY(map_tensor(h, s, NAME("mlp.gate_proj.weight"), d, c->n_ff, &L->w_gate));
        MT_TRY(map_tensor(h, s, NAME("mlp.up_proj.weight"), d, c->n_ff, &L->w_up));
        MT_TRY(map_tensor(h, s, NAME("mlp.down_proj.weight"), c->n_ff, d, &L->w_down));
    }
#undef NAME
    return MT_OK;
}

static mt_status load(hf_ctx *h, mt_model_source *s) {
    struct stat sb;
    if (stat(h->dir, &sb) != 0 || !S_ISDIR(sb.st_mode))
        return mt_fail(MT_ERR_IO, "%s is not a folder", h->dir);
    mt_qwen2_config *c = &s->config;
    MT_TRY(read_config(h, c));
    c->n_eos = c->n_eos > MT_MAX_EOS ? MT_MAX_EOS : c->n_eos;
    MT_TRY(mt_qwen2_config_check(c));

    int max_files = (int)(sizeof s->mappings / sizeof s->mappings[0]);
    MT_TRY(mt_safetensors_open_dir(h->dir, h->files, max_files, &h->n_files));
    s->unmap = unmap_st;
    for (int i = 0; i < h->n_files; i++) {
        s->mappings[s->n_mappings++] = h->files[i];
        s->file_bytes += mt_safetensors_file_size(h->files[i]);
    }
    MT_TRY(load_weights(h, s));

    MT_TRY(join(h, "tokenizer.json"));
    MT_TRY(mt_tokenizer_from_hf_json(h->path, &s->tokenizer));
    // the same stop tokens as the GGUF loader, so both forms of a model stop alike
    const char *stops[] = {"<|im_end|>", "<|endoftext|>"};
    for (int i = 0; i < 2; i++) add_eos(c, mt_tokenizer_find(s->tokenizer, stops[i]));

    MT_TRY(read_generation(h, s));
    MT_TRY(read_template(h, s));
    return mt_qwen2_config_check(c);
}

mt_status mt_load_hf(const char *dir, mt_model_source *out) {
    memset(out, 0, sizeof *out);
    hf_ctx *h = mt_calloc(1, sizeof *h, "loader state");
    if (!h) return MT_ERR_NOMEM;
    h->dir = dir;
    mt_status st = load(h, out);
    free(h);
    if (st != MT_OK) mt_model_source_free(out); // closes the files already registered as mappings
    return st;
}
