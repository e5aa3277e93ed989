/* backend/cuda/train_fused: the bf16 trainer's fused kernels (backend/cuda/train_gpu.c, XLKV_TRAIN_FUSE, on by
 * default): producers that write the bf16 operand of the next matrix product themselves, so that no separate rounding
 * pass (train_bf16.h) reads an fp32 tensor again, and a residual add joined with the RMSNorm that follows it. Each
 * computes every fp32 value with the same expression as the unfused kernels of train_kernels.cu (same operation
 * order) and rounds it to bf16 to nearest even (__float2bfloat16_rn), so fused and unfused paths give the same bits.
 * bf16 values travel as their bit patterns (uint16_t). Asynchronous on `stream` (a cudaStream_t passed as void *);
 * each returns 0 or the cudaError_t of the launch (cudaErrorInvalidValue for a bad size or leading dimension). */
#ifndef XLKV_BACKEND_CUDA_TRAIN_FUSED_H
#define XLKV_BACKEND_CUDA_TRAIN_FUSED_H

#include <stddef.h>
#include <stdint.h>

#ifdef __cplusplus
extern "C" {
#endif

/* RMSNorm forward with a bf16 output: y16[n, dim] = bf16(gain * (inv_rms * x)), inv_rms[r] = 1 / sqrt(mean(x^2) +
 * eps); x_copy (NULL: none) receives x (the record's saved input, written in the same pass). */
int xlkv_cuda_train_rmsnorm_forward_bf16(uint16_t *y16, float *inv_rms, float *x_copy, const float *x,
                                         const float *gain, int n, int dim, float eps, void *stream);

/* Residual add + RMSNorm: sum = a + b (written to `sum`, which may be a), then the RMSNorm of sum as above. */
int xlkv_cuda_train_add_rmsnorm_forward_bf16(float *sum, uint16_t *y16, float *inv_rms, const float *a,
                                             const float *b, const float *gain, int n, int dim, float eps,
                                             void *stream);

/* The same with a bf16 b16 (a product's output written in bf16: the fused path's attention / FFN branch), widened to
 * fp32 before the add: sum = a + float(b16), the same bits as the fp32 launcher given b = float(b16). */
int xlkv_cuda_train_add_rmsnorm_forward_bf16b(float *sum, uint16_t *y16, float *inv_rms, const float *a,
                                              const uint16_t *b16, const float *gain, int n, int dim, float eps,
                                              void *stream);

/* The same with an fp32 output y (the bf16 trainer's final norm, whose output the classifier reads), sum = a +
 * float(b16) written as well: the same bits as xlkv_cuda_train_add_out_bf16b then xlkv_cuda_train_rmsnorm_forward
 * (train_kernels.h) on the sum, in one pass where the rows fit in registers (train_rmsnorm_rows.cuh), else as those
 * two launches. */
int xlkv_cuda_train_add_rmsnorm_forward_bf16b_f32(float *sum, float *y, float *inv_rms, const float *a,
                                                  const uint16_t *b16, const float *gain, int n, int dim, float eps,
                                                  void *stream);

/* y = a + b, n elements (y may be a or b) */
int xlkv_cuda_train_add_out(float *y, const float *a, const float *b, size_t n, void *stream);
/* y = a + float(b16), n elements (y may be a) */
int xlkv_cuda_train_add_out_bf16b(float *y, const float *a, const uint16_t *b16, size_t n, void *stream);

/* SwiGLU forward with a bf16 output: h16 = bf16(silu(gate) * up), n elements. */
int xlkv_cuda_train_swiglu_forward_bf16(uint16_t *h16, const float *gate, const float *up, size_t n, void *stream);

/* SwiGLU backward with bf16 outputs side by side: for rows r < n, c < hid (dh, gate, up packed [n, hid]),
 * dgu16[r * ld + c] = bf16(dgate), dgu16[r * ld + hid + c] = bf16(dup); ld >= 2 hid. */
int xlkv_cuda_train_swiglu_backward_bf16(uint16_t *dgu16, size_t ld, const float *dh, const float *gate,
                                         const float *up, int n, int hid, void *stream);

/* SwiGLU from bf16 inputs (the fused path's gate|up product written in bf16): gu16 [n rows, row stride ld >= 2 hid]
 * holds gate in columns [0, hid) and up in [hid, 2 hid). Forward: h16[r * hid + c] = bf16(silu(gate) * up). Backward:
 * from dh16 [n, hid] (packed) to dgu16 [dgate | dup] (row stride ld_out >= 2 hid), which must not overlap the inputs.
 * The fp32 arithmetic is that of the fp32-input kernels above on the widened values: the same bits as them given
 * gate = float(...), up = float(...), dh = float(...). */
int xlkv_cuda_train_swiglu_forward_from_bf16(uint16_t *h16, const uint16_t *gu16, size_t ld, int n, int hid,
                                             void *stream);
int xlkv_cuda_train_swiglu_backward_from_bf16(uint16_t *dgu16, size_t ld_out, const uint16_t *dh16,
                                              const uint16_t *gu16, size_t ld_in, int n, int hid, void *stream);

/* dst16[r * ld + j] = bf16(src[r * width + j]) for r < n, j < width = n_heads * head_dim, src rotated first by the
 * interleaved RoPE of train_kernels.h (direction +1 forward, -1 backward; tables [seq, head_dim / 2]) when rotate is
 * non-zero, else copied as is. src is not changed. ld >= width. */
int xlkv_cuda_train_rope_to_bf16(uint16_t *dst16, size_t ld, const float *src, int n, int seq, int n_heads,
                                 int head_dim, const float *cos_table, const float *sin_table, float direction,
                                 int rotate, void *stream);

#ifdef __cplusplus
}
#endif

#endif
