/* eval/loglik: log-probabilities from logits, in double, and the log-likelihood of a continuation given a context as
 * lm-evaluation-harness computes it (`loglikelihood` requests of HFLM).
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

/* log softmax(row)[target], computed in double (max-subtracted log-sum-exp). */
double xlkv_eval_log_prob(const float *row, int n_vocab, int target);
/* Index of the largest logit (the first one on ties). */
int xlkv_eval_argmax(const float *row, int n_vocab);

typedef struct xlkv_eval_loglik {
    double loglik;  /* sum of log p(continuation token) */
    bool is_greedy; /* every continuation token is its row's argmax */
    int n_scored;   /* continuation tokens scored: all of them unless the continuation alone exceeds max_len */
} xlkv_eval_loglik;

/* Scores cont[0..n_cont) after context[0..n_context). n_context >= 1 (at least BOS) and n_cont >= 1. `logits` is
 * scratch for [max_len, n_vocab] floats; `tokens` scratch for max_len + 1 ints. */
xlkv_status xlkv_eval_continuation(const xlkv_eval_model *model, const int *context, int n_context, const int *cont,
                                   int n_cont, int *tokens, float *logits, xlkv_eval_loglik *out);

#endif
