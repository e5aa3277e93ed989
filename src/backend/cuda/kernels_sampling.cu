/* backend/cuda/kernels_sampling: token selection from fp32 logits, one CTA of 256 threads per row.
 *
 * argmax: strided scan + block reduction, ties -> lowest index (as the CPU sampler's argmax).
 * sample: repetition penalty over the row's history window (each distinct token once, as infer/sampler.c), then
 * greedy (temperature 0) or: top-K candidates by value (K = top_k, or XLKV_CUDA_MAX_CANDIDATES when top_k is 0 or
 * larger), found with a 32-step radix search for the K-th largest ordered key (a block-wide count per step), gathered
 * (ties at the threshold: lowest indices) and bitonic-sorted by (value desc, index asc); softmax of logit/temperature
 * over them, the top-p prefix, and a draw u from Philox keyed by (seed, subsequence = step): the same (seed, step)
 * draws the same token whatever the batch position.
 * sample_split (small batches): the row is cut into XLKV_CUDA_SAMPLE_CHUNK-element chunks, one CTA each, which apply
 * the penalty to the history tokens inside their chunk and write the chunk's (value, index) maximum to a workspace;
 * a second launch, one CTA per row, reduces the chunks in the same order (value desc, index asc: the result is the
 * full-row argmax) or, for a sampling row, runs the path above on the already penalized row. Both launch as
 * programmatic dependents of the kernel before them (programmatic_launches in kernels_common.cuh; they wait for it
 * before reading anything), so their launch overlaps the logits product's tail at batch 1. */
#include <curand_kernel.h>
#include <limits.h>

#include "backend/cuda/kernels_common.cuh"

using namespace xlkv_cuda;

namespace {

constexpr int SAMPLE_THREADS = 256;
static_assert(SAMPLE_THREADS == XLKV_CUDA_MAX_CANDIDATES, "the bitonic sort gives one candidate to each thread");

__device__ __forceinline__ void keep_better(float v, int i, float *best_v, int *best_i) {
    if (v > *best_v || (v == *best_v && i < *best_i)) {
        *best_v = v;
        *best_i = i;
    }
}

/* Index of the largest of x[0..n) (lowest index on ties; 0 when every value is NaN or -inf), in every thread. */
__device__ int block_argmax(const float *x, int n) {
    __shared__ float s_v[32];
    __shared__ int s_i[32];
    const int lane = threadIdx.x & 31, warp = threadIdx.x >> 5, n_warps = blockDim.x >> 5;
    float best_v = -INFINITY;
    int best_i = INT_MAX;
    for (int i = threadIdx.x; i < n; i += blockDim.x) keep_better(x[i], i, &best_v, &best_i);
#pragma unroll
    for (int off = 16; off > 0; off >>= 1) {
        const float ov = __shfl_xor_sync(0xffffffffu, best_v, off);
        const int oi = __shfl_xor_sync(0xffffffffu, best_i, off);
        keep_better(ov, oi, &best_v, &best_i);
    }
    __syncthreads();
    if (lane == 0) {
        s_v[warp] = best_v;
        s_i[warp] = best_i;
    }
    __syncthreads();
    best_v = -INFINITY;
    best_i = INT_MAX;
    for (int w = 0; w < n_warps; w++) keep_better(s_v[w], s_i[w], &best_v, &best_i);
    return best_i == INT_MAX ? 0 : best_i;
}

__global__ void __launch_bounds__(SAMPLE_THREADS) argmax_kernel(int *out, const float *logits, int vocab) {
    const int idx = block_argmax(logits + (size_t)blockIdx.x * vocab, vocab);
    if (threadIdx.x == 0) out[blockIdx.x] = idx;
}

/* Monotone map float -> uint32 (larger float, larger key); NaN -> 0 (below everything). */
__device__ __forceinline__ uint32_t order_key(float v) {
    if (isnan(v)) return 0u;
    const uint32_t u = __float_as_uint(v);
    return (u & 0x80000000u) ? ~u : (u | 0x80000000u);
}

__device__ int block_sum_int(int x, int *scratch) {
    const int lane = threadIdx.x & 31, warp = threadIdx.x >> 5, n_warps = blockDim.x >> 5;
#pragma unroll
    for (int off = 16; off > 0; off >>= 1) x += __shfl_xor_sync(0xffffffffu, x, off);
    __syncthreads();
    if (lane == 0) scratch[warp] = x;
    __syncthreads();
    int total = 0;
    for (int w = 0; w < n_warps; w++) total += scratch[w];
    return total;
}

/* a goes before b in the candidate order: larger key first, then lower index. */
__device__ __forceinline__ bool goes_before(uint32_t ka, int ia, uint32_t kb, int ib) {
    return ka > kb || (ka == kb && ia < ib);
}

/* One chunk's best (value, index): -inf/INT_MAX when every value is NaN. */
struct chunk_best {
    float value;
    int index;
};

/* Repetition penalty of row b restricted to indices [lo, hi): thread i handles history entry i when no earlier entry
 * has the same token (as sample_kernel does for the whole row). Ends with a barrier when the penalty is on. */
__device__ void penalize_range(float *row, int lo, int hi, int vocab, const xlkv_cuda_sampling &prm,
                               const int *hist, int n_hist) {
    if (prm.repeat_penalty == 1.0f) return;
    n_hist = n_hist < 0 ? 0 : (n_hist > XLKV_CUDA_PENALTY_WINDOW ? XLKV_CUDA_PENALTY_WINDOW : n_hist);
    for (int t = threadIdx.x; t < n_hist; t += blockDim.x) {
        const int id = hist[t];
        bool seen = id < 0 || id >= vocab || id < lo || id >= hi;
        for (int j = 0; j < t && !seen; j++) seen = hist[j] == id;
        if (!seen) {
            const float v = row[id];
            row[id] = v > 0.0f ? v / prm.repeat_penalty : v * prm.repeat_penalty;
        }
    }
    __syncthreads();
}

/* Best (value desc, index asc) of a block's candidates, in thread 0. */
__device__ chunk_best block_best(float best_v, int best_i) {
    __shared__ float s_v[32];
    __shared__ int s_i[32];
    const int lane = threadIdx.x & 31, warp = threadIdx.x >> 5, n_warps = blockDim.x >> 5;
#pragma unroll
    for (int off = 16; off > 0; off >>= 1) {
        const float ov = __shfl_xor_sync(0xffffffffu, best_v, off);
        const int oi = __shfl_xor_sync(0xffffffffu, best_i, off);
        keep_better(ov, oi, &best_v, &best_i);
    }
    __syncthreads();
    if (lane == 0) {
        s_v[warp] = best_v;
        s_i[warp] = best_i;
    }
    __syncthreads();
    best_v = -INFINITY;
    best_i = INT_MAX;
    for (int w = 0; w < n_warps; w++) keep_better(s_v[w], s_i[w], &best_v, &best_i);
    chunk_best r;
    r.value = best_v;
    r.index = best_i;
    return r;
}

constexpr int CHUNK_THREADS = 128;

/* grid (chunks, batch) */
__global__ void __launch_bounds__(CHUNK_THREADS)
    sample_chunks_kernel(chunk_best *partials, float *logits, int vocab, const xlkv_cuda_sampling *params,
                         const int *history, const int *history_len) {
    /* launched as a programmatic dependent of the logits product (sample_split): nothing is read before its end */
    wait_for_previous_kernel();
    allow_next_kernel();
    const int c = blockIdx.x, b = blockIdx.y, n_chunks = gridDim.x;
    float *row = logits + (size_t)b * vocab;
    const int lo = c * XLKV_CUDA_SAMPLE_CHUNK;
    const int hi = lo + XLKV_CUDA_SAMPLE_CHUNK < vocab ? lo + XLKV_CUDA_SAMPLE_CHUNK : vocab;
    penalize_range(row, lo, hi, vocab, params[b], history + (size_t)b * XLKV_CUDA_PENALTY_WINDOW, history_len[b]);
    float best_v = -INFINITY;
    int best_i = INT_MAX;
    for (int i = lo + threadIdx.x; i < hi; i += CHUNK_THREADS) keep_better(row[i], i, &best_v, &best_i);
    const chunk_best best = block_best(best_v, best_i);
    if (threadIdx.x == 0) partials[(size_t)b * n_chunks + c] = best;
}

__global__ void __launch_bounds__(SAMPLE_THREADS)
    sample_kernel(int *out, float *logits, int vocab, const xlkv_cuda_sampling *params, const int *history,
                  const int *history_len, const chunk_best *partials, int n_chunks) {
    __shared__ int s_scratch[32];
    __shared__ uint32_t s_key[SAMPLE_THREADS];
    __shared__ int s_idx[SAMPLE_THREADS];
    __shared__ float s_prob[SAMPLE_THREADS];
    __shared__ int s_count;
    wait_for_previous_kernel(); /* sample_split launches it as a programmatic dependent of the chunks */
    const int b = blockIdx.x, tid = threadIdx.x;
    float *row = logits + (size_t)b * vocab;
    const xlkv_cuda_sampling prm = params[b];

    if (partials && prm.temperature == 0.0f) { /* split: penalty applied, chunk maxima ready */
        float best_v = -INFINITY;
        int best_i = INT_MAX;
        for (int c = tid; c < n_chunks; c += SAMPLE_THREADS) {
            const chunk_best p = partials[(size_t)b * n_chunks + c];
            keep_better(p.value, p.index, &best_v, &best_i);
        }
        const chunk_best best = block_best(best_v, best_i);
        if (tid == 0) out[b] = best.index == INT_MAX ? 0 : best.index;
        return;
    }

    /* repetition penalty (unless the split launch applied it): thread i handles history entry i when no earlier
     * entry has the same token */
    if (!partials && prm.repeat_penalty != 1.0f) {
        int n_hist = history_len[b];
        n_hist = n_hist < 0 ? 0 : (n_hist > XLKV_CUDA_PENALTY_WINDOW ? XLKV_CUDA_PENALTY_WINDOW : n_hist);
        const int *hist = history + (size_t)b * XLKV_CUDA_PENALTY_WINDOW;
        if (tid < n_hist) {
            const int id = hist[tid];
            bool seen = id < 0 || id >= vocab;
            for (int j = 0; j < tid && !seen; j++) seen = hist[j] == id;
            if (!seen) {
                const float v = row[id];
                row[id] = v > 0.0f ? v / prm.repeat_penalty : v * prm.repeat_penalty;
            }
        }
        __syncthreads(); /* global writes of this block are visible to it after the barrier */
    }

    if (prm.temperature == 0.0f) {
        const int idx = block_argmax(row, vocab);
        if (tid == 0) out[b] = idx;
        return;
    }

    int k = prm.top_k > 0 && prm.top_k < XLKV_CUDA_MAX_CANDIDATES ? prm.top_k : XLKV_CUDA_MAX_CANDIDATES;
    if (k > vocab) k = vocab;

    /* the largest threshold T with count(key >= T) >= k, one bit at a time from the top */
    uint32_t threshold = 0;
    for (int bit = 31; bit >= 0; bit--) {
        const uint32_t candidate = threshold | (1u << bit);
        int local = 0;
        for (int i = tid; i < vocab; i += SAMPLE_THREADS) local += order_key(row[i]) >= candidate;
        if (block_sum_int(local, s_scratch) >= k) threshold = candidate;
    }

    /* gather: every key above the threshold, then the lowest-index ties to fill k */
    s_key[tid] = 0;
    s_idx[tid] = INT_MAX;
    if (tid == 0) s_count = 0;
    __syncthreads();
    int local_ties = 0;
    for (int i = tid; i < vocab; i += SAMPLE_THREADS) {
        const uint32_t key = order_key(row[i]);
        if (key > threshold) {
            const int slot = atomicAdd(&s_count, 1);
            s_key[slot] = key;
            s_idx[slot] = i;
        }
        local_ties += key == threshold;
    }
    const int ties = block_sum_int(local_ties, s_scratch); /* its barriers also publish s_count and the slots */
    const int above = s_count;
    const int need = k - above;
    __syncthreads(); /* everyone has read s_count before the tie pass adds to it */
    if (ties <= need) {
        for (int i = tid; i < vocab; i += SAMPLE_THREADS)
            if (order_key(row[i]) == threshold) {
                const int slot = atomicAdd(&s_count, 1);
                s_key[slot] = threshold;
                s_idx[slot] = i;
            }
    } else if (tid == 0) { /* more ties than room (rare): lowest indices, in order */
        int slot = above;
        for (int i = 0; i < vocab && slot < k; i++)
            if (order_key(row[i]) == threshold) {
                s_key[slot] = threshold;
                s_idx[slot] = i;
                slot++;
            }
    }
    __syncthreads();

    /* bitonic sort of SAMPLE_THREADS entries into the candidate order (padding: key 0, index INT_MAX, last) */
    for (int size = 2; size <= SAMPLE_THREADS; size <<= 1) {
        for (int stride = size >> 1; stride > 0; stride >>= 1) {
            const int partner = tid ^ stride;
            if (partner > tid) {
                const uint32_t ka = s_key[tid], kb = s_key[partner];
                const int ia = s_idx[tid], ib = s_idx[partner];
                const bool forward = (tid & size) == 0;
                const bool swap = forward ? goes_before(kb, ib, ka, ia) : goes_before(ka, ia, kb, ib);
                if (swap) {
                    s_key[tid] = kb;
                    s_key[partner] = ka;
                    s_idx[tid] = ib;
                    s_idx[partner] = ia;
                }
            }
            __syncthreads();
        }
    }

    /* softmax of logit / temperature over the k candidates (candidate 0 is the largest) */
    const float x0 = row[s_idx[0]] / prm.temperature;
    float e = 0.0f;
    if (tid < k && s_key[tid] != 0u) e = expf(row[s_idx[tid]] / prm.temperature - x0);
    s_prob[tid] = e;
    __syncthreads();
    if (tid == 0) {
        float sum = 0.0f;
        for (int i = 0; i < k; i++) sum += s_prob[i];
        int n_keep = k;
        float kept = 1.0f;
        if (prm.top_p < 1.0f) {
            float cumulative = 0.0f;
            for (int i = 0; i < k; i++) {
                cumulative += s_prob[i] / sum;
                if (cumulative >= prm.top_p) {
                    n_keep = i + 1;
                    break;
                }
            }
            kept = 0.0f;
            for (int i = 0; i < n_keep; i++) kept += s_prob[i] / sum;
        }
        curandStatePhilox4_32_10_t rng;
        curand_init((unsigned long long)prm.seed, (unsigned long long)prm.step, 0ull, &rng);
        const float u = 1.0f - curand_uniform(&rng); /* (0, 1] -> [0, 1) */
        const float r = u * kept;
        int chosen = s_idx[n_keep - 1];
        float cumulative = 0.0f;
        for (int i = 0; i < n_keep; i++) {
            cumulative += s_prob[i] / sum;
            if (r < cumulative) {
                chosen = s_idx[i];
                break;
            }
        }
        out[b] = chosen;
    }
}

} // namespace

/* The sampler ends a decode step: it asks for the carveout of the step's other kernels (prefer_shared_carveout). */
static void prefer_step_carveout() {
    static bool set = false;
    if (set) return;
    prefer_shared_carveout(argmax_kernel);
    prefer_shared_carveout(sample_kernel);
    prefer_shared_carveout(sample_chunks_kernel);
    set = true;
}

extern "C" {

int xlkv_cuda_argmax(int *out, const float *logits, int batch, int vocab, void *stream) {
    if (batch <= 0) return 0;
    if (vocab <= 0) return (int)cudaErrorInvalidValue;
    prefer_step_carveout();
    argmax_kernel<<<batch, SAMPLE_THREADS, 0, (cudaStream_t)stream>>>(out, logits, vocab);
    return launch_status();
}

int xlkv_cuda_sample(int *out, float *logits, int batch, int vocab, const xlkv_cuda_sampling *params,
                     const int *history, const int *history_len, void *stream) {
    if (batch <= 0) return 0;
    if (vocab <= 0) return (int)cudaErrorInvalidValue;
    prefer_step_carveout();
    sample_kernel<<<batch, SAMPLE_THREADS, 0, (cudaStream_t)stream>>>(out, logits, vocab, params, history, history_len,
                                                                       nullptr, 0);
    return launch_status();
}

size_t xlkv_cuda_sample_split_workspace(int batch, int vocab) {
    if (batch <= 0 || vocab <= 0) return 0;
    const size_t n_chunks = ((size_t)vocab + XLKV_CUDA_SAMPLE_CHUNK - 1) / XLKV_CUDA_SAMPLE_CHUNK;
    return (size_t)batch * n_chunks * sizeof(chunk_best);
}

int xlkv_cuda_sample_split(int *out, float *logits, int batch, int vocab, const xlkv_cuda_sampling *params,
                           const int *history, const int *history_len, void *workspace, void *stream) {
    if (batch <= 0) return 0;
    if (vocab <= 0 || !workspace || batch > 65535) return (int)cudaErrorInvalidValue;
    const int n_chunks = (vocab + XLKV_CUDA_SAMPLE_CHUNK - 1) / XLKV_CUDA_SAMPLE_CHUNK;
    chunk_best *partials = (chunk_best *)workspace;
    prefer_step_carveout();
    const cudaStream_t st = (cudaStream_t)stream;
    if (programmatic_launches()) { /* both launch beside the kernel before them (the logits product's tail) */
        cudaLaunchAttribute attribute = {};
        attribute.id = cudaLaunchAttributeProgrammaticStreamSerialization;
        attribute.val.programmaticStreamSerializationAllowed = 1;
        const int err = launch_with_attribute(attribute, sample_chunks_kernel, dim3(n_chunks, batch), CHUNK_THREADS, 0,
                                              st, partials, logits, vocab, params, history, history_len);
        if (err) return err;
        return launch_with_attribute(attribute, sample_kernel, dim3(batch), SAMPLE_THREADS, 0, st, out, logits, vocab,
                                     params, history, history_len, (const chunk_best *)partials, n_chunks);
    }
    sample_chunks_kernel<<<dim3(n_chunks, batch), CHUNK_THREADS, 0, st>>>(partials, logits, vocab, params, history,
                                                                         history_len);
    const int err = launch_status();
    if (err) return err;
    sample_kernel<<<batch, SAMPLE_THREADS, 0, st>>>(out, logits, vocab, params, history, history_len, partials,
                                                    n_chunks);
    return launch_status();
}

} // extern "C"
