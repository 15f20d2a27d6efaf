// The legacy path: runs a node list eagerly, one op after another, each split over the thread pool.
#ifndef MT_EAGER_H
#define MT_EAGER_H

#include "../core/threadpool.h"
#include "op.h"

// Checks every node first (returns the first failure, naming the node), then runs them in order.
mt_status mt_eager_run(const mt_node *nodes, int n_nodes, mt_pool *pool);
// Runs without the checks (the model validated its graph once at load).
void mt_eager_run_unchecked(const mt_node *nodes, int n_nodes, mt_pool *pool);
// Device path: enqueues each node's CUDA launcher in order (tensors in device memory, checks done by the
// caller); MT_ERR_UNSUPPORTED naming the node when an op has no CUDA kernel or the build has no CUDA.
mt_status mt_eager_run_cuda(const mt_node *nodes, int n_nodes);

#endif
