/* serve/openai_response: see openai_response.h. */
#include "serve/openai_response.h"

#include <stdlib.h>
#include <string.h>

#include <cjson/cJSON.h>

/* Bytes of the valid UTF-8 sequence at s[0..n), or 0 when it is not one (overlongs, surrogates, > U+10FFFF). */
static size_t valid_sequence(const unsigned char *s, size_t n) {
    if (s[0] < 0x80) return 1;
    size_t len;
    unsigned cp;
    if (s[0] >= 0xC2 && s[0] <= 0xDF) len = 2, cp = s[0] & 0x1Fu;
    else if (s[0] >= 0xE0 && s[0] <= 0xEF) len = 3, cp = s[0] & 0x0Fu;
    else if (s[0] >= 0xF0 && s[0] <= 0xF4) len = 4, cp = s[0] & 0x07u;
    else return 0;
    if (n < len) return 0;
    for (size_t i = 1; i < len; i++) {
        if ((s[i] & 0xC0) != 0x80) return 0;
        cp = (cp << 6) | (s[i] & 0x3Fu);
    }
    if ((len == 3 && cp < 0x800) || (len == 4 && (cp < 0x10000 || cp > 0x10FFFF)) || (cp >= 0xD800 && cp <= 0xDFFF))
        return 0;
    return len;
}

char *openai_valid_utf8(const char *text, size_t len) {
    char *out = malloc(len * 3 + 1);
    if (!out) return NULL;
    size_t o = 0;
    for (size_t i = 0; i < len;) {
        const size_t n = valid_sequence((const unsigned char *)text + i, len - i);
        if (n) {
            memcpy(out + o, text + i, n);
            o += n;
            i += n;
        } else {
            memcpy(out + o, "\xEF\xBF\xBD", 3);
            o += 3;
            i++;
        }
    }
    out[o] = '\0';
    return out;
}

static cJSON *envelope(const openai_meta *m, const char *object) {
    cJSON *root = cJSON_CreateObject();
    cJSON_AddStringToObject(root, "id", m->id);
    cJSON_AddStringToObject(root, "object", object);
    cJSON_AddNumberToObject(root, "created", (double)m->created);
    cJSON_AddStringToObject(root, "model", m->model);
    return root;
}

static void add_usage(cJSON *root, int prompt_tokens, int completion_tokens) {
    cJSON *usage = cJSON_AddObjectToObject(root, "usage");
    cJSON_AddNumberToObject(usage, "prompt_tokens", prompt_tokens);
    cJSON_AddNumberToObject(usage, "completion_tokens", completion_tokens);
    cJSON_AddNumberToObject(usage, "total_tokens", prompt_tokens + completion_tokens);
}

static void add_finish(cJSON *choice, const char *finish_reason) {
    if (finish_reason) cJSON_AddStringToObject(choice, "finish_reason", finish_reason);
    else cJSON_AddNullToObject(choice, "finish_reason");
}

static char *print_and_free(cJSON *root, char *text) {
    char *json = text ? cJSON_PrintUnformatted(root) : NULL;
    cJSON_Delete(root);
    free(text);
    return json;
}

char *openai_completion_json(const openai_meta *m, const char *text, size_t len, const char *finish_reason,
                             int prompt_tokens, int completion_tokens) {
    char *valid = openai_valid_utf8(text, len);
    cJSON *root = envelope(m, m->chat ? "chat.completion" : "text_completion");
    cJSON *choice = cJSON_CreateObject();
    cJSON_AddItemToArray(cJSON_AddArrayToObject(root, "choices"), choice);
    cJSON_AddNumberToObject(choice, "index", 0);
    if (m->chat) {
        cJSON *message = cJSON_AddObjectToObject(choice, "message");
        cJSON_AddStringToObject(message, "role", "assistant");
        cJSON_AddStringToObject(message, "content", valid ? valid : "");
    } else {
        cJSON_AddStringToObject(choice, "text", valid ? valid : "");
    }
    cJSON_AddNullToObject(choice, "logprobs");
    add_finish(choice, finish_reason);
    add_usage(root, prompt_tokens, completion_tokens);
    return print_and_free(root, valid);
}

char *openai_chunk_json(const openai_meta *m, const char *text, size_t len, bool role_delta, const char *finish_reason) {
    char *valid = openai_valid_utf8(text, len);
    cJSON *root = envelope(m, m->chat ? "chat.completion.chunk" : "text_completion");
    cJSON *choice = cJSON_CreateObject();
    cJSON_AddItemToArray(cJSON_AddArrayToObject(root, "choices"), choice);
    cJSON_AddNumberToObject(choice, "index", 0);
    if (m->chat) {
        cJSON *delta = cJSON_AddObjectToObject(choice, "delta");
        if (role_delta) {
            cJSON_AddStringToObject(delta, "role", "assistant");
            cJSON_AddStringToObject(delta, "content", "");
        } else if (len > 0 || !finish_reason) {
            cJSON_AddStringToObject(delta, "content", valid ? valid : "");
        }
    } else {
        cJSON_AddStringToObject(choice, "text", valid ? valid : "");
    }
    cJSON_AddNullToObject(choice, "logprobs");
    add_finish(choice, finish_reason);
    return print_and_free(root, valid);
}

char *openai_usage_chunk_json(const openai_meta *m, int prompt_tokens, int completion_tokens) {
    cJSON *root = envelope(m, m->chat ? "chat.completion.chunk" : "text_completion");
    cJSON_AddArrayToObject(root, "choices");
    add_usage(root, prompt_tokens, completion_tokens);
    char *json = cJSON_PrintUnformatted(root);
    cJSON_Delete(root);
    return json;
}
