/* backend/cuda/train_cross_entropy: the fused bf16 cross-entropy of the bf16 trainer (see train_cross_entropy.h).
 * One block per row. Pass 1 streams the row (16-byte loads of 8 bf16 where vocab % 8 == 0 and the buffer is
 * 16-byte aligned, else one element at a time), keeps it in shared memory when it fits, and folds it into a per-thread
 * (max, sum of exp) pair with online rescaling; the pairs meet in a warp-shuffle then block reduction. Pass 2 reads
 * the row back (shared memory, or global memory when it did not fit) and writes softmax - onehot in bf16 (round to
 * nearest even) over the logits. exp is __expf (a few ulp; far below bf16's 2^-8). */
#include <cuda_bf16.h>
#include <cuda_runtime.h>
#include <math.h>

#include "backend/cuda/train_cross_entropy.h"

namespace {

constexpr int kThreads = 512;
constexpr int kWarps = kThreads / 32;

__device__ __forceinline__ float bf16_bits_to_float(unsigned bits) { return __uint_as_float(bits << 16); }

__device__ __forceinline__ unsigned float_to_bf16_bits(float f) {
    return (unsigned)__bfloat16_as_ushort(__float2bfloat16_rn(f));
}

/* (m, s) <- the pair of the union of two sets summarised as (max, sum exp(x - max)); an empty set is (-inf, 0) */
__device__ __forceinline__ void combine(float &m, float &s, float m2, float s2) {
    const float mn = fmaxf(m, m2);
    if (mn == -INFINITY) return;
    s = s * __expf(m - mn) + s2 * __expf(m2 - mn);
    m = mn;
}

/* folds VEC values into (m, s) */
template <int VEC> __device__ __forceinline__ void accumulate(const float (&v)[VEC], float &m, float &s) {
    float vm = v[0];
#pragma unroll
    for (int i = 1; i < VEC; i++) vm = fmaxf(vm, v[i]);
    if (vm > m) {
        s *= __expf(m - vm); /* m = -inf at first: s is 0 and stays 0 */
        m = vm;
    }
    if (m == -INFINITY) return;
#pragma unroll
    for (int i = 0; i < VEC; i++) s += __expf(v[i] - m);
}

/* VEC 8: the row as uint4 (8 bf16 each); VEC 1: as unsigned short. CACHE: the row stays in dynamic shared memory. */
template <int VEC, bool CACHE>
__global__ void __launch_bounds__(kThreads) cross_entropy_fused(unsigned short *logits, double *row_loss,
                                                                const int *targets, int vocab) {
    extern __shared__ uint4 cache[];
    __shared__ float red_m[kWarps], red_s[kWarps];
    const size_t r = blockIdx.x;
    unsigned short *row = logits + r * (size_t)vocab;
    const int target = targets[r];
    float target_logit = 0.0f;
    if (threadIdx.x == 0) target_logit = bf16_bits_to_float(row[target]); /* before any thread overwrites the row */

    float m = -INFINITY, s = 0.0f;
    if (VEC == 8) {
        const int n_vec = vocab / 8;
        const uint4 *src = reinterpret_cast<const uint4 *>(row);
        for (int i = threadIdx.x; i < n_vec; i += kThreads) {
            const uint4 u = src[i];
            if (CACHE) cache[i] = u;
            const unsigned words[4] = {u.x, u.y, u.z, u.w};
            float v[8];
#pragma unroll
            for (int k = 0; k < 4; k++) {
                v[2 * k] = bf16_bits_to_float(words[k] & 0xFFFFu);
                v[2 * k + 1] = __uint_as_float(words[k] & 0xFFFF0000u);
            }
            accumulate<8>(v, m, s);
        }
    } else {
        unsigned short *c16 = reinterpret_cast<unsigned short *>(cache);
        for (int c = threadIdx.x; c < vocab; c += kThreads) {
            const unsigned short b = row[c];
            if (CACHE) c16[c] = b;
            const float v[1] = {bf16_bits_to_float(b)};
            accumulate<1>(v, m, s);
        }
    }
#pragma unroll
    for (int offset = 16; offset > 0; offset >>= 1) {
        const float m2 = __shfl_xor_sync(0xFFFFFFFFu, m, offset), s2 = __shfl_xor_sync(0xFFFFFFFFu, s, offset);
        combine(m, s, m2, s2);
    }
    const int warp = threadIdx.x / 32, lane = threadIdx.x % 32;
    if (lane == 0) red_m[warp] = m, red_s[warp] = s;
    __syncthreads(); /* also: the row is in the cache, and thread 0 has read the target's logit */
    if (warp == 0) {
        m = lane < kWarps ? red_m[lane] : -INFINITY;
        s = lane < kWarps ? red_s[lane] : 0.0f;
#pragma unroll
        for (int offset = 16; offset > 0; offset >>= 1) {
            const float m2 = __shfl_xor_sync(0xFFFFFFFFu, m, offset), s2 = __shfl_xor_sync(0xFFFFFFFFu, s, offset);
            combine(m, s, m2, s2);
        }
        if (lane == 0) red_m[0] = m, red_s[0] = s;
    }
    __syncthreads();
    m = red_m[0];
    s = red_s[0];
    if (threadIdx.x == 0) row_loss[r] = ((double)m + log((double)s)) - (double)target_logit;
    const float inv = 1.0f / s;

    if (VEC == 8) {
        const int n_vec = vocab / 8;
        uint4 *dst = reinterpret_cast<uint4 *>(row);
        for (int i = threadIdx.x; i < n_vec; i += kThreads) {
            const uint4 u = CACHE ? cache[i] : dst[i];
            unsigned words[4] = {u.x, u.y, u.z, u.w};
#pragma unroll
            for (int k = 0; k < 4; k++) {
                const int c = 8 * i + 2 * k;
                const float lo = __expf(bf16_bits_to_float(words[k] & 0xFFFFu) - m) * inv - (c == target ? 1.0f : 0.0f);
                const float hi = __expf(__uint_as_float(words[k] & 0xFFFF0000u) - m) * inv -
                                 (c + 1 == target ? 1.0f : 0.0f);
                words[k] = float_to_bf16_bits(lo) | (float_to_bf16_bits(hi) << 16);
            }
            dst[i] = make_uint4(words[0], words[1], words[2], words[3]);
        }
    } else {
        const unsigned short *c16 = reinterpret_cast<const unsigned short *>(cache);
        for (int c = threadIdx.x; c < vocab; c += kThreads) {
            const float x = bf16_bits_to_float(CACHE ? c16[c] : row[c]);
            row[c] = (unsigned short)float_to_bf16_bits(__expf(x - m) * inv - (c == target ? 1.0f : 0.0f));
        }
    }
}

template <int VEC>
int launch(unsigned short *logits, double *row_loss, const int *targets, int n, int vocab, cudaStream_t stream) {
    int device = 0, optin = 0;
    cudaError_t err = cudaGetDevice(&device);
    if (err == cudaSuccess) err = cudaDeviceGetAttribute(&optin, cudaDevAttrMaxSharedMemoryPerBlockOptin, device);
    if (err != cudaSuccess) return (int)err;
    const size_t bytes = ((size_t)vocab * 2 + 15) / 16 * 16;
    const size_t static_bytes = 2 * kWarps * sizeof(float);
    if (bytes + static_bytes <= (size_t)optin) {
        err = cudaFuncSetAttribute(cross_entropy_fused<VEC, true>, cudaFuncAttributeMaxDynamicSharedMemorySize,
                                   (int)bytes);
        if (err != cudaSuccess) return (int)err;
        cross_entropy_fused<VEC, true><<<n, kThreads, bytes, stream>>>(logits, row_loss, targets, vocab);
    } else {
        cross_entropy_fused<VEC, false><<<n, kThreads, 0, stream>>>(logits, row_loss, targets, vocab);
    }
    return (int)cudaGetLastError();
}

} // namespace

extern "C" int xlkv_cuda_train_cross_entropy_fused_bf16(uint16_t *logits, double *row_loss, const int *targets, int n,
                                                        int vocab, void *stream) {
    if (n < 0 || vocab < 0) return (int)cudaErrorInvalidValue;
    if (n == 0 || vocab == 0) return 0;
    unsigned short *row0 = reinterpret_cast<unsigned short *>(logits);
    const cudaStream_t s = (cudaStream_t)stream;
    if (vocab % 8 == 0 && (uintptr_t)logits % 16 == 0) return launch<8>(row0, row_loss, targets, n, vocab, s);
    return launch<1>(row0, row_loss, targets, n, vocab, s);
}
