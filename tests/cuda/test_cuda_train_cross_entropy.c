/* tests/cuda/test_cuda_train_cross_entropy: the bf16 trainer's fused cross-entropy (backend/cuda/train_cross_entropy.h)
 * and the classifier path built on it (backend/cuda/train_gpu.c, fused_ce).
 *  1. the kernel on random bf16 logits vs a CPU reference in double computed from the same bf16 values: row loss
 *     (log-sum-exp - target logit) and the in-place gradient softmax - onehot; vocabularies that take each of the
 *     kernel's four paths (16-byte vectors or single elements, the row cached in shared memory or read again), odd
 *     sizes, a misaligned buffer, logits around +-1000, rows whose target has a probability of ~1e-32 (or 1 - 2e-8),
 *     vocab 1. Tolerances: loss |gpu - ref| <= 2e-5 max(1, |ref|) (fp32 max / sum with __expf, combined in double);
 *     gradient |gpu - ref| <= 4e-3 |ref| + 2e-7 per element (round to nearest bf16 is off by up to 2^-8 = 3.906e-3
 *     of the value: 8 significant bits; measured on an H100: 3.88e-3, so the kernel rounds, never truncates (that
 *     would reach 7.8e-3); the floor covers fp32 rounding of p - 1 where p is within ~1e-7 of 1).
 *  2. a tiny model (4 layers x 64, vocabularies 61 and 320: the single-element and the vector path) under standard
 *     and lckv:1 (m=1, b=2): one forward + backward with the fused path (the default) vs XLKV_TRAIN_CE=fp32 (fp32
 *     logits and probabilities, as before), both with bf16 operands, and both vs the exact f32 trainer: gradients
 *     within 5e-2 of each tensor's largest gradient of XLKV_TRAIN_CE=fp32's, loss within 2e-3 relative (logits
 *     rounded to bf16 move each by up to 2^-8 of itself); two accumulated micro-batches with loss scale 0.5 so a
 *     wrong alpha or a missing accumulation shows; six trainer steps' losses and the held-out loss within 5e-3.
 *  3. XLKV_TRAIN_CE=bogus refused; XLKV_TRAIN_CE=fused with XLKV_TRAIN_GEMM=fp32ops refused; the device memory a
 *     bf16 trainer takes (cudaMemGetInfo around create, vocab 32,000, 256 rows) is 4 N vocab bytes (the fp32
 *     probabilities) less under the fused path than under XLKV_TRAIN_CE=fp32, within 10 % + 4 MiB.
 * Every check prints one "check ..." line with the measured error and the tolerance. Needs a GPU (label cuda). */
#define _DEFAULT_SOURCE /* setenv */
#include <cuda_runtime_api.h>
#include <math.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "backend/cuda/train_cross_entropy.h"
#include "core/file.h"
#include "testutil.h"
#include "cuda_testutil.h"
#include "train_testutil.h"
#include "train/gpu_trainer.h"
#include "train/model_setup.h"
#include "train/trainer.h"

static int failures;
static unsigned long long rng_state = 0x2545F4914F6CDD1Dull;
static double uniform(void) { /* [-1, 1) */
    rng_state = rng_state * 6364136223846793005ull + 1442695040888963407ull;
    return (double)((rng_state >> 40) & 0xFFFFFF) / 8388608.0 - 1.0;
}

/* ---- 1. the kernel ---------------------------------------------------------------------------------------------- */
typedef enum { LOGITS_RANDOM, LOGITS_LARGE, TARGET_TINY, TARGET_CERTAIN } logits_kind;

/* n rows of vocab logits starting `shift` bf16 elements into the device buffer (shift 1: not 16-byte aligned) */
static void fused_case(const char *name, int n, int vocab, int shift, logits_kind kind) {
    const size_t count = (size_t)n * (size_t)vocab;
    uint16_t *logits = malloc(count * sizeof *logits), *out = malloc(count * sizeof *out);
    int *targets = malloc((size_t)n * sizeof *targets);
    double *loss = malloc((size_t)n * sizeof *loss);
    for (int r = 0; r < n; r++) {
        targets[r] = (int)((unsigned)(r * 7919 + vocab / 3) % (unsigned)vocab);
        if (r == 0) targets[r] = 0;
        if (r == 1) targets[r] = vocab - 1;
        for (int c = 0; c < vocab; c++) {
            double x = 4.0 * uniform();
            if (kind == LOGITS_LARGE) x = 1000.0 * (r % 2 ? -1.0 : 1.0) + 30.0 * uniform();
            logits[(size_t)r * vocab + c] = ct_bf16_rne((float)x);
        }
        if (kind == TARGET_TINY) logits[(size_t)r * vocab + targets[r]] = ct_bf16_rne(-60.0f); /* others in [-4, 4) */
        if (kind == TARGET_CERTAIN) logits[(size_t)r * vocab + targets[r]] = ct_bf16_rne(30.0f); /* p ~ 1 - 2e-8 */
    }
    uint16_t *d_base = NULL;
    int *d_targets = NULL;
    double *d_loss = NULL;
    CK(cudaMalloc((void **)&d_base, (count + (size_t)shift) * sizeof *d_base));
    CK(cudaMalloc((void **)&d_targets, (size_t)n * sizeof *d_targets));
    CK(cudaMalloc((void **)&d_loss, (size_t)n * sizeof *d_loss));
    CK(cudaMemcpy(d_base + shift, logits, count * sizeof *logits, cudaMemcpyHostToDevice));
    CK(cudaMemcpy(d_targets, targets, (size_t)n * sizeof *targets, cudaMemcpyHostToDevice));
    CK(cudaMemset(d_loss, 0xFF, (size_t)n * sizeof *d_loss)); /* NaN: a row not written fails */
    CK_LAUNCH(xlkv_cuda_train_cross_entropy_fused_bf16(d_base + shift, d_loss, d_targets, n, vocab, NULL));
    CK(cudaMemcpy(out, d_base + shift, count * sizeof *out, cudaMemcpyDeviceToHost));
    CK(cudaMemcpy(loss, d_loss, (size_t)n * sizeof *loss, cudaMemcpyDeviceToHost));

    double worst_loss = 0.0, worst_excess = 0.0, worst_rel = 0.0, worst_abs = 0.0, loss_min = INFINITY, loss_max = 0;
    double *x = malloc((size_t)vocab * sizeof *x);
    for (int r = 0; r < n; r++) {
        double m = -INFINITY, s = 0.0;
        for (int c = 0; c < vocab; c++) {
            x[c] = (double)ct_bf16_value(logits[(size_t)r * vocab + c]);
            if (x[c] > m) m = x[c];
        }
        for (int c = 0; c < vocab; c++) s += exp(x[c] - m);
        const double ref_loss = m + log(s) - x[targets[r]];
        if (ref_loss < loss_min) loss_min = ref_loss;
        if (ref_loss > loss_max) loss_max = ref_loss;
        const double loss_err = fabs(loss[r] - ref_loss) / fmax(1.0, fabs(ref_loss));
        if (loss_err > worst_loss || isnan(loss_err)) worst_loss = isnan(loss_err) ? INFINITY : loss_err;
        for (int c = 0; c < vocab; c++) {
            const double ref = exp(x[c] - m) / s - (c == targets[r] ? 1.0 : 0.0);
            const double got = (double)ct_bf16_value(out[(size_t)r * vocab + c]);
            const double diff = fabs(got - ref);
            const double excess = isnan(diff) ? INFINITY : diff / (4e-3 * fabs(ref) + 2e-7);
            if (excess > worst_excess) worst_excess = excess;
            if (diff > worst_abs || isnan(diff)) worst_abs = isnan(diff) ? INFINITY : diff;
            if (fabs(ref) > 1e-5 && diff / fabs(ref) > worst_rel) worst_rel = diff / fabs(ref);
        }
    }
    const bool ok = worst_loss <= 2e-5 && worst_excess <= 1.0;
    printf("check fused cross-entropy %-44s loss rel err %.2e (tol 2e-5; losses %.3g..%.3g), gradient rel err %.2e "
           "(|ref| > 1e-5), abs err %.2e, worst / tolerance %.2f (tol 4e-3 |ref| + 2e-7) %s\n",
           name, worst_loss, loss_min, loss_max, worst_rel, worst_abs, worst_excess, ok ? "ok" : "FAIL");
    if (!ok) failures++;
    free(x), free(logits), free(out), free(targets), free(loss);
    cudaFree(d_base), cudaFree(d_targets), cudaFree(d_loss);
}

static void kernel_matches_reference(void **state) {
    (void)state;
    int devices = 0;
    if (cudaGetDeviceCount(&devices) != cudaSuccess || devices == 0) skip();
    failures = 0;
    fused_case("[9 x 32000] vectors, cached", 9, 32000, 0, LOGITS_RANDOM);
    fused_case("[9 x 1001] single elements, cached", 9, 1001, 0, LOGITS_RANDOM);
    fused_case("[3 x 160000] vectors, not cached (320 KB rows)", 3, 160000, 0, LOGITS_RANDOM);
    fused_case("[3 x 150001] single elements, not cached", 3, 150001, 0, LOGITS_RANDOM);
    fused_case("[5 x 32000] misaligned buffer (single elements)", 5, 32000, 1, LOGITS_RANDOM);
    fused_case("[6 x 32000] logits around +-1000", 6, 32000, 0, LOGITS_LARGE);
    fused_case("[6 x 4099] logits around +-1000", 6, 4099, 0, LOGITS_LARGE);
    fused_case("[6 x 32000] target probability ~1e-32", 6, 32000, 0, TARGET_TINY);
    fused_case("[6 x 777] target probability ~1e-30", 6, 777, 0, TARGET_TINY);
    fused_case("[6 x 32000] target probability ~1 - 2e-8", 6, 32000, 0, TARGET_CERTAIN);
    fused_case("[4 x 1] vocab 1", 4, 1, 0, LOGITS_RANDOM);
    fused_case("[4 x 8] vocab 8", 4, 8, 0, LOGITS_RANDOM);
    const int rc = xlkv_cuda_train_cross_entropy_fused_bf16(NULL, NULL, NULL, -1, 8, NULL);
    printf("check fused cross-entropy with n < 0 refused: %s\n", rc != 0 ? "ok" : "FAIL");
    if (rc == 0) failures++;
    if (failures) fail_msg("%d fused cross-entropy kernel check(s) failed", failures);
}

/* ---- 2. the trainer's classifier path --------------------------------------------------------------------------- */
typedef struct model_case {
    const char *map;
    int m, b, vocab;
} model_case;

static xlkv_hparams tiny_hparams(const model_case *c) {
    xlkv_hparams hp;
    xlkv_hparams_defaults(&hp);
    hp.dim = 64, hp.hidden_dim = 96, hp.n_layers = 4, hp.n_heads = 4, hp.n_kv_heads = 2, hp.head_dim = 16;
    hp.vocab_size = c->vocab, hp.max_seq_len = 64, hp.forward_passes = c->m, hp.backward_passes = c->b;
    return hp;
}

static xlkv_param_store *make_store(const model_case *c, unsigned long long seed) {
    xlkv_hparams hp = tiny_hparams(c);
    xlkv_param_store *store = NULL;
    TU_ASSERT_OK(xlkv_store_from_shape(&hp, c->map, seed, &store));
    /* logits not flat: the tied classifier x4 (the layers keep their initialisation, so attention stays soft and
     * bf16 rounding is not amplified by flipped attention weights; the RMSNorms hide the embedding's scale) */
    const size_t embedding = (size_t)hp.vocab_size * (size_t)hp.dim;
    for (size_t i = 0; i < embedding; i++) store->weights.tok_embeddings[i] *= 4.0f;
    return store;
}

static double rel_diff(double a, double b) {
    const double d = fabs(a - b) / fabs(b);
    return isnan(d) ? INFINITY : d;
}

static xlkv_trainer *make_trainer(const char *data, const model_case *c, long steps) {
    const xlkv_hparams hp = tiny_hparams(c);
    return tt_tiny_trainer(data, &hp, c->map, c->m, c->b, true, true, steps);
}

static void fused_matches_fp32_cross_entropy(void **state) {
    (void)state;
    int devices = 0;
    if (cudaGetDeviceCount(&devices) != cudaSuccess || devices == 0) skip();
    failures = 0;
    const model_case cases[] = {{"standard", 0, 2, 61}, {"standard", 0, 2, 320}, {"lckv:1", 1, 2, 320}};
    enum { B = 2, T = 24, N = B * T, N_CASES = sizeof cases / sizeof *cases };
    for (int ci = 0; ci < N_CASES; ci++) {
        const model_case *c = &cases[ci];
        int tokens[2][N], targets[2][N];
        for (int a = 0; a < 2; a++)
            for (int r = 0; r < N; r++) {
                tokens[a][r] = (int)((unsigned)(r * 37 + a * 11 + (r * r) % 13) % (unsigned)c->vocab);
                targets[a][r] = (int)((unsigned)(r * 17 + a * 5 + 3) % (unsigned)c->vocab);
            }
        xlkv_param_store *stores[3];
        double loss[3][2];
        for (int path = 0; path < 3; path++) { /* 0: fused (default), 1: XLKV_TRAIN_CE=fp32, 2: the f32 trainer */
            if (path == 1) setenv("XLKV_TRAIN_CE", "fp32", 1);
            else unsetenv("XLKV_TRAIN_CE");
            stores[path] = make_store(c, 5);
            xlkv_gpu_trainer *gt = NULL;
            TU_ASSERT_OK(xlkv_gpu_trainer_create(stores[path], B, T, c->m, c->b, path < 2, &gt));
            TU_ASSERT_OK(xlkv_gpu_trainer_zero_grads(gt));
            for (int a = 0; a < 2; a++) { /* two accumulated micro-batches, loss scale 0.5 */
                TU_ASSERT_OK(xlkv_gpu_trainer_forward(gt, tokens[a], targets[a], &loss[path][a]));
                TU_ASSERT_OK(xlkv_gpu_trainer_backward(gt, 0.5f));
            }
            TU_ASSERT_OK(xlkv_gpu_trainer_download(gt, stores[path], true));
            xlkv_gpu_trainer_free(gt);
        }
        unsetenv("XLKV_TRAIN_CE");
        const char *name_fp32 = "", *name_f32 = "", *name_old = "";
        const double err_fp32 = tt_worst_tensor_error(stores[1], stores[0]->grads, stores[1]->grads, &name_fp32);
        const double err_f32 = tt_worst_tensor_error(stores[2], stores[0]->grads, stores[2]->grads, &name_f32);
        const double err_old = tt_worst_tensor_error(stores[2], stores[1]->grads, stores[2]->grads, &name_old);
        const double loss_fp32 = fmax(rel_diff(loss[0][0], loss[1][0]), rel_diff(loss[0][1], loss[1][1]));
        const double loss_f32 = fmax(rel_diff(loss[0][0], loss[2][0]), rel_diff(loss[0][1], loss[2][1]));
        const double loss_old = fmax(rel_diff(loss[1][0], loss[2][0]), rel_diff(loss[1][1], loss[2][1]));
        const bool ok = err_fp32 <= 5e-2 && loss_fp32 <= 2e-3;
        printf("check fused vs XLKV_TRAIN_CE=fp32, %-8s m=%d b=%d vocab %3d, 2 micro-batches: gradients worst %.2e (%s; "
               "tol 5e-2), loss rel %.2e (tol 2e-3) %s\n", c->map, c->m, c->b, c->vocab, err_fp32, name_fp32,
               loss_fp32, ok ? "ok" : "FAIL");
        printf("info  vs the f32 trainer: fused gradients %.2e (%s), loss %.2e; XLKV_TRAIN_CE=fp32 gradients %.2e (%s), "
               "loss %.2e\n", err_f32, name_f32, loss_f32, err_old, name_old, loss_old);
        if (!ok) failures++;
        for (int path = 0; path < 3; path++) xlkv_param_store_free(stores[path]);
    }

    enum { STEPS = 6 };
    const model_case step_cases[] = {{"standard", 0, 2, 320}, {"lckv:1", 1, 2, 61}};
    for (int ci = 0; ci < 2; ci++) {
        char *data = tt_token_data_dir(6000, 5000, step_cases[ci].vocab);
        unsetenv("XLKV_TRAIN_CE");
        xlkv_trainer *fused = make_trainer(data, &step_cases[ci], STEPS);
        setenv("XLKV_TRAIN_CE", "fp32", 1);
        xlkv_trainer *fp32 = make_trainer(data, &step_cases[ci], STEPS);
        unsetenv("XLKV_TRAIN_CE");
        for (int s = 0; s < STEPS; s++) {
            TU_ASSERT_OK(xlkv_trainer_step(fused, NULL));
            TU_ASSERT_OK(xlkv_trainer_step(fp32, NULL));
        }
        double eval_fused, eval_fp32;
        TU_ASSERT_OK(xlkv_trainer_eval(fused, &eval_fused));
        TU_ASSERT_OK(xlkv_trainer_eval(fp32, &eval_fp32));
        double steps_diff = 0.0;
        printf("losses %s vocab %d: fused", step_cases[ci].map, step_cases[ci].vocab);
        for (int s = 0; s < STEPS; s++) printf(" %.6f", fused->train_losses[s]);
        printf(" | XLKV_TRAIN_CE=fp32");
        for (int s = 0; s < STEPS; s++) {
            printf(" %.6f", fp32->train_losses[s]);
            steps_diff = fmax(steps_diff, rel_diff(fused->train_losses[s], fp32->train_losses[s]));
        }
        printf(" | eval %.6f %.6f\n", eval_fused, eval_fp32);
        const double eval_diff = rel_diff(eval_fused, eval_fp32);
        const bool ok = steps_diff <= 5e-3 && eval_diff <= 5e-3;
        printf("check fused vs XLKV_TRAIN_CE=fp32, %d trainer steps of %-8s vocab %3d: losses max rel diff %.2e (tol "
               "5e-3), held-out %.2e (tol 5e-3) %s\n", STEPS, step_cases[ci].map, step_cases[ci].vocab, steps_diff,
               eval_diff, ok ? "ok" : "FAIL");
        if (!ok) failures++;
        xlkv_trainer_free(fused);
        xlkv_trainer_free(fp32);
        free(data);
    }
    if (failures) fail_msg("%d fused-vs-fp32 cross-entropy check(s) failed", failures);
}

/* ---- 3. the switch ---------------------------------------------------------------------------------------------- */
static void refused(const char *ce, const char *gemm) {
    const model_case c = {"standard", 0, 2, 61};
    setenv("XLKV_TRAIN_CE", ce, 1);
    if (gemm) setenv("XLKV_TRAIN_GEMM", gemm, 1);
    xlkv_param_store *store = make_store(&c, 5);
    xlkv_gpu_trainer *gt = NULL;
    const xlkv_status status = xlkv_gpu_trainer_create(store, 2, 8, 0, 2, true, &gt);
    unsetenv("XLKV_TRAIN_CE");
    unsetenv("XLKV_TRAIN_GEMM");
    const bool ok = status != XLKV_OK && !gt;
    printf("check XLKV_TRAIN_CE=%s%s%s refused: %s (%s)\n", ce, gemm ? " with XLKV_TRAIN_GEMM=" : "", gemm ? gemm : "",
           ok ? "ok" : "FAIL", xlkv_last_error());
    if (!ok) failures++;
    xlkv_gpu_trainer_free(gt);
    xlkv_param_store_free(store);
}

/* device bytes taken by creating a bf16 trainer (vocab 32,000, 4 x 64 rows) under XLKV_TRAIN_CE=ce */
static double trainer_bytes(const char *ce) {
    const model_case c = {"standard", 0, 2, 32000};
    setenv("XLKV_TRAIN_CE", ce, 1);
    xlkv_param_store *store = make_store(&c, 5);
    size_t free_before = 0, free_after = 0, total = 0;
    CK(cudaDeviceSynchronize());
    CK(cudaMemGetInfo(&free_before, &total));
    xlkv_gpu_trainer *gt = NULL;
    TU_ASSERT_OK(xlkv_gpu_trainer_create(store, 4, 64, 0, 2, true, &gt));
    CK(cudaMemGetInfo(&free_after, &total));
    xlkv_gpu_trainer_free(gt);
    xlkv_param_store_free(store);
    unsetenv("XLKV_TRAIN_CE");
    return (double)free_before - (double)free_after;
}

static void switches_and_memory(void **state) {
    (void)state;
    int devices = 0;
    if (cudaGetDeviceCount(&devices) != cudaSuccess || devices == 0) skip();
    failures = 0;
    refused("bogus", NULL);
    refused("fused", "fp32ops");
    /* the fused path keeps no fp32 probabilities: 4 N vocab bytes fewer (N = 256, vocab 32,000: 32.8 MB) */
    (void)trainer_bytes("fused"); /* warm-up: the context's own allocations */
    const double fused = trainer_bytes("fused"), fp32 = trainer_bytes("fp32");
    const double expected = 4.0 * 256 * 32000, saved = fp32 - fused;
    const bool ok = fabs(saved - expected) <= 0.1 * expected + 4.0 * (1 << 20);
    printf("check device memory of a bf16 trainer (vocab 32000, 256 rows): fused %.1f MB, XLKV_TRAIN_CE=fp32 %.1f MB, "
           "saved %.1f MB (expected the fp32 probabilities, %.1f MB, within 10%% + 4 MiB) %s\n", fused / 1e6,
           fp32 / 1e6, saved / 1e6, expected / 1e6, ok ? "ok" : "FAIL");
    if (!ok) failures++;
    if (failures) fail_msg("%d switch / memory check(s) failed", failures);
}

int main(void) {
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(kernel_matches_reference),
        cmocka_unit_test(fused_matches_fp32_cross_entropy),
        cmocka_unit_test(switches_and_memory),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
