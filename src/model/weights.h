/* model/weights: the parameters of a model (llama2.c's TransformerWeights), fp32 on the host.
 *
 * Matrices are row-major [out_features, in_features], as in Hugging Face checkpoints (y = W x).
 * Owns one allocation per tensor via the arena below; non-KV layers have wk = wv = NULL (never loaded, SEMANTICS.md 5).
 * When embeddings are tied, `output` aliases `tok_embeddings`.
 *
 * RoPE convention: rotary embeddings rotate INTERLEAVED pairs of each head, (2i, 2i+1), as llama2.c does. The rows of
 * wq and wk are stored in that order. Hugging Face checkpoints rotate pairs (i, i + head_dim/2) ("rotate_half"); their
 * loader reorders the rows of q_proj / k_proj within each head on load (model/rope_layout.h), so every backend sees
 * one convention whatever the source format. */
#ifndef XLKV_MODEL_WEIGHTS_H
#define XLKV_MODEL_WEIGHTS_H

#include <stddef.h>

#include "model/hparams.h"
#include "model/layer_map.h"
#include "xlkv.h"

typedef struct xlkv_layer_weights {
    float *attn_norm; /* [dim] */
    float *wq;        /* [n_heads * head_dim, dim] */
    float *wk;        /* [n_kv_heads * head_dim, dim], NULL unless KV layer */
    float *wv;        /* [n_kv_heads * head_dim, dim], NULL unless KV layer */
    float *wo;        /* [dim, n_heads * head_dim] */
    float *ffn_norm;  /* [dim] */
    float *w_gate;    /* [hidden_dim, dim]  (llama2.c w1) */
    float *w_up;      /* [hidden_dim, dim]  (llama2.c w3) */
    float *w_down;    /* [dim, hidden_dim]  (llama2.c w2) */
} xlkv_layer_weights;

typedef struct xlkv_weights {
    float *tok_embeddings;       /* [vocab_size, dim] */
    float *output_norm;          /* [dim] */
    float *output;               /* [vocab_size, dim]; == tok_embeddings when tied */
    xlkv_layer_weights *layers;  /* [n_layers] */
    int n_layers;
    /* every tensor buffer, freed together */
    float **buffers;
    size_t n_buffers, cap_buffers;
} xlkv_weights;

/* Allocates a zeroed tensor of n floats owned by `w`. NULL (with error set) on failure. */
float *xlkv_weights_alloc(xlkv_weights *w, size_t n, const char *what);

/* Allocates every tensor for hp/map (wk/wv only for KV layers), zeroed. */
xlkv_status xlkv_weights_alloc_all(xlkv_weights *w, const xlkv_hparams *hp, const xlkv_layer_map *map);

/* Fills every tensor with N(0, std) from a seeded generator (tests and benchmarks with random weights);
 * norms are set to 1 + N(0, 0.1). */
void xlkv_weights_randomize(xlkv_weights *w, const xlkv_hparams *hp, unsigned long long seed, float std);

void xlkv_weights_free(xlkv_weights *w);

#endif
