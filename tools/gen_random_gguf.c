// Writes a random-weight Qwen2.5 GGUF at exact model shapes, fast enough to make a 15 GB 7B F16 file on
// the benchmark machine in seconds: each weight type gets one buffer of valid random blocks (F16 values of
// sane magnitude, Q8_0/Q4_K/Q6_K blocks with small positive f16 scales), written over and over, so the run
// is bound by the disk, not by a random generator. Decode/prefill speed depends on shapes and dtypes only.
// The tokenizer.* keys are copied byte for byte from another GGUF (--vocab-from).
//
//   cc -O2 -o gen_random_gguf tools/gen_random_gguf.c -lm
//   gen_random_gguf OUT.gguf --vocab-from V.gguf --dtype f16|q8_0|q4_k_m [--shape
//   0.5b|7b|E,L,H,HKV,FF,V,tied]
//
// q4_k_m follows llama.cpp's mix: Q4_K matrices, Q6_K output and, in the first and last eighth of the
// layers and every third layer between, Q6_K attn_v and ffn_down.
#include <math.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

enum { T_F32 = 0, T_F16 = 1, T_Q8_0 = 8, T_Q4_K = 12, T_Q6_K = 14 };
enum { KV_U32 = 4, KV_F32 = 6, KV_STR = 8, KV_ARR = 9 };
#define ALIGN 32
#define BUF_BYTES (64u << 20)

typedef struct {
    char name[64];
    int type;
    uint64_t ne0, ne1; // ne1 = 1 for vectors
    int vec_kind;      // vectors: 1 = norm weight (~1), 2 = bias (~0)
    uint64_t offset;
} tensor;

static uint64_t rng_state = 0x9e3779b97f4a7c15ull;
static uint64_t rnd(void) { // splitmix64: plenty for filler bytes
    uint64_t z = (rng_state += 0x9e3779b97f4a7c15ull);
    z = (z ^ (z >> 30)) * 0xbf58476d1ce4e5b9ull;
    z = (z ^ (z >> 27)) * 0x94d049bb133111ebull;
    return z ^ (z >> 31);
}

static int blk_elems(int t) {
    return t == T_F32 || t == T_F16 ? 1 : t == T_Q8_0 ? 32 : 256;
}
static int blk_bytes(int t) {
    switch (t) {
    case T_F32:
        return 4;
    case T_F16:
        return 2;
    case T_Q8_0:
        return 34;
    case T_Q4_K:
        return 144;
    default:
        return 210;
    }
}

static void die(const char *m) {
    fprintf(stderr, "gen_random_gguf: %s\n", m);
    exit(1);
}

static void put_f16(uint8_t *p, uint16_t h) {
    p[0] = (uint8_t)h, p[1] = (uint8_t)(h >> 8);
}

// Positive normal f16 values only (all this generator writes).
static float f16_value(uint16_t h) {
    return ldexpf(1.0f + (float)(h & 0x3ff) / 1024.0f, (int)((h >> 10) & 0x1f) - 15);
}
static uint16_t f16_bits(float v) {
    int e;
    float m = frexpf(v, &e); // v = m 2^e, m in [0.5, 1)
    return (uint16_t)(((e - 1 + 15) << 10) | ((uint32_t)((2.0f * m - 1.0f) * 1024.0f + 0.5f) & 0x3ff));
}

// A buffer of whole random blocks of type t; scales are small positive f16 values (per type below) so
// dequantized weights have a standard deviation near 0.08 and activations stay in range through every
// layer.
static uint8_t *make_buf(int t, size_t *n_blocks) {
    size_t bb = (size_t)blk_bytes(t), nb = BUF_BYTES / bb;
    uint8_t *b = malloc(nb * bb);
    if (!b) die("out of memory");
    for (size_t i = 0; i < nb * bb; i += 8) {
        uint64_t r = rnd();
        memcpy(b + i, &r, nb * bb - i < 8 ? nb * bb - i : 8);
    }
    for (size_t i = 0; i < nb; i++) {
        uint8_t *blk = b + i * bb;
        uint16_t sc = (uint16_t)((5u << 10) | (rnd() & 0x3ff)); // exponent 5: 2^-10 * (1 + m)
        if (t == T_F16) { // sign | exponent 9..13 (2^-6 .. 2^-2) | mantissa
            uint64_t r = rnd();
            put_f16(blk, (uint16_t)((r & 0x8000) | ((9 + (r >> 20) % 5) << 10) | (r & 0x3ff)));
        } else if (t == T_Q8_0) {
            put_f16(blk, sc);
        } else if (t == T_Q4_K) {
            // w = d sc_j q - dmin m_j with q in 0..15 and sc_j, m_j in 0..63: dmin = 7.5 d centres every
            // matrix on zero (mean 7.5 d (sc_j - m_j)); with dmin = d the weights were all biased positive,
            // and activations grew ~100x per matrix until they left the F16 range. d = 2^-12 (1 + m) keeps
            // the weights' sd near the other types' (~0.08; 2^-10 gave ~0.35).
            uint16_t d = (uint16_t)(sc - (2u << 10));
            put_f16(blk, d), put_f16(blk + 2, f16_bits(7.5f * f16_value(d)));
        } else if (t == T_Q6_K) {
            // w = d sc_j q, sc_j a random int8, q in -32..31: d = 2^-14 (1 + m) gives sd ~0.08 (2^-10: ~1.3)
            put_f16(blk + 208, (uint16_t)(sc - (4u << 10)));
        }
    }
    *n_blocks = nb;
    return b;
}

static void w_bytes(FILE *f, const void *p, size_t n) {
    if (fwrite(p, 1, n, f) != n) die("write failed");
}
static void w_u32(FILE *f, uint32_t v) {
    w_bytes(f, &v, 4);
}
static void w_u64(FILE *f, uint64_t v) {
    w_bytes(f, &v, 8);
}
static void w_str(FILE *f, const char *s) {
    w_u64(f, strlen(s));
    w_bytes(f, s, strlen(s));
}
static void kv_u32(FILE *f, const char *k, uint32_t v) {
    w_str(f, k), w_u32(f, KV_U32), w_u32(f, v);
}
static void kv_f32(FILE *f, const char *k, float v) {
    w_str(f, k), w_u32(f, KV_F32), w_bytes(f, &v, 4);
}
static void kv_str(FILE *f, const char *k, const char *v) {
    w_str(f, k), w_u32(f, KV_STR), w_str(f, v);
}

// ---- reading the tokenizer keys of another GGUF: only their extent is parsed, the bytes are copied

typedef struct {
    const uint8_t *p, *end;
} cursor;
static uint64_t rd(cursor *c, size_t n) {
    if ((size_t)(c->end - c->p) < n) die("vocab file is truncated");
    uint64_t v = 0;
    memcpy(&v, c->p, n);
    c->p += n;
    return v;
}
static void skip_value(cursor *c, uint32_t type) {
    static const int size[13] = {1, 1, 2, 2, 4, 4, 4, 1, 0, 0, 8, 8, 8};
    if (type > 12) die("vocab file: unknown value type");
    if (type == KV_STR) {
        uint64_t n = rd(c, 8);
        if ((uint64_t)(c->end - c->p) < n) die("vocab file: string past the end");
        c->p += n;
    } else if (type == KV_ARR) {
        uint32_t et = (uint32_t)rd(c, 4);
        uint64_t n = rd(c, 8);
        if (et == KV_STR || et == KV_ARR)
            for (uint64_t i = 0; i < n; i++) skip_value(c, et);
        else {
            if (et > 12 || (uint64_t)(c->end - c->p) / (uint64_t)size[et] < n) die("vocab file: bad array");
            c->p += n * (uint64_t)size[et];
        }
    } else {
        rd(c, (size_t)size[type]);
    }
}

// Appends the tokenizer.* key/value records of `path` to out (raw GGUF bytes); returns how many.
static uint64_t tokenizer_kvs(const char *path, uint8_t **out, size_t *out_len) {
    FILE *f = fopen(path, "rb");
    if (!f) die("cannot open the --vocab-from file");
    fseek(f, 0, SEEK_END);
    long n = ftell(f);
    fseek(f, 0, SEEK_SET);
    uint8_t *d = malloc((size_t)n);
    if (!d || fread(d, 1, (size_t)n, f) != (size_t)n) die("cannot read the --vocab-from file");
    fclose(f);
    cursor c = {d, d + n};
    if (rd(&c, 4) != 0x46554747u) die("vocab file is not GGUF");
    if (rd(&c, 4) < 2) die("vocab file: GGUF version < 2");
    rd(&c, 8);
    uint64_t n_kv = rd(&c, 8), kept = 0;
    *out = malloc((size_t)n);
    *out_len = 0;
    for (uint64_t i = 0; i < n_kv; i++) {
        const uint8_t *start = c.p;
        uint64_t kl = rd(&c, 8);
        if ((uint64_t)(c.end - c.p) < kl) die("vocab file: key past the end");
        int tok = kl > 10 && !memcmp(c.p, "tokenizer.", 10);
        c.p += kl;
        skip_value(&c, (uint32_t)rd(&c, 4));
        if (tok) {
            memcpy(*out + *out_len, start, (size_t)(c.p - start));
            *out_len += (size_t)(c.p - start);
            kept++;
        }
    }
    free(d);
    return kept;
}

int main(int argc, char **argv) {
    const char *out_path = NULL, *vocab = NULL, *dtype = "f16", *shape = "7b";
    for (int i = 1; i < argc; i++) {
        if (!strcmp(argv[i], "--vocab-from") && i + 1 < argc)
            vocab = argv[++i];
        else if (!strcmp(argv[i], "--dtype") && i + 1 < argc)
            dtype = argv[++i];
        else if (!strcmp(argv[i], "--shape") && i + 1 < argc)
            shape = argv[++i];
        else if (argv[i][0] != '-' && !out_path)
            out_path = argv[i];
        else
            die("usage: gen_random_gguf OUT.gguf --vocab-from V.gguf --dtype f16|q8_0|q4_k_m [--shape "
                "7b|0.5b|E,L,H,HKV,FF,V,tied]");
    }
    if (!out_path || !vocab) die("need OUT.gguf and --vocab-from");
    int E, L, H, HKV, FF, V, tied;
    if (!strcmp(shape, "7b"))
        E = 3584, L = 28, H = 28, HKV = 4, FF = 18944, V = 152064, tied = 0;
    else if (!strcmp(shape, "0.5b"))
        E = 896, L = 24, H = 14, HKV = 2, FF = 4864, V = 151936, tied = 1;
    else if (sscanf(shape, "%d,%d,%d,%d,%d,%d,%d", &E, &L, &H, &HKV, &FF, &V, &tied) != 7)
        die("--shape: 7b, 0.5b or E,L,H,HKV,FF,V,tied");
    int mat, ftype;
    if (!strcmp(dtype, "f16"))
        mat = T_F16, ftype = 1;
    else if (!strcmp(dtype, "q8_0"))
        mat = T_Q8_0, ftype = 7;
    else if (!strcmp(dtype, "q4_k_m"))
        mat = T_Q4_K, ftype = 15;
    else
        die("--dtype: f16, q8_0 or q4_k_m");
    const int kv = E / H * HKV;

    tensor *t = calloc((size_t)L * 12 + 4, sizeof *t);
    int nt = 0;
#define ADD(nm, ty, a, b, vk)                                                                                \
    (snprintf(t[nt].name, sizeof t[nt].name, "%s", nm), t[nt].type = (ty), t[nt].ne0 = (uint64_t)(a),        \
     t[nt].ne1 = (uint64_t)(b), t[nt].vec_kind = (vk), nt++)
    ADD("token_embd.weight", mat, E, V, 0);
    char nm[64];
    for (int i = 0; i < L; i++) {
        int more = mat == T_Q4_K && (i < L / 8 || i >= 7 * L / 8 || (i - L / 8) % 3 == 2);
        int mv = more ? T_Q6_K : mat;
#define LAY(suf, ty, a, b, vk) (snprintf(nm, sizeof nm, "blk.%d.%s", i, suf), ADD(nm, ty, a, b, vk))
        LAY("attn_norm.weight", T_F32, E, 1, 1);
        LAY("attn_q.weight", mat, E, E, 0);
        LAY("attn_q.bias", T_F32, E, 1, 2);
        LAY("attn_k.weight", mat, E, kv, 0);
        LAY("attn_k.bias", T_F32, kv, 1, 2);
        LAY("attn_v.weight", mv, E, kv, 0);
        LAY("attn_v.bias", T_F32, kv, 1, 2);
        LAY("attn_output.weight", mat, E, E, 0);
        LAY("ffn_norm.weight", T_F32, E, 1, 1);
        LAY("ffn_gate.weight", mat, E, FF, 0);
        LAY("ffn_up.weight", mat, E, FF, 0);
        LAY("ffn_down.weight", mv, FF, E, 0);
    }
    ADD("output_norm.weight", T_F32, E, 1, 1);
    if (!tied) ADD("output.weight", mat == T_Q4_K ? T_Q6_K : mat, E, V, 0);
    uint64_t off = 0;
    for (int i = 0; i < nt; i++) {
        if (t[i].ne0 % (uint64_t)blk_elems(t[i].type)) die("a row is not a whole number of blocks");
        t[i].offset = off;
        off += (t[i].ne0 / (uint64_t)blk_elems(t[i].type) * (uint64_t)blk_bytes(t[i].type) * t[i].ne1 +
                ALIGN - 1) /
               ALIGN * ALIGN;
    }

    uint8_t *tk;
    size_t tk_len;
    uint64_t n_tk = tokenizer_kvs(vocab, &tk, &tk_len);
    FILE *f = fopen(out_path, "wb");
    if (!f) die("cannot create the output file");
    static char fbuf[1 << 22];
    setvbuf(f, fbuf, _IOFBF, sizeof fbuf);
    w_u32(f, 0x46554747u), w_u32(f, 3), w_u64(f, (uint64_t)nt), w_u64(f, 12 + n_tk);
    char name[96];
    snprintf(name, sizeof name, "random-qwen2.5-%s-%s", shape, dtype);
    kv_str(f, "general.architecture", "qwen2");
    kv_str(f, "general.name", name);
    kv_u32(f, "general.file_type", (uint32_t)ftype);
    kv_u32(f, "general.alignment", ALIGN);
    kv_u32(f, "qwen2.block_count", (uint32_t)L);
    kv_u32(f, "qwen2.context_length", 32768);
    kv_u32(f, "qwen2.embedding_length", (uint32_t)E);
    kv_u32(f, "qwen2.feed_forward_length", (uint32_t)FF);
    kv_u32(f, "qwen2.attention.head_count", (uint32_t)H);
    kv_u32(f, "qwen2.attention.head_count_kv", (uint32_t)HKV);
    kv_f32(f, "qwen2.rope.freq_base", 1e6f);
    kv_f32(f, "qwen2.attention.layer_norm_rms_epsilon", 1e-6f);
    w_bytes(f, tk, tk_len);
    for (int i = 0; i < nt; i++) {
        w_str(f, t[i].name);
        int nd = t[i].ne1 > 1 ? 2 : 1;
        w_u32(f, (uint32_t)nd), w_u64(f, t[i].ne0);
        if (nd == 2) w_u64(f, t[i].ne1);
        w_u32(f, (uint32_t)t[i].type), w_u64(f, t[i].offset);
    }
    static const uint8_t zeros[ALIGN];
    long pos = ftell(f);
    w_bytes(f, zeros, (size_t)((ALIGN - pos % ALIGN) % ALIGN));

    uint8_t *buf[15] = {0};
    size_t buf_blocks[15] = {0};
    uint64_t written = 0;
    for (int i = 0; i < nt; i++) {
        if (t[i].type == T_F32) { // norms near 1, biases near 0
            for (uint64_t j = 0; j < t[i].ne0; j++) {
                float v = (float)((double)(rnd() >> 11) / 9007199254740992.0 - 0.5);
                v = t[i].vec_kind == 1 ? 1.0f + 0.1f * v : 0.1f * v;
                w_bytes(f, &v, 4);
            }
            written += t[i].ne0 * 4;
        } else {
            int ty = t[i].type;
            if (!buf[ty]) buf[ty] = make_buf(ty, &buf_blocks[ty]);
            uint64_t nb = t[i].ne0 / (uint64_t)blk_elems(ty) * t[i].ne1;
            // start each tensor at a different block so tensors do not repeat each other exactly
            uint64_t at = rnd() % buf_blocks[ty];
            while (nb) {
                uint64_t k = buf_blocks[ty] - at < nb ? buf_blocks[ty] - at : nb;
                w_bytes(f, buf[ty] + at * (uint64_t)blk_bytes(ty), (size_t)(k * (uint64_t)blk_bytes(ty)));
                written += k * (uint64_t)blk_bytes(ty);
                nb -= k, at = 0;
            }
        }
        uint64_t pad = (ALIGN - written % ALIGN) % ALIGN;
        w_bytes(f, zeros, (size_t)pad);
        written += pad;
    }
    if (fclose(f)) die("write failed");
    fprintf(stderr, "%s: %d tensors, %.2f GB of weights, %llu tokenizer keys\n", out_path, nt, written / 1e9,
            (unsigned long long)n_tk);
    return 0;
}
