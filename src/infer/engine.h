/* infer/engine: many sequences generated together (batched generation with continuous batching), on any backend.
 *
 * Owns the scheduling contract that generate --batch, the benchmarks and the server rely on:
 *   - sequences are added and removed between steps; a removed sequence frees its KV storage at once;
 *   - xlkv_engine_step() first prefills every sequence added since the last step (through the iteration plan, as
 *     infer/forward.c does), then decodes one token for every running sequence, and reports each new token;
 *   - KV storage is a pool of fixed-size blocks that only KV layers occupy (paged on CUDA), so under a sharing map the
 *     same memory holds proportionally more sequences; xlkv_engine_add() fails with XLKV_E_CAPACITY when the pool
 *     cannot hold the new sequence's prompt + max_new_tokens, or when max_batch sequences are running;
 *   - sampling is per sequence and deterministic in (seed, step): a sequence produces the same tokens whether it runs
 *     alone or in a batch.
 * Backends: "cpu" (infer/engine_cpu.c: one xlkv_context per sequence) and "cuda" (backend/cuda/cuda_engine.c). */
#ifndef XLKV_INFER_ENGINE_H
#define XLKV_INFER_ENGINE_H

#include <stdbool.h>
#include <stddef.h>

#include "infer/context.h"
#include "infer/sampler.h"
#include "infer/token_scores.h"
#include "model/model.h"
#include "xlkv.h"

typedef struct xlkv_engine xlkv_engine;

/* XLKV_ENGINE_DTYPE_AUTO (the default) is resolved by xlkv_engine_create: bf16 on cuda, f32 on cpu. Backends always
 * receive F32 or BF16. */
typedef enum xlkv_engine_dtype {
    XLKV_ENGINE_DTYPE_AUTO = -1,
    XLKV_ENGINE_F32 = 0,
    XLKV_ENGINE_BF16 = 1,
} xlkv_engine_dtype;

typedef struct xlkv_engine_params {
    const char *device;        /* "cpu" (default) or "cuda" */
    xlkv_engine_dtype dtype;   /* CUDA: bf16 (default there) or f32; CPU: f32 only */
    int max_batch;             /* most sequences running at once (default 1) */
    int n_ctx;                 /* most positions per sequence (0 = the model's max_seq_len) */
    int block_size;            /* positions per KV block (default 16) */
    size_t kv_pool_bytes;      /* KV pool size; 0 = enough for max_batch full sequences, or what memory_budget
                                  leaves after weights and activations when that is set */
    size_t memory_budget_bytes;/* CUDA: device memory the engine may use in all (0 = no limit beyond the card) */
    int iterations;            /* m + b for cyclic groups (0 = the model's) */
    xlkv_prefill_mode prefill_mode;
    int n_threads;             /* CPU threads (0 = all cores) */
    bool cuda_graphs;          /* capture the decode step in CUDA graphs (default true) */
    int max_prefill_tokens;    /* CUDA: activation rows reserved for prefill chunks (0 = n_ctx) */
    bool ignore_end_tokens;    /* end tokens are ordinary tokens: a sequence runs to max_new_tokens or a full context
                                  (the throughput protocol: exactly `gen` tokens per sequence); default false */
    bool cuda_unfused;         /* CUDA: few-row bf16 passes keep the separate kernels instead of the fused products
                                  and the chunked sampler (A/B timing and the fused-vs-unfused test); default false */
    bool cuda_no_varlen;       /* CUDA: prefill the plan-mode prompts of a step one by one instead of together in one
                                  pass (A/B timing and tests; also the environment XLKV_CUDA_VARLEN=0); default false */
    bool cuda_unfused_decode_attention; /* CUDA: decode rows keep rope_kv_write + the two-launch decode attention
                                  instead of the one fused launch (A/B timing; also the environment
                                  XLKV_DECODE_FUSED=0; cuda_unfused implies it); default false */
    int cuda_few_rows_max;     /* CUDA bf16: passes of at most this many rows run the fused few-row products (1 .. 8,
                                  the kernels' limit; larger values are taken as 8); larger passes take cuBLAS. 0 = the
                                  default, 4 (cuBLAS is faster from 5 rows on: docs/CUDA.md); -1 = cuBLAS for every
                                  pass; also the environment XLKV_GEMV_MAX_ROWS (A/B timing) */
} xlkv_engine_params;

/* device "cpu", dtype AUTO, max_batch 1, n_ctx 0, block_size 16, pools 0, iterations 0, prefill AUTO, threads 0,
 * cuda_graphs true, max_prefill_tokens 0, ignore_end_tokens false. */
xlkv_engine_params xlkv_engine_default_params(void);

/* One new token of one sequence. finished: the sequence ended with this step (end token sampled — then `token` is
 * that end token and is not part of the text —, max_new_tokens reached, or its context is full); it stays allocated
 * until xlkv_engine_remove(). */
typedef struct xlkv_engine_event {
    int seq;
    int token;
    bool finished;
    bool end_token;
} xlkv_engine_event;

typedef struct xlkv_engine_stats {
    int running;              /* sequences added and not finished */
    int allocated;            /* sequences not yet removed */
    size_t kv_blocks_total;
    size_t kv_blocks_used;
    size_t kv_bytes_per_token;/* of this map and dtype */
    size_t kv_pool_bytes;
    size_t device_bytes;      /* weights + activations + KV pool (CUDA), host bytes on CPU */
} xlkv_engine_stats;

/* Validates params (unknown or absent device, bf16 on cpu, max_batch < 1, ... fail with a message), resolves the
 * defaults (device cpu, dtype, n_ctx = the model's max_seq_len, block_size 16, iterations = the model's m + b) and
 * hands the resolved params to the device's backend. params NULL = the defaults. */
xlkv_status xlkv_engine_create(const xlkv_model *model, const xlkv_engine_params *params, xlkv_engine **out);
void xlkv_engine_free(xlkv_engine *engine);

/* Adds a sequence with its prompt (n_prompt >= 1, ids inside the vocabulary; max_new_tokens >= 1; sampling NULL =
 * greedy); it is prefilled at the next step. *out_seq receives a non-negative id, unique among the sequences not yet
 * removed. At most max_batch sequences generate at once (the CPU backend also counts finished sequences that are not
 * removed yet: ids there are slots in [0, max_batch), reused after remove); finished sequences hold their KV blocks
 * until removed. */
xlkv_status xlkv_engine_add(xlkv_engine *engine, const int *prompt, int n_prompt, int max_new_tokens,
                            const xlkv_sampler_params *sampling, int *out_seq);
/* Frees a sequence (finished or not) and its KV blocks. */
xlkv_status xlkv_engine_remove(xlkv_engine *engine, int seq);
/* Prefills pending sequences, decodes one token for every running one; writes one event per such sequence (prefill
 * events first). Fails with XLKV_E_INVALID, doing nothing, when `capacity` is smaller than that number. */
xlkv_status xlkv_engine_step(xlkv_engine *engine, xlkv_engine_event *events, int capacity, int *out_n_events);
void xlkv_engine_get_stats(const xlkv_engine *engine, xlkv_engine_stats *out);

/* Test path: runs tokens[0..n) as one chunk of sequence `seq` (after whatever it holds; a fresh sequence is added
 * with n_prompt = 0 through xlkv_engine_add_empty) and copies the fp32 logits of every row to host logits[n, vocab].
 * The sequence must not be generating (pending or running): one from add_empty, or a finished one. An empty sequence
 * takes KV blocks as its positions grow (XLKV_E_CAPACITY when the pool or n_ctx is exhausted); step() skips it. */
xlkv_status xlkv_engine_add_empty(xlkv_engine *engine, int *out_seq);
xlkv_status xlkv_engine_forward_logits(xlkv_engine *engine, int seq, const int *tokens, int n, float *logits);

/* Scores `count` requests (infer/token_scores.h), each as a fresh sequence of its own (added and removed here), with
 * no sequence of the engine's disturbed. A backend with a `score` entry scores on the device (and may run the requests
 * together); otherwise each request runs through forward_logits and is scored on the host. The results of a request do
 * not depend on the others in the call. */
xlkv_status xlkv_engine_score(xlkv_engine *engine, xlkv_score_request *requests, int count);

/* The backend table behind the engine (one per device). */
typedef struct xlkv_engine_backend {
    const char *name;
    xlkv_status (*create)(const xlkv_model *model, const xlkv_engine_params *params, void **state);
    void (*destroy)(void *state);
    xlkv_status (*add)(void *state, const int *prompt, int n_prompt, int max_new_tokens,
                       const xlkv_sampler_params *sampling, int *out_seq);
    xlkv_status (*remove)(void *state, int seq);
    xlkv_status (*step)(void *state, xlkv_engine_event *events, int capacity, int *out_n_events);
    void (*get_stats)(const void *state, xlkv_engine_stats *out);
    xlkv_status (*forward_logits)(void *state, int seq, const int *tokens, int n, float *logits);
    /* optional (NULL: the dispatcher scores through forward_logits); requests are validated */
    xlkv_status (*score)(void *state, xlkv_score_request *requests, int count);
} xlkv_engine_backend;

const xlkv_engine_backend *xlkv_engine_backend_cpu(void);
const xlkv_engine_backend *xlkv_engine_backend_cuda(void); /* NULL when built without CUDA */

#endif
