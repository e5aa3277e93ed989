/* backend/cuda/train_bf16: bf16 copies of the trainer's fp32 matrices, the operands of its bf16 tensor-core products
 * (backend/cuda/train_gpu.c). One conversion, round to nearest even (the rounding cuBLAS' FAST_16BF compute type
 * applies to fp32 operands), from a strided fp32 view to packed bf16 rows; and the classifier's gradient, which the
 * cross-entropy backward writes in bf16 directly (no fp32 pass over N x vocab in between). bf16 values travel as
 * their bit patterns (uint16_t) so that C callers need no CUDA half-precision header. Asynchronous on `stream` (a
 * cudaStream_t passed as void *); each returns 0 or the cudaError_t of the launch (cudaErrorInvalidValue for a bad
 * size). */
#ifndef XLKV_BACKEND_CUDA_TRAIN_BF16_H
#define XLKV_BACKEND_CUDA_TRAIN_BF16_H

#include <stddef.h>
#include <stdint.h>

#ifdef __cplusplus
extern "C" {
#endif

/* dst[r * cols + c] = bf16_rne(src[r * ld + c]) for r < rows, c < cols (NaN stays NaN, overflow rounds to +-inf,
 * subnormals are kept). rows or cols 0: nothing to do. */
int xlkv_cuda_train_to_bf16(uint16_t *dst, const float *src, size_t rows, size_t cols, size_t ld, void *stream);

/* The cross-entropy backward (train_kernels.h) written straight in bf16 for the classifier's products:
 * dlogits[r, c] = bf16_rne(probs[r, c] * scale - (c == targets[r] ? scale : 0)), the product and the difference each
 * rounded in fp32 (no fused multiply-add). probs [n, vocab] is read, not changed. */
int xlkv_cuda_train_cross_entropy_backward_bf16(uint16_t *dlogits, const float *probs, const int *targets, int n,
                                                int vocab, float scale, void *stream);

#ifdef __cplusplus
}
#endif

#endif
