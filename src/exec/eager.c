// The legacy path: every node runs its CPU kernel (the fast one where it exists, else the reference) as
// one parallel region of the pool, in order.
#include "eager.h"

#include <string.h>

#include "../backend/cuda/backend-cuda.h"
#include "../core/metrics.h"
#include "../core/telemetry.h"

static void run_node(void *ctx, int ith, int nth) {
    const mt_node *n = ctx;
    mt_op_cpu_impl(n)(n, ith, nth);
}

mt_status mt_eager_run(const mt_node *nodes, int n_nodes, mt_pool *pool) {
    if (n_nodes < 0 || (n_nodes > 0 && !nodes))
        return mt_fail(MT_ERR_INVALID, "eager: bad node list (%d nodes at %p)", n_nodes, (const void *)nodes);
    for (int i = 0; i < n_nodes; i++) {
        mt_status s = mt_op_check(&nodes[i]);
        if (s != MT_OK) {
            // The message buffer is reused by mt_fail, so copy the reason out first.
            char why[400];
            snprintf(why, sizeof why, "%s", mt_last_error());
            return mt_fail(s, "node %d (%s, %s): %s", i, mt_op_name(nodes[i].op),
                           nodes[i].label ? nodes[i].label : "no label", why);
        }
    }
    mt_eager_run_unchecked(nodes, n_nodes, pool);
    return MT_OK;
}

void mt_eager_run_unchecked(const mt_node *nodes, int n_nodes, mt_pool *pool) {
    if (mt_tel_profiling()) {
        // latency mode: each node's parallel region is timed and recorded under the caller's scope
        for (int i = 0; i < n_nodes; i++) {
            const mt_op_def *d = mt_op_get(nodes[i].op);
            mt_op_impl impl = mt_op_cpu_impl(&nodes[i]);
            // the seed's dispatch event: which kernel, for which op, over how many workers
            mt_metrics_emitf("GpuKernelDispatched",
                             "\"kernel_name\":\"cpu_%s_%s\",\"op_name\":\"%s\",\"thread_groups\":%d", d->name,
                             impl == d->cpu_ref ? "ref" : "fast", nodes[i].label ? nodes[i].label : d->name,
                             mt_pool_size(pool));
            uint64_t t0 = mt_tel_now_ns();
            mt_pool_run(pool, run_node, (void *)&nodes[i]);
            double us = (double)(mt_tel_now_ns() - t0) / 1e3;
            mt_tel_op(nodes[i].label ? nodes[i].label : mt_op_name(nodes[i].op), "legacy", "cpu", us);
        }
        return;
    }
    for (int i = 0; i < n_nodes; i++) mt_pool_run(pool, run_node, (void *)&nodes[i]);
}

mt_status mt_eager_run_cuda(const mt_node *nodes, int n_nodes) {
    for (int i = 0; i < n_nodes; i++) {
        const mt_op_def *d = mt_op_get(nodes[i].op);
        if (!d || !d->cuda)
            return mt_fail(MT_ERR_UNSUPPORTED, "node %d (%s): no CUDA kernel in this build", i,
                           mt_op_name(nodes[i].op));
#ifdef MT_CUDA
        if (mt_tel_profiling()) { // latency mode: each node timed with device events
            double us = 0;
            MT_TRY(mt_cuda_timer_begin());
            MT_TRY(d->cuda(&nodes[i]));
            MT_TRY(mt_cuda_timer_end(&us));
            mt_tel_op(nodes[i].label ? nodes[i].label : d->name, "legacy", "cuda", us);
            continue;
        }
#endif
        mt_status s = d->cuda(&nodes[i]);
        if (s != MT_OK) return s;
    }
    return MT_OK;
}
