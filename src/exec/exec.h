// The dispatcher: runs a node list through the path the backend registry picks for each op.
//
// Consecutive graph-selected nodes form a segment. A segment is compiled once into an executable
// (graph.h) and kept in an executable cache under (segment signature, token-count bucket, KV-length
// bucket, dtype policy, device); later steps whose shapes fall in the same buckets reuse it, with their
// per-step values (positions, sequence slots, token ids, KV length) read from the node list. Legacy nodes
// run eagerly between segments. A segment whose compile fails runs eagerly too, with a log line and a
// GraphCompileFailed event (once per key); with every op on legacy the run is exactly mt_eager_run.
//
//   mt_exec *e;
//   MT_TRY(mt_exec_create(&(mt_exec_opts){.pool = pool}, &e));
//   const mt_tensor *out[] = {&x};
//   MT_TRY(mt_exec_run(e, &(mt_exec_step){nodes, n, n_tokens, out, 1, "body"}));
#ifndef MT_EXEC_H
#define MT_EXEC_H

#include <stdint.h>

#include "../core/threadpool.h"
#include "cache.h"
#include "op.h"
#include "registry.h"

typedef struct mt_exec mt_exec;

typedef struct mt_exec_opts {
    mt_pool *pool;               // not owned
    const mt_registry *registry; // NULL: mt_registry_global() at every run
    const char *name;            // cache name (NULL: "graph_exec")
} mt_exec_opts;

typedef struct mt_exec_step {
    const mt_node *nodes; // checked already (mt_op_check)
    int n_nodes;
    int n_tokens; // activation rows of this step (the token-count bucket comes from it)
    // tensors the caller reads after the call: their final values stay in place
    const mt_tensor *const *outputs;
    int n_outputs;
    const char *label; // names the segments in logs and dumps
} mt_exec_step;

typedef struct mt_exec_stats {
    uint64_t runs;
    uint64_t graph_segments;  // segment runs on the graph path
    uint64_t legacy_segments; // node runs on the legacy path (one per run of consecutive legacy nodes)
    uint64_t compiles, compile_failures, fallbacks;
    uint64_t kv_bytes_copied; // attention reads the cache in place on both paths: stays 0
} mt_exec_stats;

// Declares the ops the CPU graph compiler lowers (mt_registry_set_graph_capable) and creates a private
// executable cache and mask arena.
mt_status mt_exec_create(const mt_exec_opts *o, mt_exec **out);
void mt_exec_free(mt_exec *e);
mt_status mt_exec_run(mt_exec *e, const mt_exec_step *step);
void mt_exec_get_stats(const mt_exec *e, mt_exec_stats *out);
mt_exec_cache *mt_exec_get_cache(mt_exec *e);
struct mt_mask_arena *mt_exec_get_masks(mt_exec *e);
// Power-of-two bucket capacity for a token count (1, 2, 4, ...).
int mt_exec_rows_bucket(int n_tokens);

#endif
