/* tests/test_semantics_reference: the executor against an independent float64 implementation of SEMANTICS.md
 * (scripts/make_semantics_fixtures.py, which runs on the Hugging Face weights with their own RoPE convention).
 * Cases cover cyclic maps in sequential mode and through the iteration plan with too few and with enough iterations,
 * sliding windows and force_nodiag, on the GQA fixtures of tests/fixtures/hf. */
#include <cjson/cJSON.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "core/file.h"
#include "infer/context.h"
#include "model/model.h"
#include "testutil.h"

static const char *const fixtures[] = {"gqa_untied", "gqa_headdim_bf16"};

static void run_case(const char *model_dir, const cJSON *ids_json, const cJSON *c) {
    const char *layer_types = cJSON_GetObjectItem(c, "layer_types")->valuestring;
    const char *mode = cJSON_GetObjectItem(c, "mode")->valuestring;
    xlkv_model_params params = xlkv_model_default_params();
    params.layer_types = layer_types;
    params.sliding_window = cJSON_GetObjectItem(c, "sliding_window")->valueint;
    params.force_nodiag = cJSON_IsTrue(cJSON_GetObjectItem(c, "force_nodiag"));
    xlkv_model *model = NULL;
    TU_ASSERT_OK(xlkv_model_load(model_dir, &params, &model));
    xlkv_context_params cp = xlkv_context_default_params();
    cp.prefill_mode = strcmp(mode, "sequential") ? XLKV_PREFILL_PLAN : XLKV_PREFILL_SEQUENTIAL;
    cp.iterations = cJSON_GetObjectItem(c, "iterations")->valueint;
    xlkv_context *ctx = NULL;
    TU_ASSERT_OK(xlkv_context_create(model, &cp, &ctx));
    const int n = cJSON_GetArraySize(ids_json), vocab = model->hp.vocab_size;
    int *ids = malloc(sizeof(int) * (size_t)n);
    for (int i = 0; i < n; i++) ids[i] = cJSON_GetArrayItem(ids_json, i)->valueint;
    const float *logits = NULL;
    TU_ASSERT_OK(xlkv_context_forward(ctx, ids, n, true, &logits));
    const cJSON *expected = cJSON_GetObjectItem(c, "logits");
    assert_int_equal(cJSON_GetArraySize(expected), n);
    double worst = 0.0;
    for (int r = 0; r < n; r++) {
        const cJSON *row = cJSON_GetArrayItem(expected, r);
        assert_int_equal(cJSON_GetArraySize(row), vocab);
        for (int v = 0; v < vocab; v++) {
            double d = cJSON_GetArrayItem(row, v)->valuedouble - (double)logits[(size_t)r * vocab + v];
            if (d < 0) d = -d;
            if (!(d <= worst)) worst = d;
        }
    }
    if (!(worst <= 1e-4))
        fail_msg("%s, map %s, %s (%d iterations), force_nodiag %d: max difference %g", model_dir, layer_types, mode,
                 cp.iterations, params.force_nodiag, worst);
    free(ids);
    xlkv_context_free(ctx);
    xlkv_model_free(model);
}

static void executor_matches_reference(void **state) {
    (void)state;
    int cases = 0;
    for (size_t f = 0; f < sizeof fixtures / sizeof fixtures[0]; f++) {
        char relative[256];
        snprintf(relative, sizeof relative, "tests/fixtures/semantics/%s.json", fixtures[f]);
        char *path = tu_source_path(relative), *text = NULL;
        TU_ASSERT_OK(xlkv_read_file(path, &text, NULL));
        cJSON *root = cJSON_Parse(text);
        assert_non_null(root);
        char *model_dir = tu_source_path(cJSON_GetObjectItem(root, "model")->valuestring);
        const cJSON *c;
        cJSON_ArrayForEach(c, cJSON_GetObjectItem(root, "cases")) {
            run_case(model_dir, cJSON_GetObjectItem(root, "ids"), c);
            cases++;
        }
        free(model_dir);
        cJSON_Delete(root);
        free(text);
        free(path);
    }
    assert_true(cases >= 10);
}

int main(void) {
    const struct CMUnitTest tests[] = {cmocka_unit_test(executor_matches_reference)};
    return cmocka_run_group_tests(tests, NULL, NULL);
}
