/* backend/cuda/train_fused: the bf16 trainer's fused kernels (see train_fused.h). The fp32 arithmetic of each is
 * written exactly as in train_kernels.cu (rmsnorm_forward, swiglu_value / swiglu_grad, rope, add): one warp per row
 * for the RMSNorms with float4 loads where every row is 16-byte aligned, grid strides for the elementwise ones;
 * only the stores change (bf16, round to nearest even), and the variants with bf16 inputs widen them as they load
 * (load1 / load4, exact). */
#include <cuda_bf16.h>
#include <cuda_runtime.h>
#include <stdint.h>

#include "backend/cuda/train_fused.h"
#include "backend/cuda/train_kernels.h"
#include "backend/cuda/train_kernels_common.cuh"
#include "backend/cuda/train_rmsnorm_rows.cuh"

using namespace xlkv_train;

namespace {

constexpr unsigned kMaxBlocks = 1u << 16;

unsigned blocks_for(size_t n) {
    const size_t b = (n + kBlock - 1) / kBlock;
    return b > kMaxBlocks ? kMaxBlocks : (unsigned)(b ? b : 1);
}
bool aligned(const void *p, size_t bytes) { return (uintptr_t)p % bytes == 0; }

__device__ __forceinline__ void store4(__nv_bfloat16 *dst, float a, float b, float c, float d) {
    __nv_bfloat162 *out = reinterpret_cast<__nv_bfloat162 *>(dst);
    out[0] = __floats2bfloat162_rn(a, b);
    out[1] = __floats2bfloat162_rn(c, d);
}

/* One warp per row. ADD: xr = a + b is formed first (written to sum), as train_kernels.cu's add then rmsnorm_forward
 * (the sum is re-read from registers, the same fp32 values). */
template <bool V4, bool ADD, typename BT>
__global__ void rmsnorm_forward_bf16(__nv_bfloat16 *y16, float *inv_rms, float *x_out, const float *x,
                                     const BT *b, const float *gain, int n, int dim, float eps) {
    const size_t r = (size_t)blockIdx.x * kRowsPerBlock + threadIdx.x / 32, off = r * (size_t)dim;
    const int lane = threadIdx.x & 31;
    if (r >= (size_t)n) return;
    const float *xr = x + off;
    float ss = 0.0f;
    if (V4) {
        for (int i = lane; i < dim / 4; i += 32) {
            float4 v = reinterpret_cast<const float4 *>(xr)[i];
            if (ADD) {
                const float4 p = load4(b + off, i);
                v.x += p.x, v.y += p.y, v.z += p.z, v.w += p.w;
            }
            if (x_out) reinterpret_cast<float4 *>(x_out + off)[i] = v;
            ss += v.x * v.x + v.y * v.y + v.z * v.z + v.w * v.w;
        }
    } else {
        for (int i = lane; i < dim; i += 32) {
            float v = xr[i];
            if (ADD) v += load1(b, off + i);
            if (x_out) x_out[off + i] = v;
            ss += v * v;
        }
    }
    ss = warp_sum(ss);
    const float s = 1.0f / sqrtf(ss / (float)dim + eps);
    if (lane == 0) inv_rms[r] = s;
    /* the row again: from x_out when it holds the sum (the same lane wrote it: no barrier needed), else from x */
    const float *src = ADD ? x_out + off : xr;
    __nv_bfloat16 *yr = y16 + off;
    if (V4) {
        for (int i = lane; i < dim / 4; i += 32) {
            const float4 v = reinterpret_cast<const float4 *>(src)[i], g = reinterpret_cast<const float4 *>(gain)[i];
            store4(yr + 4 * i, g.x * (s * v.x), g.y * (s * v.y), g.z * (s * v.z), g.w * (s * v.w));
        }
    } else {
        for (int i = lane; i < dim; i += 32) yr[i] = __float2bfloat16_rn(gain[i] * (s * src[i]));
    }
}

template <bool V4, typename BT> __global__ void add_out(float *y, const float *a, const BT *b, size_t n) {
    const size_t stride = (size_t)gridDim.x * blockDim.x, first = blockIdx.x * (size_t)blockDim.x + threadIdx.x;
    size_t done = 0;
    if (V4) {
        for (size_t i = first; i < n / 4; i += stride) {
            float4 u = reinterpret_cast<const float4 *>(a)[i];
            const float4 v = load4(b, i);
            u.x += v.x, u.y += v.y, u.z += v.z, u.w += v.w;
            reinterpret_cast<float4 *>(y)[i] = u;
        }
        done = n / 4 * 4;
    }
    for (size_t i = done + first; i < n; i += stride) y[i] = a[i] + load1(b, i);
}

template <bool V4> __global__ void swiglu_forward_bf16(__nv_bfloat16 *h16, const float *gate, const float *up, size_t n) {
    const size_t stride = (size_t)gridDim.x * blockDim.x, first = blockIdx.x * (size_t)blockDim.x + threadIdx.x;
    size_t done = 0;
    if (V4) {
        for (size_t i = first; i < n / 4; i += stride) {
            const float4 g = reinterpret_cast<const float4 *>(gate)[i], u = reinterpret_cast<const float4 *>(up)[i];
            store4(h16 + 4 * i, swiglu_value(g.x, u.x), swiglu_value(g.y, u.y), swiglu_value(g.z, u.z),
                   swiglu_value(g.w, u.w));
        }
        done = n / 4 * 4;
    }
    for (size_t i = done + first; i < n; i += stride) h16[i] = __float2bfloat16_rn(swiglu_value(gate[i], up[i]));
}

/* element e = r * hid + c of the packed inputs; V4: groups of 4 columns (hid % 4 == 0) */
template <bool V4>
__global__ void swiglu_backward_bf16(__nv_bfloat16 *dgu16, size_t ld, const float *dh, const float *gate,
                                     const float *up, size_t rows, int hid) {
    const size_t stride = (size_t)gridDim.x * blockDim.x, first = blockIdx.x * (size_t)blockDim.x + threadIdx.x;
    if (V4) {
        const size_t quads = (size_t)hid / 4;
        for (size_t i = first; i < rows * quads; i += stride) {
            const size_t r = i / quads, c = 4 * (i % quads);
            const float4 d = reinterpret_cast<const float4 *>(dh)[i], g = reinterpret_cast<const float4 *>(gate)[i],
                         u = reinterpret_cast<const float4 *>(up)[i];
            float4 og, ou;
            swiglu_grad(d.x, g.x, u.x, &og.x, &ou.x);
            swiglu_grad(d.y, g.y, u.y, &og.y, &ou.y);
            swiglu_grad(d.z, g.z, u.z, &og.z, &ou.z);
            swiglu_grad(d.w, g.w, u.w, &og.w, &ou.w);
            store4(dgu16 + r * ld + c, og.x, og.y, og.z, og.w);
            store4(dgu16 + r * ld + (size_t)hid + c, ou.x, ou.y, ou.z, ou.w);
        }
    } else {
        for (size_t i = first; i < rows * (size_t)hid; i += stride) {
            const size_t r = i / (size_t)hid, c = i % (size_t)hid;
            float og, ou;
            swiglu_grad(dh[i], gate[i], up[i], &og, &ou);
            dgu16[r * ld + c] = __float2bfloat16_rn(og);
            dgu16[r * ld + (size_t)hid + c] = __float2bfloat16_rn(ou);
        }
    }
}

/* Row and column of the flat index i over rows of `width` items: a 32-bit division where every index fits (narrow,
 * the same for the whole grid; a 64-bit division is a long instruction sequence, once per four elements here). */
__device__ __forceinline__ void split_index(size_t i, size_t width, bool narrow, size_t *r, size_t *c) {
    if (narrow) {
        const unsigned a = (unsigned)i, w = (unsigned)width;
        *r = a / w, *c = a % w;
    } else {
        *r = i / width, *c = i % width;
    }
}
bool fits_32_bits(size_t items) { return items <= 0xFFFFFFFFu; } /* every index i < items fits */

/* From bf16 [gate | up] rows (gu16, row stride ld_in: gate at column c, up at hid + c): h16[r * hid + c] =
 * bf16(swiglu_value). V4: groups of 4 columns (hid % 4 == 0, ld_in % 4 == 0, 8-byte aligned). */
template <bool V4>
__global__ void swiglu_forward_from_bf16(__nv_bfloat16 *h16, const __nv_bfloat16 *gu16, size_t ld_in, size_t rows,
                                         int hid, bool narrow) {
    const size_t stride = (size_t)gridDim.x * blockDim.x, first = blockIdx.x * (size_t)blockDim.x + threadIdx.x;
    const size_t width = V4 ? (size_t)hid / 4 : (size_t)hid;
    for (size_t i = first; i < rows * width; i += stride) {
        size_t r, c;
        split_index(i, width, narrow, &r, &c);
        c *= V4 ? 4 : 1;
        const __nv_bfloat16 *g = gu16 + r * ld_in + c, *u = g + hid;
        __nv_bfloat16 *h = h16 + r * (size_t)hid + c;
        if (V4) {
            const float4 gv = load4(g, 0), uv = load4(u, 0);
            store4(h, swiglu_value(gv.x, uv.x), swiglu_value(gv.y, uv.y), swiglu_value(gv.z, uv.z),
                   swiglu_value(gv.w, uv.w));
        } else {
            h[0] = __float2bfloat16_rn(swiglu_value(load1(g, 0), load1(u, 0)));
        }
    }
}

/* From bf16 dh16 [rows, hid] and [gate | up] (row stride ld_in) to bf16 [dgate | dup] (row stride ld_out) */
template <bool V4>
__global__ void swiglu_backward_from_bf16(__nv_bfloat16 *dgu16, size_t ld_out, const __nv_bfloat16 *dh16,
                                          const __nv_bfloat16 *gu16, size_t ld_in, size_t rows, int hid, bool narrow) {
    const size_t stride = (size_t)gridDim.x * blockDim.x, first = blockIdx.x * (size_t)blockDim.x + threadIdx.x;
    const size_t width = V4 ? (size_t)hid / 4 : (size_t)hid;
    for (size_t i = first; i < rows * width; i += stride) {
        size_t r, c;
        split_index(i, width, narrow, &r, &c);
        c *= V4 ? 4 : 1;
        const __nv_bfloat16 *g = gu16 + r * ld_in + c, *u = g + hid, *d = dh16 + r * (size_t)hid + c;
        __nv_bfloat16 *og = dgu16 + r * ld_out + c, *ou = og + hid;
        if (V4) {
            const float4 dv = load4(d, 0), gv = load4(g, 0), uv = load4(u, 0);
            float4 a, b;
            swiglu_grad(dv.x, gv.x, uv.x, &a.x, &b.x);
            swiglu_grad(dv.y, gv.y, uv.y, &a.y, &b.y);
            swiglu_grad(dv.z, gv.z, uv.z, &a.z, &b.z);
            swiglu_grad(dv.w, gv.w, uv.w, &a.w, &b.w);
            store4(og, a.x, a.y, a.z, a.w);
            store4(ou, b.x, b.y, b.z, b.w);
        } else {
            float a, b;
            swiglu_grad(load1(d, 0), load1(g, 0), load1(u, 0), &a, &b);
            og[0] = __float2bfloat16_rn(a);
            ou[0] = __float2bfloat16_rn(b);
        }
    }
}

/* one thread per (row, head, pair), as train_kernels.cu's rope */
template <bool ROTATE>
__global__ void rope_to_bf16(__nv_bfloat16 *dst, size_t ld, const float *x, int n, int seq, int n_heads,
                             int head_dim, const float *cos_table, const float *sin_table, float direction) {
    const int half = head_dim / 2;
    const size_t pairs = (size_t)n * n_heads * half;
    for (size_t idx = blockIdx.x * (size_t)blockDim.x + threadIdx.x; idx < pairs; idx += (size_t)gridDim.x * blockDim.x) {
        const int i = (int)(idx % half);
        const size_t rh = idx / half; /* row * n_heads + head */
        const size_t row = rh / n_heads, head = rh % n_heads;
        const float *v = x + rh * head_dim;
        __nv_bfloat16 *out = dst + row * ld + head * (size_t)head_dim;
        const float a = v[2 * i], b = v[2 * i + 1];
        if (ROTATE) {
            const int pos = (int)(row % seq);
            const float c = cos_table[(size_t)pos * half + i], sn = direction * sin_table[(size_t)pos * half + i];
            float ra, rb;
            rope_pair(a, b, c, sn, &ra, &rb);
            out[2 * i] = __float2bfloat16_rn(ra);
            out[2 * i + 1] = __float2bfloat16_rn(rb);
        } else {
            out[2 * i] = __float2bfloat16_rn(a);
            out[2 * i + 1] = __float2bfloat16_rn(b);
        }
    }
}

int launch_status() { return (int)cudaGetLastError(); }

template <bool ADD, typename BT>
int launch_rmsnorm(uint16_t *y16, float *inv_rms, float *x_out, const float *x, const BT *b, const float *gain,
                   int n, int dim, float eps, void *stream) {
    if (n < 0 || dim <= 0) return (int)cudaErrorInvalidValue;
    if (n == 0) return 0;
    const bool v4 = dim % 4 == 0 && aligned(x, 16) && aligned(gain, 16) && aligned(y16, 8) &&
                    (!x_out || aligned(x_out, 16)) && (!b || aligned(b, 4 * sizeof(BT)));
    const unsigned blocks = (unsigned)(((size_t)n + kRowsPerBlock - 1) / kRowsPerBlock);
    __nv_bfloat16 *y = reinterpret_cast<__nv_bfloat16 *>(y16);
    if (v4 && rows_vpl(dim))
        launch_rmsnorm_forward_rows_regs<ADD, BT, __nv_bfloat16>(rows_vpl(dim), y, inv_rms, x_out, x, b, gain, n, dim,
                                                                 eps, (cudaStream_t)stream);
    else if (v4)
        rmsnorm_forward_bf16<true, ADD, BT><<<blocks, kBlock, 0, (cudaStream_t)stream>>>(y, inv_rms, x_out, x, b, gain,
                                                                                        n, dim, eps);
    else
        rmsnorm_forward_bf16<false, ADD, BT><<<blocks, kBlock, 0, (cudaStream_t)stream>>>(y, inv_rms, x_out, x, b,
                                                                                         gain, n, dim, eps);
    return launch_status();
}

template <typename BT> int launch_add_out(float *y, const float *a, const BT *b, size_t n, void *stream) {
    if (n == 0) return 0;
    if (aligned(y, 16) && aligned(a, 16) && aligned(b, 4 * sizeof(BT)))
        add_out<true, BT><<<blocks_for(n / 4 + 1), kBlock, 0, (cudaStream_t)stream>>>(y, a, b, n);
    else
        add_out<false, BT><<<blocks_for(n), kBlock, 0, (cudaStream_t)stream>>>(y, a, b, n);
    return launch_status();
}

const __nv_bfloat16 *as_bf16(const uint16_t *p) { return reinterpret_cast<const __nv_bfloat16 *>(p); }

} // namespace

extern "C" int xlkv_cuda_train_rmsnorm_forward_bf16(uint16_t *y16, float *inv_rms, float *x_copy, const float *x,
                                                    const float *gain, int n, int dim, float eps, void *stream) {
    return launch_rmsnorm<false, float>(y16, inv_rms, x_copy, x, NULL, gain, n, dim, eps, stream);
}

extern "C" int xlkv_cuda_train_add_rmsnorm_forward_bf16(float *sum, uint16_t *y16, float *inv_rms, const float *a,
                                                        const float *b, const float *gain, int n, int dim, float eps,
                                                        void *stream) {
    if (!sum || !b) return (int)cudaErrorInvalidValue;
    return launch_rmsnorm<true, float>(y16, inv_rms, sum, a, b, gain, n, dim, eps, stream);
}

extern "C" int xlkv_cuda_train_add_rmsnorm_forward_bf16b(float *sum, uint16_t *y16, float *inv_rms, const float *a,
                                                         const uint16_t *b16, const float *gain, int n, int dim,
                                                         float eps, void *stream) {
    if (!sum || !b16) return (int)cudaErrorInvalidValue;
    return launch_rmsnorm<true, __nv_bfloat16>(y16, inv_rms, sum, a, as_bf16(b16), gain, n, dim, eps, stream);
}

extern "C" int xlkv_cuda_train_add_rmsnorm_forward_bf16b_f32(float *sum, float *y, float *inv_rms, const float *a,
                                                             const uint16_t *b16, const float *gain, int n, int dim,
                                                             float eps, void *stream) {
    if (!sum || !b16 || n < 0 || dim <= 0) return (int)cudaErrorInvalidValue;
    if (n == 0) return 0;
    const int vpl = dim % 4 == 0 ? rows_vpl(dim) : 0;
    if (vpl && aligned(sum, 16) && aligned(y, 16) && aligned(a, 16) && aligned(gain, 16) && aligned(b16, 8)) {
        launch_rmsnorm_forward_rows_regs<true, __nv_bfloat16, float>(vpl, y, inv_rms, sum, a, as_bf16(b16), gain, n,
                                                                     dim, eps, (cudaStream_t)stream);
        return launch_status();
    }
    const int err = launch_add_out<__nv_bfloat16>(sum, a, as_bf16(b16), (size_t)n * (size_t)dim, stream);
    return err ? err : xlkv_cuda_train_rmsnorm_forward(y, inv_rms, sum, gain, n, dim, eps, stream);
}

extern "C" int xlkv_cuda_train_add_out(float *y, const float *a, const float *b, size_t n, void *stream) {
    return launch_add_out<float>(y, a, b, n, stream);
}

extern "C" int xlkv_cuda_train_add_out_bf16b(float *y, const float *a, const uint16_t *b16, size_t n, void *stream) {
    return launch_add_out<__nv_bfloat16>(y, a, as_bf16(b16), n, stream);
}

extern "C" int xlkv_cuda_train_swiglu_forward_bf16(uint16_t *h16, const float *gate, const float *up, size_t n,
                                                   void *stream) {
    if (n == 0) return 0;
    __nv_bfloat16 *h = reinterpret_cast<__nv_bfloat16 *>(h16);
    if (aligned(h16, 8) && aligned(gate, 16) && aligned(up, 16))
        swiglu_forward_bf16<true><<<blocks_for(n / 4 + 1), kBlock, 0, (cudaStream_t)stream>>>(h, gate, up, n);
    else
        swiglu_forward_bf16<false><<<blocks_for(n), kBlock, 0, (cudaStream_t)stream>>>(h, gate, up, n);
    return launch_status();
}

extern "C" int xlkv_cuda_train_swiglu_backward_bf16(uint16_t *dgu16, size_t ld, const float *dh, const float *gate,
                                                    const float *up, int n, int hid, void *stream) {
    if (n < 0 || hid < 0 || ld < 2 * (size_t)hid) return (int)cudaErrorInvalidValue;
    if (n == 0 || hid == 0) return 0;
    __nv_bfloat16 *out = reinterpret_cast<__nv_bfloat16 *>(dgu16);
    const size_t elements = (size_t)n * (size_t)hid;
    if (hid % 4 == 0 && ld % 4 == 0 && aligned(dgu16, 8) && aligned(dh, 16) && aligned(gate, 16) && aligned(up, 16))
        swiglu_backward_bf16<true><<<blocks_for(elements / 4), kBlock, 0, (cudaStream_t)stream>>>(out, ld, dh, gate, up,
                                                                                                 (size_t)n, hid);
    else
        swiglu_backward_bf16<false><<<blocks_for(elements), kBlock, 0, (cudaStream_t)stream>>>(out, ld, dh, gate, up,
                                                                                              (size_t)n, hid);
    return launch_status();
}

extern "C" int xlkv_cuda_train_rope_to_bf16(uint16_t *dst16, size_t ld, const float *src, int n, int seq, int n_heads,
                                            int head_dim, const float *cos_table, const float *sin_table,
                                            float direction, int rotate, void *stream) {
    if (n < 0 || seq <= 0 || n_heads < 0 || head_dim < 0 || head_dim % 2 || ld < (size_t)n_heads * (size_t)head_dim)
        return (int)cudaErrorInvalidValue;
    const size_t pairs = (size_t)n * (size_t)n_heads * (size_t)(head_dim / 2);
    if (pairs == 0) return 0;
    __nv_bfloat16 *dst = reinterpret_cast<__nv_bfloat16 *>(dst16);
    const cudaStream_t st = (cudaStream_t)stream;
    if (rotate ? launch_rope_rows<true>(dst, ld, src, n, seq, n_heads, head_dim, cos_table, sin_table, direction, st)
               : launch_rope_rows<false>(dst, ld, src, n, seq, n_heads, head_dim, cos_table, sin_table, direction, st))
        return launch_status();
    if (rotate)
        rope_to_bf16<true><<<blocks_for(pairs), kBlock, 0, (cudaStream_t)stream>>>(dst, ld, src, n, seq, n_heads,
                                                                                  head_dim, cos_table, sin_table,
                                                                                  direction);
    else
        rope_to_bf16<false><<<blocks_for(pairs), kBlock, 0, (cudaStream_t)stream>>>(dst, ld, src, n, seq, n_heads,
                                                                                   head_dim, cos_table, sin_table,
                                                                                   direction);
    return launch_status();
}

extern "C" int xlkv_cuda_train_swiglu_forward_from_bf16(uint16_t *h16, const uint16_t *gu16, size_t ld, int n, int hid,
                                                        void *stream) {
    if (n < 0 || hid < 0 || ld < 2 * (size_t)hid) return (int)cudaErrorInvalidValue;
    if (n == 0 || hid == 0) return 0;
    __nv_bfloat16 *h = reinterpret_cast<__nv_bfloat16 *>(h16);
    const size_t elements = (size_t)n * (size_t)hid;
    if (hid % 4 == 0 && ld % 4 == 0 && aligned(h16, 8) && aligned(gu16, 8))
        swiglu_forward_from_bf16<true><<<blocks_for(elements / 4), kBlock, 0, (cudaStream_t)stream>>>(
            h, as_bf16(gu16), ld, (size_t)n, hid, fits_32_bits(elements / 4));
    else
        swiglu_forward_from_bf16<false><<<blocks_for(elements), kBlock, 0, (cudaStream_t)stream>>>(
            h, as_bf16(gu16), ld, (size_t)n, hid, fits_32_bits(elements));
    return launch_status();
}

extern "C" int xlkv_cuda_train_swiglu_backward_from_bf16(uint16_t *dgu16, size_t ld_out, const uint16_t *dh16,
                                                         const uint16_t *gu16, size_t ld_in, int n, int hid,
                                                         void *stream) {
    if (n < 0 || hid < 0 || ld_out < 2 * (size_t)hid || ld_in < 2 * (size_t)hid) return (int)cudaErrorInvalidValue;
    if (n == 0 || hid == 0) return 0;
    __nv_bfloat16 *out = reinterpret_cast<__nv_bfloat16 *>(dgu16);
    const size_t elements = (size_t)n * (size_t)hid;
    if (hid % 4 == 0 && ld_out % 4 == 0 && ld_in % 4 == 0 && aligned(dgu16, 8) && aligned(dh16, 8) &&
        aligned(gu16, 8))
        swiglu_backward_from_bf16<true><<<blocks_for(elements / 4), kBlock, 0, (cudaStream_t)stream>>>(
            out, ld_out, as_bf16(dh16), as_bf16(gu16), ld_in, (size_t)n, hid,
            fits_32_bits(elements / 4));
    else
        swiglu_backward_from_bf16<false><<<blocks_for(elements), kBlock, 0, (cudaStream_t)stream>>>(
            out, ld_out, as_bf16(dh16), as_bf16(gu16), ld_in, (size_t)n, hid,
            fits_32_bits(elements));
    return launch_status();
}
