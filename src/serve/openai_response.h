/* serve/openai_response: the JSON bodies of successful generation responses in OpenAI's shapes: a whole completion
 * ("text_completion" / "chat.completion" with choices, finish_reason and usage) and the streamed chunks
 * ("text_completion" / "chat.completion.chunk"; the chat stream opens with the assistant role and ends with an empty
 * delta carrying finish_reason), plus the usage chunk of stream_options.include_usage. Text is made valid UTF-8
 * (invalid bytes become U+FFFD) before it goes into JSON. */
#ifndef XLKV_SERVE_OPENAI_RESPONSE_H
#define XLKV_SERVE_OPENAI_RESPONSE_H

#include <stdbool.h>
#include <stddef.h>

typedef struct openai_meta {
    bool chat;
    const char *id;      /* "cmpl-..." / "chatcmpl-..." */
    long long created;   /* Unix seconds */
    const char *model;
} openai_meta;

/* All return heap strings (NULL when out of memory). finish_reason NULL = null. */
char *openai_completion_json(const openai_meta *m, const char *text, size_t len, const char *finish_reason,
                             int prompt_tokens, int completion_tokens);
/* A chunk with text (or, for chat, role_delta: {"role":"assistant","content":""}); finish_reason NULL while running. */
char *openai_chunk_json(const openai_meta *m, const char *text, size_t len, bool role_delta, const char *finish_reason);
/* The last chunk of stream_options.include_usage: empty choices and the usage. */
char *openai_usage_chunk_json(const openai_meta *m, int prompt_tokens, int completion_tokens);

/* Copies text[0..len) with every invalid UTF-8 sequence replaced by U+FFFD (heap, NUL-terminated). */
char *openai_valid_utf8(const char *text, size_t len);

#endif
