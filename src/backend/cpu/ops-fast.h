// Vectorized CPU kernels for the non-matmul ops (AVX2 + FMA; the AVX-512 level runs them too). Same
// contracts and thread split semantics as the references in ops.h, which stay the oracle: results agree
// to float rounding (sums in a different order, a polynomial exp with ~1e-7 relative error).
//
// mt_cpu_ops_fast_supports says whether a node can take its fast kernel at the instruction-set level in
// use (attention needs head_dim % 8 == 0); otherwise the reference runs.
#ifndef MT_CPU_OPS_FAST_H
#define MT_CPU_OPS_FAST_H

#include <stdbool.h>

#include "../../exec/op.h"

bool mt_cpu_ops_fast_supports(const mt_node *n);
void mt_cpu_fast_rmsnorm(const mt_node *n, int ith, int nth);
void mt_cpu_fast_rope(const mt_node *n, int ith, int nth);
// Decode and prefill: (token, head) pairs dealt round-robin to threads (causal rows differ in length, so
// contiguous ranges would leave one thread most of the work), 8 cached positions per score block.
void mt_cpu_fast_attention(const mt_node *n, int ith, int nth);
void mt_cpu_fast_swiglu(const mt_node *n, int ith, int nth);
void mt_cpu_fast_add(const mt_node *n, int ith, int nth);
void mt_cpu_fast_softmax(const mt_node *n, int ith, int nth);

// Row-level kernels for the graph path's fused nodes (fused.c). Only while mt_cpu_fast_rows_ok() (x86-64
// at the AVX2 level or above).
bool mt_cpu_fast_rows_ok(void);
// y[i] = silu(g[i]) * u[i] for i < n.
void mt_cpu_fast_swiglu_span(const float *g, const float *u, float *y, int64_t n);
// x += add (when add is not NULL), then y = rmsnorm(x) * w, over one row of d elements.
void mt_cpu_fast_add_rmsnorm_row(float *x, const float *add, const float *w, float eps, float *y, int64_t d);

#endif
