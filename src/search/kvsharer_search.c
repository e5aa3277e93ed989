/* search/kvsharer_search: step 4 of the KVSharer search (SEMANTICS.md section 7; definitions in kvsharer.h): the
 * greedy walk over the ordered pairs, each tentative map scored against the original model, chains collapsed. */
#include <math.h>
#include <stdlib.h>
#include <string.h>

#include "core/status.h"
#include "search/kvsharer.h"
#include "search/kvsharer_scorer.h"

xlkv_kvsharer_params xlkv_kvsharer_default_params(void) {
    return (xlkv_kvsharer_params){.n_share = 1, .threshold = 0.5, .order = XLKV_KVSHARER_DISSIMILAR, .seed = 0,
                                  .score = XLKV_KVSHARER_SCORE_COSINE, .n_threads = 0};
}

const char *xlkv_kvsharer_order_name(xlkv_kvsharer_order order) {
    switch (order) {
    case XLKV_KVSHARER_DISSIMILAR: return "dissimilar";
    case XLKV_KVSHARER_SIMILAR: return "similar";
    case XLKV_KVSHARER_RANDOM: return "random";
    }
    return "?";
}

const char *xlkv_kvsharer_score_name(xlkv_kvsharer_score score) {
    return score == XLKV_KVSHARER_SCORE_PPL ? "ppl" : "cosine";
}

const char *xlkv_kvsharer_decision_name(xlkv_kvsharer_decision decision) {
    switch (decision) {
    case XLKV_KVSHARER_ACCEPTED: return "accepted";
    case XLKV_KVSHARER_BELOW_THRESHOLD: return "score not above the threshold";
    case XLKV_KVSHARER_ALREADY_SHARES: return "layer already shares";
    }
    return "?";
}

void xlkv_kvsharer_result_free(xlkv_kvsharer_result *result) {
    xlkv_kvsharer_calibration_free(&result->calibration);
    free(result->kv_src);
    free(result->trials);
    memset(result, 0, sizeof *result);
}

/* The map with i -> j added to the direct sources `direct`, every chain collapsed to its root (sources are lower
 * layers, so walking upward finds each source already collapsed). */
static void collapse(const int *direct, int n_layers, int *kv_src) {
    for (int i = 0; i < n_layers; i++) kv_src[i] = direct[i] == i ? i : kv_src[direct[i]];
}

xlkv_status xlkv_kvsharer_score_map(const xlkv_model *model, const xlkv_token_span *texts, int n_texts,
                                    const int *kv_src, int n_threads, double *cosine, double *ppl_ratio, double *ppl) {
    if (!xlkv_layer_map_is_standard(model->map))
        return xlkv_fail(XLKV_E_INVALID, "KVSharer: the model must be loaded under the standard map");
    kvsharer_scorer scorer;
    XLKV_TRY(kvsharer_scorer_init(&scorer, model, texts, n_texts, n_threads));
    xlkv_status status = kvsharer_scorer_score(&scorer, kv_src, cosine, ppl_ratio, ppl);
    kvsharer_scorer_free(&scorer);
    return status;
}

static xlkv_status run_greedy(const xlkv_model *model, const xlkv_token_span *texts, int n_texts,
                              const xlkv_kvsharer_params *p, xlkv_kvsharer_result *r, const int *pair_layer,
                              const int *pair_source, int *direct, int *candidate) {
    kvsharer_scorer scorer;
    XLKV_TRY(kvsharer_scorer_init(&scorer, model, texts, n_texts, p->n_threads));
    r->reference_ppl = exp(scorer.reference_nll);
    const int L = r->n_layers;
    for (int i = 0; i < L; i++) direct[i] = r->kv_src[i] = i;
    xlkv_status status = XLKV_OK;
    for (int k = 0; k < r->n_pairs && r->n_shared < p->n_share; k++) {
        const int i = pair_layer[k], j = pair_source[k];
        xlkv_kvsharer_trial *trial = &r->trials[r->n_trials++];
        *trial = (xlkv_kvsharer_trial){.layer = i, .source = j, .root = r->kv_src[j],
                                       .distance = r->calibration.distance[(size_t)i * (size_t)L + (size_t)j],
                                       .score = NAN};
        if (direct[i] != i) {
            trial->decision = XLKV_KVSHARER_ALREADY_SHARES;
        } else {
            direct[i] = j;
            collapse(direct, L, candidate);
            double cosine = 0.0, ratio = 0.0;
            status = kvsharer_scorer_score(&scorer, candidate, &cosine, &ratio, NULL);
            if (status != XLKV_OK) break;
            trial->score = p->score == XLKV_KVSHARER_SCORE_PPL ? ratio : cosine;
            if (trial->score > p->threshold) {
                trial->decision = XLKV_KVSHARER_ACCEPTED;
                memcpy(r->kv_src, candidate, (size_t)L * sizeof *candidate);
                r->n_shared++;
                r->final_score = trial->score;
            } else {
                trial->decision = XLKV_KVSHARER_BELOW_THRESHOLD;
                direct[i] = i;
            }
        }
        trial->shared_after = r->n_shared;
        if (p->progress) p->progress(p->progress_user, trial, k, r->n_pairs);
    }
    kvsharer_scorer_free(&scorer);
    return status;
}

xlkv_status xlkv_kvsharer_search(const xlkv_model *model, const xlkv_token_span *texts, int n_texts,
                                 const xlkv_kvsharer_params *params, xlkv_kvsharer_result *out) {
    memset(out, 0, sizeof *out);
    const xlkv_kvsharer_params p = params ? *params : xlkv_kvsharer_default_params();
    const int L = model->hp.n_layers;
    if (p.n_share < 1 || p.n_share > L - 1)
        return xlkv_fail(XLKV_E_INVALID, "KVSharer: %d shared layers asked; a %d-layer model can share 1 to %d",
                         p.n_share, L, L - 1);
    if (!isfinite(p.threshold)) return xlkv_fail(XLKV_E_INVALID, "KVSharer: the threshold is not a finite number");
    XLKV_TRY(xlkv_kvsharer_calibrate(model, texts, n_texts, p.n_threads, &out->calibration));
    out->n_layers = L;
    out->n_pairs = L * (L - 1) / 2;
    out->final_score = 1.0;
    out->kv_src = malloc((size_t)L * sizeof *out->kv_src);
    out->trials = calloc((size_t)out->n_pairs, sizeof *out->trials);
    int *pair_layer = malloc((size_t)out->n_pairs * sizeof(int)), *pair_source = malloc((size_t)out->n_pairs * sizeof(int));
    int *direct = malloc((size_t)L * sizeof(int)), *candidate = malloc((size_t)L * sizeof(int));
    xlkv_status status;
    if (!out->kv_src || !out->trials || !pair_layer || !pair_source || !direct || !candidate)
        status = xlkv_fail(XLKV_E_NOMEM, "KVSharer: out of memory");
    else
        status = xlkv_kvsharer_order_pairs(&out->calibration, p.order, p.seed, pair_layer, pair_source);
    if (status == XLKV_OK) status = run_greedy(model, texts, n_texts, &p, out, pair_layer, pair_source, direct, candidate);
    free(pair_layer);
    free(pair_source);
    free(direct);
    free(candidate);
    if (status != XLKV_OK) {
        xlkv_kvsharer_result_free(out);
        return status;
    }
    out->target_reached = out->n_shared == p.n_share;
    xlkv_layer_map *map = NULL;
    status = xlkv_layer_map_from_array(out->kv_src, NULL, L, &map);
    if (status != XLKV_OK) {
        xlkv_kvsharer_result_free(out);
        return status;
    }
    const int n_kv_heads = model->hp.n_kv_heads, head_dim = model->hp.head_dim;
    out->kv_bytes_per_token_before = (size_t)L * 2u * (size_t)n_kv_heads * (size_t)head_dim * sizeof(float);
    out->kv_bytes_per_token_after = xlkv_layer_map_kv_bytes_per_token(map, n_kv_heads, head_dim, (int)sizeof(float));
    xlkv_layer_map_free(map);
    return XLKV_OK;
}
