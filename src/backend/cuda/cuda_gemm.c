/* backend/cuda/cuda_gemm: cuBLAS products (see cuda_gemm.h). */
#include "backend/cuda/cuda_gemm.h"

#include <string.h>

#include "backend/cuda/cuda_check.h"

size_t xlkv_cuda_gemm_workspace_bytes(void) { return (size_t)32 << 20; }

void xlkv_cuda_gemm_free(xlkv_cuda_gemm *gemm) {
    if (!gemm) return;
    if (gemm->handle) (void)cublasDestroy(gemm->handle);
    if (gemm->workspace) (void)cudaFree(gemm->workspace);
    memset(gemm, 0, sizeof *gemm);
}

static xlkv_status configure(xlkv_cuda_gemm *gemm, cudaStream_t stream) {
    XLKV_CUBLAS_TRY(cublasCreate(&gemm->handle), "creating the cuBLAS handle");
    XLKV_CUBLAS_TRY(cublasSetStream(gemm->handle, stream), "binding cuBLAS to the engine stream");
    gemm->workspace_bytes = xlkv_cuda_gemm_workspace_bytes();
    XLKV_TRY(xlkv_cuda_alloc(&gemm->workspace, gemm->workspace_bytes, "the cuBLAS workspace"));
    XLKV_CUBLAS_TRY(cublasSetWorkspace(gemm->handle, gemm->workspace, gemm->workspace_bytes),
                    "giving cuBLAS its workspace");
    XLKV_CUBLAS_TRY(cublasSetPointerMode(gemm->handle, CUBLAS_POINTER_MODE_HOST), "setting the cuBLAS pointer mode");
    const cublasMath_t math = gemm->dt == XLKV_DTYPE_F32 ? CUBLAS_PEDANTIC_MATH : CUBLAS_DEFAULT_MATH;
    XLKV_CUBLAS_TRY(cublasSetMathMode(gemm->handle, math), "setting the cuBLAS math mode");
    return XLKV_OK;
}

xlkv_status xlkv_cuda_gemm_init(xlkv_cuda_gemm *gemm, xlkv_dtype dt, cudaStream_t stream) {
    memset(gemm, 0, sizeof *gemm);
    gemm->dt = dt;
    xlkv_status status = configure(gemm, stream);
    if (status != XLKV_OK) xlkv_cuda_gemm_free(gemm);
    return status;
}

static cudaDataType_t cuda_type(xlkv_dtype dt) { return dt == XLKV_DTYPE_BF16 ? CUDA_R_16BF : CUDA_R_32F; }

static xlkv_status gemm_ex(const xlkv_cuda_gemm *gemm, void *y, cudaDataType_t y_type, const void *x, const void *w,
                           int n, int in, int out) {
    const float alpha = 1.0f, beta = 0.0f;
    const cudaDataType_t ab_type = cuda_type(gemm->dt);
    XLKV_CUBLAS_TRY(cublasGemmEx(gemm->handle, CUBLAS_OP_T, CUBLAS_OP_N, out, n, in, &alpha, w, ab_type, in, x,
                                 ab_type, in, &beta, y, y_type, out, CUBLAS_COMPUTE_32F, CUBLAS_GEMM_DEFAULT),
                    "matrix product (cublasGemmEx)");
    return XLKV_OK;
}

/* A few bf16 rows: our matrix-vector kernel streams W at close to full bandwidth, where cuBLAS reached 570-1680 GB/s
 * at n = 1 (H100, tinyllama shapes); otherwise cuBLAS. */
static xlkv_status product(const xlkv_cuda_gemm *gemm, void *y, int y_is_f32, const void *x, const void *w, int n,
                           int in, int out) {
    if (xlkv_cuda_gemv_supported(n, in, x, w, gemm->dt)) {
        cudaStream_t stream = NULL;
        XLKV_CUBLAS_TRY(cublasGetStream(gemm->handle, &stream), "cublasGetStream");
        const int err = xlkv_cuda_gemv(y, y_is_f32, x, w, n, in, out, gemm->dt, stream);
        if (err) return xlkv_fail(XLKV_E_BACKEND, "matrix-vector product: %s", cudaGetErrorString((cudaError_t)err));
        return XLKV_OK;
    }
    return gemm_ex(gemm, y, y_is_f32 ? CUDA_R_32F : cuda_type(gemm->dt), x, w, n, in, out);
}

xlkv_status xlkv_cuda_linear(const xlkv_cuda_gemm *gemm, void *y, const void *x, const void *w, int n, int in,
                             int out) {
    return product(gemm, y, 0, x, w, n, in, out);
}

xlkv_status xlkv_cuda_linear_f32_out(const xlkv_cuda_gemm *gemm, float *y, const void *x, const void *w, int n, int in,
                                     int out) {
    return product(gemm, y, 1, x, w, n, in, out);
}
