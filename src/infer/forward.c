/* infer/forward: the plan executor. Runs a chunk of tokens through the model under its layer map
 * (SEMANTICS.md sections 2-4). The only place that turns the map into "which slot, which mask": layers ask
 * kv_slot / kv_src / sliding, and cyclic groups are the plan's steps. */
#include <cblas.h>
#include <omp.h>
#include <string.h>

#include "core/status.h"
#include "infer/context.h"

xlkv_status xlkv_context_reserve(xlkv_context *ctx, int n, int logit_rows); /* context.c */

/* One decoder layer over rows x[0..n) at positions pos0.. : writes its K/V (if a KV layer), attends to its source
 * slot, then the SwiGLU block. */
static void run_layer(xlkv_context *ctx, int layer, int n, int pos0) {
    const xlkv_model *model = ctx->model;
    const xlkv_hparams *hp = &model->hp;
    const xlkv_layer_map *map = model->map;
    const xlkv_layer_weights *w = &model->weights.layers[layer];
    const xlkv_backend_ops *ops = ctx->ops;
    const int dim = hp->dim, hd = hp->head_dim;
    const int qdim = hp->n_heads * hd, kvdim = hp->n_kv_heads * hd;

    ops->rmsnorm(ctx->xb, ctx->x, w->attn_norm, n, dim, hp->norm_eps);
    ops->matmul(ctx->q, ctx->xb, w->wq, n, dim, qdim);
    ops->rope(ctx->q, n, hp->n_heads, hd, pos0, ctx->rope_cos, ctx->rope_sin);
    if (xlkv_is_kv_layer(map, layer)) {
        const int slot = map->kv_slot[layer];
        ops->matmul(ctx->k, ctx->xb, w->wk, n, dim, kvdim);
        ops->matmul(ctx->v, ctx->xb, w->wv, n, dim, kvdim);
        ops->rope(ctx->k, n, hp->n_kv_heads, hd, pos0, ctx->rope_cos, ctx->rope_sin);
        memcpy(xlkv_kv_cache_k(&ctx->cache, slot, pos0), ctx->k, (size_t)n * (size_t)kvdim * sizeof(float));
        memcpy(xlkv_kv_cache_v(&ctx->cache, slot, pos0), ctx->v, (size_t)n * (size_t)kvdim * sizeof(float));
    }
    const int read_slot = xlkv_read_slot(map, layer);
    const xlkv_attention_args args = {
        .n_heads = hp->n_heads,
        .n_kv_heads = hp->n_kv_heads,
        .head_dim = hd,
        .window = map->sliding[layer] ? hp->sliding_window : 0,
        .mask_diagonal = xlkv_is_cyclic(map, layer) || hp->force_nodiag,
        .k = xlkv_kv_cache_k(&ctx->cache, read_slot, 0),
        .v = xlkv_kv_cache_v(&ctx->cache, read_slot, 0),
    };
    ops->attention(ctx->att, ctx->q, n, pos0, &args);
    ops->matmul(ctx->proj, ctx->att, w->wo, n, qdim, dim);
    ops->add(ctx->x, ctx->proj, (size_t)n * (size_t)dim);

    ops->rmsnorm(ctx->xb, ctx->x, w->ffn_norm, n, dim, hp->norm_eps);
    ops->matmul(ctx->hb, ctx->xb, w->w_gate, n, dim, hp->hidden_dim);
    ops->matmul(ctx->hb2, ctx->xb, w->w_up, n, dim, hp->hidden_dim);
    ops->swiglu(ctx->hb, ctx->hb2, (size_t)n * (size_t)hp->hidden_dim);
    ops->matmul(ctx->proj, ctx->hb, w->w_down, n, hp->hidden_dim, dim);
    ops->add(ctx->x, ctx->proj, (size_t)n * (size_t)dim);
}

/* A cyclic group [first, last] over a chunk of n >= 2 tokens: every iteration restarts from the group's input; targets
 * start at zero; a layer reading upward sees the previous iteration's KV (the diagonal is masked), and only the last
 * iteration's KV remain in the cache. Iterating in place gives exactly that, because layers run bottom to top: an
 * upward source has not been rewritten yet in the current iteration when its reader runs. */
static void run_cyclic_group(xlkv_context *ctx, const xlkv_plan_step *step, int n, int pos0) {
    const xlkv_layer_map *map = ctx->model->map;
    const size_t bytes = (size_t)n * (size_t)ctx->model->hp.dim * sizeof(float);
    for (int j = step->first; j <= step->last; j++)
        if (xlkv_is_kv_layer(map, j)) xlkv_kv_cache_zero(&ctx->cache, map->kv_slot[j], pos0, n);
    memcpy(ctx->x_group_in, ctx->x, bytes);
    for (int iteration = 0; iteration < ctx->params.iterations; iteration++) {
        if (iteration > 0) memcpy(ctx->x, ctx->x_group_in, bytes);
        for (int layer = step->first; layer <= step->last; layer++) run_layer(ctx, layer, n, pos0);
    }
}

/* One chunk through the whole plan; chunks of one token (decode, sequential mode) run every step once. */
static void run_chunk(xlkv_context *ctx, const int *tokens, int n, int pos0) {
    const xlkv_model *model = ctx->model;
    const int dim = model->hp.dim;
    for (int r = 0; r < n; r++)
        memcpy(ctx->x + (size_t)r * (size_t)dim, model->weights.tok_embeddings + (size_t)tokens[r] * (size_t)dim,
               (size_t)dim * sizeof(float));
    const xlkv_layer_map *map = model->map;
    for (int s = 0; s < map->n_plan_steps; s++) {
        const xlkv_plan_step *step = &map->plan[s];
        if (step->cyclic && n > 1) {
            run_cyclic_group(ctx, step, n, pos0);
        } else {
            for (int layer = step->first; layer <= step->last; layer++) run_layer(ctx, layer, n, pos0);
        }
    }
}

/* Final norm and classifier for `rows` rows starting at row `first_row` of x; writes logits[rows, vocab]. */
static void compute_logits(xlkv_context *ctx, int first_row, int rows, float *logits) {
    const xlkv_model *model = ctx->model;
    const int dim = model->hp.dim;
    const float *x = ctx->x + (size_t)first_row * (size_t)dim;
    ctx->ops->rmsnorm(ctx->xb, x, model->weights.output_norm, rows, dim, model->hp.norm_eps);
    ctx->ops->matmul(logits, ctx->xb, model->weights.output, rows, dim, model->hp.vocab_size);
}

xlkv_status xlkv_context_forward(xlkv_context *ctx, const int *tokens, int n, bool all_logits,
                                 const float **out_logits) {
    const xlkv_model *model = ctx->model;
    if (out_logits) *out_logits = NULL;
    if (n <= 0) return xlkv_fail(XLKV_E_INVALID, "forward: no tokens given");
    if (n > ctx->params.n_ctx - ctx->n_past)
        return xlkv_fail(XLKV_E_CAPACITY, "forward: %d tokens do not fit: the context holds %d of %d positions", n,
                         ctx->n_past, ctx->params.n_ctx);
    for (int r = 0; r < n; r++)
        if (tokens[r] < 0 || tokens[r] >= model->hp.vocab_size)
            return xlkv_fail(XLKV_E_INVALID, "forward: token %d at index %d is outside the vocabulary [0, %d)",
                             tokens[r], r, model->hp.vocab_size);

    /* sequential mode: asked for, or a cyclic map on a chunk too short for the iterations (SEMANTICS.md 3) */
    const xlkv_prefill_mode mode = ctx->params.prefill_mode;
    const bool one_at_a_time =
        mode == XLKV_PREFILL_SEQUENTIAL || (mode == XLKV_PREFILL_AUTO && xlkv_layer_map_has_cyclic(model->map) &&
                                            n <= ctx->params.iterations);
    const int chunk = one_at_a_time ? 1 : n;
    XLKV_TRY(xlkv_context_reserve(ctx, chunk, all_logits ? n : 1));
    if (omp_get_max_threads() != ctx->params.n_threads) omp_set_num_threads(ctx->params.n_threads);

    const int vocab = model->hp.vocab_size;
    for (int start = 0; start < n; start += chunk) {
        run_chunk(ctx, tokens + start, chunk, ctx->n_past);
        ctx->n_past += chunk;
        if (all_logits)
            compute_logits(ctx, 0, chunk, ctx->logits + (size_t)start * (size_t)vocab);
        else if (start + chunk == n)
            compute_logits(ctx, chunk - 1, 1, ctx->logits);
    }
    if (out_logits) *out_logits = ctx->logits;
    return XLKV_OK;
}
