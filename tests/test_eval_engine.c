/* tests/test_eval_engine: the engine adapter of eval_model.h (what `--device cuda` uses) scores exactly what the
 * context adapter scores: perplexity windows and a forward of a whole sequence, on a committed transformers fixture
 * through the CPU engine; and it frees each sequence it made. */
#include <math.h>
#include <stdlib.h>
#include <string.h>

#include "eval/eval_model.h"
#include "eval/perplexity.h"
#include "testutil.h"

static void engine_adapter_matches_context_adapter(void **state) {
    (void)state;
    char *dir = tu_source_path("tests/fixtures/hf/gqa_untied");
    xlkv_model *model = NULL;
    TU_ASSERT_OK(xlkv_model_load(dir, NULL, &model));
    enum { CTX = 16, N = 100 };
    xlkv_context_params cp = xlkv_context_default_params();
    cp.n_ctx = CTX;
    xlkv_context *context = NULL;
    TU_ASSERT_OK(xlkv_context_create(model, &cp, &context));
    xlkv_engine_params ep = xlkv_engine_default_params();
    ep.n_ctx = CTX;
    xlkv_engine *engine = NULL;
    TU_ASSERT_OK(xlkv_engine_create(model, &ep, &engine));
    xlkv_eval_model on_context = xlkv_eval_model_from_context(context);
    xlkv_eval_model on_engine = xlkv_eval_model_from_engine(engine, model->hp.vocab_size, CTX);

    int tokens[N];
    for (int i = 0; i < N; i++) tokens[i] = (i * 37 + 11) % model->hp.vocab_size;
    xlkv_eval_ppl a = {0}, b = {0};
    TU_ASSERT_OK(xlkv_eval_perplexity(&on_context, tokens, N, CTX, CTX / 2, NULL, NULL, &a));
    TU_ASSERT_OK(xlkv_eval_perplexity(&on_engine, tokens, N, CTX, CTX / 2, NULL, NULL, &b));
    assert_int_equal(a.n_scored, b.n_scored);
    assert_int_equal(a.n_windows, b.n_windows);
    assert_true(a.n_scored == N - 1);
    if (fabs(a.nll_sum - b.nll_sum) > 1e-6 * fabs(a.nll_sum))
        fail_msg("nll: context %.9g, engine %.9g", a.nll_sum, b.nll_sum);

    float *la = malloc(sizeof(float) * CTX * (size_t)model->hp.vocab_size);
    float *lb = malloc(sizeof(float) * CTX * (size_t)model->hp.vocab_size);
    TU_ASSERT_OK(on_context.forward(on_context.user, tokens, CTX, la));
    TU_ASSERT_OK(on_engine.forward(on_engine.user, tokens, CTX, lb));
    assert_true(tu_max_abs_diff(la, lb, (size_t)CTX * (size_t)model->hp.vocab_size) <= 1e-6);
    /* a sequence longer than the engine holds is an error, not a crash */
    assert_int_not_equal(on_engine.forward(on_engine.user, tokens, CTX + 1, lb), XLKV_OK);

    xlkv_engine_stats stats;
    xlkv_engine_get_stats(engine, &stats);
    assert_int_equal(stats.allocated, 0); /* every sequence the adapter made is gone */
    free(la);
    free(lb);
    xlkv_engine_free(engine);
    xlkv_context_free(context);
    xlkv_model_free(model);
    free(dir);
}

int main(void) {
    const struct CMUnitTest tests[] = {cmocka_unit_test(engine_adapter_matches_context_adapter)};
    return cmocka_run_group_tests(tests, NULL, NULL);
}
