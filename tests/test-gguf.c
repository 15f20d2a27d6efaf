// GGUF reader tests: the generated valid file key by key and tensor by tensor, accessor type errors, the
// malformed-file corpus (each must fail with the expected status and a message naming the problem), every
// prefix truncation and every single-byte corruption of the valid file, and the real model when present.
//
//   test-gguf [fixtures-dir]     (default tests/fixtures/bad-gguf, written by tests/gen_bad_gguf.py)
#include <dirent.h>
#include <math.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include "core/gguf.h"
#include "harness.h"

static const char *fixtures = "tests/fixtures/bad-gguf";
static const char *real_model = "models/qwen2.5-coder-0.5b-instruct-q4_k_m.gguf";

// Reads a whole file into an exact-size allocation, so ASan flags any read past its end.
static uint8_t *read_all(const char *path, size_t *size) {
    FILE *f = fopen(path, "rb");
    if (!f) return NULL;
    fseek(f, 0, SEEK_END);
    long n = ftell(f);
    fseek(f, 0, SEEK_SET);
    uint8_t *buf = malloc(n > 0 ? (size_t)n : 1);
    if (buf && n > 0 && fread(buf, 1, (size_t)n, f) != (size_t)n) {
        free(buf);
        buf = NULL;
    }
    fclose(f);
    *size = (size_t)n;
    return buf;
}

static bool str_is(mt_str s, const char *want) {
    return s.len == strlen(want) && memcmp(s.ptr, want, s.len) == 0;
}

// Reads every key and tensor through the accessors; returns false if anything points outside [base, end).
static bool walk(const mt_gguf *g, const uint8_t *base, size_t size) {
    bool ok = true;
    const uint8_t *end = base + size;
    for (int64_t i = 0; i < mt_gguf_n_kv(g); i++) {
        mt_str k = mt_gguf_key(g, i);
        if ((const uint8_t *)k.ptr < base || k.len > (size_t)(end - (const uint8_t *)k.ptr)) ok = false;
        mt_gguf_type et;
        uint64_t n;
        if (mt_gguf_get_arr(g, i, &et, &n) == MT_OK && et == MT_GGUF_STRING) {
            for (uint64_t j = 0; j < n; j++) {
                mt_str s;
                if (mt_gguf_get_arr_str(g, i, j, &s) != MT_OK)
                    ok = false;
                else if ((const uint8_t *)s.ptr < base || s.len > (size_t)(end - (const uint8_t *)s.ptr))
                    ok = false;
            }
        }
        mt_str s;
        if (mt_gguf_get_str(g, i, &s) == MT_OK &&
            ((const uint8_t *)s.ptr < base || s.len > (size_t)(end - (const uint8_t *)s.ptr)))
            ok = false;
    }
    for (int64_t i = 0; i < mt_gguf_n_tensors(g); i++) {
        const mt_gguf_tensor *t = mt_gguf_tensor_at(g, i);
        const uint8_t *d = t->t.data;
        if (d < base || t->nbytes > (size_t)(end - d)) ok = false;
        if (mt_gguf_tensor_by_name(g, t->name) != t) ok = false;
        if (mt_tensor_nbytes(&t->t) != t->nbytes) ok = false;
    }
    return ok;
}

// ---- the valid file: same constants as tests/gen_bad_gguf.py ----

static int64_t key(const mt_gguf *g, const char *k) {
    int64_t i = mt_gguf_find(g, k);
    CHECK(i >= 0, "key %s missing", k);
    return i;
}

static uint8_t data_byte(int ti, int j) {
    return (uint8_t)((j * 31 + ti * 17 + 7) & 0xff);
}

static void check_valid(const mt_gguf *g, size_t size) {
    CHECK(mt_gguf_version(g) == 3, "version %u", mt_gguf_version(g));
    CHECK(mt_gguf_file_size(g) == size, "size %zu", mt_gguf_file_size(g));
    CHECK(mt_gguf_alignment(g) == 64, "alignment %llu", (unsigned long long)mt_gguf_alignment(g));
    CHECK(mt_gguf_n_kv(g) == 24, "n_kv %lld", (long long)mt_gguf_n_kv(g));
    CHECK(mt_gguf_n_tensors(g) == 4, "n_tensors %lld", (long long)mt_gguf_n_tensors(g));
    CHECK(mt_gguf_find(g, "general.nope") == -1, "absent key found");
    CHECK(mt_gguf_find(g, "general") == -1, "prefix of a key found");

    mt_str s;
    CHECK(mt_gguf_get_str(g, key(g, "general.architecture"), &s) == MT_OK && str_is(s, "qwen2"), "arch");
    CHECK(mt_gguf_get_str(g, key(g, "general.name"), &s) == MT_OK && str_is(s, "tiny-test"), "name");
    CHECK(mt_gguf_get_str(g, key(g, "test.empty_str"), &s) == MT_OK && s.len == 0, "empty string");
    CHECK(mt_gguf_get_str(g, key(g, "tokenizer.ggml.model"), &s) == MT_OK && str_is(s, "gpt2"), "model");
    CHECK(mt_gguf_key(g, 0).len == strlen("general.architecture"), "first key");
    CHECK(mt_gguf_kv_type(g, key(g, "test.i8")) == MT_GGUF_I8, "type of test.i8");

    uint32_t u32 = 0;
    CHECK(mt_gguf_get_u32(g, key(g, "qwen2.block_count"), &u32) == MT_OK && u32 == 2, "block_count %u", u32);
    CHECK(mt_gguf_get_u32(g, key(g, "qwen2.context_length"), &u32) == MT_OK && u32 == 128, "ctx %u", u32);
    CHECK(mt_gguf_get_u32(g, key(g, "qwen2.embedding_length"), &u32) == MT_OK && u32 == 64, "embd %u", u32);
    CHECK(mt_gguf_get_u32(g, key(g, "test.u8"), &u32) == MT_OK && u32 == 200, "u8 %u", u32);
    CHECK(mt_gguf_get_u32(g, key(g, "test.u16"), &u32) == MT_OK && u32 == 60000, "u16 %u", u32);
    int64_t i64 = 0;
    CHECK(mt_gguf_get_i64(g, key(g, "test.i8"), &i64) == MT_OK && i64 == -100, "i8 %lld", (long long)i64);
    CHECK(mt_gguf_get_i64(g, key(g, "test.i16"), &i64) == MT_OK && i64 == -30000, "i16 %lld", (long long)i64);
    CHECK(mt_gguf_get_i64(g, key(g, "test.i32"), &i64) == MT_OK && i64 == -2000000000, "i32 %lld",
          (long long)i64);
    CHECK(mt_gguf_get_i64(g, key(g, "test.i64"), &i64) == MT_OK && i64 == -(1ll << 40), "i64 %lld",
          (long long)i64);
    uint64_t u64 = 0;
    CHECK(mt_gguf_get_u64(g, key(g, "test.u64"), &u64) == MT_OK && u64 == (1ull << 40) + 5, "u64");
    CHECK(mt_gguf_get_i64(g, key(g, "test.u64"), &i64) == MT_OK && i64 == (1ll << 40) + 5, "u64 as i64");
    float f = 0;
    CHECK(mt_gguf_get_f32(g, key(g, "qwen2.rope.freq_base"), &f) == MT_OK && f == 1000000.0f, "rope %g", f);
    CHECK(mt_gguf_get_f32(g, key(g, "qwen2.attention.layer_norm_rms_epsilon"), &f) == MT_OK && f == 1e-6f,
          "eps %g", f);
    CHECK(mt_gguf_get_f32(g, key(g, "test.f64"), &f) == MT_OK && f == 3.25f, "f64 %g", f);
    bool b = false;
    CHECK(mt_gguf_get_bool(g, key(g, "test.bool"), &b) == MT_OK && b, "bool");

    mt_gguf_type et;
    uint64_t n = 0;
    static const char *tokens[] = {"a", "b", "hello", "<|im_end|>", "\xc3\xa9t\xc3\xa9"};
    int64_t tk = key(g, "tokenizer.ggml.tokens");
    CHECK(mt_gguf_get_arr(g, tk, &et, &n) == MT_OK && et == MT_GGUF_STRING && n == 5, "tokens array");
    for (uint64_t j = 0; j < 5; j++)
        CHECK(mt_gguf_get_arr_str(g, tk, j, &s) == MT_OK && str_is(s, tokens[j]), "token %llu",
              (unsigned long long)j);
    CHECK(mt_gguf_get_arr_str(g, tk, 5, &s) == MT_ERR_RANGE, "token index 5 accepted");
    const void *data = NULL;
    int64_t tt = key(g, "tokenizer.ggml.token_type");
    CHECK(mt_gguf_get_arr(g, tt, &et, &n) == MT_OK && et == MT_GGUF_I32 && n == 5, "token_type array");
    CHECK(mt_gguf_get_arr_data(g, tt, &data) == MT_OK, "token_type data");
    static const int32_t types[] = {1, 1, 1, 3, 1};
    for (int j = 0; j < 5 && data; j++) {
        int32_t v;
        memcpy(&v, (const char *)data + 4 * j, 4);
        CHECK(v == types[j], "token_type[%d] = %d", j, v);
    }
    int64_t af = key(g, "test.arr_f32");
    static const float fl[] = {0.5f, -1.5f, 2.0f};
    CHECK(mt_gguf_get_arr(g, af, &et, &n) == MT_OK && et == MT_GGUF_F32 && n == 3, "f32 array");
    CHECK(mt_gguf_get_arr_data(g, af, &data) == MT_OK, "f32 array data");
    for (int j = 0; j < 3 && data; j++) {
        float v;
        memcpy(&v, (const char *)data + 4 * j, 4);
        CHECK(v == fl[j], "arr_f32[%d] = %g", j, v);
    }
    CHECK(mt_gguf_get_arr(g, key(g, "test.nested"), &et, &n) == MT_OK && et == MT_GGUF_ARRAY && n == 2,
          "nested");
    CHECK(mt_gguf_get_arr(g, key(g, "test.empty_arr"), &et, &n) == MT_OK && et == MT_GGUF_U32 && n == 0,
          "empty");

    // Tensors: names, dtypes, shapes, offsets, contents.
    static const struct {
        const char *name;
        mt_dtype dtype;
        int ndim;
        int64_t ne0, ne1;
        uint64_t nbytes;
    } want[] = {
        {"token_embd.weight", MT_F32, 2, 8, 16, 512},
        {"blk.0.attn_q.weight", MT_F16, 2, 16, 3, 96},
        {"blk.0.ffn_down.weight", MT_Q8_0, 2, 64, 2, 136},
        {"output.weight", MT_Q4_K, 2, 256, 1, 144},
    };
    for (int i = 0; i < 4; i++) {
        const mt_gguf_tensor *t = mt_gguf_tensor_at(g, i);
        CHECK(t && strcmp(t->name, want[i].name) == 0, "tensor %d name", i);
        if (!t) continue;
        CHECK(mt_gguf_tensor_by_name(g, want[i].name) == t, "lookup of %s", want[i].name);
        CHECK(t->t.dtype == want[i].dtype && t->t.ndim == want[i].ndim, "%s dtype/rank", t->name);
        CHECK(t->t.ne[0] == want[i].ne0 && t->t.ne[1] == want[i].ne1 && t->t.ne[2] == 1, "%s shape", t->name);
        CHECK(t->nbytes == want[i].nbytes && mt_tensor_nbytes(&t->t) == want[i].nbytes, "%s nbytes %llu",
              t->name, (unsigned long long)t->nbytes);
        CHECK(t->offset % 64 == 0, "%s offset %llu", t->name, (unsigned long long)t->offset);
        CHECK(t->t.name && strcmp(t->t.name, want[i].name) == 0, "%s tensor name", t->name);
        CHECK(mt_tensor_is_contiguous(&t->t), "%s contiguous", t->name);
        const uint8_t *d = t->t.data;
        int bad = -1;
        for (int j = 0; j < (int)t->nbytes; j++) {
            if (i == 0) {
                float v;
                memcpy(&v, d + 4 * (j / 4), 4);
                if (v != (float)((j / 4 * 7) % 13) - 6.0f + 0.25f) bad = j;
            } else if (d[j] != data_byte(i, j)) {
                bad = j;
            }
        }
        CHECK(bad < 0, "%s data differs at byte %d", t->name, bad);
    }
    // Offsets as laid out by the generator (not in info order): output, token_embd, ffn_down, attn_q.
    const mt_gguf_tensor *t0 = mt_gguf_tensor_at(g, 0), *t3 = mt_gguf_tensor_at(g, 3);
    if (t0 && t3)
        CHECK(t3->offset == 0 && t0->offset == 192, "offsets %llu %llu", (unsigned long long)t3->offset,
              (unsigned long long)t0->offset);
    CHECK(mt_gguf_tensor_at(g, 4) == NULL && mt_gguf_tensor_at(g, -1) == NULL, "tensor index out of range");
    CHECK(mt_gguf_tensor_by_name(g, "token_embd") == NULL, "prefix of a tensor name found");
}

static void test_valid_file(void) {
    char path[1024];
    snprintf(path, sizeof path, "%s/valid.gguf", fixtures);
    mt_gguf *g = NULL;
    mt_status st = mt_gguf_open(path, &g);
    CHECK(st == MT_OK, "open %s: %s", path, mt_last_error());
    if (st != MT_OK) return;
    size_t size = 0;
    uint8_t *buf = read_all(path, &size);
    check_valid(g, size);
    mt_gguf_close(g);
    CHECK(buf != NULL, "read %s", path);
    if (!buf) return;
    st = mt_gguf_open_memory(buf, size, &g);
    CHECK(st == MT_OK, "open_memory: %s", mt_last_error());
    if (st == MT_OK) {
        check_valid(g, size);
        CHECK(walk(g, buf, size), "walk");
        mt_gguf_close(g);
    }
    free(buf);
}

static void test_accessor_errors(void) {
    char path[1024];
    snprintf(path, sizeof path, "%s/valid.gguf", fixtures);
    mt_gguf *g = NULL;
    if (mt_gguf_open(path, &g) != MT_OK) {
        CHECK(0, "open %s: %s", path, mt_last_error());
        return;
    }
    uint32_t u32 = 7;
    mt_str s;
    float f;
    bool b;
    int64_t i64;
    uint64_t u64;
    mt_gguf_type et;
    const void *p;
    CHECK(mt_gguf_get_u32(g, key(g, "general.architecture"), &u32) == MT_ERR_FORMAT, "string as u32");
    CHECK(strstr(mt_last_error(), "general.architecture") && strstr(mt_last_error(), "string"), "message: %s",
          mt_last_error());
    CHECK(u32 == 7, "output written on failure");
    CHECK(mt_gguf_get_u32(g, key(g, "test.i8"), &u32) == MT_ERR_FORMAT, "negative as u32");
    CHECK(strstr(mt_last_error(), "-100"), "message: %s", mt_last_error());
    CHECK(mt_gguf_get_u32(g, key(g, "test.u64"), &u32) == MT_ERR_FORMAT, "2^40 as u32");
    CHECK(mt_gguf_get_u64(g, key(g, "test.i64"), &u64) == MT_ERR_FORMAT, "negative as u64");
    CHECK(mt_gguf_get_i64(g, key(g, "test.f64"), &i64) == MT_ERR_FORMAT, "f64 as integer");
    CHECK(mt_gguf_get_u32(g, key(g, "test.bool"), &u32) == MT_ERR_FORMAT, "bool as integer");
    CHECK(mt_gguf_get_f32(g, key(g, "test.u8"), &f) == MT_ERR_FORMAT, "u8 as f32");
    CHECK(mt_gguf_get_bool(g, key(g, "test.u8"), &b) == MT_ERR_FORMAT, "u8 as bool");
    CHECK(mt_gguf_get_str(g, key(g, "tokenizer.ggml.tokens"), &s) == MT_ERR_FORMAT, "array as string");
    CHECK(mt_gguf_get_arr(g, key(g, "general.name"), &et, &u64) == MT_ERR_FORMAT, "string as array");
    CHECK(mt_gguf_get_arr_str(g, key(g, "tokenizer.ggml.token_type"), 0, &s) == MT_ERR_FORMAT,
          "i32 array as strings");
    CHECK(strstr(mt_last_error(), "array of i32"), "message: %s", mt_last_error());
    CHECK(mt_gguf_get_arr_data(g, key(g, "tokenizer.ggml.tokens"), &p) == MT_ERR_FORMAT,
          "string array as data");
    CHECK(mt_gguf_get_arr_data(g, key(g, "test.nested"), &p) == MT_ERR_FORMAT, "nested array as data");
    CHECK(mt_gguf_get_u32(g, -1, &u32) == MT_ERR_FORMAT, "missing key index");
    CHECK(mt_gguf_get_u32(g, 24, &u32) == MT_ERR_FORMAT, "key index past the end");
    CHECK(mt_gguf_u32_or(g, "qwen2.nope", 42, &u32) == MT_OK && u32 == 42, "u32_or default");
    CHECK(mt_gguf_u32_or(g, "qwen2.block_count", 42, &u32) == MT_OK && u32 == 2, "u32_or present");
    CHECK(mt_gguf_u32_or(g, "general.name", 42, &u32) == MT_ERR_FORMAT, "u32_or wrong type");
    CHECK(mt_gguf_f32_or(g, "qwen2.nope", 0.5f, &f) == MT_OK && f == 0.5f, "f32_or default");
    CHECK(mt_gguf_f32_or(g, "test.f64", 0.5f, &f) == MT_OK && f == 3.25f, "f32_or present");
    CHECK(mt_gguf_f32_or(g, "test.bool", 0.5f, &f) == MT_ERR_FORMAT, "f32_or wrong type");
    mt_gguf_close(g);

    CHECK(mt_gguf_open("tests/fixtures/bad-gguf/does-not-exist.gguf", &g) == MT_ERR_IO && g == NULL,
          "missing file");
    CHECK(strstr(mt_last_error(), "does-not-exist.gguf"), "message: %s", mt_last_error());
    CHECK(mt_gguf_open(fixtures, &g) == MT_ERR_IO, "directory opened as a file");
    CHECK(mt_gguf_open_memory(NULL, 10, &g) == MT_ERR_INVALID, "NULL buffer");
}

// ---- the malformed corpus ----

static const char *status_str(mt_status s) {
    switch (s) {
    case MT_OK:
        return "MT_OK";
    case MT_ERR_IO:
        return "MT_ERR_IO";
    case MT_ERR_FORMAT:
        return "MT_ERR_FORMAT";
    case MT_ERR_UNSUPPORTED:
        return "MT_ERR_UNSUPPORTED";
    case MT_ERR_INVALID:
        return "MT_ERR_INVALID";
    case MT_ERR_NOMEM:
        return "MT_ERR_NOMEM";
    case MT_ERR_RANGE:
        return "MT_ERR_RANGE";
    case MT_ERR_INTERNAL:
        return "MT_ERR_INTERNAL";
    }
    return "?";
}

static char case_name[700];

// Opens one malformed file from disk (mmap) and from an exact-size buffer; both must fail the same way.
static void check_bad(const char *file, const char *status, const char *substring) {
    char path[1024];
    snprintf(path, sizeof path, "%s/%s", fixtures, file);
    mt_gguf *g = NULL;
    mt_status st = mt_gguf_open(path, &g);
    char msg[600];
    snprintf(msg, sizeof msg, "%s", st == MT_OK ? "(opened without an error)" : mt_last_error());
    snprintf(case_name, sizeof case_name, "bad/%s: %s", file, msg);
    CHECK(st != MT_OK && g == NULL, "%s opened", file);
    if (st == MT_OK) {
        mt_gguf_close(g);
        return;
    }
    CHECK(st == MT_ERR_FORMAT || st == MT_ERR_UNSUPPORTED || st == MT_ERR_IO, "status %s", status_str(st));
    CHECK(!strchr(msg, '\n') && strlen(msg) > strlen(path) + 8, "message '%s'", msg);
    if (status) CHECK(strcmp(status_str(st), status) == 0, "status %s, expected %s", status_str(st), status);
    if (substring) CHECK(strstr(msg, substring) != NULL, "message lacks '%s'", substring);

    size_t size = 0;
    uint8_t *buf = read_all(path, &size);
    CHECK(buf != NULL, "read %s", path);
    if (!buf) return;
    mt_status st2 = mt_gguf_open_memory(buf, size, &g);
    CHECK(st2 == st && g == NULL, "from memory: %s (%s)", status_str(st2), mt_last_error());
    CHECK(strstr(msg, mt_last_error()) != NULL, "memory message '%s' differs", mt_last_error());
    if (st2 == MT_OK) mt_gguf_close(g);
    free(buf);
}

#define MAX_BAD 256

static void test_corpus(void) {
    char path[1024];
    snprintf(path, sizeof path, "%s/expected.tsv", fixtures);
    FILE *f = fopen(path, "r");
    if (!f) {
        RUN_NAMED("bad-gguf corpus", CHECK(0, "cannot read %s", path));
        return;
    }
    static char listed[MAX_BAD][128];
    int n_listed = 0;
    char line[1024];
    while (fgets(line, sizeof line, f)) {
        line[strcspn(line, "\r\n")] = '\0';
        char *file = strtok(line, "\t"), *status = strtok(NULL, "\t"), *sub = strtok(NULL, "");
        if (!file || !status || !sub) continue;
        if (n_listed < MAX_BAD) snprintf(listed[n_listed++], sizeof listed[0], "%s", file);
        RUN_NAMED(case_name, check_bad(file, status, sub));
    }
    fclose(f);
    RUN_NAMED("corpus has at least 35 malformed files", CHECK(n_listed >= 35, "%d listed", n_listed));
    // Any other .gguf file in the folder (a fuzzer crash reproducer, say) must fail too.
    DIR *d = opendir(fixtures);
    if (!d) return;
    struct dirent *e;
    while ((e = readdir(d))) {
        size_t len = strlen(e->d_name);
        if (len < 5 || strcmp(e->d_name + len - 5, ".gguf") != 0 || strcmp(e->d_name, "valid.gguf") == 0)
            continue;
        bool seen = false;
        for (int i = 0; i < n_listed && !seen; i++) seen = strcmp(listed[i], e->d_name) == 0;
        if (!seen) RUN_NAMED(case_name, check_bad(e->d_name, NULL, "gguf:"));
    }
    closedir(d);
}

// Every prefix of the valid file is malformed and must fail cleanly from an exact-size buffer.
static void test_truncations(void) {
    char path[1024];
    snprintf(path, sizeof path, "%s/valid.gguf", fixtures);
    size_t size = 0;
    uint8_t *full = read_all(path, &size);
    CHECK(full != NULL && size > 0, "read %s", path);
    if (!full) return;
    int failures = 0;
    for (size_t n = 0; n < size; n++) {
        uint8_t *buf = malloc(n ? n : 1);
        memcpy(buf, full, n);
        mt_gguf *g = NULL;
        mt_fail(MT_OK, "%s", "");
        mt_status st = mt_gguf_open_memory(buf, n, &g);
        if ((st != MT_ERR_FORMAT || g != NULL || mt_last_error()[0] == '\0') && failures++ < 5)
            CHECK(0, "prefix of %zu bytes: %s '%s'", n, status_str(st), mt_last_error());
        if (g) mt_gguf_close(g);
        free(buf);
    }
    CHECK(failures == 0, "%d of %zu prefixes not rejected", failures, size);
    free(full);
}

// Every single-byte corruption either fails with a message or yields a file whose keys and tensors all lie
// inside the buffer (runs under ASan in tests/check_gguf_sanitized.py).
static void test_corruptions(void) {
    char path[1024];
    snprintf(path, sizeof path, "%s/valid.gguf", fixtures);
    size_t size = 0;
    uint8_t *buf = read_all(path, &size);
    CHECK(buf != NULL, "read %s", path);
    if (!buf) return;
    static const uint8_t values[] = {0x00, 0xff, 0x7f, 0x80, 0x05};
    int rejected = 0, accepted = 0, bad = 0;
    for (size_t i = 0; i < size; i++) {
        uint8_t saved = buf[i];
        for (size_t v = 0; v < sizeof values; v++) {
            if (values[v] == saved) continue;
            buf[i] = values[v];
            mt_gguf *g = NULL;
            mt_status st = mt_gguf_open_memory(buf, size, &g);
            if (st == MT_OK) {
                accepted++;
                if (!walk(g, buf, size) && bad++ < 5)
                    CHECK(0, "byte %zu = %#x: accessor outside the file", i, buf[i]);
                mt_gguf_close(g);
            } else {
                rejected++;
                if ((g != NULL || mt_last_error()[0] == '\0') && bad++ < 5)
                    CHECK(0, "byte %zu: bad failure", i);
            }
        }
        buf[i] = saved;
    }
    printf("    %d corruptions rejected, %d accepted (data bytes, values)\n", rejected, accepted);
    CHECK(rejected > 0 && accepted > 0, "rejected %d accepted %d", rejected, accepted);
    free(buf);
}

static void test_real_model(void) {
    mt_gguf *g = NULL;
    mt_status st = mt_gguf_open(real_model, &g);
    CHECK(st == MT_OK, "%s", mt_last_error());
    if (st != MT_OK) return;
    CHECK(mt_gguf_n_tensors(g) == 291, "%lld tensors", (long long)mt_gguf_n_tensors(g));
    mt_str s;
    CHECK(mt_gguf_get_str(g, key(g, "general.architecture"), &s) == MT_OK && str_is(s, "qwen2"),
          "architecture");
    uint32_t u32 = 0;
    CHECK(mt_gguf_get_u32(g, key(g, "qwen2.block_count"), &u32) == MT_OK && u32 == 24, "block_count %u", u32);
    CHECK(mt_gguf_get_u32(g, key(g, "qwen2.embedding_length"), &u32) == MT_OK && u32 == 896, "embd %u", u32);
    CHECK(mt_gguf_get_u32(g, key(g, "qwen2.attention.head_count"), &u32) == MT_OK && u32 == 14, "heads %u",
          u32);
    CHECK(mt_gguf_get_u32(g, key(g, "qwen2.attention.head_count_kv"), &u32) == MT_OK && u32 == 2, "kv %u",
          u32);
    float f = 0;
    CHECK(mt_gguf_get_f32(g, key(g, "qwen2.rope.freq_base"), &f) == MT_OK && f == 1000000.0f, "rope %g", f);
    mt_gguf_type et;
    uint64_t n = 0;
    int64_t tk = key(g, "tokenizer.ggml.tokens");
    CHECK(mt_gguf_get_arr(g, tk, &et, &n) == MT_OK && et == MT_GGUF_STRING && n == 151936, "tokens %llu",
          (unsigned long long)n);
    CHECK(mt_gguf_get_arr_str(g, tk, 0, &s) == MT_OK && str_is(s, "!"), "token 0");
    const mt_gguf_tensor *t = mt_gguf_tensor_by_name(g, "token_embd.weight");
    CHECK(t && t->t.ne[0] == 896 && t->t.ne[1] == 151936, "token_embd shape");
    t = mt_gguf_tensor_by_name(g, "output.weight");
    CHECK(t && t->t.ne[0] == 896 && t->t.ne[1] == 151936, "output.weight (untied)");
    t = mt_gguf_tensor_by_name(g, "blk.23.ffn_down.weight");
    CHECK(t && t->t.ne[0] == 4864 && t->t.ne[1] == 896, "blk.23.ffn_down shape");
    int seen[MT_DTYPE_END] = {0};
    uint64_t total = 0;
    for (int64_t i = 0; i < mt_gguf_n_tensors(g); i++) {
        t = mt_gguf_tensor_at(g, i);
        seen[t->t.dtype]++;
        total += t->nbytes;
        CHECK(mt_gguf_tensor_by_name(g, t->name) == t, "lookup %s", t->name);
    }
    CHECK(seen[MT_Q4_K] > 0 && seen[MT_Q6_K] > 0 && seen[MT_F32] > 0 && seen[MT_Q5_0] + seen[MT_Q8_0] > 0,
          "dtype mix");
    CHECK(total < mt_gguf_file_size(g) && total > mt_gguf_file_size(g) / 2, "tensor bytes %llu of %zu",
          (unsigned long long)total, mt_gguf_file_size(g));
    mt_gguf_close(g);
}

int main(int argc, char **argv) {
    if (argc > 1) fixtures = argv[1];
    RUN(test_valid_file);
    RUN(test_accessor_errors);
    test_corpus();
    RUN(test_truncations);
    RUN(test_corruptions);
    FILE *f = fopen(real_model, "rb");
    if (f) {
        fclose(f);
        RUN(test_real_model);
    } else {
        SKIP("test_real_model", "model file absent (make model)");
    }
    return th_summary();
}
