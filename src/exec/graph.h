// The graph path: a typed builder, a compiler (fusion passes, memory plan, schedule) and the executor.
//
// Compiling a node list (op-table nodes plus the graph-only masked SDPA) gives an executable:
//  - stages: nodes grouped by fusion passes (residual add + rmsnorm in one pass per row; rmsnorm into the
//    matmuls that read it; q/k/v matmuls with bias in one stage, then rope + KV-cache write in one pass;
//    gate/up matmuls with SwiGLU as their epilogue; SDPA reading the cache in place, then the output
//    projection); every other node is a stage of its own;
//  - a memory plan: every intermediate value that is neither read before it is written, nor read after
//    the segment, nor persistent state (the KV cache) gets a buffer from an arena allocated at compile
//    time for the token-count bucket; buffers are reused by lifetime (in stage time, since the nodes of
//    a stage run concurrently);
//  - a schedule: ONE parallel region of the thread pool per run; all threads walk the stages with a spin
//    barrier between them.
// Per-step values (token count within the bucket, positions, sequence slots, token ids, KV length) are
// read from the node list given to each run, so one executable serves every step of its bucket.
//
// The builder makes such node lists from typed calls that check shapes and dtypes when the node is added:
//
//   mt_graph *g; mt_gval q, k, v, o;
//   MT_TRY(mt_graph_create(&g));
//   MT_TRY(mt_graph_input(g, "q", &q_tensor, &q));   // zero-copy binding; fails on non-contiguous rows
//   ...
//   MT_TRY(mt_graph_sdpa(g, q, k, v, MT_GVAL_NONE, true, 0, &o));
//   MT_TRY(mt_graph_output(g, o, "out", &out_tensor));  // the result is written there, no copy
//   MT_TRY(mt_graph_compile(g, pool, &exe));
//   MT_TRY(mt_graph_exec_run(exe, pool));
#ifndef MT_GRAPH_H
#define MT_GRAPH_H

#include <stdbool.h>
#include <stdint.h>
#include <stdio.h>

#include "../core/threadpool.h"
#include "mask.h"
#include "op.h"

// Graph-only op kinds, numbered after the op table's.
enum { MT_GOP_SDPA = MT_OP_COUNT, MT_GOP_END };

// Extra fields of a graph-only node (NULL ext array: none).
typedef struct mt_gext {
    const mt_tensor *mask; // MT_GOP_SDPA: optional additive F32 mask [>= keys, rows]
    bool causal;           // MT_GOP_SDPA
    int64_t kv_len;        // MT_GOP_SDPA: keys 0..kv_len-1 (0: all of k's ne[2])
} mt_gext;

typedef struct mt_graph_exec mt_graph_exec;

typedef struct mt_graph_compile_opts {
    int n_tokens;  // tokens of the node list being compiled (activation rows), >= 1
    int rows_cap;  // bucket capacity: buffers are sized for this many tokens (>= n_tokens)
    int n_threads; // threads that will run it (scratch per thread)
    const char *label;
    // Tensors whose final values must stay in place (read after the segment); regions overlapping them
    // are never relocated.
    const mt_tensor *const *keep;
    int n_keep;
} mt_graph_compile_opts;

// Compiles nodes[0..n) (checked already). Fails with a status (never asserts on the node list); the env
// METALLIC_GRAPH_INJECT_COMPILE_FAILURE=1 makes every compile fail (tests of the fallback).
// METALLIC_DUMP_GRAPH_PLAN=1 prints the plan to stderr.
mt_status mt_graph_compile_nodes(const mt_node *nodes, const mt_gext *ext, int n,
                                 const mt_graph_compile_opts *o, mt_graph_exec **out);
// Runs an executable over a node list of the same structure (same signature) and n_tokens <= rows_cap.
// `mask` (optional) gives per-row visible intervals to every attention stage. MT_ERR_RANGE when a value
// does not fit its planned buffer (the caller runs the nodes eagerly instead).
mt_status mt_graph_exec_run_nodes(mt_graph_exec *ex, const mt_node *nodes, const mt_gext *ext, int n,
                                  const mt_mask *mask, mt_pool *pool);
void mt_graph_exec_free(mt_graph_exec *ex);
size_t mt_graph_exec_bytes(const mt_graph_exec *ex); // arena + scratch + bookkeeping
int mt_graph_exec_n_stages(const mt_graph_exec *ex);
int mt_graph_exec_n_fusions(const mt_graph_exec *ex);
// The plan in text: stages, fusions, dtype decisions, buffers and sizes.
void mt_graph_exec_dump(const mt_graph_exec *ex, FILE *f);

// Structure hash of a node list: ops, parameters, dtypes, tensor identities and all dims except the
// token dimension of activations (so every token count of a bucket has the same signature).
uint64_t mt_graph_signature(const mt_node *nodes, const mt_gext *ext, int n);

// ---- typed builder ----

typedef int mt_gval;
#define MT_GVAL_NONE (-1)
#define MT_GRAPH_MAX_NODES 256
#define MT_GRAPH_MAX_VALUES 512

typedef struct mt_graph mt_graph;

mt_status mt_graph_create(mt_graph **out);
void mt_graph_free(mt_graph *g); // after every executable compiled from it

// An input bound to a caller tensor, zero-copy (the graph reads its memory). Fails early with the reason
// on an unsupported dtype or rows that are not contiguous.
mt_status mt_graph_input(mt_graph *g, const char *name, const mt_tensor *t, mt_gval *out);
mt_status mt_graph_rmsnorm(mt_graph *g, mt_gval x, mt_gval w, float eps, mt_gval *out);
mt_status mt_graph_matmul(mt_graph *g, mt_gval w, mt_gval x, mt_gval bias, mt_gval *out);
mt_status mt_graph_swiglu(mt_graph *g, mt_gval gate, mt_gval up, mt_gval *out);
mt_status mt_graph_add(mt_graph *g, mt_gval a, mt_gval b, mt_gval *out);
// q [hd, H, n_q, B], k/v [hd, KV, L, B] (the cache layout, read in place), mask [>= kv_len, n_q] or
// MT_GVAL_NONE; kv_len 0 = L; scale 0 = 1/sqrt(hd).
mt_status mt_graph_sdpa(mt_graph *g, mt_gval q, mt_gval k, mt_gval v, mt_gval mask, bool causal,
                        int64_t kv_len, float scale, mt_gval *out);
// Makes value v an output written straight into `dst` (same dtype and shape, contiguous).
mt_status mt_graph_output(mt_graph *g, mt_gval v, const char *name, mt_tensor *dst);
// A tensor view of a value: its dtype and shape (data is a placeholder until an executable runs).
mt_status mt_graph_value(const mt_graph *g, mt_gval v, mt_tensor *out);

typedef struct mt_graph_binding {
    const char *name;
    bool output;
    mt_dtype dtype;
    int64_t ne[MT_MAX_DIMS];
} mt_graph_binding;

mt_status mt_graph_compile(mt_graph *g, mt_pool *pool, mt_graph_exec **out);
// The executable's typed inputs and outputs, in the order they were declared.
int mt_graph_exec_layout(const mt_graph_exec *ex, const mt_graph_binding **out);
// Rebinds input or output `name` to another tensor of the same dtype and shape (zero-copy; fails with
// the reason on any layout mismatch).
mt_status mt_graph_exec_bind(mt_graph_exec *ex, const char *name, const mt_tensor *t);
mt_status mt_graph_exec_run(mt_graph_exec *ex, mt_pool *pool);

#endif
