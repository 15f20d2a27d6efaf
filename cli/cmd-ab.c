// `metallic ab MODEL PROMPT`: the same prompt through `--backend legacy` and `--backend graph` (same seed,
// same token limit, greedy unless --temperature is given), each in latency mode with its own JSONL file,
// then per-block and per-op decode time side by side, logits syncs, KV bytes copied and tok/s.
//
// Each run is a child `metallic run ... --output-format json` with METALLIC_METRICS_JSONL_PATH and
// METALLIC_ENABLE_PROFILING=1 set, so the two runs share nothing (caches, registry, sink) but the files.
#include "cmd-ab.h"

#include <cjson/cJSON.h>
#include <errno.h>
#include <fcntl.h>
#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/wait.h>
#include <unistd.h>

#define MAX_KEYS 256

typedef struct agg {
    char keys[MAX_KEYS][64];
    double us[MAX_KEYS];
    int n;
} agg;

typedef struct run_stats {
    const char *backend;
    char jsonl[512], log[512];
    double gen_tok_s, prompt_tok_s;
    int n_tokens, n_prompt;
    long long steps, decode_steps, logits_syncs, kv_bytes_copied, events, bad_lines;
    double decode_us; // forward_step_total summed over decode steps
    agg blocks, ops;
    char chosen[512]; // op=backend pairs from KernelBackendSelected
} run_stats;

static void agg_add(agg *a, const char *key, double us) {
    for (int i = 0; i < a->n; i++)
        if (!strcmp(a->keys[i], key)) {
            a->us[i] += us;
            return;
        }
    if (a->n == MAX_KEYS) return;
    snprintf(a->keys[a->n], sizeof a->keys[0], "%s", key);
    a->us[a->n++] = us;
}

static double agg_get(const agg *a, const char *key, int *found) {
    for (int i = 0; i < a->n; i++)
        if (!strcmp(a->keys[i], key)) {
            *found = 1;
            return a->us[i];
        }
    *found = 0;
    return 0;
}

static int usage(const char *msg, const char *v) {
    fprintf(stderr,
            "metallic: ab: %s%s%s (usage: metallic ab MODEL PROMPT [--max-tokens N] [--seed S] "
            "[--temperature T] [--threads N] [--ctx N] [--out DIR])\n",
            msg, v ? " " : "", v ? v : "");
    return 2;
}

static bool is_uint(const char *s) {
    if (!*s) return false;
    for (; *s; s++)
        if (*s < '0' || *s > '9') return false;
    return true;
}

// Runs one child and fills the stdout JSON fields of st. Returns 0 or the exit code to report.
static int run_child(const char *self, char *const *argv, run_stats *st) {
    int out[2];
    if (pipe(out) != 0) return fprintf(stderr, "metallic: ab: pipe: %s\n", strerror(errno)), 1;
    pid_t pid = fork();
    if (pid < 0) return fprintf(stderr, "metallic: ab: fork: %s\n", strerror(errno)), 1;
    if (pid == 0) {
        int log = open(st->log, O_WRONLY | O_CREAT | O_TRUNC, 0644);
        if (log >= 0) dup2(log, STDERR_FILENO);
        dup2(out[1], STDOUT_FILENO);
        close(out[0]);
        close(out[1]);
        // the flag decides the path: no inherited backend variables
        unsetenv("METALLIC_BACKEND");
        unsetenv("METALLIC_FORCE_SDPA_BACKEND");
        unsetenv("METALLIC_OUTPUT_FORMAT");
        setenv("METALLIC_METRICS_JSONL_PATH", st->jsonl, 1);
        setenv("METALLIC_ENABLE_PROFILING", "1", 1);
        execv(self, argv);
        _exit(127);
    }
    close(out[1]);
    size_t cap = 1 << 16, len = 0;
    char *buf = malloc(cap);
    for (;;) {
        if (buf && len + 4096 > cap) {
            char *nb = realloc(buf, cap * 2);
            if (!nb) free(buf);
            buf = nb;
            cap *= 2;
        }
        if (!buf) break;
        ssize_t n = read(out[0], buf + len, cap - len - 1);
        if (n < 0 && errno == EINTR) continue;
        if (n <= 0) break;
        len += (size_t)n;
    }
    close(out[0]);
    int status = 0;
    while (waitpid(pid, &status, 0) < 0 && errno == EINTR) {
    }
    if (!buf) return fprintf(stderr, "metallic: ab: out of memory reading the %s run\n", st->backend), 1;
    buf[len] = 0;
    if (!WIFEXITED(status) || WEXITSTATUS(status) != 0) {
        fprintf(stderr, "metallic: ab: the %s run failed (exit %d); its messages are in %s\n", st->backend,
                WIFEXITED(status) ? WEXITSTATUS(status) : 128 + WTERMSIG(status), st->log);
        free(buf);
        return 1;
    }
    cJSON *j = cJSON_Parse(buf);
    free(buf);
    if (!j) return fprintf(stderr, "metallic: ab: the %s run printed no JSON result\n", st->backend), 1;
    cJSON *t = cJSON_GetObjectItem(j, "timings");
    st->gen_tok_s = cJSON_GetNumberValue(cJSON_GetObjectItem(t, "gen_tok_s"));
    st->prompt_tok_s = cJSON_GetNumberValue(cJSON_GetObjectItem(t, "prompt_tok_s"));
    st->n_tokens = cJSON_GetArraySize(cJSON_GetObjectItem(j, "tokens"));
    st->n_prompt = cJSON_GetArraySize(cJSON_GetObjectItem(j, "prompt_tokens"));
    cJSON_Delete(j);
    return 0;
}

// "generation_loop/forward_step/block_3/sdpa" -> block "block_3", op "sdpa".
static void split_op(const char *path, char *block, size_t bcap, char *op, size_t ocap) {
    const char *p = path + strlen("generation_loop/forward_step/");
    block[0] = 0;
    if (!strncmp(p, "block_", 6)) {
        const char *slash = strchr(p, '/');
        if (slash) {
            snprintf(block, bcap, "%.*s", (int)(slash - p), p);
            p = slash + 1;
        }
    }
    snprintf(op, ocap, "%s", p);
}

static int read_jsonl(run_stats *st) {
    FILE *f = fopen(st->jsonl, "r");
    if (!f) return fprintf(stderr, "metallic: ab: cannot read %s: %s\n", st->jsonl, strerror(errno)), 1;
    char *line = NULL;
    size_t cap = 0;
    while (getline(&line, &cap, f) > 0) {
        cJSON *j = cJSON_Parse(line);
        if (!j) {
            st->bad_lines++;
            continue;
        }
        st->events++;
        const char *ev = cJSON_GetStringValue(cJSON_GetObjectItem(j, "event"));
        if (!ev) ev = "";
        if (!strcmp(ev, "GpuOpCompleted")) {
            const char *path = cJSON_GetStringValue(cJSON_GetObjectItem(j, "op_name"));
            double us = cJSON_GetNumberValue(cJSON_GetObjectItem(j, "duration_us"));
            if (path && !strncmp(path, "generation_loop/forward_step/", 29)) {
                char block[64], op[128];
                split_op(path, block, sizeof block, op, sizeof op);
                agg_add(&st->ops, op, us);
                if (block[0]) agg_add(&st->blocks, block, us);
            }
        } else if (!strcmp(ev, "InternalKernelCompleted")) {
            const char *path = cJSON_GetStringValue(cJSON_GetObjectItem(j, "path"));
            if (path && !strcmp(path, "generation_loop/forward_step")) {
                st->decode_us += cJSON_GetNumberValue(cJSON_GetObjectItem(j, "duration_us"));
                st->decode_steps++;
            }
        } else if (!strcmp(ev, "ForwardStep")) {
            st->steps++;
            st->logits_syncs += (long long)cJSON_GetNumberValue(cJSON_GetObjectItem(j, "logits_syncs"));
            st->kv_bytes_copied += (long long)cJSON_GetNumberValue(cJSON_GetObjectItem(j, "kv_bytes_copied"));
        } else if (!strcmp(ev, "KernelBackendSelected")) {
            const char *op = cJSON_GetStringValue(cJSON_GetObjectItem(j, "op"));
            const char *be = cJSON_GetStringValue(cJSON_GetObjectItem(j, "backend"));
            char item[96];
            snprintf(item, sizeof item, "%s=%s", op ? op : "?", be ? be : "?");
            if (!strstr(st->chosen, item) && strlen(st->chosen) + strlen(item) + 2 < sizeof st->chosen) {
                if (st->chosen[0]) strcat(st->chosen, " ");
                strcat(st->chosen, item);
            }
        }
        cJSON_Delete(j);
    }
    free(line);
    fclose(f);
    return 0;
}

static void row(const char *name, double a, double b, const char *unit) {
    char ratio[32] = "-";
    if (a > 0 && b > 0) snprintf(ratio, sizeof ratio, "%.2fx", b / a);
    printf("  %-26s %12.3f %12.3f %10s  %s\n", name, a, b, ratio, unit);
}

// Per-step average of each key present in either run, in the order the legacy run (then graph) saw them.
static void side_by_side(const char *title, const agg *a, long long sa, const agg *b, long long sb) {
    printf("\n%s (ms per decode step)\n", title);
    printf("  %-26s %12s %12s %10s\n", "", "legacy", "graph", "graph/leg");
    for (int pass = 0; pass < 2; pass++) {
        const agg *x = pass ? b : a, *y = pass ? a : b;
        for (int i = 0; i < x->n; i++) {
            int found;
            double other = agg_get(y, x->keys[i], &found);
            if (pass && found) continue; // already printed in the first pass
            double va = pass ? other : x->us[i], vb = pass ? x->us[i] : other;
            row(x->keys[i], sa ? va / 1e3 / (double)sa : 0, sb ? vb / 1e3 / (double)sb : 0, "");
        }
    }
}

int mt_cmd_ab(int argc, char **argv) {
    const char *pos[2] = {NULL, NULL}, *max_tokens = "64", *seed = NULL, *temperature = "0", *threads = NULL,
               *ctx = NULL, *dir = getenv("TMPDIR");
    int n_pos = 0;
    for (int i = 0; i < argc; i++) {
        const char *a = argv[i];
        const char **dst = !strcmp(a, "--max-tokens")    ? &max_tokens
                           : !strcmp(a, "--seed")        ? &seed
                           : !strcmp(a, "--temperature") ? &temperature
                           : !strcmp(a, "--threads")     ? &threads
                           : !strcmp(a, "--ctx")         ? &ctx
                           : !strcmp(a, "--out")         ? &dir
                                                         : NULL;
        if (dst) {
            if (i + 1 == argc) return usage("missing value for", a);
            *dst = argv[++i];
        } else if (a[0] == '-' && a[1]) {
            return usage("unknown flag", a);
        } else if (n_pos < 2) {
            pos[n_pos++] = a;
        } else {
            return usage("unexpected argument", a);
        }
    }
    if (n_pos < 2) return usage("needs a model and a prompt", NULL);
    if (!is_uint(max_tokens) || !strcmp(max_tokens, "0"))
        return usage("--max-tokens must be > 0, got", max_tokens);
    if (seed && !is_uint(seed)) return usage("--seed must be an unsigned integer, got", seed);
    if (!dir || !*dir) dir = "/tmp";

    char self[4096];
    ssize_t n = readlink("/proc/self/exe", self, sizeof self - 1);
    if (n <= 0) return fprintf(stderr, "metallic: ab: cannot find this program: %s\n", strerror(errno)), 1;
    self[n] = 0;

    static run_stats runs[2];
    const char *paths[2] = {"legacy", "graph"};
    for (int r = 0; r < 2; r++) {
        run_stats *st = &runs[r];
        memset(st, 0, sizeof *st);
        st->backend = paths[r];
        snprintf(st->jsonl, sizeof st->jsonl, "%s/metallic-ab-%d-%s.jsonl", dir, (int)getpid(), paths[r]);
        snprintf(st->log, sizeof st->log, "%s/metallic-ab-%d-%s.log", dir, (int)getpid(), paths[r]);
        if (unlink(st->jsonl) != 0 && errno != ENOENT)
            return fprintf(stderr, "metallic: ab: cannot replace %s: %s\n", st->jsonl, strerror(errno)), 1;
        char *args[32];
        int k = 0;
        args[k++] = self;
        args[k++] = "run";
        args[k++] = (char *)pos[0];
        args[k++] = (char *)pos[1];
        args[k++] = "--backend";
        args[k++] = (char *)paths[r];
        args[k++] = "--output-format";
        args[k++] = "json";
        args[k++] = "--max-tokens";
        args[k++] = (char *)max_tokens;
        args[k++] = "--temperature";
        args[k++] = (char *)temperature;
        if (seed) args[k++] = "--seed", args[k++] = (char *)seed;
        if (threads) args[k++] = "--threads", args[k++] = (char *)threads;
        if (ctx) args[k++] = "--ctx", args[k++] = (char *)ctx;
        args[k] = NULL;
        fprintf(stderr, "metallic: ab: %s run...\n", paths[r]);
        int rc = run_child(self, args, st);
        if (!rc) rc = read_jsonl(st);
        if (rc) return rc;
    }
    run_stats *a = &runs[0], *b = &runs[1];
    printf("A/B: --backend legacy vs --backend graph, latency mode (METALLIC_ENABLE_PROFILING=1)\n");
    printf("model %s, %d prompt tokens, --max-tokens %s, --temperature %s%s%s\n", pos[0], a->n_prompt,
           max_tokens, temperature, seed ? ", --seed " : "", seed ? seed : "");
    printf("JSONL  legacy: %s\n       graph:  %s\n", a->jsonl, b->jsonl);
    printf("backend choices  legacy: %s\n                 graph:  %s\n",
           a->chosen[0] ? a->chosen : "(none reported)", b->chosen[0] ? b->chosen : "(none reported)");
    if (a->n_tokens != b->n_tokens)
        printf("note: the runs generated %d and %d tokens (they diverged or one stopped at EOS)\n",
               a->n_tokens, b->n_tokens);
    printf("\n  %-26s %12s %12s %10s\n", "", "legacy", "graph", "graph/leg");
    row("decode tok/s", a->gen_tok_s, b->gen_tok_s, "(latency mode: timed per op)");
    row("prefill tok/s", a->prompt_tok_s, b->prompt_tok_s, "");
    row("generated tokens", a->n_tokens, b->n_tokens, "");
    row("forward steps", (double)a->steps, (double)b->steps, "");
    row("forward step ms (decode)", a->decode_steps ? a->decode_us / 1e3 / (double)a->decode_steps : 0,
        b->decode_steps ? b->decode_us / 1e3 / (double)b->decode_steps : 0, "");
    row("logits syncs", (double)a->logits_syncs, (double)b->logits_syncs, "total");
    row("KV bytes copied", (double)a->kv_bytes_copied, (double)b->kv_bytes_copied, "total");
    row("metric events", (double)a->events, (double)b->events, "");
    side_by_side("per block", &a->blocks, a->decode_steps, &b->blocks, b->decode_steps);
    side_by_side("per op, all blocks", &a->ops, a->decode_steps, &b->ops, b->decode_steps);
    if (a->bad_lines || b->bad_lines)
        printf("\nwarning: %lld and %lld JSONL lines did not parse\n", a->bad_lines, b->bad_lines);
    return 0;
}
