// Safetensors reader tests: the malformed corpus in tests/fixtures/bad-safetensors (each file rejected
// with the status and message its MANIFEST names, from a file and from memory), a valid file built
// here with random contents read back exactly, folders with and without an index, and every truncation
// and many byte flips of a valid file (which must fail cleanly or parse consistently, never crash).
//
//   test-safetensors [--corpus DIR]     run the tests
//   test-safetensors --dump FILE...     print each file's tensors (or its error); exit 1 on an error
//   test-safetensors --hf-source DIR    load a Hugging Face folder, print what was read as JSON
#include <stdint.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include "core/safetensors.h"
#include "model/loader.h"
#include "harness.h"

static const char *corpus_dir = "tests/fixtures/bad-safetensors";

static uint64_t rng_state = 0x9e3779b97f4a7c15ull;
static uint64_t rng(void) { // xorshift64*: fixed seed, same data every run
    rng_state ^= rng_state >> 12;
    rng_state ^= rng_state << 25;
    rng_state ^= rng_state >> 27;
    return rng_state * 0x2545f4914f6cdd1dull;
}
static float rng_f(void) {
    return (float)((double)(rng() >> 11) / 9007199254740992.0 * 4.0 - 2.0);
}

static unsigned char *read_all(const char *path, size_t *n) {
    FILE *f = fopen(path, "rb");
    if (!f) return NULL;
    fseek(f, 0, SEEK_END);
    long sz = ftell(f);
    fseek(f, 0, SEEK_SET);
    unsigned char *b = malloc((size_t)sz + 1);
    *n = fread(b, 1, (size_t)sz, f);
    fclose(f);
    return b;
}

static void write_all(const char *path, const void *p, size_t n) {
    FILE *f = fopen(path, "wb");
    if (!f) return;
    fwrite(p, 1, n, f);
    fclose(f);
}

// ---- the malformed corpus ----

static void check_bad(const char *file, const char *status, const char *piece) {
    char path[1024];
    snprintf(path, sizeof path, "%s/%s", corpus_dir, file);
    mt_safetensors *s = (mt_safetensors *)1;
    mt_status st = mt_safetensors_open(path, &s);
    CHECK(st != MT_OK && s == NULL, "%s was accepted", file);
    mt_status want = !strcmp(status, "unsupported") ? MT_ERR_UNSUPPORTED : MT_ERR_FORMAT;
    CHECK(st == want, "%s: status '%s', expected '%s'", file, mt_status_name(st), status);
    CHECK(strstr(mt_last_error(), piece) != NULL, "%s: message '%s' lacks '%s'", file, mt_last_error(),
          piece);
    CHECK(strstr(mt_last_error(), file) != NULL, "%s: message '%s' does not name the file", file,
          mt_last_error());
    printf("    %-34s %s\n", file, mt_last_error());

    size_t n;
    unsigned char *buf = read_all(path, &n);
    CHECK(buf != NULL, "cannot read %s", path);
    if (!buf) return;
    unsigned char *exact = malloc(n ? n : 1); // exact-size copy so ASan sees any overread
    memcpy(exact, buf, n);
    st = mt_safetensors_open_memory(exact, n, file, &s);
    CHECK(st != MT_OK && s == NULL, "%s accepted from memory", file);
    CHECK(strstr(mt_last_error(), piece) != NULL, "%s (memory): message '%s' lacks '%s'", file,
          mt_last_error(), piece);
    free(exact);
    free(buf);
}

static void test_corpus(void) {
    char path[1024];
    snprintf(path, sizeof path, "%s/MANIFEST", corpus_dir);
    FILE *f = fopen(path, "r");
    CHECK(f != NULL, "cannot open %s", path);
    if (!f) return;
    char line[512];
    int n = 0, n_unsupported = 0;
    while (fgets(line, sizeof line, f)) {
        if (line[0] == '#' || line[0] == '\n') continue;
        line[strcspn(line, "\n")] = 0;
        char *file = strtok(line, "\t"), *status = strtok(NULL, "\t"), *piece = strtok(NULL, "\t");
        CHECK(file && status && piece, "bad MANIFEST line");
        if (!file || !status || !piece) continue;
        check_bad(file, status, piece);
        n++;
        n_unsupported += !strcmp(status, "unsupported");
    }
    fclose(f);
    CHECK(n >= 12, "only %d malformed files", n);
    CHECK(n_unsupported >= 1, "no unsupported-dtype case");
}

// ---- a valid file ----

typedef struct spec {
    const char *name, *dtype;
    int rank;
    int64_t shape[4]; // outermost first, as stored
} spec;

static const spec specs[] = {
    {"model.layers.0.self_attn.q_proj.weight", "F32", 2, {6, 5}},
    {"model.norm.weight", "F16", 1, {7}},
    {"lm_head.weight", "BF16", 3, {2, 3, 4}},
    {"scalar", "F32", 0, {0}},
    {"empty", "F32", 2, {0, 4}},
    {"a.4d", "F16", 4, {2, 1, 3, 2}},
};
#define N_SPECS ((int)(sizeof specs / sizeof specs[0]))

static size_t esize(const char *dt) {
    return strcmp(dt, "F32") ? 2 : 4;
}

static int64_t spec_nelem(const spec *s) {
    int64_t n = 1;
    for (int i = 0; i < s->rank; i++) n *= s->shape[i];
    return n;
}

// Builds a file with the specs' tensors in reverse order of their data (so the header order differs
// from the offset order), random contents, header padded with spaces; returns the bytes and the data
// offset of each spec.
static unsigned char *build_valid(size_t *size, uint64_t *offs, const unsigned char **payload) {
    uint64_t pos = 0;
    for (int i = N_SPECS - 1; i >= 0; i--) {
        offs[i] = pos;
        pos += (uint64_t)spec_nelem(&specs[i]) * esize(specs[i].dtype);
    }
    uint64_t data_size = pos;
    char hdr[4096];
    int h = snprintf(hdr, sizeof hdr, "{\"__metadata__\": {\"format\": \"pt\", \"note\": \"test\"}");
    for (int i = 0; i < N_SPECS; i++) {
        const spec *s = &specs[i];
        h += snprintf(hdr + h, sizeof hdr - (size_t)h, ", \"%s\": {\"dtype\": \"%s\", \"shape\": [", s->name,
                      s->dtype);
        for (int d = 0; d < s->rank; d++)
            h += snprintf(hdr + h, sizeof hdr - (size_t)h, "%s%lld", d ? ", " : "", (long long)s->shape[d]);
        uint64_t nb = (uint64_t)spec_nelem(s) * esize(s->dtype);
        h += snprintf(hdr + h, sizeof hdr - (size_t)h, "], \"data_offsets\": [%llu, %llu]}",
                      (unsigned long long)offs[i], (unsigned long long)(offs[i] + nb));
    }
    h += snprintf(hdr + h, sizeof hdr - (size_t)h, "}");
    while (h % 8) hdr[h++] = ' ';
    *size = 8 + (size_t)h + data_size;
    unsigned char *b = malloc(*size);
    for (int i = 0; i < 8; i++) b[i] = (unsigned char)((uint64_t)h >> (8 * i));
    memcpy(b + 8, hdr, (size_t)h);
    unsigned char *data = b + 8 + h;
    for (uint64_t i = 0; i < data_size; i += 2) {
        // random finite values in every dtype: write halves/bf16 from floats
        float v = rng_f();
        uint16_t x = mt_f32_to_f16(v);
        memcpy(data + i, &x, 2);
    }
    for (int i = 0; i < N_SPECS; i++)
        if (!strcmp(specs[i].dtype, "F32"))
            for (int64_t k = 0; k < spec_nelem(&specs[i]); k++) {
                float v = rng_f();
                memcpy(data + offs[i] + 4 * (uint64_t)k, &v, 4);
            }
    *payload = data;
    return b;
}

static void check_valid(const mt_safetensors *s, const uint64_t *offs, const unsigned char *payload) {
    CHECK(mt_safetensors_n_tensors(s) == N_SPECS, "%lld tensors", (long long)mt_safetensors_n_tensors(s));
    const char *fmt = mt_safetensors_metadata(s, "format");
    CHECK(fmt && !strcmp(fmt, "pt"), "metadata format = %s", fmt ? fmt : "(null)");
    CHECK(mt_safetensors_metadata(s, "absent") == NULL, "absent metadata key found");
    CHECK(mt_safetensors_tensor_by_name(s, "nope") == NULL, "absent tensor found");
    CHECK(mt_safetensors_tensor_at(s, N_SPECS) == NULL && mt_safetensors_tensor_at(s, -1) == NULL,
          "tensor_at out of range");
    for (int64_t i = 1; i < mt_safetensors_n_tensors(s); i++)
        CHECK(mt_safetensors_tensor_at(s, i - 1)->offset <= mt_safetensors_tensor_at(s, i)->offset,
              "tensor_at not in offset order");
    for (int i = 0; i < N_SPECS; i++) {
        const spec *sp = &specs[i];
        const mt_st_tensor *t = mt_safetensors_tensor_by_name(s, sp->name);
        CHECK(t != NULL, "%s missing", sp->name);
        if (!t) continue;
        mt_dtype want = !strcmp(sp->dtype, "F32") ? MT_F32 : !strcmp(sp->dtype, "F16") ? MT_F16 : MT_BF16;
        CHECK(t->t.dtype == want, "%s dtype %s", sp->name, mt_dtype_name(t->t.dtype));
        CHECK(!strcmp(t->name, sp->name) && t->t.name == t->name, "%s name", sp->name);
        CHECK(t->t.ndim == (sp->rank ? sp->rank : 1), "%s ndim %d", sp->name, t->t.ndim);
        for (int d = 0; d < MT_MAX_DIMS; d++) {
            int64_t want_ne = d < sp->rank ? sp->shape[sp->rank - 1 - d] : 1;
            CHECK(t->t.ne[d] == want_ne, "%s ne[%d] = %lld, want %lld", sp->name, d, (long long)t->t.ne[d],
                  (long long)want_ne);
        }
        CHECK(t->t.nb[0] == esize(sp->dtype), "%s nb[0]", sp->name);
        CHECK(t->t.nb[1] == t->t.nb[0] * (size_t)t->t.ne[0], "%s nb[1]", sp->name);
        CHECK(t->offset == offs[i], "%s offset %llu", sp->name, (unsigned long long)t->offset);
        CHECK(t->nbytes == (uint64_t)spec_nelem(sp) * esize(sp->dtype), "%s nbytes", sp->name);
        CHECK(mt_tensor_nbytes(&t->t) == t->nbytes, "%s tensor nbytes", sp->name);
        CHECK(t->t.data != NULL && !memcmp(t->t.data, payload + offs[i], t->nbytes), "%s data differs",
              sp->name);
    }
    // element check through the tensor view: q_proj [6, 5] -> ne {5, 6}, row 4 col 3
    const mt_st_tensor *q = mt_safetensors_tensor_by_name(s, specs[0].name);
    if (q) {
        float v, want;
        memcpy(&v, (char *)mt_tensor_row(&q->t, 4, 0, 0) + 3 * 4, 4);
        memcpy(&want, payload + offs[0] + (4 * 5 + 3) * 4, 4);
        CHECK(v == want && v != 0.0f, "q_proj[4][3] = %g, want %g", (double)v, (double)want);
    }
}

static void test_valid_memory(void) {
    size_t n;
    uint64_t offs[N_SPECS];
    const unsigned char *payload;
    unsigned char *b = build_valid(&n, offs, &payload);
    mt_safetensors *s = NULL;
    mt_status st = mt_safetensors_open_memory(b, n, "valid", &s);
    CHECK(st == MT_OK, "open: %s", mt_last_error());
    if (s) {
        check_valid(s, offs, payload);
        CHECK(mt_safetensors_file_size(s) == n, "file size");
        mt_safetensors_close(s);
    }
    free(b);
}

static char tmpdir[256];

static void make_tmpdir(void) {
    snprintf(tmpdir, sizeof tmpdir, "/tmp/mt-st-XXXXXX");
    if (!mkdtemp(tmpdir)) tmpdir[0] = 0;
}

static void rm_tmpdir(void) {
    char cmd[512];
    if (!tmpdir[0]) return;
    snprintf(cmd, sizeof cmd, "rm -rf '%s'", tmpdir);
    if (system(cmd) != 0) fprintf(stderr, "cannot remove %s\n", tmpdir);
}

static void test_valid_file(void) {
    size_t n;
    uint64_t offs[N_SPECS];
    const unsigned char *payload;
    unsigned char *b = build_valid(&n, offs, &payload);
    char path[512];
    snprintf(path, sizeof path, "%s/one.safetensors", tmpdir);
    write_all(path, b, n);
    mt_safetensors *s = NULL;
    CHECK(mt_safetensors_open(path, &s) == MT_OK, "open: %s", mt_last_error());
    if (s) {
        check_valid(s, offs, payload);
        CHECK(!strcmp(mt_safetensors_path(s), path), "path");
        mt_safetensors_close(s);
    }
    CHECK(mt_safetensors_open("/nonexistent/x.safetensors", &s) == MT_ERR_IO, "missing file");
    CHECK(strstr(mt_last_error(), "/nonexistent/x.safetensors") != NULL, "missing file not named");
    free(b);
}

// A one-tensor file with the given name and n F32 values.
static void write_one(const char *dir, const char *file, const char *name, int n) {
    char hdr[256], path[512];
    int h = snprintf(hdr, sizeof hdr,
                     "{\"%s\": {\"dtype\": \"F32\", \"shape\": [%d], \"data_offsets\": [0, %d]}}", name, n,
                     4 * n);
    size_t size = 8 + (size_t)h + 4 * (size_t)n;
    unsigned char *b = malloc(size);
    for (int i = 0; i < 8; i++) b[i] = (unsigned char)((uint64_t)h >> (8 * i));
    memcpy(b + 8, hdr, (size_t)h);
    for (int i = 0; i < n; i++) {
        float v = (float)(i + 1) * 0.5f;
        memcpy(b + 8 + h + 4 * i, &v, 4);
    }
    snprintf(path, sizeof path, "%s/%s", dir, file);
    write_all(path, b, size);
    free(b);
}

static void write_text(const char *dir, const char *file, const char *text) {
    char path[512];
    snprintf(path, sizeof path, "%s/%s", dir, file);
    write_all(path, text, strlen(text));
}

static void test_dir(void) {
    char d[512];
    mt_safetensors *files[8];
    int n = -1;

    // no index: every *.safetensors, sorted by name
    snprintf(d, sizeof d, "%s/plain", tmpdir);
    mkdir(d, 0755);
    write_one(d, "b.safetensors", "y", 3);
    write_one(d, "a.safetensors", "x", 2);
    write_text(d, "notes.txt", "not a weight file");
    CHECK(mt_safetensors_open_dir(d, files, 8, &n) == MT_OK, "plain dir: %s", mt_last_error());
    CHECK(n == 2, "plain dir: %d files", n);
    if (n == 2) {
        const mt_st_tensor *x = mt_safetensors_find(files, n, "x"), *y = mt_safetensors_find(files, n, "y");
        CHECK(x && x->t.ne[0] == 2 && y && y->t.ne[0] == 3, "plain dir tensors");
        float v = 0;
        if (y) memcpy(&v, (const char *)y->t.data + 8, 4); // header not padded: data may be unaligned
        CHECK(v == 1.5f, "plain dir data %g", (double)v);
        CHECK(mt_safetensors_find(files, n, "z") == NULL, "absent tensor found");
        CHECK(strstr(mt_safetensors_path(files[0]), "a.safetensors") != NULL, "files not sorted");
    }
    for (int i = 0; i < n; i++) mt_safetensors_close(files[i]);

    // too many files for the caller's array
    CHECK(mt_safetensors_open_dir(d, files, 1, &n) == MT_ERR_UNSUPPORTED && n == 0, "max_files not enforced");

    // the same tensor in two files
    write_one(d, "c.safetensors", "x", 4);
    CHECK(mt_safetensors_open_dir(d, files, 8, &n) == MT_ERR_FORMAT && n == 0,
          "duplicate across files accepted");
    CHECK(strstr(mt_last_error(), "'x'") != NULL, "duplicate: %s", mt_last_error());

    // with an index: only the files it names are opened (c.safetensors is ignored)
    write_text(d, "model.safetensors.index.json",
               "{\"metadata\": {\"total_size\": 20}, \"weight_map\": {\"x\": \"a.safetensors\", \"y\": "
               "\"b.safetensors\"}}");
    CHECK(mt_safetensors_open_dir(d, files, 8, &n) == MT_OK && n == 2, "index dir: %s", mt_last_error());
    for (int i = 0; i < n; i++) mt_safetensors_close(files[i]);

    // index pointing at the wrong file, outside the folder, or not JSON
    write_text(d, "model.safetensors.index.json", "{\"weight_map\": {\"x\": \"b.safetensors\"}}");
    CHECK(mt_safetensors_open_dir(d, files, 8, &n) == MT_ERR_FORMAT, "wrong index file accepted");
    CHECK(strstr(mt_last_error(), "'x'") != NULL, "wrong index: %s", mt_last_error());
    write_text(d, "model.safetensors.index.json", "{\"weight_map\": {\"x\": \"../a.safetensors\"}}");
    CHECK(mt_safetensors_open_dir(d, files, 8, &n) == MT_ERR_FORMAT, "index escaping the folder accepted");
    write_text(d, "model.safetensors.index.json", "{\"weight_map\": ");
    CHECK(mt_safetensors_open_dir(d, files, 8, &n) == MT_ERR_FORMAT, "bad index JSON accepted");
    write_text(d, "model.safetensors.index.json", "{\"weight_map\": {\"x\": \"missing.safetensors\"}}");
    CHECK(mt_safetensors_open_dir(d, files, 8, &n) == MT_ERR_IO, "missing indexed file accepted");
    CHECK(strstr(mt_last_error(), "missing.safetensors") != NULL, "missing file: %s", mt_last_error());

    // empty folder, absent folder
    snprintf(d, sizeof d, "%s/empty", tmpdir);
    mkdir(d, 0755);
    CHECK(mt_safetensors_open_dir(d, files, 8, &n) == MT_ERR_IO && n == 0, "empty dir accepted");
    CHECK(strstr(mt_last_error(), "no *.safetensors") != NULL, "empty dir: %s", mt_last_error());
    CHECK(mt_safetensors_open_dir("/nonexistent-dir", files, 8, &n) == MT_ERR_IO, "absent dir accepted");
}

// Every prefix of a valid file is invalid (the tensors must tile the data exactly); random byte flips
// must either fail with a message or give tensors that lie inside the buffer.
static void test_mutations(void) {
    size_t n;
    uint64_t offs[N_SPECS];
    const unsigned char *payload;
    unsigned char *b = build_valid(&n, offs, &payload);
    int bad = 0;
    for (size_t len = 0; len < n; len++) {
        unsigned char *c = malloc(len ? len : 1);
        memcpy(c, b, len);
        mt_safetensors *s = NULL;
        mt_status st = mt_safetensors_open_memory(c, len, "prefix", &s);
        if (st == MT_OK || !mt_last_error()[0]) bad++;
        mt_safetensors_close(s);
        free(c);
    }
    CHECK(bad == 0, "%d truncated files accepted", bad);
    int accepted = 0, out_of_bounds = 0;
    for (int it = 0; it < 4000; it++) {
        unsigned char *c = malloc(n);
        memcpy(c, b, n);
        int flips = 1 + (int)(rng() % 3);
        for (int k = 0; k < flips; k++) {
            size_t at = (size_t)(rng() % (8 + 200)); // mostly the length and the JSON
            if (at >= n) at = n - 1;
            c[at] = (unsigned char)rng();
        }
        mt_safetensors *s = NULL;
        if (mt_safetensors_open_memory(c, n, "flip", &s) == MT_OK) {
            accepted++;
            for (int64_t i = 0; i < mt_safetensors_n_tensors(s); i++) {
                const mt_st_tensor *t = mt_safetensors_tensor_at(s, i);
                const unsigned char *p = t->t.data;
                if (p < c || p + t->nbytes > c + n) out_of_bounds++;
            }
            mt_safetensors_close(s);
        } else {
            CHECK(mt_last_error()[0] != 0, "failure without a message");
        }
        free(c);
    }
    CHECK(out_of_bounds == 0, "%d tensors outside the buffer", out_of_bounds);
    printf("    4000 mutated files: %d still valid (flips in padding or values), all bounded\n", accepted);
    free(b);
}

static int dump(int argc, char **argv) {
    int rc = 0;
    for (int i = 0; i < argc; i++) {
        mt_safetensors *s;
        if (mt_safetensors_open(argv[i], &s) != MT_OK) {
            printf("%s: error: %s\n", argv[i], mt_last_error());
            rc = 1;
            continue;
        }
        printf("%s: %lld tensors, %zu bytes\n", argv[i], (long long)mt_safetensors_n_tensors(s),
               mt_safetensors_file_size(s));
        for (int64_t k = 0; k < mt_safetensors_n_tensors(s); k++) {
            const mt_st_tensor *t = mt_safetensors_tensor_at(s, k);
            printf("  %-48s %-4s ne=[%lld, %lld, %lld, %lld] offset %llu\n", t->name,
                   mt_dtype_name(t->t.dtype), (long long)t->t.ne[0], (long long)t->t.ne[1],
                   (long long)t->t.ne[2], (long long)t->t.ne[3], (unsigned long long)t->offset);
        }
        mt_safetensors_close(s);
    }
    return rc;
}

// Loads a Hugging Face folder with mt_load_hf and prints what it read as one JSON object (for
// tests/check_hf.py); on failure prints "error: <message>" and exits 1.
static int hf_source(const char *dir) {
    mt_model_source s;
    if (mt_load_hf(dir, &s) != MT_OK) {
        printf("error: %s\n", mt_last_error());
        return 1;
    }
    const mt_qwen2_config *c = &s.config;
    printf("{\"n_vocab\": %d, \"n_embd\": %d, \"n_layer\": %d, \"n_head\": %d, \"n_head_kv\": %d, "
           "\"head_dim\": %d, \"n_ff\": %d, \"n_ctx_train\": %d, \"rms_eps\": %.9g, \"rope_base\": %.9g, "
           "\"tied_output\": %s, \"bos_id\": %d, \"eos_ids\": [",
           c->n_vocab, c->n_embd, c->n_layer, c->n_head, c->n_head_kv, c->head_dim, c->n_ff, c->n_ctx_train,
           (double)c->rms_eps, (double)c->rope_base, c->tied_output ? "true" : "false", c->bos_id);
    for (int i = 0; i < c->n_eos; i++) printf(i ? ", %d" : "%d", c->eos_ids[i]);
    const mt_sampler_params *g = &s.gen;
    printf("], \"temperature\": %.9g, \"top_k\": %d, \"top_p\": %.9g, \"min_p\": %.9g, "
           "\"repeat_penalty\": %.9g, \"tokenizer_n_vocab\": %d, \"chat_template\": %s, "
           "\"weight_bytes\": %zu, \"file_bytes\": %zu, \"n_mappings\": %d, \"dtype_wq\": \"%s\", "
           "\"dtype_attn_norm\": \"%s\", \"output_is_embd\": %s}\n",
           (double)g->temperature, g->top_k, (double)g->top_p, (double)g->min_p, (double)g->repeat_penalty,
           mt_tokenizer_n_vocab(s.tokenizer), s.chat_template ? "true" : "false", s.weight_bytes,
           s.file_bytes, s.n_mappings, mt_dtype_name(s.weights.layers[0].wq.dtype),
           mt_dtype_name(s.weights.layers[0].attn_norm.dtype),
           s.weights.output.data == s.weights.tok_embd.data ? "true" : "false");
    mt_model_source_free(&s);
    return 0;
}

int main(int argc, char **argv) {
    if (argc >= 2 && !strcmp(argv[1], "--dump")) return dump(argc - 2, argv + 2);
    if (argc == 3 && !strcmp(argv[1], "--hf-source")) return hf_source(argv[2]);
    if (argc >= 3 && !strcmp(argv[1], "--corpus")) corpus_dir = argv[2];
    make_tmpdir();
    RUN(test_corpus);
    RUN(test_valid_memory);
    if (tmpdir[0]) {
        RUN(test_valid_file);
        RUN(test_dir);
    } else {
        SKIP("test_valid_file", "cannot create a temporary folder");
        SKIP("test_dir", "cannot create a temporary folder");
    }
    RUN(test_mutations);
    rm_tmpdir();
    return th_summary();
}
