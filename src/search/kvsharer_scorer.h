/* search/kvsharer_scorer: runs one text through a model under a candidate map and measures what the KVSharer greedy
 * step compares (internal to src/search). Owns the reference outputs of the original model (final hidden states after
 * the final norm, next-token NLL) and the cosine / perplexity comparison of a candidate map against them. */
#ifndef XLKV_SEARCH_KVSHARER_SCORER_H
#define XLKV_SEARCH_KVSHARER_SCORER_H

#include "search/kvsharer.h"

typedef struct kvsharer_scorer {
    const xlkv_model *model; /* loaded under the standard map */
    const xlkv_token_span *texts;
    int n_texts;
    int n_threads;
    float **reference_hidden; /* [n_texts][n * dim] */
    double reference_nll;     /* mean next-token NLL over all scored tokens of all texts */
    long n_scored;
    float *hidden;            /* scratch [max n * dim] */
} kvsharer_scorer;

/* Runs the original model on every text and keeps its outputs. */
xlkv_status kvsharer_scorer_init(kvsharer_scorer *s, const xlkv_model *model, const xlkv_token_span *texts,
                                 int n_texts, int n_threads);
void kvsharer_scorer_free(kvsharer_scorer *s);

/* Scores the acyclic map kv_src[] (chains collapsed or not: the layer map derives KV layers from it). */
xlkv_status kvsharer_scorer_score(kvsharer_scorer *s, const int *kv_src, double *cosine, double *ppl_ratio,
                                  double *ppl);

/* Runs one text through `model` viewed under `map` (a fresh context); writes the final hidden states after the final
 * norm [n, dim] into hidden and adds the text's next-token NLL sum to *nll_sum. `on_cache`, when not NULL, is called
 * with the context after the forward (calibration reads the cache there). */
typedef void (*kvsharer_cache_visitor)(void *user, const xlkv_context *ctx);
xlkv_status kvsharer_run_text(const xlkv_model *model, const xlkv_layer_map *map, const xlkv_token_span *text,
                              int n_threads, float *hidden, double *nll_sum, kvsharer_cache_visitor on_cache,
                              void *user);

#endif
