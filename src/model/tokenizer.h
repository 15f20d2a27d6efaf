// Byte-level BPE tokenizer (GPT-2 style byte mapping, qwen2 pre-tokenizer split, ranked merges) with
// special tokens matched as whole tokens, and streaming detokenization that never emits half a UTF-8
// character.
//
//   int32_t *ids; size_t n;
//   mt_tokenizer_encode(tok, "Hello<|im_end|>", 15, true, &ids, &n);   // parse_special = true
//   free(ids);
#ifndef MT_TOKENIZER_H
#define MT_TOKENIZER_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "../core/status.h"

typedef struct mt_tokenizer mt_tokenizer;
struct mt_gguf;

// Token types as GGUF stores them (tokenizer.ggml.token_type).
enum {
    MT_TOKEN_NORMAL = 1,
    MT_TOKEN_UNKNOWN = 2,
    MT_TOKEN_CONTROL = 3,
    MT_TOKEN_USER_DEFINED = 4,
    MT_TOKEN_UNUSED = 5,
    MT_TOKEN_BYTE = 6
};

// From GGUF metadata: tokenizer.ggml.{model, pre, tokens, token_type, merges, eos/bos ids}.
mt_status mt_tokenizer_from_gguf(const struct mt_gguf *g, mt_tokenizer **out);
// From a Hugging Face tokenizer.json (model.vocab, model.merges, added_tokens).
mt_status mt_tokenizer_from_hf_json(const char *path, mt_tokenizer **out);
void mt_tokenizer_free(mt_tokenizer *t);

int mt_tokenizer_n_vocab(const mt_tokenizer *t);
// Id of a token by its exact text (e.g. "<|im_end|>"), or -1.
int32_t mt_tokenizer_find(const mt_tokenizer *t, const char *text);
bool mt_tokenizer_is_special(const mt_tokenizer *t, int32_t id); // control or user-defined

// Encodes `len` bytes of `text` (any bytes; invalid UTF-8 is encoded byte-wise like the reference).
// parse_special: special tokens in the text become their ids; otherwise they are plain text.
// *ids is malloc'ed; the caller frees it.
mt_status mt_tokenizer_encode(const mt_tokenizer *t, const char *text, size_t len, bool parse_special,
                              int32_t **ids, size_t *n);
// The raw bytes a token stands for (byte-level mapping undone); special tokens give their text.
// Returns MT_ERR_RANGE for an id outside the vocabulary.
mt_status mt_tokenizer_token_bytes(const mt_tokenizer *t, int32_t id, const char **bytes, size_t *len);

// Streaming detokenizer: feed ids, get back only complete UTF-8 sequences (a split character is held
// until its last byte arrives; mt_detok_flush emits what is left, invalid bytes as U+FFFD).
typedef struct mt_detok {
    const mt_tokenizer *tok;
    char pending[8];
    int n_pending;
} mt_detok;
void mt_detok_init(mt_detok *d, const mt_tokenizer *t);
// Appends the printable bytes for `id` to out (capacity cap, at least 64 + longest token); returns the
// number of bytes written, or -1 on a bad id.
int mt_detok_push(mt_detok *d, int32_t id, char *out, size_t cap);
int mt_detok_flush(mt_detok *d, char *out, size_t cap);

#endif
