/* eval/eval_model: what the evaluation code needs from a model: scoring of fresh sequences (infer/token_scores.h:
 * the log-probability of each scored row's target and whether it is the argmax), many per call, plus the vocabulary
 * size, the longest sequence it accepts and how many sequences one call should carry.
 *
 * The scorers (loglik, perplexity, task_score) see only this, so the same code runs on the CPU context and on an
 * engine (--device cuda). The adapters are the only places that know how: over an xlkv_context
 * (eval_model_context.c, the CPU default: one sequence after another, scored on the host from its logits) and over an
 * xlkv_engine (eval_model_engine.c: xlkv_engine_score, which scores on the device where the backend can). */
#ifndef XLKV_EVAL_EVAL_MODEL_H
#define XLKV_EVAL_EVAL_MODEL_H

#include "infer/context.h"
#include "infer/engine.h"
#include "infer/token_scores.h"
#include "xlkv.h"

/* Runs tokens[0..n) as a new sequence (positions 0 .. n-1, nothing before them) and writes logits[n, vocab]:
 * row r is the prediction after token r. */
typedef xlkv_status (*xlkv_eval_forward_fn)(void *user, const int *tokens, int n, float *logits);
/* Scores requests[0..count), each a fresh sequence; a request's results never depend on the others. */
typedef xlkv_status (*xlkv_eval_score_fn)(void *user, xlkv_score_request *requests, int count);

typedef struct xlkv_eval_model {
    xlkv_eval_forward_fn forward; /* logits of one sequence; scoring falls back on it when score is NULL */
    xlkv_eval_score_fn score;     /* may be NULL */
    void *user;
    int n_vocab; /* logits per row */
    int max_len; /* most tokens one sequence may hold */
    int batch;   /* requests the scorers hand over per call (< 1 means 1) */
} xlkv_eval_model;

/* Scores requests through model->score, or through model->forward and the host (token_scores.h) when it has none. */
xlkv_status xlkv_eval_model_score(const xlkv_eval_model *model, xlkv_score_request *requests, int count);
/* model->batch, at least 1. */
int xlkv_eval_model_batch(const xlkv_eval_model *model);

/* The CPU adapter: user is an xlkv_context (reset before each sequence, one forward with all logits). */
xlkv_status xlkv_eval_forward_context(void *user, const int *tokens, int n, float *logits);
/* An eval model running on `ctx` (max_len = the context's positions, n_vocab = the model's vocabulary, batch 1). */
xlkv_eval_model xlkv_eval_model_from_context(xlkv_context *ctx);

/* The engine adapter (eval_model_engine.c): user is an xlkv_engine (any device). forward: a fresh empty sequence,
 * one forward_logits over all its tokens, then removed; score: xlkv_engine_score. max_len: the engine's positions per
 * sequence; batch: requests per call. */
xlkv_status xlkv_eval_forward_engine(void *user, const int *tokens, int n, float *logits);
xlkv_status xlkv_eval_score_engine(void *user, xlkv_score_request *requests, int count);
xlkv_eval_model xlkv_eval_model_from_engine(xlkv_engine *engine, int n_vocab, int max_len, int batch);

#endif
