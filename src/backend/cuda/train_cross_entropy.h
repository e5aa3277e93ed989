/* backend/cuda/train_cross_entropy: the bf16 trainer's fused cross-entropy (backend/cuda/train_gpu.c). The
 * classifier product writes the logits in bf16; this one kernel reads each row once, writes the row's loss and
 * overwrites the logits in place with the UNSCALED gradient of the loss, softmax - onehot(target), in bf16, so the
 * backward runs the classifier's two products straight from that buffer (the loss scale and 1/N enter them as the
 * products' alpha) with no cross-entropy kernel of its own and no fp32 N x vocab buffer anywhere.
 * bf16 values travel as their bit patterns (uint16_t) so that C callers need no CUDA half-precision header.
 * Asynchronous on `stream` (a cudaStream_t passed as void *); returns 0 or the cudaError_t of the launch
 * (cudaErrorInvalidValue for a negative size). */
#ifndef XLKV_BACKEND_CUDA_TRAIN_CROSS_ENTROPY_H
#define XLKV_BACKEND_CUDA_TRAIN_CROSS_ENTROPY_H

#include <stdint.h>

#ifdef __cplusplus
extern "C" {
#endif

/* For each row r < n of logits [n, vocab] (bf16, packed rows), x = the row in fp32, t = targets[r]:
 *   row_loss[r] = (m + log s) - x[t] with m = max(x) and s = sum exp(x - m), both in fp32 (one pass, online
 *                 rescaling), the final combination in double;
 *   logits[r, c] = bf16_rne(exp(x[c] - m) / s - (c == t)), in place.
 * A row is kept in shared memory between the two passes when vocab x 2 bytes fit in a block's shared memory
 * (H100: vocabularies up to ~116,000), so HBM sees one read and one write of it; larger vocabularies read it again
 * (from L2 mostly). Targets are not checked here (the trainer checks them on the host). */
int xlkv_cuda_train_cross_entropy_fused_bf16(uint16_t *logits, double *row_loss, const int *targets, int n, int vocab,
                                             void *stream);

#ifdef __cplusplus
}
#endif

#endif
