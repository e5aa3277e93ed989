/* backend/cuda/kernels_gemv_common: the pieces of the few-row products that the single-product kernels
 * (kernels_gemv.cu) and the chain of products (kernels_gemv_chain.cu) share, so that both sum every output element in
 * the same order and give the same bits: the burst geometry (a burst: GEMV_UNROLL 16-byte loads per lane, 2048
 * consecutive weights of one row), issuing and using a burst, and preparing the input rows in shared memory
 * (copy, RMSNorm, SwiGLU). Not a public header; see kernels_gemv.cu for the scheme. */
#ifndef XLKV_BACKEND_CUDA_KERNELS_GEMV_COMMON_CUH
#define XLKV_BACKEND_CUDA_KERNELS_GEMV_COMMON_CUH

#include "backend/cuda/kernels_common.cuh"
#include "backend/cuda/kernels_mma.cuh"

namespace xlkv_cuda {
namespace gemv {

constexpr int GEMV_THREADS = 256; /* also the rmsnorm partition: must equal ROW_THREADS of kernels_elementwise.cu */
constexpr int GEMV_WARPS = GEMV_THREADS / 32;
constexpr int GEMV_UNROLL = 8;
constexpr int CHUNK = 8; /* bf16 per 16 bytes */

__device__ __forceinline__ float silu_times(float g, float u) { return g * (1.0f / (1.0f + expf(-g))) * u; }

constexpr int BURST_CHUNKS = 32 * GEMV_UNROLL; /* 16-byte chunks of W one warp loads per burst (2048 bf16) */

/* 16 bytes of W: read once, so no L1 allocation; the non-coherent path (W is read-only while the kernel runs). */
__device__ __forceinline__ uint4 load_weights(const uint4 *p) {
    uint4 r;
    asm volatile("ld.global.nc.L1::no_allocate.L2::256B.v4.u32 {%0, %1, %2, %3}, [%4];"
                 : "=r"(r.x), "=r"(r.y), "=r"(r.z), "=r"(r.w)
                 : "l"(p));
    return r;
}

/* Issues burst `burst` of row `row` (chunks burst * BURST_CHUNKS + u * 32 + lane); zeros where past the row or when
 * !valid (no row left for this warp). Warp-uniform arguments except lane. */
__device__ __forceinline__ void issue_burst(uint4 (&raw)[GEMV_UNROLL], const __nv_bfloat16 *w, int in, int n_chunks,
                                            int row, int burst, int lane, bool valid) {
    const uint4 *w_row = reinterpret_cast<const uint4 *>(w + (size_t)(valid ? row : 0) * (size_t)in);
#pragma unroll
    for (int u = 0; u < GEMV_UNROLL; u++) {
        const int c = burst * BURST_CHUNKS + u * 32 + lane;
        raw[u] = valid && c < n_chunks ? load_weights(w_row + c) : make_uint4(0u, 0u, 0u, 0u);
    }
}

/* Burst `burst` of row `row` into this warp's shared-memory slot (chunk u * 32 + lane at stage[u * 32 + lane]) by
 * cp.async (L2 only, as load_weights skips L1), zeros where past the row; one commit group. Read back with
 * unstage_burst after cp_async_wait: each lane reads only what it copied. */
__device__ __forceinline__ void stage_burst(uint4 *stage, const __nv_bfloat16 *w, int in, int n_chunks, int row,
                                            int burst, int lane) {
    const uint4 *w_row = reinterpret_cast<const uint4 *>(w + (size_t)row * (size_t)in);
#pragma unroll
    for (int u = 0; u < GEMV_UNROLL; u++) {
        const int c = burst * BURST_CHUNKS + u * 32 + lane;
        cp_async_16(stage + u * 32 + lane, w_row + (c < n_chunks ? c : 0), c < n_chunks);
    }
    cp_async_commit();
}

__device__ __forceinline__ void unstage_burst(uint4 (&raw)[GEMV_UNROLL], const uint4 *stage, int lane) {
    cp_async_wait<0>();
#pragma unroll
    for (int u = 0; u < GEMV_UNROLL; u++) raw[u] = stage[u * 32 + lane];
}

/* The epilogue of a row for output type OutT (lane 0 of the warp that owns the row): y = round(acc), or with
 * `accumulate` the residual add y += round(acc) (rounded to OutT first, as the unfused product before xlkv_cuda_add).
 * resid: y's values of the row loaded earlier by load_residual (so that the add waits for no load at the end of the
 * row), or null to read them here. */
template <int N, typename OutT>
__device__ __forceinline__ void store_row(OutT *y, int out, int row, int accumulate, const float (&acc)[N],
                                          const float *resid = nullptr) {
#pragma unroll
    for (int r = 0; r < N; r++) {
        OutT *dst = y + (size_t)r * out + row;
        const OutT product = from_float<OutT>(acc[r]);
        if (accumulate) {
            const float before = resid ? resid[r] : to_float<OutT>(*dst);
            *dst = from_float<OutT>(before + to_float<OutT>(product));
        } else {
            *dst = product;
        }
    }
}

/* y's values of row `row` (the residual that store_row adds to), for a warp to load when it starts the row. */
template <int N, typename OutT>
__device__ __forceinline__ void load_residual(const OutT *y, int out, int row, float (&resid)[N]) {
#pragma unroll
    for (int r = 0; r < N; r++) resid[r] = to_float<OutT>(y[(size_t)r * out + row]);
}

/* acc[r] += the burst's weights . xs row r, chunk by chunk in ascending order. */
template <int N>
__device__ __forceinline__ void use_burst(float (&acc)[N], const uint4 (&raw)[GEMV_UNROLL], const __nv_bfloat16 *xs,
                                          int in, int n_chunks, int burst, int lane) {
#pragma unroll
    for (int u = 0; u < GEMV_UNROLL; u++) {
        const int c = burst * BURST_CHUNKS + u * 32 + lane;
        if (c < n_chunks) {
            float wv[CHUNK];
            widen_bf16x8(raw[u], wv);
#pragma unroll
            for (int r = 0; r < N; r++) {
                float xv[CHUNK];
                widen_bf16x8(*reinterpret_cast<const uint4 *>(xs + (size_t)r * in + (size_t)c * CHUNK), xv);
#pragma unroll
                for (int k = 0; k < CHUNK; k++) acc[r] = fmaf(wv[k], xv[k], acc[r]);
            }
        }
    }
}

/* (row, chunk) pieces of the SwiGLU preparation whose loads are issued together before any is used (3: a down row
 * of 5,632 at batch 1 in one group; 4 made the SwiGLU kernels spill). */
constexpr int SWIGLU_GROUP = 3;

/* prepare_input with the N rows side by side: the RMSNorm sums of squares of all rows are reduced with one barrier
 * pair (per row: the same per-thread partition, the same warp butterfly and the same warp order as block_sum, hence
 * the same bits). `scratch`: N * GEMV_WARPS floats. Ends with a barrier.
 * This runs after the wait for the previous kernel, on the path to the first use of the weights, so its global loads
 * are issued together, not one dependent L2 round trip per chunk: a store to shared memory between two loads would
 * keep the compiler from hoisting the second (it cannot prove the pointers apart). RMSNorm: when a row is at most one
 * chunk per thread (in <= 2048: every tinyllama norm) the x chunks and the gain chunk are loaded once, together,
 * before the reduction, and kept in registers. SwiGLU: the gate and up chunks of GROUP (row, chunk) pieces are
 * loaded before any of them is used (a down row of 5,632: one round trip instead of three); a copy loads its rows' chunk
 * together. Same values either way. GROUP = 1 keeps the loads one piece at a time and the x chunks out of registers:
 * the chain (kernels_gemv_chain.cu) inlines all three preparations into one kernel, which then spilled. */
template <int N, int INPUT, int GROUP = SWIGLU_GROUP>
__device__ void prepare_rows(__nv_bfloat16 *xs, const __nv_bfloat16 *x, int x_stride, const __nv_bfloat16 *gain,
                             float eps, int in, float *scratch) {
    constexpr int PASS = GEMV_THREADS * CHUNK; /* elements all threads cover per chunk step */
    if (INPUT == XLKV_GEMV_INPUT_RMSNORM) {
        const int lane = threadIdx.x & 31, warp = threadIdx.x >> 5;
        const int i0 = threadIdx.x * CHUNK;
        float ss[N];
#pragma unroll
        for (int r = 0; r < N; r++) ss[r] = 0.0f;
        const bool one_chunk = GROUP > 1 && in <= PASS; /* uniform */
        uint4 x_raw[N], gain_raw = make_uint4(0u, 0u, 0u, 0u);
        if (one_chunk) {
            if (i0 < in) {
                gain_raw = *reinterpret_cast<const uint4 *>(gain + i0);
#pragma unroll
                for (int r = 0; r < N; r++) x_raw[r] = *reinterpret_cast<const uint4 *>(x + (size_t)r * x_stride + i0);
#pragma unroll
                for (int r = 0; r < N; r++) {
                    float xv[CHUNK];
                    widen_bf16x8(x_raw[r], xv);
#pragma unroll
                    for (int j = 0; j < CHUNK; j++) ss[r] += xv[j] * xv[j];
                }
            }
        } else {
            for (int i = i0; i < in; i += PASS) {
#pragma unroll
                for (int r = 0; r < N; r++) {
                    float xv[CHUNK];
                    load_vec<__nv_bfloat16>(x + (size_t)r * x_stride + i, xv);
#pragma unroll
                    for (int j = 0; j < CHUNK; j++) ss[r] += xv[j] * xv[j];
                }
            }
        }
#pragma unroll
        for (int r = 0; r < N; r++) ss[r] = warp_sum(ss[r]);
        if (lane == 0) {
#pragma unroll
            for (int r = 0; r < N; r++) scratch[r * GEMV_WARPS + warp] = ss[r];
        }
        __syncthreads();
        float inv[N];
#pragma unroll
        for (int r = 0; r < N; r++) {
            float total = 0.0f;
            for (int v = 0; v < GEMV_WARPS; v++) total += scratch[r * GEMV_WARPS + v];
            inv[r] = 1.0f / sqrtf(total / (float)in + eps);
        }
        if (one_chunk) {
            if (i0 < in) {
                float gv[CHUNK];
                widen_bf16x8(gain_raw, gv);
#pragma unroll
                for (int r = 0; r < N; r++) {
                    float xv[CHUNK], ov[CHUNK];
                    widen_bf16x8(x_raw[r], xv);
#pragma unroll
                    for (int j = 0; j < CHUNK; j++) ov[j] = gv[j] * (inv[r] * xv[j]);
                    store_vec<__nv_bfloat16>(xs + (size_t)r * in + i0, ov);
                }
            }
        } else {
            for (int i = i0; i < in; i += PASS) {
                float gv[CHUNK];
                load_vec<__nv_bfloat16>(gain + i, gv);
#pragma unroll
                for (int r = 0; r < N; r++) {
                    float xv[CHUNK], ov[CHUNK];
                    load_vec<__nv_bfloat16>(x + (size_t)r * x_stride + i, xv);
#pragma unroll
                    for (int j = 0; j < CHUNK; j++) ov[j] = gv[j] * (inv[r] * xv[j]);
                    store_vec<__nv_bfloat16>(xs + (size_t)r * in + i, ov);
                }
            }
        }
    } else if (INPUT == XLKV_GEMV_INPUT_SWIGLU) {
        const int per_row = (in + PASS - 1) / PASS; /* chunk steps of a row */
        const int pieces = N * per_row;
        for (int p0 = 0; p0 < pieces; p0 += GROUP) {
            uint4 g_raw[GROUP], u_raw[GROUP];
#pragma unroll
            for (int k = 0; k < GROUP; k++) {
                const int piece = p0 + k, r = piece / per_row;
                const int i = threadIdx.x * CHUNK + (piece - r * per_row) * PASS;
                if (piece < pieces && i < in) {
                    const __nv_bfloat16 *xr = x + (size_t)r * x_stride;
                    g_raw[k] = *reinterpret_cast<const uint4 *>(xr + i);
                    u_raw[k] = *reinterpret_cast<const uint4 *>(xr + in + i);
                }
            }
#pragma unroll
            for (int k = 0; k < GROUP; k++) {
                const int piece = p0 + k, r = piece / per_row;
                const int i = threadIdx.x * CHUNK + (piece - r * per_row) * PASS;
                if (piece < pieces && i < in) {
                    float gv[CHUNK], uv[CHUNK];
                    widen_bf16x8(g_raw[k], gv);
                    widen_bf16x8(u_raw[k], uv);
#pragma unroll
                    for (int j = 0; j < CHUNK; j++) gv[j] = silu_times(gv[j], uv[j]);
                    store_vec<__nv_bfloat16>(xs + (size_t)r * in + i, gv);
                }
            }
        }
    } else {
        for (int i = threadIdx.x * CHUNK; i < in; i += PASS) { /* the rows' loads together, then the stores */
            uint4 raw[N];
#pragma unroll
            for (int r = 0; r < N; r++) raw[r] = *reinterpret_cast<const uint4 *>(x + (size_t)r * x_stride + i);
#pragma unroll
            for (int r = 0; r < N; r++) *reinterpret_cast<uint4 *>(xs + (size_t)r * in + i) = raw[r];
        }
    }
    __syncthreads();
}

__host__ __device__ inline size_t input_bytes(int n, int in) { return (size_t)n * (size_t)in * sizeof(__nv_bfloat16); }

/* CTAs of `kernel` resident at once with `smem` bytes of dynamic shared memory: multiprocessors x CTAs per
 * multiprocessor, 0 when none fits (and 0 with *err set on a CUDA error). */
template <typename Kernel> long long resident_ctas(Kernel kernel, size_t smem, cudaError_t *err) {
    int device = 0, sms = 0, per_sm = 0;
    *err = cudaGetDevice(&device);
    if (*err == cudaSuccess) *err = cudaDeviceGetAttribute(&sms, cudaDevAttrMultiProcessorCount, device);
    if (*err == cudaSuccess) *err = cudaOccupancyMaxActiveBlocksPerMultiprocessor(&per_sm, kernel, GEMV_THREADS, smem);
    return *err == cudaSuccess ? (long long)(sms > 0 ? sms : 1) * per_sm : 0;
}

/* Shared memory of the staged third bursts (kernels_gemv.cu): one burst slot per warp; the default stages them for
 * products of at least GEMV_STAGE_MIN_BURSTS bursts a warp. */
constexpr size_t STAGE_BYTES = (size_t)GEMV_WARPS * BURST_CHUNKS * 16;
constexpr long long GEMV_STAGE_MIN_BURSTS = 8;

inline int max_input_bytes() {
    static int bytes = -1; /* per process; the device of the first call (the engine uses one device) */
    if (bytes < 0) {
        int device = 0, optin = 0;
        if (cudaGetDevice(&device) != cudaSuccess ||
            cudaDeviceGetAttribute(&optin, cudaDevAttrMaxSharedMemoryPerBlockOptin, device) != cudaSuccess)
            return 48 * 1024;
        bytes = optin - 1024; /* room for the static scratch */
    }
    return bytes;
}

} // namespace gemv
} // namespace xlkv_cuda

#endif
