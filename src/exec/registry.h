// The backend registry: for every op of the op table, which path runs it, legacy (eager, one kernel per
// node) or graph (compiled, fused, cached executables), and why.
//
// Resolution per op, first match wins ("auto" is no preference from that source):
//   1. per-op flag   --op-backend OP=PATH (and --sdpa-backend PATH for attention)
//   2. global flag   --backend PATH
//   3. per-op env    METALLIC_FORCE_<OP>_BACKEND (upper-case op name; METALLIC_FORCE_SDPA_BACKEND for
//   attention)
//   4. global env    METALLIC_BACKEND
//   5. default       graph where the graph path can lower the op (mt_registry_set_graph_capable), else legacy
// A flag given at a scope (even "auto") hides the environment variable of the same scope, so
// `--backend auto` undoes an exported METALLIC_BACKEND. Values: legacy | graph | auto; anything else is
// MT_ERR_INVALID naming the flag or variable and the value.
//
// Every resolution emits one KernelBackendSelected event per op ({"op","backend","reason"}, e.g. reason
// "env METALLIC_FORCE_SDPA_BACKEND=graph", "flag --backend legacy", "default") and keeps the reason for
// mt_registry_reason().
//
//   mt_registry_opts o = {.backend = "graph"};
//   if (mt_registry_configure(&o) != MT_OK) die(mt_last_error());
//   if (mt_registry_path(mt_registry_global(), MT_OP_ATTENTION) == MT_PATH_GRAPH) ...
#ifndef MT_REGISTRY_H
#define MT_REGISTRY_H

#include <stdbool.h>

#include "../core/status.h"
#include "op.h"

typedef enum mt_path { MT_PATH_LEGACY = 0, MT_PATH_GRAPH = 1 } mt_path;

// A parsed value: no value at all (UNSET) is different from an explicit "auto".
typedef enum mt_path_pref { MT_PREF_UNSET = 0, MT_PREF_AUTO, MT_PREF_LEGACY, MT_PREF_GRAPH } mt_path_pref;

#define MT_REGISTRY_MAX_OP_FLAGS 32
#define MT_REGISTRY_REASON_LEN 112

// The command line's values (NULL / 0 = not given). Environment variables are read by the registry.
typedef struct mt_registry_opts {
    const char *backend;                              // --backend
    const char *sdpa_backend;                         // --sdpa-backend
    const char *op_backend[MT_REGISTRY_MAX_OP_FLAGS]; // --op-backend OP=PATH, in command-line order
    int n_op_backend;
    bool quiet; // no KernelBackendSelected events (a dry parse)
} mt_registry_opts;

typedef struct mt_registry {
    mt_path path[MT_OP_COUNT];
    char reason[MT_OP_COUNT][MT_REGISTRY_REASON_LEN];
} mt_registry;

const char *mt_path_name(mt_path p); // "legacy" | "graph"

// Parses legacy|graph|auto; `what` names the flag or variable in the error.
mt_status mt_registry_parse_path(const char *what, const char *value, mt_path_pref *out);
// Parses "OP=PATH" (OP as mt_op_find accepts it: "sdpa" is attention).
mt_status mt_registry_parse_op_assignment(const char *what, const char *s, mt_op_kind *op,
                                          mt_path_pref *pref);

// What the graph path can lower: drives the default. Process-wide; the graph compiler declares its ops at
// start-up. Changing it re-resolves the global registry (ops decided by their default follow).
void mt_registry_set_graph_capable(mt_op_kind op, bool capable);
bool mt_registry_graph_capable(mt_op_kind op);

// Resolves every op from opts (may be NULL: environment and defaults only) into r. On an invalid value r is
// left untouched and the status names the flag/variable and value.
mt_status mt_registry_resolve(mt_registry *r, const mt_registry_opts *opts);
mt_path mt_registry_path(const mt_registry *r, mt_op_kind op);
const char *mt_registry_reason(const mt_registry *r, mt_op_kind op);
// True when any op resolves to graph.
bool mt_registry_any_graph(const mt_registry *r);

// The process-wide registry the engine consults. The first mt_registry_global() resolves it from the
// environment alone; mt_registry_configure() (the CLI, once, before loading) re-resolves it with flags and
// keeps those flags for later re-resolutions. Not for concurrent reconfiguration.
mt_status mt_registry_configure(const mt_registry_opts *opts);
const mt_registry *mt_registry_global(void);

#endif
