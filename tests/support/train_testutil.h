/* tests/support/train_testutil: what the trainer tests share (tests/cuda/test_cuda_train*.c).
 * Include after testutil.h (TU_ASSERT_OK, tu_temp_dir).
 *   tt_token_data_dir(len, n_train, vocab)   a temporary directory with one train and one valid token shard of a
 *                                            fixed pseudo-random stream (len tokens: the first n_train train, the
 *                                            rest valid; every third token random, the others a function of the
 *                                            previous one, so a model can learn part of it); free() the path
 *   tt_worst_tensor_error(layout, a, b, &name)  over the tensors of the layout's parameter array: the worst
 *                                            max |a - b| / max |b| (absolute where b is all zeros; NaN counts as
 *                                            infinite), and the name of that tensor
 *   tt_tiny_trainer(data, hp, map, m, b, cuda, bf16, steps)  a trainer over a new store of shape hp under map
 *                                            (seed 11) with the options the trainer tests share: batch 4 x 32,
 *                                            accumulation 2, 2 warm-up steps, lr 3e-3 -> 3e-4, 2 eval batches
 *   tt_tiny_model_hparams(head_dim, m, b)    the tiny model of the CUDA trainer tests: 4 layers, dim 64, 4 / 2 heads
 *                                            (head_dim 64: dim 128, 2 / 1 heads, so flash attention runs), SwiGLU
 *                                            96, vocab TT_TINY_VOCAB, 64 positions, window 5
 *   tt_tiny_model_store(hp, map, seed)       a new store of shape hp under map */
#ifndef XLKV_TESTS_TRAIN_TESTUTIL_H
#define XLKV_TESTS_TRAIN_TESTUTIL_H

#include <math.h>
#include <stdint.h>
#include <stdlib.h>

#include "core/file.h"
#include "train/model_setup.h"
#include "train/token_shards.h"
#include "train/trainer.h"

enum { TT_TINY_VOCAB = 61 };

static inline xlkv_hparams tt_tiny_model_hparams(int head_dim, int m, int b) {
    xlkv_hparams hp;
    xlkv_hparams_defaults(&hp);
    hp.dim = 64, hp.hidden_dim = 96, hp.n_layers = 4, hp.n_heads = 4, hp.n_kv_heads = 2, hp.head_dim = head_dim;
    if (head_dim == 64) hp.dim = 128, hp.n_heads = 2, hp.n_kv_heads = 1;
    hp.vocab_size = TT_TINY_VOCAB, hp.max_seq_len = 64, hp.forward_passes = m, hp.backward_passes = b;
    hp.sliding_window = 5;
    return hp;
}

static inline xlkv_param_store *tt_tiny_model_store(const xlkv_hparams *hp, const char *map, unsigned long long seed) {
    xlkv_param_store *store = NULL;
    TU_ASSERT_OK(xlkv_store_from_shape(hp, map, seed, &store));
    return store;
}

static inline char *tt_token_data_dir(int len, int n_train, int vocab) {
    char *dir = tu_temp_dir();
    int32_t *tokens = malloc((size_t)len * sizeof *tokens);
    unsigned s = 7;
    for (int i = 0; i < len; i++) {
        s = s * 1103515245u + 12345u;
        tokens[i] = i % 3 == 0 ? (int32_t)((s >> 16) % (unsigned)vocab) : (tokens[i - 1] * 7 + 3) % vocab;
    }
    char *train = xlkv_path_join(dir, "train-00000.bin"), *valid = xlkv_path_join(dir, "valid-00000.bin");
    TU_ASSERT_OK(xlkv_token_shard_write(train, tokens, (size_t)n_train, vocab, 2));
    TU_ASSERT_OK(xlkv_token_shard_write(valid, tokens + n_train, (size_t)(len - n_train), vocab, 2));
    free(train), free(valid), free(tokens);
    return dir;
}

static inline double tt_worst_tensor_error(const xlkv_param_store *layout, const float *a, const float *b,
                                           const char **worst_name) {
    double worst = 0.0;
    *worst_name = "";
    for (int t = 0; t < layout->n_tensors; t++) {
        const xlkv_param_tensor *tensor = &layout->tensors[t];
        const size_t n = (size_t)tensor->rows * (size_t)(tensor->cols ? tensor->cols : 1);
        double diff = 0.0, scale = 0.0;
        for (size_t i = 0; i < n; i++) {
            const double x = a[tensor->offset + i], y = b[tensor->offset + i];
            if (fabs(x - y) > diff || isnan(x)) diff = isnan(x) ? INFINITY : fabs(x - y);
            if (fabs(y) > scale) scale = fabs(y);
        }
        const double err = scale > 0 ? diff / scale : diff;
        if (err > worst || isnan(err)) worst = err, *worst_name = tensor->name;
    }
    return worst;
}

static inline xlkv_trainer *tt_tiny_trainer(const char *data, const xlkv_hparams *hp, const char *map, int m, int b,
                                            bool cuda, bool bf16, long steps) {
    xlkv_param_store *store = NULL;
    TU_ASSERT_OK(xlkv_store_from_shape(hp, map, 11, &store));
    xlkv_train_options o = xlkv_train_default_options();
    o.batch = 4, o.seq = 32, o.steps = steps, o.warmup = 2, o.lr = 3e-3f, o.min_lr = 3e-4f, o.eval_batches = 2;
    o.forward_passes = m, o.backward_passes = b, o.accum = 2;
    o.device_cuda = cuda, o.cuda_bf16 = bf16;
    xlkv_trainer *tr = NULL;
    TU_ASSERT_OK(xlkv_trainer_create(store, data, &o, &tr));
    return tr;
}

#endif
