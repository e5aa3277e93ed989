/* backend/cuda/train_kernels_common: what the trainer's elementwise kernel files share (train_kernels.cu,
 * train_fused.cu): the block shape, the warp reduction, the SwiGLU and RoPE formulas (so that a fused kernel computes
 * exactly the value of the kernel it replaces), loads that widen fp32 or bf16 inputs to fp32 (bf16 -> fp32 is exact,
 * so a kernel reading a bf16 input computes what its fp32 version computes on the same values), and the row-wise
 * RoPE kernel both files launch. */
#ifndef XLKV_BACKEND_CUDA_TRAIN_KERNELS_COMMON_CUH
#define XLKV_BACKEND_CUDA_TRAIN_KERNELS_COMMON_CUH

#include <cuda_bf16.h>
#include <cuda_runtime.h>
#include <stddef.h>
#include <stdint.h>

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

/* a group of four fp32 values stored as fp32 (16-byte aligned) or rounded to bf16 (8-byte aligned) */
__device__ __forceinline__ void store4(float *dst, float4 v) { *reinterpret_cast<float4 *>(dst) = v; }
__device__ __forceinline__ void store4(__nv_bfloat16 *dst, float4 v) {
    __nv_bfloat162 *out = reinterpret_cast<__nv_bfloat162 *>(dst);
    out[0] = __floats2bfloat162_rn(v.x, v.y);
    out[1] = __floats2bfloat162_rn(v.z, v.w);
}

/* RoPE of one pair (a, b) = elements 2i, 2i + 1 of a head, s = direction x sin (direction -1: the inverse rotation).
 * The roundings are spelled out (one product, then one FMA) so that no caller's context changes how the compiler
 * contracts it: the flash attention kernels rotate while staging (train_attention_flash.cu) and must give the bits
 * of the RoPE kernels. */
__device__ __forceinline__ void rope_pair(float a, float b, float c, float s, float *out_a, float *out_b) {
    *out_a = __fmaf_rn(a, c, -__fmul_rn(b, s));
    *out_b = __fmaf_rn(a, s, __fmul_rn(b, c));
}

/* RoPE (or, ROTATE false, a plain copy) of n rows of n_heads x head_dim fp32 (x, packed) into dst (row stride ld
 * elements, fp32 or bf16; dst may be x for fp32 with ld = n_heads x head_dim). A CTA takes whole rows (grid stride),
 * its threads four consecutive elements of the row each (two pairs of one head: head_dim % 4 == 0), so the position
 * (row % seq) and the offsets are 32-bit arithmetic once per row, and x, cos, sin and dst move in 16/8-byte pieces.
 * Needs x and dst 16-byte (fp32) / 8-byte (bf16) aligned with ld % 4 == 0, the tables 8-byte aligned; the launchers
 * take the element-wise kernels otherwise. */
template <bool ROTATE, typename OutT>
__global__ void rope_rows(OutT *dst, size_t ld, const float *x, int n, int seq, int n_heads, int head_dim,
                          const float *cos_table, const float *sin_table, float direction) {
    const int half = head_dim / 2, quads = n_heads * head_dim / 4;
    for (int row = blockIdx.x; row < n; row += gridDim.x) {
        const float4 *xr = reinterpret_cast<const float4 *>(x + (size_t)row * (size_t)(n_heads * head_dim));
        OutT *out = dst + (size_t)row * ld;
        const int pos = row % seq;
        const float *cr = cos_table + (size_t)pos * half, *sr = sin_table + (size_t)pos * half;
        for (int q = threadIdx.x; q < quads; q += blockDim.x) {
            float4 v = xr[q];
            if (ROTATE) {
                const int i = ((4 * q) % head_dim) / 2; /* the first pair's index in its head (even) */
                const float2 c = *reinterpret_cast<const float2 *>(cr + i), s = *reinterpret_cast<const float2 *>(sr + i);
                float4 r;
                rope_pair(v.x, v.y, c.x, direction * s.x, &r.x, &r.y);
                rope_pair(v.z, v.w, c.y, direction * s.y, &r.z, &r.w);
                v = r;
            }
            store4(out + 4 * (size_t)q, v);
        }
    }
}

/* The launch of rope_rows when its layout and alignment hold; false: the caller takes its element-wise kernel. */
template <bool ROTATE, typename OutT>
bool launch_rope_rows(OutT *dst, size_t ld, const float *x, int n, int seq, int n_heads, int head_dim,
                      const float *cos_table, const float *sin_table, float direction, cudaStream_t stream) {
    const size_t out_align = sizeof(OutT) * 4;
    if (head_dim % 4 || ld % 4 || (uintptr_t)x % 16 || (uintptr_t)dst % out_align || (uintptr_t)cos_table % 8 ||
        (uintptr_t)sin_table % 8 || n <= 0)
        return false;
    const int quads = n_heads * head_dim / 4;
    const int threads = quads >= kBlock ? kBlock : ((quads + 31) / 32) * 32;
    const int blocks = n < 65536 ? n : 65536;
    rope_rows<ROTATE, OutT><<<blocks, threads, 0, stream>>>(dst, ld, x, n, seq, n_heads, head_dim, cos_table,
                                                            sin_table, direction);
    return true;
}

} // namespace xlkv_train

#endif
