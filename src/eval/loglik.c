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
    for (int j = 0; j < n_cont; j++)
        if (cont[j] < 0 || cont[j] >= model->n_vocab)
            return xlkv_fail(XLKV_E_INVALID, "eval: token id %d is outside the model's vocabulary of %d", cont[j],
                             model->n_vocab);
    /* the last max_len + 1 tokens of context + continuation; the final token is only a target */
    int total = n_context + n_cont;
    int keep = total < model->max_len + 1 ? total : model->max_len + 1;
    int drop = total - keep; /* from the left end of context + continuation */
    for (int i = 0; i < keep; i++) {
        int src = drop + i;
        tokens[i] = src < n_context ? context[src] : cont[src - n_context];
    }
    int n_input = keep - 1;
    int n_scored = n_cont < n_input ? n_cont : n_input; /* all of it unless it alone exceeds max_len */
    XLKV_TRY(model->forward(model->user, tokens, n_input, logits));
    out->loglik = 0.0;
    out->is_greedy = true;
    out->n_scored = n_scored;
    for (int j = n_cont - n_scored; j < n_cont; j++) {
        int row = n_input - (n_cont - j); /* the row predicting cont[j] */
        const float *r = logits + (size_t)row * (size_t)model->n_vocab;
        out->loglik += xlkv_eval_log_prob(r, model->n_vocab, cont[j]);
        if (xlkv_eval_argmax(r, model->n_vocab) != cont[j]) out->is_greedy = false;
    }
    return XLKV_OK;
}
