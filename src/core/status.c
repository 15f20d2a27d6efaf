#include "status.h"

#include <stdarg.h>
#include <string.h>

static _Thread_local char last_error[512];

const char *mt_status_name(mt_status s) {
    switch (s) {
    case MT_OK:
        return "ok";
    case MT_ERR_IO:
        return "io error";
    case MT_ERR_FORMAT:
        return "format error";
    case MT_ERR_UNSUPPORTED:
        return "unsupported";
    case MT_ERR_INVALID:
        return "invalid argument";
    case MT_ERR_NOMEM:
        return "out of memory";
    case MT_ERR_RANGE:
        return "out of range";
    case MT_ERR_INTERNAL:
        return "internal error";
    }
    return "unknown status";
}

mt_status mt_fail(mt_status s, const char *fmt, ...) {
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(last_error, sizeof last_error, fmt, ap);
    va_end(ap);
    return s;
}

const char *mt_last_error(void) {
    return last_error;
}

void *mt_malloc(size_t n, const char *what) {
    void *p = malloc(n ? n : 1);
    if (!p) mt_fail(MT_ERR_NOMEM, "cannot allocate %zu bytes for %s", n, what);
    return p;
}

void *mt_malloc_aligned(size_t n, const char *what) {
    size_t rounded = (n + 63) & ~(size_t)63; // aligned_alloc wants a multiple of the alignment
    void *p = rounded >= n ? aligned_alloc(64, rounded ? rounded : 64) : NULL;
    if (!p) mt_fail(MT_ERR_NOMEM, "cannot allocate %zu aligned bytes for %s", n, what);
    return p;
}

void *mt_calloc(size_t count, size_t size, const char *what) {
    void *p = calloc(count ? count : 1, size ? size : 1);
    if (!p) mt_fail(MT_ERR_NOMEM, "cannot allocate %zu x %zu bytes for %s", count, size, what);
    return p;
}
