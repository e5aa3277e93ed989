/* backend/cuda/train_attention_flash: the trainer's tensor-core attention (FlashAttention-2 style, bf16 mma.sync with
 * fp32 accumulation), the default attention of the bf16 trainer (backend/cuda/train_gpu.c). Same semantics, buffers
 * and conventions as xlkv_cuda_train_attention_forward / _backward (train_kernels.h): fp32 q [B*T, H*hd],
 * k, v [B*T, KVH*hd], out [B*T, H*hd], lse [B*T, H] in natural-log units of the scaled scores (-inf and a zero output
 * row when a query sees nothing); dq overwritten, dk/dv ADDED to (both NULL: constant K/V, only dq; the _opts
 * call can overwrite them instead); delta [B*T, H] receives rowsum(dO * O) (NULL allowed: not written); out is
 * 16-byte aligned too (the dQ kernel reads it as float4). Inputs are rounded to bf16 when staged into shared memory, so results match the
 * exact fp32 kernels to bf16 accuracy (not to the bit); every output element has one writer and a fixed summation
 * order (no atomics): the same inputs give the same bits on every run.
 *
 * Supported: head_dim 64 or 128 and every buffer 16-byte aligned; anything else returns cudaErrorInvalidValue (ask
 * xlkv_cuda_train_attention_flash_supported first).
 *
 * workspace: a device buffer of xlkv_cuda_train_attention_flash_workspace_bytes(shape) bytes (16-byte aligned,
 * contents free to overwrite; NULL is refused) that receives bf16 copies of the inputs once per call, from which the
 * kernels stream tiles with cp.async and double buffering.
 *
 * The _rope variants fold the trainer's RoPE into that staging: q and k come unrotated, and the kernels rotate every
 * row of Q (forward, dQ) and K (its bf16 pre-pass, forward and backward) with the tables given, position = row % seq,
 * by rope_pair (train_kernels_common.cuh) before rounding: every bf16 value the kernels see, and so every output,
 * has the bits of xlkv_cuda_train_rope(q), xlkv_cuda_train_rope(k) then the plain call. dq, dk and dv stay the
 * gradients of the ROTATED q and k (the caller applies the inverse rotation as before). rope NULL: the plain call. */
#ifndef XLKV_BACKEND_CUDA_TRAIN_ATTENTION_FLASH_H
#define XLKV_BACKEND_CUDA_TRAIN_ATTENTION_FLASH_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "backend/cuda/train_kernels.h"

#ifdef __cplusplus
extern "C" {
#endif

/* Whether the flash kernels take this shape (head_dim 64 or 128, a valid GQA grouping). */
bool xlkv_cuda_train_attention_flash_supported(const xlkv_cuda_train_attention_shape *shape);
/* Bytes of the workspace for this shape (forward and backward; 0 for an unsupported shape). Small shape
 * (16 x 1024, 12/6 x 64): 2 x 25 + 2 x 12.6 MB of bf16 copies + 1.6 MB of rows = 77 MB. */
size_t xlkv_cuda_train_attention_flash_workspace_bytes(const xlkv_cuda_train_attention_shape *shape);

/* RoPE tables of the _rope calls: [seq, head_dim / 2] fp32 each (row t: position t), 16-byte aligned.
 * dq16 (backward only; NULL: fp32 dq as usual, and the forward refuses a non-NULL one): dq is not written; instead
 * row r of bf16(inverse rotation(dq)) goes to dq16 + r x dq16_ld (dq16 4-byte aligned, dq16_ld even and >=
 * n_heads x head_dim), the bits xlkv_cuda_train_rope_to_bf16(dq16, dq16_ld, dq, ..., -1) gives from the fp32 dq. */
typedef struct xlkv_cuda_train_flash_rope {
    const float *cos_table, *sin_table;
    uint16_t *dq16;
    size_t dq16_ld;
} xlkv_cuda_train_flash_rope;

int xlkv_cuda_train_attention_flash_forward(float *out, float *lse, const float *q, const float *k, const float *v,
                                            const xlkv_cuda_train_attention_shape *shape, void *workspace,
                                            void *stream);
int xlkv_cuda_train_attention_flash_backward(float *dq, float *dk, float *dv, float *delta, const float *dout,
                                             const float *out, const float *lse, const float *q, const float *k,
                                             const float *v, const xlkv_cuda_train_attention_shape *shape,
                                             void *workspace, void *stream);
/* Options of the _opts backward (NULL: all false, the plain / _rope calls):
 *   overwrite_dkdv: dk and dv are WRITTEN (each element 0 + the gradient: the bits of clearing them and adding), for
 *     the first caller that writes a buffer several callers then add into (the trainer's first reader in backward
 *     order); no clearing pass needed before it.
 *   separate_delta: delta = rowsum(dO * O) by the separate pass xlkv_cuda_train_attention_delta into `delta` (then
 *     required) and a head-major copy pass, as before (the A/B: the same bits). Otherwise the dQ kernel computes it
 *     while staging dO, with the same sums in the same order, writes `delta` when it is non-NULL (NULL: not written)
 *     and the dK/dV kernel's head-major rows itself: two launches fewer, O read once instead of dO and O twice. */
/* bf16 copies of K and V kept by the caller across calls (the _opts calls; NULL: the workspace's, rounded by every
 * call): k16, v16 [B*T, KVH*hd] bf16, 16-byte aligned. ready false: the call rounds k (rotated when the call rotates)
 * and v into them, then streams them; ready true: it streams them as they are, skipping both rounding passes: the
 * caller guarantees they hold exactly what the call would write for these k, v and rope tables (the same k, v
 * buffers unchanged since, the same rope setting). The trainer keeps one pair per KV record: its readers after the
 * first one and its backward readers skip the passes. */
typedef struct xlkv_cuda_train_flash_kv16 {
    uint16_t *k16, *v16;
    bool ready;
} xlkv_cuda_train_flash_kv16;

typedef struct xlkv_cuda_train_flash_backward_options {
    bool overwrite_dkdv;
    bool separate_delta;
    const xlkv_cuda_train_flash_kv16 *kv16; /* NULL: the workspace's copies, rounded here */
} xlkv_cuda_train_flash_backward_options;

int xlkv_cuda_train_attention_flash_forward_opts(float *out, float *lse, const float *q, const float *k,
                                                 const float *v, const xlkv_cuda_train_flash_rope *rope,
                                                 const xlkv_cuda_train_flash_kv16 *kv16,
                                                 const xlkv_cuda_train_attention_shape *shape, void *workspace,
                                                 void *stream);

int xlkv_cuda_train_attention_flash_forward_rope(float *out, float *lse, const float *q, const float *k,
                                                 const float *v, const xlkv_cuda_train_flash_rope *rope,
                                                 const xlkv_cuda_train_attention_shape *shape, void *workspace,
                                                 void *stream);
int xlkv_cuda_train_attention_flash_backward_rope(float *dq, float *dk, float *dv, float *delta, const float *dout,
                                                  const float *out, const float *lse, const float *q, const float *k,
                                                  const float *v, const xlkv_cuda_train_flash_rope *rope,
                                                  const xlkv_cuda_train_attention_shape *shape, void *workspace,
                                                  void *stream);

int xlkv_cuda_train_attention_flash_backward_opts(float *dq, float *dk, float *dv, float *delta, const float *dout,
                                                  const float *out, const float *lse, const float *q, const float *k,
                                                  const float *v, const xlkv_cuda_train_flash_rope *rope,
                                                  const xlkv_cuda_train_flash_backward_options *options,
                                                  const xlkv_cuda_train_attention_shape *shape, void *workspace,
                                                  void *stream);

#ifdef __cplusplus
}
#endif

#endif
