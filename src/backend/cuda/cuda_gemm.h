/* backend/cuda/cuda_gemm: the matrix products of the CUDA engine, through cuBLAS.
 *
 * Owns the cuBLAS handle, bound once to the engine's stream and to a workspace of our own (so that a product issues
 * no allocation and picks the same algorithm whether it runs directly or is captured in a CUDA graph), and the math
 * mode: bf16 products use the tensor cores with fp32 accumulation; f32 products are pedantic (no TF32), for exact
 * comparisons with the CPU reference.
 *
 * Every product is row-major y[n, out] = x[n, in] . W[out, in]^T, which in cuBLAS' column-major terms is
 * y^T[out, n] = W[out, in] . x^T[in, n]: gemm(op_T on W (stored [in, out] column-major), op_N on x). */
#ifndef XLKV_BACKEND_CUDA_GEMM_H
#define XLKV_BACKEND_CUDA_GEMM_H

#include <cublas_v2.h>
#include <cuda_runtime.h>

#include "backend/cuda/cuda_kernels.h"
#include "xlkv.h"

typedef struct xlkv_cuda_gemm {
    cublasHandle_t handle;
    void *workspace; /* device [workspace_bytes] */
    size_t workspace_bytes;
    xlkv_dtype dt;
} xlkv_cuda_gemm;

/* Workspace cuBLAS gets (NVIDIA recommends 32 MiB on Hopper). */
size_t xlkv_cuda_gemm_workspace_bytes(void);

xlkv_status xlkv_cuda_gemm_init(xlkv_cuda_gemm *gemm, xlkv_dtype dt, cudaStream_t stream);
void xlkv_cuda_gemm_free(xlkv_cuda_gemm *gemm);

/* y[n, out] = x[n, in] . w[out, in]^T, all of the engine's element type, rows contiguous. */
xlkv_status xlkv_cuda_linear(const xlkv_cuda_gemm *gemm, void *y, const void *x, const void *w, int n, int in,
                             int out);
/* The same with fp32 output (the logits): bf16 inputs, fp32 accumulation and result. */
xlkv_status xlkv_cuda_linear_f32_out(const xlkv_cuda_gemm *gemm, float *y, const void *x, const void *w, int n, int in,
                                     int out);

#endif
