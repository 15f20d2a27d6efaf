// The backend registry: resolves legacy/graph per op from flags, environment and defaults, and records
// why (see registry.h for the order).
#include "registry.h"

#include <ctype.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "../core/metrics.h"

static bool g_capable[MT_OP_COUNT];

const char *mt_path_name(mt_path p) {
    return p == MT_PATH_GRAPH ? "graph" : "legacy";
}

mt_status mt_registry_parse_path(const char *what, const char *value, mt_path_pref *out) {
    if (value && !strcmp(value, "legacy"))
        *out = MT_PREF_LEGACY;
    else if (value && !strcmp(value, "graph"))
        *out = MT_PREF_GRAPH;
    else if (value && !strcmp(value, "auto"))
        *out = MT_PREF_AUTO;
    else
        return mt_fail(MT_ERR_INVALID, "%s %s: expected one of: legacy graph auto", what,
                       value ? value : "(null)");
    return MT_OK;
}

mt_status mt_registry_parse_op_assignment(const char *what, const char *s, mt_op_kind *op,
                                          mt_path_pref *pref) {
    const char *eq = s ? strchr(s, '=') : NULL;
    if (!eq || eq == s)
        return mt_fail(MT_ERR_INVALID, "%s %s: expected OP=PATH (e.g. sdpa=graph)", what, s ? s : "(null)");
    char name[48];
    size_t n = (size_t)(eq - s);
    if (n >= sizeof name) return mt_fail(MT_ERR_INVALID, "%s %s: unknown op", what, s);
    memcpy(name, s, n);
    name[n] = 0;
    int k = mt_op_find(name);
    if (k < 0) {
        char known[256] = "";
        for (int i = 0; i < MT_OP_COUNT; i++) {
            strncat(known, " ", sizeof known - strlen(known) - 1);
            strncat(known, mt_op_name((mt_op_kind)i), sizeof known - strlen(known) - 1);
        }
        return mt_fail(MT_ERR_INVALID, "%s %s: unknown op '%s' (known: sdpa%s)", what, s, name, known);
    }
    mt_path_pref p;
    if (mt_registry_parse_path(what, eq + 1, &p) != MT_OK)
        return mt_fail(MT_ERR_INVALID, "%s %s: expected OP=legacy|graph|auto", what, s);
    *op = (mt_op_kind)k;
    *pref = p;
    return MT_OK;
}

// METALLIC_FORCE_<OP>_BACKEND; attention is SDPA, the seed's name.
static void env_name(mt_op_kind op, char *buf, size_t cap) {
    const char *n = op == MT_OP_ATTENTION ? "sdpa" : mt_op_name(op);
    char up[48];
    size_t i = 0;
    for (; n[i] && i + 1 < sizeof up; i++) up[i] = (char)toupper((unsigned char)n[i]);
    up[i] = 0;
    snprintf(buf, cap, "METALLIC_FORCE_%s_BACKEND", up);
}

// One source's say on one scope: its value and the text of its reason.
typedef struct source {
    mt_path_pref pref;
    char why[MT_REGISTRY_REASON_LEN];
} source;

static mt_status read_env(const char *var, source *s) {
    const char *v = getenv(var);
    s->pref = MT_PREF_UNSET;
    if (!v || !*v) return MT_OK;
    MT_TRY(mt_registry_parse_path(var, v, &s->pref));
    snprintf(s->why, sizeof s->why, "env %s=%.24s", var, v);
    return MT_OK;
}

static bool decides(mt_path_pref p) {
    return p == MT_PREF_LEGACY || p == MT_PREF_GRAPH;
}

mt_status mt_registry_resolve(mt_registry *r, const mt_registry_opts *opts) {
    source op_flag[MT_OP_COUNT], glob_flag = {0}, op_env[MT_OP_COUNT], glob_env;
    memset(op_flag, 0, sizeof op_flag);
    if (opts && opts->backend) {
        MT_TRY(mt_registry_parse_path("--backend", opts->backend, &glob_flag.pref));
        snprintf(glob_flag.why, sizeof glob_flag.why, "flag --backend %s", opts->backend);
    }
    if (opts && opts->sdpa_backend) {
        source *s = &op_flag[MT_OP_ATTENTION];
        MT_TRY(mt_registry_parse_path("--sdpa-backend", opts->sdpa_backend, &s->pref));
        snprintf(s->why, sizeof s->why, "flag --sdpa-backend %s", opts->sdpa_backend);
    }
    int n_ob = opts ? opts->n_op_backend : 0;
    if (n_ob < 0 || n_ob > MT_REGISTRY_MAX_OP_FLAGS)
        return mt_fail(MT_ERR_INVALID, "--op-backend: %d values, at most %d", n_ob, MT_REGISTRY_MAX_OP_FLAGS);
    for (int i = 0; i < n_ob; i++) { // later flags win
        mt_op_kind op;
        mt_path_pref p;
        MT_TRY(mt_registry_parse_op_assignment("--op-backend", opts->op_backend[i], &op, &p));
        op_flag[op].pref = p;
        snprintf(op_flag[op].why, sizeof op_flag[op].why, "flag --op-backend %s", opts->op_backend[i]);
    }
    MT_TRY(read_env("METALLIC_BACKEND", &glob_env));
    for (int i = 0; i < MT_OP_COUNT; i++) {
        char var[80];
        env_name((mt_op_kind)i, var, sizeof var);
        MT_TRY(read_env(var, &op_env[i]));
    }

    // Everything parsed: now fill r, so a failure above leaves it as it was.
    for (int i = 0; i < MT_OP_COUNT; i++) {
        const source *pick = NULL;
        if (decides(op_flag[i].pref))
            pick = &op_flag[i];
        else if (decides(glob_flag.pref))
            pick = &glob_flag;
        else if (op_flag[i].pref == MT_PREF_UNSET && decides(op_env[i].pref))
            pick = &op_env[i];
        else if (glob_flag.pref == MT_PREF_UNSET && decides(glob_env.pref))
            pick = &glob_env;
        if (pick) {
            r->path[i] = pick->pref == MT_PREF_GRAPH ? MT_PATH_GRAPH : MT_PATH_LEGACY;
            snprintf(r->reason[i], MT_REGISTRY_REASON_LEN, "%s", pick->why);
        } else {
            r->path[i] = g_capable[i] ? MT_PATH_GRAPH : MT_PATH_LEGACY;
            snprintf(r->reason[i], MT_REGISTRY_REASON_LEN, "%s",
                     g_capable[i] ? "default" : "default (no graph lowering)");
        }
    }
    if ((!opts || !opts->quiet) && mt_metrics_enabled()) {
        for (int i = 0; i < MT_OP_COUNT; i++) {
            char why[2 * MT_REGISTRY_REASON_LEN];
            mt_metrics_escape(r->reason[i], why, sizeof why);
            mt_metrics_emitf("KernelBackendSelected", "\"op\":\"%s\",\"backend\":\"%s\",\"reason\":\"%s\"",
                             mt_op_name((mt_op_kind)i), mt_path_name(r->path[i]), why);
        }
    }
    return MT_OK;
}

mt_path mt_registry_path(const mt_registry *r, mt_op_kind op) {
    MT_ASSERT(op >= 0 && op < MT_OP_COUNT);
    return r->path[op];
}

const char *mt_registry_reason(const mt_registry *r, mt_op_kind op) {
    MT_ASSERT(op >= 0 && op < MT_OP_COUNT);
    return r->reason[op];
}

bool mt_registry_any_graph(const mt_registry *r) {
    for (int i = 0; i < MT_OP_COUNT; i++)
        if (r->path[i] == MT_PATH_GRAPH) return true;
    return false;
}

// ---- the process-wide registry ----

static mt_registry g_reg;
static bool g_resolved;
// The configured flags, copied so the caller's strings may go away.
static struct {
    bool set;
    char backend[16], sdpa[16], op[MT_REGISTRY_MAX_OP_FLAGS][64];
    mt_registry_opts opts;
} g_flags;

static void keep_flags(const mt_registry_opts *o) {
    memset(&g_flags, 0, sizeof g_flags);
    if (!o) return;
    g_flags.set = true;
    g_flags.opts.quiet = o->quiet;
    if (o->backend) {
        snprintf(g_flags.backend, sizeof g_flags.backend, "%s", o->backend);
        g_flags.opts.backend = g_flags.backend;
    }
    if (o->sdpa_backend) {
        snprintf(g_flags.sdpa, sizeof g_flags.sdpa, "%s", o->sdpa_backend);
        g_flags.opts.sdpa_backend = g_flags.sdpa;
    }
    for (int i = 0; i < o->n_op_backend; i++) {
        snprintf(g_flags.op[i], sizeof g_flags.op[i], "%s", o->op_backend[i]);
        g_flags.opts.op_backend[i] = g_flags.op[i];
    }
    g_flags.opts.n_op_backend = o->n_op_backend;
}

mt_status mt_registry_configure(const mt_registry_opts *opts) {
    mt_registry r;
    MT_TRY(mt_registry_resolve(&r, opts)); // validates everything before keeping anything
    keep_flags(opts);
    g_reg = r;
    g_resolved = true;
    return MT_OK;
}

const mt_registry *mt_registry_global(void) {
    if (!g_resolved) {
        // A bad environment value here has no caller to report to: fall back to legacy everywhere with
        // the error as the reason (the CLI validates the environment before this point).
        if (mt_registry_resolve(&g_reg, g_flags.set ? &g_flags.opts : NULL) != MT_OK) {
            for (int i = 0; i < MT_OP_COUNT; i++) {
                g_reg.path[i] = MT_PATH_LEGACY;
                snprintf(g_reg.reason[i], MT_REGISTRY_REASON_LEN, "error: %s", mt_last_error());
            }
        }
        g_resolved = true;
    }
    return &g_reg;
}

void mt_registry_set_graph_capable(mt_op_kind op, bool capable) {
    MT_ASSERT(op >= 0 && op < MT_OP_COUNT);
    if (g_capable[op] == capable) return;
    g_capable[op] = capable;
    g_resolved = false; // the next mt_registry_global() re-resolves with the kept flags
}

bool mt_registry_graph_capable(mt_op_kind op) {
    MT_ASSERT(op >= 0 && op < MT_OP_COUNT);
    return g_capable[op];
}
