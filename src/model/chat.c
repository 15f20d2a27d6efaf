// ChatML rendering as the Qwen2.5 template does it, without a Jinja engine: the template's only
// model-specific choice (its default system prompt) is read out of the stored template text.
#include "chat.h"

#include <string.h>

static const char QWEN25_SYSTEM[] = "You are Qwen, created by Alibaba Cloud. You are a helpful assistant.";

// Unescapes a Jinja single-quoted string body starting at s (after the opening quote) into out; stops at
// the closing quote or at `stop` (if not NULL). Returns false if the string is unterminated or too long.
static bool jinja_literal(const char *s, const char *stop, char *out, size_t cap) {
    size_t o = 0;
    size_t stop_len = stop ? strlen(stop) : 0;
    for (; *s; s++) {
        if (*s == '\'') break;
        if (stop && strncmp(s, stop, stop_len) == 0) break;
        char c = *s;
        if (c == '\\') {
            s++;
            if (!*s) return false;
            c = *s == 'n' ? '\n' : *s == 't' ? '\t' : *s;
        }
        if (o + 1 >= cap) return false;
        out[o++] = c;
    }
    if (!*s) return false;
    out[o] = 0;
    return o > 0;
}

// A prompt read from the template lives in a per-thread buffer, valid until the next call on the thread.
const char *mt_chat_default_system(const char *template_text) {
    static _Thread_local char buf[1024];
    if (!template_text) return QWEN25_SYSTEM;
    // Forms: '<|im_start|>system\nTEXT<|im_end|>\n'  or  '<|im_start|>system\n' + 'TEXT'
    static const char *const heads[] = {"<|im_start|>system\\n", "<|im_start|>system\n"};
    for (int h = 0; h < 2; h++) {
        size_t hl = strlen(heads[h]);
        for (const char *p = strstr(template_text, heads[h]); p; p = strstr(p + 1, heads[h])) {
            const char *q = p + hl;
            if (*q == '\'') { // the literal ends here: only a concatenated string literal is a default
                q++;
                while (*q == ' ') q++;
                if (*q != '+') continue;
                q++;
                while (*q == ' ') q++;
                if (*q != '\'') continue;
                q++;
            }
            if (jinja_literal(q, "<|im_end|>", buf, sizeof buf)) return buf;
        }
    }
    return QWEN25_SYSTEM;
}

// Appends s to the growing buffer (capacity computed up front, so this never reallocates).
static void put(char *out, size_t *o, const char *s) {
    size_t n = strlen(s);
    memcpy(out + *o, s, n);
    *o += n;
}

mt_status mt_chat_render(const mt_chat_msg *msgs, int n, const char *default_system,
                         bool add_generation_prompt, char **out) {
    *out = NULL;
    if (n < 0 || (n > 0 && !msgs)) return mt_fail(MT_ERR_INVALID, "chat: %d messages", n);
    size_t cap = 64;
    for (int i = 0; i < n; i++) {
        const char *r = msgs[i].role;
        if (!r || (strcmp(r, "system") && strcmp(r, "user") && strcmp(r, "assistant") && strcmp(r, "tool")))
            return mt_fail(MT_ERR_INVALID,
                           "chat: message %d has unknown role \"%.40s\" (system, user, assistant, tool)", i,
                           r ? r : "(null)");
        cap += strlen(r) + (msgs[i].content ? strlen(msgs[i].content) : 0) + 64;
    }
    bool add_system = default_system && (n == 0 || strcmp(msgs[0].role, "system") != 0);
    if (add_system) cap += strlen(default_system) + 64;
    char *s = mt_malloc(cap, "chat prompt");
    if (!s) return MT_ERR_NOMEM;
    size_t o = 0;
    if (add_system) {
        put(s, &o, "<|im_start|>system\n");
        put(s, &o, default_system);
        put(s, &o, "<|im_end|>\n");
    }
    for (int i = 0; i < n; i++) {
        const char *role = msgs[i].role, *content = msgs[i].content ? msgs[i].content : "";
        if (strcmp(role, "tool") == 0) {
            // Consecutive tool results share one user turn, each wrapped in <tool_response>.
            if (i == 0 || strcmp(msgs[i - 1].role, "tool") != 0) put(s, &o, "<|im_start|>user");
            put(s, &o, "\n<tool_response>\n");
            put(s, &o, content);
            put(s, &o, "\n</tool_response>");
            if (i == n - 1 || strcmp(msgs[i + 1].role, "tool") != 0) put(s, &o, "<|im_end|>\n");
            continue;
        }
        put(s, &o, "<|im_start|>");
        put(s, &o, role);
        put(s, &o, "\n");
        put(s, &o, content);
        put(s, &o, "<|im_end|>\n");
    }
    if (add_generation_prompt) put(s, &o, "<|im_start|>assistant\n");
    MT_ASSERT(o < cap);
    s[o] = 0;
    *out = s;
    return MT_OK;
}
