#include "tensor.h"

#include <ctype.h>
#include <string.h>

// Block layouts from the GGUF specification (ggml type traits).
static const mt_dtype_info dtype_table[MT_DTYPE_END] = {
    [MT_F32] = {"f32", 1, 4},       [MT_F16] = {"f16", 1, 2},       [MT_BF16] = {"bf16", 1, 2},
    [MT_I32] = {"i32", 1, 4},       [MT_Q4_0] = {"q4_0", 32, 18},   [MT_Q4_1] = {"q4_1", 32, 20},
    [MT_Q5_0] = {"q5_0", 32, 22},   [MT_Q5_1] = {"q5_1", 32, 24},   [MT_Q8_0] = {"q8_0", 32, 34},
    [MT_Q4_K] = {"q4_k", 256, 144}, [MT_Q5_K] = {"q5_k", 256, 176}, [MT_Q6_K] = {"q6_k", 256, 210},
};

static const mt_dtype_info dtype_none = {NULL, 0, 0};

const mt_dtype_info *mt_dtype_get(int dtype) {
    if (dtype < 0 || dtype >= MT_DTYPE_END || !dtype_table[dtype].name) return &dtype_none;
    return &dtype_table[dtype];
}

bool mt_dtype_supported(int dtype) {
    return mt_dtype_get(dtype)->name != NULL;
}

const char *mt_dtype_name(int dtype) {
    const char *n = mt_dtype_get(dtype)->name;
    return n ? n : "unknown";
}

mt_status mt_dtype_parse(const char *s, mt_dtype *out) {
    for (int t = 0; t < MT_DTYPE_END; t++) {
        const char *n = dtype_table[t].name;
        if (!n) continue;
        size_t i = 0;
        while (n[i] && s[i] && tolower((unsigned char)s[i]) == n[i]) i++;
        if (!n[i] && !s[i]) {
            *out = (mt_dtype)t;
            return MT_OK;
        }
    }
    return mt_fail(MT_ERR_INVALID, "unknown dtype '%s'", s);
}

size_t mt_dtype_row_bytes(mt_dtype t, int64_t n) {
    const mt_dtype_info *d = mt_dtype_get(t);
    if (!d->name || n < 0 || n % d->block_elems != 0) {
        mt_fail(MT_ERR_INVALID, "row of %lld elements is not a whole number of %s blocks", (long long)n,
                mt_dtype_name(t));
        return 0;
    }
    uint64_t blocks = (uint64_t)n / (uint64_t)d->block_elems;
    if (blocks > SIZE_MAX / (uint64_t)d->block_bytes) {
        mt_fail(MT_ERR_INVALID, "row of %lld %s elements overflows", (long long)n, d->name);
        return 0;
    }
    return (size_t)(blocks * (uint64_t)d->block_bytes);
}

mt_status mt_tensor_init(mt_tensor *t, mt_dtype dtype, int ndim, const int64_t *ne, void *data) {
    if (ndim < 1 || ndim > MT_MAX_DIMS) return mt_fail(MT_ERR_INVALID, "tensor rank %d not in 1..4", ndim);
    const mt_dtype_info *d = mt_dtype_get(dtype);
    if (!d->name) return mt_fail(MT_ERR_UNSUPPORTED, "unsupported dtype id %d", (int)dtype);
    memset(t, 0, sizeof *t);
    t->dtype = dtype;
    t->ndim = ndim;
    t->data = data;
    for (int i = 0; i < MT_MAX_DIMS; i++) t->ne[i] = i < ndim ? ne[i] : 1;
    for (int i = 0; i < MT_MAX_DIMS; i++)
        if (t->ne[i] < 0)
            return mt_fail(MT_ERR_INVALID, "negative dimension %d: %lld", i, (long long)t->ne[i]);
    size_t row = mt_dtype_row_bytes(dtype, t->ne[0]);
    if (row == 0 && t->ne[0] != 0) return MT_ERR_INVALID;
    t->nb[0] = (size_t)d->block_bytes;
    t->nb[1] = row;
    for (int i = 2; i < MT_MAX_DIMS; i++) {
        if (t->ne[i - 1] != 0 && t->nb[i - 1] > SIZE_MAX / (size_t)t->ne[i - 1])
            return mt_fail(MT_ERR_INVALID, "tensor size overflows at dimension %d", i);
        t->nb[i] = t->nb[i - 1] * (size_t)t->ne[i - 1];
    }
    if (t->ne[3] != 0 && t->nb[3] > SIZE_MAX / (size_t)t->ne[3])
        return mt_fail(MT_ERR_INVALID, "tensor size overflows");
    return MT_OK;
}

int64_t mt_tensor_nelem(const mt_tensor *t) {
    return t->ne[0] * t->ne[1] * t->ne[2] * t->ne[3];
}

size_t mt_tensor_nbytes(const mt_tensor *t) {
    return t->nb[3] * (size_t)t->ne[3];
}

bool mt_tensor_is_contiguous(const mt_tensor *t) {
    if (t->nb[0] != (size_t)mt_dtype_get(t->dtype)->block_bytes) return false;
    if (t->nb[1] != mt_dtype_row_bytes(t->dtype, t->ne[0])) return false;
    for (int i = 2; i < MT_MAX_DIMS; i++)
        if (t->nb[i] != t->nb[i - 1] * (size_t)t->ne[i - 1]) return false;
    return true;
}

mt_status mt_tensor_view_rows(const mt_tensor *t, int64_t row0, int64_t nrows, mt_tensor *out) {
    if (row0 < 0 || nrows < 0 || row0 > t->ne[1] || nrows > t->ne[1] - row0)
        return mt_fail(MT_ERR_RANGE, "rows [%lld, %lld) outside tensor '%s' of %lld rows", (long long)row0,
                       (long long)(row0 + nrows), t->name ? t->name : "?", (long long)t->ne[1]);
    *out = *t;
    out->data = (char *)t->data + row0 * (int64_t)t->nb[1];
    out->ne[1] = nrows;
    return MT_OK;
}

mt_status mt_tensor_reshape(const mt_tensor *t, int ndim, const int64_t *ne, mt_tensor *out) {
    if (!mt_tensor_is_contiguous(t))
        return mt_fail(MT_ERR_INVALID, "cannot reshape non-contiguous tensor '%s' without a copy",
                       t->name ? t->name : "?");
    mt_tensor r;
    MT_TRY(mt_tensor_init(&r, t->dtype, ndim, ne, t->data));
    if (mt_tensor_nelem(&r) != mt_tensor_nelem(t))
        return mt_fail(MT_ERR_INVALID, "reshape of '%s' changes the element count (%lld -> %lld)",
                       t->name ? t->name : "?", (long long)mt_tensor_nelem(t),
                       (long long)mt_tensor_nelem(&r));
    r.name = t->name;
    *out = r;
    return MT_OK;
}

float mt_f16_to_f32(uint16_t h) {
    uint32_t sign = (uint32_t)(h & 0x8000) << 16;
    uint32_t exp = (h >> 10) & 0x1f;
    uint32_t man = h & 0x3ff;
    uint32_t bits;
    if (exp == 0) {
        if (man == 0) {
            bits = sign;
        } else { // subnormal: normalize
            int e = -1;
            do {
                e++;
                man <<= 1;
            } while (!(man & 0x400));
            bits = sign | ((uint32_t)(127 - 15 - e) << 23) | ((man & 0x3ff) << 13);
        }
    } else if (exp == 31) {
        bits = sign | 0x7f800000u | (man << 13);
    } else {
        bits = sign | ((exp + 127 - 15) << 23) | (man << 13);
    }
    union {
        uint32_t u;
        float f;
    } v = {.u = bits};
    return v.f;
}

uint16_t mt_f32_to_f16(float f) {
    union {
        float f;
        uint32_t u;
    } v = {.f = f};
    uint32_t x = v.u;
    uint16_t sign = (uint16_t)((x >> 16) & 0x8000);
    uint32_t exp = (x >> 23) & 0xff;
    uint32_t man = x & 0x7fffff;
    if (exp == 0xff) return sign | 0x7c00 | (man ? 0x200 : 0); // inf / nan
    int32_t e = (int32_t)exp - 127 + 15;
    if (e >= 31) return sign | 0x7c00;
    if (e <= 0) {
        if (e < -10) return sign;
        man |= 0x800000;
        uint32_t shift = (uint32_t)(14 - e);
        uint32_t half = man >> shift;
        uint32_t rem = man & ((1u << shift) - 1);
        uint32_t mid = 1u << (shift - 1);
        if (rem > mid || (rem == mid && (half & 1))) half++;
        return sign | (uint16_t)half;
    }
    uint32_t half = ((uint32_t)e << 10) | (man >> 13);
    uint32_t rem = man & 0x1fff;
    if (rem > 0x1000 || (rem == 0x1000 && (half & 1))) half++; // may carry into the exponent: correct
    return sign | (uint16_t)half;
}

uint16_t mt_f32_to_bf16(float f) {
    union {
        float f;
        uint32_t u;
    } v = {.f = f};
    if ((v.u & 0x7fffffff) > 0x7f800000) return (uint16_t)((v.u >> 16) | 0x40); // quiet nan
    uint32_t rounding = 0x7fff + ((v.u >> 16) & 1);
    return (uint16_t)((v.u + rounding) >> 16);
}
