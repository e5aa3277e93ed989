/* backend/cuda/cuda_engine: the CUDA engine behind infer/engine.h: creation and sizing, sequences, and the
 * scheduling of a step (continuous batching). See docs/CUDA.md for the design.
 *
 * Scheduling contract (what a caller can rely on):
 *   - add() reserves the KV blocks of the whole sequence at once (prompt + max_new_tokens - 1 positions, at most
 *     n_ctx: the last sampled token is never fed back), so a sequence that is accepted can always finish; when the
 *     pool cannot guarantee that, add() fails with XLKV_E_CAPACITY and says how many blocks it needs and how many
 *     are free. It also fails when max_batch sequences are pending or running.
 *   - step(): every sequence added since the last step is prefilled (plan-mode prompts of at most one chunk several
 *     in one pass, see prefill_plan_together; longer ones alone; sequential-mode prompts together token by token)
 *     and gets its first token at once; then one batched decode pass runs over every sequence that was
 *     already running when the step began. So a sequence added before step k gets token 1 at step k and token i at
 *     step k + i - 1, whoever else runs. Each new token is one event, in that order.
 *   - A sequence finishes when it samples an end token (eos_id or bos_id of the model, unless ignore_end_tokens; the
 *     event has end_token set
 *     and the token is not text), when it has max_new_tokens tokens, or when its cache is full (n_ctx positions).
 *     It keeps its blocks until remove(). Ids are never reused.
 *   - Sampling on the GPU: repetition penalty over the last min(repeat_last_n, 64) tokens (prompt included), then
 *     greedy or temperature / top-k / top-p with a counter-based generator keyed by (seed, tokens generated so far),
 *     so a sequence draws the same tokens alone or in any batch. sampling == NULL means greedy. */
#include "backend/cuda/cuda_engine.h"

#include <limits.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "backend/cuda/cuda_check.h"

/* ---- creation ------------------------------------------------------------------------------------------------ */

static xlkv_engine_params default_params(void) {
    return (xlkv_engine_params){.device = "cuda", .dtype = XLKV_ENGINE_BF16, .max_batch = 1, .block_size = 16,
                                .cuda_graphs = true};
}

/* Fills the defaults and checks the ranges of the parameters. */
static xlkv_status resolve_params(xlkv_cuda_engine *e, const xlkv_engine_params *given) {
    const xlkv_hparams *hp = &e->model->hp;
    xlkv_engine_params p = given ? *given : default_params();
    if (p.dtype != XLKV_ENGINE_F32 && p.dtype != XLKV_ENGINE_BF16)
        return xlkv_fail(XLKV_E_INVALID, "cuda engine: unknown dtype %d (f32 = 0, bf16 = 1)", (int)p.dtype);
    if (p.max_batch < 1) return xlkv_fail(XLKV_E_INVALID, "cuda engine: max_batch must be >= 1, got %d", p.max_batch);
    if (p.max_batch > (1 << 16))
        return xlkv_fail(XLKV_E_INVALID, "cuda engine: max_batch %d exceeds 65536", p.max_batch);
    if (p.n_ctx < 0 || p.block_size < 0 || p.iterations < 0 || p.max_prefill_tokens < 0)
        return xlkv_fail(XLKV_E_INVALID,
                         "cuda engine: n_ctx (%d), block_size (%d), iterations (%d) and max_prefill_tokens (%d) must "
                         "be >= 0",
                         p.n_ctx, p.block_size, p.iterations, p.max_prefill_tokens);
    if (p.n_ctx == 0) p.n_ctx = hp->max_seq_len;
    if (p.n_ctx < 1) return xlkv_fail(XLKV_E_INVALID, "cuda engine: the context must hold at least one position");
    if (p.block_size == 0) p.block_size = 16;
    if (p.block_size > p.n_ctx) p.block_size = p.n_ctx;
    if (p.iterations == 0) p.iterations = hp->forward_passes + hp->backward_passes;
    if (p.iterations < 1) p.iterations = 1;
    if (p.max_prefill_tokens == 0 || p.max_prefill_tokens > p.n_ctx) p.max_prefill_tokens = p.n_ctx;
    if (hp->head_dim % 2 != 0)
        return xlkv_fail(XLKV_E_UNSUPPORTED, "cuda engine: head_dim %d is odd (RoPE rotates pairs)", hp->head_dim);
    const char *varlen = getenv("XLKV_CUDA_VARLEN"); /* "0": one prompt per prefill pass, for A/B runs */
    if (varlen && strcmp(varlen, "0") == 0) p.cuda_no_varlen = true;
    const char *fused_attention = getenv("XLKV_DECODE_FUSED"); /* "0": the three-launch decode attention (A/B) */
    if (fused_attention && strcmp(fused_attention, "0") == 0) p.cuda_unfused_decode_attention = true;
    const char *few_rows = getenv("XLKV_GEMV_MAX_ROWS"); /* the most rows of a fused few-row pass (A/B) */
    if (few_rows) p.cuda_few_rows_max = atoi(few_rows) > 0 ? atoi(few_rows) : -1;
    if (p.cuda_few_rows_max == 0) p.cuda_few_rows_max = XLKV_CUDA_FEW_ROWS_DEFAULT;
    if (p.cuda_few_rows_max < 0) p.cuda_few_rows_max = 0;
    if (p.cuda_few_rows_max > XLKV_CUDA_GEMV_MAX_ROWS) p.cuda_few_rows_max = XLKV_CUDA_GEMV_MAX_ROWS;
    e->params = p;
    e->dt = p.dtype == XLKV_ENGINE_BF16 ? XLKV_DTYPE_BF16 : XLKV_DTYPE_F32;
    e->elem_bytes = xlkv_cuda_dtype_bytes(e->dt);
    e->n_ctx = p.n_ctx;
    e->iterations = p.iterations;
    e->prefill_rows = p.max_prefill_tokens;
    e->decode_rows = xlkv_cuda_batch_bucket(p.max_batch);
    /* finished and empty sequences keep a slot until removed: room for as many again, plus a few */
    e->max_seqs = 2 * p.max_batch + 8;
    return XLKV_OK;
}

static xlkv_cuda_buffer_shape buffer_shape(const xlkv_cuda_engine *e) {
    const int rows = e->decode_rows > e->prefill_rows ? e->decode_rows : e->prefill_rows;
    return (xlkv_cuda_buffer_shape){
        .rows = rows,
        .decode_rows = e->decode_rows,
        .logit_rows = e->decode_rows > 64 ? e->decode_rows : 64,
        .n_ctx = e->n_ctx,
    };
}

static double gib(size_t bytes) { return (double)bytes / (1024.0 * 1024.0 * 1024.0); }

/* Blocks of the KV pool (scratch block included), from kv_pool_bytes, else the memory budget, else max_batch full
 * sequences. */
static xlkv_status size_kv_pool(const xlkv_cuda_engine *e, size_t fixed_bytes, size_t weights_bytes,
                                size_t block_bytes, size_t *out_blocks) {
    const xlkv_engine_params *p = &e->params;
    const size_t blocks_per_seq = (size_t)((e->n_ctx + p->block_size - 1) / p->block_size);
    size_t pool_bytes;
    if (p->kv_pool_bytes) {
        pool_bytes = p->kv_pool_bytes;
    } else if (p->memory_budget_bytes) {
        if (p->memory_budget_bytes <= fixed_bytes)
            return xlkv_fail(XLKV_E_CAPACITY,
                             "cuda engine: a memory budget of %zu bytes (%.3f GiB) cannot hold the weights (%zu bytes, "
                             "%.3f GiB) and activations (%zu bytes): nothing is left for the KV pool",
                             p->memory_budget_bytes, gib(p->memory_budget_bytes), weights_bytes, gib(weights_bytes),
                             fixed_bytes - weights_bytes);
        pool_bytes = p->memory_budget_bytes - fixed_bytes;
    } else {
        *out_blocks = (size_t)p->max_batch * blocks_per_seq + 1;
        return XLKV_OK;
    }
    const size_t blocks = pool_bytes / block_bytes;
    if (blocks < 2)
        return xlkv_fail(XLKV_E_CAPACITY,
                         "cuda engine: a KV pool of %zu bytes holds %zu blocks of %zu bytes (%d positions); at least "
                         "2 are needed (one is scratch)%s",
                         pool_bytes, blocks, block_bytes, p->block_size,
                         p->kv_pool_bytes ? "" : " — raise the memory budget");
    if (blocks > (size_t)INT_MAX) {
        *out_blocks = (size_t)INT_MAX;
        return XLKV_OK;
    }
    *out_blocks = blocks;
    return XLKV_OK;
}

static void engine_destroy(void *state) {
    xlkv_cuda_engine *e = state;
    if (!e) return;
    if (e->stream) (void)cudaStreamSynchronize(e->stream);
    xlkv_cuda_graphs_free(&e->graphs);
    xlkv_cuda_kv_pool_free(&e->kv);
    xlkv_cuda_buffers_free(&e->buf);
    xlkv_cuda_weights_free(&e->weights);
    xlkv_cuda_gemm_free(&e->gemm);
    if (e->seqs)
        for (int s = 0; s < e->max_seqs; s++) free(e->seqs[s].prompt);
    free(e->seqs);
    if (e->stream) (void)cudaStreamDestroy(e->stream);
    (void)cudaGetLastError();
    free(e);
}

static xlkv_status check_device(void) {
    int count = 0;
    cudaError_t err = cudaGetDeviceCount(&count);
    if (err != cudaSuccess) {
        (void)cudaGetLastError();
        return xlkv_fail(XLKV_E_BACKEND, "cuda engine: no usable CUDA device: %s", cudaGetErrorString(err));
    }
    if (count == 0) return xlkv_fail(XLKV_E_BACKEND, "cuda engine: no CUDA device found");
    return XLKV_OK;
}

static xlkv_status engine_setup(xlkv_cuda_engine *e, const xlkv_engine_params *params) {
    const xlkv_model *model = e->model;
    const xlkv_hparams *hp = &model->hp;
    XLKV_TRY(resolve_params(e, params));
    XLKV_TRY(check_device());

    /* sizes first, so that a budget that cannot work fails before anything is uploaded */
    const xlkv_cuda_buffer_shape shape = buffer_shape(e);
    const size_t weights_bytes = xlkv_cuda_weights_bytes(model, e->dt);
    if (weights_bytes == (size_t)-1) return xlkv_fail(XLKV_E_NOMEM, "cuda engine: out of host memory");
    const size_t buffers_bytes = xlkv_cuda_buffers_bytes(hp, e->dt, &shape);
    const size_t tables_bytes = (size_t)(e->max_seqs + 1) *
                                (size_t)((e->n_ctx + e->params.block_size - 1) / e->params.block_size) * sizeof(int);
    const size_t fixed_bytes = weights_bytes + buffers_bytes + xlkv_cuda_gemm_workspace_bytes() + tables_bytes;
    const int kv_dim = hp->n_kv_heads * hp->head_dim;
    const size_t block_bytes =
        xlkv_cuda_kv_block_bytes(model->map->n_kv_layers, e->params.block_size, kv_dim, e->elem_bytes);
    size_t n_blocks = 0;
    XLKV_TRY(size_kv_pool(e, fixed_bytes, weights_bytes, block_bytes, &n_blocks));

    XLKV_CUDA_TRY(cudaStreamCreateWithFlags(&e->stream, cudaStreamNonBlocking), "creating the engine stream");
    XLKV_TRY(xlkv_cuda_gemm_init(&e->gemm, e->dt, e->stream));
    XLKV_TRY(xlkv_cuda_weights_upload(&e->weights, model, e->dt));
    XLKV_TRY(xlkv_cuda_buffers_init(&e->buf, hp, e->dt, &shape, e->stream));
    XLKV_TRY(xlkv_cuda_kv_pool_init(&e->kv, n_blocks, model->map->n_kv_layers, e->params.block_size, kv_dim,
                                    e->elem_bytes, e->max_seqs, e->n_ctx, e->stream));
    XLKV_TRY(xlkv_cuda_graphs_init(&e->graphs, e->decode_rows, e->params.cuda_graphs));
    e->seqs = calloc((size_t)e->max_seqs, sizeof *e->seqs);
    if (!e->seqs) return xlkv_fail(XLKV_E_NOMEM, "cuda engine: out of host memory for %d sequences", e->max_seqs);
    return XLKV_OK;
}

static xlkv_status engine_create(const xlkv_model *model, const xlkv_engine_params *params, void **state) {
    *state = NULL;
    if (!model) return xlkv_fail(XLKV_E_INVALID, "cuda engine: no model");
    xlkv_cuda_engine *e = calloc(1, sizeof *e);
    if (!e) return xlkv_fail(XLKV_E_NOMEM, "cuda engine: out of host memory");
    e->model = model;
    xlkv_status status = engine_setup(e, params);
    if (status != XLKV_OK) {
        engine_destroy(e);
        return status;
    }
    *state = e;
    return XLKV_OK;
}

/* ---- sequences ----------------------------------------------------------------------------------------------- */

static xlkv_cuda_sequence *find_sequence(xlkv_cuda_engine *e, int id) {
    for (int s = 0; s < e->max_seqs; s++)
        if (e->seqs[s].state != XLKV_CUDA_SEQ_FREE && e->seqs[s].id == id) return &e->seqs[s];
    return NULL;
}

static int slot_of(const xlkv_cuda_engine *e, const xlkv_cuda_sequence *s) { return (int)(s - e->seqs); }

static int count_active(const xlkv_cuda_engine *e) {
    int n = 0;
    for (int s = 0; s < e->max_seqs; s++)
        n += e->seqs[s].state == XLKV_CUDA_SEQ_PENDING || e->seqs[s].state == XLKV_CUDA_SEQ_RUNNING;
    return n;
}

static void remember_token(xlkv_cuda_sequence *s, int token) {
    if (s->n_recent == XLKV_CUDA_PENALTY_WINDOW) {
        memmove(s->recent, s->recent + 1, (XLKV_CUDA_PENALTY_WINDOW - 1) * sizeof(int));
        s->n_recent--;
    }
    s->recent[s->n_recent++] = token;
}

static xlkv_status check_tokens(const xlkv_cuda_engine *e, const int *tokens, int n, const char *what) {
    const int vocab = e->model->hp.vocab_size;
    for (int i = 0; i < n; i++)
        if (tokens[i] < 0 || tokens[i] >= vocab)
            return xlkv_fail(XLKV_E_INVALID, "cuda engine: %s: token %d at index %d is outside the vocabulary [0, %d)",
                             what, tokens[i], i, vocab);
    return XLKV_OK;
}

static xlkv_status check_usable(const xlkv_cuda_engine *e) {
    if (e->broken)
        return xlkv_fail(XLKV_E_BACKEND, "cuda engine: unusable after an earlier device failure; free it and create "
                                         "a new one");
    return XLKV_OK;
}

static xlkv_status engine_add(void *state, const int *prompt, int n_prompt, int max_new_tokens,
                              const xlkv_sampler_params *sampling, int *out_seq) {
    xlkv_cuda_engine *e = state;
    *out_seq = -1;
    XLKV_TRY(check_usable(e));
    if (n_prompt < 0 || (n_prompt > 0 && !prompt))
        return xlkv_fail(XLKV_E_INVALID, "cuda engine: add: invalid prompt (%d tokens)", n_prompt);
    if (n_prompt > 0) {
        if (max_new_tokens == 0)
            return xlkv_fail(XLKV_E_INVALID,
                             "cuda engine: add: max_new_tokens must be >= 1 (or < 0 for until the end token or a full "
                             "context), got 0");
        XLKV_TRY(check_tokens(e, prompt, n_prompt, "add"));
        if (n_prompt > e->n_ctx)
            return xlkv_fail(XLKV_E_CAPACITY, "cuda engine: add: a prompt of %d tokens exceeds the context of %d",
                             n_prompt, e->n_ctx);
        if (count_active(e) >= e->params.max_batch)
            return xlkv_fail(XLKV_E_CAPACITY, "cuda engine: add: max_batch = %d sequences are already running",
                             e->params.max_batch);
        if (sampling) XLKV_TRY(xlkv_sampler_params_validate(sampling));
    }
    int slot = -1;
    for (int s = 0; s < e->max_seqs && slot < 0; s++)
        if (e->seqs[s].state == XLKV_CUDA_SEQ_FREE) slot = s;
    if (slot < 0)
        return xlkv_fail(XLKV_E_CAPACITY,
                         "cuda engine: add: all %d sequence slots are taken (finished sequences keep theirs until "
                         "removed)",
                         e->max_seqs);
    xlkv_cuda_sequence *s = &e->seqs[slot];
    memset(s, 0, sizeof *s);
    if (n_prompt > 0) {
        long long positions = (long long)n_prompt + (max_new_tokens < 0 ? e->n_ctx : max_new_tokens - 1);
        if (positions > e->n_ctx) positions = e->n_ctx;
        char who[64];
        snprintf(who, sizeof who, "a new sequence of %d + %d tokens", n_prompt, max_new_tokens);
        XLKV_TRY(xlkv_cuda_kv_pool_reserve(&e->kv, slot, (int)positions, who, e->stream));
        s->prompt = malloc((size_t)n_prompt * sizeof(int));
        if (!s->prompt) {
            xlkv_status released = xlkv_cuda_kv_pool_release(&e->kv, slot, e->stream);
            (void)released;
            return xlkv_fail(XLKV_E_NOMEM, "cuda engine: add: out of host memory for the prompt");
        }
        memcpy(s->prompt, prompt, (size_t)n_prompt * sizeof(int));
        s->n_prompt = n_prompt;
        const xlkv_sampler_params greedy = {.temperature = 0.0f, .top_k = 0, .top_p = 1.0f, .repeat_penalty = 1.0f};
        const xlkv_sampler_params *sp = sampling ? sampling : &greedy;
        s->sampling = (xlkv_cuda_sampling){.temperature = sp->temperature,
                                           .top_k = sp->top_k,
                                           .top_p = sp->top_p,
                                           .repeat_penalty = sp->repeat_last_n > 0 ? sp->repeat_penalty : 1.0f,
                                           .seed = sp->seed};
        s->penalty_window = sp->repeat_last_n < XLKV_CUDA_PENALTY_WINDOW ? sp->repeat_last_n : XLKV_CUDA_PENALTY_WINDOW;
        for (int i = 0; i < n_prompt; i++) remember_token(s, prompt[i]);
        s->state = XLKV_CUDA_SEQ_PENDING;
    } else {
        s->state = XLKV_CUDA_SEQ_EMPTY;
    }
    s->max_new_tokens = max_new_tokens;
    s->id = e->next_id++;
    *out_seq = s->id;
    return XLKV_OK;
}

static xlkv_status engine_remove(void *state, int seq) {
    xlkv_cuda_engine *e = state;
    xlkv_cuda_sequence *s = find_sequence(e, seq);
    if (!s) return xlkv_fail(XLKV_E_INVALID, "cuda engine: remove: no sequence %d", seq);
    xlkv_status status = xlkv_cuda_kv_pool_release(&e->kv, slot_of(e, s), e->stream);
    free(s->prompt);
    memset(s, 0, sizeof *s);
    if (status != XLKV_OK) e->broken = true;
    return status;
}

/* ---- a step -------------------------------------------------------------------------------------------------- */

/* Records a newly sampled token of s (fed or not) and decides whether s finishes. */
static void accept_token(xlkv_cuda_engine *e, xlkv_cuda_sequence *s, int token, xlkv_engine_event *event) {
    const xlkv_hparams *hp = &e->model->hp;
    const bool end = !e->params.ignore_end_tokens && (token == hp->eos_id || token == hp->bos_id);
    bool finished = end;
    if (!end) {
        s->n_generated++;
        s->next_token = token;
        remember_token(s, token);
        if (s->max_new_tokens >= 0 && s->n_generated >= s->max_new_tokens) finished = true;
        if (s->n_past >= e->n_ctx) finished = true;
    }
    if (finished) s->state = XLKV_CUDA_SEQ_FINISHED;
    *event = (xlkv_engine_event){.seq = s->id, .token = token, .finished = finished, .end_token = end};
}

/* Writes row b's sampling parameters and repetition history into the host input mirror. */
static void stage_sampling(xlkv_cuda_engine *e, const xlkv_cuda_step_layout *layout, int b,
                           const xlkv_cuda_sequence *s) {
    xlkv_cuda_sampling *params = (xlkv_cuda_sampling *)(e->buf.host_inputs + layout->sampling);
    int *history_len = (int *)(e->buf.host_inputs + layout->history_len);
    int *history = (int *)(e->buf.host_inputs + layout->history) + (size_t)b * XLKV_CUDA_PENALTY_WINDOW;
    if (!s) { /* a padding row: greedy, no history */
        params[b] = (xlkv_cuda_sampling){.temperature = 0.0f, .top_k = 0, .top_p = 1.0f, .repeat_penalty = 1.0f};
        history_len[b] = 0;
        for (int i = 0; i < XLKV_CUDA_PENALTY_WINDOW; i++) history[i] = -1;
        return;
    }
    params[b] = s->sampling;
    params[b].step = (uint64_t)s->n_generated;
    const int n = s->n_recent < s->penalty_window ? s->n_recent : s->penalty_window;
    for (int i = 0; i < XLKV_CUDA_PENALTY_WINDOW; i++) history[i] = i < n ? s->recent[s->n_recent - n + i] : -1;
    history_len[b] = n;
}

/* After its prompt is in the cache: s runs, and `token` (sampled from the last prompt position) is its first. */
static void finish_prefill(xlkv_cuda_engine *e, xlkv_cuda_sequence *s, int token, xlkv_engine_event *event) {
    s->n_past = s->n_prompt;
    free(s->prompt);
    s->prompt = NULL;
    s->state = XLKV_CUDA_SEQ_RUNNING;
    accept_token(e, s, token, event);
}

/* Prefills a pending sequence and samples its first token. */
static xlkv_status prefill_sequence(xlkv_cuda_engine *e, xlkv_cuda_sequence *s, xlkv_engine_event *event) {
    const int slot = slot_of(e, s);
    XLKV_TRY(xlkv_cuda_prefill(e, slot, s->prompt, s->n_prompt, 0, NULL));
    const xlkv_cuda_step_layout layout = xlkv_cuda_step_layout_for(0, 1);
    XLKV_TRY(xlkv_cuda_inputs_begin(e));
    stage_sampling(e, &layout, 0, s);
    XLKV_TRY(xlkv_cuda_inputs_send(e, layout.bytes));
    XLKV_TRY(xlkv_cuda_sample_first(e));
    XLKV_CUDA_TRY(cudaStreamSynchronize(e->stream), "prefill");
    finish_prefill(e, s, e->buf.host_sampled[0], event);
    return XLKV_OK;
}

/* Prefills together the pending sequences slots[0..count) whose prompts run in sequential mode (count <= max_batch):
 * pass p is one batched decode pass (the captured graph of its bucket) over token p of every prompt longer than p,
 * at position p. Each row computes what xlkv_cuda_prefill's sequential mode computes for it alone (rows of a decode
 * pass are independent), and a sequence's first token is sampled in the pass of its last prompt token with its own
 * sampling row (other rows sample as greedy padding; their tokens are dropped). So the longest prompt sets the number
 * of passes, instead of the sum of the prompts. events[i] receives slots[i]'s first token. */
static xlkv_status prefill_sequential_together(xlkv_cuda_engine *e, const int *slots, int count,
                                               xlkv_engine_event *events) {
    int longest = 0;
    for (int i = 0; i < count; i++)
        if (e->seqs[slots[i]].n_prompt > longest) longest = e->seqs[slots[i]].n_prompt;
    int *rows = malloc((size_t)(count > 0 ? count : 1) * sizeof(int)); /* group index of each row of a pass */
    if (!rows) return xlkv_fail(XLKV_E_NOMEM, "cuda engine: step: out of host memory");
    xlkv_status status = XLKV_OK;
    for (int p = 0; p < longest && status == XLKV_OK; p++) {
        int batch = 0, finishing = 0;
        for (int i = 0; i < count; i++)
            if (e->seqs[slots[i]].n_prompt > p) {
                rows[batch++] = i;
                finishing += e->seqs[slots[i]].n_prompt == p + 1;
            }
        const int bucket = xlkv_cuda_batch_bucket(batch);
        const xlkv_cuda_step_layout layout = xlkv_cuda_step_layout_for(bucket, bucket);
        status = xlkv_cuda_inputs_begin(e);
        if (status != XLKV_OK) break;
        int *tokens = (int *)(e->buf.host_inputs + layout.tokens);
        int *row_seq = (int *)(e->buf.host_inputs + layout.row_seq);
        int *row_pos = (int *)(e->buf.host_inputs + layout.row_pos);
        for (int b = 0; b < bucket; b++) {
            const xlkv_cuda_sequence *s = b < batch ? &e->seqs[slots[rows[b]]] : NULL;
            tokens[b] = s ? s->prompt[p] : 0;
            row_seq[b] = s ? slots[rows[b]] : e->kv.padding_row;
            row_pos[b] = s ? p : 0;
            stage_sampling(e, &layout, b, s && s->n_prompt == p + 1 ? s : NULL);
        }
        status = xlkv_cuda_inputs_send(e, layout.bytes);
        if (status == XLKV_OK) status = xlkv_cuda_graphs_run(&e->graphs, bucket, xlkv_cuda_decode_pass, e, e->stream);
        if (status != XLKV_OK || !finishing) continue;
        const cudaError_t err = cudaStreamSynchronize(e->stream); /* the sampled ids are in host_sampled */
        if (err != cudaSuccess) {
            status = xlkv_cuda_fail(err, "prefilling sequences together");
            break;
        }
        for (int b = 0; b < batch; b++) {
            xlkv_cuda_sequence *s = &e->seqs[slots[rows[b]]];
            if (s->n_prompt == p + 1) finish_prefill(e, s, e->buf.host_sampled[b], &events[rows[b]]);
        }
    }
    free(rows);
    return status;
}

/* Prompts of the plan mode that can share a pass: at most one chunk, a map without cyclic groups, varlen on. */
static bool prefills_in_shared_pass(const xlkv_cuda_engine *e, const xlkv_cuda_sequence *s) {
    return !e->params.cuda_no_varlen && !xlkv_layer_map_has_cyclic(e->model->map) &&
           s->n_prompt <= e->prefill_rows && !xlkv_cuda_prefills_sequentially(e, s->n_prompt);
}

/* Varlen prefill of the plan-mode sequences slots[0..count) (in the order added): they are packed, in that order, into
 * passes of at most buf.shape.rows rows (row_count + sequences) and decode_rows sequences; a pass of several runs
 * xlkv_cuda_prefill_segments (one plan pass over the concatenated prompts, each sequence's first token sampled with
 * its own sampling row), a pass of one runs prefill_sequence as before. events[i] receives slots[i]'s first token. */
static xlkv_status prefill_plan_together(xlkv_cuda_engine *e, const int *slots, int count, xlkv_engine_event *events) {
    xlkv_cuda_segment *segments = malloc((size_t)(count > 0 ? count : 1) * sizeof *segments);
    if (!segments) return xlkv_fail(XLKV_E_NOMEM, "cuda engine: step: out of host memory");
    xlkv_status status = XLKV_OK;
    for (int first = 0; first < count && status == XLKV_OK;) {
        int group = 0, n_rows = 0;
        while (first + group < count && group < e->buf.shape.decode_rows) {
            const int n = e->seqs[slots[first + group]].n_prompt;
            if (group > 0 && n_rows + n + group + 1 > e->buf.shape.rows) break;
            n_rows += n;
            group++;
        }
        if (group == 1) {
            status = prefill_sequence(e, &e->seqs[slots[first]], &events[first]);
            first++;
            continue;
        }
        const xlkv_cuda_step_layout layout = xlkv_cuda_step_layout_for(n_rows + group, group);
        status = xlkv_cuda_inputs_begin(e);
        if (status != XLKV_OK) break;
        int *tokens = (int *)(e->buf.host_inputs + layout.tokens);
        int *row_seq = (int *)(e->buf.host_inputs + layout.row_seq);
        int *row_pos = (int *)(e->buf.host_inputs + layout.row_pos);
        for (int i = 0, row = 0; i < group; i++) {
            const xlkv_cuda_sequence *s = &e->seqs[slots[first + i]];
            segments[i] = (xlkv_cuda_segment){.slot = slots[first + i], .row0 = row, .n = s->n_prompt, .pos0 = 0};
            for (int t = 0; t < s->n_prompt; t++, row++) {
                tokens[row] = s->prompt[t];
                row_seq[row] = slots[first + i];
                row_pos[row] = t;
            }
            tokens[n_rows + i] = row - 1; /* the segment's last row */
            row_seq[n_rows + i] = e->kv.padding_row;
            row_pos[n_rows + i] = 0;
            stage_sampling(e, &layout, i, s);
        }
        status = xlkv_cuda_inputs_send(e, layout.bytes);
        if (status == XLKV_OK) status = xlkv_cuda_prefill_segments(e, segments, group, n_rows);
        if (status != XLKV_OK) break;
        const cudaError_t err = cudaStreamSynchronize(e->stream); /* the sampled ids are in host_sampled */
        if (err != cudaSuccess) {
            status = xlkv_cuda_fail(err, "prefilling prompts in one pass");
            break;
        }
        for (int i = 0; i < group; i++)
            finish_prefill(e, &e->seqs[slots[first + i]], e->buf.host_sampled[i], &events[first + i]);
        first += group;
    }
    free(segments);
    return status;
}

/* One decode pass over the sequences listed in slots[0..batch). */
static xlkv_status decode_batch(xlkv_cuda_engine *e, const int *slots, int batch, xlkv_engine_event *events) {
    const int bucket = xlkv_cuda_batch_bucket(batch);
    const xlkv_cuda_step_layout layout = xlkv_cuda_step_layout_for(bucket, bucket);
    XLKV_TRY(xlkv_cuda_inputs_begin(e));
    int *tokens = (int *)(e->buf.host_inputs + layout.tokens);
    int *row_seq = (int *)(e->buf.host_inputs + layout.row_seq);
    int *row_pos = (int *)(e->buf.host_inputs + layout.row_pos);
    for (int b = 0; b < bucket; b++) {
        const xlkv_cuda_sequence *s = b < batch ? &e->seqs[slots[b]] : NULL;
        tokens[b] = s ? s->next_token : 0;
        row_seq[b] = s ? slots[b] : e->kv.padding_row;
        row_pos[b] = s ? s->n_past : 0;
        stage_sampling(e, &layout, b, s);
    }
    XLKV_TRY(xlkv_cuda_inputs_send(e, layout.bytes));
    XLKV_TRY(xlkv_cuda_graphs_run(&e->graphs, bucket, xlkv_cuda_decode_pass, e, e->stream));
    XLKV_CUDA_TRY(cudaStreamSynchronize(e->stream), "decode step");
    for (int b = 0; b < batch; b++) {
        xlkv_cuda_sequence *s = &e->seqs[slots[b]];
        s->n_past++; /* next_token is now in the cache */
        accept_token(e, s, e->buf.host_sampled[b], &events[b]);
    }
    return XLKV_OK;
}

static xlkv_status step_sequences(xlkv_cuda_engine *e, xlkv_engine_event *events, int *n_events, int *decode_slots) {
    /* the sequences to decode are those running before any prefill of this step */
    int batch = 0;
    for (int s = 0; s < e->max_seqs; s++)
        if (e->seqs[s].state == XLKV_CUDA_SEQ_RUNNING) decode_slots[batch++] = s;
    /* prefill in the order added (ids grow): plan-mode prompts longer than a chunk (or all of them with varlen off)
     * one by one at once; plan-mode prompts of one chunk packed into shared passes, then prompts of the sequential
     * mode all together; every event still in the order added */
    int *together = decode_slots + batch, n_together = 0; /* slots after the decode list: max_seqs in all */
    xlkv_engine_event *together_events = NULL, *shared_events = NULL;
    int *together_event_index = NULL, *shared_slots = NULL, *shared_event_index = NULL, n_shared = 0;
    int pending = 0;
    for (int s = 0; s < e->max_seqs; s++) pending += e->seqs[s].state == XLKV_CUDA_SEQ_PENDING;
    if (pending > 0) {
        together_events = malloc((size_t)pending * sizeof *together_events);
        together_event_index = malloc((size_t)pending * sizeof *together_event_index);
        shared_events = malloc((size_t)pending * sizeof *shared_events);
        shared_slots = malloc((size_t)pending * sizeof *shared_slots);
        shared_event_index = malloc((size_t)pending * sizeof *shared_event_index);
        if (!together_events || !together_event_index || !shared_events || !shared_slots || !shared_event_index) {
            free(together_events);
            free(together_event_index);
            free(shared_events);
            free(shared_slots);
            free(shared_event_index);
            return xlkv_fail(XLKV_E_NOMEM, "cuda engine: step: out of host memory");
        }
    }
    xlkv_status status = XLKV_OK;
    for (int last_id = -1; status == XLKV_OK;) {
        xlkv_cuda_sequence *next = NULL;
        for (int s = 0; s < e->max_seqs; s++)
            if (e->seqs[s].state == XLKV_CUDA_SEQ_PENDING && e->seqs[s].id > last_id &&
                (!next || e->seqs[s].id < next->id))
                next = &e->seqs[s];
        if (!next) break;
        last_id = next->id;
        if (xlkv_cuda_prefills_sequentially(e, next->n_prompt)) {
            together_event_index[n_together] = (*n_events)++; /* its place in the order added */
            together[n_together++] = slot_of(e, next);
        } else if (prefills_in_shared_pass(e, next)) {
            shared_event_index[n_shared] = (*n_events)++;
            shared_slots[n_shared++] = slot_of(e, next);
        } else {
            status = prefill_sequence(e, next, &events[*n_events]);
            if (status == XLKV_OK) (*n_events)++;
        }
    }
    if (status == XLKV_OK && n_shared > 0) {
        status = prefill_plan_together(e, shared_slots, n_shared, shared_events);
        for (int i = 0; status == XLKV_OK && i < n_shared; i++) events[shared_event_index[i]] = shared_events[i];
    }
    if (status == XLKV_OK && n_together > 0) {
        status = prefill_sequential_together(e, together, n_together, together_events);
        for (int i = 0; status == XLKV_OK && i < n_together; i++) events[together_event_index[i]] = together_events[i];
    }
    free(together_events);
    free(together_event_index);
    free(shared_events);
    free(shared_slots);
    free(shared_event_index);
    XLKV_TRY(status);
    if (batch > 0) {
        XLKV_TRY(decode_batch(e, decode_slots, batch, events + *n_events));
        *n_events += batch;
    }
    return XLKV_OK;
}

static xlkv_status engine_step(void *state, xlkv_engine_event *events, int capacity, int *out_n_events) {
    xlkv_cuda_engine *e = state;
    *out_n_events = 0;
    XLKV_TRY(check_usable(e));
    const int active = count_active(e);
    if (active > 0 && (!events || capacity < active))
        return xlkv_fail(XLKV_E_INVALID, "cuda engine: step: room for %d events, but %d sequences may emit a token",
                         events ? capacity : 0, active);
    int *decode_slots = malloc((size_t)e->max_seqs * sizeof(int));
    if (!decode_slots) return xlkv_fail(XLKV_E_NOMEM, "cuda engine: step: out of host memory");
    xlkv_status status = step_sequences(e, events, out_n_events, decode_slots);
    free(decode_slots);
    if (status != XLKV_OK) e->broken = true;
    return status;
}

/* ---- the test path and statistics ---------------------------------------------------------------------------- */

static xlkv_status engine_forward_logits(void *state, int seq, const int *tokens, int n, float *logits) {
    xlkv_cuda_engine *e = state;
    XLKV_TRY(check_usable(e));
    xlkv_cuda_sequence *s = find_sequence(e, seq);
    if (!s) return xlkv_fail(XLKV_E_INVALID, "cuda engine: forward_logits: no sequence %d", seq);
    if (s->state == XLKV_CUDA_SEQ_PENDING || s->state == XLKV_CUDA_SEQ_RUNNING)
        return xlkv_fail(XLKV_E_INVALID, "cuda engine: forward_logits: sequence %d is being generated by step()", seq);
    if (n <= 0 || !tokens || !logits) return xlkv_fail(XLKV_E_INVALID, "cuda engine: forward_logits: no tokens given");
    XLKV_TRY(check_tokens(e, tokens, n, "forward_logits"));
    if (n > e->n_ctx - s->n_past)
        return xlkv_fail(XLKV_E_CAPACITY,
                         "cuda engine: forward_logits: %d tokens do not fit: sequence %d holds %d of %d positions", n,
                         seq, s->n_past, e->n_ctx);
    char who[64];
    snprintf(who, sizeof who, "sequence %d", seq);
    XLKV_TRY(xlkv_cuda_kv_pool_reserve(&e->kv, slot_of(e, s), s->n_past + n, who, e->stream));
    const xlkv_cuda_logits_sink sink = {.kind = XLKV_CUDA_LOGITS_HOST, .host = logits};
    xlkv_status status = xlkv_cuda_prefill(e, slot_of(e, s), tokens, n, s->n_past, &sink);
    if (status == XLKV_OK) {
        cudaError_t err = cudaStreamSynchronize(e->stream);
        if (err != cudaSuccess) status = xlkv_cuda_fail(err, "forward_logits");
    }
    if (status != XLKV_OK) {
        e->broken = true;
        return status;
    }
    s->n_past += n;
    return XLKV_OK;
}

/* Checks request i before anything runs (the dispatcher validates too; the backend never trusts its caller). */
static xlkv_status check_score_request(const xlkv_cuda_engine *e, const xlkv_score_request *req, int i) {
    if (!req->tokens || !req->log_probs || !req->is_argmax)
        return xlkv_fail(XLKV_E_INVALID, "cuda engine: score: request %d has no tokens or no outputs", i);
    if (req->n < 1 || req->first_row < 0 || req->first_row >= req->n)
        return xlkv_fail(XLKV_E_INVALID, "cuda engine: score: request %d scores rows [%d, %d) (need 0 <= first < n)",
                         i, req->first_row, req->n);
    if (req->n > e->n_ctx)
        return xlkv_fail(XLKV_E_CAPACITY, "cuda engine: score: request %d has %d tokens, more than the context of %d",
                         i, req->n, e->n_ctx);
    char what[48];
    snprintf(what, sizeof what, "score request %d", i);
    return check_tokens(e, req->tokens, req->n + 1, what);
}

/* One request as a fresh sequence: added empty, KV blocks for its n positions, scored on the device, removed (also
 * when something failed). A failure on the device marks the engine broken, as forward_logits does; a pool too full
 * for the request is XLKV_E_CAPACITY and leaves the engine usable. */
static xlkv_status score_request(xlkv_cuda_engine *e, const xlkv_score_request *req, int i) {
    int seq = -1;
    XLKV_TRY(engine_add(e, NULL, 0, 0, NULL, &seq));
    const int slot = slot_of(e, find_sequence(e, seq));
    char who[48];
    snprintf(who, sizeof who, "score request %d", i);
    xlkv_status status = xlkv_cuda_kv_pool_reserve(&e->kv, slot, req->n, who, e->stream);
    if (status == XLKV_OK) {
        status = xlkv_cuda_score_sequence(e, slot, req);
        if (status != XLKV_OK) e->broken = true;
    }
    const xlkv_status removed = engine_remove(e, seq);
    return status != XLKV_OK ? status : removed;
}

/* The backend's `score`: every request is checked first, then scored one after another (each its own prefill; see
 * cuda_score.c). */
static xlkv_status engine_score(void *state, xlkv_score_request *requests, int count) {
    xlkv_cuda_engine *e = state;
    XLKV_TRY(check_usable(e));
    if (count < 0 || (count > 0 && !requests))
        return xlkv_fail(XLKV_E_INVALID, "cuda engine: score: no requests (count %d)", count);
    for (int i = 0; i < count; i++) XLKV_TRY(check_score_request(e, &requests[i], i));
    for (int i = 0; i < count; i++) XLKV_TRY(score_request(e, &requests[i], i));
    return XLKV_OK;
}

static void engine_get_stats(const void *state, xlkv_engine_stats *out) {
    const xlkv_cuda_engine *e = state;
    memset(out, 0, sizeof *out);
    for (int s = 0; s < e->max_seqs; s++) {
        const xlkv_cuda_seq_state st = e->seqs[s].state;
        out->running += st == XLKV_CUDA_SEQ_PENDING || st == XLKV_CUDA_SEQ_RUNNING;
        out->allocated += st != XLKV_CUDA_SEQ_FREE;
    }
    const xlkv_hparams *hp = &e->model->hp;
    out->kv_blocks_total = xlkv_cuda_kv_pool_total(&e->kv);
    out->kv_blocks_used = xlkv_cuda_kv_pool_used(&e->kv);
    out->kv_bytes_per_token =
        xlkv_layer_map_kv_bytes_per_token(e->model->map, hp->n_kv_heads, hp->head_dim, (int)e->elem_bytes);
    out->kv_pool_bytes = e->kv.n_blocks * e->kv.block_bytes;
    out->device_bytes = e->weights.bytes + e->buf.bytes + e->gemm.workspace_bytes + out->kv_pool_bytes +
                        (size_t)(e->max_seqs + 1) * (size_t)e->kv.max_blocks_per_seq * sizeof(int);
}

static const xlkv_engine_backend cuda_backend = {
    .name = "cuda",
    .create = engine_create,
    .destroy = engine_destroy,
    .add = engine_add,
    .remove = engine_remove,
    .step = engine_step,
    .get_stats = engine_get_stats,
    .forward_logits = engine_forward_logits,
    .score = engine_score,
};

const xlkv_engine_backend *xlkv_engine_backend_cuda(void) { return &cuda_backend; }
