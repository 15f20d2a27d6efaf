// The Qwen ChatML template: <|im_start|>role\ncontent<|im_end|>\n per turn, then <|im_start|>assistant\n.
#ifndef MT_CHAT_H
#define MT_CHAT_H

#include <stdbool.h>
#include <stddef.h>

#include "../core/status.h"

typedef struct mt_chat_msg {
    const char *role; // "system", "user", "assistant"
    const char *content;
} mt_chat_msg;

// The system prompt the model's own template inserts when the conversation has none (Qwen2.5:
// "You are Qwen, created by Alibaba Cloud. You are a helpful assistant."). Derived from the stored
// template text when given (NULL: the Qwen2.5 default).
const char *mt_chat_default_system(const char *template_text);
// Renders the conversation; a system turn is prepended when msgs[0] is not one and default_system is
// not NULL. *out is malloc'ed. Fails (naming the role) on an unknown role.
mt_status mt_chat_render(const mt_chat_msg *msgs, int n, const char *default_system,
                         bool add_generation_prompt, char **out);

#endif
