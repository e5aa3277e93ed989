/* tests/cuda/test_cuda_train_fused: the bf16 trainer's fused layer passes (backend/cuda/train_fused.h,
 * XLKV_TRAIN_FUSE).
 *  1. every fused kernel on random inputs (odd and vector-friendly shapes, row strides) against
 *     a. the unfused GPU kernels it replaces (train_kernels.h, then the rounding of train_bf16.h): the same bits
 *        (0 differing elements; the fp32 arithmetic is written the same way);
 *     b. a CPU reference from the definition, rounded to nearest even: at most 1 bf16 ulp apart (the CPU's expf /
 *        sqrtf / summation order move the fp32 value by a few fp32 ulps, which may cross a bf16 rounding boundary);
 *        pure roundings (dv's copy, the RMSNorm backward's bf16(dx)) exactly;
 *     and bytes outside the written columns of a strided output left as they were; bad sizes refused.
 *  2. the trainer, fused (default) vs XLKV_TRAIN_FUSE=0, bf16 operands, tiny models (standard, cla:2, lckv:1 cyclic,
 *     and head_dim 64 where flash attention runs): one forward + backward. The fused path writes the products' outputs
 *     in bf16 where an elementwise kernel reads them (gate|up, the o / down branches, dh, dxb; as torch autocast;
 *     the unfused path keeps them fp32), so the two differ by bf16 roundings of activations, each at most u = 2^-8
 *     relative (tests/cuda/test_cuda_train_bf16_inputs.c holds each kernel to it):
 *       - loss within u relative: the roundings move the branch outputs by at most u relative, which the fp32
 *         residual stream dilutes, and the loss (about ln vocab here) changes by much less than its own size
 *         (measured and printed; a wrong or stale operand moves it O(1));
 *       - gradients within 3e-2 of each tensor's largest: about four roundings on a gradient's path (gate / up, dh,
 *         dxb, a branch in the forward), each u, times a margin of 2 for cancellation in the small tensors = 8 u
 *         ~ 3e-2, as the bf16-operand test of test_cuda_train.c allows 5e-2 for the same kind of difference (a wrong
 *         or stale operand is off by O(1));
 *     then six trainer steps' losses and the held-out loss within 5e-3 relative (as bf16 operands vs fp32ops);
 *     XLKV_TRAIN_FUSE=2 refused.
 * Every check prints one "check ..." line with the measured error and the tolerance. Needs a GPU (label cuda). */
#define _DEFAULT_SOURCE /* setenv */
#include <cuda_runtime_api.h>
#include <math.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "backend/cuda/train_bf16.h"
#include "backend/cuda/train_fused.h"
#include "backend/cuda/train_kernels.h"
#include "core/file.h"
#include "testutil.h"
#include "cuda_testutil.h"
#include "train_testutil.h"
#include "train/gpu_trainer.h"
#include "train/model_setup.h"
#include "train/optimizer.h"
#include "train/trainer.h"

static int failures;
static unsigned long long rng_state = 0x2545F4914F6CDD1Dull;
static float uniform(void) { return ct_uniform(&rng_state); } /* [-1, 1) */
static float *random_array(size_t n, float scale) { return ct_random_floats(n, scale, &rng_state); }
static uint16_t *dev_bf16(size_t n) { /* filled with a sentinel (0xABCD) that no written element is expected to be */
    uint16_t *h = malloc(n * sizeof *h), *d = NULL;
    for (size_t i = 0; i < n; i++) h[i] = 0xABCDu;
    d = ct_to_device(h, n * sizeof *h);
    free(h);
    return d;
}
/* distance in bf16 ulps (sign-magnitude bits mapped onto a monotone integer line) */
static long ulps(uint16_t a, uint16_t b) {
    const long x = a & 0x8000u ? -(long)(a & 0x7FFFu) : (long)a, y = b & 0x8000u ? -(long)(b & 0x7FFFu) : (long)b;
    return labs(x - y);
}

/* One check line for a bf16 output: `got` vs `same` (the unfused GPU kernels: must be identical) and vs `ref` (the
 * CPU: within ref_tol ulps). NULL `same`: no such comparison. */
static void check_bf16(const char *what, const uint16_t *got, const uint16_t *same, const uint16_t *ref, size_t n,
                       long ref_tol) {
    size_t differ = 0;
    long worst = 0;
    for (size_t i = 0; i < n; i++) {
        if (same && got[i] != same[i]) differ++;
        const long d = ulps(got[i], ref[i]);
        if (d > worst) worst = d;
    }
    const bool ok = differ == 0 && worst <= ref_tol;
    printf("check %-62s vs unfused: %zu of %zu differ (tol 0)%s; vs CPU: err %ld ulp (tol %ld) %s\n", what, differ, n,
           same ? "" : " [n/a]", worst, ref_tol, ok ? "ok" : "FAIL");
    if (!ok) failures++;
}

static void check_floats_equal(const char *what, const float *got, const float *want, size_t n) {
    size_t differ = 0;
    for (size_t i = 0; i < n; i++) differ += memcmp(&got[i], &want[i], sizeof(float)) != 0;
    printf("check %-62s: %zu of %zu differ, err %zu (tol 0) %s\n", what, differ, n, differ, differ ? "FAIL" : "ok");
    if (differ) failures++;
}

/* elements of a strided bf16 [rows, ld] outside columns [first, first + width) still hold the sentinel */
static void check_untouched(const char *what, const uint16_t *buf, size_t rows, size_t ld, size_t first,
                            size_t width) {
    if (!ct_bf16_untouched(what, buf, rows, ld, first, width)) failures++;
}

/* ---- 1. kernels ------------------------------------------------------------------------------------------------ */
/* RMSNorm forward with bf16 out (with the saved copy of x), and residual add + RMSNorm, n x dim */
static void rmsnorm_case(int n, int dim) {
    const size_t nd = (size_t)n * (size_t)dim;
    const float eps = 1e-5f;
    float *x = random_array(nd, 2.0f), *p = random_array(nd, 1.0f), *gain = random_array((size_t)dim, 1.5f);
    float *d_x = ct_dev_floats(x, nd), *d_p = ct_dev_floats(p, nd), *d_gain = ct_dev_floats(gain, (size_t)dim);
    float *d_copy = ct_dev_floats(NULL, nd), *d_inv = ct_dev_floats(NULL, (size_t)n), *d_inv0 = ct_dev_floats(NULL, (size_t)n);
    float *d_y = ct_dev_floats(NULL, nd), *d_sum = ct_dev_floats(NULL, nd);
    uint16_t *d_y16 = dev_bf16(nd), *d_same16 = dev_bf16(nd);
    char what[120];

    /* plain: fused vs rmsnorm_forward + to_bf16, and vs the CPU */
    CK_LAUNCH(xlkv_cuda_train_rmsnorm_forward_bf16(d_y16, d_inv, d_copy, d_x, d_gain, n, dim, eps, NULL));
    CK_LAUNCH(xlkv_cuda_train_rmsnorm_forward(d_y, d_inv0, d_x, d_gain, n, dim, eps, NULL));
    CK_LAUNCH(xlkv_cuda_train_to_bf16(d_same16, d_y, (size_t)n, (size_t)dim, (size_t)dim, NULL));
    uint16_t *y16 = ct_download(d_y16, nd * 2), *same16 = ct_download(d_same16, nd * 2), *ref16 = malloc(nd * 2);
    float *copy = ct_download(d_copy, nd * 4), *inv = ct_download(d_inv, (size_t)n * 4), *inv0 = ct_download(d_inv0, (size_t)n * 4);
    for (int r = 0; r < n; r++) {
        double ss = 0.0;
        for (int i = 0; i < dim; i++) ss += (double)x[(size_t)r * dim + i] * x[(size_t)r * dim + i];
        const float s = (float)(1.0 / sqrt(ss / dim + eps));
        for (int i = 0; i < dim; i++) ref16[(size_t)r * dim + i] = ct_bf16_rne(gain[i] * (s * x[(size_t)r * dim + i]));
    }
    snprintf(what, sizeof what, "rmsnorm forward bf16 out [%d x %d]", n, dim);
    check_bf16(what, y16, same16, ref16, nd, 1);
    snprintf(what, sizeof what, "rmsnorm forward bf16 out [%d x %d] inv_rms == unfused", n, dim);
    check_floats_equal(what, inv, inv0, (size_t)n);
    snprintf(what, sizeof what, "rmsnorm forward bf16 out [%d x %d] saved copy == x", n, dim);
    check_floats_equal(what, copy, x, nd);
    free(y16), free(same16), free(copy), free(inv), free(inv0);

    /* residual add + norm: sum = x + p (out of place), vs add + rmsnorm_forward + to_bf16 */
    CK_LAUNCH(xlkv_cuda_train_add_rmsnorm_forward_bf16(d_sum, d_y16, d_inv, d_x, d_p, d_gain, n, dim, eps, NULL));
    CK_LAUNCH(xlkv_cuda_train_add(d_x, d_p, nd, NULL)); /* d_x = x + p from here */
    CK_LAUNCH(xlkv_cuda_train_rmsnorm_forward(d_y, d_inv0, d_x, d_gain, n, dim, eps, NULL));
    CK_LAUNCH(xlkv_cuda_train_to_bf16(d_same16, d_y, (size_t)n, (size_t)dim, (size_t)dim, NULL));
    y16 = ct_download(d_y16, nd * 2), same16 = ct_download(d_same16, nd * 2);
    float *sum = ct_download(d_sum, nd * 4), *want_sum = malloc(nd * 4);
    inv = ct_download(d_inv, (size_t)n * 4), inv0 = ct_download(d_inv0, (size_t)n * 4);
    for (size_t e = 0; e < nd; e++) want_sum[e] = x[e] + p[e];
    for (int r = 0; r < n; r++) {
        double ss = 0.0;
        for (int i = 0; i < dim; i++) ss += (double)want_sum[(size_t)r * dim + i] * want_sum[(size_t)r * dim + i];
        const float s = (float)(1.0 / sqrt(ss / dim + eps));
        for (int i = 0; i < dim; i++)
            ref16[(size_t)r * dim + i] = ct_bf16_rne(gain[i] * (s * want_sum[(size_t)r * dim + i]));
    }
    snprintf(what, sizeof what, "add + rmsnorm forward bf16 out [%d x %d]", n, dim);
    check_bf16(what, y16, same16, ref16, nd, 1);
    snprintf(what, sizeof what, "add + rmsnorm forward [%d x %d] sum == x + p (CPU)", n, dim);
    check_floats_equal(what, sum, want_sum, nd);
    snprintf(what, sizeof what, "add + rmsnorm forward [%d x %d] inv_rms == unfused", n, dim);
    check_floats_equal(what, inv, inv0, (size_t)n);

    /* in place (sum == a): the trainer's x_mid may be its own input in other call sites */
    CK(cudaMemcpy(d_sum, x, nd * 4, cudaMemcpyHostToDevice));
    CK_LAUNCH(xlkv_cuda_train_add_rmsnorm_forward_bf16(d_sum, d_y16, d_inv, d_sum, d_p, d_gain, n, dim, eps, NULL));
    free(sum);
    sum = ct_download(d_sum, nd * 4);
    snprintf(what, sizeof what, "add + rmsnorm forward [%d x %d] in place: sum == x + p", n, dim);
    check_floats_equal(what, sum, want_sum, nd);

    /* add_out */
    CK_LAUNCH(xlkv_cuda_train_add_out(d_y, d_p, d_sum, nd, NULL));
    free(sum);
    sum = ct_download(d_y, nd * 4);
    for (size_t e = 0; e < nd; e++) want_sum[e] = p[e] + want_sum[e];
    snprintf(what, sizeof what, "add_out [%d x %d] == a + b (CPU)", n, dim);
    check_floats_equal(what, sum, want_sum, nd);

    free(y16), free(same16), free(ref16), free(sum), free(want_sum), free(inv), free(inv0);
    free(x), free(p), free(gain);
    cudaFree(d_x), cudaFree(d_p), cudaFree(d_gain), cudaFree(d_copy), cudaFree(d_inv), cudaFree(d_inv0);
    cudaFree(d_y), cudaFree(d_sum), cudaFree(d_y16), cudaFree(d_same16);
}

static float silu_ref(float g) { return g * (1.0f / (1.0f + expf(-g))); }

/* swiglu forward (h in bf16) and backward ([dgate | dup] in bf16, row stride ld) */
static void swiglu_case(int n, int hid, size_t ld) {
    const size_t nh = (size_t)n * (size_t)hid;
    float *gate = random_array(nh, 4.0f), *up = random_array(nh, 2.0f), *dh = random_array(nh, 1.0f);
    float *d_gate = ct_dev_floats(gate, nh), *d_up = ct_dev_floats(up, nh), *d_dh = ct_dev_floats(dh, nh);
    float *d_h = ct_dev_floats(NULL, nh), *d_dg = ct_dev_floats(NULL, nh), *d_du = ct_dev_floats(NULL, nh);
    uint16_t *d_h16 = dev_bf16(nh), *d_same = dev_bf16(nh), *d_dgu = dev_bf16((size_t)n * ld);
    uint16_t *d_same_g = dev_bf16(nh), *d_same_u = dev_bf16(nh);
    char what[120];

    CK_LAUNCH(xlkv_cuda_train_swiglu_forward_bf16(d_h16, d_gate, d_up, nh, NULL));
    CK_LAUNCH(xlkv_cuda_train_swiglu_forward(d_h, d_gate, d_up, nh, NULL));
    CK_LAUNCH(xlkv_cuda_train_to_bf16(d_same, d_h, 1, nh, nh, NULL));
    uint16_t *h16 = ct_download(d_h16, nh * 2), *same = ct_download(d_same, nh * 2), *ref = malloc(nh * 2);
    for (size_t e = 0; e < nh; e++) ref[e] = ct_bf16_rne(silu_ref(gate[e]) * up[e]);
    snprintf(what, sizeof what, "swiglu forward bf16 out [%d x %d]", n, hid);
    check_bf16(what, h16, same, ref, nh, 1);

    CK_LAUNCH(xlkv_cuda_train_swiglu_backward_bf16(d_dgu, ld, d_dh, d_gate, d_up, n, hid, NULL));
    CK_LAUNCH(xlkv_cuda_train_swiglu_backward(d_dg, d_du, d_dh, d_gate, d_up, nh, NULL));
    CK_LAUNCH(xlkv_cuda_train_to_bf16(d_same_g, d_dg, 1, nh, nh, NULL));
    CK_LAUNCH(xlkv_cuda_train_to_bf16(d_same_u, d_du, 1, nh, nh, NULL));
    uint16_t *dgu = ct_download(d_dgu, (size_t)n * ld * 2), *same_g = ct_download(d_same_g, nh * 2);
    uint16_t *same_u = ct_download(d_same_u, nh * 2);
    uint16_t *got_g = malloc(nh * 2), *got_u = malloc(nh * 2), *ref_u = malloc(nh * 2);
    for (int r = 0; r < n; r++)
        for (int c = 0; c < hid; c++) {
            const size_t e = (size_t)r * hid + c;
            got_g[e] = dgu[(size_t)r * ld + c];
            got_u[e] = dgu[(size_t)r * ld + hid + c];
            const float g = gate[e], u = up[e], d = dh[e], sig = 1.0f / (1.0f + expf(-g));
            ref[e] = ct_bf16_rne(d * u * sig * (1.0f + g * (1.0f - sig)));
            ref_u[e] = ct_bf16_rne(d * (g * sig));
        }
    snprintf(what, sizeof what, "swiglu backward bf16 dgate [%d x %d], ld %zu", n, hid, ld);
    check_bf16(what, got_g, same_g, ref, nh, 1);
    snprintf(what, sizeof what, "swiglu backward bf16 dup [%d x %d], ld %zu", n, hid, ld);
    check_bf16(what, got_u, same_u, ref_u, nh, 1);
    snprintf(what, sizeof what, "swiglu backward bf16 [%d x %d], ld %zu", n, hid, ld);
    check_untouched(what, dgu, (size_t)n, ld, 0, 2 * (size_t)hid);

    free(h16), free(same), free(ref), free(dgu), free(same_g), free(same_u), free(got_g), free(got_u), free(ref_u);
    free(gate), free(up), free(dh);
    cudaFree(d_gate), cudaFree(d_up), cudaFree(d_dh), cudaFree(d_h), cudaFree(d_dg), cudaFree(d_du);
    cudaFree(d_h16), cudaFree(d_same), cudaFree(d_dgu), cudaFree(d_same_g), cudaFree(d_same_u);
}

/* RoPE (backward direction, as the trainer uses it) into columns [first, first + width) of a bf16 [n, ld], and the
 * plain copy (dv) */
static void rope_case(int batch, int seq, int n_heads, int head_dim, size_t ld, size_t first) {
    const int n = batch * seq, half = head_dim / 2;
    const size_t width = (size_t)n_heads * (size_t)head_dim, nw = (size_t)n * width;
    float *cos_t = malloc((size_t)seq * half * sizeof(float)), *sin_t = malloc((size_t)seq * half * sizeof(float));
    for (int pos = 0; pos < seq; pos++)
        for (int i = 0; i < half; i++) {
            const float angle = (float)pos / powf(10000.0f, (float)(2 * i) / (float)head_dim);
            cos_t[pos * half + i] = cosf(angle);
            sin_t[pos * half + i] = sinf(angle);
        }
    float *x = random_array(nw, 3.0f);
    float *d_x = ct_dev_floats(x, nw), *d_rot = ct_dev_floats(x, nw);
    float *d_cos = ct_dev_floats(cos_t, (size_t)seq * half), *d_sin = ct_dev_floats(sin_t, (size_t)seq * half);
    uint16_t *d_dst = dev_bf16((size_t)n * ld), *d_same = dev_bf16(nw);
    char what[140];
    for (int rotate = 1; rotate >= 0; rotate--) {
        CK_LAUNCH(xlkv_cuda_train_rope_to_bf16(d_dst + first, ld, d_x, n, seq, n_heads, head_dim, d_cos, d_sin, -1.0f,
                                               rotate, NULL));
        if (rotate) CK_LAUNCH(xlkv_cuda_train_rope(d_rot, n, seq, n_heads, head_dim, d_cos, d_sin, -1.0f, NULL));
        CK_LAUNCH(xlkv_cuda_train_to_bf16(d_same, rotate ? d_rot : d_x, 1, nw, nw, NULL));
        uint16_t *dst = ct_download(d_dst, (size_t)n * ld * 2), *same = ct_download(d_same, nw * 2);
        uint16_t *got = malloc(nw * 2), *ref = malloc(nw * 2);
        float *src_after = ct_download(d_x, nw * 4);
        for (int r = 0; r < n; r++)
            for (size_t j = 0; j < width; j++) {
                got[(size_t)r * width + j] = dst[(size_t)r * ld + first + j];
                const int i = (int)(j % (size_t)head_dim) / 2, pos = r % seq;
                const size_t pair = (size_t)r * width + j - j % 2;
                const float a = x[pair], b = x[pair + 1], c = cos_t[pos * half + i], s = -sin_t[pos * half + i];
                const float v = !rotate ? x[(size_t)r * width + j] : j % 2 == 0 ? a * c - b * s : a * s + b * c;
                ref[(size_t)r * width + j] = ct_bf16_rne(v);
            }
        snprintf(what, sizeof what, "%s bf16 [%d x %d heads x %d], ld %zu, column %zu", rotate ? "rope backward" : "copy",
                 n, n_heads, head_dim, ld, first);
        check_bf16(what, got, same, ref, nw, rotate ? 1 : 0);
        check_untouched(what, dst, (size_t)n, ld, first, width);
        snprintf(what, sizeof what, "%s bf16 [%d x %d x %d] leaves its fp32 source as it was", rotate ? "rope" : "copy",
                 n, n_heads, head_dim);
        check_floats_equal(what, src_after, x, nw);
        free(dst), free(same), free(got), free(ref), free(src_after);
    }
    free(cos_t), free(sin_t), free(x);
    cudaFree(d_x), cudaFree(d_rot), cudaFree(d_cos), cudaFree(d_sin), cudaFree(d_dst), cudaFree(d_same);
}

/* RMSNorm backward with bf16(dx) beside dx: dx and dgain identical to the plain launcher, dx16 == RNE(dx) exactly */
static void rmsnorm_backward_case(int n, int dim) {
    const size_t nd = (size_t)n * (size_t)dim;
    const int chunks = (n + XLKV_CUDA_TRAIN_ROW_CHUNK - 1) / XLKV_CUDA_TRAIN_ROW_CHUNK;
    float *x = random_array(nd, 2.0f), *dy = random_array(nd, 1.0f), *dx0 = random_array(nd, 0.5f);
    float *gain = random_array((size_t)dim, 1.5f), *inv = random_array((size_t)n, 1.0f);
    for (int r = 0; r < n; r++) inv[r] = 0.5f + fabsf(inv[r]);
    float *d_x = ct_dev_floats(x, nd), *d_dy = ct_dev_floats(dy, nd), *d_gain = ct_dev_floats(gain, (size_t)dim);
    float *d_inv = ct_dev_floats(inv, (size_t)n), *d_partials = ct_dev_floats(NULL, (size_t)chunks * dim);
    float *d_dx_a = ct_dev_floats(dx0, nd), *d_dx_b = ct_dev_floats(dx0, nd);
    float *d_dg_a = ct_dev_floats(NULL, (size_t)dim), *d_dg_b = ct_dev_floats(NULL, (size_t)dim);
    CK(cudaMemset(d_dg_a, 0, (size_t)dim * 4));
    CK(cudaMemset(d_dg_b, 0, (size_t)dim * 4));
    uint16_t *d_dx16 = dev_bf16(nd);
    CK_LAUNCH(xlkv_cuda_train_rmsnorm_backward_bf16(d_dx_a, d_dx16, d_dg_a, d_dy, d_x, d_inv, d_gain, n, dim,
                                                    d_partials, NULL));
    CK_LAUNCH(xlkv_cuda_train_rmsnorm_backward(d_dx_b, d_dg_b, d_dy, d_x, d_inv, d_gain, n, dim, d_partials, NULL));
    float *dx_a = ct_download(d_dx_a, nd * 4), *dx_b = ct_download(d_dx_b, nd * 4);
    float *dg_a = ct_download(d_dg_a, (size_t)dim * 4), *dg_b = ct_download(d_dg_b, (size_t)dim * 4);
    uint16_t *dx16 = ct_download(d_dx16, nd * 2), *ref = malloc(nd * 2);
    for (size_t e = 0; e < nd; e++) ref[e] = ct_bf16_rne(dx_b[e]);
    char what[120];
    snprintf(what, sizeof what, "rmsnorm backward [%d x %d] dx == without bf16 out", n, dim);
    check_floats_equal(what, dx_a, dx_b, nd);
    snprintf(what, sizeof what, "rmsnorm backward [%d x %d] dgain == without bf16 out", n, dim);
    check_floats_equal(what, dg_a, dg_b, (size_t)dim);
    snprintf(what, sizeof what, "rmsnorm backward [%d x %d] bf16(dx) vs RNE of dx", n, dim);
    check_bf16(what, dx16, NULL, ref, nd, 0);
    free(x), free(dy), free(dx0), free(gain), free(inv), free(dx_a), free(dx_b), free(dg_a), free(dg_b), free(dx16);
    free(ref);
    cudaFree(d_x), cudaFree(d_dy), cudaFree(d_gain), cudaFree(d_inv), cudaFree(d_partials), cudaFree(d_dx_a);
    cudaFree(d_dx_b), cudaFree(d_dg_a), cudaFree(d_dg_b), cudaFree(d_dx16);
}

/* RMSNorm backward with the gain gradient folded into the rows pass (xlkv_cuda_train_rmsnorm_backward_folded):
 * dx and bf16(dx) bit-identical to the two-pass launcher; dx vs a CPU reference in double (relative to the largest
 * |dx|) and dgain (added onto non-zero values) vs the CPU in double, measured against each column's sum of |terms|
 * (the scale of fp32 summation error), as is the two-pass launcher's dgain; two runs give the same bits. */
static void rmsnorm_backward_folded_case(int n, int dim) {
    const size_t nd = (size_t)n * (size_t)dim;
    const int chunks = (n + XLKV_CUDA_TRAIN_ROW_CHUNK - 1) / XLKV_CUDA_TRAIN_ROW_CHUNK;
    float *x = random_array(nd, 2.0f), *dy = random_array(nd, 1.0f), *dx0 = random_array(nd, 0.5f);
    float *gain = random_array((size_t)dim, 1.5f), *inv = random_array((size_t)n, 1.0f);
    float *dg0 = random_array((size_t)dim, 3.0f);
    for (int r = 0; r < n; r++) inv[r] = 0.5f + fabsf(inv[r]);
    float *d_x = ct_dev_floats(x, nd), *d_dy = ct_dev_floats(dy, nd), *d_gain = ct_dev_floats(gain, (size_t)dim);
    float *d_inv = ct_dev_floats(inv, (size_t)n), *d_partials = ct_dev_floats(NULL, (size_t)chunks * dim);
    float *d_dx[3], *d_dg[3];
    uint16_t *d_dx16[3];
    for (int k = 0; k < 3; k++) {
        d_dx[k] = ct_dev_floats(dx0, nd), d_dg[k] = ct_dev_floats(dg0, (size_t)dim);
        d_dx16[k] = dev_bf16(nd);
    }
    /* 0 and 1: folded (twice), 2: the two-pass launcher */
    for (int k = 0; k < 2; k++)
        CK_LAUNCH(xlkv_cuda_train_rmsnorm_backward_folded(d_dx[k], d_dx16[k], d_dg[k], d_dy, d_x, d_inv, d_gain, n,
                                                          dim, d_partials, NULL));
    CK_LAUNCH(xlkv_cuda_train_rmsnorm_backward_bf16(d_dx[2], d_dx16[2], d_dg[2], d_dy, d_x, d_inv, d_gain, n, dim,
                                                    d_partials, NULL));
    float *dx[3], *dg[3];
    uint16_t *dx16[3];
    for (int k = 0; k < 3; k++) {
        dx[k] = ct_download(d_dx[k], nd * 4), dg[k] = ct_download(d_dg[k], (size_t)dim * 4);
        dx16[k] = ct_download(d_dx16[k], nd * 2);
    }
    /* CPU reference in double */
    double dx_err = 0.0, dx_max = 0.0, dg_err = 0.0, dg_err_two_pass = 0.0, scale = 0.0;
    double *ref_dg = calloc((size_t)dim, sizeof(double)), *abs_dg = calloc((size_t)dim, sizeof(double));
    for (int r = 0; r < n; r++) {
        const size_t off = (size_t)r * (size_t)dim;
        const double s = inv[r];
        double dot = 0.0;
        for (int i = 0; i < dim; i++) dot += (double)gain[i] * dy[off + i] * x[off + i];
        for (int i = 0; i < dim; i++) {
            const double want = dx0[off + i] + s * gain[i] * dy[off + i] - dot * s * s * s / dim * x[off + i];
            dx_err = fmax(dx_err, fabs(dx[0][off + i] - want));
            dx_max = fmax(dx_max, fabs(want));
            const double term = (double)dy[off + i] * x[off + i] * s;
            ref_dg[i] += term, abs_dg[i] += fabs(term);
        }
    }
    for (int i = 0; i < dim; i++) {
        scale = fmax(scale, abs_dg[i] + fabs(dg0[i]));
        dg_err = fmax(dg_err, fabs(dg[0][i] - (dg0[i] + ref_dg[i])));
        dg_err_two_pass = fmax(dg_err_two_pass, fabs(dg[2][i] - (dg0[i] + ref_dg[i])));
    }
    dx_err /= fmax(dx_max, 1e-30), dg_err /= fmax(scale, 1e-30), dg_err_two_pass /= fmax(scale, 1e-30);
    char what[120];
    snprintf(what, sizeof what, "rmsnorm backward folded [%d x %d] dx == two-pass", n, dim);
    check_floats_equal(what, dx[0], dx[2], nd);
    snprintf(what, sizeof what, "rmsnorm backward folded [%d x %d] bf16(dx) == two-pass", n, dim);
    uint16_t *rne = malloc(nd * 2); /* the CPU's round to nearest even of the folded dx */
    for (size_t e = 0; e < nd; e++) rne[e] = ct_bf16_rne(dx[0][e]);
    check_bf16(what, dx16[0], dx16[2], rne, nd, 0);
    free(rne);
    snprintf(what, sizeof what, "rmsnorm backward folded [%d x %d] two runs: dx", n, dim);
    check_floats_equal(what, dx[0], dx[1], nd);
    snprintf(what, sizeof what, "rmsnorm backward folded [%d x %d] two runs: dgain", n, dim);
    check_floats_equal(what, dg[0], dg[1], (size_t)dim);
    const bool dx_ok = dx_err <= 1e-5, dg_ok = dg_err <= 1e-5;
    printf("check %-62s: err %.3g (tol 1e-05) %s\n", "rmsnorm backward folded dx vs CPU (rel. to max |dx|)",
           dx_err, dx_ok ? "ok" : "FAIL");
    snprintf(what, sizeof what, "rmsnorm backward folded [%d x %d] dgain vs CPU", n, dim);
    printf("check %-62s: err %.3g (tol 1e-05; two-pass %.3g) %s\n", what, dg_err, dg_err_two_pass,
           dg_ok ? "ok" : "FAIL");
    if (!dx_ok || !dg_ok) failures++;
    for (int k = 0; k < 3; k++) {
        free(dx[k]), free(dg[k]), free(dx16[k]);
        cudaFree(d_dx[k]), cudaFree(d_dg[k]), cudaFree(d_dx16[k]);
    }
    free(x), free(dy), free(dx0), free(gain), free(inv), free(dg0), free(ref_dg), free(abs_dg);
    cudaFree(d_x), cudaFree(d_dy), cudaFree(d_gain), cudaFree(d_inv), cudaFree(d_partials);
}

/* The inputs of an AdamW check: w, g, m, v random on the host (v >= 0) and two device copies of each (one per
 * side of the comparison), with two bf16 shadows. */
typedef struct {
    float *w, *g, *m, *v;
    float *d_w[2], *d_g[2], *d_m[2], *d_v[2];
    uint16_t *d_w16[2];
} adamw_inputs;

static void adamw_inputs_make(adamw_inputs *in, size_t total) {
    in->w = random_array(total, 1.0f), in->g = random_array(total, 0.3f), in->m = random_array(total, 0.1f);
    in->v = random_array(total, 0.01f);
    for (size_t i = 0; i < total; i++) in->v[i] = fabsf(in->v[i]);
    for (int k = 0; k < 2; k++) {
        in->d_w[k] = ct_dev_floats(in->w, total), in->d_g[k] = ct_dev_floats(in->g, total);
        in->d_m[k] = ct_dev_floats(in->m, total), in->d_v[k] = ct_dev_floats(in->v, total);
        in->d_w16[k] = dev_bf16(total);
    }
}

static void adamw_inputs_free(adamw_inputs *in) {
    for (int k = 0; k < 2; k++)
        cudaFree(in->d_w[k]), cudaFree(in->d_g[k]), cudaFree(in->d_m[k]), cudaFree(in->d_v[k]), cudaFree(in->d_w16[k]);
    free(in->w), free(in->g), free(in->m), free(in->v);
}

/* The AdamW over runs with their own decay (xlkv_cuda_train_adamw_bf16_runs, the optimizer step's one launch) against
 * one xlkv_cuda_train_adamw_bf16 call per run: the same bits in w, m, v and the bf16 shadow. Run sizes not multiples of
 * four (groups of four straddling two runs), more runs than one launch takes (the table split over launches), and
 * `offset` floats into the buffers (1: the scalar path); bad tables refused. */
static void adamw_runs_case(const size_t *sizes, int runs, size_t offset, float coef) {
    size_t *ends = malloc((size_t)runs * sizeof *ends), n = 0;
    float *decays = malloc((size_t)runs * sizeof *decays);
    for (int r = 0; r < runs; r++) n += sizes[r], ends[r] = n, decays[r] = r % 2 ? 0.1f : (r % 3 ? 0.0f : 0.03f);
    const size_t total = n + offset;
    adamw_inputs in;
    adamw_inputs_make(&in, total);
    float **d_w = in.d_w, **d_g = in.d_g, **d_m = in.d_m, **d_v = in.d_v;
    uint16_t **d_w16 = in.d_w16;
    const float lr = 1e-2f, beta1 = 0.9f, beta2 = 0.95f, eps = 1e-8f;
    const float c1 = (float)(1.0 - pow(0.9, 3.0)), c2 = (float)(1.0 - pow(0.95, 3.0));
    float *d_coef = ct_dev_floats(&coef, 1);
    CK_LAUNCH(xlkv_cuda_train_adamw_bf16_runs(d_w[0] + offset, d_w16[0] + offset, d_g[0] + offset, d_m[0] + offset,
                                              d_v[0] + offset, ends, decays, runs, d_coef, lr, beta1, beta2, eps, c1,
                                              c2, NULL));
    for (int r = 0; r < runs; r++) {
        const size_t o = offset + (r ? ends[r - 1] : 0);
        CK_LAUNCH(xlkv_cuda_train_adamw_bf16(d_w[1] + o, d_w16[1] + o, d_g[1] + o, d_m[1] + o, d_v[1] + o, sizes[r],
                                             d_coef, lr, beta1, beta2, eps, decays[r], c1, c2, NULL));
    }
    char what[120];
    float *got[2][3];
    uint16_t *got16[2];
    for (int k = 0; k < 2; k++) {
        got[k][0] = ct_download(d_w[k], total * 4), got[k][1] = ct_download(d_m[k], total * 4);
        got[k][2] = ct_download(d_v[k], total * 4), got16[k] = ct_download(d_w16[k], total * 2);
    }
    static const char *names[3] = {"w", "m", "v"};
    for (int b = 0; b < 3; b++) {
        snprintf(what, sizeof what, "adamw runs [%d runs, %zu floats, offset %zu] %s == per run", runs, n, offset,
                 names[b]);
        check_floats_equal(what, got[0][b], got[1][b], total);
    }
    size_t differ = 0;
    for (size_t i = 0; i < total; i++) differ += got16[0][i] != got16[1][i];
    snprintf(what, sizeof what, "adamw runs [%d runs, %zu floats, offset %zu] bf16 shadow == per run", runs, n, offset);
    printf("check %-62s: %zu of %zu differ, err %zu (tol 0) %s\n", what, differ, total, differ, differ ? "FAIL" : "ok");
    if (differ) failures++;
    for (int k = 0; k < 2; k++) {
        for (int b = 0; b < 3; b++) free(got[k][b]);
        free(got16[k]);
    }
    adamw_inputs_free(&in);
    free(ends), free(decays);
    cudaFree(d_coef);
}

static void refused(const char *what, int rc);

static void adamw_runs_cases(void) {
    const size_t layers[] = {768 + 4096, 768 * 4, 768, 2048 * 3, 768, 1001, 3, 4096, 7, 1, 2, 5};
    adamw_runs_case(layers, 12, 0, 0.37f); /* float4; runs of 1 to 6,144 floats, several straddling groups */
    adamw_runs_case(layers, 12, 1, 1.0f);  /* misaligned: scalar */
    size_t many[150];
    for (int r = 0; r < 150; r++) many[r] = 1 + (size_t)((r * 37) % 53);
    adamw_runs_case(many, 150, 0, 0.5f); /* 150 runs: three launches of at most 64 */
    const size_t ends_bad[2] = {10, 10};
    const float decays[2] = {0.0f, 0.1f};
    float *d = ct_dev_floats(NULL, 16);
    refused("adamw runs with ends not increasing",
            xlkv_cuda_train_adamw_bf16_runs(d, (uint16_t *)d, d, d, d, ends_bad, decays, 2, d, 1e-3f, 0.9f, 0.95f,
                                            1e-8f, 0.1f, 0.1f, NULL));
    refused("adamw runs with no runs",
            xlkv_cuda_train_adamw_bf16_runs(d, (uint16_t *)d, d, d, d, ends_bad, decays, 0, d, 1e-3f, 0.9f, 0.95f,
                                            1e-8f, 0.1f, 0.1f, NULL));
    cudaFree(d);
}

/* The final norm's fused launchers against what they replace, bit for bit: add (bf16 branch) + RMSNorm with an fp32
 * output (xlkv_cuda_train_add_rmsnorm_forward_bf16b_f32) vs xlkv_cuda_train_add_out_bf16b +
 * xlkv_cuda_train_rmsnorm_forward (sum, y, inv_rms), and the backward that writes dx
 * (xlkv_cuda_train_rmsnorm_backward_folded_dy16_set, dx's old contents garbage) vs clearing dx +
 * xlkv_cuda_train_rmsnorm_backward_folded_dy16 (dx, bf16(dx), dgain); the sum also vs the CPU's fp32 a + b (exact).
 * Widths: register rows, scalar, float4 loops, two-pass. */
static void final_norm_case(int n, int dim) {
    const size_t nd = (size_t)n * (size_t)dim;
    const int chunks = (n + XLKV_CUDA_TRAIN_ROW_CHUNK - 1) / XLKV_CUDA_TRAIN_ROW_CHUNK;
    float *a = random_array(nd, 2.0f), *b = random_array(nd, 1.0f), *dy = random_array(nd, 1.0f);
    float *gain = random_array((size_t)dim, 1.5f), *dg0 = random_array((size_t)dim, 3.0f);
    float *garbage = random_array(nd, 100.0f), *inv = random_array((size_t)n, 1.0f);
    for (int r = 0; r < n; r++) inv[r] = 0.5f + fabsf(inv[r]);
    uint16_t *b16 = malloc(nd * 2), *dy16 = malloc(nd * 2);
    float *want_sum = malloc(nd * 4);
    for (size_t e = 0; e < nd; e++) {
        b16[e] = ct_bf16_rne(b[e]), dy16[e] = ct_bf16_rne(dy[e]);
        const uint32_t bits = (uint32_t)b16[e] << 16;
        float wide;
        memcpy(&wide, &bits, 4);
        want_sum[e] = a[e] + wide;
    }
    float *d_a = ct_dev_floats(a, nd), *d_gain = ct_dev_floats(gain, (size_t)dim), *d_inv = ct_dev_floats(inv, (size_t)n);
    float *d_partials = ct_dev_floats(NULL, (size_t)chunks * dim);
    uint16_t *d_b16 = ct_to_device(b16, nd * 2), *d_dy16 = ct_to_device(dy16, nd * 2);
    float *d_sum[2], *d_y[2], *d_inv_out[2], *d_dx[4], *d_dg[4];
    uint16_t *d_dx16[4];
    for (int k = 0; k < 2; k++)
        d_sum[k] = ct_dev_floats(NULL, nd), d_y[k] = ct_dev_floats(NULL, nd), d_inv_out[k] = ct_dev_floats(NULL, (size_t)n);
    for (int k = 0; k < 4; k++)
        d_dx[k] = ct_dev_floats(garbage, nd), d_dg[k] = ct_dev_floats(dg0, (size_t)dim), d_dx16[k] = dev_bf16(nd);
    CK_LAUNCH(xlkv_cuda_train_add_rmsnorm_forward_bf16b_f32(d_sum[0], d_y[0], d_inv_out[0], d_a, d_b16, d_gain, n, dim,
                                                            1e-5f, NULL));
    CK_LAUNCH(xlkv_cuda_train_add_out_bf16b(d_sum[1], d_a, d_b16, nd, NULL));
    CK_LAUNCH(xlkv_cuda_train_rmsnorm_forward(d_y[1], d_inv_out[1], d_sum[1], d_gain, n, dim, 1e-5f, NULL));
    /* 0, 1: _set with and without dx16; 2, 3: cleared + the += launcher */
    for (int k = 0; k < 2; k++) {
        uint16_t *dx16 = k ? NULL : d_dx16[k];
        CK_LAUNCH(xlkv_cuda_train_rmsnorm_backward_folded_dy16_set(d_dx[k], dx16, d_dg[k], d_dy16, d_a, d_inv, d_gain, n,
                                                                   dim, d_partials, NULL));
        CK(cudaMemset(d_dx[k + 2], 0, nd * 4));
        CK_LAUNCH(xlkv_cuda_train_rmsnorm_backward_folded_dy16(d_dx[k + 2], k ? NULL : d_dx16[k + 2], d_dg[k + 2],
                                                               d_dy16, d_a, d_inv, d_gain, n, dim, d_partials, NULL));
    }
    char what[120];
    float *got[2][3];
    for (int k = 0; k < 2; k++) {
        got[k][0] = ct_download(d_sum[k], nd * 4), got[k][1] = ct_download(d_y[k], nd * 4);
        got[k][2] = ct_download(d_inv_out[k], (size_t)n * 4);
    }
    static const char *names[3] = {"sum", "y", "inv_rms"};
    for (int o = 0; o < 3; o++) {
        snprintf(what, sizeof what, "add + final rmsnorm fp32 out [%d x %d] %s == two launches", n, dim, names[o]);
        check_floats_equal(what, got[0][o], got[1][o], o == 2 ? (size_t)n : nd);
    }
    snprintf(what, sizeof what, "add + final rmsnorm fp32 out [%d x %d] sum == a + b (CPU)", n, dim);
    check_floats_equal(what, got[0][0], want_sum, nd);
    for (int k = 0; k < 2; k++) {
        float *dx_set = ct_download(d_dx[k], nd * 4), *dx_add = ct_download(d_dx[k + 2], nd * 4);
        float *dg_set = ct_download(d_dg[k], (size_t)dim * 4), *dg_add = ct_download(d_dg[k + 2], (size_t)dim * 4);
        uint16_t *h_set = ct_download(d_dx16[k], nd * 2), *h_add = ct_download(d_dx16[k + 2], nd * 2);
        snprintf(what, sizeof what, "rmsnorm backward _set [%d x %d]%s dx == clear + add", n, dim, k ? " no dx16" : "");
        check_floats_equal(what, dx_set, dx_add, nd);
        snprintf(what, sizeof what, "rmsnorm backward _set [%d x %d]%s dgain == clear + add", n, dim,
                 k ? " no dx16" : "");
        check_floats_equal(what, dg_set, dg_add, (size_t)dim);
        size_t differ = 0;
        for (size_t e = 0; e < nd; e++) differ += h_set[e] != h_add[e];
        snprintf(what, sizeof what, "rmsnorm backward _set [%d x %d]%s bf16(dx) == clear + add", n, dim,
                 k ? " no dx16 (untouched)" : "");
        printf("check %-62s: %zu of %zu differ, err %zu (tol 0) %s\n", what, differ, nd, differ, differ ? "FAIL" : "ok");
        if (differ) failures++;
        free(dx_set), free(dx_add), free(dg_set), free(dg_add), free(h_set), free(h_add);
    }
    for (int k = 0; k < 2; k++) {
        for (int o = 0; o < 3; o++) free(got[k][o]);
        cudaFree(d_sum[k]), cudaFree(d_y[k]), cudaFree(d_inv_out[k]);
    }
    for (int k = 0; k < 4; k++) cudaFree(d_dx[k]), cudaFree(d_dg[k]), cudaFree(d_dx16[k]);
    free(a), free(b), free(dy), free(gain), free(dg0), free(garbage), free(inv), free(b16), free(dy16), free(want_sum);
    cudaFree(d_a), cudaFree(d_gain), cudaFree(d_inv), cudaFree(d_partials), cudaFree(d_b16), cudaFree(d_dy16);
}

/* The RMSNorm rows held in registers (train_rmsnorm_rows.cuh, the default) against the loop kernels they replace
 * (XLKV_TRAIN_NORM_ROWS=loops): the same per-lane order and expressions, so the same bits in every output: the fp32
 * forward (y, inv_rms), the bf16-output forward with the saved copy, add + RMSNorm (fp32 and bf16 branch: sum, y16,
 * inv_rms), the folded backward with fp32 and bf16 dy and the two-pass one (dx, bf16(dx), dgain). */
static void rows_registers_vs_loops_case(int n, int dim) {
    const size_t nd = (size_t)n * (size_t)dim;
    const int chunks = (n + XLKV_CUDA_TRAIN_ROW_CHUNK - 1) / XLKV_CUDA_TRAIN_ROW_CHUNK;
    float *x = random_array(nd, 2.0f), *p = random_array(nd, 1.0f), *dy = random_array(nd, 1.0f);
    float *dx0 = random_array(nd, 0.5f), *gain = random_array((size_t)dim, 1.5f), *dg0 = random_array((size_t)dim, 3.0f);
    uint16_t *p16 = malloc(nd * 2), *dy16 = malloc(nd * 2);
    for (size_t e = 0; e < nd; e++) p16[e] = ct_bf16_rne(p[e]), dy16[e] = ct_bf16_rne(dy[e]);
    float *d_x = ct_dev_floats(x, nd), *d_p = ct_dev_floats(p, nd), *d_dy = ct_dev_floats(dy, nd);
    float *d_gain = ct_dev_floats(gain, (size_t)dim), *d_partials = ct_dev_floats(NULL, (size_t)chunks * dim);
    uint16_t *d_p16 = ct_to_device(p16, nd * 2), *d_dy16 = ct_to_device(dy16, nd * 2);
    enum { OUTPUTS = 17 };
    /* per path (0 registers, 1 loops): every output, downloaded */
    void *got[2][OUTPUTS];
    size_t bytes[OUTPUTS];
    for (int path = 0; path < 2; path++) {
        if (path) setenv("XLKV_TRAIN_NORM_ROWS", "loops", 1);
        else unsetenv("XLKV_TRAIN_NORM_ROWS");
        float *d_y = ct_dev_floats(NULL, nd), *d_inv = ct_dev_floats(NULL, (size_t)n), *d_sum = ct_dev_floats(NULL, nd);
        float *d_inv2 = ct_dev_floats(NULL, (size_t)n), *d_copy = ct_dev_floats(NULL, nd);
        float *d_sum16 = ct_dev_floats(NULL, nd), *d_inv3 = ct_dev_floats(NULL, (size_t)n);
        uint16_t *d_y16 = dev_bf16(nd), *d_ya16 = dev_bf16(nd), *d_yb16 = dev_bf16(nd);
        float *d_dx[3], *d_dg[3];
        uint16_t *d_dx16[3];
        for (int k = 0; k < 3; k++)
            d_dx[k] = ct_dev_floats(dx0, nd), d_dg[k] = ct_dev_floats(dg0, (size_t)dim), d_dx16[k] = dev_bf16(nd);
        CK_LAUNCH(xlkv_cuda_train_rmsnorm_forward(d_y, d_inv, d_x, d_gain, n, dim, 1e-5f, NULL));
        CK_LAUNCH(xlkv_cuda_train_rmsnorm_forward_bf16(d_y16, d_inv2, d_copy, d_x, d_gain, n, dim, 1e-5f, NULL));
        CK_LAUNCH(xlkv_cuda_train_add_rmsnorm_forward_bf16(d_sum, d_ya16, d_inv3, d_x, d_p, d_gain, n, dim, 1e-5f,
                                                           NULL));
        CK_LAUNCH(xlkv_cuda_train_add_rmsnorm_forward_bf16b(d_sum16, d_yb16, d_inv3, d_x, d_p16, d_gain, n, dim, 1e-5f,
                                                            NULL));
        CK_LAUNCH(xlkv_cuda_train_rmsnorm_backward_folded(d_dx[0], d_dx16[0], d_dg[0], d_dy, d_x, d_inv, d_gain, n, dim,
                                                          d_partials, NULL));
        CK_LAUNCH(xlkv_cuda_train_rmsnorm_backward_folded_dy16(d_dx[1], d_dx16[1], d_dg[1], d_dy16, d_x, d_inv, d_gain,
                                                               n, dim, d_partials, NULL));
        CK_LAUNCH(xlkv_cuda_train_rmsnorm_backward_bf16(d_dx[2], d_dx16[2], d_dg[2], d_dy, d_x, d_inv, d_gain, n, dim,
                                                        d_partials, NULL));
        const void *outputs[OUTPUTS] = {d_y, d_inv, d_y16, d_inv2, d_copy, d_sum, d_ya16, d_sum16, d_yb16, d_inv3,
                                        d_dx[0], d_dx16[0], d_dg[0], d_dx[1], d_dx16[1], d_dg[1], d_dx[2]};
        const size_t sizes[OUTPUTS] = {nd * 4, (size_t)n * 4, nd * 2, (size_t)n * 4, nd * 4, nd * 4, nd * 2, nd * 4,
                                       nd * 2, (size_t)n * 4, nd * 4, nd * 2, (size_t)dim * 4, nd * 4, nd * 2,
                                       (size_t)dim * 4, nd * 4};
        for (int o = 0; o < OUTPUTS; o++) got[path][o] = ct_download(outputs[o], sizes[o]), bytes[o] = sizes[o];
        cudaFree(d_y), cudaFree(d_inv), cudaFree(d_sum), cudaFree(d_inv2), cudaFree(d_copy), cudaFree(d_sum16);
        cudaFree(d_inv3), cudaFree(d_y16), cudaFree(d_ya16), cudaFree(d_yb16);
        for (int k = 0; k < 3; k++) cudaFree(d_dx[k]), cudaFree(d_dg[k]), cudaFree(d_dx16[k]);
    }
    unsetenv("XLKV_TRAIN_NORM_ROWS");
    static const char *names[OUTPUTS] = {"fwd y", "fwd inv_rms", "fwd bf16 y16", "fwd bf16 inv_rms", "fwd bf16 copy",
                                         "add sum", "add y16", "add bf16b sum", "add bf16b y16", "add bf16b inv_rms",
                                         "bwd folded dx", "bwd folded dx16", "bwd folded dgain", "bwd dy16 dx",
                                         "bwd dy16 dx16", "bwd dy16 dgain", "bwd two-pass dx"};
    for (int o = 0; o < OUTPUTS; o++) {
        size_t differ = 0;
        for (size_t b = 0; b < bytes[o]; b += 2) differ += memcmp((char *)got[0][o] + b, (char *)got[1][o] + b, 2) != 0;
        char what[120];
        snprintf(what, sizeof what, "rmsnorm rows registers == loops [%d x %d] %s", n, dim, names[o]);
        printf("check %-62s: %zu of %zu half-words differ (tol 0) %s\n", what, differ, bytes[o] / 2,
               differ ? "FAIL" : "ok");
        if (differ) failures++;
        free(got[0][o]), free(got[1][o]);
    }
    free(x), free(p), free(dy), free(dx0), free(gain), free(dg0), free(p16), free(dy16);
    cudaFree(d_x), cudaFree(d_p), cudaFree(d_dy), cudaFree(d_gain), cudaFree(d_partials), cudaFree(d_p16);
    cudaFree(d_dy16);
}

/* The bf16 trainer's AdamW (clip coefficient read from the device, bf16 shadow written in the same pass) against
 * xlkv_cuda_train_scale + xlkv_cuda_train_adamw + xlkv_cuda_train_to_bf16 (the same bits: the same fp32 operations),
 * the gradients left unscaled, and a CPU reference in double (relative to each buffer's largest value). `offset`
 * floats into the buffers: 0 takes the float4 path, 1 the scalar one. */
static void adamw_case(size_t n, size_t offset, float coef) {
    const size_t total = n + offset;
    adamw_inputs in;
    adamw_inputs_make(&in, total);
    float *w = in.w, *g = in.g, *m = in.m, *v = in.v, **d_w = in.d_w, **d_g = in.d_g, **d_m = in.d_m, **d_v = in.d_v;
    uint16_t **d_w16 = in.d_w16;
    const float lr = 1e-2f, beta1 = 0.9f, beta2 = 0.95f, eps = 1e-8f, decay = 0.1f;
    const float c1 = (float)(1.0 - pow(0.9, 3.0)), c2 = (float)(1.0 - pow(0.95, 3.0));
    float *d_coef = ct_dev_floats(&coef, 1);
    CK_LAUNCH(xlkv_cuda_train_adamw_bf16(d_w[0] + offset, d_w16[0] + offset, d_g[0] + offset, d_m[0] + offset,
                                         d_v[0] + offset, n, d_coef, lr, beta1, beta2, eps, decay, c1, c2, NULL));
    if (coef != 1.0f) CK_LAUNCH(xlkv_cuda_train_scale(d_g[1] + offset, coef, n, NULL));
    CK_LAUNCH(xlkv_cuda_train_adamw(d_w[1] + offset, d_g[1] + offset, d_m[1] + offset, d_v[1] + offset, n, lr, beta1,
                                    beta2, eps, decay, c1, c2, NULL));
    CK_LAUNCH(xlkv_cuda_train_to_bf16(d_w16[1] + offset, d_w[1] + offset, 1, n, n, NULL));
    float *got_w[2], *got_m[2], *got_v[2];
    uint16_t *got_w16[2];
    for (int k = 0; k < 2; k++) {
        got_w[k] = ct_download(d_w[k], total * 4), got_m[k] = ct_download(d_m[k], total * 4);
        got_v[k] = ct_download(d_v[k], total * 4), got_w16[k] = ct_download(d_w16[k], total * 2);
    }
    float *got_g = ct_download(d_g[0], total * 4);
    double err_w = 0, err_m = 0, err_v = 0, max_w = 0, max_m = 0, max_v = 0;
    uint16_t *rne = malloc(total * 2);
    for (size_t i = 0; i < total; i++) rne[i] = i < offset ? 0xABCDu : ct_bf16_rne(got_w[0][i]);
    for (size_t i = offset; i < total; i++) {
        const double gi = (double)g[i] * coef;
        const double mi = 0.9 * m[i] + 0.1 * gi, vi = 0.95 * v[i] + 0.05 * gi * gi;
        const double upd = mi / c1 / (sqrt(vi / c2) + eps) + decay * (double)w[i], wi = w[i] - (double)lr * upd;
        err_w = fmax(err_w, fabs(got_w[0][i] - wi)), max_w = fmax(max_w, fabs(wi));
        err_m = fmax(err_m, fabs(got_m[0][i] - mi)), max_m = fmax(max_m, fabs(mi));
        err_v = fmax(err_v, fabs(got_v[0][i] - vi)), max_v = fmax(max_v, fabs(vi));
    }
    const double err = fmax(err_w / max_w, fmax(err_m / max_m, err_v / max_v));
    char what[120];
    snprintf(what, sizeof what, "adamw bf16 [%zu, offset %zu, coef %g] w == scale + adamw", n, offset, coef);
    check_floats_equal(what, got_w[0], got_w[1], total);
    snprintf(what, sizeof what, "adamw bf16 [%zu, offset %zu, coef %g] m, v == scale + adamw", n, offset, coef);
    check_floats_equal(what, got_m[0], got_m[1], total);
    check_floats_equal(what, got_v[0], got_v[1], total);
    snprintf(what, sizeof what, "adamw bf16 [%zu, offset %zu, coef %g] shadow", n, offset, coef);
    check_bf16(what, got_w16[0], got_w16[1], rne, total, 0);
    snprintf(what, sizeof what, "adamw bf16 [%zu, offset %zu, coef %g] gradients unscaled", n, offset, coef);
    check_floats_equal(what, got_g, g, total);
    snprintf(what, sizeof what, "adamw bf16 [%zu, offset %zu, coef %g] vs CPU (double)", n, offset, coef);
    printf("check %-62s: err %.3g (tol 1e-06) %s\n", what, err, err <= 1e-6 ? "ok" : "FAIL");
    if (!(err <= 1e-6)) failures++;
    for (int k = 0; k < 2; k++) {
        free(got_w[k]), free(got_m[k]), free(got_v[k]), free(got_w16[k]);
    }
    adamw_inputs_free(&in);
    free(got_g), free(rne);
    cudaFree(d_coef);
}

/* The clip coefficient on the device: the norm bit-identical to the host's in-order double sum + sqrt, and the
 * coefficient to (float)(max / (norm + 1e-6)) when clipping, exactly 1 otherwise (max_norm 0: off). */
static void clip_case(size_t chunks, double max_norm_over_norm) {
    double *partials = malloc((chunks ? chunks : 1) * sizeof *partials);
    double total = 0.0;
    for (size_t c = 0; c < chunks; c++) partials[c] = 1000.0 * (1.5 + uniform()) * (1.5 + uniform());
    for (size_t c = 0; c < chunks; c++) total += partials[c];
    const double norm = sqrt(total), max_norm = max_norm_over_norm * norm;
    const float want = max_norm > 0.0 && norm > max_norm ? (float)(max_norm / (norm + 1e-6)) : 1.0f;
    double *d_partials = ct_to_device(partials, chunks * sizeof *partials), *d_norm = ct_to_device(NULL, sizeof(double));
    float *d_coef = ct_dev_floats(NULL, 1);
    CK_LAUNCH(xlkv_cuda_train_clip_coefficient(d_coef, d_norm, d_partials, chunks, max_norm, NULL));
    double got_norm = 0.0;
    float got_coef = 0.0f;
    CK(cudaMemcpy(&got_norm, d_norm, sizeof got_norm, cudaMemcpyDeviceToHost));
    CK(cudaMemcpy(&got_coef, d_coef, sizeof got_coef, cudaMemcpyDeviceToHost));
    const bool ok = memcmp(&got_norm, &norm, sizeof norm) == 0 && memcmp(&got_coef, &want, sizeof want) == 0;
    printf("check clip coefficient [%zu chunks, max %.2f x norm]: norm %.17g vs host %.17g, coef %.9g vs %.9g, err "
           "%.3g (tol 0) %s\n", chunks, max_norm_over_norm, got_norm, norm, got_coef, want,
           fabs(got_norm - norm) + fabs((double)got_coef - want), ok ? "ok" : "FAIL");
    if (!ok) failures++;
    free(partials);
    cudaFree(d_partials), cudaFree(d_norm), cudaFree(d_coef);
}

static void refused(const char *what, int rc) {
    if (!ct_refused(what, rc)) failures++;
}

static void fused_kernels_match(void **state) {
    (void)state;
    int devices = 0;
    if (cudaGetDeviceCount(&devices) != cudaSuccess || devices == 0) skip();
    failures = 0;
    rmsnorm_case(37, 64);   /* float4 path */
    rmsnorm_case(29, 70);   /* scalar path */
    rmsnorm_case(300, 768); /* the `small` width */
    rmsnorm_case(65, 4);    /* rows held in registers (train_rmsnorm_rows.cuh): one group of four a row */
    rmsnorm_case(33, 132);  /* registers, 2 groups a lane, the second only on lane 0 */
    rmsnorm_case(17, 1024); /* registers at the widest (8 groups a lane) */
    rmsnorm_case(9, 1028);  /* one group wider: the float4 loops */
    swiglu_case(33, 96, 192);  /* 4-wide, packed [dgate | dup] */
    swiglu_case(17, 50, 100);  /* scalar (hid % 4) */
    swiglu_case(9, 64, 136);   /* 4-wide, padded rows */
    rope_case(2, 24, 4, 16, 4 * 16 + 2 * 2 * 16, 0);      /* dq of [dq | dk | dv] */
    rope_case(2, 24, 2, 16, 4 * 16 + 2 * 2 * 16, 4 * 16); /* dk / dv of the same */
    rope_case(3, 17, 3, 64, 3 * 64, 0);                   /* packed, head_dim 64 */
    rmsnorm_backward_case(130, 64);
    rmsnorm_backward_case(70, 70);
    rmsnorm_backward_folded_case(130, 64);   /* float4, three chunks, the last one short */
    rmsnorm_backward_folded_case(70, 70);    /* scalar */
    rmsnorm_backward_folded_case(3, 20);     /* fewer rows than warps */
    rmsnorm_backward_folded_case(1000, 768); /* the `small` width */
    rmsnorm_backward_folded_case(150, 3000); /* 192 KB of shared memory: the opt-in size */
    rmsnorm_backward_folded_case(20, 4100);  /* 262 KB: more than a block holds, the two-pass path */
    rmsnorm_backward_folded_case(1, 4);       /* rows in registers: one group a row, one row */
    rmsnorm_backward_folded_case(67, 132);    /* registers, 2 groups a lane, the second only on lane 0 */
    rmsnorm_backward_folded_case(129, 516);   /* registers, 6 a lane, partly used; a one-row last chunk */
    rmsnorm_backward_folded_case(65, 1024);   /* registers at the widest */
    rmsnorm_backward_folded_case(31, 1028);   /* one group wider: the float4 loops */
    rmsnorm_backward_folded_case(19200, 36);  /* 300 chunks: the chunk sum's batches of eight loads and its tail */
    rows_registers_vs_loops_case(300, 768);  /* the `small` width */
    rows_registers_vs_loops_case(129, 516);  /* 6 groups a lane, partly used */
    rows_registers_vs_loops_case(65, 132);   /* 2 groups a lane, the second only on lane 0 */
    final_norm_case(300, 768); /* the `small` width: register rows */
    final_norm_case(29, 70);   /* scalar */
    final_norm_case(70, 1028); /* float4 loops */
    final_norm_case(20, 4100); /* the two-pass backward */
    refused("add + final rmsnorm without b16",
            xlkv_cuda_train_add_rmsnorm_forward_bf16b_f32((float *)8, NULL, NULL, NULL, NULL, NULL, 4, 8, 1e-5f, NULL));
    refused("rmsnorm backward _set with dim 0",
            xlkv_cuda_train_rmsnorm_backward_folded_dy16_set(NULL, NULL, NULL, NULL, NULL, NULL, NULL, 4, 0, NULL, NULL));
    adamw_case(4099, 0, 1.0f);  /* float4 + a tail of 3, not clipping */
    adamw_case(4099, 0, 0.37f); /* clipping */
    adamw_case(1001, 1, 0.37f); /* misaligned: scalar */
    adamw_case(3, 0, 0.5f);     /* only the tail */
    adamw_runs_cases();
    clip_case(1700, 0.5);       /* clips (the `small` model has ~1,700 chunks) */
    clip_case(1700, 2.0);       /* under the limit: 1 */
    clip_case(3000, 0.0);       /* max_norm 0: off; three tiles of partials */
    clip_case(1, 0.9);
    refused("swiglu backward bf16 with ld < 2 hidden",
            xlkv_cuda_train_swiglu_backward_bf16(NULL, 10, NULL, NULL, NULL, 4, 6, NULL));
    refused("rope to bf16 with ld < n_heads * head_dim",
            xlkv_cuda_train_rope_to_bf16(NULL, 10, NULL, 4, 4, 2, 8, NULL, NULL, 1.0f, 1, NULL));
    refused("rope to bf16 with an odd head_dim",
            xlkv_cuda_train_rope_to_bf16(NULL, 10, NULL, 4, 4, 1, 7, NULL, NULL, 1.0f, 1, NULL));
    refused("rmsnorm forward bf16 with dim 0",
            xlkv_cuda_train_rmsnorm_forward_bf16(NULL, NULL, NULL, NULL, NULL, 4, 0, 1e-5f, NULL));
    refused("rmsnorm backward folded with dim 0",
            xlkv_cuda_train_rmsnorm_backward_folded(NULL, NULL, NULL, NULL, NULL, NULL, NULL, 4, 0, NULL, NULL));
    refused("rmsnorm backward folded with n < 0",
            xlkv_cuda_train_rmsnorm_backward_folded(NULL, NULL, NULL, NULL, NULL, NULL, NULL, -1, 8, NULL, NULL));
    if (failures) fail_msg("%d fused-kernel check(s) failed", failures);
}

/* ---- 2. the trainer, fused vs XLKV_TRAIN_FUSE=0 ------------------------------------------------------------------ */
enum { VOCAB = TT_TINY_VOCAB };

typedef struct model_case {
    const char *map;
    int m, b, head_dim; /* head_dim 64: flash attention runs (16: the gemm attention) */
} model_case;

static xlkv_hparams tiny_hparams(const model_case *c) { return tt_tiny_model_hparams(c->head_dim, c->m, c->b); }

static xlkv_param_store *make_store(const model_case *c, unsigned long long seed) {
    const xlkv_hparams hp = tiny_hparams(c);
    return tt_tiny_model_store(&hp, c->map, seed);
}

static xlkv_trainer *make_trainer(const char *data, const model_case *c, long steps) {
    const xlkv_hparams hp = tiny_hparams(c);
    return tt_tiny_trainer(data, &hp, c->map, c->m, c->b, true, true, steps);
}

/* The fused trainer's clipping and AdamW (norm and coefficient on the GPU, no host round trip, the coefficient
 * applied inside AdamW) after a backward whose gradients `before` holds: the norm read after the step vs the CPU's
 * xlkv_clip_grad_norm of the same gradients (1e-9 relative: another summation order), the parameters vs the CPU's
 * xlkv_adamw_step (1e-6 of the largest parameter), the GPU's gradients left unscaled (bits). */
static void clip_adamw_matches_cpu(xlkv_gpu_trainer *gt, const model_case *c, const xlkv_param_store *before) {
    const double max_norm = 1e-3; /* far below the norm: clips */
    const xlkv_adamw_params p = xlkv_adamw_default_params();
    double gpu_norm = 0.0;
    TU_ASSERT_OK(xlkv_gpu_trainer_clip_grad_norm(gt, max_norm, NULL));
    TU_ASSERT_OK(xlkv_gpu_trainer_adamw_step(gt, &p, 1e-2f, 1));
    TU_ASSERT_OK(xlkv_gpu_trainer_synchronize(gt));
    TU_ASSERT_OK(xlkv_gpu_trainer_grad_norm(gt, &gpu_norm));
    xlkv_param_store *after = make_store(c, 5), *cpu = make_store(c, 5);
    TU_ASSERT_OK(xlkv_gpu_trainer_download(gt, after, true));
    memcpy(cpu->params, before->params, before->n_params * sizeof(float));
    memcpy(cpu->grads, before->grads, before->n_params * sizeof(float));
    memset(cpu->adam_m, 0, cpu->n_params * sizeof(float));
    memset(cpu->adam_v, 0, cpu->n_params * sizeof(float));
    const double cpu_norm = xlkv_clip_grad_norm(cpu, max_norm);
    xlkv_adamw_step(cpu, &p, 1e-2f, 1);
    double diff = 0.0, scale = 0.0;
    size_t grads_differ = 0;
    for (size_t i = 0; i < cpu->n_params; i++) {
        diff = fmax(diff, fabs((double)after->params[i] - cpu->params[i]));
        scale = fmax(scale, fabs((double)cpu->params[i]));
        grads_differ += memcmp(&after->grads[i], &before->grads[i], sizeof(float)) != 0;
    }
    const double norm_err = fabs(gpu_norm - cpu_norm) / cpu_norm, param_err = diff / scale;
    const bool ok = norm_err <= 1e-9 && param_err <= 1e-6 && grads_differ == 0;
    printf("check fused clip + AdamW vs CPU, %-10s m=%d b=%d head_dim %d: norm %.9g vs %.9g err %.2e (tol 1e-9); "
           "parameters err %.2e (tol 1e-6); gradients changed %zu (tol 0) %s\n", c->map, c->m, c->b, c->head_dim,
           gpu_norm, cpu_norm, norm_err, param_err, grads_differ, ok ? "ok" : "FAIL");
    if (!ok) failures++;
    xlkv_param_store_free(after);
    xlkv_param_store_free(cpu);
}

static void fused_trainer_matches_unfused(void **state) {
    (void)state;
    int devices = 0;
    if (cudaGetDeviceCount(&devices) != cudaSuccess || devices == 0) skip();
    failures = 0;
    unsetenv("XLKV_TRAIN_GEMM");
    unsetenv("XLKV_TRAIN_ATTENTION");
    enum { B = 2, T = 24, N = B * T };
    int tokens[2][N], targets[2][N];
    for (int a = 0; a < 2; a++)
        for (int r = 0; r < N; r++) {
            tokens[a][r] = (int)((unsigned)(r * 37 + a * 11 + (r * r) % 13) % VOCAB);
            targets[a][r] = (int)((unsigned)(r * 17 + a * 5 + 3) % VOCAB);
        }
    static const model_case cases[] = {
        {"standard", 0, 2, 16}, {"cla:2", 0, 2, 16}, {"lckv:1", 1, 2, 16}, {"lckv:1", 2, 3, 16},
        {"0_1s_1s_3", 0, 2, 16}, {"standard", 0, 2, 64}, {"lckv:1", 1, 2, 64},
    };
    const size_t n_cases = sizeof cases / sizeof *cases;
    for (size_t ci = 0; ci < n_cases; ci++) {
        const model_case *c = &cases[ci];
        xlkv_param_store *stores[2];
        double loss[2][2];
        for (int fused = 0; fused < 2; fused++) { /* two accumulated micro-batches each */
            setenv("XLKV_TRAIN_FUSE", fused ? "1" : "0", 1);
            stores[fused] = make_store(c, 5);
            xlkv_gpu_trainer *gt = NULL;
            TU_ASSERT_OK(xlkv_gpu_trainer_create(stores[fused], B, T, c->m, c->b, true, &gt));
            TU_ASSERT_OK(xlkv_gpu_trainer_zero_grads(gt));
            for (int a = 0; a < 2; a++) {
                TU_ASSERT_OK(xlkv_gpu_trainer_forward(gt, tokens[a], targets[a], &loss[fused][a]));
                TU_ASSERT_OK(xlkv_gpu_trainer_backward(gt, 0.5f));
            }
            TU_ASSERT_OK(xlkv_gpu_trainer_download(gt, stores[fused], true));
            if (fused) clip_adamw_matches_cpu(gt, c, stores[fused]);
            xlkv_gpu_trainer_free(gt);
        }
        unsetenv("XLKV_TRAIN_FUSE");
        const char *worst_name = "";
        const double err = tt_worst_tensor_error(stores[0], stores[1]->grads, stores[0]->grads, &worst_name);
        /* the fused forward rounds the gate|up and branch outputs to bf16 (see the header): the losses agree to bf16
         * rounding, relative u = 2^-8 */
        const double loss_diff = fmax(fabs(loss[1][0] - loss[0][0]) / fabs(loss[0][0]),
                                      fabs(loss[1][1] - loss[0][1]) / fabs(loss[0][1]));
        const double loss_tol = 1.0 / 256.0, grad_tol = 3e-2;
        const bool ok = loss_diff <= loss_tol && err <= grad_tol; /* NaN fails both */
        printf("check fused vs XLKV_TRAIN_FUSE=0, one step of %-10s m=%d b=%d head_dim %d: losses %.9f / %.9f vs "
               "%.9f / %.9f, rel err %.2e (tol %.2e); gradients worst %s err %.2e (tol %.0e) %s\n", c->map, c->m, c->b,
               c->head_dim, loss[1][0], loss[1][1], loss[0][0], loss[0][1], loss_diff, loss_tol, worst_name, err,
               grad_tol, ok ? "ok" : "FAIL");
        if (!ok) failures++;
        xlkv_param_store_free(stores[0]);
        xlkv_param_store_free(stores[1]);
    }

    char *data = tt_token_data_dir(6000, 5000, VOCAB);
    enum { STEPS = 6 };
    static const model_case step_cases[] = {{"standard", 0, 2, 16}, {"lckv:1", 1, 2, 16}, {"standard", 0, 2, 64}};
    for (size_t ci = 0; ci < sizeof step_cases / sizeof *step_cases; ci++) {
        const model_case *c = &step_cases[ci];
        setenv("XLKV_TRAIN_FUSE", "1", 1);
        xlkv_trainer *fused = make_trainer(data, c, STEPS);
        setenv("XLKV_TRAIN_FUSE", "0", 1);
        xlkv_trainer *plain = make_trainer(data, c, STEPS);
        unsetenv("XLKV_TRAIN_FUSE");
        for (int s = 0; s < STEPS; s++) {
            TU_ASSERT_OK(xlkv_trainer_step(fused, NULL));
            TU_ASSERT_OK(xlkv_trainer_step(plain, NULL));
        }
        double eval_fused, eval_plain;
        TU_ASSERT_OK(xlkv_trainer_eval(fused, &eval_fused));
        TU_ASSERT_OK(xlkv_trainer_eval(plain, &eval_plain));
        double worst = fabs(eval_fused - eval_plain) / fabs(eval_plain);
        printf("losses %s head_dim %d: fused", c->map, c->head_dim);
        for (int s = 0; s < STEPS; s++) {
            printf(" %.6f", fused->train_losses[s]);
            const double d = fabs((double)fused->train_losses[s] - plain->train_losses[s]) /
                             fabs((double)plain->train_losses[s]);
            if (d > worst || isnan(d)) worst = isnan(d) ? INFINITY : d;
        }
        printf(" | unfused");
        for (int s = 0; s < STEPS; s++) printf(" %.6f", plain->train_losses[s]);
        printf(" | eval %.6f %.6f\n", eval_fused, eval_plain);
        const bool ok = worst <= 5e-3;
        printf("check fused vs XLKV_TRAIN_FUSE=0, %d trainer steps + held-out loss of %-8s head_dim %d: max rel err "
               "%.2e (tol 5e-3) %s\n", STEPS, c->map, c->head_dim, worst, ok ? "ok" : "FAIL");
        if (!ok) failures++;
        xlkv_trainer_free(fused);
        xlkv_trainer_free(plain);
    }
    free(data);

    setenv("XLKV_TRAIN_FUSE", "2", 1);
    xlkv_param_store *store = make_store(&cases[0], 5);
    xlkv_gpu_trainer *gt = NULL;
    const xlkv_status status = xlkv_gpu_trainer_create(store, B, T, 0, 2, true, &gt);
    unsetenv("XLKV_TRAIN_FUSE");
    const bool ok = status != XLKV_OK && !gt;
    printf("check XLKV_TRAIN_FUSE=2 refused: %s (%s)\n", ok ? "ok" : "FAIL", xlkv_last_error());
    if (!ok) failures++;
    xlkv_gpu_trainer_free(gt);
    xlkv_param_store_free(store);
    if (failures) fail_msg("%d fused-trainer check(s) failed", failures);
}

int main(void) {
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(fused_kernels_match),
        cmocka_unit_test(fused_trainer_matches_unfused),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
