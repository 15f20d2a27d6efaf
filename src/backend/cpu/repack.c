// Weight repacking for decode (layouts in repack.h) and the registry of packed copies.
#include "repack.h"

#include <pthread.h>
#include <stdlib.h>
#include <string.h>

#include "../../core/quant.h"

typedef struct {
    const uint8_t *base; // the stored tensor's first byte
    size_t nb1;          // bytes per stored row
    int64_t k, rows;     // row length; rows covered by whole groups
    mt_dtype dtype;
    uint8_t *packed;
    size_t bytes;
    const void *owner;
} mm_packed;

static pthread_rwlock_t g_lock = PTHREAD_RWLOCK_INITIALIZER;
static mm_packed *g_ent;
static int g_n, g_cap;
static size_t g_bytes;

bool mt_cpu_repack_supports(mt_dtype t) {
    return t == MT_Q8_0 || t == MT_Q5_0;
}

static void pack_q8_0(const uint8_t *src, size_t nb1, int64_t nb, uint8_t *dst) {
    for (int64_t i = 0; i < nb; i++, dst += 8 * 34)
        for (int r = 0; r < 8; r++) {
            const uint8_t *b = src + (size_t)r * nb1 + (size_t)i * 34;
            memcpy(dst + 2 * r, b, 2);
            for (int e = 0; e < 32; e++) dst[16 + 32 * (e / 4) + 4 * r + e % 4] = b[2 + e];
        }
}

static void pack_q5_0(const uint8_t *src, size_t nb1, int64_t nb, uint8_t *dst) {
    for (int64_t i = 0; i < nb; i++, dst += 8 * 22) {
        memset(dst + 16, 0, 160);
        for (int r = 0; r < 8; r++) {
            const uint8_t *b = src + (size_t)r * nb1 + (size_t)i * 22;
            memcpy(dst + 2 * r, b, 2);
            uint32_t qh;
            memcpy(&qh, b + 2, 4);
            for (int e = 0; e < 32; e++) {
                const int lo = e < 16 ? b[6 + e] & 0xf : b[6 + e - 16] >> 4, hi = (qh >> e) & 1;
                const int c = e / 4, pos = 4 * r + e % 4;
                dst[16 + pos] |= (uint8_t)(hi << c);
                dst[48 + 32 * (c & 3) + pos] |= (uint8_t)(lo << (c < 4 ? 0 : 4));
            }
        }
    }
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

mt_status mt_cpu_repack_tensor(const mt_tensor *w, const void *owner) {
    if (!mt_cpu_repack_supports(w->dtype) || w->ne[1] < 8 || w->ne[2] * w->ne[3] != 1) return MT_OK;
    const int64_t k = w->ne[0], rows = w->ne[1] / 8 * 8;
    if (k % 32 || w->nb[1] != mt_dtype_row_bytes(w->dtype, k))
        return mt_fail(MT_ERR_INVALID, "repack %s: rows of %lld elements not stored contiguously",
                       w->name ? w->name : "weight", (long long)k);
    pthread_rwlock_rdlock(&g_lock);
    const bool have = find_locked(w->data) != NULL;
    pthread_rwlock_unlock(&g_lock);
    if (have) return MT_OK;

    const size_t bytes = (size_t)rows * w->nb[1];
    uint8_t *packed = aligned_alloc(64, (bytes + 63) & ~(size_t)63);
    if (!packed)
        return mt_fail(MT_ERR_NOMEM, "repacked copy of %s (%zu bytes)", w->name ? w->name : "weight", bytes);
    const uint8_t *src = w->data;
    for (int64_t g = 0; g < rows / 8; g++) {
        const size_t off = (size_t)g * 8 * w->nb[1];
        if (w->dtype == MT_Q8_0)
            pack_q8_0(src + off, w->nb[1], k / 32, packed + off);
        else
            pack_q5_0(src + off, w->nb[1], k / 32, packed + off);
    }
    pthread_rwlock_wrlock(&g_lock);
    if (g_n == g_cap) {
        const int cap = g_cap ? 2 * g_cap : 64;
        mm_packed *e = realloc(g_ent, (size_t)cap * sizeof *e);
        if (!e) {
            pthread_rwlock_unlock(&g_lock);
            free(packed);
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
                            .owner = owner};
    g_bytes += bytes;
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
            free(g_ent[i].packed);
            g_bytes -= g_ent[i].bytes;
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
