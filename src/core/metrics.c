// Metric event sinks. Each event is formatted once into a line and written whole with one write(2) on an
// O_APPEND descriptor, so a process killed mid-run leaves only complete lines in the JSONL file.
#include "metrics.h"

#include <errno.h>
#include <fcntl.h>
#include <pthread.h>
#include <stdarg.h>
#include <stdio.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

static pthread_once_t once = PTHREAD_ONCE_INIT;
static pthread_mutex_t mu = PTHREAD_MUTEX_INITIALIZER;
static int jsonl_fd = -1;
static bool console;
static bool enabled;
static mt_status init_status = MT_OK;
static char init_error[512];

static char *ring; // ring_n lines of RING_LINE bytes
static size_t ring_n, ring_head, ring_count;
static uint64_t ring_pushed; // lines ever pushed: the sequence number of the newest is ring_pushed
#define RING_LINE 512

uint64_t mt_now_us(void) {
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (uint64_t)ts.tv_sec * 1000000u + (uint64_t)ts.tv_nsec / 1000u;
}

static void init_once(void) {
    const char *path = getenv("METALLIC_METRICS_JSONL_PATH");
    if (path && *path) {
        jsonl_fd = open(path, O_WRONLY | O_CREAT | O_APPEND | O_CLOEXEC, 0644);
        if (jsonl_fd < 0) {
            init_status = MT_ERR_IO;
            snprintf(init_error, sizeof init_error, "METALLIC_METRICS_JSONL_PATH=%s: %s", path,
                     strerror(errno));
        }
    }
    const char *c = getenv("METALLIC_METRICS_CONSOLE");
    console = c && *c && strcmp(c, "0") != 0;
    enabled = jsonl_fd >= 0 || console;
}

mt_status mt_metrics_init(void) {
    pthread_once(&once, init_once);
    if (init_status != MT_OK) return mt_fail(init_status, "%s", init_error);
    return MT_OK;
}

bool mt_metrics_enabled(void) {
    pthread_once(&once, init_once);
    return enabled;
}

void mt_metrics_escape(const char *s, char *out, size_t cap) {
    size_t o = 0;
    for (; *s && o + 7 < cap; s++) {
        unsigned char ch = (unsigned char)*s;
        if (ch == '"' || ch == '\\') {
            out[o++] = '\\';
            out[o++] = (char)ch;
        } else if (ch < 0x20) {
            o += (size_t)snprintf(out + o, cap - o, "\\u%04x", ch);
        } else {
            out[o++] = (char)ch;
        }
    }
    if (cap) out[o < cap ? o : cap - 1] = 0;
}

void mt_metrics_emitf(const char *event, const char *fmt, ...) {
    if (!mt_metrics_enabled()) return;
    char line[4096];
    int n = snprintf(line, sizeof line, "{\"ts_us\":%llu,\"event\":\"%s\"", (unsigned long long)mt_now_us(),
                     event);
    if (fmt && *fmt && n < (int)sizeof line - 2) {
        line[n++] = ',';
        va_list ap;
        va_start(ap, fmt);
        int m = vsnprintf(line + n, sizeof line - (size_t)n, fmt, ap);
        va_end(ap);
        if (m < 0 || n + m >= (int)sizeof line - 2) {
            // never write a cut-off object: replace the fields with a note
            n = snprintf(line, sizeof line, "{\"ts_us\":%llu,\"event\":\"%s\",\"truncated\":true",
                         (unsigned long long)mt_now_us(), event);
        } else {
            n += m;
        }
    }
    line[n++] = '}';
    line[n++] = '\n';
    pthread_mutex_lock(&mu);
    if (jsonl_fd >= 0) {
        ssize_t w = write(jsonl_fd, line, (size_t)n);
        (void)w;
    }
    if (console) fwrite(line, 1, (size_t)n, stderr);
    if (ring) {
        size_t len = (size_t)n - 1 < RING_LINE - 1 ? (size_t)n - 1 : RING_LINE - 1;
        char *slot = ring + ring_head * RING_LINE;
        memcpy(slot, line, len);
        slot[len] = 0;
        ring_head = (ring_head + 1) % ring_n;
        if (ring_count < ring_n) ring_count++;
        ring_pushed++;
    }
    pthread_mutex_unlock(&mu);
}

void mt_metrics_ring_enable(size_t n_lines) {
    pthread_once(&once, init_once);
    pthread_mutex_lock(&mu);
    if (!ring && n_lines > 0) {
        ring = calloc(n_lines, RING_LINE);
        if (ring) {
            ring_n = n_lines;
            enabled = true;
        }
    }
    pthread_mutex_unlock(&mu);
}

int mt_metrics_ring_read(char *out, int max, size_t line_cap) {
    pthread_mutex_lock(&mu);
    int k = 0;
    size_t take = ring_count < (size_t)max ? ring_count : (size_t)max;
    for (size_t i = 0; i < take; i++) {
        size_t idx = (ring_head + ring_n - take + i) % ring_n;
        snprintf(out + (size_t)k * line_cap, line_cap, "%s", ring + idx * RING_LINE);
        k++;
    }
    pthread_mutex_unlock(&mu);
    return k;
}

int mt_metrics_ring_read_since(uint64_t *cursor, char *out, int max, size_t line_cap, uint64_t *dropped) {
    pthread_mutex_lock(&mu);
    uint64_t oldest = ring_pushed - ring_count; // sequence number of the oldest held line, minus one
    uint64_t from = *cursor < oldest ? oldest : *cursor;
    if (dropped) *dropped = from - *cursor;
    uint64_t avail = ring_pushed - from;
    int k = 0;
    for (uint64_t i = 0; i < avail && k < max; i++, k++) {
        // line with sequence number from+1+i sits (ring_pushed - (from+1+i)) slots behind the head
        size_t back = (size_t)(ring_pushed - from - i);
        size_t idx = (ring_head + ring_n - back) % ring_n;
        snprintf(out + (size_t)k * line_cap, line_cap, "%s", ring + idx * RING_LINE);
    }
    *cursor = from + (uint64_t)k;
    pthread_mutex_unlock(&mu);
    return k;
}

void mt_metrics_shutdown(void) {
    pthread_mutex_lock(&mu);
    if (jsonl_fd >= 0) close(jsonl_fd);
    jsonl_fd = -1;
    free(ring);
    ring = NULL;
    ring_n = ring_head = ring_count = 0;
    ring_pushed = 0;
    enabled = console;
    pthread_mutex_unlock(&mu);
}
