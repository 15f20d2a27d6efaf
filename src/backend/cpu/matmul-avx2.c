// The fast matmul kernels (matmul-kernels.inc) for the AVX2 level: AVX2 + FMA + F16C.
#include <stdbool.h>
#include <stdint.h>

#include "matmul-isa.h"

#if defined(__x86_64__)
#if defined(__clang__)
#pragma clang attribute push(__attribute__((target("avx2,fma,f16c"))), apply_to = function)
#else
#pragma GCC push_options
#pragma GCC target("avx2,fma,f16c")
#endif

#define MM_SUFFIX(name) name##_avx2
// maddubs cannot saturate here: |u| <= 128 (sign-folded Q8_0) or <= 63 (K-quants), |s| <= 127.
#define DOT_U8S8(acc, u, s)                                                                                  \
    _mm256_add_epi32((acc), _mm256_madd_epi16(_mm256_maddubs_epi16((u), (s)), _mm256_set1_epi16(1)))
#define MADD16(acc, a, b) _mm256_add_epi32((acc), _mm256_madd_epi16((a), (b)))
#define SIGN_S8(x, w) _mm256_sign_epi8((x), (w))
#include "matmul-kernels.inc"

#if defined(__clang__)
#pragma clang attribute pop
#else
#pragma GCC pop_options
#endif
#else
void mt_mm_run_avx2(const mt_node *node, int ith, int nth, void *scratch) {
    (void)node, (void)ith, (void)nth, (void)scratch;
    MT_ABORT("avx2 kernels called on a non-x86 build");
}
#endif
