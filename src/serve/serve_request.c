/* serve/serve_request: see serve_request.h. */
#include "serve/serve_request.h"

#include <math.h>
#include <stdlib.h>
#include <string.h>

#include <cjson/cJSON.h>

#include "serve/chat_template.h"

/* Fields of each endpoint. Neutral-only fields are accepted when they hold the value that changes nothing. */
static const char *const completion_fields[] = {"model", "prompt", "max_tokens", "temperature", "top_p", "top_k",
                                                "n", "stream", "stream_options", "stop", "seed", "logprobs", "echo",
                                                "best_of", "suffix", "presence_penalty", "frequency_penalty",
                                                "logit_bias", "user", NULL};
static const char *const chat_fields[] = {"model", "messages", "max_tokens", "max_completion_tokens", "temperature",
                                          "top_p", "top_k", "n", "stream", "stream_options", "stop", "seed",
                                          "logprobs", "top_logprobs", "presence_penalty", "frequency_penalty",
                                          "logit_bias", "user", NULL};

static bool known_field(const char *const *fields, const char *name) {
    for (int i = 0; fields[i]; i++)
        if (!strcmp(fields[i], name)) return true;
    return false;
}

static bool is_null_or_absent(const cJSON *v) { return !v || cJSON_IsNull(v); }

/* An integer in [min, max] (a JSON number without a fraction). */
static bool get_int(const cJSON *v, const char *name, double min, double max, long long *out, serve_error *e) {
    if (!cJSON_IsNumber(v) || v->valuedouble != floor(v->valuedouble) || !isfinite(v->valuedouble))
        return serve_invalid(e, name, "'%s' must be an integer", name);
    if (v->valuedouble < min || v->valuedouble > max)
        return serve_invalid(e, name, "'%s' must be between %.0f and %.0f, got %.0f", name, min, max, v->valuedouble);
    *out = (long long)v->valuedouble;
    return true;
}

static bool get_number(const cJSON *v, const char *name, double min, double max, double *out, serve_error *e) {
    if (!cJSON_IsNumber(v) || !isfinite(v->valuedouble)) return serve_invalid(e, name, "'%s' must be a number", name);
    if (v->valuedouble < min || v->valuedouble > max)
        return serve_invalid(e, name, "'%s' must be between %g and %g, got %g", name, min, max, v->valuedouble);
    *out = v->valuedouble;
    return true;
}

/* Fields of the API that this server does not implement: only their neutral value passes. */
static bool check_neutral_fields(const cJSON *root, serve_error *e) {
    const cJSON *v;
    if ((v = cJSON_GetObjectItemCaseSensitive(root, "n")) && !cJSON_IsNull(v)) {
        long long n = 0;
        if (!get_int(v, "n", 1, 1e9, &n, e)) return false;
        if (n != 1) return serve_invalid(e, "n", "only n = 1 is supported (got %lld): send several requests", n);
    }
    if ((v = cJSON_GetObjectItemCaseSensitive(root, "best_of")) && !cJSON_IsNull(v)) {
        long long n = 0;
        if (!get_int(v, "best_of", 1, 1e9, &n, e)) return false;
        if (n != 1) return serve_invalid(e, "best_of", "only best_of = 1 is supported (got %lld)", n);
    }
    static const char *const penalties[] = {"presence_penalty", "frequency_penalty"};
    for (int i = 0; i < 2; i++)
        if ((v = cJSON_GetObjectItemCaseSensitive(root, penalties[i])) && !cJSON_IsNull(v)) {
            double p = 0;
            if (!get_number(v, penalties[i], -2, 2, &p, e)) return false;
            if (p != 0) return serve_invalid(e, penalties[i], "'%s' is not supported (only 0)", penalties[i]);
        }
    if ((v = cJSON_GetObjectItemCaseSensitive(root, "logprobs")) && !cJSON_IsNull(v) && !cJSON_IsFalse(v) &&
        !(cJSON_IsNumber(v) && v->valuedouble == 0))
        return serve_invalid(e, "logprobs", "logprobs are not supported");
    if ((v = cJSON_GetObjectItemCaseSensitive(root, "top_logprobs")) && !cJSON_IsNull(v))
        return serve_invalid(e, "top_logprobs", "logprobs are not supported");
    if ((v = cJSON_GetObjectItemCaseSensitive(root, "echo")) && !cJSON_IsNull(v) && !cJSON_IsFalse(v))
        return serve_invalid(e, "echo", cJSON_IsTrue(v) ? "echo is not supported" : "'echo' must be a boolean");
    if ((v = cJSON_GetObjectItemCaseSensitive(root, "suffix")) && !cJSON_IsNull(v))
        return serve_invalid(e, "suffix", "suffix is not supported");
    if ((v = cJSON_GetObjectItemCaseSensitive(root, "logit_bias")) && !cJSON_IsNull(v) &&
        !(cJSON_IsObject(v) && !v->child))
        return serve_invalid(e, "logit_bias", "logit_bias is not supported (only null or {})");
    if ((v = cJSON_GetObjectItemCaseSensitive(root, "user")) && !cJSON_IsNull(v) && !cJSON_IsString(v))
        return serve_invalid(e, "user", "'user' must be a string");
    return true;
}

static bool parse_stops(const cJSON *root, serve_request *r, serve_error *e) {
    const cJSON *v = cJSON_GetObjectItemCaseSensitive(root, "stop");
    if (is_null_or_absent(v)) return true;
    const cJSON *items[SERVE_MAX_STOPS];
    int n = 0;
    if (cJSON_IsString(v)) {
        items[n++] = v;
    } else if (cJSON_IsArray(v)) {
        if (cJSON_GetArraySize(v) > SERVE_MAX_STOPS)
            return serve_invalid(e, "stop", "at most %d stop strings", SERVE_MAX_STOPS);
        const cJSON *item;
        cJSON_ArrayForEach(item, v) {
            if (!cJSON_IsString(item)) return serve_invalid(e, "stop", "'stop' must be a string or a list of strings");
            items[n++] = item;
        }
    } else {
        return serve_invalid(e, "stop", "'stop' must be a string or a list of strings");
    }
    for (int i = 0; i < n; i++) {
        if (!items[i]->valuestring[0]) return serve_invalid(e, "stop", "stop strings must not be empty");
        if (strlen(items[i]->valuestring) > 256) return serve_invalid(e, "stop", "stop strings are at most 256 bytes");
        if (!(r->stops[r->n_stops++] = strdup(items[i]->valuestring)))
            return serve_fail(e, 500, "server_error", NULL, NULL, "out of memory");
    }
    return true;
}

static bool parse_sampling(const cJSON *root, const serve_request_limits *limits, serve_request *r, serve_error *e) {
    r->sampling = xlkv_sampler_default_params();
    r->sampling.temperature = 1.0f; /* OpenAI's defaults: temperature 1, top_p 1, no top-k */
    r->sampling.top_p = 1.0f;
    r->sampling.top_k = 0;
    r->sampling.repeat_penalty = 1.0f;
    r->sampling.seed = limits->default_seed_counter;
    const cJSON *v;
    double d = 0;
    long long i = 0;
    if (!is_null_or_absent(v = cJSON_GetObjectItemCaseSensitive(root, "temperature"))) {
        if (!get_number(v, "temperature", 0, 2, &d, e)) return false;
        r->sampling.temperature = (float)d;
    }
    if (!is_null_or_absent(v = cJSON_GetObjectItemCaseSensitive(root, "top_p"))) {
        if (!get_number(v, "top_p", 0, 1, &d, e)) return false;
        if (d <= 0) return serve_invalid(e, "top_p", "'top_p' must be greater than 0");
        r->sampling.top_p = (float)d;
    }
    if (!is_null_or_absent(v = cJSON_GetObjectItemCaseSensitive(root, "top_k"))) {
        if (!get_int(v, "top_k", 0, 1e9, &i, e)) return false;
        r->sampling.top_k = (int)i;
    }
    if (!is_null_or_absent(v = cJSON_GetObjectItemCaseSensitive(root, "seed"))) {
        if (!get_int(v, "seed", -9.2e18, 9.2e18, &i, e)) return false;
        r->sampling.seed = (unsigned long long)i;
    }
    if (xlkv_sampler_params_validate(&r->sampling) != XLKV_OK)
        return serve_invalid(e, NULL, "invalid sampling parameters: %s", xlkv_last_error());
    return true;
}

static bool parse_stream(const cJSON *root, serve_request *r, serve_error *e) {
    const cJSON *v = cJSON_GetObjectItemCaseSensitive(root, "stream");
    if (!is_null_or_absent(v)) {
        if (!cJSON_IsBool(v)) return serve_invalid(e, "stream", "'stream' must be a boolean");
        r->stream = cJSON_IsTrue(v);
    }
    v = cJSON_GetObjectItemCaseSensitive(root, "stream_options");
    if (is_null_or_absent(v)) return true;
    if (!r->stream) return serve_invalid(e, "stream_options", "'stream_options' is only allowed with stream: true");
    if (!cJSON_IsObject(v)) return serve_invalid(e, "stream_options", "'stream_options' must be an object");
    const cJSON *field;
    cJSON_ArrayForEach(field, v) {
        if (strcmp(field->string, "include_usage"))
            return serve_invalid(e, "stream_options", "unknown field 'stream_options.%s'", field->string);
        if (!cJSON_IsBool(field))
            return serve_invalid(e, "stream_options", "'stream_options.include_usage' must be a boolean");
        r->include_usage = cJSON_IsTrue(field);
    }
    return true;
}

static bool encode(const char *text, const serve_request_limits *limits, serve_request *r, serve_error *e) {
    if (xlkv_tokenizer_encode(limits->tokenizer, text, true, &r->prompt, &r->n_prompt) != XLKV_OK)
        return serve_invalid(e, "prompt", "cannot tokenize the prompt: %s", xlkv_last_error());
    return true;
}

/* prompt: a string, a list of one string, or a list of token ids. */
static bool parse_prompt(const cJSON *root, const serve_request_limits *limits, serve_request *r, serve_error *e) {
    const cJSON *v = cJSON_GetObjectItemCaseSensitive(root, "prompt");
    if (is_null_or_absent(v)) return serve_invalid(e, "prompt", "'prompt' is required");
    if (cJSON_IsString(v)) return encode(v->valuestring, limits, r, e);
    if (!cJSON_IsArray(v) || cJSON_GetArraySize(v) == 0)
        return serve_invalid(e, "prompt", "'prompt' must be a string, a list of one string, or a list of token ids");
    const int n = cJSON_GetArraySize(v);
    if (cJSON_IsString(v->child)) {
        if (n != 1) return serve_invalid(e, "prompt", "only one prompt per request is supported (got %d)", n);
        return encode(v->child->valuestring, limits, r, e);
    }
    if (!(r->prompt = malloc((size_t)n * sizeof *r->prompt)))
        return serve_fail(e, 500, "server_error", NULL, NULL, "out of memory");
    const int vocab = xlkv_tokenizer_n_vocab(limits->tokenizer);
    const cJSON *item;
    cJSON_ArrayForEach(item, v) {
        long long id = 0;
        if (!cJSON_IsNumber(item))
            return serve_invalid(e, "prompt", "'prompt' must be a string, a list of one string, or a list of token ids");
        if (!get_int(item, "prompt", 0, vocab - 1, &id, e)) return false;
        r->prompt[r->n_prompt++] = (int)id;
    }
    return true;
}

static bool parse_messages(const cJSON *root, const serve_request_limits *limits, serve_request *r, serve_error *e) {
    const cJSON *v = cJSON_GetObjectItemCaseSensitive(root, "messages");
    if (is_null_or_absent(v)) return serve_invalid(e, "messages", "'messages' is required");
    if (!cJSON_IsArray(v) || cJSON_GetArraySize(v) == 0)
        return serve_invalid(e, "messages", "'messages' must be a non-empty list");
    const int n = cJSON_GetArraySize(v);
    serve_chat_role *roles = malloc((size_t)n * sizeof *roles);
    const char **contents = malloc((size_t)n * sizeof *contents);
    bool ok = roles && contents;
    if (!ok) serve_fail(e, 500, "server_error", NULL, NULL, "out of memory");
    int i = 0;
    const cJSON *message;
    cJSON_ArrayForEach(message, v) {
        if (!ok) break;
        if (!cJSON_IsObject(message)) {
            ok = serve_invalid(e, "messages", "messages[%d] must be an object", i);
            break;
        }
        const cJSON *field;
        cJSON_ArrayForEach(field, message) {
            if (strcmp(field->string, "role") && strcmp(field->string, "content") && strcmp(field->string, "name")) {
                ok = serve_invalid(e, "messages", "messages[%d]: unknown field '%s'", i, field->string);
                break;
            }
        }
        if (!ok) break;
        const cJSON *role = cJSON_GetObjectItemCaseSensitive(message, "role");
        const cJSON *content = cJSON_GetObjectItemCaseSensitive(message, "content");
        if (!cJSON_IsString(role)) {
            ok = serve_invalid(e, "messages", "messages[%d].role must be a string", i);
            break;
        }
        if (!strcmp(role->valuestring, "system") || !strcmp(role->valuestring, "developer")) roles[i] = SERVE_ROLE_SYSTEM;
        else if (!strcmp(role->valuestring, "user")) roles[i] = SERVE_ROLE_USER;
        else if (!strcmp(role->valuestring, "assistant")) roles[i] = SERVE_ROLE_ASSISTANT;
        else {
            ok = serve_invalid(e, "messages", "messages[%d].role '%s' is not system, user or assistant", i,
                               role->valuestring);
            break;
        }
        if (!cJSON_IsString(content)) {
            ok = serve_invalid(e, "messages", "messages[%d].content must be a string", i);
            break;
        }
        contents[i++] = content->valuestring;
    }
    char *text = ok ? serve_chat_render(roles, contents, n) : NULL;
    if (ok && !text) ok = serve_fail(e, 500, "server_error", NULL, NULL, "out of memory");
    if (ok) ok = encode(text, limits, r, e);
    free(text);
    free(roles);
    free(contents);
    if (ok && r->n_stops < SERVE_MAX_STOPS + 1 && !(r->stops[r->n_stops++] = strdup(SERVE_CHAT_STOP)))
        ok = serve_fail(e, 500, "server_error", NULL, NULL, "out of memory");
    return ok;
}

static bool parse_max_tokens(const cJSON *root, const serve_request_limits *limits, serve_request *r, serve_error *e) {
    const int room = limits->n_ctx - r->n_prompt;
    if (r->n_prompt == 0) return serve_invalid(e, r->chat ? "messages" : "prompt", "the prompt is empty");
    if (room < 1)
        return serve_fail(e, 400, "invalid_request_error", r->chat ? "messages" : "prompt", "context_length_exceeded",
                          "the prompt is %d tokens; this model's context is %d tokens and leaves no room to generate",
                          r->n_prompt, limits->n_ctx);
    const char *names[] = {"max_tokens", "max_completion_tokens"};
    long long requested = -1;
    for (int k = 0; k < (r->chat ? 2 : 1); k++) {
        const cJSON *v = cJSON_GetObjectItemCaseSensitive(root, names[k]);
        if (is_null_or_absent(v)) continue;
        if (!get_int(v, names[k], 1, 1e9, &requested, e)) return false;
        if (requested > room)
            return serve_fail(e, 400, "invalid_request_error", names[k], "context_length_exceeded",
                              "this model's context is %d tokens; the prompt takes %d and %s asks for %lld more",
                              limits->n_ctx, r->n_prompt, names[k], requested);
    }
    /* OpenAI's defaults: 16 for completions, until the end for chat */
    r->max_tokens = requested > 0 ? (int)requested : r->chat ? room : (room < 16 ? room : 16);
    return true;
}

bool serve_request_parse(const char *body, size_t size, bool chat, const serve_request_limits *limits,
                         serve_request *out, serve_error *e) {
    memset(out, 0, sizeof *out);
    out->chat = chat;
    char *text = malloc(size + 1);
    if (!text) return serve_fail(e, 500, "server_error", NULL, NULL, "out of memory");
    memcpy(text, body, size);
    text[size] = '\0';
    bool ok = true;
    if (strlen(text) != size) ok = serve_invalid(e, NULL, "the body contains a NUL byte");
    cJSON *root = ok ? cJSON_ParseWithOpts(text, NULL, 1) : NULL;
    free(text);
    if (ok && !root) ok = serve_invalid(e, NULL, "the body is not valid JSON");
    if (ok && !cJSON_IsObject(root)) ok = serve_invalid(e, NULL, "the body must be a JSON object");
    const cJSON *field = NULL;
    if (ok) {
        cJSON_ArrayForEach(field, root) {
            if (!known_field(chat ? chat_fields : completion_fields, field->string)) {
                ok = serve_invalid(e, field->string, "Unrecognized request argument supplied: %s", field->string);
                break;
            }
        }
    }
    if (ok) {
        const cJSON *model = cJSON_GetObjectItemCaseSensitive(root, "model");
        if (!is_null_or_absent(model) && !cJSON_IsString(model)) ok = serve_invalid(e, "model", "'model' must be a string");
        else if (cJSON_IsString(model) && strcmp(model->valuestring, limits->model_name))
            ok = serve_fail(e, 404, "invalid_request_error", "model", "model_not_found",
                            "The model '%s' does not exist; this server serves '%s'", model->valuestring,
                            limits->model_name);
    }
    ok = ok && check_neutral_fields(root, e) && parse_stream(root, out, e) && parse_sampling(root, limits, out, e) &&
         parse_stops(root, out, e) &&
         (chat ? parse_messages(root, limits, out, e) : parse_prompt(root, limits, out, e)) &&
         parse_max_tokens(root, limits, out, e);
    cJSON_Delete(root);
    if (!ok) serve_request_free(out);
    return ok;
}

void serve_request_free(serve_request *r) {
    free(r->prompt);
    for (int i = 0; i < r->n_stops; i++) free(r->stops[i]);
    memset(r, 0, sizeof *r);
}
