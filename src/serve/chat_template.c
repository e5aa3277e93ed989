/* serve/chat_template: see chat_template.h. */
#include "serve/chat_template.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

char *serve_chat_render(const serve_chat_role *roles, const char *const *contents, int n) {
    size_t size = sizeof "Assistant:";
    for (int i = 0; i < n; i++) size += strlen(contents[i]) + sizeof "Assistant: \n";
    char *text = malloc(size);
    if (!text) return NULL;
    size_t len = 0;
    for (int i = 0; i < n; i++) {
        const char *prefix = roles[i] == SERVE_ROLE_SYSTEM ? "" : roles[i] == SERVE_ROLE_USER ? "User: " : "Assistant: ";
        const char *suffix = roles[i] == SERVE_ROLE_SYSTEM ? "\n\n" : "\n";
        len += (size_t)sprintf(text + len, "%s%s%s", prefix, contents[i], suffix);
    }
    memcpy(text + len, "Assistant:", sizeof "Assistant:");
    return text;
}
