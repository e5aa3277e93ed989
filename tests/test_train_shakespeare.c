/* tests/test_train_shakespeare: training lowers the held-out loss. tinyshakespeare (../shared/data; skipped when
 * absent) tokenized with the stories260K tokenizer (tok512.bin, 512 tokens) through the library's corpus tokenizer
 * (last 10% held out), then a 2-layer model (dim 48) trained for 400 steps of 8 x 32 tokens under cla:2.
 * Stated target: held-out loss from ln(512) = 6.24 at initialisation to below 3.9 nats/token (measured: 3.76). */
#include <math.h>
#include <omp.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "core/file.h"
#include "testutil.h"
#include "train/model_setup.h"
#include "train/tokenize_corpus.h"
#include "train/trainer.h"

static const double target_loss = 3.9;
void openblas_set_num_threads(int n); /* OpenBLAS (cblas.h is private to the library target) */

static void training_lowers_held_out_loss(void **state) {
    (void)state;
    char *text = tu_shared_data("text/tinyshakespeare.txt");
    char *tokenizer_path = tu_shared_data("models/stories260K/tok512.bin");
    if (!text || !tokenizer_path) {
        free(text), free(tokenizer_path);
        skip();
    }
    /* one thread: ctest runs tests side by side on few cores, where spinning OpenMP teams would fight */
    omp_set_num_threads(1);
    openblas_set_num_threads(1);
    xlkv_tokenizer *tok = NULL;
    TU_ASSERT_OK(xlkv_tokenizer_load(tokenizer_path, &tok));
    char *data = tu_temp_dir();
    const char *files[] = {text};
    xlkv_tokenize_stats stats;
    TU_ASSERT_OK(xlkv_tokenize_corpus(tok, files, 1, data, 0.1, &stats));
    xlkv_tokenizer_free(tok);
    printf("tinyshakespeare: %llu train, %llu held-out tokens\n", (unsigned long long)stats.train_tokens,
           (unsigned long long)stats.valid_tokens);

    xlkv_hparams hp;
    xlkv_hparams_defaults(&hp);
    hp.dim = 48, hp.hidden_dim = 128, hp.n_layers = 2, hp.n_heads = 4, hp.n_kv_heads = 2, hp.head_dim = 12;
    hp.vocab_size = 512, hp.max_seq_len = 64, hp.tied_embeddings = true;
    xlkv_param_store *store = NULL;
    TU_ASSERT_OK(xlkv_store_from_shape(&hp, "cla:2", 1, &store));
    xlkv_train_options o = xlkv_train_default_options();
    o.batch = 8, o.seq = 32, o.steps = 400, o.warmup = 10, o.lr = 1e-2f, o.min_lr = 1e-3f, o.eval_batches = 8;
    o.adamw.weight_decay = 0.0f;
    xlkv_trainer *tr = NULL;
    TU_ASSERT_OK(xlkv_trainer_create(store, data, &o, &tr));
    double before = 0.0, after = 0.0;
    TU_ASSERT_OK(xlkv_trainer_eval(tr, &before));
    while (tr->step < o.steps) TU_ASSERT_OK(xlkv_trainer_step(tr, NULL));
    TU_ASSERT_OK(xlkv_trainer_eval(tr, &after));
    printf("held-out loss: %.4f before, %.4f after %ld steps (target < %.1f); last train loss %.4f\n", before, after,
           tr->step, target_loss, tr->train_losses[tr->step - 1]);
    assert_true(after < target_loss);
    xlkv_trainer_free(tr);
    char *shard = xlkv_path_join(data, "train-00000.bin"), *valid = xlkv_path_join(data, "valid-00000.bin");
    remove(shard), remove(valid), remove(data);
    free(shard), free(valid), free(data), free(text), free(tokenizer_path);
}

int main(void) {
    const struct CMUnitTest tests[] = {cmocka_unit_test(training_lowers_held_out_loss)};
    return cmocka_run_group_tests(tests, NULL, NULL);
}
