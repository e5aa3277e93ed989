/* eval/task_score: scoring a task's examples with a model, as lm-evaluation-harness scores `loglikelihood` requests.
 *
 * Request encoding (HFLM._encode_pair): the continuation is " " + choice; trailing spaces of the context move to the
 * start of the continuation; context ids = encode(context) and whole ids = encode(context + continuation), both with
 * BOS first (llama2.c-style models are trained with BOS; lm-eval's add_bos_token=True); the continuation's ids are
 * whole[len(context ids):]. Each request is then built as in loglik.h; all of a task's requests are encoded first and
 * scored longest first (lm-eval's order), the model's `batch` requests per call; results never depend on the batch.
 * Metrics: acc = argmax over choices of the summed log-likelihood is gold (first maximum on ties, as numpy.argmax);
 * acc_norm = the same with each log-likelihood divided by the choice's length in bytes (without the delimiter; lm-eval
 * divides by characters, the same for ASCII); WinoGrande reports acc only (its choices share one continuation).
 * LAMBADA: acc = every token of the final word is the greedy choice; perplexity = exp(-mean over examples of the
 * word's summed log-likelihood), lm-eval's `perplexity` aggregation of lambada_openai. */
#ifndef XLKV_EVAL_TASK_SCORE_H
#define XLKV_EVAL_TASK_SCORE_H

#include <stdbool.h>

#include "eval/eval_model.h"
#include "eval/perplexity.h"
#include "eval/tasks.h"
#include "model/tokenizer.h"

typedef struct xlkv_task_result {
    int n_examples;
    double acc;
    double acc_norm;     /* NAN when the task has no acc_norm */
    double perplexity;   /* LAMBADA only, else NAN */
    /* per request, flattened in example order: example e's choice c is request first_request[e] + c */
    int n_requests;
    int *first_request;  /* [n_examples] */
    double *loglik;      /* [n_requests] */
    bool *is_greedy;     /* [n_requests] */
    int *n_cont_tokens;  /* [n_requests] */
    int n_cut_continuations; /* requests whose continuation alone exceeded the model's context (loglik.h) */
} xlkv_task_result;

/* Scores every example of `data`; progress (may be NULL) gets requests scored / total. Fails on a request the model
 * cannot represent (a token id at or above its vocabulary, or a continuation longer than its context). */
xlkv_status xlkv_task_evaluate(const xlkv_eval_model *model, const xlkv_tokenizer *tok, const xlkv_task_info *task,
                               const xlkv_task_data *data, xlkv_eval_progress_fn progress, void *progress_user,
                               xlkv_task_result *out);
void xlkv_task_result_free(xlkv_task_result *result);

/* The token ids of one request, as described above (heap arrays, caller frees). */
xlkv_status xlkv_task_encode_request(const xlkv_tokenizer *tok, const char *context, const char *choice,
                                     int **out_context, int *out_n_context, int **out_cont, int *out_n_cont);

#endif
