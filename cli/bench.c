// `metallic bench MODEL`: prefill and decode throughput, measured the way llama-bench measures it so the
// two can be compared row by row. pp<N>: N random token ids (drawn from the vocabulary with a fixed
// seed) in one mt_session_decode call from an empty cache, tok/s = N / time. tg<N>: after a short
// untimed prompt, N single-token decode steps, tok/s = N / time. Each test runs once to warm up, then
// -r times; rows report mean and sample standard deviation. Only the public API is used.
#include <cjson/cJSON.h>
#include <errno.h>
#include <limits.h>
#include <math.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "bench.h"
#include "core/threadpool.h"
#include "exec/registry.h"
#include "metallic.h"

#ifndef MT_BUILD_COMMIT
#define MT_BUILD_COMMIT "unknown"
#endif

#define MAX_LIST 16
#define TG_PROMPT 8 // untimed prompt before a tg run, so decode steps attend to a non-empty cache
#define MAX_TOKENS 1000000

typedef enum { OUT_MD, OUT_JSON, OUT_CSV, OUT_JSONL } out_fmt;

typedef struct {
    int n;
    int v[MAX_LIST];
} int_list;

typedef struct {
    const char *model;
    int_list prompts, gens, threads, depths;
    int reps;
    out_fmt fmt;
    const char *backend;  // the one path, or the first of a paired list
    const char *paths[2]; // --backend A,B: both paths, alternated within every repetition
    int n_paths;          // 1, or 2 for a paired comparison
    char backend_arg[32]; // storage for the paths of a list
    const char *device;   // "cpu" or "cuda"
    int verbose;
} bench_opts;

// What the rows say about the model.
typedef struct {
    char type[160];
    uint64_t size, n_params;
    double decode_weight_bytes; // bytes of weights one decode step reads
    double kv_bytes_per_pos;    // K+V bytes of one cached position over all layers
    char cpu[256];
} model_info;

typedef struct {
    int n_prompt, n_gen, threads;
    int depth; // positions already in the KV cache when the timed part starts (llama-bench -d)
    char test_time[32];
    double *samples_ns; // [reps]
    double avg_ns, sd_ns, avg_ts, sd_ts;
    double bytes_per_token; // tg only: weights + KV read per step, averaged over the steps
    const char *path;       // the --backend value this row ran with
    // Second path of a paired run: median, min and max over the repetitions of this row's t/s divided
    // by the first path's t/s of the same repetition (0: not paired).
    double pair_ratio, pair_min, pair_max;
    const char *pair_base; // the first path
} bench_row;

static bool is_cuda(const bench_opts *o) {
    return !strcmp(o->device, "cuda");
}

static void usage(FILE *f) {
    fprintf(f, "usage: metallic bench MODEL [options]\n"
               "  -p, --n-prompt N[,N..]   prompt sizes, one pp<N> row each (default 512; 0 = none)\n"
               "  -n, --n-gen N[,N..]      decode lengths, one tg<N> row each (default 128; 0 = none)\n"
               "  -r, --repetitions N      timed runs per test after one warm-up run (default 5)\n"
               "  -t, --threads N[,N..]    threads (default: one per core)\n"
               "  -d, --n-depth N[,N..]    tokens already in the KV cache before each test (default 0)\n"
               "  -o, --output md|json|csv|jsonl   output format (default md)\n"
               "  --backend legacy|graph|auto      execution path (default auto); two paths A,B (e.g.\n"
               "                                   legacy,graph) run back to back in every repetition,\n"
               "                                   alternating which goes first, and add B/A ratios\n"
               "  --device cpu|cuda        device (default: cuda when built with it and a GPU is present)\n"
               "  -v, --verbose            progress on stderr; md adds achieved GB/s for tg rows\n"
               "  -h, --help               this help\n");
}

static int usage_error(const char *flag, const char *value, const char *why) {
    if (value)
        fprintf(stderr, "metallic bench: %s '%s': %s\n", flag, value, why);
    else
        fprintf(stderr, "metallic bench: %s: %s\n", flag, why);
    return 2;
}

// Parses "512" or "128,256,512" into l; each value in [lo, MAX_TOKENS].
static int parse_list(const char *flag, const char *s, int lo, int_list *l) {
    l->n = 0;
    const char *p = s;
    for (;;) {
        if (l->n == MAX_LIST) return usage_error(flag, s, "too many values (at most 16)");
        errno = 0;
        char *end;
        long v = strtol(p, &end, 10);
        if (end == p || errno || v < lo || v > MAX_TOKENS || (*end && *end != ','))
            return usage_error(flag, s,
                               lo > 0 ? "expected positive integers separated by commas"
                                      : "expected integers >= 0 separated by commas");
        l->v[l->n++] = (int)v;
        if (!*end) return 0;
        p = end + 1;
    }
}

static int parse_args(int argc, char **argv, bench_opts *o) {
    memset(o, 0, sizeof *o);
    o->prompts = (int_list){1, {512}};
    o->gens = (int_list){1, {128}};
    o->threads = (int_list){1, {0}};
    o->depths = (int_list){1, {0}};
    o->reps = 5;
    o->fmt = OUT_MD;
    o->backend = "auto";
    o->paths[0] = "auto";
    o->n_paths = 1;
    o->device = mt_device_available(MT_DEVICE_CUDA) ? "cuda" : "cpu";
    for (int i = 0; i < argc; i++) {
        const char *a = argv[i];
        if (!strcmp(a, "-h") || !strcmp(a, "--help")) {
            usage(stdout);
            return -1;
        }
        if (!strcmp(a, "-v") || !strcmp(a, "--verbose")) {
            o->verbose = 1;
            continue;
        }
        if (a[0] != '-' || !a[1]) {
            if (o->model) return usage_error(a, NULL, "unexpected argument (one MODEL only)");
            o->model = a;
            continue;
        }
        static const char *const valued[] = {
            "-p", "--n-prompt", "-n",        "--n-gen",  "-r", "--repetitions", "-t", "--threads",
            "-o", "--output",   "--backend", "--device", "-d", "--n-depth",     NULL};
        int known = 0;
        for (int k = 0; valued[k]; k++) known |= !strcmp(a, valued[k]);
        if (!known) return usage_error(a, NULL, "unknown flag (see metallic bench --help)");
        if (i + 1 >= argc) return usage_error(a, NULL, "missing value");
        const char *v = argv[++i];
        int rc = 0;
        if (!strcmp(a, "-p") || !strcmp(a, "--n-prompt")) {
            rc = parse_list(a, v, 0, &o->prompts);
        } else if (!strcmp(a, "-n") || !strcmp(a, "--n-gen")) {
            rc = parse_list(a, v, 0, &o->gens);
        } else if (!strcmp(a, "-d") || !strcmp(a, "--n-depth")) {
            rc = parse_list(a, v, 0, &o->depths);
        } else if (!strcmp(a, "-t") || !strcmp(a, "--threads")) {
            rc = parse_list(a, v, 1, &o->threads);
            for (int k = 0; !rc && k < o->threads.n; k++)
                if (o->threads.v[k] > 1024) rc = usage_error(a, v, "at most 1024 threads");
        } else if (!strcmp(a, "-r") || !strcmp(a, "--repetitions")) {
            int_list l;
            rc = parse_list(a, v, 1, &l);
            if (!rc && (l.n != 1 || l.v[0] > 1000))
                rc = usage_error(a, v, "expected one integer in [1, 1000]");
            if (!rc) o->reps = l.v[0];
        } else if (!strcmp(a, "-o") || !strcmp(a, "--output")) {
            if (!strcmp(v, "md"))
                o->fmt = OUT_MD;
            else if (!strcmp(v, "json"))
                o->fmt = OUT_JSON;
            else if (!strcmp(v, "csv"))
                o->fmt = OUT_CSV;
            else if (!strcmp(v, "jsonl"))
                o->fmt = OUT_JSONL;
            else
                rc = usage_error(a, v, "expected md, json, csv or jsonl");
        } else if (!strcmp(a, "--backend")) {
            // one path, or two separated by a comma (a paired comparison)
            if (strlen(v) >= sizeof o->backend_arg) return usage_error(a, v, "too long");
            snprintf(o->backend_arg, sizeof o->backend_arg, "%s", v);
            char *comma = strchr(o->backend_arg, ',');
            if (comma) *comma = 0;
            o->paths[0] = o->backend_arg;
            o->paths[1] = comma ? comma + 1 : NULL;
            o->n_paths = comma ? 2 : 1;
            for (int k = 0; k < o->n_paths && !rc; k++)
                if (strcmp(o->paths[k], "legacy") && strcmp(o->paths[k], "graph") &&
                    strcmp(o->paths[k], "auto"))
                    rc = usage_error(a, v, "expected legacy, graph or auto, or two of them as A,B");
            if (!rc && o->n_paths == 2 && !strcmp(o->paths[0], o->paths[1]))
                rc = usage_error(a, v, "the two paths of a paired comparison must differ");
            o->backend = o->paths[0];
        } else { // --device
            mt_device_kind d;
            if (mt_device_parse(v, &d) != MT_OK)
                rc = usage_error(a, v, "expected cpu or cuda");
            else if (!mt_device_available(d))
                rc = usage_error(a, v, "no usable CUDA GPU in this build or on this machine");
            o->device = mt_device_kind_name(d);
        }
        if (rc) return rc;
    }
    if (!o->model) return usage_error("MODEL", NULL, "missing (usage: metallic bench MODEL [options])");
    int tests = 0;
    for (int k = 0; k < o->prompts.n; k++) tests += o->prompts.v[k] > 0;
    for (int k = 0; k < o->gens.n; k++) tests += o->gens.v[k] > 0;
    if (!tests) return usage_error("-p/-n", NULL, "no test left (every size is 0)");
    return 0;
}

static double now_ns(void) {
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (double)ts.tv_sec * 1e9 + (double)ts.tv_nsec;
}

static void cpu_name(char *out, size_t cap) {
    snprintf(out, cap, "unknown");
    FILE *f = fopen("/proc/cpuinfo", "r");
    if (!f) return;
    char line[512];
    while (fgets(line, sizeof line, f)) {
        if (strncmp(line, "model name", 10)) continue;
        const char *c = strchr(line, ':');
        if (!c) break;
        c++;
        while (*c == ' ' || *c == '\t') c++;
        size_t n = strcspn(c, "\r\n");
        snprintf(out, cap, "%.*s", (int)n, c);
        break;
    }
    fclose(f);
}

static void add_tensor(const mt_tensor *t, uint64_t *params, uint64_t *by_dtype) {
    if (!t->data) return;
    *params += (uint64_t)mt_tensor_nelem(t);
    if (t->ndim >= 2 && (int)t->dtype >= 0 && t->dtype < MT_DTYPE_END)
        by_dtype[t->dtype] += mt_tensor_nbytes(t);
}

static void describe_model(const mt_model *m, model_info *mi) {
    const mt_qwen2_config *c = mt_model_config(m);
    const mt_qwen2_weights *w = mt_model_weights(m);
    uint64_t by_dtype[MT_DTYPE_END] = {0};
    mi->n_params = 0;
    add_tensor(&w->tok_embd, &mi->n_params, by_dtype);
    add_tensor(&w->out_norm, &mi->n_params, by_dtype);
    if (!c->tied_output) add_tensor(&w->output, &mi->n_params, by_dtype);
    for (int l = 0; l < c->n_layer; l++) {
        const mt_qwen2_layer *L = &w->layers[l];
        const mt_tensor *ts[] = {&L->attn_norm, &L->wq, &L->wk,       &L->wv,     &L->bq,   &L->bk,
                                 &L->bv,        &L->wo, &L->ffn_norm, &L->w_gate, &L->w_up, &L->w_down};
        for (size_t i = 0; i < sizeof ts / sizeof ts[0]; i++) add_tensor(ts[i], &mi->n_params, by_dtype);
    }
    int top = 0, kinds = 0;
    for (int d = 0; d < MT_DTYPE_END; d++) {
        if (!by_dtype[d]) continue;
        kinds++;
        if (by_dtype[d] > by_dtype[top]) top = d;
    }
    char dt[32] = "?";
    const char *name = mt_dtype_name(top);
    if (name) {
        snprintf(dt, sizeof dt, "%s", name);
        for (char *p = dt; *p; p++)
            if (*p >= 'a' && *p <= 'z') *p = (char)(*p - 'a' + 'A');
    }
    double p = (double)mi->n_params;
    char label[32];
    if (p >= 1e9)
        snprintf(label, sizeof label, "%.1fB", p / 1e9);
    else if (p >= 1e6)
        snprintf(label, sizeof label, "%.0fM", p / 1e6);
    else
        snprintf(label, sizeof label, "%.0fK", p / 1e3);
    snprintf(mi->type, sizeof mi->type, "qwen2 %s %s%s", label, dt, kinds > 1 ? " (mixed)" : "");
    mi->size = mt_model_weight_bytes(m);
    // A decode step reads every matrix once, but only one row of an untied token embedding.
    double embd = (double)mt_tensor_nbytes(&w->tok_embd);
    double row = c->n_vocab > 0 ? embd / c->n_vocab : 0;
    mi->decode_weight_bytes = (double)mi->size - (c->tied_output ? 0 : embd - row);
    mi->kv_bytes_per_pos = 2.0 * c->n_layer * c->n_head_kv * c->head_dim * sizeof(float);
    cpu_name(mi->cpu, sizeof mi->cpu);
}

static void fill_stats(bench_row *r, int reps) {
    double s = 0, st = 0;
    for (int i = 0; i < reps; i++) {
        s += r->samples_ns[i];
        st += (r->n_prompt + r->n_gen) * 1e9 / r->samples_ns[i];
    }
    r->avg_ns = s / reps;
    r->avg_ts = st / reps;
    double v = 0, vt = 0;
    for (int i = 0; i < reps && reps > 1; i++) {
        double ts = (r->n_prompt + r->n_gen) * 1e9 / r->samples_ns[i];
        v += (r->samples_ns[i] - r->avg_ns) * (r->samples_ns[i] - r->avg_ns);
        vt += (ts - r->avg_ts) * (ts - r->avg_ts);
    }
    r->sd_ns = reps > 1 ? sqrt(v / (reps - 1)) : 0;
    r->sd_ts = reps > 1 ? sqrt(vt / (reps - 1)) : 0;
}

typedef struct {
    mt_session *s;
    const int32_t *tok, *pos, *seq;
    int n_batch;
} runner;

// Untimed prefill of positions [0, n) in batches of at most R->n_batch tokens.
static int fill_cache(runner *R, int n) {
    for (int at = 0; at < n; at += R->n_batch) {
        int k = n - at < R->n_batch ? n - at : R->n_batch;
        mt_batch b = {k, R->tok + at, R->pos + at, R->seq, NULL};
        if (mt_session_decode(R->s, &b) != MT_OK) return -1;
    }
    return 0;
}

// One timed run: pp (n_prompt > 0) or tg, after `depth` cached positions. Returns the nanoseconds of the
// timed part, < 0 on error.
static double run_once(runner *R, int n_prompt, int n_gen, int depth) {
    mt_session_seq_clear(R->s, 0);
    if (n_prompt > 0) {
        if (fill_cache(R, depth) < 0) return -1;
        mt_batch b = {n_prompt, R->tok + depth, R->pos + depth, R->seq, NULL};
        double t0 = now_ns();
        if (mt_session_decode(R->s, &b) != MT_OK) return -1;
        return now_ns() - t0;
    }
    int start = depth > TG_PROMPT ? depth : TG_PROMPT;
    if (fill_cache(R, start) < 0) return -1;
    double t0 = now_ns();
    for (int i = 0; i < n_gen; i++) {
        mt_batch b = {1, R->tok + start + i, R->pos + start + i, R->seq, NULL};
        if (mt_session_decode(R->s, &b) != MT_OK) return -1;
    }
    return now_ns() - t0;
}

static void fmt_size(char *out, size_t cap, uint64_t bytes) {
    if (bytes >= (1ull << 30))
        snprintf(out, cap, "%.2f GiB", (double)bytes / (1ull << 30));
    else
        snprintf(out, cap, "%.2f MiB", (double)bytes / (1ull << 20));
}

static void fmt_params(char *out, size_t cap, uint64_t n) {
    if (n >= 1000000000ull)
        snprintf(out, cap, "%.2f B", (double)n / 1e9);
    else
        snprintf(out, cap, "%.2f M", (double)n / 1e6);
}

static const char *test_name(const bench_row *r, char *buf, size_t cap) {
    int k = snprintf(buf, cap, r->n_prompt ? "pp%d" : "tg%d", r->n_prompt ? r->n_prompt : r->n_gen);
    if (r->depth > 0 && k > 0 && (size_t)k < cap) snprintf(buf + k, cap - (size_t)k, " @ d%d", r->depth);
    return buf;
}

// The path the registry resolved for the ops of a forward pass: "legacy", "graph", or "mixed".
static const char *path_name(const bench_opts *o) {
    (void)o;
    const mt_registry *r = mt_registry_global();
    int graph = 0;
    for (int op = 0; op < MT_OP_COUNT; op++) graph += mt_registry_path(r, (mt_op_kind)op) == MT_PATH_GRAPH;
    return graph == 0 ? "legacy" : graph == MT_OP_COUNT ? "graph" : "mixed";
}

static void print_md_header(const bench_opts *o) {
    printf("| model | size | params | backend | threads | test | t/s |%s\n", o->verbose ? " GB/s |" : "");
    printf("| --- | ---: | ---: | --- | ---: | ---: | ---: |%s\n", o->verbose ? " ---: |" : "");
    fflush(stdout);
}

static void print_md_row(const bench_opts *o, const model_info *mi, const bench_row *r) {
    char size[32], params[32], test[32];
    fmt_size(size, sizeof size, mi->size);
    fmt_params(params, sizeof params, mi->n_params);
    printf("| %s | %s | %s | %s/%s | %d | %s | %.2f ± %.2f |", mi->type, size, params,
           is_cuda(o) ? "CUDA" : "CPU", path_name(o), r->threads, test_name(r, test, sizeof test), r->avg_ts,
           r->sd_ts);
    if (o->verbose) {
        if (r->n_gen)
            printf(" %.2f |", r->bytes_per_token * r->avg_ts / 1e9);
        else
            printf(" |");
    }
    printf("\n");
    if (r->pair_ratio > 0) {
        // the paired ratio: median [min, max] over the repetitions of (this path / the first path)
        printf("| %s | %s | %s | %s/%s | %d | %s | x%.3f [%.3f, %.3f] |", mi->type, size, params, r->path,
               r->pair_base, r->threads, test, r->pair_ratio, r->pair_min, r->pair_max);
        printf("%s\n", o->verbose ? " |" : "");
    }
    fflush(stdout);
}

static cJSON *row_json(const bench_opts *o, const model_info *mi, const bench_row *r) {
    cJSON *j = cJSON_CreateObject();
    cJSON_AddStringToObject(j, "build_commit", MT_BUILD_COMMIT);
    cJSON_AddNumberToObject(j, "build_number", 0);
    cJSON_AddStringToObject(j, "cpu_info", mi->cpu);
    cJSON_AddStringToObject(j, "gpu_info", is_cuda(o) ? mt_device_description(MT_DEVICE_CUDA) : "");
    cJSON_AddStringToObject(j, "backends", is_cuda(o) ? "CUDA" : "CPU");
    cJSON_AddStringToObject(j, "backend_path", path_name(o));
    cJSON_AddStringToObject(j, "device", o->device);
    cJSON_AddStringToObject(j, "model_filename", o->model);
    cJSON_AddStringToObject(j, "model_type", mi->type);
    cJSON_AddNumberToObject(j, "model_size", (double)mi->size);
    cJSON_AddNumberToObject(j, "model_n_params", (double)mi->n_params);
    cJSON_AddNumberToObject(j, "n_batch", r->n_prompt ? r->n_prompt : 1);
    cJSON_AddNumberToObject(j, "n_threads", r->threads);
    cJSON_AddNumberToObject(j, "n_prompt", r->n_prompt);
    cJSON_AddNumberToObject(j, "n_gen", r->n_gen);
    cJSON_AddNumberToObject(j, "n_depth", r->depth);
    cJSON_AddStringToObject(j, "test_time", r->test_time);
    cJSON_AddNumberToObject(j, "avg_ns", llround(r->avg_ns));
    cJSON_AddNumberToObject(j, "stddev_ns", llround(r->sd_ns));
    cJSON_AddNumberToObject(j, "avg_ts", r->avg_ts);
    cJSON_AddNumberToObject(j, "stddev_ts", r->sd_ts);
    cJSON *ns = cJSON_AddArrayToObject(j, "samples_ns");
    cJSON *ts = cJSON_AddArrayToObject(j, "samples_ts");
    for (int i = 0; i < o->reps; i++) {
        cJSON_AddItemToArray(ns, cJSON_CreateNumber((double)llround(r->samples_ns[i])));
        cJSON_AddItemToArray(ts, cJSON_CreateNumber((r->n_prompt + r->n_gen) * 1e9 / r->samples_ns[i]));
    }
    // Not in llama-bench: what a decode step reads, and the resulting bandwidth (0 for pp rows).
    cJSON_AddNumberToObject(j, "bytes_per_token", r->n_gen ? llround(r->bytes_per_token) : 0);
    cJSON_AddNumberToObject(j, "avg_gbs", r->n_gen ? r->bytes_per_token * r->avg_ts / 1e9 : 0);
    if (r->pair_ratio > 0) {
        cJSON_AddStringToObject(j, "pair_base", r->pair_base);
        cJSON_AddNumberToObject(j, "pair_ratio", r->pair_ratio);
        cJSON_AddNumberToObject(j, "pair_ratio_min", r->pair_min);
        cJSON_AddNumberToObject(j, "pair_ratio_max", r->pair_max);
    }
    return j;
}

static void csv_str(const char *s) {
    putchar('"');
    for (; *s; s++) {
        if (*s == '"') putchar('"');
        putchar(*s);
    }
    putchar('"');
}

static void print_csv_header(void) {
    printf(
        "build_commit,build_number,cpu_info,gpu_info,backends,backend_path,device,model_filename,model_type,"
        "model_size,model_n_params,n_batch,n_threads,n_prompt,n_gen,test_time,avg_ns,stddev_ns,avg_ts,"
        "stddev_ts,samples_ns,samples_ts,bytes_per_token,avg_gbs\n");
}

static void print_csv_row(const bench_opts *o, const model_info *mi, const bench_row *r) {
    csv_str(MT_BUILD_COMMIT);
    printf(",0,");
    csv_str(mi->cpu);
    putchar(',');
    csv_str(is_cuda(o) ? mt_device_description(MT_DEVICE_CUDA) : "");
    printf(",\"%s\",", is_cuda(o) ? "CUDA" : "CPU");
    csv_str(path_name(o));
    putchar(',');
    csv_str(o->device);
    putchar(',');
    csv_str(o->model);
    putchar(',');
    csv_str(mi->type);
    printf(",%llu,%llu,%d,%d,%d,%d,", (unsigned long long)mi->size, (unsigned long long)mi->n_params,
           r->n_prompt ? r->n_prompt : 1, r->threads, r->n_prompt, r->n_gen);
    csv_str(r->test_time);
    printf(",%lld,%lld,%.6f,%.6f,\"", llround(r->avg_ns), llround(r->sd_ns), r->avg_ts, r->sd_ts);
    for (int i = 0; i < o->reps; i++) printf("%s%lld", i ? " " : "", llround(r->samples_ns[i]));
    printf("\",\"");
    for (int i = 0; i < o->reps; i++)
        printf("%s%.6f", i ? " " : "", (r->n_prompt + r->n_gen) * 1e9 / r->samples_ns[i]);
    printf("\",%lld,%.6f\n", r->n_gen ? llround(r->bytes_per_token) : 0,
           r->n_gen ? r->bytes_per_token * r->avg_ts / 1e9 : 0.0);
    fflush(stdout);
}

static void emit_row(const bench_opts *o, const model_info *mi, const bench_row *r, cJSON *all) {
    if (o->fmt == OUT_MD) {
        print_md_row(o, mi, r);
    } else if (o->fmt == OUT_CSV) {
        print_csv_row(o, mi, r);
    } else {
        cJSON *j = row_json(o, mi, r);
        if (o->fmt == OUT_JSONL) {
            char *s = cJSON_PrintUnformatted(j);
            if (s) printf("%s\n", s);
            fflush(stdout);
            free(s);
            cJSON_Delete(j);
        } else {
            cJSON_AddItemToArray(all, j);
        }
    }
}

static int runtime_error(const char *what) {
    const char *msg = mt_last_error();
    fprintf(stderr, "metallic bench: %s: %s\n", what, msg && *msg ? msg : "failed");
    return 1;
}

static int cmp_double(const void *a, const void *b) {
    double x = *(const double *)a, y = *(const double *)b;
    return x < y ? -1 : x > y;
}

// Points the registry (and the runner) at path k of the options.
static int use_path(const bench_opts *o, runner *R, mt_session *const *S, int k) {
    mt_registry_opts ro = {.backend = o->paths[k], .quiet = true};
    if (mt_registry_configure(&ro) != MT_OK) return runtime_error("registry");
    R->s = S[k];
    return 0;
}

// Runs every test for one thread count; rows are emitted as they finish. With two paths each has its
// own session (the CUDA graph flag is a session option) and every repetition runs both back to back,
// the order alternating, so a burst of load from other processes lands on both members of a pair.
static int bench_threads(const bench_opts *o, mt_model *m, const model_info *mi, int threads, int n_ctx,
                         int n_batch, runner *R, double *samples, cJSON *all) {
    mt_session_opts so = mt_session_default_opts();
    so.n_ctx = n_ctx;
    so.n_seq = 1;
    so.n_threads = threads;
    so.n_batch = n_batch;
    so.device = is_cuda(o) ? MT_DEVICE_CUDA : MT_DEVICE_CPU;
    mt_session *S[2] = {NULL, NULL};
    int rc = 0, np = o->n_paths;
    for (int k = 0; k < np && !rc; k++) {
        so.cuda_graphs = strcmp(o->paths[k], "legacy") != 0; // the graph path replays fused launches
        if (mt_session_create(m, &so, &S[k]) != MT_OK) rc = runtime_error("session");
    }
    for (int pass = 0; pass < 2 * o->depths.n && !rc; pass++) {
        const int_list *l = pass % 2 ? &o->gens : &o->prompts;
        int depth = o->depths.v[pass / 2];
        for (int t = 0; t < l->n && !rc; t++) {
            int n = l->v[t];
            if (n <= 0) continue;
            bench_row r[2];
            char name[32];
            for (int k = 0; k < np; k++) {
                r[k] = (bench_row){.n_prompt = pass % 2 ? 0 : n,
                                   .n_gen = pass % 2 ? n : 0,
                                   .threads = threads,
                                   .depth = depth,
                                   .path = o->paths[k]};
                r[k].samples_ns = samples + (size_t)k * o->reps;
                time_t now = time(NULL);
                struct tm tmv;
                gmtime_r(&now, &tmv);
                strftime(r[k].test_time, sizeof r[k].test_time, "%Y-%m-%dT%H:%M:%SZ", &tmv);
                test_name(&r[k], name, sizeof name);
                if (o->verbose)
                    fprintf(stderr, "bench: %s, %d threads, %s: warm-up\n", name, threads, o->paths[k]);
                if (np > 1 && (rc = use_path(o, R, S, k)) != 0) break;
                R->s = S[k];
                if (run_once(R, r[k].n_prompt, r[k].n_gen, r[k].depth) < 0) rc = runtime_error(name);
            }
            for (int i = 0; i < o->reps && !rc; i++) {
                for (int j = 0; j < np && !rc; j++) {
                    int k = (i + j) % np; // alternate which path goes first
                    if (np > 1 && (rc = use_path(o, R, S, k)) != 0) break;
                    R->s = S[k];
                    double ns = run_once(R, r[k].n_prompt, r[k].n_gen, r[k].depth);
                    if (ns < 0) {
                        rc = runtime_error(name);
                        break;
                    }
                    r[k].samples_ns[i] = ns > 1 ? ns : 1;
                    if (o->verbose)
                        fprintf(stderr, "bench: %s run %d, %s: %.3f ms\n", name, i + 1, o->paths[k],
                                ns / 1e6);
                }
            }
            if (rc) break;
            if (np > 1) { // t/s ratio = inverse time ratio, pair by pair
                double *q = samples + (size_t)2 * o->reps;
                for (int i = 0; i < o->reps; i++) q[i] = r[0].samples_ns[i] / r[1].samples_ns[i];
                qsort(q, (size_t)o->reps, sizeof *q, cmp_double);
                int h = o->reps / 2;
                r[1].pair_ratio = o->reps % 2 ? q[h] : 0.5 * (q[h - 1] + q[h]);
                r[1].pair_min = q[0], r[1].pair_max = q[o->reps - 1];
                r[1].pair_base = o->paths[0];
            }
            for (int k = 0; k < np && !rc; k++) {
                fill_stats(&r[k], o->reps);
                if (r[k].n_gen) {
                    // step i attends over start + i + 1 cached positions
                    int start = r[k].depth > TG_PROMPT ? r[k].depth : TG_PROMPT;
                    double kv = mi->kv_bytes_per_pos * (start + 1 + (r[k].n_gen - 1) / 2.0);
                    r[k].bytes_per_token = mi->decode_weight_bytes + kv;
                }
                if (np > 1) rc = use_path(o, R, S, k); // the backend column reads the registry
                if (!rc) emit_row(o, mi, &r[k], all);
            }
        }
    }
    for (int k = 0; k < np; k++) mt_session_free(S[k]);
    R->s = NULL;
    return rc;
}

int mt_cmd_bench(int argc, char **argv) {
    bench_opts o;
    int rc = parse_args(argc, argv, &o);
    if (rc) return rc < 0 ? 0 : rc;
    mt_registry_opts ro = {.backend = o.backend, .quiet = true};
    if (mt_registry_configure(&ro) != MT_OK) {
        fprintf(stderr, "metallic bench: %s\n", mt_last_error());
        return 2;
    }

    mt_model *m = NULL;
    if (mt_model_load(o.model, &m) != MT_OK) {
        const char *msg = mt_last_error();
        if (msg && strstr(msg, o.model))
            fprintf(stderr, "metallic bench: %s\n", msg);
        else
            fprintf(stderr, "metallic bench: %s: %s\n", o.model, msg && *msg ? msg : "cannot load the model");
        return 1;
    }
    model_info mi;
    describe_model(m, &mi);
    const mt_qwen2_config *c = mt_model_config(m);

    int max_p = 0, max_g = 0;
    for (int k = 0; k < o.prompts.n; k++)
        if (o.prompts.v[k] > max_p) max_p = o.prompts.v[k];
    for (int k = 0; k < o.gens.n; k++)
        if (o.gens.v[k] > max_g) max_g = o.gens.v[k];
    int max_d = 0;
    for (int k = 0; k < o.depths.n; k++)
        if (o.depths.v[k] > max_d) max_d = o.depths.v[k];
    int tg_start = max_d > TG_PROMPT ? max_d : TG_PROMPT;
    int n_tok = max_d + max_p > tg_start + max_g ? max_d + max_p : tg_start + max_g;
    int n_batch = max_p > TG_PROMPT ? max_p : TG_PROMPT;
    if (n_batch < 512 && max_d > n_batch) n_batch = max_d < 512 ? max_d : 512; // depth fills in batches
    if (n_tok > c->n_ctx_train) {
        fprintf(stderr, "metallic bench: -p/-n/-d: %d positions needed, the model's context is %d\n", n_tok,
                c->n_ctx_train);
        mt_model_free(m);
        return 2;
    }

    int32_t *tok = malloc(sizeof *tok * (size_t)n_tok), *pos = malloc(sizeof *pos * (size_t)n_tok);
    int32_t *seq = calloc((size_t)n_tok, sizeof *seq);
    double *samples = malloc(sizeof *samples * 3 * (size_t)o.reps); // per path, then the pair ratios
    cJSON *all = o.fmt == OUT_JSON ? cJSON_CreateArray() : NULL;
    if (!tok || !pos || !seq || !samples || (o.fmt == OUT_JSON && !all)) {
        fprintf(stderr, "metallic bench: out of memory for %d tokens\n", n_tok);
        rc = 1;
        goto done;
    }
    // Random ids from the whole vocabulary (fixed seed): zeros or one repeated id would be unrepresentative.
    uint64_t x = 0x9e3779b97f4a7c15ull;
    for (int i = 0; i < n_tok; i++) {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        tok[i] = (int32_t)((x >> 11) % (uint64_t)c->n_vocab);
        pos[i] = i;
    }

    if (o.fmt == OUT_MD) print_md_header(&o);
    if (o.fmt == OUT_CSV) print_csv_header();
    runner R = {NULL, tok, pos, seq, n_batch};
    for (int k = 0; k < o.threads.n && !rc; k++) {
        int t = o.threads.v[k] > 0 ? o.threads.v[k] : mt_cpu_count();
        rc = bench_threads(&o, m, &mi, t, n_tok, n_batch, &R, samples, all);
    }
    if (o.fmt == OUT_JSON) {
        char *s = cJSON_Print(all);
        if (s) printf("%s\n", s);
        free(s);
    } else if (o.fmt == OUT_MD && !rc) {
        printf("\nbuild: %s, cpu: %s\n", MT_BUILD_COMMIT, mi.cpu);
    }
done:
    cJSON_Delete(all);
    free(tok);
    free(pos);
    free(seq);
    free(samples);
    mt_model_free(m);
    return rc;
}
