/* eval/eval_model_context: the CPU adapter of eval_model.h over xlkv_context (reset, one forward, all logits). */
#include "eval/eval_model.h"

#include <string.h>

#include "core/status.h"

xlkv_status xlkv_eval_forward_context(void *user, const int *tokens, int n, float *logits) {
    xlkv_context *ctx = user;
    if (n <= 0 || n > ctx->params.n_ctx)
        return xlkv_fail(XLKV_E_CAPACITY, "eval: a sequence of %d tokens does not fit a context of %d positions", n,
                         ctx->params.n_ctx);
    xlkv_context_reset(ctx);
    const float *out = NULL;
    XLKV_TRY(xlkv_context_forward(ctx, tokens, n, true, &out));
    memcpy(logits, out, (size_t)n * (size_t)ctx->model->hp.vocab_size * sizeof *logits);
    return XLKV_OK;
}

xlkv_eval_model xlkv_eval_model_from_context(xlkv_context *ctx) {
    return (xlkv_eval_model){
        .forward = xlkv_eval_forward_context,
        .user = ctx,
        .n_vocab = ctx->model->hp.vocab_size,
        .max_len = ctx->params.n_ctx,
    };
}
