// The op table: the one interface every kernel is written against.
//
// A forward pass is a list of nodes (op + tensors + parameters). Per op the table holds its name, a
// check of shapes and dtypes (returns a status, never asserts on user-reachable input) and the
// implementation per device. The legacy path (exec/eager.c) runs nodes one by one; the graph path
// compiles runs of nodes into cached executables over the same table.
//
// Shapes use the tensor convention (ne[0] innermost); `n` below is the number of tokens in the batch.
#ifndef MT_OP_H
#define MT_OP_H

#include <stdbool.h>
#include <stdint.h>

#include "../core/tensor.h"

typedef enum mt_op_kind {
    // src0 table [d, vocab] (any dtype), src1 ids [n] I32 -> dst [d, n] F32
    MT_OP_EMBEDDING,
    // src0 x [d, n] F32, src1 weight [d] F32 -> dst [d, n]; p.eps
    MT_OP_RMSNORM,
    // src0 W [k, m] (any dtype), src1 x [k, n] F32, src2 bias [m] F32 (optional) -> dst [m, n]
    MT_OP_MATMUL,
    // src0 x [hd, heads, n] F32 -> dst (may alias src0); NEOX halves; p.pos, p.freq_base
    MT_OP_ROPE,
    // src0 new rows [hd, n_kv, n] F32 -> dst cache [hd, n_kv, ctx, n_seq] at (p.pos[i], p.seq[i])
    MT_OP_KV_WRITE,
    // src0 q [hd, n_head, n], src1 K cache, src2 V cache [hd, n_kv, ctx, n_seq] -> dst [hd, n_head, n].
    // Token i attends to positions 0..p.pos[i] of sequence p.seq[i] (causal); grouped-query: query head h
    // reads KV head h / (n_head / n_kv) directly, no repeated copies.
    MT_OP_ATTENTION,
    // src0 gate [f, n], src1 up [f, n] -> dst [f, n] = silu(gate) * up
    MT_OP_SWIGLU,
    // src0 + src1 -> dst (same shape; dst may alias an input)
    MT_OP_ADD,
    // softmax over ne[0] of each row of src0 -> dst
    MT_OP_SOFTMAX,
    MT_OP_COUNT,
} mt_op_kind;

typedef struct mt_op_params {
    float eps;          // RMSNORM
    float freq_base;    // ROPE
    float scale;        // ATTENTION: score scale (1/sqrt(hd) when 0)
    const int32_t *pos; // ROPE, KV_WRITE, ATTENTION: position of each token, [n]
    const int32_t *seq; // KV_WRITE, ATTENTION: sequence slot of each token, [n]
} mt_op_params;

typedef struct mt_node {
    mt_op_kind op;
    const mt_tensor *src[3]; // NULL for an absent optional input
    mt_tensor *dst;
    mt_op_params p;
    const char *label; // scope for telemetry, e.g. "block_3/sdpa"; optional
} mt_node;

// One thread's share of a node: thread ith of nth does its part; all parts together do the node.
typedef void (*mt_op_impl)(const mt_node *node, int ith, int nth);

typedef struct mt_op_def {
    const char *name;                     // "rmsnorm", "matmul", ... (one name in every backend)
    mt_status (*check)(const mt_node *n); // shapes, dtypes, aliasing; MT_ERR_INVALID with a reason
    mt_op_impl cpu_ref;                   // scalar reference (backend/cpu/ops-ref.c), always built
    // (optional) faster CPU kernel and whether it takes this node (dtype, ISA level); else cpu_ref runs
    mt_op_impl cpu_fast;
    bool (*cpu_fast_supports)(const mt_node *n);
    // (optional) CUDA launcher (backend/cuda, built with MT_CUDA): all tensors and p.pos/p.seq in device
    // memory; enqueues on the backend stream and returns a status (NULL in a CPU-only build)
    mt_status (*cuda)(const mt_node *n);
} mt_op_def;

const mt_op_def *mt_op_get(mt_op_kind op);
const char *mt_op_name(mt_op_kind op);
// Looks an op up by name ("sdpa" is accepted for attention); -1 if unknown.
int mt_op_find(const char *name);
mt_status mt_op_check(const mt_node *n);
// The CPU implementation that runs this node: the fast kernel where it supports the node and the
// instruction-set level in use is above scalar (METALLIC_CPU_ISA=scalar forces the references).
mt_op_impl mt_op_cpu_impl(const mt_node *n);

#endif
