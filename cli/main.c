// The `metallic` command: run, chat, inspect and tokenize. Parsing lives in args.c; this file loads the
// model, builds the prompt, drives the generation loop and prints text or JSON. Exit codes: 0 ok,
// 1 a model/runtime error (the library's message), 2 a usage error (the flag and value), 130 interrupted.
#include <cjson/cJSON.h>
#include <errno.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include "args.h"
#include "backend/device.h"
#include "cmd-ab.h"
#include "bench.h"
#include "cmd-cache-dump.h"
#include "core/metrics.h"
#include "core/gguf.h"
#include "metallic.h"
#include "model/chat.h"
#include "model/generate.h"
#include "model/tokenizer.h"
#include "tui.h"

static volatile sig_atomic_t g_cancel;

// First Ctrl-C asks the current answer to stop; a second one while it is still pending exits.
static void on_sigint(int sig) {
    (void)sig;
    if (g_cancel) _exit(130);
    g_cancel = 1;
}

static void install_sigint(void) {
    struct sigaction sa;
    memset(&sa, 0, sizeof sa);
    sa.sa_handler = on_sigint;
    sigemptyset(&sa.sa_mask);
    sa.sa_flags = 0; // no SA_RESTART: Ctrl-C at the chat prompt interrupts the read
    sigaction(SIGINT, &sa, NULL);
}

static int fail(const char *msg) {
    fprintf(stderr, "metallic: %s\n", msg);
    return 1;
}

// The loader's message, with the path added when the message does not already name it.
static int load_fail(const char *path) {
    const char *msg = mt_last_error();
    if (strstr(msg, path))
        fprintf(stderr, "metallic: %s\n", msg);
    else
        fprintf(stderr, "metallic: %s: %s\n", path, *msg ? msg : "cannot load the model");
    return 1;
}

static bool is_dir(const char *path) {
    struct stat sb;
    return stat(path, &sb) == 0 && S_ISDIR(sb.st_mode);
}

// Replaces invalid UTF-8 with U+FFFD so JSON output is always valid; *out is malloc'ed.
static char *utf8_sanitize(const char *s, size_t n) {
    char *out = malloc(n * 3 + 1), *w = out;
    if (!out) return NULL;
    const unsigned char *p = (const unsigned char *)s, *end = p + n;
    while (p < end) {
        unsigned c = *p;
        int len = c < 0x80 ? 1 : (c >> 5) == 6 ? 2 : (c >> 4) == 14 ? 3 : (c >> 3) == 30 ? 4 : 0;
        bool ok = len > 0 && p + len <= end;
        for (int i = 1; ok && i < len; i++) ok = (p[i] & 0xC0) == 0x80;
        if (ok && len > 1) { // reject overlong forms, surrogates and values past U+10FFFF
            unsigned cp = c & (0x7F >> len);
            for (int i = 1; i < len; i++) cp = cp << 6 | (p[i] & 0x3F);
            ok = !(len == 2 && cp < 0x80) && !(len == 3 && cp < 0x800) && !(len == 4 && cp < 0x10000) &&
                 !(cp >= 0xD800 && cp <= 0xDFFF) && cp <= 0x10FFFF;
        }
        if (ok && c != 0) {
            memcpy(w, p, (size_t)len);
            w += len;
            p += len;
        } else {
            memcpy(w, "\xEF\xBF\xBD", 3);
            w += 3;
            p += 1;
        }
    }
    *w = 0;
    return out;
}

// Reads all of stdin (for the prompt "-").
static char *read_stdin(void) {
    size_t cap = 4096, len = 0;
    char *buf = malloc(cap);
    while (buf) {
        size_t got = fread(buf + len, 1, cap - len - 1, stdin);
        len += got;
        if (got == 0) break;
        if (cap - len < 2) {
            char *nb = realloc(buf, cap * 2);
            if (!nb) free(buf);
            buf = nb;
            cap *= 2;
        }
    }
    if (buf) buf[len] = 0;
    return buf;
}

// The model's generation defaults, then the flags the user gave, checked.
static int sampler_params(const cli_opts *o, const mt_model *m, mt_sampler_params *p) {
    cli_sampler_params(o, mt_model_gen_params(m), p);
    if (mt_sampler_params_check(p) != MT_OK) return fail(mt_last_error());
    return 0;
}

typedef struct engine {
    mt_model *model;
    mt_session *session;
    mt_sampler *sampler;
    const mt_tokenizer *tok;
} engine;

static void engine_free(engine *e) {
    mt_sampler_free(e->sampler);
    mt_session_free(e->session);
    mt_model_free(e->model);
}

static int engine_open(const cli_opts *o, engine *e) {
    memset(e, 0, sizeof *e);
    if (mt_model_load(o->model, &e->model) != MT_OK) return load_fail(o->model);
    mt_sampler_params sp;
    int rc = sampler_params(o, e->model, &sp);
    if (rc) {
        engine_free(e);
        return rc;
    }
    e->tok = mt_model_tokenizer(e->model);
    mt_session_opts so = mt_session_default_opts();
    so.n_ctx = o->ctx;
    so.n_seq = 1;
    so.n_threads = o->threads;
    so.device = MT_DEVICE_CPU;
    if (o->device) {
        if (mt_device_parse(o->device, &so.device) != MT_OK) return fail(mt_last_error());
    } else if (mt_device_available(MT_DEVICE_CUDA)) {
        so.device = MT_DEVICE_CUDA;
    }
    so.cuda_graphs = strcmp(o->backend, "legacy") != 0; // the graph path replays fused launches
    if (mt_session_create(e->model, &so, &e->session) != MT_OK ||
        mt_sampler_create(&sp, mt_model_config(e->model)->n_vocab, &e->sampler) != MT_OK) {
        rc = fail(mt_last_error());
        engine_free(e);
        return rc;
    }
    if (o->verbose) {
        const mt_qwen2_config *c = mt_model_config(e->model);
        fprintf(
            stderr,
            "metallic: %s: %d layers, %d embd, vocab %d, ctx %d; sampler: temperature %g top_k %d top_p %g "
            "min_p %g repeat_penalty %g seed %llu\n",
            c->name, c->n_layer, c->n_embd, c->n_vocab, mt_session_n_ctx(e->session), (double)sp.temperature,
            sp.top_k, (double)sp.top_p, (double)sp.min_p, (double)sp.repeat_penalty,
            (unsigned long long)sp.seed);
    }
    return 0;
}

static mt_status encode(const mt_tokenizer *t, const char *text, int32_t **ids, int *n) {
    size_t nn = 0;
    MT_TRY(mt_tokenizer_encode(t, text, strlen(text), true, ids, &nn));
    if (nn > (size_t)1 << 30) {
        free(*ids);
        return mt_fail(MT_ERR_RANGE, "prompt of %zu tokens is too long", nn);
    }
    *n = (int)nn;
    return MT_OK;
}

static int print_piece(void *user, int32_t id, const char *piece, size_t len, const mt_logprob *top,
                       int n_top) {
    (void)user, (void)id, (void)top, (void)n_top;
    if (len) {
        fwrite(piece, 1, len, stdout);
        fflush(stdout);
    }
    return 0;
}

static void print_timings(const mt_gen_result *r) {
    fprintf(stderr, "prompt: %d tok, %.1f tok/s | gen: %d tok, %.1f tok/s\n", r->n_prompt, r->prompt_tok_s,
            r->n_tokens, r->gen_tok_s);
}

static cJSON *ids_json(const int32_t *ids, int n) {
    cJSON *a = cJSON_CreateArray();
    for (int i = 0; i < n; i++) cJSON_AddItemToArray(a, cJSON_CreateNumber(ids[i]));
    return a;
}

static int print_json(const int32_t *prompt, int n_prompt, const mt_gen_result *r) {
    cJSON *j = cJSON_CreateObject();
    cJSON_AddItemToObject(j, "prompt_tokens", ids_json(prompt, n_prompt));
    cJSON_AddItemToObject(j, "tokens", ids_json(r->tokens, r->n_tokens));
    char *text = utf8_sanitize(r->text ? r->text : "", r->text_len);
    cJSON_AddStringToObject(j, "text", text ? text : "");
    free(text);
    if (r->n_logprobs) {
        cJSON *lp = cJSON_AddArrayToObject(j, "logprobs");
        for (int i = 0; i < r->n_tokens; i++) {
            cJSON *row = cJSON_CreateArray();
            for (int k = 0; k < r->n_logprobs; k++) {
                const mt_logprob *e = &r->logprobs[(size_t)i * r->n_logprobs + k];
                cJSON *o = cJSON_CreateObject();
                cJSON_AddNumberToObject(o, "id", e->id);
                cJSON_AddNumberToObject(o, "logprob", e->logprob);
                cJSON_AddItemToArray(row, o);
            }
            cJSON_AddItemToArray(lp, row);
        }
    }
    cJSON *t = cJSON_AddObjectToObject(j, "timings");
    cJSON_AddNumberToObject(t, "prompt_ms", r->prompt_ms);
    cJSON_AddNumberToObject(t, "prompt_tok_s", r->prompt_tok_s);
    cJSON_AddNumberToObject(t, "gen_ms", r->gen_ms);
    cJSON_AddNumberToObject(t, "gen_tok_s", r->gen_tok_s);
    cJSON_AddStringToObject(j, "stop_reason", mt_stop_reason_name(r->stop));
    char *s = cJSON_PrintUnformatted(j);
    cJSON_Delete(j);
    if (!s) return fail("out of memory printing JSON");
    puts(s);
    free(s);
    return 0;
}

static int cmd_run(const cli_opts *o) {
    char *stdin_prompt = NULL;
    const char *prompt = o->prompt;
    if (!strcmp(prompt, "-")) {
        if (!(prompt = stdin_prompt = read_stdin())) return fail("cannot read the prompt from stdin");
    }
    engine e;
    int rc = engine_open(o, &e);
    if (rc) {
        free(stdin_prompt);
        return rc;
    }
    char *rendered = NULL;
    int32_t *ids = NULL;
    int n = 0;
    if (!o->raw) {
        mt_chat_msg msgs[2];
        int nm = 0;
        if (o->system) msgs[nm++] = (mt_chat_msg){"system", o->system};
        msgs[nm++] = (mt_chat_msg){"user", prompt};
        const char *dflt = mt_chat_default_system(mt_model_chat_template(e.model));
        if (mt_chat_render(msgs, nm, dflt, true, &rendered) != MT_OK) {
            rc = fail(mt_last_error());
            goto out;
        }
    }
    if (encode(e.tok, rendered ? rendered : prompt, &ids, &n) != MT_OK) {
        rc = fail(mt_last_error());
        goto out;
    }
    if (o->verbose) fprintf(stderr, "metallic: prompt of %d tokens\n", n);

    install_sigint();
    mt_gen_opts go = mt_gen_default_opts();
    go.max_tokens = o->max_tokens;
    go.n_logprobs = o->format == CLI_JSON ? o->logprobs : 0;
    go.cancel = &g_cancel;
    if (o->format == CLI_TEXT) go.on_token = print_piece;
    mt_gen_result r;
    if (mt_generate(e.session, e.model, e.sampler, ids, n, &go, &r) != MT_OK) {
        rc = fail(mt_last_error());
        goto out;
    }
    if (o->format == CLI_JSON)
        rc = print_json(ids, n, &r);
    else {
        if (r.text_len && r.text[r.text_len - 1] != '\n') putchar('\n');
        fflush(stdout);
        if (r.stop == MT_STOP_CANCELLED) fprintf(stderr, "metallic: cancelled\n");
        print_timings(&r);
    }
    mt_gen_result_free(&r);
out:
    free(ids);
    free(rendered);
    free(stdin_prompt);
    engine_free(&e);
    return rc;
}

// A growable conversation whose strings it owns.
typedef struct convo {
    mt_chat_msg *msgs;
    int n, cap;
} convo;

static bool convo_add(convo *c, const char *role, const char *content) {
    if (c->n == c->cap) {
        int nc = c->cap ? c->cap * 2 : 16;
        mt_chat_msg *m = realloc(c->msgs, (size_t)nc * sizeof *m);
        if (!m) return false;
        c->msgs = m, c->cap = nc;
    }
    char *dup = strdup(content);
    if (!dup) return false;
    c->msgs[c->n].role = role;
    c->msgs[c->n].content = dup;
    c->n++;
    return true;
}

static void convo_pop(convo *c) {
    free((char *)c->msgs[--c->n].content);
}

static void convo_free(convo *c) {
    while (c->n) convo_pop(c);
    free(c->msgs);
}

static int cmd_chat(const cli_opts *o) {
    engine e;
    int rc = engine_open(o, &e);
    if (rc) return rc;
    const char *dflt = mt_chat_default_system(mt_model_chat_template(e.model));
    convo c = {0};
    if (o->system && !convo_add(&c, "system", o->system)) return engine_free(&e), fail("out of memory");
    install_sigint();
    // What the KV cache of sequence 0 holds, token by token, so each turn only prefills what is new.
    int32_t *cached = NULL;
    int n_cached = 0;
    char *line = NULL;
    size_t line_cap = 0;
    bool tty = isatty(STDIN_FILENO);
    fprintf(stderr, "metallic chat: Ctrl-C stops an answer; Ctrl-D or Ctrl-C at the prompt exits; /reset "
                    "clears the conversation\n");
    for (;;) {
        g_cancel = 0;
        if (tty) {
            fputs("> ", stdout);
            fflush(stdout);
        }
        errno = 0;
        ssize_t len = getline(&line, &line_cap, stdin);
        if (len < 0) { // Ctrl-D, end of input, or Ctrl-C while reading
            if (tty) putchar('\n');
            break;
        }
        while (len && (line[len - 1] == '\n' || line[len - 1] == '\r')) line[--len] = 0;
        if (!len) continue;
        if (!strcmp(line, "/exit") || !strcmp(line, "/quit")) break;
        if (!strcmp(line, "/reset")) {
            while (c.n > (o->system ? 1 : 0)) convo_pop(&c);
            n_cached = 0;
            continue;
        }
        if (!convo_add(&c, "user", line)) {
            rc = fail("out of memory");
            break;
        }
        char *text = NULL;
        int32_t *ids = NULL;
        int n = 0;
        if (mt_chat_render(c.msgs, c.n, dflt, true, &text) != MT_OK ||
            encode(e.tok, text, &ids, &n) != MT_OK) {
            free(text);
            fprintf(stderr, "metallic: %s\n", mt_last_error());
            convo_pop(&c);
            continue;
        }
        free(text);
        int common = 0;
        while (common < n_cached && common < n && cached[common] == ids[common]) common++;
        mt_gen_opts go = mt_gen_default_opts();
        go.max_tokens = o->max_tokens;
        go.n_past = common < n ? common : n - 1;
        go.cancel = &g_cancel;
        go.on_token = print_piece;
        mt_gen_result r;
        if (mt_generate(e.session, e.model, e.sampler, ids, n, &go, &r) != MT_OK) {
            fprintf(stderr, "metallic: %s (/reset starts over)\n", mt_last_error());
            free(ids);
            convo_pop(&c);                                  // the turn did not happen
            if (n_cached > go.n_past) n_cached = go.n_past; // positions from n_past on may be rewritten
            continue;
        }
        putchar('\n');
        fflush(stdout);
        if (r.stop == MT_STOP_CANCELLED) fprintf(stderr, "[stopped]\n");
        if (o->verbose) print_timings(&r);
        // The cache now holds the prompt and every generated token but possibly the last one.
        int keep = n + (r.n_tokens > 0 ? r.n_tokens - 1 : 0);
        int32_t *nc = realloc(cached, (size_t)(keep > 0 ? keep : 1) * sizeof *nc);
        if (!nc || !convo_add(&c, "assistant", r.text)) {
            free(ids);
            mt_gen_result_free(&r);
            rc = fail("out of memory");
            break;
        }
        cached = nc;
        memcpy(cached, ids, (size_t)n * sizeof *cached);
        if (keep > n) memcpy(cached + n, r.tokens, (size_t)(keep - n) * sizeof *cached);
        n_cached = keep;
        free(ids);
        mt_gen_result_free(&r);
    }
    free(line);
    free(cached);
    convo_free(&c);
    engine_free(&e);
    return rc;
}

static int cmd_tokenize(const cli_opts *o) {
    mt_tokenizer *t = NULL;
    mt_gguf *g = NULL;
    mt_status st;
    if (is_dir(o->model)) {
        char path[4096];
        snprintf(path, sizeof path, "%s/tokenizer.json", o->model);
        st = mt_tokenizer_from_hf_json(path, &t);
    } else {
        st = mt_gguf_open(o->model, &g);
        if (st == MT_OK) st = mt_tokenizer_from_gguf(g, &t);
    }
    if (st != MT_OK) {
        mt_gguf_close(g);
        return load_fail(o->model);
    }
    int32_t *ids = NULL;
    int n = 0;
    int rc = 0;
    if (encode(t, o->prompt, &ids, &n) != MT_OK)
        rc = fail(mt_last_error());
    else {
        putchar('[');
        for (int i = 0; i < n; i++) printf(i ? ",%d" : "%d", ids[i]);
        puts("]");
    }
    free(ids);
    mt_tokenizer_free(t);
    mt_gguf_close(g);
    return rc;
}

static void print_str(const mt_str *s, size_t max) {
    size_t n = s->len < max ? (size_t)s->len : max;
    putchar('"');
    for (size_t i = 0; i < n; i++) {
        unsigned char ch = (unsigned char)s->ptr[i];
        if (ch == '"' || ch == '\\')
            printf("\\%c", ch);
        else if (ch == '\n')
            fputs("\\n", stdout);
        else if (ch < 0x20 || ch == 0x7F)
            printf("\\x%02x", ch);
        else
            putchar(ch);
    }
    putchar('"');
    if (n < s->len) printf("... (%llu bytes)", (unsigned long long)s->len);
}

static const char *gguf_type_name(mt_gguf_type t) {
    static const char *const names[] = {"u8",   "i8",     "u16",   "i16", "u32", "i32", "f32",
                                        "bool", "string", "array", "u64", "i64", "f64"};
    return (unsigned)t < sizeof names / sizeof names[0] ? names[t] : "?";
}

// One scalar array element or value from raw little-endian bytes.
static void print_scalar(mt_gguf_type t, const unsigned char *p) {
    union {
        uint8_t u8;
        int8_t i8;
        uint16_t u16;
        int16_t i16;
        uint32_t u32;
        int32_t i32;
        float f32;
        uint64_t u64;
        int64_t i64;
        double f64;
    } v;
    static const int size[] = {1, 1, 2, 2, 4, 4, 4, 1, 0, 0, 8, 8, 8};
    memcpy(&v, p, (size_t)size[t]);
    switch (t) {
    case MT_GGUF_U8:
        printf("%u", v.u8);
        break;
    case MT_GGUF_I8:
        printf("%d", v.i8);
        break;
    case MT_GGUF_U16:
        printf("%u", v.u16);
        break;
    case MT_GGUF_I16:
        printf("%d", v.i16);
        break;
    case MT_GGUF_U32:
        printf("%u", v.u32);
        break;
    case MT_GGUF_I32:
        printf("%d", v.i32);
        break;
    case MT_GGUF_F32:
        printf("%g", (double)v.f32);
        break;
    case MT_GGUF_BOOL:
        fputs(v.u8 ? "true" : "false", stdout);
        break;
    case MT_GGUF_U64:
        printf("%llu", (unsigned long long)v.u64);
        break;
    case MT_GGUF_I64:
        printf("%lld", (long long)v.i64);
        break;
    case MT_GGUF_F64:
        printf("%g", v.f64);
        break;
    default:
        fputs("?", stdout);
    }
}

static int inspect_kv(const mt_gguf *g, int64_t i, bool verbose) {
    mt_str key = mt_gguf_key(g, i);
    mt_gguf_type t = mt_gguf_kv_type(g, i);
    printf("  %.*s = ", (int)key.len, key.ptr);
    if (t == MT_GGUF_STRING) {
        mt_str s;
        if (mt_gguf_get_str(g, i, &s) != MT_OK) return 1;
        print_str(&s, verbose ? 1 << 20 : 200);
    } else if (t == MT_GGUF_ARRAY) {
        mt_gguf_type et;
        uint64_t count;
        if (mt_gguf_get_arr(g, i, &et, &count) != MT_OK) return 1;
        printf("[%s x %llu] ", gguf_type_name(et), (unsigned long long)count);
        uint64_t show = count < 8 ? count : 8; // long arrays (vocabularies, merges) are summarized
        const void *data = NULL;
        if (et != MT_GGUF_STRING && et != MT_GGUF_ARRAY && mt_gguf_get_arr_data(g, i, &data) != MT_OK)
            return 1;
        static const int size[] = {1, 1, 2, 2, 4, 4, 4, 1, 0, 0, 8, 8, 8};
        putchar('[');
        for (uint64_t j = 0; j < show; j++) {
            if (j) fputs(", ", stdout);
            if (et == MT_GGUF_STRING) {
                mt_str s;
                if (mt_gguf_get_arr_str(g, i, j, &s) != MT_OK) return 1;
                print_str(&s, 40);
            } else if (et == MT_GGUF_ARRAY || (unsigned)et >= sizeof size / sizeof size[0]) {
                fputs("...", stdout);
                break;
            } else {
                print_scalar(et, (const unsigned char *)data + j * (uint64_t)size[et]);
            }
        }
        fputs(show < count ? ", ...]" : "]", stdout);
    } else {
        // Scalars through the typed getters, which check the type and the value.
        switch (t) {
        case MT_GGUF_F32:
        case MT_GGUF_F64: {
            float f;
            if (mt_gguf_get_f32(g, i, &f) != MT_OK) return 1;
            printf("%g", (double)f);
            break;
        }
        case MT_GGUF_BOOL: {
            bool b;
            if (mt_gguf_get_bool(g, i, &b) != MT_OK) return 1;
            fputs(b ? "true" : "false", stdout);
            break;
        }
        case MT_GGUF_I8:
        case MT_GGUF_I16:
        case MT_GGUF_I32:
        case MT_GGUF_I64: {
            int64_t v;
            if (mt_gguf_get_i64(g, i, &v) != MT_OK) return 1;
            printf("%lld", (long long)v);
            break;
        }
        default: {
            uint64_t v;
            if (mt_gguf_get_u64(g, i, &v) != MT_OK) return 1;
            printf("%llu", (unsigned long long)v);
        }
        }
    }
    putchar('\n');
    return 0;
}

static void print_shape(const mt_tensor *t) {
    putchar('[');
    for (int d = 0; d < t->ndim; d++) printf(d ? ", %lld" : "%lld", (long long)t->ne[d]);
    putchar(']');
}

static int inspect_gguf(const cli_opts *o) {
    mt_gguf *g;
    if (mt_gguf_open(o->model, &g) != MT_OK) return load_fail(o->model);
    int64_t n_kv = mt_gguf_n_kv(g), n_t = mt_gguf_n_tensors(g);
    printf("file: %s\n", o->model);
    printf("format: GGUF v%u, %zu bytes, alignment %llu\n", mt_gguf_version(g), mt_gguf_file_size(g),
           (unsigned long long)mt_gguf_alignment(g));
    printf("metadata: %lld keys\n", (long long)n_kv);
    for (int64_t i = 0; i < n_kv; i++)
        if (inspect_kv(g, i, o->verbose > 0)) {
            putchar('\n');
            int rc = fail(mt_last_error());
            mt_gguf_close(g);
            return rc;
        }
    long long count[MT_DTYPE_END] = {0};
    unsigned long long bytes[MT_DTYPE_END] = {0}, total = 0;
    for (int64_t i = 0; i < n_t; i++) {
        const mt_gguf_tensor *t = mt_gguf_tensor_at(g, i);
        int d = (int)t->t.dtype;
        if (d >= 0 && d < MT_DTYPE_END) count[d]++, bytes[d] += t->nbytes;
        total += t->nbytes;
    }
    printf("tensors: %lld, %llu bytes\n", (long long)n_t, total);
    for (int d = 0; d < MT_DTYPE_END; d++)
        if (count[d])
            printf("  %-6s %5lld tensors %12llu bytes (%.1f MiB)\n", mt_dtype_name(d), count[d], bytes[d],
                   bytes[d] / 1048576.0);
    // What a CPU session adds next to the mmap (the kernels' packed copies, less the file pages they
    // replace), when the file loads as a model; inspect still describes files that do not.
    mt_model *m = NULL;
    if (mt_model_load(o->model, &m) == MT_OK) {
        size_t replaced = 0;
        const size_t packed = mt_model_cpu_repack_bytes(m, &replaced);
        if (packed)
            printf("cpu repack: %zu bytes (%.1f MiB) of packed copies made by a CPU session, "
                   "replacing %zu bytes (%.1f MiB) of mapped file pages: net %+.1f MiB (METALLIC_REPACK=0: "
                   "none)\n",
                   packed, packed / 1048576.0, replaced, replaced / 1048576.0,
                   ((double)packed - (double)replaced) / 1048576.0);
        mt_model_free(m);
    }
    if (o->verbose)
        for (int64_t i = 0; i < n_t; i++) {
            const mt_gguf_tensor *t = mt_gguf_tensor_at(g, i);
            printf("  %-40s %-6s ", t->name, mt_dtype_name(t->t.dtype));
            print_shape(&t->t);
            printf(" %llu bytes\n", (unsigned long long)t->nbytes);
        }
    mt_gguf_close(g);
    return 0;
}

// A Hugging Face folder: its config files, pretty-printed.
static int inspect_hf(const cli_opts *o) {
    static const char *const files[] = {"config.json", "generation_config.json"};
    printf("folder: %s\n", o->model);
    for (int f = 0; f < 2; f++) {
        char path[4096];
        snprintf(path, sizeof path, "%s/%s", o->model, files[f]);
        FILE *fp = fopen(path, "rb");
        if (!fp) {
            if (f == 0) {
                fprintf(stderr, "metallic: cannot open %s\n", path);
                return 1;
            }
            continue;
        }
        char buf[1 << 16];
        size_t n = fread(buf, 1, sizeof buf - 1, fp);
        fclose(fp);
        buf[n] = 0;
        cJSON *j = cJSON_Parse(buf);
        if (!j) {
            fprintf(stderr, "metallic: %s: not valid JSON\n", path);
            return 1;
        }
        char *s = cJSON_Print(j);
        printf("%s:\n%s\n", files[f], s ? s : "");
        free(s);
        cJSON_Delete(j);
    }
    return 0;
}

int main(int argc, char **argv) {
    if (argc > 1 && !strcmp(argv[1], "cache-dump")) return mt_cmd_cache_dump(argc - 2, argv + 2);
    if (argc > 1 && !strcmp(argv[1], "bench")) return mt_cmd_bench(argc - 2, argv + 2);
    if (argc > 1 && !strcmp(argv[1], "ab")) return mt_cmd_ab(argc - 2, argv + 2);
    cli_opts o;
    int rc = cli_parse(argc, argv, &o);
    if (rc) return rc;
    if ((o.cmd == CLI_RUN || o.cmd == CLI_CHAT) && (rc = cli_configure_backends(&o))) return rc;
    // an unwritable METALLIC_METRICS_JSONL_PATH is an error, not a silently missing file
    if ((o.cmd == CLI_RUN || o.cmd == CLI_CHAT) && mt_metrics_init() != MT_OK) return fail(mt_last_error());
    if (o.cmd == CLI_CHAT && o.format == CLI_TUI) {
        fprintf(stderr, "metallic: --output-format tui runs one prompt (usage: metallic run MODEL PROMPT "
                        "--output-format tui)\n");
        return 2;
    }
    if (o.cmd == CLI_RUN && o.format == CLI_TUI) return cli_tui_run(&o);
    switch (o.cmd) {
    case CLI_HELP:
        cli_print_help();
        return 0;
    case CLI_VERSION:
        printf("metallic %s\n", MT_CLI_VERSION);
        return 0;
    case CLI_RUN:
        return cmd_run(&o);
    case CLI_CHAT:
        return cmd_chat(&o);
    case CLI_TOKENIZE:
        return cmd_tokenize(&o);
    case CLI_INSPECT:
        return is_dir(o.model) ? inspect_hf(&o) : inspect_gguf(&o);
    }
    return 1;
}
