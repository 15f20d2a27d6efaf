// Status codes for recoverable errors, asserts for bugs.
//
// A recoverable failure (bad file, bad flag, out of memory) returns an mt_status and records a one-line
// message naming the field, offset or value; the caller prints it with mt_last_error(). A bug (a broken
// invariant inside the engine) goes through MT_ASSERT, which prints file:line and aborts.
#ifndef MT_STATUS_H
#define MT_STATUS_H

#include <stdio.h>
#include <stdlib.h>

typedef enum mt_status {
    MT_OK = 0,
    MT_ERR_IO,          // file cannot be opened/read/mapped
    MT_ERR_FORMAT,      // malformed file contents
    MT_ERR_UNSUPPORTED, // valid but not supported (dtype, architecture, version)
    MT_ERR_INVALID,     // bad argument: flag, shape, dtype, value
    MT_ERR_NOMEM,       // allocation failed or a size limit was exceeded
    MT_ERR_RANGE,       // does not fit (prompt longer than the context, ...)
    MT_ERR_INTERNAL,
} mt_status;

const char *mt_status_name(mt_status s);

// Records a formatted message for the current thread and returns `s` (so `return mt_fail(...)` works).
mt_status mt_fail(mt_status s, const char *fmt, ...) __attribute__((format(printf, 2, 3)));
// The message of the last mt_fail on this thread ("" if none).
const char *mt_last_error(void);

#define MT_ABORT(...)                                                                                        \
    do {                                                                                                     \
        fprintf(stderr, "%s:%d: fatal: ", __FILE__, __LINE__);                                               \
        fprintf(stderr, __VA_ARGS__);                                                                        \
        fputc('\n', stderr);                                                                                 \
        abort();                                                                                             \
    } while (0)

#define MT_ASSERT(cond)                                                                                      \
    do {                                                                                                     \
        if (!(cond)) MT_ABORT("assertion failed: %s", #cond);                                                \
    } while (0)

// Propagate a non-OK status.
#define MT_TRY(expr)                                                                                         \
    do {                                                                                                     \
        mt_status mt_try_s_ = (expr);                                                                        \
        if (mt_try_s_ != MT_OK) return mt_try_s_;                                                            \
    } while (0)

// Checked allocation helpers: fail with MT_ERR_NOMEM naming what was being allocated.
void *mt_malloc(size_t n, const char *what);
void *mt_calloc(size_t count, size_t size, const char *what);
// 64-byte aligned (a cache line, one AVX-512 vector); release with free().
void *mt_malloc_aligned(size_t n, const char *what);

#endif
