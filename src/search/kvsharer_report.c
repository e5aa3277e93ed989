/* search/kvsharer_report: see kvsharer_report.h. */
#include "search/kvsharer_report.h"

#include <math.h>
#include <stdio.h>
#include <stdlib.h>

#include "core/status.h"
#include "model/layer_map.h"

cJSON *xlkv_kvsharer_map_json(const int *kv_src, int n_layers) {
    cJSON *map = cJSON_CreateObject();
    for (int i = 0; map && i < n_layers; i++) {
        if (kv_src[i] == i) continue;
        char key[16];
        snprintf(key, sizeof key, "%d", i);
        if (!cJSON_AddNumberToObject(map, key, kv_src[i])) {
            cJSON_Delete(map);
            return NULL;
        }
    }
    return map;
}

static cJSON *number_or_null(double value) { return isfinite(value) ? cJSON_CreateNumber(value) : cJSON_CreateNull(); }

cJSON *xlkv_kvsharer_report_json(const xlkv_kvsharer_result *r, const xlkv_kvsharer_params *p) {
    cJSON *root = cJSON_CreateObject();
    if (!root) return NULL;
    const int L = r->n_layers;
    cJSON *params = cJSON_AddObjectToObject(root, "params");
    cJSON_AddNumberToObject(params, "share", p->n_share);
    cJSON_AddNumberToObject(params, "threshold", p->threshold);
    cJSON_AddStringToObject(params, "order", xlkv_kvsharer_order_name(p->order));
    cJSON_AddNumberToObject(params, "seed", (double)p->seed);
    cJSON_AddStringToObject(params, "score", xlkv_kvsharer_score_name(p->score));
    cJSON *cal = cJSON_AddObjectToObject(root, "calibration");
    cJSON_AddNumberToObject(cal, "texts", r->calibration.n_texts);
    cJSON_AddNumberToObject(cal, "tokens_per_text", r->calibration.n_tokens);
    cJSON_AddStringToObject(cal, "mean",
                            "K (post-RoPE, as cached) and V of each layer averaged over the texts, separately for "
                            "every position, KV head and channel");
    cJSON_AddStringToObject(cal, "distance",
                            "(mean over positions and KV heads of the L2 norm over head_dim of the K difference + the "
                            "same for V) / 2");
    cJSON_AddNumberToObject(cal, "reference_ppl", r->reference_ppl);
    cJSON *matrix = cJSON_AddArrayToObject(root, "distance");
    for (int i = 0; i < L; i++)
        cJSON_AddItemToArray(matrix, cJSON_CreateDoubleArray(r->calibration.distance + (size_t)i * (size_t)L, L));
    cJSON_AddNumberToObject(root, "pairs_total", r->n_pairs);
    cJSON *pairs = cJSON_AddArrayToObject(root, "pairs");
    for (int k = 0; k < r->n_trials; k++) {
        const xlkv_kvsharer_trial *t = &r->trials[k];
        cJSON *pair = cJSON_CreateObject();
        cJSON_AddNumberToObject(pair, "layer", t->layer);
        cJSON_AddNumberToObject(pair, "source", t->source);
        cJSON_AddNumberToObject(pair, "root", t->root);
        cJSON_AddNumberToObject(pair, "distance", t->distance);
        cJSON_AddItemToObject(pair, "score", number_or_null(t->score));
        cJSON_AddBoolToObject(pair, "accepted", t->decision == XLKV_KVSHARER_ACCEPTED);
        cJSON_AddStringToObject(pair, "why", xlkv_kvsharer_decision_name(t->decision));
        cJSON_AddNumberToObject(pair, "shared_after", t->shared_after);
        cJSON_AddItemToArray(pairs, pair);
    }
    cJSON_AddItemToObject(root, "map", xlkv_kvsharer_map_json(r->kv_src, L));
    cJSON_AddItemToObject(root, "kv_src", cJSON_CreateIntArray(r->kv_src, L));
    cJSON_AddNumberToObject(root, "n_layers", L);
    cJSON_AddNumberToObject(root, "shared_layers", r->n_shared);
    cJSON_AddBoolToObject(root, "target_reached", r->target_reached);
    cJSON_AddStringToObject(root, "stopped",
                            r->target_reached ? "target number of shared layers reached"
                                              : "pairs exhausted before the target (the threshold rejected the rest)");
    cJSON_AddNumberToObject(root, "final_score", r->final_score);
    cJSON *kv = cJSON_AddObjectToObject(root, "kv_bytes_per_token");
    cJSON_AddStringToObject(kv, "dtype", "f32 (CPU); bf16 on the GPU is half");
    cJSON_AddNumberToObject(kv, "before", (double)r->kv_bytes_per_token_before);
    cJSON_AddNumberToObject(kv, "after", (double)r->kv_bytes_per_token_after);
    cJSON_AddNumberToObject(kv, "saving",
                            r->kv_bytes_per_token_before
                                ? 1.0 - (double)r->kv_bytes_per_token_after / (double)r->kv_bytes_per_token_before
                                : 0.0);
    return root;
}
