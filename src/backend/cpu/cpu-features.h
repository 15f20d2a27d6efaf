// CPU feature detection and the instruction-set level the fast CPU kernels dispatch on.
//
// Levels are cumulative: AVX512 implies AVX2. The level in use is the best the CPU (and OS) supports,
// unless the environment variable METALLIC_CPU_ISA=scalar|avx2|avx512 or mt_cpu_isa_force() picks a
// lower one. Asking for a level the CPU lacks is an error, never a silent downgrade.
#ifndef MT_CPU_FEATURES_H
#define MT_CPU_FEATURES_H

#include <stdbool.h>

#include "../../core/status.h"

typedef enum mt_cpu_isa_level {
    MT_ISA_SCALAR = 0, // portable C (the reference kernels)
    MT_ISA_AVX2 = 1,   // AVX2 + FMA + F16C
    MT_ISA_AVX512 = 2, // AVX2 level + AVX-512 F/BW/VL + VNNI
} mt_cpu_isa_level;

typedef struct mt_cpu_features {
    bool avx2, fma, f16c;
    bool avx512f, avx512bw, avx512vl, avx512vnni, avx512bf16;
    bool os_avx, os_avx512; // the OS saves the YMM / ZMM+opmask state (XCR0)
} mt_cpu_features;

// cpuid results, detected once (thread-safe).
const mt_cpu_features *mt_cpu_features_get(void);
// The best level this CPU supports.
mt_cpu_isa_level mt_cpu_isa_best(void);
const char *mt_cpu_isa_name(mt_cpu_isa_level level);
// Parses "scalar", "avx2", "avx512" (case-insensitive); MT_ERR_INVALID naming the value otherwise.
mt_status mt_cpu_isa_parse(const char *s, mt_cpu_isa_level *out);
// Reads METALLIC_CPU_ISA (unset or empty: best level). MT_ERR_INVALID for an unknown value,
// MT_ERR_UNSUPPORTED for a level the CPU lacks; on error the level in use stays unchanged.
mt_status mt_cpu_isa_init(void);
// Selects `level` for all later kernel calls; MT_ERR_UNSUPPORTED (naming the missing feature) if the CPU
// lacks it. Not meant to be called while kernels run on other threads.
mt_status mt_cpu_isa_force(mt_cpu_isa_level level);
// The level in use. On first use without mt_cpu_isa_init, initializes from the environment and falls
// back to the best level if the variable is invalid (mt_cpu_isa_init reports that error).
mt_cpu_isa_level mt_cpu_isa(void);

#endif
