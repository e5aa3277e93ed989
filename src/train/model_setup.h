/* train/model_setup: where a model to train comes from: a named shape, a config.json, or a pretrained checkpoint
 * converted to a new layer map (SEMANTICS.md section 5), plus finding the tokenizer file of a directory. Shared by
 * `xlkv train` and `xlkv convert`. */
#ifndef XLKV_TRAIN_MODEL_SETUP_H
#define XLKV_TRAIN_MODEL_SETUP_H

#include "train/param_store.h"

/* Named shapes (tied embeddings, max_position_embeddings as listed; vocab given by the caller):
 *   tiny   4 layers, hidden 64, 4 / 2 heads (head_dim 16), ffn 176, 256 positions: CPU tests in seconds
 *   default 8 layers, hidden 512, 8 / 4 heads (head_dim 64), ffn 1376, 512 positions: the project's default models
 *   small  12 layers, hidden 768, 12 / 6 heads (head_dim 64), ffn 2048, 1024 positions: the study's shape */
xlkv_status xlkv_train_shape(const char *name, int vocab_size, xlkv_hparams *out);

/* Hyperparameter overrides applied on top of a shape / config / checkpoint; -1 = keep. */
typedef struct xlkv_train_overrides {
    int forward_passes, backward_passes, sliding_window, force_nodiag;
} xlkv_train_overrides;

/* A store for `hp` under `layer_types` (NULL = standard), initialised randomly from `seed`. */
xlkv_status xlkv_store_from_shape(const xlkv_hparams *hp, const char *layer_types, unsigned long long seed,
                                  xlkv_param_store **out);

/* A store initialised from a checkpoint (HF directory or llama2.c .bin) loaded under its own map, converted to
 * `layer_types` (NULL = keep its map) with kv_init for the W_K / W_V of the new map's KV layers. */
xlkv_status xlkv_store_from_checkpoint(const char *path, const char *layer_types, xlkv_kv_init kv_init,
                                       const xlkv_train_overrides *overrides, xlkv_param_store **out);

void xlkv_apply_train_overrides(xlkv_hparams *hp, const xlkv_train_overrides *overrides);

/* The first of tokenizer.json, tokenizer.bin, tok*.bin in `dir` (heap path) or NULL when none. A file path's folder is
 * searched when `dir` is a file. */
char *xlkv_find_tokenizer_file(const char *dir);

#endif
