/* tests/cuda/test_cuda_train_gemm_lt: the trainer's products through cuBLASLt (backend/cuda/train_gemm_lt.h,
 * XLKV_TRAIN_GEMM_LT=heuristic | tune | tune=FILE) against the default cublasGemmEx.
 *  1. the module alone: each kind of product the trainer calls (forward with fp32 / bf16 C, input gradient with
 *     fp32 C beta 0 and 1 and bf16 C, weight gradient fp32 C beta 1; odd and aligned sizes, and pointers one element
 *     off their 256-byte boundary, which take the unaligned fallback algorithm), heuristic and tune, vs a CPU product
 *     in double of the same bf16 operands: fp32 C within 1e-5 of the largest |C| (fp32 accumulation of K <= 200
 *     terms: K u32 = 1.2e-5 at worst, in practice far less), bf16 C within 2^-8 of the largest |C| (one rounding,
 *     half an ulp = 2^-9 relative, plus the accumulation); an unplanned shape refused by name.
 *  2. the trainer, one forward + backward of two micro-batches on tiny models (standard, lckv:1 cyclic, head_dim 64
 *     with flash, XLKV_TRAIN_FUSE=0, XLKV_TRAIN_CE=fp32), heuristic and tune vs unset: the operands are the same bf16
 *     values and the accumulation fp32 in all three; only the order of the sums differs (another kernel), which
 *     moves a product by a few fp32 ulps and can flip a bf16-rounded output by one bf16 ulp where it sits at a
 *     rounding boundary. Tolerances: losses within 1e-3 relative (a flip moves an activation by at most u = 2^-8 of
 *     itself, and only the few elements at a boundary flip; the loss, about ln vocab, averages thousands of them),
 *     gradients within 3e-2 of each tensor's largest (as test_cuda_train_fused.c allows for four such roundings on
 *     every element of a gradient's path, 8 u with a margin of 2 for cancellation in the small tensors; here only a
 *     few elements move, so the measured error, printed, should be far below); a wrong transpose, leading dimension,
 *     alpha or beta is off by O(1).
 *  3. six trainer steps and the held-out loss, heuristic and tune vs unset: within 5e-3 relative (as the other
 *     bf16 path tests: differences grow through AdamW).
 *  4. tune=FILE: a run that tunes and writes FILE and a second run that reads it give the same bytes (losses and
 *     parameters after four steps); two heuristic runs too; a FILE naming cublasGemmEx for every product gives the
 *     bytes of unset (the same calls). A corrupt FILE, one from another model (a product this
 *     run lacks), one missing a product, and unknown XLKV_TRAIN_GEMM_LT values are refused with the reason (never
 *     re-tuned); fp32ops with cuBLASLt refused; the f32 trainer ignores it.
 * Every check prints one "check ..." line with the measured error and the tolerance. Needs a GPU (label cuda). */
#define _DEFAULT_SOURCE /* setenv */
#include <cuda_runtime_api.h>
#include <math.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "backend/cuda/train_gemm_lt.h"
#include "core/file.h"
#include "testutil.h"
#include "cuda_testutil.h"
#include "train_testutil.h"
#include "train/gpu_trainer.h"
#include "train/model_setup.h"
#include "train/trainer.h"

static int failures;
static unsigned long long rng_state = 0x2545F4914F6CDD1Dull;

static bool have_gpu(void) {
    int devices = 0;
    return cudaGetDeviceCount(&devices) == cudaSuccess && devices > 0;
}

static void verdict(bool ok) {
    if (!ok) failures++;
}

/* ---- 1. the module alone ----------------------------------------------------------------------------------------- */
/* element (row, col) of a column-major op(X) where X has leading dimension ld */
static double op_at(const uint16_t *x, int ld, bool trans, int row, int col) {
    return ct_bf16_value(trans ? x[(size_t)row * ld + col] : x[(size_t)col * ld + row]);
}

static void product_case(xlkv_train_gemm_lt *lt, const xlkv_train_gemm_shape *s, const char *mode, int offset,
                         float alpha) {
    const size_t na = xlkv_train_gemm_shape_bytes_a(s) / 2 + 1, nb = xlkv_train_gemm_shape_bytes_b(s) / 2 + 1;
    const size_t nc = (size_t)s->ldc * (size_t)s->n + 1;
    uint16_t *a = malloc(na * 2), *b = malloc(nb * 2);
    float *c0 = ct_random_floats(nc, 1.0f, &rng_state);
    for (size_t i = 0; i < na; i++) a[i] = ct_bf16_rne(ct_uniform(&rng_state));
    for (size_t i = 0; i < nb; i++) b[i] = ct_bf16_rne(ct_uniform(&rng_state));
    uint16_t *c0_16 = malloc(nc * 2);
    for (size_t i = 0; i < nc; i++) c0_16[i] = ct_bf16_rne(c0[i]), c0[i] = s->c_bf16 ? ct_bf16_value(c0_16[i]) : c0[i];
    uint16_t *d_a = ct_to_device(a, na * 2), *d_b = ct_to_device(b, nb * 2);
    void *d_c = s->c_bf16 ? ct_to_device(c0_16, nc * 2) : ct_to_device(c0, nc * 4);
    const size_t esize = s->c_bf16 ? 2 : 4;
    const xlkv_status status = xlkv_train_gemm_lt_run(lt, s, alpha, d_a + offset, d_b + offset,
                                                      (char *)d_c + (size_t)offset * esize, "test product");
    char desc[160];
    xlkv_train_gemm_shape_describe(s, desc, sizeof desc);
    if (status != XLKV_OK || cudaDeviceSynchronize() != cudaSuccess) {
        printf("check cuBLASLt %-9s %s, offset %d: FAIL (%s)\n", mode, desc, offset, xlkv_last_error());
        failures++;
    } else {
        void *c = ct_download(d_c, nc * esize);
        double diff = 0.0, scale = 0.0;
        for (int col = 0; col < s->n; col++)
            for (int row = 0; row < s->m; row++) {
                double sum = 0.0;
                for (int k = 0; k < s->k; k++)
                    sum += op_at(a + offset, s->lda, s->trans_a, row, k) *
                           op_at(b + offset, s->ldb, s->trans_b, k, col);
                const size_t e = (size_t)offset + (size_t)col * s->ldc + row;
                const double want = alpha * sum + (s->accumulate ? c0[e] : 0.0);
                const double got = s->c_bf16 ? ct_bf16_value(((uint16_t *)c)[e]) : ((float *)c)[e];
                if (fabs(got - want) > diff || isnan(got)) diff = isnan(got) ? INFINITY : fabs(got - want);
                if (fabs(want) > scale) scale = fabs(want);
            }
        const double err = diff / scale, tol = s->c_bf16 ? 1.0 / 256.0 : 1e-5;
        const bool ok = err <= tol;
        printf("check cuBLASLt %-9s %s, offset %d vs CPU: err %.2e (tol %.0e) %s\n", mode, desc, offset, err, tol,
               ok ? "ok" : "FAIL");
        verdict(ok);
        free(c);
    }
    free(a), free(b), free(c0), free(c0_16);
    cudaFree(d_a), cudaFree(d_b), cudaFree(d_c);
}

static void module_products(void **state) {
    (void)state;
    if (!have_gpu()) skip();
    failures = 0;
    const xlkv_train_gemm_shape shapes[] = {
        xlkv_train_gemm_forward(40, 72, 48, 48, false),
        xlkv_train_gemm_forward(40, 72, 48, 48, true),
        xlkv_train_gemm_forward(37, 61, 29, 61, true),
        xlkv_train_gemm_input_grad(40, 48, 72, 80, false, false),
        xlkv_train_gemm_input_grad(40, 48, 72, 72, false, true),
        xlkv_train_gemm_input_grad(40, 48, 72, 72, true, false),
        xlkv_train_gemm_weight_grad(40, 48, 72, 72),
        xlkv_train_gemm_weight_grad(193, 29, 61, 61),
    };
    const int n = (int)(sizeof shapes / sizeof *shapes);
    void *workspace = NULL;
    const size_t ws_bytes = (size_t)4 << 20;
    CK(cudaMalloc(&workspace, ws_bytes));
    const struct {
        const char *name;
        xlkv_train_gemm_lt_mode mode;
    } modes[] = {{"heuristic", XLKV_TRAIN_GEMM_LT_HEURISTIC}, {"tune", XLKV_TRAIN_GEMM_LT_TUNE}};
    for (int mi = 0; mi < 2; mi++) {
        xlkv_train_gemm_lt *lt = NULL;
        TU_ASSERT_OK(xlkv_train_gemm_lt_create(shapes, n, modes[mi].mode, NULL, workspace, ws_bytes, NULL, NULL,
                                               &lt));
        /* tune: every plan timed (its operands on 256-byte boundaries; an H200 run before that padding had no
         * candidate run for any plan) */
        const int untimed = xlkv_train_gemm_lt_untimed(lt);
        printf("check cuBLASLt %s: %d plans, %d with no candidate timed (tol 0) %s\n", modes[mi].name,
               xlkv_train_gemm_lt_count(lt), untimed, untimed == 0 ? "ok" : "FAIL");
        verdict(untimed == 0);
        for (int i = 0; i < n; i++) {
            product_case(lt, &shapes[i], modes[mi].name, 0, 1.0f);
            product_case(lt, &shapes[i], modes[mi].name, 1, 0.25f); /* 2 / 4 bytes off: the fallback algorithm */
        }
        const xlkv_train_gemm_shape other = xlkv_train_gemm_forward(40, 72, 56, 56, false);
        const xlkv_status st = xlkv_train_gemm_lt_run(lt, &other, 1.0f, workspace, workspace, workspace, "unplanned");
        const bool ok = st != XLKV_OK && strstr(xlkv_last_error(), "not planned");
        printf("check cuBLASLt %s: an unplanned product refused: %s (%s)\n", modes[mi].name, ok ? "ok" : "FAIL",
               xlkv_last_error());
        verdict(ok);
        xlkv_train_gemm_lt_free(lt);
    }
    xlkv_train_gemm_lt_mode mode;
    const char *file = NULL;
    const char *bad[] = {"tune=", "heuristics", "1"};
    for (int i = 0; i < 3; i++) {
        const bool ok = xlkv_train_gemm_lt_parse(bad[i], &mode, &file) != XLKV_OK;
        printf("check XLKV_TRAIN_GEMM_LT=%s refused: %s (%s)\n", bad[i], ok ? "ok" : "FAIL", xlkv_last_error());
        verdict(ok);
    }
    cudaFree(workspace);
    if (failures) fail_msg("%d cuBLASLt product check(s) failed", failures);
}

/* ---- 2. the trainer: one step's losses and gradients ------------------------------------------------------------ */
enum { VOCAB = TT_TINY_VOCAB };

typedef struct model_case {
    const char *map;
    int m, b, head_dim;
    const char *env, *value; /* one more variable set for the case (NULL: none) */
} model_case;

static xlkv_hparams tiny_hparams(const model_case *c) { return tt_tiny_model_hparams(c->head_dim, c->m, c->b); }

static xlkv_param_store *make_store(const model_case *c, unsigned long long seed) {
    const xlkv_hparams hp = tiny_hparams(c);
    return tt_tiny_model_store(&hp, c->map, seed);
}

static void set_lt(const char *value) {
    if (value) setenv("XLKV_TRAIN_GEMM_LT", value, 1);
    else unsetenv("XLKV_TRAIN_GEMM_LT");
}

enum { B = 2, T = 24, N = B * T };
static int tokens[2][N], targets[2][N];

/* one forward + backward of two micro-batches with XLKV_TRAIN_GEMM_LT=value; the gradients into *out */
static void one_step(const model_case *c, const char *value, xlkv_param_store **out, double loss[2]) {
    set_lt(value);
    if (c->env) setenv(c->env, c->value, 1);
    *out = make_store(c, 5);
    xlkv_gpu_trainer *gt = NULL;
    TU_ASSERT_OK(xlkv_gpu_trainer_create(*out, B, T, c->m, c->b, true, &gt));
    TU_ASSERT_OK(xlkv_gpu_trainer_zero_grads(gt));
    for (int a = 0; a < 2; a++) {
        TU_ASSERT_OK(xlkv_gpu_trainer_forward(gt, tokens[a], targets[a], &loss[a]));
        TU_ASSERT_OK(xlkv_gpu_trainer_backward(gt, 0.5f));
    }
    TU_ASSERT_OK(xlkv_gpu_trainer_download(gt, *out, true));
    xlkv_gpu_trainer_free(gt);
    if (c->env) unsetenv(c->env);
    set_lt(NULL);
}

static void trainer_step_matches(void **state) {
    (void)state;
    if (!have_gpu()) skip();
    failures = 0;
    unsetenv("XLKV_TRAIN_GEMM");
    unsetenv("XLKV_TRAIN_ATTENTION");
    unsetenv("XLKV_TRAIN_FUSE");
    unsetenv("XLKV_TRAIN_CE");
    for (int a = 0; a < 2; a++)
        for (int r = 0; r < N; r++) {
            tokens[a][r] = (int)((unsigned)(r * 37 + a * 11 + (r * r) % 13) % VOCAB);
            targets[a][r] = (int)((unsigned)(r * 17 + a * 5 + 3) % VOCAB);
        }
    static const model_case cases[] = {
        {"standard", 0, 2, 16, NULL, NULL},
        {"lckv:1", 1, 2, 16, NULL, NULL},
        {"cla:2", 0, 2, 16, NULL, NULL},
        {"standard", 0, 2, 64, NULL, NULL},
        {"standard", 0, 2, 16, "XLKV_TRAIN_FUSE", "0"},
        {"standard", 0, 2, 16, "XLKV_TRAIN_CE", "fp32"},
    };
    const char *modes[] = {"heuristic", "tune"};
    for (size_t ci = 0; ci < sizeof cases / sizeof *cases; ci++) {
        const model_case *c = &cases[ci];
        xlkv_param_store *base = NULL;
        double base_loss[2];
        one_step(c, NULL, &base, base_loss);
        for (int mi = 0; mi < 2; mi++) {
            xlkv_param_store *got = NULL;
            double loss[2];
            one_step(c, modes[mi], &got, loss);
            const char *worst_name = "";
            const double err = tt_worst_tensor_error(base, got->grads, base->grads, &worst_name);
            const double loss_err = fmax(fabs(loss[0] - base_loss[0]) / fabs(base_loss[0]),
                                         fabs(loss[1] - base_loss[1]) / fabs(base_loss[1]));
            const bool ok = loss_err <= 1e-3 && err <= 3e-2; /* NaN fails both */
            printf("check XLKV_TRAIN_GEMM_LT=%-9s vs cublasGemmEx, one step of %-8s m=%d b=%d head_dim %d%s%s%s%s: "
                   "losses %.9f / %.9f vs %.9f / %.9f, rel err %.2e (tol 1e-3); gradients worst %s err %.2e "
                   "(tol 3e-2) %s\n", modes[mi], c->map, c->m, c->b, c->head_dim, c->env ? " " : "",
                   c->env ? c->env : "", c->env ? "=" : "", c->env ? c->value : "", loss[0], loss[1],
                   base_loss[0], base_loss[1], loss_err, worst_name, err, ok ? "ok" : "FAIL");
            verdict(ok);
            xlkv_param_store_free(got);
        }
        xlkv_param_store_free(base);
    }
    if (failures) fail_msg("%d trainer-step check(s) failed", failures);
}

/* ---- 3 and 4. trainer runs --------------------------------------------------------------------------------------- */
static xlkv_trainer *make_trainer(const char *data, const model_case *c, long steps, const char *value) {
    const xlkv_hparams hp = tiny_hparams(c);
    set_lt(value);
    xlkv_trainer *tr = tt_tiny_trainer(data, &hp, c->map, c->m, c->b, true, true, steps);
    set_lt(NULL);
    return tr;
}

/* the trainer's parameters and moments, downloaded */
static void download(xlkv_trainer *tr) { TU_ASSERT_OK(xlkv_gpu_trainer_download(tr->gpu, tr->store, true)); }

static bool same_bytes(xlkv_trainer *x, xlkv_trainer *y, int steps) {
    download(x);
    download(y);
    return !memcmp(x->store->params, y->store->params, x->store->n_params * sizeof(float)) &&
           !memcmp(x->train_losses, y->train_losses, (size_t)steps * sizeof(float));
}

/* creating a trainer with XLKV_TRAIN_GEMM_LT=value fails, and the message contains `reason` */
static void refused_trainer(const char *what, const char *value, const char *gemm, bool bf16, const char *reason) {
    const model_case c = {"standard", 0, 2, 16, NULL, NULL};
    xlkv_param_store *store = make_store(&c, 5);
    set_lt(value);
    if (gemm) setenv("XLKV_TRAIN_GEMM", gemm, 1);
    xlkv_gpu_trainer *gt = NULL;
    const xlkv_status status = xlkv_gpu_trainer_create(store, B, T, 0, 2, bf16, &gt);
    unsetenv("XLKV_TRAIN_GEMM");
    set_lt(NULL);
    const bool ok = reason ? status != XLKV_OK && !gt && strstr(xlkv_last_error(), reason) : status == XLKV_OK;
    printf("check %s: %s (%s)\n", what, ok ? "ok" : "FAIL", status == XLKV_OK ? "created" : xlkv_last_error());
    verdict(ok);
    xlkv_gpu_trainer_free(gt);
    xlkv_param_store_free(store);
}

static void write_text(const char *path, const char *text) {
    FILE *f = fopen(path, "w");
    assert_non_null(f);
    fputs(text, f);
    fclose(f);
}

/* The tune file that refused_trainer's trainer (its model, B x T) writes, as lines: the refusals below alter THIS
 * file, so that each is refused for its own reason (a file of make_trainer's shapes has other products). */
static int refusal_tune_lines(const char *dir, char lines[][1024], int max) {
    char *file = xlkv_path_join(dir, "refusal.tune"), value[4200];
    snprintf(value, sizeof value, "tune=%s", file);
    const model_case c = {"standard", 0, 2, 16, NULL, NULL};
    xlkv_param_store *store = make_store(&c, 5);
    set_lt(value);
    xlkv_gpu_trainer *gt = NULL;
    TU_ASSERT_OK(xlkv_gpu_trainer_create(store, B, T, 0, 2, true, &gt));
    set_lt(NULL);
    xlkv_gpu_trainer_free(gt);
    xlkv_param_store_free(store);
    FILE *f = fopen(file, "r");
    int n = 0;
    while (f && n < max && fgets(lines[n], 1024, f)) n++;
    if (f) fclose(f);
    remove(file);
    free(file);
    return n;
}

static void trainer_runs(void **state) {
    (void)state;
    if (!have_gpu()) skip();
    failures = 0;
    char *data = tt_token_data_dir(6000, 5000, VOCAB);
    enum { STEPS = 6, SAME_STEPS = 4 };
    static const model_case step_cases[] = {{"standard", 0, 2, 16, NULL, NULL}, {"lckv:1", 1, 2, 16, NULL, NULL},
                                            {"standard", 0, 2, 64, NULL, NULL}};
    const char *modes[] = {"heuristic", "tune"};
    for (size_t ci = 0; ci < sizeof step_cases / sizeof *step_cases; ci++) {
        const model_case *c = &step_cases[ci];
        xlkv_trainer *base = make_trainer(data, c, STEPS, NULL);
        for (int s = 0; s < STEPS; s++) TU_ASSERT_OK(xlkv_trainer_step(base, NULL));
        double eval_base;
        TU_ASSERT_OK(xlkv_trainer_eval(base, &eval_base));
        for (int mi = 0; mi < 2; mi++) {
            xlkv_trainer *tr = make_trainer(data, c, STEPS, modes[mi]);
            for (int s = 0; s < STEPS; s++) TU_ASSERT_OK(xlkv_trainer_step(tr, NULL));
            double eval;
            TU_ASSERT_OK(xlkv_trainer_eval(tr, &eval));
            double worst = fabs(eval - eval_base) / fabs(eval_base);
            if (isnan(worst)) worst = INFINITY;
            printf("losses %s head_dim %d, %s:", c->map, c->head_dim, modes[mi]);
            for (int s = 0; s < STEPS; s++) {
                printf(" %.6f", tr->train_losses[s]);
                const double d = fabs((double)tr->train_losses[s] - base->train_losses[s]) /
                                 fabs((double)base->train_losses[s]);
                if (d > worst || isnan(d)) worst = isnan(d) ? INFINITY : d;
            }
            printf(" | cublasGemmEx");
            for (int s = 0; s < STEPS; s++) printf(" %.6f", base->train_losses[s]);
            printf(" | eval %.6f %.6f\n", eval, eval_base);
            const bool ok = worst <= 5e-3;
            printf("check XLKV_TRAIN_GEMM_LT=%-9s vs cublasGemmEx, %d trainer steps + held-out loss of %-8s head_dim "
                   "%d: max rel err %.2e (tol 5e-3) %s\n", modes[mi], STEPS, c->map, c->head_dim, worst,
                   ok ? "ok" : "FAIL");
            verdict(ok);
            xlkv_trainer_free(tr);
        }
        xlkv_trainer_free(base);
    }

    /* 4. the same bytes: heuristic twice; tune=FILE writing, then reading */
    const model_case *c = &step_cases[0];
    xlkv_trainer *x = make_trainer(data, c, SAME_STEPS, "heuristic");
    xlkv_trainer *y = make_trainer(data, c, SAME_STEPS, "heuristic");
    for (int s = 0; s < SAME_STEPS; s++) {
        TU_ASSERT_OK(xlkv_trainer_step(x, NULL));
        TU_ASSERT_OK(xlkv_trainer_step(y, NULL));
    }
    bool ok = same_bytes(x, y, SAME_STEPS);
    printf("check XLKV_TRAIN_GEMM_LT=heuristic twice, %d steps: losses and parameters the same bytes: %s\n",
           SAME_STEPS, ok ? "ok" : "FAIL");
    verdict(ok);
    xlkv_trainer_free(x);
    xlkv_trainer_free(y);

    char *dir = tu_temp_dir(), *file = xlkv_path_join(dir, "gemm.tune"), value[4200];
    snprintf(value, sizeof value, "tune=%s", file);
    x = make_trainer(data, c, SAME_STEPS, value); /* tunes, writes the file */
    FILE *written = fopen(file, "r");
    ok = written != NULL;
    printf("check XLKV_TRAIN_GEMM_LT=tune=FILE writes FILE: %s\n", ok ? "ok" : "FAIL");
    verdict(ok);
    char lines[64][1024];
    int n_lines = 0;
    while (written && n_lines < 64 && fgets(lines[n_lines], sizeof lines[0], written)) n_lines++;
    if (written) fclose(written);
    y = make_trainer(data, c, SAME_STEPS, value); /* reads it */
    for (int s = 0; s < SAME_STEPS; s++) {
        TU_ASSERT_OK(xlkv_trainer_step(x, NULL));
        TU_ASSERT_OK(xlkv_trainer_step(y, NULL));
    }
    ok = same_bytes(x, y, SAME_STEPS);
    printf("check XLKV_TRAIN_GEMM_LT=tune=FILE, the tuning run and a run reading FILE (%d product lines), %d steps: "
           "losses and parameters the same bytes: %s\n", n_lines - 3, SAME_STEPS, ok ? "ok" : "FAIL");
    verdict(ok);
    xlkv_trainer_free(x);
    xlkv_trainer_free(y);

    /* a tune file that hands every product to cublasGemmEx: the same bytes as unset (the same calls) */
    char *ex_file = xlkv_path_join(dir, "gemm-ex.tune");
    FILE *ex = fopen(ex_file, "w");
    assert_non_null(ex);
    for (int i = 0; i < n_lines; i++) {
        char *algo = strstr(lines[i], " algo ");
        if (i < 3 || !algo) fputs(lines[i], ex);
        else fprintf(ex, "%.*s algo cublasGemmEx\n", (int)(algo - lines[i]), lines[i]);
    }
    fclose(ex);
    snprintf(value, sizeof value, "tune=%s", ex_file);
    x = make_trainer(data, c, SAME_STEPS, value);
    y = make_trainer(data, c, SAME_STEPS, NULL);
    for (int s = 0; s < SAME_STEPS; s++) {
        TU_ASSERT_OK(xlkv_trainer_step(x, NULL));
        TU_ASSERT_OK(xlkv_trainer_step(y, NULL));
    }
    ok = same_bytes(x, y, SAME_STEPS);
    printf("check XLKV_TRAIN_GEMM_LT=tune=FILE with every product on cublasGemmEx vs unset, %d steps: losses and "
           "parameters the same bytes: %s\n", SAME_STEPS, ok ? "ok" : "FAIL");
    verdict(ok);
    xlkv_trainer_free(x);
    xlkv_trainer_free(y);
    remove(ex_file);
    free(ex_file);

    /* refusals */
    char *bad = xlkv_path_join(dir, "bad.tune");
    snprintf(value, sizeof value, "tune=%s", bad);
    write_text(bad, "not a tune file\n");
    static char rlines[64][1024];
    const int n_rlines = refusal_tune_lines(dir, rlines, 64);
    printf("check the refusal cases' tune file written (%d lines, a header and products): %s\n", n_rlines,
           n_rlines > 4 ? "ok" : "FAIL");
    verdict(n_rlines > 4);
    refused_trainer("a corrupt tune file refused", value, NULL, true, "not a tune file");
    if (n_rlines > 4) { /* the header and all products but the last */
        FILE *f = fopen(bad, "w");
        for (int i = 0; i < n_rlines - 1; i++) fputs(rlines[i], f);
        fclose(f);
        refused_trainer("a tune file missing a product refused", value, NULL, true, "no line for this run's product");
        f = fopen(bad, "w"); /* a product line of another shape */
        for (int i = 0; i < n_rlines; i++) fputs(rlines[i], f);
        fputs("product 1 0 999 48 64 64 64 999 0 0 algo 0 0 0 0 0 0 0 0\n", f);
        fclose(f);
        refused_trainer("a tune file of another model refused", value, NULL, true, "does not have");
        f = fopen(bad, "w"); /* a header of another device */
        for (int i = 0; i < n_rlines; i++) fputs(i == 2 ? "device some other GPU\n" : rlines[i], f);
        fclose(f);
        refused_trainer("a tune file of another GPU refused", value, NULL, true, "another GPU");
        f = fopen(bad, "w"); /* a malformed product line */
        for (int i = 0; i < n_rlines; i++) fputs(i == 3 ? "product 1 0 algo\n" : rlines[i], f);
        fclose(f);
        refused_trainer("a tune file with a malformed line refused", value, NULL, true, "malformed");
    }
    refused_trainer("XLKV_TRAIN_GEMM_LT=fast refused", "fast", NULL, true, "expected heuristic, tune or tune=FILE");
    refused_trainer("XLKV_TRAIN_GEMM_LT=heuristic with XLKV_TRAIN_GEMM=fp32ops refused", "heuristic", "fp32ops", true,
                    "needs bf16 operands");
    refused_trainer("XLKV_TRAIN_GEMM_LT=heuristic ignored by the f32 trainer", "heuristic", NULL, false, NULL);
    remove(file);
    remove(bad);
    free(bad), free(file), free(dir), free(data);
    if (failures) fail_msg("%d trainer-run check(s) failed", failures);
}

int main(void) {
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(module_products),
        cmocka_unit_test(trainer_step_matches),
        cmocka_unit_test(trainer_runs),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
