/* backend/cpu/cpu_ops: the fp32 CPU reference backend.
 * Matrix products of many rows go through BLAS (sgemm); a single row (decode) uses an OpenMP matrix-vector product,
 * which beats a BLAS call for the small matrices of small models. Attention is the exact rule of SEMANTICS.md
 * section 2, parallel over (position, head). */
#include <cblas.h>
#include <math.h>
#include <omp.h>
#include <stdlib.h>
#include <string.h>

#include "backend/backend.h"
#include "backend/cpu/cpu_attention.h"
#include "model/rmsnorm_rows.h"

/* Below this many multiply-adds a parallel region costs more than it saves. */
enum { PARALLEL_MIN_WORK = 1 << 15 };

static inline float dot(const float *a, const float *b, int n) {
    /* eight independent partial sums: vectorizable without -ffast-math */
    float s[8] = {0};
    int i = 0;
    for (; i + 8 <= n; i += 8)
        for (int l = 0; l < 8; l++) s[l] += a[i + l] * b[i + l];
    float total = ((s[0] + s[1]) + (s[2] + s[3])) + ((s[4] + s[5]) + (s[6] + s[7]));
    for (; i < n; i++) total += a[i] * b[i];
    return total;
}

static void cpu_matmul(float *y, const float *x, const float *w, int n, int in, int out) {
    if (n == 1) {
        long work = (long)in * out;
#pragma omp parallel for schedule(static) if (work >= PARALLEL_MIN_WORK)
        for (int r = 0; r < out; r++) y[r] = dot(w + (size_t)r * (size_t)in, x, in);
        return;
    }
    cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasTrans, n, out, in, 1.0f, x, in, w, in, 0.0f, y, out);
}

static void cpu_rmsnorm(float *y, const float *x, const float *gain, int n, int dim, float eps) {
    xlkv_rmsnorm_rows(y, NULL, x, gain, n, dim, eps);
}

static void cpu_rope(float *x, int n, int n_heads, int head_dim, int pos0, const float *cos_table,
                     const float *sin_table) {
    const int half = head_dim / 2;
#pragma omp parallel for schedule(static) if ((long)n * n_heads * head_dim >= PARALLEL_MIN_WORK)
    for (int r = 0; r < n; r++) {
        const float *c = cos_table + (size_t)(pos0 + r) * (size_t)half;
        const float *s = sin_table + (size_t)(pos0 + r) * (size_t)half;
        float *row = x + (size_t)r * (size_t)n_heads * (size_t)head_dim;
        for (int h = 0; h < n_heads; h++) {
            float *v = row + (size_t)h * (size_t)head_dim;
            for (int i = 0; i < half; i++) {
                float a = v[2 * i], b = v[2 * i + 1];
                v[2 * i] = a * c[i] - b * s[i];
                v[2 * i + 1] = a * s[i] + b * c[i];
            }
        }
    }
}

float xlkv_cpu_attend_row(float *out, const float *q, const float *k0, const float *v0, size_t stride, int first,
                          int last, int head_dim, float *scores) {
    memset(out, 0, (size_t)head_dim * sizeof *out);
    if (last < first) return -INFINITY; /* nothing visible: zero output */
    const float scale = 1.0f / sqrtf((float)head_dim);
    float max = -INFINITY;
    for (int p = first; p <= last; p++) {
        float s = dot(q, k0 + (size_t)p * stride, head_dim) * scale;
        scores[p - first] = s;
        if (s > max) max = s;
    }
    float sum = 0.0f;
    for (int p = first; p <= last; p++) {
        float e = expf(scores[p - first] - max);
        scores[p - first] = e;
        sum += e;
    }
    const float inv = 1.0f / sum;
    for (int p = first; p <= last; p++) {
        const float wgt = scores[p - first] * inv;
        const float *v = v0 + (size_t)p * stride;
        for (int i = 0; i < head_dim; i++) out[i] += wgt * v[i];
    }
    return max + logf(sum);
}

/* One query row of one head at position t, reading KV head kv_head. */
static void attend_one(float *out, const float *q, int t, const xlkv_attention_args *a, int kv_head, float *scores) {
    const size_t kv_stride = (size_t)a->n_kv_heads * (size_t)a->head_dim;
    const size_t head_offset = (size_t)kv_head * (size_t)a->head_dim;
    int first, last;
    xlkv_cpu_visible_range(t, a->window, a->mask_diagonal, &first, &last);
    xlkv_cpu_attend_row(out, q, a->k + head_offset, a->v + head_offset, kv_stride, first, last, a->head_dim, scores);
}

static void cpu_attention(float *out, const float *q, int n, int pos0, const xlkv_attention_args *a) {
    const int group = a->n_heads / a->n_kv_heads;
    const size_t q_stride = (size_t)a->n_heads * (size_t)a->head_dim;
    const long work = (long)n * a->n_heads * (pos0 + n) * a->head_dim;
#pragma omp parallel if (work >= PARALLEL_MIN_WORK)
    {
        float *scores = malloc((size_t)(pos0 + n) * sizeof *scores);
#pragma omp for collapse(2) schedule(dynamic, 4)
        for (int r = 0; r < n; r++)
            for (int h = 0; h < a->n_heads; h++) {
                float *o = out + (size_t)r * q_stride + (size_t)h * (size_t)a->head_dim;
                const float *qh = q + (size_t)r * q_stride + (size_t)h * (size_t)a->head_dim;
                if (scores) attend_one(o, qh, pos0 + r, a, h / group, scores);
                else for (int i = 0; i < a->head_dim; i++) o[i] = NAN; /* allocation failed: poison, never silent */
            }
        free(scores);
    }
}

static void cpu_swiglu(float *gate, const float *up, size_t n) {
#pragma omp parallel for schedule(static) if (n >= PARALLEL_MIN_WORK)
    for (size_t i = 0; i < n; i++) {
        float g = gate[i];
        gate[i] = g * (1.0f / (1.0f + expf(-g))) * up[i];
    }
}

static void cpu_add(float *x, const float *y, size_t n) {
    for (size_t i = 0; i < n; i++) x[i] += y[i];
}

const xlkv_backend_ops *xlkv_backend_cpu(void) {
    static const xlkv_backend_ops ops = {
        .name = "cpu",
        .matmul = cpu_matmul,
        .rmsnorm = cpu_rmsnorm,
        .rope = cpu_rope,
        .attention = cpu_attention,
        .swiglu = cpu_swiglu,
        .add = cpu_add,
    };
    return &ops;
}
