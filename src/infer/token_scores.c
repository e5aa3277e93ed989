/* infer/token_scores: see token_scores.h. */
#include "infer/token_scores.h"

#include <math.h>
#include <stddef.h>

double xlkv_score_log_prob(const float *row, int n_vocab, int target) {
    double max = row[0];
    for (int i = 1; i < n_vocab; i++)
        if (row[i] > max) max = row[i];
    double sum = 0.0;
    for (int i = 0; i < n_vocab; i++) sum += exp((double)row[i] - max);
    return (double)row[target] - max - log(sum);
}

int xlkv_score_argmax(const float *row, int n_vocab) {
    int best = 0;
    for (int i = 1; i < n_vocab; i++)
        if (row[i] > row[best]) best = i;
    return best;
}

void xlkv_score_rows(const xlkv_score_request *req, const float *logits, int n_vocab) {
    for (int k = 0; k < xlkv_score_request_rows(req); k++) {
        const float *row = logits + (size_t)k * (size_t)n_vocab;
        const int target = req->tokens[req->first_row + k + 1];
        req->log_probs[k] = xlkv_score_log_prob(row, n_vocab, target);
        req->is_argmax[k] = xlkv_score_argmax(row, n_vocab) == target;
    }
}
