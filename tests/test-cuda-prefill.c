// CUDA prefill kernels against the CPU scalar reference: the flash attention of multi-token batches
// (head dims 64/128, grouped-query ratios 1/4/7, 1..700 tokens, positions after a cached prefix, several
// sequences in one batch) and the GEMM path of multi-token matmuls at odd sizes. Random inputs with fixed
// seeds, poisoned outputs, guard bytes. `--bench` times both at the Qwen2.5 7B / 0.5B prefill shapes.
// Skips cleanly without CUDA or a GPU.
#include <math.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include "backend/device.h"
#include "core/quant.h"
#include "exec/op.h"
#include "harness.h"
#include "metallic.h"
#ifdef MT_CUDA
#include "backend/cuda/backend-cuda.h"
#endif

#define CUDA_PAIR_SEED 0x2545F4914F6CDD1Dull
#include "cuda-pair.h"

// Attention of n tokens over caches of ctx positions x 2 sequences. Tokens: the first n0 belong to
// sequence 0 at positions p0, p0+1, ...; the rest to sequence 1 at positions p1, p1+1, ... (n0 = n: one
// sequence). Cache rows before each token's position hold random "earlier" keys; rows past it random
// junk the kernel must not read.
static void test_flash(int hd, int H, int KV, int n, int p0, int n0, int p1, float qs) {
    int ctx = 1;
    for (int i = 0; i < n; i++) {
        int p = i < n0 ? p0 + i : p1 + (i - n0);
        if (p + 1 > ctx) ctx = p + 1;
    }
    ctx += 3;
    pair pos, seq, q, kc, vc, o;
    pair_make(&pos, MT_I32, 1, (int64_t[]){n});
    pair_make(&seq, MT_I32, 1, (int64_t[]){n});
    for (int i = 0; i < n; i++) {
        ((int32_t *)pos.h.data)[i] = i < n0 ? p0 + i : p1 + (i - n0);
        ((int32_t *)seq.h.data)[i] = i < n0 ? 0 : 1;
    }
    pair_upload(&pos), pair_upload(&seq);
    pair_make(&q, MT_F32, 3, (int64_t[]){hd, H, n});
    pair_make(&kc, MT_F32, 4, (int64_t[]){hd, KV, ctx, 2});
    pair_make(&vc, MT_F32, 4, (int64_t[]){hd, KV, ctx, 2});
    pair_make(&o, MT_F32, 3, (int64_t[]){hd, H, n});
    // q scaled so the scores spread over several units (qs 40: tens of units, a near one-hot softmax that
    // magnifies any score error)
    pair_fill(&q, qs), pair_fill(&kc, 1.0f), pair_fill(&vc, 1.0f);
    mt_op_params hp = {.pos = pos.h.data, .seq = seq.h.data};
    mt_op_params dp = {.pos = pos.d.data, .seq = seq.d.data};
    mt_node hn = {.op = MT_OP_ATTENTION, .src = {&q.h, &kc.h, &vc.h}, .dst = &o.h, .p = hp};
    mt_node dn = {.op = MT_OP_ATTENTION, .src = {&q.d, &kc.d, &vc.d}, .dst = &o.d, .p = dp};
    char what[128];
    snprintf(what, sizeof what, "flash hd%d H%d KV%d n%d p0=%d q*%g%s", hd, H, KV, n, p0, qs,
             n0 < n ? " 2 seqs" : "");
#ifdef MT_CUDA
    // the flash kernel must be the one under test (9+ tokens, head dims 64/128)
    CHECK(mt_cuda_flash_ok(&dn) == (n >= 9), "%s: flash kernel selection", what);
#endif
    // Q K^T in split F16 (~F32 accuracy), P and V in F16: a few 1e-4 relative; plain F16 scores give
    // ~1e-2 at qs 40; a wrong index or mask gives ~1
    run_both(&hn, &dn, &o, 1e-3, what);
    pair_free(&pos), pair_free(&seq), pair_free(&q), pair_free(&kc), pair_free(&vc), pair_free(&o);
}

static void test_matmul(mt_dtype dt, int k, int m, int n, int bias) {
    char what[96];
    snprintf(what, sizeof what, "gemm %s k%d m%d n%d%s", mt_dtype_name(dt), k, m, n, bias ? " +bias" : "");
    pair w, x, b, y;
    pair_make(&w, dt, 2, (int64_t[]){k, m});
    pair_make(&x, MT_F32, 2, (int64_t[]){k, n});
    pair_make(&b, MT_F32, 1, (int64_t[]){m});
    pair_make(&y, MT_F32, 2, (int64_t[]){m, n});
    pair_fill(&w, 1.0f), pair_fill(&x, 1.0f), pair_fill(&b, 1.0f);
    mt_node hn = {.op = MT_OP_MATMUL, .src = {&w.h, &x.h, bias ? &b.h : NULL}, .dst = &y.h};
    mt_node dn = {.op = MT_OP_MATMUL, .src = {&w.d, &x.d, bias ? &b.d : NULL}, .dst = &y.d};
    // activations (and non-F16 weights) are rounded to F16 (BF16 for BF16 weights) before the GEMM
    run_both(&hn, &dn, &y, dt == MT_BF16 ? 1e-2 : dt == MT_F32 ? 1e-5 : 2e-3, what);
    pair_free(&w), pair_free(&x), pair_free(&b), pair_free(&y);
}

// Add and SwiGLU over many rows (the prefill kernels), row-strided views included; rope of a [hd, heads, n]
// batch at large positions.
static void test_elementwise(int d, int n, int ld) {
    pair a, b, y;
    pair_make(&a, MT_F32, 2, (int64_t[]){ld, n});
    pair_make(&b, MT_F32, 2, (int64_t[]){ld, n});
    pair_make(&y, MT_F32, 2, (int64_t[]){d, n});
    pair_fill(&a, 4.0f), pair_fill(&b, 2.0f);
    // views of the first d columns of ld-wide rows
    mt_tensor ah = a.h, bh = b.h, ad = a.d, bd = b.d;
    ah.ne[0] = bh.ne[0] = ad.ne[0] = bd.ne[0] = d;
    char what[96];
    snprintf(what, sizeof what, "swiglu rows d%d n%d ld%d", d, n, ld);
    mt_node hn = {.op = MT_OP_SWIGLU, .src = {&ah, &bh}, .dst = &y.h};
    mt_node dn = {.op = MT_OP_SWIGLU, .src = {&ad, &bd}, .dst = &y.d};
    run_both(&hn, &dn, &y, 1e-6, what);
    snprintf(what, sizeof what, "add rows d%d n%d ld%d", d, n, ld);
    hn.op = dn.op = MT_OP_ADD;
    run_both(&hn, &dn, &y, 1e-7, what);
    pair_free(&a), pair_free(&b), pair_free(&y);
}

static void test_rope(int hd, int H, int n, int p0) {
    pair pos, x, y;
    pair_make(&pos, MT_I32, 1, (int64_t[]){n});
    for (int i = 0; i < n; i++) ((int32_t *)pos.h.data)[i] = p0 + (i * 7) % (n + 3);
    pair_upload(&pos);
    pair_make(&x, MT_F32, 3, (int64_t[]){hd, H, n});
    pair_make(&y, MT_F32, 3, (int64_t[]){hd, H, n});
    pair_fill(&x, 3.0f);
    mt_node hn = {.op = MT_OP_ROPE, .src = {&x.h}, .dst = &y.h, .p = {.freq_base = 1e6f, .pos = pos.h.data}};
    mt_node dn = {.op = MT_OP_ROPE, .src = {&x.d}, .dst = &y.d, .p = {.freq_base = 1e6f, .pos = pos.d.data}};
    char what[96];
    snprintf(what, sizeof what, "rope rows hd%d H%d n%d p0=%d", hd, H, n, p0);
    run_both(&hn, &dn, &y, 1e-5, what);
    pair_free(&pos), pair_free(&x), pair_free(&y);
}

static void test_rmsnorm(int d, int n) {
    pair x, w, y;
    pair_make(&x, MT_F32, 2, (int64_t[]){d, n});
    pair_make(&w, MT_F32, 1, (int64_t[]){d});
    pair_make(&y, MT_F32, 2, (int64_t[]){d, n});
    pair_fill(&x, 3.0f), pair_fill(&w, 1.0f);
    mt_node hn = {.op = MT_OP_RMSNORM, .src = {&x.h, &w.h}, .dst = &y.h, .p = {.eps = 1e-6f}};
    mt_node dn = {.op = MT_OP_RMSNORM, .src = {&x.d, &w.d}, .dst = &y.d, .p = {.eps = 1e-6f}};
    char what[96];
    snprintf(what, sizeof what, "rmsnorm rows d%d n%d", d, n);
    run_both(&hn, &dn, &y, 1e-6, what);
    pair_free(&x), pair_free(&w), pair_free(&y);
}

// n rows written into a 2-sequence cache at scattered positions; the rest of the cache must stay as it was.
static void test_kv_write(int hd, int KV, int n) {
    int ctx = 2 * n + 5;
    pair pos, seq, x, c;
    pair_make(&pos, MT_I32, 1, (int64_t[]){n});
    pair_make(&seq, MT_I32, 1, (int64_t[]){n});
    for (int i = 0; i < n; i++)
        ((int32_t *)pos.h.data)[i] = (i * 5 + 3) % ctx, ((int32_t *)seq.h.data)[i] = i % 2;
    pair_upload(&pos), pair_upload(&seq);
    pair_make(&x, MT_F32, 3, (int64_t[]){hd, KV, n});
    pair_make(&c, MT_F32, 4, (int64_t[]){hd, KV, ctx, 2});
    pair_fill(&x, 1.0f), pair_fill(&c, 1.0f);
    mt_node hn = {
        .op = MT_OP_KV_WRITE, .src = {&x.h}, .dst = &c.h, .p = {.pos = pos.h.data, .seq = seq.h.data}};
    mt_node dn = {
        .op = MT_OP_KV_WRITE, .src = {&x.d}, .dst = &c.d, .p = {.pos = pos.d.data, .seq = seq.d.data}};
    CHECK(mt_op_check(&hn) == MT_OK, "kv_write check: %s", mt_last_error());
    mt_op_get(MT_OP_KV_WRITE)->cpu_ref(&hn, 0, 1);
    CHECK(mt_device_run(MT_DEVICE_CUDA, &dn, 1) == MT_OK, "kv_write: %s", mt_last_error());
    void *got = malloc(c.bytes);
    MT_ASSERT(got);
    MT_ASSERT(mt_device_download(MT_DEVICE_CUDA, got, c.d.data, c.bytes) == MT_OK);
    int same = memcmp(got, c.h.data, c.bytes) == 0;
    CHECK(same, "kv_write rows hd%d KV%d n%d: cache differs", hd, KV, n);
    printf("    kv_write rows hd%d KV%d n%d: %s\n", hd, KV, n, same ? "identical" : "DIFFERS");
    free(got);
    pair_free(&pos), pair_free(&seq), pair_free(&x), pair_free(&c);
}

#ifdef MT_CUDA
// Median of `reps` device-event timings of one node (after a warm-up run), in microseconds.
static double time_node(const mt_node *dn, int reps) {
    double t[32], us = 0;
    MT_ASSERT(reps <= 32);
    MT_ASSERT(mt_device_run(MT_DEVICE_CUDA, dn, 1) == MT_OK && mt_device_sync(MT_DEVICE_CUDA) == MT_OK);
    for (int r = 0; r < reps; r++) {
        MT_ASSERT(mt_cuda_timer_begin() == MT_OK);
        MT_ASSERT(mt_device_run(MT_DEVICE_CUDA, dn, 1) == MT_OK);
        MT_ASSERT(mt_cuda_timer_end(&us) == MT_OK);
        int i = r;
        while (i > 0 && t[i - 1] > us) t[i] = t[i - 1], i--;
        t[i] = us;
    }
    return t[reps / 2];
}

static void bench_attention(const char *name, int layers, int hd, int H, int KV, int n) {
    pair pos, seq, q, kc, vc, o;
    pair_make(&pos, MT_I32, 1, (int64_t[]){n});
    pair_make(&seq, MT_I32, 1, (int64_t[]){n});
    for (int i = 0; i < n; i++) ((int32_t *)pos.h.data)[i] = i, ((int32_t *)seq.h.data)[i] = 0;
    pair_upload(&pos), pair_upload(&seq);
    pair_make(&q, MT_F32, 3, (int64_t[]){hd, H, n});
    pair_make(&kc, MT_F32, 4, (int64_t[]){hd, KV, n, 1});
    pair_make(&vc, MT_F32, 4, (int64_t[]){hd, KV, n, 1});
    pair_make(&o, MT_F32, 3, (int64_t[]){hd, H, n});
    pair_fill(&q, 1.0f), pair_fill(&kc, 1.0f), pair_fill(&vc, 1.0f);
    mt_node dn = {.op = MT_OP_ATTENTION,
                  .src = {&q.d, &kc.d, &vc.d},
                  .dst = &o.d,
                  .p = {.pos = pos.d.data, .seq = seq.d.data}};
    double flops = 4.0 * H * hd * (double)n * (n + 1) / 2; // causal Q K^T + P V
    setenv("MT_CUDA_FLASH", "0", 1);
    double old = time_node(&dn, 15);
    unsetenv("MT_CUDA_FLASH");
    double fl = time_node(&dn, 15);
    printf("| attention %s n%d | %.1f | %.1f | %.2fx | %.1f TFLOP/s | x%d layers: %.2f -> %.2f ms |\n", name,
           n, old, fl, old / fl, flops / fl * 1e-6, layers, old * layers * 1e-3, fl * layers * 1e-3);
    pair_free(&pos), pair_free(&seq), pair_free(&q), pair_free(&kc), pair_free(&vc), pair_free(&o);
}

static void bench_gemm(const char *name, mt_dtype dt, int k, int m, int n, int bias, int per_step) {
    pair w, x, b, y;
    pair_make(&w, dt, 2, (int64_t[]){k, m});
    pair_make(&x, MT_F32, 2, (int64_t[]){k, n});
    pair_make(&b, MT_F32, 1, (int64_t[]){m});
    pair_make(&y, MT_F32, 2, (int64_t[]){m, n});
    pair_fill(&w, 1.0f), pair_fill(&x, 1.0f), pair_fill(&b, 1.0f);
    MT_ASSERT(mt_device_reserve(MT_DEVICE_CUDA, n, k) == MT_OK);
    mt_node dn = {.op = MT_OP_MATMUL, .src = {&w.d, &x.d, bias ? &b.d : NULL}, .dst = &y.d};
    double us = time_node(&dn, 15), flops = 2.0 * k * m * (double)n;
    printf("| gemm %s %s k%d m%d n%d%s | %.1f us | %.0f TFLOP/s | x%d per step: %.2f ms |\n", name,
           mt_dtype_name(dt), k, m, n, bias ? " +bias" : "", us, flops / us * 1e-6, per_step,
           us * per_step * 1e-3);
    pair_free(&w), pair_free(&x), pair_free(&b), pair_free(&y);
}

static int bench(void) {
    printf("device: %s\n", mt_device_description(MT_DEVICE_CUDA));
    printf("| case | old us | flash us | ratio | flash rate | per step |\n|---|---:|---:|---:|---:|---:|\n");
    bench_attention("7B hd128 H28 KV4", 28, 128, 28, 4, 512);
    bench_attention("0.5B hd64 H14 KV2", 24, 64, 14, 2, 512);
    printf("| gemm | time | rate | per step |\n|---|---:|---:|---:|\n");
    static const mt_dtype dts[] = {MT_F16, MT_Q8_0, MT_Q4_K};
    for (int i = 0; i < 3; i++) {
        mt_dtype dt = dts[i];
        bench_gemm("7B q", dt, 3584, 3584, 512, 1, 28);
        bench_gemm("7B k/v", dt, 3584, 512, 512, 1, 56);
        bench_gemm("7B o", dt, 3584, 3584, 512, 0, 28);
        bench_gemm("7B gate/up", dt, 3584, 18944, 512, 0, 56);
        bench_gemm("7B gate/up (9 tokens: weight conversion)", dt, 3584, 18944, 9, 0, 56);
        bench_gemm("7B down", dt, 18944, 3584, 512, 0, 28);
    }
    bench_gemm("0.5B gate/up", MT_F16, 896, 4864, 512, 0, 48);
    bench_gemm("0.5B down", MT_F16, 4864, 896, 512, 0, 24);
    return 0;
}
#endif

int main(int argc, char **argv) {
    if (!mt_device_available(MT_DEVICE_CUDA)) {
        SKIP("cuda prefill", "no CUDA in this build or no GPU");
        th_summary();
        return 0;
    }
#ifdef MT_CUDA
    if (argc > 1 && !strcmp(argv[1], "--bench")) return bench();
#else
    (void)argc, (void)argv;
#endif
    printf("device: %s\n", mt_device_description(MT_DEVICE_CUDA));
    // attention: head dims x grouped-query ratios x lengths, prefixes before the batch
    static const int hds[] = {64, 128}, groups[][2] = {{4, 4}, {8, 2}, {28, 4}}; // ratios 1, 4, 7
    static const int lens[][2] = {{9, 0}, {37, 0}, {64, 0}, {65, 11}, {200, 0}, {333, 250}, {700, 0}};
    char name[96];
    for (int a = 0; a < 2; a++)
        for (int b = 0; b < 3; b++)
            for (int c = 0; c < 7; c++) {
                if (lens[c][0] >= 333 && b != 2) continue; // the long cases once per head dim
                int n = lens[c][0], p0 = lens[c][1];
                snprintf(name, sizeof name, "flash_hd%d_g%d_n%d_p%d", hds[a], groups[b][0] / groups[b][1], n,
                         p0);
                RUN_NAMED(name, test_flash(hds[a], groups[b][0], groups[b][1], n, p0, n, 0, 2.0f));
            }
    // below the flash threshold (the per-token kernel) and batches of two sequences sharing tiles
    RUN_NAMED("flash_below_threshold_n5", test_flash(128, 28, 4, 5, 20, 5, 0, 2.0f));
    RUN_NAMED("flash_two_seqs_hd128", test_flash(128, 28, 4, 45, 0, 20, 7, 2.0f));
    RUN_NAMED("flash_two_seqs_hd64_g1", test_flash(64, 4, 4, 150, 100, 77, 3, 2.0f));
    RUN_NAMED("flash_two_seqs_hd64_g7", test_flash(64, 14, 2, 19, 5, 10, 400, 2.0f));
    // large scores: the accuracy of Q K^T
    RUN_NAMED("flash_sharp_hd128", test_flash(128, 28, 4, 300, 17, 300, 0, 40.0f));
    RUN_NAMED("flash_sharp_hd64", test_flash(64, 14, 2, 130, 0, 130, 0, 40.0f));
    RUN_NAMED("elementwise_vec", test_elementwise(4864, 40, 4864));
    RUN_NAMED("elementwise_odd", test_elementwise(1003, 77, 1010));
    RUN_NAMED("elementwise_below_threshold", test_elementwise(896, 5, 896));
    RUN_NAMED("rmsnorm_rows_3584", test_rmsnorm(3584, 40));
    RUN_NAMED("rmsnorm_rows_4096", test_rmsnorm(4096, 9));
    RUN_NAMED("rmsnorm_rows_odd_width", test_rmsnorm(1003, 20));
    RUN_NAMED("rmsnorm_rows_wide", test_rmsnorm(5000, 12));
    RUN_NAMED("kv_write_rows_hd128", test_kv_write(128, 4, 77));
    RUN_NAMED("kv_write_rows_hd64", test_kv_write(64, 2, 9));
    RUN_NAMED("kv_write_rows_hd80_below", test_kv_write(80, 3, 5));
    RUN_NAMED("rope_rows_hd128", test_rope(128, 28, 77, 0));
    RUN_NAMED("rope_rows_hd64_far", test_rope(64, 14, 300, 30000));
    RUN_NAMED("rope_rows_hd80", test_rope(80, 3, 9, 5));
    // GEMM path (more than 8 tokens) at odd sizes, every way the weights reach it
    static const mt_dtype dts[] = {MT_F16, MT_BF16, MT_F32, MT_Q8_0, MT_Q4_K, MT_Q6_K, MT_Q5_0};
    for (size_t i = 0; i < sizeof dts / sizeof dts[0]; i++) {
        int blk = dts[i] == MT_Q4_K || dts[i] == MT_Q6_K ? 256 : 32;
        snprintf(name, sizeof name, "gemm_%s_odd", mt_dtype_name(dts[i]));
        RUN_NAMED(name, test_matmul(dts[i], 3 * blk, 1001, 9, 1));
        snprintf(name, sizeof name, "gemm_%s_odd_n77", mt_dtype_name(dts[i]));
        RUN_NAMED(name, test_matmul(dts[i], 5 * blk, 203, 77, 0));
    }
    RUN_NAMED("gemm_f16_k523_m77_n13_bias", test_matmul(MT_F16, 523, 77, 13, 1));
    RUN_NAMED("gemm_f16_k520_m333_n300_bias", test_matmul(MT_F16, 520, 333, 300, 1));
    RUN_NAMED("gemm_f16_k3584_m520_n512_bias", test_matmul(MT_F16, 3584, 520, 512, 1));
    th_summary();
    return th_failed ? 1 : 0;
}
