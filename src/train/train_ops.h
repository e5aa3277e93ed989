/* train/train_ops: forward passes that save what their backward needs, and the exact backward passes, of every
 * operation of the Llama block, in fp32 on the CPU (OpenMP; BLAS sgemm for products). Plain buffers and shapes, no
 * model knowledge: the layer map reaches attention only as "mask the diagonal, window W" (SEMANTICS.md section 2).
 *
 * Conventions: rows are tokens; a batch [B, T] is B * T rows, row r at position r % T. Backward functions ADD into
 * parameter gradients (dw, dgain, dtable: gradient accumulation) and into input gradients marked "+=", and overwrite
 * the others. Every function is deterministic for a given thread count (no atomics; fixed reduction orders). */
#ifndef XLKV_TRAIN_TRAIN_OPS_H
#define XLKV_TRAIN_TRAIN_OPS_H

#include <stdbool.h>
#include <stddef.h>

/* y[n, out] = x[n, in] . w[out, in]^T */
void xlkv_train_matmul_forward(float *y, const float *x, const float *w, int n, int in, int out);
/* dx[n, in] += dy[n, out] . w (dx may be NULL); dw[out, in] += dy^T . x */
void xlkv_train_matmul_backward(float *dx, float *dw, const float *dy, const float *x, const float *w, int n, int in,
                                int out);

/* y[n, dim] = x * inv_rms * gain; saves inv_rms[n] = 1 / sqrt(mean(x^2) + eps) */
void xlkv_train_rmsnorm_forward(float *y, float *inv_rms, const float *x, const float *gain, int n, int dim, float eps);
/* dx[n, dim] += ...; dgain[dim] += sum over rows of dy * x * inv_rms */
void xlkv_train_rmsnorm_backward(float *dx, float *dgain, const float *dy, const float *x, const float *inv_rms,
                                 const float *gain, int n, int dim);

/* Rotates x[n, n_heads * head_dim] in place, interleaved pairs (2i, 2i+1), row r at position r % seq; tables are
 * [seq, head_dim / 2]. The backward is the inverse rotation (the transpose of a rotation), also in place. */
void xlkv_train_rope_forward(float *x, int n, int seq, int n_heads, int head_dim, const float *cos_table,
                             const float *sin_table);
void xlkv_train_rope_backward(float *dx, int n, int seq, int n_heads, int head_dim, const float *cos_table,
                              const float *sin_table);

/* Attention of SEMANTICS.md section 2 over a batch of `batch` sequences of `seq` positions: query t sees key p iff
 * p <= t (p < t when mask_diagonal) and t - p < window (window 0 = unlimited); no visible key -> zero output. */
typedef struct xlkv_train_attention_shape {
    int batch, seq;
    int n_heads, n_kv_heads, head_dim; /* query head h reads KV head h / (n_heads / n_kv_heads) */
    int window;
    bool mask_diagonal;
} xlkv_train_attention_shape;
/* out[B*T, n_heads*head_dim], lse[B*T, n_heads] (log-sum-exp of the scaled scores; -inf when nothing is visible) from
 * q[B*T, n_heads*head_dim], k, v[B*T, n_kv_heads*head_dim] (RoPE applied). */
void xlkv_train_attention_forward(float *out, float *lse, const float *q, const float *k, const float *v,
                                  const xlkv_train_attention_shape *shape);
/* dq = ...; dk += ..., dv += ... (either may be NULL when K/V are constants). Recomputes the probabilities from lse
 * (nothing of size T x T is saved). */
void xlkv_train_attention_backward(float *dq, float *dk, float *dv, const float *dout, const float *out,
                                   const float *lse, const float *q, const float *k, const float *v,
                                   const xlkv_train_attention_shape *shape);

/* h[i] = silu(gate[i]) * up[i]; backward: dgate, dup = (overwritten) */
void xlkv_train_swiglu_forward(float *h, const float *gate, const float *up, size_t n);
void xlkv_train_swiglu_backward(float *dgate, float *dup, const float *dh, const float *gate, const float *up,
                                size_t n);

/* x[n, dim] = table[tokens[r]]; backward: dtable[tokens[r]] += dx[r] */
void xlkv_train_embedding_forward(float *x, const int *tokens, const float *table, int n, int dim);
void xlkv_train_embedding_backward(float *dtable, const float *dx, const int *tokens, int n, int dim);

/* Turns logits[n, vocab] into probabilities in place and returns the summed cross-entropy (double) of targets[n]. */
double xlkv_train_cross_entropy_forward(float *probs, const int *targets, int n, int vocab);
/* dlogits[n, vocab] = (probs - onehot(targets)) * scale; may alias probs (in place). */
void xlkv_train_cross_entropy_backward(float *dlogits, const float *probs, const int *targets, int n, int vocab,
                                       float scale);

#endif
