// Metric events and telemetry: escaping, the ring and its cursor reads, truncation, every event kind
// written to a JSONL file and parsed back (in a child process, since the sink is chosen once per
// process), a writer killed with SIGKILL leaving only whole lines, the latency tree, scopes, per-node
// timing in the eager executor, RSS, and the cost of an event (a benchmark, printed, not asserted).
#include <cjson/cJSON.h>
#include <pthread.h>
#include <signal.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

#include "core/metrics.h"
#include "core/telemetry.h"
#include "core/threadpool.h"
#include "exec/eager.h"
#include "harness.h"

static uint64_t rng = 0x9E3779B97F4A7C15ull;
static uint32_t next_u32(void) {
    rng ^= rng << 13, rng ^= rng >> 7, rng ^= rng << 17;
    return (uint32_t)(rng >> 11);
}

static char tmpdir[256];

static void test_defaults(void) {
    CHECK(!mt_metrics_enabled() && !mt_tel_profiling() && !mt_tel_active(),
          "default: throughput mode, no sink");
    mt_tel_set_profiling(true);
    CHECK(mt_tel_profiling() && mt_tel_active(), "latency mode on");
    mt_tel_set_profiling(false);
    CHECK(!mt_tel_active(), "back to throughput mode");
}

static void test_escape(void) {
    char raw[64], out[256];
    for (int i = 0; i < 63; i++) raw[i] = (char)(1 + next_u32() % 126); // any byte but NUL, quotes included
    raw[63] = 0;
    mt_metrics_escape(raw, out, sizeof out);
    char js[300];
    snprintf(js, sizeof js, "\"%s\"", out);
    cJSON *j = cJSON_Parse(js);
    CHECK(j && cJSON_IsString(j), "escaped string does not parse: %s", js);
    if (j) CHECK(!strcmp(cJSON_GetStringValue(j), raw), "round trip differs");
    cJSON_Delete(j);
    // a small buffer cuts between escapes, never inside one, and stays NUL-terminated
    char small[12];
    mt_metrics_escape("\"\"\"\"\"\"\"\"", small, sizeof small);
    snprintf(js, sizeof js, "\"%s\"", small);
    j = cJSON_Parse(js);
    CHECK(j != NULL, "cut escape does not parse: %s", js);
    cJSON_Delete(j);
}

static int count_lines(const char *path, int *bad, char *last_char) {
    FILE *f = fopen(path, "r");
    if (!f) return -1;
    char *line = NULL;
    size_t cap = 0;
    ssize_t n;
    int good = 0;
    *bad = 0;
    *last_char = 0;
    while ((n = getline(&line, &cap, f)) > 0) {
        *last_char = line[n - 1];
        cJSON *j = cJSON_Parse(line);
        if (j && cJSON_IsNumber(cJSON_GetObjectItem(j, "ts_us")) &&
            cJSON_IsString(cJSON_GetObjectItem(j, "event")))
            good++;
        else
            (*bad)++;
        cJSON_Delete(j);
    }
    free(line);
    fclose(f);
    return good;
}

// Every event kind the telemetry layer writes, emitted by a child into a file, parsed back field by field.
static void test_schema_file(void) {
    char path[512];
    snprintf(path, sizeof path, "%s/schema.jsonl", tmpdir);
    pid_t pid = fork();
    if (pid == 0) {
        setenv("METALLIC_METRICS_JSONL_PATH", path, 1);
        if (mt_metrics_init() != MT_OK) _exit(3);
        mt_tel_begin("generation_loop");
        mt_tel_begin("forward_step");
        mt_tel_begin("block_3");
        mt_tel_op("sdpa", "legacy", "cpu", 12.5);
        mt_tel_end("block_3_total");
        mt_tel_emit_internal("embedding", 3.25);
        mt_tel_end("forward_step_total");
        mt_tel_end("iteration_total");
        mt_tel_device_memory("test \"gpu\"", 1234, 5678);
        mt_tel_mem_set_session(1000, 10, 99);
        mt_tel_emit_host_memory();
        mt_metrics_emitf("KernelBackendSelected",
                         "\"op\":\"sdpa\",\"backend\":\"legacy\",\"reason\":\"default\"");
        mt_metrics_shutdown();
        _exit(0);
    }
    int st;
    waitpid(pid, &st, 0);
    CHECK(WIFEXITED(st) && WEXITSTATUS(st) == 0, "child status %d", st);
    FILE *f = fopen(path, "r");
    CHECK(f != NULL, "no file %s", path);
    if (!f) return;
    char line[4096];
    int seen_op = 0, seen_block = 0, seen_emb = 0, seen_fs = 0, seen_iter = 0, seen_dev = 0, seen_host = 0,
        seen_sel = 0;
    while (fgets(line, sizeof line, f)) {
        cJSON *j = cJSON_Parse(line);
        CHECK(j != NULL, "line does not parse: %s", line);
        if (!j) continue;
        const char *ev = cJSON_GetStringValue(cJSON_GetObjectItem(j, "event"));
        CHECK(ev && cJSON_IsNumber(cJSON_GetObjectItem(j, "ts_us")), "envelope: %s", line);
        if (ev && !strcmp(ev, "GpuOpCompleted")) {
            seen_op++;
            CHECK(!strcmp(cJSON_GetStringValue(cJSON_GetObjectItem(j, "op_name")),
                          "generation_loop/forward_step/block_3/sdpa"),
                  "op_name: %s", line);
            CHECK(!strcmp(cJSON_GetStringValue(cJSON_GetObjectItem(j, "backend")), "legacy"), "%s", line);
            CHECK(cJSON_GetNumberValue(cJSON_GetObjectItem(j, "duration_us")) == 12.5, "%s", line);
        } else if (ev && !strcmp(ev, "InternalKernelCompleted")) {
            const char *name = cJSON_GetStringValue(cJSON_GetObjectItem(j, "internal_kernel_name"));
            const char *parent = cJSON_GetStringValue(cJSON_GetObjectItem(j, "parent_op_name"));
            const char *p = cJSON_GetStringValue(cJSON_GetObjectItem(j, "path"));
            double us = cJSON_GetNumberValue(cJSON_GetObjectItem(j, "duration_us"));
            CHECK(name && parent && p && !strcmp(parent, "generation_loop") && us >= 0, "%s", line);
            if (!name || !p) continue;
            if (!strcmp(name, "block_3_total")) {
                seen_block++;
                CHECK(!strcmp(p, "generation_loop/forward_step/block_3"), "%s", line);
            }
            if (!strcmp(name, "embedding")) {
                seen_emb++;
                CHECK(us == 3.25 && !strcmp(p, "generation_loop/forward_step/embedding"), "%s", line);
            }
            if (!strcmp(name, "forward_step_total")) {
                seen_fs++;
                CHECK(!strcmp(p, "generation_loop/forward_step"), "%s", line);
            }
            if (!strcmp(name, "iteration_total")) {
                seen_iter++;
                CHECK(!strcmp(p, "generation_loop"), "%s", line);
            }
        } else if (ev && !strcmp(ev, "DeviceMemory")) {
            seen_dev++;
            CHECK(!strcmp(cJSON_GetStringValue(cJSON_GetObjectItem(j, "device")), "test \"gpu\""), "%s",
                  line);
            CHECK(cJSON_GetNumberValue(cJSON_GetObjectItem(j, "used_bytes")) == 1234, "%s", line);
            CHECK(cJSON_GetNumberValue(cJSON_GetObjectItem(j, "total_bytes")) == 5678, "%s", line);
        } else if (ev && !strcmp(ev, "HostMemory")) {
            seen_host++;
            CHECK(cJSON_GetNumberValue(cJSON_GetObjectItem(j, "rss_bytes")) > 0, "%s", line);
            CHECK(cJSON_GetNumberValue(cJSON_GetObjectItem(j, "kv_cache_bytes")) == 1000, "%s", line);
            CHECK(cJSON_GetNumberValue(cJSON_GetObjectItem(j, "kv_cache_used_bytes")) == 10, "%s", line);
            CHECK(cJSON_GetNumberValue(cJSON_GetObjectItem(j, "scratch_bytes")) == 99, "%s", line);
        } else if (ev && !strcmp(ev, "KernelBackendSelected")) {
            seen_sel++;
        }
        cJSON_Delete(j);
    }
    fclose(f);
    CHECK(seen_op == 1 && seen_block == 1 && seen_emb == 1 && seen_fs == 1 && seen_iter == 1 &&
              seen_dev == 1 && seen_host == 1 && seen_sel == 1,
          "events seen op %d block %d emb %d fs %d iter %d dev %d host %d sel %d", seen_op, seen_block,
          seen_emb, seen_fs, seen_iter, seen_dev, seen_host, seen_sel);
}

static void *spam(void *arg) {
    int id = (int)(intptr_t)arg;
    char pad[3001];
    for (uint64_t i = 0;; i++) {
        int len = (int)((i * 2654435761u + (uint64_t)id) % 3000);
        memset(pad, 'a' + id, (size_t)len);
        pad[len] = 0;
        mt_metrics_emitf("GpuOpCompleted", "\"op_name\":\"t%d/%llu\",\"backend\":\"legacy\",\"pad\":\"%s\"",
                         id, (unsigned long long)i, pad);
    }
    return NULL;
}

// A writer with two threads killed by SIGKILL mid-stream: every complete line is a whole JSON object.
static void test_kill9_whole_lines(void) {
    char path[512];
    snprintf(path, sizeof path, "%s/kill9.jsonl", tmpdir);
    pid_t pid = fork();
    if (pid == 0) {
        setenv("METALLIC_METRICS_JSONL_PATH", path, 1);
        if (mt_metrics_init() != MT_OK) _exit(3);
        pthread_t th;
        pthread_create(&th, NULL, spam, (void *)(intptr_t)1);
        spam((void *)(intptr_t)0);
        _exit(0);
    }
    struct stat sb;
    for (int i = 0; i < 400; i++) { // until the file holds a few MB (at most 4 s)
        usleep(10000);
        if (stat(path, &sb) == 0 && sb.st_size > (4 << 20)) break;
    }
    kill(pid, SIGKILL);
    int st;
    waitpid(pid, &st, 0);
    CHECK(WIFSIGNALED(st) && WTERMSIG(st) == SIGKILL, "child was not killed: %d", st);
    int bad = 0;
    char last = 0;
    int good = count_lines(path, &bad, &last);
    printf("    killed writer left %d lines, %d bad\n", good, bad);
    CHECK(good > 100, "only %d lines", good);
    // Each event is one write(2), so no line is ever interleaved or cut by another. The kernel may still
    // stop a write that spans a page boundary when SIGKILL arrives inside it: then, and only then, the
    // file ends with one unterminated fragment, which readers drop. Every other line must be whole.
    bool cut_tail = last != '\n';
    CHECK(bad == (cut_tail ? 1 : 0), "%d lines do not parse (file %s mid-line)", bad,
          cut_tail ? "ends" : "does not end");
}

static void test_ring_and_cursor(void) {
    mt_metrics_ring_enable(8);
    CHECK(mt_metrics_enabled(), "the ring enables events");
    int vals[20];
    for (int i = 0; i < 20; i++) {
        vals[i] = (int)(next_u32() % 100000);
        mt_metrics_emitf("Test", "\"i\":%d,\"v\":%d", i, vals[i]);
    }
    char buf[16][512];
    int n = mt_metrics_ring_read(&buf[0][0], 16, 512);
    CHECK(n == 8, "ring holds %d", n);
    for (int k = 0; k < n; k++) {
        cJSON *j = cJSON_Parse(buf[k]);
        CHECK(j != NULL, "ring line: %s", buf[k]);
        if (!j) continue;
        CHECK((int)cJSON_GetNumberValue(cJSON_GetObjectItem(j, "i")) == 12 + k, "order: %s", buf[k]);
        CHECK((int)cJSON_GetNumberValue(cJSON_GetObjectItem(j, "v")) == vals[12 + k], "value: %s", buf[k]);
        cJSON_Delete(j);
    }
    uint64_t cur = 0, dropped = 0;
    n = mt_metrics_ring_read_since(&cur, &buf[0][0], 3, 512, &dropped);
    CHECK(n == 3 && dropped == 12 && cur == 15, "first read: n %d dropped %llu cur %llu", n,
          (unsigned long long)dropped, (unsigned long long)cur);
    CHECK(strstr(buf[0], "\"i\":12,") != NULL, "first read starts at the oldest held: %s", buf[0]);
    n = mt_metrics_ring_read_since(&cur, &buf[0][0], 16, 512, &dropped);
    CHECK(n == 5 && dropped == 0 && strstr(buf[4], "\"i\":19,"), "rest: n %d", n);
    n = mt_metrics_ring_read_since(&cur, &buf[0][0], 16, 512, &dropped);
    CHECK(n == 0, "nothing new, got %d", n);
    mt_metrics_emitf("Test", "\"i\":%d", 20);
    n = mt_metrics_ring_read_since(&cur, &buf[0][0], 16, 512, &dropped);
    CHECK(n == 1 && strstr(buf[0], "\"i\":20"), "one new line, got %d", n);
    // an over-long event becomes a marked, still valid object
    static char big[8192];
    memset(big, 'x', sizeof big - 1);
    mt_metrics_emitf("Big", "\"s\":\"%s\"", big);
    n = mt_metrics_ring_read_since(&cur, &buf[0][0], 16, 512, &dropped);
    cJSON *j = n == 1 ? cJSON_Parse(buf[0]) : NULL;
    CHECK(j && cJSON_IsTrue(cJSON_GetObjectItem(j, "truncated")), "truncated event: %s", n ? buf[0] : "");
    cJSON_Delete(j);
    mt_metrics_shutdown();
}

static void test_tree(void) {
    mt_tel_tree_reset();
    double sum[3] = {0}, last[3] = {0};
    const char *names[3] = {"b", "a", "c"};
    mt_tel_begin("root");
    for (int i = 0; i < 30; i++) {
        int k = (int)(next_u32() % 3);
        if (i < 3) k = i; // first-seen order b, a, c
        double us = 1 + next_u32() % 1000;
        mt_tel_record(names[k], us);
        sum[k] += us, last[k] = us;
    }
    CHECK(!strcmp(mt_tel_path(), "root"), "path %s", mt_tel_path());
    mt_tel_end("root_total");
    CHECK(!strcmp(mt_tel_path(), ""), "path after end: '%s'", mt_tel_path());
    mt_tel_node nodes[8];
    int n = mt_tel_tree_snapshot(nodes, 8);
    CHECK(n == 4, "%d nodes", n);
    for (int k = 0; k < 3 && n == 4; k++) {
        char want[16];
        snprintf(want, sizeof want, "root/%s", names[k]);
        CHECK(!strcmp(nodes[k].path, want), "node %d is %s, want %s", k, nodes[k].path, want);
        CHECK(nodes[k].depth == 1, "depth %d", nodes[k].depth);
        CHECK(nodes[k].total_us == sum[k] && nodes[k].last_us == last[k], "%s: total %g/%g last %g/%g", want,
              nodes[k].total_us, sum[k], nodes[k].last_us, last[k]);
    }
    if (n == 4)
        CHECK(!strcmp(nodes[3].path, "root") && nodes[3].count == 1 && nodes[3].depth == 0, "root node");
    mt_tel_tree_reset();
    CHECK(mt_tel_tree_snapshot(nodes, 8) == 0, "reset");
    // deep nesting beyond the stack stays balanced
    for (int i = 0; i < 20; i++) mt_tel_begin("d");
    for (int i = 0; i < 20; i++) mt_tel_end("d_total");
    CHECK(!strcmp(mt_tel_path(), ""), "balanced after overflow: '%s'", mt_tel_path());
    mt_tel_tree_reset();
}

static void add_node_setup(mt_tensor *a, mt_tensor *b, mt_tensor *d, float *x, float *y, float *z, int n) {
    int64_t ne[2] = {n, 3};
    for (int i = 0; i < 3 * n; i++) x[i] = (float)(next_u32() % 1000) / 100.f, y[i] = (float)(next_u32() % 7);
    mt_tensor_init(a, MT_F32, 2, ne, x);
    mt_tensor_init(b, MT_F32, 2, ne, y);
    mt_tensor_init(d, MT_F32, 2, ne, z);
}

// Latency mode: the eager executor records each node under the caller's scope; throughput mode records none.
static void test_eager_timing(void) {
    enum { N = 4096 };
    static float x[3 * N], y[3 * N], z[3 * N];
    mt_tensor a, b, d;
    add_node_setup(&a, &b, &d, x, y, z, N);
    mt_node nodes[2] = {{.op = MT_OP_ADD, .src = {&a, &b}, .dst = &d, .label = "first_add"},
                        {.op = MT_OP_ADD, .src = {&d, &b}, .dst = &d, .label = "second_add"}};
    mt_pool *pool = NULL;
    CHECK(mt_pool_create(2, &pool) == MT_OK, "pool");
    mt_tel_tree_reset();
    mt_tel_set_profiling(false);
    mt_eager_run_unchecked(nodes, 2, pool);
    mt_tel_node out[8];
    CHECK(mt_tel_tree_snapshot(out, 8) == 0, "throughput mode timed nodes");
    mt_tel_set_profiling(true);
    for (int r = 0; r < 3; r++) {
        mt_tel_begin("block_7");
        mt_eager_run_unchecked(nodes, 2, pool);
        mt_tel_end("block_7_total");
    }
    mt_tel_set_profiling(false);
    int n = mt_tel_tree_snapshot(out, 8);
    CHECK(n == 3, "%d nodes", n);
    if (n == 3) {
        CHECK(!strcmp(out[0].path, "block_7/first_add") && out[0].count == 3, "%s x%llu", out[0].path,
              (unsigned long long)out[0].count);
        CHECK(!strcmp(out[1].path, "block_7/second_add") && out[1].count == 3, "%s", out[1].path);
        CHECK(!strcmp(out[2].path, "block_7") && out[2].total_us >= out[0].total_us + out[1].total_us,
              "block total %g < ops %g + %g", out[2].total_us, out[0].total_us, out[1].total_us);
    }
    // the result is the same as untimed: z = x + 2y
    int bad = 0;
    for (int i = 0; i < 3 * N; i++) bad += z[i] != x[i] + y[i] + y[i];
    CHECK(bad == 0, "%d wrong sums", bad);
    mt_pool_free(pool);
    mt_tel_tree_reset();
}

static void test_rss_and_mem(void) {
    uint64_t r0 = mt_tel_rss_bytes();
    CHECK(r0 > 0, "rss");
    size_t sz = 64u << 20;
    char *p = malloc(sz);
    CHECK(p != NULL, "malloc");
    if (!p) return;
    for (size_t i = 0; i < sz; i += 4096) p[i] = (char)i;
    uint64_t r1 = mt_tel_rss_bytes();
    CHECK(r1 >= r0 + (48u << 20), "rss %llu -> %llu after touching 64 MiB", (unsigned long long)r0,
          (unsigned long long)r1);
    free(p);
    uint64_t blocks[3] = {next_u32(), next_u32(), next_u32()};
    mt_tel_mem_set_model("m.gguf", 100, 90, 3, blocks, 7, 0);
    mt_tel_mem m;
    mt_tel_mem_get(&m);
    CHECK(m.n_blocks == 3 && m.block_bytes[2] == blocks[2] && m.file_bytes == 100 &&
              !strcmp(m.file_path, "m.gguf"),
          "memory picture");
}

static double bench_ns(void (*fn)(int), int iters) {
    struct timespec a, b;
    clock_gettime(CLOCK_MONOTONIC, &a);
    fn(iters);
    clock_gettime(CLOCK_MONOTONIC, &b);
    return ((double)(b.tv_sec - a.tv_sec) * 1e9 + (double)(b.tv_nsec - a.tv_nsec)) / iters;
}

static volatile int sink_guard;
static void checks_only(int iters) {
    for (int i = 0; i < iters; i++) sink_guard += mt_tel_active();
}
// One decode step's throughput-mode telemetry with a sink: four stage scopes and a ForwardStep event.
static void step_events(int iters) {
    for (int i = 0; i < iters; i++) {
        mt_tel_begin("generation_loop");
        mt_tel_begin("logits_sync");
        mt_tel_end("logits_sync");
        mt_tel_begin("sampling");
        mt_tel_end("sampling");
        mt_tel_begin("forward_step");
        mt_tel_end("forward_step_total");
        mt_metrics_emitf("ForwardStep", "\"tokens\":1,\"pos_first\":%d,\"pos_last\":%d,\"n_logits\":1", i, i);
        mt_tel_end("iteration_total");
    }
}

// The cost of throughput-mode telemetry, without and with a file sink (printed; a benchmark).
static void bench_overhead(void) {
    char path[512];
    snprintf(path, sizeof path, "%s/bench.jsonl", tmpdir);
    int fds[2];
    if (pipe(fds) != 0) return;
    pid_t pid = fork();
    if (pid == 0) {
        setenv("METALLIC_METRICS_JSONL_PATH", path, 1);
        if (mt_metrics_init() != MT_OK) _exit(3);
        step_events(200);
        double per_step = bench_ns(step_events, 5000);
        ssize_t w = write(fds[1], &per_step, sizeof per_step);
        _exit(w == sizeof per_step ? 0 : 4);
    }
    close(fds[1]);
    double per_step = -1;
    ssize_t r = read(fds[0], &per_step, sizeof per_step);
    close(fds[0]);
    int st;
    waitpid(pid, &st, 0);
    CHECK(r == sizeof per_step && WIFEXITED(st) && WEXITSTATUS(st) == 0, "bench child");
    double off = bench_ns(checks_only, 1000000);
    // a decode step of the 0.5B model on this class of machine takes tens of milliseconds
    const double step_ms = 30.0;
    printf("    no sink: %.1f ns per check; with a JSONL sink: %.2f us of telemetry per decode step "
           "(%.4f%% of a %.0f ms step)\n",
           off, per_step / 1e3, 100.0 * per_step / (step_ms * 1e6), step_ms);
}

int main(void) {
    unsetenv("METALLIC_METRICS_JSONL_PATH");
    unsetenv("METALLIC_METRICS_CONSOLE");
    unsetenv("METALLIC_ENABLE_PROFILING");
    snprintf(tmpdir, sizeof tmpdir, "/tmp/test-metrics-XXXXXX");
    if (!mkdtemp(tmpdir)) {
        perror("mkdtemp");
        return 1;
    }
    // children that choose their own sink fork before this process reads its (empty) environment
    RUN(test_schema_file);
    RUN(test_kill9_whole_lines);
    RUN(bench_overhead);
    RUN(test_defaults);
    RUN(test_escape);
    RUN(test_tree);
    RUN(test_eager_timing);
    RUN(test_rss_and_mem);
    RUN(test_ring_and_cursor);
    char cmd[300];
    snprintf(cmd, sizeof cmd, "rm -rf %s", tmpdir);
    if (system(cmd) != 0) printf("    could not remove %s\n", tmpdir);
    return th_summary();
}
