// CPU implementations of the op table, one function per op with the same name in every backend.
// ops-ref.c holds the scalar references, always built: the oracle every faster kernel is tested against.
#ifndef MT_CPU_OPS_H
#define MT_CPU_OPS_H

#include "../../exec/op.h"

void mt_cpu_op_embedding(const mt_node *n, int ith, int nth);
void mt_cpu_op_rmsnorm(const mt_node *n, int ith, int nth);
void mt_cpu_op_matmul(const mt_node *n, int ith, int nth);
void mt_cpu_op_rope(const mt_node *n, int ith, int nth);
void mt_cpu_op_kv_write(const mt_node *n, int ith, int nth);
void mt_cpu_op_attention(const mt_node *n, int ith, int nth);
void mt_cpu_op_swiglu(const mt_node *n, int ith, int nth);
void mt_cpu_op_add(const mt_node *n, int ith, int nth);
void mt_cpu_op_softmax(const mt_node *n, int ith, int nth);

#endif
