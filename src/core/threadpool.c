// Thread pool: workers created once, woken per run by a generation counter.
//
// Decode issues a few hundred runs per token, each a few microseconds of work, so a condition-variable
// wake-up per run (tens of microseconds, more when the scheduler is busy) would be a large share of a
// token. Workers therefore spin on the generation counter for a while after each run and only then sleep
// on the condition variable; the caller spins the same way for the workers to finish, and so do threads at
// a barrier. Spin budgets adapt to how waits end (see SPIN_MIN). The sleep paths use
// the usual store-then-check handshake on both sides (sequentially consistent atomics), so a wake-up is
// never lost: whoever publishes checks for sleepers after publishing, and a sleeper re-checks after
// announcing itself under the mutex.
#include "threadpool.h"

#include <pthread.h>
#include <stdbool.h>
#include <stdatomic.h>
#include <unistd.h>

#if defined(__x86_64__) || defined(__i386__)
#include <immintrin.h>
#define cpu_relax() _mm_pause()
#else
#define cpu_relax() ((void)0)
#endif

// Spin budget (iterations of `pause`, ~50 ns each on the 2-core AMD EPYC) before sleeping. It adapts per
// waiting thread: a wait that ends while spinning doubles it (up to SPIN_MAX, ~400 us, longer than the gap
// between two ops of a decode step), a wait that ends in sleep halves it (down to SPIN_MIN, ~3 us). When
// another process holds the second core, the thread being waited for is often descheduled, waits run out
// of spin, and the budget shrinks so the spinner stops taking time from it; on a quiet machine back-to-back
// runs keep it at the top.
enum { SPIN_MIN = 1 << 6, SPIN_START = 1 << 10, SPIN_MAX = 1 << 13 };

static int spin_adapt(int budget, bool spun) {
    if (spun) return budget < SPIN_MAX / 2 ? budget * 2 : SPIN_MAX;
    return budget > 2 * SPIN_MIN ? budget / 2 : SPIN_MIN;
}

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
    int caller_spin; // the caller's adaptive spin budget (only the calling thread touches it)
    mt_pool_fn fn;
    void *ctx;
    // barrier: threads arrived in the current phase, and the phase number
    _Alignas(64) atomic_int bar_count;
    atomic_uint bar_phase;
    atomic_int bar_sleepers; // threads waiting on bar_cv
    pthread_cond_t bar_cv;
};

typedef struct {
    mt_pool *p;
    int ith;
} worker_arg;

// Spins until *g differs from seen (returns true) or the spin budget runs out (false). No sched_yield:
// on a busy machine a yielding thread loses its core for a whole time slice, while a thread woken from
// the condition variable is scheduled promptly.
static bool spin_for_change(const atomic_ulong *g, unsigned long seen, int budget) {
    for (int i = 1; i <= budget; i++) {
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
    int budget = SPIN_START;
    for (;;) {
        const bool spun = spin_for_change(&p->generation, seen, budget);
        budget = spin_adapt(budget, spun);
        if (!spun) {
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
    p->caller_spin = SPIN_START;
    atomic_init(&p->bar_count, 0);
    atomic_init(&p->bar_phase, 0);
    atomic_init(&p->bar_sleepers, 0);
    pthread_cond_init(&p->bar_cv, NULL);
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
    pthread_cond_destroy(&p->bar_cv);
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
    bool spun = true;
    for (int i = 1; atomic_load_explicit(&p->pending, memory_order_acquire) > 0; i++) {
        if (i <= p->caller_spin) {
            cpu_relax();
            continue;
        }
        spun = false;
        pthread_mutex_lock(&p->mu);
        atomic_store(&p->caller_sleeping, 1);
        while (atomic_load(&p->pending) > 0) pthread_cond_wait(&p->done, &p->mu);
        atomic_store(&p->caller_sleeping, 0);
        pthread_mutex_unlock(&p->mu);
        break;
    }
    p->caller_spin = spin_adapt(p->caller_spin, spun);
}

// Each thread's adaptive spin budget at barriers (a thread runs in one pool at a time).
static _Thread_local int tl_bar_spin = SPIN_START;

void mt_pool_barrier(mt_pool *p, int nth) {
    if (!p || nth <= 1) return;
    const unsigned phase = atomic_load_explicit(&p->bar_phase, memory_order_acquire);
    if (atomic_fetch_add_explicit(&p->bar_count, 1, memory_order_acq_rel) == nth - 1) {
        atomic_store_explicit(&p->bar_count, 0, memory_order_relaxed);
        atomic_fetch_add(&p->bar_phase, 1); // seq_cst: pairs with bar_sleepers below
        if (atomic_load(&p->bar_sleepers) > 0) {
            pthread_mutex_lock(&p->mu);
            pthread_cond_broadcast(&p->bar_cv);
            pthread_mutex_unlock(&p->mu);
        }
        return;
    }
    // Spin, then sleep instead of yielding: with another process on the core, sched_yield hands it a whole
    // time slice per barrier, while a sleeper is woken as soon as the last thread arrives.
    const int budget = tl_bar_spin;
    for (int i = 0; i < budget; i++) {
        if (atomic_load_explicit(&p->bar_phase, memory_order_acquire) != phase) {
            tl_bar_spin = spin_adapt(budget, true);
            return;
        }
        cpu_relax();
    }
    tl_bar_spin = spin_adapt(budget, false);
    pthread_mutex_lock(&p->mu);
    atomic_fetch_add(&p->bar_sleepers, 1);
    while (atomic_load(&p->bar_phase) == phase) pthread_cond_wait(&p->bar_cv, &p->mu);
    atomic_fetch_sub(&p->bar_sleepers, 1);
    pthread_mutex_unlock(&p->mu);
}
