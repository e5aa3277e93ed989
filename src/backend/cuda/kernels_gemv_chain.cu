/* backend/cuda/kernels_gemv_chain: several few-row products (xlkv_cuda_gemv_fused calls) in ONE persistent
 * cooperative launch, stage after stage with a grid-wide barrier between stages (batch-1 decode: o, gate|up and down
 * of a layer, optionally the next layer's qkv).
 *
 * Why: each separate product pays a ramp (its first W bytes arrive ~1-2 us after launch) and a tail (the last warps
 * finish alone), plus the gap between launches; on the 8-10 MB matrices of a small model that halves the bandwidth.
 * In the chain a warp's bursts run on across stages: while it uses the last burst of its last row of stage k it has
 * already issued the FIRST burst of stage k + 1 (weights never depend on an earlier stage), then it waits at the
 * barrier, the CTA prepares stage k + 1's input (which does depend on stage k: it reads what stage k wrote) and the
 * warp streams that stage as gemv_stream_kernel does. HBM stays busy across the barrier; no stage ramps from zero.
 *
 * Bits: every stage uses the same pieces as gemv_stream_kernel (kernels_gemv_common.cuh: issue_burst, use_burst,
 * prepare_rows; the same epilogue expressions), so every output element is summed in the same order as
 * xlkv_cuda_gemv_fused with the same arguments: the chain gives the same bits as the separate launches. The grid
 * (co-resident CTAs, the same for every stage) only spreads rows over warps, which does not change any sum.
 *
 * Ordering: stage k starts (reads its x, reads y for `accumulate`) only after every write of stages < k, and writes
 * only after every read of stages < k (the barrier sits between), so a stage may read or overwrite the buffers of the
 * stages before it. Within a stage the rules of xlkv_cuda_gemv_fused hold (y must not overlap x).
 * Barrier: cooperative_groups grid sync (the launch carries cudaLaunchAttributeCooperative; grid = the co-resident
 * CTAs for the largest stage's shared memory). Its state is the runtime's and re-arms itself, so a captured graph
 * replays any number of times. Shared memory: the largest stage's prepared input, n x in bf16. */
#include <cooperative_groups.h>

#include "backend/cuda/kernels_gemv_common.cuh"

namespace cg = cooperative_groups;
using namespace xlkv_cuda;
using namespace xlkv_cuda::gemv;

namespace {

/* One stage as the kernel sees it (a by-value kernel parameter, so a captured graph keeps it). */
struct chain_stage {
    void *y;
    const __nv_bfloat16 *x;
    const __nv_bfloat16 *gain;
    const __nv_bfloat16 *w;
    float eps;
    int x_stride;
    int kind;
    int in;
    int out;
    int y_is_f32;
    int accumulate;
};

struct chain_params {
    chain_stage stage[XLKV_CUDA_GEMV_CHAIN_MAX_STAGES];
    int n_stages;
};

/* A copy of p.stage[k], read with constant indices (a dynamic index into the parameter space would copy all of it
 * to local memory). */
__device__ __forceinline__ chain_stage stage_at(const chain_params &p, int k) {
    static_assert(XLKV_CUDA_GEMV_CHAIN_MAX_STAGES == 4, "stage_at lists every stage");
    switch (k) {
    case 0: return p.stage[0];
    case 1: return p.stage[1];
    case 2: return p.stage[2];
    default: return p.stage[3];
    }
}

template <int N>
__device__ __forceinline__ void prepare_stage(__nv_bfloat16 *xs, const chain_stage &s, float *scratch) {
    switch (s.kind) { /* block-uniform: every thread reaches the barriers of the same variant */
    case XLKV_GEMV_INPUT_RMSNORM:
        prepare_rows<N, XLKV_GEMV_INPUT_RMSNORM, 1>(xs, s.x, s.x_stride, s.gain, s.eps, s.in, scratch);
        break;
    case XLKV_GEMV_INPUT_SWIGLU:
        prepare_rows<N, XLKV_GEMV_INPUT_SWIGLU, 1>(xs, s.x, s.x_stride, s.gain, s.eps, s.in, scratch);
        break;
    default: prepare_rows<N, XLKV_GEMV_INPUT_PLAIN, 1>(xs, s.x, s.x_stride, s.gain, s.eps, s.in, scratch); break;
    }
}

/* The first burst of `s` for the warp whose first row is `row` (zeros, no loads, when it has no row there). */
__device__ __forceinline__ void issue_first_burst(uint4 (&raw)[GEMV_UNROLL], const chain_stage &s, int row, int lane,
                                                  bool valid) {
    issue_burst(raw, s.w, s.in, s.in / CHUNK, row, 0, lane, valid && row < s.out);
}

template <int N>
__global__ void __launch_bounds__(GEMV_THREADS, 2) gemv_chain_kernel(const chain_params p) {
    extern __shared__ uint4 gemv_smem[];
    __shared__ float scratch[N * GEMV_WARPS];
    __nv_bfloat16 *xs = reinterpret_cast<__nv_bfloat16 *>(gemv_smem);
    cg::grid_group grid = cg::this_grid();
    const int lane = threadIdx.x & 31;
    const int first_row = blockIdx.x * GEMV_WARPS + (threadIdx.x >> 5); /* the warp's first row in every stage */
    const int warps = gridDim.x * GEMV_WARPS;

    uint4 cur[GEMV_UNROLL]; /* always the next burst to use: of this stage, or the first one of the next stage */
    issue_first_burst(cur, stage_at(p, 0), first_row, lane, true);
    for (int k = 0; k < p.n_stages; k++) {
        const chain_stage s = stage_at(p, k);
        const bool has_next = k + 1 < p.n_stages;
        const chain_stage t = stage_at(p, has_next ? k + 1 : k);
        const int n_chunks = s.in / CHUNK;
        const int bursts = (n_chunks + BURST_CHUNKS - 1) / BURST_CHUNKS; /* per row, >= 1 */
        /* stage k - 1 is complete everywhere (its first burst of this stage is in flight in cur) */
        if (k > 0) grid.sync();
        int row = first_row, burst = 0;
        if (row >= s.out) issue_first_burst(cur, t, first_row, lane, has_next); /* no row here: go on to the next */
        if ((int)blockIdx.x * GEMV_WARPS < s.out) prepare_stage<N>(xs, s, scratch); /* block-uniform */

        float acc[N];
#pragma unroll
        for (int r = 0; r < N; r++) acc[r] = 0.0f;
        while (row < s.out) { /* warp-uniform */
            int next_row = row, next_burst = burst + 1;
            if (next_burst == bursts) {
                next_burst = 0;
                next_row = row + warps;
            }
            uint4 next[GEMV_UNROLL];
            if (next_row < s.out)
                issue_burst(next, s.w, s.in, n_chunks, next_row, next_burst, lane, true);
            else /* the warp's last burst of this stage: the next stage's first goes out now */
                issue_first_burst(next, t, first_row, lane, has_next);
            use_burst<N>(acc, cur, xs, s.in, n_chunks, burst, lane);
            if (next_burst == 0) { /* the row is complete */
#pragma unroll
                for (int r = 0; r < N; r++) acc[r] = warp_sum(acc[r]);
                if (lane == 0) {
                    if (s.y_is_f32)
                        store_row<N, float>(static_cast<float *>(s.y), s.out, row, s.accumulate, acc);
                    else
                        store_row<N, __nv_bfloat16>(static_cast<__nv_bfloat16 *>(s.y), s.out, row, s.accumulate, acc);
                }
#pragma unroll
                for (int r = 0; r < N; r++) acc[r] = 0.0f;
            }
            row = next_row;
            burst = next_burst;
#pragma unroll
            for (int u = 0; u < GEMV_UNROLL; u++) cur[u] = next[u];
        }
    }
}

/* Cooperative launch of gemv_chain_kernel<N>: grid = co-resident CTAs at `smem` bytes (at most one warp per row of
 * the largest stage). */
template <int N> int launch_chain(const chain_params &p, size_t smem, int max_out, cudaStream_t stream) {
    auto kernel = gemv_chain_kernel<N>;
    static bool attribute_set = false; /* one per instantiation */
    if (!attribute_set) {
        const cudaError_t err =
            cudaFuncSetAttribute(kernel, cudaFuncAttributeMaxDynamicSharedMemorySize, max_input_bytes());
        if (err != cudaSuccess) return (int)err;
        prefer_shared_carveout(kernel);
        attribute_set = true;
    }
    static size_t cached_smem = (size_t)-1; /* resident CTAs for the last size asked */
    static long long cached_resident = 0;
    long long resident = cached_smem == smem ? cached_resident : 0;
    if (resident <= 0) {
        cudaError_t err = cudaSuccess;
        resident = resident_ctas(kernel, smem, &err);
        if (err != cudaSuccess) return (int)err;
        if (resident < 1) return (int)cudaErrorCooperativeLaunchTooLarge; /* not even one CTA fits */
        cached_resident = resident;
        cached_smem = smem;
    }
    const long long needed = ((long long)max_out + GEMV_WARPS - 1) / GEMV_WARPS;
    const int blocks = (int)(needed < resident ? needed : resident);
    cudaLaunchAttribute attribute = {};
    attribute.id = cudaLaunchAttributeCooperative;
    attribute.val.cooperative = 1;
    return launch_with_attribute(attribute, kernel, blocks, GEMV_THREADS, smem, stream, p);
}

/* Whether the device runs cooperative launches (per process; the device of the first call). */
bool cooperative_device() {
    static int answer = -1;
    if (answer < 0) {
        int device = 0, value = 0;
        if (cudaGetDevice(&device) != cudaSuccess ||
            cudaDeviceGetAttribute(&value, cudaDevAttrCooperativeLaunch, device) != cudaSuccess) {
            (void)cudaGetLastError();
            return false;
        }
        answer = value != 0;
    }
    return answer == 1;
}

} // namespace

extern "C" {

int xlkv_cuda_gemv_chain_supported(const xlkv_cuda_gemv_stage *stages, int n_stages, int n, xlkv_dtype dt) {
    if (!stages || n_stages < 1 || n_stages > XLKV_CUDA_GEMV_CHAIN_MAX_STAGES) return 0;
    for (int k = 0; k < n_stages; k++) {
        const xlkv_cuda_gemv_stage *s = &stages[k];
        if (!s->y || s->out <= 0 || !xlkv_cuda_gemv_input_supported(n, s->in, s->x, &s->input, s->w, dt)) return 0;
    }
    return cooperative_device() ? 1 : 0;
}

int xlkv_cuda_gemv_chain(const xlkv_cuda_gemv_stage *stages, int n_stages, int n, xlkv_dtype dt, void *stream) {
    if (!xlkv_cuda_gemv_chain_supported(stages, n_stages, n, dt)) return (int)cudaErrorNotSupported;
    chain_params p = {};
    p.n_stages = n_stages;
    size_t smem = 0;
    int max_out = 0;
    for (int k = 0; k < n_stages; k++) {
        const xlkv_cuda_gemv_stage *s = &stages[k];
        const int kind = s->input.kind;
        chain_stage &d = p.stage[k];
        d.y = s->y;
        d.x = static_cast<const __nv_bfloat16 *>(s->x);
        d.gain = static_cast<const __nv_bfloat16 *>(s->input.gain);
        d.w = static_cast<const __nv_bfloat16 *>(s->w);
        d.eps = s->input.eps;
        d.x_stride = s->input.x_stride > 0 ? s->input.x_stride : (kind == XLKV_GEMV_INPUT_SWIGLU ? 2 * s->in : s->in);
        d.kind = kind;
        d.in = s->in;
        d.out = s->out;
        d.y_is_f32 = s->y_is_f32 ? 1 : 0;
        d.accumulate = s->accumulate ? 1 : 0;
        if (input_bytes(n, s->in) > smem) smem = input_bytes(n, s->in);
        if (s->out > max_out) max_out = s->out;
    }
    const cudaStream_t st = (cudaStream_t)stream;
    switch (n) {
    case 1: return launch_chain<1>(p, smem, max_out, st);
    case 2: return launch_chain<2>(p, smem, max_out, st);
    case 3: return launch_chain<3>(p, smem, max_out, st);
    case 4: return launch_chain<4>(p, smem, max_out, st);
    case 5: return launch_chain<5>(p, smem, max_out, st);
    case 6: return launch_chain<6>(p, smem, max_out, st);
    case 7: return launch_chain<7>(p, smem, max_out, st);
    case 8: return launch_chain<8>(p, smem, max_out, st);
    default: return (int)cudaErrorNotSupported;
    }
}

} // extern "C"
