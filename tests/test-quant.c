// Block codecs: hand-built blocks with known values, quantize -> dequantize error bounds, dot products
// against a float64 reference, random raw blocks, and all 65536 halves.
//
// Tool modes (driven by tests/check_quant.py, which compares against the gguf Python package):
//   test-quant --dequant TYPE IN OUT   raw blocks in IN -> float32 values in OUT
//   test-quant --quant TYPE IN OUT     float32 values in IN -> raw blocks in OUT
#include <math.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "core/quant.h"
#include "core/tensor.h"
#include "harness.h"

static const mt_dtype all_types[] = {MT_F32,  MT_F16,  MT_BF16, MT_Q8_0, MT_Q4_0, MT_Q4_1,
                                     MT_Q5_0, MT_Q5_1, MT_Q4_K, MT_Q5_K, MT_Q6_K};
#define N_TYPES (int)(sizeof all_types / sizeof all_types[0])

// ---- deterministic random numbers ----

static uint64_t rng_state;
static void rng_seed(uint64_t s) {
    rng_state = s * 0x9e3779b97f4a7c15ull + 1;
}
static uint64_t rng_u64(void) { // splitmix64
    uint64_t z = (rng_state += 0x9e3779b97f4a7c15ull);
    z = (z ^ (z >> 30)) * 0xbf58476d1ce4e5b9ull;
    z = (z ^ (z >> 27)) * 0x94d049bb133111ebull;
    return z ^ (z >> 31);
}
static double rng_uniform(void) {
    return (double)(rng_u64() >> 11) * 0x1p-53;
} // [0, 1)
static double rng_normal(void) {
    double u = rng_uniform(), v = rng_uniform();
    return sqrt(-2.0 * log(1.0 - u)) * cos(6.283185307179586 * v);
}

// Gaussian values whose magnitude and mean change every 32 elements (like rows of real weights, which
// have outliers and uneven channels), so every block sees a different scale.
static void fill_weights(float *x, int64_t n) {
    double mag = 1.0, mean = 0.0;
    for (int64_t i = 0; i < n; i++) {
        if (i % 32 == 0) {
            mag = pow(10.0, rng_uniform() * 2.5 - 1.5); // 0.03 .. 10
            mean = (rng_uniform() - 0.5) * 0.2 * mag;
        }
        x[i] = (float)(mean + mag * rng_normal());
    }
}

static void fill_normal(float *x, int64_t n) {
    for (int64_t i = 0; i < n; i++) x[i] = (float)rng_normal();
}

static double rel_rms(const float *a, const float *ref, int64_t n) {
    double num = 0, den = 0;
    for (int64_t i = 0; i < n; i++) {
        double e = (double)a[i] - ref[i];
        num += e * e;
        den += (double)ref[i] * ref[i];
    }
    return sqrt(num / den);
}

static int block_elems(mt_dtype t) {
    return mt_dtype_get(t)->block_elems;
}

// Relative RMS error bounds of the round trip (the task's per-family limits).
static double roundtrip_tol(mt_dtype t) {
    switch (t) {
    case MT_F32:
        return 0.0;
    case MT_F16:
        return 1e-3;
    case MT_BF16:
        return 1e-2;
    case MT_Q8_0:
        return 0.01;
    case MT_Q5_0:
    case MT_Q5_1:
    case MT_Q5_K:
        return 0.05;
    case MT_Q4_0:
    case MT_Q4_1:
    case MT_Q4_K:
        return 0.10;
    case MT_Q6_K:
        return 0.03;
    default:
        return 0.0;
    }
}

// Row lengths: 1 block, 3, 7 and 13 blocks; plain types also get lengths that are not multiples of 16
// (the dot product's lane width).
static int row_lengths(mt_dtype t, int64_t *out) {
    const int be = block_elems(t);
    int k = 0;
    const int blocks[] = {1, 3, 7, 13};
    for (int i = 0; i < 4; i++) out[k++] = (int64_t)blocks[i] * be;
    if (be == 1) {
        out[k++] = 33;
        out[k++] = 1001;
        out[k++] = 4099;
    }
    return k;
}

typedef struct bufs {
    float *x, *y, *deq;
    uint8_t *q;
} bufs;

#define MAX_N 4352 // >= 13 * 256 and 4099

static bufs bufs_alloc(void) {
    bufs b = {malloc(MAX_N * sizeof(float)), malloc(MAX_N * sizeof(float)), malloc(MAX_N * sizeof(float)),
              malloc(MAX_N * 4 + 16)};
    MT_ASSERT(b.x && b.y && b.deq && b.q);
    return b;
}

static void bufs_free(bufs *b) {
    free(b->x);
    free(b->y);
    free(b->deq);
    free(b->q);
}

// ---- hand-built blocks: the layout facts, independent of any encoder ----

static void test_known_blocks(void) {
    float y[256];
    uint8_t b[256];

    // Q8_0: d = 0.5, q = [-128, 3, ...]
    memset(b, 0, sizeof b);
    b[0] = 0x00, b[1] = 0x38; // f16 0.5
    b[2] = 0x80, b[3] = 3, b[33] = 127;
    mt_dequantize_row(MT_Q8_0, b, y, 32);
    CHECK(y[0] == -64.0f && y[1] == 1.5f && y[31] == 63.5f && y[2] == 0.0f, "q8_0 %g %g %g", y[0], y[1],
          y[31]);

    // Q4_0: low nibbles are elements 0-15, high nibbles 16-31, value (q - 8) * d
    memset(b, 0, sizeof b);
    b[0] = 0x00, b[1] = 0x40; // f16 2.0
    b[2] = 0x1f;              // element 0 = 15, element 16 = 1
    b[17] = 0x80;             // element 15 = 0, element 31 = 8
    mt_dequantize_row(MT_Q4_0, b, y, 32);
    CHECK(y[0] == 14.0f && y[16] == -14.0f && y[15] == -16.0f && y[31] == 0.0f && y[1] == -16.0f,
          "q4_0 %g %g %g %g", y[0], y[16], y[15], y[31]);

    // Q4_1: d * q + m
    memset(b, 0, sizeof b);
    b[0] = 0x00, b[1] = 0x3c; // d = 1
    b[2] = 0x00, b[3] = 0xc0; // m = -2
    b[4] = 0x5a;              // element 0 = 10, element 16 = 5
    mt_dequantize_row(MT_Q4_1, b, y, 32);
    CHECK(y[0] == 8.0f && y[16] == 3.0f && y[1] == -2.0f, "q4_1 %g %g %g", y[0], y[16], y[1]);

    // Q5_0: bit j of the 32-bit qh is the fifth bit of element j
    memset(b, 0, sizeof b);
    b[0] = 0x00, b[1] = 0x3c;             // d = 1
    b[2] = 0x01, b[4] = 0x01;             // qh bits 0 and 16
    b[6] = 0x3f;                          // element 0 = 15 | 16, element 16 = 3 | 16
    mt_dequantize_row(MT_Q5_0, b, y, 32); // value q - 16
    CHECK(y[0] == 15.0f && y[16] == 3.0f && y[1] == -16.0f && y[17] == -16.0f, "q5_0 %g %g %g", y[0], y[16],
          y[1]);

    // Q5_1: d, m, qh, qs
    memset(b, 0, sizeof b);
    b[0] = 0x00, b[1] = 0x38; // d = 0.5
    b[2] = 0x00, b[3] = 0x3c; // m = 1
    b[7] = 0x80;              // qh bit 31: element 31
    b[8 + 15] = 0x20;         // element 31 low bits = 2 -> q = 18
    mt_dequantize_row(MT_Q5_1, b, y, 32);
    CHECK(y[31] == 10.0f && y[0] == 1.0f, "q5_1 %g %g", y[31], y[0]);

    // Q4_K: sub-block 5 (elements 160-191) has 6-bit scale 0x2a and min 0x31, split across bytes
    // 1 (scale high bits), 5 (min high bits) and 9 (low nibbles); it is the high nibble of qs[64..95].
    memset(b, 0, sizeof b);
    b[0] = 0x00, b[1] = 0x3c;               // d = 1
    b[2] = 0x00, b[3] = 0x38;               // dmin = 0.5
    b[4 + 1] = (uint8_t)((0x2a >> 4) << 6); // scale 5 high bits
    b[4 + 5] = (uint8_t)((0x31 >> 4) << 6); // min 5 high bits
    b[4 + 9] = (uint8_t)((0x2a & 0xf) | ((0x31 & 0xf) << 4));
    b[4 + 0] = 7;      // scale 0 = 7, min 0 = 0
    b[16 + 64] = 0x93; // element 128 = 3 (sub-block 4, scale 0 -> value 0 - 0), element 160 = 9
    b[16 + 0] = 0x05;  // element 0 = 5
    mt_dequantize_row(MT_Q4_K, b, y, 256);
    CHECK(y[160] == 42.0f * 9.0f - 0.5f * 49.0f, "q4_k elem 160 %g", y[160]);
    CHECK(y[161] == -0.5f * 49.0f, "q4_k elem 161 %g", y[161]);
    CHECK(y[0] == 35.0f && y[128] == 0.0f, "q4_k elem 0 %g elem 128 %g", y[0], y[128]);

    // Q5_K: same scales; the fifth bit of sub-block i is bit i of qh[l]
    memset(b, 0, sizeof b);
    b[0] = 0x00, b[1] = 0x3c;
    b[4 + 3] = 2;          // scale 3 = 2 (elements 96-127), min 3 = 0
    b[16 + 1] = 1u << 3;   // qh[1] bit 3: element 97 gets +16
    b[48 + 32 + 1] = 0x70; // qs[33] high nibble: element 96 + 1 = 7
    mt_dequantize_row(MT_Q5_K, b, y, 256);
    CHECK(y[97] == 2.0f * 23.0f && y[96] == 0.0f, "q5_k elem 97 %g", y[97]);

    // Q6_K: element 128 + 64 + 20 = 212 is the high nibble of ql[64 + 20] and bits 4-5 of qh[32 + 20],
    // scaled by int8 scale 13 (212 / 16).
    memset(b, 0, sizeof b);
    b[208] = 0x00, b[209] = 0x38;      // d = 0.5
    b[192 + 13] = (uint8_t)(int8_t)-3; // scale 13 = -3
    b[64 + 20] = 0x50;                 // high nibble 5
    b[128 + 32 + 20] = 2u << 4;        // high bits 2 -> q = 5 | 32 = 37 -> 37 - 32 = 5
    mt_dequantize_row(MT_Q6_K, b, y, 256);
    CHECK(y[212] == 0.5f * -3.0f * 5.0f, "q6_k elem 212 %g", y[212]);
    CHECK(y[213] == 0.5f * -3.0f * -32.0f, "q6_k elem 213 %g", y[213]); // all-zero bits are q = -32
    CHECK(y[0] == 0.0f, "q6_k elem 0 %g", y[0]);                        // scale 0
}

// Every half converts exactly like mt_f16_to_f32 (bit for bit, NaN payloads included).
static void test_f16_all(void) {
    uint16_t *h = malloc(65536 * sizeof *h);
    float *f = malloc(65536 * sizeof *f);
    MT_ASSERT(h && f);
    for (int i = 0; i < 65536; i++) h[i] = (uint16_t)i;
    mt_dequantize_row(MT_F16, h, f, 65536);
    int bad = 0;
    for (int i = 0; i < 65536; i++) {
        float r = mt_f16_to_f32((uint16_t)i);
        if (memcmp(&r, &f[i], sizeof r) != 0 && bad++ < 3) CHECK(0, "half 0x%04x: %g vs %g", i, f[i], r);
    }
    CHECK(bad == 0, "%d halves differ", bad);
    free(h);
    free(f);
}

static void test_roundtrip(mt_dtype t) {
    bufs b = bufs_alloc();
    int64_t lens[8];
    int nl = row_lengths(t, lens);
    rng_seed(1000 + (uint64_t)t);
    double worst = 0;
    for (int k = 0; k < nl; k++) {
        const int64_t n = lens[k];
        fill_weights(b.x, n);
        memset(b.q, 0xcd, mt_dtype_row_bytes(t, n) + 16);
        mt_quantize_row(t, b.x, b.q, n);
        const size_t rb = mt_dtype_row_bytes(t, n);
        CHECK(b.q[rb] == 0xcd, "n=%lld: encoder wrote past the row", (long long)n);
        mt_dequantize_row(t, b.q, b.deq, n);
        double e = rel_rms(b.deq, b.x, n);
        if (e > worst) worst = e;
        CHECK(e <= roundtrip_tol(t), "%s n=%lld: relative rms %.5f > %.5f", mt_dtype_name(t), (long long)n, e,
              roundtrip_tol(t));
    }
    printf("    %-5s round trip: worst relative rms %.5f (limit %.5f)\n", mt_dtype_name(t), worst,
           roundtrip_tol(t));
    bufs_free(&b);
}

// Dot product vs the float64 dot of the dequantized row. The tolerance is relative to the larger of |ref|
// and the typical size of a random-sign sum (sum |a*x| / sqrt(n)), so cancellation cannot make an
// honest float accumulation fail.
static void check_dot(mt_dtype t, const uint8_t *row, const float *x, float *deq, int64_t n,
                      const char *what) {
    mt_dequantize_row(t, row, deq, n);
    double ref = 0, mag = 0;
    for (int64_t i = 0; i < n; i++) {
        ref += (double)deq[i] * x[i];
        mag += fabs((double)deq[i] * x[i]);
    }
    double got = mt_dot_row(t, row, x, n);
    double scale = fmax(fabs(ref), mag / sqrt((double)n));
    CHECK(fabs(got - ref) <= 1e-4 * scale, "%s %s n=%lld: dot %.9g vs %.9g", mt_dtype_name(t), what,
          (long long)n, got, ref);
}

static void test_dot(mt_dtype t) {
    bufs b = bufs_alloc();
    int64_t lens[8];
    int nl = row_lengths(t, lens);
    rng_seed(2000 + (uint64_t)t);
    for (int k = 0; k < nl; k++) {
        const int64_t n = lens[k];
        fill_weights(b.x, n);
        fill_normal(b.y, n);
        mt_quantize_row(t, b.x, b.q, n);
        check_dot(t, b.q, b.y, b.deq, n, "quantized");
        // Rows inside a file mapping need not be aligned.
        memmove(b.q + 1, b.q, mt_dtype_row_bytes(t, n));
        check_dot(t, b.q + 1, b.y, b.deq, n, "unaligned");
    }
    bufs_free(&b);
}

// Raw random block bytes with sane f16 scale fields (random bits elsewhere: every nibble, high bit and
// 6-bit scale pattern). The scale fields and their offsets per type:
static void sanitize_block(mt_dtype t, uint8_t *blk) {
    int off[2] = {-1, -1};
    switch (t) {
    case MT_Q8_0:
    case MT_Q4_0:
    case MT_Q5_0:
        off[0] = 0;
        break;
    case MT_Q4_1:
    case MT_Q5_1:
    case MT_Q4_K:
    case MT_Q5_K:
        off[0] = 0, off[1] = 2;
        break;
    case MT_Q6_K:
        off[0] = 208;
        break;
    default:
        break;
    }
    for (int i = 0; i < 2; i++) {
        if (off[i] < 0) continue;
        float v = (float)(pow(10.0, -3.0 + 3.0 * rng_uniform()) * (rng_u64() & 1 ? 1 : -1));
        uint16_t h = mt_f32_to_f16(v);
        blk[off[i]] = (uint8_t)h;
        blk[off[i] + 1] = (uint8_t)(h >> 8);
    }
}

static void fill_raw(mt_dtype t, uint8_t *q, int64_t n) {
    const mt_dtype_info *di = mt_dtype_get(t);
    const int64_t nb = n / di->block_elems;
    if (t == MT_F32 || t == MT_F16 || t == MT_BF16) { // plain types: random finite values
        float v[1];
        for (int64_t i = 0; i < n; i++) {
            v[0] = (float)(rng_normal() * 100.0);
            mt_quantize_row(t, v, q + i * di->block_bytes, 1);
        }
        return;
    }
    for (int64_t i = 0; i < nb * di->block_bytes; i++) q[i] = (uint8_t)rng_u64();
    for (int64_t i = 0; i < nb; i++) sanitize_block(t, q + i * di->block_bytes);
}

static void test_raw(mt_dtype t) {
    bufs b = bufs_alloc();
    int64_t lens[8];
    int nl = row_lengths(t, lens);
    rng_seed(3000 + (uint64_t)t);
    for (int k = 0; k < nl; k++) {
        const int64_t n = lens[k];
        fill_raw(t, b.q, n);
        mt_dequantize_row(t, b.q, b.deq, n);
        int64_t nonfinite = 0, nonzero = 0;
        for (int64_t i = 0; i < n; i++) {
            nonfinite += !isfinite(b.deq[i]);
            nonzero += b.deq[i] != 0.0f;
        }
        CHECK(nonfinite == 0, "%s n=%lld: %lld non-finite values", mt_dtype_name(t), (long long)n,
              (long long)nonfinite);
        CHECK(nonzero > n / 2, "%s n=%lld: only %lld non-zero values", mt_dtype_name(t), (long long)n,
              (long long)nonzero);
        fill_normal(b.y, n);
        check_dot(t, b.q, b.y, b.deq, n, "raw");
    }
    bufs_free(&b);
}

// Degenerate blocks: all zeros and a constant decode to themselves (no 0/0 in the encoders).
static void test_degenerate(mt_dtype t) {
    bufs b = bufs_alloc();
    const int64_t n = 2 * (int64_t)(block_elems(t) > 1 ? block_elems(t) : 32);
    for (int c = 0; c < 2; c++) {
        const float v = c == 0 ? 0.0f : -0.75f;
        for (int64_t i = 0; i < n; i++) b.x[i] = v;
        mt_quantize_row(t, b.x, b.q, n);
        mt_dequantize_row(t, b.q, b.deq, n);
        double maxerr = 0;
        for (int64_t i = 0; i < n; i++) maxerr = fmax(maxerr, fabs((double)b.deq[i] - v));
        CHECK(maxerr <= 1e-3, "%s constant %g: max error %g", mt_dtype_name(t), v, maxerr);
    }
    bufs_free(&b);
}

// ---- tool mode ----

static int read_file(const char *path, uint8_t **data, size_t *size) {
    FILE *f = fopen(path, "rb");
    if (!f) return fprintf(stderr, "cannot open %s\n", path), 1;
    fseek(f, 0, SEEK_END);
    long sz = ftell(f);
    fseek(f, 0, SEEK_SET);
    *data = malloc(sz > 0 ? (size_t)sz : 1);
    if (sz < 0 || !*data) return fclose(f), fprintf(stderr, "cannot read %s\n", path), 1;
    *size = (size_t)sz;
    size_t got = fread(*data, 1, *size, f);
    fclose(f);
    if (got != *size) return fprintf(stderr, "short read on %s\n", path), 1;
    return 0;
}

static int write_file(const char *path, const void *data, size_t size) {
    FILE *f = fopen(path, "wb");
    if (!f) return fprintf(stderr, "cannot create %s\n", path), 1;
    size_t put = fwrite(data, 1, size, f);
    int bad = fclose(f) != 0 || put != size;
    if (bad) fprintf(stderr, "cannot write %s\n", path);
    return bad;
}

static int tool(const char *mode, const char *type, const char *in, const char *out) {
    mt_dtype t;
    if (mt_dtype_parse(type, &t) != MT_OK || t == MT_I32) {
        fprintf(stderr, "bad type '%s'\n", type);
        return 2;
    }
    const mt_dtype_info *di = mt_dtype_get(t);
    uint8_t *data;
    size_t size;
    if (read_file(in, &data, &size)) return 1;
    int rc = 1;
    if (strcmp(mode, "--dequant") == 0) {
        if (size % (size_t)di->block_bytes != 0) {
            fprintf(stderr, "%s: %zu bytes is not a whole number of %s blocks\n", in, size, di->name);
        } else {
            const int64_t n = (int64_t)(size / (size_t)di->block_bytes) * di->block_elems;
            float *f = malloc((size_t)(n ? n : 1) * sizeof *f);
            MT_ASSERT(f);
            mt_dequantize_row(t, data, f, n);
            rc = write_file(out, f, (size_t)n * sizeof *f);
            free(f);
        }
    } else if (strcmp(mode, "--quant") == 0) {
        const int64_t n = (int64_t)(size / sizeof(float));
        if (size % sizeof(float) != 0 || n % di->block_elems != 0) {
            fprintf(stderr, "%s: %zu bytes is not a whole number of %s blocks of floats\n", in, size,
                    di->name);
        } else {
            size_t rb = mt_dtype_row_bytes(t, n);
            uint8_t *q = malloc(rb ? rb : 1);
            float *x = malloc(size ? size : 1);
            MT_ASSERT(q && x);
            memcpy(x, data, size); // aligned copy of the input
            mt_quantize_row(t, x, q, n);
            rc = write_file(out, q, rb);
            free(q);
            free(x);
        }
    } else {
        fprintf(stderr, "unknown mode %s\n", mode);
        rc = 2;
    }
    free(data);
    return rc;
}

int main(int argc, char **argv) {
    if (argc > 1) {
        if (argc != 5) {
            fprintf(stderr, "usage: %s [--dequant|--quant TYPE IN OUT]\n", argv[0]);
            return 2;
        }
        return tool(argv[1], argv[2], argv[3], argv[4]);
    }
    RUN(test_known_blocks);
    RUN(test_f16_all);
    char name[64];
    for (int i = 0; i < N_TYPES; i++) {
        const mt_dtype t = all_types[i];
        snprintf(name, sizeof name, "roundtrip_%s", mt_dtype_name(t));
        RUN_NAMED(name, test_roundtrip(t));
        snprintf(name, sizeof name, "dot_%s", mt_dtype_name(t));
        RUN_NAMED(name, test_dot(t));
        snprintf(name, sizeof name, "raw_%s", mt_dtype_name(t));
        RUN_NAMED(name, test_raw(t));
        snprintf(name, sizeof name, "degenerate_%s", mt_dtype_name(t));
        RUN_NAMED(name, test_degenerate(t));
    }
    return th_summary();
}
