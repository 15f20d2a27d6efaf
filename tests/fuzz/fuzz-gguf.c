// libFuzzer target for the GGUF reader: parse the input as a whole file and read back every key, array
// element and tensor, so a bound missed at open time shows up as a sanitizer report.
// Built by scripts/fuzz-gguf.sh (not by the Makefile).
#include <stddef.h>
#include <stdint.h>
#include <string.h>

#include "core/gguf.h"

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

static volatile uint64_t sink; // keeps the reads from being optimized away

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size) {
    mt_gguf *g = NULL;
    if (mt_gguf_open_memory(data, size, &g) != MT_OK) {
        MT_ASSERT(g == NULL && mt_last_error()[0] != '\0');
        return 0;
    }
    uint64_t acc = mt_gguf_version(g) + mt_gguf_alignment(g) + mt_gguf_file_size(g);
    for (int64_t i = 0; i < mt_gguf_n_kv(g); i++) {
        mt_str k = mt_gguf_key(g, i);
        if (k.len) acc += (uint8_t)k.ptr[k.len - 1];
        char key[128];
        size_t n = k.len < sizeof key - 1 ? (size_t)k.len : sizeof key - 1;
        memcpy(key, k.ptr, n);
        key[n] = '\0';
        if (n == k.len && !memchr(k.ptr, 0, n)) MT_ASSERT(mt_gguf_find(g, key) == i);
        uint32_t u32;
        uint64_t u64;
        int64_t i64;
        float f;
        bool b;
        mt_str s;
        if (mt_gguf_get_u32(g, i, &u32) == MT_OK) acc += u32;
        if (mt_gguf_get_u64(g, i, &u64) == MT_OK) acc += u64;
        if (mt_gguf_get_i64(g, i, &i64) == MT_OK) acc += (uint64_t)i64;
        if (mt_gguf_get_f32(g, i, &f) == MT_OK) acc += f == f;
        if (mt_gguf_get_bool(g, i, &b) == MT_OK) acc += b;
        if (mt_gguf_get_str(g, i, &s) == MT_OK && s.len) acc += (uint8_t)s.ptr[s.len - 1];
        mt_gguf_type et;
        uint64_t count;
        if (mt_gguf_get_arr(g, i, &et, &count) != MT_OK) continue;
        if (et == MT_GGUF_STRING) {
            for (uint64_t j = 0; j < count; j++) {
                MT_ASSERT(mt_gguf_get_arr_str(g, i, j, &s) == MT_OK);
                if (s.len) acc += (uint8_t)s.ptr[0] + (uint8_t)s.ptr[s.len - 1];
            }
            MT_ASSERT(mt_gguf_get_arr_str(g, i, count, &s) != MT_OK);
        }
        const void *p;
        if (mt_gguf_get_arr_data(g, i, &p) == MT_OK && count > 0) {
            // The last element's last byte must be readable.
            size_t esz = et == MT_GGUF_U8 || et == MT_GGUF_I8 || et == MT_GGUF_BOOL    ? 1
                         : et == MT_GGUF_U16 || et == MT_GGUF_I16                      ? 2
                         : et == MT_GGUF_U64 || et == MT_GGUF_I64 || et == MT_GGUF_F64 ? 8
                                                                                       : 4;
            acc += ((const uint8_t *)p)[count * esz - 1];
        }
    }
    for (int64_t i = 0; i < mt_gguf_n_tensors(g); i++) {
        const mt_gguf_tensor *t = mt_gguf_tensor_at(g, i);
        MT_ASSERT(mt_gguf_tensor_by_name(g, t->name) == t);
        MT_ASSERT(mt_tensor_nbytes(&t->t) == t->nbytes);
        const uint8_t *d = t->t.data;
        MT_ASSERT(d >= data && t->nbytes <= (size_t)(data + size - d));
        acc += d[0] + d[t->nbytes - 1];
    }
    sink = acc;
    mt_gguf_close(g);
    return 0;
}
