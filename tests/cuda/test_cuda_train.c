/* tests/cuda/test_cuda_train: the CUDA trainer against the CPU reference trainer.
 *  1. every kernel of backend/cuda/train_kernels.h on random inputs vs train/train_ops.c (or a loop from the
 *     definition): rmsnorm, rope, swiglu, embedding (repeated ids), attention (causal GQA, masked diagonal, windows,
 *     MHA, head_dim 16 / 64 / 128 / 80), the masked softmax / its backward / delta of the matrix-product attention,
 *     cross-entropy, AdamW, sum of squares. Error = max |gpu - ref| / max |ref|.
 *  2. gradients of one forward + backward of a tiny model, tensor by tensor, GPU (f32) vs CPU, under standard,
 *     cla:2 (bottom), lckv:1 (cyclic, m = 1, b = 2 and m = 2, b = 3), a sliding-window map, 0_2_2_3 and
 *     force_nodiag, with two accumulated micro-batches, through both attention paths (gemm and warp).
 *  3. a few trainer steps (xlkv_trainer with options.device_cuda): f32 losses per step within 1e-4 relative, the
 *     held-out loss too, and the final parameters' update (final - initial) within 1e-2 in norm with at most 0.1 % of
 *     elements off by more than 1e-5; bf16 losses within 3 %.
 *  4. resume on the GPU (save at step 4 of 8, a fresh GPU trainer resumed) == the uninterrupted GPU run, bit for bit
 *     (parameters, moments, losses), in f32 and in bf16.
 *  5. the bf16 trainer's products with bf16 operands (the default) vs XLKV_TRAIN_GEMM=fp32ops (fp32 operands rounded
 *     by cuBLAS): the fp32 -> bf16 conversion kernel bit-exact against a CPU round-to-nearest-even on odd shapes and
 *     leading dimensions; the bf16 cross-entropy backward bit-exact against the CPU formula; one forward + backward's
 *     gradients tensor by tensor; a few trainer steps' losses and the held-out loss; an unknown XLKV_TRAIN_GEMM
 *     value refused.
 * Every check prints one "check ..." line with the measured error and the tolerance. Needs a GPU (label cuda). */
#define _DEFAULT_SOURCE /* setenv */
#include <cuda_runtime_api.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "backend/cuda/train_bf16.h"
#include "backend/cuda/train_kernels.h"
#include "core/file.h"
#include "testutil.h"
#include "cuda_testutil.h"
#include "train_testutil.h"
#include "train/gpu_trainer.h"
#include "train/model_setup.h"
#include "train/train_graph.h"
#include "train/train_ops.h"
#include "train/trainer.h"

static int failures;
static unsigned long long rng_state = 0x9E3779B97F4A7C15ull;
static float uniform(void) { return ct_uniform(&rng_state); } /* [-1, 1) */
static float *random_array(size_t n, float scale) { return ct_random_floats(n, scale, &rng_state); }
static void from_device(void *host, const void *dev, size_t bytes) {
    CK(cudaMemcpy(host, dev, bytes, cudaMemcpyDeviceToHost));
}

/* max |a - b| / max |b| (absolute when b is all zeros); prints a check line; counts failures. */
static double check(const char *what, const float *gpu, const float *ref, size_t n, double tol) {
    double diff = 0.0, scale = 0.0;
    bool finite = true;
    for (size_t i = 0; i < n; i++) {
        if (!isfinite(gpu[i]) && !(isinf(gpu[i]) && gpu[i] == ref[i])) finite = false;
        if (isinf(ref[i]) && gpu[i] == ref[i]) continue;
        const double d = fabs((double)gpu[i] - (double)ref[i]);
        if (d > diff || isnan(d)) diff = d;
        if (fabs((double)ref[i]) > scale) scale = fabs((double)ref[i]);
    }
    const double err = scale > 0 ? diff / scale : diff;
    const bool ok = finite && err <= tol;
    printf("check %-58s error %.2e (tolerance %.0e) %s\n", what, err, tol, ok ? "ok" : "FAIL");
    if (!ok) failures++;
    return err;
}

/* ---- 1. kernels ----------------------------------------------------------------------------------------------- */
/* n x dim rows; dim % 4 == 0 takes the float4 path, other dims the scalar one; n > XLKV_CUDA_TRAIN_ROW_CHUNK gives
 * several dgain chunks. Outputs start poisoned (NaN) so that a kernel that writes nothing fails. */
static void kernel_rmsnorm_case(int n, int dim) {
    float *x = random_array((size_t)n * dim, 2.0f), *gain = random_array(dim, 1.0f), *dy = random_array((size_t)n * dim, 1.0f);
    float *dx0 = random_array((size_t)n * dim, 0.5f), *dg0 = random_array(dim, 0.5f);
    float *y = malloc(sizeof(float) * n * dim), *inv = malloc(sizeof(float) * n);
    float *dx = malloc(sizeof(float) * n * dim), *dg = malloc(sizeof(float) * dim);
    memcpy(dx, dx0, sizeof(float) * n * dim), memcpy(dg, dg0, sizeof(float) * dim);
    xlkv_train_rmsnorm_forward(y, inv, x, gain, n, dim, 1e-5f);
    xlkv_train_rmsnorm_backward(dx, dg, dy, x, inv, gain, n, dim);
    float *d_x = ct_dev_floats(x, (size_t)n * dim), *d_gain = ct_dev_floats(gain, dim), *d_dy = ct_dev_floats(dy, (size_t)n * dim);
    float *d_y = ct_dev_floats(y, (size_t)n * dim), *d_inv = ct_dev_floats(inv, n), *d_dx = ct_dev_floats(dx0, (size_t)n * dim);
    float *d_dg = ct_dev_floats(dg0, dim), *d_part = NULL;
    const int chunks = (n + XLKV_CUDA_TRAIN_ROW_CHUNK - 1) / XLKV_CUDA_TRAIN_ROW_CHUNK;
    CK(cudaMalloc((void **)&d_part, sizeof(float) * dim * chunks));
    CK(cudaMemset(d_y, 0xFF, sizeof(float) * n * dim)); /* NaN poison */
    CK(cudaMemset(d_inv, 0xFF, sizeof(float) * n));
    CK_LAUNCH(xlkv_cuda_train_rmsnorm_forward(d_y, d_inv, d_x, d_gain, n, dim, 1e-5f, NULL));
    float *gy = ct_download_floats(d_y, (size_t)n * dim), *ginv = ct_download_floats(d_inv, n);
    char what[96];
    snprintf(what, sizeof what, "rmsnorm forward y [%d x %d]", n, dim);
    check(what, gy, y, (size_t)n * dim, 1e-6);
    check("rmsnorm forward inv_rms", ginv, inv, n, 1e-6);
    CK_LAUNCH(xlkv_cuda_train_rmsnorm_backward(d_dx, d_dg, d_dy, d_x, d_inv, d_gain, n, dim, d_part, NULL));
    float *gdx = ct_download_floats(d_dx, (size_t)n * dim), *gdg = ct_download_floats(d_dg, dim);
    check("rmsnorm backward dx (+=)", gdx, dx, (size_t)n * dim, 1e-5);
    check("rmsnorm backward dgain (+=)", gdg, dg, dim, 1e-5);
    free(x), free(gain), free(dy), free(dx0), free(dg0), free(y), free(inv), free(dx), free(dg);
    free(gy), free(ginv), free(gdx), free(gdg);
    cudaFree(d_x), cudaFree(d_gain), cudaFree(d_dy), cudaFree(d_y), cudaFree(d_inv), cudaFree(d_dx), cudaFree(d_dg);
    cudaFree(d_part);
}

static void kernel_rmsnorm(void) {
    kernel_rmsnorm_case(37, 96);  /* float4 rows, one dgain chunk */
    kernel_rmsnorm_case(300, 50); /* scalar rows, five chunks */
    kernel_rmsnorm_case(33, 132); /* rows held in registers, 2 groups a lane, the second only on lane 0 */
}

/* swiglu forward / backward and the residual add on m elements starting `offset` floats into their buffers (offset 1:
 * not 16-byte aligned, the scalar path). Outputs start poisoned (NaN). */
static void swiglu_case(size_t m, size_t offset) {
    const size_t len = m + offset;
    float *gate = random_array(len, 4.0f), *up = random_array(len, 2.0f), *dh = random_array(len, 1.0f);
    float *h = malloc(sizeof(float) * len), *dg = malloc(sizeof(float) * len), *du = malloc(sizeof(float) * len);
    float *sum = malloc(sizeof(float) * len);
    xlkv_train_swiglu_forward(h + offset, gate + offset, up + offset, m);
    xlkv_train_swiglu_backward(dg + offset, du + offset, dh + offset, gate + offset, up + offset, m);
    for (size_t i = offset; i < len; i++) sum[i] = gate[i] + up[i];
    float *d_gate = ct_dev_floats(gate, len), *d_up = ct_dev_floats(up, len), *d_dh = ct_dev_floats(dh, len);
    float *d_h = ct_dev_floats(h, len), *d_dg = ct_dev_floats(dg, len), *d_du = ct_dev_floats(du, len);
    CK(cudaMemset(d_h, 0xFF, sizeof(float) * len));
    CK(cudaMemset(d_dg, 0xFF, sizeof(float) * len));
    CK(cudaMemset(d_du, 0xFF, sizeof(float) * len));
    CK_LAUNCH(xlkv_cuda_train_swiglu_forward(d_h + offset, d_gate + offset, d_up + offset, m, NULL));
    CK_LAUNCH(xlkv_cuda_train_swiglu_backward(d_dg + offset, d_du + offset, d_dh + offset, d_gate + offset,
                                              d_up + offset, m, NULL));
    CK_LAUNCH(xlkv_cuda_train_add(d_gate + offset, d_up + offset, m, NULL));
    float *gh = ct_download_floats(d_h, len), *gdg = ct_download_floats(d_dg, len), *gdu = ct_download_floats(d_du, len), *gs = ct_download_floats(d_gate, len);
    char what[96];
    snprintf(what, sizeof what, "swiglu forward [%zu, offset %zu]", m, offset);
    check(what, gh + offset, h + offset, m, 1e-6);
    check("swiglu backward dgate", gdg + offset, dg + offset, m, 1e-6);
    check("swiglu backward dup", gdu + offset, du + offset, m, 1e-6);
    check("residual add y += x", gs + offset, sum + offset, m, 1e-6);
    free(gate), free(up), free(dh), free(h), free(dg), free(du), free(sum), free(gh), free(gdg), free(gdu), free(gs);
    cudaFree(d_gate), cudaFree(d_up), cudaFree(d_dh), cudaFree(d_h), cudaFree(d_dg), cudaFree(d_du);
}

static void kernel_rope_swiglu(void) {
    const int n = 12, seq = 6, heads = 3, hd = 16, half = hd / 2;
    float *cos_t = malloc(sizeof(float) * seq * half), *sin_t = malloc(sizeof(float) * seq * half);
    for (int p = 0; p < seq; p++)
        for (int i = 0; i < half; i++) {
            const float a = (float)p / powf(10000.0f, (float)(2 * i) / hd);
            cos_t[p * half + i] = cosf(a), sin_t[p * half + i] = sinf(a);
        }
    const size_t len = (size_t)n * heads * hd;
    float *x = random_array(len, 1.0f), *ref = malloc(sizeof(float) * len);
    memcpy(ref, x, sizeof(float) * len);
    xlkv_train_rope_forward(ref, n, seq, heads, hd, cos_t, sin_t);
    float *d_x = ct_dev_floats(x, len), *d_c = ct_dev_floats(cos_t, (size_t)seq * half), *d_s = ct_dev_floats(sin_t, (size_t)seq * half);
    CK_LAUNCH(xlkv_cuda_train_rope(d_x, n, seq, heads, hd, d_c, d_s, 1.0f, NULL));
    float *g = ct_download_floats(d_x, len);
    check("rope forward [12 rows, 2 sequences, 3 heads x 16]", g, ref, len, 1e-6);
    xlkv_train_rope_backward(ref, n, seq, heads, hd, cos_t, sin_t);
    CK_LAUNCH(xlkv_cuda_train_rope(d_x, n, seq, heads, hd, d_c, d_s, -1.0f, NULL));
    free(g);
    g = ct_download_floats(d_x, len);
    check("rope backward (inverse rotation)", g, ref, len, 1e-6);
    free(g);
    /* the same rows one float off 16-byte alignment: the element-wise kernel instead of the row-wise one */
    float *d_shifted = NULL;
    CK(cudaMalloc((void **)&d_shifted, sizeof(float) * (len + 1)));
    CK(cudaMemcpy(d_shifted + 1, x, sizeof(float) * len, cudaMemcpyHostToDevice));
    memcpy(ref, x, sizeof(float) * len);
    xlkv_train_rope_forward(ref, n, seq, heads, hd, cos_t, sin_t);
    CK_LAUNCH(xlkv_cuda_train_rope(d_shifted + 1, n, seq, heads, hd, d_c, d_s, 1.0f, NULL));
    g = ct_download_floats(d_shifted + 1, len);
    check("rope forward, unaligned rows (element-wise kernel)", g, ref, len, 1e-6);
    free(g), free(x), free(ref), free(cos_t), free(sin_t), cudaFree(d_x), cudaFree(d_c), cudaFree(d_s);
    cudaFree(d_shifted);

    swiglu_case(1000, 0); /* float4 path */
    swiglu_case(1003, 0); /* float4 path and three leftovers */
    swiglu_case(37, 1);   /* unaligned: scalar path */
}

static void kernel_embedding(void) {
    const int n = 40, dim = 24, vocab = 9;
    int tokens[40];
    for (int r = 0; r < n; r++) tokens[r] = (r * 5 + r / 7) % vocab; /* repeated ids */
    tokens[3] = tokens[4] = tokens[5] = 2;
    float *table = random_array((size_t)vocab * dim, 1.0f), *dx = random_array((size_t)n * dim, 1.0f);
    float *dtable = random_array((size_t)vocab * dim, 0.1f), *x = malloc(sizeof(float) * n * dim);
    float *d_dtable = ct_dev_floats(dtable, (size_t)vocab * dim);
    xlkv_train_embedding_forward(x, tokens, table, n, dim);
    xlkv_train_embedding_backward(dtable, dx, tokens, n, dim);
    int order[40], starts[41], groups = 0, k = 0;
    for (int t = 0; t < vocab; t++) {
        int first = k;
        for (int r = 0; r < n; r++)
            if (tokens[r] == t) order[k++] = r;
        if (k > first) starts[groups++] = first;
    }
    starts[groups] = n;
    int *d_tok = ct_to_device(tokens, sizeof tokens), *d_order = ct_to_device(order, sizeof order);
    int *d_starts = ct_to_device(starts, sizeof(int) * (size_t)(groups + 1));
    float *d_table = ct_dev_floats(table, (size_t)vocab * dim), *d_dx = ct_dev_floats(dx, (size_t)n * dim);
    float *d_x = ct_dev_floats(x, (size_t)n * dim);
    CK(cudaMemset(d_x, 0xFF, sizeof(float) * n * dim));
    CK_LAUNCH(xlkv_cuda_train_embedding_forward(d_x, d_tok, d_table, n, dim, NULL));
    CK_LAUNCH(xlkv_cuda_train_embedding_backward(d_dtable, d_dx, d_tok, d_order, d_starts, groups, dim, NULL));
    float *gx = ct_download_floats(d_x, (size_t)n * dim), *gdt = ct_download_floats(d_dtable, (size_t)vocab * dim);
    check("embedding forward [40 ids of 9]", gx, x, (size_t)n * dim, 0.0);
    check("embedding backward (+=, repeated ids, row order)", gdt, dtable, (size_t)vocab * dim, 0.0);
    free(table), free(dx), free(dtable), free(x), free(gx), free(gdt);
    cudaFree(d_tok), cudaFree(d_order), cudaFree(d_starts), cudaFree(d_table), cudaFree(d_dx), cudaFree(d_x);
    cudaFree(d_dtable);
}

static void kernel_attention_case(const char *name, int batch, int seq, int n_heads, int n_kv_heads, int hd,
                                  int window, bool diag) {
    const xlkv_train_attention_shape cpu = {batch, seq, n_heads, n_kv_heads, hd, window, diag};
    const xlkv_cuda_train_attention_shape gpu = {batch, seq, n_heads, n_kv_heads, hd, window, diag};
    const size_t N = (size_t)batch * seq, qn = N * n_heads * hd, kvn = N * n_kv_heads * hd;
    float *q = random_array(qn, 1.5f), *k = random_array(kvn, 1.5f), *v = random_array(kvn, 1.0f);
    float *dout = random_array(qn, 1.0f), *dk = random_array(kvn, 0.1f), *dv = random_array(kvn, 0.1f);
    float *out = malloc(sizeof(float) * qn), *lse = malloc(sizeof(float) * N * n_heads), *dq = malloc(sizeof(float) * qn);
    float *d_dk = ct_dev_floats(dk, kvn), *d_dv = ct_dev_floats(dv, kvn);
    xlkv_train_attention_forward(out, lse, q, k, v, &cpu);
    xlkv_train_attention_backward(dq, dk, dv, dout, out, lse, q, k, v, &cpu);
    float *d_q = ct_dev_floats(q, qn), *d_k = ct_dev_floats(k, kvn), *d_v = ct_dev_floats(v, kvn), *d_dout = ct_dev_floats(dout, qn);
    float *d_out = ct_dev_floats(out, qn), *d_lse = ct_dev_floats(lse, N * n_heads), *d_dq = ct_dev_floats(dq, qn);
    float *d_delta = ct_dev_floats(lse, N * n_heads);
    CK(cudaMemset(d_out, 0xFF, sizeof(float) * qn));
    CK(cudaMemset(d_dq, 0xFF, sizeof(float) * qn));
    CK_LAUNCH(xlkv_cuda_train_attention_forward(d_out, d_lse, d_q, d_k, d_v, &gpu, NULL));
    CK_LAUNCH(xlkv_cuda_train_attention_backward(d_dq, d_dk, d_dv, d_delta, d_dout, d_out, d_lse, d_q, d_k, d_v, &gpu,
                                                 NULL));
    float *g_out = ct_download_floats(d_out, qn), *g_lse = ct_download_floats(d_lse, N * n_heads), *g_dq = ct_download_floats(d_dq, qn);
    float *g_dk = ct_download_floats(d_dk, kvn), *g_dv = ct_download_floats(d_dv, kvn);
    char what[128];
    snprintf(what, sizeof what, "attention %s out", name);
    check(what, g_out, out, qn, 2e-5);
    snprintf(what, sizeof what, "attention %s lse", name);
    check(what, g_lse, lse, N * n_heads, 2e-5);
    snprintf(what, sizeof what, "attention %s dq", name);
    check(what, g_dq, dq, qn, 5e-5);
    snprintf(what, sizeof what, "attention %s dk (+=)", name);
    check(what, g_dk, dk, kvn, 5e-5);
    snprintf(what, sizeof what, "attention %s dv (+=)", name);
    check(what, g_dv, dv, kvn, 5e-5);
    /* constant K/V: only dq */
    CK(cudaMemset(d_dq, 0xFF, sizeof(float) * qn));
    CK_LAUNCH(xlkv_cuda_train_attention_backward(d_dq, NULL, NULL, d_delta, d_dout, d_out, d_lse, d_q, d_k, d_v, &gpu,
                                                 NULL));
    free(g_dq);
    g_dq = ct_download_floats(d_dq, qn);
    snprintf(what, sizeof what, "attention %s dq with constant K/V", name);
    check(what, g_dq, dq, qn, 5e-5);
    free(q), free(k), free(v), free(dout), free(dk), free(dv), free(out), free(lse), free(dq);
    free(g_out), free(g_lse), free(g_dq), free(g_dk), free(g_dv);
    cudaFree(d_q), cudaFree(d_k), cudaFree(d_v), cudaFree(d_dout), cudaFree(d_out), cudaFree(d_lse), cudaFree(d_dq);
    cudaFree(d_delta), cudaFree(d_dk), cudaFree(d_dv);
}

/* The masked-softmax pieces of the matrix-product attention, against loops from their definition. */
static void kernel_softmax_rows(void) {
    const xlkv_cuda_train_attention_shape shape = {2, 19, 3, 1, 16, 4, true}; /* window 4 + diagonal: empty rows too */
    const int H = 3, B = 2, T = 19, hd = 16;
    const size_t n = (size_t)H * B * T * T, rows = (size_t)B * T;
    const float scale = 0.25f;
    float *scores = random_array(n, 4.0f), *probs = malloc(sizeof(float) * n), *lse = malloc(sizeof(float) * rows * H);
    float *dprobs = random_array(n, 1.0f), *ds = malloc(sizeof(float) * n), *delta = random_array(rows * H, 1.0f);
    for (int h = 0; h < H; h++)
        for (int b = 0; b < B; b++)
            for (int t = 0; t < T; t++) {
                const size_t row = (((size_t)h * B + b) * T + t) * T;
                const int last = t - 1, first = t - 4 + 1 < 0 ? 0 : t - 4 + 1;
                double max = -INFINITY, sum = 0.0;
                for (int p = first; p <= last; p++) max = fmax(max, scores[row + p]);
                for (int p = first; p <= last; p++) sum += exp(scores[row + p] - max);
                const float l = last >= first ? (float)(max + log(sum)) : -INFINITY;
                lse[((size_t)b * T + t) * H + h] = l;
                const float d = delta[((size_t)b * T + t) * H + h];
                for (int p = 0; p < T; p++) {
                    probs[row + p] = p >= first && p <= last ? (float)exp(scores[row + p] - l) : 0.0f;
                    ds[row + p] = probs[row + p] * (dprobs[row + p] - d) * scale;
                }
            }
    float *d_scores = ct_dev_floats(scores, n), *d_lse = ct_dev_floats(lse, rows * H), *d_dp = ct_dev_floats(dprobs, n);
    float *d_delta = ct_dev_floats(delta, rows * H);
    CK(cudaMemset(d_lse, 0xFF, sizeof(float) * rows * H));
    CK_LAUNCH(xlkv_cuda_train_softmax_rows(d_scores, d_lse, &shape, true, NULL));
    float *g_p = ct_download_floats(d_scores, n), *g_lse = ct_download_floats(d_lse, rows * H);
    check("masked softmax rows (window 4 + diagonal): probabilities", g_p, probs, n, 1e-5);
    check("masked softmax rows: log-sum-exp", g_lse, lse, rows * H, 1e-5);
    CK(cudaMemcpy(d_scores, scores, sizeof(float) * n, cudaMemcpyHostToDevice));
    CK_LAUNCH(xlkv_cuda_train_softmax_rows(d_scores, d_lse, &shape, false, NULL));
    free(g_p);
    g_p = ct_download_floats(d_scores, n);
    check("masked softmax rows from a saved log-sum-exp", g_p, probs, n, 1e-5);
    CK_LAUNCH(xlkv_cuda_train_softmax_backward_rows(d_dp, d_scores, d_delta, &shape, NULL));
    float *g_ds = ct_download_floats(d_dp, n);
    check("masked softmax backward dscores", g_ds, ds, n, 1e-5);
    /* delta = dout . out per (row, head) */
    const size_t qn = rows * H * hd;
    float *dout = random_array(qn, 1.0f), *out = random_array(qn, 1.0f), *ref = malloc(sizeof(float) * rows * H);
    for (size_t r = 0; r < rows * H; r++) {
        double acc = 0.0;
        for (int i = 0; i < hd; i++) acc += (double)dout[r * hd + i] * out[r * hd + i];
        ref[r] = (float)acc;
    }
    float *d_dout = ct_dev_floats(dout, qn), *d_out = ct_dev_floats(out, qn);
    CK_LAUNCH(xlkv_cuda_train_attention_delta(d_delta, d_dout, d_out, &shape, NULL));
    float *g_delta = ct_download_floats(d_delta, rows * H);
    check("attention delta = dout . out", g_delta, ref, rows * H, 1e-5);
    free(scores), free(probs), free(lse), free(dprobs), free(ds), free(delta), free(g_p), free(g_lse), free(g_ds);
    free(dout), free(out), free(ref), free(g_delta);
    cudaFree(d_scores), cudaFree(d_lse), cudaFree(d_dp), cudaFree(d_delta), cudaFree(d_dout), cudaFree(d_out);
}

static void kernel_attention(void) {
    kernel_attention_case("causal GQA 4/2 x16, 2 x 33", 2, 33, 4, 2, 16, 0, false);
    kernel_attention_case("diagonal masked (cyclic) GQA 4/2 x16", 2, 17, 4, 2, 16, 0, true);
    kernel_attention_case("window 2", 1, 20, 4, 2, 16, 2, false);
    kernel_attention_case("window 3 + diagonal", 2, 19, 4, 2, 16, 3, true);
    kernel_attention_case("MHA 3/3 x64, 70 positions", 1, 70, 3, 3, 64, 0, false);
    kernel_attention_case("GQA 12/6 x64 (small's heads), 2 x 40", 2, 40, 12, 6, 64, 0, false);
    kernel_attention_case("GQA 4/1 x128, window 9 + diagonal", 1, 50, 4, 1, 128, 9, true);
    kernel_attention_case("head_dim 80 (lanes partly idle)", 1, 21, 2, 1, 80, 0, false);
}

static void kernel_loss_and_optimizer(void) {
    const int n = 7, vocab = 1001;
    float *logits = random_array((size_t)n * vocab, 6.0f), *probs = malloc(sizeof(float) * n * vocab);
    int targets[7] = {0, 1000, 17, 17, 500, 3, 999};
    memcpy(probs, logits, sizeof(float) * n * vocab);
    const double total = xlkv_train_cross_entropy_forward(probs, targets, n, vocab);
    float *d_probs = ct_dev_floats(logits, (size_t)n * vocab);
    int *d_targets = ct_to_device(targets, sizeof targets);
    double *d_loss = ct_to_device(NULL, sizeof(double) * n), loss[7];
    CK_LAUNCH(xlkv_cuda_train_cross_entropy_forward(d_probs, d_loss, d_targets, n, vocab, NULL));
    from_device(loss, d_loss, sizeof loss);
    double gpu_total = 0.0;
    for (int r = 0; r < n; r++) gpu_total += loss[r];
    float a = (float)gpu_total, b = (float)total;
    check("cross-entropy forward: summed loss [7 x 1001]", &a, &b, 1, 1e-6);
    float *gp = ct_download_floats(d_probs, (size_t)n * vocab);
    check("cross-entropy forward: probabilities", gp, probs, (size_t)n * vocab, 1e-5);
    xlkv_train_cross_entropy_backward(probs, probs, targets, n, vocab, 0.37f);
    CK_LAUNCH(xlkv_cuda_train_cross_entropy_backward(d_probs, d_targets, n, vocab, 0.37f, NULL));
    free(gp);
    gp = ct_download_floats(d_probs, (size_t)n * vocab);
    check("cross-entropy backward dlogits", gp, probs, (size_t)n * vocab, 1e-5);
    free(gp), free(logits), free(probs), cudaFree(d_probs), cudaFree(d_targets), cudaFree(d_loss);

    const size_t m = 5000;
    float *w = random_array(m, 0.1f), *g = random_array(m, 0.01f), *mm = random_array(m, 0.001f), *vv = random_array(m, 1e-5f);
    for (size_t i = 0; i < m; i++) vv[i] = fabsf(vv[i]);
    float *d_w = ct_dev_floats(w, m), *d_g = ct_dev_floats(g, m), *d_m = ct_dev_floats(mm, m), *d_v = ct_dev_floats(vv, m);
    const float lr = 3e-3f, b1 = 0.9f, b2 = 0.95f, eps = 1e-8f, decay = 0.1f;
    const long step = 3;
    const float c1 = (float)(1.0 - pow(b1, step)), c2 = (float)(1.0 - pow(b2, step));
    for (size_t i = 0; i < m; i++) { /* train/optimizer.c's loop */
        mm[i] = b1 * mm[i] + (1.0f - b1) * g[i];
        vv[i] = b2 * vv[i] + (1.0f - b2) * g[i] * g[i];
        const float mhat = mm[i] / c1, vhat = vv[i] / c2;
        w[i] -= lr * (mhat / (sqrtf(vhat) + eps) + decay * w[i]);
    }
    CK_LAUNCH(xlkv_cuda_train_adamw(d_w, d_g, d_m, d_v, m, lr, b1, b2, eps, decay, c1, c2, NULL));
    float *gw = ct_download_floats(d_w, m), *gm = ct_download_floats(d_m, m), *gv = ct_download_floats(d_v, m);
    check("AdamW parameters [5000]", gw, w, m, 1e-6);
    check("AdamW first moment", gm, mm, m, 1e-6);
    check("AdamW second moment", gv, vv, m, 1e-6);
    free(gw), free(gm), free(gv), free(w), free(mm), free(vv);
    cudaFree(d_w), cudaFree(d_m), cudaFree(d_v);

    const size_t big = 3 * XLKV_CUDA_TRAIN_NORM_CHUNK + 123;
    float *gg = random_array(big, 1.0f);
    float *d_gg = ct_dev_floats(gg, big);
    double *d_part = ct_to_device(NULL, sizeof(double) * 4), part[4], ref = 0.0, got = 0.0;
    for (size_t i = 0; i < big; i++) ref += (double)gg[i] * gg[i];
    CK_LAUNCH(xlkv_cuda_train_sum_squares(d_part, d_gg, big, NULL));
    from_device(part, d_part, sizeof part);
    for (int c = 0; c < 4; c++) got += part[c];
    float fa = (float)got, fb = (float)ref;
    check("sum of squares over 4 chunks (gradient norm)", &fa, &fb, 1, 1e-6);
    CK_LAUNCH(xlkv_cuda_train_scale(d_gg, 0.5f, big, NULL));
    float *gs = ct_download_floats(d_gg, big);
    for (size_t i = 0; i < big; i++) gg[i] *= 0.5f;
    check("scale (gradient clipping)", gs, gg, big, 0.0);
    free(gs), free(gg), free(g), cudaFree(d_gg), cudaFree(d_part), cudaFree(d_g);
}

static void kernels_match_cpu(void **state) {
    (void)state;
    int devices = 0;
    if (cudaGetDeviceCount(&devices) != cudaSuccess || devices == 0) skip();
    failures = 0;
    kernel_rmsnorm();
    kernel_rope_swiglu();
    kernel_embedding();
    kernel_attention();
    kernel_softmax_rows();
    kernel_loss_and_optimizer();
    if (failures) fail_msg("%d kernel check(s) failed", failures);
}

/* ---- 2. gradients of a whole model ------------------------------------------------------------------------------ */
enum { VOCAB = 61 };

static xlkv_hparams tiny_hparams(int m, int b) {
    xlkv_hparams hp;
    xlkv_hparams_defaults(&hp);
    hp.dim = 64, hp.hidden_dim = 96, hp.n_layers = 4, hp.n_heads = 4, hp.n_kv_heads = 2, hp.head_dim = 16;
    hp.vocab_size = VOCAB, hp.max_seq_len = 64, hp.forward_passes = m, hp.backward_passes = b;
    hp.sliding_window = 5;
    return hp;
}

typedef struct model_case {
    const char *map;
    int m, b;
    bool force_nodiag;
} model_case;
static const model_case model_cases[] = {
    {"standard", 0, 2, false}, {"cla:2", 0, 2, false}, {"lckv:1", 1, 2, false}, {"lckv:1", 2, 3, false},
    {"0_1s_1s_3", 0, 2, false}, {"0_2_2_3", 1, 2, false}, {"standard", 0, 2, true},
};

static xlkv_param_store *make_store(const model_case *c, unsigned long long seed) {
    xlkv_hparams hp = tiny_hparams(c->m, c->b);
    hp.force_nodiag = c->force_nodiag;
    xlkv_param_store *store = NULL;
    TU_ASSERT_OK(xlkv_store_from_shape(&hp, c->map, seed, &store));
    for (size_t i = 0; i < store->n_params; i++) store->params[i] *= 5.0f; /* logits not flat */
    return store;
}

static void gradients_match_cpu(void **state) {
    (void)state;
    int devices = 0;
    if (cudaGetDeviceCount(&devices) != cudaSuccess || devices == 0) skip();
    failures = 0;
    enum { B = 2, T = 24, N = B * T };
    int tokens[2][N], targets[2][N];
    for (int a = 0; a < 2; a++)
        for (int r = 0; r < N; r++) {
            tokens[a][r] = (int)((unsigned)(r * 37 + a * 11 + (r * r) % 13) % VOCAB);
            targets[a][r] = (int)((unsigned)(r * 17 + a * 5 + 3) % VOCAB);
        }
    static const char *const attention_paths[] = {"gemm", "warp"};
    for (size_t run = 0; run < 2 * sizeof model_cases / sizeof *model_cases; run++) {
        const model_case *c = &model_cases[run / 2];
        const char *path = attention_paths[run % 2];
        setenv("XLKV_TRAIN_ATTENTION", path, 1);
        xlkv_param_store *cpu = make_store(c, 3), *gpu_store = make_store(c, 3);
        xlkv_train_graph *graph = NULL;
        xlkv_gpu_trainer *gt = NULL;
        TU_ASSERT_OK(xlkv_train_graph_create(cpu, B, T, c->m, c->b, &graph));
        TU_ASSERT_OK(xlkv_gpu_trainer_create(gpu_store, B, T, c->m, c->b, false, &gt));
        TU_ASSERT_OK(xlkv_gpu_trainer_zero_grads(gt));
        memset(cpu->grads, 0, cpu->n_params * sizeof(float));
        double cpu_loss[2], gpu_loss[2];
        for (int a = 0; a < 2; a++) { /* two accumulated micro-batches */
            TU_ASSERT_OK(xlkv_train_graph_forward(graph, tokens[a], targets[a], &cpu_loss[a]));
            xlkv_train_graph_backward(graph, 0.5f);
            TU_ASSERT_OK(xlkv_gpu_trainer_forward(gt, tokens[a], targets[a], &gpu_loss[a]));
            TU_ASSERT_OK(xlkv_gpu_trainer_backward(gt, 0.5f));
        }
        TU_ASSERT_OK(xlkv_gpu_trainer_download(gt, gpu_store, true));
        char what[160];
        float l_gpu[2] = {(float)gpu_loss[0], (float)gpu_loss[1]}, l_cpu[2] = {(float)cpu_loss[0], (float)cpu_loss[1]};
        snprintf(what, sizeof what, "f32 loss, %s%s m=%d b=%d, %s attention", c->map, c->force_nodiag ? " nodiag" : "",
                 c->m, c->b, path);
        check(what, l_gpu, l_cpu, 2, 1e-5);
        double worst = 0.0;
        const char *worst_name = "";
        for (int t = 0; t < cpu->n_tensors; t++) {
            const xlkv_param_tensor *tensor = &cpu->tensors[t];
            const size_t n = (size_t)tensor->rows * (size_t)(tensor->cols ? tensor->cols : 1);
            double diff = 0.0, scale = 0.0;
            for (size_t i = 0; i < n; i++) {
                const double a = gpu_store->grads[tensor->offset + i], b = cpu->grads[tensor->offset + i];
                if (fabs(a - b) > diff || isnan(a)) diff = isnan(a) ? INFINITY : fabs(a - b);
                if (fabs(b) > scale) scale = fabs(b);
            }
            const double err = scale > 0 ? diff / scale : diff;
            if (err > worst || isnan(err)) worst = err, worst_name = tensor->name;
        }
        /* fp32 summation-order noise, relative to each tensor's largest gradient. Measured on an H100 (2026-11-25):
         * acyclic maps <= 1.1e-4; maps with a cyclic group up to 1.3e-3 (m + b iterations carry the forward's
         * rounding differences into the constant K/V and through every iteration's backward); the losses agree to
         * 1.2e-6 and a missing or doubled gradient path would be off by O(1). */
        const double tolerance = c->m > 0 ? 3e-3 : 3e-4;
        const bool ok = worst <= tolerance;
        printf("check f32 gradients, %-10s%s m=%d b=%d, %s attention: worst tensor %-36s error %.2e (tolerance %.0e) "
               "%s\n", c->map, c->force_nodiag ? " nodiag" : "", c->m, c->b, path, worst_name, worst, tolerance,
               ok ? "ok" : "FAIL");
        if (!ok) failures++;
        xlkv_train_graph_free(graph);
        xlkv_gpu_trainer_free(gt);
        xlkv_param_store_free(cpu);
        xlkv_param_store_free(gpu_store);
    }
    unsetenv("XLKV_TRAIN_ATTENTION");
    if (failures) fail_msg("%d gradient check(s) failed", failures);
}

static xlkv_trainer *make_trainer(const char *data, const model_case *c, bool cuda, bool bf16, long steps) {
    const xlkv_hparams hp = tiny_hparams(c->m, c->b);
    return tt_tiny_trainer(data, &hp, c->map, c->m, c->b, cuda, bf16, steps);
}

static void trainers_agree(void **state) {
    (void)state;
    int devices = 0;
    if (cudaGetDeviceCount(&devices) != cudaSuccess || devices == 0) skip();
    failures = 0;
    char *data = tt_token_data_dir(6000, 5000, VOCAB);
    const model_case cases[] = {{"standard", 0, 2, false}, {"cla:2", 0, 2, false}, {"lckv:1", 1, 2, false}};
    enum { STEPS = 6 };
    for (int ci = 0; ci < 3; ci++) {
        xlkv_trainer *cpu = make_trainer(data, &cases[ci], false, false, STEPS);
        xlkv_trainer *f32 = make_trainer(data, &cases[ci], true, false, STEPS);
        xlkv_trainer *bf16 = make_trainer(data, &cases[ci], true, true, STEPS);
        float *initial = malloc(cpu->store->n_params * sizeof *initial);
        memcpy(initial, cpu->store->params, cpu->store->n_params * sizeof *initial);
        for (int s = 0; s < STEPS; s++) {
            TU_ASSERT_OK(xlkv_trainer_step(cpu, NULL));
            TU_ASSERT_OK(xlkv_trainer_step(f32, NULL));
            TU_ASSERT_OK(xlkv_trainer_step(bf16, NULL));
        }
        double cpu_eval, f32_eval, bf16_eval;
        TU_ASSERT_OK(xlkv_trainer_eval(cpu, &cpu_eval));
        TU_ASSERT_OK(xlkv_trainer_eval(f32, &f32_eval));
        TU_ASSERT_OK(xlkv_trainer_eval(bf16, &bf16_eval));
        char what[160];
        printf("losses %s: cpu", cases[ci].map);
        for (int s = 0; s < STEPS; s++) printf(" %.5f", cpu->train_losses[s]);
        printf(" | cuda f32");
        for (int s = 0; s < STEPS; s++) printf(" %.5f", f32->train_losses[s]);
        printf(" | cuda bf16");
        for (int s = 0; s < STEPS; s++) printf(" %.5f", bf16->train_losses[s]);
        printf(" | eval cpu %.5f f32 %.5f bf16 %.5f\n", cpu_eval, f32_eval, bf16_eval);
        snprintf(what, sizeof what, "trainer f32 losses per step, %s (6 steps, accum 2)", cases[ci].map);
        check(what, f32->train_losses, cpu->train_losses, STEPS, 1e-4);
        snprintf(what, sizeof what, "trainer bf16 losses per step, %s", cases[ci].map);
        check(what, bf16->train_losses, cpu->train_losses, STEPS, 3e-2);
        TU_ASSERT_OK(xlkv_gpu_trainer_download(f32->gpu, f32->store, false));
        /* AdamW normalises each element's update, so an element whose gradient is ~0 can move either way on the two
         * devices: compare the whole update (final - initial) in norm, and count elements off by more than 1e-5 */
        double diff2 = 0.0, update2 = 0.0, worst = 0.0;
        size_t off = 0;
        for (size_t i = 0; i < cpu->store->n_params; i++) {
            const double d = (double)f32->store->params[i] - cpu->store->params[i];
            const double u = (double)cpu->store->params[i] - initial[i];
            diff2 += d * d, update2 += u * u;
            if (fabs(d) > worst || isnan(d)) worst = isnan(d) ? INFINITY : fabs(d);
            off += fabs(d) > 1e-5;
        }
        const double rel = sqrt(diff2 / update2);
        const bool ok = rel <= 1e-2 && off * 1000 <= cpu->store->n_params;
        printf("check trainer f32 final parameters, %-8s: |update gpu - update cpu| / |update cpu| %.2e (tolerance "
               "1e-2), max |difference| %.2e, %zu of %zu elements off by > 1e-5 (at most 0.1%%) %s\n", cases[ci].map,
               rel, worst, off, cpu->store->n_params, ok ? "ok" : "FAIL");
        if (!ok) failures++;
        free(initial);
        float e_gpu = (float)f32_eval, e_cpu = (float)cpu_eval;
        snprintf(what, sizeof what, "trainer f32 held-out loss, %s", cases[ci].map);
        check(what, &e_gpu, &e_cpu, 1, 1e-4);
        xlkv_trainer_free(cpu);
        xlkv_trainer_free(f32);
        xlkv_trainer_free(bf16);
    }
    free(data);
    if (failures) fail_msg("%d trainer check(s) failed", failures);
}

static void gpu_resume_equals_uninterrupted_run(void **state) {
    (void)state;
    int devices = 0;
    if (cudaGetDeviceCount(&devices) != cudaSuccess || devices == 0) skip();
    char *data = tt_token_data_dir(6000, 5000, VOCAB);
    const model_case cases[] = {{"cla:2", 0, 2, false}, {"lckv:1", 1, 2, false}};
    for (int ci = 0; ci < 2; ci++)
        for (int bf16 = 0; bf16 < 2; bf16++) {
            char *out = tu_temp_dir();
            xlkv_trainer *straight = make_trainer(data, &cases[ci], true, bf16, 8);
            for (int s = 0; s < 8; s++) {
                TU_ASSERT_OK(xlkv_trainer_step(straight, NULL));
                if (s == 3) TU_ASSERT_OK(xlkv_trainer_save(straight, out, NULL));
            }
            TU_ASSERT_OK(xlkv_gpu_trainer_download(straight->gpu, straight->store, false));
            xlkv_trainer *resumed = make_trainer(data, &cases[ci], true, bf16, 8);
            char *latest = xlkv_path_join(out, "latest");
            TU_ASSERT_OK(xlkv_trainer_resume(resumed, latest));
            assert_int_equal(resumed->step, 4);
            while (resumed->step < 8) TU_ASSERT_OK(xlkv_trainer_step(resumed, NULL));
            TU_ASSERT_OK(xlkv_gpu_trainer_download(resumed->gpu, resumed->store, false));
            const size_t bytes = straight->store->n_params * sizeof(float);
            const bool same = !memcmp(resumed->store->params, straight->store->params, bytes) &&
                              !memcmp(resumed->store->adam_m, straight->store->adam_m, bytes) &&
                              !memcmp(resumed->store->adam_v, straight->store->adam_v, bytes) &&
                              !memcmp(resumed->train_losses, straight->train_losses, 8 * sizeof(float));
            const double diff = tu_max_abs_diff(resumed->store->params, straight->store->params, straight->store->n_params);
            printf("check GPU resume (%s, %s): save at 4, resume, 8 steps == uninterrupted: %s (max parameter "
                   "difference %.2e)\n", cases[ci].map, bf16 ? "bf16" : "f32", same ? "bit-identical ok" : "DIFFERENT FAIL",
                   diff);
            if (!same) fail_msg("GPU resume under %s (%s) differs from the uninterrupted run", cases[ci].map,
                                bf16 ? "bf16" : "f32");
            free(latest);
            xlkv_trainer_free(straight);
            xlkv_trainer_free(resumed);
            free(out);
        }
    free(data);
}

/* ---- 5. bf16 operands ------------------------------------------------------------------------------------------ */
/* fp32 -> bf16 bits, round to nearest even, from the definition (NaN -> a quiet NaN; only NaN-ness is compared) */
static uint16_t bf16_reference(float f) {
    uint32_t u;
    memcpy(&u, &f, sizeof u);
    if ((u & 0x7FFFFFFFu) > 0x7F800000u) return (uint16_t)((u >> 16) | 0x40u);
    u += 0x7FFFu + ((u >> 16) & 1u);
    return (uint16_t)(u >> 16);
}
static bool bf16_is_nan(uint16_t b) { return (b & 0x7F80u) == 0x7F80u && (b & 0x7Fu); }

/* one strided conversion (src offset by src_shift floats, so that 16-byte alignment can be broken) vs the reference;
 * also checks that nothing past rows x cols is written */
static void bf16_conversion_case(const char *name, size_t rows, size_t cols, size_t ld, size_t src_shift) {
    const size_t n_src = src_shift + (rows ? (rows - 1) * ld + cols : 0), n_dst = rows * cols, guard = 16;
    float *src = malloc((n_src + 1) * sizeof *src);
    static const uint32_t specials[] = {
        0x3F808000u, /* tie, even below: stays 0x3F80 */
        0x3F818000u, /* tie, odd below: up to 0x3F82 */
        0x3F808001u, /* just above a tie: up */
        0x3F807FFFu, /* just below a tie: down */
        0x7F7FFFFFu, /* largest float: rounds to +inf */
        0xFF7F8000u, /* tie at the top: -inf */
        0x7F800000u, 0xFF800000u, /* +-inf */
        0x00000001u, 0x00018000u, 0x80008000u, 0x007FFFFFu, /* subnormals, ties among them */
        0x7FC00000u, 0x7F800001u, /* NaNs */
        0x00000000u, 0x80000000u, /* +-0 */
    };
    const size_t n_specials = sizeof specials / sizeof *specials;
    for (size_t i = 0; i < n_src; i++) {
        if (i % 7 == 3) {
            memcpy(&src[i], &specials[(i / 7) % n_specials], sizeof(float));
        } else {
            src[i] = uniform() * powf(2.0f, (float)((int)(i % 61) - 30)); /* many exponents */
        }
    }
    float *d_src = ct_dev_floats(src, n_src + 1);
    uint16_t *d_dst = ct_to_device(NULL, (n_dst + guard) * sizeof(uint16_t)), *dst = malloc((n_dst + guard) * sizeof *dst);
    CK(cudaMemset(d_dst, 0xAB, (n_dst + guard) * sizeof(uint16_t)));
    CK_LAUNCH(xlkv_cuda_train_to_bf16(d_dst, d_src + src_shift, rows, cols, ld, NULL));
    from_device(dst, d_dst, (n_dst + guard) * sizeof *dst);
    size_t wrong = 0, overwritten = 0;
    for (size_t r = 0; r < rows; r++)
        for (size_t c = 0; c < cols; c++) {
            const uint16_t want = bf16_reference(src[src_shift + r * ld + c]), got = dst[r * cols + c];
            if (bf16_is_nan(want) ? !bf16_is_nan(got) : got != want) wrong++;
        }
    for (size_t i = n_dst; i < n_dst + guard; i++) overwritten += dst[i] != 0xABABu;
    const bool ok = wrong == 0 && overwritten == 0;
    printf("check bf16 conversion %-46s: %zu of %zu elements differ from round-to-nearest-even, %zu written past the "
           "end (tolerance 0) %s\n", name, wrong, n_dst, overwritten, ok ? "ok" : "FAIL");
    if (!ok) failures++;
    free(src), free(dst), cudaFree(d_src), cudaFree(d_dst);
}

static void kernel_bf16_conversion(void) {
    bf16_conversion_case("[37 x 45], ld 53 (scalar path)", 37, 45, 53, 0);
    bf16_conversion_case("[19 x 64], ld 72 (4-wide path)", 19, 64, 72, 0);
    bf16_conversion_case("[19 x 64], ld 72, source not 16-byte aligned", 19, 64, 72, 1);
    bf16_conversion_case("[33 x 100] packed (one 4-wide run)", 33, 100, 100, 0);
    bf16_conversion_case("[7 x 13] packed (odd length: bulk + tail)", 7, 13, 13, 0);
    bf16_conversion_case("[1 x 3] (shorter than one vector)", 1, 3, 3, 0);
    bf16_conversion_case("[70000 x 3], ld 5 (rows past one grid)", 70000, 3, 5, 0);
    bf16_conversion_case("[1 x 1]", 1, 1, 1, 0);
    /* a bad leading dimension is refused, not run */
    const int rc = xlkv_cuda_train_to_bf16(NULL, NULL, 2, 8, 4, NULL);
    printf("check bf16 conversion with ld < cols refused: %s\n", rc == (int)cudaErrorInvalidValue ? "ok" : "FAIL");
    if (rc != (int)cudaErrorInvalidValue) failures++;
}

/* the classifier's gradient written in bf16 by the cross-entropy backward vs the CPU formula rounded to bf16 */
static void kernel_cross_entropy_backward_bf16(void) {
    const int n = 7, vocab = 1001;
    const float scale = 0.37f / 7.0f;
    const int targets[7] = {0, 1000, 17, 17, 500, 3, 999};
    float *probs = random_array((size_t)n * vocab, 1.0f);
    for (size_t i = 0; i < (size_t)n * vocab; i++) probs[i] = fabsf(probs[i]) * 0.01f;
    float *d_probs = ct_dev_floats(probs, (size_t)n * vocab);
    int *d_targets = ct_to_device(targets, sizeof targets);
    uint16_t *d_out = ct_to_device(NULL, (size_t)n * vocab * sizeof(uint16_t)), *out = malloc((size_t)n * vocab * 2);
    CK_LAUNCH(xlkv_cuda_train_cross_entropy_backward_bf16(d_out, d_probs, d_targets, n, vocab, scale, NULL));
    from_device(out, d_out, (size_t)n * vocab * sizeof(uint16_t));
    float *after = ct_download_floats(d_probs, (size_t)n * vocab);
    size_t wrong = 0;
    for (int r = 0; r < n; r++)
        for (int c = 0; c < vocab; c++) {
            volatile float product = probs[(size_t)r * vocab + c] * scale; /* rounded: no contraction */
            const float d = product - (c == targets[r] ? scale : 0.0f);
            wrong += out[(size_t)r * vocab + c] != bf16_reference(d);
        }
    const bool unchanged = !memcmp(after, probs, (size_t)n * vocab * sizeof(float));
    const bool ok = wrong == 0 && unchanged;
    printf("check bf16 cross-entropy backward [7 x 1001]: %zu elements differ from the CPU formula rounded to bf16 "
           "(tolerance 0), probabilities %s %s\n", wrong, unchanged ? "unchanged" : "CHANGED", ok ? "ok" : "FAIL");
    if (!ok) failures++;
    free(probs), free(out), free(after), cudaFree(d_probs), cudaFree(d_targets), cudaFree(d_out);
}

/* max over i of |a_i - b_i| / |b_i| */
static double max_rel_diff(const float *a, const float *b, int n) {
    double worst = 0.0;
    for (int i = 0; i < n; i++) {
        const double d = fabs((double)a[i] - (double)b[i]) / fabs((double)b[i]);
        if (d > worst || isnan(d)) worst = isnan(d) ? INFINITY : d;
    }
    return worst;
}

static void bf16_operands_match_fp32_operands(void **state) {
    (void)state;
    int devices = 0;
    if (cudaGetDeviceCount(&devices) != cudaSuccess || devices == 0) skip();
    failures = 0;
    kernel_bf16_conversion();
    kernel_cross_entropy_backward_bf16();

    /* One forward + backward of the tiny model under bf16 operands, fp32 operands (XLKV_TRAIN_GEMM=fp32ops, the former
     * path: cuBLAS' FAST_16BF, which on these tiny products keeps far more than bf16: 6e-5 of the loss from the f32
     * trainer where plain bf16 operands give 5e-3) and the exact f32 trainer, the truth. Held: the bf16-operand
     * gradients within 5e-2 of each tensor's largest gradient of the f32 trainer's and the loss within 5e-3, with the
     * initial weights (a wrong or stale operand — a weight shadow not refreshed, another record's copy — is off by
     * O(1)). Printed only: the same with the weights x5 (sharp softmaxes: a rounding that flips an attention weight
     * moves the small projection gradients by O(1); measured 0.56 in layer 0's k_proj on an H100). */
    enum { B = 2, T = 24, N = B * T };
    int tokens[N], targets[N];
    for (int r = 0; r < N; r++) {
        tokens[r] = (int)((unsigned)(r * 37 + (r * r) % 13) % VOCAB);
        targets[r] = (int)((unsigned)(r * 17 + 3) % VOCAB);
    }
    const model_case grad_cases[] = {{"standard", 0, 2, false}, {"lckv:1", 1, 2, false}};
    for (int run = 0; run < 4; run++) {
        const model_case *c = &grad_cases[run % 2];
        const bool sharp = run >= 2; /* weights x5 (make_store), printed only */
        xlkv_param_store *stores[3];
        double loss[3];
        for (int path = 0; path < 3; path++) { /* 0: bf16 operands, 1: fp32 operands, 2: the f32 trainer */
            if (path == 1) setenv("XLKV_TRAIN_GEMM", "fp32ops", 1);
            else unsetenv("XLKV_TRAIN_GEMM");
            stores[path] = make_store(c, 5);
            if (!sharp)
                for (size_t i = 0; i < stores[path]->n_params; i++) stores[path]->params[i] /= 5.0f;
            xlkv_gpu_trainer *gt = NULL;
            TU_ASSERT_OK(xlkv_gpu_trainer_create(stores[path], B, T, c->m, c->b, path < 2, &gt));
            TU_ASSERT_OK(xlkv_gpu_trainer_zero_grads(gt));
            TU_ASSERT_OK(xlkv_gpu_trainer_forward(gt, tokens, targets, &loss[path]));
            TU_ASSERT_OK(xlkv_gpu_trainer_backward(gt, 1.0f));
            TU_ASSERT_OK(xlkv_gpu_trainer_download(gt, stores[path], true));
            xlkv_gpu_trainer_free(gt);
        }
        unsetenv("XLKV_TRAIN_GEMM");
        const char *name_new = "", *name_old = "";
        const double err_new = tt_worst_tensor_error(stores[2], stores[0]->grads, stores[2]->grads, &name_new);
        const double err_old = tt_worst_tensor_error(stores[2], stores[1]->grads, stores[2]->grads, &name_old);
        const float l0 = (float)loss[0], l1 = (float)loss[1], l2 = (float)loss[2];
        const double loss_new = max_rel_diff(&l0, &l2, 1), loss_old = max_rel_diff(&l1, &l2, 1);
        const bool ok = err_new <= 5e-2 && loss_new <= 5e-3;
        printf("%s bf16 operands vs the f32 trainer, one step of %-8s m=%d b=%d%s: gradients worst %.2e (%s%s), loss "
               "%.2e%s; fp32ops: %.2e (%s), loss %.2e %s\n",
               sharp ? "info " : "check", c->map, c->m, c->b, sharp ? ", weights x5" : "", err_new, name_new,
               sharp ? "" : "; tol 5e-2", loss_new, sharp ? "" : " (tol 5e-3)", err_old, name_old, loss_old,
               sharp ? "" : (ok ? "ok" : "FAIL"));
        if (!sharp && !ok) failures++;
        for (int path = 0; path < 3; path++) xlkv_param_store_free(stores[path]);
    }

    char *data = tt_token_data_dir(6000, 5000, VOCAB);
    const model_case cases[] = {{"standard", 0, 2, false}, {"lckv:1", 1, 2, false}};
    enum { STEPS = 6 };
    for (int ci = 0; ci < 2; ci++) {
        unsetenv("XLKV_TRAIN_GEMM");
        xlkv_trainer *ops16 = make_trainer(data, &cases[ci], true, true, STEPS);
        setenv("XLKV_TRAIN_GEMM", "fp32ops", 1);
        xlkv_trainer *ops32 = make_trainer(data, &cases[ci], true, true, STEPS);
        unsetenv("XLKV_TRAIN_GEMM");
        for (int s = 0; s < STEPS; s++) {
            TU_ASSERT_OK(xlkv_trainer_step(ops16, NULL));
            TU_ASSERT_OK(xlkv_trainer_step(ops32, NULL));
        }
        double eval16, eval32;
        TU_ASSERT_OK(xlkv_trainer_eval(ops16, &eval16));
        TU_ASSERT_OK(xlkv_trainer_eval(ops32, &eval32));
        printf("losses %s: bf16 operands", cases[ci].map);
        for (int s = 0; s < STEPS; s++) printf(" %.6f", ops16->train_losses[s]);
        printf(" | fp32ops");
        for (int s = 0; s < STEPS; s++) printf(" %.6f", ops32->train_losses[s]);
        printf(" | eval %.6f %.6f\n", eval16, eval32);
        const double steps_diff = max_rel_diff(ops16->train_losses, ops32->train_losses, STEPS);
        const float e16 = (float)eval16, e32 = (float)eval32;
        const double eval_diff = max_rel_diff(&e16, &e32, 1);
        const bool ok = steps_diff <= 5e-3 && eval_diff <= 5e-3;
        printf("check bf16 operands vs fp32ops, %d trainer steps of %-8s: losses max rel diff %.2e (tol 5e-3), "
               "held-out max rel diff %.2e (tol 5e-3) %s\n", STEPS, cases[ci].map, steps_diff, eval_diff,
               ok ? "ok" : "FAIL");
        if (!ok) failures++;
        xlkv_trainer_free(ops16);
        xlkv_trainer_free(ops32);
    }
    free(data);

    setenv("XLKV_TRAIN_GEMM", "fp16ops", 1);
    xlkv_param_store *store = make_store(&cases[0], 5);
    xlkv_gpu_trainer *gt = NULL;
    const xlkv_status refused = xlkv_gpu_trainer_create(store, B, T, 0, 2, true, &gt);
    unsetenv("XLKV_TRAIN_GEMM");
    printf("check XLKV_TRAIN_GEMM=fp16ops refused: %s (%s)\n", refused != XLKV_OK && !gt ? "ok" : "FAIL",
           xlkv_last_error());
    if (refused == XLKV_OK || gt) failures++;
    xlkv_gpu_trainer_free(gt);
    xlkv_param_store_free(store);
    if (failures) fail_msg("%d bf16-operand check(s) failed", failures);
}

int main(void) {
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(kernels_match_cpu),
        cmocka_unit_test(gradients_match_cpu),
        cmocka_unit_test(trainers_agree),
        cmocka_unit_test(gpu_resume_equals_uninterrupted_run),
        cmocka_unit_test(bf16_operands_match_fp32_operands),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
