/* backend/cuda/kernels_mma: the tensor-core and async-copy primitives the bf16 attention kernels share (not a public
 * header): 16-byte cp.async gathers into shared memory (zero-fill when invalid), ldmatrix (plain and transposed),
 * mma.sync m16n8k16 bf16 -> fp32 and packing two floats into a bf16x2 fragment register.
 *
 * Fragment conventions (PTX ISA, mma.m16n8k16 with .bf16): lane = 4 g + tq (g = lane / 4, tq = lane % 4).
 *   A (16 x 16, row-major): a[0] = (row g, cols 2tq, 2tq+1), a[1] = (row g+8, same cols), a[2] = (row g, cols
 *     2tq+8, 2tq+9), a[3] = (row g+8, cols 2tq+8, 2tq+9); the lower column sits in the low half of the register.
 *   B (16 x 8, "col"): b0 = (k rows 2tq, 2tq+1; col g), b1 = (k rows 2tq+8, 2tq+9; col g). An 8x8 tile stored with
 *     one shared-memory row per n (keys as rows, k contiguous) gives exactly b0/b1 through ldmatrix (no transpose);
 *     an 8x8 tile stored with one row per k (values: positions as rows) needs ldmatrix .trans.
 *   C (16 x 8, fp32): c[0], c[1] = (row g, cols 2tq, 2tq+1); c[2], c[3] = (row g+8, same cols). */
#ifndef XLKV_BACKEND_CUDA_KERNELS_MMA_CUH
#define XLKV_BACKEND_CUDA_KERNELS_MMA_CUH

#include <cuda_bf16.h>
#include <stdint.h>

namespace xlkv_cuda {

/* 16 bytes global -> shared, asynchronous; both addresses 16-byte aligned. valid false: zero-fill, nothing read
 * (gmem must still be a valid pointer value). */
__device__ __forceinline__ void cp_async_16(void *smem, const void *gmem, bool valid) {
    const unsigned saddr = (unsigned)__cvta_generic_to_shared(smem);
    const int src_size = valid ? 16 : 0;
    asm volatile("cp.async.cg.shared.global [%0], [%1], 16, %2;\n" ::"r"(saddr), "l"(gmem), "r"(src_size));
}
__device__ __forceinline__ void cp_async_commit() { asm volatile("cp.async.commit_group;\n" ::); }
/* Waits until at most N committed groups of this thread are still pending. */
template <int N> __device__ __forceinline__ void cp_async_wait() {
    asm volatile("cp.async.wait_group %0;\n" ::"n"(N) : "memory");
}

__device__ __forceinline__ void ldmatrix_x4(uint32_t r[4], const void *smem) {
    const unsigned a = (unsigned)__cvta_generic_to_shared(smem);
    asm volatile("ldmatrix.sync.aligned.m8n8.x4.shared.b16 {%0, %1, %2, %3}, [%4];\n"
                 : "=r"(r[0]), "=r"(r[1]), "=r"(r[2]), "=r"(r[3])
                 : "r"(a));
}
__device__ __forceinline__ void ldmatrix_x4_trans(uint32_t r[4], const void *smem) {
    const unsigned a = (unsigned)__cvta_generic_to_shared(smem);
    asm volatile("ldmatrix.sync.aligned.m8n8.x4.trans.shared.b16 {%0, %1, %2, %3}, [%4];\n"
                 : "=r"(r[0]), "=r"(r[1]), "=r"(r[2]), "=r"(r[3])
                 : "r"(a));
}

/* c += a (16x16, row) * b (16x8, col), bf16 in, fp32 accumulate. */
__device__ __forceinline__ void mma_bf16_16816(float c[4], const uint32_t a[4], uint32_t b0, uint32_t b1) {
    asm volatile("mma.sync.aligned.m16n8k16.row.col.f32.bf16.bf16.f32 {%0, %1, %2, %3}, {%4, %5, %6, %7}, {%8, %9}, "
                 "{%0, %1, %2, %3};\n"
                 : "+f"(c[0]), "+f"(c[1]), "+f"(c[2]), "+f"(c[3])
                 : "r"(a[0]), "r"(a[1]), "r"(a[2]), "r"(a[3]), "r"(b0), "r"(b1));
}

__device__ __forceinline__ uint32_t pack_bf16x2(float lo, float hi) {
    __nv_bfloat162 v = __floats2bfloat162_rn(lo, hi); /* .x (low half) = lo: the lower column index */
    return *reinterpret_cast<uint32_t *>(&v);
}

} // namespace xlkv_cuda

#endif
