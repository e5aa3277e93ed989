/* tests/test_semantics: the executor against the contract of SEMANTICS.md on random tiny models, for every preset
 * and a set of hand-written maps: the parallel plan with >= n iterations equals sequential mode on n tokens;
 * prefill-then-decode and chunked prefill equal a full forward; a cyclic layer at position 0 attends to nothing;
 * force_nodiag; sliding windows; KV memory equals the formula and non-KV layers own no K/V weights. */
#include <math.h>
#include <stdlib.h>
#include <string.h>

#include "infer/context.h"
#include "model/model.h"
#include "testutil.h"

enum { N_TOKENS = 7 };
static const int tokens[N_TOKENS] = {1, 17, 5, 42, 8, 33, 2};


/* Runs tokens in the given chunks (chunk sizes summing to n) and returns all logits [n, vocab] (heap). */
static float *run(const xlkv_model *model, xlkv_prefill_mode mode, int iterations, const int *chunks, int n_chunks) {
    xlkv_context_params p = xlkv_context_default_params();
    p.prefill_mode = mode;
    p.iterations = iterations;
    p.n_threads = 2;
    xlkv_context *ctx = NULL;
    TU_ASSERT_OK(xlkv_context_create(model, &p, &ctx));
    const int vocab = model->hp.vocab_size;
    float *all = malloc(sizeof(float) * N_TOKENS * (size_t)vocab);
    int done = 0;
    for (int c = 0; c < n_chunks; c++) {
        const float *logits = NULL;
        TU_ASSERT_OK(xlkv_context_forward(ctx, tokens + done, chunks[c], true, &logits));
        memcpy(all + (size_t)done * vocab, logits, sizeof(float) * (size_t)chunks[c] * vocab);
        done += chunks[c];
    }
    assert_int_equal(done, N_TOKENS);
    assert_int_equal(ctx->n_past, N_TOKENS);
    xlkv_context_free(ctx);
    return all;
}

static void assert_close(const float *a, const float *b, size_t n, double tol, const char *what, const char *map) {
    double d = tu_max_abs_diff(a, b, n);
    if (!(d <= tol)) fail_msg("%s under map %s: max difference %g > %g", what, map, d, tol);
}

static void plan_with_enough_iterations_equals_sequential(void **state) {
    (void)state;
    xlkv_hparams hp = tu_tiny_hparams();
    const int whole[] = {N_TOKENS};
    int cyclic_maps = 0;
    for (int m = 0; m < TU_N_TINY_MAPS; m++) {
        xlkv_model *model = tu_random_model(tu_tiny_maps[m], &hp, 7);
        float *sequential = run(model, XLKV_PREFILL_SEQUENTIAL, 9, whole, 1);
        float *plan = run(model, XLKV_PREFILL_PLAN, N_TOKENS, whole, 1);
        assert_close(sequential, plan, (size_t)N_TOKENS * hp.vocab_size, 1e-4, "plan vs sequential", tu_tiny_maps[m]);
        if (xlkv_layer_map_has_cyclic(model->map)) {
            /* the property is not vacuous: one iteration is not enough for a cyclic map */
            float *short_plan = run(model, XLKV_PREFILL_PLAN, 1, whole, 1);
            double d = tu_max_abs_diff(sequential, short_plan, (size_t)N_TOKENS * hp.vocab_size);
            if (!(d > 1e-3)) fail_msg("map %s: a single iteration already matches sequential mode (%g)", tu_tiny_maps[m], d);
            free(short_plan);
            cyclic_maps++;
        }
        free(sequential);
        free(plan);
        xlkv_model_free(model);
    }
    assert_true(cyclic_maps >= 8);
}

static void prefill_then_decode_equals_full_forward(void **state) {
    (void)state;
    xlkv_hparams hp = tu_tiny_hparams();
    const int whole[] = {N_TOKENS}, prefill_decode[] = {3, 1, 1, 1, 1}, chunked[] = {4, 3};
    for (int m = 0; m < TU_N_TINY_MAPS; m++) {
        xlkv_model *model = tu_random_model(tu_tiny_maps[m], &hp, 7);
        float *full = run(model, XLKV_PREFILL_PLAN, N_TOKENS, whole, 1);
        float *split = run(model, XLKV_PREFILL_PLAN, N_TOKENS, prefill_decode, 5);
        float *chunks = run(model, XLKV_PREFILL_PLAN, N_TOKENS, chunked, 2);
        float *automatic = run(model, XLKV_PREFILL_AUTO, 0, prefill_decode, 5);
        const size_t n = (size_t)N_TOKENS * hp.vocab_size;
        assert_close(full, split, n, 1e-4, "prefill + decode vs full forward", tu_tiny_maps[m]);
        assert_close(full, chunks, n, 1e-4, "chunked prefill vs full forward", tu_tiny_maps[m]);
        assert_close(full, automatic, n, 1e-4, "default mode (3-token prompt runs sequentially)", tu_tiny_maps[m]);
        free(full);
        free(split);
        free(chunks);
        free(automatic);
        xlkv_model_free(model);
    }
}

static void cyclic_layer_attends_to_nothing_at_position_zero(void **state) {
    (void)state;
    xlkv_hparams hp = tu_tiny_hparams();
    const int whole[] = {N_TOKENS};
    xlkv_model *model = tu_random_model("1_1_2_3_4_5", &hp, 7); /* layer 0 reads layer 1: upward */
    float *before = run(model, XLKV_PREFILL_SEQUENTIAL, 0, whole, 1);
    /* change layer 0's attention output projection: position 0 must not notice, position 1 must */
    xlkv_layer_weights *l0 = &model->weights.layers[0];
    for (int i = 0; i < hp.dim * hp.n_heads * hp.head_dim; i++) l0->wo[i] += 0.5f;
    float *after = run(model, XLKV_PREFILL_SEQUENTIAL, 0, whole, 1);
    assert_close(before, after, (size_t)hp.vocab_size, 0.0, "position 0 after changing layer 0's wo", "1_1_2_3_4_5");
    assert_true(tu_max_abs_diff(before + hp.vocab_size, after + hp.vocab_size, (size_t)hp.vocab_size) > 1e-4);
    free(before);
    free(after);
    xlkv_model_free(model);
}

static void force_nodiag_masks_every_layer(void **state) {
    (void)state;
    xlkv_hparams hp = tu_tiny_hparams();
    hp.force_nodiag = true;
    const int whole[] = {N_TOKENS};
    xlkv_model *model = tu_random_model("standard", &hp, 7);
    float *before = run(model, XLKV_PREFILL_PLAN, 0, whole, 1);
    for (int l = 0; l < hp.n_layers; l++)
        for (int i = 0; i < hp.dim * hp.n_heads * hp.head_dim; i++) model->weights.layers[l].wo[i] *= -3.0f;
    float *after = run(model, XLKV_PREFILL_PLAN, 0, whole, 1);
    assert_close(before, after, (size_t)hp.vocab_size, 0.0, "position 0 with force_nodiag", "standard");
    assert_true(tu_max_abs_diff(before + hp.vocab_size, after + hp.vocab_size, (size_t)hp.vocab_size) > 1e-4);
    free(before);
    free(after);
    xlkv_model_free(model);
}

static void sliding_window_limits_what_is_seen(void **state) {
    (void)state;
    xlkv_hparams hp = tu_tiny_hparams();
    const int whole[] = {N_TOKENS};
    /* a window as long as the prompt changes nothing; a short one changes the late positions only */
    xlkv_model *plain = tu_random_model("0_1_2_3_4_5", &hp, 7);
    hp.sliding_window = N_TOKENS;
    xlkv_model *wide = tu_random_model("0s_1s_2s_3s_4s_5s", &hp, 7);
    hp.sliding_window = 2;
    xlkv_model *narrow = tu_random_model("0s_1s_2s_3s_4s_5s", &hp, 7);
    float *a = run(plain, XLKV_PREFILL_PLAN, 0, whole, 1), *b = run(wide, XLKV_PREFILL_PLAN, 0, whole, 1);
    float *c = run(narrow, XLKV_PREFILL_PLAN, 0, whole, 1);
    assert_close(a, b, (size_t)N_TOKENS * hp.vocab_size, 1e-5, "window >= prompt", "0s_..._5s");
    assert_close(a, c, (size_t)2 * hp.vocab_size, 1e-5, "positions inside a window of 2", "0s_..._5s");
    assert_true(tu_max_abs_diff(a + 2 * hp.vocab_size, c + 2 * hp.vocab_size, (size_t)hp.vocab_size) > 1e-4);
    free(a);
    free(b);
    free(c);
    xlkv_model_free(plain);
    xlkv_model_free(wide);
    xlkv_model_free(narrow);
}

static void kv_memory_follows_the_formula(void **state) {
    (void)state;
    xlkv_hparams hp = tu_tiny_hparams();
    for (int m = 0; m < TU_N_TINY_MAPS; m++) {
        xlkv_model *model = tu_random_model(tu_tiny_maps[m], &hp, 7);
        xlkv_context *ctx = NULL;
        TU_ASSERT_OK(xlkv_context_create(model, NULL, &ctx));
        const xlkv_layer_map *map = model->map;
        size_t per_token = xlkv_layer_map_kv_bytes_per_token(map, hp.n_kv_heads, hp.head_dim, 4);
        assert_int_equal(per_token, (size_t)map->n_kv_layers * 2 * hp.n_kv_heads * hp.head_dim * 4);
        assert_int_equal(xlkv_context_kv_bytes(ctx), per_token * (size_t)hp.max_seq_len);
        for (int j = 0; j < hp.n_layers; j++) {
            bool read = false;
            for (int i = 0; i < hp.n_layers; i++) read |= map->kv_src[i] == j;
            assert_int_equal(xlkv_is_kv_layer(map, j), read);
            assert_int_equal(model->weights.layers[j].wk != NULL, read);
            assert_int_equal(model->weights.layers[j].wv != NULL, read);
        }
        xlkv_context_free(ctx);
        xlkv_model_free(model);
    }
}

static void forward_rejects_bad_input(void **state) {
    (void)state;
    xlkv_hparams hp = tu_tiny_hparams();
    xlkv_model *model = tu_random_model("standard", &hp, 7);
    xlkv_context_params p = xlkv_context_default_params();
    p.n_ctx = 4;
    xlkv_context *ctx = NULL;
    TU_ASSERT_OK(xlkv_context_create(model, &p, &ctx));
    const int bad[] = {1, 50};
    TU_ASSERT_FAILS(xlkv_context_forward(ctx, bad, 2, false, NULL), XLKV_E_INVALID, "outside the vocabulary");
    TU_ASSERT_FAILS(xlkv_context_forward(ctx, tokens, 5, false, NULL), XLKV_E_CAPACITY, "do not fit");
    TU_ASSERT_FAILS(xlkv_context_forward(ctx, tokens, 0, false, NULL), XLKV_E_INVALID, "no tokens");
    TU_ASSERT_OK(xlkv_context_forward(ctx, tokens, 4, false, NULL));
    TU_ASSERT_FAILS(xlkv_context_forward(ctx, tokens, 1, false, NULL), XLKV_E_CAPACITY, "holds 4 of 4");
    xlkv_context_free(ctx);
    xlkv_model_free(model);
}

int main(void) {
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(plan_with_enough_iterations_equals_sequential),
        cmocka_unit_test(prefill_then_decode_equals_full_forward),
        cmocka_unit_test(cyclic_layer_attends_to_nothing_at_position_zero),
        cmocka_unit_test(force_nodiag_masks_every_layer),
        cmocka_unit_test(sliding_window_limits_what_is_seen),
        cmocka_unit_test(kv_memory_follows_the_formula),
        cmocka_unit_test(forward_rejects_bad_input),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
