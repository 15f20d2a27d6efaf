// Telemetry on top of metrics.h: the two modes, scope timers, the latency tree and the memory picture.
//
// Throughput mode (default): nothing is timed per op. When a metrics sink is active the generation loop
// times a few stages per token (forward step, sampling, logits sync, iteration) and emits one ForwardStep
// event per decode call; with no sink and no profiling every call site is one branch.
//
// Latency mode (METALLIC_ENABLE_PROFILING=1, or mt_tel_set_profiling from the dashboard): every node is
// timed around its parallel region and every block gets a scope, so the tree reads
//
//   generation_loop / forward_step / block_3 / sdpa     (and prompt_processing / ... for the prefill)
//
// Scopes are a per-thread stack of names. A timing is accumulated into the latency tree (last, total,
// count per path; read by the dashboard) and emitted as an event:
//   - op timings:    GpuOpCompleted{op_name: full path, backend, device, duration_us}
//   - stage timings: InternalKernelCompleted{parent_op_name: root scope, internal_kernel_name, path,
//                    duration_us}
//
//   if (mt_tel_profiling()) { mt_tel_begin("block_3"); ...; mt_tel_end("block_3_total"); }
#ifndef MT_TELEMETRY_H
#define MT_TELEMETRY_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

// Latency mode: read from METALLIC_ENABLE_PROFILING on first use ("1", "true", "on"), then settable.
bool mt_tel_profiling(void);
void mt_tel_set_profiling(bool on);
// Whether stage timings are taken: a metrics sink is active or latency mode is on.
bool mt_tel_active(void);

// Nanoseconds on a monotonic clock.
uint64_t mt_tel_now_ns(void);

// Pushes a scope onto this thread's stack (names longer than 47 bytes are cut) and starts its clock.
void mt_tel_begin(const char *name);
// Pops the innermost scope: records its time in the tree under its full path and emits
// InternalKernelCompleted with internal_kernel_name = event_name. Returns the duration in microseconds.
double mt_tel_end(const char *event_name);
// The current scope path ("" at the top), e.g. "generation_loop/forward_step/block_3".
const char *mt_tel_path(void);

// Records `us` under "<scope path>/<name>" in the tree (no event).
void mt_tel_record(const char *name, double us);
// Emits GpuOpCompleted for "<scope path>/<name>" (no tree update).
void mt_tel_emit_op(const char *name, const char *backend, const char *device, double us);
// Emits InternalKernelCompleted for a stage of the current scope (no tree update).
void mt_tel_emit_internal(const char *name, double us);
// Tree update plus GpuOpCompleted: what an executor calls per timed node.
void mt_tel_op(const char *name, const char *backend, const char *device, double us);

// ---- the latency tree ----
typedef struct mt_tel_node {
    char path[128]; // "generation_loop/forward_step/block_3/sdpa"
    int depth;      // number of '/' in path
    double last_us, total_us;
    uint64_t count;
} mt_tel_node;

// Copies up to `max` nodes in the order they were first seen (which is execution order); returns the
// number copied.
int mt_tel_tree_snapshot(mt_tel_node *out, int max);
void mt_tel_tree_reset(void);

// ---- memory ----
#define MT_TEL_MAX_BLOCKS 128
typedef struct mt_tel_mem {
    char file_path[256];
    uint64_t file_bytes;    // bytes of the model file(s) mapped
    uint64_t weights_bytes; // weight tensors as stored
    int n_blocks;
    uint64_t block_bytes[MT_TEL_MAX_BLOCKS]; // weights of each transformer block
    uint64_t embd_bytes, output_bytes;       // token embedding, output matrix (0 when tied)
    uint64_t kv_bytes, kv_used_bytes;        // KV cache allocated; rows written so far
    uint64_t scratch_bytes;                  // activations, node list, logits of the session
    uint64_t rss_bytes;                      // resident set of the process
    char device[64];                         // "" when no device memory is known
    uint64_t device_used_bytes, device_total_bytes;
} mt_tel_mem;

void mt_tel_mem_get(mt_tel_mem *out);
// Setters used by the model and backends (each updates only its fields).
void mt_tel_mem_set_model(const char *path, uint64_t file_bytes, uint64_t weights_bytes, int n_blocks,
                          const uint64_t *block_bytes, uint64_t embd_bytes, uint64_t output_bytes);
void mt_tel_mem_set_session(uint64_t kv_bytes, uint64_t kv_used_bytes, uint64_t scratch_bytes);
// Device memory: records it and emits DeviceMemory{device, used_bytes, total_bytes}.
void mt_tel_device_memory(const char *device, uint64_t used_bytes, uint64_t total_bytes);

// Resident set size from /proc/self/statm (0 if unreadable).
uint64_t mt_tel_rss_bytes(void);
// Reads the RSS, records it and emits HostMemory with the session fields last set.
void mt_tel_emit_host_memory(void);

#endif
