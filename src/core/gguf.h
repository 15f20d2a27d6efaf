// GGUF v3 reader: mmap, zero-copy tensors, every size and offset checked before use.
//
//   mt_gguf *g;
//   if (mt_gguf_open("model.gguf", &g) != MT_OK) die(mt_last_error());
//   int64_t k = mt_gguf_find(g, "qwen2.block_count");
//   uint32_t n_layer; mt_gguf_get_u32(g, k, &n_layer);
//   const mt_gguf_tensor *t = mt_gguf_tensor_by_name(g, "token_embd.weight");
//   mt_gguf_close(g);
//
// Malformed input never crashes: every accessor returns a status naming the key, offset or value.
#ifndef MT_GGUF_H
#define MT_GGUF_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "tensor.h"

typedef enum mt_gguf_type {
    MT_GGUF_U8 = 0,
    MT_GGUF_I8 = 1,
    MT_GGUF_U16 = 2,
    MT_GGUF_I16 = 3,
    MT_GGUF_U32 = 4,
    MT_GGUF_I32 = 5,
    MT_GGUF_F32 = 6,
    MT_GGUF_BOOL = 7,
    MT_GGUF_STRING = 8,
    MT_GGUF_ARRAY = 9,
    MT_GGUF_U64 = 10,
    MT_GGUF_I64 = 11,
    MT_GGUF_F64 = 12,
} mt_gguf_type;

// A string inside the mapped file: not NUL-terminated.
typedef struct mt_str {
    const char *ptr;
    uint64_t len;
} mt_str;

typedef struct mt_gguf_tensor {
    char name[256];  // NUL-terminated copy
    mt_tensor t;     // dtype, shape, strides, data pointer into the mapping
    uint64_t offset; // offset of the data relative to the data section
    uint64_t nbytes;
} mt_gguf_tensor;

typedef struct mt_gguf mt_gguf;

mt_status mt_gguf_open(const char *path, mt_gguf **out);
// Parses a buffer the caller keeps alive (used by tests and fuzzing); the buffer is not copied.
mt_status mt_gguf_open_memory(const void *data, size_t size, mt_gguf **out);
void mt_gguf_close(mt_gguf *g);

uint32_t mt_gguf_version(const mt_gguf *g);
size_t mt_gguf_file_size(const mt_gguf *g);
uint64_t mt_gguf_alignment(const mt_gguf *g);
int64_t mt_gguf_n_kv(const mt_gguf *g);
int64_t mt_gguf_n_tensors(const mt_gguf *g);

// Metadata. mt_gguf_find returns the key index or -1.
int64_t mt_gguf_find(const mt_gguf *g, const char *key);
mt_str mt_gguf_key(const mt_gguf *g, int64_t i);
mt_gguf_type mt_gguf_kv_type(const mt_gguf *g, int64_t i);
// Typed getters fail (MT_ERR_FORMAT naming the key) on a type mismatch. Integer getters accept any
// integer type whose value fits.
mt_status mt_gguf_get_u32(const mt_gguf *g, int64_t i, uint32_t *out);
mt_status mt_gguf_get_u64(const mt_gguf *g, int64_t i, uint64_t *out);
mt_status mt_gguf_get_i64(const mt_gguf *g, int64_t i, int64_t *out);
mt_status mt_gguf_get_f32(const mt_gguf *g, int64_t i, float *out); // F32 or F64
mt_status mt_gguf_get_bool(const mt_gguf *g, int64_t i, bool *out);
mt_status mt_gguf_get_str(const mt_gguf *g, int64_t i, mt_str *out);
// Arrays: element type and count; elements fetched by index (strings) or as a raw pointer (numbers,
// little-endian, possibly unaligned: copy with memcpy).
mt_status mt_gguf_get_arr(const mt_gguf *g, int64_t i, mt_gguf_type *elem_type, uint64_t *count);
mt_status mt_gguf_get_arr_str(const mt_gguf *g, int64_t i, uint64_t j, mt_str *out);
mt_status mt_gguf_get_arr_data(const mt_gguf *g, int64_t i, const void **data);
// Convenience: the key by name with a default if absent (still an error on a wrong type).
mt_status mt_gguf_u32_or(const mt_gguf *g, const char *key, uint32_t dflt, uint32_t *out);
mt_status mt_gguf_f32_or(const mt_gguf *g, const char *key, float dflt, float *out);

const mt_gguf_tensor *mt_gguf_tensor_at(const mt_gguf *g, int64_t i);
const mt_gguf_tensor *mt_gguf_tensor_by_name(const mt_gguf *g, const char *name); // NULL if absent

#endif
