/* infer/generate: the generation loop of one sequence: prefill the prompt, then sample and decode token by token
 * until n_predict tokens, an end token (EOS, or BOS as llama2.c models emit between stories), the callback says
 * stop, or the context is full. */
#ifndef XLKV_INFER_GENERATE_H
#define XLKV_INFER_GENERATE_H

#include <stdbool.h>

#include "infer/context.h"
#include "infer/sampler.h"

/* Called with each generated token; returns false to stop. */
typedef bool (*xlkv_token_callback)(int token, void *user);

typedef struct xlkv_generate_stats {
    int n_prompt;
    int n_generated;
    double prefill_seconds;
    double decode_seconds; /* sampling included */
    bool stopped_at_end_token;
    bool context_full;
} xlkv_generate_stats;

/* Continues the context with prompt[0..n_prompt) (n_prompt >= 1) and generates up to n_predict tokens. */
xlkv_status xlkv_generate(xlkv_context *ctx, xlkv_sampler *sampler, const int *prompt, int n_prompt, int n_predict,
                          xlkv_token_callback on_token, void *user, xlkv_generate_stats *stats);

#endif
