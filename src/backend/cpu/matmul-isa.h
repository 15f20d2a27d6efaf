// Internal: per-instruction-set entry points of the fast matmul (matmul-avx2.c, matmul-avx512.c), which
// compile the kernels of matmul-kernels.inc for their target.
#ifndef MT_MATMUL_ISA_H
#define MT_MATMUL_ISA_H

#include <stddef.h>

#include "../../exec/op.h"

// Per-thread scratch for n activation rows of k elements quantized for weights of dtype t.
size_t mt_mm_scratch_bytes(mt_dtype t, int64_t k, int64_t n);
void mt_mm_run_avx2(const mt_node *node, int ith, int nth, void *scratch);
void mt_mm_run_avx512(const mt_node *node, int ith, int nth, void *scratch);

#endif
