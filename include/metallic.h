// Metallic public API: load a Qwen2.5 model, run sessions of one or more sequences over a KV cache.
//
//   mt_model *m;   mt_model_load("models/qwen2.5-0.5b.gguf", &m);
//   mt_session *s; mt_session_opts o = mt_session_default_opts(); mt_session_create(m, &o, &s);
//   int32_t toks[] = {...}, pos[] = {0, 1, 2}, seq[] = {0, 0, 0}; int8_t want[] = {0, 0, 1};
//   mt_batch b = {3, toks, pos, seq, want};
//   mt_session_decode(s, &b);              // prefill: one pass over the whole prompt
//   const float *logits = mt_session_logits(s, 0);   // logits of the first token flagged in `want`
//
// Every call that can fail returns an mt_status; mt_last_error() names what was wrong.
#ifndef METALLIC_H
#define METALLIC_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "../src/backend/device.h"
#include "../src/core/status.h"
#include "../src/model/qwen2.h"
#include "../src/model/sampler.h"

typedef struct mt_model mt_model;
typedef struct mt_session mt_session;
typedef struct mt_tokenizer mt_tokenizer;
typedef struct mt_pool mt_pool;

// Loads a GGUF file or a Hugging Face folder (config.json, *.safetensors, tokenizer.json).
mt_status mt_model_load(const char *path, mt_model **out);
void mt_model_free(mt_model *m);
const mt_qwen2_config *mt_model_config(const mt_model *m);
const mt_qwen2_weights *mt_model_weights(const mt_model *m);
const mt_tokenizer *mt_model_tokenizer(const mt_model *m);
// The chat template text stored with the model (NULL if none) and its generation defaults.
const char *mt_model_chat_template(const mt_model *m);
// Sampling defaults from the model (generation_config.json of a folder; built-in defaults otherwise).
const mt_sampler_params *mt_model_gen_params(const mt_model *m);
// Bytes of weights as stored (what a decode step reads).
size_t mt_model_weight_bytes(const mt_model *m);
// Bytes of the packed weight copies a CPU session makes (0 with METALLIC_REPACK=0 or the scalar kernels):
// what the WeightRepack event reports for the first CPU session. *replaced (may be NULL): the mapped file
// pages those copies stand in for and give back (F16 weights), so the net cost is the difference.
size_t mt_model_cpu_repack_bytes(const mt_model *m, size_t *replaced);

typedef struct mt_session_opts {
    int n_ctx;     // positions per sequence; 0 = the model's context length, capped by memory
    int n_seq;     // independent sequences (KV slots)
    int n_threads; // 0 = one per core
    int n_batch;   // most tokens per mt_session_decode call (scratch is sized for it); 0 = n_ctx
    // where the forward pass runs: MT_DEVICE_CPU (default) or MT_DEVICE_CUDA (weights, KV cache,
    // activations and logits in GPU memory; MT_ERR_UNSUPPORTED when the build or machine has no GPU)
    mt_device_kind device;
    // CUDA: replay each batch shape's launches as a captured CUDA graph (default) instead of launching
    // node by node
    bool cuda_graphs;
} mt_session_opts;

mt_session_opts mt_session_default_opts(void);
mt_status mt_session_create(mt_model *m, const mt_session_opts *o, mt_session **out);
void mt_session_free(mt_session *s);
int mt_session_n_ctx(const mt_session *s);

typedef struct mt_batch {
    int n;                 // tokens in this batch
    const int32_t *tokens; // [n]
    const int32_t *pos;    // [n] position of each token in its sequence
    const int32_t *seq;    // [n] sequence slot of each token
    const int8_t *logits;  // [n] nonzero: compute logits for this token (NULL: only the last token)
} mt_batch;

// Runs the forward pass for the batch, writing K/V at the given positions. A position outside the
// context is MT_ERR_RANGE naming both numbers.
mt_status mt_session_decode(mt_session *s, const mt_batch *b);
// Logits ([n_vocab] floats) of the i-th token flagged for logits in the last decode.
const float *mt_session_logits(const mt_session *s, int i);
// Forget a sequence's cached positions.
void mt_session_seq_clear(mt_session *s, int seq);
// Bytes of KV cache copied by decode calls so far (telemetry): 0, since attention reads the n_kv cached
// heads in place instead of repeating them per query head.
uint64_t mt_session_kv_bytes_copied(const mt_session *s);
// Greedy token of the i-th logits row of the last decode, computed where the logits live (on a GPU only
// the token id crosses to the host). MT_ERR_RANGE if there is no such row.
mt_status mt_session_argmax(mt_session *s, int i, int32_t *token);
// The token mt_sampler_sample(smp, row i, history, n_history) picks, with the same random stream: on the
// CPU it is that call; on a GPU the choice is made on the device and only the id crosses to the host.
mt_status mt_session_sample(mt_session *s, int i, mt_sampler *smp, const int32_t *history, int n_history,
                            int32_t *token);

#endif
