// FMA peak of one core: 12 independent chains of F32 fused multiply-adds (enough to cover the latency of
// two pipes), 256-bit and, where the CPU has AVX-512F, 512-bit registers. This is the ceiling a prefill
// GEMM is measured against (GFLOP/s = 2 flops per lane per FMA).
//
//   cc -O2 -march=native -std=c11 -D_GNU_SOURCE bench/fma-peak.c -o build/fma-peak && build/fma-peak
#include <immintrin.h>
#include <stdio.h>
#include <time.h>

static double now_s(void) {
    struct timespec t;
    clock_gettime(CLOCK_MONOTONIC, &t);
    return (double)t.tv_sec + (double)t.tv_nsec * 1e-9;
}

enum { CHAINS = 12 };
static const long ITERS = 40000000;

static float sum_ymm(__m256 v) {
    float o[8], s = 0;
    _mm256_storeu_ps(o, v);
    for (int j = 0; j < 8; j++) s += o[j];
    return s;
}

// One timed loop per register width: the same chains with that width's type and intrinsics.
#define FMA_PEAK(NAME, VT, SET1, FMADD, LANES, SUM)                                                          \
    static void NAME(void) {                                                                                 \
        VT a[CHAINS];                                                                                        \
        const VT b = SET1(1.0000001f), c = SET1(1e-7f);                                                      \
        for (int i = 0; i < CHAINS; i++) a[i] = SET1((float)i);                                              \
        const double t0 = now_s();                                                                           \
        for (long it = 0; it < ITERS; it++)                                                                  \
            _Pragma("GCC unroll 12") for (int i = 0; i < CHAINS; i++) a[i] = FMADD(a[i], b, c);              \
        const double t = now_s() - t0;                                                                       \
        float s = 0;                                                                                         \
        for (int i = 0; i < CHAINS; i++) s += SUM(a[i]);                                                     \
        printf("%d-bit FMA: %.1f GFLOP/s per core (checksum %g)\n", LANES * 32,                              \
               (double)ITERS * CHAINS * 2 * LANES / t / 1e9, s);                                             \
    }
FMA_PEAK(run_ymm, __m256, _mm256_set1_ps, _mm256_fmadd_ps, 8, sum_ymm)
#ifdef __AVX512F__
FMA_PEAK(run_zmm, __m512, _mm512_set1_ps, _mm512_fmadd_ps, 16, _mm512_reduce_add_ps)
#endif

int main(void) {
    run_ymm();
#ifdef __AVX512F__
    run_zmm();
#else
    printf("512-bit FMA: not compiled (no AVX-512F)\n");
#endif
    return 0;
}
