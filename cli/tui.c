// The terminal dashboard. Layout (ncurses, redrawn whole ten times a second):
//
//   +- Generated Text ----------------+- Latency | Memory | Stats | Logs -+
//   | streamed tokens                 | the selected view                 |
//   +- Prompt ------------------------+                                   |
//   | tokens, prefill, generation     |                                   |
//   +---------------------------------+-----------------------------------+
//   status | tok/s (last 10 tokens) | backends | PROFILING ACTIVE | keys
//
// A worker thread loads the model and generates; it shares only `tui_state` (under its mutex) with the
// UI thread. The UI reads the latency tree and memory picture from telemetry.h, cache statistics from
// the cache list (exec/cache.h), and backend choices and the log view from the metrics ring.
// SIGINT/SIGTERM only set a flag; the UI loop then restores the terminal (endwin) before anything else.
#include "tui.h"

#include <cjson/cJSON.h>
#include <locale.h>
#include <ncurses.h>
#include <pthread.h>
#include <signal.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

#include "core/metrics.h"
#include "core/telemetry.h"
#include "exec/cache.h"
#include "metallic.h"
#include "model/chat.h"
#include "model/generate.h"
#include "model/tokenizer.h"

#define RING_LINES 8192
#define LOG_LINES 200
#define LINE_CAP 512
#define TREE_MAX 4096
#define RATE_WINDOW 10 // tok/s over the last 10 tokens, as the seed's status bar

enum phase { PH_LOADING, PH_PREFILL, PH_GENERATING, PH_DONE, PH_ERROR };
enum view { V_LATENCY, V_MEMORY, V_STATS };

typedef struct tui_state {
    pthread_mutex_t mu;
    const cli_opts *o;
    enum phase phase;
    char error[512];
    char *text;
    size_t len, cap;
    int n_prompt, n_gen;
    double t_start, t_first, prefill_ms, gen_ms; // ms on the monotonic clock
    double tok_t[RATE_WINDOW];                   // arrival times of the last tokens
    const char *stop;
    volatile sig_atomic_t cancel;
} tui_state;

static volatile sig_atomic_t g_signal; // the signal that asked us to leave, 0 if none

static void on_signal(int sig) {
    g_signal = sig;
}

static double now_ms(void) {
    return (double)mt_tel_now_ns() / 1e6;
}

// ---- worker thread ----

static int on_token(void *user, int32_t id, const char *piece, size_t len, const mt_logprob *top, int n_top) {
    (void)id, (void)top, (void)n_top;
    tui_state *t = user;
    double now = now_ms();
    pthread_mutex_lock(&t->mu);
    if (t->phase == PH_PREFILL) {
        t->phase = PH_GENERATING;
        t->t_first = now;
        t->prefill_ms = now - t->t_start; // replaced by the exact figure when generation returns
    }
    if (id >= 0) {
        t->tok_t[t->n_gen % RATE_WINDOW] = now;
        t->n_gen++;
    }
    t->gen_ms = now - t->t_first;
    if (t->len + len + 1 > t->cap) {
        size_t nc = t->cap ? t->cap : 4096;
        while (nc < t->len + len + 1) nc *= 2;
        char *nt = realloc(t->text, nc);
        if (nt) t->text = nt, t->cap = nc;
    }
    if (t->len + len + 1 <= t->cap) {
        memcpy(t->text + t->len, piece, len);
        t->len += len;
        t->text[t->len] = 0;
    }
    pthread_mutex_unlock(&t->mu);
    return t->cancel != 0;
}

static void worker_fail(tui_state *t, const char *what) {
    pthread_mutex_lock(&t->mu);
    snprintf(t->error, sizeof t->error, "%s: %s", what, mt_last_error());
    t->phase = PH_ERROR;
    pthread_mutex_unlock(&t->mu);
}

static void *worker(void *arg) {
    tui_state *t = arg;
    const cli_opts *o = t->o;
    mt_model *m = NULL;
    mt_session *s = NULL;
    mt_sampler *smp = NULL;
    char *rendered = NULL;
    int32_t *ids = NULL;
    size_t n_ids = 0;
    if (mt_model_load(o->model, &m) != MT_OK) {
        worker_fail(t, o->model);
        goto out;
    }
    mt_sampler_params sp;
    cli_sampler_params(o, mt_model_gen_params(m), &sp);
    mt_session_opts so = mt_session_default_opts();
    so.n_ctx = o->ctx;
    so.n_threads = o->threads;
    if (mt_sampler_params_check(&sp) != MT_OK || mt_session_create(m, &so, &s) != MT_OK ||
        mt_sampler_create(&sp, mt_model_config(m)->n_vocab, &smp) != MT_OK) {
        worker_fail(t, "setup");
        goto out;
    }
    if (!o->raw) {
        mt_chat_msg msgs[2];
        int nm = 0;
        if (o->system) msgs[nm++] = (mt_chat_msg){"system", o->system};
        msgs[nm++] = (mt_chat_msg){"user", o->prompt};
        if (mt_chat_render(msgs, nm, mt_chat_default_system(mt_model_chat_template(m)), true, &rendered) !=
            MT_OK) {
            worker_fail(t, "chat template");
            goto out;
        }
    }
    const char *text = rendered ? rendered : o->prompt;
    if (mt_tokenizer_encode(mt_model_tokenizer(m), text, strlen(text), true, &ids, &n_ids) != MT_OK) {
        worker_fail(t, "tokenizer");
        goto out;
    }
    pthread_mutex_lock(&t->mu);
    t->n_prompt = (int)n_ids;
    t->phase = PH_PREFILL;
    t->t_start = now_ms();
    pthread_mutex_unlock(&t->mu);
    mt_gen_opts go = mt_gen_default_opts();
    go.max_tokens = o->max_tokens;
    go.cancel = &t->cancel;
    go.on_token = on_token;
    go.user = t;
    mt_gen_result r;
    if (mt_generate(s, m, smp, ids, (int)n_ids, &go, &r) != MT_OK) {
        worker_fail(t, "generate");
        goto out;
    }
    pthread_mutex_lock(&t->mu);
    t->prefill_ms = r.prompt_ms;
    t->gen_ms = r.gen_ms;
    t->stop = mt_stop_reason_name(r.stop);
    t->phase = PH_DONE;
    pthread_mutex_unlock(&t->mu);
    mt_gen_result_free(&r);
out:
    free(ids);
    free(rendered);
    mt_sampler_free(smp);
    mt_session_free(s);
    mt_model_free(m);
    return NULL;
}

// ---- UI state ----

typedef struct cache_row {
    char name[32];
    long long hits, misses, size, evictions;
    double hit_rate;
} cache_row;

typedef struct ui {
    enum view view;
    bool logs;
    int depth;  // latency tree: deepest level shown (0 = top stages only)
    int scroll; // first line of the metric view
    uint64_t ring_cursor, events_seen, dropped;
    char (*log)[LINE_CAP]; // last LOG_LINES ring lines (circular)
    int log_head, log_count;
    char *batch; // ring read buffer
    char backends[256];
    cache_row ev_caches[16]; // caches known only from ResourceCacheSummary events
    int n_ev_caches;
    mt_tel_node *tree;
    int *order, n_order, order_for; // DFS order of the tree, rebuilt when its node count changes
} ui;

static void ui_log(ui *u, const char *line) {
    snprintf(u->log[u->log_head], LINE_CAP, "%s", line);
    u->log_head = (u->log_head + 1) % LOG_LINES;
    if (u->log_count < LOG_LINES) u->log_count++;
}

// Backend choices and cache summaries from the events; everything goes to the log view.
static void ui_poll_ring(ui *u) {
    for (;;) {
        uint64_t dropped = 0;
        int n = mt_metrics_ring_read_since(&u->ring_cursor, u->batch, 256, LINE_CAP, &dropped);
        u->dropped += dropped;
        for (int i = 0; i < n; i++) {
            const char *line = u->batch + (size_t)i * LINE_CAP;
            u->events_seen++;
            ui_log(u, line);
            bool sel = strstr(line, "\"KernelBackendSelected\"") != NULL;
            bool sum = !sel && strstr(line, "\"ResourceCacheSummary\"") != NULL;
            if (!sel && !sum) continue;
            cJSON *j = cJSON_Parse(line);
            if (!j) continue;
            if (sel) {
                const char *op = cJSON_GetStringValue(cJSON_GetObjectItem(j, "op"));
                const char *be = cJSON_GetStringValue(cJSON_GetObjectItem(j, "backend"));
                char item[64];
                snprintf(item, sizeof item, "%s=%s", op ? op : "?", be ? be : "?");
                if (!strstr(u->backends, item) &&
                    strlen(u->backends) + strlen(item) + 2 < sizeof u->backends) {
                    if (u->backends[0]) strcat(u->backends, " ");
                    strcat(u->backends, item);
                }
            } else {
                const char *name = cJSON_GetStringValue(cJSON_GetObjectItem(j, "cache"));
                int k = 0;
                while (k < u->n_ev_caches && strcmp(u->ev_caches[k].name, name ? name : "?")) k++;
                if (k == u->n_ev_caches && k < 16) u->n_ev_caches++;
                if (k < 16) {
                    cache_row *c = &u->ev_caches[k];
                    snprintf(c->name, sizeof c->name, "%s", name ? name : "?");
                    c->hits = (long long)cJSON_GetNumberValue(cJSON_GetObjectItem(j, "hits"));
                    c->misses = (long long)cJSON_GetNumberValue(cJSON_GetObjectItem(j, "misses"));
                    c->size = (long long)cJSON_GetNumberValue(cJSON_GetObjectItem(j, "size"));
                    cJSON *ev = cJSON_GetObjectItem(j, "evictions");
                    c->evictions = ev ? (long long)cJSON_GetNumberValue(ev) : 0;
                    c->hit_rate = cJSON_GetNumberValue(cJSON_GetObjectItem(j, "hit_rate"));
                }
            }
            cJSON_Delete(j);
        }
        if (n < 256) break;
    }
}

// ---- drawing helpers ----

static void box_at(int y, int x, int h, int w, const char *title) {
    if (h < 2 || w < 2) return;
    mvaddch(y, x, ACS_ULCORNER);
    mvhline(y, x + 1, ACS_HLINE, w - 2);
    mvaddch(y, x + w - 1, ACS_URCORNER);
    mvvline(y + 1, x, ACS_VLINE, h - 2);
    mvvline(y + 1, x + w - 1, ACS_VLINE, h - 2);
    mvaddch(y + h - 1, x, ACS_LLCORNER);
    mvhline(y + h - 1, x + 1, ACS_HLINE, w - 2);
    mvaddch(y + h - 1, x + w - 1, ACS_LRCORNER);
    if (title && w > 6) {
        attron(A_BOLD);
        mvprintw(y, x + 2, " %.*s ", w - 6, title);
        attroff(A_BOLD);
    }
}

static void human_bytes(uint64_t b, char *out, size_t cap) {
    if (b >= (1ull << 30))
        snprintf(out, cap, "%.2f GiB", b / 1073741824.0);
    else if (b >= (1ull << 20))
        snprintf(out, cap, "%.1f MiB", b / 1048576.0);
    else if (b >= 1024)
        snprintf(out, cap, "%.1f KiB", b / 1024.0);
    else
        snprintf(out, cap, "%llu B", (unsigned long long)b);
}

// Length in bytes of the UTF-8 sequence starting with c (1 for stray bytes).
static int u8len(unsigned char c) {
    return c < 0x80 ? 1 : (c >> 5) == 6 ? 2 : (c >> 4) == 14 ? 3 : (c >> 3) == 30 ? 4 : 1;
}

// Wraps text into the box by characters and shows the last lines that fit (the text streams in).
static void draw_text(const char *text, size_t len, int y, int x, int h, int w) {
    if (h <= 0 || w <= 0) return;
    int lines = 1, col = 0; // first pass: count wrapped lines, to know where the last h begin
    for (size_t i = 0; i < len; i += (size_t)u8len((unsigned char)text[i])) {
        if (text[i] == '\n') {
            lines++, col = 0;
            continue;
        }
        if (col == w) lines++, col = 0;
        col++;
    }
    int skip = lines > h ? lines - h : 0, line = 0;
    col = 0;
    move(y, x);
    for (size_t i = 0; i < len;) {
        int n = u8len((unsigned char)text[i]);
        if (i + (size_t)n > len) break;
        if (text[i] == '\n' || col == w) {
            line++, col = 0;
            if (line - skip >= h) break;
            if (line >= skip) move(y + line - skip, x);
            if (text[i] == '\n') {
                i++;
                continue;
            }
        }
        if (line >= skip) {
            unsigned char c = (unsigned char)text[i];
            if (c == '\t')
                addch(' ');
            else if (c < 0x20 || c == 0x7f)
                addch('?');
            else
                addnstr(text + i, n);
        }
        col++;
        i += (size_t)n;
    }
}

// ---- the views ----

static int view_line; // next line of the metric view, before scrolling

static void view_print(int y0, int x, int h, int w, int scroll, const char *fmt, ...)
    __attribute__((format(printf, 6, 7)));
static void view_print(int y0, int x, int h, int w, int scroll, const char *fmt, ...) {
    int row = view_line++ - scroll;
    if (row < 0 || row >= h) return;
    char buf[512];
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(buf, sizeof buf, fmt, ap);
    va_end(ap);
    mvaddnstr(y0 + row, x, buf, w);
}

static void tree_order(ui *u, int n) {
    if (u->order_for == n) return;
    // DFS: a node's children are the nodes whose path is it plus one component, in first-seen order
    int stack[256], sp = 0, k = 0;
    for (int r = 0; r < n; r++) {
        if (u->tree[r].depth != 0) continue;
        stack[sp++] = r;
        while (sp) {
            int i = stack[--sp];
            u->order[k++] = i;
            size_t pl = strlen(u->tree[i].path);
            int kids[512], nk = 0;
            for (int c = 0; c < n && nk < 512; c++)
                if (u->tree[c].depth == u->tree[i].depth + 1 &&
                    !strncmp(u->tree[c].path, u->tree[i].path, pl) && u->tree[c].path[pl] == '/')
                    kids[nk++] = c;
            for (int c = nk - 1; c >= 0 && sp < 256; c--) stack[sp++] = kids[c]; // first child on top
        }
    }
    u->n_order = k;
    u->order_for = n;
}

static void view_latency(ui *u, int y, int x, int h, int w) {
    int n = mt_tel_tree_snapshot(u->tree, TREE_MAX);
    view_print(y, x, h, w, u->scroll, "collapse depth %d (c)   %s", u->depth,
               mt_tel_profiling() ? "latency mode: per-op times"
                                  : "throughput mode: stages only (Ctrl+P for ops)");
    view_print(y, x, h, w, u->scroll, "%-*s %10s %10s %8s", w > 40 ? w - 32 : 8, "scope", "last ms", "avg ms",
               "count");
    if (n == 0) {
        view_print(y, x, h, w, u->scroll, "(no timings yet)");
        return;
    }
    tree_order(u, n);
    for (int k = 0; k < u->n_order; k++) {
        const mt_tel_node *nd = &u->tree[u->order[k]];
        if (nd->depth > u->depth) continue;
        const char *leaf = strrchr(nd->path, '/');
        leaf = leaf ? leaf + 1 : nd->path;
        char name[160];
        snprintf(name, sizeof name, "%*s%s", 2 * nd->depth, "", leaf);
        view_print(y, x, h, w, u->scroll, "%-*.*s %10.3f %10.3f %8llu", w > 40 ? w - 32 : 8,
                   w > 40 ? w - 32 : 8, name, nd->last_us / 1e3,
                   nd->count ? nd->total_us / 1e3 / (double)nd->count : 0.0, (unsigned long long)nd->count);
    }
}

static void view_memory(ui *u, int y, int x, int h, int w) {
    mt_tel_mem m;
    mt_tel_mem_get(&m);
    m.rss_bytes = mt_tel_rss_bytes();
    char a[32], b[32];
    human_bytes(m.file_bytes, a, sizeof a);
    view_print(y, x, h, w, u->scroll, "Model file (mmap)   %s", a);
    view_print(y, x, h, w, u->scroll, "  %s", m.file_path);
    human_bytes(m.weights_bytes, a, sizeof a);
    view_print(y, x, h, w, u->scroll, "Weights             %s", a);
    human_bytes(m.embd_bytes, a, sizeof a);
    view_print(y, x, h, w, u->scroll, "  token_embd        %s", a);
    human_bytes(m.output_bytes, a, sizeof a);
    view_print(y, x, h, w, u->scroll, "  output            %s%s", a,
               m.output_bytes ? "" : " (tied to token_embd)");
    if (u->depth >= 1)
        for (int i = 0; i < m.n_blocks; i++) {
            human_bytes(m.block_bytes[i], a, sizeof a);
            view_print(y, x, h, w, u->scroll, "  block %-3d         %s", i, a);
        }
    else
        view_print(y, x, h, w, u->scroll, "  %d blocks (c shows each)", m.n_blocks);
    human_bytes(m.kv_bytes, a, sizeof a);
    human_bytes(m.kv_used_bytes, b, sizeof b);
    view_print(y, x, h, w, u->scroll, "KV cache            %s reserved, %s written", a, b);
    human_bytes(m.scratch_bytes, a, sizeof a);
    view_print(y, x, h, w, u->scroll, "Scratch pools       %s reserved (touched as batches reach)", a);
    human_bytes(m.rss_bytes, a, sizeof a);
    view_print(y, x, h, w, u->scroll, "Host RSS            %s", a);
    if (m.device[0]) {
        human_bytes(m.device_used_bytes, a, sizeof a);
        human_bytes(m.device_total_bytes, b, sizeof b);
        view_print(y, x, h, w, u->scroll, "Device memory       %s: %s of %s", m.device, a, b);
    } else {
        view_print(y, x, h, w, u->scroll, "Device memory       none (CPU)");
    }
}

static void view_stats(ui *u, int y, int x, int h, int w) {
    view_print(y, x, h, w, u->scroll, "%-12s %6s %9s %9s %6s %6s", "cache", "size", "hits", "misses", "hit%",
               "evict");
    void *caches[16];
    const mt_cache_ops *ops[16];
    int n = mt_cache_list(caches, ops, 16);
    if (n > 16) n = 16;
    int shown = 0;
    for (int i = 0; i < n; i++) {
        mt_cache_metrics cm;
        memset(&cm, 0, sizeof cm);
        ops[i]->metrics(caches[i], &cm);
        view_print(y, x, h, w, u->scroll, "%-12.12s %6d %9llu %9llu %5.1f%% %6llu", cm.name, cm.size,
                   (unsigned long long)cm.hits, (unsigned long long)cm.misses, 100.0 * cm.hit_rate,
                   (unsigned long long)cm.evictions);
        shown++;
    }
    for (int i = 0; i < u->n_ev_caches; i++) {
        const cache_row *c = &u->ev_caches[i];
        bool listed = false;
        for (int k = 0; k < n; k++) {
            mt_cache_metrics cm;
            memset(&cm, 0, sizeof cm);
            ops[k]->metrics(caches[k], &cm);
            listed |= !strcmp(cm.name, c->name);
        }
        if (listed) continue;
        view_print(y, x, h, w, u->scroll, "%-12.12s %6lld %9lld %9lld %5.1f%% %6lld", c->name, c->size,
                   c->hits, c->misses, 100.0 * c->hit_rate, c->evictions);
        shown++;
    }
    if (!shown) view_print(y, x, h, w, u->scroll, "(no cache has reported: the legacy path uses none)");
    view_print(y, x, h, w, u->scroll, " ");
    view_print(y, x, h, w, u->scroll, "metric events seen  %llu (%llu dropped by the ring)",
               (unsigned long long)u->events_seen, (unsigned long long)u->dropped);
    view_print(y, x, h, w, u->scroll, "backend choices (KernelBackendSelected):");
    if (!u->backends[0]) view_print(y, x, h, w, u->scroll, "  (none reported)");
    // one op=backend pair per line, so a narrow pane shows them all
    for (const char *p = u->backends; *p;) {
        size_t n = strcspn(p, " ");
        view_print(y, x, h, w, u->scroll, "  %.*s", (int)n, p);
        p += n;
        while (*p == ' ') p++;
    }
}

static void view_logs(ui *u, int y, int x, int h, int w) {
    // newest at the bottom
    int show = u->log_count < h ? u->log_count : h;
    for (int i = 0; i < show; i++) {
        int idx = (u->log_head - show + i + LOG_LINES) % LOG_LINES;
        mvaddnstr(y + i, x, u->log[idx], w);
    }
    if (!u->log_count) mvaddnstr(y, x, "(no events yet)", w);
}

static void draw(ui *u, tui_state *t) {
    int H, W;
    getmaxyx(stdscr, H, W);
    erase();
    if (H < 12 || W < 50) {
        mvaddnstr(0, 0, "metallic: the dashboard needs at least 50x12; q quits", W);
        refresh();
        return;
    }
    int lw = W * 11 / 20, rw = W - lw, body = H - 1, ph = 6;
    pthread_mutex_lock(&t->mu);
    box_at(0, 0, body - ph, lw, "Generated Text");
    if (t->text) draw_text(t->text, t->len, 1, 1, body - ph - 2, lw - 2);
    box_at(body - ph, 0, ph, lw, "Prompt");
    mvprintw(body - ph + 1, 2, "Prompt Tokens:        %d", t->n_prompt);
    mvprintw(body - ph + 2, 2, "Pre-processing Time:  %.1f ms", t->prefill_ms);
    mvprintw(body - ph + 3, 2, "Generation Time:      %.1f ms (%d tokens)", t->gen_ms, t->n_gen);
    mvprintw(body - ph + 4, 2, "Prefill tok/s:        %.1f",
             t->prefill_ms > 0 ? t->n_prompt * 1e3 / t->prefill_ms : 0.0);
    // status bar values
    enum phase ph_now = t->phase;
    double rate = 0;
    int k = t->n_gen < RATE_WINDOW ? t->n_gen : RATE_WINDOW;
    if (k >= 2) {
        double newest = t->tok_t[(t->n_gen - 1) % RATE_WINDOW],
               oldest = t->tok_t[(t->n_gen - k) % RATE_WINDOW];
        if (newest > oldest) rate = (k - 1) * 1e3 / (newest - oldest);
    }
    char status[600];
    switch (ph_now) {
    case PH_LOADING:
        snprintf(status, sizeof status, "loading %s", t->o->model);
        break;
    case PH_PREFILL:
        snprintf(status, sizeof status, "prefill (%d tokens)", t->n_prompt);
        break;
    case PH_GENERATING:
        snprintf(status, sizeof status, "generating");
        break;
    case PH_DONE:
        snprintf(status, sizeof status, "done (%s), q quits", t->stop ? t->stop : "?");
        break;
    case PH_ERROR:
        snprintf(status, sizeof status, "error: %s", t->error);
        break;
    }
    pthread_mutex_unlock(&t->mu);

    const char *titles[] = {"Latency (l)", "Memory (m)", "Stats (s)"};
    box_at(0, lw, body, rw, u->logs ? "Logs (Ctrl+L)" : titles[u->view]);
    view_line = 0;
    int vy = 1, vx = lw + 1, vh = body - 2, vw = rw - 2;
    if (u->logs)
        view_logs(u, vy, vx, vh, vw);
    else if (u->view == V_LATENCY)
        view_latency(u, vy, vx, vh, vw);
    else if (u->view == V_MEMORY)
        view_memory(u, vy, vx, vh, vw);
    else
        view_stats(u, vy, vx, vh, vw);

    bool prof = mt_tel_profiling();
    char bar[1024];
    snprintf(bar, sizeof bar, " %s | %.1f tok/s | backend %s/cpu%s%s | m l s c ^L ^P q ", status, rate,
             t->o->backend, u->backends[0] ? " " : "", u->backends);
    attron(A_REVERSE);
    if (prof && has_colors()) attron(COLOR_PAIR(1));
    mvhline(H - 1, 0, ' ', W);
    mvaddnstr(H - 1, 0, bar, W);
    if (prof) {
        const char *p = " PROFILING ACTIVE ";
        int px = W - (int)strlen(p);
        if (px > 0) mvaddstr(H - 1, px, p);
    }
    if (prof && has_colors()) attroff(COLOR_PAIR(1));
    attroff(A_REVERSE);
    refresh();
}

int cli_tui_run(const cli_opts *o) {
    if (!isatty(STDIN_FILENO) || !isatty(STDOUT_FILENO)) {
        fprintf(stderr, "metallic: --output-format tui needs a terminal on stdin and stdout\n");
        return 2;
    }
    if (!strcmp(o->prompt, "-")) {
        fprintf(stderr,
                "metallic: --output-format tui reads keys from stdin, so the prompt cannot be \"-\"\n");
        return 2;
    }
    if (mt_metrics_init() != MT_OK) {
        fprintf(stderr, "metallic: %s\n", mt_last_error());
        return 1;
    }
    mt_metrics_ring_enable(RING_LINES); // before the load, so its events reach the views

    tui_state t;
    memset(&t, 0, sizeof t);
    pthread_mutex_init(&t.mu, NULL);
    t.o = o;
    ui u;
    memset(&u, 0, sizeof u);
    u.depth = 2;
    u.order_for = -1;
    u.log = calloc(LOG_LINES, LINE_CAP);
    u.batch = malloc(256 * (size_t)LINE_CAP);
    u.tree = malloc(TREE_MAX * sizeof *u.tree);
    u.order = malloc(TREE_MAX * sizeof *u.order);
    if (!u.log || !u.batch || !u.tree || !u.order) {
        fprintf(stderr, "metallic: out of memory starting the dashboard\n");
        return 1;
    }

    struct sigaction sa;
    memset(&sa, 0, sizeof sa);
    sa.sa_handler = on_signal;
    sigemptyset(&sa.sa_mask);
    sigaction(SIGINT, &sa, NULL);
    sigaction(SIGTERM, &sa, NULL);
    sigaction(SIGHUP, &sa, NULL);

    setlocale(LC_ALL, "");
    initscr();
    cbreak(); // Ctrl-C stays a signal; keys arrive one at a time
    noecho();
    keypad(stdscr, TRUE);
    curs_set(0);
    timeout(100);
    if (has_colors()) {
        start_color();
        init_pair(1, COLOR_WHITE, COLOR_RED);
    }

    pthread_t th;
    if (pthread_create(&th, NULL, worker, &t) != 0) {
        endwin();
        fprintf(stderr, "metallic: cannot start the generation thread\n");
        return 1;
    }
    int rc = 0;
    for (;;) {
        if (g_signal) {
            rc = 128 + (int)g_signal;
            break;
        }
        ui_poll_ring(&u);
        draw(&u, &t);
        int ch = getch();
        if (ch == 'q' || ch == 'Q') break;
        switch (ch) {
        case 'm':
            u.view = V_MEMORY, u.logs = false, u.scroll = 0;
            break;
        case 'l':
            u.view = V_LATENCY, u.logs = false, u.scroll = 0;
            break;
        case 's':
            u.view = V_STATS, u.logs = false, u.scroll = 0;
            break;
        case 'c':
            u.depth = (u.depth + 1) % 4;
            break;
        case 12: // Ctrl+L
            u.logs = !u.logs;
            break;
        case 16: // Ctrl+P
            mt_tel_set_profiling(!mt_tel_profiling());
            break;
        case KEY_DOWN:
        case 'j':
            u.scroll++;
            break;
        case KEY_UP:
        case 'k':
            if (u.scroll > 0) u.scroll--;
            break;
        case KEY_NPAGE:
            u.scroll += 10;
            break;
        case KEY_PPAGE:
            u.scroll = u.scroll > 10 ? u.scroll - 10 : 0;
            break;
        default:
            break;
        }
    }
    // the terminal first, so whatever happens next the user gets their shell back
    endwin();
    t.cancel = 1;
    pthread_join(th, NULL);
    pthread_mutex_lock(&t.mu);
    if (t.phase == PH_ERROR) {
        fprintf(stderr, "metallic: %s\n", t.error);
        if (!rc) rc = 1;
    } else if (t.text) {
        fwrite(t.text, 1, t.len, stdout);
        if (t.len && t.text[t.len - 1] != '\n') putchar('\n');
        fprintf(stderr, "prompt: %d tok, %.1f ms | gen: %d tok, %.1f ms%s\n", t.n_prompt, t.prefill_ms,
                t.n_gen, t.gen_ms, rc == 130 ? " (interrupted)" : "");
    }
    pthread_mutex_unlock(&t.mu);
    free(t.text);
    free(u.log);
    free(u.batch);
    free(u.tree);
    free(u.order);
    return rc;
}
