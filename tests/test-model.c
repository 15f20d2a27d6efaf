// Model API tests: load errors, context range errors, batched prefill == token-by-token decode, several
// sequences in one batch == each alone, zero KV bytes copied.
//
//   test-model [MODEL.gguf]       API tests on a tiny model (default build/fixtures/tiny-f32-untied.gguf,
//                                 written by tests/check_e2e.py; the model cases skip when it is absent)
//   test-model --logits MODEL ids.txt OUT.f32 [--decode-steps K] [--threads N]
//                                 tool mode for check_e2e.py: prefills the ids in one batch with logits
//                                 for every position, then greedy-decodes K steps; writes every logits
//                                 row as float32 and prints the greedy tokens
#include <math.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "harness.h"
#include "metallic.h"
#include "model/tokenizer.h"

static const char *model_path = "build/fixtures/tiny-f32-untied.gguf";

// ---- helpers

static uint64_t rng_state = 0x9e3779b97f4a7c15ull;
static uint32_t rnd(void) {
    rng_state ^= rng_state << 13;
    rng_state ^= rng_state >> 7;
    rng_state ^= rng_state << 17;
    return (uint32_t)(rng_state >> 11);
}

// max |a - b| relative to max |b| over n values
static double rel_diff(const float *a, const float *b, int n) {
    double d = 0, m = 0;
    for (int i = 0; i < n; i++) {
        double e = fabs((double)a[i] - b[i]);
        if (e > d || isnan(e)) d = isnan(e) ? INFINITY : e;
        if (fabs(b[i]) > m) m = fabs(b[i]);
    }
    return m > 0 ? d / m : d;
}

static int argmax(const float *x, int n) {
    int best = 0;
    for (int i = 1; i < n; i++)
        if (x[i] > x[best]) best = i;
    return best;
}

static mt_session *new_session(mt_model *m, int n_ctx, int n_seq) {
    mt_session_opts o = mt_session_default_opts();
    o.n_ctx = n_ctx;
    o.n_seq = n_seq;
    o.n_threads = 2;
    mt_session *s = NULL;
    if (mt_session_create(m, &o, &s) != MT_OK) printf("    session: %s\n", mt_last_error());
    return s;
}

// Writes a GGUF v3 file with only string metadata pairs (no tensors) for the load-error cases.
static int write_gguf(const char *path, const char **kv, int n_kv) {
    FILE *f = fopen(path, "wb");
    if (!f) return -1;
    uint32_t version = 3, type_str = 8;
    uint64_t n_tensors = 0, n = (uint64_t)n_kv;
    fwrite("GGUF", 1, 4, f);
    fwrite(&version, 4, 1, f);
    fwrite(&n_tensors, 8, 1, f);
    fwrite(&n, 8, 1, f);
    for (int i = 0; i < n_kv; i++) {
        uint64_t kl = strlen(kv[2 * i]), vl = strlen(kv[2 * i + 1]);
        fwrite(&kl, 8, 1, f);
        fwrite(kv[2 * i], 1, kl, f);
        fwrite(&type_str, 4, 1, f);
        fwrite(&vl, 8, 1, f);
        fwrite(kv[2 * i + 1], 1, vl, f);
    }
    return fclose(f);
}

// ---- load errors (need no model)

static void test_load_missing_file(void) {
    mt_model *m = NULL;
    const char *path = "/nonexistent/dir/no-such-model.gguf";
    mt_status st = mt_model_load(path, &m);
    CHECK(st != MT_OK && m == NULL, "loading a missing file returned %s", mt_status_name(st));
    CHECK(strstr(mt_last_error(), path) != NULL, "message does not name the path: %s", mt_last_error());
}

static void test_load_wrong_arch(void) {
    char path[] = "/tmp/mt-test-model-XXXXXX";
    int fd = mkstemp(path);
    CHECK(fd >= 0, "mkstemp");
    if (fd < 0) return;
    close(fd);
    const char *kv[] = {"general.architecture", "llama"};
    CHECK(write_gguf(path, kv, 1) == 0, "write");
    mt_model *m = NULL;
    mt_status st = mt_model_load(path, &m);
    CHECK(st == MT_ERR_UNSUPPORTED, "wrong architecture gave %s: %s", mt_status_name(st), mt_last_error());
    CHECK(strstr(mt_last_error(), "llama") != NULL, "message does not name the architecture: %s",
          mt_last_error());
    unlink(path);
}

static void test_load_missing_key(void) {
    char path[] = "/tmp/mt-test-model-XXXXXX";
    int fd = mkstemp(path);
    CHECK(fd >= 0, "mkstemp");
    if (fd < 0) return;
    close(fd);
    const char *kv[] = {"general.architecture", "qwen2", "general.name", "keyless"};
    CHECK(write_gguf(path, kv, 2) == 0, "write");
    mt_model *m = NULL;
    mt_status st = mt_model_load(path, &m);
    CHECK(st == MT_ERR_FORMAT, "missing key gave %s: %s", mt_status_name(st), mt_last_error());
    CHECK(strstr(mt_last_error(), "qwen2.block_count") != NULL, "message does not name the key: %s",
          mt_last_error());
    unlink(path);
}

// ---- model cases

static void test_config(mt_model *m) {
    const mt_qwen2_config *c = mt_model_config(m);
    CHECK(c->n_embd == 64 && c->n_head == 4 && c->n_head_kv == 2 && c->head_dim == 16 && c->n_ff == 160,
          "tiny config %d %d %d %d %d", c->n_embd, c->n_head, c->n_head_kv, c->head_dim, c->n_ff);
    CHECK(c->n_vocab == mt_tokenizer_n_vocab(mt_model_tokenizer(m)), "vocab %d vs tokenizer %d", c->n_vocab,
          mt_tokenizer_n_vocab(mt_model_tokenizer(m)));
    int32_t im_end = mt_tokenizer_find(mt_model_tokenizer(m), "<|im_end|>");
    int32_t eot = mt_tokenizer_find(mt_model_tokenizer(m), "<|endoftext|>");
    int found = 0;
    for (int i = 0; i < c->n_eos; i++) found += (c->eos_ids[i] == im_end) + (c->eos_ids[i] == eot);
    CHECK(im_end >= 0 && eot >= 0 && found == 2, "eos ids miss <|im_end|> %d / <|endoftext|> %d", im_end,
          eot);
    CHECK(mt_model_chat_template(m) && strstr(mt_model_chat_template(m), "im_start"), "chat template");
    CHECK(mt_model_weight_bytes(m) > 0, "weight bytes");
    mt_session *s = new_session(m, 0, 1);
    CHECK(s && mt_session_n_ctx(s) == c->n_ctx_train, "default n_ctx %d vs trained %d",
          s ? mt_session_n_ctx(s) : -1, c->n_ctx_train);
    mt_session_free(s);
}

static void test_range_errors(mt_model *m) {
    mt_session *s = new_session(m, 32, 2);
    if (!s) return;
    int32_t tok = 5, pos = 40, seq = 0;
    mt_batch b = {1, &tok, &pos, &seq, NULL};
    mt_status st = mt_session_decode(s, &b);
    CHECK(st == MT_ERR_RANGE, "position beyond the context gave %s", mt_status_name(st));
    CHECK(strstr(mt_last_error(), "40") && strstr(mt_last_error(), "32"), "message lacks both numbers: %s",
          mt_last_error());
    pos = -1;
    CHECK(mt_session_decode(s, &b) == MT_ERR_RANGE, "negative position");
    pos = 0;
    tok = mt_model_config(m)->n_vocab;
    st = mt_session_decode(s, &b);
    CHECK(st == MT_ERR_INVALID && strstr(mt_last_error(), "vocabulary"), "bad token: %s", mt_last_error());
    tok = 1;
    seq = 2;
    CHECK(mt_session_decode(s, &b) == MT_ERR_INVALID, "bad sequence slot");
    seq = 0;
    pos = 1;
    st = mt_session_decode(s, &b);
    CHECK(st == MT_ERR_RANGE && strstr(mt_last_error(), "gap"), "skipping position 0 gave %s: %s",
          mt_status_name(st), mt_last_error());
    pos = 0;
    CHECK(mt_session_decode(s, &b) == MT_OK, "good token after errors: %s", mt_last_error());
    CHECK(mt_session_logits(s, 0) != NULL && mt_session_logits(s, 1) == NULL, "one logits row");
    mt_session_opts o = mt_session_default_opts();
    o.n_ctx = mt_model_config(m)->n_ctx_train + 1;
    mt_session *big = NULL;
    CHECK(mt_session_create(m, &o, &big) != MT_OK && big == NULL,
          "n_ctx beyond the model's context accepted");
    mt_session_free(s);
}

// Prefill in one pass with logits for every position; returns rows [n][vocab] (malloc'ed).
static float *prefill_all(mt_session *s, const int32_t *ids, int n, int seq, int vocab) {
    int32_t *pos = malloc(n * sizeof *pos), *sq = malloc(n * sizeof *sq);
    int8_t *want = malloc(n);
    for (int i = 0; i < n; i++) pos[i] = i, sq[i] = seq, want[i] = 1;
    mt_batch b = {n, ids, pos, sq, want};
    float *out = NULL;
    if (mt_session_decode(s, &b) == MT_OK) {
        out = malloc((size_t)n * vocab * sizeof(float));
        for (int i = 0; i < n; i++)
            memcpy(out + (size_t)i * vocab, mt_session_logits(s, i), vocab * sizeof(float));
    } else {
        printf("    decode: %s\n", mt_last_error());
    }
    free(pos);
    free(sq);
    free(want);
    return out;
}

static void test_prefill_matches_stepwise(mt_model *m) {
    int V = mt_model_config(m)->n_vocab, n = 13;
    int32_t ids[13];
    for (int i = 0; i < n; i++) ids[i] = (int32_t)(rnd() % (uint32_t)V);
    mt_session *a = new_session(m, 64, 1), *b = new_session(m, 64, 1);
    if (!a || !b) return;
    float *all = prefill_all(a, ids, n, 0, V);
    CHECK(all != NULL, "prefill");
    double worst = 0;
    for (int i = 0; all && i < n; i++) {
        int32_t pos = i, seq = 0;
        mt_batch one = {1, &ids[i], &pos, &seq, NULL}; // NULL flags: logits of the last (only) token
        CHECK(mt_session_decode(b, &one) == MT_OK, "step %d: %s", i, mt_last_error());
        double d = rel_diff(mt_session_logits(b, 0), all + (size_t)i * V, V);
        if (d > worst) worst = d;
    }
    CHECK(worst < 1e-4, "prefill vs token-by-token relative diff %g", worst);
    // default flags on a batch: only the last token has logits
    mt_session_seq_clear(a, 0);
    int32_t pos[13], seq[13] = {0};
    for (int i = 0; i < n; i++) pos[i] = i;
    mt_batch bb = {n, ids, pos, seq, NULL};
    CHECK(mt_session_decode(a, &bb) == MT_OK, "decode: %s", mt_last_error());
    CHECK(mt_session_logits(a, 1) == NULL, "more than one logits row by default");
    if (all)
        CHECK(rel_diff(mt_session_logits(a, 0), all + (size_t)(n - 1) * V, V) < 1e-5, "last row after clear");
    CHECK(mt_session_kv_bytes_copied(a) == 0 && mt_session_kv_bytes_copied(b) == 0, "KV bytes were copied");
    free(all);
    mt_session_free(a);
    mt_session_free(b);
}

static void test_two_sequences(mt_model *m) {
    int V = mt_model_config(m)->n_vocab;
    enum { NA = 6, NB = 9 };
    int32_t a[NA + 1], bq[NB + 1];
    for (int i = 0; i <= NA; i++) a[i] = (int32_t)(rnd() % (uint32_t)V);
    for (int i = 0; i <= NB; i++) bq[i] = (int32_t)(rnd() % (uint32_t)V);
    // alone, each in its own session (sequence slot 0), plus one more decode step
    mt_session *sa = new_session(m, 32, 1), *sb = new_session(m, 32, 1), *both = new_session(m, 32, 3);
    if (!sa || !sb || !both) return;
    float *ra = prefill_all(sa, a, NA, 0, V), *rb = prefill_all(sb, bq, NB, 0, V);
    CHECK(ra && rb, "prefill alone");
    if (!ra || !rb) return;
    float *ra1 = malloc(V * sizeof(float)), *rb1 = malloc(V * sizeof(float));
    int32_t p = NA, s0 = 0;
    mt_batch one = {1, &a[NA], &p, &s0, NULL};
    CHECK(mt_session_decode(sa, &one) == MT_OK, "step a");
    memcpy(ra1, mt_session_logits(sa, 0), V * sizeof(float));
    p = NB;
    one.tokens = &bq[NB];
    CHECK(mt_session_decode(sb, &one) == MT_OK, "step b");
    memcpy(rb1, mt_session_logits(sb, 0), V * sizeof(float));

    // together: interleaved in one batch, A in slot 2 and B in slot 1
    int32_t tok[NA + NB], pos[NA + NB], seq[NA + NB];
    int8_t want[NA + NB];
    int row_of[NA + NB], ia = 0, ib = 0, n = 0;
    while (ia < NA || ib < NB) {
        if (ia < NA && (ia <= ib || ib == NB)) {
            tok[n] = a[ia], pos[n] = ia, seq[n] = 2, row_of[n] = ia++;
        } else {
            tok[n] = bq[ib], pos[n] = ib, seq[n] = 1, row_of[n] = ib++;
        }
        want[n++] = 1;
    }
    mt_batch bt = {n, tok, pos, seq, want};
    CHECK(mt_session_decode(both, &bt) == MT_OK, "interleaved batch: %s", mt_last_error());
    double worst = 0;
    for (int i = 0; i < n; i++) {
        const float *ref = seq[i] == 2 ? ra + (size_t)row_of[i] * V : rb + (size_t)row_of[i] * V;
        double d = rel_diff(mt_session_logits(both, i), ref, V);
        if (d > worst) worst = d;
    }
    CHECK(worst < 1e-5, "interleaved prefill vs alone: %g", worst);
    // one decode step for both sequences in one batch
    int32_t t2[2] = {bq[NB], a[NA]}, p2[2] = {NB, NA}, q2[2] = {1, 2};
    mt_batch b2 = {2, t2, p2, q2, (const int8_t[]){1, 1}};
    CHECK(mt_session_decode(both, &b2) == MT_OK, "two-sequence step: %s", mt_last_error());
    double da = rel_diff(mt_session_logits(both, 1), ra1, V),
           db = rel_diff(mt_session_logits(both, 0), rb1, V);
    CHECK(da < 1e-5 && db < 1e-5, "two-sequence decode step vs alone: %g %g", da, db);
    CHECK(argmax(mt_session_logits(both, 1), V) == argmax(ra1, V), "greedy token of A");
    CHECK(mt_session_kv_bytes_copied(both) == 0, "KV bytes were copied");
    free(ra), free(rb), free(ra1), free(rb1);
    mt_session_free(sa);
    mt_session_free(sb);
    mt_session_free(both);
}

// ---- tool mode

static int tool_logits(int argc, char **argv) {
    if (argc < 5) {
        fprintf(stderr,
                "usage: test-model --logits MODEL ids.txt OUT.f32 [--decode-steps K] [--threads N]\n");
        return 2;
    }
    int steps = 0, threads = 0;
    for (int i = 5; i + 1 < argc; i += 2) {
        if (!strcmp(argv[i], "--decode-steps"))
            steps = atoi(argv[i + 1]);
        else if (!strcmp(argv[i], "--threads"))
            threads = atoi(argv[i + 1]);
    }
    FILE *f = fopen(argv[3], "r");
    if (!f) {
        fprintf(stderr, "cannot open %s\n", argv[3]);
        return 1;
    }
    int cap = 1024, n = 0;
    int32_t *ids = malloc(cap * sizeof *ids);
    long v;
    while (fscanf(f, "%ld", &v) == 1) {
        if (n == cap) {
            int32_t *more = realloc(ids, (cap *= 2) * sizeof *ids);
            if (!more) {
                fprintf(stderr, "out of memory reading %s\n", argv[3]);
                free(ids);
                fclose(f);
                return 1;
            }
            ids = more;
        }
        ids[n++] = (int32_t)v;
    }
    fclose(f);
    mt_model *m;
    if (mt_model_load(argv[2], &m) != MT_OK) {
        fprintf(stderr, "error: %s\n", mt_last_error());
        return 1;
    }
    int V = mt_model_config(m)->n_vocab;
    mt_session_opts o = mt_session_default_opts();
    o.n_ctx = n + steps + 1;
    o.n_threads = threads;
    mt_session *s;
    if (n < 1 || mt_session_create(m, &o, &s) != MT_OK) {
        fprintf(stderr, "error: %s\n", n < 1 ? "no ids" : mt_last_error());
        return 1;
    }
    FILE *out = fopen(argv[4], "wb");
    int32_t *pos = malloc(n * sizeof *pos), *seq = calloc(n, sizeof *seq);
    int8_t *want = malloc(n);
    for (int i = 0; i < n; i++) pos[i] = i, want[i] = 1;
    mt_batch b = {n, ids, pos, seq, want};
    int rc = 0;
    if (!out || mt_session_decode(s, &b) != MT_OK) {
        fprintf(stderr, "error: %s\n", out ? mt_last_error() : "cannot write output");
        rc = 1;
    }
    for (int i = 0; !rc && i < n; i++) fwrite(mt_session_logits(s, i), sizeof(float), V, out);
    printf("greedy:");
    int32_t tok = rc ? 0 : argmax(mt_session_logits(s, n - 1), V);
    for (int k = 0; !rc && k < steps; k++) {
        printf(" %d", tok);
        int32_t p = n + k, sq = 0;
        mt_batch one = {1, &tok, &p, &sq, NULL};
        if (mt_session_decode(s, &one) != MT_OK) {
            fprintf(stderr, "error: %s\n", mt_last_error());
            rc = 1;
            break;
        }
        fwrite(mt_session_logits(s, 0), sizeof(float), V, out);
        tok = argmax(mt_session_logits(s, 0), V);
    }
    printf("\nkv_bytes_copied: %llu\n", (unsigned long long)mt_session_kv_bytes_copied(s));
    if (out) fclose(out);
    free(ids), free(pos), free(seq), free(want);
    mt_session_free(s);
    mt_model_free(m);
    return rc;
}

int main(int argc, char **argv) {
    if (argc > 1 && !strcmp(argv[1], "--logits")) return tool_logits(argc, argv);
    if (argc > 1) model_path = argv[1];
    RUN(test_load_missing_file);
    RUN(test_load_wrong_arch);
    RUN(test_load_missing_key);
    if (access(model_path, R_OK) != 0) {
        SKIP("model cases", "no tiny model (tests/check_e2e.py writes build/fixtures/*.gguf)");
        return th_summary();
    }
    mt_model *m;
    if (mt_model_load(model_path, &m) != MT_OK) {
        printf("FAIL load %s: %s\n", model_path, mt_last_error());
        th_failed++;
        return th_summary();
    }
    RUN(test_config, m);
    RUN(test_range_errors, m);
    RUN(test_prefill_matches_stepwise, m);
    RUN(test_two_sequences, m);
    mt_model_free(m);
    return th_summary();
}
