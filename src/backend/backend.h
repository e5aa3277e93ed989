/* backend/backend: the table of operations a compute backend provides to the plan executor.
 *
 * Backends receive plain buffers and shapes; the layer map is interpreted by the executor, which tells attention only
 * "which slot, which positions, is the diagonal masked, what window". A NULL entry means "not supported".
 * The CPU backend (backend/cpu) is the reference every other backend is tested against. */
#ifndef XLKV_BACKEND_BACKEND_H
#define XLKV_BACKEND_BACKEND_H

#include <stdbool.h>
#include <stddef.h>

/* The attention rule of SEMANTICS.md section 2 for one layer over a chunk of n query positions pos0 .. pos0+n-1:
 * query position t sees key positions p with p <= t (p < t if mask_diagonal) and t - p < window (window 0 = none). */
typedef struct xlkv_attention_args {
    int n_heads;
    int n_kv_heads; /* query head h reads KV head h / (n_heads / n_kv_heads) */
    int head_dim;
    int window;         /* 0 = full attention */
    bool mask_diagonal; /* cyclic source or force_nodiag */
    const float *k;     /* [n_ctx, n_kv_heads * head_dim] the source slot's keys (RoPE applied) */
    const float *v;     /* [n_ctx, n_kv_heads * head_dim] */
} xlkv_attention_args;

typedef struct xlkv_backend_ops {
    const char *name;
    /* y[n, out] = x[n, in] . w[out, in]^T */
    void (*matmul)(float *y, const float *x, const float *w, int n, int in, int out);
    /* y[n, dim] = x / rms(x) * gain, per row */
    void (*rmsnorm)(float *y, const float *x, const float *gain, int n, int dim, float eps);
    /* rotates x[n, n_heads * head_dim] in place; row r is at position pos0 + r; interleaved pairs (2i, 2i+1);
     * cos/sin tables are [positions, head_dim / 2] */
    void (*rope)(float *x, int n, int n_heads, int head_dim, int pos0, const float *cos_table, const float *sin_table);
    /* out[n, n_heads * head_dim] from q[n, n_heads * head_dim] (RoPE applied); zero where nothing is visible */
    void (*attention)(float *out, const float *q, int n, int pos0, const xlkv_attention_args *args);
    /* gate[i] = silu(gate[i]) * up[i] */
    void (*swiglu)(float *gate, const float *up, size_t n);
    /* x[i] += y[i] */
    void (*add)(float *x, const float *y, size_t n);
} xlkv_backend_ops;

const xlkv_backend_ops *xlkv_backend_cpu(void);

#endif
