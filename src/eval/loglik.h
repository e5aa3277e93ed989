/* eval/loglik: the log-likelihood of a continuation given a context as lm-evaluation-harness computes it
 * (`loglikelihood` requests of HFLM), as a scoring request of infer/token_scores.h.
 *
 * The sequence context + continuation is left-truncated to the model's max_len + 1 tokens, its last token dropped as
 * input, and the continuation's tokens scored at the last n_cont positions: loglik = sum of log-softmax values of the
 * continuation tokens, is_greedy = every continuation token is the argmax of its row (first maximum on ties, as
 * torch.argmax). A continuation longer than max_len (lm-eval asserts it never is) has only its last max_len tokens
 * scored, with none of the context: n_scored says so. */
#ifndef XLKV_EVAL_LOGLIK_H
#define XLKV_EVAL_LOGLIK_H

#include <stdbool.h>

#include "eval/eval_model.h"

typedef struct xlkv_eval_loglik {
    double loglik;  /* sum of log p(continuation token) */
    bool is_greedy; /* every continuation token is its row's argmax */
    int n_scored;   /* continuation tokens scored: all of them unless the continuation alone exceeds max_len */
} xlkv_eval_loglik;

/* Builds the request scoring cont[0..n_cont) after context[0..n_context) (n_context >= 1, at least BOS; n_cont >= 1;
 * ids inside the vocabulary): writes the kept tokens into `tokens` (room for max_len + 1 ints) and sets req->tokens,
 * n and first_row; the caller points req->log_probs / is_argmax at room for n - first_row (<= max_len) results. */
xlkv_status xlkv_eval_continuation_request(const xlkv_eval_model *model, const int *context, int n_context,
                                           const int *cont, int n_cont, int *tokens, xlkv_score_request *req);
/* The log-likelihood of a scored continuation request. */
xlkv_eval_loglik xlkv_eval_loglik_of(const xlkv_score_request *req);

/* One continuation, built, scored and summed. */
xlkv_status xlkv_eval_continuation(const xlkv_eval_model *model, const int *context, int n_context, const int *cont,
                                   int n_cont, xlkv_eval_loglik *out);

#endif
