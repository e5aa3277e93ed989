/* tests/test_hf_equivalence: xlkv's forward pass against Hugging Face transformers. The fixtures under
 * tests/fixtures/hf/ were made by scripts/make_hf_fixtures.py (tiny random LlamaForCausalLM models: MHA and GQA, tied
 * and untied, two rope_theta values, head_dim != hidden/heads, fp32 and bf16 storage) with transformers' logits for
 * a fixed id sequence, plus the logits of sharing maps applied to the same checkpoint. xlkv must match to 1e-4, as one
 * prompt, as prefill + decode, and one token at a time. */
#include <cjson/cJSON.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "core/file.h"
#include "infer/context.h"
#include "model/model.h"
#include "testutil.h"

static const char *const fixtures[] = {"mha_tied", "gqa_untied", "gqa_headdim_bf16"};
static const double tolerance = 1e-4;

/* Reads a [rows][cols] JSON array of numbers into a heap float array. */
static float *read_matrix(const cJSON *rows_json, int *rows, int *cols) {
    *rows = cJSON_GetArraySize(rows_json);
    *cols = cJSON_GetArraySize(cJSON_GetArrayItem(rows_json, 0));
    float *m = malloc(sizeof(float) * (size_t)*rows * (size_t)*cols);
    int r = 0;
    const cJSON *row;
    cJSON_ArrayForEach(row, rows_json) {
        assert_int_equal(cJSON_GetArraySize(row), *cols);
        int c = 0;
        const cJSON *v;
        cJSON_ArrayForEach(v, row) m[(size_t)r * (size_t)*cols + (size_t)c++] = (float)v->valuedouble;
        r++;
    }
    return m;
}

/* Runs ids through a fresh context in chunks of `first` then 1, returns all logits. */
static float *forward_all(const xlkv_model *model, const int *ids, int n, int first, xlkv_prefill_mode mode) {
    xlkv_context_params p = xlkv_context_default_params();
    p.prefill_mode = mode;
    p.n_threads = 2;
    xlkv_context *ctx = NULL;
    TU_ASSERT_OK(xlkv_context_create(model, &p, &ctx));
    const int vocab = model->hp.vocab_size;
    float *all = malloc(sizeof(float) * (size_t)n * (size_t)vocab);
    for (int start = 0; start < n;) {
        int count = start == 0 ? first : 1;
        const float *logits = NULL;
        TU_ASSERT_OK(xlkv_context_forward(ctx, ids + start, count, true, &logits));
        memcpy(all + (size_t)start * vocab, logits, sizeof(float) * (size_t)count * vocab);
        start += count;
    }
    xlkv_context_free(ctx);
    return all;
}

static void check_model(const char *dir, const char *layer_types, const cJSON *ids_json, const cJSON *logits_json) {
    xlkv_model_params params = xlkv_model_default_params();
    params.layer_types = layer_types;
    xlkv_model *model = NULL;
    TU_ASSERT_OK(xlkv_model_load(dir, &params, &model));
    int n = cJSON_GetArraySize(ids_json), rows, cols;
    int *ids = malloc(sizeof(int) * (size_t)n);
    for (int i = 0; i < n; i++) ids[i] = cJSON_GetArrayItem(ids_json, i)->valueint;
    float *expected = read_matrix(logits_json, &rows, &cols);
    assert_int_equal(rows, n);
    assert_int_equal(cols, model->hp.vocab_size);
    const int firsts[] = {n, 5, 1};
    for (int f = 0; f < 3; f++) {
        float *got = forward_all(model, ids, n, firsts[f], XLKV_PREFILL_AUTO);
        double d = tu_max_abs_diff(expected, got, (size_t)n * (size_t)cols);
        if (!(d <= tolerance))
            fail_msg("%s under %s, first chunk %d: max |xlkv - transformers| = %g > %g", dir,
                     layer_types ? layer_types : "its own map", firsts[f], d, tolerance);
        free(got);
    }
    free(expected);
    free(ids);
    xlkv_model_free(model);
}

static void logits_match_transformers(void **state) {
    (void)state;
    for (size_t f = 0; f < sizeof fixtures / sizeof fixtures[0]; f++) {
        char relative[256];
        snprintf(relative, sizeof relative, "tests/fixtures/hf/%s", fixtures[f]);
        char *dir = tu_source_path(relative);
        char *logits_path = xlkv_path_join(dir, "logits.json");
        char *text = NULL;
        TU_ASSERT_OK(xlkv_read_file(logits_path, &text, NULL));
        cJSON *root = cJSON_Parse(text);
        assert_non_null(root);
        const cJSON *ids = cJSON_GetObjectItem(root, "ids");
        check_model(dir, NULL, ids, cJSON_GetObjectItem(root, "logits"));
        int shared_checked = 0;
        const cJSON *shared;
        cJSON_ArrayForEach(shared, cJSON_GetObjectItem(root, "shared")) {
            check_model(dir, cJSON_GetObjectItem(shared, "layer_types")->valuestring, ids,
                        cJSON_GetObjectItem(shared, "logits"));
            shared_checked++;
        }
        assert_true(shared_checked >= 1);
        cJSON_Delete(root);
        free(text);
        free(logits_path);
        free(dir);
    }
}

int main(void) {
    const struct CMUnitTest tests[] = {cmocka_unit_test(logits_match_transformers)};
    return cmocka_run_group_tests(tests, NULL, NULL);
}
