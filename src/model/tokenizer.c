// Byte-level BPE tokenizer for Qwen2-family vocabularies.
//
// Encoding: special tokens are cut out first (longest match at the leftmost position), each plain run is
// split by a hand-written matcher for the qwen2 pre-tokenizer regex, and each piece is merged by BPE
// over raw bytes. Vocabulary entries are stored as the raw bytes they stand for (the GPT-2 byte-to-unicode
// mapping is undone at load), so BPE, lookup and decoding all work on bytes.
#include "tokenizer.h"

#include <cjson/cJSON.h>
#include <errno.h>
#include <pthread.h>
#include <stdio.h>
#include <string.h>

#include "../core/gguf.h"
#include "unicode-tables.h"

// The only split pattern supported; a tokenizer.json whose Split pattern differs is rejected.
static const char QWEN2_PATTERN[] = "(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\\r\\n\\p{L}\\p{N}]?\\p{L}+|\\p{N}| "
                                    "?[^\\s\\p{L}\\p{N}]+[\\r\\n]*|\\s*[\\r\\n]+|\\s+(?!\\S)|\\s+";

typedef struct merge_slot {
    uint64_t key; // (left id << 32) | right id; 0 marks an empty slot (id pair 0,0 is stored with key+1)
    int32_t rank;
    int32_t result;
} merge_slot;

struct mt_tokenizer {
    int n_vocab;
    uint8_t *type; // per id
    uint32_t *off; // per id: raw bytes at pool + off
    uint32_t *len; // per id
    char *pool;
    size_t pool_len, pool_cap;
    size_t max_len; // longest token in bytes

    int32_t *str_slots; // open addressing: raw bytes -> id (-1 empty); normal tokens win over others
    size_t str_mask;

    merge_slot *merges;
    size_t merge_mask;

    int32_t byte_id[256];

    int32_t *specials; // control / user-defined ids with text, longest first
    int n_specials;
    uint8_t special_first[256]; // first bytes that can start a special token
};

// ---- GPT-2 byte <-> unicode mapping -------------------------------------------------------------------

// Printable Latin-1 bytes map to themselves; the other 68 bytes map to U+0100.. in byte order.
static uint32_t byte_to_cp(int b) {
    if ((b >= 0x21 && b <= 0x7E) || (b >= 0xA1 && b <= 0xAC) || (b >= 0xAE && b <= 0xFF)) return (uint32_t)b;
    int n = 0;
    for (int c = 0; c < b; c++)
        if (!((c >= 0x21 && c <= 0x7E) || (c >= 0xA1 && c <= 0xAC) || (c >= 0xAE && c <= 0xFF))) n++;
    return 256u + (uint32_t)n;
}

static int16_t cp_to_byte_tab[324];

static void build_byte_map(void) {
    for (int i = 0; i < 324; i++) cp_to_byte_tab[i] = -1;
    for (int b = 0; b < 256; b++) {
        uint32_t cp = byte_to_cp(b);
        MT_ASSERT(cp < 324);
        cp_to_byte_tab[cp] = (int16_t)b;
    }
}

// Decodes one UTF-8 sequence at s[0..n); returns its length, or 0 if the bytes there are not valid UTF-8
// (overlong forms, surrogates and values past U+10FFFF are invalid).
static size_t utf8_decode(const unsigned char *s, size_t n, uint32_t *cp) {
    unsigned c = s[0];
    if (c < 0x80) {
        *cp = c;
        return 1;
    }
    size_t need;
    uint32_t v, min;
    if ((c & 0xE0) == 0xC0)
        need = 2, v = c & 0x1F, min = 0x80;
    else if ((c & 0xF0) == 0xE0)
        need = 3, v = c & 0x0F, min = 0x800;
    else if ((c & 0xF8) == 0xF0)
        need = 4, v = c & 0x07, min = 0x10000;
    else
        return 0;
    if (n < need) return 0;
    for (size_t i = 1; i < need; i++) {
        if ((s[i] & 0xC0) != 0x80) return 0;
        v = (v << 6) | (s[i] & 0x3F);
    }
    if (v < min || v > 0x10FFFF || (v >= 0xD800 && v <= 0xDFFF)) return 0;
    *cp = v;
    return need;
}

// Undoes the byte-level mapping of a vocabulary string; false if it holds a code point outside the map.
static bool unmap_bytes(const char *s, size_t n, char *out, size_t *out_n) {
    size_t o = 0;
    for (size_t i = 0; i < n;) {
        uint32_t cp;
        size_t k = utf8_decode((const unsigned char *)s + i, n - i, &cp);
        if (k == 0 || cp >= 324 || cp_to_byte_tab[cp] < 0) return false;
        out[o++] = (char)cp_to_byte_tab[cp];
        i += k;
    }
    *out_n = o;
    return true;
}

// ---- hash tables ---------------------------------------------------------------------------------------

static uint64_t hash_bytes(const char *s, size_t n) {
    uint64_t h = 1469598103934665603ull;
    for (size_t i = 0; i < n; i++) h = (h ^ (unsigned char)s[i]) * 1099511628211ull;
    return h;
}

static uint64_t hash_u64(uint64_t x) {
    x ^= x >> 33;
    x *= 0xff51afd7ed558ccdull;
    x ^= x >> 33;
    x *= 0xc4ceb3fe1a85ec53ull;
    return x ^ (x >> 33);
}

static size_t pow2_at_least(size_t n) {
    size_t c = 16;
    while (c < n) c <<= 1;
    return c;
}

static int32_t str_lookup(const mt_tokenizer *t, const char *s, size_t n) {
    for (size_t h = hash_bytes(s, n) & t->str_mask;; h = (h + 1) & t->str_mask) {
        int32_t id = t->str_slots[h];
        if (id < 0) return -1;
        if (t->len[id] == n && memcmp(t->pool + t->off[id], s, n) == 0) return id;
    }
}

static void str_insert(mt_tokenizer *t, int32_t id) {
    const char *s = t->pool + t->off[id];
    size_t n = t->len[id];
    for (size_t h = hash_bytes(s, n) & t->str_mask;; h = (h + 1) & t->str_mask) {
        int32_t o = t->str_slots[h];
        if (o < 0) {
            t->str_slots[h] = id;
            return;
        }
        if (t->len[o] == n && memcmp(t->pool + t->off[o], s, n) == 0) return; // first one wins
    }
}

static uint64_t merge_key(int32_t a, int32_t b) {
    return (((uint64_t)(uint32_t)a << 32) | (uint32_t)b) + 1;
}

static const merge_slot *merge_lookup(const mt_tokenizer *t, int32_t a, int32_t b) {
    uint64_t key = merge_key(a, b);
    for (size_t h = hash_u64(key) & t->merge_mask;; h = (h + 1) & t->merge_mask) {
        const merge_slot *m = &t->merges[h];
        if (m->key == 0) return NULL;
        if (m->key == key) return m;
    }
}

static void merge_insert(mt_tokenizer *t, int32_t a, int32_t b, int32_t rank, int32_t result) {
    uint64_t key = merge_key(a, b);
    for (size_t h = hash_u64(key) & t->merge_mask;; h = (h + 1) & t->merge_mask) {
        merge_slot *m = &t->merges[h];
        if (m->key == key) return; // a repeated merge keeps its first (best) rank
        if (m->key == 0) {
            m->key = key;
            m->rank = rank;
            m->result = result;
            return;
        }
    }
}

// ---- construction --------------------------------------------------------------------------------------

static mt_status tok_alloc(mt_tokenizer **out, int64_t n_vocab) {
    if (n_vocab <= 0 || n_vocab > (1 << 24))
        return mt_fail(MT_ERR_FORMAT, "tokenizer: vocabulary size %lld out of range (1..16777216)",
                       (long long)n_vocab);
    mt_tokenizer *t = mt_calloc(1, sizeof *t, "tokenizer");
    if (!t) return MT_ERR_NOMEM;
    *out = t;
    t->n_vocab = (int)n_vocab;
    t->type = mt_calloc((size_t)n_vocab, 1, "token types");
    t->off = mt_calloc((size_t)n_vocab, sizeof *t->off, "token offsets");
    t->len = mt_calloc((size_t)n_vocab, sizeof *t->len, "token lengths");
    if (!t->type || !t->off || !t->len) return MT_ERR_NOMEM;
    for (int64_t i = 0; i < n_vocab; i++) t->type[i] = MT_TOKEN_UNUSED;
    static pthread_once_t once = PTHREAD_ONCE_INIT;
    pthread_once(&once, build_byte_map);
    return MT_OK;
}

static mt_status pool_append(mt_tokenizer *t, const char *s, size_t n, uint32_t *off) {
    if (t->pool_len + n > UINT32_MAX) return mt_fail(MT_ERR_FORMAT, "tokenizer: token texts exceed 4 GiB");
    if (t->pool_len + n > t->pool_cap) {
        size_t cap = t->pool_cap ? t->pool_cap : 1 << 20;
        while (cap < t->pool_len + n) cap *= 2;
        char *p = realloc(t->pool, cap);
        if (!p) return mt_fail(MT_ERR_NOMEM, "tokenizer: cannot grow token text pool to %zu bytes", cap);
        t->pool = p;
        t->pool_cap = cap;
    }
    memcpy(t->pool + t->pool_len, s, n);
    *off = (uint32_t)t->pool_len;
    t->pool_len += n;
    return MT_OK;
}

// Stores token `id`. Normal tokens are given in byte-level-mapped form; control and user-defined tokens
// are literal text. `scratch` holds at least n bytes.
static mt_status set_token(mt_tokenizer *t, int32_t id, const char *text, size_t n, int type, char *scratch) {
    const char *raw = text;
    size_t raw_n = n;
    if (type != MT_TOKEN_CONTROL && type != MT_TOKEN_USER_DEFINED && unmap_bytes(text, n, scratch, &raw_n))
        raw = scratch;
    else
        raw_n = n;
    if (n > 65536)
        return mt_fail(MT_ERR_FORMAT, "tokenizer: token %d is %zu bytes long (limit 65536)", id, n);
    MT_TRY(pool_append(t, raw, raw_n, &t->off[id]));
    t->len[id] = (uint32_t)raw_n;
    t->type[id] = (uint8_t)type;
    if (raw_n > t->max_len) t->max_len = raw_n;
    return MT_OK;
}

static bool is_special_type(int type) {
    return type == MT_TOKEN_CONTROL || type == MT_TOKEN_USER_DEFINED;
}

static int cmp_len_desc(const void *a, const void *b, void *ctx) {
    const mt_tokenizer *t = ctx;
    int32_t x = *(const int32_t *)a, y = *(const int32_t *)b;
    if (t->len[x] != t->len[y]) return t->len[x] > t->len[y] ? -1 : 1;
    return x < y ? -1 : x > y;
}

// Builds the lookup table, byte tokens and special-token list once every token is set.
static mt_status tok_index(mt_tokenizer *t) {
    t->str_mask = pow2_at_least((size_t)t->n_vocab * 2) - 1;
    t->str_slots = mt_malloc((t->str_mask + 1) * sizeof *t->str_slots, "token hash");
    if (!t->str_slots) return MT_ERR_NOMEM;
    memset(t->str_slots, 0xff, (t->str_mask + 1) * sizeof *t->str_slots);
    // Normal tokens first so that BPE lookups never land on a special token with the same bytes.
    for (int pass = 0; pass < 2; pass++)
        for (int32_t id = 0; id < t->n_vocab; id++) {
            bool normal = t->type[id] == MT_TOKEN_NORMAL || t->type[id] == MT_TOKEN_BYTE;
            if ((pass == 0) == normal && (t->len[id] > 0 || normal)) str_insert(t, id);
        }
    for (int b = 0; b < 256; b++) {
        char c = (char)b;
        t->byte_id[b] = str_lookup(t, &c, 1);
        if (t->byte_id[b] < 0)
            return mt_fail(MT_ERR_FORMAT, "tokenizer: vocabulary has no token for byte 0x%02x", (unsigned)b);
    }
    int n = 0;
    for (int32_t id = 0; id < t->n_vocab; id++)
        if (is_special_type(t->type[id]) && t->len[id] > 0) n++;
    t->specials = mt_malloc((size_t)n * sizeof *t->specials + 1, "special tokens");
    if (!t->specials) return MT_ERR_NOMEM;
    t->n_specials = 0;
    for (int32_t id = 0; id < t->n_vocab; id++)
        if (is_special_type(t->type[id]) && t->len[id] > 0) {
            t->specials[t->n_specials++] = id;
            t->special_first[(unsigned char)t->pool[t->off[id]]] = 1;
        }
    qsort_r(t->specials, (size_t)t->n_specials, sizeof *t->specials, cmp_len_desc, t);
    return MT_OK;
}

static mt_status merges_alloc(mt_tokenizer *t, uint64_t n_merges) {
    if (n_merges > (1u << 24))
        return mt_fail(MT_ERR_FORMAT, "tokenizer: %llu merges (limit 16777216)",
                       (unsigned long long)n_merges);
    t->merge_mask = pow2_at_least((size_t)n_merges * 2) - 1;
    t->merges = mt_calloc(t->merge_mask + 1, sizeof *t->merges, "merge table");
    return t->merges ? MT_OK : MT_ERR_NOMEM;
}

// Adds merge number `rank` given as two byte-level-mapped strings. `scratch` holds 2 * max_len bytes.
static mt_status add_merge(mt_tokenizer *t, int32_t rank, const char *a, size_t na, const char *b, size_t nb,
                           char *scratch) {
    size_t ra, rb;
    if (na + nb > 2 * t->max_len || !unmap_bytes(a, na, scratch, &ra) ||
        !unmap_bytes(b, nb, scratch + ra, &rb))
        return mt_fail(MT_ERR_FORMAT,
                       "tokenizer: merge %d (\"%.*s %.*s\") is not a pair of vocabulary tokens", rank,
                       (int)na, a, (int)nb, b);
    int32_t ia = str_lookup(t, scratch, ra), ib = str_lookup(t, scratch + ra, rb);
    int32_t ir = str_lookup(t, scratch, ra + rb);
    if (ia < 0 || ib < 0 || ir < 0)
        return mt_fail(MT_ERR_FORMAT,
                       "tokenizer: merge %d (\"%.*s %.*s\") names a token not in the vocabulary", rank,
                       (int)na, a, (int)nb, b);
    merge_insert(t, ia, ib, rank, ir);
    return MT_OK;
}

// Splits a merge line "a b" at its space (mapped tokens never contain a literal space).
static mt_status add_merge_line(mt_tokenizer *t, int32_t rank, const char *s, size_t n, char *scratch) {
    const char *sp = memchr(s, ' ', n);
    if (!sp || sp == s || sp == s + n - 1)
        return mt_fail(MT_ERR_FORMAT, "tokenizer: merge %d \"%.*s\" is not of the form \"a b\"", rank,
                       (int)(n > 64 ? 64 : n), s);
    return add_merge(t, rank, s, (size_t)(sp - s), sp + 1, n - (size_t)(sp - s) - 1, scratch);
}

mt_status mt_tokenizer_from_gguf(const struct mt_gguf *g, mt_tokenizer **out) {
    *out = NULL;
    mt_str s;
    int64_t k = mt_gguf_find(g, "tokenizer.ggml.model");
    if (k < 0) return mt_fail(MT_ERR_FORMAT, "gguf: tokenizer.ggml.model missing");
    MT_TRY(mt_gguf_get_str(g, k, &s));
    if (s.len != 4 || memcmp(s.ptr, "gpt2", 4) != 0)
        return mt_fail(MT_ERR_UNSUPPORTED, "gguf: tokenizer.ggml.model \"%.*s\" unsupported (need gpt2)",
                       (int)(s.len > 64 ? 64 : s.len), s.ptr);
    k = mt_gguf_find(g, "tokenizer.ggml.pre");
    if (k < 0) return mt_fail(MT_ERR_UNSUPPORTED, "gguf: tokenizer.ggml.pre missing (need qwen2)");
    MT_TRY(mt_gguf_get_str(g, k, &s));
    if (s.len != 5 || memcmp(s.ptr, "qwen2", 5) != 0)
        return mt_fail(MT_ERR_UNSUPPORTED,
                       "gguf: pre-tokenizer tokenizer.ggml.pre \"%.*s\" unsupported (need qwen2)",
                       (int)(s.len > 64 ? 64 : s.len), s.ptr);

    int64_t kt = mt_gguf_find(g, "tokenizer.ggml.tokens"), ky = mt_gguf_find(g, "tokenizer.ggml.token_type");
    int64_t km = mt_gguf_find(g, "tokenizer.ggml.merges");
    if (kt < 0) return mt_fail(MT_ERR_FORMAT, "gguf: tokenizer.ggml.tokens missing");
    if (km < 0) return mt_fail(MT_ERR_FORMAT, "gguf: tokenizer.ggml.merges missing");
    mt_gguf_type et;
    uint64_t n_tok, n_types = 0, n_merges;
    MT_TRY(mt_gguf_get_arr(g, kt, &et, &n_tok));
    if (et != MT_GGUF_STRING)
        return mt_fail(MT_ERR_FORMAT, "gguf: tokenizer.ggml.tokens is not a string array");
    if (n_tok == 0 || n_tok > (1u << 24))
        return mt_fail(MT_ERR_FORMAT, "gguf: tokenizer.ggml.tokens has %llu entries (1..16777216)",
                       (unsigned long long)n_tok);
    const void *types = NULL;
    if (ky >= 0) {
        MT_TRY(mt_gguf_get_arr(g, ky, &et, &n_types));
        if (et != MT_GGUF_I32 && et != MT_GGUF_U32)
            return mt_fail(MT_ERR_FORMAT, "gguf: tokenizer.ggml.token_type is not an i32 array");
        if (n_types != n_tok)
            return mt_fail(MT_ERR_FORMAT, "gguf: tokenizer.ggml.token_type has %llu entries, tokens has %llu",
                           (unsigned long long)n_types, (unsigned long long)n_tok);
        MT_TRY(mt_gguf_get_arr_data(g, ky, &types));
    }
    MT_TRY(mt_gguf_get_arr(g, km, &et, &n_merges));
    if (et != MT_GGUF_STRING)
        return mt_fail(MT_ERR_FORMAT, "gguf: tokenizer.ggml.merges is not a string array");

    mt_tokenizer *t = NULL;
    char *scratch = NULL;
    mt_status st = tok_alloc(&t, (int64_t)n_tok);
    if (st != MT_OK) goto fail;
    scratch = mt_malloc(2 * 65536 + 16, "tokenizer scratch");
    if (!scratch) {
        st = MT_ERR_NOMEM;
        goto fail;
    }
    for (uint64_t i = 0; i < n_tok; i++) {
        if ((st = mt_gguf_get_arr_str(g, kt, i, &s)) != MT_OK) goto fail;
        int32_t type = MT_TOKEN_NORMAL;
        if (types) memcpy(&type, (const char *)types + 4 * i, 4);
        if (type < MT_TOKEN_NORMAL || type > MT_TOKEN_BYTE) {
            st = mt_fail(MT_ERR_FORMAT, "gguf: tokenizer.ggml.token_type[%llu] = %d is not a token type",
                         (unsigned long long)i, type);
            goto fail;
        }
        if (s.len > 65536) {
            st = mt_fail(MT_ERR_FORMAT, "gguf: tokenizer.ggml.tokens[%llu] is %llu bytes (limit 65536)",
                         (unsigned long long)i, (unsigned long long)s.len);
            goto fail;
        }
        if ((st = set_token(t, (int32_t)i, s.ptr, s.len, type, scratch)) != MT_OK) goto fail;
    }
    if ((st = tok_index(t)) != MT_OK || (st = merges_alloc(t, n_merges)) != MT_OK) goto fail;
    for (uint64_t i = 0; i < n_merges; i++) {
        if ((st = mt_gguf_get_arr_str(g, km, i, &s)) != MT_OK) goto fail;
        if (s.len > 2 * 65536) {
            st = mt_fail(MT_ERR_FORMAT, "gguf: tokenizer.ggml.merges[%llu] too long", (unsigned long long)i);
            goto fail;
        }
        if ((st = add_merge_line(t, (int32_t)i, s.ptr, s.len, scratch)) != MT_OK) goto fail;
    }
    free(scratch);
    *out = t;
    return MT_OK;
fail:
    free(scratch);
    mt_tokenizer_free(t);
    return st;
}

// Reads a whole file into a NUL-terminated buffer.
static mt_status read_file(const char *path, char **data, size_t *size) {
    FILE *f = fopen(path, "rb");
    if (!f) return mt_fail(MT_ERR_IO, "%s: cannot open: %s", path, strerror(errno));
    mt_status st = MT_OK;
    char *buf = NULL;
    if (fseek(f, 0, SEEK_END) != 0) st = mt_fail(MT_ERR_IO, "%s: cannot seek", path);
    long n = st == MT_OK ? ftell(f) : -1;
    if (st == MT_OK && (n < 0 || n > (1L << 30)))
        st = mt_fail(MT_ERR_IO, "%s: size %ld unsupported", path, n);
    if (st == MT_OK) {
        rewind(f);
        buf = mt_malloc((size_t)n + 1, "tokenizer.json");
        if (!buf)
            st = MT_ERR_NOMEM;
        else if (fread(buf, 1, (size_t)n, f) != (size_t)n)
            st = mt_fail(MT_ERR_IO, "%s: short read", path);
    }
    fclose(f);
    if (st != MT_OK) {
        free(buf);
        return st;
    }
    buf[n] = 0;
    *data = buf;
    *size = (size_t)n;
    return MT_OK;
}

// Rejects pre-tokenizers that split differently from qwen2: a Split with another pattern, or a
// ByteLevel that applies its own GPT-2 regex.
static mt_status check_pre_tokenizer(const char *path, const cJSON *pt) {
    if (!pt || cJSON_IsNull(pt))
        return mt_fail(MT_ERR_UNSUPPORTED, "%s: pre_tokenizer missing (need qwen2 split)", path);
    const cJSON *type = cJSON_GetObjectItemCaseSensitive(pt, "type");
    const char *ty = cJSON_IsString(type) ? type->valuestring : "";
    if (strcmp(ty, "Sequence") == 0) {
        const cJSON *seq = cJSON_GetObjectItemCaseSensitive(pt, "pretokenizers"), *e;
        bool split = false;
        cJSON_ArrayForEach(e, seq) {
            const cJSON *et = cJSON_GetObjectItemCaseSensitive(e, "type");
            if (cJSON_IsString(et) && strcmp(et->valuestring, "Split") == 0) split = true;
            MT_TRY(check_pre_tokenizer(path, e));
        }
        if (!split) return mt_fail(MT_ERR_UNSUPPORTED, "%s: pre_tokenizer sequence has no qwen2 Split", path);
        return MT_OK;
    }
    if (strcmp(ty, "Split") == 0) {
        const cJSON *pat = cJSON_GetObjectItemCaseSensitive(pt, "pattern");
        const cJSON *re = cJSON_GetObjectItemCaseSensitive(pat, "Regex");
        if (!cJSON_IsString(re) || strcmp(re->valuestring, QWEN2_PATTERN) != 0)
            return mt_fail(MT_ERR_UNSUPPORTED,
                           "%s: pre_tokenizer Split pattern \"%.80s\" unsupported (need qwen2)", path,
                           cJSON_IsString(re) ? re->valuestring : "(not a regex)");
        return MT_OK;
    }
    if (strcmp(ty, "ByteLevel") == 0) {
        const cJSON *ur = cJSON_GetObjectItemCaseSensitive(pt, "use_regex");
        const cJSON *ap = cJSON_GetObjectItemCaseSensitive(pt, "add_prefix_space");
        if (!cJSON_IsFalse(ur))
            return mt_fail(MT_ERR_UNSUPPORTED, "%s: ByteLevel pre_tokenizer with use_regex unsupported",
                           path);
        if (cJSON_IsTrue(ap))
            return mt_fail(MT_ERR_UNSUPPORTED, "%s: ByteLevel add_prefix_space unsupported", path);
        return MT_OK;
    }
    return mt_fail(MT_ERR_UNSUPPORTED, "%s: pre_tokenizer type \"%s\" unsupported", path, ty);
}

mt_status mt_tokenizer_from_hf_json(const char *path, mt_tokenizer **out) {
    *out = NULL;
    char *data = NULL, *scratch = NULL;
    size_t size = 0;
    MT_TRY(read_file(path, &data, &size));
    cJSON *root = cJSON_ParseWithLength(data, size);
    free(data);
    if (!root) return mt_fail(MT_ERR_FORMAT, "%s: not valid JSON", path);
    mt_tokenizer *t = NULL;
    mt_status st = MT_OK;
    const cJSON *model = cJSON_GetObjectItemCaseSensitive(root, "model");
    const cJSON *vocab = cJSON_GetObjectItemCaseSensitive(model, "vocab");
    const cJSON *merges = cJSON_GetObjectItemCaseSensitive(model, "merges");
    const cJSON *added = cJSON_GetObjectItemCaseSensitive(root, "added_tokens");
    const cJSON *mtype = cJSON_GetObjectItemCaseSensitive(model, "type");
    const cJSON *e;
    if (!cJSON_IsObject(model) || !cJSON_IsObject(vocab) || !cJSON_IsArray(merges)) {
        st = mt_fail(MT_ERR_FORMAT, "%s: model.vocab (object) and model.merges (array) required", path);
        goto done;
    }
    if (mtype && (!cJSON_IsString(mtype) || strcmp(mtype->valuestring, "BPE") != 0)) {
        st = mt_fail(MT_ERR_UNSUPPORTED, "%s: model.type \"%s\" unsupported (need BPE)", path,
                     cJSON_IsString(mtype) ? mtype->valuestring : "?");
        goto done;
    }
    // Input text is not normalized: an NFC normalizer (Qwen2's) changes nothing on NFC text.
    const cJSON *norm = cJSON_GetObjectItemCaseSensitive(root, "normalizer");
    const cJSON *nt = cJSON_GetObjectItemCaseSensitive(norm, "type");
    if (norm && !cJSON_IsNull(norm) && !(cJSON_IsString(nt) && strcmp(nt->valuestring, "NFC") == 0)) {
        st = mt_fail(MT_ERR_UNSUPPORTED, "%s: normalizer \"%s\" unsupported", path,
                     cJSON_IsString(nt) ? nt->valuestring : "?");
        goto done;
    }
    if ((st = check_pre_tokenizer(path, cJSON_GetObjectItemCaseSensitive(root, "pre_tokenizer"))) != MT_OK)
        goto done;

    // The vocabulary size is one past the largest id in vocab or added_tokens; gaps stay unused.
    int64_t max_id = -1;
    cJSON_ArrayForEach(e, vocab) {
        if (!cJSON_IsNumber(e) || e->valuedouble < 0 || e->valuedouble >= (1 << 24) ||
            e->valuedouble != (double)(int64_t)e->valuedouble) {
            st = mt_fail(MT_ERR_FORMAT, "%s: model.vocab[\"%.64s\"] is not an id in 0..16777215", path,
                         e->string);
            goto done;
        }
        if ((int64_t)e->valuedouble > max_id) max_id = (int64_t)e->valuedouble;
    }
    cJSON_ArrayForEach(e, added) {
        const cJSON *id = cJSON_GetObjectItemCaseSensitive(e, "id");
        const cJSON *content = cJSON_GetObjectItemCaseSensitive(e, "content");
        if (!cJSON_IsNumber(id) || id->valuedouble < 0 || id->valuedouble >= (1 << 24) ||
            !cJSON_IsString(content)) {
            st = mt_fail(MT_ERR_FORMAT, "%s: added_tokens entry without a valid id and content", path);
            goto done;
        }
        if ((int64_t)id->valuedouble > max_id) max_id = (int64_t)id->valuedouble;
    }
    if ((st = tok_alloc(&t, max_id + 1)) != MT_OK) goto done;
    scratch = mt_malloc(2 * 65536 + 16, "tokenizer scratch");
    if (!scratch) {
        st = MT_ERR_NOMEM;
        goto done;
    }
    cJSON_ArrayForEach(e, vocab) {
        size_t n = strlen(e->string);
        if ((st = set_token(t, (int32_t)e->valuedouble, e->string, n, MT_TOKEN_NORMAL, scratch)) != MT_OK)
            goto done;
    }
    cJSON_ArrayForEach(e, added) {
        const cJSON *id = cJSON_GetObjectItemCaseSensitive(e, "id");
        const cJSON *content = cJSON_GetObjectItemCaseSensitive(e, "content");
        const cJSON *special = cJSON_GetObjectItemCaseSensitive(e, "special");
        int type = cJSON_IsTrue(special) ? MT_TOKEN_CONTROL : MT_TOKEN_USER_DEFINED;
        const char *c = content->valuestring;
        // Whitespace-stripping and whole-word added tokens match differently; none of Qwen's do.
        static const char *const flags[] = {"lstrip", "rstrip", "single_word"};
        for (int f = 0; f < 3; f++)
            if (cJSON_IsTrue(cJSON_GetObjectItemCaseSensitive(e, flags[f]))) {
                st = mt_fail(MT_ERR_UNSUPPORTED, "%s: added token \"%.64s\" has %s set (unsupported)", path,
                             c, flags[f]);
                goto done;
            }
        if ((st = set_token(t, (int32_t)id->valuedouble, c, strlen(c), type, scratch)) != MT_OK) goto done;
    }
    if ((st = tok_index(t)) != MT_OK) goto done;
    if ((st = merges_alloc(t, (uint64_t)cJSON_GetArraySize(merges))) != MT_OK) goto done;
    int32_t rank = 0;
    cJSON_ArrayForEach(e, merges) {
        if (cJSON_IsString(e)) {
            st = add_merge_line(t, rank, e->valuestring, strlen(e->valuestring), scratch);
        } else if (cJSON_IsArray(e) && cJSON_GetArraySize(e) == 2 &&
                   cJSON_IsString(cJSON_GetArrayItem(e, 0)) && cJSON_IsString(cJSON_GetArrayItem(e, 1))) {
            const char *a = cJSON_GetArrayItem(e, 0)->valuestring, *b = cJSON_GetArrayItem(e, 1)->valuestring;
            st = add_merge(t, rank, a, strlen(a), b, strlen(b), scratch);
        } else {
            st = mt_fail(MT_ERR_FORMAT, "%s: model.merges[%d] is neither \"a b\" nor [a, b]", path, rank);
        }
        if (st != MT_OK) goto done;
        rank++;
    }
done:
    free(scratch);
    cJSON_Delete(root);
    if (st != MT_OK) {
        mt_tokenizer_free(t);
        return st;
    }
    *out = t;
    return MT_OK;
}

void mt_tokenizer_free(mt_tokenizer *t) {
    if (!t) return;
    free(t->type);
    free(t->off);
    free(t->len);
    free(t->pool);
    free(t->str_slots);
    free(t->merges);
    free(t->specials);
    free(t);
}

int mt_tokenizer_n_vocab(const mt_tokenizer *t) {
    return t->n_vocab;
}

int32_t mt_tokenizer_find(const mt_tokenizer *t, const char *text) {
    size_t n = strlen(text);
    for (int i = 0; i < t->n_specials; i++) {
        int32_t id = t->specials[i];
        if (t->len[id] == n && memcmp(t->pool + t->off[id], text, n) == 0) return id;
    }
    return str_lookup(t, text, n);
}

bool mt_tokenizer_is_special(const mt_tokenizer *t, int32_t id) {
    return id >= 0 && id < t->n_vocab && is_special_type(t->type[id]);
}

mt_status mt_tokenizer_token_bytes(const mt_tokenizer *t, int32_t id, const char **bytes, size_t *len) {
    if (id < 0 || id >= t->n_vocab)
        return mt_fail(MT_ERR_RANGE, "tokenizer: token id %d outside the vocabulary (0..%d)", id,
                       t->n_vocab - 1);
    *bytes = t->pool ? t->pool + t->off[id] : "";
    *len = t->len[id];
    return MT_OK;
}

// ---- pre-tokenizer -------------------------------------------------------------------------------------

enum { CL_OTHER = 0, CL_LETTER = 1, CL_NUMBER = 2, CL_SPACE = 3 };

// Unicode White_Space, the set \s matches.
static bool is_white_space(uint32_t c) {
    return (c >= 0x09 && c <= 0x0D) || c == 0x20 || c == 0x85 || c == 0xA0 || c == 0x1680 ||
           (c >= 0x2000 && c <= 0x200A) || c == 0x2028 || c == 0x2029 || c == 0x202F || c == 0x205F ||
           c == 0x3000;
}

static uint8_t classify(uint32_t c) {
    if (is_white_space(c)) return CL_SPACE;
    if (c < 0x80) {
        if ((c | 0x20) >= 'a' && (c | 0x20) <= 'z') return CL_LETTER;
        return c >= '0' && c <= '9' ? CL_NUMBER : CL_OTHER;
    }
    size_t lo = 0, hi = sizeof mt_uni_ranges / sizeof mt_uni_ranges[0];
    while (lo < hi) {
        size_t mid = (lo + hi) / 2;
        if (c < mt_uni_ranges[mid].first)
            hi = mid;
        else if (c > mt_uni_ranges[mid].last)
            lo = mid + 1;
        else
            return mt_uni_ranges[mid].cls;
    }
    return CL_OTHER;
}

static bool is_nl(uint32_t c) {
    return c == '\r' || c == '\n';
}

// Case-insensitive ASCII letter test for the contraction alternatives; 'ſ' (U+017F) folds to 's'.
static bool ci(uint32_t c, char want) {
    return c < 0x80 ? (char)(c | 0x20) == want : (want == 's' && c == 0x17F);
}

// Returns the end (exclusive, in code points) of the qwen2-pattern match starting at code point i < n.
// The alternatives are tried in pattern order with the pattern's greedy/backtracking outcome worked out
// per alternative, so the result equals a backtracking regex engine's leftmost-first match.
static size_t match_piece(const uint32_t *cp, const uint8_t *cl, size_t i, size_t n) {
    // (?i:'s|'t|'re|'ve|'m|'ll|'d)
    if (cp[i] == '\'' && i + 1 < n) {
        uint32_t a = cp[i + 1];
        if (ci(a, 's') || ci(a, 't') || ci(a, 'm') || ci(a, 'd')) return i + 2;
        if (i + 2 < n) {
            uint32_t b = cp[i + 2];
            if ((ci(a, 'r') && ci(b, 'e')) || (ci(a, 'v') && ci(b, 'e')) || (ci(a, 'l') && ci(b, 'l')))
                return i + 3;
        }
    }
    // [^\r\n\p{L}\p{N}]?\p{L}+
    size_t j = i;
    if (cl[i] != CL_LETTER && cl[i] != CL_NUMBER && !is_nl(cp[i])) j = i + 1;
    if (j < n && cl[j] == CL_LETTER) {
        while (j < n && cl[j] == CL_LETTER) j++;
        return j;
    }
    // \p{N}
    if (cl[i] == CL_NUMBER) return i + 1;
    //  ?[^\s\p{L}\p{N}]+[\r\n]*
    j = cp[i] == ' ' ? i + 1 : i;
    if (j < n && cl[j] == CL_OTHER) {
        while (j < n && cl[j] == CL_OTHER) j++;
        while (j < n && is_nl(cp[j])) j++;
        return j;
    }
    // Only whitespace is left here.
    MT_ASSERT(cl[i] == CL_SPACE);
    size_t q = i;
    while (q < n && cl[q] == CL_SPACE) q++;
    // \s*[\r\n]+ : the run up to its last line break
    for (size_t k = q; k > i; k--)
        if (is_nl(cp[k - 1])) return k;
    // \s+(?!\S) : the whole run at the end of text, else all but its last character
    if (q == n || q - i >= 2) return q == n ? q : q - 1;
    // \s+
    return q;
}

// ---- BPE -----------------------------------------------------------------------------------------------

typedef struct bpe_cand {
    int32_t rank;
    int32_t pos;   // left symbol
    int32_t right; // right symbol when pushed
    int32_t left_id, right_id;
} bpe_cand;

// Scratch for one encode call, sized by the input length (allocated once per call).
typedef struct bpe_work {
    int32_t *id, *prev, *next;
    bpe_cand *heap;
    size_t n_heap;
} bpe_work;

static bool cand_less(const bpe_cand *a, const bpe_cand *b) {
    return a->rank != b->rank ? a->rank < b->rank : a->pos < b->pos;
}

static void heap_push(bpe_work *w, bpe_cand c) {
    size_t i = w->n_heap++;
    while (i > 0) {
        size_t p = (i - 1) / 2;
        if (!cand_less(&c, &w->heap[p])) break;
        w->heap[i] = w->heap[p];
        i = p;
    }
    w->heap[i] = c;
}

static bpe_cand heap_pop(bpe_work *w) {
    bpe_cand top = w->heap[0], last = w->heap[--w->n_heap];
    size_t i = 0, n = w->n_heap;
    for (;;) {
        size_t c = 2 * i + 1;
        if (c >= n) break;
        if (c + 1 < n && cand_less(&w->heap[c + 1], &w->heap[c])) c++;
        if (!cand_less(&w->heap[c], &last)) break;
        w->heap[i] = w->heap[c];
        i = c;
    }
    if (n) w->heap[i] = last;
    return top;
}

static void push_pair(const mt_tokenizer *t, bpe_work *w, int32_t l) {
    int32_t r = w->next[l];
    if (r < 0) return;
    const merge_slot *m = merge_lookup(t, w->id[l], w->id[r]);
    if (m) heap_push(w, (bpe_cand){m->rank, l, r, w->id[l], w->id[r]});
}

// Merges the bytes s[0..n) and appends the resulting ids. Lowest rank first, leftmost on ties; each merge
// is O(log n), so long pieces stay fast.
static void bpe_piece(const mt_tokenizer *t, bpe_work *w, const unsigned char *s, size_t n, int32_t *ids,
                      size_t *n_ids) {
    if (n == 1) {
        ids[(*n_ids)++] = t->byte_id[s[0]];
        return;
    }
    for (size_t i = 0; i < n; i++) {
        w->id[i] = t->byte_id[s[i]];
        w->prev[i] = (int32_t)i - 1;
        w->next[i] = i + 1 < n ? (int32_t)i + 1 : -1;
    }
    w->n_heap = 0;
    for (size_t i = 0; i + 1 < n; i++) push_pair(t, w, (int32_t)i);
    while (w->n_heap) {
        bpe_cand c = heap_pop(w);
        // Stale if either symbol was merged away or changed since the candidate was pushed.
        if (w->id[c.pos] != c.left_id || w->next[c.pos] != c.right || w->id[c.right] != c.right_id) continue;
        const merge_slot *m = merge_lookup(t, c.left_id, c.right_id);
        w->id[c.pos] = m->result;
        int32_t nr = w->next[c.right];
        w->next[c.pos] = nr;
        if (nr >= 0) w->prev[nr] = c.pos;
        w->id[c.right] = -1;
        w->next[c.right] = -2;
        if (w->prev[c.pos] >= 0) push_pair(t, w, w->prev[c.pos]);
        push_pair(t, w, c.pos);
    }
    for (int32_t i = 0; i >= 0; i = w->next[i]) ids[(*n_ids)++] = w->id[i];
}

// Pre-tokenizes and merges one run of text without special tokens.
static void encode_plain(const mt_tokenizer *t, bpe_work *w, uint32_t *cp, uint8_t *cl, uint32_t *at,
                         const unsigned char *s, size_t len, int32_t *ids, size_t *n_ids) {
    size_t n = 0;
    for (size_t i = 0; i < len;) {
        uint32_t c;
        size_t k = utf8_decode(s + i, len - i, &c);
        // An invalid byte stands alone and counts as punctuation-like; BPE still encodes it byte-wise.
        if (k == 0) {
            cp[n] = 0xFFFD;
            cl[n] = CL_OTHER;
            k = 1;
        } else {
            cp[n] = c;
            cl[n] = classify(c);
        }
        at[n++] = (uint32_t)i;
        i += k;
    }
    at[n] = (uint32_t)len;
    for (size_t i = 0; i < n;) {
        size_t e = match_piece(cp, cl, i, n);
        MT_ASSERT(e > i && e <= n);
        bpe_piece(t, w, s + at[i], at[e] - at[i], ids, n_ids);
        i = e;
    }
}

// Longest special token starting at s[0..n), or -1.
static int32_t match_special(const mt_tokenizer *t, const char *s, size_t n) {
    if (!t->special_first[(unsigned char)s[0]]) return -1;
    for (int i = 0; i < t->n_specials; i++) {
        int32_t id = t->specials[i];
        if (t->len[id] <= n && memcmp(t->pool + t->off[id], s, t->len[id]) == 0) return id;
    }
    return -1;
}

mt_status mt_tokenizer_encode(const mt_tokenizer *t, const char *text, size_t len, bool parse_special,
                              int32_t **ids, size_t *n) {
    *ids = NULL;
    *n = 0;
    if (len > ((size_t)1 << 30))
        return mt_fail(MT_ERR_RANGE, "tokenizer: input of %zu bytes exceeds 1 GiB", len);
    // Every byte yields at most one token, so len ids always suffice.
    int32_t *out = mt_malloc((len + 1) * sizeof *out, "token ids");
    bpe_work w = {0};
    uint32_t *cp = mt_malloc((len + 1) * sizeof *cp, "code points");
    uint8_t *cl = mt_malloc(len + 1, "code point classes");
    uint32_t *at = mt_malloc((len + 1) * sizeof *at, "code point offsets");
    w.id = mt_malloc((len + 1) * sizeof *w.id, "bpe symbols");
    w.prev = mt_malloc((len + 1) * sizeof *w.prev, "bpe links");
    w.next = mt_malloc((len + 1) * sizeof *w.next, "bpe links");
    // Initial pairs plus at most two new candidates per merge.
    w.heap = mt_malloc((3 * len + 1) * sizeof *w.heap, "bpe heap");
    mt_status st = MT_OK;
    if (!out || !cp || !cl || !at || !w.id || !w.prev || !w.next || !w.heap) {
        st = MT_ERR_NOMEM;
        goto done;
    }
    size_t n_ids = 0, start = 0;
    for (size_t i = 0; i < len;) {
        int32_t sp = parse_special ? match_special(t, text + i, len - i) : -1;
        if (sp < 0) {
            i++;
            continue;
        }
        if (i > start)
            encode_plain(t, &w, cp, cl, at, (const unsigned char *)text + start, i - start, out, &n_ids);
        out[n_ids++] = sp;
        i += t->len[sp];
        start = i;
    }
    if (len > start)
        encode_plain(t, &w, cp, cl, at, (const unsigned char *)text + start, len - start, out, &n_ids);
    MT_ASSERT(n_ids <= len);
    *ids = out;
    *n = n_ids;
    out = NULL;
done:
    free(out);
    free(cp);
    free(cl);
    free(at);
    free(w.id);
    free(w.prev);
    free(w.next);
    free(w.heap);
    return st;
}

// ---- streaming detokenizer -----------------------------------------------------------------------------

void mt_detok_init(mt_detok *d, const mt_tokenizer *t) {
    memset(d, 0, sizeof *d);
    d->tok = t;
}

// Length a UTF-8 sequence starting with lead byte c should have, or 0 if c cannot start one.
static size_t utf8_seq_len(unsigned char c) {
    if (c < 0x80) return 1;
    if (c >= 0xC2 && c <= 0xDF) return 2;
    if (c >= 0xE0 && c <= 0xEF) return 3;
    if (c >= 0xF0 && c <= 0xF4) return 4;
    return 0;
}

// True if s[0..n) (n shorter than the full sequence) could still become a valid sequence.
static bool utf8_valid_prefix(const unsigned char *s, size_t n) {
    for (size_t i = 1; i < n; i++) {
        unsigned lo = 0x80, hi = 0xBF;
        if (i == 1) {
            if (s[0] == 0xE0)
                lo = 0xA0;
            else if (s[0] == 0xED)
                hi = 0x9F;
            else if (s[0] == 0xF0)
                lo = 0x90;
            else if (s[0] == 0xF4)
                hi = 0x8F;
        }
        if (s[i] < lo || s[i] > hi) return false;
    }
    return true;
}

// The bytes pending + token seen as one string, without copying a long token.
typedef struct byte_pair {
    const unsigned char *a, *b;
    size_t na, n;
} byte_pair;

static unsigned char bp_at(const byte_pair *p, size_t i) {
    return i < p->na ? p->a[i] : p->b[i - p->na];
}

// Emits the complete sequences of p into out; an incomplete but still valid tail is kept in d->pending
// unless `final`. Each maximal invalid part becomes one U+FFFD (as a lossy UTF-8 decode does). Returns
// bytes written, or -1 if cap is too small.
static int detok_emit(mt_detok *d, const byte_pair *p, bool final, char *out, size_t cap) {
    size_t o = 0;
    int n_pending = 0;
    char pending[8];
    for (size_t i = 0; i < p->n;) {
        unsigned char head[4] = {bp_at(p, i), 0, 0, 0};
        size_t want = utf8_seq_len(head[0]), have = 1;
        while (want > 1 && have < want && i + have < p->n) {
            head[have] = bp_at(p, i + have);
            if (!utf8_valid_prefix(head, have + 1)) break;
            have++;
        }
        if (want != 0 && have < want && i + have == p->n && !final) { // a character still arriving
            memcpy(pending, head, have);
            n_pending = (int)have;
            break;
        }
        bool bad = want == 0 || have < want;
        size_t m = bad ? 3 : have;
        if (o + m > cap) {
            mt_fail(MT_ERR_RANGE, "detokenizer: output buffer of %zu bytes too small", cap);
            return -1;
        }
        if (bad)
            memcpy(out + o, "\xEF\xBF\xBD", 3);
        else if (i >= p->na)
            memcpy(out + o, p->b + (i - p->na), m);
        else
            memcpy(out + o, head, m);
        o += m;
        i += have;
    }
    memcpy(d->pending, pending, (size_t)n_pending);
    d->n_pending = n_pending;
    return (int)o;
}

int mt_detok_push(mt_detok *d, int32_t id, char *out, size_t cap) {
    const char *b;
    size_t n;
    if (mt_tokenizer_token_bytes(d->tok, id, &b, &n) != MT_OK) return -1;
    unsigned char pend[8];
    memcpy(pend, d->pending, (size_t)d->n_pending);
    byte_pair p = {pend, (const unsigned char *)b, (size_t)d->n_pending, (size_t)d->n_pending + n};
    return detok_emit(d, &p, false, out, cap);
}

int mt_detok_flush(mt_detok *d, char *out, size_t cap) {
    unsigned char pend[8];
    memcpy(pend, d->pending, (size_t)d->n_pending);
    byte_pair p = {pend, NULL, (size_t)d->n_pending, (size_t)d->n_pending};
    return detok_emit(d, &p, true, out, cap);
}
