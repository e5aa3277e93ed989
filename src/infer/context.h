/* infer/context: one sequence being run by a model: its KV cache, its position, and the activations of a forward
 * pass (llama2.c's RunState), plus the plan executor that fills them (infer/forward.c).
 *
 * Prefill follows SEMANTICS.md section 3: acyclic runs once; each cyclic group iterated m + b times over the whole
 * chunk, from the same input, targets zeroed before the first iteration; the sequential mode (one token at a time,
 * exact) for chunks of at most m + b tokens or when asked. A chunk continues the cache where it stands. */
#ifndef XLKV_INFER_CONTEXT_H
#define XLKV_INFER_CONTEXT_H

#include <stdbool.h>

#include "backend/backend.h"
#include "kv/kv_cache.h"
#include "model/model.h"
#include "xlkv.h"

/* How a chunk of several tokens is run. AUTO follows SEMANTICS.md section 3: the plan, except sequential for a map
 * with cyclic groups when the chunk has at most m + b tokens. */
typedef enum xlkv_prefill_mode {
    XLKV_PREFILL_AUTO = 0,
    XLKV_PREFILL_SEQUENTIAL, /* one token at a time (exact) */
    XLKV_PREFILL_PLAN,       /* the iteration plan whatever the chunk length (tests of the exactness property) */
} xlkv_prefill_mode;

typedef struct xlkv_context_params {
    int n_ctx;          /* positions the cache holds; 0 = the model's max_seq_len */
    int n_threads;      /* 0 = all cores */
    xlkv_prefill_mode prefill_mode;
    int iterations;     /* m + b for cyclic groups; 0 = the model's forward_passes + backward_passes */
} xlkv_context_params;

struct xlkv_context {
    const xlkv_model *model;
    const xlkv_backend_ops *ops;
    xlkv_context_params params;
    xlkv_kv_cache cache;
    int n_past; /* positions already in the cache */
    /* RoPE tables [n_ctx, head_dim / 2] */
    float *rope_cos;
    float *rope_sin;
    /* activations for a chunk of up to `capacity` tokens */
    int capacity;
    float *x;           /* [capacity, dim] residual stream */
    float *x_group_in;  /* [capacity, dim] input of the cyclic group being iterated */
    float *xb;          /* [capacity, dim] normalized */
    float *q;           /* [capacity, n_heads * head_dim] */
    float *k;           /* [capacity, kv_dim] */
    float *v;           /* [capacity, kv_dim] */
    float *att;         /* [capacity, n_heads * head_dim] */
    float *proj;        /* [capacity, dim] */
    float *hb;          /* [capacity, hidden_dim] */
    float *hb2;         /* [capacity, hidden_dim] */
    float *logits;      /* [logit_rows, vocab] */
    int logit_rows;
};

xlkv_context_params xlkv_context_default_params(void);
xlkv_status xlkv_context_create(const xlkv_model *model, const xlkv_context_params *params, xlkv_context **out);
void xlkv_context_free(xlkv_context *ctx);

/* Drops every position: the next forward starts at position 0. */
void xlkv_context_reset(xlkv_context *ctx);
/* Drops positions >= n_past (keeps a prefix of the cache, e.g. to rewind a conversation). */
xlkv_status xlkv_context_truncate(xlkv_context *ctx, int n_past);

/* Runs tokens[0..n) at positions n_past .. n_past+n-1, appends their KV to the cache and advances n_past.
 * If all_logits, *out_logits receives [n, vocab] (row r = prediction after token r), else [1, vocab] for the last.
 * The logits buffer belongs to the context and is valid until the next call. */
xlkv_status xlkv_context_forward(xlkv_context *ctx, const int *tokens, int n, bool all_logits, const float **out_logits);

/* Bytes of KV cache this context holds (only KV layers own storage). */
size_t xlkv_context_kv_bytes(const xlkv_context *ctx);

#endif
