/* search/kvsharer_scorer: see kvsharer_scorer.h. */
#include "search/kvsharer_scorer.h"

#include <math.h>
#include <stdlib.h>
#include <string.h>

#include "core/status.h"
#include "infer/context.h"

/* log-sum-exp of a logits row minus the target's logit, in double. */
static double row_nll(const float *logits, int vocab, int target) {
    double max = logits[0];
    for (int v = 1; v < vocab; v++)
        if (logits[v] > max) max = logits[v];
    double sum = 0.0;
    for (int v = 0; v < vocab; v++) sum += exp((double)logits[v] - max);
    return max + log(sum) - (double)logits[target];
}

xlkv_status kvsharer_run_text(const xlkv_model *model, const xlkv_layer_map *map, const xlkv_token_span *text,
                              int n_threads, float *hidden, double *nll_sum, kvsharer_cache_visitor on_cache,
                              void *user) {
    for (int i = 0; i < map->n_layers; i++)
        if (xlkv_is_cyclic(map, i))
            return xlkv_fail(XLKV_E_INVALID, "KVSharer: layer %d reads layer %d above it; KVSharer maps read lower layers",
                             i, map->kv_src[i]);
    /* The same weights under another map: the map decides which layers compute K/V and own a cache slot. */
    xlkv_model view = *model;
    view.map = (xlkv_layer_map *)map;
    xlkv_context_params params = xlkv_context_default_params();
    params.n_ctx = text->n;
    params.n_threads = n_threads;
    params.prefill_mode = XLKV_PREFILL_AUTO; /* acyclic: the whole text is one chunk, so ctx->x holds every row */
    xlkv_context *ctx = NULL;
    XLKV_TRY(xlkv_context_create(&view, &params, &ctx));
    const float *logits = NULL;
    xlkv_status status = xlkv_context_forward(ctx, text->ids, text->n, true, &logits);
    if (status == XLKV_OK) {
        const xlkv_hparams *hp = &model->hp;
        if (hidden) ctx->ops->rmsnorm(hidden, ctx->x, model->weights.output_norm, text->n, hp->dim, hp->norm_eps);
        if (nll_sum)
            for (int r = 0; r + 1 < text->n; r++)
                *nll_sum += row_nll(logits + (size_t)r * (size_t)hp->vocab_size, hp->vocab_size, text->ids[r + 1]);
        if (on_cache) on_cache(user, ctx);
    }
    xlkv_context_free(ctx);
    return status;
}

void kvsharer_scorer_free(kvsharer_scorer *s) {
    if (s->reference_hidden)
        for (int t = 0; t < s->n_texts; t++) free(s->reference_hidden[t]);
    free(s->reference_hidden);
    free(s->hidden);
    memset(s, 0, sizeof *s);
}

xlkv_status kvsharer_scorer_init(kvsharer_scorer *s, const xlkv_model *model, const xlkv_token_span *texts,
                                 int n_texts, int n_threads) {
    memset(s, 0, sizeof *s);
    s->model = model;
    s->texts = texts;
    s->n_texts = n_texts;
    s->n_threads = n_threads;
    const size_t dim = (size_t)model->hp.dim;
    if (n_texts <= 0) return xlkv_fail(XLKV_E_INVALID, "KVSharer: no calibration texts");
    int max_n = 1;
    for (int t = 0; t < n_texts; t++) {
        if (texts[t].n < 1) return xlkv_fail(XLKV_E_INVALID, "KVSharer: calibration text %d is empty", t);
        if (texts[t].n > max_n) max_n = texts[t].n;
        s->n_scored += texts[t].n - 1;
    }
    s->reference_hidden = calloc((size_t)n_texts, sizeof *s->reference_hidden);
    s->hidden = malloc((size_t)max_n * dim * sizeof(float));
    if (!s->reference_hidden || !s->hidden) {
        kvsharer_scorer_free(s);
        return xlkv_fail(XLKV_E_NOMEM, "KVSharer: out of memory for reference hidden states");
    }
    double nll = 0.0;
    for (int t = 0; t < n_texts; t++) {
        s->reference_hidden[t] = malloc((size_t)texts[t].n * dim * sizeof(float));
        xlkv_status status = s->reference_hidden[t]
                                 ? kvsharer_run_text(model, model->map, &texts[t], n_threads, s->reference_hidden[t],
                                                     &nll, NULL, NULL)
                                 : xlkv_fail(XLKV_E_NOMEM, "KVSharer: out of memory for reference hidden states");
        if (status != XLKV_OK) {
            kvsharer_scorer_free(s);
            return status;
        }
    }
    s->reference_nll = s->n_scored > 0 ? nll / (double)s->n_scored : 0.0;
    return XLKV_OK;
}

static double cosine_similarity(const float *a, const float *b, size_t n) {
    double dot = 0.0, na = 0.0, nb = 0.0;
    for (size_t k = 0; k < n; k++) {
        dot += (double)a[k] * (double)b[k];
        na += (double)a[k] * (double)a[k];
        nb += (double)b[k] * (double)b[k];
    }
    return na > 0.0 && nb > 0.0 ? dot / (sqrt(na) * sqrt(nb)) : 0.0;
}

xlkv_status kvsharer_scorer_score(kvsharer_scorer *s, const int *kv_src, double *cosine, double *ppl_ratio,
                                  double *ppl) {
    xlkv_layer_map *map = NULL;
    XLKV_TRY(xlkv_layer_map_from_array(kv_src, s->model->map->sliding, s->model->hp.n_layers, &map));
    const size_t dim = (size_t)s->model->hp.dim;
    double cosine_sum = 0.0, nll = 0.0;
    xlkv_status status = XLKV_OK;
    for (int t = 0; t < s->n_texts && status == XLKV_OK; t++) {
        status = kvsharer_run_text(s->model, map, &s->texts[t], s->n_threads, s->hidden, &nll, NULL, NULL);
        if (status == XLKV_OK)
            cosine_sum += cosine_similarity(s->hidden, s->reference_hidden[t], (size_t)s->texts[t].n * dim);
    }
    xlkv_layer_map_free(map);
    if (status != XLKV_OK) return status;
    const double mean_nll = s->n_scored > 0 ? nll / (double)s->n_scored : 0.0;
    if (cosine) *cosine = cosine_sum / (double)s->n_texts;
    if (ppl_ratio) *ppl_ratio = exp(s->reference_nll - mean_nll);
    if (ppl) *ppl = exp(mean_nll);
    return XLKV_OK;
}
