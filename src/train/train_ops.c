/* train/train_ops: see train_ops.h. Derivations, per row (s = inv_rms, g = gain, D = dim):
 *   rmsnorm   y = g x s            dx = s (g dy) - x s^3 / D * sum(g dy x)
 *   attention o = sum_p P_p v_p,   P = softmax(scale q.k_p); with dP_p = do.v_p and delta = do.o:
 *             ds_p = P_p (dP_p - delta); dq = scale sum ds_p k_p; dk_p += scale ds_p q; dv_p += P_p do
 *   swiglu    h = silu(a) u        da = dh u silu'(a), silu'(a) = sig(a) (1 + a (1 - sig(a))); du = dh silu(a)
 *   softmax cross-entropy          dlogits = p - onehot(target) */
#include "backend/cpu/cpu_attention.h"
#include "model/rmsnorm_rows.h"
#include "train/train_ops.h"

#include <cblas.h>
#include <math.h>
#include <omp.h>
#include <stdlib.h>
#include <string.h>

enum { PARALLEL_MIN_WORK = 1 << 14 };

void xlkv_train_matmul_forward(float *y, const float *x, const float *w, int n, int in, int out) {
    cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasTrans, n, out, in, 1.0f, x, in, w, in, 0.0f, y, out);
}

void xlkv_train_matmul_backward(float *dx, float *dw, const float *dy, const float *x, const float *w, int n, int in,
                                int out) {
    if (dx) cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasNoTrans, n, in, out, 1.0f, dy, out, w, in, 1.0f, dx, in);
    cblas_sgemm(CblasRowMajor, CblasTrans, CblasNoTrans, out, in, n, 1.0f, dy, out, x, in, 1.0f, dw, in);
}

void xlkv_train_rmsnorm_forward(float *y, float *inv_rms, const float *x, const float *gain, int n, int dim,
                                float eps) {
    xlkv_rmsnorm_rows(y, inv_rms, x, gain, n, dim, eps); /* the engine's formula (model/rmsnorm_rows) */
}

void xlkv_train_rmsnorm_backward(float *dx, float *dgain, const float *dy, const float *x, const float *inv_rms,
                                 const float *gain, int n, int dim) {
    const int parallel = (long)n * dim >= PARALLEL_MIN_WORK;
#pragma omp parallel for schedule(static) if (parallel)
    for (int r = 0; r < n; r++) {
        const float *xr = x + (size_t)r * (size_t)dim, *dyr = dy + (size_t)r * (size_t)dim;
        float *dxr = dx + (size_t)r * (size_t)dim;
        const float s = inv_rms[r];
        float dot = 0.0f;
        for (int i = 0; i < dim; i++) dot += gain[i] * dyr[i] * xr[i];
        const float coef = dot * s * s * s / (float)dim;
        for (int i = 0; i < dim; i++) dxr[i] += s * gain[i] * dyr[i] - coef * xr[i];
    }
    /* columns in parallel, rows in order: the same sum whatever the thread count */
#pragma omp parallel for schedule(static) if (parallel)
    for (int i = 0; i < dim; i++) {
        float sum = 0.0f;
        for (int r = 0; r < n; r++)
            sum += dy[(size_t)r * (size_t)dim + (size_t)i] * x[(size_t)r * (size_t)dim + (size_t)i] * inv_rms[r];
        dgain[i] += sum;
    }
}

static void rope_rotate(float *x, int n, int seq, int n_heads, int head_dim, const float *cos_table,
                        const float *sin_table, float direction) {
    const int half = head_dim / 2;
#pragma omp parallel for schedule(static) if ((long)n * n_heads * head_dim >= PARALLEL_MIN_WORK)
    for (int r = 0; r < n; r++) {
        const int pos = r % seq;
        const float *c = cos_table + (size_t)pos * (size_t)half, *s = sin_table + (size_t)pos * (size_t)half;
        float *row = x + (size_t)r * (size_t)n_heads * (size_t)head_dim;
        for (int h = 0; h < n_heads; h++) {
            float *v = row + (size_t)h * (size_t)head_dim;
            for (int i = 0; i < half; i++) {
                const float a = v[2 * i], b = v[2 * i + 1], sn = direction * s[i];
                v[2 * i] = a * c[i] - b * sn;
                v[2 * i + 1] = a * sn + b * c[i];
            }
        }
    }
}

void xlkv_train_rope_forward(float *x, int n, int seq, int n_heads, int head_dim, const float *cos_table,
                             const float *sin_table) {
    rope_rotate(x, n, seq, n_heads, head_dim, cos_table, sin_table, 1.0f);
}

void xlkv_train_rope_backward(float *dx, int n, int seq, int n_heads, int head_dim, const float *cos_table,
                              const float *sin_table) {
    rope_rotate(dx, n, seq, n_heads, head_dim, cos_table, sin_table, -1.0f);
}

static inline float dot(const float *a, const float *b, int n) {
    float s = 0.0f;
    for (int i = 0; i < n; i++) s += a[i] * b[i];
    return s;
}

/* The visible key positions [first, last] of query position t (empty when last < first). */
static inline void visible_range(const xlkv_train_attention_shape *a, int t, int *first, int *last) {
    xlkv_cpu_visible_range(t, a->window, a->mask_diagonal, first, last);
}

void xlkv_train_attention_forward(float *out, float *lse, const float *q, const float *k, const float *v,
                                  const xlkv_train_attention_shape *a) {
    const int T = a->seq, hd = a->head_dim, group = a->n_heads / a->n_kv_heads;
    const size_t q_stride = (size_t)a->n_heads * (size_t)hd, kv_stride = (size_t)a->n_kv_heads * (size_t)hd;
    const long work = (long)a->batch * a->n_heads * T * T * hd;
#pragma omp parallel if (work >= PARALLEL_MIN_WORK)
    {
        float *scores = malloc((size_t)T * sizeof *scores);
#pragma omp for collapse(3) schedule(static)
        for (int b = 0; b < a->batch; b++)
            for (int h = 0; h < a->n_heads; h++)
                for (int t = 0; t < T; t++) {
                    const size_t row = (size_t)b * (size_t)T + (size_t)t;
                    float *o = out + row * q_stride + (size_t)h * (size_t)hd;
                    const float *qh = q + row * q_stride + (size_t)h * (size_t)hd;
                    const size_t kv_off = (size_t)(h / group) * (size_t)hd;
                    float *row_lse = lse + row * (size_t)a->n_heads + (size_t)h;
                    int first, last;
                    visible_range(a, t, &first, &last);
                    if (!scores) { /* allocation failed: poison, never silent */
                        for (int i = 0; i < hd; i++) o[i] = NAN;
                        *row_lse = NAN;
                        continue;
                    }
                    const float *k0 = k + (size_t)b * (size_t)T * kv_stride + kv_off;
                    const float *v0 = v + (size_t)b * (size_t)T * kv_stride + kv_off;
                    *row_lse = xlkv_cpu_attend_row(o, qh, k0, v0, kv_stride, first, last, hd, scores);
                }
        free(scores);
    }
}

void xlkv_train_attention_backward(float *dq, float *dk, float *dv, const float *dout, const float *out,
                                   const float *lse, const float *q, const float *k, const float *v,
                                   const xlkv_train_attention_shape *a) {
    const int T = a->seq, hd = a->head_dim, group = a->n_heads / a->n_kv_heads;
    const size_t q_stride = (size_t)a->n_heads * (size_t)hd, kv_stride = (size_t)a->n_kv_heads * (size_t)hd;
    const float scale = 1.0f / sqrtf((float)hd);
    const long work = (long)a->batch * a->n_heads * T * T * hd;
    /* one task per (sequence, KV head): it alone writes that head's dk / dv and its query heads' dq */
#pragma omp parallel for collapse(2) schedule(static) if (work >= PARALLEL_MIN_WORK)
    for (int b = 0; b < a->batch; b++)
        for (int kvh = 0; kvh < a->n_kv_heads; kvh++)
            for (int h = kvh * group; h < (kvh + 1) * group; h++)
                for (int t = 0; t < T; t++) {
                    const size_t row = (size_t)b * (size_t)T + (size_t)t;
                    const size_t q_off = row * q_stride + (size_t)h * (size_t)hd, kv_off = (size_t)kvh * (size_t)hd;
                    float *dqh = dq + q_off;
                    memset(dqh, 0, (size_t)hd * sizeof *dqh);
                    const float row_lse = lse[row * (size_t)a->n_heads + (size_t)h];
                    int first, last;
                    visible_range(a, t, &first, &last);
                    if (last < first || !isfinite(row_lse)) continue;
                    const float *qh = q + q_off, *doh = dout + q_off;
                    const float delta = dot(doh, out + q_off, hd);
                    for (int p = first; p <= last; p++) {
                        const size_t kv_row = ((size_t)b * (size_t)T + (size_t)p) * kv_stride + kv_off;
                        const float *kp = k + kv_row, *vp = v + kv_row;
                        const float prob = expf(dot(qh, kp, hd) * scale - row_lse);
                        const float ds = prob * (dot(doh, vp, hd) - delta) * scale;
                        for (int i = 0; i < hd; i++) dqh[i] += ds * kp[i];
                        if (dk)
                            for (int i = 0; i < hd; i++) dk[kv_row + (size_t)i] += ds * qh[i];
                        if (dv)
                            for (int i = 0; i < hd; i++) dv[kv_row + (size_t)i] += prob * doh[i];
                    }
                }
}

void xlkv_train_swiglu_forward(float *h, const float *gate, const float *up, size_t n) {
#pragma omp parallel for schedule(static) if (n >= PARALLEL_MIN_WORK)
    for (size_t i = 0; i < n; i++) {
        const float g = gate[i];
        h[i] = g * (1.0f / (1.0f + expf(-g))) * up[i];
    }
}

void xlkv_train_swiglu_backward(float *dgate, float *dup, const float *dh, const float *gate, const float *up,
                                size_t n) {
#pragma omp parallel for schedule(static) if (n >= PARALLEL_MIN_WORK)
    for (size_t i = 0; i < n; i++) {
        const float g = gate[i], sig = 1.0f / (1.0f + expf(-g));
        const float silu = g * sig;
        dgate[i] = dh[i] * up[i] * sig * (1.0f + g * (1.0f - sig));
        dup[i] = dh[i] * silu;
    }
}

void xlkv_train_embedding_forward(float *x, const int *tokens, const float *table, int n, int dim) {
    for (int r = 0; r < n; r++)
        memcpy(x + (size_t)r * (size_t)dim, table + (size_t)tokens[r] * (size_t)dim, (size_t)dim * sizeof(float));
}

void xlkv_train_embedding_backward(float *dtable, const float *dx, const int *tokens, int n, int dim) {
    /* rows in order: a token that occurs several times sums its rows the same way every run */
    for (int r = 0; r < n; r++) {
        float *dst = dtable + (size_t)tokens[r] * (size_t)dim;
        const float *src = dx + (size_t)r * (size_t)dim;
        for (int i = 0; i < dim; i++) dst[i] += src[i];
    }
}

/* Softmax of one row in place; returns the log-probability of `target`. */
static double softmax_row(float *row, int vocab, int target) {
    float max = row[0];
    for (int c = 1; c < vocab; c++)
        if (row[c] > max) max = row[c];
    const float target_logit = row[target];
    double sum = 0.0;
    for (int c = 0; c < vocab; c++) {
        float e = expf(row[c] - max);
        row[c] = e;
        sum += e;
    }
    const float inv = (float)(1.0 / sum);
    for (int c = 0; c < vocab; c++) row[c] *= inv;
    return (double)(target_logit - max) - log(sum);
}

double xlkv_train_cross_entropy_forward(float *probs, const int *targets, int n, int vocab) {
    double *row_loss = malloc((size_t)n * sizeof *row_loss);
    double total = 0.0;
    if (!row_loss) { /* no scratch: the same sums, one row at a time */
        for (int r = 0; r < n; r++) total -= softmax_row(probs + (size_t)r * (size_t)vocab, vocab, targets[r]);
        return total;
    }
#pragma omp parallel for schedule(static) if ((long)n * vocab >= PARALLEL_MIN_WORK)
    for (int r = 0; r < n; r++) row_loss[r] = -softmax_row(probs + (size_t)r * (size_t)vocab, vocab, targets[r]);
    for (int r = 0; r < n; r++) total += row_loss[r];
    free(row_loss);
    return total;
}

void xlkv_train_cross_entropy_backward(float *dlogits, const float *probs, const int *targets, int n, int vocab,
                                       float scale) {
#pragma omp parallel for schedule(static) if ((long)n * vocab >= PARALLEL_MIN_WORK)
    for (int r = 0; r < n; r++) {
        const float *p = probs + (size_t)r * (size_t)vocab;
        float *d = dlogits + (size_t)r * (size_t)vocab;
        for (int c = 0; c < vocab; c++) d[c] = p[c] * scale;
        d[targets[r]] -= scale;
    }
}
