/* backend/cuda/cuda_buffers: the activations and per-step inputs of the CUDA engine, allocated once at create.
 *
 * Owns one device arena (activations for `rows` rows, fp32 logits, the decode attention workspace, the RoPE tables,
 * the per-step input region, the scoring scratch of n_ctx rows) and one pinned host block mirroring the input region
 * and the scoring scratch, and holding the sampled ids (the sampler writes them there through the block's device
 * address). The input region holds everything a pass reads that changes from step to step (tokens, the table row and the
 * position of every row, sampling parameters, repetition history): it is filled on the host and sent with one copy
 * before a pass, so a captured CUDA graph, whose pointers are fixed, sees new values at every replay. */
#ifndef XLKV_BACKEND_CUDA_BUFFERS_H
#define XLKV_BACKEND_CUDA_BUFFERS_H

#include <cuda_runtime.h>
#include <stddef.h>

#include "backend/cuda/cuda_kernels.h"
#include "model/hparams.h"
#include "xlkv.h"

/* Byte offsets inside the input region for a pass of `rows` rows of which the first `sample_rows` are sampled. */
typedef struct xlkv_cuda_step_layout {
    size_t sampling;    /* xlkv_cuda_sampling [sample_rows] */
    size_t history_len; /* int [sample_rows] */
    size_t history;     /* int [sample_rows, XLKV_CUDA_PENALTY_WINDOW] */
    size_t tokens;      /* int [rows] */
    size_t row_seq;     /* int [rows] block-table row of each row */
    size_t row_pos;     /* int [rows] position of each row */
    size_t bytes;       /* bytes to send */
} xlkv_cuda_step_layout;

xlkv_cuda_step_layout xlkv_cuda_step_layout_for(int rows, int sample_rows);

/* What to size the buffers for. */
typedef struct xlkv_cuda_buffer_shape {
    int rows;        /* activation rows: max(decode_rows, prefill rows) */
    int decode_rows; /* the largest (padded) decode batch */
    int logit_rows;  /* rows of fp32 logits computed at once (>= decode_rows) */
    int n_ctx;       /* positions: RoPE tables and the decode attention's key range */
} xlkv_cuda_buffer_shape;

typedef struct xlkv_cuda_buffers {
    void *arena; /* the one device allocation */
    size_t bytes;
    xlkv_cuda_buffer_shape shape;
    void *x;               /* [rows, dim] residual stream */
    void *x_group_in;      /* [rows, dim] input of the cyclic group being iterated */
    void *xb;              /* [rows, dim] normalized */
    void *qkv;             /* [rows, q_dim + 2 kv_dim] fused q | k | v (q only for non-KV layers) */
    void *att;             /* [rows, q_dim] attention output */
    void *proj;            /* [rows, dim] o-proj / down-proj output */
    void *gate_up;         /* [rows, 2 hidden] fused gate | up */
    void *hb;              /* [rows, hidden] SwiGLU output */
    float *logits;         /* [logit_rows, vocab] fp32 */
    float *attn_workspace; /* [xlkv_cuda_attention_decode_workspace(decode_rows, ...)] */
    unsigned *attn_counters; /* [xlkv_cuda_attention_decode_fused_counters(decode_rows, n_kv_heads)], zero between
                                launches of the fused decode attention */
    void *sample_workspace; /* [xlkv_cuda_sample_split_workspace(decode_rows, vocab)] bytes */
    float *rope_cos;       /* [n_ctx, head_dim / 2] */
    float *rope_sin;       /* [n_ctx, head_dim / 2] */
    char *inputs;          /* device input region [inputs_bytes] */
    size_t inputs_bytes;
    int *sampled;          /* [decode_rows] sampled ids: host_sampled's device address (the sampler writes to pinned
                              host memory; the host reads them after synchronizing the stream, no copy) */
    char *host_inputs;     /* pinned mirror of `inputs` */
    int *host_sampled;     /* pinned [decode_rows] */
    /* scoring one sequence (cuda_score.c): targets in, one log-probability and argmax flag out per scored row */
    int *score_targets;              /* device [n_ctx] */
    double *score_log_probs;         /* device [n_ctx] */
    unsigned char *score_is_argmax;  /* device [n_ctx] */
    int *host_score_targets;         /* pinned [n_ctx] */
    double *host_score_log_probs;    /* pinned [n_ctx] */
    unsigned char *host_score_is_argmax; /* pinned [n_ctx] */
} xlkv_cuda_buffers;

/* Device bytes xlkv_cuda_buffers_init will allocate. */
size_t xlkv_cuda_buffers_bytes(const xlkv_hparams *hp, xlkv_dtype dt, const xlkv_cuda_buffer_shape *shape);

/* Allocates everything and uploads the RoPE tables (computed as infer/context.c does). Synchronous. */
xlkv_status xlkv_cuda_buffers_init(xlkv_cuda_buffers *b, const xlkv_hparams *hp, xlkv_dtype dt,
                                   const xlkv_cuda_buffer_shape *shape, cudaStream_t stream);
void xlkv_cuda_buffers_free(xlkv_cuda_buffers *b);

#endif
