/* backend/cuda/train_bf16: the fp32 -> bf16 operand conversion (see train_bf16.h). A memory pass: each thread
 * converts 4 adjacent elements (one 16-byte load, two 4-byte stores) where the row length, the leading dimension and
 * both pointers allow it, else 1 (a packed run of odd length: the bulk 4-wide, the tail alone); rows are walked by the grid's y dimension, columns by its x dimension, both with
 * grid strides so that any rows x cols fits in a bounded grid. __floats2bfloat162_rn / __float2bfloat16_rn round to
 * nearest even. The bf16 cross-entropy backward: one block per row, as train_kernels.cu's fp32 one. */
#include <cuda_bf16.h>
#include <cuda_runtime.h>

#include "backend/cuda/train_bf16.h"

namespace {

constexpr int kBlock = 256;
constexpr size_t kMaxBlocksX = 1u << 16, kMaxBlocksY = 65535;

__global__ void to_bf16_vec4(__nv_bfloat162 *dst, const float4 *src, size_t rows, size_t quads, size_t ld_quads) {
    for (size_t r = blockIdx.y; r < rows; r += gridDim.y)
        for (size_t c = (size_t)blockIdx.x * blockDim.x + threadIdx.x; c < quads; c += (size_t)gridDim.x * blockDim.x) {
            const float4 v = src[r * ld_quads + c];
            __nv_bfloat162 *out = dst + 2 * (r * quads + c);
            out[0] = __floats2bfloat162_rn(v.x, v.y);
            out[1] = __floats2bfloat162_rn(v.z, v.w);
        }
}

__global__ void to_bf16_scalar(__nv_bfloat16 *dst, const float *src, size_t rows, size_t cols, size_t ld) {
    for (size_t r = blockIdx.y; r < rows; r += gridDim.y)
        for (size_t c = (size_t)blockIdx.x * blockDim.x + threadIdx.x; c < cols; c += (size_t)gridDim.x * blockDim.x)
            dst[r * cols + c] = __float2bfloat16_rn(src[r * ld + c]);
}

/* one block per row */
__global__ void cross_entropy_backward_bf16(__nv_bfloat16 *dlogits, const float *probs, const int *targets, int vocab,
                                            float s) {
    const size_t r = blockIdx.x;
    const float *row = probs + r * (size_t)vocab;
    __nv_bfloat16 *out = dlogits + r * (size_t)vocab;
    const int target = targets[r];
    for (int c = threadIdx.x; c < vocab; c += blockDim.x)
        out[c] = __float2bfloat16_rn(__fsub_rn(__fmul_rn(row[c], s), c == target ? s : 0.0f));
}

dim3 grid_for(size_t rows, size_t per_row) {
    size_t x = (per_row + kBlock - 1) / kBlock, y = rows;
    if (x > kMaxBlocksX) x = kMaxBlocksX;
    if (y > kMaxBlocksY) y = kMaxBlocksY;
    return dim3((unsigned)x, (unsigned)y);
}

} // namespace

extern "C" int xlkv_cuda_train_to_bf16(uint16_t *dst, const float *src, size_t rows, size_t cols, size_t ld,
                                       void *stream) {
    if (ld < cols) return (int)cudaErrorInvalidValue;
    if (rows == 0 || cols == 0) return 0;
    const cudaStream_t s = (cudaStream_t)stream;
    if (ld == cols) { /* packed rows: one long row, the widest vectors */
        cols *= rows;
        ld = cols;
        rows = 1;
    }
    if (rows == 1 && cols % 4 && cols > 4 && (uintptr_t)src % 16 == 0 && (uintptr_t)dst % 8 == 0) {
        /* one row of odd length (the parameter shadow): the bulk 4-wide, the last 1-3 elements alone */
        const size_t bulk = cols - cols % 4;
        const int err = xlkv_cuda_train_to_bf16(dst, src, 1, bulk, bulk, stream);
        if (err) return err;
        return xlkv_cuda_train_to_bf16(dst + bulk, src + bulk, 1, cols - bulk, cols - bulk, stream);
    }
    const bool vec = cols % 4 == 0 && ld % 4 == 0 && (uintptr_t)src % 16 == 0 && (uintptr_t)dst % 8 == 0;
    if (vec) {
        const size_t quads = cols / 4;
        to_bf16_vec4<<<grid_for(rows, quads), kBlock, 0, s>>>((__nv_bfloat162 *)dst, (const float4 *)src, rows, quads,
                                                              ld / 4);
    } else {
        to_bf16_scalar<<<grid_for(rows, cols), kBlock, 0, s>>>((__nv_bfloat16 *)dst, src, rows, cols, ld);
    }
    return (int)cudaGetLastError();
}

extern "C" int xlkv_cuda_train_cross_entropy_backward_bf16(uint16_t *dlogits, const float *probs, const int *targets,
                                                           int n, int vocab, float scale, void *stream) {
    if (n < 0 || vocab < 0) return (int)cudaErrorInvalidValue;
    if (n == 0 || vocab == 0) return 0;
    cross_entropy_backward_bf16<<<n, kBlock, 0, (cudaStream_t)stream>>>((__nv_bfloat16 *)dlogits, probs, targets, vocab,
                                                                         scale);
    return (int)cudaGetLastError();
}
