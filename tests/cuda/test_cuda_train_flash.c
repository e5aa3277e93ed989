/* tests/cuda/test_cuda_train_flash: the trainer's tensor-core flash attention (backend/cuda/train_attention_flash.h).
 *  1. kernels on random inputs against two exact fp32 references: the CPU xlkv_train_attention_forward / _backward
 *     (train/train_ops.c) and the GPU warp kernels (xlkv_cuda_train_attention_forward / _backward): out, lse, dq,
 *     dk and dv ADDED onto non-zero buffers, dq with constant K/V (dk = dv = NULL); shapes: causal GQA 12/6 x64 at
 *     B = 2 with T = 1024, 100 (not a multiple of the 64-row tiles), 17 and 1; MHA x128; mask_diagonal; windows 7
 *     and 64; GQA 4/1 x128 with window + diagonal. Tolerance (bf16 inputs, fp32 accumulation): max |flash - ref| <=
 *     2e-2 x max |ref| per tensor (for dk/dv: x max |ref - initial|, the part the kernel adds); lse absolute
 *     2e-2 (it is a log); -inf lse must be -inf exactly. The kernels' bf16 workspace is poisoned with NaN first.
 *     (The kernels' exp2 is ex2.approx.ftz on one FFMA: the same approximation as exp2f, ~2 ulp, the FFMA rounds
 *     once where the old multiply-then-subtract rounded twice, and ftz only zeroes probabilities below 2^-126 of a
 *     row's largest: all far below the bf16 rounding of the inputs, ~4e-3, that the 2e-2 tolerance covers.)
 *     Also: two backward runs give the same bits (no atomics); unsupported shapes (head_dim 80) and a NULL workspace
 *     are refused.
 *  2. gradients of every parameter of a head_dim 64 model after one forward + backward (B 2, T 100; standard, cla:2
 *     with its shared KV source, lckv:1, 0_1s_1s_3): bf16 flash vs bf16 gemm within 5e-2 and vs f32 within 1e-1 of
 *     each tensor's largest gradient (or twice the bf16 gemm's own error against f32, if larger: both are bf16
 *     rounding); a missing or doubled dK/dV path (several layers read one KV source) would be off by O(1).
 *  3. the trainer: a head_dim 64 model (standard, lckv:1 with its masked diagonal, a sliding-window map), 6 steps
 *     in f32 (exact attention) and in bf16 with flash forced (XLKV_TRAIN_ATTENTION=flash): per-step losses within
 *     3e-2 relative of the f32 run (the bf16 tolerance of test_cuda_train), bf16 flash against bf16 gemm within 1e-2;
 *     XLKV_TRAIN_ATTENTION=flash on an f32 trainer is refused with XLKV_E_INVALID.
 *  4. RoPE inside the staging (the _rope calls): unrotated q / k with the tables vs xlkv_cuda_train_rope on q and k
 *     then the plain calls: out, lse, dq, dk, dv (added onto non-zero) and the constant-K/V dq bit-identical (memcmp;
 *     the first differing element is printed), on GQA, MHA, windows, mask_diagonal, head_dim 64 and 128, a
 *     sequence that is not a multiple of the tiles; the dQ kernel's bf16 inverse-rotated dq (rope.dq16, into a padded
 *     operand) bit-identical to xlkv_cuda_train_rope_to_bf16 of the fp32 dq; a misaligned table and an odd dq16
 *     row stride are refused.
 *  5. the trainer with XLKV_TRAIN_FLASH_ROPE=1 (the default) vs 0: per-step losses and the parameters after 6 steps
 *     bit-identical (standard, cla:2, lckv:1 cyclic with fused layer passes; lckv:1 also with XLKV_TRAIN_FUSE=0);
 *     XLKV_TRAIN_FLASH_ROPE=2 is refused.
 *  6. the folded side passes (_opts): on the eleven shapes of 1, delta computed in the dQ kernel vs the separate
 *     pass xlkv_cuda_train_attention_delta, and dq, dk, dv with it vs separate_delta (delta pass + head_major_rows),
 *     all bit-identical (memcmp): the dQ kernel sums each row in the separate pass's order; overwrite_dkdv onto
 *     NaN-poisoned dk / dv vs clear + add (memcmp: 0 + x), with either delta; adding onto non-zero buffers;
 *     kept bf16 K / V (kv16): a forward rounding into them and one streaming them ready give the plain forward's
 *     out / lse bits, a backward streaming them ready (workspace NaN-poisoned) the former path's dq, dk, dv;
 *     separate_delta without a delta buffer and a kv16 without buffers are refused.
 *  7. the trainer with XLKV_TRAIN_FLASH_PROLOGUE=1 and XLKV_TRAIN_FLASH_KV16=1 (the defaults: no dK/dV clears, delta
 *     in the dQ kernel, bf16 K / V kept per KV record) vs both 0:
 *     per-step losses and the parameters after 6 steps bit-identical (standard; cla:2, where one reader overwrites
 *     and the other adds; lckv:1 cyclic m=1 b=2 and m=2 b=3; lckv:1 unfused; cla:2 with XLKV_TRAIN_FLASH_ROPE=0);
 *     XLKV_TRAIN_FLASH_PROLOGUE=2 and XLKV_TRAIN_FLASH_KV16=yes are refused.
 * Every check prints one "check ..." line with the measured error and the tolerance. Needs a GPU (label cuda). */
#define _DEFAULT_SOURCE /* setenv */
#include <cuda_runtime_api.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "backend/cuda/train_attention_flash.h"
#include "backend/cuda/train_fused.h"
#include "backend/cuda/train_kernels.h"
#include "core/file.h"
#include "testutil.h"
#include "cuda_testutil.h"
#include "train_testutil.h"
#include "train/gpu_trainer.h"
#include "train/model_setup.h"
#include "train/train_ops.h"
#include "train/trainer.h"

enum { FLASH_TOLERANCE_PERMILLE = 20 }; /* 2e-2 */
static const double flash_tolerance = FLASH_TOLERANCE_PERMILLE / 1000.0;

static int failures;
static unsigned long long rng_state = 0x2545F4914F6CDD1Dull;
static float *random_array(size_t n, float scale) { return ct_random_floats(n, scale, &rng_state); }

/* max |got - ref| / max |ref - base| (base NULL: zeros; absolute when that scale is 0, or when `absolute`).
 * Infinities must match exactly; any other non-finite value fails. Prints a check line; counts failures. */
static double check_against(const char *what, const float *got, const float *ref, const float *base, size_t n,
                            double tol, bool absolute) {
    double diff = 0.0, scale = 0.0;
    bool finite = true;
    for (size_t i = 0; i < n; i++) {
        if (isinf(ref[i]) || isinf(got[i])) {
            if (got[i] != ref[i]) finite = false;
            continue;
        }
        if (!isfinite(got[i])) finite = false;
        const double d = fabs((double)got[i] - (double)ref[i]);
        if (d > diff) diff = d;
        const double r = fabs((double)ref[i] - (base ? (double)base[i] : 0.0));
        if (r > scale) scale = r;
    }
    const double err = absolute || scale == 0.0 ? diff : diff / scale;
    const bool ok = finite && err <= tol;
    printf("check %-78s max err %.2e (tol %.0e)%s %s\n", what, err, tol, absolute ? " abs" : "",
           ok ? "ok" : (finite ? "FAIL" : "FAIL (non-finite or mismatched inf)"));
    if (!ok) failures++;
    return err;
}

/* ---- 1. kernels ----------------------------------------------------------------------------------------------- */
typedef struct attention_case {
    const char *name;
    int batch, seq, n_heads, n_kv_heads, head_dim, window;
    bool mask_diagonal;
} attention_case;

/* The three results of one implementation. */
typedef struct attention_result {
    float *out, *lse, *dq, *dk, *dv, *dq_const;
} attention_result;

static void free_result(attention_result *r) {
    free(r->out), free(r->lse), free(r->dq), free(r->dk), free(r->dv), free(r->dq_const);
}

typedef struct device_inputs {
    float *q, *k, *v, *dout, *dk0, *dv0;
} device_inputs;

typedef enum gpu_impl { IMPL_WARP, IMPL_FLASH } gpu_impl;

/* Runs one GPU implementation (the warp kernels or flash): forward, backward with dk/dv starting from dk0/dv0, and
 * backward with constant K/V. The backward reads the implementation's own forward out and lse. The flash workspace
 * is poisoned with NaN first (its contents must not matter). */
static attention_result run_gpu_rope(gpu_impl impl, const device_inputs *in,
                                     const xlkv_cuda_train_attention_shape *s, size_t qn, size_t kvn, size_t ln,
                                     const xlkv_cuda_train_flash_rope *rope) {
    const bool flash = impl == IMPL_FLASH;
    void *ws = NULL;
    if (flash) {
        const size_t bytes = xlkv_cuda_train_attention_flash_workspace_bytes(s);
        if (bytes == 0) fail_msg("flash: no workspace size for a supported shape");
        CK(cudaMalloc(&ws, bytes));
        CK(cudaMemset(ws, 0xFF, bytes));
    }
    float *out = ct_dev_floats(NULL, qn), *lse = ct_dev_floats(NULL, ln), *dq = ct_dev_floats(NULL, qn);
    float *delta = ct_dev_floats(NULL, ln), *dk = ct_dev_floats(NULL, kvn), *dv = ct_dev_floats(NULL, kvn);
    CK(cudaMemcpy(dk, in->dk0, kvn * sizeof(float), cudaMemcpyDeviceToDevice));
    CK(cudaMemcpy(dv, in->dv0, kvn * sizeof(float), cudaMemcpyDeviceToDevice));
    CK(cudaMemset(out, 0xFF, qn * sizeof(float))); /* NaN poison: every element must be written */
    CK(cudaMemset(lse, 0xFF, ln * sizeof(float)));
    CK(cudaMemset(dq, 0xFF, qn * sizeof(float)));
    if (flash) {
        CK_LAUNCH(xlkv_cuda_train_attention_flash_forward_rope(out, lse, in->q, in->k, in->v, rope, s, ws, NULL));
        CK_LAUNCH(xlkv_cuda_train_attention_flash_backward_rope(dq, dk, dv, delta, in->dout, out, lse, in->q, in->k,
                                                                in->v, rope, s, ws, NULL));
    } else {
        CK_LAUNCH(xlkv_cuda_train_attention_forward(out, lse, in->q, in->k, in->v, s, NULL));
        CK_LAUNCH(xlkv_cuda_train_attention_backward(dq, dk, dv, delta, in->dout, out, lse, in->q, in->k, in->v, s,
                                                     NULL));
    }
    attention_result r = {ct_download_floats(out, qn), ct_download_floats(lse, ln), ct_download_floats(dq, qn), ct_download_floats(dk, kvn),
                          ct_download_floats(dv, kvn), NULL};
    CK(cudaMemset(dq, 0xFF, qn * sizeof(float)));
    if (flash)
        CK_LAUNCH(xlkv_cuda_train_attention_flash_backward_rope(dq, NULL, NULL, delta, in->dout, out, lse, in->q,
                                                                in->k, in->v, rope, s, ws, NULL));
    else
        CK_LAUNCH(xlkv_cuda_train_attention_backward(dq, NULL, NULL, delta, in->dout, out, lse, in->q, in->k, in->v, s,
                                                     NULL));
    r.dq_const = ct_download_floats(dq, qn);
    cudaFree(out), cudaFree(lse), cudaFree(dq), cudaFree(delta), cudaFree(dk), cudaFree(dv), cudaFree(ws);
    return r;
}

static attention_result run_gpu(gpu_impl impl, const device_inputs *in, const xlkv_cuda_train_attention_shape *s,
                                size_t qn, size_t kvn, size_t ln) {
    return run_gpu_rope(impl, in, s, qn, kvn, ln, NULL);
}

static void compare(const char *case_name, const char *ref_name, const attention_result *flash,
                    const attention_result *ref, const float *dk0, const float *dv0, size_t qn, size_t kvn, size_t ln) {
    char what[200];
    snprintf(what, sizeof what, "flash %s vs %s: out", case_name, ref_name);
    check_against(what, flash->out, ref->out, NULL, qn, flash_tolerance, false);
    snprintf(what, sizeof what, "flash %s vs %s: lse", case_name, ref_name);
    check_against(what, flash->lse, ref->lse, NULL, ln, flash_tolerance, true);
    snprintf(what, sizeof what, "flash %s vs %s: dq", case_name, ref_name);
    check_against(what, flash->dq, ref->dq, NULL, qn, flash_tolerance, false);
    snprintf(what, sizeof what, "flash %s vs %s: dk (+= onto non-zero)", case_name, ref_name);
    check_against(what, flash->dk, ref->dk, dk0, kvn, flash_tolerance, false);
    snprintf(what, sizeof what, "flash %s vs %s: dv (+= onto non-zero)", case_name, ref_name);
    check_against(what, flash->dv, ref->dv, dv0, kvn, flash_tolerance, false);
    snprintf(what, sizeof what, "flash %s vs %s: dq with constant K/V", case_name, ref_name);
    check_against(what, flash->dq_const, ref->dq, NULL, qn, flash_tolerance, false);
}

static bool same_bits(const attention_result *a, const attention_result *b, size_t qn, size_t kvn, size_t ln) {
    return !memcmp(a->out, b->out, qn * sizeof(float)) && !memcmp(a->lse, b->lse, ln * sizeof(float)) &&
           !memcmp(a->dq, b->dq, qn * sizeof(float)) && !memcmp(a->dk, b->dk, kvn * sizeof(float)) &&
           !memcmp(a->dv, b->dv, kvn * sizeof(float)) && !memcmp(a->dq_const, b->dq_const, qn * sizeof(float));
}

static void flash_case(const attention_case *c) {
    const xlkv_train_attention_shape cpu = {c->batch, c->seq, c->n_heads, c->n_kv_heads, c->head_dim, c->window,
                                            c->mask_diagonal};
    const xlkv_cuda_train_attention_shape gpu = {c->batch, c->seq, c->n_heads, c->n_kv_heads, c->head_dim, c->window,
                                                 c->mask_diagonal};
    if (!xlkv_cuda_train_attention_flash_supported(&gpu)) fail_msg("flash does not take case %s", c->name);
    const size_t N = (size_t)c->batch * c->seq, qn = N * c->n_heads * c->head_dim;
    const size_t kvn = N * c->n_kv_heads * c->head_dim, ln = N * c->n_heads;
    float *q = random_array(qn, 1.5f), *k = random_array(kvn, 1.5f), *v = random_array(kvn, 1.0f);
    float *dout = random_array(qn, 1.0f), *dk0 = random_array(kvn, 0.1f), *dv0 = random_array(kvn, 0.1f);

    /* CPU reference */
    attention_result cpu_ref = {malloc(qn * sizeof(float)), malloc(ln * sizeof(float)), malloc(qn * sizeof(float)),
                                malloc(kvn * sizeof(float)), malloc(kvn * sizeof(float)), NULL};
    memcpy(cpu_ref.dk, dk0, kvn * sizeof(float));
    memcpy(cpu_ref.dv, dv0, kvn * sizeof(float));
    xlkv_train_attention_forward(cpu_ref.out, cpu_ref.lse, q, k, v, &cpu);
    xlkv_train_attention_backward(cpu_ref.dq, cpu_ref.dk, cpu_ref.dv, dout, cpu_ref.out, cpu_ref.lse, q, k, v, &cpu);

    device_inputs in = {ct_dev_floats(q, qn), ct_dev_floats(k, kvn), ct_dev_floats(v, kvn), ct_dev_floats(dout, qn),
                        ct_dev_floats(dk0, kvn), ct_dev_floats(dv0, kvn)};
    attention_result flash = run_gpu(IMPL_FLASH, &in, &gpu, qn, kvn, ln);
    attention_result warp = run_gpu(IMPL_WARP, &in, &gpu, qn, kvn, ln);
    compare(c->name, "cpu", &flash, &cpu_ref, dk0, dv0, qn, kvn, ln);
    compare(c->name, "warp", &flash, &warp, dk0, dv0, qn, kvn, ln);

    /* determinism: a second run gives the same bits */
    attention_result again = run_gpu(IMPL_FLASH, &in, &gpu, qn, kvn, ln);
    const bool same = same_bits(&again, &flash, qn, kvn, ln);
    printf("check flash %-72s %s\n", c->name, same ? "two runs bit-identical ok" : "two runs DIFFER FAIL");
    if (!same) failures++;

    free_result(&cpu_ref), free_result(&flash), free_result(&warp), free_result(&again);
    free(q), free(k), free(v), free(dout), free(dk0), free(dv0);
    cudaFree(in.q), cudaFree(in.k), cudaFree(in.v), cudaFree(in.dout), cudaFree(in.dk0), cudaFree(in.dv0);
}

/* the shapes and masks both kernel tests run: causal GQA / MHA, masked diagonals, windows, nothing visible */
static const attention_case flash_cases[] = {
    {"causal GQA 12/6 x64, 2 x 1024", 2, 1024, 12, 6, 64, 0, false},
    {"causal GQA 12/6 x64, 2 x 100", 2, 100, 12, 6, 64, 0, false},
    {"causal GQA 12/6 x64, 2 x 17", 2, 17, 12, 6, 64, 0, false},
    {"causal GQA 12/6 x64, 2 x 1", 2, 1, 12, 6, 64, 0, false},
    {"causal MHA 4/4 x128, 2 x 150", 2, 150, 4, 4, 128, 0, false},
    {"mask_diagonal GQA 12/6 x64, 2 x 100", 2, 100, 12, 6, 64, 0, true},
    {"mask_diagonal GQA 12/6 x64, 2 x 1 (nothing visible)", 2, 1, 12, 6, 64, 0, true},
    {"window 7 GQA 12/6 x64, 2 x 100", 2, 100, 12, 6, 64, 7, false},
    {"window 64 GQA 12/6 x64, 2 x 300", 2, 300, 12, 6, 64, 64, false},
    {"window 1 + diagonal (nothing visible) x64, 1 x 70", 1, 70, 2, 1, 64, 1, true},
    {"window 9 + diagonal GQA 4/1 x128, 2 x 200", 2, 200, 4, 1, 128, 9, true},
};

static void flash_kernels_match_exact(void **state) {
    (void)state;
    int devices = 0;
    if (cudaGetDeviceCount(&devices) != cudaSuccess || devices == 0) skip();
    failures = 0;
    for (size_t i = 0; i < sizeof flash_cases / sizeof *flash_cases; i++) flash_case(&flash_cases[i]);

    /* refused shapes */
    const xlkv_cuda_train_attention_shape hd80 = {1, 16, 2, 1, 80, 0, false};
    float *buf = ct_dev_floats(NULL, 16 * 2 * 128);
    const int rc = xlkv_cuda_train_attention_flash_forward(buf, buf, buf, buf, buf, &hd80, NULL, NULL);
    const bool refused = !xlkv_cuda_train_attention_flash_supported(&hd80) && rc == (int)cudaErrorInvalidValue &&
                         xlkv_cuda_train_attention_flash_workspace_bytes(&hd80) == 0;
    printf("check flash refuses head_dim 80 (supported() false, launch cudaErrorInvalidValue, workspace 0): %s\n",
           refused ? "ok" : "FAIL");
    if (!refused) failures++;
    const xlkv_cuda_train_attention_shape ok_shape = {1, 16, 2, 1, 64, 0, false};
    const int rc_null = xlkv_cuda_train_attention_flash_forward(buf, buf, buf, buf, buf, &ok_shape, NULL, NULL);
    printf("check flash refuses a NULL workspace (cudaErrorInvalidValue): %s\n",
           rc_null == (int)cudaErrorInvalidValue ? "ok" : "FAIL");
    if (rc_null != (int)cudaErrorInvalidValue) failures++;
    cudaFree(buf);
    if (failures) fail_msg("%d flash kernel check(s) failed", failures);
}

/* ---- 2. gradients of a whole model ------------------------------------------------------------------------------ */
enum { VOCAB = 61, STEPS = 6 };

typedef struct trainer_case {
    const char *map;
    int m, b;
} trainer_case;

/* A tiny model with head_dim 64: 2 query heads, 1 KV head, dim 128, 4 layers, window 9 for sliding layers. */
static xlkv_hparams flash_hparams(const trainer_case *c) {
    xlkv_hparams hp;
    xlkv_hparams_defaults(&hp);
    hp.dim = 128, hp.hidden_dim = 192, hp.n_layers = 4, hp.n_heads = 2, hp.n_kv_heads = 1, hp.head_dim = 64;
    hp.vocab_size = VOCAB, hp.max_seq_len = 128, hp.forward_passes = c->m, hp.backward_passes = c->b;
    hp.sliding_window = 9;
    return hp;
}

/* Gradients of every parameter after one forward + backward (B 2, T 100) with the given dtype and attention. */
static float *model_gradients(const trainer_case *c, bool bf16, const char *attention, size_t *n_params) {
    enum { B = 2, T = 100, N = B * T };
    int tokens[N], targets[N];
    for (int r = 0; r < N; r++) {
        tokens[r] = (int)((unsigned)(r * 37 + (r * r) % 13) % VOCAB);
        targets[r] = (int)((unsigned)(r * 17 + 3) % VOCAB);
    }
    const xlkv_hparams hp = flash_hparams(c);
    xlkv_param_store *store = NULL;
    TU_ASSERT_OK(xlkv_store_from_shape(&hp, c->map, 5, &store));
    setenv("XLKV_TRAIN_ATTENTION", attention, 1);
    xlkv_gpu_trainer *gt = NULL;
    TU_ASSERT_OK(xlkv_gpu_trainer_create(store, B, T, c->m, c->b, bf16, &gt));
    unsetenv("XLKV_TRAIN_ATTENTION");
    double loss = 0.0;
    TU_ASSERT_OK(xlkv_gpu_trainer_zero_grads(gt));
    TU_ASSERT_OK(xlkv_gpu_trainer_forward(gt, tokens, targets, &loss));
    TU_ASSERT_OK(xlkv_gpu_trainer_backward(gt, 1.0f));
    TU_ASSERT_OK(xlkv_gpu_trainer_download(gt, store, true));
    float *grads = malloc(store->n_params * sizeof *grads);
    memcpy(grads, store->grads, store->n_params * sizeof *grads);
    *n_params = store->n_params;
    xlkv_gpu_trainer_free(gt);
    xlkv_param_store_free(store);
    return grads;
}

/* Worst tensor of max |a - b| / max |b| over the case's parameter layout. */
static double worst_tensor_error(const trainer_case *c, const float *a, const float *b, const char **worst_name) {
    const xlkv_hparams hp = flash_hparams(c);
    xlkv_param_store *layout = NULL;
    TU_ASSERT_OK(xlkv_store_from_shape(&hp, c->map, 5, &layout));
    const double worst = tt_worst_tensor_error(layout, a, b, worst_name);
    xlkv_param_store_free(layout);
    return worst;
}

static void flash_gradients_match(void **state) {
    (void)state;
    int devices = 0;
    if (cudaGetDeviceCount(&devices) != cudaSuccess || devices == 0) skip();
    failures = 0;
    static const trainer_case cases[] = {{"standard", 0, 2}, {"cla:2", 0, 2}, {"lckv:1", 1, 2}, {"0_1s_1s_3", 0, 2}};
    for (size_t ci = 0; ci < sizeof cases / sizeof *cases; ci++) {
        const trainer_case *c = &cases[ci];
        size_t n = 0;
        float *flash = model_gradients(c, true, "flash", &n), *gemm = model_gradients(c, true, "gemm", &n);
        float *exact = model_gradients(c, false, "gemm", &n);
        const char *name_gemm, *name_exact;
        const double vs_gemm = worst_tensor_error(c, flash, gemm, &name_gemm);
        const double vs_exact = worst_tensor_error(c, flash, exact, &name_exact);
        const double gemm_vs_exact = worst_tensor_error(c, gemm, exact, &name_exact);
        /* bf16 rounding of the products, relative to each tensor's largest gradient; a missing or doubled dK/dV path
         * (several layers read one KV source) would be off by O(1) */
        const double tol_gemm = fmax(5e-2, 2.0 * gemm_vs_exact), tol_exact = fmax(1e-1, 2.0 * gemm_vs_exact);
        const bool ok = vs_gemm <= tol_gemm && vs_exact <= tol_exact;
        printf("check bf16 gradients, %-10s m=%d b=%d: flash vs bf16 gemm worst tensor %-24s max err %.2e (tol %.0e); "
               "flash vs f32 %.2e (tol %.0e; bf16 gemm vs f32 %.2e) %s\n",
               c->map, c->m, c->b, name_gemm, vs_gemm, tol_gemm, vs_exact, tol_exact, gemm_vs_exact,
               ok ? "ok" : "FAIL");
        if (!ok) failures++;
        free(flash), free(gemm), free(exact);
    }
    if (failures) fail_msg("%d flash gradient check(s) failed", failures);
}

/* ---- 3. the trainer --------------------------------------------------------------------------------------------- */

/* The head_dim 64 model, seq 100 (not a multiple of the tiles). */
static xlkv_status make_trainer(const char *data, const trainer_case *c, bool bf16, xlkv_trainer **out) {
    const xlkv_hparams hp = flash_hparams(c);
    xlkv_param_store *store = NULL;
    TU_ASSERT_OK(xlkv_store_from_shape(&hp, c->map, 11, &store));
    xlkv_train_options o = xlkv_train_default_options();
    o.batch = 4, o.seq = 100, o.steps = STEPS, o.warmup = 2, o.lr = 3e-3f, o.min_lr = 3e-4f, o.eval_batches = 2;
    o.forward_passes = c->m, o.backward_passes = c->b, o.accum = 2;
    o.device_cuda = true, o.cuda_bf16 = bf16;
    return xlkv_trainer_create(store, data, &o, out);
}

static void flash_trainer_tracks_f32(void **state) {
    (void)state;
    int devices = 0;
    if (cudaGetDeviceCount(&devices) != cudaSuccess || devices == 0) skip();
    failures = 0;
    char *data = tt_token_data_dir(12000, 10000, VOCAB);
    static const trainer_case cases[] = {{"standard", 0, 2}, {"lckv:1", 1, 2}, {"0_1s_1s_3", 0, 2}};
    for (size_t ci = 0; ci < sizeof cases / sizeof *cases; ci++) {
        const trainer_case *c = &cases[ci];
        xlkv_trainer *f32 = NULL, *flash = NULL, *gemm = NULL, *refused = NULL;
        unsetenv("XLKV_TRAIN_ATTENTION");
        TU_ASSERT_OK(make_trainer(data, c, false, &f32));
        setenv("XLKV_TRAIN_ATTENTION", "flash", 1);
        TU_ASSERT_OK(make_trainer(data, c, true, &flash));
        const xlkv_status st = make_trainer(data, c, false, &refused);
        const bool was_refused = st == XLKV_E_INVALID && !refused;
        printf("check XLKV_TRAIN_ATTENTION=flash on an f32 trainer (%s) is refused with XLKV_E_INVALID: %s\n", c->map,
               was_refused ? "ok" : "FAIL");
        if (!was_refused) failures++;
        xlkv_trainer_free(refused);
        setenv("XLKV_TRAIN_ATTENTION", "gemm", 1);
        TU_ASSERT_OK(make_trainer(data, c, true, &gemm));
        unsetenv("XLKV_TRAIN_ATTENTION");
        for (int s = 0; s < STEPS; s++) {
            TU_ASSERT_OK(xlkv_trainer_step(f32, NULL));
            TU_ASSERT_OK(xlkv_trainer_step(flash, NULL));
            TU_ASSERT_OK(xlkv_trainer_step(gemm, NULL));
        }
        printf("losses %s: cuda f32", c->map);
        for (int s = 0; s < STEPS; s++) printf(" %.5f", f32->train_losses[s]);
        printf(" | bf16 flash");
        for (int s = 0; s < STEPS; s++) printf(" %.5f", flash->train_losses[s]);
        printf(" | bf16 gemm");
        for (int s = 0; s < STEPS; s++) printf(" %.5f", gemm->train_losses[s]);
        printf("\n");
        char what[160];
        snprintf(what, sizeof what, "trainer bf16 flash vs f32 losses per step, %s (6 steps, T 100)", c->map);
        check_against(what, flash->train_losses, f32->train_losses, NULL, STEPS, 3e-2, false);
        snprintf(what, sizeof what, "trainer bf16 flash vs bf16 gemm losses per step, %s", c->map);
        check_against(what, flash->train_losses, gemm->train_losses, NULL, STEPS, 1e-2, false);
        xlkv_trainer_free(f32);
        xlkv_trainer_free(flash);
        xlkv_trainer_free(gemm);
    }
    free(data);
    if (failures) fail_msg("%d flash trainer check(s) failed", failures);
}

/* ---- 4. RoPE inside the staging ----------------------------------------------------------------------------- */

/* memcmp of one tensor; prints a check line with the first differing element. */
static void check_bits(const char *case_name, const char *tensor, const float *got, const float *ref, size_t n) {
    size_t first = n;
    for (size_t i = 0; i < n && first == n; i++)
        if (memcmp(&got[i], &ref[i], sizeof(float))) first = i;
    if (first == n)
        printf("check flash rope %-56s %-22s bit-identical to rope kernel + flash ok\n", case_name, tensor);
    else {
        printf("check flash rope %-56s %-22s DIFFERS at %zu (%.9g vs %.9g) FAIL\n", case_name, tensor, first,
               got[first], ref[first]);
        failures++;
    }
}

static void flash_rope_case(const attention_case *c) {
    const xlkv_cuda_train_attention_shape gpu = {c->batch, c->seq, c->n_heads, c->n_kv_heads, c->head_dim, c->window,
                                                 c->mask_diagonal};
    const size_t N = (size_t)c->batch * c->seq, qn = N * c->n_heads * c->head_dim;
    const size_t kvn = N * c->n_kv_heads * c->head_dim, ln = N * c->n_heads;
    const int half = c->head_dim / 2;
    /* the trainer's tables: position t, pair i: angle t / 10000^(2i / head_dim) */
    const size_t table_n = (size_t)c->seq * half;
    float *cos_table = malloc(table_n * sizeof(float)), *sin_table = malloc(table_n * sizeof(float));
    for (int t = 0; t < c->seq; t++)
        for (int i = 0; i < half; i++) {
            const double angle = t * pow(10000.0, -2.0 * i / c->head_dim);
            cos_table[(size_t)t * half + i] = (float)cos(angle);
            sin_table[(size_t)t * half + i] = (float)sin(angle);
        }
    float *q = random_array(qn, 1.5f), *k = random_array(kvn, 1.5f), *v = random_array(kvn, 1.0f);
    float *dout = random_array(qn, 1.0f), *dk0 = random_array(kvn, 0.1f), *dv0 = random_array(kvn, 0.1f);
    float *d_cos = ct_dev_floats(cos_table, table_n), *d_sin = ct_dev_floats(sin_table, table_n);
    device_inputs plain = {ct_dev_floats(q, qn), ct_dev_floats(k, kvn), ct_dev_floats(v, kvn),
                           ct_dev_floats(dout, qn), ct_dev_floats(dk0, kvn), ct_dev_floats(dv0, kvn)};
    device_inputs rotated = {ct_dev_floats(q, qn), ct_dev_floats(k, kvn), plain.v, plain.dout, plain.dk0, plain.dv0};
    CK_LAUNCH(xlkv_cuda_train_rope(rotated.q, (int)N, c->seq, c->n_heads, c->head_dim, d_cos, d_sin, 1.0f, NULL));
    CK_LAUNCH(xlkv_cuda_train_rope(rotated.k, (int)N, c->seq, c->n_kv_heads, c->head_dim, d_cos, d_sin, 1.0f, NULL));
    const xlkv_cuda_train_flash_rope rope = {d_cos, d_sin, NULL, 0};
    attention_result ref = run_gpu_rope(IMPL_FLASH, &rotated, &gpu, qn, kvn, ln, NULL);
    attention_result got = run_gpu_rope(IMPL_FLASH, &plain, &gpu, qn, kvn, ln, &rope);
    check_bits(c->name, "out", got.out, ref.out, qn);
    check_bits(c->name, "lse", got.lse, ref.lse, ln);
    check_bits(c->name, "dq", got.dq, ref.dq, qn);
    check_bits(c->name, "dk (+= onto non-zero)", got.dk, ref.dk, kvn);
    check_bits(c->name, "dv (+= onto non-zero)", got.dv, ref.dv, kvn);
    check_bits(c->name, "dq with constant K/V", got.dq_const, ref.dq_const, qn);
    /* dq16: the dQ kernel writes bf16(inverse rotation(dq)) into a padded operand (ld = q width + 16, the other
     * columns must stay as they were) with the bits of xlkv_cuda_train_rope_to_bf16 from the fp32 dq above */
    {
        const size_t width = (size_t)c->n_heads * c->head_dim, ld = width + 16, n16 = N * ld;
        uint16_t *ref16 = ct_to_device(NULL, n16 * sizeof(uint16_t));
        uint16_t *got16 = ct_to_device(NULL, n16 * sizeof(uint16_t));
        CK(cudaMemset(ref16, 0x5A, n16 * sizeof(uint16_t)));
        CK(cudaMemset(got16, 0x5A, n16 * sizeof(uint16_t)));
        float *d_dq = ct_dev_floats(got.dq, qn);
        CK_LAUNCH(xlkv_cuda_train_rope_to_bf16(ref16, ld, d_dq, (int)N, c->seq, c->n_heads, c->head_dim, d_cos, d_sin,
                                               -1.0f, 1, NULL));
        void *ws = NULL;
        CK(cudaMalloc(&ws, xlkv_cuda_train_attention_flash_workspace_bytes(&gpu)));
        float *out = ct_dev_floats(NULL, qn), *lse = ct_dev_floats(NULL, ln), *delta = ct_dev_floats(NULL, ln);
        float *dk = ct_dev_floats(dk0, kvn), *dv = ct_dev_floats(dv0, kvn);
        const xlkv_cuda_train_flash_rope rope16 = {d_cos, d_sin, got16, ld};
        CK_LAUNCH(xlkv_cuda_train_attention_flash_forward_rope(out, lse, plain.q, plain.k, plain.v, &rope, &gpu, ws,
                                                               NULL));
        CK_LAUNCH(xlkv_cuda_train_attention_flash_backward_rope(NULL, dk, dv, delta, plain.dout, out, lse, plain.q,
                                                                plain.k, plain.v, &rope16, &gpu, ws, NULL));
        uint16_t *h_ref = ct_download(ref16, n16 * sizeof(uint16_t));
        uint16_t *h_got = ct_download(got16, n16 * sizeof(uint16_t));
        size_t first = n16;
        for (size_t i = 0; i < n16 && first == n16; i++)
            if (h_ref[i] != h_got[i]) first = i;
        printf("check flash rope %-56s dq16 (bf16, inverse-rotated, ld %zu) %s", c->name, ld,
               first == n16 ? "bit-identical to rope_to_bf16(dq) ok\n" : "DIFFERS");
        if (first != n16) {
            printf(" at row %zu column %zu (0x%04x vs 0x%04x) FAIL\n", first / ld, first % ld, h_got[first],
                   h_ref[first]);
            failures++;
        }
        free(h_ref), free(h_got);
        cudaFree(ref16), cudaFree(got16), cudaFree(d_dq), cudaFree(ws), cudaFree(out), cudaFree(lse);
        cudaFree(delta), cudaFree(dk), cudaFree(dv);
    }
    /* the inputs are read, never rotated in place */
    float *q_after = ct_download_floats(plain.q, qn), *k_after = ct_download_floats(plain.k, kvn);
    const bool untouched = !memcmp(q_after, q, qn * sizeof(float)) && !memcmp(k_after, k, kvn * sizeof(float));
    printf("check flash rope %-56s q and k left unrotated: %s\n", c->name, untouched ? "ok" : "FAIL");
    if (!untouched) failures++;
    free(q_after), free(k_after);
    free_result(&ref), free_result(&got);
    free(q), free(k), free(v), free(dout), free(dk0), free(dv0), free(cos_table), free(sin_table);
    cudaFree(plain.q), cudaFree(plain.k), cudaFree(plain.v), cudaFree(plain.dout), cudaFree(plain.dk0);
    cudaFree(plain.dv0), cudaFree(rotated.q), cudaFree(rotated.k), cudaFree(d_cos), cudaFree(d_sin);
}

static void flash_rope_matches_rope_then_flash(void **state) {
    (void)state;
    int devices = 0;
    if (cudaGetDeviceCount(&devices) != cudaSuccess || devices == 0) skip();
    failures = 0;
    for (size_t i = 0; i < sizeof flash_cases / sizeof *flash_cases; i++) flash_rope_case(&flash_cases[i]);

    /* a table that is not 16-byte aligned is refused */
    const xlkv_cuda_train_attention_shape shape = {1, 16, 2, 1, 64, 0, false};
    float *buf = ct_dev_floats(NULL, 16 * 2 * 64 + 4);
    void *ws = NULL;
    CK(cudaMalloc(&ws, xlkv_cuda_train_attention_flash_workspace_bytes(&shape)));
    const xlkv_cuda_train_flash_rope misaligned = {buf + 1, buf, NULL, 0};
    const int rc = xlkv_cuda_train_attention_flash_forward_rope(buf, buf, buf, buf, buf, &misaligned, &shape, ws, NULL);
    printf("check flash rope refuses a misaligned table (cudaErrorInvalidValue): %s\n",
           rc == (int)cudaErrorInvalidValue ? "ok" : "FAIL");
    if (rc != (int)cudaErrorInvalidValue) failures++;
    const xlkv_cuda_train_flash_rope odd_ld = {buf, buf, (uint16_t *)(void *)buf, 2 * 64 + 1};
    const int rc_ld = xlkv_cuda_train_attention_flash_backward_rope(NULL, buf, buf, buf, buf, buf, buf, buf, buf, buf,
                                                                    &odd_ld, &shape, ws, NULL);
    printf("check flash rope refuses an odd dq16 row stride (cudaErrorInvalidValue): %s\n",
           rc_ld == (int)cudaErrorInvalidValue ? "ok" : "FAIL");
    if (rc_ld != (int)cudaErrorInvalidValue) failures++;
    cudaFree(buf), cudaFree(ws);
    if (failures) fail_msg("%d flash rope check(s) failed", failures);
}

/* ---- 5. the trainer with and without the RoPE in the staging ------------------------------------------------- */

/* A bf16 trainer (flash by default at head_dim 64) with XLKV_TRAIN_FLASH_ROPE=value, STEPS steps; parameters
 * downloaded into its store. */
static xlkv_trainer *flash_rope_trainer(const char *data, const trainer_case *c, const char *value, const char *fuse) {
    xlkv_trainer *tr = NULL;
    unsetenv("XLKV_TRAIN_ATTENTION");
    setenv("XLKV_TRAIN_FLASH_ROPE", value, 1);
    setenv("XLKV_TRAIN_FUSE", fuse, 1);
    TU_ASSERT_OK(make_trainer(data, c, true, &tr));
    unsetenv("XLKV_TRAIN_FLASH_ROPE");
    unsetenv("XLKV_TRAIN_FUSE");
    for (int s = 0; s < STEPS; s++) TU_ASSERT_OK(xlkv_trainer_step(tr, NULL));
    TU_ASSERT_OK(xlkv_gpu_trainer_download(tr->gpu, tr->store, false));
    return tr;
}

static void flash_rope_trainer_same_bits(void **state) {
    (void)state;
    int devices = 0;
    if (cudaGetDeviceCount(&devices) != cudaSuccess || devices == 0) skip();
    failures = 0;
    char *data = tt_token_data_dir(12000, 10000, VOCAB);
    /* the fused layer passes (default: the dQ kernel writes the bf16 dq operand) and, for the cyclic map, the unfused
     * ones (fp32 dq, inverse RoPE pass) */
    static const trainer_case cases[] = {{"standard", 0, 2}, {"cla:2", 0, 2}, {"lckv:1", 1, 2}, {"lckv:1", 1, 2}};
    static const char *const fuse[] = {"1", "1", "1", "0"};
    for (size_t ci = 0; ci < sizeof cases / sizeof *cases; ci++) {
        const trainer_case *c = &cases[ci];
        xlkv_trainer *inside = flash_rope_trainer(data, c, "1", fuse[ci]);
        xlkv_trainer *separate = flash_rope_trainer(data, c, "0", fuse[ci]);
        printf("losses %s: flash rope inside", c->map);
        for (int s = 0; s < STEPS; s++) printf(" %.7f", inside->train_losses[s]);
        printf(" | separate passes");
        for (int s = 0; s < STEPS; s++) printf(" %.7f", separate->train_losses[s]);
        printf("\n");
        const bool same_losses = !memcmp(inside->train_losses, separate->train_losses, STEPS * sizeof(float));
        size_t first = inside->store->n_params;
        for (size_t i = 0; i < inside->store->n_params && first == inside->store->n_params; i++)
            if (memcmp(&inside->store->params[i], &separate->store->params[i], sizeof(float))) first = i;
        const bool same_params = first == inside->store->n_params;
        printf("check trainer XLKV_TRAIN_FLASH_ROPE=1 vs 0, %-8s m=%d b=%d XLKV_TRAIN_FUSE=%s (6 steps): losses %s, "
               "parameters %s", c->map, c->m, c->b, fuse[ci], same_losses ? "bit-identical" : "DIFFER",
               same_params ? "bit-identical" : "DIFFER");
        if (!same_params)
            printf(" (first at %zu: %.9g vs %.9g)", first, inside->store->params[first],
                   separate->store->params[first]);
        printf(" %s\n", same_losses && same_params ? "ok" : "FAIL");
        if (!same_losses || !same_params) failures++;
        xlkv_trainer_free(inside);
        xlkv_trainer_free(separate);
    }
    const trainer_case standard = {"standard", 0, 2};
    xlkv_trainer *refused = NULL;
    setenv("XLKV_TRAIN_FLASH_ROPE", "2", 1);
    const xlkv_status st = make_trainer(data, &standard, true, &refused);
    unsetenv("XLKV_TRAIN_FLASH_ROPE");
    const bool was_refused = st == XLKV_E_INVALID && !refused;
    printf("check XLKV_TRAIN_FLASH_ROPE=2 is refused with XLKV_E_INVALID: %s\n", was_refused ? "ok" : "FAIL");
    if (!was_refused) failures++;
    xlkv_trainer_free(refused);
    free(data);
    if (failures) fail_msg("%d flash rope trainer check(s) failed", failures);
}

/* ---- 6. the folded side passes (xlkv_cuda_train_attention_flash_backward_opts) ----------------------------------- */
/* One flash backward with `options` from the forward's out / lse: dk, dv start as `dk0` / `dv0` (NULL: NaN poison,
 * for overwrite), delta into a NaN-poisoned buffer unless want_delta is false (NULL passed); the workspace is
 * poisoned too. Returns dq, dk, dv and delta (NULL when not asked) on the host in r->dq, dk, dv, lse (delta). */
/* memcmp of one tensor (n floats); prints a check line with the first differing element. */
static void check_prologue_bits(const char *case_name, const char *what, const float *got, const float *ref,
                                size_t n) {
    size_t first = n;
    for (size_t i = 0; i < n && first == n; i++)
        if (memcmp(&got[i], &ref[i], sizeof(float))) first = i;
    if (first == n) {
        printf("check flash prologue %-52s %-56s bit-identical ok\n", case_name, what);
        return;
    }
    printf("check flash prologue %-52s %-56s DIFFERS at %zu (%.9g vs %.9g) FAIL\n", case_name, what, first, got[first],
           ref[first]);
    failures++;
}

static attention_result run_backward_opts(const device_inputs *in, const float *out, const float *lse,
                                          const xlkv_cuda_train_attention_shape *s, size_t qn, size_t kvn, size_t ln,
                                          const float *dk0, const float *dv0, bool want_delta,
                                          const xlkv_cuda_train_flash_backward_options *options) {
    void *ws = NULL;
    const size_t bytes = xlkv_cuda_train_attention_flash_workspace_bytes(s);
    CK(cudaMalloc(&ws, bytes));
    CK(cudaMemset(ws, 0xFF, bytes));
    float *dq = ct_dev_floats(NULL, qn), *dk = ct_dev_floats(NULL, kvn), *dv = ct_dev_floats(NULL, kvn);
    float *delta = want_delta ? ct_dev_floats(NULL, ln) : NULL;
    CK(cudaMemset(dq, 0xFF, qn * sizeof(float)));
    if (delta) CK(cudaMemset(delta, 0xFF, ln * sizeof(float)));
    if (dk0) {
        CK(cudaMemcpy(dk, dk0, kvn * sizeof(float), cudaMemcpyDeviceToDevice));
        CK(cudaMemcpy(dv, dv0, kvn * sizeof(float), cudaMemcpyDeviceToDevice));
    } else {
        CK(cudaMemset(dk, 0xFF, kvn * sizeof(float)));
        CK(cudaMemset(dv, 0xFF, kvn * sizeof(float)));
    }
    CK_LAUNCH(xlkv_cuda_train_attention_flash_backward_opts(dq, dk, dv, delta, in->dout, out, lse, in->q, in->k,
                                                            in->v, NULL, options, s, ws, NULL));
    attention_result r = {NULL, delta ? ct_download_floats(delta, ln) : NULL, ct_download_floats(dq, qn),
                          ct_download_floats(dk, kvn), ct_download_floats(dv, kvn), NULL};
    cudaFree(dq), cudaFree(dk), cudaFree(dv), cudaFree(delta), cudaFree(ws);
    return r;
}

static void flash_prologue_case(const attention_case *c) {
    const xlkv_cuda_train_attention_shape gpu = {c->batch, c->seq, c->n_heads, c->n_kv_heads, c->head_dim, c->window,
                                                 c->mask_diagonal};
    const size_t N = (size_t)c->batch * c->seq, qn = N * c->n_heads * c->head_dim;
    const size_t kvn = N * c->n_kv_heads * c->head_dim, ln = N * c->n_heads;
    float *q = random_array(qn, 1.5f), *k = random_array(kvn, 1.5f), *v = random_array(kvn, 1.0f);
    float *dout = random_array(qn, 1.0f), *dk0 = random_array(kvn, 0.1f), *dv0 = random_array(kvn, 0.1f);
    device_inputs in = {ct_dev_floats(q, qn), ct_dev_floats(k, kvn), ct_dev_floats(v, kvn), ct_dev_floats(dout, qn),
                        ct_dev_floats(dk0, kvn), ct_dev_floats(dv0, kvn)};
    float *zeros = ct_dev_floats(NULL, kvn);
    CK(cudaMemset(zeros, 0, kvn * sizeof(float)));
    void *ws = NULL;
    CK(cudaMalloc(&ws, xlkv_cuda_train_attention_flash_workspace_bytes(&gpu)));
    float *out = ct_dev_floats(NULL, qn), *lse = ct_dev_floats(NULL, ln), *delta_ref = ct_dev_floats(NULL, ln);
    CK_LAUNCH(xlkv_cuda_train_attention_flash_forward(out, lse, in.q, in.k, in.v, &gpu, ws, NULL));
    CK_LAUNCH(xlkv_cuda_train_attention_delta(delta_ref, in.dout, out, &gpu, NULL)); /* the separate pass */
    float *h_delta_ref = ct_download_floats(delta_ref, ln);

    const xlkv_cuda_train_flash_backward_options separate = {.separate_delta = true}, fused = {.separate_delta = false},
                                                 overwrite = {.overwrite_dkdv = true},
                                                 overwrite_separate = {.overwrite_dkdv = true, .separate_delta = true};
    /* the former path: delta pass + head_major_rows, dk / dv added onto cleared buffers */
    attention_result ref = run_backward_opts(&in, out, lse, &gpu, qn, kvn, ln, zeros, zeros, true, &separate);
    attention_result add = run_backward_opts(&in, out, lse, &gpu, qn, kvn, ln, zeros, zeros, true, &fused);
    attention_result over = run_backward_opts(&in, out, lse, &gpu, qn, kvn, ln, NULL, NULL, false, &overwrite);
    attention_result over_sep =
        run_backward_opts(&in, out, lse, &gpu, qn, kvn, ln, NULL, NULL, true, &overwrite_separate);
    /* adding onto non-zero: the same sums as the separate path adding onto the same buffers */
    attention_result ref_nz = run_backward_opts(&in, out, lse, &gpu, qn, kvn, ln, in.dk0, in.dv0, true, &separate);
    attention_result add_nz = run_backward_opts(&in, out, lse, &gpu, qn, kvn, ln, in.dk0, in.dv0, false, &fused);

    check_prologue_bits(c->name, "delta in the dQ kernel vs xlkv_cuda_train_attention_delta", add.lse, h_delta_ref, ln);
    check_prologue_bits(c->name, "delta (separate_delta) vs xlkv_cuda_train_attention_delta", ref.lse, h_delta_ref, ln);
    check_prologue_bits(c->name, "dq, delta in dQ vs separate delta", add.dq, ref.dq, qn);
    check_prologue_bits(c->name, "dk, delta in dQ vs separate delta (onto zeros)", add.dk, ref.dk, kvn);
    check_prologue_bits(c->name, "dv, delta in dQ vs separate delta (onto zeros)", add.dv, ref.dv, kvn);
    check_prologue_bits(c->name, "dq, overwrite (delta NULL) vs separate", over.dq, ref.dq, qn);
    check_prologue_bits(c->name, "dk, overwrite onto NaN vs clear + add", over.dk, ref.dk, kvn);
    check_prologue_bits(c->name, "dv, overwrite onto NaN vs clear + add", over.dv, ref.dv, kvn);
    check_prologue_bits(c->name, "dk, overwrite + separate_delta vs clear + add", over_sep.dk, ref.dk, kvn);
    check_prologue_bits(c->name, "dv, overwrite + separate_delta vs clear + add", over_sep.dv, ref.dv, kvn);
    check_prologue_bits(c->name, "dk += onto non-zero, delta in dQ vs separate", add_nz.dk, ref_nz.dk, kvn);
    check_prologue_bits(c->name, "dv += onto non-zero, delta in dQ vs separate", add_nz.dv, ref_nz.dv, kvn);

    /* kept bf16 K / V: a forward that rounds into the caller's pair gives the plain forward's bits; a backward that
     * streams the ready pair (its workspace NaN-poisoned, so nothing comes from there) gives the former path's */
    uint16_t *k16 = ct_to_device(NULL, kvn * sizeof(uint16_t)), *v16 = ct_to_device(NULL, kvn * sizeof(uint16_t));
    CK(cudaMemset(k16, 0xFF, kvn * sizeof(uint16_t)));
    CK(cudaMemset(v16, 0xFF, kvn * sizeof(uint16_t)));
    float *out16 = ct_dev_floats(NULL, qn), *lse16 = ct_dev_floats(NULL, ln);
    const xlkv_cuda_train_flash_kv16 fresh = {k16, v16, false}, ready = {k16, v16, true};
    CK(cudaMemset(ws, 0xFF, xlkv_cuda_train_attention_flash_workspace_bytes(&gpu)));
    CK_LAUNCH(xlkv_cuda_train_attention_flash_forward_opts(out16, lse16, in.q, in.k, in.v, NULL, &fresh, &gpu, ws,
                                                           NULL));
    float *h_out = ct_download_floats(out, qn), *h_lse = ct_download_floats(lse, ln);
    float *h_out16 = ct_download_floats(out16, qn), *h_lse16 = ct_download_floats(lse16, ln);
    check_prologue_bits(c->name, "out, forward rounding into kept K / V vs plain", h_out16, h_out, qn);
    check_prologue_bits(c->name, "lse, forward rounding into kept K / V vs plain", h_lse16, h_lse, ln);
    CK(cudaMemset(ws, 0xFF, xlkv_cuda_train_attention_flash_workspace_bytes(&gpu)));
    CK_LAUNCH(xlkv_cuda_train_attention_flash_forward_opts(out16, lse16, in.q, in.k, in.v, NULL, &ready, &gpu, ws,
                                                           NULL));
    free(h_out16), free(h_lse16);
    h_out16 = ct_download_floats(out16, qn), h_lse16 = ct_download_floats(lse16, ln);
    check_prologue_bits(c->name, "out, forward streaming ready K / V vs plain", h_out16, h_out, qn);
    const xlkv_cuda_train_flash_backward_options kept = {.overwrite_dkdv = true, .kv16 = &ready};
    attention_result over_kept = run_backward_opts(&in, out, lse, &gpu, qn, kvn, ln, NULL, NULL, false, &kept);
    check_prologue_bits(c->name, "dq, ready K / V + overwrite vs former", over_kept.dq, ref.dq, qn);
    check_prologue_bits(c->name, "dk, ready K / V + overwrite vs former", over_kept.dk, ref.dk, kvn);
    check_prologue_bits(c->name, "dv, ready K / V + overwrite vs former", over_kept.dv, ref.dv, kvn);
    free_result(&over_kept);
    free(h_out), free(h_lse), free(h_out16), free(h_lse16);
    cudaFree(k16), cudaFree(v16), cudaFree(out16), cudaFree(lse16);

    free_result(&ref), free_result(&add), free_result(&over), free_result(&over_sep), free_result(&ref_nz);
    free_result(&add_nz);
    free(h_delta_ref), free(q), free(k), free(v), free(dout), free(dk0), free(dv0);
    cudaFree(out), cudaFree(lse), cudaFree(delta_ref), cudaFree(ws), cudaFree(zeros);
    cudaFree(in.q), cudaFree(in.k), cudaFree(in.v), cudaFree(in.dout), cudaFree(in.dk0), cudaFree(in.dv0);
}

static void flash_prologue_same_bits(void **state) {
    (void)state;
    int devices = 0;
    if (cudaGetDeviceCount(&devices) != cudaSuccess || devices == 0) skip();
    failures = 0;
    for (size_t i = 0; i < sizeof flash_cases / sizeof *flash_cases; i++) flash_prologue_case(&flash_cases[i]);
    /* separate_delta needs the delta buffer */
    const xlkv_cuda_train_attention_shape shape = {1, 16, 2, 1, 64, 0, false};
    float *buf = ct_dev_floats(NULL, 16 * 2 * 64);
    void *ws = NULL;
    CK(cudaMalloc(&ws, xlkv_cuda_train_attention_flash_workspace_bytes(&shape)));
    const xlkv_cuda_train_flash_backward_options separate = {.separate_delta = true};
    const int rc = xlkv_cuda_train_attention_flash_backward_opts(buf, buf, buf, NULL, buf, buf, buf, buf, buf, buf,
                                                                 NULL, &separate, &shape, ws, NULL);
    printf("check flash separate_delta without a delta buffer is refused (cudaErrorInvalidValue): %s\n",
           rc == (int)cudaErrorInvalidValue ? "ok" : "FAIL");
    if (rc != (int)cudaErrorInvalidValue) failures++;
    const xlkv_cuda_train_flash_kv16 missing = {NULL, NULL, true};
    const xlkv_cuda_train_flash_backward_options no_pair = {.kv16 = &missing};
    const int rc_pair = xlkv_cuda_train_attention_flash_backward_opts(buf, buf, buf, NULL, buf, buf, buf, buf, buf, buf,
                                                                      NULL, &no_pair, &shape, ws, NULL);
    const int rc_fwd = xlkv_cuda_train_attention_flash_forward_opts(buf, buf, buf, buf, buf, NULL, &missing, &shape, ws,
                                                                    NULL);
    const bool pair_refused = rc_pair == (int)cudaErrorInvalidValue && rc_fwd == (int)cudaErrorInvalidValue;
    printf("check flash kept K / V without buffers is refused (forward and backward, cudaErrorInvalidValue): %s\n",
           pair_refused ? "ok" : "FAIL");
    if (!pair_refused) failures++;
    cudaFree(buf), cudaFree(ws);
    if (failures) fail_msg("%d flash prologue kernel check(s) failed", failures);
}

/* A bf16 trainer (flash) with XLKV_TRAIN_FLASH_PROLOGUE=value and XLKV_TRAIN_FLASH_KV16=value (and the given
 * FLASH_ROPE / FUSE), STEPS steps;
 * parameters downloaded into its store. */
static xlkv_trainer *flash_prologue_trainer(const char *data, const trainer_case *c, const char *value,
                                            const char *rope, const char *fuse) {
    xlkv_trainer *tr = NULL;
    unsetenv("XLKV_TRAIN_ATTENTION");
    setenv("XLKV_TRAIN_FLASH_PROLOGUE", value, 1);
    setenv("XLKV_TRAIN_FLASH_KV16", value, 1);
    setenv("XLKV_TRAIN_FLASH_ROPE", rope, 1);
    setenv("XLKV_TRAIN_FUSE", fuse, 1);
    TU_ASSERT_OK(make_trainer(data, c, true, &tr));
    unsetenv("XLKV_TRAIN_FLASH_PROLOGUE");
    unsetenv("XLKV_TRAIN_FLASH_KV16");
    unsetenv("XLKV_TRAIN_FLASH_ROPE");
    unsetenv("XLKV_TRAIN_FUSE");
    for (int s = 0; s < STEPS; s++) TU_ASSERT_OK(xlkv_trainer_step(tr, NULL));
    TU_ASSERT_OK(xlkv_gpu_trainer_download(tr->gpu, tr->store, false));
    return tr;
}

static void flash_prologue_trainer_same_bits(void **state) {
    (void)state;
    int devices = 0;
    if (cudaGetDeviceCount(&devices) != cudaSuccess || devices == 0) skip();
    failures = 0;
    char *data = tt_token_data_dir(12000, 10000, VOCAB);
    /* standard (every KV layer read once), cla:2 (two readers: one overwrites, one adds), lckv:1 cyclic (readers
     * across iterations, KV records nobody reads: cleared in the backward), fused and unfused, RoPE inside or not */
    static const trainer_case cases[] = {{"standard", 0, 2}, {"cla:2", 0, 2}, {"lckv:1", 1, 2},
                                         {"lckv:1", 2, 3},   {"lckv:1", 1, 2}, {"cla:2", 0, 2}};
    static const char *const rope[] = {"1", "1", "1", "1", "1", "0"};
    static const char *const fuse[] = {"1", "1", "1", "1", "0", "1"};
    for (size_t ci = 0; ci < sizeof cases / sizeof *cases; ci++) {
        const trainer_case *c = &cases[ci];
        xlkv_trainer *folded = flash_prologue_trainer(data, c, "1", rope[ci], fuse[ci]);
        xlkv_trainer *former = flash_prologue_trainer(data, c, "0", rope[ci], fuse[ci]);
        const bool same_losses = !memcmp(folded->train_losses, former->train_losses, STEPS * sizeof(float));
        size_t first = folded->store->n_params;
        for (size_t i = 0; i < folded->store->n_params && first == folded->store->n_params; i++)
            if (memcmp(&folded->store->params[i], &former->store->params[i], sizeof(float))) first = i;
        const bool same_params = first == folded->store->n_params;
        printf("check trainer XLKV_TRAIN_FLASH_PROLOGUE=KV16=1 vs 0, %-8s m=%d b=%d ROPE=%s FUSE=%s (6 steps, last loss "
               "%.7f): losses %s, parameters %s", c->map, c->m, c->b, rope[ci], fuse[ci],
               folded->train_losses[STEPS - 1], same_losses ? "bit-identical" : "DIFFER",
               same_params ? "bit-identical" : "DIFFER");
        if (!same_params)
            printf(" (first at %zu: %.9g vs %.9g)", first, folded->store->params[first], former->store->params[first]);
        printf(" %s\n", same_losses && same_params ? "ok" : "FAIL");
        if (!same_losses || !same_params) failures++;
        xlkv_trainer_free(folded);
        xlkv_trainer_free(former);
    }
    const trainer_case standard = {"standard", 0, 2};
    xlkv_trainer *refused = NULL;
    setenv("XLKV_TRAIN_FLASH_PROLOGUE", "2", 1);
    const xlkv_status st = make_trainer(data, &standard, true, &refused);
    unsetenv("XLKV_TRAIN_FLASH_PROLOGUE");
    const bool was_refused = st == XLKV_E_INVALID && !refused;
    printf("check XLKV_TRAIN_FLASH_PROLOGUE=2 is refused with XLKV_E_INVALID: %s\n", was_refused ? "ok" : "FAIL");
    if (!was_refused) failures++;
    xlkv_trainer_free(refused);
    refused = NULL;
    setenv("XLKV_TRAIN_FLASH_KV16", "yes", 1);
    const xlkv_status st16 = make_trainer(data, &standard, true, &refused);
    unsetenv("XLKV_TRAIN_FLASH_KV16");
    const bool kv16_refused = st16 == XLKV_E_INVALID && !refused;
    printf("check XLKV_TRAIN_FLASH_KV16=yes is refused with XLKV_E_INVALID: %s\n", kv16_refused ? "ok" : "FAIL");
    if (!kv16_refused) failures++;
    xlkv_trainer_free(refused);
    free(data);
    if (failures) fail_msg("%d flash prologue trainer check(s) failed", failures);
}

int main(void) {
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(flash_kernels_match_exact),
        cmocka_unit_test(flash_gradients_match),
        cmocka_unit_test(flash_trainer_tracks_f32),
        cmocka_unit_test(flash_rope_matches_rope_then_flash),
        cmocka_unit_test(flash_rope_trainer_same_bits),
        cmocka_unit_test(flash_prologue_same_bits),
        cmocka_unit_test(flash_prologue_trainer_same_bits),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
