// Command-line parsing: flags may come before, between or after the positionals, as `--flag value` or
// `--flag=value`; `--` ends the flags. Environment variables fill what no flag gave. Every value is
// checked completely (no trailing garbage, in range) and a bad one is a one-line error naming it.
#include "args.h"
#include "backend/device.h"

#include <errno.h>
#include <limits.h>
#include <math.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "exec/cache.h"

void cli_print_help(void) {
    printf("metallic %s: run Qwen2.5 models locally\n"
           "\n"
           "usage:\n"
           "  metallic MODEL [PROMPT]            run PROMPT (no PROMPT: interactive chat)\n"
           "  metallic run MODEL PROMPT [flags]  generate an answer (PROMPT \"-\" reads stdin)\n"
           "  metallic chat MODEL [flags]        multi-turn chat; Ctrl-C stops an answer, Ctrl-D exits\n"
           "  metallic inspect MODEL [-v]        metadata, tensor counts and sizes (-v: every tensor)\n"
           "  metallic tokenize MODEL TEXT       print the token ids of TEXT as a JSON array\n"
           "  metallic cache-dump MODEL [PROMPT] [-o table|json]  short generation, then every cache's "
           "statistics\n"
           "  metallic bench MODEL [-p 512] [-n 128] [-r 5] [-o md|json|csv|jsonl]  llama-bench-style pp/tg "
           "rows\n"
           "  metallic --help | --version\n"
           "\n"
           "MODEL is a .gguf file or a Hugging Face folder (config.json, *.safetensors, tokenizer.json).\n"
           "\n"
           "generation:\n"
           "  --max-tokens N        tokens to generate at most (default 256)\n"
           "  --temperature T       0 = greedy (default: the model's generation config, else 0.7)\n"
           "  --top-k K             keep the K most likely tokens, 0 = off (default 20)\n"
           "  --top-p P             nucleus: smallest set with probability >= P, in (0, 1] (default 0.8)\n"
           "  --min-p P             drop tokens below P x the best one's probability, in [0, 1] (default 0)\n"
           "  --repeat-penalty R    penalty on the last --repeat-last-n tokens, > 0, 1 = off (default 1.05)\n"
           "  --repeat-last-n N     tokens of history the penalty looks at (default 64)\n"
           "  --seed S              random seed, 0..2^64-1 (default 12648430)\n"
           "  --system TEXT         system prompt (default: the model template's own)\n"
           "  --raw                 no chat template: tokenize the prompt as is (special tokens parsed)\n"
           "  --logprobs K          top-K log-probabilities per generated token in json output (0..100)\n"
           "\n"
           "runtime:\n"
           "  --ctx N               context length, 0 = the model's (default 0)\n"
           "  --threads N           CPU threads, >= 1 (default: one per core)\n"
           "  --device cpu|cuda     compute device (default: cuda when built with it and a GPU is present)\n"
           "  --backend legacy|graph|auto       execution path for every op (default auto)\n"
           "  --sdpa-backend legacy|graph|auto  execution path for attention\n"
           "  --op-backend OP=PATH  execution path for one op (repeatable; OP e.g. sdpa, matmul, rmsnorm)\n"
           "  --output-format text|json|tui     output (default text)\n"
           "  -v, --verbose         more detail on stderr (inspect: list every tensor)\n"
           "\n"
           "environment (a flag beats its variable):\n"
           "  METALLIC_THREADS, METALLIC_CTX, METALLIC_DEVICE, METALLIC_BACKEND,\n"
           "  METALLIC_FORCE_SDPA_BACKEND, METALLIC_FORCE_<OP>_BACKEND, METALLIC_OUTPUT_FORMAT,\n"
           "  METALLIC_EXEC_CACHE_CAPACITY, METALLIC_EXEC_CACHE_BYTES\n",
           MT_CLI_VERSION);
}

// Reports a bad value for `what` (a flag or an environment variable) and returns exit code 2.
static int bad(const char *what, const char *value, const char *why) {
    fprintf(stderr, "metallic: %s %s: %s\n", what, value, why);
    return 2;
}

static int parse_int(const char *what, const char *s, long lo, long hi, int *out) {
    char *end;
    errno = 0;
    long v = strtol(s, &end, 10);
    if (end == s || *end || errno == ERANGE) return bad(what, s, "not an integer");
    if (v < lo || v > hi) {
        char why[96];
        snprintf(why, sizeof why, "out of range [%ld, %ld]", lo, hi);
        return bad(what, s, why);
    }
    *out = (int)v;
    return 0;
}

// lo_open: the lower bound itself is excluded.
static int parse_float(const char *what, const char *s, double lo, bool lo_open, double hi, float *out) {
    char *end;
    errno = 0;
    double v = strtod(s, &end);
    if (end == s || *end || errno == ERANGE || !isfinite(v)) return bad(what, s, "not a finite number");
    if (v < lo || (lo_open && v == lo) || v > hi) {
        char why[96];
        if (isinf(hi))
            snprintf(why, sizeof why, "must be %s %g", lo_open ? ">" : ">=", lo);
        else
            snprintf(why, sizeof why, "out of range %c%g, %g]", lo_open ? '(' : '[', lo, hi);
        return bad(what, s, why);
    }
    *out = (float)v;
    return 0;
}

static int parse_u64(const char *what, const char *s, uint64_t *out) {
    char *end;
    errno = 0;
    // strtoull accepts a leading '-' and wraps it: reject it before.
    if (*s == '-' || *s == '+' || *s == ' ') return bad(what, s, "not an integer in [0, 2^64-1]");
    unsigned long long v = strtoull(s, &end, 0);
    if (end == s || *end || errno == ERANGE) return bad(what, s, "not an integer in [0, 2^64-1]");
    *out = v;
    return 0;
}

static int parse_choice(const char *what, const char *s, const char *const *choices, const char **out) {
    for (int i = 0; choices[i]; i++)
        if (!strcmp(s, choices[i])) {
            *out = choices[i];
            return 0;
        }
    char why[128] = "expected one of:";
    for (int i = 0; choices[i]; i++) {
        strncat(why, " ", sizeof why - strlen(why) - 1);
        strncat(why, choices[i], sizeof why - strlen(why) - 1);
    }
    return bad(what, s, why);
}

static const char *const backends[] = {"legacy", "graph", "auto", NULL};
static const char *const devices[] = {"cpu", "cuda", NULL};
static const char *const formats[] = {"text", "json", "tui", NULL};

static int set_device(const char *what, const char *v, cli_opts *o) {
    const char *d;
    int rc = parse_choice(what, v, devices, &d);
    if (rc) return rc;
    if (!strcmp(d, "cuda") && !mt_device_available(MT_DEVICE_CUDA)) {
#ifdef MT_CUDA
        return bad(what, v, "no usable CUDA GPU on this machine");
#else
        return bad(what, v, "this build has no CUDA support (only cpu)");
#endif
    }
    o->device = d;
    return 0;
}

static int set_format(const char *what, const char *v, cli_opts *o) {
    const char *f;
    int rc = parse_choice(what, v, formats, &f);
    if (rc) return rc;
    o->format = !strcmp(f, "json") ? CLI_JSON : !strcmp(f, "tui") ? CLI_TUI : CLI_TEXT;
    return 0;
}

// Flags that take a value, and those that do not.
enum {
    F_MAX_TOKENS,
    F_TEMPERATURE,
    F_TOP_K,
    F_TOP_P,
    F_MIN_P,
    F_REPEAT_PENALTY,
    F_REPEAT_LAST_N,
    F_SEED,
    F_CTX,
    F_THREADS,
    F_SYSTEM,
    F_LOGPROBS,
    F_FORMAT,
    F_DEVICE,
    F_BACKEND,
    F_SDPA_BACKEND,
    F_OP_BACKEND,
    F_RAW,
    F_VERBOSE,
    F_HELP,
    F_VERSION,
    F_COUNT
};
static const struct {
    const char *name;
    const char *alias;
    bool takes_value;
} flags[F_COUNT] = {
    [F_MAX_TOKENS] = {"--max-tokens", "-n", true},
    [F_TEMPERATURE] = {"--temperature", "--temp", true},
    [F_TOP_K] = {"--top-k", NULL, true},
    [F_TOP_P] = {"--top-p", NULL, true},
    [F_MIN_P] = {"--min-p", NULL, true},
    [F_REPEAT_PENALTY] = {"--repeat-penalty", NULL, true},
    [F_REPEAT_LAST_N] = {"--repeat-last-n", NULL, true},
    [F_SEED] = {"--seed", NULL, true},
    [F_CTX] = {"--ctx", "-c", true},
    [F_THREADS] = {"--threads", "-t", true},
    [F_SYSTEM] = {"--system", NULL, true},
    [F_LOGPROBS] = {"--logprobs", NULL, true},
    [F_FORMAT] = {"--output-format", NULL, true},
    [F_DEVICE] = {"--device", NULL, true},
    [F_BACKEND] = {"--backend", NULL, true},
    [F_SDPA_BACKEND] = {"--sdpa-backend", NULL, true},
    [F_OP_BACKEND] = {"--op-backend", NULL, true},
    [F_RAW] = {"--raw", NULL, false},
    [F_VERBOSE] = {"-v", "--verbose", false},
    [F_HELP] = {"--help", "-h", false},
    [F_VERSION] = {"--version", NULL, false},
};

static int apply_flag(int f, const char *name, const char *v, cli_opts *o) {
    mt_sampler_params *sp = &o->sampler;
    switch (f) {
    case F_MAX_TOKENS:
        return parse_int(name, v, 1, 10000000, &o->max_tokens);
    case F_TEMPERATURE:
        o->sampler_set |= CLI_SET_TEMPERATURE;
        return parse_float(name, v, 0, false, INFINITY, &sp->temperature);
    case F_TOP_K:
        o->sampler_set |= CLI_SET_TOP_K;
        return parse_int(name, v, 0, INT_MAX, &sp->top_k);
    case F_TOP_P:
        o->sampler_set |= CLI_SET_TOP_P;
        return parse_float(name, v, 0, true, 1, &sp->top_p);
    case F_MIN_P:
        o->sampler_set |= CLI_SET_MIN_P;
        return parse_float(name, v, 0, false, 1, &sp->min_p);
    case F_REPEAT_PENALTY:
        o->sampler_set |= CLI_SET_REPEAT_PENALTY;
        return parse_float(name, v, 0, true, INFINITY, &sp->repeat_penalty);
    case F_REPEAT_LAST_N:
        o->sampler_set |= CLI_SET_REPEAT_LAST_N;
        return parse_int(name, v, 0, INT_MAX, &sp->repeat_last_n);
    case F_SEED:
        o->sampler_set |= CLI_SET_SEED;
        return parse_u64(name, v, &sp->seed);
    case F_CTX:
        return parse_int(name, v, 0, 1 << 24, &o->ctx);
    case F_THREADS:
        return parse_int(name, v, 1, 1024, &o->threads);
    case F_SYSTEM:
        o->system = v;
        return 0;
    case F_LOGPROBS:
        return parse_int(name, v, 0, 100, &o->logprobs);
    case F_FORMAT:
        return set_format(name, v, o);
    case F_DEVICE:
        return set_device(name, v, o);
    case F_BACKEND:
        return parse_choice(name, v, backends, &o->backend);
    case F_SDPA_BACKEND:
        return parse_choice(name, v, backends, &o->sdpa_backend);
    case F_OP_BACKEND: {
        mt_op_kind op;
        mt_path_pref pref;
        if (mt_registry_parse_op_assignment(name, v, &op, &pref) != MT_OK) {
            fprintf(stderr, "metallic: %s\n", mt_last_error());
            return 2;
        }
        if (o->n_op_backend == MT_REGISTRY_MAX_OP_FLAGS) return bad(name, v, "given too many times");
        o->op_backend[o->n_op_backend++] = v;
        return 0;
    }
    case F_RAW:
        o->raw = true;
        return 0;
    case F_VERBOSE:
        o->verbose++;
        return 0;
    case F_HELP:
        o->cmd = CLI_HELP;
        return 0;
    case F_VERSION:
        o->cmd = CLI_VERSION;
        return 0;
    }
    return 2;
}

// Environment variables for what no flag set. Each maps onto a flag's parser, named by the variable.
static int apply_env(const bool *given, cli_opts *o) {
    static const struct {
        const char *var;
        int flag;
    } env[] = {
        {"METALLIC_THREADS", F_THREADS},
        {"METALLIC_CTX", F_CTX},
        {"METALLIC_DEVICE", F_DEVICE},
        {"METALLIC_BACKEND", F_BACKEND},
        {"METALLIC_FORCE_SDPA_BACKEND", F_SDPA_BACKEND},
        {"METALLIC_OUTPUT_FORMAT", F_FORMAT},
    };
    for (size_t i = 0; i < sizeof env / sizeof env[0]; i++) {
        const char *v = getenv(env[i].var);
        if (!v || !*v || given[env[i].flag]) continue;
        int rc = apply_flag(env[i].flag, env[i].var, v, o);
        if (rc) return rc;
    }
    return 0;
}

static const char *const unbuilt_cmds[] = {"serve", NULL};

int cli_parse(int argc, char **argv, cli_opts *o) {
    memset(o, 0, sizeof *o);
    o->cmd = CLI_RUN;
    o->max_tokens = 256;
    o->sampler = mt_sampler_default_params();
    o->backend = "auto";
    o->sdpa_backend = "auto";
    o->format = CLI_TEXT;

    bool given[F_COUNT] = {0};
    const char *pos[8];
    int n_pos = 0;
    bool flags_done = false;
    for (int i = 1; i < argc; i++) {
        const char *a = argv[i];
        if (!flags_done && !strcmp(a, "--")) {
            flags_done = true;
            continue;
        }
        if (flags_done || a[0] != '-' || !strcmp(a, "-")) { // "-" is a positional (stdin)
            if (n_pos == 8) {
                fprintf(stderr, "metallic: unexpected argument '%s'\n", a);
                return 2;
            }
            pos[n_pos++] = a;
            continue;
        }
        // --flag=value or --flag value.
        char name[64];
        const char *eq = strchr(a, '=');
        size_t nl = eq && a[1] == '-' ? (size_t)(eq - a) : strlen(a);
        if (nl >= sizeof name) nl = sizeof name - 1;
        memcpy(name, a, nl);
        name[nl] = 0;
        int f = -1;
        for (int k = 0; k < F_COUNT && f < 0; k++)
            if (!strcmp(name, flags[k].name) || (flags[k].alias && !strcmp(name, flags[k].alias))) f = k;
        if (f < 0) {
            fprintf(stderr, "metallic: unknown flag '%s' (see metallic --help)\n", a);
            return 2;
        }
        const char *v = ""; // flags without a value ignore it
        if (flags[f].takes_value) {
            if (eq && a[1] == '-')
                v = eq + 1;
            else if (i + 1 < argc)
                v = argv[++i];
            else {
                fprintf(stderr, "metallic: %s needs a value\n", name);
                return 2;
            }
        } else if (eq && a[1] == '-') {
            fprintf(stderr, "metallic: %s takes no value (got '%s')\n", name, eq + 1);
            return 2;
        }
        given[f] = true;
        int rc = apply_flag(f, name, v, o);
        if (rc) return rc;
        if (f == F_BACKEND) o->backend_flag = o->backend;
        if (f == F_SDPA_BACKEND) o->sdpa_backend_flag = o->sdpa_backend;
    }
    if (o->cmd == CLI_HELP || o->cmd == CLI_VERSION) return 0;
    int rc = apply_env(given, o);
    if (rc) return rc;

    if (n_pos == 0) {
        fprintf(stderr, "metallic: no model given (usage: metallic MODEL [PROMPT]; see metallic --help)\n");
        return 2;
    }
    int first = 1, want_min, want_max;
    const char *c = pos[0];
    for (int k = 0; unbuilt_cmds[k]; k++)
        if (!strcmp(c, unbuilt_cmds[k])) {
            fprintf(stderr, "metallic: the '%s' command is not available in this build\n", c);
            return 2;
        }
    if (!strcmp(c, "run"))
        o->cmd = CLI_RUN, want_min = 2, want_max = 2;
    else if (!strcmp(c, "chat"))
        o->cmd = CLI_CHAT, want_min = 1, want_max = 1;
    else if (!strcmp(c, "inspect"))
        o->cmd = CLI_INSPECT, want_min = 1, want_max = 1;
    else if (!strcmp(c, "tokenize"))
        o->cmd = CLI_TOKENIZE, want_min = 2, want_max = 2;
    else
        first = 0, want_min = 1, want_max = 2; // metallic MODEL [PROMPT]
    int n_args = n_pos - first;
    if (n_args < want_min) {
        static const char *const usage[] = {"run MODEL PROMPT", "chat MODEL", "inspect MODEL",
                                            "tokenize MODEL TEXT"};
        fprintf(stderr, "metallic: missing argument (usage: metallic %s)\n", usage[o->cmd]);
        return 2;
    }
    if (n_args > want_max) {
        fprintf(stderr, "metallic: unexpected argument '%s'\n", pos[first + want_max]);
        return 2;
    }
    o->model = pos[first];
    if (n_args > 1) o->prompt = pos[first + 1];
    if (!first && !o->prompt) o->cmd = CLI_CHAT;
    return 0;
}

int cli_configure_backends(const cli_opts *o) {
    mt_registry_opts ro = {.backend = o->backend_flag, .sdpa_backend = o->sdpa_backend_flag};
    for (int i = 0; i < o->n_op_backend; i++) ro.op_backend[i] = o->op_backend[i];
    ro.n_op_backend = o->n_op_backend;
    if (mt_registry_configure(&ro) != MT_OK || mt_exec_cache_check_env() != MT_OK) {
        fprintf(stderr, "metallic: %s\n", mt_last_error());
        return 2;
    }
    return 0;
}

void cli_sampler_params(const cli_opts *o, const mt_sampler_params *defaults, mt_sampler_params *p) {
    *p = *defaults;
    const mt_sampler_params *f = &o->sampler;
    unsigned set = o->sampler_set;
    if (set & CLI_SET_TEMPERATURE) p->temperature = f->temperature;
    if (set & CLI_SET_TOP_K) p->top_k = f->top_k;
    if (set & CLI_SET_TOP_P) p->top_p = f->top_p;
    if (set & CLI_SET_MIN_P) p->min_p = f->min_p;
    if (set & CLI_SET_REPEAT_PENALTY) p->repeat_penalty = f->repeat_penalty;
    if (set & CLI_SET_REPEAT_LAST_N) p->repeat_last_n = f->repeat_last_n;
    if (set & CLI_SET_SEED) p->seed = f->seed;
}
