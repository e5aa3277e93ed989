/* backend/cuda/cuda_check: turning CUDA runtime, cuBLAS and kernel-launcher failures into xlkv statuses.
 *
 * Owns the error policy of the CUDA backend: every call is checked; a failure becomes XLKV_E_BACKEND with the call,
 * what it was doing and the runtime's own words; an allocation that fails becomes XLKV_E_NOMEM saying how many bytes
 * were asked and how many the device has free. Nothing in the backend aborts or prints. */
#ifndef XLKV_BACKEND_CUDA_CHECK_H
#define XLKV_BACKEND_CUDA_CHECK_H

#include <cublas_v2.h>
#include <cuda_runtime.h>
#include <stddef.h>

#include "core/status.h"

/* Records "what: <cuda error string>" (XLKV_E_NOMEM for cudaErrorMemoryAllocation) and returns the status. Also
 * clears the runtime's non-sticky last error so that a later call does not report this one again. */
xlkv_status xlkv_cuda_fail(cudaError_t err, const char *what);
xlkv_status xlkv_cublas_fail(cublasStatus_t err, const char *what);

/* cudaMalloc of `bytes` for `what`; on failure XLKV_E_NOMEM naming `what`, the size asked and the free memory. */
xlkv_status xlkv_cuda_alloc(void **out, size_t bytes, const char *what);
/* cudaMallocHost (pinned host memory, for asynchronous copies). */
xlkv_status xlkv_cuda_alloc_host(void **out, size_t bytes, const char *what);

/* Returns from the enclosing function when a CUDA runtime call (or a kernel launcher, which returns a cudaError_t
 * as int) fails. `what` is a string literal naming the operation. */
#define XLKV_CUDA_TRY(call, what)                                                                                      \
    do {                                                                                                               \
        cudaError_t xlkv_cuda_err_ = (cudaError_t)(call);                                                              \
        if (xlkv_cuda_err_ != cudaSuccess) return xlkv_cuda_fail(xlkv_cuda_err_, (what));                              \
    } while (0)

#define XLKV_CUBLAS_TRY(call, what)                                                                                    \
    do {                                                                                                               \
        cublasStatus_t xlkv_cublas_err_ = (call);                                                                      \
        if (xlkv_cublas_err_ != CUBLAS_STATUS_SUCCESS) return xlkv_cublas_fail(xlkv_cublas_err_, (what));              \
    } while (0)

#endif
