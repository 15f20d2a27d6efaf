// Weight repacking (layouts in repack.h) and the registry of packed copies.
#include "repack.h"

#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <unistd.h>

#include "../../core/quant.h"
#include "../../core/threadpool.h"

typedef struct {
    const uint8_t *base; // the stored tensor's first byte
    size_t nb1;          // bytes per stored row
    int64_t k, rows;     // row length; rows covered by whole groups
    mt_dtype dtype;
    uint8_t *packed;
    size_t bytes, map_bytes; // the copy; its anonymous mapping (page-rounded)
    size_t released;         // stored bytes given back (F16)
    const void *owner;
} mm_packed;

static pthread_rwlock_t g_lock = PTHREAD_RWLOCK_INITIALIZER;
static mm_packed *g_ent;
static int g_n, g_cap;
static size_t g_bytes, g_released;

bool mt_cpu_repack_supports(mt_dtype t) {
    return t == MT_Q8_0 || t == MT_Q5_0 || t == MT_Q4_K || t == MT_Q6_K || t == MT_F16;
}

int mt_cpu_repack_group_rows(mt_dtype t) {
    return t == MT_F16 ? 16 : 8;
}

size_t mt_cpu_repack_group_bytes(mt_dtype t, int64_t k) {
    if (t == MT_Q4_K) return (size_t)(k / 256) * 1184;
    if (t == MT_Q6_K) return (size_t)(k / 256) * 1680;
    if (t == MT_F16) return 32 * (size_t)k;
    return mt_cpu_repack_supports(t) ? 8 * mt_dtype_row_bytes(t, k) : 0;
}

// 16 rows of F16 side by side per k (the GEMM's weight panel, read with vcvtph2ps).
static void pack_f16(const uint8_t *src, size_t nb1, int64_t k, uint8_t *dst) {
    uint16_t *d = (uint16_t *)(void *)dst;
    for (int j = 0; j < 16; j++) {
        const uint8_t *row = src + (size_t)j * nb1;
        for (int64_t kk = 0; kk < k; kk++) memcpy(d + 16 * kk + j, row + 2 * kk, 2);
    }
}

static void pack_q8_0(const uint8_t *src, size_t nb1, int64_t nb, uint8_t *dst) {
    for (int64_t i = 0; i < nb; i++, dst += 8 * 34)
        for (int r = 0; r < 8; r++) {
            const uint8_t *b = src + (size_t)r * nb1 + (size_t)i * 34;
            memcpy(dst + 2 * r, b, 2);
            for (int c = 0; c < 8; c++) memcpy(dst + 16 + 32 * c + 4 * r, b + 2 + 4 * c, 4);
        }
}

static void pack_q5_0(const uint8_t *src, size_t nb1, int64_t nb, uint8_t *dst) {
    for (int64_t i = 0; i < nb; i++, dst += 8 * 22)
        for (int r = 0; r < 8; r++) {
            const uint8_t *b = src + (size_t)r * nb1 + (size_t)i * 22;
            memcpy(dst + 2 * r, b, 2);
            uint32_t qh;
            memcpy(&qh, b + 2, 4);
            uint8_t lo[32];
            for (int e = 0; e < 16; e++) lo[e] = b[6 + e] & 0xf, lo[e + 16] = b[6 + e] >> 4;
            for (int j = 0; j < 4; j++) {
                uint8_t h = 0; // bit c: fifth bit of element 4c + j
                for (int c = 0; c < 8; c++) h |= (uint8_t)(((qh >> (4 * c + j)) & 1) << c);
                dst[16 + 4 * r + j] = h;
                for (int p = 0; p < 4; p++)
                    dst[48 + 32 * p + 4 * r + j] = (uint8_t)(lo[4 * p + j] | lo[4 * (p + 4) + j] << 4);
            }
        }
}

// The 6-bit scale and min of sub-block j from the 12 packed bytes of a Q4_K super-block.
static void k4_scale_min(const uint8_t *s, int j, uint8_t *sc, uint8_t *mn) {
    if (j < 4) {
        *sc = s[j] & 63, *mn = s[j + 4] & 63;
    } else {
        *sc = (uint8_t)((s[j + 4] & 0xf) | (s[j - 4] >> 6) << 4);
        *mn = (uint8_t)((s[j + 4] >> 4) | (s[j] >> 6) << 4);
    }
}

static void pack_q4_k(const uint8_t *src, size_t nb1, int64_t nsb, uint8_t *dst) {
    for (int64_t i = 0; i < nsb; i++, dst += 1184)
        for (int r = 0; r < 8; r++) {
            const uint8_t *b = src + (size_t)r * nb1 + (size_t)i * 144;
            memcpy(dst + 2 * r, b, 2);
            memcpy(dst + 16 + 2 * r, b + 2, 2);
            for (int j = 0; j < 8; j++) {
                uint8_t sc, mn;
                k4_scale_min(b + 4, j, &sc, &mn);
                dst[32 + 8 * j + r] = sc;
                dst[96 + 16 * (j / 2) + 2 * r + j % 2] = mn;
                const uint8_t *q = b + 16 + 32 * (j / 2); // sub-block j: low (even j) or high nibbles
                uint8_t *o = dst + 160 + 128 * j;
                for (int c = 0; c < 4; c++)
                    for (int e = 0; e < 4; e++) {
                        const int lo = j % 2 ? q[4 * c + e] >> 4 : q[4 * c + e] & 0xf;
                        const int hi = j % 2 ? q[16 + 4 * c + e] >> 4 : q[16 + 4 * c + e] & 0xf;
                        o[32 * c + 4 * r + e] = (uint8_t)(lo | hi << 4);
                    }
            }
        }
}

// The 256 quants (0..63, before the -32) of a Q6_K super-block in element order.
static void k6_quants(const uint8_t *b, uint8_t *u) {
    for (int h = 0; h < 2; h++) {
        const uint8_t *ql = b + 64 * h, *qh = b + 128 + 32 * h;
        for (int l = 0; l < 32; l++) {
            u[128 * h + l] = (uint8_t)((ql[l] & 0xf) | ((qh[l] >> 0) & 3) << 4);
            u[128 * h + l + 32] = (uint8_t)((ql[l + 32] & 0xf) | ((qh[l] >> 2) & 3) << 4);
            u[128 * h + l + 64] = (uint8_t)((ql[l] >> 4) | ((qh[l] >> 4) & 3) << 4);
            u[128 * h + l + 96] = (uint8_t)((ql[l + 32] >> 4) | ((qh[l] >> 6) & 3) << 4);
        }
    }
}

static void pack_q6_k(const uint8_t *src, size_t nb1, int64_t nsb, uint8_t *dst) {
    for (int64_t i = 0; i < nsb; i++, dst += 1680) {
        memset(dst, 0, 1680);
        for (int r = 0; r < 8; r++) {
            const uint8_t *b = src + (size_t)r * nb1 + (size_t)i * 210;
            memcpy(dst + 2 * r, b + 208, 2);
            for (int j = 0; j < 16; j++) dst[16 + 16 * (j / 2) + 2 * r + j % 2] = b[192 + j];
            uint8_t u[256];
            k6_quants(b, u);
            for (int j2 = 0; j2 < 8; j2++) {
                uint8_t *o = dst + 144 + 192 * j2;
                for (int c = 0; c < 8; c++)
                    for (int e = 0; e < 4; e++) {
                        const int v = u[32 * j2 + 4 * c + e], pos = 4 * r + e;
                        o[32 * (c & 3) + pos] |= (uint8_t)((v & 0xf) << (c < 4 ? 0 : 4));
                        o[128 + 32 * (c >> 2) + pos] |= (uint8_t)((v >> 4) << 2 * (c & 3));
                    }
            }
        }
    }
}

typedef struct {
    const mt_tensor *w;
    const uint8_t *src;
    uint8_t *dst;
    size_t gb;
    long g0, g1; // groups [g0, g1)
} pack_job;

static void *pack_run(void *arg) {
    const pack_job *j = arg;
    const size_t nb1 = j->w->nb[1];
    const int64_t k = j->w->ne[0];
    const size_t gr = (size_t)mt_cpu_repack_group_rows(j->w->dtype);
    for (long g = j->g0; g < j->g1; g++) {
        const uint8_t *in = j->src + (size_t)g * gr * nb1;
        uint8_t *out = j->dst + (size_t)g * j->gb;
        switch (j->w->dtype) {
        case MT_F16:
            pack_f16(in, nb1, k, out);
            break;
        case MT_Q8_0:
            pack_q8_0(in, nb1, k / 32, out);
            break;
        case MT_Q5_0:
            pack_q5_0(in, nb1, k / 32, out);
            break;
        case MT_Q4_K:
            pack_q4_k(in, nb1, k / 256, out);
            break;
        default:
            pack_q6_k(in, nb1, k / 256, out);
            break;
        }
    }
    return NULL;
}

// Entries are sorted by base: the last one starting at or before `data`, if `data` is inside it.
static int lower_locked(const uint8_t *p) {
    int lo = 0, hi = g_n; // first entry with base > p
    while (lo < hi) {
        const int mid = (lo + hi) / 2;
        if (g_ent[mid].base <= p)
            lo = mid + 1;
        else
            hi = mid;
    }
    return lo;
}

static const mm_packed *find_locked(const void *data) {
    const uint8_t *p = data;
    const int i = lower_locked(p) - 1;
    if (i >= 0 && p < g_ent[i].base + (size_t)g_ent[i].rows * g_ent[i].nb1) return &g_ent[i];
    return NULL;
}

size_t mt_cpu_repack_tensor_bytes(const mt_tensor *w) {
    const int gr = mt_cpu_repack_group_rows(w->dtype);
    if (!mt_cpu_repack_supports(w->dtype) || w->ne[1] < gr || w->ne[2] * w->ne[3] != 1) return 0;
    return (size_t)(w->ne[1] / gr) * mt_cpu_repack_group_bytes(w->dtype, w->ne[0]);
}

// The whole pages of [p, p + n) (first at *a0) if the range lies in one read-only file mapping of this
// process, where dropping pages loses nothing (they read back from the file); 0 otherwise (heap data would
// be zeroed).
static size_t file_pages(const uint8_t *p, size_t n, uintptr_t *a0) {
    FILE *f = fopen("/proc/self/maps", "r");
    if (!f) return 0;
    const uintptr_t b = (uintptr_t)p, e = b + n;
    unsigned long lo, hi, inode = 0;
    char perm[8], line[512];
    bool in_file = false;
    while (fgets(line, sizeof line, f))
        if (sscanf(line, "%lx-%lx %7s %*x %*x:%*x %lu", &lo, &hi, perm, &inode) == 4 && lo <= b && e <= hi) {
            in_file = inode != 0 && perm[1] != 'w';
            break;
        }
    fclose(f);
    const uintptr_t pg = (uintptr_t)sysconf(_SC_PAGESIZE), s0 = (b + pg - 1) / pg * pg, s1 = e / pg * pg;
    if (!in_file || s1 <= s0) return 0;
    *a0 = s0;
    return s1 - s0;
}

// The file pages a packed copy of w replaces (F16: the rows of its whole groups), first at *a0.
static size_t source_pages(const mt_tensor *w, uintptr_t *a0) {
    if (w->dtype != MT_F16 || !mt_cpu_repack_tensor_bytes(w)) return 0;
    const int64_t gr = mt_cpu_repack_group_rows(w->dtype);
    return file_pages(w->data, (size_t)(w->ne[1] / gr * gr) * w->nb[1], a0);
}

size_t mt_cpu_repack_source_bytes(const mt_tensor *w) {
    uintptr_t a0;
    return source_pages(w, &a0);
}

// Anonymous memory for a packed copy, 2 MiB-aligned with the whole 2 MiB pages inside it on huge pages
// where the kernel gives them (a decode stream then crosses no 4 KiB boundary, where hardware prefetchers
// stop, and needs 512x fewer TLB entries); the tail past the last whole 2 MiB stays on 4 KiB pages, so
// nothing is rounded up. *map_bytes: what mt_cpu_repack_release unmaps.
static uint8_t *alloc_packed(size_t bytes, size_t *map_bytes) {
    const size_t huge = (size_t)2 << 20, pg = (size_t)sysconf(_SC_PAGESIZE);
    const size_t len = (bytes + pg - 1) / pg * pg, span = len + huge;
    uint8_t *m = mmap(NULL, span, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
    if (m == MAP_FAILED) return NULL;
    uint8_t *p = (uint8_t *)(((uintptr_t)m + huge - 1) / huge * huge);
    if (p > m) munmap(m, (size_t)(p - m));
    if (m + span > p + len) munmap(p + len, (size_t)(m + span - (p + len)));
    if (len >= huge) madvise(p, len / huge * huge, MADV_HUGEPAGE);
    *map_bytes = len;
    return p;
}

mt_status mt_cpu_repack_tensor(const mt_tensor *w, const void *owner) {
    const size_t bytes = mt_cpu_repack_tensor_bytes(w);
    if (!bytes) return MT_OK;
    const int gr = mt_cpu_repack_group_rows(w->dtype);
    const int64_t k = w->ne[0], rows = w->ne[1] / gr * gr;
    if (k % mt_dtype_get(w->dtype)->block_elems || w->nb[1] != mt_dtype_row_bytes(w->dtype, k))
        return mt_fail(MT_ERR_INVALID, "repack %s: rows of %lld elements not stored contiguously",
                       w->name ? w->name : "weight", (long long)k);
    pthread_rwlock_rdlock(&g_lock);
    const bool have = find_locked(w->data) != NULL;
    pthread_rwlock_unlock(&g_lock);
    if (have) return MT_OK;

    const size_t gb = mt_cpu_repack_group_bytes(w->dtype, k);
    size_t map_bytes = 0;
    uint8_t *packed = alloc_packed(bytes, &map_bytes);
    if (!packed)
        return mt_fail(MT_ERR_NOMEM, "repacked copy of %s (%zu bytes)", w->name ? w->name : "weight", bytes);
    const uint8_t *src = w->data;
    // Tensors over 256 KiB are packed by several threads (once per model, ~0.5 s of work in all at 0.5B).
    enum { MAX_PT = 4 };
    pack_job jobs[MAX_PT];
    pthread_t tid[MAX_PT];
    long ncpu = sysconf(_SC_NPROCESSORS_ONLN);
    int nt = bytes < ((size_t)256 << 10) ? 1 : ncpu > MAX_PT ? MAX_PT : ncpu < 1 ? 1 : (int)ncpu, started = 0;
    for (int t = 0; t < nt; t++) {
        jobs[t] = (pack_job){.w = w, .src = src, .dst = packed, .gb = gb};
        mt_split(rows / gr, t, nt, &jobs[t].g0, &jobs[t].g1);
        if (t > 0 && pthread_create(&tid[t], NULL, pack_run, &jobs[t]) == 0) started |= 1 << t;
    }
    for (int t = 0; t < nt; t++)
        if (t == 0 || !(started & 1 << t)) pack_run(&jobs[t]); // threads that did not start: here
    for (int t = 1; t < nt; t++)
        if (started & 1 << t) pthread_join(tid[t], NULL);
    pthread_rwlock_wrlock(&g_lock);
    if (g_n == g_cap) {
        const int cap = g_cap ? 2 * g_cap : 64;
        mm_packed *e = realloc(g_ent, (size_t)cap * sizeof *e);
        if (!e) {
            pthread_rwlock_unlock(&g_lock);
            munmap(packed, map_bytes);
            return mt_fail(MT_ERR_NOMEM, "repack registry of %d entries", cap);
        }
        g_ent = e, g_cap = cap;
    }
    const int at = lower_locked(src);
    memmove(g_ent + at + 1, g_ent + at, (size_t)(g_n - at) * sizeof *g_ent);
    g_n++;
    g_ent[at] = (mm_packed){.base = src,
                            .nb1 = w->nb[1],
                            .k = k,
                            .rows = rows,
                            .dtype = w->dtype,
                            .packed = packed,
                            .bytes = bytes,
                            .map_bytes = map_bytes,
                            .released = 0,
                            .owner = owner};
    g_bytes += bytes;
    // F16: the packed copy serves every fast matmul, so the stored rows' pages go back to the system.
    uintptr_t a0;
    const size_t rel = source_pages(w, &a0);
    if (rel && madvise((void *)a0, rel, MADV_DONTNEED) == 0) {
        g_ent[at].released = rel;
        g_released += rel;
    }
    pthread_rwlock_unlock(&g_lock);
    return MT_OK;
}

const uint8_t *mt_cpu_repack_find(const mt_tensor *w, int64_t *row0, int64_t *rows) {
    const uint8_t *res = NULL;
    pthread_rwlock_rdlock(&g_lock);
    const mm_packed *e = g_n ? find_locked(w->data) : NULL;
    if (e && e->dtype == w->dtype && e->k == w->ne[0] && e->nb1 == w->nb[1] &&
        (size_t)((const uint8_t *)w->data - e->base) % e->nb1 == 0) {
        *row0 = (int64_t)((size_t)((const uint8_t *)w->data - e->base) / e->nb1);
        *rows = e->rows;
        res = e->packed;
    }
    pthread_rwlock_unlock(&g_lock);
    return res;
}

void mt_cpu_repack_release(const void *owner) {
    pthread_rwlock_wrlock(&g_lock);
    for (int i = 0; i < g_n;)
        if (g_ent[i].owner == owner) {
            munmap(g_ent[i].packed, g_ent[i].map_bytes);
            g_bytes -= g_ent[i].bytes;
            g_released -= g_ent[i].released;
            memmove(g_ent + i, g_ent + i + 1, (size_t)(g_n - i - 1) * sizeof *g_ent);
            g_n--;
        } else {
            i++;
        }
    if (!g_n) {
        free(g_ent);
        g_ent = NULL;
        g_cap = 0;
    }
    pthread_rwlock_unlock(&g_lock);
}

size_t mt_cpu_repack_bytes(void) {
    pthread_rwlock_rdlock(&g_lock);
    const size_t b = g_bytes;
    pthread_rwlock_unlock(&g_lock);
    return b;
}

size_t mt_cpu_repack_released_bytes(void) {
    pthread_rwlock_rdlock(&g_lock);
    const size_t b = g_released;
    pthread_rwlock_unlock(&g_lock);
    return b;
}
