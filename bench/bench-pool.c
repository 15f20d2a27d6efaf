// Thread-pool overhead: the cost of one mt_pool_run with an empty body (what every op pays to start and
// join its threads), back to back as in a decode step, and with a short gap between runs (the main thread
// doing a little serial work, e.g. sampling), and the cost of mt_pool_barrier inside a run. Prints
// microseconds per run (per barrier), median of 7 rounds.
//
// Build and run (from the repository root, after `make`):
//   cc -O2 -march=native -std=c11 -D_GNU_SOURCE -Iinclude -Isrc -pthread bench/bench-pool.c
//   build/libmetallic.a -lm -pthread -lcjson -o build/bench-pool && build/bench-pool [THREADS]
#include <stdio.h>
#include <stdlib.h>
#include <time.h>

#include "core/threadpool.h"

static double now(void) {
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (double)ts.tv_sec + 1e-9 * (double)ts.tv_nsec;
}

static void empty(void *ctx, int ith, int nth) {
    (void)ctx, (void)ith, (void)nth;
}

// Each thread adds to its own counter, so a lost or doubled run shows up in the check.
static void count(void *ctx, int ith, int nth) {
    (void)nth;
    ((long *)ctx)[ith * 16]++;
}

static void busy(double us) {
    double t0 = now();
    while ((now() - t0) * 1e6 < us) {
    }
}

static int cmp(const void *a, const void *b);

// Barriers: every thread bumps its own step counter, waits, then checks that every other thread has
// reached the same step (a barrier that lets a thread through early shows up as a mismatch).
enum { BAR_STEPS = 2000 };
typedef struct {
    mt_pool *p;
    _Atomic long steps[64 * 16];
    _Atomic int bad;
    double work_us;
} bar_ctx;

static void barriers(void *ctx, int ith, int nth) {
    bar_ctx *c = ctx;
    for (long s = 1; s <= BAR_STEPS; s++) {
        if (c->work_us > 0) busy(c->work_us * (ith + 1) / nth); // uneven work, as real stages have
        c->steps[16 * ith] = s;
        mt_pool_barrier(c->p, nth);
        for (int t = 0; t < nth && t < 64; t++)
            if (c->steps[16 * t] < s) c->bad = 1;
        mt_pool_barrier(c->p, nth); // nobody starts step s + 1 before all have checked step s
    }
}

// Microseconds per barrier (two per step), median of 7 rounds; exits on a failed check.
static double per_barrier(mt_pool *p, double work_us) {
    static bar_ctx c;
    double r[7];
    for (int k = 0; k < 7; k++) {
        c.p = p;
        c.work_us = work_us;
        for (int t = 0; t < 64 * 16; t++) c.steps[t] = 0;
        double t0 = now();
        mt_pool_run(p, barriers, &c);
        r[k] = (now() - t0) / (2.0 * BAR_STEPS) * 1e6;
        if (c.bad) {
            fprintf(stderr, "barrier let a thread through early\n");
            exit(1);
        }
    }
    qsort(r, 7, sizeof r[0], cmp);
    return r[3];
}

static int cmp(const void *a, const void *b) {
    double x = *(const double *)a, y = *(const double *)b;
    return x < y ? -1 : x > y;
}

// Median over rounds of microseconds per run; gap_us of serial work between runs (not counted).
static double per_run(mt_pool *p, int runs, double gap_us) {
    double r[7];
    for (int k = 0; k < 7; k++) {
        double spent = 0;
        for (int i = 0; i < runs; i++) {
            if (gap_us > 0) busy(gap_us);
            double t0 = now();
            mt_pool_run(p, empty, NULL);
            spent += now() - t0;
        }
        r[k] = spent / runs * 1e6;
    }
    qsort(r, 7, sizeof r[0], cmp);
    return r[3];
}

int main(int argc, char **argv) {
    int nth = argc > 1 ? atoi(argv[1]) : 2;
    mt_pool *p;
    if (mt_pool_create(nth, &p) != MT_OK) return 1;
    long counters[16 * 64] = {0};
    const int n_check = 100000;
    for (int i = 0; i < n_check; i++) mt_pool_run(p, count, counters);
    for (int t = 0; t < nth && t < 64; t++)
        if (counters[16 * t] != n_check) {
            fprintf(stderr, "thread %d ran %ld times, expected %d\n", t, counters[16 * t], n_check);
            return 1;
        }
    printf("| threads | case | us per run |\n| ---: | --- | ---: |\n");
    printf("| %d | back to back | %.2f |\n", nth, per_run(p, 20000, 0));
    printf("| %d | 20 us gap | %.2f |\n", nth, per_run(p, 2000, 20));
    printf("| %d | 1 ms gap | %.2f |\n", nth, per_run(p, 100, 1000));
    printf("| %d | barrier, no work between | %.2f |\n", nth, per_barrier(p, 0));
    printf("| %d | barrier, 0-10 us uneven work between (us per barrier incl. work) | %.2f |\n", nth,
           per_barrier(p, 10));
    mt_pool_free(p);
    return 0;
}
