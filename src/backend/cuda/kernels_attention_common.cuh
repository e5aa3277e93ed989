/* backend/cuda/kernels_attention_common: pieces shared by the decode and prefill attention kernels: the visible key
 * range of a query (SEMANTICS.md section 2) and a one-warp online-softmax attention over a key range of the paged pool
 * on CUDA cores (the generic path for any head_dim <= 256, and the fp32 prefill path). */
#ifndef XLKV_BACKEND_CUDA_KERNELS_ATTENTION_COMMON_CUH
#define XLKV_BACKEND_CUDA_KERNELS_ATTENTION_COMMON_CUH

#include "backend/cuda/kernels_common.cuh"

namespace xlkv_cuda {

/* Largest head_dim of the generic (one warp per query head) path: 8 accumulators per lane. */
constexpr int GENERIC_MAX_HEAD_DIM = 256;

/* Key positions [first, last] a query at position t sees; empty when last < first. */
__device__ __forceinline__ void visible_range(int t, int window, int mask_diagonal, int *first, int *last) {
    *last = mask_diagonal ? t - 1 : t;
    int f = window > 0 ? t - window + 1 : 0;
    *first = f < 0 ? 0 : f;
}

/* One warp attends query q_s (fp32, shared or global memory, head_dim values, converged warp) over key positions
 * [lo, hi] (lo <= hi) of sequence `seq`, KV columns kv_col .. kv_col + head_dim of slot `slot`. Returns the running
 * max m, the sum l of exp(score - m) and the unnormalized accumulator: lane owns dims lane + 32 i. */
template <typename T>
__device__ void warp_attend_range(const float *q_s, const T *pool, const pool_view &view, int seq, int slot, int kv_col,
                                  int head_dim, int lo, int hi, float scale, float *m_out, float *l_out, float acc[8]) {
    const int lane = threadIdx.x & 31;
    float m = -INFINITY, l = 0.0f;
#pragma unroll
    for (int i = 0; i < 8; i++) acc[i] = 0.0f;
    for (int base = lo; base <= hi; base += 32) { /* warp-uniform loop */
        const int pos = base + lane;
        const bool valid = pos <= hi;
        float s = -INFINITY;
        if (valid) {
            const T *kr = pool + pool_row_offset(view, seq, pos, slot, 0) + kv_col;
            float dot = 0.0f;
            for (int d = 0; d < head_dim; d++) dot += q_s[d] * to_float<T>(kr[d]);
            s = dot * scale;
        }
        const float m_new = fmaxf(m, warp_max(s)); /* finite: lane 0 is always valid */
        const float alpha = m == -INFINITY ? 0.0f : expf(m - m_new);
        const float e = valid ? expf(s - m_new) : 0.0f;
        l = l * alpha + warp_sum(e);
#pragma unroll
        for (int i = 0; i < 8; i++) acc[i] *= alpha;
        const int count = hi - base + 1 < 32 ? hi - base + 1 : 32;
        for (int k = 0; k < count; k++) {
            const float w = __shfl_sync(0xffffffffu, e, k);
            const T *vr = pool + pool_row_offset(view, seq, base + k, slot, 1) + kv_col;
#pragma unroll
            for (int i = 0; i < 8; i++) {
                const int d = lane + 32 * i;
                if (d < head_dim) acc[i] += w * to_float<T>(vr[d]);
            }
        }
        m = m_new;
    }
    *m_out = m;
    *l_out = l;
}

} // namespace xlkv_cuda

#endif
