/* eval/perplexity: see perplexity.h. */
#include "eval/perplexity.h"

#include <math.h>
#include <stdlib.h>

#include "core/status.h"

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
    /* A window [begin, end) is a request over tokens[begin .. end - 1) (the last token is only a target) scoring the
     * rows whose targets no earlier window scored; `batch` windows go to the model per call, summed in window order. */
    const int batch = xlkv_eval_model_batch(model);
    xlkv_score_request *requests = calloc((size_t)batch, sizeof *requests);
    double *log_probs = malloc((size_t)batch * (size_t)ctx * sizeof *log_probs);
    bool *is_argmax = malloc((size_t)batch * (size_t)ctx * sizeof *is_argmax);
    xlkv_status status = XLKV_OK;
    if (!requests || !log_probs || !is_argmax)
        status = xlkv_fail(XLKV_E_NOMEM, "perplexity: cannot allocate %d windows of %d tokens", batch, ctx);
    long prev_end = 0, begin = 0;
    bool done = false;
    while (status == XLKV_OK && !done) {
        int count = 0;
        while (count < batch && !done) {
            const long end = begin + ctx < n ? begin + ctx : n;
            const long first_target = prev_end > begin + 1 ? prev_end : begin + 1;
            if (first_target < end) {
                xlkv_score_request *req = &requests[count];
                req->tokens = tokens + begin;
                req->n = (int)(end - 1 - begin);
                req->first_row = (int)(first_target - 1 - begin);
                req->log_probs = log_probs + (size_t)count * (size_t)ctx;
                req->is_argmax = is_argmax + (size_t)count * (size_t)ctx;
                count++;
            }
            prev_end = end;
            done = end == n;
            begin += stride;
        }
        if (count > 0) status = xlkv_eval_model_score(model, requests, count);
        for (int w = 0; status == XLKV_OK && w < count; w++) {
            for (int k = 0; k < xlkv_score_request_rows(&requests[w]); k++) acc->nll_sum -= requests[w].log_probs[k];
            acc->n_scored += xlkv_score_request_rows(&requests[w]);
            acc->n_windows++;
        }
        if (status == XLKV_OK && progress) progress(progress_user, prev_end, n);
    }
    free(requests);
    free(log_probs);
    free(is_argmax);
    return status;
}

double xlkv_eval_ppl_value(const xlkv_eval_ppl *acc) {
    return acc->n_scored > 0 ? exp(acc->nll_sum / (double)acc->n_scored) : NAN;
}
