// Scope timers, the latency tree and the memory picture (see telemetry.h). The tree is a fixed table
// with an open-addressing index, filled in first-seen order, guarded by one mutex: only timed paths
// (latency mode, or stage timings with a sink) touch it, and the dashboard reads it from another thread.
#include "telemetry.h"

#include <fcntl.h>
#include <pthread.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

#include "metrics.h"

static atomic_int profiling = -1; // -1: not read from the environment yet

bool mt_tel_profiling(void) {
    int p = atomic_load_explicit(&profiling, memory_order_relaxed);
    if (p < 0) {
        const char *e = getenv("METALLIC_ENABLE_PROFILING");
        int on = e && (!strcmp(e, "1") || !strcmp(e, "true") || !strcmp(e, "on") || !strcmp(e, "yes"));
        int expect = -1;
        atomic_compare_exchange_strong(&profiling, &expect, on);
        p = atomic_load(&profiling);
    }
    return p > 0;
}

void mt_tel_set_profiling(bool on) {
    atomic_store(&profiling, on ? 1 : 0);
}

bool mt_tel_active(void) {
    return mt_tel_profiling() || mt_metrics_enabled();
}

uint64_t mt_tel_now_ns(void) {
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (uint64_t)ts.tv_sec * 1000000000u + (uint64_t)ts.tv_nsec;
}

// ---- scope stack (per thread) ----
#define MAX_DEPTH 16
#define NAME_MAX_LEN 47

typedef struct scope_stack {
    char path[MAX_DEPTH * (NAME_MAX_LEN + 1) + 1];
    size_t len[MAX_DEPTH + 1]; // path length at each depth
    uint64_t start[MAX_DEPTH];
    int depth;
    int overflow; // pushes beyond MAX_DEPTH, ignored but balanced
} scope_stack;

static _Thread_local scope_stack st;

void mt_tel_begin(const char *name) {
    if (st.depth == MAX_DEPTH) {
        st.overflow++;
        return;
    }
    size_t at = st.len[st.depth];
    if (st.depth > 0) st.path[at++] = '/';
    size_t n = strlen(name);
    if (n > NAME_MAX_LEN) n = NAME_MAX_LEN;
    memcpy(st.path + at, name, n);
    at += n;
    st.path[at] = 0;
    st.start[st.depth] = mt_tel_now_ns();
    st.depth++;
    st.len[st.depth] = at;
}

static void root_name(char *out, size_t cap) {
    size_t n = 0;
    while (st.path[n] && st.path[n] != '/') n++;
    if (n >= cap) n = cap - 1;
    memcpy(out, st.path, n);
    out[n] = 0;
}

double mt_tel_end(const char *event_name) {
    if (st.overflow) {
        st.overflow--;
        return 0;
    }
    MT_ASSERT(st.depth > 0);
    double us = (double)(mt_tel_now_ns() - st.start[st.depth - 1]) / 1e3;
    // record under the scope's own path, then emit with the root as the parent
    mt_tel_record(NULL, us);
    if (mt_metrics_enabled()) {
        char root[NAME_MAX_LEN + 1];
        root_name(root, sizeof root);
        mt_metrics_emitf("InternalKernelCompleted",
                         "\"parent_op_name\":\"%s\",\"internal_kernel_name\":\"%s\",\"path\":\"%s\","
                         "\"duration_us\":%.3f",
                         root, event_name, st.path, us);
    }
    st.depth--;
    st.path[st.len[st.depth]] = 0;
    return us;
}

const char *mt_tel_path(void) {
    return st.path;
}

// ---- the latency tree ----
#define TREE_CAP 4096
#define INDEX_CAP 8192 // power of two, twice the table

static pthread_mutex_t tree_mu = PTHREAD_MUTEX_INITIALIZER;
static mt_tel_node *tree;   // [TREE_CAP], allocated on first record
static int16_t *tree_index; // [INDEX_CAP], node index + 1, 0 = empty
static int tree_n;

static uint32_t hash_path(const char *s) {
    uint32_t h = 2166136261u; // FNV-1a
    for (; *s; s++) h = (h ^ (unsigned char)*s) * 16777619u;
    return h;
}

// Full path of `name` under the current scope (name NULL: the scope itself), cut to fit cap.
static void full_path(const char *name, char *out, size_t cap) {
    size_t o = 0;
    for (const char *p = st.path; *p && o + 1 < cap; p++) out[o++] = *p;
    if (name) {
        if (o && o + 1 < cap) out[o++] = '/';
        for (const char *p = name; *p && o + 1 < cap; p++) out[o++] = *p;
    }
    out[o] = 0;
}

void mt_tel_record(const char *name, double us) {
    char path[sizeof tree[0].path];
    full_path(name, path, sizeof path);
    uint32_t h = hash_path(path);
    pthread_mutex_lock(&tree_mu);
    if (!tree) {
        tree = calloc(TREE_CAP, sizeof *tree);
        tree_index = calloc(INDEX_CAP, sizeof *tree_index);
        if (!tree || !tree_index) { // telemetry is best effort: no memory, no tree
            free(tree), free(tree_index);
            tree = NULL, tree_index = NULL;
            pthread_mutex_unlock(&tree_mu);
            return;
        }
    }
    mt_tel_node *node = NULL;
    for (uint32_t i = h & (INDEX_CAP - 1);; i = (i + 1) & (INDEX_CAP - 1)) {
        int k = tree_index[i];
        if (k == 0) {
            if (tree_n == TREE_CAP) break; // full: new paths are dropped
            node = &tree[tree_n];
            memset(node, 0, sizeof *node); // a reset leaves old contents in the slots
            memcpy(node->path, path, sizeof node->path);
            node->depth = 0;
            for (const char *c = path; *c; c++) node->depth += *c == '/';
            tree_index[i] = (int16_t)(++tree_n);
            break;
        }
        if (!strcmp(tree[k - 1].path, path)) {
            node = &tree[k - 1];
            break;
        }
    }
    if (node) {
        node->last_us = us;
        node->total_us += us;
        node->count++;
    }
    pthread_mutex_unlock(&tree_mu);
}

int mt_tel_tree_snapshot(mt_tel_node *out, int max) {
    pthread_mutex_lock(&tree_mu);
    int n = tree_n < max ? tree_n : max;
    if (n > 0) memcpy(out, tree, (size_t)n * sizeof *out);
    pthread_mutex_unlock(&tree_mu);
    return n;
}

void mt_tel_tree_reset(void) {
    pthread_mutex_lock(&tree_mu);
    if (tree_index) memset(tree_index, 0, INDEX_CAP * sizeof *tree_index);
    tree_n = 0;
    pthread_mutex_unlock(&tree_mu);
}

void mt_tel_emit_op(const char *name, const char *backend, const char *device, double us) {
    if (!mt_metrics_enabled()) return;
    char path[256];
    full_path(name, path, sizeof path);
    mt_metrics_emitf("GpuOpCompleted",
                     "\"op_name\":\"%s\",\"backend\":\"%s\",\"device\":\"%s\",\"duration_us\":%.3f", path,
                     backend, device, us);
}

void mt_tel_emit_internal(const char *name, double us) {
    if (!mt_metrics_enabled()) return;
    char root[NAME_MAX_LEN + 1], path[256];
    root_name(root, sizeof root);
    full_path(name, path, sizeof path);
    mt_metrics_emitf(
        "InternalKernelCompleted",
        "\"parent_op_name\":\"%s\",\"internal_kernel_name\":\"%s\",\"path\":\"%s\",\"duration_us\":%.3f",
        root, name, path, us);
}

void mt_tel_op(const char *name, const char *backend, const char *device, double us) {
    mt_tel_record(name, us);
    mt_tel_emit_op(name, backend, device, us);
}

// ---- memory ----
static pthread_mutex_t mem_mu = PTHREAD_MUTEX_INITIALIZER;
static mt_tel_mem mem;

void mt_tel_mem_get(mt_tel_mem *out) {
    pthread_mutex_lock(&mem_mu);
    *out = mem;
    pthread_mutex_unlock(&mem_mu);
}

void mt_tel_mem_set_model(const char *path, uint64_t file_bytes, uint64_t weights_bytes, int n_blocks,
                          const uint64_t *block_bytes, uint64_t embd_bytes, uint64_t output_bytes) {
    pthread_mutex_lock(&mem_mu);
    snprintf(mem.file_path, sizeof mem.file_path, "%s", path ? path : "");
    mem.file_bytes = file_bytes;
    mem.weights_bytes = weights_bytes;
    mem.n_blocks = n_blocks < MT_TEL_MAX_BLOCKS ? n_blocks : MT_TEL_MAX_BLOCKS;
    for (int i = 0; i < mem.n_blocks; i++) mem.block_bytes[i] = block_bytes[i];
    mem.embd_bytes = embd_bytes;
    mem.output_bytes = output_bytes;
    pthread_mutex_unlock(&mem_mu);
}

void mt_tel_mem_set_session(uint64_t kv_bytes, uint64_t kv_used_bytes, uint64_t scratch_bytes) {
    pthread_mutex_lock(&mem_mu);
    mem.kv_bytes = kv_bytes;
    mem.kv_used_bytes = kv_used_bytes;
    mem.scratch_bytes = scratch_bytes;
    pthread_mutex_unlock(&mem_mu);
}

void mt_tel_device_memory(const char *device, uint64_t used_bytes, uint64_t total_bytes) {
    pthread_mutex_lock(&mem_mu);
    snprintf(mem.device, sizeof mem.device, "%s", device);
    mem.device_used_bytes = used_bytes;
    mem.device_total_bytes = total_bytes;
    pthread_mutex_unlock(&mem_mu);
    if (mt_metrics_enabled()) {
        char dev[128];
        mt_metrics_escape(device, dev, sizeof dev);
        mt_metrics_emitf("DeviceMemory", "\"device\":\"%s\",\"used_bytes\":%llu,\"total_bytes\":%llu", dev,
                         (unsigned long long)used_bytes, (unsigned long long)total_bytes);
    }
}

uint64_t mt_tel_rss_bytes(void) {
    int fd = open("/proc/self/statm", O_RDONLY | O_CLOEXEC);
    if (fd < 0) return 0;
    char buf[128];
    ssize_t n = read(fd, buf, sizeof buf - 1);
    close(fd);
    if (n <= 0) return 0;
    buf[n] = 0;
    unsigned long long size = 0, resident = 0; // statm: size resident shared text lib data dt (pages)
    if (sscanf(buf, "%llu %llu", &size, &resident) != 2) return 0;
    long page = sysconf(_SC_PAGESIZE);
    return (uint64_t)resident * (uint64_t)(page > 0 ? page : 4096);
}

void mt_tel_emit_host_memory(void) {
    uint64_t rss = mt_tel_rss_bytes();
    pthread_mutex_lock(&mem_mu);
    mem.rss_bytes = rss;
    mt_tel_mem m = mem;
    pthread_mutex_unlock(&mem_mu);
    if (!mt_metrics_enabled()) return;
    mt_metrics_emitf("HostMemory",
                     "\"rss_bytes\":%llu,\"weights_mapped_bytes\":%llu,\"kv_cache_bytes\":%llu,"
                     "\"kv_cache_used_bytes\":%llu,\"scratch_bytes\":%llu",
                     (unsigned long long)m.rss_bytes, (unsigned long long)m.file_bytes,
                     (unsigned long long)m.kv_bytes, (unsigned long long)m.kv_used_bytes,
                     (unsigned long long)m.scratch_bytes);
}
