/* tests/cuda/test_cuda_kernels: every launcher of backend/cuda/cuda_kernels.h on the GPU against the CPU reference
 * (backend/cpu ops, or a loop written here from the definition).
 *
 * Inputs are random (never zero); bf16 inputs are rounded to bf16 on the host first and the fp32 reference runs on
 * the rounded values. Outputs are poisoned with NaN before each launch, so an element the kernel forgot shows as a
 * failure. Error = max |gpu - ref| / max |ref| (absolute when the reference is all zeros); tolerances: fp32 1e-5
 * (attention 2e-5), bf16 1e-2. Every check prints one line (kernel, dtype, shape, error, tolerance) for the GPU log;
 * a failing check fails the test. Attention runs over a paged pool with two sequences, two slots and a shuffled block
 * table, so an addressing error shows. Needs a GPU: labelled "cuda", run by `make test-cuda`. */
#include <cuda_runtime_api.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "backend/backend.h"
#include "backend/cuda/cuda_kernels.h"
#include "model/float_formats.h"
#include "testutil.h"
#include "cuda_testutil.h"

#define TOL_F32 1e-5
#define TOL_F32_ATTENTION 2e-5
#define TOL_BF16 1e-2


static unsigned long long rng_state = 0x1234567ull;
static unsigned rng_u32(void) {
    rng_state = rng_state * 6364136223846793005ull + 1442695040888963407ull;
    return (unsigned)(rng_state >> 33);
}
/* uniform in [-1, 1] without zero */
static float uniform_nonzero(void) {
    float v;
    do v = (float)(rng_u32() & 0xFFFFFF) / 8388608.0f - 1.0f;
    while (v == 0.0f);
    return v;
}

static const char *dt_name(xlkv_dtype dt) { return dt == XLKV_DTYPE_F32 ? "f32" : "bf16"; }
static size_t dt_size(xlkv_dtype dt) { return dt == XLKV_DTYPE_F32 ? 4 : 2; }
static double tol_for(xlkv_dtype dt, double f32_tol) { return dt == XLKV_DTYPE_F32 ? f32_tol : TOL_BF16; }

static float round_one(float v, xlkv_dtype dt) {
    return dt == XLKV_DTYPE_F32 ? v : xlkv_bf16_to_f32(xlkv_f32_to_bf16(v));
}
static void round_all(float *a, size_t n, xlkv_dtype dt) {
    for (size_t i = 0; i < n; i++) a[i] = round_one(a[i], dt);
}
/* random values, already representable in dt */
static float *random_host(size_t n, xlkv_dtype dt) {
    float *a = malloc((n ? n : 1) * sizeof *a);
    assert_non_null(a);
    for (size_t i = 0; i < n; i++) a[i] = round_one(uniform_nonzero(), dt);
    return a;
}

static void *device_alloc(size_t bytes) {
    void *d = NULL;
    CK(cudaMalloc(&d, bytes ? bytes : 1));
    return d;
}
static void *device_poisoned(size_t n, xlkv_dtype dt) {
    void *d = device_alloc(n * dt_size(dt));
    CK(cudaMemset(d, 0xFF, n * dt_size(dt))); /* all-ones: NaN in fp32 and bf16 */
    return d;
}
static void upload(void *d, const float *a, size_t n, xlkv_dtype dt) {
    if (dt == XLKV_DTYPE_F32) {
        CK(cudaMemcpy(d, a, n * sizeof(float), cudaMemcpyHostToDevice));
        return;
    }
    uint16_t *h = malloc((n ? n : 1) * sizeof *h);
    assert_non_null(h);
    for (size_t i = 0; i < n; i++) h[i] = xlkv_f32_to_bf16(a[i]);
    CK(cudaMemcpy(d, h, n * sizeof *h, cudaMemcpyHostToDevice));
    free(h);
}
static void *to_device(const float *a, size_t n, xlkv_dtype dt) {
    void *d = device_alloc(n * dt_size(dt));
    upload(d, a, n, dt);
    return d;
}
static float *from_device(const void *d, size_t n, xlkv_dtype dt) {
    float *a = malloc((n ? n : 1) * sizeof *a);
    assert_non_null(a);
    if (dt == XLKV_DTYPE_F32) {
        CK(cudaMemcpy(a, d, n * sizeof(float), cudaMemcpyDeviceToHost));
        return a;
    }
    uint16_t *h = malloc((n ? n : 1) * sizeof *h);
    assert_non_null(h);
    CK(cudaMemcpy(h, d, n * sizeof *h, cudaMemcpyDeviceToHost));
    for (size_t i = 0; i < n; i++) a[i] = xlkv_bf16_to_f32(h[i]);
    free(h);
    return a;
}
static int *ints_to_device(const int *a, size_t n) {
    int *d = device_alloc(n * sizeof *a);
    CK(cudaMemcpy(d, a, n * sizeof *a, cudaMemcpyHostToDevice));
    return d;
}
static int *ints_from_device(const int *d, size_t n) {
    int *a = malloc((n ? n : 1) * sizeof *a);
    assert_non_null(a);
    CK(cudaMemcpy(a, d, n * sizeof *a, cudaMemcpyDeviceToHost));
    return a;
}

/* Compares, prints one line; returns 1 when within tolerance and finite. *worst_out: the worst element. */
static int check_close(const char *kernel, xlkv_dtype dt, const char *shape, const float *got, const float *ref,
                       size_t n, double tol, size_t *worst_out) {
    double max_diff = 0.0, max_ref = 0.0;
    size_t not_finite = 0, worst = 0;
    for (size_t i = 0; i < n; i++) {
        if (!isfinite(got[i])) {
            if (not_finite++ == 0) worst = i;
            continue;
        }
        const double diff = fabs((double)got[i] - (double)ref[i]);
        if (diff > max_diff) {
            max_diff = diff;
            if (!not_finite) worst = i;
        }
        if (fabs((double)ref[i]) > max_ref) max_ref = fabs((double)ref[i]);
    }
    const double err = max_ref > 0.0 ? max_diff / max_ref : max_diff;
    const int ok = not_finite == 0 && err <= tol;
    printf("[%s] %-22s %-4s %-58s err %.3e (tol %.1e)%s\n", ok ? "PASS" : "FAIL", kernel, dt_name(dt), shape, err, tol,
           not_finite ? " NOT FINITE" : "");
    if (!ok)
        printf("       worst element %zu: gpu %g ref %g (%zu non-finite)\n", worst, (double)got[worst], (double)ref[worst],
               not_finite);
    fflush(stdout);
    if (worst_out) *worst_out = worst;
    return ok;
}

/* Compares, prints one line, fails the test when out of tolerance or when an element is not finite. */
static void expect_close(const char *kernel, xlkv_dtype dt, const char *shape, const float *got, const float *ref,
                         size_t n, double tol) {
    size_t worst = 0;
    if (!check_close(kernel, dt, shape, got, ref, n, tol, &worst))
        fail_msg("%s %s %s: out of tolerance %.1e or not finite; element %zu: gpu %g ref %g", kernel, dt_name(dt), shape,
                 tol, worst, (double)got[worst], (double)ref[worst]);
}

static void expect_ints(const char *kernel, const char *shape, const int *got, const int *ref, int n) {
    int mismatches = 0, first = -1;
    for (int i = 0; i < n; i++)
        if (got[i] != ref[i] && mismatches++ == 0) first = i;
    printf("[%s] %-22s      %-58s %d/%d mismatches\n", mismatches ? "FAIL" : "PASS", kernel, shape, mismatches, n);
    fflush(stdout);
    if (mismatches) fail_msg("%s %s: row %d: gpu %d, expected %d", kernel, shape, first, got[first], ref[first]);
}

static int setup_device(void **state) {
    (void)state;
    int count = 0;
    cudaError_t err = cudaGetDeviceCount(&count);
    if (err != cudaSuccess || count == 0) {
        printf("NO CUDA DEVICE (%s): these tests need a GPU\n", cudaGetErrorString(err));
        return -1;
    }
    return 0;
}

/* fp32 RoPE tables [positions, head_dim / 2], theta 10000 */
static void rope_tables(int positions, int head_dim, float **cos_out, float **sin_out) {
    const int half = head_dim / 2;
    float *c = malloc((size_t)positions * half * sizeof *c), *s = malloc((size_t)positions * half * sizeof *s);
    assert_true(c && s);
    for (int p = 0; p < positions; p++)
        for (int i = 0; i < half; i++) {
            const double angle = p * pow(10000.0, -2.0 * i / head_dim);
            c[(size_t)p * half + i] = (float)cos(angle);
            s[(size_t)p * half + i] = (float)sin(angle);
        }
    *cos_out = c;
    *sin_out = s;
}

/* ---------------------------------------------------------------- element-wise */

static void elementwise_kernels_match_cpu(void **state) {
    (void)state;
    const xlkv_backend_ops *ops = xlkv_backend_cpu();
    const int shapes[][2] = {{3, 2048}, {2, 37}, {1, 5632}, {4, 24}}; /* (n, dim): vector and scalar paths */
    for (int dti = 0; dti < 2; dti++) {
        const xlkv_dtype dt = dti ? XLKV_DTYPE_BF16 : XLKV_DTYPE_F32;
        const double tol = tol_for(dt, TOL_F32);
        for (size_t si = 0; si < sizeof shapes / sizeof shapes[0]; si++) {
            const int n = shapes[si][0], dim = shapes[si][1];
            const int y_stride = dim % 8 == 0 ? dim + 8 : dim + 3; /* strided y as in a fused product */
            char shape[96];
            snprintf(shape, sizeof shape, "n=%d dim=%d y_stride=%d", n, dim, y_stride);
            const size_t nd = (size_t)n * dim;

            /* embedding */
            const int vocab = 50;
            float *table = random_host((size_t)vocab * dim, dt);
            int tokens[4] = {7, 49, 0, 23};
            void *d_table = to_device(table, (size_t)vocab * dim, dt), *d_out = device_poisoned(nd, dt);
            int *d_tokens = ints_to_device(tokens, (size_t)n);
            CK_LAUNCH(xlkv_cuda_embedding(d_out, d_table, d_tokens, n, dim, dt, NULL));
            float *got = from_device(d_out, nd, dt), *ref = malloc(nd * sizeof *ref);
            for (int r = 0; r < n; r++) memcpy(ref + (size_t)r * dim, table + (size_t)tokens[r] * dim, dim * sizeof *ref);
            expect_close("embedding", dt, shape, got, ref, nd, 0.0);
            free(got);
            CK(cudaFree(d_table));
            CK(cudaFree(d_tokens));
            free(table);

            /* rmsnorm */
            float *x = random_host(nd, dt), *gain = random_host((size_t)dim, dt);
            void *d_x = to_device(x, nd, dt), *d_gain = to_device(gain, (size_t)dim, dt);
            CK(cudaMemset(d_out, 0xFF, nd * dt_size(dt)));
            CK_LAUNCH(xlkv_cuda_rmsnorm(d_out, d_x, d_gain, n, dim, 1e-5f, dt, NULL));
            got = from_device(d_out, nd, dt);
            ops->rmsnorm(ref, x, gain, n, dim, 1e-5f);
            expect_close("rmsnorm", dt, shape, got, ref, nd, tol);
            free(got);

            /* add_rmsnorm: x += y (stored in dt), out = rmsnorm(x) */
            float *y = random_host((size_t)n * y_stride, dt);
            void *d_y = to_device(y, (size_t)n * y_stride, dt);
            CK(cudaMemset(d_out, 0xFF, nd * dt_size(dt)));
            CK_LAUNCH(xlkv_cuda_add_rmsnorm(d_x, d_y, y_stride, d_out, d_gain, n, dim, 1e-5f, dt, NULL));
            float *x_sum = malloc(nd * sizeof *x_sum);
            for (int r = 0; r < n; r++)
                for (int i = 0; i < dim; i++)
                    x_sum[(size_t)r * dim + i] = round_one(x[(size_t)r * dim + i] + y[(size_t)r * y_stride + i], dt);
            got = from_device(d_x, nd, dt);
            expect_close("add_rmsnorm (x)", dt, shape, got, x_sum, nd, tol);
            free(got);
            got = from_device(d_out, nd, dt);
            ops->rmsnorm(ref, x_sum, gain, n, dim, 1e-5f);
            expect_close("add_rmsnorm (out)", dt, shape, got, ref, nd, tol);
            free(got);

            /* add: x_sum += y */
            CK_LAUNCH(xlkv_cuda_add(d_x, d_y, y_stride, n, dim, dt, NULL));
            for (int r = 0; r < n; r++)
                for (int i = 0; i < dim; i++) ref[(size_t)r * dim + i] = x_sum[(size_t)r * dim + i] + y[(size_t)r * y_stride + i];
            got = from_device(d_x, nd, dt);
            expect_close("add", dt, shape, got, ref, nd, tol);
            free(got);

            /* swiglu from a fused [n, 2 * dim (+pad)] buffer: gate = buf, up = buf + dim */
            const int in_stride = 2 * y_stride;
            float *fused = random_host((size_t)n * in_stride, dt);
            void *d_fused = to_device(fused, (size_t)n * in_stride, dt);
            CK(cudaMemset(d_out, 0xFF, nd * dt_size(dt)));
            CK_LAUNCH(xlkv_cuda_swiglu(d_out, d_fused, (char *)d_fused + (size_t)dim * dt_size(dt), in_stride, n, dim, dt,
                                       NULL));
            float *up = malloc(nd * sizeof *up);
            for (int r = 0; r < n; r++)
                for (int i = 0; i < dim; i++) {
                    ref[(size_t)r * dim + i] = fused[(size_t)r * in_stride + i];
                    up[(size_t)r * dim + i] = fused[(size_t)r * in_stride + dim + i];
                }
            ops->swiglu(ref, up, nd);
            got = from_device(d_out, nd, dt);
            expect_close("swiglu", dt, shape, got, ref, nd, tol);
            free(got);

            free(x);
            free(gain);
            free(y);
            free(x_sum);
            free(fused);
            free(up);
            free(ref);
            CK(cudaFree(d_x));
            CK(cudaFree(d_gain));
            CK(cudaFree(d_y));
            CK(cudaFree(d_fused));
            CK(cudaFree(d_out));
        }
    }
}

static void rope_matches_cpu(void **state) {
    (void)state;
    const xlkv_backend_ops *ops = xlkv_backend_cpu();
    const int cases[][3] = {{5, 32, 64}, {3, 4, 16}, {2, 2, 8}}; /* n, n_heads, head_dim */
    for (int dti = 0; dti < 2; dti++) {
        const xlkv_dtype dt = dti ? XLKV_DTYPE_BF16 : XLKV_DTYPE_F32;
        for (size_t ci = 0; ci < sizeof cases / sizeof cases[0]; ci++) {
            const int n = cases[ci][0], n_heads = cases[ci][1], head_dim = cases[ci][2];
            const int width = n_heads * head_dim, x_stride = width + 2 * 64; /* q columns of a fused qkv */
            const int max_pos = 300;
            float *cos_t, *sin_t;
            rope_tables(max_pos, head_dim, &cos_t, &sin_t);
            int positions[5] = {0, 299, 17, 1, 128};
            float *x = random_host((size_t)n * x_stride, dt);
            void *d_x = to_device(x, (size_t)n * x_stride, dt);
            float *d_cos = to_device(cos_t, (size_t)max_pos * head_dim / 2, XLKV_DTYPE_F32);
            float *d_sin = to_device(sin_t, (size_t)max_pos * head_dim / 2, XLKV_DTYPE_F32);
            int *d_pos = ints_to_device(positions, (size_t)n);
            CK_LAUNCH(xlkv_cuda_rope(d_x, x_stride, n, n_heads, head_dim, d_pos, d_cos, d_sin, dt, NULL));
            float *got = from_device(d_x, (size_t)n * x_stride, dt);
            float *ref = malloc((size_t)n * x_stride * sizeof *ref);
            memcpy(ref, x, (size_t)n * x_stride * sizeof *ref);
            for (int r = 0; r < n; r++)
                ops->rope(ref + (size_t)r * x_stride, 1, n_heads, head_dim, positions[r], cos_t, sin_t);
            char shape[96];
            snprintf(shape, sizeof shape, "n=%d heads=%d head_dim=%d stride=%d", n, n_heads, head_dim, x_stride);
            expect_close("rope", dt, shape, got, ref, (size_t)n * x_stride, tol_for(dt, TOL_F32)); /* pad untouched */
            free(got);
            free(ref);
            free(x);
            free(cos_t);
            free(sin_t);
            CK(cudaFree(d_x));
            CK(cudaFree(d_cos));
            CK(cudaFree(d_sin));
            CK(cudaFree(d_pos));
        }
    }
}

/* ---------------------------------------------------------------- paged pool */

typedef struct host_pool {
    int n_slots, block_size, kv_dim, n_seqs, max_blocks_per_seq, n_blocks;
    float *data;       /* [n_blocks][n_slots][2][block_size][kv_dim], values representable in dt */
    int *block_tables; /* [n_seqs][max_blocks_per_seq], a shuffled permutation of the blocks */
} host_pool;

static host_pool make_host_pool(int n_slots, int block_size, int kv_dim, int n_seqs, int capacity, xlkv_dtype dt) {
    host_pool p = {.n_slots = n_slots, .block_size = block_size, .kv_dim = kv_dim, .n_seqs = n_seqs};
    p.max_blocks_per_seq = (capacity + block_size - 1) / block_size;
    p.n_blocks = n_seqs * p.max_blocks_per_seq;
    p.data = random_host((size_t)p.n_blocks * n_slots * 2 * block_size * kv_dim, dt);
    p.block_tables = malloc((size_t)p.n_blocks * sizeof *p.block_tables);
    assert_non_null(p.block_tables);
    for (int i = 0; i < p.n_blocks; i++) p.block_tables[i] = i;
    for (int i = p.n_blocks - 1; i > 0; i--) { /* Fisher-Yates */
        const int j = (int)(rng_u32() % (unsigned)(i + 1)), t = p.block_tables[i];
        p.block_tables[i] = p.block_tables[j];
        p.block_tables[j] = t;
    }
    return p;
}
static size_t host_pool_elems(const host_pool *p) {
    return (size_t)p->n_blocks * p->n_slots * 2 * p->block_size * p->kv_dim;
}
static float *host_pool_row(const host_pool *p, int seq, int pos, int slot, int kv) {
    const int block = p->block_tables[seq * p->max_blocks_per_seq + pos / p->block_size];
    return p->data + ((((size_t)block * p->n_slots + slot) * 2 + kv) * p->block_size + pos % p->block_size) * p->kv_dim;
}
/* contiguous [n_pos, kv_dim] keys (kv 0) or values (kv 1) of a sequence */
static float *host_pool_gather(const host_pool *p, int seq, int slot, int kv, int n_pos) {
    float *out = malloc((size_t)(n_pos ? n_pos : 1) * p->kv_dim * sizeof *out);
    assert_non_null(out);
    for (int pos = 0; pos < n_pos; pos++)
        memcpy(out + (size_t)pos * p->kv_dim, host_pool_row(p, seq, pos, slot, kv), p->kv_dim * sizeof *out);
    return out;
}

typedef struct device_pool {
    xlkv_paged_kv kv;
    void *pool;
    int *tables;
} device_pool;
static device_pool upload_pool(const host_pool *p, xlkv_dtype dt) {
    device_pool d;
    d.pool = to_device(p->data, host_pool_elems(p), dt);
    d.tables = ints_to_device(p->block_tables, (size_t)p->n_blocks);
    d.kv = (xlkv_paged_kv){.pool = d.pool, .n_slots = p->n_slots, .block_size = p->block_size, .kv_dim = p->kv_dim,
                           .block_tables = d.tables, .max_blocks_per_seq = p->max_blocks_per_seq};
    return d;
}
static void free_device_pool(device_pool *d) {
    CK(cudaFree(d->pool));
    CK(cudaFree(d->tables));
}
static void free_host_pool(host_pool *p) {
    free(p->data);
    free(p->block_tables);
}

static void kv_write_and_zero_match_host(void **state) {
    (void)state;
    const xlkv_backend_ops *ops = xlkv_backend_cpu();
    const int cases[][3] = {{4, 2, 16}, {1, 4, 64}, {3, 1, 8}}; /* block_size, n_kv_heads, head_dim */
    for (int dti = 0; dti < 2; dti++) {
        const xlkv_dtype dt = dti ? XLKV_DTYPE_BF16 : XLKV_DTYPE_F32;
        for (size_t ci = 0; ci < sizeof cases / sizeof cases[0]; ci++) {
            const int block_size = cases[ci][0], n_kv_heads = cases[ci][1], head_dim = cases[ci][2];
            const int kv_dim = n_kv_heads * head_dim, capacity = 16, slot = 1;
            host_pool hp = make_host_pool(2, block_size, kv_dim, 2, capacity, dt);
            device_pool dp = upload_pool(&hp, dt);
            float *cos_t, *sin_t;
            rope_tables(capacity, head_dim, &cos_t, &sin_t);
            float *d_cos = to_device(cos_t, (size_t)capacity * head_dim / 2, XLKV_DTYPE_F32);
            float *d_sin = to_device(sin_t, (size_t)capacity * head_dim / 2, XLKV_DTYPE_F32);
            enum { N_ROWS = 5 };
            const int row_seq[N_ROWS] = {0, 1, 0, 1, 0}, row_pos[N_ROWS] = {0, 3, 7, 15, 9};
            const int kv_stride = 2 * kv_dim + 8; /* k and v columns of a fused qkv-like buffer */
            float *kv_rows = random_host((size_t)N_ROWS * kv_stride, dt);
            void *d_rows = to_device(kv_rows, (size_t)N_ROWS * kv_stride, dt);
            int *d_seq = ints_to_device(row_seq, N_ROWS), *d_pos = ints_to_device(row_pos, N_ROWS);
            CK_LAUNCH(xlkv_cuda_kv_write(&dp.kv, slot, d_rows, (char *)d_rows + (size_t)kv_dim * dt_size(dt), kv_stride,
                                         N_ROWS, d_seq, d_pos, head_dim, d_cos, d_sin, dt, NULL));
            for (int r = 0; r < N_ROWS; r++) {
                float *k_dst = host_pool_row(&hp, row_seq[r], row_pos[r], slot, 0);
                float *v_dst = host_pool_row(&hp, row_seq[r], row_pos[r], slot, 1);
                memcpy(k_dst, kv_rows + (size_t)r * kv_stride, kv_dim * sizeof *k_dst);
                ops->rope(k_dst, 1, n_kv_heads, head_dim, row_pos[r], cos_t, sin_t);
                round_all(k_dst, (size_t)kv_dim, dt);
                memcpy(v_dst, kv_rows + (size_t)r * kv_stride + kv_dim, kv_dim * sizeof *v_dst);
            }
            char shape[96];
            snprintf(shape, sizeof shape, "block=%d kv_heads=%d head_dim=%d (whole pool)", block_size, n_kv_heads,
                     head_dim);
            float *got = from_device(dp.pool, host_pool_elems(&hp), dt);
            expect_close("kv_write", dt, shape, got, hp.data, host_pool_elems(&hp), tol_for(dt, TOL_F32));
            memcpy(hp.data, got, host_pool_elems(&hp) * sizeof *got); /* exact baseline for kv_zero */
            free(got);

            /* zero positions [2, 11) of sequence 1, slot 0 */
            CK_LAUNCH(xlkv_cuda_kv_zero(&dp.kv, 0, 1, 2, 9, dt, NULL));
            for (int pos = 2; pos < 11; pos++)
                for (int kv = 0; kv < 2; kv++) memset(host_pool_row(&hp, 1, pos, 0, kv), 0, kv_dim * sizeof(float));
            got = from_device(dp.pool, host_pool_elems(&hp), dt);
            expect_close("kv_zero", dt, shape, got, hp.data, host_pool_elems(&hp), 0.0);
            free(got);

            free(kv_rows);
            free(cos_t);
            free(sin_t);
            CK(cudaFree(d_rows));
            CK(cudaFree(d_seq));
            CK(cudaFree(d_pos));
            CK(cudaFree(d_cos));
            CK(cudaFree(d_sin));
            free_device_pool(&dp);
            free_host_pool(&hp);
        }
    }
}

/* ---------------------------------------------------------------- attention */

typedef struct attention_shape {
    int n_heads, n_kv_heads, head_dim;
} attention_shape;
typedef struct attention_rule_case {
    int window, mask_diagonal, block_size;
    int pos0, n; /* prefill: queries at pos0 .. pos0 + n - 1 */
} attention_rule_case;

static const attention_shape ATTENTION_SHAPES[] = {
    {32, 4, 64}, /* tinyllama: grouped decode G = 8, tensor-core prefill */
    {8, 4, 8},   /* generic paths */
    {4, 2, 16},  /* generic paths */
    {8, 8, 128}, /* G = 1, head_dim 128 */
    {16, 4, 64}, /* G = 4 */
    {4, 2, 128}, /* G = 2 */
};
static const attention_rule_case ATTENTION_RULES[] = {
    {0, 0, 16, 0, 150},  /* causal, three query tiles */
    {0, 1, 1, 70, 100},  /* masked diagonal, block size 1, queries in the middle */
    {3, 1, 16, 0, 130},  /* tiny window + diagonal */
    {1, 0, 16, 33, 65},  /* window 1: only the diagonal */
    {77, 0, 1, 0, 200},  /* window crossing key tiles */
    {1, 1, 16, 5, 20},   /* nothing visible anywhere: zeros */
    {100, 1, 16, 64, 64},/* aligned tiles, window + diagonal */
};

static void attention_prefill_matches_cpu(void **state) {
    (void)state;
    const xlkv_backend_ops *ops = xlkv_backend_cpu();
    const int read_slot = 1, seq = 1;
    for (int dti = 0; dti < 2; dti++) {
        const xlkv_dtype dt = dti ? XLKV_DTYPE_BF16 : XLKV_DTYPE_F32;
        for (size_t si = 0; si < sizeof ATTENTION_SHAPES / sizeof ATTENTION_SHAPES[0]; si++) {
            const attention_shape sh = ATTENTION_SHAPES[si];
            const int kv_dim = sh.n_kv_heads * sh.head_dim, q_width = sh.n_heads * sh.head_dim;
            const int q_stride = q_width + 2 * kv_dim;
            for (size_t ri = 0; ri < sizeof ATTENTION_RULES / sizeof ATTENTION_RULES[0]; ri++) {
                const attention_rule_case rc = ATTENTION_RULES[ri];
                const int n_ctx = rc.pos0 + rc.n;
                host_pool hp = make_host_pool(2, rc.block_size, kv_dim, 2, n_ctx + 5, dt);
                device_pool dp = upload_pool(&hp, dt);
                float *q_full = random_host((size_t)rc.n * q_stride, dt);
                float *q = malloc((size_t)rc.n * q_width * sizeof *q);
                for (int r = 0; r < rc.n; r++) memcpy(q + (size_t)r * q_width, q_full + (size_t)r * q_stride, q_width * sizeof *q);
                void *d_q = to_device(q_full, (size_t)rc.n * q_stride, dt);
                void *d_out = device_poisoned((size_t)rc.n * q_width, dt);
                const xlkv_attention_rule rule = {.n_heads = sh.n_heads, .n_kv_heads = sh.n_kv_heads,
                                                  .head_dim = sh.head_dim, .window = rc.window,
                                                  .mask_diagonal = rc.mask_diagonal, .read_slot = read_slot};
                CK_LAUNCH(xlkv_cuda_attention_prefill(d_out, d_q, q_stride, rc.n, rc.pos0, seq, &dp.kv, &rule, dt, NULL));
                float *got = from_device(d_out, (size_t)rc.n * q_width, dt);

                float *k = host_pool_gather(&hp, seq, read_slot, 0, n_ctx), *v = host_pool_gather(&hp, seq, read_slot, 1, n_ctx);
                const xlkv_attention_args args = {.n_heads = sh.n_heads, .n_kv_heads = sh.n_kv_heads,
                                                  .head_dim = sh.head_dim, .window = rc.window,
                                                  .mask_diagonal = rc.mask_diagonal != 0, .k = k, .v = v};
                float *ref = malloc((size_t)rc.n * q_width * sizeof *ref);
                ops->attention(ref, q, rc.n, rc.pos0, &args);
                char shape[128];
                snprintf(shape, sizeof shape, "h=%d kvh=%d hd=%d win=%d diag=%d bs=%d pos0=%d n=%d", sh.n_heads,
                         sh.n_kv_heads, sh.head_dim, rc.window, rc.mask_diagonal, rc.block_size, rc.pos0, rc.n);
                expect_close("attention_prefill", dt, shape, got, ref, (size_t)rc.n * q_width,
                             tol_for(dt, TOL_F32_ATTENTION));
                free(got);
                free(ref);
                free(k);
                free(v);
                free(q);
                free(q_full);
                CK(cudaFree(d_q));
                CK(cudaFree(d_out));
                free_device_pool(&dp);
                free_host_pool(&hp);
            }
        }
    }
}

static void attention_decode_matches_cpu(void **state) {
    (void)state;
    const xlkv_backend_ops *ops = xlkv_backend_cpu();
    const int read_slot = 1, max_positions = 700; /* 3 splits of 256 */
    enum { BATCH = 12 };
    /* rows of different lengths over two sequences, crossing split boundaries; position 0 included */
    const int row_seq[BATCH] = {0, 1, 1, 0, 1, 0, 1, 0, 1, 0, 1, 0};
    const int row_pos[BATCH] = {0, 0, 1, 2, 37, 255, 256, 257, 511, 512, 600, 699};
    for (int dti = 0; dti < 2; dti++) {
        const xlkv_dtype dt = dti ? XLKV_DTYPE_BF16 : XLKV_DTYPE_F32;
        for (size_t si = 0; si < sizeof ATTENTION_SHAPES / sizeof ATTENTION_SHAPES[0]; si++) {
            const attention_shape sh = ATTENTION_SHAPES[si];
            const int kv_dim = sh.n_kv_heads * sh.head_dim, q_width = sh.n_heads * sh.head_dim;
            const int q_stride = q_width + 2 * kv_dim;
            for (size_t ri = 0; ri < sizeof ATTENTION_RULES / sizeof ATTENTION_RULES[0]; ri++) {
                const attention_rule_case rc = ATTENTION_RULES[ri];
                host_pool hp = make_host_pool(2, rc.block_size, kv_dim, 2, max_positions, dt);
                device_pool dp = upload_pool(&hp, dt);
                float *q_full = random_host((size_t)BATCH * q_stride, dt);
                void *d_q = to_device(q_full, (size_t)BATCH * q_stride, dt);
                void *d_out = device_poisoned((size_t)BATCH * q_width, dt);
                const size_t ws_floats = xlkv_cuda_attention_decode_workspace(BATCH, sh.n_heads, sh.head_dim, max_positions);
                assert_true(ws_floats > 0);
                float *d_ws = device_poisoned(ws_floats, XLKV_DTYPE_F32); /* NaN: no stale partial may be read */
                int *d_seq = ints_to_device(row_seq, BATCH), *d_pos = ints_to_device(row_pos, BATCH);
                const xlkv_attention_rule rule = {.n_heads = sh.n_heads, .n_kv_heads = sh.n_kv_heads,
                                                  .head_dim = sh.head_dim, .window = rc.window,
                                                  .mask_diagonal = rc.mask_diagonal, .read_slot = read_slot};
                CK_LAUNCH(xlkv_cuda_attention_decode(d_out, d_q, q_stride, BATCH, d_seq, d_pos, max_positions, &dp.kv,
                                                     &rule, d_ws, dt, NULL));
                float *got = from_device(d_out, (size_t)BATCH * q_width, dt);

                float *ref = malloc((size_t)BATCH * q_width * sizeof *ref);
                for (int b = 0; b < BATCH; b++) {
                    const int t = row_pos[b];
                    float *k = host_pool_gather(&hp, row_seq[b], read_slot, 0, t + 1);
                    float *v = host_pool_gather(&hp, row_seq[b], read_slot, 1, t + 1);
                    const xlkv_attention_args args = {.n_heads = sh.n_heads, .n_kv_heads = sh.n_kv_heads,
                                                      .head_dim = sh.head_dim, .window = rc.window,
                                                      .mask_diagonal = rc.mask_diagonal != 0, .k = k, .v = v};
                    ops->attention(ref + (size_t)b * q_width, q_full + (size_t)b * q_stride, 1, t, &args);
                    free(k);
                    free(v);
                }
                char shape[128];
                snprintf(shape, sizeof shape, "h=%d kvh=%d hd=%d win=%d diag=%d bs=%d batch=%d", sh.n_heads,
                         sh.n_kv_heads, sh.head_dim, rc.window, rc.mask_diagonal, rc.block_size, BATCH);
                expect_close("attention_decode", dt, shape, got, ref, (size_t)BATCH * q_width,
                             tol_for(dt, TOL_F32_ATTENTION));
                if (rc.mask_diagonal) /* row 0 (position 0, diagonal masked) must be exactly zero */
                    for (int i = 0; i < q_width; i++)
                        if (got[i] != 0.0f) fail_msg("attention_decode %s: position 0 not zero (%g)", shape, (double)got[i]);
                free(got);
                free(ref);
                free(q_full);
                CK(cudaFree(d_q));
                CK(cudaFree(d_out));
                CK(cudaFree(d_ws));
                CK(cudaFree(d_seq));
                CK(cudaFree(d_pos));
                free_device_pool(&dp);
                free_host_pool(&hp);
            }
        }
    }
}

/* Both decode kernels (AUTO: the tensor-core kernel where it applies; SCALAR: the CUDA-core kernels) against the CPU
 * attention, over batches 1, 3, 17 and 300 (so split sizes 32 .. 256 and many CTAs), G = 1, 2, 3, 4, 8 (tensor-core
 * path) and 16 (scalar path), head_dim 64 and 128, every rule of ATTENTION_RULES (windows, masked diagonal, block
 * sizes 1 and 16), rows at lengths just around the 16-key warp slices, the 64-key tiles and the splits, padding rows
 * (seq -1: zero output) and rows that share a sequence, blocks shuffled over the pool. Every case prints a line and
 * the test fails at the end if any did, so one GPU run reports every failing case. */
typedef struct decode_case_rows {
    int batch, n_seqs;
    int *row_seq, *row_pos;
} decode_case_rows;

static decode_case_rows decode_rows(int batch, int max_positions) {
    static const int around[] = {64, 0, 1, 15, 16, 17, 31, 32, 33, 63, 65, 127, 128, 129, 255, 256, 257, 383, 384,
                                 385, 511, 512, 513, 640, 697, 698};
    const int n_around = (int)(sizeof around / sizeof around[0]);
    decode_case_rows r = {.batch = batch, .n_seqs = batch < 8 ? 2 : 8};
    r.row_seq = malloc((size_t)batch * sizeof *r.row_seq);
    r.row_pos = malloc((size_t)batch * sizeof *r.row_pos);
    assert_non_null(r.row_seq);
    assert_non_null(r.row_pos);
    for (int b = 0; b < batch; b++) {
        r.row_seq[b] = b % r.n_seqs;
        if (b == 0) r.row_pos[b] = max_positions - 1; /* the longest row: every split */
        else if (b - 1 < n_around) r.row_pos[b] = around[b - 1];
        else r.row_pos[b] = (int)(rng_u32() % (unsigned)max_positions);
        if (b == 1) r.row_seq[b] = -1; /* a padding row (batch >= 3: row 1 has position 64, but no sequence) */
    }
    return r;
}

static void attention_decode_kernels_match_cpu(void **state) {
    (void)state;
    const xlkv_backend_ops *ops = xlkv_backend_cpu();
    const attention_shape shapes[] = {
        {32, 4, 64},  /* tinyllama, G = 8 */
        {16, 4, 64},  /* G = 4 */
        {4, 2, 128},  /* G = 2, head_dim 128 */
        {8, 8, 128},  /* G = 1, head_dim 128 */
        {12, 4, 64},  /* G = 3: not a power of two */
        {16, 1, 64},  /* G = 16: past the tensor-core path (scalar path for both) */
        {16, 2, 128}, /* G = 8, head_dim 128 */
    };
    const int batches[] = {1, 3, 17, 300};
    const int read_slot = 1, max_positions = 700;
    int cases = 0, failures = 0;
    for (int dti = 0; dti < 2; dti++) {
        const xlkv_dtype dt = dti ? XLKV_DTYPE_BF16 : XLKV_DTYPE_F32;
        for (size_t bi = 0; bi < sizeof batches / sizeof batches[0]; bi++) {
            const int batch = batches[bi];
            for (size_t si = 0; si < sizeof shapes / sizeof shapes[0]; si++) {
                const attention_shape sh = shapes[si];
                const int kv_dim = sh.n_kv_heads * sh.head_dim, q_width = sh.n_heads * sh.head_dim;
                const int q_stride = q_width + 2 * kv_dim;
                for (size_t ri = 0; ri < sizeof ATTENTION_RULES / sizeof ATTENTION_RULES[0]; ri++) {
                    /* batch 300 (slow on the CPU side): three rules, bf16 only (fp32 takes the scalar path anyway) */
                    if (batch == 300 && (dt == XLKV_DTYPE_F32 || (ri != 0 && ri != 2 && ri != 4))) continue;
                    const attention_rule_case rc = ATTENTION_RULES[ri];
                    decode_case_rows rows = decode_rows(batch, max_positions);
                    host_pool hp = make_host_pool(2, rc.block_size, kv_dim, rows.n_seqs, max_positions, dt);
                    device_pool dp = upload_pool(&hp, dt);
                    float *q_full = random_host((size_t)batch * q_stride, dt);
                    void *d_q = to_device(q_full, (size_t)batch * q_stride, dt);
                    int *d_seq = ints_to_device(rows.row_seq, (size_t)batch);
                    int *d_pos = ints_to_device(rows.row_pos, (size_t)batch);
                    const size_t ws_floats =
                        xlkv_cuda_attention_decode_workspace(batch, sh.n_heads, sh.head_dim, max_positions);
                    assert_true(ws_floats > 0);
                    const xlkv_attention_rule rule = {.n_heads = sh.n_heads, .n_kv_heads = sh.n_kv_heads,
                                                      .head_dim = sh.head_dim, .window = rc.window,
                                                      .mask_diagonal = rc.mask_diagonal, .read_slot = read_slot};

                    float *ref = calloc((size_t)batch * q_width, sizeof *ref); /* padding rows: zeros */
                    assert_non_null(ref);
                    for (int b = 0; b < batch; b++) {
                        if (rows.row_seq[b] < 0) continue;
                        const int t = rows.row_pos[b];
                        float *k = host_pool_gather(&hp, rows.row_seq[b], read_slot, 0, t + 1);
                        float *v = host_pool_gather(&hp, rows.row_seq[b], read_slot, 1, t + 1);
                        const xlkv_attention_args args = {.n_heads = sh.n_heads, .n_kv_heads = sh.n_kv_heads,
                                                          .head_dim = sh.head_dim, .window = rc.window,
                                                          .mask_diagonal = rc.mask_diagonal != 0, .k = k, .v = v};
                        ops->attention(ref + (size_t)b * q_width, q_full + (size_t)b * q_stride, 1, t, &args);
                        free(k);
                        free(v);
                    }
                    for (int which = 0; which < 2; which++) {
                        const xlkv_cuda_decode_kernel kernel = which ? XLKV_CUDA_DECODE_SCALAR : XLKV_CUDA_DECODE_AUTO;
                        void *d_out = device_poisoned((size_t)batch * q_width, dt);
                        float *d_ws = device_poisoned(ws_floats, XLKV_DTYPE_F32); /* NaN: no stale partial read */
                        CK_LAUNCH(xlkv_cuda_attention_decode_with(d_out, d_q, q_stride, batch, d_seq, d_pos,
                                                                  max_positions, &dp.kv, &rule, d_ws, dt, kernel, NULL));
                        float *got = from_device(d_out, (size_t)batch * q_width, dt);
                        char shape[160];
                        snprintf(shape, sizeof shape, "%s b=%d h=%d kvh=%d hd=%d win=%d diag=%d bs=%d",
                                 which ? "scalar" : "auto", batch, sh.n_heads, sh.n_kv_heads, sh.head_dim, rc.window,
                                 rc.mask_diagonal, rc.block_size);
                        size_t worst = 0;
                        cases++;
                        if (!check_close("attention_decode_with", dt, shape, got, ref, (size_t)batch * q_width,
                                         tol_for(dt, TOL_F32_ATTENTION), &worst)) {
                            const int wb = (int)(worst / (size_t)q_width);
                            printf("       worst row %d: seq %d position %d, head %d, dim %d\n", wb, rows.row_seq[wb],
                                   rows.row_pos[wb], (int)(worst % (size_t)q_width) / sh.head_dim,
                                   (int)(worst % (size_t)q_width) % sh.head_dim);
                            failures++;
                        }
                        for (int b = 0; b < batch; b++) { /* nothing visible: exactly zero */
                            const int empty = rows.row_seq[b] < 0 || (rc.mask_diagonal && rows.row_pos[b] == 0);
                            for (int i = 0; empty && i < q_width; i++)
                                if (got[(size_t)b * q_width + i] != 0.0f) {
                                    printf("[FAIL] attention_decode_with %s: row %d sees nothing but element %d is %g\n",
                                           shape, b, i, (double)got[(size_t)b * q_width + i]);
                                    failures++;
                                    break;
                                }
                        }
                        free(got);
                        CK(cudaFree(d_out));
                        CK(cudaFree(d_ws));
                    }
                    free(ref);
                    free(q_full);
                    free(rows.row_seq);
                    free(rows.row_pos);
                    CK(cudaFree(d_q));
                    CK(cudaFree(d_seq));
                    CK(cudaFree(d_pos));
                    free_device_pool(&dp);
                    free_host_pool(&hp);
                }
            }
        }
    }
    printf("attention_decode_with: %d cases, %d failures\n", cases, failures);
    if (failures) fail_msg("attention_decode_with: %d of %d checks failed (lines marked FAIL above)", failures, cases);
}

/* ---------------------------------------------------------------- sampling */

/* got and ref hold the same bits (one line for the log; `other` names what ref came from). */
static void expect_same_bits(const char *kernel, xlkv_dtype dt, const char *shape, const float *got, const float *ref,
                             size_t n, const char *other) {
    size_t differ = 0, first = 0;
    for (size_t i = 0; i < n; i++)
        if (memcmp(&got[i], &ref[i], sizeof(float)) != 0 && differ++ == 0) first = i;
    printf("[%s] %-22s %-4s %-58s %zu/%zu elements differ from %s\n", differ ? "FAIL" : "PASS", kernel, dt_name(dt),
           shape, differ, n, other);
    fflush(stdout);
    if (differ)
        fail_msg("%s %s %s: %zu elements differ from %s; element %zu: %g vs %g", kernel, dt_name(dt), shape, differ,
                 other, first, (double)got[first], (double)ref[first]);
}

/* The few-row kernel's launch, XLKV_GEMV (read at every launch): NULL or "pdl" = a programmatic dependent launch
 * (the default; the third weight burst staged in shared memory for long products), "pdl-staged" = staged always,
 * "pdl-registers" = never, "plain" = a normal launch. */
static void select_gemv(const char *choice) {
    if (choice)
        assert_int_equal(setenv("XLKV_GEMV", choice, 1), 0);
    else
        assert_int_equal(unsetenv("XLKV_GEMV"), 0);
}

/* The few-row bf16 product against the CPU matmul on the same bf16-rounded inputs, bf16 and fp32 outputs, every row
 * count it takes, the tinyllama shapes (qkv, o, gate_up, down, logits), `in` not a multiple of the 2048-weight burst
 * (72, 2056, 4104: a last burst of one chunk), odd `out`, and the shapes it refuses; and the streaming kernel against
 * its launches as a programmatic dependent (XLKV_GEMV=pdl, the default; pdl-registers, pdl-staged) and a normal one
 * (plain): the same bits. */
static void gemv_matches_cpu(void **state) {
    (void)state;
    const xlkv_backend_ops *cpu = xlkv_backend_cpu();
    const int shapes[][2] = {{2048, 2560}, {2048, 2048}, {2048, 11264}, {5632, 2048}, {2048, 32000}, {5632, 40},
                             {72, 33},     {64, 7},      {8, 5},        {2056, 20001}, {4104, 3},    {16, 4099}};
    for (size_t sh = 0; sh < sizeof shapes / sizeof shapes[0]; sh++) {
        const int in = shapes[sh][0], out = shapes[sh][1];
        for (int n = 1; n <= XLKV_CUDA_GEMV_MAX_ROWS; n++) {
            float *x = random_host((size_t)n * in, XLKV_DTYPE_BF16), *w = random_host((size_t)out * in, XLKV_DTYPE_BF16);
            float *ref = malloc(sizeof(float) * (size_t)n * out);
            cpu->matmul(ref, x, w, n, in, out);
            void *dx = to_device(x, (size_t)n * in, XLKV_DTYPE_BF16), *dw = to_device(w, (size_t)out * in, XLKV_DTYPE_BF16);
            for (int f32_out = 0; f32_out <= 1; f32_out++) {
                const xlkv_dtype out_dt = f32_out ? XLKV_DTYPE_F32 : XLKV_DTYPE_BF16;
                void *dy = device_poisoned((size_t)n * out, out_dt);
                assert_true(xlkv_cuda_gemv_supported(n, in, dx, dw, XLKV_DTYPE_BF16));
                CK_LAUNCH(xlkv_cuda_gemv(dy, f32_out, dx, dw, n, in, out, XLKV_DTYPE_BF16, NULL));
                CK(cudaDeviceSynchronize());
                float *got = from_device(dy, (size_t)n * out, out_dt);
                char shape[96];
                snprintf(shape, sizeof shape, "n %d, in %d, out %d, %s out", n, in, out, f32_out ? "f32" : "bf16");
                expect_close("gemv", XLKV_DTYPE_BF16, shape, got, ref, (size_t)n * out, f32_out ? 5e-5 : TOL_BF16);
                /* the other kernel choices: the same bits. Their input is written by the kernel just before them
                 * on their stream (0 + x by xlkv_cuda_add), so a programmatic launch (pdl) that read x before
                 * waiting for that kernel would see zeros. */
                static const char *const choices[] = {"pdl", "pdl-registers", "pdl-staged", "plain"};
                void *dx_late = device_alloc((size_t)n * in * 2);
                for (int k = 0; k < 4; k++) {
                    cudaStream_t stream;
                    CK(cudaStreamCreate(&stream));
                    CK(cudaMemsetAsync(dy, 0xFF, (size_t)n * out * (f32_out ? 4 : 2), stream));
                    CK(cudaMemsetAsync(dx_late, 0, (size_t)n * in * 2, stream));
                    assert_int_equal(xlkv_cuda_add(dx_late, dx, in, n, in, XLKV_DTYPE_BF16, stream), 0);
                    select_gemv(choices[k]);
                    CK_LAUNCH(xlkv_cuda_gemv(dy, f32_out, dx_late, dw, n, in, out, XLKV_DTYPE_BF16, stream));
                    select_gemv(NULL);
                    CK(cudaStreamDestroy(stream));
                    float *other = from_device(dy, (size_t)n * out, out_dt);
                    char what[32];
                    snprintf(what, sizeof what, "XLKV_GEMV=%s", choices[k]);
                    expect_same_bits("gemv", XLKV_DTYPE_BF16, shape, got, other, (size_t)n * out, what);
                    free(other);
                }
                CK(cudaFree(dx_late));
                free(got);
                CK(cudaFree(dy));
            }
            free(x);
            free(w);
            free(ref);
            CK(cudaFree(dx));
            CK(cudaFree(dw));
        }
    }
    assert_false(xlkv_cuda_gemv_supported(1, 2048, NULL, NULL, XLKV_DTYPE_F32));
    assert_false(xlkv_cuda_gemv_supported(XLKV_CUDA_GEMV_MAX_ROWS + 1, 2048, NULL, NULL, XLKV_DTYPE_BF16));
    assert_false(xlkv_cuda_gemv_supported(1, 2047, NULL, NULL, XLKV_DTYPE_BF16));
}

static int host_argmax(const float *x, int n) {
    int best = 0;
    for (int i = 1; i < n; i++)
        if (x[i] > x[best]) best = i;
    return best;
}

/* Runs xlkv_cuda_sample on a copy of `logits` [batch, vocab]; returns the tokens (heap) and, if wanted, the
 * logits after the kernel (penalized in place). */
static int *run_sample(const float *logits, int batch, int vocab, const xlkv_cuda_sampling *params, const int *history,
                       const int *history_len, float **logits_after) {
    float *d_logits = to_device(logits, (size_t)batch * vocab, XLKV_DTYPE_F32);
    xlkv_cuda_sampling *d_params = device_alloc((size_t)batch * sizeof *d_params);
    CK(cudaMemcpy(d_params, params, (size_t)batch * sizeof *params, cudaMemcpyHostToDevice));
    int *d_hist = ints_to_device(history, (size_t)batch * XLKV_CUDA_PENALTY_WINDOW);
    int *d_hist_len = ints_to_device(history_len, (size_t)batch);
    int *d_out = device_alloc((size_t)batch * sizeof(int));
    CK(cudaMemset(d_out, 0xFF, (size_t)batch * sizeof(int)));
    CK_LAUNCH(xlkv_cuda_sample(d_out, d_logits, batch, vocab, d_params, d_hist, d_hist_len, NULL));
    int *out = ints_from_device(d_out, (size_t)batch);
    if (logits_after) *logits_after = from_device(d_logits, (size_t)batch * vocab, XLKV_DTYPE_F32);
    CK(cudaFree(d_logits));
    CK(cudaFree(d_params));
    CK(cudaFree(d_hist));
    CK(cudaFree(d_hist_len));
    CK(cudaFree(d_out));
    return out;
}

static void argmax_and_greedy_sampling(void **state) {
    (void)state;
    enum { BATCH = 6, VOCAB = 32000 };
    float *logits = random_host((size_t)BATCH * VOCAB, XLKV_DTYPE_F32);
    logits[1 * VOCAB + 7000] = 5.0f; /* a tie: the lower index wins */
    logits[1 * VOCAB + 100] = 5.0f;
    logits[2 * VOCAB + VOCAB - 1] = 3.0f; /* last element */
    logits[3 * VOCAB + 0] = 3.0f;         /* first element */
    int expected[BATCH];
    for (int b = 0; b < BATCH; b++) expected[b] = host_argmax(logits + (size_t)b * VOCAB, VOCAB);
    assert_int_equal(expected[1], 100);

    float *d_logits = to_device(logits, (size_t)BATCH * VOCAB, XLKV_DTYPE_F32);
    int *d_out = device_alloc(BATCH * sizeof(int));
    CK(cudaMemset(d_out, 0xFF, BATCH * sizeof(int)));
    CK_LAUNCH(xlkv_cuda_argmax(d_out, d_logits, BATCH, VOCAB, NULL));
    int *got = ints_from_device(d_out, BATCH);
    expect_ints("argmax", "batch=6 vocab=32000 (ties, first, last)", got, expected, BATCH);
    free(got);
    CK(cudaFree(d_logits));
    CK(cudaFree(d_out));

    /* greedy sampling (temperature 0) and top_k = 1 are the argmax */
    xlkv_cuda_sampling params[BATCH];
    int history[BATCH * XLKV_CUDA_PENALTY_WINDOW], history_len[BATCH];
    for (int i = 0; i < BATCH * XLKV_CUDA_PENALTY_WINDOW; i++) history[i] = -1;
    for (int b = 0; b < BATCH; b++) {
        params[b] = (xlkv_cuda_sampling){.temperature = 0.0f, .top_k = 0, .top_p = 1.0f, .repeat_penalty = 1.0f,
                                         .seed = 42, .step = (uint64_t)b};
        history_len[b] = 0;
    }
    got = run_sample(logits, BATCH, VOCAB, params, history, history_len, NULL);
    expect_ints("sample greedy", "batch=6 vocab=32000 temperature=0", got, expected, BATCH);
    free(got);
    for (int b = 0; b < BATCH; b++) {
        params[b].temperature = 1.0f;
        params[b].top_k = 1;
    }
    got = run_sample(logits, BATCH, VOCAB, params, history, history_len, NULL);
    expect_ints("sample top_k=1", "batch=6 vocab=32000 temperature=1", got, expected, BATCH);
    free(got);
    free(logits);
}

static void sampling_is_deterministic_per_seed_and_step(void **state) {
    (void)state;
    enum { BATCH = 8, VOCAB = 1000 };
    float *row = random_host(VOCAB, XLKV_DTYPE_F32);
    float *logits = malloc((size_t)BATCH * VOCAB * sizeof *logits);
    for (int b = 0; b < BATCH; b++) memcpy(logits + (size_t)b * VOCAB, row, VOCAB * sizeof *row);
    xlkv_cuda_sampling params[BATCH];
    int history[BATCH * XLKV_CUDA_PENALTY_WINDOW], history_len[BATCH] = {0};
    for (int i = 0; i < BATCH * XLKV_CUDA_PENALTY_WINDOW; i++) history[i] = -1;
    for (int b = 0; b < BATCH; b++) /* rows b and b + 4 share (seed, step) */
        params[b] = (xlkv_cuda_sampling){.temperature = 1.5f, .top_k = 0, .top_p = 1.0f, .repeat_penalty = 1.0f,
                                         .seed = 1234, .step = (uint64_t)(b % 4) + 17};
    int *first = run_sample(logits, BATCH, VOCAB, params, history, history_len, NULL);
    int *second = run_sample(logits, BATCH, VOCAB, params, history, history_len, NULL);
    expect_ints("sample determinism", "same (seed, step), two runs", second, first, BATCH);
    int shifted[BATCH];
    for (int b = 0; b < BATCH; b++) shifted[b] = first[(b + 4) % BATCH];
    expect_ints("sample determinism", "same (seed, step), other batch positions", first, shifted, BATCH);
    for (int b = 0; b < BATCH; b++)
        if (first[b] < 0 || first[b] >= VOCAB) fail_msg("sample: token %d out of range", first[b]);
    free(first);
    free(second);
    free(logits);
    free(row);
}

static void sampling_matches_softmax_frequencies(void **state) {
    (void)state;
    enum { DRAWS = 20000, VOCAB = 8 };
    const float row[VOCAB] = {0.0f, 0.5f, 1.0f, 1.5f, -1.0f, 2.0f, 0.2f, -0.5f};
    double prob[VOCAB], sum = 0.0;
    for (int i = 0; i < VOCAB; i++) sum += prob[i] = exp((double)row[i]);
    for (int i = 0; i < VOCAB; i++) prob[i] /= sum;
    float *logits = malloc((size_t)DRAWS * VOCAB * sizeof *logits);
    xlkv_cuda_sampling *params = malloc(DRAWS * sizeof *params);
    int *history = malloc((size_t)DRAWS * XLKV_CUDA_PENALTY_WINDOW * sizeof *history);
    int *history_len = calloc(DRAWS, sizeof *history_len);
    assert_true(logits && params && history && history_len);
    for (size_t i = 0; i < (size_t)DRAWS * XLKV_CUDA_PENALTY_WINDOW; i++) history[i] = -1;
    for (int d = 0; d < DRAWS; d++) {
        memcpy(logits + (size_t)d * VOCAB, row, sizeof row);
        params[d] = (xlkv_cuda_sampling){.temperature = 1.0f, .top_k = 0, .top_p = 1.0f, .repeat_penalty = 1.0f,
                                         .seed = 99, .step = (uint64_t)d};
    }
    int *tokens = run_sample(logits, DRAWS, VOCAB, params, history, history_len, NULL);
    double freq[VOCAB] = {0}, max_dev = 0.0;
    for (int d = 0; d < DRAWS; d++) {
        if (tokens[d] < 0 || tokens[d] >= VOCAB) fail_msg("sample: token %d out of range", tokens[d]);
        freq[tokens[d]] += 1.0 / DRAWS;
    }
    for (int i = 0; i < VOCAB; i++)
        if (fabs(freq[i] - prob[i]) > max_dev) max_dev = fabs(freq[i] - prob[i]);
    const int ok = max_dev <= 0.015; /* ~4.5 sigma for the largest probability at 20000 draws */
    printf("[%s] %-22s      %-58s max |freq - p| %.4f (tol 0.015)\n", ok ? "PASS" : "FAIL", "sample frequencies",
           "vocab=8 draws=20000 temperature=1", max_dev);
    if (!ok) fail_msg("sampling frequencies deviate from softmax by %.4f", max_dev);
    free(tokens);

    /* top-k = 3: only the three largest; top-p = 0.5: only the smallest prefix reaching 0.5 (tokens 5, 3: 0.62) */
    for (int d = 0; d < DRAWS; d++) params[d].top_k = 3;
    tokens = run_sample(logits, DRAWS, VOCAB, params, history, history_len, NULL);
    int outside = 0;
    for (int d = 0; d < DRAWS; d++) outside += tokens[d] != 5 && tokens[d] != 3 && tokens[d] != 2;
    printf("[%s] %-22s      %-58s %d draws outside\n", outside ? "FAIL" : "PASS", "sample top_k", "vocab=8 top_k=3", outside);
    if (outside) fail_msg("top-k 3 drew %d tokens outside the top 3", outside);
    free(tokens);
    for (int d = 0; d < DRAWS; d++) {
        params[d].top_k = 0;
        params[d].top_p = 0.5f;
    }
    tokens = run_sample(logits, DRAWS, VOCAB, params, history, history_len, NULL);
    outside = 0;
    int count5 = 0;
    for (int d = 0; d < DRAWS; d++) {
        outside += tokens[d] != 5 && tokens[d] != 3;
        count5 += tokens[d] == 5;
    }
    const double expect5 = prob[5] / (prob[5] + prob[3]), got5 = (double)count5 / DRAWS;
    const int ok_p = outside == 0 && fabs(got5 - expect5) <= 0.015;
    printf("[%s] %-22s      %-58s %d outside, p(5) %.4f vs %.4f\n", ok_p ? "PASS" : "FAIL", "sample top_p",
           "vocab=8 top_p=0.5", outside, got5, expect5);
    if (!ok_p) fail_msg("top-p 0.5: %d draws outside {5, 3}, p(5) %.4f vs %.4f", outside, got5, expect5);
    free(tokens);
    free(logits);
    free(params);
    free(history);
    free(history_len);
}

static void repetition_penalty_changes_the_choice(void **state) {
    (void)state;
    enum { VOCAB = 300 };
    float logits[VOCAB];
    for (int i = 0; i < VOCAB; i++) logits[i] = 0.01f * (float)(i % 50) - 0.6f; /* in [-0.6, -0.11] */
    logits[5] = 2.0f;                                                              /* the argmax */
    logits[2] = 1.9f;                                                              /* wins once 5 is penalized */
    logits[9] = -1.0f;
    int history[XLKV_CUDA_PENALTY_WINDOW], history_len = 4;
    for (int i = 0; i < XLKV_CUDA_PENALTY_WINDOW; i++) history[i] = -1;
    history[0] = 5;
    history[1] = 9;
    history[2] = 5; /* repeated: penalized once */
    history[3] = 100000; /* out of the vocabulary: ignored */
    xlkv_cuda_sampling params = {.temperature = 0.0f, .top_k = 0, .top_p = 1.0f, .repeat_penalty = 1.5f, .seed = 1,
                                 .step = 0};
    float *after = NULL;
    int *token = run_sample(logits, 1, VOCAB, &params, history, &history_len, &after);
    const int expected = 2;
    expect_ints("sample penalty", "penalty 1.5 moves the argmax 5 -> 2", token, &expected, 1);
    float ref[VOCAB];
    memcpy(ref, logits, sizeof ref);
    ref[5] = 2.0f / 1.5f;
    ref[9] = -1.0f * 1.5f;
    expect_close("sample penalty logits", XLKV_DTYPE_F32, "in place, each distinct token once", after, ref, VOCAB, 1e-6);
    free(token);
    free(after);
}

/* ---------------------------------------------------------------- fused decode kernels */

/* Exact comparison of two GPU results (fused launch vs the unfused kernel sequence): prints one line with the count of
 * differing elements; fails on any. */
static void expect_identical(const char *kernel, xlkv_dtype dt, const char *shape, const float *got, const float *ref,
                             size_t n) {
    expect_same_bits(kernel, dt, shape, got, ref, n, "the unfused kernels");
}

static const char *gemv_input_name(int kind) {
    return kind == XLKV_GEMV_INPUT_RMSNORM ? "rmsnorm" : kind == XLKV_GEMV_INPUT_SWIGLU ? "swiglu" : "plain";
}

/* The fused few-row product, every input kind x residual epilogue x output type x n = 1..8, against (a) the CPU
 * composition (bf16-rounded where the unfused sequence stores) and (b) the unfused GPU sequence (rmsnorm / swiglu
 * kernel, plain gemv, add kernel), which must give the same bits, (c) the programmatic and the normal launch
 * (XLKV_GEMV=pdl, pdl-registers, pdl-staged, plain) and (d) smaller grids (xlkv_cuda_gemv_fused_spare: 36 CTA slots
 * left free, and the most it leaves), same bits too; a negative spare is refused. Shapes: the five tinyllama products, `in` 8 .. 5632
 * (multiples of the 2048-weight burst and not), odd `out`. x rows are strided (x_stride > the minimum); the shapes it
 * must refuse (f32, n > 8, in not a multiple of 8, misaligned gain) are refused. */
static void gemv_fused_matches_cpu_and_unfused(void **state) {
    (void)state;
    const xlkv_backend_ops *cpu = xlkv_backend_cpu();
    const xlkv_dtype bf = XLKV_DTYPE_BF16;
    const int shapes[][2] = {{2048, 2560}, {2048, 2048}, {2048, 11264}, {5632, 2048}, {2048, 32000}, {5632, 40},
                             {72, 33},     {64, 1001},   {8, 5},        {256, 1001},  {2056, 4099},  {4104, 3}};
    const float eps = 1e-5f;
    for (size_t sh = 0; sh < sizeof shapes / sizeof shapes[0]; sh++) {
        const int in = shapes[sh][0], out = shapes[sh][1];
        float *w = random_host((size_t)out * in, bf), *gain = random_host((size_t)in, bf);
        void *dw = to_device(w, (size_t)out * in, bf), *dgain = to_device(gain, (size_t)in, bf);
        for (int kind = XLKV_GEMV_INPUT_PLAIN; kind <= XLKV_GEMV_INPUT_SWIGLU; kind++) {
            const int width = kind == XLKV_GEMV_INPUT_SWIGLU ? 2 * in : in; /* elements of x a row uses */
            const int x_stride = width + 8;
            for (int n = 1; n <= XLKV_CUDA_GEMV_MAX_ROWS; n++) {
                float *x = random_host((size_t)n * x_stride, bf);
                void *dx = to_device(x, (size_t)n * x_stride, bf);
                /* host input rows [n, in]: what the unfused sequence stores, rounded to bf16 */
                float *prepared = malloc(sizeof(float) * (size_t)n * in);
                assert_non_null(prepared);
                for (int r = 0; r < n; r++) {
                    const float *xr = x + (size_t)r * x_stride;
                    float *pr = prepared + (size_t)r * in;
                    if (kind == XLKV_GEMV_INPUT_RMSNORM) {
                        cpu->rmsnorm(pr, xr, gain, 1, in, eps);
                    } else if (kind == XLKV_GEMV_INPUT_SWIGLU) {
                        memcpy(pr, xr, sizeof(float) * (size_t)in);
                        cpu->swiglu(pr, xr + in, (size_t)in);
                    } else {
                        memcpy(pr, xr, sizeof(float) * (size_t)in);
                    }
                }
                round_all(prepared, (size_t)n * in, bf);
                float *product = malloc(sizeof(float) * (size_t)n * out);
                assert_non_null(product);
                cpu->matmul(product, prepared, w, n, in, out);
                /* the unfused GPU input rows (contiguous [n, in]) for the bit-exact comparison */
                void *d_prepared = device_poisoned((size_t)n * in, bf);
                if (kind == XLKV_GEMV_INPUT_RMSNORM) {
                    for (int r = 0; r < n; r++)
                        CK_LAUNCH(xlkv_cuda_rmsnorm((char *)d_prepared + (size_t)r * in * 2,
                                                    (const char *)dx + (size_t)r * x_stride * 2, dgain, 1, in, eps, bf,
                                                    NULL));
                } else if (kind == XLKV_GEMV_INPUT_SWIGLU) {
                    CK_LAUNCH(xlkv_cuda_swiglu(d_prepared, dx, (const char *)dx + (size_t)in * 2, x_stride, n, in, bf,
                                               NULL));
                } else {
                    CK(cudaMemcpy2D(d_prepared, (size_t)in * 2, dx, (size_t)x_stride * 2, (size_t)in * 2, (size_t)n,
                                    cudaMemcpyDeviceToDevice));
                }
                const xlkv_cuda_gemv_input input = {.kind = kind, .x_stride = x_stride, .gain = dgain, .eps = eps};
                assert_true(xlkv_cuda_gemv_input_supported(n, in, dx, &input, dw, bf));
                for (int f32_out = 0; f32_out <= 1; f32_out++) {
                    const xlkv_dtype out_dt = f32_out ? XLKV_DTYPE_F32 : bf;
                    for (int accumulate = 0; accumulate <= 1; accumulate++) {
                        float *y0 = random_host((size_t)n * out, out_dt); /* the residual for accumulate */
                        void *dy = accumulate ? to_device(y0, (size_t)n * out, out_dt)
                                              : device_poisoned((size_t)n * out, out_dt);
                        CK_LAUNCH(xlkv_cuda_gemv_fused(dy, f32_out, accumulate, dx, &input, dw, n, in, out, bf, NULL));
                        float *got = from_device(dy, (size_t)n * out, out_dt);
                        /* reference: product rounded to the output type, then y0 + it rounded */
                        float *ref = malloc(sizeof(float) * (size_t)n * out);
                        assert_non_null(ref);
                        for (size_t i = 0; i < (size_t)n * out; i++) {
                            const float p = round_one(product[i], out_dt);
                            ref[i] = accumulate ? round_one(y0[i] + p, out_dt) : p;
                        }
                        char shape[112];
                        snprintf(shape, sizeof shape, "%s n %d in %d out %d x_stride %d %s out%s", gemv_input_name(kind),
                                 n, in, out, x_stride, f32_out ? "f32" : "bf16", accumulate ? " +=" : "");
                        /* fp32 out: the plain product as the gemv test; a fused input may round one element of
                         * the bf16 input the other way than the host (another summation order in the norm, expf's
                         * last bit), ~3e-4 of the largest output each: 2e-3. The bit check below is the strict one. */
                        const double tol = !f32_out ? TOL_BF16 : kind == XLKV_GEMV_INPUT_PLAIN ? 5e-5 : 2e-3;
                        expect_close("gemv_fused", bf, shape, got, ref, (size_t)n * out, tol);
                        /* the unfused GPU sequence */
                        void *dz = accumulate ? to_device(y0, (size_t)n * out, out_dt)
                                              : device_poisoned((size_t)n * out, out_dt);
                        if (accumulate) {
                            void *dp = device_poisoned((size_t)n * out, out_dt);
                            CK_LAUNCH(xlkv_cuda_gemv(dp, f32_out, d_prepared, dw, n, in, out, bf, NULL));
                            CK_LAUNCH(xlkv_cuda_add(dz, dp, out, n, out, out_dt, NULL));
                            CK(cudaFree(dp));
                        } else {
                            CK_LAUNCH(xlkv_cuda_gemv(dz, f32_out, d_prepared, dw, n, in, out, bf, NULL));
                        }
                        float *unfused = from_device(dz, (size_t)n * out, out_dt);
                        expect_identical("gemv_fused", bf, shape, got, unfused, (size_t)n * out);
                        free(unfused);
                        /* the programmatic launch (behind the poisoning kernel on its own stream), same arguments:
                         * the same bits */
                        static const char *const choices[] = {"pdl", "pdl-registers", "pdl-staged", "plain"};
                        for (int k = 0; k < 4; k++) {
                            if (accumulate) {
                                upload(dz, y0, (size_t)n * out, out_dt);
                                CK(cudaDeviceSynchronize());
                            }
                            cudaStream_t stream;
                            CK(cudaStreamCreate(&stream));
                            if (!accumulate) CK(cudaMemsetAsync(dz, 0xFF, (size_t)n * out * (f32_out ? 4 : 2), stream));
                            select_gemv(choices[k]);
                            CK_LAUNCH(xlkv_cuda_gemv_fused(dz, f32_out, accumulate, dx, &input, dw, n, in, out, bf,
                                                           stream));
                            select_gemv(NULL);
                            CK(cudaStreamDestroy(stream));
                            float *other = from_device(dz, (size_t)n * out, out_dt);
                            char what[32];
                            snprintf(what, sizeof what, "XLKV_GEMV=%s", choices[k]);
                            expect_same_bits("gemv_fused", bf, shape, got, other, (size_t)n * out, what);
                            free(other);
                        }
                        /* a smaller grid (room left for the next kernel; a huge request is capped): the same bits */
                        static const int spares[] = {36, 1 << 20};
                        for (int k = 0; k < 2; k++) {
                            if (accumulate) upload(dz, y0, (size_t)n * out, out_dt);
                            else CK(cudaMemset(dz, 0xFF, (size_t)n * out * (f32_out ? 4 : 2)));
                            CK(cudaDeviceSynchronize());
                            CK_LAUNCH(xlkv_cuda_gemv_fused_spare(dz, f32_out, accumulate, dx, &input, dw, n, in, out,
                                                                 spares[k], bf, NULL));
                            float *other = from_device(dz, (size_t)n * out, out_dt);
                            char what[32];
                            snprintf(what, sizeof what, "spare_ctas %d", spares[k]);
                            expect_same_bits("gemv_fused", bf, shape, got, other, (size_t)n * out, what);
                            free(other);
                        }
                        assert_int_equal(xlkv_cuda_gemv_fused_spare(dz, f32_out, accumulate, dx, &input, dw, n, in,
                                                                    out, -1, bf, NULL),
                                         (int)cudaErrorInvalidValue);
                        free(ref);
                        free(got);
                        free(y0);
                        CK(cudaFree(dy));
                        CK(cudaFree(dz));
                    }
                }
                free(prepared);
                free(product);
                free(x);
                CK(cudaFree(dx));
                CK(cudaFree(d_prepared));
            }
        }
        /* refusals: f32, too many rows, in not a multiple of 8, a misaligned gain, a too-short stride */
        const xlkv_cuda_gemv_input norm = {.kind = XLKV_GEMV_INPUT_RMSNORM, .gain = dgain};
        const xlkv_cuda_gemv_input odd_gain = {.kind = XLKV_GEMV_INPUT_RMSNORM, .gain = (char *)dgain + 2};
        const xlkv_cuda_gemv_input short_stride = {.kind = XLKV_GEMV_INPUT_SWIGLU, .x_stride = in};
        assert_false(xlkv_cuda_gemv_input_supported(1, in, dw, &norm, dw, XLKV_DTYPE_F32));
        assert_false(xlkv_cuda_gemv_input_supported(XLKV_CUDA_GEMV_MAX_ROWS + 1, in, dw, &norm, dw, bf));
        assert_false(xlkv_cuda_gemv_input_supported(1, in + 1, dw, &norm, dw, bf));
        assert_false(xlkv_cuda_gemv_input_supported(1, in, dw, &odd_gain, dw, bf));
        assert_false(xlkv_cuda_gemv_input_supported(1, in, dw, &short_stride, dw, bf));
        assert_int_equal(xlkv_cuda_gemv_fused(dw, 0, 0, dw, &norm, dw, 9, in, out, bf, NULL), (int)cudaErrorNotSupported);
        free(w);
        free(gain);
        CK(cudaFree(dw));
        CK(cudaFree(dgain));
    }
}

/* ---------------------------------------------------------------- the chain of few-row products */

/* A chain over device buffers [n, row_elems[b]] (bf16, or fp32 where f32[b]); stage fields index the buffers. */
enum { CHAIN_MAX_BUFFERS = 6 };
typedef struct chain_stage_spec {
    int y, x; /* buffer indices */
    int accumulate, kind, x_stride, in, out;
} chain_stage_spec;
typedef struct chain_case {
    const char *name;
    int n_buffers;
    int row_elems[CHAIN_MAX_BUFFERS];
    int f32[CHAIN_MAX_BUFFERS];
    int output_only[CHAIN_MAX_BUFFERS]; /* written without accumulate, read only after: poisoned before each run */
    int n_stages;
    chain_stage_spec stage[XLKV_CUDA_GEMV_CHAIN_MAX_STAGES];
} chain_case;

/* The chains: a tinyllama layer's o, gate|up, down and the next layer's qkv (dim 2048, MLP 5632, q_dim 2048, qkv
 * 2560), and odd shapes: `in` not a multiple of the 2048-weight burst (2056, 72), `out` below the grid's warps (5, 33)
 * and above them (4112 > 2 CTAs x 132 SMs x 8 warps), every input kind, fp32 and bf16 outputs, accumulate on and
 * off, strided x, and a stage that overwrites (+=) what the first stage read. */
static const chain_case CHAIN_CASES[] = {
    {.name = "tinyllama o,gate|up,down,qkv",
     .n_buffers = 4, /* x, att, gate_up, qkv */
     .row_elems = {2048, 2048, 11264, 2560},
     .output_only = {0, 0, 1, 1},
     .n_stages = 4,
     .stage = {{.y = 0, .x = 1, .accumulate = 1, .kind = XLKV_GEMV_INPUT_PLAIN, .in = 2048, .out = 2048},
               {.y = 2, .x = 0, .kind = XLKV_GEMV_INPUT_RMSNORM, .in = 2048, .out = 11264},
               {.y = 0, .x = 2, .accumulate = 1, .kind = XLKV_GEMV_INPUT_SWIGLU, .in = 5632, .out = 2048},
               {.y = 3, .x = 0, .kind = XLKV_GEMV_INPUT_RMSNORM, .in = 2048, .out = 2560}}},
    {.name = "odd shapes",
     .n_buffers = 4, /* h0 [2056], h1 [4112], h2 fp32 [5], h3 [33] */
     .row_elems = {2056, 4112, 5, 33},
     .f32 = {0, 0, 1, 0},
     .output_only = {0, 1, 0, 1},
     .n_stages = 4,
     .stage = {{.y = 1, .x = 0, .kind = XLKV_GEMV_INPUT_RMSNORM, .in = 2056, .out = 4112},
               {.y = 2, .x = 1, .accumulate = 1, .kind = XLKV_GEMV_INPUT_SWIGLU, .in = 2056, .out = 5},
               {.y = 0, .x = 1, .accumulate = 1, .kind = XLKV_GEMV_INPUT_PLAIN, .x_stride = 4112, .in = 72,
                .out = 2056},
               {.y = 3, .x = 0, .kind = XLKV_GEMV_INPUT_RMSNORM, .in = 2056, .out = 33}}},
};

typedef struct chain_run {
    void *buf[CHAIN_MAX_BUFFERS];
    float *init[CHAIN_MAX_BUFFERS];
    void *w[XLKV_CUDA_GEMV_CHAIN_MAX_STAGES], *gain[XLKV_CUDA_GEMV_CHAIN_MAX_STAGES];
    xlkv_cuda_gemv_stage stages[XLKV_CUDA_GEMV_CHAIN_MAX_STAGES];
} chain_run;

static xlkv_dtype chain_dt(const chain_case *c, int b) { return c->f32[b] ? XLKV_DTYPE_F32 : XLKV_DTYPE_BF16; }
static size_t chain_elems(const chain_case *c, int b, int n) { return (size_t)n * (size_t)c->row_elems[b]; }

/* Random buffers and weights for n rows; the stages point at them. */
static void chain_run_create(chain_run *r, const chain_case *c, int n) {
    memset(r, 0, sizeof *r);
    for (int b = 0; b < c->n_buffers; b++) {
        r->init[b] = random_host(chain_elems(c, b, n), chain_dt(c, b));
        r->buf[b] = device_alloc(chain_elems(c, b, n) * dt_size(chain_dt(c, b)));
    }
    for (int k = 0; k < c->n_stages; k++) {
        const chain_stage_spec *s = &c->stage[k];
        float *w = random_host((size_t)s->out * s->in, XLKV_DTYPE_BF16), *gain = random_host((size_t)s->in,
                                                                                              XLKV_DTYPE_BF16);
        r->w[k] = to_device(w, (size_t)s->out * s->in, XLKV_DTYPE_BF16);
        r->gain[k] = to_device(gain, (size_t)s->in, XLKV_DTYPE_BF16);
        free(w);
        free(gain);
        r->stages[k] = (xlkv_cuda_gemv_stage){
            .y = r->buf[s->y],
            .y_is_f32 = c->f32[s->y],
            .accumulate = s->accumulate,
            .x = r->buf[s->x],
            .input = {.kind = s->kind, .x_stride = s->x_stride, .gain = r->gain[k], .eps = 1e-5f},
            .w = r->w[k],
            .in = s->in,
            .out = s->out,
        };
    }
}

/* Every buffer back to its initial values (output-only buffers poisoned: NaN), synchronously. */
static void chain_run_reset(chain_run *r, const chain_case *c, int n) {
    for (int b = 0; b < c->n_buffers; b++) {
        if (c->output_only[b])
            CK(cudaMemset(r->buf[b], 0xFF, chain_elems(c, b, n) * dt_size(chain_dt(c, b))));
        else
            upload(r->buf[b], r->init[b], chain_elems(c, b, n), chain_dt(c, b));
    }
    CK(cudaDeviceSynchronize());
}

static void chain_run_free(chain_run *r, const chain_case *c) {
    for (int b = 0; b < c->n_buffers; b++) {
        free(r->init[b]);
        CK(cudaFree(r->buf[b]));
    }
    for (int k = 0; k < c->n_stages; k++) {
        CK(cudaFree(r->w[k]));
        CK(cudaFree(r->gain[k]));
    }
}

/* Every buffer of the run, to the host (fp32 values; bf16 converted exactly). */
static void chain_run_read(const chain_run *r, const chain_case *c, int n, float **out) {
    for (int b = 0; b < c->n_buffers; b++) out[b] = from_device(r->buf[b], chain_elems(c, b, n), chain_dt(c, b));
}

/* Compares every buffer of two readings bit for bit (one line per buffer); frees both. */
static void chain_expect_same(const chain_case *c, int n, const char *what, float **got, float **ref,
                              const char *other) {
    for (int b = 0; b < c->n_buffers; b++) {
        char shape[112];
        snprintf(shape, sizeof shape, "%s n %d %s buffer %d [%d]", c->name, n, what, b, c->row_elems[b]);
        expect_same_bits("gemv_chain", XLKV_DTYPE_BF16, shape, got[b], ref[b], chain_elems(c, b, n), other);
        free(got[b]);
        free(ref[b]);
    }
}

/* xlkv_cuda_gemv_chain against the same stages as separate xlkv_cuda_gemv_fused launches: every buffer bit for bit,
 * n = 1..8, every prefix of each chain (1..4 stages), the chains of CHAIN_CASES; the full tinyllama chain (n 1 and
 * 8) captured in a CUDA graph and replayed twice: the same bits each time (the grid barrier re-arms); and the
 * refusals (n 9, 0 or 5 stages, a stage the single product refuses). */
static void gemv_chain_matches_separate_launches(void **state) {
    (void)state;
    const xlkv_dtype bf = XLKV_DTYPE_BF16;
    for (size_t ci = 0; ci < sizeof CHAIN_CASES / sizeof CHAIN_CASES[0]; ci++) {
        const chain_case *c = &CHAIN_CASES[ci];
        for (int n = 1; n <= XLKV_CUDA_GEMV_MAX_ROWS; n++) {
            chain_run r;
            chain_run_create(&r, c, n);
            for (int k = 1; k <= c->n_stages; k++) {
                assert_true(xlkv_cuda_gemv_chain_supported(r.stages, k, n, bf));
                chain_run_reset(&r, c, n);
                for (int s = 0; s < k; s++) {
                    const xlkv_cuda_gemv_stage *st = &r.stages[s];
                    CK_LAUNCH(xlkv_cuda_gemv_fused(st->y, st->y_is_f32, st->accumulate, st->x, &st->input, st->w, n,
                                                   st->in, st->out, bf, NULL));
                }
                float *separate[CHAIN_MAX_BUFFERS], *chained[CHAIN_MAX_BUFFERS];
                chain_run_read(&r, c, n, separate);
                chain_run_reset(&r, c, n);
                CK_LAUNCH(xlkv_cuda_gemv_chain(r.stages, k, n, bf, NULL));
                chain_run_read(&r, c, n, chained);
                char what[32];
                snprintf(what, sizeof what, "%d stage%s", k, k > 1 ? "s" : "");
                chain_expect_same(c, n, what, chained, separate, "separate launches");
            }
            if (ci == 0 && (n == 1 || n == XLKV_CUDA_GEMV_MAX_ROWS)) {
                /* the full chain in a graph, replayed twice; reference: the chain launched directly */
                float *direct[CHAIN_MAX_BUFFERS];
                chain_run_read(&r, c, n, direct);
                cudaStream_t stream;
                CK(cudaStreamCreate(&stream));
                cudaGraph_t graph = NULL;
                cudaGraphExec_t exec = NULL;
                CK(cudaStreamBeginCapture(stream, cudaStreamCaptureModeThreadLocal));
                const int launched = xlkv_cuda_gemv_chain(r.stages, c->n_stages, n, bf, stream);
                CK(cudaStreamEndCapture(stream, &graph));
                CK(launched);
                CK(cudaGraphInstantiate(&exec, graph, 0));
                for (int replay = 0; replay < 2; replay++) {
                    chain_run_reset(&r, c, n);
                    CK(cudaGraphLaunch(exec, stream));
                    CK(cudaStreamSynchronize(stream));
                    float *replayed[CHAIN_MAX_BUFFERS], *ref[CHAIN_MAX_BUFFERS];
                    for (int b = 0; b < c->n_buffers; b++) {
                        ref[b] = malloc(sizeof(float) * chain_elems(c, b, n));
                        assert_non_null(ref[b]);
                        memcpy(ref[b], direct[b], sizeof(float) * chain_elems(c, b, n));
                    }
                    chain_run_read(&r, c, n, replayed);
                    char what[32];
                    snprintf(what, sizeof what, "graph replay %d", replay + 1);
                    chain_expect_same(c, n, what, replayed, ref, "the direct chain");
                }
                for (int b = 0; b < c->n_buffers; b++) free(direct[b]);
                CK(cudaGraphExecDestroy(exec));
                CK(cudaGraphDestroy(graph));
                CK(cudaStreamDestroy(stream));
            }
            if (ci == 0 && n == 1) {
                /* refusals: launch nothing, say cudaErrorNotSupported */
                xlkv_cuda_gemv_stage bad[XLKV_CUDA_GEMV_CHAIN_MAX_STAGES + 1];
                memcpy(bad, r.stages, sizeof r.stages);
                bad[XLKV_CUDA_GEMV_CHAIN_MAX_STAGES] = r.stages[0];
                assert_false(xlkv_cuda_gemv_chain_supported(r.stages, 1, XLKV_CUDA_GEMV_MAX_ROWS + 1, bf));
                assert_false(xlkv_cuda_gemv_chain_supported(r.stages, 0, 1, bf));
                assert_false(xlkv_cuda_gemv_chain_supported(bad, XLKV_CUDA_GEMV_CHAIN_MAX_STAGES + 1, 1, bf));
                assert_false(xlkv_cuda_gemv_chain_supported(r.stages, 1, 1, XLKV_DTYPE_F32));
                assert_false(xlkv_cuda_gemv_chain_supported(NULL, 1, 1, bf));
                bad[1].in = 2047; /* not a multiple of 8 */
                assert_false(xlkv_cuda_gemv_chain_supported(bad, 2, 1, bf));
                assert_int_equal(xlkv_cuda_gemv_chain(bad, 2, 1, bf, NULL), (int)cudaErrorNotSupported);
                bad[1] = r.stages[1];
                bad[1].out = 0;
                assert_int_equal(xlkv_cuda_gemv_chain(bad, 2, 1, bf, NULL), (int)cudaErrorNotSupported);
                assert_int_equal(xlkv_cuda_gemv_chain(r.stages, 1, 9, bf, NULL), (int)cudaErrorNotSupported);
                printf("[PASS] gemv_chain refusals: n 9, 0 and 5 stages, f32, NULL stages, in 2047, out 0\n");
            }
            chain_run_free(&r, c);
        }
    }
}

/* rope_kv_write against the two kernels it replaces (xlkv_cuda_rope on the queries, xlkv_cuda_kv_write of K/V, both
 * checked against the CPU above): the same qkv buffer and the same pool bits, both dtypes, 1..8 and 37 rows, padding
 * rows (position or sequence -1), odd head_dim, and a layer without KV (kv NULL: only the queries rotate). */
static void rope_kv_write_matches_unfused(void **state) {
    (void)state;
    const int cases[][4] = {{4, 2, 16, 4}, {1, 4, 64, 8}, {3, 1, 7, 2}}; /* block_size, kv heads, head_dim, q heads */
    const int row_counts[] = {1, 2, 3, 5, 8, 37};
    for (int dti = 0; dti < 2; dti++) {
        const xlkv_dtype dt = dti ? XLKV_DTYPE_BF16 : XLKV_DTYPE_F32;
        for (size_t ci = 0; ci < sizeof cases / sizeof cases[0]; ci++) {
            const int block_size = cases[ci][0], n_kv_heads = cases[ci][1], head_dim = cases[ci][2];
            const int n_heads = cases[ci][3];
            const int kv_dim = n_kv_heads * head_dim, q_dim = n_heads * head_dim, capacity = 48, slot = 1;
            const int stride = q_dim + 2 * kv_dim + 3;
            float *cos_t, *sin_t;
            rope_tables(capacity, head_dim, &cos_t, &sin_t);
            float *d_cos = to_device(cos_t, (size_t)capacity * (head_dim / 2), XLKV_DTYPE_F32);
            float *d_sin = to_device(sin_t, (size_t)capacity * (head_dim / 2), XLKV_DTYPE_F32);
            for (size_t ri = 0; ri < sizeof row_counts / sizeof row_counts[0]; ri++) {
                const int n = row_counts[ri];
                int *row_seq = malloc(sizeof(int) * (size_t)n), *row_pos = malloc(sizeof(int) * (size_t)n);
                assert_true(row_seq && row_pos);
                for (int r = 0; r < n; r++) { /* distinct (seq, pos) per row; row 2 padding, row 4 no sequence */
                    row_seq[r] = r % 2;
                    row_pos[r] = r / 2 + 5 * (r % 2);
                }
                if (n > 2) row_pos[2] = -1;
                if (n > 4) row_seq[4] = -1;
                int *d_seq = ints_to_device(row_seq, (size_t)n), *d_pos = ints_to_device(row_pos, (size_t)n);
                float *qkv = random_host((size_t)n * stride, dt);
                for (int with_kv = 0; with_kv <= 1; with_kv++) {
                    host_pool hp = make_host_pool(2, block_size, kv_dim, 2, capacity, dt);
                    device_pool fused_pool = upload_pool(&hp, dt), plain_pool = upload_pool(&hp, dt);
                    void *d_fused = to_device(qkv, (size_t)n * stride, dt), *d_plain = to_device(qkv, (size_t)n * stride, dt);
                    CK_LAUNCH(xlkv_cuda_rope_kv_write(d_fused, stride, n, n_heads, head_dim, d_seq, d_pos, d_cos, d_sin,
                                                      with_kv ? &fused_pool.kv : NULL, slot, q_dim, q_dim + kv_dim, dt,
                                                      NULL));
                    CK_LAUNCH(xlkv_cuda_rope(d_plain, stride, n, n_heads, head_dim, d_pos, d_cos, d_sin, dt, NULL));
                    if (with_kv)
                        CK_LAUNCH(xlkv_cuda_kv_write(&plain_pool.kv, slot, (char *)d_plain + (size_t)q_dim * dt_size(dt),
                                                     (char *)d_plain + (size_t)(q_dim + kv_dim) * dt_size(dt), stride, n,
                                                     d_seq, d_pos, head_dim, d_cos, d_sin, dt, NULL));
                    char shape[112];
                    snprintf(shape, sizeof shape, "rows %d heads %d kv_heads %d head_dim %d block %d %s", n, n_heads,
                             n_kv_heads, head_dim, block_size, with_kv ? "kv" : "no kv");
                    float *got = from_device(d_fused, (size_t)n * stride, dt);
                    float *ref = from_device(d_plain, (size_t)n * stride, dt);
                    expect_identical("rope_kv_write qkv", dt, shape, got, ref, (size_t)n * stride);
                    free(got);
                    free(ref);
                    got = from_device(fused_pool.pool, host_pool_elems(&hp), dt);
                    ref = from_device(plain_pool.pool, host_pool_elems(&hp), dt);
                    expect_identical("rope_kv_write pool", dt, shape, got, ref, host_pool_elems(&hp));
                    if (with_kv) { /* and the pool did change where the rows went */
                        size_t changed = 0;
                        for (size_t i = 0; i < host_pool_elems(&hp); i++) changed += got[i] != hp.data[i];
                        if (changed == 0) fail_msg("rope_kv_write %s: the pool was not written", shape);
                    }
                    free(got);
                    free(ref);
                    CK(cudaFree(d_fused));
                    CK(cudaFree(d_plain));
                    free_device_pool(&fused_pool);
                    free_device_pool(&plain_pool);
                    free_host_pool(&hp);
                }
                free(qkv);
                free(row_seq);
                free(row_pos);
                CK(cudaFree(d_seq));
                CK(cudaFree(d_pos));
            }
            free(cos_t);
            free(sin_t);
            CK(cudaFree(d_cos));
            CK(cudaFree(d_sin));
        }
    }
}

/* Runs xlkv_cuda_sample_split (the chunked sampler) on a copy of `logits`; as run_sample. */
static int *run_sample_split(const float *logits, int batch, int vocab, const xlkv_cuda_sampling *params,
                             const int *history, const int *history_len, float **logits_after) {
    float *d_logits = to_device(logits, (size_t)batch * vocab, XLKV_DTYPE_F32);
    xlkv_cuda_sampling *d_params = device_alloc((size_t)batch * sizeof *d_params);
    CK(cudaMemcpy(d_params, params, (size_t)batch * sizeof *params, cudaMemcpyHostToDevice));
    int *d_hist = ints_to_device(history, (size_t)batch * XLKV_CUDA_PENALTY_WINDOW);
    int *d_hist_len = ints_to_device(history_len, (size_t)batch);
    int *d_out = device_alloc((size_t)batch * sizeof(int));
    void *d_ws = device_alloc(xlkv_cuda_sample_split_workspace(batch, vocab));
    CK(cudaMemset(d_out, 0xFF, (size_t)batch * sizeof(int)));
    CK_LAUNCH(xlkv_cuda_sample_split(d_out, d_logits, batch, vocab, d_params, d_hist, d_hist_len, d_ws, NULL));
    int *out = ints_from_device(d_out, (size_t)batch);
    if (logits_after) *logits_after = from_device(d_logits, (size_t)batch * vocab, XLKV_DTYPE_F32);
    CK(cudaFree(d_logits));
    CK(cudaFree(d_params));
    CK(cudaFree(d_hist));
    CK(cudaFree(d_hist_len));
    CK(cudaFree(d_out));
    CK(cudaFree(d_ws));
    return out;
}

/* The chunked sampler gives the tokens and the penalized logits of the one-CTA sampler: greedy rows (ties across
 * chunk borders, first / last element, a row of -inf with one NaN), penalized greedy rows (a repeated history token,
 * one outside the vocabulary, tokens in different chunks), sampling rows (temperature, top-k, top-p), vocabularies
 * of one chunk, a partial last chunk and 32000, batches 1..8. */
static void sample_split_matches_sample(void **state) {
    (void)state;
    const int vocabs[] = {300, XLKV_CUDA_SAMPLE_CHUNK, 1500, 32000};
    for (size_t vi = 0; vi < sizeof vocabs / sizeof vocabs[0]; vi++) {
        const int vocab = vocabs[vi];
        for (int batch = 1; batch <= 8; batch++) {
            float *logits = random_host((size_t)batch * vocab, XLKV_DTYPE_F32);
            xlkv_cuda_sampling *params = malloc(sizeof *params * (size_t)batch);
            int *history = malloc(sizeof(int) * (size_t)batch * XLKV_CUDA_PENALTY_WINDOW);
            int *history_len = malloc(sizeof(int) * (size_t)batch);
            assert_true(params && history && history_len);
            for (int b = 0; b < batch; b++) {
                float *row = logits + (size_t)b * vocab;
                int *hist = history + (size_t)b * XLKV_CUDA_PENALTY_WINDOW;
                for (int i = 0; i < XLKV_CUDA_PENALTY_WINDOW; i++) hist[i] = -1;
                history_len[b] = 0;
                params[b] = (xlkv_cuda_sampling){.temperature = 0.0f, .top_k = 0, .top_p = 1.0f,
                                                 .repeat_penalty = 1.0f, .seed = 7, .step = (uint64_t)b};
                switch (b % 8) {
                case 0: /* a tie across a chunk border: the lower index wins */
                    row[vocab - 1] = 4.0f;
                    row[vocab / 3] = 4.0f;
                    break;
                case 1: row[0] = 4.0f; break;
                case 2: row[vocab - 1] = 4.0f; break;
                case 3: /* all -inf but one NaN: index 0 (the one-CTA sampler's answer) */
                    for (int i = 0; i < vocab; i++) row[i] = -INFINITY;
                    row[vocab / 2] = NAN;
                    break;
                case 4: /* penalty moves the argmax; history tokens in several chunks, a repeat, one out of range */
                    row[vocab - 2] = 3.0f;
                    row[1] = 2.9f;
                    row[vocab / 2] = -0.5f;
                    hist[0] = vocab - 2;
                    hist[1] = vocab / 2;
                    hist[2] = vocab - 2;
                    hist[3] = vocab + 5;
                    hist[4] = 1;
                    history_len[b] = 5;
                    params[b].repeat_penalty = 1.3f;
                    break;
                case 5: params[b].temperature = 0.8f; break;
                case 6:
                    params[b].temperature = 1.0f;
                    params[b].top_k = 5;
                    params[b].repeat_penalty = 1.2f;
                    hist[0] = 3;
                    history_len[b] = 1;
                    break;
                default:
                    params[b].temperature = 1.2f;
                    params[b].top_p = 0.7f;
                    break;
                }
            }
            float *after_one = NULL, *after_split = NULL;
            int *one = run_sample(logits, batch, vocab, params, history, history_len, &after_one);
            int *split = run_sample_split(logits, batch, vocab, params, history, history_len, &after_split);
            char shape[96];
            snprintf(shape, sizeof shape, "batch %d vocab %d (greedy, ties, NaN, penalty, top-k/p)", batch, vocab);
            expect_ints("sample_split", shape, split, one, batch);
            expect_identical("sample_split logits", XLKV_DTYPE_F32, shape, after_split, after_one, (size_t)batch * vocab);
            /* and the greedy rows against the host */
            for (int b = 0; b < batch; b++) {
                if (params[b].temperature != 0.0f || b % 8 == 3) continue;
                const int expected = host_argmax(after_one + (size_t)b * vocab, vocab);
                if (split[b] != expected) fail_msg("sample_split %s: row %d: %d, host argmax %d", shape, b, split[b], expected);
            }
            free(one);
            free(split);
            free(after_one);
            free(after_split);
            free(logits);
            free(params);
            free(history);
            free(history_len);
        }
    }
}

/* ---------------------------------------------------------------- fused decode attention */

/* One fused-decode case: a batch of rows over a bf16 paged pool with two slots, random q | k | v rows. */
typedef struct fused_case {
    attention_shape sh;
    int batch, max_positions, window, mask_diagonal, block_size;
    int write_slot, read_slot; /* write_slot -1: a layer without KV */
    int long_rows;             /* 1: rows near max_positions, 2: rows spread over it, 0: the positions of fused_rows */
} fused_case;

static const char *fused_slots_name(const fused_case *c) {
    return c->write_slot < 0 ? "no-kv" : c->write_slot == c->read_slot ? "own-kv" : "other-kv";
}

/* Row positions: contexts crossing the 64-key tiles and the split boundaries (context t + 1 = 1, 63, 64, 65, 512, 1000
 * and their neighbours), rotated by `salt` (with long_rows 1: max_positions - 1 - 37 (b + salt % 3); 2: (997 b + salt)
 * mod max_positions, every split of a long context); row 1 is a padding row without a sequence (batch >= 3), row 2
 * one without a position (batch >= 5). Each row its own sequence. */
static void fused_rows(int batch, int max_positions, int long_rows, int salt, int *row_seq, int *row_pos) {
    static const int positions[] = {999, 0, 62, 63, 64, 511, 1000, 1, 65, 512, 127, 128};
    const int n = (int)(sizeof positions / sizeof positions[0]);
    for (int b = 0; b < batch; b++) {
        row_seq[b] = b;
        int t = long_rows == 1   ? max_positions - 1 - 37 * (b + salt % 3)
                : long_rows == 2 ? (int)((997L * b + salt) % max_positions)
                                 : positions[(b + salt) % n];
        row_pos[b] = t < max_positions ? t : max_positions - 1;
    }
    if (batch >= 3) row_seq[1] = -1;
    if (batch >= 5) row_pos[2] = -1;
}

/* Runs one case both ways and checks (a) the pool the fused kernel leaves is bit-identical to rope_kv_write's and
 * within bf16 rounding of the host's RoPE, (b) the output bit-identical to the unfused path (rope_kv_write, then
 * attention_decode) and within TOL_BF16 of the CPU attention on the host's pool, (c) rows that see nothing (padding,
 * masked diagonal at 0, window 1 + diagonal) exactly zero, (d) qkv not modified, (e) the counters back at zero. Returns
 * the number of failed checks (printed as FAIL lines). */
static int run_fused_case(const fused_case *c, int salt) {
    const xlkv_backend_ops *ops = xlkv_backend_cpu();
    const xlkv_dtype dt = XLKV_DTYPE_BF16;
    const attention_shape sh = c->sh;
    const int batch = c->batch, head_dim = sh.head_dim, half = head_dim / 2;
    const int kv_dim = sh.n_kv_heads * head_dim, q_width = sh.n_heads * head_dim;
    const int qkv_stride = q_width + 2 * kv_dim;
    int failures = 0;

    int *row_seq = malloc((size_t)batch * sizeof *row_seq), *row_pos = malloc((size_t)batch * sizeof *row_pos);
    assert_non_null(row_seq);
    assert_non_null(row_pos);
    fused_rows(batch, c->max_positions, c->long_rows, salt, row_seq, row_pos);
    host_pool hp = make_host_pool(2, c->block_size, kv_dim, batch, c->max_positions, dt);
    device_pool fused_pool = upload_pool(&hp, dt), plain_pool = upload_pool(&hp, dt);
    float *cos_t, *sin_t;
    rope_tables(c->max_positions, head_dim, &cos_t, &sin_t);
    float *d_cos = to_device(cos_t, (size_t)c->max_positions * half, XLKV_DTYPE_F32);
    float *d_sin = to_device(sin_t, (size_t)c->max_positions * half, XLKV_DTYPE_F32);
    float *qkv = random_host((size_t)batch * qkv_stride, dt);
    void *d_qkv_fused = to_device(qkv, (size_t)batch * qkv_stride, dt);
    void *d_qkv_plain = to_device(qkv, (size_t)batch * qkv_stride, dt);
    int *d_seq = ints_to_device(row_seq, (size_t)batch), *d_pos = ints_to_device(row_pos, (size_t)batch);
    const size_t ws_floats = xlkv_cuda_attention_decode_workspace(batch, sh.n_heads, head_dim, c->max_positions);
    const size_t n_counters = xlkv_cuda_attention_decode_fused_counters(batch, sh.n_kv_heads);
    float *d_ws_fused = device_poisoned(ws_floats, XLKV_DTYPE_F32);
    float *d_ws_plain = device_poisoned(ws_floats, XLKV_DTYPE_F32);
    unsigned *d_counters = device_alloc(n_counters * sizeof(unsigned));
    CK(cudaMemset(d_counters, 0, n_counters * sizeof(unsigned)));
    void *d_out_fused = device_poisoned((size_t)batch * q_width, dt);
    void *d_out_plain = device_poisoned((size_t)batch * q_width, dt);
    const xlkv_attention_rule rule = {.n_heads = sh.n_heads, .n_kv_heads = sh.n_kv_heads, .head_dim = head_dim,
                                      .window = c->window, .mask_diagonal = c->mask_diagonal,
                                      .read_slot = c->read_slot};
    const xlkv_cuda_decode_rope_kv rope_kv = {.cos_table = d_cos, .sin_table = d_sin, .write_slot = c->write_slot,
                                              .k_col = q_width, .v_col = q_width + kv_dim};
    assert_true(xlkv_cuda_attention_decode_fused_supported(batch, &rule, &fused_pool.kv, dt));

    CK_LAUNCH(xlkv_cuda_attention_decode_fused(d_out_fused, d_qkv_fused, qkv_stride, batch, d_seq, d_pos,
                                               c->max_positions, &fused_pool.kv, &rule, &rope_kv, d_ws_fused,
                                               d_counters, dt, NULL));
    CK_LAUNCH(xlkv_cuda_rope_kv_write(d_qkv_plain, qkv_stride, batch, sh.n_heads, head_dim, d_seq, d_pos, d_cos, d_sin,
                                      c->write_slot >= 0 ? &plain_pool.kv : NULL,
                                      c->write_slot >= 0 ? c->write_slot : 0,
                                      q_width, q_width + kv_dim, dt, NULL));
    CK_LAUNCH(xlkv_cuda_attention_decode(d_out_plain, d_qkv_plain, qkv_stride, batch, d_seq, d_pos, c->max_positions,
                                         &plain_pool.kv, &rule, d_ws_plain, dt, NULL));

    char shape[160];
    snprintf(shape, sizeof shape, "b=%d h=%d kvh=%d hd=%d win=%d diag=%d bs=%d %s ctx<=%d%s", batch, sh.n_heads,
             sh.n_kv_heads, head_dim, c->window, c->mask_diagonal, c->block_size, fused_slots_name(c),
             c->max_positions, c->long_rows == 1 ? " long" : c->long_rows == 2 ? " spread" : "");

    /* the host's expected pool and rotated queries (CPU RoPE, rounded to bf16 where the GPU stores) */
    float *q_rot = malloc((size_t)batch * q_width * sizeof *q_rot);
    assert_non_null(q_rot);
    for (int b = 0; b < batch; b++) {
        memcpy(q_rot + (size_t)b * q_width, qkv + (size_t)b * qkv_stride, (size_t)q_width * sizeof *q_rot);
        if (row_pos[b] < 0 || row_seq[b] < 0) continue;
        ops->rope(q_rot + (size_t)b * q_width, 1, sh.n_heads, head_dim, row_pos[b], cos_t, sin_t);
        round_all(q_rot + (size_t)b * q_width, (size_t)q_width, dt);
        if (c->write_slot < 0) continue;
        float *k_dst = host_pool_row(&hp, row_seq[b], row_pos[b], c->write_slot, 0);
        float *v_dst = host_pool_row(&hp, row_seq[b], row_pos[b], c->write_slot, 1);
        memcpy(k_dst, qkv + (size_t)b * qkv_stride + q_width, (size_t)kv_dim * sizeof *k_dst);
        ops->rope(k_dst, 1, sh.n_kv_heads, head_dim, row_pos[b], cos_t, sin_t);
        round_all(k_dst, (size_t)kv_dim, dt);
        memcpy(v_dst, qkv + (size_t)b * qkv_stride + q_width + kv_dim, (size_t)kv_dim * sizeof *v_dst);
    }

    /* (a) pools */
    const size_t pool_n = host_pool_elems(&hp);
    float *pool_fused = from_device(fused_pool.pool, pool_n, dt);
    float *pool_plain = from_device(plain_pool.pool, pool_n, dt);
    size_t pool_differ = 0;
    for (size_t i = 0; i < pool_n; i++) pool_differ += memcmp(&pool_fused[i], &pool_plain[i], sizeof(float)) != 0;
    printf("check fused pool vs rope_kv_write %-66s %zu of %zu elements differ (tol 0)\n", shape, pool_differ, pool_n);
    if (pool_differ) {
        printf("[FAIL] fused pool %s\n", shape);
        failures++;
    }
    failures += !check_close("fused pool vs host", dt, shape, pool_fused, hp.data, pool_n, TOL_BF16, NULL);

    /* (b) outputs: against the unfused path and the CPU */
    float *got = from_device(d_out_fused, (size_t)batch * q_width, dt);
    float *plain = from_device(d_out_plain, (size_t)batch * q_width, dt);
    size_t out_differ = 0;
    for (size_t i = 0; i < (size_t)batch * q_width; i++) out_differ += memcmp(&got[i], &plain[i], sizeof(float)) != 0;
    printf("check fused out vs unfused %-73s max err %.3e (tol %.1e), %zu elements not bit-identical\n", shape,
           tu_max_abs_diff(got, plain, (size_t)batch * q_width), TOL_BF16, out_differ);
    failures += !check_close("fused vs unfused", dt, shape, got, plain, (size_t)batch * q_width, TOL_BF16, NULL);
    if (out_differ) { /* same splits, same arithmetic, same order: the same bits */
        printf("[FAIL] fused %s: %zu elements differ from the unfused path\n", shape, out_differ);
        failures++;
    }
    float *ref = calloc((size_t)batch * q_width, sizeof *ref); /* rows that see nothing: zeros */
    assert_non_null(ref);
    for (int b = 0; b < batch; b++) {
        if (row_seq[b] < 0 || row_pos[b] < 0) continue;
        const int t = row_pos[b];
        float *k = host_pool_gather(&hp, row_seq[b], c->read_slot, 0, t + 1);
        float *v = host_pool_gather(&hp, row_seq[b], c->read_slot, 1, t + 1);
        const xlkv_attention_args args = {.n_heads = sh.n_heads, .n_kv_heads = sh.n_kv_heads, .head_dim = head_dim,
                                          .window = c->window, .mask_diagonal = c->mask_diagonal != 0, .k = k, .v = v};
        ops->attention(ref + (size_t)b * q_width, q_rot + (size_t)b * q_width, 1, t, &args);
        free(k);
        free(v);
    }
    size_t worst = 0;
    if (!check_close("fused vs cpu", dt, shape, got, ref, (size_t)batch * q_width, TOL_BF16, &worst)) {
        const int wb = (int)(worst / (size_t)q_width);
        printf("       worst row %d: seq %d position %d, head %d, dim %d\n", wb, row_seq[wb], row_pos[wb],
               (int)(worst % (size_t)q_width) / head_dim, (int)(worst % (size_t)q_width) % head_dim);
        failures++;
    }

    /* (c) rows that see nothing: exactly zero */
    for (int b = 0; b < batch; b++) {
        const int t = row_pos[b];
        const int empty = row_seq[b] < 0 || t < 0 || (c->mask_diagonal && (t == 0 || c->window == 1));
        for (int i = 0; empty && i < q_width; i++)
            if (got[(size_t)b * q_width + i] != 0.0f) {
                printf("[FAIL] fused %s: row %d sees nothing but element %d is %g\n", shape, b, i,
                       (double)got[(size_t)b * q_width + i]);
                failures++;
                break;
            }
    }

    /* (d) qkv untouched, (e) counters re-armed */
    float *qkv_after = from_device(d_qkv_fused, (size_t)batch * qkv_stride, dt);
    if (memcmp(qkv_after, qkv, (size_t)batch * qkv_stride * sizeof(float)) != 0) {
        printf("[FAIL] fused %s: the qkv rows were modified\n", shape);
        failures++;
    }
    unsigned *counters = malloc(n_counters * sizeof *counters);
    assert_non_null(counters);
    CK(cudaMemcpy(counters, d_counters, n_counters * sizeof(unsigned), cudaMemcpyDeviceToHost));
    for (size_t i = 0; i < n_counters; i++)
        if (counters[i] != 0) {
            printf("[FAIL] fused %s: counter %zu left at %u\n", shape, i, counters[i]);
            failures++;
            break;
        }

    free(counters);
    free(row_seq);
    free(row_pos);
    free(qkv_after);
    free(got);
    free(plain);
    free(ref);
    free(q_rot);
    free(pool_fused);
    free(pool_plain);
    free(qkv);
    free(cos_t);
    free(sin_t);
    CK(cudaFree(d_cos));
    CK(cudaFree(d_sin));
    CK(cudaFree(d_qkv_fused));
    CK(cudaFree(d_qkv_plain));
    CK(cudaFree(d_seq));
    CK(cudaFree(d_pos));
    CK(cudaFree(d_ws_fused));
    CK(cudaFree(d_ws_plain));
    CK(cudaFree(d_counters));
    CK(cudaFree(d_out_fused));
    CK(cudaFree(d_out_plain));
    free_device_pool(&fused_pool);
    free_device_pool(&plain_pool);
    free_host_pool(&hp);
    return failures;
}

/* The fused decode launch (RoPE + K/V write + split-K attention + last-CTA combine) against rope_kv_write +
 * attention_decode and the CPU: G = 1, 4, 8 at head_dim 64 and 128, batches 1..8, 40, 256 (1024-key splits) and 300,
 * contexts crossing the tiles and splits, full / masked diagonal / windows (window 1: only the new key, or nothing
 * with the diagonal masked), block sizes 16 and 1, a layer writing the slot it reads, one writing another slot, one
 * writing nothing; padding rows. */
static void attention_decode_fused_matches_unfused(void **state) {
    (void)state;
    const attention_shape shapes[] = {{32, 4, 64}, {16, 4, 64}, {4, 4, 128}, {16, 2, 128}, {4, 4, 64}};
    /* window, masked diagonal, block size */
    const int rules[][3] = {{0, 0, 16}, {0, 1, 16}, {100, 0, 1}, {100, 1, 16}, {1, 0, 16}, {1, 1, 16}};
    const int slots[][2] = {{1, 1}, {0, 1}, {-1, 1}};                                                  /* write, read */
    int cases = 0, failures = 0;
    for (size_t si = 0; si < sizeof shapes / sizeof shapes[0]; si++)
        for (int batch = 1; batch <= 8; batch++)
            for (size_t ri = 0; ri < sizeof rules / sizeof rules[0]; ri++)
                for (size_t wi = 0; wi < sizeof slots / sizeof slots[0]; wi++) {
                    /* every combination at batch 1, 3, 8; the others with the own-slot layer only */
                    if (batch != 1 && batch != 3 && batch != 8 && wi != 0) continue;
                    const fused_case c = {.sh = shapes[si], .batch = batch, .max_positions = 1024,
                                          .window = rules[ri][0], .mask_diagonal = rules[ri][1],
                                          .block_size = rules[ri][2], .write_slot = slots[wi][0],
                                          .read_slot = slots[wi][1]};
                    failures += run_fused_case(&c, (int)(si + ri + wi) + batch);
                    cases++;
                }
    /* a short context (one or two splits) */
    const fused_case short_ctx = {.sh = shapes[0], .batch = 4, .max_positions = 66, .window = 0, .mask_diagonal = 0,
                                  .block_size = 16, .write_slot = 1, .read_slot = 1};
    failures += run_fused_case(&short_ctx, 0);
    cases++;
    /* long contexts: ~47 visible splits, more than the last CTA stages in shared memory (it combines from L2 then);
     * full, windowed, masked; both head sizes */
    for (size_t si = 0; si < 4; si += 2)
        for (size_t ri = 0; ri < 4; ri++)
            for (int batch = 1; batch <= 5; batch += 4) {
                const fused_case c = {.sh = shapes[si], .batch = batch, .max_positions = 3000,
                                      .window = rules[ri][0] ? 1500 : 0, .mask_diagonal = rules[ri][1],
                                      .block_size = rules[ri][2], .write_slot = 1, .read_slot = 1, .long_rows = 1};
                failures += run_fused_case(&c, (int)ri + batch);
                cases++;
            }
    /* larger batches, many (row, KV head) counters at once: 40 rows (64-key splits) and 300 rows (one 1024-key
     * split; two of 512 keys at head_dim 128, 2 KV heads); full and windowed + masked, both head sizes */
    const int big_rules[] = {0, 3};
    for (size_t si = 0; si < 4; si += 3)
        for (int bi = 0; bi < 2; bi++)
            for (int ri = 0; ri < 2; ri++) {
                const fused_case c = {.sh = shapes[si], .batch = bi ? 300 : 40, .max_positions = 600,
                                      .window = rules[big_rules[ri]][0], .mask_diagonal = rules[big_rules[ri]][1],
                                      .block_size = rules[big_rules[ri]][2], .write_slot = 1, .read_slot = 1};
                failures += run_fused_case(&c, (int)si + ri);
                cases++;
            }
    /* 1024-key splits (batch 256: 1,024 (row, KV head) groups), two of them, rows spread over both */
    for (int ri = 0; ri < 2; ri++) {
        const fused_case c = {.sh = shapes[0], .batch = 256, .max_positions = 1300,
                              .window = rules[big_rules[ri]][0] ? 700 : 0, .mask_diagonal = rules[big_rules[ri]][1],
                              .block_size = 16, .write_slot = 1, .read_slot = 1, .long_rows = 2};
        failures += run_fused_case(&c, ri);
        cases++;
    }
    printf("attention_decode_fused: %d cases, %d failed checks\n", cases, failures);
    if (failures)
        fail_msg("attention_decode_fused: %d failed checks in %d cases (lines marked FAIL above)", failures, cases);

    /* refused: f32, no rows, G > 8; invalid: a write slot past the pool */
    host_pool hp = make_host_pool(2, 16, 4 * 64, 1, 64, XLKV_DTYPE_BF16);
    device_pool dp = upload_pool(&hp, XLKV_DTYPE_BF16);
    xlkv_attention_rule rule = {.n_heads = 32, .n_kv_heads = 4, .head_dim = 64, .read_slot = 0};
    assert_true(xlkv_cuda_attention_decode_fused_supported(8, &rule, &dp.kv, XLKV_DTYPE_BF16));
    assert_false(xlkv_cuda_attention_decode_fused_supported(8, &rule, &dp.kv, XLKV_DTYPE_F32));
    assert_true(xlkv_cuda_attention_decode_fused_supported(4096, &rule, &dp.kv, XLKV_DTYPE_BF16));
    assert_false(xlkv_cuda_attention_decode_fused_supported(0, &rule, &dp.kv, XLKV_DTYPE_BF16));
    rule.n_heads = 64;
    assert_false(xlkv_cuda_attention_decode_fused_supported(1, &rule, &dp.kv, XLKV_DTYPE_BF16));
    rule.n_heads = 32;
    const xlkv_cuda_decode_rope_kv bad_slot = {.cos_table = (const float *)dp.pool, .sin_table = (const float *)dp.pool,
                                               .write_slot = 2, .k_col = 2048, .v_col = 2048 + 256};
    float *d_ws = device_alloc(64);
    assert_int_equal(xlkv_cuda_attention_decode_fused(dp.pool, dp.pool, 2048 + 512, 1, dp.tables, dp.tables, 64, &dp.kv,
                                                      &rule, &bad_slot, d_ws, (unsigned *)d_ws, XLKV_DTYPE_F32, NULL),
                     (int)cudaErrorNotSupported);
    assert_int_equal(xlkv_cuda_attention_decode_fused(dp.pool, dp.pool, 2048 + 512, 1, dp.tables, dp.tables, 64, &dp.kv,
                                                      &rule, &bad_slot, d_ws, (unsigned *)d_ws, XLKV_DTYPE_BF16, NULL),
                     (int)cudaErrorInvalidValue);
    CK(cudaFree(d_ws));
    free_device_pool(&dp);
    free_host_pool(&hp);
}

/* Replay safety: two fused launches (two layers: one writing and reading slot 1, one reading slot 1 with the diagonal
 * masked and writing slot 0) captured in one CUDA graph sharing one counter array, the graph launched twice; every
 * replay must give the outputs of the eager launches bit for bit (the counters are re-armed by each launch's last
 * CTA; a counter left nonzero would skip or repeat a combine), and the counters end at zero. */
static void attention_decode_fused_graph_replays(void **state) {
    (void)state;
    const xlkv_dtype dt = XLKV_DTYPE_BF16;
    const attention_shape sh = {32, 4, 64};
    const int batch = 3, max_positions = 300, kv_dim = sh.n_kv_heads * sh.head_dim, q_width = sh.n_heads * sh.head_dim;
    const int qkv_stride = q_width + 2 * kv_dim, half = sh.head_dim / 2;
    const int row_seq[3] = {0, 1, 2}, row_pos[3] = {299, 64, 5};
    host_pool hp = make_host_pool(2, 16, kv_dim, batch, max_positions, dt);
    device_pool dp = upload_pool(&hp, dt);
    float *cos_t, *sin_t;
    rope_tables(max_positions, sh.head_dim, &cos_t, &sin_t);
    float *d_cos = to_device(cos_t, (size_t)max_positions * half, XLKV_DTYPE_F32);
    float *d_sin = to_device(sin_t, (size_t)max_positions * half, XLKV_DTYPE_F32);
    float *qkv = random_host((size_t)batch * qkv_stride, dt);
    void *d_qkv = to_device(qkv, (size_t)batch * qkv_stride, dt);
    int *d_seq = ints_to_device(row_seq, batch), *d_pos = ints_to_device(row_pos, batch);
    const size_t ws_floats = xlkv_cuda_attention_decode_workspace(batch, sh.n_heads, sh.head_dim, max_positions);
    const size_t n_counters = xlkv_cuda_attention_decode_fused_counters(batch, sh.n_kv_heads);
    float *d_ws = device_poisoned(ws_floats, XLKV_DTYPE_F32);
    unsigned *d_counters = device_alloc(n_counters * sizeof(unsigned));
    CK(cudaMemset(d_counters, 0, n_counters * sizeof(unsigned)));
    void *d_out[2] = {device_poisoned((size_t)batch * q_width, dt), device_poisoned((size_t)batch * q_width, dt)};
    const xlkv_attention_rule rules[2] = {
        {.n_heads = sh.n_heads, .n_kv_heads = sh.n_kv_heads, .head_dim = sh.head_dim, .read_slot = 1},
        {.n_heads = sh.n_heads, .n_kv_heads = sh.n_kv_heads, .head_dim = sh.head_dim, .mask_diagonal = 1,
         .read_slot = 1}};
    const xlkv_cuda_decode_rope_kv writes[2] = {
        {.cos_table = d_cos, .sin_table = d_sin, .write_slot = 1, .k_col = q_width, .v_col = q_width + kv_dim},
        {.cos_table = d_cos, .sin_table = d_sin, .write_slot = 0, .k_col = q_width, .v_col = q_width + kv_dim}};
    cudaStream_t stream;
    CK(cudaStreamCreate(&stream));
    float *eager[2];
    for (int l = 0; l < 2; l++) {
        CK_LAUNCH(xlkv_cuda_attention_decode_fused(d_out[l], d_qkv, qkv_stride, batch, d_seq, d_pos, max_positions,
                                                   &dp.kv, &rules[l], &writes[l], d_ws, d_counters, dt, stream));
        eager[l] = from_device(d_out[l], (size_t)batch * q_width, dt);
    }
    cudaGraph_t graph;
    cudaGraphExec_t exec;
    CK(cudaStreamBeginCapture(stream, cudaStreamCaptureModeThreadLocal));
    for (int l = 0; l < 2; l++)
        assert_int_equal(xlkv_cuda_attention_decode_fused(d_out[l], d_qkv, qkv_stride, batch, d_seq, d_pos,
                                                          max_positions, &dp.kv, &rules[l], &writes[l], d_ws,
                                                          d_counters, dt, stream),
                         0);
    CK(cudaStreamEndCapture(stream, &graph));
    CK(cudaGraphInstantiate(&exec, graph, 0));
    for (int replay = 0; replay < 2; replay++) {
        for (int l = 0; l < 2; l++) CK(cudaMemset(d_out[l], 0xFF, (size_t)batch * q_width * dt_size(dt)));
        CK(cudaGraphLaunch(exec, stream));
        CK(cudaStreamSynchronize(stream));
        for (int l = 0; l < 2; l++) {
            float *got = from_device(d_out[l], (size_t)batch * q_width, dt);
            char shape[96];
            snprintf(shape, sizeof shape, "graph replay %d, launch %d of 2, b=%d h=32 kvh=4 hd=64", replay + 1, l + 1,
                     batch);
            printf("check fused %-60s max err vs eager %.3e (tol 0)\n", shape,
                   tu_max_abs_diff(got, eager[l], (size_t)batch * q_width));
            expect_same_bits("fused graph", dt, shape, got, eager[l], (size_t)batch * q_width, "the eager launch");
            free(got);
        }
        unsigned counters[16];
        assert_true(n_counters <= 16);
        CK(cudaMemcpy(counters, d_counters, n_counters * sizeof(unsigned), cudaMemcpyDeviceToHost));
        for (size_t i = 0; i < n_counters; i++)
            if (counters[i] != 0) fail_msg("fused graph replay %d: counter %zu left at %u", replay + 1, i, counters[i]);
    }
    CK(cudaGraphExecDestroy(exec));
    CK(cudaGraphDestroy(graph));
    CK(cudaStreamDestroy(stream));
    for (int l = 0; l < 2; l++) {
        free(eager[l]);
        CK(cudaFree(d_out[l]));
    }
    free(qkv);
    free(cos_t);
    free(sin_t);
    CK(cudaFree(d_cos));
    CK(cudaFree(d_sin));
    CK(cudaFree(d_qkv));
    CK(cudaFree(d_seq));
    CK(cudaFree(d_pos));
    CK(cudaFree(d_ws));
    CK(cudaFree(d_counters));
    free_device_pool(&dp);
    free_host_pool(&hp);
}

int main(void) {
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(elementwise_kernels_match_cpu),
        cmocka_unit_test(rope_matches_cpu),
        cmocka_unit_test(kv_write_and_zero_match_host),
        cmocka_unit_test(attention_prefill_matches_cpu),
        cmocka_unit_test(attention_decode_matches_cpu),
        cmocka_unit_test(attention_decode_kernels_match_cpu),
        cmocka_unit_test(gemv_matches_cpu),
        cmocka_unit_test(argmax_and_greedy_sampling),
        cmocka_unit_test(sampling_is_deterministic_per_seed_and_step),
        cmocka_unit_test(sampling_matches_softmax_frequencies),
        cmocka_unit_test(repetition_penalty_changes_the_choice),
        cmocka_unit_test(gemv_fused_matches_cpu_and_unfused),
        cmocka_unit_test(gemv_chain_matches_separate_launches),
        cmocka_unit_test(rope_kv_write_matches_unfused),
        cmocka_unit_test(sample_split_matches_sample),
        cmocka_unit_test(attention_decode_fused_matches_unfused),
        cmocka_unit_test(attention_decode_fused_graph_replays),
    };
    return cmocka_run_group_tests(tests, setup_device, NULL);
}
