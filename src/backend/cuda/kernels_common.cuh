/* backend/cuda/kernels_common: device helpers shared by the kernel files (not a public header).
 *
 * Owns: fp32 <-> element conversions, 16-byte vector loads/stores of T (float: 4 elements, bf16: 8), the paged-pool
 * address of a (sequence, position, slot, K/V) row, warp/block reductions, and the dtype dispatch macro. */
#ifndef XLKV_BACKEND_CUDA_KERNELS_COMMON_CUH
#define XLKV_BACKEND_CUDA_KERNELS_COMMON_CUH

#include <cuda_bf16.h>
#include <type_traits>
#include <cuda_runtime.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include "backend/cuda/cuda_kernels.h"

namespace xlkv_cuda {

template <typename T> __device__ __forceinline__ float to_float(T x);
template <> __device__ __forceinline__ float to_float<float>(float x) { return x; }
template <> __device__ __forceinline__ float to_float<__nv_bfloat16>(__nv_bfloat16 x) { return __bfloat162float(x); }

template <typename T> __device__ __forceinline__ T from_float(float x);
template <> __device__ __forceinline__ float from_float<float>(float x) { return x; }
template <> __device__ __forceinline__ __nv_bfloat16 from_float<__nv_bfloat16>(float x) { return __float2bfloat16_rn(x); }

/* Elements of T in one 16-byte vector. */
template <typename T> struct vec_width { static constexpr int value = 16 / (int)sizeof(T); };

/* The 8 bf16 of 16 bytes as floats. bf16 -> f32 is exact: the bf16 bits are the high half of the float's. Written
 * with integer operations on the four 32-bit words: reading the bytes back through a bf16 pointer let the compiler
 * split a 16-byte load into eight 2-byte loads (from shared memory: with 4-way bank conflicts, 8x the wavefronts;
 * it bounded the few-row products, docs/CUDA.md). */
__device__ __forceinline__ void widen_bf16x8(const uint4 &raw, float *out) {
    const unsigned words[4] = {raw.x, raw.y, raw.z, raw.w};
#pragma unroll
    for (int i = 0; i < 4; i++) {
        out[2 * i] = __uint_as_float(words[i] << 16);
        out[2 * i + 1] = __uint_as_float(words[i] & 0xffff0000u);
    }
}

/* Loads 16 bytes (p must be 16-byte aligned) as vec_width<T> floats (bf16 through widen_bf16x8). */
template <typename T> __device__ __forceinline__ void load_vec(const T *p, float *out) {
    const uint4 raw = *reinterpret_cast<const uint4 *>(p);
    if constexpr (sizeof(T) == 2) {
        static_assert(std::is_same<T, __nv_bfloat16>::value, "16-bit elements are bf16");
        widen_bf16x8(raw, out);
    } else {
        const T *elems = reinterpret_cast<const T *>(&raw);
#pragma unroll
        for (int i = 0; i < vec_width<T>::value; i++) out[i] = to_float<T>(elems[i]);
    }
}

/* Stores vec_width<T> floats as 16 bytes (p 16-byte aligned), rounding to T. */
template <typename T> __device__ __forceinline__ void store_vec(T *p, const float *in) {
    uint4 raw;
    T *elems = reinterpret_cast<T *>(&raw);
#pragma unroll
    for (int i = 0; i < vec_width<T>::value; i++) elems[i] = from_float<T>(in[i]);
    *reinterpret_cast<uint4 *>(p) = raw;
}

/* True when 16-byte vector access of rows of `dim` elements with row stride `stride` (elements) is aligned. */
template <typename T> inline bool vector_ok(const void *base, int dim, int stride) {
    const int w = vec_width<T>::value;
    return ((uintptr_t)base % 16 == 0) && dim % w == 0 && stride % w == 0;
}

/* RoPE on one interleaved pair: dst = (a c - b s, a s + b c) for (a, b) = src, rounded to T (src may equal dst).
 * The one expression the fused RoPE kernels share, so that they give identical bits. */
template <typename T> __device__ __forceinline__ void rope_pair(const T *src, float c, float s, T *dst) {
    const float a = to_float<T>(src[0]), b = to_float<T>(src[1]);
    dst[0] = from_float<T>(a * c - b * s);
    dst[1] = from_float<T>(a * s + b * c);
}

/* Pool geometry as plain values (kernel parameters). Element offset of row (block, slot, kv, pos_in_block):
 *   pool[block][slot][kv][pos_in_block][kv_dim]. */
struct pool_view {
    int n_slots;
    int block_size;
    int kv_dim;
    int max_blocks_per_seq;
    const int *block_tables;
};

inline pool_view make_pool_view(const xlkv_paged_kv *kv) {
    pool_view v;
    v.n_slots = kv->n_slots;
    v.block_size = kv->block_size;
    v.kv_dim = kv->kv_dim;
    v.max_blocks_per_seq = kv->max_blocks_per_seq;
    v.block_tables = kv->block_tables;
    return v;
}

/* Element offset of the first element of the row of position `pos` of sequence `seq`, slot `slot`, kv 0 (keys) or
 * 1 (values). Reads the block table (device). */
__device__ __forceinline__ size_t pool_row_offset(const pool_view &v, int seq, int pos, int slot, int kv) {
    const int block = v.block_tables[(size_t)seq * (size_t)v.max_blocks_per_seq + (size_t)(pos / v.block_size)];
    const int pos_in_block = pos % v.block_size;
    return ((((size_t)block * (size_t)v.n_slots + (size_t)slot) * 2 + (size_t)kv) * (size_t)v.block_size +
            (size_t)pos_in_block) *
           (size_t)v.kv_dim;
}

/* Programmatic dependent launch (sm_90+). wait_for_previous_kernel: returns once the kernel before this one in the
 * stream has completed and its writes are visible (at once when this kernel was launched normally).
 * allow_next_kernel: lets a programmatic dependent launched after this kernel start now (its CTAs may then run its
 * prologue beside this kernel; it still waits for this kernel's completion before reading what this kernel writes);
 * no effect when the next kernel was launched normally. */
__device__ __forceinline__ void wait_for_previous_kernel() {
#if defined(__CUDA_ARCH__) && __CUDA_ARCH__ >= 900
    asm volatile("griddepcontrol.wait;" ::: "memory");
#endif
}
__device__ __forceinline__ void allow_next_kernel() {
#if defined(__CUDA_ARCH__) && __CUDA_ARCH__ >= 900
    asm volatile("griddepcontrol.launch_dependents;" ::: "memory");
#endif
}

__device__ __forceinline__ float warp_sum(float x) {
#pragma unroll
    for (int off = 16; off > 0; off >>= 1) x += __shfl_xor_sync(0xffffffffu, x, off);
    return x;
}

__device__ __forceinline__ float warp_max(float x) {
#pragma unroll
    for (int off = 16; off > 0; off >>= 1) x = fmaxf(x, __shfl_xor_sync(0xffffffffu, x, off));
    return x;
}

/* Sum over the block (blockDim.x a multiple of 32, <= 1024); every thread gets the result. `scratch`: 32 floats of
 * shared memory, reusable after return. */
__device__ __forceinline__ float block_sum(float x, float *scratch) {
    const int lane = threadIdx.x & 31, warp = threadIdx.x >> 5, n_warps = (blockDim.x + 31) >> 5;
    x = warp_sum(x);
    __syncthreads(); /* scratch may still be read by a previous call */
    if (lane == 0) scratch[warp] = x;
    __syncthreads();
    float total = 0.0f;
    for (int w = 0; w < n_warps; w++) total += scratch[w]; /* same order in every thread: identical results */
    return total;
}

__device__ __forceinline__ float block_max(float x, float *scratch) {
    const int lane = threadIdx.x & 31, warp = threadIdx.x >> 5, n_warps = (blockDim.x + 31) >> 5;
    x = warp_max(x);
    __syncthreads();
    if (lane == 0) scratch[warp] = x;
    __syncthreads();
    float m = -INFINITY;
    for (int w = 0; w < n_warps; w++) m = fmaxf(m, scratch[w]);
    return m;
}

inline int launch_status() { return (int)cudaGetLastError(); }

/* Asks for the largest shared-memory carveout (cudaSharedmemCarveoutMaxShared: 228 KB of shared memory, the rest of
 * the 256 KB L1) for `kernel`; called once per kernel function by the launchers of every kernel the few-row decode
 * step runs (embedding, products, fused attention, sampler). Without it the driver picks a carveout per kernel from
 * its shared-memory use; a multiprocessor changes carveout only when idle, so a kernel whose choice differs from the
 * previous kernel's cannot put CTAs beside that kernel's last ones, which is what programmatic launches rely on.
 * Measured on the H100 (bench_gpu_step, batch 1, context 512): the step graph took 1,146 us with the driver's choices
 * and 1,068 us with this one on the products and the fused attention (docs/CUDA.md). None of these kernels relies
 * on L1 (weights and K/V bypass it). XLKV_CARVEOUT=driver leaves the driver's choice (for that comparison). A
 * preference: errors are ignored. */
template <typename Kernel> void prefer_shared_carveout(Kernel kernel) {
    static const bool wanted = [] {
        const char *choice = getenv("XLKV_CARVEOUT");
        return !(choice && strcmp(choice, "driver") == 0);
    }();
    if (!wanted) return;
    (void)cudaFuncSetAttribute(kernel, cudaFuncAttributePreferredSharedMemoryCarveout, cudaSharedmemCarveoutMaxShared);
    (void)cudaGetLastError();
}

/* Whether the few-row products (kernels_gemv.cu) are launched as programmatic dependents of the kernel before them
 * (sm_90+: a launch and its CTAs' prologue overlap the previous kernel; each waits for that kernel's completion
 * before it reads what the kernel wrote). The default; XLKV_GEMV=plain in the environment (read at every launch, so
 * a benchmark can switch; a CUDA graph keeps what it captured) launches them normally. Same bits either way. */
inline bool programmatic_launches() {
    const char *choice = getenv("XLKV_GEMV");
    return !(choice && strcmp(choice, "plain") == 0);
}

/* The same for the fused decode attention (kernels_attention_decode.cu), a programmatic dependent of the qkv product:
 * with programmatic_launches() unless XLKV_ATTN_PDL=0. */
inline bool programmatic_attention() {
    const char *choice = getenv("XLKV_ATTN_PDL");
    return programmatic_launches() && !(choice && strcmp(choice, "0") == 0);
}

/* When a programmatic few-row product also sends each warp's third weight burst into shared memory before its wait
 * (kernels_gemv.cu), from XLKV_GEMV (read at every launch): unset or "pdl" = for long products only (at least
 * GEMV_STAGE_MIN_BURSTS bursts a warp: the logits), "pdl-staged" = always, "pdl-registers" or "plain" = never. Same
 * bits every way. */
enum class stage_policy { long_products, always, never };
inline stage_policy third_burst_policy() {
    const char *choice = getenv("XLKV_GEMV");
    if (choice && strcmp(choice, "pdl-staged") == 0) return stage_policy::always;
    if (choice && (strcmp(choice, "plain") == 0 || strcmp(choice, "pdl-registers") == 0)) return stage_policy::never;
    return stage_policy::long_products;
}

/* kernel<<<blocks, threads, smem, stream>>>(args...) through cudaLaunchKernelEx with one launch attribute
 * (cooperative, programmatic stream serialization, ...); 0 or the launch's error. */
template <typename... Params, typename... Args>
int launch_with_attribute(const cudaLaunchAttribute &attribute, void (*kernel)(Params...), dim3 grid, int threads,
                          size_t smem, cudaStream_t stream, Args... args) {
    cudaLaunchAttribute attributes[1] = {attribute};
    cudaLaunchConfig_t config = {};
    config.gridDim = grid;
    config.blockDim = dim3((unsigned)threads);
    config.dynamicSmemBytes = smem;
    config.stream = stream;
    config.attrs = attributes;
    config.numAttrs = 1;
    const cudaError_t err = cudaLaunchKernelEx(&config, kernel, args...);
    return err != cudaSuccess ? (int)err : launch_status();
}

} // namespace xlkv_cuda

/* Calls FN<float>(...) or FN<__nv_bfloat16>(...) by dtype; returns cudaErrorInvalidValue for an unknown dtype. */
#define XLKV_DISPATCH_DTYPE(dt, FN, ...)                                                                               \
    do {                                                                                                               \
        if ((dt) == XLKV_DTYPE_F32) return FN<float>(__VA_ARGS__);                                                     \
        if ((dt) == XLKV_DTYPE_BF16) return FN<__nv_bfloat16>(__VA_ARGS__);                                            \
        return (int)cudaErrorInvalidValue;                                                                             \
    } while (0)

#endif
