// cpuid/xgetbv feature detection and the METALLIC_CPU_ISA override.
#include "cpu-features.h"

#include <stdatomic.h>
#include <stdlib.h>
#include <strings.h>

#if defined(__x86_64__) || defined(__i386__)
#include <cpuid.h>

// xgetbv without requiring -mxsave at compile time.
static unsigned long long read_xcr0(void) {
    unsigned int lo, hi;
    __asm__ volatile("xgetbv" : "=a"(lo), "=d"(hi) : "c"(0));
    return ((unsigned long long)hi << 32) | lo;
}

static void detect(mt_cpu_features *f) {
    unsigned int a, b, c, d;
    if (!__get_cpuid(1, &a, &b, &c, &d)) return;
    const bool osxsave = (c >> 27) & 1, avx = (c >> 28) & 1;
    f->fma = (c >> 12) & 1;
    f->f16c = (c >> 29) & 1;
    if (osxsave && avx) {
        const unsigned long long xcr0 = read_xcr0();
        f->os_avx = (xcr0 & 0x6) == 0x6;      // XMM and YMM state
        f->os_avx512 = (xcr0 & 0xe6) == 0xe6; // plus opmask, ZMM0-15 high halves, ZMM16-31
    }
    if (__get_cpuid_max(0, NULL) < 7) return;
    __cpuid_count(7, 0, a, b, c, d);
    f->avx2 = (b >> 5) & 1;
    f->avx512f = (b >> 16) & 1;
    f->avx512bw = (b >> 30) & 1;
    f->avx512vl = (b >> 31) & 1;
    f->avx512vnni = (c >> 11) & 1;
    __cpuid_count(7, 1, a, b, c, d);
    f->avx512bf16 = (a >> 5) & 1;
}
#else
static void detect(mt_cpu_features *f) {
    (void)f;
}
#endif

static mt_cpu_features g_features;
static atomic_int g_detected;   // 0 no, 1 done
static atomic_int g_level = -1; // -1: not initialized yet

const mt_cpu_features *mt_cpu_features_get(void) {
    if (!atomic_load_explicit(&g_detected, memory_order_acquire)) {
        // Detection is idempotent, so a race only repeats the same writes.
        mt_cpu_features f = {0};
        detect(&f);
        g_features = f;
        atomic_store_explicit(&g_detected, 1, memory_order_release);
    }
    return &g_features;
}

// The first feature that `level` needs and the CPU lacks, or NULL if it has them all.
static const char *missing_feature(mt_cpu_isa_level level) {
    const mt_cpu_features *f = mt_cpu_features_get();
    if (level >= MT_ISA_AVX2) {
        if (!f->os_avx) return "OS support for AVX state (XCR0)";
        if (!f->avx2) return "AVX2";
        if (!f->fma) return "FMA";
        if (!f->f16c) return "F16C";
    }
    if (level >= MT_ISA_AVX512) {
        if (!f->os_avx512) return "OS support for AVX-512 state (XCR0)";
        if (!f->avx512f) return "AVX-512F";
        if (!f->avx512bw) return "AVX-512BW";
        if (!f->avx512vl) return "AVX-512VL";
        if (!f->avx512vnni) return "AVX-512 VNNI";
    }
    return NULL;
}

mt_cpu_isa_level mt_cpu_isa_best(void) {
    if (!missing_feature(MT_ISA_AVX512)) return MT_ISA_AVX512;
    if (!missing_feature(MT_ISA_AVX2)) return MT_ISA_AVX2;
    return MT_ISA_SCALAR;
}

const char *mt_cpu_isa_name(mt_cpu_isa_level level) {
    switch (level) {
    case MT_ISA_SCALAR:
        return "scalar";
    case MT_ISA_AVX2:
        return "avx2";
    case MT_ISA_AVX512:
        return "avx512";
    }
    return "?";
}

mt_status mt_cpu_isa_parse(const char *s, mt_cpu_isa_level *out) {
    for (int l = MT_ISA_SCALAR; l <= MT_ISA_AVX512; l++)
        if (s && strcasecmp(s, mt_cpu_isa_name((mt_cpu_isa_level)l)) == 0) {
            *out = (mt_cpu_isa_level)l;
            return MT_OK;
        }
    return mt_fail(MT_ERR_INVALID, "METALLIC_CPU_ISA: unknown level '%s' (expected scalar, avx2 or avx512)",
                   s ? s : "(null)");
}

mt_status mt_cpu_isa_force(mt_cpu_isa_level level) {
    if (level < MT_ISA_SCALAR || level > MT_ISA_AVX512)
        return mt_fail(MT_ERR_INVALID, "cpu isa level %d is out of range", (int)level);
    const char *miss = missing_feature(level);
    if (miss)
        return mt_fail(MT_ERR_UNSUPPORTED, "cpu isa level %s needs %s, which this CPU lacks (best: %s)",
                       mt_cpu_isa_name(level), miss, mt_cpu_isa_name(mt_cpu_isa_best()));
    atomic_store(&g_level, (int)level);
    return MT_OK;
}

mt_status mt_cpu_isa_init(void) {
    const char *env = getenv("METALLIC_CPU_ISA");
    if (!env || !*env) {
        atomic_store(&g_level, (int)mt_cpu_isa_best());
        return MT_OK;
    }
    mt_cpu_isa_level level;
    MT_TRY(mt_cpu_isa_parse(env, &level));
    return mt_cpu_isa_force(level);
}

mt_cpu_isa_level mt_cpu_isa(void) {
    int l = atomic_load_explicit(&g_level, memory_order_relaxed);
    if (l < 0) {
        if (mt_cpu_isa_init() != MT_OK) atomic_store(&g_level, (int)mt_cpu_isa_best());
        l = atomic_load(&g_level);
    }
    return (mt_cpu_isa_level)l;
}
