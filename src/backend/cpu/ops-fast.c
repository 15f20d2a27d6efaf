// Vectorized CPU kernels for rmsnorm, rope, attention, swiglu, add and softmax (see ops-fast.h). Written
// for AVX2 + FMA and compiled for that target whatever the build flags, so the same binary still runs the
// references on an older CPU (mt_cpu_ops_fast_supports then says no).
#include "ops-fast.h"

#include <math.h>
#include <string.h>

#include "../../core/threadpool.h"
#include "cpu-features.h"
#include "ops.h"

// Number of rows (dims 1..3) of a tensor, and the address of flat row r (as in the references).
static long n_rows(const mt_tensor *t) {
    return (long)(t->ne[1] * t->ne[2] * t->ne[3]);
}

static float *row_ptr(const mt_tensor *t, long r) {
    int64_t i1 = r % t->ne[1], rest = r / t->ne[1];
    return (float *)mt_tensor_row(t, i1, rest % t->ne[2], rest / t->ne[2]);
}

enum { ATT_MAX_HD = 512, ATT_CHUNK = 64 };

bool mt_cpu_ops_fast_supports(const mt_node *n) {
#if defined(__x86_64__)
    if (mt_cpu_isa() < MT_ISA_AVX2) return false;
    switch (n->op) {
    case MT_OP_RMSNORM:
    case MT_OP_ROPE:
    case MT_OP_SWIGLU:
    case MT_OP_ADD:
    case MT_OP_SOFTMAX:
        return true;
    case MT_OP_ATTENTION: {
        const int64_t hd = n->src[0]->ne[0];
        return hd % 8 == 0 && hd <= ATT_MAX_HD;
    }
    default:
        return false;
    }
#else
    (void)n;
    return false;
#endif
}

#if defined(__x86_64__)
#include <immintrin.h>

#if defined(__clang__)
#pragma clang attribute push(__attribute__((target("avx2,fma,f16c"))), apply_to = function)
#else
#pragma GCC push_options
#pragma GCC target("avx2,fma,f16c")
#endif

#define AI static inline __attribute__((always_inline))

AI float hsum8(__m256 v) {
    __m128 s = _mm_add_ps(_mm256_castps256_ps128(v), _mm256_extractf128_ps(v, 1));
    s = _mm_add_ps(s, _mm_movehl_ps(s, s));
    s = _mm_add_ss(s, _mm_movehdup_ps(s));
    return _mm_cvtss_f32(s);
}

AI float hmax8(__m256 v) {
    __m128 s = _mm_max_ps(_mm256_castps256_ps128(v), _mm256_extractf128_ps(v, 1));
    s = _mm_max_ps(s, _mm_movehl_ps(s, s));
    s = _mm_max_ss(s, _mm_movehdup_ps(s));
    return _mm_cvtss_f32(s);
}

#include "exp-avx2.h"

// The first `n` (< 8) floats of p, zeros after: tails without reading past the row.
AI __m256 load_part(const float *p, int64_t n) {
    float t[8] = {0};
    memcpy(t, p, (size_t)n * sizeof(float));
    return _mm256_loadu_ps(t);
}

AI void store_part(float *p, __m256 v, int64_t n) {
    float t[8];
    _mm256_storeu_ps(t, v);
    memcpy(p, t, (size_t)n * sizeof(float));
}

void mt_cpu_fast_add_rmsnorm_row(float *xr, const float *add, const float *w, float eps, float *y,
                                 int64_t d) {
    __m256 a0 = _mm256_setzero_ps(), a1 = _mm256_setzero_ps();
    int64_t i = 0;
    if (add) {
        for (; i + 8 <= d; i += 8)
            _mm256_storeu_ps(xr + i, _mm256_add_ps(_mm256_loadu_ps(xr + i), _mm256_loadu_ps(add + i)));
        for (; i < d; i++) xr[i] += add[i];
        i = 0;
    }
    for (; i + 16 <= d; i += 16) {
        const __m256 v0 = _mm256_loadu_ps(xr + i), v1 = _mm256_loadu_ps(xr + i + 8);
        a0 = _mm256_fmadd_ps(v0, v0, a0);
        a1 = _mm256_fmadd_ps(v1, v1, a1);
    }
    for (; i + 8 <= d; i += 8) a0 = _mm256_fmadd_ps(_mm256_loadu_ps(xr + i), _mm256_loadu_ps(xr + i), a0);
    double ss = hsum8(_mm256_add_ps(a0, a1));
    for (; i < d; i++) ss += (double)xr[i] * xr[i];
    const float inv = d > 0 ? (float)(1.0 / sqrt(ss / (double)d + (double)eps)) : 0.0f;
    const __m256 iv = _mm256_set1_ps(inv);
    for (i = 0; i + 8 <= d; i += 8)
        _mm256_storeu_ps(y + i,
                         _mm256_mul_ps(_mm256_mul_ps(_mm256_loadu_ps(xr + i), iv), _mm256_loadu_ps(w + i)));
    for (; i < d; i++) y[i] = xr[i] * inv * w[i];
}

void mt_cpu_fast_rmsnorm(const mt_node *n, int ith, int nth) {
    const mt_tensor *x = n->src[0], *dst = n->dst;
    const float *w = n->src[1]->data;
    long b, e;
    mt_split(n_rows(x), ith, nth, &b, &e);
    // Without an addend the row kernel only reads x.
    for (long r = b; r < e; r++)
        mt_cpu_fast_add_rmsnorm_row(row_ptr(x, r), NULL, w, n->p.eps, row_ptr(dst, r), x->ne[0]);
}

// Angles per chunk of rotation pairs, computed once per token for all heads (as the reference does).
#define ROPE_CHUNK 64

void mt_cpu_fast_rope(const mt_node *n, int ith, int nth) {
    const mt_tensor *x = n->src[0], *dst = n->dst;
    const int64_t hd = x->ne[0], half = hd / 2, n_head = x->ne[1];
    const double base = n->p.freq_base;
    float cs[ROPE_CHUNK], sn[ROPE_CHUNK];
    double inv_freq[ROPE_CHUNK];
    long b, e;
    mt_split((long)x->ne[2], ith, nth, &b, &e);
    for (int64_t c0 = 0; c0 < half; c0 += ROPE_CHUNK) {
        const int64_t cn = half - c0 < ROPE_CHUNK ? half - c0 : ROPE_CHUNK;
        for (int64_t j = 0; j < cn; j++) inv_freq[j] = pow(base, -2.0 * (double)(c0 + j) / (double)hd);
        for (long t = b; t < e; t++) {
            const double pos = n->p.pos[t];
            for (int64_t j = 0; j < cn; j++) {
                const double theta = pos * inv_freq[j];
                cs[j] = (float)cos(theta);
                sn[j] = (float)sin(theta);
            }
            for (int64_t h = 0; h < n_head; h++) {
                const float *xr = (const float *)mt_tensor_row(x, h, t, 0) + c0;
                float *y = (float *)mt_tensor_row(dst, h, t, 0) + c0;
                // Both halves are read before either is written, so dst may alias x.
                int64_t j = 0;
                for (; j + 8 <= cn; j += 8) {
                    const __m256 x0 = _mm256_loadu_ps(xr + j), x1 = _mm256_loadu_ps(xr + j + half);
                    const __m256 c = _mm256_loadu_ps(cs + j), s = _mm256_loadu_ps(sn + j);
                    _mm256_storeu_ps(y + j, _mm256_fmsub_ps(x0, c, _mm256_mul_ps(x1, s)));
                    _mm256_storeu_ps(y + j + half, _mm256_fmadd_ps(x0, s, _mm256_mul_ps(x1, c)));
                }
                for (; j < cn; j++) {
                    const float x0 = xr[j], x1 = xr[j + half];
                    y[j] = x0 * cs[j] - x1 * sn[j];
                    y[j + half] = x0 * sn[j] + x1 * cs[j];
                }
            }
        }
    }
}

// Eight dot-product accumulators reduced to one vector of their eight sums, in order.
AI __m256 reduce8x8(const __m256 a[8]) {
    const __m256 h01 = _mm256_hadd_ps(a[0], a[1]), h23 = _mm256_hadd_ps(a[2], a[3]);
    const __m256 h45 = _mm256_hadd_ps(a[4], a[5]), h67 = _mm256_hadd_ps(a[6], a[7]);
    const __m256 q0 = _mm256_hadd_ps(h01, h23), q1 = _mm256_hadd_ps(h45, h67);
    return _mm256_add_ps(_mm256_permute2f128_ps(q0, q1, 0x20), _mm256_permute2f128_ps(q0, q1, 0x31));
}

// One (token, head) row of attention over positions [0, len) of a cached sequence: k/v point at position
// 0 of the KV head, positions `ps` floats apart. HD > 0 fixes head_dim at compile time (the accumulators
// stay in registers); HD == 0 takes hd at run time.
AI void att_row(const int HD, int64_t hd_rt, const float *q, const float *k, const float *v, size_t ps,
                int64_t len, float scale, float *out) {
    const int64_t hd = HD ? HD : hd_rt, nv = hd / 8;
    __m256 qv[ATT_MAX_HD / 8], acc[ATT_MAX_HD / 8];
    const __m256 sv = _mm256_set1_ps(scale);
    for (int64_t c = 0; c < nv; c++) {
        qv[c] = _mm256_mul_ps(_mm256_loadu_ps(q + 8 * c), sv); // scale folded into q
        acc[c] = _mm256_setzero_ps();
    }
    float sc[ATT_CHUNK];
    float mx = -INFINITY, sum = 0;
    for (int64_t j0 = 0; j0 < len; j0 += ATT_CHUNK) {
        const int64_t jn = len - j0 < ATT_CHUNK ? len - j0 : ATT_CHUNK;
        int64_t j = 0;
        __m256 cm = _mm256_set1_ps(-INFINITY);
        for (; j + 8 <= jn; j += 8) {
            __m256 a[8];
            for (int p = 0; p < 8; p++) {
                const float *kr = k + (size_t)(j0 + j + p) * ps;
                a[p] = _mm256_mul_ps(qv[0], _mm256_loadu_ps(kr));
                for (int64_t c = 1; c < nv; c++)
                    a[p] = _mm256_fmadd_ps(qv[c], _mm256_loadu_ps(kr + 8 * c), a[p]);
            }
            const __m256 s8 = reduce8x8(a);
            _mm256_storeu_ps(sc + j, s8);
            cm = _mm256_max_ps(cm, s8);
        }
        float cmx = hmax8(cm);
        for (; j < jn; j++) {
            const float *kr = k + (size_t)(j0 + j) * ps;
            __m256 a = _mm256_mul_ps(qv[0], _mm256_loadu_ps(kr));
            for (int64_t c = 1; c < nv; c++) a = _mm256_fmadd_ps(qv[c], _mm256_loadu_ps(kr + 8 * c), a);
            sc[j] = hsum8(a);
            cmx = sc[j] > cmx ? sc[j] : cmx;
        }
        if (cmx > mx) { // a higher max rescales what was accumulated so far (online softmax)
            if (mx != -INFINITY) {
                const float r = expf(mx - cmx);
                sum *= r;
                const __m256 rv = _mm256_set1_ps(r);
                for (int64_t c = 0; c < nv; c++) acc[c] = _mm256_mul_ps(acc[c], rv);
            }
            mx = cmx;
        }
        const __m256 mv = _mm256_set1_ps(mx);
        __m256 sv8 = _mm256_setzero_ps();
        for (j = 0; j + 8 <= jn; j += 8) {
            const __m256 p = mt_exp8(_mm256_sub_ps(_mm256_loadu_ps(sc + j), mv));
            _mm256_storeu_ps(sc + j, p);
            sv8 = _mm256_add_ps(sv8, p);
        }
        if (j < jn) {
            const __m256 p = mt_exp8(_mm256_sub_ps(load_part(sc + j, jn - j), mv));
            store_part(sc + j, p, jn - j);
            for (int64_t t = j; t < jn; t++) sum += sc[t];
        }
        sum += hsum8(sv8);
        for (j = 0; j < jn; j++) {
            const float *vr = v + (size_t)(j0 + j) * ps;
            const __m256 p = _mm256_set1_ps(sc[j]);
            for (int64_t c = 0; c < nv; c++) acc[c] = _mm256_fmadd_ps(p, _mm256_loadu_ps(vr + 8 * c), acc[c]);
        }
    }
    const __m256 iv = _mm256_set1_ps(1.0f / sum);
    for (int64_t c = 0; c < nv; c++) _mm256_storeu_ps(out + 8 * c, _mm256_mul_ps(acc[c], iv));
}

static void att_row_64(const float *q, const float *k, const float *v, size_t ps, int64_t len, float scale,
                       float *out) {
    att_row(64, 64, q, k, v, ps, len, scale, out);
}
static void att_row_128(const float *q, const float *k, const float *v, size_t ps, int64_t len, float scale,
                        float *out) {
    att_row(128, 128, q, k, v, ps, len, scale, out);
}
static void att_row_any(int64_t hd, const float *q, const float *k, const float *v, size_t ps, int64_t len,
                        float scale, float *out) {
    att_row(0, hd, q, k, v, ps, len, scale, out);
}

void mt_cpu_fast_attention(const mt_node *n, int ith, int nth) {
    const mt_tensor *q = n->src[0], *kc = n->src[1], *vc = n->src[2], *dst = n->dst;
    const int64_t hd = q->ne[0], n_head = q->ne[1], group = n_head / kc->ne[1];
    const float scale = n->p.scale != 0 ? n->p.scale : (float)(1.0 / sqrt((double)hd));
    const size_t ps = kc->nb[2] / sizeof(float);
    MT_ASSERT(kc->nb[2] == vc->nb[2] && kc->nb[2] % sizeof(float) == 0);
    const long total = (long)(q->ne[2] * n_head);
    for (long w = ith; w < total; w += nth) {
        const int64_t t = w / n_head, h = w % n_head, kvh = h / group;
        const int64_t len = (int64_t)n->p.pos[t] + 1, s = n->p.seq[t];
        const float *qr = mt_tensor_row(q, h, t, 0);
        const float *kr = mt_tensor_row(kc, kvh, 0, s), *vr = mt_tensor_row(vc, kvh, 0, s);
        float *out = mt_tensor_row(dst, h, t, 0);
        if (hd == 64)
            att_row_64(qr, kr, vr, ps, len, scale, out);
        else if (hd == 128)
            att_row_128(qr, kr, vr, ps, len, scale, out);
        else
            att_row_any(hd, qr, kr, vr, ps, len, scale, out);
    }
}

void mt_cpu_fast_swiglu_span(const float *gr, const float *ur, float *y, int64_t f) {
    const __m256 one = _mm256_set1_ps(1.0f), zero = _mm256_setzero_ps();
    int64_t i = 0;
    for (; i + 8 <= f; i += 8) {
        const __m256 gv = _mm256_loadu_ps(gr + i);
        const __m256 s = _mm256_div_ps(gv, _mm256_add_ps(one, mt_exp8(_mm256_sub_ps(zero, gv))));
        _mm256_storeu_ps(y + i, _mm256_mul_ps(s, _mm256_loadu_ps(ur + i)));
    }
    for (; i < f; i++) y[i] = gr[i] / (1.0f + expf(-gr[i])) * ur[i];
}

void mt_cpu_fast_swiglu(const mt_node *n, int ith, int nth) {
    const mt_tensor *g = n->src[0], *u = n->src[1], *dst = n->dst;
    long b, e;
    mt_split(n_rows(g), ith, nth, &b, &e);
    for (long r = b; r < e; r++)
        mt_cpu_fast_swiglu_span(row_ptr(g, r), row_ptr(u, r), row_ptr(dst, r), g->ne[0]);
}

void mt_cpu_fast_add(const mt_node *n, int ith, int nth) {
    const mt_tensor *a = n->src[0], *bt = n->src[1], *dst = n->dst;
    const int64_t d = a->ne[0];
    long b, e;
    mt_split(n_rows(a), ith, nth, &b, &e);
    for (long r = b; r < e; r++) {
        const float *ar = row_ptr(a, r), *br = row_ptr(bt, r);
        float *y = row_ptr(dst, r);
        int64_t i = 0;
        for (; i + 8 <= d; i += 8)
            _mm256_storeu_ps(y + i, _mm256_add_ps(_mm256_loadu_ps(ar + i), _mm256_loadu_ps(br + i)));
        for (; i < d; i++) y[i] = ar[i] + br[i];
    }
}

void mt_cpu_fast_softmax(const mt_node *n, int ith, int nth) {
    const mt_tensor *x = n->src[0], *dst = n->dst;
    const int64_t d = x->ne[0];
    long b, e;
    mt_split(n_rows(x), ith, nth, &b, &e);
    for (long r = b; r < e; r++) {
        const float *xr = row_ptr(x, r);
        float *y = row_ptr(dst, r);
        __m256 m8 = _mm256_set1_ps(-INFINITY);
        int64_t i = 0;
        for (; i + 8 <= d; i += 8) m8 = _mm256_max_ps(m8, _mm256_loadu_ps(xr + i));
        float mx = hmax8(m8);
        for (; i < d; i++) mx = xr[i] > mx ? xr[i] : mx;
        const __m256 mv = _mm256_set1_ps(mx);
        __m256 s8 = _mm256_setzero_ps();
        for (i = 0; i + 8 <= d; i += 8) {
            const __m256 p = mt_exp8(_mm256_sub_ps(_mm256_loadu_ps(xr + i), mv));
            _mm256_storeu_ps(y + i, p);
            s8 = _mm256_add_ps(s8, p);
        }
        double sum = hsum8(s8);
        for (; i < d; i++) {
            y[i] = expf(xr[i] - mx);
            sum += y[i];
        }
        const float inv = (float)(1.0 / sum);
        const __m256 iv = _mm256_set1_ps(inv);
        for (i = 0; i + 8 <= d; i += 8) _mm256_storeu_ps(y + i, _mm256_mul_ps(_mm256_loadu_ps(y + i), iv));
        for (; i < d; i++) y[i] *= inv;
    }
}

#if defined(__clang__)
#pragma clang attribute pop
#else
#pragma GCC pop_options
#endif

bool mt_cpu_fast_rows_ok(void) {
    return mt_cpu_isa() >= MT_ISA_AVX2;
}

#else // not x86-64: the references (mt_cpu_ops_fast_supports is false, so these are not selected)
bool mt_cpu_fast_rows_ok(void) {
    return false;
}
void mt_cpu_fast_swiglu_span(const float *g, const float *u, float *y, int64_t n) {
    for (int64_t i = 0; i < n; i++) y[i] = g[i] / (1.0f + expf(-g[i])) * u[i];
}
void mt_cpu_fast_add_rmsnorm_row(float *x, const float *add, const float *w, float eps, float *y, int64_t d) {
    double ss = 0;
    for (int64_t i = 0; i < d; i++) {
        if (add) x[i] += add[i];
        ss += (double)x[i] * x[i];
    }
    const float inv = d > 0 ? (float)(1.0 / sqrt(ss / (double)d + (double)eps)) : 0.0f;
    for (int64_t i = 0; i < d; i++) y[i] = x[i] * inv * w[i];
}
void mt_cpu_fast_rmsnorm(const mt_node *n, int ith, int nth) {
    mt_cpu_op_rmsnorm(n, ith, nth);
}
void mt_cpu_fast_rope(const mt_node *n, int ith, int nth) {
    mt_cpu_op_rope(n, ith, nth);
}
void mt_cpu_fast_attention(const mt_node *n, int ith, int nth) {
    mt_cpu_op_attention(n, ith, nth);
}
void mt_cpu_fast_swiglu(const mt_node *n, int ith, int nth) {
    mt_cpu_op_swiglu(n, ith, nth);
}
void mt_cpu_fast_add(const mt_node *n, int ith, int nth) {
    mt_cpu_op_add(n, ith, nth);
}
void mt_cpu_fast_softmax(const mt_node *n, int ith, int nth) {
    mt_cpu_op_softmax(n, ith, nth);
}
#endif
