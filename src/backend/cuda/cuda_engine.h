/* backend/cuda/cuda_engine: the state of the CUDA engine, shared by its files (not a public header).
 *
 * cuda_engine.c owns the backend table, the sequences and the scheduling of a step; cuda_executor.c owns the passes
 * (the plan for a prefill chunk, the batched decode pass); the other files own one resource each (weights, paged KV
 * pool, buffers, cuBLAS, graphs). Sequence `slot` = its row in the KV block tables = its index in `seqs`. */
#ifndef XLKV_BACKEND_CUDA_ENGINE_H
#define XLKV_BACKEND_CUDA_ENGINE_H

#include <cuda_runtime.h>
#include <stdbool.h>
#include <stdint.h>

#include "backend/cuda/cuda_buffers.h"
#include "backend/cuda/cuda_gemm.h"
#include "backend/cuda/cuda_graphs.h"
#include "backend/cuda/cuda_kernels.h"
#include "backend/cuda/cuda_kv_pool.h"
#include "backend/cuda/cuda_weights.h"
#include "infer/engine.h"

/* The most rows a bf16 pass runs through the fused few-row products by default (params.cuda_few_rows_max 0); larger
 * passes take cuBLAS. Measured on the H100 (512+512, tinyllama shape, standard map; bench/results/
 * few-rows-h100-64722f3.log), tokens/s fused / cuBLAS: 2 rows 1,660 / 1,440, 4 rows 2,590 / 2,490, 5 rows
 * 2,765 / 2,845, 6 rows 2,958 / 3,180, 8 rows 3,296 / 3,815 (why the few-row kernels fall behind from 5 rows on was
 * not profiled). */
enum { XLKV_CUDA_FEW_ROWS_DEFAULT = 4 };

typedef enum xlkv_cuda_seq_state {
    XLKV_CUDA_SEQ_FREE = 0, /* slot unused */
    XLKV_CUDA_SEQ_EMPTY,    /* added without a prompt: only forward_logits runs it */
    XLKV_CUDA_SEQ_PENDING,  /* added, prefilled at the next step */
    XLKV_CUDA_SEQ_RUNNING,  /* decoding one token per step */
    XLKV_CUDA_SEQ_FINISHED, /* done; keeps its blocks until removed */
} xlkv_cuda_seq_state;

typedef struct xlkv_cuda_sequence {
    int id;
    xlkv_cuda_seq_state state;
    int *prompt; /* [n_prompt], freed after prefill */
    int n_prompt;
    int max_new_tokens;            /* < 0: until an end token or a full context */
    xlkv_cuda_sampling sampling;   /* step is set per draw */
    int penalty_window;            /* min(repeat_last_n, XLKV_CUDA_PENALTY_WINDOW) */
    int n_past;                    /* positions in the cache */
    int n_generated;               /* tokens emitted (end token excluded) */
    int next_token;                /* the last sampled token, fed at position n_past by the next decode */
    int recent[XLKV_CUDA_PENALTY_WINDOW]; /* last tokens (prompt and generated), oldest first */
    int n_recent;
} xlkv_cuda_sequence;

typedef struct xlkv_cuda_engine {
    const xlkv_model *model;
    xlkv_engine_params params; /* resolved: no zeros left where a default applies */
    xlkv_dtype dt;
    size_t elem_bytes;
    int n_ctx;
    int iterations;  /* m + b for cyclic groups */
    int prefill_rows; /* most tokens of a plan chunk */
    int decode_rows;  /* bucket(max_batch) */
    int max_seqs;     /* sequence slots (running, finished and empty) */
    cudaStream_t stream;
    xlkv_cuda_gemm gemm;
    xlkv_cuda_weights weights;
    xlkv_cuda_buffers buf;
    xlkv_cuda_kv_pool kv;
    xlkv_cuda_graph_cache graphs;
    xlkv_cuda_sequence *seqs; /* [max_seqs] */
    int next_id;
    bool broken; /* a device failure happened: refuse further work */
} xlkv_cuda_engine;

/* ---- cuda_executor.c ---- */

/* Where a prefill's logits go. */
typedef enum xlkv_cuda_logits_kind {
    XLKV_CUDA_LOGITS_LAST = 0, /* only the last row's, left in buf.logits row 0 (generation samples from it) */
    XLKV_CUDA_LOGITS_HOST,     /* every row's, copied to host[n, vocab] (forward_logits) */
    XLKV_CUDA_LOGITS_SCORE,    /* rows first_row .. n-1 scored on the device (xlkv_cuda_score_rows), nothing copied */
} xlkv_cuda_logits_kind;

typedef struct xlkv_cuda_logits_sink {
    xlkv_cuda_logits_kind kind;
    float *host;              /* HOST: [n, vocab] */
    int first_row;            /* SCORE: the first scored row of the prefill (0 <= first_row < n) */
    const int *targets;       /* SCORE: device [n - first_row]; entry k is the target of row first_row + k */
    double *log_probs;        /* SCORE: device [n - first_row] out */
    unsigned char *is_argmax; /* SCORE: device [n - first_row] out */
} xlkv_cuda_logits_sink;

/* Runs tokens[0..n) of sequence `slot` at positions pos0.. through the model (the plan in chunks of prefill_rows, or
 * one token at a time when the prefill mode says so) and delivers the logits to `sink` (NULL = LOGITS_LAST); logits
 * are computed only for the rows the sink wants, in pieces of buf.shape.logit_rows. Returns with work possibly pending
 * on the stream. */
xlkv_status xlkv_cuda_prefill(xlkv_cuda_engine *e, int slot, const int *tokens, int n, int pos0,
                              const xlkv_cuda_logits_sink *sink);

/* One sequence's rows in a prefill pass: rows [row0, row0 + n) hold its tokens at positions pos0 .. pos0 + n - 1. */
typedef struct xlkv_cuda_segment {
    int slot; /* the sequence's table row */
    int row0;
    int n;
    int pos0;
} xlkv_cuda_segment;

/* Varlen prefill: the whole prompts of `count` sequences (segments[i], consecutive from row 0, n_rows rows in all, each
 * at most prefill_rows) as ONE plan pass; each segment's last row is sampled into buf.sampled[i]. The caller has
 * filled the input region laid out by xlkv_cuda_step_layout_for(n_rows + count, count): tokens, table rows and
 * positions of rows 0 .. n_rows - 1, the index of segment i's last row in tokens[n_rows + i], and sampling row i for
 * segment i. Needs count <= buf.shape.decode_rows, n_rows + count <= buf.shape.rows and a map without cyclic groups
 * (XLKV_E_UNSUPPORTED: each sequence's chunk is iterated alone). Returns with work pending on the stream. */
xlkv_status xlkv_cuda_prefill_segments(xlkv_cuda_engine *e, const xlkv_cuda_segment *segments, int count,
                                       int n_rows);

/* True when a prompt of n tokens is prefilled token by token (sequential mode: the mode says so, or a cyclic map and
 * n <= iterations under the default mode). */
bool xlkv_cuda_prefills_sequentially(const xlkv_cuda_engine *e, int n);

/* The batched decode pass over the input region laid out for `bucket` rows (embedding .. sampling into buf.sampled),
 * as a CUDA-graph pass (user = the engine). */
xlkv_status xlkv_cuda_decode_pass(void *engine, int bucket);

/* Samples one token from buf.logits row 0 with the sampling rows already in the input region laid out for
 * (0 rows, 1 sample row) into buf.sampled[0]. */
xlkv_status xlkv_cuda_sample_first(xlkv_cuda_engine *e);

/* ---- cuda_score.c ---- */

/* Scores one request (infer/token_scores.h) on sequence `slot`, which holds nothing and has KV blocks for req->n
 * positions: targets uploaded once, the prefill scores rows first_row .. n-1 on the device, the log-probabilities and
 * flags copied back once; synchronous. req->n <= n_ctx. */
xlkv_status xlkv_cuda_score_sequence(xlkv_cuda_engine *e, int slot, const xlkv_score_request *req);

/* Makes the host input mirror writable: waits until the stream has consumed the previous copy. */
xlkv_status xlkv_cuda_inputs_begin(xlkv_cuda_engine *e);
/* Sends the first `bytes` of the input mirror to the device (asynchronous, on the stream). */
xlkv_status xlkv_cuda_inputs_send(xlkv_cuda_engine *e, size_t bytes);

#endif
