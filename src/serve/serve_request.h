/* serve/serve_request: a /v1/completions or /v1/chat/completions body, parsed and validated into what the scheduler
 * runs. Owns the strict reading of the OpenAI request shape: types, ranges, unknown fields (rejected), fields that
 * exist in the API but that this server does not implement (accepted only at their neutral value: n = 1,
 * logprobs off, penalties 0, ...), the prompt (text, one-element text list, or token ids; chat messages rendered by
 * serve/chat_template), its length against the context, and the default and limit of max_tokens. */
#ifndef XLKV_SERVE_REQUEST_H
#define XLKV_SERVE_REQUEST_H

#include <stdbool.h>
#include <stddef.h>

#include "infer/sampler.h"
#include "model/tokenizer.h"
#include "serve/serve_error.h"

enum { SERVE_MAX_STOPS = 4 };

typedef struct serve_request {
    bool chat;              /* /v1/chat/completions */
    bool stream;
    bool include_usage;     /* stream_options.include_usage: a last chunk with the usage */
    int *prompt;            /* token ids (BOS first when the vocabulary has one) */
    int n_prompt;
    int max_tokens;         /* resolved: the request's, or the default, never beyond the context */
    xlkv_sampler_params sampling;
    char *stops[SERVE_MAX_STOPS + 1]; /* the request's stop strings, plus "\nUser:" for chat */
    int n_stops;
} serve_request;

typedef struct serve_request_limits {
    const xlkv_tokenizer *tokenizer;
    const char *model_name;  /* the "model" field must be absent or this name */
    int n_ctx;               /* prompt + max_tokens must fit */
    unsigned long long default_seed_counter; /* seed of a request without one (the caller increments it) */
} serve_request_limits;

/* Parses body[0..size) (need not be NUL-terminated). On failure fills *e and returns false; *out is then empty. */
bool serve_request_parse(const char *body, size_t size, bool chat, const serve_request_limits *limits,
                         serve_request *out, serve_error *e);
void serve_request_free(serve_request *r);

#endif
