// Fast CPU matmul (MT_OP_MATMUL) with runtime instruction-set dispatch (see cpu-features.h).
//
// Same contract as the reference mt_cpu_op_matmul: W [k, m] in its stored dtype, x [k, n] F32, optional
// bias [m] -> dst [m, n], thread ith of nth doing its share. Quantized weights are multiplied in integer
// arithmetic against activations quantized on the fly to 8 bits (per 32 elements for Q8_0/Q4_0/Q5_0,
// per 256 with 16-element sums for the K-quants); float weights (F32/F16/BF16) are multiplied in F32.
//
// Work split: with few tokens (decode) each thread takes a tile-aligned slice of the weight rows and
// quantizes all of x itself (k*n bytes, negligible next to the rows it streams); with many tokens
// (prefill) each thread takes a slice of the tokens and all rows, so every thread quantizes only its own
// tokens and no barrier is needed; weights are then re-read once per block of tokens from cache.
#ifndef MT_MATMUL_FAST_H
#define MT_MATMUL_FAST_H

#include <stdbool.h>
#include <stddef.h>

#include "../../exec/op.h"

// Weight dtypes with a fast kernel (the other ones must use the reference).
bool mt_cpu_matmul_fast_supports(mt_dtype t);
// Scratch bytes one thread needs for weights of dtype `t` with rows of k elements and n tokens
// (0 for float weights).
size_t mt_cpu_matmul_fast_scratch_bytes(mt_dtype t, int64_t k, int64_t n);
// Thread ith's share; uses a per-thread scratch buffer that grows to the largest size seen (allocated
// outside the hot loop: once per new high-water mark). Falls back to the reference if that allocation
// fails or the level in use is scalar.
void mt_cpu_matmul_fast(const mt_node *node, int ith, int nth);
// The same with caller-owned scratch: `scratch` is this thread's own buffer of at least
// mt_cpu_matmul_fast_scratch_bytes(W dtype, k, n) bytes (threads must not share one).
void mt_cpu_matmul_fast_ex(const mt_node *node, int ith, int nth, void *scratch);

#endif
