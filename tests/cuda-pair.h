// Host/device tensor pairs for the CUDA tests: a host tensor and its device twin, random fills (quantized
// rows for block types), and one op run on the CPU scalar reference and on CUDA with the device output
// poisoned and guard bytes checked. Define CUDA_PAIR_SEED before including to give a file its own stream.
#ifndef MT_TESTS_CUDA_PAIR_H
#define MT_TESTS_CUDA_PAIR_H

#include <math.h>
#include <stdbool.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "backend/device.h"
#include "core/quant.h"
#include "exec/op.h"
#include "harness.h"

#define GUARD 64 // bytes past every device output that must stay untouched

#ifndef CUDA_PAIR_SEED
#define CUDA_PAIR_SEED 0x9E3779B97F4A7C15ull
#endif
static uint64_t rng_state = CUDA_PAIR_SEED;
static float frand(void) { // uniform in [-1, 1)
    rng_state ^= rng_state << 13, rng_state ^= rng_state >> 7, rng_state ^= rng_state << 17;
    return (float)((rng_state >> 40) * (1.0 / (1 << 23))) - 1.0f;
}

typedef struct { // a host tensor and its device twin (same shape, contiguous)
    mt_tensor h, d;
    size_t bytes;
} pair;

static void pair_make(pair *p, mt_dtype dt, int ndim, const int64_t *ne) {
    mt_tensor_init(&p->h, dt, ndim, ne, NULL);
    p->bytes = mt_tensor_nbytes(&p->h);
    p->h.data = malloc(p->bytes + GUARD);
    MT_ASSERT(p->h.data);
    memset(p->h.data, 0xA5, p->bytes + GUARD);
    p->d = p->h;
    void *d = NULL;
    MT_ASSERT(mt_device_alloc(MT_DEVICE_CUDA, p->bytes + GUARD, "test tensor", &d) == MT_OK);
    p->d.data = d;
}

static void pair_upload(pair *p) {
    MT_ASSERT(mt_device_upload(MT_DEVICE_CUDA, p->d.data, p->h.data, p->bytes + GUARD) == MT_OK);
}

static void pair_fill(pair *p, float scale) {
    if (p->h.dtype == MT_F32) {
        float *f = p->h.data;
        for (size_t i = 0; i < p->bytes / 4; i++) f[i] = frand() * scale;
    } else { // random rows quantized to the stored type
        int64_t k = p->h.ne[0], rows = p->h.ne[1] * p->h.ne[2] * p->h.ne[3];
        float *tmp = malloc((size_t)k * sizeof(float));
        MT_ASSERT(tmp);
        for (int64_t r = 0; r < rows; r++) {
            for (int64_t i = 0; i < k; i++) tmp[i] = frand() * scale;
            mt_quantize_row(p->h.dtype, tmp, (char *)p->h.data + r * (int64_t)p->h.nb[1], k);
        }
        free(tmp);
    }
    pair_upload(p);
}

static void pair_free(pair *p) {
    free(p->h.data);
    mt_device_free(MT_DEVICE_CUDA, p->d.data);
}

// Runs the node on the CPU reference (host twins) and on CUDA (device twins); returns the rel. L2 error
// of dst, checked against tol (INFINITY if the node does not check).
static double run_both(mt_node *hn, mt_node *dn, pair *dst, double tol, const char *what) {
    mt_status st = mt_op_check(hn);
    CHECK(st == MT_OK, "%s: check: %s", what, mt_last_error());
    if (st != MT_OK) return INFINITY;
    mt_op_get(hn->op)->cpu_ref(hn, 0, 1);
    // poison the device output (guard included) unless the op works in place, run, read back
    const bool in_place = dn->src[0] == dn->dst;
    void *got = malloc(dst->bytes + GUARD);
    MT_ASSERT(got);
    memset(got, 0x5A, dst->bytes + GUARD);
    if (!in_place) MT_ASSERT(mt_device_upload(MT_DEVICE_CUDA, dst->d.data, got, dst->bytes + GUARD) == MT_OK);
    st = mt_device_run(MT_DEVICE_CUDA, dn, 1);
    CHECK(st == MT_OK, "%s: run: %s", what, mt_last_error());
    CHECK(mt_device_sync(MT_DEVICE_CUDA) == MT_OK, "%s: sync: %s", what, mt_last_error());
    MT_ASSERT(mt_device_download(MT_DEVICE_CUDA, got, dst->d.data, dst->bytes + GUARD) == MT_OK);
    const float *a = dst->h.data, *b = (const float *)got;
    double num = 0, den = 0, worst = 0;
    size_t n = dst->bytes / 4, bad = 0;
    for (size_t i = 0; i < n; i++) {
        if (!isfinite(b[i])) { // unwritten (poison) or NaN: counted, kept out of the sums
            bad++;
            continue;
        }
        double e = fabs((double)a[i] - b[i]);
        num += e * e, den += (double)a[i] * a[i];
        if (e > worst) worst = e;
    }
    double rel = den > 0 ? sqrt(num / den) : sqrt(num);
    // in-place ops carry the host guard pattern (0xA5); others the poison (0x5A)
    const unsigned char want = in_place ? 0xA5 : 0x5A, *g = (const unsigned char *)got + dst->bytes;
    int guard_ok = 1;
    for (int i = 0; i < GUARD; i++) guard_ok &= g[i] == want;
    CHECK(bad == 0, "%s: %zu non-finite outputs (unwritten or NaN)", what, bad);
    CHECK(rel <= tol, "%s: rel diff %.3g > %.3g (max abs %.3g)", what, rel, tol, worst);
    CHECK(guard_ok, "%s: wrote past the output", what);
    printf("    %-52s rel %.2e  max abs %.2e\n", what, rel, worst);
    free(got);
    return rel;
}

#endif
