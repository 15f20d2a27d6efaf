// What a model file provides, whatever its format: the loaders for GGUF (loader-gguf.c) and Hugging Face
// folders (loader-hf.c) both fill an mt_model_source, and the model is built from it.
#ifndef MT_LOADER_H
#define MT_LOADER_H

#include "qwen2.h"
#include "sampler.h"
#include "tokenizer.h"

typedef struct mt_model_source {
    mt_qwen2_config config;
    mt_qwen2_weights weights; // views into mapped files, F32 copies for norms and biases
    mt_tokenizer *tokenizer;
    char *chat_template;   // owned; NULL if the file has none
    mt_sampler_params gen; // defaults from generation_config (or sampler defaults)
    size_t weight_bytes;   // bytes of all weight tensors as stored
    size_t file_bytes;     // bytes mapped
    // Everything the source owns (mappings, F32 copies); released by mt_model_source_free.
    void **owned;
    int n_owned, cap_owned;
    void (*unmap)(void *mapping); // releases mappings stored in `mappings`
    void *mappings[64];
    int n_mappings;
} mt_model_source;

mt_status mt_load_gguf(const char *path, mt_model_source *out);
mt_status mt_load_hf(const char *dir, mt_model_source *out);
void mt_model_source_free(mt_model_source *s);

// Shared helpers for both loaders.
// Records an allocation the source owns (freed with it).
mt_status mt_source_own(mt_model_source *s, void *p);
// Makes an owned F32 copy of a small tensor of any float dtype (norm weights, biases).
mt_status mt_source_f32_copy(mt_model_source *s, const mt_tensor *src, mt_tensor *dst);
// Checks a weight's dtype and shape (ne0 x ne1, ne1 = 0 for 1-D) and names the tensor on a mismatch.
mt_status mt_source_check_shape(const mt_tensor *t, const char *name, int64_t ne0, int64_t ne1);
// Checks the config for sane, consistent values (head counts dividing, sizes in range).
mt_status mt_qwen2_config_check(const mt_qwen2_config *c);

#endif
