// Metric events: one JSON object per line, {"ts_us":..,"event":"<Name>", <fields>}.
//
// Sinks: a JSONL file (METALLIC_METRICS_JSONL_PATH), the console (METALLIC_METRICS_CONSOLE=1, stderr) and an
// in-memory ring that the dashboard reads. With no sink active, mt_metrics_enabled() is false and callers
// skip building the event at all, so throughput mode costs one branch per call site.
//
//   if (mt_metrics_enabled())
//       mt_metrics_emitf("KernelBackendSelected", "\"op\":\"%s\",\"backend\":\"%s\",\"reason\":\"%s\"", ...);
#ifndef MT_METRICS_H
#define MT_METRICS_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "status.h"

// Reads the environment once (idempotent); an unwritable JSONL path is MT_ERR_IO naming it.
mt_status mt_metrics_init(void);
bool mt_metrics_enabled(void);
// Emits one event; fmt (printf-style) produces the fields inside the object, without braces. Callers
// escape strings that are not identifiers with mt_metrics_escape.
void mt_metrics_emitf(const char *event, const char *fmt, ...) __attribute__((format(printf, 2, 3)));
// JSON-escapes `s` into out (always NUL-terminated; truncated at cap).
void mt_metrics_escape(const char *s, char *out, size_t cap);
// Microseconds on a monotonic clock.
uint64_t mt_now_us(void);

// The in-memory ring (the dashboard's view): turn it on, and copy out the last lines.
void mt_metrics_ring_enable(size_t n_lines);
// Copies up to `max` of the newest lines (oldest first) into out[]; returns how many. Lines are owned by
// the caller's buffer (each up to line_cap bytes).
int mt_metrics_ring_read(char *out, int max, size_t line_cap);
// Copies the lines pushed after *cursor (0 = from the oldest still held), oldest first, up to max; advances
// *cursor past what it returned. Lines that fell out of the ring before the call are skipped and counted
// in *dropped (optional). Lets a reader poll without seeing a line twice.
int mt_metrics_ring_read_since(uint64_t *cursor, char *out, int max, size_t line_cap, uint64_t *dropped);

void mt_metrics_shutdown(void); // flush and close sinks

#endif
