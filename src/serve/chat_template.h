/* serve/chat_template: the text a list of chat messages becomes before tokenization. xlkv models have no chat
 * template of their own (llama2.c checkpoints, base models), so the server uses one plain-text format:
 *     <system content>\n\n          (each system message, when present)
 *     User: <content>\n
 *     Assistant: <content>\n
 *     ...
 *     Assistant:
 * and stops an answer at "\nUser:" (serve/serve_request adds that stop string). */
#ifndef XLKV_SERVE_CHAT_TEMPLATE_H
#define XLKV_SERVE_CHAT_TEMPLATE_H

#include <stddef.h>

typedef enum serve_chat_role { SERVE_ROLE_SYSTEM, SERVE_ROLE_USER, SERVE_ROLE_ASSISTANT } serve_chat_role;

#define SERVE_CHAT_STOP "\nUser:"

/* The prompt text for n messages (heap string; NULL when out of memory). */
char *serve_chat_render(const serve_chat_role *roles, const char *const *contents, int n);

#endif
