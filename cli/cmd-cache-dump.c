// `metallic cache-dump MODEL [PROMPT] [-o table|json] [flags]`: runs a short generation (16 tokens unless
// --max-tokens says otherwise; the run flags and backend flags all apply), then prints the backend chosen
// for every op and every registered cache (executable caches, mask arenas): its CacheMetricsSnapshot and
// its entries, as a table or as JSON.
#include "cmd-cache-dump.h"

#include <cjson/cJSON.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "args.h"
#include "exec/cache.h"
#include "exec/registry.h"
#include "metallic.h"
#include "model/chat.h"
#include "model/generate.h"
#include "model/tokenizer.h"

#define DEFAULT_PROMPT "Write a C function that reverses a string."
#define MAX_LISTED 64

static int fail(const char *msg) {
    fprintf(stderr, "metallic: %s\n", msg);
    return 1;
}

static void human_bytes(size_t b, char *out, size_t cap) {
    if (b >= (size_t)1 << 30)
        snprintf(out, cap, "%.1f GiB", (double)b / (double)((size_t)1 << 30));
    else if (b >= (size_t)1 << 20)
        snprintf(out, cap, "%.1f MiB", (double)b / (double)((size_t)1 << 20));
    else if (b >= 1024)
        snprintf(out, cap, "%.1f KiB", (double)b / 1024.0);
    else
        snprintf(out, cap, "%zu B", b);
}

static void print_table(const mt_gen_result *r) {
    const mt_registry *reg = mt_registry_global();
    printf("generation: %d prompt tokens, %d generated, %.1f tok/s\n\n", r->n_prompt, r->n_tokens,
           r->gen_tok_s);
    printf("backends:\n");
    for (int i = 0; i < MT_OP_COUNT; i++)
        printf("  %-10s %-7s %s\n", mt_op_name((mt_op_kind)i),
               mt_path_name(mt_registry_path(reg, (mt_op_kind)i)), mt_registry_reason(reg, (mt_op_kind)i));
    void *caches[MAX_LISTED];
    const mt_cache_ops *ops[MAX_LISTED];
    int n = mt_cache_list(caches, ops, MAX_LISTED);
    if (n > MAX_LISTED) n = MAX_LISTED;
    if (!n) printf("\ncaches: none (no op ran on the graph path)\n");
    for (int c = 0; c < n; c++) {
        mt_cache_metrics m;
        ops[c]->metrics(caches[c], &m);
        char held[32], budget[32];
        human_bytes(m.bytes, held, sizeof held);
        human_bytes(m.capacity_bytes, budget, sizeof budget);
        printf("\ncache %s (%s): %d entries", m.name, ops[c]->kind, m.size);
        if (m.capacity_bytes) printf(" of %d", m.capacity);
        printf(", %s", held);
        if (m.capacity_bytes) printf(" of %s", budget);
        printf("%s\n", m.over_budget ? " (OVER BUDGET: all pinned)" : "");
        printf(
            "  lookups %llu, hits %llu, misses %llu, hit rate %.1f%%, evictions %llu, builds %llu (%.2f ms), "
            "pinned %d, max reuse %llu\n",
            (unsigned long long)m.lookups, (unsigned long long)m.hits, (unsigned long long)m.misses,
            100.0 * m.hit_rate, (unsigned long long)m.evictions, (unsigned long long)m.compiles,
            m.compile_ms_total, m.pinned, (unsigned long long)m.max_reuse);
        int ne = ops[c]->entries(caches[c], NULL, 0);
        mt_cache_entry_info *e = ne > 0 ? calloc((size_t)ne, sizeof *e) : NULL;
        if (ne > 0 && !e) continue;
        ne = e ? ops[c]->entries(caches[c], e, ne) : 0;
        if (ne > 0)
            printf("  %-56s %-34s %10s %6s %10s %8s %10s %10s\n", "key", "label", "bytes", "builds",
                   "build ms", "reuse", "age ms", "idle ms");
        for (int i = 0; i < ne; i++) {
            char b[32];
            human_bytes(e[i].bytes, b, sizeof b);
            printf("  %-56s %-34.34s %10s %6u %10.2f %8llu %10.1f %10.1f%s\n", e[i].key, e[i].label, b,
                   e[i].compile_count, e[i].compile_ms, (unsigned long long)e[i].reuse_count, e[i].age_ms,
                   e[i].idle_ms, e[i].pins ? " pinned" : "");
        }
        free(e);
    }
}

static int print_json(const mt_gen_result *r) {
    cJSON *root = cJSON_CreateObject();
    cJSON *gen = cJSON_AddObjectToObject(root, "generation");
    cJSON_AddNumberToObject(gen, "prompt_tokens", r->n_prompt);
    cJSON_AddNumberToObject(gen, "generated_tokens", r->n_tokens);
    cJSON_AddNumberToObject(gen, "gen_tok_s", r->gen_tok_s);
    cJSON *be = cJSON_AddObjectToObject(root, "backends");
    const mt_registry *reg = mt_registry_global();
    for (int i = 0; i < MT_OP_COUNT; i++) {
        cJSON *o = cJSON_AddObjectToObject(be, mt_op_name((mt_op_kind)i));
        cJSON_AddStringToObject(o, "backend", mt_path_name(mt_registry_path(reg, (mt_op_kind)i)));
        cJSON_AddStringToObject(o, "reason", mt_registry_reason(reg, (mt_op_kind)i));
    }
    cJSON *arr = cJSON_AddArrayToObject(root, "caches");
    void *caches[MAX_LISTED];
    const mt_cache_ops *ops[MAX_LISTED];
    int n = mt_cache_list(caches, ops, MAX_LISTED);
    if (n > MAX_LISTED) n = MAX_LISTED;
    for (int c = 0; c < n; c++) {
        mt_cache_metrics m;
        ops[c]->metrics(caches[c], &m);
        cJSON *o = cJSON_CreateObject();
        cJSON_AddItemToArray(arr, o);
        cJSON_AddStringToObject(o, "name", m.name);
        cJSON_AddStringToObject(o, "kind", ops[c]->kind);
        cJSON *s = cJSON_AddObjectToObject(o, "metrics");
        cJSON_AddNumberToObject(s, "lookups", (double)m.lookups);
        cJSON_AddNumberToObject(s, "hits", (double)m.hits);
        cJSON_AddNumberToObject(s, "misses", (double)m.misses);
        cJSON_AddNumberToObject(s, "hit_rate", m.hit_rate);
        cJSON_AddNumberToObject(s, "evictions", (double)m.evictions);
        cJSON_AddNumberToObject(s, "compiles", (double)m.compiles);
        cJSON_AddNumberToObject(s, "compile_ms_total", m.compile_ms_total);
        cJSON_AddNumberToObject(s, "size", m.size);
        cJSON_AddNumberToObject(s, "pinned", m.pinned);
        cJSON_AddNumberToObject(s, "bytes", (double)m.bytes);
        cJSON_AddNumberToObject(s, "capacity", m.capacity);
        cJSON_AddNumberToObject(s, "capacity_bytes", (double)m.capacity_bytes);
        cJSON_AddBoolToObject(s, "over_budget", m.over_budget);
        cJSON_AddNumberToObject(s, "oldest_age_ms", m.oldest_age_ms);
        cJSON_AddNumberToObject(s, "newest_age_ms", m.newest_age_ms);
        cJSON_AddNumberToObject(s, "lru_idle_ms", m.lru_idle_ms);
        cJSON_AddNumberToObject(s, "mru_idle_ms", m.mru_idle_ms);
        cJSON_AddNumberToObject(s, "max_reuse", (double)m.max_reuse);
        cJSON *ents = cJSON_AddArrayToObject(o, "entries");
        int ne = ops[c]->entries(caches[c], NULL, 0);
        mt_cache_entry_info *e = ne > 0 ? calloc((size_t)ne, sizeof *e) : NULL;
        ne = e ? ops[c]->entries(caches[c], e, ne) : 0;
        for (int i = 0; i < ne; i++) {
            cJSON *x = cJSON_CreateObject();
            cJSON_AddItemToArray(ents, x);
            cJSON_AddStringToObject(x, "key", e[i].key);
            cJSON_AddStringToObject(x, "label", e[i].label);
            cJSON_AddNumberToObject(x, "bytes", (double)e[i].bytes);
            cJSON_AddNumberToObject(x, "compile_count", e[i].compile_count);
            cJSON_AddNumberToObject(x, "compile_ms", e[i].compile_ms);
            cJSON_AddNumberToObject(x, "reuse_count", (double)e[i].reuse_count);
            cJSON_AddNumberToObject(x, "age_ms", e[i].age_ms);
            cJSON_AddNumberToObject(x, "idle_ms", e[i].idle_ms);
            cJSON_AddNumberToObject(x, "pins", e[i].pins);
        }
        free(e);
    }
    char *txt = cJSON_Print(root);
    cJSON_Delete(root);
    if (!txt) return fail("out of memory printing JSON");
    printf("%s\n", txt);
    free(txt);
    return 0;
}

// The model's generation defaults, then the flags given.
static mt_status sampler_params(const cli_opts *o, const mt_model *m, mt_sampler_params *p) {
    *p = *mt_model_gen_params(m);
    const mt_sampler_params *f = &o->sampler;
    if (o->sampler_set & CLI_SET_TEMPERATURE) p->temperature = f->temperature;
    if (o->sampler_set & CLI_SET_TOP_K) p->top_k = f->top_k;
    if (o->sampler_set & CLI_SET_TOP_P) p->top_p = f->top_p;
    if (o->sampler_set & CLI_SET_MIN_P) p->min_p = f->min_p;
    if (o->sampler_set & CLI_SET_REPEAT_PENALTY) p->repeat_penalty = f->repeat_penalty;
    if (o->sampler_set & CLI_SET_REPEAT_LAST_N) p->repeat_last_n = f->repeat_last_n;
    if (o->sampler_set & CLI_SET_SEED) p->seed = f->seed;
    return mt_sampler_params_check(p);
}

static int run(const cli_opts *o, bool json) {
    mt_model *model = NULL;
    mt_session *sess = NULL;
    mt_sampler *smp = NULL;
    char *rendered = NULL;
    int32_t *ids = NULL;
    size_t n_ids = 0;
    int rc = 1;
    if (mt_model_load(o->model, &model) != MT_OK) {
        fprintf(stderr, "metallic: %s: %s\n", o->model, mt_last_error());
        return 1;
    }
    mt_sampler_params sp;
    mt_session_opts so = mt_session_default_opts();
    so.n_ctx = o->ctx;
    so.n_seq = 1;
    so.n_threads = o->threads;
    if (sampler_params(o, model, &sp) != MT_OK || mt_session_create(model, &so, &sess) != MT_OK ||
        mt_sampler_create(&sp, mt_model_config(model)->n_vocab, &smp) != MT_OK) {
        rc = fail(mt_last_error());
        goto out;
    }
    const char *prompt = o->prompt ? o->prompt : DEFAULT_PROMPT;
    if (!o->raw) {
        mt_chat_msg msgs[2];
        int nm = 0;
        if (o->system) msgs[nm++] = (mt_chat_msg){"system", o->system};
        msgs[nm++] = (mt_chat_msg){"user", prompt};
        if (mt_chat_render(msgs, nm, mt_chat_default_system(mt_model_chat_template(model)), true,
                           &rendered) != MT_OK) {
            rc = fail(mt_last_error());
            goto out;
        }
    }
    const char *text = rendered ? rendered : prompt;
    if (mt_tokenizer_encode(mt_model_tokenizer(model), text, strlen(text), true, &ids, &n_ids) != MT_OK) {
        rc = fail(mt_last_error());
        goto out;
    }
    mt_gen_opts go = mt_gen_default_opts();
    go.max_tokens = o->max_tokens;
    mt_gen_result r;
    if (mt_generate(sess, model, smp, ids, (int)n_ids, &go, &r) != MT_OK) {
        rc = fail(mt_last_error());
        goto out;
    }
    // The caches are dumped while the session that owns some of them is still alive.
    rc = json ? print_json(&r) : (print_table(&r), 0);
    mt_gen_result_free(&r);
out:
    free(ids);
    free(rendered);
    mt_sampler_free(smp);
    mt_session_free(sess);
    mt_model_free(model);
    return rc;
}

int mt_cmd_cache_dump(int argc, char **argv) {
    // Our own flag (-o) comes out; everything else goes to the run parser, after a default token limit
    // that a --max-tokens flag overrides.
    char **av = calloc((size_t)argc + 4, sizeof *av);
    if (!av) return fail("out of memory");
    int n = 0;
    av[n++] = "metallic";
    av[n++] = "--max-tokens";
    av[n++] = "16";
    bool json = false;
    for (int i = 0; i < argc; i++) {
        const char *a = argv[i], *v = NULL;
        if (!strcmp(a, "-o") || !strcmp(a, "--output")) {
            if (i + 1 >= argc) {
                free(av);
                fprintf(stderr, "metallic: %s needs a value (table or json)\n", a);
                return 2;
            }
            v = argv[++i];
        } else if (!strncmp(a, "-o=", 3) || !strncmp(a, "--output=", 9)) {
            v = strchr(a, '=') + 1;
        }
        if (v) {
            if (strcmp(v, "table") && strcmp(v, "json")) {
                free(av);
                fprintf(stderr, "metallic: %s %s: expected one of: table json\n", a, v);
                return 2;
            }
            json = !strcmp(v, "json");
            continue;
        }
        av[n++] = argv[i];
    }
    cli_opts o;
    int rc = cli_parse(n, av, &o);
    if (!rc && o.cmd != CLI_RUN && o.cmd != CLI_CHAT) { // help, version, or a subcommand name as MODEL
        printf("usage: metallic cache-dump MODEL [PROMPT] [-o table|json] [run flags]\n");
        rc = o.cmd == CLI_HELP ? 0 : 2;
    } else if (!rc && !(rc = cli_configure_backends(&o))) {
        rc = run(&o, json);
    }
    free(av);
    return rc;
}
