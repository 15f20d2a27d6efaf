// Token sampling: greedy, temperature, top-k, top-p, min-p, repetition penalty, seeded.
#ifndef MT_SAMPLER_H
#define MT_SAMPLER_H

#include <stdbool.h>
#include <stdint.h>

#include "../core/status.h"

typedef struct mt_sampler_params {
    float temperature;    // 0 = greedy (argmax)
    int top_k;            // 0 = off
    float top_p;          // 1 = off
    float min_p;          // 0 = off
    float repeat_penalty; // 1 = off; applied to the last repeat_last_n tokens (llama.cpp semantics)
    int repeat_last_n;
    uint64_t seed;
} mt_sampler_params;

// Defaults before the model's generation_config is applied.
mt_sampler_params mt_sampler_default_params(void);
// Checks ranges (temperature >= 0, top_p in (0,1], min_p in [0,1], ...), naming the bad field.
mt_status mt_sampler_params_check(const mt_sampler_params *p);

typedef struct mt_sampler mt_sampler;
mt_status mt_sampler_create(const mt_sampler_params *p, int n_vocab, mt_sampler **out);
void mt_sampler_free(mt_sampler *s);
// Picks the next token from `logits` (n_vocab floats, not modified) given the history of tokens so far.
int32_t mt_sampler_sample(mt_sampler *s, const float *logits, const int32_t *history, int n_history);
// True when sampling is plain argmax (temperature 0): the caller may take the argmax where the logits live.
bool mt_sampler_is_greedy(const mt_sampler *s);

// For a sampler that runs elsewhere (on the GPU) with the same semantics: the parameters; the uniform in
// [0, 1) that the next draw of mt_sampler_sample would use (not consumed); consuming it, so both samplers
// read one stream; and the history ids the repetition penalty covers (*win, returned count; 0 = no penalty).
const mt_sampler_params *mt_sampler_params_of(const mt_sampler *s);
double mt_sampler_peek_uniform(const mt_sampler *s);
void mt_sampler_consume_uniform(mt_sampler *s);
int mt_sampler_penalty_window(const mt_sampler *s, const int32_t *history, int n_history,
                              const int32_t **win);

#endif
