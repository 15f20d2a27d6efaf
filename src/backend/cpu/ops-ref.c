// Scalar reference implementations of every op: the engine's CPU path for now and the oracle every
// faster kernel is tested against. Each function does thread ith's share of the node (rows, weight rows or
// (token, head) pairs, split with mt_split). Arguments were validated by the op's check (exec/op.c), so
// nothing here re-checks shapes. No allocation: the little scratch needed lives on the stack.
#include "ops.h"

#include <math.h>
#include <string.h>

#include "../../core/quant.h"
#include "../../core/threadpool.h"

// Number of rows (dims 1..3) of a tensor, and the address of flat row r.
static long n_rows(const mt_tensor *t) {
    return (long)(t->ne[1] * t->ne[2] * t->ne[3]);
}

static float *row_ptr(const mt_tensor *t, long r) {
    int64_t i1 = r % t->ne[1], rest = r / t->ne[1];
    return (float *)mt_tensor_row(t, i1, rest % t->ne[2], rest / t->ne[2]);
}

// Eight independent partial sums: the compiler keeps them in one vector register without reassociating.
static float hsum8(const float *acc) {
    return ((acc[0] + acc[4]) + (acc[1] + acc[5])) + ((acc[2] + acc[6]) + (acc[3] + acc[7]));
}

static float dot_f32(const float *a, const float *b, int64_t n) {
    float acc[8] = {0};
    int64_t i = 0;
    for (; i + 8 <= n; i += 8)
        for (int j = 0; j < 8; j++) acc[j] += a[i + j] * b[i + j];
    float s = 0;
    for (; i < n; i++) s += a[i] * b[i];
    return s + hsum8(acc);
}

// One weight row against four tokens: each weight element is loaded once, and the four independent
// accumulator chains hide the add latency. Per token the arithmetic is exactly dot_f32's, so batched and
// one-token results agree bit for bit.
static void dot4_f32(const float *w, const float *const x[4], int64_t n, float out[4]) {
    const float *x0 = x[0], *x1 = x[1], *x2 = x[2], *x3 = x[3];
    float a0[8] = {0}, a1[8] = {0}, a2[8] = {0}, a3[8] = {0};
    int64_t i = 0;
    for (; i + 8 <= n; i += 8)
        for (int j = 0; j < 8; j++) {
            float wv = w[i + j];
            a0[j] += wv * x0[i + j];
            a1[j] += wv * x1[i + j];
            a2[j] += wv * x2[i + j];
            a3[j] += wv * x3[i + j];
        }
    float s0 = 0, s1 = 0, s2 = 0, s3 = 0;
    for (; i < n; i++) {
        s0 += w[i] * x0[i];
        s1 += w[i] * x1[i];
        s2 += w[i] * x2[i];
        s3 += w[i] * x3[i];
    }
    out[0] = s0 + hsum8(a0);
    out[1] = s1 + hsum8(a1);
    out[2] = s2 + hsum8(a2);
    out[3] = s3 + hsum8(a3);
}

void mt_cpu_op_embedding(const mt_node *n, int ith, int nth) {
    const mt_tensor *tab = n->src[0], *ids = n->src[1], *dst = n->dst;
    const int32_t *id = ids->data;
    int64_t d = tab->ne[0];
    long b, e;
    mt_split((long)ids->ne[0], ith, nth, &b, &e);
    for (long i = b; i < e; i++) {
        MT_ASSERT(id[i] >= 0 && id[i] < tab->ne[1]);
        const void *src = mt_tensor_row(tab, id[i], 0, 0);
        float *y = mt_tensor_row(dst, i, 0, 0);
        if (tab->dtype == MT_F32)
            memcpy(y, src, (size_t)d * sizeof(float));
        else
            mt_dequantize_row(tab->dtype, src, y, d);
    }
}

void mt_cpu_op_rmsnorm(const mt_node *n, int ith, int nth) {
    const mt_tensor *x = n->src[0], *dst = n->dst;
    const float *w = n->src[1]->data;
    int64_t d = x->ne[0];
    long b, e;
    mt_split(n_rows(x), ith, nth, &b, &e);
    for (long r = b; r < e; r++) {
        const float *xr = row_ptr(x, r);
        float *y = row_ptr(dst, r);
        double ss = 0;
        for (int64_t i = 0; i < d; i++) ss += (double)xr[i] * xr[i];
        float inv = d > 0 ? (float)(1.0 / sqrt(ss / (double)d + (double)n->p.eps)) : 0.0f;
        for (int64_t i = 0; i < d; i++) y[i] = xr[i] * inv * w[i];
    }
}

void mt_cpu_op_matmul(const mt_node *n, int ith, int nth) {
    const mt_tensor *w = n->src[0], *x = n->src[1], *dst = n->dst;
    const float *bias = n->src[2] ? n->src[2]->data : NULL;
    int64_t k = w->ne[0], n_tok = x->ne[1];
    // Split over weight rows so each thread streams its own slice of W once; every token reuses the row
    // while it is still in cache.
    long b, e;
    mt_split((long)w->ne[1], ith, nth, &b, &e);
    for (long m = b; m < e; m++) {
        const void *wr = mt_tensor_row(w, m, 0, 0);
        float bm = bias ? bias[m] : 0.0f;
        int64_t t = 0;
        if (w->dtype == MT_F32) {
            for (; t + 4 <= n_tok; t += 4) {
                const float *xs[4];
                float s[4];
                for (int j = 0; j < 4; j++) xs[j] = mt_tensor_row(x, t + j, 0, 0);
                dot4_f32(wr, xs, k, s);
                for (int j = 0; j < 4; j++) ((float *)mt_tensor_row(dst, t + j, 0, 0))[m] = s[j] + bm;
            }
        }
        for (; t < n_tok; t++) {
            const float *xt = mt_tensor_row(x, t, 0, 0);
            float s = w->dtype == MT_F32 ? dot_f32(wr, xt, k) : mt_dot_row(w->dtype, wr, xt, k);
            ((float *)mt_tensor_row(dst, t, 0, 0))[m] = s + bm;
        }
    }
}

// Rotation angles are computed this many at a time into stack arrays, once per token for all heads.
#define ROPE_CHUNK 64

void mt_cpu_op_rope(const mt_node *n, int ith, int nth) {
    const mt_tensor *x = n->src[0], *dst = n->dst;
    int64_t hd = x->ne[0], half = hd / 2, n_head = x->ne[1];
    double base = n->p.freq_base;
    float cs[ROPE_CHUNK], sn[ROPE_CHUNK];
    long b, e;
    mt_split((long)x->ne[2], ith, nth, &b, &e);
    for (long t = b; t < e; t++) {
        double pos = n->p.pos[t];
        for (int64_t c0 = 0; c0 < half; c0 += ROPE_CHUNK) {
            int64_t cn = half - c0 < ROPE_CHUNK ? half - c0 : ROPE_CHUNK;
            for (int64_t j = 0; j < cn; j++) {
                double theta = pos * pow(base, -2.0 * (double)(c0 + j) / (double)hd);
                cs[j] = (float)cos(theta);
                sn[j] = (float)sin(theta);
            }
            for (int64_t h = 0; h < n_head; h++) {
                const float *xr = mt_tensor_row(x, h, t, 0);
                float *y = mt_tensor_row(dst, h, t, 0);
                // Both halves are read before either is written, so dst may alias x.
                for (int64_t j = 0; j < cn; j++) {
                    float x0 = xr[c0 + j], x1 = xr[c0 + j + half];
                    y[c0 + j] = x0 * cs[j] - x1 * sn[j];
                    y[c0 + j + half] = x0 * sn[j] + x1 * cs[j];
                }
            }
        }
    }
}

void mt_cpu_op_kv_write(const mt_node *n, int ith, int nth) {
    const mt_tensor *x = n->src[0], *c = n->dst;
    size_t row = (size_t)x->ne[0] * sizeof(float);
    long b, e;
    mt_split((long)x->ne[2], ith, nth, &b, &e);
    for (long t = b; t < e; t++)
        for (int64_t h = 0; h < x->ne[1]; h++)
            memcpy(mt_tensor_row(c, h, n->p.pos[t], n->p.seq[t]), mt_tensor_row(x, h, t, 0), row);
}

// Scores are computed this many positions at a time; the running max / sum / output are rescaled when a
// block raises the max (online softmax), so no buffer proportional to the context is needed.
#define ATT_CHUNK 64

void mt_cpu_op_attention(const mt_node *n, int ith, int nth) {
    const mt_tensor *q = n->src[0], *kc = n->src[1], *vc = n->src[2], *dst = n->dst;
    int64_t hd = q->ne[0], n_head = q->ne[1], group = n_head / kc->ne[1];
    float scale = n->p.scale != 0 ? n->p.scale : (float)(1.0 / sqrt((double)hd));
    float sc[ATT_CHUNK];
    long b, e;
    mt_split((long)(q->ne[2] * n_head), ith, nth, &b, &e);
    for (long w = b; w < e; w++) {
        int64_t t = w / n_head, h = w % n_head, kvh = h / group;
        int64_t len = (int64_t)n->p.pos[t] + 1, s = n->p.seq[t];
        const float *qr = mt_tensor_row(q, h, t, 0);
        float *out = mt_tensor_row(dst, h, t, 0);
        for (int64_t i = 0; i < hd; i++) out[i] = 0;
        float mx = -INFINITY, sum = 0;
        for (int64_t j0 = 0; j0 < len; j0 += ATT_CHUNK) {
            int64_t jn = len - j0 < ATT_CHUNK ? len - j0 : ATT_CHUNK;
            float cmx = -INFINITY;
            for (int64_t j = 0; j < jn; j++) {
                sc[j] = dot_f32(qr, mt_tensor_row(kc, kvh, j0 + j, s), hd) * scale;
                if (sc[j] > cmx) cmx = sc[j];
            }
            if (cmx > mx) {
                if (mx != -INFINITY) {
                    float r = expf(mx - cmx);
                    sum *= r;
                    for (int64_t i = 0; i < hd; i++) out[i] *= r;
                }
                mx = cmx;
            }
            for (int64_t j = 0; j < jn; j++) {
                float p = expf(sc[j] - mx);
                const float *vr = mt_tensor_row(vc, kvh, j0 + j, s);
                sum += p;
                for (int64_t i = 0; i < hd; i++) out[i] += p * vr[i];
            }
        }
        float inv = 1.0f / sum;
        for (int64_t i = 0; i < hd; i++) out[i] *= inv;
    }
}

void mt_cpu_op_swiglu(const mt_node *n, int ith, int nth) {
    const mt_tensor *g = n->src[0], *u = n->src[1], *dst = n->dst;
    int64_t f = g->ne[0];
    long b, e;
    mt_split(n_rows(g), ith, nth, &b, &e);
    for (long r = b; r < e; r++) {
        const float *gr = row_ptr(g, r), *ur = row_ptr(u, r);
        float *y = row_ptr(dst, r);
        for (int64_t i = 0; i < f; i++) y[i] = gr[i] / (1.0f + expf(-gr[i])) * ur[i];
    }
}

void mt_cpu_op_add(const mt_node *n, int ith, int nth) {
    const mt_tensor *a = n->src[0], *bt = n->src[1], *dst = n->dst;
    int64_t d = a->ne[0];
    long b, e;
    mt_split(n_rows(a), ith, nth, &b, &e);
    for (long r = b; r < e; r++) {
        const float *ar = row_ptr(a, r), *br = row_ptr(bt, r);
        float *y = row_ptr(dst, r);
        for (int64_t i = 0; i < d; i++) y[i] = ar[i] + br[i];
    }
}

void mt_cpu_op_softmax(const mt_node *n, int ith, int nth) {
    const mt_tensor *x = n->src[0], *dst = n->dst;
    int64_t d = x->ne[0];
    long b, e;
    mt_split(n_rows(x), ith, nth, &b, &e);
    for (long r = b; r < e; r++) {
        const float *xr = row_ptr(x, r);
        float *y = row_ptr(dst, r);
        float mx = -INFINITY;
        for (int64_t i = 0; i < d; i++) mx = xr[i] > mx ? xr[i] : mx;
        double sum = 0;
        for (int64_t i = 0; i < d; i++) {
            y[i] = expf(xr[i] - mx);
            sum += y[i];
        }
        float inv = (float)(1.0 / sum);
        for (int64_t i = 0; i < d; i++) y[i] *= inv;
    }
}
