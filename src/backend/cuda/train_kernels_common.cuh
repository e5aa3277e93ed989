/* backend/cuda/train_kernels_common: what the trainer's elementwise kernel files share (train_kernels.cu,
 * train_fused.cu): the block shape, the warp reduction, the SwiGLU formulas (so that a fused kernel computes exactly
 * the value of the kernel it replaces) and loads that widen fp32 or bf16 inputs to fp32 (bf16 -> fp32 is exact, so a
 * kernel reading a bf16 input computes what its fp32 version computes on the same values). */
#ifndef XLKV_BACKEND_CUDA_TRAIN_KERNELS_COMMON_CUH
#define XLKV_BACKEND_CUDA_TRAIN_KERNELS_COMMON_CUH

#include <cuda_bf16.h>
#include <stddef.h>

namespace xlkv_train {

constexpr int kBlock = 256;                /* threads per block of the elementwise and row kernels */
constexpr int kRowsPerBlock = kBlock / 32; /* rows per block of the one-warp-per-row kernels */

__device__ __forceinline__ float warp_sum(float v) {
#pragma unroll
    for (int o = 16; o > 0; o >>= 1) v += __shfl_xor_sync(0xffffffffu, v, o);
    return v;
}

/* h = silu(g) u and its gradients */
__device__ __forceinline__ float swiglu_value(float g, float u) { return g * (1.0f / (1.0f + expf(-g))) * u; }
__device__ __forceinline__ void swiglu_grad(float dh, float g, float u, float *dg, float *du) {
    const float sig = 1.0f / (1.0f + expf(-g)), silu = g * sig;
    *dg = dh * u * sig * (1.0f + g * (1.0f - sig));
    *du = dh * silu;
}

/* element i / group of four i (elements 4i .. 4i + 3) as fp32; the group needs 16-byte (fp32) or 8-byte (bf16)
 * alignment */
__device__ __forceinline__ float load1(const float *p, size_t i) { return p[i]; }
__device__ __forceinline__ float load1(const __nv_bfloat16 *p, size_t i) { return __bfloat162float(p[i]); }
__device__ __forceinline__ float4 load4(const float *p, size_t i) { return reinterpret_cast<const float4 *>(p)[i]; }
__device__ __forceinline__ float4 load4(const __nv_bfloat16 *p, size_t i) {
    const __nv_bfloat162 *q = reinterpret_cast<const __nv_bfloat162 *>(p + 4 * i);
    const float2 a = __bfloat1622float2(q[0]), b = __bfloat1622float2(q[1]);
    return make_float4(a.x, a.y, b.x, b.y);
}

} // namespace xlkv_train

#endif
