/* tests/test_cpu_ops: the CPU backend's operations against naive double-precision references written here from the
 * definitions (SEMANTICS.md section 2 for attention): GQA, sliding windows, masked diagonal, zero output when nothing
 * is visible, BLAS and matrix-vector paths of matmul. */
#include <math.h>
#include <stdlib.h>
#include <string.h>

#include "backend/backend.h"
#include "testutil.h"

static unsigned long long rng_state = 12345;
static float uniform_pm1(void) {
    rng_state = rng_state * 6364136223846793005ull + 1442695040888963407ull;
    return (float)((rng_state >> 40) & 0xFFFFFF) / 8388608.0f - 1.0f;
}
static float *random_array(size_t n) {
    float *a = malloc(n * sizeof *a);
    for (size_t i = 0; i < n; i++) a[i] = uniform_pm1();
    return a;
}

static void matmul_matches_naive(void **state) {
    (void)state;
    const xlkv_backend_ops *ops = xlkv_backend_cpu();
    const int in = 37, out = 53;
    for (int n = 1; n <= 5; n += 4) {
        float *x = random_array((size_t)n * in), *w = random_array((size_t)out * in);
        float *y = calloc((size_t)n * out, sizeof *y);
        ops->matmul(y, x, w, n, in, out);
        for (int r = 0; r < n; r++)
            for (int o = 0; o < out; o++) {
                double s = 0;
                for (int i = 0; i < in; i++) s += (double)x[r * in + i] * w[o * in + i];
                assert_true(fabs(s - y[r * out + o]) < 1e-5);
            }
        free(x);
        free(w);
        free(y);
    }
}

static void rmsnorm_and_swiglu_match_definitions(void **state) {
    (void)state;
    const xlkv_backend_ops *ops = xlkv_backend_cpu();
    const int n = 3, dim = 10;
    float *x = random_array(n * dim), *g = random_array(dim), y[30];
    ops->rmsnorm(y, x, g, n, dim, 1e-5f);
    for (int r = 0; r < n; r++) {
        double ss = 0;
        for (int i = 0; i < dim; i++) ss += (double)x[r * dim + i] * x[r * dim + i];
        double inv = 1.0 / sqrt(ss / dim + 1e-5);
        for (int i = 0; i < dim; i++) assert_true(fabs(g[i] * x[r * dim + i] * inv - y[r * dim + i]) < 1e-5);
    }
    float gate[4] = {-2.0f, 0.0f, 1.0f, 3.0f}, up[4] = {1.0f, 2.0f, -1.0f, 0.5f};
    ops->swiglu(gate, up, 4);
    const double in[4] = {-2, 0, 1, 3}, upd[4] = {1, 2, -1, 0.5};
    for (int i = 0; i < 4; i++) assert_true(fabs(in[i] / (1 + exp(-in[i])) * upd[i] - gate[i]) < 1e-6);
    free(x);
    free(g);
}

static void rope_rotates_interleaved_pairs(void **state) {
    (void)state;
    const xlkv_backend_ops *ops = xlkv_backend_cpu();
    const int hd = 8, heads = 2, positions = 6, half = hd / 2;
    float cos_t[6 * 4], sin_t[6 * 4];
    for (int p = 0; p < positions; p++)
        for (int i = 0; i < half; i++) {
            double angle = p * pow(10000.0, -2.0 * i / hd);
            cos_t[p * half + i] = (float)cos(angle);
            sin_t[p * half + i] = (float)sin(angle);
        }
    float *x = random_array(2 * heads * hd), orig[32];
    memcpy(orig, x, sizeof orig);
    ops->rope(x, 2, heads, hd, 3, cos_t, sin_t); /* rows at positions 3 and 4 */
    for (int r = 0; r < 2; r++)
        for (int h = 0; h < heads; h++)
            for (int i = 0; i < half; i++) {
                double angle = (3 + r) * pow(10000.0, -2.0 * i / hd);
                const float *o = orig + r * heads * hd + h * hd;
                const float *v = x + r * heads * hd + h * hd;
                assert_true(fabs(o[2 * i] * cos(angle) - o[2 * i + 1] * sin(angle) - v[2 * i]) < 1e-5);
                assert_true(fabs(o[2 * i] * sin(angle) + o[2 * i + 1] * cos(angle) - v[2 * i + 1]) < 1e-5);
            }
    free(x);
}

/* Attention by the rule, in double: query t sees p <= t (p < t if masked), t - p < window. */
static void naive_attention(double *out, const float *q, int n, int pos0, const xlkv_attention_args *a) {
    const int hd = a->head_dim, group = a->n_heads / a->n_kv_heads, kvd = a->n_kv_heads * hd;
    for (int r = 0; r < n; r++) {
        int t = pos0 + r;
        for (int h = 0; h < a->n_heads; h++) {
            double *o = out + ((size_t)r * a->n_heads + h) * hd;
            memset(o, 0, sizeof(double) * hd);
            double scores[64], max = -1e300, sum = 0;
            int visible[64], nv = 0;
            for (int p = 0; p <= t; p++) {
                if (a->mask_diagonal && p == t) continue;
                if (a->window > 0 && t - p >= a->window) continue;
                double s = 0;
                for (int i = 0; i < hd; i++)
                    s += (double)q[((size_t)r * a->n_heads + h) * hd + i] * a->k[(size_t)p * kvd + (h / group) * hd + i];
                s /= sqrt((double)hd);
                scores[nv] = s;
                visible[nv++] = p;
                if (s > max) max = s;
            }
            for (int j = 0; j < nv; j++) sum += exp(scores[j] - max);
            for (int j = 0; j < nv; j++)
                for (int i = 0; i < hd; i++)
                    o[i] += exp(scores[j] - max) / sum * a->v[(size_t)visible[j] * kvd + (h / group) * hd + i];
        }
    }
}

static void attention_follows_the_rule(void **state) {
    (void)state;
    const xlkv_backend_ops *ops = xlkv_backend_cpu();
    const int heads = 4, kv_heads = 2, hd = 8, ctx = 12;
    float *k = random_array((size_t)ctx * kv_heads * hd), *v = random_array((size_t)ctx * kv_heads * hd);
    const int windows[] = {0, 1, 3};
    for (int wi = 0; wi < 3; wi++)
        for (int masked = 0; masked <= 1; masked++)
            for (int pos0 = 0; pos0 <= 4; pos0 += 4) {
                const int n = ctx - pos0;
                xlkv_attention_args a = {.n_heads = heads, .n_kv_heads = kv_heads, .head_dim = hd,
                                         .window = windows[wi], .mask_diagonal = masked, .k = k, .v = v};
                float *q = random_array((size_t)n * heads * hd), *out = malloc((size_t)n * heads * hd * sizeof(float));
                double *ref = malloc((size_t)n * heads * hd * sizeof(double));
                ops->attention(out, q, n, pos0, &a);
                naive_attention(ref, q, n, pos0, &a);
                for (int i = 0; i < n * heads * hd; i++)
                    if (fabs(ref[i] - out[i]) > 1e-5)
                        fail_msg("window %d masked %d pos0 %d: element %d: %g vs %g", windows[wi], masked, pos0, i,
                                 ref[i], (double)out[i]);
                /* nothing visible (t = 0 masked, or window 1 masked): exactly zero */
                if (masked && (pos0 == 0 || windows[wi] == 1))
                    for (int i = 0; i < heads * hd; i++) assert_true(out[i] == 0.0f);
                free(q);
                free(out);
                free(ref);
            }
    free(k);
    free(v);
}

int main(void) {
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(matmul_matches_naive),
        cmocka_unit_test(rmsnorm_and_swiglu_match_definitions),
        cmocka_unit_test(rope_rotates_interleaved_pairs),
        cmocka_unit_test(attention_follows_the_rule),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
