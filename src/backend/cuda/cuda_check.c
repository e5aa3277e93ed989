/* backend/cuda/cuda_check: see cuda_check.h. */
#include "backend/cuda/cuda_check.h"

static double mib(size_t bytes) { return (double)bytes / (1024.0 * 1024.0); }

xlkv_status xlkv_cuda_fail(cudaError_t err, const char *what) {
    (void)cudaGetLastError(); /* clears a non-sticky error; a sticky one (a faulting kernel) stays with the context */
    if (err == cudaErrorMemoryAllocation)
        return xlkv_fail(XLKV_E_NOMEM, "cuda: %s: out of device memory (%s)", what, cudaGetErrorString(err));
    return xlkv_fail(XLKV_E_BACKEND, "cuda: %s: %s (%s)", what, cudaGetErrorString(err), cudaGetErrorName(err));
}

xlkv_status xlkv_cublas_fail(cublasStatus_t err, const char *what) {
    (void)cudaGetLastError();
    if (err == CUBLAS_STATUS_ALLOC_FAILED)
        return xlkv_fail(XLKV_E_NOMEM, "cublas: %s: out of memory (%s)", what, cublasGetStatusString(err));
    return xlkv_fail(XLKV_E_BACKEND, "cublas: %s: %s (%s)", what, cublasGetStatusString(err),
                     cublasGetStatusName(err));
}

xlkv_status xlkv_cuda_alloc(void **out, size_t bytes, const char *what) {
    *out = NULL;
    if (bytes == 0) bytes = 1; /* a valid, freeable pointer for empty buffers */
    cudaError_t err = cudaMalloc(out, bytes);
    if (err == cudaSuccess) return XLKV_OK;
    *out = NULL;
    (void)cudaGetLastError();
    size_t free_bytes = 0, total_bytes = 0;
    if (cudaMemGetInfo(&free_bytes, &total_bytes) != cudaSuccess) {
        (void)cudaGetLastError();
        free_bytes = total_bytes = 0;
    }
    if (err == cudaErrorMemoryAllocation)
        return xlkv_fail(XLKV_E_NOMEM,
                         "cuda: cannot allocate %s: asked %zu bytes (%.1f MiB), the device has %zu bytes (%.1f MiB) "
                         "free of %.1f MiB",
                         what, bytes, mib(bytes), free_bytes, mib(free_bytes), mib(total_bytes));
    return xlkv_fail(XLKV_E_BACKEND, "cuda: cannot allocate %s (%zu bytes): %s", what, bytes, cudaGetErrorString(err));
}

xlkv_status xlkv_cuda_alloc_host(void **out, size_t bytes, const char *what) {
    *out = NULL;
    if (bytes == 0) bytes = 1;
    cudaError_t err = cudaMallocHost(out, bytes);
    if (err == cudaSuccess) return XLKV_OK;
    *out = NULL;
    (void)cudaGetLastError();
    if (err == cudaErrorMemoryAllocation)
        return xlkv_fail(XLKV_E_NOMEM, "cuda: cannot allocate %zu bytes (%.1f MiB) of pinned host memory for %s",
                         bytes, mib(bytes), what);
    return xlkv_fail(XLKV_E_BACKEND, "cuda: cannot allocate pinned host memory for %s (%zu bytes): %s", what, bytes,
                     cudaGetErrorString(err));
}
