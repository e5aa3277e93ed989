/* train/param_store: the trainable parameters of a model in one contiguous buffer (llm.c style), with gradients and
 * the two AdamW moments in buffers of the same layout.
 *
 * Layout (the order of xlkv_weights_randomize): tok_embeddings [vocab, dim]; per layer attn_norm [dim],
 * wq [q_dim, dim], wk and wv [kv_dim, dim] (KV layers only), wo [dim, q_dim], ffn_norm [dim], w_gate [hidden, dim],
 * w_up [hidden, dim], w_down [dim, hidden]; output_norm [dim]; output [vocab, dim] (untied only).
 * `weights` and `grad_weights` are xlkv_weights views whose named pointers point into `params` / `grads` (they own no
 * tensor buffer), so the trained parameters run in the inference executor without a copy (xlkv_param_store_model).
 * `tensors` names every tensor with its Hugging Face name, for checkpoints, weight decay and gradient checks. */
#ifndef XLKV_TRAIN_PARAM_STORE_H
#define XLKV_TRAIN_PARAM_STORE_H

#include <stdbool.h>
#include <stddef.h>

#include "model/model.h"

typedef enum xlkv_param_kind {
    XLKV_PARAM_EMBEDDING, /* tok_embeddings (and the tied classifier) */
    XLKV_PARAM_NORM,      /* RMSNorm gains */
    XLKV_PARAM_MATRIX,    /* projections and the untied classifier */
} xlkv_param_kind;

typedef struct xlkv_param_tensor {
    char name[64];         /* Hugging Face name, e.g. "model.layers.3.self_attn.k_proj.weight" */
    size_t offset;         /* first float inside params / grads */
    int rows, cols;        /* [rows, cols]; cols = 0 for vectors */
    xlkv_param_kind kind;
    int rope_heads;        /* > 0 for q_proj / k_proj: rows are in interleaved RoPE order, this many heads */
    int layer;             /* -1 outside layers */
} xlkv_param_tensor;

typedef struct xlkv_param_store {
    xlkv_hparams hp;
    xlkv_layer_map *map;          /* owned */
    size_t n_params;
    float *params;                /* [n_params] */
    float *grads;                 /* [n_params] */
    float *adam_m;                /* [n_params] first moment */
    float *adam_v;                /* [n_params] second moment */
    xlkv_weights weights;         /* named pointers into params */
    xlkv_weights grad_weights;    /* the same names into grads */
    xlkv_param_tensor *tensors;   /* [n_tensors] in layout order */
    int n_tensors;
    xlkv_model model;             /* a view for the inference code: hp, map, weights (no tokenizer, no path) */
} xlkv_param_store;

/* Allocates zeroed parameters, gradients and moments for hp under map (cloned). */
xlkv_status xlkv_param_store_create(const xlkv_hparams *hp, const xlkv_layer_map *map, xlkv_param_store **out);
void xlkv_param_store_free(xlkv_param_store *store);

/* GPT-2 style initialisation from a seeded generator: matrices and embeddings N(0, 0.02), the residual projections
 * (wo, w_down) N(0, 0.02 / sqrt(2 n_layers)), norm gains 1. Same (shape, map, seed) -> same bits. */
void xlkv_param_store_init_random(xlkv_param_store *store, unsigned long long seed);

/* How the W_K / W_V of a KV layer are initialised from a checkpoint loaded under the standard map
 * (SEMANTICS.md section 5). */
typedef enum xlkv_kv_init {
    XLKV_KV_INIT_COPY,    /* each KV layer keeps its own W_K, W_V */
    XLKV_KV_INIT_AVERAGE, /* MLKV-style: the mean over every layer that reads it, itself included */
} xlkv_kv_init;

/* Copies `src` (weights of a model with the same shape; wk / wv present for every layer that the store's map makes a
 * KV layer, and for every reader when averaging) into the store under the store's map. */
xlkv_status xlkv_param_store_copy_weights(xlkv_param_store *store, const xlkv_weights *src, xlkv_kv_init kv_init);

/* The tensor holding parameter index `index` (for messages), or NULL. */
const xlkv_param_tensor *xlkv_param_store_tensor_of(const xlkv_param_store *store, size_t index);

#endif
