// Fast CPU matmul: dispatch on the instruction-set level, scratch for quantized activations.
#include "matmul-fast.h"

#include <pthread.h>
#include <stdbool.h>
#include <stdint.h>
#include <stdlib.h>

#include "cpu-features.h"
#include "matmul-isa.h"
#include "ops.h"

bool mt_cpu_matmul_fast_supports(mt_dtype t) {
    switch (t) {
    case MT_F32:
    case MT_F16:
    case MT_BF16:
    case MT_Q8_0:
    case MT_Q4_0:
    case MT_Q5_0:
    case MT_Q4_K:
    case MT_Q5_K:
    case MT_Q6_K:
        return true;
    default:
        return false;
    }
}

// Layouts of the quantized activation blocks (matmul-kernels.inc): a float scale and 32 int8, or a
// float scale, 16 int16 sums and 256 int8; Q4_0/Q5_0 add what prefill on unpacked rows needs.
size_t mt_mm_scratch_bytes(mt_dtype t, int64_t k, int64_t n) {
    switch (t) {
    case MT_Q8_0: // + per-block activation sums (the 512-bit prefill tile)
        return (size_t)(k / 32) * (36 + 4) * (size_t)n;
    case MT_Q4_0:
    case MT_Q5_0: // + per-block activation sums and two unpacked weight rows or one 8-row group (prefill)
        return (size_t)(k / 32) * (36 + 4) * (size_t)n + 8 * (size_t)k + 2 * (size_t)(k / 32) * 4;
    case MT_Q4_K:
    case MT_Q5_K:
    case MT_Q6_K:
        return (size_t)(k / 256) * 292 * (size_t)n;
    case MT_F16:
    case MT_BF16: // one F32 weight panel of the prefill GEMM (16 rows x 256 k)
        return 16 * 256 * sizeof(float);
    default:
        return 0;
    }
}

// METALLIC_F16_GEMM=0 keeps F16/BF16 prefill on the dot-product tiles (for A/B runs in one binary).
bool mt_mm_float_gemm_enabled(void) {
    static int on = -1; // benign race: every thread computes the same value
    if (on < 0) {
        const char *e = getenv("METALLIC_F16_GEMM");
        on = !(e && e[0] == '0');
    }
    return on;
}

// + 64: the kernels get the scratch aligned to 64 bytes (their float and block views of it need at
// least 4), wherever the caller's buffer starts.
size_t mt_cpu_matmul_fast_scratch_bytes(mt_dtype t, int64_t k, int64_t n) {
    const size_t b = mt_mm_scratch_bytes(t, k, n);
    return b ? b + 64 : 0;
}

void mt_cpu_matmul_fast_ex(const mt_node *node, int ith, int nth, void *scratch) {
    const mt_tensor *w = node->src[0];
    if (!mt_cpu_matmul_fast_supports(w->dtype)) {
        mt_cpu_op_matmul(node, ith, nth);
        return;
    }
    if (scratch) scratch = (void *)(((uintptr_t)scratch + 63) & ~(uintptr_t)63);
    switch (mt_cpu_isa()) {
    case MT_ISA_AVX512:
        mt_mm_run_avx512(node, ith, nth, scratch);
        return;
    case MT_ISA_AVX2:
        mt_mm_run_avx2(node, ith, nth, scratch);
        return;
    default:
        mt_cpu_op_matmul(node, ith, nth);
        return;
    }
}

// Per-thread scratch, kept for the thread's lifetime and grown only when a larger matmul arrives; a key
// destructor frees it when a pool worker exits (pools come and go with sessions).
static _Thread_local void *tl_scratch;
static _Thread_local size_t tl_scratch_cap;
static pthread_key_t tl_key;
static pthread_once_t tl_once = PTHREAD_ONCE_INIT;
static bool tl_key_ok;

static void tl_key_make(void) {
    tl_key_ok = pthread_key_create(&tl_key, free) == 0;
}

void mt_cpu_matmul_fast(const mt_node *node, int ith, int nth) {
    const mt_tensor *w = node->src[0], *x = node->src[1];
    // Prefill threads quantize only their own tokens; decode threads quantize all of them.
    const int64_t n = x->ne[1] >= 8 && nth > 1 ? (x->ne[1] + nth - 1) / nth : x->ne[1];
    const size_t need = mt_cpu_matmul_fast_scratch_bytes(w->dtype, w->ne[0], n);
    if (need > tl_scratch_cap) {
        void *p = malloc(need + need / 4); // headroom so slowly growing batches do not reallocate each time
        if (!p) {
            mt_cpu_op_matmul(node, ith, nth);
            return;
        }
        free(tl_scratch);
        tl_scratch = p;
        tl_scratch_cap = need + need / 4;
        pthread_once(&tl_once, tl_key_make);
        if (tl_key_ok) pthread_setspecific(tl_key, p);
    }
    mt_cpu_matmul_fast_ex(node, ith, nth, tl_scratch);
}
