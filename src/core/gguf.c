// GGUF v2/v3 reader. The whole file is validated at open time: every count, length, offset and size is
// checked against the bytes that remain, with overflow-safe arithmetic, before anything is allocated or
// dereferenced. After a successful open, accessors only index tables built here and cannot read outside
// the mapping.
#include "gguf.h"

#include <errno.h>
#include <fcntl.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <unistd.h>

#define GGUF_MAGIC "GGUF"
#define GGUF_DEFAULT_ALIGNMENT 32
#define GGUF_MAX_KEY_LEN 65535
#define GGUF_MAX_NAME_LEN 255
// Arrays of arrays are legal; bound the recursion so a crafted file cannot exhaust the stack.
#define GGUF_MAX_ARRAY_DEPTH 8
// Smallest possible encodings, used to bound counts by the bytes left before allocating for them.
#define GGUF_MIN_KV_BYTES 13 // key length (8) + type (4) + smallest value (1)
#define GGUF_MIN_TENSOR_BYTES                                                                                \
    33 // name length (8) + 1-byte name + ndim (4) + one dim (8) + type (4) + offset (8)

typedef struct gguf_kv {
    mt_str key;
    uint64_t key_off; // file offset of the key, for messages
    mt_gguf_type type;
    uint64_t val_off; // file offset of the value (for arrays: of the first element)
    // Arrays only.
    mt_gguf_type elem_type;
    uint64_t count;
    uint64_t *str_offs; // string arrays: file offset of each element's length field
} gguf_kv;

struct mt_gguf {
    const uint8_t *base;
    uint64_t size;
    void *map; // non-NULL when we own an mmap of map_size bytes
    size_t map_size;
    uint32_t version;
    uint64_t alignment;
    uint64_t data_off;
    int64_t n_kv;
    gguf_kv *kv;
    int64_t *kv_hash; // open addressing, index + 1, 0 = empty
    uint64_t kv_hash_cap;
    int64_t n_tensors;
    mt_gguf_tensor *tensors;
    int64_t *t_hash;
    uint64_t t_hash_cap;
};

typedef struct reader {
    const uint8_t *p;
    uint64_t size;
    uint64_t pos;
} reader;

static const char *type_name(uint32_t t) {
    static const char *names[] = {"u8",   "i8",     "u16",   "i16", "u32", "i32", "f32",
                                  "bool", "string", "array", "u64", "i64", "f64"};
    return t <= MT_GGUF_F64 ? names[t] : "invalid";
}

// Fixed-size element bytes; 0 for strings and arrays.
static uint64_t type_size(uint32_t t) {
    switch (t) {
    case MT_GGUF_U8:
    case MT_GGUF_I8:
    case MT_GGUF_BOOL:
        return 1;
    case MT_GGUF_U16:
    case MT_GGUF_I16:
        return 2;
    case MT_GGUF_U32:
    case MT_GGUF_I32:
    case MT_GGUF_F32:
        return 4;
    case MT_GGUF_U64:
    case MT_GGUF_I64:
    case MT_GGUF_F64:
        return 8;
    default:
        return 0;
    }
}

// ---- little-endian reads, bounds-checked ----

static uint64_t left(const reader *r) {
    return r->size - r->pos;
}

static mt_status need(const reader *r, uint64_t n, const char *what) {
    if (n > left(r))
        return mt_fail(MT_ERR_FORMAT, "gguf: truncated %s at offset %llu: need %llu bytes, %llu left", what,
                       (unsigned long long)r->pos, (unsigned long long)n, (unsigned long long)left(r));
    return MT_OK;
}

static uint64_t le(const uint8_t *p, int n) {
    uint64_t v = 0;
    for (int i = n - 1; i >= 0; i--) v = (v << 8) | p[i];
    return v;
}

static mt_status rd_u32(reader *r, uint32_t *v, const char *what) {
    MT_TRY(need(r, 4, what));
    *v = (uint32_t)le(r->p + r->pos, 4);
    r->pos += 4;
    return MT_OK;
}

static mt_status rd_u64(reader *r, uint64_t *v, const char *what) {
    MT_TRY(need(r, 8, what));
    *v = le(r->p + r->pos, 8);
    r->pos += 8;
    return MT_OK;
}

// A length-prefixed string; `s` points into the buffer.
static mt_status rd_str(reader *r, mt_str *s, const char *what) {
    uint64_t at = r->pos;
    uint64_t len;
    MT_TRY(rd_u64(r, &len, what));
    if (len > left(r))
        return mt_fail(MT_ERR_FORMAT, "gguf: %s length at offset %llu: %llu exceeds the %llu bytes left",
                       what, (unsigned long long)at, (unsigned long long)len, (unsigned long long)left(r));
    s->ptr = (const char *)r->p + r->pos;
    s->len = len;
    r->pos += len;
    return MT_OK;
}

// ---- hashing (FNV-1a) for key and tensor-name lookup ----

static uint64_t hash_bytes(const char *s, uint64_t n) {
    uint64_t h = 1469598103934665603ull;
    for (uint64_t i = 0; i < n; i++) h = (h ^ (uint8_t)s[i]) * 1099511628211ull;
    return h;
}

static uint64_t hash_cap_for(int64_t n) {
    uint64_t cap = 16;
    while (cap < 2 * (uint64_t)n) cap *= 2;
    return cap;
}

static bool str_eq(mt_str a, const char *b, uint64_t blen) {
    return a.len == blen && memcmp(a.ptr, b, blen) == 0;
}

static int64_t kv_lookup(const mt_gguf *g, const char *key, uint64_t len) {
    if (!g->kv_hash) return -1;
    uint64_t mask = g->kv_hash_cap - 1;
    for (uint64_t h = hash_bytes(key, len) & mask;; h = (h + 1) & mask) {
        int64_t slot = g->kv_hash[h];
        if (slot == 0) return -1;
        if (str_eq(g->kv[slot - 1].key, key, len)) return slot - 1;
    }
}

static int64_t tensor_lookup(const mt_gguf *g, const char *name, uint64_t len) {
    if (!g->t_hash) return -1;
    uint64_t mask = g->t_hash_cap - 1;
    for (uint64_t h = hash_bytes(name, len) & mask;; h = (h + 1) & mask) {
        int64_t slot = g->t_hash[h];
        if (slot == 0) return -1;
        const char *n = g->tensors[slot - 1].name;
        if (strlen(n) == len && memcmp(n, name, len) == 0) return slot - 1;
    }
}

// ---- values ----

// Validates (and skips) one array body starting at the element type; `depth` counts nesting.
static mt_status skip_array(reader *r, int depth, uint32_t *elem_type, uint64_t *count) {
    uint64_t at = r->pos;
    if (depth > GGUF_MAX_ARRAY_DEPTH)
        return mt_fail(MT_ERR_FORMAT, "gguf: array nesting at offset %llu: deeper than %d levels",
                       (unsigned long long)at, GGUF_MAX_ARRAY_DEPTH);
    uint32_t et;
    uint64_t n;
    MT_TRY(rd_u32(r, &et, "array element type"));
    if (et > MT_GGUF_F64)
        return mt_fail(MT_ERR_FORMAT, "gguf: array element type at offset %llu: %u", (unsigned long long)at,
                       et);
    uint64_t count_at = r->pos;
    MT_TRY(rd_u64(r, &n, "array count"));
    // Every element takes at least this many bytes, so the count is bounded by what is left.
    uint64_t min_elem = et == MT_GGUF_STRING ? 8 : et == MT_GGUF_ARRAY ? 12 : type_size(et);
    if (n > left(r) / min_elem)
        return mt_fail(
            MT_ERR_FORMAT,
            "gguf: array count at offset %llu: %llu elements of %s do not fit in the %llu bytes left",
            (unsigned long long)count_at, (unsigned long long)n, type_name(et), (unsigned long long)left(r));
    *elem_type = et;
    *count = n;
    if (et == MT_GGUF_STRING) {
        for (uint64_t j = 0; j < n; j++) {
            mt_str s;
            MT_TRY(rd_str(r, &s, "array string"));
        }
    } else if (et == MT_GGUF_ARRAY) {
        for (uint64_t j = 0; j < n; j++) {
            uint32_t t2;
            uint64_t n2;
            MT_TRY(skip_array(r, depth + 1, &t2, &n2));
        }
    } else {
        r->pos += n * min_elem; // checked above
    }
    return MT_OK;
}

static mt_status parse_value(reader *r, gguf_kv *kv) {
    uint64_t at = r->pos;
    switch (kv->type) {
    case MT_GGUF_STRING: {
        mt_str s;
        kv->val_off = at;
        return rd_str(r, &s, "string value");
    }
    case MT_GGUF_ARRAY: {
        uint32_t et;
        uint64_t n;
        uint64_t body = r->pos + 12;
        MT_TRY(skip_array(r, 1, &et, &n));
        kv->elem_type = (mt_gguf_type)et;
        kv->count = n;
        kv->val_off = body;
        if (et == MT_GGUF_STRING && n > 0) {
            // Index the strings once so element j is O(1) (vocabularies have ~150k entries).
            kv->str_offs = mt_malloc(n * sizeof *kv->str_offs, "gguf string array index");
            if (!kv->str_offs) return MT_ERR_NOMEM;
            uint64_t p = body;
            for (uint64_t j = 0; j < n; j++) {
                kv->str_offs[j] = p;
                p += 8 + le(r->p + p, 8); // validated by skip_array
            }
        }
        return MT_OK;
    }
    default: {
        uint64_t sz = type_size(kv->type);
        MT_TRY(need(r, sz, "value"));
        if (kv->type == MT_GGUF_BOOL && r->p[at] > 1)
            return mt_fail(MT_ERR_FORMAT, "gguf: bool value of '%.*s' at offset %llu: %u", (int)kv->key.len,
                           kv->key.ptr, (unsigned long long)at, r->p[at]);
        kv->val_off = at;
        r->pos += sz;
        return MT_OK;
    }
    }
}

// ---- parsing ----

static mt_status parse_header(mt_gguf *g, reader *r, uint64_t *n_tensors, uint64_t *n_kv) {
    MT_TRY(need(r, 4, "magic"));
    if (memcmp(r->p, GGUF_MAGIC, 4) != 0)
        return mt_fail(MT_ERR_FORMAT, "gguf: bad magic at offset 0: %02x %02x %02x %02x (expected 'GGUF')",
                       r->p[0], r->p[1], r->p[2], r->p[3]);
    r->pos = 4;
    MT_TRY(rd_u32(r, &g->version, "version"));
    if (g->version != 2 && g->version != 3) {
        if (g->version == 0x03000000u || g->version == 0x02000000u)
            return mt_fail(MT_ERR_UNSUPPORTED,
                           "gguf: version at offset 4: %u (a big-endian file; only "
                           "little-endian is supported)",
                           g->version);
        return mt_fail(MT_ERR_UNSUPPORTED, "gguf: version at offset 4: %u (supported: 2, 3)", g->version);
    }
    MT_TRY(rd_u64(r, n_tensors, "tensor count"));
    MT_TRY(rd_u64(r, n_kv, "key/value count"));
    if (*n_kv > left(r) / GGUF_MIN_KV_BYTES)
        return mt_fail(MT_ERR_FORMAT,
                       "gguf: key/value count at offset 16: %llu cannot fit in the %llu bytes left",
                       (unsigned long long)*n_kv, (unsigned long long)left(r));
    if (*n_tensors > (left(r) - *n_kv * GGUF_MIN_KV_BYTES) / GGUF_MIN_TENSOR_BYTES)
        return mt_fail(MT_ERR_FORMAT,
                       "gguf: tensor count at offset 8: %llu cannot fit in the %llu bytes left",
                       (unsigned long long)*n_tensors, (unsigned long long)left(r));
    return MT_OK;
}

static mt_status parse_kvs(mt_gguf *g, reader *r, uint64_t n_kv) {
    g->kv = mt_calloc(n_kv, sizeof *g->kv, "gguf key/value table");
    g->kv_hash_cap = hash_cap_for((int64_t)n_kv);
    g->kv_hash = mt_calloc(g->kv_hash_cap, sizeof *g->kv_hash, "gguf key hash");
    if (!g->kv || !g->kv_hash) return MT_ERR_NOMEM;
    for (uint64_t i = 0; i < n_kv; i++) {
        gguf_kv *kv = &g->kv[i];
        kv->key_off = r->pos;
        MT_TRY(rd_str(r, &kv->key, "key"));
        if (kv->key.len == 0 || kv->key.len > GGUF_MAX_KEY_LEN)
            return mt_fail(MT_ERR_FORMAT, "gguf: key length at offset %llu: %llu (must be 1..%d)",
                           (unsigned long long)kv->key_off, (unsigned long long)kv->key.len,
                           GGUF_MAX_KEY_LEN);
        if (kv_lookup(g, kv->key.ptr, kv->key.len) >= 0)
            return mt_fail(MT_ERR_FORMAT, "gguf: duplicate key at offset %llu: '%.*s'",
                           (unsigned long long)kv->key_off, (int)kv->key.len, kv->key.ptr);
        uint64_t type_at = r->pos;
        uint32_t type;
        MT_TRY(rd_u32(r, &type, "value type"));
        if (type > MT_GGUF_F64)
            return mt_fail(MT_ERR_FORMAT, "gguf: value type of '%.*s' at offset %llu: %u", (int)kv->key.len,
                           kv->key.ptr, (unsigned long long)type_at, type);
        kv->type = (mt_gguf_type)type;
        MT_TRY(parse_value(r, kv));
        g->n_kv = (int64_t)i + 1; // so close() frees what was allocated so far
        uint64_t mask = g->kv_hash_cap - 1;
        uint64_t h = hash_bytes(kv->key.ptr, kv->key.len) & mask;
        while (g->kv_hash[h]) h = (h + 1) & mask;
        g->kv_hash[h] = (int64_t)i + 1;
    }
    int64_t a = kv_lookup(g, "general.alignment", strlen("general.alignment"));
    g->alignment = GGUF_DEFAULT_ALIGNMENT;
    if (a >= 0) {
        const gguf_kv *kv = &g->kv[a];
        if (kv->type != MT_GGUF_U32)
            return mt_fail(MT_ERR_FORMAT, "gguf: general.alignment at offset %llu: type %s (expected u32)",
                           (unsigned long long)kv->key_off, type_name(kv->type));
        uint32_t v = (uint32_t)le(g->base + kv->val_off, 4);
        if (v == 0 || (v & (v - 1)) != 0)
            return mt_fail(MT_ERR_FORMAT,
                           "gguf: general.alignment at offset %llu: %u (must be a power of two)",
                           (unsigned long long)kv->val_off, v);
        g->alignment = v;
    }
    return MT_OK;
}

// Reads one tensor info into `t` (everything but the data pointer, which needs the data offset).
static mt_status parse_tensor_info(reader *r, mt_gguf_tensor *t, uint64_t *type_out, int64_t *ne,
                                   int *ndim_out) {
    uint64_t at = r->pos;
    mt_str name;
    MT_TRY(rd_str(r, &name, "tensor name"));
    if (name.len == 0 || name.len > GGUF_MAX_NAME_LEN)
        return mt_fail(MT_ERR_FORMAT, "gguf: tensor name length at offset %llu: %llu (must be 1..%d)",
                       (unsigned long long)at, (unsigned long long)name.len, GGUF_MAX_NAME_LEN);
    memcpy(t->name, name.ptr, name.len);
    t->name[name.len] = '\0';
    if (strlen(t->name) != name.len)
        return mt_fail(MT_ERR_FORMAT, "gguf: tensor name at offset %llu: contains a NUL byte",
                       (unsigned long long)at);
    uint64_t ndim_at = r->pos;
    uint32_t ndim;
    MT_TRY(rd_u32(r, &ndim, "tensor rank"));
    if (ndim < 1 || ndim > MT_MAX_DIMS)
        return mt_fail(MT_ERR_FORMAT, "gguf: rank of tensor '%s' at offset %llu: %u (must be 1..%d)", t->name,
                       (unsigned long long)ndim_at, ndim, MT_MAX_DIMS);
    for (uint32_t d = 0; d < ndim; d++) {
        uint64_t dim_at = r->pos;
        uint64_t v;
        MT_TRY(rd_u64(r, &v, "tensor dimension"));
        if (v == 0 || v > INT64_MAX)
            return mt_fail(MT_ERR_FORMAT, "gguf: dimension %u of tensor '%s' at offset %llu: %llu", d,
                           t->name, (unsigned long long)dim_at, (unsigned long long)v);
        ne[d] = (int64_t)v;
    }
    uint64_t type_at = r->pos;
    uint32_t type;
    MT_TRY(rd_u32(r, &type, "tensor type"));
    const mt_dtype_info *di = mt_dtype_get((int)type);
    if (type >= MT_DTYPE_END || !di->name)
        return mt_fail(MT_ERR_UNSUPPORTED,
                       "gguf: type of tensor '%s' at offset %llu: unsupported dtype id %u", t->name,
                       (unsigned long long)type_at, type);
    if (ne[0] % di->block_elems != 0)
        return mt_fail(
            MT_ERR_FORMAT,
            "gguf: dimension 0 of tensor '%s' at offset %llu: %lld is not a multiple of the %s block "
            "size %d",
            t->name, (unsigned long long)(ndim_at + 4), (long long)ne[0], di->name, di->block_elems);
    // nbytes = ne0/block * block_bytes * ne1 * ne2 * ne3, each step checked against int64 and size_t.
    uint64_t limit = (uint64_t)INT64_MAX < (uint64_t)SIZE_MAX ? (uint64_t)INT64_MAX : (uint64_t)SIZE_MAX;
    uint64_t nb = (uint64_t)(ne[0] / di->block_elems);
    uint64_t nelem = (uint64_t)ne[0];
    bool overflow = nb > limit / (uint64_t)di->block_bytes;
    nb *= (uint64_t)di->block_bytes;
    for (uint32_t d = 1; d < ndim && !overflow; d++) {
        if (nb > limit / (uint64_t)ne[d] || nelem > limit / (uint64_t)ne[d]) overflow = true;
        nb *= (uint64_t)ne[d];
        nelem *= (uint64_t)ne[d];
    }
    if (overflow)
        return mt_fail(MT_ERR_FORMAT, "gguf: shape of tensor '%s' at offset %llu: the size overflows 64 bits",
                       t->name, (unsigned long long)ndim_at);
    t->nbytes = nb;
    MT_TRY(rd_u64(r, &t->offset, "tensor data offset"));
    *type_out = type;
    *ndim_out = (int)ndim;
    return MT_OK;
}

// Offsets of each tensor's info in the file, kept to name the offset in later checks.
static mt_status parse_tensors(mt_gguf *g, reader *r, uint64_t n_tensors) {
    if (n_tensors > left(r) / GGUF_MIN_TENSOR_BYTES)
        return mt_fail(MT_ERR_FORMAT,
                       "gguf: tensor count at offset 8: %llu cannot fit in the %llu bytes left",
                       (unsigned long long)n_tensors, (unsigned long long)left(r));
    g->tensors = mt_calloc(n_tensors, sizeof *g->tensors, "gguf tensor table");
    uint64_t *info_off = mt_calloc(n_tensors, sizeof *info_off, "gguf tensor offsets");
    uint32_t *types = mt_calloc(n_tensors, sizeof *types, "gguf tensor types");
    int64_t(*shapes)[MT_MAX_DIMS] = mt_calloc(n_tensors, sizeof *shapes, "gguf tensor shapes");
    int *ndims = mt_calloc(n_tensors, sizeof *ndims, "gguf tensor ranks");
    int64_t *order = mt_calloc(n_tensors, sizeof *order, "gguf tensor order");
    g->t_hash_cap = hash_cap_for((int64_t)n_tensors);
    g->t_hash = mt_calloc(g->t_hash_cap, sizeof *g->t_hash, "gguf tensor hash");
    mt_status st = MT_OK;
    if (!g->tensors || !info_off || !types || !shapes || !ndims || !order || !g->t_hash) {
        st = MT_ERR_NOMEM;
        goto done;
    }
    for (uint64_t i = 0; i < n_tensors; i++) {
        mt_gguf_tensor *t = &g->tensors[i];
        info_off[i] = r->pos;
        uint64_t type = 0;
        st = parse_tensor_info(r, t, &type, shapes[i], &ndims[i]);
        if (st != MT_OK) goto done;
        types[i] = (uint32_t)type;
        uint64_t len = strlen(t->name);
        if (tensor_lookup(g, t->name, len) >= 0) {
            st = mt_fail(MT_ERR_FORMAT, "gguf: duplicate tensor name at offset %llu: '%s'",
                         (unsigned long long)info_off[i], t->name);
            goto done;
        }
        uint64_t mask = g->t_hash_cap - 1;
        uint64_t h = hash_bytes(t->name, len) & mask;
        while (g->t_hash[h]) h = (h + 1) & mask;
        g->t_hash[h] = (int64_t)i + 1;
        g->n_tensors = (int64_t)i + 1;
    }
    // The data section starts at the next multiple of the alignment.
    uint64_t pad = (g->alignment - r->pos % g->alignment) % g->alignment;
    g->data_off = r->pos + pad;
    if (n_tensors > 0 && pad > left(r)) {
        st = mt_fail(
            MT_ERR_FORMAT, "gguf: data section at offset %llu: padding to %llu runs past the end (%llu)",
            (unsigned long long)r->pos, (unsigned long long)g->data_off, (unsigned long long)r->size);
        goto done;
    }
    uint64_t data_size = g->data_off <= r->size ? r->size - g->data_off : 0;
    for (uint64_t i = 0; i < n_tensors; i++) {
        mt_gguf_tensor *t = &g->tensors[i];
        if (t->offset % g->alignment != 0) {
            st = mt_fail(MT_ERR_FORMAT,
                         "gguf: data offset of tensor '%s' (info at offset %llu): %llu is not a "
                         "multiple of the alignment %llu",
                         t->name, (unsigned long long)info_off[i], (unsigned long long)t->offset,
                         (unsigned long long)g->alignment);
            goto done;
        }
        if (t->offset > data_size || t->nbytes > data_size - t->offset) {
            st = mt_fail(MT_ERR_FORMAT,
                         "gguf: data of tensor '%s' (info at offset %llu): bytes [%llu, +%llu) of "
                         "the data section lie outside its %llu bytes",
                         t->name, (unsigned long long)info_off[i], (unsigned long long)t->offset,
                         (unsigned long long)t->nbytes, (unsigned long long)data_size);
            goto done;
        }
        st = mt_tensor_init(&t->t, (mt_dtype)types[i], ndims[i], shapes[i],
                            (void *)(g->base + g->data_off + t->offset));
        if (st != MT_OK) {
            char why[256];
            snprintf(why, sizeof why, "%s", mt_last_error());
            st = mt_fail(MT_ERR_FORMAT, "gguf: tensor '%s' at offset %llu: %s", t->name,
                         (unsigned long long)info_off[i], why);
            goto done;
        }
        t->t.name = t->name;
        order[i] = (int64_t)i;
    }
    // Overlap check: sort by offset (insertion sort is fine for sorted inputs; shell sort bounds the rest).
    for (uint64_t gap = n_tensors / 2; gap > 0; gap /= 2) {
        for (uint64_t i = gap; i < n_tensors; i++) {
            int64_t v = order[i];
            uint64_t j = i;
            while (j >= gap && g->tensors[order[j - gap]].offset > g->tensors[v].offset) {
                order[j] = order[j - gap];
                j -= gap;
            }
            order[j] = v;
        }
    }
    for (uint64_t i = 1; i < n_tensors; i++) {
        const mt_gguf_tensor *a = &g->tensors[order[i - 1]], *b = &g->tensors[order[i]];
        if (b->offset < a->offset + a->nbytes) {
            st = mt_fail(MT_ERR_FORMAT,
                         "gguf: data of tensor '%s' (info at offset %llu): offset %llu overlaps "
                         "tensor '%s' at [%llu, %llu)",
                         b->name, (unsigned long long)info_off[order[i]], (unsigned long long)b->offset,
                         a->name, (unsigned long long)a->offset, (unsigned long long)(a->offset + a->nbytes));
            goto done;
        }
    }
done:
    free(info_off);
    free(types);
    free(shapes);
    free(ndims);
    free(order);
    return st;
}

static mt_status parse(mt_gguf *g) {
    reader r = {g->base, g->size, 0};
    uint64_t n_tensors, n_kv;
    MT_TRY(parse_header(g, &r, &n_tensors, &n_kv));
    MT_TRY(parse_kvs(g, &r, n_kv));
    MT_TRY(parse_tensors(g, &r, n_tensors));
    return MT_OK;
}

static mt_status open_common(mt_gguf *g, mt_gguf **out) {
    mt_status st = parse(g);
    if (st != MT_OK) {
        mt_gguf_close(g);
        return st;
    }
    *out = g;
    return MT_OK;
}

mt_status mt_gguf_open_memory(const void *data, size_t size, mt_gguf **out) {
    static const uint8_t empty[1];
    *out = NULL;
    if (!data && size > 0) return mt_fail(MT_ERR_INVALID, "gguf: NULL buffer of %zu bytes", size);
    mt_gguf *g = mt_calloc(1, sizeof *g, "gguf reader");
    if (!g) return MT_ERR_NOMEM;
    g->base = data ? data : empty;
    g->size = size;
    return open_common(g, out);
}

mt_status mt_gguf_open(const char *path, mt_gguf **out) {
    *out = NULL;
    int fd = open(path, O_RDONLY | O_CLOEXEC);
    if (fd < 0) return mt_fail(MT_ERR_IO, "%s: cannot open: %s", path, strerror(errno));
    struct stat sb;
    if (fstat(fd, &sb) != 0 || !S_ISREG(sb.st_mode)) {
        close(fd);
        return mt_fail(MT_ERR_IO, "%s: not a regular file", path);
    }
    size_t size = (size_t)sb.st_size;
    void *map = NULL;
    if (size > 0) {
        map = mmap(NULL, size, PROT_READ, MAP_PRIVATE, fd, 0);
        if (map == MAP_FAILED) {
            int e = errno;
            close(fd);
            return mt_fail(MT_ERR_IO, "%s: cannot map %zu bytes: %s", path, size, strerror(e));
        }
    }
    close(fd); // the mapping stays valid
    mt_gguf *g = mt_calloc(1, sizeof *g, "gguf reader");
    if (!g) {
        if (map) munmap(map, size);
        return MT_ERR_NOMEM;
    }
    static const uint8_t empty[1];
    g->base = map ? map : empty;
    g->size = size;
    g->map = map;
    g->map_size = size;
    mt_status st = open_common(g, out);
    if (st != MT_OK) {
        // Name the file in front of the parser's message.
        char why[400];
        snprintf(why, sizeof why, "%s", mt_last_error());
        mt_fail(st, "%s: %s", path, why);
    }
    return st;
}

void mt_gguf_close(mt_gguf *g) {
    if (!g) return;
    if (g->kv)
        for (int64_t i = 0; i < g->n_kv; i++) free(g->kv[i].str_offs);
    free(g->kv);
    free(g->kv_hash);
    free(g->tensors);
    free(g->t_hash);
    if (g->map) munmap(g->map, g->map_size);
    free(g);
}

// ---- accessors ----

uint32_t mt_gguf_version(const mt_gguf *g) {
    return g->version;
}
size_t mt_gguf_file_size(const mt_gguf *g) {
    return (size_t)g->size;
}
uint64_t mt_gguf_alignment(const mt_gguf *g) {
    return g->alignment;
}
int64_t mt_gguf_n_kv(const mt_gguf *g) {
    return g->n_kv;
}
int64_t mt_gguf_n_tensors(const mt_gguf *g) {
    return g->n_tensors;
}

int64_t mt_gguf_find(const mt_gguf *g, const char *key) {
    return kv_lookup(g, key, strlen(key));
}

mt_str mt_gguf_key(const mt_gguf *g, int64_t i) {
    MT_ASSERT(i >= 0 && i < g->n_kv);
    return g->kv[i].key;
}

mt_gguf_type mt_gguf_kv_type(const mt_gguf *g, int64_t i) {
    MT_ASSERT(i >= 0 && i < g->n_kv);
    return g->kv[i].type;
}

// Messages quote at most this much of a key.
#define KEYF "'%.*s'"
#define KEYA(kv) (int)((kv)->key.len > 200 ? 200 : (kv)->key.len), (kv)->key.ptr

static mt_status get_kv(const mt_gguf *g, int64_t i, const gguf_kv **out) {
    if (i < 0 || i >= g->n_kv)
        return mt_fail(MT_ERR_FORMAT, "gguf: key index %lld: missing key (the file has %lld keys)",
                       (long long)i, (long long)g->n_kv);
    *out = &g->kv[i];
    return MT_OK;
}

static mt_status wrong_type(const gguf_kv *kv, const char *expected) {
    return mt_fail(MT_ERR_FORMAT, "gguf: key " KEYF " at offset %llu: type %s, expected %s", KEYA(kv),
                   (unsigned long long)kv->key_off, type_name(kv->type), expected);
}

// Any integer value as a sign flag plus magnitude bits, so every target type can range-check it.
static mt_status get_int(const mt_gguf *g, int64_t i, const gguf_kv **kvo, bool *neg, uint64_t *mag) {
    const gguf_kv *kv = NULL;
    MT_TRY(get_kv(g, i, &kv));
    *kvo = kv;
    const uint8_t *p = g->base + kv->val_off;
    int64_t s = 0;
    switch (kv->type) {
    case MT_GGUF_U8:
    case MT_GGUF_U16:
    case MT_GGUF_U32:
    case MT_GGUF_U64:
        *neg = false;
        *mag = le(p, (int)type_size(kv->type));
        return MT_OK;
    case MT_GGUF_I8:
        s = (int8_t)p[0];
        break;
    case MT_GGUF_I16:
        s = (int16_t)le(p, 2);
        break;
    case MT_GGUF_I32:
        s = (int32_t)le(p, 4);
        break;
    case MT_GGUF_I64:
        s = (int64_t)le(p, 8);
        break;
    default:
        return wrong_type(kv, "an integer");
    }
    *neg = s < 0;
    *mag = s < 0 ? (uint64_t)0 - (uint64_t)s : (uint64_t)s;
    return MT_OK;
}

static mt_status out_of_range(const gguf_kv *kv, bool neg, uint64_t mag, const char *target) {
    return mt_fail(MT_ERR_FORMAT, "gguf: key " KEYF " at offset %llu: value %s%llu does not fit %s", KEYA(kv),
                   (unsigned long long)kv->key_off, neg ? "-" : "", (unsigned long long)mag, target);
}

mt_status mt_gguf_get_u32(const mt_gguf *g, int64_t i, uint32_t *out) {
    const gguf_kv *kv = NULL;
    bool neg;
    uint64_t mag;
    MT_TRY(get_int(g, i, &kv, &neg, &mag));
    if (neg || mag > UINT32_MAX) return out_of_range(kv, neg, mag, "u32");
    *out = (uint32_t)mag;
    return MT_OK;
}

mt_status mt_gguf_get_u64(const mt_gguf *g, int64_t i, uint64_t *out) {
    const gguf_kv *kv = NULL;
    bool neg;
    uint64_t mag;
    MT_TRY(get_int(g, i, &kv, &neg, &mag));
    if (neg) return out_of_range(kv, neg, mag, "u64");
    *out = mag;
    return MT_OK;
}

mt_status mt_gguf_get_i64(const mt_gguf *g, int64_t i, int64_t *out) {
    const gguf_kv *kv = NULL;
    bool neg;
    uint64_t mag;
    MT_TRY(get_int(g, i, &kv, &neg, &mag));
    if (!neg && mag > (uint64_t)INT64_MAX) return out_of_range(kv, neg, mag, "i64");
    if (neg && mag > (uint64_t)INT64_MAX + 1) return out_of_range(kv, neg, mag, "i64");
    *out = neg ? (int64_t)(0 - mag) : (int64_t)mag;
    return MT_OK;
}

mt_status mt_gguf_get_f32(const mt_gguf *g, int64_t i, float *out) {
    const gguf_kv *kv = NULL;
    MT_TRY(get_kv(g, i, &kv));
    const uint8_t *p = g->base + kv->val_off;
    if (kv->type == MT_GGUF_F32) {
        uint32_t u = (uint32_t)le(p, 4);
        memcpy(out, &u, 4);
    } else if (kv->type == MT_GGUF_F64) {
        uint64_t u = le(p, 8);
        double d;
        memcpy(&d, &u, 8);
        *out = (float)d;
    } else {
        return wrong_type(kv, "f32 or f64");
    }
    return MT_OK;
}

mt_status mt_gguf_get_bool(const mt_gguf *g, int64_t i, bool *out) {
    const gguf_kv *kv = NULL;
    MT_TRY(get_kv(g, i, &kv));
    if (kv->type != MT_GGUF_BOOL) return wrong_type(kv, "bool");
    *out = g->base[kv->val_off] != 0;
    return MT_OK;
}

static mt_str str_at(const mt_gguf *g, uint64_t off) {
    mt_str s = {(const char *)g->base + off + 8, le(g->base + off, 8)};
    return s;
}

mt_status mt_gguf_get_str(const mt_gguf *g, int64_t i, mt_str *out) {
    const gguf_kv *kv = NULL;
    MT_TRY(get_kv(g, i, &kv));
    if (kv->type != MT_GGUF_STRING) return wrong_type(kv, "string");
    *out = str_at(g, kv->val_off);
    return MT_OK;
}

mt_status mt_gguf_get_arr(const mt_gguf *g, int64_t i, mt_gguf_type *elem_type, uint64_t *count) {
    const gguf_kv *kv = NULL;
    MT_TRY(get_kv(g, i, &kv));
    if (kv->type != MT_GGUF_ARRAY) return wrong_type(kv, "array");
    *elem_type = kv->elem_type;
    *count = kv->count;
    return MT_OK;
}

mt_status mt_gguf_get_arr_str(const mt_gguf *g, int64_t i, uint64_t j, mt_str *out) {
    const gguf_kv *kv = NULL;
    MT_TRY(get_kv(g, i, &kv));
    if (kv->type != MT_GGUF_ARRAY || kv->elem_type != MT_GGUF_STRING)
        return mt_fail(MT_ERR_FORMAT,
                       "gguf: key " KEYF " at offset %llu: type %s%s%s, expected array of string", KEYA(kv),
                       (unsigned long long)kv->key_off, type_name(kv->type),
                       kv->type == MT_GGUF_ARRAY ? " of " : "",
                       kv->type == MT_GGUF_ARRAY ? type_name(kv->elem_type) : "");
    if (j >= kv->count)
        return mt_fail(MT_ERR_RANGE, "gguf: key " KEYF ": element %llu of an array of %llu", KEYA(kv),
                       (unsigned long long)j, (unsigned long long)kv->count);
    *out = str_at(g, kv->str_offs[j]);
    return MT_OK;
}

mt_status mt_gguf_get_arr_data(const mt_gguf *g, int64_t i, const void **data) {
    const gguf_kv *kv = NULL;
    MT_TRY(get_kv(g, i, &kv));
    if (kv->type != MT_GGUF_ARRAY || type_size(kv->elem_type) == 0)
        return mt_fail(MT_ERR_FORMAT,
                       "gguf: key " KEYF " at offset %llu: type %s%s%s, expected array of numbers", KEYA(kv),
                       (unsigned long long)kv->key_off, type_name(kv->type),
                       kv->type == MT_GGUF_ARRAY ? " of " : "",
                       kv->type == MT_GGUF_ARRAY ? type_name(kv->elem_type) : "");
    *data = g->base + kv->val_off;
    return MT_OK;
}

mt_status mt_gguf_u32_or(const mt_gguf *g, const char *key, uint32_t dflt, uint32_t *out) {
    int64_t i = mt_gguf_find(g, key);
    if (i < 0) {
        *out = dflt;
        return MT_OK;
    }
    return mt_gguf_get_u32(g, i, out);
}

mt_status mt_gguf_f32_or(const mt_gguf *g, const char *key, float dflt, float *out) {
    int64_t i = mt_gguf_find(g, key);
    if (i < 0) {
        *out = dflt;
        return MT_OK;
    }
    return mt_gguf_get_f32(g, i, out);
}

const mt_gguf_tensor *mt_gguf_tensor_at(const mt_gguf *g, int64_t i) {
    if (i < 0 || i >= g->n_tensors) return NULL;
    return &g->tensors[i];
}

const mt_gguf_tensor *mt_gguf_tensor_by_name(const mt_gguf *g, const char *name) {
    int64_t i = tensor_lookup(g, name, strlen(name));
    return i < 0 ? NULL : &g->tensors[i];
}
