/* tests/test_kvsharer: the KVSharer search (src/search) against the independent float64 reference of
 * scripts/make_kvsharer_fixtures.py on a committed tiny model (tests/fixtures/kvsharer/tiny.json): distances, every
 * tried pair with its score and decision, the final map, for the dissimilar / similar / random orders and the ppl
 * score; scores of applied maps; applying maps (no sharing = the unmapped model bit for bit, a KVSharer map = its
 * layer_types equivalent, shared layers own no cache and load no K/V weights); the errors; the heatmap SVG escapes its
 * title. */
#include <cjson/cJSON.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "core/file.h"
#include "infer/context.h"
#include "model/model.h"
#include "search/kvsharer.h"
#include "search/kvsharer_report.h"
#include "search/kvsharer_svg.h"
#include "testutil.h"

#define TOL 1e-4

typedef struct fixture {
    cJSON *root;
    xlkv_model *model;
    int n_texts;
    int **ids;
    xlkv_token_span *texts;
} fixture;

static fixture fx;

static int setup(void **state) {
    char *path = tu_source_path("tests/fixtures/kvsharer/tiny.json");
    char *text = NULL;
    TU_ASSERT_OK(xlkv_read_file(path, &text, NULL));
    fx.root = cJSON_Parse(text);
    free(text);
    free(path);
    assert_non_null(fx.root);
    char *model_path = tu_source_path("tests/fixtures/kvsharer/model");
    TU_ASSERT_OK(xlkv_model_load(model_path, NULL, &fx.model));
    free(model_path);
    const cJSON *texts = cJSON_GetObjectItem(fx.root, "texts");
    fx.n_texts = cJSON_GetArraySize(texts);
    fx.ids = calloc((size_t)fx.n_texts, sizeof *fx.ids);
    fx.texts = calloc((size_t)fx.n_texts, sizeof *fx.texts);
    for (int t = 0; t < fx.n_texts; t++) {
        const cJSON *row = cJSON_GetArrayItem(texts, t);
        int n = cJSON_GetArraySize(row);
        fx.ids[t] = malloc((size_t)n * sizeof(int));
        for (int r = 0; r < n; r++) fx.ids[t][r] = cJSON_GetArrayItem(row, r)->valueint;
        fx.texts[t] = (xlkv_token_span){fx.ids[t], n};
    }
    (void)state;
    return 0;
}

static int teardown(void **state) {
    for (int t = 0; t < fx.n_texts; t++) free(fx.ids[t]);
    free(fx.ids);
    free(fx.texts);
    xlkv_model_free(fx.model);
    cJSON_Delete(fx.root);
    (void)state;
    return 0;
}

static void distances_match_reference(void **state) {
    xlkv_kvsharer_calibration cal;
    TU_ASSERT_OK(xlkv_kvsharer_calibrate(fx.model, fx.texts, fx.n_texts, 1, &cal));
    const cJSON *expected = cJSON_GetObjectItem(fx.root, "distance");
    const int L = fx.model->hp.n_layers;
    assert_int_equal(cJSON_GetArraySize(expected), L);
    double worst = 0.0;
    for (int i = 0; i < L; i++)
        for (int j = 0; j < L; j++) {
            double want = cJSON_GetArrayItem(cJSON_GetArrayItem(expected, i), j)->valuedouble;
            double err = fabs(cal.distance[i * L + j] - want);
            if (err > worst) worst = err;
        }
    print_message("check distances: max |xlkv - reference| = %.3g over %d x %d (tolerance %g)\n", worst, L, L, TOL);
    assert_true(worst < TOL);
    assert_int_equal(cal.n_texts, fx.n_texts);
    xlkv_kvsharer_calibration_free(&cal);
    (void)state;
}

static xlkv_kvsharer_order order_of(const char *name) {
    return !strcmp(name, "dissimilar") ? XLKV_KVSHARER_DISSIMILAR
           : !strcmp(name, "similar")  ? XLKV_KVSHARER_SIMILAR
                                       : XLKV_KVSHARER_RANDOM;
}

static void searches_match_reference(void **state) {
    const cJSON *c;
    int n_cases = 0;
    cJSON_ArrayForEach(c, cJSON_GetObjectItem(fx.root, "cases")) {
        xlkv_kvsharer_params p = xlkv_kvsharer_default_params();
        const char *order = cJSON_GetObjectItem(c, "order")->valuestring;
        const char *score = cJSON_GetObjectItem(c, "score")->valuestring;
        p.order = order_of(order);
        p.seed = (unsigned long long)cJSON_GetObjectItem(c, "seed")->valuedouble;
        p.score = !strcmp(score, "ppl") ? XLKV_KVSHARER_SCORE_PPL : XLKV_KVSHARER_SCORE_COSINE;
        p.n_share = cJSON_GetObjectItem(c, "share")->valueint;
        p.threshold = cJSON_GetObjectItem(c, "threshold")->valuedouble;
        p.n_threads = 1;
        xlkv_kvsharer_result r;
        TU_ASSERT_OK(xlkv_kvsharer_search(fx.model, fx.texts, fx.n_texts, &p, &r));
        const cJSON *pairs = cJSON_GetObjectItem(c, "pairs");
        assert_int_equal(r.n_trials, cJSON_GetArraySize(pairs));
        double worst = 0.0;
        for (int k = 0; k < r.n_trials; k++) {
            const cJSON *want = cJSON_GetArrayItem(pairs, k);
            const xlkv_kvsharer_trial *t = &r.trials[k];
            assert_int_equal(t->layer, cJSON_GetObjectItem(want, "layer")->valueint);
            assert_int_equal(t->source, cJSON_GetObjectItem(want, "source")->valueint);
            assert_int_equal(t->root, cJSON_GetObjectItem(want, "root")->valueint);
            assert_int_equal(t->decision == XLKV_KVSHARER_ACCEPTED,
                             cJSON_IsTrue(cJSON_GetObjectItem(want, "accepted")));
            const cJSON *want_score = cJSON_GetObjectItem(want, "score");
            if (cJSON_IsNull(want_score)) {
                assert_true(isnan(t->score));
                assert_int_equal(t->decision, XLKV_KVSHARER_ALREADY_SHARES);
            } else {
                double err = fabs(t->score - want_score->valuedouble);
                if (err > worst) worst = err;
            }
            if (fabs(t->distance - cJSON_GetObjectItem(want, "distance")->valuedouble) > TOL)
                fail_msg("pair %d: distance %g vs %g", k, t->distance,
                         cJSON_GetObjectItem(want, "distance")->valuedouble);
        }
        const cJSON *kv_src = cJSON_GetObjectItem(c, "kv_src");
        char got[64] = "", want[64] = "";
        for (int i = 0; i < r.n_layers; i++) {
            snprintf(got + strlen(got), sizeof got - strlen(got), "%d ", r.kv_src[i]);
            snprintf(want + strlen(want), sizeof want - strlen(want), "%d ", cJSON_GetArrayItem(kv_src, i)->valueint);
        }
        print_message("check search %s/%s share %d: %d pairs, max score error %.3g (tolerance %g); map [%s] vs "
                      "reference [%s]\n",
                      order, score, p.n_share, r.n_trials, worst, TOL, got, want);
        assert_true(worst < TOL);
        assert_string_equal(got, want);
        assert_int_equal(r.n_shared, cJSON_GetObjectItem(c, "shared")->valueint);
        assert_int_equal(r.target_reached, r.n_shared == p.n_share);
        /* the KV saving follows the map: 2 x 2 KV heads x 8 x 4 bytes per KV layer */
        assert_int_equal(r.kv_bytes_per_token_before, 6 * 128);
        assert_int_equal(r.kv_bytes_per_token_after, (size_t)(6 - r.n_shared) * 128);
        /* the report names every tried pair */
        cJSON *report = xlkv_kvsharer_report_json(&r, &p);
        assert_int_equal(cJSON_GetArraySize(cJSON_GetObjectItem(report, "pairs")), r.n_trials);
        cJSON_Delete(report);
        xlkv_kvsharer_result_free(&r);
        n_cases++;
    }
    assert_int_equal(n_cases, 4);
    (void)state;
}

static void applied_map_scores_match_reference(void **state) {
    const cJSON *a;
    cJSON_ArrayForEach(a, cJSON_GetObjectItem(fx.root, "applied")) {
        int kv_src[6];
        for (int i = 0; i < 6; i++) kv_src[i] = cJSON_GetArrayItem(cJSON_GetObjectItem(a, "kv_src"), i)->valueint;
        double cosine, ratio, ppl;
        TU_ASSERT_OK(xlkv_kvsharer_score_map(fx.model, fx.texts, fx.n_texts, kv_src, 1, &cosine, &ratio, &ppl));
        double want_ppl = cJSON_GetObjectItem(a, "ppl")->valuedouble;
        double e1 = fabs(cosine - cJSON_GetObjectItem(a, "cosine")->valuedouble);
        double e2 = fabs(ratio - cJSON_GetObjectItem(a, "ppl_ratio")->valuedouble);
        double e3 = fabs(ppl - want_ppl) / want_ppl;
        print_message("check applied map %d_%d_%d_%d_%d_%d: cosine err %.3g, ppl ratio err %.3g, ppl rel err %.3g\n",
                      kv_src[0], kv_src[1], kv_src[2], kv_src[3], kv_src[4], kv_src[5], e1, e2, e3);
        assert_true(e1 < TOL && e2 < TOL && e3 < TOL);
    }
    (void)state;
}

/* Logits of every position of text 0 for the fixture model loaded under `params`. */
static float *logits_under(const xlkv_model_params *params, size_t *kv_bytes, int *n_kv_layers, bool *skips_kv) {
    char *model_path = tu_source_path("tests/fixtures/kvsharer/model");
    xlkv_model *model = NULL;
    TU_ASSERT_OK(xlkv_model_load(model_path, params, &model));
    free(model_path);
    xlkv_context_params cp = xlkv_context_default_params();
    cp.n_threads = 1;
    xlkv_context *ctx = NULL;
    TU_ASSERT_OK(xlkv_context_create(model, &cp, &ctx));
    const float *logits = NULL;
    const int n = fx.texts[0].n, vocab = model->hp.vocab_size;
    TU_ASSERT_OK(xlkv_context_forward(ctx, fx.texts[0].ids, n, true, &logits));
    float *copy = malloc((size_t)n * (size_t)vocab * sizeof(float));
    memcpy(copy, logits, (size_t)n * (size_t)vocab * sizeof(float));
    *kv_bytes = xlkv_context_kv_bytes(ctx);
    *n_kv_layers = model->map->n_kv_layers;
    *skips_kv = true; /* layers that are no KV layer hold no K/V weights (never loaded, never computed) */
    for (int i = 0; i < model->hp.n_layers; i++)
        if (!xlkv_is_kv_layer(model->map, i) && (model->weights.layers[i].wk || model->weights.layers[i].wv))
            *skips_kv = false;
    xlkv_context_free(ctx);
    xlkv_model_free(model);
    return copy;
}

static char *write_map(const char *json) { return tu_write_temp(".json", json, strlen(json)); }

static void applying_maps(void **state) {
    const size_t floats = (size_t)fx.texts[0].n * (size_t)fx.model->hp.vocab_size;
    size_t kv_plain, kv_empty, kv_shared, kv_types;
    int n_plain, n_empty, n_shared, n_types;
    bool skips;
    float *plain = logits_under(NULL, &kv_plain, &n_plain, &skips);
    xlkv_model_params mp = xlkv_model_default_params();
    char *empty_map = write_map("{}");
    mp.kv_map_path = empty_map;
    float *empty = logits_under(&mp, &kv_empty, &n_empty, &skips);
    assert_memory_equal(plain, empty, floats * sizeof(float)); /* no sharing: the unmapped model bit for bit */
    assert_int_equal(kv_plain, kv_empty);
    /* {"4": 3, "3": 1, "2": 0, "5": 4} collapses to 0_1_0_1_1_1 */
    char *shared_map = write_map("{\"4\": 3, \"3\": 1, \"2\": 0, \"5\": 4}");
    mp.kv_map_path = shared_map;
    float *shared = logits_under(&mp, &kv_shared, &n_shared, &skips);
    assert_true(skips);
    mp.kv_map_path = NULL;
    mp.layer_types = "0_1_0_1_1_1";
    float *types = logits_under(&mp, &kv_types, &n_types, &skips);
    print_message("check applied map = layer_types 0_1_0_1_1_1: max |diff| %.3g; KV layers %d vs %d of 6; cache %zu "
                  "vs %zu bytes (standard %zu)\n",
                  tu_max_abs_diff(shared, types, floats), n_shared, n_types, kv_shared, kv_types, kv_plain);
    assert_memory_equal(shared, types, floats * sizeof(float));
    assert_int_equal(n_shared, 2);
    assert_int_equal(kv_shared, kv_plain / 3); /* 2 of 6 layers own cache */
    assert_true(tu_max_abs_diff(plain, shared, floats) > 1e-3); /* sharing changes the output */
    free(plain);
    free(empty);
    free(shared);
    free(types);
    remove(empty_map);
    remove(shared_map);
    free(empty_map);
    free(shared_map);
    (void)state;
}

static void bad_maps_and_inputs_are_rejected(void **state) {
    xlkv_layer_map *map = NULL;
    /* a cycle cannot survive: every source must be below its sharer */
    TU_ASSERT_FAILS(xlkv_layer_map_from_kvsharer_json("{\"1\": 2, \"2\": 1}", 6, &map), XLKV_E_INVALID,
                    "entry \"1\": 2 does not point to a lower layer");
    TU_ASSERT_FAILS(xlkv_layer_map_from_kvsharer_json("{\"6\": 1}", 6, &map), XLKV_E_INVALID,
                    "key \"6\" is not a layer index of the model (decimal, 0..5)");
    TU_ASSERT_FAILS(xlkv_layer_map_from_kvsharer_json("{\"3\": 4}", 6, &map), XLKV_E_INVALID,
                    "entry \"3\": 4 does not point to a lower layer");
    char *model_path = tu_source_path("tests/fixtures/kvsharer/model");
    xlkv_model_params mp = xlkv_model_default_params();
    char *bad = write_map("{\"5\": 9}");
    mp.kv_map_path = bad;
    xlkv_model *model = NULL;
    TU_ASSERT_FAILS(xlkv_model_load(model_path, &mp, &model), XLKV_E_INVALID, "entry \"5\": 9 does not point");
    assert_non_null(strstr(xlkv_last_error(), bad)); /* names the file */
    remove(bad);
    free(bad);

    xlkv_kvsharer_params p = xlkv_kvsharer_default_params();
    xlkv_kvsharer_result r;
    p.n_share = 6;
    TU_ASSERT_FAILS(xlkv_kvsharer_search(fx.model, fx.texts, fx.n_texts, &p, &r), XLKV_E_INVALID,
                    "6 shared layers asked; a 6-layer model can share 1 to 5");
    p.n_share = 0;
    TU_ASSERT_FAILS(xlkv_kvsharer_search(fx.model, fx.texts, fx.n_texts, &p, &r), XLKV_E_INVALID, "can share 1 to 5");
    p.n_share = 1;
    xlkv_token_span uneven[2] = {fx.texts[0], {fx.texts[1].ids, fx.texts[1].n - 1}};
    TU_ASSERT_FAILS(xlkv_kvsharer_search(fx.model, uneven, 2, &p, &r), XLKV_E_INVALID, "the same length");
    int outside[3] = {1, 5, 64};
    xlkv_token_span bad_ids = {outside, 3};
    TU_ASSERT_FAILS(xlkv_kvsharer_search(fx.model, &bad_ids, 1, &p, &r), XLKV_E_INVALID,
                    "token 64 at index 2 is outside the vocabulary [0, 64)");
    TU_ASSERT_FAILS(xlkv_kvsharer_search(fx.model, fx.texts, 0, &p, &r), XLKV_E_INVALID, "no calibration texts");
    mp.kv_map_path = NULL;
    mp.layer_types = "cla:2";
    TU_ASSERT_OK(xlkv_model_load(model_path, &mp, &model));
    TU_ASSERT_FAILS(xlkv_kvsharer_search(model, fx.texts, fx.n_texts, &p, &r), XLKV_E_INVALID,
                    "must be loaded under the standard map");
    int upward[6] = {0, 2, 2, 3, 4, 5};
    double cosine;
    TU_ASSERT_FAILS(xlkv_kvsharer_score_map(fx.model, fx.texts, 1, upward, 1, &cosine, NULL, NULL), XLKV_E_INVALID,
                    "layer 1 reads layer 2 above it");
    xlkv_model_free(model);
    free(model_path);
    (void)state;
}

/* The heatmap's title goes into the SVG with XML's reserved characters escaped (core/xml_text), so a model path
 * with < & " ' cannot break the document. */
static void heatmap_title_is_escaped(void **state) {
    (void)state;
    const double distance[4] = {0.0, 0.5, 0.5, 0.0};
    const int kv_src[2] = {0, 0};
    char *text = NULL;
    size_t size = 0;
    FILE *out = open_memstream(&text, &size);
    assert_non_null(out);
    assert_int_equal(xlkv_kvsharer_svg(out, "m<1> & \"q\" 'x'", distance, 2, kv_src), XLKV_OK);
    fclose(out);
    assert_non_null(strstr(text, "m&lt;1&gt; &amp; &quot;q&quot; &apos;x&apos;"));
    assert_null(strstr(text, "m<1>"));
    assert_non_null(strstr(text, "</svg>"));
    free(text);
}

int main(void) {
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(distances_match_reference),
        cmocka_unit_test(heatmap_title_is_escaped),
        cmocka_unit_test(searches_match_reference),
        cmocka_unit_test(applied_map_scores_match_reference),
        cmocka_unit_test(applying_maps),
        cmocka_unit_test(bad_maps_and_inputs_are_rejected),
    };
    return cmocka_run_group_tests(tests, setup, teardown);
}
