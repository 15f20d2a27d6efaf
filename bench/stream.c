// STREAM-style memory bandwidth: "read" sums a 1 GiB array of 64-bit integers (integer adds vectorize
// without reassociation flags, so the loop is bound by loads), "triad" computes a = b + s*c over three
// arrays of doubles (2 reads + 1 write per element, STREAM's byte count: write-allocate traffic is not
// counted). Each is run with 1 and 2 threads (pthreads, one contiguous slice each, first-touched by the
// thread that will read it), best of 5, in GB/s (1e9 bytes/s). This is the ceiling a decode step that
// streams the weights is measured against.
//
//   cc -O3 -march=native -std=c11 -D_GNU_SOURCE -pthread bench/stream.c -o build/stream
//   build/stream [-m MIB] [-t 1,2] [-r 5] [--json]
#include <pthread.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

typedef struct {
    uint64_t *arr;          // read test
    double *a, *b, *c;      // triad test
    size_t n_read, n_triad; // elements in the whole array
    int ith, nth;
    int op; // 0 init, 1 read, 2 triad
    uint64_t sum;
} job;

static void slice(size_t n, int ith, int nth, size_t *lo, size_t *hi) {
    size_t per = (n + (size_t)nth - 1) / (size_t)nth;
    *lo = per * (size_t)ith < n ? per * (size_t)ith : n;
    *hi = *lo + per < n ? *lo + per : n;
}

static void *worker(void *p) {
    job *j = p;
    size_t lo, hi;
    if (j->op == 0 || j->op == 1) {
        slice(j->n_read, j->ith, j->nth, &lo, &hi);
        if (j->op == 0) {
            for (size_t i = lo; i < hi; i++) j->arr[i] = i * 0x9e3779b97f4a7c15ull;
        } else {
            // 8 independent sums: no add chain limits the loads, and -O2 can pack them into vectors
            uint64_t s[8] = {0};
            const uint64_t *restrict p = j->arr;
            size_t i = lo;
            for (; i + 8 <= hi; i += 8)
                for (int k = 0; k < 8; k++) s[k] += p[i + (size_t)k];
            for (; i < hi; i++) s[0] += p[i];
            j->sum = s[0] + s[1] + s[2] + s[3] + s[4] + s[5] + s[6] + s[7];
        }
    }
    if (j->op == 0 || j->op == 2) {
        slice(j->n_triad, j->ith, j->nth, &lo, &hi);
        if (j->op == 0) {
            for (size_t i = lo; i < hi; i++) {
                j->a[i] = 0.5;
                j->b[i] = (double)(i % 1000) * 0.25;
                j->c[i] = (double)(i % 7) - 3.0;
            }
        } else {
            const double s = 3.0;
            double *restrict a = j->a;
            const double *restrict b = j->b, *restrict c = j->c;
            for (size_t i = lo; i < hi; i++) a[i] = b[i] + s * c[i];
        }
    }
    return NULL;
}

static double now_s(void) {
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (double)ts.tv_sec + (double)ts.tv_nsec * 1e-9;
}

// Runs op on nth threads (the caller is thread 0); returns the wall time and the sum of the read sums.
static double run(job *proto, int nth, int op, uint64_t *sum) {
    pthread_t tid[64];
    job js[64];
    memset(js, 0, sizeof js);
    if (nth < 1 || nth > 64) nth = 1; // parsing keeps it in range; this bounds js[] for the analyzer too
    for (int t = 0; t < nth; t++) {
        js[t] = *proto;
        js[t].ith = t;
        js[t].nth = nth;
        js[t].op = op;
        js[t].sum = 0;
    }
    double t0 = now_s();
    for (int t = 1; t < nth; t++)
        if (pthread_create(&tid[t], NULL, worker, &js[t])) {
            fprintf(stderr, "stream: pthread_create failed\n");
            exit(1);
        }
    worker(&js[0]);
    for (int t = 1; t < nth; t++) pthread_join(tid[t], NULL);
    double dt = now_s() - t0;
    if (sum) {
        *sum = 0;
        for (int t = 0; t < nth; t++) *sum += js[t].sum;
    }
    return dt;
}

int main(int argc, char **argv) {
    long mib = 1024;
    int threads[8] = {1, 2}, n_threads = 2, reps = 5, json = 0;
    for (int i = 1; i < argc; i++) {
        const char *a = argv[i];
        if (!strcmp(a, "--json")) {
            json = 1;
        } else if ((!strcmp(a, "-m") || !strcmp(a, "-r") || !strcmp(a, "-t")) && i + 1 < argc) {
            const char *v = argv[++i];
            char *end;
            if (a[1] == 't') {
                n_threads = 0;
                for (const char *p = v; n_threads < 8;) {
                    long t = strtol(p, &end, 10);
                    if (end == p || t < 1 || t > 64 || (*end && *end != ',')) {
                        fprintf(stderr,
                                "stream: -t '%s': expected thread counts in [1, 64] separated by commas\n",
                                v);
                        return 2;
                    }
                    threads[n_threads++] = (int)t;
                    if (!*end) break;
                    p = end + 1;
                }
            } else {
                long x = strtol(v, &end, 10);
                if (end == v || *end || x < 1 || x > (a[1] == 'm' ? 65536 : 1000)) {
                    fprintf(stderr, "stream: %s '%s': out of range\n", a, v);
                    return 2;
                }
                if (a[1] == 'm')
                    mib = x;
                else
                    reps = (int)x;
            }
        } else {
            fprintf(stderr,
                    "stream: %s: unknown flag or missing value (usage: stream [-m MIB] [-t 1,2] [-r 5] "
                    "[--json])\n",
                    a);
            return 2;
        }
    }
    size_t bytes = (size_t)mib << 20;
    job j;
    memset(&j, 0, sizeof j);
    j.n_read = bytes / sizeof(uint64_t);
    j.n_triad = bytes / 4 / sizeof(double); // three arrays of a quarter each: well past any cache
    j.arr = aligned_alloc(64, j.n_read * sizeof(uint64_t));
    j.a = aligned_alloc(64, j.n_triad * sizeof(double));
    j.b = aligned_alloc(64, j.n_triad * sizeof(double));
    j.c = aligned_alloc(64, j.n_triad * sizeof(double));
    if (!j.arr || !j.a || !j.b || !j.c) {
        fprintf(stderr, "stream: cannot allocate %ld MiB\n", mib * 7 / 4);
        return 1;
    }
    int max_t = 1;
    for (int k = 0; k < n_threads; k++) max_t = threads[k] > max_t ? threads[k] : max_t;
    run(&j, max_t, 0, NULL);

    // The expected sum checks that the read loop really read every element.
    uint64_t want = 0;
    for (size_t i = 0; i < j.n_read; i++) want += i * 0x9e3779b97f4a7c15ull;

    if (json)
        printf("{\"array_mib\": %ld, \"reps\": %d, \"results\": [", mib, reps);
    else {
        printf("| test | threads | bytes/pass | best GB/s | mean GB/s |\n");
        printf("| --- | ---: | ---: | ---: | ---: |\n");
    }
    int first = 1;
    for (int op = 1; op <= 2; op++) {
        double moved = op == 1 ? (double)j.n_read * 8 : (double)j.n_triad * 24;
        for (int k = 0; k < n_threads; k++) {
            double best = 1e30, total = 0;
            for (int r = 0; r < reps; r++) {
                uint64_t sum;
                double dt = run(&j, threads[k], op, &sum);
                if (op == 1 && sum != want) {
                    fprintf(stderr, "stream: read sum %llu != %llu\n", (unsigned long long)sum,
                            (unsigned long long)want);
                    return 1;
                }
                best = dt < best ? dt : best;
                total += dt;
            }
            double gbs = moved / best / 1e9, mean = moved / (total / reps) / 1e9;
            const char *name = op == 1 ? "read" : "triad";
            if (json)
                printf("%s{\"test\": \"%s\", \"threads\": %d, \"bytes\": %.0f, \"best_gbs\": %.3f, "
                       "\"mean_gbs\": %.3f}",
                       first ? "" : ", ", name, threads[k], moved, gbs, mean);
            else
                printf("| %s | %d | %.0f MiB | %.2f | %.2f |\n", name, threads[k], moved / (1 << 20), gbs,
                       mean);
            first = 0;
            fflush(stdout);
        }
    }
    if (json) printf("]}\n");
    free(j.arr);
    free(j.a);
    free(j.b);
    free(j.c);
    return 0;
}
