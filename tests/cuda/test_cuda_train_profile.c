/* tests/cuda/test_cuda_train_profile: the GPU trainer's step profiler (xlkv_gpu_trainer_set_profile,
 * backend/cuda/train_profile.c) on a tiny model under standard, cla:2 and lckv:1 (m 1, b 2), f32 and bf16:
 *   - results are the same bits with the profiler on: parameters and AdamW moments after 3 steps, and the losses;
 *   - each profiled step is counted once (an evaluation forward between steps adds nothing), every category the
 *     single-GPU step runs has intervals (allreduce_wait has none), and the categories' sum (the step's GPU timeline)
 *     lies between 30 % and 102 % of the step's host wall time;
 *   - XLKV_TRAIN_PROFILE=1 turns it on at create, "0" leaves it off; set_profile(false) turns it off.
 * Prints "check ..." lines and each map's table. Needs a GPU (label cuda). */
#define _DEFAULT_SOURCE /* setenv */
#include <cuda_runtime_api.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "core/timing.h"
#include "testutil.h"
#include "train/gpu_trainer.h"
#include "train/model_setup.h"
#include "train/step_profile.h"

enum { VOCAB = 61, B = 2, T = 24, N = B * T, STEPS = 3 };

static xlkv_param_store *make_store(const char *map, int m, int b) {
    xlkv_hparams hp;
    xlkv_hparams_defaults(&hp);
    hp.dim = 64, hp.hidden_dim = 96, hp.n_layers = 4, hp.n_heads = 4, hp.n_kv_heads = 2, hp.head_dim = 16;
    hp.vocab_size = VOCAB, hp.max_seq_len = 64, hp.forward_passes = m, hp.backward_passes = b;
    xlkv_param_store *store = NULL;
    TU_ASSERT_OK(xlkv_store_from_shape(&hp, map, 5, &store));
    return store;
}

/* STEPS steps; the losses in loss[], the host wall time of the steps in *wall_ms; an evaluation forward after the
 * first step (as xlkv train does between steps) */
static void run_steps(xlkv_gpu_trainer *gt, double loss[STEPS], double *wall_ms) {
    int tokens[N], targets[N];
    for (int r = 0; r < N; r++) {
        tokens[r] = (r * 37 + (r * r) % 13) % VOCAB;
        targets[r] = (r * 17 + 3) % VOCAB;
    }
    const xlkv_adamw_params adamw = xlkv_adamw_default_params();
    *wall_ms = 0.0;
    for (int s = 0; s < STEPS; s++) {
        double norm = 0.0;
        const double start = xlkv_now_seconds();
        TU_ASSERT_OK(xlkv_gpu_trainer_zero_grads(gt));
        TU_ASSERT_OK(xlkv_gpu_trainer_forward(gt, tokens, targets, &loss[s]));
        TU_ASSERT_OK(xlkv_gpu_trainer_backward(gt, 1.0f));
        TU_ASSERT_OK(xlkv_gpu_trainer_clip_grad_norm(gt, 1.0, &norm));
        TU_ASSERT_OK(xlkv_gpu_trainer_adamw_step(gt, &adamw, 1e-3f, s + 1));
        TU_ASSERT_OK(xlkv_gpu_trainer_synchronize(gt));
        *wall_ms += 1e3 * (xlkv_now_seconds() - start);
        double eval_loss = 0.0;
        if (s == 0) TU_ASSERT_OK(xlkv_gpu_trainer_forward(gt, targets, tokens, &eval_loss));
    }
}

static int check_map(const char *map, int m, int b, bool bf16) {
    int failures = 0;
    xlkv_param_store *plain = make_store(map, m, b), *profiled = make_store(map, m, b);
    xlkv_gpu_trainer *g_plain = NULL, *g_profiled = NULL;
    TU_ASSERT_OK(xlkv_gpu_trainer_create(plain, B, T, m, b, bf16, &g_plain));
    TU_ASSERT_OK(xlkv_gpu_trainer_create(profiled, B, T, m, b, bf16, &g_profiled));
    assert_null(xlkv_gpu_trainer_profile(g_plain));
    TU_ASSERT_OK(xlkv_gpu_trainer_set_profile(g_profiled, true));
    double loss_plain[STEPS], loss_profiled[STEPS], wall_plain = 0.0, wall_profiled = 0.0;
    run_steps(g_plain, loss_plain, &wall_plain);
    run_steps(g_profiled, loss_profiled, &wall_profiled);
    TU_ASSERT_OK(xlkv_gpu_trainer_download(g_plain, plain, true));
    TU_ASSERT_OK(xlkv_gpu_trainer_download(g_profiled, profiled, true));
    const size_t bytes = plain->n_params * sizeof(float);
    const bool same = !memcmp(plain->params, profiled->params, bytes) && !memcmp(plain->adam_m, profiled->adam_m, bytes) &&
                      !memcmp(plain->adam_v, profiled->adam_v, bytes) && !memcmp(plain->grads, profiled->grads, bytes) &&
                      !memcmp(loss_plain, loss_profiled, sizeof loss_plain);
    printf("check profiler leaves results unchanged, %-8s %s: parameters, moments, gradients, losses after %d steps "
           "bit-identical: %s\n", map, bf16 ? "bf16" : "f32", STEPS, same ? "ok" : "FAIL");
    failures += !same;

    const xlkv_step_profile *p = xlkv_gpu_trainer_profile(g_profiled);
    assert_non_null(p);
    bool categories_ok = p->steps == STEPS;
    for (int c = 0; c < XLKV_STEP_N_CATEGORIES; c++) {
        const bool expected = c != XLKV_STEP_ALLREDUCE_WAIT;
        if ((p->intervals[c] > 0) != expected) {
            printf("  category %s: %ld intervals (expected %s)\n", xlkv_step_category_name(c), p->intervals[c],
                   expected ? "some" : "none");
            categories_ok = false;
        }
    }
    printf("check profile bookkeeping, %-8s %s: %ld steps counted (expected %d), every single-GPU category timed: %s\n",
           map, bf16 ? "bf16" : "f32", p->steps, STEPS, categories_ok ? "ok" : "FAIL");
    failures += !categories_ok;
    const double gpu_ms = xlkv_step_profile_step_ms(p), wall_ms = wall_profiled / STEPS;
    const bool timeline_ok = gpu_ms >= 0.3 * wall_ms && gpu_ms <= 1.02 * wall_ms + 0.05;
    printf("check profile timeline, %-8s %s: categories sum %.3f ms per step, host wall %.3f ms (unprofiled %.3f), "
           "ratio %.2f (within [0.30, 1.02]): %s\n", map, bf16 ? "bf16" : "f32", gpu_ms, wall_ms, wall_plain / STEPS,
           wall_ms > 0 ? gpu_ms / wall_ms : 0.0, timeline_ok ? "ok" : "FAIL");
    failures += !timeline_ok;
    xlkv_step_profile_print(p, stdout);

    TU_ASSERT_OK(xlkv_gpu_trainer_set_profile(g_profiled, false));
    assert_null(xlkv_gpu_trainer_profile(g_profiled));
    xlkv_gpu_trainer_free(g_plain);
    xlkv_gpu_trainer_free(g_profiled);
    xlkv_param_store_free(plain);
    xlkv_param_store_free(profiled);
    return failures;
}

static void profiler_times_every_category_without_changing_results(void **state) {
    (void)state;
    int devices = 0;
    if (cudaGetDeviceCount(&devices) != cudaSuccess || devices == 0) skip();
    int failures = 0;
    for (int bf16 = 0; bf16 < 2; bf16++) {
        failures += check_map("standard", 0, 2, bf16);
        failures += check_map("cla:2", 0, 2, bf16);
        failures += check_map("lckv:1", 1, 2, bf16);
    }
    if (failures) fail_msg("%d profiler check(s) failed", failures);
}

static void environment_turns_it_on_at_create(void **state) {
    (void)state;
    int devices = 0;
    if (cudaGetDeviceCount(&devices) != cudaSuccess || devices == 0) skip();
    xlkv_param_store *store = make_store("standard", 0, 2);
    xlkv_gpu_trainer *gt = NULL;
    setenv("XLKV_TRAIN_PROFILE", "1", 1);
    TU_ASSERT_OK(xlkv_gpu_trainer_create(store, B, T, 0, 2, false, &gt));
    const bool on = xlkv_gpu_trainer_profile(gt) != NULL;
    xlkv_gpu_trainer_free(gt);
    setenv("XLKV_TRAIN_PROFILE", "0", 1);
    TU_ASSERT_OK(xlkv_gpu_trainer_create(store, B, T, 0, 2, false, &gt));
    const bool off = xlkv_gpu_trainer_profile(gt) == NULL;
    xlkv_gpu_trainer_free(gt);
    unsetenv("XLKV_TRAIN_PROFILE");
    printf("check XLKV_TRAIN_PROFILE: =1 turns the profiler on (%s), =0 leaves it off (%s)\n", on ? "ok" : "FAIL",
           off ? "ok" : "FAIL");
    xlkv_param_store_free(store);
    assert_true(on && off);
}

int main(void) {
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(profiler_times_every_category_without_changing_results),
        cmocka_unit_test(environment_turns_it_on_at_create),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
