/* tests/cuda/test_cuda_train_bf16_inputs: the fused path's kernels that read bf16 inputs (the products' outputs
 * written in bf16, as torch autocast: backend/cuda/train_fused.h's add_rmsnorm_forward_bf16b, add_out_bf16b,
 * swiglu_forward_from_bf16, swiglu_backward_from_bf16, and train_kernels.h's rmsnorm_backward_folded_dy16), on random
 * inputs, float4 and scalar paths, padded rows:
 *   a. against their fp32-input version given the widened bf16 values: the same bits (0 differing elements; the fp32
 *      arithmetic is shared and bf16 -> fp32 is exact);
 *   b. against the fp32 formula evaluated in double on the UNROUNDED fp32 inputs, within a bound derived from bf16
 *      rounding: each bf16 input is x (1 + d) with |d| <= u = 2^-8 (round to nearest, 8 significant bits) and a bf16
 *      output is rounded once more (u |y|), so to first order |y~ - y| <= u (sum_i |dy/dx_i| |x_i| + |y|) with the
 *      partials written out analytically below; the bound is widened by 10 % (the second-order terms are u times
 *      smaller), plus fp32 evaluation slop (the number of fp32 operations on the path times 2^-24 of the terms' sum
 *      of magnitudes) and u^2 times the tensor's largest |y| (where the first-order term vanishes). The check line
 *      reports the worst err / bound (tol 1) and the worst error relative to the tensor's largest |y|;
 *   c. nothing written outside the output columns of a strided output; bad sizes refused.
 * Every check prints one "check ..." line. Needs a GPU (label cuda). */
#include <cuda_runtime_api.h>
#include <math.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "backend/cuda/train_fused.h"
#include "backend/cuda/train_kernels.h"
#include "testutil.h"
#include "cuda_testutil.h"

static const double kU = 1.0 / 256.0;           /* bf16 unit roundoff, 2^-8 */
static const double kF32 = 1.0 / 16777216.0;    /* fp32 unit roundoff, 2^-24 */
static int failures;
static unsigned long long rng_state = 0x9E3779B97F4A7C15ull;
static float *random_array(size_t n, float scale) { return ct_random_floats(n, scale, &rng_state); }

static uint16_t *rounded(const float *x, size_t n) {
    uint16_t *b = malloc(n * sizeof *b);
    for (size_t i = 0; i < n; i++) b[i] = ct_bf16_rne(x[i]);
    return b;
}
static float *widened(const uint16_t *b, size_t n) {
    float *f = malloc(n * sizeof *f);
    for (size_t i = 0; i < n; i++) f[i] = ct_bf16_value(b[i]);
    return f;
}
static uint16_t *dev_bf16(const uint16_t *host, size_t n) { /* NULL: filled with the sentinel 0xABCD */
    uint16_t *h = malloc(n * sizeof *h);
    for (size_t i = 0; i < n; i++) h[i] = host ? host[i] : 0xABCDu;
    uint16_t *d = ct_to_device(h, n * sizeof *h);
    free(h);
    return d;
}

static void check_same_bits(const char *what, const void *got, const void *want, size_t n, size_t elem) {
    size_t differ = 0;
    const char *g = got, *w = want;
    for (size_t i = 0; i < n; i++) differ += memcmp(g + i * elem, w + i * elem, elem) != 0;
    printf("check %-66s: %zu of %zu differ, err %zu (tol 0) %s\n", what, differ, n, differ, differ ? "FAIL" : "ok");
    if (differ) failures++;
}

/* got vs want (double, from the unrounded inputs) within bound (first order, see the header): widened by 10 %, plus
 * u^2 times the largest |want| */
static void check_within_bound(const char *what, const float *got, const double *want, const double *bound, size_t n) {
    double largest = 0.0, worst_ratio = 0.0, worst_err = 0.0;
    for (size_t i = 0; i < n; i++) largest = fmax(largest, fabs(want[i]));
    bool finite = true;
    for (size_t i = 0; i < n; i++) {
        const double err = fabs((double)got[i] - want[i]), b = 1.1 * bound[i] + kU * kU * largest + 1e-30;
        if (!isfinite(got[i])) finite = false;
        worst_ratio = fmax(worst_ratio, err / b);
        worst_err = fmax(worst_err, err);
    }
    const bool ok = finite && worst_ratio <= 1.0;
    printf("check %-66s: worst err / bound %.3f (tol 1); worst err %.3g of max |y| %.3g (%.2e) %s\n", what,
           worst_ratio, worst_err, largest, worst_err / fmax(largest, 1e-30), ok ? "ok" : "FAIL");
    if (!ok) failures++;
}

static void check_untouched(const char *what, const uint16_t *buf, size_t rows, size_t ld, size_t width) {
    if (!ct_bf16_untouched(what, buf, rows, ld, 0, width)) failures++;
}

/* ---- residual add + RMSNorm with a bf16 branch, and the plain add ------------------------------------------------ */
static void add_rmsnorm_case(int n, int dim) {
    const size_t nd = (size_t)n * (size_t)dim;
    const float eps = 1e-5f;
    float *a = random_array(nd, 2.0f), *b = random_array(nd, 1.0f), *gain = random_array((size_t)dim, 1.5f);
    uint16_t *b16 = rounded(b, nd);
    float *bw = widened(b16, nd);
    float *d_a = ct_dev_floats(a, nd), *d_bw = ct_dev_floats(bw, nd), *d_gain = ct_dev_floats(gain, (size_t)dim);
    uint16_t *d_b16 = dev_bf16(b16, nd), *d_y16 = dev_bf16(NULL, nd), *d_same16 = dev_bf16(NULL, nd);
    float *d_sum = ct_dev_floats(NULL, nd), *d_sum2 = ct_dev_floats(NULL, nd), *d_inv = ct_dev_floats(NULL, (size_t)n);
    float *d_inv2 = ct_dev_floats(NULL, (size_t)n), *d_add = ct_dev_floats(NULL, nd), *d_add2 = ct_dev_floats(NULL, nd);
    char what[160];

    CK_LAUNCH(xlkv_cuda_train_add_rmsnorm_forward_bf16b(d_sum, d_y16, d_inv, d_a, d_b16, d_gain, n, dim, eps, NULL));
    CK_LAUNCH(xlkv_cuda_train_add_rmsnorm_forward_bf16(d_sum2, d_same16, d_inv2, d_a, d_bw, d_gain, n, dim, eps, NULL));
    CK_LAUNCH(xlkv_cuda_train_add_out_bf16b(d_add, d_a, d_b16, nd, NULL));
    CK_LAUNCH(xlkv_cuda_train_add_out(d_add2, d_a, d_bw, nd, NULL));
    float *sum = ct_download_floats(d_sum, nd), *sum2 = ct_download_floats(d_sum2, nd);
    float *inv = ct_download_floats(d_inv, (size_t)n), *inv2 = ct_download_floats(d_inv2, (size_t)n);
    float *add = ct_download_floats(d_add, nd), *add2 = ct_download_floats(d_add2, nd);
    uint16_t *y16 = ct_download(d_y16, nd * 2), *same16 = ct_download(d_same16, nd * 2);
    snprintf(what, sizeof what, "add (bf16 b) + rmsnorm [%d x %d]: sum == fp32 kernel on float(b16)", n, dim);
    check_same_bits(what, sum, sum2, nd, sizeof(float));
    snprintf(what, sizeof what, "add (bf16 b) + rmsnorm [%d x %d]: bf16 y == fp32 kernel on float(b16)", n, dim);
    check_same_bits(what, y16, same16, nd, sizeof(uint16_t));
    snprintf(what, sizeof what, "add (bf16 b) + rmsnorm [%d x %d]: inv_rms == fp32 kernel on float(b16)", n, dim);
    check_same_bits(what, inv, inv2, (size_t)n, sizeof(float));
    snprintf(what, sizeof what, "add_out (bf16 b) [%zu]: == fp32 kernel on float(b16)", nd);
    check_same_bits(what, add, add2, nd, sizeof(float));

    /* vs the unrounded b: sum = a + b, |d sum_i| <= u |b_i| + 2^-24 |sum_i| =: e_i; s = (mean sum^2 + eps)^-1/2,
     * |d s| <= s^3 / dim sum_j |sum_j| e_j; y_i = g_i s sum_i: |d y_i| <= |g_i| (s e_i + |sum_i| |d s|) + u |y_i| */
    double *want_sum = malloc(nd * sizeof(double)), *bound_sum = malloc(nd * sizeof(double));
    double *want_y = malloc(nd * sizeof(double)), *bound_y = malloc(nd * sizeof(double));
    float *y = widened(y16, nd);
    for (int r = 0; r < n; r++) {
        const size_t off = (size_t)r * (size_t)dim;
        double ss = 0.0, ds_terms = 0.0;
        for (int i = 0; i < dim; i++) {
            const double v = (double)a[off + i] + b[off + i];
            want_sum[off + i] = v;
            bound_sum[off + i] = kU * fabs(b[off + i]) + kF32 * fabs(v);
            ss += v * v;
            ds_terms += fabs(v) * bound_sum[off + i];
        }
        const double s = 1.0 / sqrt(ss / dim + eps), ds = s * s * s / dim * ds_terms;
        for (int i = 0; i < dim; i++) {
            const double v = want_sum[off + i], yi = gain[i] * s * v;
            want_y[off + i] = yi;
            bound_y[off + i] = fabs(gain[i]) * (s * bound_sum[off + i] + fabs(v) * ds) + kU * fabs(yi) +
                               (dim + 8) * kF32 * fabs(yi); /* the fp32 sum of squares, sqrt and products */
        }
    }
    snprintf(what, sizeof what, "add (bf16 b) + rmsnorm [%d x %d]: sum vs fp32 formula, unrounded b", n, dim);
    check_within_bound(what, sum, want_sum, bound_sum, nd);
    snprintf(what, sizeof what, "add (bf16 b) + rmsnorm [%d x %d]: bf16 y vs fp32 formula, unrounded b", n, dim);
    check_within_bound(what, y, want_y, bound_y, nd);

    free(a), free(b), free(gain), free(b16), free(bw), free(sum), free(sum2), free(inv), free(inv2), free(add);
    free(add2), free(y16), free(same16), free(want_sum), free(bound_sum), free(want_y), free(bound_y), free(y);
    cudaFree(d_a), cudaFree(d_bw), cudaFree(d_gain), cudaFree(d_b16), cudaFree(d_y16), cudaFree(d_same16);
    cudaFree(d_sum), cudaFree(d_sum2), cudaFree(d_inv), cudaFree(d_inv2), cudaFree(d_add), cudaFree(d_add2);
}

/* ---- SwiGLU from bf16 [gate | up] (row stride ld) and bf16 dh ------------------------------------------------- */
static double sigmoid(double g) { return 1.0 / (1.0 + exp(-g)); }
static double silu(double g) { return g * sigmoid(g); }
static double silu_prime(double g) { const double s = sigmoid(g); return s * (1.0 + g * (1.0 - s)); }
static double silu_second(double g) { /* d/dg of s (1 + g (1 - s)), s' = s (1 - s) */
    const double s = sigmoid(g), sp = s * (1.0 - s);
    return sp * (1.0 + g * (1.0 - s)) + s * ((1.0 - s) - g * sp);
}

static void swiglu_case(int n, int hid, size_t ld) {
    const size_t nh = (size_t)n * (size_t)hid, nld = (size_t)n * ld;
    float *gate = random_array(nh, 4.0f), *up = random_array(nh, 2.0f), *dh = random_array(nh, 1.0f);
    uint16_t *gu16 = malloc(nld * sizeof *gu16), *dh16 = rounded(dh, nh);
    for (size_t e = 0; e < nld; e++) gu16[e] = 0x7FC0u; /* NaN in the padding: never read */
    for (int r = 0; r < n; r++)
        for (int c = 0; c < hid; c++) {
            gu16[(size_t)r * ld + c] = ct_bf16_rne(gate[(size_t)r * hid + c]);
            gu16[(size_t)r * ld + hid + c] = ct_bf16_rne(up[(size_t)r * hid + c]);
        }
    float *gw = malloc(nh * sizeof(float)), *uw = malloc(nh * sizeof(float)), *dhw = widened(dh16, nh);
    for (int r = 0; r < n; r++)
        for (int c = 0; c < hid; c++) {
            gw[(size_t)r * hid + c] = ct_bf16_value(gu16[(size_t)r * ld + c]);
            uw[(size_t)r * hid + c] = ct_bf16_value(gu16[(size_t)r * ld + hid + c]);
        }
    uint16_t *d_gu = dev_bf16(gu16, nld), *d_dh16 = dev_bf16(dh16, nh), *d_h16 = dev_bf16(NULL, nh);
    uint16_t *d_same = dev_bf16(NULL, nh), *d_dgu = dev_bf16(NULL, nld), *d_dgu_same = dev_bf16(NULL, nld);
    float *d_gw = ct_dev_floats(gw, nh), *d_uw = ct_dev_floats(uw, nh), *d_dhw = ct_dev_floats(dhw, nh);
    char what[160];

    CK_LAUNCH(xlkv_cuda_train_swiglu_forward_from_bf16(d_h16, d_gu, ld, n, hid, NULL));
    CK_LAUNCH(xlkv_cuda_train_swiglu_forward_bf16(d_same, d_gw, d_uw, nh, NULL));
    CK_LAUNCH(xlkv_cuda_train_swiglu_backward_from_bf16(d_dgu, ld, d_dh16, d_gu, ld, n, hid, NULL));
    CK_LAUNCH(xlkv_cuda_train_swiglu_backward_bf16(d_dgu_same, ld, d_dhw, d_gw, d_uw, n, hid, NULL));
    uint16_t *h16 = ct_download(d_h16, nh * 2), *same = ct_download(d_same, nh * 2);
    uint16_t *dgu = ct_download(d_dgu, nld * 2), *dgu_same = ct_download(d_dgu_same, nld * 2);
    snprintf(what, sizeof what, "swiglu forward from bf16 [%d x %d], ld %zu: == fp32-input kernel", n, hid, ld);
    check_same_bits(what, h16, same, nh, sizeof(uint16_t));
    snprintf(what, sizeof what, "swiglu backward from bf16 [%d x %d], ld %zu: == fp32-input kernel", n, hid, ld);
    check_same_bits(what, dgu, dgu_same, nld, sizeof(uint16_t));
    snprintf(what, sizeof what, "swiglu backward from bf16 [%d x %d], ld %zu", n, hid, ld);
    check_untouched(what, dgu, (size_t)n, ld, 2 * (size_t)hid);

    /* vs the unrounded inputs. h = silu(g) u: dh/dg = u silu'(g), dh/du = silu(g). dgate = dh u q(g) with q = silu':
     * partials u q, dh q, dh u q'(g); dup = dh silu(g): partials silu(g), dh silu'(g). Each output is rounded once. */
    double *want_h = malloc(nh * sizeof(double)), *bound_h = malloc(nh * sizeof(double));
    double *want_g = malloc(nh * sizeof(double)), *bound_g = malloc(nh * sizeof(double));
    double *want_u = malloc(nh * sizeof(double)), *bound_u = malloc(nh * sizeof(double));
    float *h = widened(h16, nh), *got_g = malloc(nh * sizeof(float)), *got_u = malloc(nh * sizeof(float));
    for (int r = 0; r < n; r++)
        for (int c = 0; c < hid; c++) {
            const size_t e = (size_t)r * hid + c;
            const double g = gate[e], u = up[e], d = dh[e], q = silu_prime(g), sl = silu(g);
            got_g[e] = ct_bf16_value(dgu[(size_t)r * ld + c]);
            got_u[e] = ct_bf16_value(dgu[(size_t)r * ld + hid + c]);
            want_h[e] = sl * u;
            want_g[e] = d * u * q;
            want_u[e] = d * sl;
            const double slop = 16 * kF32; /* expf, the divide and the handful of fp32 products */
            bound_h[e] = kU * (fabs(u * q * g) + fabs(sl * u) + fabs(want_h[e])) + slop * fabs(want_h[e]);
            bound_g[e] = kU * (fabs(u * q * d) + fabs(d * q * u) + fabs(d * u * silu_second(g) * g) + fabs(want_g[e])) +
                         slop * fabs(d * u) * (1.0 + fabs(g)); /* |s (1 + |g| (1 - s))| <= 1 + |g| */
            bound_u[e] = kU * (fabs(sl * d) + fabs(d * q * g) + fabs(want_u[e])) + slop * fabs(want_u[e]);
        }
    snprintf(what, sizeof what, "swiglu forward from bf16 [%d x %d]: vs fp32 formula, unrounded", n, hid);
    check_within_bound(what, h, want_h, bound_h, nh);
    snprintf(what, sizeof what, "swiglu backward from bf16 [%d x %d]: dgate vs fp32 formula, unrounded", n, hid);
    check_within_bound(what, got_g, want_g, bound_g, nh);
    snprintf(what, sizeof what, "swiglu backward from bf16 [%d x %d]: dup vs fp32 formula, unrounded", n, hid);
    check_within_bound(what, got_u, want_u, bound_u, nh);

    free(gate), free(up), free(dh), free(gu16), free(dh16), free(gw), free(uw), free(dhw), free(h16), free(same);
    free(dgu), free(dgu_same), free(want_h), free(bound_h), free(want_g), free(bound_g), free(want_u), free(bound_u);
    free(h), free(got_g), free(got_u);
    cudaFree(d_gu), cudaFree(d_dh16), cudaFree(d_h16), cudaFree(d_same), cudaFree(d_dgu), cudaFree(d_dgu_same);
    cudaFree(d_gw), cudaFree(d_uw), cudaFree(d_dhw);
}

/* ---- RMSNorm backward with a bf16 dy (folded gain gradient; the two-pass path past 3,600 columns) --------------- */
static void rmsnorm_backward_dy16_case(int n, int dim) {
    const size_t nd = (size_t)n * (size_t)dim;
    const int chunks = (n + XLKV_CUDA_TRAIN_ROW_CHUNK - 1) / XLKV_CUDA_TRAIN_ROW_CHUNK;
    float *x = random_array(nd, 2.0f), *dy = random_array(nd, 1.0f), *dx0 = random_array(nd, 0.5f);
    float *gain = random_array((size_t)dim, 1.5f), *inv = random_array((size_t)n, 1.0f);
    float *dg0 = random_array((size_t)dim, 3.0f);
    for (int r = 0; r < n; r++) inv[r] = 0.5f + fabsf(inv[r]);
    uint16_t *dy16 = rounded(dy, nd);
    float *dyw = widened(dy16, nd);
    float *d_x = ct_dev_floats(x, nd), *d_dyw = ct_dev_floats(dyw, nd), *d_gain = ct_dev_floats(gain, (size_t)dim);
    float *d_inv = ct_dev_floats(inv, (size_t)n), *d_partials = ct_dev_floats(NULL, (size_t)chunks * dim);
    uint16_t *d_dy16 = dev_bf16(dy16, nd);
    float *d_dx[2], *d_dg[2];
    uint16_t *d_dx16[2];
    for (int k = 0; k < 2; k++)
        d_dx[k] = ct_dev_floats(dx0, nd), d_dg[k] = ct_dev_floats(dg0, (size_t)dim), d_dx16[k] = dev_bf16(NULL, nd);
    CK_LAUNCH(xlkv_cuda_train_rmsnorm_backward_folded_dy16(d_dx[0], d_dx16[0], d_dg[0], d_dy16, d_x, d_inv, d_gain, n,
                                                           dim, d_partials, NULL));
    CK_LAUNCH(xlkv_cuda_train_rmsnorm_backward_folded(d_dx[1], d_dx16[1], d_dg[1], d_dyw, d_x, d_inv, d_gain, n, dim,
                                                      d_partials, NULL));
    float *dx[2], *dg[2];
    uint16_t *dx16[2];
    for (int k = 0; k < 2; k++) {
        dx[k] = ct_download_floats(d_dx[k], nd), dg[k] = ct_download_floats(d_dg[k], (size_t)dim);
        dx16[k] = ct_download(d_dx16[k], nd * 2);
    }
    char what[160];
    snprintf(what, sizeof what, "rmsnorm backward, bf16 dy [%d x %d]: dx == fp32-dy kernel on float(dy16)", n, dim);
    check_same_bits(what, dx[0], dx[1], nd, sizeof(float));
    snprintf(what, sizeof what, "rmsnorm backward, bf16 dy [%d x %d]: bf16(dx) == fp32-dy kernel", n, dim);
    check_same_bits(what, dx16[0], dx16[1], nd, sizeof(uint16_t));
    snprintf(what, sizeof what, "rmsnorm backward, bf16 dy [%d x %d]: dgain == fp32-dy kernel", n, dim);
    check_same_bits(what, dg[0], dg[1], (size_t)dim, sizeof(float));

    /* vs the unrounded dy: dx_i = dx0_i + s g_i dy_i - coef x_i, coef = s^3 / dim sum_j g_j dy_j x_j:
     * |d dx_i| <= u (s |g_i dy_i| + s^3 / dim sum_j |g_j dy_j x_j| |x_i|); bf16(dx) adds u |dx_i|;
     * dgain_i = dg0_i + sum_r dy x s: |d dgain_i| <= u sum_r |dy x s|. fp32 slop: (terms summed + 8) 2^-24 of the
     * magnitudes. */
    double *want_dx = malloc(nd * sizeof(double)), *bound_dx = malloc(nd * sizeof(double));
    double *bound_dx16 = malloc(nd * sizeof(double));
    double *want_dg = calloc((size_t)dim, sizeof(double)), *bound_dg = calloc((size_t)dim, sizeof(double));
    double *abs_dg = calloc((size_t)dim, sizeof(double));
    for (int r = 0; r < n; r++) {
        const size_t off = (size_t)r * (size_t)dim;
        const double s = inv[r];
        double dot = 0.0, dot_abs = 0.0;
        for (int i = 0; i < dim; i++) {
            dot += (double)gain[i] * dy[off + i] * x[off + i];
            dot_abs += fabs((double)gain[i] * dy[off + i] * x[off + i]);
        }
        const double c3 = s * s * s / dim;
        for (int i = 0; i < dim; i++) {
            const double first = s * gain[i] * dy[off + i], second = c3 * dot * x[off + i];
            const double v = dx0[off + i] + first - second;
            want_dx[off + i] = v;
            bound_dx[off + i] = kU * (fabs(first) + c3 * dot_abs * fabs(x[off + i])) +
                                (dim + 8) * kF32 * (fabs(dx0[off + i]) + fabs(first) + c3 * dot_abs * fabs(x[off + i]));
            bound_dx16[off + i] = bound_dx[off + i] + kU * fabs(v);
            const double term = (double)dy[off + i] * x[off + i] * s;
            want_dg[i] += term, abs_dg[i] += fabs(term);
        }
    }
    for (int i = 0; i < dim; i++) {
        want_dg[i] += dg0[i];
        bound_dg[i] = kU * abs_dg[i] + (n + 8) * kF32 * (abs_dg[i] + fabs(dg0[i]));
    }
    float *dxw = widened(dx16[0], nd);
    snprintf(what, sizeof what, "rmsnorm backward, bf16 dy [%d x %d]: dx vs fp32 formula, unrounded dy", n, dim);
    check_within_bound(what, dx[0], want_dx, bound_dx, nd);
    snprintf(what, sizeof what, "rmsnorm backward, bf16 dy [%d x %d]: bf16(dx) vs fp32 formula", n, dim);
    check_within_bound(what, dxw, want_dx, bound_dx16, nd);
    snprintf(what, sizeof what, "rmsnorm backward, bf16 dy [%d x %d]: dgain vs fp32 formula", n, dim);
    check_within_bound(what, dg[0], want_dg, bound_dg, (size_t)dim);

    for (int k = 0; k < 2; k++) {
        free(dx[k]), free(dg[k]), free(dx16[k]);
        cudaFree(d_dx[k]), cudaFree(d_dg[k]), cudaFree(d_dx16[k]);
    }
    free(x), free(dy), free(dx0), free(gain), free(inv), free(dg0), free(dy16), free(dyw), free(want_dx);
    free(bound_dx), free(bound_dx16), free(want_dg), free(bound_dg), free(abs_dg), free(dxw);
    cudaFree(d_x), cudaFree(d_dyw), cudaFree(d_gain), cudaFree(d_inv), cudaFree(d_partials), cudaFree(d_dy16);
}

static void refused(const char *what, int rc) {
    if (!ct_refused(what, rc)) failures++;
}

static void bf16_input_kernels(void **state) {
    (void)state;
    int devices = 0;
    if (cudaGetDeviceCount(&devices) != cudaSuccess || devices == 0) skip();
    failures = 0;
    add_rmsnorm_case(37, 64);   /* float4 path */
    add_rmsnorm_case(29, 70);   /* scalar path (dim % 4) */
    add_rmsnorm_case(300, 768); /* the `small` width */
    add_rmsnorm_case(33, 132);  /* rows in registers, 2 groups a lane, the second only on lane 0 */
    add_rmsnorm_case(17, 1028); /* wider than the register rows: the float4 loops */
    swiglu_case(33, 96, 192);   /* 4-wide, packed [gate | up] */
    swiglu_case(17, 50, 100);   /* scalar (hid % 4) */
    swiglu_case(9, 64, 136);    /* 4-wide, padded rows */
    swiglu_case(64, 2048, 4096); /* the `small` width */
    rmsnorm_backward_dy16_case(130, 64);   /* float4, three chunks, the last one short */
    rmsnorm_backward_dy16_case(70, 70);    /* scalar */
    rmsnorm_backward_dy16_case(1000, 768); /* the `small` width */
    rmsnorm_backward_dy16_case(129, 516);  /* rows in registers, 6 groups a lane, partly used */
    rmsnorm_backward_dy16_case(31, 1028);  /* wider than the register rows: the float4 loops */
    rmsnorm_backward_dy16_case(20, 4100);  /* wider than a block's shared memory: the two-pass path */
    refused("swiglu forward from bf16 with ld < 2 hidden",
            xlkv_cuda_train_swiglu_forward_from_bf16(NULL, NULL, 10, 4, 6, NULL));
    refused("swiglu backward from bf16 with ld_in < 2 hidden",
            xlkv_cuda_train_swiglu_backward_from_bf16(NULL, 12, NULL, NULL, 10, 4, 6, NULL));
    refused("swiglu backward from bf16 with ld_out < 2 hidden",
            xlkv_cuda_train_swiglu_backward_from_bf16(NULL, 10, NULL, NULL, 12, 4, 6, NULL));
    refused("add (bf16 b) + rmsnorm with dim 0",
            xlkv_cuda_train_add_rmsnorm_forward_bf16b((float *)8, NULL, NULL, NULL, (const uint16_t *)8, NULL, 4, 0,
                                                      1e-5f, NULL));
    refused("add (bf16 b) + rmsnorm without b",
            xlkv_cuda_train_add_rmsnorm_forward_bf16b((float *)8, NULL, NULL, NULL, NULL, NULL, 4, 8, 1e-5f, NULL));
    refused("rmsnorm backward, bf16 dy, with n < 0",
            xlkv_cuda_train_rmsnorm_backward_folded_dy16(NULL, NULL, NULL, NULL, NULL, NULL, NULL, -1, 8, NULL, NULL));
    if (failures) fail_msg("%d bf16-input kernel check(s) failed", failures);
}

int main(void) {
    const struct CMUnitTest tests[] = {cmocka_unit_test(bf16_input_kernels)};
    return cmocka_run_group_tests(tests, NULL, NULL);
}
