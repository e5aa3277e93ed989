/* backend/cuda/kernels_gemv: matrix products of a few rows (decode of small batches), bf16 weights, with the
 * neighbouring row-wise steps of a decoder layer fused in.
 *
 * y[n, out] = input(x)[n, in] . W[out, in]^T for n <= XLKV_CUDA_GEMV_MAX_ROWS. With so few rows the product is one
 * pass over W (memory-bound): the kernel's job is to keep enough of W in flight from the first cycle to the last.
 *   - the prepared input (n rows of `in` bf16, the exact values the unfused sequence would have stored) sits in
 *     dynamic shared memory; preparing is a copy, an RMSNorm (x / rms(x) * gain, the reduction of rmsnorm_kernel in
 *     kernels_elementwise.cu with the same 256-thread partition, so the normalized values are bit-identical), or
 *     SwiGLU (silu(gate) * up of a fused [n, 2 in] gate | up product);
 *   - one warp per output feature; a warp's work is a sequence of bursts (a burst: GEMV_UNROLL 16-byte loads per
 *     lane, 2048 consecutive weights of one row; a row of `in` weights is ceil(in / 2048) bursts). The warp takes
 *     rows warp_id, warp_id + warps, ... (warps = grid x 8, grid = the CTAs resident at once, at most one warp per
 *     row), so every row is written by exactly one warp;
 *   - streaming kernel (the default): the first burst is issued before the input is prepared (its DRAM latency hides
 *     the prologue), and each burst is issued before the previous one is used (double-buffered in registers), so a
 *     warp always has a burst in flight, across row boundaries too; W loads are ld.global.nc.L1::no_allocate (read
 *     once, never cached in L1). The RMSNorm prologue reduces all n rows together (one barrier pair, not n);
 *   - lane l accumulates chunks l, l + 32, l + 64, ... of the row in ascending order (fp32 fma), then a butterfly
 *     warp reduction: the summation order depends on `in` only (never on the grid, `out`, n, the input kind or the
 *     epilogue), so a fused product gives the bits of the unfused sequence;
 *   - epilogue: y = bf16/fp32(acc), or with `accumulate` the residual add y += round(acc) (the unfused product
 *     rounds to the output type before xlkv_cuda_add adds it; y's values are loaded as the row starts, for up to
 *     GEMV_RESIDUAL_AHEAD_ROWS rows, so that the add waits for no load);
 *   - xlkv_cuda_gemv_fused_spare leaves CTA slots free (a smaller grid, by at most a quarter: same bits) for the
 *     kernel launched after it.
 * The streaming kernel is launched as a programmatic dependent of the kernel before it (programmatic_launches in
 * kernels_common.cuh: the default; XLKV_GEMV=plain launches it normally); same bits. Launched so, each warp issues
 * its first two bursts into registers and, where the shared memory has room without costing a resident CTA, its
 * third into a 4 KB shared-memory slot by cp.async, all before it waits for the previous kernel: 12 KB a warp, a
 * whole down row. Measured on the H100 (docs/CUDA.md) that third burst pays only where a warp streams many bursts
 * (the logits product: ~15 a warp): with GEMV_STAGE_MIN_BURSTS the default stages it there only
 * (third_burst_policy in kernels_common.cuh: XLKV_GEMV=pdl-staged always, pdl-registers never). (The first
 * kernel, rows round-robin with the input prepared row by row before any W load, was removed after the streaming
 * one had been measured faster on every shape: docs/CUDA.md.)
 * Cost: out x in x 2 bytes of W read once, plus n x in elements per CTA from L2. Accumulation in fp32.
 * The streaming kernel's pieces (burst geometry, issue_burst, use_burst, prepare_rows) live in kernels_gemv_common.cuh,
 * shared with kernels_gemv_chain.cu, which runs several of these products in one persistent launch (grid barriers
 * between them) with the same bits. */
#include <stdlib.h>
#include <string.h>

#include "backend/cuda/kernels_gemv_common.cuh"

using namespace xlkv_cuda;
using namespace xlkv_cuda::gemv;

namespace {

constexpr int GEMV_RESIDUAL_AHEAD_ROWS = 4;

/* ---- the streaming kernel ---- */

template <int N, int INPUT, typename OutT>
__global__ void __launch_bounds__(GEMV_THREADS, 2)
    gemv_stream_kernel(OutT *y, const __nv_bfloat16 *x, int x_stride, const __nv_bfloat16 *gain, float eps,
                       const __nv_bfloat16 *w, int in, int out, int accumulate, int ahead, int staged) {
    extern __shared__ uint4 gemv_smem[];
    __shared__ float scratch[N * GEMV_WARPS];
    __nv_bfloat16 *xs = reinterpret_cast<__nv_bfloat16 *>(gemv_smem);
    const int lane = threadIdx.x & 31;
    const int n_chunks = in / CHUNK;
    const int bursts = (n_chunks + BURST_CHUNKS - 1) / BURST_CHUNKS; /* per row, >= 1 */
    const int warps = gridDim.x * GEMV_WARPS;

    /* The warp's first burst goes out before the input is prepared, and with `ahead` (a programmatic launch) its
     * second one too, both before the wait for the previous kernel, so that 8 KB a warp stream during that kernel's
     * tail. `ahead` is a run-time argument on purpose: with one burst only (the kernel before 2026-11-26) and with an
     * unconditional second issue, ptxas placed griddepcontrol.wait above every weight load (nvdisasm: no load
     * before ACQBULK), so nothing streamed during the wait; in this form both bursts come before it (16 loads a
     * lane) and the engine decodes 4-5% faster (docs/CUDA.md). Check the SASS again when this prologue changes. */
    int row = blockIdx.x * GEMV_WARPS + (threadIdx.x >> 5), burst = 0;
    uint4 cur[GEMV_UNROLL], next[GEMV_UNROLL];
    issue_burst(cur, w, in, n_chunks, row, burst, lane, row < out);
    int next_row = row, next_burst = burst + 1; /* the burst after (row, burst) */
    if (next_burst == bursts) {
        next_burst = 0;
        next_row = row + warps;
    }
    if (ahead) issue_burst(next, w, in, n_chunks, next_row, next_burst, lane, next_row < out);
    bool next_issued = ahead;
    /* with `staged` (a programmatic launch whose shared memory has room), the burst after those two goes to this
     * warp's shared-memory slot, also before the wait. Measured (docs/CUDA.md, 2026-11-26): this kernel decodes 3-4%
     * faster in the engine than the one before it had this path, even where `staged` is 0 (117-124 registers
     * against ~110; the same 16 loads before the wait), for reasons not found: re-measure against the previous
     * kernel when this loop changes, not only the SASS. (Likely the shared-memory carveout, found later the same day:
     * the engine then ran its step with one carveout and bench_gpu_step's graph with several; prefer_shared_carveout
     * now asks for one everywhere.) */
    uint4 *stage = gemv_smem + input_bytes(N, in) / sizeof(uint4) + (size_t)(threadIdx.x >> 5) * BURST_CHUNKS;
    int staged_row = next_row, staged_burst = next_burst + 1;
    if (staged_burst == bursts) {
        staged_burst = 0;
        staged_row = next_row + warps;
    }
    bool stage_pending = staged && ahead && staged_row < out;
    if (stage_pending) stage_burst(stage, w, in, n_chunks, staged_row, staged_burst, lane);
    /* launched as a programmatic dependent (the default) this kernel may start while the previous kernel of the
     * stream still runs: only W (constant) is read above; wait for that kernel's writes before x or y is touched,
     * then let the next dependent kernel start (no effect on a normally launched one) */
    wait_for_previous_kernel();
    allow_next_kernel();
    prepare_rows<N, INPUT>(xs, x, x_stride, gain, eps, in, scratch); /* every thread: it has barriers */

    float acc[N], resid[N];
#pragma unroll
    for (int r = 0; r < N; r++) acc[r] = 0.0f;
    while (row < out) { /* warp-uniform */
        /* a residual add's y values load as the row starts: the row's bursts hide their L2 round trip (up to
         * GEMV_RESIDUAL_AHEAD_ROWS rows: more spilled registers) */
        if (N <= GEMV_RESIDUAL_AHEAD_ROWS && accumulate && burst == 0 && lane == 0)
            load_residual<N, OutT>(y, out, row, resid);
        if (!next_issued) {
            if (stage_pending && next_row == staged_row && next_burst == staged_burst) {
                unstage_burst(next, stage, lane);
                stage_pending = false;
            } else {
                issue_burst(next, w, in, n_chunks, next_row, next_burst, lane, next_row < out);
            }
        }
        next_issued = false;
        use_burst<N>(acc, cur, xs, in, n_chunks, burst, lane);
        if (next_burst == 0) { /* the row is complete */
#pragma unroll
            for (int r = 0; r < N; r++) acc[r] = warp_sum(acc[r]);
            if (lane == 0) store_row<N, OutT>(y, out, row, accumulate, acc, N <= GEMV_RESIDUAL_AHEAD_ROWS ? resid : nullptr);
#pragma unroll
            for (int r = 0; r < N; r++) acc[r] = 0.0f;
        }
        row = next_row;
        burst = next_burst;
#pragma unroll
        for (int u = 0; u < GEMV_UNROLL; u++) cur[u] = next[u];
        next_burst = burst + 1;
        if (next_burst == bursts) {
            next_burst = 0;
            next_row = row + warps;
        }
    }
}

template <int N, int INPUT, typename OutT>
int launch_one(OutT *y, const __nv_bfloat16 *x, int x_stride, const __nv_bfloat16 *gain, float eps,
               const __nv_bfloat16 *w, int in, int out, int accumulate, int spare_ctas, bool programmatic,
               cudaStream_t stream) {
    auto kernel = gemv_stream_kernel<N, INPUT, OutT>;
    const size_t input = input_bytes(N, in);
    static bool attribute_set = false; /* one per instantiation */
    if (!attribute_set) {
        const cudaError_t err =
            cudaFuncSetAttribute(kernel, cudaFuncAttributeMaxDynamicSharedMemorySize, max_input_bytes());
        if (err != cudaSuccess) return (int)err;
        prefer_shared_carveout(kernel);
        attribute_set = true;
    }
    /* resident CTAs for this input size, with and without the staging slots, remembered for the last size asked
     * (the grid only sets how rows are spread over the warps: any value >= 1 computes the same result; at most one
     * warp per row). The third burst is staged only where the slots cost no resident CTA. */
    static size_t cached_input = (size_t)-1;
    static long long cached_resident = 0, cached_resident_staged = 0;
    if (cached_input != input) {
        cudaError_t err = cudaSuccess;
        cached_resident = resident_ctas(kernel, input, &err);
        if (err != cudaSuccess) return (int)err;
        if (cached_resident < 1) cached_resident = 1; /* none fits: the launch reports it */
        cached_resident_staged = input + STAGE_BYTES <= (size_t)max_input_bytes()
                                     ? resident_ctas(kernel, input + STAGE_BYTES, &err)
                                     : 0;
        (void)cudaGetLastError(); /* a refused size only means no staging */
        cached_input = input;
    }
    /* room left for the next kernel's CTAs: at most a quarter of the slots (fewer warps stream fewer bytes: one CTA a
     * multiprocessor instead of two made every product 15-25% slower, docs/CUDA.md) */
    const long long spare = spare_ctas < cached_resident / 4 ? spare_ctas : cached_resident / 4;
    const long long resident = cached_resident - spare > 0 ? cached_resident - spare : 1;
    const long long needed = ((long long)out + GEMV_WARPS - 1) / GEMV_WARPS;
    const int blocks = (int)(needed < resident ? needed : resident);
    const long long warps = (long long)blocks * GEMV_WARPS;
    const long long row_bursts = ((long long)in / CHUNK + BURST_CHUNKS - 1) / BURST_CHUNKS;
    const long long bursts_per_warp = ((long long)out + warps - 1) / warps * row_bursts;
    const stage_policy policy = third_burst_policy();
    const bool staged = programmatic && cached_resident_staged >= cached_resident &&
                        (policy == stage_policy::always ||
                         (policy == stage_policy::long_products && bursts_per_warp >= GEMV_STAGE_MIN_BURSTS));
    const size_t smem = input + (staged ? STAGE_BYTES : 0);
    const int ahead = programmatic ? 1 : 0; /* see gemv_stream_kernel: a run-time value on purpose */
    const int stage = staged ? 1 : 0;
    if (programmatic) {
        cudaLaunchAttribute attribute = {};
        attribute.id = cudaLaunchAttributeProgrammaticStreamSerialization;
        attribute.val.programmaticStreamSerializationAllowed = 1;
        return launch_with_attribute(attribute, kernel, blocks, GEMV_THREADS, smem, stream, y, x, x_stride, gain, eps, w,
                                     in, out, accumulate, ahead, stage);
    }
    kernel<<<blocks, GEMV_THREADS, smem, stream>>>(y, x, x_stride, gain, eps, w, in, out, accumulate, ahead, stage);
    return launch_status();
}

template <int INPUT, typename OutT>
int launch_rows(OutT *y, const __nv_bfloat16 *x, int x_stride, const __nv_bfloat16 *gain, float eps,
                const __nv_bfloat16 *w, int n, int in, int out, int accumulate, int spare_ctas, cudaStream_t stream) {
    const bool programmatic = programmatic_launches();
    switch (n) {
#define XLKV_GEMV_CASE(N)                                                                                              \
    case N:                                                                                                            \
        return launch_one<N, INPUT, OutT>(y, x, x_stride, gain, eps, w, in, out, accumulate, spare_ctas, programmatic, \
                                          stream);
        XLKV_GEMV_CASE(1)
        XLKV_GEMV_CASE(2)
        XLKV_GEMV_CASE(3)
        XLKV_GEMV_CASE(4)
        XLKV_GEMV_CASE(5)
        XLKV_GEMV_CASE(6)
        XLKV_GEMV_CASE(7)
        XLKV_GEMV_CASE(8)
#undef XLKV_GEMV_CASE
    default: return (int)cudaErrorNotSupported;
    }
}

template <typename OutT>
int launch_input(OutT *y, const __nv_bfloat16 *x, const xlkv_cuda_gemv_input *input, const __nv_bfloat16 *w, int n,
                 int in, int out, int accumulate, int spare_ctas, cudaStream_t stream) {
    const int kind = input ? input->kind : XLKV_GEMV_INPUT_PLAIN;
    const int x_stride = input && input->x_stride > 0 ? input->x_stride : (kind == XLKV_GEMV_INPUT_SWIGLU ? 2 * in : in);
    const __nv_bfloat16 *gain = input ? (const __nv_bfloat16 *)input->gain : nullptr;
    const float eps = input ? input->eps : 0.0f;
    switch (kind) {
    case XLKV_GEMV_INPUT_PLAIN:
        return launch_rows<XLKV_GEMV_INPUT_PLAIN>(y, x, x_stride, gain, eps, w, n, in, out, accumulate, spare_ctas,
                                                  stream);
    case XLKV_GEMV_INPUT_RMSNORM:
        return launch_rows<XLKV_GEMV_INPUT_RMSNORM>(y, x, x_stride, gain, eps, w, n, in, out, accumulate, spare_ctas,
                                                  stream);
    case XLKV_GEMV_INPUT_SWIGLU:
        return launch_rows<XLKV_GEMV_INPUT_SWIGLU>(y, x, x_stride, gain, eps, w, n, in, out, accumulate, spare_ctas,
                                                  stream);
    default: return (int)cudaErrorInvalidValue;
    }
}

bool aligned16(const void *p) { return (uintptr_t)p % 16 == 0; }

} // namespace

extern "C" {

int xlkv_cuda_gemv_input_supported(int n, int in, const void *x, const xlkv_cuda_gemv_input *input, const void *w,
                                   xlkv_dtype dt) {
    if (dt != XLKV_DTYPE_BF16 || n < 1 || n > XLKV_CUDA_GEMV_MAX_ROWS || in <= 0 || in % CHUNK != 0) return 0;
    if (!aligned16(x) || !aligned16(w)) return 0;
    if (input_bytes(n, in) > (size_t)max_input_bytes()) return 0;
    if (!input) return 1;
    const int kind = input->kind;
    if (kind != XLKV_GEMV_INPUT_PLAIN && kind != XLKV_GEMV_INPUT_RMSNORM && kind != XLKV_GEMV_INPUT_SWIGLU) return 0;
    const int min_stride = kind == XLKV_GEMV_INPUT_SWIGLU ? 2 * in : in;
    if (input->x_stride != 0 && (input->x_stride < min_stride || input->x_stride % CHUNK != 0)) return 0;
    if (kind == XLKV_GEMV_INPUT_RMSNORM && (!input->gain || !aligned16(input->gain))) return 0;
    return 1;
}

int xlkv_cuda_gemv_supported(int n, int in, const void *x, const void *w, xlkv_dtype dt) {
    return xlkv_cuda_gemv_input_supported(n, in, x, NULL, w, dt);
}

int xlkv_cuda_gemv_fused_spare(void *y, int y_is_f32, int accumulate, const void *x, const xlkv_cuda_gemv_input *input,
                               const void *w, int n, int in, int out, int spare_ctas, xlkv_dtype dt, void *stream) {
    if (!xlkv_cuda_gemv_input_supported(n, in, x, input, w, dt) || out <= 0) return (int)cudaErrorNotSupported;
    if (spare_ctas < 0) return (int)cudaErrorInvalidValue;
    const __nv_bfloat16 *xb = (const __nv_bfloat16 *)x, *wb = (const __nv_bfloat16 *)w;
    if (y_is_f32)
        return launch_input<float>((float *)y, xb, input, wb, n, in, out, accumulate, spare_ctas,
                                   (cudaStream_t)stream);
    return launch_input<__nv_bfloat16>((__nv_bfloat16 *)y, xb, input, wb, n, in, out, accumulate, spare_ctas,
                                       (cudaStream_t)stream);
}

int xlkv_cuda_gemv_fused(void *y, int y_is_f32, int accumulate, const void *x, const xlkv_cuda_gemv_input *input,
                         const void *w, int n, int in, int out, xlkv_dtype dt, void *stream) {
    return xlkv_cuda_gemv_fused_spare(y, y_is_f32, accumulate, x, input, w, n, in, out, 0, dt, stream);
}

int xlkv_cuda_gemv(void *y, int y_is_f32, const void *x, const void *w, int n, int in, int out, xlkv_dtype dt,
                   void *stream) {
    return xlkv_cuda_gemv_fused(y, y_is_f32, 0, x, NULL, w, n, in, out, dt, stream);
}

} // extern "C"
