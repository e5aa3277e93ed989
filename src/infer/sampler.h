/* infer/sampler: choosing the next token from logits.
 * Owns the sampling chain (repetition penalty -> greedy when temperature is 0, else temperature -> top-k -> top-p ->
 * draw) and its random state (xorshift64*, seeded: the same seed gives the same text). Defaults follow llama.cpp. */
#ifndef XLKV_INFER_SAMPLER_H
#define XLKV_INFER_SAMPLER_H

#include <stdint.h>

#include "xlkv.h"

typedef struct xlkv_sampler_params {
    float temperature;    /* 0 = greedy (argmax, lowest id on ties) */
    int top_k;            /* 0 = off */
    float top_p;          /* 1 = off */
    float repeat_penalty; /* 1 = off; logits of recent tokens: divided if > 0, multiplied if < 0 (CTRL) */
    int repeat_last_n;    /* how many recent tokens the penalty looks at */
    uint64_t seed;
} xlkv_sampler_params;

xlkv_sampler_params xlkv_sampler_default_params(void); /* temp 0.8, top-k 40, top-p 0.95, penalty 1.0 over 64 */
xlkv_status xlkv_sampler_params_validate(const xlkv_sampler_params *params);

xlkv_status xlkv_sampler_create(const xlkv_sampler_params *params, int vocab_size, xlkv_sampler **out);
void xlkv_sampler_free(xlkv_sampler *sampler);

/* Picks a token from logits[vocab_size] (modified in place by the penalty), given the tokens so far. */
int xlkv_sampler_sample(xlkv_sampler *sampler, float *logits, const int *history, int n_history);

#endif
