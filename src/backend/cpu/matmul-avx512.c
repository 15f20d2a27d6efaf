// The fast matmul kernels (matmul-kernels.inc) for the AVX-512 level: AVX-512 VNNI dot products on
// 256-bit registers (AVX-512VL), masked sign folding (AVX-512BW), and the packed F16 kernels on 512-bit
// registers.
#include <stdbool.h>
#include <stdint.h>

#include "matmul-isa.h"

#if defined(__x86_64__)
#if defined(__clang__)
#pragma clang attribute push(__attribute__((target("avx2,fma,f16c,avx512f,avx512bw,avx512vl,avx512vnni"))),  \
                             apply_to = function)
#else
#pragma GCC push_options
#pragma GCC target("avx2,fma,f16c,avx512f,avx512bw,avx512vl,avx512vnni")
#endif

#define MM_SUFFIX(name) name##_avx512
#define MM_ZMM 1 // 512-bit registers where a kernel has that form (the packed F16 kernels)
#define DOT_U8S8(acc, u, s) _mm256_dpbusd_epi32((acc), (u), (s))
#define MADD16(acc, a, b) _mm256_dpwssd_epi32((acc), (a), (b))
#define SIGN_S8(x, w) _mm256_mask_sub_epi8((x), _mm256_movepi8_mask(w), _mm256_setzero_si256(), (x))
#include "matmul-kernels.inc"

#if defined(__clang__)
#pragma clang attribute pop
#else
#pragma GCC pop_options
#endif
#else
void mt_mm_run_avx512(const mt_node *node, int ith, int nth, void *scratch) {
    (void)node, (void)ith, (void)nth, (void)scratch;
    MT_ABORT("avx512 kernels called on a non-x86 build");
}
#endif
