/* backend/cuda/train_kernels: the CUDA kernels of the trainer (forward passes that save what their backward needs,
 * the exact backward passes, cross-entropy, AdamW, gradient-norm partials), as C-callable launchers implemented in
 * train_kernels.cu. They mirror train/train_ops.h operation by operation (same conventions, same formulas):
 *   rows are tokens; a batch [B, T] is B * T rows, row r at position r % T;
 *   backward launchers ADD into parameter gradients (dgain, dtable) and into inputs marked "+=", overwrite the rest;
 *   every reduction has a fixed order (no atomics), so the same inputs give the same bits on every run.
 * The bf16 trainer's fused path also uses an RMSNorm backward with the gain gradient folded into the rows pass, a
 * clip coefficient computed on the device, and an AdamW that applies it and writes the bf16 weight shadow.
 * All buffers are fp32 device memory (master weights, activations, gradients; the bf16 trainer's dx16 outputs and
 * the bf16 dy16 of rmsnorm_backward_folded_dy16 excepted); the products themselves are cuBLAS
 * (backend/cuda/train_gpu.c). Every launcher is asynchronous on `stream` (a cudaStream_t passed as void *) and
 * returns 0 or the cudaError_t of the launch. */
#ifndef XLKV_BACKEND_CUDA_TRAIN_KERNELS_H
#define XLKV_BACKEND_CUDA_TRAIN_KERNELS_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#ifdef __cplusplus
extern "C" {
#endif

/* x[n, dim] = table[tokens[r]] */
int xlkv_cuda_train_embedding_forward(float *x, const int *tokens, const float *table, int n, int dim, void *stream);
/* dtable[token] += sum of dx rows holding that token, in row order. `order` lists the rows grouped by token (stably,
 * rows ascending inside a group); group g is order[starts[g] .. starts[g + 1]) and its token is tokens[order[starts[g]]]. */
int xlkv_cuda_train_embedding_backward(float *dtable, const float *dx, const int *tokens, const int *order,
                                       const int *starts, int n_groups, int dim, void *stream);

/* y = x * inv_rms * gain, inv_rms[r] = 1 / sqrt(mean(x^2) + eps) */
int xlkv_cuda_train_rmsnorm_forward(float *y, float *inv_rms, const float *x, const float *gain, int n, int dim,
                                    float eps, void *stream);
/* dx += ...; dgain += column sums of dy * x * inv_rms (rows in chunks of XLKV_CUDA_TRAIN_ROW_CHUNK, each chunk's
 * column sum in row order, then the chunk sums by a fixed warp reduction). `partials` is scratch of
 * ceil(n / chunk) * dim floats. */
enum { XLKV_CUDA_TRAIN_ROW_CHUNK = 64 };
int xlkv_cuda_train_rmsnorm_backward(float *dx, float *dgain, const float *dy, const float *x, const float *inv_rms,
                                     const float *gain, int n, int dim, float *partials, void *stream);
/* The same, also writing dx16[n, dim] = bf16_rne(dx) after the update (the bf16 trainer's operand of the next product;
 * dx16 NULL: not written, exactly xlkv_cuda_train_rmsnorm_backward). */
int xlkv_cuda_train_rmsnorm_backward_bf16(float *dx, uint16_t *dx16, float *dgain, const float *dy, const float *x,
                                          const float *inv_rms, const float *gain, int n, int dim, float *partials,
                                          void *stream);

/* The same result in one pass over dy and x (the bf16 trainer's fused path, XLKV_TRAIN_FUSE): each CTA takes one
 * chunk of XLKV_CUDA_TRAIN_ROW_CHUNK rows, updates dx (and dx16 when not NULL; dx and dx16 bit-identical to
 * xlkv_cuda_train_rmsnorm_backward_bf16) and accumulates its chunk's column sums of dy * x * inv_rms in shared memory
 * (16 warps, each its rows in order, then the warps in order) into `partials` (same size as above); the chunk sums are
 * added as above. dgain differs from the two-pass launcher only in fp32 summation order inside a chunk; the order is
 * fixed, so the result is deterministic. Widths whose 16 x dim floats do not fit one block's shared memory (3,600 columns on
 * an H100) take the two-pass path. Bad sizes (n < 0, dim <= 0) return cudaErrorInvalidValue. */
int xlkv_cuda_train_rmsnorm_backward_folded(float *dx, uint16_t *dx16, float *dgain, const float *dy, const float *x,
                                            const float *inv_rms, const float *gain, int n, int dim, float *partials,
                                            void *stream);
/* The same with a bf16 dy16[n, dim] (the fused path's dX products written in bf16), widened to fp32 as it is read:
 * the same bits as xlkv_cuda_train_rmsnorm_backward_folded given dy = float(dy16). */
int xlkv_cuda_train_rmsnorm_backward_folded_dy16(float *dx, uint16_t *dx16, float *dgain, const uint16_t *dy16,
                                                 const float *x, const float *inv_rms, const float *gain, int n,
                                                 int dim, float *partials, void *stream);
/* The same with dx written, not added to (dx = the input gradient; its old contents are not read): the first
 * contribution to dx (the bf16 trainer's final norm), without a clearing pass. The same bits as clearing dx, then
 * xlkv_cuda_train_rmsnorm_backward_folded_dy16 (the rows held in registers take dx as +0; other widths and the
 * two-pass path clear it first). */
int xlkv_cuda_train_rmsnorm_backward_folded_dy16_set(float *dx, uint16_t *dx16, float *dgain, const uint16_t *dy16,
                                                     const float *x, const float *inv_rms, const float *gain, int n,
                                                     int dim, float *partials, void *stream);

/* In-place interleaved RoPE rotation (direction +1 forward, -1 backward); tables [seq, head_dim / 2]. */
int xlkv_cuda_train_rope(float *x, int n, int seq, int n_heads, int head_dim, const float *cos_table,
                         const float *sin_table, float direction, void *stream);

/* h = silu(gate) * up; backward overwrites dgate, dup. */
int xlkv_cuda_train_swiglu_forward(float *h, const float *gate, const float *up, size_t n, void *stream);
int xlkv_cuda_train_swiglu_backward(float *dgate, float *dup, const float *dh, const float *gate, const float *up,
                                    size_t n, void *stream);

/* y += x (n elements) */
int xlkv_cuda_train_add(float *y, const float *x, size_t n, void *stream);
/* x *= scale */
int xlkv_cuda_train_scale(float *x, float scale, size_t n, void *stream);

/* Attention of SEMANTICS.md section 2 (as xlkv_train_attention_shape): query t sees key p iff p <= t (p < t when
 * mask_diagonal) and t - p < window (0 = unlimited); nothing visible -> zero output and lse = -inf. Any head_dim
 * <= 256 (a launch with a larger one returns cudaErrorInvalidValue). */
typedef struct xlkv_cuda_train_attention_shape {
    int batch, seq, n_heads, n_kv_heads, head_dim, window;
    bool mask_diagonal;
} xlkv_cuda_train_attention_shape;
int xlkv_cuda_train_attention_forward(float *out, float *lse, const float *q, const float *k, const float *v,
                                      const xlkv_cuda_train_attention_shape *shape, void *stream);
/* dq = ...; delta[B*T, n_heads] = dout . out (scratch, written here); dk += ..., dv += ... (both NULL when K/V are
 * constants; then only dq is computed). */
int xlkv_cuda_train_attention_backward(float *dq, float *dk, float *dv, float *delta, const float *dout,
                                       const float *out, const float *lse, const float *q, const float *k,
                                       const float *v, const xlkv_cuda_train_attention_shape *shape, void *stream);

/* The pieces of the matrix-product attention (backend/cuda/train_gpu.c runs the products with cuBLAS over a score
 * buffer laid out [n_heads][batch][seq][seq], row (h, b, t) holding the scaled scores of query t against keys 0..T-1):
 *   softmax_rows: masked softmax of every row in place (entries a query does not see become 0); with
 *                 compute_lse, writes lse[(b*T + t) * n_heads + h] (-inf when nothing is visible), else uses it;
 *   softmax_backward_rows: dscores = probs * (dprobs - delta) * scale in place over dprobs;
 *   attention_delta: delta[row * n_heads + h] = dout . out over the head's dims. */
int xlkv_cuda_train_softmax_rows(float *scores, float *lse, const xlkv_cuda_train_attention_shape *shape,
                                 bool compute_lse, void *stream);
int xlkv_cuda_train_softmax_backward_rows(float *dprobs, const float *probs, const float *delta,
                                          const xlkv_cuda_train_attention_shape *shape, void *stream);
int xlkv_cuda_train_attention_delta(float *delta, const float *dout, const float *out,
                                    const xlkv_cuda_train_attention_shape *shape, void *stream);

/* Softmax of logits[n, vocab] in place (probabilities) and row_loss[r] = -log p(target) in double. */
int xlkv_cuda_train_cross_entropy_forward(float *probs, double *row_loss, const int *targets, int n, int vocab,
                                          void *stream);
/* dlogits = (probs - onehot(target)) * scale, in place over probs. */
int xlkv_cuda_train_cross_entropy_backward(float *probs, const int *targets, int n, int vocab, float scale,
                                           void *stream);

/* One AdamW update of n parameters (see train/optimizer.h; c1, c2 the bias corrections as fp32). */
int xlkv_cuda_train_adamw(float *w, const float *g, float *m, float *v, size_t n, float lr, float beta1, float beta2,
                          float eps, float decay, float c1, float c2, void *stream);
/* The bf16 trainer's AdamW (XLKV_TRAIN_FUSE): g is multiplied by *coef (a device float, the clip coefficient below; the
 * gradient buffer is not changed), then the update of xlkv_cuda_train_adamw, and w16[i] = bf16_rne(w[i]) (the bf16
 * weight shadow) in the same pass; float4 where w, g, m, v are 16-byte and w16 8-byte aligned. The same bits as
 * xlkv_cuda_train_scale (when clipping) + xlkv_cuda_train_adamw + a bf16 copy of w (tested against them). NULL pointers
 * are refused. It is xlkv_cuda_train_adamw_bf16_runs with one run. */
int xlkv_cuda_train_adamw_bf16(float *w, uint16_t *w16, const float *g, float *m, float *v, size_t n,
                               const float *coef, float lr, float beta1, float beta2, float eps, float decay, float c1,
                               float c2, void *stream);
/* The same update over several runs of parameters in one launch, each run with its own decay (the optimizer step's
 * tensors: matrices decayed, norm gains and the embedding not): run k covers floats [run_ends[k - 1], run_ends[k]) of
 * w, w16, g, m, v (run_ends[-1] = 0; run_ends increasing, the last one n) with decay run_decays[k]. The same bits
 * as one xlkv_cuda_train_adamw_bf16 call per run (the same per-element update; runs need not be multiples of four: a
 * group of four that straddles two runs takes each element's own decay). More than XLKV_CUDA_TRAIN_ADAMW_RUNS runs
 * take several launches. Bad tables (runs <= 0, ends not increasing) and NULL pointers are refused. */
enum { XLKV_CUDA_TRAIN_ADAMW_RUNS = 64 };
int xlkv_cuda_train_adamw_bf16_runs(float *w, uint16_t *w16, const float *g, float *m, float *v,
                                    const size_t *run_ends, const float *run_decays, int runs, const float *coef,
                                    float lr, float beta1, float beta2, float eps, float c1, float c2, void *stream);
/* *norm = sqrt(sum of partials[0 .. chunks), added in order in double) and *coef = (float)(max_norm / (norm + 1e-6))
 * when max_norm > 0 and norm > max_norm, else 1: the host's clipping decision, on the device (no round trip). */
int xlkv_cuda_train_clip_coefficient(float *coef, double *norm, const double *partials, size_t chunks,
                                     double max_norm, void *stream);
/* partials[c] = sum over chunk c (XLKV_CUDA_TRAIN_NORM_CHUNK elements, the last one shorter) of g^2, in double. */
enum { XLKV_CUDA_TRAIN_NORM_CHUNK = 1 << 16 };
int xlkv_cuda_train_sum_squares(double *partials, const float *g, size_t n, void *stream);

#ifdef __cplusplus
}
#endif

#endif
