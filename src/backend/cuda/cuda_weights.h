/* backend/cuda/cuda_weights: the model's parameters on the device, in the engine's element type.
 *
 * Owns one device allocation (an arena) holding every tensor, carved into named pointers (256-byte aligned), and the
 * fusions the executor relies on: per layer W_qkv = [wq; wk; wv] ([q_dim + 2 kv_dim, dim], one GEMM gives q, k and v
 * as column blocks of its output) for KV layers and W_qkv = wq ([q_dim, dim]) for the others, whose K/V are never
 * computed (their wk / wv stay on the host, SEMANTICS.md section 5); W_gate_up = [w_gate; w_up] ([2 hidden, dim]).
 * Matrices stay row-major [out, in] as on the host. Host fp32 values are converted (bf16: round to nearest even). */
#ifndef XLKV_BACKEND_CUDA_WEIGHTS_H
#define XLKV_BACKEND_CUDA_WEIGHTS_H

#include <stddef.h>

#include "backend/cuda/cuda_kernels.h"
#include "model/model.h"
#include "xlkv.h"

typedef struct xlkv_cuda_layer_weights {
    void *attn_norm; /* [dim] */
    void *w_qkv;     /* [qkv_rows, dim]: [wq; wk; wv] for a KV layer, wq alone otherwise */
    int qkv_rows;    /* q_dim + 2 kv_dim, or q_dim */
    void *wo;        /* [dim, q_dim] */
    void *ffn_norm;  /* [dim] */
    void *w_gate_up; /* [2 hidden, dim]: gate rows then up rows */
    void *w_down;    /* [dim, hidden] */
} xlkv_cuda_layer_weights;

typedef struct xlkv_cuda_weights {
    void *arena;                     /* the one device allocation */
    size_t bytes;                    /* its size */
    void *tok_embeddings;            /* [vocab, dim] */
    void *output_norm;               /* [dim] */
    void *output;                    /* [vocab, dim]; == tok_embeddings when tied */
    xlkv_cuda_layer_weights *layers; /* host array [n_layers] of device pointers */
    int n_layers;
} xlkv_cuda_weights;

/* Device bytes the weights of `model` take in element type dt (arena size, alignment included). */
size_t xlkv_cuda_weights_bytes(const xlkv_model *model, xlkv_dtype dt);

/* Allocates the arena and uploads every tensor (synchronous). On failure everything is freed and w is zeroed. */
xlkv_status xlkv_cuda_weights_upload(xlkv_cuda_weights *w, const xlkv_model *model, xlkv_dtype dt);
void xlkv_cuda_weights_free(xlkv_cuda_weights *w);

size_t xlkv_cuda_dtype_bytes(xlkv_dtype dt);

#endif
