/* tests/test_train_model: the whole training graph of a tiny model.
 *  - finite-difference gradient checks of every parameter tensor under a standard, a bottom (cla:2), cyclic
 *    (0_2_2_3 and lckv:1 with m = 1, b = 2; m = 0, b = 3), sliding-window and force_nodiag maps. With m > 0 the
 *    finite differences hold the K/V of the last no-grad iteration fixed (graph->freeze_constant_kv): they are
 *    constants of the function the trainer differentiates (SEMANTICS.md 6); with m = 0 nothing is frozen;
 *  - the training forward's logits equal the inference executor's (xlkv_context_forward on the same parameters,
 *    through the param_store's model view; cyclic maps with the plan and m + b iterations) to 1e-5;
 *  - b < 2 with a cyclic map is refused with a clear message. */
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "gradcheck.h"
#include "infer/context.h"
#include "testutil.h"
#include "train/train_graph.h"

enum { BATCH = 2, SEQ = 6 };

static xlkv_hparams tiny_hparams(void) {
    xlkv_hparams hp;
    xlkv_hparams_defaults(&hp);
    hp.dim = 16;
    hp.hidden_dim = 24;
    hp.n_layers = 4;
    hp.n_heads = 4;
    hp.n_kv_heads = 2;
    hp.head_dim = 4;
    hp.vocab_size = 23;
    hp.max_seq_len = 16;
    hp.sliding_window = 3;
    return hp;
}

/* Weights large enough that every layer matters (norm gains near 1). */
static void fill_params(xlkv_param_store *store, unsigned seed) {
    for (int t = 0; t < store->n_tensors; t++) {
        const xlkv_param_tensor *tensor = &store->tensors[t];
        size_t n = (size_t)tensor->rows * (size_t)(tensor->cols ? tensor->cols : 1);
        float *p = store->params + tensor->offset;
        gc_fill(p, n, seed + (unsigned)t, tensor->kind == XLKV_PARAM_NORM ? 0.2f : 0.4f);
        if (tensor->kind == XLKV_PARAM_NORM)
            for (size_t i = 0; i < n; i++) p[i] += 1.0f;
    }
}

static void make_batch(int *tokens, int *targets, int vocab) {
    for (int r = 0; r < BATCH * SEQ; r++) {
        tokens[r] = (r * 7 + 3) % vocab;
        targets[r] = (r * 5 + 11) % vocab;
    }
}

static xlkv_param_store *make_store(const char *map_text, xlkv_hparams hp) {
    xlkv_layer_map *map = NULL;
    TU_ASSERT_OK(xlkv_layer_map_parse(map_text, hp.n_layers, &map));
    xlkv_param_store *store = NULL;
    TU_ASSERT_OK(xlkv_param_store_create(&hp, map, &store));
    xlkv_layer_map_free(map);
    fill_params(store, 3);
    return store;
}

typedef struct loss_case {
    xlkv_train_graph *graph;
    const int *tokens, *targets;
} loss_case;

static double loss_of(void *p) {
    loss_case *c = p;
    double loss = 0.0;
    TU_ASSERT_OK(xlkv_train_graph_forward(c->graph, c->tokens, c->targets, &loss));
    return loss;
}

/* Checks every tensor at its 4 largest-gradient entries and 4 fixed pseudo-random ones. */
static void gradient_check(const char *map_text, xlkv_hparams hp, int m, int b) {
    xlkv_param_store *store = make_store(map_text, hp);
    xlkv_train_graph *graph = NULL;
    TU_ASSERT_OK(xlkv_train_graph_create(store, BATCH, SEQ, m, b, &graph));
    int tokens[BATCH * SEQ], targets[BATCH * SEQ];
    make_batch(tokens, targets, hp.vocab_size);
    loss_case c = {graph, tokens, targets};
    memset(store->grads, 0, store->n_params * sizeof(float));
    loss_of(&c);
    xlkv_train_graph_backward(graph, 1.0f);
    graph->freeze_constant_kv = true; /* the no-grad iterations' K/V are constants of the differentiated function */
    double worst = 0.0;
    for (int t = 0; t < store->n_tensors; t++) {
        const xlkv_param_tensor *tensor = &store->tensors[t];
        const size_t n = (size_t)tensor->rows * (size_t)(tensor->cols ? tensor->cols : 1);
        const float *g = store->grads + tensor->offset;
        size_t picks[8];
        int used[8] = {0};
        for (int k = 0; k < 4; k++) { /* the 4 largest */
            size_t best = 0;
            float best_abs = -1.0f;
            for (size_t i = 0; i < n; i++) {
                int taken = 0;
                for (int j = 0; j < k; j++) taken |= used[j] && picks[j] == i;
                if (!taken && fabsf(g[i]) > best_abs) best_abs = fabsf(g[i]), best = i;
            }
            picks[k] = best;
            used[k] = 1;
        }
        for (int k = 4; k < 8; k++) picks[k] = ((size_t)k * 2654435761u + (size_t)t) % n;
        float *p = store->params + tensor->offset;
        double err = gc_check(loss_of, &c, p, n, g, 3e-3f, picks, 8);
        if (err > worst) worst = err;
        if (!(err <= 5e-3))
            fail_msg("map %s (m=%d, b=%d): tensor %s: finite-difference error %g", map_text, m, b, tensor->name, err);
        double norm = 0.0;
        for (size_t i = 0; i < n; i++) norm += (double)g[i] * g[i];
        if (!(norm > 0.0)) fail_msg("map %s: tensor %s gets no gradient", map_text, tensor->name);
    }
    printf("gradcheck model %-22s m=%d b=%d  %2d tensors, max error %.2e (of each tensor's largest gradient)\n",
           map_text, m, b, store->n_tensors, worst);
    xlkv_train_graph_free(graph);
    xlkv_param_store_free(store);
}

static void gradients_standard(void **state) {
    (void)state;
    gradient_check("standard", tiny_hparams(), 7, 2);
}
static void gradients_bottom(void **state) {
    (void)state;
    gradient_check("cla:2", tiny_hparams(), 7, 2);
}
static void gradients_cyclic(void **state) {
    (void)state;
    gradient_check("0_2_2_3", tiny_hparams(), 1, 2);
    gradient_check("lckv:1", tiny_hparams(), 1, 2);
    gradient_check("lckv:1", tiny_hparams(), 0, 3);
}
static void gradients_sliding_and_nodiag(void **state) {
    (void)state;
    gradient_check("0_1s_1s_3", tiny_hparams(), 7, 2);
    xlkv_hparams hp = tiny_hparams();
    hp.force_nodiag = true;
    hp.tied_embeddings = true;
    gradient_check("cla:2", hp, 7, 2);
}

/* Training-forward logits == inference logits for each sequence of the batch. */
static void logits_match(const char *map_text, int m, int b) {
    xlkv_hparams hp = tiny_hparams();
    hp.forward_passes = m;
    hp.backward_passes = b;
    xlkv_param_store *store = make_store(map_text, hp);
    xlkv_train_graph *graph = NULL;
    TU_ASSERT_OK(xlkv_train_graph_create(store, BATCH, SEQ, m, b, &graph));
    int tokens[BATCH * SEQ], targets[BATCH * SEQ];
    make_batch(tokens, targets, hp.vocab_size);
    double loss = 0.0;
    TU_ASSERT_OK(xlkv_train_graph_forward(graph, tokens, targets, &loss));
    float *train_logits = malloc(sizeof(float) * BATCH * SEQ * (size_t)hp.vocab_size);
    xlkv_train_graph_logits(graph, train_logits);
    double worst = 0.0;
    for (int s = 0; s < BATCH; s++) {
        xlkv_context_params p = xlkv_context_default_params();
        p.prefill_mode = XLKV_PREFILL_PLAN;
        p.iterations = m + b;
        p.n_threads = 2;
        xlkv_context *ctx = NULL;
        TU_ASSERT_OK(xlkv_context_create(&store->model, &p, &ctx));
        const float *logits = NULL;
        TU_ASSERT_OK(xlkv_context_forward(ctx, tokens + s * SEQ, SEQ, true, &logits));
        double d = tu_max_abs_diff(logits, train_logits + (size_t)s * SEQ * hp.vocab_size, (size_t)SEQ * hp.vocab_size);
        if (d > worst) worst = d;
        xlkv_context_free(ctx);
    }
    printf("training forward vs inference, map %-10s m=%d b=%d: max |logit difference| %.2e\n", map_text, m, b, worst);
    if (!(worst <= 1e-5)) fail_msg("map %s: training and inference logits differ by %g", map_text, worst);
    free(train_logits);
    xlkv_train_graph_free(graph);
    xlkv_param_store_free(store);
}

static void training_forward_equals_inference(void **state) {
    (void)state;
    logits_match("standard", 7, 2);
    logits_match("cla:2", 7, 2);
    logits_match("0_2_2_3", 1, 2);
    logits_match("lckv:1", 7, 2);
    logits_match("0_1s_1s_3", 7, 2);
}

static void cyclic_map_needs_two_backward_passes(void **state) {
    (void)state;
    xlkv_param_store *store = make_store("lckv:1", tiny_hparams());
    xlkv_train_graph *graph = NULL;
    TU_ASSERT_FAILS(xlkv_train_graph_create(store, BATCH, SEQ, 7, 1, &graph), XLKV_E_INVALID, "needs b >= 2");
    TU_ASSERT_FAILS(xlkv_train_graph_create(store, BATCH, 17, 7, 2, &graph), XLKV_E_INVALID, "max_position");
    xlkv_param_store_free(store);
    store = make_store("standard", tiny_hparams()); /* no cyclic group: b = 1 is fine */
    TU_ASSERT_OK(xlkv_train_graph_create(store, BATCH, SEQ, 0, 1, &graph));
    xlkv_train_graph_free(graph);
    xlkv_param_store_free(store);
}

int main(void) {
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(gradients_standard),
        cmocka_unit_test(gradients_bottom),
        cmocka_unit_test(gradients_cyclic),
        cmocka_unit_test(gradients_sliding_and_nodiag),
        cmocka_unit_test(training_forward_equals_inference),
        cmocka_unit_test(cyclic_map_needs_two_backward_passes),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
