// A tiny device abstraction for sessions: memory, copies, synchronization, weight upload and running a
// node list, on the CPU (plain host memory) or on CUDA (device memory, built with MT_CUDA). Code above the
// backends (the model) calls only these, so a CPU-only build never needs CUDA.
#ifndef MT_DEVICE_H
#define MT_DEVICE_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "../core/status.h"
#include "../exec/op.h"
#include "../model/qwen2.h"
#include "../model/sampler.h"

typedef enum mt_device_kind {
    MT_DEVICE_CPU = 0,
    MT_DEVICE_CUDA = 1,
} mt_device_kind;

// Whether the kind can be used in this build on this machine (CUDA: compiled in and a GPU is present).
bool mt_device_available(mt_device_kind d);
// "cpu" / "cuda"; and a description of the device in use ("" when unavailable).
const char *mt_device_kind_name(mt_device_kind d);
const char *mt_device_description(mt_device_kind d);
// Parses "cpu" / "cuda"; MT_ERR_INVALID naming the value otherwise.
mt_status mt_device_parse(const char *s, mt_device_kind *out);

mt_status mt_device_alloc(mt_device_kind d, size_t bytes, const char *what, void **out);
mt_status mt_device_calloc(mt_device_kind d, size_t bytes, const char *what, void **out);
void mt_device_free(mt_device_kind d, void *p);
mt_status mt_device_upload(mt_device_kind d, void *dst, const void *src, size_t bytes);
mt_status mt_device_download(mt_device_kind d, void *dst, const void *src, size_t bytes);
mt_status mt_device_sync(mt_device_kind d);

// Copies every weight of the model into one device allocation (stored dtypes kept, each tensor 256-byte
// aligned) and fills `out` with views over it; `out->layers` is a new host array. Free with
// mt_device_weights_free. Tied output shares the embedding's copy.
mt_status mt_device_weights_upload(mt_device_kind d, const mt_qwen2_weights *w, int n_layer,
                                   mt_qwen2_weights *out, void **blob, size_t *bytes);
void mt_device_weights_free(mt_device_kind d, mt_qwen2_weights *w, void *blob);

// CUDA: launches the nodes in order on the backend stream (tensors and p.pos/p.seq in device memory).
mt_status mt_device_run(mt_device_kind d, const mt_node *nodes, int n_nodes);
// CUDA: like mt_device_run, with one-token layers fused into a few launches (the CUDA graph path).
mt_status mt_device_run_fused(mt_device_kind d, const mt_node *nodes, int n_nodes);
// CUDA: dst row j = src row rows[j] (rows in device memory), rows of d floats.
mt_status mt_device_gather_rows(mt_device_kind d, float *dst, const float *src, const int32_t *rows, int n,
                                int width);
// CUDA: argmax of n rows of `width` floats into out (device) .
mt_status mt_device_argmax(mt_device_kind d, const float *x, int width, int n, int32_t *out);
// CUDA: the token mt_sampler_sample would pick from the n_vocab floats at `row` (device), chosen on the
// device with the sampler's parameters and random stream (consumed as on the host); only the id crosses.
// The sampler must not be greedy (mt_device_argmax covers that).
mt_status mt_device_sample(mt_device_kind d, const float *row, int n_vocab, mt_sampler *smp,
                           const int32_t *history, int n_history, int32_t *token);
// CUDA: sizes GEMM staging for batches of n_tok tokens of up to k inputs (before any graph capture).
mt_status mt_device_reserve(mt_device_kind d, int n_tok, int64_t k);

// Captured launch sequences keyed by batch shape (CUDA graphs), held in an executable cache named
// "cuda_graphs" (capacity entries; 0 = METALLIC_EXEC_CACHE_CAPACITY or its default). A capture after an
// eviction updates the evicted executable when it can. On the CPU every call reports absent.
typedef struct mt_device_graphs mt_device_graphs;
mt_status mt_device_graphs_create(mt_device_kind d, int capacity, mt_device_graphs **out);
void mt_device_graphs_free(mt_device_graphs *g);
// True (and replays it) when `key` is cached.
bool mt_device_graphs_launch(mt_device_graphs *g, uint64_t key);
// Starts recording the launches; mt_device_graphs_end makes them the executable for `key` and runs it once.
mt_status mt_device_graphs_begin(mt_device_graphs *g);
mt_status mt_device_graphs_end(mt_device_graphs *g, uint64_t key);
void mt_device_graphs_abort(mt_device_graphs *g);

#endif
