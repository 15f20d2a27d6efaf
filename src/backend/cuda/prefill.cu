// Prefill attention: a flash-attention kernel for multi-token batches (causal, grouped-query heads).
//
// Block (tile, KV head) takes FA_ROWS consecutive (token, query head of the group) pairs, so every K/V
// row it loads from the cache serves all query heads of that KV head. Keys stream through shared memory in
// tiles, converted to F16 on the way in; Q K^T and P V run on the tensor cores (mma.sync m16n8k16, F32
// accumulation) with an online softmax in registers: a warp owns 16 rows, and the score fragments become
// the A operand of the P V product without leaving registers. Scores are exponentiated, so their absolute
// error matters: Q and K are split into F16 high and low parts and Q K^T = Qh Kh + Ql Kh + Qh Kl (error
// ~2^-21 relative instead of 2^-11; a random 24-layer model's logits moved 2.7% with plain F16). P and V
// are single F16 (their rounding averages out in the weighted sum).
//
// Each row attends to positions 0..pos[t] of its own sequence seq[t] (the KV cache already holds this
// batch's rows). A tile whose tokens belong to several sequences runs one pass per sequence, masking the
// other rows; a prefill is a single pass.
#include <cuda_fp16.h>
#include <limits.h>
#include <math.h>
#include <stdint.h>
#include <stdlib.h>

#include "common.cuh"

enum { FA_WARPS = 4, FA_THREADS = 32 * FA_WARPS, FA_ROWS = 16 * FA_WARPS, FA_MIN_TOK = 9 };

struct fa_params {
    const char *q; // [hd, heads, n_tok] F32: head stride q_nb1, token stride q_nb2
    size_t q_nb1, q_nb2;
    char *o; // same layout as q
    size_t o_nb1, o_nb2;
    const char *k, *v; // caches [hd, n_kv, n_ctx, n_seq] F32
    size_t k_nb1, k_nb2, k_nb3, v_nb1, v_nb2, v_nb3;
    const int32_t *pos, *seq;
    int n_tok, group;
    float qscale; // softmax scale * log2(e): scores come out in base 2
};

__device__ __forceinline__ uint32_t pack_h2(float a, float b) {
    __half2 h = __floats2half2_rn(a, b); // a in the low half: the lower column / key index
    return *(const uint32_t *)&h;
}

// D += A (16x16, row) * B (16x8, col), F16 inputs, F32 accumulators.
__device__ __forceinline__ void mma_16816(float *d, const uint32_t *a, uint32_t b0, uint32_t b1) {
    asm volatile("mma.sync.aligned.m16n8k16.row.col.f32.f16.f16.f32 {%0,%1,%2,%3}, {%4,%5,%6,%7}, {%8,%9}, "
                 "{%0,%1,%2,%3};\n"
                 : "+f"(d[0]), "+f"(d[1]), "+f"(d[2]), "+f"(d[3])
                 : "r"(a[0]), "r"(a[1]), "r"(a[2]), "r"(a[3]), "r"(b0), "r"(b1));
}

// The B fragment (16 keys x 8 dims) of a row-major [key][dim] tile: rows are addressed by lanes 0..15.
__device__ __forceinline__ void ldmatrix_x2_trans(const __half *p, uint32_t *b0, uint32_t *b1) {
    uint32_t a = (uint32_t)__cvta_generic_to_shared(p);
    asm volatile("ldmatrix.sync.aligned.m8n8.x2.trans.shared.b16 {%0,%1}, [%2];\n"
                 : "=r"(*b0), "=r"(*b1)
                 : "r"(a));
}

// x -> F16 high part (returned) and the F16 rounding of the remainder (*lo).
__device__ __forceinline__ uint32_t split_h2(float a, float b, uint32_t *lo) {
    __half2 h = __floats2half2_rn(a, b);
    float2 f = __half22float2(h);
    *lo = pack_h2(a - f.x, b - f.y);
    return *(const uint32_t *)&h;
}

// Loads keys kt .. kt+BK-1 of one cache (rows past kmax as zeros, so masked products stay finite) into
// row-major F16 tiles (hi, and lo when given); consecutive threads read consecutive 16 bytes of a row.
template <int HD, int BK>
__device__ __forceinline__ void load_tile(__half *hi, __half *lo, const char *base, size_t nb2, int kt,
                                          int kmax) {
    constexpr int LD = HD + 8, C4 = HD / 4, PER = BK * C4 / FA_THREADS, STEP = 4, PARTS = PER / STEP;
#pragma unroll
    for (int part = 0; part < PARTS; part++) {
        float4 buf[STEP];
#pragma unroll
        for (int u = 0; u < STEP; u++) {
            int i = threadIdx.x + (part * STEP + u) * FA_THREADS, j = i / C4, c = i % C4;
            buf[u] = kt + j <= kmax ? ((const float4 *)(base + (int64_t)(kt + j) * nb2))[c]
                                    : make_float4(0.f, 0.f, 0.f, 0.f);
        }
#pragma unroll
        for (int u = 0; u < STEP; u++) {
            int i = threadIdx.x + (part * STEP + u) * FA_THREADS, j = i / C4, c = i % C4;
            uint32_t l0, l1;
            uint32_t h0 = split_h2(buf[u].x, buf[u].y, &l0), h1 = split_h2(buf[u].z, buf[u].w, &l1);
            *(uint2 *)(hi + j * LD + 4 * c) = make_uint2(h0, h1);
            if (lo) *(uint2 *)(lo + j * LD + 4 * c) = make_uint2(l0, l1);
        }
    }
}

// BK keys per tile: 32 at head dim 128 keeps the three tiles (K high, K low, V) under 48 KiB and the
// fragments in registers.
template <int HD, int BK> __global__ void __launch_bounds__(FA_THREADS) k_flash_prefill(fa_params p) {
    constexpr int LD = HD + 8; // row stride in halves: 16-byte aligned rows, conflict-free fragment loads
    constexpr int KS = HD / 16, NS = BK / 8, NO = HD / 8;
    __shared__ __align__(16) __half kh[2 * BK * LD]; // K high then K low; stages Q (FA_ROWS rows) first
    __shared__ __align__(16) __half vs[BK * LD];
    __shared__ int rpos[FA_ROWS], rseq[FA_ROWS];
    __shared__ int seg_seq, seg_kmax;
    __half *kl = kh + BK * LD;
    static_assert(FA_ROWS <= 2 * BK, "the Q tile is staged in kh");

    const int tid = threadIdx.x, lane = tid & 31, warp = tid >> 5, g = lane >> 2, t4 = lane & 3;
    const int kvh = blockIdx.y, G = p.group;
    // the latest tokens see the most keys: start them first so the short tiles fill the tail
    const int64_t row0 = (int64_t)(gridDim.x - 1 - blockIdx.x) * FA_ROWS, nrows = (int64_t)p.n_tok * G;

    for (int r = tid; r < FA_ROWS; r += FA_THREADS) {
        int64_t pr = row0 + r;
        bool live = pr < nrows;
        rpos[r] = live ? p.pos[pr / G] : -1;
        rseq[r] = live ? p.seq[pr / G] : -1;
    }
    const int rlo = warp * 16 + g, rhi = rlo + 8;
    uint32_t qa[2][KS][4]; // A fragments of the scaled Q tile: high, low
#pragma unroll
    for (int part = 0; part < 2; part++) {
        if (part) __syncthreads();
        for (int i = tid; i < FA_ROWS * (HD / 4); i += FA_THREADS) {
            int r = i / (HD / 4), c = i % (HD / 4);
            int64_t pr = row0 + r;
            float4 v = make_float4(0.f, 0.f, 0.f, 0.f);
            if (pr < nrows) {
                int64_t t = pr / G, h = (int64_t)kvh * G + pr % G;
                v = ((const float4 *)(p.q + t * p.q_nb2 + h * p.q_nb1))[c];
            }
            float s = p.qscale;
            uint32_t l0, l1, h0 = split_h2(v.x * s, v.y * s, &l0), h1 = split_h2(v.z * s, v.w * s, &l1);
            *(uint2 *)(kh + r * LD + 4 * c) = part ? make_uint2(l0, l1) : make_uint2(h0, h1);
        }
        __syncthreads();
#pragma unroll
        for (int kk = 0; kk < KS; kk++) {
            qa[part][kk][0] = *(const uint32_t *)(kh + rlo * LD + kk * 16 + 2 * t4);
            qa[part][kk][1] = *(const uint32_t *)(kh + rhi * LD + kk * 16 + 2 * t4);
            qa[part][kk][2] = *(const uint32_t *)(kh + rlo * LD + kk * 16 + 8 + 2 * t4);
            qa[part][kk][3] = *(const uint32_t *)(kh + rhi * LD + kk * 16 + 8 + 2 * t4);
        }
    }
    const int pos_lo = rpos[rlo], pos_hi = rpos[rhi], seq_lo = rseq[rlo], seq_hi = rseq[rhi];
    float o[NO][4];
#pragma unroll
    for (int n = 0; n < NO; n++) o[n][0] = o[n][1] = o[n][2] = o[n][3] = 0.f;
    float m_lo = -INFINITY, m_hi = -INFINITY, l_lo = 0.f, l_hi = 0.f;

    int prev = -1;
    for (;;) {
        __syncthreads(); // kh (Q staging or the last K tile) and the segment values are free again
        if (tid == 0) {  // next sequence present in the tile, and the last position its rows attend to
            int s = INT_MAX, km = -1;
            for (int r = 0; r < FA_ROWS; r++)
                if (rseq[r] > prev && rseq[r] < s) s = rseq[r];
            for (int r = 0; r < FA_ROWS; r++)
                if (rseq[r] == s && rpos[r] > km) km = rpos[r];
            seg_seq = s, seg_kmax = km;
        }
        __syncthreads();
        const int s = seg_seq, kmax = seg_kmax;
        if (s == INT_MAX) break;
        prev = s;
        const char *kb = p.k + (int64_t)kvh * p.k_nb1 + (int64_t)s * p.k_nb3;
        const char *vb = p.v + (int64_t)kvh * p.v_nb1 + (int64_t)s * p.v_nb3;
        const bool in_lo = seq_lo == s, in_hi = seq_hi == s;
        for (int kt = 0; kt <= kmax; kt += BK) {
            if (kt > 0) __syncthreads(); // every warp is done with the previous tile
            load_tile<HD, BK>(kh, kl, kb, p.k_nb2, kt, kmax);
            load_tile<HD, BK>(vs, NULL, vb, p.v_nb2, kt, kmax);
            __syncthreads();
            // a warp whose rows see none of these keys skips the tile (causal: most warps near the end)
            bool any = (in_lo && pos_lo >= kt) || (in_hi && pos_hi >= kt);
            if (!__any_sync(0xffffffffu, any)) continue;
            float sc[NS][4];
#pragma unroll
            for (int j = 0; j < NS; j++) sc[j][0] = sc[j][1] = sc[j][2] = sc[j][3] = 0.f;
#pragma unroll
            for (int kk = 0; kk < KS; kk++) {
#pragma unroll
                for (int j = 0; j < NS; j++) {
                    int off = (j * 8 + g) * LD + kk * 16 + 2 * t4;
                    uint32_t h0 = *(const uint32_t *)(kh + off), h1 = *(const uint32_t *)(kh + off + 8);
                    uint32_t l0 = *(const uint32_t *)(kl + off), l1 = *(const uint32_t *)(kl + off + 8);
                    mma_16816(sc[j], qa[1][kk], h0, h1); // small terms first
                    mma_16816(sc[j], qa[0][kk], l0, l1);
                    mma_16816(sc[j], qa[0][kk], h0, h1);
                }
            }
            float mx_lo = -INFINITY, mx_hi = -INFINITY;
#pragma unroll
            for (int j = 0; j < NS; j++) {
#pragma unroll
                for (int e = 0; e < 2; e++) {
                    int key = kt + j * 8 + 2 * t4 + e;
                    if (!in_lo || key > pos_lo) sc[j][e] = -INFINITY;
                    if (!in_hi || key > pos_hi) sc[j][2 + e] = -INFINITY;
                    mx_lo = fmaxf(mx_lo, sc[j][e]);
                    mx_hi = fmaxf(mx_hi, sc[j][2 + e]);
                }
            }
#pragma unroll
            for (int off = 1; off < 4; off <<= 1) {
                mx_lo = fmaxf(mx_lo, __shfl_xor_sync(0xffffffffu, mx_lo, off));
                mx_hi = fmaxf(mx_hi, __shfl_xor_sync(0xffffffffu, mx_hi, off));
            }
            // a row with nothing unmasked yet keeps max -inf: subtract 0 so exp2 gives 0, not NaN
            float nm_lo = fmaxf(m_lo, mx_lo), nm_hi = fmaxf(m_hi, mx_hi);
            float b_lo = nm_lo == -INFINITY ? 0.f : nm_lo, b_hi = nm_hi == -INFINITY ? 0.f : nm_hi;
            float c_lo = exp2f(m_lo - b_lo), c_hi = exp2f(m_hi - b_hi);
            m_lo = nm_lo, m_hi = nm_hi;
            float sum_lo = 0.f, sum_hi = 0.f;
#pragma unroll
            for (int j = 0; j < NS; j++) {
                sc[j][0] = exp2f(sc[j][0] - b_lo), sc[j][1] = exp2f(sc[j][1] - b_lo);
                sc[j][2] = exp2f(sc[j][2] - b_hi), sc[j][3] = exp2f(sc[j][3] - b_hi);
                sum_lo += sc[j][0] + sc[j][1];
                sum_hi += sc[j][2] + sc[j][3];
            }
            l_lo = l_lo * c_lo + sum_lo; // this lane's columns only; the quad is summed at the end
            l_hi = l_hi * c_hi + sum_hi;
#pragma unroll
            for (int n = 0; n < NO; n++) o[n][0] *= c_lo, o[n][1] *= c_lo, o[n][2] *= c_hi, o[n][3] *= c_hi;
#pragma unroll
            for (int kk = 0; kk < BK / 16; kk++) {
                // two adjacent score fragments (keys 16kk..16kk+15) are the A operand of P V
                uint32_t pa[4] = {pack_h2(sc[2 * kk][0], sc[2 * kk][1]),
                                  pack_h2(sc[2 * kk][2], sc[2 * kk][3]),
                                  pack_h2(sc[2 * kk + 1][0], sc[2 * kk + 1][1]),
                                  pack_h2(sc[2 * kk + 1][2], sc[2 * kk + 1][3])};
                const __half *vr = vs + (kk * 16 + (lane & 15)) * LD;
#pragma unroll
                for (int n = 0; n < NO; n++) {
                    uint32_t b0, b1;
                    ldmatrix_x2_trans(vr + n * 8, &b0, &b1);
                    mma_16816(o[n], pa, b0, b1);
                }
            }
        }
    }
#pragma unroll
    for (int off = 1; off < 4; off <<= 1) {
        l_lo += __shfl_xor_sync(0xffffffffu, l_lo, off);
        l_hi += __shfl_xor_sync(0xffffffffu, l_hi, off);
    }
    float i_lo = l_lo > 0.f ? 1.0f / l_lo : 0.f, i_hi = l_hi > 0.f ? 1.0f / l_hi : 0.f;
#pragma unroll
    for (int half = 0; half < 2; half++) {
        int64_t pr = row0 + (half ? rhi : rlo);
        if (pr >= nrows) continue;
        int64_t t = pr / G, h = (int64_t)kvh * G + pr % G;
        float *y = (float *)(p.o + t * p.o_nb2 + h * p.o_nb1);
        float inv = half ? i_hi : i_lo;
#pragma unroll
        for (int n = 0; n < NO; n++)
            *(float2 *)(y + n * 8 + 2 * t4) = make_float2(o[n][2 * half] * inv, o[n][2 * half + 1] * inv);
    }
}

static bool aligned16(const void *p, size_t a, size_t b, size_t c) {
    return ((uintptr_t)p & 15) == 0 && a % 16 == 0 && b % 16 == 0 && c % 16 == 0;
}

bool mt_cuda_flash_ok(const mt_node *n) {
    const mt_tensor *q = n->src[0], *k = n->src[1], *v = n->src[2], *d = n->dst;
    const char *e = getenv("MT_CUDA_FLASH");
    if (e && e[0] == '0') return false;
    int64_t hd = q->ne[0], ntok = q->ne[2];
    if (ntok < FA_MIN_TOK || (hd != 64 && hd != 128)) return false;
    if (q->ne[3] > 1 || d->ne[3] > 1 || k->ne[1] < 1 || q->ne[1] % k->ne[1] != 0) return false;
    if ((int64_t)ntok * (q->ne[1] / k->ne[1]) > INT_MAX / 2) return false;
    return aligned16(q->data, q->nb[1], q->nb[2], 16) && aligned16(d->data, d->nb[1], d->nb[2], 16) &&
           aligned16(k->data, k->nb[1], k->nb[2], k->nb[3]) &&
           aligned16(v->data, v->nb[1], v->nb[2], v->nb[3]);
}

mt_status mt_cuda_flash_attention(const mt_node *n) {
    const mt_tensor *q = n->src[0], *k = n->src[1], *v = n->src[2], *d = n->dst;
    int64_t hd = q->ne[0], heads = q->ne[1], ntok = q->ne[2], kvh = k->ne[1];
    double scale = n->p.scale != 0 ? (double)n->p.scale : 1.0 / sqrt((double)hd);
    fa_params p;
    p.q = (const char *)q->data, p.q_nb1 = q->nb[1], p.q_nb2 = q->nb[2];
    p.o = (char *)d->data, p.o_nb1 = d->nb[1], p.o_nb2 = d->nb[2];
    p.k = (const char *)k->data, p.k_nb1 = k->nb[1], p.k_nb2 = k->nb[2], p.k_nb3 = k->nb[3];
    p.v = (const char *)v->data, p.v_nb1 = v->nb[1], p.v_nb2 = v->nb[2], p.v_nb3 = v->nb[3];
    p.pos = n->p.pos, p.seq = n->p.seq;
    p.group = (int)(heads / kvh), p.n_tok = (int)ntok;
    p.qscale = (float)(scale * 1.4426950408889634);
    dim3 grid((unsigned)((ntok * p.group + FA_ROWS - 1) / FA_ROWS), (unsigned)kvh);
    cudaStream_t st = mt_cuda_ctx_get()->stream;
    if (hd == 128)
        k_flash_prefill<128, 32><<<grid, FA_THREADS, 0, st>>>(p);
    else
        k_flash_prefill<64, 64><<<grid, FA_THREADS, 0, st>>>(p);
    return mt_cu_launched("flash attention");
}

// ---- prefill-sized elementwise ops ----------------------------------------------------------------------
//
// The per-op kernels index every element through the generic 4-D row mapping (three 64-bit divisions per
// element); at 512 rows of 18944 that made SwiGLU instruction-bound (136 us where the bytes take ~40). These
// take 2-D row-strided tensors, 4 elements per thread, the row from the grid; rope computes each token's
// angles once in shared memory for all heads (same double-precision formula as the reference); rmsnorm
// reads its row once into registers; kv_write copies 16 bytes per thread.

enum { EW_MIN_ROWS = 9, EW_THREADS = 256 };

template <int OP>
__global__ void k_rows_binary(const float *a, int64_t a_ld, const float *b, int64_t b_ld, float *y,
                              int64_t y_ld, int64_t ne0, int64_t n, bool vec) {
    int64_t i = ((int64_t)blockIdx.x * blockDim.x + threadIdx.x) * 4;
    if (i >= ne0) return;
    for (int64_t r = blockIdx.y; r < n; r += gridDim.y) {
        const float *ar = a + r * a_ld + i, *br = b + r * b_ld + i;
        float *yr = y + r * y_ld + i;
        float x[4], u[4];
        if (vec) {
            float4 va = *(const float4 *)ar, vb = *(const float4 *)br;
            x[0] = va.x, x[1] = va.y, x[2] = va.z, x[3] = va.w;
            u[0] = vb.x, u[1] = vb.y, u[2] = vb.z, u[3] = vb.w;
        } else {
            for (int j = 0; j < 4; j++) x[j] = i + j < ne0 ? ar[j] : 0.f, u[j] = i + j < ne0 ? br[j] : 0.f;
        }
#pragma unroll
        for (int j = 0; j < 4; j++) x[j] = OP == 0 ? x[j] + u[j] : x[j] / (1.0f + expf(-x[j])) * u[j];
        if (vec)
            *(float4 *)yr = make_float4(x[0], x[1], x[2], x[3]);
        else
            for (int j = 0; j < 4 && i + j < ne0; j++) yr[j] = x[j];
    }
}

// x [hd, heads, n] (head stride nb1, token stride nb2): block t rotates every head of token t (NEOX halves).
__global__ void k_rope_rows(const char *x, size_t x_nb1, size_t x_nb2, char *y, size_t y_nb1, size_t y_nb2,
                            int hd, int heads, const int32_t *pos, double base) {
    __shared__ float cs[128], sn[128];
    const int t = blockIdx.x, half = hd / 2;
    double p = pos[t];
    for (int j = threadIdx.x; j < half; j += blockDim.x) {
        double th = p * pow(base, -2.0 * (double)j / (double)hd);
        cs[j] = (float)cos(th), sn[j] = (float)sin(th);
    }
    __syncthreads();
    for (int i = threadIdx.x; i < heads * half; i += blockDim.x) {
        int h = i / half, j = i % half;
        const float *xr = (const float *)(x + (int64_t)t * x_nb2 + (int64_t)h * x_nb1);
        float *yr = (float *)(y + (int64_t)t * y_nb2 + (int64_t)h * y_nb1);
        float x0 = xr[j], x1 = xr[j + half], c = cs[j], s = sn[j];
        yr[j] = x0 * c - x1 * s;
        yr[j + half] = x0 * s + x1 * c;
    }
}

// rmsnorm of rows up to 4096 wide (multiples of 4): a block per row keeps its 16-byte chunks in registers,
// so the row is read once.
enum { NORM_V = 4, NORM_MAX = 4 * NORM_V * EW_THREADS };
__global__ void __launch_bounds__(EW_THREADS)
    k_rmsnorm_rows(const float *x, int64_t x_ld, const float *w, float *y, int64_t y_ld, int d, float eps) {
    __shared__ float part[EW_THREADS / 32];
    const float4 *xr = (const float4 *)(x + blockIdx.x * x_ld);
    float4 *yr = (float4 *)(y + blockIdx.x * y_ld);
    const int d4 = d / 4;
    float4 v[NORM_V];
    float ss = 0.f;
#pragma unroll
    for (int u = 0; u < NORM_V; u++) {
        int i = threadIdx.x + u * EW_THREADS;
        v[u] = i < d4 ? xr[i] : make_float4(0.f, 0.f, 0.f, 0.f);
        ss += v[u].x * v[u].x + v[u].y * v[u].y + v[u].z * v[u].z + v[u].w * v[u].w;
    }
#pragma unroll
    for (int o = 16; o > 0; o >>= 1) ss += __shfl_xor_sync(0xffffffffu, ss, o);
    if ((threadIdx.x & 31) == 0) part[threadIdx.x >> 5] = ss;
    __syncthreads();
    ss = 0.f;
#pragma unroll
    for (int i = 0; i < EW_THREADS / 32; i++) ss += part[i];
    float inv = rsqrtf(ss / (float)d + eps);
#pragma unroll
    for (int u = 0; u < NORM_V; u++) {
        int i = threadIdx.x + u * EW_THREADS;
        if (i < d4) {
            float4 g = ((const float4 *)w)[i];
            yr[i] =
                make_float4(v[u].x * inv * g.x, v[u].y * inv * g.y, v[u].z * inv * g.z, v[u].w * inv * g.w);
        }
    }
}

// x [hd, n_kv, n] rows -> cache rows (pos[t], seq[t]): a block per token, 16 bytes per thread.
__global__ void k_kv_write_rows(const char *x, size_t x_nb1, size_t x_nb2, char *cache, size_t c_nb1,
                                size_t c_nb2, size_t c_nb3, int hd4, int nkv, const int32_t *pos,
                                const int32_t *seq) {
    const int t = blockIdx.x;
    char *base = cache + (int64_t)pos[t] * c_nb2 + (int64_t)seq[t] * c_nb3;
    for (int i = threadIdx.x; i < nkv * hd4; i += blockDim.x) {
        int h = i / hd4, e = i % hd4;
        ((float4 *)(base + (int64_t)h * c_nb1))[e] =
            ((const float4 *)(x + (int64_t)t * x_nb2 + (int64_t)h * x_nb1))[e];
    }
}

static bool al16(const void *p) {
    return ((uintptr_t)p & 15) == 0;
}

static bool rows2d(const mt_tensor *t) {
    return t->ne[2] <= 1 && t->ne[3] <= 1 && t->nb[1] % 4 == 0;
}

bool mt_cuda_prefill_elementwise(const mt_node *n, mt_status *st) {
    cudaStream_t s = mt_cuda_ctx_get()->stream;
    if (n->op == MT_OP_ADD || n->op == MT_OP_SWIGLU) {
        const mt_tensor *a = n->src[0], *b = n->src[1], *d = n->dst;
        int64_t ne0 = a->ne[0], rows = a->ne[1];
        if (rows < EW_MIN_ROWS || !rows2d(a) || !rows2d(b) || !rows2d(d) || b->ne[0] != ne0 ||
            b->ne[1] != rows || d->ne[0] != ne0 || d->ne[1] != rows)
            return false;
        int64_t al = (int64_t)(a->nb[1] / 4), bl = (int64_t)(b->nb[1] / 4), dl = (int64_t)(d->nb[1] / 4);
        bool vec = ne0 % 4 == 0 && al % 4 == 0 && bl % 4 == 0 && dl % 4 == 0 &&
                   (((uintptr_t)a->data | (uintptr_t)b->data | (uintptr_t)d->data) & 15) == 0;
        dim3 grid((unsigned)((ne0 + 4 * EW_THREADS - 1) / (4 * EW_THREADS)),
                  (unsigned)(rows < 65535 ? rows : 65535));
        const float *ap = (const float *)a->data, *bp = (const float *)b->data;
        float *dp = (float *)d->data;
        if (n->op == MT_OP_ADD)
            k_rows_binary<0><<<grid, EW_THREADS, 0, s>>>(ap, al, bp, bl, dp, dl, ne0, rows, vec);
        else
            k_rows_binary<1><<<grid, EW_THREADS, 0, s>>>(ap, al, bp, bl, dp, dl, ne0, rows, vec);
        *st = mt_cu_launched(n->op == MT_OP_ADD ? "add rows" : "swiglu rows");
        return true;
    }
    if (n->op == MT_OP_RMSNORM) {
        const mt_tensor *x = n->src[0], *w = n->src[1], *d = n->dst;
        int64_t ne0 = x->ne[0], rows = x->ne[1];
        if (rows < EW_MIN_ROWS || rows > INT_MAX || ne0 % 4 != 0 || ne0 == 0 || ne0 > NORM_MAX ||
            !rows2d(x) || !rows2d(d) || x->nb[1] % 16 != 0 || d->nb[1] % 16 != 0 || !al16(x->data) ||
            !al16(d->data) || !al16(w->data))
            return false;
        k_rmsnorm_rows<<<(unsigned)rows, EW_THREADS, 0, s>>>((const float *)x->data, (int64_t)(x->nb[1] / 4),
                                                             (const float *)w->data, (float *)d->data,
                                                             (int64_t)(d->nb[1] / 4), (int)ne0, n->p.eps);
        *st = mt_cu_launched("rmsnorm rows");
        return true;
    }
    if (n->op == MT_OP_KV_WRITE) {
        const mt_tensor *x = n->src[0], *c = n->dst;
        int64_t hd = x->ne[0], nkv = x->ne[1], ntok = x->ne[2];
        if (ntok < EW_MIN_ROWS || ntok > INT_MAX || hd % 4 != 0 || nkv * hd > INT_MAX || x->ne[3] > 1 ||
            x->nb[1] % 16 != 0 || x->nb[2] % 16 != 0 || c->nb[1] % 16 != 0 || c->nb[2] % 16 != 0 ||
            c->nb[3] % 16 != 0 || !al16(x->data) || !al16(c->data))
            return false;
        k_kv_write_rows<<<(unsigned)ntok, 128, 0, s>>>((const char *)x->data, x->nb[1], x->nb[2],
                                                       (char *)c->data, c->nb[1], c->nb[2], c->nb[3],
                                                       (int)(hd / 4), (int)nkv, n->p.pos, n->p.seq);
        *st = mt_cu_launched("kv_write rows");
        return true;
    }
    if (n->op == MT_OP_ROPE) {
        const mt_tensor *x = n->src[0], *d = n->dst;
        int64_t hd = x->ne[0], heads = x->ne[1], ntok = x->ne[2];
        if (ntok < EW_MIN_ROWS || ntok > INT_MAX || hd % 2 != 0 || hd > 256 || x->ne[3] > 1 || d->ne[3] > 1 ||
            heads * hd > INT_MAX)
            return false;
        k_rope_rows<<<(unsigned)ntok, 128, 0, s>>>((const char *)x->data, x->nb[1], x->nb[2], (char *)d->data,
                                                   d->nb[1], d->nb[2], (int)hd, (int)heads, n->p.pos,
                                                   (double)n->p.freq_base);
        *st = mt_cu_launched("rope rows");
        return true;
    }
    return false;
}
