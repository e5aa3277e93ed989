/* backend/cuda/train_kernels_common: what the trainer's elementwise kernel files share (train_kernels.cu,
 * train_fused.cu): the block shape, the warp reduction and the SwiGLU formulas, so that a fused kernel computes exactly
 * the value of the kernel it replaces. */
#ifndef XLKV_BACKEND_CUDA_TRAIN_KERNELS_COMMON_CUH
#define XLKV_BACKEND_CUDA_TRAIN_KERNELS_COMMON_CUH

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

} // namespace xlkv_train

#endif
