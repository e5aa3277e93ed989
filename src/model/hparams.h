/* model/hparams: the blueprint of a model (llama2.c's Config): shapes and constants, no weights, no state. */
#ifndef XLKV_MODEL_HPARAMS_H
#define XLKV_MODEL_HPARAMS_H

#include <stdbool.h>

typedef struct xlkv_hparams {
    int dim;          /* hidden size */
    int hidden_dim;   /* SwiGLU inner size */
    int n_layers;
    int n_heads;
    int n_kv_heads;   /* grouped-query attention: query head h reads KV head h / (n_heads / n_kv_heads) */
    int head_dim;     /* usually dim / n_heads */
    int vocab_size;
    int max_seq_len;  /* max_position_embeddings */
    float rope_theta;
    float norm_eps;
    bool tied_embeddings; /* output projection = token embedding */
    int bos_id, eos_id;   /* -1 when unknown */
    /* LCKV fields (config.json), defaults m = 7, b = 2, no window, diagonal masked only for cyclic layers */
    int forward_passes;   /* m: iterations without gradient */
    int backward_passes;  /* b: iterations with gradient */
    int sliding_window;   /* W for layers marked sliding; 0 = none configured */
    bool force_nodiag;    /* mask the diagonal in every layer */
} xlkv_hparams;

/* Defaults for the fields a config may omit (LCKV fields, eps, theta, ids). Shapes are left zero. */
void xlkv_hparams_defaults(xlkv_hparams *hp);

/* Checks shapes are positive and consistent (n_heads % n_kv_heads == 0, ...); `source` names the file in errors. */
#include "xlkv.h"
xlkv_status xlkv_hparams_validate(const xlkv_hparams *hp, const char *source);

#endif
