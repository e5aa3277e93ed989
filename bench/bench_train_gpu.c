/* bench/bench_train_gpu: training-step speed of the CUDA trainer (train/gpu_trainer.h) at a named shape (default
 * `small`: 12 layers, 768 hidden, 12/6 heads, ffn 2048, vocab 32000) with batch 16 x seq 1024,
 * under a list of layer maps (default standard, cla:2, lckv:2 with the model's m = 7, b = 2). One step = zero
 * gradients, forward, backward, global-norm clip, AdamW, exactly as `xlkv train --device cuda` does (random tokens;
 * no data loading).
 *
 * Reports per map: median step time over --steps timed steps after --warmup, tokens/s, and
 *   MFU = flops_per_step / median step time / (--peak-tflops x 1e12)   (default 989, the H100 SXM bf16 dense peak)
 * with flops_per_step = xlkv_train_flops (train/train_graph.c), N = batch x seq tokens:
 *   per layer execution  F(l) = 2 N (2 dim q_dim + 3 dim ffn + [l computes K/V] 2 dim kv_dim) + 4 N v(l) q_dim,
 *                        v(l) = (seq + 1) / 2 visible keys (causal), or the window of a sliding-window layer;
 *   flops_per_step = 3 (2 N dim vocab + sum of F over the executed grad layers) + sum of F over no-grad iterations
 *   (forward + 2x backward for what gets gradients; cyclic groups: b grad iterations, m no-grad iterations forward
 *   only). scripts/bench_train_torch.py uses the same formula (checked by tests/cli_bench_train_torch.sh).
 * and MFU (6N) by BENCHMARKS.md's convention, whose reference figures (PyTorch on the 127 M `small` model: 17.8% and
 * 33.6%) count 6 FLOPs per token for every parameter, the looked-up input embedding table included:
 *   flops_per_step_6n = flops_per_step + 6 N vocab dim with untied embeddings (xlkv_train_flops_6n).
 * --embeddings untied (default: BENCHMARKS.md's 127 M model, a separate classifier matrix, as Llama) or tied (the
 * named shapes' default for `xlkv train`: the classifier is the embedding table, 102 M parameters).
 *
 * --profile: after the timed steps, as many steps again with the trainer's step profiler on
 * (xlkv_gpu_trainer_set_profile), printing ms per step and % of the step per operation category, sorted; the JSON
 * line carries it as "profile" (the timed steps run without the profiler's events). XLKV_TRAIN_GEMM=fp32ops (see
 * backend/cuda/train_gpu.c) is passed through to the trainer and recorded as "train_gemm" for A/B runs, and
 * XLKV_TRAIN_CE=fp32 (the classifier's former cross-entropy) as "train_ce", and XLKV_TRAIN_GEMM_LT (the products
 * through cuBLASLt: heuristic, tune or tune=FILE; backend/cuda/train_gemm_lt.h) as "train_gemm_lt".
 * Prints a table and appends one JSON line per map to --out (default bench/results/train_gpu.jsonl), flushed as soon
 * as the map is done; a map that fails gets a line with "error" and the next maps still run (exit status 1).
 * --flops-only prints each map's parameter count and flops_per_step as JSON (no GPU needed). Without CUDA it says
 * so and exits 0.
 * Usage: bench_train_gpu [--shape small] [--vocab 32000] [--batch 16] [--seq 1024] [--maps standard,cla:2,lckv:2]
 *                        [--dtype bf16|f32] [--embeddings untied|tied] [--steps 5] [--warmup 2]
 *                        [--peak-tflops 989] [--out FILE] [--profile] [--flops-only] */
#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <cjson/cJSON.h>

#include "core/status.h"
#include "core/timing.h"
#include "train/gpu_trainer.h"
#include "train/model_setup.h"
#include "train/step_profile.h"
#include "train/train_graph.h"

#include "bench_json_line.h"

#ifdef XLKV_HAVE_CUDA
#include <cuda_runtime.h>
#endif

typedef struct bench_options {
    const char *shape, *maps, *out;
    int vocab, batch, seq, steps, warmup;
    double peak;
    bool bf16, profile, flops_only, untied;
} bench_options;

/* The map's JSON line: the options, then what the run adds (cJSON: error messages are escaped). */
static cJSON *line_of(const bench_options *o, const char *map) {
    cJSON *line = bench_json_line("train_gpu");
    cJSON_AddStringToObject(line, "shape", o->shape);
    cJSON_AddNumberToObject(line, "vocab", o->vocab);
    cJSON_AddNumberToObject(line, "batch", o->batch);
    cJSON_AddNumberToObject(line, "seq", o->seq);
    cJSON_AddStringToObject(line, "map", map);
    cJSON_AddStringToObject(line, "dtype", o->bf16 ? "bf16" : "f32");
    cJSON_AddStringToObject(line, "embeddings", o->untied ? "untied" : "tied");
    return line;
}

static xlkv_status store_of(const bench_options *o, const char *map, xlkv_param_store **store) {
    xlkv_hparams hp;
    XLKV_TRY(xlkv_train_shape(o->shape, o->vocab, &hp));
    hp.tied_embeddings = !o->untied;
    return xlkv_store_from_shape(&hp, map, 1, store);
}

static double flops_of(const bench_options *o, const xlkv_param_store *store) {
    return xlkv_train_flops(store, o->batch, o->seq, store->hp.forward_passes, store->hp.backward_passes);
}

static double flops_6n_of(const bench_options *o, const xlkv_param_store *store) {
    return xlkv_train_flops_6n(store, o->batch, o->seq, store->hp.forward_passes, store->hp.backward_passes);
}

static int flops_map(const bench_options *o, const char *map) {
    xlkv_param_store *store = NULL;
    cJSON *line = line_of(o, map);
    int rc = 0;
    if (store_of(o, map, &store) == XLKV_OK) {
        cJSON_AddNumberToObject(line, "params", (double)store->n_params);
        cJSON_AddNumberToObject(line, "flops_per_step", flops_of(o, store));
        cJSON_AddNumberToObject(line, "flops_per_step_6n", flops_6n_of(o, store));
    } else {
        cJSON_AddStringToObject(line, "error", xlkv_last_error());
        rc = 1;
    }
    bench_json_write(line, stdout);
    xlkv_param_store_free(store);
    return rc;
}

#ifdef XLKV_HAVE_CUDA
static int compare_doubles(const void *a, const void *b) {
    const double x = *(const double *)a, y = *(const double *)b;
    return (x > y) - (x < y);
}

static xlkv_status one_step(xlkv_gpu_trainer *gt, const int *tokens, const int *targets, long step, double *loss) {
    const xlkv_adamw_params adamw = xlkv_adamw_default_params();
    double norm = 0.0;
    XLKV_TRY(xlkv_gpu_trainer_zero_grads(gt));
    XLKV_TRY(xlkv_gpu_trainer_forward(gt, tokens, targets, loss));
    XLKV_TRY(xlkv_gpu_trainer_backward(gt, 1.0f));
    XLKV_TRY(xlkv_gpu_trainer_clip_grad_norm(gt, 1.0, NULL)); /* as the trainer: the norm is read after the step */
    XLKV_TRY(xlkv_gpu_trainer_adamw_step(gt, &adamw, 1e-4f, step));
    XLKV_TRY(xlkv_gpu_trainer_synchronize(gt));
    return xlkv_gpu_trainer_grad_norm(gt, &norm);
}

/* Runs one map; fills the JSON line (and prints the table row and the profile). */
static xlkv_status measure_map(const bench_options *o, const char *map, cJSON *line) {
    xlkv_param_store *store = NULL;
    xlkv_gpu_trainer *gt = NULL;
    const size_t n = (size_t)o->batch * (size_t)o->seq;
    int *tokens = malloc(n * sizeof *tokens), *targets = malloc(n * sizeof *targets);
    double *times = calloc((size_t)o->steps, sizeof *times);
    char *map_text = NULL;
    xlkv_status status = tokens && targets && times ? XLKV_OK : xlkv_fail(XLKV_E_NOMEM, "out of host memory");
    if (status == XLKV_OK) status = store_of(o, map, &store);
    if (status == XLKV_OK)
        status = xlkv_gpu_trainer_create(store, o->batch, o->seq, store->hp.forward_passes, store->hp.backward_passes,
                                         o->bf16, &gt);
    unsigned long long s = 12345;
    for (size_t i = 0; status == XLKV_OK && i < n; i++) {
        s = s * 6364136223846793005ull + 1442695040888963407ull;
        tokens[i] = (int)((s >> 33) % (unsigned)o->vocab);
        targets[i] = (int)((s >> 13) % (unsigned)o->vocab);
    }
    double loss = 0.0;
    long step = 0;
    for (int i = 0; status == XLKV_OK && i < o->warmup + o->steps; i++) {
        const double start = xlkv_now_seconds();
        status = one_step(gt, tokens, targets, ++step, &loss);
        if (i >= o->warmup) times[i - o->warmup] = xlkv_now_seconds() - start;
    }
    if (status == XLKV_OK) {
        qsort(times, (size_t)o->steps, sizeof *times, compare_doubles);
        const double median = times[o->steps / 2], flops = flops_of(o, store), flops_6n = flops_6n_of(o, store);
        const double tokens_per_s = (double)n / median, mfu = flops / median / (o->peak * 1e12);
        const double mfu_6n = flops_6n / median / (o->peak * 1e12);
        map_text = xlkv_layer_map_to_string(store->map);
        printf("%-10s %-24s m=%d b=%d  step %8.1f ms  %10.0f tok/s  %6.2f TFLOP/step  MFU %5.1f%% (6N: %5.1f%%)  "
               "loss %.3f\n", map, map_text ? map_text : "?", store->hp.forward_passes, store->hp.backward_passes,
               median * 1e3, tokens_per_s, flops / 1e12, 100.0 * mfu, 100.0 * mfu_6n, loss);
        fflush(stdout);
        cJSON_AddStringToObject(line, "layer_types", map_text ? map_text : "?");
        cJSON_AddNumberToObject(line, "m", store->hp.forward_passes);
        cJSON_AddNumberToObject(line, "b", store->hp.backward_passes);
        cJSON_AddNumberToObject(line, "params", (double)store->n_params);
        cJSON_AddNumberToObject(line, "steps", o->steps);
        cJSON_AddNumberToObject(line, "median_step_s", median);
        cJSON_AddNumberToObject(line, "tokens_per_s", tokens_per_s);
        cJSON_AddNumberToObject(line, "flops_per_step", flops);
        cJSON_AddNumberToObject(line, "peak_tflops", o->peak);
        cJSON_AddNumberToObject(line, "mfu", mfu);
        cJSON_AddNumberToObject(line, "flops_per_step_6n", flops_6n);
        cJSON_AddNumberToObject(line, "mfu_6n", mfu_6n);
        cJSON_AddNumberToObject(line, "loss", loss);
        const char *gemm = getenv("XLKV_TRAIN_GEMM"); /* the products' operands (train_gpu.c), for A/B runs */
        cJSON_AddStringToObject(line, "train_gemm", gemm && *gemm ? gemm : "default");
        const char *ce = getenv("XLKV_TRAIN_CE"); /* the classifier's cross-entropy (train_gpu.c), for A/B runs */
        cJSON_AddStringToObject(line, "train_ce", ce && *ce ? ce : "default");
        const char *lt = getenv("XLKV_TRAIN_GEMM_LT"); /* cuBLASLt for the products (train_gemm_lt.c), for A/B runs */
        cJSON_AddStringToObject(line, "train_gemm_lt", lt && *lt ? lt : "cublasGemmEx");
    }
    if (status == XLKV_OK && o->profile) {
        status = xlkv_gpu_trainer_set_profile(gt, true);
        for (int i = 0; status == XLKV_OK && i < o->steps; i++) status = one_step(gt, tokens, targets, ++step, &loss);
        const xlkv_step_profile *profile = status == XLKV_OK ? xlkv_gpu_trainer_profile(gt) : NULL;
        if (profile) {
            printf("  profile of %s (%ld steps with timing events; ms per step, %% of the step):\n", map,
                   profile->steps);
            xlkv_step_profile_print(profile, stdout);
            fflush(stdout);
            char *text = xlkv_step_profile_to_json(profile);
            cJSON *parsed = text ? cJSON_Parse(text) : NULL;
            if (parsed) cJSON_AddItemToObject(line, "profile", parsed);
            free(text);
        }
    }
    free(map_text);
    xlkv_gpu_trainer_free(gt);
    xlkv_param_store_free(store);
    free(tokens), free(targets), free(times);
    return status;
}

static int run_map(const bench_options *o, const char *map, FILE *json) {
    cJSON *line = line_of(o, map);
    struct cudaDeviceProp prop;
    int device = 0;
    if (cudaGetDevice(&device) == cudaSuccess && cudaGetDeviceProperties(&prop, device) == cudaSuccess)
        cJSON_AddStringToObject(line, "device", prop.name);
    const xlkv_status status = measure_map(o, map, line);
    if (status != XLKV_OK) {
        fprintf(stderr, "bench_train_gpu: %s: %s\n", map, xlkv_last_error());
        cJSON_AddStringToObject(line, "error", xlkv_last_error());
    }
    bench_json_write(line, json ? json : stdout); /* no results file: the line on stdout */
    return status == XLKV_OK ? 0 : 1;
}
#endif

static int parse_options(int argc, char **argv, bench_options *o) {
    *o = (bench_options){.shape = "small", .maps = "standard,cla:2,lckv:2", .out = "bench/results/train_gpu.jsonl",
                         .vocab = 32000, .batch = 16, .seq = 1024, .steps = 5, .warmup = 2, .peak = 989.0,
                         .bf16 = true, .untied = true};
    for (int i = 1; i < argc; i++) {
        const char *a = argv[i];
        if (!strcmp(a, "--profile")) {
            o->profile = true;
            continue;
        }
        if (!strcmp(a, "--flops-only")) {
            o->flops_only = true;
            continue;
        }
        const char *v = i + 1 < argc ? argv[i + 1] : NULL;
        if (!v) {
            fprintf(stderr, "bench_train_gpu: %s needs a value\n", a);
            return 2;
        }
        i++;
        if (!strcmp(a, "--shape")) o->shape = v;
        else if (!strcmp(a, "--maps")) o->maps = v;
        else if (!strcmp(a, "--out")) o->out = v;
        else if (!strcmp(a, "--vocab")) o->vocab = atoi(v);
        else if (!strcmp(a, "--batch")) o->batch = atoi(v);
        else if (!strcmp(a, "--seq")) o->seq = atoi(v);
        else if (!strcmp(a, "--steps")) o->steps = atoi(v);
        else if (!strcmp(a, "--warmup")) o->warmup = atoi(v);
        else if (!strcmp(a, "--peak-tflops")) o->peak = atof(v);
        else if (!strcmp(a, "--dtype") && (!strcmp(v, "bf16") || !strcmp(v, "f32"))) o->bf16 = !strcmp(v, "bf16");
        else if (!strcmp(a, "--embeddings") && (!strcmp(v, "untied") || !strcmp(v, "tied")))
            o->untied = !strcmp(v, "untied");
        else {
            fprintf(stderr, "bench_train_gpu: unknown option %s %s\n", a, v);
            return 2;
        }
    }
    if (o->vocab <= 0 || o->batch <= 0 || o->seq <= 0 || o->steps <= 0 || o->warmup < 0 || !(o->peak > 0)) {
        fprintf(stderr, "bench_train_gpu: vocab, batch, seq, steps and peak must be positive\n");
        return 2;
    }
    return 0;
}

int main(int argc, char **argv) {
    bench_options o;
    const int bad = parse_options(argc, argv, &o);
    if (bad) return bad;
    char *list = strdup(o.maps);
    if (!list) return 1;
    int rc = 0;
    if (o.flops_only) {
        for (char *save = NULL, *map = strtok_r(list, ",", &save); map; map = strtok_r(NULL, ",", &save))
            rc |= flops_map(&o, map);
        free(list);
        return rc;
    }
#ifndef XLKV_HAVE_CUDA
    printf("bench_train_gpu: xlkv was built without CUDA; nothing to measure\n");
#else
    FILE *json = fopen(o.out, "a");
    if (!json) fprintf(stderr, "bench_train_gpu: cannot write %s (run from the repository root, or --out FILE); "
                               "table only\n", o.out);
    const char *gemm = getenv("XLKV_TRAIN_GEMM"), *ce = getenv("XLKV_TRAIN_CE"), *lt = getenv("XLKV_TRAIN_GEMM_LT");
    printf("bench_train_gpu: shape %s (%s embeddings), vocab %d, batch %d x %d, %s (XLKV_TRAIN_GEMM=%s, "
           "XLKV_TRAIN_CE=%s, XLKV_TRAIN_GEMM_LT=%s), median of %d steps after %d warm-up, MFU (executed FLOPs; 6N: "
           "BENCHMARKS.md's count) against %.0f TFLOP/s%s\n", o.shape, o.untied ? "untied" : "tied",
           o.vocab, o.batch, o.seq, o.bf16 ? "bf16" : "f32", gemm && *gemm ? gemm : "default",
           ce && *ce ? ce : "default", lt && *lt ? lt : "unset (cublasGemmEx)", o.steps, o.warmup, o.peak,
           o.profile ? ", then as many profiled steps" : "");
    fflush(stdout);
    for (char *save = NULL, *map = strtok_r(list, ",", &save); map; map = strtok_r(NULL, ",", &save))
        rc |= run_map(&o, map, json);
    if (json) fclose(json);
#endif
    free(list);
    return rc;
}
