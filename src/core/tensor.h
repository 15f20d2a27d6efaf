// Tensors: a dtype, a shape, byte strides and a pointer. Views never copy.
//
// Convention (the GGUF/ggml one): ne[0] is the innermost, contiguous dimension. A weight matrix with
// `rows` output features of `cols` inputs each has ne = {cols, rows}; quantized types pack ne[0] into
// blocks, so ne[0] must be a multiple of the type's block size.
#ifndef MT_TENSOR_H
#define MT_TENSOR_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "status.h"

#define MT_MAX_DIMS 4

// Values equal the GGUF/ggml type ids, so files map onto them directly.
typedef enum mt_dtype {
    MT_F32 = 0,
    MT_F16 = 1,
    MT_Q4_0 = 2,
    MT_Q4_1 = 3,
    MT_Q5_0 = 6,
    MT_Q5_1 = 7,
    MT_Q8_0 = 8,
    MT_Q4_K = 12,
    MT_Q5_K = 13,
    MT_Q6_K = 14,
    MT_I32 = 26,
    MT_BF16 = 30,
    MT_DTYPE_END = 40, // upper bound for tables indexed by dtype
} mt_dtype;

typedef struct mt_dtype_info {
    const char *name; // "f16", "q4_k", ...; NULL for ids we do not support
    int block_elems;  // elements per block (1 for plain types)
    int block_bytes;  // bytes per block
} mt_dtype_info;

// NULL-named info for unsupported ids (including out-of-range ones).
const mt_dtype_info *mt_dtype_get(int dtype);
bool mt_dtype_supported(int dtype);
const char *mt_dtype_name(int dtype);
// Parses "f32", "q8_0", ... (case-insensitive); returns MT_ERR_INVALID naming the value otherwise.
mt_status mt_dtype_parse(const char *s, mt_dtype *out);
// Bytes of one row of `n` elements; 0 with an error recorded if n is not a multiple of the block size
// or the result overflows.
size_t mt_dtype_row_bytes(mt_dtype t, int64_t n);

typedef struct mt_tensor {
    mt_dtype dtype;
    int ndim;
    int64_t ne[MT_MAX_DIMS]; // elements per dimension, ne[0] innermost; unused dims are 1
    size_t nb[MT_MAX_DIMS];  // byte strides; nb[0] is the block (or element) size
    void *data;              // first byte of the tensor (views point inside their parent)
    const char *name;        // optional, not owned
} mt_tensor;

// A contiguous tensor over `data` (not owned). ne has ndim entries, innermost first.
mt_status mt_tensor_init(mt_tensor *t, mt_dtype dtype, int ndim, const int64_t *ne, void *data);
int64_t mt_tensor_nelem(const mt_tensor *t);
size_t mt_tensor_nbytes(const mt_tensor *t); // for contiguous tensors
bool mt_tensor_is_contiguous(const mt_tensor *t);
// Pointer to row `i1` (and i2, i3) of a tensor: data + i1*nb[1] + i2*nb[2] + i3*nb[3].
static inline void *mt_tensor_row(const mt_tensor *t, int64_t i1, int64_t i2, int64_t i3) {
    return (char *)t->data + i1 * (int64_t)t->nb[1] + i2 * (int64_t)t->nb[2] + i3 * (int64_t)t->nb[3];
}
// Rows [row0, row0+nrows) of dim 1 as a view; fails if out of range.
mt_status mt_tensor_view_rows(const mt_tensor *t, int64_t row0, int64_t nrows, mt_tensor *out);
// Reinterprets a contiguous tensor with a new shape of the same element count; never copies, fails early
// with a reason on a non-contiguous input or a block-size mismatch.
mt_status mt_tensor_reshape(const mt_tensor *t, int ndim, const int64_t *ne, mt_tensor *out);

// IEEE half and bfloat16 conversions (round to nearest even).
float mt_f16_to_f32(uint16_t h);
uint16_t mt_f32_to_f16(float f);
static inline float mt_bf16_to_f32(uint16_t b) {
    union {
        uint32_t u;
        float f;
    } v = {.u = (uint32_t)b << 16};
    return v.f;
}
uint16_t mt_f32_to_bf16(float f);

#endif
