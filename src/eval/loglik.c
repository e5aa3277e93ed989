/* eval/loglik: see loglik.h. */
#include "eval/loglik.h"

#include <math.h>
#include <string.h>

#include "core/status.h"

double xlkv_eval_log_prob(const float *row, int n_vocab, int target) {
    double max = row[0];
    for (int i = 1; i < n_vocab; i++)
        if (row[i] > max) max = row[i];
    double sum = 0.0;
    for (int i = 0; i < n_vocab; i++) sum += exp((double)row[i] - max);
    return (double)row[target] - max - log(sum);
}

int xlkv_eval_argmax(const float *row, int n_vocab) {
    int best = 0;
    for (int i = 1; i < n_vocab; i++)
        if (row[i] > row[best]) best = i;
    return best;
}

xlkv_status xlkv_eval_continuation(const xlkv_eval_model *model, const int *context, int n_context, const int *cont,
                                   int n_cont, int *tokens, float *logits, xlkv_eval_loglik *out) {
    if (n_context < 1 || n_cont < 1)
        return xlkv_fail(XLKV_E_INVALID, "eval: a request needs a context token and a continuation token (got %d, %d)",
                         n_context, n_cont);
    if (n_cont > model->max_len)
        return xlkv_fail(XLKV_E_CAPACITY, "eval: a continuation of %d tokens exceeds the model's %d positions", n_cont,
                         model->max_len);
    /* the last max_len + 1 tokens of context + continuation; the final token is only a target */
    int total = n_context + n_cont;
    int keep = total < model->max_len + 1 ? total : model->max_len + 1;
    int drop = total - keep; /* from the context's left end */
    int n_ctx_kept = n_context - drop;
    memcpy(tokens, context + drop, (size_t)n_ctx_kept * sizeof *tokens);
    memcpy(tokens + n_ctx_kept, cont, (size_t)n_cont * sizeof *tokens);
    int n_input = keep - 1;
    XLKV_TRY(model->forward(model->user, tokens, n_input, logits));
    out->loglik = 0.0;
    out->is_greedy = true;
    for (int j = 0; j < n_cont; j++) {
        int row = n_input - n_cont + j; /* the row predicting cont[j] */
        const float *r = logits + (size_t)row * (size_t)model->n_vocab;
        if (cont[j] < 0 || cont[j] >= model->n_vocab)
            return xlkv_fail(XLKV_E_INVALID, "eval: token id %d is outside the model's vocabulary of %d", cont[j],
                             model->n_vocab);
        out->loglik += xlkv_eval_log_prob(r, model->n_vocab, cont[j]);
        if (xlkv_eval_argmax(r, model->n_vocab) != cont[j]) out->is_greedy = false;
    }
    return XLKV_OK;
}
