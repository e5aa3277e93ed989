/* backend/cuda/kernels_attention_prefill: prefill attention of one sequence (n queries at positions pos0 .. pos0+n-1
 * over keys 0 .. pos0+n-1 of the paged pool), flash-attention style.
 *
 * Tensor-core path (bf16, head_dim 64 or 128, 16-byte aligned rows): one CTA of 4 warps per (64-query tile, query
 * head); each warp owns 16 query rows. Key/value tiles of 64 positions are gathered from the paged pool by cp.async
 * (16-byte chunks, rows past the last needed key zero-filled) into double-buffered shared memory (rows padded by
 * 16 bytes: conflict-free ldmatrix), so tile j+1 loads while tile j computes. S = Q K^T and O += P V run on
 * mma.sync.m16n8k16 (bf16 inputs, fp32 accumulators); Q fragments stay in registers for the whole CTA; P goes from
 * the S accumulators straight to A fragments (no shared-memory round trip). Online softmax in fp32 (exp2 with the
 * scale folded in); masked scores are -inf and a row whose running max is still -inf uses 0 as its reference, so a
 * fully masked tile adds nothing and never makes NaN; rows with nothing visible end with sum 0 and write zeros.
 * Per-element masks (p <= t, p != t with mask_diagonal, t - p < window) are applied only on tiles that need them.
 * Query tiles are scheduled longest first (causal work grows with the tile index).
 *
 * Generic path (fp32, other head_dim <= 256, unaligned rows): one warp per (query row, head) on CUDA cores
 * (warp_attend_range), exact fp32.
 *
 * Cost model (tinyllama prefill, n = 2048, pos0 = 0, 32 heads, head_dim 64, causal): useful FLOPs
 * 4 * n^2/2 * 64 * 32 = 17.2 GFLOP per layer (the tensor-core path computes whole 64x64 tiles on the diagonal:
 * ~3% more); bytes: K/V tiles are re-read per query tile and head (L2-resident: 2 * 2048 * 256 * 2 = 2 MiB of
 * K/V per layer), Q and O 8 MiB each. Compute-bound: target >= 100 TFLOP/s effective on H100 -> <= ~0.17 ms. */
#include <cuda_bf16.h>

#include "backend/cuda/kernels_attention_common.cuh"
#include "backend/cuda/kernels_mma.cuh"

using namespace xlkv_cuda;

namespace {

constexpr int TILE_M = 64;  /* query rows per CTA (16 per warp) */
constexpr int TILE_N = 64;  /* key positions per tile */
constexpr int PREFILL_THREADS = 128;
constexpr int GENERIC_THREADS = 128;

struct prefill_params {
    __nv_bfloat16 *out;
    const __nv_bfloat16 *q;
    int q_stride;
    int n, pos0, seq;
    const __nv_bfloat16 *pool;
    pool_view view;
    int n_heads, group, window, mask_diagonal, read_slot;
    float scale_log2; /* 1/sqrt(head_dim) * log2(e) */
};

template <int D> __host__ __device__ constexpr int smem_row() { return D + 8; } /* bf16 elements per padded shared-memory row */
template <int D> constexpr size_t prefill_smem_bytes() {
    return (size_t)(TILE_M + 4 * TILE_N) * smem_row<D>() * sizeof(__nv_bfloat16); /* Q + 2 x (K, V) */
}

template <int D> __global__ void __launch_bounds__(PREFILL_THREADS) prefill_mma_kernel(prefill_params p) {
    constexpr int SROW = smem_row<D>();
    constexpr int CHUNKS = D / 8; /* 16-byte chunks per row */
    extern __shared__ __align__(16) unsigned char smem_raw[];
    __nv_bfloat16 *s_q = reinterpret_cast<__nv_bfloat16 *>(smem_raw);
    __nv_bfloat16 *s_k = s_q + TILE_M * SROW; /* [2][TILE_N][SROW] */
    __nv_bfloat16 *s_v = s_k + 2 * TILE_N * SROW;

    const int n_q_tiles = (p.n + TILE_M - 1) / TILE_M;
    const int q_tile = n_q_tiles - 1 - (int)blockIdx.x; /* longest first */
    const int h = blockIdx.y, kv_head = h / p.group;
    const int tid = threadIdx.x, lane = tid & 31, warp = tid >> 5;
    const int r0 = q_tile * TILE_M;
    const int rows = p.n - r0 < TILE_M ? p.n - r0 : TILE_M;
    const int t_min = p.pos0 + r0, t_max = p.pos0 + r0 + rows - 1;
    const int kv_first = p.window > 0 ? (t_min - p.window + 1 > 0 ? t_min - p.window + 1 : 0) : 0;
    const int kv_last = p.mask_diagonal ? t_max - 1 : t_max;
    const size_t out_stride = (size_t)p.n_heads * D;

    if (kv_last < kv_first) { /* nothing visible for any row of the tile (uniform over the CTA) */
        for (int i = tid; i < rows * D; i += PREFILL_THREADS)
            p.out[(size_t)(r0 + i / D) * out_stride + (size_t)h * D + i % D] = __float2bfloat16_rn(0.0f);
        return;
    }
    const int n_kv_tiles = (kv_last - kv_first + TILE_N) / TILE_N;

    /* Q tile (rows past n zero-filled) */
    for (int c = tid; c < TILE_M * CHUNKS; c += PREFILL_THREADS) {
        const int row = c / CHUNKS, ch = c % CHUNKS;
        const bool valid = row < rows;
        const __nv_bfloat16 *src = valid ? p.q + (size_t)(r0 + row) * p.q_stride + (size_t)h * D + ch * 8 : p.q;
        cp_async_16(s_q + row * SROW + ch * 8, src, valid);
    }
    auto load_kv_tile = [&](int tile, int buf) {
        const int k0 = kv_first + tile * TILE_N;
        __nv_bfloat16 *dk = s_k + buf * TILE_N * SROW, *dv = s_v + buf * TILE_N * SROW;
        for (int c = tid; c < TILE_N * CHUNKS; c += PREFILL_THREADS) {
            const int row = c / CHUNKS, ch = c % CHUNKS;
            const int pos = k0 + row;
            const bool valid = pos <= kv_last;
            const __nv_bfloat16 *src_k = p.pool, *src_v = p.pool;
            if (valid) {
                src_k = p.pool + pool_row_offset(p.view, p.seq, pos, p.read_slot, 0) + (size_t)kv_head * D + ch * 8;
                src_v = p.pool + pool_row_offset(p.view, p.seq, pos, p.read_slot, 1) + (size_t)kv_head * D + ch * 8;
            }
            cp_async_16(dk + row * SROW + ch * 8, src_k, valid);
            cp_async_16(dv + row * SROW + ch * 8, src_v, valid);
        }
    };
    load_kv_tile(0, 0);
    cp_async_commit();

    const int g = lane >> 2, tq = lane & 3;
    const int row_a = warp * 16 + g; /* this thread's rows in the tile: row_a and row_a + 8 */
    const int t_a = p.pos0 + r0 + row_a, t_b = t_a + 8;

    uint32_t q_frag[D / 16][4];
    float o_acc[D / 8][4];
#pragma unroll
    for (int dt = 0; dt < D / 8; dt++)
#pragma unroll
        for (int i = 0; i < 4; i++) o_acc[dt][i] = 0.0f;
    float m_run[2] = {-INFINITY, -INFINITY}, l_run[2] = {0.0f, 0.0f};

    for (int tile = 0; tile < n_kv_tiles; tile++) {
        const int buf = tile & 1;
        if (tile + 1 < n_kv_tiles) load_kv_tile(tile + 1, buf ^ 1);
        cp_async_commit(); /* possibly empty: keeps the group count uniform */
        cp_async_wait<1>();
        __syncthreads();
        if (tile == 0) {
#pragma unroll
            for (int kc = 0; kc < D / 16; kc++)
                ldmatrix_x4(q_frag[kc], s_q + (warp * 16 + (lane & 15)) * SROW + kc * 16 + (lane >> 4) * 8);
        }
        const __nv_bfloat16 *tk = s_k + buf * TILE_N * SROW, *tv = s_v + buf * TILE_N * SROW;

        /* S = Q K^T: 16 rows x 64 keys per warp */
        float s[TILE_N / 8][4];
#pragma unroll
        for (int nt = 0; nt < TILE_N / 8; nt++) {
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

        /* scale, mask, online softmax */
        const int k0 = kv_first + tile * TILE_N;
        const bool need_mask = !(k0 + TILE_N - 1 <= t_min - p.mask_diagonal &&
                                 (p.window == 0 || t_max - k0 < p.window));
        float tile_max[2] = {-INFINITY, -INFINITY};
#pragma unroll
        for (int nt = 0; nt < TILE_N / 8; nt++)
#pragma unroll
            for (int i = 0; i < 4; i++) {
                float v = s[nt][i] * p.scale_log2;
                if (need_mask) {
                    const int key = k0 + nt * 8 + 2 * tq + (i & 1);
                    const int t = i < 2 ? t_a : t_b;
                    const bool visible = key <= t - p.mask_diagonal && (p.window == 0 || t - key < p.window);
                    if (!visible) v = -INFINITY;
                }
                s[nt][i] = v;
                tile_max[i >> 1] = fmaxf(tile_max[i >> 1], v);
            }
        float alpha[2], m_ref[2];
#pragma unroll
        for (int r = 0; r < 2; r++) {
            tile_max[r] = fmaxf(tile_max[r], __shfl_xor_sync(0xffffffffu, tile_max[r], 1));
            tile_max[r] = fmaxf(tile_max[r], __shfl_xor_sync(0xffffffffu, tile_max[r], 2));
            const float m_new = fmaxf(m_run[r], tile_max[r]);
            m_ref[r] = m_new == -INFINITY ? 0.0f : m_new; /* all masked so far: exp2(-inf - 0) = 0, no NaN */
            alpha[r] = exp2f(m_run[r] - m_ref[r]);        /* m_run = -inf -> 0 (l, o are 0 anyway) */
            m_run[r] = m_new;
        }
        float row_sum[2] = {0.0f, 0.0f};
#pragma unroll
        for (int nt = 0; nt < TILE_N / 8; nt++)
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

        /* O += P V */
#pragma unroll
        for (int kk = 0; kk < TILE_N / 16; kk++) {
            uint32_t a[4];
            a[0] = pack_bf16x2(s[2 * kk][0], s[2 * kk][1]);
            a[1] = pack_bf16x2(s[2 * kk][2], s[2 * kk][3]);
            a[2] = pack_bf16x2(s[2 * kk + 1][0], s[2 * kk + 1][1]);
            a[3] = pack_bf16x2(s[2 * kk + 1][2], s[2 * kk + 1][3]);
#pragma unroll
            for (int dt = 0; dt < D / 8; dt += 2) {
                uint32_t vb[4];
                ldmatrix_x4_trans(vb, tv + (kk * 16 + ((lane >> 3) & 1) * 8 + (lane & 7)) * SROW + (dt + (lane >> 4)) * 8);
                mma_bf16_16816(o_acc[dt], a, vb[0], vb[1]);
                mma_bf16_16816(o_acc[dt + 1], a, vb[2], vb[3]);
            }
        }
        __syncthreads(); /* this buffer is refilled by the next iteration's prefetch */
    }

#pragma unroll
    for (int r = 0; r < 2; r++) {
        l_run[r] += __shfl_xor_sync(0xffffffffu, l_run[r], 1);
        l_run[r] += __shfl_xor_sync(0xffffffffu, l_run[r], 2);
    }
    const float inv_a = l_run[0] > 0.0f ? 1.0f / l_run[0] : 0.0f;
    const float inv_b = l_run[1] > 0.0f ? 1.0f / l_run[1] : 0.0f;
    __nv_bfloat16 *out_a = p.out + (size_t)(r0 + row_a) * out_stride + (size_t)h * D + 2 * tq;
    __nv_bfloat16 *out_b = out_a + 8 * out_stride;
#pragma unroll
    for (int dt = 0; dt < D / 8; dt++) {
        if (row_a < rows)
            *reinterpret_cast<uint32_t *>(out_a + dt * 8) = pack_bf16x2(o_acc[dt][0] * inv_a, o_acc[dt][1] * inv_a);
        if (row_a + 8 < rows)
            *reinterpret_cast<uint32_t *>(out_b + dt * 8) = pack_bf16x2(o_acc[dt][2] * inv_b, o_acc[dt][3] * inv_b);
    }
}

template <int D> int launch_prefill_mma(const prefill_params &p, cudaStream_t stream) {
    constexpr size_t smem = prefill_smem_bytes<D>();
    static bool smem_limit_raised = false; /* once per process (benign race: the call is idempotent) */
    if (smem > 48 * 1024 && !smem_limit_raised) {
        const cudaError_t err =
            cudaFuncSetAttribute(prefill_mma_kernel<D>, cudaFuncAttributeMaxDynamicSharedMemorySize, (int)smem);
        if (err != cudaSuccess) return (int)err;
        smem_limit_raised = true;
    }
    const dim3 grid((p.n + TILE_M - 1) / TILE_M, p.n_heads);
    prefill_mma_kernel<D><<<grid, PREFILL_THREADS, smem, stream>>>(p);
    return launch_status();
}

/* ---- generic: one warp per (query row, head); grid (n, ceil(n_heads / 4)) ---- */
template <typename T>
__global__ void __launch_bounds__(GENERIC_THREADS)
    prefill_generic_kernel(T *out, const T *q, int q_stride, int pos0, int seq, const T *pool, pool_view view,
                           int n_heads, int n_kv_heads, int head_dim, int window, int mask_diagonal, int read_slot,
                           float scale) {
    __shared__ float s_q[GENERIC_THREADS / 32][GENERIC_MAX_HEAD_DIM];
    const int r = blockIdx.x;
    const int lane = threadIdx.x & 31, warp = threadIdx.x >> 5;
    const int h = blockIdx.y * (GENERIC_THREADS / 32) + warp;
    if (h >= n_heads) return; /* whole warp */
    const int kv_head = h / (n_heads / n_kv_heads);
    T *out_row = out + (size_t)r * n_heads * head_dim + (size_t)h * head_dim;
    int first, last;
    visible_range(pos0 + r, window, mask_diagonal, &first, &last);
    if (last < first) {
        for (int d = lane; d < head_dim; d += 32) out_row[d] = from_float<T>(0.0f);
        return;
    }
    const T *q_row = q + (size_t)r * q_stride + (size_t)h * head_dim;
    for (int d = lane; d < head_dim; d += 32) s_q[warp][d] = to_float<T>(q_row[d]);
    __syncwarp();
    float m, l, acc[8];
    warp_attend_range<T>(s_q[warp], pool, view, seq, read_slot, kv_head * head_dim, head_dim, first, last, scale, &m,
                         &l, acc);
    const float inv = 1.0f / l; /* l >= 1: the max element contributes exp(0) */
#pragma unroll
    for (int i = 0; i < 8; i++) {
        const int d = lane + 32 * i;
        if (d < head_dim) out_row[d] = from_float<T>(acc[i] * inv);
    }
}

template <typename T>
int attention_prefill(void *out, const void *q, int q_stride, int n, int pos0, int seq, const xlkv_paged_kv *kv,
                      const xlkv_attention_rule *rule, cudaStream_t stream) {
    if (n <= 0) return 0;
    if (!kv || !rule || rule->n_heads <= 0 || rule->n_kv_heads <= 0 || rule->n_heads % rule->n_kv_heads != 0 ||
        rule->head_dim <= 0 || kv->kv_dim != rule->n_kv_heads * rule->head_dim || rule->read_slot < 0 ||
        rule->read_slot >= kv->n_slots || kv->block_size <= 0 || pos0 < 0 || seq < 0 || rule->n_heads > 65535)
        return (int)cudaErrorInvalidValue;
    const float scale = 1.0f / sqrtf((float)rule->head_dim);
    const bool is_bf16 = sizeof(T) == 2;
    const bool aligned = vector_ok<__nv_bfloat16>(q, rule->head_dim, q_stride) &&
                         vector_ok<__nv_bfloat16>(kv->pool, kv->kv_dim, kv->kv_dim) && (uintptr_t)out % 4 == 0;
    if (is_bf16 && aligned && (rule->head_dim == 64 || rule->head_dim == 128)) {
        prefill_params p;
        p.out = (__nv_bfloat16 *)out;
        p.q = (const __nv_bfloat16 *)q;
        p.q_stride = q_stride;
        p.n = n;
        p.pos0 = pos0;
        p.seq = seq;
        p.pool = (const __nv_bfloat16 *)kv->pool;
        p.view = make_pool_view(kv);
        p.n_heads = rule->n_heads;
        p.group = rule->n_heads / rule->n_kv_heads;
        p.window = rule->window;
        p.mask_diagonal = rule->mask_diagonal ? 1 : 0;
        p.read_slot = rule->read_slot;
        p.scale_log2 = scale * 1.4426950408889634f;
        return rule->head_dim == 64 ? launch_prefill_mma<64>(p, stream) : launch_prefill_mma<128>(p, stream);
    }
    if (rule->head_dim > GENERIC_MAX_HEAD_DIM) return (int)cudaErrorInvalidValue;
    const dim3 grid(n, (rule->n_heads + GENERIC_THREADS / 32 - 1) / (GENERIC_THREADS / 32));
    prefill_generic_kernel<T><<<grid, GENERIC_THREADS, 0, stream>>>(
        (T *)out, (const T *)q, q_stride, pos0, seq, (const T *)kv->pool, make_pool_view(kv), rule->n_heads,
        rule->n_kv_heads, rule->head_dim, rule->window, rule->mask_diagonal ? 1 : 0, rule->read_slot, scale);
    return launch_status();
}

} // namespace

extern "C" int xlkv_cuda_attention_prefill(void *out, const void *q, int q_stride, int n, int pos0, int seq,
                                           const xlkv_paged_kv *kv, const xlkv_attention_rule *rule, xlkv_dtype dt,
                                           void *stream) {
    XLKV_DISPATCH_DTYPE(dt, attention_prefill, out, q, q_stride, n, pos0, seq, kv, rule, (cudaStream_t)stream);
}
