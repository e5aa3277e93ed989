/* backend/cuda/kernels_elementwise: the row-wise and element-wise kernels of a decoder step: embedding lookup,
 * rmsnorm, fused residual add + rmsnorm, residual add, RoPE, SwiGLU.
 *
 * All are memory-bound: 16-byte vector accesses when the rows allow (pointer 16-byte aligned, dims and strides
 * multiples of 4 fp32 / 8 bf16 elements), a scalar path otherwise. fp32 math throughout, the formulas of
 * backend/cpu/cpu_ops.c (rmsnorm: gain * (x * (1 / sqrtf(mean(x^2) + eps))); silu(g) = g * (1 / (1 + expf(-g)))). */
#include "backend/cuda/kernels_common.cuh"

using namespace xlkv_cuda;

namespace {

constexpr int ROW_THREADS = 256;

/* ---- embedding: one block per row ---- */
template <typename T, bool VEC>
__global__ void embedding_kernel(T *out, const T *table, const int *tokens, int dim) {
    const int r = blockIdx.x;
    const int token = tokens[r];
    T *dst = out + (size_t)r * dim;
    const T *src = table + (size_t)token * dim;
    if (token < 0) { /* invalid token: a zero row rather than an out-of-bounds read */
        for (int i = threadIdx.x; i < dim; i += blockDim.x) dst[i] = from_float<T>(0.0f);
        return;
    }
    if (VEC) {
        const int w = vec_width<T>::value;
        for (int i = threadIdx.x * w; i < dim; i += blockDim.x * w)
            *reinterpret_cast<uint4 *>(dst + i) = *reinterpret_cast<const uint4 *>(src + i);
    } else {
        for (int i = threadIdx.x; i < dim; i += blockDim.x) dst[i] = src[i];
    }
}

template <typename T>
int embedding(void *out, const void *table, const int *tokens, int n, int dim, cudaStream_t stream) {
    if (n <= 0 || dim <= 0) return 0;
    const bool vec = vector_ok<T>(out, dim, dim) && vector_ok<T>(table, dim, dim);
    static bool carveout_set = false; /* the first kernel of a decode step: prefer_shared_carveout */
    if (!carveout_set) {
        prefer_shared_carveout(embedding_kernel<T, true>);
        prefer_shared_carveout(embedding_kernel<T, false>);
        carveout_set = true;
    }
    if (vec)
        embedding_kernel<T, true><<<n, ROW_THREADS, 0, stream>>>((T *)out, (const T *)table, tokens, dim);
    else
        embedding_kernel<T, false><<<n, ROW_THREADS, 0, stream>>>((T *)out, (const T *)table, tokens, dim);
    return launch_status();
}

/* ---- rmsnorm, optionally fused with the residual add x += y first: one block per row ---- */
template <typename T, bool VEC, bool ADD>
__global__ void rmsnorm_kernel(T *out, T *x, const T *y, int y_stride, const T *gain, int dim, float eps) {
    __shared__ float scratch[32];
    const int r = blockIdx.x;
    T *xr = x + (size_t)r * dim;
    const T *yr = ADD ? y + (size_t)r * y_stride : nullptr;
    T *outr = out + (size_t)r * dim;
    float ss = 0.0f;
    if (VEC) {
        const int w = vec_width<T>::value;
        for (int i = threadIdx.x * w; i < dim; i += blockDim.x * w) {
            float xv[16 / sizeof(T)];
            load_vec<T>(xr + i, xv);
            if (ADD) {
                float yv[16 / sizeof(T)];
                load_vec<T>(yr + i, yv);
#pragma unroll
                for (int j = 0; j < w; j++) xv[j] = to_float<T>(from_float<T>(xv[j] + yv[j])); /* as stored */
                store_vec<T>(xr + i, xv);
            }
#pragma unroll
            for (int j = 0; j < w; j++) ss += xv[j] * xv[j];
        }
    } else {
        for (int i = threadIdx.x; i < dim; i += blockDim.x) {
            float xv = to_float<T>(xr[i]);
            if (ADD) {
                const T stored = from_float<T>(xv + to_float<T>(yr[i]));
                xr[i] = stored;
                xv = to_float<T>(stored);
            }
            ss += xv * xv;
        }
    }
    ss = block_sum(ss, scratch);
    const float inv = 1.0f / sqrtf(ss / (float)dim + eps);
    /* each thread re-reads only the elements it wrote itself (same index mapping), so no barrier is needed */
    if (VEC) {
        const int w = vec_width<T>::value;
        for (int i = threadIdx.x * w; i < dim; i += blockDim.x * w) {
            float xv[16 / sizeof(T)], gv[16 / sizeof(T)], ov[16 / sizeof(T)];
            load_vec<T>(xr + i, xv);
            load_vec<T>(gain + i, gv);
#pragma unroll
            for (int j = 0; j < w; j++) ov[j] = gv[j] * (inv * xv[j]);
            store_vec<T>(outr + i, ov);
        }
    } else {
        for (int i = threadIdx.x; i < dim; i += blockDim.x)
            outr[i] = from_float<T>(to_float<T>(gain[i]) * (inv * to_float<T>(xr[i])));
    }
}

template <typename T>
int rmsnorm(void *out, const void *x, const void *gain, int n, int dim, float eps, cudaStream_t stream) {
    if (n <= 0 || dim <= 0) return 0;
    const bool vec = vector_ok<T>(out, dim, dim) && vector_ok<T>(x, dim, dim) && vector_ok<T>(gain, dim, dim);
    if (vec)
        rmsnorm_kernel<T, true, false><<<n, ROW_THREADS, 0, stream>>>((T *)out, (T *)x, nullptr, 0, (const T *)gain,
                                                                     dim, eps);
    else
        rmsnorm_kernel<T, false, false><<<n, ROW_THREADS, 0, stream>>>((T *)out, (T *)x, nullptr, 0,
                                                                      (const T *)gain, dim, eps);
    return launch_status();
}

template <typename T>
int add_rmsnorm(void *x, const void *y, int y_stride, void *out, const void *gain, int n, int dim, float eps,
                cudaStream_t stream) {
    if (n <= 0 || dim <= 0) return 0;
    const bool vec = vector_ok<T>(out, dim, dim) && vector_ok<T>(x, dim, dim) && vector_ok<T>(gain, dim, dim) &&
                     vector_ok<T>(y, dim, y_stride);
    if (vec)
        rmsnorm_kernel<T, true, true><<<n, ROW_THREADS, 0, stream>>>((T *)out, (T *)x, (const T *)y, y_stride,
                                                                    (const T *)gain, dim, eps);
    else
        rmsnorm_kernel<T, false, true><<<n, ROW_THREADS, 0, stream>>>((T *)out, (T *)x, (const T *)y, y_stride,
                                                                     (const T *)gain, dim, eps);
    return launch_status();
}

/* ---- residual add: grid (column chunks, rows) ---- */
template <typename T, bool VEC> __global__ void add_kernel(T *x, const T *y, int y_stride, int dim) {
    const int r = blockIdx.y;
    T *xr = x + (size_t)r * dim;
    const T *yr = y + (size_t)r * y_stride;
    if (VEC) {
        const int w = vec_width<T>::value;
        const int i = (blockIdx.x * blockDim.x + threadIdx.x) * w;
        if (i >= dim) return;
        float xv[16 / sizeof(T)], yv[16 / sizeof(T)];
        load_vec<T>(xr + i, xv);
        load_vec<T>(yr + i, yv);
#pragma unroll
        for (int j = 0; j < w; j++) xv[j] += yv[j];
        store_vec<T>(xr + i, xv);
    } else {
        const int i = blockIdx.x * blockDim.x + threadIdx.x;
        if (i >= dim) return;
        xr[i] = from_float<T>(to_float<T>(xr[i]) + to_float<T>(yr[i]));
    }
}

template <typename T> int add(void *x, const void *y, int y_stride, int n, int dim, cudaStream_t stream) {
    if (n <= 0 || dim <= 0) return 0;
    if (n > 65535) return (int)cudaErrorInvalidValue;
    const bool vec = vector_ok<T>(x, dim, dim) && vector_ok<T>(y, dim, y_stride);
    const int per_thread = vec ? vec_width<T>::value : 1;
    const int elems = (dim + per_thread - 1) / per_thread;
    const dim3 grid((elems + ROW_THREADS - 1) / ROW_THREADS, n);
    if (vec)
        add_kernel<T, true><<<grid, ROW_THREADS, 0, stream>>>((T *)x, (const T *)y, y_stride, dim);
    else
        add_kernel<T, false><<<grid, ROW_THREADS, 0, stream>>>((T *)x, (const T *)y, y_stride, dim);
    return launch_status();
}

/* ---- RoPE: one thread per rotated pair ---- */
template <typename T>
__global__ void rope_kernel(T *x, int x_stride, int n, int n_heads, int head_dim, const int *positions,
                            const float *cos_table, const float *sin_table) {
    const int half = head_dim / 2;
    const long long pairs_per_row = (long long)n_heads * half;
    const long long idx = (long long)blockIdx.x * blockDim.x + threadIdx.x;
    if (idx >= pairs_per_row * n) return;
    const int r = (int)(idx / pairs_per_row);
    const int in_row = (int)(idx % pairs_per_row);
    const int h = in_row / half, i = in_row % half;
    const int pos = positions[r];
    if (pos < 0) return; /* padding row */
    const float c = cos_table[(size_t)pos * half + i], s = sin_table[(size_t)pos * half + i];
    T *v = x + (size_t)r * x_stride + (size_t)h * head_dim + 2 * i;
    const float a = to_float<T>(v[0]), b = to_float<T>(v[1]);
    v[0] = from_float<T>(a * c - b * s);
    v[1] = from_float<T>(a * s + b * c);
}

template <typename T>
int rope(void *x, int x_stride, int n, int n_heads, int head_dim, const int *positions, const float *cos_table,
         const float *sin_table, cudaStream_t stream) {
    const long long total = (long long)n * n_heads * (head_dim / 2);
    if (total <= 0) return 0;
    const long long blocks = (total + ROW_THREADS - 1) / ROW_THREADS;
    if (blocks > 0x7fffffffLL) return (int)cudaErrorInvalidValue;
    rope_kernel<T><<<(unsigned)blocks, ROW_THREADS, 0, stream>>>((T *)x, x_stride, n, n_heads, head_dim, positions,
                                                                 cos_table, sin_table);
    return launch_status();
}

/* ---- SwiGLU: grid (column chunks, rows); out rows are contiguous [n, hidden] ---- */
__device__ __forceinline__ float silu_times(float g, float u) { return g * (1.0f / (1.0f + expf(-g))) * u; }

template <typename T, bool VEC>
__global__ void swiglu_kernel(T *out, const T *gate, const T *up, int in_stride, int hidden) {
    const int r = blockIdx.y;
    const T *gr = gate + (size_t)r * in_stride;
    const T *ur = up + (size_t)r * in_stride;
    T *outr = out + (size_t)r * hidden;
    if (VEC) {
        const int w = vec_width<T>::value;
        const int i = (blockIdx.x * blockDim.x + threadIdx.x) * w;
        if (i >= hidden) return;
        float gv[16 / sizeof(T)], uv[16 / sizeof(T)];
        load_vec<T>(gr + i, gv);
        load_vec<T>(ur + i, uv);
#pragma unroll
        for (int j = 0; j < w; j++) gv[j] = silu_times(gv[j], uv[j]);
        store_vec<T>(outr + i, gv);
    } else {
        const int i = blockIdx.x * blockDim.x + threadIdx.x;
        if (i >= hidden) return;
        outr[i] = from_float<T>(silu_times(to_float<T>(gr[i]), to_float<T>(ur[i])));
    }
}

template <typename T>
int swiglu(void *out, const void *gate, const void *up, int in_stride, int n, int hidden, cudaStream_t stream) {
    if (n <= 0 || hidden <= 0) return 0;
    if (n > 65535) return (int)cudaErrorInvalidValue;
    const bool vec =
        vector_ok<T>(out, hidden, hidden) && vector_ok<T>(gate, hidden, in_stride) && vector_ok<T>(up, hidden, in_stride);
    const int per_thread = vec ? vec_width<T>::value : 1;
    const int elems = (hidden + per_thread - 1) / per_thread;
    const dim3 grid((elems + ROW_THREADS - 1) / ROW_THREADS, n);
    if (vec)
        swiglu_kernel<T, true><<<grid, ROW_THREADS, 0, stream>>>((T *)out, (const T *)gate, (const T *)up, in_stride,
                                                                 hidden);
    else
        swiglu_kernel<T, false><<<grid, ROW_THREADS, 0, stream>>>((T *)out, (const T *)gate, (const T *)up,
                                                                  in_stride, hidden);
    return launch_status();
}

} // namespace

extern "C" {

int xlkv_cuda_embedding(void *out, const void *table, const int *tokens, int n, int dim, xlkv_dtype dt, void *stream) {
    XLKV_DISPATCH_DTYPE(dt, embedding, out, table, tokens, n, dim, (cudaStream_t)stream);
}

int xlkv_cuda_rmsnorm(void *out, const void *x, const void *gain, int n, int dim, float eps, xlkv_dtype dt,
                      void *stream) {
    XLKV_DISPATCH_DTYPE(dt, rmsnorm, out, x, gain, n, dim, eps, (cudaStream_t)stream);
}

int xlkv_cuda_add_rmsnorm(void *x, const void *y, int y_stride, void *out, const void *gain, int n, int dim, float eps,
                          xlkv_dtype dt, void *stream) {
    XLKV_DISPATCH_DTYPE(dt, add_rmsnorm, x, y, y_stride, out, gain, n, dim, eps, (cudaStream_t)stream);
}

int xlkv_cuda_add(void *x, const void *y, int y_stride, int n, int dim, xlkv_dtype dt, void *stream) {
    XLKV_DISPATCH_DTYPE(dt, add, x, y, y_stride, n, dim, (cudaStream_t)stream);
}

int xlkv_cuda_rope(void *x, int x_stride, int n, int n_heads, int head_dim, const int *positions,
                   const float *cos_table, const float *sin_table, xlkv_dtype dt, void *stream) {
    XLKV_DISPATCH_DTYPE(dt, rope, x, x_stride, n, n_heads, head_dim, positions, cos_table, sin_table,
                        (cudaStream_t)stream);
}

int xlkv_cuda_swiglu(void *out, const void *gate, const void *up, int in_stride, int n, int hidden, xlkv_dtype dt,
                     void *stream) {
    XLKV_DISPATCH_DTYPE(dt, swiglu, out, gate, up, in_stride, n, hidden, (cudaStream_t)stream);
}

} // extern "C"
