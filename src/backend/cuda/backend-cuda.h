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

// CUDA graphs: a small cache of captured node lists keyed by an integer (the model uses the batch shape).
// mt_cuda_graph_begin starts capturing the backend stream; every launch until mt_cuda_graph_end is
// recorded instead of run; mt_cuda_graph_launch replays a cached key. Keys beyond the cache evict the
// least recently used graph.
typedef struct mt_cuda_graphs mt_cuda_graphs;
mt_status mt_cuda_graphs_create(int capacity, mt_cuda_graphs **out);
void mt_cuda_graphs_free(mt_cuda_graphs *g);
// True (and replays it) when `key` is cached.
bool mt_cuda_graphs_launch(mt_cuda_graphs *g, uint64_t key);
mt_status mt_cuda_graphs_begin(mt_cuda_graphs *g);
// Ends the capture started by mt_cuda_graphs_begin, instantiates it under `key` and launches it once.
mt_status mt_cuda_graphs_end(mt_cuda_graphs *g, uint64_t key);
// Ends a capture that failed part-way and drops what was recorded.
void mt_cuda_graphs_abort(mt_cuda_graphs *g);
// Graphs captured so far (telemetry / tests).
int mt_cuda_graphs_captured(const mt_cuda_graphs *g);

#ifdef __cplusplus
}
#endif

#endif
