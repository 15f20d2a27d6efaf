// The generation loop on one sequence of a session: batched prefill of the prompt, then sample / decode
// one token at a time until an EOS id, the token limit, the end of the context or a cancel request.
// Used by the command line and the server.
//
//   mt_gen_opts o = mt_gen_default_opts();
//   o.max_tokens = 128;  o.on_token = print_piece;  o.cancel = &stop_flag;
//   mt_gen_result r;
//   if (mt_generate(session, model, sampler, ids, n_ids, &o, &r) != MT_OK) die(mt_last_error());
//   printf("%s (%s)\n", r.text, mt_stop_reason_name(r.stop));
//   mt_gen_result_free(&r);
#ifndef MT_GENERATE_H
#define MT_GENERATE_H

#include <signal.h>
#include <stddef.h>
#include <stdint.h>

#include "metallic.h"
#include "sampler.h"

typedef enum mt_stop_reason {
    MT_STOP_EOS,       // the model produced one of the config's EOS ids (not part of the output)
    MT_STOP_LENGTH,    // max_tokens reached, or the context is full
    MT_STOP_CANCELLED, // the cancel flag was set or the callback asked to stop
} mt_stop_reason;

const char *mt_stop_reason_name(mt_stop_reason r); // "eos", "length", "cancelled"

typedef struct mt_logprob {
    int32_t id;
    float logprob; // natural log of the token's probability under softmax of the raw logits
} mt_logprob;

#define MT_GEN_MAX_LOGPROBS 100

// Called once per generated token with its id and the complete UTF-8 text it finishes (possibly empty
// while a character is split across tokens), and its top-K logprobs (NULL when not asked). After the
// last token, called once more with id -1 for whatever the detokenizer still held (only if non-empty).
// Returning nonzero stops generation (stop reason "cancelled").
typedef int (*mt_gen_token_fn)(void *user, int32_t id, const char *piece, size_t len, const mt_logprob *top,
                               int n_top);

typedef struct mt_gen_opts {
    int max_tokens;                      // > 0
    int n_logprobs;                      // top-K logprobs per token, 0..MT_GEN_MAX_LOGPROBS
    int n_past;                          // prompt tokens already in the KV cache of sequence `seq`
    int seq;                             // sequence slot (0 for the CLI)
    const volatile sig_atomic_t *cancel; // optional; nonzero stops before the next token
    mt_gen_token_fn on_token;            // optional
    void *user;
} mt_gen_opts;

mt_gen_opts mt_gen_default_opts(void);

typedef struct mt_gen_result {
    int32_t *tokens; // [n_tokens] generated ids, EOS excluded
    int n_tokens;
    char *text; // NUL-terminated text of the generated tokens (detokenizer flushed: valid UTF-8)
    size_t text_len;
    mt_logprob *logprobs; // [n_tokens * n_logprobs], most likely first per token; NULL if not asked
    int n_logprobs;
    int n_prompt; // prompt tokens evaluated by the prefill (total minus n_past)
    double prompt_ms, prompt_tok_s;
    double gen_ms, gen_tok_s;
    mt_stop_reason stop;
} mt_gen_result;

// Runs the prompt ids[n_past..n) through one batched decode, then generates. ids[0..n_past) must be
// what the cache of the sequence already holds (the chat reuses the previous turns this way). A prompt
// that does not fit the context fails with MT_ERR_RANGE naming both sizes; nothing is truncated. The
// sampler's history is the whole prompt plus the generated tokens.
mt_status mt_generate(mt_session *s, const mt_model *m, mt_sampler *smp, const int32_t *ids, int n,
                      const mt_gen_opts *o, mt_gen_result *out);
void mt_gen_result_free(mt_gen_result *r);

// The K most likely tokens under softmax of `logits` ([n_vocab], raw), most likely first.
void mt_top_logprobs(const float *logits, int n_vocab, int k, mt_logprob *out);

#endif
