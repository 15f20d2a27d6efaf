// Tokenizer and chat template tests: a small hand-built tokenizer.json for the byte mapping, BPE order,
// pre-tokenizer splits, special tokens and the streaming detokenizer; the real model (skipped when absent)
// for known ids and round trips. `test-tokenizer --encode MODEL < lines.jsonl` is the tool mode used by
// tests/check_tokenizer.py: one JSON string per input line, one JSON array of ids per output line.
#include <cjson/cJSON.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "core/gguf.h"
#include "harness.h"
#include "model/chat.h"
#include "model/tokenizer.h"

static const char *model_path(void) {
    const char *p = getenv("METALLIC_MODEL");
    return p && *p ? p : "models/qwen2.5-coder-0.5b-instruct-q4_k_m.gguf";
}

static bool ends_with(const char *s, const char *suffix) {
    size_t n = strlen(s), m = strlen(suffix);
    return n >= m && strcmp(s + n - m, suffix) == 0;
}

static mt_status open_tokenizer(const char *path, mt_tokenizer **tok, mt_gguf **g) {
    *g = NULL;
    if (ends_with(path, ".json")) return mt_tokenizer_from_hf_json(path, tok);
    MT_TRY(mt_gguf_open(path, g));
    return mt_tokenizer_from_gguf(*g, tok);
}

// ---- the small tokenizer -------------------------------------------------------------------------------

// GPT-2 byte-to-unicode mapping, written independently of the library's version.
static unsigned mapped_cp(int b) {
    static unsigned table[256];
    static int ready;
    if (!ready) {
        int extra = 0;
        for (int i = 0; i < 256; i++) {
            bool keep = (i >= '!' && i <= '~') || (i >= 0xA1 && i <= 0xAC) || (i >= 0xAE && i <= 0xFF);
            table[i] = keep ? (unsigned)i : 256u + (unsigned)extra++;
        }
        ready = 1;
    }
    return table[b];
}

static void put_utf8(char **o, unsigned cp) {
    unsigned char *p = (unsigned char *)*o;
    if (cp < 0x80)
        *p++ = (unsigned char)cp;
    else {
        *p++ = (unsigned char)(0xC0 | (cp >> 6));
        *p++ = (unsigned char)(0x80 | (cp & 0x3F));
    }
    *o = (char *)p;
}

// Mapped form of raw bytes (at most 64).
static const char *mapped(const char *raw, char *buf) {
    char *o = buf;
    for (const unsigned char *p = (const unsigned char *)raw; *p; p++) put_utf8(&o, mapped_cp(*p));
    *o = 0;
    return buf;
}

// Ids: 0..255 single bytes (id == byte value), then the merge results below, then added tokens.
static const char *const small_merges[][2] = {
    {"l", "l"}, {"h", "e"}, {"he", "ll"}, {"hell", "o"}, {" ", " "}, {" ", "b"}, {" ", "w"}, {"w", "o"},
};
static const char *const small_added[] = {"<|im_start|>", "<|im_end|>", "<|im"};
#define N_SMALL_MERGES (int)(sizeof small_merges / sizeof small_merges[0])
#define ID_LL 256
#define ID_HE 257
#define ID_HELL 258
#define ID_HELLO 259
#define ID_SP2 260
#define ID_SPB 261
#define ID_SPW 262
#define ID_WO 263
#define ID_IM_START (256 + N_SMALL_MERGES)
#define ID_IM_END (ID_IM_START + 1)
#define ID_IM (ID_IM_START + 2)
#define ID_TOOL (ID_IM_START + 3)

static char small_path[64];

static mt_tokenizer *small_tokenizer(void) {
    if (!small_path[0]) {
        cJSON *root = cJSON_CreateObject(), *model = cJSON_AddObjectToObject(root, "model");
        cJSON_AddStringToObject(model, "type", "BPE");
        cJSON *vocab = cJSON_AddObjectToObject(model, "vocab");
        cJSON *merges = cJSON_AddArrayToObject(model, "merges");
        char buf[256], a[128], b[128];
        for (int i = 0; i < 256; i++) {
            char raw[2] = {(char)i, 0}, *o = buf;
            if (i == 0) { // NUL cannot be in a C string: write its mapped form directly
                put_utf8(&o, mapped_cp(0));
                *o = 0;
            } else
                mapped(raw, buf);
            cJSON_AddNumberToObject(vocab, buf, i);
        }
        for (int m = 0; m < N_SMALL_MERGES; m++) {
            char joined[64];
            snprintf(joined, sizeof joined, "%s%s", small_merges[m][0], small_merges[m][1]);
            cJSON_AddNumberToObject(vocab, mapped(joined, buf), 256 + m);
            // Alternate between the two merge spellings so both are parsed.
            mapped(small_merges[m][0], a);
            mapped(small_merges[m][1], b);
            if (m % 2) {
                cJSON *pair = cJSON_CreateArray();
                cJSON_AddItemToArray(pair, cJSON_CreateString(a));
                cJSON_AddItemToArray(pair, cJSON_CreateString(b));
                cJSON_AddItemToArray(merges, pair);
            } else {
                snprintf(buf, sizeof buf, "%s %s", a, b);
                cJSON_AddItemToArray(merges, cJSON_CreateString(buf));
            }
        }
        cJSON *added = cJSON_AddArrayToObject(root, "added_tokens");
        for (int i = 0; i < 4; i++) {
            cJSON *t = cJSON_CreateObject();
            cJSON_AddNumberToObject(t, "id", ID_IM_START + i);
            cJSON_AddStringToObject(t, "content", i < 3 ? small_added[i] : "<tool>");
            cJSON_AddBoolToObject(t, "special", i < 3);
            cJSON_AddItemToArray(added, t);
        }
        cJSON *pre = cJSON_AddObjectToObject(root, "pre_tokenizer");
        cJSON_AddStringToObject(pre, "type", "Sequence");
        cJSON *seq = cJSON_AddArrayToObject(pre, "pretokenizers");
        cJSON *split = cJSON_CreateObject(), *pat = cJSON_AddObjectToObject(split, "pattern");
        cJSON_AddStringToObject(split, "type", "Split");
        cJSON_AddStringToObject(pat, "Regex",
                                "(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\\r\\n\\p{L}\\p{N}]?\\p{L}+|\\p{N}| "
                                "?[^\\s\\p{L}\\p{N}]+[\\r\\n]*|\\s*[\\r\\n]+|\\s+(?!\\S)|\\s+");
        cJSON_AddItemToArray(seq, split);
        cJSON *bl = cJSON_CreateObject();
        cJSON_AddStringToObject(bl, "type", "ByteLevel");
        cJSON_AddBoolToObject(bl, "add_prefix_space", false);
        cJSON_AddBoolToObject(bl, "use_regex", false);
        cJSON_AddItemToArray(seq, bl);
        char *text = cJSON_Print(root);
        cJSON_Delete(root);
        snprintf(small_path, sizeof small_path, "/tmp/mt-test-tokenizer-%d.json", (int)getpid());
        FILE *f = fopen(small_path, "w");
        if (!f || fputs(text, f) < 0) MT_ABORT("cannot write %s", small_path);
        fclose(f);
        free(text);
    }
    mt_tokenizer *t = NULL;
    if (mt_tokenizer_from_hf_json(small_path, &t) != MT_OK) MT_ABORT("small tokenizer: %s", mt_last_error());
    return t;
}

// Encodes s and compares with the expected ids (terminated by -1).
static void expect_ids(const mt_tokenizer *t, const char *s, size_t len, bool special, const int32_t *want) {
    int32_t *ids = NULL;
    size_t n = 0;
    CHECK(mt_tokenizer_encode(t, s, len, special, &ids, &n) == MT_OK, "%s", mt_last_error());
    size_t m = 0;
    while (want[m] >= 0) m++;
    bool same = n == m;
    for (size_t i = 0; same && i < n; i++) same = ids[i] == want[i];
    if (!same) {
        printf("    ids for \"%.*s\":", (int)len, s);
        for (size_t i = 0; i < n; i++) printf(" %d", ids[i]);
        printf(" (want");
        for (size_t i = 0; i < m; i++) printf(" %d", want[i]);
        printf(")\n");
    }
    CHECK(same, "ids differ");
    free(ids);
}

static void test_byte_map_round_trip(void) {
    mt_tokenizer *t = small_tokenizer();
    CHECK(mt_tokenizer_n_vocab(t) == ID_TOOL + 1, "n_vocab %d", mt_tokenizer_n_vocab(t));
    for (int b = 0; b < 256; b++) {
        char c = (char)b;
        int32_t *ids = NULL;
        size_t n = 0;
        CHECK(mt_tokenizer_encode(t, &c, 1, true, &ids, &n) == MT_OK, "byte %d", b);
        CHECK(n == 1 && ids[0] == b, "byte 0x%02x -> %zu ids, first %d", b, n, n ? ids[0] : -1);
        const char *bytes;
        size_t len;
        CHECK(mt_tokenizer_token_bytes(t, b, &bytes, &len) == MT_OK && len == 1 &&
                  (unsigned char)bytes[0] == b,
              "token %d bytes", b);
        free(ids);
    }
    const char *bytes;
    size_t len;
    CHECK(mt_tokenizer_token_bytes(t, ID_SPW, &bytes, &len) == MT_OK && len == 2 &&
              memcmp(bytes, " w", 2) == 0,
          "merged token keeps raw bytes");
    CHECK(mt_tokenizer_token_bytes(t, -1, &bytes, &len) == MT_ERR_RANGE, "negative id");
    CHECK(mt_tokenizer_token_bytes(t, ID_TOOL + 1, &bytes, &len) == MT_ERR_RANGE, "id past the vocabulary");
    mt_tokenizer_free(t);
}

static void test_bpe_order(void) {
    mt_tokenizer *t = small_tokenizer();
    expect_ids(t, "hello", 5, true, (const int32_t[]){ID_HELLO, -1});
    // "l l" ties resolve leftmost first: h e [ll] [ll], then he, then hell.
    expect_ids(t, "hellll", 6, true, (const int32_t[]){ID_HELL, ID_LL, -1});
    expect_ids(t, "lll", 3, true, (const int32_t[]){ID_LL, 'l', -1});
    expect_ids(t, "wo", 2, true, (const int32_t[]){ID_WO, -1});
    // " w" (rank 6) is merged before "w o" (rank 7).
    expect_ids(t, " wo", 3, true, (const int32_t[]){ID_SPW, 'o', -1});
    mt_tokenizer_free(t);
}

static void test_pre_tokenizer_splits(void) {
    mt_tokenizer *t = small_tokenizer();
    // "a", " ", " b": the last space of a run goes with the word (\s+(?!\S) then [^..]?\p{L}+).
    expect_ids(t, "a  b", 4, true, (const int32_t[]){'a', ' ', ID_SPB, -1});
    // "  " at the end of the text is one piece.
    expect_ids(t, "a  ", 3, true, (const int32_t[]){'a', ID_SP2, -1});
    // A run ending in a newline stays whole; "  b" after it splits as " ", " b".
    expect_ids(t, "  \n  b", 6, true, (const int32_t[]){ID_SP2, '\n', ' ', ID_SPB, -1});
    // Contractions split off: "he'll" -> "he", "'ll"; " world" keeps its space; digits are single.
    expect_ids(t, "he'll world 12", 14, true,
               (const int32_t[]){ID_HE, '\'', ID_LL, ID_SPW, 'o', 'r', 'l', 'd', ' ', '1', '2', -1});
    // Punctuation before a word joins it ("(two" is one piece); a space before punctuation joins it.
    expect_ids(t, "(two !?", 7, true, (const int32_t[]){'(', 't', ID_WO, ' ', '!', '?', -1});
    // Apostrophe forms outside the contraction list: "'x" is punctuation + letter in one piece.
    expect_ids(t, "'wo", 3, true, (const int32_t[]){'\'', ID_WO, -1});
    mt_tokenizer_free(t);
}

static void test_special_tokens(void) {
    mt_tokenizer *t = small_tokenizer();
    CHECK(mt_tokenizer_find(t, "<|im_end|>") == ID_IM_END, "find im_end");
    CHECK(mt_tokenizer_find(t, "<tool>") == ID_TOOL, "find user-defined");
    CHECK(mt_tokenizer_find(t, "hello") == ID_HELLO, "find normal token by its bytes");
    CHECK(mt_tokenizer_find(t, "nope!") == -1, "absent");
    CHECK(mt_tokenizer_is_special(t, ID_IM_START) && mt_tokenizer_is_special(t, ID_TOOL), "special");
    CHECK(!mt_tokenizer_is_special(t, 'a') && !mt_tokenizer_is_special(t, -5), "not special");
    // Longest match: "<|im_end|>" beats its prefix "<|im"; "<|im" alone still matches.
    const char *s = "hello<|im_end|><|im<|im_start|>";
    expect_ids(t, s, strlen(s), true, (const int32_t[]){ID_HELLO, ID_IM_END, ID_IM, ID_IM_START, -1});
    s = "a<tool>b";
    expect_ids(t, s, strlen(s), true, (const int32_t[]){'a', ID_TOOL, 'b', -1});
    // parse_special off: plain text, no special ids.
    s = "<|im_end|>";
    int32_t *ids = NULL;
    size_t n = 0;
    CHECK(mt_tokenizer_encode(t, s, strlen(s), false, &ids, &n) == MT_OK, "encode");
    CHECK(n == strlen(s), "byte-wise: %zu ids", n);
    for (size_t i = 0; i < n; i++) CHECK(!mt_tokenizer_is_special(t, ids[i]), "id %d special", ids[i]);
    free(ids);
    mt_tokenizer_free(t);
}

// Pushes ids one by one, checking each piece is whole UTF-8, and returns the concatenation.
static size_t stream(const mt_tokenizer *t, const int32_t *ids, size_t n, char *out, size_t cap,
                     bool *whole) {
    mt_detok d;
    mt_detok_init(&d, t);
    size_t o = 0;
    *whole = true;
    for (size_t i = 0; i < n; i++) {
        char piece[512];
        int k = mt_detok_push(&d, ids[i], piece, sizeof piece);
        if (k < 0 || o + (size_t)k > cap) return (size_t)-1;
        // A piece never ends inside a character: its last lead byte must be complete.
        for (int j = 0; j < k;) {
            unsigned char c = (unsigned char)piece[j];
            int len = c < 0x80 ? 1 : c >= 0xF0 ? 4 : c >= 0xE0 ? 3 : c >= 0xC0 ? 2 : 1;
            if (j + len > k) *whole = false;
            for (int q = 1; q < len && j + q < k; q++)
                if (((unsigned char)piece[j + q] & 0xC0) != 0x80) *whole = false;
            j += len;
        }
        memcpy(out + o, piece, (size_t)k);
        o += (size_t)k;
    }
    int k = mt_detok_flush(&d, out + o, cap - o);
    if (k < 0) return (size_t)-1;
    return o + (size_t)k;
}

static void test_detokenizer(void) {
    mt_tokenizer *t = small_tokenizer();
    // "👍" is F0 9F 91 8D: four byte tokens; nothing comes out until the last one.
    const unsigned char emoji[] = {0xF0, 0x9F, 0x91, 0x8D};
    mt_detok d;
    mt_detok_init(&d, t);
    char out[128];
    CHECK(mt_detok_push(&d, 'a', out, sizeof out) == 1 && out[0] == 'a', "ascii passes through");
    for (int i = 0; i < 3; i++) CHECK(mt_detok_push(&d, emoji[i], out, sizeof out) == 0, "byte %d held", i);
    CHECK(mt_detok_push(&d, emoji[3], out, sizeof out) == 4 && memcmp(out, emoji, 4) == 0,
          "emoji emitted whole");
    CHECK(mt_detok_flush(&d, out, sizeof out) == 0, "nothing left");
    // A truncated character followed by a special token: one U+FFFD, then the token text.
    CHECK(mt_detok_push(&d, 0xE4, out, sizeof out) == 0, "lead byte held");
    int k = mt_detok_push(&d, ID_IM_END, out, sizeof out);
    CHECK(k == 13 && memcmp(out, "\xEF\xBF\xBD<|im_end|>", 13) == 0, "replacement then special (%d)", k);
    // A stray continuation byte is invalid at once; a pending lead byte is replaced at flush.
    CHECK(mt_detok_push(&d, 0x80, out, sizeof out) == 3 && memcmp(out, "\xEF\xBF\xBD", 3) == 0, "stray byte");
    CHECK(mt_detok_push(&d, 0xF0, out, sizeof out) == 0, "lead held");
    CHECK(mt_detok_push(&d, 0x9F, out, sizeof out) == 0, "continuation held");
    CHECK(mt_detok_flush(&d, out, sizeof out) == 3 && memcmp(out, "\xEF\xBF\xBD", 3) == 0, "flush replaces");
    CHECK(mt_detok_push(&d, ID_TOOL + 7, out, sizeof out) == -1, "bad id");
    // Invalid input bytes encode byte-wise and stream back as replacement characters, never crash.
    const char bad[] = "ok\xFF\xC0\x80\xED\xA0\x80z";
    int32_t *ids = NULL;
    size_t n = 0;
    CHECK(mt_tokenizer_encode(t, bad, sizeof bad - 1, true, &ids, &n) == MT_OK, "encode invalid utf-8");
    CHECK(n == sizeof bad - 1, "one token per byte: %zu", n);
    for (size_t i = 0; i < n && i < sizeof bad - 1; i++)
        CHECK(ids[i] == (unsigned char)bad[i], "byte %zu", i);
    char text[256];
    bool whole;
    size_t m = stream(t, ids, n, text, sizeof text, &whole);
    CHECK(m != (size_t)-1 && whole, "stream");
    CHECK(m >= 3 && memcmp(text, "ok\xEF\xBF\xBD", 5) == 0 && text[m - 1] == 'z', "lossy decode");
    free(ids);
    mt_tokenizer_free(t);
}

static void test_bad_json(void) {
    char path[64];
    snprintf(path, sizeof path, "/tmp/mt-test-tokenizer-bad-%d.json", (int)getpid());
    static const char *const cases[][2] = {
        {"{", "not valid JSON"},
        {"{\"model\": {\"vocab\": {}, \"merges\": []}}", "pre_tokenizer"},
        {"{\"model\": {\"type\": \"WordPiece\", \"vocab\": {\"a\": 0}, \"merges\": []}}", "WordPiece"},
        {"{\"model\": {\"vocab\": {\"a\": -3}, \"merges\": []}, \"pre_tokenizer\": {\"type\": \"ByteLevel\", "
         "\"use_regex\": false}}",
         "model.vocab"},
        {"{\"model\": {\"vocab\": {\"a\": 0}, \"merges\": []}, \"pre_tokenizer\": {\"type\": \"ByteLevel\", "
         "\"use_regex\": false}}",
         "byte 0x00"},
        {"{\"model\": {\"vocab\": {}, \"merges\": []}, \"pre_tokenizer\": {\"type\": \"ByteLevel\", "
         "\"use_regex\": true}}",
         "use_regex"},
        {"{\"model\": {\"vocab\": {}, \"merges\": []}, \"pre_tokenizer\": {\"type\": \"ByteLevel\", "
         "\"use_regex\": false}, \"added_tokens\": [{\"id\": 0, \"content\": \"<s>\", \"lstrip\": true}]}",
         "lstrip"},
        {"{\"model\": {\"vocab\": {}, \"merges\": []}, \"pre_tokenizer\": {\"type\": \"Split\", "
         "\"pattern\": {\"Regex\": \"\\\\s+\"}}}",
         "Split pattern"},
    };
    for (size_t i = 0; i < sizeof cases / sizeof cases[0]; i++) {
        FILE *f = fopen(path, "w");
        CHECK(f != NULL, "open");
        if (!f) return;
        fputs(cases[i][0], f);
        fclose(f);
        mt_tokenizer *t = NULL;
        mt_status st = mt_tokenizer_from_hf_json(path, &t);
        CHECK(st != MT_OK && t == NULL, "case %zu accepted", i);
        CHECK(strstr(mt_last_error(), cases[i][1]) != NULL, "case %zu: message \"%s\" lacks \"%s\"", i,
              mt_last_error(), cases[i][1]);
    }
    remove(path);
    mt_tokenizer *t = NULL;
    CHECK(mt_tokenizer_from_hf_json("/nonexistent/tokenizer.json", &t) == MT_ERR_IO, "missing file");
}

// ---- GGUF metadata -------------------------------------------------------------------------------------

typedef struct gbuf {
    unsigned char data[1 << 16];
    size_t n;
} gbuf;

static void g_raw(gbuf *b, const void *p, size_t n) {
    MT_ASSERT(b->n + n <= sizeof b->data);
    memcpy(b->data + b->n, p, n);
    b->n += n;
}
static void g_u32(gbuf *b, uint32_t v) {
    g_raw(b, &v, 4);
}
static void g_u64(gbuf *b, uint64_t v) {
    g_raw(b, &v, 8);
}
static void g_str(gbuf *b, const char *s) {
    g_u64(b, strlen(s));
    g_raw(b, s, strlen(s));
}
static void g_kv_str(gbuf *b, const char *key, const char *v) {
    g_str(b, key);
    g_u32(b, MT_GGUF_STRING);
    g_str(b, v);
}

// A GGUF v3 file with no tensors and a 256-byte-token vocabulary plus "h e" -> "he".
static size_t small_gguf(gbuf *b, const char *model, const char *pre, bool bad_merge) {
    b->n = 0;
    g_raw(b, "GGUF", 4);
    g_u32(b, 3);
    g_u64(b, 0);
    g_u64(b, 5);
    g_kv_str(b, "tokenizer.ggml.model", model);
    g_kv_str(b, "tokenizer.ggml.pre", pre);
    char buf[16];
    g_str(b, "tokenizer.ggml.tokens");
    g_u32(b, MT_GGUF_ARRAY);
    g_u32(b, MT_GGUF_STRING);
    g_u64(b, 258);
    for (int i = 0; i < 256; i++) {
        char *o = buf;
        put_utf8(&o, mapped_cp(i));
        *o = 0;
        g_str(b, buf);
    }
    g_str(b, "he");
    g_str(b, "<|end|>");
    g_str(b, "tokenizer.ggml.token_type");
    g_u32(b, MT_GGUF_ARRAY);
    g_u32(b, MT_GGUF_I32);
    g_u64(b, 258);
    for (int i = 0; i < 258; i++) g_u32(b, i == 257 ? MT_TOKEN_CONTROL : MT_TOKEN_NORMAL);
    g_str(b, "tokenizer.ggml.merges");
    g_u32(b, MT_GGUF_ARRAY);
    g_u32(b, MT_GGUF_STRING);
    g_u64(b, 1);
    g_str(b, bad_merge ? "h q" : "h e");
    return b->n;
}

static void test_gguf_metadata(void) {
    static gbuf b;
    mt_gguf *g = NULL;
    mt_tokenizer *t = NULL;
    small_gguf(&b, "gpt2", "qwen2", false);
    CHECK(mt_gguf_open_memory(b.data, b.n, &g) == MT_OK, "open: %s", mt_last_error());
    if (!g) return;
    CHECK(mt_tokenizer_from_gguf(g, &t) == MT_OK, "load: %s", mt_last_error());
    mt_gguf_close(g);
    if (t) {
        expect_ids(t, "hehe<|end|>", 11, true, (const int32_t[]){256, 256, 257, -1});
        CHECK(mt_tokenizer_is_special(t, 257) && !mt_tokenizer_is_special(t, 256), "types");
        mt_tokenizer_free(t);
    }
    static const struct {
        const char *model, *pre;
        bool bad_merge;
        mt_status want;
        const char *msg;
    } cases[] = {
        {"llama", "qwen2", false, MT_ERR_UNSUPPORTED, "\"llama\""},
        {"gpt2", "llama-bpe", false, MT_ERR_UNSUPPORTED, "\"llama-bpe\""},
        {"gpt2", "qwen2", true, MT_ERR_FORMAT, "merge 0"},
    };
    for (size_t i = 0; i < sizeof cases / sizeof cases[0]; i++) {
        small_gguf(&b, cases[i].model, cases[i].pre, cases[i].bad_merge);
        g = NULL;
        t = NULL;
        CHECK(mt_gguf_open_memory(b.data, b.n, &g) == MT_OK, "open %zu", i);
        if (!g) continue;
        mt_status st = mt_tokenizer_from_gguf(g, &t);
        CHECK(st == cases[i].want && t == NULL, "case %zu: status %s", i, mt_status_name(st));
        CHECK(strstr(mt_last_error(), cases[i].msg) != NULL, "case %zu: \"%s\" lacks %s", i, mt_last_error(),
              cases[i].msg);
        mt_gguf_close(g);
    }
}

// ---- chat template -------------------------------------------------------------------------------------

// Renders and compares with the exact expected prompt.
static void expect_render(const mt_chat_msg *msgs, int n, const char *sys, bool gen, const char *want) {
    char *out = NULL;
    CHECK(mt_chat_render(msgs, n, sys, gen, &out) == MT_OK, "render: %s", mt_last_error());
    const char *got = out ? out : "(null)";
    CHECK(strcmp(got, want) == 0, "got \"%s\"", got);
    free(out);
}

static void test_chat_render(void) {
    const char *sys = mt_chat_default_system(NULL);
    CHECK(strcmp(sys, "You are Qwen, created by Alibaba Cloud. You are a helpful assistant.") == 0, "%s",
          sys);
    mt_chat_msg msgs[] = {{"user", "Hi there"}, {"assistant", "Hello!"}, {"user", "Write \"x\"\n"}};
    expect_render(msgs, 3, sys, true,
                  "<|im_start|>system\nYou are Qwen, created by Alibaba Cloud. You are a helpful "
                  "assistant.<|im_end|>\n<|im_start|>user\nHi there<|im_end|>\n<|im_start|>assistant\n"
                  "Hello!<|im_end|>\n<|im_start|>user\nWrite \"x\"\n<|im_end|>\n<|im_start|>assistant\n");
    mt_chat_msg with_sys[] = {{"system", "Be brief."}, {"user", "2+2?"}};
    expect_render(with_sys, 2, sys, false,
                  "<|im_start|>system\nBe brief.<|im_end|>\n<|im_start|>user\n2+2?<|im_end|>\n");
    expect_render(msgs, 1, NULL, true, "<|im_start|>user\nHi there<|im_end|>\n<|im_start|>assistant\n");
    mt_chat_msg tools[] = {{"user", "q"}, {"tool", "r1"}, {"tool", "r2"}};
    expect_render(tools, 3, NULL, false,
                  "<|im_start|>user\nq<|im_end|>\n<|im_start|>user\n<tool_response>\nr1\n</tool_response>"
                  "\n<tool_response>\nr2\n</tool_response><|im_end|>\n");
    expect_render(NULL, 0, sys, true,
                  "<|im_start|>system\nYou are Qwen, created by Alibaba Cloud. You are a helpful "
                  "assistant.<|im_end|>\n<|im_start|>assistant\n");
}

static void test_chat_unknown_role(void) {
    mt_chat_msg msgs[] = {{"user", "a"}, {"robot", "b"}};
    char *out = (char *)"untouched";
    CHECK(mt_chat_render(msgs, 2, NULL, true, &out) == MT_ERR_INVALID, "unknown role accepted");
    CHECK(out == NULL, "out cleared");
    CHECK(strstr(mt_last_error(), "robot") != NULL && strstr(mt_last_error(), "message 1"), "message: %s",
          mt_last_error());
    mt_chat_msg null_role[] = {{NULL, "a"}};
    CHECK(mt_chat_render(null_role, 1, NULL, true, &out) == MT_ERR_INVALID, "null role accepted");
}

static void test_chat_default_system_from_template(void) {
    const char *qwen2 = "{% for message in messages %}{% if loop.first and messages[0]['role'] != 'system' %}"
                        "{{ '<|im_start|>system\\nYou are a helpful assistant.<|im_end|>\\n' }}{% endif %}";
    CHECK(strcmp(mt_chat_default_system(qwen2), "You are a helpful assistant.") == 0, "qwen2 form");
    const char *concat =
        "{{- '<|im_start|>system\\n' + messages[0]['content'] }}{{- '<|im_start|>system\\n' + "
        "'It\\'s a test.' + '<|im_end|>\\n' }}";
    CHECK(strcmp(mt_chat_default_system(concat), "It's a test.") == 0, "concatenated form: %s",
          mt_chat_default_system(concat));
    CHECK(strcmp(mt_chat_default_system("{{ messages }}"), mt_chat_default_system(NULL)) == 0, "fallback");
}

// ---- the real model ------------------------------------------------------------------------------------

static void test_model_known_ids(mt_tokenizer *t, mt_gguf *g) {
    CHECK(mt_tokenizer_n_vocab(t) == 151936, "n_vocab %d", mt_tokenizer_n_vocab(t));
    CHECK(mt_tokenizer_find(t, "<|im_start|>") == 151644 && mt_tokenizer_find(t, "<|im_end|>") == 151645 &&
              mt_tokenizer_find(t, "<|endoftext|>") == 151643,
          "special ids");
    CHECK(mt_tokenizer_is_special(t, 151657) && !mt_tokenizer_is_special(t, 9707), "types");
    expect_ids(t, "Hello world", 11, true, (const int32_t[]){9707, 1879, -1});
    const char *s = "<|im_start|>user\nhi<|im_end|>";
    expect_ids(t, s, strlen(s), true, (const int32_t[]){151644, 872, 198, 6023, 151645, -1});
    expect_ids(t, "hellllo 123", 11, true, (const int32_t[]){56095, 75, 385, 220, 16, 17, 18, -1});
    s = "  it's\n\n  x";
    expect_ids(t, s, strlen(s), true, (const int32_t[]){220, 432, 594, 271, 220, 856, -1});
    // The stored template's default system prompt.
    int64_t k = mt_gguf_find(g, "tokenizer.chat_template");
    mt_str tmpl;
    if (k >= 0 && mt_gguf_get_str(g, k, &tmpl) == MT_OK) {
        char *z = malloc(tmpl.len + 1);
        memcpy(z, tmpl.ptr, tmpl.len);
        z[tmpl.len] = 0;
        CHECK(strcmp(mt_chat_default_system(z),
                     "You are Qwen, created by Alibaba Cloud. You are a helpful assistant.") == 0,
              "template default: %s", mt_chat_default_system(z));
        free(z);
    } else
        CHECK(0, "tokenizer.chat_template missing");
}

static void test_model_round_trip(mt_tokenizer *t) {
    static const char *const texts[] = {
        "The quick brown fox 🦊 jumps over the lazy dog; it's 42°C.\n",
        "def add(a, b):\n    return a + b  # sum\n\n\n",
        "你好，世界！ こんにちは 안녕하세요 مرحبا नमस्ते",
        "👨‍👩‍👧‍👦🏳️‍🌈 emoji sequences 👍🏽",
        "<|im_start|>system\nBe brief.<|im_end|>\n<|im_start|>user\nok<|im_end|>",
        "\t\t  \r\n mixed   whitespace \n\n\t",
        "bad bytes \xFF\xFE and a cut char \xE4\xB8",
    };
    for (size_t i = 0; i < sizeof texts / sizeof texts[0]; i++) {
        const char *s = texts[i];
        size_t len = strlen(s);
        int32_t *ids = NULL;
        size_t n = 0;
        CHECK(mt_tokenizer_encode(t, s, len, true, &ids, &n) == MT_OK, "encode %zu", i);
        CHECK(n > 0 && n < len, "text %zu: %zu ids for %zu bytes", i, n, len);
        // Concatenated token bytes give back the input exactly, invalid bytes included.
        char buf[1024];
        size_t o = 0;
        for (size_t j = 0; j < n; j++) {
            const char *b;
            size_t bl;
            CHECK(mt_tokenizer_token_bytes(t, ids[j], &b, &bl) == MT_OK && o + bl < sizeof buf, "bytes");
            memcpy(buf + o, b, bl);
            o += bl;
        }
        CHECK(o == len && memcmp(buf, s, len) == 0, "text %zu round trip", i);
        if (i < 6) { // valid UTF-8: the stream reproduces it and never splits a character
            bool whole;
            size_t m = stream(t, ids, n, buf, sizeof buf, &whole);
            CHECK(m == len && memcmp(buf, s, len) == 0 && whole, "text %zu stream", i);
        }
        free(ids);
    }
    // Seeded random bytes (mostly invalid UTF-8) never crash and round-trip byte for byte.
    uint64_t x = 0x9E3779B97F4A7C15ull;
    for (int r = 0; r < 300; r++) {
        char rnd[96];
        size_t rl = 1 + (size_t)r % sizeof rnd;
        for (size_t i = 0; i < rl; i++) {
            x ^= x << 13, x ^= x >> 7, x ^= x << 17;
            // Bias towards bytes that form and break multi-byte sequences.
            rnd[i] = (char)(x % 3 == 0 ? 0x80 | (x >> 8) % 64 : (x >> 16) % 256);
        }
        int32_t *ids = NULL;
        size_t n = 0;
        CHECK(mt_tokenizer_encode(t, rnd, rl, r % 2 == 0, &ids, &n) == MT_OK && n >= 1 && n <= rl,
              "random %d", r);
        char buf[128];
        size_t o = 0;
        for (size_t j = 0; j < n; j++) {
            const char *b;
            size_t bl;
            if (mt_tokenizer_token_bytes(t, ids[j], &b, &bl) != MT_OK || o + bl > sizeof buf) break;
            memcpy(buf + o, b, bl);
            o += bl;
        }
        CHECK(o == rl && memcmp(buf, rnd, rl) == 0, "random %d round trip", r);
        free(ids);
    }
    // A long run of one character stays fast and exact (BPE is not quadratic).
    size_t big = 200000;
    char *s = malloc(big);
    for (size_t i = 0; i < big; i++) s[i] = (char)('a' + (i * 7 + i / 13) % 3);
    int32_t *ids = NULL;
    size_t n = 0;
    CHECK(mt_tokenizer_encode(t, s, big, false, &ids, &n) == MT_OK && n > 0 && n < big / 2,
          "long word: %zu ids", n);
    size_t o = 0;
    bool same = true;
    for (size_t j = 0; j < n && same; j++) {
        const char *b;
        size_t bl;
        mt_tokenizer_token_bytes(t, ids[j], &b, &bl);
        same = o + bl <= big && memcmp(s + o, b, bl) == 0;
        o += bl;
    }
    CHECK(same && o == big, "long word round trip");
    free(ids);
    free(s);
}

// ---- tool mode -----------------------------------------------------------------------------------------

static int encode_tool(const char *path) {
    mt_tokenizer *t = NULL;
    mt_gguf *g = NULL;
    if (open_tokenizer(path, &t, &g) != MT_OK) {
        fprintf(stderr, "test-tokenizer: %s\n", mt_last_error());
        return 1;
    }
    char *line = NULL;
    size_t cap = 0;
    ssize_t got;
    int rc = 0;
    while ((got = getline(&line, &cap, stdin)) >= 0) {
        cJSON *j = cJSON_ParseWithLength(line, (size_t)got);
        if (!cJSON_IsString(j)) {
            fprintf(stderr, "test-tokenizer: input line is not a JSON string\n");
            cJSON_Delete(j);
            rc = 1;
            break;
        }
        int32_t *ids = NULL;
        size_t n = 0;
        if (mt_tokenizer_encode(t, j->valuestring, strlen(j->valuestring), true, &ids, &n) != MT_OK) {
            fprintf(stderr, "test-tokenizer: %s\n", mt_last_error());
            cJSON_Delete(j);
            rc = 1;
            break;
        }
        putchar('[');
        for (size_t i = 0; i < n; i++) printf(i ? ", %d" : "%d", ids[i]);
        puts("]");
        free(ids);
        cJSON_Delete(j);
    }
    free(line);
    mt_tokenizer_free(t);
    mt_gguf_close(g);
    return rc;
}

int main(int argc, char **argv) {
    if (argc == 3 && strcmp(argv[1], "--encode") == 0) return encode_tool(argv[2]);
    RUN(test_byte_map_round_trip);
    RUN(test_bpe_order);
    RUN(test_pre_tokenizer_splits);
    RUN(test_special_tokens);
    RUN(test_detokenizer);
    RUN(test_bad_json);
    RUN(test_gguf_metadata);
    RUN(test_chat_render);
    RUN(test_chat_unknown_role);
    RUN(test_chat_default_system_from_template);
    if (small_path[0]) remove(small_path);

    const char *path = model_path();
    mt_tokenizer *t = NULL;
    mt_gguf *g = NULL;
    if (access(path, R_OK) != 0) {
        SKIP("model tests", "model file absent");
    } else if (open_tokenizer(path, &t, &g) != MT_OK) {
        printf("FAIL cannot load %s: %s\n", path, mt_last_error());
        th_failed++;
    } else {
        RUN(test_model_known_ids, t, g);
        RUN(test_model_round_trip, t);
    }
    mt_tokenizer_free(t);
    mt_gguf_close(g);
    return th_summary();
}
