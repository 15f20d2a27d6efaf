// CUDA runtime glue: device probe, memory, copies on the backend stream, and the graph cache.
#include <stdio.h>
#include <string.h>

#include "common.cuh"

static mt_cuda_ctx g_ctx;
static int g_probed;

mt_cuda_ctx *mt_cuda_ctx_get(void) {
    if (g_probed) return g_ctx.ok ? &g_ctx : NULL;
    g_probed = 1;
    int n = 0;
    if (cudaGetDeviceCount(&n) != cudaSuccess || n < 1) {
        cudaGetLastError(); // no driver or no GPU: clear the sticky error and report unavailable
        return NULL;
    }
    cudaDeviceProp p;
    if (cudaSetDevice(0) != cudaSuccess || cudaGetDeviceProperties(&p, 0) != cudaSuccess) return NULL;
    snprintf(g_ctx.name, sizeof g_ctx.name, "%.200s (sm_%d%d, %d SMs, %.1f GiB)", p.name, p.major, p.minor,
             p.multiProcessorCount, (double)p.totalGlobalMem / (1 << 30));
    if (cudaStreamCreateWithFlags(&g_ctx.stream, cudaStreamNonBlocking) != cudaSuccess) return NULL;
    if (cublasCreate(&g_ctx.blas) != CUBLAS_STATUS_SUCCESS) return NULL;
    const size_t ws = 32u << 20;
    if (cudaMalloc(&g_ctx.blas_ws, ws) != cudaSuccess) return NULL;
    cublasSetStream(g_ctx.blas, g_ctx.stream);
    cublasSetWorkspace(g_ctx.blas, g_ctx.blas_ws, ws);
    g_ctx.ok = true;
    return &g_ctx;
}

bool mt_cuda_available(void) {
    return mt_cuda_ctx_get() != NULL;
}

const char *mt_cuda_device_name(void) {
    mt_cuda_ctx *c = mt_cuda_ctx_get();
    return c ? c->name : "";
}

static mt_status need_ctx(const char *what) {
    if (!mt_cuda_ctx_get()) return mt_fail(MT_ERR_UNSUPPORTED, "cuda: %s: no usable CUDA device", what);
    return MT_OK;
}

mt_status mt_cuda_malloc(void **p, size_t bytes, const char *what) {
    *p = NULL;
    MT_TRY(need_ctx(what));
    cudaError_t e = cudaMalloc(p, bytes ? bytes : 1);
    if (e != cudaSuccess) {
        *p = NULL;
        cudaGetLastError();
        return mt_fail(MT_ERR_NOMEM, "cuda: cannot allocate %zu bytes of device memory for %s (%s)", bytes,
                       what, cudaGetErrorString(e));
    }
    return MT_OK;
}

void mt_cuda_free(void *p) {
    if (p && mt_cuda_ctx_get()) cudaFree(p);
}

mt_status mt_cuda_memset(void *p, int v, size_t bytes) {
    MT_TRY(need_ctx("memset"));
    cudaError_t e = cudaMemsetAsync(p, v, bytes, g_ctx.stream);
    return e == cudaSuccess ? MT_OK : MT_CU_FAIL(e, "memset");
}

static mt_status copy(void *dst, const void *src, size_t bytes, cudaMemcpyKind k, const char *what) {
    MT_TRY(need_ctx(what));
    if (!bytes) return MT_OK;
    cudaError_t e = cudaMemcpyAsync(dst, src, bytes, k, g_ctx.stream);
    if (e == cudaSuccess && k == cudaMemcpyDeviceToHost) e = cudaStreamSynchronize(g_ctx.stream);
    return e == cudaSuccess ? MT_OK : MT_CU_FAIL(e, what);
}

mt_status mt_cuda_upload(void *dst, const void *src, size_t bytes) {
    return copy(dst, src, bytes, cudaMemcpyHostToDevice, "upload");
}
mt_status mt_cuda_download(void *dst, const void *src, size_t bytes) {
    return copy(dst, src, bytes, cudaMemcpyDeviceToHost, "download");
}
mt_status mt_cuda_copy(void *dst, const void *src, size_t bytes) {
    return copy(dst, src, bytes, cudaMemcpyDeviceToDevice, "device copy");
}

mt_status mt_cuda_sync(void) {
    MT_TRY(need_ctx("sync"));
    cudaError_t e = cudaStreamSynchronize(g_ctx.stream);
    if (e == cudaSuccess) e = cudaGetLastError();
    return e == cudaSuccess ? MT_OK : MT_CU_FAIL(e, "kernel execution");
}

// Latency mode: a pair of device events around one node's launches (their elapsed time is the kernels'
// own time on the stream, without the host's launch overhead).
static cudaEvent_t g_ev[2];

mt_status mt_cuda_timer_begin(void) {
    MT_TRY(need_ctx("timer"));
    for (int i = 0; i < 2; i++) {
        if (g_ev[i]) continue;
        cudaError_t e = cudaEventCreate(&g_ev[i]);
        if (e != cudaSuccess) return MT_CU_FAIL(e, "event create");
    }
    cudaError_t e = cudaEventRecord(g_ev[0], g_ctx.stream);
    return e == cudaSuccess ? MT_OK : MT_CU_FAIL(e, "event record");
}

mt_status mt_cuda_timer_end(double *us) {
    cudaError_t e = cudaEventRecord(g_ev[1], g_ctx.stream);
    if (e == cudaSuccess) e = cudaEventSynchronize(g_ev[1]);
    float ms = 0;
    if (e == cudaSuccess) e = cudaEventElapsedTime(&ms, g_ev[0], g_ev[1]);
    if (e != cudaSuccess) return MT_CU_FAIL(e, "event timing");
    *us = (double)ms * 1e3;
    return MT_OK;
}

mt_status mt_cuda_mem_info(size_t *used, size_t *total) {
    MT_TRY(need_ctx("memory info"));
    size_t fr = 0, tot = 0;
    cudaError_t e = cudaMemGetInfo(&fr, &tot);
    if (e != cudaSuccess) return MT_CU_FAIL(e, "memory info");
    *used = tot - fr;
    *total = tot;
    return MT_OK;
}

mt_status mt_cuda_staging(void **buf, size_t *have, size_t need, const char *what) {
    if (need <= *have) return MT_OK;
    cudaStreamCaptureStatus cs = cudaStreamCaptureStatusNone;
    cudaStreamIsCapturing(g_ctx.stream, &cs);
    if (cs != cudaStreamCaptureStatusNone)
        return mt_fail(MT_ERR_INTERNAL, "cuda: %s staging of %zu bytes must be reserved before graph capture",
                       what, need);
    cudaStreamSynchronize(g_ctx.stream); // a running kernel may still read the old buffer
    if (*buf) cudaFree(*buf);
    *buf = NULL;
    *have = 0;
    MT_TRY(mt_cuda_malloc(buf, need, what));
    *have = need;
    return MT_OK;
}

// ---- graphs ----------------------------------------------------------------------------------------

struct mt_cuda_graphs {
    int cap, n, captured;
    uint64_t *keys;
    uint64_t *used; // last-use tick per slot (LRU eviction)
    cudaGraphExec_t *exec;
    uint64_t tick;
};

mt_status mt_cuda_graphs_create(int capacity, mt_cuda_graphs **out) {
    *out = NULL;
    MT_TRY(need_ctx("graphs"));
    if (capacity < 1) return mt_fail(MT_ERR_INVALID, "cuda graphs: capacity %d < 1", capacity);
    mt_cuda_graphs *g = (mt_cuda_graphs *)mt_calloc(1, sizeof *g, "graph cache");
    if (!g) return MT_ERR_NOMEM;
    g->cap = capacity;
    g->keys = (uint64_t *)mt_calloc((size_t)capacity, sizeof(uint64_t), "graph keys");
    g->used = (uint64_t *)mt_calloc((size_t)capacity, sizeof(uint64_t), "graph ticks");
    g->exec = (cudaGraphExec_t *)mt_calloc((size_t)capacity, sizeof(cudaGraphExec_t), "graph execs");
    if (!g->keys || !g->used || !g->exec) {
        mt_cuda_graphs_free(g);
        return MT_ERR_NOMEM;
    }
    *out = g;
    return MT_OK;
}

void mt_cuda_graphs_free(mt_cuda_graphs *g) {
    if (!g) return;
    for (int i = 0; i < g->n; i++)
        if (g->exec[i]) cudaGraphExecDestroy(g->exec[i]);
    free(g->keys);
    free(g->used);
    free(g->exec);
    free(g);
}

bool mt_cuda_graphs_launch(mt_cuda_graphs *g, uint64_t key) {
    for (int i = 0; i < g->n; i++)
        if (g->keys[i] == key) {
            g->used[i] = ++g->tick;
            return cudaGraphLaunch(g->exec[i], g_ctx.stream) == cudaSuccess;
        }
    return false;
}

mt_status mt_cuda_graphs_begin(mt_cuda_graphs *g) {
    (void)g;
    // relaxed: cuBLAS may query attributes while the stream is being captured
    cudaError_t e = cudaStreamBeginCapture(g_ctx.stream, cudaStreamCaptureModeRelaxed);
    return e == cudaSuccess ? MT_OK : MT_CU_FAIL(e, "begin capture");
}

mt_status mt_cuda_graphs_end(mt_cuda_graphs *g, uint64_t key) {
    cudaGraph_t graph = NULL;
    cudaError_t e = cudaStreamEndCapture(g_ctx.stream, &graph);
    if (e != cudaSuccess) return MT_CU_FAIL(e, "end capture");
    int slot = g->n;
    if (g->n == g->cap) { // evict the least recently used shape
        slot = 0;
        for (int i = 1; i < g->n; i++)
            if (g->used[i] < g->used[slot]) slot = i;
        cudaGraphExecDestroy(g->exec[slot]);
    } else {
        g->n++;
    }
    cudaGraphExec_t ex = NULL;
    e = cudaGraphInstantiate(&ex, graph, 0);
    cudaGraphDestroy(graph);
    if (e != cudaSuccess) {
        // keep the table dense: move the last entry into the failed slot
        g->n--;
        if (slot != g->n) {
            g->keys[slot] = g->keys[g->n];
            g->used[slot] = g->used[g->n];
            g->exec[slot] = g->exec[g->n];
        }
        return MT_CU_FAIL(e, "graph instantiate");
    }
    g->keys[slot] = key;
    g->exec[slot] = ex;
    g->used[slot] = ++g->tick;
    g->captured++;
    e = cudaGraphLaunch(ex, g_ctx.stream);
    return e == cudaSuccess ? MT_OK : MT_CU_FAIL(e, "graph launch");
}

int mt_cuda_graphs_captured(const mt_cuda_graphs *g) {
    return g ? g->captured : 0;
}

void mt_cuda_graphs_abort(mt_cuda_graphs *g) {
    (void)g;
    cudaGraph_t graph = NULL;
    if (cudaStreamEndCapture(g_ctx.stream, &graph) == cudaSuccess && graph) cudaGraphDestroy(graph);
    cudaGetLastError();
}
