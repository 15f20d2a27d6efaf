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

static void run_ymm(void) {
    __m256 a[CHAINS];
    const __m256 b = _mm256_set1_ps(1.0000001f), c = _mm256_set1_ps(1e-7f);
    for (int i = 0; i < CHAINS; i++) a[i] = _mm256_set1_ps((float)i);
    const double t0 = now_s();
    for (long it = 0; it < ITERS; it++)
#pragma GCC unroll 12
        for (int i = 0; i < CHAINS; i++) a[i] = _mm256_fmadd_ps(a[i], b, c);
    const double t = now_s() - t0;
    float s = 0, o[8];
    for (int i = 0; i < CHAINS; i++) {
        _mm256_storeu_ps(o, a[i]);
        for (int j = 0; j < 8; j++) s += o[j];
    }
    printf("256-bit FMA: %.1f GFLOP/s per core (checksum %g)\n", (double)ITERS * CHAINS * 16 / t / 1e9, s);
}

#ifdef __AVX512F__
static void run_zmm(void) {
    __m512 a[CHAINS];
    const __m512 b = _mm512_set1_ps(1.0000001f), c = _mm512_set1_ps(1e-7f);
    for (int i = 0; i < CHAINS; i++) a[i] = _mm512_set1_ps((float)i);
    const double t0 = now_s();
    for (long it = 0; it < ITERS; it++)
#pragma GCC unroll 12
        for (int i = 0; i < CHAINS; i++) a[i] = _mm512_fmadd_ps(a[i], b, c);
    const double t = now_s() - t0;
    float s = 0;
    for (int i = 0; i < CHAINS; i++) s += _mm512_reduce_add_ps(a[i]);
    printf("512-bit FMA: %.1f GFLOP/s per core (checksum %g)\n", (double)ITERS * CHAINS * 32 / t / 1e9, s);
}
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
