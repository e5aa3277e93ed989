/* backend/cuda/kernels_kv: writes into the paged KV pool (see xlkv_paged_kv in cuda_kernels.h): K rows rotated by
 * RoPE at their position together with V rows (kv_write), the same fused with RoPE on the queries of the row
 * (rope_kv_write: one launch after the qkv product instead of two), and zeroing a range of positions (kv_zero).
 * rope_kv_write rotates with rope_pair (kernels_common.cuh), as the fused decode kernel does, so both write the same
 * K bits (kernels_attention_decode.cu).
 *
 * Rows with a negative sequence or position are skipped (padding rows of a fixed-size batch). */
#include "backend/cuda/kernels_common.cuh"

using namespace xlkv_cuda;

namespace {

constexpr int KV_THREADS = 128;

/* One block per row; threads over rotated pairs (keys) and elements (values). */
template <typename T>
__global__ void kv_write_kernel(T *pool, pool_view view, int slot, const T *k, const T *v, int kv_stride,
                                const int *row_seq, const int *row_pos, int head_dim, const float *cos_table,
                                const float *sin_table) {
    const int r = blockIdx.x;
    const int seq = row_seq[r], pos = row_pos[r];
    if (seq < 0 || pos < 0) return;
    T *k_dst = pool + pool_row_offset(view, seq, pos, slot, 0);
    T *v_dst = pool + pool_row_offset(view, seq, pos, slot, 1);
    const T *k_src = k + (size_t)r * kv_stride;
    const T *v_src = v + (size_t)r * kv_stride;
    const int kv_dim = view.kv_dim;
    const int half = head_dim / 2;
    const int n_heads = kv_dim / head_dim;
    for (int idx = threadIdx.x; idx < n_heads * half; idx += blockDim.x) {
        const int h = idx / half, i = idx % half;
        const float c = cos_table[(size_t)pos * half + i], s = sin_table[(size_t)pos * half + i];
        const int col = h * head_dim + 2 * i;
        const float a = to_float<T>(k_src[col]), b = to_float<T>(k_src[col + 1]);
        k_dst[col] = from_float<T>(a * c - b * s);
        k_dst[col + 1] = from_float<T>(a * s + b * c);
    }
    /* columns RoPE leaves alone: the odd last element of an odd head_dim, and any tail past n_heads * head_dim */
    if (head_dim % 2 != 0)
        for (int h = threadIdx.x; h < n_heads; h += blockDim.x) k_dst[h * head_dim + head_dim - 1] = k_src[h * head_dim + head_dim - 1];
    for (int col = n_heads * head_dim + threadIdx.x; col < kv_dim; col += blockDim.x) k_dst[col] = k_src[col];
    for (int col = threadIdx.x; col < kv_dim; col += blockDim.x) v_dst[col] = v_src[col];
}

template <typename T>
int kv_write(const xlkv_paged_kv *kv, int slot, const void *k, const void *v, int kv_stride, int n, const int *row_seq,
             const int *row_pos, int head_dim, const float *cos_table, const float *sin_table, cudaStream_t stream) {
    if (n <= 0) return 0;
    if (!kv || head_dim <= 0 || slot < 0 || slot >= kv->n_slots) return (int)cudaErrorInvalidValue;
    kv_write_kernel<T><<<n, KV_THREADS, 0, stream>>>((T *)kv->pool, make_pool_view(kv), slot, (const T *)k,
                                                     (const T *)v, kv_stride, row_seq, row_pos, head_dim, cos_table,
                                                     sin_table);
    return launch_status();
}

/* One block per row: the query heads rotated in place (rope_kernel's formula), then the row's K and V as
 * kv_write_kernel writes them (kv may be absent: a layer without KV). */
template <typename T>
__global__ void rope_kv_write_kernel(T *qkv, int qkv_stride, int n_heads, int head_dim, const int *row_seq,
                                     const int *row_pos, const float *cos_table, const float *sin_table, T *pool,
                                     pool_view view, int has_kv, int slot, int k_col, int v_col) {
    const int r = blockIdx.x;
    const int pos = row_pos[r];
    if (pos < 0) return; /* padding row: neither RoPE nor kv_write touch it */
    const int half = head_dim / 2;
    T *row = qkv + (size_t)r * qkv_stride;
    for (int idx = threadIdx.x; idx < n_heads * half; idx += blockDim.x) {
        const int h = idx / half, i = idx % half;
        T *v = row + (size_t)h * head_dim + 2 * i;
        rope_pair<T>(v, cos_table[(size_t)pos * half + i], sin_table[(size_t)pos * half + i], v);
    }
    const int seq = row_seq[r];
    if (!has_kv || seq < 0) return;
    T *k_dst = pool + pool_row_offset(view, seq, pos, slot, 0);
    T *v_dst = pool + pool_row_offset(view, seq, pos, slot, 1);
    const T *k_src = row + k_col;
    const T *v_src = row + v_col;
    const int kv_dim = view.kv_dim;
    const int kv_heads = kv_dim / head_dim;
    for (int idx = threadIdx.x; idx < kv_heads * half; idx += blockDim.x) {
        const int h = idx / half, i = idx % half;
        const int col = h * head_dim + 2 * i;
        rope_pair<T>(k_src + col, cos_table[(size_t)pos * half + i], sin_table[(size_t)pos * half + i], k_dst + col);
    }
    if (head_dim % 2 != 0)
        for (int h = threadIdx.x; h < kv_heads; h += blockDim.x)
            k_dst[h * head_dim + head_dim - 1] = k_src[h * head_dim + head_dim - 1];
    for (int col = kv_heads * head_dim + threadIdx.x; col < kv_dim; col += blockDim.x) k_dst[col] = k_src[col];
    for (int col = threadIdx.x; col < kv_dim; col += blockDim.x) v_dst[col] = v_src[col];
}

template <typename T>
int rope_kv_write(void *qkv, int qkv_stride, int n, int n_heads, int head_dim, const int *row_seq, const int *row_pos,
                  const float *cos_table, const float *sin_table, const xlkv_paged_kv *kv, int slot, int k_col,
                  int v_col, cudaStream_t stream) {
    if (n <= 0) return 0;
    if (head_dim <= 0 || n_heads < 0 || qkv_stride < n_heads * head_dim) return (int)cudaErrorInvalidValue;
    pool_view view = {};
    if (kv) {
        if (slot < 0 || slot >= kv->n_slots || k_col < 0 || v_col < 0 || k_col + kv->kv_dim > qkv_stride ||
            v_col + kv->kv_dim > qkv_stride)
            return (int)cudaErrorInvalidValue;
        view = make_pool_view(kv);
    }
    rope_kv_write_kernel<T><<<n, KV_THREADS, 0, stream>>>((T *)qkv, qkv_stride, n_heads, head_dim, row_seq, row_pos,
                                                          cos_table, sin_table, kv ? (T *)kv->pool : nullptr, view,
                                                          kv != nullptr, slot, k_col, v_col);
    return launch_status();
}

/* grid (positions); threads over both K and V rows of the position. */
template <typename T> __global__ void kv_zero_kernel(T *pool, pool_view view, int slot, int seq, int pos0) {
    const int pos = pos0 + blockIdx.x;
    T *k_dst = pool + pool_row_offset(view, seq, pos, slot, 0);
    T *v_dst = pool + pool_row_offset(view, seq, pos, slot, 1);
    for (int col = threadIdx.x; col < view.kv_dim; col += blockDim.x) {
        k_dst[col] = from_float<T>(0.0f);
        v_dst[col] = from_float<T>(0.0f);
    }
}

template <typename T> int kv_zero(const xlkv_paged_kv *kv, int slot, int seq, int pos0, int n, cudaStream_t stream) {
    if (n <= 0) return 0;
    if (!kv || slot < 0 || slot >= kv->n_slots || seq < 0 || pos0 < 0) return (int)cudaErrorInvalidValue;
    kv_zero_kernel<T><<<n, KV_THREADS, 0, stream>>>((T *)kv->pool, make_pool_view(kv), slot, seq, pos0);
    return launch_status();
}

} // namespace

extern "C" {

int xlkv_cuda_kv_write(const xlkv_paged_kv *kv, int slot, const void *k, const void *v, int kv_stride, int n,
                       const int *row_seq, const int *row_pos, int head_dim, const float *cos_table,
                       const float *sin_table, xlkv_dtype dt, void *stream) {
    XLKV_DISPATCH_DTYPE(dt, kv_write, kv, slot, k, v, kv_stride, n, row_seq, row_pos, head_dim, cos_table, sin_table,
                        (cudaStream_t)stream);
}

int xlkv_cuda_rope_kv_write(void *qkv, int qkv_stride, int n, int n_heads, int head_dim, const int *row_seq,
                            const int *row_pos, const float *cos_table, const float *sin_table,
                            const xlkv_paged_kv *kv, int slot, int k_col, int v_col, xlkv_dtype dt, void *stream) {
    XLKV_DISPATCH_DTYPE(dt, rope_kv_write, qkv, qkv_stride, n, n_heads, head_dim, row_seq, row_pos, cos_table,
                        sin_table, kv, slot, k_col, v_col, (cudaStream_t)stream);
}

int xlkv_cuda_kv_zero(const xlkv_paged_kv *kv, int slot, int seq, int pos0, int n, xlkv_dtype dt, void *stream) {
    XLKV_DISPATCH_DTYPE(dt, kv_zero, kv, slot, seq, pos0, n, (cudaStream_t)stream);
}

} // extern "C"
