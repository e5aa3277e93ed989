#define _DEFAULT_SOURCE /* truncate */
/* tests/test_train_checkpoint: checkpoints and resume.
 *  - a trained model's checkpoint loads in xlkv_model_load and its logits (inference executor, the plan with the
 *    config's m + b) equal the training forward's, to 1e-5, under a standard, a bottom (cla:2) and a cyclic map;
 *  - atomic writes: a simulated crash before the rename, and a failure while writing, leave the previous checkpoint
 *    loadable and unchanged;
 *  - resume: N steps with a save at N/2, then a fresh trainer resumed from the save, give bit-identical parameters;
 *  - kv-init average is the mean of the readers' W_K; bad inputs (corrupt trainer_state.bin, different run options,
 *    missing data directory, truncated shard, malformed config.json) fail with clear messages. */
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "core/file.h"
#include "gradcheck.h"
#include "infer/context.h"
#include "testutil.h"
#include "train/checkpoint.h"
#include "train/model_setup.h"
#include "train/trainer.h"

enum { VOCAB = 29 };

static xlkv_hparams tiny_hparams(int m, int b) {
    xlkv_hparams hp;
    xlkv_hparams_defaults(&hp);
    hp.dim = 16, hp.hidden_dim = 24, hp.n_layers = 4, hp.n_heads = 4, hp.n_kv_heads = 2, hp.head_dim = 4;
    hp.vocab_size = VOCAB, hp.max_seq_len = 32, hp.forward_passes = m, hp.backward_passes = b;
    return hp;
}

static xlkv_param_store *make_store(const char *map_text, int m, int b) {
    xlkv_hparams hp = tiny_hparams(m, b);
    xlkv_param_store *store = NULL;
    TU_ASSERT_OK(xlkv_store_from_shape(&hp, map_text, 5, &store));
    for (size_t i = 0; i < store->n_params; i++) store->params[i] *= 10.0f; /* larger than init: logits not flat */
    return store;
}

/* A data directory with a train and a valid shard of pseudo-random tokens that have some structure. */
static char *make_data_dir(void) {
    char *dir = tu_temp_dir();
    enum { N = 4000 };
    int32_t *tokens = malloc(N * sizeof *tokens);
    unsigned s = 7;
    for (int i = 0; i < N; i++) {
        s = s * 1103515245u + 12345u;
        tokens[i] = i % 3 == 0 ? (int32_t)((s >> 16) % VOCAB) : (tokens[i - 1] * 7 + 3) % VOCAB;
    }
    char *train = xlkv_path_join(dir, "train-00000.bin"), *valid = xlkv_path_join(dir, "valid-00000.bin");
    TU_ASSERT_OK(xlkv_token_shard_write(train, tokens, 3500, VOCAB, 2));
    TU_ASSERT_OK(xlkv_token_shard_write(valid, tokens + 3500, 500, VOCAB, 2));
    free(train), free(valid), free(tokens);
    return dir;
}

static void checkpoint_logits_equal_training_forward(const char *map_text, int m, int b) {
    xlkv_param_store *store = make_store(map_text, m, b);
    enum { SEQ = 9 };
    int tokens[SEQ], targets[SEQ];
    for (int t = 0; t < SEQ; t++) tokens[t] = (t * 11 + 1) % VOCAB, targets[t] = (t * 3) % VOCAB;
    xlkv_train_graph *graph = NULL;
    TU_ASSERT_OK(xlkv_train_graph_create(store, 1, SEQ, m, b, &graph));
    double loss;
    TU_ASSERT_OK(xlkv_train_graph_forward(graph, tokens, targets, &loss));
    float train_logits[SEQ * VOCAB];
    xlkv_train_graph_logits(graph, train_logits);
    char *base = tu_temp_dir(), *dir = xlkv_path_join(base, "ckpt");
    TU_ASSERT_OK(xlkv_checkpoint_write(store, dir, NULL));
    xlkv_model *model = NULL;
    TU_ASSERT_OK(xlkv_model_load(dir, NULL, &model));
    assert_int_equal(model->hp.forward_passes, m);
    assert_int_equal(model->hp.backward_passes, b);
    xlkv_context_params p = xlkv_context_default_params();
    p.prefill_mode = XLKV_PREFILL_PLAN; /* iterations default to the config's m + b */
    xlkv_context *ctx = NULL;
    TU_ASSERT_OK(xlkv_context_create(model, &p, &ctx));
    const float *logits = NULL;
    TU_ASSERT_OK(xlkv_context_forward(ctx, tokens, SEQ, true, &logits));
    const double d = tu_max_abs_diff(logits, train_logits, SEQ * VOCAB);
    printf("checkpoint of map %-8s (m=%d b=%d) reloaded: max |logit difference| %.2e\n", map_text, m, b, d);
    if (!(d <= 1e-5)) fail_msg("map %s: reloaded checkpoint logits differ by %g", map_text, d);
    /* the parameters round-trip bit for bit (RoPE rows permuted to HF and back) */
    xlkv_param_store *again = make_store(map_text, m, b);
    TU_ASSERT_OK(xlkv_checkpoint_load_params(again, dir));
    assert_memory_equal(again->params, store->params, store->n_params * sizeof(float));
    xlkv_param_store_free(again);
    xlkv_context_free(ctx);
    xlkv_model_free(model);
    xlkv_train_graph_free(graph);
    xlkv_param_store_free(store);
    free(dir), free(base);
}

static void checkpoints_load_in_inference(void **state) {
    (void)state;
    checkpoint_logits_equal_training_forward("standard", 7, 2);
    checkpoint_logits_equal_training_forward("cla:2", 7, 2);
    checkpoint_logits_equal_training_forward("lckv:1", 1, 2);
    checkpoint_logits_equal_training_forward("0_2_2_3", 3, 2);
}

static void interrupted_save_keeps_previous_checkpoint(void **state) {
    (void)state;
    xlkv_param_store *store = make_store("cla:2", 7, 2);
    char *base = tu_temp_dir(), *dir = xlkv_path_join(base, "ckpt");
    TU_ASSERT_OK(xlkv_checkpoint_write(store, dir, NULL));
    float *saved = malloc(store->n_params * sizeof(float));
    memcpy(saved, store->params, store->n_params * sizeof(float));
    for (size_t i = 0; i < store->n_params; i++) store->params[i] += 1.0f;
    xlkv_checkpoint_extras crash = {.simulate_crash_before_rename = true};
    TU_ASSERT_FAILS(xlkv_checkpoint_write(store, dir, &crash), XLKV_E_IO, "simulated crash");
    xlkv_checkpoint_extras bad = {.tokenizer_path = "/nonexistent/tokenizer.bin"};
    TU_ASSERT_FAILS(xlkv_checkpoint_write(store, dir, &bad), XLKV_E_IO, "/nonexistent/tokenizer.bin");
    xlkv_param_store *loaded = make_store("cla:2", 7, 2);
    TU_ASSERT_OK(xlkv_checkpoint_load_params(loaded, dir));
    assert_memory_equal(loaded->params, saved, store->n_params * sizeof(float));
    xlkv_model *model = NULL;
    TU_ASSERT_OK(xlkv_model_load(dir, NULL, &model));
    xlkv_model_free(model);
    /* a later successful save replaces it */
    TU_ASSERT_OK(xlkv_checkpoint_write(store, dir, NULL));
    TU_ASSERT_OK(xlkv_checkpoint_load_params(loaded, dir));
    assert_memory_equal(loaded->params, store->params, store->n_params * sizeof(float));
    xlkv_param_store_free(loaded);
    xlkv_param_store_free(store);
    free(saved), free(dir), free(base);
}

static xlkv_train_options small_run(void) {
    xlkv_train_options o = xlkv_train_default_options();
    o.batch = 2, o.seq = 8, o.steps = 8, o.warmup = 2, o.lr = 3e-3f, o.min_lr = 3e-4f, o.eval_batches = 2;
    o.forward_passes = 1, o.backward_passes = 2, o.accum = 2;
    return o;
}

static xlkv_trainer *make_trainer(const char *data, const char *map_text) {
    xlkv_hparams hp = tiny_hparams(1, 2);
    xlkv_param_store *store = NULL;
    TU_ASSERT_OK(xlkv_store_from_shape(&hp, map_text, 11, &store));
    xlkv_train_options o = small_run();
    xlkv_trainer *tr = NULL;
    TU_ASSERT_OK(xlkv_trainer_create(store, data, &o, &tr));
    return tr;
}

static void resume_equals_uninterrupted_run(void **state) {
    (void)state;
    char *data = make_data_dir(), *out = tu_temp_dir();
    const char *maps[] = {"cla:2", "lckv:1"};
    for (int m = 0; m < 2; m++) {
        xlkv_trainer *straight = make_trainer(data, maps[m]);
        double loss;
        for (int s = 0; s < 8; s++) {
            TU_ASSERT_OK(xlkv_trainer_step(straight, NULL));
            if (s == 3) {
                TU_ASSERT_OK(xlkv_trainer_eval(straight, &loss));
                TU_ASSERT_OK(xlkv_trainer_save(straight, out, NULL)); /* checkpoint-000004 */
            }
        }
        xlkv_trainer *resumed = make_trainer(data, maps[m]);
        char *latest = xlkv_path_join(out, "latest");
        TU_ASSERT_OK(xlkv_trainer_resume(resumed, latest));
        assert_int_equal(resumed->step, 4);
        assert_int_equal(resumed->n_evals, 1);
        while (resumed->step < 8) TU_ASSERT_OK(xlkv_trainer_step(resumed, NULL));
        assert_memory_equal(resumed->store->params, straight->store->params, straight->store->n_params * sizeof(float));
        assert_memory_equal(resumed->store->adam_v, straight->store->adam_v, straight->store->n_params * sizeof(float));
        assert_memory_equal(resumed->train_losses, straight->train_losses, 8 * sizeof(float));
        printf("resume under %s: parameters after 8 steps identical to the uninterrupted run (loss %.4f)\n", maps[m],
               straight->train_losses[7]);
        /* the SVG of the run */
        char *svg = xlkv_path_join(out, "loss.svg");
        TU_ASSERT_OK(xlkv_trainer_write_loss_svg(resumed, svg));
        char *text = NULL;
        size_t size = 0;
        TU_ASSERT_OK(xlkv_read_file(svg, &text, &size));
        assert_non_null(strstr(text, "<svg") && strstr(text, "polyline") ? text : NULL);
        free(text), free(svg), free(latest);
        xlkv_trainer_free(straight);
        xlkv_trainer_free(resumed);
    }
    free(data), free(out);
}

static void bad_inputs_fail_clearly(void **state) {
    (void)state;
    char *data = make_data_dir(), *out = tu_temp_dir();
    xlkv_trainer *tr = make_trainer(data, "standard");
    TU_ASSERT_OK(xlkv_trainer_step(tr, NULL));
    unsigned char *bytes = NULL;
    size_t size = 0;
    TU_ASSERT_OK(xlkv_trainer_state_serialize(tr, &bytes, &size));
    bytes[size / 2] ^= 0x40;
    TU_ASSERT_FAILS(xlkv_trainer_state_restore(tr, bytes, size, "trainer_state.bin"), XLKV_E_FORMAT, "corrupt");
    TU_ASSERT_FAILS(xlkv_trainer_state_restore(tr, bytes, 20, "trainer_state.bin"), XLKV_E_FORMAT, "not a trainer");
    free(bytes);
    TU_ASSERT_OK(xlkv_trainer_save(tr, out, NULL));
    xlkv_trainer_free(tr);
    /* a different batch cannot continue bit-exactly */
    xlkv_hparams hp = tiny_hparams(1, 2);
    xlkv_param_store *store = NULL;
    TU_ASSERT_OK(xlkv_store_from_shape(&hp, "standard", 11, &store));
    xlkv_train_options o = small_run();
    o.batch = 3;
    TU_ASSERT_OK(xlkv_trainer_create(store, data, &o, &tr));
    char *latest = xlkv_path_join(out, "latest");
    TU_ASSERT_FAILS(xlkv_trainer_resume(tr, latest), XLKV_E_INVALID, "resuming needs the same");
    xlkv_trainer_free(tr);
    /* corrupt trainer_state.bin on disk */
    char *state_path = xlkv_path_join(latest, "trainer_state.bin");
    FILE *f = fopen(state_path, "r+b");
    assert_non_null(f);
    fseek(f, 60, SEEK_SET);
    fputc(0x5A, f);
    fclose(f);
    tr = make_trainer(data, "standard");
    TU_ASSERT_FAILS(xlkv_trainer_resume(tr, latest), XLKV_E_FORMAT, "checksum");
    xlkv_trainer_free(tr);
    /* missing data directory, a truncated shard */
    TU_ASSERT_OK(xlkv_store_from_shape(&hp, "standard", 11, &store));
    o = small_run();
    TU_ASSERT_FAILS(xlkv_trainer_create(store, "/nonexistent-data", &o, &tr), XLKV_E_IO, "no such data directory");
    char *shard = xlkv_path_join(data, "train-00000.bin");
    assert_int_equal(truncate(shard, 1000), 0);
    TU_ASSERT_OK(xlkv_store_from_shape(&hp, "standard", 11, &store));
    TU_ASSERT_FAILS(xlkv_trainer_create(store, data, &o, &tr), XLKV_E_FORMAT, "truncated");
    /* b < 2 with a cyclic map, through the trainer */
    TU_ASSERT_OK(xlkv_store_from_shape(&hp, "lckv:1", 11, &store));
    o.backward_passes = 1;
    TU_ASSERT_FAILS(xlkv_trainer_create(store, data, &o, &tr), XLKV_E_INVALID, "needs b >= 2");
    /* malformed config.json */
    char *config = tu_write_temp(".json", "{\"model_type\": \"llama\", \"hidden_size\": 64", 42);
    char *layer_types = NULL;
    TU_ASSERT_FAILS(xlkv_hf_read_config(config, &hp, &layer_types), XLKV_E_FORMAT, "not valid JSON");
    unlink(config);
    free(config), free(shard), free(state_path), free(latest), free(data), free(out);
}

static void kv_init_average_is_the_readers_mean(void **state) {
    (void)state;
    xlkv_param_store *standard = make_store("standard", 7, 2);
    xlkv_hparams hp = tiny_hparams(7, 2);
    xlkv_layer_map *map = NULL;
    TU_ASSERT_OK(xlkv_layer_map_parse("cla:2", 4, &map));
    xlkv_param_store *shared = NULL;
    TU_ASSERT_OK(xlkv_param_store_create(&hp, map, &shared));
    TU_ASSERT_OK(xlkv_param_store_copy_weights(shared, &standard->weights, XLKV_KV_INIT_AVERAGE));
    const float *a = standard->weights.layers[2].wk, *b = standard->weights.layers[3].wk;
    const float *mean = shared->weights.layers[2].wk;
    for (int i = 0; i < 8 * 16; i++) assert_true(fabsf(mean[i] - (a[i] + b[i]) / 2) < 1e-6f);
    assert_null(shared->weights.layers[3].wk);
    TU_ASSERT_OK(xlkv_param_store_copy_weights(shared, &standard->weights, XLKV_KV_INIT_COPY));
    assert_memory_equal(shared->weights.layers[2].wk, a, 8 * 16 * sizeof(float));
    xlkv_layer_map_free(map);
    xlkv_param_store_free(shared);
    xlkv_param_store_free(standard);
}

int main(void) {
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(checkpoints_load_in_inference),
        cmocka_unit_test(interrupted_save_keeps_previous_checkpoint),
        cmocka_unit_test(resume_equals_uninterrupted_run),
        cmocka_unit_test(bad_inputs_fail_clearly),
        cmocka_unit_test(kv_init_average_is_the_readers_mean),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
