/* eval/perplexity: see perplexity.h. */
#include "eval/perplexity.h"

#include <math.h>
#include <stdlib.h>

#include "core/status.h"
#include "eval/loglik.h"

xlkv_status xlkv_eval_perplexity(const xlkv_eval_model *model, const int *tokens, long n, int ctx, int stride,
                                 xlkv_eval_progress_fn progress, void *progress_user, xlkv_eval_ppl *acc) {
    if (ctx < 2 || ctx > model->max_len)
        return xlkv_fail(XLKV_E_INVALID, "perplexity: context length %d outside [2, %d]", ctx, model->max_len);
    if (stride < 1 || stride > ctx)
        return xlkv_fail(XLKV_E_INVALID, "perplexity: stride %d outside [1, %d]", stride, ctx);
    for (long i = 0; i < n; i++)
        if (tokens[i] < 0 || tokens[i] >= model->n_vocab)
            return xlkv_fail(XLKV_E_INVALID, "perplexity: token %ld has id %d, outside the model's vocabulary of %d",
                             i, tokens[i], model->n_vocab);
    if (n < 2) return XLKV_OK;
    float *logits = malloc((size_t)ctx * (size_t)model->n_vocab * sizeof *logits);
    if (!logits) return xlkv_fail(XLKV_E_NOMEM, "perplexity: cannot allocate %d x %d logits", ctx, model->n_vocab);
    xlkv_status status = XLKV_OK;
    long prev_end = 0;
    for (long begin = 0; begin < n; begin += stride) {
        long end = begin + ctx < n ? begin + ctx : n;
        int len = (int)(end - begin);
        long first_target = prev_end > begin + 1 ? prev_end : begin + 1;
        if (first_target < end) {
            status = model->forward(model->user, tokens + begin, len, logits);
            if (status != XLKV_OK) break;
            for (long t = first_target; t < end; t++) {
                const float *row = logits + (size_t)(t - 1 - begin) * (size_t)model->n_vocab;
                acc->nll_sum -= xlkv_eval_log_prob(row, model->n_vocab, tokens[t]);
                acc->n_scored++;
            }
            acc->n_windows++;
        }
        prev_end = end;
        if (progress) progress(progress_user, end, n);
        if (end == n) break;
    }
    free(logits);
    return status;
}

double xlkv_eval_ppl_value(const xlkv_eval_ppl *acc) {
    return acc->n_scored > 0 ? exp(acc->nll_sum / (double)acc->n_scored) : NAN;
}
