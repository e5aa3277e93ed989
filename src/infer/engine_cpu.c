/* infer/engine_cpu: the "cpu" engine backend (engine.h). Owns one xlkv_context (contiguous KV cache) and one sampler
 * per sequence, the step loop (prefill the pending, decode the running, stop on end token / max_new_tokens / full
 * context exactly as infer/generate.c does), and the KV block accounting that makes capacity behave like the paged
 * CUDA pool: a sequence is charged ceil(positions / block_size) blocks of this map's bytes per block, against
 * kv_pool_bytes. Since every sequence has its own context and sampler, a sequence's tokens do not depend on what
 * else runs: batched = one by one, bit for bit. */
#include <stdlib.h>
#include <string.h>

#include "core/status.h"
#include "infer/engine.h"

typedef enum seq_phase {
    SEQ_FREE = 0,  /* slot unused */
    SEQ_IDLE,      /* from add_empty: holds a cache for forward_logits, never stepped */
    SEQ_PENDING,   /* added, prompt not yet run */
    SEQ_RUNNING,   /* its last sampled token waits to be decoded */
    SEQ_FINISHED,  /* ended; holds its cache until removed */
} seq_phase;

typedef struct cpu_sequence {
    seq_phase phase;
    xlkv_context *ctx;
    xlkv_sampler *sampler;   /* NULL for idle sequences */
    int *history;            /* [n_prompt + max_new_tokens]: prompt, then generated tokens (for the penalty) */
    int n_history;
    int n_prompt;
    int max_new_tokens;
    int n_generated;
    int next_token;          /* sampled and reported, not yet in the cache */
    size_t kv_blocks;        /* blocks charged to this sequence */
} cpu_sequence;

typedef struct cpu_engine {
    const xlkv_model *model;
    xlkv_engine_params params;
    cpu_sequence *seqs;      /* [max_batch], indexed by sequence id */
    size_t kv_bytes_per_token;
    size_t kv_bytes_per_block;
    size_t kv_blocks_total;
    size_t kv_blocks_used;
    size_t weight_bytes;
    float *sample_logits;    /* [vocab] the sampler's working copy */
    int *decode_order;       /* [max_batch] sequences running before this step's prefills */
} cpu_engine;

static size_t blocks_for(const cpu_engine *e, size_t positions) {
    const size_t block = (size_t)e->params.block_size;
    return (positions + block - 1) / block;
}

/* fp32 bytes of the weights this map loads (non-KV layers have no K/V projections). */
static size_t model_weight_bytes(const xlkv_model *model) {
    const xlkv_hparams *hp = &model->hp;
    const size_t dim = (size_t)hp->dim, hidden = (size_t)hp->hidden_dim, vocab = (size_t)hp->vocab_size;
    const size_t q_dim = (size_t)hp->n_heads * (size_t)hp->head_dim;
    const size_t kv_dim = (size_t)hp->n_kv_heads * (size_t)hp->head_dim;
    size_t floats = vocab * dim + dim; /* embeddings, final norm */
    if (!hp->tied_embeddings) floats += vocab * dim;
    for (int l = 0; l < hp->n_layers; l++) {
        floats += 2 * dim + q_dim * dim + dim * q_dim + 3 * hidden * dim;
        if (xlkv_is_kv_layer(model->map, l)) floats += 2 * kv_dim * dim;
    }
    return floats * sizeof(float);
}

static void release_sequence(cpu_engine *e, cpu_sequence *s) {
    xlkv_context_free(s->ctx);
    xlkv_sampler_free(s->sampler);
    free(s->history);
    e->kv_blocks_used -= s->kv_blocks;
    memset(s, 0, sizeof *s);
}

static void cpu_destroy(void *state) {
    cpu_engine *e = state;
    if (!e) return;
    for (int i = 0; i < e->params.max_batch && e->seqs; i++)
        if (e->seqs[i].phase != SEQ_FREE) release_sequence(e, &e->seqs[i]);
    free(e->seqs);
    free(e->sample_logits);
    free(e->decode_order);
    free(e);
}

static xlkv_status cpu_create(const xlkv_model *model, const xlkv_engine_params *params, void **state) {
    *state = NULL;
    cpu_engine *e = calloc(1, sizeof *e);
    if (!e) return xlkv_fail(XLKV_E_NOMEM, "cpu engine: out of memory");
    e->model = model;
    e->params = *params;
    e->seqs = calloc((size_t)params->max_batch, sizeof *e->seqs);
    e->sample_logits = malloc((size_t)model->hp.vocab_size * sizeof *e->sample_logits);
    e->decode_order = malloc((size_t)params->max_batch * sizeof *e->decode_order);
    if (!e->seqs || !e->sample_logits || !e->decode_order) {
        cpu_destroy(e);
        return xlkv_fail(XLKV_E_NOMEM, "cpu engine: out of memory for %d sequences", params->max_batch);
    }
    const xlkv_hparams *hp = &model->hp;
    e->kv_bytes_per_token = xlkv_layer_map_kv_bytes_per_token(model->map, hp->n_kv_heads, hp->head_dim, 4);
    e->kv_bytes_per_block = e->kv_bytes_per_token * (size_t)params->block_size;
    e->weight_bytes = model_weight_bytes(model);
    size_t pool_bytes = params->kv_pool_bytes;
    if (pool_bytes == 0 && params->memory_budget_bytes > 0) {
        /* the budget less the weights (host activations are small next to them and are not counted) */
        if (params->memory_budget_bytes <= e->weight_bytes) {
            size_t budget = params->memory_budget_bytes, weights = e->weight_bytes;
            cpu_destroy(e);
            return xlkv_fail(XLKV_E_CAPACITY, "cpu engine: a memory budget of %zu bytes leaves nothing for KV after "
                                              "%zu bytes of weights", budget, weights);
        }
        pool_bytes = params->memory_budget_bytes - e->weight_bytes;
    }
    if (pool_bytes == 0) {
        e->kv_blocks_total = (size_t)params->max_batch * blocks_for(e, (size_t)params->n_ctx);
    } else {
        e->kv_blocks_total = pool_bytes / e->kv_bytes_per_block;
        if (e->kv_blocks_total == 0) {
            size_t per_block = e->kv_bytes_per_block;
            cpu_destroy(e);
            return xlkv_fail(XLKV_E_CAPACITY, "cpu engine: a KV pool of %zu bytes holds no block (a block of %d "
                                              "positions is %zu bytes under this map)", pool_bytes,
                             params->block_size, per_block);
        }
    }
    *state = e;
    return XLKV_OK;
}

static xlkv_status charge_blocks(cpu_engine *e, cpu_sequence *s, size_t positions, const char *what) {
    const size_t needed = blocks_for(e, positions);
    if (needed <= s->kv_blocks) return XLKV_OK;
    const size_t extra = needed - s->kv_blocks;
    if (e->kv_blocks_used + extra > e->kv_blocks_total)
        return xlkv_fail(XLKV_E_CAPACITY, "cpu engine %s: the KV pool is full: %zu more blocks needed (%zu positions), "
                                          "%zu of %zu free", what, extra, positions,
                         e->kv_blocks_total - e->kv_blocks_used, e->kv_blocks_total);
    e->kv_blocks_used += extra;
    s->kv_blocks = needed;
    return XLKV_OK;
}

static xlkv_status cpu_add(void *state, const int *prompt, int n_prompt, int max_new_tokens,
                           const xlkv_sampler_params *sampling, int *out_seq) {
    cpu_engine *e = state;
    const int n_ctx = e->params.n_ctx;
    int id = -1;
    for (int i = 0; i < e->params.max_batch && id < 0; i++)
        if (e->seqs[i].phase == SEQ_FREE) id = i;
    if (id < 0)
        return xlkv_fail(XLKV_E_CAPACITY, "cpu engine add: %d sequences are allocated (max_batch %d); remove one first",
                         e->params.max_batch, e->params.max_batch);
    if (n_prompt > n_ctx)
        return xlkv_fail(XLKV_E_CAPACITY, "cpu engine add: a prompt of %d tokens exceeds the context of %d positions",
                         n_prompt, n_ctx);
    cpu_sequence *s = &e->seqs[id];
    const bool empty = n_prompt == 0;
    /* a generating sequence never holds more than prompt + max_new_tokens positions: its context is that big */
    const long long wanted = (long long)n_prompt + (long long)max_new_tokens;
    const int positions = empty ? 0 : (int)(wanted < n_ctx ? wanted : n_ctx);
    XLKV_TRY(charge_blocks(e, s, (size_t)positions, "add"));

    xlkv_context_params cp = xlkv_context_default_params();
    cp.n_ctx = empty ? n_ctx : positions;
    cp.n_threads = e->params.n_threads;
    cp.prefill_mode = e->params.prefill_mode;
    cp.iterations = e->params.iterations;
    xlkv_status status = xlkv_context_create(e->model, &cp, &s->ctx);
    if (status == XLKV_OK && !empty) {
        status = xlkv_sampler_create(sampling, e->model->hp.vocab_size, &s->sampler);
        s->history = malloc((size_t)wanted * sizeof *s->history);
        if (status == XLKV_OK && !s->history) status = xlkv_fail(XLKV_E_NOMEM, "cpu engine add: out of memory");
    }
    if (status != XLKV_OK) {
        release_sequence(e, s);
        return status;
    }
    if (!empty) memcpy(s->history, prompt, (size_t)n_prompt * sizeof *s->history);
    s->n_history = n_prompt;
    s->n_prompt = n_prompt;
    s->max_new_tokens = max_new_tokens;
    s->phase = empty ? SEQ_IDLE : SEQ_PENDING;
    *out_seq = id;
    return XLKV_OK;
}

static cpu_sequence *allocated_sequence(cpu_engine *e, int seq, const char *what) {
    if (seq < 0 || seq >= e->params.max_batch || e->seqs[seq].phase == SEQ_FREE) {
        xlkv_fail(XLKV_E_INVALID, "cpu engine %s: no sequence %d", what, seq);
        return NULL;
    }
    return &e->seqs[seq];
}

static xlkv_status cpu_remove(void *state, int seq) {
    cpu_engine *e = state;
    cpu_sequence *s = allocated_sequence(e, seq, "remove");
    if (!s) return XLKV_E_INVALID;
    release_sequence(e, s);
    return XLKV_OK;
}

static bool is_end_token(const xlkv_hparams *hp, int token) { return token == hp->eos_id || token == hp->bos_id; }

/* Samples the next token of s from logits and decides, as infer/generate.c does, whether s goes on. */
static xlkv_engine_event sample_next(cpu_engine *e, int id, const float *logits) {
    cpu_sequence *s = &e->seqs[id];
    const xlkv_hparams *hp = &e->model->hp;
    memcpy(e->sample_logits, logits, (size_t)hp->vocab_size * sizeof *e->sample_logits);
    const int token = xlkv_sampler_sample(s->sampler, e->sample_logits, s->history, s->n_history);
    xlkv_engine_event event = {.seq = id, .token = token, .finished = false, .end_token = false};
    if (!e->params.ignore_end_tokens && is_end_token(hp, token)) {
        event.finished = event.end_token = true;
    } else {
        s->history[s->n_history++] = token;
        s->n_generated++;
        event.finished = s->n_generated >= s->max_new_tokens || s->ctx->n_past >= s->ctx->params.n_ctx;
    }
    s->phase = event.finished ? SEQ_FINISHED : SEQ_RUNNING;
    s->next_token = token;
    return event;
}

static xlkv_status cpu_step(void *state, xlkv_engine_event *events, int capacity, int *out_n_events) {
    cpu_engine *e = state;
    int n_pending = 0, n_running = 0;
    for (int i = 0; i < e->params.max_batch; i++) {
        if (e->seqs[i].phase == SEQ_PENDING) n_pending++;
        if (e->seqs[i].phase == SEQ_RUNNING) e->decode_order[n_running++] = i;
    }
    if (n_pending + n_running > capacity)
        return xlkv_fail(XLKV_E_INVALID, "cpu engine step: room for %d events, %d sequences will report one", capacity,
                         n_pending + n_running);
    int n_events = 0;
    xlkv_status status = XLKV_OK;
    for (int i = 0; i < e->params.max_batch && status == XLKV_OK; i++) {
        cpu_sequence *s = &e->seqs[i];
        if (s->phase != SEQ_PENDING) continue;
        const float *logits = NULL;
        status = xlkv_context_forward(s->ctx, s->history, s->n_prompt, false, &logits);
        if (status == XLKV_OK) events[n_events++] = sample_next(e, i, logits);
        else s->phase = SEQ_FINISHED;
    }
    for (int r = 0; r < n_running && status == XLKV_OK; r++) {
        const int id = e->decode_order[r];
        cpu_sequence *s = &e->seqs[id];
        const float *logits = NULL;
        status = xlkv_context_forward(s->ctx, &s->next_token, 1, false, &logits);
        if (status == XLKV_OK) events[n_events++] = sample_next(e, id, logits);
        else s->phase = SEQ_FINISHED;
    }
    *out_n_events = n_events;
    return status;
}

static void cpu_get_stats(const void *state, xlkv_engine_stats *out) {
    const cpu_engine *e = state;
    memset(out, 0, sizeof *out);
    size_t kv_held = 0;
    for (int i = 0; i < e->params.max_batch; i++) {
        const cpu_sequence *s = &e->seqs[i];
        if (s->phase == SEQ_FREE) continue;
        out->allocated++;
        if (s->phase == SEQ_PENDING || s->phase == SEQ_RUNNING) out->running++;
        kv_held += xlkv_context_kv_bytes(s->ctx);
    }
    out->kv_blocks_total = e->kv_blocks_total;
    out->kv_blocks_used = e->kv_blocks_used;
    out->kv_bytes_per_token = e->kv_bytes_per_token;
    out->kv_pool_bytes = e->kv_blocks_total * e->kv_bytes_per_block;
    out->device_bytes = e->weight_bytes + kv_held;
}

static xlkv_status cpu_forward_logits(void *state, int seq, const int *tokens, int n, float *logits) {
    cpu_engine *e = state;
    cpu_sequence *s = allocated_sequence(e, seq, "forward");
    if (!s) return XLKV_E_INVALID;
    if (s->phase == SEQ_PENDING || s->phase == SEQ_RUNNING)
        return xlkv_fail(XLKV_E_INVALID, "cpu engine forward: sequence %d is generating; forward_logits takes a "
                                         "sequence from add_empty or a finished one", seq);
    xlkv_context *ctx = s->ctx;
    if (n > ctx->params.n_ctx - ctx->n_past)
        return xlkv_fail(XLKV_E_CAPACITY, "cpu engine forward: %d tokens do not fit: sequence %d holds %d of %d "
                                          "positions", n, seq, ctx->n_past, ctx->params.n_ctx);
    XLKV_TRY(charge_blocks(e, s, (size_t)ctx->n_past + (size_t)n, "forward"));
    const float *out = NULL;
    XLKV_TRY(xlkv_context_forward(ctx, tokens, n, true, &out));
    memcpy(logits, out, (size_t)n * (size_t)e->model->hp.vocab_size * sizeof *logits);
    return XLKV_OK;
}

const xlkv_engine_backend *xlkv_engine_backend_cpu(void) {
    static const xlkv_engine_backend backend = {
        .name = "cpu",
        .create = cpu_create,
        .destroy = cpu_destroy,
        .add = cpu_add,
        .remove = cpu_remove,
        .step = cpu_step,
        .get_stats = cpu_get_stats,
        .forward_logits = cpu_forward_logits,
    };
    return &backend;
}
