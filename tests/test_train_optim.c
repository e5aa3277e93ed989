/* tests/test_train_optim: AdamW (bias correction, decoupled decay on matrices only), the warm-up + cosine schedule
 * and global-norm clipping against values computed by hand. */
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "testutil.h"
#include "train/optimizer.h"

static xlkv_param_store *tiny_store(void) {
    xlkv_hparams hp;
    xlkv_hparams_defaults(&hp);
    hp.dim = 4, hp.hidden_dim = 4, hp.n_layers = 1, hp.n_heads = 2, hp.n_kv_heads = 1, hp.head_dim = 2;
    hp.vocab_size = 3, hp.max_seq_len = 4, hp.tied_embeddings = true;
    xlkv_layer_map *map = NULL;
    TU_ASSERT_OK(xlkv_layer_map_standard(1, &map));
    xlkv_param_store *store = NULL;
    TU_ASSERT_OK(xlkv_param_store_create(&hp, map, &store));
    xlkv_layer_map_free(map);
    return store;
}

static void adamw_matches_hand_computation(void **state) {
    (void)state;
    xlkv_param_store *s = tiny_store();
    const xlkv_adamw_params p = {.beta1 = 0.9f, .beta2 = 0.95f, .eps = 1e-8f, .weight_decay = 0.1f};
    float *wq = s->weights.layers[0].wq, *norm = s->weights.layers[0].attn_norm, *emb = s->weights.tok_embeddings;
    float *gq = s->grad_weights.layers[0].wq, *gn = s->grad_weights.layers[0].attn_norm;
    float *ge = s->grad_weights.tok_embeddings;
    wq[0] = 0.5f, norm[0] = 1.0f, emb[0] = 0.3f;
    const float lr = 0.01f;
    /* two steps with gradients 0.2 then -0.1, done by hand in double */
    double w_m = 0.5, w_n = 1.0, w_e = 0.3, m = 0, v = 0;
    const double grads[2] = {0.2, -0.1};
    for (int step = 1; step <= 2; step++) {
        gq[0] = gn[0] = ge[0] = (float)grads[step - 1];
        xlkv_adamw_step(s, &p, lr, step);
        m = 0.9 * m + 0.1 * grads[step - 1];
        v = 0.95 * v + 0.05 * grads[step - 1] * grads[step - 1];
        const double update = (m / (1 - pow(0.9, step))) / (sqrt(v / (1 - pow(0.95, step))) + 1e-8);
        w_m -= lr * (update + 0.1 * w_m); /* matrices decay */
        w_n -= lr * update;               /* norms do not */
        w_e -= lr * update;               /* nor embeddings */
    }
    printf("adamw after 2 steps: matrix %.8f (hand %.8f), norm %.8f (%.8f), embedding %.8f (%.8f)\n", wq[0], w_m,
           norm[0], w_n, emb[0], w_e);
    assert_true(fabs(wq[0] - w_m) < 1e-6 && fabs(norm[0] - w_n) < 1e-6 && fabs(emb[0] - w_e) < 1e-6);
    /* step 1 of Adam moves by lr exactly (m/sqrt(v) = sign(g)) */
    xlkv_param_store_free(s);
}

static void schedule_matches_hand_computation(void **state) {
    (void)state;
    /* warm-up 10, 110 steps, 1e-3 -> 1e-4 */
    assert_true(fabsf(xlkv_lr_schedule(0, 10, 110, 1e-3f, 1e-4f) - 1e-4f) < 1e-9f);  /* (0+1)/10 of the peak */
    assert_true(fabsf(xlkv_lr_schedule(9, 10, 110, 1e-3f, 1e-4f) - 1e-3f) < 1e-9f);  /* end of warm-up */
    assert_true(fabsf(xlkv_lr_schedule(10, 10, 110, 1e-3f, 1e-4f) - 1e-3f) < 1e-9f); /* cosine starts at the peak */
    assert_true(fabsf(xlkv_lr_schedule(60, 10, 110, 1e-3f, 1e-4f) - 5.5e-4f) < 1e-8f); /* half way: the middle */
    const float at85 = 1e-4f + 0.9e-3f * 0.5f * (1.0f + cosf(3.14159265f * 0.75f));
    assert_true(fabsf(xlkv_lr_schedule(85, 10, 110, 1e-3f, 1e-4f) - at85) < 1e-8f);
    assert_true(fabsf(xlkv_lr_schedule(110, 10, 110, 1e-3f, 1e-4f) - 1e-4f) < 1e-9f);
    assert_true(fabsf(xlkv_lr_schedule(500, 10, 110, 1e-3f, 1e-4f) - 1e-4f) < 1e-9f);
    assert_true(fabsf(xlkv_lr_schedule(0, 0, 10, 1e-3f, 0.0f) - 1e-3f) < 1e-9f); /* no warm-up */
}

static void clipping_matches_hand_computation(void **state) {
    (void)state;
    xlkv_param_store *s = tiny_store();
    memset(s->grads, 0, s->n_params * sizeof(float));
    s->grads[0] = 3.0f, s->grads[s->n_params - 1] = 4.0f; /* norm 5 */
    assert_true(fabs(xlkv_grad_norm(s) - 5.0) < 1e-9);
    assert_true(fabs(xlkv_clip_grad_norm(s, 10.0) - 5.0) < 1e-9); /* under the limit: unchanged */
    assert_true(s->grads[0] == 3.0f);
    assert_true(fabs(xlkv_clip_grad_norm(s, 1.0) - 5.0) < 1e-9); /* returns the norm before */
    assert_true(fabsf(s->grads[0] - 0.6f) < 1e-6f && fabsf(s->grads[s->n_params - 1] - 0.8f) < 1e-6f);
    assert_true(fabs(xlkv_grad_norm(s) - 1.0) < 1e-6);
    xlkv_clip_grad_norm(s, 0.0); /* 0 = off */
    assert_true(fabsf(s->grads[0] - 0.6f) < 1e-6f);
    xlkv_param_store_free(s);
}

int main(void) {
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(adamw_matches_hand_computation),
        cmocka_unit_test(schedule_matches_hand_computation),
        cmocka_unit_test(clipping_matches_hand_computation),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
