// Backend registry: every override source and its precedence, "auto", invalid values, the defaults from
// the graph-capable table, the process-wide registry, and the KernelBackendSelected events.
#include <cjson/cJSON.h>
#include <stdlib.h>
#include <string.h>
#include <sys/wait.h>
#include <unistd.h>

#include "core/metrics.h"
#include "exec/registry.h"
#include "harness.h"

static void clear_env(void) {
    unsetenv("METALLIC_BACKEND");
    for (int i = 0; i < MT_OP_COUNT; i++) {
        char var[80], up[48];
        const char *n = i == MT_OP_ATTENTION ? "sdpa" : mt_op_name((mt_op_kind)i);
        size_t k = 0;
        for (; n[k]; k++) up[k] = (char)(n[k] >= 'a' && n[k] <= 'z' ? n[k] - 32 : n[k]);
        up[k] = 0;
        snprintf(var, sizeof var, "METALLIC_FORCE_%s_BACKEND", up);
        unsetenv(var);
    }
}

static mt_registry resolve_ok(const mt_registry_opts *o) {
    mt_registry r;
    memset(&r, 0xA5, sizeof r);
    mt_status s = mt_registry_resolve(&r, o);
    CHECK(s == MT_OK, "resolve failed: %s", mt_last_error());
    return r;
}

static void test_defaults(void) {
    clear_env();
    mt_registry r = resolve_ok(NULL);
    for (int i = 0; i < MT_OP_COUNT; i++) {
        CHECK(r.path[i] == MT_PATH_LEGACY, "op %s", mt_op_name((mt_op_kind)i));
        CHECK(strstr(mt_registry_reason(&r, (mt_op_kind)i), "default") != NULL, "reason %s", r.reason[i]);
    }
    CHECK(!mt_registry_any_graph(&r), "no graph op by default");
    // Ops the graph path declares default to graph; the others stay legacy.
    mt_registry_set_graph_capable(MT_OP_ATTENTION, true);
    mt_registry_set_graph_capable(MT_OP_RMSNORM, true);
    r = resolve_ok(NULL);
    CHECK(r.path[MT_OP_ATTENTION] == MT_PATH_GRAPH && r.path[MT_OP_RMSNORM] == MT_PATH_GRAPH,
          "capable -> graph");
    CHECK(r.path[MT_OP_MATMUL] == MT_PATH_LEGACY, "matmul not capable");
    CHECK(!strcmp(mt_registry_reason(&r, MT_OP_ATTENTION), "default"), "reason '%s'",
          r.reason[MT_OP_ATTENTION]);
    CHECK(mt_registry_graph_capable(MT_OP_ATTENTION) && !mt_registry_graph_capable(MT_OP_ADD),
          "capable table");
    mt_registry_set_graph_capable(MT_OP_ATTENTION, false);
    mt_registry_set_graph_capable(MT_OP_RMSNORM, false);
}

static void test_global_env(void) {
    clear_env();
    setenv("METALLIC_BACKEND", "graph", 1);
    mt_registry r = resolve_ok(NULL);
    for (int i = 0; i < MT_OP_COUNT; i++) {
        CHECK(r.path[i] == MT_PATH_GRAPH, "op %s", mt_op_name((mt_op_kind)i));
        CHECK(!strcmp(r.reason[i], "env METALLIC_BACKEND=graph"), "reason '%s'", r.reason[i]);
    }
    clear_env();
}

// Each op's own variable moves that op only, and beats METALLIC_BACKEND.
static void test_per_op_env(void) {
    for (int op = 0; op < MT_OP_COUNT; op++) {
        clear_env();
        setenv("METALLIC_BACKEND", "graph", 1);
        char var[80], up[48];
        const char *n = op == MT_OP_ATTENTION ? "sdpa" : mt_op_name((mt_op_kind)op);
        size_t k = 0;
        for (; n[k]; k++) up[k] = (char)(n[k] >= 'a' && n[k] <= 'z' ? n[k] - 32 : n[k]);
        up[k] = 0;
        snprintf(var, sizeof var, "METALLIC_FORCE_%s_BACKEND", up);
        setenv(var, "legacy", 1);
        mt_registry r = resolve_ok(NULL);
        for (int i = 0; i < MT_OP_COUNT; i++)
            CHECK(r.path[i] == (i == op ? MT_PATH_LEGACY : MT_PATH_GRAPH), "%s set, op %s", var,
                  mt_op_name((mt_op_kind)i));
        char want[128];
        snprintf(want, sizeof want, "env %s=legacy", var);
        CHECK(!strcmp(r.reason[op], want), "reason '%s', want '%s'", r.reason[op], want);
    }
    clear_env();
}

// flag > per-op env > global env; per-op beats global at the same level.
static void test_flags_beat_env(void) {
    clear_env();
    setenv("METALLIC_FORCE_SDPA_BACKEND", "graph", 1);
    setenv("METALLIC_BACKEND", "graph", 1);
    mt_registry_opts o = {.backend = "legacy"};
    mt_registry r = resolve_ok(&o);
    CHECK(r.path[MT_OP_ATTENTION] == MT_PATH_LEGACY, "global flag beats per-op env");
    CHECK(!strcmp(r.reason[MT_OP_ATTENTION], "flag --backend legacy"), "reason '%s'",
          r.reason[MT_OP_ATTENTION]);
    CHECK(r.path[MT_OP_MATMUL] == MT_PATH_LEGACY, "global flag beats global env");

    o = (mt_registry_opts){.backend = "legacy", .sdpa_backend = "graph"};
    r = resolve_ok(&o);
    CHECK(r.path[MT_OP_ATTENTION] == MT_PATH_GRAPH, "per-op flag beats global flag");
    CHECK(!strcmp(r.reason[MT_OP_ATTENTION], "flag --sdpa-backend graph"), "reason '%s'",
          r.reason[MT_OP_ATTENTION]);
    CHECK(r.path[MT_OP_RMSNORM] == MT_PATH_LEGACY, "others follow --backend");

    clear_env();
    setenv("METALLIC_BACKEND", "legacy", 1);
    o = (mt_registry_opts){.op_backend = {"matmul=graph", "rope=graph", "rope=legacy"}, .n_op_backend = 3};
    r = resolve_ok(&o);
    CHECK(r.path[MT_OP_MATMUL] == MT_PATH_GRAPH, "--op-backend matmul=graph");
    CHECK(!strcmp(r.reason[MT_OP_MATMUL], "flag --op-backend matmul=graph"), "reason '%s'",
          r.reason[MT_OP_MATMUL]);
    CHECK(r.path[MT_OP_ROPE] == MT_PATH_LEGACY, "the later --op-backend wins");
    CHECK(!strcmp(r.reason[MT_OP_ROPE], "flag --op-backend rope=legacy"), "reason '%s'",
          r.reason[MT_OP_ROPE]);
    CHECK(r.path[MT_OP_ADD] == MT_PATH_LEGACY && strstr(r.reason[MT_OP_ADD], "env METALLIC_BACKEND"),
          "env for rest");

    // "sdpa" and "attention" name the same op; --op-backend comes after --sdpa-backend.
    o = (mt_registry_opts){.sdpa_backend = "legacy", .op_backend = {"sdpa=graph"}, .n_op_backend = 1};
    r = resolve_ok(&o);
    CHECK(r.path[MT_OP_ATTENTION] == MT_PATH_GRAPH, "sdpa=graph");
    o = (mt_registry_opts){.op_backend = {"attention=graph"}, .n_op_backend = 1};
    r = resolve_ok(&o);
    CHECK(r.path[MT_OP_ATTENTION] == MT_PATH_GRAPH, "attention=graph");
    clear_env();
}

// "auto" is no preference from a source, but a flag given at a scope hides that scope's variable.
static void test_auto(void) {
    clear_env();
    setenv("METALLIC_BACKEND", "graph", 1);
    mt_registry_opts o = {.backend = "auto"};
    mt_registry r = resolve_ok(&o);
    CHECK(r.path[MT_OP_MATMUL] == MT_PATH_LEGACY, "--backend auto hides METALLIC_BACKEND");
    CHECK(strstr(r.reason[MT_OP_MATMUL], "default") != NULL, "reason '%s'", r.reason[MT_OP_MATMUL]);

    clear_env();
    setenv("METALLIC_FORCE_SDPA_BACKEND", "auto", 1);
    setenv("METALLIC_BACKEND", "graph", 1);
    r = resolve_ok(NULL);
    CHECK(r.path[MT_OP_ATTENTION] == MT_PATH_GRAPH, "per-op auto falls to the global variable");

    clear_env();
    setenv("METALLIC_FORCE_SDPA_BACKEND", "graph", 1);
    o = (mt_registry_opts){.sdpa_backend = "auto"};
    r = resolve_ok(&o);
    CHECK(r.path[MT_OP_ATTENTION] == MT_PATH_LEGACY, "--sdpa-backend auto hides METALLIC_FORCE_SDPA_BACKEND");
    o = (mt_registry_opts){.sdpa_backend = "auto", .backend = "graph"};
    r = resolve_ok(&o);
    CHECK(r.path[MT_OP_ATTENTION] == MT_PATH_GRAPH, "per-op auto falls to --backend");
    clear_env();
}

static void expect_invalid(const mt_registry_opts *o, const char *name, const char *value) {
    mt_registry r;
    memset(&r, 0x5A, sizeof r);
    mt_registry before = r;
    mt_status s = mt_registry_resolve(&r, o);
    CHECK(s == MT_ERR_INVALID, "%s %s accepted", name, value);
    CHECK(strstr(mt_last_error(), name) && strstr(mt_last_error(), value),
          "message '%s' should name %s and %s", mt_last_error(), name, value);
    CHECK(!memcmp(&r, &before, sizeof r), "registry changed on error (%s)", name);
}

static void test_invalid(void) {
    clear_env();
    setenv("METALLIC_BACKEND", "fast", 1);
    expect_invalid(NULL, "METALLIC_BACKEND", "fast");
    clear_env();
    setenv("METALLIC_FORCE_SDPA_BACKEND", "mpsgraph", 1);
    expect_invalid(NULL, "METALLIC_FORCE_SDPA_BACKEND", "mpsgraph");
    clear_env();
    setenv("METALLIC_FORCE_KV_WRITE_BACKEND", "GRAPH", 1);
    expect_invalid(NULL, "METALLIC_FORCE_KV_WRITE_BACKEND", "GRAPH");
    clear_env();
    // A flag does not excuse a bad variable: both are validated.
    setenv("METALLIC_BACKEND", "x", 1);
    expect_invalid(&(mt_registry_opts){.backend = "legacy"}, "METALLIC_BACKEND", "x");
    clear_env();
    expect_invalid(&(mt_registry_opts){.backend = "cuda"}, "--backend", "cuda");
    expect_invalid(&(mt_registry_opts){.sdpa_backend = ""}, "--sdpa-backend", "");
    expect_invalid(&(mt_registry_opts){.op_backend = {"nosuch=graph"}, .n_op_backend = 1}, "--op-backend",
                   "nosuch");
    expect_invalid(&(mt_registry_opts){.op_backend = {"matmul"}, .n_op_backend = 1}, "--op-backend",
                   "matmul");
    expect_invalid(&(mt_registry_opts){.op_backend = {"=graph"}, .n_op_backend = 1}, "--op-backend",
                   "=graph");
    expect_invalid(&(mt_registry_opts){.op_backend = {"matmul=fast"}, .n_op_backend = 1}, "--op-backend",
                   "fast");
    expect_invalid(&(mt_registry_opts){.n_op_backend = MT_REGISTRY_MAX_OP_FLAGS + 1}, "--op-backend",
                   "at most");

    mt_op_kind op;
    mt_path_pref p;
    CHECK(mt_registry_parse_op_assignment("--op-backend", "swiglu=auto", &op, &p) == MT_OK &&
              op == MT_OP_SWIGLU && p == MT_PREF_AUTO,
          "swiglu=auto");
    CHECK(mt_registry_parse_path("X", "legacy", &p) == MT_OK && p == MT_PREF_LEGACY, "legacy");
}

static int count_events(uint64_t *cursor, const char *needle, char *last, size_t cap) {
    static char lines[512][1024];
    int n = mt_metrics_ring_read_since(cursor, &lines[0][0], 512, 1024, NULL), hits = 0;
    for (int i = 0; i < n; i++)
        if (strstr(lines[i], "\"KernelBackendSelected\"") && strstr(lines[i], needle)) {
            hits++;
            if (last) {
                size_t n = strnlen(lines[i], cap - 1);
                memcpy(last, lines[i], n);
                last[n] = 0;
            }
        }
    return hits;
}

static void test_events(void) {
    clear_env();
    uint64_t cur = 0;
    while (count_events(&cur, "", NULL, 0) > 0) { // skip what earlier cases emitted
    }
    setenv("METALLIC_FORCE_SDPA_BACKEND", "graph", 1);
    mt_registry r = resolve_ok(NULL);
    (void)r;
    uint64_t c2 = cur;
    CHECK(count_events(&cur, "", NULL, 0) == MT_OP_COUNT, "one event per op");
    char line[1024] = "";
    CHECK(count_events(&c2, "\"op\":\"attention\"", line, sizeof line) == 1, "attention event");
    CHECK(strstr(line, "\"backend\":\"graph\"") &&
              strstr(line, "\"reason\":\"env METALLIC_FORCE_SDPA_BACKEND=graph\""),
          "event '%s'", line);
    resolve_ok(&(mt_registry_opts){.backend = "legacy", .quiet = true});
    CHECK(count_events(&cur, "", NULL, 0) == 0, "quiet resolution emits nothing");
    resolve_ok(&(mt_registry_opts){.backend = "legacy"});
    c2 = cur;
    CHECK(count_events(&cur, "\"reason\":\"flag --backend legacy\"", NULL, 0) == MT_OP_COUNT,
          "flag reasons, attention's variable included (a flag beats the environment)");
    CHECK(count_events(&c2, "\"backend\":\"legacy\"", NULL, 0) == MT_OP_COUNT, "all legacy");
    clear_env();
}

static void test_global(void) {
    clear_env();
    const mt_registry *g = mt_registry_global();
    CHECK(g->path[MT_OP_ATTENTION] == MT_PATH_LEGACY, "global from env: legacy");
    CHECK(mt_registry_configure(&(mt_registry_opts){.backend = "bogus"}) == MT_ERR_INVALID, "bad configure");
    CHECK(mt_registry_global()->path[MT_OP_ATTENTION] == MT_PATH_LEGACY, "unchanged after a bad configure");
    char flag[] = "sdpa=graph"; // the registry keeps a copy, not this buffer
    mt_registry_opts o = {.op_backend = {flag}, .n_op_backend = 1};
    CHECK(mt_registry_configure(&o) == MT_OK, "%s", mt_last_error());
    strcpy(flag, "sdpa=xxxxx");
    CHECK(mt_registry_global()->path[MT_OP_ATTENTION] == MT_PATH_GRAPH, "configured");
    // Declaring a graph-capable op re-resolves with the kept flags.
    mt_registry_set_graph_capable(MT_OP_SWIGLU, true);
    g = mt_registry_global();
    CHECK(g->path[MT_OP_SWIGLU] == MT_PATH_GRAPH && !strcmp(g->reason[MT_OP_SWIGLU], "default"),
          "capable default");
    CHECK(g->path[MT_OP_ATTENTION] == MT_PATH_GRAPH &&
              !strcmp(mt_registry_reason(g, MT_OP_ATTENTION), "flag --op-backend sdpa=graph"),
          "kept flag: '%s'", g->reason[MT_OP_ATTENTION]);
    mt_registry_set_graph_capable(MT_OP_SWIGLU, false);
    CHECK(mt_registry_global()->path[MT_OP_SWIGLU] == MT_PATH_LEGACY, "capable removed");
    CHECK(!strcmp(mt_path_name(MT_PATH_GRAPH), "graph") && !strcmp(mt_path_name(MT_PATH_LEGACY), "legacy"),
          "names");
    mt_registry_configure(NULL);
}

// The command line end to end: flags into the registry, bad values exit 2, cache-dump's JSON and the
// events in a JSONL file. Needs the built binary beside the tests and the default model.
static char g_bin[1024];
#define MODEL "models/qwen2.5-coder-0.5b-instruct-q4_k_m.gguf"

static int run_cmd(const char *cmd, char *out, size_t cap) {
    FILE *p = popen(cmd, "r");
    if (!p) return -1;
    size_t n = fread(out, 1, cap - 1, p);
    out[n] = 0;
    int st = pclose(p);
    return WIFEXITED(st) ? WEXITSTATUS(st) : -1;
}

static void test_cli(void) {
    static char out[1 << 16];
    char cmd[2048];
    snprintf(cmd, sizeof cmd,
             "%s cache-dump " MODEL
             " hi --max-tokens 3 --threads 2 -o json --backend legacy --op-backend sdpa=graph",
             g_bin);
    CHECK(run_cmd(cmd, out, sizeof out) == 0, "cache-dump failed: %s", out);
    cJSON *j = cJSON_Parse(out);
    CHECK(j != NULL, "not JSON: %.300s", out);
    const cJSON *be = cJSON_GetObjectItem(j, "backends");
    const cJSON *att = cJSON_GetObjectItem(be, "attention"), *mm = cJSON_GetObjectItem(be, "matmul");
    const char *ab = cJSON_GetStringValue(cJSON_GetObjectItem(att, "backend"));
    const char *ar = cJSON_GetStringValue(cJSON_GetObjectItem(att, "reason"));
    const char *mr = cJSON_GetStringValue(cJSON_GetObjectItem(mm, "reason"));
    CHECK(ab && !strcmp(ab, "graph") && ar && !strcmp(ar, "flag --op-backend sdpa=graph"), "attention %s %s",
          ab ? ab : "-", ar ? ar : "-");
    CHECK(mr && !strcmp(mr, "flag --backend legacy"), "matmul reason %s", mr ? mr : "-");
    CHECK(cJSON_IsArray(cJSON_GetObjectItem(j, "caches")), "caches array");
    cJSON_Delete(j);

    snprintf(cmd, sizeof cmd, "METALLIC_FORCE_MATMUL_BACKEND=fast %s run " MODEL " hi 2>&1", g_bin);
    CHECK(run_cmd(cmd, out, sizeof out) == 2 && strstr(out, "METALLIC_FORCE_MATMUL_BACKEND fast"), "%s", out);
    snprintf(cmd, sizeof cmd, "%s run " MODEL " hi --op-backend nosuch=graph 2>&1", g_bin);
    CHECK(run_cmd(cmd, out, sizeof out) == 2 && strstr(out, "unknown op 'nosuch'"), "%s", out);
    snprintf(cmd, sizeof cmd, "METALLIC_EXEC_CACHE_BYTES=lots %s cache-dump " MODEL " 2>&1", g_bin);
    CHECK(run_cmd(cmd, out, sizeof out) == 2 && strstr(out, "METALLIC_EXEC_CACHE_BYTES=lots"), "%s", out);
    snprintf(cmd, sizeof cmd, "%s cache-dump " MODEL " -o yaml 2>&1", g_bin);
    CHECK(run_cmd(cmd, out, sizeof out) == 2 && strstr(out, "-o yaml"), "%s", out);

    // Events: the selection of every op and the cache accesses of a graph run land in the JSONL file.
    char path[] = "/tmp/test-registry-XXXXXX";
    int fd = mkstemp(path);
    CHECK(fd >= 0, "mkstemp");
    if (fd < 0) return;
    close(fd);
    snprintf(cmd, sizeof cmd,
             "METALLIC_METRICS_JSONL_PATH=%s %s cache-dump " MODEL
             " hi --max-tokens 4 --threads 2 --backend graph",
             path, g_bin);
    CHECK(run_cmd(cmd, out, sizeof out) == 0, "graph cache-dump: %s", out);
    CHECK(strstr(out, "cache graph_exec") || strstr(out, "caches: none"), "table: %.300s", out);
    FILE *f = fopen(path, "r");
    int selected = 0, flagged = 0, access = 0;
    char line[4096];
    while (f && fgets(line, sizeof line, f)) {
        if (strstr(line, "\"KernelBackendSelected\"")) {
            selected++;
            flagged += strstr(line, "\"backend\":\"graph\",\"reason\":\"flag --backend graph\"") != NULL;
        }
        access += strstr(line, "\"ResourceCacheAccess\"") != NULL;
    }
    if (f) fclose(f);
    unlink(path);
    CHECK(selected >= MT_OP_COUNT && flagged >= MT_OP_COUNT, "selected %d flagged %d", selected, flagged);
    CHECK(access > 0 || strstr(out, "caches: none"), "no cache access events");
}

int main(int argc, char **argv) {
    (void)argc;
    mt_metrics_ring_enable(4096);
    CHECK(mt_metrics_enabled(), "ring sink enables metrics");
    RUN(test_defaults);
    RUN(test_global_env);
    RUN(test_per_op_env);
    RUN(test_flags_beat_env);
    RUN(test_auto);
    RUN(test_invalid);
    RUN(test_events);
    RUN(test_global);
    // build/tests/test-registry -> build/metallic
    snprintf(g_bin, sizeof g_bin, "%s", argv[0]);
    char *slash = strrchr(g_bin, '/');
    if (slash) *slash = 0;
    slash = strrchr(g_bin, '/');
    if (slash)
        strcpy(slash + 1, "metallic");
    else
        snprintf(g_bin, sizeof g_bin, "../metallic");
    if (access(g_bin, X_OK) != 0)
        SKIP("test_cli", "the metallic binary is not built");
    else if (access(MODEL, R_OK) != 0)
        SKIP("test_cli", "the default model is absent");
    else
        RUN(test_cli);
    return th_summary();
}
