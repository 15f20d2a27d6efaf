// Qwen2 model: the blueprint (config), the read-only weights and the per-session state.
//
// Weights are mt_tensor views into the mmapped GGUF (or safetensors) file, in their stored dtype; only
// the small 1-D tensors (norm weights, biases) are converted to F32 copies at load.
#ifndef MT_QWEN2_H
#define MT_QWEN2_H

#include <stdbool.h>
#include <stdint.h>

#include "../core/tensor.h"

#define MT_MAX_EOS 8

typedef struct mt_qwen2_config {
    int n_vocab;     // rows of the embedding / output matrix
    int n_embd;      // hidden size (896 for 0.5B)
    int n_layer;     // transformer blocks
    int n_head;      // query heads
    int n_head_kv;   // key/value heads (grouped-query attention)
    int head_dim;    // n_embd / n_head
    int n_ff;        // MLP intermediate size
    int n_ctx_train; // context length the model was trained for
    float rms_eps;
    float rope_base;  // rope.freq_base
    bool tied_output; // output matrix is the token embedding
    int32_t bos_id;   // -1 if none
    int32_t eos_ids[MT_MAX_EOS];
    int n_eos;
    char name[128]; // general.name, for display
} mt_qwen2_config;

typedef struct mt_qwen2_layer {
    mt_tensor attn_norm;    // [n_embd] F32
    mt_tensor wq, wk, wv;   // [n_embd, n_head*hd], [n_embd, n_kv*hd], [n_embd, n_kv*hd]
    mt_tensor bq, bk, bv;   // biases, F32
    mt_tensor wo;           // [n_head*hd, n_embd]
    mt_tensor ffn_norm;     // [n_embd] F32
    mt_tensor w_gate, w_up; // [n_embd, n_ff]
    mt_tensor w_down;       // [n_ff, n_embd]
} mt_qwen2_layer;

typedef struct mt_qwen2_weights {
    mt_tensor tok_embd;     // [n_embd, n_vocab]
    mt_tensor out_norm;     // [n_embd] F32
    mt_tensor output;       // [n_embd, n_vocab]; a copy of tok_embd's view when tied
    mt_qwen2_layer *layers; // [n_layer]
} mt_qwen2_weights;

#endif
