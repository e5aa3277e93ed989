/* infer/token_scores: scoring a sequence's own tokens, the one thing perplexity and zero-shot evaluation ask of a
 * model. A request is a fresh sequence tokens[0..n] (n + 1 ids): the model reads tokens[0..n), row r predicts
 * tokens[r + 1], and rows first_row .. n-1 are scored: the log-probability of their target (log-softmax in double,
 * max-subtracted) and whether the target is the row's argmax (the first maximum on ties, as torch.argmax).
 * Returning two numbers per scored row instead of [n, vocab] logits is what lets a device score many requests in one
 * call without moving the logits to the host.
 * This module owns the request type and the host computation from a block of logits rows (the reference every
 * backend's scoring is compared with). */
#ifndef XLKV_INFER_TOKEN_SCORES_H
#define XLKV_INFER_TOKEN_SCORES_H

#include <stdbool.h>

typedef struct xlkv_score_request {
    const int *tokens; /* n + 1 ids: input tokens[0..n), targets tokens[1..n] */
    int n;             /* rows (input tokens), >= 1 */
    int first_row;     /* rows first_row .. n - 1 are scored (0 <= first_row < n) */
    double *log_probs; /* out [n - first_row]: log p(tokens[r + 1] | tokens[0..r]) */
    bool *is_argmax;   /* out [n - first_row]: tokens[r + 1] is row r's first maximum */
} xlkv_score_request;

/* log softmax(row)[target], in double. */
double xlkv_score_log_prob(const float *row, int n_vocab, int target);
/* Index of the largest entry of row (the first one on ties). */
int xlkv_score_argmax(const float *row, int n_vocab);
/* Fills req's outputs for rows first_row .. n-1 from logits[n - first_row, n_vocab] (row k = request row first_row + k). */
void xlkv_score_rows(const xlkv_score_request *req, const float *logits, int n_vocab);
/* Rows scored by req (n - first_row). */
static inline int xlkv_score_request_rows(const xlkv_score_request *req) { return req->n - req->first_row; }

#endif
