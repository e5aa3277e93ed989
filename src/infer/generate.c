/* infer/generate: see generate.h. */
#include "infer/generate.h"

#include <stdlib.h>
#include <string.h>

#include "core/status.h"
#include "core/timing.h"

static bool is_end_token(const xlkv_hparams *hp, int token) { return token == hp->eos_id || token == hp->bos_id; }

xlkv_status xlkv_generate(xlkv_context *ctx, xlkv_sampler *sampler, const int *prompt, int n_prompt, int n_predict,
                          xlkv_token_callback on_token, void *user, xlkv_generate_stats *stats) {
    xlkv_generate_stats local = {0};
    if (!stats) stats = &local;
    memset(stats, 0, sizeof *stats);
    if (n_prompt <= 0) return xlkv_fail(XLKV_E_INVALID, "generate: the prompt has no tokens (add BOS)");
    if (n_predict < 0) return xlkv_fail(XLKV_E_INVALID, "generate: n_predict must be >= 0, got %d", n_predict);
    const xlkv_hparams *hp = &ctx->model->hp;
    const int vocab = hp->vocab_size;
    int *history = malloc(((size_t)n_prompt + (size_t)n_predict) * sizeof *history);
    float *logits = malloc((size_t)vocab * sizeof *logits);
    if (!history || !logits) {
        free(history);
        free(logits);
        return xlkv_fail(XLKV_E_NOMEM, "generate: out of memory");
    }
    memcpy(history, prompt, (size_t)n_prompt * sizeof *history);
    int n_history = n_prompt;
    stats->n_prompt = n_prompt;

    xlkv_status status = XLKV_OK;
    double start = xlkv_now_seconds();
    const float *out = NULL;
    status = xlkv_context_forward(ctx, prompt, n_prompt, false, &out);
    stats->prefill_seconds = xlkv_now_seconds() - start;
    start = xlkv_now_seconds();
    while (status == XLKV_OK && stats->n_generated < n_predict) {
        memcpy(logits, out, (size_t)vocab * sizeof *logits);
        int token = xlkv_sampler_sample(sampler, logits, history, n_history);
        if (is_end_token(hp, token)) {
            stats->stopped_at_end_token = true;
            break;
        }
        history[n_history++] = token;
        stats->n_generated++;
        if (on_token && !on_token(token, user)) break;
        if (stats->n_generated == n_predict) break;
        if (ctx->n_past >= ctx->params.n_ctx) {
            stats->context_full = true;
            break;
        }
        status = xlkv_context_forward(ctx, &token, 1, false, &out);
    }
    stats->decode_seconds = xlkv_now_seconds() - start;
    free(history);
    free(logits);
    return status;
}
