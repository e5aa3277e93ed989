/* tests/test_train_ops: every backward pass of train/train_ops against central finite differences (fp32), with the
 * objective sum_i c_i y_i (fixed random c, summed in double): matmul, rmsnorm, rope, attention (causal, diagonal
 * masked, sliding window, window + diagonal, grouped-query, a batch of two), swiglu, embedding, cross-entropy. */
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "gradcheck.h"
#include "testutil.h"
#include "train/train_ops.h"

enum { TOL_PERMILLE = 1 }; /* 1e-3 of the tensor's largest gradient */
static const double tolerance = TOL_PERMILLE / 1000.0;

static float *fresh(size_t n, unsigned seed, float amplitude) {
    float *x = malloc(n * sizeof *x);
    assert_non_null(x);
    gc_fill(x, n, seed, amplitude);
    return x;
}

static double weighted_sum(const float *y, const float *c, size_t n) {
    double s = 0.0;
    for (size_t i = 0; i < n; i++) s += (double)y[i] * (double)c[i];
    return s;
}

static void report(const char *what, double err) {
    printf("gradcheck %-34s max error %.2e (of the largest gradient)\n", what, err);
    if (!(err <= tolerance)) fail_msg("%s: finite-difference error %g > %g", what, err, tolerance);
}

/* ---- matmul ---- */
typedef struct { float *y, *x, *w, *c; int n, in, out; } matmul_case;
static double matmul_objective(void *p) {
    matmul_case *m = p;
    xlkv_train_matmul_forward(m->y, m->x, m->w, m->n, m->in, m->out);
    return weighted_sum(m->y, m->c, (size_t)m->n * m->out);
}
static void matmul_gradients(void **state) {
    (void)state;
    matmul_case m = {.n = 5, .in = 7, .out = 6};
    m.x = fresh(35, 1, 1.0f), m.w = fresh(42, 2, 0.5f), m.c = fresh(30, 3, 1.0f), m.y = fresh(30, 4, 0);
    float *dx = calloc(35, sizeof(float)), *dw = calloc(42, sizeof(float));
    xlkv_train_matmul_backward(dx, dw, m.c, m.x, m.w, m.n, m.in, m.out);
    report("matmul dx", gc_check(matmul_objective, &m, m.x, 35, dx, 1e-2f, NULL, 0));
    report("matmul dw", gc_check(matmul_objective, &m, m.w, 42, dw, 1e-2f, NULL, 0));
    free(m.x), free(m.w), free(m.c), free(m.y), free(dx), free(dw);
}

/* ---- rmsnorm ---- */
typedef struct { float *y, *x, *g, *c, *inv; int n, dim; } rmsnorm_case;
static double rmsnorm_objective(void *p) {
    rmsnorm_case *m = p;
    xlkv_train_rmsnorm_forward(m->y, m->inv, m->x, m->g, m->n, m->dim, 1e-5f);
    return weighted_sum(m->y, m->c, (size_t)m->n * m->dim);
}
static void rmsnorm_gradients(void **state) {
    (void)state;
    rmsnorm_case m = {.n = 4, .dim = 16};
    m.x = fresh(64, 5, 1.0f), m.g = fresh(16, 6, 1.0f), m.c = fresh(64, 7, 1.0f), m.y = fresh(64, 0, 0);
    m.inv = fresh(4, 0, 0);
    float *dx = calloc(64, sizeof(float)), *dg = calloc(16, sizeof(float));
    rmsnorm_objective(&m);
    xlkv_train_rmsnorm_backward(dx, dg, m.c, m.x, m.inv, m.g, m.n, m.dim);
    report("rmsnorm dx", gc_check(rmsnorm_objective, &m, m.x, 64, dx, 1e-3f, NULL, 0));
    report("rmsnorm dgain", gc_check(rmsnorm_objective, &m, m.g, 16, dg, 1e-3f, NULL, 0));
    free(m.x), free(m.g), free(m.c), free(m.y), free(m.inv), free(dx), free(dg);
}

/* ---- rope ---- */
typedef struct { float *x, *y, *c, *cos, *sin; int n, seq, heads, hd; } rope_case;
static double rope_objective(void *p) {
    rope_case *m = p;
    size_t n = (size_t)m->n * m->heads * m->hd;
    memcpy(m->y, m->x, n * sizeof(float));
    xlkv_train_rope_forward(m->y, m->n, m->seq, m->heads, m->hd, m->cos, m->sin);
    return weighted_sum(m->y, m->c, n);
}
static void make_rope_tables(float *cos_table, float *sin_table, int seq, int hd) {
    for (int pos = 0; pos < seq; pos++)
        for (int i = 0; i < hd / 2; i++) {
            float angle = (float)pos * powf(10000.0f, -(float)(2 * i) / (float)hd);
            cos_table[pos * (hd / 2) + i] = cosf(angle);
            sin_table[pos * (hd / 2) + i] = sinf(angle);
        }
}
static void rope_gradients(void **state) {
    (void)state;
    rope_case m = {.n = 6, .seq = 3, .heads = 2, .hd = 8};
    const size_t n = 6 * 2 * 8;
    m.x = fresh(n, 8, 1.0f), m.c = fresh(n, 9, 1.0f), m.y = fresh(n, 0, 0);
    m.cos = fresh(12, 0, 0), m.sin = fresh(12, 0, 0);
    make_rope_tables(m.cos, m.sin, 3, 8);
    float *dx = malloc(n * sizeof(float));
    memcpy(dx, m.c, n * sizeof(float));
    xlkv_train_rope_backward(dx, m.n, m.seq, m.heads, m.hd, m.cos, m.sin);
    report("rope dx", gc_check(rope_objective, &m, m.x, n, dx, 1e-2f, NULL, 0));
    free(m.x), free(m.y), free(m.c), free(m.cos), free(m.sin), free(dx);
}

/* ---- attention ---- */
typedef struct { float *q, *k, *v, *out, *lse, *c; xlkv_train_attention_shape shape; } attention_case;
static double attention_objective(void *p) {
    attention_case *m = p;
    xlkv_train_attention_forward(m->out, m->lse, m->q, m->k, m->v, &m->shape);
    return weighted_sum(m->out, m->c, (size_t)m->shape.batch * m->shape.seq * m->shape.n_heads * m->shape.head_dim);
}
static void check_attention(const char *name, xlkv_train_attention_shape shape) {
    attention_case m = {.shape = shape};
    const size_t rows = (size_t)shape.batch * shape.seq;
    const size_t nq = rows * shape.n_heads * shape.head_dim, nkv = rows * shape.n_kv_heads * shape.head_dim;
    m.q = fresh(nq, 11, 1.0f), m.k = fresh(nkv, 12, 1.0f), m.v = fresh(nkv, 13, 1.0f), m.c = fresh(nq, 14, 1.0f);
    m.out = fresh(nq, 0, 0), m.lse = fresh(rows * shape.n_heads, 0, 0);
    float *dq = calloc(nq, sizeof(float)), *dk = calloc(nkv, sizeof(float)), *dv = calloc(nkv, sizeof(float));
    attention_objective(&m);
    xlkv_train_attention_backward(dq, dk, dv, m.c, m.out, m.lse, m.q, m.k, m.v, &shape);
    char what[96];
    snprintf(what, sizeof what, "attention %s dq", name);
    report(what, gc_check(attention_objective, &m, m.q, nq, dq, 1e-2f, NULL, 0));
    snprintf(what, sizeof what, "attention %s dk", name);
    report(what, gc_check(attention_objective, &m, m.k, nkv, dk, 1e-2f, NULL, 0));
    snprintf(what, sizeof what, "attention %s dv", name);
    report(what, gc_check(attention_objective, &m, m.v, nkv, dv, 1e-2f, NULL, 0));
    if (shape.mask_diagonal) /* position 0 sees nothing: zero output, zero gradient */
        for (int h = 0; h < shape.n_heads * shape.head_dim; h++) {
            assert_true(m.out[h] == 0.0f);
            assert_true(dq[h] == 0.0f);
        }
    free(m.q), free(m.k), free(m.v), free(m.c), free(m.out), free(m.lse), free(dq), free(dk), free(dv);
}
static void attention_gradients(void **state) {
    (void)state;
    const xlkv_train_attention_shape base = {.batch = 2, .seq = 5, .n_heads = 4, .n_kv_heads = 2, .head_dim = 4};
    xlkv_train_attention_shape s = base;
    check_attention("causal (GQA, batch 2)", s);
    s.mask_diagonal = true;
    check_attention("diagonal masked", s);
    s = base;
    s.window = 2;
    check_attention("sliding window 2", s);
    s.mask_diagonal = true;
    s.window = 3;
    check_attention("window 3 + diagonal", s);
    s = base;
    s.n_kv_heads = 4;
    s.batch = 1;
    check_attention("multi-head", s);
}

/* ---- swiglu ---- */
typedef struct { float *g, *u, *h, *c; size_t n; } swiglu_case;
static double swiglu_objective(void *p) {
    swiglu_case *m = p;
    xlkv_train_swiglu_forward(m->h, m->g, m->u, m->n);
    return weighted_sum(m->h, m->c, m->n);
}
static void swiglu_gradients(void **state) {
    (void)state;
    swiglu_case m = {.n = 40};
    m.g = fresh(40, 15, 3.0f), m.u = fresh(40, 16, 1.0f), m.c = fresh(40, 17, 1.0f), m.h = fresh(40, 0, 0);
    float *dg = calloc(40, sizeof(float)), *du = calloc(40, sizeof(float));
    xlkv_train_swiglu_backward(dg, du, m.c, m.g, m.u, m.n);
    report("swiglu dgate", gc_check(swiglu_objective, &m, m.g, 40, dg, 1e-2f, NULL, 0));
    report("swiglu dup", gc_check(swiglu_objective, &m, m.u, 40, du, 1e-2f, NULL, 0));
    free(m.g), free(m.u), free(m.c), free(m.h), free(dg), free(du);
}

/* ---- embedding ---- */
typedef struct { float *table, *x, *c; const int *tokens; int n, dim; } embedding_case;
static double embedding_objective(void *p) {
    embedding_case *m = p;
    xlkv_train_embedding_forward(m->x, m->tokens, m->table, m->n, m->dim);
    return weighted_sum(m->x, m->c, (size_t)m->n * m->dim);
}
static void embedding_gradients(void **state) {
    (void)state;
    static const int tokens[] = {3, 1, 3, 0, 3}; /* repeats accumulate */
    embedding_case m = {.tokens = tokens, .n = 5, .dim = 6};
    m.table = fresh(5 * 6, 18, 1.0f), m.x = fresh(30, 0, 0), m.c = fresh(30, 19, 1.0f);
    float *dt = calloc(30, sizeof(float));
    xlkv_train_embedding_backward(dt, m.c, tokens, m.n, m.dim);
    report("embedding dtable", gc_check(embedding_objective, &m, m.table, 30, dt, 1e-2f, NULL, 0));
    free(m.table), free(m.x), free(m.c), free(dt);
}

/* ---- cross-entropy (the objective is the mean loss itself) ---- */
typedef struct { float *logits, *probs; const int *targets; int n, vocab; } ce_case;
static double ce_objective(void *p) {
    ce_case *m = p;
    memcpy(m->probs, m->logits, (size_t)m->n * m->vocab * sizeof(float));
    return xlkv_train_cross_entropy_forward(m->probs, m->targets, m->n, m->vocab) / m->n;
}
static void cross_entropy_gradients(void **state) {
    (void)state;
    static const int targets[] = {2, 0, 9, 4};
    ce_case m = {.targets = targets, .n = 4, .vocab = 10};
    m.logits = fresh(40, 20, 3.0f), m.probs = fresh(40, 0, 0);
    const double loss = ce_objective(&m);
    /* by hand for row 0: -log softmax(logits[0])[2] */
    double sum = 0.0;
    for (int c = 0; c < 10; c++) sum += exp(m.logits[c]);
    double row0 = -(m.logits[2] - log(sum));
    assert_true(loss > 0.0 && row0 > 0.0);
    float *d = malloc(40 * sizeof(float));
    xlkv_train_cross_entropy_backward(d, m.probs, targets, m.n, m.vocab, 1.0f / m.n);
    report("cross-entropy dlogits", gc_check(ce_objective, &m, m.logits, 40, d, 1e-2f, NULL, 0));
    free(m.logits), free(m.probs), free(d);
}

int main(void) {
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(matmul_gradients),    cmocka_unit_test(rmsnorm_gradients),
        cmocka_unit_test(rope_gradients),      cmocka_unit_test(attention_gradients),
        cmocka_unit_test(swiglu_gradients),    cmocka_unit_test(embedding_gradients),
        cmocka_unit_test(cross_entropy_gradients),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
