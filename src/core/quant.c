// Scalar reference block codecs: decode, dot product and round-to-nearest encoders for every weight dtype.
//
// Block layouts follow the GGUF/ggml specification. Fields are read byte by byte (blocks are not aligned
// and GGUF is little-endian by definition). Decoders evaluate each value in the same order of float
// operations as the reference format description, so results are bit-exact with other conforming
// readers (the tests compare against the gguf Python package).
#include "quant.h"

#include <math.h>
#include <stdbool.h>
#include <string.h>

#include "status.h"

#define QK 32    // elements per block of the legacy formats
#define QK_K 256 // elements per K-quant super-block

// Byte offsets inside the blocks (sizes match the dtype table in tensor.c).
enum {
    Q4_K_D = 0,
    Q4_K_DMIN = 2,
    Q4_K_SCALES = 4,
    Q4_K_QS = 16,
    Q5_K_QH = 16,
    Q5_K_QS = 48,
    Q6_K_QL = 0,
    Q6_K_QH = 128,
    Q6_K_SCALES = 192,
    Q6_K_D = 208,
};

// Little-endian hosts read fields with plain (unaligned-safe) loads, which vectorize; others assemble bytes.
static inline uint16_t rd16(const uint8_t *p) {
#if defined(__BYTE_ORDER__) && __BYTE_ORDER__ == __ORDER_LITTLE_ENDIAN__
    uint16_t v;
    memcpy(&v, p, sizeof v);
    return v;
#else
    return (uint16_t)(p[0] | (p[1] << 8));
#endif
}
static inline uint32_t rd32(const uint8_t *p) {
    return (uint32_t)p[0] | ((uint32_t)p[1] << 8) | ((uint32_t)p[2] << 16) | ((uint32_t)p[3] << 24);
}
static inline void wr16(uint8_t *p, uint16_t v) {
    p[0] = (uint8_t)v;
    p[1] = (uint8_t)(v >> 8);
}
static inline void wr32(uint8_t *p, uint32_t v) {
    for (int i = 0; i < 4; i++) p[i] = (uint8_t)(v >> (8 * i));
}

// Branch-free half -> float (exact for every input, NaN payloads included): shifting the 15 low bits into
// float position and scaling by 2^(127-15) fixes the exponent bias for normals and subnormals alike,
// which lets the compiler vectorize F16 rows. mt_f16_to_f32 is the readable version.
static inline float bits_f32(uint32_t u) {
    float f;
    memcpy(&f, &u, sizeof f);
    return f;
}
static inline uint32_t f32_bits(float f) {
    uint32_t u;
    memcpy(&u, &f, sizeof u);
    return u;
}
static inline float f16_fast(uint16_t h) {
    const uint32_t em = (uint32_t)(h & 0x7fff) << 13;
    const uint32_t special = 0u - (uint32_t)((h & 0x7c00) == 0x7c00); // all ones for inf/nan
    uint32_t u = f32_bits(bits_f32(em) * 0x1p112f);
    u = (u & ~special) | ((0x7f800000u | em) & special);
    return bits_f32(u | (uint32_t)(h & 0x8000) << 16);
}
static inline float half_at(const uint8_t *p) {
    return f16_fast(rd16(p));
}

// ---- block decoders: one block at `b` into `y` ----

static inline void dec_q8_0(const uint8_t *restrict b, float *restrict y) {
    const float d = half_at(b);
    const int8_t *qs = (const int8_t *)(b + 2);
    for (int j = 0; j < QK; j++) y[j] = (float)qs[j] * d;
}

static inline void dec_q4_0(const uint8_t *restrict b, float *restrict y) {
    const float d = half_at(b);
    const uint8_t *qs = b + 2;
    for (int j = 0; j < QK / 2; j++) {
        y[j] = d * (float)((qs[j] & 0xf) - 8);
        y[j + QK / 2] = d * (float)((qs[j] >> 4) - 8);
    }
}

static inline void dec_q4_1(const uint8_t *restrict b, float *restrict y) {
    const float d = half_at(b), m = half_at(b + 2);
    const uint8_t *qs = b + 4;
    for (int j = 0; j < QK / 2; j++) {
        y[j] = d * (float)(qs[j] & 0xf) + m;
        y[j + QK / 2] = d * (float)(qs[j] >> 4) + m;
    }
}

static inline void dec_q5_0(const uint8_t *restrict b, float *restrict y) {
    const float d = half_at(b);
    const uint32_t qh = rd32(b + 2);
    const uint8_t *qs = b + 6;
    for (int j = 0; j < QK / 2; j++) {
        int hi0 = (int)((qh >> j) & 1) << 4, hi1 = (int)((qh >> (j + 16)) & 1) << 4;
        y[j] = d * (float)(((qs[j] & 0xf) | hi0) - 16);
        y[j + QK / 2] = d * (float)(((qs[j] >> 4) | hi1) - 16);
    }
}

static inline void dec_q5_1(const uint8_t *restrict b, float *restrict y) {
    const float d = half_at(b), m = half_at(b + 2);
    const uint32_t qh = rd32(b + 4);
    const uint8_t *qs = b + 8;
    for (int j = 0; j < QK / 2; j++) {
        int hi0 = (int)((qh >> j) & 1) << 4, hi1 = (int)((qh >> (j + 16)) & 1) << 4;
        y[j] = d * (float)((qs[j] & 0xf) | hi0) + m;
        y[j + QK / 2] = d * (float)((qs[j] >> 4) | hi1) + m;
    }
}

// The 8 sub-block scales and mins of Q4_K/Q5_K are 6 bits each, packed into 12 bytes: bytes 0-3 hold
// scales 0-3 (low 6 bits) and the top 2 bits of scales 4-7; bytes 4-7 the same for mins; bytes 8-11 the
// low 4 bits of scale (low nibble) and min (high nibble) 4-7.
static inline void k_scale_min(int j, const uint8_t *s, int *sc, int *m) {
    if (j < 4) {
        *sc = s[j] & 63;
        *m = s[j + 4] & 63;
    } else {
        *sc = (s[j + 4] & 0xf) | ((s[j - 4] >> 6) << 4);
        *m = (s[j + 4] >> 4) | ((s[j] >> 6) << 4);
    }
}

static inline void dec_q4_k(const uint8_t *restrict b, float *restrict y) {
    const float d = half_at(b + Q4_K_D), dmin = half_at(b + Q4_K_DMIN);
    const uint8_t *s = b + Q4_K_SCALES;
    const uint8_t *q = b + Q4_K_QS;
    // Each 32 bytes of nibbles hold two sub-blocks: low nibbles first, then high nibbles.
    for (int j = 0; j < 4; j++, q += 32, y += 64) {
        int sc0, m0, sc1, m1;
        k_scale_min(2 * j, s, &sc0, &m0);
        k_scale_min(2 * j + 1, s, &sc1, &m1);
        const float d0 = d * (float)sc0, mm0 = dmin * (float)m0;
        const float d1 = d * (float)sc1, mm1 = dmin * (float)m1;
        for (int l = 0; l < 32; l++) y[l] = d0 * (float)(q[l] & 0xf) - mm0;
        for (int l = 0; l < 32; l++) y[l + 32] = d1 * (float)(q[l] >> 4) - mm1;
    }
}

static inline void dec_q5_k(const uint8_t *restrict b, float *restrict y) {
    const float d = half_at(b + Q4_K_D), dmin = half_at(b + Q4_K_DMIN);
    const uint8_t *s = b + Q4_K_SCALES;
    const uint8_t *qh = b + Q5_K_QH;
    const uint8_t *q = b + Q5_K_QS;
    // Sub-block i takes its fifth bit from bit i of qh[l].
    for (int j = 0; j < 4; j++, q += 32, y += 64) {
        int sc0, m0, sc1, m1;
        k_scale_min(2 * j, s, &sc0, &m0);
        k_scale_min(2 * j + 1, s, &sc1, &m1);
        const float d0 = d * (float)sc0, mm0 = dmin * (float)m0;
        const float d1 = d * (float)sc1, mm1 = dmin * (float)m1;
        const int sh0 = 2 * j, sh1 = 2 * j + 1;
        for (int l = 0; l < 32; l++) y[l] = d0 * (float)((q[l] & 0xf) | (((qh[l] >> sh0) & 1) << 4)) - mm0;
        for (int l = 0; l < 32; l++)
            y[l + 32] = d1 * (float)((q[l] >> 4) | (((qh[l] >> sh1) & 1) << 4)) - mm1;
    }
}

static inline void dec_q6_k(const uint8_t *restrict b, float *restrict y) {
    const float d = half_at(b + Q6_K_D);
    const int8_t *sc = (const int8_t *)(b + Q6_K_SCALES);
    // Two halves of 128: element 32*t + l of a half takes nibble (t >= 2) of ql[l + 32*(t & 1)] and bits
    // 2t..2t+1 of qh[l]; one int8 scale per 16 elements.
    for (int h = 0; h < 2; h++, y += 128, sc += 8) {
        const uint8_t *ql = b + Q6_K_QL + 64 * h;
        const uint8_t *qh = b + Q6_K_QH + 32 * h;
        for (int t = 0; t < 4; t++) {
            const uint8_t *qlt = ql + 32 * (t & 1);
            const int lsh = (t >> 1) * 4, hsh = 2 * t;
            const float da = d * (float)sc[2 * t], db = d * (float)sc[2 * t + 1];
            for (int l = 0; l < 16; l++)
                y[32 * t + l] = da * (float)((((qlt[l] >> lsh) & 0xf) | (((qh[l] >> hsh) & 3) << 4)) - 32);
            for (int l = 16; l < 32; l++)
                y[32 * t + l] = db * (float)((((qlt[l] >> lsh) & 0xf) | (((qh[l] >> hsh) & 3) << 4)) - 32);
        }
    }
}

static inline void dec_f16(const uint8_t *restrict b, float *restrict y, int64_t n) {
    for (int64_t i = 0; i < n; i++) y[i] = f16_fast(rd16(b + 2 * i));
}

static inline void dec_bf16(const uint8_t *restrict b, float *restrict y, int64_t n) {
    for (int64_t i = 0; i < n; i++) y[i] = bits_f32((uint32_t)rd16(b + 2 * i) << 16);
}

static const mt_dtype_info *info_checked(mt_dtype t, int64_t n, const char *what) {
    const mt_dtype_info *di = mt_dtype_get(t);
    if (!di->name || t == MT_I32)
        MT_ABORT("%s: dtype %d (%s) has no float codec", what, (int)t, mt_dtype_name(t));
    if (n < 0 || n % di->block_elems != 0)
        MT_ABORT("%s: %lld elements is not a whole number of %s blocks", what, (long long)n, di->name);
    return di;
}

// Decodes `nb` consecutive blocks (or elements, for plain types) into y.
static inline void decode_blocks(mt_dtype t, const uint8_t *b, float *y, int64_t nb) {
    // block sizes come from the dtype table: one definition of each layout's size
    const mt_dtype_info *di = mt_dtype_get(t);
    const int be = di->block_elems, bb = di->block_bytes;
#define DEC_LOOP(dec)                                                                                        \
    for (int64_t i = 0; i < nb; i++) dec(b + bb * i, y + be * i);                                            \
    break
    switch (t) {
    case MT_F32:
        memcpy(y, b, (size_t)nb * sizeof(float));
        break;
    case MT_F16:
    case MT_BF16: {
        int64_t i = 0;
        for (; i + QK_K <= nb; i += QK_K) { // constant trip counts vectorize
            if (t == MT_F16)
                dec_f16(b + 2 * i, y + i, QK_K);
            else
                dec_bf16(b + 2 * i, y + i, QK_K);
        }
        if (t == MT_F16)
            dec_f16(b + 2 * i, y + i, nb - i);
        else
            dec_bf16(b + 2 * i, y + i, nb - i);
        break;
    }
    case MT_Q8_0:
        DEC_LOOP(dec_q8_0);
    case MT_Q4_0:
        DEC_LOOP(dec_q4_0);
    case MT_Q4_1:
        DEC_LOOP(dec_q4_1);
    case MT_Q5_0:
        DEC_LOOP(dec_q5_0);
    case MT_Q5_1:
        DEC_LOOP(dec_q5_1);
    case MT_Q4_K:
        DEC_LOOP(dec_q4_k);
    case MT_Q5_K:
        DEC_LOOP(dec_q5_k);
    case MT_Q6_K:
        DEC_LOOP(dec_q6_k);
    default:
        MT_ABORT("dtype %d has no decoder", (int)t);
    }
#undef DEC_LOOP
}

void mt_dequantize_row(mt_dtype t, const void *src, float *dst, int64_t n) {
    const mt_dtype_info *di = info_checked(t, n, "mt_dequantize_row");
    decode_blocks(t, (const uint8_t *)src, dst, n / di->block_elems);
}

// ---- dot products ----

#define LANES 16

// Independent per-lane sums: float addition is not associative, so a single accumulator would keep the
// compiler from vectorizing; 16 lanes give it room. n is a multiple of LANES.
static inline void accum(float *restrict acc, const float *restrict a, const float *restrict x, int n) {
    for (int i = 0; i < n; i += LANES)
        for (int l = 0; l < LANES; l++) acc[l] += a[i + l] * x[i + l];
}

static inline float lanes_sum(const float *acc) {
    float s = 0.0f;
    for (int l = 0; l < LANES; l++) s += acc[l];
    return s;
}

// Plain types: decode chunks of 256 elements into a stack buffer; the tail (< LANES) goes one by one.
static float dot_plain(mt_dtype t, const uint8_t *row, const float *x, int64_t n) {
    float acc[LANES] = {0};
    float buf[QK_K];
    const int esz = t == MT_F32 ? 4 : 2;
    int64_t i = 0;
    // Fixed-size chunks throughout: at -O2 the compiler vectorizes only loops of constant trip count.
    if (t == MT_F32) {
        // memcpy: rows may be unaligned views of a file mapping
        for (; i + QK_K <= n; i += QK_K) {
            memcpy(buf, row + 4 * i, QK_K * sizeof(float));
            accum(acc, buf, x + i, QK_K);
        }
        for (; i + LANES <= n; i += LANES) {
            memcpy(buf, row + 4 * i, LANES * sizeof(float));
            accum(acc, buf, x + i, LANES);
        }
    } else {
        for (; i + QK_K <= n; i += QK_K) {
            if (t == MT_F16)
                dec_f16(row + esz * i, buf, QK_K);
            else
                dec_bf16(row + esz * i, buf, QK_K);
            accum(acc, buf, x + i, QK_K);
        }
        for (; i + LANES <= n; i += LANES) {
            if (t == MT_F16)
                dec_f16(row + esz * i, buf, LANES);
            else
                dec_bf16(row + esz * i, buf, LANES);
            accum(acc, buf, x + i, LANES);
        }
    }
    float s = lanes_sum(acc);
    if (i < n) {
        decode_blocks(t, row + esz * i, buf, n - i);
        for (int64_t k = 0; k < n - i; k++) s += buf[k] * x[i + k];
    }
    return s;
}

float mt_dot_row(mt_dtype t, const void *row, const float *x, int64_t n) {
    const mt_dtype_info *di = info_checked(t, n, "mt_dot_row");
    const uint8_t *b = (const uint8_t *)row;
    if (di->block_elems == 1) return dot_plain(t, b, x, n);
    float acc[LANES] = {0};
    float buf[QK_K];
    const int64_t nb = n / di->block_elems;
    const int be = di->block_elems, bb = di->block_bytes;
    // Decode one block into buf, then accumulate; the switch is outside the block loop.
#define DOT_LOOP(dec)                                                                                        \
    for (int64_t i = 0; i < nb; i++) {                                                                       \
        dec(b + bb * i, buf);                                                                                \
        accum(acc, buf, x + be * i, be);                                                                     \
    }                                                                                                        \
    break
    switch (t) {
    case MT_Q8_0:
        DOT_LOOP(dec_q8_0);
    case MT_Q4_0:
        DOT_LOOP(dec_q4_0);
    case MT_Q4_1:
        DOT_LOOP(dec_q4_1);
    case MT_Q5_0:
        DOT_LOOP(dec_q5_0);
    case MT_Q5_1:
        DOT_LOOP(dec_q5_1);
    case MT_Q4_K:
        DOT_LOOP(dec_q4_k);
    case MT_Q5_K:
        DOT_LOOP(dec_q5_k);
    case MT_Q6_K:
        DOT_LOOP(dec_q6_k);
    default:
        MT_ABORT("dtype %d has no dot product", (int)t);
    }
#undef DOT_LOOP
    return lanes_sum(acc);
}

// ---- encoders ----

static inline int nearest(float v) {
    return (int)lrintf(v);
}
static inline int clampi(int v, int lo, int hi) {
    return v < lo ? lo : v > hi ? hi : v;
}

// The element of largest magnitude, with its sign.
static float signed_absmax(const float *x, int n) {
    float m = 0.0f, am = 0.0f;
    for (int i = 0; i < n; i++)
        if (fabsf(x[i]) > am) {
            am = fabsf(x[i]);
            m = x[i];
        }
    return m;
}

static void min_max(const float *x, int n, float *lo, float *hi) {
    float a = x[0], b = x[0];
    for (int i = 1; i < n; i++) {
        a = fminf(a, x[i]);
        b = fmaxf(b, x[i]);
    }
    *lo = a;
    *hi = b;
}

static void enc_q8_0(const float *x, uint8_t *b) {
    float amax = 0.0f;
    for (int j = 0; j < QK; j++) amax = fmaxf(amax, fabsf(x[j]));
    const float d = amax / 127.0f, id = d != 0.0f ? 1.0f / d : 0.0f;
    wr16(b, mt_f32_to_f16(d));
    int8_t *qs = (int8_t *)(b + 2);
    for (int j = 0; j < QK; j++) qs[j] = (int8_t)clampi((int)roundf(x[j] * id), -127, 127);
}

// Fits x ~ s*q with integer q in [-nneg, nneg-1]. The starting grid puts the largest-magnitude element
// on -nneg (using the formats' extra negative code); nearby grid spacings are tried too, s is refit by
// least squares for each assignment, and the lowest squared error wins.
static float fit_sym(const float *x, int n, int nneg) {
    const float mx = signed_absmax(x, n);
    if (mx == 0.0f) return 0.0f;
    float best_s = mx / -(float)nneg;
    double best_err = INFINITY;
    for (int k = -10; k <= 10; k++) {
        const float iscale = -((float)nneg + 0.1f * (float)k) / mx;
        double sqq = 0, sqx = 0;
        int qv[QK];
        for (int i = 0; i < n; i++) {
            qv[i] = clampi(nearest(iscale * x[i]), -nneg, nneg - 1);
            sqq += (double)qv[i] * qv[i];
            sqx += (double)qv[i] * x[i];
        }
        if (sqq <= 0) continue;
        const double sc = sqx / sqq;
        double err = 0;
        for (int i = 0; i < n; i++) {
            const double e = sc * qv[i] - x[i];
            err += e * e;
        }
        if (err < best_err) {
            best_err = err;
            best_s = (float)sc;
        }
    }
    return best_s;
}

// Fits x ~ s*q + o with q in [0, nmax], the same way (grid around min/max, least-squares refit of s and
// o). With `nonpos_offset` the offset is kept <= 0: K-quants store it as a subtracted unsigned min.
static void fit_affine(const float *x, int n, int nmax, bool nonpos_offset, float *s_out, float *o_out) {
    float lo, hi;
    min_max(x, n, &lo, &hi);
    if (nonpos_offset && lo > 0.0f) lo = 0.0f;
    if (hi <= lo) { // constant block: the offset alone represents it
        *s_out = 0.0f;
        *o_out = lo;
        return;
    }
    float best_s = (hi - lo) / (float)nmax, best_o = lo;
    double best_err = INFINITY;
    for (int k = -10; k <= 10; k++) {
        const float iscale = ((float)nmax + 0.1f * (float)k) / (hi - lo);
        double sq = 0, sqq = 0, sx = 0, sqx = 0;
        int qv[QK];
        for (int i = 0; i < n; i++) {
            qv[i] = clampi(nearest(iscale * (x[i] - lo)), 0, nmax);
            sq += qv[i];
            sqq += (double)qv[i] * qv[i];
            sx += x[i];
            sqx += (double)qv[i] * x[i];
        }
        const double det = n * sqq - sq * sq;
        if (det <= 0) continue;
        double sc = (n * sqx - sq * sx) / det, o = (sqq * sx - sq * sqx) / det;
        if (nonpos_offset && o > 0) { // clamp the offset and refit the scale alone
            o = 0;
            sc = sqx / sqq;
        }
        if (sc < 0) continue;
        double err = 0;
        for (int i = 0; i < n; i++) {
            const double e = sc * qv[i] + o - x[i];
            err += e * e;
        }
        if (err < best_err) {
            best_err = err;
            best_s = (float)sc;
            best_o = (float)o;
        }
    }
    *s_out = best_s;
    *o_out = best_o;
}

// Q4_0 / Q5_0: codes are q + nneg. Quantization uses the stored (f16-rounded) scale, which is what the
// decoder will multiply by.
static void enc_sym(const float *x, uint8_t *d_out, uint8_t *q, int nneg) {
    wr16(d_out, mt_f32_to_f16(fit_sym(x, QK, nneg)));
    const float d = half_at(d_out), id = d != 0.0f ? 1.0f / d : 0.0f;
    for (int j = 0; j < QK; j++) q[j] = (uint8_t)(clampi(nearest(x[j] * id), -nneg, nneg - 1) + nneg);
}

// Q4_1 / Q5_1: d and m stored as f16, value d*q + m.
static void enc_affine(const float *x, uint8_t *dm_out, uint8_t *q, int nmax) {
    float s, o;
    fit_affine(x, QK, nmax, false, &s, &o);
    wr16(dm_out, mt_f32_to_f16(s));
    wr16(dm_out + 2, mt_f32_to_f16(o));
    const float d = half_at(dm_out), m = half_at(dm_out + 2), id = d != 0.0f ? 1.0f / d : 0.0f;
    for (int j = 0; j < QK; j++) q[j] = (uint8_t)clampi(nearest((x[j] - m) * id), 0, nmax);
}

static void pack_nibbles(const uint8_t *q, uint8_t *qs) {
    for (int j = 0; j < QK / 2; j++) qs[j] = (uint8_t)((q[j] & 0xf) | ((q[j + QK / 2] & 0xf) << 4));
}

static uint32_t pack_high_bits(const uint8_t *q) {
    uint32_t qh = 0;
    for (int j = 0; j < QK; j++) qh |= (uint32_t)((q[j] >> 4) & 1) << j;
    return qh;
}

static void enc_q4_0(const float *x, uint8_t *b) {
    uint8_t q[QK];
    enc_sym(x, b, q, 8);
    pack_nibbles(q, b + 2);
}

static void enc_q4_1(const float *x, uint8_t *b) {
    uint8_t q[QK];
    enc_affine(x, b, q, 15);
    pack_nibbles(q, b + 4);
}

static void enc_q5_0(const float *x, uint8_t *b) {
    uint8_t q[QK];
    enc_sym(x, b, q, 16);
    wr32(b + 2, pack_high_bits(q));
    pack_nibbles(q, b + 6);
}

static void enc_q5_1(const float *x, uint8_t *b) {
    uint8_t q[QK];
    enc_affine(x, b, q, 31);
    wr32(b + 4, pack_high_bits(q));
    pack_nibbles(q, b + 8);
}

// Q4_K / Q5_K: 8 sub-blocks of 32 with 6-bit scales and mins relative to the f16 super-block d and dmin.
static void enc_k_asym(const float *x, uint8_t *b, int nmax, uint8_t *L) {
    float s[8], mn[8], smax = 0.0f, mmax = 0.0f;
    for (int j = 0; j < 8; j++) {
        float o;
        fit_affine(x + 32 * j, 32, nmax, true, &s[j], &o);
        mn[j] = -o;
        smax = fmaxf(smax, s[j]);
        mmax = fmaxf(mmax, mn[j]);
    }
    wr16(b + Q4_K_D, mt_f32_to_f16(smax / 63.0f));
    wr16(b + Q4_K_DMIN, mt_f32_to_f16(mmax / 63.0f));
    // Requantize against the stored (f16-rounded) values so the decoder sees what we optimized for.
    const float d = half_at(b + Q4_K_D), dmin = half_at(b + Q4_K_DMIN);
    uint8_t *sp = b + Q4_K_SCALES;
    memset(sp, 0, 12);
    for (int j = 0; j < 8; j++) {
        const int sc = d > 0.0f ? clampi(nearest(s[j] / d), 0, 63) : 0;
        const int m = dmin > 0.0f ? clampi(nearest(mn[j] / dmin), 0, 63) : 0;
        if (j < 4) {
            sp[j] |= (uint8_t)sc;
            sp[j + 4] |= (uint8_t)m;
        } else {
            sp[j + 4] = (uint8_t)((sc & 0xf) | ((m & 0xf) << 4));
            sp[j - 4] |= (uint8_t)((sc >> 4) << 6);
            sp[j] |= (uint8_t)((m >> 4) << 6);
        }
        const float ds = d * (float)sc, dm = dmin * (float)m, ids = ds > 0.0f ? 1.0f / ds : 0.0f;
        for (int i = 0; i < 32; i++)
            L[32 * j + i] = (uint8_t)clampi(nearest((x[32 * j + i] + dm) * ids), 0, nmax);
    }
}

static void enc_q4_k(const float *x, uint8_t *b) {
    uint8_t L[QK_K];
    enc_k_asym(x, b, 15, L);
    uint8_t *qs = b + Q4_K_QS;
    for (int j = 0; j < 4; j++)
        for (int l = 0; l < 32; l++) qs[32 * j + l] = (uint8_t)(L[64 * j + l] | (L[64 * j + 32 + l] << 4));
}

static void enc_q5_k(const float *x, uint8_t *b) {
    uint8_t L[QK_K];
    enc_k_asym(x, b, 31, L);
    uint8_t *qh = b + Q5_K_QH, *qs = b + Q5_K_QS;
    memset(qh, 0, 32);
    for (int j = 0; j < 4; j++)
        for (int l = 0; l < 32; l++) {
            const int a = L[64 * j + l], c = L[64 * j + 32 + l];
            qs[32 * j + l] = (uint8_t)((a & 0xf) | ((c & 0xf) << 4));
            qh[l] |= (uint8_t)(((a >> 4) << (2 * j)) | ((c >> 4) << (2 * j + 1)));
        }
}

static void enc_q6_k(const float *x, uint8_t *b) {
    float s[16], smax = 0.0f;
    for (int j = 0; j < 16; j++) {
        s[j] = fit_sym(x + 16 * j, 16, 32);
        if (fabsf(s[j]) > fabsf(smax)) smax = s[j];
    }
    // As in the symmetric 4/5-bit blocks: the largest scale lands on -128.
    wr16(b + Q6_K_D, mt_f32_to_f16(smax / -128.0f));
    const float d = half_at(b + Q6_K_D);
    int8_t *sc = (int8_t *)(b + Q6_K_SCALES);
    uint8_t L[QK_K];
    for (int j = 0; j < 16; j++) {
        sc[j] = (int8_t)(d != 0.0f ? clampi(nearest(s[j] / d), -128, 127) : 0);
        const float ds = d * (float)sc[j], ids = ds != 0.0f ? 1.0f / ds : 0.0f;
        for (int i = 0; i < 16; i++)
            L[16 * j + i] = (uint8_t)(clampi(nearest(x[16 * j + i] * ids), -32, 31) + 32);
    }
    for (int h = 0; h < 2; h++) {
        uint8_t *ql = b + Q6_K_QL + 64 * h, *qh = b + Q6_K_QH + 32 * h;
        const uint8_t *Lh = L + 128 * h;
        for (int l = 0; l < 32; l++) {
            ql[l] = (uint8_t)((Lh[l] & 0xf) | ((Lh[64 + l] & 0xf) << 4));
            ql[32 + l] = (uint8_t)((Lh[32 + l] & 0xf) | ((Lh[96 + l] & 0xf) << 4));
            qh[l] = (uint8_t)((Lh[l] >> 4) | ((Lh[32 + l] >> 4) << 2) | ((Lh[64 + l] >> 4) << 4) |
                              ((Lh[96 + l] >> 4) << 6));
        }
    }
}

void mt_quantize_row(mt_dtype t, const float *src, void *dst, int64_t n) {
    const mt_dtype_info *di = info_checked(t, n, "mt_quantize_row");
    uint8_t *b = (uint8_t *)dst;
    const int64_t nb = n / di->block_elems;
    const int be = di->block_elems, bb = di->block_bytes;
    void (*enc)(const float *, uint8_t *) = NULL;
    switch (t) {
    case MT_F32:
        memcpy(dst, src, (size_t)n * sizeof(float));
        return;
    case MT_F16:
        for (int64_t i = 0; i < n; i++) wr16(b + 2 * i, mt_f32_to_f16(src[i]));
        return;
    case MT_BF16:
        for (int64_t i = 0; i < n; i++) wr16(b + 2 * i, mt_f32_to_bf16(src[i]));
        return;
    case MT_Q8_0:
        enc = enc_q8_0;
        break;
    case MT_Q4_0:
        enc = enc_q4_0;
        break;
    case MT_Q4_1:
        enc = enc_q4_1;
        break;
    case MT_Q5_0:
        enc = enc_q5_0;
        break;
    case MT_Q5_1:
        enc = enc_q5_1;
        break;
    case MT_Q4_K:
        enc = enc_q4_k;
        break;
    case MT_Q5_K:
        enc = enc_q5_k;
        break;
    case MT_Q6_K:
        enc = enc_q6_k;
        break;
    default:
        MT_ABORT("dtype %d has no encoder", (int)t);
    }
    for (int64_t i = 0; i < nb; i++) enc(src + be * i, b + bb * i);
}
