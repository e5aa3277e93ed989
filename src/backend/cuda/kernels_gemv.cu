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
 *     epilogue), so a fused product gives the bits of the unfused sequence, and the two kernels below give the same
 *     bits as each other;
 *   - epilogue: y = bf16/fp32(acc), or with `accumulate` the residual add y += round(acc) (the unfused product
 *     rounds to the output type before xlkv_cuda_add adds it).
 * The previous kernel (rows round-robin over the resident warps, input prepared row by row before any W load) is
 * kept for A/B runs: XLKV_GEMV=old in the environment selects it; XLKV_GEMV=pdl launches the streaming kernel as a
 * programmatic dependent of the kernel before it (read at every launch, so a benchmark can switch; a CUDA graph
 * keeps what it captured). All three give the same bits.
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

/* Fills xs[N][in] (bf16, shared) with the product's input rows, one row after the other. Ends with a barrier. */
template <int N, int INPUT>
__device__ void prepare_input(__nv_bfloat16 *xs, const __nv_bfloat16 *x, int x_stride, const __nv_bfloat16 *gain,
                              float eps, int in, float *scratch) {
    for (int r = 0; r < N; r++) {
        const __nv_bfloat16 *xr = x + (size_t)r * x_stride;
        __nv_bfloat16 *dst = xs + (size_t)r * in;
        if (INPUT == XLKV_GEMV_INPUT_RMSNORM) {
            float ss = 0.0f;
            for (int i = threadIdx.x * CHUNK; i < in; i += GEMV_THREADS * CHUNK) {
                float xv[CHUNK];
                load_vec<__nv_bfloat16>(xr + i, xv);
#pragma unroll
                for (int j = 0; j < CHUNK; j++) ss += xv[j] * xv[j];
            }
            ss = block_sum(ss, scratch);
            const float inv = 1.0f / sqrtf(ss / (float)in + eps);
            for (int i = threadIdx.x * CHUNK; i < in; i += GEMV_THREADS * CHUNK) {
                float xv[CHUNK], gv[CHUNK], ov[CHUNK];
                load_vec<__nv_bfloat16>(xr + i, xv);
                load_vec<__nv_bfloat16>(gain + i, gv);
#pragma unroll
                for (int j = 0; j < CHUNK; j++) ov[j] = gv[j] * (inv * xv[j]);
                store_vec<__nv_bfloat16>(dst + i, ov);
            }
        } else if (INPUT == XLKV_GEMV_INPUT_SWIGLU) {
            for (int i = threadIdx.x * CHUNK; i < in; i += GEMV_THREADS * CHUNK) {
                float gv[CHUNK], uv[CHUNK];
                load_vec<__nv_bfloat16>(xr + i, gv);
                load_vec<__nv_bfloat16>(xr + in + i, uv);
#pragma unroll
                for (int j = 0; j < CHUNK; j++) gv[j] = silu_times(gv[j], uv[j]);
                store_vec<__nv_bfloat16>(dst + i, gv);
            }
        } else {
            for (int i = threadIdx.x * CHUNK; i < in; i += GEMV_THREADS * CHUNK)
                *reinterpret_cast<uint4 *>(dst + i) = *reinterpret_cast<const uint4 *>(xr + i);
        }
    }
    __syncthreads();
}

/* The previous kernel (XLKV_GEMV=old): input prepared row by row, then rows round-robin over the warps, one burst
 * of loads per lane at a time (none in flight while a row's sum is reduced and stored, none before the prologue). */
template <int N, int INPUT, typename OutT>
__global__ void __launch_bounds__(GEMV_THREADS)
    gemv_rowwise_kernel(OutT *y, const __nv_bfloat16 *x, int x_stride, const __nv_bfloat16 *gain, float eps,
                const __nv_bfloat16 *w, int in, int out, int accumulate) {
    extern __shared__ uint4 gemv_smem[];
    __shared__ float scratch[32];
    __nv_bfloat16 *xs = reinterpret_cast<__nv_bfloat16 *>(gemv_smem);
    prepare_input<N, INPUT>(xs, x, x_stride, gain, eps, in, scratch);

    const int lane = threadIdx.x & 31;
    const int n_chunks = in / CHUNK;
    for (int row = blockIdx.x * GEMV_WARPS + (threadIdx.x >> 5); row < out; row += gridDim.x * GEMV_WARPS) {
        const uint4 *w_row = reinterpret_cast<const uint4 *>(w + (size_t)row * in);
        float acc[N];
#pragma unroll
        for (int r = 0; r < N; r++) acc[r] = 0.0f;
        for (int c0 = lane; c0 < n_chunks; c0 += 32 * GEMV_UNROLL) {
            uint4 raw[GEMV_UNROLL];
#pragma unroll
            for (int u = 0; u < GEMV_UNROLL; u++) {
                const int c = c0 + u * 32;
                raw[u] = c < n_chunks ? __ldcs(w_row + c) : make_uint4(0u, 0u, 0u, 0u);
            }
#pragma unroll
            for (int u = 0; u < GEMV_UNROLL; u++) {
                const int c = c0 + u * 32;
                if (c < n_chunks) {
                    float wv[CHUNK];
                    unpack_bf16x8(raw[u], wv);
#pragma unroll
                    for (int r = 0; r < N; r++) {
                        float xv[CHUNK];
                        unpack_bf16x8(*reinterpret_cast<const uint4 *>(xs + (size_t)r * in + (size_t)c * CHUNK), xv);
#pragma unroll
                        for (int k = 0; k < CHUNK; k++) acc[r] = fmaf(wv[k], xv[k], acc[r]);
                    }
                }
            }
        }
#pragma unroll
        for (int r = 0; r < N; r++) acc[r] = warp_sum(acc[r]);
        if (lane == 0) {
#pragma unroll
            for (int r = 0; r < N; r++) {
                OutT *dst = y + (size_t)r * out + row;
                const OutT product = from_float<OutT>(acc[r]);
                *dst = accumulate ? from_float<OutT>(to_float<OutT>(*dst) + to_float<OutT>(product)) : product;
            }
        }
    }
}

/* ---- the streaming kernel (default) ---- */


/* Programmatic dependent launch (sm_90+): without the launch attribute both return at once. */
__device__ __forceinline__ void wait_for_previous_kernel() {
#if defined(__CUDA_ARCH__) && __CUDA_ARCH__ >= 900
    asm volatile("griddepcontrol.wait;" ::: "memory");
#endif
}
__device__ __forceinline__ void allow_next_kernel() {
#if defined(__CUDA_ARCH__) && __CUDA_ARCH__ >= 900
    asm volatile("griddepcontrol.launch_dependents;" ::: "memory");
#endif
}


template <int N, int INPUT, typename OutT>
__global__ void __launch_bounds__(GEMV_THREADS, 2)
    gemv_stream_kernel(OutT *y, const __nv_bfloat16 *x, int x_stride, const __nv_bfloat16 *gain, float eps,
                       const __nv_bfloat16 *w, int in, int out, int accumulate) {
    extern __shared__ uint4 gemv_smem[];
    __shared__ float scratch[N * GEMV_WARPS];
    __nv_bfloat16 *xs = reinterpret_cast<__nv_bfloat16 *>(gemv_smem);
    const int lane = threadIdx.x & 31;
    const int n_chunks = in / CHUNK;
    const int bursts = (n_chunks + BURST_CHUNKS - 1) / BURST_CHUNKS; /* per row, >= 1 */
    const int warps = gridDim.x * GEMV_WARPS;

    /* the warp's first burst goes out before the input is prepared */
    int row = blockIdx.x * GEMV_WARPS + (threadIdx.x >> 5), burst = 0;
    uint4 cur[GEMV_UNROLL];
    issue_burst(cur, w, in, n_chunks, row, burst, lane, row < out);
    /* launched as a programmatic dependent (XLKV_GEMV=pdl) this kernel may start while the previous kernel of the
     * stream still runs: only W (constant) is read above; wait for that kernel's writes before x or y is touched,
     * then let the next dependent kernel start (no effect on a normally launched one) */
    wait_for_previous_kernel();
    allow_next_kernel();
    prepare_rows<N, INPUT>(xs, x, x_stride, gain, eps, in, scratch); /* every thread: it has barriers */

    float acc[N];
#pragma unroll
    for (int r = 0; r < N; r++) acc[r] = 0.0f;
    while (row < out) { /* warp-uniform */
        int next_row = row, next_burst = burst + 1;
        if (next_burst == bursts) {
            next_burst = 0;
            next_row = row + warps;
        }
        uint4 next[GEMV_UNROLL];
        issue_burst(next, w, in, n_chunks, next_row, next_burst, lane, next_row < out);
        use_burst<N>(acc, cur, xs, in, n_chunks, burst, lane);
        if (next_burst == 0) { /* the row is complete */
#pragma unroll
            for (int r = 0; r < N; r++) acc[r] = warp_sum(acc[r]);
            if (lane == 0) {
#pragma unroll
                for (int r = 0; r < N; r++) {
                    OutT *dst = y + (size_t)r * out + row;
                    const OutT product = from_float<OutT>(acc[r]);
                    *dst = accumulate ? from_float<OutT>(to_float<OutT>(*dst) + to_float<OutT>(product)) : product;
                }
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



/* Which kernel, from XLKV_GEMV in the environment (read at every launch): unset or anything else = the streaming
 * kernel; "old" = the previous kernel; "pdl" = the streaming kernel launched as a programmatic dependent of the
 * previous kernel in the stream (its first W burst and its launch overlap that kernel's end; sm_90+). */
enum gemv_mode { GEMV_STREAM, GEMV_OLD, GEMV_STREAM_PDL };
gemv_mode selected_mode() {
    const char *choice = getenv("XLKV_GEMV");
    if (choice && strcmp(choice, "old") == 0) return GEMV_OLD;
    if (choice && strcmp(choice, "pdl") == 0) return GEMV_STREAM_PDL;
    return GEMV_STREAM;
}

template <bool STREAM, int N, int INPUT, typename OutT>
int launch_one(OutT *y, const __nv_bfloat16 *x, int x_stride, const __nv_bfloat16 *gain, float eps,
               const __nv_bfloat16 *w, int in, int out, int accumulate, bool programmatic, cudaStream_t stream) {
    auto kernel = STREAM ? gemv_stream_kernel<N, INPUT, OutT> : gemv_rowwise_kernel<N, INPUT, OutT>;
    const size_t smem = input_bytes(N, in);
    static bool attribute_set = false; /* one per instantiation */
    if (!attribute_set) {
        const cudaError_t err =
            cudaFuncSetAttribute(kernel, cudaFuncAttributeMaxDynamicSharedMemorySize, max_input_bytes());
        if (err != cudaSuccess) return (int)err;
        attribute_set = true;
    }
    /* resident CTAs for this shared-memory size, remembered for the last size asked (the grid only sets how rows
     * are spread over the warps: any value >= 1 computes the same result; at most one warp per row) */
    static size_t cached_smem = (size_t)-1;
    static long long cached_resident = 0;
    long long resident = cached_smem == smem ? cached_resident : 0;
    if (resident <= 0) {
        int device = 0, sms = 0, per_sm = 0;
        cudaError_t err = cudaGetDevice(&device);
        if (err == cudaSuccess) err = cudaDeviceGetAttribute(&sms, cudaDevAttrMultiProcessorCount, device);
        if (err == cudaSuccess) err = cudaOccupancyMaxActiveBlocksPerMultiprocessor(&per_sm, kernel, GEMV_THREADS, smem);
        if (err != cudaSuccess) return (int)err;
        resident = (long long)(sms > 0 ? sms : 1) * (per_sm > 0 ? per_sm : 1);
        cached_resident = resident;
        cached_smem = smem;
    }
    const long long needed = ((long long)out + GEMV_WARPS - 1) / GEMV_WARPS;
    const int blocks = (int)(needed < resident ? needed : resident);
    if (programmatic) {
        cudaLaunchAttribute attribute[1];
        attribute[0].id = cudaLaunchAttributeProgrammaticStreamSerialization;
        attribute[0].val.programmaticStreamSerializationAllowed = 1;
        cudaLaunchConfig_t config = {};
        config.gridDim = dim3((unsigned)blocks);
        config.blockDim = dim3(GEMV_THREADS);
        config.dynamicSmemBytes = smem;
        config.stream = stream;
        config.attrs = attribute;
        config.numAttrs = 1;
        const cudaError_t err = cudaLaunchKernelEx(&config, kernel, y, x, x_stride, gain, eps, w, in, out, accumulate);
        return err != cudaSuccess ? (int)err : launch_status();
    }
    kernel<<<blocks, GEMV_THREADS, smem, stream>>>(y, x, x_stride, gain, eps, w, in, out, accumulate);
    return launch_status();
}

template <int INPUT, typename OutT>
int launch_rows(OutT *y, const __nv_bfloat16 *x, int x_stride, const __nv_bfloat16 *gain, float eps,
                const __nv_bfloat16 *w, int n, int in, int out, int accumulate, cudaStream_t stream) {
    const gemv_mode mode = selected_mode();
    switch (n) {
#define XLKV_GEMV_CASE(N)                                                                                              \
    case N:                                                                                                            \
        return mode == GEMV_OLD                                                                                        \
                   ? launch_one<false, N, INPUT, OutT>(y, x, x_stride, gain, eps, w, in, out, accumulate, false,       \
                                                       stream)                                                         \
                   : launch_one<true, N, INPUT, OutT>(y, x, x_stride, gain, eps, w, in, out, accumulate,               \
                                                      mode == GEMV_STREAM_PDL, stream);
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
                 int in, int out, int accumulate, cudaStream_t stream) {
    const int kind = input ? input->kind : XLKV_GEMV_INPUT_PLAIN;
    const int x_stride = input && input->x_stride > 0 ? input->x_stride : (kind == XLKV_GEMV_INPUT_SWIGLU ? 2 * in : in);
    const __nv_bfloat16 *gain = input ? (const __nv_bfloat16 *)input->gain : nullptr;
    const float eps = input ? input->eps : 0.0f;
    switch (kind) {
    case XLKV_GEMV_INPUT_PLAIN:
        return launch_rows<XLKV_GEMV_INPUT_PLAIN>(y, x, x_stride, gain, eps, w, n, in, out, accumulate, stream);
    case XLKV_GEMV_INPUT_RMSNORM:
        return launch_rows<XLKV_GEMV_INPUT_RMSNORM>(y, x, x_stride, gain, eps, w, n, in, out, accumulate, stream);
    case XLKV_GEMV_INPUT_SWIGLU:
        return launch_rows<XLKV_GEMV_INPUT_SWIGLU>(y, x, x_stride, gain, eps, w, n, in, out, accumulate, stream);
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

int xlkv_cuda_gemv_fused(void *y, int y_is_f32, int accumulate, const void *x, const xlkv_cuda_gemv_input *input,
                         const void *w, int n, int in, int out, xlkv_dtype dt, void *stream) {
    if (!xlkv_cuda_gemv_input_supported(n, in, x, input, w, dt) || out <= 0) return (int)cudaErrorNotSupported;
    const __nv_bfloat16 *xb = (const __nv_bfloat16 *)x, *wb = (const __nv_bfloat16 *)w;
    if (y_is_f32)
        return launch_input<float>((float *)y, xb, input, wb, n, in, out, accumulate, (cudaStream_t)stream);
    return launch_input<__nv_bfloat16>((__nv_bfloat16 *)y, xb, input, wb, n, in, out, accumulate,
                                       (cudaStream_t)stream);
}

int xlkv_cuda_gemv(void *y, int y_is_f32, const void *x, const void *w, int n, int in, int out, xlkv_dtype dt,
                   void *stream) {
    return xlkv_cuda_gemv_fused(y, y_is_f32, 0, x, NULL, w, n, in, out, dt, stream);
}

} // extern "C"
