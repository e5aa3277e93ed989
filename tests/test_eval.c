/* tests/test_eval: the evaluation scorers against the reference values of scripts/make_eval_fixtures.py
 * (transformers in float64 + lm-evaluation-harness' request encoding, written out independently in Python):
 *  - the perplexity windows and loglikelihood requests on token ids with the committed fixture hf/gqa_untied;
 *  - stories260K (shared data; skipped when absent): tokenization and perplexity of a tinyshakespeare slice, and
 *    every task format's committed samples: request token ids, log-likelihoods, greedy flags, acc, acc_norm, LAMBADA
 *    perplexity.
 * Log-likelihoods, mean NLL and perplexity (relative) must agree to 1e-4. Also the window arithmetic with a fake
 * forward function (every token scored once; disjoint windows). */
#include <cjson/cJSON.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "core/file.h"
#include "eval/loglik.h"
#include "eval/perplexity.h"
#include "eval/task_score.h"
#include "eval/tasks.h"
#include "eval/text_corpus.h"
#include "model/model.h"
#include "testutil.h"

static const double tolerance = 1e-4;

static cJSON *read_json(const char *relative) {
    char *path = tu_source_path(relative);
    char *text = NULL;
    size_t size = 0;
    TU_ASSERT_OK(xlkv_read_file(path, &text, &size));
    cJSON *root = cJSON_ParseWithLength(text, size);
    assert_non_null(root);
    free(text);
    free(path);
    return root;
}

static int *read_ids(const cJSON *array, int *n) {
    *n = cJSON_GetArraySize(array);
    int *ids = malloc(sizeof(int) * (size_t)(*n > 0 ? *n : 1));
    int i = 0;
    const cJSON *v;
    cJSON_ArrayForEach(v, array) ids[i++] = v->valueint;
    return ids;
}

static double number(const cJSON *obj, const char *key) {
    const cJSON *item = cJSON_GetObjectItemCaseSensitive(obj, key);
    assert_true(cJSON_IsNumber(item));
    return item->valuedouble;
}

static xlkv_context *make_context(const xlkv_model *model) {
    xlkv_context_params p = xlkv_context_default_params();
    p.n_threads = 2;
    xlkv_context *ctx = NULL;
    TU_ASSERT_OK(xlkv_context_create(model, &p, &ctx));
    return ctx;
}

/* Checks each perplexity setting of `settings` on ids[0..n). Returns the largest relative ppl difference. */
static double check_perplexity(const xlkv_eval_model *model, const int *ids, int n, const cJSON *settings) {
    double worst = 0.0;
    const cJSON *s;
    cJSON_ArrayForEach(s, settings) {
        int ctx = (int)number(s, "ctx"), stride = (int)number(s, "stride");
        xlkv_eval_ppl acc = {0};
        TU_ASSERT_OK(xlkv_eval_perplexity(model, ids, n, ctx, stride, NULL, NULL, &acc));
        assert_int_equal(acc.n_scored, (long)number(s, "n_scored"));
        assert_int_equal(acc.n_windows, (long)number(s, "windows"));
        double ref_mean = number(s, "nll_sum") / number(s, "n_scored");
        double mean = acc.nll_sum / (double)acc.n_scored;
        double rel = fabs(xlkv_eval_ppl_value(&acc) - number(s, "ppl")) / number(s, "ppl");
        printf("  ctx %3d stride %3d: %ld tokens, ppl %.6f (reference %.6f), nll/token diff %.2e\n", ctx, stride,
               acc.n_scored, xlkv_eval_ppl_value(&acc), number(s, "ppl"), fabs(mean - ref_mean));
        if (fabs(mean - ref_mean) > tolerance || rel > tolerance)
            fail_msg("ctx %d stride %d: nll/token %.8f vs %.8f, ppl %.6f vs %.6f", ctx, stride, mean, ref_mean,
                     xlkv_eval_ppl_value(&acc), number(s, "ppl"));
        if (rel > worst) worst = rel;
    }
    return worst;
}

/* ---- the window arithmetic, with a fake model ----------------------------------------------------------------- */
typedef struct fake_model {
    int vocab;
    int calls;
    int longest;
} fake_model;

/* Uniform logits: every token costs log(vocab). */
static xlkv_status fake_forward(void *user, const int *tokens, int n, float *logits) {
    fake_model *fake = user;
    fake->calls++;
    if (n > fake->longest) fake->longest = n;
    memset(logits, 0, sizeof(float) * (size_t)n * (size_t)fake->vocab);
    (void)tokens;
    return XLKV_OK;
}

static void test_windows_score_every_token_once(void **state) {
    (void)state;
    fake_model fake = {.vocab = 10};
    xlkv_eval_model model = {.forward = fake_forward, .user = &fake, .n_vocab = 10, .max_len = 64};
    int ids[1000] = {0};
    struct { int n, ctx, stride; long scored, windows; } cases[] = {
        {1000, 64, 32, 999, 31}, /* windows start at 0, 32, ..., 960 (the one reaching the end) */
        {1000, 64, 64, 1000 - 16, 16}, /* disjoint: each window's first token unscored */
        {50, 64, 32, 49, 1},
        {65, 64, 1, 64, 2},
        {1, 64, 32, 0, 0},
    };
    for (size_t i = 0; i < sizeof cases / sizeof cases[0]; i++) {
        xlkv_eval_ppl acc = {0};
        fake.longest = 0;
        TU_ASSERT_OK(xlkv_eval_perplexity(&model, ids, cases[i].n, cases[i].ctx, cases[i].stride, NULL, NULL, &acc));
        assert_int_equal(acc.n_scored, cases[i].scored);
        assert_int_equal(acc.n_windows, cases[i].windows);
        assert_true(fake.longest <= cases[i].ctx);
        if (acc.n_scored) assert_true(fabs(acc.nll_sum / (double)acc.n_scored - log(10.0)) < 1e-12);
    }
    xlkv_eval_ppl acc = {0};
    TU_ASSERT_FAILS(xlkv_eval_perplexity(&model, ids, 100, 65, 10, NULL, NULL, &acc), XLKV_E_INVALID, "context length");
    TU_ASSERT_FAILS(xlkv_eval_perplexity(&model, ids, 100, 32, 33, NULL, NULL, &acc), XLKV_E_INVALID, "stride");
    ids[5] = 10;
    TU_ASSERT_FAILS(xlkv_eval_perplexity(&model, ids, 100, 32, 16, NULL, NULL, &acc), XLKV_E_INVALID, "vocabulary");
}

static void test_split_documents(void **state) {
    (void)state;
    char text[] = "book one\nends\n\x1e\nbook two\n\x1e\n\x1e\nbook three";
    char **docs = NULL;
    int n = 0;
    TU_ASSERT_OK(xlkv_eval_split_documents(text, &docs, &n));
    assert_int_equal(n, 3);
    assert_string_equal(docs[0], "book one\nends\n");
    assert_string_equal(docs[1], "book two\n");
    assert_string_equal(docs[2], "book three");
    free(docs);
}

/* ---- the committed tiny fixture: token ids only --------------------------------------------------------------- */
static void test_hf_fixture(void **state) {
    (void)state;
    cJSON *root = read_json("tests/fixtures/eval/hf_gqa_untied_perplexity.json");
    char *dir = tu_source_path("tests/fixtures/hf/gqa_untied");
    xlkv_model_params params = xlkv_model_default_params();
    xlkv_model *model = NULL;
    TU_ASSERT_OK(xlkv_model_load(dir, &params, &model));
    xlkv_context *ctx = make_context(model);
    xlkv_eval_model eval_model = xlkv_eval_model_from_context(ctx);
    int n = 0;
    int *ids = read_ids(cJSON_GetObjectItemCaseSensitive(root, "ids"), &n);
    printf("hf/gqa_untied perplexity:\n");
    check_perplexity(&eval_model, ids, n, cJSON_GetObjectItemCaseSensitive(root, "perplexity"));
    eval_model.batch = 3; /* windows handed over three at a time: the same sums */
    check_perplexity(&eval_model, ids, n, cJSON_GetObjectItemCaseSensitive(root, "perplexity"));
    eval_model.batch = 1;

    double worst = 0.0;
    const cJSON *req;
    cJSON_ArrayForEach(req, cJSON_GetObjectItemCaseSensitive(root, "requests")) {
        int n_context = 0, n_cont = 0;
        int *context = read_ids(cJSON_GetObjectItemCaseSensitive(req, "context_ids"), &n_context);
        int *cont = read_ids(cJSON_GetObjectItemCaseSensitive(req, "cont_ids"), &n_cont);
        xlkv_eval_loglik ll = {0};
        TU_ASSERT_OK(xlkv_eval_continuation(&eval_model, context, n_context, cont, n_cont, &ll));
        double d = fabs(ll.loglik - number(req, "loglik"));
        if (d > worst) worst = d;
        if (d > tolerance) fail_msg("request of %d + %d ids: loglik %.8f vs %.8f", n_context, n_cont, ll.loglik,
                                    number(req, "loglik"));
        assert_int_equal(ll.is_greedy, cJSON_IsTrue(cJSON_GetObjectItemCaseSensitive(req, "is_greedy")));
        free(context);
        free(cont);
    }
    printf("hf/gqa_untied requests: largest loglik difference %.2e\n", worst);
    free(ids);
    xlkv_context_free(ctx);
    xlkv_model_free(model);
    free(dir);
    cJSON_Delete(root);
}

/* ---- stories260K (shared data) -------------------------------------------------------------------------------- */
static xlkv_model *load_stories(void) {
    char *path = tu_shared_data("models/stories260K/stories260K.bin");
    if (!path) return NULL;
    xlkv_model_params params = xlkv_model_default_params();
    xlkv_model *model = NULL;
    TU_ASSERT_OK(xlkv_model_load(path, &params, &model));
    assert_non_null(model->tokenizer);
    free(path);
    return model;
}

static void test_stories_perplexity(void **state) {
    (void)state;
    xlkv_model *model = load_stories();
    if (!model) skip();
    cJSON *root = read_json("tests/fixtures/eval/stories260K_perplexity.json");
    char *path = tu_shared_data("text/tinyshakespeare.txt");
    if (!path) {
        xlkv_model_free(model);
        cJSON_Delete(root);
        skip();
    }
    char *text = NULL;
    size_t size = 0;
    TU_ASSERT_OK(xlkv_read_file(path, &text, &size));
    size_t chars = (size_t)number(root, "chars");
    assert_true(size >= chars);
    text[chars] = '\0';
    int *ids = NULL, n = 0, n_ref = 0;
    TU_ASSERT_OK(xlkv_tokenizer_encode(model->tokenizer, text, true, &ids, &n));
    int *ref = read_ids(cJSON_GetObjectItemCaseSensitive(root, "ids"), &n_ref);
    assert_int_equal(n, n_ref);
    assert_memory_equal(ids, ref, sizeof(int) * (size_t)n);
    xlkv_context *ctx = make_context(model);
    xlkv_eval_model eval_model = xlkv_eval_model_from_context(ctx);
    printf("stories260K, tinyshakespeare[0:%zu] (%d tokens):\n", chars, n);
    check_perplexity(&eval_model, ids, n, cJSON_GetObjectItemCaseSensitive(root, "perplexity"));
    free(ref);
    free(ids);
    free(text);
    free(path);
    xlkv_context_free(ctx);
    xlkv_model_free(model);
    cJSON_Delete(root);
}

static void check_ids_equal(const char *task, int e, int c, const char *what, const int *ids, int n,
                            const cJSON *expected) {
    int n_ref = 0;
    int *ref = read_ids(expected, &n_ref);
    if (n != n_ref || memcmp(ids, ref, sizeof(int) * (size_t)n) != 0)
        fail_msg("%s example %d choice %d: %s ids differ (%d vs %d ids)", task, e, c, what, n, n_ref);
    free(ref);
}

static void check_task(const xlkv_eval_model *eval_model, const xlkv_tokenizer *tok, const char *name,
                       const cJSON *ref, double *worst) {
    const xlkv_task_info *task = xlkv_task_find(name);
    assert_non_null(task);
    char relative[128];
    snprintf(relative, sizeof relative, "tests/fixtures/eval/samples/%s",
             task->format == XLKV_TASK_HELLASWAG ? "hellaswag.txt.bz2" : name);
    if (task->format != XLKV_TASK_HELLASWAG) strncat(relative, ".jsonl", sizeof relative - strlen(relative) - 1);
    char *path = tu_source_path(relative);
    xlkv_task_data data = {0};
    TU_ASSERT_OK(xlkv_task_load(task, path, XLKV_ON_ERROR_STOP, 0, &data));
    const cJSON *examples = cJSON_GetObjectItemCaseSensitive(ref, "examples");
    assert_int_equal(data.n_examples, cJSON_GetArraySize(examples));
    /* the request encoding */
    for (int e = 0; e < data.n_examples; e++) {
        const cJSON *ex = cJSON_GetArrayItem(examples, e);
        const cJSON *reqs = cJSON_GetObjectItemCaseSensitive(ex, "requests");
        assert_int_equal(data.examples[e].n_choices, cJSON_GetArraySize(reqs));
        assert_int_equal(data.examples[e].gold, (int)number(ex, "gold"));
        for (int c = 0; c < data.examples[e].n_choices; c++) {
            int *context = NULL, *cont = NULL, n_context = 0, n_cont = 0;
            TU_ASSERT_OK(xlkv_task_encode_request(tok, data.examples[e].contexts[c], data.examples[e].continuations[c],
                                                  &context, &n_context, &cont, &n_cont));
            const cJSON *r = cJSON_GetArrayItem(reqs, c);
            check_ids_equal(name, e, c, "context", context, n_context, cJSON_GetObjectItemCaseSensitive(r, "context_ids"));
            check_ids_equal(name, e, c, "continuation", cont, n_cont, cJSON_GetObjectItemCaseSensitive(r, "cont_ids"));
            free(context);
            free(cont);
        }
    }
    /* the scores */
    xlkv_task_result result = {0};
    TU_ASSERT_OK(xlkv_task_evaluate(eval_model, tok, task, &data, NULL, NULL, &result));
    double task_worst = 0.0;
    for (int e = 0; e < data.n_examples; e++) {
        const cJSON *reqs = cJSON_GetObjectItemCaseSensitive(cJSON_GetArrayItem(examples, e), "requests");
        for (int c = 0; c < data.examples[e].n_choices; c++) {
            const cJSON *r = cJSON_GetArrayItem(reqs, c);
            int k = result.first_request[e] + c;
            double d = fabs(result.loglik[k] - number(r, "loglik"));
            if (d > task_worst) task_worst = d;
            if (d > tolerance)
                fail_msg("%s example %d choice %d: loglik %.8f vs %.8f", name, e, c, result.loglik[k], number(r, "loglik"));
            assert_int_equal(result.is_greedy[k], cJSON_IsTrue(cJSON_GetObjectItemCaseSensitive(r, "is_greedy")));
        }
    }
    assert_true(fabs(result.acc - number(ref, "acc")) < 1e-12);
    const cJSON *norm = cJSON_GetObjectItemCaseSensitive(ref, "acc_norm");
    if (cJSON_IsNull(norm)) assert_true(isnan(result.acc_norm));
    else assert_true(fabs(result.acc_norm - norm->valuedouble) < 1e-12);
    const cJSON *ppl = cJSON_GetObjectItemCaseSensitive(ref, "perplexity");
    if (cJSON_IsNull(ppl)) {
        assert_true(isnan(result.perplexity));
    } else if (fabs(result.perplexity - ppl->valuedouble) / ppl->valuedouble > tolerance) {
        fail_msg("%s perplexity %.6f vs %.6f", name, result.perplexity, ppl->valuedouble);
    }
    printf("  %-15s %d items: acc %.3f acc_norm %.3f, largest loglik difference %.2e\n", name, data.n_examples,
           result.acc, result.acc_norm, task_worst);
    if (task_worst > *worst) *worst = task_worst;
    xlkv_task_result_free(&result);
    xlkv_task_data_free(&data);
    free(path);
}

static void test_stories_tasks(void **state) {
    (void)state;
    xlkv_model *model = load_stories();
    if (!model) skip();
    cJSON *root = read_json("tests/fixtures/eval/stories260K_tasks.json");
    xlkv_context *ctx = make_context(model);
    xlkv_eval_model eval_model = xlkv_eval_model_from_context(ctx);
    assert_int_equal(eval_model.max_len, (int)number(root, "max_len"));
    const cJSON *tasks = cJSON_GetObjectItemCaseSensitive(root, "tasks");
    int n_known = 0;
    xlkv_task_list(&n_known);
    assert_int_equal(cJSON_GetArraySize(tasks), n_known);
    double worst = 0.0;
    printf("stories260K task samples:\n");
    const cJSON *task;
    cJSON_ArrayForEach(task, tasks) check_task(&eval_model, model->tokenizer, task->string, task, &worst);
    printf("stories260K task samples: largest loglik difference %.2e\n", worst);
    /* batching changes the order of the calls, never a result: three formats again with 5 requests per call */
    eval_model.batch = 5;
    cJSON_ArrayForEach(task, tasks) {
        if (!strcmp(task->string, "piqa") || !strcmp(task->string, "winogrande") ||
            !strcmp(task->string, "lambada_openai"))
            check_task(&eval_model, model->tokenizer, task->string, task, &worst);
    }
    xlkv_context_free(ctx);
    xlkv_model_free(model);
    cJSON_Delete(root);
}

/* A tokenizer whose ids the model cannot take (the loader refuses such a pair; an engine behind another forward
 * function may not): a clear error, not a read past the logits. */
static void test_vocabulary_mismatch(void **state) {
    (void)state;
    char *tok_path = tu_shared_data("models/stories260K/tok512.bin");
    if (!tok_path) skip();
    xlkv_tokenizer *tok = NULL;
    TU_ASSERT_OK(xlkv_tokenizer_load(tok_path, &tok));
    fake_model fake = {.vocab = 260}; /* byte tokens fit, merged pieces (ids >= 259) do not */
    xlkv_eval_model model = {.forward = fake_forward, .user = &fake, .n_vocab = 260, .max_len = 512};
    char *sample = tu_source_path("tests/fixtures/eval/samples/copa.jsonl");
    xlkv_task_data data = {0};
    TU_ASSERT_OK(xlkv_task_load(xlkv_task_find("copa"), sample, XLKV_ON_ERROR_STOP, 2, &data));
    xlkv_task_result result = {0};
    TU_ASSERT_FAILS(xlkv_task_evaluate(&model, tok, xlkv_task_find("copa"), &data, NULL, NULL, &result),
                    XLKV_E_INVALID, "vocabulary has only 260 tokens");
    xlkv_token_streams streams = {0};
    TU_ASSERT_FAILS(xlkv_eval_tokenize_text_file(sample, tok, 260, 0, &streams), XLKV_E_INVALID,
                    "vocabulary has only 260 tokens");
    assert_int_equal(fake.calls, 0);
    xlkv_task_data_free(&data);
    free(sample);
    xlkv_tokenizer_free(tok);
    free(tok_path);
}

int main(void) {
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_windows_score_every_token_once),
        cmocka_unit_test(test_split_documents),
        cmocka_unit_test(test_hf_fixture),
        cmocka_unit_test(test_stories_perplexity),
        cmocka_unit_test(test_stories_tasks),
        cmocka_unit_test(test_vocabulary_mismatch),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
