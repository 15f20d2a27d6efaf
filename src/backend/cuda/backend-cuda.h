// CUDA backend: the C-callable face of src/backend/cuda/*.cu (built only when the Makefile finds nvcc and
// defines MT_CUDA).
//
// Device memory holds weights (in their stored dtype), activations, the KV cache and logits; mt_tensor
// views simply carry device pointers. Each op has one launcher (mt_cuda_op_<name>) taking a node whose
// tensors and p.pos / p.seq arrays are all device memory, so per-step values are read on the device and a
// captured CUDA graph replays without re-recording.
#ifndef MT_BACKEND_CUDA_H
#define MT_BACKEND_CUDA_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#ifdef __cplusplus
extern "C" {
#endif

#include "../../core/status.h"
#include "../../exec/op.h"

// True when a CUDA device is usable (probed once; false without a driver or GPU, never aborts).
bool mt_cuda_available(void);
// Name and memory of device 0 ("" / 0 when unavailable).
const char *mt_cuda_device_name(void);

mt_status mt_cuda_malloc(void **p, size_t bytes, const char *what);
void mt_cuda_free(void *p);
mt_status mt_cuda_memset(void *p, int v, size_t bytes);
// Copies on the backend's stream; `sync` waits for completion.
mt_status mt_cuda_upload(void *dst, const void *src, size_t bytes);
mt_status mt_cuda_download(void *dst, const void *src, size_t bytes);
mt_status mt_cuda_copy(void *dst, const void *src, size_t bytes);
mt_status mt_cuda_sync(void);
// Latency mode: device-event timing of the launches between begin and end (end waits for them).
mt_status mt_cuda_timer_begin(void);
mt_status mt_cuda_timer_end(double *us);
// Device memory in use and in all, for the DeviceMemory event.
mt_status mt_cuda_mem_info(size_t *used, size_t *total);

// Launches one node on the backend's stream (all tensors device-resident). Returns MT_ERR_UNSUPPORTED
// for an op or dtype without a CUDA kernel; launch errors are reported by mt_cuda_sync.
mt_status mt_cuda_run_node(const mt_node *n);
// Like running the nodes one by one, but a one-token batch runs each transformer layer (the model's 17-node
// pattern) as 6 fused launches and a final rmsnorm + matmul as one; anything else runs per op.
mt_status mt_cuda_run_fused(const mt_node *nodes, int n_nodes);
// Gathers rows[j] of src ([d, *] F32) into row j of dst for j < n_rows; rows is a device array.
mt_status mt_cuda_gather_rows(float *dst, const float *src, const int32_t *rows, int n_rows, int d);
// Index of the largest value of each of n rows of x ([d, n] F32, device) into out[n] (device).
mt_status mt_cuda_argmax_rows(const float *x, int d, int n, int32_t *out);
// Device sampling (sample.cu): one logits row reduced to a token id with mt_sampler_sample's semantics.
// The host prepares what the CPU sampler derives from its parameters, so both see the same floats.
typedef struct mt_cuda_sample_req {
    int n_vocab;
    float inv_t;          // 1.0f / temperature (temperature > 0)
    int top_k;            // 0 or >= n_vocab: off
    float top_p;          // 1: off
    float min_p;          // 0: off
    float log_min_p;      // logf(min_p), computed on the host
    float repeat_penalty; // applied to the ids of win
    const int32_t *win;   // host: the last repeat_last_n history ids (any order, repeats and bad ids allowed)
    int n_win;            // 0: no penalty
    double u;             // the uniform in [0, 1) of the draw
} mt_cuda_sample_req;
// Samples the n_vocab floats at `logits` (device). *token: the id; *drew: false when every logit was -inf
// or NaN and the raw argmax was returned without using u (the CPU sampler then draws nothing either).
mt_status mt_cuda_sample_row(const float *logits, const mt_cuda_sample_req *r, int32_t *token, bool *drew);
// Sizes the sampler's device scratch (grows; refused during a graph capture).
mt_status mt_cuda_sample_reserve(int n_vocab, int n_win);
// Rows sampled so far, and how many of them needed the sort (top-k or top-p on).
void mt_cuda_sample_stats(uint64_t *calls, uint64_t *sorted_calls);
// Sizes the GEMM staging for prefill batches of up to n_tok tokens of up to k inputs (call before capture).
mt_status mt_cuda_reserve(int n_tok, int64_t k);

// Prefill attention (prefill.cu): true when the flash kernel takes this attention node (9 or more tokens,
// head dim 64 or 128, 16-byte aligned rows; MT_CUDA_FLASH=0 turns it off). Q K^T and P V run in F16 with
// F32 accumulation.
bool mt_cuda_flash_ok(const mt_node *n);
mt_status mt_cuda_flash_attention(const mt_node *n);
// Add, SwiGLU, rmsnorm, rope and kv_write over 9 or more rows (prefill.cu): launches and returns true
// (status in *st) when the node's tensors fit the row kernels (2-D row-strided; rope and kv_write
// [hd, heads, n]; rmsnorm and kv_write 16-byte aligned rows); false leaves the node to the per-op kernel.
bool mt_cuda_prefill_elementwise(const mt_node *n, mt_status *st);

// Per-op launchers (the `cuda` slot of the op table).
mt_status mt_cuda_op_embedding(const mt_node *n);
mt_status mt_cuda_op_rmsnorm(const mt_node *n);
mt_status mt_cuda_op_matmul(const mt_node *n);
mt_status mt_cuda_op_rope(const mt_node *n);
mt_status mt_cuda_op_kv_write(const mt_node *n);
mt_status mt_cuda_op_attention(const mt_node *n);
mt_status mt_cuda_op_swiglu(const mt_node *n);
mt_status mt_cuda_op_add(const mt_node *n);
mt_status mt_cuda_op_softmax(const mt_node *n);

// CUDA graphs. mt_cuda_capture_begin starts capturing the backend stream: every launch until
// mt_cuda_capture_end is recorded instead of run. capture_end turns the recording into an executable: an
// update of `reuse` (an executable no longer wanted, e.g. one the cache evicted) when cudaGraphExecUpdate
// accepts it (*updated; *exec is then `reuse`), else a new instantiation (`reuse` stays the caller's).
// *nodes: nodes recorded. The executables are opaque here; the cache above keys them by batch shape.
mt_status mt_cuda_capture_begin(void);
mt_status mt_cuda_capture_end(void *reuse, void **exec, bool *updated, size_t *nodes);
// Ends a capture that failed part-way and drops what was recorded.
void mt_cuda_capture_abort(void);
mt_status mt_cuda_exec_launch(void *exec);
void mt_cuda_exec_destroy(void *exec);

#ifdef __cplusplus
}
#endif

#endif
