// Sampling on the device: the same choice as mt_sampler_sample (src/model/sampler.c) made on a logits
// row that stays in device memory, so only the token id crosses to the host.
//
// Launches (one row):
//   prep    every id: NaN -> -inf, repetition penalty (a per-block bitmap of the window's ids), the
//           temperature; t[] = scaled logits, the sort keys, the row's max t and raw argmax (atomics)
//   sort    top-k: a stable radix sort by the unscaled logit (ties keep id order) selects the first k,
//           then a 64-bit sort of those k by (scaled logit, id) gives the CPU's best-first order;
//           top-p without top-k: one stable sort by the scaled logit; neither: no sort, id order
//   wsum    the weights exp((double)(t - tmax)) along that order, scanned per 1024-entry tile: tile sums
//   final   one block: the tile sums' prefix locates the top-p cut, the min-p cut (a search of the sorted
//           run), the draw, and the CPU's fallbacks; it resets the atomics for the next call
// The cumulative sums are the same doubles as the CPU's up to summation order (tile sums, then a scan
// within the tile), so a draw can differ from the CPU only where u * z lies within rounding of a boundary.
#include <cuda_runtime.h>
#include <float.h>
#include <math.h>
#include <stdint.h>

#include <cub/block/block_reduce.cuh>
#include <cub/block/block_scan.cuh>
#include <cub/device/device_radix_sort.cuh>

#include "common.cuh"

enum { PREP_THREADS = 256, PREP_TILE = 1024, TILE = 1024, MAX_TILES = 1024 };

struct sample_state {
    uint32_t tmax_key; // ordered key of the largest scaled logit (atomicMax)
    uint32_t pad;
    unsigned long long amax; // (ordered key of the raw logit << 32) | ~id: the CPU argmax (atomicMax)
    int32_t result[2];       // chosen id, 1 when a uniform was consumed (0: the argmax fallback)
};

struct sample_ctx {
    int cap;     // vocabulary entries the buffers hold
    int win_cap; // window ids the upload buffer holds
    float *t;
    uint32_t *key_in, *key_out;
    int32_t *iota, *id_out;
    unsigned long long *k64_in, *k64_out;
    double *tile_sum;
    int32_t *tile_last, *tile_first;
    int32_t *win;
    sample_state *st;
    int32_t *h_result; // pinned
    void *temp;
    size_t temp_bytes;
    unsigned long long calls, sorted_calls;
};
static sample_ctx g_s;

struct max_op {
    template <typename T> __device__ __forceinline__ T operator()(const T &a, const T &b) const {
        return a > b ? a : b;
    }
};
struct min_op {
    template <typename T> __device__ __forceinline__ T operator()(const T &a, const T &b) const {
        return a < b ? a : b;
    }
};

static cudaStream_t stream(void) {
    return mt_cuda_ctx_get()->stream;
}

// Larger float -> larger key; -0 and +0 share a key (the CPU compares them equal).
__device__ __forceinline__ uint32_t fkey(float x) {
    uint32_t b = __float_as_uint(x == 0.0f ? 0.0f : x);
    return (b & 0x80000000u) ? ~b : (b | 0x80000000u);
}
__device__ __forceinline__ float fkey_inv(uint32_t k) {
    return __uint_as_float((k & 0x80000000u) ? (k & 0x7fffffffu) : ~k);
}

struct prep_args {
    const float *logits;
    int n;
    float inv_t;
    float penalty; // applied when n_win > 0
    const int32_t *win;
    int n_win;
    int key_mode; // 0 none, 1 unscaled logit (top-k), 2 scaled logit (top-p)
};

__global__ void __launch_bounds__(PREP_THREADS)
    k_prep(prep_args a, float *t, uint32_t *key, sample_state *st) {
    __shared__ uint32_t pen_bits[PREP_TILE / 32];
    const int base = blockIdx.x * PREP_TILE;
    for (int i = threadIdx.x; i < PREP_TILE / 32; i += blockDim.x) pen_bits[i] = 0;
    __syncthreads();
    // the window's ids that fall in this tile; duplicates set the same bit, so each id is penalized once
    for (int j = threadIdx.x; j < a.n_win; j += blockDim.x) {
        int id = a.win[j] - base;
        if (id >= 0 && id < PREP_TILE && id + base < a.n) atomicOr(&pen_bits[id >> 5], 1u << (id & 31));
    }
    __syncthreads();
    uint32_t tmax = 0;
    unsigned long long amax = 0;
    for (int r = threadIdx.x; r < PREP_TILE; r += blockDim.x) {
        int i = base + r;
        if (i >= a.n) break;
        float l = a.logits[i];
        float v = l;
        if (l != l)
            v = -INFINITY;
        else {
            unsigned long long p = (unsigned long long)fkey(l) << 32 | (0xffffffffu - (uint32_t)i);
            amax = p > amax ? p : amax;
            if ((pen_bits[r >> 5] >> (r & 31)) & 1u) v = v > 0.0f ? v / a.penalty : v * a.penalty;
        }
        float tv = v * a.inv_t;
        t[i] = tv;
        uint32_t kt = fkey(tv);
        tmax = kt > tmax ? kt : tmax;
        if (a.key_mode == 1)
            key[i] = ~fkey(v);
        else if (a.key_mode == 2)
            key[i] = ~kt;
    }
    typedef cub::BlockReduce<unsigned long long, PREP_THREADS> red_t;
    __shared__ typename red_t::TempStorage tmp;
    unsigned long long both = (unsigned long long)tmax;
    unsigned long long bt = red_t(tmp).Reduce(both, max_op());
    __syncthreads();
    unsigned long long ba = red_t(tmp).Reduce(amax, max_op());
    if (threadIdx.x == 0) {
        atomicMax(&st->tmax_key, (uint32_t)bt);
        if (ba) atomicMax(&st->amax, ba);
    }
}

// top-k: the first k ids of the unscaled order, keyed by (scaled logit desc, id asc) for the second sort.
__global__ void k_key64(const int32_t *ids, int k, const float *t, unsigned long long *out) {
    int i = blockIdx.x * blockDim.x + threadIdx.x;
    if (i >= k) return;
    int id = ids[i];
    out[i] = (unsigned long long)(~fkey(t[id])) << 32 | (uint32_t)id;
}

// The candidate order: ids from a sort (32-bit ids or the low half of 64-bit keys), or id order.
struct seq_t {
    const int32_t *ids;
    const unsigned long long *k64;
    int m;
    __device__ __forceinline__ int id(int p) const { return k64 ? (int)(uint32_t)k64[p] : ids ? ids[p] : p; }
};

struct weight_args {
    seq_t seq;
    const float *t;
    const sample_state *st;
    int use_thr; // id order with min-p: entries under the threshold weigh 0
    float log_min_p;
};

__device__ __forceinline__ float row_tmax(const sample_state *st) {
    return fkey_inv(st->tmax_key);
}

typedef cub::BlockScan<double, TILE> scan_t;

// Inclusive scan of the weights of tile b (one entry per thread); the same code in wsum and final, so a
// tile's last prefix equals its tile sum bit for bit.
__device__ __forceinline__ double tile_scan(const weight_args &a, int b, float tmax, float thr,
                                            typename scan_t::TempStorage &tmp, float *tv, bool *live) {
    int p = b * TILE + (int)threadIdx.x;
    double w = 0.0;
    *live = false;
    *tv = -INFINITY;
    if (p < a.seq.m) {
        float x = a.t[a.seq.id(p)];
        *tv = x;
        *live = !a.use_thr || x >= thr;
        if (*live) w = exp((double)(x - tmax));
    }
    double s;
    scan_t(tmp).InclusiveSum(w, s);
    return s;
}

__global__ void __launch_bounds__(TILE)
    k_wsum(weight_args a, double *tile_sum, int32_t *tile_last, int32_t *tile_first) {
    __shared__ typename scan_t::TempStorage tmp;
    __shared__ int last, first;
    const float tmax = row_tmax(a.st);
    const float thr = tmax + a.log_min_p;
    if (threadIdx.x == 0) last = -1, first = 0x7fffffff;
    __syncthreads();
    float tv;
    bool live;
    double s = tile_scan(a, blockIdx.x, tmax, thr, tmp, &tv, &live);
    int p = blockIdx.x * TILE + (int)threadIdx.x;
    if (live) {
        atomicMin(&first, p);
        if (tv > -INFINITY) atomicMax(&last, p);
    }
    __syncthreads();
    if (threadIdx.x == TILE - 1) tile_sum[blockIdx.x] = s;
    if (threadIdx.x == 0) tile_last[blockIdx.x] = last, tile_first[blockIdx.x] = first;
}

struct final_args {
    weight_args w;
    int sorted;
    float top_p;
    int use_min_p;
    double u;
};

struct final_smem {
    union {
        typename scan_t::TempStorage scan;
        typename cub::BlockReduce<int, TILE>::TempStorage red;
    } tmp;
    double pre[MAX_TILES]; // exclusive prefix of the tile sums
    double sum[MAX_TILES];
    int found;
};

// First position whose cumulative weight passes the target (>= when `ge`, else >); -1 when none.
__device__ int find_first(const weight_args &a, final_smem &sm, int n_tiles, double target, bool ge,
                          float tmax, float thr) {
    typedef cub::BlockReduce<int, TILE> red_t;
    int me = 0x7fffffff;
    int b = threadIdx.x;
    if (b < n_tiles) {
        double c = sm.pre[b] + sm.sum[b];
        if (ge ? c >= target : c > target) me = b;
    }
    int tb = red_t(sm.tmp.red).Reduce(me, min_op());
    if (threadIdx.x == 0) sm.found = tb;
    __syncthreads();
    tb = sm.found;
    __syncthreads();
    if (tb == 0x7fffffff) return -1;
    float tv;
    bool live;
    double s = tile_scan(a, tb, tmax, thr, sm.tmp.scan, &tv, &live);
    __syncthreads();
    double c = sm.pre[tb] + s;
    int p = tb * TILE + (int)threadIdx.x;
    me = (p < a.seq.m && (ge ? c >= target : c > target)) ? p : 0x7fffffff;
    int r = red_t(sm.tmp.red).Reduce(me, min_op());
    if (threadIdx.x == 0) sm.found = r;
    __syncthreads();
    r = sm.found;
    __syncthreads();
    return r == 0x7fffffff ? -1 : r;
}

// Cumulative weight through position p (inclusive).
__device__ double cum_at(const weight_args &a, final_smem &sm, int p, float tmax, float thr) {
    __shared__ double out;
    const int b = p / TILE;
    float tv;
    bool live;
    double s = tile_scan(a, b, tmax, thr, sm.tmp.scan, &tv, &live);
    if ((int)threadIdx.x == p % TILE) out = sm.pre[b] + s;
    __syncthreads();
    double r = out;
    __syncthreads();
    return r;
}

// In a best-first run [lo, hi): the first position whose scaled logit is below `thr` (`hi` when none).
// The run is sorted, so each round narrows the interval 1024-fold.
__device__ int first_below(const weight_args &a, final_smem &sm, int lo, int hi, float thr) {
    typedef cub::BlockReduce<int, TILE> red_t;
    while (lo < hi) {
        int len = hi - lo, step = (len + TILE - 1) / TILE;
        int s = lo + (int)threadIdx.x * step;
        bool valid = s < hi;
        bool below = valid && a.t[a.seq.id(s)] < thr;
        int g = red_t(sm.tmp.red).Reduce(below ? (int)threadIdx.x : 0x7fffffff, min_op());
        __syncthreads();
        int last_valid = red_t(sm.tmp.red).Reduce(valid && !below ? (int)threadIdx.x : -1, max_op());
        if (threadIdx.x == 0) sm.found = g == 0x7fffffff ? -(last_valid + 2) : g;
        __syncthreads();
        int f = sm.found;
        __syncthreads();
        if (f >= 0) { // entry f is the first checked one below: the answer is in (start of f-1, start of f]
            hi = lo + f * step;
            if (f > 0) lo = lo + (f - 1) * step + 1;
        } else { // every checked entry passes: the answer is after the last of them
            int lv = -f - 2;
            lo = lo + lv * step + 1;
        }
    }
    return lo;
}

__global__ void __launch_bounds__(TILE) k_final(final_args a, sample_state *st, const double *tile_sum,
                                                const int32_t *tile_last, const int32_t *tile_first) {
    __shared__ final_smem sm;
    const weight_args &w = a.w;
    const float tmax = row_tmax(st);
    const int m = w.seq.m;
    const int n_tiles = (m + TILE - 1) / TILE;
    int result = 0, drew = 0;
    if (tmax == -INFINITY) { // nothing has any probability: the raw argmax, as on the CPU (no draw)
        unsigned long long am = st->amax;
        result = am ? (int)(0xffffffffu - (uint32_t)am) : 0;
        goto done;
    }
    {
        const float thr = tmax + w.log_min_p;
        {
            double v = threadIdx.x < (unsigned)n_tiles ? tile_sum[threadIdx.x] : 0.0, pre, total;
            scan_t(sm.tmp.scan).ExclusiveSum(v, pre, total);
            if (threadIdx.x < MAX_TILES) sm.pre[threadIdx.x] = pre, sm.sum[threadIdx.x] = v;
            __shared__ double tot;
            if (threadIdx.x == 0) tot = total;
            __syncthreads();
            total = tot;
            double zz;
            int m2;
            if (a.sorted) {
                int keep = m;
                if (a.top_p < 1.0f) {
                    int p = find_first(w, sm, n_tiles, (double)a.top_p * total, true, tmax, thr);
                    keep = p >= 0 ? p + 1 : m;
                }
                m2 = a.use_min_p ? first_below(w, sm, 0, keep, thr) : keep;
                zz = m2 == m ? total : cum_at(w, sm, m2 - 1, tmax, thr);
            } else {
                m2 = m;
                zz = total;
            }
            int p = find_first(w, sm, n_tiles, a.u * zz, false, tmax, thr);
            drew = 1;
            if (p >= 0 && p < m2) {
                result = w.seq.id(p);
            } else if (a.sorted) { // rounding: the last candidate with a finite logit, else the first
                int f = first_below(w, sm, 0, m2, -FLT_MAX);
                result = w.seq.id(f - 1 >= 1 ? f - 1 : 0);
            } else {
                typedef cub::BlockReduce<int, TILE> red_t;
                int l = threadIdx.x < (unsigned)n_tiles ? tile_last[threadIdx.x] : -1;
                int fi = threadIdx.x < (unsigned)n_tiles ? tile_first[threadIdx.x] : 0x7fffffff;
                int last = red_t(sm.tmp.red).Reduce(l, max_op());
                __syncthreads();
                int first = red_t(sm.tmp.red).Reduce(fi, min_op());
                __shared__ int pick;
                if (threadIdx.x == 0) pick = last >= 0 && last != first ? last : first;
                __syncthreads();
                result = pick;
            }
        }
    }
done:
    if (threadIdx.x == 0) {
        st->result[0] = result;
        st->result[1] = drew;
        st->tmax_key = 0;
        st->amax = 0;
    }
}

static mt_status cu_check(cudaError_t e, const char *what) {
    return e == cudaSuccess ? MT_OK : MT_CU_FAIL(e, what);
}

static void sample_free(void) {
    cudaFree(g_s.t);
    cudaFree(g_s.key_in);
    cudaFree(g_s.key_out);
    cudaFree(g_s.iota);
    cudaFree(g_s.id_out);
    cudaFree(g_s.k64_in);
    cudaFree(g_s.k64_out);
    cudaFree(g_s.tile_sum);
    cudaFree(g_s.tile_last);
    cudaFree(g_s.tile_first);
    cudaFree(g_s.win);
    cudaFree(g_s.st);
    cudaFree(g_s.temp);
    cudaFreeHost(g_s.h_result);
    unsigned long long calls = g_s.calls, sorted = g_s.sorted_calls;
    g_s = sample_ctx{};
    g_s.calls = calls, g_s.sorted_calls = sorted;
}

__global__ void k_iota(int32_t *x, int n) {
    int i = blockIdx.x * blockDim.x + threadIdx.x;
    if (i < n) x[i] = i;
}

// Sizes the scratch for rows of n_vocab and windows of n_win ids (grows; never during a graph capture).
extern "C" mt_status mt_cuda_sample_reserve(int n_vocab, int n_win) {
    if (!mt_cuda_available()) return mt_fail(MT_ERR_UNSUPPORTED, "cuda: sample: no usable CUDA device");
    if (n_vocab <= 0 || n_vocab > TILE * MAX_TILES)
        return mt_fail(MT_ERR_INVALID, "cuda: sample: n_vocab = %d is out of range [1, %d]", n_vocab,
                       TILE * MAX_TILES);
    cudaStreamCaptureStatus cs = cudaStreamCaptureStatusNone;
    cudaStreamIsCapturing(stream(), &cs);
    if ((n_vocab > g_s.cap || n_win > g_s.win_cap) && cs != cudaStreamCaptureStatusNone)
        return mt_fail(MT_ERR_INTERNAL, "cuda: sample: scratch must be sized before a graph capture");
    if (n_win > g_s.win_cap) {
        int cap = n_win < 256 ? 256 : n_win;
        cudaFree(g_s.win);
        g_s.win = NULL;
        g_s.win_cap = 0;
        MT_TRY(cu_check(cudaMalloc(&g_s.win, (size_t)cap * sizeof(int32_t)), "sample window"));
        g_s.win_cap = cap;
    }
    if (n_vocab <= g_s.cap) return MT_OK;
    int win_cap = g_s.win_cap;
    int32_t *win = g_s.win;
    g_s.win = NULL;
    sample_free();
    g_s.win = win, g_s.win_cap = win_cap;
    size_t n = (size_t)n_vocab, tiles = (n + TILE - 1) / TILE;
    cudaError_t e = cudaSuccess;
    if (e == cudaSuccess) e = cudaMalloc(&g_s.t, n * sizeof(float));
    if (e == cudaSuccess) e = cudaMalloc(&g_s.key_in, n * sizeof(uint32_t));
    if (e == cudaSuccess) e = cudaMalloc(&g_s.key_out, n * sizeof(uint32_t));
    if (e == cudaSuccess) e = cudaMalloc(&g_s.iota, n * sizeof(int32_t));
    if (e == cudaSuccess) e = cudaMalloc(&g_s.id_out, n * sizeof(int32_t));
    if (e == cudaSuccess) e = cudaMalloc(&g_s.k64_in, n * sizeof(unsigned long long));
    if (e == cudaSuccess) e = cudaMalloc(&g_s.k64_out, n * sizeof(unsigned long long));
    if (e == cudaSuccess) e = cudaMalloc(&g_s.tile_sum, tiles * sizeof(double));
    if (e == cudaSuccess) e = cudaMalloc(&g_s.tile_last, tiles * sizeof(int32_t));
    if (e == cudaSuccess) e = cudaMalloc(&g_s.tile_first, tiles * sizeof(int32_t));
    if (e == cudaSuccess) e = cudaMalloc(&g_s.st, sizeof(sample_state));
    if (e == cudaSuccess) e = cudaMallocHost(&g_s.h_result, 2 * sizeof(int32_t));
    size_t b32 = 0, b64 = 0;
    if (e == cudaSuccess)
        e = cub::DeviceRadixSort::SortPairs(NULL, b32, g_s.key_in, g_s.key_out, g_s.iota, g_s.id_out,
                                            n_vocab);
    if (e == cudaSuccess) e = cub::DeviceRadixSort::SortKeys(NULL, b64, g_s.k64_in, g_s.k64_out, n_vocab);
    g_s.temp_bytes = b32 > b64 ? b32 : b64;
    if (e == cudaSuccess) e = cudaMalloc(&g_s.temp, g_s.temp_bytes);
    if (e == cudaSuccess) e = cudaMemsetAsync(g_s.st, 0, sizeof(sample_state), stream());
    if (e == cudaSuccess) {
        k_iota<<<(unsigned)tiles, TILE, 0, stream()>>>(g_s.iota, n_vocab);
        e = cudaGetLastError();
    }
    if (e == cudaSuccess) e = cudaStreamSynchronize(stream());
    if (e != cudaSuccess) {
        sample_free();
        return MT_CU_FAIL(e, "sample scratch");
    }
    g_s.cap = n_vocab;
    return MT_OK;
}

extern "C" mt_status mt_cuda_sample_row(const float *logits, const mt_cuda_sample_req *r, int32_t *token,
                                        bool *drew) {
    const int n = r->n_vocab;
    MT_ASSERT(r->inv_t > 0.0f && r->n_win >= 0);
    MT_TRY(mt_cuda_sample_reserve(n, r->n_win));
    cudaStream_t s = stream();
    const bool topk = r->top_k > 0 && r->top_k < n;
    const bool sorted = topk || r->top_p < 1.0f;
    if (r->n_win)
        MT_TRY(cu_check(
            cudaMemcpyAsync(g_s.win, r->win, (size_t)r->n_win * sizeof(int32_t), cudaMemcpyHostToDevice, s),
            "sample window upload"));
    prep_args pa = {logits, n, r->inv_t, r->repeat_penalty, g_s.win, r->n_win, topk ? 1 : sorted ? 2 : 0};
    const unsigned prep_blocks = (unsigned)((n + PREP_TILE - 1) / PREP_TILE);
    k_prep<<<prep_blocks, PREP_THREADS, 0, s>>>(pa, g_s.t, g_s.key_in, g_s.st);
    MT_TRY(mt_cu_launched("sample prep"));

    seq_t seq = {NULL, NULL, n};
    if (sorted) {
        size_t tb = g_s.temp_bytes;
        MT_TRY(cu_check(cub::DeviceRadixSort::SortPairs(g_s.temp, tb, g_s.key_in, g_s.key_out, g_s.iota,
                                                        g_s.id_out, n, 0, 32, s),
                        "sample sort"));
        seq.ids = g_s.id_out;
        if (topk) {
            const int k = r->top_k;
            k_key64<<<(unsigned)((k + 255) / 256), 256, 0, s>>>(g_s.id_out, k, g_s.t, g_s.k64_in);
            MT_TRY(mt_cu_launched("sample top-k keys"));
            tb = g_s.temp_bytes;
            MT_TRY(
                cu_check(cub::DeviceRadixSort::SortKeys(g_s.temp, tb, g_s.k64_in, g_s.k64_out, k, 0, 64, s),
                         "sample top-k sort"));
            seq.ids = NULL;
            seq.k64 = g_s.k64_out;
            seq.m = k;
        }
        g_s.sorted_calls++;
    }
    const bool use_min_p = r->min_p > 0.0f;
    weight_args wa = {seq, g_s.t, g_s.st, !sorted && use_min_p, use_min_p ? r->log_min_p : 0.0f};
    const unsigned tiles = (unsigned)((seq.m + TILE - 1) / TILE);
    k_wsum<<<tiles, TILE, 0, s>>>(wa, g_s.tile_sum, g_s.tile_last, g_s.tile_first);
    MT_TRY(mt_cu_launched("sample weights"));
    final_args fa = {wa, sorted ? 1 : 0, r->top_p, use_min_p ? 1 : 0, r->u};
    k_final<<<1, TILE, 0, s>>>(fa, g_s.st, g_s.tile_sum, g_s.tile_last, g_s.tile_first);
    MT_TRY(mt_cu_launched("sample draw"));
    MT_TRY(cu_check(
        cudaMemcpyAsync(g_s.h_result, g_s.st->result, 2 * sizeof(int32_t), cudaMemcpyDeviceToHost, s),
        "sample download"));
    MT_TRY(cu_check(cudaStreamSynchronize(s), "sample"));
    g_s.calls++;
    *token = g_s.h_result[0];
    *drew = g_s.h_result[1] != 0;
    return MT_OK;
}

extern "C" void mt_cuda_sample_stats(uint64_t *calls, uint64_t *sorted_calls) {
    *calls = g_s.calls;
    *sorted_calls = g_s.sorted_calls;
}
