#include "threadpool.h"

#include <pthread.h>
#include <unistd.h>

// Workers sleep on a condition variable between runs; a run is one generation number. Decode issues
// a few hundred runs per token, so each run costs one broadcast and one wake-up per worker.
struct mt_pool {
    int n;
    pthread_t *threads;
    pthread_mutex_t mu;
    pthread_cond_t start, done;
    unsigned long generation;
    int pending;
    int stop;
    mt_pool_fn fn;
    void *ctx;
};

typedef struct {
    mt_pool *p;
    int ith;
} worker_arg;

static void *worker(void *arg_) {
    worker_arg *arg = arg_;
    mt_pool *p = arg->p;
    int ith = arg->ith;
    free(arg);
    unsigned long seen = 0;
    for (;;) {
        pthread_mutex_lock(&p->mu);
        while (p->generation == seen && !p->stop) pthread_cond_wait(&p->start, &p->mu);
        if (p->stop) {
            pthread_mutex_unlock(&p->mu);
            return NULL;
        }
        seen = p->generation;
        mt_pool_fn fn = p->fn;
        void *ctx = p->ctx;
        pthread_mutex_unlock(&p->mu);
        fn(ctx, ith, p->n);
        pthread_mutex_lock(&p->mu);
        if (--p->pending == 0) pthread_cond_signal(&p->done);
        pthread_mutex_unlock(&p->mu);
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
    p->stop = 1;
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
    pthread_mutex_lock(&p->mu);
    p->fn = fn;
    p->ctx = ctx;
    p->pending = p->n - 1;
    p->generation++;
    pthread_cond_broadcast(&p->start);
    pthread_mutex_unlock(&p->mu);
    fn(ctx, 0, p->n);
    pthread_mutex_lock(&p->mu);
    while (p->pending > 0) pthread_cond_wait(&p->done, &p->mu);
    pthread_mutex_unlock(&p->mu);
}
