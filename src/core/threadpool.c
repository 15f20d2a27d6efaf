// Thread pool: workers created once, woken per run by a generation counter.
//
// Decode issues a few hundred runs per token, each a few microseconds of work, so a condition-variable
// wake-up per run (tens of microseconds, more when the scheduler is busy) would be a large share of a
// token. Workers therefore spin on the generation counter for a while after each run and only then sleep
// on the condition variable; the caller spins the same way for the workers to finish. The sleep paths use
// the usual store-then-check handshake on both sides (sequentially consistent atomics), so a wake-up is
// never lost: whoever publishes checks for sleepers after publishing, and a sleeper re-checks after
// announcing itself under the mutex.
#include "threadpool.h"

#include <pthread.h>
#include <sched.h>
#include <stdbool.h>
#include <stdatomic.h>
#include <unistd.h>

#if defined(__x86_64__) || defined(__i386__)
#include <immintrin.h>
#define cpu_relax() _mm_pause()
#else
#define cpu_relax() ((void)0)
#endif

// Spin iterations before sleeping: about 50 microseconds of pause instructions (~50 ns each on the
// 2-core AMD EPYC), longer than the gap
// between two ops of a decode step, much shorter than the pause between user turns.
enum { SPIN_ITERS = 1 << 10, YIELD_EVERY = 1 << 8 };

struct mt_pool {
    int n;
    pthread_t *threads;
    pthread_mutex_t mu;
    pthread_cond_t start, done;
    _Alignas(64) atomic_ulong generation;
    _Alignas(64) atomic_int pending; // workers still running the current generation
    atomic_int sleepers;             // workers waiting on `start`
    atomic_int caller_sleeping;      // the caller waits on `done`
    atomic_int stop;
    mt_pool_fn fn;
    void *ctx;
    // barrier: threads arrived in the current phase, and the phase number
    _Alignas(64) atomic_int bar_count;
    atomic_uint bar_phase;
};

typedef struct {
    mt_pool *p;
    int ith;
} worker_arg;

// Spins until *g differs from seen (returns true) or the spin budget runs out (false). No sched_yield:
// on a busy machine a yielding thread loses its core for a whole time slice, while a thread woken from
// the condition variable is scheduled promptly.
static bool spin_for_change(const atomic_ulong *g, unsigned long seen) {
    for (int i = 1; i <= SPIN_ITERS; i++) {
        if (atomic_load_explicit(g, memory_order_acquire) != seen) return true;
        cpu_relax();
    }
    return false;
}

static void *worker(void *arg_) {
    worker_arg *arg = arg_;
    mt_pool *p = arg->p;
    int ith = arg->ith;
    free(arg);
    unsigned long seen = 0;
    for (;;) {
        if (!spin_for_change(&p->generation, seen)) {
            pthread_mutex_lock(&p->mu);
            atomic_fetch_add(&p->sleepers, 1);
            while (atomic_load(&p->generation) == seen && !atomic_load(&p->stop))
                pthread_cond_wait(&p->start, &p->mu);
            atomic_fetch_sub(&p->sleepers, 1);
            pthread_mutex_unlock(&p->mu);
        }
        if (atomic_load(&p->stop)) return NULL;
        seen = atomic_load_explicit(&p->generation, memory_order_acquire);
        p->fn(p->ctx, ith, p->n);
        if (atomic_fetch_sub(&p->pending, 1) == 1 && // seq_cst: pairs with caller_sleeping

            atomic_load(&p->caller_sleeping)) {
            pthread_mutex_lock(&p->mu);
            pthread_cond_signal(&p->done);
            pthread_mutex_unlock(&p->mu);
        }
    }
}

int mt_cpu_count(void) {
    long n = sysconf(_SC_NPROCESSORS_ONLN);
    return n > 0 ? (int)n : 1;
}

mt_status mt_pool_create(int n_threads, mt_pool **out) {
    if (n_threads <= 0) n_threads = mt_cpu_count();
    if (n_threads > 512) return mt_fail(MT_ERR_INVALID, "--threads %d is more than 512", n_threads);
    mt_pool *p = mt_calloc(1, sizeof *p, "thread pool");
    if (!p) return MT_ERR_NOMEM;
    p->n = n_threads;
    p->threads = mt_calloc((size_t)n_threads, sizeof(pthread_t), "thread pool");
    if (!p->threads) {
        free(p);
        return MT_ERR_NOMEM;
    }
    pthread_mutex_init(&p->mu, NULL);
    pthread_cond_init(&p->start, NULL);
    pthread_cond_init(&p->done, NULL);
    atomic_init(&p->generation, 0);
    atomic_init(&p->pending, 0);
    atomic_init(&p->sleepers, 0);
    atomic_init(&p->caller_sleeping, 0);
    atomic_init(&p->stop, 0);
    atomic_init(&p->bar_count, 0);
    atomic_init(&p->bar_phase, 0);
    for (int i = 1; i < n_threads; i++) {
        worker_arg *a = mt_malloc(sizeof *a, "thread pool");
        if (!a) {
            p->n = i;
            mt_pool_free(p);
            return MT_ERR_NOMEM;
        }
        a->p = p;
        a->ith = i;
        if (pthread_create(&p->threads[i], NULL, worker, a) != 0) {
            free(a);
            p->n = i;
            mt_pool_free(p);
            return mt_fail(MT_ERR_INTERNAL, "cannot create worker thread %d", i);
        }
    }
    *out = p;
    return MT_OK;
}

void mt_pool_free(mt_pool *p) {
    if (!p) return;
    pthread_mutex_lock(&p->mu);
    atomic_store(&p->stop, 1);
    atomic_fetch_add(&p->generation, 1); // spinning workers see a change and then the stop flag
    pthread_cond_broadcast(&p->start);
    pthread_mutex_unlock(&p->mu);
    for (int i = 1; i < p->n; i++) pthread_join(p->threads[i], NULL);
    pthread_mutex_destroy(&p->mu);
    pthread_cond_destroy(&p->start);
    pthread_cond_destroy(&p->done);
    free(p->threads);
    free(p);
}

int mt_pool_size(const mt_pool *p) {
    return p ? p->n : 1;
}

void mt_pool_run(mt_pool *p, mt_pool_fn fn, void *ctx) {
    if (!p || p->n == 1) {
        fn(ctx, 0, 1);
        return;
    }
    p->fn = fn;
    p->ctx = ctx;
    atomic_store_explicit(&p->pending, p->n - 1, memory_order_relaxed);
    atomic_fetch_add(&p->generation, 1); // publishes fn, ctx and pending (seq_cst)
    if (atomic_load(&p->sleepers) > 0) {
        pthread_mutex_lock(&p->mu);
        pthread_cond_broadcast(&p->start);
        pthread_mutex_unlock(&p->mu);
    }
    fn(ctx, 0, p->n);
    for (int i = 1; atomic_load_explicit(&p->pending, memory_order_acquire) > 0; i++) {
        if (i <= SPIN_ITERS) {
            cpu_relax();
            continue;
        }
        pthread_mutex_lock(&p->mu);
        atomic_store(&p->caller_sleeping, 1);
        while (atomic_load(&p->pending) > 0) pthread_cond_wait(&p->done, &p->mu);
        atomic_store(&p->caller_sleeping, 0);
        pthread_mutex_unlock(&p->mu);
        break;
    }
}

void mt_pool_barrier(mt_pool *p, int nth) {
    if (!p || nth <= 1) return;
    const unsigned phase = atomic_load_explicit(&p->bar_phase, memory_order_acquire);
    if (atomic_fetch_add_explicit(&p->bar_count, 1, memory_order_acq_rel) == nth - 1) {
        atomic_store_explicit(&p->bar_count, 0, memory_order_relaxed);
        atomic_fetch_add_explicit(&p->bar_phase, 1, memory_order_release);
        return;
    }
    for (int i = 1; atomic_load_explicit(&p->bar_phase, memory_order_acquire) == phase; i++) {
        if (i % YIELD_EVERY == 0)
            sched_yield();
        else
            cpu_relax();
    }
}
