// The generation loop: one batched prefill, then sample -> stream -> decode per token, with timings,
// top-K logprobs and cancellation. Everything a run needs is allocated before the first token.
#include "generate.h"

#include <math.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "../core/telemetry.h"
#include "tokenizer.h"

const char *mt_stop_reason_name(mt_stop_reason r) {
    switch (r) {
    case MT_STOP_EOS:
        return "eos";
    case MT_STOP_LENGTH:
        return "length";
    case MT_STOP_CANCELLED:
        return "cancelled";
    }
    return "?";
}

mt_gen_opts mt_gen_default_opts(void) {
    mt_gen_opts o = {.max_tokens = 256};
    return o;
}

static double now_ms(void) {
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return ts.tv_sec * 1e3 + ts.tv_nsec / 1e6;
}

void mt_top_logprobs(const float *logits, int n_vocab, int k, mt_logprob *out) {
    if (k > n_vocab) k = n_vocab;
    if (k <= 0) return;
    float mx = -INFINITY;
    for (int i = 0; i < n_vocab; i++)
        if (logits[i] > mx) mx = logits[i];
    double z = 0.0;
    for (int i = 0; i < n_vocab; i++) z += exp((double)logits[i] - mx);
    const double lse = mx + log(z > 0 ? z : 1.0); // z >= 1 unless every logit is NaN
    // Insertion into a sorted list of k: a new entry is rare after the first few, so this stays ~O(n).
    int have = 0;
    for (int i = 0; i < n_vocab; i++) {
        float l = logits[i];
        if (l != l) continue;
        if (have == k && !(l > out[k - 1].logprob)) continue; // ties keep the lower id
        int j = have < k ? have++ : k - 1;
        while (j > 0 && out[j - 1].logprob < l) {
            out[j] = out[j - 1];
            j--;
        }
        out[j].id = i;
        out[j].logprob = l;
    }
    for (int j = 0; j < have; j++) out[j].logprob = (float)((double)out[j].logprob - lse);
    for (int j = have; j < k; j++) out[j] = (mt_logprob){-1, -INFINITY}; // only with NaN logits
}

static int is_eos(const mt_qwen2_config *c, int32_t id) {
    for (int i = 0; i < c->n_eos; i++)
        if (c->eos_ids[i] == id) return 1;
    return 0;
}

// Appends bytes to the result's text, doubling its capacity when needed.
static mt_status text_append(mt_gen_result *r, size_t *cap, const char *p, size_t n) {
    if (r->text_len + n + 1 > *cap) {
        size_t nc = *cap * 2;
        while (nc < r->text_len + n + 1) nc *= 2;
        char *t = realloc(r->text, nc);
        if (!t) return mt_fail(MT_ERR_NOMEM, "generate: text buffer of %zu bytes", nc);
        r->text = t;
        *cap = nc;
    }
    memcpy(r->text + r->text_len, p, n);
    r->text_len += n;
    r->text[r->text_len] = 0;
    return MT_OK;
}

mt_status mt_generate(mt_session *s, const mt_model *m, mt_sampler *smp, const int32_t *ids, int n,
                      const mt_gen_opts *o, mt_gen_result *out) {
    memset(out, 0, sizeof *out);
    const mt_qwen2_config *cfg = mt_model_config(m);
    const mt_tokenizer *tok = mt_model_tokenizer(m);
    const int n_ctx = mt_session_n_ctx(s);
    if (o->max_tokens <= 0)
        return mt_fail(MT_ERR_INVALID, "generate: max_tokens = %d must be > 0", o->max_tokens);
    if (o->n_logprobs < 0 || o->n_logprobs > MT_GEN_MAX_LOGPROBS)
        return mt_fail(MT_ERR_INVALID, "generate: n_logprobs = %d is out of range [0, %d]", o->n_logprobs,
                       MT_GEN_MAX_LOGPROBS);
    if (n <= 0) return mt_fail(MT_ERR_INVALID, "generate: the prompt is empty (0 tokens)");
    if (o->n_past < 0 || o->n_past >= n)
        return mt_fail(MT_ERR_INVALID, "generate: n_past = %d must be in [0, %d)", o->n_past, n);
    if (n > n_ctx)
        return mt_fail(MT_ERR_RANGE, "prompt of %d tokens does not fit the context of %d tokens", n, n_ctx);
    for (int i = o->n_past; i < n; i++)
        if (ids[i] < 0 || ids[i] >= cfg->n_vocab)
            return mt_fail(MT_ERR_INVALID, "generate: prompt token %d = %d is outside the vocabulary (%d)", i,
                           ids[i], cfg->n_vocab);

    // All buffers up front: history = prompt + every token we may generate.
    const int n_new = n - o->n_past;
    const int hist_cap = n + o->max_tokens;
    int32_t *hist = mt_malloc((size_t)hist_cap * sizeof *hist, "generate history");
    int32_t *pos = mt_malloc((size_t)n_new * sizeof *pos, "generate positions");
    int32_t *seq = mt_malloc((size_t)n_new * sizeof *seq, "generate sequence ids");
    size_t text_cap = 4096;
    out->text = mt_malloc(text_cap, "generate text");
    out->tokens = mt_malloc((size_t)o->max_tokens * sizeof *out->tokens, "generate tokens");
    out->n_logprobs = o->n_logprobs;
    if (o->n_logprobs)
        out->logprobs = mt_malloc((size_t)o->max_tokens * o->n_logprobs * sizeof *out->logprobs, "logprobs");
    mt_status st = MT_OK;
    bool in_iter = false; // inside a timed generation_loop iteration (telemetry.h)
    if (!hist || !pos || !seq || !out->text || !out->tokens || (o->n_logprobs && !out->logprobs)) {
        st = MT_ERR_NOMEM;
        goto done;
    }
    out->text[0] = 0;
    memcpy(hist, ids, (size_t)n * sizeof *hist);
    for (int i = 0; i < n_new; i++) pos[i] = o->n_past + i, seq[i] = o->seq;
    out->n_prompt = n_new;

    double t0 = now_ms();
    mt_batch b = {n_new, ids + o->n_past, pos, seq, NULL};
    // stage timings (telemetry.h): only with a metrics sink or latency mode, else one branch each
    in_iter = mt_tel_active();
    if (in_iter) mt_tel_begin("prompt_processing");
    st = mt_session_decode(s, &b);
    if (in_iter) {
        mt_tel_end("prompt_processing_total");
        in_iter = false;
        mt_tel_emit_host_memory();
    }
    if (st != MT_OK) goto done;
    double t1 = now_ms();
    out->prompt_ms = t1 - t0;
    out->prompt_tok_s = out->prompt_ms > 0 ? n_new * 1e3 / out->prompt_ms : 0;

    mt_detok dt;
    mt_detok_init(&dt, tok);
    char piece[4096]; // detokenizer output: one token's bytes plus any held partial character
    int n_hist = n;
    const bool greedy_dev = mt_sampler_is_greedy(smp) && o->n_logprobs == 0;
    // Sampling on the device is opt-in (METALLIC_DEVICE_SAMPLING=1) until the GPU check has run its
    // comparison with the CPU sampler (tests/test-cuda-sample.c); by default the logits row is downloaded.
    const char *ds = getenv("METALLIC_DEVICE_SAMPLING");
    const bool sample_dev = !greedy_dev && o->n_logprobs == 0 && ds && !strcmp(ds, "1");
    out->stop = MT_STOP_LENGTH;
    for (;;) {
        if (in_iter) mt_tel_end("iteration_total");
        if ((in_iter = mt_tel_active())) mt_tel_begin("generation_loop");
        if (o->cancel && *o->cancel) {
            out->stop = MT_STOP_CANCELLED;
            break;
        }
        // the point where a device backend waits for the logits; on the CPU they are already in memory.
        // Greedy without logprobs takes the argmax where the logits live: on a GPU only the id crosses.
        int32_t id;
        const float *logits = NULL;
        if (greedy_dev) {
            // the wait for the device's result; the choice itself is made there, so sampling is empty
            if (in_iter) mt_tel_begin("logits_sync");
            st = mt_session_argmax(s, 0, &id);
            if (in_iter) mt_tel_end("logits_sync");
            if (st != MT_OK) goto done;
            if (in_iter) {
                mt_tel_begin("sampling");
                mt_tel_end("sampling");
            }
        } else if (sample_dev) {
            // the choice is made where the logits live (on a GPU only the id crosses), so logits_sync is
            // empty and sampling is the whole choice, the device's kernels and the wait for them included
            if (in_iter) {
                mt_tel_begin("logits_sync");
                mt_tel_end("logits_sync");
                mt_tel_begin("sampling");
            }
            st = mt_session_sample(s, 0, smp, hist, n_hist, &id);
            if (in_iter) mt_tel_end("sampling");
            if (st != MT_OK) goto done;
        } else {
            if (in_iter) mt_tel_begin("logits_sync");
            logits = mt_session_logits(s, 0);
            if (in_iter) mt_tel_end("logits_sync");
            MT_ASSERT(logits != NULL);
            if (in_iter) mt_tel_begin("sampling");
            id = mt_sampler_sample(smp, logits, hist, n_hist);
            if (in_iter) mt_tel_end("sampling");
        }
        if (is_eos(cfg, id)) {
            out->stop = MT_STOP_EOS;
            break;
        }
        mt_logprob *top = NULL;
        if (o->n_logprobs) {
            top = out->logprobs + (size_t)out->n_tokens * o->n_logprobs;
            mt_top_logprobs(logits, cfg->n_vocab, o->n_logprobs, top);
        }
        out->tokens[out->n_tokens++] = id;
        hist[n_hist++] = id;
        int len = mt_detok_push(&dt, id, piece, sizeof piece);
        if (len < 0) len = 0; // an embedding row without a vocabulary entry prints nothing
        if ((st = text_append(out, &text_cap, piece, (size_t)len)) != MT_OK) goto done;
        if (o->on_token && o->on_token(o->user, id, piece, (size_t)len, top, o->n_logprobs)) {
            out->stop = MT_STOP_CANCELLED;
            break;
        }
        if (out->n_tokens >= o->max_tokens) break;
        if (n_hist > n_ctx) break; // this token's position n_hist - 1 is past the context: full
        int32_t p1 = n_hist - 1, s1 = o->seq;
        mt_batch one = {1, &id, &p1, &s1, NULL};
        if ((st = mt_session_decode(s, &one)) != MT_OK) goto done;
    }
    if (in_iter) {
        mt_tel_end("iteration_total");
        in_iter = false;
    }
    int len = mt_detok_flush(&dt, piece, sizeof piece);
    if (len > 0) {
        if ((st = text_append(out, &text_cap, piece, (size_t)len)) != MT_OK) goto done;
        if (o->on_token) o->on_token(o->user, -1, piece, (size_t)len, NULL, 0);
    }
    out->gen_ms = now_ms() - t1;
    out->gen_tok_s = out->gen_ms > 0 ? out->n_tokens * 1e3 / out->gen_ms : 0;
    if (mt_tel_active()) mt_tel_emit_host_memory();

done:
    if (in_iter) mt_tel_end("iteration_total"); // an error inside an iteration
    free(hist);
    free(pos);
    free(seq);
    if (st != MT_OK) mt_gen_result_free(out);
    return st;
}

void mt_gen_result_free(mt_gen_result *r) {
    free(r->tokens);
    free(r->text);
    free(r->logprobs);
    memset(r, 0, sizeof *r);
}
