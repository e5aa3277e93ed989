/* backend/cuda/kernels_score: scoring rows of fp32 logits against target tokens on the device (what evaluation asks:
 * infer/token_scores.h), so that only two numbers per row leave the GPU instead of a vocabulary of logits.
 *
 * One CTA per row: the row's maximum (block reduction), the first index holding it (a minimum over the indices that
 * hold the maximum: the CPU's first-maximum argmax), and the log-sum-exp with exp(x - max) summed in double per thread
 * and across the block (the host reference computes in double; the difference is the fp32 exp, ~1e-7 relative). */
#include "backend/cuda/kernels_common.cuh"

using namespace xlkv_cuda;

namespace {

constexpr int SCORE_THREADS = 256;

__global__ void __launch_bounds__(SCORE_THREADS)
score_rows_kernel(const float *logits, int vocab, const int *targets, double *log_probs, unsigned char *is_argmax) {
    __shared__ float fscratch[32];
    __shared__ double dscratch[32];
    __shared__ int iscratch[32];
    const float *row = logits + (size_t)blockIdx.x * (size_t)vocab;
    const int lane = threadIdx.x & 31, warp = threadIdx.x >> 5, n_warps = blockDim.x >> 5;

    float local_max = -INFINITY;
    for (int i = threadIdx.x; i < vocab; i += blockDim.x) local_max = fmaxf(local_max, row[i]);
    const float max = block_max(local_max, fscratch);

    int first = vocab;
    double sum = 0.0;
    for (int i = threadIdx.x; i < vocab; i += blockDim.x) {
        const float x = row[i];
        if (x == max && i < first) first = i;
        sum += (double)expf(x - max);
    }
#pragma unroll
    for (int off = 16; off > 0; off >>= 1) {
        sum += __shfl_xor_sync(0xffffffffu, sum, off);
        first = min(first, __shfl_xor_sync(0xffffffffu, first, off));
    }
    if (lane == 0) {
        dscratch[warp] = sum;
        iscratch[warp] = first;
    }
    __syncthreads();
    if (threadIdx.x == 0) {
        double total = 0.0;
        int argmax = vocab;
        for (int w = 0; w < n_warps; w++) {
            total += dscratch[w];
            argmax = min(argmax, iscratch[w]);
        }
        const int target = targets[blockIdx.x];
        log_probs[blockIdx.x] = (double)row[target] - (double)max - log(total);
        is_argmax[blockIdx.x] = argmax == target;
    }
}

} // namespace

extern "C" int xlkv_cuda_score_rows(const float *logits, int n_rows, int vocab, const int *targets, double *log_probs,
                                    unsigned char *is_argmax, void *stream) {
    if (n_rows <= 0) return 0;
    score_rows_kernel<<<n_rows, SCORE_THREADS, 0, (cudaStream_t)stream>>>(logits, vocab, targets, log_probs, is_argmax);
    return launch_status();
}
