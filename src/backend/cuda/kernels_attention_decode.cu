/* backend/cuda/kernels_attention_decode: decode attention for a batch of single-query rows, split-K over the keys
 * (also fused with RoPE and the K/V write of the rows, below: what the engine runs for decode rows).
 *
 * Splits. Keys are cut in splits of split_size positions: the largest when the batch gives the GPU enough CTAs
 * (256 for the scalar kernels, whose split's scores sit in shared memory; 1024 for the tensor-core kernels, which
 * stream 64-key tiles, so a long split only costs registers: block size 1 caps it at 256, the block-table entries
 * split_blocks() holds), halved down to 32 (64 for the tensor-core kernels: a 32-key split would leave half of each
 * tile masked and double the CTAs and partials for nothing) while (batch x query-head groups x splits) stays under
 * ~1024 CTAs, so that batch 1 still spreads over the SMs. Large batches thus take few, long splits: each CTA pays its
 * prologue (block entries, the first tile's round trip) and its partial once per 1024 keys instead of per 256, and
 * CTAs of splits a row does not reach (the grid is sized for max_positions) are fewer. Measured on the H100
 * (bench_gpu_attention, 2026-11-26): batch 608 at context 1024 291.5 -> 262.2 us, at 2048 561.7 -> 499.1 us,
 * batch 2282 at 1024 1,064 -> 943 us; batches 1 and 64 unchanged. XLKV_DECODE_MAX_SPLIT=256 gives the old splits
 * (docs/CUDA.md has the engine's figures). The split size depends only on (batch, n_heads, max_positions, block
 * size, dtype and head shape), all fixed for a captured graph, never on the rows' lengths, so every grid below is
 * CUDA-graph safe. Pass 1 writes one partial (max, sum of exp(score - max),
 * unnormalized accumulator) per (row, query head, split) to the workspace; a split with no visible key writes
 * max = -inf. Pass 2 (combine): one CTA per (row, query head) rescales and sums the partials; a row with nothing
 * visible (masked diagonal at position 0, a window past everything, a padding row with seq < 0) gets zeros.
 *
 * Pass 1, tensor-core kernel (bf16 only; head_dim 64 or 128; G = n_heads / n_kv_heads <= 8; 16-byte aligned rows):
 * one CTA of 4 warps per (row, KV head, split), a single pass with an online softmax. The G query heads of the KV
 * head are the rows of an m16n8k16 A tile (rows >= G and 8..15 zero; Q fragments are loaded once from global memory
 * into registers). The split's keys stream through shared memory in tiles of 64 positions (K and V, cp.async 16-byte
 * chunks gathered through the block table, cached in shared memory for the split; rows past the last visible key
 * zero-filled, never read), double-buffered so tile j+1 loads while tile j computes. Warp w owns keys 16w .. 16w+15 of
 * each tile: S = Q K^T (2 n8 tiles), scale/mask/online softmax in fp32 (exp2, scale folded in) on row g of its
 * fragment, then O += P V with P taken from the S accumulators as bf16 A fragments (no shared-memory round trip).
 * Each warp keeps its own (m, l, O); at the end the four are merged in shared memory (reusing the K/V buffers) and
 * written as the split's partial (max converted from log2 to natural units, the combine's format). No score buffer,
 * one barrier pair per 64-key tile, 96 registers and 37 KB of shared memory per CTA at head_dim 64 (5 CTAs per SM).
 *
 * Pass 1, scalar kernels (fp32; bf16 of any other shape; also selectable with XLKV_CUDA_DECODE_SCALAR for tests and
 * benchmarks): the grouped kernel (head_dim 64/128, G in {1, 2, 4, 8}, aligned rows) has one CTA of 128 threads per
 * (row, KV head, split): scores into shared memory (8..32 lanes per K row with 16-byte loads, a shuffle reduction per
 * query head), a per-head softmax over the split, then P.V with every lane owning a 16-byte slice of V. Anything else
 * takes the generic kernel (one warp per (row, query head, split), scalar loads, head_dim <= 256). Same workspace.
 * (Measured on an H100, tinyllama, batch 608 at 768 positions: the grouped kernel reaches ~1 TB/s, shuffle/ALU bound.)
 *
 * Fused decode (xlkv_cuda_attention_decode_fused: bf16, the tensor-core shapes, any batch; what the engine runs for
 * decode rows): rope_kv_write, pass 1 and pass 2 in ONE launch over the same grid as the tensor-core pass 1, since
 * each kernel of a graph costs ~3-5 us of ramp and tail beside ~0.5 MB of KV at batch 1, and at large batches the
 * combine pass re-reads every partial after pass 1 (the last CTA of a (row, KV head) finds them in L2). It is
 * launched as a programmatic dependent of the qkv product (programmatic_attention in kernels_common.cuh;
 * XLKV_ATTN_PDL=0 or XLKV_GEMV=plain launch it normally, same bits), so a CTA (row, KV head, split)
 *   0. before it waits for that product, does what does not depend on it: decides its role (attend: a split holding
 *      a key the row sees; write: the split owning the row's position t, t / split_size clamped to the last split,
 *      in a layer with KV; zero-fill: split 0 of a row that sees nothing; CTAs with none stop here: most of them at
 *      batch 1, since the grid is sized for the longest context), loads its split's block-table entries and the
 *      RoPE table row of t, and issues its first K/V tile by cp.async, every key but the new row (positions < t, or
 *      row t of another layer's slot: all written by kernels that have completed). Then it lets the o product launch
 *      (that product waits for this kernel's completion before it reads anything) and waits for the qkv product;
 *   1. rotates its G query heads into shared memory when it attends (rope_pair, the formula of rope_kv_write: same
 *      bits; q in the qkv buffer stays unrotated, nothing after the attention reads it); the writer rotates and
 *      writes its KV head's K and V at t to the layer's own slot (write_slot; -1 for a layer without KV) and, when it
 *      reads that row itself (the layer reads the slot it writes and t is visible), also straight into its first
 *      tile's row (or a spare row when t lies in a later tile): pass 1 takes row t from shared memory, no fence, no
 *      round trip. Padding rows (seq < 0 or t < 0) write nothing;
 *   2. runs the split's pass 1 (mma_attend_split, the body of the tensor-core kernel, shared by both);
 *   3. fences its partial, counts itself on the (row, KV head) counter; the last of the visible splits to count
 *      stages their partials of the G heads into shared memory with every load in flight at once (one L2 round trip;
 *      from L2 directly when they do not fit: long contexts), combines them (combine_head, shared with
 *      decode_combine_kernel) and sets the counter back to 0: every launch leaves the counters zero, so a captured
 *      graph replays and one array serves every layer.
 * The result is bit-identical to rope_kv_write + the two launches (same rotated q bits, same pass 1, same combine
 * arithmetic in split order). Measured per launch in a graph at batch 1, context 512 (H100): 1.1 us for an empty
 * kernel, +1.6 us step 1, +2.6 us pass 1, +4.1 us the count and the combine from L2 before the staging (2026-11-26).
 * Launched as a programmatic dependent with step 0 ahead of the wait, the engine decodes 989-997 tokens/s against
 * 948-956 launched normally (H100, once every kernel of the step asks for the same shared-memory carveout: before
 * that, the programmatic launch was slower; docs/CUDA.md).
 *
 * Cost model (tinyllama, bf16: head_dim 64, 4 KV heads, G = 8): per row and layer, the visible context L is read
 * once: 2 (K, V) * L * 256 (kv_dim) * 2 bytes = 1 KiB per position, FLOPs 4 * L * 32 * 64 = 8 KFLOP per position
 * (8 FLOP per byte: memory-bound; target: near HBM bandwidth, ~3 TB/s on H100, e.g. batch 512 at L = 1024:
 * 512 MiB -> ~0.18 ms per layer; the tensor-core kernel computes 16-row tiles for G = 8, 2x the useful FLOPs, still
 * far under the mma peak). Partials: per (row, query head, split) 66 floats, small beside the KV bytes. */
#include <cstdlib>
#include <cstring>
#include <type_traits>

#include "backend/cuda/kernels_attention_common.cuh"
#include "backend/cuda/kernels_mma.cuh"

using namespace xlkv_cuda;

namespace {

constexpr int DECODE_SPLIT = 256; /* the largest split (shared-memory score buffer) */
constexpr int DECODE_MIN_SPLIT = 32;
constexpr long DECODE_TARGET_CTAS = 1024;
constexpr int DECODE_THREADS = 128;
constexpr int DECODE_WARPS = DECODE_THREADS / 32;
constexpr int COMBINE_THREADS = 64;

constexpr int DECODE_MMA_MIN_SPLIT = 64;   /* one key tile of the tensor-core kernel */
constexpr int DECODE_MMA_MAX_SPLIT = 1024; /* 16 tiles: see the design note (Splits) */

/* Split size for a launch: see the design note above. min_split: DECODE_MIN_SPLIT, or DECODE_MMA_MIN_SPLIT for shapes
 * the tensor-core kernel takes (the workspace is sized with DECODE_MIN_SPLIT: the most splits). */
int decode_split_size(int batch, int n_heads, int max_positions, int min_split = DECODE_MIN_SPLIT,
                      int max_split = DECODE_SPLIT) {
    const long groups = (long)batch * (n_heads >= 8 ? n_heads / 8 : 1);
    int split = max_split;
    while (split > min_split && groups * ((max_positions + split - 1) / split) < DECODE_TARGET_CTAS) split /= 2;
    return split;
}

int decode_splits(int batch, int n_heads, int max_positions, int min_split = DECODE_MIN_SPLIT,
                  int max_split = DECODE_SPLIT) {
    const int split = decode_split_size(batch, n_heads, max_positions, min_split, max_split);
    return max_positions <= 0 ? 1 : (max_positions + split - 1) / split;
}

/* The largest split of the tensor-core kernels: DECODE_MMA_MAX_SPLIT, or XLKV_DECODE_MAX_SPLIT from the environment
 * (read once; a power of two from 64 to 4096, for A/B measurements; anything else is ignored), halved until its
 * block-table entries fit split_blocks() (block size 1: 256 positions). */
int mma_max_split(int block_size) {
    static int from_env = -1;
    if (from_env < 0) {
        const char *v = getenv("XLKV_DECODE_MAX_SPLIT");
        const int n = v ? atoi(v) : 0;
        from_env = n >= DECODE_MMA_MIN_SPLIT && n <= 4096 && (n & (n - 1)) == 0 ? n : 0;
    }
    int split = from_env ? from_env : DECODE_MMA_MAX_SPLIT;
    while (split > DECODE_SPLIT && split / block_size + 1 > DECODE_SPLIT + 1) split /= 2;
    return split;
}

template <typename T> struct decode_params {
    const T *q;
    int q_stride;
    const int *row_seq;
    const int *row_pos;
    const T *pool;
    pool_view view;
    int n_heads, n_kv_heads, head_dim, window, mask_diagonal, read_slot, n_splits, split_size;
    float scale;
    float scale_log2; /* scale * log2(e): the tensor-core path works in exp2 */
    float *part_acc; /* [batch][n_heads][n_splits][head_dim] */
    float *part_max; /* [batch][n_heads][n_splits] */
    float *part_sum; /* [batch][n_heads][n_splits] */
};

/* The row's visible keys inside split `split`: [*lo, *hi], empty when *lo > *hi (also for padding rows). */
__device__ __forceinline__ void split_range(int seq, int t, int window, int mask_diagonal, int split, int n_splits,
                                            int split_size, int *lo, int *hi) {
    int first, last;
    visible_range(t, window, mask_diagonal, &first, &last);
    const int split_lo = split * split_size, split_hi = split_lo + split_size - 1;
    *lo = first > split_lo ? first : split_lo;
    *hi = last < split_hi ? last : split_hi;
    if (seq < 0 || t < 0 || split >= n_splits) *hi = *lo - 1;
}

/* ---- grouped pass 1: one CTA per (row, KV head, split), all G query heads of the KV head ---- */
template <typename T, int D, int G>
__global__ void __launch_bounds__(DECODE_THREADS) decode_grouped_kernel(decode_params<T> p) {
    constexpr int VEC = vec_width<T>::value;
    constexpr int LPR = D / VEC;  /* lanes per K/V row */
    constexpr int RPW = 32 / LPR; /* rows per warp per step */
    constexpr int ROWS_PER_STEP = DECODE_WARPS * RPW;
    constexpr int UNROLL = 4; /* K/V rows in flight per lane: bandwidth needs several 16-byte loads outstanding */
    static_assert(D % VEC == 0 && 32 % LPR == 0, "head_dim must split a warp evenly");

    __shared__ float s_q[G][D];
    __shared__ float s_p[G][DECODE_SPLIT];
    __shared__ float s_red[DECODE_WARPS][G][D];

    const int b = blockIdx.x, kv_head = blockIdx.y, split = blockIdx.z;
    const int tid = threadIdx.x, lane = tid & 31, warp = tid >> 5;
    const int sub = lane % LPR, row_group = lane / LPR;
    const int seq = p.row_seq[b], t = p.row_pos[b];
    int lo, hi;
    split_range(seq, t, p.window, p.mask_diagonal, split, p.n_splits, p.split_size, &lo, &hi);
    const size_t part0 = ((size_t)b * p.n_heads + (size_t)kv_head * G) * p.n_splits + split; /* head j: + j * n_splits */
    if (lo > hi) { /* uniform over the CTA */
        if (tid < G) {
            p.part_max[part0 + (size_t)tid * p.n_splits] = -INFINITY;
            p.part_sum[part0 + (size_t)tid * p.n_splits] = 0.0f;
        }
        return;
    }

    const T *q_row = p.q + (size_t)b * p.q_stride + (size_t)kv_head * G * D;
    for (int i = tid; i < G * D; i += DECODE_THREADS) s_q[i / D][i % D] = to_float<T>(q_row[i]);
    /* the split's block-table entries, read once: every K/V load below then needs no dependent table load */
    __shared__ int s_block[DECODE_SPLIT + 1];
    const int bs = p.view.block_size, first_block = lo / bs;
    const int *table = p.view.block_tables + (size_t)seq * (size_t)p.view.max_blocks_per_seq;
    for (int i = tid; i <= hi / bs - first_block; i += DECODE_THREADS) s_block[i] = table[first_block + i];
    __syncthreads();
    const size_t slot_stride = (size_t)bs * (size_t)p.view.kv_dim;                         /* one K or V plane */
    const size_t block_stride = (size_t)p.view.n_slots * 2 * slot_stride;                   /* one whole block */
    const size_t plane0 = (size_t)p.read_slot * 2 * slot_stride;                            /* this slot's keys */
    auto row_offset = [&](int pos, int kv) {
        return (size_t)s_block[pos / bs - first_block] * block_stride + plane0 + (size_t)kv * slot_stride +
               (size_t)(pos % bs) * (size_t)p.view.kv_dim;
    };

    const int kv_col = kv_head * D + sub * VEC;
    /* scores */
    {
        float q_reg[G][VEC];
#pragma unroll
        for (int j = 0; j < G; j++)
#pragma unroll
            for (int v = 0; v < VEC; v++) q_reg[j][v] = s_q[j][sub * VEC + v];
        for (int step0 = lo + warp * RPW; step0 <= hi; step0 += ROWS_PER_STEP * UNROLL) { /* warp-uniform */
            float k_reg[UNROLL][VEC];
#pragma unroll
            for (int u = 0; u < UNROLL; u++) {
                const int pos = step0 + row_group + u * ROWS_PER_STEP;
                if (pos <= hi)
                    load_vec<T>(p.pool + row_offset(pos, 0) + kv_col, k_reg[u]);
                else {
#pragma unroll
                    for (int v = 0; v < VEC; v++) k_reg[u][v] = 0.0f;
                }
            }
#pragma unroll
            for (int u = 0; u < UNROLL; u++) {
                const int pos = step0 + row_group + u * ROWS_PER_STEP;
#pragma unroll
                for (int j = 0; j < G; j++) {
                    float dot = 0.0f;
#pragma unroll
                    for (int v = 0; v < VEC; v++) dot += q_reg[j][v] * k_reg[u][v];
#pragma unroll
                    for (int off = LPR / 2; off > 0; off >>= 1) dot += __shfl_xor_sync(0xffffffffu, dot, off);
                    if (sub == 0 && pos <= hi) s_p[j][pos - lo] = dot * p.scale;
                }
            }
        }
    }
    __syncthreads();

    /* softmax over the split, one warp per query head */
    const int len = hi - lo + 1;
    for (int j = warp; j < G; j += DECODE_WARPS) {
        float m = -INFINITY;
        for (int i = lane; i < len; i += 32) m = fmaxf(m, s_p[j][i]);
        m = warp_max(m);
        float l = 0.0f;
        for (int i = lane; i < len; i += 32) {
            const float e = expf(s_p[j][i] - m);
            s_p[j][i] = e;
            l += e;
        }
        l = warp_sum(l);
        if (lane == 0) {
            p.part_max[part0 + (size_t)j * p.n_splits] = m;
            p.part_sum[part0 + (size_t)j * p.n_splits] = l;
        }
    }
    __syncthreads();

    /* P.V */
    float acc[G][VEC];
#pragma unroll
    for (int j = 0; j < G; j++)
#pragma unroll
        for (int v = 0; v < VEC; v++) acc[j][v] = 0.0f;
    for (int step0 = lo + warp * RPW; step0 <= hi; step0 += ROWS_PER_STEP * UNROLL) {
        float v_reg[UNROLL][VEC];
#pragma unroll
        for (int u = 0; u < UNROLL; u++) {
            const int pos = step0 + row_group + u * ROWS_PER_STEP;
            if (pos <= hi)
                load_vec<T>(p.pool + row_offset(pos, 1) + kv_col, v_reg[u]);
            else {
#pragma unroll
                for (int v = 0; v < VEC; v++) v_reg[u][v] = 0.0f;
            }
        }
#pragma unroll
        for (int u = 0; u < UNROLL; u++) {
            const int pos = step0 + row_group + u * ROWS_PER_STEP;
            if (pos <= hi) {
#pragma unroll
                for (int j = 0; j < G; j++) {
                    const float w = s_p[j][pos - lo];
#pragma unroll
                    for (int v = 0; v < VEC; v++) acc[j][v] += w * v_reg[u][v];
                }
            }
        }
    }
    /* reduce over the row groups of the warp, then over warps */
#pragma unroll
    for (int off = LPR; off < 32; off <<= 1)
#pragma unroll
        for (int j = 0; j < G; j++)
#pragma unroll
            for (int v = 0; v < VEC; v++) acc[j][v] += __shfl_xor_sync(0xffffffffu, acc[j][v], off);
    if (row_group == 0) {
#pragma unroll
        for (int j = 0; j < G; j++)
#pragma unroll
            for (int v = 0; v < VEC; v++) s_red[warp][j][sub * VEC + v] = acc[j][v];
    }
    __syncthreads();
    for (int i = tid; i < G * D; i += DECODE_THREADS) {
        const int j = i / D, d = i % D;
        float sum = 0.0f;
#pragma unroll
        for (int w = 0; w < DECODE_WARPS; w++) sum += s_red[w][j][d];
        p.part_acc[(part0 + (size_t)j * p.n_splits) * D + d] = sum;
    }
}

/* ---- tensor-core pass 1 (bf16): one CTA of 4 warps per (row, KV head, split), single pass ---- */
constexpr int MMA_TILE = 64;                     /* key positions per shared-memory tile, 16 per warp */
constexpr int MMA_WARP_KEYS = MMA_TILE / DECODE_WARPS;
constexpr int MMA_MAX_GROUP = 8;                 /* query heads per KV head: the rows g of the m16 tile */
template <int D> __host__ __device__ constexpr int mma_smem_row() { return D + 8; } /* padded: conflict-free ldmatrix */
template <int D> __host__ __device__ constexpr size_t mma_smem_bytes() {
    return (size_t)2 * 2 * MMA_TILE * mma_smem_row<D>() * sizeof(__nv_bfloat16); /* 2 stages x (K, V) */
}
static_assert(MMA_WARP_KEYS == 16, "each warp owns one k16 slice of the tile");

/* Where a split's partial goes: head j of the group gets acc[j * acc_head_stride + d], max[j * ms_head_stride] and
 * sum[j * ms_head_stride]. */
struct partial_out {
    float *acc, *max, *sum;
    size_t acc_head_stride, ms_head_stride;
};

/* The workspace slots of split `split` of row b, KV head kv_head (heads of the group n_splits apart). */
template <int D>
__device__ __forceinline__ partial_out workspace_partial(const decode_params<__nv_bfloat16> &p, int b, int kv_head,
                                                         int split) {
    const int G = p.n_heads / p.n_kv_heads;
    const size_t part0 = ((size_t)b * p.n_heads + (size_t)kv_head * G) * p.n_splits + split;
    return {p.part_acc + part0 * D, p.part_max + part0, p.part_sum + part0, (size_t)p.n_splits * D,
            (size_t)p.n_splits};
}

/* The split's block-table entries, in shared memory (one array per kernel, filled by load_split_blocks). */
__device__ __forceinline__ int *split_blocks() {
    __shared__ int s_block[DECODE_SPLIT + 1];
    return s_block;
}

/* Entries first_block .. of row `seq`'s block table covering positions lo .. hi into split_blocks(); no barrier. */
__device__ __forceinline__ void load_split_blocks(const pool_view &view, int seq, int lo, int hi) {
    int *s_block = split_blocks();
    const int bs = view.block_size, first_block = lo / bs;
    const int *table = view.block_tables + (size_t)seq * (size_t)view.max_blocks_per_seq;
    for (int i = threadIdx.x; i <= hi / bs - first_block; i += blockDim.x) s_block[i] = table[first_block + i];
}

/* The K/V rows of positions lo .. hi of row `seq`'s read slot, KV head kv_head, and the loads of one 64-key tile of
 * them into a stage of the double-buffered K/V area of mma_attend_split (split_blocks() must hold the split's block
 * entries). */
template <int D> struct split_kv_tiles {
    static constexpr int SROW = mma_smem_row<D>();
    static constexpr int CHUNKS = D / 8; /* 16-byte chunks per K/V row */
    const __nv_bfloat16 *pool, *plane_k;
    size_t slot_stride, block_stride;
    int lo, hi, bs, first_block, kv_dim;

    __device__ __forceinline__ split_kv_tiles(const decode_params<__nv_bfloat16> &p, int kv_head, int lo_, int hi_)
        : pool(p.pool), lo(lo_), hi(hi_), bs(p.view.block_size), first_block(lo_ / p.view.block_size),
          kv_dim(p.view.kv_dim) {
        slot_stride = (size_t)bs * (size_t)kv_dim;                 /* one K or V plane of a block */
        block_stride = (size_t)p.view.n_slots * 2 * slot_stride;   /* one whole block */
        plane_k = p.pool + (size_t)p.read_slot * 2 * slot_stride + (size_t)kv_head * D;
    }

    /* Tile `tile` (positions lo + 64 tile ..) into stage `buf` of s_k / s_v by cp.async (the caller commits); rows
     * past hi are zero-filled, never read. The row of position own_pos comes from own_kv (shared memory: K then V,
     * visible to the whole CTA) by plain copies, or, with own_kv null, is left for the caller to fill. */
    __device__ __forceinline__ void load(int tile, int buf, __nv_bfloat16 *s_k, __nv_bfloat16 *s_v, int own_pos,
                                         const __nv_bfloat16 *own_kv) const {
        const int *s_block = split_blocks();
        const int k0 = lo + tile * MMA_TILE;
        __nv_bfloat16 *dk = s_k + buf * MMA_TILE * SROW, *dv = s_v + buf * MMA_TILE * SROW;
#pragma unroll
        for (int c = threadIdx.x; c < MMA_TILE * CHUNKS; c += DECODE_THREADS) {
            const int row = c / CHUNKS, ch = c % CHUNKS;
            const int pos = k0 + row;
            const bool valid = pos <= hi;
            if (valid && pos == own_pos) { /* the new row */
                if (own_kv) {
                    *reinterpret_cast<uint4 *>(dk + row * SROW + ch * 8) =
                        *reinterpret_cast<const uint4 *>(own_kv + ch * 8);
                    *reinterpret_cast<uint4 *>(dv + row * SROW + ch * 8) =
                        *reinterpret_cast<const uint4 *>(own_kv + D + ch * 8);
                }
                continue;
            }
            const __nv_bfloat16 *src_k = pool;
            if (valid)
                src_k = plane_k + (size_t)s_block[pos / bs - first_block] * block_stride +
                        (size_t)(pos % bs) * (size_t)kv_dim + ch * 8;
            cp_async_16(dk + row * SROW + ch * 8, src_k, valid);
            cp_async_16(dv + row * SROW + ch * 8, valid ? src_k + slot_stride : pool, valid);
        }
    }
};

/* The K and V stages of mma_attend_split's shared memory (dynamic, from its start): [2][MMA_TILE][SROW] each. */
template <int D> __device__ __forceinline__ __nv_bfloat16 *kv_stage_k() {
    extern __shared__ __align__(16) unsigned char smem_raw[];
    return reinterpret_cast<__nv_bfloat16 *>(smem_raw);
}
template <int D> __device__ __forceinline__ __nv_bfloat16 *kv_stage_v() {
    return kv_stage_k<D>() + 2 * MMA_TILE * mma_smem_row<D>();
}

/* Split `split` of row b for KV head kv_head, the whole CTA (DECODE_THREADS threads, mma_smem_bytes<D>() of dynamic
 * shared memory from its start): writes the split's partial for the G query heads of the KV head to `out`. q_heads:
 * the G rotated query heads (bf16, head j at q_heads + j * D, 4-byte aligned; global or shared memory).
 * blocks_ready: split_blocks() already holds the split's entries (loaded by the caller before a barrier). own_pos >= 0:
 * the row of position own_pos comes from own_kv (shared memory, 16-byte aligned: K then V, D values each; the
 * fused kernels' new row, which they also write to the pool) instead of the pool. tile0_issued: the caller has
 * already issued tile 0 into stage 0 (split_kv_tiles::load) and committed it as one cp.async group, and has written
 * the new row into it itself when that row lies in tile 0 (the fused kernel, before and after its wait for the previous
 * kernel; a barrier separates that write from this call). Shared by decode_mma_kernel and the fused decode
 * kernels. Every thread returns; no barrier is pending at return. */
template <int D>
__device__ __forceinline__ void mma_attend_split(const decode_params<__nv_bfloat16> &p, const __nv_bfloat16 *q_heads,
                                                 int b, int kv_head, int split, const partial_out &out,
                                                 bool blocks_ready = false, int own_pos = -1,
                                                 const __nv_bfloat16 *own_kv = nullptr, bool tile0_issued = false) {
    constexpr int SROW = mma_smem_row<D>();
    static_assert((size_t)MMA_MAX_GROUP * D * sizeof(float) * DECODE_WARPS <= mma_smem_bytes<D>(),
                  "the warp merge reuses the K/V buffers");
    extern __shared__ __align__(16) unsigned char smem_raw[];
    __nv_bfloat16 *s_k = kv_stage_k<D>(), *s_v = kv_stage_v<D>();
    __shared__ float s_m[DECODE_WARPS][MMA_MAX_GROUP], s_l[DECODE_WARPS][MMA_MAX_GROUP];

    const int tid = threadIdx.x, lane = tid & 31, warp = tid >> 5;
    const int G = p.n_heads / p.n_kv_heads; /* 1 .. MMA_MAX_GROUP (checked by the launcher) */
    const int seq = p.row_seq[b], t = p.row_pos[b];
    int lo, hi;
    split_range(seq, t, p.window, p.mask_diagonal, split, p.n_splits, p.split_size, &lo, &hi);
    if (lo > hi) { /* uniform over the CTA */
        if (tid < G) {
            out.max[(size_t)tid * out.ms_head_stride] = -INFINITY;
            out.sum[(size_t)tid * out.ms_head_stride] = 0.0f;
        }
        return;
    }

    /* the split's block-table entries, read once */
    if (!blocks_ready) {
        load_split_blocks(p.view, seq, lo, hi);
        __syncthreads();
    }
    const split_kv_tiles<D> tiles(p, kv_head, lo, hi);
    const int n_tiles = (hi - lo + MMA_TILE) / MMA_TILE;

    if (!tile0_issued) {
        tiles.load(0, 0, s_k, s_v, own_pos, own_kv);
        cp_async_commit();
    }

    /* Q fragments straight from q_heads: row g of the m16 tile is query head g of the group (rows >= G and rows
     * 8..15 are zero), so a[1] = a[3] = 0 */
    const int g = lane >> 2, tq = lane & 3;
    const bool head_ok = g < G;
    uint32_t q_frag[D / 16][4];
    {
        const __nv_bfloat16 *q_row = q_heads + (size_t)(head_ok ? g : 0) * D;
#pragma unroll
        for (int kc = 0; kc < D / 16; kc++) {
            q_frag[kc][0] = head_ok ? *reinterpret_cast<const uint32_t *>(q_row + kc * 16 + 2 * tq) : 0u;
            q_frag[kc][1] = 0u;
            q_frag[kc][2] = head_ok ? *reinterpret_cast<const uint32_t *>(q_row + kc * 16 + 8 + 2 * tq) : 0u;
            q_frag[kc][3] = 0u;
        }
    }

    float o_acc[D / 8][4];
#pragma unroll
    for (int dt = 0; dt < D / 8; dt++)
#pragma unroll
        for (int i = 0; i < 4; i++) o_acc[dt][i] = 0.0f;
    float m_run = -INFINITY, l_run = 0.0f; /* row g, log2 units; l_run is this lane's share (columns 2tq, 2tq+1) */

    for (int tile = 0; tile < n_tiles; tile++) {
        const int buf = tile & 1;
        if (tile + 1 < n_tiles) tiles.load(tile + 1, buf ^ 1, s_k, s_v, own_pos, own_kv);
        cp_async_commit(); /* possibly empty: keeps the group count uniform */
        cp_async_wait<1>();
        __syncthreads();
        const int key0 = lo + tile * MMA_TILE + warp * MMA_WARP_KEYS; /* this warp's 16 keys */
        if (key0 <= hi) {                                              /* warp-uniform */
            const __nv_bfloat16 *tk = s_k + (buf * MMA_TILE + warp * MMA_WARP_KEYS) * SROW;
            const __nv_bfloat16 *tv = s_v + (buf * MMA_TILE + warp * MMA_WARP_KEYS) * SROW;

            /* S = Q K^T: 16 (heads) x 16 keys */
            float s[2][4];
#pragma unroll
            for (int nt = 0; nt < 2; nt++) {
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

            /* scale, mask keys past hi, online softmax of row g (rows 8..15 are padding: ignored) */
            float e[2][2], tile_max = -INFINITY;
#pragma unroll
            for (int nt = 0; nt < 2; nt++)
#pragma unroll
                for (int i = 0; i < 2; i++) {
                    const int key = key0 + nt * 8 + 2 * tq + i;
                    const float v = key <= hi ? s[nt][i] * p.scale_log2 : -INFINITY;
                    e[nt][i] = v;
                    tile_max = fmaxf(tile_max, v);
                }
            tile_max = fmaxf(tile_max, __shfl_xor_sync(0xffffffffu, tile_max, 1));
            tile_max = fmaxf(tile_max, __shfl_xor_sync(0xffffffffu, tile_max, 2));
            const float m_new = fmaxf(m_run, tile_max); /* finite: key0 <= hi, so key0 itself is visible */
            const float alpha = exp2f(m_run - m_new);   /* m_run = -inf -> 0 (l, o are 0 anyway) */
            m_run = m_new;
            float row_sum = 0.0f;
#pragma unroll
            for (int nt = 0; nt < 2; nt++)
#pragma unroll
                for (int i = 0; i < 2; i++) {
                    e[nt][i] = exp2f(e[nt][i] - m_new);
                    row_sum += e[nt][i];
                }
            l_run = l_run * alpha + row_sum;
#pragma unroll
            for (int dt = 0; dt < D / 8; dt++) {
                o_acc[dt][0] *= alpha;
                o_acc[dt][1] *= alpha;
            }

            /* O += P V: P (16 x 16 keys) from the S accumulators, rows 8..15 zero */
            uint32_t a[4];
            a[0] = pack_bf16x2(e[0][0], e[0][1]);
            a[1] = 0u;
            a[2] = pack_bf16x2(e[1][0], e[1][1]);
            a[3] = 0u;
#pragma unroll
            for (int dt = 0; dt < D / 8; dt += 2) {
                uint32_t vb[4];
                ldmatrix_x4_trans(vb, tv + (((lane >> 3) & 1) * 8 + (lane & 7)) * SROW + (dt + (lane >> 4)) * 8);
                mma_bf16_16816(o_acc[dt], a, vb[0], vb[1]);
                mma_bf16_16816(o_acc[dt + 1], a, vb[2], vb[3]);
            }
        }
        __syncthreads(); /* this stage is refilled by the next iteration's prefetch */
    }
    cp_async_wait<0>(); /* only empty groups remain; the K/V buffers become the merge area below */

    /* merge the 4 warps' (m, l, o) of each head; write the split's partial (max in natural-log units) */
    l_run += __shfl_xor_sync(0xffffffffu, l_run, 1);
    l_run += __shfl_xor_sync(0xffffffffu, l_run, 2);
    float *s_o = reinterpret_cast<float *>(smem_raw); /* [DECODE_WARPS][MMA_MAX_GROUP][D] */
    if (head_ok) {
        if (tq == 0) {
            s_m[warp][g] = m_run;
            s_l[warp][g] = l_run;
        }
        float *o_row = s_o + ((size_t)warp * MMA_MAX_GROUP + g) * D + 2 * tq;
#pragma unroll
        for (int dt = 0; dt < D / 8; dt++) {
            o_row[dt * 8] = o_acc[dt][0];
            o_row[dt * 8 + 1] = o_acc[dt][1];
        }
    }
    __syncthreads();
    for (int i = tid; i < G * D; i += DECODE_THREADS) {
        const int j = i / D, d = i % D;
        float m_all = -INFINITY;
#pragma unroll
        for (int w = 0; w < DECODE_WARPS; w++) m_all = fmaxf(m_all, s_m[w][j]); /* finite: lo is visible */
        float o = 0.0f, l = 0.0f;
#pragma unroll
        for (int w = 0; w < DECODE_WARPS; w++) {
            const float f = exp2f(s_m[w][j] - m_all); /* a warp that saw no key: -inf -> 0 */
            o += s_o[((size_t)w * MMA_MAX_GROUP + j) * D + d] * f;
            l += s_l[w][j] * f;
        }
        out.acc[(size_t)j * out.acc_head_stride + d] = o;
        if (d == 0) {
            out.max[(size_t)j * out.ms_head_stride] = m_all * 0.69314718055994531f; /* log2 -> natural units */
            out.sum[(size_t)j * out.ms_head_stride] = l;
        }
    }
}

template <int D> __global__ void __launch_bounds__(DECODE_THREADS) decode_mma_kernel(decode_params<__nv_bfloat16> p) {
    const int b = blockIdx.x, kv_head = blockIdx.y;
    const int G = p.n_heads / p.n_kv_heads;
    mma_attend_split<D>(p, p.q + (size_t)b * p.q_stride + (size_t)kv_head * G * D, b, kv_head, blockIdx.z,
                        workspace_partial<D>(p, b, kv_head, blockIdx.z));
}

/* ---- generic pass 1: one warp per (row, query head, split); grid (batch, ceil(n_heads / 4), n_splits) ---- */
template <typename T> __global__ void __launch_bounds__(DECODE_THREADS) decode_generic_kernel(decode_params<T> p) {
    __shared__ float s_q[DECODE_WARPS][GENERIC_MAX_HEAD_DIM];
    const int b = blockIdx.x, split = blockIdx.z;
    const int lane = threadIdx.x & 31, warp = threadIdx.x >> 5;
    const int h = blockIdx.y * DECODE_WARPS + warp;
    if (h >= p.n_heads) return; /* whole warp; no block barrier below */
    const int group = p.n_heads / p.n_kv_heads, kv_head = h / group;
    const int seq = p.row_seq[b], t = p.row_pos[b];
    int lo, hi;
    split_range(seq, t, p.window, p.mask_diagonal, split, p.n_splits, p.split_size, &lo, &hi);
    const size_t part = ((size_t)b * p.n_heads + h) * p.n_splits + split;
    if (lo > hi) {
        if (lane == 0) {
            p.part_max[part] = -INFINITY;
            p.part_sum[part] = 0.0f;
        }
        return;
    }
    const T *q_row = p.q + (size_t)b * p.q_stride + (size_t)h * p.head_dim;
    for (int d = lane; d < p.head_dim; d += 32) s_q[warp][d] = to_float<T>(q_row[d]);
    __syncwarp();
    float m, l, acc[8];
    warp_attend_range<T>(s_q[warp], p.pool, p.view, seq, p.read_slot, kv_head * p.head_dim, p.head_dim, lo, hi, p.scale,
                         &m, &l, acc);
    if (lane == 0) {
        p.part_max[part] = m;
        p.part_sum[part] = l;
    }
#pragma unroll
    for (int i = 0; i < 8; i++) {
        const int d = lane + 32 * i;
        if (d < p.head_dim) p.part_acc[part * p.head_dim + d] = acc[i];
    }
}

/* ---- pass 2: the combine of one (row, query head) ---- */
constexpr int COMBINE_MAX_PER_THREAD = 8; /* elements of a head per thread: head_dim <= 8 x the threads on the head */
static_assert(COMBINE_THREADS * COMBINE_MAX_PER_THREAD >= GENERIC_MAX_HEAD_DIM, "the combine kernel covers a head");

/* The splits that can hold a key the row sees: [*s_first, *s_last], empty (s_last < s_first) for a padding row or
 * nothing visible. Every other split wrote "nothing" (max -inf), so the combine skips them: the grid is sized for
 * max_positions (graph-safe), but a row at position t only needs ~t / split_size of them (at batch 1 and 2,304
 * positions the engine has 72 splits of 32, of which a row at 600 uses 19). */
__device__ __forceinline__ void visible_splits(int seq, int t, int window, int mask_diagonal, int n_splits,
                                               int split_size, int *s_first, int *s_last) {
    int first, last;
    visible_range(t, window, mask_diagonal, &first, &last);
    if (seq < 0 || t < 0 || last < first) {
        *s_first = 0, *s_last = -1;
        return;
    }
    *s_first = min(first / split_size, n_splits - 1);
    *s_last = min(last / split_size, n_splits - 1);
}

/* The partials of one query head in the workspace, read through L2 (__ldcg: the fused kernel combines partials other
 * CTAs of the same launch wrote): split s at part0 + s. */
struct workspace_partials {
    const float *acc, *max, *sum;
    size_t part0;
    int head_dim;
    __device__ __forceinline__ float max_of(int s) const { return __ldcg(max + part0 + s); }
    __device__ __forceinline__ float sum_of(int s) const { return __ldcg(sum + part0 + s); }
    __device__ __forceinline__ float acc_of(int s, int d) const { return __ldcg(acc + (part0 + s) * head_dim + d); }
};

/* out_row[0..head_dim) = the normalized sum of the partials of splits s_first .. s_last (zeros when none saw
 * anything); `parts` reads split s's max, sum and accumulator (workspace_partials, or staged_partials below). The
 * calling thread writes elements lane0 + k n_lanes (k < COMBINE_MAX_PER_THREAD; no barrier inside). One pass over the
 * splits after their max: each split's weight exp(m - m_all) is computed once and the thread's elements are loaded
 * together; both loops are unrolled so that several splits' loads are in flight (~0.2 us each from L2 when waited for
 * one by one). Every element sums in split order whoever computes it and wherever the partials are: same bits in
 * every kernel. */
template <typename T, typename Partials>
__device__ __forceinline__ void combine_head(T *out_row, const Partials &parts, int head_dim, int s_first, int s_last,
                                             int lane0, int n_lanes) {
    float m_all = -INFINITY;
#pragma unroll 8
    for (int s = s_first; s <= s_last; s++) m_all = fmaxf(m_all, parts.max_of(s));
    if (m_all == -INFINITY) { /* nothing visible */
        for (int d = lane0; d < head_dim; d += n_lanes) out_row[d] = from_float<T>(0.0f);
        return;
    }
    float l_all = 0.0f, o[COMBINE_MAX_PER_THREAD];
#pragma unroll
    for (int k = 0; k < COMBINE_MAX_PER_THREAD; k++) o[k] = 0.0f;
#pragma unroll 4
    for (int s = s_first; s <= s_last; s++) {
        const float m = parts.max_of(s);
        if (m == -INFINITY) continue; /* its accumulator was never written */
        const float w = expf(m - m_all);
        l_all += parts.sum_of(s) * w;
#pragma unroll
        for (int k = 0; k < COMBINE_MAX_PER_THREAD; k++) {
            const int d = lane0 + k * n_lanes;
            if (d < head_dim) o[k] += parts.acc_of(s, d) * w;
        }
    }
    const float inv = 1.0f / l_all;
#pragma unroll
    for (int k = 0; k < COMBINE_MAX_PER_THREAD; k++) {
        const int d = lane0 + k * n_lanes;
        if (d < head_dim) out_row[d] = from_float<T>(o[k] * inv);
    }
}

/* one CTA per (row, query head) */
template <typename T> __global__ void decode_combine_kernel(T *out, decode_params<T> p) {
    const int b = blockIdx.x, h = blockIdx.y;
    int s_first, s_last;
    visible_splits(p.row_seq[b], p.row_pos[b], p.window, p.mask_diagonal, p.n_splits, p.split_size, &s_first, &s_last);
    const workspace_partials parts = {p.part_acc, p.part_max, p.part_sum, ((size_t)b * p.n_heads + h) * p.n_splits,
                                      p.head_dim};
    combine_head<T>(out + ((size_t)b * p.n_heads + h) * p.head_dim, parts, p.head_dim, s_first, s_last, threadIdx.x,
                    blockDim.x);
}

template <typename T, int D, int G> void launch_grouped(const decode_params<T> &p, int batch, cudaStream_t stream) {
    const dim3 grid(batch, p.n_kv_heads, p.n_splits);
    decode_grouped_kernel<T, D, G><<<grid, DECODE_THREADS, 0, stream>>>(p);
}

template <typename T, int D> bool try_grouped(const decode_params<T> &p, int batch, int group, cudaStream_t stream) {
    switch (group) {
    case 1: launch_grouped<T, D, 1>(p, batch, stream); return true;
    case 2: launch_grouped<T, D, 2>(p, batch, stream); return true;
    case 4: launch_grouped<T, D, 4>(p, batch, stream); return true;
    case 8: launch_grouped<T, D, 8>(p, batch, stream); return true;
    default: return false;
    }
}

template <int D> int launch_mma(const decode_params<__nv_bfloat16> &p, int batch, cudaStream_t stream) {
    constexpr size_t smem = mma_smem_bytes<D>();
    static bool smem_limit_raised = false; /* once per process (benign race: the call is idempotent) */
    if (smem > 48 * 1024 && !smem_limit_raised) {
        const cudaError_t err =
            cudaFuncSetAttribute(decode_mma_kernel<D>, cudaFuncAttributeMaxDynamicSharedMemorySize, (int)smem);
        if (err != cudaSuccess) return (int)err;
        smem_limit_raised = true;
    }
    const dim3 grid(batch, p.n_kv_heads, p.n_splits);
    decode_mma_kernel<D><<<grid, DECODE_THREADS, smem, stream>>>(p);
    return launch_status();
}

/* The tensor-core path for bf16 only; any other element type never takes it. */
template <typename T> int try_mma(const decode_params<T> &, int, cudaStream_t, bool *launched) {
    *launched = false;
    return 0;
}
template <> int try_mma<__nv_bfloat16>(const decode_params<__nv_bfloat16> &p, int batch, cudaStream_t stream,
                                       bool *launched) {
    *launched = true;
    return p.head_dim == 64 ? launch_mma<64>(p, batch, stream) : launch_mma<128>(p, batch, stream);
}

/* The arguments every decode launch needs, consistent with one another. */
bool decode_args_ok(const xlkv_paged_kv *kv, const xlkv_attention_rule *rule, const float *workspace) {
    return kv && rule && workspace && rule->n_heads > 0 && rule->n_kv_heads > 0 &&
           rule->n_heads % rule->n_kv_heads == 0 && rule->head_dim > 0 &&
           kv->kv_dim == rule->n_kv_heads * rule->head_dim && rule->read_slot >= 0 && rule->read_slot < kv->n_slots &&
           kv->block_size > 0;
}

/* Checks the launch's arguments and fills the parameters shared by every decode kernel; tensor_cores: the launch runs
 * a tensor-core kernel (its split sizes). 0 or cudaErrorInvalidValue. */
template <typename T>
int make_decode_params(decode_params<T> *out, const void *q, int q_stride, int batch, const int *row_seq,
                       const int *row_pos, int max_positions, const xlkv_paged_kv *kv, const xlkv_attention_rule *rule,
                       float *workspace, bool tensor_cores) {
    if (!decode_args_ok(kv, rule, workspace)) return (int)cudaErrorInvalidValue;
    decode_params<T> p;
    p.q = (const T *)q;
    p.q_stride = q_stride;
    p.row_seq = row_seq;
    p.row_pos = row_pos;
    p.pool = (const T *)kv->pool;
    p.view = make_pool_view(kv);
    p.n_heads = rule->n_heads;
    p.n_kv_heads = rule->n_kv_heads;
    p.head_dim = rule->head_dim;
    p.window = rule->window;
    p.mask_diagonal = rule->mask_diagonal ? 1 : 0;
    p.read_slot = rule->read_slot;
    /* the tensor-core kernels stream 64-key tiles: splits of 64 .. DECODE_MMA_MAX_SPLIT keys; the scalar kernels
     * keep a split's scores in shared memory: 32 .. DECODE_SPLIT */
    const int min_split = tensor_cores ? DECODE_MMA_MIN_SPLIT : DECODE_MIN_SPLIT;
    const int max_split = tensor_cores ? mma_max_split(kv->block_size) : DECODE_SPLIT;
    p.split_size = decode_split_size(batch, rule->n_heads, max_positions, min_split, max_split);
    p.n_splits = decode_splits(batch, rule->n_heads, max_positions, min_split, max_split);
    p.scale = 1.0f / sqrtf((float)rule->head_dim);
    p.scale_log2 = p.scale * 1.4426950408889634f;
    const size_t n_parts = (size_t)batch * rule->n_heads * p.n_splits;
    p.part_acc = workspace;
    p.part_max = workspace + n_parts * rule->head_dim;
    p.part_sum = p.part_max + n_parts;
    if (p.n_splits > 65535 || rule->n_heads > 65535) return (int)cudaErrorInvalidValue;
    *out = p;
    return 0;
}

template <typename T>
int attention_decode(void *out, const void *q, int q_stride, int batch, const int *row_seq, const int *row_pos,
                     int max_positions, const xlkv_paged_kv *kv, const xlkv_attention_rule *rule, float *workspace,
                     xlkv_cuda_decode_kernel which, cudaStream_t stream) {
    if (batch <= 0) return 0;
    if (which != XLKV_CUDA_DECODE_AUTO && which != XLKV_CUDA_DECODE_SCALAR) return (int)cudaErrorInvalidValue;
    if (!decode_args_ok(kv, rule, workspace)) return (int)cudaErrorInvalidValue;
    const int group = rule->n_heads / rule->n_kv_heads;
    const bool aligned = vector_ok<T>(q, rule->head_dim, q_stride) && vector_ok<T>(kv->pool, kv->kv_dim, kv->kv_dim);
    const bool dim_ok = rule->head_dim == 64 || rule->head_dim == 128;
    const bool tensor_cores = std::is_same<T, __nv_bfloat16>::value && which == XLKV_CUDA_DECODE_AUTO && aligned &&
                              dim_ok && group <= MMA_MAX_GROUP;
    decode_params<T> p;
    const int bad = make_decode_params<T>(&p, q, q_stride, batch, row_seq, row_pos, max_positions, kv, rule, workspace,
                                          tensor_cores);
    if (bad) return bad;
    bool launched = false;
    int err = 0;
    if (tensor_cores) err = try_mma<T>(p, batch, stream, &launched);
    if (err) return err;
    if (!launched && aligned && rule->head_dim == 64) launched = try_grouped<T, 64>(p, batch, group, stream);
    else if (!launched && aligned && rule->head_dim == 128) launched = try_grouped<T, 128>(p, batch, group, stream);
    if (!launched) {
        if (rule->head_dim > GENERIC_MAX_HEAD_DIM) return (int)cudaErrorInvalidValue;
        const dim3 grid(batch, (rule->n_heads + DECODE_WARPS - 1) / DECODE_WARPS, p.n_splits);
        decode_generic_kernel<T><<<grid, DECODE_THREADS, 0, stream>>>(p);
    }
    err = launch_status();
    if (err) return err;
    const dim3 combine_grid(batch, rule->n_heads);
    decode_combine_kernel<T><<<combine_grid, COMBINE_THREADS, 0, stream>>>((T *)out, p);
    return launch_status();
}

/* ---- fused (bf16, tensor cores): RoPE + K/V write + pass 1 + combine, one launch (see the design note) ---- */
struct fused_extra {
    const __nv_bfloat16 *qkv; /* rows of q | k | v, query heads from column 0 (read only: q is rotated on the fly) */
    int qkv_stride;
    const float *cos_table, *sin_table;
    __nv_bfloat16 *pool; /* the same pool as decode_params::pool, writable */
    int write_slot;      /* -1: not a KV layer, nothing written */
    int k_col, v_col;
    __nv_bfloat16 *out;  /* [batch][n_heads * head_dim] */
    unsigned *counters;  /* [batch][n_kv_heads]: splits finished; 0 between launches */
};

/* Step 1 of the fused kernel for row b (seq >= 0, t >= 0), KV head kv_head, with cos_t / sin_t the RoPE table rows of
 * position t: with rotate_q, RoPE on the group's G query heads into s_q (rope_pair, the formula of rope_kv_write: same
 * bits); with write_row, K (rotated) and V of position t into the layer's write slot of the pool and, when own_k is set,
 * into own_k / own_v too (shared memory: the CTA's own pass 1 then takes that row from there, no global round trip).
 * No barrier inside. */
template <int D>
__device__ __forceinline__ void rope_and_write_row(const decode_params<__nv_bfloat16> &p, const fused_extra &f, int b,
                                                   int kv_head, int seq, int t, const float *cos_t, const float *sin_t,
                                                   bool rotate_q, bool write_row, __nv_bfloat16 *s_q,
                                                   __nv_bfloat16 *own_k, __nv_bfloat16 *own_v) {
    constexpr int HALF = D / 2;
    const int G = p.n_heads / p.n_kv_heads;
    const __nv_bfloat16 *row = f.qkv + (size_t)b * f.qkv_stride;
    if (rotate_q) {
        const __nv_bfloat16 *q_src = row + (size_t)kv_head * G * D;
        for (int idx = threadIdx.x; idx < G * HALF; idx += blockDim.x) {
            const int j = idx / HALF, i = idx % HALF;
            rope_pair<__nv_bfloat16>(q_src + j * D + 2 * i, cos_t[i], sin_t[i], s_q + j * D + 2 * i);
        }
    }
    if (write_row) {
        __nv_bfloat16 *k_dst = f.pool + pool_row_offset(p.view, seq, t, f.write_slot, 0) + (size_t)kv_head * D;
        __nv_bfloat16 *v_dst = f.pool + pool_row_offset(p.view, seq, t, f.write_slot, 1) + (size_t)kv_head * D;
        const __nv_bfloat16 *k_src = row + f.k_col + (size_t)kv_head * D;
        const __nv_bfloat16 *v_src = row + f.v_col + (size_t)kv_head * D;
        for (int i = threadIdx.x; i < HALF; i += blockDim.x) {
            rope_pair<__nv_bfloat16>(k_src + 2 * i, cos_t[i], sin_t[i], k_dst + 2 * i);
            if (own_k) rope_pair<__nv_bfloat16>(k_src + 2 * i, cos_t[i], sin_t[i], own_k + 2 * i);
        }
        for (int d = threadIdx.x; d < D; d += blockDim.x) {
            v_dst[d] = v_src[d];
            if (own_k) own_v[d] = v_src[d];
        }
    }
}

/* Threads per head in the last step's combine: all G <= 8 heads at once. */
template <int D> __host__ __device__ constexpr int combine_lanes() { return D / COMBINE_MAX_PER_THREAD; }
static_assert(64 / COMBINE_MAX_PER_THREAD * MMA_MAX_GROUP <= DECODE_THREADS &&
                  128 / COMBINE_MAX_PER_THREAD * MMA_MAX_GROUP <= DECODE_THREADS,
              "one pass over the heads");

/* Partials of head j of a group staged in shared memory by stage_group_partials: split s at index s - s_first. */
struct staged_partials {
    const float *acc, *max, *sum;
    int s_first, n_visible, head, head_dim;
    __device__ __forceinline__ int at(int s) const { return head * n_visible + (s - s_first); }
    __device__ __forceinline__ float max_of(int s) const { return max[at(s)]; }
    __device__ __forceinline__ float sum_of(int s) const { return sum[at(s)]; }
    __device__ __forceinline__ float acc_of(int s, int d) const { return acc[(size_t)at(s) * head_dim + d]; }
};

/* Whether the partials of a group's visible splits fit the K/V area of the fused kernel's shared memory. */
template <int D> __device__ __forceinline__ bool group_partials_fit(int G, int n_visible) {
    return (size_t)G * n_visible * (D + 2) * sizeof(float) <= mma_smem_bytes<D>();
}

/* The last CTA's staging: the partials of splits s_first .. s_first + n_visible - 1 of the G heads from head h0 on
 * (written by other CTAs, read through L2) into the K/V area of shared memory, every load issued before any is
 * waited for (one round trip instead of one per unrolled group of splits). Ends with a barrier. */
template <int D>
__device__ __forceinline__ void stage_group_partials(const decode_params<__nv_bfloat16> &p, size_t h0, int G,
                                                     int s_first, int n_visible, float *st_acc, float *st_max,
                                                     float *st_sum) {
    constexpr int CHUNKS = D / 4; /* 16-byte pieces of an accumulator */
    for (int c = threadIdx.x; c < G * n_visible * CHUNKS; c += blockDim.x) {
        const int i = c / CHUNKS, ch = c % CHUNKS, j = i / n_visible, s = s_first + i % n_visible;
        cp_async_16(st_acc + (size_t)i * D + ch * 4, p.part_acc + ((h0 + j) * p.n_splits + s) * D + ch * 4, true);
    }
    cp_async_commit();
    for (int i = threadIdx.x; i < G * n_visible; i += blockDim.x) {
        const size_t part = (h0 + i / n_visible) * p.n_splits + s_first + i % n_visible;
        st_max[i] = __ldcg(p.part_max + part);
        st_sum[i] = __ldcg(p.part_sum + part);
    }
    cp_async_wait<0>();
    __syncthreads();
}

/* Grid (row, KV head, split). Each CTA: 0. before it waits for the previous kernel (the qkv product; at once when
 * launched normally), what does not depend on it: the row's position, the split's block-table entries, the RoPE table
 * row and, for a split the row sees, its first K/V tile (every key but the new row: earlier positions were written by
 * kernels that have completed); 1. RoPE and the new row (rope_and_write_row); then, for the row's visible splits
 * only, 2. the split's partial (mma_attend_split, the new row from shared memory); 3. a count on the (row, KV head)
 * counter: the last CTA combines the G heads and re-arms it. */
template <int D>
__global__ void __launch_bounds__(DECODE_THREADS) decode_fused_kernel(decode_params<__nv_bfloat16> p, fused_extra f) {
    constexpr int HALF = D / 2;
    constexpr int SROW = mma_smem_row<D>();
    __shared__ __align__(16) __nv_bfloat16 s_q[MMA_MAX_GROUP * D];
    __shared__ __align__(16) __nv_bfloat16 s_own[2 * D];
    __shared__ float s_cos[HALF], s_sin[HALF];
    __shared__ int s_last;
    extern __shared__ __align__(16) unsigned char smem_raw[];
    const int b = blockIdx.x, kv_head = blockIdx.y, split = blockIdx.z, tid = threadIdx.x;
    const int G = p.n_heads / p.n_kv_heads;
    /* The o product, launched as a programmatic dependent (programmatic_launches in kernels_common.cuh), may start
     * now: its CTAs stream their weights beside this launch's few CTAs and wait for this kernel's completion before
     * they read its output. (Measured on the H100: triggering it here rather than after the wait below gave 997
     * against 989 tokens/s for the standard map, 986 against 992 for cla:2, docs/CUDA.md.) */
    allow_next_kernel();
    const int seq = p.row_seq[b], t = p.row_pos[b];

    /* 0. who this CTA is for the row: a split with no visible key needs no query and no tiles; the owner of position
     * t writes its K/V head to the pool and, when this split reads that row, keeps it for pass 1 */
    int lo, hi;
    split_range(seq, t, p.window, p.mask_diagonal, split, p.n_splits, p.split_size, &lo, &hi);
    const bool live = seq >= 0 && t >= 0; /* a padding row writes nothing and its partials say "nothing" */
    const bool writes = live && f.write_slot >= 0 && split == min(t / p.split_size, p.n_splits - 1);
    const bool own = writes && f.write_slot == p.read_slot && t >= lo && t <= hi;
    int s_first, s_final;
    visible_splits(seq, t, p.window, p.mask_diagonal, p.n_splits, p.split_size, &s_first, &s_final);
    const int n_visible = s_final - s_first + 1;
    const bool attends = n_visible > 0 && split >= s_first && split <= s_final; /* counts, even with lo > hi */
    const bool zero_fills = n_visible <= 0 && split == 0; /* a row that sees nothing gets its zeros from split 0 */
    if (!attends && !writes && !zero_fills) return; /* most CTAs at batch 1: the grid is sized for n_ctx */
    if (attends && lo <= hi) load_split_blocks(p.view, seq, lo, hi);
    if (live && tid < HALF) {
        s_cos[tid] = f.cos_table[(size_t)t * HALF + tid];
        s_sin[tid] = f.sin_table[(size_t)t * HALF + tid];
    }
    __syncthreads(); /* block entries and the RoPE row visible to the whole CTA */
    __nv_bfloat16 *s_k = kv_stage_k<D>(), *s_v = kv_stage_v<D>();
    const bool own_in_first_tile = own && t - lo < MMA_TILE;
    if (attends && lo <= hi) {
        const split_kv_tiles<D> tiles(p, kv_head, lo, hi);
        tiles.load(0, 0, s_k, s_v, own ? t : -1, nullptr); /* the new row is filled in step 1 */
        cp_async_commit();
    }

    /* launched as a programmatic dependent of the qkv product (the default), this kernel ran the above beside that
     * product's last CTAs; the qkv buffer is read from here on */
    wait_for_previous_kernel();
    const size_t h0 = (size_t)b * p.n_heads + (size_t)kv_head * G;
    if (zero_fills)
        for (int i = tid; i < G * D; i += blockDim.x) f.out[h0 * D + i] = __float2bfloat16(0.0f);

    /* 1. RoPE on the queries, the new row to the pool and, for its owner, into pass 1's first tile (or s_own when it
     * lies in a later tile of the split) */
    __nv_bfloat16 *own_k = nullptr, *own_v = nullptr;
    if (own) {
        own_k = own_in_first_tile ? s_k + (t - lo) * SROW : s_own;
        own_v = own_in_first_tile ? s_v + (t - lo) * SROW : s_own + D;
    }
    if (live) rope_and_write_row<D>(p, f, b, kv_head, seq, t, s_cos, s_sin, attends, writes, s_q, own_k, own_v);
    if (!attends) return;
    __syncthreads(); /* queries and the new row visible to the whole CTA before pass 1 */

    /* 2. the split's partial */
    mma_attend_split<D>(p, s_q, b, kv_head, split, workspace_partial<D>(p, b, kv_head, split), true, own ? t : -1,
                        own_in_first_tile ? nullptr : s_own, true);

    /* 3. the last CTA of (row, KV head) to finish combines the G heads and re-arms the counter */
    __threadfence(); /* this CTA's partial is visible device-wide before its count */
    __syncthreads();
    unsigned *counter = f.counters + (size_t)b * p.n_kv_heads + kv_head;
    if (tid == 0) s_last = atomicAdd(counter, 1u) == (unsigned)(n_visible - 1);
    __syncthreads();
    if (!s_last) return;
    __threadfence(); /* every other CTA's partial is visible: they counted after their fence */
    constexpr int LANES = combine_lanes<D>();
    const int j = tid / LANES;
    if (group_partials_fit<D>(G, n_visible)) { /* uniform over the CTA */
        float *st_acc = reinterpret_cast<float *>(smem_raw), *st_max = st_acc + (size_t)G * n_visible * D;
        float *st_sum = st_max + G * n_visible;
        stage_group_partials<D>(p, h0, G, s_first, n_visible, st_acc, st_max, st_sum);
        if (j < G) {
            const staged_partials parts = {st_acc, st_max, st_sum, s_first, n_visible, j, D};
            combine_head<__nv_bfloat16>(f.out + (h0 + j) * D, parts, D, s_first, s_final, tid % LANES, LANES);
        }
    } else if (j < G) { /* many splits (long contexts): straight from L2 */
        const workspace_partials parts = {p.part_acc, p.part_max, p.part_sum, (h0 + j) * p.n_splits, D};
        combine_head<__nv_bfloat16>(f.out + (h0 + j) * D, parts, D, s_first, s_final, tid % LANES, LANES);
    }
    if (tid == 0) *counter = 0u; /* every visible split has counted: safe to re-arm for the next launch / replay */
}

template <int D> int launch_fused(const decode_params<__nv_bfloat16> &p, const fused_extra &f, int batch,
                                  cudaStream_t stream) {
    constexpr size_t smem = mma_smem_bytes<D>();
    static bool smem_limit_raised = false; /* as launch_mma */
    if (smem > 48 * 1024 && !smem_limit_raised) {
        const cudaError_t err =
            cudaFuncSetAttribute(decode_fused_kernel<D>, cudaFuncAttributeMaxDynamicSharedMemorySize, (int)smem);
        if (err != cudaSuccess) return (int)err;
        smem_limit_raised = true;
    }
    static bool carveout_set = false; /* once per instantiation */
    if (!carveout_set) {
        prefer_shared_carveout(decode_fused_kernel<D>);
        carveout_set = true;
    }
    const dim3 grid(batch, p.n_kv_heads, p.n_splits);
    if (programmatic_attention()) {
        cudaLaunchAttribute attribute = {};
        attribute.id = cudaLaunchAttributeProgrammaticStreamSerialization;
        attribute.val.programmaticStreamSerializationAllowed = 1;
        return launch_with_attribute(attribute, decode_fused_kernel<D>, grid, DECODE_THREADS, smem, stream, p, f);
    }
    decode_fused_kernel<D><<<grid, DECODE_THREADS, smem, stream>>>(p, f);
    return launch_status();
}

bool fused_shape_ok(int batch, const xlkv_attention_rule *rule, const xlkv_paged_kv *kv) {
    return batch >= 1 && rule && kv && rule->n_heads > 0 &&
           rule->n_kv_heads > 0 && rule->n_heads % rule->n_kv_heads == 0 &&
           rule->n_heads / rule->n_kv_heads <= MMA_MAX_GROUP && (rule->head_dim == 64 || rule->head_dim == 128) &&
           kv->kv_dim == rule->n_kv_heads * rule->head_dim &&
           vector_ok<__nv_bfloat16>(kv->pool, kv->kv_dim, kv->kv_dim);
}

} // namespace

extern "C" {

int xlkv_cuda_attention_decode_fused_supported(int batch, const xlkv_attention_rule *rule, const xlkv_paged_kv *kv,
                                               xlkv_dtype dt) {
    return dt == XLKV_DTYPE_BF16 && fused_shape_ok(batch, rule, kv);
}

size_t xlkv_cuda_attention_decode_fused_counters(int batch, int n_kv_heads) {
    return batch > 0 && n_kv_heads > 0 ? (size_t)batch * (size_t)n_kv_heads : 0;
}

int xlkv_cuda_attention_decode_fused(void *out, const void *qkv, int qkv_stride, int batch, const int *row_seq,
                                     const int *row_pos, int max_positions, const xlkv_paged_kv *kv,
                                     const xlkv_attention_rule *rule, const xlkv_cuda_decode_rope_kv *rope_kv,
                                     float *workspace, unsigned *counters, xlkv_dtype dt, void *stream) {
    if (batch <= 0) return 0;
    if (dt != XLKV_DTYPE_BF16 || !fused_shape_ok(batch, rule, kv)) return (int)cudaErrorNotSupported;
    if (!out || !qkv || !row_seq || !row_pos || !rope_kv || !counters || !rope_kv->cos_table || !rope_kv->sin_table ||
        qkv_stride < rule->n_heads * rule->head_dim || rope_kv->write_slot < -1 || rope_kv->write_slot >= kv->n_slots)
        return (int)cudaErrorInvalidValue;
    const bool kv_columns_ok = rope_kv->k_col >= 0 && rope_kv->v_col >= 0 &&
                               rope_kv->k_col + kv->kv_dim <= qkv_stride && rope_kv->v_col + kv->kv_dim <= qkv_stride;
    if (rope_kv->write_slot >= 0 && !kv_columns_ok) return (int)cudaErrorInvalidValue;
    decode_params<__nv_bfloat16> p;
    const int bad = make_decode_params<__nv_bfloat16>(&p, qkv, qkv_stride, batch, row_seq, row_pos, max_positions, kv,
                                                      rule, workspace, true);
    if (bad) return bad;
    fused_extra f;
    f.qkv = (const __nv_bfloat16 *)qkv;
    f.qkv_stride = qkv_stride;
    f.cos_table = rope_kv->cos_table;
    f.sin_table = rope_kv->sin_table;
    f.pool = (__nv_bfloat16 *)kv->pool;
    f.write_slot = rope_kv->write_slot;
    f.k_col = rope_kv->k_col;
    f.v_col = rope_kv->v_col;
    f.out = (__nv_bfloat16 *)out;
    f.counters = counters;
    return rule->head_dim == 64 ? launch_fused<64>(p, f, batch, (cudaStream_t)stream)
                                : launch_fused<128>(p, f, batch, (cudaStream_t)stream);
}


size_t xlkv_cuda_attention_decode_workspace(int batch, int n_heads, int head_dim, int max_positions) {
    if (batch <= 0 || n_heads <= 0 || head_dim <= 0) return 0;
    /* a launch may use fewer rows than the workspace was sized for, and fewer rows can mean more splits: size for the
     * largest over every batch up to `batch` */
    size_t parts = 0;
    for (int b = 1; b <= batch; b++) {
        const size_t n = (size_t)b * (size_t)n_heads * (size_t)decode_splits(b, n_heads, max_positions);
        if (n > parts) parts = n;
    }
    return parts * ((size_t)head_dim + 2);
}

int xlkv_cuda_attention_decode_with(void *out, const void *q, int q_stride, int batch, const int *row_seq,
                                    const int *row_pos, int max_positions, const xlkv_paged_kv *kv,
                                    const xlkv_attention_rule *rule, float *workspace, xlkv_dtype dt,
                                    xlkv_cuda_decode_kernel which, void *stream) {
    XLKV_DISPATCH_DTYPE(dt, attention_decode, out, q, q_stride, batch, row_seq, row_pos, max_positions, kv, rule,
                        workspace, which, (cudaStream_t)stream);
}

int xlkv_cuda_attention_decode(void *out, const void *q, int q_stride, int batch, const int *row_seq,
                               const int *row_pos, int max_positions, const xlkv_paged_kv *kv,
                               const xlkv_attention_rule *rule, float *workspace, xlkv_dtype dt, void *stream) {
    return xlkv_cuda_attention_decode_with(out, q, q_stride, batch, row_seq, row_pos, max_positions, kv, rule,
                                           workspace, dt, XLKV_CUDA_DECODE_AUTO, stream);
}

} // extern "C"
