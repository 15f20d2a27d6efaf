// A fixed pool of worker threads, created once. mt_pool_run executes fn(ctx, ith, nth) on every thread
// (the caller is thread 0) and returns when all are done. No thread is created per op; idle workers spin
// briefly before sleeping, so back-to-back runs cost microseconds.
#ifndef MT_THREADPOOL_H
#define MT_THREADPOOL_H

#include "status.h"

typedef struct mt_pool mt_pool;
typedef void (*mt_pool_fn)(void *ctx, int ith, int nth);

// n_threads <= 0 means one per online core.
mt_status mt_pool_create(int n_threads, mt_pool **out);
void mt_pool_free(mt_pool *p);
int mt_pool_size(const mt_pool *p);
// Runs fn on all threads. A NULL pool runs fn(ctx, 0, 1) inline.
void mt_pool_run(mt_pool *p, mt_pool_fn fn, void *ctx);
// Inside fn: waits until all nth threads of the current run have called it (nth as passed to fn; every
// thread must call it the same number of times). Spins for a while, then sleeps until the last arrives.
void mt_pool_barrier(mt_pool *p, int nth);
// The [begin, end) share of n items for thread ith of nth.
static inline void mt_split(long n, int ith, int nth, long *begin, long *end) {
    long per = (n + nth - 1) / nth;
    *begin = per * ith < n ? per * ith : n;
    *end = *begin + per < n ? *begin + per : n;
}
int mt_cpu_count(void);

#endif
