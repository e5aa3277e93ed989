/* bench/bench_train_gpu: training-step speed of the CUDA trainer (train/gpu_trainer.h) at a named shape (default
 * `small`: 12 layers, 768 hidden, 12/6 heads, ffn 2048, vocab 32000) with batch 16 x seq 1024, under a list of layer
 * maps (default standard, cla:2, lckv:2 with the model's m = 7, b = 2). One step = zero gradients, forward, backward,
 * global-norm clip, AdamW, exactly as `xlkv train --device cuda` does (random tokens; no data loading).
 * Reports per map: median step time over --steps timed steps after --warmup, tokens/s, and MFU = executed FLOPs
 * (xlkv_train_flops: products and attention, forward + 2x backward, no-grad iterations forward only) / time /
 * --peak-tflops (default 989, the H100 SXM bf16 dense peak). Prints a table and writes JSON lines to --out
 * (default bench/results/train_gpu.jsonl). Without CUDA it says so and exits 0.
 * Usage: bench_train_gpu [--shape small] [--vocab 32000] [--batch 16] [--seq 1024] [--maps standard,cla:2,lckv:2]
 *                        [--dtype bf16|f32] [--steps 5] [--warmup 2] [--peak-tflops 989] [--out FILE] */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "core/status.h"
#include "core/timing.h"
#include "train/gpu_trainer.h"
#include "train/model_setup.h"
#include "train/train_graph.h"

#ifdef XLKV_HAVE_CUDA
static int compare_doubles(const void *a, const void *b) {
    const double x = *(const double *)a, y = *(const double *)b;
    return (x > y) - (x < y);
}

static int run_map(const char *shape, int vocab, int batch, int seq, const char *map, bool bf16, int steps,
                   int warmup, double peak, FILE *json) {
    xlkv_hparams hp;
    xlkv_param_store *store = NULL;
    xlkv_gpu_trainer *gt = NULL;
    int *tokens = malloc((size_t)batch * seq * sizeof *tokens), *targets = malloc((size_t)batch * seq * sizeof *targets);
    double *times = calloc((size_t)steps, sizeof *times);
    int rc = 1;
    if (!tokens || !targets || !times) goto done;
    if (xlkv_train_shape(shape, vocab, &hp) != XLKV_OK || xlkv_store_from_shape(&hp, map, 1, &store) != XLKV_OK ||
        xlkv_gpu_trainer_create(store, batch, seq, store->hp.forward_passes, store->hp.backward_passes, bf16, &gt) !=
            XLKV_OK) {
        fprintf(stderr, "bench_train_gpu: %s: %s\n", map, xlkv_last_error());
        goto done;
    }
    unsigned long long s = 12345;
    for (int i = 0; i < batch * seq; i++) {
        s = s * 6364136223846793005ull + 1442695040888963407ull;
        tokens[i] = (int)((s >> 33) % (unsigned)vocab);
        targets[i] = (int)((s >> 13) % (unsigned)vocab);
    }
    const xlkv_adamw_params adamw = xlkv_adamw_default_params();
    double loss = 0.0, norm = 0.0;
    for (int step = 0; step < warmup + steps; step++) {
        const double start = xlkv_now_seconds();
        if (xlkv_gpu_trainer_zero_grads(gt) != XLKV_OK || xlkv_gpu_trainer_forward(gt, tokens, targets, &loss) ||
            xlkv_gpu_trainer_backward(gt, 1.0f) || xlkv_gpu_trainer_clip_grad_norm(gt, 1.0, &norm) ||
            xlkv_gpu_trainer_adamw_step(gt, &adamw, 1e-4f, step + 1) || xlkv_gpu_trainer_synchronize(gt)) {
            fprintf(stderr, "bench_train_gpu: %s: %s\n", map, xlkv_last_error());
            goto done;
        }
        if (step >= warmup) times[step - warmup] = xlkv_now_seconds() - start;
    }
    qsort(times, (size_t)steps, sizeof *times, compare_doubles);
    const double median = times[steps / 2];
    const double flops = xlkv_train_flops(store, batch, seq, store->hp.forward_passes, store->hp.backward_passes);
    const double tokens_per_s = (double)batch * seq / median, mfu = flops / median / (peak * 1e12);
    char *map_text = xlkv_layer_map_to_string(store->map);
    printf("%-10s %-24s m=%d b=%d  step %8.1f ms  %10.0f tok/s  %6.2f TFLOP/step  MFU %5.1f%%  loss %.3f\n", map,
           map_text ? map_text : "?", store->hp.forward_passes, store->hp.backward_passes, median * 1e3, tokens_per_s,
           flops / 1e12, 100.0 * mfu, loss);
    if (json)
        fprintf(json,
                "{\"bench\": \"train_gpu\", \"shape\": \"%s\", \"vocab\": %d, \"batch\": %d, \"seq\": %d, \"map\": \"%s\", "
                "\"layer_types\": \"%s\", \"m\": %d, \"b\": %d, \"dtype\": \"%s\", \"steps\": %d, \"median_step_s\": %.6f, "
                "\"tokens_per_s\": %.1f, \"flops_per_step\": %.6e, \"peak_tflops\": %.1f, \"mfu\": %.4f}\n",
                shape, vocab, batch, seq, map, map_text ? map_text : "?", store->hp.forward_passes,
                store->hp.backward_passes, bf16 ? "bf16" : "f32", steps, median, tokens_per_s, flops, peak, mfu);
    free(map_text);
    rc = 0;
done:
    xlkv_gpu_trainer_free(gt);
    xlkv_param_store_free(store);
    free(tokens), free(targets), free(times);
    return rc;
}
#endif

int main(int argc, char **argv) {
#ifndef XLKV_HAVE_CUDA
    (void)argc, (void)argv;
    printf("bench_train_gpu: xlkv was built without CUDA; nothing to measure\n");
    return 0;
#else
    const char *shape = "small", *maps = "standard,cla:2,lckv:2", *out = "bench/results/train_gpu.jsonl";
    int vocab = 32000, batch = 16, seq = 1024, steps = 5, warmup = 2;
    double peak = 989.0;
    bool bf16 = true;
    for (int i = 1; i < argc; i++) {
        const char *a = argv[i], *v = i + 1 < argc ? argv[i + 1] : NULL;
        if (!v) {
            fprintf(stderr, "bench_train_gpu: %s needs a value\n", a);
            return 2;
        }
        i++;
        if (!strcmp(a, "--shape")) shape = v;
        else if (!strcmp(a, "--maps")) maps = v;
        else if (!strcmp(a, "--out")) out = v;
        else if (!strcmp(a, "--vocab")) vocab = atoi(v);
        else if (!strcmp(a, "--batch")) batch = atoi(v);
        else if (!strcmp(a, "--seq")) seq = atoi(v);
        else if (!strcmp(a, "--steps")) steps = atoi(v);
        else if (!strcmp(a, "--warmup")) warmup = atoi(v);
        else if (!strcmp(a, "--peak-tflops")) peak = atof(v);
        else if (!strcmp(a, "--dtype")) bf16 = strcmp(v, "f32") != 0;
        else {
            fprintf(stderr, "bench_train_gpu: unknown option %s\n", a);
            return 2;
        }
    }
    if (vocab <= 0 || batch <= 0 || seq <= 0 || steps <= 0 || warmup < 0 || !(peak > 0)) {
        fprintf(stderr, "bench_train_gpu: vocab, batch, seq, steps and peak must be positive\n");
        return 2;
    }
    FILE *json = fopen(out, "a");
    if (!json) fprintf(stderr, "bench_train_gpu: cannot write %s; table only\n", out);
    printf("bench_train_gpu: shape %s, vocab %d, batch %d x %d, %s, median of %d steps after %d warm-up, MFU against "
           "%.0f TFLOP/s\n", shape, vocab, batch, seq, bf16 ? "bf16" : "f32", steps, warmup, peak);
    char *list = strdup(maps);
    int rc = 0;
    for (char *save = NULL, *map = strtok_r(list, ",", &save); map; map = strtok_r(NULL, ",", &save))
        rc |= run_map(shape, vocab, batch, seq, map, bf16, steps, warmup, peak, json);
    free(list);
    if (json) fclose(json);
    return rc;
#endif
}
