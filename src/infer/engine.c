/* infer/engine: the dispatcher of engine.h. Owns the defaults, the validation of parameters and arguments (so that
 * every backend sees resolved, valid input and every user error has one message whatever the device), and the choice
 * of backend table by device name. It does no work of its own. */
#include "infer/engine.h"

#include <stdlib.h>
#include <string.h>

#include "core/status.h"

struct xlkv_engine {
    const xlkv_engine_backend *backend;
    void *state;
    const xlkv_model *model;
    int max_batch;
};

xlkv_engine_params xlkv_engine_default_params(void) {
    return (xlkv_engine_params){
        .device = "cpu",
        .dtype = XLKV_ENGINE_DTYPE_AUTO,
        .max_batch = 1,
        .n_ctx = 0,
        .block_size = 16,
        .kv_pool_bytes = 0,
        .memory_budget_bytes = 0,
        .iterations = 0,
        .prefill_mode = XLKV_PREFILL_AUTO,
        .n_threads = 0,
        .cuda_graphs = true,
        .max_prefill_tokens = 0,
        .ignore_end_tokens = false,
    };
}

/* "cpu" or "cpu, cuda": the devices of this build, for messages. */
static const char *available_devices(void) { return xlkv_engine_backend_cuda() ? "cpu, cuda" : "cpu"; }

static const xlkv_engine_backend *backend_for_device(const char *device) {
    if (!strcmp(device, "cpu")) return xlkv_engine_backend_cpu();
    if (!strcmp(device, "cuda")) return xlkv_engine_backend_cuda();
    return NULL;
}

static const char *dtype_name(xlkv_engine_dtype dtype) { return dtype == XLKV_ENGINE_BF16 ? "bf16" : "f32"; }

/* Checks params and fills in the defaults that depend on the model and the device. */
static xlkv_status resolve_params(const xlkv_model *model, const xlkv_engine_params *given, xlkv_engine_params *p,
                                  const xlkv_engine_backend **out_backend) {
    *p = given ? *given : xlkv_engine_default_params();
    if (!p->device) p->device = "cpu";
    const xlkv_engine_backend *backend = backend_for_device(p->device);
    if (!backend)
        return xlkv_fail(strcmp(p->device, "cuda") ? XLKV_E_INVALID : XLKV_E_UNSUPPORTED, "engine: device '%s' is not available in this build (devices: %s)",
                         p->device, available_devices());
    const bool on_cpu = !strcmp(p->device, "cpu");
    if (p->dtype == XLKV_ENGINE_DTYPE_AUTO) p->dtype = on_cpu ? XLKV_ENGINE_F32 : XLKV_ENGINE_BF16;
    if (p->dtype != XLKV_ENGINE_F32 && p->dtype != XLKV_ENGINE_BF16)
        return xlkv_fail(XLKV_E_INVALID, "engine: unknown dtype %d (f32 = 0, bf16 = 1)", (int)p->dtype);
    if (on_cpu && p->dtype != XLKV_ENGINE_F32)
        return xlkv_fail(XLKV_E_UNSUPPORTED, "engine: dtype %s is not supported on device 'cpu' (cpu runs f32)",
                         dtype_name(p->dtype));
    if (p->max_batch < 1) return xlkv_fail(XLKV_E_INVALID, "engine: max_batch must be >= 1, got %d", p->max_batch);
    if (p->n_ctx < 0) return xlkv_fail(XLKV_E_INVALID, "engine: n_ctx must be >= 0 (0 = the model's), got %d", p->n_ctx);
    if (p->block_size < 1)
        return xlkv_fail(XLKV_E_INVALID, "engine: block_size must be >= 1 positions, got %d", p->block_size);
    if (p->iterations < 0)
        return xlkv_fail(XLKV_E_INVALID, "engine: iterations must be >= 0 (0 = the model's m + b), got %d",
                         p->iterations);
    if (p->n_threads < 0) return xlkv_fail(XLKV_E_INVALID, "engine: n_threads must be >= 0, got %d", p->n_threads);
    if (p->max_prefill_tokens < 0)
        return xlkv_fail(XLKV_E_INVALID, "engine: max_prefill_tokens must be >= 0, got %d", p->max_prefill_tokens);
    if (p->prefill_mode != XLKV_PREFILL_AUTO && p->prefill_mode != XLKV_PREFILL_SEQUENTIAL &&
        p->prefill_mode != XLKV_PREFILL_PLAN)
        return xlkv_fail(XLKV_E_INVALID, "engine: unknown prefill mode %d", (int)p->prefill_mode);
    if (p->n_ctx == 0) p->n_ctx = model->hp.max_seq_len;
    if (p->iterations == 0) p->iterations = model->hp.forward_passes + model->hp.backward_passes;
    *out_backend = backend;
    return XLKV_OK;
}

xlkv_status xlkv_engine_create(const xlkv_model *model, const xlkv_engine_params *params, xlkv_engine **out) {
    if (!out) return xlkv_fail(XLKV_E_INVALID, "engine: no output handle");
    *out = NULL;
    if (!model) return xlkv_fail(XLKV_E_INVALID, "engine: no model");
    xlkv_engine_params resolved;
    const xlkv_engine_backend *backend = NULL;
    XLKV_TRY(resolve_params(model, params, &resolved, &backend));
    xlkv_engine *engine = calloc(1, sizeof *engine);
    if (!engine) return xlkv_fail(XLKV_E_NOMEM, "engine: out of memory");
    engine->backend = backend;
    engine->model = model;
    engine->max_batch = resolved.max_batch;
    xlkv_status status = backend->create(model, &resolved, &engine->state);
    if (status != XLKV_OK) {
        free(engine);
        return status;
    }
    *out = engine;
    return XLKV_OK;
}

void xlkv_engine_free(xlkv_engine *engine) {
    if (!engine) return;
    engine->backend->destroy(engine->state);
    free(engine);
}

static xlkv_status check_tokens(const xlkv_engine *engine, const char *what, const int *tokens, int n) {
    const int vocab = engine->model->hp.vocab_size;
    for (int i = 0; i < n; i++)
        if (tokens[i] < 0 || tokens[i] >= vocab)
            return xlkv_fail(XLKV_E_INVALID, "engine: %s token %d at index %d is outside the vocabulary [0, %d)", what,
                             tokens[i], i, vocab);
    return XLKV_OK;
}

xlkv_status xlkv_engine_add(xlkv_engine *engine, const int *prompt, int n_prompt, int max_new_tokens,
                            const xlkv_sampler_params *sampling, int *out_seq) {
    if (!engine || !out_seq) return xlkv_fail(XLKV_E_INVALID, "engine add: no engine or no output id");
    *out_seq = -1;
    if (n_prompt < 1 || !prompt)
        return xlkv_fail(XLKV_E_INVALID, "engine add: the prompt has no tokens (n_prompt %d; add BOS)", n_prompt);
    if (max_new_tokens < 1)
        return xlkv_fail(XLKV_E_INVALID, "engine add: max_new_tokens must be >= 1, got %d", max_new_tokens);
    XLKV_TRY(check_tokens(engine, "prompt", prompt, n_prompt));
    xlkv_sampler_params greedy = xlkv_sampler_default_params();
    greedy.temperature = 0.0f;
    if (!sampling) sampling = &greedy;
    XLKV_TRY(xlkv_sampler_params_validate(sampling));
    return engine->backend->add(engine->state, prompt, n_prompt, max_new_tokens, sampling, out_seq);
}

xlkv_status xlkv_engine_add_empty(xlkv_engine *engine, int *out_seq) {
    if (!engine || !out_seq) return xlkv_fail(XLKV_E_INVALID, "engine add: no engine or no output id");
    *out_seq = -1;
    return engine->backend->add(engine->state, NULL, 0, 0, NULL, out_seq);
}

/* Ids are the backend's (the CUDA backend never reuses one); each backend rejects ids it does not hold. */
static xlkv_status check_seq(const xlkv_engine *engine, const char *what, int seq) {
    (void)engine;
    if (seq < 0) return xlkv_fail(XLKV_E_INVALID, "engine %s: sequence id %d is negative", what, seq);
    return XLKV_OK;
}

xlkv_status xlkv_engine_remove(xlkv_engine *engine, int seq) {
    if (!engine) return xlkv_fail(XLKV_E_INVALID, "engine remove: no engine");
    XLKV_TRY(check_seq(engine, "remove", seq));
    return engine->backend->remove(engine->state, seq);
}

xlkv_status xlkv_engine_step(xlkv_engine *engine, xlkv_engine_event *events, int capacity, int *out_n_events) {
    if (!engine || !out_n_events) return xlkv_fail(XLKV_E_INVALID, "engine step: no engine or no event count");
    *out_n_events = 0;
    if (capacity < 0 || (capacity > 0 && !events))
        return xlkv_fail(XLKV_E_INVALID, "engine step: no room for events (capacity %d)", capacity);
    return engine->backend->step(engine->state, events, capacity, out_n_events);
}

void xlkv_engine_get_stats(const xlkv_engine *engine, xlkv_engine_stats *out) {
    memset(out, 0, sizeof *out);
    if (engine) engine->backend->get_stats(engine->state, out);
}

xlkv_status xlkv_engine_forward_logits(xlkv_engine *engine, int seq, const int *tokens, int n, float *logits) {
    if (!engine || !tokens || !logits) return xlkv_fail(XLKV_E_INVALID, "engine forward: missing argument");
    XLKV_TRY(check_seq(engine, "forward", seq));
    if (n < 1) return xlkv_fail(XLKV_E_INVALID, "engine forward: no tokens given (n %d)", n);
    XLKV_TRY(check_tokens(engine, "forward", tokens, n));
    if (!engine->backend->forward_logits)
        return xlkv_fail(XLKV_E_UNSUPPORTED, "engine forward: device '%s' has no forward_logits", engine->backend->name);
    return engine->backend->forward_logits(engine->state, seq, tokens, n, logits);
}

/* The host path of xlkv_engine_score: one fresh sequence per request, logits of every row, scored here. */
static xlkv_status score_through_logits(xlkv_engine *engine, xlkv_score_request *requests, int count) {
    const int vocab = engine->model->hp.vocab_size;
    int longest = 0;
    for (int i = 0; i < count; i++)
        if (requests[i].n > longest) longest = requests[i].n;
    float *logits = malloc((size_t)longest * (size_t)vocab * sizeof *logits);
    if (!logits) return xlkv_fail(XLKV_E_NOMEM, "engine score: cannot allocate %d x %d logits", longest, vocab);
    xlkv_status status = XLKV_OK;
    for (int i = 0; status == XLKV_OK && i < count; i++) {
        xlkv_score_request *req = &requests[i];
        int seq = -1;
        status = xlkv_engine_add_empty(engine, &seq);
        if (status != XLKV_OK) break;
        status = engine->backend->forward_logits(engine->state, seq, req->tokens, req->n, logits);
        if (status == XLKV_OK) xlkv_score_rows(req, logits + (size_t)req->first_row * (size_t)vocab, vocab);
        xlkv_status removed = engine->backend->remove(engine->state, seq);
        if (status == XLKV_OK) status = removed;
    }
    free(logits);
    return status;
}

xlkv_status xlkv_engine_score(xlkv_engine *engine, xlkv_score_request *requests, int count) {
    if (!engine || (count > 0 && !requests)) return xlkv_fail(XLKV_E_INVALID, "engine score: missing argument");
    for (int i = 0; i < count; i++) {
        const xlkv_score_request *req = &requests[i];
        if (!req->tokens || !req->log_probs || !req->is_argmax)
            return xlkv_fail(XLKV_E_INVALID, "engine score: request %d has no tokens or no outputs", i);
        if (req->n < 1 || req->first_row < 0 || req->first_row >= req->n)
            return xlkv_fail(XLKV_E_INVALID, "engine score: request %d scores rows [%d, %d) (need 0 <= first < n)", i,
                             req->first_row, req->n);
        XLKV_TRY(check_tokens(engine, "score", req->tokens, req->n + 1));
    }
    if (count == 0) return XLKV_OK;
    if (engine->backend->score) return engine->backend->score(engine->state, requests, count);
    if (!engine->backend->forward_logits)
        return xlkv_fail(XLKV_E_UNSUPPORTED, "engine score: device '%s' has no forward_logits", engine->backend->name);
    return score_through_logits(engine, requests, count);
}
