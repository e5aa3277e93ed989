/* infer/context: creation, scratch buffers and bookkeeping of a sequence context (see context.h). */
#include "infer/context.h"
#include "model/rope_tables.h"

#include <cblas.h>
#include <math.h>
#include <omp.h>
#include <stdlib.h>
#include <string.h>

#include "core/status.h"

xlkv_context_params xlkv_context_default_params(void) {
    return (xlkv_context_params){.n_ctx = 0, .n_threads = 0, .prefill_mode = XLKV_PREFILL_AUTO, .iterations = 0};
}

static void free_activations(xlkv_context *ctx) {
    float **buffers[] = {&ctx->x, &ctx->x_group_in, &ctx->xb, &ctx->q, &ctx->k, &ctx->v,
                         &ctx->att, &ctx->proj, &ctx->hb, &ctx->hb2, &ctx->logits};
    for (size_t i = 0; i < sizeof buffers / sizeof buffers[0]; i++) {
        free(*buffers[i]);
        *buffers[i] = NULL;
    }
    ctx->capacity = 0;
    ctx->logit_rows = 0;
}

void xlkv_context_free(xlkv_context *ctx) {
    if (!ctx) return;
    free_activations(ctx);
    xlkv_kv_cache_free(&ctx->cache);
    free(ctx->rope_cos);
    free(ctx->rope_sin);
    free(ctx);
}

xlkv_status xlkv_context_create(const xlkv_model *model, const xlkv_context_params *params, xlkv_context **out) {
    *out = NULL;
    const xlkv_hparams *hp = &model->hp;
    xlkv_context_params p = params ? *params : xlkv_context_default_params();
    if (p.n_ctx < 0 || p.n_threads < 0 || p.iterations < 0)
        return xlkv_fail(XLKV_E_INVALID, "context: n_ctx, threads and iterations must be >= 0");
    if (p.n_ctx == 0) p.n_ctx = hp->max_seq_len;
    if (p.iterations == 0) p.iterations = hp->forward_passes + hp->backward_passes;
    if (p.n_threads == 0) p.n_threads = omp_get_num_procs();
    xlkv_context *ctx = calloc(1, sizeof *ctx);
    if (!ctx) return xlkv_fail(XLKV_E_NOMEM, "context: out of memory");
    ctx->model = model;
    ctx->ops = xlkv_backend_cpu();
    ctx->params = p;
    openblas_set_num_threads(p.n_threads);
    xlkv_status status =
        xlkv_kv_cache_init(&ctx->cache, model->map->n_kv_layers, p.n_ctx, hp->n_kv_heads * hp->head_dim);
    if (status != XLKV_OK) {
        xlkv_context_free(ctx);
        return status;
    }
    size_t table = (size_t)p.n_ctx * (size_t)(hp->head_dim / 2);
    ctx->rope_cos = malloc(table * sizeof(float));
    ctx->rope_sin = malloc(table * sizeof(float));
    if (!ctx->rope_cos || !ctx->rope_sin) {
        xlkv_context_free(ctx);
        return xlkv_fail(XLKV_E_NOMEM, "context: cannot allocate RoPE tables for %d positions", p.n_ctx);
    }
    xlkv_rope_tables_fill(ctx->rope_cos, ctx->rope_sin, p.n_ctx, hp->head_dim, hp->rope_theta);
    *out = ctx;
    return XLKV_OK;
}

void xlkv_context_reset(xlkv_context *ctx) { ctx->n_past = 0; }

xlkv_status xlkv_context_truncate(xlkv_context *ctx, int n_past) {
    if (n_past < 0 || n_past > ctx->n_past)
        return xlkv_fail(XLKV_E_INVALID, "context: cannot truncate to %d positions (it holds %d)", n_past,
                         ctx->n_past);
    ctx->n_past = n_past;
    return XLKV_OK;
}

size_t xlkv_context_kv_bytes(const xlkv_context *ctx) { return xlkv_kv_cache_bytes(&ctx->cache); }

/* Grows the activation buffers to hold `n` tokens and `logit_rows` rows of logits. Used by forward.c. */
xlkv_status xlkv_context_reserve(xlkv_context *ctx, int n, int logit_rows);

xlkv_status xlkv_context_reserve(xlkv_context *ctx, int n, int logit_rows) {
    const xlkv_hparams *hp = &ctx->model->hp;
    if (n > ctx->capacity) {
        free_activations(ctx);
        const size_t rows = (size_t)n;
        const size_t dim = (size_t)hp->dim, qdim = (size_t)hp->n_heads * (size_t)hp->head_dim;
        const size_t kvdim = (size_t)hp->n_kv_heads * (size_t)hp->head_dim, hid = (size_t)hp->hidden_dim;
        ctx->x = malloc(rows * dim * sizeof(float));
        ctx->x_group_in = malloc(rows * dim * sizeof(float));
        ctx->xb = malloc(rows * dim * sizeof(float));
        ctx->q = malloc(rows * qdim * sizeof(float));
        ctx->k = malloc(rows * kvdim * sizeof(float));
        ctx->v = malloc(rows * kvdim * sizeof(float));
        ctx->att = malloc(rows * qdim * sizeof(float));
        ctx->proj = malloc(rows * dim * sizeof(float));
        ctx->hb = malloc(rows * hid * sizeof(float));
        ctx->hb2 = malloc(rows * hid * sizeof(float));
        if (!ctx->x || !ctx->x_group_in || !ctx->xb || !ctx->q || !ctx->k || !ctx->v || !ctx->att || !ctx->proj ||
            !ctx->hb || !ctx->hb2) {
            free_activations(ctx);
            return xlkv_fail(XLKV_E_NOMEM, "context: cannot allocate activations for a chunk of %d tokens", n);
        }
        ctx->capacity = n;
    }
    if (logit_rows > ctx->logit_rows) {
        free(ctx->logits);
        ctx->logits = malloc((size_t)logit_rows * (size_t)hp->vocab_size * sizeof(float));
        if (!ctx->logits) {
            ctx->logit_rows = 0;
            return xlkv_fail(XLKV_E_NOMEM, "context: cannot allocate logits for %d positions", logit_rows);
        }
        ctx->logit_rows = logit_rows;
    }
    return XLKV_OK;
}
