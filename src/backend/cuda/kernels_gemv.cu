/* backend/cuda/kernels_gemv: matrix products of a few rows (decode of small batches), bf16 weights.
 *
 * y[n, out] = x[n, in] . W[out, in]^T for n <= XLKV_CUDA_GEMV_MAX_ROWS. With so few rows the product is a pass over W
 * (memory-bound), which cuBLAS ran at 570-1680 GB/s for the tinyllama shapes at n = 1 on an H100; here one warp owns
 * one output feature, every lane streams 16-byte chunks of the W row with GEMV_UNROLL loads in flight, the x rows
 * (tiny, shared by all warps) come through the cache, and a warp reduction finishes each of the n dot products.
 * Cost: out x in x 2 bytes of W read once; FLOPs 2 n in out (negligible). Accumulation in fp32, like cuBLAS's. */
#include "backend/cuda/kernels_common.cuh"

using namespace xlkv_cuda;

namespace {

constexpr int GEMV_THREADS = 256;
constexpr int GEMV_WARPS = GEMV_THREADS / 32;
constexpr int GEMV_UNROLL = 4;

template <int N, typename OutT>
__global__ void __launch_bounds__(GEMV_THREADS)
    gemv_kernel(OutT *y, const __nv_bfloat16 *x, const __nv_bfloat16 *w, int in, int out) {
    const int lane = threadIdx.x & 31;
    const int row = blockIdx.x * GEMV_WARPS + (threadIdx.x >> 5);
    if (row >= out) return; /* whole warp */
    const __nv_bfloat16 *w_row = w + (size_t)row * in;
    float acc[N];
#pragma unroll
    for (int r = 0; r < N; r++) acc[r] = 0.0f;
    constexpr int CHUNK = 8; /* bf16 per 16 bytes */
    const int n_chunks = in / CHUNK;
    for (int c0 = lane; c0 < n_chunks; c0 += 32 * GEMV_UNROLL) {
        float wv[GEMV_UNROLL][CHUNK];
#pragma unroll
        for (int u = 0; u < GEMV_UNROLL; u++) {
            const int c = c0 + u * 32;
            if (c < n_chunks) load_vec<__nv_bfloat16>(w_row + (size_t)c * CHUNK, wv[u]);
            else {
#pragma unroll
                for (int k = 0; k < CHUNK; k++) wv[u][k] = 0.0f;
            }
        }
#pragma unroll
        for (int u = 0; u < GEMV_UNROLL; u++) {
            const int c = c0 + u * 32;
            if (c >= n_chunks) break;
#pragma unroll
            for (int r = 0; r < N; r++) {
                float xv[CHUNK];
                load_vec<__nv_bfloat16>(x + (size_t)r * in + (size_t)c * CHUNK, xv);
#pragma unroll
                for (int k = 0; k < CHUNK; k++) acc[r] += wv[u][k] * xv[k];
            }
        }
    }
#pragma unroll
    for (int r = 0; r < N; r++) {
#pragma unroll
        for (int off = 16; off > 0; off >>= 1) acc[r] += __shfl_xor_sync(0xffffffffu, acc[r], off);
    }
    if (lane == 0) {
#pragma unroll
        for (int r = 0; r < N; r++) y[(size_t)r * out + row] = from_float<OutT>(acc[r]);
    }
}

template <typename OutT> int launch(OutT *y, const __nv_bfloat16 *x, const __nv_bfloat16 *w, int n, int in, int out,
                                    cudaStream_t stream) {
    const int blocks = (out + GEMV_WARPS - 1) / GEMV_WARPS;
    switch (n) {
#define XLKV_GEMV_CASE(N)                                                                                              \
    case N: gemv_kernel<N, OutT><<<blocks, GEMV_THREADS, 0, stream>>>(y, x, w, in, out); break;
        XLKV_GEMV_CASE(1)
        XLKV_GEMV_CASE(2)
        XLKV_GEMV_CASE(3)
        XLKV_GEMV_CASE(4)
        XLKV_GEMV_CASE(5)
        XLKV_GEMV_CASE(6)
        XLKV_GEMV_CASE(7)
        XLKV_GEMV_CASE(8)
#undef XLKV_GEMV_CASE
    default: return (int)cudaErrorNotSupported;
    }
    return (int)cudaGetLastError();
}

} // namespace

extern "C" {

int xlkv_cuda_gemv_supported(int n, int in, const void *x, const void *w, xlkv_dtype dt) {
    return dt == XLKV_DTYPE_BF16 && n >= 1 && n <= XLKV_CUDA_GEMV_MAX_ROWS && in % 8 == 0 && (uintptr_t)x % 16 == 0 &&
           (uintptr_t)w % 16 == 0;
}

int xlkv_cuda_gemv(void *y, int y_is_f32, const void *x, const void *w, int n, int in, int out, xlkv_dtype dt,
                   void *stream) {
    if (!xlkv_cuda_gemv_supported(n, in, x, w, dt) || out <= 0) return (int)cudaErrorNotSupported;
    const __nv_bfloat16 *xb = (const __nv_bfloat16 *)x, *wb = (const __nv_bfloat16 *)w;
    if (y_is_f32) return launch<float>((float *)y, xb, wb, n, in, out, (cudaStream_t)stream);
    return launch<__nv_bfloat16>((__nv_bfloat16 *)y, xb, wb, n, in, out, (cudaStream_t)stream);
}

} // extern "C"
