// The terminal dashboard (`--output-format tui`): generated text streaming, prompt statistics, and the
// metric views (m memory, l latency tree, s cache statistics), c collapse depth, Ctrl+L logs, Ctrl+P
// latency mode, q or Ctrl-C to leave. Generation runs in a worker thread; the UI thread polls the
// telemetry and the metrics ring ten times a second, so keys answer while tokens are being computed.
#ifndef MT_CLI_TUI_H
#define MT_CLI_TUI_H

#include "args.h"

// Runs o->prompt on o->model under the dashboard. Returns the exit code: 0 after q, 130 after Ctrl-C,
// 1 on a model/runtime error before the dashboard started, 2 when stdin/stdout is not a terminal.
int cli_tui_run(const cli_opts *o);

#endif
