// Shared state and helpers of the CUDA backend: the one stream every launch goes to, the cuBLAS handle,
// the F16 staging buffers of the prefill GEMM and error translation into mt_status.
#ifndef MT_CUDA_COMMON_CUH
#define MT_CUDA_COMMON_CUH

#include <cublas_v2.h>
#include <cuda_runtime.h>

#include "backend-cuda.h"

struct mt_cuda_ctx {
    bool ok;
    cudaStream_t stream;
    cublasHandle_t blas;
    void *blas_ws; // fixed cuBLAS workspace, so a captured GEMM never allocates
    void *act16;   // activations converted to F16/BF16 for the GEMM
    size_t act16_bytes;
    void *w16; // a chunk of dequantized weight rows
    size_t w16_bytes;
    char name[400];
};

// The process-wide backend (device 0); initialized on first use.
mt_cuda_ctx *mt_cuda_ctx_get(void);
// Grows a staging buffer; refused while the stream is being captured (a graph would keep a stale pointer).
mt_status mt_cuda_staging(void **buf, size_t *have, size_t need, const char *what);

#define MT_CU_FAIL(err, what)                                                                                \
    mt_fail(MT_ERR_INTERNAL, "cuda: %s: %s (%s)", what, cudaGetErrorName(err), cudaGetErrorString(err))

// Checks the last launch.
static inline mt_status mt_cu_launched(const char *what) {
    cudaError_t e = cudaGetLastError();
    return e == cudaSuccess ? MT_OK : MT_CU_FAIL(e, what);
}

#endif
