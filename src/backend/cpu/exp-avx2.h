// e^x for 8 floats with AVX2 + FMA, shared by the fast ops (softmax, SwiGLU, attention) and the graph
// path's fused SDPA. Include it only where AVX2/FMA code is compiled: inside a target("avx2,fma") region
// or in a file built with those instructions enabled.
#ifndef MT_EXP_AVX2_H
#define MT_EXP_AVX2_H

#include <immintrin.h>

// x = n ln2 + r with |r| <= ln2/2, e^r by its degree-6 Taylor polynomial (relative error below 2e-7
// there), 2^n put into the exponent bits. Inputs are clamped to the finite float range, so very negative
// x gives ~1e-38 instead of 0 (irrelevant next to any real term of a sum).
static inline __attribute__((always_inline)) __m256 mt_exp8(__m256 x) {
    x = _mm256_min_ps(_mm256_max_ps(x, _mm256_set1_ps(-87.0f)), _mm256_set1_ps(88.0f));
    const __m256 n = _mm256_round_ps(_mm256_mul_ps(x, _mm256_set1_ps(1.44269504f)),
                                     _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC);
    __m256 r = _mm256_fnmadd_ps(n, _mm256_set1_ps(0.693359375f), x); // ln2 split in two for exactness
    r = _mm256_fnmadd_ps(n, _mm256_set1_ps(-2.12194440e-4f), r);
    __m256 p = _mm256_set1_ps(1.0f / 720);
    p = _mm256_fmadd_ps(p, r, _mm256_set1_ps(1.0f / 120));
    p = _mm256_fmadd_ps(p, r, _mm256_set1_ps(1.0f / 24));
    p = _mm256_fmadd_ps(p, r, _mm256_set1_ps(1.0f / 6));
    p = _mm256_fmadd_ps(p, r, _mm256_set1_ps(0.5f));
    p = _mm256_fmadd_ps(p, r, _mm256_set1_ps(1.0f));
    p = _mm256_fmadd_ps(p, r, _mm256_set1_ps(1.0f));
    const __m256i e = _mm256_slli_epi32(_mm256_add_epi32(_mm256_cvtps_epi32(n), _mm256_set1_epi32(127)), 23);
    return _mm256_mul_ps(p, _mm256_castsi256_ps(e));
}

#endif
