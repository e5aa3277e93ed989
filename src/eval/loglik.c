/* eval/loglik: see loglik.h. */
#include "eval/loglik.h"

#include <stdlib.h>

#include "core/status.h"

xlkv_status xlkv_eval_continuation_request(const xlkv_eval_model *model, const int *context, int n_context,
                                           const int *cont, int n_cont, int *tokens, xlkv_score_request *req) {
    if (n_context < 1 || n_cont < 1)
        return xlkv_fail(XLKV_E_INVALID, "eval: a request needs a context token and a continuation token (got %d, %d)",
                         n_context, n_cont);
    for (int j = 0; j < n_cont; j++)
        if (cont[j] < 0 || cont[j] >= model->n_vocab)
            return xlkv_fail(XLKV_E_INVALID, "eval: token id %d is outside the model's vocabulary of %d", cont[j],
                             model->n_vocab);
    /* the last max_len + 1 tokens of context + continuation; the final token is only a target */
    const int total = n_context + n_cont;
    const int keep = total < model->max_len + 1 ? total : model->max_len + 1;
    const int drop = total - keep; /* from the left end of context + continuation */
    for (int i = 0; i < keep; i++) {
        const int src = drop + i;
        tokens[i] = src < n_context ? context[src] : cont[src - n_context];
    }
    const int n_input = keep - 1;
    const int n_scored = n_cont < n_input ? n_cont : n_input; /* all of it unless it alone exceeds max_len */
    req->tokens = tokens;
    req->n = n_input;
    req->first_row = n_input - n_scored; /* row first_row predicts cont[n_cont - n_scored] */
    return XLKV_OK;
}

xlkv_eval_loglik xlkv_eval_loglik_of(const xlkv_score_request *req) {
    xlkv_eval_loglik out = {.loglik = 0.0, .is_greedy = true, .n_scored = xlkv_score_request_rows(req)};
    for (int k = 0; k < out.n_scored; k++) {
        out.loglik += req->log_probs[k];
        if (!req->is_argmax[k]) out.is_greedy = false;
    }
    return out;
}

xlkv_status xlkv_eval_continuation(const xlkv_eval_model *model, const int *context, int n_context, const int *cont,
                                   int n_cont, xlkv_eval_loglik *out) {
    int *tokens = malloc(((size_t)model->max_len + 1) * sizeof *tokens);
    double *log_probs = malloc((size_t)model->max_len * sizeof *log_probs);
    bool *is_argmax = malloc((size_t)model->max_len * sizeof *is_argmax);
    xlkv_status status = XLKV_OK;
    if (!tokens || !log_probs || !is_argmax)
        status = xlkv_fail(XLKV_E_NOMEM, "eval: cannot allocate a request of %d tokens", model->max_len);
    xlkv_score_request req = {.log_probs = log_probs, .is_argmax = is_argmax};
    if (status == XLKV_OK) status = xlkv_eval_continuation_request(model, context, n_context, cont, n_cont, tokens, &req);
    if (status == XLKV_OK) status = xlkv_eval_model_score(model, &req, 1);
    if (status == XLKV_OK) *out = xlkv_eval_loglik_of(&req);
    free(tokens);
    free(log_probs);
    free(is_argmax);
    return status;
}
