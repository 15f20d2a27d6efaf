// Fused CPU kernels of the graph path (see fused.h). Arguments were validated when the graph was built
// (op table checks plus mt_cpu_sdpa_check), so the kernels carry no argument checks.
#include "fused.h"

#include <math.h>
#include <string.h>

#if defined(__AVX2__) && defined(__FMA__)
#include <immintrin.h>
#endif

#include "../../core/threadpool.h"
#include "matmul-fast.h"
#include "ops-fast.h"
#include "ops.h"

static inline float dot(const float *a, const float *b, int64_t n) {
    int64_t i = 0;
    float s = 0;
#if defined(__AVX2__) && defined(__FMA__)
    __m256 a0 = _mm256_setzero_ps(), a1 = _mm256_setzero_ps();
    for (; i + 16 <= n; i += 16) {
        a0 = _mm256_fmadd_ps(_mm256_loadu_ps(a + i), _mm256_loadu_ps(b + i), a0);
        a1 = _mm256_fmadd_ps(_mm256_loadu_ps(a + i + 8), _mm256_loadu_ps(b + i + 8), a1);
    }
    for (; i + 8 <= n; i += 8) a0 = _mm256_fmadd_ps(_mm256_loadu_ps(a + i), _mm256_loadu_ps(b + i), a0);
    __m256 t = _mm256_add_ps(a0, a1);
    __m128 h = _mm_add_ps(_mm256_castps256_ps128(t), _mm256_extractf128_ps(t, 1));
    h = _mm_add_ps(h, _mm_movehl_ps(h, h));
    h = _mm_add_ss(h, _mm_movehdup_ps(h));
    s = _mm_cvtss_f32(h);
#else
    float acc[8] = {0};
    for (; i + 8 <= n; i += 8)
        for (int j = 0; j < 8; j++) acc[j] += a[i + j] * b[i + j];
    s = ((acc[0] + acc[4]) + (acc[1] + acc[5])) + ((acc[2] + acc[6]) + (acc[3] + acc[7]));
#endif
    for (; i < n; i++) s += a[i] * b[i];
    return s;
}

// y += p * x
static inline void axpy(float *y, float p, const float *x, int64_t n) {
    int64_t i = 0;
#if defined(__AVX2__) && defined(__FMA__)
    __m256 pv = _mm256_set1_ps(p);
    for (; i + 8 <= n; i += 8)
        _mm256_storeu_ps(y + i, _mm256_fmadd_ps(pv, _mm256_loadu_ps(x + i), _mm256_loadu_ps(y + i)));
#endif
    for (; i < n; i++) y[i] += p * x[i];
}

static inline void scale_row(float *y, float r, int64_t n) {
    for (int64_t i = 0; i < n; i++) y[i] *= r;
}

mt_status mt_cpu_sdpa_check(const mt_sdpa_args *a) {
    const mt_tensor *q = a->q, *k = a->k, *v = a->v, *d = a->dst;
    if (!q || !k || !v || !d) return mt_fail(MT_ERR_INVALID, "sdpa: missing q, k, v or dst");
    const mt_tensor *all[4] = {q, k, v, d};
    const char *names[4] = {"q", "k", "v", "dst"};
    for (int i = 0; i < 4; i++)
        if (all[i]->dtype != MT_F32 || all[i]->nb[0] != sizeof(float))
            return mt_fail(MT_ERR_INVALID, "sdpa: %s must be F32 with contiguous rows (dtype %s, nb[0] %zu)",
                           names[i], mt_dtype_name(all[i]->dtype), all[i]->nb[0]);
    if (k->ne[0] != q->ne[0] || v->ne[0] != q->ne[0])
        return mt_fail(MT_ERR_INVALID, "sdpa: head_dim mismatch: q %lld, k %lld, v %lld", (long long)q->ne[0],
                       (long long)k->ne[0], (long long)v->ne[0]);
    for (int i = 1; i < 4; i++)
        if (k->ne[i] != v->ne[i])
            return mt_fail(MT_ERR_INVALID, "sdpa: k ne[%d] = %lld but v ne[%d] = %lld", i,
                           (long long)k->ne[i], i, (long long)v->ne[i]);
    for (int i = 0; i < 4; i++)
        if (d->ne[i] != q->ne[i])
            return mt_fail(MT_ERR_INVALID, "sdpa: dst ne[%d] = %lld, q ne[%d] = %lld", i, (long long)d->ne[i],
                           i, (long long)q->ne[i]);
    if (k->ne[1] <= 0 || q->ne[1] % k->ne[1] != 0)
        return mt_fail(MT_ERR_INVALID, "sdpa: n_head = %lld is not a multiple of n_kv = %lld",
                       (long long)q->ne[1], (long long)k->ne[1]);
    if (q->ne[0] <= 0) return mt_fail(MT_ERR_INVALID, "sdpa: head_dim is %lld", (long long)q->ne[0]);
    int64_t rows = a->pos ? q->ne[2] : q->ne[2];
    int64_t keys = a->pos ? k->ne[2] : (a->kv_len ? a->kv_len : k->ne[2]);
    if (!a->pos) {
        if (keys < 1 || keys > k->ne[2])
            return mt_fail(MT_ERR_INVALID, "sdpa: kv_len = %lld outside [1, %lld]", (long long)keys,
                           (long long)k->ne[2]);
        if (q->ne[3] != k->ne[3])
            return mt_fail(MT_ERR_INVALID, "sdpa: q batch (ne[3]) = %lld, k batch = %lld",
                           (long long)q->ne[3], (long long)k->ne[3]);
        if (a->causal && q->ne[2] > keys)
            return mt_fail(MT_ERR_INVALID, "sdpa: causal with %lld query rows but only %lld keys",
                           (long long)q->ne[2], (long long)keys);
    } else {
        if (q->ne[3] != 1) return mt_fail(MT_ERR_INVALID, "sdpa: cache mode needs q [hd, heads, n]");
        if (!a->seq) return mt_fail(MT_ERR_INVALID, "sdpa: cache mode without seq");
        for (int64_t t = 0; t < q->ne[2]; t++)
            if (a->pos[t] < 0 || a->pos[t] >= k->ne[2] || a->seq[t] < 0 || a->seq[t] >= k->ne[3])
                return mt_fail(MT_ERR_INVALID,
                               "sdpa: token %lld at pos %d seq %d outside the cache [%lld, %lld]",
                               (long long)t, a->pos[t], a->seq[t], (long long)k->ne[2], (long long)k->ne[3]);
    }
    if (a->mask) {
        const mt_tensor *m = a->mask;
        if (m->dtype != MT_F32 || m->nb[0] != sizeof(float))
            return mt_fail(MT_ERR_INVALID, "sdpa: mask must be F32 with contiguous rows");
        if (m->ne[0] < keys || m->ne[1] < rows)
            return mt_fail(MT_ERR_INVALID,
                           "sdpa: mask is [%lld, %lld], needs at least [%lld keys, %lld rows]",
                           (long long)m->ne[0], (long long)m->ne[1], (long long)keys, (long long)rows);
    }
    if (!(a->scale >= 0 && isfinite(a->scale)))
        return mt_fail(MT_ERR_INVALID, "sdpa: scale = %g must be finite and >= 0", (double)a->scale);
    return MT_OK;
}

#define SDPA_CHUNK 64 // keys scored per block (online softmax, nothing proportional to the context)
#define SDPA_GROUP 8  // query heads of one KV group processed together

#if defined(__AVX2__) && defined(__FMA__)
#include "exp-avx2.h"

// Lane p of the result is the sum of the eight lanes of a[p].
static inline __m256 sum8x8(const __m256 a[8]) {
    const __m256 s0 = _mm256_hadd_ps(_mm256_hadd_ps(a[0], a[1]), _mm256_hadd_ps(a[2], a[3]));
    const __m256 s1 = _mm256_hadd_ps(_mm256_hadd_ps(a[4], a[5]), _mm256_hadd_ps(a[6], a[7]));
    return _mm256_add_ps(_mm256_permute2f128_ps(s0, s1, 0x20), _mm256_permute2f128_ps(s0, s1, 0x31));
}

// One (token, KV head) item without an additive mask: keys [lo, hi) at row stride ps (floats) from k and
// v. Per block of keys, every query head of the group scores the block and accumulates its V rows while
// the block is in L1: eight keys per step with their dot products reduced together, exponentials eight at
// a time, V accumulated in registers 64 features at a time (hd % 8 == 0).
static void sdpa_item_avx2(const float *const *qr, float *const *out, int64_t nh, const float *k,
                           const float *v, size_t ps, int64_t lo, int64_t hi, int64_t hd, float scale) {
    float sc[SDPA_CHUNK] __attribute__((aligned(32)));
    float mx[SDPA_GROUP], sum[SDPA_GROUP];
    for (int64_t h = 0; h < nh; h++) {
        memset(out[h], 0, (size_t)hd * sizeof(float));
        mx[h] = -INFINITY;
        sum[h] = 0;
    }
    const __m256 sv = _mm256_set1_ps(scale);
    for (int64_t j0 = lo; j0 < hi; j0 += SDPA_CHUNK) {
        const int64_t jn = hi - j0 < SDPA_CHUNK ? hi - j0 : SDPA_CHUNK;
        const float *kb = k + (size_t)j0 * ps, *vb = v + (size_t)j0 * ps;
        for (int64_t h = 0; h < nh; h++) {
            const float *q = qr[h];
            int64_t j = 0;
            __m256 cm = _mm256_set1_ps(-INFINITY);
            for (; j + 8 <= jn; j += 8) {
                __m256 a[8];
#pragma GCC unroll 8
                for (int p = 0; p < 8; p++) a[p] = _mm256_setzero_ps();
                for (int64_t c = 0; c < hd; c += 8) {
                    const __m256 qv = _mm256_loadu_ps(q + c);
#pragma GCC unroll 8
                    for (int p = 0; p < 8; p++)
                        a[p] = _mm256_fmadd_ps(qv, _mm256_loadu_ps(kb + (size_t)(j + p) * ps + c), a[p]);
                }
                const __m256 s = _mm256_mul_ps(sum8x8(a), sv);
                _mm256_store_ps(sc + j, s);
                cm = _mm256_max_ps(cm, s);
            }
            float m8[8], cmx = -INFINITY;
            _mm256_storeu_ps(m8, cm);
            for (int p = 0; p < 8; p++) cmx = m8[p] > cmx ? m8[p] : cmx;
            for (; j < jn; j++) {
                sc[j] = dot(q, kb + (size_t)j * ps, hd) * scale;
                cmx = sc[j] > cmx ? sc[j] : cmx;
            }
            if (cmx > mx[h]) { // a higher max rescales what was accumulated so far
                if (mx[h] != -INFINITY) {
                    const float r = expf(mx[h] - cmx);
                    sum[h] *= r;
                    scale_row(out[h], r, hd);
                }
                mx[h] = cmx;
            }
            const __m256 mv = _mm256_set1_ps(mx[h]);
            __m256 s8 = _mm256_setzero_ps();
            for (j = 0; j + 8 <= jn; j += 8) {
                const __m256 e = mt_exp8(_mm256_sub_ps(_mm256_load_ps(sc + j), mv));
                _mm256_store_ps(sc + j, e);
                s8 = _mm256_add_ps(s8, e);
            }
            float t8[8];
            _mm256_storeu_ps(t8, s8);
            for (int p = 0; p < 8; p++) sum[h] += t8[p];
            for (; j < jn; j++) {
                sc[j] = expf(sc[j] - mx[h]);
                sum[h] += sc[j];
            }
            float *o = out[h];
            int64_t c0 = 0;
            for (; c0 + 64 <= hd; c0 += 64) {
                __m256 acc[8];
#pragma GCC unroll 8
                for (int c = 0; c < 8; c++) acc[c] = _mm256_loadu_ps(o + c0 + 8 * c);
                for (j = 0; j < jn; j++) {
                    const __m256 pj = _mm256_set1_ps(sc[j]);
                    const float *vr = vb + (size_t)j * ps + c0;
#pragma GCC unroll 8
                    for (int c = 0; c < 8; c++)
                        acc[c] = _mm256_fmadd_ps(pj, _mm256_loadu_ps(vr + 8 * c), acc[c]);
                }
#pragma GCC unroll 8
                for (int c = 0; c < 8; c++) _mm256_storeu_ps(o + c0 + 8 * c, acc[c]);
            }
            for (; c0 < hd; c0 += 8) {
                __m256 acc = _mm256_loadu_ps(o + c0);
                for (j = 0; j < jn; j++)
                    acc = _mm256_fmadd_ps(_mm256_set1_ps(sc[j]), _mm256_loadu_ps(vb + (size_t)j * ps + c0),
                                          acc);
                _mm256_storeu_ps(o + c0, acc);
            }
        }
    }
    for (int64_t h = 0; h < nh; h++) // a row that sees no key at all keeps its zeros
        if (sum[h] > 0) scale_row(out[h], 1.0f / sum[h], hd);
}
#endif

void mt_cpu_sdpa(const mt_sdpa_args *a, int ith, int nth) {
    const mt_tensor *q = a->q, *kc = a->k, *vc = a->v;
    mt_tensor *dst = a->dst;
    const int64_t hd = q->ne[0], H = q->ne[1], KV = kc->ne[1], G = H / KV;
    const int64_t n_q = q->ne[2], B = a->pos ? 1 : q->ne[3];
    const int64_t kv_len = a->kv_len ? a->kv_len : kc->ne[2];
    const float scale = a->scale != 0 ? a->scale : (float)(1.0 / sqrt((double)hd));
    float sc[SDPA_GROUP][SDPA_CHUNK], mx[SDPA_GROUP], sum[SDPA_GROUP];
#if defined(__AVX2__) && defined(__FMA__)
    const bool fast = hd % 8 == 0 && !a->mask && mt_cpu_fast_rows_ok() && kc->nb[2] == vc->nb[2] &&
                      kc->nb[2] % sizeof(float) == 0;
#endif
    // Items dealt round-robin: causal rows grow with the token index, so contiguous ranges would leave
    // the thread holding the last tokens most of the keys (3/4 of them for two threads).
    const long total = (long)(n_q * B * KV);
    for (long w = ith; w < total; w += nth) {
        const int64_t g = w % KV, tok = w / KV, i = tok % n_q, bb = tok / n_q;
        int64_t lo = 0, hi, slot;
        if (a->pos) {
            hi = (int64_t)a->pos[i] + 1;
            slot = a->seq[i];
        } else {
            hi = a->causal ? i + kv_len - n_q + 1 : kv_len;
            slot = bb;
        }
        if (a->lo && a->lo[i] > lo) lo = a->lo[i];
        if (a->hi && a->hi[i] < hi) hi = a->hi[i];
#if defined(__AVX2__) && defined(__FMA__)
        if (fast) {
            const float *kr = mt_tensor_row(kc, g, 0, slot), *vr = mt_tensor_row(vc, g, 0, slot);
            for (int64_t h0 = g * G; h0 < (g + 1) * G; h0 += SDPA_GROUP) {
                const int64_t nh = (g + 1) * G - h0 < SDPA_GROUP ? (g + 1) * G - h0 : SDPA_GROUP;
                const float *qr[SDPA_GROUP];
                float *out[SDPA_GROUP];
                for (int64_t h = 0; h < nh; h++) {
                    qr[h] = mt_tensor_row(q, h0 + h, i, bb);
                    out[h] = mt_tensor_row(dst, h0 + h, i, bb);
                }
                sdpa_item_avx2(qr, out, nh, kr, vr, kc->nb[2] / sizeof(float), lo, hi, hd, scale);
            }
            continue;
        }
#endif
        const float *mrow = a->mask ? (const float *)mt_tensor_row(a->mask, i, 0, 0) : NULL;
        for (int64_t h0 = g * G; h0 < (g + 1) * G; h0 += SDPA_GROUP) {
            const int64_t nh = (g + 1) * G - h0 < SDPA_GROUP ? (g + 1) * G - h0 : SDPA_GROUP;
            const float *qr[SDPA_GROUP];
            float *out[SDPA_GROUP];
            for (int64_t h = 0; h < nh; h++) {
                qr[h] = mt_tensor_row(q, h0 + h, i, bb);
                out[h] = mt_tensor_row(dst, h0 + h, i, bb);
                memset(out[h], 0, (size_t)hd * sizeof(float));
                mx[h] = -INFINITY;
                sum[h] = 0;
            }
            for (int64_t j0 = lo; j0 < hi; j0 += SDPA_CHUNK) {
                const int64_t jn = hi - j0 < SDPA_CHUNK ? hi - j0 : SDPA_CHUNK;
                for (int64_t j = 0; j < jn; j++) {
                    const float *kr = mt_tensor_row(kc, g, j0 + j, slot);
                    const float mj = mrow ? mrow[j0 + j] : 0.0f;
                    for (int64_t h = 0; h < nh; h++) sc[h][j] = dot(qr[h], kr, hd) * scale + mj;
                }
                for (int64_t h = 0; h < nh; h++) {
                    float cmx = -INFINITY;
                    for (int64_t j = 0; j < jn; j++) cmx = sc[h][j] > cmx ? sc[h][j] : cmx;
                    if (cmx > mx[h]) {
                        if (mx[h] != -INFINITY) {
                            const float r = expf(mx[h] - cmx);
                            sum[h] *= r;
                            scale_row(out[h], r, hd);
                        }
                        mx[h] = cmx;
                    }
                    // a block that is entirely masked (-inf) contributes nothing
                    for (int64_t j = 0; j < jn; j++)
                        sc[h][j] = mx[h] == -INFINITY ? 0.0f : expf(sc[h][j] - mx[h]);
                }
                for (int64_t j = 0; j < jn; j++) {
                    const float *vr = mt_tensor_row(vc, g, j0 + j, slot);
                    for (int64_t h = 0; h < nh; h++) {
                        sum[h] += sc[h][j];
                        if (sc[h][j] != 0.0f) axpy(out[h], sc[h][j], vr, hd);
                    }
                }
            }
            // a row that sees no key at all gets zeros rather than 0/0
            for (int64_t h = 0; h < nh; h++)
                if (sum[h] > 0) scale_row(out[h], 1.0f / sum[h], hd);
        }
    }
}

void mt_cpu_matmul_rows(const mt_node *mm, long r0, long r1, void *scratch) {
    if (r0 >= r1) return;
    mt_tensor w = *mm->src[0], d = *mm->dst, bias;
    w.ne[1] = r1 - r0;
    w.data = (char *)w.data + (size_t)r0 * w.nb[1];
    d.ne[0] = r1 - r0;
    d.data = (float *)d.data + r0;
    mt_node sub = *mm;
    sub.src[0] = &w;
    sub.dst = &d;
    if (mm->src[2]) {
        bias = *mm->src[2];
        bias.ne[0] = r1 - r0;
        bias.data = (float *)bias.data + r0;
        sub.src[2] = &bias;
    }
    mt_op_impl impl = mt_op_cpu_impl(mm);
    if (impl == mt_cpu_op_matmul || !scratch)
        impl(&sub, 0, 1);
    else
        mt_cpu_matmul_fast_ex(&sub, 0, 1, scratch);
}

void mt_cpu_matmul_tokens(const mt_node *mm, long t0, long t1, void *scratch) {
    if (t0 >= t1) return;
    mt_tensor x = *mm->src[1], d = *mm->dst;
    x.ne[1] = t1 - t0;
    x.data = (char *)x.data + (size_t)t0 * x.nb[1];
    d.ne[1] = t1 - t0;
    d.data = (char *)d.data + (size_t)t0 * d.nb[1];
    mt_node sub = *mm;
    sub.src[1] = &x;
    sub.dst = &d;
    mt_op_impl impl = mt_op_cpu_impl(mm);
    if (impl == mt_cpu_op_matmul || !scratch)
        impl(&sub, 0, 1);
    else
        mt_cpu_matmul_fast_ex(&sub, 0, 1, scratch);
}

void mt_cpu_swiglu_rows(const mt_tensor *gate, const mt_tensor *up, mt_tensor *dst, long r0, long r1) {
    const bool fast = mt_cpu_fast_rows_ok();
    for (int64_t t = 0; t < gate->ne[1]; t++) {
        const float *g = mt_tensor_row(gate, t, 0, 0), *u = mt_tensor_row(up, t, 0, 0);
        float *y = mt_tensor_row(dst, t, 0, 0);
        if (fast) {
            mt_cpu_fast_swiglu_span(g + r0, u + r0, y + r0, r1 - r0);
            continue;
        }
        for (long i = r0; i < r1; i++) y[i] = g[i] / (1.0f + expf(-g[i])) * u[i];
    }
}

void mt_cpu_add_rmsnorm_rows(mt_tensor *x, const mt_tensor *add, const float *w, float eps, mt_tensor *y,
                             long t0, long t1) {
    const int64_t d = x->ne[0];
    const bool fast = mt_cpu_fast_rows_ok();
    for (long t = t0; t < t1; t++) {
        float *xr = mt_tensor_row(x, t, 0, 0), *yr = mt_tensor_row(y, t, 0, 0);
        if (fast) {
            mt_cpu_fast_add_rmsnorm_row(xr, add ? mt_tensor_row(add, t, 0, 0) : NULL, w, eps, yr, d);
            continue;
        }
        if (add) {
            const float *ar = mt_tensor_row(add, t, 0, 0);
            for (int64_t i = 0; i < d; i++) xr[i] += ar[i];
        }
        // same arithmetic as the reference rmsnorm (double sum of squares)
        double ss = 0;
        for (int64_t i = 0; i < d; i++) ss += (double)xr[i] * xr[i];
        const float inv = d > 0 ? (float)(1.0 / sqrt(ss / (double)d + (double)eps)) : 0.0f;
        for (int64_t i = 0; i < d; i++) yr[i] = xr[i] * inv * w[i];
    }
}

#define ROPE_CHUNK 64

static void rope_heads(mt_tensor *x, long t, int64_t c0, int64_t cn, const float *cs, const float *sn) {
    const int64_t half = x->ne[0] / 2;
    for (int64_t h = 0; h < x->ne[1]; h++) {
        float *r = (float *)mt_tensor_row(x, h, t, 0) + c0;
        int64_t j = 0;
#if defined(__AVX2__) && defined(__FMA__)
        for (; j + 8 <= cn; j += 8) {
            const __m256 x0 = _mm256_loadu_ps(r + j), x1 = _mm256_loadu_ps(r + j + half);
            const __m256 c = _mm256_loadu_ps(cs + j), s = _mm256_loadu_ps(sn + j);
            _mm256_storeu_ps(r + j, _mm256_fmsub_ps(x0, c, _mm256_mul_ps(x1, s)));
            _mm256_storeu_ps(r + j + half, _mm256_fmadd_ps(x0, s, _mm256_mul_ps(x1, c)));
        }
#endif
        for (; j < cn; j++) {
            const float x0 = r[j], x1 = r[j + half];
            r[j] = x0 * cs[j] - x1 * sn[j];
            r[j + half] = x0 * sn[j] + x1 * cs[j];
        }
    }
}

void mt_cpu_rope_kv_rows(mt_tensor *q, mt_tensor *k, const mt_tensor *v, mt_tensor *kc, mt_tensor *vc,
                         const int32_t *pos, const int32_t *seq, float freq_base, long t0, long t1) {
    const int64_t hd = q->ne[0], half = hd / 2;
    const double base = freq_base;
    float cs[ROPE_CHUNK], sn[ROPE_CHUNK];
    double inv_freq[ROPE_CHUNK];
    for (int64_t c0 = 0; c0 < half; c0 += ROPE_CHUNK) {
        const int64_t cn = half - c0 < ROPE_CHUNK ? half - c0 : ROPE_CHUNK;
        // frequencies once per chunk, angles per token exactly as the reference rope computes them, so
        // both paths rotate identically
        for (int64_t j = 0; j < cn; j++) inv_freq[j] = pow(base, -2.0 * (double)(c0 + j) / (double)hd);
        for (long t = t0; t < t1; t++) {
            for (int64_t j = 0; j < cn; j++) {
                const double theta = (double)pos[t] * inv_freq[j];
                cs[j] = (float)cos(theta);
                sn[j] = (float)sin(theta);
            }
            rope_heads(q, t, c0, cn, cs, sn);
            if (k) rope_heads(k, t, c0, cn, cs, sn);
        }
    }
    const size_t row = (size_t)hd * sizeof(float);
    for (long t = t0; t < t1; t++) {
        if (k && kc)
            for (int64_t h = 0; h < k->ne[1]; h++)
                memcpy(mt_tensor_row(kc, h, pos[t], seq[t]), mt_tensor_row(k, h, t, 0), row);
        if (v && vc)
            for (int64_t h = 0; h < v->ne[1]; h++)
                memcpy(mt_tensor_row(vc, h, pos[t], seq[t]), mt_tensor_row(v, h, t, 0), row);
    }
}
