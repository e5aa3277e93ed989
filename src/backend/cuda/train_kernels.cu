/* backend/cuda/train_kernels: the trainer's kernels (see train_kernels.h). Formulas as train/train_ops.c:
 *   rmsnorm   y = g x s            dx = s (g dy) - x s^3 / D * sum(g dy x)
 *   attention o = sum_p P_p v_p,   P = softmax(scale q.k_p); with dP_p = do.v_p and delta = do.o:
 *             ds_p = P_p (dP_p - delta); dq = scale sum ds_p k_p; dk_p += scale ds_p q; dv_p += P_p do
 *   swiglu    h = silu(a) u        da = dh u silu'(a), silu'(a) = sig(a) (1 + a (1 - sig(a))); du = dh silu(a)
 *   softmax cross-entropy          dlogits = p - onehot(target)
 * Attention is the simple correct version: one warp per (query row, head) for the output and dq (online softmax
 * over the visible keys; scores in fp32, never stored), and one warp per (key row, KV head) for dk / dv, walking the
 * queries that see that key and recomputing their probabilities from the saved log-sum-exp. Each output element has
 * one writer, so there are no atomics and the results are deterministic. The bf16 trainer's fused path adds an RMSNorm
 * backward whose rows pass also accumulates the gain gradient's chunk partials (shared memory, fixed order), the clip
 * coefficient computed on the device, and an AdamW that applies it and writes the bf16 weight shadow (float4). */
#include <cuda_bf16.h>
#include <cuda_runtime.h>
#include <math.h>
#include <stdint.h>

#include "backend/cuda/train_kernels.h"
#include "backend/cuda/train_kernels_common.cuh"
#include "backend/cuda/train_rmsnorm_rows.cuh"

using namespace xlkv_train;

namespace {


/* Block-wide reductions (blockDim.x == kBlock); every thread gets the result. */
template <typename T, typename Op> __device__ T block_reduce(T v, Op op, T *shared) {
    const int lane = threadIdx.x & 31, warp = threadIdx.x >> 5;
#pragma unroll
    for (int o = 16; o > 0; o >>= 1) v = op(v, __shfl_xor_sync(0xffffffffu, v, o));
    if (lane == 0) shared[warp] = v;
    __syncthreads();
    T r = shared[0];
    for (int w = 1; w < kBlock / 32; w++) r = op(r, shared[w]);
    __syncthreads();
    return r;
}
struct add_op {
    template <typename T> __device__ T operator()(T a, T b) const { return a + b; }
};
struct max_op {
    __device__ float operator()(float a, float b) const { return fmaxf(a, b); }
};

int launch_status() { return (int)cudaGetLastError(); }
unsigned blocks_for(size_t n) { return (unsigned)((n + kBlock - 1) / kBlock); }

__global__ void embedding_forward(float *x, const int *tokens, const float *table, int dim) {
    const size_t r = blockIdx.x;
    const float *src = table + (size_t)tokens[r] * (size_t)dim;
    for (int i = threadIdx.x; i < dim; i += blockDim.x) x[r * (size_t)dim + (size_t)i] = src[i];
}

__global__ void embedding_backward(float *dtable, const float *dx, const int *tokens, const int *order,
                                   const int *starts, int dim) {
    const int g = blockIdx.x, begin = starts[g], end = starts[g + 1];
    float *dst = dtable + (size_t)tokens[order[begin]] * (size_t)dim;
    for (int i = threadIdx.x; i < dim; i += blockDim.x) {
        float acc = dst[i]; /* rows added one by one in row order, as the CPU does */
        for (int j = begin; j < end; j++) acc += dx[(size_t)order[j] * (size_t)dim + (size_t)i];
        dst[i] = acc;
    }
}

/* RMSNorm rows: one warp per row (kRowsPerBlock rows per block), float4 loads when every row is 16-byte aligned
 * (V4), a warp reduction of the squares (no block barriers). */
template <bool V4>
__global__ void rmsnorm_forward(float *y, float *inv_rms, const float *x, const float *gain, int n, int dim, float eps) {
    const size_t r = (size_t)blockIdx.x * kRowsPerBlock + threadIdx.x / 32;
    const int lane = threadIdx.x & 31;
    if (r >= (size_t)n) return;
    const float *xr = x + r * (size_t)dim;
    float *yr = y + r * (size_t)dim;
    float ss = 0.0f;
    if (V4) {
        for (int i = lane; i < dim / 4; i += 32) {
            const float4 v = reinterpret_cast<const float4 *>(xr)[i];
            ss += v.x * v.x + v.y * v.y + v.z * v.z + v.w * v.w;
        }
    } else {
        for (int i = lane; i < dim; i += 32) ss += xr[i] * xr[i];
    }
    ss = warp_sum(ss);
    const float s = 1.0f / sqrtf(ss / (float)dim + eps);
    if (lane == 0) inv_rms[r] = s;
    if (V4) {
        for (int i = lane; i < dim / 4; i += 32) {
            const float4 v = reinterpret_cast<const float4 *>(xr)[i], g = reinterpret_cast<const float4 *>(gain)[i];
            reinterpret_cast<float4 *>(yr)[i] = make_float4(g.x * (s * v.x), g.y * (s * v.y), g.z * (s * v.z),
                                                            g.w * (s * v.w));
        }
    } else {
        for (int i = lane; i < dim; i += 32) yr[i] = gain[i] * (s * xr[i]);
    }
}

/* One row of the RMSNorm backward for one warp (lane = threadIdx.x & 31): dx += s g dy - coef x, dx16 = bf16(dx) after
 * the update (BF16; the bf16 trainer's operand for the next product). GAIN: acc[i] += dy x s for the columns this lane
 * touches (acc is this warp's own row of column partials: no other lane writes those columns, no barrier needed).
 * DyT: float, or __nv_bfloat16 (the fused path's bf16 dX products), widened to fp32 as read. */
template <bool V4, bool BF16, bool GAIN, typename DyT>
__device__ __forceinline__ void rmsnorm_backward_row(float *dx, const DyT *dy, const float *x, float s,
                                                     const float *gain, int dim, __nv_bfloat16 *dx16, float *acc) {
    const int lane = threadIdx.x & 31;
    float dot = 0.0f;
    if (V4) {
        for (int i = lane; i < dim / 4; i += 32) {
            const float4 g = reinterpret_cast<const float4 *>(gain)[i];
            const float4 d = load4(dy, i), v = reinterpret_cast<const float4 *>(x)[i];
            dot += g.x * d.x * v.x + g.y * d.y * v.y + g.z * d.z * v.z + g.w * d.w * v.w;
        }
    } else {
        for (int i = lane; i < dim; i += 32) dot += gain[i] * load1(dy, i) * x[i];
    }
    dot = warp_sum(dot);
    const float coef = dot * s * s * s / (float)dim;
    if (V4) {
        for (int i = lane; i < dim / 4; i += 32) {
            const float4 g = reinterpret_cast<const float4 *>(gain)[i];
            const float4 d = load4(dy, i), v = reinterpret_cast<const float4 *>(x)[i];
            float4 o = reinterpret_cast<float4 *>(dx)[i];
            o.x += s * g.x * d.x - coef * v.x;
            o.y += s * g.y * d.y - coef * v.y;
            o.z += s * g.z * d.z - coef * v.z;
            o.w += s * g.w * d.w - coef * v.w;
            reinterpret_cast<float4 *>(dx)[i] = o;
            if (BF16) {
                __nv_bfloat162 *out = reinterpret_cast<__nv_bfloat162 *>(dx16 + 4 * (size_t)i);
                out[0] = __floats2bfloat162_rn(o.x, o.y);
                out[1] = __floats2bfloat162_rn(o.z, o.w);
            }
            if (GAIN) {
                float4 a = reinterpret_cast<float4 *>(acc)[i];
                a.x += d.x * v.x * s, a.y += d.y * v.y * s, a.z += d.z * v.z * s, a.w += d.w * v.w * s;
                reinterpret_cast<float4 *>(acc)[i] = a;
            }
        }
    } else {
        for (int i = lane; i < dim; i += 32) {
            const float d = load1(dy, i);
            dx[i] += s * gain[i] * d - coef * x[i];
            if (BF16) dx16[i] = __float2bfloat16_rn(dx[i]);
            if (GAIN) acc[i] += d * x[i] * s;
        }
    }
}

/* A row of the backward: held in registers (train_rmsnorm_rows.cuh) when VPL > 0, else the loops above. SET (dx
 * written, not read) only with the registers: the launchers clear dx before the loops instead. */
template <int VPL, bool V4, bool BF16, bool GAIN, typename DyT, bool SET = false>
__device__ __forceinline__ void rmsnorm_backward_any_row(float *dx, const DyT *dy, const float *x, float s,
                                                         const float *gain, int dim, __nv_bfloat16 *dx16, float *acc) {
    static_assert(VPL > 0 || !SET, "dx written without being read: register rows only");
    if constexpr (VPL > 0)
        rmsnorm_backward_row_regs<VPL, BF16, GAIN, DyT, SET>(dx, dy, x, s, gain, dim, dx16, acc);
    else
        rmsnorm_backward_row<V4, BF16, GAIN, DyT>(dx, dy, x, s, gain, dim, dx16, acc);
}

/* one warp per row (the gain gradient is a separate pass: rmsnorm_gain_partials) */
template <int VPL, bool V4, bool BF16, typename DyT>
__global__ void __launch_bounds__(kBlock) rmsnorm_backward_rows(float *dx, const DyT *dy, const float *x,
                                                                const float *inv_rms, const float *gain, int n,
                                                                int dim, __nv_bfloat16 *dx16) {
    const size_t r = (size_t)blockIdx.x * kRowsPerBlock + threadIdx.x / 32, off = r * (size_t)dim;
    if (r >= (size_t)n) return;
    rmsnorm_backward_any_row<VPL, V4, BF16, false, DyT>(dx + off, dy + off, x + off, inv_rms[r], gain, dim,
                                                        BF16 ? dx16 + off : NULL, NULL);
}

/* The rows and the gain partials in one pass: CTA c (kChunkWarps warps) takes rows [c chunk, (c + 1) chunk), warp w
 * its rows w, w + kChunkWarps, ... in order, accumulating dy x s per column into its own shared row (kChunkWarps x dim
 * floats, zeroed first); then partials[c][i] = the warps' sums of column i added in warp order. Fixed order:
 * deterministic. 16 warps of 4 rows each (64-row chunks): as many rows in flight per SM as the two-pass kernels. */
constexpr int kChunkWarps = 16;
template <int VPL, bool V4, bool BF16, typename DyT, bool SET = false>
__global__ void __launch_bounds__(kChunkWarps * 32)
    rmsnorm_backward_chunk(float *dx, float *partials, const DyT *dy, const float *x, const float *inv_rms,
                           const float *gain, int n, int dim, __nv_bfloat16 *dx16) {
    extern __shared__ float4 chunk_shared[];
    float *acc = reinterpret_cast<float *>(chunk_shared);
    const int warp = threadIdx.x / 32;
    for (int i = threadIdx.x; i < kChunkWarps * dim; i += blockDim.x) acc[i] = 0.0f;
    __syncthreads();
    const int r0 = blockIdx.x * XLKV_CUDA_TRAIN_ROW_CHUNK, r1 = min(n, r0 + XLKV_CUDA_TRAIN_ROW_CHUNK);
    for (int r = r0 + warp; r < r1; r += kChunkWarps) {
        const size_t off = (size_t)r * (size_t)dim;
        rmsnorm_backward_any_row<VPL, V4, BF16, true, DyT, SET>(dx + off, dy + off, x + off, inv_rms[r], gain, dim,
                                                           BF16 ? dx16 + off : NULL, acc + (size_t)warp * dim);
    }
    __syncthreads();
    for (int i = threadIdx.x; i < dim; i += blockDim.x) {
        float sum = 0.0f;
        for (int w = 0; w < kChunkWarps; w++) sum += acc[(size_t)w * dim + i];
        partials[(size_t)blockIdx.x * dim + i] = sum;
    }
}

template <typename DyT>
__global__ void rmsnorm_gain_partials(float *partials, const DyT *dy, const float *x, const float *inv_rms, int n,
                                      int dim) {
    const int i = blockIdx.x * blockDim.x + threadIdx.x, chunk = blockIdx.y;
    if (i >= dim) return;
    const int r0 = chunk * XLKV_CUDA_TRAIN_ROW_CHUNK, r1 = min(n, r0 + XLKV_CUDA_TRAIN_ROW_CHUNK);
    float sum = 0.0f;
    for (int r = r0; r < r1; r++) sum += load1(dy, (size_t)r * dim + i) * x[(size_t)r * dim + i] * inv_rms[r];
    partials[(size_t)chunk * dim + i] = sum;
}

/* dgain[i] += the chunk partials of column i: lane l of column i's sum takes chunks l, l + 32, ... in order, then a
 * fixed butterfly (deterministic). A block of 32 x 32 threads takes 32 columns: thread (t, l) (t = threadIdx.x % 32)
 * sums column c0 + t over chunks l, l + 32, ..., so each warp reads 32 adjacent columns of a chunk's row (coalesced;
 * one column per warp read 32 rows of partials a load), eight loads in flight; the sums cross a shared 32 x 33 tile
 * and warp w adds column c0 + w's 32 lane sums by the butterfly. */
constexpr int kGainSumUnroll = 8;
__global__ void __launch_bounds__(1024) rmsnorm_gain_sum(float *dgain, const float *partials, int chunks, int dim) {
    __shared__ float tile[32][33];
    const int t = threadIdx.x & 31, l = threadIdx.x >> 5, c0 = blockIdx.x * 32, column = c0 + t;
    float sum = 0.0f;
    if (column < dim) {
        int c = l;
        for (; c + 32 * (kGainSumUnroll - 1) < chunks; c += 32 * kGainSumUnroll) {
            float p[kGainSumUnroll];
#pragma unroll
            for (int u = 0; u < kGainSumUnroll; u++) p[u] = partials[(size_t)(c + 32 * u) * dim + column];
#pragma unroll
            for (int u = 0; u < kGainSumUnroll; u++) sum += p[u];
        }
        for (; c < chunks; c += 32) sum += partials[(size_t)c * dim + column];
    }
    tile[l][t] = sum;
    __syncthreads();
    const int lane = t, warp = l; /* warp w: column c0 + w, lane l: the sum of chunks l, l + 32, ... */
    if (c0 + warp >= dim) return;
    float v = warp_sum(tile[lane][warp]);
    if (lane == 0) dgain[c0 + warp] += v;
}

__global__ void rope(float *x, int n, int seq, int n_heads, int head_dim, const float *cos_table,
                     const float *sin_table, float direction) {
    const int half = head_dim / 2;
    const size_t pairs = (size_t)n * n_heads * half;
    for (size_t idx = blockIdx.x * (size_t)blockDim.x + threadIdx.x; idx < pairs; idx += (size_t)gridDim.x * blockDim.x) {
        const int i = (int)(idx % half);
        const size_t rh = idx / half; /* row * n_heads + head */
        const int pos = (int)((rh / n_heads) % seq);
        float *v = x + rh * head_dim;
        const float c = cos_table[(size_t)pos * half + i], sn = direction * sin_table[(size_t)pos * half + i];
        rope_pair(v[2 * i], v[2 * i + 1], c, sn, &v[2 * i], &v[2 * i + 1]);
    }
}

/* Elementwise kernels: grid-stride over float4 groups when every pointer is 16-byte aligned (n % 4 leftovers done
 * by the first threads), else over single elements. Same formula per element either way. */

template <bool V4> __global__ void swiglu_forward(float *h, const float *gate, const float *up, size_t n) {
    const size_t stride = (size_t)gridDim.x * blockDim.x, first = blockIdx.x * (size_t)blockDim.x + threadIdx.x;
    size_t done = 0;
    if (V4) {
        for (size_t i = first; i < n / 4; i += stride) {
            const float4 g = reinterpret_cast<const float4 *>(gate)[i], u = reinterpret_cast<const float4 *>(up)[i];
            reinterpret_cast<float4 *>(h)[i] = make_float4(swiglu_value(g.x, u.x), swiglu_value(g.y, u.y),
                                                           swiglu_value(g.z, u.z), swiglu_value(g.w, u.w));
        }
        done = n / 4 * 4;
    }
    for (size_t i = done + first; i < n; i += stride) h[i] = swiglu_value(gate[i], up[i]);
}

template <bool V4>
__global__ void swiglu_backward(float *dgate, float *dup, const float *dh, const float *gate, const float *up,
                                size_t n) {
    const size_t stride = (size_t)gridDim.x * blockDim.x, first = blockIdx.x * (size_t)blockDim.x + threadIdx.x;
    size_t done = 0;
    if (V4) {
        for (size_t i = first; i < n / 4; i += stride) {
            const float4 d = reinterpret_cast<const float4 *>(dh)[i], g = reinterpret_cast<const float4 *>(gate)[i],
                         u = reinterpret_cast<const float4 *>(up)[i];
            float4 og, ou;
            swiglu_grad(d.x, g.x, u.x, &og.x, &ou.x);
            swiglu_grad(d.y, g.y, u.y, &og.y, &ou.y);
            swiglu_grad(d.z, g.z, u.z, &og.z, &ou.z);
            swiglu_grad(d.w, g.w, u.w, &og.w, &ou.w);
            reinterpret_cast<float4 *>(dgate)[i] = og;
            reinterpret_cast<float4 *>(dup)[i] = ou;
        }
        done = n / 4 * 4;
    }
    for (size_t i = done + first; i < n; i += stride) swiglu_grad(dh[i], gate[i], up[i], &dgate[i], &dup[i]);
}

template <bool V4> __global__ void add(float *y, const float *x, size_t n) {
    const size_t stride = (size_t)gridDim.x * blockDim.x, first = blockIdx.x * (size_t)blockDim.x + threadIdx.x;
    size_t done = 0;
    if (V4) {
        for (size_t i = first; i < n / 4; i += stride) {
            float4 a = reinterpret_cast<float4 *>(y)[i];
            const float4 b = reinterpret_cast<const float4 *>(x)[i];
            a.x += b.x, a.y += b.y, a.z += b.z, a.w += b.w;
            reinterpret_cast<float4 *>(y)[i] = a;
        }
        done = n / 4 * 4;
    }
    for (size_t i = done + first; i < n; i += stride) y[i] += x[i];
}

__global__ void scale(float *x, float s, size_t n) {
    for (size_t i = blockIdx.x * (size_t)blockDim.x + threadIdx.x; i < n; i += (size_t)gridDim.x * blockDim.x) x[i] *= s;
}

/* ---- attention ------------------------------------------------------------------------------------------------ */
struct attn_args {
    int batch, seq, n_heads, n_kv_heads, head_dim, window, mask_diagonal;
    float scale;
};

__device__ __forceinline__ void visible_range(const attn_args &a, int t, int *first, int *last) {
    *last = a.mask_diagonal ? t - 1 : t;
    *first = a.window > 0 ? t - a.window + 1 : 0;
    if (*first < 0) *first = 0;
}

/* Lane `lane` holds dims lane, lane + 32, ... (DPL of them); dims >= head_dim read as zero. */
template <int DPL> __device__ __forceinline__ void load_head(float *dst, const float *src, int head_dim, int lane) {
#pragma unroll
    for (int j = 0; j < DPL; j++) {
        const int d = lane + 32 * j;
        dst[j] = d < head_dim ? src[d] : 0.0f;
    }
}
template <int DPL> __device__ __forceinline__ float head_dot(const float *a, const float *b) {
    float s = 0.0f;
#pragma unroll
    for (int j = 0; j < DPL; j++) s += a[j] * b[j];
    return warp_sum(s);
}

/* One warp per (row, head): out and lse. */
template <int DPL>
__global__ void attention_forward(float *out, float *lse, const float *q, const float *k, const float *v, attn_args a) {
    const int lane = threadIdx.x & 31;
    const size_t warp = (blockIdx.x * (size_t)blockDim.x + threadIdx.x) >> 5;
    const size_t n_rows = (size_t)a.batch * a.seq;
    if (warp >= n_rows * a.n_heads) return;
    const size_t row = warp / a.n_heads;
    const int h = (int)(warp % a.n_heads), t = (int)(row % a.seq), b = (int)(row / a.seq);
    const int group = a.n_heads / a.n_kv_heads, hd = a.head_dim;
    const size_t q_stride = (size_t)a.n_heads * hd, kv_stride = (size_t)a.n_kv_heads * hd;
    const float *kv_base_k = k + (size_t)b * a.seq * kv_stride + (size_t)(h / group) * hd;
    const float *kv_base_v = v + (size_t)b * a.seq * kv_stride + (size_t)(h / group) * hd;
    float qh[DPL], acc[DPL], kp[DPL], vp[DPL];
    load_head<DPL>(qh, q + row * q_stride + (size_t)h * hd, hd, lane);
#pragma unroll
    for (int j = 0; j < DPL; j++) acc[j] = 0.0f;
    int first, last;
    visible_range(a, t, &first, &last);
    float max = -INFINITY, sum = 0.0f;
    for (int p = first; p <= last; p++) {
        load_head<DPL>(kp, kv_base_k + (size_t)p * kv_stride, hd, lane);
        load_head<DPL>(vp, kv_base_v + (size_t)p * kv_stride, hd, lane);
        const float s = head_dot<DPL>(qh, kp) * a.scale;
        const float new_max = fmaxf(max, s), corr = expf(max - new_max), w = expf(s - new_max);
        sum = sum * corr + w;
#pragma unroll
        for (int j = 0; j < DPL; j++) acc[j] = acc[j] * corr + w * vp[j];
        max = new_max;
    }
    float *o = out + row * q_stride + (size_t)h * hd;
    const bool any = last >= first;
#pragma unroll
    for (int j = 0; j < DPL; j++) {
        const int d = lane + 32 * j;
        if (d < hd) o[d] = any ? acc[j] / sum : 0.0f;
    }
    if (lane == 0) lse[row * a.n_heads + h] = any ? max + logf(sum) : -INFINITY;
}

/* One warp per (row, head): delta = dout . out and dq. */
template <int DPL>
__global__ void attention_backward_dq(float *dq, float *delta, const float *dout, const float *out, const float *lse,
                                      const float *q, const float *k, const float *v, attn_args a) {
    const int lane = threadIdx.x & 31;
    const size_t warp = (blockIdx.x * (size_t)blockDim.x + threadIdx.x) >> 5;
    const size_t n_rows = (size_t)a.batch * a.seq;
    if (warp >= n_rows * a.n_heads) return;
    const size_t row = warp / a.n_heads;
    const int h = (int)(warp % a.n_heads), t = (int)(row % a.seq), b = (int)(row / a.seq);
    const int group = a.n_heads / a.n_kv_heads, hd = a.head_dim;
    const size_t q_stride = (size_t)a.n_heads * hd, kv_stride = (size_t)a.n_kv_heads * hd;
    const size_t q_off = row * q_stride + (size_t)h * hd;
    const float *kb = k + (size_t)b * a.seq * kv_stride + (size_t)(h / group) * hd;
    const float *vb = v + (size_t)b * a.seq * kv_stride + (size_t)(h / group) * hd;
    float qh[DPL], doh[DPL], oh[DPL], dqh[DPL], kp[DPL], vp[DPL];
    load_head<DPL>(qh, q + q_off, hd, lane);
    load_head<DPL>(doh, dout + q_off, hd, lane);
    load_head<DPL>(oh, out + q_off, hd, lane);
    const float d = head_dot<DPL>(doh, oh);
    if (lane == 0) delta[row * a.n_heads + h] = d;
#pragma unroll
    for (int j = 0; j < DPL; j++) dqh[j] = 0.0f;
    const float row_lse = lse[row * a.n_heads + h];
    int first, last;
    visible_range(a, t, &first, &last);
    if (isfinite(row_lse))
        for (int p = first; p <= last; p++) {
            load_head<DPL>(kp, kb + (size_t)p * kv_stride, hd, lane);
            load_head<DPL>(vp, vb + (size_t)p * kv_stride, hd, lane);
            const float prob = expf(head_dot<DPL>(qh, kp) * a.scale - row_lse);
            const float ds = prob * (head_dot<DPL>(doh, vp) - d) * a.scale;
#pragma unroll
            for (int j = 0; j < DPL; j++) dqh[j] += ds * kp[j];
        }
#pragma unroll
    for (int j = 0; j < DPL; j++) {
        const int dd = lane + 32 * j;
        if (dd < hd) dq[q_off + dd] = dqh[j];
    }
}

/* One warp per (key row, KV head): dk, dv += over the queries (of the group's heads) that see the key. */
template <int DPL>
__global__ void attention_backward_dkdv(float *dk, float *dv, const float *delta, const float *dout, const float *lse,
                                        const float *q, const float *k, const float *v, attn_args a) {
    const int lane = threadIdx.x & 31;
    const size_t warp = (blockIdx.x * (size_t)blockDim.x + threadIdx.x) >> 5;
    const size_t n_rows = (size_t)a.batch * a.seq;
    if (warp >= n_rows * a.n_kv_heads) return;
    const size_t key_row = warp / a.n_kv_heads;
    const int kvh = (int)(warp % a.n_kv_heads), p = (int)(key_row % a.seq), b = (int)(key_row / a.seq);
    const int group = a.n_heads / a.n_kv_heads, hd = a.head_dim;
    const size_t q_stride = (size_t)a.n_heads * hd, kv_stride = (size_t)a.n_kv_heads * hd;
    const size_t kv_off = key_row * kv_stride + (size_t)kvh * hd;
    float kp[DPL], vp[DPL], dkp[DPL], dvp[DPL], qt[DPL], dot_[DPL];
    load_head<DPL>(kp, k + kv_off, hd, lane);
    load_head<DPL>(vp, v + kv_off, hd, lane);
#pragma unroll
    for (int j = 0; j < DPL; j++) dkp[j] = dvp[j] = 0.0f;
    const int t_first = a.mask_diagonal ? p + 1 : p;
    int t_last = a.seq - 1;
    if (a.window > 0 && p + a.window - 1 < t_last) t_last = p + a.window - 1;
    for (int h = kvh * group; h < (kvh + 1) * group; h++)
        for (int t = t_first; t <= t_last; t++) {
            const size_t row = (size_t)b * a.seq + t, q_off = row * q_stride + (size_t)h * hd;
            const float row_lse = lse[row * a.n_heads + h];
            if (!isfinite(row_lse)) continue;
            load_head<DPL>(qt, q + q_off, hd, lane);
            load_head<DPL>(dot_, dout + q_off, hd, lane);
            const float prob = expf(head_dot<DPL>(qt, kp) * a.scale - row_lse);
            const float ds = prob * (head_dot<DPL>(dot_, vp) - delta[row * a.n_heads + h]) * a.scale;
#pragma unroll
            for (int j = 0; j < DPL; j++) {
                dkp[j] += ds * qt[j];
                dvp[j] += prob * dot_[j];
            }
        }
#pragma unroll
    for (int j = 0; j < DPL; j++) {
        const int d = lane + 32 * j;
        if (d < hd) {
            if (dk) dk[kv_off + d] += dkp[j];
            if (dv) dv[kv_off + d] += dvp[j];
        }
    }
}

attn_args make_args(const xlkv_cuda_train_attention_shape *s) {
    return attn_args{s->batch, s->seq, s->n_heads, s->n_kv_heads, s->head_dim, s->window, s->mask_diagonal ? 1 : 0,
                     1.0f / sqrtf((float)s->head_dim)};
}

unsigned warp_blocks(size_t warps) { return (unsigned)((warps * 32 + kBlock - 1) / kBlock); }

template <int DPL>
int attention_forward_launch(float *out, float *lse, const float *q, const float *k, const float *v, attn_args a,
                             cudaStream_t stream) {
    const size_t warps = (size_t)a.batch * a.seq * a.n_heads;
    attention_forward<DPL><<<warp_blocks(warps), kBlock, 0, stream>>>(out, lse, q, k, v, a);
    return launch_status();
}

template <int DPL>
int attention_backward_launch(float *dq, float *dk, float *dv, float *delta, const float *dout, const float *out,
                              const float *lse, const float *q, const float *k, const float *v, attn_args a,
                              cudaStream_t stream) {
    const size_t rows = (size_t)a.batch * a.seq;
    attention_backward_dq<DPL><<<warp_blocks(rows * a.n_heads), kBlock, 0, stream>>>(dq, delta, dout, out, lse, q, k,
                                                                                     v, a);
    int err = launch_status();
    if (err || (!dk && !dv)) return err;
    attention_backward_dkdv<DPL><<<warp_blocks(rows * a.n_kv_heads), kBlock, 0, stream>>>(dk, dv, delta, dout, lse, q,
                                                                                          k, v, a);
    return launch_status();
}

/* ---- pieces of the matrix-product attention: one warp per score row (h, b, t) of [H][B][T][T] ---------------- */
__global__ void softmax_rows(float *scores, float *lse, attn_args a, int compute_lse) {
    const int lane = threadIdx.x & 31;
    const size_t warp = (blockIdx.x * (size_t)blockDim.x + threadIdx.x) >> 5;
    const size_t rows = (size_t)a.n_heads * a.batch * a.seq;
    if (warp >= rows) return;
    const int t = (int)(warp % a.seq), b = (int)((warp / a.seq) % a.batch), h = (int)(warp / ((size_t)a.seq * a.batch));
    float *row = scores + warp * (size_t)a.seq;
    float *row_lse = lse + ((size_t)b * a.seq + t) * a.n_heads + h;
    int first, last;
    visible_range(a, t, &first, &last);
    float l;
    if (compute_lse) {
        float max = -INFINITY;
        for (int p = first + lane; p <= last; p += 32) max = fmaxf(max, row[p]);
#pragma unroll
        for (int o = 16; o > 0; o >>= 1) max = fmaxf(max, __shfl_xor_sync(0xffffffffu, max, o));
        float sum = 0.0f;
        for (int p = first + lane; p <= last; p += 32) sum += expf(row[p] - max);
        sum = warp_sum(sum);
        l = last >= first ? max + logf(sum) : -INFINITY;
        if (lane == 0) *row_lse = l;
    } else {
        l = *row_lse;
    }
    for (int p = lane; p < a.seq; p += 32) row[p] = p >= first && p <= last ? expf(row[p] - l) : 0.0f;
}

__global__ void softmax_backward_rows(float *dprobs, const float *probs, const float *delta, attn_args a) {
    const int lane = threadIdx.x & 31;
    const size_t warp = (blockIdx.x * (size_t)blockDim.x + threadIdx.x) >> 5;
    const size_t rows = (size_t)a.n_heads * a.batch * a.seq;
    if (warp >= rows) return;
    const int t = (int)(warp % a.seq), b = (int)((warp / a.seq) % a.batch), h = (int)(warp / ((size_t)a.seq * a.batch));
    const float d = delta[((size_t)b * a.seq + t) * a.n_heads + h];
    float *drow = dprobs + warp * (size_t)a.seq;
    const float *prow = probs + warp * (size_t)a.seq;
    for (int p = lane; p < a.seq; p += 32) drow[p] = prow[p] * (drow[p] - d) * a.scale;
}

template <int DPL> __global__ void attention_delta(float *delta, const float *dout, const float *out, attn_args a) {
    const int lane = threadIdx.x & 31;
    const size_t warp = (blockIdx.x * (size_t)blockDim.x + threadIdx.x) >> 5;
    if (warp >= (size_t)a.batch * a.seq * a.n_heads) return;
    const size_t off = warp * a.head_dim; /* (row * n_heads + h) * head_dim */
    float x[DPL], y[DPL];
    load_head<DPL>(x, dout + off, a.head_dim, lane);
    load_head<DPL>(y, out + off, a.head_dim, lane);
    const float d = head_dot<DPL>(x, y);
    if (lane == 0) delta[warp] = d;
}

/* ---- loss and optimizer ---------------------------------------------------------------------------------------- */
__global__ void cross_entropy_forward(float *probs, double *row_loss, const int *targets, int vocab) {
    __shared__ float shared_f[32];
    __shared__ double shared_d[32];
    const size_t r = blockIdx.x;
    float *row = probs + r * (size_t)vocab;
    const float target_logit = row[targets[r]];
    float max = -INFINITY;
    for (int c = threadIdx.x; c < vocab; c += blockDim.x) max = fmaxf(max, row[c]);
    max = block_reduce(max, max_op(), shared_f);
    double sum = 0.0;
    for (int c = threadIdx.x; c < vocab; c += blockDim.x) {
        const float e = expf(row[c] - max);
        row[c] = e;
        sum += e;
    }
    sum = block_reduce(sum, add_op(), shared_d);
    const float inv = (float)(1.0 / sum);
    for (int c = threadIdx.x; c < vocab; c += blockDim.x) row[c] *= inv;
    if (threadIdx.x == 0) row_loss[r] = -((double)(target_logit - max) - log(sum));
}

__global__ void cross_entropy_backward(float *probs, const int *targets, int vocab, float s) {
    const size_t r = blockIdx.x;
    float *row = probs + r * (size_t)vocab;
    const int target = targets[r];
    for (int c = threadIdx.x; c < vocab; c += blockDim.x) row[c] = row[c] * s - (c == target ? s : 0.0f);
}

/* one AdamW element (the update of train/optimizer.c): __fmul_rn / __fadd_rn, no contraction into FMAs, so the update
 * rounds as the CPU loop does */
__device__ __forceinline__ void adamw_element(float *w, float gi, float *m, float *v, float lr, float beta1, float beta2,
                                              float eps, float decay, float c1, float c2) {
    const float mi = __fadd_rn(__fmul_rn(beta1, *m), __fmul_rn(1.0f - beta1, gi));
    const float vi = __fadd_rn(__fmul_rn(beta2, *v), __fmul_rn(__fmul_rn(1.0f - beta2, gi), gi));
    *m = mi;
    *v = vi;
    const float mhat = mi / c1, vhat = vi / c2;
    const float update = __fadd_rn(mhat / (sqrtf(vhat) + eps), __fmul_rn(decay, *w));
    *w = __fadd_rn(*w, -__fmul_rn(lr, update));
}

__global__ void adamw(float *w, const float *g, float *m, float *v, size_t n, float lr, float beta1, float beta2,
                      float eps, float decay, float c1, float c2) {
    for (size_t i = blockIdx.x * (size_t)blockDim.x + threadIdx.x; i < n; i += (size_t)gridDim.x * blockDim.x) {
        float wi = w[i], mi = m[i], vi = v[i];
        adamw_element(&wi, g[i], &mi, &vi, lr, beta1, beta2, eps, decay, c1, c2);
        m[i] = mi, v[i] = vi, w[i] = wi;
    }
}

/* AdamW of the bf16 trainer over runs with their own decay (xlkv_cuda_train_adamw_bf16_runs; one run:
 * xlkv_cuda_train_adamw_bf16): the gradient times the clip coefficient (*coef, read from device memory: 1 when the norm
 * is under the limit; one fp32 multiply, as xlkv_cuda_train_scale), the update of adamw(), and w16 = bf16_rne(w) (the
 * weight shadow) in the same pass; V4: float4 loads / stores, the n % 4 tail by the first threads. The table is passed
 * by value: element e belongs to the first run k with e < end[k]. Groups of four whose elements share a run (all but at most one group a
 * boundary) look it up once; the others per element. */
struct adamw_runs {
    size_t end[XLKV_CUDA_TRAIN_ADAMW_RUNS];
    float decay[XLKV_CUDA_TRAIN_ADAMW_RUNS];
    int count;
};

__device__ __forceinline__ int adamw_run_of(const adamw_runs &runs, size_t e) {
    int lo = 0, hi = runs.count - 1; /* the first run whose end exceeds e (e < end[count - 1]) */
    while (lo < hi) {
        const int mid = (lo + hi) / 2;
        if (e < runs.end[mid]) hi = mid;
        else lo = mid + 1;
    }
    return lo;
}

template <bool V4>
__global__ void adamw_bf16_runs(float *w, __nv_bfloat16 *w16, const float *g, float *m, float *v, const adamw_runs runs,
                                const float *coef, float lr, float beta1, float beta2, float eps, float c1, float c2) {
    const float k = *coef;
    const size_t n = runs.end[runs.count - 1];
    const size_t first = blockIdx.x * (size_t)blockDim.x + threadIdx.x, stride = (size_t)gridDim.x * blockDim.x;
    size_t done = 0;
    if (V4) {
        for (size_t i = first; i < n / 4; i += stride) {
            const int run = adamw_run_of(runs, 4 * i);
            float d[4];
            if (4 * i + 3 < runs.end[run]) {
                d[0] = d[1] = d[2] = d[3] = runs.decay[run];
            } else {
                for (int j = 0; j < 4; j++) d[j] = runs.decay[adamw_run_of(runs, 4 * i + (size_t)j)];
            }
            float4 wi = reinterpret_cast<float4 *>(w)[i], mi = reinterpret_cast<float4 *>(m)[i];
            float4 vi = reinterpret_cast<float4 *>(v)[i];
            const float4 gi = reinterpret_cast<const float4 *>(g)[i];
            adamw_element(&wi.x, __fmul_rn(gi.x, k), &mi.x, &vi.x, lr, beta1, beta2, eps, d[0], c1, c2);
            adamw_element(&wi.y, __fmul_rn(gi.y, k), &mi.y, &vi.y, lr, beta1, beta2, eps, d[1], c1, c2);
            adamw_element(&wi.z, __fmul_rn(gi.z, k), &mi.z, &vi.z, lr, beta1, beta2, eps, d[2], c1, c2);
            adamw_element(&wi.w, __fmul_rn(gi.w, k), &mi.w, &vi.w, lr, beta1, beta2, eps, d[3], c1, c2);
            reinterpret_cast<float4 *>(w)[i] = wi, reinterpret_cast<float4 *>(m)[i] = mi;
            reinterpret_cast<float4 *>(v)[i] = vi;
            __nv_bfloat162 *out = reinterpret_cast<__nv_bfloat162 *>(w16 + 4 * i);
            out[0] = __floats2bfloat162_rn(wi.x, wi.y);
            out[1] = __floats2bfloat162_rn(wi.z, wi.w);
        }
        done = n / 4 * 4;
    }
    for (size_t i = done + first; i < n; i += stride) {
        float wi = w[i], mi = m[i], vi = v[i];
        adamw_element(&wi, __fmul_rn(g[i], k), &mi, &vi, lr, beta1, beta2, eps, runs.decay[adamw_run_of(runs, i)], c1,
                      c2);
        m[i] = mi, v[i] = vi, w[i] = wi;
        w16[i] = __float2bfloat16_rn(wi);
    }
}

/* The chunk partials of the squared gradient summed in chunk order in double (as the host loop did), the norm, and
 * the clip coefficient: tiles of the partials staged in shared memory by the block, added by thread 0 in order. */
constexpr int kClipTile = 1024;
__global__ void clip_coefficient(float *coef, double *norm_out, const double *partials, size_t chunks,
                                 double max_norm) {
    __shared__ double tile[kClipTile];
    double total = 0.0;
    for (size_t begin = 0; begin < chunks; begin += kClipTile) {
        const size_t count = chunks - begin < (size_t)kClipTile ? chunks - begin : (size_t)kClipTile;
        for (size_t i = threadIdx.x; i < count; i += blockDim.x) tile[i] = partials[begin + i];
        __syncthreads();
        if (threadIdx.x == 0)
            for (size_t i = 0; i < count; i++) total += tile[i];
        __syncthreads();
    }
    if (threadIdx.x == 0) {
        const double norm = sqrt(total);
        *norm_out = norm;
        *coef = max_norm > 0.0 && norm > max_norm ? (float)(max_norm / (norm + 1e-6)) : 1.0f;
    }
}

__global__ void sum_squares(double *partials, const float *g, size_t n) {
    __shared__ double shared[32];
    const size_t begin = (size_t)blockIdx.x * XLKV_CUDA_TRAIN_NORM_CHUNK;
    const size_t end = begin + XLKV_CUDA_TRAIN_NORM_CHUNK < n ? begin + XLKV_CUDA_TRAIN_NORM_CHUNK : n;
    double s = 0.0;
    for (size_t i = begin + threadIdx.x; i < end; i += blockDim.x) s += (double)g[i] * (double)g[i];
    s = block_reduce(s, add_op(), shared);
    if (threadIdx.x == 0) partials[blockIdx.x] = s;
}

unsigned grid_for(size_t n) {
    const size_t blocks = (n + kBlock - 1) / kBlock;
    return (unsigned)(blocks < 65535u * 8u ? (blocks ? blocks : 1) : 65535u * 8u);
}

bool aligned16(const void *p) { return ((uintptr_t)p & 15u) == 0; }
unsigned row_blocks(int n) { return (unsigned)((n + kRowsPerBlock - 1) / kRowsPerBlock); }
/* a group of four elements loadable at once (load4) */
bool aligned4(const float *p) { return aligned16(p); }
bool aligned4(const __nv_bfloat16 *p) { return ((uintptr_t)p & 7u) == 0; }

/* The backward kernels for a launch: rows held in registers for widths rows_vpl accepts (float4 layouts), else the
 * loops. chunk_kernel: the folded kernel (a CTA per chunk, gain partials in shared memory); launch_backward_rows: one
 * warp per row. */
template <typename DyT>
using chunk_kernel_fn = void (*)(float *, float *, const DyT *, const float *, const float *, const float *, int, int,
                                 __nv_bfloat16 *);
template <bool BF16, typename DyT, bool SET> chunk_kernel_fn<DyT> chunk_kernel(bool v4, int vpl) {
    if constexpr (SET) { /* the register rows only (the launcher clears dx and takes SET false otherwise) */
        switch (v4 ? vpl : 0) {
        case 1: return rmsnorm_backward_chunk<1, true, BF16, DyT, true>;
        case 2: return rmsnorm_backward_chunk<2, true, BF16, DyT, true>;
        case 4: return rmsnorm_backward_chunk<4, true, BF16, DyT, true>;
        case 6: return rmsnorm_backward_chunk<6, true, BF16, DyT, true>;
        case 8: return rmsnorm_backward_chunk<8, true, BF16, DyT, true>;
        default: return nullptr;
        }
    } else {
        if (!v4) return rmsnorm_backward_chunk<0, false, BF16, DyT>;
        switch (vpl) {
        case 1: return rmsnorm_backward_chunk<1, true, BF16, DyT>;
        case 2: return rmsnorm_backward_chunk<2, true, BF16, DyT>;
        case 4: return rmsnorm_backward_chunk<4, true, BF16, DyT>;
        case 6: return rmsnorm_backward_chunk<6, true, BF16, DyT>;
        case 8: return rmsnorm_backward_chunk<8, true, BF16, DyT>;
        default: return rmsnorm_backward_chunk<0, true, BF16, DyT>;
        }
    }
}
template <int VPL, bool V4, bool BF16, typename DyT>
void launch_rows(float *dx, const DyT *dy, const float *x, const float *inv_rms, const float *gain, int n, int dim,
                 __nv_bfloat16 *d16, cudaStream_t s) {
    rmsnorm_backward_rows<VPL, V4, BF16, DyT><<<row_blocks(n), kBlock, 0, s>>>(dx, dy, x, inv_rms, gain, n, dim, d16);
}
template <bool BF16, typename DyT>
void launch_backward_rows(bool v4, int vpl, float *dx, const DyT *dy, const float *x, const float *inv_rms,
                          const float *gain, int n, int dim, __nv_bfloat16 *d16, cudaStream_t s) {
    if (!v4) return launch_rows<0, false, BF16, DyT>(dx, dy, x, inv_rms, gain, n, dim, d16, s);
    switch (vpl) {
    case 1: return launch_rows<1, true, BF16, DyT>(dx, dy, x, inv_rms, gain, n, dim, d16, s);
    case 2: return launch_rows<2, true, BF16, DyT>(dx, dy, x, inv_rms, gain, n, dim, d16, s);
    case 4: return launch_rows<4, true, BF16, DyT>(dx, dy, x, inv_rms, gain, n, dim, d16, s);
    case 6: return launch_rows<6, true, BF16, DyT>(dx, dy, x, inv_rms, gain, n, dim, d16, s);
    case 8: return launch_rows<8, true, BF16, DyT>(dx, dy, x, inv_rms, gain, n, dim, d16, s);
    default: return launch_rows<0, true, BF16, DyT>(dx, dy, x, inv_rms, gain, n, dim, d16, s);
    }
}

template <typename DyT>
bool backward_v4(const float *dx, const uint16_t *dx16, const DyT *dy, const float *x, const float *gain, int dim) {
    return dim % 4 == 0 && aligned16(dx) && aligned4(dy) && aligned16(x) && aligned16(gain) && (uintptr_t)dx16 % 8 == 0;
}

/* dgain += the chunk partials (rmsnorm_gain_sum: 32 columns a block) */
int add_gain_partials(float *dgain, const float *partials, int chunks, int dim, cudaStream_t s) {
    rmsnorm_gain_sum<<<(unsigned)((dim + 31) / 32), 1024, 0, s>>>(dgain, partials, chunks, dim);
    return launch_status();
}

/* the RMSNorm backward, two passes (rows, then the gain partials and their sum) */
template <typename DyT>
int rmsnorm_backward_two_pass(float *dx, uint16_t *dx16, float *dgain, const DyT *dy, const float *x,
                              const float *inv_rms, const float *gain, int n, int dim, float *partials,
                              cudaStream_t s) {
    if (n < 0 || dim <= 0) return (int)cudaErrorInvalidValue;
    if (n == 0) return 0;
    __nv_bfloat16 *d16 = reinterpret_cast<__nv_bfloat16 *>(dx16);
    const bool v4 = backward_v4(dx, dx16, dy, x, gain, dim);
    const int vpl = v4 ? rows_vpl(dim) : 0;
    if (dx16)
        launch_backward_rows<true, DyT>(v4, vpl, dx, dy, x, inv_rms, gain, n, dim, d16, s);
    else
        launch_backward_rows<false, DyT>(v4, vpl, dx, dy, x, inv_rms, gain, n, dim, d16, s);
    int err = launch_status();
    if (err) return err;
    const int chunks = (n + XLKV_CUDA_TRAIN_ROW_CHUNK - 1) / XLKV_CUDA_TRAIN_ROW_CHUNK;
    rmsnorm_gain_partials<DyT><<<dim3(blocks_for((size_t)dim), (unsigned)chunks), kBlock, 0, s>>>(partials, dy, x,
                                                                                                 inv_rms, n, dim);
    if ((err = launch_status())) return err;
    return add_gain_partials(dgain, partials, chunks, dim, s);
}

/* the RMSNorm backward, the gain partials folded into the rows pass (the two-pass one where too wide); set: dx is
 * written, not added to (the register rows take dx as +0; other paths clear it first: the same bits either way) */
template <typename DyT>
int rmsnorm_backward_folded(float *dx, uint16_t *dx16, float *dgain, const DyT *dy, const float *x,
                            const float *inv_rms, const float *gain, int n, int dim, float *partials, bool set,
                            cudaStream_t s) {
    if (n < 0 || dim <= 0) return (int)cudaErrorInvalidValue;
    if (n == 0) return 0;
    const size_t shared = (size_t)kChunkWarps * (size_t)dim * sizeof(float);
    int device = 0, optin = 0;
    cudaError_t e = cudaGetDevice(&device);
    if (e == cudaSuccess) e = cudaDeviceGetAttribute(&optin, cudaDevAttrMaxSharedMemoryPerBlockOptin, device);
    if (e != cudaSuccess) return (int)e;
    const bool v4 = backward_v4(dx, dx16, dy, x, gain, dim);
    const int vpl = v4 ? rows_vpl(dim) : 0;
    if (set && (!vpl || shared > (size_t)optin)) { /* the loops add: clear dx first */
        if ((e = cudaMemsetAsync(dx, 0, (size_t)n * (size_t)dim * sizeof(float), s)) != cudaSuccess) return (int)e;
        set = false;
    }
    if (shared > (size_t)optin) /* too wide for one shared row per warp: the two-pass path */
        return rmsnorm_backward_two_pass<DyT>(dx, dx16, dgain, dy, x, inv_rms, gain, n, dim, partials, s);
    __nv_bfloat16 *d16 = reinterpret_cast<__nv_bfloat16 *>(dx16);
    const chunk_kernel_fn<DyT> kernel =
        set ? (dx16 ? chunk_kernel<true, DyT, true>(v4, vpl) : chunk_kernel<false, DyT, true>(v4, vpl))
            : (dx16 ? chunk_kernel<true, DyT, false>(v4, vpl) : chunk_kernel<false, DyT, false>(v4, vpl));
    if (shared > 48u * 1024u &&
        (e = cudaFuncSetAttribute(kernel, cudaFuncAttributeMaxDynamicSharedMemorySize, (int)shared)) != cudaSuccess)
        return (int)e;
    const int chunks = (n + XLKV_CUDA_TRAIN_ROW_CHUNK - 1) / XLKV_CUDA_TRAIN_ROW_CHUNK;
    kernel<<<(unsigned)chunks, kChunkWarps * 32, shared, s>>>(dx, partials, dy, x, inv_rms, gain, n, dim, d16);
    int err = launch_status();
    if (err) return err;
    return add_gain_partials(dgain, partials, chunks, dim, s);
}

} // namespace

extern "C" {

int xlkv_cuda_train_embedding_forward(float *x, const int *tokens, const float *table, int n, int dim, void *stream) {
    embedding_forward<<<n, kBlock, 0, (cudaStream_t)stream>>>(x, tokens, table, dim);
    return launch_status();
}

int xlkv_cuda_train_embedding_backward(float *dtable, const float *dx, const int *tokens, const int *order,
                                       const int *starts, int n_groups, int dim, void *stream) {
    if (n_groups <= 0) return 0;
    embedding_backward<<<n_groups, kBlock, 0, (cudaStream_t)stream>>>(dtable, dx, tokens, order, starts, dim);
    return launch_status();
}

int xlkv_cuda_train_rmsnorm_forward(float *y, float *inv_rms, const float *x, const float *gain, int n, int dim,
                                    float eps, void *stream) {
    if (n < 0 || dim <= 0) return (int)cudaErrorInvalidValue;
    if (n == 0) return 0;
    const bool v4 = dim % 4 == 0 && aligned16(y) && aligned16(x) && aligned16(gain);
    if (v4 && rows_vpl(dim))
        launch_rmsnorm_forward_rows_regs<false, float, float>(rows_vpl(dim), y, inv_rms, NULL, x, (const float *)NULL,
                                                              gain, n, dim, eps, (cudaStream_t)stream);
    else if (v4)
        rmsnorm_forward<true><<<row_blocks(n), kBlock, 0, (cudaStream_t)stream>>>(y, inv_rms, x, gain, n, dim, eps);
    else
        rmsnorm_forward<false><<<row_blocks(n), kBlock, 0, (cudaStream_t)stream>>>(y, inv_rms, x, gain, n, dim, eps);
    return launch_status();
}

int xlkv_cuda_train_rmsnorm_backward(float *dx, float *dgain, const float *dy, const float *x, const float *inv_rms,
                                     const float *gain, int n, int dim, float *partials, void *stream) {
    return xlkv_cuda_train_rmsnorm_backward_bf16(dx, NULL, dgain, dy, x, inv_rms, gain, n, dim, partials, stream);
}

int xlkv_cuda_train_rmsnorm_backward_bf16(float *dx, uint16_t *dx16, float *dgain, const float *dy, const float *x,
                                          const float *inv_rms, const float *gain, int n, int dim, float *partials,
                                          void *stream) {
    return rmsnorm_backward_two_pass<float>(dx, dx16, dgain, dy, x, inv_rms, gain, n, dim, partials,
                                            (cudaStream_t)stream);
}

int xlkv_cuda_train_rmsnorm_backward_folded(float *dx, uint16_t *dx16, float *dgain, const float *dy, const float *x,
                                            const float *inv_rms, const float *gain, int n, int dim, float *partials,
                                            void *stream) {
    return rmsnorm_backward_folded<float>(dx, dx16, dgain, dy, x, inv_rms, gain, n, dim, partials, false,
                                          (cudaStream_t)stream);
}

int xlkv_cuda_train_rmsnorm_backward_folded_dy16(float *dx, uint16_t *dx16, float *dgain, const uint16_t *dy16,
                                                 const float *x, const float *inv_rms, const float *gain, int n,
                                                 int dim, float *partials, void *stream) {
    return rmsnorm_backward_folded<__nv_bfloat16>(dx, dx16, dgain, reinterpret_cast<const __nv_bfloat16 *>(dy16), x,
                                                  inv_rms, gain, n, dim, partials, false, (cudaStream_t)stream);
}

int xlkv_cuda_train_rmsnorm_backward_folded_dy16_set(float *dx, uint16_t *dx16, float *dgain, const uint16_t *dy16,
                                                     const float *x, const float *inv_rms, const float *gain, int n,
                                                     int dim, float *partials, void *stream) {
    return rmsnorm_backward_folded<__nv_bfloat16>(dx, dx16, dgain, reinterpret_cast<const __nv_bfloat16 *>(dy16), x,
                                                  inv_rms, gain, n, dim, partials, true, (cudaStream_t)stream);
}

int xlkv_cuda_train_rope(float *x, int n, int seq, int n_heads, int head_dim, const float *cos_table,
                         const float *sin_table, float direction, void *stream) {
    if (!launch_rope_rows<true, float>(x, (size_t)n_heads * (size_t)head_dim, x, n, seq, n_heads, head_dim, cos_table,
                                       sin_table, direction, (cudaStream_t)stream))
        rope<<<grid_for((size_t)n * n_heads * (head_dim / 2)), kBlock, 0, (cudaStream_t)stream>>>(
            x, n, seq, n_heads, head_dim, cos_table, sin_table, direction);
    return launch_status();
}

int xlkv_cuda_train_swiglu_forward(float *h, const float *gate, const float *up, size_t n, void *stream) {
    if (aligned16(h) && aligned16(gate) && aligned16(up))
        swiglu_forward<true><<<grid_for(n / 4), kBlock, 0, (cudaStream_t)stream>>>(h, gate, up, n);
    else
        swiglu_forward<false><<<grid_for(n), kBlock, 0, (cudaStream_t)stream>>>(h, gate, up, n);
    return launch_status();
}

int xlkv_cuda_train_swiglu_backward(float *dgate, float *dup, const float *dh, const float *gate, const float *up,
                                    size_t n, void *stream) {
    if (aligned16(dgate) && aligned16(dup) && aligned16(dh) && aligned16(gate) && aligned16(up))
        swiglu_backward<true><<<grid_for(n / 4), kBlock, 0, (cudaStream_t)stream>>>(dgate, dup, dh, gate, up, n);
    else
        swiglu_backward<false><<<grid_for(n), kBlock, 0, (cudaStream_t)stream>>>(dgate, dup, dh, gate, up, n);
    return launch_status();
}

int xlkv_cuda_train_add(float *y, const float *x, size_t n, void *stream) {
    if (aligned16(y) && aligned16(x))
        add<true><<<grid_for(n / 4), kBlock, 0, (cudaStream_t)stream>>>(y, x, n);
    else
        add<false><<<grid_for(n), kBlock, 0, (cudaStream_t)stream>>>(y, x, n);
    return launch_status();
}

int xlkv_cuda_train_scale(float *x, float s, size_t n, void *stream) {
    scale<<<grid_for(n), kBlock, 0, (cudaStream_t)stream>>>(x, s, n);
    return launch_status();
}

int xlkv_cuda_train_attention_forward(float *out, float *lse, const float *q, const float *k, const float *v,
                                      const xlkv_cuda_train_attention_shape *shape, void *stream) {
    const attn_args a = make_args(shape);
    cudaStream_t s = (cudaStream_t)stream;
    if (a.head_dim <= 32) return attention_forward_launch<1>(out, lse, q, k, v, a, s);
    if (a.head_dim <= 64) return attention_forward_launch<2>(out, lse, q, k, v, a, s);
    if (a.head_dim <= 128) return attention_forward_launch<4>(out, lse, q, k, v, a, s);
    if (a.head_dim <= 256) return attention_forward_launch<8>(out, lse, q, k, v, a, s);
    return (int)cudaErrorInvalidValue;
}

int xlkv_cuda_train_attention_backward(float *dq, float *dk, float *dv, float *delta, const float *dout,
                                       const float *out, const float *lse, const float *q, const float *k,
                                       const float *v, const xlkv_cuda_train_attention_shape *shape, void *stream) {
    const attn_args a = make_args(shape);
    cudaStream_t s = (cudaStream_t)stream;
    if (a.head_dim <= 32) return attention_backward_launch<1>(dq, dk, dv, delta, dout, out, lse, q, k, v, a, s);
    if (a.head_dim <= 64) return attention_backward_launch<2>(dq, dk, dv, delta, dout, out, lse, q, k, v, a, s);
    if (a.head_dim <= 128) return attention_backward_launch<4>(dq, dk, dv, delta, dout, out, lse, q, k, v, a, s);
    if (a.head_dim <= 256) return attention_backward_launch<8>(dq, dk, dv, delta, dout, out, lse, q, k, v, a, s);
    return (int)cudaErrorInvalidValue;
}

int xlkv_cuda_train_softmax_rows(float *scores, float *lse, const xlkv_cuda_train_attention_shape *shape,
                                 bool compute_lse, void *stream) {
    const attn_args a = make_args(shape);
    softmax_rows<<<warp_blocks((size_t)a.n_heads * a.batch * a.seq), kBlock, 0, (cudaStream_t)stream>>>(
        scores, lse, a, compute_lse ? 1 : 0);
    return launch_status();
}

int xlkv_cuda_train_softmax_backward_rows(float *dprobs, const float *probs, const float *delta,
                                          const xlkv_cuda_train_attention_shape *shape, void *stream) {
    const attn_args a = make_args(shape);
    softmax_backward_rows<<<warp_blocks((size_t)a.n_heads * a.batch * a.seq), kBlock, 0, (cudaStream_t)stream>>>(
        dprobs, probs, delta, a);
    return launch_status();
}

int xlkv_cuda_train_attention_delta(float *delta, const float *dout, const float *out,
                                    const xlkv_cuda_train_attention_shape *shape, void *stream) {
    const attn_args a = make_args(shape);
    const unsigned blocks = warp_blocks((size_t)a.batch * a.seq * a.n_heads);
    cudaStream_t s = (cudaStream_t)stream;
    if (a.head_dim <= 32) attention_delta<1><<<blocks, kBlock, 0, s>>>(delta, dout, out, a);
    else if (a.head_dim <= 64) attention_delta<2><<<blocks, kBlock, 0, s>>>(delta, dout, out, a);
    else if (a.head_dim <= 128) attention_delta<4><<<blocks, kBlock, 0, s>>>(delta, dout, out, a);
    else if (a.head_dim <= 256) attention_delta<8><<<blocks, kBlock, 0, s>>>(delta, dout, out, a);
    else return (int)cudaErrorInvalidValue;
    return launch_status();
}

int xlkv_cuda_train_cross_entropy_forward(float *probs, double *row_loss, const int *targets, int n, int vocab,
                                          void *stream) {
    cross_entropy_forward<<<n, kBlock, 0, (cudaStream_t)stream>>>(probs, row_loss, targets, vocab);
    return launch_status();
}

int xlkv_cuda_train_cross_entropy_backward(float *probs, const int *targets, int n, int vocab, float s,
                                           void *stream) {
    cross_entropy_backward<<<n, kBlock, 0, (cudaStream_t)stream>>>(probs, targets, vocab, s);
    return launch_status();
}

int xlkv_cuda_train_adamw(float *w, const float *g, float *m, float *v, size_t n, float lr, float beta1, float beta2,
                          float eps, float decay, float c1, float c2, void *stream) {
    adamw<<<grid_for(n), kBlock, 0, (cudaStream_t)stream>>>(w, g, m, v, n, lr, beta1, beta2, eps, decay, c1, c2);
    return launch_status();
}

int xlkv_cuda_train_adamw_bf16(float *w, uint16_t *w16, const float *g, float *m, float *v, size_t n,
                               const float *coef, float lr, float beta1, float beta2, float eps, float decay, float c1,
                               float c2, void *stream) {
    if (n == 0) return 0;
    return xlkv_cuda_train_adamw_bf16_runs(w, w16, g, m, v, &n, &decay, 1, coef, lr, beta1, beta2, eps, c1, c2, stream);
}

int xlkv_cuda_train_adamw_bf16_runs(float *w, uint16_t *w16, const float *g, float *m, float *v,
                                    const size_t *run_ends, const float *run_decays, int runs, const float *coef,
                                    float lr, float beta1, float beta2, float eps, float c1, float c2, void *stream) {
    if (runs <= 0 || !run_ends || !run_decays || !w || !w16 || !g || !m || !v || !coef)
        return (int)cudaErrorInvalidValue;
    for (int r = 0; r < runs; r++)
        if (run_ends[r] <= (r ? run_ends[r - 1] : 0)) return (int)cudaErrorInvalidValue;
    cudaStream_t s = (cudaStream_t)stream;
    __nv_bfloat16 *shadow = reinterpret_cast<__nv_bfloat16 *>(w16);
    /* XLKV_CUDA_TRAIN_ADAMW_RUNS runs a launch, each launch's pointers and ends relative to its first float */
    for (int first = 0; first < runs; first += XLKV_CUDA_TRAIN_ADAMW_RUNS) {
        const int count = runs - first < XLKV_CUDA_TRAIN_ADAMW_RUNS ? runs - first : XLKV_CUDA_TRAIN_ADAMW_RUNS;
        const size_t base = first ? run_ends[first - 1] : 0;
        adamw_runs table = {};
        table.count = count;
        for (int r = 0; r < count; r++) table.end[r] = run_ends[first + r] - base, table.decay[r] = run_decays[first + r];
        const size_t n = table.end[count - 1];
        float *wb = w + base, *mb = m + base, *vb = v + base;
        const float *gb = g + base;
        __nv_bfloat16 *sb = shadow + base;
        if (aligned16(wb) && aligned16(gb) && aligned16(mb) && aligned16(vb) && (uintptr_t)sb % 8 == 0)
            adamw_bf16_runs<true><<<grid_for(n / 4 + 1), kBlock, 0, s>>>(wb, sb, gb, mb, vb, table, coef, lr, beta1,
                                                                         beta2, eps, c1, c2);
        else
            adamw_bf16_runs<false><<<grid_for(n), kBlock, 0, s>>>(wb, sb, gb, mb, vb, table, coef, lr, beta1, beta2, eps,
                                                                  c1, c2);
        const int err = launch_status();
        if (err) return err;
    }
    return 0;
}

int xlkv_cuda_train_clip_coefficient(float *coef, double *norm, const double *partials, size_t chunks,
                                     double max_norm, void *stream) {
    if (!coef || !norm || (chunks && !partials)) return (int)cudaErrorInvalidValue;
    clip_coefficient<<<1, kBlock, 0, (cudaStream_t)stream>>>(coef, norm, partials, chunks, max_norm);
    return launch_status();
}

int xlkv_cuda_train_sum_squares(double *partials, const float *g, size_t n, void *stream) {
    const size_t chunks = (n + XLKV_CUDA_TRAIN_NORM_CHUNK - 1) / XLKV_CUDA_TRAIN_NORM_CHUNK;
    if (!chunks) return 0;
    sum_squares<<<(unsigned)chunks, kBlock, 0, (cudaStream_t)stream>>>(partials, g, n);
    return launch_status();
}

} // extern "C"
