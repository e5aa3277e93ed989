/* backend/cuda/train_attention_flash: tensor-core attention of the trainer (see train_attention_flash.h), in the
 * FlashAttention-2 arrangement, on the primitives of kernels_mma.cuh and the fragment conventions of the inference
 * prefill kernel (kernels_attention_prefill.cu).
 *
 * Every kernel runs CTAs of 4 warps. Tiles of fp32 rows are read with plain 16-byte loads, rounded to bf16 and
 * stored into shared memory (rows padded by 16 bytes: conflict-free ldmatrix); products are mma.sync.m16n8k16 bf16
 * -> fp32; probabilities are exp2 of scores pre-multiplied by scale * log2(e). Masks (p <= t, p < t with
 * mask_diagonal, t - p < window) are applied per element only on tiles that need them.
 *   forward: a CTA per (64-query tile, head, batch), longest first; each warp owns 16 query rows, keeps its Q
 *            fragments in registers and walks the visible 64-key tiles with an online softmax (a row whose running
 *            max is still -inf uses 0 as its reference: no NaN; a row with nothing visible ends with sum 0, writes
 *            zeros and lse = -inf). P goes from the S accumulators straight into A fragments for O += P V.
 *   dQ:      a CTA per (64-query tile, head, batch); per key tile S = Q K^T, P = exp2(S' - lse'), dP = dO V^T,
 *            dS = P (dP - delta), dQ += dS K; dq = scale dQ, overwritten.
 *   dK/dV:   a CTA per (64-key tile, KV head, batch); each warp owns 16 keys. It walks the G query heads of the KV
 *            head and, for each, the query tiles that can see the key tile (causal: from the tile's first key on;
 *            window: up to its last key + window - 1), computing the transposed products (S^T = K Q^T,
 *            dP^T = V dO^T) so that dV += P^T dO and dK += dS^T Q accumulate in registers; at the end
 *            dk += scale dK, dv += dV (one writer per element). Query tiles are 64 rows (32 for head_dim 128, to
 *            keep the accumulators in registers).
 * Rows that do not exist (past seq) are staged as zeros with lse' = +inf and delta = 0, so they add nothing; a query
 * with lse = -inf (nothing visible) also gets lse' = +inf: all its probabilities are exactly 0.
 * delta = rowsum(dO * O) comes from xlkv_cuda_train_attention_delta (train_kernels.cu).
 *
 * Staging: bf16 copies of what is streamed go to the workspace first (K, V: round_to_bf16; the backward's Q and dO:
 * written by the dQ kernel, which reads each of their rows once anyway; head_major_rows makes the dK/dV kernel's
 * lse' / delta contiguous per (sequence, head)); the kernels then move 16-byte cp.async chunks with double buffering
 * (tile j+1 loads while tile j computes), as the inference prefill kernel does. Operands read once per CTA (Q of the
 * forward, Q and dO of dQ) come from fp32 with plain loads, issued while the first cp.async tile is in flight. At
 * head_dim 64 the backward kernels hold S and dP for 32 keys (dQ) / 32 queries (dK/dV) at a time (~166 registers,
 * so 3 CTAs share an SM). The grids put the tile index in z (dispatched slowest): the longest tiles of every
 * (head, sequence) start before any short one, short ones fill the tail. (A first version that rounded fp32 tiles
 * while staging them, without a workspace, took 2x / 2.2x longer and gave the same bits; it was removed after the
 * H100 run at 5c5b2e8, bench/results/train/.)
 * Cost (small: B 16, T 1024, 12/6 heads x 64, causal), per layer: forward 4 * 16 * 12 * 1024^2 / 2 * 64 = 26 GFLOP,
 * backward 2.5x that; the fp32 staging reads Q, K, V (and dO) once per tile pair, L2-resident. */
#include <cuda_bf16.h>
#include <cuda_runtime.h>
#include <math.h>
#include <stdint.h>

#include "backend/cuda/kernels_mma.cuh"
#include "backend/cuda/train_attention_flash.h"

using namespace xlkv_cuda;

namespace {

constexpr int THREADS = 128; /* 4 warps */
constexpr int TILE_Q = 64;   /* query rows per CTA of the forward and dQ kernels (16 per warp) */
constexpr int TILE_K = 64;   /* keys per tile (16 per warp in the dK/dV kernel) */
constexpr float LOG2E = 1.4426950408889634f;
constexpr float LN2 = 0.6931471805599453f;

template <int D> __host__ __device__ constexpr int smem_row() { return D + 8; } /* padded bf16 row */
template <int D> __host__ __device__ constexpr int dkdv_tile_q() { return D == 64 ? 64 : 32; }

struct flash_args {
    int seq, n_heads, group, window, mask_diagonal;
    size_t q_stride, kv_stride; /* floats per row of q/out/dout and of k/v */
    float scale, scale_log2;
};

/* A fragment (16 rows from row0, k columns kc*16 .. kc*16+15) of a row-major bf16 tile. */
template <int D>
__device__ __forceinline__ void load_a(uint32_t a[4], const __nv_bfloat16 *tile, int row0, int kc, int lane) {
    ldmatrix_x4(a, tile + (row0 + (lane & 15)) * smem_row<D>() + kc * 16 + (lane >> 4) * 8);
}

/* acc[NT][4] = A (16 rows of `a_tile` from a_row0, all D columns) x B^T, B = rows 0 .. NT*8-1 of `b_tile`
 * (one row per output column, D contiguous): S = Q K^T and its relatives. */
template <int D, int NT>
__device__ __forceinline__ void product_rows(float acc[NT][4], const __nv_bfloat16 *a_tile, int a_row0,
                                             const __nv_bfloat16 *b_tile, int lane) {
    constexpr int SROW = smem_row<D>();
#pragma unroll
    for (int nt = 0; nt < NT; nt++)
#pragma unroll
        for (int i = 0; i < 4; i++) acc[nt][i] = 0.0f;
#pragma unroll
    for (int kc2 = 0; kc2 < D / 32; kc2++) {
        uint32_t a0[4], a1[4];
        load_a<D>(a0, a_tile, a_row0, 2 * kc2, lane);
        load_a<D>(a1, a_tile, a_row0, 2 * kc2 + 1, lane);
#pragma unroll
        for (int nt = 0; nt < NT; nt++) {
            uint32_t b[4];
            ldmatrix_x4(b, b_tile + (nt * 8 + (lane & 7)) * SROW + kc2 * 32 + (lane >> 3) * 8);
            mma_bf16_16816(acc[nt], a0, b[0], b[1]);
            mma_bf16_16816(acc[nt], a1, b[2], b[3]);
        }
    }
}

/* acc[D/8][4] += P (16 x KT*16, as C fragments p[KT*2][4]) x B, B = rows 0 .. KT*16-1 of `b_tile` (one row per k,
 * D contiguous): O += P V and its relatives. */
template <int D, int KT>
__device__ __forceinline__ void accumulate_pv(float acc[D / 8][4], const float p[KT * 2][4],
                                              const __nv_bfloat16 *b_tile, int lane) {
    constexpr int SROW = smem_row<D>();
#pragma unroll
    for (int kk = 0; kk < KT; kk++) {
        uint32_t a[4];
        a[0] = pack_bf16x2(p[2 * kk][0], p[2 * kk][1]);
        a[1] = pack_bf16x2(p[2 * kk][2], p[2 * kk][3]);
        a[2] = pack_bf16x2(p[2 * kk + 1][0], p[2 * kk + 1][1]);
        a[3] = pack_bf16x2(p[2 * kk + 1][2], p[2 * kk + 1][3]);
#pragma unroll
        for (int dt = 0; dt < D / 8; dt += 2) {
            uint32_t b[4];
            ldmatrix_x4_trans(b, b_tile + (kk * 16 + ((lane >> 3) & 1) * 8 + (lane & 7)) * SROW + (dt + (lane >> 4)) * 8);
            mma_bf16_16816(acc[dt], a, b[0], b[1]);
            mma_bf16_16816(acc[dt + 1], a, b[2], b[3]);
        }
    }
}

__device__ __forceinline__ bool visible(int t, int p, const flash_args &a) {
    return p <= t - a.mask_diagonal && (a.window == 0 || t - p < a.window);
}

/* The keys a query tile [t_min, t_max] can see: kv_first .. kv_last (empty when kv_last < kv_first). */
__device__ __forceinline__ void key_range(const flash_args &a, int t_min, int t_max, int *kv_first, int *kv_last) {
    *kv_first = a.window > 0 ? max(t_min - a.window + 1, 0) : 0;
    *kv_last = t_max - a.mask_diagonal;
}

/* Whether every (query in [t_min, t_max], key in [k0, k1]) pair is visible: no per-element mask needed. */
__device__ __forceinline__ bool tile_fully_visible(const flash_args &a, int t_min, int t_max, int k0, int k1) {
    return k1 <= t_min - a.mask_diagonal && (a.window == 0 || t_max - k0 < a.window);
}

/* lse (natural log) -> the log2 reference of exp2(score * scale_log2 - ref); +inf (probability 0) for a query that
 * sees nothing or does not exist. */
__device__ __forceinline__ float lse_ref(const float *lse_row, bool exists) {
    if (!exists) return INFINITY;
    const float l = *lse_row;
    return l == -INFINITY ? INFINITY : l * LOG2E;
}

/* ---- bf16 copies in the workspace, cp.async tiles, double buffering ---------------------------------------------- */
typedef __nv_bfloat16 bf16;

/* 4 bytes global -> shared, asynchronous (zero-fill when !valid; gmem must still be a valid pointer value). */
__device__ __forceinline__ void cp_async_4(void *smem, const void *gmem, bool valid) {
    const unsigned saddr = (unsigned)__cvta_generic_to_shared(smem);
    const int src_size = valid ? 4 : 0;
    asm volatile("cp.async.ca.shared.global [%0], [%1], 4, %2;\n" ::"r"(saddr), "l"(gmem), "r"(src_size));
}

/* Asynchronous counterpart of stage_rows: bf16 rows row0 .. row0 + ROWS - 1 of one head (src at row 0 of that head,
 * `stride` elements per row) -> padded shared rows; rows >= limit are zero-filled. Same bf16 values as stage_rows
 * (the pre-pass rounds with the same round-to-nearest). */
template <int D, int ROWS>
__device__ __forceinline__ void async_rows(bf16 *dst, const bf16 *src, size_t stride, int row0, int limit) {
    constexpr int SROW = smem_row<D>(), CHUNKS = D / 8;
    for (int c = threadIdx.x; c < ROWS * CHUNKS; c += THREADS) {
        const int row = c / CHUNKS, ch = c % CHUNKS, t = row0 + row;
        const bool valid = t < limit;
        cp_async_16(dst + row * SROW + ch * 8, valid ? src + (size_t)t * stride + ch * 8 : src, valid);
    }
}

/* fp32 rows row0 .. row0 + ROWS - 1 of one head (src at row 0 of that head, `stride` floats per row) -> padded bf16
 * shared rows (rows >= limit are zeros), also writing the bf16 rows (rows < limit) to `copy` (same layout as src,
 * NULL: none): the dQ kernel reads each Q / dO row exactly once, so it leaves the bf16 copies the dK/dV kernel
 * streams. The same thread writes and reads each chunk: no barrier between the two. */
template <int D, int ROWS>
__device__ __forceinline__ void stage_rows(__nv_bfloat16 *dst, const float *src, size_t stride, int row0,
                                           int limit, __nv_bfloat16 *copy) {
    constexpr int SROW = smem_row<D>(), CHUNKS = D / 8;
    for (int c = threadIdx.x; c < ROWS * CHUNKS; c += THREADS) {
        const int row = c / CHUNKS, ch = c % CHUNKS, t = row0 + row;
        uint4 packed = make_uint4(0u, 0u, 0u, 0u);
        if (t < limit) {
            const float4 *s = reinterpret_cast<const float4 *>(src + (size_t)t * stride + ch * 8);
            const float4 lo = s[0], hi = s[1];
            packed.x = pack_bf16x2(lo.x, lo.y);
            packed.y = pack_bf16x2(lo.z, lo.w);
            packed.z = pack_bf16x2(hi.x, hi.y);
            packed.w = pack_bf16x2(hi.z, hi.w);
            if (copy) *reinterpret_cast<uint4 *>(copy + (size_t)t * stride + ch * 8) = packed;
        }
        *reinterpret_cast<uint4 *>(dst + row * SROW + ch * 8) = packed;
    }
}

/* dst[i] = bf16(src[i]), n a multiple of 8, both 16-byte aligned. */
__global__ void round_to_bf16(bf16 *dst, const float *src, size_t n8) {
    for (size_t i = (size_t)blockIdx.x * blockDim.x + threadIdx.x; i < n8; i += (size_t)gridDim.x * blockDim.x) {
        const float4 lo = reinterpret_cast<const float4 *>(src)[2 * i], hi = reinterpret_cast<const float4 *>(src)[2 * i + 1];
        uint4 packed;
        packed.x = pack_bf16x2(lo.x, lo.y);
        packed.y = pack_bf16x2(lo.z, lo.w);
        packed.z = pack_bf16x2(hi.x, hi.y);
        packed.w = pack_bf16x2(hi.z, hi.w);
        reinterpret_cast<uint4 *>(dst)[i] = packed;
    }
}

/* The per-query rows of the dK/dV kernel in head-major order [batch][head][seq]: ref = lse_ref (log2 units, +inf for
 * a query that sees nothing), delta copied, so a query tile's values are contiguous. */
__global__ void head_major_rows(float *ref_hm, float *delta_hm, const float *lse, const float *delta, int seq,
                                int n_heads, size_t total) {
    for (size_t i = (size_t)blockIdx.x * blockDim.x + threadIdx.x; i < total; i += (size_t)gridDim.x * blockDim.x) {
        const size_t row = i / n_heads;
        const int h = (int)(i % n_heads);
        const size_t b = row / seq, t = row % seq, dst = (b * n_heads + h) * seq + t;
        ref_hm[dst] = lse_ref(lse + i, true);
        delta_hm[dst] = delta[i];
    }
}

template <int D>
__global__ void __launch_bounds__(THREADS)
    flash_forward(float *out, float *lse, const float *q, const bf16 *k, const bf16 *v, flash_args a) {
    constexpr int SROW = smem_row<D>();
    extern __shared__ __align__(16) unsigned char smem_raw[];
    bf16 *s_q = reinterpret_cast<bf16 *>(smem_raw);
    bf16 *s_k = s_q + TILE_Q * SROW, *s_v = s_k + 2 * TILE_K * SROW; /* [2][TILE_K][SROW] each */

    const int n_q_tiles = (a.seq + TILE_Q - 1) / TILE_Q;
    const int q_tile = n_q_tiles - 1 - (int)blockIdx.z; /* longest first over the whole grid (z varies slowest) */
    const int h = blockIdx.x, b = blockIdx.y, kvh = h / a.group;
    const int tid = threadIdx.x, lane = tid & 31, warp = tid >> 5;
    const size_t batch_row0 = (size_t)b * a.seq;
    const float *qh = q + batch_row0 * a.q_stride + (size_t)h * D;
    const bf16 *kh = k + batch_row0 * a.kv_stride + (size_t)kvh * D;
    const bf16 *vh = v + batch_row0 * a.kv_stride + (size_t)kvh * D;
    float *oh = out + batch_row0 * a.q_stride + (size_t)h * D;
    float *lh = lse + batch_row0 * a.n_heads + h;
    const int r0 = q_tile * TILE_Q, rows = min(TILE_Q, a.seq - r0);
    const int t_min = r0, t_max = r0 + rows - 1;
    int kv_first, kv_last;
    key_range(a, t_min, t_max, &kv_first, &kv_last);
    const int n_kv_tiles = kv_last < kv_first ? 0 : (kv_last - kv_first + TILE_K) / TILE_K;
    const int key_limit = kv_last + 1;
    auto load_kv = [&](int tile, int buf) {
        const int k0 = kv_first + tile * TILE_K;
        async_rows<D, TILE_K>(s_k + buf * TILE_K * SROW, kh, a.kv_stride, k0, key_limit);
        async_rows<D, TILE_K>(s_v + buf * TILE_K * SROW, vh, a.kv_stride, k0, key_limit);
    };

    const int g = lane >> 2, tq = lane & 3;
    const int row_a = warp * 16 + g, t_a = r0 + row_a, t_b = t_a + 8;
    uint32_t q_frag[D / 16][4];
    float o_acc[D / 8][4];
#pragma unroll
    for (int dt = 0; dt < D / 8; dt++)
#pragma unroll
        for (int i = 0; i < 4; i++) o_acc[dt][i] = 0.0f;
    float m_run[2] = {-INFINITY, -INFINITY}, l_run[2] = {0.0f, 0.0f};

    if (n_kv_tiles > 0) {
        load_kv(0, 0);
        cp_async_commit();
        /* Q is read once per CTA: fp32 rows rounded here (no bf16 copy needed) while the first K/V tile lands */
        stage_rows<D, TILE_Q>(s_q, qh, a.q_stride, r0, a.seq, NULL);
    }
    for (int tile = 0; tile < n_kv_tiles; tile++) {
        const int buf = tile & 1, k0 = kv_first + tile * TILE_K;
        if (tile + 1 < n_kv_tiles) load_kv(tile + 1, buf ^ 1);
        cp_async_commit(); /* possibly empty: keeps the group count uniform */
        cp_async_wait<1>();
        __syncthreads();
        const bf16 *tk = s_k + buf * TILE_K * SROW, *tv = s_v + buf * TILE_K * SROW;
        if (tile == 0) {
#pragma unroll
            for (int kc = 0; kc < D / 16; kc++) load_a<D>(q_frag[kc], s_q, warp * 16, kc, lane);
        }
        float s[TILE_K / 8][4];
#pragma unroll
        for (int nt = 0; nt < TILE_K / 8; nt++) {
#pragma unroll
            for (int i = 0; i < 4; i++) s[nt][i] = 0.0f;
#pragma unroll
            for (int kc2 = 0; kc2 < D / 32; kc2++) {
                uint32_t kb[4];
                ldmatrix_x4(kb, tk + (nt * 8 + (lane & 7)) * SROW + kc2 * 32 + (lane >> 3) * 8);
                mma_bf16_16816(s[nt], q_frag[2 * kc2], kb[0], kb[1]);
                mma_bf16_16816(s[nt], q_frag[2 * kc2 + 1], kb[2], kb[3]);
            }
        }
        const bool need_mask = !tile_fully_visible(a, t_min, t_max, k0, k0 + TILE_K - 1);
        float tile_max[2] = {-INFINITY, -INFINITY};
#pragma unroll
        for (int nt = 0; nt < TILE_K / 8; nt++)
#pragma unroll
            for (int i = 0; i < 4; i++) {
                float x = s[nt][i] * a.scale_log2;
                if (need_mask && !visible(i < 2 ? t_a : t_b, k0 + nt * 8 + 2 * tq + (i & 1), a)) x = -INFINITY;
                s[nt][i] = x;
                tile_max[i >> 1] = fmaxf(tile_max[i >> 1], x);
            }
        float alpha[2], m_ref[2];
#pragma unroll
        for (int r = 0; r < 2; r++) {
            tile_max[r] = fmaxf(tile_max[r], __shfl_xor_sync(0xffffffffu, tile_max[r], 1));
            tile_max[r] = fmaxf(tile_max[r], __shfl_xor_sync(0xffffffffu, tile_max[r], 2));
            const float m_new = fmaxf(m_run[r], tile_max[r]);
            m_ref[r] = m_new == -INFINITY ? 0.0f : m_new;
            alpha[r] = exp2f(m_run[r] - m_ref[r]);
            m_run[r] = m_new;
        }
        float row_sum[2] = {0.0f, 0.0f};
#pragma unroll
        for (int nt = 0; nt < TILE_K / 8; nt++)
#pragma unroll
            for (int i = 0; i < 4; i++) {
                const float e = exp2f(s[nt][i] - m_ref[i >> 1]);
                s[nt][i] = e;
                row_sum[i >> 1] += e;
            }
#pragma unroll
        for (int r = 0; r < 2; r++) l_run[r] = l_run[r] * alpha[r] + row_sum[r];
#pragma unroll
        for (int dt = 0; dt < D / 8; dt++) {
            o_acc[dt][0] *= alpha[0];
            o_acc[dt][1] *= alpha[0];
            o_acc[dt][2] *= alpha[1];
            o_acc[dt][3] *= alpha[1];
        }
        accumulate_pv<D, TILE_K / 16>(o_acc, s, tv, lane);
        __syncthreads(); /* this buffer is refilled by the next iteration's prefetch */
    }

#pragma unroll
    for (int r = 0; r < 2; r++) {
        l_run[r] += __shfl_xor_sync(0xffffffffu, l_run[r], 1);
        l_run[r] += __shfl_xor_sync(0xffffffffu, l_run[r], 2);
    }
    const float inv_a = l_run[0] > 0.0f ? 1.0f / l_run[0] : 0.0f;
    const float inv_b = l_run[1] > 0.0f ? 1.0f / l_run[1] : 0.0f;
    float *out_a = oh + (size_t)t_a * a.q_stride + 2 * tq, *out_b = oh + (size_t)t_b * a.q_stride + 2 * tq;
#pragma unroll
    for (int dt = 0; dt < D / 8; dt++) {
        if (t_a < a.seq) *reinterpret_cast<float2 *>(out_a + dt * 8) = make_float2(o_acc[dt][0] * inv_a, o_acc[dt][1] * inv_a);
        if (t_b < a.seq) *reinterpret_cast<float2 *>(out_b + dt * 8) = make_float2(o_acc[dt][2] * inv_b, o_acc[dt][3] * inv_b);
    }
    if (tq == 0) {
        if (t_a < a.seq) lh[(size_t)t_a * a.n_heads] = l_run[0] > 0.0f ? (m_run[0] + log2f(l_run[0])) * LN2 : -INFINITY;
        if (t_b < a.seq) lh[(size_t)t_b * a.n_heads] = l_run[1] > 0.0f ? (m_run[1] + log2f(l_run[1])) * LN2 : -INFINITY;
    }
}

/* Keys (dQ) / queries (dK/dV) per register chunk of the backward: 32 at head_dim 64 (the S and dP fragments of half
 * a tile: 3 CTAs per SM instead of 2), the whole tile at 128 (shared memory allows 2 CTAs anyway). */
template <int D> __host__ __device__ constexpr int bwd_chunk() { return D == 64 ? 32 : 64; }
template <int D> __host__ __device__ constexpr int bwd_min_ctas() { return D == 64 ? 3 : 1; }

template <int D>
__global__ void __launch_bounds__(THREADS, bwd_min_ctas<D>())
    flash_backward_dq(float *dq, const float *dout, const float *lse, const float *delta, const float *q,
                         const bf16 *k, const bf16 *v, bf16 *q_copy, bf16 *dout_copy, flash_args a) {
    constexpr int SROW = smem_row<D>(), KC = bwd_chunk<D>();
    extern __shared__ __align__(16) unsigned char smem_raw[];
    bf16 *s_q = reinterpret_cast<bf16 *>(smem_raw);
    bf16 *s_do = s_q + TILE_Q * SROW, *s_k = s_do + TILE_Q * SROW, *s_v = s_k + 2 * TILE_K * SROW;

    const int n_q_tiles = (a.seq + TILE_Q - 1) / TILE_Q;
    const int q_tile = n_q_tiles - 1 - (int)blockIdx.z; /* longest first over the whole grid */
    const int h = blockIdx.x, b = blockIdx.y, kvh = h / a.group;
    const int tid = threadIdx.x, lane = tid & 31, warp = tid >> 5;
    const size_t batch_row0 = (size_t)b * a.seq;
    const size_t head_off = batch_row0 * a.q_stride + (size_t)h * D;
    const bf16 *kh = k + batch_row0 * a.kv_stride + (size_t)kvh * D;
    const bf16 *vh = v + batch_row0 * a.kv_stride + (size_t)kvh * D;
    float *dqh = dq + batch_row0 * a.q_stride + (size_t)h * D;
    const float *lh = lse + batch_row0 * a.n_heads + h, *dh = delta + batch_row0 * a.n_heads + h;
    const int r0 = q_tile * TILE_Q, rows = min(TILE_Q, a.seq - r0);
    const int t_min = r0, t_max = r0 + rows - 1;
    int kv_first, kv_last;
    key_range(a, t_min, t_max, &kv_first, &kv_last);
    const int n_kv_tiles = kv_last < kv_first ? 0 : (kv_last - kv_first + TILE_K) / TILE_K;
    const int key_limit = kv_last + 1;
    auto load_kv = [&](int tile, int buf) {
        const int k0 = kv_first + tile * TILE_K;
        async_rows<D, TILE_K>(s_k + buf * TILE_K * SROW, kh, a.kv_stride, k0, key_limit);
        async_rows<D, TILE_K>(s_v + buf * TILE_K * SROW, vh, a.kv_stride, k0, key_limit);
    };

    if (n_kv_tiles > 0) load_kv(0, 0);
    cp_async_commit();
    /* Q and dO are read once per CTA: fp32 rows rounded here while the first K/V tile lands, and written out as the
     * bf16 copies of the dK/dV kernel (every tile, even one that sees nothing: the dK/dV kernel still reads it) */
    stage_rows<D, TILE_Q>(s_q, q + head_off, a.q_stride, r0, a.seq, q_copy ? q_copy + head_off : NULL);
    stage_rows<D, TILE_Q>(s_do, dout + head_off, a.q_stride, r0, a.seq, dout_copy ? dout_copy + head_off : NULL);

    const int g = lane >> 2, tq = lane & 3;
    const int t_a = r0 + warp * 16 + g, t_b = t_a + 8;
    const float ref_a = lse_ref(lh + (size_t)t_a * a.n_heads, t_a < a.seq);
    const float ref_b = lse_ref(lh + (size_t)t_b * a.n_heads, t_b < a.seq);
    const float delta_a = t_a < a.seq ? dh[(size_t)t_a * a.n_heads] : 0.0f;
    const float delta_b = t_b < a.seq ? dh[(size_t)t_b * a.n_heads] : 0.0f;
    float dq_acc[D / 8][4];
#pragma unroll
    for (int dt = 0; dt < D / 8; dt++)
#pragma unroll
        for (int i = 0; i < 4; i++) dq_acc[dt][i] = 0.0f;

    for (int tile = 0; tile < n_kv_tiles; tile++) {
        const int buf = tile & 1, k0 = kv_first + tile * TILE_K;
        if (tile + 1 < n_kv_tiles) load_kv(tile + 1, buf ^ 1);
        cp_async_commit();
        cp_async_wait<1>();
        __syncthreads();
        const bf16 *tk = s_k + buf * TILE_K * SROW, *tv = s_v + buf * TILE_K * SROW;
        const bool need_mask = !tile_fully_visible(a, t_min, t_max, k0, k0 + TILE_K - 1);
#pragma unroll
        for (int c0 = 0; c0 < TILE_K; c0 += KC) { /* key chunks: same sums in the same order, fewer live registers */
            float p[KC / 8][4], dp[KC / 8][4];
            product_rows<D, KC / 8>(p, s_q, warp * 16, tk + c0 * SROW, lane);   /* S = Q K^T */
            product_rows<D, KC / 8>(dp, s_do, warp * 16, tv + c0 * SROW, lane); /* dP = dO V^T */
#pragma unroll
            for (int nt = 0; nt < KC / 8; nt++)
#pragma unroll
                for (int i = 0; i < 4; i++) {
                    float x = p[nt][i] * a.scale_log2;
                    if (need_mask && !visible(i < 2 ? t_a : t_b, k0 + c0 + nt * 8 + 2 * tq + (i & 1), a))
                        x = -INFINITY;
                    const float prob = exp2f(x - (i < 2 ? ref_a : ref_b));
                    p[nt][i] = prob * (dp[nt][i] - (i < 2 ? delta_a : delta_b)); /* dS */
                }
            accumulate_pv<D, KC / 16>(dq_acc, p, tk + c0 * SROW, lane); /* dQ += dS K */
        }
        __syncthreads();
    }

    float *dq_a = dqh + (size_t)t_a * a.q_stride + 2 * tq, *dq_b = dqh + (size_t)t_b * a.q_stride + 2 * tq;
#pragma unroll
    for (int dt = 0; dt < D / 8; dt++) {
        if (t_a < a.seq)
            *reinterpret_cast<float2 *>(dq_a + dt * 8) = make_float2(dq_acc[dt][0] * a.scale, dq_acc[dt][1] * a.scale);
        if (t_b < a.seq)
            *reinterpret_cast<float2 *>(dq_b + dt * 8) = make_float2(dq_acc[dt][2] * a.scale, dq_acc[dt][3] * a.scale);
    }
}

/* dK/dV with the (query head, query tile) steps of a key tile flattened into one double-buffered stream: the Q, dO,
 * ref and delta of step i+1 load while step i computes. ref/delta come head-major (head_major_rows); rows past
 * t_last are zero rows with ref +inf, as in the forward. */
template <int D>
__global__ void __launch_bounds__(THREADS, bwd_min_ctas<D>())
    flash_backward_dkdv(float *dk, float *dv, const bf16 *dout, const float *ref_hm, const float *delta_hm,
                           const bf16 *q, const bf16 *k, const bf16 *v, flash_args a) {
    constexpr int SROW = smem_row<D>(), BQ = dkdv_tile_q<D>(), QC = bwd_chunk<D>() < BQ ? bwd_chunk<D>() : BQ;
    extern __shared__ __align__(16) unsigned char smem_raw[];
    bf16 *s_k = reinterpret_cast<bf16 *>(smem_raw);
    bf16 *s_v = s_k + TILE_K * SROW, *s_q = s_v + TILE_K * SROW, *s_do = s_q + 2 * BQ * SROW; /* s_q, s_do: [2][BQ] */
    float *s_ref = reinterpret_cast<float *>(s_do + 2 * BQ * SROW), *s_delta = s_ref + 2 * BQ;

    const int key_tile = blockIdx.z; /* the first key tiles see the most queries: they start first (z varies slowest) */
    const int kvh = blockIdx.x, b = blockIdx.y;
    const int tid = threadIdx.x, lane = tid & 31, warp = tid >> 5;
    const size_t batch_row0 = (size_t)b * a.seq;
    const bf16 *kh = k + batch_row0 * a.kv_stride + (size_t)kvh * D;
    const bf16 *vh = v + batch_row0 * a.kv_stride + (size_t)kvh * D;
    const int k0 = key_tile * TILE_K, k_last = min(k0 + TILE_K, a.seq) - 1;
    const int t_first = k0 + a.mask_diagonal;
    const int t_last = a.window > 0 ? min(a.seq - 1, k_last + a.window - 1) : a.seq - 1;
    const int n_q = t_last < t_first ? 0 : (t_last - t_first + BQ) / BQ, n_steps = a.group * n_q;
    auto load_step = [&](int step, int buf) {
        const int h = kvh * a.group + step / n_q, q0 = t_first + (step % n_q) * BQ;
        const size_t head_off = batch_row0 * a.q_stride + (size_t)h * D;
        async_rows<D, BQ>(s_q + buf * BQ * SROW, q + head_off, a.q_stride, q0, t_last + 1);
        async_rows<D, BQ>(s_do + buf * BQ * SROW, dout + head_off, a.q_stride, q0, t_last + 1);
        if (tid < BQ) {
            const int t = q0 + tid;
            if (t <= t_last) {
                const size_t row = ((size_t)b * a.n_heads + h) * a.seq + t;
                cp_async_4(s_ref + buf * BQ + tid, ref_hm + row, true);
                cp_async_4(s_delta + buf * BQ + tid, delta_hm + row, true);
            } else { /* probability exactly 0 (plain stores; the buffer is free and the barrier comes first) */
                s_ref[buf * BQ + tid] = INFINITY;
                s_delta[buf * BQ + tid] = 0.0f;
            }
        }
    };

    const int g = lane >> 2, tq = lane & 3;
    const int p_a = k0 + warp * 16 + g, p_b = p_a + 8;
    float dk_acc[D / 8][4], dv_acc[D / 8][4];
#pragma unroll
    for (int dt = 0; dt < D / 8; dt++)
#pragma unroll
        for (int i = 0; i < 4; i++) dk_acc[dt][i] = dv_acc[dt][i] = 0.0f;

    async_rows<D, TILE_K>(s_k, kh, a.kv_stride, k0, a.seq);
    async_rows<D, TILE_K>(s_v, vh, a.kv_stride, k0, a.seq);
    if (n_steps > 0) load_step(0, 0);
    cp_async_commit();
    for (int step = 0; step < n_steps; step++) {
        const int buf = step & 1, q0 = t_first + (step % n_q) * BQ;
        if (step + 1 < n_steps) load_step(step + 1, buf ^ 1);
        cp_async_commit();
        cp_async_wait<1>();
        __syncthreads();
        const bf16 *tq_tile = s_q + buf * BQ * SROW, *tdo = s_do + buf * BQ * SROW;
        const float *ref = s_ref + buf * BQ, *dlt = s_delta + buf * BQ;
        const bool need_mask = !tile_fully_visible(a, q0, q0 + BQ - 1, k0, k0 + TILE_K - 1);
#pragma unroll
        for (int c0 = 0; c0 < BQ; c0 += QC) { /* query chunks: same sums in the same order, fewer live registers */
            float p[QC / 8][4], dp[QC / 8][4];
            product_rows<D, QC / 8>(p, s_k, warp * 16, tq_tile + c0 * SROW, lane); /* S^T = K Q^T */
            product_rows<D, QC / 8>(dp, s_v, warp * 16, tdo + c0 * SROW, lane);    /* dP^T = V dO^T */
#pragma unroll
            for (int nt = 0; nt < QC / 8; nt++)
#pragma unroll
                for (int i = 0; i < 4; i++) {
                    const int col = c0 + nt * 8 + 2 * tq + (i & 1);
                    float x = p[nt][i] * a.scale_log2;
                    if (need_mask && !visible(q0 + col, i < 2 ? p_a : p_b, a)) x = -INFINITY;
                    const float prob = exp2f(x - ref[col]);
                    p[nt][i] = prob;
                    dp[nt][i] = prob * (dp[nt][i] - dlt[col]); /* dS^T */
                }
            accumulate_pv<D, QC / 16>(dv_acc, p, tdo + c0 * SROW, lane);     /* dV += P^T dO */
            accumulate_pv<D, QC / 16>(dk_acc, dp, tq_tile + c0 * SROW, lane); /* dK += dS^T Q */
        }
        __syncthreads();
    }

#pragma unroll
    for (int r = 0; r < 2; r++) {
        const int key = r == 0 ? p_a : p_b;
        if (key >= a.seq) continue;
        const size_t off = (batch_row0 + key) * a.kv_stride + (size_t)kvh * D + 2 * tq;
#pragma unroll
        for (int dt = 0; dt < D / 8; dt++) {
            if (dk) {
                float2 *dst = reinterpret_cast<float2 *>(dk + off + dt * 8);
                const float2 old = *dst;
                *dst = make_float2(old.x + dk_acc[dt][2 * r] * a.scale, old.y + dk_acc[dt][2 * r + 1] * a.scale);
            }
            if (dv) {
                float2 *dst = reinterpret_cast<float2 *>(dv + off + dt * 8);
                const float2 old = *dst;
                *dst = make_float2(old.x + dv_acc[dt][2 * r], old.y + dv_acc[dt][2 * r + 1]);
            }
        }
    }
}

/* ---- launchers ---------------------------------------------------------------------------------------------------- */

/* Raises the kernel's dynamic shared-memory limit when it needs more than the default 48 KiB (once per kernel and
 * process; the call is idempotent, so a race only repeats it). */
template <typename Kernel> int allow_smem(Kernel kernel, size_t bytes, bool *done) {
    if (bytes <= 48 * 1024 || *done) return 0;
    const cudaError_t err = cudaFuncSetAttribute(kernel, cudaFuncAttributeMaxDynamicSharedMemorySize, (int)bytes);
    if (err != cudaSuccess) return (int)err;
    *done = true;
    return 0;
}

bool aligned16(const void *p) { return ((uintptr_t)p & 15u) == 0; }

bool shape_ok(const xlkv_cuda_train_attention_shape *s) {
    return s && s->batch > 0 && s->batch <= 65535 && s->seq > 0 && s->seq <= 65535 * TILE_Q && s->n_heads > 0 &&
           s->n_heads <= 65535 &&
           s->n_kv_heads > 0 && s->n_heads % s->n_kv_heads == 0 && s->window >= 0 &&
           (s->head_dim == 64 || s->head_dim == 128);
}

flash_args make_args(const xlkv_cuda_train_attention_shape *s) {
    flash_args a;
    a.seq = s->seq;
    a.n_heads = s->n_heads;
    a.group = s->n_heads / s->n_kv_heads;
    a.window = s->window;
    a.mask_diagonal = s->mask_diagonal ? 1 : 0;
    a.q_stride = (size_t)s->n_heads * s->head_dim;
    a.kv_stride = (size_t)s->n_kv_heads * s->head_dim;
    a.scale = 1.0f / sqrtf((float)s->head_dim);
    a.scale_log2 = a.scale * LOG2E;
    return a;
}

template <int D> constexpr size_t forward_smem() { return (size_t)(TILE_Q + 4 * TILE_K) * smem_row<D>() * 2; }
template <int D> constexpr size_t dq_smem() { return (size_t)(2 * TILE_Q + 4 * TILE_K) * smem_row<D>() * 2; }
template <int D> constexpr size_t dkdv_smem() {
    return (size_t)(2 * TILE_K + 4 * dkdv_tile_q<D>()) * smem_row<D>() * 2 + 4 * dkdv_tile_q<D>() * sizeof(float);
}

/* The workspace: bf16 copies of q, dout (q-shaped), k, v (kv-shaped), then the head-major ref and
 * delta rows (fp32). Every part starts 16-byte aligned (element counts are multiples of 8). */
struct workspace_parts {
    bf16 *q, *dout, *k, *v;
    float *ref, *delta;
    size_t q_elems, kv_elems, row_elems, bytes;
};

workspace_parts carve_workspace(void *ws, const xlkv_cuda_train_attention_shape *s) {
    workspace_parts w;
    const size_t rows = (size_t)s->batch * s->seq;
    w.q_elems = rows * s->n_heads * s->head_dim;
    w.kv_elems = rows * s->n_kv_heads * s->head_dim;
    w.row_elems = rows * s->n_heads;
    w.bytes = 2 * (2 * w.q_elems + 2 * w.kv_elems) * sizeof(bf16) + 2 * w.row_elems * sizeof(float);
    w.q = (bf16 *)ws;
    w.dout = w.q ? w.q + w.q_elems : NULL;
    w.k = w.q ? w.dout + w.q_elems : NULL;
    w.v = w.q ? w.k + w.kv_elems : NULL;
    w.ref = w.q ? reinterpret_cast<float *>(w.v + w.kv_elems) : NULL;
    w.delta = w.q ? w.ref + w.row_elems : NULL;
    return w;
}

int round_launch(bf16 *dst, const float *src, size_t n, cudaStream_t stream) {
    const size_t n8 = n / 8;
    const unsigned blocks = (unsigned)(n8 / 256 + 1 < 4096 ? n8 / 256 + 1 : 4096);
    round_to_bf16<<<blocks, 256, 0, stream>>>(dst, src, n8);
    return (int)cudaGetLastError();
}

template <int D>
int forward_launch(float *out, float *lse, const float *q, const workspace_parts &w, const flash_args &a,
                      int batch, cudaStream_t stream) {
    static bool smem_raised = false;
    const int err = allow_smem(flash_forward<D>, forward_smem<D>(), &smem_raised);
    if (err) return err;
    const dim3 grid(a.n_heads, batch, (a.seq + TILE_Q - 1) / TILE_Q);
    flash_forward<D><<<grid, THREADS, forward_smem<D>(), stream>>>(out, lse, q, w.k, w.v, a);
    return (int)cudaGetLastError();
}

template <int D>
int backward_launch(float *dq, float *dk, float *dv, const float *delta, const float *dout, const float *lse,
                       const float *q, const workspace_parts &w, const flash_args &a, int batch,
                       cudaStream_t stream) {
    static bool dq_smem_raised = false, dkdv_smem_raised = false;
    int err = allow_smem(flash_backward_dq<D>, dq_smem<D>(), &dq_smem_raised);
    if (err) return err;
    const dim3 dq_grid(a.n_heads, batch, (a.seq + TILE_Q - 1) / TILE_Q);
    const bool need_dkdv = dk || dv;
    flash_backward_dq<D><<<dq_grid, THREADS, dq_smem<D>(), stream>>>(
        dq, dout, lse, delta, q, w.k, w.v, need_dkdv ? w.q : NULL, need_dkdv ? w.dout : NULL, a);
    err = (int)cudaGetLastError();
    if (err || !need_dkdv) return err;
    const size_t rows = w.row_elems;
    const unsigned blocks = (unsigned)(rows / 256 + 1 < 4096 ? rows / 256 + 1 : 4096);
    head_major_rows<<<blocks, 256, 0, stream>>>(w.ref, w.delta, lse, delta, a.seq, a.n_heads, rows);
    err = (int)cudaGetLastError();
    if (err) return err;
    err = allow_smem(flash_backward_dkdv<D>, dkdv_smem<D>(), &dkdv_smem_raised);
    if (err) return err;
    const dim3 kv_grid(a.n_heads / a.group, batch, (a.seq + TILE_K - 1) / TILE_K);
    flash_backward_dkdv<D><<<kv_grid, THREADS, dkdv_smem<D>(), stream>>>(dk, dv, w.dout, w.ref, w.delta, w.q,
                                                                               w.k, w.v, a);
    return (int)cudaGetLastError();
}

} // namespace

extern "C" size_t xlkv_cuda_train_attention_flash_workspace_bytes(const xlkv_cuda_train_attention_shape *shape) {
    return shape_ok(shape) ? carve_workspace(NULL, shape).bytes : 0;
}

extern "C" bool xlkv_cuda_train_attention_flash_supported(const xlkv_cuda_train_attention_shape *shape) {
    return shape_ok(shape);
}

extern "C" int xlkv_cuda_train_attention_flash_forward(float *out, float *lse, const float *q, const float *k,
                                                       const float *v, const xlkv_cuda_train_attention_shape *shape,
                                                       void *workspace, void *stream) {
    if (!shape_ok(shape) || !aligned16(out) || !aligned16(q) || !aligned16(k) || !aligned16(v) || !lse || !workspace ||
        !aligned16(workspace))
        return (int)cudaErrorInvalidValue;
    const flash_args a = make_args(shape);
    cudaStream_t s = (cudaStream_t)stream;
    const workspace_parts w = carve_workspace(workspace, shape);
    int err = round_launch(w.k, k, w.kv_elems, s); /* K/V tiles are re-read by every query tile: bf16 copies */
    if (!err) err = round_launch(w.v, v, w.kv_elems, s);
    if (err) return err;
    return shape->head_dim == 64 ? forward_launch<64>(out, lse, q, w, a, shape->batch, s)
                                 : forward_launch<128>(out, lse, q, w, a, shape->batch, s);
}

extern "C" int xlkv_cuda_train_attention_flash_backward(float *dq, float *dk, float *dv, float *delta,
                                                        const float *dout, const float *out, const float *lse,
                                                        const float *q, const float *k, const float *v,
                                                        const xlkv_cuda_train_attention_shape *shape, void *workspace,
                                                        void *stream) {
    if (!shape_ok(shape) || !aligned16(dq) || !aligned16(dout) || !aligned16(q) || !aligned16(k) || !aligned16(v) ||
        !aligned16(dk) || !aligned16(dv) || !delta || !lse || !out || !workspace ||
        !aligned16(workspace))
        return (int)cudaErrorInvalidValue;
    int err = xlkv_cuda_train_attention_delta(delta, dout, out, shape, stream);
    if (err) return err;
    const flash_args a = make_args(shape);
    cudaStream_t s = (cudaStream_t)stream;
    const workspace_parts w = carve_workspace(workspace, shape);
    err = round_launch(w.k, k, w.kv_elems, s); /* the bf16 Q / dO copies come from the dQ kernel */
    if (!err) err = round_launch(w.v, v, w.kv_elems, s);
    if (err) return err;
    return shape->head_dim == 64 ? backward_launch<64>(dq, dk, dv, delta, dout, lse, q, w, a, shape->batch, s)
                                 : backward_launch<128>(dq, dk, dv, delta, dout, lse, q, w, a, shape->batch, s);
}
