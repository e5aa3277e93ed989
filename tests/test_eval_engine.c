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
    xlkv_eval_model on_engine = xlkv_eval_model_from_engine(engine, model->hp.vocab_size, CTX, 4);

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

    /* xlkv_engine_score: several requests per call (the engine holds one sequence at a time here) = the context */
    enum { N_REQ = 5 };
    xlkv_score_request on_ctx[N_REQ], on_eng[N_REQ];
    double lp[2][N_REQ][CTX];
    bool am[2][N_REQ][CTX];
    for (int i = 0; i < N_REQ; i++) {
        const int n = CTX - 2 * i, first = i;
        on_ctx[i] = (xlkv_score_request){.tokens = tokens + 3 * i, .n = n, .first_row = first, .log_probs = lp[0][i],
                                         .is_argmax = am[0][i]};
        on_eng[i] = on_ctx[i];
        on_eng[i].log_probs = lp[1][i];
        on_eng[i].is_argmax = am[1][i];
    }
    TU_ASSERT_OK(xlkv_eval_model_score(&on_context, on_ctx, N_REQ));
    TU_ASSERT_OK(xlkv_eval_model_score(&on_engine, on_eng, N_REQ));
    for (int i = 0; i < N_REQ; i++)
        for (int k = 0; k < on_ctx[i].n - on_ctx[i].first_row; k++) {
            if (fabs(lp[0][i][k] - lp[1][i][k]) > 1e-6) fail_msg("request %d row %d: %.9g vs %.9g", i, k, lp[0][i][k], lp[1][i][k]);
            assert_int_equal(am[0][i][k], am[1][i][k]);
        }
    /* bad requests are refused before anything runs */
    xlkv_score_request bad = on_eng[0];
    bad.first_row = bad.n;
    TU_ASSERT_FAILS(xlkv_engine_score(engine, &bad, 1), XLKV_E_INVALID, "scores rows");
    bad = on_eng[0];
    int wrong[CTX + 1];
    for (int i = 0; i <= CTX; i++) wrong[i] = model->hp.vocab_size;
    bad.tokens = wrong;
    TU_ASSERT_FAILS(xlkv_engine_score(engine, &bad, 1), XLKV_E_INVALID, "outside the vocabulary");

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
