/* eval/eval_model: what the evaluation code needs from a model: a function that runs one fresh sequence and returns
 * the logits of every position, the vocabulary size and the longest sequence it accepts.
 *
 * The scorers (loglik, perplexity, task_score) see only this, so the same code runs on the CPU context today and on
 * another engine by supplying another forward function. The adapters are the only places that know how: over an
 * xlkv_context (eval_model_context.c, the CPU default) and over an xlkv_engine (eval_model_engine.c, --device cuda). */
#ifndef XLKV_EVAL_EVAL_MODEL_H
#define XLKV_EVAL_EVAL_MODEL_H

#include "infer/context.h"
#include "infer/engine.h"
#include "xlkv.h"

/* Runs tokens[0..n) as a new sequence (positions 0 .. n-1, nothing before them) and writes logits[n, vocab]:
 * row r is the prediction after token r. */
typedef xlkv_status (*xlkv_eval_forward_fn)(void *user, const int *tokens, int n, float *logits);

typedef struct xlkv_eval_model {
    xlkv_eval_forward_fn forward;
    void *user;
    int n_vocab; /* logits per row */
    int max_len; /* most tokens one forward call accepts */
} xlkv_eval_model;

/* The CPU adapter: user is an xlkv_context (reset before each sequence, one forward with all logits). */
xlkv_status xlkv_eval_forward_context(void *user, const int *tokens, int n, float *logits);
/* An eval model running on `ctx` (max_len = the context's positions, n_vocab = the model's vocabulary). */
xlkv_eval_model xlkv_eval_model_from_context(xlkv_context *ctx);

/* The engine adapter (eval_model_engine.c): user is an xlkv_engine (any device); each call runs a fresh empty
 * sequence through xlkv_engine_forward_logits and removes it. max_len: the engine's positions per sequence. */
xlkv_status xlkv_eval_forward_engine(void *user, const int *tokens, int n, float *logits);
xlkv_eval_model xlkv_eval_model_from_engine(xlkv_engine *engine, int n_vocab, int max_len);

#endif
