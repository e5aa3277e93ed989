/* backend/cuda/train_rmsnorm_rows: the RMSNorm rows of the trainer held in registers (train_kernels.cu's fp32 forward
 * and two-pass / folded backward, train_fused.cu's bf16-output forward and add + RMSNorm). One warp per row; lane l
 * holds the row's groups of four columns l, l + 32, ..., l + 32 (VPL - 1) (VPL = "vectors per lane", a compile-time
 * bound: rows up to 128 VPL columns), so every load of a row (x and the branch b in the forward; dy, x and dx in the
 * backward) is issued at once, in 16-byte (fp32) or 8-byte (bf16) pieces, before the warp's reduction, and the second
 * half of the row works from the registers: one trip to memory per row instead of a second pass that re-reads the row
 * after the reduction (which, for dx, was a dependent read from HBM).
 *
 * Values: each lane accumulates its groups in the order of the loop kernels it replaces (groups l, l + 32, ...; the
 * four lanes of a group in one expression), then the same warp_sum, and every element's expression is written as in
 * those kernels, so the rows are the same arithmetic (the fused and unfused launchers both take these rows, so their
 * bit-identity does not depend on it). Needs dim % 4 == 0, dim <= 128 VPL, and the vector alignment of the loads; the
 * launchers keep their loop kernels for everything else (rows_vpl picks VPL or says no). */
#ifndef XLKV_BACKEND_CUDA_TRAIN_RMSNORM_ROWS_CUH
#define XLKV_BACKEND_CUDA_TRAIN_RMSNORM_ROWS_CUH

#include <cuda_bf16.h>
#include <cuda_runtime.h>
#include <stddef.h>
#include <stdlib.h>
#include <string.h>

#include "backend/cuda/train_kernels_common.cuh"

namespace xlkv_train {

/* The register bound for a width (dim % 4 == 0 assumed): the smallest instantiated VPL with 128 VPL >= dim, 0 when
 * wider than 1,024 columns (the loop kernels take it), or when XLKV_TRAIN_NORM_ROWS=loops (read at every launch; the
 * trainer refuses values other than loops / registers at creation): the former loop kernels, for A/B runs in one
 * build. */
inline int rows_vpl(int dim) {
    const char *choice = getenv("XLKV_TRAIN_NORM_ROWS");
    if (choice && strcmp(choice, "loops") == 0) return 0;
    const int per_lane = (dim / 4 + 31) / 32;
    if (per_lane <= 1) return 1;
    if (per_lane <= 2) return 2;
    if (per_lane <= 4) return 4;
    if (per_lane <= 6) return 6;
    if (per_lane <= 8) return 8;
    return 0;
}

/* Forward of row r by one warp: xr = x (+ b when ADD), written to x_out when not NULL (ADD: the sum; x_out may be x:
 * every element is read before it is written, by the same lane), inv_rms[r] = 1 / sqrt(mean(xr^2) + eps), y = gain *
 * (inv_rms * xr) stored as OutT (fp32, or bf16 to nearest even). */
template <int VPL, bool ADD, typename BT, typename OutT>
__device__ __forceinline__ void rmsnorm_forward_row_regs(OutT *y, float *inv_rms, float *x_out, const float *x,
                                                         const BT *b, const float *gain, size_t r, int dim,
                                                         float eps) {
    const int lane = threadIdx.x & 31, quads = dim / 4;
    const size_t off = r * (size_t)dim;
    const float4 *xr = reinterpret_cast<const float4 *>(x + off);
    float4 v[VPL];
#pragma unroll
    for (int k = 0; k < VPL; k++) {
        const int i = lane + 32 * k;
        if (i < quads) {
            v[k] = xr[i];
            if (ADD) {
                const float4 p = load4(b + off, (size_t)i);
                v[k].x += p.x, v[k].y += p.y, v[k].z += p.z, v[k].w += p.w;
            }
        }
    }
    float ss = 0.0f;
#pragma unroll
    for (int k = 0; k < VPL; k++) {
        const int i = lane + 32 * k;
        if (i < quads) {
            if (x_out) reinterpret_cast<float4 *>(x_out + off)[i] = v[k];
            ss += v[k].x * v[k].x + v[k].y * v[k].y + v[k].z * v[k].z + v[k].w * v[k].w;
        }
    }
    ss = warp_sum(ss);
    const float s = 1.0f / sqrtf(ss / (float)dim + eps);
    if (lane == 0) inv_rms[r] = s;
#pragma unroll
    for (int k = 0; k < VPL; k++) {
        const int i = lane + 32 * k;
        if (i < quads) {
            const float4 g = reinterpret_cast<const float4 *>(gain)[i];
            store4(y + off + 4 * (size_t)i,
                   make_float4(g.x * (s * v[k].x), g.y * (s * v[k].y), g.z * (s * v[k].z), g.w * (s * v[k].w)));
        }
    }
}

/* One warp per row, kRowsPerBlock rows per block (blockDim.x == kBlock). */
template <int VPL, bool ADD, typename BT, typename OutT>
__global__ void __launch_bounds__(kBlock) rmsnorm_forward_rows_regs(OutT *y, float *inv_rms, float *x_out,
                                                                    const float *x, const BT *b, const float *gain,
                                                                    int n, int dim, float eps) {
    const size_t r = (size_t)blockIdx.x * kRowsPerBlock + threadIdx.x / 32;
    if (r >= (size_t)n) return;
    rmsnorm_forward_row_regs<VPL, ADD, BT, OutT>(y, inv_rms, x_out, x, b, gain, r, dim, eps);
}

/* The launch for a width rows_vpl accepts (vpl != 0); the caller checked the alignment. */
template <bool ADD, typename BT, typename OutT>
void launch_rmsnorm_forward_rows_regs(int vpl, OutT *y, float *inv_rms, float *x_out, const float *x, const BT *b,
                                      const float *gain, int n, int dim, float eps, cudaStream_t stream) {
    const unsigned blocks = (unsigned)(((size_t)n + kRowsPerBlock - 1) / kRowsPerBlock);
#define XLKV_FORWARD_ROWS(V)                                                                                          \
    rmsnorm_forward_rows_regs<V, ADD, BT, OutT><<<blocks, kBlock, 0, stream>>>(y, inv_rms, x_out, x, b, gain, n, dim, \
                                                                              eps)
    switch (vpl) {
    case 1: XLKV_FORWARD_ROWS(1); break;
    case 2: XLKV_FORWARD_ROWS(2); break;
    case 4: XLKV_FORWARD_ROWS(4); break;
    case 6: XLKV_FORWARD_ROWS(6); break;
    default: XLKV_FORWARD_ROWS(8); break;
    }
#undef XLKV_FORWARD_ROWS
}

/* Backward of one row by one warp (s = inv_rms of the row): dx += s g dy - coef x with coef = dot(g dy, x) s^3 / dim,
 * dx16 = bf16(dx) after the update when BF16, and when GAIN acc[4 i ..] += dy x s for the lane's groups i (acc: this
 * warp's own row of column partials, which no other lane writes). dy, x and dx are all loaded before the reduction;
 * DyT: float, or __nv_bfloat16 widened as read. SET: dx is not read but taken as +0 (the first contribution to dx:
 * the same bits as clearing it, then adding). */
template <int VPL, bool BF16, bool GAIN, typename DyT, bool SET = false>
__device__ __forceinline__ void rmsnorm_backward_row_regs(float *dx, const DyT *dy, const float *x, float s,
                                                          const float *gain, int dim, __nv_bfloat16 *dx16,
                                                          float *acc) {
    const int lane = threadIdx.x & 31, quads = dim / 4;
    float4 d[VPL], v[VPL], o[VPL];
#pragma unroll
    for (int k = 0; k < VPL; k++) {
        const int i = lane + 32 * k;
        if (i < quads) {
            d[k] = load4(dy, (size_t)i);
            v[k] = reinterpret_cast<const float4 *>(x)[i];
            o[k] = SET ? make_float4(0.0f, 0.0f, 0.0f, 0.0f) : reinterpret_cast<const float4 *>(dx)[i];
        }
    }
    float dot = 0.0f;
#pragma unroll
    for (int k = 0; k < VPL; k++) {
        const int i = lane + 32 * k;
        if (i < quads) {
            const float4 g = reinterpret_cast<const float4 *>(gain)[i];
            dot += g.x * d[k].x * v[k].x + g.y * d[k].y * v[k].y + g.z * d[k].z * v[k].z + g.w * d[k].w * v[k].w;
        }
    }
    dot = warp_sum(dot);
    const float coef = dot * s * s * s / (float)dim;
#pragma unroll
    for (int k = 0; k < VPL; k++) {
        const int i = lane + 32 * k;
        if (i < quads) {
            const float4 g = reinterpret_cast<const float4 *>(gain)[i];
            o[k].x += s * g.x * d[k].x - coef * v[k].x;
            o[k].y += s * g.y * d[k].y - coef * v[k].y;
            o[k].z += s * g.z * d[k].z - coef * v[k].z;
            o[k].w += s * g.w * d[k].w - coef * v[k].w;
            reinterpret_cast<float4 *>(dx)[i] = o[k];
            if (BF16) store4(dx16 + 4 * (size_t)i, o[k]);
            if (GAIN) {
                float4 a = reinterpret_cast<float4 *>(acc)[i];
                a.x += d[k].x * v[k].x * s, a.y += d[k].y * v[k].y * s, a.z += d[k].z * v[k].z * s,
                    a.w += d[k].w * v[k].w * s;
                reinterpret_cast<float4 *>(acc)[i] = a;
            }
        }
    }
}

} // namespace xlkv_train

#endif
