/* eval/perplexity: token-level perplexity of a token stream with fixed-length windows, the sliding-window recipe of
 * Hugging Face's "Perplexity of fixed-length models".
 *
 * Windows of ctx tokens start at 0, stride, 2 * stride, ... until one reaches the end of the stream. Each window is a
 * fresh sequence and scores only the tokens no earlier window scored (those from the previous window's end on), so
 * with stride < ctx every token but the first is scored exactly once, each with at least ctx - stride tokens of
 * context (the first window: all the tokens before it). A window's first token has no context and is never scored,
 * so stride == ctx (disjoint windows) leaves each window's first token out, as the recipe does.
 * One difference from the recipe's code: it weights each window's mean loss by trg_len - 1 even for windows whose
 * trg_len targets are all scored; here the sum and count are exact (count = tokens scored). */
#ifndef XLKV_EVAL_PERPLEXITY_H
#define XLKV_EVAL_PERPLEXITY_H

#include "eval/eval_model.h"

/* Sums over one or more streams (start zeroed; each call adds; ppl = exp(nll_sum / n_scored)). */
typedef struct xlkv_eval_ppl {
    double nll_sum;  /* sum of -log p(token | its window's earlier tokens) */
    long n_scored;   /* tokens scored */
    long n_windows;  /* forward calls */
} xlkv_eval_ppl;

/* Called after each window with the stream's tokens covered so far and its length. */
typedef void (*xlkv_eval_progress_fn)(void *user, long done, long total);

/* Scores tokens[0..n) with windows of ctx tokens (2 <= ctx <= model->max_len) advancing by stride (1..ctx); adds to
 * *acc. A stream of fewer than 2 tokens adds nothing. progress may be NULL. */
xlkv_status xlkv_eval_perplexity(const xlkv_eval_model *model, const int *tokens, long n, int ctx, int stride,
                                 xlkv_eval_progress_fn progress, void *progress_user, xlkv_eval_ppl *acc);

/* exp(nll_sum / n_scored); NAN when nothing was scored. */
double xlkv_eval_ppl_value(const xlkv_eval_ppl *acc);

#endif
