/* backend/cuda/train_attention_flash: tensor-core attention of the trainer (see train_attention_flash.h), in the
 * FlashAttention-2 arrangement, on the primitives of kernels_mma.cuh and the fragment conventions of the inference
 * prefill kernel (kernels_attention_prefill.cu).
 *
 * Every kernel runs CTAs of 4 warps. Tiles of fp32 rows are read with coalesced 16-byte loads (lane l of a row block
 * reads float4 l), rounded to bf16 and stored 8 bytes a lane into shared memory (rows padded by 16 bytes:
 * conflict-free stores and ldmatrix); products are mma.sync.m16n8k16 bf16 -> fp32. Probabilities cost one FFMA and
 * one ex2.approx.ftz per score: exp2(s * scale_log2 - ref) with s the raw score and ref a reference already in log2
 * units (FlashAttention-2's arrangement: the forward keeps the running max of the raw scores, scaled once per row and
 * tile). ftz only flushes results below 2^-126 to 0 (probabilities 1e-38 of the row's largest: no tolerance moves;
 * the approximation itself is the one exp2f uses). Masks (p <= t, p < t with mask_diagonal, t - p < window) are
 * applied per element only on tiles that need them, as two compares of t - p (a per-tile value plus constants).
 * Addresses: per-thread shared offsets of the ldmatrix rows are computed once (tile offsets become immediates), the
 * cp.async streams move a fixed chunk per thread with a pointer advanced by a constant per tile (tile_stream).
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
 * delta = rowsum(dO * O) is computed by the dQ kernel while it stages dO (it reads O's rows beside them: row_delta,
 * the bits of xlkv_cuda_train_attention_delta, train_kernels.cu), which also writes the dK/dV kernel's head-major
 * lse' / delta rows; options->separate_delta keeps the former delta pass + head_major_rows (the A/B, same bits).
 * options->overwrite_dkdv: the dK/dV kernel writes 0 + value instead of adding (no clearing pass before it).
 *
 * Staging: bf16 copies of what is streamed go to the workspace first (K, V: round_to_bf16; the backward's Q and dO:
 * written by the dQ kernel, which reads each of their rows once anyway; the dQ kernel also writes the dK/dV kernel's
 * lse' / delta contiguous per (sequence, head), head_major_rows with separate_delta); the kernels then move 16-byte cp.async chunks with double buffering
 * (tile j+1 loads while tile j computes), as the inference prefill kernel does. Operands read once per CTA (Q of the
 * forward, Q and dO of dQ) come from fp32 with plain loads, issued while the first cp.async tile is in flight.
 * RoPE (the _rope calls, flash_args.rope_cos non-NULL): q and k arrive unrotated and are rotated where they are
 * staged, by rope_pair (train_kernels_common.cuh) in fp32 before the bf16 rounding: Q in stage_rows (forward, dQ;
 * the dQ kernel's bf16 Q copy is then rotated too), K in its pre-pass (round_rope_to_bf16 instead of round_to_bf16,
 * forward and backward); V and dO are never rotated. The same values as the RoPE kernel's, so the same bits.
 * rope->dq16 (backward): the dQ kernel writes bf16(inverse rotation(dq)) straight into the caller's bf16 operand
 * (each lane holds whole RoPE pairs of its rows), the bits xlkv_cuda_train_rope_to_bf16 would write from fp32 dq.
 * Occupancy at head_dim 64 (ptxas -v, sm_90): the forward is compiled for 4 CTAs per SM (128 registers; 4 x 46 KB of
 * shared memory, which needs the maximum carveout, set at the first launch: the default gave 168 KB and 3 CTAs); the
 * backward kernels hold S and dP for 32 keys (dQ) / 32 queries (dK/dV) at a time (168 registers, 3 CTAs; 4 would
 * spill). docs/TRAINING.md lists the counts of every instantiation. The grids put the tile index in z (dispatched
 * slowest): the longest tiles of every (head, sequence) start before any short one, short ones fill the tail. (A
 * first version that rounded fp32 tiles while staging them, without a workspace, took 2x / 2.2x longer and gave the
 * same bits; it was removed after the H100 run at 5c5b2e8, bench/results/train/.)
 * Cost (small: B 16, T 1024, 12/6 heads x 64, causal), per layer: forward 4 * 16 * 12 * 1024^2 / 2 * 64 = 26 GFLOP,
 * backward 2.5x that; the fp32 staging reads Q, K, V (and dO) once per tile pair, L2-resident. */
#include <cuda_bf16.h>
#include <cuda_runtime.h>
#include <limits.h>
#include <math.h>
#include <stdint.h>

#include "backend/cuda/kernels_mma.cuh"
#include "backend/cuda/train_attention_flash.h"
#include "backend/cuda/train_kernels_common.cuh"

using namespace xlkv_cuda;

namespace {

constexpr int THREADS = 128; /* 4 warps */
constexpr int TILE_Q = 64;   /* query rows per CTA of the forward and dQ kernels (16 per warp) */
constexpr int TILE_K = 64;   /* keys per tile (16 per warp in the dK/dV kernel) */
constexpr float LOG2E = 1.4426950408889634f;
constexpr float LN2 = 0.6931471805599453f;

template <int D> __host__ __device__ constexpr int smem_row() { return D + 8; } /* padded bf16 row */
template <int D> __host__ __device__ constexpr int dkdv_tile_q() { return D == 64 ? 64 : 32; }
/* Bytes of a padded shared tile of `rows` rows. */
template <int D> __host__ __device__ constexpr int tile_bytes(int rows) { return rows * smem_row<D>() * 2; }

struct flash_args {
    int seq, n_heads, group, window, mask_diagonal;
    int window_end; /* window, or INT_MAX: key p is visible from query t iff mask_diagonal <= t - p < window_end */
    size_t q_stride, kv_stride; /* floats per row of q/out/dout and of k/v */
    float scale, scale_log2;
    /* RoPE while staging (xlkv_cuda_train_flash_rope): [seq, D / 2] tables, NULL: q and k come rotated */
    const float *rope_cos, *rope_sin;
    /* the dQ kernel's output as bf16(inverse RoPE(dq)) with rows dq16_ld apart (NULL: fp32 dq) */
    __nv_bfloat16 *dq16;
    size_t dq16_ld;
    /* the dQ kernel computes delta = rowsum(dO * O) itself from `out` (NULL: it reads delta_in, the separate pass's
     * [B*T, H] rows) and writes it to delta_out ([B*T, H], NULL: not written) and, with lse' (lse_ref), head-major to
     * ref_hm / delta_hm (NULL: no dK/dV kernel follows) */
    const float *out, *delta_in;
    float *delta_out, *ref_hm, *delta_hm;
    int overwrite_dkdv; /* the dK/dV kernel writes dk, dv (0 + value, the bits of a clear then an add) */
};

typedef __nv_bfloat16 bf16;

/* ---- exp2, shared-memory addresses, fragments -------------------------------------------------------------------- */

/* 2^x by the special-function unit with flush-to-zero: ex2.approx.ftz.f32 (the approximation exp2f also uses, ~2 ulp,
 * without exp2f's rescaling for results below 2^-126, which become +0 here); -inf -> +0. */
__device__ __forceinline__ float exp2_ftz(float x) {
    float y;
    asm("ex2.approx.ftz.f32 %0, %1;\n" : "=f"(y) : "f"(x));
    return y;
}

/* The thread index read from its special register again (volatile: not merged with earlier reads), so that values
 * derived from it are recomputed where used (two or three integer ops) instead of held across a loop, or spilled. */
__device__ __forceinline__ int fresh_tid() {
    unsigned t;
    asm volatile("mov.u32 %0, %%tid.x;\n" : "=r"(t));
    return (int)t;
}

__device__ __forceinline__ unsigned shared_addr(const void *p) { return (unsigned)__cvta_generic_to_shared(p); }

/* ldmatrix / cp.async on 32-bit shared addresses (the per-thread part computed once, tile offsets as immediates). */
__device__ __forceinline__ void ldsm_x4(uint32_t r[4], unsigned addr) {
    asm volatile("ldmatrix.sync.aligned.m8n8.x4.shared.b16 {%0, %1, %2, %3}, [%4];\n"
                 : "=r"(r[0]), "=r"(r[1]), "=r"(r[2]), "=r"(r[3])
                 : "r"(addr));
}
__device__ __forceinline__ void ldsm_x4_trans(uint32_t r[4], unsigned addr) {
    asm volatile("ldmatrix.sync.aligned.m8n8.x4.trans.shared.b16 {%0, %1, %2, %3}, [%4];\n"
                 : "=r"(r[0]), "=r"(r[1]), "=r"(r[2]), "=r"(r[3])
                 : "r"(addr));
}
/* 16 bytes global -> shared, asynchronous; valid false: zero-fill, nothing read (gmem must still be a valid
 * pointer value). */
__device__ __forceinline__ void cp_async_16_at(unsigned saddr, const void *gmem, bool valid) {
    asm volatile("cp.async.cg.shared.global [%0], [%1], 16, %2;\n" ::"r"(saddr), "l"(gmem), "r"(valid ? 16 : 0));
}

/* Byte offsets of this lane's ldmatrix row inside a padded tile, fixed per thread:
 *   a: x4 over a 16 x 16 A block (row lane & 15, column half lane >> 4);
 *   b: x4 over an 8-row x 32-column block of B rows (row lane & 7, 8-column quarter lane >> 3);
 *   t: x4 .trans over 16 k-rows x 16 columns (row (lane >> 3 & 1) * 8 + (lane & 7), column half lane >> 4). */
struct lane_offsets {
    unsigned a, b, t;
};
template <int D> __device__ __forceinline__ lane_offsets make_lane_offsets(int lane) {
    constexpr int SROW = smem_row<D>();
    lane_offsets o;
    o.a = (unsigned)(((lane & 15) * SROW + (lane >> 4) * 8) * 2);
    o.b = (unsigned)(((lane & 7) * SROW + (lane >> 3) * 8) * 2);
    o.t = (unsigned)(((((lane >> 3) & 1) * 8 + (lane & 7)) * SROW + (lane >> 4) * 8) * 2);
    return o;
}

/* acc[NT][4] = A (16 rows x all D columns; a_addr: the A tile's first row + lane_offsets.a) x B^T, B = NT*8 rows
 * (one per output column, D contiguous; b_addr: its first row + lane_offsets.b): S = Q K^T and its relatives. */
template <int D, int NT>
__device__ __forceinline__ void product_rows(float acc[NT][4], unsigned a_addr, unsigned b_addr) {
    constexpr int SROW = smem_row<D>();
#pragma unroll
    for (int nt = 0; nt < NT; nt++)
#pragma unroll
        for (int i = 0; i < 4; i++) acc[nt][i] = 0.0f;
#pragma unroll
    for (int kc2 = 0; kc2 < D / 32; kc2++) {
        uint32_t a0[4], a1[4];
        ldsm_x4(a0, a_addr + kc2 * 64);
        ldsm_x4(a1, a_addr + kc2 * 64 + 32);
#pragma unroll
        for (int nt = 0; nt < NT; nt++) {
            uint32_t b[4];
            ldsm_x4(b, b_addr + (nt * 8 * SROW + kc2 * 32) * 2);
            mma_bf16_16816(acc[nt], a0, b[0], b[1]);
            mma_bf16_16816(acc[nt], a1, b[2], b[3]);
        }
    }
}

/* P (16 x KT*16, as C fragments p[KT*2][4], fp32) -> bf16 A fragments pa[KT][4] (C fragment n-tiles 2kk, 2kk+1 are
 * exactly the A fragment kk). Packing right after the elementwise step halves the registers P holds. */
template <int KT> __device__ __forceinline__ void pack_a(uint32_t pa[KT][4], const float p[KT * 2][4]) {
#pragma unroll
    for (int kk = 0; kk < KT; kk++) {
        pa[kk][0] = pack_bf16x2(p[2 * kk][0], p[2 * kk][1]);
        pa[kk][1] = pack_bf16x2(p[2 * kk][2], p[2 * kk][3]);
        pa[kk][2] = pack_bf16x2(p[2 * kk + 1][0], p[2 * kk + 1][1]);
        pa[kk][3] = pack_bf16x2(p[2 * kk + 1][2], p[2 * kk + 1][3]);
    }
}

/* acc[D/8][4] += P (16 x KT*16, bf16 A fragments pa[KT][4]) x B, B = KT*16 rows (one per k, D contiguous; t_addr: its
 * first row + lane_offsets.t): O += P V and its relatives. */
template <int D, int KT>
__device__ __forceinline__ void accumulate_pv(float acc[D / 8][4], const uint32_t pa[KT][4], unsigned t_addr) {
    constexpr int SROW = smem_row<D>();
#pragma unroll
    for (int kk = 0; kk < KT; kk++) {
#pragma unroll
        for (int dt = 0; dt < D / 8; dt += 2) {
            uint32_t b[4];
            ldsm_x4_trans(b, t_addr + (kk * 16 * SROW + dt * 8) * 2);
            mma_bf16_16816(acc[dt], pa[kk], b[0], b[1]);
            mma_bf16_16816(acc[dt + 1], pa[kk], b[2], b[3]);
        }
    }
}

/* Whether a key at distance d = t - p before query t is visible (the per-element mask: two compares; the kernels
 * keep a per-tile d of their first element and add constants). */
__device__ __forceinline__ bool visible_at(int d, const flash_args &a) {
    return d >= a.mask_diagonal && d < a.window_end;
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

/* 4 bytes global -> shared, asynchronous (zero-fill when !valid; gmem must still be a valid pointer value). */
__device__ __forceinline__ void cp_async_4(void *smem, const void *gmem, bool valid) {
    const unsigned saddr = (unsigned)__cvta_generic_to_shared(smem);
    const int src_size = valid ? 4 : 0;
    asm volatile("cp.async.ca.shared.global [%0], [%1], 4, %2;\n" ::"r"(saddr), "l"(gmem), "r"(src_size));
}

/* One thread's share of streaming ROWS x D bf16 tiles (rows `stride` elements apart) into padded shared tiles with
 * 16-byte cp.async: the thread always moves the same 16-byte chunk of rows tid / CHUNKS + i * RSTEP of a tile (a
 * shift and a mask of the thread index; one 64-bit pointer step per chunk, no multiply or division). The caller keeps
 * the tile's offset (+ thread_offset()) and advances it by a constant per tile; rows >= valid_rows are zero-filled
 * (nothing is read: `fallback` is any valid pointer value). FRESH re-reads the thread index at each use (fresh_tid)
 * instead of holding the per-thread offsets across the key loop: which of the two spills nothing depends on the
 * kernel's register pressure (see the ptxas counts in docs/TRAINING.md). */
template <int D, int ROWS, bool FRESH = true> struct tile_stream {
    static constexpr int CHUNKS = D / 8, RSTEP = THREADS / CHUNKS, PER = ROWS / RSTEP;
    static_assert(ROWS % RSTEP == 0, "whole row steps per thread");
    static __device__ __forceinline__ int tid() { return FRESH ? fresh_tid() : (int)threadIdx.x; }
    static __device__ __forceinline__ size_t thread_offset(size_t stride) {
        const int t = tid();
        return (size_t)(t / CHUNKS) * stride + (t % CHUNKS) * 8;
    }
    /* this thread's rows of the tile (src: this thread's first chunk) -> the shared tile at byte address dst */
    static __device__ __forceinline__ void load(unsigned dst, const bf16 *src, size_t stride, int valid_rows,
                                                const void *fallback) {
        const int t = tid(), first = t / CHUNKS;
        const unsigned s = dst + (unsigned)((first * smem_row<D>() + (t % CHUNKS) * 8) * 2);
        const int left = valid_rows - first;
        const size_t step = (size_t)RSTEP * stride;
#pragma unroll
        for (int i = 0; i < PER; i++) {
            const bool valid = i * RSTEP < left;
            cp_async_16_at(s + i * tile_bytes<D>(RSTEP), valid ? (const void *)(src + i * step) : fallback, valid);
        }
    }
};

/* The K and V tiles of one KV head, streamed in key order (the forward and the dQ kernel): load_next() puts the next
 * TILE_K rows of both into the shared tiles at byte addresses sk / sv (rows past the last key zero-filled) and steps
 * by a constant. first_off: the element offset of the first key's row of the head in k and v. */
template <int D> struct kv_tile_feed {
    typedef tile_stream<D, TILE_K> stream;
    const bf16 *k, *v;
    size_t stride, off;
    int left; /* rows left, from the next tile's first */
    __device__ __forceinline__ kv_tile_feed(const bf16 *k_, const bf16 *v_, size_t stride_, size_t first_off, int rows)
        : k(k_), v(v_), stride(stride_), off(first_off + stream::thread_offset(stride_)), left(rows) {}
    __device__ __forceinline__ void load_next(unsigned sk, unsigned sv) {
        stream::load(sk, k + off, stride, left, k);
        stream::load(sv, v + off, stride, left, v);
        off += (size_t)TILE_K * stride;
        left -= TILE_K;
    }
};

/* fp32 rows row0 .. row0 + ROWS - 1 of one head (src at row 0 of that head, `stride` floats per row) -> padded bf16
 * shared rows (rows >= limit are zeros), also writing the bf16 rows (rows < limit) to `copy` (same layout as src,
 * NULL: none): the dQ kernel reads each Q / dO row exactly once, so it leaves the bf16 copies the dK/dV kernel
 * streams. rope_cos non-NULL: each row (position = its row index, src being row 0 of a sequence) is rotated with
 * rope_pair before the rounding, as xlkv_cuda_train_rope then a plain staging would do (the same fp32 values, so the
 * same bf16 bits; the copy holds the rotated rows). Coalesced: lane l of a row block reads float4 l (a warp's load covers consecutive 16-byte pieces), packs
 * it to 4 bf16 and stores 8 bytes (a half-warp writes 128 contiguous bytes of one padded row: no bank conflict;
 * the copy gets consecutive 8-byte pieces). Loads go out in batches of 8 before their stores. The same thread writes
 * and reads each piece: no barrier between the two. */
/* delta = rowsum(dO * O) of one row from the stage_rows layout (F4 = D / 4 threads per row, this thread holding
 * elements 4j .. 4j + 3 of dO in x and of O in y, j = its index in the row), the bits of attention_delta
 * (train_kernels.cu): there lane l (of 32) sums p_l = fma(x[l + 32 (DPL-1)], y[..], ... fma(x[l], y[l], 0)) and
 * warp_sum adds the p_l by a butterfly over lane bits 4, 3, 2, 1, 0. Here element l + 32 m sits in thread l / 4 + 8 m,
 * slot l % 4: the chain runs up the threads 8 apart (thread j + 8 m finishes it at step m), then lane bits 4, 3, 2
 * are thread bits 2, 1, 0 (xor shuffles 4, 2, 1 inside the last 8 threads) and bits 1, 0 the slots: the same sums in
 * the same order. Every thread of the warp must call it; the value is right in threads 8 (DPL - 1) .. 8 DPL - 1. */
template <int D> __device__ __forceinline__ float row_delta(float4 x, float4 y) {
    constexpr int DPL = D / 32;
    float c[4] = {fmaf(x.x, y.x, 0.0f), fmaf(x.y, y.y, 0.0f), fmaf(x.z, y.z, 0.0f), fmaf(x.w, y.w, 0.0f)};
#pragma unroll
    for (int m = 1; m < DPL; m++) {
        float up[4];
#pragma unroll
        for (int e = 0; e < 4; e++) up[e] = __shfl_up_sync(0xffffffffu, c[e], 8);
        c[0] = fmaf(x.x, y.x, up[0]);
        c[1] = fmaf(x.y, y.y, up[1]);
        c[2] = fmaf(x.z, y.z, up[2]);
        c[3] = fmaf(x.w, y.w, up[3]);
    }
#pragma unroll
    for (int o = 4; o > 0; o >>= 1)
#pragma unroll
        for (int e = 0; e < 4; e++) c[e] += __shfl_xor_sync(0xffffffffu, c[e], o);
    return (c[0] + c[2]) + (c[1] + c[3]);
}

template <int D, int ROWS>
__device__ __forceinline__ void stage_rows(bf16 *dst, const float *src, size_t stride, int row0, int limit,
                                           bf16 *copy, const float *rope_cos = NULL, const float *rope_sin = NULL,
                                           const float *o_src = NULL, float *delta_rows = NULL) {
    constexpr int SROW = smem_row<D>(), F4 = D / 4, RSTEP = THREADS / F4, PER = ROWS / RSTEP;
    constexpr int BATCH = PER < 8 ? PER : 8;
    static_assert(ROWS % RSTEP == 0 && PER % BATCH == 0, "whole row steps per thread");
    const int first = (int)threadIdx.x / F4, col = ((int)threadIdx.x % F4) * 4;
    const int left = limit - row0 - first;
    const size_t off = (size_t)(row0 + first) * stride + col, step = (size_t)RSTEP * stride;
    const float *s = src + off;
    bf16 *c = copy ? copy + off : NULL;
    bf16 *d = dst + first * SROW + col;
#pragma unroll
    for (int i0 = 0; i0 < PER; i0 += BATCH) {
        float4 v[BATCH];
#pragma unroll
        for (int i = 0; i < BATCH; i++) {
            v[i] = (i0 + i) * RSTEP < left ? *reinterpret_cast<const float4 *>(s) : make_float4(0.f, 0.f, 0.f, 0.f);
            s += step;
        }
        if (o_src) { /* delta_rows[row] = rowsum(src * o_src) (src: dO, o_src: O; zeros past limit give 0) */
            float4 o[BATCH];
#pragma unroll
            for (int i = 0; i < BATCH; i++)
                o[i] = (i0 + i) * RSTEP < left
                           ? *reinterpret_cast<const float4 *>(o_src + off + (size_t)(i0 + i) * step)
                           : make_float4(0.f, 0.f, 0.f, 0.f);
#pragma unroll
            for (int i = 0; i < BATCH; i++) {
                const float d = row_delta<D>(v[i], o[i]);
                if ((int)threadIdx.x % F4 == 8 * (D / 32 - 1)) delta_rows[first + (i0 + i) * RSTEP] = d;
            }
        }
        if (rope_cos) { /* this thread's two pairs col / 2, col / 2 + 1 of row row0 + first + i RSTEP */
            const float *cr = rope_cos + (size_t)(row0 + first) * (D / 2) + col / 2;
            const float *sr = rope_sin + (size_t)(row0 + first) * (D / 2) + col / 2;
#pragma unroll
            for (int i = 0; i < BATCH; i++) {
                if ((i0 + i) * RSTEP >= left) continue; /* a zero row past the sequence: no table row to read */
                const int t_off = (i0 + i) * RSTEP * (D / 2);
                const float2 c = *reinterpret_cast<const float2 *>(cr + t_off);
                const float2 sn = *reinterpret_cast<const float2 *>(sr + t_off);
                float4 r;
                xlkv_train::rope_pair(v[i].x, v[i].y, c.x, sn.x, &r.x, &r.y);
                xlkv_train::rope_pair(v[i].z, v[i].w, c.y, sn.y, &r.z, &r.w);
                v[i] = r;
            }
        }
#pragma unroll
        for (int i = 0; i < BATCH; i++) {
            const uint2 packed = make_uint2(pack_bf16x2(v[i].x, v[i].y), pack_bf16x2(v[i].z, v[i].w));
            *reinterpret_cast<uint2 *>(d + (i0 + i) * RSTEP * SROW) = packed;
            if (c && (i0 + i) * RSTEP < left) *reinterpret_cast<uint2 *>(c) = packed;
            if (c) c += step;
        }
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

/* round_to_bf16 of k with RoPE: dst = bf16(rope(src)), rows of `width` floats (n_kv_heads x head_dim), the position
 * of row r being r % seq, tables [seq, head_dim / 2] (16-byte aligned). Each thread takes 8 elements (4 pairs of one
 * head: head_dim % 8 == 0) and rotates them with rope_pair before the rounding: the bits of xlkv_cuda_train_rope
 * then round_to_bf16. */
__global__ void round_rope_to_bf16(bf16 *dst, const float *src, size_t n8, int width, int seq, int head_dim,
                                   const float *cos_table, const float *sin_table) {
    const int half = head_dim / 2;
    for (size_t i = (size_t)blockIdx.x * blockDim.x + threadIdx.x; i < n8; i += (size_t)gridDim.x * blockDim.x) {
        const size_t e = 8 * i, row = e / (size_t)width;
        const int col = (int)(e - row * (size_t)width), pos = (int)(row % (size_t)seq);
        const size_t t_off = (size_t)pos * half + (col % head_dim) / 2; /* a multiple of 4: 16-byte loads */
        const float4 c = *reinterpret_cast<const float4 *>(cos_table + t_off);
        const float4 sn = *reinterpret_cast<const float4 *>(sin_table + t_off);
        const float4 lo = reinterpret_cast<const float4 *>(src)[2 * i], hi = reinterpret_cast<const float4 *>(src)[2 * i + 1];
        float r[8];
        xlkv_train::rope_pair(lo.x, lo.y, c.x, sn.x, &r[0], &r[1]);
        xlkv_train::rope_pair(lo.z, lo.w, c.y, sn.y, &r[2], &r[3]);
        xlkv_train::rope_pair(hi.x, hi.y, c.z, sn.z, &r[4], &r[5]);
        xlkv_train::rope_pair(hi.z, hi.w, c.w, sn.w, &r[6], &r[7]);
        uint4 packed;
        packed.x = pack_bf16x2(r[0], r[1]);
        packed.y = pack_bf16x2(r[2], r[3]);
        packed.z = pack_bf16x2(r[4], r[5]);
        packed.w = pack_bf16x2(r[6], r[7]);
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

/* CTAs per SM each kernel is compiled for (__launch_bounds__ minimum: 65536 / (128 x CTAs) registers per thread at
 * most). head_dim 64: 4 forward CTAs (128 registers, 4 x 46 KB of shared memory with the maximum carveout); the
 * backward kernels keep 3 (at 4 they spill with the default ptxas -O3; with -Xptxas -O1 the dQ kernel fits 4 without
 * spilling: the macros let a benchmark build compare, see docs/TRAINING.md). head_dim 128: shared memory allows 2
 * forward CTAs; the backward kernels need their ~240 registers (1). */
#ifndef XLKV_FLASH_FWD_CTAS_64
#define XLKV_FLASH_FWD_CTAS_64 4
#endif
#ifndef XLKV_FLASH_DQ_CTAS_64
#define XLKV_FLASH_DQ_CTAS_64 3
#endif
#ifndef XLKV_FLASH_DKDV_CTAS_64
#define XLKV_FLASH_DKDV_CTAS_64 3
#endif
template <int D> __host__ __device__ constexpr int forward_min_ctas() { return D == 64 ? XLKV_FLASH_FWD_CTAS_64 : 2; }
template <int D> __host__ __device__ constexpr int dq_min_ctas() { return D == 64 ? XLKV_FLASH_DQ_CTAS_64 : 1; }
template <int D> __host__ __device__ constexpr int dkdv_min_ctas() { return D == 64 ? XLKV_FLASH_DKDV_CTAS_64 : 1; }

template <int D>
__global__ void __launch_bounds__(THREADS, forward_min_ctas<D>())
    flash_forward(float *out, float *lse, const float *q, const bf16 *k, const bf16 *v, flash_args a) {
    constexpr int SROW = smem_row<D>(), KV_BYTES = tile_bytes<D>(TILE_K);
    extern __shared__ __align__(16) unsigned char smem_raw[];
    bf16 *s_q = reinterpret_cast<bf16 *>(smem_raw);
    const unsigned sq_addr = shared_addr(smem_raw), sk_addr = sq_addr + tile_bytes<D>(TILE_Q);
    const unsigned sv_addr = sk_addr + 2 * KV_BYTES; /* K, V: [2][TILE_K][SROW] each */

    const int n_q_tiles = (a.seq + TILE_Q - 1) / TILE_Q;
    const int q_tile = n_q_tiles - 1 - (int)blockIdx.z; /* longest first over the whole grid (z varies slowest) */
    const int h = blockIdx.x, b = blockIdx.y, kvh = h / a.group;
    const int tid = threadIdx.x, lane = tid & 31, warp = tid >> 5;
    const size_t batch_row0 = (size_t)b * a.seq;
    const float *qh = q + batch_row0 * a.q_stride + (size_t)h * D;
    float *oh = out + batch_row0 * a.q_stride + (size_t)h * D;
    float *lh = lse + batch_row0 * a.n_heads + h;
    const int r0 = q_tile * TILE_Q, rows = min(TILE_Q, a.seq - r0);
    const int t_min = r0, t_max = r0 + rows - 1;
    int kv_first, kv_last;
    key_range(a, t_min, t_max, &kv_first, &kv_last);
    const int n_kv_tiles = kv_last < kv_first ? 0 : (kv_last - kv_first + TILE_K) / TILE_K;
    kv_tile_feed<D> feed(k, v, a.kv_stride, (batch_row0 + kv_first) * a.kv_stride + (size_t)kvh * D,
                         kv_last + 1 - kv_first);
    auto load_next_kv = [&](int buf) { feed.load_next(sk_addr + buf * KV_BYTES, sv_addr + buf * KV_BYTES); };

    const lane_offsets lo = make_lane_offsets<D>(lane);
    const int g = lane >> 2, tq = lane & 3;
    const int t_a = r0 + warp * 16 + g, t_b = t_a + 8;
    const unsigned qa_addr = sq_addr + warp * tile_bytes<D>(16) + lo.a;
    uint32_t q_frag[D / 16][4]; /* Q fragments, loaded once */
    float o_acc[D / 8][4];
#pragma unroll
    for (int dt = 0; dt < D / 8; dt++)
#pragma unroll
        for (int i = 0; i < 4; i++) o_acc[dt][i] = 0.0f;
    /* Online softmax per row (rows g and g + 8 of the warp): ref_run = running max of the raw scores x scale_log2
     * (-inf while nothing was seen), l_run = sum of exp2(score x scale_log2 - reference). */
    float ref_run[2] = {-INFINITY, -INFINITY}, l_run[2] = {0.0f, 0.0f};

    if (n_kv_tiles > 0) {
        load_next_kv(0);
        cp_async_commit();
        /* Q is read once per CTA: fp32 rows rounded here (no bf16 copy needed) while the first K/V tile lands */
        stage_rows<D, TILE_Q>(s_q, qh, a.q_stride, r0, a.seq, NULL, a.rope_cos, a.rope_sin);
    }
    for (int tile = 0; tile < n_kv_tiles; tile++) {
        const int buf = tile & 1, k0 = kv_first + tile * TILE_K;
        if (tile + 1 < n_kv_tiles) load_next_kv(buf ^ 1);
        cp_async_commit(); /* possibly empty: keeps the group count uniform */
        cp_async_wait<1>();
        __syncthreads();
        if (tile == 0) {
#pragma unroll
            for (int kc = 0; kc < D / 16; kc++) ldsm_x4(q_frag[kc], qa_addr + kc * 32);
        }
        const unsigned kb_addr = sk_addr + buf * KV_BYTES + lo.b;
        float s[TILE_K / 8][4]; /* raw scores Q K^T */
#pragma unroll
        for (int nt = 0; nt < TILE_K / 8; nt++) {
#pragma unroll
            for (int i = 0; i < 4; i++) s[nt][i] = 0.0f;
#pragma unroll
            for (int kc2 = 0; kc2 < D / 32; kc2++) {
                uint32_t kb[4];
                ldsm_x4(kb, kb_addr + (nt * 8 * SROW + kc2 * 32) * 2);
                mma_bf16_16816(s[nt], q_frag[2 * kc2], kb[0], kb[1]);
                mma_bf16_16816(s[nt], q_frag[2 * kc2 + 1], kb[2], kb[3]);
            }
        }
        const bool need_mask = !tile_fully_visible(a, t_min, t_max, k0, k0 + TILE_K - 1);
        const int d0 = t_a - k0 - 2 * tq; /* t - p of this lane's first element (row g, column 2 tq) */
        float tile_max[2] = {-INFINITY, -INFINITY};
#pragma unroll
        for (int nt = 0; nt < TILE_K / 8; nt++)
#pragma unroll
            for (int i = 0; i < 4; i++) {
                if (need_mask && !visible_at(d0 + (i >> 1) * 8 - nt * 8 - (i & 1), a)) s[nt][i] = -INFINITY;
                tile_max[i >> 1] = fmaxf(tile_max[i >> 1], s[nt][i]);
            }
        /* exp2(s x scale_log2 - ref) is one FFMA + ex2; a row whose max is still -inf uses 0 as its reference (its
         * probabilities are exp2(-inf) = 0, no NaN); alpha rescales the old sums (exp2(-inf) = 0 for a row that had
         * none). scale_log2 > 0, so the max of the scaled scores is the scaled max. */
        float alpha[2], neg_ref[2];
#pragma unroll
        for (int r = 0; r < 2; r++) {
            tile_max[r] = fmaxf(tile_max[r], __shfl_xor_sync(0xffffffffu, tile_max[r], 1));
            tile_max[r] = fmaxf(tile_max[r], __shfl_xor_sync(0xffffffffu, tile_max[r], 2));
            const float ref_new = fmaxf(ref_run[r], tile_max[r] * a.scale_log2);
            const float ref_use = ref_new == -INFINITY ? 0.0f : ref_new;
            alpha[r] = exp2_ftz(ref_run[r] - ref_use);
            neg_ref[r] = -ref_use;
            ref_run[r] = ref_new;
        }
        float row_sum[2] = {0.0f, 0.0f};
#pragma unroll
        for (int nt = 0; nt < TILE_K / 8; nt++)
#pragma unroll
            for (int i = 0; i < 4; i++) {
                const float e = exp2_ftz(fmaf(s[nt][i], a.scale_log2, neg_ref[i >> 1]));
                s[nt][i] = e;
                row_sum[i >> 1] += e;
            }
        uint32_t p_frag[TILE_K / 16][4];
        pack_a<TILE_K / 16>(p_frag, s);
#pragma unroll
        for (int r = 0; r < 2; r++) l_run[r] = l_run[r] * alpha[r] + row_sum[r];
#pragma unroll
        for (int dt = 0; dt < D / 8; dt++) {
            o_acc[dt][0] *= alpha[0];
            o_acc[dt][1] *= alpha[0];
            o_acc[dt][2] *= alpha[1];
            o_acc[dt][3] *= alpha[1];
        }
        accumulate_pv<D, TILE_K / 16>(o_acc, p_frag, sv_addr + buf * KV_BYTES + lo.t);
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
    if (tq == 0) { /* l_run > 0: ref_run is finite and is the reference of the sum */
        if (t_a < a.seq) lh[(size_t)t_a * a.n_heads] = l_run[0] > 0.0f ? (ref_run[0] + log2f(l_run[0])) * LN2 : -INFINITY;
        if (t_b < a.seq) lh[(size_t)t_b * a.n_heads] = l_run[1] > 0.0f ? (ref_run[1] + log2f(l_run[1])) * LN2 : -INFINITY;
    }
}

/* Keys (dQ) / queries (dK/dV) per register chunk of the backward: 32 at head_dim 64 (the S and dP fragments of half
 * a tile: 3 CTAs per SM instead of 2), the whole tile at 128 (shared memory allows 2 CTAs anyway). */
template <int D> __host__ __device__ constexpr int bwd_chunk() { return D == 64 ? 32 : 64; }

template <int D>
__global__ void __launch_bounds__(THREADS, dq_min_ctas<D>())
    flash_backward_dq(float *dq, const float *dout, const float *lse, const float *q,
                         const bf16 *k, const bf16 *v, bf16 *q_copy, bf16 *dout_copy, flash_args a) {
    constexpr int SROW = smem_row<D>(), KC = bwd_chunk<D>(), KV_BYTES = tile_bytes<D>(TILE_K);
    extern __shared__ __align__(16) unsigned char smem_raw[];
    bf16 *s_q = reinterpret_cast<bf16 *>(smem_raw);
    bf16 *s_do = s_q + TILE_Q * SROW;
    const unsigned sq_addr = shared_addr(smem_raw), sdo_addr = sq_addr + tile_bytes<D>(TILE_Q);
    const unsigned sk_addr = sdo_addr + tile_bytes<D>(TILE_Q), sv_addr = sk_addr + 2 * KV_BYTES;
    float *s_delta = reinterpret_cast<float *>(smem_raw + 2 * tile_bytes<D>(TILE_Q) + 4 * KV_BYTES); /* [TILE_Q] */

    const int n_q_tiles = (a.seq + TILE_Q - 1) / TILE_Q;
    const int q_tile = n_q_tiles - 1 - (int)blockIdx.z; /* longest first over the whole grid */
    const int h = blockIdx.x, b = blockIdx.y, kvh = h / a.group;
    const int tid = threadIdx.x, lane = tid & 31, warp = tid >> 5;
    const size_t batch_row0 = (size_t)b * a.seq;
    const size_t head_off = batch_row0 * a.q_stride + (size_t)h * D;
    float *dqh = dq + batch_row0 * a.q_stride + (size_t)h * D;
    const float *lh = lse + batch_row0 * a.n_heads + h;
    const int r0 = q_tile * TILE_Q, rows = min(TILE_Q, a.seq - r0);
    const int t_min = r0, t_max = r0 + rows - 1;
    int kv_first, kv_last;
    key_range(a, t_min, t_max, &kv_first, &kv_last);
    const int n_kv_tiles = kv_last < kv_first ? 0 : (kv_last - kv_first + TILE_K) / TILE_K;
    kv_tile_feed<D> feed(k, v, a.kv_stride, (batch_row0 + kv_first) * a.kv_stride + (size_t)kvh * D,
                         kv_last + 1 - kv_first);
    auto load_next_kv = [&](int buf) { feed.load_next(sk_addr + buf * KV_BYTES, sv_addr + buf * KV_BYTES); };

    if (n_kv_tiles > 0) load_next_kv(0);
    cp_async_commit();
    /* Q and dO are read once per CTA: fp32 rows rounded here while the first K/V tile lands, and written out as the
     * bf16 copies of the dK/dV kernel (every tile, even one that sees nothing: the dK/dV kernel still reads it) */
    stage_rows<D, TILE_Q>(s_q, q + head_off, a.q_stride, r0, a.seq, q_copy ? q_copy + head_off : NULL, a.rope_cos,
                          a.rope_sin);
    stage_rows<D, TILE_Q>(s_do, dout + head_off, a.q_stride, r0, a.seq, dout_copy ? dout_copy + head_off : NULL, NULL,
                          NULL, a.out ? a.out + head_off : NULL, s_delta);
    if (a.out) { /* delta of the tile's rows (stage_rows) -> delta_out and the dK/dV kernel's head-major rows */
        __syncthreads();
        if (tid < rows) {
            const int t = r0 + tid;
            const float d = s_delta[tid];
            if (a.delta_out) a.delta_out[(batch_row0 + t) * a.n_heads + h] = d;
            if (a.ref_hm) {
                const size_t hm = ((size_t)b * a.n_heads + h) * a.seq + t;
                a.ref_hm[hm] = lse_ref(lh + (size_t)t * a.n_heads, true);
                a.delta_hm[hm] = d;
            }
        }
    }

    const lane_offsets lo = make_lane_offsets<D>(lane);
    const unsigned qa_addr = sq_addr + warp * tile_bytes<D>(16) + lo.a;
    const unsigned doa_addr = sdo_addr + warp * tile_bytes<D>(16) + lo.a;
    const int g = lane >> 2, tq = lane & 3;
    const int t_a = r0 + warp * 16 + g, t_b = t_a + 8;
    /* P = exp2(s x scale_log2 - ref) as one FFMA with the negated reference (-inf: probability 0) */
    const float neg_ref_a = -lse_ref(lh + (size_t)t_a * a.n_heads, t_a < a.seq);
    const float neg_ref_b = -lse_ref(lh + (size_t)t_b * a.n_heads, t_b < a.seq);
    const float *dh = a.delta_in + batch_row0 * a.n_heads + h; /* a.delta_in: the separate pass (a.out NULL) */
    const float delta_a = a.out ? s_delta[t_a - r0] : t_a < a.seq ? dh[(size_t)t_a * a.n_heads] : 0.0f;
    const float delta_b = a.out ? s_delta[t_b - r0] : t_b < a.seq ? dh[(size_t)t_b * a.n_heads] : 0.0f;
    float dq_acc[D / 8][4];
#pragma unroll
    for (int dt = 0; dt < D / 8; dt++)
#pragma unroll
        for (int i = 0; i < 4; i++) dq_acc[dt][i] = 0.0f;

    for (int tile = 0; tile < n_kv_tiles; tile++) {
        const int buf = tile & 1, k0 = kv_first + tile * TILE_K;
        if (tile + 1 < n_kv_tiles) load_next_kv(buf ^ 1);
        cp_async_commit();
        cp_async_wait<1>();
        __syncthreads();
        const unsigned k_tile = sk_addr + buf * KV_BYTES, v_tile = sv_addr + buf * KV_BYTES;
        const bool need_mask = !tile_fully_visible(a, t_min, t_max, k0, k0 + TILE_K - 1);
        const int d0 = t_a - k0 - 2 * tq; /* t - p of this lane's first element (row g, column 2 tq) */
#pragma unroll
        for (int c0 = 0; c0 < TILE_K; c0 += KC) { /* key chunks: same sums in the same order, fewer live registers */
            float p[KC / 8][4], dp[KC / 8][4];
            product_rows<D, KC / 8>(p, qa_addr, k_tile + lo.b + c0 * SROW * 2);   /* S = Q K^T */
            product_rows<D, KC / 8>(dp, doa_addr, v_tile + lo.b + c0 * SROW * 2); /* dP = dO V^T */
#pragma unroll
            for (int nt = 0; nt < KC / 8; nt++)
#pragma unroll
                for (int i = 0; i < 4; i++) {
                    float sc = p[nt][i];
                    if (need_mask && !visible_at(d0 + (i >> 1) * 8 - c0 - nt * 8 - (i & 1), a)) sc = -INFINITY;
                    const float prob = exp2_ftz(fmaf(sc, a.scale_log2, i < 2 ? neg_ref_a : neg_ref_b));
                    p[nt][i] = prob * (dp[nt][i] - (i < 2 ? delta_a : delta_b)); /* dS */
                }
            uint32_t ds_frag[KC / 16][4];
            pack_a<KC / 16>(ds_frag, p);
            accumulate_pv<D, KC / 16>(dq_acc, ds_frag, k_tile + lo.t + c0 * SROW * 2); /* dQ += dS K */
        }
        __syncthreads();
    }

    if (a.dq16) { /* dq = scale dQ as below, then the inverse rotation of its pair (this lane holds elements 2i, 2i+1
                   * of the head: i = dt 4 + tq) and the bf16 rounding: the bits of xlkv_cuda_train_rope_to_bf16 */
        bf16 *d16 = a.dq16 + batch_row0 * a.dq16_ld + (size_t)h * D + 2 * tq;
#pragma unroll
        for (int r = 0; r < 2; r++) {
            const int t = r == 0 ? t_a : t_b;
            if (t >= a.seq) continue;
            const float *cr = a.rope_cos + (size_t)t * (D / 2) + tq, *sr = a.rope_sin + (size_t)t * (D / 2) + tq;
#pragma unroll
            for (int dt = 0; dt < D / 8; dt++) {
                const float x = dq_acc[dt][2 * r] * a.scale, y = dq_acc[dt][2 * r + 1] * a.scale;
                float rx, ry;
                xlkv_train::rope_pair(x, y, cr[dt * 4], -1.0f * sr[dt * 4], &rx, &ry);
                *reinterpret_cast<uint32_t *>(d16 + (size_t)t * a.dq16_ld + dt * 8) = pack_bf16x2(rx, ry);
            }
        }
        return;
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
__global__ void __launch_bounds__(THREADS, dkdv_min_ctas<D>())
    flash_backward_dkdv(float *dk, float *dv, const bf16 *dout, const float *ref_hm, const float *delta_hm,
                           const bf16 *q, const bf16 *k, const bf16 *v, flash_args a) {
    constexpr int SROW = smem_row<D>(), BQ = dkdv_tile_q<D>(), QC = bwd_chunk<D>() < BQ ? bwd_chunk<D>() : BQ;
    constexpr int Q_BYTES = tile_bytes<D>(BQ);
    extern __shared__ __align__(16) unsigned char smem_raw[];
    const unsigned sk_addr = shared_addr(smem_raw), sv_addr = sk_addr + tile_bytes<D>(TILE_K);
    const unsigned sq_addr = sv_addr + tile_bytes<D>(TILE_K), sdo_addr = sq_addr + 2 * Q_BYTES; /* [2][BQ] each */
    float *s_ref = reinterpret_cast<float *>(smem_raw + 2 * tile_bytes<D>(TILE_K) + 4 * Q_BYTES);
    float *s_delta = s_ref + 2 * BQ;

    const int key_tile = blockIdx.z; /* the first key tiles see the most queries: they start first (z varies slowest) */
    const int kvh = blockIdx.x, b = blockIdx.y;
    const int tid = threadIdx.x, lane = tid & 31, warp = tid >> 5;
    const size_t batch_row0 = (size_t)b * a.seq;
    const int k0 = key_tile * TILE_K, k_last = min(k0 + TILE_K, a.seq) - 1;
    const int t_first = k0 + a.mask_diagonal;
    const int t_last = a.window > 0 ? min(a.seq - 1, k_last + a.window - 1) : a.seq - 1;
    const int n_q = t_last < t_first ? 0 : (t_last - t_first + BQ) / BQ, n_steps = a.group * n_q;
    /* step -> (query head, query tile): one division per step, none per chunk */
    typedef tile_stream<D, BQ, false> q_stream;
    auto load_step = [&](int step, int buf) {
        const int load_h = kvh * a.group + step / n_q, load_q0 = t_first + (step % n_q) * BQ;
        const size_t tile_off =
            (batch_row0 + load_q0) * a.q_stride + (size_t)load_h * D + q_stream::thread_offset(a.q_stride);
        const int valid_rows = t_last + 1 - load_q0;
        q_stream::load(sq_addr + buf * Q_BYTES, q + tile_off, a.q_stride, valid_rows, q);
        q_stream::load(sdo_addr + buf * Q_BYTES, dout + tile_off, a.q_stride, valid_rows, dout);
        if (tid < BQ) {
            if (tid < valid_rows) {
                const size_t row = ((size_t)b * a.n_heads + load_h) * a.seq + load_q0 + tid;
                cp_async_4(s_ref + buf * BQ + tid, ref_hm + row, true);
                cp_async_4(s_delta + buf * BQ + tid, delta_hm + row, true);
            } else { /* probability exactly 0 (plain stores; the buffer is free and the barrier comes first) */
                s_ref[buf * BQ + tid] = INFINITY;
                s_delta[buf * BQ + tid] = 0.0f;
            }
        }
    };

    const lane_offsets lo = make_lane_offsets<D>(lane);
    const unsigned ka_addr = sk_addr + warp * tile_bytes<D>(16) + lo.a;
    const unsigned va_addr = sv_addr + warp * tile_bytes<D>(16) + lo.a;
    const int g = lane >> 2, tq = lane & 3;
    const int p_a = k0 + warp * 16 + g, p_b = p_a + 8;
    float dk_acc[D / 8][4], dv_acc[D / 8][4];
#pragma unroll
    for (int dt = 0; dt < D / 8; dt++)
#pragma unroll
        for (int i = 0; i < 4; i++) dk_acc[dt][i] = dv_acc[dt][i] = 0.0f;

    {
        typedef tile_stream<D, TILE_K, false> kv_stream;
        const size_t kv_off = (batch_row0 + k0) * a.kv_stride + (size_t)kvh * D + kv_stream::thread_offset(a.kv_stride);
        kv_stream::load(sk_addr, k + kv_off, a.kv_stride, a.seq - k0, k);
        kv_stream::load(sv_addr, v + kv_off, a.kv_stride, a.seq - k0, v);
    }
    if (n_steps > 0) load_step(0, 0);
    cp_async_commit();
    for (int step = 0; step < n_steps; step++) {
        const int buf = step & 1, q0 = t_first + (step % n_q) * BQ;
        if (step + 1 < n_steps) load_step(step + 1, buf ^ 1);
        cp_async_commit();
        cp_async_wait<1>();
        __syncthreads();
        const unsigned q_tile = sq_addr + buf * Q_BYTES, do_tile = sdo_addr + buf * Q_BYTES;
        const float *ref = s_ref + buf * BQ, *dlt = s_delta + buf * BQ;
        const bool need_mask = !tile_fully_visible(a, q0, q0 + BQ - 1, k0, k0 + TILE_K - 1);
#pragma unroll
        for (int c0 = 0; c0 < BQ; c0 += QC) { /* query chunks: same sums in the same order, fewer live registers */
            float p[QC / 8][4], dp[QC / 8][4];
            product_rows<D, QC / 8>(p, ka_addr, q_tile + lo.b + c0 * SROW * 2);   /* S^T = K Q^T */
            product_rows<D, QC / 8>(dp, va_addr, do_tile + lo.b + c0 * SROW * 2); /* dP^T = V dO^T */
#pragma unroll
            for (int nt = 0; nt < QC / 8; nt++) {
                const int col0 = c0 + nt * 8 + 2 * tq; /* this lane's queries col0, col0 + 1 */
                const float2 r2 = *reinterpret_cast<const float2 *>(ref + col0);
                const float2 d2 = *reinterpret_cast<const float2 *>(dlt + col0);
#pragma unroll
                for (int i = 0; i < 4; i++) {
                    float sc = p[nt][i];
                    if (need_mask && !visible_at(q0 + col0 + (i & 1) - (i < 2 ? p_a : p_b), a)) sc = -INFINITY;
                    const float prob = exp2_ftz(fmaf(sc, a.scale_log2, -((i & 1) ? r2.y : r2.x)));
                    p[nt][i] = prob;
                    dp[nt][i] = prob * (dp[nt][i] - ((i & 1) ? d2.y : d2.x)); /* dS^T */
                }
            }
            uint32_t frag[QC / 16][4];
            pack_a<QC / 16>(frag, p);
            accumulate_pv<D, QC / 16>(dv_acc, frag, do_tile + lo.t + c0 * SROW * 2); /* dV += P^T dO */
            pack_a<QC / 16>(frag, dp);
            accumulate_pv<D, QC / 16>(dk_acc, frag, q_tile + lo.t + c0 * SROW * 2); /* dK += dS^T Q */
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
            /* overwrite: 0 + value (-0 becomes +0, as when adding onto a cleared buffer) */
            if (dk) {
                float2 *dst = reinterpret_cast<float2 *>(dk + off + dt * 8);
                const float2 old = a.overwrite_dkdv ? make_float2(0.0f, 0.0f) : *dst;
                *dst = make_float2(old.x + dk_acc[dt][2 * r] * a.scale, old.y + dk_acc[dt][2 * r + 1] * a.scale);
            }
            if (dv) {
                float2 *dst = reinterpret_cast<float2 *>(dv + off + dt * 8);
                const float2 old = a.overwrite_dkdv ? make_float2(0.0f, 0.0f) : *dst;
                *dst = make_float2(old.x + dv_acc[dt][2 * r], old.y + dv_acc[dt][2 * r + 1]);
            }
        }
    }
}

/* ---- launchers ---------------------------------------------------------------------------------------------------- */

/* Once per kernel and process (the calls are idempotent, so a race only repeats them): the largest shared-memory
 * carveout (otherwise the driver may pick a smaller one, e.g. 168 KB on an H200, that fits fewer CTAs than the
 * registers allow), and the dynamic shared-memory limit raised when the kernel needs more than the default 48 KiB. */
template <typename Kernel> int prepare_kernel(Kernel kernel, size_t bytes, bool *done) {
    if (*done) return 0;
    cudaError_t err =
        cudaFuncSetAttribute(kernel, cudaFuncAttributePreferredSharedMemoryCarveout, cudaSharedmemCarveoutMaxShared);
    if (err == cudaSuccess && bytes > 48 * 1024)
        err = cudaFuncSetAttribute(kernel, cudaFuncAttributeMaxDynamicSharedMemorySize, (int)bytes);
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

flash_args make_args(const xlkv_cuda_train_attention_shape *s, const xlkv_cuda_train_flash_rope *rope) {
    flash_args a;
    a.rope_cos = rope ? rope->cos_table : NULL;
    a.rope_sin = rope ? rope->sin_table : NULL;
    a.dq16 = rope ? reinterpret_cast<bf16 *>(rope->dq16) : NULL;
    a.dq16_ld = rope ? rope->dq16_ld : 0;
    a.out = a.delta_in = NULL;
    a.delta_out = a.ref_hm = a.delta_hm = NULL;
    a.overwrite_dkdv = 0;
    a.seq = s->seq;
    a.n_heads = s->n_heads;
    a.group = s->n_heads / s->n_kv_heads;
    a.window = s->window;
    a.window_end = s->window > 0 ? s->window : INT_MAX;
    a.mask_diagonal = s->mask_diagonal ? 1 : 0;
    a.q_stride = (size_t)s->n_heads * s->head_dim;
    a.kv_stride = (size_t)s->n_kv_heads * s->head_dim;
    a.scale = 1.0f / sqrtf((float)s->head_dim);
    a.scale_log2 = a.scale * LOG2E;
    return a;
}

template <int D> constexpr size_t forward_smem() { return (size_t)(TILE_Q + 4 * TILE_K) * smem_row<D>() * 2; }
template <int D> constexpr size_t dq_smem() {
    return (size_t)(2 * TILE_Q + 4 * TILE_K) * smem_row<D>() * 2 + TILE_Q * sizeof(float); /* + the tile's delta */
}
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

/* The bf16 copy of k, rotated on the way when the call rotates (a.rope_cos), plain otherwise. */
int round_k_launch(bf16 *dst, const float *k, size_t n, const xlkv_cuda_train_attention_shape *s, const flash_args &a,
                   cudaStream_t stream) {
    if (!a.rope_cos) return round_launch(dst, k, n, stream);
    const size_t n8 = n / 8;
    const unsigned blocks = (unsigned)(n8 / 256 + 1 < 4096 ? n8 / 256 + 1 : 4096);
    round_rope_to_bf16<<<blocks, 256, 0, stream>>>(dst, k, n8, (int)a.kv_stride, a.seq, s->head_dim, a.rope_cos,
                                                   a.rope_sin);
    return (int)cudaGetLastError();
}

/* A rope argument is NULL (no rotation) or two 16-byte aligned tables. */
bool rope_ok(const xlkv_cuda_train_flash_rope *rope) {
    return !rope || (rope->cos_table && rope->sin_table && aligned16(rope->cos_table) && aligned16(rope->sin_table) &&
                     ((uintptr_t)rope->dq16 & 3u) == 0 && rope->dq16_ld % 2 == 0);
}

template <int D>
int forward_launch(float *out, float *lse, const float *q, const workspace_parts &w, const flash_args &a,
                      int batch, cudaStream_t stream) {
    static bool prepared = false;
    const int err = prepare_kernel(flash_forward<D>, forward_smem<D>(), &prepared);
    if (err) return err;
    const dim3 grid(a.n_heads, batch, (a.seq + TILE_Q - 1) / TILE_Q);
    flash_forward<D><<<grid, THREADS, forward_smem<D>(), stream>>>(out, lse, q, w.k, w.v, a);
    return (int)cudaGetLastError();
}

template <int D>
int backward_launch(float *dq, float *dk, float *dv, const float *lse, const float *q, const float *dout,
                    const workspace_parts &w, flash_args a, bool separate_delta, int batch, cudaStream_t stream) {
    static bool dq_prepared = false, dkdv_prepared = false;
    int err = prepare_kernel(flash_backward_dq<D>, dq_smem<D>(), &dq_prepared);
    if (err) return err;
    const dim3 dq_grid(a.n_heads, batch, (a.seq + TILE_Q - 1) / TILE_Q);
    const bool need_dkdv = dk || dv;
    if (!separate_delta && need_dkdv) { /* the dQ kernel writes the dK/dV kernel's head-major rows */
        a.ref_hm = w.ref;
        a.delta_hm = w.delta;
    }
    flash_backward_dq<D><<<dq_grid, THREADS, dq_smem<D>(), stream>>>(
        dq, dout, lse, q, w.k, w.v, need_dkdv ? w.q : NULL, need_dkdv ? w.dout : NULL, a);
    err = (int)cudaGetLastError();
    if (err || !need_dkdv) return err;
    if (separate_delta) {
        const size_t rows = w.row_elems;
        const unsigned blocks = (unsigned)(rows / 256 + 1 < 4096 ? rows / 256 + 1 : 4096);
        head_major_rows<<<blocks, 256, 0, stream>>>(w.ref, w.delta, lse, a.delta_in, a.seq, a.n_heads, rows);
        err = (int)cudaGetLastError();
        if (err) return err;
    }
    err = prepare_kernel(flash_backward_dkdv<D>, dkdv_smem<D>(), &dkdv_prepared);
    if (err) return err;
    const dim3 kv_grid(a.n_heads / a.group, batch, (a.seq + TILE_K - 1) / TILE_K);
    flash_backward_dkdv<D><<<kv_grid, THREADS, dkdv_smem<D>(), stream>>>(dk, dv, w.dout, w.ref, w.delta, w.q,
                                                                               w.k, w.v, a);
    return (int)cudaGetLastError();
}

/* The bf16 K / V the kernels stream: the workspace's or the caller's (kv16), rounded here unless kv16->ready. */
int stage_kv(workspace_parts *w, const float *k, const float *v, const xlkv_cuda_train_flash_kv16 *kv16,
             const xlkv_cuda_train_attention_shape *shape, const flash_args &a, cudaStream_t s) {
    if (kv16) {
        w->k = reinterpret_cast<bf16 *>(kv16->k16);
        w->v = reinterpret_cast<bf16 *>(kv16->v16);
        if (kv16->ready) return 0;
    }
    int err = round_k_launch(w->k, k, w->kv_elems, shape, a, s); /* K/V tiles are re-read by every query tile */
    if (!err) err = round_launch(w->v, v, w->kv_elems, s);
    return err;
}

bool kv16_ok(const xlkv_cuda_train_flash_kv16 *kv16) {
    return !kv16 || (kv16->k16 && kv16->v16 && aligned16(kv16->k16) && aligned16(kv16->v16));
}

} // namespace

extern "C" size_t xlkv_cuda_train_attention_flash_workspace_bytes(const xlkv_cuda_train_attention_shape *shape) {
    return shape_ok(shape) ? carve_workspace(NULL, shape).bytes : 0;
}

extern "C" bool xlkv_cuda_train_attention_flash_supported(const xlkv_cuda_train_attention_shape *shape) {
    return shape_ok(shape);
}

extern "C" int xlkv_cuda_train_attention_flash_forward_opts(float *out, float *lse, const float *q, const float *k,
                                                            const float *v, const xlkv_cuda_train_flash_rope *rope,
                                                            const xlkv_cuda_train_flash_kv16 *kv16,
                                                            const xlkv_cuda_train_attention_shape *shape,
                                                            void *workspace, void *stream) {
    if (!shape_ok(shape) || !aligned16(out) || !aligned16(q) || !aligned16(k) || !aligned16(v) || !lse || !workspace ||
        !aligned16(workspace) || !rope_ok(rope) || (rope && rope->dq16) || !kv16_ok(kv16))
        return (int)cudaErrorInvalidValue;
    const flash_args a = make_args(shape, rope);
    cudaStream_t s = (cudaStream_t)stream;
    workspace_parts w = carve_workspace(workspace, shape);
    const int err = stage_kv(&w, k, v, kv16, shape, a, s);
    if (err) return err;
    return shape->head_dim == 64 ? forward_launch<64>(out, lse, q, w, a, shape->batch, s)
                                 : forward_launch<128>(out, lse, q, w, a, shape->batch, s);
}

extern "C" int xlkv_cuda_train_attention_flash_forward_rope(float *out, float *lse, const float *q, const float *k,
                                                            const float *v, const xlkv_cuda_train_flash_rope *rope,
                                                            const xlkv_cuda_train_attention_shape *shape,
                                                            void *workspace, void *stream) {
    return xlkv_cuda_train_attention_flash_forward_opts(out, lse, q, k, v, rope, NULL, shape, workspace, stream);
}

extern "C" int xlkv_cuda_train_attention_flash_forward(float *out, float *lse, const float *q, const float *k,
                                                       const float *v, const xlkv_cuda_train_attention_shape *shape,
                                                       void *workspace, void *stream) {
    return xlkv_cuda_train_attention_flash_forward_rope(out, lse, q, k, v, NULL, shape, workspace, stream);
}

extern "C" int xlkv_cuda_train_attention_flash_backward_opts(float *dq, float *dk, float *dv, float *delta,
                                                             const float *dout, const float *out, const float *lse,
                                                             const float *q, const float *k, const float *v,
                                                             const xlkv_cuda_train_flash_rope *rope,
                                                             const xlkv_cuda_train_flash_backward_options *options,
                                                             const xlkv_cuda_train_attention_shape *shape,
                                                             void *workspace, void *stream) {
    const bool separate_delta = options && options->separate_delta;
    const bool dq_ok = rope && rope->dq16 ? shape && rope->dq16_ld >= (size_t)shape->n_heads * shape->head_dim
                                          : dq && aligned16(dq);
    if (!shape_ok(shape) || !dq_ok || !aligned16(dout) || !aligned16(q) || !aligned16(k) || !aligned16(v) ||
        !aligned16(dk) || !aligned16(dv) || (separate_delta && !delta) || !lse || !aligned16(out) || !out ||
        !workspace || !aligned16(workspace) || !rope_ok(rope) || !kv16_ok(options ? options->kv16 : NULL))
        return (int)cudaErrorInvalidValue;
    int err = 0;
    if (separate_delta) err = xlkv_cuda_train_attention_delta(delta, dout, out, shape, stream);
    if (err) return err;
    flash_args a = make_args(shape, rope);
    a.out = separate_delta ? NULL : out;
    a.delta_in = separate_delta ? delta : NULL;
    a.delta_out = separate_delta ? NULL : delta;
    a.overwrite_dkdv = options && options->overwrite_dkdv;
    cudaStream_t s = (cudaStream_t)stream;
    workspace_parts w = carve_workspace(workspace, shape);
    err = stage_kv(&w, k, v, options ? options->kv16 : NULL, shape, a, s); /* Q / dO copies: the dQ kernel's */
    if (err) return err;
    return shape->head_dim == 64 ? backward_launch<64>(dq, dk, dv, lse, q, dout, w, a, separate_delta, shape->batch, s)
                                 : backward_launch<128>(dq, dk, dv, lse, q, dout, w, a, separate_delta, shape->batch,
                                                        s);
}

extern "C" int xlkv_cuda_train_attention_flash_backward_rope(float *dq, float *dk, float *dv, float *delta,
                                                             const float *dout, const float *out, const float *lse,
                                                             const float *q, const float *k, const float *v,
                                                             const xlkv_cuda_train_flash_rope *rope,
                                                             const xlkv_cuda_train_attention_shape *shape,
                                                             void *workspace, void *stream) {
    return xlkv_cuda_train_attention_flash_backward_opts(dq, dk, dv, delta, dout, out, lse, q, k, v, rope, NULL, shape,
                                                         workspace, stream);
}

extern "C" int xlkv_cuda_train_attention_flash_backward(float *dq, float *dk, float *dv, float *delta,
                                                        const float *dout, const float *out, const float *lse,
                                                        const float *q, const float *k, const float *v,
                                                        const xlkv_cuda_train_attention_shape *shape, void *workspace,
                                                        void *stream) {
    return xlkv_cuda_train_attention_flash_backward_rope(dq, dk, dv, delta, dout, out, lse, q, k, v, NULL, shape,
                                                         workspace, stream);
}
