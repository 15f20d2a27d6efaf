// CUDA runtime glue: device probe, memory, copies on the backend stream, and CUDA graph capture.
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
// Capture of the backend stream and the executables made from it; the cache that keys them by batch shape
// is the executable cache, above the backend (src/backend/device.c).

mt_status mt_cuda_capture_begin(void) {
    MT_TRY(need_ctx("graph capture"));
    // relaxed: cuBLAS may query attributes while the stream is being captured
    cudaError_t e = cudaStreamBeginCapture(g_ctx.stream, cudaStreamCaptureModeRelaxed);
    return e == cudaSuccess ? MT_OK : MT_CU_FAIL(e, "begin capture");
}

mt_status mt_cuda_capture_end(void *reuse, void **exec, bool *updated, size_t *nodes) {
    *exec = NULL;
    *updated = false;
    *nodes = 0;
    cudaGraph_t graph = NULL;
    cudaError_t e = cudaStreamEndCapture(g_ctx.stream, &graph);
    if (e != cudaSuccess) return MT_CU_FAIL(e, "end capture");
    cudaGraphGetNodes(graph, NULL, nodes);
    if (reuse) {
        // Same launch sequence with other grid sizes and arguments (another token count): rewriting the
        // parameters of an existing executable is cheaper than instantiating a new one.
        cudaGraphExecUpdateResultInfo info;
        if (cudaGraphExecUpdate((cudaGraphExec_t)reuse, graph, &info) == cudaSuccess) {
            cudaGraphDestroy(graph);
            *exec = reuse;
            *updated = true;
            return MT_OK;
        }
        cudaGetLastError(); // a topology change is an expected refusal: instantiate instead
    }
    cudaGraphExec_t ex = NULL;
    e = cudaGraphInstantiate(&ex, graph, 0);
    cudaGraphDestroy(graph);
    if (e != cudaSuccess) return MT_CU_FAIL(e, "graph instantiate");
    *exec = ex;
    return MT_OK;
}

void mt_cuda_capture_abort(void) {
    cudaGraph_t graph = NULL;
    if (cudaStreamEndCapture(g_ctx.stream, &graph) == cudaSuccess && graph) cudaGraphDestroy(graph);
    cudaGetLastError();
}

mt_status mt_cuda_exec_launch(void *exec) {
    cudaError_t e = cudaGraphLaunch((cudaGraphExec_t)exec, g_ctx.stream);
    return e == cudaSuccess ? MT_OK : MT_CU_FAIL(e, "graph launch");
}

void mt_cuda_exec_destroy(void *exec) {
    if (exec) cudaGraphExecDestroy((cudaGraphExec_t)exec);
}
