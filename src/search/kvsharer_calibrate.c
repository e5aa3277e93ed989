/* search/kvsharer_calibrate: steps 1-3 of the KVSharer search (SEMANTICS.md section 7; definitions in kvsharer.h):
 * the mean post-RoPE K and V of every layer over the calibration texts, the layer distance matrix, and the order in
 * which candidate pairs are tried. */
#include <math.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include "core/status.h"
#include "infer/context.h"
#include "search/kvsharer.h"
#include "search/kvsharer_scorer.h"

void xlkv_kvsharer_calibration_free(xlkv_kvsharer_calibration *cal) {
    free(cal->mean_k);
    free(cal->mean_v);
    free(cal->distance);
    memset(cal, 0, sizeof *cal);
}

/* Adds one text's cached K and V (already RoPE-rotated: the cache stores keys as attention reads them) to the sums. */
static void accumulate_cache(void *user, const xlkv_context *ctx) {
    xlkv_kvsharer_calibration *cal = user;
    const xlkv_layer_map *map = ctx->model->map;
    const size_t per_layer = (size_t)cal->n_tokens * (size_t)cal->kv_dim;
    for (int layer = 0; layer < cal->n_layers; layer++) {
        const float *k = xlkv_kv_cache_k(&ctx->cache, map->kv_slot[layer], 0);
        const float *v = xlkv_kv_cache_v(&ctx->cache, map->kv_slot[layer], 0);
        double *sum_k = cal->mean_k + (size_t)layer * per_layer, *sum_v = cal->mean_v + (size_t)layer * per_layer;
        for (size_t e = 0; e < per_layer; e++) {
            sum_k[e] += k[e];
            sum_v[e] += v[e];
        }
    }
}

/* mean over positions and KV heads of the L2 norm over head_dim of a - b. */
static double mean_head_distance(const double *a, const double *b, int n_tokens, int n_heads, int head_dim) {
    double total = 0.0;
    for (int p = 0; p < n_tokens; p++)
        for (int h = 0; h < n_heads; h++) {
            const size_t base = ((size_t)p * (size_t)n_heads + (size_t)h) * (size_t)head_dim;
            double sq = 0.0;
            for (int c = 0; c < head_dim; c++) {
                double d = a[base + (size_t)c] - b[base + (size_t)c];
                sq += d * d;
            }
            total += sqrt(sq);
        }
    return total / ((double)n_tokens * (double)n_heads);
}

xlkv_status xlkv_kvsharer_calibrate(const xlkv_model *model, const xlkv_token_span *texts, int n_texts, int n_threads,
                                    xlkv_kvsharer_calibration *out) {
    memset(out, 0, sizeof *out);
    const xlkv_hparams *hp = &model->hp;
    if (!xlkv_layer_map_is_standard(model->map))
        return xlkv_fail(XLKV_E_INVALID, "KVSharer: the model must be loaded under the standard map (every layer "
                                         "with its own K/V); drop --layer-types / --kv-map");
    if (n_texts <= 0) return xlkv_fail(XLKV_E_INVALID, "KVSharer: no calibration texts");
    if (hp->n_layers < 2) return xlkv_fail(XLKV_E_INVALID, "KVSharer: the model has %d layer(s); sharing needs 2",
                                           hp->n_layers);
    const int n_tokens = texts[0].n;
    for (int t = 0; t < n_texts; t++) {
        if (texts[t].n < 2 || texts[t].n != n_tokens)
            return xlkv_fail(XLKV_E_INVALID,
                             "KVSharer: calibration text %d has %d tokens; every text needs the same length (%d) "
                             "and at least 2 tokens",
                             t, texts[t].n, n_tokens);
        for (int r = 0; r < texts[t].n; r++)
            if (texts[t].ids[r] < 0 || texts[t].ids[r] >= hp->vocab_size)
                return xlkv_fail(XLKV_E_INVALID, "KVSharer: calibration text %d: token %d at index %d is outside the "
                                                 "vocabulary [0, %d)",
                                 t, texts[t].ids[r], r, hp->vocab_size);
    }
    if (n_tokens > hp->max_seq_len)
        return xlkv_fail(XLKV_E_INVALID, "KVSharer: calibration texts of %d tokens exceed the model's context (%d)",
                         n_tokens, hp->max_seq_len);
    out->n_layers = hp->n_layers;
    out->n_texts = n_texts;
    out->n_tokens = n_tokens;
    out->kv_dim = hp->n_kv_heads * hp->head_dim;
    const size_t per_layer = (size_t)n_tokens * (size_t)out->kv_dim, L = (size_t)hp->n_layers;
    out->mean_k = calloc(L * per_layer, sizeof(double));
    out->mean_v = calloc(L * per_layer, sizeof(double));
    out->distance = calloc(L * L, sizeof(double));
    if (!out->mean_k || !out->mean_v || !out->distance) {
        xlkv_kvsharer_calibration_free(out);
        return xlkv_fail(XLKV_E_NOMEM, "KVSharer: out of memory for calibration statistics");
    }
    for (int t = 0; t < n_texts; t++) {
        xlkv_status status = kvsharer_run_text(model, model->map, &texts[t], n_threads, NULL, NULL, accumulate_cache, out);
        if (status != XLKV_OK) {
            xlkv_kvsharer_calibration_free(out);
            return status;
        }
    }
    for (size_t e = 0; e < L * per_layer; e++) {
        out->mean_k[e] /= (double)n_texts;
        out->mean_v[e] /= (double)n_texts;
    }
    for (size_t i = 0; i < L; i++)
        for (size_t j = 0; j < i; j++) {
            double dk = mean_head_distance(out->mean_k + i * per_layer, out->mean_k + j * per_layer, n_tokens,
                                           hp->n_kv_heads, hp->head_dim);
            double dv = mean_head_distance(out->mean_v + i * per_layer, out->mean_v + j * per_layer, n_tokens,
                                           hp->n_kv_heads, hp->head_dim);
            out->distance[i * L + j] = out->distance[j * L + i] = (dk + dv) / 2.0;
        }
    return XLKV_OK;
}

/* splitmix64, as scripts/make_kvsharer_fixtures.py writes it. */
static uint64_t splitmix64(uint64_t *state) {
    uint64_t z = (*state += 0x9E3779B97F4A7C15ull);
    z = (z ^ (z >> 30)) * 0xBF58476D1CE4E5B9ull;
    z = (z ^ (z >> 27)) * 0x94D049BB133111EBull;
    return z ^ (z >> 31);
}

typedef struct pair_key {
    double distance;
    int index; /* enumeration order: i ascending, then j ascending */
    int layer, source;
} pair_key;

static int by_distance_descending(const void *a, const void *b) {
    const pair_key *x = a, *y = b;
    if (x->distance != y->distance) return x->distance > y->distance ? -1 : 1;
    return (x->index > y->index) - (x->index < y->index);
}

static int by_distance_ascending(const void *a, const void *b) {
    const pair_key *x = a, *y = b;
    if (x->distance != y->distance) return x->distance < y->distance ? -1 : 1;
    return (x->index > y->index) - (x->index < y->index);
}

xlkv_status xlkv_kvsharer_order_pairs(const xlkv_kvsharer_calibration *cal, xlkv_kvsharer_order order,
                                      unsigned long long seed, int *layer, int *source) {
    const int L = cal->n_layers, n_pairs = L * (L - 1) / 2;
    pair_key *pairs = malloc((size_t)(n_pairs > 0 ? n_pairs : 1) * sizeof *pairs);
    if (!pairs) return xlkv_fail(XLKV_E_NOMEM, "KVSharer: out of memory for %d pairs", n_pairs);
    int k = 0;
    for (int i = 1; i < L; i++)
        for (int j = 0; j < i; j++, k++)
            pairs[k] = (pair_key){cal->distance[(size_t)i * (size_t)L + (size_t)j], k, i, j};
    switch (order) {
    case XLKV_KVSHARER_DISSIMILAR: qsort(pairs, (size_t)n_pairs, sizeof *pairs, by_distance_descending); break;
    case XLKV_KVSHARER_SIMILAR: qsort(pairs, (size_t)n_pairs, sizeof *pairs, by_distance_ascending); break;
    case XLKV_KVSHARER_RANDOM: {
        uint64_t state = seed;
        for (int a = n_pairs - 1; a > 0; a--) {
            int b = (int)(splitmix64(&state) % (uint64_t)(a + 1));
            pair_key swap = pairs[a];
            pairs[a] = pairs[b];
            pairs[b] = swap;
        }
        break;
    }
    default: free(pairs); return xlkv_fail(XLKV_E_INVALID, "KVSharer: unknown pair order %d", (int)order);
    }
    for (k = 0; k < n_pairs; k++) {
        layer[k] = pairs[k].layer;
        source[k] = pairs[k].source;
    }
    free(pairs);
    return XLKV_OK;
}
