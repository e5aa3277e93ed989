/* train/train_tape: the tape both trainers record (the CPU reference, train/train_graph.c, and the GPU trainer,
 * backend/cuda/train_gpu.c), so that they cannot drift apart:
 *   - the plan: one record per layer of an acyclic run, b records per layer of a cyclic group, one per gradient
 *     iteration (SEMANTICS.md section 6), in execution order;
 *   - what a record saves for its backward, carved out of one float arena. Only offsets are computed here: the arena
 *     is host memory for the CPU trainer and device memory for the GPU one (base == NULL counts floats). */
#ifndef XLKV_TRAIN_TRAIN_TAPE_H
#define XLKV_TRAIN_TRAIN_TAPE_H

#include <stdbool.h>
#include <stddef.h>

#include "model/hparams.h"
#include "model/layer_map.h"

typedef struct xlkv_layer_record {
    int layer;
    int group_iteration;          /* -1 outside cyclic groups, else 0 .. b-1 */
    bool iteration_start;         /* the first layer of a group iteration */
    float *x_in;                  /* [N, dim] residual stream entering the layer */
    float *attn_inv_rms;          /* [N] */
    float *xb;                    /* [N, dim] attention-normed input (NULL: see xlkv_tape_carve_record) */
    float *q;                     /* [N, q_dim] RoPE applied */
    float *k, *v;                 /* [N, kv_dim] RoPE applied; KV layers only */
    float *dk, *dv;               /* [N, kv_dim] gradients added by every reader */
    const float *read_k, *read_v; /* the K/V this layer's attention read */
    float *read_dk, *read_dv;     /* their gradients; NULL for constants */
    float *att;                   /* [N, q_dim] attention output */
    float *lse;                   /* [N, n_heads] */
    float *x_mid;                 /* [N, dim] after the attention residual */
    float *ffn_inv_rms;           /* [N] */
    float *xb2;                   /* [N, dim] (NULL: see xlkv_tape_carve_record) */
    float *gate, *up, *h;         /* [N, hidden_dim]; h = silu(gate) * up (NULL: see xlkv_tape_carve_record) */
} xlkv_layer_record;

/* Fills records[0 .. n) (layer, group_iteration, iteration_start) when records != NULL; returns n. */
int xlkv_tape_plan(const xlkv_layer_map *map, int backward_passes, xlkv_layer_record *records);

/* The next n floats of the arena at *cursor (NULL when base is NULL); *cursor advances by n rounded up to a multiple
 * of `align` floats (1: packed; 64: 256-byte aligned buffers for the GPU). */
float *xlkv_tape_take(float *base, size_t *cursor, size_t n, size_t align);

/* A record's activations for a batch of n_rows rows; K/V and their gradients only when with_kv; the fp32 product
 * inputs xb, xb2, h and the fp32 gate / up product outputs only when with_fp32_products (NULL otherwise: the bf16
 * CUDA trainer's fused path keeps only bf16 copies of the inputs and a bf16 [gate | up], 2 N (2 dim + 3 hidden) bytes
 * per record instead of 4 N (2 dim + 3 hidden)). */
void xlkv_tape_carve_record(xlkv_layer_record *rec, const xlkv_hparams *hp, size_t n_rows, bool with_kv,
                            bool with_fp32_products, float *base, size_t *cursor, size_t align);

#endif
